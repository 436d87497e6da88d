//! The fire-and-forget path: launches are sent without waiting, and an error of one of them is
//! reported exactly once, at the next synchronising call, with every other call applied.
#![forbid(unsafe_code)]

use std::process::Command;

use cuwire_e2e::{c_clients_available, run_client, Client, Server};

#[test]
fn one_failing_launch_among_10000_is_reported_exactly_once() {
    if !c_clients_available() {
        return;
    }
    let server = Server::start(&[]);
    let out = run_client(Command::new(Client::c("latched.c")), server.env(), &[("CUWIRE_STATS", Some("1"))]);
    assert!(out.all_passed(), "{out}\n--- server log ---\n{}", server.log());
    assert!(out.stdout.contains("first synchronize: CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"), "{out}");
    assert!(out.stdout.contains("second synchronize: CUDA_SUCCESS"), "{out}");
    // Every launch went out without a round trip: the stats line of LaunchKernel shows 0 round
    // trips and all 30,000 launches as fire-and-forget.
    let launch = out.stderr.lines().find(|l| l.contains(" LaunchKernel ")).unwrap_or_else(|| panic!("no stats line\n{out}"));
    let fields: Vec<&str> = launch.split_whitespace().collect();
    assert_eq!(fields[3..5], ["0", "30000"], "{launch}");
}

/// cuMemcpyDtoHAsync into page-locked memory returns without waiting (no round trip at all),
/// the data is complete at the next synchronisation, a failing copy's error surfaces once, and
/// freeing the memory waits for copies under way (e2e/clients/async_dtoh.c).
#[test]
fn async_device_to_host_copies_into_page_locked_memory_do_not_wait() {
    if !c_clients_available() {
        return;
    }
    let server = Server::start(&[]);
    let out = run_client(Command::new(Client::c("async_dtoh.c")), server.env(), &[("CUWIRE_STATS", Some("1"))]);
    assert!(out.all_passed(), "{out}\n--- server log ---\n{}", server.log());
    assert!(out.stdout.contains("first synchronize: CUDA_ERROR_"), "{out}");
    let line = out.stderr.lines().find(|l| l.contains(" MemcpyDtoH ")).unwrap_or_else(|| panic!("no stats line\n{out}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    // 17 + 17 + 1 + 17 + 17 chunks of at most 4 MiB, none waited for; every byte came back.
    let n: u64 = (64 << 20) + 12345;
    assert_eq!(fields[3..5], ["0", "69"], "{line}");
    assert_eq!(fields[6], (4 * n - 4096).to_string(), "{line}");
}
