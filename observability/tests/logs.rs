//! JSON log lines carry the trace and span id of the span they were written in.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use test_support::OtlpReceiver;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn env(receiver: &OtlpReceiver, rust_log: &str) -> HashMap<String, String> {
    HashMap::from([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            receiver.grpc_endpoint(),
        ),
        ("RUST_LOG".to_owned(), rust_log.to_owned()),
    ])
}

#[test]
fn log_lines_carry_the_ids_of_their_span() {
    let receiver = OtlpReceiver::start();
    let capture = Capture::default();
    let (telemetry, dispatch) =
        observability::build("logs-test", "1", &env(&receiver, "debug"), capture.clone()).unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info!("Before any span.");
        let span = tracing::info_span!("place-order");
        span.in_scope(|| {
            let error = std::io::Error::other("disk full");
            tracing::info!(order_id = 7, paid = true, %error, "Placed order.");
            // A DEBUG span is logged but not traced: the line takes the ids of the INFO span around it.
            tracing::debug_span!("detail").in_scope(|| tracing::warn!("Inside a debug span."));
        });
    });
    telemetry.shutdown();
    let spans = receiver
        .wait_for_blocking(
            |s| s.iter().any(|s| s.name() == "place-order"),
            Duration::from_secs(10),
        )
        .unwrap();
    let span = spans.iter().find(|s| s.name() == "place-order").unwrap();

    let lines = capture.lines();
    assert_eq!(lines.len(), 3, "{lines:#?}");

    let outside = &lines[0];
    assert_eq!(outside["message"], "Before any span.");
    assert!(
        outside.get("trace_id").is_none() && outside.get("span_id").is_none(),
        "{outside}"
    );

    let placed = &lines[1];
    assert_eq!(placed["level"], "INFO");
    assert_eq!(placed["service"], "logs-test");
    assert_eq!(placed["target"], "logs");
    assert_eq!(placed["message"], "Placed order.");
    assert_eq!(placed["span"], "place-order");
    assert_eq!(placed["fields"]["order_id"], 7);
    assert_eq!(placed["fields"]["paid"], true);
    assert_eq!(placed["fields"]["error"], "disk full");
    assert_eq!(placed["trace_id"], span.trace_id().as_str());
    assert_eq!(placed["span_id"], span.span_id().as_str());
    let timestamp = placed["timestamp"].as_str().unwrap();
    time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{timestamp}: {e}"));

    let nested = &lines[2];
    assert_eq!(nested["level"], "WARN");
    assert_eq!(nested["span"], "detail");
    assert_eq!(nested["trace_id"], span.trace_id().as_str());
    assert_eq!(nested["span_id"], span.span_id().as_str());
}

#[test]
fn rust_log_filters_lines_but_never_spans() {
    let receiver = OtlpReceiver::start();
    let capture = Capture::default();
    let (telemetry, dispatch) =
        observability::build("logs-test", "1", &env(&receiver, "warn"), capture.clone()).unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info_span!("still-traced").in_scope(|| {
            tracing::info!("Hidden.");
            tracing::warn!("Shown.");
        });
    });
    telemetry.shutdown();
    receiver
        .wait_for_blocking(
            |s| s.iter().any(|s| s.name() == "still-traced"),
            Duration::from_secs(10),
        )
        .unwrap();
    let messages: Vec<_> = capture
        .lines()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(messages, vec!["Shown."]);
}

#[test]
fn lines_without_an_exporter_still_carry_trace_ids() {
    let capture = Capture::default();
    let (telemetry, dispatch) = observability::build(
        "logs-test",
        "1",
        &HashMap::<String, String>::new(),
        capture.clone(),
    )
    .unwrap();
    assert_eq!(telemetry.exporting(), None);
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info_span!("local").in_scope(|| tracing::info!("Traced locally."));
    });
    let line = &capture.lines()[0];
    assert_eq!(line["trace_id"].as_str().map(str::len), Some(32), "{line}");
    assert_eq!(line["span_id"].as_str().map(str::len), Some(16), "{line}");
}

#[test]
fn sdk_direct_http_spans_are_exported_and_their_ids_lead_log_lines_to_them() {
    let receiver = OtlpReceiver::start();
    let capture = Capture::default();
    let (telemetry, dispatch) =
        observability::build("logs-test", "1", &env(&receiver, "info"), capture.clone()).unwrap();
    let tracer = telemetry.http_tracer();
    let req = http::Request::get("/orders/42").body(()).unwrap();
    let mut server = tracer.server(&observability::http_trace::ServerRequest::new(
        req.method(),
        req.uri(),
        req.version(),
        req.headers(),
    ));
    server.set_route(req.method(), "/orders/{id}");
    let (trace_id, span_id) = (
        server.span_context().trace_id().to_string(),
        server.span_context().span_id().to_string(),
    );
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info!(trace_id = %trace_id, span_id = %span_id, status = 200, "request");
    });
    server.end();
    telemetry.shutdown();
    let spans = receiver
        .wait_for_blocking(
            |s| s.iter().any(|s| s.name() == "GET /orders/{id}"),
            Duration::from_secs(10),
        )
        .unwrap();
    let span = spans
        .iter()
        .find(|s| s.name() == "GET /orders/{id}")
        .unwrap();
    assert_eq!(span.trace_id(), trace_id);

    let line = &capture.lines()[0];
    assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
    assert_eq!(line["span_id"], span_id.as_str(), "{line}");
    assert!(
        line["fields"].get("trace_id").is_none(),
        "ids are not repeated as fields: {line}"
    );
    assert_eq!(line["fields"]["status"], 200);
}
