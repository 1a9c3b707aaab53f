//! rustls configurations for mutual TLS between workloads, verifying SPIFFE IDs.
//!
//! Both sides read the [`WorkloadIdentity`]'s current SVID per handshake (certificate, key and
//! trust bundle), so a rotated SVID applies to the next connection without rebuilding the
//! config, and open connections are never touched.
//!
//! - [`server_config`]: requires a client certificate that chains to the bundle and carries one
//!   SPIFFE ID in the server's own trust domain; presents the current SVID.
//! - [`client_config`]: presents the current SVID; accepts a server whose chain verifies
//!   against the bundle and whose SPIFFE ID is on an allow-list. Host names are not checked:
//!   the SPIFFE ID is the server's identity.
//!
//! Neither side resumes sessions: every connection verifies the peer's current certificate
//! against the current bundle (connections are pooled, so full handshakes are rare).
//!
//! What a handshake established is in [`PeerTls`]; why one failed, as a low-cardinality metric
//! label, in [`HandshakeFailure`].

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName, Error,
    OtherError, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::spiffe_id::SpiffeId;
use crate::workload::WorkloadIdentity;
use crate::x509::{rfc3339, CertError, CertInfo};

/// ALPN of every config here: HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The crypto provider of every config here (aws-lc-rs), so nothing depends on a process-wide
/// default being installed.
pub fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// A server config for `identity`: TLS 1.2 and 1.3, ALPN `http/1.1`, client certificate
/// required (see the module docs).
pub fn server_config(identity: &WorkloadIdentity) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider().clone())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier {
            identity: identity.clone(),
        }))
        .with_cert_resolver(Arc::new(CurrentSvid(identity.clone())));
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// A client config for `identity` that accepts only servers whose SPIFFE ID is in `allowed`
/// (an empty list accepts no server). ALPN `http/1.1`.
pub fn client_config(identity: &WorkloadIdentity, allowed: Vec<SpiffeId>) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider().clone())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
            identity: identity.clone(),
            allowed,
        }))
        .with_client_cert_resolver(Arc::new(CurrentSvid(identity.clone())));
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

// === PeerIdRejected ===

/// Why a peer whose chain verified was still refused (inside rustls'
/// `CertificateError::Other`, so [`HandshakeFailure::classify`] can tell).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdRejected {
    #[error("peer certificate has no usable SPIFFE ID: {0}")]
    NoSpiffeId(CertError),
    #[error("peer {id} is not in trust domain {expected}")]
    WrongTrustDomain { id: SpiffeId, expected: String },
    #[error("server {id} is not one of the expected SPIFFE IDs")]
    NotAllowed { id: SpiffeId },
}

fn rejected(why: PeerIdRejected) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(why))))
}

// === impl CurrentSvid ===

/// Presents the current SVID, as a server and as a client.
#[derive(Debug)]
struct CurrentSvid(WorkloadIdentity);

impl ResolvesServerCert for CurrentSvid {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key().clone())
    }
}

impl ResolvesClientCert for CurrentSvid {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

// === impl SpiffeClientVerifier ===

/// Verifies client certificates against the current bundle, then their SPIFFE ID's trust
/// domain against the server's own.
#[derive(Debug)]
struct SpiffeClientVerifier {
    identity: WorkloadIdentity,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    // No CA names are sent: they would borrow from the swappable SVID, and SVID clients do not
    // choose their certificate by them.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let svid = self.identity.current();
        svid.client_verifier()
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = crate::x509::spiffe_id_of(end_entity)
            .map_err(|e| rejected(PeerIdRejected::NoSpiffeId(e)))?;
        let own = svid.spiffe_id().trust_domain();
        if id.trust_domain() != own {
            return Err(rejected(PeerIdRejected::WrongTrustDomain {
                id,
                expected: own.to_string(),
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

// === impl SpiffeServerVerifier ===

/// Verifies server certificates against the current bundle, then their SPIFFE ID against an
/// allow-list.
#[derive(Debug)]
struct SpiffeServerVerifier {
    identity: WorkloadIdentity,
    allowed: Vec<SpiffeId>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let svid = self.identity.current();
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            svid.roots(),
            intermediates,
            now,
            algorithms().all,
        )?;
        let id = crate::x509::spiffe_id_of(end_entity)
            .map_err(|e| rejected(PeerIdRejected::NoSpiffeId(e)))?;
        if !self.allowed.contains(&id) {
            return Err(rejected(PeerIdRejected::NotAllowed { id }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

// === PeerTls ===

/// What a completed handshake established about the peer, for authorization and spans
/// (the semantic conventions' `tls.*` attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// The peer's SPIFFE ID (`None` only when the config did not require a certificate).
    pub spiffe_id: Option<SpiffeId>,
    /// `tls.protocol.version`: `1.2`, `1.3`.
    pub protocol_version: &'static str,
    /// `tls.cipher`: the IANA name, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: &'static str,
    /// `tls.next_protocol`: the ALPN protocol, e.g. `http/1.1`.
    pub next_protocol: Option<String>,
    /// `tls.client.subject` / `tls.server.subject` of the peer's leaf (often empty for SVIDs).
    pub peer_subject: Option<String>,
    /// `tls.client.not_after` / `tls.server.not_after` of the peer's leaf, RFC 3339.
    pub peer_not_after: Option<String>,
    /// `tls.resumed`.
    pub resumed: bool,
}

impl PeerTls {
    /// Reads a finished connection (server or client side).
    pub fn of(conn: &CommonState) -> PeerTls {
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| CertInfo::parse(c).ok());
        PeerTls {
            spiffe_id: leaf.as_ref().and_then(|l| l.spiffe_id.clone().ok()),
            protocol_version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
                _ => "unknown",
            },
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("unknown"),
            next_protocol: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            peer_subject: leaf.as_ref().map(|l| l.subject.clone()),
            peer_not_after: leaf.as_ref().map(|l| rfc3339(l.not_after)),
            resumed: matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
        }
    }
}

// === HandshakeFailure ===

/// Why a handshake failed, as a closed set for metric labels
/// (`…_tls_handshake_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The client sent no certificate.
    NoClientCertificate,
    /// The peer's chain does not lead to the trust bundle (another CA, self-signed).
    UnknownIssuer,
    /// The peer's certificate has expired.
    Expired,
    /// The peer's certificate is not valid yet.
    NotYetValid,
    /// The chain verified but carries no (single, valid) SPIFFE ID.
    NoSpiffeId,
    /// The peer's SPIFFE ID is in another trust domain.
    WrongTrustDomain,
    /// A server's SPIFFE ID is not on the client's allow-list.
    PeerNotAllowed,
    /// Any other certificate problem (bad signature, wrong key usage, …).
    BadCertificate,
    /// The bytes were not TLS (e.g. plain HTTP on the mTLS port).
    NotTls,
    /// The peer alerted us or broke the protocol.
    Protocol,
    /// The handshake did not finish in time.
    Timeout,
    /// The connection closed or failed underneath.
    Io,
}

impl HandshakeFailure {
    /// Every reason, for pre-registering metric series.
    pub const ALL: [HandshakeFailure; 12] = [
        HandshakeFailure::NoClientCertificate,
        HandshakeFailure::UnknownIssuer,
        HandshakeFailure::Expired,
        HandshakeFailure::NotYetValid,
        HandshakeFailure::NoSpiffeId,
        HandshakeFailure::WrongTrustDomain,
        HandshakeFailure::PeerNotAllowed,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::NotTls,
        HandshakeFailure::Protocol,
        HandshakeFailure::Timeout,
        HandshakeFailure::Io,
    ];

    /// The label value: `no_client_certificate`, `unknown_issuer`, `expired`, …
    pub const fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::NoClientCertificate => "no_client_certificate",
            HandshakeFailure::UnknownIssuer => "unknown_issuer",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::NotYetValid => "not_yet_valid",
            HandshakeFailure::NoSpiffeId => "no_spiffe_id",
            HandshakeFailure::WrongTrustDomain => "wrong_trust_domain",
            HandshakeFailure::PeerNotAllowed => "peer_not_allowed",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Io => "io",
        }
    }

    /// The reason for a rustls error.
    pub fn classify(error: &Error) -> HandshakeFailure {
        match error {
            Error::NoCertificatesPresented => HandshakeFailure::NoClientCertificate,
            Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => HandshakeFailure::UnknownIssuer,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    HandshakeFailure::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    HandshakeFailure::NotYetValid
                }
                CertificateError::Other(OtherError(e)) => {
                    match e.downcast_ref::<PeerIdRejected>() {
                        Some(PeerIdRejected::NoSpiffeId(_)) => HandshakeFailure::NoSpiffeId,
                        Some(PeerIdRejected::WrongTrustDomain { .. }) => {
                            HandshakeFailure::WrongTrustDomain
                        }
                        Some(PeerIdRejected::NotAllowed { .. }) => HandshakeFailure::PeerNotAllowed,
                        None => HandshakeFailure::BadCertificate,
                    }
                }
                _ => HandshakeFailure::BadCertificate,
            },
            Error::InvalidMessage(_) => HandshakeFailure::NotTls,
            _ => HandshakeFailure::Protocol,
        }
    }

    /// The reason for an I/O error from a TLS stream (tokio-rustls wraps rustls errors in
    /// `io::Error`).
    pub fn classify_io(error: &std::io::Error) -> HandshakeFailure {
        match error.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
            Some(e) => HandshakeFailure::classify(e),
            None if error.kind() == std::io::ErrorKind::TimedOut => HandshakeFailure::Timeout,
            None => HandshakeFailure::Io,
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
