//! Vantage gateway: a Pingora reverse proxy that enforces JWT auth and GCRA rate limits from a
//! declarative policy file, and records every decision for logs, metrics and traces.
//!
//! # How to use
//! `gateway run --config gateway/config/example.yaml` serves; `gateway validate FILE` checks a
//! policy file and lists every error. [`run`] is what the binary calls; [`Config`] is the policy
//! model, documented for security teams in `docs/gateway-config.md`.
//!
//! Module map, in the order a request meets them: `proxy` (the Pingora phases, glue only),
//! `context` (per-request state), `forwarded` (who the client is), `request_id`, `request_head`
//! (limits, gateway-owned headers), `framing` (smuggling guards), `normalize` (one spelling of
//! every path), `routing` (host, route selection, rewrite), `auth` (JWT, JWKS), `ratelimit` (GCRA),
//! `upstream` (pools, health, breaker; `upstream::attempt` for selection, failures and
//! retries), `upstream_request` (what the upstream receives), `problem` (every error answered,
//! and `problem::classify`), `access_log` (the access line and the span's decisions),
//! `metrics`. Around them: [`config`] (parse + validate), `state` (the live configuration),
//! `reload` (SIGHUP and file watch), `admin` (health, metrics, config, revocations), `listening`
//! (whether the public listeners accept yet, for `/readyz`), `store` (shared state in Redis),
//! `revocation` (revoked tokens).

mod access_log;
mod admin;
mod auth;
pub mod config;
mod context;
mod decision;
mod downstream;
pub mod explain;
mod forwarded;
mod framing;
mod listening;
mod metrics;
mod normalize;
pub mod policy_test;
mod problem;
mod proxy;
mod ratelimit;
mod reload;
mod request_head;
mod request_id;
mod response_headers;
mod revocation;
mod routing;
mod shadow;
mod state;
mod store;
mod tls;
mod upstream;
mod upstream_request;

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use observability::Telemetry;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::listening::Service;

pub use auth::Reject;
pub use config::{Config, ConfigError, ConfigErrors};
pub use framing::FramingError;
pub use normalize::PathError;
pub use problem::{GatewayError, PROBLEM_BASE};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The policy file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// A listener address is taken or not bindable.
    #[error("cannot listen on {addr} ({which}): {source}")]
    Bind {
        /// `public` or `admin`.
        which: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The background runtime could not start.
    #[error("cannot start the background runtime: {0}")]
    Runtime(std::io::Error),
    /// The TLS listener could not be set up.
    #[error("cannot set up the TLS listener: {0}")]
    Tls(String),
}

/// How long shutdown waits for each group of background tasks.
const BACKGROUND_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Loads `config_path`, binds the listeners and serves until SIGINT/SIGTERM, then drains
/// in-flight requests and returns (so the caller can flush telemetry). Request spans come from
/// `telemetry.http_tracer()`, access lines go to `telemetry.line_log()`.
pub fn run(config_path: &Path, telemetry: &Telemetry) -> Result<(), StartError> {
    let tracer = telemetry.http_tracer();
    let config = Config::load(config_path)?;
    for w in &config.warnings {
        tracing::warn!(location = %w.location, problem = %w.message, "Config warning.");
    }
    let tls_addr = config.listeners.public_tls.map(|a| ("public_tls", a));
    for (which, addr) in [
        ("public", config.listeners.public),
        ("admin", config.listeners.admin),
    ]
    .into_iter()
    .chain(tls_addr)
    {
        // Fail with a clear message before Pingora tries (and panics) on a taken port.
        TcpListener::bind(addr).map_err(|source| StartError::Bind {
            which,
            addr,
            source,
        })?;
    }

    // Background work (health checks, JWKS refresh, limiter pruning, reload) runs on its own
    // small runtime, independent of Pingora's per-service runtimes.
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gateway-bg")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let handle = background.handle().clone();
    let metrics = metrics::Metrics::new();
    let revocations = revocation::Revocations::new();
    let runtime = background.block_on(state::Runtime::start(
        config.clone(),
        &handle,
        state::Inherit {
            previous: None,
            revocations: &revocations,
            store_metrics: &metrics.stores,
        },
    ))?;
    revocations.use_store(runtime.revocation_store());
    let admin_token = std::env::var(&config.admin.token_env)
        .ok()
        .filter(|t| !t.is_empty());
    if admin_token.is_none() {
        tracing::warn!(env = %config.admin.token_env, "No admin token set: /metrics and /config will refuse every request.");
    }
    let edge_certs = tls::EdgeCerts::new();
    if let Err(message) = edge_certs.install(config.edge_tls.as_ref()) {
        return Err(StartError::Config(ConfigErrors(vec![
            config::ConfigError {
                location: "edge_tls".into(),
                message,
            },
        ])));
    }
    let shared = Arc::new(state::Shared {
        current: ArcSwap::new(runtime),
        metrics,
        background: handle,
        config_path: config_path.to_path_buf(),
        admin_token,
        tracer,
        edge_certs: Arc::clone(&edge_certs),
        revocations: Arc::clone(&revocations),
        listening: listening::Listening::new(
            std::iter::once(config.listeners.public).chain(config.listeners.public_tls),
        ),
    });
    let stop_watching = tokio_util::sync::CancellationToken::new();
    let watcher = reload::spawn_watcher(Arc::clone(&shared), stop_watching.clone());
    shared.background.spawn(
        Arc::clone(&edge_certs).watch(identity::DEFAULT_POLL_INTERVAL, stop_watching.clone()),
    );
    shared
        .background
        .spawn(revocations.run_sync(stop_watching.clone()));

    let conf = ServerConf {
        threads: config.server.workers,
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.server.shutdown_timeout.as_secs()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // The proxy, wrapped in the connection hygiene Pingora leaves to applications: a
    // deadline on request heads and a cap on open connections (see `downstream`).
    let connections = config.server.connections;
    let app = downstream::Hygiene::new(
        pingora_proxy::http_proxy(
            &server.configuration,
            proxy::Gateway {
                shared: Arc::clone(&shared),
                access_log: access_log::AccessLog::new(telemetry.line_log()),
            },
        ),
        downstream::Limits {
            head_timeout: connections.request_head_timeout,
            max_connections: connections.max_connections,
        },
        {
            // The policy in force at each wait (a reload may change it).
            let shared = Arc::clone(&shared);
            Box::new(move || {
                let runtime = shared.current.load();
                std::time::Duration::from_secs(
                    runtime.config.server.connections.keepalive_timeout_secs,
                )
            })
        },
        shared.metrics.connections.clone(),
    );
    let mut proxy = Service::new("vantage-gateway".to_string(), app);
    // Read buffers: none by default for plain HTTP (Pingora reads into its own), a TLS record's
    // worth under OpenSSL; Pingora's write buffer (one segment) coalesces head and body.
    let listener = |addr: std::net::SocketAddr, read: usize| {
        let buffers = pingora_core::protocols::l4::stream::L4BufferSettings::new(
            read,
            pingora_core::protocols::l4::stream::DEFAULT_L4_WRITE_BUFFER_SIZE,
        );
        pingora_core::listeners::ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers)
    };
    proxy.add_listener(listener(config.listeners.public, connections.buffer_bytes));
    if let Some(addr) = config.listeners.public_tls {
        // The certificate is chosen per handshake, so a renewed one needs no restart; HTTP/2
        // and HTTP/1.1 by ALPN.
        let callbacks = Box::new(tls::EdgeCallbacks {
            certs: Arc::clone(&edge_certs),
        });
        let mut settings = pingora_core::listeners::tls::TlsSettings::with_callbacks(callbacks)
            .map_err(|e| StartError::Tls(e.to_string()))?;
        settings.enable_h2();
        let read = connections
            .buffer_bytes
            .max(config::defaults::TLS_CONNECTION_BUFFER_BYTES);
        proxy.add_listener(listener(addr, read).tls(settings));
    }
    let mut admin = Service::new(
        "vantage-admin".to_string(),
        HttpServer::new_app(admin::AdminApp {
            shared: Arc::clone(&shared),
        }),
    );
    admin.threads = Some(1);
    admin.add_tcp(&config.listeners.admin.to_string());
    server.add_service(proxy);
    server.add_service(admin);

    tracing::info!(public = %config.listeners.public, admin = %config.listeners.admin, routes = config.routes.len(), "Gateway listening.");
    // Pingora owns the signals: this returns once SIGINT/SIGTERM has drained the listeners.
    server.run(pingora_core::server::RunArgs::default());

    // Then every background task stops: the reload watcher first (so no new generation starts),
    // then the running generation's health checks, key refresh and pruning.
    stop_watching.cancel();
    let _ =
        background.block_on(async { tokio::time::timeout(BACKGROUND_STOP_TIMEOUT, watcher).await });
    shared.current.load().stop();
    background.shutdown_timeout(BACKGROUND_STOP_TIMEOUT);
    Ok(())
}
