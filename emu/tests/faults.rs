//! Faults, the watchdog, refused PTX and launch-configuration errors.

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn out_of_bounds_is_illegal_address() {
    let m = mem();
    let md = load(&m, "nvrtc_faults.ptx");
    let p = zeros(&m, 1024);
    // in bounds first
    run(&md, "oob_write", cfg1(1, 32), &Args::new().u64(p).i64(0), &m);
    let e = launch(&md, "oob_write", &cfg1(4, 64), &Args::new().u64(p).i64(200).0, &m, &opts(2)).unwrap_err();
    assert!(matches!(e, EmuError::IllegalAddress(_)), "{e}");
    assert_eq!(e.cuda_code(), 700);
    let e = launch(&md, "oob_write", &cfg1(1, 1), &Args::new().u64(0).i64(0).0, &m, &opts(1)).unwrap_err();
    assert_eq!(e.cuda_code(), 700);
    // memory still usable afterwards, a later launch works
    run(&md, "oob_write", cfg1(1, 32), &Args::new().u64(p).i64(10), &m);
}

#[test]
fn misaligned_access() {
    let m = mem();
    let md = load(&m, "nvrtc_faults.ptx");
    let p = zeros(&m, 64);
    let e = launch(&md, "misaligned", &cfg1(1, 1), &Args::new().u64(p).0, &m, &opts(1)).unwrap_err();
    assert!(matches!(e, EmuError::MisalignedAddress(_)), "{e}");
    assert_eq!(e.cuda_code(), 716);
}

#[test]
fn infinite_loop_stopped_by_watchdog() {
    let m = mem();
    let md = load(&m, "nvrtc_faults.ptx");
    let flag = zeros(&m, 4);
    let o = ExecOptions { worker_threads: 2, watchdog: Duration::from_millis(300) };
    let t = Instant::now();
    let e = launch(&md, "spin", &cfg1(8, 64), &Args::new().u64(flag).0, &m, &o).unwrap_err();
    assert!(matches!(e, EmuError::Timeout(_)), "{e}");
    assert_eq!(e.cuda_code(), 702);
    assert!(t.elapsed() < Duration::from_secs(5));
    // with the flag set it finishes
    m.write(flag, &1i32.to_le_bytes()).unwrap();
    launch(&md, "spin", &cfg1(8, 64), &Args::new().u64(flag).0, &m, &o).unwrap();
}

#[test]
fn trap_and_assert() {
    let m = mem();
    let md = load(&m, "nvrtc_faults.ptx");
    let e = launch(&md, "trapper", &cfg1(2, 64), &Args::new().i32(40).0, &m, &opts(2)).unwrap_err();
    assert!(matches!(e, EmuError::Trap(_)), "{e}");
    assert_eq!(e.cuda_code(), 719);
    run(&md, "trapper", cfg1(2, 64), &Args::new().i32(100), &m);
    run(&md, "asserter", cfg1(1, 32), &Args::new().i32(3), &m);
    let e = launch(&md, "asserter", &cfg1(1, 32), &Args::new().i32(30).0, &m, &opts(1)).unwrap_err();
    assert_eq!(e.cuda_code(), 710, "{e}");
    assert!(e.to_string().contains("v < 10"), "{e}");
    let (r, out) = launch_with_output(&md, "asserter", &cfg1(2, 4), &Args::new().i32(30).0, &m, &opts(1));
    assert_eq!(r.unwrap_err().cuda_code(), 710);
    let text = String::from_utf8(out.printf).unwrap();
    assert!(text.starts_with("faults.cu:"), "{text}");
    assert!(text.contains("asserter: block: [0,0,0], thread: [0,0,0] Assertion `v < 10` failed."), "{text}");
}

const UNSUPPORTED: &str = r#"
.version 8.0
.target sm_80
.address_size 64
.visible .entry k(.param .u64 p)
{
    .reg .b32 %r<4>;
    mov.u32 %r1, 1;
    tex.1d.v4.s32.s32 {%r1, %r2, %r3, %r3}, [tex, {%r1}];
    ret;
}
"#;

#[test]
fn unsupported_instruction_refused_at_load() {
    let m = mem();
    let e = Module::load(UNSUPPORTED.as_bytes(), &m).unwrap_err();
    assert_eq!(e.cuda_code(), 218);
    let s = e.to_string();
    assert!(s.contains("tex.1d.v4.s32.s32") && s.contains("line 9"), "{s}");
    assert_eq!(m.used(), 0);
}

#[test]
fn binary_images_refused() {
    let m = mem();
    let e = Module::load(b"\x7fELF\x02\x01\x01rest", &m).unwrap_err();
    assert_eq!(e.cuda_code(), 218);
    assert!(e.to_string().contains("cubin"));
    assert!(Module::load(&[0x50, 0xed, 0x55, 0xba, 1, 0], &m).is_err());
    assert!(Module::load(b"hello world", &m).is_err());
    let mut ptx = fixture("nvrtc_saxpy.ptx");
    ptx.push(0);
    assert!(Module::load(&ptx, &m).is_ok());
}

#[test]
fn launch_configuration_errors() {
    let m = mem();
    let md = load(&m, "nvrtc_saxpy.ptx");
    let a = Args::new().i32(0).f32(0.0).u64(0).u64(0);
    let l = |c: LaunchConfig| launch(&md, "saxpy", &c, &a.0, &m, &opts(1));
    assert_eq!(l(cfg([0, 1, 1], [32, 1, 1], 0)).unwrap_err().cuda_code(), 1);
    assert_eq!(l(cfg([1, 1, 1], [2048, 1, 1], 0)).unwrap_err().cuda_code(), 1);
    assert_eq!(l(cfg([1, 1, 1], [32, 32, 2], 0)).unwrap_err().cuda_code(), 701);
    assert_eq!(l(cfg([1, 70000, 1], [32, 1, 1], 0)).unwrap_err().cuda_code(), 1);
    assert_eq!(l(cfg([1, 1, 1], [32, 1, 1], 49 * 1024)).unwrap_err().cuda_code(), 701);
    md.set_max_dynamic_shared("saxpy", 100 * 1024).unwrap();
    assert!(l(cfg([1, 1, 1], [32, 1, 1], 99 * 1024)).is_ok());
    assert!(launch(&md, "saxpy", &cfg1(1, 1), &[0u8; 8], &m, &opts(1)).is_err());
    assert_eq!(launch(&md, "nope", &cfg1(1, 1), &a.0, &m, &opts(1)).unwrap_err().cuda_code(), 500);
}

#[test]
fn concurrent_launches_share_memory() {
    let m = mem();
    let md = std::sync::Arc::new(load(&m, "nvrtc_saxpy.ptx"));
    let n = 4096usize;
    std::thread::scope(|s| {
        for t in 0..4 {
            let (m, md) = (m.clone(), md.clone());
            s.spawn(move || {
                let x: Vec<f32> = (0..n).map(|i| (i + t) as f32).collect();
                let (px, py) = (up_f32(&m, &x), zeros(&m, 4 * n as u64));
                for _ in 0..5 {
                    let a = Args::new().i32(n as i32).f32(1.0).u64(px).u64(py);
                    launch(&md, "saxpy", &cfg1(16, 256), &a.0, &m, &opts(2)).unwrap();
                }
                let y = down_f32(&m, py, n);
                assert!(y.iter().enumerate().all(|(i, &v)| v == 5.0 * (i + t) as f32));
            });
        }
    });
}

#[test]
fn every_fixture_loads() {
    let m = mem();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "ptx") {
            let md = Module::load(&std::fs::read(&p).unwrap(), &m).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(!md.kernel_names().is_empty());
            md.unload(&m);
            n += 1;
        }
    }
    assert!(n >= 19);
    assert_eq!(m.used(), 0);
}

#[test]
fn hostile_sizes_are_refused_not_allocated() {
    let m = mem();
    let regs =
        ".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry k()\n{\n.reg .b32 %r<60000>;\n.reg .b32 %q<60000>;\nret;\n}\n";
    assert_eq!(Module::load(regs.as_bytes(), &m).unwrap_err().cuda_code(), 218);
    let local = ".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry k()\n{\n.local .align 8 .b8 big[1000000000];\nret;\n}\n";
    assert_eq!(Module::load(local.as_bytes(), &m).unwrap_err().cuda_code(), 218);
    let shared = ".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry k()\n{\n.shared .align 8 .b8 big[1000000];\nret;\n}\n";
    let md = Module::load(shared.as_bytes(), &m).unwrap();
    let e = launch(&md, "k", &cfg1(1, 32), &[], &m, &opts(1)).unwrap_err();
    assert_eq!(e.cuda_code(), 701);
    let local = ".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry k()\n{\n.local .align 8 .b8 big[400000];\nret;\n}\n";
    let md = Module::load(local.as_bytes(), &m).unwrap();
    assert_eq!(launch(&md, "k", &cfg1(1, 1024), &[], &m, &opts(1)).unwrap_err().cuda_code(), 701);
    let maxt = md.kernel("k").unwrap().attrs.max_threads_per_block;
    assert!((32..1024).contains(&maxt), "{maxt}");
    launch(&md, "k", &cfg1(1, maxt as u32), &[], &m, &opts(1)).unwrap();
    launch(&md, "k", &cfg1(2, 32), &[], &m, &opts(1)).unwrap();
}

#[test]
fn watchdog_stops_a_loop_around_a_barrier() {
    let src = r#"
.version 8.0
.target sm_80
.address_size 64
.visible .entry k()
{
$L__loop:
    bar.sync 0;
    bra.uni $L__loop;
}
"#;
    let m = mem();
    let md = Module::load(src.as_bytes(), &m).unwrap();
    let o = ExecOptions { worker_threads: 1, watchdog: Duration::from_millis(200) };
    let t = Instant::now();
    let e = launch(&md, "k", &cfg1(1, 128), &[], &m, &o).unwrap_err();
    assert_eq!(e.cuda_code(), 702);
    assert!(t.elapsed() < Duration::from_secs(3));
}

/// Builds a fatbinary container the way nvcc lays it out (16-byte header, entries with a
/// 64-byte header each, payloads padded to 8).
fn fatbin(entries: &[(u16, u32, u64, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for &(kind, arch, flags, payload) in entries {
        let mut p = payload.to_vec();
        while p.len() % 8 != 0 {
            p.push(0);
        }
        let mut h = vec![0u8; 64];
        h[0..2].copy_from_slice(&kind.to_le_bytes());
        h[2..4].copy_from_slice(&0x0101u16.to_le_bytes());
        h[4..8].copy_from_slice(&64u32.to_le_bytes());
        h[8..16].copy_from_slice(&(p.len() as u64).to_le_bytes());
        h[28..32].copy_from_slice(&arch.to_le_bytes());
        h[40..48].copy_from_slice(&flags.to_le_bytes());
        body.extend_from_slice(&h);
        body.extend_from_slice(&p);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&0xBA55_ED50u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[test]
fn fatbinary_with_ptx_loads() {
    let m = mem();
    let ptx = fixture("nvrtc_saxpy.ptx");
    let img = fatbin(&[(2, 80, 0, b"\x7fELF fake sass"), (1, 70, 0, b"garbage that is not ptx"), (1, 80, 0, &ptx)]);
    let md = Module::load(&img, &m).unwrap();
    assert_eq!(md.kernel_names(), vec!["saxpy".to_string()]);
    let only_sass = fatbin(&[(2, 80, 0, b"\x7fELF fake sass")]);
    let e = Module::load(&only_sass, &m).unwrap_err();
    assert!(e.to_string().contains("PTX"), "{e}");
    let compressed = fatbin(&[(1, 80, 0x2000, &ptx[..100])]);
    assert!(Module::load(&compressed, &m).is_err());
    let truncated = &img[..img.len() / 2];
    assert!(Module::load(truncated, &m).is_err());
}

#[test]
fn wide_multiply_of_64_bit_types_is_refused() {
    let m = mem();
    for op in ["mul.wide.u64 %rd1, %rd2, %rd3;", "mad.wide.s64 %rd1, %rd2, %rd3, %rd1;"] {
        let src = format!(".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry k()\n{{\n.reg .b64 %rd<4>;\n{op}\nret;\n}}\n");
        let e = Module::load(src.as_bytes(), &m).unwrap_err();
        assert!(e.to_string().contains("line 7"), "{e}");
    }
}

#[test]
fn odd_but_valid_ptx_does_not_panic() {
    let m = mem();
    let src = r#"
.version 8.0
.target sm_80
.address_size 64
.global .b128 wide_init = 5;
.visible .entry k(.param .u64 p)
{
    .reg .b64 %rd<4>;
    .reg .b32 %r<4>;
    ld.param.u64 %rd1, [p];
    mov.b64 %rd2, {%r1, %r2};
    mov.b64 {%r1, %r2}, %rd2;
    st.global.u32 [%rd1], %r1;
    ret;
}
"#;
    let md = Module::load(src.as_bytes(), &m).unwrap();
    let g = md.global("wide_init").unwrap();
    assert_eq!(g.size, 16);
    assert_eq!(down_u64(&m, g.addr, 2), vec![5, 0]);
    let p = zeros(&m, 4);
    launch(&md, "k", &cfg1(1, 32), &Args::new().u64(p).0, &m, &opts(1)).unwrap();
    // a pointer near the top of the address space faults instead of overflowing
    let e = launch(&md, "k", &cfg1(1, 32), &Args::new().u64(u64::MAX - 1).0, &m, &opts(1)).unwrap_err();
    assert!(matches!(e, EmuError::IllegalAddress(_) | EmuError::MisalignedAddress(_)), "{e}");
}

#[test]
fn nul_separated_ptx_texts_link_into_one_module() {
    let m = mem();
    let lib = r#"
.version 8.0
.target sm_80
.address_size 64
.visible .global .align 4 .u32 bias = 7;
.visible .func (.param .b32 r) twice(.param .b32 x)
{
    .reg .b32 %r<3>;
    ld.param.u32 %r1, [x];
    shl.b32 %r2, %r1, 1;
    st.param.b32 [r], %r2;
    ret;
}
"#;
    let kernel = r#"
.version 8.0
.target sm_80
.address_size 64
.extern .global .align 4 .u32 bias;
.extern .func (.param .b32 r) twice(.param .b32 x);
.visible .entry k(.param .u64 out)
{
    .reg .b32 %r<4>;
    .reg .b64 %rd<2>;
    ld.param.u64 %rd1, [out];
    mov.u32 %r1, %tid.x;
    {
    .param .b32 p0;
    st.param.b32 [p0], %r1;
    .param .b32 r0;
    call.uni (r0), twice, (p0);
    ld.param.b32 %r2, [r0];
    }
    ld.global.u32 %r3, [bias];
    add.s32 %r2, %r2, %r3;
    mul.wide.u32 %rd0, %r1, 4;
    add.s64 %rd1, %rd1, %rd0;
    st.global.u32 [%rd1], %r2;
    ret;
}
"#;
    let image = format!("{kernel}\0{lib}\0");
    // only the kernel: the extern function has no body
    assert!(Module::load(kernel.as_bytes(), &m).is_err());
    let md = Module::load(image.as_bytes(), &m).unwrap();
    let out = zeros(&m, 4 * 32);
    launch(&md, "k", &cfg1(1, 32), &Args::new().u64(out).0, &m, &opts(1)).unwrap();
    assert_eq!(down_u32(&m, out, 32), (0..32).map(|i| 2 * i + 7).collect::<Vec<u32>>());
}
