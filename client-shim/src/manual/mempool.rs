//! Stream-ordered allocation: `cuMemAllocAsync`, `cuMemFreeAsync` and memory pools.
//!
//! Pool handles are minted here (each device's default pool has a handle the server knows
//! too, [`MemPool::default_of`]). The server makes each allocation an ordinary allocation,
//! taken from the tenant's quota exactly as `cuMemAlloc` takes it (over quota:
//! `CUDA_ERROR_OUT_OF_MEMORY`), freed with the session, and ordered on the lane: the device
//! runs stream work in order, so an allocation is there before anything later on its stream,
//! and a free happens after everything earlier. `cuMemAllocAsync` waits for its reply (the
//! program uses the address at once); `cuMemFreeAsync` does not.
//!
//! A pool keeps no freed memory for reuse: what it reserves is what is in use, so
//! `cuMemPoolTrimTo` has nothing to give back and the release threshold is remembered
//! without effect. Pools shared between processes (`handleTypes`, export/import) and access
//! from other devices are not supported.

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;
use crate::{client, expect_reply, export, ffi};
use bytes::Bytes;
use cuwire_protocol::{calls, CallKind, CuError, MemPool, Request, Stream};

/// `CUmemPool_attribute` values (attributes 1..=3 are `int`, the rest `cuuint64_t`).
const ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: c_int = 3;
const ATTR_RELEASE_THRESHOLD: c_int = 4;
const ATTR_RESERVED_MEM_CURRENT: c_int = 5;
const ATTR_USED_MEM_CURRENT: c_int = 7;
const ATTR_USED_MEM_HIGH: c_int = 8;

const CU_MEM_ALLOCATION_TYPE_PINNED: c_int = 1;
const CU_MEM_LOCATION_TYPE_DEVICE: c_int = 1;
const CU_MEM_ACCESS_FLAGS_PROT_NONE: c_int = 0;
const CU_MEM_ACCESS_FLAGS_PROT_READWRITE: c_int = 3;

/// `CUmemPoolProps` of cuda.h 12.x.
#[repr(C)]
pub struct MemPoolProps {
    pub alloc_type: c_int,
    pub handle_types: c_int,
    pub location_type: c_int,
    pub location_id: c_int,
    pub win32_security_attributes: *mut c_void,
    pub max_size: usize,
    pub usage: u16,
    pub reserved: [u8; 54],
}

/// `CUmemLocation`.
#[repr(C)]
pub struct MemLocation {
    pub kind: c_int,
    pub id: c_int,
}

/// `CUmemAccessDesc`.
#[repr(C)]
pub struct MemAccessDesc {
    pub location: MemLocation,
    pub flags: c_int,
}

#[derive(Default)]
struct Pools {
    /// Pools created with cuMemPoolCreate and not destroyed: handle -> device.
    created: HashMap<u64, c_int>,
    /// The current pool of each device that has one set (cuDeviceSetMemPool).
    current: HashMap<c_int, u64>,
}

static POOLS: Mutex<Option<Pools>> = Mutex::new(None);

fn with_pools<R>(f: impl FnOnce(&mut Pools) -> R) -> R {
    f(POOLS.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(Pools::default))
}

/// The device of a pool this process may use.
fn pool_device(pool: Handle) -> Result<c_int, CuError> {
    let c = client::get()?;
    let pool = MemPool(pool as u64);
    if let Some(dev) = pool.default_device() {
        c.device(dev)?;
        return Ok(dev);
    }
    with_pools(|p| p.created.get(&pool.0).copied()).ok_or(CuError::INVALID_VALUE)
}

fn alloc(dptr: *mut CUdeviceptr, bytes: usize, pool: MemPool, stream: Stream) -> Result<(), CuError> {
    if dptr.is_null() || bytes == 0 {
        return Err(CuError::INVALID_VALUE);
    }
    let c = client::get()?;
    let req = calls::MemAllocAsync::Req { dptr: (), bytes: bytes as u64, pool, stream };
    let (reply, _) = c.call(CallKind::Sync, Request::MemAllocAsync(req), Bytes::new())?;
    let p = expect_reply!(reply, MemAllocAsync)?.dptr;
    // SAFETY: CUdeviceptr* out-parameter, checked non-null.
    unsafe { ffi::write(dptr, p) }
}

export! {
    fn cuMemAllocAsync | cuMemAllocAsync_ptsz (dptr: *mut CUdeviceptr, bytes: usize, hstream: Handle) {
        alloc(dptr, bytes, MemPool::NULL, Stream(hstream as u64))
    }
}

export! {
    fn cuMemAllocFromPoolAsync | cuMemAllocFromPoolAsync_ptsz (dptr: *mut CUdeviceptr, bytes: usize, pool: Handle, hstream: Handle) {
        pool_device(pool)?;
        alloc(dptr, bytes, MemPool(pool as u64), Stream(hstream as u64))
    }
}

export! {
    fn cuMemFreeAsync | cuMemFreeAsync_ptsz (dptr: CUdeviceptr, hstream: Handle) {
        let c = client::get()?;
        c.send(Request::MemFreeAsync(calls::MemFreeAsync::Req { dptr, stream: Stream(hstream as u64) }), Bytes::new())
    }
}

export! {
    fn cuDeviceGetDefaultMemPool(pool: *mut Handle, dev: c_int) {
        client::get()?.device(dev)?;
        // SAFETY: CUmemoryPool* out-parameter.
        unsafe { ffi::write(pool, MemPool::default_of(dev).0 as Handle) }
    }
}

export! {
    fn cuDeviceGetMemPool(pool: *mut Handle, dev: c_int) {
        client::get()?.device(dev)?;
        let current = with_pools(|p| p.current.get(&dev).copied()).unwrap_or(MemPool::default_of(dev).0);
        // SAFETY: CUmemoryPool* out-parameter.
        unsafe { ffi::write(pool, current as Handle) }
    }
}

export! {
    fn cuDeviceSetMemPool(dev: c_int, pool: Handle) {
        let c = client::get()?;
        c.device(dev)?;
        if pool_device(pool)? != dev {
            return Err(CuError::INVALID_VALUE);
        }
        with_pools(|p| p.current.insert(dev, pool as u64));
        c.send(Request::DeviceSetMemPool(calls::DeviceSetMemPool::Req { dev, pool: MemPool(pool as u64) }), Bytes::new())
    }
}

export! {
    /// Pinned device memory only; pools exportable to other processes (`handleTypes`) and
    /// special usages are not supported.
    fn cuMemPoolCreate(pool: *mut Handle, props: *const MemPoolProps) {
        if pool.is_null() || props.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        let c = client::get()?;
        // SAFETY: non-null CUmemPoolProps* (driver API contract).
        let props = unsafe { &*props };
        if props.alloc_type != CU_MEM_ALLOCATION_TYPE_PINNED || props.location_type != CU_MEM_LOCATION_TYPE_DEVICE {
            return Err(CuError::INVALID_VALUE);
        }
        c.device(props.location_id)?;
        if props.handle_types != 0 || props.usage != 0 {
            crate::not_supported_detail("cuMemPoolCreate", "pools with shareable handles or special usages");
            return Err(CuError::NOT_SUPPORTED);
        }
        let handle = c.mint();
        let dev = props.location_id;
        c.send(Request::MemPoolCreate(calls::MemPoolCreate::Req { pool: MemPool(handle), dev, max_size: props.max_size as u64 }), Bytes::new())?;
        with_pools(|p| p.created.insert(handle, dev));
        // SAFETY: CUmemoryPool* out-parameter, checked non-null.
        unsafe { ffi::write(pool, handle as Handle) }
    }
}

export! {
    /// A device's default pool cannot be destroyed. Allocations still outstanding stay valid;
    /// a destroyed current pool gives way to the default one.
    fn cuMemPoolDestroy(pool: Handle) {
        let c = client::get()?;
        let handle = pool as u64;
        let dev = with_pools(|p| {
            let dev = p.created.remove(&handle)?;
            if p.current.get(&dev) == Some(&handle) {
                p.current.remove(&dev);
            }
            Some(dev)
        });
        if dev.is_none() {
            return Err(CuError::INVALID_VALUE);
        }
        c.send(Request::MemPoolDestroy(calls::MemPoolDestroy::Req { pool: MemPool(handle) }), Bytes::new())
    }
}

export! {
    fn cuMemPoolSetAttribute(pool: Handle, attr: c_int, value: *mut c_void) {
        let c = client::get()?;
        pool_device(pool)?;
        if value.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: `value` points to an int (attributes 1..=3) or a cuuint64_t (driver API contract).
        let v = unsafe {
            match attr {
                1..=ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES => (*(value as *const c_int) != 0) as u64,
                ATTR_RELEASE_THRESHOLD..=ATTR_USED_MEM_HIGH => *(value as *const u64),
                _ => return Err(CuError::INVALID_VALUE),
            }
        };
        // The current figures are read-only; the high-water marks can only be reset (to 0).
        let read_only = matches!(attr, ATTR_RESERVED_MEM_CURRENT | ATTR_USED_MEM_CURRENT);
        if read_only || (attr > ATTR_RELEASE_THRESHOLD && v != 0) {
            return Err(CuError::INVALID_VALUE);
        }
        let req = calls::MemPoolSetAttribute::Req { pool: MemPool(pool as u64), attr, value: v };
        c.send(Request::MemPoolSetAttribute(req), Bytes::new())
    }
}

export! {
    fn cuMemPoolGetAttribute(pool: Handle, attr: c_int, value: *mut c_void) {
        let c = client::get()?;
        pool_device(pool)?;
        if value.is_null() || !(1..=ATTR_USED_MEM_HIGH).contains(&attr) {
            return Err(CuError::INVALID_VALUE);
        }
        let req = calls::MemPoolGetAttribute::Req { value: (), pool: MemPool(pool as u64), attr };
        let (reply, _) = c.call(CallKind::Sync, Request::MemPoolGetAttribute(req), Bytes::new())?;
        let v = expect_reply!(reply, MemPoolGetAttribute)?.value;
        // SAFETY: `value` points to an int (attributes 1..=3) or a cuuint64_t (driver API contract).
        unsafe {
            if attr <= ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES {
                ffi::write(value as *mut c_int, v as c_int)
            } else {
                ffi::write(value as *mut u64, v)
            }
        }
    }
}

export! {
    /// Nothing to trim: a pool here holds no memory beyond its live allocations.
    fn cuMemPoolTrimTo(pool: Handle, _min_bytes_to_keep: usize) {
        pool_device(pool).map(|_| ())
    }
}

export! {
    /// A pool's own device may read and write its memory; no other device may.
    fn cuMemPoolGetAccess(flags: *mut c_int, pool: Handle, location: *mut MemLocation) {
        let dev = pool_device(pool)?;
        if location.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: non-null CUmemLocation* (driver API contract).
        let loc = unsafe { &*location };
        if loc.kind != CU_MEM_LOCATION_TYPE_DEVICE {
            return Err(CuError::INVALID_VALUE);
        }
        client::get()?.device(loc.id)?;
        let f = if loc.id == dev { CU_MEM_ACCESS_FLAGS_PROT_READWRITE } else { CU_MEM_ACCESS_FLAGS_PROT_NONE };
        // SAFETY: CUmemAccess_flags* out-parameter.
        unsafe { ffi::write(flags, f) }
    }
}

export! {
    /// Granting the pool's own device read-write access (what it has) succeeds; access for
    /// other devices (peer access) is not supported.
    fn cuMemPoolSetAccess(pool: Handle, map: *const MemAccessDesc, count: usize) {
        let dev = pool_device(pool)?;
        if count > 0 && map.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        for i in 0..count {
            // SAFETY: `map` holds `count` descriptors (driver API contract).
            let d = unsafe { &*map.add(i) };
            if d.location.kind != CU_MEM_LOCATION_TYPE_DEVICE {
                return Err(CuError::INVALID_VALUE);
            }
            client::get()?.device(d.location.id)?;
            if d.location.id != dev || d.flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE {
                crate::not_supported_detail("cuMemPoolSetAccess", "access from another device, or less than read-write for its own");
                return Err(CuError::NOT_SUPPORTED);
            }
        }
        Ok(())
    }
}
