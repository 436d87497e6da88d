//! The same end-to-end clients against the real-driver backend (`cuwired --backend cuda`), when
//! this machine has an NVIDIA GPU and driver. Without one, each test says SKIPPED and passes:
//! the project is built and tested on machines without a GPU.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::Command;

use cuwire_e2e::{c_clients_available, python_clients_available, run_client, vecadd_ptx, Client, Server};

/// The real driver's library, if this machine has a GPU to go with it.
fn real_driver() -> Option<String> {
    if !Path::new("/dev/nvidiactl").exists() {
        eprintln!("SKIPPED: no NVIDIA GPU on this machine (/dev/nvidiactl is absent); the cuda backend is not exercised");
        return None;
    }
    let out = Command::new("ldconfig").arg("-p").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lib = text.lines().find(|l| l.trim_start().starts_with("libcuda.so.1 ")).and_then(|l| l.rsplit("=> ").next()).map(str::trim);
    match lib {
        Some(l) => Some(l.to_owned()),
        None => {
            eprintln!("SKIPPED: a GPU device node exists but no libcuda.so.1 is installed");
            None
        }
    }
}

fn server(lib: &str) -> Server {
    Server::start(&["--backend", "cuda", "--cuda-lib", lib])
}

#[test]
fn c_client_against_the_real_driver() {
    let Some(lib) = real_driver() else { return };
    if !c_clients_available() {
        return;
    }
    let server = server(&lib);
    let mut cmd = Command::new(Client::c("driver_api.c"));
    cmd.arg(vecadd_ptx()).arg("--launch");
    let out = run_client(cmd, server.env(), &[("CUWIRE_E2E_CC_MAJOR", Some("any"))]);
    assert!(out.all_passed(), "{out}\n--- server log ---\n{}", server.log());
}

#[test]
fn python_client_against_the_real_driver() {
    let Some(lib) = real_driver() else { return };
    if !python_clients_available() {
        return;
    }
    let server = server(&lib);
    let mut cmd = Client::python("driver_api.py");
    cmd.arg(vecadd_ptx()).arg("--launch");
    let out = run_client(cmd, server.env(), &[("CUWIRE_E2E_CC_MAJOR", Some("any"))]);
    assert!(out.all_passed(), "{out}\n--- server log ---\n{}", server.log());
}

#[test]
fn fire_and_forget_and_latched_errors_against_the_real_driver() {
    let Some(lib) = real_driver() else { return };
    if !c_clients_available() {
        return;
    }
    // The latched-error and launch-rate client exercises fire-and-forget on a real GPU.
    let server = server(&lib);
    let out = run_client(Command::new(Client::c("latched.c")), server.env(), &[]);
    assert!(out.all_passed(), "{out}\n--- server log ---\n{}", server.log());
}
