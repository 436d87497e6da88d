//! One session per client connection: the tenant's own handle tables, pointer checks and the
//! latched error of its lane. This is the server-side meaning of every forwarded call
//! ([`Handler`]); it never trusts the client: every handle is looked up in this session's own
//! tables, every device range is checked against this session's own allocations, and the
//! backend only ever sees objects the session created.
//!
//! The session is sans-IO: [`Session::handle`] takes one call and returns what to send back,
//! so it is tested without a network.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use cuwire_protocol::api::Payload;
use cuwire_protocol::limits::{MAX_COPY_ROWS, MAX_LOAD_LOG, MAX_MEM_POOLS, MAX_NAME, MAX_PAYLOAD};
use cuwire_protocol::{
    calls, dispatch, Call, CallKind, Ctx, CuError, CuResult, DevPtr, Event, Func, Function, Handler, Kernel, Latched, Library, MemPool,
    Module, ModuleInfo, Rows, ServerMsg, Stream,
};

use crate::backend::{Backend, Id, DEFAULT_STREAM};
use crate::config::PoolPolicy;
use crate::pool::Pool;

/// What a session sends back for one call: messages in order, the last one possibly with a
/// payload.
#[derive(Debug, Default)]
pub struct Outcome {
    pub messages: Vec<(ServerMsg, Bytes)>,
}

struct CtxEntry {
    /// Backend device ordinal.
    dev: usize,
    id: Id,
    primary: bool,
    /// A kernel fault poisons the context for good, as on a GPU.
    sticky: Option<CuError>,
}

#[derive(Default, Clone, Copy)]
struct PrimaryEntry {
    ctx: Option<Ctx>,
    refs: u32,
    flags: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RangeKind {
    Allocation,
    /// A module variable (registered when the client looks it up).
    Global(Module),
}

#[derive(Clone, Copy)]
struct Range {
    size: u64,
    ctx: Ctx,
    /// The device it is on (for the tenant's quota).
    dev: usize,
    kind: RangeKind,
    /// The memory pool a stream-ordered allocation came from.
    pool: Option<MemPool>,
}

/// `CUmemPool_attribute` values.
const POOL_REUSE_FOLLOW_EVENT_DEPENDENCIES: i32 = 1;
const POOL_REUSE_ALLOW_INTERNAL_DEPENDENCIES: i32 = 3;
const POOL_RELEASE_THRESHOLD: i32 = 4;
const POOL_RESERVED_MEM_CURRENT: i32 = 5;
const POOL_RESERVED_MEM_HIGH: i32 = 6;
const POOL_USED_MEM_CURRENT: i32 = 7;
const POOL_USED_MEM_HIGH: i32 = 8;

/// A memory pool of the session. Its allocations are ordinary allocations, counted in the
/// tenant's quota like any other; the pool keeps no freed memory for reuse, so what it holds
/// (reserved) is always what is in use, and the release threshold changes nothing.
struct PoolEntry {
    /// The tenant's device and its backend ordinal.
    tenant_dev: i32,
    dev: usize,
    /// `CUmemPoolProps::maxSize` (0: no limit beyond the quota).
    max_size: u64,
    /// The three reuse policies (attributes 1..=3), remembered.
    reuse: [u64; 3],
    release_threshold: u64,
    used: u64,
    used_high: u64,
    reserved_high: u64,
    /// Destroyed while allocations were outstanding: gone once they are freed.
    destroyed: bool,
}

struct LibraryEntry {
    image: Bytes,
    info: ModuleInfo,
    /// The library loaded as a module in each context that used it.
    loaded: HashMap<Ctx, Id>,
}

impl PoolEntry {
    fn new(tenant_dev: i32, dev: usize, max_size: u64) -> Self {
        PoolEntry {
            tenant_dev,
            dev,
            max_size,
            reuse: [1; 3],
            release_threshold: 0,
            used: 0,
            used_high: 0,
            reserved_high: 0,
            destroyed: false,
        }
    }
}

/// Counts of what a session holds, for status and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Holdings {
    pub contexts: usize,
    pub allocations: usize,
    pub bytes: u64,
    pub streams: usize,
    pub events: usize,
    pub modules: usize,
}

/// The session's metric handles, registered once (by function on first use) so the per-call
/// path does no label hashing or registry lookups.
struct SessionMetrics {
    bytes_in: metrics::Counter,
    bytes_out: metrics::Counter,
    by_function: HashMap<Function, CallMetrics>,
}

struct CallMetrics {
    calls: metrics::Counter,
    seconds: metrics::Histogram,
}

impl SessionMetrics {
    fn new(tenant: &str) -> Self {
        SessionMetrics {
            bytes_in: metrics::counter!("cuwire_bytes_in_total", "tenant" => tenant.to_owned()),
            bytes_out: metrics::counter!("cuwire_bytes_out_total", "tenant" => tenant.to_owned()),
            by_function: HashMap::new(),
        }
    }

    fn of(&mut self, tenant: &str, f: Function) -> &CallMetrics {
        self.by_function.entry(f).or_insert_with(|| CallMetrics {
            calls: metrics::counter!("cuwire_calls_total", "tenant" => tenant.to_owned(), "function" => f.name()),
            seconds: metrics::histogram!("cuwire_call_seconds", "function" => f.name()),
        })
    }
}

pub struct Session {
    pub id: u64,
    pub tenant: String,
    backend: Arc<dyn Backend>,
    pool: Arc<Pool>,
    /// The tenant's devices 0..k-1, as backend device ordinals.
    devices: Vec<usize>,
    current: Ctx,
    contexts: HashMap<Ctx, CtxEntry>,
    primary: Vec<PrimaryEntry>,
    streams: HashMap<Stream, (Ctx, Id)>,
    events: HashMap<Event, (Ctx, Id)>,
    modules: HashMap<Module, (Ctx, Id)>,
    functions: HashMap<Func, (Ctx, Id)>,
    libraries: HashMap<Library, LibraryEntry>,
    kernels: HashMap<Kernel, (Library, String)>,
    ranges: BTreeMap<DevPtr, Range>,
    /// Device memory each loaded module's variables hold, counted in the tenant's quota:
    /// (context, device, bytes).
    module_bytes: HashMap<Id, (Ctx, usize, u64)>,
    /// Memory pools: each device's default one, and those the client created.
    mem_pools: HashMap<MemPool, PoolEntry>,
    /// The pool cuMemAllocAsync takes from, by tenant device.
    current_pool: Vec<MemPool>,
    /// Why recent module or library loads failed, by the handle the client gave the load,
    /// until the client asks (LoadLog); the oldest go first.
    load_logs: VecDeque<(u64, String)>,
    latched: Option<Latched>,
    metrics: SessionMetrics,
}

fn ready(done: bool) -> CuResult<()> {
    if done {
        Ok(())
    } else {
        Err(CuError::NOT_READY)
    }
}

fn check_name(name: &str) -> CuResult<()> {
    if name.len() > MAX_NAME {
        Err(CuError::INVALID_VALUE)
    } else {
        Ok(())
    }
}

impl Session {
    /// A session on a pool of its own, without limits (tests, tools).
    pub fn new(id: u64, tenant: String, backend: Arc<dyn Backend>, devices: Vec<usize>) -> Self {
        Self::with_pool(id, tenant, Pool::new(backend, PoolPolicy::default()), devices)
    }

    /// A session of a tenant on a shared pool, on the devices placed for it.
    pub fn with_pool(id: u64, tenant: String, pool: Arc<Pool>, devices: Vec<usize>) -> Self {
        let mem_pools =
            devices.iter().enumerate().map(|(i, dev)| (MemPool::default_of(i as i32), PoolEntry::new(i as i32, *dev, 0))).collect();
        let current_pool = (0..devices.len()).map(|i| MemPool::default_of(i as i32)).collect();
        Session {
            id,
            metrics: SessionMetrics::new(&tenant),
            tenant,
            primary: vec![PrimaryEntry::default(); devices.len()],
            devices,
            backend: pool.backend().clone(),
            pool,
            current: Ctx::NULL,
            contexts: HashMap::new(),
            streams: HashMap::new(),
            events: HashMap::new(),
            modules: HashMap::new(),
            functions: HashMap::new(),
            libraries: HashMap::new(),
            kernels: HashMap::new(),
            ranges: BTreeMap::new(),
            module_bytes: HashMap::new(),
            mem_pools,
            current_pool,
            load_logs: VecDeque::new(),
            latched: None,
        }
    }

    /// Runs one call and says what to send back.
    /// See [`crate::backend::Backend::device_work_finishes_in_call`].
    pub fn backend_work_finishes_in_call(&self) -> bool {
        self.backend.device_work_finishes_in_call()
    }

    pub fn handle(&mut self, call: Call, payload: Bytes) -> Outcome {
        let Call { seq, ctx, kind, request } = call;
        let function = request.function();
        self.current = ctx;
        let bytes_in = payload.len();
        let mut io = Payload { input: payload, output: Bytes::new() };
        let started = std::time::Instant::now();
        let result = dispatch(self, request, &mut io);
        let m = self.metrics.of(&self.tenant, function);
        m.calls.increment(1);
        m.seconds.record(started.elapsed().as_secs_f64());
        self.metrics.bytes_in.increment(bytes_in as u64);
        self.metrics.bytes_out.increment(io.output.len() as u64);
        if let Err(e) = &result {
            let tenant = self.tenant.clone();
            metrics::counter!("cuwire_call_errors_total", "tenant" => tenant, "function" => function.name(), "error" => e.name())
                .increment(1);
        }
        let mut out = Outcome::default();
        match kind {
            CallKind::Async => {
                if let Err(error) = result {
                    tracing::debug!(session = self.id, seq, function = function.name(), %error, "fire-and-forget call failed; latched");
                    if self.latched.is_none() {
                        self.latched = Some(Latched { error, seq, function: function.name().into() });
                    }
                }
            }
            CallKind::Sync | CallKind::Barrier => {
                let latched = if kind == CallKind::Barrier { self.latched.take() } else { None };
                if kind == CallKind::Barrier {
                    let text = self.take_output();
                    if !text.is_empty() {
                        out.messages.push((ServerMsg::Stdout(text), Bytes::new()));
                    }
                }
                let payload = if result.is_ok() { std::mem::take(&mut io.output) } else { Bytes::new() };
                out.messages.push((ServerMsg::Reply { seq, result, latched }, payload));
            }
        }
        out
    }

    /// Device printf text of every context of the session.
    fn take_output(&mut self) -> Vec<u8> {
        let mut text = Vec::new();
        for c in self.contexts.values() {
            text.extend(self.backend.take_output(c.id));
        }
        text
    }

    /// What the session holds right now.
    pub fn holdings(&self) -> Holdings {
        let allocs: Vec<&Range> = self.ranges.values().filter(|r| r.kind == RangeKind::Allocation).collect();
        Holdings {
            contexts: self.contexts.len(),
            allocations: allocs.len(),
            bytes: allocs.iter().map(|r| r.size).sum(),
            streams: self.streams.len(),
            events: self.events.len(),
            modules: self.modules.len(),
        }
    }

    /// Frees everything the session holds (the client went away).
    pub fn close(&mut self) {
        let ctxs: Vec<Ctx> = self.contexts.keys().copied().collect();
        for ctx in ctxs {
            let _ = self.destroy_ctx(ctx);
        }
        self.contexts.clear();
        self.streams.clear();
        self.events.clear();
        self.modules.clear();
        self.functions.clear();
        self.libraries.clear();
        self.kernels.clear();
        self.ranges.clear();
        self.mem_pools.clear();
    }

    // ---- lookups: every client handle goes through these

    fn device(&self, dev: i32) -> CuResult<usize> {
        usize::try_from(dev).ok().and_then(|d| self.devices.get(d).copied()).ok_or(CuError::INVALID_DEVICE)
    }

    fn ctx_entry(&self, ctx: Ctx) -> CuResult<&CtxEntry> {
        let c = self.contexts.get(&ctx).ok_or(CuError::INVALID_CONTEXT)?;
        match c.sticky {
            Some(e) => Err(e),
            None => Ok(c),
        }
    }

    /// The current context's backend id.
    fn cur(&self) -> CuResult<Id> {
        self.ctx_entry(self.current).map(|c| c.id)
    }

    /// Marks a context poisoned when the backend reports a sticky fault.
    fn note<T>(&mut self, ctx: Ctx, r: CuResult<T>) -> CuResult<T> {
        if let Err(e) = &r {
            if e.is_sticky() {
                if let Some(c) = self.contexts.get_mut(&ctx) {
                    c.sticky.get_or_insert(*e);
                }
            }
        }
        r
    }

    /// The context and backend stream an operation on `stream` runs in: the stream's own
    /// context for a created stream, the current context for a default stream.
    fn stream(&self, stream: Stream) -> CuResult<(Ctx, Id, Id)> {
        if stream.is_default() {
            let ctx = self.current;
            return Ok((ctx, self.ctx_entry(ctx)?.id, DEFAULT_STREAM));
        }
        let (ctx, id) = *self.streams.get(&stream).ok_or(CuError::INVALID_HANDLE)?;
        Ok((ctx, self.ctx_entry(ctx)?.id, id))
    }

    fn event(&self, event: Event) -> CuResult<(Ctx, Id, Id)> {
        let (ctx, id) = *self.events.get(&event).ok_or(CuError::INVALID_HANDLE)?;
        Ok((ctx, self.ctx_entry(ctx)?.id, id))
    }

    /// Checks that `[ptr, ptr+len)` lies inside one of this session's allocations (or looked-up
    /// module variables) of context `ctx`.
    fn check_range(&self, ctx: Ctx, ptr: DevPtr, len: u64) -> CuResult<()> {
        let (base, r) = self.ranges.range(..=ptr).next_back().ok_or(CuError::INVALID_VALUE)?;
        let end = ptr.checked_add(len).ok_or(CuError::INVALID_VALUE)?;
        if r.ctx == ctx && end <= base + r.size {
            Ok(())
        } else {
            Err(CuError::INVALID_VALUE)
        }
    }

    fn new_handle<K: std::hash::Hash + Eq, V>(map: &HashMap<K, V>, k: &K, null: bool) -> CuResult<()> {
        if null || map.contains_key(k) {
            Err(CuError::INVALID_VALUE)
        } else {
            Ok(())
        }
    }

    fn destroy_ctx(&mut self, ctx: Ctx) -> CuResult<()> {
        let entry = self.contexts.remove(&ctx).ok_or(CuError::INVALID_CONTEXT)?;
        let (pool, tenant) = (self.pool.clone(), self.tenant.clone());
        let mut from_pools = Vec::new();
        for r in self.ranges.values().filter(|r| r.ctx == ctx && r.kind == RangeKind::Allocation) {
            pool.release_memory(&tenant, r.dev, r.size);
            from_pools.extend(r.pool.map(|p| (p, r.size)));
        }
        for (p, size) in from_pools {
            self.pool_release(p, size);
        }
        for _ in self.streams.values().filter(|(c, _)| *c == ctx) {
            pool.release_stream(&tenant);
        }
        pool.release_context(&tenant);
        for (_, (_, dev, bytes)) in self.module_bytes.iter().filter(|(_, (c, _, _))| *c == ctx) {
            pool.release_memory(&tenant, *dev, *bytes);
        }
        self.module_bytes.retain(|_, (c, _, _)| *c != ctx);
        self.streams.retain(|_, (c, _)| *c != ctx);
        self.events.retain(|_, (c, _)| *c != ctx);
        self.modules.retain(|_, (c, _)| *c != ctx);
        self.functions.retain(|_, (c, _)| *c != ctx);
        self.ranges.retain(|_, r| r.ctx != ctx);
        for lib in self.libraries.values_mut() {
            lib.loaded.remove(&ctx);
        }
        self.backend.ctx_destroy(entry.id)
    }

    /// Loads an image into a context, counting its variables against the tenant's quota; over
    /// quota, the module is unloaded again and the load fails with CUDA_ERROR_OUT_OF_MEMORY.
    fn load_counted(&mut self, ctx: Ctx, image: &[u8]) -> CuResult<crate::backend::LoadedModule> {
        self.load_counted_logged(ctx, image, None)
    }

    /// [`Session::load_counted`], keeping the backend's explanation of a failure under the
    /// client's handle for the load (`log_key`) until the client asks for it.
    fn load_counted_logged(&mut self, ctx: Ctx, image: &[u8], log_key: Option<u64>) -> CuResult<crate::backend::LoadedModule> {
        let entry = self.ctx_entry(ctx)?;
        let (cid, dev) = (entry.id, entry.dev);
        let loaded = match self.backend.module_load_explained(cid, image) {
            Ok(loaded) => loaded,
            Err((e, text)) => {
                if let Some(key) = log_key {
                    self.keep_load_log(key, text);
                }
                return Err(e);
            }
        };
        if loaded.global_bytes > 0 {
            if let Err(e) = self.pool.reserve_memory(&self.tenant, dev, loaded.global_bytes) {
                let _ = self.backend.module_unload(cid, loaded.id);
                return Err(e);
            }
            self.module_bytes.insert(loaded.id, (ctx, dev, loaded.global_bytes));
        }
        Ok(loaded)
    }

    /// A pool's allocation of `size` bytes went away.
    fn pool_release(&mut self, pool: MemPool, size: u64) {
        if let Some(p) = self.mem_pools.get_mut(&pool) {
            p.used = p.used.saturating_sub(size);
            if p.destroyed && p.used == 0 {
                self.mem_pools.remove(&pool);
            }
        }
    }

    /// Frees one of this session's own allocations, given its base (cuMemFree, cuMemFreeAsync).
    fn free_allocation(&mut self, dptr: DevPtr) -> CuResult<()> {
        let r = *self.ranges.get(&dptr).filter(|r| r.kind == RangeKind::Allocation).ok_or(CuError::INVALID_VALUE)?;
        let id = self.ctx_entry(r.ctx)?.id;
        self.backend.mem_free(id, dptr)?;
        self.ranges.remove(&dptr);
        self.pool.release_memory(&self.tenant, r.dev, r.size);
        if let Some(p) = r.pool {
            self.pool_release(p, r.size);
        }
        Ok(())
    }

    /// A live (not destroyed) pool of the session.
    fn mem_pool(&mut self, pool: MemPool) -> CuResult<&mut PoolEntry> {
        self.mem_pools.get_mut(&pool).filter(|p| !p.destroyed).ok_or(CuError::INVALID_VALUE)
    }

    /// Checks a 2-D/3-D copy's rows against context `ctx`'s allocations: the span they lie in
    /// must be inside one allocation (or module variable). Returns the bytes they hold.
    fn check_rows(&self, ctx: Ctx, rows: &Rows) -> CuResult<u64> {
        if rows.count > MAX_COPY_ROWS {
            return Err(CuError::INVALID_VALUE);
        }
        let (start, end) = rows.span()?;
        self.check_range(ctx, start, end - start)?;
        rows.bytes()
    }

    /// Gives a module's variables back to the quota.
    fn uncount_module(&mut self, module: Id) {
        if let Some((_, dev, bytes)) = self.module_bytes.remove(&module) {
            self.pool.release_memory(&self.tenant, dev, bytes);
        }
    }

    /// Loads a library into a context on first use there.
    /// Keeps the backend's explanation of a failed load under the client's handle for it.
    fn keep_load_log(&mut self, key: u64, mut text: String) {
        if text.is_empty() {
            return;
        }
        if text.len() > MAX_LOAD_LOG {
            let mut cut = MAX_LOAD_LOG;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        if self.load_logs.len() >= 8 {
            self.load_logs.pop_front();
        }
        self.load_logs.push_back((key, text));
    }

    /// Checks and describes a library loaded while no context is current (libcudart 13 loads
    /// the fatbinaries nvcc registered in its first runtime call, before it has a context): in
    /// a scratch context on the session's first device, thrown away after. The library is then
    /// loaded into each context on first use ([`Session::library_module`]).
    fn describe_library(&mut self, image: &[u8], log_key: u64) -> CuResult<ModuleInfo> {
        let dev = *self.devices.first().ok_or(CuError::INVALID_DEVICE)?;
        let cid = self.backend.ctx_create(dev, 0)?;
        let loaded = self.backend.module_load_explained(cid, image);
        if let Ok(m) = &loaded {
            let _ = self.backend.module_unload(cid, m.id);
        }
        let _ = self.backend.ctx_destroy(cid);
        match loaded {
            Ok(m) => Ok(ModuleInfo { functions: m.functions, globals: Vec::new() }),
            Err((e, text)) => {
                self.keep_load_log(log_key, text);
                Err(e)
            }
        }
    }

    fn library_module(&mut self, library: Library, ctx: Ctx) -> CuResult<Id> {
        self.ctx_entry(ctx)?;
        let lib = self.libraries.get(&library).ok_or(CuError::INVALID_HANDLE)?;
        if let Some(id) = lib.loaded.get(&ctx) {
            return Ok(*id);
        }
        let image = lib.image.clone();
        let loaded = self.load_counted(ctx, &image)?;
        self.libraries.get_mut(&library).expect("checked").loaded.insert(ctx, loaded.id);
        Ok(loaded.id)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

#[allow(non_snake_case)]
impl Handler for Session {
    fn cuDeviceGetAttribute(
        &mut self,
        req: calls::cuDeviceGetAttribute::Req,
        _: &mut Payload,
    ) -> CuResult<calls::cuDeviceGetAttribute::Rep> {
        let dev = self.device(req.dev)?;
        Ok(calls::cuDeviceGetAttribute::Rep { pi: self.backend.device_attribute(dev, req.attrib)?, ..Default::default() })
    }

    fn CtxCreate(&mut self, req: calls::CtxCreate::Req, _: &mut Payload) -> CuResult<calls::CtxCreate::Rep> {
        Self::new_handle(&self.contexts, &req.ctx, req.ctx.is_null())?;
        let dev = self.device(req.dev)?;
        self.pool.reserve_context(&self.tenant)?;
        let id = self.backend.ctx_create(dev, req.flags).inspect_err(|_| self.pool.release_context(&self.tenant))?;
        self.contexts.insert(req.ctx, CtxEntry { dev, id, primary: false, sticky: None });
        Ok(Default::default())
    }

    fn CtxDestroy(&mut self, req: calls::CtxDestroy::Req, _: &mut Payload) -> CuResult<calls::CtxDestroy::Rep> {
        match self.contexts.get(&req.ctx) {
            Some(c) if !c.primary => self.destroy_ctx(req.ctx).map(|_| Default::default()),
            _ => Err(CuError::INVALID_CONTEXT),
        }
    }

    fn PrimaryCtxRetain(&mut self, req: calls::PrimaryCtxRetain::Req, _: &mut Payload) -> CuResult<calls::PrimaryCtxRetain::Rep> {
        let dev = self.device(req.dev)?;
        let slot = self.primary[req.dev as usize];
        match slot.ctx {
            Some(ctx) if ctx == req.ctx && self.contexts.contains_key(&ctx) => {}
            Some(ctx) if ctx != req.ctx => return Err(CuError::INVALID_VALUE),
            _ => {
                Self::new_handle(&self.contexts, &req.ctx, req.ctx.is_null())?;
                self.pool.reserve_context(&self.tenant)?;
                let id = self.backend.ctx_create(dev, slot.flags).inspect_err(|_| self.pool.release_context(&self.tenant))?;
                self.contexts.insert(req.ctx, CtxEntry { dev, id, primary: true, sticky: None });
                self.primary[req.dev as usize].ctx = Some(req.ctx);
            }
        }
        self.primary[req.dev as usize].refs += 1;
        Ok(Default::default())
    }

    fn PrimaryCtxRelease(&mut self, req: calls::PrimaryCtxRelease::Req, _: &mut Payload) -> CuResult<calls::PrimaryCtxRelease::Rep> {
        self.device(req.dev)?;
        let slot = &mut self.primary[req.dev as usize];
        let ctx = slot.ctx.ok_or(CuError::INVALID_CONTEXT)?;
        if slot.refs == 0 {
            return Err(CuError::INVALID_CONTEXT);
        }
        slot.refs -= 1;
        if slot.refs == 0 {
            // The last reference gone: the primary context and all it holds go too.
            self.destroy_ctx(ctx)?;
        }
        Ok(Default::default())
    }

    fn PrimaryCtxReset(&mut self, req: calls::PrimaryCtxReset::Req, _: &mut Payload) -> CuResult<calls::PrimaryCtxReset::Rep> {
        self.device(req.dev)?;
        let slot = &mut self.primary[req.dev as usize];
        slot.refs = 0;
        if let Some(ctx) = slot.ctx {
            if self.contexts.contains_key(&ctx) {
                self.destroy_ctx(ctx)?;
            }
        }
        Ok(Default::default())
    }

    fn PrimaryCtxSetFlags(&mut self, req: calls::PrimaryCtxSetFlags::Req, _: &mut Payload) -> CuResult<calls::PrimaryCtxSetFlags::Rep> {
        self.device(req.dev)?;
        self.primary[req.dev as usize].flags = req.flags;
        Ok(Default::default())
    }

    fn cuCtxSynchronize(&mut self, _: calls::cuCtxSynchronize::Req, _: &mut Payload) -> CuResult<calls::cuCtxSynchronize::Rep> {
        let (ctx, id) = (self.current, self.cur()?);
        let r = self.backend.ctx_synchronize(id);
        self.note(ctx, r).map(|_| Default::default())
    }

    fn cuMemGetInfo_v2(&mut self, _: calls::cuMemGetInfo_v2::Req, _: &mut Payload) -> CuResult<calls::cuMemGetInfo_v2::Rep> {
        let dev = self.ctx_entry(self.current)?.dev;
        let (free, total) = self.pool.tenant_view(&self.tenant, dev)?;
        Ok(calls::cuMemGetInfo_v2::Rep { free, total })
    }

    fn cuMemAlloc_v2(&mut self, req: calls::cuMemAlloc_v2::Req, _: &mut Payload) -> CuResult<calls::cuMemAlloc_v2::Rep> {
        let (ctx, id) = (self.current, self.cur()?);
        if req.bytesize == 0 {
            return Err(CuError::INVALID_VALUE);
        }
        let dev = self.ctx_entry(ctx)?.dev;
        // The quota is taken first: an allocation over it never reaches the GPU.
        self.pool.reserve_memory(&self.tenant, dev, req.bytesize)?;
        let ptr = self.backend.mem_alloc(id, req.bytesize).inspect_err(|_| self.pool.release_memory(&self.tenant, dev, req.bytesize))?;
        self.ranges.insert(ptr, Range { size: req.bytesize, ctx, dev, kind: RangeKind::Allocation, pool: None });
        Ok(calls::cuMemAlloc_v2::Rep { dptr: ptr, ..Default::default() })
    }

    fn cuMemFree_v2(&mut self, req: calls::cuMemFree_v2::Req, _: &mut Payload) -> CuResult<calls::cuMemFree_v2::Rep> {
        // Only the base of one of this session's own allocations can be freed.
        self.free_allocation(req.dptr).map(|_| Default::default())
    }

    fn cuMemGetAddressRange_v2(
        &mut self,
        req: calls::cuMemGetAddressRange_v2::Req,
        _: &mut Payload,
    ) -> CuResult<calls::cuMemGetAddressRange_v2::Rep> {
        let (base, r) = self.ranges.range(..=req.dptr).next_back().ok_or(CuError::NOT_FOUND)?;
        if req.dptr >= base + r.size {
            return Err(CuError::NOT_FOUND);
        }
        Ok(calls::cuMemGetAddressRange_v2::Rep { pbase: *base, psize: r.size, ..Default::default() })
    }

    fn MemcpyHtoD(&mut self, req: calls::MemcpyHtoD::Req, io: &mut Payload) -> CuResult<calls::MemcpyHtoD::Rep> {
        let (ctx, cid, sid) = self.stream(req.stream)?;
        self.check_range(ctx, req.dst, io.input.len() as u64)?;
        let (backend, data) = (&self.backend, io.input.clone());
        let r = self.pool.schedule(self.contexts[&ctx].dev, &self.tenant, || backend.memcpy_htod(cid, sid, req.dst, data));
        self.note(ctx, r).map(|_| Default::default())
    }

    fn MemcpyDtoH(&mut self, req: calls::MemcpyDtoH::Req, io: &mut Payload) -> CuResult<calls::MemcpyDtoH::Rep> {
        if req.bytes > MAX_PAYLOAD as u64 {
            return Err(CuError::INVALID_VALUE);
        }
        let (ctx, cid, sid) = self.stream(req.stream)?;
        self.check_range(ctx, req.src, req.bytes)?;
        let backend = &self.backend;
        let r = self.pool.schedule(self.contexts[&ctx].dev, &self.tenant, || backend.memcpy_dtoh(cid, sid, req.src, req.bytes));
        io.output = self.note(ctx, r)?;
        Ok(Default::default())
    }

    fn MemcpyDtoD(&mut self, req: calls::MemcpyDtoD::Req, _: &mut Payload) -> CuResult<calls::MemcpyDtoD::Rep> {
        let (ctx, cid, sid) = self.stream(req.stream)?;
        self.check_range(ctx, req.dst, req.bytes)?;
        self.check_range(ctx, req.src, req.bytes)?;
        let backend = &self.backend;
        let r = self.pool.schedule(self.contexts[&ctx].dev, &self.tenant, || backend.memcpy_dtod(cid, sid, req.dst, req.src, req.bytes));
        self.note(ctx, r).map(|_| Default::default())
    }

    fn Memset(&mut self, req: calls::Memset::Req, _: &mut Payload) -> CuResult<calls::Memset::Rep> {
        if !matches!(req.elem_size, 1 | 2 | 4) {
            return Err(CuError::INVALID_VALUE);
        }
        let (ctx, cid, sid) = self.stream(req.stream)?;
        let bytes = req.count.checked_mul(req.elem_size as u64).ok_or(CuError::INVALID_VALUE)?;
        if !req.dst.is_multiple_of(req.elem_size as u64) {
            return Err(CuError::INVALID_VALUE);
        }
        self.check_range(ctx, req.dst, bytes)?;
        let backend = &self.backend;
        let r = self
            .pool
            .schedule(self.contexts[&ctx].dev, &self.tenant, || backend.memset(cid, sid, req.dst, req.value, req.elem_size, req.count));
        self.note(ctx, r).map(|_| Default::default())
    }

    fn StreamCreate(&mut self, req: calls::StreamCreate::Req, _: &mut Payload) -> CuResult<calls::StreamCreate::Rep> {
        Self::new_handle(&self.streams, &req.stream, req.stream.is_default())?;
        let (ctx, cid) = (self.current, self.cur()?);
        self.pool.reserve_stream(&self.tenant)?;
        let id = self.backend.stream_create(cid, req.flags, req.priority).inspect_err(|_| self.pool.release_stream(&self.tenant))?;
        self.streams.insert(req.stream, (ctx, id));
        Ok(Default::default())
    }

    fn cuStreamDestroy_v2(&mut self, req: calls::cuStreamDestroy_v2::Req, _: &mut Payload) -> CuResult<calls::cuStreamDestroy_v2::Rep> {
        let (ctx, id) = *self.streams.get(&req.stream).ok_or(CuError::INVALID_HANDLE)?;
        self.streams.remove(&req.stream);
        self.pool.release_stream(&self.tenant);
        let cid = self.ctx_entry(ctx)?.id;
        self.backend.stream_destroy(cid, id).map(|_| Default::default())
    }

    fn cuStreamSynchronize(&mut self, req: calls::cuStreamSynchronize::Req, _: &mut Payload) -> CuResult<calls::cuStreamSynchronize::Rep> {
        let (ctx, cid, sid) = self.stream(req.stream)?;
        let r = self.backend.stream_synchronize(cid, sid);
        self.note(ctx, r).map(|_| Default::default())
    }

    fn cuStreamQuery(&mut self, req: calls::cuStreamQuery::Req, _: &mut Payload) -> CuResult<calls::cuStreamQuery::Rep> {
        let (ctx, cid, sid) = self.stream(req.stream)?;
        let r = self.backend.stream_query(cid, sid);
        ready(self.note(ctx, r)?).map(|_| Default::default())
    }

    fn cuStreamWaitEvent(&mut self, req: calls::cuStreamWaitEvent::Req, _: &mut Payload) -> CuResult<calls::cuStreamWaitEvent::Rep> {
        let (ctx, cid, sid) = self.stream(req.stream)?;
        let (ectx, _, eid) = self.event(req.event)?;
        if ectx != ctx {
            // Cross-context waits are not supported by the backends' per-context tables.
            return Err(CuError::NOT_SUPPORTED);
        }
        self.backend.stream_wait_event(cid, sid, eid, req.flags).map(|_| Default::default())
    }

    fn EventCreate(&mut self, req: calls::EventCreate::Req, _: &mut Payload) -> CuResult<calls::EventCreate::Rep> {
        Self::new_handle(&self.events, &req.event, req.event.is_null())?;
        let (ctx, cid) = (self.current, self.cur()?);
        let id = self.backend.event_create(cid, req.flags)?;
        self.events.insert(req.event, (ctx, id));
        Ok(Default::default())
    }

    fn cuEventRecord(&mut self, req: calls::cuEventRecord::Req, _: &mut Payload) -> CuResult<calls::cuEventRecord::Rep> {
        let (ectx, _, eid) = self.event(req.event)?;
        let (sctx, cid, sid) = self.stream(req.stream)?;
        if ectx != sctx {
            return Err(CuError::INVALID_HANDLE);
        }
        self.backend.event_record(cid, eid, sid).map(|_| Default::default())
    }

    fn cuEventSynchronize(&mut self, req: calls::cuEventSynchronize::Req, _: &mut Payload) -> CuResult<calls::cuEventSynchronize::Rep> {
        let (ctx, cid, eid) = self.event(req.event)?;
        let r = self.backend.event_synchronize(cid, eid);
        self.note(ctx, r).map(|_| Default::default())
    }

    fn cuEventQuery(&mut self, req: calls::cuEventQuery::Req, _: &mut Payload) -> CuResult<calls::cuEventQuery::Rep> {
        let (ctx, cid, eid) = self.event(req.event)?;
        let r = self.backend.event_query(cid, eid);
        ready(self.note(ctx, r)?).map(|_| Default::default())
    }

    fn cuEventElapsedTime(&mut self, req: calls::cuEventElapsedTime::Req, _: &mut Payload) -> CuResult<calls::cuEventElapsedTime::Rep> {
        let (sctx, cid, s) = self.event(req.start)?;
        let (ectx, _, e) = self.event(req.end)?;
        if sctx != ectx {
            return Err(CuError::INVALID_HANDLE);
        }
        Ok(calls::cuEventElapsedTime::Rep { ms: self.backend.event_elapsed(cid, s, e)?, ..Default::default() })
    }

    fn cuEventDestroy_v2(&mut self, req: calls::cuEventDestroy_v2::Req, _: &mut Payload) -> CuResult<calls::cuEventDestroy_v2::Rep> {
        let (ctx, id) = *self.events.get(&req.event).ok_or(CuError::INVALID_HANDLE)?;
        self.events.remove(&req.event);
        let cid = self.ctx_entry(ctx)?.id;
        self.backend.event_destroy(cid, id).map(|_| Default::default())
    }

    fn ModuleLoad(&mut self, req: calls::ModuleLoad::Req, io: &mut Payload) -> CuResult<calls::ModuleLoad::Rep> {
        Self::new_handle(&self.modules, &req.module, req.module.is_null())?;
        let ctx = self.current;
        let loaded = self.load_counted_logged(ctx, &io.input, Some(req.module.0))?;
        self.modules.insert(req.module, (ctx, loaded.id));
        Ok(calls::ModuleLoad::Rep { module: (), info: ModuleInfo { functions: loaded.functions, globals: Vec::new() } })
    }

    fn cuModuleUnload(&mut self, req: calls::cuModuleUnload::Req, _: &mut Payload) -> CuResult<calls::cuModuleUnload::Rep> {
        let (ctx, id) = *self.modules.get(&req.module).ok_or(CuError::INVALID_HANDLE)?;
        // A library's module (cuLibraryGetModule) is the library's: it goes with cuLibraryUnload.
        if self.libraries.values().any(|l| l.loaded.get(&ctx) == Some(&id)) {
            return Err(CuError::INVALID_HANDLE);
        }
        self.modules.remove(&req.module);
        self.ranges.retain(|_, r| r.kind != RangeKind::Global(req.module));
        let cid = self.ctx_entry(ctx)?.id;
        self.backend.module_unload(cid, id)?;
        self.uncount_module(id);
        Ok(Default::default())
    }

    fn ModuleGetFunction(&mut self, req: calls::ModuleGetFunction::Req, _: &mut Payload) -> CuResult<calls::ModuleGetFunction::Rep> {
        check_name(&req.name)?;
        Self::new_handle(&self.functions, &req.func, req.func.is_null())?;
        let (ctx, mid) = *self.modules.get(&req.module).ok_or(CuError::INVALID_HANDLE)?;
        let cid = self.ctx_entry(ctx)?.id;
        let fid = self.backend.module_function(cid, mid, &req.name)?;
        self.functions.insert(req.func, (ctx, fid));
        Ok(Default::default())
    }

    fn ModuleGetGlobal(&mut self, req: calls::ModuleGetGlobal::Req, _: &mut Payload) -> CuResult<calls::ModuleGetGlobal::Rep> {
        check_name(&req.name)?;
        let (ctx, mid) = *self.modules.get(&req.module).ok_or(CuError::INVALID_HANDLE)?;
        let cid = self.ctx_entry(ctx)?.id;
        let (dptr, bytes) = self.backend.module_global(cid, mid, &req.name)?;
        // The variable becomes a range the tenant may copy to and from.
        let dev = self.ctx_entry(ctx)?.dev;
        self.ranges.entry(dptr).or_insert(Range { size: bytes, ctx, dev, kind: RangeKind::Global(req.module), pool: None });
        Ok(calls::ModuleGetGlobal::Rep { dptr, bytes, ..Default::default() })
    }

    fn LibraryLoad(&mut self, req: calls::LibraryLoad::Req, io: &mut Payload) -> CuResult<calls::LibraryLoad::Rep> {
        Self::new_handle(&self.libraries, &req.library, req.library.is_null())?;
        // A library is context-independent; it is loaded into each context that uses it. The
        // first load, into the current context, validates it and describes its entry points.
        let ctx = self.current;
        if !self.contexts.contains_key(&ctx) {
            let info = self.describe_library(&io.input, req.library.0)?;
            self.libraries.insert(req.library, LibraryEntry { image: io.input.clone(), info: info.clone(), loaded: HashMap::new() });
            return Ok(calls::LibraryLoad::Rep { library: (), info });
        }
        let loaded = self.load_counted_logged(ctx, &io.input, Some(req.library.0))?;
        let info = ModuleInfo { functions: loaded.functions, globals: Vec::new() };
        let mut entry = LibraryEntry { image: io.input.clone(), info: info.clone(), loaded: HashMap::new() };
        entry.loaded.insert(ctx, loaded.id);
        self.libraries.insert(req.library, entry);
        Ok(calls::LibraryLoad::Rep { library: (), info })
    }

    fn cuLibraryUnload(&mut self, req: calls::cuLibraryUnload::Req, _: &mut Payload) -> CuResult<calls::cuLibraryUnload::Rep> {
        let lib = self.libraries.remove(&req.library).ok_or(CuError::INVALID_HANDLE)?;
        self.kernels.retain(|_, (l, _)| *l != req.library);
        for (ctx, id) in lib.loaded {
            if let Some(c) = self.contexts.get(&ctx) {
                let _ = self.backend.module_unload(c.id, id);
            }
            self.uncount_module(id);
        }
        Ok(Default::default())
    }

    fn LibraryGetKernel(&mut self, req: calls::LibraryGetKernel::Req, _: &mut Payload) -> CuResult<calls::LibraryGetKernel::Rep> {
        check_name(&req.name)?;
        Self::new_handle(&self.kernels, &req.kernel, req.kernel.is_null())?;
        let lib = self.libraries.get(&req.library).ok_or(CuError::INVALID_HANDLE)?;
        if !lib.info.functions.iter().any(|f| f.name == req.name) {
            return Err(CuError::NOT_FOUND);
        }
        self.kernels.insert(req.kernel, (req.library, req.name));
        Ok(Default::default())
    }

    fn KernelGetFunction(&mut self, req: calls::KernelGetFunction::Req, _: &mut Payload) -> CuResult<calls::KernelGetFunction::Rep> {
        Self::new_handle(&self.functions, &req.func, req.func.is_null())?;
        let (library, name) = self.kernels.get(&req.kernel).cloned().ok_or(CuError::INVALID_HANDLE)?;
        let ctx = self.current;
        let mid = self.library_module(library, ctx)?;
        let cid = self.ctx_entry(ctx)?.id;
        let fid = self.backend.module_function(cid, mid, &name)?;
        self.functions.insert(req.func, (ctx, fid));
        Ok(Default::default())
    }

    fn LibraryGetModule(&mut self, req: calls::LibraryGetModule::Req, _: &mut Payload) -> CuResult<calls::LibraryGetModule::Rep> {
        Self::new_handle(&self.modules, &req.module, req.module.is_null())?;
        let ctx = self.current;
        let mid = self.library_module(req.library, ctx)?;
        self.modules.insert(req.module, (ctx, mid));
        Ok(Default::default())
    }

    fn LibraryGetGlobal(&mut self, req: calls::LibraryGetGlobal::Req, _: &mut Payload) -> CuResult<calls::LibraryGetGlobal::Rep> {
        check_name(&req.name)?;
        let ctx = self.current;
        let mid = self.library_module(req.library, ctx)?;
        let cid = self.ctx_entry(ctx)?.id;
        let (dptr, bytes) = self.backend.module_global(cid, mid, &req.name)?;
        let dev = self.ctx_entry(ctx)?.dev;
        self.ranges.entry(dptr).or_insert(Range { size: bytes, ctx, dev, kind: RangeKind::Global(Module::NULL), pool: None });
        Ok(calls::LibraryGetGlobal::Rep { dptr, bytes, ..Default::default() })
    }

    fn FuncSetAttribute(&mut self, req: calls::FuncSetAttribute::Req, _: &mut Payload) -> CuResult<calls::FuncSetAttribute::Rep> {
        let (ctx, fid) = *self.functions.get(&req.func).ok_or(CuError::INVALID_HANDLE)?;
        let cid = self.ctx_entry(ctx)?.id;
        self.backend.func_set_attribute(cid, fid, req.attrib, req.value).map(|_| Default::default())
    }

    fn LaunchKernel(&mut self, req: calls::LaunchKernel::Req, io: &mut Payload) -> CuResult<calls::LaunchKernel::Rep> {
        let (fctx, fid) = *self.functions.get(&req.func).ok_or(CuError::INVALID_HANDLE)?;
        let (sctx, cid, sid) = self.stream(req.stream)?;
        if fctx != sctx {
            return Err(CuError::INVALID_HANDLE);
        }
        let (backend, params) = (&self.backend, &io.input);
        let r = self.pool.schedule(self.contexts[&fctx].dev, &self.tenant, || backend.launch(cid, fid, req.dims, sid, params));
        self.note(fctx, r).map(|_| Default::default())
    }

    fn LoadLog(&mut self, req: calls::LoadLog::Req, _: &mut Payload) -> CuResult<calls::LoadLog::Rep> {
        let log = match self.load_logs.iter().position(|(k, _)| *k == req.handle) {
            Some(i) => self.load_logs.remove(i).map(|(_, text)| text).unwrap_or_default(),
            None => String::new(),
        };
        Ok(calls::LoadLog::Rep { handle: (), log })
    }

    fn MemcpyRowsHtoD(&mut self, req: calls::MemcpyRowsHtoD::Req, io: &mut Payload) -> CuResult<calls::MemcpyRowsHtoD::Rep> {
        let (ctx, cid, sid) = self.stream(req.stream)?;
        if self.check_rows(ctx, &req.dst)? != io.input.len() as u64 {
            return Err(CuError::INVALID_VALUE);
        }
        let (backend, data, rows) = (&self.backend, &io.input, req.dst);
        let r = self.pool.schedule(self.contexts[&ctx].dev, &self.tenant, || {
            rows.runs().try_for_each(|(dst, at, len)| backend.memcpy_htod(cid, sid, dst, data.slice(at as usize..(at + len) as usize)))
        });
        self.note(ctx, r).map(|_| Default::default())
    }

    fn MemcpyRowsDtoH(&mut self, req: calls::MemcpyRowsDtoH::Req, io: &mut Payload) -> CuResult<calls::MemcpyRowsDtoH::Rep> {
        let (ctx, cid, sid) = self.stream(req.stream)?;
        let bytes = self.check_rows(ctx, &req.src)?;
        if bytes > MAX_PAYLOAD as u64 {
            return Err(CuError::INVALID_VALUE);
        }
        let (backend, rows) = (&self.backend, req.src);
        let r = self.pool.schedule(self.contexts[&ctx].dev, &self.tenant, || {
            let mut out = Vec::with_capacity(bytes as usize);
            for (src, _, len) in rows.runs() {
                out.extend_from_slice(&backend.memcpy_dtoh(cid, sid, src, len)?);
            }
            Ok(Bytes::from(out))
        });
        io.output = self.note(ctx, r)?;
        Ok(Default::default())
    }

    fn MemcpyRowsDtoD(&mut self, req: calls::MemcpyRowsDtoD::Req, _: &mut Payload) -> CuResult<calls::MemcpyRowsDtoD::Rep> {
        let (ctx, cid, sid) = self.stream(req.stream)?;
        if req.dst.width != req.src.width || req.dst.count != req.src.count {
            return Err(CuError::INVALID_VALUE);
        }
        self.check_rows(ctx, &req.dst)?;
        self.check_rows(ctx, &req.src)?;
        let (backend, dst, src) = (&self.backend, req.dst, req.src);
        let r = self.pool.schedule(self.contexts[&ctx].dev, &self.tenant, || {
            dst.runs_with(&src).try_for_each(|(d, s, len)| backend.memcpy_dtod(cid, sid, d, s, len))
        });
        self.note(ctx, r).map(|_| Default::default())
    }

    fn MemPoolCreate(&mut self, req: calls::MemPoolCreate::Req, _: &mut Payload) -> CuResult<calls::MemPoolCreate::Rep> {
        Self::new_handle(&self.mem_pools, &req.pool, req.pool.is_null() || req.pool.default_device().is_some())?;
        let dev = self.device(req.dev)?;
        if self.mem_pools.len() >= MAX_MEM_POOLS + self.devices.len() {
            return Err(CuError::OUT_OF_MEMORY);
        }
        self.mem_pools.insert(req.pool, PoolEntry::new(req.dev, dev, req.max_size));
        Ok(Default::default())
    }

    fn MemPoolDestroy(&mut self, req: calls::MemPoolDestroy::Req, _: &mut Payload) -> CuResult<calls::MemPoolDestroy::Rep> {
        if req.pool.default_device().is_some() {
            // A device's default pool cannot be destroyed.
            return Err(CuError::INVALID_VALUE);
        }
        let p = self.mem_pool(req.pool)?;
        let (dev, in_use) = (p.tenant_dev, p.used > 0);
        // Outstanding allocations stay valid; the pool goes when the last is freed.
        if in_use {
            p.destroyed = true;
        } else {
            self.mem_pools.remove(&req.pool);
        }
        if self.current_pool.get(dev as usize) == Some(&req.pool) {
            self.current_pool[dev as usize] = MemPool::default_of(dev);
        }
        Ok(Default::default())
    }

    fn DeviceSetMemPool(&mut self, req: calls::DeviceSetMemPool::Req, _: &mut Payload) -> CuResult<calls::DeviceSetMemPool::Rep> {
        self.device(req.dev)?;
        if self.mem_pool(req.pool)?.tenant_dev != req.dev {
            return Err(CuError::INVALID_VALUE);
        }
        self.current_pool[req.dev as usize] = req.pool;
        Ok(Default::default())
    }

    fn MemAllocAsync(&mut self, req: calls::MemAllocAsync::Req, _: &mut Payload) -> CuResult<calls::MemAllocAsync::Rep> {
        let (ctx, cid, _) = self.stream(req.stream)?;
        if req.bytes == 0 {
            return Err(CuError::INVALID_VALUE);
        }
        let dev = self.contexts[&ctx].dev;
        let pool = if req.pool.is_null() {
            let tenant_dev = self.devices.iter().position(|d| *d == dev).ok_or(CuError::INVALID_DEVICE)?;
            self.current_pool[tenant_dev]
        } else {
            req.pool
        };
        let p = self.mem_pool(pool)?;
        if p.dev != dev {
            // A pool of another device than the stream's: peer access is not supported.
            return Err(CuError::NOT_SUPPORTED);
        }
        if p.max_size > 0 && p.used.saturating_add(req.bytes) > p.max_size {
            return Err(CuError::OUT_OF_MEMORY);
        }
        // Exactly as cuMemAlloc: the quota is taken first, so an allocation over it never
        // reaches the GPU. The backend runs stream work in order, so the memory is there
        // before anything later on the stream.
        self.pool.reserve_memory(&self.tenant, dev, req.bytes)?;
        let ptr = self.backend.mem_alloc(cid, req.bytes).inspect_err(|_| self.pool.release_memory(&self.tenant, dev, req.bytes))?;
        self.ranges.insert(ptr, Range { size: req.bytes, ctx, dev, kind: RangeKind::Allocation, pool: Some(pool) });
        let p = self.mem_pools.get_mut(&pool).expect("checked above");
        p.used += req.bytes;
        p.used_high = p.used_high.max(p.used);
        p.reserved_high = p.reserved_high.max(p.used);
        Ok(calls::MemAllocAsync::Rep { dptr: ptr, ..Default::default() })
    }

    fn MemFreeAsync(&mut self, req: calls::MemFreeAsync::Req, _: &mut Payload) -> CuResult<calls::MemFreeAsync::Rep> {
        // In lane order: everything sent before it on any stream has run (the backend runs
        // stream work in order), so freeing now is freeing at this point of the stream.
        self.stream(req.stream)?;
        self.free_allocation(req.dptr).map(|_| Default::default())
    }

    fn MemPoolGetAttribute(&mut self, req: calls::MemPoolGetAttribute::Req, _: &mut Payload) -> CuResult<calls::MemPoolGetAttribute::Rep> {
        let p = self.mem_pool(req.pool)?;
        let value = match req.attr {
            a @ POOL_REUSE_FOLLOW_EVENT_DEPENDENCIES..=POOL_REUSE_ALLOW_INTERNAL_DEPENDENCIES => p.reuse[(a - 1) as usize],
            POOL_RELEASE_THRESHOLD => p.release_threshold,
            // Freed memory goes back at once: what the pool holds is what is in use.
            POOL_RESERVED_MEM_CURRENT | POOL_USED_MEM_CURRENT => p.used,
            POOL_RESERVED_MEM_HIGH => p.reserved_high,
            POOL_USED_MEM_HIGH => p.used_high,
            _ => return Err(CuError::INVALID_VALUE),
        };
        Ok(calls::MemPoolGetAttribute::Rep { value, ..Default::default() })
    }

    fn MemPoolSetAttribute(&mut self, req: calls::MemPoolSetAttribute::Req, _: &mut Payload) -> CuResult<calls::MemPoolSetAttribute::Rep> {
        let p = self.mem_pool(req.pool)?;
        match req.attr {
            a @ POOL_REUSE_FOLLOW_EVENT_DEPENDENCIES..=POOL_REUSE_ALLOW_INTERNAL_DEPENDENCIES if req.value <= 1 => {
                p.reuse[(a - 1) as usize] = req.value
            }
            POOL_RELEASE_THRESHOLD => p.release_threshold = req.value,
            // The high-water marks can only be reset (to the current value).
            POOL_RESERVED_MEM_HIGH if req.value == 0 => p.reserved_high = p.used,
            POOL_USED_MEM_HIGH if req.value == 0 => p.used_high = p.used,
            _ => return Err(CuError::INVALID_VALUE),
        }
        Ok(Default::default())
    }
}
