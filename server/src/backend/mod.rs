//! The backend boundary: what a GPU (real or emulated) must do for cuwire. Backends know nothing
//! of tenants, sessions or TLS; they get plain objects and return plain results. Every object a
//! backend hands out is named by an opaque `u64` of its own; the session keeps the table from
//! the client's handles to these and checks every use.

pub mod cuda;
pub mod emu;
pub mod staging;

use bytes::Bytes;
use cuwire_protocol::handshake::DeviceInfo;
use cuwire_protocol::{CuError, CuResult, DevPtr, FunctionInfo, LaunchDims};

/// A backend object: a context, stream, event, module or function.
pub type Id = u64;

/// The default stream of a context (the backend's own stream 0).
pub const DEFAULT_STREAM: Id = 0;

/// What a module load yields.
pub struct LoadedModule {
    pub id: Id,
    pub functions: Vec<FunctionInfo>,
    /// Device memory the module's variables (`.global`, `.const`) took, as far as the backend
    /// can tell (0 when it cannot): counted against the tenant's quota.
    pub global_bytes: u64,
}

/// One GPU pool's devices, as a backend sees them. All methods may be called from several
/// session threads at once.
pub trait Backend: Send + Sync {
    /// A short name for logs (`emu`, `cuda`).
    fn kind(&self) -> &'static str;
    /// True when every launch, copy and memset has finished by the time its call returns (the
    /// emulated GPU), so a synchronize on an idle session never waits. The listener then
    /// answers such calls on its own thread (see `listener::answers_inline`).
    fn device_work_finishes_in_call(&self) -> bool {
        false
    }
    fn driver_version(&self) -> i32;
    fn device_count(&self) -> usize;
    /// Name, UUID, memory and every attribute of a device.
    fn device_info(&self, dev: usize) -> DeviceInfo;
    fn device_attribute(&self, dev: usize, attrib: i32) -> CuResult<i32>;
    /// Free and total memory of a device as the backend sees it.
    fn mem_info(&self, dev: usize) -> CuResult<(u64, u64)>;

    fn ctx_create(&self, dev: usize, flags: u32) -> CuResult<Id>;
    /// Destroys a context and everything in it (memory, streams, events, modules).
    fn ctx_destroy(&self, ctx: Id) -> CuResult<()>;
    /// Waits for all work of the context.
    fn ctx_synchronize(&self, ctx: Id) -> CuResult<()>;

    fn mem_alloc(&self, ctx: Id, bytes: u64) -> CuResult<DevPtr>;
    fn mem_free(&self, ctx: Id, ptr: DevPtr) -> CuResult<()>;
    fn memcpy_htod(&self, ctx: Id, stream: Id, dst: DevPtr, data: Bytes) -> CuResult<()>;
    fn memcpy_dtoh(&self, ctx: Id, stream: Id, src: DevPtr, bytes: u64) -> CuResult<Bytes>;
    fn memcpy_dtod(&self, ctx: Id, stream: Id, dst: DevPtr, src: DevPtr, bytes: u64) -> CuResult<()>;
    fn memset(&self, ctx: Id, stream: Id, dst: DevPtr, value: u32, elem_size: u8, count: u64) -> CuResult<()>;

    fn stream_create(&self, ctx: Id, flags: u32, priority: i32) -> CuResult<Id>;
    fn stream_destroy(&self, ctx: Id, stream: Id) -> CuResult<()>;
    fn stream_synchronize(&self, ctx: Id, stream: Id) -> CuResult<()>;
    /// `Ok(true)` when all work is done, `Ok(false)` when not yet.
    fn stream_query(&self, ctx: Id, stream: Id) -> CuResult<bool>;
    fn stream_wait_event(&self, ctx: Id, stream: Id, event: Id, flags: u32) -> CuResult<()>;

    fn event_create(&self, ctx: Id, flags: u32) -> CuResult<Id>;
    fn event_destroy(&self, ctx: Id, event: Id) -> CuResult<()>;
    fn event_record(&self, ctx: Id, event: Id, stream: Id) -> CuResult<()>;
    fn event_synchronize(&self, ctx: Id, event: Id) -> CuResult<()>;
    fn event_query(&self, ctx: Id, event: Id) -> CuResult<bool>;
    fn event_elapsed(&self, ctx: Id, start: Id, end: Id) -> CuResult<f32>;

    /// Loads a module image (PTX, cubin or fatbinary) into a context.
    fn module_load(&self, ctx: Id, image: &[u8]) -> CuResult<LoadedModule> {
        self.module_load_explained(ctx, image).map_err(|(e, _)| e)
    }
    /// [`Backend::module_load`], and on failure why, in the words of whatever compiled the
    /// image (the JIT error log: the emulator's message naming the line, or the driver's
    /// ptxas log); empty when the backend cannot say.
    fn module_load_explained(&self, ctx: Id, image: &[u8]) -> Result<LoadedModule, (CuError, String)>;
    fn module_unload(&self, ctx: Id, module: Id) -> CuResult<()>;
    fn module_function(&self, ctx: Id, module: Id, name: &str) -> CuResult<Id>;
    /// A module variable: its address and size.
    fn module_global(&self, ctx: Id, module: Id, name: &str) -> CuResult<(DevPtr, u64)>;

    fn launch(&self, ctx: Id, func: Id, dims: LaunchDims, stream: Id, params: &[u8]) -> CuResult<()>;
    /// `cuFuncSetAttribute` (`CUfunction_attribute`, value).
    fn func_set_attribute(&self, _ctx: Id, _func: Id, _attrib: i32, _value: i32) -> CuResult<()> {
        Err(CuError::NOT_SUPPORTED)
    }
    /// Text kernels of this context printed since the last call (device printf).
    fn take_output(&self, ctx: Id) -> Vec<u8>;
}
