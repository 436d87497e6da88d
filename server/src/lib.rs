//! cuwired, the cuwire pool daemon: a QUIC endpoint with mutual TLS ([`listener`]), one
//! [`session`] per client connection with its own handle tables and checks, and the GPUs behind
//! a [`backend`] boundary (emulated or the real driver).

pub mod backend;
pub mod config;
pub mod dev;
pub mod listener;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::backend::emu::{EmuBackend, EmuConfig};
use crate::backend::Backend;
use crate::config::{BackendKind, Config};
use crate::listener::{Listener, ListenerConfig};

/// Builds the configured backend.
pub fn make_backend(cfg: &Config) -> Result<Arc<dyn Backend>> {
    Ok(match cfg.backend {
        BackendKind::Emu => Arc::new(EmuBackend::new(EmuConfig {
            devices: cfg.emu_gpus.max(1),
            memory: cfg.emu_memory,
            compute_capability: cfg.emu_cc,
            worker_threads: cfg.emu_threads,
            watchdog: Duration::from_secs_f64(cfg.emu_watchdog.max(0.01)),
        })),
        BackendKind::Cuda => Arc::from(backend::cuda::load(&cfg.cuda_lib)?),
    })
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let certs = match (&cfg.dev, &cfg.certs) {
        (Some(dir), _) => {
            cuwire_certs::ensure_dev(dir).with_context(|| format!("creating development certificates in {}", dir.display()))?;
            dir.clone()
        }
        (None, Some(dir)) => dir.clone(),
        (None, None) => anyhow::bail!("no certificates: pass --certs DIR (see cuwire-certs) or --dev DIR"),
    };
    let certs = std::fs::canonicalize(&certs).with_context(|| format!("certificate directory {}", certs.display()))?;
    let backend = make_backend(&cfg)?;
    let listener = Listener::bind(
        ListenerConfig {
            listen: cfg.listen,
            idle_timeout: cfg.idle(),
            handshake_timeout: Duration::from_secs_f64(cfg.handshake_timeout.max(0.1)),
            max_connections: cfg.max_connections.max(1),
        },
        &certs,
        backend.clone(),
    )?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = backend.kind(), devices = backend.device_count(), certs = %certs.display(), "cuwired listening");
    if cfg.dev.is_some() {
        let env = dev::write_env(&certs, addr)?;
        tracing::info!(env = %env.display(), "development settings written; `source` it to point clients here");
    }
    listener.serve(shutdown).await;
    Ok(())
}
