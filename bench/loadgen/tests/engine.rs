//! The load engine against a small scripted shop served in-process: what loadgen sends
//! (one trace per iteration, in-stock products only, idempotency keys), how it paces, and
//! how it settles orders through the read model's 404-then-final sequence. The end-to-end
//! run against the real stack is in services/stack/tests/stack.rs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser as _;
use loadgen::{Config, Options};
use serde_json::{json, Value};

/// One request as the fake shop saw it.
#[derive(Clone, Debug)]
struct Seen {
    route: &'static str,
    trace_id: String,
    body: Value,
    idempotency_key: Option<String>,
}

#[derive(Clone, Default)]
struct Shop {
    seen: Arc<Mutex<Vec<Seen>>>,
    orders: Arc<Mutex<HashMap<String, Instant>>>,
    /// Answer `GET /api/products/{id}` with 500, to exercise error accounting.
    broken_product: bool,
    /// Answer the first poll of each order with 429, as a rate-limited gateway would.
    throttle_first_poll: bool,
    polled: Arc<Mutex<HashSet<String>>>,
}

impl Shop {
    fn note(&self, route: &'static str, headers: &HeaderMap, body: Value) {
        let traceparent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "malformed traceparent {traceparent:?}");
        if route != "register" && route != "login" {
            assert!(
                headers.get("authorization").is_some() || route.starts_with("products"),
                "{route} without a bearer token"
            );
        }
        self.seen.lock().unwrap().push(Seen {
            route,
            trace_id: parts[1].to_owned(),
            body,
            idempotency_key: headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        });
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn router(shop: Shop) -> Router {
    Router::new()
        .route(
            "/api/users/register",
            post(|State(s): State<Shop>, h: HeaderMap, Json(b): Json<Value>| async move {
                s.note("register", &h, b);
                StatusCode::CREATED
            }),
        )
        .route(
            "/api/users/login",
            post(|State(s): State<Shop>, h: HeaderMap, Json(b): Json<Value>| async move {
                s.note("login", &h, b);
                Json(json!({"access_token": "t", "token_type": "Bearer", "expires_in": 900}))
            }),
        )
        .route(
            "/api/products",
            get(|State(s): State<Shop>, h: HeaderMap| async move {
                s.note("products", &h, Value::Null);
                Json(json!([
                    {"id": "p-1", "sku": "A", "name": "mug", "price_cents": 900, "currency": "EUR", "available": 50},
                    {"id": "p-2", "sku": "B", "name": "sold out", "price_cents": 100, "currency": "EUR", "available": 0},
                    {"id": "p-3", "sku": "C", "name": "tee", "price_cents": 1500, "currency": "EUR", "available": 5}
                ]))
            }),
        )
        .route(
            "/api/products/{id}",
            get(|State(s): State<Shop>, h: HeaderMap, Path(id): Path<String>| async move {
                s.note("product", &h, json!(id));
                if s.broken_product {
                    return Err(StatusCode::INTERNAL_SERVER_ERROR);
                }
                Ok(Json(json!({"id": id, "name": "x", "price_cents": 1, "available": 1})))
            }),
        )
        .route(
            "/api/cart/items",
            post(|State(s): State<Shop>, h: HeaderMap, Json(b): Json<Value>| async move {
                s.note("add", &h, b);
                Json(json!({"items": [], "total_cents": 0, "currency": "EUR"}))
            }),
        )
        .route(
            "/api/cart",
            get(|State(s): State<Shop>, h: HeaderMap| async move {
                s.note("cart", &h, Value::Null);
                Json(json!({"items": [], "total_cents": 0, "currency": "EUR"}))
            }),
        )
        .route(
            "/api/cart/checkout",
            post(|State(s): State<Shop>, h: HeaderMap, Json(b): Json<Value>| async move {
                s.note("checkout", &h, b);
                let id = uuid::Uuid::new_v4().to_string();
                s.orders.lock().unwrap().insert(id.clone(), Instant::now());
                (StatusCode::ACCEPTED, Json(json!({"order_id": id})))
            }),
        )
        .route(
            "/api/orders/{id}",
            get(|State(s): State<Shop>, h: HeaderMap, Path(id): Path<String>| async move {
                s.note("order", &h, json!(id));
                if s.throttle_first_poll && s.polled.lock().unwrap().insert(id.clone()) {
                    return Err(StatusCode::TOO_MANY_REQUESTS);
                }
                let placed = s.orders.lock().unwrap().get(&id).copied();
                // The read model lags: unknown for 100 ms, PENDING until 300 ms, then final.
                match placed.map(|t| t.elapsed()) {
                    None => Err(StatusCode::NOT_FOUND),
                    Some(age) if age < Duration::from_millis(100) => Err(StatusCode::NOT_FOUND),
                    Some(age) if age < Duration::from_millis(300) => {
                        Ok(Json(json!({"id": id, "status": "PENDING", "total_cents": 900, "history": []})))
                    }
                    Some(_) => Ok(Json(json!({
                        "id": id, "status": "SHIPPED", "total_cents": 900,
                        "history": [{"status": "PENDING", "at": "t0"}, {"status": "SHIPPED", "at": "t1"}]
                    }))),
                }
            }),
        )
        .with_state(shop)
}

async fn serve(shop: Shop) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(shop)).await.unwrap() });
    format!("http://{addr}")
}

fn config(url: &str, args: &[&str]) -> Config {
    let opts = Options::try_parse_from(
        ["loadgen", "--gateway-url", url, "--no-progress"]
            .into_iter()
            .chain(args.iter().copied()),
    )
    .unwrap();
    Config::try_from(&opts).unwrap()
}

#[tokio::test]
async fn checkouts_are_one_trace_each_and_every_order_settles() {
    let shop = Shop::default();
    let url = serve(shop.clone()).await;
    let cfg = config(
        &url,
        &[
            "--vus",
            "4",
            "--iterations",
            "40",
            "--rate",
            "0",
            "--weights",
            "0,0,1",
        ],
    );
    let summary = loadgen::run(&cfg, std::future::pending()).await;

    assert_eq!(summary.errors, 0, "{}", summary.table());
    assert_eq!(summary.iterations, 40);
    assert_eq!(summary.orders.placed, 40);
    assert_eq!(summary.orders.unsettled, 0);
    assert_eq!(summary.orders.by_status.get("SHIPPED"), Some(&40));
    assert!(
        summary.problems(0.0).is_empty(),
        "{:?}",
        summary.problems(0.0)
    );

    let seen = shop.seen();
    assert_eq!(seen.iter().filter(|s| s.route == "register").count(), 4);
    let checkouts: Vec<&Seen> = seen.iter().filter(|s| s.route == "checkout").collect();
    assert_eq!(checkouts.len(), 40);
    let traces: HashSet<&str> = checkouts.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces.len(), 40, "one trace per iteration");
    for c in &checkouts {
        // The cart is empty before every checkout here, so each iteration adds one item
        // first, under the same trace.
        let adds = seen
            .iter()
            .filter(|s| s.route == "add" && s.trace_id == c.trace_id)
            .count();
        assert_eq!(adds, 1, "add-to-cart shares the checkout's trace");
        assert_eq!(c.body["payment_token"], "tok_visa");
    }
    let keys: HashSet<&str> = checkouts
        .iter()
        .map(|s| s.idempotency_key.as_deref().expect("Idempotency-Key"))
        .collect();
    assert_eq!(keys.len(), 40, "a fresh idempotency key per checkout");
    assert!(
        seen.iter()
            .filter(|s| s.route == "add")
            .all(|s| s.body["product_id"] != "p-2"),
        "sold-out products are never added"
    );
    let order_route = summary
        .routes
        .iter()
        .find(|r| r.route == "GET /api/orders/{id}")
        .unwrap();
    assert_eq!(order_route.errors, 0, "read-model 404s are not errors");
}

#[tokio::test]
async fn rate_paces_iterations_over_all_virtual_users() {
    let shop = Shop::default();
    let url = serve(shop.clone()).await;
    let cfg = config(
        &url,
        &[
            "--vus",
            "5",
            "--iterations",
            "20",
            "--rate",
            "40",
            "--weights",
            "1,0,0",
        ],
    );
    let started = Instant::now();
    let summary = loadgen::run(&cfg, std::future::pending()).await;
    let took = started.elapsed();
    assert_eq!(summary.iterations, 20);
    // 20 iterations at 40/s: the last starts 475 ms after the first.
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let browses = shop.seen().iter().filter(|s| s.route == "product").count();
    assert_eq!(browses, 20);
}

#[tokio::test]
async fn server_errors_count_and_fail_the_run() {
    let shop = Shop {
        broken_product: true,
        ..Shop::default()
    };
    let url = serve(shop).await;
    let cfg = config(
        &url,
        &["--vus", "2", "--iterations", "10", "--weights", "1,0,0"],
    );
    let summary = loadgen::run(&cfg, std::future::pending()).await;
    assert_eq!(summary.errors, 10);
    assert_eq!(summary.statuses.get("500"), Some(&10));
    let row = summary
        .routes
        .iter()
        .find(|r| r.route == "GET /api/products/{id}")
        .unwrap();
    assert_eq!(row.errors, 10);
    assert!(!summary.problems(0.0).is_empty());
    assert!(
        summary.problems(0.5).is_empty(),
        "10 of 26 requests is under 50%"
    );
    assert_eq!(
        summary.sample_errors.len(),
        1,
        "ten failures of one kind are one sample: {:?}",
        summary.sample_errors
    );
    assert!(summary.sample_errors[0].contains("500"));
}

#[tokio::test]
async fn shutdown_stops_early_and_still_settles() {
    let shop = Shop::default();
    let url = serve(shop.clone()).await;
    let cfg = config(
        &url,
        &[
            "--vus",
            "2",
            "--duration",
            "1h",
            "--rate",
            "20",
            "--weights",
            "0,0,1",
        ],
    );
    let started = Instant::now();
    let summary = loadgen::run(&cfg, tokio::time::sleep(Duration::from_millis(500))).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(summary.orders.placed > 0);
    assert_eq!(summary.orders.unsettled, 0);
    assert_eq!(summary.errors, 0);
}

#[tokio::test]
async fn polling_backs_off_on_429_and_still_settles() {
    let shop = Shop {
        throttle_first_poll: true,
        ..Shop::default()
    };
    let url = serve(shop.clone()).await;
    let cfg = config(
        &url,
        &["--vus", "2", "--iterations", "4", "--weights", "0,0,1"],
    );
    let summary = loadgen::run(&cfg, std::future::pending()).await;
    assert_eq!(summary.orders.placed, 4);
    assert_eq!(summary.orders.unsettled, 0, "{}", summary.table());
    assert_eq!(summary.errors, 0, "throttled polls are not load errors");
    assert_eq!(
        summary.statuses.get("429"),
        Some(&4),
        "but they are counted"
    );
}
