//! Bad input over the wire, against a real `cuwired`: garbage after the handshake, oversized and
//! malformed frames, undecodable messages, a wrong protocol version, no hello at all, forged
//! handles, another tenant's pointers and a client that vanishes. Each gets a clear CUDA error
//! or a refused connection, and the server goes on serving with nothing already stored lost.
//!
//! The bad clients are raw quinn clients with the `dev` tenant certificate that speak the wire
//! protocol by hand. Each test starts its own server.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use cuwire_e2e::{c_clients_available, run_client, vecadd_ptx, Client, Server};
use cuwire_protocol::frame::{self, Decoder, RawFrame};
use cuwire_protocol::handshake::{Hello, Welcome, PROTOCOL_VERSION};
use cuwire_protocol::limits::{MAX_FRAME, MAX_HANDSHAKE};
use cuwire_protocol::{
    calls, Call, CallKind, Ctx, CuError, DevPtr, Event, Func, Latched, LaunchDims, Module, Reply, Request, ServerMsg, Stream,
};

/// The server's close codes (see `cuwire_server::listener::close_codes`).
const PROTOCOL_VIOLATION: u64 = 1;
const REFUSED: u64 = 2;

/// How long a bad connection may take to be closed by the server.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// A QUIC connection with the `dev` tenant certificate; no cuwire handshake yet.
async fn connect(server: &Server) -> (quinn::Endpoint, quinn::Connection) {
    connect_to(server.addr(), server.certs_dir()).await
}

/// [`connect`] to the server at `addr` whose `--dev` certificates are in `certs`.
async fn connect_to(addr: SocketAddr, certs: &Path) -> (quinn::Endpoint, quinn::Connection) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(cuwire_certs::ca_pem(certs)).expect("ca.pem")).expect("add CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(cuwire_certs::tenant_pem(certs, "dev")).expect("tenant cert")],
            PrivateKeyDer::from_pem_file(cuwire_certs::tenant_key(certs, "dev")).expect("tenant key"),
        )
        .expect("client auth");
    tls.alpn_protocols = vec![cuwire_protocol::handshake::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(Duration::from_secs(10).try_into().expect("idle timeout")))
        .keep_alive_interval(Some(Duration::from_millis(500)));
    config.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client endpoint");
    let connecting = endpoint.connect_with(config, addr, "localhost").expect("connect");
    let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("TLS handshake timed out")
        .unwrap_or_else(|e| panic!("TLS handshake with {addr} failed: {e}"));
    (endpoint, conn)
}

/// Reads one frame: `[u32 body_len][body]`.
async fn read_frame(recv: &mut quinn::RecvStream, limit: usize) -> Result<RawFrame, String> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.map_err(|e| format!("reading a frame: {e}"))?;
    let len = frame::body_len(prefix, limit).map_err(|e| e.to_string())?;
    let mut bytes = vec![0u8; 4 + len];
    bytes[..4].copy_from_slice(&prefix);
    recv.read_exact(&mut bytes[4..]).await.map_err(|e| format!("reading a frame body: {e}"))?;
    let mut decoder = Decoder::new(limit);
    decoder.feed(&bytes);
    decoder.next_frame().map_err(|e| e.to_string())?.ok_or_else(|| "incomplete frame".to_string())
}

/// Sends a hello and returns the welcome.
async fn hello(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, hello: &Hello) -> Welcome {
    send.write_all(&frame::encode_to_vec(hello, &[]).expect("encode hello")).await.expect("send hello");
    let raw = read_frame(recv, MAX_HANDSHAKE).await.expect("the welcome");
    raw.decode::<Welcome>().expect("a welcome that decodes")
}

fn our_hello() -> Hello {
    Hello::new(std::process::id(), "bad-input-test".into())
}

/// How the server ended a connection, if it did within `within`.
async fn closed_within(conn: &quinn::Connection, within: Duration) -> Option<quinn::ConnectionError> {
    tokio::time::timeout(within, conn.closed()).await.ok()
}

/// Asserts that the server closed `conn` with an application close of `code` whose reason
/// contains `reason`, within [`CLOSE_WITHIN`].
async fn assert_app_closed(conn: &quinn::Connection, code: u64, reason: &str, server: &Server) {
    match closed_within(conn, CLOSE_WITHIN).await {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            let text = String::from_utf8_lossy(&close.reason).into_owned();
            eprintln!("closed by the server: code {}, {text:?}", close.error_code);
            assert_eq!(u64::from(close.error_code), code, "close code (reason {text:?})\n{}", server.log());
            assert!(text.contains(reason), "the close reason {text:?} does not mention {reason:?}\n{}", server.log());
        }
        Some(other) => panic!("closed, but not by the server's application: {other}\n{}", server.log()),
        None => panic!("the server did not close the connection within {CLOSE_WITHIN:?}\n{}", server.log()),
    }
}

/// One answer to a Sync or Barrier call.
#[derive(Debug)]
struct Answer {
    result: Result<Reply, CuError>,
    latched: Option<Latched>,
    payload: Vec<u8>,
}

/// A client speaking the wire protocol by hand, past the handshake.
struct Raw {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    seq: u64,
    ctx: Ctx,
}

impl Raw {
    /// Connects and completes the handshake.
    async fn open(server: &Server) -> Raw {
        Raw::open_at(server.addr(), server.certs_dir()).await
    }

    async fn open_at(addr: SocketAddr, certs: &Path) -> Raw {
        let (endpoint, conn) = connect_to(addr, certs).await;
        let (mut send, mut recv) = conn.open_bi().await.expect("open the lane");
        match hello(&mut send, &mut recv, &our_hello()).await {
            Welcome::Accepted { .. } => {}
            Welcome::Refused { reason } => panic!("refused: {reason}"),
        }
        Raw { endpoint, conn, send, recv, seq: 0, ctx: Ctx::NULL }
    }

    /// Connects, completes the handshake and creates context `Ctx(1)`, current from then on.
    async fn with_ctx(server: &Server) -> Raw {
        Raw::with_ctx_at(server.addr(), server.certs_dir()).await
    }

    async fn with_ctx_at(addr: SocketAddr, certs: &Path) -> Raw {
        let mut raw = Raw::open_at(addr, certs).await;
        raw.fire(Request::CtxCreate(calls::CtxCreate::Req { ctx: Ctx(1), flags: 0, dev: 0 }), &[]).await;
        raw.ctx = Ctx(1);
        raw
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("write to the lane");
    }

    /// Sends a call; returns its sequence number.
    async fn send_call(&mut self, kind: CallKind, request: Request, payload: &[u8]) -> u64 {
        self.seq += 1;
        let call = Call { seq: self.seq, ctx: self.ctx, kind, request };
        let bytes = frame::encode_to_vec(&call, payload).expect("encode call");
        self.write(&bytes).await;
        self.seq
    }

    /// A fire-and-forget call.
    async fn fire(&mut self, request: Request, payload: &[u8]) -> u64 {
        self.send_call(CallKind::Async, request, payload).await
    }

    /// A call of `kind` (Sync or Barrier) and its reply.
    async fn ask(&mut self, kind: CallKind, request: Request, payload: &[u8]) -> Answer {
        let seq = self.send_call(kind, request, payload).await;
        loop {
            let raw = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut self.recv, MAX_FRAME))
                .await
                .expect("no reply within 10 s")
                .unwrap_or_else(|e| panic!("no reply: {e}"));
            match raw.decode::<ServerMsg>().expect("a server message that decodes") {
                ServerMsg::Reply { seq: got, result, latched } => {
                    assert_eq!(got, seq, "the reply names another call");
                    return Answer { result, latched, payload: raw.payload.to_vec() };
                }
                ServerMsg::Stdout(_) => continue,
                ServerMsg::Goodbye { reason } => panic!("the server said goodbye: {reason}"),
            }
        }
    }

    async fn sync(&mut self, request: Request) -> Result<Reply, CuError> {
        let a = self.ask(CallKind::Sync, request, &[]).await;
        assert_eq!(a.latched, None, "a Sync reply carried a latched error");
        a.result
    }

    async fn barrier(&mut self, request: Request) -> Answer {
        self.ask(CallKind::Barrier, request, &[]).await
    }

    async fn ctx_sync(&mut self) -> Answer {
        self.barrier(Request::cuCtxSynchronize(Default::default())).await
    }

    async fn alloc(&mut self, bytes: u64) -> DevPtr {
        match self.sync(Request::cuMemAlloc_v2(calls::cuMemAlloc_v2::Req { bytesize: bytes, ..Default::default() })).await {
            Ok(Reply::cuMemAlloc_v2(r)) => r.dptr,
            other => panic!("cuMemAlloc_v2({bytes}): {other:?}"),
        }
    }

    async fn mem_info(&mut self) -> (u64, u64) {
        match self.sync(Request::cuMemGetInfo_v2(Default::default())).await {
            Ok(Reply::cuMemGetInfo_v2(r)) => (r.free, r.total),
            other => panic!("cuMemGetInfo_v2: {other:?}"),
        }
    }

    async fn htod(&mut self, dst: DevPtr, data: &[u8]) {
        self.fire(Request::MemcpyHtoD(calls::MemcpyHtoD::Req { dst, stream: Stream::NULL }), data).await;
    }

    async fn dtoh(&mut self, src: DevPtr, bytes: u64) -> Result<Vec<u8>, CuError> {
        let a = self.ask(CallKind::Sync, Request::MemcpyDtoH(calls::MemcpyDtoH::Req { src, bytes, stream: Stream::NULL }), &[]).await;
        a.result.map(|_| a.payload)
    }

    /// Closes the connection properly and waits (briefly) for it to go.
    async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A full round of good work on a fresh connection: the server still serves.
async fn assert_serves(server: &Server) {
    assert!(server.is_running(), "the server died\n{}", server.log());
    let mut c = Raw::with_ctx(server).await;
    let data = pattern(1 << 16, 99);
    let ptr = c.alloc(data.len() as u64).await;
    c.htod(ptr, &data).await;
    assert_eq!(c.dtoh(ptr, data.len() as u64).await.expect("read back"), data, "a good client's data");
    c.fire(Request::cuMemFree_v2(calls::cuMemFree_v2::Req { dptr: ptr }), &[]).await;
    let a = c.ctx_sync().await;
    assert!(a.result.is_ok() && a.latched.is_none(), "a good client's calls failed: {a:?}\n{}", server.log());
    c.close().await;
    assert!(server.is_running(), "the server died\n{}", server.log());
}

/// The C driver API client passes against `server` (where it can be built).
fn assert_c_client_passes(server: &Server) {
    if !c_clients_available() {
        return;
    }
    let mut cmd = Command::new(Client::c("driver_api.c"));
    cmd.arg(vecadd_ptx());
    let out = run_client(cmd, server.env(), &[]);
    assert!(out.all_passed(), "driver_api.c did not pass after bad input\n{out}\n--- server log ---\n{}", server.log());
    assert!(server.is_running(), "the server died\n{}", server.log());
}

/// A line of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/<pid>/status");
    let line = text.lines().find(|l| l.starts_with(&format!("{key}:"))).unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad line {line:?}"))
}

// ---------------------------------------------------------------------------
// Frames

#[test]
fn garbage_after_the_handshake_closes_only_that_connection() {
    let server = Server::start(&[]);
    runtime().block_on(async {
        // A good client holding data, connected while the bad one misbehaves.
        let mut good = Raw::with_ctx(&server).await;
        let data = pattern(4096, 1);
        let ptr = good.alloc(4096).await;
        good.htod(ptr, &data).await;

        // Random bytes (their first four announce far more than a frame may hold), and random
        // bytes behind a length word that fits them (their message length does not). Whatever
        // they announce, the stream then ends, so the server can only find a bad frame.
        let noise = pattern(1000, 7);
        for garbage in [noise.clone(), frame_with_body(&noise)] {
            let mut bad = Raw::open(&server).await;
            bad.write(&garbage).await;
            let _ = bad.send.finish();
            assert_app_closed(&bad.conn, PROTOCOL_VIOLATION, "frame", &server).await;
        }

        assert_eq!(good.dtoh(ptr, 4096).await.expect("the good client's data"), data);
        good.close().await;
        assert_serves(&server).await;
    });
    assert_c_client_passes(&server);
}

#[test]
fn a_frame_announcing_4_gib_is_refused_without_allocating_it() {
    let server = Server::start(&[]);
    let pid = server.pid();
    let rss_before = proc_status_kib(pid, "VmRSS");
    runtime().block_on(async {
        let mut bad = Raw::open(&server).await;
        let start = Instant::now();
        bad.write(&[0xFF; 4]).await;
        assert_app_closed(&bad.conn, PROTOCOL_VIOLATION, "exceeds the limit", &server).await;
        assert!(start.elapsed() < Duration::from_secs(2), "refused only after {:?}", start.elapsed());

        // The same with a body on its way.
        let mut bad = Raw::open(&server).await;
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.extend(pattern(64 << 10, 3));
        bad.write(&bytes).await;
        assert_app_closed(&bad.conn, PROTOCOL_VIOLATION, "exceeds the limit", &server).await;

        assert_serves(&server).await;
    });
    let (rss, peak) = (proc_status_kib(pid, "VmRSS"), proc_status_kib(pid, "VmHWM"));
    eprintln!("server RSS: {rss_before} KiB before, {rss} KiB after, peak {peak} KiB");
    assert!(peak < 512 << 10, "the server's peak RSS reached {peak} KiB: it allocated what the frame announced");
}

/// A client that asks for data and never reads the replies (300 device-to-host copies of 4 MiB,
/// 1.2 GiB in all) stalls only its own session: the server holds at most its reply budget
/// (64 MiB, held until the client acknowledges the data) for it, serves others meanwhile, and
/// every reply arrives intact once it reads.
#[test]
fn a_client_that_never_reads_its_replies_does_not_grow_the_server() {
    const CHUNK: u64 = 4 << 20;
    const ASKED: usize = 300;
    let server = Server::start(&[]);
    let pid = server.pid();
    runtime().block_on(async {
        let mut c = Raw::with_ctx(&server).await;
        let data = pattern(CHUNK as usize, 21);
        let ptr = c.alloc(CHUNK).await;
        c.htod(ptr, &data).await;
        let mut first = 0;
        for i in 0..ASKED {
            let req = Request::MemcpyDtoH(calls::MemcpyDtoH::Req { src: ptr, bytes: CHUNK, stream: Stream::NULL });
            let seq = c.send_call(CallKind::Sync, req, &[]).await;
            if i == 0 {
                first = seq;
            }
        }
        // Let the worker produce what it will: wait until the server's memory stops growing.
        let (mut last, mut still_since, deadline) = (0, Instant::now(), Instant::now() + Duration::from_secs(15));
        while still_since.elapsed() < Duration::from_secs(1) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let rss = proc_status_kib(pid, "VmRSS");
            if rss > last + (4 << 10) {
                (last, still_since) = (rss, Instant::now());
            }
        }
        assert_serves(&server).await;
        let peak = proc_status_kib(pid, "VmHWM");
        eprintln!("server peak RSS with {ASKED} x 4 MiB unread: {peak} KiB");
        assert!(peak < 160 << 10, "the server's peak RSS reached {peak} KiB: it buffered the unread replies");
        for i in 0..ASKED as u64 {
            let raw = tokio::time::timeout(Duration::from_secs(20), read_frame(&mut c.recv, MAX_FRAME))
                .await
                .expect("no reply within 20 s")
                .unwrap_or_else(|e| panic!("no reply: {e}"));
            match raw.decode::<ServerMsg>().expect("a server message that decodes") {
                ServerMsg::Reply { seq, result, .. } => {
                    assert_eq!(seq, first + i, "replies out of order");
                    assert!(result.is_ok(), "copy {i}: {result:?}");
                    assert!(raw.payload[..] == data[..], "copy {i} came back wrong");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        c.close().await;
    });
    assert!(server.is_running(), "the server died\n{}", server.log());
}

/// A frame with the body `body` (the length word is written from its size).
fn frame_with_body(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// A frame whose message is `message`, followed by `payload`.
fn frame_with_message(message: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = (message.len() as u32).to_le_bytes().to_vec();
    body.extend_from_slice(message);
    body.extend_from_slice(payload);
    frame_with_body(&body)
}

#[test]
fn a_message_that_does_not_decode_closes_the_connection() {
    let server = Server::start(&[]);
    // A valid call, to graft bad bytes onto.
    let valid = frame::encode_to_vec(
        &Call { seq: 1, ctx: Ctx(1), kind: CallKind::Barrier, request: Request::cuCtxSynchronize(Default::default()) },
        &[],
    )
    .expect("encode");
    let valid_message = &valid[8..];
    let mut trailing = valid_message.to_vec();
    trailing.extend_from_slice(&[0, 0, 0]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage bincode", frame_with_message(&[0xFF; 16], &[]), "undecodable call"),
        ("garbage bincode with a payload", frame_with_message(&pattern(64, 5), &pattern(4096, 6)), "undecodable call"),
        // seq 1, ctx 1, kind Async, then call number 250: no such function in the table.
        ("an unknown function", frame_with_message(&[1, 1, 0, 250], &[]), "undecodable call"),
        ("an unknown call kind", frame_with_message(&[1, 1, 9, 0], &[]), "undecodable call"),
        ("trailing bytes after the message", frame_with_message(&trailing, &[]), "undecodable call"),
        ("an empty message", frame_with_message(&[], &[]), "undecodable call"),
        ("a message length past the body", frame_with_body(&[0xE8, 0x03, 0, 0, 1, 2, 3, 4]), "bad frame"),
        ("a body too short for its message length", frame_with_body(&[1, 2]), "bad frame"),
    ];
    runtime().block_on(async {
        let mut good = Raw::with_ctx(&server).await;
        let data = pattern(8192, 2);
        let ptr = good.alloc(8192).await;
        good.htod(ptr, &data).await;
        for (what, bytes, reason) in &cases {
            let mut bad = Raw::open(&server).await;
            // A valid call first: the connection works until the bad frame.
            bad.fire(Request::CtxCreate(calls::CtxCreate::Req { ctx: Ctx(1), flags: 0, dev: 0 }), &[]).await;
            bad.ctx = Ctx(1);
            assert!(bad.ctx_sync().await.result.is_ok(), "{what}: the valid call before it");
            bad.write(bytes).await;
            eprintln!("{what}: expecting a close mentioning {reason:?}");
            assert_app_closed(&bad.conn, PROTOCOL_VIOLATION, reason, &server).await;
        }
        assert_eq!(good.dtoh(ptr, 8192).await.expect("the good client's data"), data);
        good.close().await;
        assert_serves(&server).await;
    });
}

// ---------------------------------------------------------------------------
// Handshake

#[test]
fn a_mismatched_protocol_version_is_refused_naming_both() {
    let server = Server::start(&[]);
    runtime().block_on(async {
        let theirs = PROTOCOL_VERSION + 1000;
        let (endpoint, conn) = connect(&server).await;
        let (mut send, mut recv) = conn.open_bi().await.expect("open the lane");
        let welcome = hello(&mut send, &mut recv, &Hello { protocol_version: theirs, ..our_hello() }).await;
        match welcome {
            Welcome::Refused { reason } => {
                assert!(reason.contains(&format!("protocol {PROTOCOL_VERSION}")), "{reason:?} does not name the server's version");
                assert!(reason.contains(&format!("speaks {theirs}")), "{reason:?} does not name the client's version");
            }
            Welcome::Accepted { .. } => panic!("a client of protocol {theirs} was accepted"),
        }
        assert_app_closed(&conn, REFUSED, "version", &server).await;
        drop(endpoint);

        // A hello that does not decode, and one over the handshake limit.
        let (_endpoint, conn) = connect(&server).await;
        let (mut send, _recv) = conn.open_bi().await.expect("open the lane");
        send.write_all(&frame_with_message(&[0xFF; 8], &[])).await.expect("send");
        assert_app_closed(&conn, PROTOCOL_VIOLATION, "hello", &server).await;
        let (_endpoint, conn) = connect(&server).await;
        let (mut send, _recv) = conn.open_bi().await.expect("open the lane");
        send.write_all(&((MAX_HANDSHAKE + 1) as u32).to_le_bytes()).await.expect("send");
        assert_app_closed(&conn, PROTOCOL_VIOLATION, "handshake", &server).await;

        assert_serves(&server).await;
    });
}

/// Connections that send no complete hello are closed once the server's hello deadline passes,
/// and not before `at_least`; the server then still serves.
fn no_hello_is_closed(server: &Server, at_least: Duration) {
    runtime().block_on(async {
        // Nothing at all after TLS; a partial length word; a frame that never completes.
        let partial: [&[u8]; 3] = [&[], &[0x10, 0x00], &[0x40, 0, 0, 0, 0x3C, 0, 0, 0, 1, 2, 3]];
        for bytes in partial {
            let (_endpoint, conn) = connect(server).await;
            let start = Instant::now();
            // (A stream the client opens reaches the server only with its first bytes.)
            let mut _lane = if bytes.is_empty() { None } else { Some(conn.open_bi().await.expect("open the lane")) };
            if let Some((send, _)) = &mut _lane {
                send.write_all(bytes).await.expect("send");
            }
            assert_app_closed(&conn, PROTOCOL_VIOLATION, "handshake timed out", server).await;
            let waited = start.elapsed();
            assert!(waited >= at_least, "closed after {waited:?}, before the handshake timeout");
            eprintln!("{} bytes of hello: closed after {waited:?}", bytes.len());
        }
        assert_serves(server).await;
    });
}

#[test]
fn no_hello_within_the_handshake_timeout_closes_the_connection() {
    let server = Server::start(&["--handshake-timeout", "1"]);
    no_hello_is_closed(&server, Duration::from_millis(700));
}

/// [`no_hello_within_the_handshake_timeout_closes_the_connection`] with the admission timeout
/// (which the server adds to the hello deadline today) made negligible.
#[test]
fn no_hello_closes_the_connection() {
    let server = Server::start(&["--handshake-timeout", "1", "--admission-timeout", "0.01"]);
    no_hello_is_closed(&server, Duration::from_millis(700));
}

// ---------------------------------------------------------------------------
// Handles and pointers

#[test]
fn forged_handles_get_cuda_errors_and_the_connection_stays_usable() {
    let server = Server::start(&[]);
    runtime().block_on(async {
        let mut c = Raw::with_ctx(&server).await;

        // A context the session never created.
        c.ctx = Ctx(0x5eed);
        let a = c.ctx_sync().await;
        assert_eq!(a.result.err(), Some(CuError::INVALID_CONTEXT), "cuCtxSynchronize in a forged context");
        let r = c.sync(Request::cuMemAlloc_v2(calls::cuMemAlloc_v2::Req { bytesize: 64, ..Default::default() })).await;
        assert_eq!(r.err(), Some(CuError::INVALID_CONTEXT), "cuMemAlloc_v2 in a forged context");
        c.ctx = Ctx(1);

        // A stream, an event, a module, a function.
        let a = c.barrier(Request::cuStreamSynchronize(calls::cuStreamSynchronize::Req { stream: Stream(0x5eed) })).await;
        assert_eq!(a.result.err(), Some(CuError::INVALID_HANDLE), "cuStreamSynchronize");
        let a = c.barrier(Request::cuEventQuery(calls::cuEventQuery::Req { event: Event(0x5eed) })).await;
        assert_eq!(a.result.err(), Some(CuError::INVALID_HANDLE), "cuEventQuery");
        let r = c
            .sync(Request::ModuleGetGlobal(calls::ModuleGetGlobal::Req {
                module: Module(0x5eed),
                name: "counter".into(),
                ..Default::default()
            }))
            .await;
        assert_eq!(r.err(), Some(CuError::INVALID_HANDLE), "ModuleGetGlobal");
        let launch =
            Request::LaunchKernel(calls::LaunchKernel::Req { func: Func(0x5eed), dims: LaunchDims::default(), stream: Stream::NULL });
        let a = c.ask(CallKind::Sync, launch.clone(), &[0; 28]).await;
        assert_eq!(a.result.err(), Some(CuError::INVALID_HANDLE), "LaunchKernel");

        // Fire-and-forget: latched, reported by the next barrier with its call.
        let seq = c
            .fire(
                Request::ModuleGetFunction(calls::ModuleGetFunction::Req { func: Func(1), module: Module(0x5eed), name: "vecadd".into() }),
                &[],
            )
            .await;
        c.fire(launch, &[0; 28]).await;
        let info = c.mem_info().await;
        assert!(info.1 > 0);
        let a = c.ctx_sync().await;
        assert!(a.result.is_ok(), "{a:?}");
        assert_eq!(a.latched, Some(Latched { error: CuError::INVALID_HANDLE, seq, function: "ModuleGetFunction".into() }));
        assert_eq!(c.ctx_sync().await.latched, None, "reported twice");

        // Still usable.
        let data = pattern(1000, 4);
        let ptr = c.alloc(1000).await;
        c.htod(ptr, &data).await;
        assert_eq!(c.dtoh(ptr, 1000).await.expect("read back"), data);
        assert!(c.ctx_sync().await.latched.is_none());
        c.close().await;
    });
    assert!(server.is_running(), "the server died\n{}", server.log());
}

#[test]
fn another_tenants_pointer_is_invalid_value_over_the_wire() {
    let server = Server::start(&[]);
    runtime().block_on(async {
        let mut a = Raw::with_ctx(&server).await;
        let data = pattern(1 << 20, 8);
        let ptr = a.alloc(data.len() as u64).await;
        a.htod(ptr, &data).await;
        assert!(a.ctx_sync().await.latched.is_none());

        // The second client uses the same context handle number.
        let mut b = Raw::with_ctx(&server).await;
        assert_eq!(b.dtoh(ptr, 4096).await.err(), Some(CuError::INVALID_VALUE), "B reads A's allocation");
        assert_eq!(b.dtoh(ptr + 4096, 16).await.err(), Some(CuError::INVALID_VALUE), "B reads inside A's allocation");
        let memset = Request::Memset(calls::Memset::Req { dst: ptr, value: 0, elem_size: 4, count: 1024, stream: Stream::NULL });
        assert_eq!(b.sync(memset).await.err(), Some(CuError::INVALID_VALUE), "B memsets A's allocation");
        b.htod(ptr, &[0xEE; 4096]).await;
        let write_seq = b.seq;
        b.fire(Request::cuMemFree_v2(calls::cuMemFree_v2::Req { dptr: ptr }), &[]).await;
        let answer = b.ctx_sync().await;
        assert_eq!(answer.latched, Some(Latched { error: CuError::INVALID_VALUE, seq: write_seq, function: "MemcpyHtoD".into() }));
        b.close().await;

        assert_eq!(a.dtoh(ptr, data.len() as u64).await.expect("A reads its data back"), data, "A's data changed");
        let a_sync = a.ctx_sync().await;
        assert!(a_sync.result.is_ok() && a_sync.latched.is_none(), "{a_sync:?}");
        a.close().await;
    });
    assert!(server.is_running(), "the server died\n{}", server.log());
}

// ---------------------------------------------------------------------------
// A vanished peer

const VANISH_ENV: &str = "CUWIRE_BAD_INPUT_VANISH";
const VANISH_BYTES: u64 = 128 << 20;

/// Not a test of its own: the client [`a_vanished_peer_is_cleaned_up_after_the_idle_timeout`]
/// runs in a child process and kills. It allocates, says so on stdout, and waits to be killed.
#[test]
fn vanishing_client_child() {
    let Ok(spec) = std::env::var(VANISH_ENV) else {
        return;
    };
    let (addr, certs) = spec.split_once('|').expect("ADDR|CERTS");
    let addr: SocketAddr = addr.parse().expect("address");
    runtime().block_on(async {
        let mut c = Raw::with_ctx_at(addr, Path::new(certs)).await;
        let ptr = c.alloc(VANISH_BYTES).await;
        let memset = Request::Memset(calls::Memset::Req { dst: ptr, value: 0x5A, elem_size: 1, count: 4096, stream: Stream::NULL });
        assert!(c.sync(memset).await.is_ok());
        println!("ALLOCATED {ptr:#x}");
        // Killed long before this ends; bounded all the same.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

#[test]
fn a_vanished_peer_is_cleaned_up_after_the_idle_timeout() {
    let server = Server::start(&["--idle-timeout", "2", "--emu-memory", "256MiB"]);
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", "vanishing_client_child", "--nocapture", "--test-threads", "1"])
        .env(VANISH_ENV, format!("{}|{}", server.addr(), server.certs_dir().display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the vanishing client");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // (libtest may have written "test … " on the same line first.)
            if line.contains("ALLOCATED 0x") {
                let _ = tx.send(line);
            }
        }
    });
    let allocated = rx.recv_timeout(Duration::from_secs(20));
    if allocated.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the vanishing client did not allocate within 20 s\n{}", server.log());
    }

    runtime().block_on(async {
        let mut observer = Raw::with_ctx(&server).await;
        let (free, total) = observer.mem_info().await;
        assert_eq!(total, 256 << 20);
        assert!(free <= total - VANISH_BYTES, "the vanishing client's allocation is not accounted: {free} of {total} free");

        // Gone without a word: no CONNECTION_CLOSE, no stream end.
        child.kill().expect("killing the client");
        child.wait().expect("waiting for the killed client");
        let killed = Instant::now();

        let deadline = killed + Duration::from_secs(10);
        let freed_after = loop {
            let (free, _) = observer.mem_info().await;
            if free == total {
                break killed.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "the vanished client's memory was not freed within 10 s ({free} of {total} free)\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        eprintln!("freed {freed_after:?} after the client vanished (idle timeout 2 s)");
        assert!(freed_after < Duration::from_secs(6), "freed only after {freed_after:?}");
        observer.close().await;
        assert_serves(&server).await;
    });
}
