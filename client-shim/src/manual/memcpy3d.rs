//! 3-D copies (`cuMemcpy3D`, `cuMemcpy3DAsync`), on which the 2-D ones (`pitch.rs`) are built.
//!
//! A copy is `Depth` slices of `Height` rows of `WidthInBytes` bytes. On the host, rows are read
//! or written here, one by one; on the device, the rows travel as a [`Rows`] description and the
//! server walks them (merging rows that are contiguous into one backend copy), so a copy costs
//! a message per 4 MiB of packed rows, not one per row:
//!
//! - host to device: the rows are gathered into packed chunks, sent without waiting (the
//!   synchronous form waits for the last chunk, so it reports this copy's errors and earlier
//!   latched ones);
//! - device to host: packed chunks are requested a window at a time and scattered into the
//!   host rows; the asynchronous form also completes before returning, as the 1-D one does;
//! - device to device: one message per million rows, fire-and-forget unless synchronous;
//! - host to host: copied here.
//!
//! `CU_MEMORYTYPE_UNIFIED` addresses are resolved as `cuPointerGetAttribute` resolves them
//! (page-locked or registered host memory known here, else the tenant's device ranges on the
//! server, else pageable host memory). CUDA arrays (`CU_MEMORYTYPE_ARRAY`) are not supported:
//! `CUDA_ERROR_NOT_SUPPORTED`, named once on stderr.

use std::collections::VecDeque;

use super::*;
use crate::manual::memory::{dtoh, htod};
use crate::manual::pointer::{classify, Kind};
use crate::{client, export, ffi};
use bytes::Bytes;
use cuwire_protocol::limits::{COPY_CHUNK, MAX_COPY_ROWS};
use cuwire_protocol::{calls, CallKind, CuError, Reply, Request, Rows, Stream};

/// `CUDA_MEMCPY3D` (the 64-bit layout of cuda.h, `CUDA_MEMCPY3D_v2`).
#[repr(C)]
pub struct Memcpy3D {
    pub src_x_in_bytes: usize,
    pub src_y: usize,
    pub src_z: usize,
    pub src_lod: usize,
    pub src_memory_type: c_int,
    pub src_host: *const c_void,
    pub src_device: CUdeviceptr,
    pub src_array: Handle,
    pub reserved0: *mut c_void,
    pub src_pitch: usize,
    pub src_height: usize,
    pub dst_x_in_bytes: usize,
    pub dst_y: usize,
    pub dst_z: usize,
    pub dst_lod: usize,
    pub dst_memory_type: c_int,
    pub dst_host: *mut c_void,
    pub dst_device: CUdeviceptr,
    pub dst_array: Handle,
    pub reserved1: *mut c_void,
    pub dst_pitch: usize,
    pub dst_height: usize,
    pub width_in_bytes: usize,
    pub height: usize,
    pub depth: usize,
}

/// `CUmemorytype`.
pub const HOST: c_int = 1;
pub const DEVICE: c_int = 2;
pub const ARRAY: c_int = 3;
pub const UNIFIED: c_int = 4;

/// How many device-to-host chunks may be in flight at once.
const DTOH_WINDOW: usize = 8;

/// One side of a copy as the caller described it.
pub struct Side {
    pub memory_type: c_int,
    pub host: usize,
    pub device: CUdeviceptr,
    pub x: usize,
    pub y: usize,
    pub z: usize,
    pub pitch: usize,
    /// Rows per slice of the memory (`srcHeight` / `dstHeight`; unused when Depth is 1).
    pub height: usize,
}

/// The extent of a copy: `depth` slices of `height` rows of `width` bytes.
#[derive(Clone, Copy)]
pub struct Extent {
    pub width: usize,
    pub height: usize,
    pub depth: usize,
}

/// A side resolved to where its rows are: row `i` (counting slice after slice) starts at
/// `origin + (i / h) * slice_pitch + (i % h) * pitch`.
#[derive(Clone, Copy)]
struct Place {
    device: bool,
    origin: u64,
    pitch: u64,
    slice_pitch: u64,
}

impl Place {
    fn row(&self, i: usize, h: usize) -> u64 {
        // In range: checked in `place` for the last row, and rows only grow.
        self.origin + (i / h) as u64 * self.slice_pitch + (i % h) as u64 * self.pitch
    }

    /// The device rows `first .. first + count` of the copy.
    fn rows(&self, e: Extent, first: usize, count: usize) -> Rows {
        Rows {
            base: self.origin,
            width: e.width as u64,
            pitch: self.pitch,
            height: e.height as u64,
            slice_pitch: self.slice_pitch,
            first: first as u64,
            count: count as u64,
        }
    }

    /// A host row, for reading.
    ///
    /// # Safety
    /// The caller's copy description names readable host memory for every row.
    unsafe fn host_row<'a>(&self, i: usize, e: Extent) -> Result<&'a [u8], CuError> {
        // SAFETY: per the caller's contract.
        unsafe { ffi::slice(self.row(i, e.height) as usize as *const c_void, e.width) }
    }

    /// A host row, for writing.
    ///
    /// # Safety
    /// The caller's copy description names writable host memory for every row.
    unsafe fn host_row_mut<'a>(&self, i: usize, e: Extent) -> Result<&'a mut [u8], CuError> {
        // SAFETY: per the caller's contract.
        unsafe { ffi::slice_mut(self.row(i, e.height) as usize as *mut c_void, e.width) }
    }
}

/// Where a side's rows are, with the driver's checks on pitches and heights.
fn place(s: &Side, e: Extent, what: &'static str) -> Result<Place, CuError> {
    let bad = CuError::INVALID_VALUE;
    let device = match s.memory_type {
        HOST => false,
        DEVICE => true,
        UNIFIED => {
            let p = if s.device != 0 { s.device } else { s.host as u64 };
            match classify(p) {
                Ok(Kind::Device(..)) => true,
                Ok(Kind::Host(..)) | Err(CuError::INVALID_VALUE) => false,
                Err(e) => return Err(e),
            }
        }
        ARRAY => {
            crate::not_supported_detail(what, "CUDA arrays (CU_MEMORYTYPE_ARRAY)");
            return Err(CuError::NOT_SUPPORTED);
        }
        _ => return Err(bad),
    };
    let base = match (s.memory_type, device) {
        (UNIFIED, _) if s.device != 0 => s.device,
        (DEVICE, _) => s.device,
        _ => s.host as u64,
    };
    if base == 0 || (e.height > 1 && s.pitch < e.width) || (e.depth > 1 && s.height < e.height) {
        return Err(bad);
    }
    let pitch = s.pitch as u64;
    // With one slice the memory's height does not matter (it may be 0).
    let rows_per_slice = if e.depth > 1 { s.height } else { s.height.max(e.height) } as u64;
    let slice_pitch = rows_per_slice.checked_mul(pitch).ok_or(bad)?;
    let origin = (s.z as u64)
        .checked_mul(slice_pitch)
        .and_then(|o| o.checked_add((s.y as u64).checked_mul(pitch)?))
        .and_then(|o| o.checked_add(s.x as u64))
        .and_then(|o| o.checked_add(base))
        .ok_or(bad)?;
    let p = Place { device, origin, pitch, slice_pitch };
    // The end of the last row must be an address too.
    let last_slice = (e.depth as u64 - 1).checked_mul(slice_pitch).ok_or(bad)?;
    let last_row = (e.height as u64 - 1).checked_mul(pitch).ok_or(bad)?;
    origin.checked_add(last_slice).and_then(|o| o.checked_add(last_row)).and_then(|o| o.checked_add(e.width as u64)).ok_or(bad)?;
    Ok(p)
}

/// Copies `e` from `src` to `dst`. `sync`: the copy is complete (and earlier latched errors
/// reported) when this returns; otherwise copies to the device are only ordered on `stream`.
pub fn copy(src: &Side, dst: &Side, e: Extent, stream: Stream, sync: bool, what: &'static str) -> Result<(), CuError> {
    client::get()?;
    if e.width == 0 || e.height == 0 || e.depth == 0 {
        return Ok(());
    }
    let n = e.height.checked_mul(e.depth).ok_or(CuError::INVALID_VALUE)?;
    let (s, d) = (place(src, e, what)?, place(dst, e, what)?);
    // Whole rows per message: at most a chunk of bytes (at least one row) and MAX_COPY_ROWS.
    let per_chunk = (COPY_CHUNK / e.width).clamp(1, MAX_COPY_ROWS as usize);
    match (s.device, d.device) {
        (false, true) if e.width > COPY_CHUNK => {
            for i in 0..n {
                // SAFETY: the source rows are readable (driver API contract).
                let row = unsafe { s.host_row(i, e)? };
                htod(d.row(i, e.height), row, stream, sync && i + 1 == n)?;
            }
            Ok(())
        }
        (false, true) => {
            let c = client::get()?;
            let mut first = 0;
            while first < n {
                let count = per_chunk.min(n - first);
                let mut packed = Vec::with_capacity(count * e.width);
                for i in first..first + count {
                    // SAFETY: the source rows are readable (driver API contract).
                    packed.extend_from_slice(unsafe { s.host_row(i, e)? });
                }
                let last = first + count == n;
                let kind = if last && sync { CallKind::Barrier } else { CallKind::Async };
                let req = calls::MemcpyRowsHtoD::Req { dst: d.rows(e, first, count), stream };
                if let Some(t) = c.submit(kind, Request::MemcpyRowsHtoD(req), Bytes::from(packed))? {
                    t.wait()?;
                }
                first += count;
            }
            Ok(())
        }
        (true, false) if e.width > COPY_CHUNK => {
            for i in 0..n {
                // SAFETY: the destination rows are writable (driver API contract).
                let row = unsafe { d.host_row_mut(i, e)? };
                dtoh(row, s.row(i, e.height), stream)?;
            }
            Ok(())
        }
        (true, false) => rows_to_host(&s, &d, e, n, per_chunk, stream),
        (true, true) => {
            let c = client::get()?;
            let per_message = MAX_COPY_ROWS as usize;
            let mut first = 0;
            while first < n {
                let count = per_message.min(n - first);
                let last = first + count == n;
                let kind = if last && sync { CallKind::Barrier } else { CallKind::Async };
                let req = calls::MemcpyRowsDtoD::Req { dst: d.rows(e, first, count), src: s.rows(e, first, count), stream };
                if let Some(t) = c.submit(kind, Request::MemcpyRowsDtoD(req), Bytes::new())? {
                    t.wait()?;
                }
                first += count;
            }
            Ok(())
        }
        (false, false) => {
            let mut row = vec![0u8; e.width];
            for i in 0..n {
                // SAFETY: source rows readable, destination rows writable (driver API
                // contract); the row goes through a buffer, so overlap is harmless.
                unsafe {
                    row.copy_from_slice(s.host_row(i, e)?);
                    d.host_row_mut(i, e)?.copy_from_slice(&row);
                }
            }
            Ok(())
        }
    }
}

/// Device rows to host rows: packed chunks requested a window at a time, the first one a
/// barrier so earlier fire-and-forget errors surface here.
fn rows_to_host(s: &Place, d: &Place, e: Extent, n: usize, per_chunk: usize, stream: Stream) -> Result<(), CuError> {
    let c = client::get()?;
    let mut in_flight = VecDeque::new();
    let mut next = 0;
    let mut result = Ok(());
    loop {
        while result.is_ok() && in_flight.len() < DTOH_WINDOW && next < n {
            let count = per_chunk.min(n - next);
            let kind = if next == 0 { CallKind::Barrier } else { CallKind::Sync };
            let req = calls::MemcpyRowsDtoH::Req { src: s.rows(e, next, count), stream };
            match c.submit(kind, Request::MemcpyRowsDtoH(req), Bytes::new()) {
                Ok(Some(t)) => in_flight.push_back((t, next, count)),
                Ok(None) => unreachable!("a Sync call always has a ticket"),
                Err(err) => result = Err(err),
            }
            next += count;
        }
        // Keep draining after an error so that no reply is left unclaimed.
        let Some((ticket, first, count)) = in_flight.pop_front() else { break };
        match ticket.wait() {
            Ok((Reply::MemcpyRowsDtoH(_), data)) if data.len() == count * e.width => {
                if result.is_ok() {
                    for (k, packed) in data.chunks(e.width).enumerate() {
                        // SAFETY: the destination rows are writable (driver API contract).
                        match unsafe { d.host_row_mut(first + k, e) } {
                            Ok(row) => row.copy_from_slice(packed),
                            Err(err) => {
                                result = Err(err);
                                break;
                            }
                        }
                    }
                }
            }
            Ok(_) => result = result.and(Err(CuError::UNKNOWN)),
            Err(err) => result = result.and(Err(err)),
        }
    }
    result
}

fn sides(p: &Memcpy3D) -> Result<(Side, Side, Extent), CuError> {
    if !p.reserved0.is_null() || !p.reserved1.is_null() {
        return Err(CuError::INVALID_VALUE);
    }
    let src = Side {
        memory_type: p.src_memory_type,
        host: p.src_host as usize,
        device: p.src_device,
        x: p.src_x_in_bytes,
        y: p.src_y,
        z: p.src_z,
        pitch: p.src_pitch,
        height: p.src_height,
    };
    let dst = Side {
        memory_type: p.dst_memory_type,
        host: p.dst_host as usize,
        device: p.dst_device,
        x: p.dst_x_in_bytes,
        y: p.dst_y,
        z: p.dst_z,
        pitch: p.dst_pitch,
        height: p.dst_height,
    };
    Ok((src, dst, Extent { width: p.width_in_bytes, height: p.height, depth: p.depth }))
}

export! {
    fn cuMemcpy3D_v2 | cuMemcpy3D_v2_ptds (p: *const Memcpy3D) {
        if p.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: non-null CUDA_MEMCPY3D* (driver API contract).
        let (src, dst, e) = sides(unsafe { &*p })?;
        copy(&src, &dst, e, Stream::NULL, true, "cuMemcpy3D")
    }
}

export! {
    fn cuMemcpy3DAsync_v2 | cuMemcpy3DAsync_v2_ptsz (p: *const Memcpy3D, hstream: Handle) {
        if p.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: non-null CUDA_MEMCPY3D* (driver API contract).
        let (src, dst, e) = sides(unsafe { &*p })?;
        copy(&src, &dst, e, Stream(hstream as u64), false, "cuMemcpy3DAsync")
    }
}
