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
    // The agent's last answer, for the error; an attempt cut short by the deadline keeps it.
    let mut last = "no answer".to_owned();
    loop {
        let attempt = async {
            let client = WorkloadApiClient::connect_to(endpoint).await?;
            client.fetch_x509_context().await
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(context)) => return Ok(svid_of(endpoint, &context, trust_domain)?),
            Ok(Err(error)) => last = error.to_string(),
            Err(_) => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(WorkloadApiError::NoSvid {
                endpoint: endpoint.to_owned(),
                waited: timeout,
                last: std::mem::take(&mut last),
            });
        }
        tracing::debug!(endpoint, %last, "No SVID from the Workload API yet; retrying.");
        // The last attempt comes at the deadline at the latest: the whole wait is used.
        tokio::time::sleep_until((now + backoff).min(deadline)).await;
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
            // The agent sends the current state on every (re)connection, and again when only
            // the bundle changes (a CA added or removed): that is an update too.
            Ok(svid) if same(&svid, &identity.current()) => {}
            Ok(svid) => {
                tracing::info!(
                    spiffe_id = %svid.spiffe_id(),
                    serial = svid.serial(),
                    not_after = %crate::x509::rfc3339(svid.not_after()),
                    endpoint,
                    bundle_certificates = svid.bundle().len(),
                    "Received a new SVID or trust bundle from the Workload API."
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

/// Whether `a` and `b` are the same SVID with the same trust bundle.
fn same(a: &Svid, b: &Svid) -> bool {
    a.cert_chain() == b.cert_chain() && a.bundle() == b.bundle()
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
