//! Issues the certificates of a cuwire pool.
//!
//! A pool has one CA (`ca.pem`, `ca.key`), one server certificate signed by it
//! (`server.pem`, `server.key`) and one client certificate per tenant
//! (`tenants/NAME.pem`, `tenants/NAME.key`); the tenant's name is the subject CN
//! of its certificate, and that is how `cuwired` knows who is connecting.
//! Everything is PEM; private keys are written with mode 0600.

#![forbid(unsafe_code)]

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use time::{Duration, OffsetDateTime};

/// Subject CN of the pool CA, followed by an id taken from the CA's public
/// key, so that two pools' CAs never share a name (a certificate of another
/// pool is then refused as coming from an unknown CA, not as a bad signature).
pub const CA_COMMON_NAME: &str = "cuwire pool CA";
/// Subject CN of the server certificate.
pub const SERVER_COMMON_NAME: &str = "cuwired";
/// Names the development setup ([`ensure_dev`]) puts in the server certificate.
pub const DEV_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// The tenant the development setup ([`ensure_dev`]) creates.
pub const DEV_TENANT: &str = "dev";

const CA_VALIDITY_DAYS: i64 = 3650;
const LEAF_VALIDITY_DAYS: i64 = 730;
/// Tolerate clocks that are a little behind the issuing machine's.
const BACKDATE: Duration = Duration::hours(1);

/// Where the files of a certificate directory live.
///
/// Every helper takes the directory; the same functions are also exported at the
/// crate root (`cuwire_certs::ca_pem(dir)`).
#[derive(Debug, Clone, Copy)]
pub struct Paths;

impl Paths {
    pub fn ca_pem(dir: &Path) -> PathBuf {
        dir.join("ca.pem")
    }
    pub fn ca_key(dir: &Path) -> PathBuf {
        dir.join("ca.key")
    }
    pub fn server_pem(dir: &Path) -> PathBuf {
        dir.join("server.pem")
    }
    pub fn server_key(dir: &Path) -> PathBuf {
        dir.join("server.key")
    }
    pub fn tenants_dir(dir: &Path) -> PathBuf {
        dir.join("tenants")
    }
    pub fn tenant_pem(dir: &Path, name: &str) -> PathBuf {
        Self::tenants_dir(dir).join(format!("{name}.pem"))
    }
    pub fn tenant_key(dir: &Path, name: &str) -> PathBuf {
        Self::tenants_dir(dir).join(format!("{name}.key"))
    }
}

pub fn ca_pem(dir: &Path) -> PathBuf {
    Paths::ca_pem(dir)
}
pub fn ca_key(dir: &Path) -> PathBuf {
    Paths::ca_key(dir)
}
pub fn server_pem(dir: &Path) -> PathBuf {
    Paths::server_pem(dir)
}
pub fn server_key(dir: &Path) -> PathBuf {
    Paths::server_key(dir)
}
pub fn tenants_dir(dir: &Path) -> PathBuf {
    Paths::tenants_dir(dir)
}
pub fn tenant_pem(dir: &Path, name: &str) -> PathBuf {
    Paths::tenant_pem(dir, name)
}
pub fn tenant_key(dir: &Path, name: &str) -> PathBuf {
    Paths::tenant_key(dir, name)
}

/// Checks a tenant name: 1 to 64 characters among letters, digits, `-`, `_`, `.`,
/// not starting with `.` (so it is always a plain file name).
pub fn validate_tenant_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 {
        bail!("invalid tenant name {name:?}: must be 1 to 64 characters long");
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        bail!(
            "invalid tenant name {name:?}: character {c:?} not allowed \
             (use letters, digits, '-', '_', '.')"
        );
    }
    if name.starts_with('.') {
        bail!("invalid tenant name {name:?}: must not start with '.'");
    }
    Ok(())
}

/// Creates the pool CA and the server certificate in `dir` (created if needed).
///
/// `names` become the server certificate's subject alternative names: IP
/// addresses as IP SANs, everything else as DNS SANs. Refuses to replace an
/// existing CA: see [`init_force`].
pub fn init(dir: &Path, names: &[String]) -> Result<()> {
    init_with(dir, names, false)
}

/// Like [`init`], but replaces an existing CA (every certificate it signed
/// stops being accepted by a server that loads the new one).
pub fn init_force(dir: &Path, names: &[String]) -> Result<()> {
    init_with(dir, names, true)
}

fn init_with(dir: &Path, names: &[String], force: bool) -> Result<()> {
    if names.is_empty() {
        bail!("the server certificate needs at least one name (--name HOST_OR_IP)");
    }
    let ca_pem = Paths::ca_pem(dir);
    let ca_key = Paths::ca_key(dir);
    if !force && (ca_pem.exists() || ca_key.exists()) {
        bail!(
            "a CA already exists in {} (use --force to replace it; \
             certificates it signed would stop being accepted)",
            dir.display()
        );
    }
    // Check the names before writing anything.
    server_params(names)?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let key = KeyPair::generate().context("generating the CA key")?;
    let params = ca_params(&key);
    let cert = params.self_signed(&key).context("signing the CA certificate")?;
    write_private(&ca_key, &key.serialize_pem())?;
    write_public(&ca_pem, &cert.pem())?;

    let issuer = Issuer::new(params, key);
    issue_server(dir, names, &issuer)
}

/// Issues (or replaces) the server certificate with the given names, signed by
/// the existing CA in `dir`.
pub fn server(dir: &Path, names: &[String]) -> Result<()> {
    if names.is_empty() {
        bail!("the server certificate needs at least one name");
    }
    let issuer = load_issuer(dir)?;
    issue_server(dir, names, &issuer)
}

/// Issues (or replaces) the client certificate of tenant `name` (subject CN =
/// `name`), signed by the CA in `dir`: `dir/tenants/NAME.pem` and `.key`.
pub fn tenant(dir: &Path, name: &str) -> Result<()> {
    validate_tenant_name(name)?;
    let issuer = load_issuer(dir)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY_DAYS);

    let key = KeyPair::generate().context("generating the tenant key")?;
    let cert = params.signed_by(&key, &issuer).context("signing the tenant certificate")?;
    let tenants = Paths::tenants_dir(dir);
    fs::create_dir_all(&tenants).with_context(|| format!("creating {}", tenants.display()))?;
    write_private(&Paths::tenant_key(dir, name), &key.serialize_pem())?;
    write_public(&Paths::tenant_pem(dir, name), &cert.pem())?;
    Ok(())
}

/// The development setup: creates what is absent in `dir` — the CA and a server
/// certificate for `localhost`, `127.0.0.1`, `::1`, and tenant `dev`.
/// Existing files are kept.
pub fn ensure_dev(dir: &Path) -> Result<()> {
    let names: Vec<String> = DEV_NAMES.iter().map(|s| s.to_string()).collect();
    let has_ca = Paths::ca_pem(dir).exists() && Paths::ca_key(dir).exists();
    if !has_ca {
        if Paths::ca_pem(dir).exists() != Paths::ca_key(dir).exists() {
            bail!(
                "{} holds only half of a CA (ca.pem or ca.key missing); \
                 remove it or use another directory",
                dir.display()
            );
        }
        init(dir, &names)?;
    } else if !(Paths::server_pem(dir).exists() && Paths::server_key(dir).exists()) {
        server(dir, &names)?;
    }
    if !(Paths::tenant_pem(dir, DEV_TENANT).exists() && Paths::tenant_key(dir, DEV_TENANT).exists()) {
        tenant(dir, DEV_TENANT)?;
    }
    Ok(())
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "cuwire");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(days);
}

fn ca_params(key: &KeyPair) -> CertificateParams {
    // The raw public key of P-256 is 0x04 || X || Y: X is random.
    let id: String = key.public_key_raw().iter().skip(1).take(6).map(|b| format!("{b:02x}")).collect();
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&format!("{CA_COMMON_NAME} {id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, CA_VALIDITY_DAYS);
    params
}

fn server_params(names: &[String]) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(SERVER_COMMON_NAME);
    params.subject_alt_names = names
        .iter()
        .map(|n| {
            let n = n.trim();
            if n.is_empty() {
                bail!("empty server name");
            }
            // "[::1]" is accepted as well as "::1".
            let bare = n.strip_prefix('[').and_then(|s| s.strip_suffix(']'));
            Ok(match bare.unwrap_or(n).parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.to_string().try_into().with_context(|| format!("invalid DNS name {n:?}"))?),
            })
        })
        .collect::<Result<_>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY_DAYS);
    Ok(params)
}

fn issue_server(dir: &Path, names: &[String], issuer: &Issuer<'_, KeyPair>) -> Result<()> {
    let params = server_params(names)?;
    let key = KeyPair::generate().context("generating the server key")?;
    let cert = params.signed_by(&key, issuer).context("signing the server certificate")?;
    write_private(&Paths::server_key(dir), &key.serialize_pem())?;
    write_public(&Paths::server_pem(dir), &cert.pem())?;
    Ok(())
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>> {
    let ca_pem = Paths::ca_pem(dir);
    let ca_key = Paths::ca_key(dir);
    let cert = fs::read_to_string(&ca_pem)
        .with_context(|| format!("reading the CA certificate {} (run `cuwire-certs init` first)", ca_pem.display()))?;
    let key = fs::read_to_string(&ca_key).with_context(|| format!("reading the CA key {}", ca_key.display()))?;
    let key = KeyPair::from_pem(&key).with_context(|| format!("parsing {}", ca_key.display()))?;
    Issuer::from_ca_cert_pem(&cert, key).with_context(|| format!("parsing {}", ca_pem.display()))
}

/// Writes through a temporary file and a rename, so a reader never sees half a
/// file and an interrupted run leaves the old file in place.
fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let file_name = path.file_name().with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp{}", file_name.to_string_lossy(), std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f =
        fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents.as_bytes()).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    write_atomic(path, contents, 0o600)
}

fn write_public(path: &Path, contents: &str) -> Result<()> {
    write_atomic(path, contents, 0o644)
}
