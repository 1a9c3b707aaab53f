//! Through a real RabbitMQ: a CONSUMER span's parent is the PRODUCER span and it links to it;
//! the outbox relay continues the trace stored with the row.
//!
//! Needs the broker at `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`); fails, never
//! skips, when it is not there. Exchange and queue names are unique per run.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use observability::amqp::{self, Delivery};
use observability::propagation;
use test_support::{AttrValue, OtlpReceiver, ReceivedSpan, SpanKind};
use tracing::Instrument as _;

async fn publish(
    channel: &Channel,
    span: tracing::Span,
    exchange: &str,
    routing_key: &str,
    id: &str,
) {
    let properties = BasicProperties::default()
        .with_message_id(id.into())
        .with_headers(amqp::headers_for(&span, FieldTable::default()));
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            b"{}",
            properties,
        )
        .instrument(span)
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn the_trace_crosses_the_broker_and_the_outbox() {
    let url = test_support::amqp_url();
    test_support::require_rabbitmq(&url).unwrap_or_else(|e| panic!("{e}"));

    let receiver = OtlpReceiver::start();
    let env = HashMap::from([(
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
        receiver.grpc_endpoint(),
    )]);
    let (telemetry, dispatch) = observability::build("saga", "1", &env, std::io::sink).unwrap();
    let _default = tracing::dispatcher::set_default(&dispatch);

    let exchange = test_support::unique_name("obs-test-x");
    let queue = test_support::unique_name("obs-test-q");
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "obs-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // 1. A request publishes an event.
    let request = tracing::info_span!("POST /orders");
    let publish_span =
        request.in_scope(|| amqp::publish_span(&exchange, "order.placed", Some("msg-1")));
    publish(&channel, publish_span, &exchange, "order.placed", "msg-1").await;
    drop(request);

    // 2. A consumer handles it and writes an outbox row carrying its trace context.
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let process = amqp::process_span(&Delivery::from_lapin(&queue, &delivery));
    let outbox_row_trace: BTreeMap<String, String> =
        process.in_scope(|| propagation::to_carrier(&propagation::current_context()));
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .instrument(process.clone())
        .await
        .unwrap();
    drop(process);
    assert!(outbox_row_trace.contains_key("traceparent"));

    // 3. Later, with no span around, the relay publishes the row, continuing the stored trace.
    let relay_span = amqp::publish_span_with_parent(
        &propagation::from_carrier(&outbox_row_trace),
        &exchange,
        "payment.requested",
        Some("msg-2"),
    );
    publish(
        &channel,
        relay_span,
        &exchange,
        "payment.requested",
        "msg-2",
    )
    .await;

    // 4. The next consumer down the saga.
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // … whose handler fails.
    let failed = amqp::process_span(&Delivery::from_lapin(&queue, &delivery));
    amqp::record_error(&failed, "handler");
    drop(failed);
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();

    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    connection.close(200, "done".into()).await.unwrap();

    telemetry.force_flush();
    let spans = receiver
        .wait_for(
            |s| {
                s.iter()
                    .filter(|s| matches!(s.kind(), SpanKind::Producer | SpanKind::Consumer))
                    .count()
                    >= 4
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let one = |kind: SpanKind, routing_key: &str| -> ReceivedSpan {
        spans
            .iter()
            .find(|s| {
                s.kind() == kind
                    && s.attr_str("messaging.rabbitmq.destination.routing_key")
                        .as_deref()
                        == Some(routing_key)
            })
            .unwrap_or_else(|| panic!("no {kind:?} span for {routing_key}"))
            .clone()
    };
    let request = spans.iter().find(|s| s.name() == "POST /orders").unwrap();
    let placed = one(SpanKind::Producer, "order.placed");
    let handled = one(SpanKind::Consumer, "order.placed");
    let relayed = one(SpanKind::Producer, "payment.requested");
    let paid = one(SpanKind::Consumer, "payment.requested");

    // One trace, with the right edges.
    for span in [&placed, &handled, &relayed, &paid] {
        assert_eq!(span.trace_id(), request.trace_id(), "{}", span.name());
    }
    assert_eq!(placed.parent_span_id(), Some(request.span_id()));
    assert_eq!(handled.parent_span_id(), Some(placed.span_id()));
    assert_eq!(handled.links(), vec![(placed.trace_id(), placed.span_id())]);
    assert_eq!(relayed.parent_span_id(), Some(handled.span_id()));
    assert_eq!(paid.parent_span_id(), Some(relayed.span_id()));
    assert_eq!(paid.links(), vec![(relayed.trace_id(), relayed.span_id())]);
    assert!(paid.is_error());
    assert_eq!(paid.attr_str("error.type").as_deref(), Some("handler"));
    assert!(!handled.is_error());
    assert_eq!(handled.attr("error.type"), None);

    // Names and attributes per the messaging conventions.
    assert_eq!(placed.name(), format!("publish {exchange}"));
    assert_eq!(handled.name(), format!("process {queue}"));
    for (key, value) in [
        ("messaging.system", "rabbitmq"),
        ("messaging.operation.type", "send"),
        ("messaging.operation.name", "publish"),
        ("messaging.message.id", "msg-1"),
    ] {
        assert_eq!(
            placed.attr(key),
            Some(AttrValue::Str(value.into())),
            "{key}"
        );
    }
    assert_eq!(
        placed.attr_str("messaging.destination.name").as_deref(),
        Some(exchange.as_str())
    );
    for (key, value) in [
        ("messaging.system", "rabbitmq"),
        ("messaging.operation.type", "process"),
        ("messaging.message.id", "msg-1"),
    ] {
        assert_eq!(
            handled.attr(key),
            Some(AttrValue::Str(value.into())),
            "{key}"
        );
    }
    assert_eq!(
        handled
            .attr_str("messaging.destination.subscription.name")
            .as_deref(),
        Some(queue.as_str())
    );
    assert!(
        matches!(handled.attr("messaging.rabbitmq.message.delivery_tag"), Some(AttrValue::Int(t)) if t > 0)
    );

    drop(_default);
    telemetry.shutdown();
}
