//! The error type of the emulated device, with the CUresult code each maps to.

/// An error of the emulated GPU. `cuda_code()` gives the matching `CUresult` number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmuError {
    #[error("out of device memory")]
    OutOfMemory,
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// The message names the offending instruction or directive and its line.
    #[error("invalid PTX: {0}")]
    InvalidPtx(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// A load or store outside any allocation.
    #[error("illegal address: {0}")]
    IllegalAddress(String),
    #[error("misaligned address: {0}")]
    MisalignedAddress(String),
    /// `trap` (CUDA_ERROR_LAUNCH_FAILED) or a failed device `assert` (CUDA_ERROR_ASSERT):
    /// an assert's message starts with `assert`.
    #[error("kernel trap or assert: {0}")]
    Trap(String),
    #[error("too many resources requested for launch: {0}")]
    OutOfResources(String),
    #[error("invalid launch configuration: {0}")]
    InvalidConfiguration(String),
    #[error("launch timed out (watchdog): {0}")]
    Timeout(String),
    #[error("not supported: {0}")]
    Unsupported(String),
}

impl EmuError {
    /// The `CUresult` value a real driver would return for this error.
    pub fn cuda_code(&self) -> u32 {
        match self {
            EmuError::OutOfMemory => 2,
            EmuError::InvalidValue(_) => 1,
            EmuError::InvalidPtx(_) => 218,
            EmuError::NotFound(_) => 500,
            EmuError::IllegalAddress(_) => 700,
            EmuError::MisalignedAddress(_) => 716,
            EmuError::Trap(m) => {
                if m.starts_with("assert") {
                    710
                } else {
                    719
                }
            }
            EmuError::OutOfResources(_) => 701,
            // Bad dimensions are CUDA_ERROR_INVALID_VALUE on the driver API.
            EmuError::InvalidConfiguration(_) => 1,
            EmuError::Timeout(_) => 702,
            EmuError::Unsupported(_) => 801,
        }
    }
}
