//! The running configuration: the validated [`Config`] compiled into live objects (upstream
//! pools, key sets, limiters). Swapped atomically on reload; requests in flight keep the
//! `Arc<Runtime>` they started with, so a reload never drops them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use observability::http_span::HttpTracer;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::auth::jwt::Authenticator;
use crate::auth::keys::IssuerKeys;
use crate::config::{Config, ConfigError, ConfigErrors, RouteConfig};
use crate::metrics::Metrics;
use crate::ratelimit::Policy;
use crate::upstream::Upstream;

/// A route with its upstream and limit policies resolved.
pub(crate) struct Route {
    pub(crate) config: RouteConfig,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) limits: Vec<Arc<Policy>>,
}

/// One generation of the gateway's configuration, live.
pub(crate) struct Runtime {
    pub(crate) config: Config,
    pub(crate) routes: Vec<Arc<Route>>,
    pub(crate) upstreams: BTreeMap<String, Arc<Upstream>>,
    pub(crate) policies: BTreeMap<String, Arc<Policy>>,
    pub(crate) auth: Authenticator,
    /// Stops this generation's background tasks (health checks, key refresh, pruning).
    stop: CancellationToken,
}

/// How long start-up and reload wait for JWKS URLs before serving anyway (the keys keep
/// loading in the background and `/readyz` says so).
const INITIAL_KEY_WAIT: Duration = Duration::from_secs(3);

impl Runtime {
    /// Compiles `config` and starts its background tasks on `background`.
    pub(crate) async fn start(
        config: Config,
        background: &Handle,
    ) -> Result<Arc<Runtime>, ConfigErrors> {
        let stop = CancellationToken::new();
        let mut errors = Vec::new();
        let mut issuers = BTreeMap::new();
        for (name, cfg) in &config.issuers {
            match IssuerKeys::new(name.clone(), cfg.clone(), background.clone()) {
                Ok(keys) => {
                    issuers.insert(name.clone(), keys);
                }
                Err(e) => errors.push(ConfigError {
                    location: format!("issuers.{name}"),
                    message: e.to_string(),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        // Issuers load in turn; each waits at most INITIAL_KEY_WAIT for its JWKS.
        for keys in issuers.values() {
            keys.start(stop.clone(), INITIAL_KEY_WAIT).await;
        }

        let mut upstreams: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
        for (name, cfg) in &config.upstreams {
            let mut addresses = Vec::new();
            for (i, endpoint) in cfg.endpoints.iter().enumerate() {
                match resolve(endpoint).await {
                    Ok(addr) => addresses.push(addr),
                    Err(message) => errors.push(ConfigError {
                        location: format!("upstreams.{name}.endpoints[{i}]"),
                        message,
                    }),
                }
            }
            upstreams.insert(
                name.clone(),
                Upstream::new(name.clone(), cfg.clone(), addresses),
            );
        }
        if !errors.is_empty() {
            stop.cancel();
            return Err(ConfigErrors(errors));
        }
        for u in upstreams.values() {
            u.start_health_checks(background, stop.clone());
        }
        let policies: BTreeMap<String, Arc<Policy>> = config
            .rate_limits
            .iter()
            .map(|(n, c)| (n.clone(), Policy::new(n.clone(), c.clone())))
            .collect();
        for p in policies.values() {
            p.start_pruning(background, stop.clone());
        }
        let routes = config
            .routes
            .iter()
            .map(|r| {
                Arc::new(Route {
                    config: r.clone(),
                    upstream: Arc::clone(&upstreams[&r.upstream]),
                    limits: r
                        .rate_limits
                        .iter()
                        .map(|l| Arc::clone(&policies[l]))
                        .collect(),
                })
            })
            .collect();
        Ok(Arc::new(Runtime {
            config,
            routes,
            upstreams,
            policies,
            auth: Authenticator::new(issuers),
            stop,
        }))
    }

    /// The route for a request (rules in [`crate::routing`]); `path` is normalised.
    pub(crate) fn route_for(
        &self,
        host: Option<&str>,
        path: &str,
        method: &http::Method,
    ) -> Result<&Arc<Route>, crate::problem::GatewayError> {
        crate::routing::select(&self.routes, host, path, method)
    }

    /// Ready when every issuer has keys.
    pub(crate) fn ready(&self) -> bool {
        self.auth.issuers().all(|i| i.is_ready())
    }

    /// Stops this generation's background tasks.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// Refreshes gauges that are read rather than counted.
    pub(crate) fn update_gauges(&self, metrics: &Metrics) {
        for (name, u) in &self.upstreams {
            metrics
                .available_endpoints
                .get_or_create(&crate::metrics::UpstreamLabels {
                    upstream: name.clone(),
                })
                .set(u.available_endpoints() as i64);
        }
        for (name, p) in &self.policies {
            metrics
                .ratelimit_keys
                .get_or_create(&crate::metrics::PolicyLabels {
                    policy: name.clone(),
                })
                .set(p.tracked_keys() as i64);
        }
    }
}

/// Resolves `host:port`, preferring IPv4.
async fn resolve(endpoint: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(addr) = endpoint.parse() {
        return Ok(addr);
    }
    let addrs: Vec<_> = tokio::net::lookup_host(endpoint)
        .await
        .map_err(|e| format!("cannot resolve {endpoint:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{endpoint:?} resolves to no address"))
}

/// What the proxy, the admin endpoints and the reloader share.
pub(crate) struct Shared {
    pub(crate) current: ArcSwap<Runtime>,
    pub(crate) metrics: Metrics,
    pub(crate) background: Handle,
    pub(crate) config_path: PathBuf,
    /// The admin bearer token, read once from the env var the config names.
    pub(crate) admin_token: Option<String>,
    /// Starts each request's SERVER span.
    pub(crate) tracer: HttpTracer,
}

impl Shared {
    /// Swaps in a new generation and stops the old one's background tasks.
    pub(crate) fn install(&self, next: Arc<Runtime>) {
        let previous = self.current.swap(next);
        previous.stop();
    }
}
