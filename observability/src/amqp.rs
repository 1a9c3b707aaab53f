//! RabbitMQ (lapin) tracing: context in AMQP headers, PRODUCER and CONSUMER spans.
//!
//! Publishing:
//!
//! ```no_run
//! # async fn publish(channel: lapin::Channel, body: &[u8]) -> lapin::Result<()> {
//! use lapin::{options::BasicPublishOptions, types::FieldTable, BasicProperties};
//! use tracing::Instrument as _;
//!
//! let span = observability::amqp::publish_span("orders", "order.placed", Some("msg-1"));
//! let headers = observability::amqp::headers_for(&span, FieldTable::default());
//! let properties = BasicProperties::default().with_headers(headers).with_message_id("msg-1".into());
//! channel
//!     .basic_publish("orders".into(), "order.placed".into(), BasicPublishOptions::default(), body, properties)
//!     .instrument(span)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The outbox relay runs long after the request's span ended: it stores
//! `propagation::to_carrier(&propagation::current_context())` with the row and publishes with
//! [`publish_span_with_parent`]`(&propagation::from_carrier(&row.trace), …)`.
//!
//! Consuming: wrap the handling of each delivery in [`process_span`]`(&Delivery::from_lapin(queue, &delivery))`.
//!
//! The CONSUMER span's parent is the producer's context *and* it links to it. The parent makes the
//! whole saga one trace in Jaeger; the link keeps the asynchronous hop explicit for tools that
//! follow links (and is what the messaging conventions recommend for batch receives).

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::Context;
use opentelemetry_semantic_conventions::attribute as semconv;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::propagation;

/// `messaging.system`.
pub const SYSTEM: &str = "rabbitmq";

/// How the default exchange (`""`) is named in span names, per the conventions.
const DEFAULT_EXCHANGE: &str = "amq.default";

/// Writes `cx` (`traceparent`, `tracestate`, `baggage`) into AMQP message headers as long strings,
/// replacing values already there.
pub fn inject(cx: &Context, headers: &mut FieldTable) {
    for (key, value) in propagation::to_carrier(cx) {
        headers.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
}

/// The context a producer wrote into `headers`; empty when there is none.
pub fn extract(headers: &FieldTable) -> Context {
    let carrier = headers
        .inner()
        .iter()
        .filter_map(|(key, value)| {
            let text = match value {
                AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.to_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_owned(),
                _ => return None,
            };
            Some((key.as_str().to_ascii_lowercase(), text))
        })
        .collect();
    propagation::from_carrier(&carrier)
}

/// `headers` with the context of `span` injected: what to publish with.
pub fn headers_for(span: &tracing::Span, mut headers: FieldTable) -> FieldTable {
    inject(&span.context(), &mut headers);
    headers
}

/// A PRODUCER span `publish <exchange>`, child of the current span.
pub fn publish_span(exchange: &str, routing_key: &str, message_id: Option<&str>) -> tracing::Span {
    publish_span_with_parent(
        &propagation::current_context(),
        exchange,
        routing_key,
        message_id,
    )
}

/// A PRODUCER span `publish <exchange>` whose parent is `parent` — for the outbox relay, which
/// continues the trace stored with the row rather than its own.
pub fn publish_span_with_parent(
    parent: &Context,
    exchange: &str,
    routing_key: &str,
    message_id: Option<&str>,
) -> tracing::Span {
    let name = if exchange.is_empty() {
        DEFAULT_EXCHANGE
    } else {
        exchange
    };
    let span = tracing::info_span!(
        target: "observability::amqp",
        parent: None,
        "publish",
        otel.name = %format!("publish {name}"),
        otel.kind = "producer",
        otel.status_code = Empty,
        { semconv::MESSAGING_SYSTEM } = SYSTEM,
        { semconv::MESSAGING_OPERATION_NAME } = "publish",
        // Semantic conventions 1.42 call this operation type `send` (formerly `publish`).
        { semconv::MESSAGING_OPERATION_TYPE } = "send",
        { semconv::MESSAGING_DESTINATION_NAME } = exchange,
        { semconv::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY } = routing_key,
        { semconv::MESSAGING_MESSAGE_ID } = message_id,
        { semconv::ERROR_TYPE } = Empty,
    );
    let _ = span.set_parent(parent.clone());
    span
}

/// What a CONSUMER span is created from.
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    /// The queue the delivery came from.
    pub queue: &'a str,
    /// The exchange it was published to (`""` for the default exchange).
    pub exchange: &'a str,
    /// `messaging.rabbitmq.destination.routing_key`.
    pub routing_key: &'a str,
    /// The `message_id` property, if the producer set one.
    pub message_id: Option<&'a str>,
    /// `messaging.rabbitmq.message.delivery_tag`.
    pub delivery_tag: u64,
    /// The message headers, where the producer's trace context is.
    pub headers: Option<&'a FieldTable>,
}

impl<'a> Delivery<'a> {
    /// Reads everything from a lapin delivery.
    pub fn from_lapin(queue: &'a str, delivery: &'a lapin::message::Delivery) -> Self {
        Self {
            queue,
            exchange: delivery.exchange.as_str(),
            routing_key: delivery.routing_key.as_str(),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(ShortString::as_str),
            delivery_tag: delivery.delivery_tag,
            headers: delivery.properties.headers().as_ref(),
        }
    }
}

/// A CONSUMER span `process <queue>` for one delivery.
///
/// Its parent is the producer's context from the headers, and it also links to it. Without
/// context in the headers it starts a new trace (no link).
pub fn process_span(delivery: &Delivery<'_>) -> tracing::Span {
    let producer = delivery.headers.map(extract).unwrap_or_default();
    let span = tracing::info_span!(
        target: "observability::amqp",
        parent: None,
        "process",
        otel.name = %format!("process {}", delivery.queue),
        otel.kind = "consumer",
        otel.status_code = Empty,
        { semconv::MESSAGING_SYSTEM } = SYSTEM,
        { semconv::MESSAGING_OPERATION_NAME } = "process",
        { semconv::MESSAGING_OPERATION_TYPE } = "process",
        { semconv::MESSAGING_DESTINATION_NAME } = delivery.exchange,
        { semconv::MESSAGING_DESTINATION_SUBSCRIPTION_NAME } = delivery.queue,
        { semconv::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY } = delivery.routing_key,
        { semconv::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG } = delivery.delivery_tag as i64,
        { semconv::MESSAGING_MESSAGE_ID } = delivery.message_id,
        { semconv::ERROR_TYPE } = Empty,
    );
    let producer_span = producer.span().span_context().clone();
    let _ = span.set_parent(producer);
    if producer_span.is_valid() {
        span.add_link(producer_span);
    }
    span
}

/// Marks a PRODUCER or CONSUMER span failed with `error_type` (`nack`, `timeout`, `handler`, …).
pub fn record_error(span: &tracing::Span, error_type: &str) {
    span.record(semconv::ERROR_TYPE, error_type);
    span.set_status(opentelemetry::trace::Status::error(error_type.to_owned()));
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    #[test]
    fn headers_round_trip_and_keep_other_entries() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let mut headers = FieldTable::default();
        headers.insert("x-retry".into(), AMQPValue::LongLongInt(2));
        inject(
            &Context::new().with_remote_span_context(sc.clone()),
            &mut headers,
        );
        assert!(headers.contains_key("traceparent"));
        assert!(headers.contains_key("x-retry"));

        let back = extract(&headers);
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());
        assert_eq!(back.span().span_context().span_id(), sc.span_id());
    }

    #[test]
    fn short_string_headers_are_read_too() {
        let mut headers = FieldTable::default();
        headers.insert(
            "Traceparent".into(),
            AMQPValue::ShortString(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            ),
        );
        assert!(extract(&headers).span().span_context().is_valid());
        assert!(!extract(&FieldTable::default())
            .span()
            .span_context()
            .is_valid());
    }
}
