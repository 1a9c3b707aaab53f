//! X.509 SVIDs from the SPIFFE Workload API (a SPIRE agent's socket), through the `spiffe`
//! crate's client: the first one fetched at start, later ones followed on the agent's stream.
//!
//! Every SVID received passes the same checks as one read from files ([`Svid`]), so a bad one
//! from a misconfigured agent is rejected with the reason and the previous one stays current.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::{WorkloadApiClient, X509Context};
use tokio_util::sync::CancellationToken;

use crate::spiffe_id::TrustDomain;
use crate::svid::{Svid, SvidError, SvidProblem};
use crate::workload::WorkloadIdentity;

/// The first wait before reconnecting to a Workload API that failed.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why no SVID came from the Workload API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadApiError {
    /// Nothing usable arrived in time: the agent is unreachable, or it has not (yet) issued
    /// an identity to this workload. `last` is the last answer it gave.
    #[error("the Workload API at {endpoint} gave no SVID within {waited:?} (last: {last}); is the agent running and this workload registered?")]
    NoSvid {
        endpoint: String,
        waited: Duration,
        last: String,
    },
    /// The agent sent an SVID that does not pass the checks.
    #[error("{0}")]
    Svid(#[from] SvidError),
}

/// Fetches the current SVID, retrying (with back-off) while the agent is unreachable or has
/// no identity for this workload, for up to `timeout`. A received SVID that fails the checks
/// is an error at once.
pub(crate) async fn fetch(
    endpoint: &str,
    trust_domain: Option<&TrustDomain>,
    timeout: Duration,
) -> Result<Svid, WorkloadApiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let attempt = async {
            let client = WorkloadApiClient::connect_to(endpoint).await?;
            client.fetch_x509_context().await
        };
        let last = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(context)) => return Ok(svid_of(endpoint, &context, trust_domain)?),
            Ok(Err(error)) => error.to_string(),
            Err(_) => "no answer".to_owned(),
        };
        let now = tokio::time::Instant::now();
        if now + backoff >= deadline {
            return Err(WorkloadApiError::NoSvid {
                endpoint: endpoint.to_owned(),
                waited: timeout,
                last,
            });
        }
        tracing::debug!(endpoint, %last, "No SVID from the Workload API yet; retrying.");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Follows the agent's stream of X.509 contexts until `shutdown`, making each new SVID
/// current; reconnects with back-off (up to [`MAX_BACKOFF`]) when the stream breaks, keeping
/// the current SVID meanwhile.
pub(crate) async fn follow(
    identity: WorkloadIdentity,
    endpoint: String,
    shutdown: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let broke = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            broke = stream(&identity, &endpoint, &mut backoff) => broke,
        };
        tracing::warn!(
            endpoint,
            error = %broke,
            retry_in = ?backoff,
            still_serving = %identity.current().serial(),
            "Lost the Workload API stream; the current SVID stays in use."
        );
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's stream: returns why it ended. Resets `backoff` once a message arrives.
async fn stream(identity: &WorkloadIdentity, endpoint: &str, backoff: &mut Duration) -> String {
    let client = match WorkloadApiClient::connect_to(endpoint).await {
        Ok(client) => client,
        Err(error) => return error.to_string(),
    };
    let mut updates = match client.stream_x509_contexts().await {
        Ok(updates) => updates,
        Err(error) => return error.to_string(),
    };
    while let Some(update) = updates.next().await {
        let context = match update {
            Ok(context) => context,
            Err(error) => return error.to_string(),
        };
        *backoff = FIRST_BACKOFF;
        match svid_of(endpoint, &context, identity.trust_domain()) {
            Ok(svid) if svid.cert_chain() == identity.current().cert_chain() => {}
            Ok(svid) => {
                tracing::info!(
                    spiffe_id = %svid.spiffe_id(),
                    serial = svid.serial(),
                    not_after = %crate::x509::rfc3339(svid.not_after()),
                    endpoint,
                    "Received a new SVID from the Workload API."
                );
                identity.install(Arc::new(svid));
            }
            Err(error) => tracing::warn!(
                %error,
                still_serving = %identity.current().serial(),
                "Rejected an SVID from the Workload API; the previous SVID stays in use."
            ),
        }
    }
    "the agent closed the stream".to_owned()
}

/// The context's default SVID with the bundle of its own trust domain, checked.
fn svid_of(
    endpoint: &str,
    context: &X509Context,
    trust_domain: Option<&TrustDomain>,
) -> Result<Svid, SvidError> {
    let Some(x509) = context.default_svid() else {
        return Err(SvidError::new(
            &PathBuf::from(endpoint),
            SvidProblem::NotInResponse("SVID"),
        ));
    };
    let der = |c: &spiffe::Certificate| CertificateDer::from(c.as_bytes().to_vec());
    let chain = x509.cert_chain().iter().map(der).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        x509.private_key().as_bytes().to_vec(),
    ));
    let bundle = context
        .bundle_set()
        .get(x509.spiffe_id().trust_domain())
        .map(|b| b.authorities().iter().map(der).collect())
        .unwrap_or_default();
    let svid = Svid::from_workload_api(endpoint, chain, key, bundle, SystemTime::now())?;
    if let Some(trust_domain) = trust_domain {
        svid.check_trust_domain(trust_domain)?;
    }
    Ok(svid)
}
