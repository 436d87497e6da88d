//! Per-lane arithmetic used by the decoded instructions: every operation is a plain
//! function on 64-bit register bit patterns, chosen once at decode time.

use half::{bf16, f16};

pub type F1 = fn(u64) -> u64;
pub type F2 = fn(u64, u64) -> u64;
pub type F3 = fn(u64, u64, u64) -> u64;
pub type F4 = fn(u64, u64, u64, u64) -> u64;
pub type Cmp = fn(u64, u64) -> bool;

pub trait IntT: Copy + Ord + 'static {
    const BITS: u32;
    const SIGNED: bool;
    fn fb(x: u64) -> Self;
    fn tb(self) -> u64;
    fn wadd(self, o: Self) -> Self;
    fn wsub(self, o: Self) -> Self;
    fn wmul(self, o: Self) -> Self;
    fn mulhi(self, o: Self) -> Self;
    /// Full product as the bits of the double-width type (mul.wide).
    fn wide(self, o: Self) -> u64;
    fn div_(self, o: Self) -> Self;
    fn rem_(self, o: Self) -> Self;
    fn abs_(self) -> Self;
    fn neg_(self) -> Self;
    fn sadd(self, o: Self) -> Self;
    fn ssub(self, o: Self) -> Self;
    fn to_i128(self) -> i128;
}

macro_rules! int_impl {
    ($t:ty, $u:ty, $w:ty, $signed:expr) => {
        impl IntT for $t {
            const BITS: u32 = <$t>::BITS;
            const SIGNED: bool = $signed;
            #[inline(always)]
            fn fb(x: u64) -> Self {
                x as $u as $t
            }
            #[inline(always)]
            fn tb(self) -> u64 {
                self as $u as u64
            }
            #[inline(always)]
            fn wadd(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            #[inline(always)]
            fn wsub(self, o: Self) -> Self {
                self.wrapping_sub(o)
            }
            #[inline(always)]
            fn wmul(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
            #[inline(always)]
            fn mulhi(self, o: Self) -> Self {
                (((self as $w).wrapping_mul(o as $w)) >> <$t>::BITS) as $t
            }
            #[inline(always)]
            fn wide(self, o: Self) -> u64 {
                ((self as $w).wrapping_mul(o as $w)) as u64
            }
            #[inline(always)]
            fn div_(self, o: Self) -> Self {
                if o == 0 {
                    !0
                } else {
                    self.wrapping_div(o)
                }
            }
            #[inline(always)]
            fn rem_(self, o: Self) -> Self {
                if o == 0 {
                    self
                } else {
                    self.wrapping_rem(o)
                }
            }
            #[inline(always)]
            fn abs_(self) -> Self {
                #[allow(unused_comparisons)]
                if self < 0 {
                    self.wrapping_neg()
                } else {
                    self
                }
            }
            #[inline(always)]
            fn neg_(self) -> Self {
                self.wrapping_neg()
            }
            #[inline(always)]
            fn sadd(self, o: Self) -> Self {
                self.saturating_add(o)
            }
            #[inline(always)]
            fn ssub(self, o: Self) -> Self {
                self.saturating_sub(o)
            }
            #[inline(always)]
            fn to_i128(self) -> i128 {
                self as i128
            }
        }
    };
}
int_impl!(u8, u8, u16, false);
int_impl!(u16, u16, u32, false);
int_impl!(u32, u32, u64, false);
int_impl!(u64, u64, u128, false);
int_impl!(i8, u8, i16, true);
int_impl!(i16, u16, i32, true);
int_impl!(i32, u32, i64, true);
int_impl!(i64, u64, i128, true);

pub fn add<T: IntT>(a: u64, b: u64) -> u64 {
    T::fb(a).wadd(T::fb(b)).tb()
}
pub fn sub<T: IntT>(a: u64, b: u64) -> u64 {
    T::fb(a).wsub(T::fb(b)).tb()
}
pub fn sadd<T: IntT>(a: u64, b: u64) -> u64 {
    T::fb(a).sadd(T::fb(b)).tb()
}
pub fn ssub<T: IntT>(a: u64, b: u64) -> u64 {
    T::fb(a).ssub(T::fb(b)).tb()
}
pub fn mullo<T: IntT>(a: u64, b: u64) -> u64 {
    T::fb(a).wmul(T::fb(b)).tb()
}
pub fn mulhi<T: IntT>(a: u64, b: u64) -> u64 {
    T::fb(a).mulhi(T::fb(b)).tb()
}
pub fn mulwide<T: IntT>(a: u64, b: u64) -> u64 {
    let r = T::fb(a).wide(T::fb(b));
    if T::BITS == 32 {
        r
    } else {
        r & ((1u64 << (2 * T::BITS)) - 1)
    }
}
pub fn madlo<T: IntT>(a: u64, b: u64, c: u64) -> u64 {
    T::fb(a).wmul(T::fb(b)).wadd(T::fb(c)).tb()
}
pub fn madhi<T: IntT>(a: u64, b: u64, c: u64) -> u64 {
    T::fb(a).mulhi(T::fb(b)).wadd(T::fb(c)).tb()
}
pub fn madwide<T: IntT>(a: u64, b: u64, c: u64) -> u64 {
    let p = mulwide::<T>(a, b);
    let r = p.wrapping_add(c);
    if T::BITS == 32 {
        r
    } else {
        r & ((1u64 << (2 * T::BITS)) - 1)
    }
}
pub fn div<T: IntT>(a: u64, b: u64) -> u64 {
    T::fb(a).div_(T::fb(b)).tb()
}
pub fn rem<T: IntT>(a: u64, b: u64) -> u64 {
    T::fb(a).rem_(T::fb(b)).tb()
}
pub fn min<T: IntT>(a: u64, b: u64) -> u64 {
    T::fb(a).min(T::fb(b)).tb()
}
pub fn max<T: IntT>(a: u64, b: u64) -> u64 {
    T::fb(a).max(T::fb(b)).tb()
}
pub fn abs<T: IntT>(a: u64) -> u64 {
    T::fb(a).abs_().tb()
}
pub fn neg<T: IntT>(a: u64) -> u64 {
    T::fb(a).neg_().tb()
}
#[inline(always)]
fn wmask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}
pub fn and(a: u64, b: u64) -> u64 {
    a & b
}
pub fn or(a: u64, b: u64) -> u64 {
    a | b
}
pub fn xor(a: u64, b: u64) -> u64 {
    a ^ b
}
pub fn not<const B: u32>(a: u64) -> u64 {
    !a & wmask(B)
}
pub fn cnot(a: u64) -> u64 {
    (a == 0) as u64
}
pub fn shl<const B: u32>(a: u64, b: u64) -> u64 {
    let s = b as u32;
    if s >= B {
        0
    } else {
        (a << s) & wmask(B)
    }
}
pub fn shr_u<const B: u32>(a: u64, b: u64) -> u64 {
    let s = b as u32;
    if s >= B {
        0
    } else {
        (a & wmask(B)) >> s
    }
}
pub fn shr_s<T: IntT>(a: u64, b: u64) -> u64 {
    let s = (b as u32).min(T::BITS - 1);
    let v = T::fb(a).to_i128() >> s;
    (v as u64) & wmask(T::BITS)
}
pub fn popc(a: u64) -> u64 {
    a.count_ones() as u64
}
pub fn clz<const B: u32>(a: u64) -> u64 {
    ((a & wmask(B)).leading_zeros() - (64 - B)) as u64
}
pub fn brev<const B: u32>(a: u64) -> u64 {
    a.reverse_bits() >> (64 - B)
}
pub fn bfind<T: IntT>(a: u64) -> u64 {
    let v = T::fb(a).to_i128();
    let x = if T::SIGNED && v < 0 { !v } else { v } as u128 as u64 & wmask(T::BITS);
    if x == 0 {
        0xffff_ffff
    } else {
        (63 - x.leading_zeros()) as u64
    }
}
pub fn bfe<T: IntT>(a: u64, b: u64, c: u64) -> u64 {
    let pos = (b & 0xff) as u32;
    let len = (c & 0xff) as u32;
    let bits = T::BITS;
    let x = a & wmask(bits);
    if len == 0 {
        return 0;
    }
    let sbit = if T::SIGNED {
        let sp = (pos + len - 1).min(bits - 1);
        (x >> sp) & 1
    } else {
        0
    };
    let mut r = 0u64;
    for i in 0..bits {
        let bit = if i < len && pos + i < bits {
            (x >> (pos + i)) & 1
        } else if i < len || T::SIGNED {
            sbit
        } else {
            0
        };
        r |= bit << i;
    }
    r
}
pub fn bfi<const B: u32>(f: u64, b: u64, c: u64, d: u64) -> u64 {
    let pos = (c & 0xff) as u32;
    let len = (d & 0xff) as u32;
    let mut r = b & wmask(B);
    for i in 0..len {
        if pos + i >= B {
            break;
        }
        let bit = (f >> i) & 1;
        r = (r & !(1 << (pos + i))) | (bit << (pos + i));
    }
    r
}
pub fn prmt(a: u64, b: u64, c: u64) -> u64 {
    let x = (a & 0xffff_ffff) | ((b & 0xffff_ffff) << 32);
    let mut r = 0u64;
    for i in 0..4 {
        let sel = (c >> (4 * i)) & 0xf;
        let byte = (x >> ((sel & 7) * 8)) & 0xff;
        let byte = if sel & 8 != 0 {
            if byte & 0x80 != 0 {
                0xff
            } else {
                0
            }
        } else {
            byte
        };
        r |= byte << (8 * i);
    }
    r
}
/// The named `prmt` modes: for each mode and selector `c[1:0]`, the source byte of
/// d.b0..d.b3 (PTX ISA table, read right to left).
pub fn prmt_mode<const MODE: usize>(a: u64, b: u64, c: u64) -> u64 {
    const T: [[[u8; 4]; 4]; 6] = [
        [[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]], // f4e
        [[0, 7, 6, 5], [1, 0, 7, 6], [2, 1, 0, 7], [3, 2, 1, 0]], // b4e
        [[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]], // rc8
        [[0, 1, 2, 3], [1, 1, 2, 3], [2, 2, 2, 3], [3, 3, 3, 3]], // ecl
        [[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 2, 2], [0, 1, 2, 3]], // ecr
        [[0, 1, 0, 1], [2, 3, 2, 3], [0, 1, 0, 1], [2, 3, 2, 3]], // rc16
    ];
    let x = (a & 0xffff_ffff) | ((b & 0xffff_ffff) << 32);
    let sel = T[MODE][(c & 3) as usize];
    let mut r = 0u64;
    for (i, s) in sel.iter().enumerate() {
        r |= ((x >> (8 * *s as u64)) & 0xff) << (8 * i);
    }
    r
}

pub fn lop3(a: u64, b: u64, c: u64, lut: u64) -> u64 {
    let mut r = 0u64;
    for i in 0..8 {
        if (lut >> i) & 1 != 0 {
            let ma = if i & 4 != 0 { a } else { !a };
            let mb = if i & 2 != 0 { b } else { !b };
            let mc = if i & 1 != 0 { c } else { !c };
            r |= ma & mb & mc;
        }
    }
    r & 0xffff_ffff
}
pub fn sext<const B: u32>(a: u64) -> u64 {
    (((a << (64 - B)) as i64) >> (64 - B)) as u64
}

// ---------- floating point ----------

pub trait FltT: Copy + 'static {
    fn fb(x: u64) -> Self;
    fn tb(self) -> u64;
    fn f(self) -> f64;
    fn from_f64(v: f64) -> Self;
}
impl FltT for f32 {
    #[inline(always)]
    fn fb(x: u64) -> Self {
        f32::from_bits(x as u32)
    }
    #[inline(always)]
    fn tb(self) -> u64 {
        self.to_bits() as u64
    }
    #[inline(always)]
    fn f(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}
impl FltT for f64 {
    #[inline(always)]
    fn fb(x: u64) -> Self {
        f64::from_bits(x)
    }
    #[inline(always)]
    fn tb(self) -> u64 {
        self.to_bits()
    }
    #[inline(always)]
    fn f(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
}
impl FltT for f16 {
    fn fb(x: u64) -> Self {
        f16::from_bits(x as u16)
    }
    fn tb(self) -> u64 {
        self.to_bits() as u64
    }
    fn f(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
}
impl FltT for bf16 {
    fn fb(x: u64) -> Self {
        bf16::from_bits(x as u16)
    }
    fn tb(self) -> u64 {
        self.to_bits() as u64
    }
    fn f(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
}

pub fn fadd32(a: u64, b: u64) -> u64 {
    (f32::fb(a) + f32::fb(b)).tb()
}
pub fn fsub32(a: u64, b: u64) -> u64 {
    (f32::fb(a) - f32::fb(b)).tb()
}
pub fn fmul32(a: u64, b: u64) -> u64 {
    (f32::fb(a) * f32::fb(b)).tb()
}
pub fn fdiv32(a: u64, b: u64) -> u64 {
    (f32::fb(a) / f32::fb(b)).tb()
}
pub fn ffma32(a: u64, b: u64, c: u64) -> u64 {
    f32::fb(a).mul_add(f32::fb(b), f32::fb(c)).tb()
}
pub fn fadd64(a: u64, b: u64) -> u64 {
    (f64::fb(a) + f64::fb(b)).tb()
}
pub fn fsub64(a: u64, b: u64) -> u64 {
    (f64::fb(a) - f64::fb(b)).tb()
}
pub fn fmul64(a: u64, b: u64) -> u64 {
    (f64::fb(a) * f64::fb(b)).tb()
}
pub fn fdiv64(a: u64, b: u64) -> u64 {
    (f64::fb(a) / f64::fb(b)).tb()
}
pub fn ffma64(a: u64, b: u64, c: u64) -> u64 {
    f64::fb(a).mul_add(f64::fb(b), f64::fb(c)).tb()
}
/// Generic (slower) versions through f64, for f16/bf16; exact for one rounding.
pub fn gadd<T: FltT>(a: u64, b: u64) -> u64 {
    T::from_f64(T::fb(a).f() + T::fb(b).f()).tb()
}
pub fn gsub<T: FltT>(a: u64, b: u64) -> u64 {
    T::from_f64(T::fb(a).f() - T::fb(b).f()).tb()
}
pub fn gmul<T: FltT>(a: u64, b: u64) -> u64 {
    T::from_f64(T::fb(a).f() * T::fb(b).f()).tb()
}
pub fn gdiv<T: FltT>(a: u64, b: u64) -> u64 {
    T::from_f64(T::fb(a).f() / T::fb(b).f()).tb()
}
pub fn gfma<T: FltT>(a: u64, b: u64, c: u64) -> u64 {
    T::from_f64(T::fb(a).f().mul_add(T::fb(b).f(), T::fb(c).f())).tb()
}
pub fn gmin<T: FltT>(a: u64, b: u64) -> u64 {
    let (x, y) = (T::fb(a).f(), T::fb(b).f());
    if x.is_nan() {
        b
    } else if y.is_nan() || x < y || (x == y && x.is_sign_negative()) {
        a
    } else {
        b
    }
}
pub fn gmax<T: FltT>(a: u64, b: u64) -> u64 {
    let (x, y) = (T::fb(a).f(), T::fb(b).f());
    if x.is_nan() {
        b
    } else if y.is_nan() || x > y || (x == y && y.is_sign_negative()) {
        a
    } else {
        b
    }
}
/// `min.NaN`/`max.NaN`: a NaN operand gives the canonical NaN.
pub fn nan_or<T: FltT>(a: u64, b: u64, f: F2) -> u64 {
    if T::fb(a).f().is_nan() || T::fb(b).f().is_nan() {
        T::from_f64(f64::NAN).tb()
    } else {
        f(a, b)
    }
}
pub fn gsat<T: FltT>(a: u64) -> u64 {
    let x = T::fb(a).f();
    if x.is_nan() || x <= 0.0 {
        T::from_f64(0.0).tb()
    } else if x >= 1.0 {
        T::from_f64(1.0).tb()
    } else {
        a
    }
}
pub fn gneg<T: FltT>(a: u64) -> u64 {
    let bits = std::mem::size_of::<T>() as u32 * 8;
    a ^ (1u64 << (bits - 1))
}
pub fn gabs<T: FltT>(a: u64) -> u64 {
    let bits = std::mem::size_of::<T>() as u32 * 8;
    a & !(1u64 << (bits - 1))
}
pub fn gcopysign<T: FltT>(a: u64, b: u64) -> u64 {
    // copysign.f32 d, a, b: magnitude of b, sign of a
    let bits = std::mem::size_of::<T>() as u32 * 8;
    let s = 1u64 << (bits - 1);
    (b & !s) | (a & s)
}
macro_rules! f32fn {
    ($name:ident, |$x:ident| $e:expr) => {
        pub fn $name(a: u64) -> u64 {
            let $x = f32::fb(a);
            let r: f32 = $e;
            r.tb()
        }
    };
}
macro_rules! f64fn {
    ($name:ident, |$x:ident| $e:expr) => {
        pub fn $name(a: u64) -> u64 {
            let $x = f64::fb(a);
            let r: f64 = $e;
            r.tb()
        }
    };
}
f32fn!(sqrt32, |x| x.sqrt());
f32fn!(rcp32, |x| 1.0 / x);
f32fn!(rsqrt32, |x| 1.0 / x.sqrt());
f32fn!(sin32, |x| x.sin());
f32fn!(cos32, |x| x.cos());
f32fn!(ex2_32, |x| x.exp2());
f32fn!(lg2_32, |x| x.log2());
f32fn!(tanh32, |x| x.tanh());
f64fn!(sqrt64, |x| x.sqrt());
f64fn!(rcp64, |x| 1.0 / x);
f64fn!(rsqrt64, |x| 1.0 / x.sqrt());
f64fn!(sin64, |x| x.sin());
f64fn!(cos64, |x| x.cos());
f64fn!(ex2_64, |x| x.exp2());
f64fn!(lg2_64, |x| x.log2());
f64fn!(tanh64, |x| x.tanh());
/// rcp.approx.ftz.f64: only the upper 32 bits of the reciprocal are kept.
pub fn rcp64_approx(a: u64) -> u64 {
    rcp64(a) & 0xffff_ffff_0000_0000
}
pub fn gunary<T: FltT>(a: u64, f: fn(f64) -> f64) -> u64 {
    T::from_f64(f(T::fb(a).f())).tb()
}
pub fn gsqrt<T: FltT>(a: u64) -> u64 {
    gunary::<T>(a, f64::sqrt)
}
pub fn grcp<T: FltT>(a: u64) -> u64 {
    gunary::<T>(a, |x| 1.0 / x)
}
pub fn grsqrt<T: FltT>(a: u64) -> u64 {
    gunary::<T>(a, |x| 1.0 / x.sqrt())
}
pub fn gsin<T: FltT>(a: u64) -> u64 {
    gunary::<T>(a, f64::sin)
}
pub fn gcos<T: FltT>(a: u64) -> u64 {
    gunary::<T>(a, f64::cos)
}
pub fn gex2<T: FltT>(a: u64) -> u64 {
    gunary::<T>(a, f64::exp2)
}
pub fn glg2<T: FltT>(a: u64) -> u64 {
    gunary::<T>(a, f64::log2)
}
pub fn gtanh<T: FltT>(a: u64) -> u64 {
    gunary::<T>(a, f64::tanh)
}

/// Applies a 16-bit operation to both halves of a packed x2 value.
pub fn x2_2<const OP: u8>(a: u64, b: u64) -> u64 {
    fn one<const OP: u8>(a: u64, b: u64) -> u64 {
        match OP {
            0 => gadd::<f16>(a, b),
            1 => gsub::<f16>(a, b),
            2 => gmul::<f16>(a, b),
            3 => gmin::<f16>(a, b),
            4 => gmax::<f16>(a, b),
            10 => gadd::<bf16>(a, b),
            11 => gsub::<bf16>(a, b),
            12 => gmul::<bf16>(a, b),
            13 => gmin::<bf16>(a, b),
            _ => gmax::<bf16>(a, b),
        }
    }
    let lo = one::<OP>(a & 0xffff, b & 0xffff);
    let hi = one::<OP>((a >> 16) & 0xffff, (b >> 16) & 0xffff);
    lo | (hi << 16)
}
pub fn x2_fma<const BF: bool>(a: u64, b: u64, c: u64) -> u64 {
    let f = if BF { gfma::<bf16> } else { gfma::<f16> };
    let lo = f(a & 0xffff, b & 0xffff, c & 0xffff);
    let hi = f((a >> 16) & 0xffff, (b >> 16) & 0xffff, (c >> 16) & 0xffff);
    lo | (hi << 16)
}
pub fn x2_neg(a: u64) -> u64 {
    a ^ 0x8000_8000
}
pub fn x2_abs(a: u64) -> u64 {
    a & 0x7fff_7fff
}

// ---------- comparisons ----------
pub fn ieq(a: u64, b: u64) -> bool {
    a == b
}
pub fn ine(a: u64, b: u64) -> bool {
    a != b
}
pub fn ilt<T: IntT>(a: u64, b: u64) -> bool {
    T::fb(a) < T::fb(b)
}
pub fn ile<T: IntT>(a: u64, b: u64) -> bool {
    T::fb(a) <= T::fb(b)
}
pub fn igt<T: IntT>(a: u64, b: u64) -> bool {
    T::fb(a) > T::fb(b)
}
pub fn ige<T: IntT>(a: u64, b: u64) -> bool {
    T::fb(a) >= T::fb(b)
}
macro_rules! fcmp {
    ($name:ident, $x:ident, $y:ident, $e:expr) => {
        pub fn $name<T: FltT>(a: u64, b: u64) -> bool {
            let $x = T::fb(a).f();
            let $y = T::fb(b).f();
            $e
        }
    };
}
fcmp!(feq, x, y, x == y);
fcmp!(fne, x, y, x != y && !x.is_nan() && !y.is_nan());
fcmp!(flt, x, y, x < y);
fcmp!(fle, x, y, x <= y);
fcmp!(fgt, x, y, x > y);
fcmp!(fge, x, y, x >= y);
fcmp!(fequ, x, y, x == y || x.is_nan() || y.is_nan());
fcmp!(fneu, x, y, x != y);
fcmp!(fltu, x, y, x < y || x.is_nan() || y.is_nan());
fcmp!(fleu, x, y, x <= y || x.is_nan() || y.is_nan());
fcmp!(fgtu, x, y, x > y || x.is_nan() || y.is_nan());
fcmp!(fgeu, x, y, x >= y || x.is_nan() || y.is_nan());
fcmp!(fnum, x, y, !x.is_nan() && !y.is_nan());
fcmp!(fnan, x, y, x.is_nan() || y.is_nan());

// ---------- cvt ----------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumTy {
    U(u32),
    S(u32),
    F16,
    BF16,
    F32,
    F64,
}

impl NumTy {
    pub fn parse(t: &str) -> Option<NumTy> {
        Some(match t {
            "u8" => NumTy::U(8),
            "u16" | "b16" => NumTy::U(16),
            "u32" | "b32" => NumTy::U(32),
            "u64" | "b64" => NumTy::U(64),
            "b8" => NumTy::U(8),
            "s8" => NumTy::S(8),
            "s16" => NumTy::S(16),
            "s32" => NumTy::S(32),
            "s64" => NumTy::S(64),
            "f16" => NumTy::F16,
            "bf16" => NumTy::BF16,
            "f32" => NumTy::F32,
            "f64" => NumTy::F64,
            _ => return None,
        })
    }
    pub fn is_float(self) -> bool {
        matches!(self, NumTy::F16 | NumTy::BF16 | NumTy::F32 | NumTy::F64)
    }
    pub fn bits(self) -> u32 {
        match self {
            NumTy::U(b) | NumTy::S(b) => b,
            NumTy::F16 | NumTy::BF16 => 16,
            NumTy::F32 => 32,
            NumTy::F64 => 64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rnd {
    None,
    Rn,
    Rz,
    Rm,
    Rp,
    Rna,
}

#[derive(Debug, Clone, Copy)]
pub struct CvtSpec {
    pub dst: NumTy,
    pub src: NumTy,
    pub rnd: Rnd,
    /// Integer rounding (`.rni` etc.) for float to float.
    pub int_rnd: bool,
    pub sat: bool,
}

fn round_f64(x: f64, r: Rnd) -> f64 {
    match r {
        Rnd::Rz => x.trunc(),
        Rnd::Rm => x.floor(),
        Rnd::Rp => x.ceil(),
        Rnd::Rna => x.round(),
        _ => x.round_ties_even(),
    }
}

fn f32_round_dir(v: f64, r: Rnd) -> f32 {
    let f = v as f32;
    match r {
        Rnd::Rz if (f as f64).abs() > v.abs() => f32::from_bits(f.to_bits() - 1),
        Rnd::Rm if (f as f64) > v => f.next_down_(),
        Rnd::Rp if (f as f64) < v => f.next_up_(),
        _ => f,
    }
}

trait NextF {
    fn next_up_(self) -> Self;
    fn next_down_(self) -> Self;
}
impl NextF for f32 {
    fn next_up_(self) -> f32 {
        if self.is_nan() || self == f32::INFINITY {
            return self;
        }
        if self == 0.0 {
            return f32::from_bits(1);
        }
        let b = self.to_bits();
        f32::from_bits(if self > 0.0 { b + 1 } else { b - 1 })
    }
    fn next_down_(self) -> f32 {
        -(-self).next_up_()
    }
}

pub fn cvt(a: u64, s: &CvtSpec) -> u64 {
    let dmask = if s.dst.bits() >= 64 { u64::MAX } else { (1u64 << s.dst.bits()) - 1 };
    match (s.src.is_float(), s.dst.is_float()) {
        (false, false) => {
            let v: i128 = match s.src {
                NumTy::S(b) => ((a << (64 - b)) as i64 >> (64 - b)) as i128,
                NumTy::U(b) => (if b >= 64 { a } else { a & ((1u64 << b) - 1) }) as i128,
                _ => 0,
            };
            let v = if s.sat { clamp_int(v, s.dst) } else { v };
            (v as u64) & dmask
        }
        (true, false) => {
            let x = src_f64(a, s.src);
            if x.is_nan() {
                return 0;
            }
            let r = round_f64(x, if s.rnd == Rnd::None { Rnd::Rz } else { s.rnd });
            let v = if r >= 1.7e38 {
                i128::MAX
            } else if r <= -1.7e38 {
                i128::MIN
            } else {
                r as i128
            };
            (clamp_int(v, s.dst) as u64) & dmask
        }
        (false, true) => {
            let (signed, b) = match s.src {
                NumTy::S(b) => (true, b),
                NumTy::U(b) => (false, b),
                _ => (false, 64),
            };
            let sv = ((a << (64 - b)) as i64) >> (64 - b);
            let uv = if b >= 64 { a } else { a & ((1u64 << b) - 1) };
            match s.dst {
                NumTy::F32 => {
                    let f = if signed { sv as f32 } else { uv as f32 };
                    let f = if s.sat { f.clamp(0.0, 1.0) } else { f };
                    f.to_bits() as u64
                }
                NumTy::F64 => {
                    let f = if signed { sv as f64 } else { uv as f64 };
                    let f = if s.sat { f.clamp(0.0, 1.0) } else { f };
                    f.to_bits()
                }
                NumTy::F16 => {
                    let f = if signed { sv as f32 } else { uv as f32 };
                    f16::from_f32(if s.sat { f.clamp(0.0, 1.0) } else { f }).to_bits() as u64
                }
                _ => {
                    let f = if signed { sv as f32 } else { uv as f32 };
                    bf16::from_f32(if s.sat { f.clamp(0.0, 1.0) } else { f }).to_bits() as u64
                }
            }
        }
        (true, true) => {
            let mut x = src_f64(a, s.src);
            if s.int_rnd {
                x = round_f64(x, s.rnd);
            }
            if s.sat {
                x = if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
            }
            match s.dst {
                NumTy::F32 => {
                    if s.src == NumTy::F64 && !s.int_rnd {
                        f32_round_dir(x, s.rnd).to_bits() as u64
                    } else {
                        (x as f32).to_bits() as u64
                    }
                }
                NumTy::F64 => x.to_bits(),
                NumTy::F16 => {
                    let h = f16::from_f64(x);
                    h.to_bits() as u64
                }
                _ => bf16::from_f64(x).to_bits() as u64,
            }
        }
    }
}

fn src_f64(a: u64, t: NumTy) -> f64 {
    match t {
        NumTy::F16 => f16::from_bits(a as u16).to_f64(),
        NumTy::BF16 => bf16::from_bits(a as u16).to_f64(),
        NumTy::F32 => f32::from_bits(a as u32) as f64,
        _ => f64::from_bits(a),
    }
}

fn clamp_int(v: i128, t: NumTy) -> i128 {
    match t {
        NumTy::S(b) => v.clamp(-(1i128 << (b - 1)), (1i128 << (b - 1)) - 1),
        NumTy::U(b) => v.clamp(0, (1i128 << b) - 1),
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_ops() {
        assert_eq!(add::<u32>(0xffff_ffff, 1), 0);
        assert_eq!(mulwide::<i32>(0xffff_ffff, 2), (-2i64) as u64);
        assert_eq!(mulwide::<u32>(0xffff_ffff, 2), 0x1_ffff_fffe);
        assert_eq!(mulhi::<u32>(0x8000_0000, 4), 2);
        assert_eq!(mulhi::<u64>(u64::MAX, u64::MAX), u64::MAX - 1);
        assert_eq!(mulhi::<i64>((-1i64) as u64, 5), u64::MAX);
        assert_eq!(mulhi::<i32>((-2i32) as u32 as u64, 3), 0xffff_ffff);
        assert_eq!(shr_s::<i32>(0x8000_0000, 31), 0xffff_ffff);
        assert_eq!(shr_u::<32>(0x8000_0000, 31), 1);
        assert_eq!(shl::<32>(1, 32), 0);
        assert_eq!(clz::<32>(1), 31);
        assert_eq!(brev::<32>(1), 0x8000_0000);
        assert_eq!(bfe::<u32>(0xabcd, 4, 8), 0xbc);
        assert_eq!(bfe::<i32>(0xf0, 4, 4), 0xffff_ffff);
        assert_eq!(bfi::<32>(0xf, 0, 4, 4), 0xf0);
        assert_eq!(prmt(0x44332211, 0x88776655, 0x5140), 0x66225511);
        assert_eq!(div::<i32>((-7i32) as u32 as u64, 2), (-3i32) as u32 as u64);
        assert_eq!(rem::<i32>((-7i32) as u32 as u64, 2), (-1i32) as u32 as u64);
        assert_eq!(bfind::<u32>(0x10), 4);
        assert_eq!(lop3(0xf0, 0xcc, 0xaa, 0x80), 0x80);
        assert_eq!(prmt_mode::<0>(0x44332211, 0x88776655, 1), 0x55443322);
        assert_eq!(prmt_mode::<1>(0x44332211, 0x88776655, 0), 0x66778811);
        assert_eq!(prmt_mode::<2>(0x44332211, 0, 2), 0x33333333);
        assert_eq!(prmt_mode::<4>(0x44332211, 0, 1), 0x22222211);
    }

    #[test]
    fn cvts() {
        let s = CvtSpec { dst: NumTy::S(32), src: NumTy::F32, rnd: Rnd::Rz, int_rnd: false, sat: false };
        assert_eq!(cvt((-2.7f32).to_bits() as u64, &s), (-2i32) as u32 as u64);
        assert_eq!(cvt(f32::NAN.to_bits() as u64, &s), 0);
        assert_eq!(cvt(1e20f32.to_bits() as u64, &s), i32::MAX as u64);
        let s = CvtSpec { dst: NumTy::F32, src: NumTy::S(32), rnd: Rnd::Rn, int_rnd: false, sat: false };
        assert_eq!(cvt((-3i32) as u32 as u64, &s), (-3.0f32).to_bits() as u64);
        let s = CvtSpec { dst: NumTy::S(64), src: NumTy::S(32), rnd: Rnd::None, int_rnd: false, sat: false };
        assert_eq!(cvt(0xffff_ffff, &s), u64::MAX);
        let s = CvtSpec { dst: NumTy::U(8), src: NumTy::S(32), rnd: Rnd::None, int_rnd: false, sat: true };
        assert_eq!(cvt(300, &s), 255);
        let s = CvtSpec { dst: NumTy::F16, src: NumTy::F32, rnd: Rnd::Rn, int_rnd: false, sat: false };
        assert_eq!(cvt(1.5f32.to_bits() as u64, &s), 0x3e00);
        let s = CvtSpec { dst: NumTy::F32, src: NumTy::F32, rnd: Rnd::Rn, int_rnd: true, sat: false };
        assert_eq!(cvt(2.5f32.to_bits() as u64, &s), 2.0f32.to_bits() as u64);
    }
}
