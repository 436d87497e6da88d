//! Pitched allocations and 2-D copies, built on the 3-D copies of `memcpy3d.rs` (a 2-D copy is
//! one slice): rows travel packed, a message per 4 MiB, whatever their pitch.

use super::*;
use crate::manual::memcpy3d;
use crate::{auto, export, ffi};
use cuwire_protocol::{CuError, Stream};

/// `CUDA_MEMCPY2D` (the 64-bit layout of cuda.h).
#[repr(C)]
pub struct Memcpy2D {
    pub src_x_in_bytes: usize,
    pub src_y: usize,
    pub src_memory_type: c_int,
    pub src_host: *const c_void,
    pub src_device: CUdeviceptr,
    pub src_array: Handle,
    pub src_pitch: usize,
    pub dst_x_in_bytes: usize,
    pub dst_y: usize,
    pub dst_memory_type: c_int,
    pub dst_host: *mut c_void,
    pub dst_device: CUdeviceptr,
    pub dst_array: Handle,
    pub dst_pitch: usize,
    pub width_in_bytes: usize,
    pub height: usize,
}

/// The pitch the driver would choose: rows aligned to 512 bytes.
const PITCH_ALIGN: usize = 512;

export! {
    fn cuMemAllocPitch_v2(dptr: *mut CUdeviceptr, pitch: *mut usize, width: usize, height: usize, elem: c_uint) {
        if dptr.is_null() || pitch.is_null() || width == 0 || height == 0 || !matches!(elem, 4 | 8 | 16) {
            return Err(CuError::INVALID_VALUE);
        }
        let p = width.div_ceil(PITCH_ALIGN) * PITCH_ALIGN;
        let bytes = p.checked_mul(height).ok_or(CuError::INVALID_VALUE)?;
        // SAFETY: the generated export writes the new pointer to `dptr`, checked non-null above.
        let code = unsafe { auto::cuMemAlloc_v2(dptr, bytes as u64) };
        if code != 0 {
            return Err(CuError(code));
        }
        // SAFETY: size_t* out-parameter, checked non-null above.
        unsafe { ffi::write(pitch, p) }
    }
}

/// A 2-D copy is a 3-D copy of one slice (see `memcpy3d.rs`): whole rows travel packed, a
/// message per 4 MiB rather than one per row.
fn copy_2d(c: &Memcpy2D, stream: Stream, sync: bool, what: &'static str) -> Result<(), CuError> {
    let side = |memory_type, host: usize, device, x, y, pitch| memcpy3d::Side { memory_type, host, device, x, y, z: 0, pitch, height: 0 };
    let src = side(c.src_memory_type, c.src_host as usize, c.src_device, c.src_x_in_bytes, c.src_y, c.src_pitch);
    let dst = side(c.dst_memory_type, c.dst_host as usize, c.dst_device, c.dst_x_in_bytes, c.dst_y, c.dst_pitch);
    memcpy3d::copy(&src, &dst, memcpy3d::Extent { width: c.width_in_bytes, height: c.height, depth: 1 }, stream, sync, what)
}

export! {
    fn cuMemcpy2D_v2 | cuMemcpy2D_v2_ptds | cuMemcpy2DUnaligned_v2 | cuMemcpy2DUnaligned_v2_ptds (p: *const Memcpy2D) {
        if p.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: non-null CUDA_MEMCPY2D* (driver API contract).
        copy_2d(unsafe { &*p }, Stream::NULL, true, "cuMemcpy2D")
    }
}

export! {
    fn cuMemcpy2DAsync_v2 | cuMemcpy2DAsync_v2_ptsz (p: *const Memcpy2D, hstream: Handle) {
        if p.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: non-null CUDA_MEMCPY2D* (driver API contract).
        copy_2d(unsafe { &*p }, Stream(hstream as u64), false, "cuMemcpy2DAsync")
    }
}
