//! HTTP SERVER and CLIENT spans made directly with the OpenTelemetry SDK, for hot paths.
//!
//! [`crate::http_trace`] builds the same spans through `tracing`, which is what a service wants
//! (its logs and inner spans nest under the request). A proxy that handles tens of thousands of
//! requests per second per core and keeps its span in a per-request context (Pingora's `CTX`)
//! pays for that bridge on every attribute; these types skip it: a span is an SDK span owned by
//! the request, attributes are pushed onto it, and it is exported when it ends. Names,
//! attributes and error rules are the same as `http_trace`'s, so a trace reads the same whichever
//! was used.
//!
//! ```
//! use observability::http_span::{HttpSpan as _, HttpTracer};
//! use observability::http_trace::{ServerRequest, Side};
//!
//! let tracer = HttpTracer::disabled(); // `telemetry.http_tracer()` in a real binary
//! let req = http::Request::get("/orders/42").body(()).unwrap();
//! let mut server = tracer.server(&ServerRequest::new(req.method(), req.uri(), req.version(), req.headers()));
//! server.set_route(req.method(), "/orders/{id}");
//! let mut attempt = server.client(req.method(), "http://orders:8080/orders/42", 0);
//! let mut upstream_headers = http::HeaderMap::new();
//! attempt.inject(&mut upstream_headers);
//! attempt.record_status(http::StatusCode::OK, Side::Client);
//! server.record_status(http::StatusCode::OK, Side::Server);
//! server.end();
//! ```

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, TraceFlags, Tracer as _,
};
use opentelemetry::{Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{
    IdGenerator as _, RandomIdGenerator, Sampler, SamplingDecision, SdkTracer, ShouldSample as _,
    Span,
};
use opentelemetry_semantic_conventions::attribute as semconv;

use crate::http_trace::{
    ip_string, is_error, method_label, span_method, span_name, ClientAttributes, ServerAttributes,
    ServerRequest, Side,
};
use crate::propagation;

/// Starts [`ServerSpan`]s; from [`crate::Telemetry::http_tracer`]. Cheap to clone.
///
/// Disabled (every span a no-op with an invalid context) when `OTEL_SDK_DISABLED=true`. When
/// spans are not exported (no `OTEL_EXPORTER_OTLP_ENDPOINT`), spans still get ids — log lines
/// carry them and upstreams continue the trace — but no attributes are computed, and no SDK
/// span is made: the ids and the sampling decision come from [`local_context`], with the
/// SDK's rules and the configured sampler (`OTEL_TRACES_SAMPLER`), so an upstream sees the same
/// `traceparent` either way.
#[derive(Clone, Debug)]
pub struct HttpTracer {
    tracer: Option<SdkTracer>,
    ids_only: bool,
    /// The sampler, for ids-only spans.
    sampler: Arc<Sampler>,
}

impl HttpTracer {
    pub(crate) fn new(tracer: Option<SdkTracer>, ids_only: bool, sampler: Sampler) -> Self {
        Self {
            tracer,
            ids_only,
            sampler: Arc::new(sampler),
        }
    }

    /// A tracer whose spans record nothing; for tests and when telemetry is off.
    pub fn disabled() -> Self {
        Self {
            tracer: None,
            ids_only: true,
            sampler: Arc::new(Sampler::AlwaysOff),
        }
    }

    /// A SERVER span for `req`, continuing the trace in its propagation headers (a new root
    /// without). It ends on [`ServerSpan::end`] or when dropped.
    pub fn server(&self, req: &ServerRequest<'_>) -> ServerSpan {
        let parent = propagation::extract_http(req.headers);
        let Some(tracer) = &self.tracer else {
            return ServerSpan {
                span: None,
                local: None,
                parent,
                tracer: None,
                ids_only: true,
            };
        };
        if self.ids_only {
            let local = local_context(&self.sampler, &parent, &SpanKind::Server);
            return ServerSpan {
                span: None,
                local: Some(Local {
                    context: local,
                    sampler: Arc::clone(&self.sampler),
                }),
                parent,
                tracer: None,
                ids_only: true,
            };
        }
        // Without an exporter nobody sees names or attributes: ids and propagation only.
        let (name, attributes) = if self.ids_only {
            (Cow::Borrowed("HTTP"), Vec::new())
        } else {
            let name = match req.route {
                Some(route) => Cow::Owned(span_name(req.method, Some(route))),
                None => Cow::Borrowed(span_method(req.method)),
            };
            (name, server_attributes(req))
        };
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        ServerSpan {
            span: Some(span),
            local: None,
            parent,
            tracer: Some(tracer.clone()),
            ids_only: self.ids_only,
        }
    }
}

/// The context of a span that is not exported, made without an SDK span: what the SDK's tracer
/// would give it (its `build_with_context`): the parent's trace id or a new one, a new span
/// id, the parent's flags with the sampled bit set by `sampler`'s decision (no flags when it
/// drops the span), and the trace state the sampler returns.
fn local_context(sampler: &Sampler, parent: &Context, kind: &SpanKind) -> SpanContext {
    let ids = RandomIdGenerator::default();
    let span_id = ids.new_span_id();
    let parent_span = parent.span();
    let psc = parent_span.span_context();
    let (trace_id, flags) = if psc.is_valid() {
        (psc.trace_id(), psc.trace_flags())
    } else {
        (ids.new_trace_id(), TraceFlags::default())
    };
    let result = sampler.should_sample(Some(parent), trace_id, "HTTP", kind, &[], &[]);
    let flags = match result.decision {
        SamplingDecision::RecordAndSample => flags.with_sampled(true),
        SamplingDecision::RecordOnly => flags.with_sampled(false),
        SamplingDecision::Drop => TraceFlags::default(),
    };
    SpanContext::new(trace_id, span_id, flags, false, result.trace_state)
}

/// An ids-only span: its context, and the sampler its children are decided by.
#[derive(Debug)]
struct Local {
    context: SpanContext,
    sampler: Arc<Sampler>,
}

/// Room in a SERVER span's attribute list for what a proxy adds before it ends (the route, its
/// decisions, the status): the list is allocated once and never grows on the request path.
const SERVER_ATTRIBUTE_CAPACITY: usize = 40;

/// The SERVER span's request attributes (semconv HTTP).
fn server_attributes(req: &ServerRequest<'_>) -> Vec<KeyValue> {
    let a = ServerAttributes::new(req);
    let mut attributes = Vec::with_capacity(SERVER_ATTRIBUTE_CAPACITY);
    attributes.push(KeyValue::new(semconv::HTTP_REQUEST_METHOD, a.method));
    if let Some(original) = a.method_original {
        attributes.push(KeyValue::new(
            semconv::HTTP_REQUEST_METHOD_ORIGINAL,
            original.to_owned(),
        ));
    }
    attributes.push(KeyValue::new(semconv::URL_PATH, a.path.to_owned()));
    if let Some(query) = a.query.clone() {
        attributes.push(KeyValue::new(semconv::URL_QUERY, query));
    }
    attributes.push(KeyValue::new(semconv::URL_SCHEME, scheme_value(a.scheme)));
    if let Some(route) = a.route {
        attributes.push(KeyValue::new(semconv::HTTP_ROUTE, route.to_owned()));
    }
    if let Some(host) = a.server_address() {
        attributes.push(KeyValue::new(semconv::SERVER_ADDRESS, host.to_owned()));
    }
    if let Some(port) = a.server_port() {
        attributes.push(KeyValue::new(semconv::SERVER_PORT, port));
    }
    if let Some(client) = a.client_address {
        attributes.push(KeyValue::new(semconv::CLIENT_ADDRESS, client));
    }
    if let Some(agent) = a.user_agent {
        attributes.push(KeyValue::new(
            semconv::USER_AGENT_ORIGINAL,
            agent.to_owned(),
        ));
    }
    if let Some(version) = a.protocol_version {
        attributes.push(KeyValue::new(semconv::NETWORK_PROTOCOL_VERSION, version));
    }
    attributes
}

/// `http` and `https` (every scheme a proxy sees) without a copy.
fn scheme_value(scheme: &str) -> StringValue {
    match scheme {
        "http" => StringValue::from("http"),
        "https" => StringValue::from("https"),
        other => StringValue::from(other.to_owned()),
    }
}

/// Room in a CLIENT span's attribute list for what a proxy adds per attempt (the upstream's
/// name and identity, TLS, the status, the error).
const CLIENT_ATTRIBUTE_CAPACITY: usize = 12;

/// A CLIENT span's attributes for one attempt (semconv HTTP).
fn client_attributes(method: &Method, url: &str, resend_count: u32) -> Vec<KeyValue> {
    let a = ClientAttributes::new(method, url, resend_count);
    let mut attributes = Vec::with_capacity(CLIENT_ATTRIBUTE_CAPACITY);
    attributes.push(KeyValue::new(semconv::HTTP_REQUEST_METHOD, a.method));
    if let Some(host) = a.server_address {
        attributes.push(KeyValue::new(semconv::SERVER_ADDRESS, host));
    }
    if let Some(port) = a.server_port {
        attributes.push(KeyValue::new(semconv::SERVER_PORT, port));
    }
    attributes.push(KeyValue::new(semconv::URL_FULL, a.url_full));
    if let Some(n) = a.resend_count {
        attributes.push(KeyValue::new(semconv::HTTP_REQUEST_RESEND_COUNT, n));
    }
    attributes
}

/// Where one upstream attempt goes; for [`ServerSpan::client_to`].
#[derive(Clone, Copy, Debug)]
pub struct Upstream<'a> {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The endpoint's address.
    pub addr: SocketAddr,
    /// The request target sent to it (path, and query if any).
    pub target: &'a str,
}

/// Whether `target` is a path of RFC 3986 path characters only (no query, no fragment): `url.full`
/// needs no redaction then, and `http::Uri` would read it back unchanged.
fn is_plain_path(target: &str) -> bool {
    target.starts_with('/')
        && target.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'/' | b'-'
                        | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'@'
                        | b'%'
                )
        })
}

/// [`client_attributes`] of `{scheme}://{addr}{target}`, built from the parts when the address
/// is IPv4 and the target a plain path (what that function would compute, without formatting
/// the URL and parsing it back); through it otherwise.
fn upstream_attributes(method: &Method, to: Upstream<'_>, resend_count: u32) -> Vec<KeyValue> {
    let IpAddr::V4(_) = to.addr.ip() else {
        return client_attributes(method, &upstream_url(to), resend_count);
    };
    if !is_plain_path(to.target) {
        return client_attributes(method, &upstream_url(to), resend_count);
    }
    let host = ip_string(to.addr.ip());
    let port = to.addr.port();
    let mut url = String::with_capacity(to.scheme.len() + 3 + host.len() + 6 + to.target.len());
    url.push_str(to.scheme);
    url.push_str("://");
    url.push_str(&host);
    url.push(':');
    crate::lines::push_decimal(&mut url, u64::from(port));
    url.push_str(to.target);
    let mut attributes = Vec::with_capacity(CLIENT_ATTRIBUTE_CAPACITY);
    attributes.push(KeyValue::new(
        semconv::HTTP_REQUEST_METHOD,
        method_label(method),
    ));
    attributes.push(KeyValue::new(semconv::SERVER_ADDRESS, host));
    attributes.push(KeyValue::new(semconv::SERVER_PORT, i64::from(port)));
    attributes.push(KeyValue::new(semconv::URL_FULL, url));
    if resend_count > 0 {
        attributes.push(KeyValue::new(
            semconv::HTTP_REQUEST_RESEND_COUNT,
            i64::from(resend_count),
        ));
    }
    attributes
}

/// `{scheme}://{addr}{target}`, through `Display`.
fn upstream_url(to: Upstream<'_>) -> String {
    format!("{}://{}{}", to.scheme, to.addr, to.target)
}

/// The SERVER span of one request. Ends on [`ServerSpan::end`] or drop.
#[derive(Debug)]
pub struct ServerSpan {
    span: Option<Span>,
    /// Instead of `span` when spans are not exported.
    local: Option<Local>,
    /// The extracted caller context: the span's parent, and the baggage passed on upstream.
    parent: Context,
    tracer: Option<SdkTracer>,
    /// Ids and propagation only; no attributes (nothing would export them).
    ids_only: bool,
}

impl Default for ServerSpan {
    fn default() -> Self {
        Self::none()
    }
}

impl ServerSpan {
    /// A span that records nothing (before a request has started).
    pub fn none() -> Self {
        Self {
            span: None,
            local: None,
            parent: Context::new(),
            tracer: None,
            ids_only: true,
        }
    }

    /// This span's context; invalid when tracing is off.
    pub fn span_context(&self) -> &SpanContext {
        static INVALID: std::sync::LazyLock<SpanContext> =
            std::sync::LazyLock::new(SpanContext::empty_context);
        match (&self.span, &self.local) {
            (Some(span), _) => span.span_context(),
            (None, Some(local)) => &local.context,
            (None, None) => &INVALID,
        }
    }

    /// Names the span `{method} {route}` and sets `http.route`, once routing has matched.
    pub fn set_route(&mut self, method: &Method, route: &str) {
        if let Some(span) = self.open_span() {
            span.update_name(span_name(method, Some(route)));
            span.set_attribute(KeyValue::new(semconv::HTTP_ROUTE, route.to_owned()));
        }
    }

    /// Like [`ServerSpan::set_route`] for a route template the caller keeps (a proxy's
    /// configured routes): `http.route` shares it instead of copying it per request.
    pub fn set_shared_route(&mut self, method: &Method, route: &Arc<str>) {
        if let Some(span) = self.open_span() {
            span.update_name(span_name(method, Some(route)));
            span.set_attribute(KeyValue::new(
                semconv::HTTP_ROUTE,
                Value::String(StringValue::from(Arc::clone(route))),
            ));
        }
    }

    /// Whether attributes are kept: skip computing them when not.
    pub fn is_recording(&self) -> bool {
        !self.ids_only && self.span.as_ref().is_some_and(|s| s.is_recording())
    }

    /// A CLIENT span for one attempt to call `url`, child of this span. `resend_count` is 0 for
    /// the first attempt and counts retries after it, so retries show as sibling spans.
    pub fn client(&self, method: &Method, url: &str, resend_count: u32) -> ClientSpan {
        self.client_with(method, || client_attributes(method, url, resend_count))
    }

    /// Like [`ServerSpan::client`] for a proxy that knows the attempt's address: the same
    /// attributes (`url.full` is `{scheme}://{addr}{target}`), computed without formatting
    /// and re-parsing that URL when they can be (an IPv4 address and a plain path).
    pub fn client_to(&self, method: &Method, to: Upstream<'_>, resend_count: u32) -> ClientSpan {
        self.client_with(method, || upstream_attributes(method, to, resend_count))
    }

    fn client_with(
        &self,
        method: &Method,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> ClientSpan {
        if let Some(local) = &self.local {
            let parent = Context::new().with_remote_span_context(local.context.clone());
            return ClientSpan {
                span: None,
                local: Some(local_context(&local.sampler, &parent, &SpanKind::Client)),
                parent: self.parent.clone(),
                ids_only: true,
            };
        }
        let (Some(tracer), Some(server)) = (&self.tracer, &self.span) else {
            return ClientSpan {
                span: None,
                local: None,
                parent: self.parent.clone(),
                ids_only: true,
            };
        };
        // The server span is a local parent: `with_remote_span_context` only stores its context
        // (whose is_remote flag stays false).
        let parent = Context::new().with_remote_span_context(server.span_context().clone());
        let (name, attributes) = if self.ids_only {
            ("HTTP", Vec::new())
        } else {
            (span_method(method), attributes())
        };
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        ClientSpan {
            span: Some(span),
            local: None,
            parent: self.parent.clone(),
            ids_only: self.ids_only,
        }
    }

    /// Ends the span now (later calls do nothing).
    pub fn end(&mut self) {
        if let Some(mut span) = self.span.take() {
            span.end();
        }
    }
}

/// The CLIENT span of one upstream attempt. Ends when dropped.
#[derive(Debug)]
pub struct ClientSpan {
    span: Option<Span>,
    /// Instead of `span` when spans are not exported.
    local: Option<SpanContext>,
    /// The caller's context: its baggage goes upstream with this span as the parent (or, with
    /// tracing off, the whole of it passes through).
    parent: Context,
    ids_only: bool,
}

impl ClientSpan {
    /// What goes upstream: this span as the parent, plus the caller's baggage. Built when a
    /// propagator needs it; [`ClientSpan::w3c_headers`] does without.
    fn inject_context(&self) -> Context {
        match (&self.span, &self.local) {
            (Some(span), _) => self
                .parent
                .with_remote_span_context(span.span_context().clone()),
            (None, Some(local)) => self.parent.with_remote_span_context(local.clone()),
            (None, None) => self.parent.clone(),
        }
    }

    /// Writes this attempt's context into the upstream request's headers, replacing any
    /// propagation headers the client sent. With tracing off, the caller's context (if any)
    /// passes through unchanged.
    pub fn inject(&self, headers: &mut HeaderMap) {
        propagation::inject_http(&self.inject_context(), headers);
    }

    /// This attempt's context as W3C Trace Context header values — `traceparent`, and
    /// `tracestate` when the caller sent a non-empty one — formatted without `fmt`, for a proxy
    /// that writes them straight into the upstream request. `None` when that is not all there
    /// is to send: other propagators are configured (`OTEL_PROPAGATORS`), the context carries
    /// baggage, or there is no valid context; use [`ClientSpan::inject_into`] then.
    pub fn w3c_headers(&self) -> Option<W3cHeaders> {
        if !propagation::w3c_only() || !self.parent.baggage().is_empty() {
            return None;
        }
        let parent_span;
        let sc = match (&self.span, &self.local) {
            (Some(span), _) => span.span_context(),
            (None, Some(local)) => local,
            (None, None) => {
                parent_span = self.parent.span();
                parent_span.span_context()
            }
        };
        if !sc.is_valid() {
            return None;
        }
        // version 00, trace id, parent id, flags (only the sampled bit): 55 bytes.
        let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
        crate::lines::hex(&sc.trace_id().to_bytes(), &mut value[3..35]);
        crate::lines::hex(&sc.span_id().to_bytes(), &mut value[36..52]);
        crate::lines::hex(
            &[(sc.trace_flags() & opentelemetry::trace::TraceFlags::SAMPLED).to_u8()],
            &mut value[53..55],
        );
        let traceparent = HeaderValue::from_bytes(&value).ok()?;
        let state = sc.trace_state().header();
        let tracestate = if state.is_empty() {
            None
        } else {
            Some(HeaderValue::from_str(&state).ok()?)
        };
        Some(W3cHeaders {
            traceparent,
            tracestate,
        })
    }

    /// Like [`ClientSpan::inject`] into any carrier, for a proxy that writes the upstream
    /// request's headers itself (no intermediate map). Removing stale propagation headers is the
    /// caller's job: do it on the first `set`, so nothing is removed when nothing is sent.
    pub fn inject_into(&self, injector: &mut dyn opentelemetry::propagation::Injector) {
        propagation::inject(&self.inject_context(), injector);
    }

    /// Whether attributes are kept: skip computing them when not.
    pub fn is_recording(&self) -> bool {
        !self.ids_only && self.span.as_ref().is_some_and(|s| s.is_recording())
    }
}

/// An attempt's trace context as W3C Trace Context header values; from
/// [`ClientSpan::w3c_headers`].
#[derive(Debug, Clone)]
pub struct W3cHeaders {
    /// `traceparent`: `00-{trace id}-{span id}-{flags}`.
    pub traceparent: HeaderValue,
    /// `tracestate`, when there is one to pass on.
    pub tracestate: Option<HeaderValue>,
}

/// What both HTTP span kinds record; a no-op when tracing is off.
pub trait HttpSpan {
    /// The SDK span while it is open.
    #[doc(hidden)]
    fn open_span(&mut self) -> Option<&mut Span>;

    /// Adds one attribute.
    fn set_attribute(&mut self, attribute: KeyValue) {
        if let Some(span) = self.open_span() {
            span.set_attribute(attribute);
        }
    }

    /// Adds several attributes, in order.
    fn set_attributes(&mut self, attributes: Vec<KeyValue>) {
        if let Some(span) = self.open_span() {
            span.set_attributes(attributes);
        }
    }

    /// Sets `http.response.status_code`; when it is an error on this `side` (see [`Side`]) also
    /// `error.type` and an ERROR status.
    fn record_status(&mut self, status: StatusCode, side: Side) {
        let Some(span) = self.open_span() else {
            return;
        };
        span.set_attribute(KeyValue::new(
            semconv::HTTP_RESPONSE_STATUS_CODE,
            i64::from(status.as_u16()),
        ));
        if is_error(status, side) {
            span.set_attribute(KeyValue::new(
                semconv::ERROR_TYPE,
                status.as_str().to_owned(),
            ));
            span.set_status(Status::error(""));
        }
    }

    /// Marks the span failed with a low-cardinality `error.type` (`timeout`, `connect_refused`, …).
    fn record_error(&mut self, error_type: &'static str) {
        if let Some(span) = self.open_span() {
            span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type));
            span.set_status(Status::Error {
                description: Cow::Borrowed(error_type),
            });
        }
    }
}

impl HttpSpan for ServerSpan {
    fn open_span(&mut self) -> Option<&mut Span> {
        self.span.as_mut().filter(|_| !self.ids_only)
    }
}

impl HttpSpan for ClientSpan {
    fn open_span(&mut self) -> Option<&mut Span> {
        self.span.as_mut().filter(|_| !self.ids_only)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};

    /// Keeps exported spans in memory (the SDK's own needs its `testing` feature).
    #[derive(Clone, Debug, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    fn tracer(ids_only: bool) -> (HttpTracer, Collect, SdkTracerProvider) {
        let exporter = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        (
            HttpTracer::new(
                Some(provider.tracer("test")),
                ids_only,
                // The SDK's default, as the provider above uses.
                Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            ),
            exporter,
            provider,
        )
    }

    /// The attempt a request with these trace headers makes, and what the propagators write.
    fn attempt_for(headers: &[(&str, &str)], ids_only: bool) -> (ClientSpan, HeaderMap) {
        let (tracer, _exporter, _provider) = tracer(ids_only);
        let mut req = http::Request::get("/x");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(()).unwrap();
        let server = tracer.server(&ServerRequest::new(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
        ));
        let attempt = server.client(req.method(), "http://u/x", 0);
        let mut written = HeaderMap::new();
        attempt.inject(&mut written);
        (attempt, written)
    }

    #[test]
    fn w3c_headers_are_what_the_trace_context_propagator_writes() {
        let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331";
        for (flags, ids_only) in [("01", false), ("00", false), ("01", true)] {
            let tp = format!("{caller}-{flags}");
            let (attempt, written) = attempt_for(&[("traceparent", &tp)], ids_only);
            let w3c = attempt.w3c_headers().expect("W3C propagation, no baggage");
            assert_eq!(w3c.traceparent, written["traceparent"], "flags {flags}");
            assert!(w3c.tracestate.is_none(), "an empty tracestate is not sent");
            let value = w3c.traceparent.to_str().unwrap();
            assert!(value.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
            assert!(
                !value.contains("b7ad6b7169203331"),
                "the attempt is the new parent"
            );
        }
        // A root trace (no caller context) too.
        let (attempt, written) = attempt_for(&[], false);
        assert_eq!(
            attempt.w3c_headers().unwrap().traceparent,
            written["traceparent"]
        );
        // The caller's tracestate is passed on, as the propagator does.
        let (attempt, written) = attempt_for(
            &[
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("tracestate", "vendor=abc,other=1"),
            ],
            false,
        );
        let w3c = attempt.w3c_headers().unwrap();
        assert_eq!(w3c.tracestate.as_ref(), Some(&written["tracestate"]));
        assert_eq!(written["tracestate"], "vendor=abc,other=1");
    }

    #[test]
    fn w3c_headers_leave_baggage_and_missing_contexts_to_the_propagators() {
        let (attempt, written) = attempt_for(
            &[
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("baggage", "tenant=acme"),
            ],
            false,
        );
        assert!(
            attempt.w3c_headers().is_none(),
            "baggage needs the propagator"
        );
        assert_eq!(written["baggage"], "tenant=acme");
        let off = HttpTracer::disabled().server(&ServerRequest::new(
            &Method::GET,
            &"/x".parse().unwrap(),
            http::Version::HTTP_11,
            &HeaderMap::new(),
        ));
        assert!(off
            .client(&Method::GET, "http://u/x", 0)
            .w3c_headers()
            .is_none());
    }

    #[test]
    fn server_and_client_spans_form_one_trace_and_propagate_the_attempt() {
        let (tracer, exporter, _provider) = tracer(false);
        let req = http::Request::get("/orders/42?token=secret&page=2")
            .header("host", "shop.example:8080")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(())
            .unwrap();
        let mut server = tracer.server(&ServerRequest::new(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
        ));
        server.set_route(req.method(), "/orders/{id}");
        let mut attempt = server.client(req.method(), "http://10.0.0.7:9000/orders/42", 1);
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01"
                .parse()
                .unwrap(),
        );
        attempt.inject(&mut headers);
        attempt.record_status(StatusCode::SERVICE_UNAVAILABLE, Side::Client);
        drop(attempt);
        server.record_status(StatusCode::OK, Side::Server);
        server.end();

        let spans = exporter.0.lock().unwrap().clone();
        assert_eq!(spans.len(), 2);
        let (client, server) = (&spans[0], &spans[1]);
        assert_eq!(server.name, "GET /orders/{id}");
        assert_eq!(server.span_kind, SpanKind::Server);
        assert_eq!(
            server.span_context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(server.parent_span_is_remote);
        assert_eq!(client.span_kind, SpanKind::Client);
        assert_eq!(client.parent_span_id, server.span_context.span_id());
        assert!(!client.parent_span_is_remote);
        let attr = |s: &opentelemetry_sdk::trace::SpanData, k: &str| {
            s.attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attr(server, "http.route").as_deref(), Some("/orders/{id}"));
        assert_eq!(
            attr(server, "server.address").as_deref(),
            Some("shop.example")
        );
        assert!(!attr(server, "url.query").unwrap().contains("secret"));
        assert_eq!(
            attr(client, "http.request.resend_count").as_deref(),
            Some("1")
        );
        assert_eq!(attr(client, "error.type").as_deref(), Some("503"));
        assert_eq!(attr(server, "error.type"), None);
        let sent = headers["traceparent"].to_str().unwrap();
        assert_eq!(
            sent,
            format!(
                "00-0af7651916cd43dd8448eb211c80319c-{}-01",
                client.span_context.span_id()
            ),
            "the upstream continues the trace under the attempt, never the client's header"
        );
    }

    #[test]
    fn without_an_exporter_spans_have_ids_and_propagate_but_record_nothing() {
        let (tracer, exporter, _provider) = tracer(true);
        let req = http::Request::get("/orders/42")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(())
            .unwrap();
        let mut server = tracer.server(&ServerRequest::new(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
        ));
        assert!(!server.is_recording());
        assert_eq!(
            server.span_context().trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        server.set_route(req.method(), "/orders/{id}");
        server.record_status(StatusCode::INTERNAL_SERVER_ERROR, Side::Server);
        let attempt = server.client(req.method(), "http://u/orders/42", 0);
        let mut headers = HeaderMap::new();
        attempt.inject(&mut headers);
        let sent = headers["traceparent"].to_str().unwrap().to_owned();
        assert!(
            sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{sent}"
        );
        assert!(
            !sent.contains("b7ad6b7169203331"),
            "a new span id goes upstream: {sent}"
        );
        drop(attempt);
        server.end();
        for span in exporter.0.lock().unwrap().iter() {
            assert!(span.attributes.is_empty(), "{:?}", span.attributes);
        }
    }

    /// Ids-only spans are made without the SDK; what goes upstream must be what the SDK would
    /// have sent: the same trace id, flags and trace state for every sampler and parent.
    #[test]
    fn ids_only_spans_decide_as_the_sdk_does() {
        let samplers = || {
            vec![
                Sampler::AlwaysOn,
                Sampler::AlwaysOff,
                Sampler::TraceIdRatioBased(0.0),
                Sampler::TraceIdRatioBased(1.0),
                Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.0))),
            ]
        };
        let parents: [&[(&str, &str)]; 4] = [
            &[],
            &[(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )],
            &[(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            )],
            &[
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("tracestate", "vendor=abc,other=1"),
            ],
        ];
        let sent = |tracer: &HttpTracer, headers: &HeaderMap| {
            let server = tracer.server(&ServerRequest::new(
                &Method::GET,
                &http::Uri::from_static("/x"),
                http::Version::HTTP_11,
                headers,
            ));
            let client = server.client(&Method::GET, "http://u/x", 0);
            let sc = server.span_context().clone();
            let w3c = client.w3c_headers();
            (sc, w3c)
        };
        for (sdk_sampler, local_sampler) in samplers().into_iter().zip(samplers()) {
            let provider = SdkTracerProvider::builder()
                .with_sampler(sdk_sampler.clone())
                .build();
            let sdk = HttpTracer::new(Some(provider.tracer("t")), false, sdk_sampler);
            let local = HttpTracer::new(Some(provider.tracer("t")), true, local_sampler);
            for parent in parents {
                let mut headers = HeaderMap::new();
                for (k, v) in parent {
                    headers.insert(*k, HeaderValue::from_static(v));
                }
                let (sdk_sc, sdk_w3c) = sent(&sdk, &headers);
                let (local_sc, local_w3c) = sent(&local, &headers);
                let case = format!("{:?} / {parent:?}", local.sampler);
                assert!(local_sc.is_valid(), "{case}");
                assert_eq!(local_sc.trace_flags(), sdk_sc.trace_flags(), "{case}");
                assert_eq!(local_sc.trace_state(), sdk_sc.trace_state(), "{case}");
                if !parent.is_empty() {
                    assert_eq!(local_sc.trace_id(), sdk_sc.trace_id(), "{case}");
                }
                let (sdk_w3c, local_w3c) = (sdk_w3c.unwrap(), local_w3c.unwrap());
                let parts = |w: &W3cHeaders| {
                    let t = w.traceparent.to_str().unwrap().to_owned();
                    // version-trace-span-flags: everything but the random span id (and the
                    // random trace id of a new trace).
                    let f: Vec<_> = t.split('-').map(str::to_owned).collect();
                    (
                        f[0].clone(),
                        f[3].clone(),
                        w.tracestate.clone(),
                        f[1].clone(),
                    )
                };
                let (l, s) = (parts(&local_w3c), parts(&sdk_w3c));
                assert_eq!((&l.0, &l.1, &l.2), (&s.0, &s.1, &s.2), "{case}");
                assert_eq!(l.3, local_sc.trace_id().to_string(), "{case}");
                if !parent.is_empty() {
                    assert_eq!(l.3, s.3, "{case}");
                }
            }
        }
    }

    #[test]
    fn client_to_records_what_client_records_for_the_same_url() {
        let targets = [
            "/orders/42",
            "/",
            "/a/b;c=d/@e/%2F~x",
            "/search?q=1&token=secret",
            "/with space",
            "/frag#x",
        ];
        let addrs: [SocketAddr; 4] = [
            "10.0.0.7:9000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
            "255.255.255.255:65535".parse().unwrap(),
            "[2001:db8::1]:8443".parse().unwrap(),
        ];
        for scheme in ["http", "https"] {
            for addr in addrs {
                for target in targets {
                    for resend in [0, 2] {
                        let to = Upstream {
                            scheme,
                            addr,
                            target,
                        };
                        let url = format!("{scheme}://{addr}{target}");
                        let fast = upstream_attributes(&Method::GET, to, resend);
                        let slow = client_attributes(&Method::GET, &url, resend);
                        assert_eq!(fast, slow, "{url} (resend {resend})");
                    }
                }
            }
        }
        // The fast path really is taken for a plain target at an IPv4 address.
        assert!(is_plain_path("/orders/42"));
        assert!(!is_plain_path("/search?q=1"));
    }

    #[test]
    fn shared_route_sets_what_set_route_sets() {
        let (tracer, exporter, _provider) = tracer(false);
        let req = http::Request::get("/orders/42").body(()).unwrap();
        let route: Arc<str> = Arc::from("/orders/{id}");
        for shared in [false, true] {
            let mut server = tracer.server(&ServerRequest::new(
                req.method(),
                req.uri(),
                req.version(),
                req.headers(),
            ));
            if shared {
                server.set_shared_route(req.method(), &route);
            } else {
                server.set_route(req.method(), &route);
            }
            server.end();
        }
        let spans = exporter.0.lock().unwrap().clone();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].name, "GET /orders/{id}");
        assert_eq!(spans[0].name, spans[1].name);
        assert_eq!(spans[0].attributes, spans[1].attributes);
    }

    #[test]
    fn a_disabled_tracer_passes_the_callers_context_through() {
        let tracer = HttpTracer::disabled();
        let req = http::Request::get("/")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(())
            .unwrap();
        let server = tracer.server(&ServerRequest::new(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
        ));
        assert!(!server.span_context().is_valid());
        let attempt = server.client(req.method(), "http://u/", 0);
        let mut headers = HeaderMap::new();
        attempt.inject(&mut headers);
        assert_eq!(
            headers["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
    }
}
