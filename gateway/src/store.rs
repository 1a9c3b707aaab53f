//! Shared state in Redis: the stores a policy names under `stores`, used by rate-limit policies
//! with `store:` ([`redis_gcra`]) and by token revocation (`crate::revocation`).
//!
//! # How to use
//! [`Store::new`] builds a store from its [`StoreConfig`] without connecting: the connection is
//! made by the first operation and re-made after any I/O error (the `redis` crate's connection
//! manager), so a Redis that is down at start or goes away later needs no restart. Every
//! operation goes through [`Store::run`], which bounds it by `timeout_ms` and records failures:
//! the `gateway_store_errors_total` counter, the `gateway_store_up` gauge, and the store's
//! entry in `/readyz`. A store failing for longer than [`REBUILD_AFTER`] also gets a brand-new
//! connection (a Redis behind a network partition never closes the old one). What a failed
//! operation means for a request is the caller's `on_error`.

pub(crate) mod redis_gcra;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{OnError, StoreConfig};

/// How long a store may fail before its connection is replaced (and then at most this often).
pub(crate) const REBUILD_AFTER: Duration = Duration::from_secs(1);

/// How long establishing a connection may take. Operations are still bounded by `timeout_ms`;
/// this only keeps a half-open connect from lingering in the background.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a store operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreError {
    /// No answer within `timeout_ms` (a slow or unreachable Redis).
    Timeout,
    /// The connection failed or Redis answered with an error.
    Unavailable,
}

impl StoreError {
    /// Stable label value: the `kind` of `gateway_store_errors_total` and span attributes.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StoreError::Timeout => "timeout",
            StoreError::Unavailable => "unavailable",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StoreErrorLabels {
    pub(crate) store: String,
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StoreLabels {
    pub(crate) store: String,
}

/// The stores' metrics, registered by `crate::metrics`.
#[derive(Clone, Default)]
pub(crate) struct StoreMetrics {
    /// `gateway_store_errors_total{store, kind}`.
    pub(crate) errors: Family<StoreErrorLabels, Counter>,
    /// `gateway_store_up{store}`: 1 when the last operation succeeded.
    pub(crate) up: Family<StoreLabels, Gauge>,
}

/// One named store: a Redis connection shared by every request of this process.
pub(crate) struct Store {
    pub(crate) name: Arc<str>,
    pub(crate) config: StoreConfig,
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    connection: ArcSwap<ConnectionManager>,
    /// Since when every operation has failed, and when the connection was last replaced.
    down_since: Mutex<Option<Instant>>,
    rebuilt_at: Mutex<Instant>,
    /// Whether the last operation succeeded (true until one fails).
    up: AtomicBool,
    errors: AtomicU64,
    /// The last failure and when it happened, for `/readyz`.
    last_error: Mutex<Option<(StoreError, SystemTime)>>,
    timeouts: Counter,
    failures: Counter,
    up_gauge: Gauge,
}

impl Store {
    /// A store for `config`; connects on first use. Must be called inside a Tokio runtime.
    pub(crate) fn new(
        name: String,
        config: StoreConfig,
        metrics: &StoreMetrics,
    ) -> Result<Arc<Store>, String> {
        let client = redis::Client::open(config.redis.as_str())
            .map_err(|e| format!("not a Redis URL: {e}"))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT.max(config.timeout)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())
                .map_err(|e| format!("cannot set up the Redis connection: {e}"))?;
        let counter = |kind: StoreError| {
            metrics
                .errors
                .get_or_create(&StoreErrorLabels {
                    store: name.clone(),
                    kind: kind.as_str(),
                })
                .clone()
        };
        let up_gauge = metrics
            .up
            .get_or_create(&StoreLabels {
                store: name.clone(),
            })
            .clone();
        up_gauge.set(1);
        Ok(Arc::new(Store {
            timeouts: counter(StoreError::Timeout),
            failures: counter(StoreError::Unavailable),
            up_gauge,
            name: name.into(),
            config,
            client,
            manager_config,
            connection: ArcSwap::from_pointee(connection),
            down_since: Mutex::new(None),
            rebuilt_at: Mutex::new(Instant::now()),
            up: AtomicBool::new(true),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }))
    }

    /// What a decision that needed this store does when it fails.
    pub(crate) fn on_error(&self) -> OnError {
        self.config.on_error
    }

    /// `prefix:part:part…`: every key the gateway writes starts with the store's `key_prefix`.
    pub(crate) fn key(&self, parts: &[&str]) -> String {
        let mut key = String::with_capacity(
            self.config.key_prefix.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>(),
        );
        key.push_str(&self.config.key_prefix);
        for p in parts {
            key.push(':');
            key.push_str(p);
        }
        key
    }

    /// Runs one operation on the connection, bounded by `timeout_ms`; a failure is counted and
    /// remembered for `/readyz`.
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let connection = ConnectionManager::clone(&self.connection.load());
        let result = match tokio::time::timeout(self.config.timeout, op(connection)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(error)) => {
                tracing::debug!(store = %self.name, %error, "Store operation failed.");
                Err(StoreError::Unavailable)
            }
            Err(_) => Err(StoreError::Timeout),
        };
        match &result {
            Ok(_) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    *self.down_since.lock() = None;
                    self.up_gauge.set(1);
                    tracing::info!(store = %self.name, "Store reachable again.");
                }
            }
            Err(kind) => self.failed(*kind),
        }
        result
    }

    fn failed(&self, kind: StoreError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        match kind {
            StoreError::Timeout => self.timeouts.inc(),
            StoreError::Unavailable => self.failures.inc(),
        };
        *self.last_error.lock() = Some((kind, SystemTime::now()));
        if self.up.swap(false, Ordering::Relaxed) {
            self.up_gauge.set(0);
            tracing::warn!(store = %self.name, error = kind.as_str(), on_error = self.config.on_error.name(), "Store unavailable; decisions that need it follow on_error.");
        }
        let now = Instant::now();
        let down_for = now - *self.down_since.lock().get_or_insert(now);
        let mut rebuilt_at = self.rebuilt_at.lock();
        if down_for >= REBUILD_AFTER && now - *rebuilt_at >= REBUILD_AFTER {
            *rebuilt_at = now;
            match ConnectionManager::new_lazy_with_config(
                self.client.clone(),
                self.manager_config.clone(),
            ) {
                Ok(fresh) => self.connection.store(Arc::new(fresh)),
                Err(error) => {
                    tracing::debug!(store = %self.name, %error, "Cannot replace the store connection.")
                }
            }
        }
    }

    /// The store's state for `/readyz`: reported, not judged (a Redis outage is `on_error`'s
    /// business, not a reason to take the gateway out of its balancer).
    pub(crate) fn status_json(&self) -> serde_json::Value {
        let last = *self.last_error.lock();
        serde_json::json!({
            "status": if self.up.load(Ordering::Relaxed) { "up" } else { "down" },
            "on_error": self.config.on_error.name(),
            "errors": self.errors.load(Ordering::Relaxed),
            "last_error": last.map(|(kind, _)| kind.as_str()),
            "last_error_at": last.map(|(_, at)| identity::rfc3339(at)),
        })
    }
}
