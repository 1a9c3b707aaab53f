//! A development CA (rcgen): a trust domain's CA certificate and the SVIDs it issues, written in
//! the csi-driver-spiffe layout, plus edge (server) certificates. For `stack certs`, local runs
//! and tests; production SVIDs come from SPIRE or cert-manager.
//!
//! Keys are ECDSA P-256. Key files are written with mode 0600, and every file is written to a
//! temporary name and renamed, so a watcher never reads half a file.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};

use crate::spiffe_id::SpiffeId;
use crate::svid::{Layout, SvidPaths};

/// Default lifetime of an issued SVID: 24 hours.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default lifetime of a development CA: 30 days.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Issued certificates start this long before "now", so a peer whose clock is a little behind
/// accepts them.
const BACKDATE: Duration = Duration::from_secs(60);

/// Why the development CA could not issue or write.
#[derive(Debug, thiserror::Error)]
pub enum DevCaError {
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// A certificate and its key, in PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate (leaf only; the dev CA signs directly).
    pub cert_pem: String,
    /// The private key, PKCS#8. Secret.
    pub key_pem: String,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("not_after", &crate::x509::rfc3339(self.not_after))
            .finish_non_exhaustive()
    }
}

/// A self-signed CA that issues SVIDs and edge certificates.
///
/// ```
/// use identity::dev_ca::{DevCa, DEFAULT_SVID_TTL};
///
/// let ca = DevCa::new("vantage.local dev CA").unwrap();
/// let dir = tempfile::tempdir().unwrap();
/// let id = "spiffe://vantage.local/orders".parse().unwrap();
/// let paths = ca.write_svid(dir.path(), &id, DEFAULT_SVID_TTL).unwrap();
/// let svid = identity::Svid::load(&paths).unwrap();
/// assert_eq!(svid.spiffe_id(), &id);
/// ```
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    not_after: SystemTime,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("not_after", &crate::x509::rfc3339(self.not_after))
            .finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new CA named `common_name`, valid for [`DEFAULT_CA_TTL`].
    pub fn new(common_name: &str) -> Result<DevCa, DevCaError> {
        let now = SystemTime::now();
        DevCa::new_valid(common_name, now - BACKDATE, now + DEFAULT_CA_TTL)
    }

    /// A new CA valid from `not_before` to `not_after` (tests make expired ones).
    pub fn new_valid(
        common_name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<DevCa, DevCaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            not_after,
        })
    }

    /// A CA from its PEM certificate and key (as [`save`](Self::save) wrote them).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<DevCa, rcgen::Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        let info = crate::x509::CertInfo::parse(&rustls_pki_types::CertificateDer::into_owned(der))
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        if !info.is_ca {
            return Err(rcgen::Error::CouldNotParseCertificate);
        }
        Ok(DevCa {
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
            cert_pem: cert_pem.to_owned(),
            not_after: info.not_after,
        })
    }

    /// The CA in `dir` (`ca.crt`, `ca.key`) if both are there and it is valid for at least
    /// `min_remaining`; otherwise a new one named `common_name`, saved there. Returns whether
    /// it is new.
    pub fn load_or_create(
        dir: &Path,
        common_name: &str,
        min_remaining: Duration,
    ) -> Result<(DevCa, bool), DevCaError> {
        let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if let (Ok(c), Ok(k)) = (
            std::fs::read_to_string(&cert),
            std::fs::read_to_string(&key),
        ) {
            if let Ok(ca) = DevCa::from_pem(&c, &k) {
                if ca.not_after > SystemTime::now() + min_remaining {
                    return Ok((ca, false));
                }
            }
        }
        let ca = DevCa::new(common_name)?;
        ca.save(dir)?;
        Ok((ca, true))
    }

    /// Writes `ca.crt` and `ca.key` (0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), DevCaError> {
        create_dir(dir)?;
        write_file(
            &dir.join("ca.key"),
            &self.issuer.key().serialize_pem(),
            true,
        )?;
        write_file(&dir.join("ca.crt"), &self.cert_pem, false)
    }

    /// The CA certificate (the trust bundle), PEM.
    pub fn bundle_pem(&self) -> &str {
        &self.cert_pem
    }

    /// When the CA itself expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// An X.509 SVID for `id`, valid for `ttl` from now: URI SAN `id`, no CA, digital
    /// signature, client and server authentication.
    pub fn issue_svid(&self, id: &SpiffeId, ttl: Duration) -> Result<Issued, DevCaError> {
        let now = SystemTime::now();
        self.issue_svid_valid(id, now - BACKDATE, now + ttl)
    }

    /// [`issue_svid`](Self::issue_svid) with an explicit validity (tests issue expired ones).
    pub fn issue_svid_valid(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Issued, DevCaError> {
        let mut params = leaf_params(not_before, not_after)?;
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        self.sign(params, not_after)
    }

    /// A server certificate for the gateway's public TLS listener: DNS and IP SANs `names`
    /// (`localhost`, `127.0.0.1`), server authentication only, no SPIFFE ID.
    pub fn issue_edge(&self, names: &[&str], ttl: Duration) -> Result<Issued, DevCaError> {
        let now = SystemTime::now();
        let mut params = leaf_params(now - BACKDATE, now + ttl)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*n).try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        self.sign(params, now + ttl)
    }

    /// Issues an SVID for `id` and writes it into `dir` in the csi-driver layout (`tls.crt`,
    /// `tls.key`, `ca.crt`).
    pub fn write_svid(
        &self,
        dir: &Path,
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<SvidPaths, DevCaError> {
        self.issue_svid(id, ttl)?
            .write(dir, Layout::CsiDriver, self.bundle_pem())
    }

    fn sign(&self, params: CertificateParams, not_after: SystemTime) -> Result<Issued, DevCaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }
}

impl Issued {
    /// Writes the certificate, key (0600) and `bundle_pem` into `dir` under `layout`'s names;
    /// the key first and the certificate last, each renamed into place.
    pub fn write(
        &self,
        dir: &Path,
        layout: Layout,
        bundle_pem: &str,
    ) -> Result<SvidPaths, DevCaError> {
        create_dir(dir)?;
        let paths = SvidPaths::in_dir(dir, layout);
        write_file(&paths.bundle, bundle_pem, false)?;
        write_file(&paths.key, &self.key_pem, true)?;
        write_file(&paths.cert, &self.cert_pem, false)?;
        Ok(paths)
    }
}

fn leaf_params(
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn create_dir(dir: &Path) -> Result<(), DevCaError> {
    std::fs::create_dir_all(dir).map_err(|source| DevCaError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `contents` to a temporary file beside `path` and renames it over `path`.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), DevCaError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| DevCaError::Io {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}
