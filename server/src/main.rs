//! cuwired: parses the command line, sets up logging, runs until SIGINT or SIGTERM.

use clap::Parser;
use cuwire_server::config::{Cli, Config};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CUWIRE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cfg = match Config::resolve(cli.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cuwired: {e:#}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
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
