//! Wire types of the forwarded calls: handles minted by the client, device pointers, errors.

use bincode::{Decode, Encode};
use std::fmt;

use crate::cuda::{self, CUresult};

macro_rules! handles {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {$(
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode, Default)]
        pub struct $name(pub u64);
        impl $name {
            /// The null handle (what the application passes as "none").
            pub const NULL: $name = $name(0);
            pub fn is_null(self) -> bool { self.0 == 0 }
        }
    )*};
}

handles! {
    /// A context (`CUcontext`), minted by the shim.
    Ctx,
    /// A stream (`CUstream`); 0 is the legacy default stream, 2 the per-thread default stream.
    Stream,
    /// An event (`CUevent`), minted by the shim.
    Event,
    /// A module (`CUmodule`), minted by the shim.
    Module,
    /// A function of a module (`CUfunction`), minted by the shim.
    Func,
    /// A library (`CUlibrary`), minted by the shim.
    Library,
    /// A kernel of a library (`CUkernel`), minted by the shim.
    Kernel,
    /// A memory pool (`CUmemoryPool`): minted by the shim, except each device's default pool,
    /// whose handle both sides know ([`MemPool::default_of`]).
    MemPool,
}

impl MemPool {
    /// The default pool of the tenant's device `dev`. Minted handles are multiples of 16 from
    /// 0x1000 up, so these (8, 0x18, 0x28, …) are never minted.
    pub fn default_of(dev: i32) -> MemPool {
        MemPool(0x8 + 0x10 * dev.max(0) as u64)
    }

    /// The device whose default pool this is, if it is one.
    pub fn default_device(self) -> Option<i32> {
        (self.0 % 0x10 == 0x8 && self.0 < 0x1000).then(|| ((self.0 - 0x8) / 0x10) as i32)
    }
}

impl Stream {
    /// `CU_STREAM_LEGACY`: the legacy default stream, named explicitly.
    pub const LEGACY: Stream = Stream(1);
    /// `CU_STREAM_PER_THREAD`: the calling thread's default stream.
    pub const PER_THREAD: Stream = Stream(2);
    /// Whether this names one of the default streams rather than a created one.
    pub fn is_default(self) -> bool {
        self.0 <= 2
    }
}

/// A device address (`CUdeviceptr`). Kernels dereference it, so it is the backend's real address,
/// checked against the tenant's own allocations on every use.
pub type DevPtr = u64;

/// A CUDA error code on the wire: never `CUDA_SUCCESS`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub struct CuError(pub CUresult);

impl CuError {
    pub const INVALID_VALUE: CuError = CuError(cuda::CUDA_ERROR_INVALID_VALUE);
    pub const OUT_OF_MEMORY: CuError = CuError(cuda::CUDA_ERROR_OUT_OF_MEMORY);
    pub const NOT_INITIALIZED: CuError = CuError(cuda::CUDA_ERROR_NOT_INITIALIZED);
    pub const INVALID_DEVICE: CuError = CuError(cuda::CUDA_ERROR_INVALID_DEVICE);
    pub const INVALID_CONTEXT: CuError = CuError(cuda::CUDA_ERROR_INVALID_CONTEXT);
    pub const INVALID_IMAGE: CuError = CuError(cuda::CUDA_ERROR_INVALID_IMAGE);
    pub const INVALID_PTX: CuError = CuError(cuda::CUDA_ERROR_INVALID_PTX);
    pub const INVALID_HANDLE: CuError = CuError(cuda::CUDA_ERROR_INVALID_HANDLE);
    pub const NOT_FOUND: CuError = CuError(cuda::CUDA_ERROR_NOT_FOUND);
    pub const NOT_READY: CuError = CuError(cuda::CUDA_ERROR_NOT_READY);
    pub const ILLEGAL_ADDRESS: CuError = CuError(cuda::CUDA_ERROR_ILLEGAL_ADDRESS);
    pub const LAUNCH_FAILED: CuError = CuError(cuda::CUDA_ERROR_LAUNCH_FAILED);
    pub const NOT_SUPPORTED: CuError = CuError(cuda::CUDA_ERROR_NOT_SUPPORTED);
    pub const UNKNOWN: CuError = CuError(cuda::CUDA_ERROR_UNKNOWN);
    pub const NOT_PERMITTED: CuError = CuError(cuda::CUDA_ERROR_NOT_PERMITTED);
    pub const DEVICE_UNAVAILABLE: CuError = CuError(cuda::CUDA_ERROR_DEVICE_UNAVAILABLE);
    pub const INVALID_CONFIGURATION: CuError = CuError(cuda::CUDA_ERROR_INVALID_VALUE);
    pub const CONTEXT_ALREADY_IN_USE: CuError = CuError(cuda::CUDA_ERROR_CONTEXT_ALREADY_IN_USE);
    pub const PEER_ACCESS_UNSUPPORTED: CuError = CuError(cuda::CUDA_ERROR_PEER_ACCESS_UNSUPPORTED);

    /// The driver's name for this error, or `CUDA_ERROR_<n>` for a code cuda.h does not list.
    pub fn name(self) -> String {
        cuda::error_name(self.0).map(str::to_owned).unwrap_or_else(|| format!("CUDA_ERROR_{}", self.0))
    }

    /// Whether this error, like a kernel fault on a GPU, poisons the context for good.
    pub fn is_sticky(self) -> bool {
        matches!(
            self.0,
            cuda::CUDA_ERROR_ILLEGAL_ADDRESS
                | cuda::CUDA_ERROR_MISALIGNED_ADDRESS
                | cuda::CUDA_ERROR_LAUNCH_FAILED
                | cuda::CUDA_ERROR_ASSERT
                | cuda::CUDA_ERROR_HARDWARE_STACK_ERROR
                | cuda::CUDA_ERROR_ILLEGAL_INSTRUCTION
                | cuda::CUDA_ERROR_INVALID_ADDRESS_SPACE
                | cuda::CUDA_ERROR_INVALID_PC
                | cuda::CUDA_ERROR_LAUNCH_TIMEOUT
        )
    }
}

impl fmt::Debug for CuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for CuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for CuError {}

/// What every forwarded call returns.
pub type CuResult<T> = Result<T, CuError>;

/// One kernel parameter's place in the packed parameter buffer (what cuFuncGetParamInfo reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct ParamInfo {
    pub offset: u32,
    pub size: u32,
}

/// Function attributes (`CUfunction_attribute`) the shim answers locally once a module is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Default)]
pub struct FuncAttrs {
    pub max_threads_per_block: i32,
    pub shared_size_bytes: i32,
    pub const_size_bytes: i32,
    pub local_size_bytes: i32,
    pub num_regs: i32,
    pub ptx_version: i32,
    pub binary_version: i32,
}

/// An entry point of a loaded module: its name, parameter layout and attributes.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct FunctionInfo {
    pub name: String,
    pub params: Vec<ParamInfo>,
    pub attrs: FuncAttrs,
}

/// A module-scope variable (`.global` / `.const`) of a loaded module.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GlobalInfo {
    pub name: String,
    pub dptr: DevPtr,
    pub bytes: u64,
}

/// What a module load tells the client, so that function lookups, parameter packing and
/// attribute queries need no further round trip.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Default)]
pub struct ModuleInfo {
    pub functions: Vec<FunctionInfo>,
    pub globals: Vec<GlobalInfo>,
}

/// Rows of a pitched box in device memory, for 2-D and 3-D copies. The box has rows of `width`
/// bytes starting `pitch` bytes apart, `height` rows to a slice, and slices starting
/// `slice_pitch` bytes apart; one message names its rows `first .. first + count`, counted
/// slice after slice, so that a large copy travels as several messages of whole rows. Row `i`
/// starts at `base + (i / height) * slice_pitch + (i % height) * pitch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Default)]
pub struct Rows {
    pub base: DevPtr,
    pub width: u64,
    pub pitch: u64,
    pub height: u64,
    pub slice_pitch: u64,
    pub first: u64,
    pub count: u64,
}

impl Rows {
    /// Where row `i` starts, or `None` when that is not a 64-bit address.
    pub fn row(&self, i: u64) -> Option<DevPtr> {
        let (slice, row) = (i / self.height.max(1), i % self.height.max(1));
        self.base.checked_add(slice.checked_mul(self.slice_pitch)?)?.checked_add(row.checked_mul(self.pitch)?)
    }

    /// The bytes the rows hold together.
    pub fn bytes(&self) -> CuResult<u64> {
        self.width.checked_mul(self.count).ok_or(CuError::INVALID_VALUE)
    }

    /// Checks the shape and returns `[start, end)`, the span every byte of the rows lies in:
    /// rows are not empty and never overlap the next one (within a slice, `pitch >= width`;
    /// across slices, a slice's first row starts after the previous slice's last row ends), so
    /// each row starts after the one before it and the span covers them all.
    pub fn span(&self) -> CuResult<(DevPtr, DevPtr)> {
        let bad = CuError::INVALID_VALUE;
        if self.width == 0 || self.height == 0 || self.count == 0 {
            return Err(bad);
        }
        let last = self.first.checked_add(self.count - 1).ok_or(bad)?;
        let within = (self.first % self.height) + self.count;
        if self.height > 1 && self.count > 1 && self.pitch < self.width {
            return Err(bad);
        }
        if within > self.height {
            // The rows reach into a later slice.
            let last_row_end = (self.height - 1).checked_mul(self.pitch).and_then(|o| o.checked_add(self.width)).ok_or(bad)?;
            if self.slice_pitch < last_row_end {
                return Err(bad);
            }
        }
        let start = self.row(self.first).ok_or(bad)?;
        let end = self.row(last).and_then(|r| r.checked_add(self.width)).ok_or(bad)?;
        Ok((start, end))
    }

    /// The rows as maximal runs of contiguous bytes, each `(address, offset in the packed rows,
    /// length)`, in order; call after [`Rows::span`] succeeded.
    pub fn runs(&self) -> impl Iterator<Item = (DevPtr, u64, u64)> + '_ {
        let mut i = 0;
        std::iter::from_fn(move || {
            if i >= self.count {
                return None;
            }
            let start = self.row(self.first + i)?;
            let offset = i * self.width;
            let mut len = self.width;
            i += 1;
            while i < self.count && self.row(self.first + i) == Some(start + len) {
                len += self.width;
                i += 1;
            }
            Some((start, offset, len))
        })
    }

    /// Pairs of runs for a copy from `src` to `self` (same width and count): `(dst, src, len)`,
    /// merged where both sides are contiguous.
    pub fn runs_with<'a>(&'a self, src: &'a Rows) -> impl Iterator<Item = (DevPtr, DevPtr, u64)> + 'a {
        let mut i = 0;
        std::iter::from_fn(move || {
            if i >= self.count {
                return None;
            }
            let (d, s) = (self.row(self.first + i)?, src.row(src.first + i)?);
            let mut len = self.width;
            i += 1;
            while i < self.count && self.row(self.first + i) == Some(d + len) && src.row(src.first + i) == Some(s + len) {
                len += self.width;
                i += 1;
            }
            Some((d, s, len))
        })
    }
}

/// A launch's geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Default)]
pub struct LaunchDims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_mem_bytes: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_span_and_runs() {
        // 4 rows of 8 bytes, 16 apart, 2 to a slice, slices 100 apart, from 1000.
        let r = Rows { base: 1000, width: 8, pitch: 16, height: 2, slice_pitch: 100, first: 0, count: 4 };
        assert_eq!(r.span(), Ok((1000, 1124)));
        assert_eq!(r.runs().collect::<Vec<_>>(), vec![(1000, 0, 8), (1016, 8, 8), (1100, 16, 8), (1116, 24, 8)]);
        // Contiguous rows merge, across slices too; a later part of the same box starts where it should.
        let flat = Rows { pitch: 8, slice_pitch: 16, ..r };
        assert_eq!(flat.runs().collect::<Vec<_>>(), vec![(1000, 0, 32)]);
        assert_eq!(Rows { first: 1, count: 2, ..r }.runs().collect::<Vec<_>>(), vec![(1016, 0, 8), (1100, 8, 8)]);
        let dst = Rows { base: 0, pitch: 8, slice_pitch: 16, ..r };
        assert_eq!(dst.runs_with(&r).collect::<Vec<_>>(), vec![(0, 1000, 8), (8, 1016, 8), (16, 1100, 8), (24, 1116, 8)]);
        assert_eq!(dst.runs_with(&flat).collect::<Vec<_>>(), vec![(0, 1000, 32)]);
        // Shapes where rows would overlap or addresses overflow are refused.
        assert_eq!(Rows { pitch: 4, ..r }.span(), Err(CuError::INVALID_VALUE));
        assert_eq!(Rows { slice_pitch: 20, ..r }.span(), Err(CuError::INVALID_VALUE));
        assert_eq!(Rows { base: u64::MAX - 64, ..r }.span(), Err(CuError::INVALID_VALUE));
        assert_eq!(Rows { height: 0, ..r }.span(), Err(CuError::INVALID_VALUE));
        // One slice: its pitch does not matter.
        assert_eq!(Rows { count: 2, slice_pitch: 0, ..r }.span(), Ok((1000, 1024)));
    }

    #[test]
    fn default_pools_are_never_minted_handles() {
        for dev in 0..8 {
            let p = MemPool::default_of(dev);
            assert_eq!(p.default_device(), Some(dev));
            assert!(p.0 < 0x1000 && !p.0.is_multiple_of(0x10));
        }
        assert_eq!(MemPool(0x1000).default_device(), None);
        assert_eq!(MemPool(0x1008).default_device(), None);
        assert_eq!(MemPool::NULL.default_device(), None);
    }
}
