//! numba-cuda, unmodified, through the shim against `cuwired --backend emu`: numba compiles
//! `@cuda.jit` kernels to PTX with libNVVM, links them with the driver JIT (answered by the
//! shim's `cuLinkCreate_v2` … `cuLinkComplete`), loads and launches them on the emulated GPU.
//! Also the driver JIT itself through cuda-python (`link_api.py`): logs, several PTX inputs,
//! and a PTX error reaching the program from the module load.

#![forbid(unsafe_code)]

use std::process::{Command, Stdio};

use cuwire_e2e::{python, python_clients_available, run_client, vecadd_ptx, Client, ClientOutput, Server};

/// Whether the venv's Python has numba-cuda; prints `SKIPPED:` (or panics with
/// `CUWIRE_REQUIRE_CLIENTS=1`) when not, as the harness does for missing clients.
fn numba_available() -> bool {
    if !python_clients_available() {
        return false;
    }
    let py = python().expect("python_clients_available() found it");
    let ok = Command::new(&py)
        .args(["-c", "import numba.cuda, numpy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let what = format!("{} cannot import numba.cuda", py.display());
        if std::env::var("CUWIRE_REQUIRE_CLIENTS").is_ok_and(|v| v == "1") {
            panic!("{what}; run scripts/setup-test-deps.sh (CUWIRE_REQUIRE_CLIENTS=1 makes this an error)");
        }
        eprintln!("SKIPPED: {what}; run scripts/setup-test-deps.sh to enable this test");
        return false;
    }
    true
}

fn assert_all_passed(what: &str, out: &ClientOutput, server: &Server) {
    assert!(out.all_passed(), "{what} did not pass\n{out}\n--- server log ---\n{}", server.log());
    assert!(server.is_running(), "the server died\n{}", server.log());
    let unsupported: Vec<&str> = out.stderr.lines().filter(|l| l.contains("is not supported")).collect();
    assert!(unsupported.is_empty(), "{what} reached driver functions the shim does not implement: {unsupported:?}\n{out}");
}

#[test]
fn numba_kernels_against_emu() {
    if !numba_available() {
        return;
    }
    let server = Server::start(&[]);
    let out = run_client(Client::python("numba_kernels.py"), server.env(), &[("NUMBA_CUDA_ENABLE_PYNVJITLINK", Some("0"))]);
    assert_all_passed("numba_kernels.py", &out, &server);
    eprintln!("numba_kernels.py passed in {:.1?}", out.elapsed);
}

#[test]
fn driver_jit_link_against_emu() {
    if !python_clients_available() {
        return;
    }
    let server = Server::start(&[]);
    let mut cmd = Client::python("link_api.py");
    cmd.arg(vecadd_ptx());
    let out = run_client(cmd, server.env(), &[]);
    assert_all_passed("link_api.py", &out, &server);
}
