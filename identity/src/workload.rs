//! The workload's current SVID, swapped when its files change.

use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::spiffe_id::TrustDomain;
use crate::svid::{Svid, SvidError, SvidPaths};

/// How often [`WorkloadIdentity::watch`] looks at the files by default: every second.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What [`WorkloadIdentity::reload`] found.
#[derive(Debug, Clone)]
pub enum Reload {
    /// The files are as last read (or as last rejected).
    Unchanged,
    /// A new SVID was loaded and is now current.
    Rotated(Arc<Svid>),
}

/// The workload's SVID, re-read when its files change: rotation without a restart.
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
    paths: SvidPaths,
    trust_domain: Option<TrustDomain>,
    current: ArcSwap<Svid>,
    /// Hash of the files' contents at the last load attempt, good or bad.
    seen: Mutex<u64>,
    changes: watch::Sender<Arc<Svid>>,
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
        let (changes, _) = watch::channel(svid.clone());
        Ok(WorkloadIdentity {
            inner: Arc::new(Inner {
                paths: paths.clone(),
                trust_domain: trust_domain.cloned(),
                current: ArcSwap::new(svid),
                seen: Mutex::new(fingerprint),
                changes,
            }),
        })
    }

    /// The SVID in use now.
    pub fn current(&self) -> Arc<Svid> {
        self.inner.current.load_full()
    }

    /// The files it is read from.
    pub fn paths(&self) -> &SvidPaths {
        &self.inner.paths
    }

    /// Every SVID that becomes current, starting with the current one (for metrics such as
    /// the certificate's expiry).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Svid>> {
        self.inner.changes.subscribe()
    }

    /// Looks at the files once: when their contents changed since the last attempt, loads
    /// them and, if they are good, makes them current. A bad set is returned as the error and
    /// not tried again until the files change once more.
    pub fn reload(&self) -> Result<Reload, SvidError> {
        let fingerprint = fingerprint(&self.inner.paths);
        {
            let mut seen = self.inner.seen.lock();
            if *seen == fingerprint {
                return Ok(Reload::Unchanged);
            }
            *seen = fingerprint;
        }
        let svid = Arc::new(load_checked(
            &self.inner.paths,
            self.inner.trust_domain.as_ref(),
        )?);
        self.inner.current.store(svid.clone());
        self.inner.changes.send_replace(svid.clone());
        Ok(Reload::Rotated(svid))
    }

    /// Polls the files every `interval` until `shutdown` is cancelled, logging each rotation
    /// (SPIFFE ID, serial, expiry) and each rejected set (the file and the reason).
    pub async fn watch(self, interval: Duration, shutdown: CancellationToken) {
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
