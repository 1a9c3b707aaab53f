//! The encoder's bytes, decoded, equal what the upstream prost transform builds.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use opentelemetry_sdk::Resource;
use prost::Message as _;

use super::TraceEncoder;

pub(crate) fn at(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

pub(crate) fn every_value_kind() -> Vec<KeyValue> {
    vec![
        KeyValue::new("str", "value"),
        KeyValue::new("str.empty", ""),
        KeyValue::new("str.owned", String::from("ünïcödé")),
        KeyValue::new("bool.true", true),
        KeyValue::new("bool.false", false),
        KeyValue::new("int", 42_i64),
        KeyValue::new("int.zero", 0_i64),
        KeyValue::new("int.negative", -1_i64),
        KeyValue::new("int.max", i64::MAX),
        KeyValue::new("double", 1.5_f64),
        KeyValue::new("double.zero", 0.0_f64),
        KeyValue::new("double.negative", -2.25e300_f64),
        KeyValue::new("array.bool", Value::Array(Array::Bool(vec![true, false]))),
        KeyValue::new("array.int", Value::Array(Array::I64(vec![0, -7, 300]))),
        KeyValue::new("array.double", Value::Array(Array::F64(vec![0.0, 3.5]))),
        KeyValue::new(
            "array.string",
            Value::Array(Array::String(vec![
                StringValue::from("a"),
                StringValue::from(""),
                StringValue::from("long ".repeat(40)),
            ])),
        ),
        KeyValue::new("array.empty", Value::Array(Array::I64(vec![]))),
        KeyValue::new("", "empty key"),
    ]
}

pub(crate) fn context(
    trace: u128,
    span: u64,
    flags: TraceFlags,
    remote: bool,
    state: TraceState,
) -> SpanContext {
    SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        flags,
        remote,
        state,
    )
}

fn batch() -> Vec<SpanData> {
    let ours = InstrumentationScope::builder("observability")
        .with_version("0.1.0")
        .with_schema_url("https://opentelemetry.io/schemas/1.42.0")
        .build();
    let other = InstrumentationScope::builder("other")
        .with_attributes([KeyValue::new("scope.attr", 7_i64)])
        .build();
    let state = TraceState::from_key_value([("vendor", "x1"), ("other", "y")]).unwrap();

    let mut events = SpanEvents::default();
    events.events = vec![
        Event::new("exception", at(1_500), every_value_kind(), 2),
        Event::new("", at(0), vec![], 0),
    ];
    events.dropped_count = 3;
    let mut links = SpanLinks::default();
    links.links = vec![
        Link::new(
            context(0xabc, 0xdef, TraceFlags::SAMPLED, true, state.clone()),
            vec![KeyValue::new("link.attr", "v")],
            1,
        ),
        Link::new(
            context(1, 2, TraceFlags::default(), false, TraceState::default()),
            vec![],
            0,
        ),
    ];
    links.dropped_count = 4;

    let server = SpanData {
        span_context: context(
            0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            0x1112_1314_1516_1718,
            TraceFlags::SAMPLED,
            false,
            state,
        ),
        parent_span_id: SpanId::from(0x99),
        parent_span_is_remote: true,
        span_kind: SpanKind::Server,
        name: Cow::Borrowed("GET /api/orders/{id}"),
        start_time: at(1_000),
        end_time: at(2_000_000_000_000),
        attributes: every_value_kind(),
        dropped_attributes_count: 5,
        events,
        links,
        status: Status::error("upstream timed out"),
        instrumentation_scope: ours.clone(),
    };
    let client = SpanData {
        span_context: context(
            0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            0x21,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::from(0x1112_1314_1516_1718),
        parent_span_is_remote: false,
        span_kind: SpanKind::Client,
        name: Cow::Owned("GET".to_owned()),
        start_time: at(1_100),
        end_time: at(1_900),
        attributes: vec![KeyValue::new("http.response.status_code", 200_i64)],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Ok,
        instrumentation_scope: ours,
    };
    // No parent, no name, times before the epoch, unset status, another scope.
    let root = SpanData {
        span_context: context(7, 8, TraceFlags::default(), false, TraceState::default()),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: Cow::Borrowed(""),
        start_time: UNIX_EPOCH - Duration::from_secs(1),
        end_time: UNIX_EPOCH,
        attributes: vec![],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: other.clone(),
    };
    let producer = SpanData {
        span_kind: SpanKind::Producer,
        instrumentation_scope: other,
        ..client.clone()
    };
    let consumer = SpanData {
        span_kind: SpanKind::Consumer,
        status: Status::error(""),
        ..client.clone()
    };
    vec![server, root, client, producer, consumer]
}

fn resource() -> Resource {
    Resource::builder_empty()
        .with_schema_url(
            [
                KeyValue::new("service.name", "gateway"),
                KeyValue::new("replicas", 3_i64),
            ],
            "https://opentelemetry.io/schemas/1.42.0",
        )
        .with_attribute(KeyValue::new("deployment.environment.name", "test"))
        .build()
}

fn upstream(spans: Vec<SpanData>, resource: &Resource) -> ExportTraceServiceRequest {
    let resource = ResourceAttributesWithSchema::from(resource);
    ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(spans, &resource),
    }
}

#[test]
fn a_varied_batch_decodes_to_what_the_upstream_transform_builds() {
    let resource = resource();
    let spans = batch();
    let mut encoder = TraceEncoder::new(&resource);
    let bytes = encoder.encode(&spans);
    let decoded = ExportTraceServiceRequest::decode(bytes.as_ref()).expect("valid protobuf");
    let expected = upstream(spans, &resource);
    assert_eq!(decoded.resource_spans[0].scope_spans.len(), 2);
    assert_eq!(decoded, expected);
}

#[test]
fn the_encoder_is_reused_across_batches_and_resources() {
    let resource = resource();
    let mut encoder = TraceEncoder::new(&Resource::builder_empty().build());
    let spans = batch();
    // A batch held elsewhere keeps its bytes while the next one is encoded.
    let first = encoder.encode(&spans[..2]);
    encoder.set_resource(&resource);
    let second = encoder.encode(&spans);
    let third = encoder.encode(&spans[2..]);
    assert_eq!(
        ExportTraceServiceRequest::decode(first.as_ref()).unwrap(),
        upstream(spans[..2].to_vec(), &Resource::builder_empty().build())
    );
    assert_eq!(
        ExportTraceServiceRequest::decode(second.as_ref()).unwrap(),
        upstream(spans.clone(), &resource)
    );
    assert_eq!(
        ExportTraceServiceRequest::decode(third.as_ref()).unwrap(),
        upstream(spans[2..].to_vec(), &resource)
    );
}

#[test]
fn an_empty_batch_is_one_resource_with_no_scopes() {
    let resource = resource();
    let bytes = TraceEncoder::new(&resource).encode(&[]);
    assert_eq!(
        ExportTraceServiceRequest::decode(bytes.as_ref()).unwrap(),
        upstream(vec![], &resource)
    );
}

#[test]
fn the_encoded_length_is_what_prost_computes() {
    // Same fields, same sizes: a check that no field is written twice or padded.
    let resource = resource();
    let spans = batch();
    let bytes = TraceEncoder::new(&resource).encode(&spans);
    assert_eq!(bytes.len(), upstream(spans, &resource).encoded_len());
}
