use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

use observability::metrics::{duration_family, trace_exemplar, DurationFamily, TraceExemplar};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumeLabels {
    pub consumer: String,
    pub outcome: &'static str,
}

/// Counters, durations and the outbox backlog for the relay and consumers. Cheap to clone;
/// clones share values.
#[derive(Debug, Clone)]
pub struct MessagingMetrics {
    /// `messaging_client_operation_duration_seconds{outcome}`: publish to broker confirm, per
    /// message, with the producer span's trace as exemplar.
    pub publish_duration: DurationFamily<PublishLabels>,
    /// `messaging_process_duration_seconds{consumer,outcome}`: from receipt to settlement, per
    /// delivery, with the consumer span's trace as exemplar.
    pub process_duration: DurationFamily<ConsumeLabels>,
    /// `shop_outbox_backlog`: outbox rows not yet confirmed by the broker.
    pub outbox_backlog: Gauge,
    /// `shop_messages_published_total{outcome=confirmed|returned|nacked|refused}` (refused: the
    /// broker's permissions do not let this service publish that routing key)
    pub published: Family<PublishLabels, Counter>,
    /// `shop_messages_consumed_total{consumer,outcome=processed|duplicate|retried|dead_lettered|forged}`
    pub consumed: Family<ConsumeLabels, Counter>,
    /// `shop_broker_reconnects_total`
    pub reconnects: Counter,
}

impl MessagingMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "messaging_client_operation_duration",
            "Publish to broker confirm, per message (semconv messaging.client.operation.duration)",
            Unit::Seconds,
            self.publish_duration.clone(),
        );
        registry.register_with_unit(
            "messaging_process_duration",
            "Receipt to settlement, per delivery (semconv messaging.process.duration)",
            Unit::Seconds,
            self.process_duration.clone(),
        );
        registry.register(
            "shop_outbox_backlog",
            "Outbox rows not yet confirmed by the broker",
            self.outbox_backlog.clone(),
        );
        registry.register(
            "shop_messages_published",
            "Outbox rows published, by broker outcome",
            self.published.clone(),
        );
        registry.register(
            "shop_messages_consumed",
            "Deliveries handled, by outcome",
            self.consumed.clone(),
        );
        registry.register(
            "shop_broker_reconnects",
            "Times a relay or consumer reconnected to the broker",
            self.reconnects.clone(),
        );
    }

    /// Records how long one publish took; `exemplar` is its producer span's trace.
    pub(crate) fn publish_took(
        &self,
        outcome: &'static str,
        took: Duration,
        exemplar: Option<TraceExemplar>,
    ) {
        self.publish_duration
            .get_or_create(&PublishLabels { outcome })
            .observe(took.as_secs_f64(), exemplar, None);
    }

    /// Records how long one delivery took, inside its consumer span (the exemplar).
    pub(crate) fn process_took(&self, consumer: &str, outcome: &'static str, took: Duration) {
        self.process_duration
            .get_or_create(&ConsumeLabels {
                consumer: consumer.to_owned(),
                outcome,
            })
            .observe(took.as_secs_f64(), trace_exemplar(), None);
    }

    pub(crate) fn published(&self, outcome: &'static str) {
        self.published
            .get_or_create(&PublishLabels { outcome })
            .inc();
    }

    pub(crate) fn consumed(&self, consumer: &str, outcome: &'static str) {
        self.consumed
            .get_or_create(&ConsumeLabels {
                consumer: consumer.to_owned(),
                outcome,
            })
            .inc();
    }
}

impl Default for MessagingMetrics {
    fn default() -> Self {
        MessagingMetrics {
            publish_duration: duration_family(),
            process_duration: duration_family(),
            outbox_backlog: Gauge::default(),
            published: Family::default(),
            consumed: Family::default(),
            reconnects: Counter::default(),
        }
    }
}
