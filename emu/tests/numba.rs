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
