//! HTTP SERVER and CLIENT spans recorded without the OpenTelemetry SDK's span machinery, for
//! hot paths.
//!
//! [`crate::http_trace`] builds the same spans through `tracing`, which is what a service wants
//! (its logs and inner spans nest under the request). A proxy that handles tens of thousands of
//! requests per second per core and keeps its span in a per-request context (Pingora's `CTX`)
//! pays for that bridge on every attribute, and for the SDK span under it: an owned copy of
//! every attribute, the span data moved to the batch processor's thread, dropped after
//! encoding. These types skip both. An attribute is written as OTLP protobuf into the span the
//! moment it is set, from a borrowed key and value (the private `otlp_encode::recorded`
//! module); an ended span is appended, already encoded, to the export queue
//! (the private `span_queue`), whose thread sends batches to the same collector as the SDK's.
//! Ids and sampling decisions follow the SDK's rules with the configured sampler
//! (`OTEL_TRACES_SAMPLER`, see `local_context`); names, attributes and error rules are
//! `http_trace`'s, so a trace reads the same whichever was used.
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
//! server.set_str("app.tenant", "acme");
//! server.record_status(http::StatusCode::OK, Side::Server);
//! server.end();
//! ```

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{
    IdGenerator as _, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample as _,
};
use opentelemetry_semantic_conventions::attribute as semconv;

use crate::http_trace::{
    is_error, method_label, span_method, span_name, ClientAttributes, IpText, ServerAttributes,
    ServerRequest, Side,
};
use crate::otlp_encode::recorded::{SpanBody, SpanHead, BODY_CAPACITY};
use crate::propagation;
use crate::span_queue::SpanQueue;

/// Starts [`ServerSpan`]s; from [`crate::Telemetry::http_tracer`]. Cheap to clone.
///
/// Disabled (every span a no-op with an invalid context) when `OTEL_SDK_DISABLED=true`. When
/// spans are not exported (no `OTEL_EXPORTER_OTLP_ENDPOINT`), spans still get ids — log lines
/// carry them and upstreams continue the trace — but no attributes are computed. When they
/// are, sampled spans record their attributes and are exported when they end.
#[derive(Clone, Debug)]
pub struct HttpTracer {
    mode: Mode,
    /// `OTEL_TRACES_SAMPLER`: decides every span's sampled flag.
    sampler: Arc<Sampler>,
    /// `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`: attributes a span keeps.
    max_attributes: u32,
}

/// What an [`HttpTracer`]'s spans do.
#[derive(Clone, Debug)]
enum Mode {
    /// Tracing is off: no ids; the caller's context passes through unchanged.
    Off,
    /// Nothing exports: ids and propagation only.
    IdsOnly,
    /// Sampled spans are recorded and queued here when they end.
    Export(SpanQueue),
}

impl HttpTracer {
    /// Spans exported through `queue`, or ids only without one, sampled by `sampler`, each
    /// keeping at most `max_attributes` attributes.
    pub(crate) fn new(queue: Option<SpanQueue>, sampler: Sampler, max_attributes: u32) -> Self {
        Self {
            mode: queue.map_or(Mode::IdsOnly, Mode::Export),
            sampler: Arc::new(sampler),
            max_attributes,
        }
    }

    /// A tracer whose spans record nothing; for tests and when telemetry is off.
    pub fn disabled() -> Self {
        Self {
            mode: Mode::Off,
            sampler: Arc::new(Sampler::AlwaysOff),
            max_attributes: 0,
        }
    }

    /// A SERVER span for `req`, continuing the trace in its propagation headers (a new root
    /// without). It ends on [`ServerSpan::end`] or when dropped.
    pub fn server(&self, req: &ServerRequest<'_>) -> ServerSpan {
        let (parent, seen) = propagation::extract_http_seen(req.headers);
        let queue = match &self.mode {
            Mode::Off => {
                return ServerSpan {
                    context: None,
                    parent,
                    no_caller_trace_headers: !seen,
                    sampler: None,
                    queue: None,
                    max_attributes: 0,
                    record: None,
                }
            }
            Mode::IdsOnly => None,
            Mode::Export(queue) => Some(queue),
        };
        let context = local_context(&self.sampler, Parent::Caller(&parent), &SpanKind::Server);
        let record = (queue.is_some() && context.is_sampled()).then(|| {
            let parent_span = parent.span();
            let psc = parent_span.span_context();
            let (parent_span_id, parent_is_remote) = if psc.is_valid() {
                (psc.span_id(), psc.is_remote())
            } else {
                (SpanId::INVALID, false)
            };
            let name = match req.route {
                Some(route) => Cow::Owned(span_name(req.method, Some(route))),
                None => Cow::Borrowed(span_method(req.method)),
            };
            let mut body = SpanBody::new(BODY_CAPACITY, self.max_attributes);
            server_attributes(req, &mut body);
            Box::new(Recording {
                head: SpanHead {
                    context: context.clone(),
                    parent_span_id,
                    parent_is_remote,
                    kind: SpanKind::Server,
                    name,
                    start: now_nanos(),
                    status: Status::Unset,
                },
                body,
            })
        });
        ServerSpan {
            context: Some(context),
            parent,
            no_caller_trace_headers: !seen,
            sampler: Some(Arc::clone(&self.sampler)),
            queue: queue.cloned(),
            max_attributes: self.max_attributes,
            record,
        }
    }
}

/// Now, in nanoseconds since the Unix epoch (0 before it), as the SDK stamps spans.
fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Who a new span's parent is.
enum Parent<'a> {
    /// The caller's context, as extracted from its request's headers (no span in it: a root).
    Caller(&'a Context),
    /// A span of ours (a CLIENT span's SERVER span): valid and local.
    Local(&'a SpanContext),
}

/// A span's context, made without an SDK span: what the SDK's tracer would give it (its
/// `build_with_context`): the parent's trace id or a new one, a new span id, the parent's flags
/// with the sampled bit set by `sampler`'s decision (no flags when it drops the span), and the
/// parent's trace state (no SDK sampler changes it). The sampler sees the span's kind but not
/// its name or attributes: none of the samplers `OTEL_TRACES_SAMPLER` can name reads them.
fn local_context(sampler: &Sampler, parent: Parent<'_>, kind: &SpanKind) -> SpanContext {
    let ids = RandomIdGenerator::default();
    let span_id = ids.new_span_id();
    let local;
    let parent = match parent {
        Parent::Local(psc) => match parent_rule(sampler, true, psc.is_sampled()) {
            Some(decision) => {
                let flags = decided(psc.trace_flags(), &decision);
                return SpanContext::new(
                    psc.trace_id(),
                    span_id,
                    flags,
                    false,
                    psc.trace_state().clone(),
                );
            }
            // The SDK's sampler takes a parent context: the span's context goes in one (its
            // is_remote flag stays false).
            None => {
                local = Context::new().with_remote_span_context(psc.clone());
                &local
            }
        },
        Parent::Caller(cx) => cx,
    };
    let parent_span = parent.span();
    let psc = parent_span.span_context();
    let (trace_id, flags) = if psc.is_valid() {
        (psc.trace_id(), psc.trace_flags())
    } else {
        (ids.new_trace_id(), TraceFlags::default())
    };
    let (decision, trace_state) =
        match parent_rule(sampler, parent.has_active_span(), psc.is_sampled()) {
            Some(decision) => (decision, psc.trace_state().clone()),
            None => {
                let result = sampler.should_sample(Some(parent), trace_id, "HTTP", kind, &[], &[]);
                (result.decision, result.trace_state)
            }
        };
    SpanContext::new(
        trace_id,
        span_id,
        decided(flags, &decision),
        false,
        trace_state,
    )
}

/// The decision of a sampler that needs nothing but whether the parent context holds a span
/// (`active`) and that span's sampled flag, as the SDK's `Sampler::should_sample` makes it:
/// `AlwaysOn`, `AlwaysOff`, and `ParentBased` under an active parent (every CLIENT span, and a
/// SERVER span whose caller sent a trace). `None` for the rest: the SDK's sampler is then
/// asked. Saves a CLIENT span a parent context and a `SamplingResult`.
fn parent_rule(sampler: &Sampler, active: bool, sampled: bool) -> Option<SamplingDecision> {
    match sampler {
        Sampler::AlwaysOn => Some(SamplingDecision::RecordAndSample),
        Sampler::AlwaysOff => Some(SamplingDecision::Drop),
        Sampler::ParentBased(_) if active => Some(if sampled {
            SamplingDecision::RecordAndSample
        } else {
            SamplingDecision::Drop
        }),
        // A root (its sampler is opaque) or a ratio (it decides by the trace id).
        _ => None,
    }
}

/// The flags of a span under a parent with `flags`, after `decision`: the sampled bit set or
/// cleared, none when the span is dropped.
fn decided(flags: TraceFlags, decision: &SamplingDecision) -> TraceFlags {
    match decision {
        SamplingDecision::RecordAndSample => flags.with_sampled(true),
        SamplingDecision::RecordOnly => flags.with_sampled(false),
        SamplingDecision::Drop => TraceFlags::default(),
    }
}

/// A sampled span while it is open: its fixed fields and its attributes, already encoded.
/// Only spans that will be exported are recorded (the SDK's batch processor drops the others).
#[doc(hidden)]
#[derive(Debug)]
pub struct Recording {
    head: SpanHead,
    body: SpanBody,
}

impl Recording {
    /// The SDK's rule: a status only replaces a lower one (Unset < Error < Ok).
    fn set_status(&mut self, status: Status) {
        if status > self.head.status {
            self.head.status = status;
        }
    }
}

/// The SERVER span's request attributes (semconv HTTP).
fn server_attributes(req: &ServerRequest<'_>, body: &mut SpanBody) {
    let a = ServerAttributes::new(req);
    body.str(semconv::HTTP_REQUEST_METHOD, a.method);
    if let Some(original) = a.method_original {
        body.str(semconv::HTTP_REQUEST_METHOD_ORIGINAL, original);
    }
    body.str(semconv::URL_PATH, a.path);
    if let Some(query) = &a.query {
        body.str(semconv::URL_QUERY, query);
    }
    body.str(semconv::URL_SCHEME, a.scheme);
    if let Some(route) = a.route {
        body.str(semconv::HTTP_ROUTE, route);
    }
    if let Some(host) = a.server_address() {
        body.str(semconv::SERVER_ADDRESS, host);
    }
    if let Some(port) = a.server_port() {
        body.i64(semconv::SERVER_PORT, port);
    }
    if let Some(client) = &a.client_address {
        body.str_parts(semconv::CLIENT_ADDRESS, &[client.as_bytes()]);
    }
    if let Some(agent) = a.user_agent {
        body.str(semconv::USER_AGENT_ORIGINAL, agent);
    }
    if let Some(version) = a.protocol_version {
        body.str(semconv::NETWORK_PROTOCOL_VERSION, version);
    }
}

/// A CLIENT span's attributes for one attempt (semconv HTTP).
fn client_attributes(method: &Method, url: &str, resend_count: u32, body: &mut SpanBody) {
    let a = ClientAttributes::new(method, url, resend_count);
    body.str(semconv::HTTP_REQUEST_METHOD, a.method);
    if let Some(host) = &a.server_address {
        body.str(semconv::SERVER_ADDRESS, host);
    }
    if let Some(port) = a.server_port {
        body.i64(semconv::SERVER_PORT, port);
    }
    body.str(semconv::URL_FULL, &a.url_full);
    if let Some(n) = a.resend_count {
        body.i64(semconv::HTTP_REQUEST_RESEND_COUNT, n);
    }
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
/// is IPv4 and the target a plain path (what that function would record, without formatting
/// the URL and parsing it back); through it otherwise.
fn upstream_attributes(method: &Method, to: Upstream<'_>, resend_count: u32, body: &mut SpanBody) {
    let IpAddr::V4(_) = to.addr.ip() else {
        return client_attributes(method, &upstream_url(to), resend_count, body);
    };
    if !is_plain_path(to.target) {
        return client_attributes(method, &upstream_url(to), resend_count, body);
    }
    let host = IpText::new(to.addr.ip());
    let port = to.addr.port();
    let port_text = crate::lines::Decimal::new(u64::from(port));
    body.str(semconv::HTTP_REQUEST_METHOD, method_label(method));
    body.str_parts(semconv::SERVER_ADDRESS, &[host.as_bytes()]);
    body.i64(semconv::SERVER_PORT, i64::from(port));
    body.str_parts(
        semconv::URL_FULL,
        &[
            to.scheme.as_bytes(),
            b"://",
            host.as_bytes(),
            b":",
            port_text.as_bytes(),
            to.target.as_bytes(),
        ],
    );
    if resend_count > 0 {
        body.i64(semconv::HTTP_REQUEST_RESEND_COUNT, i64::from(resend_count));
    }
}

/// `{scheme}://{addr}{target}`, through `Display`.
fn upstream_url(to: Upstream<'_>) -> String {
    format!("{}://{}{}", to.scheme, to.addr, to.target)
}

/// Bytes a CLIENT span's attribute buffer starts with.
const CLIENT_BODY_CAPACITY: usize = 256;

/// The SERVER span of one request. Ends on [`ServerSpan::end`] or drop.
#[derive(Debug, Default)]
pub struct ServerSpan {
    /// `None` when tracing is off.
    context: Option<SpanContext>,
    /// The extracted caller context: the span's parent, and the baggage passed on upstream.
    parent: Context,
    /// Whether the caller's request was seen to hold no trace-context header (see
    /// [`propagation::extract_http_seen`]); false when not known (the default).
    no_caller_trace_headers: bool,
    /// Decides the CLIENT spans' sampling; `None` when tracing is off.
    sampler: Option<Arc<Sampler>>,
    /// Where ended spans go, when spans are exported.
    queue: Option<SpanQueue>,
    /// Attributes each of its spans keeps.
    max_attributes: u32,
    /// While open, when sampled and exported. Boxed: a span that is not recorded (no
    /// exporter, not sampled) stays small to move.
    record: Option<Box<Recording>>,
}

impl ServerSpan {
    /// A span that records nothing (before a request has started).
    pub fn none() -> Self {
        Self::default()
    }

    /// This span's context; invalid when tracing is off.
    pub fn span_context(&self) -> &SpanContext {
        static INVALID: std::sync::LazyLock<SpanContext> =
            std::sync::LazyLock::new(SpanContext::empty_context);
        self.context.as_ref().unwrap_or(&INVALID)
    }

    /// Names the span `{method} {route}` and sets `http.route`, once routing has matched.
    pub fn set_route(&mut self, method: &Method, route: &str) {
        if let Some(record) = &mut self.record {
            record.head.name = Cow::Owned(span_name(method, Some(route)));
            record.body.str(semconv::HTTP_ROUTE, route);
        }
    }

    /// Whether attributes are kept: skip computing them when not.
    pub fn is_recording(&self) -> bool {
        self.record.is_some()
    }

    /// A CLIENT span for one attempt to call `url`, child of this span. `resend_count` is 0 for
    /// the first attempt and counts retries after it, so retries show as sibling spans.
    pub fn client(&self, method: &Method, url: &str, resend_count: u32) -> ClientSpan {
        self.client_with(method, |body| {
            client_attributes(method, url, resend_count, body)
        })
    }

    /// Like [`ServerSpan::client`] for a proxy that knows the attempt's address: the same
    /// attributes (`url.full` is `{scheme}://{addr}{target}`), computed without formatting
    /// and re-parsing that URL when they can be (an IPv4 address and a plain path).
    pub fn client_to(&self, method: &Method, to: Upstream<'_>, resend_count: u32) -> ClientSpan {
        self.client_with(method, |body| {
            upstream_attributes(method, to, resend_count, body)
        })
    }

    fn client_with(&self, method: &Method, attributes: impl FnOnce(&mut SpanBody)) -> ClientSpan {
        let (Some(server), Some(sampler)) = (&self.context, &self.sampler) else {
            return ClientSpan {
                context: None,
                parent: self.parent.clone(),
                no_caller_trace_headers: self.no_caller_trace_headers,
                record: None,
            };
        };
        let context = local_context(sampler, Parent::Local(server), &SpanKind::Client);
        let record = match &self.queue {
            Some(queue) if context.is_sampled() => {
                let mut body = SpanBody::new(CLIENT_BODY_CAPACITY, self.max_attributes);
                attributes(&mut body);
                let head = SpanHead {
                    context: context.clone(),
                    parent_span_id: server.span_id(),
                    parent_is_remote: false,
                    kind: SpanKind::Client,
                    name: Cow::Borrowed(span_method(method)),
                    start: now_nanos(),
                    status: Status::Unset,
                };
                Some(Box::new((Recording { head, body }, queue.clone())))
            }
            _ => None,
        };
        ClientSpan {
            context: Some(context),
            parent: self.parent.clone(),
            no_caller_trace_headers: self.no_caller_trace_headers,
            record,
        }
    }

    /// Ends the span now (later calls do nothing).
    pub fn end(&mut self) {
        if let (Some(record), Some(queue)) = (self.record.take(), &self.queue) {
            queue.push(&record.head, &record.body, now_nanos());
        }
    }
}

impl Drop for ServerSpan {
    fn drop(&mut self) {
        self.end();
    }
}

/// The CLIENT span of one upstream attempt. Ends when dropped.
#[derive(Debug)]
pub struct ClientSpan {
    /// `None` when tracing is off.
    context: Option<SpanContext>,
    /// The caller's context: its baggage goes upstream with this span as the parent (or, with
    /// tracing off, the whole of it passes through).
    parent: Context,
    /// Copied from the SERVER span: its caller sent no trace-context header.
    no_caller_trace_headers: bool,
    /// While open, when sampled and exported: the span and where it goes when it ends.
    record: Option<Box<(Recording, SpanQueue)>>,
}

impl Drop for ClientSpan {
    fn drop(&mut self) {
        if let Some(open) = self.record.take() {
            let (record, queue) = &*open;
            queue.push(&record.head, &record.body, now_nanos());
        }
    }
}

impl ClientSpan {
    /// Whether the caller's request may have carried trace-context headers (the installed
    /// propagators' fields or [`propagation::TRACE_HEADERS`]). False only when the SERVER
    /// span's extraction saw none: a proxy building the upstream request from the caller's
    /// then has none to remove before it writes this span's.
    pub fn caller_sent_trace_headers(&self) -> bool {
        !self.no_caller_trace_headers
    }

    /// What goes upstream: this span as the parent, plus the caller's baggage. Built when a
    /// propagator needs it; [`ClientSpan::w3c_headers`] does without.
    fn inject_context(&self) -> Context {
        match &self.context {
            Some(context) => self.parent.with_remote_span_context(context.clone()),
            None => self.parent.clone(),
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
        let sc = match &self.context {
            Some(context) => context,
            None => {
                parent_span = self.parent.span();
                parent_span.span_context()
            }
        };
        if !sc.is_valid() {
            return None;
        }
        // version 00, trace id, parent id, flags (only the sampled bit): 55 bytes.
        let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
        crate::hex::encode_lower(&sc.trace_id().to_bytes(), &mut value[3..35]);
        crate::hex::encode_lower(&sc.span_id().to_bytes(), &mut value[36..52]);
        crate::hex::encode_lower(
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
        self.record.is_some()
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

/// What both HTTP span kinds record; a no-op when the span is not recording. Keys are copied
/// into the span's encoding when set, so a borrowed `&str` is all a value needs to be.
pub trait HttpSpan {
    /// The span while it is open and recording.
    #[doc(hidden)]
    fn recording(&mut self) -> Option<&mut Recording>;

    /// Adds one attribute (any value kind; prefer the typed setters below, which take
    /// borrowed values).
    fn set_attribute(&mut self, attribute: KeyValue) {
        if let Some(record) = self.recording() {
            record.body.value(attribute.key.as_str(), &attribute.value);
        }
    }

    /// Adds several attributes, in order.
    fn set_attributes(&mut self, attributes: Vec<KeyValue>) {
        if let Some(record) = self.recording() {
            for attribute in &attributes {
                record.body.value(attribute.key.as_str(), &attribute.value);
            }
        }
    }

    /// Adds a string attribute.
    fn set_str(&mut self, key: &str, value: &str) {
        if let Some(record) = self.recording() {
            record.body.str(key, value);
        }
    }

    /// Adds an integer attribute.
    fn set_i64(&mut self, key: &str, value: i64) {
        if let Some(record) = self.recording() {
            record.body.i64(key, value);
        }
    }

    /// Adds a boolean attribute.
    fn set_bool(&mut self, key: &str, value: bool) {
        if let Some(record) = self.recording() {
            record.body.bool(key, value);
        }
    }

    /// Sets `http.response.status_code`; when it is an error on this `side` (see [`Side`]) also
    /// `error.type` and an ERROR status.
    fn record_status(&mut self, status: StatusCode, side: Side) {
        let Some(record) = self.recording() else {
            return;
        };
        record.body.i64(
            semconv::HTTP_RESPONSE_STATUS_CODE,
            i64::from(status.as_u16()),
        );
        if is_error(status, side) {
            record.body.str(semconv::ERROR_TYPE, status.as_str());
            record.set_status(Status::error(""));
        }
    }

    /// Marks the span failed with a low-cardinality `error.type` (`timeout`, `connect_refused`, …).
    fn record_error(&mut self, error_type: &'static str) {
        if let Some(record) = self.recording() {
            record.body.str(semconv::ERROR_TYPE, error_type);
            record.set_status(Status::Error {
                description: Cow::Borrowed(error_type),
            });
        }
    }
}

impl HttpSpan for ServerSpan {
    fn recording(&mut self) -> Option<&mut Recording> {
        self.record.as_deref_mut()
    }
}

impl HttpSpan for ClientSpan {
    fn recording(&mut self) -> Option<&mut Recording> {
        self.record.as_mut().map(|open| &mut open.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    use bytes::Bytes;
    use opentelemetry::trace::{Span as _, TraceState, Tracer as _, TracerProvider as _};
    use opentelemetry::InstrumentationScope;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1 as proto;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;
    use prost::Message as _;

    use crate::otlp_encode::recorded::RequestFrame;
    use crate::span_queue::{BatchSink, QueueConfig, SpanQueueGuard};

    /// Keeps the export queue's requests in memory.
    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<Bytes>>>);

    impl BatchSink for Collect {
        fn send(
            &self,
            request: Bytes,
            _deadline: Option<std::time::Instant>,
        ) -> Result<(), String> {
            self.0.lock().unwrap().push(request);
            Ok(())
        }
    }

    /// A tracer exporting into memory (or ids only), and what it exported.
    struct Harness {
        tracer: HttpTracer,
        collect: Collect,
        queue: SpanQueue,
        _guard: SpanQueueGuard,
    }

    impl Harness {
        fn new(ids_only: bool, sampler: Sampler) -> Self {
            Self::with_limit(
                ids_only,
                sampler,
                crate::otlp_encode::recorded::MAX_ATTRIBUTES,
            )
        }

        fn with_limit(ids_only: bool, sampler: Sampler, max_attributes: u32) -> Self {
            let collect = Collect::default();
            let frame = RequestFrame::new(
                &Resource::builder_empty().build(),
                &InstrumentationScope::builder("test").build(),
            );
            let config = QueueConfig {
                max_queue: 1024,
                max_batch: 512,
                interval: Duration::from_secs(3600),
                stop_timeout: Duration::from_secs(5),
            };
            let (queue, guard) =
                SpanQueue::start(config, frame, Box::new(collect.clone())).unwrap();
            let tracer =
                HttpTracer::new((!ids_only).then(|| queue.clone()), sampler, max_attributes);
            Self {
                tracer,
                collect,
                queue,
                _guard: guard,
            }
        }

        /// Every span exported so far, in the order they ended.
        fn spans(&self) -> Vec<proto::Span> {
            assert!(self.queue.force_flush(Duration::from_secs(5)));
            let mut out = Vec::new();
            for request in self.collect.0.lock().unwrap().iter() {
                let request = ExportTraceServiceRequest::decode(request.clone()).unwrap();
                for rs in request.resource_spans {
                    for ss in rs.scope_spans {
                        out.extend(ss.spans);
                    }
                }
            }
            out
        }
    }

    fn tracer(ids_only: bool) -> Harness {
        // The SDK's default sampler.
        Harness::new(ids_only, Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
    }

    fn attr(span: &proto::Span, key: &str) -> Option<String> {
        let kv = span.attributes.iter().find(|kv| kv.key == key)?;
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            any_value::Value::IntValue(i) => Some(i.to_string()),
            any_value::Value::BoolValue(b) => Some(b.to_string()),
            other => Some(format!("{other:?}")),
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The attempt a request with these trace headers makes, and what the propagators write.
    fn attempt_for(
        harness: &Harness,
        headers: &[(&str, &str)],
    ) -> (ServerSpan, ClientSpan, HeaderMap) {
        let mut req = http::Request::get("/x");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(()).unwrap();
        let server = harness.tracer.server(&ServerRequest::new(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
        ));
        let attempt = server.client(req.method(), "http://u/x", 0);
        let mut written = HeaderMap::new();
        attempt.inject(&mut written);
        (server, attempt, written)
    }

    #[test]
    fn w3c_headers_are_what_the_trace_context_propagator_writes() {
        let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331";
        for (flags, ids_only) in [("01", false), ("00", false), ("01", true)] {
            let harness = tracer(ids_only);
            let tp = format!("{caller}-{flags}");
            let (_server, attempt, written) = attempt_for(&harness, &[("traceparent", &tp)]);
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
        let harness = tracer(false);
        // A root trace (no caller context) too.
        let (_server, attempt, written) = attempt_for(&harness, &[]);
        assert_eq!(
            attempt.w3c_headers().unwrap().traceparent,
            written["traceparent"]
        );
        // The caller's tracestate is passed on, as the propagator does.
        let (_server, attempt, written) = attempt_for(
            &harness,
            &[
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("tracestate", "vendor=abc,other=1"),
            ],
        );
        let w3c = attempt.w3c_headers().unwrap();
        assert_eq!(w3c.tracestate.as_ref(), Some(&written["tracestate"]));
        assert_eq!(written["tracestate"], "vendor=abc,other=1");
    }

    #[test]
    fn w3c_headers_leave_baggage_and_missing_contexts_to_the_propagators() {
        let harness = tracer(false);
        let (_server, attempt, written) = attempt_for(
            &harness,
            &[
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("baggage", "tenant=acme"),
            ],
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
        let harness = tracer(false);
        let req = http::Request::get("/orders/42?token=secret&page=2")
            .header("host", "shop.example:8080")
            .header("user-agent", "curl/8.5")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(())
            .unwrap();
        let mut request = ServerRequest::new(req.method(), req.uri(), req.version(), req.headers());
        request.scheme = "https";
        request.client_address = Some("10.1.2.3".parse().unwrap());
        let mut server = harness.tracer.server(&request);
        assert!(server.is_recording());
        server.set_route(req.method(), "/orders/{id}");
        let mut attempt = server.client(req.method(), "http://10.0.0.7:9000/orders/42", 1);
        assert!(attempt.is_recording());
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01"
                .parse()
                .unwrap(),
        );
        attempt.inject(&mut headers);
        attempt.record_status(StatusCode::SERVICE_UNAVAILABLE, Side::Client);
        let attempt_id = attempt.context.as_ref().unwrap().span_id();
        drop(attempt);
        server.set_str("vantage.auth.result", "allowed");
        server.set_i64("vantage.upstream.attempts", 2);
        server.set_bool("vantage.auth.shadow", false);
        server.set_attribute(KeyValue::new("app.ratio", 0.5));
        server.record_status(StatusCode::OK, Side::Server);
        server.end();
        server.end();

        let spans = harness.spans();
        assert_eq!(spans.len(), 2, "each span once, in the order they ended");
        let (client, server) = (&spans[0], &spans[1]);
        assert_eq!(server.name, "GET /orders/{id}");
        assert_eq!(server.kind, proto::span::SpanKind::Server as i32);
        assert_eq!(hex(&server.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&server.parent_span_id), "b7ad6b7169203331");
        assert_eq!(server.flags, 0x301, "sampled, remote parent");
        assert_eq!(client.kind, proto::span::SpanKind::Client as i32);
        assert_eq!(client.name, "GET");
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(client.parent_span_id, server.span_id);
        assert_eq!(client.flags, 0x101, "sampled, local parent");
        assert_eq!(client.span_id, attempt_id.to_bytes());
        assert!(server.start_time_unix_nano > 0);
        assert!(server.end_time_unix_nano >= client.end_time_unix_nano);
        assert!(client.end_time_unix_nano >= client.start_time_unix_nano);
        for (key, value) in [
            ("http.request.method", "GET"),
            ("url.path", "/orders/42"),
            ("url.query", "token=[REDACTED]&page=2"),
            ("url.scheme", "https"),
            ("http.route", "/orders/{id}"),
            ("server.address", "shop.example"),
            ("server.port", "8080"),
            ("client.address", "10.1.2.3"),
            ("user_agent.original", "curl/8.5"),
            ("network.protocol.version", "1.1"),
            ("http.response.status_code", "200"),
            ("vantage.auth.result", "allowed"),
            ("vantage.upstream.attempts", "2"),
            ("vantage.auth.shadow", "false"),
            ("app.ratio", "DoubleValue(0.5)"),
        ] {
            assert_eq!(attr(server, key).as_deref(), Some(value), "{key}");
        }
        assert_eq!(attr(server, "error.type"), None);
        assert_eq!(server.status.as_ref().unwrap().code, 0, "a 200 is no error");
        assert_eq!(
            attr(client, "http.request.resend_count").as_deref(),
            Some("1")
        );
        assert_eq!(attr(client, "error.type").as_deref(), Some("503"));
        assert_eq!(
            attr(client, "url.full").as_deref(),
            Some("http://10.0.0.7:9000/orders/42")
        );
        assert_eq!(client.status.as_ref().unwrap().code, 2);
        let sent = headers["traceparent"].to_str().unwrap();
        assert_eq!(
            sent,
            format!(
                "00-0af7651916cd43dd8448eb211c80319c-{}-01",
                hex(&client.span_id)
            ),
            "the upstream continues the trace under the attempt, never the client's header"
        );
    }

    #[test]
    fn statuses_follow_the_sdks_order_and_errors_name_their_type() {
        let harness = tracer(false);
        let request = |harness: &Harness| {
            harness.tracer.server(&ServerRequest::new(
                &Method::GET,
                &http::Uri::from_static("/"),
                http::Version::HTTP_11,
                &HeaderMap::new(),
            ))
        };
        // An error after a 5xx status: the described error wins over the empty one.
        let mut a = request(&harness);
        a.record_status(StatusCode::BAD_GATEWAY, Side::Server);
        a.record_error("timeout");
        drop(a);
        // A 4xx is no SERVER error; a CLIENT attempt's 4xx is.
        let mut b = request(&harness);
        b.record_status(StatusCode::NOT_FOUND, Side::Server);
        let mut attempt = b.client(&Method::GET, "http://u/", 0);
        attempt.record_status(StatusCode::NOT_FOUND, Side::Client);
        drop(attempt);
        drop(b);
        let spans = harness.spans();
        assert_eq!(spans.len(), 3);
        let status = |s: &proto::Span| {
            let st = s.status.clone().unwrap();
            (st.code, st.message)
        };
        assert_eq!(status(&spans[0]), (2, "timeout".to_owned()));
        let error_types: Vec<_> = spans[0]
            .attributes
            .iter()
            .filter(|kv| kv.key == "error.type")
            .map(|kv| format!("{:?}", kv.value.as_ref().unwrap().value.as_ref().unwrap()))
            .collect();
        assert_eq!(
            error_types,
            [r#"StringValue("502")"#, r#"StringValue("timeout")"#],
            "the status's error.type, then the error's"
        );
        assert_eq!(status(&spans[1]), (2, String::new()), "the attempt's 404");
        assert_eq!(status(&spans[2]), (0, String::new()), "the server's 404");
        assert_eq!(attr(&spans[2], "error.type"), None);
    }

    #[test]
    fn attributes_past_the_limit_are_counted_as_dropped() {
        let limit = 12;
        let harness = Harness::with_limit(
            false,
            Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            limit,
        );
        let mut server = harness.tracer.server(&ServerRequest::new(
            &Method::GET,
            &http::Uri::from_static("/"),
            http::Version::HTTP_11,
            &HeaderMap::new(),
        ));
        let before = server.record.as_ref().unwrap().body.len();
        for i in 0..limit + 5 {
            server.set_i64("n", i64::from(i));
        }
        let mut attempt = server.client(&Method::GET, "http://u/", 0);
        for i in 0..limit {
            attempt.set_i64("n", i64::from(i));
        }
        drop(attempt);
        server.end();
        let spans = harness.spans();
        let (client, server) = (&spans[0], &spans[1]);
        assert_eq!(server.attributes.len(), limit as usize);
        assert_eq!(server.dropped_attributes_count, before + 5);
        assert_eq!(
            client.attributes.len(),
            limit as usize,
            "the CLIENT span too"
        );
        assert!(client.dropped_attributes_count > 0);
    }

    #[test]
    fn without_an_exporter_spans_have_ids_and_propagate_but_record_nothing() {
        let harness = tracer(true);
        let req = http::Request::get("/orders/42")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(())
            .unwrap();
        let mut server = harness.tracer.server(&ServerRequest::new(
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
        assert!(!attempt.is_recording());
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
        assert!(harness.spans().is_empty(), "nothing exported");
    }

    /// Spans are made without the SDK; what goes upstream and what is exported must be what
    /// the SDK would have done: the same trace id, flags and trace state for every sampler and
    /// parent, and a span exported exactly when the SDK's would be sampled.
    #[test]
    fn spans_decide_as_the_sdk_does() {
        let samplers = || {
            vec![
                Sampler::AlwaysOn,
                Sampler::AlwaysOff,
                Sampler::TraceIdRatioBased(0.0),
                Sampler::TraceIdRatioBased(1.0),
                Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.0))),
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(1.0))),
                Sampler::ParentBased(Box::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))),
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
        for sampler in samplers() {
            let provider = SdkTracerProvider::builder()
                .with_sampler(sampler.clone())
                .build();
            let sdk = provider.tracer("t");
            for ids_only in [true, false] {
                let harness = Harness::new(ids_only, sampler.clone());
                for parent in parents {
                    let mut headers = HeaderMap::new();
                    for (k, v) in parent {
                        headers.insert(*k, HeaderValue::from_static(v));
                    }
                    let case = format!("{sampler:?} / {parent:?} / ids only {ids_only}");
                    // The SDK's spans for the same request.
                    let caller = propagation::extract_http(&headers);
                    let sdk_server = sdk
                        .span_builder("HTTP")
                        .with_kind(SpanKind::Server)
                        .start_with_context(&sdk, &caller);
                    let sdk_sc = sdk_server.span_context().clone();
                    let sdk_parent = Context::new().with_remote_span_context(sdk_sc.clone());
                    let sdk_client = sdk
                        .span_builder("HTTP")
                        .with_kind(SpanKind::Client)
                        .start_with_context(&sdk, &sdk_parent);
                    let sdk_client_sc = sdk_client.span_context().clone();
                    // Ours.
                    let before = harness.spans().len();
                    let server = harness.tracer.server(&ServerRequest::new(
                        &Method::GET,
                        &http::Uri::from_static("/x"),
                        http::Version::HTTP_11,
                        &headers,
                    ));
                    let client = server.client(&Method::GET, "http://u/x", 0);
                    let sc = server.span_context().clone();
                    let client_sc = client.context.clone().unwrap();
                    for (ours, theirs, kind) in [
                        (&sc, &sdk_sc, "server"),
                        (&client_sc, &sdk_client_sc, "client"),
                    ] {
                        assert!(ours.is_valid(), "{case} {kind}");
                        assert_eq!(ours.trace_flags(), theirs.trace_flags(), "{case} {kind}");
                        assert_eq!(ours.trace_state(), theirs.trace_state(), "{case} {kind}");
                        if !parent.is_empty() {
                            assert_eq!(ours.trace_id(), theirs.trace_id(), "{case} {kind}");
                        }
                    }
                    assert_eq!(client_sc.trace_id(), sc.trace_id(), "{case}");
                    let w3c = client.w3c_headers().unwrap();
                    assert_eq!(
                        w3c.traceparent.to_str().unwrap(),
                        format!(
                            "00-{}-{}-{:02x}",
                            client_sc.trace_id(),
                            client_sc.span_id(),
                            client_sc.trace_flags().to_u8() & 1
                        ),
                        "{case}"
                    );
                    assert_eq!(
                        w3c.tracestate.map(|v| v.to_str().unwrap().to_owned()),
                        (sdk_sc.trace_state() != &TraceState::NONE)
                            .then(|| sdk_sc.trace_state().header()),
                        "{case}"
                    );
                    drop(client);
                    drop(server);
                    let exported = harness.spans().len() - before;
                    let expected = if ids_only {
                        0
                    } else {
                        usize::from(sdk_sc.is_sampled()) + usize::from(sdk_client_sc.is_sampled())
                    };
                    assert_eq!(exported, expected, "{case}");
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
                        let mut fast = SpanBody::default();
                        upstream_attributes(&Method::GET, to, resend, &mut fast);
                        let mut slow = SpanBody::default();
                        client_attributes(&Method::GET, &url, resend, &mut slow);
                        assert_eq!(fast.bytes(), slow.bytes(), "{url} (resend {resend})");
                    }
                }
            }
        }
        // The fast path really is taken for a plain target at an IPv4 address.
        assert!(is_plain_path("/orders/42"));
        assert!(!is_plain_path("/search?q=1"));
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
