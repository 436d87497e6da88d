//! Occupancy calculators and context limits, answered in the shim.
#![forbid(unsafe_code)]

use std::process::Command;

use cuwire_e2e::{c_clients_available, run_client, vecadd_ptx, Client, Server};

#[test]
fn occupancy_and_limits_are_answered_locally() {
    if !c_clients_available() {
        return;
    }
    let server = Server::start(&[]);
    let mut cmd = Command::new(Client::c("occupancy.c"));
    cmd.arg(vecadd_ptx());
    let out = run_client(cmd, server.env(), &[("CUWIRE_STATS", Some("1"))]);
    assert!(out.all_passed(), "{out}\n--- server log ---\n{}", server.log());
    assert!(!out.stderr.contains("is not supported"), "{out}");
}
