//! The fire-and-forget path: launches are sent without waiting, and an error of one of them is
//! reported exactly once, at the next synchronising call, with every other call applied.
#![forbid(unsafe_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use cuwire_e2e::{c_clients_available, run_client, spawn_client, Client, Server};

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
    // Path-MTU discovery went past an Ethernet frame on loopback: both ends accept large
    // datagrams (quinn's default, 1472, would cap it there).
    let path = out.stderr.lines().find(|l| l.contains("connection: path MTU")).unwrap_or_else(|| panic!("no path line\n{out}"));
    let mtu: u32 = path.split_whitespace().nth(5).and_then(|m| m.parse().ok()).unwrap_or_else(|| panic!("{path}"));
    assert!(mtu > 1472, "{path}");
    // And the server's, towards the client (which the client's endpoint settings allow).
    let log = server.log_once(std::time::Duration::from_secs(10), |log| log.contains("session closed"));
    let closed = log.lines().find(|l| l.contains("session closed")).unwrap_or_else(|| panic!("no session end\n{log}"));
    let mtu: u32 = closed
        .split("mtu=")
        .nth(1)
        .and_then(|m| m.split_whitespace().next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("{closed}"));
    assert!(mtu > 1472, "{closed}");
}

/// Threads of one process calling at once, each checking its own results (e2e/clients/threads.c):
/// whichever thread waits drives the shared connection, so a reply must reach its own caller
/// whoever reads it, and fire-and-forget calls must go out meanwhile. The same program with the
/// I/O thread doing all the driving (`CUWIRE_IO_THREAD=1`) must pass too.
#[test]
fn threads_sharing_the_connection_each_get_their_own_replies() {
    if !c_clients_available() {
        return;
    }
    let server = Server::start(&[]);
    for io_thread in [None, Some("1")] {
        let out = run_client(Command::new(Client::c("threads.c")), server.env(), &[("CUWIRE_IO_THREAD", io_thread)]);
        assert!(out.all_passed(), "CUWIRE_IO_THREAD={io_thread:?}\n{out}\n--- server log ---\n{}", server.log());
        assert_eq!(out.stdout.matches(": 300 rounds").count(), 4, "{out}");
    }
}

/// `cuwired --endpoints 2`: two QUIC endpoints on one port (SO_REUSEPORT), one thread each. The
/// kernel spreads 16 concurrent clients over both by address; every one is served (each of its
/// four threads checks its own results), both endpoints take some, and SIGTERM still ends the
/// server cleanly with both running.
#[test]
fn several_endpoints_on_one_port_serve_every_client() {
    if !c_clients_available() {
        return;
    }
    let server = Server::start(&["--endpoints", "2"]);
    let clients: Vec<_> = (0..16).map(|_| spawn_client(Command::new(Client::c("threads.c")), server.env(), &[])).collect();
    for c in clients {
        let out = c.finish(Duration::from_secs(180));
        assert!(out.all_passed(), "{out}\n--- server log ---\n{}", server.log());
    }
    let log = server.log();
    let opened: Vec<&str> = log.lines().filter(|l| l.contains("session opened")).collect();
    assert_eq!(opened.len(), 16, "{log}");
    // The odds that 16 random client ports all hash to one of two sockets are 2 in 65,536.
    for e in ["endpoint=0", "endpoint=1"] {
        assert!(opened.iter().any(|l| l.contains(e)), "no session on {e}:\n{log}");
    }
    let killed = Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().expect("kill");
    assert!(killed.success());
    let t = Instant::now();
    while server.is_running() {
        assert!(t.elapsed() < Duration::from_secs(10), "cuwired still running 10 s after SIGTERM\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.log().contains("shutting down"));
}
