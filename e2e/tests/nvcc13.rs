//! A CUDA C++ program with `<<<>>>` launches, compiled in the test by the CUDA 13 `nvcc` of the
//! PyPI wheels (`nvidia-cuda-nvcc`, `nvidia-nvvm`, `nvidia-cuda-crt`, `nvidia-cuda-runtime`,
//! installed into `.venv/cuda13` by scripts/setup-test-deps.sh) with only PTX in its
//! fatbinary, run unmodified through the shim against a real `cuwired --backend emu`:
//! `e2e/clients/vector_ops.cu` checks every result against the same computation on the host.
//!
//! nvcc registers the fatbinary and the kernels before `main()`; libcudart 13 (statically
//! linked, nvcc's default, and `libcudart.so.13`) reaches the shim through `cuGetProcAddress`
//! (asking for the CUDA 13.0 versions of the driver functions) and `cuGetExportTable` (the
//! same tables as libcudart 12.9), checks that the driver reports at least 13.0, loads the
//! fatbinary with `cuLibraryLoadData` before any context exists (in its first runtime call),
//! and launches with `cuLaunchKernel`. The emulated GPU runs the PTX nvcc 13 emits
//! (`.version 9.0`, `.target sm_75`).
//!
//! nvcc 13 compresses device code with zstd by default: the static build keeps that default
//! (the server decompresses zstd), the shared one is built with `--no-compress`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use cuwire_e2e::{build_dir, cuda13_root, run_client, shim_dir, ClientOutput, Server};

fn skip_or_fail(what: &str) -> bool {
    if std::env::var("CUWIRE_REQUIRE_CLIENTS").is_ok_and(|v| v == "1") {
        panic!("{what}; run scripts/setup-test-deps.sh (CUWIRE_REQUIRE_CLIENTS=1 makes this an error)");
    }
    eprintln!("SKIPPED: {what}; run scripts/setup-test-deps.sh to enable this test");
    false
}

/// Whether nvcc 13, libcudart 13 and a host C++ compiler are here.
fn toolchain_available() -> bool {
    let Some(root) = cuda13_root() else {
        return skip_or_fail("CUDA 13 nvcc not found (CUWIRE_CUDA13 or .venv/cuda13/nvidia/cu13/bin/nvcc)");
    };
    for lib in ["lib/libcudart.so.13", "lib/libcudart_static.a"] {
        if !root.join(lib).is_file() {
            return skip_or_fail(&format!("{} is missing (nvidia-cuda-runtime 13 wheel)", root.join(lib).display()));
        }
    }
    if !root.join("nvvm/bin/cicc").is_file() {
        return skip_or_fail(&format!("{} is missing (nvidia-nvvm wheel)", root.join("nvvm/bin/cicc").display()));
    }
    let gxx = Command::new("g++").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !gxx.is_ok_and(|s| s.success()) {
        return skip_or_fail("no host C++ compiler `g++` on PATH (nvcc needs one)");
    }
    true
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Link {
    /// nvcc's default: libcudart_static.a, fatbinary compressed with zstd.
    Static,
    /// `-cudart shared` spelled out (the wheel has only `libcudart.so.13`, no
    /// `libcudart.so`), fatbinary not compressed.
    Shared,
}

/// Compiles `vector_ops.cu` (once per link kind and test process).
fn build(link: Link) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(Link, PathBuf)>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, exe)) = built.iter().find(|(l, _)| *l == link) {
        return exe.clone();
    }
    let root = cuda13_root().expect("checked by toolchain_available");
    let lib = root.join("lib");
    let src = cuwire_e2e::clients_dir().join("vector_ops.cu");
    let exe = build_dir("nvcc13").join(format!("vector_ops-{link:?}"));
    let mut nvcc = Command::new(root.join("bin/nvcc"));
    // compute_75 as both the virtual and the real architecture: the fatbinary holds PTX only
    // (sm_75 is CUDA 13's oldest architecture), which is what the emulated GPU runs.
    nvcc.args(["-gencode", "arch=compute_75,code=compute_75", "-O2", "-std=c++17"])
        .arg(format!("-L{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .arg(&src);
    match link {
        // nvcc 13's default compression (zstd), as real builds have it.
        Link::Static => &mut nvcc,
        // No rpath: LD_LIBRARY_PATH decides, as for the shim.
        Link::Shared => nvcc.args(["--no-compress", "-cudart", "none", "-l:libcudart.so.13"]),
    };
    let started = Instant::now();
    let out = nvcc.output().expect("running nvcc");
    assert!(
        out.status.success(),
        "nvcc failed to build {} ({link:?}):\n{}{}",
        src.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("nvcc built {} ({link:?}) in {:.1?}", exe.display(), started.elapsed());
    built.push((link, exe.clone()));
    exe
}

fn run(link: Link) -> (ClientOutput, Server) {
    let exe = build(link);
    let server = Server::start(&["--backend", "emu"]);
    let lib = cuda13_root().expect("checked").join("lib");
    // The shim first, then libcudart 13's own directory (for the shared build).
    let path = format!("{}:{}", shim_dir().display(), lib.display());
    let out = run_client(Command::new(exe), server.env(), &[("LD_LIBRARY_PATH", Some(&path))]);
    (out, server)
}

fn assert_passed(what: &str, out: &ClientOutput, server: &Server) {
    assert!(out.all_passed(), "{what} did not pass\n{out}\n--- server log ---\n{}", server.log());
    assert!(server.is_running(), "the server died\n{}", server.log());
    // Nothing the program did reached an unimplemented driver function or an unknown table.
    let complaints: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("cuwire:")).collect();
    assert!(complaints.is_empty(), "{what}: the shim complained:\n{}\n{out}", complaints.join("\n"));
    // libcudart 13.0 talked to a driver that reports 13.0.
    assert!(out.stdout.contains("runtime 13000, driver 13000"), "expected libcudart 13.0 and driver 13.0\n{out}");
    for line in ["vector_add: 10000 sums match", "block_sum: 20 partial sums match", "histogram: 64 bins match", "saxpy_2d: 100x37"] {
        assert!(out.stdout.contains(line), "{what}: no line {line:?}\n{out}");
    }
}

#[test]
fn nvcc13_program_static_libcudart() {
    if !toolchain_available() {
        return;
    }
    let (out, server) = run(Link::Static);
    assert_passed("vector_ops.cu (nvcc 13, libcudart_static.a)", &out, &server);
}

#[test]
fn nvcc13_program_shared_libcudart() {
    if !toolchain_available() {
        return;
    }
    let (out, server) = run(Link::Shared);
    assert_passed("vector_ops.cu (nvcc 13, libcudart.so.13)", &out, &server);
}

/// The fatbinary nvcc embeds holds PTX only (no SASS), so the program can only run where PTX
/// is compiled at load time, the emulated GPU included. Read from the program's own bytes: the
/// fatbinary header (magic 0xBA55ED50, u16 version, u16 header size, u64 size of the entries)
/// and each entry's header (u16 kind: 1 PTX, 2 ELF; u32 header size at 4; u64 payload size
/// at 8).
#[test]
fn nvcc13_fatbinary_holds_ptx_only() {
    if !toolchain_available() {
        return;
    }
    let exe = build(Link::Shared);
    let bytes = std::fs::read(&exe).expect("reading the program");
    let magic = 0xBA55_ED50u32.to_le_bytes();
    let at = bytes.windows(4).position(|w| w == magic).unwrap_or_else(|| panic!("no fatbinary in {}", exe.display()));
    let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().expect("2 bytes"));
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
    let first = at + u16_at(at + 6) as usize;
    let end = first + u64_at(at + 8) as usize;
    let mut kinds = Vec::new();
    let mut entry = first;
    while entry < end {
        kinds.push(u16_at(entry));
        entry += u32_at(entry + 4) as usize + u64_at(entry + 8) as usize;
    }
    assert_eq!(kinds, [1], "{}: fatbinary entry kinds (1 PTX, 2 ELF)", exe.display());
    let ptx = String::from_utf8_lossy(&bytes[first..end]);
    assert!(ptx.contains(".version 9.0") && ptx.contains(".target sm_75"), "{}: not CUDA 13 PTX for sm_75", exe.display());
}
