//! Host functions in a stream (`cuLaunchHostFunc`, `cuStreamAddCallback`): they run in this
//! process at their point in the stream. The shim waits for the stream to reach that point, runs
//! the function on the calling thread and returns; work enqueued afterwards comes after it, as
//! the driver guarantees. (The call blocks where the driver's would return at once.)

use super::*;
use crate::{auto, client, export};
use cuwire_protocol::CuError;

/// `CUhostFn`.
pub type HostFn = Option<unsafe extern "C" fn(*mut c_void)>;
/// `CUstreamCallback`.
pub type StreamCallback = Option<unsafe extern "C" fn(Handle, CUresult, *mut c_void)>;

export! {
    fn cuLaunchHostFunc | cuLaunchHostFunc_ptsz (hstream: Handle, func: HostFn, user_data: *mut c_void) {
        client::get()?;
        let func = func.ok_or(CuError::INVALID_VALUE)?;
        // SAFETY: the generated export; `hstream` is passed through as the caller gave it.
        let code = unsafe { auto::cuStreamSynchronize(hstream) };
        if code != 0 {
            return Err(CuError(code));
        }
        // SAFETY: the caller's host function with the caller's data, as cuLaunchHostFunc promises.
        unsafe { func(user_data) };
        Ok(())
    }
}

export! {
    /// The callback receives the stream's status, as the driver passes it.
    fn cuStreamAddCallback | cuStreamAddCallback_ptsz (hstream: Handle, callback: StreamCallback, user_data: *mut c_void, flags: c_uint) {
        client::get()?;
        let callback = callback.ok_or(CuError::INVALID_VALUE)?;
        if flags != 0 {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: the generated export; `hstream` is passed through as the caller gave it.
        let status = unsafe { auto::cuStreamSynchronize(hstream) };
        // SAFETY: the caller's callback with the stream, its status and the caller's data.
        unsafe { callback(hstream, status, user_data) };
        Ok(())
    }
}
