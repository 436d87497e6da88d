//! More driver calls real clients make (issue 4, item 3): 3-D copies, stream-ordered
//! allocation and memory pools under a tenant quota, JIT logs of module loads, context-local
//! storage destructors, mapped host memory (refused), primary-context state, PCI bus ids and
//! module unloading, through `e2e/clients/extras2.c` against a real cuwired.
#![forbid(unsafe_code)]

use std::process::Command;

use cuwire_e2e::{c_clients_available, run_client, vecadd_ptx, Client, Server};

/// The `--dev` tenant gets 64 MiB of the emulated GPU's 4 GiB: pool allocations must stop at it.
const QUOTA_CONFIG: &str = "[tenants.dev]\nmemory-per-gpu = \"64MiB\"\n";

#[test]
fn copies_pools_jit_logs_and_refusals() {
    if !c_clients_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cuwired.toml");
    std::fs::write(&config, QUOTA_CONFIG).unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let mut cmd = Command::new(Client::c("extras2.c"));
    cmd.arg(vecadd_ptx());
    let out = run_client(cmd, server.env(), &[]);
    assert!(out.all_passed(), "{out}\n--- server log ---\n{}", server.log());
    // Each refusal names itself once on stderr, as unsupported calls do.
    for what in
        ["cuMemHostAlloc(mapped host memory", "cuMemHostGetDevicePointer_v2 is not supported", "cuMemcpy3D(CUDA arrays", "cuMemPoolCreate("]
    {
        assert!(out.stderr.contains(what), "no stderr line for {what}:\n{out}");
    }
    assert!(server.log().contains("over quota"), "the over-quota allocations are refused by the pool's quota:\n{}", server.log());
}

/// A 3-D copy travels as packed rows, not a message per row: 3,000 rows of 3 bytes go in one
/// message each way.
#[test]
fn a_3d_copy_of_many_rows_is_one_message_each_way() {
    if !c_clients_available() {
        return;
    }
    let server = Server::start(&[]);
    let mut cmd = Command::new(Client::c("extras2.c"));
    cmd.arg(vecadd_ptx()).arg("rows");
    let out = run_client(cmd, server.env(), &[("CUWIRE_STATS", Some("1"))]);
    assert!(out.all_passed(), "{out}\n--- server log ---\n{}", server.log());
    let stat = |name: &str| -> Vec<u64> {
        let line =
            out.stderr.lines().find(|l| l.split_whitespace().nth(2) == Some(name)).unwrap_or_else(|| panic!("no stats for {name}:\n{out}"));
        line.split_whitespace().skip(3).map(|v| v.parse().unwrap()).collect()
    };
    // round trips, fire-and-forget, bytes out, bytes in
    assert_eq!(stat("MemcpyRowsHtoD")[..3], [1, 0, 9000], "{out}");
    assert_eq!(stat("MemcpyRowsDtoH")[..2], [1, 0], "{out}");
    assert_eq!(stat("MemcpyRowsDtoH")[3], 9000, "{out}");
}
