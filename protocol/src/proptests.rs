//! Property tests: every message round-trips through a frame; truncated, oversized and random
//! frames are rejected without a panic.

use proptest::prelude::*;

use crate::api::samples;
use crate::frame::{self, Decoder, FrameError};
use crate::handshake::{DeviceInfo, Hello, Welcome};
use crate::limits::{MAX_FRAME, MAX_PAYLOAD};
use crate::messages::{Call, CallKind, Latched, ServerMsg};
use crate::types::*;
use crate::{calls, Reply, Request};

fn kind() -> impl Strategy<Value = CallKind> {
    prop_oneof![Just(CallKind::Async), Just(CallKind::Sync), Just(CallKind::Barrier)]
}

/// Requests of every kind (default fields) plus ones with arbitrary fields for the calls that
/// carry strings, geometry and pointers.
fn request() -> impl Strategy<Value = Request> {
    let all = samples::all_requests();
    prop_oneof![
        (0..all.len()).prop_map(move |i| all[i].clone()),
        (any::<u64>(), any::<u64>(), ".{0,64}").prop_map(|(f, m, name)| Request::ModuleGetFunction(calls::ModuleGetFunction::Req {
            func: Func(f),
            module: Module(m),
            name
        })),
        (any::<u64>(), any::<[u32; 3]>(), any::<[u32; 3]>(), any::<u32>(), any::<u64>()).prop_map(|(f, g, b, s, st)| {
            Request::LaunchKernel(calls::LaunchKernel::Req {
                func: Func(f),
                dims: LaunchDims { grid: g, block: b, shared_mem_bytes: s },
                stream: Stream(st),
            })
        }),
        (any::<u64>(), any::<u32>(), 1u8..=4, any::<u64>(), any::<u64>()).prop_map(|(d, v, e, c, s)| Request::Memset(calls::Memset::Req {
            dst: d,
            value: v,
            elem_size: e,
            count: c,
            stream: Stream(s)
        })),
    ]
}

fn reply() -> impl Strategy<Value = Result<Reply, CuError>> {
    let all = samples::all_replies();
    prop_oneof![
        (0..all.len()).prop_map(move |i| Ok(all[i].clone())),
        any::<u32>().prop_map(|c| Err(CuError(c))),
        (any::<u64>(), any::<u64>()).prop_map(|(f, t)| Ok(Reply::cuMemGetInfo_v2(calls::cuMemGetInfo_v2::Rep { free: f, total: t }))),
        prop::collection::vec((".{0,16}", prop::collection::vec((any::<u32>(), any::<u32>()), 0..8), any::<u64>()), 0..6).prop_map(|fns| {
            let info = ModuleInfo {
                functions: fns
                    .iter()
                    .map(|(n, p, _)| FunctionInfo {
                        name: n.clone(),
                        params: p.iter().map(|&(offset, size)| ParamInfo { offset, size }).collect(),
                        attrs: FuncAttrs::default(),
                    })
                    .collect(),
                globals: fns.iter().map(|(n, _, a)| GlobalInfo { name: n.clone(), dptr: *a, bytes: 4 }).collect(),
            };
            Ok(Reply::ModuleLoad(calls::ModuleLoad::Rep { module: (), info }))
        }),
    ]
}

fn roundtrip<M: bincode::Encode + bincode::Decode<()> + PartialEq + std::fmt::Debug>(msg: &M, payload: &[u8]) {
    let bytes = frame::encode_to_vec(msg, payload).unwrap();
    let mut dec = Decoder::default();
    // Feed in two pieces: framing must not depend on how bytes arrive.
    let cut = bytes.len() / 2;
    dec.feed(&bytes[..cut]);
    if cut < bytes.len() {
        assert_eq!(dec.next_frame().unwrap(), None);
    }
    dec.feed(&bytes[cut..]);
    let raw = dec.next_frame().unwrap().expect("a whole frame");
    assert_eq!(&raw.payload[..], payload);
    let back: M = raw.decode().unwrap();
    assert_eq!(&back, msg);
    assert_eq!(dec.pending(), 0);
}

proptest! {
    #[test]
    fn calls_roundtrip(seq in any::<u64>(), ctx in any::<u64>(), kind in kind(), request in request(),
                       payload in prop::collection::vec(any::<u8>(), 0..256)) {
        roundtrip(&Call { seq, ctx: Ctx(ctx), kind, request }, &payload);
    }

    #[test]
    fn server_messages_roundtrip(seq in any::<u64>(), result in reply(), latched in prop::option::of((any::<u32>(), any::<u64>(), ".{0,20}")),
                                 text in prop::collection::vec(any::<u8>(), 0..64)) {
        let latched = latched.map(|(e, s, f)| Latched { error: CuError(e), seq: s, function: f });
        roundtrip(&ServerMsg::Reply { seq, result, latched }, &[]);
        roundtrip(&ServerMsg::Stdout(text), &[]);
    }

    #[test]
    fn handshake_roundtrips(v in any::<u32>(), pid in any::<u32>(), host in ".{0,40}", name in ".{0,40}",
                            attrs in prop::collection::vec((any::<i32>(), any::<i32>()), 0..150)) {
        roundtrip(&Hello { protocol_version: v, build_id: "b".into(), pid, host: host.clone() }, &[]);
        let dev = DeviceInfo { name, uuid: [7; 16], total_mem: 1 << 32, attributes: attrs, pci_bus_id: "0000:00:00.0".into() };
        roundtrip(&Welcome::Accepted { protocol_version: v, server_build: "s".into(), session: 1, tenant: host, driver_version: 12090, devices: vec![dev] }, &[]);
        roundtrip(&Welcome::Refused { reason: "no".into() }, &[]);
    }

    /// Any byte string fed to the decoder yields frames or an error, never a panic, and never
    /// makes it hold more than one frame's worth.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut dec = Decoder::default();
        dec.feed(&bytes);
        while let Ok(Some(raw)) = dec.next_frame() {
            let _ = raw.decode::<Call>();
            let _ = raw.decode::<ServerMsg>();
        }
        prop_assert!(dec.pending() <= bytes.len());
    }

    /// A valid frame cut short is incomplete, not an error and not a panic; its message bytes
    /// cut short do not decode.
    #[test]
    fn truncated_frames_are_incomplete(request in request(), cut in 0usize..64) {
        let bytes = frame::encode_to_vec(&Call { seq: 1, ctx: Ctx(1), kind: CallKind::Sync, request }, &[]).unwrap();
        let cut = cut % bytes.len();
        let mut dec = Decoder::default();
        dec.feed(&bytes[..cut]);
        prop_assert_eq!(dec.next_frame().unwrap(), None);
        // The same message with its tail missing, framed as if whole, fails to decode.
        if bytes.len() - 8 > 1 {
            let msg = &bytes[8..bytes.len() - 1];
            let raw = frame::RawFrame { message: bytes::Bytes::copy_from_slice(msg), payload: bytes::Bytes::new() };
            prop_assert!(raw.decode::<Call>().is_err());
        }
    }

    /// A frame announcing more than the limit is refused from its first four bytes, before
    /// anything is allocated for it.
    #[test]
    fn oversized_frames_are_refused(len in (MAX_FRAME as u64 + 1)..=u32::MAX as u64) {
        let mut dec = Decoder::default();
        dec.feed(&(len as u32).to_le_bytes());
        prop_assert_eq!(dec.next_frame(), Err(FrameError::TooLarge(len)));
        prop_assert!(dec.pending() == 4);
    }
}

#[test]
fn frame_announcing_4_gib_is_refused() {
    let mut dec = Decoder::default();
    dec.feed(&u32::MAX.to_le_bytes());
    dec.feed(&[0; 16]);
    assert!(matches!(dec.next_frame(), Err(FrameError::TooLarge(_))));
}

#[test]
fn message_length_beyond_body_is_malformed() {
    let mut bytes = vec![];
    bytes.extend_from_slice(&8u32.to_le_bytes());
    bytes.extend_from_slice(&1000u32.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    let mut dec = Decoder::default();
    dec.feed(&bytes);
    assert!(matches!(dec.next_frame(), Err(FrameError::Malformed(_))));
}

#[test]
fn oversized_payload_is_refused_when_encoding() {
    let msg = ServerMsg::Stdout(vec![]);
    assert!(matches!(frame::encode(&msg, MAX_PAYLOAD + 1), Err(FrameError::TooLarge(_))));
}

#[test]
fn a_string_claiming_a_huge_length_does_not_allocate_it() {
    // A ModuleGetFunction whose name claims 2^40 bytes: the decode limit refuses it.
    let good = frame::encode_to_vec(
        &Call {
            seq: 0,
            ctx: Ctx(0),
            kind: CallKind::Async,
            request: Request::ModuleGetFunction(calls::ModuleGetFunction::Req { func: Func(1), module: Module(2), name: "k".into() }),
        },
        &[],
    )
    .unwrap();
    // The name's length byte is the second to last (a 1 before "k"): replace it with a huge varint.
    let mut msg = good[8..good.len() - 2].to_vec();
    msg.push(253); // u64 varint marker
    msg.extend_from_slice(&(1u64 << 40).to_le_bytes());
    msg.push(b'k');
    let raw = frame::RawFrame { message: msg.into(), payload: bytes::Bytes::new() };
    assert!(raw.decode::<Call>().is_err());
}

#[test]
fn version_mismatch_names_both_versions() {
    let err = crate::handshake::check_version(1, 7, "client").unwrap_err();
    assert!(err.contains('1') && err.contains('7'), "{err}");
}
