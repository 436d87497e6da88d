//! Exports written by hand: those answered in the shim, those that mint handles, and those that
//! carry buffers or need care. Each file holds one family of the driver API.
#![allow(non_snake_case)]

pub mod callbacks;
pub mod context;
pub mod device;
pub mod init;
pub mod launch;
pub mod link;
pub mod memcpy3d;
pub mod memory;
pub mod mempool;
pub mod module;
pub mod occupancy;
pub mod pitch;
pub mod pointer;
pub mod runtime_support;
pub mod stream;

pub use crate::ffi::CUresult;
pub use std::ffi::{c_char, c_int, c_uint, c_void};

/// `CUdeviceptr`.
pub type CUdeviceptr = u64;
/// Any of the driver's opaque handle types (`CUcontext`, `CUstream`, …).
pub type Handle = *mut c_void;
