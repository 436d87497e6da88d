//! Kernels compiled by NVRTC (fixtures/nvrtc_*.ptx), checked against CPU references.

mod common;
use common::*;

#[test]
fn saxpy() {
    let m = mem();
    let md = load(&m, "nvrtc_saxpy.ptx");
    let n = 10_000;
    let mut r = Lcg(1);
    let x: Vec<f32> = (0..n).map(|_| r.f32()).collect();
    let y: Vec<f32> = (0..n).map(|_| r.f32()).collect();
    let (px, py) = (up_f32(&m, &x), up_f32(&m, &y));
    let a = Args::new().i32(n as i32).f32(2.5).u64(px).u64(py);
    run(&md, "saxpy", cfg1((n as u32).div_ceil(256), 256), &a, &m);
    let out = down_f32(&m, py, n);
    for i in 0..n {
        assert_eq!(out[i], 2.5f32.mul_add(x[i], y[i]));
    }
}

#[test]
fn matmul_shared_tiles() {
    let m = mem();
    let md = load(&m, "nvrtc_matmul.ptx");
    let (mm, nn, kk) = (40usize, 36usize, 50usize);
    let mut r = Lcg(2);
    let a: Vec<f32> = (0..mm * kk).map(|_| r.f32()).collect();
    let b: Vec<f32> = (0..kk * nn).map(|_| r.f32()).collect();
    let (pa, pb, pc) = (up_f32(&m, &a), up_f32(&m, &b), zeros(&m, (mm * nn * 4) as u64));
    let args = Args::new().u64(pa).u64(pb).u64(pc).i32(mm as i32).i32(nn as i32).i32(kk as i32);
    run(&md, "matmul", cfg([3, 3, 1], [16, 16, 1], 0), &args, &m);
    let c = down_f32(&m, pc, mm * nn);
    for i in 0..mm {
        for j in 0..nn {
            let mut acc = 0.0f32;
            for k in 0..kk.div_ceil(16) * 16 {
                let (x, y) = if k < kk { (a[i * kk + k], b[k * nn + j]) } else { (0.0, 0.0) };
                acc = x.mul_add(y, acc);
            }
            assert!(ulps(c[i * nn + j], acc) <= 4 || (c[i * nn + j] - acc).abs() < 1e-4, "{i},{j}: {} vs {acc}", c[i * nn + j]);
        }
    }
    assert_eq!(md.kernel("matmul").unwrap().attrs.shared_size_bytes, 2048);
}

#[test]
fn block_reduce_with_dynamic_shared_and_atomics() {
    let m = mem();
    let md = load(&m, "nvrtc_reduce.ptx");
    let n = 100_000usize;
    let v: Vec<i32> = (0..n as i32).map(|i| (i * 7919) % 1000 - 500).collect();
    let pin = up_i32(&m, &v);
    let pout = zeros(&m, 8);
    let args = Args::new().u64(pin).u64(pout).i32(n as i32);
    let grid = (n as u32).div_ceil(512);
    run(&md, "block_reduce", cfg([grid, 1, 1], [256, 1, 1], 1024), &args, &m);
    let got = down_u64(&m, pout, 1)[0] as i64;
    assert_eq!(got, v.iter().map(|&x| x as i64).sum::<i64>());

    let f: Vec<f32> = (0..n).map(|i| (i % 100) as f32 * 0.25).collect();
    let (pf, po) = (up_f32(&m, &f), zeros(&m, 4));
    run(&md, "float_sum", cfg1((n as u32).div_ceil(256), 256), &Args::new().u64(pf).u64(po).i32(n as i32), &m);
    let s = down_f32(&m, po, 1)[0];
    let exact: f64 = f.iter().map(|&x| x as f64).sum();
    assert!((s as f64 - exact).abs() / exact < 1e-5, "{s} vs {exact}");
}

#[test]
fn warp_shuffle_reduction() {
    let m = mem();
    let md = load(&m, "nvrtc_warp.ptx");
    let n = 5000usize;
    let f: Vec<f32> = (0..n).map(|i| (i % 17) as f32).collect();
    let (pf, po) = (up_f32(&m, &f), zeros(&m, 4));
    run(&md, "warp_reduce", cfg1((n as u32).div_ceil(128), 128), &Args::new().u64(pf).u64(po).i32(n as i32), &m);
    assert_eq!(down_f32(&m, po, 1)[0], f.iter().sum::<f32>());
}

#[test]
fn warp_vote_and_shuffles() {
    let m = mem();
    let md = load(&m, "nvrtc_warp.ptx");
    let n = 128usize;
    let v: Vec<i32> = (0..n as i32).map(|i| (i * 37) % 101 - if i == 70 { 200 } else { 0 }).collect();
    let pin = up_i32(&m, &v);
    let (pb, pc, px, ps, pn) = (zeros(&m, 16), zeros(&m, 512), zeros(&m, 512), zeros(&m, 512), zeros(&m, 16));
    let args = Args::new().u64(pin).u64(pb).u64(pc).u64(px).u64(ps).u64(pn);
    run(&md, "warp_ops", cfg1(2, 64), &args, &m);
    let (ballots, bc, xs, sc, counts) =
        (down_u32(&m, pb, 4), down_i32(&m, pc, n), down_i32(&m, px, n), down_i32(&m, ps, n), down_i32(&m, pn, 4));
    for w in 0..4 {
        let lanes = &v[w * 32..w * 32 + 32];
        let b = lanes.iter().enumerate().fold(0u32, |acc, (l, x)| acc | (((x & 1) as u32) << l));
        assert_eq!(ballots[w], b);
        let all = lanes.iter().all(|&x| x >= 0) as i32;
        let any = lanes.iter().any(|&x| x > 1000) as i32;
        assert_eq!(counts[w], all * 2 + any);
        let mut s = 0;
        for l in 0..32 {
            let i = w * 32 + l;
            assert_eq!(bc[i], lanes[3]);
            assert_eq!(xs[i], lanes[l ^ 1]);
            s += lanes[l];
            assert_eq!(sc[i], s, "scan {i}");
        }
    }
}

#[test]
fn histogram_shared_atomics() {
    let m = mem();
    let md = load(&m, "nvrtc_histogram.ptx");
    let n = 200_000usize;
    let mut r = Lcg(3);
    let data: Vec<u8> = (0..n).map(|_| (r.next() % 251) as u8).collect();
    let pd = m.alloc(n as u64).unwrap();
    m.write(pd, &data).unwrap();
    let pb = zeros(&m, 1024);
    run(&md, "histogram", cfg1(16, 256), &Args::new().u64(pd).i32(n as i32).u64(pb), &m);
    let got = down_u32(&m, pb, 256);
    let mut want = vec![0u32; 256];
    for &d in &data {
        want[d as usize] += 1;
    }
    assert_eq!(got, want);
}

#[test]
fn device_function_calls() {
    let m = mem();
    let md = load(&m, "nvrtc_devfunc.ptx");
    let n = 300usize;
    let x: Vec<f32> = (0..n).map(|i| (i as f32) * 0.01 - 1.0).collect();
    let (px, py) = (up_f32(&m, &x), zeros(&m, 4 * n as u64));
    run(&md, "call_device", cfg1(3, 128), &Args::new().u64(px).u64(py).i32(n as i32), &m);
    let y = down_f32(&m, py, n);
    for i in 0..n {
        let mut r = 0.0f32;
        for j in 0..=(i % 5) {
            r = r.mul_add(x[i], (j + 1) as f32);
        }
        assert!(ulps(y[i], r) <= 2, "{i}: {} vs {r}", y[i]);
    }
}

#[test]
fn struct_parameter() {
    let m = mem();
    let md = load(&m, "nvrtc_structparam.ptx");
    let k = md.kernel("struct_param").unwrap();
    assert_eq!(k.params, vec![ParamInfo { offset: 0, size: 40, align: 8 }, ParamInfo { offset: 40, size: 4, align: 4 }]);
    let n = 100usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let (px, py) = (up_f32(&m, &x), zeros(&m, 4 * n as u64));
    let mut s = Vec::new();
    s.extend_from_slice(&(n as i32).to_le_bytes());
    s.extend_from_slice(&1.5f32.to_le_bytes());
    s.extend_from_slice(&px.to_le_bytes());
    s.extend_from_slice(&py.to_le_bytes());
    s.extend_from_slice(&0.25f64.to_le_bytes());
    s.extend_from_slice(&[(-3i8) as u8, 0, 0, 0, 0, 0, 0, 0]);
    let args = Args::new().bytes(&s, 8).i32(10);
    run(&md, "struct_param", cfg1(1, 128), &args, &m);
    let y = down_f32(&m, py, n);
    for i in 0..n {
        assert_eq!(y[i], 1.5f32.mul_add(x[i], 0.25) + 7.0);
    }
}

#[test]
fn divergent_loops() {
    let m = mem();
    let md = load(&m, "nvrtc_divergent.ptx");
    let n = 1000usize;
    let start: Vec<u32> = (1..=n as u32).collect();
    let (ps, po) = (up_u32(&m, &start), zeros(&m, 4 * n as u64));
    run(&md, "collatz", cfg1(8, 128), &Args::new().u64(ps).u64(po).i32(n as i32), &m);
    let got = down_u32(&m, po, n);
    for i in 0..n {
        let (mut v, mut s) = (start[i] as u64, 0u32);
        while v != 1 {
            v = if v & 1 == 1 { 3 * v + 1 } else { v >> 1 };
            s += 1;
            if s > 10000 {
                break;
            }
        }
        assert_eq!(got[i], s, "collatz({})", start[i]);
    }
    let po = zeros(&m, 4 * 256);
    run(&md, "nested_divergence", cfg1(2, 128), &Args::new().u64(po), &m);
    let got = down_i32(&m, po, 256);
    for (g, &val) in got.iter().enumerate() {
        let t = (g % 128) as i32;
        let mut acc = 0i32;
        for i in 0..(t % 7) + 1 {
            if (t + i) % 3 == 0 {
                for j in 0..t % 4 {
                    acc += j * i;
                }
                continue;
            }
            if t % 5 == 0 {
                acc -= i;
                if acc < -3 {
                    break;
                }
            }
            acc += t;
        }
        assert_eq!(val, acc, "thread {g}");
    }
}

#[test]
fn math_functions_within_bounds() {
    let m = mem();
    let md = load(&m, "nvrtc_math.ptx");
    let n = 200usize;
    let x: Vec<f32> = (0..n).map(|i| (i as f32) * 0.173 - 17.0).collect();
    let (px, po, pd) = (up_f32(&m, &x), zeros(&m, 32 * n as u64), zeros(&m, 16 * n as u64));
    run(&md, "math_ops", cfg1(2, 128), &Args::new().u64(px).u64(po).u64(pd).i32(n as i32), &m);
    let o = down_f32(&m, po, 8 * n);
    let d = down_f64(&m, pd, 2 * n);
    let close = |a: f32, b: f32, tol: f32| (a - b).abs() <= tol * b.abs().max(1.0);
    for i in 0..n {
        let v = x[i];
        assert!(ulps(o[i * 8], v.abs().sqrt()) <= 1);
        assert!((o[i * 8 + 1] - v.sin()).abs() < 2e-6 * v.abs().max(1.0) + 1e-6); // __sinf: abs error 2^-21.41
        assert!(close(o[i * 8 + 2], (v * 0.1).exp(), 1e-5));
        assert!(close(o[i * 8 + 3], 1.0 / (v + 3.5), 1e-6));
        assert!(close(o[i * 8 + 4], 1.0 / (v.abs() + 1.0).sqrt(), 1e-6));
        assert!(close(o[i * 8 + 5], (v * 0.3).tanh(), 1e-5));
        assert!(close(o[i * 8 + 6], v / 3.0 + v.max(-1.0), 1e-5));
        assert_eq!(o[i * 8 + 7], v.min(1.0) + 2.0f32.copysign(v) + ((v * 3.7) as i32) as f32);
        let dv = v as f64;
        assert!((d[i * 2] - (dv * dv + 1.0).sqrt() / (dv - 10.5)).abs() <= 1e-15 * d[i * 2].abs());
        assert_eq!(d[i * 2 + 1], ((dv * 1e6) as i64) as f64 + ((i as u32).wrapping_mul(2654435761u32)) as f64);
    }
}

#[test]
fn global_atomics() {
    let m = mem();
    let md = load(&m, "nvrtc_atomics.ptx");
    let ints = up_i32(&m, &[0, 0, 0]);
    let uints = up_u32(&m, &[u32::MAX, 0, 0, 0, 0]);
    let u64s = zeros(&m, 16);
    let f = zeros(&m, 4);
    let d = zeros(&m, 8);
    let threads = 500usize;
    run(&md, "atomics", cfg1(4, 125), &Args::new().u64(ints).u64(uints).u64(u64s).u64(f).u64(d), &m);
    let iv = down_i32(&m, ints, 3);
    assert_eq!(iv, vec![(0..500).sum::<i32>(), -499, 499]);
    let uv = down_u32(&m, uints, 5);
    assert_eq!(uv[0], 0);
    assert_eq!(uv[1], u32::MAX);
    assert_eq!(uv[2], (0..500u32).fold(0, |a, b| a ^ b));
    assert_eq!(uv[3], (threads % 100) as u32);
    assert_eq!(uv[4], 7);
    let w = down_u64(&m, u64s, 2);
    assert_eq!(w[0], (0..500u64).map(|i| i * 1000000007).sum::<u64>());
    assert_eq!(w[1], 1000);
    assert_eq!(down_f32(&m, f, 1)[0], 250.0);
    assert_eq!(down_f64(&m, d, 1)[0], 125.0);
}

#[test]
fn device_printf() {
    let m = mem();
    let md = load(&m, "nvrtc_printf.ptx");
    let out = launch(&md, "hello", &cfg1(1, 2), &Args::new().i32(7).f64(3.14209).0, &m, &opts(1)).unwrap();
    let text = String::from_utf8(out.printf).unwrap();
    assert_eq!(
        text,
        "thread 0 of block 0: k=7 x=3.142 s=str c=Z    42|-7  |ff\nthread 1 of block 0: k=7 x=3.142 s=str c=Z    42|-7  |ff\n"
    );
}

#[test]
fn dynamic_shared_and_module_globals() {
    let m = mem();
    let md = load(&m, "nvrtc_dynsmem.ptx");
    let v: Vec<i32> = (0..64).collect();
    let p = up_i32(&m, &v);
    run(&md, "reverse_dyn", cfg([1, 1, 1], [64, 1, 1], 256), &Args::new().u64(p).i32(64), &m);
    assert_eq!(down_i32(&m, p, 64), (0..64).rev().collect::<Vec<_>>());
    let g = md.global("counter").unwrap();
    assert_eq!(g.size, 4);
    assert_eq!(down_i32(&m, g.addr, 1)[0], 5);
    let c = md.global("coeffs").unwrap();
    assert_eq!(down_f32(&m, c.addr, 4), vec![1.0, 2.0, 3.0, 4.0]);
    let po = zeros(&m, 32);
    run(&md, "use_globals", cfg1(1, 8), &Args::new().u64(po), &m);
    assert_eq!(down_f32(&m, po, 8), vec![6.0, 7.0, 8.0, 9.0, 6.0, 7.0, 8.0, 9.0]);
    assert_eq!(down_i32(&m, g.addr, 1)[0], 6);
    let used = m.used();
    md.unload(&m);
    assert!(m.used() < used);
}

#[test]
fn syncthreads_count_and_or() {
    let m = mem();
    let md = load(&m, "nvrtc_sync.ptx");
    let n = 256usize;
    let v: Vec<i32> = (0..n as i32).map(|i| if i < 128 { i % 3 - 1 } else { i - 100 }).collect();
    let (pv, po) = (up_i32(&m, &v), zeros(&m, 4 * n as u64));
    run(&md, "sync_count", cfg1(2, 128), &Args::new().u64(pv).u64(po), &m);
    let o = down_i32(&m, po, n);
    for b in 0..2 {
        let blk = &v[b * 128..b * 128 + 128];
        let c = blk.iter().filter(|&&x| x > 0).count() as i32;
        let a = blk.iter().all(|&x| x > -5) as i32;
        let or = blk.iter().any(|&x| x > 100) as i32;
        assert!(o[b * 128..b * 128 + 128].iter().all(|&x| x == c * 4 + a * 2 + or), "block {b}");
    }
}

#[test]
fn warps_of_a_cta_make_progress_while_one_spins() {
    let m = mem();
    let md = load(&m, "nvrtc_sync.ptx");
    let po = zeros(&m, 8);
    run(&md, "spin_handoff", cfg1(1, 64), &Args::new().u64(po), &m);
    assert_eq!(down_i32(&m, po, 2), vec![42, 499500]);
}

#[test]
fn threadfence_last_block_reduction() {
    let m = mem();
    let md = load(&m, "nvrtc_sync.ptx");
    let n = 128 * 40;
    let x: Vec<f32> = (0..n).map(|i| (i % 10) as f32).collect();
    let (px, pp, pr) = (up_f32(&m, &x), zeros(&m, 4 * 40), zeros(&m, 4));
    for _ in 0..2 {
        run(&md, "last_block_sum", cfg1(40, 128), &Args::new().u64(px).u64(pp).u64(pr).i32(n), &m);
        assert_eq!(down_f32(&m, pr, 1)[0], x.iter().sum::<f32>());
    }
}

#[test]
fn half_and_bfloat16() {
    use half::{bf16, f16};
    let m = mem();
    let md = load(&m, "nvrtc_half.ptx");
    let n = 100usize;
    let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.37 - 15.0).collect();
    let b: Vec<f32> = (0..n).map(|i| 3.0 - i as f32 * 0.11).collect();
    let (pa, pb, po) = (up_f32(&m, &a), up_f32(&m, &b), zeros(&m, 16 * n as u64));
    run(&md, "half_ops", cfg1(1, 128), &Args::new().u64(pa).u64(pb).u64(po).i32(n as i32), &m);
    let o = down_f32(&m, po, 4 * n);
    for i in 0..n {
        let (ha, hb) = (f16::from_f32(a[i]), f16::from_f32(b[i]));
        let r0 = f16::from_f32((ha * hb).to_f32() + ha.to_f32());
        assert_eq!(o[i * 4], r0.to_f32(), "f16 {i}");
        let (ba, bb) = (bf16::from_f32(a[i]), bf16::from_f32(b[i]));
        let r1 = bf16::from_f64(ba.to_f64().mul_add(bb.to_f64(), ba.to_f64()));
        assert_eq!(o[i * 4 + 1], r1.to_f32(), "bf16 {i}");
        // cvt.rn.f16x2.f32 d, a, b puts a in the upper half
        assert_eq!(o[i * 4 + 2], (hb * hb).to_f32(), "f16x2 lo {i}");
        assert_eq!(o[i * 4 + 3], (ha * ha).to_f32(), "f16x2 hi {i}");
    }
}

#[test]
fn debug_build_ptx_runs() {
    let m = mem();
    let md = load(&m, "nvrtc_debug_switch.ptx");
    let v: Vec<i32> = (0..64).map(|i| (i * 5) % 11 - 1).collect();
    let (pv, po) = (up_i32(&m, &v), zeros(&m, 256));
    run(&md, "sw", cfg1(1, 64), &Args::new().u64(pv).u64(po), &m);
    let o = down_i32(&m, po, 64);
    for i in 0..64 {
        let x = v[i];
        let r = match x {
            0 => 11,
            1 => 27,
            2 => 5,
            3 => 91,
            4 => 13,
            5 => 77,
            6 => 3,
            7 => 55,
            _ => -1,
        };
        let acc: i32 = (0..x.max(0)).map(|k| k * r).sum();
        assert_eq!(o[i], r * x + (x as u32).count_ones() as i32 + acc, "v={x}");
    }
}
