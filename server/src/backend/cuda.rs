//! The real-driver backend: the CUDA driver (`libcuda.so.1`) loaded with libloading from a
//! configurable path.
//!
//! Shape:
//! - Every driver entry point is resolved at load as OPTIONAL, under the versioned name the
//!   driver exports (`cuMemAlloc_v2`, ...). A method whose entry point is missing returns
//!   `CUDA_ERROR_NOT_SUPPORTED`; only `cuInit` is required (without it the library is not a
//!   CUDA driver, and a failing `cuInit` means there is no usable GPU: both are load errors).
//! - Each backend context id owns one real `CUcontext` made with `cuCtxCreate` (never shared
//!   between ids). Session threads call concurrently, so every method makes its context current
//!   on the calling thread first (`cuCtxSetCurrent`).
//! - Streams, events, modules and functions live in per-context tables keyed by this backend's
//!   own `u64` ids; raw driver handles never leave this file. Stream 0 is the context's NULL
//!   (legacy default) stream.
//! - Calls that destroy driver objects (stream/event destroy, module unload, context destroy)
//!   hold the context's gate exclusively, every other call holds it shared, so a handle is never
//!   destroyed while another thread is inside the driver with it.
//! - Device printf goes to the server process's stdout on a real GPU (the driver prints it);
//!   `take_output` has nothing to return.
//!
//! Kernel parameter layouts (what the shim needs to pack `cuLaunchKernel` arguments) come from
//! `cuFuncGetParamInfo` (driver 12.4+). When that is missing or fails, they come from the image
//! itself: the `.entry` signatures of PTX text, or the `EIATTR_KPARAM_INFO` records of a cubin's
//! `.nv.info.<kernel>` sections (also inside uncompressed fat binaries).
//!
//! This file is one of the two places in the project where `unsafe` is allowed; every unsafe
//! block carries a `// SAFETY:` comment (enforced by the clippy lint below).
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use bytes::Bytes;
use cuwire_protocol::handshake::DeviceInfo;
use cuwire_protocol::{cuda, CuError, CuResult, DevPtr, FuncAttrs, FunctionInfo, LaunchDims, ParamInfo};
use libloading::Library;
use parking_lot::{Mutex, RwLock};

use super::{Backend, Id, LoadedModule, DEFAULT_STREAM};

// ---------------------------------------------------------------------------------------------
// The driver ABI this file uses (transcribed from cuda.h 12.x).
// ---------------------------------------------------------------------------------------------

type CUresult = u32;
type CUdevice = c_int;
type CUdeviceptr = u64;
/// Any opaque driver handle: CUcontext, CUstream, CUevent, CUmodule, CUfunction.
type Handle = *mut c_void;

const CUDA_SUCCESS: CUresult = 0;
/// `CU_JIT_ERROR_LOG_BUFFER` / `CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES` (CUjit_option).
const CU_JIT_ERROR_LOG_BUFFER: c_int = 5;
const CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES: c_int = 6;
/// `cuLaunchKernel` `extra` keys.
const CU_LAUNCH_PARAM_END: usize = 0x00;
const CU_LAUNCH_PARAM_BUFFER_POINTER: usize = 0x01;
const CU_LAUNCH_PARAM_BUFFER_SIZE: usize = 0x02;
/// Far more parameters than a kernel can take (the parameter space is at most 32 KiB).
const MAX_PARAMS: usize = 32 * 1024;
const JIT_LOG_BYTES: usize = 16 * 1024;

macro_rules! driver_api {
    ($( $field:ident: [$($name:literal),+] fn($($arg:ty),*); )*) => {
        /// The driver's entry points; `None` where the loaded driver does not export one.
        #[allow(clippy::type_complexity)]
        struct Api {
            $( $field: Option<unsafe extern "C" fn($($arg),*) -> CUresult>, )*
        }

        impl Api {
            fn resolve(lib: &'static Library) -> Api {
                Api {
                    $( $field: {
                        // SAFETY: the fn-pointer type of this field is the prototype cuda.h
                        // declares for these names (the table is transcribed from it), and the
                        // library is leaked, so the pointer stays valid for the whole process.
                        unsafe { symbol(lib, &[$($name),+]) }
                    }, )*
                }
            }

            /// The first name of each entry point the driver lacks (for the load log).
            fn missing(&self) -> Vec<&'static str> {
                let mut out = Vec::new();
                $( if self.$field.is_none() { out.push([$($name),+][0]); } )*
                out
            }
        }
    };
}

driver_api! {
    init: ["cuInit"] fn(c_uint);
    driver_get_version: ["cuDriverGetVersion"] fn(*mut c_int);
    get_error_name: ["cuGetErrorName"] fn(CUresult, *mut *const c_char);
    device_get_count: ["cuDeviceGetCount"] fn(*mut c_int);
    device_get: ["cuDeviceGet"] fn(*mut CUdevice, c_int);
    device_get_name: ["cuDeviceGetName"] fn(*mut c_char, c_int, CUdevice);
    device_get_uuid: ["cuDeviceGetUuid_v2", "cuDeviceGetUuid"] fn(*mut u8, CUdevice);
    device_total_mem: ["cuDeviceTotalMem_v2"] fn(*mut usize, CUdevice);
    device_get_attribute: ["cuDeviceGetAttribute"] fn(*mut c_int, c_int, CUdevice);
    device_get_pci_bus_id: ["cuDeviceGetPCIBusId"] fn(*mut c_char, c_int, CUdevice);
    primary_ctx_retain: ["cuDevicePrimaryCtxRetain"] fn(*mut Handle, CUdevice);
    primary_ctx_release: ["cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"] fn(CUdevice);
    ctx_create_v2: ["cuCtxCreate_v2"] fn(*mut Handle, c_uint, CUdevice);
    ctx_create_v4: ["cuCtxCreate_v4"] fn(*mut Handle, *mut c_void, c_uint, CUdevice);
    ctx_destroy: ["cuCtxDestroy_v2"] fn(Handle);
    ctx_set_current: ["cuCtxSetCurrent"] fn(Handle);
    ctx_pop_current: ["cuCtxPopCurrent_v2"] fn(*mut Handle);
    ctx_synchronize: ["cuCtxSynchronize"] fn();
    mem_alloc: ["cuMemAlloc_v2"] fn(*mut CUdeviceptr, usize);
    mem_free: ["cuMemFree_v2"] fn(CUdeviceptr);
    mem_get_info: ["cuMemGetInfo_v2"] fn(*mut usize, *mut usize);
    memcpy_htod_async: ["cuMemcpyHtoDAsync_v2"] fn(CUdeviceptr, *const c_void, usize, Handle);
    memcpy_dtoh_async: ["cuMemcpyDtoHAsync_v2"] fn(*mut c_void, CUdeviceptr, usize, Handle);
    memcpy_dtod_async: ["cuMemcpyDtoDAsync_v2"] fn(CUdeviceptr, CUdeviceptr, usize, Handle);
    memcpy_htod: ["cuMemcpyHtoD_v2"] fn(CUdeviceptr, *const c_void, usize);
    memcpy_dtoh: ["cuMemcpyDtoH_v2"] fn(*mut c_void, CUdeviceptr, usize);
    memcpy_dtod: ["cuMemcpyDtoD_v2"] fn(CUdeviceptr, CUdeviceptr, usize);
    memset_d8_async: ["cuMemsetD8Async"] fn(CUdeviceptr, u8, usize, Handle);
    memset_d16_async: ["cuMemsetD16Async"] fn(CUdeviceptr, u16, usize, Handle);
    memset_d32_async: ["cuMemsetD32Async"] fn(CUdeviceptr, u32, usize, Handle);
    stream_create_with_priority: ["cuStreamCreateWithPriority"] fn(*mut Handle, c_uint, c_int);
    stream_create: ["cuStreamCreate"] fn(*mut Handle, c_uint);
    stream_destroy: ["cuStreamDestroy_v2"] fn(Handle);
    stream_synchronize: ["cuStreamSynchronize"] fn(Handle);
    stream_query: ["cuStreamQuery"] fn(Handle);
    stream_wait_event: ["cuStreamWaitEvent"] fn(Handle, Handle, c_uint);
    event_create: ["cuEventCreate"] fn(*mut Handle, c_uint);
    event_destroy: ["cuEventDestroy_v2"] fn(Handle);
    event_record: ["cuEventRecord"] fn(Handle, Handle);
    event_synchronize: ["cuEventSynchronize"] fn(Handle);
    event_query: ["cuEventQuery"] fn(Handle);
    event_elapsed_time: ["cuEventElapsedTime", "cuEventElapsedTime_v2"] fn(*mut f32, Handle, Handle);
    module_load_data: ["cuModuleLoadData"] fn(*mut Handle, *const c_void);
    module_load_data_ex: ["cuModuleLoadDataEx"] fn(*mut Handle, *const c_void, c_uint, *mut c_int, *mut *mut c_void);
    module_unload: ["cuModuleUnload"] fn(Handle);
    module_get_function: ["cuModuleGetFunction"] fn(*mut Handle, Handle, *const c_char);
    module_get_global: ["cuModuleGetGlobal_v2"] fn(*mut CUdeviceptr, *mut usize, Handle, *const c_char);
    module_get_function_count: ["cuModuleGetFunctionCount"] fn(*mut c_uint, Handle);
    module_enumerate_functions: ["cuModuleEnumerateFunctions"] fn(*mut Handle, c_uint, Handle);
    func_get_name: ["cuFuncGetName"] fn(*mut *const c_char, Handle);
    func_get_param_info: ["cuFuncGetParamInfo"] fn(Handle, usize, *mut usize, *mut usize);
    func_get_attribute: ["cuFuncGetAttribute"] fn(*mut c_int, c_int, Handle);
    func_set_attribute: ["cuFuncSetAttribute"] fn(Handle, c_int, c_int);
    launch_kernel: ["cuLaunchKernel"] fn(Handle, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, Handle, *mut *mut c_void, *mut *mut c_void);
}

/// The first of `names` the library exports, as a `T`.
///
/// # Safety
/// `T` must be the `unsafe extern "C" fn` type of the C prototype of every name in `names`, and
/// `lib` must stay loaded for as long as the returned pointer is used (it is `'static` here).
unsafe fn symbol<T: Copy>(lib: &'static Library, names: &[&str]) -> Option<T> {
    names.iter().find_map(|name| {
        // SAFETY: the caller guarantees that `T` is the symbol's real type; the symbol is copied
        // out of the `Symbol` guard, which is sound because `lib` is never unloaded.
        unsafe { lib.get::<T>(name.as_bytes()) }.ok().map(|s| *s)
    })
}

/// The entry point, or `CUDA_ERROR_NOT_SUPPORTED` when this driver does not export it.
fn need<T>(f: Option<T>) -> CuResult<T> {
    f.ok_or(CuError::NOT_SUPPORTED)
}

/// Every non-zero CUresult becomes a `CuError` with that code.
fn ck(r: CUresult) -> CuResult<()> {
    if r == CUDA_SUCCESS {
        Ok(())
    } else {
        Err(CuError(r))
    }
}

fn to_usize(n: u64) -> CuResult<usize> {
    usize::try_from(n).map_err(|_| CuError::INVALID_VALUE)
}

/// Raw handles are kept as integers so the tables are `Send + Sync`; they never leave this file.
fn h(raw: usize) -> Handle {
    raw as Handle
}

fn cstring(name: &str) -> CuResult<CString> {
    CString::new(name).map_err(|_| CuError::INVALID_VALUE)
}

/// A NUL-terminated C string written by the driver into `buf`, as text.
fn c_buf_to_string(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Contexts and their object tables.
// ---------------------------------------------------------------------------------------------

struct ModuleEntry {
    raw: usize,
    /// Parameter layouts of the module's entry points by name, as returned by `module_load`.
    layouts: HashMap<String, Vec<ParamInfo>>,
}

struct FuncEntry {
    module: Id,
    raw: usize,
    /// The parameter layout, when known: lets `launch` pass `kernelParams` pointers.
    layout: Option<Vec<ParamInfo>>,
}

#[derive(Default)]
struct Objects {
    streams: HashMap<Id, usize>,
    events: HashMap<Id, usize>,
    modules: HashMap<Id, ModuleEntry>,
    functions: HashMap<Id, FuncEntry>,
}

struct Ctx {
    dev: usize,
    raw: usize,
    /// Shared by ordinary calls, exclusive for calls that destroy driver objects; `false` once
    /// the context is destroyed.
    gate: RwLock<bool>,
    objs: Mutex<Objects>,
}

impl Ctx {
    fn stream(&self, stream: Id) -> CuResult<Handle> {
        if stream == DEFAULT_STREAM {
            return Ok(ptr::null_mut());
        }
        self.objs.lock().streams.get(&stream).map(|&s| h(s)).ok_or(CuError::INVALID_HANDLE)
    }

    fn event(&self, event: Id) -> CuResult<Handle> {
        self.objs.lock().events.get(&event).map(|&e| h(e)).ok_or(CuError::INVALID_HANDLE)
    }
}

/// The real-driver backend.
pub struct CudaBackend {
    api: Api,
    path: String,
    driver_version: i32,
    devices: Vec<CUdevice>,
    info: Vec<OnceLock<DeviceInfo>>,
    /// Per device: its primary context once retained for `mem_info` (see there).
    primary: Vec<Mutex<Option<usize>>>,
    contexts: Mutex<HashMap<Id, Arc<Ctx>>>,
    next_id: AtomicU64,
}

/// Loads the driver from `path`.
pub fn load(path: &str) -> anyhow::Result<Box<dyn Backend>> {
    Ok(Box::new(CudaBackend::open(path)?))
}

impl CudaBackend {
    /// Loads and initialises the driver at `path` and lists its devices.
    pub fn open(path: &str) -> anyhow::Result<CudaBackend> {
        // SAFETY: loading a shared library runs its initialisers; the CUDA driver's have no
        // preconditions on the caller. The path is the operator's choice (`--cuda-lib`).
        let lib = unsafe { Library::new(path) }.with_context(|| format!("cannot load the CUDA driver from {path}"))?;
        // Never unloaded: the resolved entry points are used for the life of the process, and
        // unloading libcuda while its worker threads exist is not safe anyway.
        let lib: &'static Library = Box::leak(Box::new(lib));
        let api = Api::resolve(lib);
        let init = api.init.ok_or_else(|| anyhow::anyhow!("{path} exports no cuInit: it is not a CUDA driver"))?;
        let mut backend = CudaBackend {
            api,
            path: path.to_owned(),
            driver_version: 0,
            devices: Vec::new(),
            info: Vec::new(),
            primary: Vec::new(),
            contexts: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        };
        // SAFETY: cuInit(unsigned int) with the only valid flags value, 0.
        let r = unsafe { init(0) };
        if r != CUDA_SUCCESS {
            anyhow::bail!("cuInit failed in {path}: {}", backend.error_name(r));
        }
        if let Some(f) = backend.api.driver_get_version {
            let mut v: c_int = 0;
            // SAFETY: cuDriverGetVersion(int*): `v` is a live local.
            if unsafe { f(&mut v) } == CUDA_SUCCESS {
                backend.driver_version = v;
            }
        }
        let count_fn = backend.api.device_get_count.ok_or_else(|| anyhow::anyhow!("{path} exports no cuDeviceGetCount"))?;
        let get_fn = backend.api.device_get.ok_or_else(|| anyhow::anyhow!("{path} exports no cuDeviceGet"))?;
        let mut count: c_int = 0;
        // SAFETY: cuDeviceGetCount(int*): `count` is a live local.
        let r = unsafe { count_fn(&mut count) };
        if r != CUDA_SUCCESS {
            anyhow::bail!("cuDeviceGetCount failed in {path}: {}", backend.error_name(r));
        }
        for ordinal in 0..count.max(0) {
            let mut dev: CUdevice = 0;
            // SAFETY: cuDeviceGet(CUdevice*, int) with an ordinal below the device count.
            let r = unsafe { get_fn(&mut dev, ordinal) };
            if r != CUDA_SUCCESS {
                anyhow::bail!("cuDeviceGet({ordinal}) failed in {path}: {}", backend.error_name(r));
            }
            backend.devices.push(dev);
        }
        backend.info = backend.devices.iter().map(|_| OnceLock::new()).collect();
        backend.primary = backend.devices.iter().map(|_| Mutex::new(None)).collect();
        let missing = backend.api.missing();
        tracing::info!(
            path,
            driver_version = backend.driver_version,
            devices = backend.devices.len(),
            missing = ?missing,
            "CUDA driver loaded"
        );
        Ok(backend)
    }

    fn id(&self) -> Id {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The driver's name for an error code (the protocol's table first, then `cuGetErrorName`).
    fn error_name(&self, code: CUresult) -> String {
        if let Some(name) = cuda::error_name(code) {
            return name.to_owned();
        }
        if let Some(f) = self.api.get_error_name {
            let mut s: *const c_char = ptr::null();
            // SAFETY: cuGetErrorName(CUresult, const char**): `s` is a live local; on success
            // the driver points it at a static NUL-terminated string.
            if unsafe { f(code, &mut s) } == CUDA_SUCCESS && !s.is_null() {
                // SAFETY: `s` is a non-null pointer to a static NUL-terminated string (above).
                return unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned();
            }
        }
        format!("CUDA_ERROR_{code}")
    }

    fn device(&self, dev: usize) -> CuResult<CUdevice> {
        self.devices.get(dev).copied().ok_or(CuError::INVALID_DEVICE)
    }

    fn ctx(&self, ctx: Id) -> CuResult<Arc<Ctx>> {
        self.contexts.lock().get(&ctx).cloned().ok_or(CuError::INVALID_CONTEXT)
    }

    fn set_current(&self, raw: Handle) -> CuResult<()> {
        let f = need(self.api.ctx_set_current)?;
        // SAFETY: cuCtxSetCurrent(CUcontext) with a context this backend created and has not
        // destroyed (callers hold the context's gate), or NULL.
        ck(unsafe { f(raw) })
    }

    /// Runs `f` with the context current on this thread and its gate held shared.
    fn with_ctx<R>(&self, ctx: Id, f: impl FnOnce(&Ctx) -> CuResult<R>) -> CuResult<R> {
        let c = self.ctx(ctx)?;
        let alive = c.gate.read();
        if !*alive {
            return Err(CuError::INVALID_CONTEXT);
        }
        self.set_current(h(c.raw))?;
        f(&c)
    }

    /// Like `with_ctx`, with the gate held exclusively: for calls that destroy driver objects.
    fn with_ctx_exclusive<R>(&self, ctx: Id, f: impl FnOnce(&Ctx) -> CuResult<R>) -> CuResult<R> {
        let c = self.ctx(ctx)?;
        let alive = c.gate.write();
        if !*alive {
            return Err(CuError::INVALID_CONTEXT);
        }
        self.set_current(h(c.raw))?;
        f(&c)
    }

    /// Free and total memory of the current context's device.
    fn current_mem_info(&self) -> CuResult<(u64, u64)> {
        let f = need(self.api.mem_get_info)?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: cuMemGetInfo_v2(size_t*, size_t*): both are live locals; a context is current.
        ck(unsafe { f(&mut free, &mut total) })?;
        Ok((free as u64, total as u64))
    }

    fn query_device_info(&self, dev: usize, cudev: CUdevice) -> DeviceInfo {
        let mut name = format!("CUDA device {dev}");
        if let Some(f) = self.api.device_get_name {
            let mut buf = [0u8; 256];
            // SAFETY: cuDeviceGetName(char*, int len, CUdevice): the driver writes at most `len`
            // bytes, NUL included, into `buf`.
            if unsafe { f(buf.as_mut_ptr().cast(), buf.len() as c_int, cudev) } == CUDA_SUCCESS {
                name = c_buf_to_string(&buf);
            }
        }
        let mut uuid = [0u8; 16];
        if let Some(f) = self.api.device_get_uuid {
            // SAFETY: cuDeviceGetUuid_v2(CUuuid*, CUdevice): CUuuid is `char bytes[16]`, and
            // `uuid` is 16 writable bytes.
            if unsafe { f(uuid.as_mut_ptr(), cudev) } != CUDA_SUCCESS {
                uuid = [0u8; 16];
            }
        }
        let mut total_mem = 0u64;
        if let Some(f) = self.api.device_total_mem {
            let mut bytes = 0usize;
            // SAFETY: cuDeviceTotalMem_v2(size_t*, CUdevice): `bytes` is a live local.
            if unsafe { f(&mut bytes, cudev) } == CUDA_SUCCESS {
                total_mem = bytes as u64;
            }
        }
        let mut pci_bus_id = String::new();
        if let Some(f) = self.api.device_get_pci_bus_id {
            let mut buf = [0u8; 64];
            // SAFETY: cuDeviceGetPCIBusId(char*, int len, CUdevice): the driver writes at most
            // `len` bytes, NUL included, into `buf`.
            if unsafe { f(buf.as_mut_ptr().cast(), buf.len() as c_int, cudev) } == CUDA_SUCCESS {
                pci_bus_id = c_buf_to_string(&buf);
            }
        }
        let mut attributes = Vec::with_capacity(cuda::DEVICE_ATTRIBUTES.len());
        let mut seen = HashSet::new();
        for &(num, _) in cuda::DEVICE_ATTRIBUTES {
            if !seen.insert(num) {
                continue;
            }
            // Attributes this driver does not know (or cannot answer) are left out.
            if let Ok(v) = self.device_attribute_raw(cudev, num) {
                attributes.push((num, v));
            }
        }
        DeviceInfo { name, uuid, total_mem, attributes, pci_bus_id }
    }

    fn device_attribute_raw(&self, cudev: CUdevice, attrib: i32) -> CuResult<i32> {
        let f = need(self.api.device_get_attribute)?;
        let mut v: c_int = 0;
        // SAFETY: cuDeviceGetAttribute(int*, CUdevice_attribute, CUdevice): `v` is a live local;
        // an unknown attribute number is answered with CUDA_ERROR_INVALID_VALUE.
        ck(unsafe { f(&mut v, attrib, cudev) })?;
        Ok(v)
    }

    /// `cuModuleLoadDataEx` with an error log when the driver has it, else `cuModuleLoadData`.
    /// `image` is 8-byte aligned and NUL-terminated (see `aligned_copy`). A refusal's JIT error
    /// log goes to `error_log`.
    fn load_raw_module(&self, image: &[u64], error_log: &mut String) -> CuResult<Handle> {
        let mut module: Handle = ptr::null_mut();
        if let Some(f) = self.api.module_load_data_ex {
            let mut log = vec![0u8; JIT_LOG_BYTES];
            let mut options = [CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES];
            let mut values: [*mut c_void; 2] = [log.as_mut_ptr().cast(), JIT_LOG_BYTES as *mut c_void];
            // SAFETY: cuModuleLoadDataEx(CUmodule*, const void*, unsigned, CUjit_option*, void**):
            // `module` is a live local; `image` is a validated, NUL-terminated, 8-byte aligned
            // buffer that outlives the call; two options with their two values: a writable log
            // buffer of JIT_LOG_BYTES bytes and its size passed by value, as the API specifies.
            let r = unsafe { f(&mut module, image.as_ptr().cast(), 2, options.as_mut_ptr(), values.as_mut_ptr()) };
            if r != CUDA_SUCCESS {
                let text = c_buf_to_string(&log);
                tracing::info!(error = %self.error_name(r), log = %text.trim(), "cuModuleLoadDataEx refused the image");
                *error_log = text.trim().to_owned();
                return Err(CuError(r));
            }
            return Ok(module);
        }
        let f = need(self.api.module_load_data)?;
        // SAFETY: cuModuleLoadData(CUmodule*, const void*): `module` is a live local; `image`
        // is a validated, NUL-terminated, 8-byte aligned buffer that outlives the call.
        let r = unsafe { f(&mut module, image.as_ptr().cast()) };
        if r != CUDA_SUCCESS {
            tracing::info!(error = %self.error_name(r), "cuModuleLoadData refused the image");
            return Err(CuError(r));
        }
        Ok(module)
    }

    /// The module's entry points with their handles, from the driver (12.4+). `None` when the
    /// driver cannot enumerate or name them.
    fn enumerate_functions(&self, module: Handle) -> Option<Vec<(String, Handle)>> {
        let count_fn = self.api.module_get_function_count?;
        let enum_fn = self.api.module_enumerate_functions?;
        let name_fn = self.api.func_get_name?;
        let mut count: c_uint = 0;
        // SAFETY: cuModuleGetFunctionCount(unsigned*, CUmodule): `count` is a live local and
        // `module` a module loaded in the current context.
        if unsafe { count_fn(&mut count, module) } != CUDA_SUCCESS {
            return None;
        }
        let mut handles: Vec<Handle> = vec![ptr::null_mut(); count as usize];
        if count > 0 {
            // SAFETY: cuModuleEnumerateFunctions(CUfunction*, unsigned n, CUmodule): `handles`
            // has room for exactly `count` handles.
            if unsafe { enum_fn(handles.as_mut_ptr(), count, module) } != CUDA_SUCCESS {
                return None;
            }
        }
        let mut out = Vec::with_capacity(handles.len());
        for f in handles {
            if f.is_null() {
                return None;
            }
            let mut name: *const c_char = ptr::null();
            // SAFETY: cuFuncGetName(const char**, CUfunction): `name` is a live local, `f` a
            // function handle the driver just returned.
            if unsafe { name_fn(&mut name, f) } != CUDA_SUCCESS || name.is_null() {
                return None;
            }
            // SAFETY: on success the driver points `name` at a NUL-terminated string owned by
            // the module, which stays loaded for this call.
            let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
            out.push((name, f));
        }
        Some(out)
    }

    /// A function's parameter layout from `cuFuncGetParamInfo`, iterating the index until the
    /// driver answers CUDA_ERROR_INVALID_VALUE. `None` when the entry point is missing or fails
    /// in any other way.
    fn driver_param_layout(&self, func: Handle) -> Option<Vec<ParamInfo>> {
        let f = self.api.func_get_param_info?;
        let mut params = Vec::new();
        for index in 0..MAX_PARAMS {
            let (mut offset, mut size) = (0usize, 0usize);
            // SAFETY: cuFuncGetParamInfo(CUfunction, size_t, size_t*, size_t*): both outputs are
            // live locals, `func` a handle of a module loaded in the current context.
            let r = unsafe { f(func, index, &mut offset, &mut size) };
            match r {
                CUDA_SUCCESS => params.push(ParamInfo { offset: u32::try_from(offset).ok()?, size: u32::try_from(size).ok()? }),
                cuda::CUDA_ERROR_INVALID_VALUE => return Some(params),
                other => {
                    tracing::debug!(error = %self.error_name(other), "cuFuncGetParamInfo failed; using the image's layout");
                    return None;
                }
            }
        }
        None
    }

    fn func_attrs(&self, func: Handle) -> FuncAttrs {
        let get = |attr: i32| -> i32 {
            let Some(f) = self.api.func_get_attribute else { return 0 };
            let mut v: c_int = 0;
            // SAFETY: cuFuncGetAttribute(int*, CUfunction_attribute, CUfunction): `v` is a live
            // local, `func` a handle of a module loaded in the current context.
            if unsafe { f(&mut v, attr, func) } == CUDA_SUCCESS {
                v
            } else {
                0
            }
        };
        FuncAttrs {
            max_threads_per_block: get(cuda::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK),
            shared_size_bytes: get(cuda::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES),
            const_size_bytes: get(cuda::CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES),
            local_size_bytes: get(cuda::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES),
            num_regs: get(cuda::CU_FUNC_ATTRIBUTE_NUM_REGS),
            ptx_version: get(cuda::CU_FUNC_ATTRIBUTE_PTX_VERSION),
            binary_version: get(cuda::CU_FUNC_ATTRIBUTE_BINARY_VERSION),
        }
    }

    fn get_function(&self, module: Handle, name: &str) -> CuResult<Handle> {
        let f = need(self.api.module_get_function)?;
        let cname = cstring(name)?;
        let mut func: Handle = ptr::null_mut();
        // SAFETY: cuModuleGetFunction(CUfunction*, CUmodule, const char*): `func` is a live
        // local, `module` loaded in the current context, `cname` NUL-terminated and alive.
        ck(unsafe { f(&mut func, module, cname.as_ptr()) })?;
        Ok(func)
    }

    /// Names, layouts and attributes of a freshly loaded module's entry points. Best effort:
    /// never fails (a module whose kernels cannot be listed still loads; the client can still
    /// get functions by name).
    fn describe_module(&self, module: Handle, image: &[u8]) -> Vec<FunctionInfo> {
        // The image is parsed only when the driver cannot answer, and then once.
        let parsed: OnceCell<Vec<ImageKernel>> = OnceCell::new();
        let from_image = || parsed.get_or_init(|| image_kernels(image));
        let entries: Vec<(String, Handle)> = match self.enumerate_functions(module) {
            Some(v) => v,
            None => from_image().iter().filter_map(|k| self.get_function(module, &k.name).ok().map(|f| (k.name.clone(), f))).collect(),
        };
        let mut out = Vec::with_capacity(entries.len());
        for (name, func) in entries {
            let params = match self.driver_param_layout(func) {
                Some(p) => p,
                None => match from_image().iter().find(|k| k.name == name).and_then(|k| k.params.clone()) {
                    Some(p) => p,
                    None => {
                        tracing::warn!(kernel = %name, "no parameter layout for this kernel (driver and image both silent)");
                        Vec::new()
                    }
                },
            };
            out.push(FunctionInfo { name, params, attrs: self.func_attrs(func) });
        }
        out
    }

    fn destroy_ctx_raw(&self, raw: usize) -> CuResult<()> {
        let f = need(self.api.ctx_destroy)?;
        // SAFETY: cuCtxDestroy_v2(CUcontext) on a context this backend created; the caller holds
        // its gate exclusively (or owns the backend), so no other call is using it.
        ck(unsafe { f(h(raw)) })
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Contexts the server did not destroy: everything in them goes with them.
        for (_, c) in self.contexts.lock().drain() {
            let mut alive = c.gate.write();
            if *alive {
                *alive = false;
                let _ = self.destroy_ctx_raw(c.raw);
            }
        }
        let _ = self.set_current(ptr::null_mut());
        if let Some(release) = self.api.primary_ctx_release {
            for (slot, &cudev) in self.primary.iter().zip(&self.devices) {
                if slot.lock().take().is_some() {
                    // SAFETY: cuDevicePrimaryCtxRelease_v2(CUdevice): balances the one retain
                    // `mem_info` made on this device.
                    let _ = unsafe { release(cudev) };
                }
            }
        }
    }
}

impl Backend for CudaBackend {
    fn kind(&self) -> &'static str {
        "cuda"
    }

    fn driver_version(&self) -> i32 {
        self.driver_version
    }

    fn device_count(&self) -> usize {
        self.devices.len()
    }

    fn device_info(&self, dev: usize) -> DeviceInfo {
        match (self.devices.get(dev), self.info.get(dev)) {
            (Some(&cudev), Some(cell)) => cell.get_or_init(|| self.query_device_info(dev, cudev)).clone(),
            _ => DeviceInfo {
                name: format!("no CUDA device {dev} in {}", self.path),
                uuid: [0; 16],
                total_mem: 0,
                attributes: Vec::new(),
                pci_bus_id: String::new(),
            },
        }
    }

    fn device_attribute(&self, dev: usize, attrib: i32) -> CuResult<i32> {
        let cudev = self.device(dev)?;
        self.device_attribute_raw(cudev, attrib)
    }

    fn mem_info(&self, dev: usize) -> CuResult<(u64, u64)> {
        let cudev = self.device(dev)?;
        // cuMemGetInfo needs a current context on the device: one of ours when there is one...
        let existing: Vec<Arc<Ctx>> = self.contexts.lock().values().filter(|c| c.dev == dev).cloned().collect();
        for c in existing {
            let alive = c.gate.read();
            if *alive {
                self.set_current(h(c.raw))?;
                return self.current_mem_info();
            }
        }
        // ...else the device's primary context, retained on first need and kept until the
        // backend is dropped (creating it costs time on every query otherwise; it holds some
        // device memory while it lives). Tenants never run anything in it.
        let slot = self.primary.get(dev).ok_or(CuError::INVALID_DEVICE)?;
        let mut primary = slot.lock();
        if primary.is_none() {
            let retain = need(self.api.primary_ctx_retain)?;
            let mut raw: Handle = ptr::null_mut();
            // SAFETY: cuDevicePrimaryCtxRetain(CUcontext*, CUdevice): `raw` is a live local and
            // `cudev` a device the driver listed.
            ck(unsafe { retain(&mut raw, cudev) })?;
            *primary = Some(raw as usize);
        }
        let raw = primary.map(h).unwrap_or(ptr::null_mut());
        // The slot stays locked during the query, so the context is not released under it.
        self.set_current(raw)?;
        self.current_mem_info()
    }

    fn ctx_create(&self, dev: usize, flags: u32) -> CuResult<Id> {
        let cudev = self.device(dev)?;
        let mut raw: Handle = ptr::null_mut();
        if let Some(f) = self.api.ctx_create_v2 {
            // SAFETY: cuCtxCreate_v2(CUcontext*, unsigned flags, CUdevice): `raw` is a live
            // local, `cudev` a device the driver listed; invalid flags are refused by the driver.
            ck(unsafe { f(&mut raw, flags, cudev) })?;
        } else {
            let f = need(self.api.ctx_create_v4)?;
            // SAFETY: cuCtxCreate_v4(CUcontext*, CUctxCreateParams*, unsigned, CUdevice): NULL
            // params is documented as "no execution affinity / CIG", i.e. a plain context.
            ck(unsafe { f(&mut raw, ptr::null_mut(), flags, cudev) })?;
        }
        if raw.is_null() {
            return Err(CuError::UNKNOWN);
        }
        // cuCtxCreate pushes the new context on this thread's stack; pop it so that stacks do
        // not grow with every context made on a session thread (every call sets its own).
        if let Some(pop) = self.api.ctx_pop_current {
            let mut popped: Handle = ptr::null_mut();
            // SAFETY: cuCtxPopCurrent_v2(CUcontext*): `popped` is a live local; the stack holds
            // at least the context just pushed.
            let _ = unsafe { pop(&mut popped) };
        }
        let id = self.id();
        let ctx = Ctx { dev, raw: raw as usize, gate: RwLock::new(true), objs: Mutex::default() };
        self.contexts.lock().insert(id, Arc::new(ctx));
        Ok(id)
    }

    fn ctx_destroy(&self, ctx: Id) -> CuResult<()> {
        let c = self.contexts.lock().remove(&ctx).ok_or(CuError::INVALID_CONTEXT)?;
        // Wait for every call inside the driver with this context, then keep everyone out.
        let mut alive = c.gate.write();
        if !*alive {
            return Err(CuError::INVALID_CONTEXT);
        }
        *alive = false;
        // Destroying the context frees its memory, streams, events and modules.
        *c.objs.lock() = Objects::default();
        self.destroy_ctx_raw(c.raw)
    }

    fn ctx_synchronize(&self, ctx: Id) -> CuResult<()> {
        self.with_ctx(ctx, |_| {
            let f = need(self.api.ctx_synchronize)?;
            // SAFETY: cuCtxSynchronize(void) on the context made current by `with_ctx`.
            ck(unsafe { f() })
        })
    }

    fn mem_alloc(&self, ctx: Id, bytes: u64) -> CuResult<DevPtr> {
        let size = to_usize(bytes)?;
        self.with_ctx(ctx, |_| {
            let f = need(self.api.mem_alloc)?;
            let mut p: CUdeviceptr = 0;
            // SAFETY: cuMemAlloc_v2(CUdeviceptr*, size_t): `p` is a live local.
            ck(unsafe { f(&mut p, size) })?;
            // Scrub before the tenant sees it: the driver may hand out memory another tenant's
            // context freed, with its contents.
            let zero = need(self.api.memset_d8_async).and_then(|memset| {
                // SAFETY: cuMemsetD8Async(CUdeviceptr, uchar, size_t, CUstream): `p` is the
                // allocation of `size` bytes just made in the current context; NULL stream.
                ck(unsafe { memset(p, 0, size, std::ptr::null_mut()) })?;
                let sync = need(self.api.ctx_synchronize)?;
                // SAFETY: cuCtxSynchronize(): no arguments; the context is current.
                ck(unsafe { sync() })
            });
            if let Err(e) = zero {
                if let Some(free) = self.api.mem_free {
                    // SAFETY: cuMemFree_v2 on the allocation made above, not handed out.
                    unsafe { free(p) };
                }
                return Err(e);
            }
            Ok(p)
        })
    }

    fn mem_free(&self, ctx: Id, ptr: DevPtr) -> CuResult<()> {
        self.with_ctx(ctx, |_| {
            let f = need(self.api.mem_free)?;
            // SAFETY: cuMemFree_v2(CUdeviceptr): the driver checks that the address is an
            // allocation of the current context and refuses anything else.
            ck(unsafe { f(ptr) })
        })
    }

    fn memcpy_htod(&self, ctx: Id, stream: Id, dst: DevPtr, data: Bytes) -> CuResult<()> {
        self.with_ctx(ctx, |c| {
            let s = c.stream(stream)?;
            if data.is_empty() {
                return Ok(());
            }
            if let Some(f) = self.api.memcpy_htod_async {
                // SAFETY: cuMemcpyHtoDAsync_v2(CUdeviceptr, const void*, size_t, CUstream):
                // `data` is readable for `data.len()` bytes. It is pageable memory, and for a
                // copy from pageable memory the driver has staged the whole source before the
                // call returns (CUDA "API synchronization behavior"), so `data` may be dropped
                // afterwards while the DMA is still in flight.
                return ck(unsafe { f(dst, data.as_ptr().cast(), data.len(), s) });
            }
            let f = need(self.api.memcpy_htod)?;
            if !s.is_null() {
                self.stream_sync_raw(s)?;
            }
            // SAFETY: cuMemcpyHtoD_v2(CUdeviceptr, const void*, size_t): synchronous, `data` is
            // readable for `data.len()` bytes for the whole call.
            ck(unsafe { f(dst, data.as_ptr().cast(), data.len()) })
        })
    }

    fn memcpy_dtoh(&self, ctx: Id, stream: Id, src: DevPtr, bytes: u64) -> CuResult<Bytes> {
        let len = to_usize(bytes)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        self.with_ctx(ctx, |c| {
            let s = c.stream(stream)?;
            // A successful copy writes every byte of `out` (staging::reply's contract).
            super::staging::reply(len, |out| {
                if let Some(f) = self.api.memcpy_dtoh_async {
                    // SAFETY: cuMemcpyDtoHAsync_v2(void*, CUdeviceptr, size_t, CUstream): `out`
                    // is writable for `len` bytes and is not touched until the stream is
                    // synchronized just below, which finishes the copy before `out` is read
                    // or moved.
                    ck(unsafe { f(out.as_mut_ptr().cast(), src, len, s) })?;
                    self.stream_sync_raw(s)
                } else {
                    let f = need(self.api.memcpy_dtoh)?;
                    if !s.is_null() {
                        self.stream_sync_raw(s)?;
                    }
                    // SAFETY: cuMemcpyDtoH_v2(void*, CUdeviceptr, size_t): synchronous; `out` is
                    // writable for `len` bytes.
                    ck(unsafe { f(out.as_mut_ptr().cast(), src, len) })
                }
            })
        })
    }

    fn memcpy_dtod(&self, ctx: Id, stream: Id, dst: DevPtr, src: DevPtr, bytes: u64) -> CuResult<()> {
        let len = to_usize(bytes)?;
        self.with_ctx(ctx, |c| {
            let s = c.stream(stream)?;
            if let Some(f) = self.api.memcpy_dtod_async {
                // SAFETY: cuMemcpyDtoDAsync_v2(CUdeviceptr, CUdeviceptr, size_t, CUstream): no
                // host memory involved; the driver validates the device ranges.
                return ck(unsafe { f(dst, src, len, s) });
            }
            let f = need(self.api.memcpy_dtod)?;
            // SAFETY: cuMemcpyDtoD_v2(CUdeviceptr, CUdeviceptr, size_t): no host memory
            // involved; the driver validates the device ranges.
            ck(unsafe { f(dst, src, len) })
        })
    }

    fn memset(&self, ctx: Id, stream: Id, dst: DevPtr, value: u32, elem_size: u8, count: u64) -> CuResult<()> {
        let n = to_usize(count)?;
        self.with_ctx(ctx, |c| {
            let s = c.stream(stream)?;
            match elem_size {
                1 => {
                    let f = need(self.api.memset_d8_async)?;
                    // SAFETY: cuMemsetD8Async(CUdeviceptr, unsigned char, size_t, CUstream): no
                    // host memory involved.
                    ck(unsafe { f(dst, value as u8, n, s) })
                }
                2 => {
                    let f = need(self.api.memset_d16_async)?;
                    // SAFETY: cuMemsetD16Async(CUdeviceptr, unsigned short, size_t, CUstream): no
                    // host memory involved.
                    ck(unsafe { f(dst, value as u16, n, s) })
                }
                4 => {
                    let f = need(self.api.memset_d32_async)?;
                    // SAFETY: cuMemsetD32Async(CUdeviceptr, unsigned int, size_t, CUstream): no
                    // host memory involved.
                    ck(unsafe { f(dst, value, n, s) })
                }
                _ => Err(CuError::INVALID_VALUE),
            }
        })
    }

    fn stream_create(&self, ctx: Id, flags: u32, priority: i32) -> CuResult<Id> {
        self.with_ctx(ctx, |c| {
            let mut s: Handle = ptr::null_mut();
            if let Some(f) = self.api.stream_create_with_priority {
                // SAFETY: cuStreamCreateWithPriority(CUstream*, unsigned, int): `s` is a live
                // local; the driver clamps the priority and refuses bad flags.
                ck(unsafe { f(&mut s, flags, priority) })?;
            } else {
                let f = need(self.api.stream_create)?;
                // SAFETY: cuStreamCreate(CUstream*, unsigned): `s` is a live local.
                ck(unsafe { f(&mut s, flags) })?;
            }
            let id = self.id();
            c.objs.lock().streams.insert(id, s as usize);
            Ok(id)
        })
    }

    fn stream_destroy(&self, ctx: Id, stream: Id) -> CuResult<()> {
        self.with_ctx_exclusive(ctx, |c| {
            let f = need(self.api.stream_destroy)?;
            let s = c.objs.lock().streams.remove(&stream).ok_or(CuError::INVALID_HANDLE)?;
            // SAFETY: cuStreamDestroy_v2(CUstream) on a stream of this context, just removed
            // from its table under the exclusive gate: nobody else can be using it.
            ck(unsafe { f(h(s)) })
        })
    }

    fn stream_synchronize(&self, ctx: Id, stream: Id) -> CuResult<()> {
        self.with_ctx(ctx, |c| {
            let s = c.stream(stream)?;
            self.stream_sync_raw(s)
        })
    }

    fn stream_query(&self, ctx: Id, stream: Id) -> CuResult<bool> {
        self.with_ctx(ctx, |c| {
            let s = c.stream(stream)?;
            let f = need(self.api.stream_query)?;
            // SAFETY: cuStreamQuery(CUstream) on a live stream of the current context (or NULL).
            match unsafe { f(s) } {
                CUDA_SUCCESS => Ok(true),
                cuda::CUDA_ERROR_NOT_READY => Ok(false),
                r => Err(CuError(r)),
            }
        })
    }

    fn stream_wait_event(&self, ctx: Id, stream: Id, event: Id, flags: u32) -> CuResult<()> {
        self.with_ctx(ctx, |c| {
            let s = c.stream(stream)?;
            let e = c.event(event)?;
            let f = need(self.api.stream_wait_event)?;
            // SAFETY: cuStreamWaitEvent(CUstream, CUevent, unsigned): both handles are live
            // objects of the current context (the shared gate keeps them alive).
            ck(unsafe { f(s, e, flags) })
        })
    }

    fn event_create(&self, ctx: Id, flags: u32) -> CuResult<Id> {
        self.with_ctx(ctx, |c| {
            let f = need(self.api.event_create)?;
            let mut e: Handle = ptr::null_mut();
            // SAFETY: cuEventCreate(CUevent*, unsigned): `e` is a live local.
            ck(unsafe { f(&mut e, flags) })?;
            let id = self.id();
            c.objs.lock().events.insert(id, e as usize);
            Ok(id)
        })
    }

    fn event_destroy(&self, ctx: Id, event: Id) -> CuResult<()> {
        self.with_ctx_exclusive(ctx, |c| {
            let f = need(self.api.event_destroy)?;
            let e = c.objs.lock().events.remove(&event).ok_or(CuError::INVALID_HANDLE)?;
            // SAFETY: cuEventDestroy_v2(CUevent) on an event of this context, just removed from
            // its table under the exclusive gate.
            ck(unsafe { f(h(e)) })
        })
    }

    fn event_record(&self, ctx: Id, event: Id, stream: Id) -> CuResult<()> {
        self.with_ctx(ctx, |c| {
            let e = c.event(event)?;
            let s = c.stream(stream)?;
            let f = need(self.api.event_record)?;
            // SAFETY: cuEventRecord(CUevent, CUstream): live objects of the current context.
            ck(unsafe { f(e, s) })
        })
    }

    fn event_synchronize(&self, ctx: Id, event: Id) -> CuResult<()> {
        self.with_ctx(ctx, |c| {
            let e = c.event(event)?;
            let f = need(self.api.event_synchronize)?;
            // SAFETY: cuEventSynchronize(CUevent): a live event of the current context.
            ck(unsafe { f(e) })
        })
    }

    fn event_query(&self, ctx: Id, event: Id) -> CuResult<bool> {
        self.with_ctx(ctx, |c| {
            let e = c.event(event)?;
            let f = need(self.api.event_query)?;
            // SAFETY: cuEventQuery(CUevent): a live event of the current context.
            match unsafe { f(e) } {
                CUDA_SUCCESS => Ok(true),
                cuda::CUDA_ERROR_NOT_READY => Ok(false),
                r => Err(CuError(r)),
            }
        })
    }

    fn event_elapsed(&self, ctx: Id, start: Id, end: Id) -> CuResult<f32> {
        self.with_ctx(ctx, |c| {
            let s = c.event(start)?;
            let e = c.event(end)?;
            let f = need(self.api.event_elapsed_time)?;
            let mut ms = 0f32;
            // SAFETY: cuEventElapsedTime(float*, CUevent, CUevent): `ms` is a live local, both
            // events live objects of the current context.
            ck(unsafe { f(&mut ms, s, e) })?;
            Ok(ms)
        })
    }

    fn module_load_explained(&self, ctx: Id, image: &[u8]) -> Result<LoadedModule, (CuError, String)> {
        // Refuse what the driver would read out of bounds or dereference (host pointers).
        validate_image(image)
            .map_err(|e| (e, "the image is malformed (empty, a fatbinary wrapper, or a header pointing outside it)".to_owned()))?;
        let buf = aligned_copy(image);
        let mut log = String::new();
        self.with_ctx(ctx, |c| {
            let raw = self.load_raw_module(&buf, &mut log)?;
            let functions = self.describe_module(raw, image);
            let layouts = functions.iter().map(|f| (f.name.clone(), f.params.clone())).collect();
            let id = self.id();
            c.objs.lock().modules.insert(id, ModuleEntry { raw: raw as usize, layouts });
            // The driver does not say how much its module variables take.
            Ok(LoadedModule { id, functions, global_bytes: 0 })
        })
        .map_err(|e| (e, log))
    }

    fn module_unload(&self, ctx: Id, module: Id) -> CuResult<()> {
        self.with_ctx_exclusive(ctx, |c| {
            let f = need(self.api.module_unload)?;
            let raw = {
                let mut objs = c.objs.lock();
                let m = objs.modules.remove(&module).ok_or(CuError::INVALID_HANDLE)?;
                objs.functions.retain(|_, func| func.module != module);
                m.raw
            };
            // SAFETY: cuModuleUnload(CUmodule) on a module of this context, removed from the
            // tables (with its functions) under the exclusive gate.
            ck(unsafe { f(h(raw)) })
        })
    }

    fn module_function(&self, ctx: Id, module: Id, name: &str) -> CuResult<Id> {
        self.with_ctx(ctx, |c| {
            let (raw_module, layout) = {
                let objs = c.objs.lock();
                let m = objs.modules.get(&module).ok_or(CuError::INVALID_HANDLE)?;
                (m.raw, m.layouts.get(name).cloned())
            };
            let func = self.get_function(h(raw_module), name)?;
            let id = self.id();
            c.objs.lock().functions.insert(id, FuncEntry { module, raw: func as usize, layout });
            Ok(id)
        })
    }

    fn module_global(&self, ctx: Id, module: Id, name: &str) -> CuResult<(DevPtr, u64)> {
        self.with_ctx(ctx, |c| {
            let raw_module = c.objs.lock().modules.get(&module).map(|m| m.raw).ok_or(CuError::INVALID_HANDLE)?;
            let f = need(self.api.module_get_global)?;
            let cname = cstring(name)?;
            let (mut dptr, mut size): (CUdeviceptr, usize) = (0, 0);
            // SAFETY: cuModuleGetGlobal_v2(CUdeviceptr*, size_t*, CUmodule, const char*): both
            // outputs are live locals, the module is loaded in the current context, `cname` is
            // NUL-terminated and alive.
            ck(unsafe { f(&mut dptr, &mut size, h(raw_module), cname.as_ptr()) })?;
            Ok((dptr, size as u64))
        })
    }

    fn func_set_attribute(&self, ctx: Id, func: Id, attrib: i32, value: i32) -> CuResult<()> {
        self.with_ctx(ctx, |c| {
            let raw = c.objs.lock().functions.get(&func).map(|f| f.raw).ok_or(CuError::INVALID_HANDLE)?;
            let f = need(self.api.func_set_attribute)?;
            // SAFETY: cuFuncSetAttribute(CUfunction, CUfunction_attribute, int): `raw` is a function
            // of a module loaded in the current context; the driver validates attribute and value.
            ck(unsafe { f(h(raw), attrib, value) })
        })
    }

    fn launch(&self, ctx: Id, func: Id, dims: LaunchDims, stream: Id, params: &[u8]) -> CuResult<()> {
        self.with_ctx(ctx, |c| {
            let s = c.stream(stream)?;
            let (raw, layout) = {
                let objs = c.objs.lock();
                let f = objs.functions.get(&func).ok_or(CuError::INVALID_HANDLE)?;
                (f.raw, f.layout.clone())
            };
            let launch = need(self.api.launch_kernel)?;
            // An 8-byte aligned copy of the packed parameters: the driver reads each parameter
            // at its natural alignment through the pointers below.
            let mut buf = aligned_copy(params);
            let base: *mut u8 = buf.as_mut_ptr().cast();
            let [gx, gy, gz] = dims.grid;
            let [bx, by, bz] = dims.block;
            let fits = |l: &[ParamInfo]| l.iter().all(|p| (p.offset as usize).saturating_add(p.size as usize) <= params.len());
            match layout {
                // The usual form: one pointer per parameter, at the offsets the layout gives.
                Some(l) if fits(&l) => {
                    let mut args: Vec<*mut c_void> = l
                        .iter()
                        // `wrapping_add` stays inside `buf` here: every offset + size fits in
                        // `params.len()`, and `buf` is at least that long.
                        .map(|p| base.wrapping_add(p.offset as usize).cast::<c_void>())
                        .collect();
                    let args_ptr = if args.is_empty() { ptr::null_mut() } else { args.as_mut_ptr() };
                    // SAFETY: cuLaunchKernel(CUfunction, 6 x dims, sharedMem, CUstream, void**
                    // kernelParams, void** extra): `raw` is a function of a module of the current
                    // context (kept alive by the shared gate), `s` a live stream or NULL, and
                    // `args` holds one pointer per kernel parameter, each to `size` readable
                    // bytes inside `buf`; the driver copies the values before returning.
                    ck(unsafe { launch(h(raw), gx, gy, gz, bx, by, bz, dims.shared_mem_bytes, s, args_ptr, ptr::null_mut()) })
                }
                // Layout unknown (or not matching the buffer): hand the packed buffer over whole.
                _ => {
                    if params.is_empty() {
                        // SAFETY: as above, for a kernel launched without parameters.
                        return ck(unsafe {
                            launch(h(raw), gx, gy, gz, bx, by, bz, dims.shared_mem_bytes, s, ptr::null_mut(), ptr::null_mut())
                        });
                    }
                    let mut size = params.len();
                    let mut extra: [*mut c_void; 5] = [
                        CU_LAUNCH_PARAM_BUFFER_POINTER as *mut c_void,
                        base.cast(),
                        CU_LAUNCH_PARAM_BUFFER_SIZE as *mut c_void,
                        (&mut size as *mut usize).cast(),
                        CU_LAUNCH_PARAM_END as *mut c_void,
                    ];
                    // SAFETY: as above, with the `extra` form instead of kernelParams: `extra`
                    // is a CU_LAUNCH_PARAM_END-terminated list giving a buffer of `size`
                    // readable bytes (`buf` holds at least `params.len()`) and a pointer to its
                    // size; all of them outlive the call.
                    ck(unsafe { launch(h(raw), gx, gy, gz, bx, by, bz, dims.shared_mem_bytes, s, ptr::null_mut(), extra.as_mut_ptr()) })
                }
            }
        })
    }

    /// On a real GPU, device printf is written by the driver to the server process's stdout
    /// (at synchronization points); there is nothing per context to hand back here.
    fn take_output(&self, _ctx: Id) -> Vec<u8> {
        Vec::new()
    }
}

impl CudaBackend {
    fn stream_sync_raw(&self, s: Handle) -> CuResult<()> {
        let f = need(self.api.stream_synchronize)?;
        // SAFETY: cuStreamSynchronize(CUstream): a live stream of the current context, or NULL.
        ck(unsafe { f(s) })
    }
}

// ---------------------------------------------------------------------------------------------
// Module images: validation, and the parameter layouts read from the image itself (the
// fallback for drivers without cuFuncGetParamInfo). Pure code, no unsafe.
// ---------------------------------------------------------------------------------------------

const FATBIN_MAGIC: u32 = 0xBA55_ED50;
/// `__fatBinC_Wrapper_t`: holds host pointers of the client process; never valid on the wire.
const FATBIN_WRAPPER_MAGIC: u32 = 0x4662_43B1;
const FATBIN_KIND_PTX: u16 = 1;
const FATBIN_KIND_ELF: u16 = 2;
/// Fat-binary entry flags marking compressed payloads (two compression schemes).
const FATBIN_FLAG_COMPRESSED: u64 = 0x1000 | 0x2000;

const SHT_SYMTAB: u32 = 2;
const SHT_NOBITS: u32 = 8;
const STT_FUNC: u8 = 2;
/// `st_other` bit of a kernel (entry function) symbol in a cubin.
const STO_CUDA_ENTRY: u8 = 0x10;

const EIFMT_NVAL: u8 = 0x01;
const EIFMT_BVAL: u8 = 0x02;
const EIFMT_HVAL: u8 = 0x03;
const EIFMT_SVAL: u8 = 0x04;
const EIATTR_KPARAM_INFO: u8 = 0x17;

/// A kernel named by the image, with its parameter layout when it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImageKernel {
    name: String,
    params: Option<Vec<ParamInfo>>,
}

fn rd_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn rd_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn rd_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// `image` copied into 8-byte aligned storage with at least one trailing NUL (PTX text must be
/// NUL-terminated for cuModuleLoadData; binaries are not affected by trailing zeros).
fn aligned_copy(image: &[u8]) -> Vec<u64> {
    let mut words = vec![0u64; image.len() / 8 + 1];
    for (word, chunk) in words.iter_mut().zip(image.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *word = u64::from_ne_bytes(b);
    }
    words
}

fn is_elf(image: &[u8]) -> bool {
    image.starts_with(b"\x7fELF")
}

fn magic(image: &[u8]) -> Option<u32> {
    rd_u32(image, 0)
}

/// Checks what the driver would otherwise trust: the bounds of an ELF image's headers and
/// sections, the bounds of a fat binary and its entries. PTX text passes (the driver parses
/// it up to the NUL we append). This does not make a malicious cubin harmless to the driver;
/// it removes the out-of-bounds reads a truncated or inflated header would cause.
fn validate_image(image: &[u8]) -> CuResult<()> {
    if image.is_empty() {
        return Err(CuError::INVALID_IMAGE);
    }
    if is_elf(image) {
        return validate_elf(image);
    }
    match magic(image) {
        Some(FATBIN_WRAPPER_MAGIC) => Err(CuError::INVALID_IMAGE),
        Some(FATBIN_MAGIC) => {
            for entry in fatbin_entries(image)? {
                if entry.kind == FATBIN_KIND_ELF && !entry.compressed {
                    validate_elf(entry.payload)?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

struct ElfSection<'a> {
    name: String,
    kind: u32,
    link: u32,
    data: &'a [u8],
}

/// The sections of a 64-bit little-endian ELF image (cubins are nothing else).
fn elf_sections(elf: &[u8]) -> CuResult<Vec<ElfSection<'_>>> {
    let bad = CuError::INVALID_IMAGE;
    if !is_elf(elf) || elf.len() < 64 || elf[4] != 2 || elf[5] != 1 {
        return Err(bad);
    }
    let shoff = to_usize(rd_u64(elf, 0x28).ok_or(bad)?)?;
    let shentsize = rd_u16(elf, 0x3a).ok_or(bad)? as usize;
    let shnum = rd_u16(elf, 0x3c).ok_or(bad)? as usize;
    let shstrndx = rd_u16(elf, 0x3e).ok_or(bad)? as usize;
    let phoff = to_usize(rd_u64(elf, 0x20).ok_or(bad)?)?;
    let phentsize = rd_u16(elf, 0x36).ok_or(bad)? as usize;
    let phnum = rd_u16(elf, 0x38).ok_or(bad)? as usize;
    let table_end = |off: usize, size: usize, n: usize| size.checked_mul(n).and_then(|t| off.checked_add(t));
    let within = |end: Option<usize>| matches!(end, Some(end) if end <= elf.len());
    if phnum > 0 && !within(table_end(phoff, phentsize, phnum)) {
        return Err(bad);
    }
    if shnum == 0 {
        return Ok(Vec::new());
    }
    if shentsize < 64 || !within(table_end(shoff, shentsize, shnum)) {
        return Err(bad);
    }
    let mut raw = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let at = shoff + i * shentsize;
        let name = rd_u32(elf, at).ok_or(bad)?;
        let kind = rd_u32(elf, at + 4).ok_or(bad)?;
        let offset = to_usize(rd_u64(elf, at + 24).ok_or(bad)?)?;
        let size = to_usize(rd_u64(elf, at + 32).ok_or(bad)?)?;
        let link = rd_u32(elf, at + 40).ok_or(bad)?;
        let data: &[u8] =
            if kind == SHT_NOBITS || kind == 0 { &[] } else { elf.get(offset..offset.checked_add(size).ok_or(bad)?).ok_or(bad)? };
        raw.push((name, kind, link, data));
    }
    let strtab: &[u8] = raw.get(shstrndx).map(|r| r.3).unwrap_or(&[]);
    Ok(raw.into_iter().map(|(name, kind, link, data)| ElfSection { name: c_str_at(strtab, name as usize), kind, link, data }).collect())
}

fn validate_elf(elf: &[u8]) -> CuResult<()> {
    elf_sections(elf).map(|_| ())
}

/// The NUL-terminated string at `at` in a string table ("" when out of range).
fn c_str_at(table: &[u8], at: usize) -> String {
    table.get(at..).map(c_buf_to_string).unwrap_or_default()
}

/// Kernels of a cubin: names from the symbol table (STT_FUNC symbols defined in a section named
/// `.text.<name>`; where some symbols carry the CUDA entry mark, `st_other & 0x10`, only those,
/// which leaves out device functions that `-rdc` gives their own section), or from the
/// `.nv.info.<name>` sections when there is no such symbol; each layout from the kernel's
/// `.nv.info.<name>` section. (Checked against ptxas 12.9 output for sm_80 and sm_90: kernels
/// carry st_other 0x10, non-inlined device functions live inside their caller's `.text`.)
fn cubin_kernels(elf: &[u8]) -> Vec<ImageKernel> {
    let Ok(sections) = elf_sections(elf) else { return Vec::new() };
    // (name, marked as an entry)
    let mut funcs: Vec<(String, bool)> = Vec::new();
    for symtab in sections.iter().filter(|s| s.kind == SHT_SYMTAB) {
        let strtab: &[u8] = sections.get(symtab.link as usize).map(|s| s.data).unwrap_or(&[]);
        // Elf64_Sym: st_name u32, st_info u8, st_other u8, st_shndx u16, st_value u64, st_size u64.
        for sym in symtab.data.chunks_exact(24) {
            let info = sym[4];
            if info & 0xf != STT_FUNC {
                continue;
            }
            let shndx = u16::from_le_bytes([sym[6], sym[7]]) as usize;
            let name = c_str_at(strtab, u32::from_le_bytes([sym[0], sym[1], sym[2], sym[3]]) as usize);
            let in_own_text = sections.get(shndx).is_some_and(|s| s.name.strip_prefix(".text.") == Some(name.as_str()));
            if !name.is_empty() && in_own_text && !funcs.iter().any(|(n, _)| *n == name) {
                funcs.push((name, sym[5] & STO_CUDA_ENTRY != 0));
            }
        }
    }
    let any_marked = funcs.iter().any(|(_, entry)| *entry);
    let mut names: Vec<String> = funcs.into_iter().filter(|(_, entry)| *entry || !any_marked).map(|(n, _)| n).collect();
    if names.is_empty() {
        names = sections.iter().filter_map(|s| s.name.strip_prefix(".nv.info.")).map(str::to_owned).collect();
    }
    names
        .into_iter()
        .map(|name| {
            let info = format!(".nv.info.{name}");
            let params = sections.iter().find(|s| s.name == info).and_then(|s| parse_nv_info_params(s.data));
            ImageKernel { name, params }
        })
        .collect()
}

/// The parameter layout in a `.nv.info.<kernel>` section, or `None` if the section cannot be
/// walked.
///
/// The section is a sequence of records `[format u8][attribute u8][u16]`. For the formats
/// EIFMT_NVAL (1), EIFMT_BVAL (2) and EIFMT_HVAL (3) the u16 is the value and the record ends
/// there; for EIFMT_SVAL (4) the u16 is the byte size of the value that follows. An
/// EIATTR_KPARAM_INFO (0x17) record is EIFMT_SVAL with a 12-byte value:
///
/// ```text
///   +0  u32  index (unused here)
///   +4  u16  ordinal: the parameter's position in the signature
///   +6  u16  offset of the parameter in the parameter buffer
///   +8  u32  bits 0..8 log2 alignment of the pointee, 8..12 space, 12..17 cbank,
///            bit 17 "not in a cbank", bits 18..32 size in bytes: (word >> 18) & 0x3fff
/// ```
///
/// This layout is what public cubin parsers agree on (VivekPanyam/cudaparsers `cubin.rs`, and
/// the KPARAM decoders built on it, whose printouts match `cuobjdump -elf`'s
/// "Ordinal / Offset / Size"). Records are listed in reverse ordinal order by nvcc; they are
/// sorted here. Newer toolchains may emit other records (e.g. a "KPARAM_INFO_V2"); their format is
/// not public, so they are skipped like any other attribute, and a kernel whose parameters are
/// described only that way yields an empty layout from this fallback.
fn parse_nv_info_params(section: &[u8]) -> Option<Vec<ParamInfo>> {
    let mut params: Vec<(u16, ParamInfo)> = Vec::new();
    let mut at = 0usize;
    while at + 4 <= section.len() {
        let format = section[at];
        let attribute = section[at + 1];
        let word = rd_u16(section, at + 2)?;
        match format {
            EIFMT_NVAL | EIFMT_BVAL | EIFMT_HVAL => at += 4,
            EIFMT_SVAL => {
                let size = word as usize;
                let value = section.get(at + 4..at + 4 + size)?;
                if attribute == EIATTR_KPARAM_INFO && size >= 12 {
                    let ordinal = rd_u16(value, 4)?;
                    let offset = rd_u16(value, 6)? as u32;
                    let bits = rd_u32(value, 8)?;
                    let size = (bits >> 18) & 0x3fff;
                    if !params.iter().any(|(o, _)| *o == ordinal) {
                        params.push((ordinal, ParamInfo { offset, size }));
                    }
                }
                at += 4 + size;
            }
            // An unknown format: the next record cannot be found.
            _ => return None,
        }
    }
    params.sort_by_key(|(ordinal, _)| *ordinal);
    Some(params.into_iter().map(|(_, p)| p).collect())
}

struct FatbinEntry<'a> {
    kind: u16,
    compressed: bool,
    payload: &'a [u8],
}

/// The entries of a fat binary (`0xBA55ED50` container), bounds-checked.
///
/// Container header: u32 magic, u16 version, u16 header size, u64 size of the entries. Each
/// entry header: u16 kind (1 PTX, 2 ELF), u16, u32 header size, u64 payload size, ..., u64 flags
/// at +0x28 (0x1000 / 0x2000: compressed). The payload follows the entry header. (As decoded by
/// public fatbin readers such as cricket's and gpgpu-sim's `fat_text_header`.)
fn fatbin_entries(image: &[u8]) -> CuResult<Vec<FatbinEntry<'_>>> {
    let bad = CuError::INVALID_IMAGE;
    let header = rd_u16(image, 6).ok_or(bad)? as usize;
    let size = to_usize(rd_u64(image, 8).ok_or(bad)?)?;
    if header < 16 {
        return Err(bad);
    }
    let end = header.checked_add(size).ok_or(bad)?;
    let body = image.get(header..end).ok_or(bad)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        let kind = rd_u16(body, at).ok_or(bad)?;
        let entry_header = rd_u32(body, at + 4).ok_or(bad)? as usize;
        let payload_size = to_usize(rd_u64(body, at + 8).ok_or(bad)?)?;
        let flags = rd_u64(body, at + 0x28).unwrap_or(0);
        if entry_header < 16 {
            return Err(bad);
        }
        let start = at.checked_add(entry_header).ok_or(bad)?;
        let stop = start.checked_add(payload_size).ok_or(bad)?;
        let payload = body.get(start..stop).ok_or(bad)?;
        out.push(FatbinEntry { kind, compressed: flags & FATBIN_FLAG_COMPRESSED != 0, payload });
        at = stop;
    }
    Ok(out)
}

/// Every kernel the image names, with the layout the image gives (the fallback when the driver
/// cannot tell). Later duplicates (other architectures of the same kernel) are dropped.
fn image_kernels(image: &[u8]) -> Vec<ImageKernel> {
    let mut out: Vec<ImageKernel> = Vec::new();
    let mut add = |ks: Vec<ImageKernel>| {
        for k in ks {
            match out.iter_mut().find(|o| o.name == k.name) {
                Some(o) if o.params.is_none() => o.params = k.params,
                Some(_) => {}
                None => out.push(k),
            }
        }
    };
    if is_elf(image) {
        add(cubin_kernels(image));
    } else if magic(image) == Some(FATBIN_MAGIC) {
        let entries = fatbin_entries(image).unwrap_or_default();
        // Cubins first (what actually runs), then PTX.
        for e in entries.iter().filter(|e| e.kind == FATBIN_KIND_ELF && !e.compressed) {
            add(cubin_kernels(e.payload));
        }
        for e in entries.iter().filter(|e| e.kind == FATBIN_KIND_PTX && !e.compressed) {
            add(ptx_kernels(&String::from_utf8_lossy(e.payload)));
        }
    } else {
        add(ptx_kernels(&String::from_utf8_lossy(image)));
    }
    out
}

/// PTX text without `//` and `/* */` comments (string literals, which only `.file` uses, are
/// kept as they are).
fn strip_ptx_comments(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            let end = b[i + 1..].iter().position(|&c| c == b'"' || c == b'\n').map(|p| i + 2 + p).unwrap_or(b.len());
            out.extend_from_slice(&b[i..end.min(b.len())]);
            i = end;
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i = b[i + 2..].windows(2).position(|w| w == b"*/").map(|p| i + 2 + p + 2).unwrap_or(b.len());
            out.push(b' ');
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Size in bytes of a PTX parameter type (`.u32`, `.b8`, ...).
fn ptx_type_size(ty: &str) -> Option<u32> {
    Some(match ty {
        ".u8" | ".s8" | ".b8" => 1,
        ".u16" | ".s16" | ".b16" | ".f16" | ".bf16" => 2,
        ".u32" | ".s32" | ".b32" | ".f32" | ".f16x2" | ".bf16x2" => 4,
        ".u64" | ".s64" | ".b64" | ".f64" => 8,
        ".b128" => 16,
        // Opaque handles passed as kernel parameters are 64-bit.
        ".texref" | ".samplerref" | ".surfref" => 8,
        _ => return None,
    })
}

/// `(align, size)` of one `.param` declaration of an entry signature, e.g.
/// `.param .u64 .ptr .global .align 8 p` (8, 8) or `.param .align 16 .b8 s[24]` (16, 24).
/// An `.align` after `.ptr` is the pointee's alignment and does not count.
fn ptx_param(decl: &str) -> Option<(u32, u32)> {
    let spaced = decl.replace('.', " .").replace('[', " [ ").replace(']', " ] ");
    let toks: Vec<&str> = spaced.split_whitespace().collect();
    if toks.first() != Some(&".param") {
        return None;
    }
    let (mut align, mut elem, mut count, mut seen_ptr, mut named) = (None, None, 1u32, false, false);
    let mut i = 1;
    while i < toks.len() {
        match toks[i] {
            ".align" => {
                let n: u32 = toks.get(i + 1)?.parse().ok()?;
                if !seen_ptr {
                    align = Some(n);
                }
                i += 1;
            }
            ".ptr" => seen_ptr = true,
            ".global" | ".shared" | ".const" | ".local" => {}
            "[" => {
                count = toks.get(i + 1)?.parse().ok()?;
                if toks.get(i + 2) != Some(&"]") {
                    return None;
                }
                i += 2;
            }
            t if t.starts_with('.') => elem = Some(ptx_type_size(t)?),
            _ => named = true,
        }
        i += 1;
    }
    let elem = elem?;
    if !named {
        return None;
    }
    let align = align.unwrap_or(elem).max(1);
    Some((align, elem.checked_mul(count)?))
}

/// The `.entry` kernels of PTX text with their parameter layouts (natural alignment, offsets
/// packed in declaration order, as the driver lays them out). A kernel whose signature has a
/// declaration this parser does not understand gets `params: None`.
fn ptx_kernels(text: &str) -> Vec<ImageKernel> {
    let text = strip_ptx_comments(text);
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut search = 0;
    while let Some(found) = text[search..].find(".entry") {
        let at = search + found;
        search = at + ".entry".len();
        let before_ok = at == 0 || b[at - 1].is_ascii_whitespace();
        let after_ok = b.get(search).is_some_and(|c| c.is_ascii_whitespace());
        if !before_ok || !after_ok {
            continue;
        }
        let rest = text[search..].trim_start();
        let name_len = rest.find(|c: char| c.is_whitespace() || c == '(' || c == '{' || c == ';').unwrap_or(rest.len());
        let name = &rest[..name_len];
        if name.is_empty() {
            continue;
        }
        let after_name = rest[name_len..].trim_start();
        let params = if let Some(sig) = after_name.strip_prefix('(') {
            match sig.find(')') {
                Some(close) => ptx_layout(&sig[..close]),
                None => None,
            }
        } else {
            Some(Vec::new())
        };
        out.push(ImageKernel { name: name.to_owned(), params });
    }
    out
}

/// Offsets for the comma-separated `.param` declarations of one signature.
fn ptx_layout(sig: &str) -> Option<Vec<ParamInfo>> {
    let mut params = Vec::new();
    let mut end = 0u32;
    for decl in sig.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (align, size) = ptx_param(decl)?;
        let offset = end.checked_add(align - 1)? / align * align;
        params.push(ParamInfo { offset, size });
        end = offset.checked_add(size)?;
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(offset: u32, size: u32) -> ParamInfo {
        ParamInfo { offset, size }
    }

    #[test]
    fn load_of_a_missing_library_fails_clearly() {
        let err = match load("/nonexistent/libcuda.so.1") {
            Ok(_) => panic!("a missing driver loaded"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("cannot load the CUDA driver from /nonexistent/libcuda.so.1"), "{err}");
    }

    #[test]
    fn load_of_a_library_that_is_not_a_driver_fails_clearly() {
        // libc is loadable everywhere and has no cuInit.
        match load("libc.so.6") {
            Ok(_) => panic!("libc loaded as a CUDA driver"),
            Err(e) => assert!(format!("{e:#}").contains("no cuInit"), "{e:#}"),
        }
    }

    #[test]
    fn ptx_signature_with_pointers_scalars_and_aggregates() {
        let ptx = r#"
.version 8.0
.target sm_80
.address_size 64

// .entry commented_out(.param .u32 x)
.visible .entry _Z6kernelPfS_ifd(
	.param .u64 .ptr .global .align 4 _Z6kernelPfS_ifd_param_0, // trailing comment
	.param .u64 _Z6kernelPfS_ifd_param_1,
	.param .u32 _Z6kernelPfS_ifd_param_2,
	.param .f32 _Z6kernelPfS_ifd_param_3,
	.param .f64 _Z6kernelPfS_ifd_param_4,
	.param .u8 flag,
	.param .align 16 .b8 s[24],
	.param .u16 h
)
{
	ret;
}
/* .entry also_commented( .param .u64 a ) */
.entry noparams
{
	ret;
}
.weak .entry packed(.param .u8 a,.param .u64 .ptr.global.align 16 b,.param .b32 c[3])
{
	ret;
}
"#;
        let ks = ptx_kernels(ptx);
        assert_eq!(ks.len(), 3, "{ks:?}");
        assert_eq!(ks[0].name, "_Z6kernelPfS_ifd");
        assert_eq!(ks[0].params.as_deref().unwrap(), &[p(0, 8), p(8, 8), p(16, 4), p(20, 4), p(24, 8), p(32, 1), p(48, 24), p(72, 2)]);
        assert_eq!(ks[1], ImageKernel { name: "noparams".into(), params: Some(vec![]) });
        // `.align 16` after `.ptr` is the pointee's alignment; `.b32 c[3]` is 12 bytes at 4.
        assert_eq!(ks[2].name, "packed");
        assert_eq!(ks[2].params.as_deref().unwrap(), &[p(0, 1), p(8, 8), p(16, 12)]);
    }

    #[test]
    fn ptx_unknown_declaration_gives_no_layout() {
        let ks = ptx_kernels(".entry k(.param .weird x)\n{ ret; }");
        assert_eq!(ks, vec![ImageKernel { name: "k".into(), params: None }]);
    }

    #[test]
    fn ptx_funcs_are_not_entries() {
        let ks = ptx_kernels(".func (.param .b32 r) f(.param .b32 a) { ret; }\n.entry e(.param .b32 a) { ret; }");
        assert_eq!(ks.len(), 1);
        assert_eq!(ks[0].name, "e");
    }

    /// One EIATTR_KPARAM_INFO record as nvcc writes it.
    fn kparam(ordinal: u16, offset: u16, size: u32) -> Vec<u8> {
        let mut r = vec![EIFMT_SVAL, EIATTR_KPARAM_INFO];
        r.extend_from_slice(&12u16.to_le_bytes());
        r.extend_from_slice(&0u32.to_le_bytes());
        r.extend_from_slice(&ordinal.to_le_bytes());
        r.extend_from_slice(&offset.to_le_bytes());
        // Size in bits 18.., "not a cbank" clear, space 0, cbank 0x1f as nvcc emits.
        r.extend_from_slice(&((size << 18) | (0x1f << 12)).to_le_bytes());
        r
    }

    fn nv_info_section() -> Vec<u8> {
        let mut s = Vec::new();
        // EIATTR_CUDA_API_VERSION (0x37), HVAL.
        s.extend_from_slice(&[EIFMT_HVAL, 0x37, 0x80, 0x00]);
        // EIATTR_PARAM_CBANK (0x0a), SVAL with 8 bytes.
        s.extend_from_slice(&[EIFMT_SVAL, 0x0a, 8, 0]);
        s.extend_from_slice(&[1, 0, 0, 0, 0x60, 0x01, 0x14, 0x00]);
        // Reverse ordinal order, as nvcc lists them: (float*, int, double).
        s.extend(kparam(2, 16, 8));
        s.extend(kparam(1, 8, 4));
        s.extend(kparam(0, 0, 8));
        // EIATTR_SW2861232_WAR (0x35), NVAL.
        s.extend_from_slice(&[EIFMT_NVAL, 0x35, 0, 0]);
        s
    }

    #[test]
    fn nv_info_kparam_records() {
        assert_eq!(parse_nv_info_params(&nv_info_section()).unwrap(), vec![p(0, 8), p(8, 4), p(16, 8)]);
        // A kernel without parameters.
        assert_eq!(parse_nv_info_params(&[EIFMT_HVAL, 0x37, 0x80, 0x00]).unwrap(), vec![]);
        // A record running past the end, or an unknown format: no layout.
        assert_eq!(parse_nv_info_params(&kparam(0, 0, 8)[..10]), None);
        assert_eq!(parse_nv_info_params(&[0x09, 0x17, 0, 0]), None);
    }

    /// A minimal ELF64 cubin: sections null, .shstrtab, .strtab, .symtab, .text.kern,
    /// .nv.info.kern, .text.helper (a device function with its own section, as with -rdc).
    /// `mark` is the st_other of the kernel's symbol.
    fn tiny_cubin_marked(mark: u8) -> Vec<u8> {
        let shstr = b"\0.shstrtab\0.strtab\0.symtab\0.text.kern\0.nv.info.kern\0.text.helper\0".to_vec();
        let name_at = |n: &str| {
            let needle = format!("\0{n}\0");
            (shstr.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() + 1) as u32
        };
        let strtab = b"\0kern\0helper\0".to_vec();
        let sym = |name: u32, info: u8, shndx: u16, other: u8| {
            let mut s = Vec::new();
            s.extend_from_slice(&name.to_le_bytes());
            s.push(info);
            s.push(other);
            s.extend_from_slice(&shndx.to_le_bytes());
            s.extend_from_slice(&0u64.to_le_bytes());
            s.extend_from_slice(&0u64.to_le_bytes());
            s
        };
        let mut symtab = vec![0u8; 24];
        // A section symbol (STT_SECTION = 3) and two functions (STB_GLOBAL << 4 | STT_FUNC).
        symtab.extend(sym(0, 3, 4, 0));
        symtab.extend(sym(1, 0x12, 4, mark));
        symtab.extend(sym(6, 0x12, 6, 0));
        let text = vec![0u8; 32];
        let info = nv_info_section();
        // (name, type, link, data)
        let sections: Vec<(u32, u32, u32, Vec<u8>)> = vec![
            (0, 0, 0, vec![]),
            (name_at(".shstrtab"), 3, 0, shstr.clone()),
            (name_at(".strtab"), 3, 0, strtab),
            (name_at(".symtab"), SHT_SYMTAB, 2, symtab),
            (name_at(".text.kern"), 1, 0, text.clone()),
            (name_at(".nv.info.kern"), 0x7000_0000, 0, info),
            (name_at(".text.helper"), 1, 0, text),
        ];
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        let mut offsets = Vec::new();
        for (_, _, _, data) in &sections {
            elf.resize(elf.len().next_multiple_of(8), 0);
            offsets.push(elf.len());
            elf.extend_from_slice(data);
        }
        elf.resize(elf.len().next_multiple_of(8), 0);
        let shoff = elf.len();
        for ((name, kind, link, data), off) in sections.iter().zip(&offsets) {
            let mut sh = vec![0u8; 64];
            sh[0..4].copy_from_slice(&name.to_le_bytes());
            sh[4..8].copy_from_slice(&kind.to_le_bytes());
            sh[24..32].copy_from_slice(&(*off as u64).to_le_bytes());
            sh[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
            sh[40..44].copy_from_slice(&link.to_le_bytes());
            elf.extend(sh);
        }
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    fn tiny_cubin() -> Vec<u8> {
        tiny_cubin_marked(STO_CUDA_ENTRY)
    }

    #[test]
    fn cubin_kernels_and_layouts() {
        let elf = tiny_cubin();
        assert_eq!(validate_image(&elf), Ok(()));
        let kern = ImageKernel { name: "kern".into(), params: Some(vec![p(0, 8), p(8, 4), p(16, 8)]) };
        assert_eq!(image_kernels(&elf), vec![kern.clone()]);
        // Without entry marks, every function in its own .text section is taken.
        let unmarked = tiny_cubin_marked(0);
        assert_eq!(image_kernels(&unmarked), vec![kern, ImageKernel { name: "helper".into(), params: None }]);
    }

    #[test]
    fn truncated_or_inflated_cubins_are_refused() {
        let elf = tiny_cubin();
        assert_eq!(validate_image(&elf[..elf.len() - 1]), Err(CuError::INVALID_IMAGE));
        let mut inflated = elf.clone();
        // Section 5's size field made huge.
        let shoff = u64::from_le_bytes(elf[0x28..0x30].try_into().unwrap()) as usize;
        inflated[shoff + 5 * 64 + 32..shoff + 5 * 64 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(validate_image(&inflated), Err(CuError::INVALID_IMAGE));
        // 32-bit ELF.
        let mut elf32 = elf;
        elf32[4] = 1;
        assert_eq!(validate_image(&elf32), Err(CuError::INVALID_IMAGE));
    }

    fn fatbin(entries: &[(u16, u64, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, flags, payload) in entries {
            let mut h = vec![0u8; 64];
            h[0..2].copy_from_slice(&kind.to_le_bytes());
            h[4..8].copy_from_slice(&64u32.to_le_bytes());
            h[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
            h[0x28..0x30].copy_from_slice(&flags.to_le_bytes());
            body.extend(h);
            body.extend_from_slice(payload);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&FATBIN_MAGIC.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn fatbin_entries_feed_the_fallback() {
        let ptx = b".entry fromptx(.param .u32 a, .param .u64 b) { ret; }".to_vec();
        let image = fatbin(&[(FATBIN_KIND_PTX, 0, ptx), (FATBIN_KIND_ELF, 0x2000, vec![1, 2, 3]), (FATBIN_KIND_ELF, 0, tiny_cubin())]);
        assert_eq!(validate_image(&image), Ok(()));
        let names: Vec<String> = image_kernels(&image).into_iter().map(|k| k.name).collect();
        assert_eq!(names, vec!["kern", "fromptx"]);
        let k = image_kernels(&image).into_iter().find(|k| k.name == "fromptx").unwrap();
        assert_eq!(k.params.unwrap(), vec![p(0, 4), p(8, 8)]);
        // Entry sizes past the end, and the host-pointer wrapper, are refused.
        assert_eq!(validate_image(&image[..image.len() - 4]), Err(CuError::INVALID_IMAGE));
        assert_eq!(validate_image(&FATBIN_WRAPPER_MAGIC.to_le_bytes()), Err(CuError::INVALID_IMAGE));
        assert_eq!(validate_image(&[]), Err(CuError::INVALID_IMAGE));
    }

    #[test]
    fn aligned_copy_appends_a_nul() {
        for len in [0usize, 1, 7, 8, 9, 16] {
            let src: Vec<u8> = (1..=len as u8).collect();
            let words = aligned_copy(&src);
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
            assert!(bytes.len() > len);
            assert_eq!(&bytes[..len], &src[..]);
            assert_eq!(bytes[len], 0);
        }
    }
}
