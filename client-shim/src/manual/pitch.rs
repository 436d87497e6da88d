//! Pitched allocations and 2-D copies, built on the 1-D paths: a 2-D copy whose rows are
//! contiguous on the device side travels as one copy; otherwise row by row (each row a
//! fire-and-forget chunk, the last one waited for when the copy is synchronous).

use super::*;
use crate::manual::memory::{dtod, dtoh, htod};
use crate::{auto, client, export, ffi};
use cuwire_protocol::{cuda, CuError, Stream};

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

const HOST: c_int = 1;
const DEVICE: c_int = 2;

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

fn copy_2d(c: &Memcpy2D, stream: Stream, sync: bool) -> Result<(), CuError> {
    client::get()?;
    let (w, h) = (c.width_in_bytes, c.height);
    if w == 0 || h == 0 {
        return Ok(());
    }
    if (h > 1 && (c.src_pitch < w || c.dst_pitch < w)) || c.src_memory_type > 2 || c.dst_memory_type > 2 {
        // Arrays and unified addresses are not supported; pitches narrower than a row are wrong.
        return Err(if c.src_memory_type > 2 || c.dst_memory_type > 2 { CuError::NOT_SUPPORTED } else { CuError::INVALID_VALUE });
    }
    let src_row = |r: usize| (c.src_y + r) * c.src_pitch + c.src_x_in_bytes;
    let dst_row = |r: usize| (c.dst_y + r) * c.dst_pitch + c.dst_x_in_bytes;
    match (c.src_memory_type, c.dst_memory_type) {
        (HOST, DEVICE) => {
            // Gather the rows; one copy when the device rows are contiguous.
            let mut rows = Vec::with_capacity(w * h);
            for r in 0..h {
                // SAFETY: the caller's source rows are readable (driver API contract).
                rows.extend_from_slice(unsafe { ffi::slice((c.src_host as *const u8).wrapping_add(src_row(r)) as *const c_void, w)? });
            }
            if c.dst_pitch == w || h == 1 {
                return htod(c.dst_device + dst_row(0) as u64, &rows, stream, sync);
            }
            for r in 0..h {
                htod(c.dst_device + dst_row(r) as u64, &rows[r * w..(r + 1) * w], stream, sync && r + 1 == h)?;
            }
            Ok(())
        }
        (DEVICE, HOST) => {
            let mut rows = vec![0u8; w * h];
            if c.src_pitch == w || h == 1 {
                dtoh(&mut rows, c.src_device + src_row(0) as u64, stream)?;
            } else {
                for r in 0..h {
                    dtoh(&mut rows[r * w..(r + 1) * w], c.src_device + src_row(r) as u64, stream)?;
                }
            }
            for r in 0..h {
                // SAFETY: the caller's destination rows are writable (driver API contract).
                let out = unsafe { ffi::slice_mut((c.dst_host as *mut u8).wrapping_add(dst_row(r)) as *mut c_void, w)? };
                out.copy_from_slice(&rows[r * w..(r + 1) * w]);
            }
            Ok(())
        }
        (DEVICE, DEVICE) => {
            if c.src_pitch == w && c.dst_pitch == w {
                return dtod(c.dst_device + dst_row(0) as u64, c.src_device + src_row(0) as u64, w * h, stream, sync);
            }
            for r in 0..h {
                dtod(c.dst_device + dst_row(r) as u64, c.src_device + src_row(r) as u64, w, stream, sync && r + 1 == h)?;
            }
            Ok(())
        }
        (HOST, HOST) => {
            for r in 0..h {
                // SAFETY: both rows are valid for `w` bytes (driver API contract); they may not overlap.
                unsafe {
                    let from = ffi::slice((c.src_host as *const u8).wrapping_add(src_row(r)) as *const c_void, w)?.to_vec();
                    ffi::slice_mut((c.dst_host as *mut u8).wrapping_add(dst_row(r)) as *mut c_void, w)?.copy_from_slice(&from);
                }
            }
            Ok(())
        }
        _ => Err(CuError(cuda::CUDA_ERROR_INVALID_VALUE)),
    }
}

export! {
    fn cuMemcpy2D_v2 | cuMemcpy2D_v2_ptds | cuMemcpy2DUnaligned_v2 | cuMemcpy2DUnaligned_v2_ptds (p: *const Memcpy2D) {
        if p.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: non-null CUDA_MEMCPY2D* (driver API contract).
        copy_2d(unsafe { &*p }, Stream::NULL, true)
    }
}

export! {
    fn cuMemcpy2DAsync_v2 | cuMemcpy2DAsync_v2_ptsz (p: *const Memcpy2D, hstream: Handle) {
        if p.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: non-null CUDA_MEMCPY2D* (driver API contract).
        copy_2d(unsafe { &*p }, Stream(hstream as u64), false)
    }
}
