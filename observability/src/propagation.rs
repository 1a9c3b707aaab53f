//! Moving trace context across process boundaries: HTTP headers, outbox rows, AMQP headers.
//!
//! The formats come from `OTEL_PROPAGATORS` (read by [`crate::init`]); before `init`, or when it
//! was never called (unit tests), W3C `tracecontext` + `baggage` are used.

mod b3;

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, OnceLock};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::env::PropagatorKind;

type Shared = Arc<dyn TextMapPropagator + Send + Sync>;

/// A propagator and what is known of it once, when it is installed.
struct Propagation {
    propagator: Shared,
    /// Whether it speaks W3C Trace Context (plus Baggage) only.
    w3c: bool,
    /// The header names it reads, ready for lookups (a `&str` name is parsed on every lookup).
    fields: Box<[HeaderName]>,
    /// `fields` and [`TRACE_HEADERS`]: what [`extract_http_seen`] looks for.
    seen: Box<[HeaderName]>,
}

impl Propagation {
    fn new(propagator: Shared, kinds: &[PropagatorKind]) -> Self {
        let fields: Box<[HeaderName]> = propagator
            .fields()
            .filter_map(|f| HeaderName::from_bytes(f.as_bytes()).ok())
            .collect();
        let mut seen = fields.to_vec();
        for name in &TRACE_HEADERS {
            if !seen.contains(name) {
                seen.push(name.clone());
            }
        }
        Propagation {
            propagator,
            w3c: is_w3c(kinds),
            fields,
            seen: seen.into(),
        }
    }
}

/// The trace-context headers a proxy replaces with its own when it continues a trace: W3C
/// `traceparent`, `tracestate` and `baggage`, and B3's single `b3` header, whichever
/// propagators are installed (a caller's context must never reach the next hop unchanged).
/// A `static`, not a `const`: each use of a `const` array builds and drops a copy of it.
pub static TRACE_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("baggage"),
    HeaderName::from_static("b3"),
];

/// The installed propagator.
static INSTALLED: OnceLock<Propagation> = OnceLock::new();
static FALLBACK: LazyLock<Propagation> = LazyLock::new(|| {
    let kinds = [PropagatorKind::TraceContext, PropagatorKind::Baggage];
    Propagation::new(build(&kinds), &kinds)
});

pub(crate) fn build(kinds: &[PropagatorKind]) -> Shared {
    let parts: Vec<Box<dyn TextMapPropagator + Send + Sync>> = kinds
        .iter()
        .map(|kind| -> Box<dyn TextMapPropagator + Send + Sync> {
            match kind {
                PropagatorKind::TraceContext => Box::new(TraceContextPropagator::new()),
                PropagatorKind::Baggage => Box::new(BaggagePropagator::new()),
                PropagatorKind::B3Single => Box::new(b3::B3Propagator::new(b3::B3Encoding::Single)),
                PropagatorKind::B3Multi => Box::new(b3::B3Propagator::new(b3::B3Encoding::Multi)),
            }
        })
        .collect();
    Arc::new(TextMapCompositePropagator::new(parts))
}

/// Makes `propagator` (built from `kinds`) the process-wide one. Only the first call wins
/// (`init` runs once).
pub(crate) fn install(propagator: Shared, kinds: &[PropagatorKind]) {
    let _ = INSTALLED.set(Propagation::new(propagator, kinds));
}

fn installed() -> &'static Propagation {
    INSTALLED.get().unwrap_or(&FALLBACK)
}

fn propagator() -> &'static Shared {
    &installed().propagator
}

/// W3C Trace Context, alone or with W3C Baggage: what `OTEL_PROPAGATORS` defaults to.
fn is_w3c(kinds: &[PropagatorKind]) -> bool {
    kinds.contains(&PropagatorKind::TraceContext)
        && kinds
            .iter()
            .all(|k| matches!(k, PropagatorKind::TraceContext | PropagatorKind::Baggage))
}

/// Whether the process propagates W3C Trace Context (and Baggage) only — the default — so a
/// span's context is sent as `traceparent` (+ `tracestate`, + `baggage`) and nothing else.
pub(crate) fn w3c_only() -> bool {
    INSTALLED.get().is_none_or(|p| p.w3c)
}

/// The context sent by the caller in `headers` (`traceparent`, `tracestate`, `baggage`, `b3` …).
///
/// Use it as the parent of the SERVER span: `span.set_parent(extract_http(req.headers()))`.
/// Returns an empty context when the headers carry none or carry garbage.
pub fn extract_http(headers: &HeaderMap) -> Context {
    extract_http_seen(headers).0
}

/// Like [`extract_http`], and whether `headers` hold any trace-context header at all: one of
/// the installed propagators' fields or of [`TRACE_HEADERS`], parsed or not. A proxy that saw
/// none has none to remove before it sends its own (the same scan answers both).
pub fn extract_http_seen(headers: &HeaderMap) -> (Context, bool) {
    let installed = installed();
    // Most requests carry no trace context: then every propagator would hand back the current
    // context unchanged, so skip their parsing (one scan of the names instead).
    if !has_any(headers, &installed.seen) {
        return (Context::current(), false);
    }
    (
        installed.propagator.extract(&HeaderExtractor(headers)),
        true,
    )
}

/// Above this many distinct header names, [`has_any`] looks each wanted name up instead of
/// scanning; below it a scan is cheaper than hashing every wanted name.
const SCAN_LIMIT: usize = 16;

/// Whether `headers` holds any of `names`.
///
/// A request usually carries a dozen headers or fewer and none of the wanted ones, so this walks
/// the names once (a string compare fails on the length first) instead of hashing each wanted
/// name for a map lookup. Above `SCAN_LIMIT` (16) distinct names it looks them up instead, so a
/// request stuffed with headers costs no more than the lookups would.
pub fn has_any(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    if headers.keys_len() > SCAN_LIMIT {
        return names.iter().any(|name| headers.contains_key(name));
    }
    headers.keys().any(|key| {
        let key = key.as_str();
        names.iter().any(|name| name.as_str() == key)
    })
}

/// Writes `cx` into outgoing request headers, replacing any propagation headers already there
/// (an incoming `traceparent` must never leak upstream unchanged).
pub fn inject_http(cx: &Context, headers: &mut HeaderMap) {
    for name in &installed().fields {
        headers.remove(name);
    }
    propagator().inject_context(cx, &mut HeaderInjector(headers));
}

/// Writes `cx` into any carrier with the process-wide propagators; unlike [`inject_http`] it
/// removes nothing first.
pub fn inject(cx: &Context, injector: &mut dyn Injector) {
    propagator().inject_context(cx, injector);
}

/// The OpenTelemetry context of the current `tracing` span.
///
/// Empty when there is no current span or telemetry is disabled.
pub fn current_context() -> Context {
    tracing::Span::current().context()
}

/// `cx` as plain key/value pairs, for places that store or send text: outbox rows, AMQP headers.
///
/// Keys are lower-case (`traceparent`, `tracestate`, `baggage`); empty when `cx` has no valid span.
pub fn to_carrier(cx: &Context) -> BTreeMap<String, String> {
    let mut carrier = MapCarrier(BTreeMap::new());
    propagator().inject_context(cx, &mut carrier);
    carrier.0
}

/// The inverse of [`to_carrier`]. Keys are matched case-insensitively.
pub fn from_carrier(carrier: &BTreeMap<String, String>) -> Context {
    let lower: BTreeMap<String, String> = carrier
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    propagator().extract(&MapCarrier(lower))
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct MapCarrier(BTreeMap<String, String>);

impl Extractor for MapCarrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(&key.to_ascii_lowercase()).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl Injector for MapCarrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_ascii_lowercase(), value);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::baggage::BaggageExt as _;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::KeyValue;

    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn extraction_says_whether_any_trace_header_was_there_parsed_or_not() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            h.insert("host", HeaderValue::from_static("shop.example"));
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            let (cx, seen) = extract_http_seen(&h);
            (cx.span().span_context().is_valid(), seen)
        };
        assert_eq!(with(&[]), (false, false));
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(with(&[("traceparent", tp)]), (true, true));
        // Not parsed into a context, but there: a proxy must still remove them.
        assert_eq!(with(&[("tracestate", "a=b")]), (false, true));
        assert_eq!(with(&[("b3", "garbage")]), (false, true));
        assert_eq!(with(&[("traceparent", "garbage")]), (false, true));
    }

    #[test]
    fn has_any_finds_a_wanted_name_by_scan_and_by_lookup() {
        let wanted = [
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("b3"),
        ];
        let mut headers = HeaderMap::new();
        assert!(!has_any(&headers, &wanted), "empty map");
        headers.insert("host", HeaderValue::from_static("shop"));
        headers.insert("x-b3", HeaderValue::from_static("1"));
        headers.insert("b", HeaderValue::from_static("1"));
        assert!(
            !has_any(&headers, &wanted),
            "no wanted name, only look-alikes"
        );
        assert!(!has_any(&headers, &[]), "nothing wanted");
        headers.append("b3", HeaderValue::from_static("1"));
        assert!(has_any(&headers, &wanted), "found by the scan");

        // More distinct names than the scan handles: the lookups must answer the same.
        let mut many = HeaderMap::new();
        for i in 0..=SCAN_LIMIT {
            let name = HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap();
            many.insert(name, HeaderValue::from_static("1"));
        }
        assert!(many.keys_len() > SCAN_LIMIT);
        assert!(!has_any(&many, &wanted), "not there, by lookup");
        many.insert("traceparent", HeaderValue::from_static(TRACEPARENT));
        assert!(has_any(&many, &wanted), "found by lookup");
    }

    #[test]
    fn http_extract_then_inject_keeps_trace_and_baggage() {
        let mut incoming = HeaderMap::new();
        incoming.insert("traceparent", HeaderValue::from_static(TRACEPARENT));
        incoming.insert("baggage", HeaderValue::from_static("tenant=acme"));
        let cx = extract_http(&incoming);
        assert!(cx.span().span_context().is_remote());
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            cx.baggage().get("tenant").map(|v| v.to_string()),
            Some("acme".into())
        );

        let mut outgoing = HeaderMap::new();
        outgoing.insert("traceparent", HeaderValue::from_static("00-stale-stale-00"));
        inject_http(&cx, &mut outgoing);
        assert_eq!(outgoing.get_all("traceparent").iter().count(), 1);
        assert_eq!(outgoing["traceparent"], TRACEPARENT);
        assert_eq!(outgoing["baggage"], "tenant=acme");
    }

    #[test]
    fn no_trace_headers_give_the_current_context() {
        // Other headers only: what the propagators would return, the (here empty) current one.
        let mut incoming = HeaderMap::new();
        incoming.insert("host", HeaderValue::from_static("example.com"));
        incoming.insert("x-request-id", HeaderValue::from_static("abc"));
        let cx = extract_http(&incoming);
        assert!(!cx.span().span_context().is_valid());
        assert_eq!(cx.baggage().len(), 0);
        // Inside an active context that context is returned, as the propagators do.
        let active = Context::new().with_baggage([KeyValue::new("k", "v")]);
        let _guard = active.attach();
        let cx = extract_http(&incoming);
        assert_eq!(
            cx.baggage().get("k").map(|v| v.to_string()),
            Some("v".into())
        );
        assert_eq!(
            propagator()
                .extract(&HeaderExtractor(&incoming))
                .baggage()
                .get("k")
                .map(|v| v.to_string()),
            Some("v".into())
        );
        // Any one field present goes through the propagators.
        incoming.insert("baggage", HeaderValue::from_static("tenant=acme"));
        assert_eq!(
            extract_http(&incoming)
                .baggage()
                .get("tenant")
                .map(|v| v.to_string()),
            Some("acme".into())
        );
    }

    #[test]
    fn garbage_traceparent_gives_an_empty_context() {
        let mut incoming = HeaderMap::new();
        incoming.insert("traceparent", HeaderValue::from_static("00-zzzz-0000-01"));
        assert!(!extract_http(&incoming).span().span_context().is_valid());
    }

    #[test]
    fn carrier_round_trip_preserves_trace_state() {
        let sc = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vantage", "1")]).unwrap(),
        );
        let cx = Context::new()
            .with_remote_span_context(sc.clone())
            .with_baggage([KeyValue::new("k", "v")]);
        let carrier = to_carrier(&cx);
        assert_eq!(
            carrier.keys().map(String::as_str).collect::<Vec<_>>(),
            vec!["baggage", "traceparent", "tracestate"]
        );
        let mut upper = BTreeMap::new();
        for (k, v) in carrier {
            upper.insert(k.to_ascii_uppercase(), v);
        }
        let back = from_carrier(&upper);
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());
        assert_eq!(back.span().span_context().span_id(), sc.span_id());
        assert_eq!(
            back.span().span_context().trace_state().get("vantage"),
            Some("1")
        );
        assert_eq!(
            back.baggage().get("k").map(|v| v.to_string()),
            Some("v".into())
        );
    }

    #[test]
    fn empty_context_gives_an_empty_carrier() {
        assert!(to_carrier(&Context::new()).is_empty());
    }

    #[test]
    fn composite_with_b3_reads_either_format() {
        let p = build(&[PropagatorKind::TraceContext, PropagatorKind::B3Single]);
        let mut carrier = std::collections::HashMap::new();
        carrier.insert(
            "b3".to_owned(),
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1".to_owned(),
        );
        let cx = p.extract(&carrier);
        assert!(cx.span().span_context().is_valid());
        let mut out = std::collections::HashMap::new();
        p.inject_context(&cx, &mut out);
        assert_eq!(
            out.get("traceparent").map(String::as_str),
            Some(TRACEPARENT)
        );
        assert!(out.contains_key("b3"));
    }
}
