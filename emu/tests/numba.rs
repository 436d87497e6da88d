//! Kernels compiled by numba-cuda (libNVVM) from Python (fixtures/numba_*.ptx).
//! numba passes each array as meminfo, parent, nitems, itemsize, data, shape[], strides[].

mod common;
use common::*;

fn kernel_named(md: &Module, part: &str) -> String {
    md.kernel_names().into_iter().find(|n| n.contains(part)).expect("kernel")
}

fn array(a: Args, data: u64, shape: &[u64], itemsize: u64) -> Args {
    let n: u64 = shape.iter().product();
    let mut a = a.u64(0).u64(0).u64(n).u64(itemsize).u64(data);
    for &s in shape {
        a = a.u64(s);
    }
    let mut stride = itemsize;
    let mut strides = vec![0; shape.len()];
    for i in (0..shape.len()).rev() {
        strides[i] = stride;
        stride *= shape[i];
    }
    for s in strides {
        a = a.u64(s);
    }
    a
}

#[test]
fn numba_saxpy() {
    let m = mem();
    let md = load(&m, "numba_saxpy.ptx");
    let k = kernel_named(&md, "saxpy");
    assert_eq!(md.kernel(&k).unwrap().params.len(), 1 + 3 * 7);
    let n = 3000usize;
    let mut r = Lcg(5);
    let x: Vec<f32> = (0..n).map(|_| r.f32()).collect();
    let y: Vec<f32> = (0..n).map(|_| r.f32()).collect();
    let (px, py, po) = (up_f32(&m, &x), up_f32(&m, &y), zeros(&m, 4 * n as u64));
    let mut a = Args::new().f32(-1.25);
    for p in [px, py, po] {
        a = array(a, p, &[n as u64], 4);
    }
    run(&md, &k, cfg1((n as u32).div_ceil(128), 128), &a, &m);
    let o = down_f32(&m, po, n);
    for i in 0..n {
        assert!(ulps(o[i], (-1.25f32).mul_add(x[i], y[i])) <= 1, "{i}");
    }
}

#[test]
fn numba_block_sum() {
    let m = mem();
    let md = load(&m, "numba_block_sum.ptx");
    let k = kernel_named(&md, "block_sum");
    let n = 10_000usize;
    let x: Vec<f32> = (0..n).map(|i| (i % 13) as f32).collect();
    let (px, po) = (up_f32(&m, &x), zeros(&m, 4));
    let a = array(array(Args::new(), px, &[n as u64], 4), po, &[1], 4);
    run(&md, &k, cfg1((n as u32).div_ceil(128), 128), &a, &m);
    assert_eq!(down_f32(&m, po, 1)[0], x.iter().sum::<f32>());
}

#[test]
fn numba_histogram() {
    let m = mem();
    let md = load(&m, "numba_histogram.ptx");
    let k = kernel_named(&md, "histogram");
    let n = 5000usize;
    let mut r = Lcg(9);
    let d: Vec<u32> = (0..n).map(|_| r.next() % 1000).collect();
    let (pd, pb) = (up_u32(&m, &d), zeros(&m, 64));
    let a = array(array(Args::new(), pd, &[n as u64], 4), pb, &[16], 4);
    run(&md, &k, cfg1((n as u32).div_ceil(256), 256), &a, &m);
    let mut want = vec![0u32; 16];
    for v in d {
        want[(v % 16) as usize] += 1;
    }
    assert_eq!(down_u32(&m, pb, 16), want);
}

#[test]
fn numba_device_function_gcd() {
    let m = mem();
    let md = load(&m, "numba_call_gcd.ptx");
    let k = kernel_named(&md, "call_gcd");
    let n = 777usize;
    let a: Vec<i32> = (0..n as i32).map(|i| i * 12 + 6).collect();
    let b: Vec<i32> = (0..n as i32).map(|i| (i % 50) * 18 + 4).collect();
    let (pa, pb, po) = (up_i32(&m, &a), up_i32(&m, &b), zeros(&m, 4 * n as u64));
    let mut args = Args::new();
    for p in [pa, pb, po] {
        args = array(args, p, &[n as u64], 4);
    }
    run(&md, &k, cfg1(7, 128), &args, &m);
    let o = down_i32(&m, po, n);
    for i in 0..n {
        let (mut x, mut y) = (a[i], b[i]);
        while y != 0 {
            (x, y) = (y, x.rem_euclid(y));
        }
        assert_eq!(o[i], x, "gcd({}, {})", a[i], b[i]);
    }
}

#[test]
fn numba_divergent_loop() {
    let m = mem();
    let md = load(&m, "numba_divergent.ptx");
    let k = kernel_named(&md, "divergent");
    let n = 500usize;
    let v: Vec<i32> = (0..n as i32).map(|i| (i * 7) % 40).collect();
    let (pv, po) = (up_i32(&m, &v), zeros(&m, 4 * n as u64));
    let args = array(array(Args::new(), pv, &[n as u64], 4), po, &[n as u64], 4);
    run(&md, &k, cfg1(4, 128), &args, &m);
    let o = down_i32(&m, po, n);
    for i in 0..n {
        let mut acc: i64 = 0;
        for k in 0..v[i] as i64 {
            if k % 3 == 0 {
                acc += k;
            } else if k % 3 == 1 {
                acc -= 1;
            } else {
                acc *= 2;
                if acc > 1000 {
                    break;
                }
            }
        }
        assert_eq!(o[i] as i64, acc, "{i}");
    }
}

#[test]
fn numba_matmul() {
    let m = mem();
    let md = load(&m, "numba_matmul.ptx");
    let k = kernel_named(&md, "matmul");
    let (mm, kk, nn) = (33usize, 20usize, 47usize);
    let mut r = Lcg(11);
    let a: Vec<f32> = (0..mm * kk).map(|_| r.f32()).collect();
    let b: Vec<f32> = (0..kk * nn).map(|_| r.f32()).collect();
    let (pa, pb, pc) = (up_f32(&m, &a), up_f32(&m, &b), zeros(&m, (4 * mm * nn) as u64));
    let args =
        array(array(array(Args::new(), pa, &[mm as u64, kk as u64], 4), pb, &[kk as u64, nn as u64], 4), pc, &[mm as u64, nn as u64], 4);
    run(&md, &k, cfg([3, 3, 1], [16, 16, 1], 0), &args, &m);
    let c = down_f32(&m, pc, mm * nn);
    for i in 0..mm {
        for j in 0..nn {
            let want: f64 = (0..kk).map(|t| a[i * kk + t] as f64 * b[t * nn + j] as f64).sum();
            assert!((c[i * nn + j] as f64 - want).abs() < 1e-3 * want.abs().max(1.0), "{i},{j}");
        }
    }
}

fn up_f64(m: &DeviceMemory, v: &[f64]) -> u64 {
    upload(m, v, |x| x.to_le_bytes().to_vec())
}

#[test]
fn numba_libdevice_math_f32() {
    let m = mem();
    let md = load(&m, "numba_math32.ptx");
    let k = kernel_named(&md, "math32");
    let n = 300usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.0731 - 11.0).collect();
    let (px, po) = (up_f32(&m, &x), zeros(&m, (32 * n) as u64));
    let args = array(array(Args::new(), px, &[n as u64], 4), po, &[n as u64, 8], 4);
    run(&md, &k, cfg1(3, 128), &args, &m);
    let o = down_f32(&m, po, 8 * n);
    for i in 0..n {
        let v = x[i] as f64;
        let want = [
            v.sin(),
            (x[i] * 0.1) as f64,
            (x[i].abs() + 1.0) as f64,
            (v.abs()).powf(1.5),
            v.tanh(),
            0.0,
            v.atan2(2.0),
            v.floor() + ((x[i] * 0.5) as f64).ceil(),
        ];
        let checks = [
            (o[i * 8], want[0] as f32, 2),
            (o[i * 8 + 1], want[1].exp() as f32, 2),
            (o[i * 8 + 2], want[2].ln() as f32, 2),
            (o[i * 8 + 3], want[3] as f32, 4),
            (o[i * 8 + 4], want[4] as f32, 2),
            (o[i * 8 + 6], want[6] as f32, 3),
            (o[i * 8 + 7], want[7] as f32, 0),
        ];
        for (j, (got, w, u)) in checks.iter().enumerate() {
            assert!(ulps(*got, *w) <= *u, "x={} fn#{j}: {got} vs {w}", x[i]);
        }
        // erf(0.2x): compare with a series-free bound: odd, monotone, |erf| < 1
        let e = o[i * 8 + 5];
        assert!(e.abs() < 1.0 && (e >= 0.0) == (x[i] >= 0.0));
    }
}

#[test]
fn numba_libdevice_math_f64() {
    let m = mem();
    let md = load(&m, "numba_math64.ptx");
    let k = kernel_named(&md, "math64");
    let n = 200usize;
    let x: Vec<f64> = (0..n).map(|i| i as f64 * 0.0917 - 9.0).collect();
    let (px, po) = (up_f64(&m, &x), zeros(&m, (40 * n) as u64));
    let args = array(array(Args::new(), px, &[n as u64], 8), po, &[n as u64, 5], 8);
    run(&md, &k, cfg1(2, 128), &args, &m);
    let o = down_f64(&m, po, 5 * n);
    for i in 0..n {
        let v = x[i];
        let want = [v.sin(), (v * 0.1).exp(), (v.abs() + 1.0).ln(), v.abs().sqrt() / (v * v + 1.0), v.cos() * v.tanh()];
        for j in 0..5 {
            let (g, w) = (o[i * 5 + j], want[j]);
            assert!((g - w).abs() <= 4.0 * f64::EPSILON * w.abs().max(1e-300), "x={v} fn#{j}: {g} vs {w}");
        }
    }
}

#[test]
fn numba_int64_ops() {
    let m = mem();
    let md = load(&m, "numba_int64.ptx");
    let k = kernel_named(&md, "int64");
    let n = 256usize;
    let a: Vec<i64> = (0..n as i64).map(|i| (i - 128) * 0x1234_5678_9abc + i * 7).collect();
    let pa = upload(&m, &a, |x| x.to_le_bytes().to_vec());
    let po = zeros(&m, (40 * n) as u64);
    let args = array(array(Args::new(), pa, &[n as u64], 8), po, &[n as u64, 5], 8);
    run(&md, &k, cfg1(2, 128), &args, &m);
    let o = down(&m, po, 5 * n, 8, |c| i64::from_le_bytes(c.try_into().unwrap()));
    for i in 0..n {
        let v = a[i];
        // Python semantics: floor division and modulo
        let floordiv = ((v * 3) as f64 / 7.0).floor() as i64;
        let want = [
            floordiv,
            v.rem_euclid(1000003),
            (v >> 5) ^ (v << 3),
            v.count_ones() as i64 + v.leading_zeros() as i64,
            v.max(-v) - v.min(12345),
        ];
        for j in 0..5 {
            assert_eq!(o[i * 5 + j], want[j], "op#{j} of {v}");
        }
    }
}
