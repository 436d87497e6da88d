//! The real shim, loaded with libloading and called through typed function pointers: the
//! benchmark measures exactly what an application linked against `libcuda.so.1` gets.
//! This module is the only place with `unsafe`.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::path::Path;

use anyhow::{bail, Context, Result};

type CuResult = c_int;
type Handle = *mut c_void;
pub type DevPtr = u64;

/// The PTX of a kernel that does nothing.
pub const EMPTY_PTX: &str = ".version 7.0\n.target sm_80\n.address_size 64\n.visible .entry empty()\n{\n\tret;\n}\n";

/// The driver functions the benchmark calls, resolved once.
pub struct Driver {
    cu_get_error_name: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    cu_init: unsafe extern "C" fn(c_uint) -> CuResult,
    cu_device_get: unsafe extern "C" fn(*mut c_int, c_int) -> CuResult,
    cu_ctx_create: unsafe extern "C" fn(*mut Handle, c_uint, c_int) -> CuResult,
    cu_ctx_synchronize: unsafe extern "C" fn() -> CuResult,
    cu_mem_get_info: unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult,
    cu_module_load_data: unsafe extern "C" fn(*mut Handle, *const c_void) -> CuResult,
    cu_module_get_function: unsafe extern "C" fn(*mut Handle, Handle, *const c_char) -> CuResult,
    #[allow(clippy::type_complexity)]
    cu_launch_kernel: unsafe extern "C" fn(
        Handle,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        Handle,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    cu_mem_alloc: unsafe extern "C" fn(*mut DevPtr, usize) -> CuResult,
    cu_mem_free: unsafe extern "C" fn(DevPtr) -> CuResult,
    cu_memcpy_htod: unsafe extern "C" fn(DevPtr, *const c_void, usize) -> CuResult,
    cu_memcpy_htod_async: unsafe extern "C" fn(DevPtr, *const c_void, usize, *mut c_void) -> CuResult,
    cu_memcpy_dtoh: unsafe extern "C" fn(*mut c_void, DevPtr, usize) -> CuResult,
    cu_mem_alloc_host: unsafe extern "C" fn(*mut *mut c_void, usize) -> CuResult,
    cu_mem_free_host: unsafe extern "C" fn(*mut c_void) -> CuResult,
    // Last: the library stays loaded as long as the pointers above are reachable.
    _lib: libloading::Library,
}

/// A kernel function handle of the shim.
#[derive(Debug, Clone, Copy)]
pub struct Function(Handle);

/// Page-locked host memory from cuMemAllocHost, freed with cuMemFreeHost by [`Driver::free_host`].
pub struct HostBuf {
    ptr: *mut u8,
    len: usize,
}

impl HostBuf {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr came from cuMemAllocHost(len), which returned a live, writable allocation of
        // len bytes owned by this HostBuf (freed only by free_host(self)); &mut self makes this
        // the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

macro_rules! sym {
    ($lib:expr, $name:literal) => {{
        // SAFETY: the symbol is a CUDA driver API function with the C signature of the field it
        // is stored in (cuda.h); the library outlives the pointer (it is stored beside it).
        let s = unsafe { $lib.get(concat!($name, "\0").as_bytes()) }.with_context(|| format!("the shim has no {}", $name))?;
        *s
    }};
}

impl Driver {
    /// Loads the shim at `path`.
    pub fn load(path: &Path) -> Result<Driver> {
        // SAFETY: loading the shim runs its initialisers, which only set up statics; the
        // library is a cuwire build product, not arbitrary code chosen at run time.
        let lib = unsafe { libloading::Library::new(path) }.with_context(|| format!("loading the shim {}", path.display()))?;
        Ok(Driver {
            cu_get_error_name: sym!(lib, "cuGetErrorName"),
            cu_init: sym!(lib, "cuInit"),
            cu_device_get: sym!(lib, "cuDeviceGet"),
            cu_ctx_create: sym!(lib, "cuCtxCreate_v2"),
            cu_ctx_synchronize: sym!(lib, "cuCtxSynchronize"),
            cu_mem_get_info: sym!(lib, "cuMemGetInfo_v2"),
            cu_module_load_data: sym!(lib, "cuModuleLoadData"),
            cu_module_get_function: sym!(lib, "cuModuleGetFunction"),
            cu_launch_kernel: sym!(lib, "cuLaunchKernel"),
            cu_mem_alloc: sym!(lib, "cuMemAlloc_v2"),
            cu_mem_free: sym!(lib, "cuMemFree_v2"),
            cu_memcpy_htod: sym!(lib, "cuMemcpyHtoD_v2"),
            cu_memcpy_htod_async: sym!(lib, "cuMemcpyHtoDAsync_v2"),
            cu_memcpy_dtoh: sym!(lib, "cuMemcpyDtoH_v2"),
            cu_mem_alloc_host: sym!(lib, "cuMemAllocHost_v2"),
            cu_mem_free_host: sym!(lib, "cuMemFreeHost"),
            _lib: lib,
        })
    }

    fn check(&self, what: &str, rc: CuResult) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        let mut name: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorName writes a pointer to a static string (or leaves it null).
        let known = unsafe { (self.cu_get_error_name)(rc, &mut name) } == 0 && !name.is_null();
        let text = if known {
            // SAFETY: the shim returned a NUL-terminated static string.
            unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
        } else {
            format!("CUresult {rc}")
        };
        bail!("{what} failed: {text}")
    }

    /// cuInit, cuDeviceGet(0), cuCtxCreate: a context current on the calling thread.
    pub fn init_context(&self) -> Result<()> {
        // SAFETY: cuInit takes flags by value.
        self.check("cuInit", unsafe { (self.cu_init)(0) })?;
        let mut dev: c_int = -1;
        // SAFETY: out-pointer to a live c_int.
        self.check("cuDeviceGet", unsafe { (self.cu_device_get)(&mut dev, 0) })?;
        let mut ctx: Handle = std::ptr::null_mut();
        // SAFETY: out-pointer to a live handle; flags and device by value.
        self.check("cuCtxCreate", unsafe { (self.cu_ctx_create)(&mut ctx, 0, dev) })
    }

    pub fn ctx_synchronize(&self) -> Result<()> {
        // SAFETY: no arguments.
        self.check("cuCtxSynchronize", unsafe { (self.cu_ctx_synchronize)() })
    }

    pub fn mem_get_info(&self) -> Result<(usize, usize)> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: out-pointers to live usizes.
        self.check("cuMemGetInfo", unsafe { (self.cu_mem_get_info)(&mut free, &mut total) })?;
        Ok((free, total))
    }

    /// Loads a PTX module and looks up one of its kernels.
    pub fn load_function(&self, ptx: &str, name: &str) -> Result<Function> {
        let image = CString::new(ptx)?;
        let name = CString::new(name)?;
        let mut module: Handle = std::ptr::null_mut();
        // SAFETY: the image is a NUL-terminated PTX string alive for the call.
        self.check("cuModuleLoadData", unsafe { (self.cu_module_load_data)(&mut module, image.as_ptr().cast()) })?;
        let mut func: Handle = std::ptr::null_mut();
        // SAFETY: out-pointer to a live handle; module from the shim; NUL-terminated name.
        self.check("cuModuleGetFunction", unsafe { (self.cu_module_get_function)(&mut func, module, name.as_ptr()) })?;
        Ok(Function(func))
    }

    /// Launches a kernel without parameters on one thread of the default stream.
    pub fn launch_empty(&self, f: Function) -> Result<()> {
        // SAFETY: f is a function handle of the shim whose kernel takes no parameters, so a null
        // kernelParams and null extra are valid; the null stream is the default stream.
        let rc =
            unsafe { (self.cu_launch_kernel)(f.0, 1, 1, 1, 1, 1, 1, 0, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut()) };
        self.check("cuLaunchKernel", rc)
    }

    pub fn mem_alloc(&self, bytes: usize) -> Result<DevPtr> {
        let mut p: DevPtr = 0;
        // SAFETY: out-pointer to a live u64.
        self.check("cuMemAlloc", unsafe { (self.cu_mem_alloc)(&mut p, bytes) })?;
        Ok(p)
    }

    pub fn mem_free(&self, p: DevPtr) -> Result<()> {
        // SAFETY: a device pointer by value.
        self.check("cuMemFree", unsafe { (self.cu_mem_free)(p) })
    }

    pub fn htod(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        // SAFETY: src is readable for src.len() bytes for the whole (synchronous) call.
        self.check("cuMemcpyHtoD", unsafe { (self.cu_memcpy_htod)(dst, src.as_ptr().cast(), src.len()) })
    }

    /// cuMemcpyHtoDAsync on the null stream from the first `len` bytes of page-locked memory,
    /// then cuCtxSynchronize: returns (time the call took, time until synchronised). The copy
    /// may read `src` after the call returns; `src` stays borrowed until the synchronize.
    pub fn htod_async_then_sync(&self, dst: DevPtr, src: &HostBuf, len: usize) -> Result<(std::time::Duration, std::time::Duration)> {
        anyhow::ensure!(len <= src.len, "{len} bytes from a host buffer of {}", src.len);
        let t = std::time::Instant::now();
        // SAFETY: src.ptr is a live page-locked allocation of at least `len` bytes, freed only by
        // free_host (cuMemFreeHost, which waits for copies from it); it is not written before the
        // synchronize below, which ends the copy's use of it.
        self.check("cuMemcpyHtoDAsync", unsafe { (self.cu_memcpy_htod_async)(dst, src.ptr.cast(), len, std::ptr::null_mut()) })?;
        let issued = t.elapsed();
        self.ctx_synchronize()?;
        Ok((issued, t.elapsed()))
    }

    pub fn dtoh(&self, dst: &mut [u8], src: DevPtr) -> Result<()> {
        // SAFETY: dst is writable for dst.len() bytes for the whole (synchronous) call.
        self.check("cuMemcpyDtoH", unsafe { (self.cu_memcpy_dtoh)(dst.as_mut_ptr().cast(), src, dst.len()) })
    }

    pub fn alloc_host(&self, bytes: usize) -> Result<HostBuf> {
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: out-pointer to a live pointer.
        self.check("cuMemAllocHost", unsafe { (self.cu_mem_alloc_host)(&mut p, bytes) })?;
        if p.is_null() {
            bail!("cuMemAllocHost returned null");
        }
        Ok(HostBuf { ptr: p.cast(), len: bytes })
    }

    pub fn free_host(&self, buf: HostBuf) -> Result<()> {
        // SAFETY: buf.ptr came from cuMemAllocHost and is freed once (buf is consumed).
        self.check("cuMemFreeHost", unsafe { (self.cu_mem_free_host)(buf.ptr.cast()) })
    }
}
