//! Verification keys of one issuer: loaded from a JWKS URL, a JWKS file or a PEM file, and
//! refreshed on a timer and on demand when a token names an unknown `kid`.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::config::{IssuerConfig, KeySource};

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The document is not a JWKS.
    #[error("not a JWKS document: {0}")]
    Json(#[from] serde_json::Error),
    /// The JWKS holds no key usable for signatures with the allowed algorithms.
    #[error("no usable signing key (asymmetric, `use: sig`, algorithm allowed)")]
    NoUsableKeys,
    /// The PEM could not be parsed as a public key for the algorithm.
    #[error("not a {alg:?} public key in PEM: {reason}")]
    Pem {
        /// The configured algorithm.
        alg: Algorithm,
        /// Parser message.
        reason: String,
    },
    /// The JWKS URL could not be fetched.
    #[error("fetching JWKS failed: {0}")]
    Http(String),
}

/// A key and the one algorithm it may verify.
pub(crate) struct VerificationKey {
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

/// The usable keys of an issuer, by `kid`.
#[derive(Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<VerificationKey>>,
    /// A key without `kid`, used only for tokens without `kid` when it is the only key.
    unnamed: Option<Arc<VerificationKey>>,
}

impl KeySet {
    pub(crate) fn get(&self, kid: Option<&str>) -> Option<Arc<VerificationKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None if self.by_kid.is_empty() => self.unnamed.clone(),
            None if self.by_kid.len() == 1 && self.unnamed.is_none() => {
                self.by_kid.values().next().cloned()
            }
            None => None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_kid.len() + usize::from(self.unnamed.is_some())
    }
}

/// Which algorithm a JWK verifies: its `alg` if present, else derived from its curve. RSA keys
/// without `alg` take the issuer's only RSA algorithm, or are skipped when that is ambiguous.
/// Symmetric (`oct`) keys are never used: a JWKS is public, so an HMAC key in it is a mistake.
fn jwk_algorithm(jwk: &Jwk, allowed: &[Algorithm]) -> Option<Algorithm> {
    if let Some(PublicKeyUse::Encryption) = jwk.common.public_key_use {
        return None;
    }
    let declared = jwk
        .common
        .key_algorithm
        .and_then(|a| Algorithm::from_str(&format!("{a:?}")).ok());
    let alg = match (&jwk.algorithm, declared) {
        (AlgorithmParameters::OctetKey(_), _) => return None,
        (_, Some(alg)) => alg,
        (AlgorithmParameters::EllipticCurve(ec), None) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        (AlgorithmParameters::OctetKeyPair(_), None) => Algorithm::EdDSA,
        (AlgorithmParameters::RSA(_), None) => {
            let mut rsa = allowed
                .iter()
                .filter(|a| a.family() == AlgorithmFamily::Rsa);
            match (rsa.next(), rsa.next()) {
                (Some(a), None) => *a,
                _ => return None,
            }
        }
        _ => return None,
    };
    if alg.family() == AlgorithmFamily::Hmac {
        return None;
    }
    Some(alg)
}

/// Builds a key set from a JWKS, keeping only keys usable with `allowed` (all asymmetric keys
/// when `allowed` is empty).
pub(crate) fn keyset_from_jwks(jwks: &JwkSet, allowed: &[Algorithm]) -> Result<KeySet, KeyError> {
    let mut set = KeySet::default();
    for jwk in &jwks.keys {
        let Some(alg) = jwk_algorithm(jwk, allowed) else {
            continue;
        };
        if !allowed.is_empty() && !allowed.contains(&alg) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let entry = Arc::new(VerificationKey { alg, key });
        match &jwk.common.key_id {
            Some(kid) => {
                set.by_kid.insert(kid.clone(), entry);
            }
            None => set.unnamed = Some(entry),
        }
    }
    if set.len() == 0 {
        return Err(KeyError::NoUsableKeys);
    }
    Ok(set)
}

pub(crate) fn load_jwks_file(path: &Path, allowed: &[Algorithm]) -> Result<KeySet, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let jwks: JwkSet = serde_json::from_str(&text)?;
    keyset_from_jwks(&jwks, allowed)
}

pub(crate) fn load_pem_file(
    path: &Path,
    alg: Algorithm,
    kid: Option<String>,
) -> Result<KeySet, KeyError> {
    let pem = std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let key = match alg.family() {
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&pem),
        AlgorithmFamily::Hmac => {
            return Err(KeyError::Pem {
                alg,
                reason: "symmetric".into(),
            })
        }
    }
    .map_err(|e| KeyError::Pem {
        alg,
        reason: e.to_string(),
    })?;
    let entry = Arc::new(VerificationKey { alg, key });
    let mut set = KeySet::default();
    match kid {
        Some(kid) => {
            set.by_kid.insert(kid, entry);
        }
        None => set.unnamed = Some(entry),
    }
    Ok(set)
}

/// One issuer's keys, with refresh.
pub(crate) struct IssuerKeys {
    pub(crate) name: String,
    pub(crate) config: IssuerConfig,
    set: ArcSwap<KeySet>,
    loaded: AtomicBool,
    /// Single flight: whoever holds this lock fetches; the value is when the last fetch began.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    client: reqwest::Client,
    /// The gateway's SVID for `jwks_tls`: files re-read before each fetch; one from the
    /// Workload API is kept current by its stream.
    jwks_identity: Option<identity::WorkloadIdentity>,
    background: Handle,
}

impl IssuerKeys {
    /// Creates the issuer; file keys are loaded now, URL keys by [`IssuerKeys::start`].
    /// `jwks_identity`: the gateway's SVID for `config.jwks_tls` (from [`Identities`]),
    /// required when that is set.
    ///
    /// [`Identities`]: crate::tls::Identities
    pub(crate) fn new(
        name: String,
        config: IssuerConfig,
        background: Handle,
        jwks_identity: Option<identity::WorkloadIdentity>,
    ) -> Result<Arc<Self>, KeyError> {
        let initial = match &config.keys {
            KeySource::JwksFile { path } => Some(load_jwks_file(path, &config.algorithms)?),
            KeySource::PemFile { path, kid } => {
                Some(load_pem_file(path, config.algorithms[0], kid.clone())?)
            }
            KeySource::JwksUrl { .. } => None,
        };
        let loaded = AtomicBool::new(initial.is_some());
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2));
        if let Some(tls) = &config.jwks_tls {
            // The gateway's SVID as client certificate; only the listed SPIFFE IDs are accepted
            // as the server. Read per handshake, so a rotation (see `refresh`) applies to the
            // next connection.
            let Some(id) = &jwks_identity else {
                return Err(KeyError::Http("jwks_tls needs the gateway's SVID".into()));
            };
            let allowed = tls
                .spiffe_ids
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect();
            let rustls = identity::tls::client_config(id, allowed);
            builder = builder.tls_backend_preconfigured((*rustls).clone());
        }
        let client = builder.build().map_err(|e| KeyError::Http(e.to_string()))?;
        Ok(Arc::new(IssuerKeys {
            name,
            config,
            set: ArcSwap::from_pointee(initial.unwrap_or_default()),
            loaded,
            last_fetch: tokio::sync::Mutex::new(None),
            client,
            jwks_identity,
            background,
        }))
    }

    /// Whether a key set has been loaded at least once.
    pub(crate) fn is_ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self, kid: Option<&str>) -> Option<Arc<VerificationKey>> {
        self.set.load().get(kid)
    }

    /// For URL issuers: fetches now (waiting at most `initial_wait`; not when keys were
    /// loaded already, as for an issuer a reload kept) and then on every `refresh_interval`
    /// until `stop` is cancelled. A failed fetch keeps the last good set.
    pub(crate) async fn start(self: &Arc<Self>, stop: CancellationToken, initial_wait: Duration) {
        if !matches!(self.config.keys, KeySource::JwksUrl { .. }) {
            return;
        }
        if !self.is_ready() {
            let _ = tokio::time::timeout(initial_wait, self.refresh(true)).await;
        }
        let this = Arc::clone(self);
        self.background.spawn(async move {
            loop {
                // Until the first success, retry every second; afterwards on the interval.
                let wait = if this.is_ready() {
                    this.config.refresh_interval
                } else {
                    Duration::from_secs(1)
                };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => { this.refresh(true).await; }
                }
            }
        });
    }

    /// Refreshes because a token named an unknown `kid`. Single flight and rate limited: at most
    /// one fetch per `min_refresh_interval`; concurrent callers wait for the fetch in progress.
    /// Returns whether the key set may have changed.
    pub(crate) async fn refresh_for_unknown_kid(self: &Arc<Self>) -> bool {
        if !matches!(self.config.keys, KeySource::JwksUrl { .. }) {
            return false;
        }
        self.refresh(false).await
    }

    async fn refresh(self: &Arc<Self>, scheduled: bool) -> bool {
        let KeySource::JwksUrl { url } = &self.config.keys else {
            return false;
        };
        let mut last = self.last_fetch.lock().await;
        if !scheduled {
            if let Some(at) = *last {
                if at.elapsed() < self.config.min_refresh_interval {
                    // Someone fetched moments ago (maybe while we waited for the lock).
                    return true;
                }
            }
        }
        *last = Some(Instant::now());
        if let Some(id) = &self.jwks_identity {
            if let Err(error) = id.reload() {
                tracing::warn!(issuer = %self.name, %error, "Rejected new SVID files for the JWKS fetch; keeping the previous SVID.");
            }
        }
        let (client, url2, allowed) = (
            self.client.clone(),
            url.clone(),
            self.config.algorithms.clone(),
        );
        // Fetch on the background runtime so connection pools outlive any one request.
        let fetched = self
            .background
            .spawn(async move {
                let resp = client
                    .get(&url2)
                    .send()
                    .await
                    .map_err(|e| KeyError::Http(e.to_string()))?;
                if !resp.status().is_success() {
                    return Err(KeyError::Http(format!("status {}", resp.status())));
                }
                let jwks: JwkSet = resp
                    .json()
                    .await
                    .map_err(|e| KeyError::Http(e.to_string()))?;
                keyset_from_jwks(&jwks, &allowed)
            })
            .await
            .unwrap_or_else(|e| Err(KeyError::Http(e.to_string())));
        match fetched {
            Ok(set) => {
                tracing::info!(issuer = %self.name, keys = set.len(), "Loaded issuer keys.");
                self.set.store(Arc::new(set));
                self.loaded.store(true, Ordering::Release);
                true
            }
            Err(error) => {
                tracing::warn!(issuer = %self.name, %error, url = %crate::config::redact_url(url), "JWKS fetch failed; keeping the last good key set.");
                false
            }
        }
    }
}
