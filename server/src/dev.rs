//! `--dev DIR`: the settings file a client sources to reach this server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;

/// Writes `DIR/env` with plain `export KEY=VALUE` lines and absolute paths. Written to a
/// temporary file and renamed, so a reader never sees half of it.
pub fn write_env(certs: &Path, addr: SocketAddr) -> Result<PathBuf> {
    let host = if addr.ip().is_unspecified() {
        if addr.is_ipv4() {
            "127.0.0.1".to_string()
        } else {
            "[::1]".to_string()
        }
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let text = format!(
        "export CUWIRE_SERVER={host}:{port}\nexport CUWIRE_CA={ca}\nexport CUWIRE_CERT={cert}\nexport CUWIRE_KEY={key}\n",
        port = addr.port(),
        ca = cuwire_certs::ca_pem(certs).display(),
        cert = cuwire_certs::tenant_pem(certs, "dev").display(),
        key = cuwire_certs::tenant_key(certs, "dev").display(),
    );
    let path = certs.join("env");
    let tmp = certs.join(".env.tmp");
    std::fs::File::create(&tmp)?.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}
