//! CUDA *runtime* programs (libcudart 12.9 from the `nvidia-cuda-runtime-cu12` wheel) through
//! the shim against a real `cuwired --backend emu`: `e2e/clients/runtime_api.c` built with `cc`
//! against `cuda_runtime_api.h`, linked once with `libcudart.so.12` and once with
//! `libcudart_static.a`. libcudart reaches the shim through `cuGetProcAddress` and the
//! undocumented `cuGetExportTable` tables (integrity check included).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use cuwire_e2e::{c_clients_available, cuda_include, run_client, shim_dir, vecadd_ptx, ClientOutput, Server};

fn skip_or_fail(what: &str) -> bool {
    if std::env::var("CUWIRE_REQUIRE_CLIENTS").is_ok_and(|v| v == "1") {
        panic!("{what}; run scripts/setup-test-deps.sh (CUWIRE_REQUIRE_CLIENTS=1 makes this an error)");
    }
    eprintln!("SKIPPED: {what}; run scripts/setup-test-deps.sh to enable this test");
    false
}

/// `.../site-packages/nvidia/cuda_runtime` (its include/ and lib/).
fn runtime_root() -> Option<PathBuf> {
    cuda_include().and_then(|inc| inc.parent().map(Path::to_path_buf))
}

/// `.../site-packages/nvidia/cuda_nvcc/include`: `crt/host_defines.h` and the other `crt/`
/// headers that `cuda_runtime_api.h` includes come with the nvcc wheel.
fn crt_include() -> Option<PathBuf> {
    let dir = runtime_root()?.parent()?.join("cuda_nvcc/include");
    dir.join("crt/host_defines.h").is_file().then_some(dir)
}

fn runtime_clients_available() -> bool {
    if !c_clients_available() {
        return false;
    }
    let Some(root) = runtime_root() else { return skip_or_fail("the nvidia-cuda-runtime-cu12 wheel was not found") };
    if !root.join("lib/libcudart.so.12").is_file() {
        return skip_or_fail(&format!("{} has no libcudart.so.12", root.join("lib").display()));
    }
    if crt_include().is_none() {
        return skip_or_fail("crt/host_defines.h (nvidia-cuda-nvcc-cu12 wheel) not found");
    }
    true
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Link {
    Shared,
    Static,
}

/// Builds `runtime_api.c` (once per link kind and test process) next to the shim's directory.
fn build(link: Link) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(Link, PathBuf)>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, exe)) = built.iter().find(|(l, _)| *l == link) {
        return exe.clone();
    }
    let root = runtime_root().expect("checked by runtime_clients_available");
    let lib = root.join("lib");
    let src = cuwire_e2e::clients_dir().join("runtime_api.c");
    let exe = shim_dir().parent().expect("shim dir has a parent").join(format!("runtime_api-{link:?}-{}", std::process::id()));
    let mut cc = Command::new("cc");
    cc.args(["-O1", "-g", "-Wall", "-Wextra"])
        .arg(format!("-I{}", root.join("include").display()))
        .arg(format!("-I{}", crt_include().expect("checked").display()))
        .arg("-o")
        .arg(&exe)
        .arg(&src);
    match link {
        // No rpath: LD_LIBRARY_PATH decides, as for the shim.
        Link::Shared => cc.arg(format!("-L{}", lib.display())).arg("-l:libcudart.so.12"),
        Link::Static => cc.arg(lib.join("libcudart_static.a")).args(["-ldl", "-lpthread", "-lrt"]),
    };
    let out = cc.output().expect("running cc");
    assert!(
        out.status.success(),
        "cc failed to build {} ({link:?}):\n{}{}",
        src.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    built.push((link, exe.clone()));
    exe
}

fn run(link: Link, args: &[&str]) -> (ClientOutput, Server) {
    let server = Server::start(&["--backend", "emu"]);
    let mut cmd = Command::new(build(link));
    cmd.arg(vecadd_ptx()).args(args);
    // The shim first, then libcudart's own directory (for the shared build).
    let lib = runtime_root().expect("checked").join("lib");
    let path = format!("{}:{}", shim_dir().display(), lib.display());
    let out = run_client(cmd, server.env(), &[("LD_LIBRARY_PATH", Some(&path))]);
    (out, server)
}

fn assert_passed(what: &str, out: &ClientOutput, server: &Server) {
    assert!(out.all_passed(), "{what} did not pass\n{out}\n--- server log ---\n{}", server.log());
    assert!(server.is_running(), "the server died\n{}", server.log());
    // Nothing the program did reached an unimplemented driver function or an unknown table.
    let complaints: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("cuwire:")).collect();
    assert!(complaints.is_empty(), "{what}: the shim complained:\n{}\n{out}", complaints.join("\n"));
}

#[test]
fn runtime_api_shared_libcudart() {
    if !runtime_clients_available() {
        return;
    }
    let (out, server) = run(Link::Shared, &[]);
    assert_passed("runtime_api.c with libcudart.so.12", &out, &server);
    assert!(out.stdout.contains("runtime 12090"), "expected libcudart 12.9\n{out}");
}

#[test]
fn runtime_api_static_libcudart() {
    if !runtime_clients_available() {
        return;
    }
    let root = runtime_root().expect("checked");
    if !root.join("lib/libcudart_static.a").is_file() {
        skip_or_fail("the nvidia-cuda-runtime-cu12 wheel has no libcudart_static.a");
        return;
    }
    let (out, server) = run(Link::Static, &[]);
    assert_passed("runtime_api.c with libcudart_static.a", &out, &server);
}

/// What nvcc-built programs do: a fatbinary registered with `__cudaRegisterFatBinary` and a
/// launch through the host stub. libcudart 12.9 loads it with `cuLibraryLoadData` (the shim
/// sends the fatbinary, the server runs its PTX) and then asks `cuLibraryGetModule`.
#[test]
fn runtime_api_registered_fatbinary() {
    if !runtime_clients_available() {
        return;
    }
    let (out, server) = run(Link::Shared, &["--registered"]);
    assert_passed("runtime_api.c --registered", &out, &server);
    assert!(out.stdout.contains("vecadd results through the registered fatbinary"), "{out}");
}
