//! Workload identity for Vantage: who a workload is (its SPIFFE ID), the X.509 SVID that proves
//! it, and mutual TLS between workloads that checks it. Shared by the gateway, the service kit,
//! the stack runner and the tests.
//!
//! - [`SpiffeId`], [`TrustDomain`] and [`IdTemplate`] (env `SPIFFE_ID_TEMPLATE`, default
//!   `spiffe://{trust_domain}/{workload}`; trust domain env `SPIFFE_TRUST_DOMAIN`, default
//!   `vantage.local`).
//! - [`SvidSource`] / [`SvidPaths`]: `SVID_DIR` in the cert-manager csi-driver-spiffe layout
//!   (`tls.crt`, `tls.key`, `ca.crt`) or SPIRE spiffe-helper's (`svid.pem`, `svid_key.pem`,
//!   `svid_bundle.pem`), or the three `SVID_*_FILE`s. [`Svid::load`] checks them; every error
//!   names the file and the reason.
//!   Or `SPIFFE_ENDPOINT_SOCKET`: the SPIFFE Workload API of a SPIRE agent.
//! - [`WorkloadIdentity`]: the current SVID, re-read when the files change or streamed from the
//!   Workload API ([`WorkloadIdentity::connect`]): rotation without a restart; a broken new SVID
//!   keeps the old one.
//! - [`tls`]: rustls server and client configs that read the current SVID per handshake and
//!   verify the peer's SPIFFE ID; [`spiffe_id_of`] for a peer certificate from elsewhere
//!   (OpenSSL in the gateway).
//! - [`dev_ca`]: a development CA (rcgen) for `stack certs`, local runs and tests.
//!
//! # How to use
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use identity::{SvidPaths, TrustDomain, WorkloadIdentity};
//! use tokio_util::sync::CancellationToken;
//!
//! let paths = SvidPaths::detect("/var/run/secrets/spiffe".as_ref())?;
//! let id = WorkloadIdentity::load(&paths, Some(&TrustDomain::default()))?;
//! let shutdown = CancellationToken::new();
//! tokio::spawn(id.clone().watch(identity::DEFAULT_POLL_INTERVAL, shutdown.clone()));
//! let server = identity::tls::server_config(&id); // for tokio-rustls' TlsAcceptor
//! let client = identity::tls::client_config(&id, vec!["spiffe://vantage.local/inventory".parse()?]);
//! # Ok(()) }
//! ```

pub mod dev_ca;
mod spiffe_id;
mod svid;
pub mod tls;
mod workload;
mod workload_api;
mod x509;

pub use spiffe_id::{
    IdTemplate, SpiffeId, SpiffeIdError, TrustDomain, DEFAULT_ID_TEMPLATE, DEFAULT_TRUST_DOMAIN,
};
pub use svid::{
    Layout, Svid, SvidError, SvidOrigin, SvidPaths, SvidProblem, SvidSource, SvidSourceError,
    SPIFFE_ENDPOINT_SOCKET_ENV, SVID_BUNDLE_FILE_ENV, SVID_CERT_FILE_ENV, SVID_DIR_ENV,
    SVID_KEY_FILE_ENV,
};
pub use workload::{Reload, WorkloadIdentity, DEFAULT_POLL_INTERVAL, DEFAULT_WORKLOAD_API_WAIT};
pub use workload_api::WorkloadApiError;
pub use x509::{rfc3339, spiffe_id_of, CertError, CertInfo};

/// `SPIFFE_TRUST_DOMAIN`: the trust domain (default [`DEFAULT_TRUST_DOMAIN`]).
pub const SPIFFE_TRUST_DOMAIN_ENV: &str = "SPIFFE_TRUST_DOMAIN";
/// `SPIFFE_ID_TEMPLATE`: workload → SPIFFE ID (default [`DEFAULT_ID_TEMPLATE`]).
pub const SPIFFE_ID_TEMPLATE_ENV: &str = "SPIFFE_ID_TEMPLATE";
