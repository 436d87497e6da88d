//! cuwired, the cuwire pool daemon: a QUIC endpoint with mutual TLS ([`listener`]), one
//! [`session`] per client connection with its own handle tables and checks, and the GPUs behind
//! a [`backend`] boundary (emulated or the real driver).

pub mod backend;
pub mod config;
pub mod dev;
pub mod fatbin;
pub mod listener;
pub mod pool;
mod replies;
pub mod session;
pub mod status;

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::backend::emu::{EmuBackend, EmuConfig};
use crate::backend::Backend;
use crate::config::{BackendKind, Cli, Config};
use crate::listener::{Listener, ListenerConfig};
use crate::pool::Pool;

/// Builds the configured backend.
pub fn make_backend(cfg: &Config) -> Result<Arc<dyn Backend>> {
    Ok(match cfg.backend {
        BackendKind::Emu => Arc::new(EmuBackend::new(EmuConfig {
            memories: cfg.emu_memories.clone(),
            compute_capability: cfg.emu_cc,
            worker_threads: cfg.emu_threads,
            watchdog: cfg.emu_watchdog,
        })),
        BackendKind::Cuda => Arc::from(backend::cuda::load(&cfg.cuda_lib)?),
    })
}

/// Runs the daemon until `shutdown` resolves. `cli` is kept for SIGHUP reloads.
pub async fn run(cfg: Config, cli: Cli, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
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
    let pool = Pool::new(backend.clone(), cfg.policy.clone());
    let listener = Listener::bind(
        ListenerConfig {
            listen: cfg.listen,
            idle_timeout: cfg.idle_timeout,
            handshake_timeout: cfg.handshake_timeout,
            max_connections: cfg.max_connections,
            max_pending_handshakes: cfg.max_pending_handshakes,
            endpoints: cfg.endpoints,
        },
        &certs,
        pool.clone(),
    )?;
    if let Some(addr) = cfg.metrics {
        let bound = status::serve(addr, pool.clone()).await?;
        tracing::info!(%bound, "metrics on http://{bound}/metrics, status on http://{bound}/status");
    }
    // SIGHUP reloads tenants, quotas and policies; sessions stay.
    {
        let (pool, cfg, cli) = (pool.clone(), cfg.clone(), cli.clone());
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match cfg.reload_policy(&cli, pool.backend().device_count()) {
                    Ok(p) => {
                        tracing::info!(tenants = p.tenants.as_ref().map(|t| t.len()), "configuration reloaded");
                        pool.set_policy(p);
                    }
                    Err(e) => tracing::error!("configuration not reloaded: {e:#}"),
                }
            }
        });
    }
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = backend.kind(), devices = backend.device_count(), endpoints = listener.endpoints(), certs = %certs.display(), "cuwired listening");
    if cfg.dev.is_some() {
        let env = dev::write_env(&certs, addr)?;
        tracing::info!(env = %env.display(), "development settings written; `source` it to point clients here");
    }
    listener.serve(shutdown).await;
    Ok(())
}
