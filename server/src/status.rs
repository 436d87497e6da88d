//! The operator's HTTP endpoint: `/metrics` (Prometheus text, from the `metrics` crate's
//! recorder) and `/status` (JSON: tenants, sessions, placements, memory). A deliberately small
//! HTTP/1.1 responder: two GET routes, one request per connection, bounded request size.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pool::Pool;

fn recorder() -> Result<PrometheusHandle> {
    use std::sync::OnceLock;
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let h = PrometheusBuilder::new()
        .set_buckets(&[1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0])?
        .install_recorder()?;
    Ok(HANDLE.get_or_init(|| h).clone())
}

/// Binds ADDR and serves until the process ends; returns the bound address.
pub async fn serve(addr: SocketAddr, pool: Arc<Pool>) -> Result<SocketAddr> {
    let handle = recorder()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    // Histogram samples wait in the recorder until they are folded into their buckets; without
    // this they would pile up between scrapes, or forever on a server nobody scrapes.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { continue };
            let (handle, pool) = (handle.clone(), pool.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while n < buf.len() {
                        let k = sock.read(&mut buf[n..]).await?;
                        if k == 0 {
                            break;
                        }
                        n += k;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    std::io::Result::Ok(())
                })
                .await;
                if !matches!(read, Ok(Ok(()))) {
                    return;
                }
                let line = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_owned();
                let path = line.split_whitespace().nth(1).unwrap_or("");
                let (status, kind, body) = match path {
                    "/metrics" => {
                        pool.publish();
                        ("200 OK", "text/plain; version=0.0.4", handle.render())
                    }
                    "/status" => ("200 OK", "application/json", serde_json::to_string_pretty(&pool.status()).unwrap_or_default()),
                    _ => ("404 Not Found", "text/plain", "try /metrics or /status\n".to_string()),
                };
                let head =
                    format!("HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(bound)
}
