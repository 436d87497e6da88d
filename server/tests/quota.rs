//! Quotas count every allocator a session can reach, module variables included (sans-IO: a
//! session on a pool with a configured tenant, no network).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use cuwire_protocol::{calls, Call, CallKind, Ctx, CuError, Module, Reply, Request, ServerMsg};
use cuwire_server::backend::emu::{EmuBackend, EmuConfig};
use cuwire_server::config::{PoolPolicy, TenantConfig};
use cuwire_server::pool::Pool;
use cuwire_server::session::Session;

fn call(s: &mut Session, seq: u64, request: Request, payload: Bytes) -> Result<Reply, CuError> {
    let out = s.handle(Call { seq, ctx: Ctx(1), kind: CallKind::Sync, request }, payload);
    match out.messages.into_iter().last() {
        Some((ServerMsg::Reply { result, .. }, _)) => result,
        other => panic!("no reply: {other:?}"),
    }
}

fn alloc(s: &mut Session, seq: u64, bytes: u64) -> Result<Reply, CuError> {
    call(s, seq, Request::cuMemAlloc_v2(calls::cuMemAlloc_v2::Req { dptr: (), bytesize: bytes }), Bytes::new())
}

fn held(pool: &Pool) -> u64 {
    pool.status()["tenants"]["t"]["memory_total"].as_u64().unwrap_or(0)
}

/// A session of tenant `t` (memory quota `quota` on GPU 0) with context `Ctx(1)` current.
fn session_with_quota(quota: u64) -> (Arc<Pool>, Session) {
    let backend = Arc::new(EmuBackend::new(EmuConfig { memories: vec![1 << 30], ..Default::default() }));
    let tenants = BTreeMap::from([("t".to_string(), TenantConfig { memory_per_gpu: Some(quota), ..Default::default() })]);
    let pool = Pool::new(backend, PoolPolicy { tenants: Some(tenants), ..Default::default() });
    let mut s = Session::with_pool(1, "t".into(), pool.clone(), vec![0]);
    s.handle(
        Call {
            seq: 1,
            ctx: Ctx::NULL,
            kind: CallKind::Async,
            request: Request::CtxCreate(calls::CtxCreate::Req { ctx: Ctx(1), flags: 0, dev: 0 }),
        },
        Bytes::new(),
    );
    (pool, s)
}

#[test]
fn module_variables_count_against_the_quota() {
    const QUOTA: u64 = 64 << 10;
    let (pool, mut s) = session_with_quota(QUOTA);

    let ptx = std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/clients/vecadd.ptx")).unwrap();
    call(&mut s, 2, Request::ModuleLoad(calls::ModuleLoad::Req { module: Module(7), info: () }), Bytes::from(ptx)).unwrap();
    let module_bytes = held(&pool);
    assert!(module_bytes > 0, "the module's .global counter is counted");

    // What is left of the quota can be allocated, and not a byte more.
    alloc(&mut s, 3, QUOTA - module_bytes).unwrap();
    assert_eq!(alloc(&mut s, 4, 1), Err(CuError::OUT_OF_MEMORY));
    assert_eq!(held(&pool), QUOTA);

    // Unloading the module gives its bytes back.
    s.handle(
        Call {
            seq: 5,
            ctx: Ctx(1),
            kind: CallKind::Async,
            request: Request::cuModuleUnload(calls::cuModuleUnload::Req { module: Module(7) }),
        },
        Bytes::new(),
    );
    assert_eq!(held(&pool), QUOTA - module_bytes);
    alloc(&mut s, 6, module_bytes).unwrap();
    drop(s);
    assert_eq!(held(&pool), 0, "a closed session gives everything back");
}

/// cuMemAllocAsync and cuMemAllocFromPoolAsync take from the same quota as cuMemAlloc: before
/// the GPU is touched, refused with CUDA_ERROR_OUT_OF_MEMORY past it, given back by
/// cuMemFreeAsync and by the end of the session.
#[test]
fn stream_ordered_allocations_count_against_the_quota() {
    use cuwire_protocol::{MemPool, Stream};
    const QUOTA: u64 = 1 << 20;
    let (pool, mut s) = session_with_quota(QUOTA);
    let alloc_async = |s: &mut Session, seq: u64, bytes: u64, pool: MemPool| {
        let req = calls::MemAllocAsync::Req { dptr: (), bytes, pool, stream: Stream::NULL };
        match call(s, seq, Request::MemAllocAsync(req), Bytes::new()) {
            Ok(Reply::MemAllocAsync(r)) => Ok(r.dptr),
            Ok(other) => panic!("unexpected reply {other:?}"),
            Err(e) => Err(e),
        }
    };
    let mine = MemPool(0x2000);
    call(&mut s, 2, Request::MemPoolCreate(calls::MemPoolCreate::Req { pool: mine, dev: 0, max_size: 0 }), Bytes::new()).unwrap();
    let a = alloc_async(&mut s, 3, QUOTA / 2, MemPool::NULL).unwrap();
    let b = alloc_async(&mut s, 4, QUOTA / 4, mine).unwrap();
    alloc(&mut s, 5, QUOTA / 4).unwrap();
    assert_eq!(held(&pool), QUOTA);
    assert_eq!(alloc_async(&mut s, 6, 1, MemPool::NULL), Err(CuError::OUT_OF_MEMORY));
    assert_eq!(alloc_async(&mut s, 7, 1, mine), Err(CuError::OUT_OF_MEMORY));
    assert_eq!(alloc(&mut s, 8, 1), Err(CuError::OUT_OF_MEMORY));
    assert_eq!(held(&pool), QUOTA, "refused allocations hold nothing");

    // cuMemFreeAsync gives the bytes back, for any allocator to take.
    call(&mut s, 9, Request::MemFreeAsync(calls::MemFreeAsync::Req { dptr: a, stream: Stream::NULL }), Bytes::new()).unwrap();
    assert_eq!(held(&pool), QUOTA / 2);
    alloc(&mut s, 10, QUOTA / 2).unwrap();
    assert_eq!(alloc_async(&mut s, 11, 1, mine), Err(CuError::OUT_OF_MEMORY));
    call(&mut s, 12, Request::MemFreeAsync(calls::MemFreeAsync::Req { dptr: b, stream: Stream::NULL }), Bytes::new()).unwrap();
    alloc_async(&mut s, 13, QUOTA / 4, mine).unwrap();
    drop(s);
    assert_eq!(held(&pool), 0, "a closed session gives its pool allocations back");
}
