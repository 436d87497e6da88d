//! Command-line configuration of cuwired.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Emulated GPUs that run PTX on the CPU (no GPU needed).
    Emu,
    /// The real CUDA driver.
    Cuda,
}

/// cuwired: serves the CUDA driver API of a GPU pool over QUIC with mutual TLS.
#[derive(Debug, Clone, Parser)]
#[command(name = "cuwired", version, about)]
pub struct Config {
    /// Address to listen on (UDP). Port 0 picks a free port; the bound address is logged and
    /// written to DIR/env in --dev mode.
    #[arg(long, default_value = "127.0.0.1:4500")]
    pub listen: SocketAddr,
    /// Which GPUs to serve.
    #[arg(long, value_enum, default_value = "emu")]
    pub backend: BackendKind,
    /// Number of emulated GPUs (emu backend).
    #[arg(long, default_value_t = 1)]
    pub emu_gpus: usize,
    /// Memory of each emulated GPU, e.g. 512MiB or 4GiB; host memory is only used as touched.
    #[arg(long, default_value = "4GiB", value_parser = parse_size)]
    pub emu_memory: u64,
    /// Compute capability the emulated GPUs report, e.g. 8.0.
    #[arg(long, default_value = "8.0", value_parser = parse_cc)]
    pub emu_cc: (i32, i32),
    /// A kernel running longer than this on the emulated GPU fails with CUDA_ERROR_LAUNCH_TIMEOUT.
    #[arg(long, default_value_t = 10.0)]
    pub emu_watchdog: f64,
    /// Worker threads per emulated launch (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub emu_threads: usize,
    /// The CUDA driver library (cuda backend).
    #[arg(long, default_value = "libcuda.so.1")]
    pub cuda_lib: String,
    /// Directory holding ca.pem, server.pem and server.key (see cuwire-certs).
    #[arg(long, conflicts_with = "dev")]
    pub certs: Option<PathBuf>,
    /// Development mode: creates a CA, a server and a `dev` tenant certificate in DIR if absent,
    /// and writes DIR/env with the settings a client needs once listening.
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// Seconds of silence after which a client is considered gone (QUIC idle timeout).
    #[arg(long, default_value_t = 10.0)]
    pub idle_timeout: f64,
    /// Most client connections served at once; more are refused.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a new connection has to complete the cuwire handshake.
    #[arg(long, default_value_t = 10.0)]
    pub handshake_timeout: f64,
}

impl Config {
    pub fn certs_dir(&self) -> Option<&PathBuf> {
        self.dev.as_ref().or(self.certs.as_ref())
    }
    pub fn idle(&self) -> Duration {
        Duration::from_secs_f64(self.idle_timeout.max(0.5))
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
    Ok((a.parse().map_err(|_| "bad major")?, b.parse().map_err(|_| "bad minor")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
    }
}
