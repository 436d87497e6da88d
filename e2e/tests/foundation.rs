//! Foundation end-to-end tests: a real `cuwired` (emulated GPU) and real client
//! programs reaching it through the shim, plus the ways a connection must fail.
//! Each test starts its own server, so they are independent of each other.

#![forbid(unsafe_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cuwire_e2e::{
    c_clients_available, python_clients_available, run_client, run_client_timeout, shim_dir, vecadd_ptx, Client, ClientOutput, Server,
};

fn c_client(launch: bool) -> Command {
    let mut cmd = Command::new(Client::c("driver_api.c"));
    cmd.arg(vecadd_ptx());
    if launch {
        cmd.arg("--launch");
    }
    cmd
}

fn python_client(launch: bool) -> Command {
    let mut cmd = Client::python("driver_api.py");
    cmd.arg(vecadd_ptx());
    if launch {
        cmd.arg("--launch");
    }
    cmd
}

fn assert_all_passed(what: &str, out: &ClientOutput, server: &Server) {
    assert!(out.all_passed(), "{what} did not pass\n{out}\n--- server log ---\n{}", server.log());
    assert!(server.is_running(), "the server died\n{}", server.log());
}

fn assert_failed(what: &str, out: &ClientOutput, server: &Server) {
    assert!(
        !out.success() && !out.stdout.contains("ALL PASSED"),
        "{what}: the client should have failed\n{out}\n--- server log ---\n{}",
        server.log()
    );
    assert!(!out.stdout.contains("ok   cuInit"), "{what}: cuInit should have failed\n{out}");
    assert!(out.stderr.contains("cuInit"), "{what}: the client's failure should be cuInit's\n{out}");
}

/// Lines of the client's stderr that are not the client's own FAIL report.
fn shim_lines(out: &ClientOutput) -> Vec<&str> {
    out.stderr.lines().filter(|l| !l.starts_with("FAIL ") && !l.trim().is_empty()).collect()
}

#[test]
fn c_client_against_emu() {
    if !c_clients_available() {
        return;
    }
    let server = Server::start(&[]);
    let out = run_client(c_client(false), server.env(), &[]);
    assert_all_passed("driver_api.c", &out, &server);
}

#[test]
fn c_client_launch_against_emu() {
    if !c_clients_available() {
        return;
    }
    let server = Server::start(&[]);
    let out = run_client(c_client(true), server.env(), &[]);
    assert_all_passed("driver_api.c --launch", &out, &server);
}

#[test]
fn python_client_against_emu() {
    if !python_clients_available() {
        return;
    }
    let server = Server::start(&[]);
    let out = run_client(python_client(false), server.env(), &[]);
    assert_all_passed("driver_api.py", &out, &server);
}

#[test]
fn python_client_launch_against_emu() {
    if !python_clients_available() {
        return;
    }
    let server = Server::start(&[]);
    let out = run_client(python_client(true), server.env(), &[]);
    assert_all_passed("driver_api.py --launch", &out, &server);
}

#[test]
fn c_client_with_preload() {
    if !c_clients_available() {
        return;
    }
    let server = Server::start(&[]);
    let preload = shim_dir().join("libcuda.so.1");
    let out = run_client(
        c_client(false),
        server.env(),
        &[("LD_LIBRARY_PATH", None), ("LD_PRELOAD", Some(preload.to_str().expect("utf-8 path")))],
    );
    assert_all_passed("driver_api.c with LD_PRELOAD", &out, &server);
}

#[test]
fn missing_settings() {
    if !c_clients_available() {
        return;
    }
    let server = Server::start(&[]);
    let out = run_client_timeout(c_client(false), server.env(), &[("CUWIRE_SERVER", None)], Duration::from_secs(30));
    assert_failed("without CUWIRE_SERVER", &out, &server);
    assert!(out.elapsed < Duration::from_secs(15), "cuInit took {:?} to fail\n{out}", out.elapsed);
    let mentions = shim_lines(&out).into_iter().filter(|l| l.contains("CUWIRE_SERVER")).count();
    assert!(mentions >= 1, "no stderr line mentions CUWIRE_SERVER\n{out}");
    assert!(shim_lines(&out).len() <= 5, "too much noise on stderr for one missing setting\n{out}");
}

/// A local UDP port nobody listens on (QUIC is UDP).
fn closed_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("local_addr").port()
}

#[test]
fn unreachable_server() {
    if !c_clients_available() {
        return;
    }
    let server = Server::start(&[]);
    let port = closed_port();
    let addr = format!("127.0.0.1:{port}");
    let out = run_client_timeout(
        c_client(false),
        server.env(),
        &[("CUWIRE_SERVER", Some(&addr)), ("CUWIRE_CONNECT_TIMEOUT", Some("2"))],
        Duration::from_secs(30),
    );
    assert_failed("against a closed port", &out, &server);
    assert!(out.elapsed < Duration::from_secs(6), "cuInit took {:?} to fail with CUWIRE_CONNECT_TIMEOUT=2\n{out}", out.elapsed);
    let clear = shim_lines(&out).iter().any(|l| {
        let l = l.to_lowercase();
        l.contains(&addr) || l.contains("connect") || l.contains("timed out") || l.contains("unreachable")
    });
    assert!(clear, "no stderr line names the address or says the connection failed\n{out}");
}

#[test]
fn wrong_ca() {
    if !c_clients_available() {
        return;
    }
    let server = Server::start(&[]);
    let other = tempfile::tempdir().expect("tempdir");
    let names: Vec<String> = ["localhost", "127.0.0.1", "::1"].iter().map(|s| s.to_string()).collect();
    cuwire_certs::init(other.path(), &names).expect("another CA");
    cuwire_certs::tenant(other.path(), "dev").expect("a tenant of the other CA");
    let cert = cuwire_certs::tenant_pem(other.path(), "dev");
    let key = cuwire_certs::tenant_key(other.path(), "dev");

    let out = run_client_timeout(
        c_client(false),
        server.env(),
        &[("CUWIRE_CERT", Some(cert.to_str().unwrap())), ("CUWIRE_KEY", Some(key.to_str().unwrap()))],
        Duration::from_secs(30),
    );
    assert_failed("with a certificate from another CA", &out, &server);
    assert!(
        shim_lines(&out).iter().any(|l| {
            let l = l.to_lowercase();
            l.contains("certificate") && (l.contains("refused") || l.contains("rejected"))
        }),
        "no stderr line says the certificate was refused\n{out}"
    );
    assert!(server.is_running(), "the server died\n{}", server.log());

    let out = run_client(c_client(false), server.env(), &[]);
    assert_all_passed("driver_api.c after a refused client", &out, &server);
}

/// What a raw QUIC client saw.
#[derive(Debug)]
enum Probe {
    /// Connected, and still open after the hold time.
    Open,
    /// Connected, then closed by the server's application (past TLS).
    AppClosed(String),
    /// Refused: the handshake failed or the connection was closed at the
    /// transport/TLS level (a TLS alert is a QUIC CRYPTO_ERROR close).
    Refused(String),
}

/// Connects with a raw quinn client that trusts the pool CA and presents
/// `client_cert` (or nothing), then watches the connection for `hold`.
fn quinn_probe(addr: SocketAddr, certs: &Path, client_cert: Option<(&Path, &Path)>, hold: Duration) -> Probe {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(cuwire_certs::ca_pem(certs)).expect("ca.pem")).expect("add CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots);
        let mut tls = match client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_file(cert).expect("client cert")],
                    PrivateKeyDer::from_pem_file(key).expect("client key"),
                )
                .expect("client auth"),
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![cuwire_protocol::handshake::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(Duration::from_secs(10).try_into().expect("idle timeout")));
        config.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client endpoint");
        let probe = async {
            let connecting = match endpoint.connect_with(config, addr, "localhost") {
                Ok(c) => c,
                Err(e) => return Probe::Refused(format!("connect: {e}")),
            };
            let conn = match tokio::time::timeout(Duration::from_secs(10), connecting).await {
                Err(_) => return Probe::Refused("handshake timed out".into()),
                Ok(Err(e)) => return Probe::Refused(format!("handshake: {e}")),
                Ok(Ok(conn)) => conn,
            };
            // With TLS 1.3 the server checks the client certificate after the
            // client has finished its side: a refusal shows up as a close.
            match tokio::time::timeout(hold, conn.closed()).await {
                Ok(quinn::ConnectionError::ApplicationClosed(c)) => Probe::AppClosed(c.to_string()),
                Ok(reason) => Probe::Refused(format!("closed by the server: {reason}")),
                Err(_) => {
                    conn.close(0u32.into(), b"probe done");
                    Probe::Open
                }
            }
        }
        .await;
        endpoint.wait_idle().await;
        probe
    })
}

#[test]
fn no_client_certificate() {
    let server = Server::start(&[]);
    let certs = server.certs_dir().to_path_buf();
    match quinn_probe(server.addr(), &certs, None, Duration::from_secs(5)) {
        Probe::Refused(why) => eprintln!("refused as expected: {why}"),
        other => panic!("a connection without a client certificate was not refused by TLS: {other:?}\n{}", server.log()),
    }
    assert!(server.is_running(), "the server died\n{}", server.log());

    // The same probe with the tenant certificate gets past TLS...
    let cert = cuwire_certs::tenant_pem(&certs, "dev");
    let key = cuwire_certs::tenant_key(&certs, "dev");
    let good = quinn_probe(server.addr(), &certs, Some((&cert, &key)), Duration::from_millis(1500));
    if let Probe::AppClosed(why) = &good {
        eprintln!("the server closed the silent probe after TLS: {why}");
    }
    assert!(!matches!(good, Probe::Refused(_)), "a good client was refused: {good:?}\n{}", server.log());

    // ...and a real client still gets served.
    if c_clients_available() {
        let out = run_client(c_client(false), server.env(), &[]);
        assert_all_passed("driver_api.c after a client without certificate", &out, &server);
    }
}
