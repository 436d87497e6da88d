//! Streams and events: handles minted here, created on the server by fire-and-forget calls.
//! Synchronisation, queries and records are generated from the table (see `auto`); the
//! per-thread-default-stream names below are the same functions.

use super::*;
use crate::{auto, client, export, ffi};
use bytes::Bytes;
use cuwire_protocol::{calls, CuError, Event, Request, Stream};

fn create_stream(flags: c_uint, priority: c_int) -> Result<Stream, CuError> {
    let c = client::get()?;
    c.current_device()?;
    let stream = Stream(c.mint());
    c.send(Request::StreamCreate(calls::StreamCreate::Req { stream, flags, priority }), Bytes::new())?;
    Ok(stream)
}

export! {
    fn cuStreamCreate(ph: *mut Handle, flags: c_uint) {
        if ph.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        let s = create_stream(flags, 0)?;
        // SAFETY: CUstream* out-parameter.
        unsafe { ffi::write(ph, s.0 as Handle) }
    }
}

export! {
    fn cuStreamCreateWithPriority(ph: *mut Handle, flags: c_uint, priority: c_int) {
        if ph.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        let s = create_stream(flags, priority)?;
        // SAFETY: CUstream* out-parameter.
        unsafe { ffi::write(ph, s.0 as Handle) }
    }
}

export! {
    /// Priorities are accepted and passed on; the emulated device orders streams fairly.
    fn cuCtxGetStreamPriorityRange(least: *mut c_int, greatest: *mut c_int) {
        client::get()?.current_device()?;
        // SAFETY: optional int* out-parameters.
        unsafe {
            ffi::write_opt(least, 0);
            ffi::write_opt(greatest, -5);
        }
        Ok(())
    }
}

export! {
    fn cuStreamSynchronize_ptsz(hstream: Handle) {
        // SAFETY: same contract as the generated export.
        ffi_result(unsafe { auto::cuStreamSynchronize(hstream) })
    }
}

export! {
    fn cuStreamQuery_ptsz(hstream: Handle) {
        // SAFETY: same contract as the generated export.
        ffi_result(unsafe { auto::cuStreamQuery(hstream) })
    }
}

export! {
    fn cuStreamWaitEvent_ptsz(hstream: Handle, hevent: Handle, flags: c_uint) {
        // SAFETY: same contract as the generated export.
        ffi_result(unsafe { auto::cuStreamWaitEvent(hstream, hevent, flags) })
    }
}

export! {
    fn cuEventRecord_ptsz(hevent: Handle, hstream: Handle) {
        // SAFETY: same contract as the generated export.
        ffi_result(unsafe { auto::cuEventRecord(hevent, hstream) })
    }
}

export! {
    /// `CU_EVENT_RECORD_EXTERNAL` only matters inside graph capture, which is not supported.
    fn cuEventRecordWithFlags | cuEventRecordWithFlags_ptsz (hevent: Handle, hstream: Handle, _flags: c_uint) {
        // SAFETY: same contract as the generated export.
        ffi_result(unsafe { auto::cuEventRecord(hevent, hstream) })
    }
}

export! {
    fn cuEventElapsedTime_v2(ms: *mut f32, start: Handle, end: Handle) {
        // SAFETY: same contract as the generated export.
        ffi_result(unsafe { auto::cuEventElapsedTime(ms, start, end) })
    }
}

export! {
    fn cuEventCreate(ph: *mut Handle, flags: c_uint) {
        if ph.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        let c = client::get()?;
        c.current_device()?;
        let event = Event(c.mint());
        c.send(Request::EventCreate(calls::EventCreate::Req { event, flags }), Bytes::new())?;
        // SAFETY: CUevent* out-parameter.
        unsafe { ffi::write(ph, event.0 as Handle) }
    }
}

// ---- stream capture: not supported (cuStreamBeginCapture is a stub), so no stream is ever
// capturing; libraries ask before stream-ordered allocations (cuda-core's memory pools)

/// `CU_STREAM_CAPTURE_STATUS_NONE`.
const CAPTURE_STATUS_NONE: c_int = 0;

export! {
    fn cuStreamIsCapturing | cuStreamIsCapturing_ptsz (_hstream: Handle, status: *mut c_int) {
        client::get()?;
        // SAFETY: CUstreamCaptureStatus* out-parameter.
        unsafe { ffi::write(status, CAPTURE_STATUS_NONE) }
    }
}

/// What cuStreamGetCaptureInfo answers for a stream that is not capturing: the status, and a
/// capture id of 0; the graph and dependencies are not defined then and are left alone.
fn not_capturing(status: *mut c_int, id: *mut u64) -> Result<(), CuError> {
    client::get()?;
    // SAFETY: CUstreamCaptureStatus* and optional cuuint64_t* out-parameters.
    unsafe {
        ffi::write(status, CAPTURE_STATUS_NONE)?;
        ffi::write_opt(id, 0);
    }
    Ok(())
}

export! {
    fn cuStreamGetCaptureInfo | cuStreamGetCaptureInfo_ptsz (_hstream: Handle, status: *mut c_int, id: *mut u64) {
        not_capturing(status, id)
    }
}

export! {
    fn cuStreamGetCaptureInfo_v2 | cuStreamGetCaptureInfo_v2_ptsz (_hstream: Handle, status: *mut c_int, id: *mut u64, _graph: *mut Handle,
                                                                  _deps: *mut *const Handle, _num_deps: *mut usize) {
        not_capturing(status, id)
    }
}

export! {
    fn cuStreamGetCaptureInfo_v3 | cuStreamGetCaptureInfo_v3_ptsz (_hstream: Handle, status: *mut c_int, id: *mut u64, _graph: *mut Handle,
                                                                  _deps: *mut *const Handle, _edges: *mut *const c_void, _num_deps: *mut usize) {
        not_capturing(status, id)
    }
}

fn ffi_result(code: CUresult) -> Result<(), CuError> {
    if code == 0 {
        Ok(())
    } else {
        Err(CuError(code))
    }
}
