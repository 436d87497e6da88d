//! An emulated GPU on the CPU that executes real PTX: device memory, a PTX parser and
//! pre-decoder, and an interpreter running warps of 32 lanes.
#![forbid(unsafe_code)]

mod decode;
mod error;
pub mod exec;
pub mod memory;
pub mod module;
mod ops;
mod ptx;

pub use error::EmuError;
pub use exec::{launch, ExecOptions, LaunchConfig, LaunchOutput};
pub use memory::DeviceMemory;
pub use module::{FuncAttributes, GlobalVar, KernelInfo, Module, ParamInfo};
