//! Initialisation, versions and error strings: answered locally.

use super::*;
use crate::{client, export, ffi};
use cuwire_protocol::{cuda, CuError};

/// The driver API level the shim itself implements (reported before cuInit).
pub const SHIM_DRIVER_VERSION: i32 = 12090;

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
