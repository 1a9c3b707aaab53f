//! The kit's HTTP behaviour: problem+json errors, identity headers, readiness, shutdown.
//! The readiness tests use the real RabbitMQ at `AMQP_URL` and a real SQLite file.

use std::time::Duration;

use axum::body::Body as AxumBody;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use service_kit::{
    Admin, AppError, BaseConfig, Body, Caller, Identity, IdentityConfig, Kit, OwnerOrAdmin, Service,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

#[derive(Debug, serde::Deserialize)]
struct Input {
    #[allow(dead_code)]
    n: u32,
}

fn app() -> Router {
    Router::new()
        .route("/me", get(|id: Identity| async move { id.user_id }))
        .route("/admin", get(|Admin(id): Admin| async move { id.user_id }))
        .route("/input", post(|Body(_): Body<Input>| async { "ok" }))
        .route(
            "/boom",
            get(|| async {
                Err::<(), _>(AppError::internal(std::io::Error::other(
                    "secret connection string",
                )))
            }),
        )
        .route(
            "/visible",
            get(|who: OwnerOrAdmin| async move { who.owner().unwrap_or("*everyone*").to_owned() }),
        )
        .route(
            "/conflict",
            get(|| async { Err::<(), _>(AppError::Conflict("taken".into())) }),
        )
}

/// The gateway as the caller, as the kit's authorization layer puts it on requests from the
/// gateway's SVID: only then are `x-user-id`/`x-user-scopes` believed (see tests/mtls.rs for
/// the other callers).
fn from_gateway(mut req: Request<AxumBody>) -> Request<AxumBody> {
    req.extensions_mut().insert(Caller::Workload {
        id: "spiffe://vantage.local/gateway".parse().unwrap(),
        workload: Some("gateway".into()),
        is_gateway: true,
    });
    req
}

async fn call(req: Request<AxumBody>) -> (StatusCode, Option<String>, Value) {
    let resp = app().oneshot(from_gateway(req)).await.unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, ct, body)
}

fn get_req(path: &str, headers: &[(&str, &str)]) -> Request<AxumBody> {
    let mut b = Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(AxumBody::empty()).unwrap()
}

const PROBLEM: Option<&str> = Some("application/problem+json");

#[tokio::test]
async fn errors_are_problem_json_and_internal_details_stay_inside() {
    let (s, ct, body) = call(get_req("/me", &[])).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(ct.as_deref(), PROBLEM);
    assert_eq!(body["status"], 401);

    let (s, _, body) = call(get_req("/me", &[("x-user-id", "u-1")])).await;
    assert_eq!((s, body), (StatusCode::OK, Value::String("u-1".into())));

    let (s, ct, _) = call(get_req(
        "/admin",
        &[("x-user-id", "u-1"), ("x-user-scopes", "shop")],
    ))
    .await;
    assert_eq!((s, ct.as_deref()), (StatusCode::FORBIDDEN, PROBLEM));
    let (s, _, _) = call(get_req(
        "/admin",
        &[("x-user-id", "u-1"), ("x-user-scopes", "shop admin")],
    ))
    .await;
    assert_eq!(s, StatusCode::OK);

    let bad = Request::post("/input")
        .header("content-type", "application/json")
        .body(AxumBody::from("{\"n\": -1}"))
        .unwrap();
    let (s, ct, body) = call(bad).await;
    assert_eq!((s, ct.as_deref()), (StatusCode::BAD_REQUEST, PROBLEM));
    assert!(body["detail"].as_str().unwrap().contains("n"), "{body}");

    let (s, ct, body) = call(get_req("/boom", &[])).await;
    assert_eq!(
        (s, ct.as_deref()),
        (StatusCode::INTERNAL_SERVER_ERROR, PROBLEM)
    );
    assert!(
        !body.to_string().contains("secret"),
        "internal details leaked: {body}"
    );

    let (s, _, body) = call(get_req("/conflict", &[])).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(body["detail"], "taken");
}

#[tokio::test]
async fn user_headers_from_any_other_caller_are_not_believed() {
    let mut req = get_req("/me", &[("x-user-id", "u-1"), ("x-user-scopes", "admin")]);
    req.extensions_mut().insert(Caller::Workload {
        id: "spiffe://vantage.local/cart".parse().unwrap(),
        workload: Some("cart".into()),
        is_gateway: false,
    });
    let resp = app().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = app()
        .oneshot(get_req("/me", &[("x-user-id", "u-1")]))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "no caller at all");
}

#[tokio::test]
async fn problems_use_the_gateway_scheme_with_a_slug_per_kind() {
    let base = observability::problem::PROBLEM_BASE;
    let (_, _, body) = call(get_req("/me", &[])).await;
    assert_eq!(body["type"], format!("{base}unauthorized"));
    assert_eq!(body["title"], "Unauthorized");
    let (_, _, body) = call(get_req("/admin", &[("x-user-id", "u-1")])).await;
    assert_eq!(body["type"], format!("{base}forbidden"));
    let (_, _, body) = call(get_req("/boom", &[])).await;
    assert_eq!(body["type"], format!("{base}internal"));
    assert_eq!(body["detail"], "The request could not be completed.");
    let (_, _, body) = call(get_req("/conflict", &[])).await;
    assert_eq!(body["type"], format!("{base}conflict"));
}

#[tokio::test]
async fn owners_see_their_own_rows_and_admins_everyone_s() {
    let (s, _, body) = call(get_req("/visible", &[])).await;
    assert_eq!(
        (s, body["type"].as_str()),
        (
            StatusCode::UNAUTHORIZED,
            Some("https://vantage.dev/problems/unauthorized")
        )
    );
    let (s, _, body) = call(get_req(
        "/visible",
        &[("x-user-id", "u-1"), ("x-user-scopes", "shop")],
    ))
    .await;
    assert_eq!((s, body), (StatusCode::OK, Value::String("u-1".into())));
    let (s, _, body) = call(get_req(
        "/visible",
        &[("x-user-id", "u-1"), ("x-user-scopes", "shop admin")],
    ))
    .await;
    assert_eq!(
        (s, body),
        (StatusCode::OK, Value::String("*everyone*".into()))
    );
}

use test_support::amqp_url;

/// A service of its own for the kit's tests: no queue, no events.
const KIT_TEST: Service = Service::new(
    messaging::Contract {
        service: "kit-test",
        produces: &[],
        consumes: &[],
    },
    0,
    "0",
);

async fn start(
    amqp_url: String,
) -> (
    String,
    String,
    CancellationToken,
    tokio::task::JoinHandle<()>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = identity::dev_ca::DevCa::new("kit test CA").unwrap();
    let svid = dir.path().join("svid");
    ca.write_svid(
        &svid,
        &"spiffe://vantage.local/kit-test".parse().unwrap(),
        Duration::from_secs(3600),
    )
    .unwrap();
    let config = BaseConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        database_path: dir.path().join("nested/kit.db"),
        amqp: messaging::BrokerEndpoint::url(amqp_url),
        queue_prefix: format!("kit-{}.", uuid_like()),
        ops_addr: "127.0.0.1:0".parse().unwrap(),
        identity: IdentityConfig::mtls(svid),
        retry: messaging::RetryBackoff::default(),
        outbox_max_age: std::time::Duration::from_secs(60),
    };
    let prefix = config.queue_prefix.clone();
    let shutdown = CancellationToken::new();
    let kit = Kit::start(
        KIT_TEST,
        config,
        "CREATE TABLE IF NOT EXISTS t (x)",
        shutdown.clone(),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Probes and metrics are on the plain ops port.
    let base = format!("http://{}", ops.local_addr().unwrap());
    let task =
        tokio::spawn(async move { kit.serve_on(listener, ops, Router::new()).await.unwrap() });
    (base, prefix, shutdown, task, dir)
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

async fn fetch(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// Deletes the queues the relay declared under this test's prefix.
async fn cleanup(prefix: &str) {
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let consumers: Vec<&str> = messaging::contract::consumers()
        .map(|c| c.service)
        .collect();
    messaging::Topology::new(prefix)
        .delete(&ch, &consumers)
        .await
        .unwrap();
}

#[tokio::test]
async fn ready_only_with_the_broker_and_stops_on_shutdown() {
    if let Err(why) = test_support::require_rabbitmq(&amqp_url()) {
        panic!("{why}");
    }
    let (base, prefix, shutdown, task, _dir) = start(amqp_url()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = fetch(&format!("{base}/readyz")).await;
        if code == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready with RabbitMQ at AMQP_URL ({code} {body}); start one with `rabbitmq-server -detached`"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fetch(&format!("{base}/healthz")).await.0, 200);
    let (code, metrics) = fetch(&format!("{base}/metrics")).await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("shop_broker_reconnects_total"),
        "{metrics}"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
    cleanup(&prefix).await;
}

#[tokio::test]
async fn not_ready_without_the_broker() {
    let port = test_support::free_port();
    let (base, _prefix, shutdown, task, _dir) =
        start(format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, body) = fetch(&format!("{base}/readyz")).await;
    assert_eq!(code, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    // Each failing check names its state (issue 14: blocked and lost channels show too).
    assert_eq!(body["failing"], serde_json::json!(["broker:relay (down)"]));
    assert_eq!(body["type"], "https://vantage.dev/problems/not-ready");
    assert_eq!(
        fetch(&format!("{base}/healthz")).await.0,
        200,
        "alive even when not ready"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}
