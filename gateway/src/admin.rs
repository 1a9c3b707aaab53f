//! The admin listener: `/healthz` and `/readyz` for orchestrators (no auth), `/metrics`,
//! `/config` and `POST /revocations` behind a bearer token read from the environment variable
//! the config names.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::revocation::{self, Revocation};
use crate::state::Shared;

/// Serves the admin endpoints.
pub(crate) struct AdminApp {
    pub(crate) shared: Arc<Shared>,
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .expect("valid response")
}

fn problem(status: StatusCode, slug: &str, detail: &str) -> Response<Vec<u8>> {
    let title = status.canonical_reason().unwrap_or("");
    let body = crate::problem::body(slug, title, status.as_u16(), detail, None);
    let mut resp = respond(status, "application/problem+json", body);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            "www-authenticate",
            http::HeaderValue::from_static("Bearer realm=\"vantage-admin\""),
        );
    }
    resp
}

/// Compares in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AdminApp {
    fn authorized(&self, session: &ServerSession) -> Result<(), Box<Response<Vec<u8>>>> {
        let Some(expected) = &self.shared.admin_token else {
            return Err(Box::new(problem(
                StatusCode::FORBIDDEN,
                "admin-token-unset",
                "No admin token is configured; set the environment variable named by admin.token_env.",
            )));
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match presented {
            Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
            _ => Err(Box::new(problem(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "A valid admin bearer token is required.",
            ))),
        }
    }
}

impl AdminApp {
    /// `POST /revocations`: applies the revocation here, then shares it through the store.
    async fn revoke(
        &self,
        session: &mut ServerSession,
        runtime: &crate::state::Runtime,
    ) -> Response<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > revocation::MAX_BODY_BYTES {
                        return problem(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "payload-too-large",
                            "A revocation is a small JSON object.",
                        );
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "bad-request",
                        "The request body could not be read.",
                    )
                }
            }
        }
        let now = revocation::unix_now();
        let r = match Revocation::from_request(&body, now, runtime.longest_token_lifetime()) {
            Ok(r) => r,
            Err(detail) => return problem(StatusCode::BAD_REQUEST, "bad-revocation", &detail),
        };
        let until = r.until();
        let (what, value) = match &r {
            Revocation::Jti { jti, .. } => ("jti", jti.clone()),
            Revocation::Subject { sub, .. } => ("sub", sub.clone()),
        };
        match self.shared.revocations.revoke(r).await {
            Ok(shared) => {
                tracing::info!(what, until, shared, "Token revoked.");
                let body =
                    serde_json::json!({"revoked": {what: value}, "until": until, "shared": shared});
                respond(
                    StatusCode::CREATED,
                    "application/json",
                    serde_json::to_vec(&body).unwrap_or_default(),
                )
            }
            Err(error) => {
                tracing::warn!(
                    what,
                    until,
                    error = error.as_str(),
                    "Token revoked here only: the store is unavailable."
                );
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store-unavailable",
                    "Revoked on this gateway only: the revocation store did not answer. Retry; revoking again is harmless.",
                )
            }
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let runtime = self.shared.current.load_full();
        match path.as_str() {
            "/healthz" => respond(
                StatusCode::OK,
                "application/json",
                br#"{"status":"ok"}"#.to_vec(),
            ),
            "/readyz" => {
                // Ready means every issuer has keys. Upstream state is reported, not judged: an
                // open circuit on one upstream should not take the gateway out of a balancer.
                let upstreams: serde_json::Map<_, _> = runtime
                    .upstreams
                    .iter()
                    .map(|(n, u)| {
                        (
                            n.clone(),
                            serde_json::json!({
                                "circuit": u.breaker.state_name(),
                                "available_endpoints": u.available_endpoints(),
                                "endpoints": u.endpoints.len(),
                            }),
                        )
                    })
                    .collect();
                let waiting: Vec<_> = runtime
                    .auth
                    .issuers()
                    .filter(|i| !i.is_ready())
                    .map(|i| i.name.clone())
                    .collect();
                // Stores too: reported, not judged (their on_error decides what an outage means).
                let stores: serde_json::Map<_, _> = runtime
                    .stores
                    .iter()
                    .map(|(n, s)| (n.clone(), s.status_json()))
                    .collect();
                // And the public listeners accept: Pingora binds them as the proxy starts,
                // which may be after this listener answers.
                let listening = self.shared.listening.accepting().await;
                let (status, body) = if runtime.ready() && listening {
                    (
                        StatusCode::OK,
                        serde_json::json!({"status": "ready", "upstreams": upstreams, "stores": stores}),
                    )
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({"status": "not_ready", "listening": listening, "issuers_without_keys": waiting, "upstreams": upstreams, "stores": stores}),
                    )
                };
                respond(
                    status,
                    "application/json",
                    serde_json::to_vec(&body).unwrap_or_default(),
                )
            }
            "/metrics" => {
                if let Err(resp) = self.authorized(session) {
                    return *resp;
                }
                let edge = self.shared.edge_certs.current();
                runtime.update_gauges(&self.shared.metrics, edge.as_deref());
                respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.shared.metrics.encode().into_bytes(),
                )
            }
            "/config" => {
                if let Err(resp) = self.authorized(session) {
                    return *resp;
                }
                let mut body = runtime.config.redacted_json();
                if let Some(obj) = body.as_object_mut() {
                    let breakers: serde_json::Map<_, _> = runtime
                        .upstreams
                        .iter()
                        .map(|(n, u)| (n.clone(), serde_json::json!({"circuit": u.breaker.state_name(), "available_endpoints": u.available_endpoints()})))
                        .collect();
                    obj.insert("upstream_state".into(), breakers.into());
                    // Certificates in use: subjects, SPIFFE IDs and expiry — never keys.
                    let mut certs = serde_json::Map::new();
                    if let Some(edge) = self.shared.edge_certs.current() {
                        certs.insert("edge".into(), serde_json::json!({"subject": edge.subject, "not_after": identity::rfc3339(edge.not_after)}));
                    }
                    for (name, u) in &runtime.upstreams {
                        if let Some(tls) = &u.tls {
                            certs.insert(format!("upstream:{name}"), serde_json::json!({"spiffe_id": tls.spiffe_id(), "not_after": identity::rfc3339(tls.not_after())}));
                        }
                    }
                    obj.insert("certificates".into(), certs.into());
                }
                respond(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_vec_pretty(&body).unwrap_or_default(),
                )
            }
            "/revocations" => {
                if let Err(resp) = self.authorized(session) {
                    return *resp;
                }
                if session.req_header().method != http::Method::POST {
                    let mut resp = problem(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method-not-allowed",
                        "POST a JSON body {\"jti\": …} or {\"sub\": …}.",
                    );
                    resp.headers_mut()
                        .insert("allow", http::HeaderValue::from_static("POST"));
                    return resp;
                }
                self.revoke(session, &runtime).await
            }
            _ => problem(
                StatusCode::NOT_FOUND,
                "no-route",
                "Admin endpoints: /healthz, /readyz, /metrics, /config, POST /revocations.",
            ),
        }
    }
}
