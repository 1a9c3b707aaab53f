//! The service's own SVID at run time: loaded once at start (a bad file stops the start with
//! the file and the reason), re-read when the files change or streamed from the SPIFFE Workload
//! API (rotation without a restart), its
//! expiry exported as `shop_certificate_expiry_seconds{spiffe_id}`, and the HTTP client that
//! presents it to other services.

use std::time::{Duration, SystemTime};

use identity::{SpiffeId, SvidPaths, SvidSource, WorkloadApiError, WorkloadIdentity};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::peer::IdentityConfig;

/// How often the SVID files are looked at and the expiry gauge refreshed.
pub(crate) const POLL_INTERVAL: Duration = identity::DEFAULT_POLL_INTERVAL;

/// Loads the SVID `config` names (`None` in the mesh modes, where the sidecar holds it),
/// checking it is in the configured trust domain: from its files, or from the Workload API
/// (waiting up to [`identity::DEFAULT_WORKLOAD_API_WAIT`] for the first one).
pub(crate) async fn load(
    config: &IdentityConfig,
) -> Result<Option<WorkloadIdentity>, WorkloadApiError> {
    if config.mode.is_mesh() {
        return Ok(None);
    }
    let Some(source) = &config.svid else {
        return Ok(None);
    };
    let trust_domain = Some(config.ids.trust_domain());
    let id = match source {
        SvidSource::WorkloadApi(endpoint) => {
            WorkloadIdentity::connect(endpoint, trust_domain, identity::DEFAULT_WORKLOAD_API_WAIT)
                .await?
        }
        SvidSource::Dir(dir) => WorkloadIdentity::load(&SvidPaths::detect(dir)?, trust_domain)?,
        SvidSource::Files(paths) => WorkloadIdentity::load(paths, trust_domain)?,
    };
    let svid = id.current();
    tracing::info!(
        spiffe_id = %svid.spiffe_id(),
        serial = svid.serial(),
        not_after = %identity::rfc3339(svid.not_after()),
        "Loaded the service's SVID."
    );
    Ok(Some(id))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ExpiryLabels {
    spiffe_id: String,
}

/// Registers `shop_certificate_expiry_seconds{spiffe_id}` (seconds until the SVID in use
/// expires; negative once it has) and returns the task that keeps it and the SVID current.
pub(crate) fn watch(
    id: WorkloadIdentity,
    registry: &observability::metrics::MetricsRegistry,
) -> impl FnOnce(CancellationToken) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
{
    let expiry = Family::<ExpiryLabels, Gauge>::default();
    registry.register_with_unit(
        "shop_certificate_expiry",
        "Time until the SVID the service presents expires",
        prometheus_client::registry::Unit::Seconds,
        expiry.clone(),
    );
    move |shutdown: CancellationToken| {
        Box::pin(async move {
            let watcher = tokio::spawn(id.clone().watch(POLL_INTERVAL, shutdown.clone()));
            let mut shown: Option<SpiffeId> = None;
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            loop {
                let svid = id.current();
                if shown.as_ref() != Some(svid.spiffe_id()) {
                    if let Some(old) = shown.take() {
                        expiry.remove(&ExpiryLabels {
                            spiffe_id: old.to_string(),
                        });
                    }
                    shown = Some(svid.spiffe_id().clone());
                }
                let left = match svid.not_after().duration_since(SystemTime::now()) {
                    Ok(d) => d.as_secs() as i64,
                    Err(e) => -(e.duration().as_secs() as i64),
                };
                expiry
                    .get_or_create(&ExpiryLabels {
                        spiffe_id: svid.spiffe_id().to_string(),
                    })
                    .set(left);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
            }
            let _ = watcher.await;
        })
    }
}

/// A client for calls to `callees` (workload names): over mutual TLS with the service's SVID,
/// accepting only servers whose SPIFFE ID is one of theirs, when `id` is set; plain (for the
/// sidecar to upgrade) in the mesh modes.
pub(crate) fn http_client(
    id: Option<&WorkloadIdentity>,
    config: &IdentityConfig,
    callees: &[&str],
    timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    let builder = reqwest::Client::builder().timeout(timeout);
    let builder = match id {
        None => builder,
        Some(id) => {
            let allowed = callees
                .iter()
                .filter_map(|w| config.ids.id_of(w).ok())
                .collect();
            let tls = identity::tls::client_config(id, allowed);
            builder.tls_backend_preconfigured((*tls).clone())
        }
    };
    builder.build()
}
