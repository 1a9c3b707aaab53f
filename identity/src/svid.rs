//! X.509 SVIDs: where one comes from ([`SvidSource`]: files, [`SvidPaths`], or the SPIFFE
//! Workload API) and what a loaded one holds ([`Svid`]). Every error names the file (or the
//! Workload API endpoint) and the reason.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::x509::{rfc3339, CertError, CertInfo};

/// `SVID_DIR`: a directory in the csi-driver-spiffe or spiffe-helper layout.
pub const SVID_DIR_ENV: &str = "SVID_DIR";
/// `SVID_CERT_FILE`: the PEM certificate chain, leaf first (with the two below, instead of
/// `SVID_DIR`).
pub const SVID_CERT_FILE_ENV: &str = "SVID_CERT_FILE";
/// `SVID_KEY_FILE`: the PEM private key (PKCS#8, SEC1 or PKCS#1).
pub const SVID_KEY_FILE_ENV: &str = "SVID_KEY_FILE";
/// `SVID_BUNDLE_FILE`: the PEM trust bundle (the trust domain's CA certificates).
pub const SVID_BUNDLE_FILE_ENV: &str = "SVID_BUNDLE_FILE";
/// `SPIFFE_ENDPOINT_SOCKET`: the SPIFFE Workload API endpoint (`unix:///run/spire/agent.sock`,
/// `tcp://127.0.0.1:8081`), the standard variable SPIRE and the SPIFFE libraries read. Instead
/// of the files above.
pub const SPIFFE_ENDPOINT_SOCKET_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Which tool wrote the files of an SVID directory, and so what they are called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// cert-manager's csi-driver-spiffe: `tls.crt`, `tls.key`, `ca.crt`. What `dev_ca` writes.
    CsiDriver,
    /// SPIRE's spiffe-helper: `svid.pem`, `svid_key.pem`, `svid_bundle.pem`.
    SpiffeHelper,
}

impl Layout {
    /// The (certificate, key, bundle) file names.
    pub const fn file_names(self) -> [&'static str; 3] {
        match self {
            Layout::CsiDriver => ["tls.crt", "tls.key", "ca.crt"],
            Layout::SpiffeHelper => ["svid.pem", "svid_key.pem", "svid_bundle.pem"],
        }
    }
}

/// Where an SVID is configured to come from, before any file is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvidSource {
    /// `SVID_DIR`: the layout is detected when the SVID is first loaded.
    Dir(PathBuf),
    /// `SVID_CERT_FILE`, `SVID_KEY_FILE`, `SVID_BUNDLE_FILE`.
    Files(SvidPaths),
    /// `SPIFFE_ENDPOINT_SOCKET`: streamed from the SPIFFE Workload API (a SPIRE agent); see
    /// [`WorkloadIdentity::connect`](crate::WorkloadIdentity::connect). Checked to be an
    /// endpoint (`unix:` or `tcp:`) when parsed.
    WorkloadApi(String),
}

/// Why the `SVID_*` / `SPIFFE_ENDPOINT_SOCKET` variables do not name an SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidSourceError {
    #[error("set one of {SVID_DIR_ENV}, {SVID_CERT_FILE_ENV}/{SVID_KEY_FILE_ENV}/{SVID_BUNDLE_FILE_ENV} or {SPIFFE_ENDPOINT_SOCKET_ENV}, not several")]
    Both,
    #[error("{} must be set too", .0.join(", "))]
    Incomplete(Vec<&'static str>),
    #[error(
        "{0:?} is not a Workload API endpoint (unix:///path/to/agent.sock or tcp://host:port): {1}"
    )]
    BadEndpoint(String, String),
}

impl SvidSource {
    /// From the `SVID_*` and `SPIFFE_ENDPOINT_SOCKET` variables, as `var` returns them (`None`
    /// or empty = unset). `Ok(None)` when none is set.
    pub fn from_vars(
        var: impl Fn(&'static str) -> Option<String>,
    ) -> Result<Option<SvidSource>, SvidSourceError> {
        let get = |name| var(name).filter(|v| !v.is_empty());
        let dir = get(SVID_DIR_ENV);
        let files =
            [SVID_CERT_FILE_ENV, SVID_KEY_FILE_ENV, SVID_BUNDLE_FILE_ENV].map(|n| (n, get(n)));
        let set = files.iter().filter(|(_, v)| v.is_some()).count();
        if let Some(endpoint) = get(SPIFFE_ENDPOINT_SOCKET_ENV) {
            if dir.is_some() || set > 0 {
                return Err(SvidSourceError::Both);
            }
            return SvidSource::workload_api(&endpoint).map(Some);
        }
        match (dir, set) {
            (Some(_), 1..) => Err(SvidSourceError::Both),
            (Some(dir), 0) => Ok(Some(SvidSource::Dir(dir.into()))),
            (None, 0) => Ok(None),
            (None, 3) => {
                let [c, k, b] = files.map(|(_, v)| PathBuf::from(v.unwrap_or_default()));
                Ok(Some(SvidSource::Files(SvidPaths {
                    cert: c,
                    key: k,
                    bundle: b,
                })))
            }
            (None, _) => Err(SvidSourceError::Incomplete(
                files
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(n, _)| *n)
                    .collect(),
            )),
        }
    }

    /// A Workload API source, once `endpoint` is checked to be one.
    pub fn workload_api(endpoint: &str) -> Result<SvidSource, SvidSourceError> {
        match spiffe::transport::Endpoint::parse(endpoint) {
            Ok(_) => Ok(SvidSource::WorkloadApi(endpoint.to_owned())),
            Err(e) => Err(SvidSourceError::BadEndpoint(
                endpoint.to_owned(),
                e.to_string(),
            )),
        }
    }
}

impl fmt::Display for SvidSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SvidSource::Dir(d) => write!(f, "{}", d.display()),
            SvidSource::Files(p) => write!(f, "{p}"),
            SvidSource::WorkloadApi(endpoint) => write!(f, "the Workload API at {endpoint}"),
        }
    }
}

/// Where a loaded [`Svid`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvidOrigin {
    /// Read from these files.
    Files(SvidPaths),
    /// Received from the SPIFFE Workload API at this endpoint.
    WorkloadApi(String),
}

impl fmt::Display for SvidOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SvidOrigin::Files(p) => write!(f, "{p}"),
            SvidOrigin::WorkloadApi(endpoint) => write!(f, "the Workload API at {endpoint}"),
        }
    }
}

/// The three files of an SVID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SvidPaths {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf. Never logged.
    pub key: PathBuf,
    /// PEM trust bundle: the CA certificates peers must chain to.
    pub bundle: PathBuf,
}

impl SvidPaths {
    /// The files of `dir` in `layout`.
    pub fn in_dir(dir: &Path, layout: Layout) -> SvidPaths {
        let [cert, key, bundle] = layout.file_names().map(|n| dir.join(n));
        SvidPaths { cert, key, bundle }
    }

    /// The files of `dir`, in the layout whose certificate file is there (csi-driver first).
    pub fn detect(dir: &Path) -> Result<SvidPaths, SvidError> {
        for layout in [Layout::CsiDriver, Layout::SpiffeHelper] {
            let paths = SvidPaths::in_dir(dir, layout);
            if paths.cert.exists() {
                return Ok(paths);
            }
        }
        Err(SvidError::new(dir, SvidProblem::NoLayout))
    }
}

impl fmt::Display for SvidPaths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {}, {}",
            self.cert.display(),
            self.key.display(),
            self.bundle.display()
        )
    }
}

/// An SVID that could not be loaded: the file at fault (for one from the Workload API, its
/// endpoint) and why. Displays as `<file>: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", .file.display())]
pub struct SvidError {
    pub file: PathBuf,
    pub problem: SvidProblem,
}

impl SvidError {
    pub(crate) fn new(file: &Path, problem: SvidProblem) -> Self {
        SvidError {
            file: file.to_owned(),
            problem,
        }
    }
}

/// What is wrong with a file of an SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidProblem {
    #[error("cannot be read: {0}")]
    Read(String),
    #[error("neither tls.crt, tls.key, ca.crt (csi-driver-spiffe) nor svid.pem, svid_key.pem, svid_bundle.pem (spiffe-helper) is here")]
    NoLayout,
    #[error("not a PEM certificate")]
    NotPemCertificate,
    #[error("not a PEM private key")]
    NotPemKey,
    #[error("the Workload API response has no {0}")]
    NotInResponse(&'static str),
    #[error("unsupported private key: {0}")]
    UnsupportedKey(String),
    #[error("does not match the certificate in {}", .0.display())]
    KeyMismatch(PathBuf),
    #[error("{0}")]
    Certificate(CertError),
    #[error("is a CA certificate, not an SVID")]
    IsCa,
    #[error("expired at {0}")]
    Expired(String),
    #[error("not valid before {0}")]
    NotYetValid(String),
    #[error("certificate {index} is not a usable CA certificate: {reason}")]
    BadTrustAnchor { index: usize, reason: String },
    #[error("not issued by a CA in {} ({reason})", .bundle.display())]
    Untrusted { bundle: PathBuf, reason: String },
    #[error("SPIFFE ID {id} is not in trust domain {expected}")]
    WrongTrustDomain { id: SpiffeId, expected: TrustDomain },
}

/// A loaded X.509 SVID: the workload's certificate chain and key, its trust bundle, and what was
/// read from the leaf. Its `Debug` never shows the key.
///
/// Also holds the rustls parts built from them once per load (the signing key, the trust
/// anchors and a client-certificate verifier), so a handshake only clones `Arc`s.
pub struct Svid {
    origin: SvidOrigin,
    spiffe_id: SpiffeId,
    leaf: CertInfo,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    bundle: Vec<CertificateDer<'static>>,
    certified_key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id.as_str())
            .field("not_after", &rfc3339(self.leaf.not_after))
            .field("serial", &self.leaf.serial)
            .field("origin", &self.origin)
            .field("bundle_certificates", &self.bundle.len())
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// Reads and checks the three files: the chain parses and its leaf has exactly one
    /// `spiffe://` URI SAN, is no CA and is valid now; the key is the leaf's; the bundle holds
    /// usable CA certificates and the leaf chains to one of them.
    pub fn load(paths: &SvidPaths) -> Result<Svid, SvidError> {
        Svid::load_at(paths, SystemTime::now())
    }

    /// [`load`](Self::load), checking validity at `now`.
    pub fn load_at(paths: &SvidPaths, now: SystemTime) -> Result<Svid, SvidError> {
        let chain = read_certs(&paths.cert)?;
        let key_pem = read(&paths.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|_| SvidError::new(&paths.key, SvidProblem::NotPemKey))?;
        let bundle = read_certs(&paths.bundle)?;
        Svid::check(
            paths,
            SvidOrigin::Files(paths.clone()),
            chain,
            key,
            bundle,
            now,
        )
    }

    /// An SVID received from the Workload API at `endpoint` (DER chain leaf first, PKCS#8
    /// key, DER bundle), checked as [`load`](Self::load) checks files; errors name the
    /// endpoint.
    pub(crate) fn from_workload_api(
        endpoint: &str,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: Vec<CertificateDer<'static>>,
        now: SystemTime,
    ) -> Result<Svid, SvidError> {
        let at = PathBuf::from(endpoint);
        let blame = SvidPaths {
            cert: at.clone(),
            key: at.clone(),
            bundle: at,
        };
        if chain.is_empty() {
            return Err(SvidError::new(
                &blame.cert,
                SvidProblem::NotInResponse("certificate"),
            ));
        }
        if bundle.is_empty() {
            return Err(SvidError::new(
                &blame.cert,
                SvidProblem::NotInResponse("trust bundle"),
            ));
        }
        let origin = SvidOrigin::WorkloadApi(endpoint.to_owned());
        Svid::check(&blame, origin, chain, key, bundle, now)
    }

    /// The checks every SVID passes, whatever its origin; `blame` names what each error is
    /// about (the certificate, key and bundle files, or the endpoint three times).
    fn check(
        blame: &SvidPaths,
        origin: SvidOrigin,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: Vec<CertificateDer<'static>>,
        now: SystemTime,
    ) -> Result<Svid, SvidError> {
        let paths = blame;
        let cert_err = |p| SvidError::new(&paths.cert, p);
        let leaf = CertInfo::parse(&chain[0]).map_err(|e| cert_err(SvidProblem::Certificate(e)))?;
        let spiffe_id = leaf
            .spiffe_id
            .clone()
            .map_err(|e| cert_err(SvidProblem::Certificate(e)))?;
        if leaf.is_ca {
            return Err(cert_err(SvidProblem::IsCa));
        }
        if now > leaf.not_after {
            return Err(cert_err(SvidProblem::Expired(rfc3339(leaf.not_after))));
        }
        if now < leaf.not_before {
            return Err(cert_err(SvidProblem::NotYetValid(rfc3339(leaf.not_before))));
        }

        let provider = crate::tls::provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| SvidError::new(&paths.key, SvidProblem::UnsupportedKey(e.to_string())))?;
        let certified_key = CertifiedKey::new(chain.clone(), signing_key);
        if let Err(e) = certified_key.keys_match() {
            // `Unknown`: the key type cannot say its public key; the handshake will tell.
            if !matches!(
                e,
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)
            ) {
                return Err(SvidError::new(
                    &paths.key,
                    SvidProblem::KeyMismatch(paths.cert.clone()),
                ));
            }
        }

        let mut roots = RootCertStore::empty();
        for (index, ca) in bundle.iter().enumerate() {
            roots.add(ca.clone()).map_err(|e| {
                SvidError::new(
                    &paths.bundle,
                    SvidProblem::BadTrustAnchor {
                        index,
                        reason: e.to_string(),
                    },
                )
            })?;
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| {
                    SvidError::new(
                        &paths.bundle,
                        SvidProblem::BadTrustAnchor {
                            index: 0,
                            reason: e.to_string(),
                        },
                    )
                })?;
        // The leaf must chain to the bundle (as a client: every SVID is used as one).
        let unix_now = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        client_verifier
            .verify_client_cert(&chain[0], &chain[1..], unix_now)
            .map_err(|e| {
                cert_err(SvidProblem::Untrusted {
                    bundle: paths.bundle.clone(),
                    reason: e.to_string(),
                })
            })?;

        Ok(Svid {
            origin,
            spiffe_id,
            leaf,
            chain,
            key,
            bundle,
            certified_key: Arc::new(certified_key),
            roots,
            client_verifier,
        })
    }

    /// Fails unless the SVID's ID is in `trust_domain` (the error names the certificate file).
    pub fn check_trust_domain(&self, trust_domain: &TrustDomain) -> Result<(), SvidError> {
        if self.spiffe_id.trust_domain() == trust_domain {
            return Ok(());
        }
        let file = match &self.origin {
            SvidOrigin::Files(paths) => paths.cert.clone(),
            SvidOrigin::WorkloadApi(endpoint) => PathBuf::from(endpoint),
        };
        Err(SvidError::new(
            &file,
            SvidProblem::WrongTrustDomain {
                id: self.spiffe_id.clone(),
                expected: trust_domain.clone(),
            },
        ))
    }

    /// The workload's SPIFFE ID (the leaf's URI SAN).
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// When the leaf expires.
    pub fn not_after(&self) -> SystemTime {
        self.leaf.not_after
    }

    /// When the leaf became valid.
    pub fn not_before(&self) -> SystemTime {
        self.leaf.not_before
    }

    /// The leaf's subject (RFC 4514; often empty for SVIDs).
    pub fn subject(&self) -> &str {
        &self.leaf.subject
    }

    /// The leaf's serial number (hex, colon-separated).
    pub fn serial(&self) -> &str {
        &self.leaf.serial
    }

    /// Where it came from: its files, or the Workload API.
    pub fn origin(&self) -> &SvidOrigin {
        &self.origin
    }

    /// The certificate chain, leaf first (DER).
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key (DER). Secret: never log it.
    pub fn private_key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The trust bundle's CA certificates (DER).
    pub fn bundle(&self) -> &[CertificateDer<'static>] {
        &self.bundle
    }

    /// The chain and key as rustls signs with them.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// The bundle as rustls trust anchors.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    pub(crate) fn client_verifier(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.client_verifier
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SvidError> {
    std::fs::read(path).map_err(|e| SvidError::new(path, SvidProblem::Read(e.to_string())))
}

/// Every `CERTIFICATE` block of a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SvidError> {
    let pem = read(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| SvidError::new(path, SvidProblem::NotPemCertificate))?;
    if certs.is_empty() {
        return Err(SvidError::new(path, SvidProblem::NotPemCertificate));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&'static str, &str)]) -> impl Fn(&'static str) -> Option<String> {
        let map: HashMap<&str, String> = pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_variables_name_a_directory_or_three_files() {
        assert_eq!(SvidSource::from_vars(vars(&[])), Ok(None));
        assert_eq!(
            SvidSource::from_vars(vars(&[("SVID_DIR", "/s")])),
            Ok(Some(SvidSource::Dir("/s".into())))
        );
        assert_eq!(
            SvidSource::from_vars(vars(&[("SVID_DIR", "")])),
            Ok(None),
            "empty is unset"
        );
        let files = SvidSource::from_vars(vars(&[
            ("SVID_CERT_FILE", "c"),
            ("SVID_KEY_FILE", "k"),
            ("SVID_BUNDLE_FILE", "b"),
        ]));
        assert_eq!(
            files,
            Ok(Some(SvidSource::Files(SvidPaths {
                cert: "c".into(),
                key: "k".into(),
                bundle: "b".into()
            })))
        );
        assert_eq!(
            SvidSource::from_vars(vars(&[("SVID_DIR", "/s"), ("SVID_KEY_FILE", "k")])),
            Err(SvidSourceError::Both)
        );
        let e = SvidSource::from_vars(vars(&[("SVID_CERT_FILE", "c")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SVID_KEY_FILE, SVID_BUNDLE_FILE must be set too"
        );
    }

    #[test]
    fn a_directory_s_layout_is_detected_from_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let e = SvidPaths::detect(dir.path()).unwrap_err();
        assert_eq!(e.file, dir.path());
        assert!(e.to_string().contains("tls.crt"), "{e}");
        std::fs::write(dir.path().join("svid.pem"), "").unwrap();
        assert_eq!(
            SvidPaths::detect(dir.path()).unwrap().key,
            dir.path().join("svid_key.pem")
        );
        std::fs::write(dir.path().join("tls.crt"), "").unwrap();
        assert_eq!(
            SvidPaths::detect(dir.path()).unwrap().bundle,
            dir.path().join("ca.crt")
        );
    }
}
