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
