use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumeLabels {
    pub consumer: String,
    pub outcome: &'static str,
}

/// Counters for the relay and consumers. Cheap to clone; clones share values.
#[derive(Debug, Clone, Default)]
pub struct MessagingMetrics {
    /// `shop_messages_published_total{outcome=confirmed|returned|nacked}`
    pub published: Family<PublishLabels, Counter>,
    /// `shop_messages_consumed_total{consumer,outcome=processed|duplicate|retried|dead_lettered}`
    pub consumed: Family<ConsumeLabels, Counter>,
    /// `shop_broker_reconnects_total`
    pub reconnects: Counter,
}

impl MessagingMetrics {
    pub fn register(&self, registry: &mut Registry) {
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
