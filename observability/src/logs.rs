//! JSON log lines that carry the trace and span id of the span they were written in.
//!
//! One line per event:
//! `{"timestamp":"…","level":"INFO","service":"orders","target":"orders::http","message":"…",
//!   "trace_id":"…","span_id":"…","span":"POST /orders","fields":{…}}`.
//! `trace_id`/`span_id` are omitted outside a traced span, so a missing id is visible rather than
//! zero-filled.

use std::fmt;
use std::io::Write as _;
use std::sync::OnceLock;

use opentelemetry::trace::TraceContextExt as _;
use serde::Serialize;
use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Writes one JSON object per event to `writer`.
pub(crate) struct JsonLogLayer<W> {
    service: String,
    writer: W,
    /// Set when the layer is installed; used to ask the OpenTelemetry layer for span contexts.
    dispatch: OnceLock<WeakDispatch>,
}

impl<W> JsonLogLayer<W> {
    pub(crate) fn new(service: impl Into<String>, writer: W) -> Self {
        Self {
            service: service.into(),
            writer,
            dispatch: OnceLock::new(),
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    timestamp: String,
    level: &'a str,
    service: &'a str,
    target: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    span_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    span: Option<&'a str>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    fields: Map<String, Value>,
}

// === impl JsonLogLayer ===

impl<S, W> Layer<S> for JsonLogLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());

        let mut visitor = FieldVisitor::default();
        event.record(&mut visitor);

        // The innermost span that the OpenTelemetry layer knows about gives the ids.
        let mut span_name = None;
        let mut ids = None;
        if let Some(scope) = ctx.event_scope(event) {
            let dispatch = self.dispatch.get().and_then(WeakDispatch::upgrade);
            for span in scope {
                span_name.get_or_insert(span.name());
                if let Some(found) = dispatch.as_ref().and_then(|d| otel_ids(&span.id(), d)) {
                    ids = Some(found);
                    break;
                }
            }
        }
        // Code that keeps its span outside `tracing` (SDK-direct HTTP spans) passes the ids as
        // `trace_id` / `span_id` fields.
        let (trace_id, span_id) = match ids {
            Some((t, s)) => (Some(t), Some(s)),
            None => (visitor.trace_id.take(), visitor.span_id.take()),
        };

        let line = Line {
            timestamp: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            level: metadata.level().as_str(),
            service: &self.service,
            target: metadata.target(),
            message: visitor.message.unwrap_or_default(),
            trace_id,
            span_id,
            span: span_name,
            fields: visitor.fields,
        };
        let Ok(mut bytes) = serde_json::to_vec(&line) else {
            return;
        };
        bytes.push(b'\n');
        // One write per line so concurrent lines never interleave.
        let _ = self.writer.make_writer_for(metadata).write_all(&bytes);
    }
}

fn otel_ids(id: &tracing::span::Id, dispatch: &Dispatch) -> Option<(String, String)> {
    let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Collects `message` apart from the other fields; drops the `log.*` bookkeeping fields that
/// tracing-log adds to bridged `log` records.
#[derive(Default)]
struct FieldVisitor {
    message: Option<String>,
    trace_id: Option<String>,
    span_id: Option<String>,
    fields: Map<String, Value>,
}

impl FieldVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else if let (Some(slot), Value::String(id)) = (
            match name {
                "trace_id" => Some(&mut self.trace_id),
                "span_id" => Some(&mut self.span_id),
                _ => None,
            },
            &value,
        ) {
            if !id.is_empty() {
                *slot = Some(id.clone());
            }
        } else if !name.starts_with("log.") {
            self.fields.insert(name.to_owned(), value);
        }
    }
}

impl Visit for FieldVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(
            field,
            serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number),
        );
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}
