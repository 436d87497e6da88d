//! The C boundary: how exports turn `Result<(), CuError>` into a `CUresult`, never unwind into
//! C, and read or write the caller's pointers. All pointer access of the shim goes through the
//! helpers here.

use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use cuwire_protocol::api::{Arg, In, Out, WireValue};
use cuwire_protocol::cuda;
pub use cuwire_protocol::cuda::CUresult;
use cuwire_protocol::types::*;

/// Runs an export's body: success is 0, an error its code, a panic `CUDA_ERROR_UNKNOWN` with a
/// line on stderr (the application is never taken down by the shim).
pub fn guard(name: &'static str, body: impl FnOnce() -> Result<(), CuError>) -> CUresult {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => cuda::CUDA_SUCCESS,
        Ok(Err(e)) => {
            if crate::debug() {
                eprintln!("cuwire: {name} -> {e}");
            }
            e.0
        }
        Err(_) => {
            eprintln!("cuwire: internal error in {name}; returning CUDA_ERROR_UNKNOWN");
            cuda::CUDA_ERROR_UNKNOWN
        }
    }
}

/// Defines exported driver functions: `fn name | alias… (args) { body }`. The body returns
/// `Result<(), CuError>`; each alias is exported with the same signature and behaviour (the
/// driver's `_v2`, legacy and `_ptds`/`_ptsz` names of one function).
#[macro_export]
macro_rules! export {
    ($(#[$m:meta])* fn $name:ident $(| $alias:ident)* ( $($p:ident : $t:ty),* $(,)? ) $body:block) => {
        $(#[$m])*
        #[no_mangle]
        pub unsafe extern "C" fn $name($($p: $t),*) -> $crate::ffi::CUresult {
            $crate::ffi::guard(stringify!($name), move || -> Result<(), cuwire_protocol::CuError> { $body })
        }
        $crate::export!(@aliases $name ($($p : $t),*) $($alias)*);
    };
    (@aliases $name:ident ($($p:ident : $t:ty),*)) => {};
    (@aliases $name:ident ($($p:ident : $t:ty),*) $alias:ident $($rest:ident)*) => {
        #[no_mangle]
        pub unsafe extern "C" fn $alias($($p: $t),*) -> $crate::ffi::CUresult {
            // SAFETY: same signature and contract as the function it names.
            unsafe { $name($($p),*) }
        }
        $crate::export!(@aliases $name ($($p : $t),*) $($rest)*);
    };
}

/// Writes an out-parameter; a null pointer is CUDA_ERROR_INVALID_VALUE.
///
/// # Safety
/// `ptr` is null or valid for a write of `T` (the driver API's contract for out-parameters).
pub unsafe fn write<T>(ptr: *mut T, value: T) -> Result<(), CuError> {
    if ptr.is_null() {
        return Err(CuError::INVALID_VALUE);
    }
    // SAFETY: non-null, and valid for writes by the caller's contract.
    unsafe { ptr.write_unaligned(value) };
    Ok(())
}

/// Writes an optional out-parameter (null means "not wanted").
///
/// # Safety
/// As [`write`].
pub unsafe fn write_opt<T>(ptr: *mut T, value: T) {
    if !ptr.is_null() {
        // SAFETY: non-null, and valid for writes by the caller's contract.
        unsafe { ptr.write_unaligned(value) };
    }
}

/// Reads a NUL-terminated string argument.
///
/// # Safety
/// `ptr` is null or points to a NUL-terminated string.
pub unsafe fn cstr<'a>(ptr: *const c_char) -> Result<&'a str, CuError> {
    if ptr.is_null() {
        return Err(CuError::INVALID_VALUE);
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str().map_err(|_| CuError::INVALID_VALUE)
}

/// Copies a string into a caller's `char*` buffer of `len` bytes, NUL-terminated and truncated.
///
/// # Safety
/// `buf` is null or valid for `len` bytes of writes.
pub unsafe fn write_cstr(buf: *mut c_char, len: i32, s: &str) -> Result<(), CuError> {
    if buf.is_null() || len <= 0 {
        return Err(CuError::INVALID_VALUE);
    }
    let n = s.len().min(len as usize - 1);
    // SAFETY: buf has room for len bytes; n < len.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf as *mut u8, n);
        *buf.add(n) = 0;
    }
    Ok(())
}

/// Views a caller's input buffer.
///
/// # Safety
/// `ptr` is valid for `len` bytes of reads for the duration of the borrow.
pub unsafe fn slice<'a>(ptr: *const c_void, len: usize) -> Result<&'a [u8], CuError> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(CuError::INVALID_VALUE);
    }
    // SAFETY: non-null and readable for len bytes by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr as *const u8, len) })
}

/// Views a caller's output buffer.
///
/// # Safety
/// `ptr` is valid for `len` bytes of writes and not otherwise borrowed.
pub unsafe fn slice_mut<'a>(ptr: *mut c_void, len: usize) -> Result<&'a mut [u8], CuError> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(CuError::INVALID_VALUE);
    }
    // SAFETY: non-null and writable for len bytes by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) })
}

/// A wire value and its C form, for the generated exports.
pub trait CValue: WireValue {
    type C: Copy;
    fn from_c(c: Self::C) -> Self;
    fn to_c(self) -> Self::C;
}

macro_rules! plain_values {
    ($($t:ty),*) => {$(
        impl CValue for $t {
            type C = $t;
            fn from_c(c: $t) -> $t { c }
            fn to_c(self) -> $t { self }
        }
    )*};
}
plain_values!(u8, u32, i32, u64, f32);

macro_rules! handle_values {
    ($($t:ident),*) => {$(
        impl CValue for $t {
            type C = *mut c_void;
            fn from_c(c: *mut c_void) -> $t { $t(c as u64) }
            fn to_c(self) -> *mut c_void { self.0 as *mut c_void }
        }
    )*};
}
handle_values!(Ctx, Stream, Event, Module, Func, Library, Kernel);

/// How a table argument crosses the C boundary: `In<T>` by value, `Out<T>` as a pointer the
/// reply is written through.
pub trait CArg: Arg {
    type C: Copy;
    fn check(c: Self::C) -> Result<(), CuError>;
    fn to_wire(c: Self::C) -> Self::Req;
    /// # Safety
    /// For `Out`, `c` passed `check` and is valid for a write of the C value.
    unsafe fn write_back(c: Self::C, value: Self::Rep) -> Result<(), CuError>;
}

impl<T: CValue> CArg for In<T> {
    type C = T::C;
    fn check(_: T::C) -> Result<(), CuError> {
        Ok(())
    }
    fn to_wire(c: T::C) -> T {
        T::from_c(c)
    }
    unsafe fn write_back(_: T::C, _: ()) -> Result<(), CuError> {
        Ok(())
    }
}

impl<T: CValue> CArg for Out<T> {
    type C = *mut T::C;
    fn check(c: *mut T::C) -> Result<(), CuError> {
        if c.is_null() {
            Err(CuError::INVALID_VALUE)
        } else {
            Ok(())
        }
    }
    fn to_wire(_: *mut T::C) {}
    unsafe fn write_back(c: *mut T::C, value: T) -> Result<(), CuError> {
        // SAFETY: checked non-null; writable by the caller's contract.
        unsafe { write(c, value.to_c()) }
    }
}
