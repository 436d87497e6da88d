//! Driver calls answered or built up in the shim: occupancy calculators and context limits,
//! pitched allocations and 2-D copies, host functions in streams, host registration, pointer
//! attributes.
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

#[test]
fn pitched_memory_2d_copies_host_functions_and_host_registration() {
    if !c_clients_available() {
        return;
    }
    let server = Server::start(&[]);
    let out = run_client(Command::new(Client::c("extras.c")), server.env(), &[]);
    assert!(out.all_passed(), "{out}\n--- server log ---\n{}", server.log());
    assert!(!out.stderr.contains("is not supported"), "{out}");
}
