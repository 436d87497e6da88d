//! The fuzz targets of cuwire, as plain functions: the `cargo fuzz` binaries in
//! `fuzz_targets/` call them with libFuzzer's input, and `server/tests/fuzz_corpus.rs` (which
//! includes this file as a module) replays the committed seed corpus through them on every
//! `cargo test`, so they are exercised without a fuzzer too.
//!
//! Each target takes untrusted bytes the way the server (or the shim) receives them and must
//! never panic, hang or allocate without bound; where a decode succeeds, what it decoded must
//! survive a round trip.
//!
//! This file uses only `cuwire_protocol`, `cuwire_server` and `bytes`, so it builds in both
//! places.
#![forbid(unsafe_code)]
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use cuwire_protocol::frame::{self, Decoder, RawFrame};
use cuwire_protocol::handshake::{self, Hello, Welcome};
use cuwire_protocol::limits::{MAX_FRAME, MAX_HANDSHAKE};
use cuwire_protocol::{calls, Call, CallKind, Ctx, LaunchDims, Module, Request, ServerMsg, Stream};
use cuwire_server::backend::emu::{EmuBackend, EmuConfig};
use cuwire_server::session::Session;

/// The targets and the corpus directory of each (`fuzz/corpus/<name>/`).
pub const TARGETS: [&str; 3] = ["frame_decode", "handshake", "dispatch"];

/// Runs `data` through the target called `name`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "frame_decode" => frame_decode(data),
        "handshake" => handshake(data),
        "dispatch" => dispatch(data),
        other => panic!("no fuzz target {other}"),
    }
}

/// Splits `data` into frames with [`Decoder`], fed in pieces whose size the first byte picks
/// (so partial frames are exercised), and decodes each frame as a client call and as a server
/// message, the two things a frame on the lane can be.
pub fn frame_decode(data: &[u8]) {
    let Some((&step, rest)) = data.split_first() else { return };
    let step = usize::from(step).max(1);
    let mut decoder = Decoder::new(MAX_FRAME);
    for piece in rest.chunks(step) {
        decoder.feed(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(raw)) => decode_frame(&raw),
                Ok(None) => break,
                // The stream can no longer be trusted: a connection would be closed here.
                Err(_) => return,
            }
        }
    }
    assert!(decoder.pending() <= rest.len());
}

/// A round trip is checked on the encoded bytes, not with `==` on the values: a float in a
/// message may be NaN, which is not equal to itself (the fuzzer found one in
/// `cuEventElapsedTime`'s reply), yet must survive encoding bit for bit.
fn decode_frame(raw: &RawFrame) {
    if let Ok(call) = raw.decode::<Call>() {
        let again = frame::encode_to_vec(&call, &raw.payload).expect("a decoded call encodes");
        let back = reframe(&again).decode::<Call>().expect("a re-encoded call decodes");
        assert_eq!(frame::encode_to_vec(&back, &raw.payload).expect("encodes"), again);
    }
    if let Ok(msg) = raw.decode::<ServerMsg>() {
        let again = frame::encode_to_vec(&msg, &raw.payload).expect("a decoded server message encodes");
        let back = reframe(&again).decode::<ServerMsg>().expect("a re-encoded server message decodes");
        assert_eq!(frame::encode_to_vec(&back, &raw.payload).expect("encodes"), again);
    }
}

/// The one frame in `bytes` (which must hold exactly one).
fn reframe(bytes: &[u8]) -> RawFrame {
    let mut d = Decoder::new(MAX_FRAME);
    d.feed(bytes);
    let raw = d.next_frame().expect("valid frame").expect("complete frame");
    assert_eq!(d.pending(), 0);
    raw
}

/// The first frame of a connection, each way: `data` is what arrives on the lane before the
/// handshake is done, read with the handshake limit; its first frame is decoded as a hello (what
/// the server reads) and as a welcome (what the shim reads).
pub fn handshake(data: &[u8]) {
    let mut decoder = Decoder::new(MAX_HANDSHAKE);
    decoder.feed(data);
    let Ok(Some(raw)) = decoder.next_frame() else { return };
    if let Ok(hello) = raw.decode::<Hello>() {
        let _ = handshake::check_version(handshake::PROTOCOL_VERSION, hello.protocol_version, "client");
        let again = frame::encode_to_vec(&hello, &[]).expect("a decoded hello encodes");
        let back = reframe(&again).decode::<Hello>().expect("re-encoded hello decodes");
        assert_eq!(frame::encode_to_vec(&back, &[]).expect("encodes"), again);
    }
    if let Ok(welcome) = raw.decode::<Welcome>() {
        let again = frame::encode_to_vec(&welcome, &[]).expect("a decoded welcome encodes");
        let back = reframe(&again).decode::<Welcome>().expect("re-encoded welcome decodes");
        assert_eq!(frame::encode_to_vec(&back, &[]).expect("encodes"), again);
    }
}

/// Device memory of the emulated GPU behind the dispatch target.
pub const DISPATCH_MEMORY: u64 = 16 << 20;
/// Calls run per input at most.
pub const DISPATCH_MAX_CALLS: usize = 64;

/// A fresh session on a small emulated GPU, as the server makes one per connection.
pub fn dispatch_session() -> Session {
    let backend = EmuBackend::new(EmuConfig {
        memories: vec![DISPATCH_MEMORY],
        compute_capability: (8, 0),
        worker_threads: 1,
        // Kernels that loop are stopped quickly.
        watchdog: Duration::from_millis(200),
    });
    Session::new(1, "fuzz".into(), Arc::new(backend), vec![0])
}

/// Request dispatch: `data` is the byte stream of a connection's lane after the handshake.
/// Every frame that decodes as a call runs through [`Session::handle`] on a fresh session of an
/// emulated GPU, as the server's worker does; the session must answer every `Sync` and
/// `Barrier` call with exactly one reply of the same sequence number, none to `Async` ones, and
/// never hold more than the device has.
pub fn dispatch(data: &[u8]) {
    let mut session = dispatch_session();
    let mut decoder = Decoder::new(MAX_FRAME);
    decoder.feed(data);
    for _ in 0..DISPATCH_MAX_CALLS {
        let raw = match decoder.next_frame() {
            Ok(Some(raw)) => raw,
            Ok(None) | Err(_) => break,
        };
        // An undecodable call closes the connection on the server.
        let Ok(call) = raw.decode::<Call>() else { break };
        let (seq, kind) = (call.seq, call.kind);
        let outcome = session.handle(call, raw.payload);
        let replies: Vec<u64> = outcome
            .messages
            .iter()
            .filter_map(|(m, _)| match m {
                ServerMsg::Reply { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        match kind {
            CallKind::Async => assert!(replies.is_empty(), "a reply to a fire-and-forget call"),
            CallKind::Sync | CallKind::Barrier => assert_eq!(replies, vec![seq], "not exactly one reply of the call's number"),
        }
        assert!(session.holdings().bytes <= DISPATCH_MEMORY, "the session holds more than the device has");
    }
    session.close();
    assert_eq!(session.holdings(), Default::default(), "a closed session still holds something");
}

// ---------------------------------------------------------------------------
// Seeds: a few valid inputs per target, committed in fuzz/corpus/<target>/ and checked against
// this list by server/tests/fuzz_corpus.rs (`CUWIRE_FUZZ_BLESS=1` there rewrites them).

const SPIN_PTX: &str = ".version 7.0\n.target sm_80\n.address_size 64\n\
    .visible .entry spin(.param .u32 n, .param .u64 out)\n\
    {\n .reg .pred %p<2>;\n .reg .b32 %r<4>;\n .reg .b64 %rd<3>;\n\
     ld.param.u32 %r1, [n];\n mov.u32 %r2, 0;\n\
    LOOP:\n add.u32 %r2, %r2, 1;\n setp.lt.u32 %p1, %r2, %r1;\n @%p1 bra LOOP;\n\
     ld.param.u64 %rd1, [out];\n cvta.to.global.u64 %rd2, %rd1;\n st.global.u32 [%rd2], %r2;\n ret;\n}\n";

fn call_frame(seq: u64, ctx: Ctx, kind: CallKind, request: Request, payload: &[u8]) -> Vec<u8> {
    frame::encode_to_vec(&Call { seq, ctx, kind, request }, payload).expect("seed encodes")
}

/// A session's lane: make a context, allocate, copy in and out, memset, load a module, launch,
/// synchronize, free. Pointers are the ones a fresh emulated GPU hands out (found by running the
/// calls), so the calls succeed and reach the backend.
fn session_seed() -> Vec<u8> {
    let ctx = Ctx(0x1000);
    let (module, func) = (Module(0x1010), cuwire_protocol::Func(0x1020));
    let mut session = dispatch_session();
    let mut out = Vec::new();
    let mut seq = 0;
    let mut push = |session: &mut Session, kind: CallKind, request: Request, payload: &[u8]| {
        seq += 1;
        let bytes = call_frame(seq, ctx, kind, request, payload);
        let raw = reframe(&bytes);
        let outcome = session.handle(raw.decode().unwrap(), raw.payload);
        out.extend_from_slice(&bytes);
        outcome
    };
    push(&mut session, CallKind::Async, Request::CtxCreate(calls::CtxCreate::Req { ctx, flags: 0, dev: 0 }), &[]);
    let reply =
        push(&mut session, CallKind::Sync, Request::cuMemAlloc_v2(calls::cuMemAlloc_v2::Req { bytesize: 4096, ..Default::default() }), &[]);
    let ptr = match &reply.messages[0].0 {
        ServerMsg::Reply { result: Ok(cuwire_protocol::Reply::cuMemAlloc_v2(r)), .. } => r.dptr,
        other => panic!("seed allocation failed: {other:?}"),
    };
    let s0 = Stream::NULL;
    push(&mut session, CallKind::Async, Request::MemcpyHtoD(calls::MemcpyHtoD::Req { dst: ptr, stream: s0 }), &[7u8; 256]);
    push(
        &mut session,
        CallKind::Async,
        Request::Memset(calls::Memset::Req { dst: ptr + 256, value: 9, elem_size: 4, count: 64, stream: s0 }),
        &[],
    );
    push(
        &mut session,
        CallKind::Async,
        Request::MemcpyDtoD(calls::MemcpyDtoD::Req { dst: ptr + 1024, src: ptr, bytes: 512, stream: s0 }),
        &[],
    );
    push(&mut session, CallKind::Sync, Request::MemcpyDtoH(calls::MemcpyDtoH::Req { src: ptr, bytes: 2048, stream: s0 }), &[]);
    // 2-D/3-D copies: 8 rows of 16 bytes, 4 rows (64 bytes apart) to a slice, 2 slices.
    let rows = cuwire_protocol::Rows { base: ptr + 2048, width: 16, pitch: 64, height: 4, slice_pitch: 512, first: 0, count: 8 };
    push(&mut session, CallKind::Async, Request::MemcpyRowsHtoD(calls::MemcpyRowsHtoD::Req { dst: rows, stream: s0 }), &[5u8; 128]);
    push(&mut session, CallKind::Sync, Request::MemcpyRowsDtoH(calls::MemcpyRowsDtoH::Req { src: rows, stream: s0 }), &[]);
    let dst = cuwire_protocol::Rows { base: ptr + 3072, ..rows };
    push(&mut session, CallKind::Async, Request::MemcpyRowsDtoD(calls::MemcpyRowsDtoD::Req { dst, src: rows, stream: s0 }), &[]);
    // Stream-ordered allocation from a pool of the session's own.
    let pool = cuwire_protocol::MemPool(0x1030);
    push(&mut session, CallKind::Async, Request::MemPoolCreate(calls::MemPoolCreate::Req { pool, dev: 0, max_size: 1 << 20 }), &[]);
    let reply = push(
        &mut session,
        CallKind::Sync,
        Request::MemAllocAsync(calls::MemAllocAsync::Req { dptr: (), bytes: 4096, pool, stream: s0 }),
        &[],
    );
    let pooled = match &reply.messages[0].0 {
        ServerMsg::Reply { result: Ok(cuwire_protocol::Reply::MemAllocAsync(r)), .. } => r.dptr,
        other => panic!("seed pool allocation failed: {other:?}"),
    };
    push(&mut session, CallKind::Sync, Request::MemPoolGetAttribute(calls::MemPoolGetAttribute::Req { value: (), pool, attr: 7 }), &[]);
    push(&mut session, CallKind::Async, Request::MemFreeAsync(calls::MemFreeAsync::Req { dptr: pooled, stream: s0 }), &[]);
    push(&mut session, CallKind::Async, Request::MemPoolDestroy(calls::MemPoolDestroy::Req { pool }), &[]);
    let mut image = SPIN_PTX.as_bytes().to_vec();
    image.push(0);
    push(&mut session, CallKind::Sync, Request::ModuleLoad(calls::ModuleLoad::Req { module, ..Default::default() }), &image);
    push(&mut session, CallKind::Sync, Request::LoadLog(calls::LoadLog::Req { handle: module.0, log: () }), &[]);
    push(
        &mut session,
        CallKind::Async,
        Request::ModuleGetFunction(calls::ModuleGetFunction::Req { func, module, name: "spin".into() }),
        &[],
    );
    let mut params = 100u32.to_le_bytes().to_vec();
    params.extend_from_slice(&[0; 4]);
    params.extend_from_slice(&(ptr + 2048).to_le_bytes());
    let dims = LaunchDims { grid: [1, 1, 1], block: [32, 1, 1], shared_mem_bytes: 0 };
    push(&mut session, CallKind::Async, Request::LaunchKernel(calls::LaunchKernel::Req { func, dims, stream: s0 }), &params);
    push(&mut session, CallKind::Barrier, Request::cuCtxSynchronize(calls::cuCtxSynchronize::Req {}), &[]);
    push(&mut session, CallKind::Sync, Request::cuMemGetInfo_v2(calls::cuMemGetInfo_v2::Req::default()), &[]);
    push(&mut session, CallKind::Async, Request::cuMemFree_v2(calls::cuMemFree_v2::Req { dptr: ptr }), &[]);
    push(&mut session, CallKind::Barrier, Request::cuCtxSynchronize(calls::cuCtxSynchronize::Req {}), &[]);
    out
}

/// `(target, file name, bytes)` of every seed.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let ctx = Ctx(0x1000);
    let hello = frame::encode_to_vec(&Hello::new(4242, "fuzz-host".into()), &[]).unwrap();
    let welcome = frame::encode_to_vec(
        &Welcome::Accepted {
            protocol_version: handshake::PROTOCOL_VERSION,
            server_build: handshake::BUILD_ID.into(),
            session: 7,
            tenant: "dev".into(),
            driver_version: 12040,
            devices: vec![handshake::DeviceInfo {
                name: "cuwire emulated GPU".into(),
                uuid: [3; 16],
                total_mem: 1 << 30,
                attributes: vec![(1, 1024), (16, 108)],
                pci_bus_id: "0000:00:00.0".into(),
            }],
        },
        &[],
    )
    .unwrap();
    let refused = frame::encode_to_vec(&Welcome::Refused { reason: "tenant \"eve\" is not configured on this pool".into() }, &[]).unwrap();
    let alloc = call_frame(
        1,
        ctx,
        CallKind::Sync,
        Request::cuMemAlloc_v2(calls::cuMemAlloc_v2::Req { bytesize: 1 << 20, ..Default::default() }),
        &[],
    );
    let htod = call_frame(
        2,
        ctx,
        CallKind::Async,
        Request::MemcpyHtoD(calls::MemcpyHtoD::Req { dst: 0x1_0000_0000, stream: Stream(0) }),
        b"hello",
    );
    let reply = frame::encode_to_vec(
        &ServerMsg::Reply {
            seq: 3,
            result: Err(cuwire_protocol::CuError::INVALID_VALUE),
            latched: Some(cuwire_protocol::Latched {
                error: cuwire_protocol::CuError::INVALID_VALUE,
                seq: 2,
                function: "MemcpyHtoD".into(),
            }),
        },
        &[],
    )
    .unwrap();
    let stdout = frame::encode_to_vec(&ServerMsg::Stdout(b"printf from a kernel\n".to_vec()), &[]).unwrap();
    let dtoh_reply = frame::encode_to_vec(
        &ServerMsg::Reply { seq: 4, result: Ok(cuwire_protocol::Reply::MemcpyDtoH(Default::default())), latched: None },
        &[0xab; 64],
    )
    .unwrap();
    // A NaN in a reply (found by the fuzzer: it is not equal to itself, yet must round-trip).
    let nan_reply = frame::encode_to_vec(
        &ServerMsg::Reply {
            seq: 45,
            result: Ok(cuwire_protocol::Reply::cuEventElapsedTime(calls::cuEventElapsedTime::Rep { ms: f32::NAN, ..Default::default() })),
            latched: None,
        },
        &[],
    )
    .unwrap();
    let lane = [alloc.clone(), htod.clone()].concat();
    // The frame decoder's inputs start with the size of the pieces they are fed in.
    let fd = |step: u8, bytes: &[u8]| [&[step][..], bytes].concat();
    vec![
        ("frame_decode", "call-alloc", fd(255, &alloc)),
        ("frame_decode", "call-htod-in-3-byte-pieces", fd(3, &htod)),
        ("frame_decode", "reply-with-latched-error", fd(16, &reply)),
        ("frame_decode", "stdout-and-dtoh-reply", fd(64, &[stdout, dtoh_reply].concat())),
        ("frame_decode", "lane-two-calls", fd(1, &lane)),
        ("frame_decode", "reply-with-nan", fd(255, &nan_reply)),
        ("handshake", "hello", hello),
        ("handshake", "welcome-accepted", welcome),
        ("handshake", "welcome-refused", refused),
        ("dispatch", "session", session_seed()),
        ("dispatch", "two-calls-without-context", lane),
    ]
}
