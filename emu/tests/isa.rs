//! Instruction semantics checked one by one with small hand-written PTX kernels: each test
//! runs a one-thread kernel that stores the results of a few instructions.

mod common;
use common::*;

/// Runs `body` (PTX using %a, %b as u32/f32 inputs and %out as the output pointer, with
/// registers %r<64>, %rd<64>, %f<64>, %fd<64>, %p<16>, %h<16>) on one thread; returns
/// `n` u32 outputs written by `st.global.u32 [%out+4*k]`.
fn run_body(body: &str, a: u32, b: u32, n: usize) -> Vec<u32> {
    let src = format!(
        r#"
.version 8.0
.target sm_80
.address_size 64
.visible .entry k(.param .u64 out_p, .param .u32 a_p, .param .u32 b_p)
{{
    .reg .pred %p<16>;
    .reg .b16 %h<16>;
    .reg .b32 %r<64>;
    .reg .f32 %f<64>;
    .reg .b64 %rd<64>;
    .reg .f64 %fd<64>;
    .reg .b64 %out;
    .reg .b32 %a, %b;
    .reg .f32 %fa, %fb;
    ld.param.u64 %out, [out_p];
    ld.param.u32 %a, [a_p];
    ld.param.u32 %b, [b_p];
    mov.b32 %fa, %a;
    mov.b32 %fb, %b;
{body}
    ret;
}}
"#
    );
    let m = mem();
    let md = Module::load(src.as_bytes(), &m).unwrap_or_else(|e| panic!("{e}\n{src}"));
    let out = zeros(&m, 4 * n as u64);
    launch(&md, "k", &cfg1(1, 1), &Args::new().u64(out).u32(a).u32(b).0, &m, &opts(1)).unwrap();
    down_u32(&m, out, n)
}

fn st(k: usize, reg: &str) -> String {
    format!("    st.global.u32 [%out+{}], {reg};\n", 4 * k)
}

#[test]
fn integer_ops() {
    let mut body = String::new();
    let ops = [
        "div.s32 %r1, %a, %b;",
        "rem.s32 %r1, %a, %b;",
        "div.u32 %r1, %a, %b;",
        "shr.s32 %r1, %a, 3;",
        "shr.u32 %r1, %a, 3;",
        "mul.hi.s32 %r1, %a, %b;",
        "mul.hi.u32 %r1, %a, %b;",
        "popc.b32 %r1, %a;",
        "clz.b32 %r1, %b;",
        "brev.b32 %r1, %b;",
        "bfind.u32 %r1, %b;",
        "bfe.s32 %r1, %a, 4, 8;",
        "bfi.b32 %r1, %b, %a, 8, 4;",
        "prmt.b32 %r1, %a, %b, 0x7531;",
        "min.s32 %r1, %a, %b;",
        "max.u32 %r1, %a, %b;",
        "abs.s32 %r1, %a;",
        "neg.s32 %r1, %b;",
        "not.b32 %r1, %b;",
        "add.sat.s32 %r1, %a, -2147483000;",
        "sad.u32 %r1, %a, %b, 1;",
    ];
    let mut count = 0;
    for op in ops.iter().filter(|o| !o.starts_with("sad")) {
        body += &format!("    {op}\n");
        body += &st(count, "%r1");
        count += 1;
    }
    let (a, b) = ((-1000i32) as u32, 7u32);
    let o = run_body(&body, a, b, count);
    let (ai, bi) = (a as i32, b as i32);
    let want: Vec<u32> = vec![
        (ai / bi) as u32,
        (ai % bi) as u32,
        a / b,
        (ai >> 3) as u32,
        a >> 3,
        (((ai as i64) * (bi as i64)) >> 32) as u32,
        (((a as u64) * (b as u64)) >> 32) as u32,
        a.count_ones(),
        b.leading_zeros(),
        b.reverse_bits(),
        31 - b.leading_zeros(),
        (((a >> 4) & 0xff) as u8 as i8) as i32 as u32,
        (a & !0xf00) | ((b & 0xf) << 8),
        {
            let x = (a as u64) | ((b as u64) << 32);
            let sel = [1, 3, 5, 7];
            sel.iter().enumerate().fold(0u32, |acc, (i, s)| acc | ((((x >> (8 * s)) & 0xff) as u32) << (8 * i)))
        },
        ai.min(bi) as u32,
        a.max(b),
        ai.unsigned_abs(),
        (-bi) as u32,
        !b,
        ai.saturating_add(-2147483000) as u32,
    ];
    assert_eq!(o, want);
}

#[test]
fn float_compare_and_convert() {
    let nan = f32::NAN.to_bits();
    let cmps = ["eq", "ne", "lt", "le", "gt", "ge", "equ", "neu", "ltu", "leu", "gtu", "geu", "num", "nan"];
    for (a, b) in [(1.5f32.to_bits(), 2.5f32.to_bits()), (nan, 1.0f32.to_bits()), (3.0f32.to_bits(), 3.0f32.to_bits())] {
        let mut body = String::new();
        for (k, c) in cmps.iter().enumerate() {
            body += &format!("    setp.{c}.f32 %p1, %fa, %fb;\n    selp.u32 %r1, 1, 0, %p1;\n");
            body += &st(k, "%r1");
        }
        let o = run_body(&body, a, b, cmps.len());
        let (x, y) = (f32::from_bits(a), f32::from_bits(b));
        let un = x.is_nan() || y.is_nan();
        let want = [
            x == y,
            x != y && !un,
            x < y,
            x <= y,
            x > y,
            x >= y,
            x == y || un,
            x != y,
            x < y || un,
            x <= y || un,
            x > y || un,
            x >= y || un,
            !un,
            un,
        ];
        assert_eq!(o, want.iter().map(|&w| w as u32).collect::<Vec<_>>(), "{x} vs {y}");
    }
    type Reference = fn(f32) -> u32;
    let conv: [(&str, Reference); 10] = [
        ("cvt.rni.s32.f32 %r1, %fa;", |x: f32| x.round_ties_even() as i32 as u32),
        ("cvt.rzi.s32.f32 %r1, %fa;", |x: f32| x.trunc() as i32 as u32),
        ("cvt.rmi.s32.f32 %r1, %fa;", |x: f32| x.floor() as i32 as u32),
        ("cvt.rpi.s32.f32 %r1, %fa;", |x: f32| x.ceil() as i32 as u32),
        ("cvt.rzi.u32.f32 %r1, %fa;", |x: f32| if x < 0.0 { 0 } else { x as u32 }),
        ("cvt.rni.f32.f32 %f1, %fa; mov.b32 %r1, %f1;", |x: f32| x.round_ties_even().to_bits()),
        ("cvt.sat.f32.f32 %f1, %fa; mov.b32 %r1, %f1;", |x: f32| x.clamp(0.0, 1.0).to_bits()),
        ("min.NaN.f32 %f1, %fa, %fb; mov.b32 %r1, %f1;", |_x: f32| 0),
        ("testp.finite.f32 %p1, %fa; selp.u32 %r1, 1, 0, %p1;", |x: f32| x.is_finite() as u32),
        ("copysign.f32 %f1, %fb, %fa; mov.b32 %r1, %f1;", |x: f32| x.abs().to_bits()),
    ];
    for x in [2.5f32, -2.5, 3.7, -0.4, 1e10] {
        let mut body = String::new();
        for (k, (op, _)) in conv.iter().enumerate() {
            body += &format!("    {op}\n");
            body += &st(k, "%r1");
        }
        let o = run_body(&body, x.to_bits(), 1.0f32.to_bits(), conv.len());
        for (k, (op, f)) in conv.iter().enumerate() {
            if op.starts_with("min.NaN") {
                assert_eq!(f32::from_bits(o[k]), x.min(1.0), "{op} {x}");
            } else if op.starts_with("copysign") {
                // copysign.f32 d, a, b: |b| with the sign of a (a = %fb = 1.0 here)
                assert_eq!(f32::from_bits(o[k]), x.abs(), "{op} {x}");
            } else {
                assert_eq!(o[k], f(x), "{op} {x}");
            }
        }
    }
    let o = run_body("    min.NaN.f32 %f1, %fa, %fb;\n    mov.b32 %r1, %f1;\n    st.global.u32 [%out], %r1;\n", nan, 1.0f32.to_bits(), 1);
    assert!(f32::from_bits(o[0]).is_nan());
}

#[test]
fn carries_and_64_bit() {
    let body = "
    mov.b64 %rd1, 0xffffffffffffffff;
    mov.b64 %rd2, 1;
    mov.b64 {%r1, %r2}, %rd1;
    mov.b64 {%r3, %r4}, %rd2;
    add.cc.u32 %r5, %r1, %r3;
    addc.u32 %r6, %r2, %r4;
    st.global.u32 [%out], %r5;
    st.global.u32 [%out+4], %r6;
    sub.cc.u32 %r7, 0, 1;
    subc.u32 %r8, 5, 0;
    st.global.u32 [%out+8], %r7;
    st.global.u32 [%out+12], %r8;
    mul.hi.u64 %rd3, %rd1, %rd1;
    cvt.u32.u64 %r9, %rd3;
    st.global.u32 [%out+16], %r9;
    cvt.s64.s32 %rd4, %a;
    shr.s64 %rd5, %rd4, 40;
    cvt.u32.u64 %r10, %rd5;
    st.global.u32 [%out+20], %r10;
";
    let o = run_body(body, (-5i32) as u32, 0, 6);
    assert_eq!(o, vec![0, 0, u32::MAX, 4, (u64::MAX - 1) as u32, u32::MAX]);
}

#[test]
fn warp_match_redux_activemask() {
    let src = r#"
.version 8.0
.target sm_80
.address_size 64
.visible .entry k(.param .u64 out_p)
{
    .reg .pred %p<4>;
    .reg .b32 %r<16>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [out_p];
    mov.u32 %r1, %laneid;
    and.b32 %r2, %r1, 3;
    match.any.sync.b32 %r3, %r2, -1;
    redux.sync.add.u32 %r4, %r1, -1;
    redux.sync.max.u32 %r5, %r2, -1;
    setp.lt.u32 %p1, %r1, 20;
    @!%p1 bra $L_skip;
    activemask.b32 %r6;
    vote.sync.uni.pred %p2, %p1, %r6;
    selp.u32 %r7, 1, 0, %p2;
$L_skip:
    mul.wide.u32 %rd2, %r1, 16;
    add.s64 %rd3, %rd1, %rd2;
    st.global.v4.u32 [%rd3], {%r3, %r4, %r5, %r6};
    ret;
}
"#;
    let m = mem();
    let md = Module::load(src.as_bytes(), &m).unwrap();
    let out = zeros(&m, 16 * 32);
    launch(&md, "k", &cfg1(1, 32), &Args::new().u64(out).0, &m, &opts(1)).unwrap();
    let o = down_u32(&m, out, 4 * 32);
    for l in 0..32u32 {
        let same: u32 = (0..32).filter(|k| k % 4 == l % 4).fold(0, |a, k| a | (1 << k));
        assert_eq!(o[l as usize * 4], same, "match.any lane {l}");
        assert_eq!(o[l as usize * 4 + 1], (0..32).sum::<u32>());
        assert_eq!(o[l as usize * 4 + 2], 3);
        if l < 20 {
            assert_eq!(o[l as usize * 4 + 3], (1 << 20) - 1, "activemask lane {l}");
        }
    }
}
