//! Bad input at the session, without a network: forged handles, pointers outside the tenant's
//! own allocations, copies and memsets past an allocation's end, bad frees, another tenant's
//! pointers, latched errors, duplicate handle ids, and what a closed session leaves behind.
//! Every case gets the CUDA error the driver gives, and nothing already stored is lost.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cuwire_protocol::limits::{MAX_NAME, MAX_PAYLOAD};
use cuwire_protocol::{
    calls, Call, CallKind, Ctx, CuError, DevPtr, Event, Func, Kernel, Latched, LaunchDims, Library, MemPool, Module, ModuleInfo, Reply,
    Request, Rows, ServerMsg, Stream,
};
use cuwire_server::backend::emu::{EmuBackend, EmuConfig};
use cuwire_server::backend::Backend;
use cuwire_server::session::Session;

/// One emulated device of the default size (host memory is only used as touched).
fn backend() -> Arc<EmuBackend> {
    Arc::new(EmuBackend::new(EmuConfig { worker_threads: 1, watchdog: Duration::from_secs(5), ..Default::default() }))
}

fn vecadd_ptx() -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/clients/vecadd.ptx");
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// What one Sync or Barrier call got back.
#[derive(Debug)]
struct Answer {
    seq: u64,
    result: Result<Reply, CuError>,
    latched: Option<Latched>,
    payload: Bytes,
}

/// A tenant's session driven call by call, as the listener would drive it.
struct Tenant {
    session: Session,
    ctx: Ctx,
    seq: u64,
}

impl Tenant {
    fn new(id: u64, backend: &Arc<EmuBackend>) -> Tenant {
        let backend: Arc<dyn Backend> = backend.clone();
        Tenant { session: Session::new(id, format!("tenant-{id}"), backend, vec![0]), ctx: Ctx::NULL, seq: 0 }
    }

    /// A tenant with context `Ctx(1)` created and current.
    fn with_ctx(id: u64, backend: &Arc<EmuBackend>) -> Tenant {
        let mut t = Tenant::new(id, backend);
        t.ok(Request::CtxCreate(calls::CtxCreate::Req { ctx: Ctx(1), flags: 0, dev: 0 }));
        t.ctx = Ctx(1);
        t
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Sends a fire-and-forget call: nothing comes back, whatever happens.
    fn fire(&mut self, request: Request, payload: &[u8]) -> u64 {
        let seq = self.next_seq();
        let out = self.session.handle(Call { seq, ctx: self.ctx, kind: CallKind::Async, request }, Bytes::copy_from_slice(payload));
        assert!(out.messages.is_empty(), "an Async call got an answer: {:?}", out.messages);
        seq
    }

    /// Sends a call of `kind` (Sync or Barrier) and returns its one reply.
    fn ask(&mut self, kind: CallKind, request: Request, payload: &[u8]) -> Answer {
        let seq = self.next_seq();
        let out = self.session.handle(Call { seq, ctx: self.ctx, kind, request }, Bytes::copy_from_slice(payload));
        let mut replies: Vec<Answer> = out
            .messages
            .into_iter()
            .filter_map(|(msg, payload)| match msg {
                ServerMsg::Reply { seq, result, latched } => Some(Answer { seq, result, latched, payload }),
                _ => None,
            })
            .collect();
        assert_eq!(replies.len(), 1, "one reply per {kind:?} call");
        let answer = replies.pop().expect("one reply");
        assert_eq!(answer.seq, seq, "the reply names its call");
        answer
    }

    /// A Sync call's result; a Sync reply never carries a latched error.
    fn sync(&mut self, request: Request) -> Result<Reply, CuError> {
        let a = self.ask(CallKind::Sync, request, &[]);
        assert_eq!(a.latched, None, "a Sync reply reported a latched error");
        a.result
    }

    fn sync_with(&mut self, request: Request, payload: &[u8]) -> Result<Reply, CuError> {
        let a = self.ask(CallKind::Sync, request, payload);
        assert_eq!(a.latched, None, "a Sync reply reported a latched error");
        a.result
    }

    /// A Sync call that must succeed.
    fn ok(&mut self, request: Request) -> Reply {
        let what = format!("{request:?}");
        self.sync(request).unwrap_or_else(|e| panic!("{what} failed: {e}"))
    }

    /// A Sync call that must fail with `error`.
    fn fails(&mut self, request: Request, error: CuError) {
        let what = format!("{request:?}");
        assert_eq!(self.sync(request).err(), Some(error), "{what}");
    }

    fn alloc(&mut self, bytes: u64) -> DevPtr {
        match self.ok(Request::cuMemAlloc_v2(calls::cuMemAlloc_v2::Req { bytesize: bytes, ..Default::default() })) {
            Reply::cuMemAlloc_v2(r) => r.dptr,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    fn htod(&mut self, dst: DevPtr, data: &[u8]) -> Result<(), CuError> {
        self.sync_with(Request::MemcpyHtoD(calls::MemcpyHtoD::Req { dst, stream: Stream::NULL }), data).map(|_| ())
    }

    fn dtoh(&mut self, src: DevPtr, bytes: u64) -> Result<Bytes, CuError> {
        let a = self.ask(CallKind::Sync, Request::MemcpyDtoH(calls::MemcpyDtoH::Req { src, bytes, stream: Stream::NULL }), &[]);
        a.result.map(|_| a.payload)
    }

    fn dtod(&mut self, dst: DevPtr, src: DevPtr, bytes: u64) -> Result<(), CuError> {
        self.sync(Request::MemcpyDtoD(calls::MemcpyDtoD::Req { dst, src, bytes, stream: Stream::NULL })).map(|_| ())
    }

    fn memset(&mut self, dst: DevPtr, value: u32, elem_size: u8, count: u64) -> Result<(), CuError> {
        self.sync(Request::Memset(calls::Memset::Req { dst, value, elem_size, count, stream: Stream::NULL })).map(|_| ())
    }

    fn free(&mut self, dptr: DevPtr) -> Result<(), CuError> {
        self.sync(Request::cuMemFree_v2(calls::cuMemFree_v2::Req { dptr })).map(|_| ())
    }

    fn load_vecadd(&mut self, module: Module) -> ModuleInfo {
        match self.sync_with(Request::ModuleLoad(calls::ModuleLoad::Req { module, ..Default::default() }), &vecadd_ptx()) {
            Ok(Reply::ModuleLoad(r)) => r.info,
            other => panic!("loading vecadd.ptx: {other:?}"),
        }
    }

    fn get_function(&mut self, func: Func, module: Module, name: &str) -> Result<(), CuError> {
        self.sync(Request::ModuleGetFunction(calls::ModuleGetFunction::Req { func, module, name: name.into() })).map(|_| ())
    }

    /// Launches vecadd(a, b, c, n) with one block of `n` threads, packed as `info` says.
    fn launch_vecadd(&mut self, info: &ModuleInfo, func: Func, a: DevPtr, b: DevPtr, c: DevPtr, n: u32) -> Result<(), CuError> {
        let f = info.functions.iter().find(|f| f.name == "vecadd").expect("vecadd in the module");
        assert_eq!(f.params.len(), 4);
        let end = f.params.iter().map(|p| p.offset + p.size).max().unwrap_or(0) as usize;
        let mut params = vec![0u8; end];
        for (p, v) in f.params.iter().zip([a, b, c, n as u64]) {
            let o = p.offset as usize;
            params[o..o + p.size as usize].copy_from_slice(&v.to_le_bytes()[..p.size as usize]);
        }
        let dims = LaunchDims { grid: [1, 1, 1], block: [n, 1, 1], shared_mem_bytes: 0 };
        self.sync_with(Request::LaunchKernel(calls::LaunchKernel::Req { func, dims, stream: Stream::NULL }), &params).map(|_| ())
    }

    fn barrier_sync(&mut self) -> Answer {
        self.ask(CallKind::Barrier, Request::cuCtxSynchronize(calls::cuCtxSynchronize::Req {}), &[])
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn floats(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn free_mem(backend: &EmuBackend) -> u64 {
    backend.mem_info(0).expect("mem_info").0
}

// ---------------------------------------------------------------------------
// Forged handles

#[test]
fn forged_context_is_invalid_context() {
    let b = backend();
    let mut t = Tenant::with_ctx(1, &b);
    let ptr = t.alloc(256);
    for forged in [Ctx(2), Ctx(0xdead_beef), Ctx::NULL, Ctx(u64::MAX)] {
        t.ctx = forged;
        t.fails(Request::cuMemAlloc_v2(calls::cuMemAlloc_v2::Req { bytesize: 16, ..Default::default() }), CuError::INVALID_CONTEXT);
        t.fails(Request::cuMemGetInfo_v2(Default::default()), CuError::INVALID_CONTEXT);
        assert_eq!(t.dtoh(ptr, 16).err(), Some(CuError::INVALID_CONTEXT), "{forged:?}");
        let a = t.barrier_sync();
        assert_eq!(a.result.err(), Some(CuError::INVALID_CONTEXT), "cuCtxSynchronize in {forged:?}");
        t.fails(Request::CtxDestroy(calls::CtxDestroy::Req { ctx: forged }), CuError::INVALID_CONTEXT);
        t.fails(Request::StreamCreate(calls::StreamCreate::Req { stream: Stream(100), flags: 0, priority: 0 }), CuError::INVALID_CONTEXT);
    }
    // The backend's own context id is no client handle either.
    t.ctx = Ctx(1);
    t.fails(Request::CtxDestroy(calls::CtxDestroy::Req { ctx: Ctx(2) }), CuError::INVALID_CONTEXT);
    t.ok(Request::cuCtxSynchronize(Default::default()));
    assert_eq!(t.session.holdings().contexts, 1);
    assert_eq!(t.session.holdings().allocations, 1);
}

#[test]
fn forged_stream_is_invalid_handle() {
    let b = backend();
    let mut t = Tenant::with_ctx(1, &b);
    t.ok(Request::StreamCreate(calls::StreamCreate::Req { stream: Stream(100), flags: 0, priority: 0 }));
    let ptr = t.alloc(64);
    // Stream(3) is a plausible backend id; Stream(101) is next to a real handle.
    for forged in [Stream(3), Stream(101), Stream(u64::MAX)] {
        let a = t.ask(CallKind::Barrier, Request::cuStreamSynchronize(calls::cuStreamSynchronize::Req { stream: forged }), &[]);
        assert_eq!(a.result.err(), Some(CuError::INVALID_HANDLE), "cuStreamSynchronize({forged:?})");
        let a = t.ask(CallKind::Barrier, Request::cuStreamQuery(calls::cuStreamQuery::Req { stream: forged }), &[]);
        assert_eq!(a.result.err(), Some(CuError::INVALID_HANDLE), "cuStreamQuery({forged:?})");
        t.fails(Request::MemcpyDtoH(calls::MemcpyDtoH::Req { src: ptr, bytes: 8, stream: forged }), CuError::INVALID_HANDLE);
        t.fails(Request::cuStreamDestroy_v2(calls::cuStreamDestroy_v2::Req { stream: forged }), CuError::INVALID_HANDLE);
    }
    // The real stream still works, and is gone after its destruction.
    t.sync_with(Request::MemcpyHtoD(calls::MemcpyHtoD::Req { dst: ptr, stream: Stream(100) }), &[7u8; 64]).expect("copy on a real stream");
    t.ok(Request::cuStreamDestroy_v2(calls::cuStreamDestroy_v2::Req { stream: Stream(100) }));
    t.fails(Request::cuStreamSynchronize(calls::cuStreamSynchronize::Req { stream: Stream(100) }), CuError::INVALID_HANDLE);
    assert_eq!(t.dtoh(ptr, 64).expect("read back").as_ref(), &[7u8; 64]);
}

#[test]
fn forged_event_is_invalid_handle() {
    let b = backend();
    let mut t = Tenant::with_ctx(1, &b);
    t.ok(Request::EventCreate(calls::EventCreate::Req { event: Event(100), flags: 0 }));
    t.ok(Request::cuEventRecord(calls::cuEventRecord::Req { event: Event(100), stream: Stream::NULL }));
    for forged in [Event(2), Event(3), Event(101), Event(u64::MAX)] {
        let a = t.ask(CallKind::Barrier, Request::cuEventSynchronize(calls::cuEventSynchronize::Req { event: forged }), &[]);
        assert_eq!(a.result.err(), Some(CuError::INVALID_HANDLE), "cuEventSynchronize({forged:?})");
        let a = t.ask(CallKind::Barrier, Request::cuEventQuery(calls::cuEventQuery::Req { event: forged }), &[]);
        assert_eq!(a.result.err(), Some(CuError::INVALID_HANDLE), "cuEventQuery({forged:?})");
        t.fails(Request::cuEventRecord(calls::cuEventRecord::Req { event: forged, stream: Stream::NULL }), CuError::INVALID_HANDLE);
        t.fails(
            Request::cuEventElapsedTime(calls::cuEventElapsedTime::Req { start: Event(100), end: forged, ..Default::default() }),
            CuError::INVALID_HANDLE,
        );
        t.fails(
            Request::cuStreamWaitEvent(calls::cuStreamWaitEvent::Req { stream: Stream::NULL, event: forged, flags: 0 }),
            CuError::INVALID_HANDLE,
        );
        t.fails(Request::cuEventDestroy_v2(calls::cuEventDestroy_v2::Req { event: forged }), CuError::INVALID_HANDLE);
    }
    let a = t.ask(CallKind::Barrier, Request::cuEventQuery(calls::cuEventQuery::Req { event: Event(100) }), &[]);
    assert!(a.result.is_ok(), "the real event: {a:?}");
}

#[test]
fn forged_module_and_function_are_invalid_handle() {
    let b = backend();
    let mut t = Tenant::with_ctx(1, &b);
    let info = t.load_vecadd(Module(10));
    t.get_function(Func(20), Module(10), "vecadd").expect("vecadd");
    for forged in [Module(2), Module(11), Module(u64::MAX)] {
        assert_eq!(t.get_function(Func(21), forged, "vecadd").err(), Some(CuError::INVALID_HANDLE), "{forged:?}");
        t.fails(
            Request::ModuleGetGlobal(calls::ModuleGetGlobal::Req { module: forged, name: "counter".into(), ..Default::default() }),
            CuError::INVALID_HANDLE,
        );
        t.fails(Request::cuModuleUnload(calls::cuModuleUnload::Req { module: forged }), CuError::INVALID_HANDLE);
    }
    // An unknown function name in a real module is NOT_FOUND, and mints nothing.
    assert_eq!(t.get_function(Func(21), Module(10), "no_such_kernel").err(), Some(CuError::NOT_FOUND));
    let n = 32;
    let (pa, pb, pc) = (t.alloc(4 * n), t.alloc(4 * n), t.alloc(4 * n));
    for forged in [Func(3), Func(21), Func(u64::MAX)] {
        assert_eq!(t.launch_vecadd(&info, forged, pa, pb, pc, n as u32).err(), Some(CuError::INVALID_HANDLE), "{forged:?}");
    }
    // The real function still runs.
    let xs: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let ys: Vec<f32> = (0..n).map(|i| 100.0 * i as f32).collect();
    t.htod(pa, &floats(&xs)).unwrap();
    t.htod(pb, &floats(&ys)).unwrap();
    t.launch_vecadd(&info, Func(20), pa, pb, pc, n as u32).expect("launch");
    let sums: Vec<f32> = xs.iter().zip(&ys).map(|(x, y)| x + y).collect();
    assert_eq!(t.dtoh(pc, 4 * n).unwrap().as_ref(), floats(&sums).as_slice());
    // After unloading, the module and its functions are gone.
    t.ok(Request::cuModuleUnload(calls::cuModuleUnload::Req { module: Module(10) }));
    assert_eq!(t.get_function(Func(22), Module(10), "vecadd").err(), Some(CuError::INVALID_HANDLE));
    assert_eq!(t.launch_vecadd(&info, Func(20), pa, pb, pc, n as u32).err(), Some(CuError::INVALID_HANDLE));
}

/// Names are bounded before any lookup, and a device-to-host copy larger than one frame's
/// payload is refused before the backend is asked for it; at the limits both work.
#[test]
fn overlong_names_and_oversized_reads_are_invalid_value() {
    let b = backend();
    let mut t = Tenant::with_ctx(1, &b);
    t.load_vecadd(Module(10));
    let long = "v".repeat(MAX_NAME + 1);
    assert_eq!(t.get_function(Func(20), Module(10), &long).err(), Some(CuError::INVALID_VALUE));
    t.fails(
        Request::ModuleGetGlobal(calls::ModuleGetGlobal::Req { module: Module(10), name: long.clone(), ..Default::default() }),
        CuError::INVALID_VALUE,
    );
    // A name at the limit is looked up: not in the module, so NOT_FOUND.
    assert_eq!(t.get_function(Func(20), Module(10), &"v".repeat(MAX_NAME)).err(), Some(CuError::NOT_FOUND));
    t.get_function(Func(20), Module(10), "vecadd").expect("the module still serves its function");

    let limit = MAX_PAYLOAD as u64;
    let p = t.alloc(2 * limit);
    for bytes in [limit + 1, 2 * limit, u64::MAX] {
        assert_eq!(t.dtoh(p, bytes).err(), Some(CuError::INVALID_VALUE), "a read of {bytes} bytes");
    }
    let data = pattern(4096, 9);
    t.htod(p + limit - 4096, &data).unwrap();
    let back = t.dtoh(p, limit).expect("a read of exactly the payload limit");
    assert_eq!(back.len(), MAX_PAYLOAD);
    assert_eq!(&back[MAX_PAYLOAD - 4096..], &data[..], "the bytes written before are read back");
}

// ---------------------------------------------------------------------------
// Device pointers

#[test]
fn pointer_outside_allocations_is_invalid_value() {
    let b = backend();
    let mut t = Tenant::with_ctx(1, &b);
    let ptr = t.alloc(4096);
    t.htod(ptr, &pattern(4096, 1)).unwrap();
    for bad in [0u64, 8, 0xdead_beef, ptr - 1, ptr - 4096, ptr + (1 << 30), u64::MAX - 3, u64::MAX] {
        assert_eq!(t.htod(bad, &[1, 2, 3, 4]).err(), Some(CuError::INVALID_VALUE), "HtoD to {bad:#x}");
        assert_eq!(t.dtoh(bad, 4).err(), Some(CuError::INVALID_VALUE), "DtoH from {bad:#x}");
        assert_eq!(t.dtod(bad, ptr, 4).err(), Some(CuError::INVALID_VALUE), "DtoD to {bad:#x}");
        assert_eq!(t.dtod(ptr, bad, 4).err(), Some(CuError::INVALID_VALUE), "DtoD from {bad:#x}");
        assert_eq!(t.memset(bad & !3, 0, 4, 1).err(), Some(CuError::INVALID_VALUE), "memset at {bad:#x}");
        assert_eq!(t.free(bad).err(), Some(CuError::INVALID_VALUE), "free {bad:#x}");
    }
    assert_eq!(t.dtoh(ptr, 4096).unwrap().as_ref(), pattern(4096, 1).as_slice());
}

#[test]
fn copy_past_the_end_is_invalid_value() {
    let b = backend();
    let mut t = Tenant::with_ctx(1, &b);
    // `ptr` last, so that nothing lies right after it (addresses are handed out upwards).
    let other = t.alloc(4096);
    let ptr = t.alloc(4096);
    t.htod(ptr, &pattern(4096, 3)).unwrap();
    t.htod(other, &pattern(4096, 4)).unwrap();
    // One byte too many, from the start and from inside.
    assert_eq!(t.htod(ptr, &pattern(4097, 9)).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.htod(ptr + 4090, &[0xAA; 7]).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.htod(ptr + 4096, &[0xAA]).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.dtoh(ptr, 4097).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.dtoh(ptr + 4095, 2).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.dtoh(ptr + 4096, 1).err(), Some(CuError::INVALID_VALUE));
    // Lengths that overflow, or that no payload could carry.
    assert_eq!(t.dtoh(ptr, u64::MAX).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.dtoh(ptr + 1, u64::MAX).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.dtod(other, ptr, 4097).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.dtod(other + 1, ptr, 4096).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.dtod(other, ptr, u64::MAX).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.dtod(other + 8, ptr + 8, u64::MAX - 7).err(), Some(CuError::INVALID_VALUE));
    // Nothing was written by any of them.
    assert_eq!(t.dtoh(ptr, 4096).unwrap().as_ref(), pattern(4096, 3).as_slice());
    assert_eq!(t.dtoh(other, 4096).unwrap().as_ref(), pattern(4096, 4).as_slice());
    // The exact fit works.
    t.htod(ptr + 4088, &[0x55; 8]).unwrap();
    t.dtod(other, ptr, 4096).unwrap();
    assert_eq!(&t.dtoh(other + 4088, 8).unwrap()[..], &[0x55; 8]);
}

#[test]
fn memset_past_the_end_is_invalid_value() {
    let b = backend();
    let mut t = Tenant::with_ctx(1, &b);
    let ptr = t.alloc(4096);
    t.htod(ptr, &pattern(4096, 5)).unwrap();
    assert_eq!(t.memset(ptr, 0xAB, 1, 4097).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.memset(ptr, 0xABCD, 2, 2049).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.memset(ptr, 0xDEAD_BEEF, 4, 1025).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.memset(ptr + 4092, 0xDEAD_BEEF, 4, 2).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.memset(ptr + 4096, 0, 1, 1).err(), Some(CuError::INVALID_VALUE));
    // count * elem_size overflows.
    assert_eq!(t.memset(ptr, 0, 4, u64::MAX).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.memset(ptr, 0, 4, (u64::MAX / 4) + 1).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.memset(ptr + 8, 0, 1, u64::MAX - 7).err(), Some(CuError::INVALID_VALUE));
    // An element size the driver does not have, and a misaligned destination.
    assert_eq!(t.memset(ptr, 0, 3, 4).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.memset(ptr, 0, 0, 4).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.memset(ptr + 2, 0, 4, 4).err(), Some(CuError::INVALID_VALUE));
    assert_eq!(t.dtoh(ptr, 4096).unwrap().as_ref(), pattern(4096, 5).as_slice());
    // The exact fit works.
    t.memset(ptr + 4092, 0x0102_0304, 4, 1).unwrap();
    assert_eq!(&t.dtoh(ptr + 4092, 4).unwrap()[..], &[4, 3, 2, 1]);
}

#[test]
fn freeing_an_interior_pointer_or_twice_is_invalid_value() {
    let b = backend();
    let start = free_mem(&b);
    let mut t = Tenant::with_ctx(1, &b);
    // `ptr` last, so that nothing lies right after it (addresses are handed out upwards).
    let keep = t.alloc(4096);
    let ptr = t.alloc(1 << 20);
    t.htod(keep, &pattern(4096, 6)).unwrap();
    t.htod(ptr, &pattern(4096, 7)).unwrap();
    for interior in [ptr + 1, ptr + 4096, ptr + (1 << 20) - 1, ptr + (1 << 20)] {
        assert_eq!(t.free(interior).err(), Some(CuError::INVALID_VALUE), "free {interior:#x}");
    }
    // Still allocated and intact.
    assert_eq!(t.dtoh(ptr, 4096).unwrap().as_ref(), pattern(4096, 7).as_slice());
    assert_eq!(t.session.holdings().allocations, 2);
    t.free(ptr).expect("free the base");
    assert_eq!(t.free(ptr).err(), Some(CuError::INVALID_VALUE), "double free");
    assert_eq!(t.dtoh(ptr, 16).err(), Some(CuError::INVALID_VALUE), "use after free");
    assert_eq!(t.htod(ptr, &[0; 16]).err(), Some(CuError::INVALID_VALUE), "use after free");
    // The other allocation is untouched by all of it.
    assert_eq!(t.dtoh(keep, 4096).unwrap().as_ref(), pattern(4096, 6).as_slice());
    t.free(keep).unwrap();
    assert_eq!(t.session.holdings().allocations, 0);
    // A module variable is no allocation of the tenant's.
    t.load_vecadd(Module(1));
    let counter = match t.ok(Request::ModuleGetGlobal(calls::ModuleGetGlobal::Req {
        module: Module(1),
        name: "counter".into(),
        ..Default::default()
    })) {
        Reply::ModuleGetGlobal(r) => r.dptr,
        other => panic!("unexpected reply {other:?}"),
    };
    assert_eq!(t.free(counter).err(), Some(CuError::INVALID_VALUE), "free a module variable");
    assert_eq!(&t.dtoh(counter, 4).unwrap()[..], &42u32.to_le_bytes());
    t.ok(Request::cuModuleUnload(calls::cuModuleUnload::Req { module: Module(1) }));
    assert_eq!(t.dtoh(counter, 4).err(), Some(CuError::INVALID_VALUE), "a variable of an unloaded module");
    assert_eq!(free_mem(&b), start);
}

// ---------------------------------------------------------------------------
// Two tenants on one backend

#[test]
fn another_tenants_pointers_are_out_of_reach() {
    let b = backend();
    let n: u64 = 64;
    let mut a = Tenant::with_ctx(1, &b);
    let info_a = a.load_vecadd(Module(1));
    a.get_function(Func(1), Module(1), "vecadd").unwrap();
    let (xa, ya, za) = (a.alloc(4 * n), a.alloc(4 * n), a.alloc(4 * n));
    let xs: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
    let ys: Vec<f32> = (0..n).map(|i| 2.0 * i as f32).collect();
    a.htod(xa, &floats(&xs)).unwrap();
    a.htod(ya, &floats(&ys)).unwrap();
    a.launch_vecadd(&info_a, Func(1), xa, ya, za, n as u32).expect("A's own launch");
    let sums = floats(&xs.iter().zip(&ys).map(|(x, y)| x + y).collect::<Vec<f32>>());
    assert_eq!(a.dtoh(za, 4 * n).unwrap().as_ref(), sums.as_slice());
    let a_holdings = a.session.holdings();

    // B and C use the very same client handle numbers as A.
    let mut bt = Tenant::with_ctx(2, &b);
    let own = bt.alloc(4 * n);
    assert_eq!(bt.dtoh(xa, 4 * n).err(), Some(CuError::INVALID_VALUE), "B reads A's memory");
    assert_eq!(bt.dtoh(za + 4, 4).err(), Some(CuError::INVALID_VALUE), "B reads inside A's allocation");
    assert_eq!(bt.htod(xa, &[0xFF; 16]).err(), Some(CuError::INVALID_VALUE), "B writes A's memory");
    assert_eq!(bt.dtod(own, xa, 4 * n).err(), Some(CuError::INVALID_VALUE), "B copies from A's memory");
    assert_eq!(bt.dtod(xa, own, 4 * n).err(), Some(CuError::INVALID_VALUE), "B copies into A's memory");
    assert_eq!(bt.memset(ya, 0, 4, n).err(), Some(CuError::INVALID_VALUE), "B memsets A's memory");
    assert_eq!(bt.free(za).err(), Some(CuError::INVALID_VALUE), "B frees A's memory");
    assert_eq!(
        bt.sync(Request::cuMemGetAddressRange_v2(calls::cuMemGetAddressRange_v2::Req { dptr: xa, ..Default::default() })).err(),
        Some(CuError::NOT_FOUND),
        "B learns the range of A's allocation"
    );
    // A kernel handed A's addresses runs in its own tenant's address space, where they do not
    // exist: B's writes A's memory, C's reads it.
    let info_b = bt.load_vecadd(Module(1));
    bt.get_function(Func(1), Module(1), "vecadd").unwrap();
    let launched = bt.launch_vecadd(&info_b, Func(1), own, own, za, n as u32);
    assert_eq!(launched.err(), Some(CuError::ILLEGAL_ADDRESS), "B's kernel writing A's memory");
    let mut ct = Tenant::with_ctx(3, &b);
    let info_c = ct.load_vecadd(Module(1));
    ct.get_function(Func(1), Module(1), "vecadd").unwrap();
    let out = ct.alloc(4 * n);
    let launched = ct.launch_vecadd(&info_c, Func(1), xa, ya, out, n as u32);
    assert_eq!(launched.err(), Some(CuError::ILLEGAL_ADDRESS), "C's kernel reading A's memory");

    // A: everything intact, nothing poisoned.
    assert_eq!(a.session.holdings(), a_holdings);
    assert_eq!(a.dtoh(xa, 4 * n).unwrap().as_ref(), floats(&xs).as_slice());
    assert_eq!(a.dtoh(ya, 4 * n).unwrap().as_ref(), floats(&ys).as_slice());
    assert_eq!(a.dtoh(za, 4 * n).unwrap().as_ref(), sums.as_slice());
    assert!(a.barrier_sync().result.is_ok(), "A's context is healthy");
    a.launch_vecadd(&info_a, Func(1), za, ya, xa, n as u32).expect("A launches again");
    // The faulting tenants' own contexts took the fault, as a GPU context would.
    assert_eq!(bt.barrier_sync().result.err(), Some(CuError::ILLEGAL_ADDRESS));
    assert_eq!(ct.barrier_sync().result.err(), Some(CuError::ILLEGAL_ADDRESS));
}

// ---------------------------------------------------------------------------
// Latched errors

#[test]
fn async_error_is_reported_once_by_the_next_barrier() {
    let b = backend();
    let mut t = Tenant::with_ctx(1, &b);
    let ptr = t.alloc(256);
    t.fire(Request::MemcpyHtoD(calls::MemcpyHtoD::Req { dst: ptr, stream: Stream::NULL }), &pattern(256, 8));
    // Fails, fire-and-forget: nothing comes back now.
    let failed = t.fire(Request::MemcpyHtoD(calls::MemcpyHtoD::Req { dst: 0xdead_0000, stream: Stream::NULL }), &[1, 2, 3]);
    // A second failure before the barrier does not replace the first.
    t.fire(Request::cuMemFree_v2(calls::cuMemFree_v2::Req { dptr: ptr + 1 }), &[]);
    // A Sync call answers for itself only, and leaves the latched error in place.
    let info = t.ask(CallKind::Sync, Request::cuMemGetInfo_v2(Default::default()), &[]);
    assert!(info.result.is_ok());
    assert_eq!(info.latched, None, "a Sync call reported a latched error");
    assert!(t.dtoh(ptr, 256).is_ok());
    // The barrier reports it, naming the call.
    let first = t.barrier_sync();
    assert!(first.result.is_ok(), "the barrier's own result: {first:?}");
    assert_eq!(first.latched, Some(Latched { error: CuError::INVALID_VALUE, seq: failed, function: "MemcpyHtoD".into() }));
    // Exactly once.
    let second = t.barrier_sync();
    assert_eq!(second.latched, None, "reported twice");
    let stream_sync = t.ask(CallKind::Barrier, Request::cuStreamSynchronize(calls::cuStreamSynchronize::Req { stream: Stream::NULL }), &[]);
    assert_eq!(stream_sync.latched, None);
    // A barrier that fails itself still carries the latched error of an earlier call.
    let launch =
        t.fire(Request::LaunchKernel(calls::LaunchKernel::Req { func: Func(99), dims: LaunchDims::default(), stream: Stream::NULL }), &[]);
    let failing = t.ask(CallKind::Barrier, Request::cuEventQuery(calls::cuEventQuery::Req { event: Event(5) }), &[]);
    assert_eq!(failing.result.err(), Some(CuError::INVALID_HANDLE));
    assert_eq!(failing.latched, Some(Latched { error: CuError::INVALID_HANDLE, seq: launch, function: "LaunchKernel".into() }));
    assert_eq!(t.barrier_sync().latched, None);
    // The good copy before the failures landed.
    assert_eq!(t.dtoh(ptr, 256).unwrap().as_ref(), pattern(256, 8).as_slice());
}

// ---------------------------------------------------------------------------
// Closing, duplicates

#[test]
fn dropped_session_frees_its_memory() {
    let b = backend();
    let start = free_mem(&b);
    assert_eq!(start, b.mem_info(0).unwrap().1, "all free at the start");
    let mut a = Tenant::with_ctx(1, &b);
    let mut keep = Tenant::with_ctx(2, &b);
    let kept = keep.alloc(1 << 20);
    keep.htod(kept, &pattern(4096, 9)).unwrap();
    let after_keep = free_mem(&b);
    assert!(after_keep <= start - (1 << 20));

    // A holds memory in two contexts, a module, a stream and an event.
    a.alloc(8 << 20);
    a.alloc(3 << 20);
    a.load_vecadd(Module(1));
    a.ok(Request::StreamCreate(calls::StreamCreate::Req { stream: Stream(100), flags: 0, priority: 0 }));
    a.ok(Request::EventCreate(calls::EventCreate::Req { event: Event(100), flags: 0 }));
    a.ok(Request::CtxCreate(calls::CtxCreate::Req { ctx: Ctx(7), flags: 0, dev: 0 }));
    a.ctx = Ctx(7);
    a.alloc(5 << 20);
    assert!(free_mem(&b) <= after_keep - (16 << 20));
    drop(a);
    assert_eq!(free_mem(&b), after_keep, "a dropped session left memory behind");

    // An explicit close (what the listener does), then the drop, frees the rest once.
    keep.session.close();
    assert_eq!(free_mem(&b), start);
    assert_eq!(keep.session.holdings().allocations, 0);
    drop(keep);
    assert_eq!(free_mem(&b), start);
}

#[test]
fn duplicate_handle_ids_are_refused_and_the_original_still_works() {
    let b = backend();
    let mut t = Tenant::with_ctx(1, &b);
    let n: u64 = 32;
    let ptr = t.alloc(4 * n);

    // Context.
    t.fails(Request::CtxCreate(calls::CtxCreate::Req { ctx: Ctx(1), flags: 0, dev: 0 }), CuError::INVALID_VALUE);
    t.fails(Request::PrimaryCtxRetain(calls::PrimaryCtxRetain::Req { ctx: Ctx(1), dev: 0 }), CuError::INVALID_VALUE);
    assert_eq!(t.session.holdings().contexts, 1);
    t.htod(ptr, &pattern(4 * n as usize, 10)).expect("the original context still works");

    // Stream.
    t.ok(Request::StreamCreate(calls::StreamCreate::Req { stream: Stream(100), flags: 0, priority: 0 }));
    t.fails(Request::StreamCreate(calls::StreamCreate::Req { stream: Stream(100), flags: 0, priority: 0 }), CuError::INVALID_VALUE);
    t.fails(Request::StreamCreate(calls::StreamCreate::Req { stream: Stream::PER_THREAD, flags: 0, priority: 0 }), CuError::INVALID_VALUE);
    assert_eq!(t.session.holdings().streams, 1);
    t.ok(Request::cuStreamSynchronize(calls::cuStreamSynchronize::Req { stream: Stream(100) }));

    // Event.
    t.ok(Request::EventCreate(calls::EventCreate::Req { event: Event(100), flags: 0 }));
    t.fails(Request::EventCreate(calls::EventCreate::Req { event: Event(100), flags: 0 }), CuError::INVALID_VALUE);
    t.ok(Request::cuEventRecord(calls::cuEventRecord::Req { event: Event(100), stream: Stream(100) }));
    t.ok(Request::cuEventSynchronize(calls::cuEventSynchronize::Req { event: Event(100) }));

    // Module: the duplicate load is refused before anything is loaded.
    let info = t.load_vecadd(Module(100));
    let before = free_mem(&b);
    let dup = t.sync_with(Request::ModuleLoad(calls::ModuleLoad::Req { module: Module(100), ..Default::default() }), &vecadd_ptx());
    assert_eq!(dup.err(), Some(CuError::INVALID_VALUE));
    assert_eq!(free_mem(&b), before, "a refused duplicate load took memory");
    assert_eq!(t.session.holdings().modules, 1);

    // Function.
    t.get_function(Func(100), Module(100), "vecadd").unwrap();
    assert_eq!(t.get_function(Func(100), Module(100), "vecadd").err(), Some(CuError::INVALID_VALUE));
    let (a, c) = (t.alloc(4 * n), t.alloc(4 * n));
    let xs: Vec<f32> = (0..n).map(|i| 3.0 * i as f32).collect();
    t.htod(a, &floats(&xs)).unwrap();
    t.launch_vecadd(&info, Func(100), a, a, c, n as u32).expect("the original function still launches");
    let doubled: Vec<f32> = xs.iter().map(|x| 2.0 * x).collect();
    assert_eq!(t.dtoh(c, 4 * n).unwrap().as_ref(), floats(&doubled).as_slice());
    assert_eq!(t.dtoh(ptr, 4 * n).unwrap().as_ref(), pattern(4 * n as usize, 10).as_slice());

    // Null handles are refused too.
    t.fails(Request::CtxCreate(calls::CtxCreate::Req { ctx: Ctx::NULL, flags: 0, dev: 0 }), CuError::INVALID_VALUE);
    t.fails(Request::EventCreate(calls::EventCreate::Req { event: Event::NULL, flags: 0 }), CuError::INVALID_VALUE);
    assert_eq!(t.get_function(Func::NULL, Module(100), "vecadd").err(), Some(CuError::INVALID_VALUE));
}

// ---------------------------------------------------------------------------
// Addresses

/// With unified addressing no two allocations of a process share an address, whatever their
/// contexts; the session keys its ranges by address. The emulated backend places each context
/// at `0x1000_0000_0000 + (id << 36) % 0x7000_0000_0000`, where `id` counts every backend
/// object of every session (contexts, streams, events, modules, functions); the modulus is
/// `0x700 << 36`, so every 1792 ids a new context gets the address space of a live one.
#[test]
fn contexts_of_one_session_never_share_an_address() {
    let b = backend();
    let mut t = Tenant::with_ctx(1, &b);
    let first = t.alloc(4096);
    t.htod(first, &pattern(4096, 11)).unwrap();
    let mut collided = None;
    // Short-lived contexts until one hands out `first` again (bounded: past a full cycle of 1792).
    for i in 0..4_000u64 {
        let ctx = Ctx(1000 + i);
        t.ctx = Ctx(1);
        t.ok(Request::CtxCreate(calls::CtxCreate::Req { ctx, flags: 0, dev: 0 }));
        t.ctx = ctx;
        let ptr = t.alloc(4096);
        if ptr == first {
            collided = Some(ctx);
            break;
        }
        t.ok(Request::CtxDestroy(calls::CtxDestroy::Req { ctx }));
    }
    let Some(other) = collided else { return };
    t.htod(first, &pattern(4096, 12)).unwrap();
    // Two live allocations, and the first context's data is its own.
    assert_eq!(t.session.holdings().allocations, 2, "an allocation of {other:?} replaced one of Ctx(1)");
    t.ctx = Ctx(1);
    assert_eq!(t.dtoh(first, 4096).map(|b| b.to_vec()), Ok(pattern(4096, 11)), "Ctx(1)'s allocation");
    assert_eq!(t.free(first), Ok(()), "freeing Ctx(1)'s allocation");
}

// ---------------------------------------------------------------------------
// 2-D and 3-D copies (rows of a pitched box), stream-ordered allocation, load logs

/// A 3-D box of `w` x `h` x `d` at (`x`, `y`, `z`) of memory with `pitch` and `rows` rows per
/// slice, starting at `base`: its rows `first .. first + count`.
#[allow(clippy::too_many_arguments)]
fn rows(base: DevPtr, w: u64, h: u64, pitch: u64, rows: u64, (x, y, z): (u64, u64, u64), first: u64, count: u64) -> Rows {
    Rows { base: base + z * rows * pitch + y * pitch + x, width: w, pitch, height: h, slice_pitch: rows * pitch, first, count }
}

#[test]
fn row_copies_move_exactly_the_box_and_nothing_else() {
    let b = backend();
    let mut t = Tenant::with_ctx(1, &b);
    // Memory: pitch 64, 10 rows per slice, 4 slices. Box: 20 bytes x 3 rows x 2 slices at (5, 2, 1).
    let (pitch, rows_per, slices) = (64u64, 10u64, 4u64);
    let size = pitch * rows_per * slices;
    let dev = t.alloc(size);
    let packed = pattern(20 * 3 * 2, 40);
    let dst = rows(dev, 20, 3, pitch, rows_per, (5, 2, 1), 0, 6);
    t.sync_with(Request::MemcpyRowsHtoD(calls::MemcpyRowsHtoD::Req { dst, stream: Stream::NULL }), &packed).unwrap();
    // The CPU model: the same bytes placed by hand.
    let mut model = vec![0u8; size as usize];
    for i in 0..6u64 {
        let (s, r) = (i / 3, i % 3);
        let at = ((1 + s) * rows_per * pitch + (2 + r) * pitch + 5) as usize;
        model[at..at + 20].copy_from_slice(&packed[(i * 20) as usize..(i * 20 + 20) as usize]);
    }
    assert_eq!(t.dtoh(dev, size).unwrap().to_vec(), model, "exactly the box was written");
    // Back to the host in two messages (rows 0..4 and 4..6), and device to device into
    // another layout (pitch 20, contiguous), which then reads back packed.
    let mut back = Vec::new();
    for (first, count) in [(0, 4), (4, 2)] {
        let src = rows(dev, 20, 3, pitch, rows_per, (5, 2, 1), first, count);
        let a = t.ask(CallKind::Sync, Request::MemcpyRowsDtoH(calls::MemcpyRowsDtoH::Req { src, stream: Stream::NULL }), &[]);
        a.result.unwrap();
        back.extend_from_slice(&a.payload);
    }
    assert_eq!(back, packed);
    let flat = t.alloc(120);
    let req = calls::MemcpyRowsDtoD::Req {
        dst: rows(flat, 20, 3, 20, 3, (0, 0, 0), 0, 6),
        src: rows(dev, 20, 3, pitch, rows_per, (5, 2, 1), 0, 6),
        stream: Stream::NULL,
    };
    t.ok(Request::MemcpyRowsDtoD(req));
    assert_eq!(t.dtoh(flat, 120).unwrap().to_vec(), packed);
}

#[test]
fn row_copies_outside_an_allocation_or_of_a_bad_shape_are_invalid_value() {
    let b = backend();
    let mut t = Tenant::with_ctx(1, &b);
    let dev = t.alloc(4096);
    let data = pattern(4096, 1);
    t.htod(dev, &data).unwrap();
    let htod = |t: &mut Tenant, dst: Rows, payload: &[u8]| {
        t.sync_with(Request::MemcpyRowsHtoD(calls::MemcpyRowsHtoD::Req { dst, stream: Stream::NULL }), payload).map(|_| ())
    };
    let ok = Rows { base: dev, width: 16, pitch: 64, height: 8, slice_pitch: 512, first: 0, count: 16 };
    assert_eq!(htod(&mut t, ok, &[7; 256]), Ok(()));
    let bad = CuError::INVALID_VALUE;
    // The last row's end one byte past the allocation.
    let past = Rows { base: dev + 4096 - 512 - 448 - 15, ..ok };
    assert_eq!(htod(&mut t, past, &[7; 256]), Err(bad));
    // Pitch narrower than a row; slices overlapping; empty; too many rows; payload of the wrong size.
    assert_eq!(htod(&mut t, Rows { pitch: 8, ..ok }, &[7; 256]), Err(bad));
    assert_eq!(htod(&mut t, Rows { slice_pitch: 64, ..ok }, &[7; 256]), Err(bad));
    assert_eq!(htod(&mut t, Rows { width: 0, count: 0, ..ok }, &[]), Err(bad));
    assert_eq!(htod(&mut t, Rows { width: 1, pitch: 1, height: 1 << 21, slice_pitch: 1 << 21, count: (1 << 20) + 1, ..ok }, &[]), Err(bad));
    assert_eq!(htod(&mut t, ok, &[7; 255]), Err(bad));
    // Address arithmetic that overflows.
    assert_eq!(htod(&mut t, Rows { slice_pitch: u64::MAX / 2, ..ok }, &[7; 256]), Err(bad));
    assert_eq!(htod(&mut t, Rows { first: u64::MAX, count: 2, width: 128, ..ok }, &[7; 256]), Err(bad));
    // Device to device with mismatched shapes.
    let req = calls::MemcpyRowsDtoD::Req { dst: ok, src: Rows { count: 15, ..ok }, stream: Stream::NULL };
    t.fails(Request::MemcpyRowsDtoD(req), bad);
    // Nothing outside the one good copy changed.
    let mut model = data.clone();
    for i in 0..16usize {
        let at = (i / 8) * 512 + (i % 8) * 64;
        model[at..at + 16].fill(7);
    }
    assert_eq!(t.dtoh(dev, 4096).unwrap().to_vec(), model);
}

fn alloc_async(t: &mut Tenant, bytes: u64, pool: MemPool) -> Result<DevPtr, CuError> {
    match t.sync(Request::MemAllocAsync(calls::MemAllocAsync::Req { dptr: (), bytes, pool, stream: Stream::NULL }))? {
        Reply::MemAllocAsync(r) => Ok(r.dptr),
        other => panic!("unexpected reply {other:?}"),
    }
}

fn pool_attribute(t: &mut Tenant, pool: MemPool, attr: i32) -> Result<u64, CuError> {
    match t.sync(Request::MemPoolGetAttribute(calls::MemPoolGetAttribute::Req { value: (), pool, attr }))? {
        Reply::MemPoolGetAttribute(r) => Ok(r.value),
        other => panic!("unexpected reply {other:?}"),
    }
}

#[test]
fn pools_count_their_allocations_and_refuse_what_is_not_theirs() {
    const USED_CURRENT: i32 = 7;
    const USED_HIGH: i32 = 8;
    let b = backend();
    let mut t = Tenant::with_ctx(1, &b);
    let default = MemPool::default_of(0);
    let a = alloc_async(&mut t, 1000, default).unwrap();
    let c = alloc_async(&mut t, 24, MemPool::NULL).unwrap();
    assert_eq!(pool_attribute(&mut t, default, USED_CURRENT), Ok(1024));
    // Pool memory is ordinary memory: copies reach it, cuMemFree frees it.
    t.htod(a, &pattern(1000, 3)).unwrap();
    assert_eq!(t.dtoh(a, 1000).unwrap().to_vec(), pattern(1000, 3));
    t.free(c).unwrap();
    t.ok(Request::MemFreeAsync(calls::MemFreeAsync::Req { dptr: a, stream: Stream::NULL }));
    assert_eq!(pool_attribute(&mut t, default, USED_CURRENT), Ok(0));
    assert_eq!(pool_attribute(&mut t, default, USED_HIGH), Ok(1024));
    t.ok(Request::MemPoolSetAttribute(calls::MemPoolSetAttribute::Req { pool: default, attr: USED_HIGH, value: 0 }));
    assert_eq!(pool_attribute(&mut t, default, USED_HIGH), Ok(0));
    assert_eq!(t.session.holdings().allocations, 0);

    // A created pool with a maximum size; the current pool follows cuDeviceSetMemPool.
    let mine = MemPool(0x5000);
    t.ok(Request::MemPoolCreate(calls::MemPoolCreate::Req { pool: mine, dev: 0, max_size: 4096 }));
    t.ok(Request::DeviceSetMemPool(calls::DeviceSetMemPool::Req { dev: 0, pool: mine }));
    let p = alloc_async(&mut t, 4096, MemPool::NULL).unwrap();
    assert_eq!(alloc_async(&mut t, 1, mine), Err(CuError::OUT_OF_MEMORY), "past the pool's maximum size");
    assert_eq!(pool_attribute(&mut t, mine, USED_CURRENT), Ok(4096));
    // Destroyed with an allocation outstanding: the allocation stays usable, the pool is gone
    // for new allocations, and the device's current pool is its default one again.
    t.ok(Request::MemPoolDestroy(calls::MemPoolDestroy::Req { pool: mine }));
    assert_eq!(alloc_async(&mut t, 16, mine), Err(CuError::INVALID_VALUE));
    t.htod(p, &[1; 4096]).unwrap();
    alloc_async(&mut t, 16, MemPool::NULL).unwrap();
    assert_eq!(pool_attribute(&mut t, default, USED_CURRENT), Ok(16));
    t.free(p).unwrap();

    // Forged, default and duplicate handles; bad attributes; zero bytes.
    let bad = CuError::INVALID_VALUE;
    t.fails(Request::MemPoolDestroy(calls::MemPoolDestroy::Req { pool: default }), bad);
    t.fails(Request::MemPoolCreate(calls::MemPoolCreate::Req { pool: default, dev: 0, max_size: 0 }), bad);
    t.fails(Request::MemPoolCreate(calls::MemPoolCreate::Req { pool: MemPool(0x6000), dev: 1, max_size: 0 }), CuError::INVALID_DEVICE);
    assert_eq!(alloc_async(&mut t, 16, MemPool(0x7000)), Err(bad));
    assert_eq!(alloc_async(&mut t, 16, MemPool::default_of(1)), Err(bad));
    assert_eq!(alloc_async(&mut t, 0, default), Err(bad));
    assert_eq!(pool_attribute(&mut t, default, 9), Err(bad));
    t.fails(Request::MemPoolSetAttribute(calls::MemPoolSetAttribute::Req { pool: default, attr: USED_CURRENT, value: 0 }), bad);
    t.fails(Request::MemPoolSetAttribute(calls::MemPoolSetAttribute::Req { pool: default, attr: USED_HIGH, value: 5 }), bad);
    t.fails(Request::DeviceSetMemPool(calls::DeviceSetMemPool::Req { dev: 0, pool: mine }), bad);

    // Another tenant's pool allocations are out of reach, and a closed session frees its own.
    let mut other = Tenant::with_ctx(2, &b);
    let theirs = alloc_async(&mut other, 4096, MemPool::NULL).unwrap();
    assert_eq!(t.free(theirs), Err(bad));
    t.fails(Request::MemFreeAsync(calls::MemFreeAsync::Req { dptr: theirs, stream: Stream::NULL }), bad);
    let before = free_mem(&b);
    drop(other);
    assert_eq!(free_mem(&b), before + 4096);
}

#[test]
fn a_failed_load_leaves_its_explanation_for_the_client_once() {
    let b = backend();
    let mut t = Tenant::with_ctx(1, &b);
    let bad_ptx = b".version 7.0\n.target sm_80\n.address_size 64\n.visible .entry k()\n{\n\tfrobnicate.u32 %r1;\n\tret;\n}\n";
    let module = Module(0x40);
    let r = t.sync_with(Request::ModuleLoad(calls::ModuleLoad::Req { module, ..Default::default() }), bad_ptx);
    assert_eq!(r.err(), Some(CuError::INVALID_PTX));
    let log = |t: &mut Tenant, handle: u64| match t.ok(Request::LoadLog(calls::LoadLog::Req { handle, log: () })) {
        Reply::LoadLog(r) => r.log,
        other => panic!("unexpected reply {other:?}"),
    };
    let text = log(&mut t, module.0);
    assert!(text.contains("line 6") && text.contains("frobnicate"), "{text}");
    assert_eq!(log(&mut t, module.0), "", "asked once, then forgotten");
    assert_eq!(log(&mut t, 0x999), "", "no log for a handle that did not fail");
}

#[test]
fn a_librarys_module_is_not_unloaded_alone() {
    let b = backend();
    let mut t = Tenant::with_ctx(1, &b);
    let library = Library(0x80);
    t.sync_with(Request::LibraryLoad(calls::LibraryLoad::Req { library, info: () }), &vecadd_ptx()).unwrap();
    let module = Module(0x90);
    t.ok(Request::LibraryGetModule(calls::LibraryGetModule::Req { module, library }));
    t.fails(Request::cuModuleUnload(calls::cuModuleUnload::Req { module }), CuError::INVALID_HANDLE);
    // The library's module still works.
    t.get_function(Func(0xa0), module, "vecadd").unwrap();
}

/// libcudart 13 loads the fatbinaries nvcc registered before it has a context: the library is
/// checked and described without one, then loaded into the context that first uses it, and a
/// scratch context leaves nothing behind.
#[test]
fn a_library_loaded_before_any_context_works_in_the_first_context_made() {
    let backend = backend();
    let free_before = free_mem(&backend);
    let mut t = Tenant::new(1, &backend);
    let info = match t.sync_with(Request::LibraryLoad(calls::LibraryLoad::Req { library: Library(7), ..Default::default() }), &vecadd_ptx())
    {
        Ok(Reply::LibraryLoad(r)) => r.info,
        other => panic!("loading vecadd.ptx as a library without a context: {other:?}"),
    };
    assert!(info.functions.iter().any(|f| f.name == "vecadd"), "{info:?}");
    assert_eq!(free_mem(&backend), free_before, "the scratch context left memory behind");
    // Bad PTX without a context is refused, with nothing kept.
    let refused =
        t.sync_with(Request::LibraryLoad(calls::LibraryLoad::Req { library: Library(8), ..Default::default() }), b".version 7.0\nnot ptx");
    assert!(refused.is_err(), "{refused:?}");

    t.ok(Request::CtxCreate(calls::CtxCreate::Req { ctx: Ctx(1), flags: 0, dev: 0 }));
    t.ctx = Ctx(1);
    t.fire(Request::LibraryGetKernel(calls::LibraryGetKernel::Req { kernel: Kernel(1), library: Library(7), name: "vecadd".into() }), &[]);
    t.fire(Request::KernelGetFunction(calls::KernelGetFunction::Req { func: Func(1), kernel: Kernel(1) }), &[]);
    let n = 64u32;
    let (a, b, c) = (t.alloc(4 * n as u64), t.alloc(4 * n as u64), t.alloc(4 * n as u64));
    let xs: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let ys: Vec<f32> = (0..n).map(|i| 2.0 * i as f32).collect();
    t.htod(a, &floats(&xs)).unwrap();
    t.htod(b, &floats(&ys)).unwrap();
    t.launch_vecadd(&info, Func(1), a, b, c, n).unwrap();
    let out = t.dtoh(c, 4 * n as u64).unwrap();
    let sums: Vec<f32> = out.chunks(4).map(|w| f32::from_le_bytes(w.try_into().unwrap())).collect();
    assert_eq!(sums, (0..n).map(|i| 3.0 * i as f32).collect::<Vec<_>>());
}
