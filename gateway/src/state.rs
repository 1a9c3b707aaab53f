//! The running configuration: the validated [`Config`] compiled into live objects (upstream
//! pools, key sets, limiters). Swapped atomically on reload; requests in flight keep the
//! `Arc<Runtime>` they started with, so a reload never drops them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use observability::http_span::HttpTracer;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::auth::jwt::Authenticator;
use crate::auth::keys::IssuerKeys;
use crate::config::{Config, ConfigError, ConfigErrors, KeySource, RouteConfig};
use crate::metrics::Metrics;
use crate::ratelimit::Policy;
use crate::revocation::Revocations;
use crate::store::{Store, StoreMetrics};
use crate::tls::{EdgeCerts, Identities, UpstreamTls};
use crate::upstream::Upstream;

/// A route with its upstream and limit policies resolved.
pub(crate) struct Route {
    pub(crate) config: RouteConfig,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) limits: Vec<Arc<Policy>>,
    /// The route's path template ([`crate::routing::template`]: `http.route`, the span name),
    /// made once here instead of per request; every request's span shares it.
    pub(crate) template: Arc<str>,
    /// Its names as span attribute values, shared by every request's spans instead of copied.
    pub(crate) span: RouteSpanValues,
}

/// A route's names as span attribute values (`vantage.route`, `vantage.upstream`): made once per
/// configuration, each request's spans share them.
pub(crate) struct RouteSpanValues {
    /// `vantage.route`: the route's name.
    pub(crate) route: Arc<str>,
    /// `vantage.upstream`: its upstream pool's name.
    pub(crate) upstream: Arc<str>,
}

impl Route {
    pub(crate) fn new(
        config: RouteConfig,
        upstream: Arc<Upstream>,
        limits: Vec<Arc<Policy>>,
    ) -> Self {
        let template = crate::routing::template(&config).into();
        let span = RouteSpanValues {
            route: config.name.as_str().into(),
            upstream: upstream.name.as_str().into(),
        };
        Route {
            config,
            upstream,
            limits,
            template,
            span,
        }
    }
}

/// One generation of the gateway's configuration, live.
pub(crate) struct Runtime {
    pub(crate) config: Config,
    pub(crate) routes: Vec<Arc<Route>>,
    pub(crate) upstreams: BTreeMap<String, Arc<Upstream>>,
    pub(crate) policies: BTreeMap<String, Arc<Policy>>,
    pub(crate) auth: Authenticator,
    /// The stores of `stores`, connected on first use.
    pub(crate) stores: BTreeMap<String, Arc<Store>>,
    /// The contents of each file-keyed issuer's key file as loaded, so a reload can tell
    /// whether the issuer changed.
    key_files: BTreeMap<String, Vec<u8>>,
    /// `Strict-Transport-Security` for responses over TLS, when `edge_tls.hsts_max_age_secs`.
    pub(crate) hsts: Option<http::HeaderValue>,
    /// The gateway's SVIDs from the Workload API, passed on to the next generation.
    identities: Identities,
    /// Stops this generation's background tasks (health checks, key refresh, pruning).
    stop: CancellationToken,
}

/// What a new generation takes from the process and from the generation it replaces.
pub(crate) struct Inherit<'a> {
    /// The running generation, on reload: every store, issuer, upstream and rate-limit policy
    /// whose definition did not change is taken over with its state (connections, keys and
    /// cached tokens, breaker, health and ejections, buckets); only changed ones start fresh.
    pub(crate) previous: Option<&'a Runtime>,
    /// The process's revoked tokens.
    pub(crate) revocations: &'a Arc<Revocations>,
    /// Where stores count their errors.
    pub(crate) store_metrics: &'a StoreMetrics,
}

/// How long start-up and reload wait for JWKS URLs before serving anyway (the keys keep
/// loading in the background and `/readyz` says so).
const INITIAL_KEY_WAIT: Duration = Duration::from_secs(3);

impl Runtime {
    /// Compiles `config` and starts its background tasks on `background`.
    pub(crate) async fn start(
        config: Config,
        background: &Handle,
        inherit: Inherit<'_>,
    ) -> Result<Arc<Runtime>, ConfigErrors> {
        let previous = inherit.previous;
        let stop = CancellationToken::new();
        let mut errors = Vec::new();

        let mut stores = BTreeMap::new();
        for (name, cfg) in &config.stores {
            let kept = previous
                .and_then(|p| p.stores.get(name))
                .filter(|s| s.config == *cfg);
            let store = match kept {
                Some(s) => Ok(Arc::clone(s)),
                None => Store::new(name.clone(), cfg.clone(), inherit.store_metrics),
            };
            match store {
                Ok(s) => {
                    stores.insert(name.clone(), s);
                }
                Err(message) => errors.push(ConfigError {
                    location: format!("stores.{name}"),
                    message,
                }),
            }
        }

        let mut identities = Identities::inherit(previous.map(|p| &p.identities));
        let mut issuers = BTreeMap::new();
        let mut key_files = BTreeMap::new();
        let mut kept_issuers = BTreeSet::new();
        for (name, cfg) in &config.issuers {
            let file = match &cfg.keys {
                KeySource::JwksFile { path } | KeySource::PemFile { path, .. } => {
                    std::fs::read(path).ok()
                }
                KeySource::JwksUrl { .. } => None,
            };
            let kept = previous
                .and_then(|p| {
                    p.auth
                        .issuers()
                        .find(|i| i.name == *name)
                        .filter(|_| p.key_files.get(name) == file.as_ref())
                })
                .filter(|i| i.config == *cfg);
            if let Some(file) = file {
                key_files.insert(name.clone(), file);
            }
            if let Some(keys) = kept {
                if let Some(tls) = &cfg.jwks_tls {
                    identities.keep(&tls.svid);
                }
                kept_issuers.insert(name.clone());
                issuers.insert(name.clone(), Arc::clone(keys));
                continue;
            }
            let jwks_identity = match identities.for_issuer(name, cfg).await {
                Ok(id) => id,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            match IssuerKeys::new(name.clone(), cfg.clone(), background.clone(), jwks_identity) {
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
            // Kept when its definition and its resolved addresses are the same.
            let kept = previous.and_then(|p| p.upstreams.get(name)).filter(|u| {
                u.config == *cfg
                    && u.endpoints
                        .iter()
                        .map(|e| e.addr)
                        .eq(addresses.iter().copied())
            });
            let tls = match (kept, &cfg.tls) {
                (Some(u), tls) => {
                    if let Some(tls) = tls {
                        identities.keep(&tls.svid);
                    }
                    Ok(u.tls.clone())
                }
                (None, None) => Ok(None),
                (None, Some(tls)) => match identities.get(&tls.svid).await {
                    Ok(id) => UpstreamTls::new(tls, id).map(Some),
                    Err(message) => Err(message),
                },
            };
            let tls = match tls {
                Ok(tls) => tls,
                Err(message) => {
                    errors.push(ConfigError {
                        location: format!("upstreams.{name}.tls"),
                        message,
                    });
                    None
                }
            };
            // Files are polled per upstream; Workload API streams once each, below.
            if let Some(tls) = tls.as_ref().filter(|t| t.identity().paths().is_some()) {
                background.spawn(
                    tls.identity()
                        .clone()
                        .watch(identity::DEFAULT_POLL_INTERVAL, stop.clone()),
                );
            }
            let upstream = match kept {
                Some(u) => Arc::clone(u),
                None => Upstream::new(name.clone(), cfg.clone(), addresses, tls),
            };
            upstreams.insert(name.clone(), upstream);
        }
        if !errors.is_empty() {
            stop.cancel();
            return Err(ConfigErrors(errors));
        }
        identities.follow(background, &stop);
        for u in upstreams.values() {
            crate::upstream::health::start(u, background, stop.clone());
        }
        let policies: BTreeMap<String, Arc<Policy>> = config
            .rate_limits
            .iter()
            .map(|(n, c)| {
                let store = c.store.as_ref().map(|s| Arc::clone(&stores[s]));
                let kept = previous.and_then(|p| p.policies.get(n)).filter(|p| {
                    p.config == *c
                        && match (p.store(), &store) {
                            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                            (None, None) => true,
                            _ => false,
                        }
                });
                let policy = match kept {
                    Some(p) => Arc::clone(p),
                    None => Policy::new(n.clone(), c.clone(), store),
                };
                (n.clone(), policy)
            })
            .collect();
        for p in policies.values() {
            p.start_pruning(background, stop.clone());
        }
        let routes = assemble_routes(&config, &upstreams, &policies);
        let hsts = config
            .edge_tls
            .as_ref()
            .filter(|e| e.hsts_max_age_secs > 0)
            .and_then(|e| {
                http::HeaderValue::from_str(&format!("max-age={}", e.hsts_max_age_secs)).ok()
            });
        let auth = Authenticator::new(issuers, Arc::clone(inherit.revocations));
        if let Some(p) = previous {
            auth.inherit_cache(&p.auth, |issuer| kept_issuers.contains(issuer));
        }
        Ok(Arc::new(Runtime {
            hsts,
            identities,
            config,
            routes,
            upstreams,
            policies,
            auth,
            stores,
            key_files,
            stop,
        }))
    }

    /// A generation for `gateway explain` and `gateway test`: the same routes, authenticator and
    /// limiters as [`Runtime::start`] builds, with `issuers`' keys already loaded, and no
    /// background task, health check, DNS lookup or TLS set-up. Endpoints written as addresses
    /// are kept (every one healthy); host names are left out.
    pub(crate) fn offline(config: Config, issuers: BTreeMap<String, Arc<IssuerKeys>>) -> Runtime {
        let upstreams: BTreeMap<String, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(name, cfg)| {
                let addresses = cfg
                    .endpoints
                    .iter()
                    .filter_map(|e| e.parse().ok())
                    .collect();
                (
                    name.clone(),
                    Upstream::new(name.clone(), cfg.clone(), addresses, None),
                )
            })
            .collect();
        let policies: BTreeMap<String, Arc<Policy>> = config
            .rate_limits
            .iter()
            .map(|(n, c)| (n.clone(), Policy::new(n.clone(), c.clone(), None)))
            .collect();
        let routes = assemble_routes(&config, &upstreams, &policies);
        Runtime {
            hsts: None,
            identities: Identities::default(),
            config,
            routes,
            upstreams,
            policies,
            auth: Authenticator::new(issuers, crate::revocation::Revocations::new()),
            stores: BTreeMap::new(),
            key_files: BTreeMap::new(),
            stop: CancellationToken::new(),
        }
    }

    /// The store revocations are shared through (`revocations.store`), if any.
    pub(crate) fn revocation_store(&self) -> Option<Arc<Store>> {
        let name = self.config.revocations.store.as_ref()?;
        self.stores.get(name).cloned()
    }

    /// The longest any accepted token lives, in seconds: how long a revocation is kept
    /// unless the request says sooner.
    pub(crate) fn longest_token_lifetime(&self) -> u64 {
        self.config
            .issuers
            .values()
            .map(|i| i.max_lifetime_secs + i.leeway_secs)
            .max()
            .unwrap_or(crate::config::defaults::MAX_LIFETIME_SECS)
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
    pub(crate) fn update_gauges(&self, metrics: &Metrics, edge: Option<&crate::tls::EdgeCert>) {
        let expiry = |name: String, at: std::time::SystemTime| {
            let left = at
                .duration_since(std::time::SystemTime::now())
                .map_or(0, |d| d.as_secs() as i64);
            metrics
                .certificate_expiry
                .get_or_create(&crate::metrics::CertificateLabels { certificate: name })
                .set(left);
        };
        if let Some(edge) = edge {
            expiry("edge".into(), edge.not_after);
        }
        for (name, u) in &self.upstreams {
            if let Some(tls) = &u.tls {
                expiry(format!("upstream:{name}"), tls.not_after());
            }
        }
        for (name, u) in &self.upstreams {
            metrics
                .available_endpoints
                .get_or_create(&crate::metrics::UpstreamLabels {
                    upstream: name.clone(),
                })
                .set(u.available_endpoints() as i64);
            metrics
                .circuit_state
                .get_or_create(&crate::metrics::UpstreamLabels {
                    upstream: name.clone(),
                })
                .set(u.breaker.state_value());
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
    /// The certificate the public TLS listener serves (follows `edge_tls` across reloads).
    pub(crate) edge_certs: Arc<EdgeCerts>,
    /// Revoked tokens; outlive every generation.
    pub(crate) revocations: Arc<Revocations>,
    /// Whether the public listeners accept connections yet (part of `/readyz`).
    pub(crate) listening: crate::listening::Listening,
}

impl Shared {
    /// What the next generation inherits: the running one's state and the process's.
    pub(crate) fn inherit<'a>(&'a self, previous: &'a Runtime) -> Inherit<'a> {
        Inherit {
            previous: Some(previous),
            revocations: &self.revocations,
            store_metrics: &self.metrics.stores,
        }
    }

    /// Swaps in a new generation (and its edge certificate) and stops the old one's background
    /// tasks. The edge certificate was checked when the policy was validated; should it have
    /// broken since, the previous one keeps serving.
    pub(crate) fn install(&self, next: Arc<Runtime>) {
        if let Err(error) = self.edge_certs.install(next.config.edge_tls.as_ref()) {
            tracing::warn!(%error, "Cannot load the new edge certificate; the previous one stays in use.");
        }
        self.revocations.use_store(next.revocation_store());
        let previous = self.current.swap(next);
        previous.stop();
    }
}

/// The routes of `config`, each with its upstream and rate-limit policies (names already
/// validated), shared by [`Runtime::start`] and [`Runtime::offline`].
fn assemble_routes(
    config: &Config,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    policies: &BTreeMap<String, Arc<Policy>>,
) -> Vec<Arc<Route>> {
    config
        .routes
        .iter()
        .map(|r| {
            Arc::new(Route::new(
                r.clone(),
                Arc::clone(&upstreams[&r.upstream]),
                r.rate_limits
                    .iter()
                    .map(|l| Arc::clone(&policies[l]))
                    .collect(),
            ))
        })
        .collect()
}
