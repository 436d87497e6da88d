//! Connection settings, from the environment.

use std::path::PathBuf;
use std::time::Duration;

/// What the shim needs to reach its pool.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CUWIRE_SERVER`: host:port.
    pub server: String,
    /// `CUWIRE_SERVER_NAME`: the name to check the server certificate against (default: the host
    /// part of `CUWIRE_SERVER`).
    pub server_name: String,
    /// `CUWIRE_CA`: the pool CA (PEM) the server certificate must chain to.
    pub ca: PathBuf,
    /// `CUWIRE_CERT` / `CUWIRE_KEY`: this tenant's client certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `CUWIRE_CONNECT_TIMEOUT` (seconds, default 10).
    pub connect_timeout: Duration,
    /// `CUWIRE_IDLE_TIMEOUT` (seconds, default 10): a silent server is given up after this long;
    /// keep-alives go out at a third of it.
    pub idle_timeout: Duration,
}

fn var(name: &str) -> Result<String, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
        _ => Err(format!("{name} is not set (see `cuwired --dev DIR`, which writes DIR/env with the settings)")),
    }
}

fn seconds(name: &str, default: f64) -> Result<Duration, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("{name}={v:?} is not a positive number of seconds")),
        Err(_) => Ok(Duration::from_secs_f64(default)),
    }
}

impl Config {
    pub fn from_env() -> Result<Config, String> {
        let server = var("CUWIRE_SERVER")?;
        let host = match server.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            None => return Err(format!("CUWIRE_SERVER={server:?} is not host:port")),
        };
        Ok(Config {
            server_name: std::env::var("CUWIRE_SERVER_NAME").unwrap_or(host),
            server,
            ca: var("CUWIRE_CA")?.into(),
            cert: var("CUWIRE_CERT")?.into(),
            key: var("CUWIRE_KEY")?.into(),
            connect_timeout: seconds("CUWIRE_CONNECT_TIMEOUT", 10.0)?,
            idle_timeout: seconds("CUWIRE_IDLE_TIMEOUT", 10.0)?,
        })
    }
}
