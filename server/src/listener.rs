//! The QUIC endpoint: mutual TLS, the cuwire handshake, connection limits, and one session per
//! connection with its lane driven by two tasks (reader, writer) and one worker thread that
//! runs the session's calls in order.
//!
//! Thread per core, when asked for (`cuwired --endpoints N`, N > 1): the listener binds N UDP
//! sockets to the same port (`SO_REUSEPORT`, so the kernel spreads clients over them by
//! address) and runs one quinn endpoint per socket, each on a single-threaded runtime of its
//! own thread. A connection's packets, its TLS, its QUIC state and its lane's tasks then all
//! stay on one thread, with no work stealing and no hand-off between threads. Why: on one
//! tokio runtime with two work-stealing threads, the endpoint's, the connection's and the
//! lane's tasks move between the threads; a 256 MiB device-to-host copy cost the server
//! 1651-1868 ms of CPU per GiB, against 1531-1634 ms with two endpoints (and ran 604-679 against
//! 684-729 MB/s), in alternating runs on the 2-core machine. Why not by default: a thread
//! serves only the connections the kernel gave it, and 64 busy clients on that machine, hashed
//! unevenly over two endpoints, had a p99 of 5.6-9.8 ms against 4.1-5.5 ms on the work-stealing
//! runtime (README, performance section).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use cuwire_protocol::frame::{self, RawFrame};
use cuwire_protocol::handshake::{self, Hello, Welcome};
use cuwire_protocol::limits::{MAX_FRAME, MAX_HANDSHAKE};
use cuwire_protocol::{Call, CallKind, Function, ServerMsg};
use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::pool::{Pool, SessionInfo};
use crate::replies::Replies;
use crate::session::Session;

/// QUIC application error codes the server closes connections with.
pub mod close_codes {
    pub const SHUTDOWN: u32 = 0;
    pub const PROTOCOL_VIOLATION: u32 = 1;
    pub const REFUSED: u32 = 2;
    pub const BUSY: u32 = 3;
}

/// Bytes of calls a session may have queued for its worker (a full copy chunk fits many times).
const SESSION_QUEUE_BYTES: usize = 256 << 20;

/// Bytes of reply payloads (device-to-host copies) a session may have unacknowledged: a client
/// that asks for data and does not read it stalls its own worker, not the server's memory. A
/// reply's share is held until quinn drops its data (acknowledged, or the connection gone), so
/// this bounds what the session's copies hold in all; it is as large as the client's stream
/// receive window (64 MiB, which bounds the unacknowledged data anyway) and as many chunks as
/// `staging` keeps for reuse.
const SESSION_REPLY_BYTES: usize = crate::backend::staging::KEEP * cuwire_protocol::limits::COPY_CHUNK;

pub struct ListenerConfig {
    pub listen: SocketAddr,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_pending_handshakes: usize,
    /// Endpoints, each with a thread of its own (the first runs on the caller's runtime).
    pub endpoints: usize,
}

pub struct Listener {
    /// The first endpoint, on the runtime that calls [`Listener::serve`].
    endpoint: quinn::Endpoint,
    /// The other endpoints' sockets, bound to the same port; each gets its endpoint on its own
    /// thread when serving starts (an endpoint belongs to the runtime it is made on).
    more: Vec<std::net::UdpSocket>,
    server_config: quinn::ServerConfig,
    pool: Arc<Pool>,
    cfg: ListenerConfig,
}

/// A UDP socket bound to `addr` that other sockets may bind to as well (`SO_REUSEPORT`): the
/// kernel then hands each client's datagrams, by its address, always to the same one of them.
/// Only sockets of the same user may join the group.
fn shared_port_socket(addr: SocketAddr) -> Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // [::] takes IPv4 clients too, as quinn's own bind does.
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
    Ok(socket.into())
}

/// quinn's endpoint defaults, except that datagrams up to `limits::MAX_UDP_PAYLOAD` are accepted
/// (and so may be sent by the peer).
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut cfg = quinn::EndpointConfig::default();
    cfg.max_udp_payload_size(cuwire_protocol::limits::MAX_UDP_PAYLOAD).expect("MAX_UDP_PAYLOAD is within QUIC's bounds");
    cfg
}

/// A server endpoint on `socket`, registered with the current runtime (whose thread then runs it).
fn endpoint_on(socket: std::net::UdpSocket, server: quinn::ServerConfig) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(endpoint_config(), Some(server), socket, Arc::new(quinn::TokioRuntime))
}

/// What every endpoint's accept loop shares: the pool and the two connection limits.
struct Shared {
    pool: Arc<Pool>,
    slots: Arc<Semaphore>,
    pending: Arc<Semaphore>,
    handshake_timeout: Duration,
}

fn server_tls(certs: &Path) -> Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let ca_path = cuwire_certs::ca_pem(certs);
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&ca_path).with_context(|| format!("reading {}", ca_path.display()))? {
        roots.add(ca?)?;
    }
    let chain = CertificateDer::pem_file_iter(cuwire_certs::server_pem(certs))
        .with_context(|| format!("reading {}", cuwire_certs::server_pem(certs).display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(cuwire_certs::server_key(certs))
        .with_context(|| format!("reading {}", cuwire_certs::server_key(certs).display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Client certificates are required and must chain to the pool CA.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![handshake::ALPN.to_vec()];
    Ok(tls)
}

/// The tenant a client certificate names (its subject's common name) and the certificate's
/// serial number (normalised hex, for the revocation list).
pub fn tenant_of(conn: &quinn::Connection) -> Option<(String, String)> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some((cn, crate::config::normalize_serial(&cert.raw_serial_as_string())))
}

fn refused(reason: &'static str) {
    metrics::counter!("cuwire_handshake_refusals_total", "reason" => reason).increment(1);
}

impl Listener {
    pub fn bind(cfg: ListenerConfig, certs: &Path, pool: Arc<Pool>) -> Result<Listener> {
        let tls = server_tls(certs)?;
        let crypto = QuicServerConfig::try_from(tls)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(quinn::IdleTimeout::try_from(cfg.idle_timeout)?))
            // One lane per connection today; a few spare for bulk streams.
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(4))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
            .stream_receive_window(quinn::VarInt::from_u32(64 << 20))
            .receive_window(quinn::VarInt::from_u32(256 << 20))
            .send_window(256 << 20);
        // Packets as large as the path carries (see limits::MAX_UDP_PAYLOAD).
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(cuwire_protocol::limits::MAX_UDP_PAYLOAD);
        transport.mtu_discovery_config(Some(mtu));
        server.transport_config(Arc::new(transport));
        let threads = cfg.endpoints.max(1);
        if threads > 1 {
            // The kernel picks a client's socket by its address, so a client that moved would
            // land on another endpoint, which does not know its connection.
            server.migration(false);
        }
        let (endpoint, more) = if threads == 1 {
            let socket = std::net::UdpSocket::bind(cfg.listen).with_context(|| format!("binding {}", cfg.listen))?;
            (endpoint_on(socket, server.clone())?, Vec::new())
        } else {
            let first = shared_port_socket(cfg.listen)?;
            // Port 0 asks for a free port: the others join the one the first got.
            let addr = first.local_addr()?;
            let more = (1..threads).map(|_| shared_port_socket(addr)).collect::<Result<Vec<_>>>()?;
            (endpoint_on(first, server.clone())?, more)
        };
        Ok(Listener { endpoint, more, server_config: server, pool, cfg })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Endpoints this listener serves with, one thread each.
    pub fn endpoints(&self) -> usize {
        1 + self.more.len()
    }

    /// Serves until `shutdown` resolves, then closes every connection and waits briefly for
    /// them to go.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        // Two limits, shared by all endpoints: connections still in their handshake (TLS, then
        // the hello), which cost the server little and are bounded in time; and authenticated
        // connections, which only a client with a certificate of the pool can take, so a flood
        // from outside cannot crowd out the tenants.
        let shared = Arc::new(Shared {
            pool: self.pool.clone(),
            slots: Arc::new(Semaphore::new(self.cfg.max_connections)),
            pending: Arc::new(Semaphore::new(self.cfg.max_pending_handshakes)),
            handshake_timeout: self.cfg.handshake_timeout,
        });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut threads = Vec::new();
        for (i, socket) in self.more.into_iter().enumerate() {
            let (shared, mut stop, server) = (shared.clone(), stop_rx.clone(), self.server_config.clone());
            let spawned = std::thread::Builder::new().name(format!("cuwired-io-{}", i + 1)).spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return tracing::error!("I/O thread {}: no runtime: {e}", i + 1),
                };
                rt.block_on(async move {
                    let endpoint = match endpoint_on(socket, server) {
                        Ok(e) => e,
                        Err(e) => return tracing::error!("I/O thread {}: no endpoint: {e}", i + 1),
                    };
                    accept_loop(&endpoint, i + 1, &shared, async move {
                        let _ = stop.wait_for(|stopped| *stopped).await;
                    })
                    .await;
                    close(&endpoint).await;
                });
            });
            match spawned {
                Ok(t) => threads.push(t),
                // Its socket is gone with the closure: the kernel sends its clients to the others.
                Err(e) => tracing::error!("I/O thread {} not started: {e}", i + 1),
            }
        }
        accept_loop(&self.endpoint, 0, &shared, shutdown).await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        close(&self.endpoint).await;
        for t in threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Accepts connections on one endpoint until `shutdown` resolves; each runs as a task of the
/// endpoint's runtime, so on the endpoint's thread.
async fn accept_loop(endpoint: &quinn::Endpoint, index: usize, shared: &Arc<Shared>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = &mut shutdown => break,
        };
        let Ok(handshaking) = shared.pending.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), "refused: too many handshakes in progress");
            refused("pending_handshakes");
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(e) = connection(incoming, index, shared, handshaking).await {
                tracing::info!(%remote, "connection ended: {e:#}");
            }
        });
    }
}

/// Closes every connection of `endpoint` and waits briefly for them to go.
async fn close(endpoint: &quinn::Endpoint) {
    endpoint.close(close_codes::SHUTDOWN.into(), b"server shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

async fn read_frame(recv: &mut quinn::RecvStream, limit: usize) -> Result<Option<RawFrame>> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    // Checked before anything is allocated for the body.
    let len = frame::body_len(prefix, limit)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(Some(frame::split_body(Bytes::from(body))?))
}

async fn refuse(conn: &quinn::Connection, mut send: quinn::SendStream, reason: &str) {
    if let Ok(head) = frame::encode(&Welcome::Refused { reason: reason.to_owned() }, 0) {
        let _ = send.write_all(&head).await;
        let _ = send.finish();
    }
    // Let the refusal reach the client before the close does.
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.close(close_codes::REFUSED.into(), reason.as_bytes());
}

async fn connection(incoming: quinn::Incoming, endpoint: usize, shared: Arc<Shared>, handshaking: OwnedSemaphorePermit) -> Result<()> {
    let (pool, handshake_timeout) = (&shared.pool, shared.handshake_timeout);
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(handshake_timeout, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::warn!(%remote, "handshake refused: {e}");
            refused("tls");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(%remote, "handshake refused: TLS did not complete within {handshake_timeout:?}");
            refused("tls_timeout");
            return Ok(());
        }
    };
    let Some((tenant, serial)) = tenant_of(&conn) else {
        tracing::warn!(%remote, "handshake refused: the client certificate names no tenant");
        refused("no_tenant");
        conn.close(close_codes::REFUSED.into(), b"client certificate names no tenant");
        return Ok(());
    };
    // Held for as long as the connection lives.
    let Ok(_slot) = shared.slots.clone().try_acquire_owned() else {
        tracing::warn!(%remote, %tenant, "refused: connection limit reached");
        refused("connection_limit");
        conn.close(close_codes::BUSY.into(), b"connection limit reached");
        return Ok(());
    };
    let opened = tokio::time::timeout(handshake_timeout, async {
        let (send, mut recv) = conn.accept_bi().await?;
        let hello = read_frame(&mut recv, MAX_HANDSHAKE).await?.context("stream closed before the hello")?;
        anyhow::Ok((send, recv, hello))
    })
    .await;
    let (mut send, recv, hello) = match opened {
        Ok(Ok(parts)) => parts,
        Ok(Err(e)) => {
            tracing::warn!(%remote, %tenant, "handshake failed: {e:#}");
            conn.close(close_codes::PROTOCOL_VIOLATION.into(), b"bad handshake");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(%remote, %tenant, "handshake timed out");
            conn.close(close_codes::PROTOCOL_VIOLATION.into(), b"handshake timed out");
            return Ok(());
        }
    };
    let hello: Hello = match hello.decode() {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(%remote, %tenant, "handshake refused: undecodable hello: {e}");
            conn.close(close_codes::PROTOCOL_VIOLATION.into(), b"undecodable hello");
            return Ok(());
        }
    };
    if let Err(reason) = handshake::check_version(handshake::PROTOCOL_VERSION, hello.protocol_version, "client") {
        tracing::warn!(%remote, %tenant, client = %hello.build_id, "handshake refused: {reason}");
        refused("version");
        refuse(&conn, send, &reason).await;
        return Ok(());
    }

    // Admission may wait for room (blocking), so it runs off the I/O threads.
    let info = SessionInfo {
        tenant: tenant.clone(),
        devices: vec![],
        remote: remote.to_string(),
        pid: hello.pid,
        host: hello.host.clone(),
        started: std::time::SystemTime::now(),
    };
    let (p, t, s) = (pool.clone(), tenant.clone(), serial.clone());
    let admitted = tokio::task::spawn_blocking(move || p.admit(&t, &s, info)).await?;
    let admitted = match admitted {
        Ok(a) => a,
        Err(refusal) => {
            let reason = refusal.reason();
            tracing::warn!(%remote, %tenant, %serial, "handshake refused: {reason}");
            refused(refusal.label());
            refuse(&conn, send, &reason).await;
            return Ok(());
        }
    };
    let id = admitted.session;
    let backend = pool.backend().clone();
    let welcome = Welcome::Accepted {
        protocol_version: handshake::PROTOCOL_VERSION,
        server_build: handshake::BUILD_ID.into(),
        session: id,
        tenant: tenant.clone(),
        driver_version: backend.driver_version(),
        devices: admitted
            .devices
            .iter()
            .map(|d| {
                let mut info = backend.device_info(*d);
                info.total_mem = pool.tenant_total(&tenant, *d);
                info
            })
            .collect(),
    };
    if let Err(e) = send.write_all(&frame::encode(&welcome, 0)?).await {
        pool.leave(id);
        return Err(e.into());
    }
    drop(handshaking);
    tracing::info!(session = id, %tenant, %remote, devices = ?admitted.devices, pid = hello.pid, host = %hello.host, client = %hello.build_id, endpoint, "session opened");

    let session = Session::with_pool(id, tenant.clone(), pool.clone(), admitted.devices);
    let result = run_lane(&conn, session, send, recv).await;
    pool.leave(id);
    // The path MTU shows whether large datagrams are in use (limits::MAX_UDP_PAYLOAD), the
    // lost packets whether the path or a socket buffer drops.
    let path = conn.stats().path;
    let (mtu, lost) = (path.current_mtu, path.lost_packets);
    match &result {
        Ok(()) => tracing::info!(session = id, %tenant, mtu, lost, "session closed"),
        Err(e) => tracing::info!(session = id, %tenant, mtu, lost, "session ended: {e:#}"),
    }
    Ok(())
}

/// Whether the reader may answer `call` itself instead of handing it to the session's worker:
/// a synchronous call that carries no data and never waits for device work, while the worker
/// has nothing queued or running (checked by the caller). Such a call costs a round trip and
/// nothing else: the two thread hand-offs of the worker path (reader -> worker -> writer) were
/// most of what a cuwire call cost beyond a raw QUIC ping-pong. Synchronizations qualify only
/// where the backend finishes device work within each call (the emulated GPU); on a real GPU
/// they may wait for a kernel and stay on the worker.
fn answers_inline(call: &Call, payload: &Bytes, work_finishes_in_call: bool) -> bool {
    if call.kind == CallKind::Async || !payload.is_empty() {
        return false;
    }
    match call.request.function() {
        Function::cuMemGetInfo_v2 | Function::cuStreamQuery | Function::cuEventQuery => true,
        Function::cuCtxSynchronize | Function::cuStreamSynchronize | Function::cuEventSynchronize => work_finishes_in_call,
        _ => false,
    }
}

/// Drives one session: frames in, calls run in order on the session's worker thread (or, for
/// the calls [`answers_inline`] picks, on the reader when the worker is idle), replies out in
/// the same order.
/// A reply's data with its share of the session's reply budget, given back when quinn drops it.
struct Budgeted {
    payload: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.payload
    }
}

async fn run_lane(conn: &quinn::Connection, session: Session, mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> Result<()> {
    // Calls waiting for the worker hold a share of a per-session byte budget, so a client that
    // sends faster than its calls run cannot make the server buffer without bound.
    let budget = Arc::new(Semaphore::new(SESSION_QUEUE_BYTES));
    let (call_tx, mut call_rx) = mpsc::channel::<(Call, Bytes, tokio::sync::OwnedSemaphorePermit)>(1024);
    let replies = Arc::new(Replies::<(ServerMsg, Bytes)>::default());
    let reply_budget = Arc::new(Semaphore::new(SESSION_REPLY_BYTES));
    let runtime = tokio::runtime::Handle::current();
    let session_id = session.id;
    let work_finishes_in_call = session.backend_work_finishes_in_call();
    let session = Arc::new(parking_lot::Mutex::new(session));
    // Calls handed to the worker and not yet answered; the worker counts down only after its
    // replies are queued, so an inline reply never overtakes one of them.
    let in_flight = Arc::new(AtomicUsize::new(0));
    // The worker owns the session; when the calls stop coming it frees what the session held.
    let worker = {
        let (session, in_flight, replies, reply_budget) = (session.clone(), in_flight.clone(), replies.clone(), reply_budget.clone());
        std::thread::Builder::new().name(format!("session-{session_id}")).spawn(move || {
            'calls: while let Some((call, payload, permit)) = call_rx.blocking_recv() {
                let outcome = session.lock().handle(call, payload);
                drop(permit);
                for (msg, payload) in outcome.messages {
                    // A reply's data holds its share of the budget until quinn drops it.
                    let payload = if payload.is_empty() {
                        payload
                    } else {
                        let cost = payload.len().clamp(1, SESSION_REPLY_BYTES) as u32;
                        match runtime.block_on(reply_budget.clone().acquire_many_owned(cost)) {
                            Ok(permit) => Bytes::from_owner(Budgeted { payload, _permit: permit }),
                            Err(_) => break 'calls,
                        }
                    };
                    if !replies.push((msg, payload)) {
                        break;
                    }
                }
                in_flight.fetch_sub(1, Ordering::Release);
            }
            session.lock().close();
        })?
    };
    let writer = async {
        // Replies queued while the last write was under way go out together.
        let mut batch = frame::WriteBatch::default();
        loop {
            // Looked at each time the lane is polled (see `replies`), not only when woken.
            std::future::poll_fn(|cx| replies.poll_ready(cx)).await;
            let mut n = 0usize;
            while batch.bytes() < (1 << 20) && n < 1024 {
                let Some((msg, payload)) = replies.pop() else { break };
                match frame::encode(&msg, payload.len()) {
                    Ok(header) => batch.push(header),
                    Err(e) => return Err(anyhow::Error::from(e)),
                }
                if !payload.is_empty() {
                    batch.push(payload);
                }
                n += 1;
            }
            let chunks = batch.chunks();
            let result = send.write_all_chunks(chunks).await;
            chunks.clear();
            if let Err(e) = result {
                return Err(anyhow::Error::from(e));
            }
        }
    };
    let reader = async {
        // The sans-IO decoder takes whatever the stream delivers (many small calls arrive in one
        // chunk) and checks every announced length before buffering for it.
        let mut decoder = frame::Decoder::new(MAX_FRAME);
        loop {
            let chunk = match recv.read_chunk(MAX_FRAME, true).await {
                Ok(Some(chunk)) => chunk.bytes,
                Ok(None) => return anyhow::Ok(()),
                Err(e) => return Err(anyhow::Error::from(e).context("reading the lane")),
            };
            decoder.feed(&chunk);
            loop {
                let raw = match decoder.next_frame() {
                    Ok(Some(raw)) => raw,
                    Ok(None) => break,
                    Err(e) => {
                        conn.close(close_codes::PROTOCOL_VIOLATION.into(), format!("bad frame: {e}").as_bytes());
                        anyhow::bail!("bad frame: {e}");
                    }
                };
                let call: Call = match raw.decode() {
                    Ok(c) => c,
                    Err(e) => {
                        conn.close(close_codes::PROTOCOL_VIOLATION.into(), format!("undecodable call: {e}").as_bytes());
                        anyhow::bail!("undecodable call: {e}");
                    }
                };
                if in_flight.load(Ordering::Acquire) == 0 && answers_inline(&call, &raw.payload, work_finishes_in_call) {
                    // Inline answers carry no data (see answers_inline): nothing to budget. The
                    // writer is polled right after this task's reader: no wake-up needed.
                    for reply in session.lock().handle(call, raw.payload).messages {
                        replies.push_here(reply);
                    }
                    continue;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let cost = (raw.message.len() + raw.payload.len()).clamp(1, SESSION_QUEUE_BYTES) as u32;
                let Ok(permit) = budget.clone().acquire_many_owned(cost).await else { return Ok(()) };
                if call_tx.send((call, raw.payload, permit)).await.is_err() {
                    return Ok(());
                }
            }
        }
    };
    // Biased: the writer is polled after the reader in every pass, so it sends what the
    // reader answered in that pass (see `replies`).
    let result = tokio::select! {
        biased;
        r = reader => r,
        w = writer => w,
        e = conn.closed() => Err(anyhow::anyhow!("{e}")),
    };
    // Dropping the channel ends the worker, which frees the session's resources; closing the
    // budget wakes it if it waits for replies quinn still holds (they go with the connection).
    drop(call_tx);
    replies.close();
    reply_budget.close();
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    result
}
