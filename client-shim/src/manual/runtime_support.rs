//! Driver functions libcudart (the CUDA runtime) needs beyond what driver-API programs use,
//! answered here or built on the other manual exports.

use super::*;
use crate::manual::memory;
use crate::{auto, export, ffi};
use cuwire_protocol::{cuda, CuError};

/// `CU_MODULE_EAGER_LOADING`.
const EAGER_LOADING: c_int = 1;

export! {
    /// Modules are loaded eagerly: the server parses a whole image when it is loaded.
    fn cuModuleGetLoadingMode(mode: *mut c_int) {
        // SAFETY: CUmoduleLoadingMode* out-parameter.
        unsafe { ffi::write(mode, EAGER_LOADING) }
    }
}

fn result(code: CUresult) -> Result<(), CuError> {
    if code == cuda::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(CuError(code))
    }
}

/// Whether an address lies in device memory of this tenant (an allocation or a module
/// variable), asked of the server: with unified addressing a pointer's kind is its range's.
fn is_device(p: CUdeviceptr) -> Result<bool, CuError> {
    let (mut base, mut size) = (0u64, 0u64);
    // SAFETY: out-parameters on our own stack.
    match unsafe { auto::cuMemGetAddressRange_v2(&mut base, &mut size, p) } {
        cuda::CUDA_SUCCESS => Ok(true),
        cuda::CUDA_ERROR_NOT_FOUND => Ok(false),
        e => Err(CuError(e)),
    }
}

/// A unified-addressing copy: the direction comes from where each pointer lies.
///
/// # Safety
/// Host pointers are valid for `bytes` bytes (the driver API's contract).
unsafe fn copy(dst: CUdeviceptr, src: CUdeviceptr, bytes: usize, stream: Option<Handle>) -> Result<(), CuError> {
    if bytes == 0 {
        return Ok(());
    }
    let (d, s) = (is_device(dst)?, is_device(src)?);
    // SAFETY (each arm): pointers as classified, forwarded with the same contract.
    unsafe {
        match (d, s, stream) {
            (true, true, None) => result(memory::cuMemcpyDtoD_v2(dst, src, bytes)),
            (true, true, Some(h)) => result(memory::cuMemcpyDtoDAsync_v2(dst, src, bytes, h)),
            (true, false, None) => result(memory::cuMemcpyHtoD_v2(dst, src as *const c_void, bytes)),
            (true, false, Some(h)) => result(memory::cuMemcpyHtoDAsync_v2(dst, src as *const c_void, bytes, h)),
            (false, true, None) => result(memory::cuMemcpyDtoH_v2(dst as *mut c_void, src, bytes)),
            (false, true, Some(h)) => result(memory::cuMemcpyDtoHAsync_v2(dst as *mut c_void, src, bytes, h)),
            (false, false, _) => {
                let from = ffi::slice(src as *const c_void, bytes)?;
                let to = ffi::slice_mut(dst as *mut c_void, bytes)?;
                to.copy_from_slice(from);
                Ok(())
            }
        }
    }
}

export! {
    /// Host-to-host copies are done here, synchronously.
    fn cuMemcpy | cuMemcpy_ptds (dst: CUdeviceptr, src: CUdeviceptr, bytes: usize) {
        // SAFETY: the caller's pointers, per the driver API contract.
        unsafe { copy(dst, src, bytes, None) }
    }
}

export! {
    /// Host-to-host copies are done here, synchronously (ordered after nothing on the stream:
    /// the host memory is the program's own).
    fn cuMemcpyAsync | cuMemcpyAsync_ptsz (dst: CUdeviceptr, src: CUdeviceptr, bytes: usize, hstream: Handle) {
        // SAFETY: the caller's pointers, per the driver API contract.
        unsafe { copy(dst, src, bytes, Some(hstream)) }
    }
}

#[cfg(test)]
mod tests {
    use crate::manual::module::read_image;

    /// What libcudart hands `cuLibraryLoadData` for an nvcc-registered fatbinary: nvcc's
    /// wrapper, whose header (like the fatbinary's) has NUL bytes right after its magic.
    #[test]
    fn read_image_follows_the_fatbinary_wrapper() {
        let mut fatbin = vec![0u64; 2 + 4];
        let bytes: &mut [u8] = bytemuck_bytes(&mut fatbin);
        bytes[0..4].copy_from_slice(&0xBA55_ED50u32.to_le_bytes());
        bytes[4..6].copy_from_slice(&1u16.to_le_bytes());
        bytes[6..8].copy_from_slice(&16u16.to_le_bytes());
        bytes[8..16].copy_from_slice(&32u64.to_le_bytes());
        bytes[16..48].fill(0xAB);
        let expected = bytes.to_vec();
        let wrapper: [u64; 3] = [0x1_4662_43B1, fatbin.as_ptr() as u64, 0];
        // SAFETY: a valid wrapper pointing at a valid 48-byte fatbinary.
        let image = unsafe { read_image(wrapper.as_ptr() as *const std::ffi::c_void) }.unwrap();
        assert_eq!(image, expected);
        // SAFETY: the fatbinary itself.
        let image = unsafe { read_image(fatbin.as_ptr() as *const std::ffi::c_void) }.unwrap();
        assert_eq!(image, expected);
    }

    fn bytemuck_bytes(words: &mut [u64]) -> &mut [u8] {
        // SAFETY: u64 has no padding and any byte pattern is a valid u64.
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, words.len() * 8) }
    }
}
