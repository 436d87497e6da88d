//! `cuGetExportTable`: the undocumented tables libcudart asks the driver for by UUID before it
//! does anything useful (see `/work/shared/reference/README.md` for what libcudart 12.9 does).
//!
//! Each table is an array of pointers; most start with their own size in bytes. Layouts and the
//! meaning of the entries were reverse-engineered by the ZLUDA project (vosen/ZLUDA,
//! `dark_api/src/lib.rs`, the `dark_api!` declarations, and `zluda/src/impl/driver.rs`); other
//! shims (dxvk-nvapi's `nvcuda`, cricket) document the same tables. Entries nobody has seen
//! called are NULL, as in those implementations. This module is an independent implementation
//! from those descriptions.
//!
//! UUIDs are written as the driver's `CUuuid` bytes, in order.

mod integrity;

use std::cell::UnsafeCell;
use std::collections::{HashMap, HashSet};
use std::ffi::{c_int, c_uint, c_void};
use std::sync::Mutex;

use cuwire_protocol::{cuda, CuError};

use crate::ffi::{self, CUresult};
use crate::{client, context};

/// A table of pointers with a fixed address for the life of the process.
#[repr(transparent)]
pub struct Table<const N: usize>([*const c_void; N]);

// SAFETY: the tables are immutable arrays of addresses of functions and statics.
unsafe impl<const N: usize> Sync for Table<N> {}

impl<const N: usize> Table<N> {
    pub fn as_ptr(&self) -> *const c_void {
        self.0.as_ptr() as *const c_void
    }
}

/// Entry 0 of most tables: the table's size in bytes.
const fn size_of_table(entries: usize) -> *const c_void {
    (entries * std::mem::size_of::<*const c_void>()) as *const c_void
}

const NULL: *const c_void = std::ptr::null();

type Uuid = [u8; 16];

/// `{6bd5fb6c-5bf4-e74a-8987-d93912fd9df9}`: the cudart interface. Required: without it every
/// runtime call fails with `cudaErrorSymbolNotFound`.
pub const CUDART_INTERFACE: Uuid = [0x6b, 0xd5, 0xfb, 0x6c, 0x5b, 0xf4, 0xe7, 0x4a, 0x89, 0x87, 0xd9, 0x39, 0x12, 0xfd, 0x9d, 0xf9];
/// `{42d85a81-23f6-cb47-8298-f6e78a3aecdc}`: tools thread-local storage (only its size is read).
pub const TOOLS_TLS: Uuid = [0x42, 0xd8, 0x5a, 0x81, 0x23, 0xf6, 0xcb, 0x47, 0x82, 0x98, 0xf6, 0xe7, 0x8a, 0x3a, 0xec, 0xdc];
/// `{a094798c-2e74-2e74-93f2-0800200c0a66}`: tools runtime callback hooks.
pub const TOOLS_HOOKS: Uuid = [0xa0, 0x94, 0x79, 0x8c, 0x2e, 0x74, 0x2e, 0x74, 0x93, 0xf2, 0x08, 0x00, 0x20, 0x0c, 0x0a, 0x66];
/// `{c693336e-1121-df11-a8c3-68f355d89593}`: context-local storage, interface version 3.1.
pub const CONTEXT_LOCAL_STORAGE: Uuid = [0xc6, 0x93, 0x33, 0x6e, 0x11, 0x21, 0xdf, 0x11, 0xa8, 0xc3, 0x68, 0xf3, 0x55, 0xd8, 0x95, 0x93];
/// `{263e8860-7cd2-6143-92f6-bbd5006dfa7e}`: context checks.
pub const CONTEXT_CHECKS: Uuid = [0x26, 0x3e, 0x88, 0x60, 0x7c, 0xd2, 0x61, 0x43, 0x92, 0xf6, 0xbb, 0xd5, 0x00, 0x6d, 0xfa, 0x7e];
/// `{d4082055-bde6-704b-8d34-ba123c66e1f2}`: the integrity check.
pub const INTEGRITY_CHECK: Uuid = [0xd4, 0x08, 0x20, 0x55, 0xbd, 0xe6, 0x70, 0x4b, 0x8d, 0x34, 0xba, 0x12, 0x3c, 0x66, 0xe1, 0xf2];
/// `{21318c60-9714-3248-8ca6-41ff7324c8f2}`: asked for by libcudart 11 to 13 (seen in
/// accel-sim-framework issue 63's trace); libcudart 13 crashes when it is missing.
pub const UNKNOWN_21318C60: Uuid = [0x21, 0x31, 0x8c, 0x60, 0x97, 0x14, 0x32, 0x48, 0x8c, 0xa6, 0x41, 0xff, 0x73, 0x24, 0xc8, 0xf2];
/// `{f8cff951-2146-8b4e-b9e2-fb469e7c0dd9}`: asked for first by libcudart 12.9, which goes on
/// without it. Not provided (what it holds is not publicly known).
pub const OPTIONAL_F8CFF951: Uuid = [0xf8, 0xcf, 0xf9, 0x51, 0x21, 0x46, 0x8b, 0x4e, 0xb9, 0xe2, 0xfb, 0x46, 0x9e, 0x7c, 0x0d, 0xd9];

/// Runs an entry's body like an export: errors become their code, a panic
/// `CUDA_ERROR_UNKNOWN`, nothing unwinds into libcudart.
fn entry(name: &'static str, body: impl FnOnce() -> Result<(), CuError>) -> CUresult {
    ffi::guard(name, body)
}

fn code(r: CUresult) -> Result<(), CuError> {
    if r == cuda::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(CuError(r))
    }
}

// ---- {6bd5fb6c-…} the cudart interface

/// Entry 1: loads the fatbinary that nvcc registered (`__fatBinC_Wrapper_t*`, magic
/// 0x466243b1) as a module of the current context (ZLUDA: `get_module_from_cubin`).
unsafe extern "C" fn cudart_load_fatbin(module: *mut *mut c_void, wrapper: *const c_void) -> CUresult {
    entry("cudart interface entry 1 (load fatbinary)", || {
        // SAFETY: `wrapper` is nvcc's fatbinary wrapper, which read_image follows and sizes.
        code(unsafe { crate::manual::module::cuModuleLoadData(module, wrapper) })
    })
}

/// Entry 2: retains the primary context of `dev` and returns it (ZLUDA:
/// `cudart_interface_fn2`).
unsafe extern "C" fn cudart_primary_ctx(pctx: *mut *mut c_void, dev: c_int) -> CUresult {
    entry("cudart interface entry 2 (primary context)", || {
        // SAFETY: CUcontext* out-parameter, passed on.
        code(unsafe { crate::manual::context::cuDevicePrimaryCtxRetain(pctx, dev) })
    })
}

/// Entry 6: as entry 1, with three more arguments whose meaning is unknown (ZLUDA:
/// `get_module_from_cubin_ext1`; they are NULL, NULL, 0 in the calls it has seen). They are
/// ignored here.
unsafe extern "C" fn cudart_load_fatbin_ext1(
    module: *mut *mut c_void,
    wrapper: *const c_void,
    _arg3: *mut c_void,
    _arg4: *mut c_void,
    _arg5: c_uint,
) -> CUresult {
    entry("cudart interface entry 6 (load fatbinary)", || {
        // SAFETY: as entry 1.
        code(unsafe { crate::manual::module::cuModuleLoadData(module, wrapper) })
    })
}

/// Entry 7: takes one word and returns nothing; a no-op is enough (ZLUDA:
/// `cudart_interface_fn7`).
unsafe extern "C" fn cudart_entry7(_arg: usize) {}

/// Entry 8: loads a fatbinary given by its header (magic 0xBA55ED50) rather than by nvcc's
/// wrapper; the module comes second (ZLUDA: `get_module_from_cubin_ext2`). The three trailing
/// arguments are ignored, as in entry 6.
unsafe extern "C" fn cudart_load_fatbin_ext2(
    fatbin: *const c_void,
    module: *mut *mut c_void,
    _arg3: *mut c_void,
    _arg4: *mut c_void,
    _arg5: c_uint,
) -> CUresult {
    entry("cudart interface entry 8 (load fatbinary)", || {
        // SAFETY: a fatbinary header, which read_image sizes.
        code(unsafe { crate::manual::module::cuModuleLoadData(module, fatbin) })
    })
}

/// Entry 12 (libcudart 13): in the real driver it loads the JIT compilers (PTX compiler,
/// libNVVM); nothing to load here (ZLUDA: `load_compilers`).
unsafe extern "C" fn cudart_load_compilers() -> CUresult {
    cuda::CUDA_SUCCESS
}

static CUDART_TABLE: Table<13> = Table([
    size_of_table(13),
    cudart_load_fatbin as *const c_void,
    cudart_primary_ctx as *const c_void,
    NULL,
    NULL,
    NULL,
    cudart_load_fatbin_ext1 as *const c_void,
    cudart_entry7 as *const c_void,
    cudart_load_fatbin_ext2 as *const c_void,
    NULL,
    NULL,
    NULL,
    cudart_load_compilers as *const c_void,
]);

// ---- {42d85a81-…} tools TLS

/// Only its size is read by libcudart (ZLUDA: `TOOLS_TLS[4]`, entry 0 only).
static TOOLS_TLS_TABLE: Table<4> = Table([size_of_table(4), NULL, NULL, NULL]);

// ---- {a094798c-…} tools runtime callback hooks

/// A zeroed buffer libcudart may write into (what it keeps there is not known).
struct Scratch<const N: usize>(UnsafeCell<[u64; N]>);
// SAFETY: the shim never reads or writes these buffers; only libcudart does, through the
// pointer it is given.
unsafe impl<const N: usize> Sync for Scratch<N> {}

static HOOKS_BUFFER_1: Scratch<512> = Scratch(UnsafeCell::new([0; 512]));
static HOOKS_BUFFER_2: Scratch<8> = Scratch(UnsafeCell::new([0; 8]));

/// Entries 2 and 6: hand out a buffer and its size. ZLUDA answers sizes 1024 and 14 with
/// buffers of at least that many 32-bit words; the same sizes are given here, over buffers of
/// 4096 and 64 bytes, so either reading of the size (bytes or words) stays inside them.
unsafe extern "C" fn hooks_buffer_1(ptr: *mut *mut c_void, size: *mut usize) {
    // SAFETY: void** and size_t* out-parameters.
    unsafe {
        ffi::write_opt(ptr, HOOKS_BUFFER_1.0.get() as *mut c_void);
        ffi::write_opt(size, 1024);
    }
}

unsafe extern "C" fn hooks_buffer_2(ptr: *mut *mut c_void, size: *mut usize) {
    // SAFETY: as above.
    unsafe {
        ffi::write_opt(ptr, HOOKS_BUFFER_2.0.get() as *mut c_void);
        ffi::write_opt(size, 14);
    }
}

static TOOLS_HOOKS_TABLE: Table<7> =
    Table([size_of_table(7), NULL, hooks_buffer_1 as *const c_void, NULL, NULL, NULL, hooks_buffer_2 as *const c_void]);

// ---- {c693336e-…} context-local storage

/// `void (*)(CUcontext, void *key, void *value)`: called when the context goes away
/// ([`destroy_context_storage`]).
type ClsDestructor = Option<unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_void)>;

struct ClsValue {
    value: usize,
    destructor: ClsDestructor,
}

/// A context goes away (cuCtxDestroy, the last release or a reset of a primary context): its
/// stored values are forgotten and their destructors run, as the driver runs them, while the
/// context is still valid. No lock is held during the calls (a destructor may call back).
pub fn destroy_context_storage(ctx: u64) {
    let gone: Vec<(usize, ClsValue)> = {
        let mut cls = CLS.lock().unwrap_or_else(|p| p.into_inner());
        let map = cls.get_or_insert_with(HashMap::new);
        let keys: Vec<(u64, usize)> = map.keys().filter(|(c, _)| *c == ctx).copied().collect();
        keys.into_iter().filter_map(|k| map.remove(&k).map(|v| (k.1, v))).collect()
    };
    for (key, v) in gone {
        if let Some(destructor) = v.destructor {
            // SAFETY: a destructor libcudart registered with `put`, called once with the
            // context, key and value it was registered for, as the driver calls it.
            unsafe { destructor(ctx as *mut c_void, key as *mut c_void, v.value as *mut c_void) };
        }
    }
}

/// (context, key) -> value. libcudart keeps its per-context state here and reads it on every
/// runtime call.
static CLS: Mutex<Option<HashMap<(u64, usize), ClsValue>>> = Mutex::new(None);

fn cls_context(ctx: *mut c_void) -> Result<u64, CuError> {
    client::get()?;
    let ctx = if ctx.is_null() { context::current().0 } else { ctx as u64 };
    if ctx == 0 {
        Err(CuError::INVALID_CONTEXT)
    } else {
        Ok(ctx)
    }
}

/// Entry 0: `put(ctx, key, value, destructor)`; a NULL context means the current one.
unsafe extern "C" fn cls_put(ctx: *mut c_void, key: *mut c_void, value: *mut c_void, destructor: ClsDestructor) -> CUresult {
    entry("context-local storage put", || {
        let ctx = cls_context(ctx)?;
        let mut cls = CLS.lock().unwrap_or_else(|p| p.into_inner());
        cls.get_or_insert_with(HashMap::new).insert((ctx, key as usize), ClsValue { value: value as usize, destructor });
        Ok(())
    })
}

/// Entry 1: `delete(ctx, key)`.
unsafe extern "C" fn cls_delete(ctx: *mut c_void, key: *mut c_void) -> CUresult {
    entry("context-local storage delete", || {
        let ctx = cls_context(ctx)?;
        let mut cls = CLS.lock().unwrap_or_else(|p| p.into_inner());
        cls.get_or_insert_with(HashMap::new).remove(&(ctx, key as usize));
        Ok(())
    })
}

/// Entry 2: `get(&value, ctx, key)`; a key never put is `CUDA_ERROR_INVALID_HANDLE`, which
/// libcudart takes as "no state for this context yet".
unsafe extern "C" fn cls_get(value: *mut *mut c_void, ctx: *mut c_void, key: *mut c_void) -> CUresult {
    entry("context-local storage get", || {
        let ctx = cls_context(ctx)?;
        let found = {
            let mut cls = CLS.lock().unwrap_or_else(|p| p.into_inner());
            cls.get_or_insert_with(HashMap::new).get(&(ctx, key as usize)).map(|v| v.value)
        };
        let found = found.ok_or(CuError::INVALID_HANDLE)?;
        // SAFETY: void** out-parameter.
        unsafe { ffi::write(value, found as *mut c_void) }
    })
}

/// No size entry in this one: entry 0 is already `put`.
static CLS_TABLE: Table<4> = Table([cls_put as *const c_void, cls_delete as *const c_void, cls_get as *const c_void, NULL]);

// ---- {263e8860-…} context checks

/// Entry 2: `check(ctx, u32 *result, const void **extra)`: checks bits of the context that are
/// never observably set; answers 0 (ZLUDA: `context_check`).
unsafe extern "C" fn context_check(_ctx: *mut c_void, result: *mut u32, _extra: *mut *const c_void) -> CUresult {
    // SAFETY: optional unsigned int* out-parameter.
    unsafe { ffi::write_opt(result, 0) };
    cuda::CUDA_SUCCESS
}

/// Entry 3: takes nothing and answers 0 (ZLUDA: `check_fn3`).
unsafe extern "C" fn context_check_3() -> u32 {
    0
}

static CONTEXT_CHECKS_TABLE: Table<4> = Table([size_of_table(4), NULL, context_check as *const c_void, context_check_3 as *const c_void]);

// ---- {d4082055-…} the integrity check

/// Entry 1: `check(version, unix_seconds, u64 result[2])`, called by libcudart 12 with versions
/// 12090 to 12092 (see [`integrity`]).
unsafe extern "C" fn integrity_check(version: c_uint, unix_seconds: u64, result: *mut [u64; 2]) -> CUresult {
    entry("integrity check", || {
        let mut driver_version: c_int = 0;
        // SAFETY: int* out-parameter on our own stack.
        code(unsafe { crate::manual::init::cuDriverGetVersion(&mut driver_version) })?;
        let devices = match client::initialized() {
            Some(c) => (0..c.devices.len() as c_int).map(device_ids).collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let inputs = integrity::Inputs {
            driver_version: driver_version as u32,
            version,
            process: std::process::id(),
            // SAFETY: pthread_self has no preconditions.
            thread: unsafe { libc::pthread_self() } as u32,
            cudart_table: CUDART_TABLE.as_ptr() as u64,
            integrity_table: INTEGRITY_TABLE.as_ptr() as u64,
            integrity_fn: INTEGRITY_TABLE.0[1] as u64,
            unix_seconds,
        };
        let answer = integrity::answer(&inputs, &devices);
        // SAFETY: unsigned long long[2] out-parameter.
        unsafe { ffi::write(result, answer) }
    })
}

fn device_ids(dev: c_int) -> Result<integrity::DeviceIds, CuError> {
    let c = client::get()?;
    let attribute = |a| crate::manual::device::attribute(dev, a);
    Ok(integrity::DeviceIds {
        uuid: c.device(dev)?.info.uuid,
        pci_domain: attribute(cuda::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?,
        pci_bus: attribute(cuda::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?,
        pci_device: attribute(cuda::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?,
    })
}

static INTEGRITY_TABLE: Table<3> = Table([size_of_table(3), integrity_check as *const c_void, NULL]);

// ---- {21318c60-…}

/// Every entry of the `{21318c60-…}` table: its layout is not publicly known, so each entry
/// is a function that ignores its arguments (harmless under the C calling convention whatever
/// they are), names itself once on stderr and fails with `CUDA_ERROR_NOT_SUPPORTED`. A caller
/// that only checks the table's presence goes on; one that calls an entry gets an error and
/// a line saying which entry it called, instead of a crash on NULL.
macro_rules! unknown_entries {
    ($($i:literal => $f:ident),*) => {
        $(
            unsafe extern "C" fn $f() -> CUresult {
                log_once(format!("cuwire: cuGetExportTable {{21318c60-…}} entry {} was called; it is not known, returning CUDA_ERROR_NOT_SUPPORTED", $i));
                cuda::CUDA_ERROR_NOT_SUPPORTED
            }
        )*
        static UNKNOWN_21318C60_TABLE: Table<16> = Table([size_of_table(16), $($f as *const c_void),*]);
    };
}

unknown_entries!(1 => u1, 2 => u2, 3 => u3, 4 => u4, 5 => u5, 6 => u6, 7 => u7, 8 => u8_, 9 => u9, 10 => u10, 11 => u11, 12 => u12,
    13 => u13, 14 => u14, 15 => u15);

fn log_once(line: String) {
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if seen.get_or_insert_with(HashSet::new).insert(line.clone()) {
        eprintln!("{line}");
    }
}

fn uuid_text(id: &Uuid) -> String {
    let h: Vec<String> = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("{{{}-{}-{}-{}-{}}}", h[0..4].concat(), h[4..6].concat(), h[6..8].concat(), h[8..10].concat(), h[10..16].concat())
}

/// The table for a UUID, if the shim provides one.
pub fn lookup(id: &Uuid) -> Option<*const c_void> {
    Some(match *id {
        CUDART_INTERFACE => CUDART_TABLE.as_ptr(),
        TOOLS_TLS => TOOLS_TLS_TABLE.as_ptr(),
        TOOLS_HOOKS => TOOLS_HOOKS_TABLE.as_ptr(),
        CONTEXT_LOCAL_STORAGE => CLS_TABLE.as_ptr(),
        CONTEXT_CHECKS => CONTEXT_CHECKS_TABLE.as_ptr(),
        INTEGRITY_CHECK => INTEGRITY_TABLE.as_ptr(),
        UNKNOWN_21318C60 => UNKNOWN_21318C60_TABLE.as_ptr(),
        _ => return None,
    })
}

/// `cuGetExportTable(&table, &uuid)`. Works before `cuInit`, as libcudart calls it then. A
/// UUID without a table gets a NULL table and `CUDA_ERROR_INVALID_VALUE`, as from the real
/// driver (and ZLUDA); it is named once on stderr, except the one libcudart is known to go on
/// without.
///
/// # Safety
/// `table` is null or valid for a pointer write; `id` is null or points to 16 readable bytes.
pub unsafe fn get_export_table(table: *mut *const c_void, id: *const Uuid) -> Result<(), CuError> {
    if table.is_null() || id.is_null() {
        return Err(CuError::INVALID_VALUE);
    }
    // SAFETY: CUuuid* argument (16 bytes).
    let id = unsafe { id.read_unaligned() };
    match lookup(&id) {
        Some(p) => {
            // SAFETY: const void** out-parameter.
            unsafe { ffi::write(table, p) }
        }
        None => {
            if id != OPTIONAL_F8CFF951 || crate::debug() {
                log_once(format!("cuwire: cuGetExportTable({}) is not provided; returning CUDA_ERROR_INVALID_VALUE", uuid_text(&id)));
            }
            // SAFETY: as above.
            unsafe { ffi::write(table, std::ptr::null())? };
            Err(CuError::INVALID_VALUE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_start_with_their_size() {
        for (id, entries) in
            [(CUDART_INTERFACE, 13), (TOOLS_TLS, 4), (TOOLS_HOOKS, 7), (CONTEXT_CHECKS, 4), (INTEGRITY_CHECK, 3), (UNKNOWN_21318C60, 16)]
        {
            let t = lookup(&id).expect("known table") as *const usize;
            // SAFETY: every table is a static array with at least one entry.
            assert_eq!(unsafe { *t }, entries * 8, "{}", uuid_text(&id));
        }
        assert!(lookup(&OPTIONAL_F8CFF951).is_none());
    }

    #[test]
    fn uuid_text_is_the_usual_form() {
        assert_eq!(uuid_text(&CUDART_INTERFACE), "{6bd5fb6c-5bf4-e74a-8987-d93912fd9df9}");
        assert_eq!(uuid_text(&UNKNOWN_21318C60), "{21318c60-9714-3248-8ca6-41ff7324c8f2}");
    }

    #[test]
    fn unknown_uuid_is_invalid_value_with_null_table() {
        let mut table: *const c_void = std::ptr::dangling();
        let id: Uuid = [0xee; 16];
        // SAFETY: valid pointers.
        assert_eq!(unsafe { get_export_table(&mut table, &id) }, Err(CuError::INVALID_VALUE));
        assert!(table.is_null());
        let mut table: *const c_void = std::ptr::null();
        // SAFETY: valid pointers.
        assert_eq!(unsafe { get_export_table(&mut table, &CUDART_INTERFACE) }, Ok(()));
        assert_eq!(table, CUDART_TABLE.as_ptr());
    }

    #[test]
    fn context_checks_answer_zero() {
        let mut r = 7u32;
        // SAFETY: valid out-parameter.
        assert_eq!(unsafe { context_check(std::ptr::null_mut(), &mut r, std::ptr::null_mut()) }, 0);
        assert_eq!(r, 0);
    }
}
