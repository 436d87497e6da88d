//! Modules, libraries and functions. A load sends the image and gets back every entry point
//! with its parameter layout and attributes, and every module variable; after that, function
//! and kernel lookups, attribute queries and variable lookups are answered here, and the handles
//! they hand out are minted here and announced to the server without waiting.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::client::{self, Client, KernelRec, ModuleRec};
use crate::manual::link::{parse_options, JitOutputs};
use crate::{context, expect_reply, export, ffi};
use bytes::Bytes;
use cuwire_protocol::limits::MAX_PAYLOAD;
use cuwire_protocol::{calls, cuda, CallKind, CuError, Func, FunctionInfo, Kernel, Library, Module, ModuleInfo, Request};

const FATBIN_MAGIC: u32 = 0xBA55_ED50;
const FATBIN_WRAPPER_MAGIC: u32 = 0x4662_43B1;

/// Reads a module image the driver way: its length comes from its own header (ELF, fatbinary,
/// or the fatbinary wrapper nvcc emits) or, for PTX, from its terminating NUL.
///
/// # Safety
/// `image` points to a valid image of one of those kinds.
pub unsafe fn read_image(image: *const c_void) -> Result<Vec<u8>, CuError> {
    if image.is_null() {
        return Err(CuError::INVALID_VALUE);
    }
    // SAFETY: every image kind starts with at least 16 readable bytes (PTX: ".version" and more;
    // a shorter NUL-terminated string is caught by the strlen path only after this read, so
    // read the first bytes one at a time until a NUL).
    let head: Vec<u8> = unsafe {
        let p = image as *const u8;
        let mut v = Vec::with_capacity(16);
        for i in 0..16 {
            let b = *p.add(i);
            v.push(b);
            if b == 0 {
                break;
            }
        }
        v
    };
    // The binary kinds' magic numbers have no NUL byte, but their headers do: the loop above
    // stops inside them. Read their whole 16-byte header once the magic is known.
    let binary = head.len() >= 4
        && (head.starts_with(b"\x7fELF")
            || [FATBIN_MAGIC, FATBIN_WRAPPER_MAGIC].contains(&u32::from_le_bytes(head[0..4].try_into().unwrap())));
    let head: Vec<u8> = if binary {
        // SAFETY: ELF, fatbinary and fatbinary-wrapper headers are at least 16 bytes long.
        unsafe { ffi::slice(image, 16)? }.to_vec()
    } else {
        head
    };
    let u32_at = |o: usize| u32::from_le_bytes(head[o..o + 4].try_into().unwrap());
    let len = if head.len() == 16 && head.starts_with(b"\x7fELF") {
        // SAFETY: a 64-bit ELF header is 64 bytes.
        let hdr = unsafe { ffi::slice(image, 64)? };
        let shoff = u64::from_le_bytes(hdr[0x28..0x30].try_into().unwrap());
        let shentsize = u16::from_le_bytes(hdr[0x3A..0x3C].try_into().unwrap()) as u64;
        let shnum = u16::from_le_bytes(hdr[0x3C..0x3E].try_into().unwrap()) as u64;
        shoff.saturating_add(shentsize * shnum)
    } else if head.len() == 16 && u32_at(0) == FATBIN_MAGIC {
        let header = u16::from_le_bytes(head[6..8].try_into().unwrap()) as u64;
        let size = u64::from_le_bytes(head[8..16].try_into().unwrap());
        header.saturating_add(size)
    } else if head.len() == 16 && u32_at(0) == FATBIN_WRAPPER_MAGIC {
        // { int magic; int version; const unsigned long long *data; void *filename_or_fatbins }
        let data = u64::from_le_bytes(head[8..16].try_into().unwrap()) as *const c_void;
        // SAFETY: the wrapper's data pointer is a fatbinary.
        return unsafe { read_image(data) };
    } else {
        // SAFETY: PTX is NUL-terminated text.
        let text = unsafe { std::ffi::CStr::from_ptr(image as *const c_char) };
        text.to_bytes().len() as u64
    };
    if len == 0 || len > MAX_PAYLOAD as u64 {
        return Err(CuError::INVALID_IMAGE);
    }
    // SAFETY: the image's own header says it is `len` bytes long.
    Ok(unsafe { ffi::slice(image, len as usize)? }.to_vec())
}

fn load_module(c: &Client, image: Vec<u8>) -> Result<Module, CuError> {
    load_module_logged(c, image, &JitOutputs::default())
}

/// Writes the JIT outputs of a module or library load (`cuModuleLoadDataEx`,
/// `cuLibraryLoadData` options): on success an info line and an empty error log; on failure
/// the server's explanation (the emulator's message naming the line, or the driver's JIT log),
/// asked for only when the caller gave an error log buffer. The `_SIZE_BYTES` options receive
/// the bytes written, NUL included, as the driver's do.
fn report_load(c: &Client, handle: u64, jit: &JitOutputs, started: Instant, result: Result<&ModuleInfo, CuError>) {
    let ms = started.elapsed().as_secs_f32() * 1000.0;
    // SAFETY (every write below): the option buffers and slots are valid during the call
    // that parsed them (driver API contract), and this runs within it.
    match result {
        Ok(info) => unsafe {
            let n = info.functions.len();
            jit.info.write(&format!("cuwire: image loaded by the pool ({n} entry point{})", if n == 1 { "" } else { "s" }));
            jit.error.clear();
            jit.wall_time(ms);
        },
        Err(e) => {
            let mut text = String::new();
            if jit.error.wanted() {
                let req = calls::LoadLog::Req { handle, log: () };
                if let Ok((reply, _)) = c.call(CallKind::Sync, Request::LoadLog(req), Bytes::new()) {
                    text = expect_reply!(reply, LoadLog).map(|r| r.log).unwrap_or_default();
                }
                if text.is_empty() {
                    text = format!("cuwire: the pool refused the image: {e}");
                }
            }
            unsafe {
                jit.info.clear();
                jit.error.write(&text);
                jit.wall_time(ms);
            }
        }
    }
}

fn load_module_logged(c: &Client, image: Vec<u8>, jit: &JitOutputs) -> Result<Module, CuError> {
    c.current_device()?;
    let started = Instant::now();
    let module = Module(c.mint());
    let result = c
        .call(CallKind::Sync, Request::ModuleLoad(calls::ModuleLoad::Req { module, info: () }), Bytes::from(image))
        .and_then(|(reply, _)| expect_reply!(reply, ModuleLoad))
        .map(|rep| rep.info);
    report_load(c, module.0, jit, started, result.as_ref().map_err(|e| *e));
    c.objects().modules.insert(module.0, ModuleRec { info: Arc::new(result?), ctx: context::current(), functions: HashMap::new() });
    Ok(module)
}

export! {
    fn cuModuleLoadData(pmod: *mut Handle, image: *const c_void) {
        if pmod.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        let c = client::get()?;
        // SAFETY: image is a module image (driver API contract).
        let bytes = unsafe { read_image(image)? };
        let m = load_module(c, bytes)?;
        // SAFETY: CUmodule* out-parameter.
        unsafe { ffi::write(pmod, m.0 as Handle) }
    }
}

export! {
    /// The JIT log buffers and wall time are filled (see [`report_load`]); the other JIT
    /// options are accepted and have no effect on what the server compiles.
    fn cuModuleLoadDataEx(pmod: *mut Handle, image: *const c_void, num_options: c_uint, options: *mut c_int, values: *mut *mut c_void) {
        if pmod.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: option arrays of num_options entries (driver API contract).
        let jit = unsafe { parse_options(num_options, options, values)? };
        let c = client::get()?;
        // SAFETY: image is a module image (driver API contract).
        let bytes = unsafe { read_image(image)? };
        let m = load_module_logged(c, bytes, &jit)?;
        // SAFETY: CUmodule* out-parameter.
        unsafe { ffi::write(pmod, m.0 as Handle) }
    }
}

export! {
    fn cuModuleLoadFatBinary(pmod: *mut Handle, image: *const c_void) {
        // SAFETY: same contract as cuModuleLoadData.
        let code = unsafe { cuModuleLoadData(pmod, image) };
        if code == 0 { Ok(()) } else { Err(CuError(code)) }
    }
}

/// Reads a module file on the client: the server never sees client paths.
fn read_file(path: *const c_char) -> Result<Vec<u8>, CuError> {
    // SAFETY: NUL-terminated path string.
    let path = unsafe { ffi::cstr(path)? };
    let bytes = std::fs::read(path).map_err(|_| CuError(cuda::CUDA_ERROR_FILE_NOT_FOUND))?;
    if bytes.is_empty() || bytes.len() > MAX_PAYLOAD {
        return Err(CuError::INVALID_IMAGE);
    }
    Ok(bytes)
}

export! {
    fn cuModuleLoad(pmod: *mut Handle, fname: *const c_char) {
        if pmod.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        let c = client::get()?;
        let m = load_module(c, read_file(fname)?)?;
        // SAFETY: CUmodule* out-parameter.
        unsafe { ffi::write(pmod, m.0 as Handle) }
    }
}

export! {
    fn cuModuleGetFunction(pfunc: *mut Handle, hmod: Handle, name: *const c_char) {
        if pfunc.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: NUL-terminated name.
        let name = unsafe { ffi::cstr(name)? };
        let c = client::get()?;
        let module = Module(hmod as u64);
        let func = {
            let mut objects = c.objects();
            let rec = objects.modules.get_mut(&module.0).ok_or(CuError::INVALID_HANDLE)?;
            if let Some(f) = rec.functions.get(name) {
                *f
            } else {
                let info = rec.info.functions.iter().find(|f| f.name == name).cloned().ok_or(CuError::NOT_FOUND)?;
                let f = c.mint();
                rec.functions.insert(name.to_owned(), f);
                objects.functions.insert(f, Arc::new(info));
                c.send(Request::ModuleGetFunction(calls::ModuleGetFunction::Req { func: Func(f), module, name: name.to_owned() }), Bytes::new())?;
                f
            }
        };
        // SAFETY: CUfunction* out-parameter.
        unsafe { ffi::write(pfunc, func as Handle) }
    }
}

export! {
    fn cuModuleGetGlobal_v2(dptr: *mut CUdeviceptr, bytes: *mut usize, hmod: Handle, name: *const c_char) {
        // SAFETY: NUL-terminated name.
        let name = unsafe { ffi::cstr(name)? };
        let c = client::get()?;
        let module = Module(hmod as u64);
        let cached = {
            let objects = c.objects();
            let rec = objects.modules.get(&module.0).ok_or(CuError::INVALID_HANDLE)?;
            rec.info.globals.iter().find(|g| g.name == name).map(|g| (g.dptr, g.bytes))
        };
        let (p, n) = match cached {
            Some(g) => g,
            None => {
                let req = calls::ModuleGetGlobal::Req { module, name: name.to_owned(), dptr: (), bytes: () };
                let (reply, _) = c.call(CallKind::Sync, Request::ModuleGetGlobal(req), Bytes::new())?;
                let rep = expect_reply!(reply, ModuleGetGlobal)?;
                (rep.dptr, rep.bytes)
            }
        };
        // SAFETY: optional CUdeviceptr* and size_t* out-parameters.
        unsafe {
            ffi::write_opt(dptr, p);
            ffi::write_opt(bytes, n as usize);
        }
        Ok(())
    }
}

// ---- libraries (context-independent modules) and kernels

fn load_library(c: &Client, image: Vec<u8>, jit: &JitOutputs) -> Result<Library, CuError> {
    let started = Instant::now();
    let library = Library(c.mint());
    let result = c
        .call(CallKind::Sync, Request::LibraryLoad(calls::LibraryLoad::Req { library, info: () }), Bytes::from(image))
        .and_then(|(reply, _)| expect_reply!(reply, LibraryLoad))
        .map(|rep| rep.info);
    report_load(c, library.0, jit, started, result.as_ref().map_err(|e| *e));
    let info: ModuleInfo = result?;
    c.objects().libraries.insert(library.0, ModuleRec { info: Arc::new(info), ctx: context::current(), functions: HashMap::new() });
    Ok(library)
}

export! {
    /// The JIT log buffers and wall time are filled as for cuModuleLoadDataEx; library options
    /// are accepted and not acted upon.
    fn cuLibraryLoadData(plib: *mut Handle, code: *const c_void, jit_options: *mut c_int, jit_values: *mut *mut c_void, num_jit: c_uint,
                         _lib_options: *mut c_int, _lib_values: *mut *mut c_void, _num_lib: c_uint) {
        if plib.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: option arrays of num_jit entries (driver API contract).
        let jit = unsafe { parse_options(num_jit, jit_options, jit_values)? };
        let c = client::get()?;
        // SAFETY: code is a module image.
        let bytes = unsafe { read_image(code)? };
        let l = load_library(c, bytes, &jit)?;
        // SAFETY: CUlibrary* out-parameter.
        unsafe { ffi::write(plib, l.0 as Handle) }
    }
}

export! {
    fn cuLibraryLoadFromFile(plib: *mut Handle, fname: *const c_char, jit_options: *mut c_int, jit_values: *mut *mut c_void, num_jit: c_uint,
                             _lib_options: *mut c_int, _lib_values: *mut *mut c_void, _num_lib: c_uint) {
        if plib.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: option arrays of num_jit entries (driver API contract).
        let jit = unsafe { parse_options(num_jit, jit_options, jit_values)? };
        let c = client::get()?;
        let l = load_library(c, read_file(fname)?, &jit)?;
        // SAFETY: CUlibrary* out-parameter.
        unsafe { ffi::write(plib, l.0 as Handle) }
    }
}

export! {
    fn cuLibraryGetKernel(pkernel: *mut Handle, library: Handle, name: *const c_char) {
        if pkernel.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: NUL-terminated name.
        let name = unsafe { ffi::cstr(name)? };
        let c = client::get()?;
        let lib = Library(library as u64);
        let kernel = {
            let mut objects = c.objects();
            let rec = objects.libraries.get_mut(&lib.0).ok_or(CuError::INVALID_HANDLE)?;
            if let Some(k) = rec.functions.get(name) {
                *k
            } else {
                let info = rec.info.functions.iter().find(|f| f.name == name).cloned().ok_or(CuError::NOT_FOUND)?;
                let k = c.mint();
                rec.functions.insert(name.to_owned(), k);
                objects.kernels.insert(k, KernelRec { library: lib.0, info: Arc::new(info), per_ctx: HashMap::new() });
                c.send(Request::LibraryGetKernel(calls::LibraryGetKernel::Req { kernel: Kernel(k), library: lib, name: name.to_owned() }), Bytes::new())?;
                k
            }
        };
        // SAFETY: CUkernel* out-parameter.
        unsafe { ffi::write(pkernel, kernel as Handle) }
    }
}

export! {
    fn cuLibraryGetGlobal(dptr: *mut CUdeviceptr, bytes: *mut usize, library: Handle, name: *const c_char) {
        // SAFETY: NUL-terminated name.
        let name = unsafe { ffi::cstr(name)? };
        let c = client::get()?;
        let library = Library(library as u64);
        if !c.objects().libraries.contains_key(&library.0) {
            return Err(CuError::INVALID_HANDLE);
        }
        let req = calls::LibraryGetGlobal::Req { library, name: name.to_owned(), dptr: (), bytes: () };
        let (reply, _) = c.call(CallKind::Sync, Request::LibraryGetGlobal(req), Bytes::new())?;
        let rep = expect_reply!(reply, LibraryGetGlobal)?;
        // SAFETY: optional out-parameters.
        unsafe {
            ffi::write_opt(dptr, rep.dptr);
            ffi::write_opt(bytes, rep.bytes as usize);
        }
        Ok(())
    }
}

export! {
    /// The library as a module of the current context: its functions and variables are then
    /// reached with the module calls. The module is not the library's to unload separately.
    fn cuLibraryGetModule(pmod: *mut Handle, library: Handle) {
        if pmod.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        let c = client::get()?;
        c.current_device()?;
        let library = Library(library as u64);
        let info = c.objects().libraries.get(&library.0).map(|l| l.info.clone()).ok_or(CuError::INVALID_HANDLE)?;
        let module = Module(c.mint());
        c.objects().modules.insert(module.0, ModuleRec { info, ctx: context::current(), functions: HashMap::new() });
        library_modules().insert(module.0, library.0);
        c.send(Request::LibraryGetModule(calls::LibraryGetModule::Req { module, library }), Bytes::new())?;
        // SAFETY: CUmodule* out-parameter.
        unsafe { ffi::write(pmod, module.0 as Handle) }
    }
}

/// Modules handed out by cuLibraryGetModule: module -> library.
fn library_modules() -> std::sync::MutexGuard<'static, HashMap<u64, u64>> {
    static M: std::sync::OnceLock<std::sync::Mutex<HashMap<u64, u64>>> = std::sync::OnceLock::new();
    M.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner())
}

export! {
    /// Forgets the module here (its metadata and function handles) and unloads it on the
    /// server. A module from cuLibraryGetModule belongs to its library, which cuLibraryUnload
    /// unloads: unloading it alone is ignored while the library is loaded (the module stays
    /// valid), and an invalid handle once the library is gone.
    fn cuModuleUnload(hmod: Handle) {
        let c = client::get()?;
        let module = Module(hmod as u64);
        let of_library = library_modules().get(&module.0).copied();
        let mut objects = c.objects();
        if !objects.modules.contains_key(&module.0) {
            return Err(CuError::INVALID_HANDLE);
        }
        if let Some(library) = of_library {
            if objects.libraries.contains_key(&library) {
                return Ok(());
            }
            objects.modules.remove(&module.0);
            library_modules().remove(&module.0);
            return Err(CuError::INVALID_HANDLE);
        }
        let rec = objects.modules.remove(&module.0).expect("checked above");
        for f in rec.functions.values() {
            objects.functions.remove(f);
        }
        drop(objects);
        c.send(Request::cuModuleUnload(calls::cuModuleUnload::Req { module }), Bytes::new())
    }
}

/// The function a kernel is in the calling thread's current context, minted on first use.
pub fn kernel_function(c: &Client, kernel: u64) -> Result<(Func, Arc<FunctionInfo>), CuError> {
    let ctx = context::current();
    if ctx.is_null() {
        return Err(CuError::INVALID_CONTEXT);
    }
    let mut objects = c.objects();
    let rec = objects.kernels.get_mut(&kernel).ok_or(CuError::INVALID_HANDLE)?;
    if let Some(f) = rec.per_ctx.get(&ctx.0) {
        let f = *f;
        let info = rec.info.clone();
        return Ok((Func(f), info));
    }
    let f = c.mint();
    rec.per_ctx.insert(ctx.0, f);
    let info = rec.info.clone();
    objects.functions.insert(f, info.clone());
    c.send(Request::KernelGetFunction(calls::KernelGetFunction::Req { func: Func(f), kernel: Kernel(kernel) }), Bytes::new())?;
    Ok((Func(f), info))
}

/// What a `CUfunction` argument names: a function, or (as CUDA 12 allows) a `CUkernel`.
pub fn resolve_function(c: &Client, h: Handle) -> Result<(Func, Arc<FunctionInfo>), CuError> {
    let id = h as u64;
    if let Some(info) = c.objects().functions.get(&id) {
        return Ok((Func(id), info.clone()));
    }
    kernel_function(c, id)
}

export! {
    fn cuKernelGetFunction(pfunc: *mut Handle, kernel: Handle) {
        if pfunc.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        let c = client::get()?;
        let (f, _) = kernel_function(c, kernel as u64)?;
        // SAFETY: CUfunction* out-parameter.
        unsafe { ffi::write(pfunc, f.0 as Handle) }
    }
}

fn function_attribute(info: &FunctionInfo, attrib: c_int) -> Result<c_int, CuError> {
    let a = &info.attrs;
    Ok(match attrib {
        cuda::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK => a.max_threads_per_block,
        cuda::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES => a.shared_size_bytes,
        cuda::CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES => a.const_size_bytes,
        cuda::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES => a.local_size_bytes,
        cuda::CU_FUNC_ATTRIBUTE_NUM_REGS => a.num_regs,
        cuda::CU_FUNC_ATTRIBUTE_PTX_VERSION => a.ptx_version,
        cuda::CU_FUNC_ATTRIBUTE_BINARY_VERSION => a.binary_version,
        cuda::CU_FUNC_ATTRIBUTE_CACHE_MODE_CA => 0,
        cuda::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES => (48 * 1024 - a.shared_size_bytes).max(0),
        cuda::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT => -1,
        a if (0..=16).contains(&a) => 0,
        _ => return Err(CuError::INVALID_VALUE),
    })
}

/// Attributes set with cuFuncSetAttribute, read back by cuFuncGetAttribute: (function, attribute).
fn set_attributes() -> &'static std::sync::Mutex<HashMap<(u64, c_int), c_int>> {
    static M: std::sync::OnceLock<std::sync::Mutex<HashMap<(u64, c_int), c_int>>> = std::sync::OnceLock::new();
    M.get_or_init(Default::default)
}

fn set_function_attribute(c: &Client, f: Func, info: &FunctionInfo, attrib: c_int, value: c_int) -> Result<(), CuError> {
    match attrib {
        cuda::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES => {
            let dev = c.current_device()?;
            let optin = crate::manual::device::attribute(dev, cuda::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
            if value < 0 || value > optin - info.attrs.shared_size_bytes {
                return Err(CuError::INVALID_VALUE);
            }
        }
        cuda::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT if (-1..=100).contains(&value) => {}
        cuda::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT => return Err(CuError::INVALID_VALUE),
        _ => return Err(CuError::NOT_SUPPORTED),
    }
    c.send(Request::FuncSetAttribute(calls::FuncSetAttribute::Req { func: f, attrib, value }), Bytes::new())?;
    set_attributes().lock().unwrap_or_else(|p| p.into_inner()).insert((f.0, attrib), value);
    Ok(())
}

export! {
    /// The dynamic shared memory a launch may use (up to the device's opt-in limit) and the
    /// carveout preference; cluster attributes are not supported.
    fn cuFuncSetAttribute(hfunc: Handle, attrib: c_int, value: c_int) {
        let c = client::get()?;
        let (f, info) = resolve_function(c, hfunc)?;
        set_function_attribute(c, f, &info, attrib, value)
    }
}

export! {
    fn cuKernelSetAttribute(attrib: c_int, value: c_int, kernel: Handle, _dev: c_int) {
        let c = client::get()?;
        let (f, info) = kernel_function(c, kernel as u64)?;
        set_function_attribute(c, f, &info, attrib, value)
    }
}

export! {
    fn cuFuncGetAttribute(pi: *mut c_int, attrib: c_int, hfunc: Handle) {
        let c = client::get()?;
        let (f, info) = resolve_function(c, hfunc)?;
        let set = set_attributes().lock().unwrap_or_else(|p| p.into_inner()).get(&(f.0, attrib)).copied();
        let v = match set {
            Some(v) => v,
            None => function_attribute(&info, attrib)?,
        };
        // SAFETY: int* out-parameter.
        unsafe { ffi::write(pi, v) }
    }
}

export! {
    fn cuKernelGetAttribute(pi: *mut c_int, attrib: c_int, kernel: Handle, _dev: c_int) {
        let c = client::get()?;
        let info = c.objects().kernels.get(&(kernel as u64)).map(|k| k.info.clone()).ok_or(CuError::INVALID_HANDLE)?;
        let v = function_attribute(&info, attrib)?;
        // SAFETY: int* out-parameter.
        unsafe { ffi::write(pi, v) }
    }
}

export! {
    fn cuFuncGetParamInfo(hfunc: Handle, index: usize, offset: *mut usize, size: *mut usize) {
        let c = client::get()?;
        let (_, info) = resolve_function(c, hfunc)?;
        let p = info.params.get(index).ok_or(CuError::INVALID_VALUE)?;
        // SAFETY: optional size_t* out-parameters.
        unsafe {
            ffi::write_opt(offset, p.offset as usize);
            ffi::write_opt(size, p.size as usize);
        }
        Ok(())
    }
}

export! {
    fn cuFuncGetName(name: *mut *const c_char, hfunc: Handle) {
        let c = client::get()?;
        let (_, info) = resolve_function(c, hfunc)?;
        // The driver hands out a pointer that lives as long as the function: one string per
        // name, made on the first call and kept (functions of one name share it).
        static NAMES: std::sync::Mutex<Option<HashMap<String, std::ffi::CString>>> = std::sync::Mutex::new(None);
        let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
        let names = names.get_or_insert_with(HashMap::new);
        if !names.contains_key(&info.name) {
            let cname = std::ffi::CString::new(info.name.clone()).map_err(|_| CuError::INVALID_VALUE)?;
            names.insert(info.name.clone(), cname);
        }
        // The CString's heap buffer does not move when the map grows, and entries are never
        // removed, so the pointer stays valid for the life of the process.
        let p = names[&info.name].as_ptr();
        // SAFETY: const char** out-parameter.
        unsafe { ffi::write(name, p) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    /// Module files are read on the client and must fit one frame's payload: an empty or
    /// oversized one is INVALID_IMAGE before anything is sent, a missing one FILE_NOT_FOUND.
    #[test]
    fn module_files_must_fit_one_payload() {
        let dir = std::env::temp_dir().join(format!("cuwire-shim-module-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = |name: &str| CString::new(dir.join(name).to_str().unwrap()).unwrap();
        // Sparse files: sizes without the writes.
        for (name, len) in [("empty.ptx", 0), ("at_limit.ptx", MAX_PAYLOAD as u64), ("over.ptx", MAX_PAYLOAD as u64 + 1)] {
            std::fs::File::create(dir.join(name)).unwrap().set_len(len).unwrap();
        }
        assert_eq!(read_file(path("empty.ptx").as_ptr()).err(), Some(CuError::INVALID_IMAGE));
        assert_eq!(read_file(path("over.ptx").as_ptr()).err(), Some(CuError::INVALID_IMAGE));
        assert_eq!(read_file(path("at_limit.ptx").as_ptr()).map(|b| b.len()), Ok(MAX_PAYLOAD));
        assert_eq!(read_file(path("missing.ptx").as_ptr()).err(), Some(CuError(cuda::CUDA_ERROR_FILE_NOT_FOUND)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
