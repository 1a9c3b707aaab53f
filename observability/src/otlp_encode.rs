//! Writes an OTLP `ExportTraceServiceRequest` protobuf straight from the SDK's [`SpanData`].
//!
//! The upstream exporter first converts every span into `opentelemetry-proto`'s prost structs
//! (one `String` allocation and copy per attribute key and string value) and then lets prost
//! encode them, which computes `encoded_len` of each nested message again at every level above
//! it. [`TraceEncoder`] does neither: one pass walks the batch and records the length of every
//! nested message, bottom-up, in a reusable `Vec<u32>`; a second pass walks it in the same order
//! and writes tags, varints and bytes into a reusable buffer. Keys and values are copied once,
//! into the output. The resource never changes, so it is encoded once, when it is set.
//!
//! The output is exactly what `opentelemetry_proto::transform::trace::tonic::
//! group_spans_by_resource_and_scope` would produce once decoded (one `ResourceSpans`, one
//! `ScopeSpans` per instrumentation scope in order of first appearance); the unit tests below
//! check that. Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto`,
//! `common/v1/common.proto` and `resource/v1/resource.proto`.
//!
//! # How to use
//!
//! ```text
//! let mut encoder = TraceEncoder::default();
//! encoder.set_resource(&resource); // once, when the provider is built
//! let body: bytes::Bytes = encoder.encode(&batch); // the gRPC message or the HTTP body
//! ```

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceState};
use opentelemetry::{Array, InstrumentationScope, Value};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::Resource;

// Wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

const fn key(field: u32, wire_type: u32) -> u32 {
    (field << 3) | wire_type
}

// ExportTraceServiceRequest
const REQUEST_RESOURCE_SPANS: u32 = key(1, LEN);
// ResourceSpans
const RESOURCE_SPANS_RESOURCE: u32 = key(1, LEN);
const RESOURCE_SPANS_SCOPE_SPANS: u32 = key(2, LEN);
const RESOURCE_SPANS_SCHEMA_URL: u32 = key(3, LEN);
// Resource
const RESOURCE_ATTRIBUTES: u32 = key(1, LEN);
// ScopeSpans
const SCOPE_SPANS_SCOPE: u32 = key(1, LEN);
const SCOPE_SPANS_SPANS: u32 = key(2, LEN);
const SCOPE_SPANS_SCHEMA_URL: u32 = key(3, LEN);
// InstrumentationScope
const SCOPE_NAME: u32 = key(1, LEN);
const SCOPE_VERSION: u32 = key(2, LEN);
const SCOPE_ATTRIBUTES: u32 = key(3, LEN);
// Span
const SPAN_TRACE_ID: u32 = key(1, LEN);
const SPAN_SPAN_ID: u32 = key(2, LEN);
const SPAN_TRACE_STATE: u32 = key(3, LEN);
const SPAN_PARENT_SPAN_ID: u32 = key(4, LEN);
const SPAN_NAME: u32 = key(5, LEN);
const SPAN_KIND: u32 = key(6, VARINT);
const SPAN_START_TIME: u32 = key(7, FIXED64);
const SPAN_END_TIME: u32 = key(8, FIXED64);
const SPAN_ATTRIBUTES: u32 = key(9, LEN);
const SPAN_DROPPED_ATTRIBUTES: u32 = key(10, VARINT);
const SPAN_EVENTS: u32 = key(11, LEN);
const SPAN_DROPPED_EVENTS: u32 = key(12, VARINT);
const SPAN_LINKS: u32 = key(13, LEN);
const SPAN_DROPPED_LINKS: u32 = key(14, VARINT);
const SPAN_STATUS: u32 = key(15, LEN);
const SPAN_FLAGS: u32 = key(16, FIXED32);
// Span.Event
const EVENT_TIME: u32 = key(1, FIXED64);
const EVENT_NAME: u32 = key(2, LEN);
const EVENT_ATTRIBUTES: u32 = key(3, LEN);
const EVENT_DROPPED_ATTRIBUTES: u32 = key(4, VARINT);
// Span.Link
const LINK_TRACE_ID: u32 = key(1, LEN);
const LINK_SPAN_ID: u32 = key(2, LEN);
const LINK_TRACE_STATE: u32 = key(3, LEN);
const LINK_ATTRIBUTES: u32 = key(4, LEN);
const LINK_DROPPED_ATTRIBUTES: u32 = key(5, VARINT);
const LINK_FLAGS: u32 = key(6, FIXED32);
// Status
const STATUS_MESSAGE: u32 = key(2, LEN);
const STATUS_CODE: u32 = key(3, VARINT);
// KeyValue
const KV_KEY: u32 = key(1, LEN);
const KV_VALUE: u32 = key(2, LEN);
// AnyValue (a oneof: always written, even when it holds the default)
const ANY_STRING: u32 = key(1, LEN);
const ANY_BOOL: u32 = key(2, VARINT);
const ANY_INT: u32 = key(3, VARINT);
const ANY_DOUBLE: u32 = key(4, FIXED64);
const ANY_ARRAY: u32 = key(5, LEN);
// ArrayValue
const ARRAY_VALUES: u32 = key(1, LEN);

/// `SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`: we always know whether the parent is remote.
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
/// `SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`.
const FLAG_IS_REMOTE: u32 = 0x200;

/// Bytes a varint of `value` takes.
#[inline]
fn varint_len(value: u64) -> usize {
    if value < 0x80 {
        // Nearly every length and tag.
        return 1;
    }
    // 1 byte per started group of 7 bits.
    (64 - value.leading_zeros() as usize).div_ceil(7)
}

/// Bytes a length-delimited field of `len` bytes takes, key included (every key used with a
/// length-delimited field here is below 16, so one byte).
#[inline]
fn len_field(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// A string or bytes field that proto3 omits when empty.
#[inline]
fn opt_len_field(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len_field(len)
    }
}

/// A `uint32` field that proto3 omits when zero.
#[inline]
fn opt_varint_field(value: u32) -> usize {
    if value == 0 {
        0
    } else {
        1 + varint_len(u64::from(value))
    }
}

fn nanos(time: SystemTime) -> u64 {
    // Same as the upstream transform: before the epoch is 0, nanoseconds truncated to u64.
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// `flags` as opentelemetry-proto 0.33 builds them: the W3C trace flags, plus "has is-remote",
/// plus "is remote" when the parent (for a link: the linked context) is remote.
fn span_flags(remote: bool, trace_flags: u8) -> u32 {
    let mut flags = u32::from(trace_flags) | FLAG_HAS_IS_REMOTE;
    if remote {
        flags |= FLAG_IS_REMOTE;
    }
    flags
}

fn status_parts(status: &Status) -> (u64, &str) {
    match status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description),
    }
}

fn status_len(status: &Status) -> usize {
    let (code, message) = status_parts(status);
    opt_len_field(message.len()) + if code == 0 { 0 } else { 1 + varint_len(code) }
}

/// Encodes export requests; keeps its buffers between batches, so a steady load allocates
/// nothing once the buffers have grown to the batch size.
#[derive(Debug, Default)]
pub(crate) struct TraceEncoder {
    /// The `Resource` message's body, encoded once by [`TraceEncoder::set_resource`].
    resource: Vec<u8>,
    /// `ResourceSpans.schema_url`: the resource's schema URL, empty when it has none.
    resource_schema_url: String,
    /// Lengths of nested messages, in the order the write pass meets them.
    lens: Vec<u32>,
    /// Per span of the batch: the index of its scope among `scope_first`.
    scope_of: Vec<u32>,
    /// Per distinct scope, in order of first appearance: the first span that has it.
    scope_first: Vec<u32>,
    /// Per scope: where its spans start in `order` (one extra entry at the end).
    scope_start: Vec<u32>,
    /// Span indices grouped by scope.
    order: Vec<u32>,
    /// Per span of the batch: its start and end time in nanoseconds since the epoch, computed
    /// once for both passes.
    times: Vec<(u64, u64)>,
    /// Per scope: the next free place in `order` while grouping.
    fill: Vec<u32>,
    /// The output; `split` hands out its bytes and reuses the allocation once they are dropped.
    buf: BytesMut,
}

/// Where the write pass is in [`TraceEncoder::lens`].
struct Lens<'a> {
    lens: &'a [u32],
    next: usize,
}

impl Lens<'_> {
    #[inline]
    fn next(&mut self) -> usize {
        let len = self.lens[self.next];
        self.next += 1;
        len as usize
    }
}

// === impl TraceEncoder ===

impl TraceEncoder {
    /// An encoder for spans of `resource` (the exporter starts from `default()` and gets its
    /// resource through `set_resource`).
    #[cfg(test)]
    pub(crate) fn new(resource: &Resource) -> Self {
        let mut encoder = Self::default();
        encoder.set_resource(resource);
        encoder
    }

    /// Encodes `resource` for every later request.
    pub(crate) fn set_resource(&mut self, resource: &Resource) {
        let mut lens = Vec::new();
        let mut body_len = 0;
        for (key, value) in resource.iter() {
            body_len += len_field(size_kv(key.as_str(), value, &mut lens));
        }
        let mut buf = vec![0; body_len];
        let mut out = Out::new(&mut buf);
        let mut cursor = Lens {
            lens: &lens,
            next: 0,
        };
        for (key, value) in resource.iter() {
            write_kv(
                &mut out,
                RESOURCE_ATTRIBUTES,
                key.as_str(),
                value,
                &mut cursor,
            );
        }
        debug_assert_eq!(out.pos, body_len);
        self.resource = buf;
        self.resource_schema_url = resource.schema_url().unwrap_or_default().to_owned();
    }

    /// The `ExportTraceServiceRequest` carrying `spans`.
    pub(crate) fn encode(&mut self, spans: &[SpanData]) -> Bytes {
        self.group(spans);
        self.times.clear();
        self.times.extend(
            spans
                .iter()
                .map(|span| (nanos(span.start_time), nanos(span.end_time))),
        );
        self.lens.clear();
        let total = self.size(spans);
        // The whole request is written into a slice of exactly its size: one bounds check per
        // byte, no capacity checks.
        self.buf.clear();
        self.buf.resize(total, 0);
        let Self {
            resource,
            resource_schema_url,
            lens,
            scope_first,
            scope_start,
            order,
            times,
            buf: output,
            ..
        } = self;
        let mut cursor = Lens { lens, next: 0 };
        let mut out = Out::new(&mut output[..]);
        let buf = &mut out;

        put_varint(buf, u64::from(REQUEST_RESOURCE_SPANS));
        put_varint(buf, cursor.next() as u64);
        put_bytes_field(buf, RESOURCE_SPANS_RESOURCE, resource);
        for (scope, &first) in scope_first.iter().enumerate() {
            let scope_ref = &spans[first as usize].instrumentation_scope;
            put_varint(buf, u64::from(RESOURCE_SPANS_SCOPE_SPANS));
            put_varint(buf, cursor.next() as u64);
            write_scope(buf, scope_ref, &mut cursor);
            let group = &order[scope_start[scope] as usize..scope_start[scope + 1] as usize];
            for &index in group {
                write_span(
                    buf,
                    &spans[index as usize],
                    times[index as usize],
                    &mut cursor,
                );
            }
            put_opt_str_field(
                buf,
                SCOPE_SPANS_SCHEMA_URL,
                scope_ref.schema_url().unwrap_or_default(),
            );
        }
        put_opt_str_field(buf, RESOURCE_SPANS_SCHEMA_URL, resource_schema_url);
        debug_assert_eq!(cursor.next, lens.len());
        debug_assert_eq!(out.pos, total);
        output.split().freeze()
    }

    /// Groups span indices by instrumentation scope, scopes in order of first appearance.
    fn group(&mut self, spans: &[SpanData]) {
        self.scope_of.clear();
        self.scope_first.clear();
        for (index, span) in spans.iter().enumerate() {
            let scope = &span.instrumentation_scope;
            // A batch holds one or two scopes: a linear search beats hashing them.
            let found = self
                .scope_first
                .iter()
                .position(|&first| same_scope(&spans[first as usize].instrumentation_scope, scope));
            let scope_index = found.unwrap_or_else(|| {
                self.scope_first.push(index as u32);
                self.scope_first.len() - 1
            });
            self.scope_of.push(scope_index as u32);
        }
        // Counting sort of the span indices by scope.
        self.scope_start.clear();
        self.scope_start.resize(self.scope_first.len() + 1, 0);
        for &scope in &self.scope_of {
            self.scope_start[scope as usize + 1] += 1;
        }
        for i in 1..self.scope_start.len() {
            self.scope_start[i] += self.scope_start[i - 1];
        }
        self.order.clear();
        self.order.resize(spans.len(), 0);
        self.fill.clear();
        self.fill.extend_from_slice(&self.scope_start);
        for (index, &scope) in self.scope_of.iter().enumerate() {
            let slot = &mut self.fill[scope as usize];
            self.order[*slot as usize] = index as u32;
            *slot += 1;
        }
    }

    /// The sizing pass: records every nested message's length in `lens`, in write order, and
    /// returns the request's length.
    fn size(&mut self, spans: &[SpanData]) -> usize {
        let lens = &mut self.lens;
        let resource_spans = reserve(lens);
        let mut resource_spans_len =
            len_field(self.resource.len()) + opt_len_field(self.resource_schema_url.len());
        for (scope, &first) in self.scope_first.iter().enumerate() {
            let scope_ref = &spans[first as usize].instrumentation_scope;
            let scope_spans = reserve(lens);
            let mut scope_spans_len = len_field(size_scope(scope_ref, lens))
                + opt_len_field(scope_ref.schema_url().unwrap_or_default().len());
            let group =
                &self.order[self.scope_start[scope] as usize..self.scope_start[scope + 1] as usize];
            for &index in group {
                scope_spans_len += len_field(size_span(
                    &spans[index as usize],
                    self.times[index as usize],
                    lens,
                ));
            }
            lens[scope_spans] = scope_spans_len as u32;
            resource_spans_len += len_field(scope_spans_len);
        }
        lens[resource_spans] = resource_spans_len as u32;
        len_field(resource_spans_len)
    }
}

/// Whether two spans have the same scope. Spans of one tracer share its scope's strings, so
/// comparing where they point settles nearly every case; the scopes' `==` (which sorts copies
/// of their attributes) decides the rest.
fn same_scope(a: &InstrumentationScope, b: &InstrumentationScope) -> bool {
    fn same_text(a: Option<&str>, b: Option<&str>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
    let shared = std::ptr::eq(a.name(), b.name())
        && same_text(a.version(), b.version())
        && same_text(a.schema_url(), b.schema_url())
        && a.attributes().next().is_none()
        && b.attributes().next().is_none();
    shared || a == b
}

// === sizing pass ===

/// A slot for a message length, filled once its children are sized.
#[inline]
fn reserve(lens: &mut Vec<u32>) -> usize {
    lens.push(0);
    lens.len() - 1
}

fn size_scope(scope: &InstrumentationScope, lens: &mut Vec<u32>) -> usize {
    let slot = reserve(lens);
    let mut len = opt_len_field(scope.name().len())
        + opt_len_field(scope.version().unwrap_or_default().len());
    for kv in scope.attributes() {
        len += len_field(size_kv(kv.key.as_str(), &kv.value, lens));
    }
    lens[slot] = len as u32;
    len
}

fn size_span(span: &SpanData, (start, end): (u64, u64), lens: &mut Vec<u32>) -> usize {
    let slot = reserve(lens);
    let context = &span.span_context;
    let mut len = len_field(16) + len_field(8) // trace_id, span_id
        + opt_len_field(trace_state_len(context))
        + if span.parent_span_id == SpanId::INVALID { 0 } else { len_field(8) }
        + opt_len_field(span.name.len())
        + 1 + varint_len(span_kind(&span.span_kind))
        + fixed64_field(start)
        + fixed64_field(end)
        + opt_varint_field(span.dropped_attributes_count)
        + opt_varint_field(span.events.dropped_count)
        + opt_varint_field(span.links.dropped_count)
        + len_field(status_len(&span.status)) // always present
        + 2 + 4; // flags: field 16 takes a two-byte key; never zero
    for kv in &span.attributes {
        len += len_field(size_kv(kv.key.as_str(), &kv.value, lens));
    }
    for event in span.events.iter() {
        let event_slot = reserve(lens);
        let mut event_len = fixed64_field(nanos(event.timestamp))
            + opt_len_field(event.name.len())
            + opt_varint_field(event.dropped_attributes_count);
        for kv in &event.attributes {
            event_len += len_field(size_kv(kv.key.as_str(), &kv.value, lens));
        }
        lens[event_slot] = event_len as u32;
        len += len_field(event_len);
    }
    for link in span.links.iter() {
        let link_slot = reserve(lens);
        let mut link_len = len_field(16)
            + len_field(8)
            + opt_len_field(trace_state_len(&link.span_context))
            + opt_varint_field(link.dropped_attributes_count)
            + 1
            + 4; // flags, never zero
        for kv in &link.attributes {
            link_len += len_field(size_kv(kv.key.as_str(), &kv.value, lens));
        }
        lens[link_slot] = link_len as u32;
        len += len_field(link_len);
    }
    lens[slot] = len as u32;
    len
}

#[inline]
fn fixed64_field(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        9
    }
}

fn trace_state_len(context: &SpanContext) -> usize {
    trace_state(context).len()
}

/// The W3C `tracestate` header of `context`; nearly every span has none, which needs no
/// formatting.
fn trace_state(context: &SpanContext) -> Cow<'static, str> {
    let state = context.trace_state();
    if *state == TraceState::NONE {
        Cow::Borrowed("")
    } else {
        Cow::Owned(state.header())
    }
}

/// Sizes a `KeyValue`: records its `AnyValue`'s length (and an array's `ArrayValue` length
/// after it) and returns the `KeyValue`'s length.
fn size_kv(key: &str, value: &Value, lens: &mut Vec<u32>) -> usize {
    // A scalar's `AnyValue` (nearly every attribute) is sized again on the spot by the write
    // pass, which is cheaper than recording it; other values record theirs.
    let any = match scalar_any_len(value) {
        Some(len) => len,
        None => {
            let slot = reserve(lens);
            let any = size_any(value, lens);
            lens[slot] = any as u32;
            any
        }
    };
    opt_len_field(key.len()) + len_field(any)
}

/// The `AnyValue` length of a scalar value, `None` for the others.
#[inline]
fn scalar_any_len(value: &Value) -> Option<usize> {
    match value {
        Value::Bool(_) => Some(2),
        Value::I64(v) => Some(1 + varint_len(*v as u64)),
        Value::F64(_) => Some(9),
        Value::String(s) => Some(len_field(s.as_str().len())),
        _ => None,
    }
}

/// The `AnyValue` of `value`, without key or length prefix.
fn size_any(value: &Value, lens: &mut Vec<u32>) -> usize {
    match value {
        Value::Bool(_) => 2,
        Value::I64(v) => 1 + varint_len(*v as u64),
        Value::F64(_) => 9,
        Value::String(s) => len_field(s.as_str().len()),
        Value::Array(array) => {
            let slot = reserve(lens);
            let array_len = size_array(array);
            lens[slot] = array_len as u32;
            len_field(array_len)
        }
        // A kind this encoder does not know yet: an empty `AnyValue`.
        _ => 0,
    }
}

/// The `ArrayValue` of `array`: each element an `AnyValue` of a scalar, so sized on the spot.
fn size_array(array: &Array) -> usize {
    match array {
        Array::Bool(values) => values.len() * len_field(2),
        Array::I64(values) => values
            .iter()
            .map(|v| len_field(1 + varint_len(*v as u64)))
            .sum(),
        Array::F64(values) => values.len() * len_field(9),
        Array::String(values) => values
            .iter()
            .map(|v| len_field(len_field(v.as_str().len())))
            .sum(),
        _ => 0,
    }
}

// === write pass ===

/// The output of the write pass: a slice sized by the sizing pass, filled front to back.
struct Out<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Out<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    #[inline]
    fn put_u8(&mut self, byte: u8) {
        self.buf[self.pos] = byte;
        self.pos += 1;
    }

    #[inline]
    fn put_slice(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        self.buf[self.pos..end].copy_from_slice(bytes);
        self.pos = end;
    }

    #[inline]
    fn put_u64_le(&mut self, value: u64) {
        self.put_slice(&value.to_le_bytes());
    }

    #[inline]
    fn put_u32_le(&mut self, value: u32) {
        self.put_slice(&value.to_le_bytes());
    }

    #[inline]
    fn put_f64_le(&mut self, value: f64) {
        self.put_slice(&value.to_le_bytes());
    }
}

#[inline]
fn put_varint(buf: &mut Out<'_>, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

#[inline]
fn put_bytes_field(buf: &mut Out<'_>, key: u32, bytes: &[u8]) {
    put_varint(buf, u64::from(key));
    put_varint(buf, bytes.len() as u64);
    buf.put_slice(bytes);
}

#[inline]
fn put_opt_str_field(buf: &mut Out<'_>, key: u32, value: &str) {
    if !value.is_empty() {
        put_bytes_field(buf, key, value.as_bytes());
    }
}

#[inline]
fn put_opt_varint_field(buf: &mut Out<'_>, key: u32, value: u32) {
    if value != 0 {
        put_varint(buf, u64::from(key));
        put_varint(buf, u64::from(value));
    }
}

#[inline]
fn put_fixed64_field(buf: &mut Out<'_>, key: u32, value: u64) {
    if value != 0 {
        put_varint(buf, u64::from(key));
        buf.put_u64_le(value);
    }
}

#[inline]
fn put_fixed32_field(buf: &mut Out<'_>, key: u32, value: u32) {
    put_varint(buf, u64::from(key));
    buf.put_u32_le(value);
}

/// The length prefix of a nested message whose length the sizing pass recorded.
#[inline]
fn put_message_header(buf: &mut Out<'_>, key: u32, cursor: &mut Lens<'_>) {
    put_varint(buf, u64::from(key));
    put_varint(buf, cursor.next() as u64);
}

fn write_scope(buf: &mut Out<'_>, scope: &InstrumentationScope, cursor: &mut Lens<'_>) {
    put_message_header(buf, SCOPE_SPANS_SCOPE, cursor);
    put_opt_str_field(buf, SCOPE_NAME, scope.name());
    put_opt_str_field(buf, SCOPE_VERSION, scope.version().unwrap_or_default());
    for kv in scope.attributes() {
        write_kv(buf, SCOPE_ATTRIBUTES, kv.key.as_str(), &kv.value, cursor);
    }
}

fn write_span(buf: &mut Out<'_>, span: &SpanData, (start, end): (u64, u64), cursor: &mut Lens<'_>) {
    put_message_header(buf, SCOPE_SPANS_SPANS, cursor);
    let context = &span.span_context;
    put_bytes_field(buf, SPAN_TRACE_ID, &context.trace_id().to_bytes());
    put_bytes_field(buf, SPAN_SPAN_ID, &context.span_id().to_bytes());
    put_opt_str_field(buf, SPAN_TRACE_STATE, &trace_state(context));
    if span.parent_span_id != SpanId::INVALID {
        put_bytes_field(buf, SPAN_PARENT_SPAN_ID, &span.parent_span_id.to_bytes());
    }
    put_opt_str_field(buf, SPAN_NAME, &span.name);
    put_varint(buf, u64::from(SPAN_KIND));
    put_varint(buf, span_kind(&span.span_kind));
    put_fixed64_field(buf, SPAN_START_TIME, start);
    put_fixed64_field(buf, SPAN_END_TIME, end);
    for kv in &span.attributes {
        write_kv(buf, SPAN_ATTRIBUTES, kv.key.as_str(), &kv.value, cursor);
    }
    put_opt_varint_field(buf, SPAN_DROPPED_ATTRIBUTES, span.dropped_attributes_count);
    for event in span.events.iter() {
        put_message_header(buf, SPAN_EVENTS, cursor);
        put_fixed64_field(buf, EVENT_TIME, nanos(event.timestamp));
        put_opt_str_field(buf, EVENT_NAME, &event.name);
        for kv in &event.attributes {
            write_kv(buf, EVENT_ATTRIBUTES, kv.key.as_str(), &kv.value, cursor);
        }
        put_opt_varint_field(
            buf,
            EVENT_DROPPED_ATTRIBUTES,
            event.dropped_attributes_count,
        );
    }
    put_opt_varint_field(buf, SPAN_DROPPED_EVENTS, span.events.dropped_count);
    for link in span.links.iter() {
        let linked = &link.span_context;
        put_message_header(buf, SPAN_LINKS, cursor);
        put_bytes_field(buf, LINK_TRACE_ID, &linked.trace_id().to_bytes());
        put_bytes_field(buf, LINK_SPAN_ID, &linked.span_id().to_bytes());
        put_opt_str_field(buf, LINK_TRACE_STATE, &trace_state(linked));
        for kv in &link.attributes {
            write_kv(buf, LINK_ATTRIBUTES, kv.key.as_str(), &kv.value, cursor);
        }
        put_opt_varint_field(buf, LINK_DROPPED_ATTRIBUTES, link.dropped_attributes_count);
        put_fixed32_field(
            buf,
            LINK_FLAGS,
            span_flags(linked.is_remote(), linked.trace_flags().to_u8()),
        );
    }
    put_opt_varint_field(buf, SPAN_DROPPED_LINKS, span.links.dropped_count);
    // Status is always present (the upstream transform always sets it), possibly empty.
    let (code, message) = status_parts(&span.status);
    put_varint(buf, u64::from(SPAN_STATUS));
    put_varint(buf, status_len(&span.status) as u64);
    put_opt_str_field(buf, STATUS_MESSAGE, message);
    if code != 0 {
        put_varint(buf, u64::from(STATUS_CODE));
        put_varint(buf, code);
    }
    put_fixed32_field(
        buf,
        SPAN_FLAGS,
        span_flags(span.parent_span_is_remote, context.trace_flags().to_u8()),
    );
}

/// Writes a `KeyValue` as field `key_field` of its parent.
fn write_kv(buf: &mut Out<'_>, field: u32, key: &str, value: &Value, cursor: &mut Lens<'_>) {
    let any = match scalar_any_len(value) {
        Some(len) => len,
        None => cursor.next(),
    };
    put_varint(buf, u64::from(field));
    put_varint(buf, (opt_len_field(key.len()) + len_field(any)) as u64);
    put_opt_str_field(buf, KV_KEY, key);
    put_varint(buf, u64::from(KV_VALUE));
    put_varint(buf, any as u64);
    match value {
        Value::Bool(v) => put_bool(buf, *v),
        Value::I64(v) => put_int(buf, *v),
        Value::F64(v) => put_double(buf, *v),
        Value::String(s) => put_bytes_field(buf, ANY_STRING, s.as_str().as_bytes()),
        Value::Array(array) => {
            put_message_header(buf, ANY_ARRAY, cursor);
            write_array(buf, array);
        }
        _ => {}
    }
}

#[inline]
fn put_bool(buf: &mut Out<'_>, value: bool) {
    put_varint(buf, u64::from(ANY_BOOL));
    buf.put_u8(u8::from(value));
}

#[inline]
fn put_int(buf: &mut Out<'_>, value: i64) {
    put_varint(buf, u64::from(ANY_INT));
    put_varint(buf, value as u64);
}

#[inline]
fn put_double(buf: &mut Out<'_>, value: f64) {
    put_varint(buf, u64::from(ANY_DOUBLE));
    buf.put_f64_le(value);
}

/// An `ArrayValue`'s elements, each an `AnyValue` whose length is known on the spot.
fn write_array(buf: &mut Out<'_>, array: &Array) {
    match array {
        Array::Bool(values) => {
            for v in values {
                put_varint(buf, u64::from(ARRAY_VALUES));
                put_varint(buf, 2);
                put_bool(buf, *v);
            }
        }
        Array::I64(values) => {
            for v in values {
                put_varint(buf, u64::from(ARRAY_VALUES));
                put_varint(buf, (1 + varint_len(*v as u64)) as u64);
                put_int(buf, *v);
            }
        }
        Array::F64(values) => {
            for v in values {
                put_varint(buf, u64::from(ARRAY_VALUES));
                put_varint(buf, 9);
                put_double(buf, *v);
            }
        }
        Array::String(values) => {
            for v in values {
                let s = v.as_str().as_bytes();
                put_varint(buf, u64::from(ARRAY_VALUES));
                put_varint(buf, len_field(s.len()) as u64);
                put_bytes_field(buf, ANY_STRING, s);
            }
        }
        _ => {}
    }
}

pub(crate) mod recorded;

#[cfg(test)]
mod tests;
