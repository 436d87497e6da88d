//! `cuPointerGetAttribute(s)`: what a pointer is. Host memory the shim knows (page-locked or
//! registered) is answered here; anything else is looked up among the tenant's device ranges
//! on the server (one round trip, the same question `cuMemGetAddressRange` asks).

use super::*;
use crate::{auto, client, context, export, ffi};
use cuwire_protocol::{cuda, CuError};

pub(crate) enum Kind {
    /// Page-locked or registered host memory: (range start, size).
    Host(usize, usize),
    /// Device memory of the tenant: (range start, size).
    Device(u64, u64),
}

pub(crate) fn classify(p: u64) -> Result<Kind, CuError> {
    let c = client::get()?;
    {
        let objects = c.objects();
        for map in [&objects.host_allocs, &objects.host_registered] {
            if let Some((b, s)) = map.range(..=p as usize).next_back() {
                if (p as usize) < b + s {
                    return Ok(Kind::Host(*b, *s));
                }
            }
        }
    }
    let (mut base, mut size) = (0u64, 0u64);
    // SAFETY: out-parameters on our own stack.
    match unsafe { auto::cuMemGetAddressRange_v2(&mut base, &mut size, p) } {
        cuda::CUDA_SUCCESS => Ok(Kind::Device(base, size)),
        // Not a pointer the driver knows: that is the answer the driver gives.
        cuda::CUDA_ERROR_NOT_FOUND | cuda::CUDA_ERROR_INVALID_VALUE => Err(CuError::INVALID_VALUE),
        e => Err(CuError(e)),
    }
}

/// Writes one attribute's value to `data`.
///
/// # Safety
/// `data` points to storage of the attribute's type (driver API contract).
unsafe fn attribute(data: *mut c_void, attr: c_int, p: u64, kind: &Kind) -> Result<(), CuError> {
    let c = client::get()?;
    let ctx = context::current();
    // SAFETY (all writes below): `data` has the type the attribute defines.
    unsafe {
        match (attr, kind) {
            (cuda::CU_POINTER_ATTRIBUTE_CONTEXT, Kind::Device(..)) => ffi::write(data as *mut Handle, ctx.0 as Handle),
            (cuda::CU_POINTER_ATTRIBUTE_CONTEXT, Kind::Host(..)) => ffi::write(data as *mut Handle, std::ptr::null_mut()),
            (cuda::CU_POINTER_ATTRIBUTE_MEMORY_TYPE, Kind::Host(..)) => ffi::write(data as *mut c_uint, 1), // CU_MEMORYTYPE_HOST
            (cuda::CU_POINTER_ATTRIBUTE_MEMORY_TYPE, Kind::Device(..)) => ffi::write(data as *mut c_uint, 2), // CU_MEMORYTYPE_DEVICE
            (cuda::CU_POINTER_ATTRIBUTE_DEVICE_POINTER, Kind::Device(..)) => ffi::write(data as *mut u64, p),
            (cuda::CU_POINTER_ATTRIBUTE_HOST_POINTER, Kind::Host(..)) => ffi::write(data as *mut u64, p),
            (cuda::CU_POINTER_ATTRIBUTE_DEVICE_POINTER, Kind::Host(..)) | (cuda::CU_POINTER_ATTRIBUTE_HOST_POINTER, Kind::Device(..)) => {
                Err(CuError::INVALID_VALUE)
            }
            (cuda::CU_POINTER_ATTRIBUTE_SYNC_MEMOPS, _) => ffi::write(data as *mut c_uint, 1),
            (cuda::CU_POINTER_ATTRIBUTE_BUFFER_ID, Kind::Device(b, _)) => ffi::write(data as *mut u64, *b),
            (cuda::CU_POINTER_ATTRIBUTE_BUFFER_ID, Kind::Host(b, _)) => ffi::write(data as *mut u64, *b as u64),
            (cuda::CU_POINTER_ATTRIBUTE_IS_MANAGED, _) | (cuda::CU_POINTER_ATTRIBUTE_MAPPED, Kind::Device(..)) => {
                ffi::write(data as *mut c_uint, 0)
            }
            (cuda::CU_POINTER_ATTRIBUTE_MAPPED, Kind::Host(..)) => ffi::write(data as *mut c_uint, 0),
            (cuda::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, Kind::Device(..)) => ffi::write(data as *mut c_int, c.current_device()?),
            (cuda::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, Kind::Device(b, _)) => ffi::write(data as *mut u64, *b),
            (cuda::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, Kind::Host(b, _)) => ffi::write(data as *mut u64, *b as u64),
            (cuda::CU_POINTER_ATTRIBUTE_RANGE_SIZE, Kind::Device(_, s)) => ffi::write(data as *mut usize, *s as usize),
            (cuda::CU_POINTER_ATTRIBUTE_RANGE_SIZE, Kind::Host(_, s)) => ffi::write(data as *mut usize, *s),
            _ => Err(CuError::NOT_SUPPORTED),
        }
    }
}

/// Whether an attribute's value is pointer-sized (else a 32-bit integer).
fn wide(attr: c_int) -> bool {
    matches!(
        attr,
        cuda::CU_POINTER_ATTRIBUTE_CONTEXT
            | cuda::CU_POINTER_ATTRIBUTE_DEVICE_POINTER
            | cuda::CU_POINTER_ATTRIBUTE_HOST_POINTER
            | cuda::CU_POINTER_ATTRIBUTE_BUFFER_ID
            | cuda::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR
            | cuda::CU_POINTER_ATTRIBUTE_RANGE_SIZE
    )
}

export! {
    fn cuPointerGetAttribute(data: *mut c_void, attr: c_int, p: CUdeviceptr) {
        if data.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        let kind = classify(p)?;
        // SAFETY: `data` has the attribute's type (driver API contract).
        unsafe { attribute(data, attr, p, &kind) }
    }
}

export! {
    /// As the driver does for a pointer it does not know, every attribute then reads as zero
    /// (memory type 0, context NULL) and the call succeeds.
    fn cuPointerGetAttributes(n: c_uint, attrs: *const c_int, data: *mut *mut c_void, p: CUdeviceptr) {
        if (n > 0 && (attrs.is_null() || data.is_null())) || n > 64 {
            return Err(CuError::INVALID_VALUE);
        }
        let kind = classify(p);
        for i in 0..n as usize {
            // SAFETY: `attrs` and `data` hold `n` entries (driver API contract).
            let (attr, slot) = unsafe { (*attrs.add(i), *data.add(i)) };
            if slot.is_null() {
                continue;
            }
            match &kind {
                // SAFETY: each slot has its attribute's type.
                Ok(k) => match unsafe { attribute(slot, attr, p, k) } {
                    Ok(()) | Err(CuError::INVALID_VALUE) => {}
                    Err(e) => return Err(e),
                },
                // SAFETY: the slot has its attribute's type: pointer-sized or a 32-bit integer.
                Err(_) => unsafe {
                    if wide(attr) {
                        ffi::write(slot as *mut u64, 0)?
                    } else {
                        ffi::write(slot as *mut c_uint, 0)?
                    }
                },
            }
        }
        Ok(())
    }
}
