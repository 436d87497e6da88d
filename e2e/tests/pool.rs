//! The tenant pool end to end: a real cuwired with two emulated GPUs and a configuration file of
//! tenants, real client processes (e2e/clients/pool_client.c) with their own certificates.
//! Quotas at the boundary, placement, cross-tenant pointers, a killed client's memory,
//! fair sharing, revocation and unknown tenants, and the metrics endpoint.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cuwire_e2e::{c_clients_available, run_client, shim_dir, Client, ClientOutput, Server};

const MIB: u64 = 1 << 20;

struct Pool {
    server: Server,
    metrics: String,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

const CONFIG: &str = r#"
[emu]
memories = ["256MiB", "256MiB"]

[pool]
placement = "spread"

[tenants.dev]

[tenants.alice]
memory-per-gpu = "64MiB"
memory-total = "96MiB"
max-sessions = 3

[tenants.bob]
memory-per-gpu = "128MiB"
gpus = [1]

[tenants.carol]
devices-per-session = 1

[tenants.erin]
gpus = [0]
share = 1

[tenants.frank]
gpus = [0]
share = 1
"#;

impl Pool {
    fn start(extra: &[&str]) -> Pool {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cuwired.toml");
        std::fs::write(&config, CONFIG).unwrap();
        let metrics = format!("127.0.0.1:{}", free_tcp_port());
        let mut args = vec!["--config", config.to_str().unwrap(), "--metrics", &metrics];
        args.extend_from_slice(extra);
        let server = Server::start(&args);
        for t in ["alice", "bob", "carol", "erin", "frank", "eve", "mallory"] {
            cuwire_certs::tenant(server.certs_dir(), t).unwrap();
        }
        Pool { server, metrics, config, _dir: dir }
    }

    fn env(&self, tenant: &str) -> HashMap<String, String> {
        let mut env = self.server.env().clone();
        let dir = self.server.certs_dir();
        env.insert("CUWIRE_CERT".into(), cuwire_certs::tenant_pem(dir, tenant).display().to_string());
        env.insert("CUWIRE_KEY".into(), cuwire_certs::tenant_key(dir, tenant).display().to_string());
        env
    }

    fn run(&self, tenant: &str, cmds: &[&str]) -> ClientOutput {
        let mut cmd = Command::new(Client::c("pool_client.c"));
        cmd.args(cmds);
        run_client(cmd, &self.env(tenant), &[])
    }

    /// Starts a client that keeps running; its stdout is read line by line.
    fn spawn(&self, tenant: &str, cmds: &[&str]) -> Running {
        let mut cmd = Command::new(Client::c("pool_client.c"));
        cmd.args(cmds).env("LD_LIBRARY_PATH", shim_dir()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in self.env(tenant) {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Running { child, out }
    }

    fn http(&self, path: &str) -> String {
        let mut s = TcpStream::connect(&self.metrics).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.http("/status")).unwrap()
    }

    /// The value of one Prometheus sample whose name and labels all appear in its line.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text = self.http("/metrics");
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    fn tenant_memory(&self, tenant: &str) -> u64 {
        self.status()["tenants"][tenant]["memory_total"].as_u64().unwrap_or(0)
    }
}

struct Running {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Running {
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim().to_owned()
    }
    fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            let l = self.line();
            assert!(!l.is_empty(), "client ended before printing {prefix:?}");
            if l.starts_with(prefix) {
                return l;
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(out: &ClientOutput) -> Vec<&str> {
    out.stdout.lines().collect()
}

fn serial_of(pem: &Path) -> String {
    let text = std::fs::read(pem).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
    let cert = pem.parse_x509().unwrap();
    cert.raw_serial_as_string()
}

#[test]
fn quotas_hold_exactly_at_the_boundary_across_sessions() {
    if !c_clients_available() {
        return;
    }
    let pool = Pool::start(&[]);
    // One alice session holds exactly its per-GPU quota; one byte more is refused.
    let mut holder = pool.spawn("alice", &["dev", "0", "alloc", &(64 * MIB).to_string(), "info", "hold", "30"]);
    assert!(holder.wait_for("alloc").starts_with(&format!("alloc {} ok", 64 * MIB)));
    let info = holder.wait_for("info");
    assert_eq!(info, format!("info 0 {}", 64 * MIB), "cuMemGetInfo reports the tenant's view");
    holder.wait_for("holding");
    // A second alice session: nothing left on GPU 0; on GPU 1 the total quota (96 MiB) leaves 32.
    let out = pool.run("alice", &["dev", "0", "alloc", "1", "dev", "1", "alloc", &(32 * MIB).to_string(), "alloc", "1", "info", "devices"]);
    let l = lines(&out);
    assert_eq!(l[1], "alloc 1 CUDA_ERROR_OUT_OF_MEMORY", "{out}");
    assert!(l[3].starts_with(&format!("alloc {} ok", 32 * MIB)), "{out}");
    assert_eq!(l[4], "alloc 1 CUDA_ERROR_OUT_OF_MEMORY", "{out}");
    assert_eq!(l[5], format!("info 0 {}", 64 * MIB), "{out}");
    assert_eq!(l[6], format!("devices 2 {} {}", 64 * MIB, 64 * MIB), "cuDeviceTotalMem is the quota: {out}");
    // The refusals were counted, and nothing over quota reached the GPU.
    assert_eq!(pool.metric("cuwire_quota_refusals_total", &[("tenant", "alice"), ("kind", "memory")]), Some(2.0));
    assert_eq!(pool.metric("cuwire_memory_bytes", &[("tenant", "alice"), ("gpu", "0")]), Some((64 * MIB) as f64));
    assert_eq!(pool.tenant_memory("alice"), 64 * MIB);
    drop(holder);
}

#[test]
fn placement_follows_the_policy_and_tenants_see_their_gpus_as_0_to_k() {
    if !c_clients_available() {
        return;
    }
    let pool = Pool::start(&[]);
    // carol: one GPU per session, spread: two concurrent sessions land on different GPUs.
    let mut a = pool.spawn("carol", &["devices", "dev", "0", "hold", "30"]);
    assert_eq!(a.wait_for("devices"), format!("devices 1 {}", 256 * MIB));
    a.wait_for("holding");
    let mut b = pool.spawn("carol", &["devices", "dev", "0", "hold", "30"]);
    b.wait_for("holding");
    let status = pool.status();
    let placed: Vec<u64> = status["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["tenant"] == "carol")
        .map(|s| s["devices"][0].as_u64().unwrap())
        .collect();
    assert_eq!(placed.len(), 2, "{status}");
    assert_ne!(placed[0], placed[1], "spread puts the two sessions on different GPUs: {status}");
    // bob may only use GPU 1, which he sees as device 0 with his 128 MiB quota.
    let out = pool.run("bob", &["devices", "dev", "0", "alloc", &(128 * MIB).to_string(), "alloc", "1"]);
    let l = lines(&out);
    assert_eq!(l[0], format!("devices 1 {}", 128 * MIB), "{out}");
    assert!(l[2].starts_with("alloc 134217728 ok"), "{out}");
    assert_eq!(l[3], "alloc 1 CUDA_ERROR_OUT_OF_MEMORY", "{out}");
}

#[test]
fn another_tenants_pointer_is_refused_and_its_data_survives() {
    if !c_clients_available() {
        return;
    }
    let pool = Pool::start(&[]);
    let mut alice = pool.spawn("alice", &["dev", "0", "alloc", "4096", "write", "7", "hold", "30"]);
    let alloc = alice.wait_for("alloc");
    let ptr = alloc.rsplit(' ').next().unwrap().to_owned();
    alice.wait_for("holding");
    // dev is configured on both GPUs; it asks for alice's pointer on GPU 0.
    let out = pool.run("dev", &["dev", "0", "read", &ptr, "4096", "alloc", "4096", "read", &ptr, "16"]);
    let l = lines(&out);
    assert_eq!(l[1], "read CUDA_ERROR_INVALID_VALUE", "{out}");
    assert_eq!(l[3], "read CUDA_ERROR_INVALID_VALUE", "{out}");
    drop(alice);
    // alice's data was not touched: a fresh alice session writes and checks its own.
    let out = pool.run("alice", &["dev", "0", "alloc", "4096", "write", "9", "check", "9"]);
    assert_eq!(lines(&out)[3], "check ok", "{out}");
}

#[test]
fn a_killed_clients_memory_returns_within_two_seconds() {
    if !c_clients_available() {
        return;
    }
    let pool = Pool::start(&["--idle-timeout", "1.5"]);
    let mut alice = pool.spawn("alice", &["dev", "0", "alloc", &(64 * MIB).to_string(), "hold", "60"]);
    alice.wait_for("holding");
    assert_eq!(pool.tenant_memory("alice"), 64 * MIB);
    let killed = Instant::now();
    // SIGKILL: no goodbye reaches the server; QUIC's idle timeout tells it the client is gone.
    alice.child.kill().unwrap();
    alice.child.wait().unwrap();
    while pool.tenant_memory("alice") != 0 {
        assert!(killed.elapsed() < Duration::from_secs(2), "memory not back after {:?}: {}", killed.elapsed(), pool.status());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (free, total) = {
        let s = pool.status();
        (s["devices"][0]["free"].as_u64().unwrap(), s["devices"][0]["total"].as_u64().unwrap())
    };
    assert_eq!(free, total, "the GPU's memory is all free again");
}

#[test]
fn equal_shares_get_equal_throughput_under_contention() {
    if !c_clients_available() {
        return;
    }
    let pool = Pool::start(&[]);
    // erin runs two processes, frank one: the pool shares the GPU by tenant, not by process.
    let e1 = pool.spawn("erin", &["dev", "0", "spin", "4"]);
    let e2 = pool.spawn("erin", &["dev", "0", "spin", "4"]);
    let f1 = pool.spawn("frank", &["dev", "0", "spin", "4"]);
    let count = |mut r: Running| -> u64 {
        let l = r.wait_for("spin");
        l.split(' ').nth(1).unwrap().parse().unwrap_or_else(|_| panic!("{l}"))
    };
    let erin = count(e1) + count(e2);
    let frank = count(f1);
    assert!(erin > 10 && frank > 10, "too few launches to compare: erin {erin}, frank {frank}");
    // The GPU time each tenant got, as the pool's scheduler accounted it.
    let device = |t: &str| pool.metric("cuwire_device_seconds", &[("tenant", t)]).unwrap_or(0.0);
    let (de, df) = (device("erin"), device("frank"));
    let time_ratio = de.max(df) / de.min(df).max(1e-3);
    let ratio = erin.max(frank) as f64 / erin.min(frank) as f64;
    eprintln!("launches: erin {erin}, frank {frank} (ratio {ratio:.2}); GPU time: erin {de} s, frank {df} s (ratio {time_ratio:.2})");
    assert!(time_ratio <= 1.2, "GPU time: erin {de} s vs frank {df} s: ratio {time_ratio:.2}");
    assert!(ratio <= 1.2, "erin {erin} vs frank {frank} launches: ratio {ratio:.2}");
}

#[test]
fn revoked_and_unknown_tenants_are_refused_and_sighup_reloads() {
    if !c_clients_available() {
        return;
    }
    let pool = Pool::start(&[]);
    // eve has a certificate of the pool CA but is not a configured tenant.
    let out = pool.run("eve", &["devices"]);
    assert!(!out.success(), "{out}");
    assert!(out.stdout.contains("init CUDA_ERROR_NOT_PERMITTED"), "{out}");
    assert!(out.stderr.contains("not configured"), "{out}");
    // mallory is configured, works, and is then revoked by a SIGHUP reload.
    let serial = serial_of(&cuwire_certs::tenant_pem(pool.server.certs_dir(), "mallory"));
    let mut config = std::fs::read_to_string(&pool.config).unwrap();
    config = config.replace("[pool]\n", &format!("[pool]\nrevoked = [\"{serial}\"]\n"));
    config.push_str("\n[tenants.mallory]\n");
    let before = config.replace(&format!("revoked = [\"{serial}\"]\n"), "");
    std::fs::write(&pool.config, &before).unwrap();
    hup(&pool);
    let out = pool.run("mallory", &["devices"]);
    assert!(out.success(), "mallory should be admitted after the reload: {out}\n{}", pool.server.log());
    std::fs::write(&pool.config, &config).unwrap();
    hup(&pool);
    let out = pool.run("mallory", &["devices"]);
    assert!(out.stdout.contains("init CUDA_ERROR_NOT_PERMITTED"), "{out}");
    assert!(out.stderr.contains("revoked"), "{out}");
    assert!(pool.server.log().contains("revoked"), "the server log names the reason");
    assert_eq!(pool.metric("cuwire_handshake_refusals_total", &[("reason", "revoked")]), Some(1.0));
    assert_eq!(pool.metric("cuwire_handshake_refusals_total", &[("reason", "unknown_tenant")]), Some(1.0));
}

fn hup(pool: &Pool) {
    let before = pool.server.log().matches("configuration reloaded").count();
    assert!(Command::new("kill").args(["-HUP", &pool.server.pid().to_string()]).status().unwrap().success());
    let log = pool.server.log_once(Duration::from_secs(5), |log| log.matches("configuration reloaded").count() != before);
    assert!(log.matches("configuration reloaded").count() != before, "no reload: {log}");
}

#[test]
fn invalid_configuration_is_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[tenants.zed]\ngpus = [7]\n").unwrap();
    let out = Command::new(cuwire_e2e::cuwired_path())
        .args(["--config", config.to_str().unwrap(), "--dev", dir.path().join("certs").to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tenants.zed.gpus"), "{err}");
}
