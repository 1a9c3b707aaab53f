//! Every seam where trace context crosses a process boundary, in one place.
//!
//! Today the context is kept as data: HTTP `traceparent`/`tracestate`/`baggage` headers are read
//! into a [`TraceContext`], stored on the outbox row, copied into the AMQP headers by the relay
//! and read back by the consumer, which hands it to the handler so the events it emits continue
//! the same trace. Wiring OpenTelemetry in means changing only the functions below
//! (`from_current_span`, `producer_span`, `consumer_span`).

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// W3C trace context (plus baggage) as it travels between services.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub baggage: Option<String>,
}

const KEYS: [&str; 3] = ["traceparent", "tracestate", "baggage"];

impl TraceContext {
    /// Reads the context from any header-like lookup (HTTP headers, env, ...).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let traceparent = get("traceparent").filter(|v| is_valid_traceparent(v));
        Self {
            // A tracestate without a valid parent is meaningless (W3C trace-context §3.3).
            tracestate: traceparent.as_ref().and_then(|_| get("tracestate")),
            baggage: get("baggage"),
            traceparent,
        }
    }

    /// The context of the current span. Without an OpenTelemetry layer there is none.
    pub fn from_current_span() -> Self {
        Self::default()
    }

    /// AMQP headers carrying this context.
    pub fn to_amqp_headers(&self) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in KEYS
            .iter()
            .zip([&self.traceparent, &self.tracestate, &self.baggage])
        {
            if let Some(v) = value {
                table.insert(
                    ShortString::from(*key),
                    AMQPValue::LongString(LongString::from(v.as_str())),
                );
            }
        }
        table
    }

    /// Reads the context from AMQP headers; missing or malformed values are dropped.
    pub fn from_amqp_headers(headers: Option<&FieldTable>) -> Self {
        let map: BTreeMap<String, String> = headers
            .map(|t| {
                t.inner()
                    .iter()
                    .filter_map(|(k, v)| match v {
                        AMQPValue::LongString(s) => Some((
                            k.as_str().to_owned(),
                            String::from_utf8_lossy(s.as_bytes()).into_owned(),
                        )),
                        AMQPValue::ShortString(s) => {
                            Some((k.as_str().to_owned(), s.as_str().to_owned()))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self::from_lookup(|k| map.get(k).cloned())
    }

    /// The trace id part of `traceparent`, for logs.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent
            .as_deref()
            .and_then(|t| t.split('-').nth(1))
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>` with non-zero ids.
fn is_valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

/// Span around one publish (PRODUCER). The stored context is recorded as a field.
pub fn producer_span(routing_key: &str, event_id: &str, ctx: &TraceContext) -> tracing::Span {
    tracing::info_span!(
        "publish",
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.destination.name = routing_key,
        messaging.message.id = event_id,
        trace_id = ctx.trace_id().unwrap_or(""),
    )
}

/// Span around one delivery (CONSUMER), continuing the producer's context.
pub fn consumer_span(
    consumer: &str,
    routing_key: &str,
    message_id: &str,
    ctx: &TraceContext,
) -> tracing::Span {
    tracing::info_span!(
        "process",
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.consumer.group.name = consumer,
        messaging.destination.name = routing_key,
        messaging.message.id = message_id,
        trace_id = ctx.trace_id().unwrap_or(""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn survives_the_amqp_round_trip() {
        let ctx = TraceContext {
            traceparent: Some(TP.into()),
            tracestate: Some("vendor=1".into()),
            baggage: Some("user=42".into()),
        };
        let back = TraceContext::from_amqp_headers(Some(&ctx.to_amqp_headers()));
        assert_eq!(back, ctx);
        assert_eq!(back.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn drops_malformed_parents_and_their_state() {
        let ctx = TraceContext::from_lookup(|k| match k {
            "traceparent" => Some("00-zz-00f067aa0ba902b7-01".into()),
            "tracestate" => Some("vendor=1".into()),
            _ => None,
        });
        assert_eq!(ctx, TraceContext::default());
    }
}
