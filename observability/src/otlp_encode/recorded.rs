//! A span encoded as OTLP protobuf while it is recorded, for [`crate::http_span`].
//!
//! [`super::TraceEncoder`] encodes the SDK's finished `SpanData`; to get there a span's
//! attributes are first built as `KeyValue`s (an owned copy of every string the request already
//! holds), kept in the SDK span, moved into `SpanData`, sent to the batch processor's thread and
//! dropped after encoding. A proxy's two spans per request pay that on every request. Here an
//! attribute is written into the span's [`SpanBody`] the moment it is set, from a borrowed key
//! and value: protobuf lets a message's fields come in any order and repeated fields be written
//! one by one, so the attributes are bytes long before the span ends. When it ends,
//! [`SpanHead::finish`] writes the whole `Span` message (ids, name, times, attributes, status,
//! flags) into the export queue's buffer, and [`RequestFrame`] wraps a batch of such messages
//! into an `ExportTraceServiceRequest` without touching them again.
//!
//! The bytes decode to what [`super::TraceEncoder`] writes for the same span (the unit tests
//! compare the two), so a collector cannot tell which path made a span.

use std::borrow::Cow;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{InstrumentationScope, Value};
use opentelemetry_sdk::Resource;

use super::{
    len_field, opt_len_field, opt_varint_field, scalar_any_len, size_any, span_flags, span_kind,
    status_parts, trace_state, varint_len, write_kv, Lens, Out, ANY_BOOL, ANY_INT, ANY_STRING,
    KV_KEY, KV_VALUE, REQUEST_RESOURCE_SPANS, RESOURCE_SPANS_RESOURCE, RESOURCE_SPANS_SCHEMA_URL,
    RESOURCE_SPANS_SCOPE_SPANS, SCOPE_SPANS_SCHEMA_URL, SCOPE_SPANS_SCOPE, SCOPE_SPANS_SPANS,
    SPAN_ATTRIBUTES, SPAN_DROPPED_ATTRIBUTES, SPAN_END_TIME, SPAN_FLAGS, SPAN_KIND, SPAN_NAME,
    SPAN_PARENT_SPAN_ID, SPAN_SPAN_ID, SPAN_START_TIME, SPAN_STATUS, SPAN_TRACE_ID,
    SPAN_TRACE_STATE, STATUS_CODE, STATUS_MESSAGE,
};

/// Attributes a span keeps by default; later ones are counted in `dropped_attributes_count`.
/// The SDK's default span limit (`OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT` unset).
pub(crate) const MAX_ATTRIBUTES: u32 = crate::env::DEFAULT_SPAN_ATTRIBUTES;

/// Bytes a span's attribute buffer starts with: a proxy's SERVER span with its decisions fits.
pub(crate) const BODY_CAPACITY: usize = 1024;

/// Appends `value` as a protobuf varint.
#[inline]
fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a length-delimited field (a one-byte key, as every field written here has).
#[inline]
fn push_bytes_field(out: &mut Vec<u8>, key: u32, bytes: &[u8]) {
    out.push(key as u8);
    push_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[inline]
fn push_opt_bytes_field(out: &mut Vec<u8>, key: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        push_bytes_field(out, key, bytes);
    }
}

/// A span's attributes, encoded as they are set: each one a `Span.attributes` field
/// (`KeyValue`), in the order set, at most `limit` ([`MAX_ATTRIBUTES`] by default).
#[derive(Debug)]
pub(crate) struct SpanBody {
    bytes: Vec<u8>,
    count: u32,
    dropped: u32,
    limit: u32,
}

impl Default for SpanBody {
    fn default() -> Self {
        Self::new(BODY_CAPACITY, MAX_ATTRIBUTES)
    }
}

impl SpanBody {
    /// An empty body with room for `bytes` of attributes, keeping at most `limit` of them.
    pub(crate) fn new(bytes: usize, limit: u32) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            count: 0,
            dropped: 0,
            limit,
        }
    }

    /// Whether one more attribute fits; counts it either way.
    #[inline]
    fn admit(&mut self) -> bool {
        if self.count < self.limit {
            self.count += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// The `KeyValue` field's key and length, and the `KeyValue`'s key and value header, for a
    /// value whose `AnyValue` takes `any` bytes; the value is the caller's to write.
    #[inline]
    fn kv_head(&mut self, key: &str, any: usize) {
        let k = key.len();
        // The `KeyValue`'s length if every length in it takes one byte: key tag, length, key;
        // value tag, length, value.
        let kv = 2 + k + 2 + any;
        if kv < 0x80 && k != 0 {
            // Below 128 they all do (nearly every attribute): two fixed-size writes around
            // one copy of the key.
            self.bytes
                .extend_from_slice(&[SPAN_ATTRIBUTES as u8, kv as u8, KV_KEY as u8, k as u8]);
            self.bytes.extend_from_slice(key.as_bytes());
            self.bytes.extend_from_slice(&[KV_VALUE as u8, any as u8]);
            return;
        }
        let kv = opt_len_field(k) + len_field(any);
        self.bytes.reserve(len_field(kv));
        self.bytes.push(SPAN_ATTRIBUTES as u8);
        push_varint(&mut self.bytes, kv as u64);
        push_opt_bytes_field(&mut self.bytes, KV_KEY, key.as_bytes());
        self.bytes.push(KV_VALUE as u8);
        push_varint(&mut self.bytes, any as u64);
    }

    /// A string attribute.
    pub(crate) fn str(&mut self, key: &str, value: &str) {
        self.str_parts(key, &[value.as_bytes()]);
    }

    /// A string attribute whose value is `parts` one after the other (a URL from its pieces),
    /// without joining them first. Together they must be UTF-8 (the callers pass `str` bytes
    /// and ASCII digits).
    pub(crate) fn str_parts(&mut self, key: &str, parts: &[&[u8]]) {
        if !self.admit() {
            return;
        }
        let v: usize = parts.iter().map(|p| p.len()).sum();
        if v < 0x80 {
            self.kv_head(key, 2 + v);
            self.bytes.extend_from_slice(&[ANY_STRING as u8, v as u8]);
        } else {
            self.kv_head(key, len_field(v));
            self.bytes.push(ANY_STRING as u8);
            push_varint(&mut self.bytes, v as u64);
        }
        for part in parts {
            self.bytes.extend_from_slice(part);
        }
    }

    /// An integer attribute.
    pub(crate) fn i64(&mut self, key: &str, value: i64) {
        if self.admit() {
            let v = value as u64;
            if v < 0x80 {
                self.kv_head(key, 2);
                self.bytes.extend_from_slice(&[ANY_INT as u8, v as u8]);
            } else {
                self.kv_head(key, 1 + varint_len(v));
                self.bytes.push(ANY_INT as u8);
                push_varint(&mut self.bytes, v);
            }
        }
    }

    /// A boolean attribute.
    pub(crate) fn bool(&mut self, key: &str, value: bool) {
        if self.admit() {
            self.kv_head(key, 2);
            self.bytes.push(ANY_BOOL as u8);
            self.bytes.push(u8::from(value));
        }
    }

    /// An attribute of any value the SDK has (arrays, doubles too).
    pub(crate) fn value(&mut self, key: &str, value: &Value) {
        match value {
            Value::String(s) => self.str(key, s.as_str()),
            Value::I64(v) => self.i64(key, *v),
            Value::Bool(v) => self.bool(key, *v),
            _ => {
                if !self.admit() {
                    return;
                }
                // The general encoder's two passes, over this one attribute.
                let mut lens = Vec::new();
                let any = match scalar_any_len(value) {
                    Some(len) => len,
                    None => {
                        lens.push(0);
                        let len = size_any(value, &mut lens);
                        lens[0] = len as u32;
                        len
                    }
                };
                let kv = opt_len_field(key.len()) + len_field(any);
                let start = self.bytes.len();
                self.bytes.resize(start + len_field(kv), 0);
                let mut out = Out::new(&mut self.bytes[start..]);
                let mut cursor = Lens {
                    lens: &lens,
                    next: 0,
                };
                write_kv(&mut out, SPAN_ATTRIBUTES, key, value, &mut cursor);
                debug_assert_eq!(out.pos, len_field(kv));
            }
        }
    }

    /// The encoded attributes.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Attributes set so far, kept or dropped.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u32 {
        self.count + self.dropped
    }
}

/// What a span's message needs besides its attributes; written by [`SpanHead::finish`].
#[derive(Debug)]
pub(crate) struct SpanHead {
    pub(crate) context: SpanContext,
    /// `SpanId::INVALID` for a root span.
    pub(crate) parent_span_id: SpanId,
    pub(crate) parent_is_remote: bool,
    pub(crate) kind: SpanKind,
    pub(crate) name: Cow<'static, str>,
    /// Nanoseconds since the Unix epoch.
    pub(crate) start: u64,
    pub(crate) status: Status,
}

impl SpanHead {
    /// Appends the span as one `ScopeSpans.spans` field (key, length, `Span` message) to `out`.
    /// `false`, with `out` as it was, if the message did not come out at the length it
    /// declares (a bug): one bad span must not spoil the batch it would be sent in.
    pub(crate) fn finish(&self, body: &SpanBody, end: u64, out: &mut Vec<u8>) -> bool {
        let before = out.len();
        let state = trace_state(&self.context);
        let has_parent = self.parent_span_id != SpanId::INVALID;
        let (code, message) = status_parts(&self.status);
        let status_len = opt_len_field(message.len()) + if code == 0 { 0 } else { 2 };
        let len = len_field(16)
            + len_field(8)
            + opt_len_field(state.len())
            + if has_parent { len_field(8) } else { 0 }
            + opt_len_field(self.name.len())
            + 2 // kind: one-byte key, value below 128
            + if self.start == 0 { 0 } else { 9 }
            + if end == 0 { 0 } else { 9 }
            + body.bytes.len()
            + opt_varint_field(body.dropped)
            + len_field(status_len)
            + 6; // flags: a two-byte key and a fixed32
        out.reserve(len_field(len));
        out.push(SCOPE_SPANS_SPANS as u8);
        push_varint(out, len as u64);
        let start = out.len();
        push_bytes_field(out, SPAN_TRACE_ID, &self.context.trace_id().to_bytes());
        push_bytes_field(out, SPAN_SPAN_ID, &self.context.span_id().to_bytes());
        push_opt_bytes_field(out, SPAN_TRACE_STATE, state.as_bytes());
        if has_parent {
            push_bytes_field(out, SPAN_PARENT_SPAN_ID, &self.parent_span_id.to_bytes());
        }
        push_opt_bytes_field(out, SPAN_NAME, self.name.as_bytes());
        out.push(SPAN_KIND as u8);
        out.push(span_kind(&self.kind) as u8);
        if self.start != 0 {
            out.push(SPAN_START_TIME as u8);
            out.extend_from_slice(&self.start.to_le_bytes());
        }
        if end != 0 {
            out.push(SPAN_END_TIME as u8);
            out.extend_from_slice(&end.to_le_bytes());
        }
        out.extend_from_slice(&body.bytes);
        if body.dropped != 0 {
            out.push(SPAN_DROPPED_ATTRIBUTES as u8);
            push_varint(out, u64::from(body.dropped));
        }
        // Status is always present (the upstream transform always sets it), possibly empty.
        out.push(SPAN_STATUS as u8);
        push_varint(out, status_len as u64);
        push_opt_bytes_field(out, STATUS_MESSAGE, message.as_bytes());
        if code != 0 {
            out.push(STATUS_CODE as u8);
            out.push(code as u8);
        }
        // Field 16: key 0x85 0x01.
        push_varint(out, u64::from(SPAN_FLAGS));
        let flags = span_flags(self.parent_is_remote, self.context.trace_flags().to_u8());
        out.extend_from_slice(&flags.to_le_bytes());
        debug_assert_eq!(out.len() - start, len);
        if out.len() - start != len {
            out.truncate(before);
            return false;
        }
        true
    }
}

/// What surrounds a batch of encoded spans in an `ExportTraceServiceRequest`: the resource and
/// the instrumentation scope, encoded once.
#[derive(Debug, Clone)]
pub(crate) struct RequestFrame {
    /// The `Resource` message's body.
    resource: Vec<u8>,
    resource_schema_url: String,
    /// The `InstrumentationScope` message's body.
    scope: Vec<u8>,
    scope_schema_url: String,
}

impl RequestFrame {
    /// The frame for spans of `scope` from `resource`.
    pub(crate) fn new(resource: &Resource, scope: &InstrumentationScope) -> Self {
        let mut encoder = super::TraceEncoder::default();
        encoder.set_resource(resource);
        let mut lens = Vec::new();
        let scope_len = super::size_scope(scope, &mut lens);
        let mut scope_bytes = vec![0; len_field(scope_len)];
        let mut out = Out::new(&mut scope_bytes);
        let mut cursor = Lens {
            lens: &lens,
            next: 0,
        };
        super::write_scope(&mut out, scope, &mut cursor);
        // `write_scope` writes the field's key and length; keep the body only.
        let body_start = len_field(scope_len) - scope_len;
        Self {
            resource: encoder.resource,
            resource_schema_url: encoder.resource_schema_url,
            scope: scope_bytes[body_start..].to_vec(),
            scope_schema_url: scope.schema_url().unwrap_or_default().to_owned(),
        }
    }

    /// The request carrying `spans`: `ScopeSpans.spans` fields as [`SpanHead::finish`] wrote
    /// them, back to back.
    pub(crate) fn request(&self, spans: &[u8]) -> bytes::Bytes {
        let scope_spans =
            len_field(self.scope.len()) + spans.len() + opt_len_field(self.scope_schema_url.len());
        let resource_spans = len_field(self.resource.len())
            + len_field(scope_spans)
            + opt_len_field(self.resource_schema_url.len());
        let mut out = Vec::with_capacity(len_field(resource_spans));
        out.push(REQUEST_RESOURCE_SPANS as u8);
        push_varint(&mut out, resource_spans as u64);
        push_bytes_field(&mut out, RESOURCE_SPANS_RESOURCE, &self.resource);
        out.push(RESOURCE_SPANS_SCOPE_SPANS as u8);
        push_varint(&mut out, scope_spans as u64);
        push_bytes_field(&mut out, SCOPE_SPANS_SCOPE, &self.scope);
        out.extend_from_slice(spans);
        push_opt_bytes_field(
            &mut out,
            SCOPE_SPANS_SCHEMA_URL,
            self.scope_schema_url.as_bytes(),
        );
        push_opt_bytes_field(
            &mut out,
            RESOURCE_SPANS_SCHEMA_URL,
            self.resource_schema_url.as_bytes(),
        );
        debug_assert_eq!(out.len(), len_field(resource_spans));
        bytes::Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use opentelemetry::trace::{SpanId, SpanKind, Status, TraceFlags, TraceState};
    use opentelemetry::{InstrumentationScope, KeyValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use opentelemetry_sdk::Resource;
    use prost::Message as _;

    use super::super::tests::{at, context, every_value_kind};
    use super::super::TraceEncoder;
    use super::*;

    fn scope() -> InstrumentationScope {
        InstrumentationScope::builder("observability")
            .with_version("0.1.0")
            .with_schema_url("https://opentelemetry.io/schemas/1.42.0")
            .build()
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "gateway"),
                KeyValue::new("service.instance.id", "0f8e4b7a"),
            ])
            .with_schema_url([], "https://opentelemetry.io/schemas/1.42.0")
            .build()
    }

    /// A span both ways: as the SDK's `SpanData` and as recorded here.
    fn both(
        data: SpanData,
        record: impl FnOnce(&mut SpanBody),
    ) -> (SpanData, SpanHead, SpanBody, u64) {
        let head = SpanHead {
            context: data.span_context.clone(),
            parent_span_id: data.parent_span_id,
            parent_is_remote: data.parent_span_is_remote,
            kind: data.span_kind.clone(),
            name: data.name.clone(),
            start: nanos(data.start_time),
            status: data.status.clone(),
        };
        let mut body = SpanBody::default();
        record(&mut body);
        let end = nanos(data.end_time);
        (data, head, body, end)
    }

    fn nanos(time: std::time::SystemTime) -> u64 {
        super::super::nanos(time)
    }

    /// A sampled span of one trace with these ids and kind, no attributes, status unset.
    fn span_data(
        span: u64,
        parent: u64,
        remote: bool,
        kind: SpanKind,
        name: &'static str,
    ) -> SpanData {
        let state = if remote {
            TraceState::from_key_value([("vendor", "x1")]).unwrap()
        } else {
            TraceState::default()
        };
        SpanData {
            span_context: context(
                0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
                span,
                TraceFlags::SAMPLED,
                false,
                state,
            ),
            parent_span_id: SpanId::from(parent),
            parent_span_is_remote: remote,
            span_kind: kind,
            name: Cow::Borrowed(name),
            start_time: at(1_000 + span),
            end_time: at(2_000_000_000_000 + span),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope(),
        }
    }

    /// What a collector decodes from spans recorded here is what it decodes from the SDK's
    /// `SpanData` of the same spans through [`TraceEncoder`]: every value kind, every status,
    /// roots and children, trace state, dropped attributes, a resource and a scope.
    #[test]
    fn recorded_spans_decode_to_what_the_batch_encoder_writes() {
        let limit = MAX_ATTRIBUTES as usize;
        let many: Vec<KeyValue> = (0..limit + 3)
            .map(|i| KeyValue::new("n", i as i64))
            .collect();
        let long = "x".repeat(200);
        let cases = vec![
            both(
                SpanData {
                    attributes: every_value_kind(),
                    status: Status::error("upstream timed out"),
                    ..span_data(0x11, 0x99, true, SpanKind::Server, "GET /orders/{id}")
                },
                |body| {
                    for kv in every_value_kind() {
                        body.value(kv.key.as_str(), &kv.value);
                    }
                },
            ),
            both(
                SpanData {
                    attributes: vec![
                        KeyValue::new("http.request.method", "GET"),
                        KeyValue::new("server.port", 8080_i64),
                        KeyValue::new("small", 5_i64),
                        KeyValue::new("negative", -3_i64),
                        KeyValue::new("flag", true),
                        KeyValue::new("", ""),
                        KeyValue::new("long.value", long.clone()),
                        KeyValue::new(long.clone(), "long key"),
                        KeyValue::new("url.full", "http://10.0.0.7:9000/orders/42"),
                    ],
                    status: Status::Ok,
                    ..span_data(0x21, 0x11, false, SpanKind::Client, "GET")
                },
                |body| {
                    body.str("http.request.method", "GET");
                    body.i64("server.port", 8080);
                    body.i64("small", 5);
                    body.i64("negative", -3);
                    body.bool("flag", true);
                    body.str("", "");
                    body.str("long.value", &long);
                    body.str(&long, "long key");
                    body.str_parts(
                        "url.full",
                        &[b"http", b"://", b"10.0.0.7", b":", b"9000", b"/orders/42"],
                    );
                },
            ),
            both(
                SpanData {
                    attributes: many[..limit].to_vec(),
                    dropped_attributes_count: 3,
                    ..span_data(0x31, 0, false, SpanKind::Server, "")
                },
                |body| {
                    for kv in &many {
                        body.value(kv.key.as_str(), &kv.value);
                    }
                },
            ),
        ];
        // One resource for both: its attributes' order is its own.
        let resource = resource();
        let mut encoder = TraceEncoder::new(&resource);
        let data: Vec<SpanData> = cases.iter().map(|(d, ..)| d.clone()).collect();
        let expected = ExportTraceServiceRequest::decode(encoder.encode(&data)).unwrap();

        let frame = RequestFrame::new(&resource, &scope());
        let mut spans = Vec::new();
        for (_, head, body, end) in &cases {
            assert!(head.finish(body, *end, &mut spans));
        }
        let got = ExportTraceServiceRequest::decode(frame.request(&spans)).unwrap();
        assert_eq!(got, expected);
        assert_eq!(
            got.resource_spans[0].scope_spans[0].spans[2].dropped_attributes_count,
            3
        );
    }

    #[test]
    fn an_empty_batch_is_a_request_with_the_resource_and_scope_only() {
        let resource = resource();
        let frame = RequestFrame::new(&resource, &scope());
        let got = ExportTraceServiceRequest::decode(frame.request(&[])).unwrap();
        let mut encoder = TraceEncoder::new(&resource);
        let one = span_data(1, 0, false, SpanKind::Server, "x");
        let mut expected = ExportTraceServiceRequest::decode(encoder.encode(&[one])).unwrap();
        expected.resource_spans[0].scope_spans[0].spans.clear();
        assert_eq!(got, expected);
    }

    /// Byte for byte what the batch encoder writes, at every length where a varint grows
    /// (127/128 for the value, the key and the whole `KeyValue`, and 16383/16384).
    #[test]
    fn attributes_at_varint_boundaries_are_written_as_the_batch_encoder_writes_them() {
        let resource = resource();
        let frame = RequestFrame::new(&resource, &scope());
        let mut encoder = TraceEncoder::new(&resource);
        let lengths: Vec<usize> = [0, 1, 60, 200, 255, 16383, 16384, 20000]
            .into_iter()
            .chain(115..=130)
            .collect();
        for &k in &lengths {
            for &v in &lengths {
                let (key, value) = ("k".repeat(k), "v".repeat(v));
                let data = SpanData {
                    attributes: vec![
                        KeyValue::new(key.clone(), value.clone()),
                        KeyValue::new(key.clone(), v as i64),
                        KeyValue::new(key.clone(), -(v as i64)),
                    ],
                    ..span_data(1, 0, false, SpanKind::Server, "x")
                };
                let expected = encoder.encode(std::slice::from_ref(&data));
                let (_, head, body, end) = both(data, |body| {
                    body.str(&key, &value);
                    body.i64(&key, v as i64);
                    body.i64(&key, -(v as i64));
                });
                let mut spans = Vec::new();
                assert!(head.finish(&body, end, &mut spans));
                assert_eq!(
                    frame.request(&spans),
                    expected,
                    "key {k} bytes, value {v} bytes"
                );
            }
        }
    }
}
