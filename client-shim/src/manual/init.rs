//! Initialisation, versions and error strings: answered locally.

use super::*;
use crate::{client, export, ffi};
use cuwire_protocol::{cuda, CuError};

/// The driver version the shim reports: `cuDriverGetVersion` answers this before cuInit, and
/// after it the higher of this and the server's driver version (a newer real driver behind the
/// pool). Why 13.0:
/// - libcudart 13 refuses a driver older than 13.0 (`cudaErrorInsufficientDriver` from its
///   first call); libcudart 12, cuda-bindings 12.9 and numba-cuda only need one at least as new
///   as their own 12.x, so 13000 serves both (e2e tests runtime, foundation, numba, nvcc13);
/// - what the shim answers is CUDA 12.9's driver API (the generated tables) plus what CUDA 13.0
///   changed for callers that ask `cuGetProcAddress` for 13.0 (`proc_address::cuda13`);
///   nothing of 13.1 or later is known, so no higher number;
/// - the integrity check libcudart runs (`export_tables`) mixes in the number
///   `cuDriverGetVersion` returns, so both come from here and cannot disagree.
///
/// Whether PTX from a CUDA 13 compiler (ISA 9.0) runs is decided where it is compiled: the
/// emulated GPU reads it; a real driver older than 13.0 behind the pool refuses it at load.
pub const SHIM_DRIVER_VERSION: i32 = 13000;

export! {
    /// Connects to the pool (once per process).
    fn cuInit(flags: c_uint) {
        if flags != 0 {
            return Err(CuError::INVALID_VALUE);
        }
        client::init().map(|_| ())
    }
}

export! {
    fn cuDriverGetVersion(version: *mut c_int) {
        let v = client::initialized().map(|c| c.driver_version.max(SHIM_DRIVER_VERSION)).unwrap_or(SHIM_DRIVER_VERSION);
        // SAFETY: int* out-parameter.
        unsafe { ffi::write(version, v) }
    }
}

static UNKNOWN_NAME: &[u8] = b"CUDA_ERROR_UNKNOWN_CODE\0";

fn static_cstr(s: &'static str) -> *const c_char {
    // The generated tables hold plain &str; keep one NUL-terminated copy of each, for ever.
    use std::collections::HashMap;
    use std::sync::Mutex;
    static CACHE: Mutex<Option<HashMap<&'static str, &'static [u8]>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let map = cache.get_or_insert_with(HashMap::new);
    let bytes = map.entry(s).or_insert_with(|| {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        Box::leak(v.into_boxed_slice())
    });
    bytes.as_ptr() as *const c_char
}

export! {
    fn cuGetErrorName(error: c_uint, out: *mut *const c_char) {
        match cuda::error_name(error) {
            // SAFETY: const char** out-parameter.
            Some(name) => unsafe { ffi::write(out, static_cstr(name)) },
            None => {
                // SAFETY: as above.
                unsafe { ffi::write_opt(out, UNKNOWN_NAME.as_ptr() as *const c_char) };
                Err(CuError::INVALID_VALUE)
            }
        }
    }
}

export! {
    fn cuGetErrorString(error: c_uint, out: *mut *const c_char) {
        match cuda::error_string(error) {
            // SAFETY: const char** out-parameter.
            Some(text) => unsafe { ffi::write(out, static_cstr(text)) },
            None => {
                // SAFETY: as above.
                unsafe { ffi::write_opt(out, std::ptr::null()) };
                Err(CuError::INVALID_VALUE)
            }
        }
    }
}
