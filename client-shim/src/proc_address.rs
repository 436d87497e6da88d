//! `cuGetProcAddress`: maps `(name, cudaVersion, flags)` to the matching export, following the
//! driver's versioning of each function as recorded in cudaTypedefs.h (see
//! `generated/proc_versions.txt`, made by `scripts/gen_cuda_tables.py`). Works before cuInit.
//!
//! Exports are found with `dlsym` on this library itself, so the answer is exactly what the
//! dynamic linker would give for that symbol: implemented, or a stub returning
//! CUDA_ERROR_NOT_SUPPORTED.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

use cuwire_protocol::CuError;

use crate::{export, ffi};

const VERSIONS_TXT: &str = include_str!("generated/proc_versions.txt");

/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`.
const PER_THREAD_DEFAULT_STREAM: u64 = 2;

/// `CUdriverProcAddressQueryResult`.
pub const SYMBOL_SUCCESS: c_int = 0;
pub const SYMBOL_NOT_FOUND: c_int = 1;
pub const VERSION_NOT_SUFFICIENT: c_int = 2;

struct Version {
    version: i32,
    per_thread: bool,
    symbol: &'static str,
}

fn versions() -> &'static HashMap<&'static str, Vec<Version>> {
    static MAP: OnceLock<HashMap<&'static str, Vec<Version>>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map: HashMap<&str, Vec<Version>> = HashMap::new();
        for line in VERSIONS_TXT.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [name, version, variant, symbol] = f[..] {
                if let Ok(version) = version.parse() {
                    map.entry(name).or_default().push(Version { version, per_thread: variant != "-", symbol });
                }
            }
        }
        map
    })
}

/// Which exported symbol serves a request, or the driver's status for why none does.
pub fn resolve(name: &str, cuda_version: i32, flags: u64) -> Result<&str, c_int> {
    if name.is_empty() {
        return Err(SYMBOL_NOT_FOUND);
    }
    let per_thread = flags & PER_THREAD_DEFAULT_STREAM != 0;
    let Some(all) = versions().get(name) else {
        // Not a versioned API name: an exact export name still resolves.
        return if lookup(name).is_some() { Ok(leak(name)) } else { Err(SYMBOL_NOT_FOUND) };
    };
    let best = all.iter().filter(|v| v.version <= cuda_version).map(|v| v.version).max().ok_or(VERSION_NOT_SUFFICIENT)?;
    let at_best: Vec<&Version> = all.iter().filter(|v| v.version == best).collect();
    let pick = at_best
        .iter()
        .find(|v| v.per_thread == per_thread)
        .or_else(|| at_best.iter().find(|v| !v.per_thread))
        .or(at_best.first())
        .ok_or(SYMBOL_NOT_FOUND)?;
    // A per-thread variant the driver never exported: the plain function serves.
    if lookup(pick.symbol).is_none() {
        if let Some(plain) = at_best.iter().find(|v| !v.per_thread) {
            return Ok(plain.symbol);
        }
    }
    Ok(pick.symbol)
}

fn leak(name: &str) -> &'static str {
    // Exact-name lookups are rare and bounded by the set of exports.
    static NAMES: std::sync::Mutex<Option<std::collections::HashSet<&'static str>>> = std::sync::Mutex::new(None);
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    let set = names.get_or_insert_with(Default::default);
    if let Some(s) = set.get(name) {
        return s;
    }
    let s: &'static str = Box::leak(name.to_owned().into_boxed_str());
    set.insert(s);
    s
}

/// This library's own handle, for dlsym.
fn self_handle() -> *mut c_void {
    struct H(*mut c_void);
    // SAFETY: a dlopen handle may be used from any thread.
    unsafe impl Send for H {}
    // SAFETY: as above.
    unsafe impl Sync for H {}
    static HANDLE: OnceLock<H> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // SAFETY: dladdr on the address of one of our own functions fills `info` with the
            // file this code was loaded from; dlopen with RTLD_NOLOAD only returns a handle to an
            // already loaded object.
            unsafe {
                let mut info: libc::Dl_info = std::mem::zeroed();
                if libc::dladdr(crate::manual::init::cuInit as *const c_void, &mut info) == 0 || info.dli_fname.is_null() {
                    return H(libc::RTLD_DEFAULT);
                }
                let h = libc::dlopen(info.dli_fname, libc::RTLD_NOW | libc::RTLD_NOLOAD);
                H(if h.is_null() { libc::RTLD_DEFAULT } else { h })
            }
        })
        .0
}

/// The address of one of our exports.
pub fn lookup(symbol: &str) -> Option<*mut c_void> {
    let c = std::ffi::CString::new(symbol).ok()?;
    // SAFETY: dlsym with a valid handle and NUL-terminated name.
    let p = unsafe { libc::dlsym(self_handle(), c.as_ptr()) };
    (!p.is_null()).then_some(p)
}

fn get_proc_address(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64, status: *mut c_int) -> Result<(), CuError> {
    if symbol.is_null() || pfn.is_null() {
        return Err(CuError::INVALID_VALUE);
    }
    // SAFETY: NUL-terminated symbol name (driver API contract).
    let name = unsafe { CStr::from_ptr(symbol) }.to_str().unwrap_or("");
    let resolved = resolve(name, version, flags).and_then(|s| lookup(s).ok_or(SYMBOL_NOT_FOUND));
    match resolved {
        Ok(p) => {
            // SAFETY: void** and optional CUdriverProcAddressQueryResult* out-parameters.
            unsafe {
                ffi::write(pfn, p)?;
                ffi::write_opt(status, SYMBOL_SUCCESS);
            }
            Ok(())
        }
        Err(st) => {
            // SAFETY: as above.
            unsafe {
                ffi::write(pfn, std::ptr::null_mut())?;
                ffi::write_opt(status, st);
            }
            Err(CuError::NOT_FOUND)
        }
    }
}

export! {
    fn cuGetProcAddress_v2 | cuGetProcAddress_v2_ptsz (symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64, status: *mut c_int) {
        get_proc_address(symbol, pfn, version, flags, status)
    }
}

export! {
    fn cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64) {
        get_proc_address(symbol, pfn, version, flags, std::ptr::null_mut())
    }
}

export! {
    /// The undocumented tables libcudart asks for by UUID: see [`crate::export_tables`].
    fn cuGetExportTable(table: *mut *const c_void, id: *const [u8; 16]) {
        // SAFETY: const void** and const CUuuid* arguments (driver API contract).
        unsafe { crate::export_tables::get_export_table(table, id) }
    }
}
