//! The axum layer: SERVER spans named by route, metrics with exemplars that point at them.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use observability::http_server::{metrics_endpoint, HttpServerLayer};
use observability::metrics::{HttpServerMetrics, MetricsRegistry};
use test_support::{AttrValue, OtlpReceiver, SpanKind};
use tower::ServiceExt as _;

fn app(registry: &MetricsRegistry) -> Router {
    Router::new()
        .route(
            "/orders/{id}",
            get(|| async {
                tracing::info!("Handling.");
                "order"
            }),
        )
        .route("/boom", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .layer(HttpServerLayer::new(HttpServerMetrics::new(registry)))
        .route("/metrics", metrics_endpoint(registry.clone()))
}

async fn send(app: &Router, uri: &str, traceparent: Option<&str>) -> (StatusCode, String) {
    let mut request = Request::get(uri)
        .header("host", "orders:8080")
        .header("authorization", "Bearer top-secret");
    if let Some(tp) = traceparent {
        request = request.header("traceparent", tp);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "current_thread")]
async fn requests_get_server_spans_metrics_and_exemplars() {
    let receiver = OtlpReceiver::start();
    let env = HashMap::from([(
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
        receiver.grpc_endpoint(),
    )]);
    let (telemetry, dispatch) = observability::build("orders", "1", &env, std::io::sink).unwrap();
    let _default = tracing::dispatcher::set_default(&dispatch);

    let registry = MetricsRegistry::new();
    let app = app(&registry);
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(
        send(&app, "/orders/42", Some(incoming)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, "/boom", None).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(send(&app, "/nowhere", None).await.0, StatusCode::NOT_FOUND);
    let (status, metrics) = send(&app, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);

    telemetry.force_flush();
    let spans = receiver
        .wait_for(
            |s| s.iter().filter(|s| s.kind() == SpanKind::Server).count() >= 3,
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let order = spans
        .iter()
        .find(|s| s.name() == "GET /orders/{id}")
        .unwrap();
    assert_eq!(order.kind(), SpanKind::Server);
    assert_eq!(order.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(order.parent_span_id().as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(
        order.attr_str("http.route").as_deref(),
        Some("/orders/{id}")
    );
    assert_eq!(order.attr_str("url.path").as_deref(), Some("/orders/42"));
    assert_eq!(
        order.attr("http.response.status_code"),
        Some(AttrValue::Int(200))
    );
    assert_eq!(order.attr_str("server.address").as_deref(), Some("orders"));

    let boom = spans.iter().find(|s| s.name() == "GET /boom").unwrap();
    assert!(boom.is_error());
    assert_eq!(boom.attr_str("error.type").as_deref(), Some("500"));
    assert_eq!(
        boom.parent_span_id(),
        None,
        "no incoming context: a new trace"
    );

    // Unmatched paths are named by method only, so raw paths never become span names.
    let unmatched = spans
        .iter()
        .find(|s| s.kind() == SpanKind::Server && s.name() == "GET")
        .unwrap();
    assert_eq!(unmatched.attr("http.route"), None);
    assert_eq!(
        unmatched.attr("http.response.status_code"),
        Some(AttrValue::Int(404))
    );
    assert!(
        !unmatched.is_error(),
        "4xx is the client's fault on a server span"
    );

    assert!(
        spans.iter().all(|s| s.name() != "GET /metrics"),
        "scrapes are not traced"
    );
    assert!(spans.iter().all(|s| !s.contains_text("top-secret")));

    // OpenMetrics with the trace of the request as the bucket's exemplar.
    let parsed =
        test_support::parse_openmetrics(&metrics).unwrap_or_else(|e| panic!("{e}\n{metrics}"));
    let family = &parsed.families["http_server_request_duration_seconds"];
    assert_eq!(
        (family.kind.as_str(), family.unit.as_deref()),
        ("histogram", Some("seconds"))
    );
    let exemplar_traces: Vec<_> = parsed
        .with_exemplars()
        .filter(|s| s.labels.get("http_route").map(String::as_str) == Some("/orders/{id}"))
        .map(|s| s.exemplar.as_ref().unwrap().labels["trace_id"].clone())
        .collect();
    assert_eq!(exemplar_traces, vec![order.trace_id()]);
    assert_eq!(
        parsed.value(
            "http_server_request_duration_seconds_count",
            &[
                ("http_route", "/boom"),
                ("http_response_status_code", "500")
            ]
        ),
        Some(1.0)
    );
    let exemplar = format!("# {{trace_id=\"{}\"}}", order.trace_id());
    let bucket = metrics
        .lines()
        .find(|l| l.contains("http_route=\"/orders/{id}\"") && l.contains(&exemplar))
        .unwrap_or_else(|| panic!("no bucket with {exemplar}:\n{metrics}"));
    assert!(
        bucket.starts_with("http_server_request_duration_seconds_bucket{"),
        "{bucket}"
    );
    assert!(
        bucket.contains("http_request_method=\"GET\"")
            && bucket.contains("http_response_status_code=\"200\""),
        "{bucket}"
    );
    assert!(metrics.contains("error_type=\"500\""), "{metrics}");
    assert!(
        metrics.contains("http_route=\"\""),
        "unmatched requests share one empty route label:\n{metrics}"
    );
    assert!(
        !metrics.contains("/nowhere"),
        "raw paths never become labels:\n{metrics}"
    );
    assert!(
        metrics.contains("http_server_active_requests 0"),
        "nothing in flight; the scrape is not counted:\n{metrics}"
    );

    drop(_default);
    telemetry.shutdown();
}
