//! The connection to the pool and its I/O thread.
//!
//! One QUIC connection per process, with mutual TLS. Its ordered lane is one bidirectional
//! stream: calls go out in the order threads hand them over, and the server answers the ones
//! that want an answer in that same order, so replies are matched to waiters by a FIFO.
//! The connection's tasks run on one single-threaded tokio runtime; calling threads hand frames
//! over through a channel and, when they need the answer, wait on a one-shot slot while driving
//! the runtime themselves, or leave the driving to the I/O thread (see `drive`).

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use cuwire_protocol::frame::{self, RawFrame};
use cuwire_protocol::handshake::{self, Hello, Welcome};
use cuwire_protocol::limits::{MAX_FRAME, MAX_HANDSHAKE};
use cuwire_protocol::{CuError, ServerMsg};
use quinn::crypto::rustls::QuicClientConfig;
use tokio::sync::mpsc as tmpsc;

use crate::config::Config;
use crate::drive::{Drive, Waiter};

/// How long an exiting process waits for the server to see the end of its lane.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// What a waiting caller gets: the decoded server message and the payload beside it.
pub type ReplySlot = tokio::sync::oneshot::Sender<Result<(ServerMsg, Bytes), String>>;

/// Where a reply goes.
pub enum ReplyTo {
    /// A caller waiting on a ticket.
    Waiter(ReplySlot),
    /// Nobody waits: the reply of an asynchronous device-to-host copy, whose payload the I/O
    /// thread writes straight into the caller's page-locked buffer (see [`HostWrites`]).
    Host(HostDst),
}

/// A page-locked host range an asynchronous device-to-host copy lands in. Counted in
/// [`HostWrites`] from its creation until it is dropped: landed, failed, or never answered
/// (dropped unsent or with a lost connection, which latches `CONNECTION_LOST`).
pub struct HostDst {
    addr: usize,
    len: usize,
    writes: Arc<HostWrites>,
    outcome: Option<Option<CuError>>,
}

/// Host destinations alive in the process, in any group: while there are some, replies are still
/// to land, and somebody must drive the connection.
static LANDING: AtomicUsize = AtomicUsize::new(0);

/// How many host destinations are still to land or fail.
pub fn landing_count() -> usize {
    LANDING.load(Ordering::SeqCst)
}

impl HostDst {
    pub fn new(writes: &Arc<HostWrites>, addr: usize, len: usize) -> Self {
        writes.started();
        LANDING.fetch_add(1, Ordering::SeqCst);
        HostDst { addr, len, writes: writes.clone(), outcome: None }
    }
}

impl Drop for HostDst {
    fn drop(&mut self) {
        let error = self.outcome.take().unwrap_or(Some(crate::lane::CONNECTION_LOST));
        self.writes.finished(error);
        LANDING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One frame to send, with where its reply goes when it wants one.
pub struct Outgoing {
    pub head: Bytes,
    pub payload: Bytes,
    pub reply: Option<ReplyTo>,
}

/// Asynchronous device-to-host copies under way: how many chunks are still to land, and the
/// first error one of them met, latched for the next synchronising call (as the driver reports
/// an asynchronous copy's error). Replies come in lane order and the I/O thread writes each
/// chunk before it reads the next reply, so any later synchronous reply proves that the earlier
/// copies are in host memory.
#[derive(Default)]
pub struct HostWrites {
    pending: Mutex<usize>,
    landed: std::sync::Condvar,
    /// The same news for a waiter that drives the connection meanwhile ([`HostWrites::all_landed`]).
    landed_async: tokio::sync::Notify,
    latched: Mutex<Option<CuError>>,
}

impl HostWrites {
    fn started(&self) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    fn finished(&self, error: Option<CuError>) {
        if let Some(e) = error {
            self.latch(e);
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        *pending = pending.saturating_sub(1);
        if *pending == 0 {
            self.landed.notify_all();
            self.landed_async.notify_waiters();
        }
    }

    fn pending(&self) -> usize {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Completes once every copy under way has landed or failed, as [`HostWrites::wait_all`].
    pub async fn all_landed(&self) {
        loop {
            let mut notified = std::pin::pin!(self.landed_async.notified());
            notified.as_mut().enable();
            if self.pending() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Latches an error for the next synchronising call, unless one is already waiting.
    pub fn latch(&self, e: CuError) {
        self.latched.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
    }

    /// Takes the latched error of an asynchronous copy, once.
    pub fn take_error(&self) -> Option<CuError> {
        self.latched.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Waits until every copy under way has landed (or failed: a lost connection fails them
    /// all), so page-locked memory is not freed under a write.
    pub fn wait_all(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        while *pending > 0 {
            pending = self.landed.wait(pending).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Whether a reply meant for host memory brings the data (then its payload is read straight
/// into the destination), or else the error to latch.
fn landing(dst: &HostDst, msg: &ServerMsg, payload_len: usize) -> Result<(), CuError> {
    match msg {
        ServerMsg::Reply { latched: Some(l), .. } => Err(l.error),
        ServerMsg::Reply { result: Ok(cuwire_protocol::Reply::MemcpyDtoH(_)), .. } if payload_len == dst.len => Ok(()),
        ServerMsg::Reply { result: Err(e), .. } => Err(*e),
        _ => Err(CuError::UNKNOWN),
    }
}

/// The caller's side of the connection.
pub struct Transport {
    tx: tmpsc::UnboundedSender<Outgoing>,
    dead: Arc<DeadFlag>,
    host_writes: Arc<HostWrites>,
    /// The drive with the connection's runtime, which the I/O thread owns: it drops the runtime
    /// at its end, and with it whatever quinn still holds (lent memory comes back; see `loan`).
    waiter: Waiter,
    shutdown: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    io_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Set once the connection is gone, with the reason printed once.
#[derive(Default)]
pub struct DeadFlag {
    dead: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl DeadFlag {
    pub fn set(&self, reason: String) {
        if !self.dead.swap(true, Ordering::SeqCst) {
            eprintln!("cuwire: connection to the pool lost: {reason}");
            *self.reason.lock().unwrap() = Some(reason);
        }
    }
    pub fn is_set(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }
}

/// What the handshake told us.
pub struct Session {
    pub transport: Transport,
    pub welcome: Welcome,
}

impl Transport {
    /// Hands a frame to the lane's writer. `waited`: the caller waits for its reply next (and
    /// drives the connection meanwhile); otherwise the I/O thread sees that it goes out. Fails
    /// once the connection is gone.
    pub fn send(&self, out: Outgoing, waited: bool) -> Result<(), String> {
        if self.dead.is_set() {
            return Err("connection lost".into());
        }
        self.waiter.drive.will_queue();
        // A frame whose sender drives next is queued from inside the runtime (see run_here).
        let sent = if waited { self.waiter.run_here(|| self.tx.send(out)) } else { self.tx.send(out) };
        if sent.is_err() {
            self.waiter.drive.written(1);
            return Err("connection lost".into());
        }
        self.waiter.drive.queued(waited);
        Ok(())
    }

    /// Waits for a reply (or anything the connection's tasks complete), driving the connection
    /// on this thread where it can.
    pub fn wait<F: std::future::Future>(&self, reply: F) -> F::Output {
        self.waiter.wait(reply)
    }

    /// What a ticket needs to wait for its reply later.
    pub fn waiter(&self) -> Waiter {
        self.waiter.clone()
    }

    pub fn host_writes(&self) -> &Arc<HostWrites> {
        &self.host_writes
    }

    pub fn is_dead(&self) -> bool {
        self.dead.is_set()
    }

    /// Closes the connection cleanly (at process exit), so the server frees our resources at
    /// once instead of waiting for the idle timeout.
    pub fn close(&self) {
        if let Some(tx) = self.shutdown.lock().unwrap().take() {
            self.waiter.drive.set_closing();
            let _ = tx.send(());
        }
        if let Some(t) = self.io_thread.lock().unwrap().take() {
            let _ = t.join();
        }
    }
}

fn load_client_tls(cfg: &Config) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&cfg.ca)
        .map_err(|e| format!("cannot read CUWIRE_CA {}: {e}", cfg.ca.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CUWIRE_CA {} is not PEM: {e}", cfg.ca.display()))?;
    for ca in cas {
        roots.add(ca).map_err(|e| format!("CUWIRE_CA {}: {e}", cfg.ca.display()))?;
    }
    let chain = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| format!("cannot read CUWIRE_CERT {}: {e}", cfg.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CUWIRE_CERT {} is not PEM: {e}", cfg.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| format!("cannot read CUWIRE_KEY {}: {e}", cfg.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("CUWIRE_CERT/CUWIRE_KEY: {e}"))?;
    tls.alpn_protocols = vec![handshake::ALPN.to_vec()];
    Ok(tls)
}

/// Explains a connection error in the words a user needs.
fn explain(e: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    match e {
        E::ConnectionClosed(c) if (0x100..0x200).contains(&u64::from(c.error_code)) => {
            let alert = u64::from(c.error_code) - 0x100;
            let what = match alert {
                42 | 43 | 44 | 45 | 46 | 48 | 116 => "the server refused this client's certificate",
                _ => "the TLS handshake failed",
            };
            format!("{what} (TLS alert {alert}: {})", String::from_utf8_lossy(&c.reason))
        }
        E::TransportError(t) => format!("TLS/QUIC error: {t}"),
        E::ApplicationClosed(a) => format!("the server closed the connection: {}", String::from_utf8_lossy(&a.reason)),
        E::TimedOut => "the server did not answer (timed out)".into(),
        other => other.to_string(),
    }
}

async fn read_frame(recv: &mut quinn::RecvStream, limit: usize) -> Result<RawFrame, String> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.map_err(read_error)?;
    let len = frame::body_len(prefix, limit).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(read_error)?;
    frame::split_body(Bytes::from(body)).map_err(|e| e.to_string())
}

fn read_error(e: quinn::ReadExactError) -> String {
    match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => explain(&c),
        other => other.to_string(),
    }
}

/// Reads a frame's head and message, and decodes it; its payload is still to be read.
async fn read_message(recv: &mut quinn::RecvStream) -> Result<(ServerMsg, usize), String> {
    let mut head = [0u8; 8];
    recv.read_exact(&mut head).await.map_err(read_error)?;
    let (msg_len, payload_len) = frame::head_lens(head, MAX_FRAME).map_err(|e| e.to_string())?;
    let mut message = vec![0u8; msg_len];
    recv.read_exact(&mut message).await.map_err(read_error)?;
    let raw = RawFrame { message: Bytes::from(message), payload: Bytes::new() };
    let msg = raw.decode().map_err(|e| format!("undecodable message from the server: {e}"))?;
    Ok((msg, payload_len))
}

/// Reads a payload of `len` bytes into a buffer of its own.
async fn read_payload(recv: &mut quinn::RecvStream, len: usize) -> Result<Bytes, String> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await.map_err(read_error)?;
    Ok(Bytes::from(payload))
}

/// What the I/O thread tells `connect` once the handshake is over.
type Ready = Result<(Welcome, Weak<tokio::runtime::Runtime>), String>;

/// Connects, shakes hands and starts the I/O thread. Bounded by the connect timeout.
pub fn connect(cfg: &Config) -> Result<Session, String> {
    let tls = load_client_tls(cfg)?;
    let addr: SocketAddr = cfg
        .server
        .to_socket_addrs()
        .map_err(|e| format!("CUWIRE_SERVER={}: {e}", cfg.server))?
        .next()
        .ok_or_else(|| format!("CUWIRE_SERVER={} resolves to no address", cfg.server))?;
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Ready>(1);
    let (tx, rx) = tmpsc::unbounded_channel::<Outgoing>();
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let dead = Arc::new(DeadFlag::default());
    let dead_io = dead.clone();
    let host_writes = Arc::new(HostWrites::default());
    let drive = Drive::new();
    let drive_io = drive.clone();
    let cfg2 = cfg.clone();
    let io_thread = std::thread::Builder::new()
        .name("cuwire-io".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => Arc::new(rt),
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start the I/O runtime: {e}")));
                    return;
                }
            };
            let parts = match rt.block_on(async { tokio::time::timeout(cfg2.connect_timeout, handshake(&cfg2, addr, tls)).await }) {
                Ok(Ok(parts)) => parts,
                Ok(Err(e)) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                Err(_) => {
                    let _ = ready_tx.send(Err(format!("no answer from {} within {:?}", cfg2.server, cfg2.connect_timeout)));
                    return;
                }
            };
            let (endpoint, conn, send, recv, welcome) = parts;
            // A refusal is the last word; an acceptance starts the lane.
            if let Welcome::Refused { .. } = &welcome {
                let _ = ready_tx.send(Ok((welcome, Weak::new())));
                conn.close(0u32.into(), b"refused");
                rt.block_on(endpoint.wait_idle());
                return;
            }
            rt.spawn(run_lane(endpoint, conn, send, recv, rx, shutdown_rx, dead_io, drive_io.clone()));
            let _ = ready_tx.send(Ok((welcome, Arc::downgrade(&rt))));
            drive_io.run_io_thread(&rt, EXIT_GRACE);
            // `rt` goes here, with every task and what quinn holds.
        })
        .map_err(|e| format!("cannot start the I/O thread: {e}"))?;
    // The I/O thread enforces the timeout; the extra second only guards against a stuck thread.
    let (welcome, rt) = match ready_rx.recv_timeout(cfg.connect_timeout + Duration::from_secs(1)) {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(format!("no answer from {} within {:?}", cfg.server, cfg.connect_timeout)),
    };
    Ok(Session {
        transport: Transport {
            tx,
            dead,
            host_writes,
            waiter: Waiter { drive, rt },
            shutdown: Mutex::new(Some(shutdown_tx)),
            io_thread: Mutex::new(Some(io_thread)),
        },
        welcome,
    })
}

async fn handshake(
    cfg: &Config,
    addr: SocketAddr,
    tls: rustls::ClientConfig,
) -> Result<(quinn::Endpoint, quinn::Connection, quinn::SendStream, quinn::RecvStream, Welcome), String> {
    let bind: SocketAddr = if addr.is_ipv6() { "[::]:0".parse().unwrap() } else { "0.0.0.0:0".parse().unwrap() };
    let socket = std::net::UdpSocket::bind(bind).map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    let runtime = quinn::default_runtime().ok_or("no tokio runtime for the connection")?;
    // Datagrams up to limits::MAX_UDP_PAYLOAD accepted, so the server's MTU discovery may use them.
    let mut endpoint_cfg = quinn::EndpointConfig::default();
    endpoint_cfg.max_udp_payload_size(cuwire_protocol::limits::MAX_UDP_PAYLOAD).map_err(|e| e.to_string())?;
    let mut endpoint = quinn::Endpoint::new(endpoint_cfg, None, socket, runtime).map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut client_cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(quinn::IdleTimeout::try_from(cfg.idle_timeout).map_err(|e| e.to_string())?))
        // Often enough for any server idle timeout down to about a second (QUIC uses the
        // smaller of the two sides' idle timeouts).
        .keep_alive_interval(Some((cfg.idle_timeout / 3).min(Duration::from_millis(300))))
        .stream_receive_window(quinn::VarInt::from_u32(64 << 20))
        .receive_window(quinn::VarInt::from_u32(256 << 20))
        .send_window(256 << 20);
    // Packets as large as the path carries (see limits::MAX_UDP_PAYLOAD).
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(cuwire_protocol::limits::MAX_UDP_PAYLOAD);
    transport.mtu_discovery_config(Some(mtu));
    client_cfg.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(client_cfg);
    let conn = endpoint
        .connect(addr, &cfg.server_name)
        .map_err(|e| format!("cannot connect to {}: {e}", cfg.server))?
        .await
        .map_err(|e| format!("cannot connect to {}: {}", cfg.server, explain(&e)))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| explain(&e))?;
    let hello = Hello::new(std::process::id(), hostname());
    let head = frame::encode(&hello, 0).map_err(|e| e.to_string())?;
    send.write_all(&head).await.map_err(|e| match e {
        quinn::WriteError::ConnectionLost(c) => explain(&c),
        other => other.to_string(),
    })?;
    let raw = read_frame(&mut recv, MAX_HANDSHAKE).await?;
    let welcome: Welcome = raw.decode().map_err(|e| format!("the server's welcome does not decode: {e}"))?;
    Ok((endpoint, conn, send, recv, welcome))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "unknown".into())
}

/// The lane's reader and writer, until the connection ends; then every waiter is woken.
#[allow(clippy::too_many_arguments)]
async fn run_lane(
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    rx: tmpsc::UnboundedReceiver<Outgoing>,
    shutdown: tokio::sync::oneshot::Receiver<()>,
    dead: Arc<DeadFlag>,
    drive: Arc<Drive>,
) {
    let stats_of = conn.clone();
    lane(endpoint, conn, send, recv, rx, shutdown, dead, &drive).await;
    crate::stats::record_path(&stats_of.stats());
    drop(stats_of);
    drive.set_over();
}

#[allow(clippy::too_many_arguments)]
async fn lane(
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut rx: tmpsc::UnboundedReceiver<Outgoing>,
    shutdown: tokio::sync::oneshot::Receiver<()>,
    dead: Arc<DeadFlag>,
    drive: &Drive,
) {
    let pending: Arc<Mutex<VecDeque<ReplyTo>>> = Arc::default();
    let pending_reader = pending.clone();
    let reader = async move {
        loop {
            // The head and message first: a copy's payload then goes straight to where it
            // belongs, with no buffer between quinn's and the destination.
            let (msg, payload_len) = match read_message(&mut recv).await {
                Ok(m) => m,
                Err(e) => return e,
            };
            // Every reply has its slot at the front of the queue, taken once.
            let slot = match msg {
                ServerMsg::Reply { .. } => match pending_reader.lock().unwrap().pop_front() {
                    Some(slot) => Some(slot),
                    None => return "a reply nobody waited for".into(),
                },
                _ => None,
            };
            if let Some(ReplyTo::Host(mut dst)) = slot {
                let outcome = landing(&dst, &msg, payload_len);
                if outcome.is_ok() {
                    // SAFETY: `dst` is a range of host memory this process's application handed
                    // to a device-to-host copy: the caller's buffer of a synchronous copy, which
                    // waits for every chunk (even after an error) before it returns, or
                    // page-locked memory of an asynchronous one (checked against the shim's
                    // table), which cuMemFreeHost and cuMemHostUnregister wait for, and which the
                    // application may not touch before it synchronises, as with the driver.
                    let into = match unsafe { crate::ffi::slice_mut(dst.addr as *mut std::ffi::c_void, dst.len) } {
                        Ok(into) => into,
                        Err(_) => return "a copy into a null buffer".into(),
                    };
                    if let Err(e) = recv.read_exact(into).await {
                        return read_error(e);
                    }
                    crate::stats::record_reply(cuwire_protocol::Function::MemcpyDtoH.name(), payload_len);
                } else if let Err(e) = read_payload(&mut recv, payload_len).await {
                    return e;
                }
                dst.outcome = Some(outcome.err());
                continue;
            }
            let payload = match read_payload(&mut recv, payload_len).await {
                Ok(p) => p,
                Err(e) => return e,
            };
            match msg {
                ServerMsg::Stdout(text) => {
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&text);
                    let _ = out.flush();
                }
                ServerMsg::Goodbye { reason } => return format!("the server ended the session: {reason}"),
                reply @ ServerMsg::Reply { .. } => {
                    // A host slot was handled above.
                    if let Some(ReplyTo::Waiter(slot)) = slot {
                        let _ = slot.send(Ok((reply, payload)));
                    }
                }
            }
        }
    };
    let pending_writer = pending.clone();
    let mut shutdown = shutdown;
    let exiting = Arc::new(AtomicBool::new(false));
    let exiting_writer = exiting.clone();
    let writer = async move {
        // Everything queued while the last write was under way goes out in one write: a burst
        // of fire-and-forget calls becomes a few large QUIC packets, not one packet per call.
        let mut batch = frame::WriteBatch::default();
        loop {
            // Calls already queued go out before the exit's end of the lane.
            let first = tokio::select! {
                biased;
                out = rx.recv() => out,
                _ = &mut shutdown => None,
            };
            let Some(first) = first else { break };
            let mut next = Some(first);
            let mut calls = 0usize;
            while let Some(out) = next.take() {
                if let Some(slot) = out.reply {
                    pending_writer.lock().unwrap().push_back(slot);
                }
                batch.push(out.head);
                if !out.payload.is_empty() {
                    batch.push(out.payload);
                }
                calls += 1;
                if batch.bytes() < (1 << 20) && calls < 4096 {
                    next = rx.try_recv().ok();
                }
            }
            let chunks = batch.chunks();
            let result = send.write_all_chunks(chunks).await;
            chunks.clear();
            drive.written(calls);
            if let Err(e) = result {
                return Err(match e {
                    quinn::WriteError::ConnectionLost(c) => explain(&c),
                    other => other.to_string(),
                });
            }
        }
        // The exit ends the lane with a FIN and waits for the server to have read it. A FIN is
        // retransmitted until acknowledged; a CONNECTION_CLOSE alone is sent once, and a loaded
        // server that drops it would keep the session (and its memory) until the idle timeout.
        exiting_writer.store(true, Ordering::SeqCst);
        let _ = send.finish();
        let _ = tokio::time::timeout(EXIT_GRACE, send.stopped()).await;
        Ok(())
    };
    let reason = tokio::select! {
        // The server closing after our end of the lane is the expected end of an exit.
        r = reader => if exiting.load(Ordering::SeqCst) { dead.set_quietly(); return } else { r },
        w = writer => match w {
            Ok(()) => {
                conn.close(0u32.into(), b"client exit");
                // Give the close a moment to reach the server, without holding up the exit.
                let _ = tokio::time::timeout(Duration::from_millis(200), endpoint.wait_idle()).await;
                dead.set_quietly();
                return;
            }
            Err(e) => e,
        },
    };
    dead.set(reason.clone());
    // Wake everyone still waiting: their calls fail, and so do the copies under way.
    // (A copy's destination dropped unanswered latches CONNECTION_LOST.)
    for slot in pending.lock().unwrap().drain(..) {
        if let ReplyTo::Waiter(slot) = slot {
            let _ = slot.send(Err(reason.clone()));
        }
    }
    conn.close(0u32.into(), b"client gone");
}

impl DeadFlag {
    fn set_quietly(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }
}
