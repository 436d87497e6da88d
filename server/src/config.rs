//! Configuration of cuwired: command-line flags and, with `--config FILE`, a TOML file in which
//! every flag can be set too (a flag given on the command line wins). The file also holds what
//! only makes sense there: tenants, quotas, placement, admission and revoked certificates.
//! Invalid configuration is refused at start with a message naming the key and the reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Emulated GPUs that run PTX on the CPU (no GPU needed).
    Emu,
    /// The real CUDA driver.
    Cuda,
}

/// How a session's GPUs are chosen among those its tenant may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Fill the busiest GPU first (fewest GPUs in use).
    Pack,
    /// The GPU with the fewest sessions.
    Spread,
    /// The GPU with the most free memory.
    #[default]
    LeastLoaded,
}

/// What happens when a tenant is at its session limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Admission {
    /// Wait up to the admission timeout for a session to end.
    Wait,
    /// Refuse at once.
    #[default]
    Fail,
}

/// cuwired: serves the CUDA driver API of a GPU pool over QUIC with mutual TLS.
#[derive(Debug, Clone, Parser, Default)]
#[command(name = "cuwired", version, about)]
pub struct Cli {
    /// A TOML configuration file; any flag below may be set there too (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on (UDP) [default: 127.0.0.1:4500]. Port 0 picks a free port.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Which GPUs to serve [default: emu].
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Number of emulated GPUs [default: 1].
    #[arg(long)]
    pub emu_gpus: Option<usize>,
    /// Memory of each emulated GPU, e.g. 512MiB or 4GiB [default: 4GiB]; host memory is used as touched.
    #[arg(long, value_parser = parse_size)]
    pub emu_memory: Option<u64>,
    /// Compute capability the emulated GPUs report [default: 8.0].
    #[arg(long, value_parser = parse_cc)]
    pub emu_cc: Option<(i32, i32)>,
    /// Seconds a kernel may run on the emulated GPU before CUDA_ERROR_LAUNCH_TIMEOUT [default: 10].
    #[arg(long)]
    pub emu_watchdog: Option<f64>,
    /// Worker threads per emulated launch [default: 0 = all cores].
    #[arg(long)]
    pub emu_threads: Option<usize>,
    /// The CUDA driver library of the cuda backend [default: libcuda.so.1].
    #[arg(long)]
    pub cuda_lib: Option<String>,
    /// Directory holding ca.pem, server.pem and server.key (see cuwire-certs).
    #[arg(long)]
    pub certs: Option<PathBuf>,
    /// Development mode: creates a CA, a server and a `dev` tenant certificate in DIR if absent,
    /// and writes DIR/env with the settings a client needs once listening.
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// Seconds of silence after which a client is gone [default: 10].
    #[arg(long)]
    pub idle_timeout: Option<f64>,
    /// Threads of the I/O runtime (QUIC, TLS, the sessions' readers and writers); 1 runs it on
    /// one thread without work stealing [default: one per CPU]. Not with --endpoints.
    #[arg(long, conflicts_with = "endpoints")]
    pub io_threads: Option<usize>,
    /// QUIC endpoints on the same port (SO_REUSEPORT), each on a single-threaded runtime of its
    /// own thread, every connection on one of them: less CPU per byte moved, but no balancing
    /// of busy connections between threads [default: 1].
    #[arg(long)]
    pub endpoints: Option<usize>,
    /// Most client connections served at once [default: 1024].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Most connections in their handshake (TLS and the hello) at once; more are refused
    /// [default: 64].
    #[arg(long)]
    pub max_pending_handshakes: Option<usize>,
    /// Seconds a new connection has to complete the cuwire handshake [default: 10].
    #[arg(long)]
    pub handshake_timeout: Option<f64>,
    /// Serve Prometheus metrics (/metrics) and a JSON status (/status) over HTTP on ADDR.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Placement policy of sessions on GPUs [default: least-loaded].
    #[arg(long, value_enum)]
    pub placement: Option<Placement>,
    /// At a tenant's session limit: wait for room or fail at once [default: fail].
    #[arg(long, value_enum)]
    pub admission: Option<Admission>,
    /// Seconds to wait for room with `--admission wait` [default: 10].
    #[arg(long)]
    pub admission_timeout: Option<f64>,
}

/// A tenant's limits. Absent limits are unlimited.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TenantConfig {
    /// Device memory per GPU, e.g. "2GiB".
    #[serde(default, deserialize_with = "de_size_opt")]
    pub memory_per_gpu: Option<u64>,
    /// Device memory over all GPUs and sessions.
    #[serde(default, deserialize_with = "de_size_opt")]
    pub memory_total: Option<u64>,
    pub max_contexts: Option<usize>,
    pub max_streams: Option<usize>,
    pub max_sessions: Option<usize>,
    /// Relative share of GPU time under contention (default 1).
    pub share: Option<f64>,
    /// Indices of the pool GPUs the tenant may use (default: all).
    pub gpus: Option<Vec<usize>>,
    /// How many GPUs each session gets (default: all allowed).
    pub devices_per_session: Option<usize>,
}

/// The TOML file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<SocketAddr>,
    backend: Option<BackendKind>,
    certs: Option<PathBuf>,
    dev: Option<PathBuf>,
    idle_timeout: Option<f64>,
    max_connections: Option<usize>,
    max_pending_handshakes: Option<usize>,
    handshake_timeout: Option<f64>,
    metrics: Option<SocketAddr>,
    endpoints: Option<usize>,
    #[serde(default)]
    emu: EmuFile,
    #[serde(default)]
    cuda: CudaFile,
    #[serde(default)]
    pool: PoolFile,
    /// Tenant name -> limits. Without this table, any tenant of the CA may connect.
    tenants: Option<BTreeMap<String, TenantConfig>>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct EmuFile {
    gpus: Option<usize>,
    #[serde(default, deserialize_with = "de_size_opt")]
    memory: Option<u64>,
    /// One size per GPU (overrides `gpus` and `memory`).
    #[serde(default, deserialize_with = "de_sizes_opt")]
    memories: Option<Vec<u64>>,
    cc: Option<String>,
    watchdog: Option<f64>,
    threads: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CudaFile {
    lib: Option<String>,
    /// Indices of the real GPUs to pool (default: all).
    devices: Option<Vec<usize>>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PoolFile {
    placement: Option<Placement>,
    admission: Option<Admission>,
    admission_timeout: Option<f64>,
    /// Serial numbers (hex, as `openssl x509 -serial` prints them) of revoked client certificates.
    #[serde(default)]
    revoked: Vec<String>,
}

/// Everything cuwired runs with, after merging flags and file.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: Option<PathBuf>,
    pub listen: SocketAddr,
    pub backend: BackendKind,
    /// Memory of each emulated GPU.
    pub emu_memories: Vec<u64>,
    pub emu_cc: (i32, i32),
    pub emu_watchdog: Duration,
    pub emu_threads: usize,
    pub cuda_lib: String,
    pub cuda_devices: Option<Vec<usize>>,
    pub certs: Option<PathBuf>,
    pub dev: Option<PathBuf>,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_pending_handshakes: usize,
    pub handshake_timeout: Duration,
    pub metrics: Option<SocketAddr>,
    pub endpoints: usize,
    pub policy: PoolPolicy,
}

/// The part of the configuration SIGHUP reloads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolPolicy {
    pub placement: Placement,
    pub admission: Admission,
    pub admission_timeout: Duration,
    /// None: any tenant of the CA, without limits.
    pub tenants: Option<BTreeMap<String, TenantConfig>>,
    /// Revoked certificate serials, lowercase hex without separators or leading zeros.
    pub revoked: Vec<String>,
}

fn de_size_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        N(u64),
        T(String),
    }
    match Option::<S>::deserialize(d)? {
        None => Ok(None),
        Some(S::N(n)) => Ok(Some(n)),
        Some(S::T(t)) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

fn de_sizes_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u64>>, D::Error> {
    match Option::<Vec<String>>::deserialize(d)? {
        None => Ok(None),
        Some(v) => v.iter().map(|t| parse_size(t)).collect::<Result<Vec<_>, _>>().map(Some).map_err(serde::de::Error::custom),
    }
}

/// Normalises a certificate serial for comparison.
pub fn normalize_serial(s: &str) -> String {
    let hex: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect::<String>().to_ascii_lowercase();
    let t = hex.trim_start_matches('0');
    if t.is_empty() {
        "0".into()
    } else {
        t.into()
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading configuration {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid configuration {}: {e}", path.display()))
}

fn seconds(key: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("invalid configuration: `{key}` must be a positive number of seconds, not {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

fn policy_of(file: &FileConfig, cli: &Cli, devices: usize) -> Result<PoolPolicy> {
    let tenants = file.tenants.clone();
    if let Some(t) = &tenants {
        for (name, tc) in t {
            cuwire_certs::validate_tenant_name(name).map_err(|e| anyhow::anyhow!("invalid configuration: `tenants.{name}`: {e}"))?;
            if let Some(gpus) = &tc.gpus {
                if let Some(bad) = gpus.iter().find(|g| **g >= devices) {
                    bail!("invalid configuration: `tenants.{name}.gpus` names GPU {bad}, but the pool has {devices}");
                }
                if gpus.is_empty() {
                    bail!("invalid configuration: `tenants.{name}.gpus` is empty");
                }
            }
            if let Some(share) = tc.share {
                if !(share.is_finite() && share > 0.0) {
                    bail!("invalid configuration: `tenants.{name}.share` must be positive");
                }
            }
            if tc.devices_per_session == Some(0) {
                bail!("invalid configuration: `tenants.{name}.devices-per-session` must be at least 1");
            }
            if let (Some(per), Some(n)) = (tc.devices_per_session, tc.gpus.as_ref().map(Vec::len)) {
                if per > n {
                    bail!("invalid configuration: `tenants.{name}.devices-per-session` ({per}) exceeds its {n} allowed GPUs");
                }
            }
        }
    }
    for s in &file.pool.revoked {
        if !s.chars().all(|c| c.is_ascii_hexdigit() || c == ':') || s.is_empty() {
            bail!("invalid configuration: `pool.revoked` entry {s:?} is not a hex serial number");
        }
    }
    Ok(PoolPolicy {
        placement: cli.placement.or(file.pool.placement).unwrap_or_default(),
        admission: cli.admission.or(file.pool.admission).unwrap_or_default(),
        admission_timeout: seconds("pool.admission-timeout", cli.admission_timeout.or(file.pool.admission_timeout).unwrap_or(10.0))?,
        tenants,
        revoked: file.pool.revoked.iter().map(|s| normalize_serial(s)).collect(),
    })
}

impl Config {
    /// Merges flags over the file (if any) over the defaults, and validates.
    pub fn resolve(cli: Cli) -> Result<Config> {
        let file = match &cli.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let backend = cli.backend.or(file.backend).unwrap_or(BackendKind::Emu);
        let emu_gpus = cli.emu_gpus.or(file.emu.gpus).unwrap_or(1);
        if emu_gpus == 0 || emu_gpus > 64 {
            bail!("invalid configuration: `emu.gpus` must be between 1 and 64, not {emu_gpus}");
        }
        let emu_memory = cli.emu_memory.or(file.emu.memory).unwrap_or(4 << 30);
        let emu_memories = match (&cli.emu_gpus, &cli.emu_memory, &file.emu.memories) {
            (None, None, Some(m)) if !m.is_empty() => m.clone(),
            (_, _, Some(m)) if m.is_empty() => bail!("invalid configuration: `emu.memories` is empty"),
            _ => vec![emu_memory; emu_gpus],
        };
        let emu_cc = match (&cli.emu_cc, &file.emu.cc) {
            (Some(cc), _) => *cc,
            (None, Some(s)) => parse_cc(s).map_err(|e| anyhow::anyhow!("invalid configuration: `emu.cc`: {e}"))?,
            _ => (8, 0),
        };
        let devices = match backend {
            BackendKind::Emu => emu_memories.len(),
            BackendKind::Cuda => file.cuda.devices.as_ref().map(Vec::len).unwrap_or(usize::MAX),
        };
        let policy = policy_of(&file, &cli, devices)?;
        let certs = cli.certs.clone().or(file.certs.clone());
        let dev = cli.dev.clone().or(file.dev.clone());
        if certs.is_some() && dev.is_some() {
            bail!("invalid configuration: `certs` and `dev` exclude each other");
        }
        Ok(Config {
            file: cli.config.clone(),
            listen: cli.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:4500".parse().unwrap()),
            backend,
            emu_memories,
            emu_cc,
            emu_watchdog: seconds("emu.watchdog", cli.emu_watchdog.or(file.emu.watchdog).unwrap_or(10.0))?,
            emu_threads: cli.emu_threads.or(file.emu.threads).unwrap_or(0),
            cuda_lib: cli.cuda_lib.clone().or(file.cuda.lib.clone()).unwrap_or_else(|| "libcuda.so.1".into()),
            cuda_devices: file.cuda.devices.clone(),
            certs,
            dev,
            idle_timeout: seconds("idle-timeout", cli.idle_timeout.or(file.idle_timeout).unwrap_or(10.0))?,
            max_connections: cli.max_connections.or(file.max_connections).unwrap_or(1024).max(1),
            max_pending_handshakes: cli.max_pending_handshakes.or(file.max_pending_handshakes).unwrap_or(64).max(1),
            handshake_timeout: seconds("handshake-timeout", cli.handshake_timeout.or(file.handshake_timeout).unwrap_or(10.0))?,
            metrics: cli.metrics.or(file.metrics),
            endpoints: cli.endpoints.or(file.endpoints).unwrap_or(1).clamp(1, 256),
            policy,
        })
    }

    /// Re-reads the reloadable part (tenants, quotas, placement, admission, revocations).
    pub fn reload_policy(&self, cli: &Cli, devices: usize) -> Result<PoolPolicy> {
        let file = match &self.file {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        policy_of(&file, cli, devices)
    }
}

/// Parses `512MiB`, `4GiB`, `1G`, `100M`, `65536`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 512MiB, 4GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    let v = n * mult as f64;
    if !(1.0..=(1u64 << 50) as f64).contains(&v) {
        return Err(format!("size {s:?} is out of range"));
    }
    Ok(v as u64)
}

fn parse_cc(s: &str) -> Result<(i32, i32), String> {
    let (a, b) = s.split_once('.').ok_or_else(|| format!("{s:?} is not MAJOR.MINOR"))?;
    Ok((a.parse().map_err(|_| format!("bad major in {s:?}"))?, b.parse().map_err(|_| format!("bad minor in {s:?}"))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        Config::resolve(Cli { config: Some(p), ..Default::default() })
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn file_sets_everything_and_flags_win() {
        let c = with_file(
            r#"
            listen = "127.0.0.1:7000"
            idle-timeout = 3
            [emu]
            memories = ["1GiB", "2GiB"]
            [pool]
            placement = "spread"
            revoked = ["0A:1B"]
            [tenants.alice]
            memory-per-gpu = "512MiB"
            share = 2
            gpus = [1]
            "#,
        );
        // deny_unknown_fields uses the file's spelling: kebab-case keys inside tenants too.
        let c = match c {
            Ok(c) => c,
            Err(e) => panic!("{e:#}"),
        };
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.emu_memories, vec![1 << 30, 2 << 30]);
        assert_eq!(c.policy.placement, Placement::Spread);
        assert_eq!(c.policy.revoked, vec!["a1b".to_string()]);
        assert_eq!(c.policy.tenants.as_ref().unwrap()["alice"].memory_per_gpu, Some(512 << 20));
        assert_eq!(c.idle_timeout, Duration::from_secs(3));
    }

    #[test]
    fn endpoints_come_from_the_file_or_the_flag_and_exclude_io_threads() {
        assert_eq!(with_file("").unwrap().endpoints, 1);
        assert_eq!(with_file("endpoints = 3\n").unwrap().endpoints, 3);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "endpoints = 3\n").unwrap();
        let c = Config::resolve(Cli { config: Some(p), endpoints: Some(2), ..Default::default() }).unwrap();
        assert_eq!(c.endpoints, 2);
        // 0 is taken as 1: the listener always has one endpoint.
        assert_eq!(with_file("endpoints = 0\n").unwrap().endpoints, 1);
        use clap::Parser;
        assert!(Cli::try_parse_from(["cuwired", "--endpoints", "2", "--io-threads", "2"]).is_err());
        assert_eq!(Cli::try_parse_from(["cuwired", "--endpoints", "2"]).unwrap().endpoints, Some(2));
    }

    #[test]
    fn invalid_configuration_names_the_key() {
        let e = with_file("[tenants.bob]\ngpus = [5]\n").unwrap_err().to_string();
        assert!(e.contains("tenants.bob.gpus"), "{e}");
        let e = with_file("[emu]\nmemory = \"lots\"\n").unwrap_err().to_string();
        assert!(e.contains("memory"), "{e}");
        let e = with_file("bogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = with_file("idle-timeout = -1\n").unwrap_err().to_string();
        assert!(e.contains("idle-timeout"), "{e}");
    }
}
