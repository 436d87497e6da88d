//! The certificates are checked with the verifiers `cuwired` and the shim use:
//! rustls 0.23's `WebPkiClientVerifier` (server side, client auth required) and
//! the default webpki server verifier (client side), plus a full in-memory
//! mutual-TLS handshake.

#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn roots(dir: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(cert(&cuwire_certs::ca_pem(dir))).unwrap();
    Arc::new(roots)
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn client_cert_accepted(ca_dir: &Path, cert_dir: &Path, tenant: &str) -> bool {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_dir), provider()).build().unwrap();
    verifier.verify_client_cert(&cert(&cuwire_certs::tenant_pem(cert_dir, tenant)), &[], UnixTime::now()).is_ok()
}

fn server_cert_accepted(ca_dir: &Path, cert_dir: &Path, name: &str) -> bool {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca_dir), provider()).build().unwrap();
    verifier
        .verify_server_cert(
            &cert(&cuwire_certs::server_pem(cert_dir)),
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
}

/// Runs a TLS 1.3 handshake in memory: the server trusts `server_dir`'s CA for
/// client certificates, the client trusts `client_ca_dir`'s CA and presents
/// tenant `tenant` of `client_dir` (or nothing). Returns the error text, if any.
fn handshake(server_dir: &Path, client_ca_dir: &Path, client: Option<(&Path, &str)>, server_name: &str) -> Result<(), String> {
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots(server_dir), provider()).build().unwrap();
    let server_config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(vec![cert(&cuwire_certs::server_pem(server_dir))], key(&cuwire_certs::server_key(server_dir)))
        .map_err(|e| format!("server config: {e}"))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(client_ca_dir));
    let client_config = match client {
        Some((dir, tenant)) => builder
            .with_client_auth_cert(vec![cert(&cuwire_certs::tenant_pem(dir, tenant))], key(&cuwire_certs::tenant_key(dir, tenant)))
            .map_err(|e| format!("client config: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    let mut c = ClientConnection::new(Arc::new(client_config), ServerName::try_from(server_name.to_string()).unwrap()).unwrap();
    let mut s = ServerConnection::new(Arc::new(server_config)).unwrap();
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets().map_err(|e| format!("server: {e}"))?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets().map_err(|e| format!("client: {e}"))?;
        }
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() {
            let peer = s.peer_certificates().ok_or("server saw no client certificate")?;
            if peer.is_empty() {
                return Err("server saw an empty client certificate chain".into());
            }
            return Ok(());
        }
    }
    Err("handshake did not finish".into())
}

#[test]
fn init_writes_the_contracted_files_with_private_keys_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    cuwire_certs::init(&dir, &names(&["gpu.example.org", "10.1.2.3"])).unwrap();
    for f in ["ca.pem", "ca.key", "server.pem", "server.key"] {
        let text = fs::read_to_string(dir.join(f)).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{f} is not PEM");
    }
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    assert_eq!(mode(&dir.join("server.key")), 0o600);
    assert_eq!(cuwire_certs::ca_pem(&dir), dir.join("ca.pem"));
    assert_eq!(cuwire_certs::Paths::server_key(&dir), dir.join("server.key"));

    cuwire_certs::tenant(&dir, "alice").unwrap();
    assert_eq!(cuwire_certs::tenant_pem(&dir, "alice"), dir.join("tenants/alice.pem"));
    assert_eq!(cuwire_certs::tenant_key(&dir, "alice"), dir.join("tenants/alice.key"));
    assert!(dir.join("tenants/alice.pem").is_file());
    assert_eq!(mode(&dir.join("tenants/alice.key")), 0o600);
    // No temporary files left behind.
    for entry in fs::read_dir(&dir).unwrap().chain(fs::read_dir(dir.join("tenants")).unwrap()) {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "left over {name}");
    }
}

#[test]
fn init_refuses_to_overwrite_a_ca_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    cuwire_certs::init(dir, &names(&["localhost"])).unwrap();
    let before = fs::read(dir.join("ca.pem")).unwrap();
    let err = cuwire_certs::init(dir, &names(&["localhost"])).unwrap_err();
    assert!(format!("{err:#}").contains("--force"), "{err:#}");
    assert_eq!(fs::read(dir.join("ca.pem")).unwrap(), before);
    cuwire_certs::init_force(dir, &names(&["localhost"])).unwrap();
    assert_ne!(fs::read(dir.join("ca.pem")).unwrap(), before);
}

#[test]
fn tenant_names_are_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    cuwire_certs::init(dir, &names(&["localhost"])).unwrap();
    for bad in ["", "../x", "a/b", "a b", ".hidden", "é", "x;y", &"a".repeat(65)] {
        assert!(cuwire_certs::tenant(dir, bad).is_err(), "{bad:?} accepted");
    }
    for good in ["a", "team-1", "ml_research", "org.team.A9"] {
        cuwire_certs::tenant(dir, good).unwrap();
        assert!(client_cert_accepted(dir, dir, good), "{good}");
    }
}

#[test]
fn tenant_needs_an_existing_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let err = cuwire_certs::tenant(tmp.path(), "alice").unwrap_err();
    assert!(format!("{err:#}").contains("ca.pem"), "{err:#}");
}

#[test]
fn certificates_verify_against_their_ca_only() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    cuwire_certs::init(&a, &names(&["localhost", "127.0.0.1", "::1", "gpu.example.org"])).unwrap();
    cuwire_certs::init(&b, &names(&["localhost"])).unwrap();
    // The tenant is signed later, by the CA reloaded from ca.pem/ca.key.
    cuwire_certs::tenant(&a, "alice").unwrap();
    cuwire_certs::tenant(&b, "mallory").unwrap();

    assert!(client_cert_accepted(&a, &a, "alice"));
    assert!(!client_cert_accepted(&a, &b, "mallory"));
    assert!(!client_cert_accepted(&b, &a, "alice"));

    for name in ["localhost", "127.0.0.1", "::1", "gpu.example.org"] {
        assert!(server_cert_accepted(&a, &a, name), "{name}");
    }
    assert!(!server_cert_accepted(&a, &a, "other.example.org"));
    assert!(!server_cert_accepted(&a, &a, "10.0.0.1"));
    assert!(!server_cert_accepted(&b, &a, "localhost"));
    // The EKUs keep the roles apart: a server certificate is no client certificate.
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&a), provider()).build().unwrap();
    assert!(verifier.verify_client_cert(&cert(&cuwire_certs::server_pem(&a)), &[], UnixTime::now()).is_err());
}

#[test]
fn mutual_tls_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    cuwire_certs::ensure_dev(&a).unwrap();
    cuwire_certs::ensure_dev(&b).unwrap();

    handshake(&a, &a, Some((&a, "dev")), "localhost").unwrap();
    handshake(&a, &a, Some((&a, "dev")), "127.0.0.1").unwrap();
    let err = handshake(&a, &a, Some((&b, "dev")), "localhost").unwrap_err();
    assert!(err.starts_with("server"), "{err}");
    // Each pool's CA has its own name, so another pool's tenant is refused as
    // coming from an unknown CA rather than as a bad signature.
    assert!(err.contains("UnknownIssuer"), "{err}");
    let err = handshake(&a, &a, None, "localhost").unwrap_err();
    assert!(err.starts_with("server"), "{err}");
    let err = handshake(&a, &b, Some((&a, "dev")), "localhost").unwrap_err();
    assert!(err.starts_with("client"), "{err}");
}

#[test]
fn ensure_dev_creates_only_what_is_absent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    cuwire_certs::ensure_dev(&dir).unwrap();
    let files = ["ca.pem", "ca.key", "server.pem", "server.key", "tenants/dev.pem", "tenants/dev.key"];
    let before: Vec<Vec<u8>> = files.iter().map(|f| fs::read(dir.join(f)).unwrap()).collect();
    cuwire_certs::ensure_dev(&dir).unwrap();
    let after: Vec<Vec<u8>> = files.iter().map(|f| fs::read(dir.join(f)).unwrap()).collect();
    assert_eq!(before, after);

    fs::remove_file(dir.join("tenants/dev.key")).unwrap();
    fs::remove_file(dir.join("server.pem")).unwrap();
    cuwire_certs::ensure_dev(&dir).unwrap();
    assert_eq!(fs::read(dir.join("ca.pem")).unwrap(), before[0]);
    assert_ne!(fs::read(dir.join("tenants/dev.pem")).unwrap(), before[4]);
    handshake(&dir, &dir, Some((&dir, "dev")), "::1").unwrap();
}

#[test]
fn command_line() {
    let exe = env!("CARGO_BIN_EXE_cuwire-certs");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let run = |args: &[&str]| Command::new(exe).args(args).output().unwrap();

    let out = run(&["init", dir.to_str().unwrap(), "--name", "localhost", "--name", "127.0.0.1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["init", dir.to_str().unwrap(), "--name", "localhost"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let out = run(&["init", dir.to_str().unwrap(), "--name", "localhost", "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let out = run(&["tenant", dir.to_str().unwrap(), "bob"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&dir.join("tenants/bob.key")), 0o600);
    let out = run(&["tenant", dir.to_str().unwrap(), "../evil"]);
    assert!(!out.status.success());
    assert!(!tmp.path().join("evil.pem").exists());

    handshake(&dir, &dir, Some((&dir, "bob")), "localhost").unwrap();
}
