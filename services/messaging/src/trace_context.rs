//! Every seam where trace context crosses a process boundary, in one place.
//!
//! The context is kept as data ([`TraceContext`]: `traceparent`/`tracestate`/`baggage`) so it
//! can be stored on outbox rows. With `observability::init` installed, spans come from the
//! `observability` crate: the relay opens a PRODUCER span whose parent is the row's stored
//! context and publishes *that* span's context in the AMQP headers; the consumer opens a
//! CONSUMER span whose parent is the producer's context (and links to it), and hands the
//! CONSUMER span's context to the handler so the events it emits continue the trace. Without
//! telemetry (tests, tools) the stored context travels unchanged.

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use observability::{amqp, propagation};

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

    /// The context of the current span; empty without an OpenTelemetry layer.
    pub fn from_current_span() -> Self {
        let carrier = propagation::to_carrier(&propagation::current_context());
        Self::from_lookup(|k| carrier.get(k).cloned())
    }

    /// The context of `span`; empty without an OpenTelemetry layer.
    pub fn from_span(span: &tracing::Span) -> Self {
        span.in_scope(Self::from_current_span)
    }

    fn to_carrier(&self) -> BTreeMap<String, String> {
        KEYS.iter()
            .zip([&self.traceparent, &self.tracestate, &self.baggage])
            .filter_map(|(k, v)| v.as_ref().map(|v| ((*k).to_owned(), v.clone())))
            .collect()
    }

    /// AMQP headers carrying this context.
    pub fn to_amqp_headers(&self) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in self.to_carrier() {
            table.insert(
                ShortString::from(key),
                AMQPValue::LongString(LongString::from(value)),
            );
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
                            k.as_str().to_ascii_lowercase(),
                            String::from_utf8_lossy(s.as_bytes()).into_owned(),
                        )),
                        AMQPValue::ShortString(s) => {
                            Some((k.as_str().to_ascii_lowercase(), s.as_str().to_owned()))
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

/// PRODUCER span for publishing an outbox row; its parent is the context stored with the row.
pub fn producer_span(
    exchange: &str,
    routing_key: &str,
    event_id: &str,
    stored: &TraceContext,
) -> tracing::Span {
    let parent = propagation::from_carrier(&stored.to_carrier());
    amqp::publish_span_with_parent(&parent, exchange, routing_key, Some(event_id))
}

/// Headers to publish with: the PRODUCER span's context when telemetry is on, otherwise the
/// stored context unchanged.
pub fn publish_headers(span: &tracing::Span, stored: &TraceContext) -> FieldTable {
    amqp::headers_for(span, stored.to_amqp_headers())
}

/// CONSUMER span for one delivery: parent = the producer's context, plus a link to it.
pub fn consumer_span(queue: &str, delivery: &lapin::message::Delivery) -> tracing::Span {
    amqp::process_span(&amqp::Delivery::from_lapin(queue, delivery))
}

/// The context a handler continues: the CONSUMER span's when telemetry is on, otherwise what
/// the producer sent.
pub fn handler_context(span: &tracing::Span, received: TraceContext) -> TraceContext {
    let own = TraceContext::from_span(span);
    if own.traceparent.is_some() {
        own
    } else {
        received
    }
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
