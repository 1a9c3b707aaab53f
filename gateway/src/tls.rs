//! TLS on both sides of the gateway.
//!
//! - **Edge**: the certificate the public TLS listener serves ([`EdgeCert`]), picked per
//!   handshake by [`EdgeCallbacks`] from what [`EdgeCerts`] last loaded, so a renewed certificate
//!   is served to the next client without a restart and without touching open connections.
//! - **Upstreams**: mutual TLS with SPIFFE identities ([`UpstreamTls`]). The gateway presents its
//!   own SVID (an [`identity::WorkloadIdentity`], re-read when its files change) and verifies the
//!   upstream's chain against the trust bundle. Pingora's OpenSSL connector verifies the chain
//!   and expiry; it has no hook to reject a peer by its SPIFFE ID during the handshake, but it
//!   does run [`handshake_hook`] right after it, which records the peer's URI SAN in the
//!   connection's digest. [`UpstreamTls::check`] then refuses a connection whose SPIFFE ID is not
//!   allowed in `connected_to_upstream` — before a byte of the request is written, and the
//!   connection is dropped, never pooled. That is why the gateway is built with Pingora's
//!   `openssl` feature: the rustls connector offers no such hook (docs/security.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::HandshakeCompleteHook;
use pingora_core::protocols::Digest;
use pingora_core::tls::ext::{ssl_add_chain_cert, ssl_use_certificate, ssl_use_private_key};
use pingora_core::tls::pkey::{PKey, Private};
use pingora_core::tls::ssl::SslRef;
use pingora_core::tls::x509::X509;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::CertKey;

use tokio_util::sync::CancellationToken;

use crate::config::{EdgeTlsConfig, SvidConfig, UpstreamTlsConfig};

// === edge ===

/// A certificate chain and key for the public listener.
pub(crate) struct EdgeCert {
    chain: Vec<X509>,
    key: PKey<Private>,
    /// The leaf's subject, for `/config`.
    pub(crate) subject: String,
    /// The leaf's expiry.
    pub(crate) not_after: SystemTime,
}

impl EdgeCert {
    /// Reads and checks `cert_file` (PEM chain, leaf first) and `key_file`: both parse, the key
    /// is the leaf's, the leaf is valid now. Errors name the file.
    pub(crate) fn load(cert_file: &Path, key_file: &Path) -> Result<EdgeCert, String> {
        let at = |p: &Path, why: String| format!("{}: {why}", p.display());
        let pem =
            std::fs::read(cert_file).map_err(|e| at(cert_file, format!("cannot be read: {e}")))?;
        let chain = X509::stack_from_pem(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| at(cert_file, "not a PEM certificate".into()))?;
        let key_pem =
            std::fs::read(key_file).map_err(|e| at(key_file, format!("cannot be read: {e}")))?;
        let key = PKey::private_key_from_pem(&key_pem)
            .map_err(|_| at(key_file, "not a PEM private key".into()))?;
        let leaf = &chain[0];
        let matches = leaf
            .public_key()
            .map(|public| public.public_eq(&key))
            .unwrap_or(false);
        if !matches {
            return Err(at(
                key_file,
                format!("does not match the certificate in {}", cert_file.display()),
            ));
        }
        let info = leaf
            .to_der()
            .ok()
            .and_then(|der| identity::CertInfo::parse(&der).ok())
            .ok_or_else(|| at(cert_file, "not an X.509 certificate".into()))?;
        if info.not_after <= SystemTime::now() {
            return Err(at(
                cert_file,
                format!("expired at {}", identity::rfc3339(info.not_after)),
            ));
        }
        Ok(EdgeCert {
            chain,
            key,
            subject: info.subject,
            not_after: info.not_after,
        })
    }
}

/// The edge certificate in use, re-read when its files change.
pub(crate) struct EdgeCerts {
    current: ArcSwapOption<EdgeCert>,
    files: parking_lot::Mutex<Option<(PathBuf, PathBuf, u64)>>,
}

impl EdgeCerts {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(EdgeCerts {
            current: ArcSwapOption::empty(),
            files: parking_lot::Mutex::new(None),
        })
    }

    /// The certificate served now.
    pub(crate) fn current(&self) -> Option<Arc<EdgeCert>> {
        self.current.load_full()
    }

    /// Serves `config`'s files from now on (at start and on policy reload).
    pub(crate) fn install(&self, config: Option<&EdgeTlsConfig>) -> Result<(), String> {
        let Some(config) = config else {
            self.current.store(None);
            *self.files.lock() = None;
            return Ok(());
        };
        let cert = EdgeCert::load(&config.cert_file, &config.key_file)?;
        self.current.store(Some(Arc::new(cert)));
        let fingerprint = fingerprint(&[&config.cert_file, &config.key_file]);
        *self.files.lock() = Some((
            config.cert_file.clone(),
            config.key_file.clone(),
            fingerprint,
        ));
        Ok(())
    }

    /// Re-reads the files when their contents changed; a broken new pair keeps the old one.
    pub(crate) fn reload_if_changed(&self) {
        let Some((cert_file, key_file, seen)) = self.files.lock().clone() else {
            return;
        };
        let now = fingerprint(&[&cert_file, &key_file]);
        if now == seen {
            return;
        }
        if let Some(files) = self.files.lock().as_mut() {
            files.2 = now;
        }
        match EdgeCert::load(&cert_file, &key_file) {
            Ok(cert) => {
                tracing::info!(subject = %cert.subject, not_after = %identity::rfc3339(cert.not_after), "Loaded a new edge certificate.");
                self.current.store(Some(Arc::new(cert)));
            }
            Err(error) => {
                tracing::warn!(%error, "Rejected new edge certificate files; the previous certificate stays in use.")
            }
        }
    }

    /// Checks the files every `interval` until `stop` is cancelled.
    pub(crate) async fn watch(
        self: Arc<Self>,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => self.reload_if_changed(),
            }
        }
    }
}

/// Picks the current edge certificate for every TLS handshake on the public listener.
pub(crate) struct EdgeCallbacks {
    pub(crate) certs: Arc<EdgeCerts>,
}

#[async_trait]
impl TlsAccept for EdgeCallbacks {
    async fn certificate_callback(&self, ssl: &mut SslRef) {
        let Some(cert) = self.certs.current() else {
            return;
        };
        let mut chain = cert.chain.iter();
        if let Some(leaf) = chain.next() {
            let _ = ssl_use_certificate(ssl, leaf);
        }
        for extra in chain {
            let _ = ssl_add_chain_cert(ssl, extra);
        }
        let _ = ssl_use_private_key(ssl, &cert.key);
    }
}

// === upstreams ===

/// What the handshake hook found in the upstream's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerIdentity {
    /// Its SPIFFE ID (the URI SAN).
    Spiffe(String),
    /// No certificate, or no single `spiffe://` URI SAN in it.
    Missing,
}

/// Records the upstream certificate's SPIFFE ID in the connection's digest, right after the
/// handshake, for [`UpstreamTls::check`]; and turns on OpenSSL read-ahead for the connection.
pub(crate) fn handshake_hook() -> HandshakeCompleteHook {
    Arc::new(|ssl: &SslRef| {
        // Pingora's upstream transport has no read buffer: without read-ahead, OpenSSL reads
        // every record's header and body with two `read(2)` calls (docs/benchmarks.md,
        // "Upstream mutual TLS").
        openssl_ext::enable_read_ahead(ssl);
        let id = ssl
            .peer_certificate()
            .and_then(|cert| cert.to_der().ok())
            .and_then(|der| identity::spiffe_id_of(&der).ok())
            .map_or(PeerIdentity::Missing, |id| {
                PeerIdentity::Spiffe(id.to_string())
            });
        Some(Arc::new(id))
    })
}

/// Why an upstream's certificate was refused after a successful handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdentityRefusal {
    /// It presented another SPIFFE ID.
    WrongIdentity(String),
    /// It presented no SPIFFE ID.
    NoIdentity,
}

impl IdentityRefusal {
    /// Stable label (metrics, span `error.type`).
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            IdentityRefusal::WrongIdentity(_) => "wrong_identity",
            IdentityRefusal::NoIdentity => "no_identity",
        }
    }
}

/// The OpenSSL form of one SVID: built once per rotation, cloned (as `Arc`s) per connection.
struct Material {
    svid: Arc<identity::Svid>,
    client: Arc<CertKey>,
    ca: Arc<Box<[X509]>>,
}

impl Material {
    fn of(svid: Arc<identity::Svid>) -> Result<Material, String> {
        let chain = svid
            .cert_chain()
            .iter()
            .map(|der| X509::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", blame(&svid, |p| &p.cert)))?;
        let key = PKey::private_key_from_der(svid.private_key().secret_der())
            .map_err(|e| format!("{}: {e}", blame(&svid, |p| &p.key)))?;
        let ca = svid
            .bundle()
            .iter()
            .map(|der| X509::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", blame(&svid, |p| &p.bundle)))?;
        Ok(Material {
            svid,
            client: Arc::new(CertKey::new(chain, key)),
            ca: Arc::new(ca.into_boxed_slice()),
        })
    }
}

/// The gateway's own SVIDs for one policy generation, one per source named in it: files are
/// read (and later polled) per upstream; each Workload API endpoint is one stream, shared by
/// every upstream and issuer that names it and carried over to the next generation, so a
/// reload does not wait for the agent again (its new stream replaces the old generation's).
pub(crate) struct Identities {
    followed: std::collections::BTreeMap<String, identity::WorkloadIdentity>,
    /// The endpoints this generation names; the others are dropped by `follow`.
    used: std::collections::BTreeSet<String>,
    /// Endpoints that gave no SVID while this generation was built, with the error: asked
    /// once, so several blocks naming a dead agent wait for it once.
    failed: std::collections::BTreeMap<String, String>,
    /// How long a first fetch waits for the agent.
    wait: Duration,
}

impl Default for Identities {
    fn default() -> Self {
        Identities::waiting(identity::DEFAULT_WORKLOAD_API_WAIT)
    }
}

impl Identities {
    /// No identity yet; a first fetch from an agent waits up to `wait` (`gateway explain` and
    /// `gateway test` wait less than a policy being applied).
    pub(crate) fn waiting(wait: Duration) -> Identities {
        Identities {
            followed: Default::default(),
            used: Default::default(),
            failed: Default::default(),
            wait,
        }
    }

    /// Starts from the Workload API identities of the generation being replaced.
    pub(crate) fn inherit(previous: Option<&Identities>) -> Identities {
        Identities {
            followed: previous.map(|p| p.followed.clone()).unwrap_or_default(),
            ..Identities::default()
        }
    }

    /// Records that this generation uses `svid` through something carried over unchanged
    /// (an upstream or issuer that keeps its identity without [`get`](Self::get)).
    pub(crate) fn keep(&mut self, svid: &SvidConfig) {
        if let SvidConfig::WorkloadApi { endpoint } = svid {
            self.used.insert(endpoint.clone());
        }
    }

    /// The identity for `svid`: its files loaded, or the endpoint's stream (fetching the
    /// first SVID, up to [`identity::DEFAULT_WORKLOAD_API_WAIT`] by default, if no generation had it; an endpoint
    /// that failed is not asked again for this generation). The error names the file or the
    /// endpoint.
    pub(crate) async fn get(
        &mut self,
        svid: &SvidConfig,
    ) -> Result<identity::WorkloadIdentity, String> {
        match svid {
            SvidConfig::Files { .. } => {
                let paths = svid.paths().expect("files have paths");
                identity::WorkloadIdentity::load(&paths, None).map_err(|e| e.to_string())
            }
            SvidConfig::WorkloadApi { endpoint } => {
                self.used.insert(endpoint.clone());
                if let Some(id) = self.followed.get(endpoint) {
                    return Ok(id.clone());
                }
                if let Some(error) = self.failed.get(endpoint) {
                    return Err(error.clone());
                }
                let id = match identity::WorkloadIdentity::connect(endpoint, None, self.wait).await
                {
                    Ok(id) => id,
                    Err(e) => {
                        self.failed.insert(endpoint.clone(), e.to_string());
                        return Err(e.to_string());
                    }
                };
                tracing::info!(
                    spiffe_id = %id.current().spiffe_id(),
                    serial = id.current().serial(),
                    endpoint = %endpoint,
                    "Received the gateway's SVID from the Workload API."
                );
                self.followed.insert(endpoint.clone(), id.clone());
                Ok(id)
            }
        }
    }

    /// The SVID issuer `name` presents for its `jwks_tls` (`None` without one); the error
    /// is located at `issuers.<name>.jwks_tls`.
    pub(crate) async fn for_issuer(
        &mut self,
        name: &str,
        issuer: &crate::config::IssuerConfig,
    ) -> Result<Option<identity::WorkloadIdentity>, crate::config::ConfigError> {
        let Some(tls) = &issuer.jwks_tls else {
            return Ok(None);
        };
        self.get(&tls.svid)
            .await
            .map(Some)
            .map_err(|message| crate::config::ConfigError {
                location: format!("issuers.{name}.jwks_tls"),
                message,
            })
    }

    /// Drops the endpoints this generation does not use, and follows the others' streams
    /// until `stop` (one task per endpoint).
    pub(crate) fn follow(&mut self, background: &tokio::runtime::Handle, stop: &CancellationToken) {
        let used = &self.used;
        self.followed.retain(|endpoint, _| used.contains(endpoint));
        for id in self.followed.values() {
            background.spawn(
                id.clone()
                    .watch(identity::DEFAULT_POLL_INTERVAL, stop.clone()),
            );
        }
    }
}

/// What an error about one part of `svid` names: that part's file, or the Workload API.
fn blame(svid: &identity::Svid, file: impl Fn(&identity::SvidPaths) -> &PathBuf) -> String {
    match svid.origin() {
        identity::SvidOrigin::Files(paths) => file(paths).display().to_string(),
        origin @ identity::SvidOrigin::WorkloadApi(_) => origin.to_string(),
    }
}

/// Mutual TLS towards one upstream.
pub(crate) struct UpstreamTls {
    identity: identity::WorkloadIdentity,
    material: ArcSwap<Material>,
    allowed: Vec<String>,
    server_name: String,
}

impl UpstreamTls {
    /// Mutual TLS per `config` with the gateway's SVID from `identity` (see [`Identities`]).
    pub(crate) fn new(
        config: &UpstreamTlsConfig,
        identity: identity::WorkloadIdentity,
    ) -> Result<Arc<UpstreamTls>, String> {
        let material = Material::of(identity.current())?;
        Ok(Arc::new(UpstreamTls {
            identity,
            material: ArcSwap::from_pointee(material),
            allowed: config.spiffe_ids.clone(),
            server_name: config.server_name.clone(),
        }))
    }

    /// The gateway's SVID files, for the watcher.
    pub(crate) fn identity(&self) -> &identity::WorkloadIdentity {
        &self.identity
    }

    /// The SVID's expiry, for `gateway_certificate_expiry_seconds`.
    pub(crate) fn not_after(&self) -> SystemTime {
        self.identity.current().not_after()
    }

    /// The SVID's SPIFFE ID, for `/config`.
    pub(crate) fn spiffe_id(&self) -> String {
        self.identity.current().spiffe_id().to_string()
    }

    /// The OpenSSL material of the current SVID (rebuilt after a rotation).
    fn material(&self) -> Arc<Material> {
        let material = self.material.load_full();
        let svid = self.identity.current();
        if Arc::ptr_eq(&material.svid, &svid) {
            return material;
        }
        match Material::of(svid) {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                self.material.store(Arc::clone(&fresh));
                fresh
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot use the rotated SVID with OpenSSL; keeping the previous one.");
                material
            }
        }
    }

    /// Makes `peer` a mutual-TLS peer: the gateway's SVID as client certificate, the bundle as
    /// the only trust anchors, chain and expiry verified by OpenSSL, the SPIFFE ID recorded by
    /// [`handshake_hook`] for [`check`](Self::check). Host names are not verified: SVIDs carry
    /// SPIFFE IDs, not DNS names.
    pub(crate) fn apply(&self, peer: &mut HttpPeer) {
        let material = self.material();
        peer.sni.clone_from(&self.server_name);
        peer.client_cert_key = Some(Arc::clone(&material.client));
        peer.options.ca = Some(Arc::clone(&material.ca));
        peer.options.verify_cert = true;
        peer.options.verify_hostname = false;
        peer.options.upstream_tls_handshake_complete_hook = Some(handshake_hook());
    }

    /// Whether the upstream behind `digest` presented an allowed SPIFFE ID; returns it.
    pub(crate) fn check(&self, digest: Option<&Digest>) -> Result<String, IdentityRefusal> {
        let found = digest
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|ssl| ssl.extension.get::<PeerIdentity>().cloned());
        match found {
            Some(PeerIdentity::Spiffe(id)) if self.allowed.contains(&id) => Ok(id),
            Some(PeerIdentity::Spiffe(id)) => Err(IdentityRefusal::WrongIdentity(id)),
            Some(PeerIdentity::Missing) | None => Err(IdentityRefusal::NoIdentity),
        }
    }
}

// === helpers ===

/// A hash of the files' contents (0 for an unreadable file), to see that they changed.
fn fingerprint(files: &[&Path]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        std::fs::read(f).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_with_svid() -> test_support::WorkloadApiServer {
        let ca = identity::dev_ca::DevCa::new("identities test CA").unwrap();
        let id: identity::SpiffeId = "spiffe://vantage.local/gateway".parse().unwrap();
        let issued = ca.issue_svid(&id, Duration::from_secs(3600)).unwrap();
        let agent = test_support::WorkloadApiServer::start();
        agent.issue(
            id.as_str(),
            &issued.cert_pem,
            &issued.key_pem,
            ca.bundle_pem(),
        );
        agent
    }

    #[tokio::test]
    async fn a_workload_api_stream_is_shared_carried_over_and_dropped_when_unused() {
        let (a, b) = (agent_with_svid(), agent_with_svid());
        let source = |agent: &test_support::WorkloadApiServer| SvidConfig::WorkloadApi {
            endpoint: agent.endpoint(),
        };
        // Stopped already: the streams `follow` starts end at once, so they make no calls.
        let (background, stop) = (tokio::runtime::Handle::current(), CancellationToken::new());
        stop.cancel();

        let mut first = Identities::default();
        let one = first.get(&source(&a)).await.unwrap();
        let again = first.get(&source(&a)).await.unwrap();
        first.get(&source(&b)).await.unwrap();
        assert_eq!(
            a.calls(),
            1,
            "one fetch for two upstreams naming the endpoint"
        );
        assert_eq!(again.current().serial(), one.current().serial());
        first.follow(&background, &stop);
        assert_eq!(first.followed.len(), 2);

        // The next generation keeps `a` through an unchanged upstream and no longer names `b`.
        let mut second = Identities::inherit(Some(&first));
        second.keep(&source(&a));
        second.follow(&background, &stop);
        assert_eq!(
            second.followed.keys().collect::<Vec<_>>(),
            [&a.endpoint()],
            "only the endpoint still named is followed"
        );
        // A generation naming `a` again takes the same identity without asking the agent.
        let calls = a.calls();
        let mut third = Identities::inherit(Some(&second));
        let kept = third.get(&source(&a)).await.unwrap();
        assert_eq!(kept.current().serial(), one.current().serial());
        assert_eq!(a.calls(), calls, "no new fetch on reload");

        // An agent with nothing to give is asked once per generation, however many blocks
        // name it.
        let silent = test_support::WorkloadApiServer::start();
        let mut fourth = Identities::waiting(Duration::from_millis(300));
        let first_error = fourth.get(&source(&silent)).await.unwrap_err();
        let calls = silent.calls();
        let second_error = fourth.get(&source(&silent)).await.unwrap_err();
        assert_eq!(first_error, second_error);
        assert!(first_error.contains(&silent.endpoint()), "{first_error}");
        assert_eq!(
            silent.calls(),
            calls,
            "the failed endpoint was not asked again"
        );
    }
}
