//! Occupancy calculators, context limits and cache preferences: answered in the shim from what it
//! already knows (function attributes from the module load, device attributes from the welcome),
//! so they cost no round trip. Limits and cache preferences are hints the emulated device does not
//! act upon; they are remembered per context so a program reads back what it set.

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;
use crate::manual::device::attribute;
use crate::manual::module::resolve_function;
use crate::{client, context, export, ffi};
use cuwire_protocol::{cuda, CuError, FunctionInfo};

/// Blocks of `block` threads with `dyn_smem` bytes of dynamic shared memory that fit one
/// multiprocessor, as the hardware limits (threads, blocks, registers, shared memory) allow.
fn active_blocks(dev: c_int, f: &FunctionInfo, block: c_int, dyn_smem: usize) -> Result<c_int, CuError> {
    if block <= 0 {
        return Err(CuError::INVALID_VALUE);
    }
    let a = |x| attribute(dev, x);
    let warp = a(cuda::CU_DEVICE_ATTRIBUTE_WARP_SIZE)?.max(1);
    let threads_per_sm = a(cuda::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR)?;
    let blocks_per_sm = a(cuda::CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR)?.max(1);
    let regs_per_sm = a(cuda::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR)?;
    let smem_per_sm = a(cuda::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)? as i64;
    if block > f.attrs.max_threads_per_block.max(1) {
        return Ok(0);
    }
    let warps = (block + warp - 1) / warp;
    let by_threads = threads_per_sm / (warps * warp);
    let by_regs = if f.attrs.num_regs > 0 { regs_per_sm / (f.attrs.num_regs * warps * warp).max(1) } else { blocks_per_sm };
    let smem = f.attrs.shared_size_bytes as i64 + dyn_smem as i64;
    let by_smem = if smem > 0 { (smem_per_sm / smem).min(i32::MAX as i64) as c_int } else { blocks_per_sm };
    Ok(by_threads.min(by_regs).min(by_smem).min(blocks_per_sm).max(0))
}

export! {
    fn cuOccupancyMaxActiveBlocksPerMultiprocessor(num_blocks: *mut c_int, func: Handle, block: c_int, dyn_smem: usize) {
        let c = client::get()?;
        let dev = c.current_device()?;
        let (_, info) = resolve_function(c, func)?;
        let n = active_blocks(dev, &info, block, dyn_smem)?;
        // SAFETY: int* out-parameter.
        unsafe { ffi::write(num_blocks, n) }
    }
}

export! {
    /// The flags only concern caching hints; they do not change the answer here.
    fn cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(num_blocks: *mut c_int, func: Handle, block: c_int, dyn_smem: usize, _flags: c_uint) {
        let c = client::get()?;
        let dev = c.current_device()?;
        let (_, info) = resolve_function(c, func)?;
        let n = active_blocks(dev, &info, block, dyn_smem)?;
        // SAFETY: int* out-parameter.
        unsafe { ffi::write(num_blocks, n) }
    }
}

/// `CUoccupancyB2DSize`: dynamic shared memory a block size needs.
pub type BlockToSmem = Option<unsafe extern "C" fn(c_int) -> usize>;

fn potential_block_size(func: Handle, to_smem: BlockToSmem, dyn_smem: usize, limit: c_int) -> Result<(c_int, c_int), CuError> {
    let c = client::get()?;
    let dev = c.current_device()?;
    let (_, info) = resolve_function(c, func)?;
    let warp = attribute(dev, cuda::CU_DEVICE_ATTRIBUTE_WARP_SIZE)?.max(1);
    let sms = attribute(dev, cuda::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1);
    let mut max = info.attrs.max_threads_per_block.max(warp);
    if limit > 0 {
        max = max.min(limit);
    }
    // The largest block size with the most resident threads per multiprocessor.
    let (mut best_block, mut best_threads, mut best_blocks) = (0, -1, 0);
    let mut block = (max / warp) * warp;
    while block > 0 {
        let smem = match to_smem {
            // SAFETY: the caller's callback maps a block size to its dynamic shared memory.
            Some(f) => unsafe { f(block) },
            None => dyn_smem,
        };
        let blocks = active_blocks(dev, &info, block, smem)?;
        if blocks * block > best_threads {
            (best_block, best_threads, best_blocks) = (block, blocks * block, blocks);
        }
        block -= warp;
    }
    if best_block == 0 {
        return Err(CuError::INVALID_VALUE);
    }
    Ok((best_blocks * sms, best_block))
}

export! {
    fn cuOccupancyMaxPotentialBlockSize(min_grid: *mut c_int, block_size: *mut c_int, func: Handle, to_smem: BlockToSmem, dyn_smem: usize, limit: c_int) {
        let (grid, block) = potential_block_size(func, to_smem, dyn_smem, limit)?;
        // SAFETY: int* out-parameters.
        unsafe {
            ffi::write(min_grid, grid)?;
            ffi::write(block_size, block)
        }
    }
}

export! {
    fn cuOccupancyMaxPotentialBlockSizeWithFlags(min_grid: *mut c_int, block_size: *mut c_int, func: Handle, to_smem: BlockToSmem, dyn_smem: usize, limit: c_int, _flags: c_uint) {
        let (grid, block) = potential_block_size(func, to_smem, dyn_smem, limit)?;
        // SAFETY: int* out-parameters.
        unsafe {
            ffi::write(min_grid, grid)?;
            ffi::write(block_size, block)
        }
    }
}

export! {
    fn cuOccupancyAvailableDynamicSMemPerBlock(dyn_smem: *mut usize, func: Handle, num_blocks: c_int, block: c_int) {
        let c = client::get()?;
        let dev = c.current_device()?;
        let (_, info) = resolve_function(c, func)?;
        if num_blocks <= 0 || block <= 0 {
            return Err(CuError::INVALID_VALUE);
        }
        let per_sm = attribute(dev, cuda::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)? as i64;
        let per_block = attribute(dev, cuda::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as i64;
        let avail = (per_sm / num_blocks as i64).min(per_block) - info.attrs.shared_size_bytes as i64;
        // SAFETY: size_t* out-parameter.
        unsafe { ffi::write(dyn_smem, avail.max(0) as usize) }
    }
}

// ---- context limits and cache preferences (remembered per context)

fn limits() -> &'static Mutex<HashMap<(u64, c_int), usize>> {
    static L: std::sync::OnceLock<Mutex<HashMap<(u64, c_int), usize>>> = std::sync::OnceLock::new();
    L.get_or_init(Default::default)
}

/// The driver's defaults for a device of compute capability 8.x.
fn default_limit(limit: c_int) -> Option<usize> {
    Some(match limit {
        0 => 1024,       // CU_LIMIT_STACK_SIZE
        1 => 1 << 20,    // CU_LIMIT_PRINTF_FIFO_SIZE
        2 => 8 << 20,    // CU_LIMIT_MALLOC_HEAP_SIZE
        3 => 2,          // CU_LIMIT_DEV_RUNTIME_SYNC_DEPTH
        4 => 2048,       // CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT
        5 => 64,         // CU_LIMIT_MAX_L2_FETCH_GRANULARITY
        6 => 0,          // CU_LIMIT_PERSISTING_L2_CACHE_SIZE
        7 => 163 * 1024, // CU_LIMIT_SHMEM_SIZE
        8 | 9 => 0,      // CU_LIMIT_CIG_ENABLED, CU_LIMIT_CIG_SHMEM_FALLBACK_ENABLED
        _ => return None,
    })
}

export! {
    fn cuCtxGetLimit(value: *mut usize, limit: c_int) {
        client::get()?.current_device()?;
        let ctx = context::current().0;
        let v = match limits().lock().unwrap_or_else(|p| p.into_inner()).get(&(ctx, limit)) {
            Some(v) => *v,
            None => default_limit(limit).ok_or(CuError(cuda::CUDA_ERROR_UNSUPPORTED_LIMIT))?,
        };
        // SAFETY: size_t* out-parameter.
        unsafe { ffi::write(value, v) }
    }
}

export! {
    fn cuCtxSetLimit(limit: c_int, value: usize) {
        client::get()?.current_device()?;
        if default_limit(limit).is_none() || (7..=8).contains(&limit) {
            return Err(CuError(cuda::CUDA_ERROR_UNSUPPORTED_LIMIT));
        }
        limits().lock().unwrap_or_else(|p| p.into_inner()).insert((context::current().0, limit), value);
        Ok(())
    }
}

export! {
    /// A cache preference is a hint; the emulated device has no configurable L1.
    fn cuCtxSetCacheConfig(_config: c_int) {
        client::get()?.current_device()?;
        Ok(())
    }
}

export! {
    fn cuCtxGetCacheConfig(config: *mut c_int) {
        client::get()?.current_device()?;
        // SAFETY: CUfunc_cache* out-parameter; CU_FUNC_CACHE_PREFER_NONE.
        unsafe { ffi::write(config, 0) }
    }
}

export! {
    /// A cache preference is a hint; accepted for any function this context knows.
    fn cuFuncSetCacheConfig(func: Handle, _config: c_int) {
        let c = client::get()?;
        resolve_function(c, func).map(|_| ())
    }
}
