//! Faults with real processes: the server killed mid-call and restarted, a client killed
//! mid-transfer, a flood of connections that never say hello, handshakes that stall half-way,
//! a client that forks after cuInit, and a network that drops everything for a while (a UDP
//! relay between client and server).
//!
//! The tests take turns (one lock), since their timing assertions mean little on a 2-core
//! machine busy with several of them at once; each is bounded and kills what it started.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use cuwire_e2e::{c_clients_available, run_client_timeout, spawn_client, Client, ClientOutput, Server, Spawned};

const MIB: u64 = 1 << 20;
/// Generous bound for a whole client run in these tests.
const RUN: Duration = Duration::from_secs(25);
/// Bound for one expected line.
const LINE: Duration = Duration::from_secs(10);
/// Loop trips of the spin kernel: long enough that the client spends its time waiting in
/// cuCtxSynchronize, short enough that the emulator finishes a launch well within a second.
const SPIN_ITERS: &str = "300000";

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn fault_client(args: &[&str]) -> Command {
    let mut cmd = Command::new(Client::c("fault_client.c"));
    cmd.args(args);
    cmd
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The settings of `server` with the certificate of `tenant` (made if absent).
fn tenant_env(server: &Server, tenant: &str) -> HashMap<String, String> {
    let dir = server.certs_dir();
    if !cuwire_certs::tenant_pem(dir, tenant).exists() {
        cuwire_certs::tenant(dir, tenant).unwrap();
    }
    let mut env = server.env().clone();
    env.insert("CUWIRE_CERT".into(), cuwire_certs::tenant_pem(dir, tenant).display().to_string());
    env.insert("CUWIRE_KEY".into(), cuwire_certs::tenant_key(dir, tenant).display().to_string());
    env
}

/// `/status` of a server started with `--metrics ADDR`.
fn status(metrics: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(metrics).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /status HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {text}"))
}

fn tenant_memory(metrics: &str, tenant: &str) -> u64 {
    status(metrics)["tenants"][tenant]["memory_total"].as_u64().unwrap_or(0)
}

/// The number in `prefix N …` or `… after N ms`, by position.
fn field(line: &str, index: usize) -> &str {
    line.split_whitespace().nth(index).unwrap_or_else(|| panic!("line {line:?} has no field {index}"))
}

/// Checks the `after FUNCTION RESULT MS` lines: every call failed with a CUDA error, each
/// within `within`.
fn assert_later_calls_fail(out: &ClientOutput, within: Duration) {
    let after: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("after ")).collect();
    assert!(after.len() >= 9, "the later calls were not all made:\n{out}");
    for l in after {
        let (result, ms) = (field(l, 2), field(l, 3).parse::<f64>().unwrap());
        assert!(result.starts_with("CUDA_ERROR_"), "a call after the connection was lost did not fail: {l}\n{out}");
        assert!(ms <= within.as_secs_f64() * 1e3, "{l}: took longer than {within:?}\n{out}");
    }
}

fn assert_exited_normally(out: &ClientOutput) {
    assert!(out.success(), "the client did not exit normally:\n{out}");
    assert!(out.stdout.lines().any(|l| l == "done"), "the client did not get to its end:\n{out}");
}

// ---------------------------------------------------------------------------
// The server goes away

#[test]
fn server_killed_mid_call_fails_the_pending_and_every_later_call_within_the_idle_timeout() {
    if !c_clients_available() {
        return;
    }
    let _turn = one_at_a_time();
    let server = Server::start(&[]);
    let mut client =
        spawn_client(fault_client(&["spinloop", "30", SPIN_ITERS, "after"]), server.env(), &[("CUWIRE_IDLE_TIMEOUT", Some("2"))]);
    client.wait_for("spinloop started", LINE);
    thread::sleep(Duration::from_millis(700));
    let killed = Instant::now();
    server.kill();
    let failed = client.wait_for("spinloop ", Duration::from_secs(6));
    let noticed = killed.elapsed();
    assert!(failed.starts_with("spinloop error CUDA_ERROR_"), "the pending call did not fail: {failed}");
    // QUIC notices a silent peer after the idle timeout (2 s); a little slack for the machine.
    assert!(noticed < Duration::from_millis(3500), "the pending call failed {noticed:?} after the kill");
    let out = client.finish(RUN);
    assert_later_calls_fail(&out, Duration::from_secs(2));
    assert_exited_normally(&out);
    eprintln!("pending call failed {noticed:?} after the kill: {failed}");
}

#[test]
fn a_client_holding_when_the_server_dies_gets_errors_and_exits_normally() {
    if !c_clients_available() {
        return;
    }
    let _turn = one_at_a_time();
    let server = Server::start(&[]);
    // pool_client: hold (sleep) with an allocation, then calls on a dead connection.
    let mut cmd = Command::new(Client::c("pool_client.c"));
    cmd.args(["dev", "0", "alloc", "4096", "write", "3", "hold", "3", "check", "3", "alloc", "4096", "info"]);
    let mut client = spawn_client(cmd, server.env(), &[("CUWIRE_IDLE_TIMEOUT", Some("2"))]);
    client.wait_for("holding", LINE);
    server.kill();
    let out = client.finish(RUN);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(out.success(), "{out}");
    assert_eq!(lines.len(), 7, "{out}");
    for l in &lines[4..] {
        assert!(l.contains("CUDA_ERROR_"), "a call on a dead connection did not fail: {l}\n{out}");
    }
}

#[test]
fn a_restarted_server_serves_new_clients_at_once() {
    if !c_clients_available() {
        return;
    }
    let _turn = one_at_a_time();
    let first = Server::start(&[]);
    let (certs, addr) = (first.certs_dir().to_path_buf(), first.addr());
    let out = run_client_timeout(fault_client(&["after"]), first.env(), &[], RUN);
    assert!(out.stdout.contains("after cuMemFree ok"), "{out}");
    first.kill();

    let restarted = Instant::now();
    let second = Server::start_at(&certs, &addr.to_string(), &[]);
    assert_eq!(second.addr(), addr);
    let listening = restarted.elapsed();
    // The same settings (CA, tenant certificate, address) reach the new server.
    let out = run_client_timeout(fault_client(&["after"]), first.env(), &[], RUN);
    let served = restarted.elapsed();
    assert_exited_normally(&out);
    for l in out.stdout.lines().filter(|l| l.starts_with("after ")) {
        assert_eq!(field(l, 2), "ok", "{l}\n{out}\n{}", second.log());
    }
    assert!(out.elapsed < Duration::from_secs(5), "the first client after the restart took {:?}", out.elapsed);
    eprintln!("restart: listening after {listening:?}, first client served after {served:?}");
}

// ---------------------------------------------------------------------------
// A client goes away

#[test]
fn a_client_killed_mid_transfer_is_freed_within_two_seconds_and_another_session_notices_nothing() {
    if !c_clients_available() {
        return;
    }
    let _turn = one_at_a_time();
    let metrics = format!("127.0.0.1:{}", free_tcp_port());
    let server = Server::start(&["--idle-timeout", "1.5", "--metrics", &metrics]);
    // The bystander (tenant dev) checks its own data over and over for the whole time.
    let mut bystander = spawn_client(fault_client(&["checkloop", "6", "64"]), server.env(), &[]);
    bystander.wait_for("checkloop started", LINE);
    // alice copies 64 MiB to the device over and over: some copy is always in flight.
    let mut copier = spawn_client(fault_client(&["copyloop", "30", "64"]), &tenant_env(&server, "alice"), &[]);
    copier.wait_for("copyloop started", LINE);
    thread::sleep(Duration::from_millis(400));
    assert_eq!(tenant_memory(&metrics, "alice"), 64 * MIB, "{}", status(&metrics));
    let killed = Instant::now();
    copier.kill();
    while tenant_memory(&metrics, "alice") != 0 {
        assert!(killed.elapsed() < Duration::from_secs(2), "alice's memory not back after {:?}: {}", killed.elapsed(), status(&metrics));
        thread::sleep(Duration::from_millis(50));
    }
    let freed = killed.elapsed();
    let s = status(&metrics);
    assert!(s["sessions"].as_array().unwrap().iter().all(|x| x["tenant"] != "alice"), "alice's session is still listed: {s}");
    let out = bystander.finish(RUN);
    assert!(out.stdout.lines().any(|l| l.starts_with("checkloop ok ")), "the other session noticed:\n{out}");
    assert!(server.is_running());
    eprintln!("killed copier's 64 MiB freed after {freed:?}; bystander: {}", out.stdout.lines().next_back().unwrap_or(""));
}

#[test]
fn a_child_forked_after_cuinit_gets_not_initialized_and_the_parent_keeps_working() {
    if !c_clients_available() {
        return;
    }
    let _turn = one_at_a_time();
    let server = Server::start(&[]);
    let out = run_client_timeout(fault_client(&["fork"]), server.env(), &[], RUN);
    assert_exited_normally(&out);
    let has = |l: &str| out.stdout.lines().any(|x| x == l);
    for call in ["cuMemAlloc", "cuCtxSynchronize", "cuMemcpyDtoH"] {
        assert!(has(&format!("child {call} CUDA_ERROR_NOT_INITIALIZED")), "the child's {call} did not fail as NOT_INITIALIZED:\n{out}");
    }
    assert!(has("child exited 0"), "{out}");
    assert!(has("parent check ok"), "the parent's data changed:\n{out}");
    assert!(has("parent alloc ok"), "the parent's session stopped working:\n{out}");
    // The child never spoke on the parent's connection: the server saw nothing it could not
    // frame: one session, ended by the parent's own exit.
    let log = server.log();
    assert_eq!(log.matches("session opened").count(), 1, "{log}");
    let ends: Vec<&str> = log.lines().filter(|l| l.contains("session ended") || l.contains("session closed")).collect();
    assert_eq!(ends.len(), 1, "{log}");
    // An exiting shim ends its lane (the server logs "session closed"), then closes.
    assert!(ends[0].contains("session closed"), "the session did not end with the parent's exit: {}", ends[0]);
    assert!(!log.contains("undecodable"), "{log}");
}

// ---------------------------------------------------------------------------
// Connections that never get anywhere

/// A TLS client of the pool with the `dev` tenant certificate.
fn quinn_config(certs: &Path) -> quinn::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(cuwire_certs::ca_pem(certs)).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(cuwire_certs::tenant_pem(certs, "dev")).unwrap()],
            PrivateKeyDer::from_pem_file(cuwire_certs::tenant_key(certs, "dev")).unwrap(),
        )
        .unwrap();
    tls.alpn_protocols = vec![cuwire_protocol::handshake::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(10).try_into().unwrap())).keep_alive_interval(Some(Duration::from_millis(300)));
    config.transport_config(Arc::new(transport));
    config
}

/// How one connection of the flood ended.
#[derive(Debug)]
enum Flooder {
    /// Did not get through TLS.
    Refused(String),
    /// Got past TLS, said nothing, and was closed by the server after this long.
    ClosedAfter(Duration, String),
    /// Still open when the test stopped watching.
    StillOpen,
}

#[test]
fn a_flood_of_silent_connections_is_limited_and_timed_out_and_good_clients_are_served_after() {
    if !c_clients_available() {
        return;
    }
    let _turn = one_at_a_time();
    const LIMIT: usize = 8;
    const FLOOD: usize = 20;
    // The hello deadline is the handshake timeout plus the admission timeout (see
    // bad_input.rs); the admission timeout is made short so the deadline is 1.5 s.
    let server = Server::start(&["--max-connections", "8", "--handshake-timeout", "1", "--admission-timeout", "0.5"]);
    let (addr, certs) = (server.addr(), server.certs_dir().to_path_buf());

    // Junk datagrams first: not QUIC at all, or Initial-looking garbage.
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..500u32 {
        let mut d = vec![0u8; 1200];
        for (k, b) in d.iter_mut().enumerate() {
            *b = (i as usize * 31 + k * 7) as u8;
        }
        d[0] = if i % 2 == 0 { 0xc3 } else { 0x40 };
        let _ = junk.send_to(&d, addr);
    }

    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<()>();
    let flood = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let config = quinn_config(&certs);
            let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            let mut tasks = Vec::new();
            for _ in 0..FLOOD {
                let (endpoint, config, opened) = (endpoint.clone(), config.clone(), opened_tx.clone());
                tasks.push(tokio::spawn(async move {
                    let connecting = match endpoint.connect_with(config, addr, "localhost") {
                        Ok(c) => c,
                        Err(e) => return Flooder::Refused(e.to_string()),
                    };
                    let conn = match tokio::time::timeout(Duration::from_secs(5), connecting).await {
                        Err(_) => return Flooder::Refused("TLS did not complete".into()),
                        Ok(Err(e)) => return Flooder::Refused(e.to_string()),
                        Ok(Ok(c)) => c,
                    };
                    let start = Instant::now();
                    let _ = opened.send(());
                    // Sit: no stream, no hello.
                    match tokio::time::timeout(Duration::from_secs(8), conn.closed()).await {
                        Ok(reason) => Flooder::ClosedAfter(start.elapsed(), reason.to_string()),
                        Err(_) => Flooder::StillOpen,
                    }
                }));
            }
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await.unwrap());
            }
            endpoint.close(0u32.into(), b"done");
            results
        })
    });
    // Every flooder has a certificate, so all get through TLS; LIMIT of them hold the
    // connection slots and the rest are closed at once.
    let mut opened = 0;
    while opened < FLOOD && opened_rx.recv_timeout(Duration::from_secs(5)).is_ok() {
        opened += 1;
    }
    assert_eq!(opened, FLOOD, "the flood did not get through TLS\n{}", server.log());
    // While the flood holds every slot, a real client is turned away, cleanly and at once.
    let during = run_client_timeout(fault_client(&[]), server.env(), &[("CUWIRE_CONNECT_TIMEOUT", Some("3"))], RUN);
    let results = flood.join().unwrap();
    eprintln!("flood: {results:?}");
    eprintln!("a client during the flood: {during}");
    let mut turned_away = 0;
    let mut timed_out = Vec::new();
    for r in &results {
        match r {
            Flooder::ClosedAfter(d, why) if why.contains("connection limit reached") => {
                assert!(*d < Duration::from_millis(900), "turned away only after {d:?}: {results:?}");
                turned_away += 1;
            }
            Flooder::ClosedAfter(d, why) => {
                assert!(why.contains("handshake timed out"), "a silent connection closed for another reason: {why}");
                assert!(*d >= Duration::from_millis(900) && *d < Duration::from_secs(4), "closed after {d:?}: {results:?}");
                timed_out.push(*d);
            }
            Flooder::Refused(why) => panic!("a flooder with a certificate did not get through TLS: {why}"),
            Flooder::StillOpen => panic!("a silent connection stayed open: {results:?}"),
        }
    }
    assert_eq!(timed_out.len(), LIMIT, "{results:?}");
    assert_eq!(turned_away + timed_out.len(), FLOOD);
    assert!(during.stdout.contains("init CUDA_ERROR_"), "a client during the flood was served or hung:\n{during}");
    assert!(during.elapsed < Duration::from_secs(5), "refusing the client took {:?}", during.elapsed);

    // The flood is gone: a good client is served at once, and the server is still up.
    assert!(server.is_running(), "{}", server.log());
    let out = run_client_timeout(fault_client(&["after"]), server.env(), &[], RUN);
    assert_exited_normally(&out);
    assert!(out.stdout.contains("after cuMemFree ok"), "{out}\n{}", server.log());
    assert!(server.is_running(), "{}", server.log());
}

/// `GET /metrics` of a server started with `--metrics ADDR`: the value of the first sample whose
/// line starts with `prefix`, 0 if there is none.
fn metric(metrics: &str, prefix: &str) -> f64 {
    let mut s = TcpStream::connect(metrics).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

#[test]
fn stalled_tls_handshakes_fill_only_the_pending_slots_and_sessions_go_on() {
    if !c_clients_available() {
        return;
    }
    let _turn = one_at_a_time();
    const PENDING: usize = 4;
    const STALLED: usize = 12;
    let metrics = format!("127.0.0.1:{}", free_tcp_port());
    let server = Server::start(&["--max-pending-handshakes", "4", "--handshake-timeout", "2", "--metrics", &metrics]);
    let (addr, certs) = (server.addr(), server.certs_dir().to_path_buf());
    // A session opened before the flood checks its data all through it.
    let mut bystander = spawn_client(fault_client(&["checkloop", "5", "64"]), server.env(), &[]);
    bystander.wait_for("checkloop started", LINE);

    // A one-way relay: the clients' datagrams reach the server, the server's never come back,
    // so each handshake stalls half-way, as an attacker's would.
    let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
    relay.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let forwarder = {
        let stop = stop.clone();
        thread::spawn(move || {
            let back = UdpSocket::bind("127.0.0.1:0").unwrap();
            back.connect(addr).unwrap();
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, _)) = relay.recv_from(&mut buf) {
                    let _ = back.send(&buf[..n]);
                }
            }
        })
    };
    let stallers = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let config = quinn_config(&certs);
            let mut tasks = Vec::new();
            for _ in 0..STALLED {
                // An endpoint (a source port) each: to the server, distinct clients.
                let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
                let connecting = endpoint.connect_with(config.clone(), relay_addr, "localhost").unwrap();
                tasks.push(tokio::spawn(async move {
                    let r = tokio::time::timeout(Duration::from_secs(3), connecting).await;
                    drop(endpoint);
                    r.is_ok()
                }));
            }
            let mut completed = 0;
            for t in tasks {
                completed += t.await.unwrap() as usize;
            }
            completed
        })
    });
    // The stallers beyond the limit are refused at accept.
    let deadline = Instant::now() + Duration::from_secs(2);
    let refusals = "cuwire_handshake_refusals_total{reason=\"pending_handshakes\"}";
    while metric(&metrics, refusals) < (STALLED - PENDING) as f64 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let refused = metric(&metrics, refusals);
    assert!(refused >= (STALLED - PENDING) as f64, "{refused} refused, expected {}", STALLED - PENDING);
    assert_eq!(stallers.join().unwrap(), 0, "a stalled handshake completed");
    stop.store(true, Ordering::Relaxed);
    forwarder.join().unwrap();
    // No staller sends anything from here on; a slot one of them took last is free within the
    // handshake timeout (2 s).
    let stallers_gone = Instant::now();

    // The session that was open noticed nothing.
    let out = bystander.finish(RUN);
    assert!(out.stdout.lines().any(|l| l.starts_with("checkloop ok ")), "the open session noticed the flood:\n{out}");
    // The stalled handshakes are dropped after the handshake timeout; then new clients get in.
    thread::sleep((stallers_gone + Duration::from_millis(3000)).saturating_duration_since(Instant::now()));
    // The PENDING admitted ones time out; a staller still retransmitting its first packet may
    // take a freed slot and time out in turn, so more than PENDING may be counted, never fewer.
    let timeouts = metric(&metrics, "cuwire_handshake_refusals_total{reason=\"tls_timeout\"}");
    assert!((PENDING as f64..=STALLED as f64).contains(&timeouts), "{timeouts} handshake timeouts\n{}", server.log());
    let after = run_client_timeout(fault_client(&["after"]), server.env(), &[], RUN);
    assert_exited_normally(&after);
    assert!(after.stdout.contains("after cuMemFree ok"), "{after}\n{}", server.log());
    assert!(server.is_running(), "{}", server.log());
}

// ---------------------------------------------------------------------------
// The network drops everything for a while

/// A loopback UDP relay between one client and the server, with a switch that drops every
/// datagram in both directions.
struct Relay {
    addr: SocketAddr,
    dropping: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Relay {
    fn start(server: SocketAddr) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.connect(server).unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let addr = front.local_addr().unwrap();
        let (dropping, stop, dropped) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (front2, back2) = (front.try_clone().unwrap(), back.try_clone().unwrap());
        let up = {
            let (dropping, stop, dropped, client) = (dropping.clone(), stop.clone(), dropped.clone(), client.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else { continue };
                    *client.lock().unwrap() = Some(from);
                    if dropping.load(Ordering::Relaxed) {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let _ = back.send(&buf[..n]);
                    }
                }
            })
        };
        let down = {
            let (dropping, stop, dropped) = (dropping.clone(), stop.clone(), dropped.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = back2.recv(&mut buf) else { continue };
                    let to = *client.lock().unwrap();
                    match to {
                        Some(to) if !dropping.load(Ordering::Relaxed) => {
                            let _ = front2.send_to(&buf[..n], to);
                        }
                        _ => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        Relay { addr, dropping, stop, dropped, threads: vec![up, down] }
    }

    fn set_dropping(&self, on: bool) {
        self.dropping.store(on, Ordering::SeqCst);
    }

    /// The settings of `server`, pointed at the relay.
    fn env(&self, server: &Server) -> HashMap<String, String> {
        let mut env = server.env().clone();
        env.insert("CUWIRE_SERVER".into(), self.addr.to_string());
        env
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn rounds(client: &mut Spawned, n: usize) {
    for _ in 0..n {
        client.wait_for("round ", LINE);
    }
}

#[test]
fn a_three_second_network_drop_is_ridden_out_with_nothing_lost_or_applied_twice() {
    if !c_clients_available() {
        return;
    }
    let _turn = one_at_a_time();
    let server = Server::start(&[]);
    let relay = Relay::start(server.addr());
    let mut client = spawn_client(fault_client(&["checkloop", "9", "64"]), &relay.env(&server), &[("CUWIRE_IDLE_TIMEOUT", Some("10"))]);
    client.wait_for("checkloop started", LINE);
    rounds(&mut client, 3);
    relay.set_dropping(true);
    thread::sleep(Duration::from_secs(3));
    relay.set_dropping(false);
    let back = Instant::now();
    let next = client.wait_for("round ", LINE);
    let resumed = back.elapsed();
    rounds(&mut client, 3);
    let out = client.finish(RUN);
    assert!(out.stdout.lines().any(|l| l.starts_with("checkloop ok ")), "copies were lost or applied twice:\n{out}");
    assert_exited_normally(&out);
    // Some round waited out the drop, so it really happened in the middle of the calls.
    let longest = out.stdout.lines().filter(|l| l.starts_with("round ")).map(|l| field(l, 3).parse::<f64>().unwrap()).fold(0.0, f64::max);
    assert!(longest >= 2500.0, "no round waited for the drop (longest {longest} ms):\n{out}");
    assert!(resumed < Duration::from_secs(3), "calls resumed {resumed:?} after the network came back");
    assert!(relay.dropped.load(Ordering::Relaxed) > 0);
    eprintln!(
        "dropped {} datagrams; resumed {resumed:?} after the drop ({next}); longest round {longest} ms",
        relay.dropped.load(Ordering::Relaxed)
    );
}

/// A synchronous host-to-device copy lends the caller's buffer to quinn until the server has
/// acknowledged it (client-shim/src/loan.rs): when the acknowledgements never come, the copy must
/// still fail once the connection is declared lost, not wait forever.
#[test]
fn a_drop_during_a_large_copy_fails_the_copy_cleanly() {
    if !c_clients_available() {
        return;
    }
    let _turn = one_at_a_time();
    let server = Server::start(&[]);
    let relay = Relay::start(server.addr());
    let mut client =
        spawn_client(fault_client(&["copyloop", "20", "64", "after"]), &relay.env(&server), &[("CUWIRE_IDLE_TIMEOUT", Some("2"))]);
    client.wait_for("copyloop started", LINE);
    // Copies are under way (64 MiB each, 16 chunks); cut the network in the middle of one.
    thread::sleep(Duration::from_millis(500));
    let dropped = Instant::now();
    relay.set_dropping(true);
    let failed = client.wait_for("copyloop ", Duration::from_secs(8));
    let noticed = dropped.elapsed();
    assert!(failed.starts_with("copyloop error CUDA_ERROR_"), "{failed}");
    assert!(noticed < Duration::from_millis(4000), "the copy failed {noticed:?} after the network went");
    let out = client.finish(RUN);
    assert_later_calls_fail(&out, Duration::from_secs(2));
    assert_exited_normally(&out);
    assert!(server.is_running());
    eprintln!("the network went mid-copy; the copy failed after {noticed:?}: {failed}");
}

#[test]
fn a_drop_longer_than_the_idle_timeout_fails_calls_cleanly() {
    if !c_clients_available() {
        return;
    }
    let _turn = one_at_a_time();
    let server = Server::start(&[]);
    let relay = Relay::start(server.addr());
    let mut client =
        spawn_client(fault_client(&["checkloop", "20", "64", "after"]), &relay.env(&server), &[("CUWIRE_IDLE_TIMEOUT", Some("2"))]);
    client.wait_for("checkloop started", LINE);
    rounds(&mut client, 3);
    let dropped = Instant::now();
    relay.set_dropping(true);
    let failed = client.wait_for("checkloop ", Duration::from_secs(6));
    let noticed = dropped.elapsed();
    assert!(failed.starts_with("checkloop error CUDA_ERROR_"), "{failed}");
    assert!(noticed < Duration::from_millis(3500), "the call failed {noticed:?} after the network went");
    let out = client.finish(RUN);
    assert_later_calls_fail(&out, Duration::from_secs(2));
    assert_exited_normally(&out);
    assert!(server.is_running());
    eprintln!("the network went; the pending call failed after {noticed:?}: {failed}");
}
