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

/// A launch's geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Default)]
pub struct LaunchDims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_mem_bytes: u32,
}
