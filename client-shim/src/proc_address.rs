//! `cuGetProcAddress`: maps `(name, cudaVersion, flags)` to the matching export, following the
//! driver's versioning of each function as recorded in cudaTypedefs.h (see
//! `generated/proc_versions.txt`, made by `scripts/gen_cuda_tables.py`). Works before cuInit.
//!
//! Exports are found with `dlsym` on this library itself, so the answer is exactly what the
//! dynamic linker would give for that symbol: implemented, or a stub returning
//! CUDA_ERROR_NOT_SUPPORTED.
//!
//! The table is CUDA 12.9's; what CUDA 13.0 changed for callers that ask with
//! `cudaVersion >= 13000` (libcudart 13) is answered by [`cuda13`].

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
    let resolved = match cuda13::resolve(name, version, flags & PER_THREAD_DEFAULT_STREAM != 0) {
        Some(f) => Ok(f),
        None => resolve(name, version, flags).and_then(|s| lookup(s).ok_or(SYMBOL_NOT_FOUND)),
    };
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
            if crate::debug() {
                let why = if st == VERSION_NOT_SUFFICIENT { "version not sufficient" } else { "symbol not found" };
                eprintln!("cuwire: cuGetProcAddress(\"{name}\", {version}, flags {flags}): {why}");
            }
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

/// What CUDA 13.0 changed in `cuGetProcAddress`'s answers, from the `PFN_*_v13000` typedefs of
/// its cudaTypedefs.h (nvidia-cuda-runtime 13.0.96), for requests with `cudaVersion >= 13000`:
///
/// - four functions got a new signature under their old name: `cuCtxGetDevice` and
///   `cuCtxSynchronize` take the context as an argument (`cuCtxGetDevice_v2`,
///   `cuCtxSynchronize_v2`), `cuMemcpyBatchAsync` and `cuMemcpy3DBatchAsync` lost their
///   `failIdx` out-parameter (`…_v2`). libcudart 13 asks for all four at 13000 during
///   initialisation; handing it the 12.x functions would call them with the wrong arguments.
/// - new functions: batched prefetch/discard, the memory-pool getters and setters, atomic
///   capability queries.
///
/// The context functions are implemented here on top of the 12.x ones; the rest are not
/// supported (the 12.x batch copies are not either), so their answer is a function that names
/// itself once on stderr and returns `CUDA_ERROR_NOT_SUPPORTED`, as the shim's other
/// unimplemented exports do, rather than a NULL pointer that a caller might call. None of them
/// is a symbol of the shim: only libcudart 13's lookups reach them.
mod cuda13 {
    use std::ffi::{c_int, c_void};

    use cuwire_protocol::{cuda, CuError};

    use crate::ffi::{self, CUresult};
    use crate::manual::Handle;
    use crate::{auto, client, context};

    /// The 13.0 answer for `name`, if CUDA 13.0 changed it and the caller asked for 13.0.
    pub fn resolve(name: &str, version: c_int, per_thread: bool) -> Option<*mut c_void> {
        if version < 13000 {
            return None;
        }
        let f: *const c_void = match name {
            "cuCtxGetDevice" => ctx_get_device_v2 as *const c_void,
            "cuCtxSynchronize" => ctx_synchronize_v2 as *const c_void,
            _ => return not_supported(name, per_thread),
        };
        Some(f as *mut c_void)
    }

    fn code(r: CUresult) -> Result<(), CuError> {
        if r == cuda::CUDA_SUCCESS {
            Ok(())
        } else {
            Err(CuError(r))
        }
    }

    /// `cuCtxGetDevice_v2(CUdevice *device, CUcontext ctx)`: the device of `ctx`, or of the
    /// current context when `ctx` is NULL.
    unsafe extern "C" fn ctx_get_device_v2(device: *mut c_int, ctx: Handle) -> CUresult {
        ffi::guard("cuCtxGetDevice_v2", || {
            if ctx.is_null() {
                // SAFETY: CUdevice* out-parameter, passed on.
                return code(unsafe { crate::manual::context::cuCtxGetDevice(device) });
            }
            let c = client::get()?;
            let dev = c.objects().contexts.get(&(ctx as u64)).map(|i| i.device).ok_or(CuError::INVALID_CONTEXT)?;
            // SAFETY: CUdevice* out-parameter.
            unsafe { ffi::write(device, dev) }
        })
    }

    /// `cuCtxSynchronize_v2(CUcontext ctx)`: waits for `ctx` (the current context when NULL),
    /// made current for the call if it is another one.
    unsafe extern "C" fn ctx_synchronize_v2(ctx: Handle) -> CUresult {
        ffi::guard("cuCtxSynchronize_v2", || {
            if ctx.is_null() || ctx as u64 == context::current().0 {
                // SAFETY: no arguments.
                return code(unsafe { auto::cuCtxSynchronize() });
            }
            // SAFETY: a context handle, checked by the push.
            code(unsafe { crate::manual::context::cuCtxPushCurrent_v2(ctx) })?;
            // SAFETY: no arguments.
            let synced = code(unsafe { auto::cuCtxSynchronize() });
            let mut popped: Handle = std::ptr::null_mut();
            // SAFETY: CUcontext* out-parameter on our stack.
            code(unsafe { crate::manual::context::cuCtxPopCurrent_v2(&mut popped) })?;
            synced
        })
    }

    /// The functions that are new in CUDA 13.0 or have a new signature there, and are not
    /// supported: each gets a function that ignores its arguments (harmless under the C calling
    /// convention), names itself once and fails.
    macro_rules! unsupported {
        ($($request:literal => $plain:ident $symbol:literal $(, $ptsz:ident $ptsz_symbol:literal)?;)*) => {
            $(
                unsafe extern "C" fn $plain() -> CUresult {
                    crate::not_supported($symbol)
                }
                $(
                    unsafe extern "C" fn $ptsz() -> CUresult {
                        crate::not_supported($ptsz_symbol)
                    }
                )?
            )*
            fn not_supported(name: &str, per_thread: bool) -> Option<*mut c_void> {
                let f: *const c_void = match name {
                    $($request => {
                        $(
                            if per_thread {
                                return Some($ptsz as *mut c_void);
                            }
                        )?
                        $plain as *const c_void
                    })*
                    _ => return None,
                };
                Some(f as *mut c_void)
            }
        };
    }

    unsupported! {
        "cuMemcpyBatchAsync" => memcpy_batch_v2 "cuMemcpyBatchAsync_v2", memcpy_batch_v2_ptsz "cuMemcpyBatchAsync_v2_ptsz";
        "cuMemcpy3DBatchAsync" => memcpy_3d_batch_v2 "cuMemcpy3DBatchAsync_v2", memcpy_3d_batch_v2_ptsz "cuMemcpy3DBatchAsync_v2_ptsz";
        "cuMemPrefetchBatchAsync" => prefetch_batch "cuMemPrefetchBatchAsync", prefetch_batch_ptsz "cuMemPrefetchBatchAsync_ptsz";
        "cuMemDiscardBatchAsync" => discard_batch "cuMemDiscardBatchAsync", discard_batch_ptsz "cuMemDiscardBatchAsync_ptsz";
        "cuMemDiscardAndPrefetchBatchAsync" => discard_prefetch_batch "cuMemDiscardAndPrefetchBatchAsync",
            discard_prefetch_batch_ptsz "cuMemDiscardAndPrefetchBatchAsync_ptsz";
        "cuMemGetDefaultMemPool" => get_default_mem_pool "cuMemGetDefaultMemPool";
        "cuMemGetMemPool" => get_mem_pool "cuMemGetMemPool";
        "cuMemSetMemPool" => set_mem_pool "cuMemSetMemPool";
        "cuDeviceGetHostAtomicCapabilities" => host_atomic_caps "cuDeviceGetHostAtomicCapabilities";
        "cuDeviceGetP2PAtomicCapabilities" => p2p_atomic_caps "cuDeviceGetP2PAtomicCapabilities";
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn only_requests_for_13_0_get_13_0_answers() {
            assert_eq!(resolve("cuCtxGetDevice", 12090, false), None);
            assert_eq!(resolve("cuCtxGetDevice", 13000, false), Some(ctx_get_device_v2 as *mut c_void));
            assert_eq!(resolve("cuCtxSynchronize", 13010, true), Some(ctx_synchronize_v2 as *mut c_void));
            assert_eq!(resolve("cuMemcpyBatchAsync", 13000, false), Some(memcpy_batch_v2 as *mut c_void));
            assert_eq!(resolve("cuMemcpyBatchAsync", 13000, true), Some(memcpy_batch_v2_ptsz as *mut c_void));
            assert_eq!(resolve("cuMemGetMemPool", 13000, true), Some(get_mem_pool as *mut c_void));
            // Everything else is the 12.9 table's.
            assert_eq!(resolve("cuMemAlloc", 13000, false), None);
        }

        #[test]
        fn ctx_get_device_v2_refuses_an_unknown_context() {
            let mut dev = -1;
            // SAFETY: valid out-parameter; the handle is checked, not dereferenced.
            let r = unsafe { ctx_get_device_v2(&mut dev, 0xdead0 as Handle) };
            assert_ne!(r, cuda::CUDA_SUCCESS);
            assert_eq!(dev, -1);
        }
    }
}
