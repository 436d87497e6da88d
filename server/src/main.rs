//! cuwired: parses the command line, sets up logging, runs until SIGINT or SIGTERM.

use clap::Parser;
use cuwire_server::config::{Cli, Config};

/// jemalloc, with its background thread purging freed pages after its decay time (10 s): with
/// glibc's malloc the server's RSS stayed 100-350 MiB above its baseline after a load run (the
/// emulator's 64 KiB device pages and copy payloads, freed from many session threads, stayed in
/// per-thread arenas), and mimalloc peaked higher still; jemalloc came back to within 20 MiB of
/// the baseline, round after round (`e2e/tests/load.rs` checks it).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CUWIRE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    #[cfg(feature = "jemalloc")]
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!("jemalloc background purging unavailable: {e}");
    }
    let cli = Cli::parse();
    let cfg = match Config::resolve(cli.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cuwired: {e:#}");
            std::process::exit(2);
        }
    };
    let rt = match cli.io_threads {
        // With several endpoints this thread runs the first (the listener starts one thread for
        // each of the others), the metrics server and the signal handlers.
        _ if cfg.endpoints > 1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n.max(1)).enable_all().build()?,
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
    };
    rt.block_on(async {
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        cuwire_server::run(cfg, cli, shutdown).await
    })
}
