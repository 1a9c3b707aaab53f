//! The workload's current SVID, swapped when its files change or the Workload API sends a new
//! one.

use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::spiffe_id::TrustDomain;
use crate::svid::{Svid, SvidError, SvidPaths};
use crate::workload_api::{self, WorkloadApiError};

/// How often [`WorkloadIdentity::watch`] looks at the files by default: every second.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long a workload waits by default for a SPIRE agent to hand out its first SVID
/// ([`WorkloadIdentity::connect`]): 30 s. An agent answers only once it has attested the
/// workload, which can take a few seconds after a pod starts.
pub const DEFAULT_WORKLOAD_API_WAIT: Duration = Duration::from_secs(30);

/// What [`WorkloadIdentity::reload`] found.
#[derive(Debug, Clone)]
pub enum Reload {
    /// The files are as last read (or as last rejected).
    Unchanged,
    /// A new SVID was loaded and is now current.
    Rotated(Arc<Svid>),
}

/// The workload's SVID, re-read when its files change (or streamed from the SPIFFE Workload
/// API, see [`connect`](Self::connect)): rotation without a restart.
///
/// Readers call [`current`](Self::current) per use (each TLS handshake does), so a new SVID
/// applies to the next connection while connections already open finish with the old one. A
/// new set of files that does not load (half-written, expired, key and certificate not
/// matching, another trust domain) is rejected: the old SVID stays current, the reason is
/// logged once, and the files are tried again when they change.
///
/// Cloning is cheap; clones share the SVID.
#[derive(Clone)]
pub struct WorkloadIdentity {
    inner: Arc<Inner>,
}

struct Inner {
    source: Source,
    trust_domain: Option<TrustDomain>,
    current: ArcSwap<Svid>,
    changes: watch::Sender<Arc<Svid>>,
}

/// Where new SVIDs come from.
enum Source {
    Files {
        paths: SvidPaths,
        /// Hash of the files' contents at the last load attempt, good or bad.
        seen: Mutex<u64>,
    },
    WorkloadApi {
        endpoint: String,
    },
}

impl std::fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("current", &*self.inner.current.load())
            .finish_non_exhaustive()
    }
}

impl WorkloadIdentity {
    /// Loads the SVID at `paths`; with `trust_domain`, its ID must be in it (now and after
    /// every rotation).
    pub fn load(
        paths: &SvidPaths,
        trust_domain: Option<&TrustDomain>,
    ) -> Result<WorkloadIdentity, SvidError> {
        let fingerprint = fingerprint(paths);
        let svid = Arc::new(load_checked(paths, trust_domain)?);
        let source = Source::Files {
            paths: paths.clone(),
            seen: Mutex::new(fingerprint),
        };
        Ok(WorkloadIdentity::new(source, trust_domain, svid))
    }

    /// Fetches the SVID from the SPIFFE Workload API at `endpoint` (a SPIRE agent's
    /// `unix:///…/agent.sock`, the value of `SPIFFE_ENDPOINT_SOCKET`), waiting up to `timeout`
    /// for the first one: an agent answers only once it has attested the workload. With
    /// `trust_domain`, its ID must be in it. The SVID is the agent's default (first) one and
    /// the bundle that of its own trust domain; federated bundles are not used.
    ///
    /// [`watch`](Self::watch) then follows the agent's stream of updates (rotation), and
    /// reconnects when the agent restarts.
    pub async fn connect(
        endpoint: &str,
        trust_domain: Option<&TrustDomain>,
        timeout: Duration,
    ) -> Result<WorkloadIdentity, WorkloadApiError> {
        let svid = Arc::new(workload_api::fetch(endpoint, trust_domain, timeout).await?);
        let source = Source::WorkloadApi {
            endpoint: endpoint.to_owned(),
        };
        Ok(WorkloadIdentity::new(source, trust_domain, svid))
    }

    fn new(source: Source, trust_domain: Option<&TrustDomain>, svid: Arc<Svid>) -> Self {
        let (changes, _) = watch::channel(svid.clone());
        WorkloadIdentity {
            inner: Arc::new(Inner {
                source,
                trust_domain: trust_domain.cloned(),
                current: ArcSwap::new(svid),
                changes,
            }),
        }
    }

    /// Makes `svid` current and tells the subscribers.
    pub(crate) fn install(&self, svid: Arc<Svid>) {
        self.inner.current.store(svid.clone());
        self.inner.changes.send_replace(svid);
    }

    pub(crate) fn trust_domain(&self) -> Option<&TrustDomain> {
        self.inner.trust_domain.as_ref()
    }

    /// The SVID in use now.
    pub fn current(&self) -> Arc<Svid> {
        self.inner.current.load_full()
    }

    /// The files it is read from; `None` when it comes from the Workload API.
    pub fn paths(&self) -> Option<&SvidPaths> {
        match &self.inner.source {
            Source::Files { paths, .. } => Some(paths),
            Source::WorkloadApi { .. } => None,
        }
    }

    /// The Workload API endpoint it follows; `None` when it is read from files.
    pub fn workload_api_endpoint(&self) -> Option<&str> {
        match &self.inner.source {
            Source::Files { .. } => None,
            Source::WorkloadApi { endpoint } => Some(endpoint),
        }
    }

    /// Every SVID that becomes current, starting with the current one (for metrics such as
    /// the certificate's expiry).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Svid>> {
        self.inner.changes.subscribe()
    }

    /// Looks at the files once: when their contents changed since the last attempt, loads
    /// them and, if they are good, makes them current. A bad set is returned as the error and
    /// not tried again until the files change once more. Always `Unchanged` for the Workload
    /// API, whose updates [`watch`](Self::watch) receives.
    pub fn reload(&self) -> Result<Reload, SvidError> {
        let Source::Files { paths, seen } = &self.inner.source else {
            return Ok(Reload::Unchanged);
        };
        let fingerprint = fingerprint(paths);
        {
            let mut seen = seen.lock();
            if *seen == fingerprint {
                return Ok(Reload::Unchanged);
            }
            *seen = fingerprint;
        }
        let svid = Arc::new(load_checked(paths, self.inner.trust_domain.as_ref())?);
        self.install(svid.clone());
        Ok(Reload::Rotated(svid))
    }

    /// Keeps the SVID current until `shutdown` is cancelled, logging each rotation (SPIFFE ID,
    /// serial, expiry) and each rejected SVID (the file or endpoint, and the reason): polls
    /// the files every `interval`, or follows the Workload API's stream of updates
    /// (reconnecting with a back-off of up to 30 s when it breaks; `interval` is unused).
    pub async fn watch(self, interval: Duration, shutdown: CancellationToken) {
        if let Source::WorkloadApi { endpoint } = &self.inner.source {
            let endpoint = endpoint.clone();
            return workload_api::follow(self, endpoint, shutdown).await;
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.reload() {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Rotated(svid)) => tracing::info!(
                    spiffe_id = %svid.spiffe_id(),
                    serial = svid.serial(),
                    not_after = %crate::x509::rfc3339(svid.not_after()),
                    "Loaded a new SVID."
                ),
                Err(error) => tracing::warn!(
                    %error,
                    still_serving = %self.current().serial(),
                    "Rejected new SVID files; the previous SVID stays in use."
                ),
            }
        }
    }
}

fn load_checked(paths: &SvidPaths, td: Option<&TrustDomain>) -> Result<Svid, SvidError> {
    let svid = Svid::load(paths)?;
    if let Some(td) = td {
        svid.check_trust_domain(td)?;
    }
    Ok(svid)
}

/// A hash of the three files' contents (a missing file hashes as absent). Contents rather than
/// modification times: csi-driver-spiffe swaps a symlinked directory, and spiffe-helper may
/// rewrite files within the same second.
fn fingerprint(paths: &SvidPaths) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in [&paths.cert, &paths.key, &paths.bundle] {
        std::fs::read(p).ok().hash(&mut h);
    }
    h.finish()
}
