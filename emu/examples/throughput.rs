//! Interpreter throughput: thread-instructions per second for saxpy, a tiled matmul and a
//! block reduction (NVRTC-compiled fixtures) on 1 and 2 worker threads.
//!
//!     cargo run --release -p cuwire-emu --example throughput

use std::sync::Arc;
use std::time::Instant;

use cuwire_emu::*;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

struct Case {
    name: &'static str,
    module: Module,
    kernel: &'static str,
    cfg: LaunchConfig,
    params: Vec<u8>,
}

fn p64(v: &mut Vec<u8>, x: u64) {
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
    v.extend_from_slice(&x.to_le_bytes());
}
fn p32(v: &mut Vec<u8>, x: u32) {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v.extend_from_slice(&x.to_le_bytes());
}

/// CPU seconds used by this process so far (utime + stime from /proc, 100 Hz ticks), so the
/// rate per CPU-second can be told apart from a busy machine's wall time.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn main() {
    let mem = Arc::new(DeviceMemory::new(0x7000_0000_0000, 8 << 30));
    let mut cases = Vec::new();

    let n: u32 = 1 << 22;
    let x = mem.alloc(4 * n as u64).unwrap();
    let y = mem.alloc(4 * n as u64).unwrap();
    mem.fill(x, &1.5f32.to_le_bytes(), n as u64).unwrap();
    let mut p = Vec::new();
    p32(&mut p, n);
    p.extend_from_slice(&2.0f32.to_le_bytes());
    p64(&mut p, x);
    p64(&mut p, y);
    cases.push(Case {
        name: "saxpy (4M)",
        module: Module::load(&fixture("nvrtc_saxpy.ptx"), &mem).unwrap(),
        kernel: "saxpy",
        cfg: LaunchConfig { grid: [n / 256, 1, 1], block: [256, 1, 1], shared_mem_bytes: 0 },
        params: p,
    });

    let d: u32 = 256;
    let a = mem.alloc(4 * (d * d) as u64).unwrap();
    let b = mem.alloc(4 * (d * d) as u64).unwrap();
    let c = mem.alloc(4 * (d * d) as u64).unwrap();
    mem.fill(a, &0.5f32.to_le_bytes(), (d * d) as u64).unwrap();
    mem.fill(b, &0.25f32.to_le_bytes(), (d * d) as u64).unwrap();
    let mut p = Vec::new();
    for q in [a, b, c] {
        p64(&mut p, q);
    }
    for _ in 0..3 {
        p32(&mut p, d);
    }
    cases.push(Case {
        name: "matmul (256^3, 16x16 tiles)",
        module: Module::load(&fixture("nvrtc_matmul.ptx"), &mem).unwrap(),
        kernel: "matmul",
        cfg: LaunchConfig { grid: [d / 16, d / 16, 1], block: [16, 16, 1], shared_mem_bytes: 0 },
        params: p,
    });

    let rn: u32 = 1 << 22;
    let inp = mem.alloc(4 * rn as u64).unwrap();
    mem.fill(inp, &3u32.to_le_bytes(), rn as u64).unwrap();
    let out = mem.alloc(8).unwrap();
    let mut p = Vec::new();
    p64(&mut p, inp);
    p64(&mut p, out);
    p32(&mut p, rn);
    cases.push(Case {
        name: "block reduction (4M ints)",
        module: Module::load(&fixture("nvrtc_reduce.ptx"), &mem).unwrap(),
        kernel: "block_reduce",
        cfg: LaunchConfig { grid: [rn / 512, 1, 1], block: [256, 1, 1], shared_mem_bytes: 1024 },
        params: p,
    });

    println!(
        "{:<28} {:>7} {:>12} {:>8} {:>17} {:>17}",
        "kernel", "workers", "thread-instr", "wall s", "M thr-instr/s", "M thr-instr/CPU-s"
    );
    for case in &cases {
        let mut rates = Vec::new();
        for workers in [1usize, 2] {
            let opts = ExecOptions { worker_threads: workers, ..Default::default() };
            let go = || launch(&case.module, case.kernel, &case.cfg, &case.params, &mem, &opts).unwrap();
            go(); // warm up, then take the best of three
            let (mut best, mut instr, reps) = (f64::MAX, 0, 3);
            let c0 = cpu_seconds();
            for _ in 0..reps {
                let t = Instant::now();
                instr = go().thread_instructions;
                best = best.min(t.elapsed().as_secs_f64());
            }
            let cpu = (cpu_seconds() - c0).max(0.01);
            let rate = instr as f64 / best / 1e6;
            rates.push(rate);
            let per_cpu = instr as f64 * reps as f64 / cpu / 1e6;
            println!("{:<28} {workers:>7} {instr:>12} {best:>8.4} {rate:>17.1} {per_cpu:>17.1}", case.name);
        }
        println!("{:<28} wall-clock scaling 1 -> 2 workers: {:.2}x", "", rates[1] / rates[0]);
    }

    // launch overhead: a one-block saxpy, as a latency benchmark would issue it
    let case = &cases[0];
    let mut p = case.params.clone();
    p[0..4].copy_from_slice(&32u32.to_le_bytes());
    let small = LaunchConfig { grid: [1, 1, 1], block: [32, 1, 1], shared_mem_bytes: 0 };
    let opts = ExecOptions::default();
    for _ in 0..100 {
        launch(&case.module, case.kernel, &small, &p, &mem, &opts).unwrap();
    }
    let t = Instant::now();
    let n = 10_000;
    for _ in 0..n {
        launch(&case.module, case.kernel, &small, &p, &mem, &opts).unwrap();
    }
    println!("launch of a 1x32-thread saxpy: {:.2} us per launch", t.elapsed().as_secs_f64() * 1e6 / n as f64);
}
