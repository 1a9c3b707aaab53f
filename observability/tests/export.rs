//! Spans reach a real OTLP receiver over both protocols, whatever runtime the caller has.
//!
//! These use `observability::build` (no global state) so each test has its own pipeline.

use std::collections::HashMap;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use observability::http_trace::{self, ServerRequest, Side};
use observability::{propagation, OpenTelemetrySpanExt as _};
use test_support::{AttrValue, OtlpReceiver, ReceivedSpan, SpanKind};

const WAIT: Duration = Duration::from_secs(10);

fn env(receiver: &OtlpReceiver, protocol: &str) -> HashMap<String, String> {
    let endpoint = match protocol {
        "grpc" => receiver.grpc_endpoint(),
        _ => receiver.http_endpoint(),
    };
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Builds a pipeline, runs `work` under it, shuts down (which must flush), returns what arrived.
fn export_with(
    receiver: &OtlpReceiver,
    protocol: &str,
    name: &str,
    work: impl FnOnce(),
) -> Vec<ReceivedSpan> {
    let (telemetry, dispatch) = observability::build(
        "export-test",
        "1.2.3",
        &env(receiver, protocol),
        std::io::sink,
    )
    .unwrap();
    assert!(telemetry.exporting().is_some());
    tracing::dispatcher::with_default(&dispatch, work);
    telemetry.shutdown();
    receiver
        .wait_for_blocking(|spans| spans.iter().any(|s| s.name() == name), WAIT)
        .unwrap()
}

fn check_resource(span: &ReceivedSpan) {
    assert_eq!(span.service_name, "export-test");
    assert_eq!(
        span.resource_attr("service.version"),
        Some(AttrValue::Str("1.2.3".into()))
    );
    let instance = span
        .resource_attr("service.instance.id")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap();
    assert_eq!(instance.len(), 36, "uuid expected, got {instance}");
    assert_eq!(
        span.resource_attr("deployment.environment.name"),
        Some(AttrValue::Str("test".into()))
    );
    assert_eq!(
        span.resource_attr("telemetry.sdk.language"),
        Some(AttrValue::Str("rust".into()))
    );
}

#[test]
fn grpc_export_works_without_any_tokio_runtime() {
    assert!(tokio::runtime::Handle::try_current().is_err());
    let receiver = OtlpReceiver::start();
    let spans = export_with(&receiver, "grpc", "no-runtime-grpc", || {
        tracing::info_span!("no-runtime-grpc").in_scope(|| tracing::info!("inside"));
    });
    check_resource(&spans[0]);
    assert!(receiver.grpc_requests() >= 1);
    assert_eq!(receiver.http_requests(), 0);
}

#[test]
fn http_protobuf_export_works_without_any_tokio_runtime() {
    let receiver = OtlpReceiver::start();
    let spans = export_with(&receiver, "http/protobuf", "no-runtime-http", || {
        tracing::info_span!("no-runtime-http").in_scope(|| tracing::info!("inside"));
    });
    check_resource(&spans[0]);
    assert!(receiver.http_requests() >= 1);
    assert_eq!(receiver.grpc_requests(), 0);
}

/// Init, span creation and shutdown all on a current-thread runtime's only thread: the exporter
/// must not need that thread, and shutting down inside async code must not panic.
#[tokio::test(flavor = "current_thread")]
async fn export_works_from_inside_a_current_thread_runtime() {
    for protocol in ["grpc", "http/protobuf"] {
        let receiver = OtlpReceiver::start();
        let (telemetry, dispatch) = observability::build(
            "export-test",
            "1.2.3",
            &env(&receiver, protocol),
            std::io::sink,
        )
        .unwrap();
        {
            let _default = tracing::dispatcher::set_default(&dispatch);
            let span = tracing::info_span!("in-runtime");
            async { tokio::task::yield_now().await }
                .instrument_in(&span)
                .await;
        }
        telemetry.shutdown();
        let spans = receiver
            .wait_for(|s| s.iter().any(|s| s.name() == "in-runtime"), WAIT)
            .await
            .unwrap();
        check_resource(&spans[0]);
    }
}

/// Tiny helper so the test reads like production code (`.instrument(span)`).
trait InstrumentIn: std::future::Future + Sized {
    fn instrument_in(self, span: &tracing::Span) -> tracing::instrument::Instrumented<Self> {
        tracing::Instrument::instrument(self, span.clone())
    }
}
impl<F: std::future::Future> InstrumentIn for F {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_flush_exports_without_shutdown_and_drop_flushes_the_rest() {
    let receiver = OtlpReceiver::start();
    let (telemetry, dispatch) = observability::build(
        "export-test",
        "1.2.3",
        &env(&receiver, "grpc"),
        std::io::sink,
    )
    .unwrap();
    tracing::dispatcher::with_default(&dispatch, || tracing::info_span!("first").in_scope(|| {}));
    telemetry.force_flush();
    receiver
        .wait_for(|s| s.iter().any(|s| s.name() == "first"), WAIT)
        .await
        .unwrap();

    tracing::dispatcher::with_default(&dispatch, || tracing::info_span!("second").in_scope(|| {}));
    drop(telemetry);
    receiver
        .wait_for(|s| s.iter().any(|s| s.name() == "second"), WAIT)
        .await
        .unwrap();
}

/// A burst far larger than the SDK's default queue (2048) within one export interval is not dropped.
#[test]
fn a_burst_of_spans_is_not_dropped() {
    const BURST: usize = 5_000;
    let receiver = OtlpReceiver::start();
    let (telemetry, dispatch) = observability::build(
        "export-test",
        "1.2.3",
        &env(&receiver, "grpc"),
        std::io::sink,
    )
    .unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        for _ in 0..BURST {
            tracing::info_span!("burst").in_scope(|| {});
        }
    });
    telemetry.shutdown();
    let spans = receiver
        .wait_for_blocking(
            |s| s.iter().filter(|s| s.name() == "burst").count() >= BURST,
            WAIT,
        )
        .unwrap();
    assert_eq!(spans.iter().filter(|s| s.name() == "burst").count(), BURST);
}

#[test]
fn server_span_continues_the_incoming_trace_and_client_span_is_its_child() {
    let receiver = OtlpReceiver::start();
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    headers.insert("host", HeaderValue::from_static("api.vantage.test:8443"));
    headers.insert("user-agent", HeaderValue::from_static("curl/8.5"));
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer very-secret-token"),
    );
    headers.insert("cookie", HeaderValue::from_static("session=cookie-secret"));
    let uri: Uri = "/orders/42?access_token=query-secret&page=2"
        .parse()
        .unwrap();
    let mut outgoing = HeaderMap::new();

    let spans = export_with(&receiver, "grpc", "POST /orders/{id}", || {
        let mut req = ServerRequest::new(&Method::POST, &uri, Version::HTTP_11, &headers);
        req.scheme = "https";
        req.client_address = Some("10.1.2.3".parse().unwrap());
        let server = http_trace::server_span(&req);
        http_trace::set_route(&server, &Method::POST, "/orders/{id}");
        server.set_attribute("vantage.auth.result", "allowed");
        for attempt in 0..2 {
            let client = http_trace::client_span(
                &server,
                &Method::POST,
                "http://orders:8080/orders/42",
                attempt,
            );
            if attempt == 0 {
                http_trace::record_error(&client, "connection_refused");
            } else {
                propagation::inject_http(&client.context(), &mut outgoing);
                http_trace::record_status(&client, http::StatusCode::CREATED, Side::Client);
            }
        }
        http_trace::record_status(&server, http::StatusCode::CREATED, Side::Server);
    });

    let server = spans
        .iter()
        .find(|s| s.name() == "POST /orders/{id}")
        .unwrap();
    assert_eq!(server.kind(), SpanKind::Server);
    assert_eq!(server.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(server.parent_span_id().as_deref(), Some("00f067aa0ba902b7"));
    for (key, value) in [
        ("http.request.method", AttrValue::Str("POST".into())),
        ("url.path", AttrValue::Str("/orders/42".into())),
        ("url.scheme", AttrValue::Str("https".into())),
        ("http.route", AttrValue::Str("/orders/{id}".into())),
        ("server.address", AttrValue::Str("api.vantage.test".into())),
        ("server.port", AttrValue::Int(8443)),
        ("client.address", AttrValue::Str("10.1.2.3".into())),
        ("user_agent.original", AttrValue::Str("curl/8.5".into())),
        ("network.protocol.version", AttrValue::Str("1.1".into())),
        ("http.response.status_code", AttrValue::Int(201)),
        ("vantage.auth.result", AttrValue::Str("allowed".into())),
    ] {
        assert_eq!(server.attr(key), Some(value), "{key}");
    }
    assert_eq!(server.attr("error.type"), None);
    assert!(!server.is_error());

    let clients: Vec<_> = spans
        .iter()
        .filter(|s| s.kind() == SpanKind::Client)
        .collect();
    assert_eq!(clients.len(), 2, "one CLIENT span per attempt");
    for client in &clients {
        assert_eq!(client.name(), "POST");
        assert_eq!(client.trace_id(), server.trace_id());
        assert_eq!(client.parent_span_id(), Some(server.span_id()));
        assert_eq!(client.attr_str("server.address").as_deref(), Some("orders"));
        assert_eq!(client.attr("server.port"), Some(AttrValue::Int(8080)));
    }
    let first = clients
        .iter()
        .find(|c| c.attr("http.request.resend_count").is_none())
        .unwrap();
    assert!(first.is_error());
    assert_eq!(
        first.attr_str("error.type").as_deref(),
        Some("connection_refused")
    );
    let retry = clients
        .iter()
        .find(|c| c.attr("http.request.resend_count") == Some(AttrValue::Int(1)))
        .unwrap();
    assert_eq!(
        retry.attr("http.response.status_code"),
        Some(AttrValue::Int(201))
    );

    // The upstream request carries the retry's context, not the caller's.
    let traceparent = outgoing["traceparent"].to_str().unwrap();
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", retry.trace_id(), retry.span_id())
    );

    // Secrets never reach the trace; the redacted query still does.
    for span in &spans {
        for secret in [
            "very-secret-token",
            "Bearer",
            "cookie-secret",
            "query-secret",
        ] {
            assert!(!span.contains_text(secret), "{secret} leaked into {span:?}");
        }
    }
    assert_eq!(
        server.attr_str("url.query").as_deref(),
        Some("access_token=[REDACTED]&page=2")
    );
}

#[test]
fn unsampled_parent_is_respected_and_ratio_zero_exports_nothing() {
    let receiver = OtlpReceiver::start();
    let mut env = env(&receiver, "grpc");
    env.insert(
        "OTEL_TRACES_SAMPLER".into(),
        "parentbased_traceidratio".into(),
    );
    env.insert("OTEL_TRACES_SAMPLER_ARG".into(), "0".into());
    let (telemetry, dispatch) =
        observability::build("export-test", "1.2.3", &env, std::io::sink).unwrap();
    let mut sampled_parent = HeaderMap::new();
    sampled_parent.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let mut unsampled_parent = HeaderMap::new();
    unsampled_parent.insert(
        "traceparent",
        HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
    );
    let uri: Uri = "/".parse().unwrap();
    let mut propagated = HeaderMap::new();
    tracing::dispatcher::with_default(&dispatch, || {
        // Root: ratio 0 drops it.
        tracing::info_span!("root").in_scope(|| {});
        // Caller sampled: parent-based keeps it even at ratio 0.
        let kept = http_trace::server_span(&ServerRequest::new(
            &Method::GET,
            &uri,
            Version::HTTP_11,
            &sampled_parent,
        ));
        http_trace::set_route(&kept, &Method::GET, "/kept");
        drop(kept);
        // Caller did not sample: dropped, but the trace id still propagates, marked unsampled.
        let dropped = http_trace::server_span(&ServerRequest::new(
            &Method::GET,
            &uri,
            Version::HTTP_11,
            &unsampled_parent,
        ));
        propagation::inject_http(&dropped.context(), &mut propagated);
    });
    telemetry.shutdown();
    let spans = receiver
        .wait_for_blocking(|s| s.iter().any(|s| s.name() == "GET /kept"), WAIT)
        .unwrap();
    assert_eq!(
        spans.len(),
        1,
        "only the sampled-parent span: {:?}",
        spans.iter().map(|s| s.name()).collect::<Vec<_>>()
    );
    let traceparent = propagated["traceparent"].to_str().unwrap();
    assert!(
        traceparent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{traceparent}"
    );
    assert!(traceparent.ends_with("-00"), "{traceparent}");
}

#[test]
fn sdk_disabled_exports_nothing() {
    let receiver = OtlpReceiver::start();
    let mut env = env(&receiver, "grpc");
    env.insert("OTEL_SDK_DISABLED".into(), "true".into());
    let (telemetry, dispatch) =
        observability::build("export-test", "1.2.3", &env, std::io::sink).unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        let span = tracing::info_span!("disabled");
        assert!(!span.context().span().span_context().is_valid());
    });
    telemetry.shutdown();
    std::thread::sleep(Duration::from_millis(300));
    assert!(receiver.spans().is_empty());
}

#[test]
fn invalid_configuration_is_rejected_before_anything_starts() {
    let env: HashMap<&str, &str> = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
    ]
    .into_iter()
    .collect();
    let error = observability::build("x", "0", &env, std::io::sink).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && text.contains("OTEL_TRACES_SAMPLER"),
        "{text}"
    );
}

use opentelemetry::trace::TraceContextExt as _;

// === TLS to the collector ===

/// A CA, a receiver that speaks TLS and requires a client certificate from that CA, and the
/// PEM files an exporter needs (CA, client certificate, client key).
struct TlsCollector {
    receiver: OtlpReceiver,
    dir: tempfile::TempDir,
}

impl TlsCollector {
    fn start() -> TlsCollector {
        use identity::dev_ca::DevCa;
        use rustls_pki_types::pem::PemObject;
        let ca = DevCa::new("collector test CA").unwrap();
        let server = ca
            .issue_edge(&["127.0.0.1"], Duration::from_secs(3600))
            .unwrap();
        let client_id = "spiffe://vantage.local/gateway".parse().unwrap();
        let client = ca
            .issue_svid(&client_id, Duration::from_secs(3600))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.bundle_pem()).unwrap();
        std::fs::write(dir.path().join("client.pem"), &client.cert_pem).unwrap();
        std::fs::write(dir.path().join("client.key"), &client.key_pem).unwrap();

        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.bundle_pem().as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::clone(identity::tls::provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let chain = rustls_pki_types::CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key =
            rustls_pki_types::PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        TlsCollector {
            receiver: OtlpReceiver::start_tls(std::sync::Arc::new(config)),
            dir,
        }
    }

    fn env(&self, protocol: &str) -> HashMap<String, String> {
        let mut env = env(&self.receiver, protocol);
        let file = |name: &str| self.dir.path().join(name).display().to_string();
        env.insert("OTEL_EXPORTER_OTLP_CERTIFICATE".into(), file("ca.pem"));
        env.insert(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE".into(),
            file("client.pem"),
        );
        env.insert("OTEL_EXPORTER_OTLP_CLIENT_KEY".into(), file("client.key"));
        env
    }
}

#[test]
fn spans_reach_a_tls_collector_with_a_client_certificate_over_grpc_and_http() {
    for protocol in ["grpc", "http/protobuf"] {
        let collector = TlsCollector::start();
        assert!(collector.receiver.grpc_endpoint().starts_with("https://"));
        let (telemetry, dispatch) = observability::build(
            "export-test",
            "1.2.3",
            &collector.env(protocol),
            std::io::sink,
        )
        .unwrap();
        let name = format!("tls {protocol}");
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("tls", otel.name = %name);
            let _entered = span.enter();
        });
        telemetry.shutdown();
        let spans = collector
            .receiver
            .wait_for_blocking(|spans| spans.iter().any(|s| s.name() == name), WAIT)
            .unwrap_or_else(|e| panic!("{protocol}: {e}"));
        check_resource(spans.iter().find(|s| s.name() == name).unwrap());
        assert!(
            collector.receiver.client_certificates() >= 1,
            "{protocol}: the exporter presented its client certificate"
        );
    }
}

#[test]
fn headers_from_the_environment_reach_the_collector_over_grpc_and_http() {
    for protocol in ["grpc", "http/protobuf"] {
        let receiver = OtlpReceiver::start();
        let mut env = env(&receiver, protocol);
        env.insert(
            "OTEL_EXPORTER_OTLP_HEADERS".into(),
            "x-ignored=because-the-traces-variable-wins".into(),
        );
        env.insert(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS".into(),
            "authorization=Bearer%20t0ken,x-tenant=blue".into(),
        );
        let (telemetry, dispatch) =
            observability::build("export-test", "1.2.3", &env, std::io::sink).unwrap();
        let name = format!("headers {protocol}");
        tracing::dispatcher::with_default(&dispatch, || {
            let _span = tracing::info_span!("headers", otel.name = %name).entered();
        });
        telemetry.shutdown();
        receiver
            .wait_for_blocking(|spans| spans.iter().any(|s| s.name() == name), WAIT)
            .unwrap_or_else(|e| panic!("{protocol}: {e}"));
        let received = receiver.request_headers();
        assert!(!received.is_empty(), "{protocol}: no request seen");
        for headers in received {
            assert_eq!(headers["authorization"], "Bearer t0ken", "{protocol}");
            assert_eq!(headers["x-tenant"], "blue", "{protocol}");
            assert!(!headers.contains_key("x-ignored"), "{protocol}");
            let user_agent = headers["user-agent"].to_str().unwrap();
            assert!(
                user_agent.contains("vantage-observability/"),
                "{protocol}: {user_agent}"
            );
        }
    }
}

#[test]
fn unreadable_or_half_configured_tls_files_are_configuration_errors_naming_the_file() {
    let collector = TlsCollector::start();
    let mut env = collector.env("grpc");
    env.insert(
        "OTEL_EXPORTER_OTLP_CERTIFICATE".into(),
        "/nowhere/ca.pem".into(),
    );
    env.remove("OTEL_EXPORTER_OTLP_CLIENT_KEY");
    let error = observability::build("export-test", "1", &env, std::io::sink)
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && error.contains("/nowhere/ca.pem"),
        "{error}"
    );
    assert!(
        error.contains("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
        "{error}"
    );
    assert!(
        !error.contains("BEGIN"),
        "no key material in errors: {error}"
    );
}

/// `http_span`'s spans go through their own queue and encoder, not the SDK's: they must reach
/// a real collector over both protocols, with the same resource as `tracing` spans, the
/// scope, the parent links and the attributes; `force_flush` sends them without a shutdown.
#[test]
fn http_span_spans_reach_the_collector_over_grpc_and_http() {
    use observability::http_span::HttpSpan as _;
    for protocol in ["grpc", "http/protobuf"] {
        let receiver = OtlpReceiver::start();
        let (telemetry, _dispatch) = observability::build(
            "export-test",
            "1.2.3",
            &env(&receiver, protocol),
            std::io::sink,
        )
        .unwrap();
        let tracer = telemetry.http_tracer();
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer very-secret-token"),
        );
        let uri: Uri = "/orders/42?access_token=query-secret".parse().unwrap();
        let mut req = ServerRequest::new(&Method::POST, &uri, Version::HTTP_2, &headers);
        req.client_address = Some("10.1.2.3".parse().unwrap());
        let mut server = tracer.server(&req);
        server.set_route(&Method::POST, "/orders/{id}");
        let mut attempt = server.client(&Method::POST, "http://orders:8080/orders/42", 0);
        attempt.record_error("connect_refused");
        drop(attempt);
        server.set_str("vantage.auth.result", "allowed");
        server.record_status(http::StatusCode::BAD_GATEWAY, Side::Server);
        server.end();
        telemetry.force_flush();
        let spans = receiver
            .wait_for_blocking(|s| s.len() >= 2, WAIT)
            .unwrap_or_else(|e| panic!("{protocol}: the two spans did not arrive: {e}"));
        let server = spans.iter().find(|s| s.kind() == SpanKind::Server).unwrap();
        let client = spans.iter().find(|s| s.kind() == SpanKind::Client).unwrap();
        check_resource(server);
        assert_eq!(server.scope_name, "observability", "{protocol}");
        assert_eq!(server.name(), "POST /orders/{id}");
        assert_eq!(server.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(server.parent_span_id().as_deref(), Some("00f067aa0ba902b7"));
        assert!(server.is_error());
        assert_eq!(
            server.attr("http.response.status_code"),
            Some(AttrValue::Int(502))
        );
        assert_eq!(
            server.attr_str("network.protocol.version").as_deref(),
            Some("2")
        );
        assert_eq!(
            server.attr_str("client.address").as_deref(),
            Some("10.1.2.3")
        );
        assert_eq!(
            server.attr_str("vantage.auth.result").as_deref(),
            Some("allowed")
        );
        assert_eq!(client.name(), "POST");
        assert_eq!(client.parent_span_id(), Some(server.span_id()));
        assert_eq!(
            client.attr_str("error.type").as_deref(),
            Some("connect_refused")
        );
        for span in &spans {
            for secret in ["very-secret-token", "query-secret"] {
                assert!(!span.contains_text(secret), "{secret} leaked into {span:?}");
            }
        }
        let (grpc, http) = (receiver.grpc_requests(), receiver.http_requests());
        if protocol == "grpc" {
            assert!(grpc >= 1 && http == 0, "{grpc} gRPC, {http} HTTP requests");
        } else {
            assert!(http >= 1 && grpc == 0, "{grpc} gRPC, {http} HTTP requests");
        }
        telemetry.shutdown();
    }
}

/// `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT` bounds `http_span`'s spans as the SDK bounds its own.
#[test]
fn the_span_attribute_limit_applies_to_http_spans() {
    use observability::http_span::HttpSpan as _;
    let receiver = OtlpReceiver::start();
    let mut env = env(&receiver, "grpc");
    env.insert("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT".into(), "3".into());
    let (telemetry, _dispatch) =
        observability::build("export-test", "1.2.3", &env, std::io::sink).unwrap();
    let tracer = telemetry.http_tracer();
    let uri: Uri = "/limited".parse().unwrap();
    let mut server = tracer.server(&ServerRequest::new(
        &Method::GET,
        &uri,
        Version::HTTP_11,
        &HeaderMap::new(),
    ));
    for i in 0..10 {
        server.set_i64("n", i);
    }
    server.end();
    telemetry.shutdown();
    let spans = receiver.wait_for_blocking(|s| !s.is_empty(), WAIT).unwrap();
    assert_eq!(spans[0].span.attributes.len(), 3);
    // method, path, scheme, protocol version and ten more: 14 set, 3 kept.
    assert_eq!(spans[0].span.dropped_attributes_count, 11);
}
