//! `gateway explain`: the full decision trail of one request, offline.
//!
//! # How to use
//! `gateway explain --config FILE [-H 'Name: value']... [--json] METHOD URL` loads the policy,
//! loads its issuers' keys once (JWKS and PEM files read, JWKS URLs fetched once), and runs the
//! request through `decision::admit` — the admission pipeline the proxy runs — on a
//! generation built by `Runtime::offline`. It then reports which route matched and why each
//! earlier one did not, each auth step with the reason it stopped, each rate limit (key, quota,
//! remaining, from full buckets), the upstream chosen and what it would receive (identity
//! headers and path), as text ([`Explanation::to_text`]) or JSON ([`Explanation::to_json`]).
//! Nothing is sent anywhere: no upstream is contacted, no health check runs.
//!
//! `gateway test` ([`crate::policy_test`]) runs cases through the same `explain_on`.

mod auth_steps;
mod report;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};
use pingora_http::RequestHeader;
use tokio_util::sync::CancellationToken;

use crate::auth::keys::IssuerKeys;
use crate::config::{Config, ConfigError, ConfigErrors, Mode, PathMatch, RouteConfig};
use crate::context::{Client, Failure, RequestCtx};
use crate::ratelimit::KeyInput;
use crate::request_id::RequestId;
use crate::state::Runtime;
use crate::{decision, routing, upstream_request};

pub use report::Explanation;
use report::{LimitView, Outcome, RequestView, RouteCheck, UpstreamView};

/// One request to explain, as given on the command line.
#[derive(Debug, Clone)]
pub struct ExplainRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// An absolute URL (`https://shop.example/api/x?y=1`: host, and TLS from `https`) or a path.
    pub url: String,
    /// Request headers as `Name: value`.
    pub headers: Vec<String>,
    /// The TCP peer the request comes from. Default in the CLI: `127.0.0.1`.
    pub client_ip: IpAddr,
}

/// Why a request could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The policy file is invalid, or an issuer's keys could not be read.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// The request given is not a valid HTTP request (method, URL or header).
    #[error("{0}")]
    Request(String),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// How long explain waits for a JWKS URL (fetched once).
const KEY_FETCH_WAIT: Duration = Duration::from_secs(5);

/// Explains `request` against the policy at `config_path`.
pub fn explain(config_path: &Path, request: &ExplainRequest) -> Result<Explanation, ExplainError> {
    let config = Config::load(config_path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let issuers = load_issuers(&config).await?;
        let runtime = Runtime::offline(config, issuers);
        explain_on(&runtime, request).await
    })
}

/// Loads every issuer's keys once: files now, JWKS URLs fetched once (waiting at most
/// [`KEY_FETCH_WAIT`]; an issuer whose URL cannot be fetched has no keys, and its tokens are
/// explained as `keys_unavailable`). Must run inside a Tokio runtime.
pub(crate) async fn load_issuers(
    config: &Config,
) -> Result<BTreeMap<String, Arc<IssuerKeys>>, ConfigErrors> {
    let handle = tokio::runtime::Handle::current();
    let (mut issuers, mut errors) = (BTreeMap::new(), Vec::new());
    // Cancelled at once: the fetch at start happens, the periodic refresh never runs.
    let stop = CancellationToken::new();
    // An agent for `jwks_tls: {workload_api}` gets as long as a JWKS URL does.
    let mut identities = crate::tls::Identities::waiting(KEY_FETCH_WAIT);
    for (name, cfg) in &config.issuers {
        let jwks_identity = match identities.for_issuer(name, cfg).await {
            Ok(id) => id,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match IssuerKeys::new(name.clone(), cfg.clone(), handle.clone(), jwks_identity) {
            Ok(keys) => {
                keys.start(stop.clone(), KEY_FETCH_WAIT).await;
                issuers.insert(name.clone(), keys);
            }
            Err(e) => errors.push(ConfigError {
                location: format!("issuers.{name}"),
                message: e.to_string(),
            }),
        }
    }
    stop.cancel();
    if errors.is_empty() {
        Ok(issuers)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The request head `request` describes, and whether it came over TLS.
pub(crate) fn request_head(request: &ExplainRequest) -> Result<(RequestHeader, bool), String> {
    let method = Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{:?} is not an HTTP method", request.method))?;
    let uri: Uri = request
        .url
        .parse()
        .map_err(|e| format!("{:?} is not a URL or path: {e}", request.url))?;
    let tls = match uri.scheme_str() {
        None | Some("http") => false,
        Some("https") => true,
        Some(other) => return Err(format!("{other:?} is not http or https")),
    };
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = RequestHeader::build(method, target.as_bytes(), None)
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let mut has_host = false;
    for (i, line) in request.headers.iter().enumerate() {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header {} {line:?} is not `Name: value`", i + 1))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("header {} {line:?}: invalid name", i + 1))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("header {} {line:?}: invalid value", i + 1))?;
        has_host |= name == http::header::HOST;
        req.append_header(name, value)
            .map_err(|e| format!("header {} {line:?}: {e}", i + 1))?;
    }
    if let (false, Some(authority)) = (has_host, uri.authority()) {
        let _ = req.insert_header(http::header::HOST, authority.as_str());
    }
    Ok((req, tls))
}

/// Runs `request` through the admission pipeline on `runtime` and reports every decision.
pub(crate) async fn explain_on(
    runtime: &Runtime,
    request: &ExplainRequest,
) -> Result<Explanation, ExplainError> {
    let (mut req, tls) = request_head(request).map_err(ExplainError::Request)?;
    let mut ctx = RequestCtx::new();
    ctx.request_id = RequestId::from_static("explain");
    ctx.client = Client::resolve(
        Some(request.client_ip),
        &req.headers,
        &runtime.config.server.trusted_proxies,
        tls,
    );
    let framing = crate::framing::Present::of(&req.headers);
    let admitted = decision::admit(&mut req, framing, None, &mut ctx, runtime).await;
    let path = ctx
        .path
        .clone()
        .unwrap_or_else(|| req.uri.path().to_string());
    // Routes are looked at once the head passed its checks; before that none was.
    let routed = ctx.route.is_some()
        || matches!(
            &admitted,
            Err(crate::problem::GatewayError::NoRoute
                | crate::problem::GatewayError::MethodNotAllowed { .. }
                | crate::problem::GatewayError::AmbiguousPath)
        );
    let routes = if routed {
        route_checks(runtime, &ctx, &req.method, &path)
    } else {
        Vec::new()
    };

    let mut upstream = None;
    let status = match admitted {
        Ok(()) => {
            let view = upstream_view(&mut ctx, runtime, &req);
            let status = view.as_ref().map_or(200, |v| v.status);
            upstream = view.map(|v| v.view);
            status
        }
        Err(error) => {
            let status = error.status();
            ctx.failure = Some(Failure::Answered {
                error,
                detail: None,
            });
            status
        }
    };
    let limits = limit_views(&ctx, &req.headers);
    let auth = ctx.route.as_ref().and_then(|route| {
        auth_steps::view(
            &route.config.auth,
            &ctx.auth,
            &req.headers,
            &runtime.auth,
            crate::shadow::auth_shadowed(&ctx),
        )
    });
    let outcome = Outcome::of(&ctx, status, stage(&ctx, status));
    Ok(Explanation {
        request: RequestView {
            method: req.method.to_string(),
            url: request.url.clone(),
            host: ctx.client.host.clone(),
            path,
            client_ip: ctx.client.ip().to_owned(),
        },
        routes,
        route: ctx.route.as_ref().map(|r| r.config.name.clone()),
        auth,
        limits,
        upstream,
        trail: decision::trail(&ctx, status),
        outcome,
    })
}

/// Where the outcome was decided, from what the pipeline recorded.
fn stage(ctx: &RequestCtx, status: u16) -> &'static str {
    use crate::problem::GatewayError as E;
    let Some(Failure::Answered { error, .. }) = &ctx.failure else {
        return if status == 200 {
            "forwarded"
        } else {
            "upstream"
        };
    };
    match error {
        E::Unauthorized { .. } | E::InsufficientScope { .. } => "auth",
        E::RateLimited { .. } | E::DuplicateHeader(_) => "rate_limit",
        E::NoRoute | E::MethodNotAllowed { .. } | E::AmbiguousPath => "routing",
        E::CircuitOpen(_) | E::NoHealthyEndpoint(_) => "upstream",
        _ if ctx.route.is_some() => "route",
        _ => "request_head",
    }
}

/// Every route in order up to the one chosen (all of them when none was), each with why it did
/// or did not match — using the matcher route selection uses.
fn route_checks(
    runtime: &Runtime,
    ctx: &RequestCtx,
    method: &Method,
    path: &str,
) -> Vec<RouteCheck> {
    let host = ctx.client.host.as_deref();
    let mut out = Vec::new();
    for route in &runtime.routes {
        let cfg = &route.config;
        let chosen = ctx.route.as_ref().is_some_and(|c| Arc::ptr_eq(c, route));
        let target = routing::matches_target(cfg, host, path);
        let method_ok = cfg.methods.is_empty() || cfg.methods.contains(method);
        let reason = if !target {
            mismatch(cfg, host, path)
        } else if !method_ok {
            format!(
                "path matches, but {method} is not one of its methods ({})",
                methods(cfg)
            )
        } else if chosen {
            format!("{} and {}", describe_match(cfg), describe_methods(cfg))
        } else {
            "matches, but an earlier route with another path match decides this path".into()
        };
        out.push(RouteCheck {
            name: cfg.name.clone(),
            matched: chosen,
            reason,
        });
        if chosen {
            break;
        }
    }
    out
}

fn methods(cfg: &RouteConfig) -> String {
    cfg.methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_methods(cfg: &RouteConfig) -> String {
    if cfg.methods.is_empty() {
        "any method".into()
    } else {
        format!("method in [{}]", methods(cfg))
    }
}

fn describe_match(cfg: &RouteConfig) -> String {
    let host = cfg
        .host
        .as_ref()
        .map(|h| format!("host {h}, "))
        .unwrap_or_default();
    let path = match &cfg.path {
        PathMatch::Prefix(p) if p.is_empty() => "any path".to_string(),
        PathMatch::Prefix(p) => format!("path under {p}"),
        PathMatch::Exact(p) => format!("path {p}"),
        PathMatch::Regex(_) => format!("path matching {}", routing::template(cfg)),
    };
    format!("{host}{path}")
}

fn mismatch(cfg: &RouteConfig, host: Option<&str>, path: &str) -> String {
    if let Some(want) = &cfg.host {
        if host != Some(want.as_str()) {
            return format!(
                "host is {}, the route wants {want}",
                host.unwrap_or("(none)")
            );
        }
    }
    match &cfg.path {
        PathMatch::Prefix(p) => format!("{path} is not under {p}"),
        PathMatch::Exact(p) => format!("{path} is not {p}"),
        PathMatch::Regex(_) => format!("{path} does not match {}", routing::template(cfg)),
    }
}

/// Every limit consulted, in the route's order, with its key (header values masked: they may
/// be API keys).
fn limit_views(ctx: &RequestCtx, headers: &http::HeaderMap) -> Vec<LimitView> {
    let Some(route) = &ctx.route else {
        return Vec::new();
    };
    let input = KeyInput {
        client: ctx.client.addr,
        route: &route.config.name,
        identity: ctx.auth.admitted(),
        headers,
    };
    let (mut enforced, mut shadowed) = (ctx.limits.iter(), ctx.shadow_limits.iter());
    let mut out = Vec::new();
    for policy in &route.limits {
        let d = match policy.mode() {
            Mode::Enforce => enforced.next(),
            Mode::Shadow => shadowed.next(),
        };
        let Some(d) = d else { break };
        out.push(LimitView::new(policy, d, policy.key(&input).ok()));
    }
    out
}

struct Upstreamed {
    view: UpstreamView,
    status: u16,
}

/// The upstream an admitted request goes to, and what it would receive (the same
/// [`upstream_request::prepare`] the proxy runs).
fn upstream_view(
    ctx: &mut RequestCtx,
    runtime: &Runtime,
    admitted: &RequestHeader,
) -> Option<Upstreamed> {
    let route = ctx.route.clone()?;
    let upstream = &route.upstream;
    let (endpoint, note, status) = match upstream.select(None) {
        Ok(e) => {
            ctx.upstream.count = 1;
            let addr = e.addr.to_string();
            ctx.upstream.endpoint = Some(e);
            (Some(addr), None, 200)
        }
        Err(_) if upstream.endpoints.is_empty() => {
            // Host names are resolved only when the gateway loads the policy.
            ctx.upstream.count = 1;
            (
                None,
                Some(format!(
                    "endpoints {} are resolved when the gateway loads the policy",
                    upstream.config.endpoints.join(", ")
                )),
                200,
            )
        }
        Err(_) => (None, Some("no endpoint available".into()), 503),
    };
    let mut sent = admitted.clone();
    // As in the proxy: the upstream request starts as the admitted client request (identity
    // headers already stripped), then the gateway adds its own.
    let prepared = upstream_request::prepare(admitted, &mut sent, ctx);
    let identity: BTreeMap<String, String> = runtime
        .config
        .identity_headers
        .iter()
        .filter_map(|h| {
            sent.headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(|v| (h.as_str().to_string(), v.to_string()))
        })
        .collect();
    Some(Upstreamed {
        view: UpstreamView {
            name: upstream.name.clone(),
            load_balancing: upstream.config.load_balancing,
            endpoint,
            note,
            target: prepared.ok().map(|()| {
                sent.uri
                    .path_and_query()
                    .map_or("/".into(), |p| p.as_str().to_string())
            }),
            identity,
        },
        status,
    })
}
