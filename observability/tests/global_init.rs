//! The real `init()`: process environment, global subscriber, stdout JSON, `log` bridge.
//!
//! Global state can be installed once per process, so the test re-runs this test binary as a
//! child (only `child_process` runs there, with `OBSERVABILITY_TEST_CHILD=1`) and inspects its
//! stdout and the spans it exported.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use test_support::OtlpReceiver;

const CHILD: &str = "OBSERVABILITY_TEST_CHILD";

#[test]
fn init_reads_the_environment_logs_json_bridges_log_and_exports() {
    let receiver = OtlpReceiver::start();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_SERVICE_NAME", "global-test")
        .env("OTEL_PROPAGATORS", "tracecontext,baggage,b3")
        // The export path's own crates at TRACE: none of it may reach the log (or the traces).
        .env(
            "RUST_LOG",
            "info,h2=trace,hyper=trace,hyper_util=trace,reqwest=trace,tonic=trace,tower=trace",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let spans = receiver
        .wait_for_blocking(
            |s| s.iter().any(|s| s.name() == "global-span"),
            Duration::from_secs(10),
        )
        .unwrap();
    let span = spans.iter().find(|s| s.name() == "global-span").unwrap();
    assert_eq!(span.service_name, "global-test");
    assert!(receiver.http_requests() >= 1);

    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_message = |m: &str| {
        lines
            .iter()
            .find(|l| l["message"] == m)
            .unwrap_or_else(|| panic!("no line {m:?} in:\n{stdout}"))
    };

    let bridged = by_message("from the log crate");
    assert_eq!(bridged["target"], "pingora_core::server");
    assert_eq!(bridged["service"], "global-test");
    assert_eq!(bridged["trace_id"], span.trace_id().as_str());
    assert!(
        bridged.get("fields").is_none(),
        "log.* bookkeeping fields must be dropped: {bridged}"
    );

    let native = by_message("from tracing");
    assert_eq!(native["fields"]["answer"], 42);
    assert_eq!(native["span_id"], span.span_id().as_str());

    assert!(
        !stdout.contains("hidden at debug"),
        "RUST_LOG=info must hide debug lines:\n{stdout}"
    );
    let feedback: Vec<_> = lines
        .iter()
        .filter_map(|l| l["target"].as_str())
        .filter(|t| {
            ["h2", "hyper", "reqwest", "tonic", "tower"]
                .iter()
                .any(|c| t.starts_with(c))
        })
        .collect();
    assert!(
        feedback.is_empty(),
        "the exporter logged about itself: {feedback:?}"
    );
}

#[test]
fn child_process() {
    // Does the work only inside the child started by the test above.
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "init must run with no runtime, like the gateway"
    );
    let telemetry = observability::init("ignored-because-OTEL_SERVICE_NAME", "9.9.9").unwrap();
    assert_eq!(telemetry.service_name(), "global-test");
    assert!(matches!(
        observability::init("again", "0"),
        Err(observability::InitError::AlreadyInitialized)
    ));
    tracing::info_span!("global-span").in_scope(|| {
        log::info!(target: "pingora_core::server", "from the log crate");
        log::debug!("hidden at debug");
        tracing::info!(answer = 42, "from tracing");
    });

    // OTEL_PROPAGATORS reached the process-wide propagator: B3 in, both formats out.
    let mut incoming = http::HeaderMap::new();
    incoming.insert(
        "b3",
        http::HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
    );
    let cx = observability::propagation::extract_http(&incoming);
    assert_eq!(
        cx.span().span_context().trace_id().to_string(),
        "80f198ee56343ba864fe8b2a57d3eff7"
    );
    let mut outgoing = http::HeaderMap::new();
    observability::propagation::inject_http(&cx, &mut outgoing);
    assert_eq!(
        outgoing["traceparent"],
        "00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01"
    );
    assert_eq!(
        outgoing["b3"],
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
    );
    telemetry.shutdown();
}

use opentelemetry::trace::TraceContextExt as _;
