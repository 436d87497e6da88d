//! Memory: page-locked host memory lives in this process; copies and memsets travel on the
//! lane. Host-to-device data is chunked and sent without waiting (the synchronous form waits for
//! its last chunk only): lent to quinn in place by a synchronous copy and by an asynchronous one
//! from page-locked memory (see `loan`), staged by an asynchronous one from pageable memory (see
//! `staging`); device-to-host chunks are all requested at once and land straight
//! in the destination (the server's reply budget bounds what it holds meanwhile).

use super::*;
use crate::client;
use crate::transport::{HostDst, HostWrites};
use crate::{export, ffi};
use crate::{loan, staging};
use bytes::Bytes;
use cuwire_protocol::limits::COPY_CHUNK;
use cuwire_protocol::{calls, CallKind, CuError, Request, Stream};
use std::sync::Arc;

/// Sends host bytes to the device, chunked. `sync` makes the call wait for the last chunk, so
/// its errors (and earlier latched ones) are reported by this call.
pub fn htod(dst: CUdeviceptr, data: &[u8], stream: Stream, sync: bool) -> Result<(), CuError> {
    let c = client::get()?;
    if data.is_empty() {
        return Ok(());
    }
    if data.len() >= staging::SMALLEST {
        if sync {
            // The call holds the caller's buffer until the copy is done: quinn reads it in place.
            return loan::scope(|scope| send_chunks(c, dst, data, stream, sync, |chunk| scope.lend(chunk)));
        }
        if page_locked(&c.objects(), data.as_ptr() as usize, data.len()) {
            // As the driver's DMA: read in place after the call returns.
            // SAFETY: `data` lies in one page-locked allocation or registered range of this
            // process, which is freed or unregistered only through cuMemFreeHost /
            // cuMemHostUnregister, and those wait for the loans made before them.
            return send_chunks(c, dst, data, stream, sync, |chunk| unsafe { loan::lend_pinned(chunk) });
        }
    }
    // An asynchronous copy from pageable memory returns before its bytes are sent: they are
    // copied first.
    send_chunks(c, dst, data, stream, sync, |chunk| staging::STAGING.stage(chunk, || c.lane.transport().is_dead()))
}

fn send_chunks<'d>(
    c: &client::Client,
    dst: CUdeviceptr,
    data: &'d [u8],
    stream: Stream,
    sync: bool,
    payload: impl Fn(&'d [u8]) -> Bytes,
) -> Result<(), CuError> {
    let chunks = data.len().div_ceil(COPY_CHUNK);
    for (i, chunk) in data.chunks(COPY_CHUNK).enumerate() {
        let last = i + 1 == chunks;
        let kind = if last && sync { CallKind::Barrier } else { CallKind::Async };
        let req = calls::MemcpyHtoD::Req { dst: dst + (i * COPY_CHUNK) as u64, stream };
        if let Some(ticket) = c.submit(kind, Request::MemcpyHtoD(req), payload(chunk))? {
            ticket.wait()?;
        }
    }
    Ok(())
}

/// Fetches device bytes into host memory: every chunk is asked for at once, and the I/O thread
/// reads each reply straight into `out` (one copy, from quinn's buffers to the caller's).
pub fn dtoh(out: &mut [u8], src: CUdeviceptr, stream: Stream) -> Result<(), CuError> {
    let c = client::get()?;
    if out.is_empty() {
        return Ok(());
    }
    let group = Arc::new(HostWrites::default());
    let sent = request_into_host(c, out.as_mut_ptr() as usize, out.len(), src, stream, &group, true);
    // Every chunk sent lands or fails before `out` is the caller's again, even after an error.
    c.lane.wait_landed(&group);
    sent?;
    if let Some(e) = group.take_error() {
        return Err(e);
    }
    // A synchronous copy synchronises: an asynchronous copy's earlier error reports here.
    match c.lane.transport().host_writes().take_error() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Whether `[addr, addr + len)` lies inside one page-locked allocation or registered range.
fn page_locked(objects: &client::Objects, addr: usize, len: usize) -> bool {
    let inside = |map: &std::collections::BTreeMap<usize, usize>| {
        map.range(..=addr).next_back().is_some_and(|(b, s)| addr.checked_add(len).is_some_and(|end| end <= b + s))
    };
    inside(&objects.host_allocs) || inside(&objects.host_registered)
}

/// An asynchronous copy into page-locked memory: every chunk is requested at once and the call
/// returns; the I/O thread writes each chunk as its reply arrives, so the transfer overlaps with
/// whatever the application does next. Its errors surface at the next synchronising call.
fn dtoh_async(dst: usize, bytes: usize, src: CUdeviceptr, stream: Stream) -> Result<(), CuError> {
    let c = client::get()?;
    request_into_host(c, dst, bytes, src, stream, c.lane.transport().host_writes(), false)
}

/// Asks for `bytes` device bytes at `src` in chunks whose replies the I/O thread writes to host
/// memory at `addr`, each counted in `group`. A `waited` copy's first chunk is a barrier, so
/// earlier fire-and-forget errors surface with it; an asynchronous one's are plain requests.
fn request_into_host(
    c: &client::Client,
    addr: usize,
    bytes: usize,
    src: CUdeviceptr,
    stream: Stream,
    group: &Arc<HostWrites>,
    waited: bool,
) -> Result<(), CuError> {
    for (i, offset) in (0..bytes).step_by(COPY_CHUNK).enumerate() {
        let len = COPY_CHUNK.min(bytes - offset);
        let kind = if waited && i == 0 { CallKind::Barrier } else { CallKind::Sync };
        let req = calls::MemcpyDtoH::Req { src: src + offset as u64, bytes: len as u64, stream };
        c.submit_to_host(kind, waited, Request::MemcpyDtoH(req), HostDst::new(group, addr + offset, len))?;
    }
    Ok(())
}

pub fn dtod(dst: CUdeviceptr, src: CUdeviceptr, bytes: usize, stream: Stream, sync: bool) -> Result<(), CuError> {
    let c = client::get()?;
    let req = Request::MemcpyDtoD(calls::MemcpyDtoD::Req { dst, src, bytes: bytes as u64, stream });
    let kind = if sync { CallKind::Barrier } else { CallKind::Async };
    if let Some(t) = c.submit(kind, req, Bytes::new())? {
        t.wait()?;
    }
    Ok(())
}

fn memset(dst: CUdeviceptr, value: u32, elem_size: u8, count: usize, stream: Stream, sync: bool) -> Result<(), CuError> {
    let c = client::get()?;
    let req = Request::Memset(calls::Memset::Req { dst, value, elem_size, count: count as u64, stream });
    let kind = if sync { CallKind::Barrier } else { CallKind::Async };
    if let Some(t) = c.submit(kind, req, Bytes::new())? {
        t.wait()?;
    }
    Ok(())
}

fn stream(h: Handle) -> Stream {
    Stream(h as u64)
}

export! {
    fn cuMemcpyHtoD_v2 | cuMemcpyHtoD_v2_ptds (dst: CUdeviceptr, src: *const c_void, bytes: usize) {
        // SAFETY: src is readable for `bytes` bytes (driver API contract).
        let data = unsafe { ffi::slice(src, bytes)? };
        htod(dst, data, Stream::NULL, true)
    }
}

export! {
    /// From pageable memory the bytes are taken at the call (as a staging copy would), so the
    /// caller may reuse its buffer at once; from page-locked memory of 1 MiB and more they are
    /// read in place after the call returns, as the driver's DMA reads them, until the next
    /// synchronisation. Ordering on the stream is kept by the lane.
    fn cuMemcpyHtoDAsync_v2 | cuMemcpyHtoDAsync_v2_ptsz (dst: CUdeviceptr, src: *const c_void, bytes: usize, hstream: Handle) {
        // SAFETY: src is readable for `bytes` bytes.
        let data = unsafe { ffi::slice(src, bytes)? };
        htod(dst, data, stream(hstream), false)
    }
}

export! {
    fn cuMemcpyDtoH_v2 | cuMemcpyDtoH_v2_ptds (dst: *mut c_void, src: CUdeviceptr, bytes: usize) {
        // SAFETY: dst is writable for `bytes` bytes.
        let out = unsafe { ffi::slice_mut(dst, bytes)? };
        dtoh(out, src, Stream::NULL)
    }
}

export! {
    /// Into page-locked memory the copy is asynchronous, as the driver's: the call returns at
    /// once and the data lands while the application goes on (see `dtoh_async`). Into pageable
    /// memory it completes before returning, as the driver's staged copies may.
    fn cuMemcpyDtoHAsync_v2 | cuMemcpyDtoHAsync_v2_ptsz (dst: *mut c_void, src: CUdeviceptr, bytes: usize, hstream: Handle) {
        if bytes > 0 && !dst.is_null() && page_locked(&client::get()?.objects(), dst as usize, bytes) {
            return dtoh_async(dst as usize, bytes, src, stream(hstream));
        }
        // SAFETY: dst is writable for `bytes` bytes.
        let out = unsafe { ffi::slice_mut(dst, bytes)? };
        dtoh(out, src, stream(hstream))
    }
}

export! {
    fn cuMemcpyDtoD_v2 | cuMemcpyDtoD_v2_ptds (dst: CUdeviceptr, src: CUdeviceptr, bytes: usize) {
        dtod(dst, src, bytes, Stream::NULL, true)
    }
}

export! {
    fn cuMemcpyDtoDAsync_v2 | cuMemcpyDtoDAsync_v2_ptsz (dst: CUdeviceptr, src: CUdeviceptr, bytes: usize, hstream: Handle) {
        dtod(dst, src, bytes, stream(hstream), false)
    }
}

export! {
    fn cuMemsetD8_v2 | cuMemsetD8_v2_ptds (dst: CUdeviceptr, value: u8, count: usize) {
        memset(dst, value as u32, 1, count, Stream::NULL, true)
    }
}

export! {
    fn cuMemsetD16_v2 | cuMemsetD16_v2_ptds (dst: CUdeviceptr, value: u16, count: usize) {
        memset(dst, value as u32, 2, count, Stream::NULL, true)
    }
}

export! {
    fn cuMemsetD32_v2 | cuMemsetD32_v2_ptds (dst: CUdeviceptr, value: u32, count: usize) {
        memset(dst, value, 4, count, Stream::NULL, true)
    }
}

export! {
    fn cuMemsetD8Async | cuMemsetD8Async_ptsz (dst: CUdeviceptr, value: u8, count: usize, hstream: Handle) {
        memset(dst, value as u32, 1, count, stream(hstream), false)
    }
}

export! {
    fn cuMemsetD16Async | cuMemsetD16Async_ptsz (dst: CUdeviceptr, value: u16, count: usize, hstream: Handle) {
        memset(dst, value as u32, 2, count, stream(hstream), false)
    }
}

export! {
    fn cuMemsetD32Async | cuMemsetD32Async_ptsz (dst: CUdeviceptr, value: u32, count: usize, hstream: Handle) {
        memset(dst, value, 4, count, stream(hstream), false)
    }
}

// ---- page-locked host memory: plain, page-aligned memory of this process

/// Allocates page-locked (here: page-aligned) host memory into `*pp`.
fn host_alloc(pp: *mut *mut c_void, bytes: usize) -> Result<(), CuError> {
    if pp.is_null() || bytes == 0 {
        return Err(CuError::INVALID_VALUE);
    }
    let mut p: *mut c_void = std::ptr::null_mut();
    // SAFETY: posix_memalign writes an allocation of `bytes` bytes aligned to 4096 into `p`.
    let rc = unsafe { libc::posix_memalign(&mut p, 4096, bytes) };
    if rc != 0 || p.is_null() {
        return Err(CuError::OUT_OF_MEMORY);
    }
    client::get()?.objects().host_allocs.insert(p as usize, bytes);
    // SAFETY: void** out-parameter, checked non-null.
    unsafe { ffi::write(pp, p) }
}

export! {
    fn cuMemAllocHost_v2(pp: *mut *mut c_void, bytes: usize) {
        client::get()?.current_device()?;
        host_alloc(pp, bytes)
    }
}

/// `CU_MEMHOSTALLOC_DEVICEMAP` / `CU_MEMHOSTREGISTER_DEVICEMAP`.
const DEVICEMAP: c_uint = 0x02;

/// Host memory mapped into the device's address space: kernels on a GPU in another machine
/// cannot reach this process's memory, so it is refused, named once on stderr.
fn mapped_host_memory(name: &'static str) -> CuError {
    crate::not_supported_detail(name, "mapped host memory: a GPU of the pool cannot reach this process's memory");
    CuError::NOT_SUPPORTED
}

export! {
    /// Page-locked memory as cuMemAllocHost; with `CU_MEMHOSTALLOC_DEVICEMAP` (mapped into the
    /// device's address space) `CUDA_ERROR_NOT_SUPPORTED`: a remote GPU cannot reach it.
    fn cuMemHostAlloc(pp: *mut *mut c_void, bytes: usize, flags: c_uint) {
        client::get()?.current_device()?;
        if flags & DEVICEMAP != 0 {
            return Err(mapped_host_memory("cuMemHostAlloc"));
        }
        host_alloc(pp, bytes)
    }
}

// cuMemHostGetDevicePointer stays the generated stub (CUDA_ERROR_NOT_SUPPORTED, named once on
// stderr): there is no device address for this process's memory.

export! {
    /// Waits for asynchronous copies under way to land first, so none writes freed memory, and
    /// for quinn to be done with the page-locked bytes lent to asynchronous copies to the device.
    fn cuMemFreeHost(p: *mut c_void) {
        let c = client::get()?;
        if !c.objects().host_allocs.contains_key(&(p as usize)) {
            return Err(CuError::INVALID_VALUE);
        }
        c.lane.wait_host_writes();
        loan::PINNED.wait_before(loan::PINNED.mark());
        if c.objects().host_allocs.remove(&(p as usize)).is_none() {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: p came from posix_memalign in host_alloc and is freed once (removed above).
        unsafe { libc::free(p) };
        Ok(())
    }
}

export! {
    fn cuMemHostGetFlags(flags: *mut c_uint, p: *mut c_void) {
        let c = client::get()?;
        let known = c.objects().host_allocs.range(..=p as usize).next_back().is_some_and(|(b, s)| (p as usize) < b + s);
        if !known {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: unsigned int* out-parameter.
        unsafe { ffi::write(flags, 0) }
    }
}

export! {
    /// Host memory is always reachable by the pool's copies (they go through this process), so
    /// registering only records the range; a device mapping of it (`CU_MEMHOSTREGISTER_DEVICEMAP`,
    /// `cuMemHostGetDevicePointer`) is not supported.
    fn cuMemHostRegister_v2 | cuMemHostRegister (p: *mut c_void, bytes: usize, flags: c_uint) {
        let c = client::get()?;
        if p.is_null() || bytes == 0 {
            return Err(CuError::INVALID_VALUE);
        }
        if flags & DEVICEMAP != 0 {
            return Err(mapped_host_memory("cuMemHostRegister"));
        }
        let mut objects = c.objects();
        let start = p as usize;
        let overlaps = objects.host_registered.range(..start + bytes).next_back().is_some_and(|(b, s)| b + s > start);
        if overlaps {
            return Err(CuError(cuwire_protocol::cuda::CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED));
        }
        objects.host_registered.insert(start, bytes);
        Ok(())
    }
}

export! {
    /// Waits for asynchronous copies under way to land first, as cuMemFreeHost.
    fn cuMemHostUnregister(p: *mut c_void) {
        let c = client::get()?;
        c.lane.wait_host_writes();
        loan::PINNED.wait_before(loan::PINNED.mark());
        match c.objects().host_registered.remove(&(p as usize)) {
            Some(_) => Ok(()),
            None => Err(CuError(cuwire_protocol::cuda::CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED)),
        }
    }
}
