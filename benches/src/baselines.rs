//! The floor every cuwire figure is compared with, measured in the same run on the same machine:
//! a raw quinn ping-pong between two processes with cuwire's mutual-TLS settings (client
//! certificate, ring provider, TLS 1.3, ALPN), a raw TCP ping-pong, raw quinn and TCP bulk
//! throughput. The server side is a child process of cuwire-bench (`cuwire-bench raw-server`);
//! the client side runs here.
//!
//! One wire protocol serves every baseline: the first byte of a quinn stream (or TCP connection)
//! names the test:
//! - `P`: ping-pong, 64-byte messages echoed until the stream ends;
//! - `H`: the same, but every message travels the way a cuwire call does on the server: the
//!   reader task hands it to a plain worker thread, which hands the answer to a writer task;
//! - `U`: upload, a u64 LE length then that many bytes; the server answers one byte;
//! - `D`: download, a u64 LE length; the server sends that many bytes and finishes.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::pace::{self, Pacer};

/// Bytes of one ping-pong message.
pub const PING: usize = 64;
/// How long any single baseline may take before it is abandoned.
const BASELINE_TIMEOUT: Duration = Duration::from_secs(30);
/// The chunk size bulk transfers are written in.
const BULK_CHUNK: usize = 1 << 20;

/// The certificate files of a dev directory (see `cuwire_certs::ensure_dev`).
#[derive(Debug, Clone)]
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn new(dir: &Path) -> Certs {
        Certs { dir: dir.to_path_buf() }
    }
}

fn pem_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM", path.display()))
}

fn pem_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_file(path).with_context(|| format!("reading {}", path.display()))
}

/// The client TLS settings of the shim: pool CA, client certificate, ring, TLS 1.3, ALPN.
pub fn client_tls(certs: &Certs) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in pem_certs(&cuwire_certs::ca_pem(&certs.dir))? {
        roots.add(ca)?;
    }
    let chain = pem_certs(&cuwire_certs::tenant_pem(&certs.dir, "dev"))?;
    let key = pem_key(&cuwire_certs::tenant_key(&certs.dir, "dev"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![cuwire_protocol::handshake::ALPN.to_vec()];
    Ok(tls)
}

/// The server TLS settings of cuwired: client certificates required, chained to the pool CA.
pub fn server_tls(certs: &Certs) -> Result<rustls::ServerConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in pem_certs(&cuwire_certs::ca_pem(&certs.dir))? {
        roots.add(ca)?;
    }
    let chain = pem_certs(&cuwire_certs::server_pem(&certs.dir))?;
    let key = pem_key(&cuwire_certs::server_key(&certs.dir))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![cuwire_protocol::handshake::ALPN.to_vec()];
    Ok(tls)
}

/// QUIC transport settings a baseline runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// quinn's defaults.
    Default,
    /// The transport settings cuwired and the shim use: flow-control windows (64 MiB stream,
    /// 256 MiB connection) and MTU discovery up to `limits::MAX_UDP_PAYLOAD`.
    Cuwire,
}

impl Tuning {
    pub const ALL: [Tuning; 2] = [Tuning::Default, Tuning::Cuwire];

    pub fn name(self) -> &'static str {
        match self {
            Tuning::Default => "default",
            Tuning::Cuwire => "cuwire-tuned",
        }
    }

    fn parse(s: &str) -> Result<Tuning> {
        Tuning::ALL.into_iter().find(|t| t.name() == s).with_context(|| format!("unknown tuning {s}"))
    }

    /// A loopback endpoint: quinn's endpoint defaults, or those of cuwired and the shim.
    fn endpoint(self, server: Option<quinn::ServerConfig>) -> Result<quinn::Endpoint> {
        let cfg = if self == Tuning::Default { quinn::EndpointConfig::default() } else { cuwire_server::listener::endpoint_config() };
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        Ok(quinn::Endpoint::new(cfg, server, socket, Arc::new(quinn::TokioRuntime))?)
    }

    fn transport(self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(30_000))));
        if self != Tuning::Default {
            t.stream_receive_window(quinn::VarInt::from_u32(64 << 20))
                .receive_window(quinn::VarInt::from_u32(256 << 20))
                .send_window(256 << 20);
            // Packets as large as the path carries (see limits::MAX_UDP_PAYLOAD).
            let mut mtu = quinn::MtuDiscoveryConfig::default();
            mtu.upper_bound(cuwire_protocol::limits::MAX_UDP_PAYLOAD);
            t.mtu_discovery_config(Some(mtu));
        }
        t
    }
}

/// Which tokio runtime a side runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    CurrentThread,
    MultiThread,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::CurrentThread => "current-thread",
            Flavor::MultiThread => "multi-thread",
        }
    }

    fn parse(s: &str) -> Result<Flavor> {
        match s {
            "current-thread" => Ok(Flavor::CurrentThread),
            "multi-thread" => Ok(Flavor::MultiThread),
            _ => bail!("unknown runtime flavor {s}"),
        }
    }

    pub fn runtime(self) -> Result<tokio::runtime::Runtime> {
        Ok(match self {
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
            Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The server side (child process)

/// Arguments of the hidden `raw-server` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct RawServerArgs {
    /// `quinn` or `tcp`.
    #[arg(long)]
    pub proto: String,
    /// Dev certificate directory (quinn).
    #[arg(long)]
    pub certs: Option<PathBuf>,
    #[arg(long, default_value = "multi-thread")]
    pub runtime: String,
    #[arg(long, default_value = "cuwire-tuned")]
    pub tuning: String,
}

/// Runs a baseline server until its stdin closes (the parent is gone or done). Prints
/// `LISTEN <addr>` once listening.
pub fn raw_server(args: RawServerArgs) -> Result<()> {
    // End with the parent: a closed stdin means it is done or gone.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    match args.proto.as_str() {
        "tcp" => tcp_server(),
        "quinn" => {
            let certs = Certs::new(args.certs.as_deref().context("--certs is required for quinn")?);
            let rt = Flavor::parse(&args.runtime)?.runtime()?;
            rt.block_on(quinn_server(certs, Tuning::parse(&args.tuning)?))
        }
        other => bail!("unknown protocol {other}"),
    }
}

fn announce(addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "LISTEN {addr}");
    let _ = out.flush();
}

async fn quinn_server(certs: Certs, tuning: Tuning) -> Result<()> {
    let crypto = QuicServerConfig::try_from(server_tls(&certs)?)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(tuning.transport()));
    let endpoint = tuning.endpoint(Some(cfg))?;
    announce(endpoint.local_addr()?);
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let _ = quinn_serve_stream(send, recv).await;
                });
            }
        });
    }
    Ok(())
}

async fn quinn_serve_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> Result<()> {
    let mut op = [0u8; 1];
    recv.read_exact(&mut op).await?;
    match op[0] {
        b'P' => {
            let mut buf = [0u8; PING];
            while recv.read_exact(&mut buf).await.is_ok() {
                send.write_all(&buf).await?;
            }
        }
        b'H' => {
            // As cuwired: reader task -> bounded channel -> worker thread -> unbounded channel
            // -> writer task.
            let (call_tx, mut call_rx) = tokio::sync::mpsc::channel::<[u8; PING]>(256);
            let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<[u8; PING]>();
            let worker = std::thread::spawn(move || {
                while let Some(msg) = call_rx.blocking_recv() {
                    if out_tx.send(msg).is_err() {
                        break;
                    }
                }
            });
            let reader = async move {
                let mut buf = [0u8; PING];
                while recv.read_exact(&mut buf).await.is_ok() {
                    if call_tx.send(buf).await.is_err() {
                        break;
                    }
                }
            };
            let writer = async move {
                while let Some(msg) = out_rx.recv().await {
                    if send.write_all(&msg).await.is_err() {
                        break;
                    }
                }
            };
            tokio::join!(reader, writer);
            let _ = tokio::task::spawn_blocking(move || worker.join()).await;
        }
        b'U' => {
            let mut len = [0u8; 8];
            recv.read_exact(&mut len).await?;
            let mut left = u64::from_le_bytes(len);
            while left > 0 {
                match recv.read_chunk(usize::MAX, true).await? {
                    Some(chunk) => left = left.saturating_sub(chunk.bytes.len() as u64),
                    None => bail!("upload ended early"),
                }
            }
            send.write_all(b"k").await?;
            send.finish()?;
            let _ = send.stopped().await;
        }
        b'D' => {
            let mut len = [0u8; 8];
            recv.read_exact(&mut len).await?;
            let total = u64::from_le_bytes(len) as usize;
            let block = Bytes::from(vec![0x5au8; BULK_CHUNK]);
            let mut sent = 0;
            while sent < total {
                let n = BULK_CHUNK.min(total - sent);
                send.write_chunk(block.slice(..n)).await?;
                sent += n;
            }
            send.finish()?;
            let _ = send.stopped().await;
        }
        // As 'U' and 'D', but with real buffers: what arrives is written into memory, what
        // leaves is read from a buffer of the whole size, as a copy's data would be.
        b'W' => {
            let mut len = [0u8; 8];
            recv.read_exact(&mut len).await?;
            let total = u64::from_le_bytes(len) as usize;
            let mut sink = BULK_SINK.lock().await;
            if sink.len() < total {
                *sink = vec![0x11u8; total];
            }
            let mut at = 0;
            while at < total {
                match recv.read_chunk(total - at, true).await? {
                    Some(chunk) => {
                        sink[at..at + chunk.bytes.len()].copy_from_slice(&chunk.bytes);
                        at += chunk.bytes.len();
                    }
                    None => bail!("upload ended early"),
                }
            }
            send.write_all(b"k").await?;
            send.finish()?;
            let _ = send.stopped().await;
        }
        b'R' => {
            let mut len = [0u8; 8];
            recv.read_exact(&mut len).await?;
            let total = u64::from_le_bytes(len) as usize;
            let source = {
                let mut src = BULK_SOURCE.lock().await;
                if src.len() < total {
                    *src = Bytes::from(vec![0x5au8; total]);
                }
                src.clone()
            };
            let mut sent = 0;
            while sent < total {
                let n = BULK_CHUNK.min(total - sent);
                send.write_chunk(source.slice(sent..sent + n)).await?;
                sent += n;
            }
            send.finish()?;
            let _ = send.stopped().await;
        }
        other => bail!("unknown op {other}"),
    }
    Ok(())
}

/// The raw server's buffers for 'W' and 'R', kept between repetitions (made once, like a
/// device allocation).
static BULK_SINK: tokio::sync::Mutex<Vec<u8>> = tokio::sync::Mutex::const_new(Vec::new());
static BULK_SOURCE: tokio::sync::Mutex<Bytes> = tokio::sync::Mutex::const_new(Bytes::new());

fn tcp_server() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    announce(listener.local_addr()?);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = tcp_serve(stream);
        });
    }
    Ok(())
}

fn tcp_serve(mut s: TcpStream) -> Result<()> {
    s.set_nodelay(true)?;
    let mut op = [0u8; 1];
    s.read_exact(&mut op)?;
    match op[0] {
        b'P' => {
            let mut buf = [0u8; PING];
            while s.read_exact(&mut buf).is_ok() {
                s.write_all(&buf)?;
            }
        }
        b'U' => {
            let mut len = [0u8; 8];
            s.read_exact(&mut len)?;
            let mut left = u64::from_le_bytes(len);
            let mut buf = vec![0u8; BULK_CHUNK];
            while left > 0 {
                let n = s.read(&mut buf[..BULK_CHUNK.min(left as usize)])?;
                if n == 0 {
                    bail!("upload ended early");
                }
                left -= n as u64;
            }
            s.write_all(b"k")?;
        }
        b'D' => {
            let mut len = [0u8; 8];
            s.read_exact(&mut len)?;
            let mut left = u64::from_le_bytes(len) as usize;
            let buf = vec![0x5au8; BULK_CHUNK];
            while left > 0 {
                let n = BULK_CHUNK.min(left);
                s.write_all(&buf[..n])?;
                left -= n;
            }
        }
        other => bail!("unknown op {other}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The client side (this process)

/// A running `cuwire-bench raw-server`, killed on drop.
pub struct RawServer {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RawServer {
    /// Starts `cuwire-bench raw-server ARGS` and waits (at most 20 s) for its address.
    pub fn start(exe: &Path, args: &[&str]) -> Result<RawServer> {
        let mut child = Command::new(exe)
            .arg("raw-server")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} raw-server", exe.display()))?;
        let stdout = child.stdout.take().context("raw-server stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = RawServer { child, addr: "0.0.0.0:0".parse()? };
        let line = rx.recv_timeout(Duration::from_secs(20)).context("raw-server did not start within 20 s")?;
        server.addr = line.trim().strip_prefix("LISTEN ").with_context(|| format!("raw-server said {line:?}"))?.parse()?;
        Ok(server)
    }
}

fn endpoint(certs: &Certs, tuning: Tuning) -> Result<quinn::Endpoint> {
    let crypto = QuicClientConfig::try_from(client_tls(certs)?)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(tuning.transport()));
    let mut endpoint = tuning.endpoint(None)?;
    endpoint.set_default_client_config(cfg);
    Ok(endpoint)
}

async fn connect(certs: &Certs, tuning: Tuning, addr: SocketAddr) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let endpoint = endpoint(certs, tuning)?;
    let conn = tokio::time::timeout(Duration::from_secs(10), endpoint.connect(addr, "localhost")?)
        .await
        .context("raw quinn connect timed out")?
        .context("raw quinn connect")?;
    Ok((endpoint, conn))
}

/// Round-trip times (ns) of `ops` 64-byte ping-pongs on one quinn stream, after `warmup`.
pub fn quinn_pingpong(certs: &Certs, addr: SocketAddr, flavor: Flavor, warmup: usize, ops: usize) -> Result<Vec<u64>> {
    let rt = flavor.runtime()?;
    rt.block_on(async {
        tokio::time::timeout(BASELINE_TIMEOUT, async {
            let (endpoint, conn) = connect(certs, Tuning::Cuwire, addr).await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(b"P").await?;
            let mut buf = [7u8; PING];
            let mut samples = Vec::with_capacity(ops);
            for i in 0..warmup + ops {
                let t = Instant::now();
                send.write_all(&buf).await?;
                recv.read_exact(&mut buf).await?;
                if i >= warmup {
                    samples.push(t.elapsed().as_nanos() as u64);
                }
            }
            send.finish()?;
            conn.close(0u32.into(), b"done");
            endpoint.wait_idle().await;
            anyhow::Ok(samples)
        })
        .await
        .context("raw quinn ping-pong timed out")?
    })
}

/// Arguments of the hidden `raw-client` subcommand: one process of the concurrent raw quinn
/// baseline, the floor beneath cuwire's concurrent-clients figure.
#[derive(Debug, Clone, clap::Args)]
pub struct RawClientArgs {
    #[arg(long)]
    pub addr: SocketAddr,
    /// Dev certificate directory.
    #[arg(long)]
    pub certs: PathBuf,
    #[arg(long, default_value_t = 2000)]
    pub ops: usize,
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// Calls per second on average, Poisson arrivals (0: back to back), as the cuwire clients.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

/// Connects and warms up, prints READY, waits for a line on stdin, then ping-pongs `ops` times
/// (current-thread runtime, as the shim's I/O thread) and prints `{"samples": [ns…], "wall_s"}`,
/// the protocol of the concurrent cuwire clients.
pub fn raw_client(args: RawClientArgs) -> Result<()> {
    let certs = Certs::new(&args.certs);
    let rt = Flavor::CurrentThread.runtime()?;
    let (samples, wall) = rt.block_on(async {
        let (endpoint, conn) = connect(&certs, Tuning::Cuwire, args.addr).await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"P").await?;
        let mut buf = [7u8; PING];
        for _ in 0..args.warmup {
            send.write_all(&buf).await?;
            recv.read_exact(&mut buf).await?;
        }
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "READY")?;
            out.flush()?;
        }
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let start = Instant::now();
        let mut samples = Vec::with_capacity(args.ops);
        let mut pacer = (args.rate > 0.0).then(|| Pacer::new(args.rate, pace::seed()));
        for _ in 0..args.ops {
            // Paced, the thread sleeps as the shim client's does. Not tokio's sleep: with it, 2–3%
            // of the calls took ~1.8 ms (measured: p99 1.8 ms against 0.5 ms with this), a
            // timer artefact the cuwire clients do not have, so the floor would not be one.
            let t = match pacer.as_mut() {
                Some(p) => {
                    let due = p.due();
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    p.origin(due)
                }
                None => Instant::now(),
            };
            send.write_all(&buf).await?;
            recv.read_exact(&mut buf).await?;
            let end = Instant::now();
            if let Some(p) = pacer.as_mut() {
                p.done(end);
            }
            samples.push(end.duration_since(t).as_nanos() as u64);
        }
        let wall = start.elapsed().as_secs_f64();
        send.finish()?;
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        anyhow::Ok((samples, wall))
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::json!({ "samples": samples, "wall_s": wall }))?;
    out.flush()?;
    Ok(())
}

type Slot = mpsc::SyncSender<[u8; PING]>;

/// Like [`quinn_pingpong`], but each message travels the shim's way on this side (calling thread
/// -> channel -> I/O thread with a current-thread runtime -> one-shot slot back) and the
/// server's way on the other (`H`): the cost of the thread hand-offs, without cuwire's code.
pub fn quinn_handoff_pingpong(certs: &Certs, addr: SocketAddr, warmup: usize, ops: usize) -> Result<Vec<u64>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<([u8; PING], Slot)>();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<()>>(1);
    let certs2 = certs.clone();
    let io = std::thread::spawn(move || -> Result<()> {
        let rt = Flavor::CurrentThread.runtime()?;
        rt.block_on(async move {
            let (endpoint, conn) = match connect(&certs2, Tuning::Cuwire, addr).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(b"H").await?;
            let _ = ready_tx.send(Ok(()));
            let pending: Mutex<VecDeque<Slot>> = Mutex::default();
            let writer = async {
                while let Some((msg, slot)) = rx.recv().await {
                    pending.lock().unwrap().push_back(slot);
                    send.write_all(&msg).await?;
                }
                let _ = send.finish();
                anyhow::Ok(())
            };
            let reader = async {
                let mut buf = [0u8; PING];
                while recv.read_exact(&mut buf).await.is_ok() {
                    let slot = pending.lock().unwrap().pop_front();
                    if let Some(slot) = slot {
                        let _ = slot.send(buf);
                    }
                }
                anyhow::Ok(())
            };
            tokio::select! {
                r = writer => r?,
                r = reader => r?,
            }
            conn.close(0u32.into(), b"done");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            Ok(())
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(20)).context("hand-off ping-pong did not connect")??;
    let mut samples = Vec::with_capacity(ops);
    let deadline = Instant::now() + BASELINE_TIMEOUT;
    for i in 0..warmup + ops {
        let (slot, answer) = mpsc::sync_channel(1);
        let t = Instant::now();
        tx.send(([7u8; PING], slot)).map_err(|_| anyhow::anyhow!("I/O thread gone"))?;
        answer.recv_timeout(Duration::from_secs(10)).context("no answer in the hand-off ping-pong")?;
        if i >= warmup {
            samples.push(t.elapsed().as_nanos() as u64);
        }
        if Instant::now() > deadline {
            bail!("hand-off ping-pong timed out");
        }
    }
    drop(tx);
    io.join().map_err(|_| anyhow::anyhow!("I/O thread panicked"))??;
    Ok(samples)
}

/// One raw quinn bulk transfer at a time against a running `raw-server`, to look at the
/// floor's CPU per byte outside the bench (`/usr/bin/time`, `perf`).
#[derive(Debug, clap::Args)]
pub struct RawBulkArgs {
    #[arg(long)]
    pub addr: SocketAddr,
    /// Dev certificate directory.
    #[arg(long)]
    pub certs: PathBuf,
    /// `up` or `down`.
    #[arg(long)]
    pub dir: String,
    /// Bytes per transfer, e.g. 256MiB.
    #[arg(long, value_parser = crate::stats::parse_size, default_value = "256MiB")]
    pub bytes: usize,
    /// Real buffers on both sides (`Data::Memory`) instead of one cached block.
    #[arg(long)]
    pub memory: bool,
    #[arg(long, default_value_t = 6)]
    pub repeat: usize,
}

/// Runs [`RawBulkArgs`]: prints one MB/s figure per transfer.
pub fn raw_bulk(args: RawBulkArgs) -> Result<()> {
    let certs = Certs::new(&args.certs);
    let dir = match args.dir.as_str() {
        "up" => Direction::Upload,
        "down" => Direction::Download,
        other => bail!("--dir {other}: up or down"),
    };
    let data = if args.memory { Data::Memory } else { Data::Block };
    for _ in 0..args.repeat {
        let r = quinn_bulk(&certs, args.addr, Tuning::Cuwire, dir, args.bytes, 1, data)?;
        println!("{} {:.0} MB/s", args.dir, r / 1e6);
    }
    Ok(())
}

/// Which way bulk bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Upload,
    Download,
}

/// Moves `bytes` over one quinn stream; returns bytes per second (connection set-up excluded).
/// Where a bulk baseline's bytes come from and go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// One cache-resident 1 MiB block sent again and again; the receiver counts and drops:
    /// the transport alone.
    Block,
    /// A buffer of the whole size read on the sending side and one written on the receiving
    /// side, made before the timing starts: the transport plus the memory traffic any copy of
    /// real data has.
    Memory,
}

pub fn quinn_bulk(
    certs: &Certs,
    addr: SocketAddr,
    tuning: Tuning,
    dir: Direction,
    bytes: usize,
    streams: usize,
    data: Data,
) -> Result<f64> {
    let rt = Flavor::CurrentThread.runtime()?;
    rt.block_on(async {
        tokio::time::timeout(BASELINE_TIMEOUT, async {
            let (endpoint, conn) = connect(certs, tuning, addr).await?;
            // The buffers are made (and their pages touched) before the clock starts.
            let streams = streams.max(1);
            let share = |i: usize| bytes / streams + usize::from(i < bytes % streams);
            let source = (data == Data::Memory && dir == Direction::Upload).then(|| Bytes::from(vec![0xa5u8; bytes]));
            let mut dests: Vec<Option<Vec<u8>>> =
                (0..streams).map(|i| (data == Data::Memory && dir == Direction::Download).then(|| vec![0x33u8; share(i)])).collect();
            let t = Instant::now();
            // `streams` streams at once on the one connection, each with its share.
            let mut tasks = tokio::task::JoinSet::new();
            let mut offset = 0;
            for (i, dest) in dests.drain(..).enumerate() {
                let piece = source.as_ref().map(|s| s.slice(offset..offset + share(i)));
                offset += share(i);
                tasks.spawn(bulk_stream(conn.clone(), dir, share(i), piece, dest));
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            let secs = t.elapsed().as_secs_f64();
            conn.close(0u32.into(), b"done");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            anyhow::Ok(bytes as f64 / secs)
        })
        .await
        .context("raw quinn bulk timed out")?
    })
}

/// One stream of [`quinn_bulk`]: `bytes` up or down, until the other side has them all; an
/// upload sends `source` when given (else one block again and again), a download writes into
/// `dest` when given (else drops what it gets).
async fn bulk_stream(conn: quinn::Connection, dir: Direction, bytes: usize, source: Option<Bytes>, dest: Option<Vec<u8>>) -> Result<()> {
    let block = Bytes::from(vec![0xa5u8; BULK_CHUNK]);
    let (mut send, mut recv) = conn.open_bi().await?;
    match dir {
        Direction::Upload => {
            let mut head = vec![if source.is_some() { b'W' } else { b'U' }];
            head.extend_from_slice(&(bytes as u64).to_le_bytes());
            send.write_all(&head).await?;
            let mut sent = 0;
            while sent < bytes {
                let n = BULK_CHUNK.min(bytes - sent);
                let piece = match &source {
                    Some(m) => m.slice(sent..sent + n),
                    None => block.slice(..n),
                };
                send.write_chunk(piece).await?;
                sent += n;
            }
            let mut ack = [0u8; 1];
            recv.read_exact(&mut ack).await?;
        }
        Direction::Download => {
            let mut head = vec![if dest.is_some() { b'R' } else { b'D' }];
            head.extend_from_slice(&(bytes as u64).to_le_bytes());
            send.write_all(&head).await?;
            let mut into = dest;
            let mut got = 0;
            while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
                if let Some(into) = &mut into {
                    if got + chunk.bytes.len() > bytes {
                        bail!("download sent more than {bytes} bytes");
                    }
                    into[got..got + chunk.bytes.len()].copy_from_slice(&chunk.bytes);
                }
                got += chunk.bytes.len();
            }
            if got != bytes {
                bail!("download got {got} of {bytes} bytes");
            }
        }
    }
    let _ = send.finish();
    Ok(())
}

fn tcp_connect(addr: SocketAddr, op: u8) -> Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(&[op])?;
    Ok(s)
}

/// Round-trip times (ns) of `ops` 64-byte ping-pongs on a blocking TCP connection.
pub fn tcp_pingpong(addr: SocketAddr, warmup: usize, ops: usize) -> Result<Vec<u64>> {
    let mut s = tcp_connect(addr, b'P')?;
    let mut buf = [7u8; PING];
    let mut samples = Vec::with_capacity(ops);
    for i in 0..warmup + ops {
        let t = Instant::now();
        s.write_all(&buf)?;
        s.read_exact(&mut buf)?;
        if i >= warmup {
            samples.push(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(samples)
}

/// Moves `bytes` over one TCP connection; returns bytes per second.
pub fn tcp_bulk(addr: SocketAddr, dir: Direction, bytes: usize) -> Result<f64> {
    let t = Instant::now();
    let mut s = tcp_connect(addr, if dir == Direction::Upload { b'U' } else { b'D' })?;
    s.write_all(&(bytes as u64).to_le_bytes())?;
    let mut buf = vec![0xa5u8; BULK_CHUNK];
    match dir {
        Direction::Upload => {
            let mut left = bytes;
            while left > 0 {
                let n = BULK_CHUNK.min(left);
                s.write_all(&buf[..n])?;
                left -= n;
            }
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack)?;
        }
        Direction::Download => {
            let mut left = bytes;
            while left > 0 {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    bail!("download ended early");
                }
                left = left.saturating_sub(n);
            }
        }
    }
    Ok(bytes as f64 / t.elapsed().as_secs_f64())
}
