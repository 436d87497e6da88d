//! The process's one client: its connection, what the welcome told it, and the objects it has
//! minted handles for. Created by `cuInit`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use cuwire_protocol::handshake::{self, DeviceInfo, Welcome};
use cuwire_protocol::{CallKind, Ctx, CuError, FunctionInfo, ModuleInfo, Reply, Request};

use crate::config::Config;
use crate::context;
use crate::lane::{Lane, Ticket};
use crate::transport;

/// A device as the tenant sees it, with its attributes ready for lookup.
pub struct Device {
    pub info: DeviceInfo,
    pub attributes: HashMap<i32, i32>,
}

/// What the shim knows of a context it minted.
#[derive(Debug, Clone, Copy)]
pub struct CtxInfo {
    pub device: i32,
    pub flags: u32,
    pub primary: bool,
}

/// A device's primary context, as the shim tracks it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Primary {
    pub ctx: u64,
    pub refs: u32,
    pub flags: u32,
}

/// A loaded module (or library): what the server said about it, and the function handles
/// already minted for its entry points.
pub struct ModuleRec {
    pub info: Arc<ModuleInfo>,
    pub ctx: Ctx,
    pub functions: HashMap<String, u64>,
}

/// A kernel of a library: its entry point, and the function it became in each context.
pub struct KernelRec {
    pub library: u64,
    pub info: Arc<FunctionInfo>,
    pub per_ctx: HashMap<u64, u64>,
}

/// Everything the shim minted a handle for.
#[derive(Default)]
pub struct Objects {
    pub contexts: HashMap<u64, CtxInfo>,
    pub primary: Vec<Primary>,
    pub modules: HashMap<u64, ModuleRec>,
    pub libraries: HashMap<u64, ModuleRec>,
    pub functions: HashMap<u64, Arc<FunctionInfo>>,
    pub kernels: HashMap<u64, KernelRec>,
    /// Page-locked host allocations (cuMemAllocHost / cuMemHostAlloc): address -> size.
    pub host_allocs: BTreeMap<usize, usize>,
    /// Host ranges registered with cuMemHostRegister: address -> size.
    pub host_registered: BTreeMap<usize, usize>,
}

pub struct Client {
    pub lane: Lane,
    pub driver_version: i32,
    pub tenant: String,
    pub session: u64,
    pub devices: Vec<Device>,
    next_handle: AtomicU64,
    objects: Mutex<Objects>,
    pid: u32,
}

static CLIENT: OnceLock<Result<Client, CuError>> = OnceLock::new();

/// The client, once `cuInit` succeeded; `CUDA_ERROR_NOT_INITIALIZED` before. After a `fork`
/// the child must not write on its parent's connection: its calls fail as the real driver's do.
pub fn get() -> Result<&'static Client, CuError> {
    match CLIENT.get() {
        Some(Ok(c)) => {
            if FORKED.load(Ordering::Relaxed) {
                return Err(CuError::NOT_INITIALIZED);
            }
            if c.lane.transport().is_dead() {
                return Err(crate::lane::CONNECTION_LOST);
            }
            Ok(c)
        }
        Some(Err(e)) => Err(*e),
        None => Err(CuError::NOT_INITIALIZED),
    }
}

/// Whether cuInit has succeeded (without the liveness checks of [`get`]).
pub fn initialized() -> Option<&'static Client> {
    match CLIENT.get() {
        Some(Ok(c)) => Some(c),
        _ => None,
    }
}

/// `cuInit`: connects once; later calls return the first outcome.
pub fn init() -> Result<&'static Client, CuError> {
    let result = CLIENT.get_or_init(|| {
        crate::stats::enable_from_env();
        let client = connect();
        if client.is_ok() {
            // SAFETY: registering a plain extern "C" fn with atexit has no preconditions.
            unsafe { libc::atexit(at_exit) };
            // SAFETY: registering a plain extern "C" fn (no prepare/parent handlers) has no
            // preconditions; the handler only stores to an atomic, which is async-signal-safe.
            unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
        }
        client
    });
    match result {
        Ok(c) => Ok(c),
        Err(e) => Err(*e),
    }
}

/// Set in a child forked after cuInit: the connection is the parent's, and every call fails
/// as the real driver's do after fork. A flag rather than comparing getpid() on every call,
/// which is a system call (glibc no longer caches it) on the launch path.
static FORKED: AtomicBool = AtomicBool::new(false);

extern "C" fn forked_child() {
    FORKED.store(true, Ordering::Relaxed);
}

extern "C" fn at_exit() {
    if let Some(c) = initialized() {
        if c.pid == std::process::id() {
            c.lane.transport().close();
        }
    }
    // After the close, so that the connection's own figures are in.
    crate::stats::print();
}

fn connect() -> Result<Client, CuError> {
    let cfg = Config::from_env().map_err(|e| {
        eprintln!("cuwire: cuInit failed: {e}");
        CuError(cuwire_protocol::cuda::CUDA_ERROR_NO_DEVICE)
    })?;
    let session = transport::connect(&cfg).map_err(|e| {
        eprintln!("cuwire: cuInit failed: cannot reach the pool at CUWIRE_SERVER={}: {e}", cfg.server);
        if e.contains("refused this client's certificate") || e.contains("certificate") {
            CuError::NOT_PERMITTED
        } else {
            CuError(cuwire_protocol::cuda::CUDA_ERROR_NO_DEVICE)
        }
    })?;
    match session.welcome {
        Welcome::Refused { reason } => {
            eprintln!("cuwire: cuInit failed: the pool at {} refused this client: {reason}", cfg.server);
            if reason.contains("protocol version") {
                Err(CuError(cuwire_protocol::cuda::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH))
            } else {
                Err(CuError::NOT_PERMITTED)
            }
        }
        Welcome::Accepted { protocol_version, session: id, tenant, driver_version, devices, .. } => {
            if let Err(e) = handshake::check_version(handshake::PROTOCOL_VERSION, protocol_version, "server") {
                eprintln!("cuwire: cuInit failed: {e}");
                return Err(CuError(cuwire_protocol::cuda::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH));
            }
            let primary = vec![Primary::default(); devices.len()];
            let devices = devices.into_iter().map(|info| Device { attributes: info.attributes.iter().copied().collect(), info }).collect();
            Ok(Client {
                lane: Lane::new(session.transport),
                driver_version,
                tenant,
                session: id,
                devices,
                next_handle: AtomicU64::new(0x1000),
                objects: Mutex::new(Objects { primary, ..Default::default() }),
                pid: std::process::id(),
            })
        }
    }
}

impl Client {
    /// A fresh handle value, unique in this process (never reused, never a default stream).
    pub fn mint(&self) -> u64 {
        self.next_handle.fetch_add(0x10, Ordering::Relaxed)
    }

    pub fn objects(&self) -> MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn device(&self, ordinal: i32) -> Result<&Device, CuError> {
        usize::try_from(ordinal).ok().and_then(|i| self.devices.get(i)).ok_or(CuError::INVALID_DEVICE)
    }

    /// Sends a call on behalf of the calling thread's current context.
    pub fn submit(&self, kind: CallKind, request: Request, payload: Bytes) -> Result<Option<Ticket>, CuError> {
        self.lane.submit(context::current(), kind, request, payload)
    }

    /// Sends a call and waits for its answer.
    pub fn call(&self, kind: CallKind, request: Request, payload: Bytes) -> Result<(Reply, Bytes), CuError> {
        self.lane.call(context::current(), kind, request, payload)
    }

    /// Sends a device-to-host copy whose data the I/O thread writes into `dst` (see
    /// [`Lane::submit_to_host`]).
    pub fn submit_to_host(&self, kind: CallKind, waited: bool, request: Request, dst: crate::transport::HostDst) -> Result<(), CuError> {
        self.lane.submit_to_host(context::current(), kind, waited, request, dst)
    }

    /// Sends a fire-and-forget call.
    pub fn send(&self, request: Request, payload: Bytes) -> Result<(), CuError> {
        self.lane.submit(context::current(), CallKind::Async, request, payload).map(|_| ())
    }

    /// The device of the calling thread's current context.
    pub fn current_device(&self) -> Result<i32, CuError> {
        let ctx = context::current();
        if ctx.is_null() {
            return Err(CuError::INVALID_CONTEXT);
        }
        self.objects().contexts.get(&ctx.0).map(|c| c.device).ok_or(CuError::INVALID_CONTEXT)
    }
}

/// Unpacks the reply of a known call, or reports a protocol error.
#[macro_export]
macro_rules! expect_reply {
    ($reply:expr, $name:ident) => {
        match $reply {
            cuwire_protocol::Reply::$name(rep) => Ok(rep),
            _ => Err(cuwire_protocol::CuError::UNKNOWN),
        }
    };
}
