//! An emulated GPU on the CPU that executes real PTX: device memory, a PTX parser and
//! pre-decoder, and an interpreter running warps of 32 lanes. It is the `emu` backend of
//! `cuwired`, so the whole stack runs and is tested on machines without a GPU.
//!
//! # Pieces
//! - [`DeviceMemory`]: one device's memory. Lazy 64 KiB pages of atomic words, so a 4 GiB
//!   device costs only what is touched, and any number of CTA worker threads and streams
//!   can use it at once (`Send + Sync`, share it with `Arc`). Host copies and memsets check
//!   that the whole range lies in one allocation (`InvalidValue` otherwise, as the driver
//!   answers for copies). Freed memory is never seen again: new allocations start zeroed
//!   and addresses are not reused until the device's 1 TiB address window is exhausted.
//! - [`Module`]: a loaded PTX module (text, possibly NUL-terminated, or a fatbinary that
//!   carries uncompressed PTX). Loading parses, allocates and initialises the module's
//!   `.global`/`.const` variables, and pre-decodes every kernel with the `.func`s it calls
//!   inlined. Anything the interpreter cannot run is refused *here* with
//!   `InvalidPtx` (CUDA_ERROR_INVALID_PTX) naming the instruction and its line, never in
//!   the middle of a launch. [`KernelInfo::params`] is the parameter buffer layout
//!   (what cuFuncGetParamInfo reports).
//! - [`launch`]: runs a kernel to completion on the calling thread, spreading CTAs over a
//!   thread pool ([`ExecOptions::worker_threads`], 0 = all cores). Launches may run
//!   concurrently from several threads on the same memory and module.
//!
//! # Launch behaviour the server relies on
//! - The configuration is validated first, with the driver's errors: zero or too large
//!   dimensions `InvalidConfiguration` (code 1), more threads than 1024 / `.maxntid`, or
//!   more shared memory than 48 KiB (163 KiB after [`Module::set_max_dynamic_shared`]),
//!   `OutOfResources` (701); a too short parameter buffer `InvalidValue`; an unknown kernel
//!   `NotFound`.
//! - Faults end the launch with an error and stop the other CTAs soon: a load/store outside
//!   every allocation `IllegalAddress` (700), a misaligned one `MisalignedAddress` (716),
//!   `trap` `Trap` (719, CUDA_ERROR_LAUNCH_FAILED), a failed device `assert`
//!   (`__assertfail`) `Trap` with a message starting `assert` (710, CUDA_ERROR_ASSERT), a
//!   launch running past [`ExecOptions::watchdog`] `Timeout` (702). Stores made before the
//!   fault stay, as on a GPU. Making the error sticky for the context is the caller's job.
//! - Device `printf` (`vprintf`) text is returned in [`LaunchOutput::printf`], in the order
//!   it was produced (lanes of a warp in lane order; CTAs interleave as they ran), capped
//!   at 1 MiB per launch like the device's printf buffer. Print it at the next
//!   synchronisation. [`launch_with_output`] also returns the text of a launch that failed
//!   (what was printed before the fault, and a GPU's `Assertion ... failed.` line).
//! - Nothing panics on any input: hostile modules get `InvalidPtx`, hostile launches an
//!   error (interpreter state per block is bounded, see [`exec::MAX_CTA_STATE_BYTES`]).
//!
//! # Execution model
//! Each CTA runs on one worker thread; its warps are interleaved there (a warp runs until it
//! reaches a barrier, exits, or uses up a time slice), so `bar.sync`, shared memory and
//! shared-memory atomics need no locking. Divergence uses per-lane PCs with min-PC
//! scheduling: the lanes at the lowest PC run, and lanes meet again when the others reach
//! their PC. Global memory is shared between workers through relaxed atomic words; `atom`
//! and `red` are compare-exchange loops on the containing word.
#![forbid(unsafe_code)]

mod decode;
mod error;
pub mod exec;
pub mod memory;
pub mod module;
mod ops;
mod ptx;

pub use error::EmuError;
pub use exec::{launch, launch_with_output, ExecOptions, LaunchConfig, LaunchOutput};
pub use memory::DeviceMemory;
pub use module::{FuncAttributes, GlobalVar, KernelInfo, Module, ParamInfo};
