//! Criterion benches without network: bincode encoding of calls and replies, framing, and the
//! shim's call path (what `Lane::submit` does for a launch, and the thread hand-off a
//! synchronous call waits on).

use std::sync::mpsc;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use cuwire_protocol::frame::{self, Decoder};
use cuwire_protocol::{calls, Call, CallKind, Ctx, Func, LaunchDims, Reply, Request, ServerMsg, Stream};

fn launch_call(seq: u64) -> Call {
    Call {
        seq,
        ctx: Ctx(0x1010),
        kind: CallKind::Async,
        request: Request::LaunchKernel(calls::LaunchKernel::Req {
            func: Func(0x2040),
            dims: LaunchDims { grid: [1024, 1, 1], block: [256, 1, 1], shared_mem_bytes: 0 },
            stream: Stream(0),
        }),
    }
}

fn sync_reply(seq: u64) -> ServerMsg {
    ServerMsg::Reply {
        seq,
        result: Ok(Reply::cuMemGetInfo_v2(calls::cuMemGetInfo_v2::Rep { free: 3 << 30, total: 4 << 30 })),
        latched: None,
    }
}

fn encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("bincode");
    let call = launch_call(123_456);
    let bytes = bincode::encode_to_vec(&call, frame::config()).unwrap();
    g.bench_function("encode LaunchKernel call", |b| b.iter(|| bincode::encode_to_vec(black_box(&call), frame::config()).unwrap()));
    g.bench_function("decode LaunchKernel call", |b| {
        b.iter(|| bincode::decode_from_slice::<Call, _>(black_box(&bytes), frame::config()).unwrap())
    });
    let reply = sync_reply(123_456);
    let rbytes = bincode::encode_to_vec(&reply, frame::config()).unwrap();
    g.bench_function("encode cuMemGetInfo reply", |b| b.iter(|| bincode::encode_to_vec(black_box(&reply), frame::config()).unwrap()));
    g.bench_function("decode cuMemGetInfo reply", |b| {
        b.iter(|| bincode::decode_from_slice::<ServerMsg, _>(black_box(&rbytes), frame::config()).unwrap())
    });
    g.finish();
}

fn framing(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    let call = launch_call(7);
    g.bench_function("encode head (LaunchKernel, 8-byte params)", |b| b.iter(|| frame::encode(black_box(&call), 8).unwrap()));
    // 1000 launch frames back to back, as a burst of fire-and-forget launches arrives.
    let mut stream = Vec::new();
    for i in 0..1000 {
        stream.extend_from_slice(&frame::encode_to_vec(&launch_call(i), &[0u8; 8]).unwrap());
    }
    g.throughput(Throughput::Elements(1000));
    g.bench_function("Decoder: 1000 launch frames, fed 64 KiB at a time", |b| {
        b.iter(|| {
            let mut d = Decoder::default();
            let mut n = 0;
            for piece in stream.chunks(64 << 10) {
                d.feed(piece);
                while let Some(raw) = d.next_frame().unwrap() {
                    let call: Call = raw.decode().unwrap();
                    black_box(call);
                    n += 1;
                }
            }
            assert_eq!(n, 1000);
        })
    });
    g.finish();
}

fn call_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("shim call path");
    // Lane::submit for a launch: number it, encode the head, hand head + packed parameters to
    // the I/O thread's channel (drained now and then here, as the I/O thread would).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Bytes, Bytes)>();
    let mut seq = 0u64;
    g.bench_function("launch: encode + hand to the I/O channel", |b| {
        b.iter(|| {
            seq += 1;
            let head = frame::encode(&launch_call(seq), 8).unwrap();
            tx.send((head, Bytes::from_static(&[0u8; 8]))).unwrap();
            if seq % 1024 == 0 {
                while rx.try_recv().is_ok() {}
            }
        })
    });
    // A synchronous call waits for another thread to answer: this is the floor of one thread
    // wake-up each way, the unit the network round trip of the shim is built from.
    let (req_tx, req_rx) = mpsc::sync_channel::<mpsc::SyncSender<u64>>(1);
    let echo = std::thread::spawn(move || {
        while let Ok(slot) = req_rx.recv() {
            let _ = slot.send(1);
        }
    });
    g.bench_function("sync hand-off round trip between two threads", |b| {
        b.iter(|| {
            let (slot, answer) = mpsc::sync_channel(1);
            req_tx.send(slot).unwrap();
            black_box(answer.recv().unwrap())
        })
    });
    drop(req_tx);
    let _ = echo.join();
    g.finish();
}

criterion_group!(benches, encoding, framing, call_path);
criterion_main!(benches);
