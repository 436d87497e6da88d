//! Kernel launches: parameters are packed here, from the layout the server returned with the
//! module, and the launch is sent without waiting. Launch errors the driver reports at once
//! (bad geometry, a bad handle) are reported at once; faults while running surface at the next
//! synchronising call.

use super::*;
use crate::client;
use crate::manual::module::resolve_function;
use crate::{export, ffi};
use bytes::Bytes;
use cuwire_protocol::{calls, CuError, FunctionInfo, LaunchDims, Request, Stream};

const CU_LAUNCH_PARAM_END: usize = 0;
const CU_LAUNCH_PARAM_BUFFER_POINTER: usize = 1;
const CU_LAUNCH_PARAM_BUFFER_SIZE: usize = 2;

/// Packs `kernelParams` (one pointer per parameter) or the `extra` buffer into the bytes the
/// kernel's parameter space holds.
///
/// # Safety
/// `params` has one valid pointer per parameter of `info`, each to as many bytes as the
/// parameter's size; or `extra` is a CU_LAUNCH_PARAM_END-terminated list as the driver defines.
pub unsafe fn pack(info: &FunctionInfo, params: *mut *mut c_void, extra: *mut *mut c_void) -> Result<Vec<u8>, CuError> {
    let total = info.params.iter().map(|p| (p.offset + p.size) as usize).max().unwrap_or(0);
    if !params.is_null() {
        let mut buf = vec![0u8; total];
        for (i, p) in info.params.iter().enumerate() {
            // SAFETY: params[i] exists for every parameter (caller's contract).
            let arg = unsafe { *params.add(i) };
            // SAFETY: arg points to p.size readable bytes.
            let bytes = unsafe { ffi::slice(arg, p.size as usize)? };
            buf[p.offset as usize..(p.offset + p.size) as usize].copy_from_slice(bytes);
        }
        return Ok(buf);
    }
    if extra.is_null() {
        return if info.params.is_empty() { Ok(Vec::new()) } else { Err(CuError::INVALID_VALUE) };
    }
    let (mut buffer, mut size): (*const c_void, Option<usize>) = (std::ptr::null(), None);
    let mut i = 0;
    loop {
        // SAFETY: extra is a key/value list ending with CU_LAUNCH_PARAM_END.
        let key = unsafe { *extra.add(i) } as usize;
        match key {
            CU_LAUNCH_PARAM_END => break,
            // SAFETY: each key is followed by its value.
            CU_LAUNCH_PARAM_BUFFER_POINTER => buffer = unsafe { *extra.add(i + 1) },
            CU_LAUNCH_PARAM_BUFFER_SIZE => {
                // SAFETY: the value of BUFFER_SIZE points to a size_t.
                let p = unsafe { *extra.add(i + 1) } as *const usize;
                if p.is_null() {
                    return Err(CuError::INVALID_VALUE);
                }
                // SAFETY: checked non-null; points to a size_t.
                size = Some(unsafe { p.read_unaligned() });
            }
            _ => return Err(CuError::INVALID_VALUE),
        }
        i += 2;
        if i > 64 {
            return Err(CuError::INVALID_VALUE);
        }
    }
    let size = size.ok_or(CuError::INVALID_VALUE)?;
    if size < total {
        return Err(CuError::INVALID_VALUE);
    }
    // SAFETY: the buffer holds `size` bytes.
    Ok(unsafe { ffi::slice(buffer, size)? }[..total].to_vec())
}

/// Checks what the driver checks before launching, then sends the launch.
fn launch(func: Handle, dims: LaunchDims, stream: Handle, params: *mut *mut c_void, extra: *mut *mut c_void) -> Result<(), CuError> {
    let c = client::get()?;
    let (f, info) = resolve_function(c, func)?;
    if dims.grid.contains(&0) || dims.block.contains(&0) {
        return Err(CuError::INVALID_VALUE);
    }
    let threads = dims.block.iter().map(|&d| d as u64).product::<u64>();
    if threads > info.attrs.max_threads_per_block.max(1) as u64 || dims.block[2] > 64 || dims.grid[1] > 65535 || dims.grid[2] > 65535 {
        return Err(CuError(cuwire_protocol::cuda::CUDA_ERROR_INVALID_VALUE));
    }
    // SAFETY: params / extra follow cuLaunchKernel's contract.
    let packed = unsafe { pack(&info, params, extra)? };
    let req = calls::LaunchKernel::Req { func: f, dims, stream: Stream(stream as u64) };
    c.send(Request::LaunchKernel(req), Bytes::from(packed))
}

export! {
    fn cuLaunchKernel | cuLaunchKernel_ptsz (f: Handle, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint,
                                              shared: c_uint, stream: Handle, params: *mut *mut c_void, extra: *mut *mut c_void) {
        let dims = LaunchDims { grid: [gx, gy, gz], block: [bx, by, bz], shared_mem_bytes: shared };
        launch(f, dims, stream, params, extra)
    }
}

/// `CUlaunchConfig`.
#[repr(C)]
pub struct LaunchConfig {
    pub grid: [c_uint; 3],
    pub block: [c_uint; 3],
    pub shared_mem_bytes: c_uint,
    pub stream: Handle,
    pub attrs: *mut c_void,
    pub num_attrs: c_uint,
}

export! {
    /// Launch attributes (clusters, cooperative launch, priorities …) are not acted upon; a
    /// launch that needs one to be correct (a cooperative grid sync) is not supported.
    fn cuLaunchKernelEx | cuLaunchKernelEx_ptsz (config: *const LaunchConfig, f: Handle, params: *mut *mut c_void, extra: *mut *mut c_void) {
        if config.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        // SAFETY: non-null CUlaunchConfig* (driver API contract).
        let cfg = unsafe { &*config };
        let dims = LaunchDims { grid: cfg.grid, block: cfg.block, shared_mem_bytes: cfg.shared_mem_bytes };
        launch(f, dims, cfg.stream, params, extra)
    }
}
