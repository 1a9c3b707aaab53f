//! A small typed client for the public shop API, as seen through the gateway.
//!
//! Every request carries a W3C `traceparent` built from the caller's [`Trace`], so one
//! journey (a `stack --demo` run, or one loadgen iteration) is one trace in Jaeger.
//! When a [`Recorder`] is attached, every response (or transport failure) is recorded
//! under its route template, never under the raw path, so ids do not explode the table.
//!
//! The one shop client of the repo: loadgen, `stack --demo` and the end-to-end tests (through
//! [`ShopClient::request`], for the statuses they assert) all talk to the shop with it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::stats::Recorder;

/// Order statuses after which nothing else happens to an order.
pub const FINAL_STATUSES: [&str; 2] = ["SHIPPED", "CANCELLED"];

/// Whether `status` is one an order never leaves.
pub fn is_final(status: &str) -> bool {
    FINAL_STATUSES.contains(&status)
}

// === Route ===

/// One public endpoint, named by its route template (the label used in summaries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    Register,
    Login,
    Me,
    Products,
    Product,
    AddItem,
    Cart,
    Checkout,
    Order,
}

impl Route {
    /// `METHOD /template`, the way Grafana and the gateway name the route.
    pub fn label(self) -> &'static str {
        match self {
            Route::Register => "POST /api/users/register",
            Route::Login => "POST /api/users/login",
            Route::Me => "GET /api/users/me",
            Route::Products => "GET /api/products",
            Route::Product => "GET /api/products/{id}",
            Route::AddItem => "POST /api/cart/items",
            Route::Cart => "GET /api/cart",
            Route::Checkout => "POST /api/cart/checkout",
            Route::Order => "GET /api/orders/{id}",
        }
    }

    fn method(self) -> Method {
        match self {
            Route::Register | Route::Login | Route::AddItem | Route::Checkout => Method::POST,
            Route::Me | Route::Products | Route::Product | Route::Cart | Route::Order => {
                Method::GET
            }
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

// === Trace ===

/// A W3C trace context: one trace id shared by every request of a journey, a fresh
/// span id for each request (the client side of that hop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trace {
    trace_id: u128,
}

impl Trace {
    /// A new random, sampled trace.
    pub fn random(rng: &mut impl Rng) -> Self {
        // All-zero ids are invalid in W3C trace context.
        let trace_id = rng.random::<u128>().max(1);
        Trace { trace_id }
    }

    /// The 32 hex digits Jaeger shows and searches for.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// A `traceparent` header value for one request of this trace.
    pub fn traceparent(&self, rng: &mut impl Rng) -> String {
        let span_id = rng.random::<u64>().max(1);
        format!("00-{:032x}-{span_id:016x}-01", self.trace_id)
    }
}

// === Errors ===

/// Why a call to the shop API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{route}: request failed: {source}")]
    Transport {
        route: Route,
        #[source]
        source: reqwest::Error,
    },
    #[error("{route}: unexpected status {status}: {body}")]
    Status {
        route: Route,
        status: StatusCode,
        body: String,
    },
    #[error("{route}: unexpected response body: {reason}")]
    Decode { route: Route, reason: String },
}

impl ApiError {
    /// What kind of failure this is, without per-request details (ids, bodies): failures
    /// with the same kind are the same problem.
    pub fn kind(&self) -> String {
        match self {
            ApiError::Transport { route, .. } => format!("{route}: transport"),
            ApiError::Status { route, status, .. } => format!("{route}: {}", status.as_u16()),
            ApiError::Decode { route, .. } => format!("{route}: decode"),
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            ApiError::Transport { .. } | ApiError::Decode { .. } => None,
        }
    }
}

// === Response types ===

/// A catalogue entry. Only the fields a shopper needs; ids are kept as JSON so the
/// client works whether a service uses numbers or strings.
#[derive(Clone, Debug, Deserialize)]
pub struct Product {
    pub id: Value,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub price_cents: i64,
    /// Units that can still be reserved; `None` when the service does not say.
    #[serde(default)]
    pub available: Option<i64>,
}

impl Product {
    /// The id as it appears in a URL path.
    pub fn path_id(&self) -> String {
        id_to_string(&self.id)
    }
}

/// An order as `GET /api/orders/{id}` returns it.
#[derive(Clone, Debug, Deserialize)]
pub struct Order {
    pub id: Value,
    pub status: String,
    #[serde(default)]
    pub total_cents: i64,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

impl Order {
    /// The reason of the latest history entry that gives one (why an order was cancelled).
    pub fn reason(&self) -> Option<&str> {
        self.history.iter().rev().find_map(|h| h.reason.as_deref())
    }
}

/// One status change of an order.
#[derive(Clone, Debug, Deserialize)]
pub struct HistoryEntry {
    pub status: String,
    #[serde(default)]
    pub at: Option<Value>,
    #[serde(default)]
    pub reason: Option<String>,
}

fn id_to_string(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// === ShopClient ===

/// A shopper talking to the gateway: holds its bearer token once logged in.
#[derive(Clone)]
pub struct ShopClient {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
    recorder: Option<Arc<Recorder>>,
}

impl ShopClient {
    /// A client for the gateway at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        ShopClient {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: None,
            recorder: None,
        }
    }

    /// A `reqwest::Client` with the timeouts the shop calls need.
    pub fn default_http() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("a client without custom TLS roots always builds")
    }

    /// Record every response of this client into `recorder`.
    pub fn with_recorder(mut self, recorder: Arc<Recorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Whether [`ShopClient::login`] succeeded.
    pub fn is_logged_in(&self) -> bool {
        self.token.is_some()
    }

    /// `POST /api/users/register` → 201.
    pub async fn register(
        &self,
        trace: &Trace,
        email: &str,
        password: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        let body = json!({ "email": email, "password": password, "name": name });
        self.call(
            Route::Register,
            "/api/users/register",
            trace,
            Some(body),
            None,
        )
        .await
        .map(drop)
    }

    /// `POST /api/users/login`; keeps the access token for later calls.
    pub async fn login(
        &mut self,
        trace: &Trace,
        email: &str,
        password: &str,
    ) -> Result<(), ApiError> {
        let body = json!({ "email": email, "password": password });
        let v = self
            .call(Route::Login, "/api/users/login", trace, Some(body), None)
            .await?;
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::Decode {
                route: Route::Login,
                reason: "no access_token".into(),
            })?;
        self.token = Some(token.to_owned());
        Ok(())
    }

    /// `GET /api/users/me`.
    pub async fn me(&self, trace: &Trace) -> Result<Value, ApiError> {
        self.call(Route::Me, "/api/users/me", trace, None, None)
            .await
    }

    /// `GET /api/products`. Accepts a bare array or an object with an `items`/`products` array.
    pub async fn products(&self, trace: &Trace) -> Result<Vec<Product>, ApiError> {
        let v = self
            .call(Route::Products, "/api/products", trace, None, None)
            .await?;
        let list = match v {
            Value::Array(_) => v,
            Value::Object(mut map) => map
                .remove("items")
                .or_else(|| map.remove("products"))
                .unwrap_or(Value::Null),
            _ => Value::Null,
        };
        serde_json::from_value(list).map_err(|e| ApiError::Decode {
            route: Route::Products,
            reason: e.to_string(),
        })
    }

    /// `GET /api/products/{id}`.
    pub async fn product(&self, trace: &Trace, id: &str) -> Result<Product, ApiError> {
        self.get_decoded(Route::Product, &format!("/api/products/{id}"), trace)
            .await
    }

    /// `POST /api/cart/items {product_id, quantity}`.
    pub async fn add_item(
        &self,
        trace: &Trace,
        product: &Product,
        quantity: u32,
    ) -> Result<(), ApiError> {
        let body = json!({ "product_id": product.id, "quantity": quantity });
        self.call(Route::AddItem, "/api/cart/items", trace, Some(body), None)
            .await
            .map(drop)
    }

    /// `GET /api/cart`.
    pub async fn cart(&self, trace: &Trace) -> Result<Value, ApiError> {
        self.call(Route::Cart, "/api/cart", trace, None, None).await
    }

    /// `POST /api/cart/checkout {payment_token}` with an `Idempotency-Key` → 202 `{order_id}`.
    pub async fn checkout(
        &self,
        trace: &Trace,
        payment_token: &str,
        idempotency_key: &str,
    ) -> Result<String, ApiError> {
        let body = json!({ "payment_token": payment_token });
        let v = self
            .call(
                Route::Checkout,
                "/api/cart/checkout",
                trace,
                Some(body),
                Some(idempotency_key),
            )
            .await?;
        v.get("order_id")
            .filter(|id| !id.is_null())
            .map(id_to_string)
            .ok_or_else(|| ApiError::Decode {
                route: Route::Checkout,
                reason: "no order_id".into(),
            })
    }

    /// `GET /api/orders/{id}`.
    pub async fn order(&self, trace: &Trace, id: &str) -> Result<Order, ApiError> {
        self.get_decoded(Route::Order, &format!("/api/orders/{id}"), trace)
            .await
    }

    /// Polls an order every `every` until it reaches a final status or `deadline` passes.
    /// Returns the last order seen, final or not.
    ///
    /// The orders read model is fed by events, so right after checkout the order may not
    /// exist yet: a 404 here means "not yet" (recorded, not counted as an error) until the
    /// deadline, when it is returned as the error it then is. A 429 (the polling itself
    /// ran into the caller's rate limit) is treated the same way, after a longer pause.
    pub async fn wait_final(
        &self,
        trace: &Trace,
        id: &str,
        every: Duration,
        deadline: Instant,
    ) -> Result<Order, ApiError> {
        let path = format!("/api/orders/{id}");
        loop {
            let last_try = Instant::now() + every > deadline;
            let tolerated: &[u16] = if last_try { &[] } else { &[404, 429] };
            let mut pause = every;
            match self
                .send(Route::Order, &path, trace, None, None, tolerated)
                .await
            {
                Ok(v) => {
                    let order: Order = decode(Route::Order, v)?;
                    if is_final(&order.status) || last_try {
                        return Ok(order);
                    }
                }
                Err(e) if !last_try && e.status() == Some(StatusCode::NOT_FOUND) => {}
                Err(e) if !last_try && e.status() == Some(StatusCode::TOO_MANY_REQUESTS) => {
                    pause = every.max(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
            let pause = pause.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
    }

    /// `GET path` as `route`, its body decoded into `T`.
    async fn get_decoded<T: serde::de::DeserializeOwned>(
        &self,
        route: Route,
        path: &str,
        trace: &Trace,
    ) -> Result<T, ApiError> {
        let v = self.call(route, path, trace, None, None).await?;
        decode(route, v)
    }

    async fn call(
        &self,
        route: Route,
        path: &str,
        trace: &Trace,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ApiError> {
        self.send(route, path, trace, body, idempotency_key, &[])
            .await
    }

    /// One request to the shop API as given, with nothing checked or recorded: `token` as the
    /// bearer, `body` as JSON, `headers` as they are (no `traceparent` is added). The typed calls
    /// build on it; tests use it for the statuses the typed calls treat as errors.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, reqwest::Error> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Sends one request of `route` (with a `traceparent` of `trace` and this client's token)
    /// and records it; `tolerated` statuses are recorded but are not errors in the statistics
    /// (the caller still gets them as `Err`).
    async fn send(
        &self,
        route: Route,
        path: &str,
        trace: &Trace,
        body: Option<Value>,
        idempotency_key: Option<&str>,
        tolerated: &[u16],
    ) -> Result<Value, ApiError> {
        let traceparent = trace.traceparent(&mut rand::rng());
        let mut headers = vec![("traceparent", traceparent.as_str())];
        if let Some(key) = idempotency_key {
            headers.push(("Idempotency-Key", key));
        }

        let started = Instant::now();
        let result = self
            .request(
                route.method(),
                path,
                self.token.as_deref(),
                body.as_ref(),
                &headers,
            )
            .await;
        let elapsed = started.elapsed();

        let reply = match result {
            Ok(reply) => reply,
            Err(source) => {
                if let Some(r) = &self.recorder {
                    r.record(route, None, elapsed);
                }
                return Err(ApiError::Transport { route, source });
            }
        };
        let status = reply.status;
        if let Some(r) = &self.recorder {
            let code = status.as_u16();
            if tolerated.contains(&code) {
                r.record_tolerated(route, code, elapsed);
            } else {
                r.record(route, Some(code), elapsed);
            }
        }
        if !status.is_success() {
            let body = String::from_utf8_lossy(&reply.body);
            return Err(ApiError::Status {
                route,
                status,
                body: body.chars().take(200).collect(),
            });
        }
        if reply.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&reply.body).map_err(|e| ApiError::Decode {
            route,
            reason: e.to_string(),
        })
    }
}

/// A response as it came, from [`ShopClient::request`].
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON, or as a JSON string of its text when it is not JSON (an empty body
    /// is `""`): what a test prints or compares whatever the server sent.
    pub fn json_or_text(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
    }
}

fn decode<T: serde::de::DeserializeOwned>(route: Route, v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::Decode {
        route,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn traceparent_keeps_the_trace_and_changes_the_span() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let trace = Trace::random(&mut rng);
        let a = trace.traceparent(&mut rng);
        let b = trace.traceparent(&mut rng);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], trace.trace_id());
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], "01");
        assert_ne!(a, b, "each request gets its own span id");
        assert!(b.starts_with(&format!("00-{}-", trace.trace_id())));
    }

    #[test]
    fn products_accept_numeric_and_string_ids() {
        let list: Vec<Product> = serde_json::from_value(json!([
            {"id": 3, "name": "mug", "price_cents": 900, "available": 4},
            {"id": "p-9", "name": "tee", "price_cents": 1500}
        ]))
        .unwrap();
        assert_eq!(list[0].path_id(), "3");
        assert_eq!(list[1].path_id(), "p-9");
        assert_eq!(list[1].available, None);
    }

    #[test]
    fn a_reply_body_is_json_or_its_text() {
        let reply = |body: &'static str| Reply {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        };
        assert_eq!(reply(r#"{"a":1}"#).json_or_text(), json!({"a": 1}));
        assert_eq!(reply("not json").json_or_text(), json!("not json"));
        assert_eq!(reply("").json_or_text(), json!(""));
    }

    #[test]
    fn order_reason_is_the_latest_given() {
        let order: Order = serde_json::from_value(json!({
            "id": "o1", "status": "CANCELLED", "total_cents": 10,
            "history": [{"status": "PENDING", "at": "t0"},
                        {"status": "CANCELLED", "at": "t1", "reason": "payment_declined"}]
        }))
        .unwrap();
        assert_eq!(order.reason(), Some("payment_declined"));
        assert!(is_final(&order.status));
        assert!(!is_final("PAID"));
    }
}
