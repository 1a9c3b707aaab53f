//! Shared telemetry set-up for every Vantage binary: OTLP traces, JSON logs, Prometheus metrics.
//!
//! One call at the top of `main` installs a global `tracing` subscriber that
//! - writes JSON log lines to stdout (`timestamp`, `level`, `service`, `target`, `message`,
//!   `trace_id`, `span_id`, `span`, `fields`), filtered by `RUST_LOG` (default `info`);
//! - turns `tracing` spans into OpenTelemetry spans and exports them over OTLP (gRPC or
//!   HTTP/protobuf) when an endpoint is configured;
//! - bridges the `log` crate (Pingora logs through it) into the same pipeline.
//!
//! # How to use
//!
//! ```no_run
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Before any runtime exists is fine: export runs on its own thread and runtime.
//!     let telemetry = observability::init("orders", env!("CARGO_PKG_VERSION"))?;
//!     tracing::info!(port = 8080, "Listening.");
//!     // … run the service until shutdown …
//!     telemetry.shutdown(); // flushes queued spans; dropping `telemetry` does the same
//!     Ok(())
//! }
//! ```
//!
//! Then, per boundary:
//! - HTTP server: `http_server::HttpServerLayer` (feature `axum`) or, outside axum,
//!   [`http_trace::server_span`] + [`http_trace::record_status`].
//! - HTTP client: [`http_trace::client_span`] + [`propagation::inject_http`].
//! - RabbitMQ (feature `amqp`): `amqp::publish_span` / `amqp::process_span` and the header helpers.
//! - Outbox rows: store [`propagation::to_carrier`]`(&`[`propagation::current_context`]`())`, restore with
//!   [`propagation::from_carrier`].
//! - Metrics: [`metrics::MetricsRegistry`], [`metrics::HttpServerMetrics`]; the messaging crate's
//!   `MessagingMetrics` builds on [`metrics::duration_family`] and [`metrics::trace_exemplar`].
//! - Anything that might hold a secret goes through [`redact`] before it becomes a field
//!   (URLs through [`redact::redact_url`]).
//! - HTTP errors: [`problem::Problem`], the `application/problem+json` scheme the gateway and
//!   the services share.
//! - Configuration: [`env::EnvParser`] reads variables and reports every bad one at once.
//!
//! # Configuration (standard OpenTelemetry variables)
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | unset: no export | collector base URL; `/v1/traces` is appended for HTTP |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | unset | full traces URL, used as-is; wins over the above |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` (`_TRACES_PROTOCOL`) | `grpc` | `grpc` or `http/protobuf` |
//! | `OTEL_EXPORTER_OTLP_HEADERS` (`_TRACES_HEADERS`) | none | `name=value,…` sent with every export (percent-decoded) |
//! | `OTEL_TRACES_EXPORTER` | `otlp` | `none` turns export off |
//! | `OTEL_SERVICE_NAME` | the `service_name` argument | overrides `service.name` |
//! | `OTEL_RESOURCE_ATTRIBUTES` | none | `k=v,k2=v2`, percent-decoded |
//! | `OTEL_TRACES_SAMPLER` / `_ARG` | `parentbased_traceidratio` / `1.0` | also `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`, `parentbased_always_off` |
//! | `OTEL_PROPAGATORS` | `tracecontext,baggage` | also `b3` (single header), `b3multi`, `none` |
//! | `OTEL_SDK_DISABLED` | `false` | `true`: JSON logs only, no spans, no ids |
//! | `OTEL_BSP_MAX_QUEUE_SIZE` | `16384` | spans queued for export before new ones are dropped; allocated up front (~350 B each) |
//! | `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT` | `128` | attributes a span keeps; later ones are counted as dropped |
//! | `RUST_LOG` | `info` | log filter (`EnvFilter` syntax); does not affect which spans are traced |
//!
//! Without an endpoint spans are still created (so logs carry trace ids and context still
//! propagates), just not exported. Invalid values fail `init` with every problem listed.

pub mod env;
mod export;
mod logs;
mod otlp_encode;
mod span_queue;

pub mod hex;
pub mod http_span;
pub mod http_trace;
pub mod lines;
pub mod metrics;
pub mod problem;
pub mod propagation;
pub mod redact;

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "axum")]
pub mod http_server;

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use opentelemetry_semantic_conventions::attribute as semconv;
use tracing::Dispatch;
use tracing_log::AsLog as _;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::Layer as _;

pub use env::{EnvError, EnvErrors, EnvParser, EnvSource, ProcessEnv, Protocol};
pub use opentelemetry;
pub use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The semantic-conventions schema every span and resource follows (1.42.0).
pub const SEMCONV_SCHEMA_URL: &str = opentelemetry_semantic_conventions::SCHEMA_URL;

/// Spans waiting for export before new ones are dropped, unless `OTEL_BSP_MAX_QUEUE_SIZE` says
/// otherwise (SDK default 2048). A gateway burst at sampling 1.0 fills 2048 within a single
/// schedule delay. The queue is allocated up front: ~6 MB at this size.
pub const MAX_QUEUE_SPANS: usize = 16_384;

/// Spans per export request, unless `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` says otherwise (SDK
/// default 512). The batch processor waits for each export before it starts the next, so the
/// batch size bounds throughput: a gateway at sampling 1.0 on one busy core (two spans a
/// request, ~13 k requests a second) dropped a third of its spans at 512 and none at 2048
/// (docs/benchmarks.md).
pub const MAX_EXPORT_BATCH_SPANS: usize = 2048;

/// How often queued spans are exported (SDK default 5 s): traces should show up in Jaeger
/// while the SRE is still looking.
pub const EXPORT_INTERVAL: Duration = Duration::from_millis(500);

/// Identifies this process among replicas of the same service (`service.instance.id`).
static INSTANCE_ID: LazyLock<String> = LazyLock::new(|| uuid::Uuid::new_v4().to_string());

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// One or more variables are invalid; every one is listed.
    #[error("invalid telemetry configuration: {}", join(.0))]
    InvalidEnv(Vec<EnvError>),
    /// The OTLP exporter could not be built from its configuration (e.g. an endpoint the
    /// transport cannot use); the message says which setting and why.
    #[error("failed to build the OTLP span exporter: {0}")]
    Exporter(String),
    /// The collector's TLS settings (CA or client certificate files) could not be used.
    #[error("cannot set up TLS to the OTLP collector: {0}")]
    Tls(String),
    /// The exporter's runtime could not start (thread or reactor creation failed).
    #[error("failed to start the telemetry export runtime")]
    Runtime(#[source] std::io::Error),
    /// The thread that writes [`lines::LineLog`] lines could not start.
    #[error("failed to start the log line writer thread")]
    LineLog(#[source] std::io::Error),
    /// `init` was already called, or something else installed a global subscriber.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialized,
}

fn join(errors: &[EnvError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Handle to the installed telemetry. Keep it alive for the life of the process.
///
/// [`Telemetry::shutdown`] (or dropping it) exports every queued span, waiting up to 5 s for
/// each of the two export queues (the HTTP spans', then the SDK's).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Keeps the log writer thread alive; dropping it flushes the lines still queued.
    log_guard: Option<tracing_appender::non_blocking::WorkerGuard>,
    /// Lines written without `tracing` (see [`lines`]), and the guard of their writer thread.
    line_log: lines::LineLog,
    line_guard: Option<lines::LineLogGuard>,
    service_name: String,
    propagator: Arc<dyn opentelemetry::propagation::TextMapPropagator + Send + Sync>,
    /// The formats `propagator` was built from (`OTEL_PROPAGATORS`).
    propagators: Vec<env::PropagatorKind>,
    exporting: Option<Protocol>,
    /// `OTEL_TRACES_SAMPLER`, for [`http_span`]'s spans.
    sampler: opentelemetry_sdk::trace::Sampler,
    /// [`http_span`]'s export queue, when spans are exported, and the guard of its thread.
    span_queue: Option<span_queue::SpanQueue>,
    span_queue_guard: Option<span_queue::SpanQueueGuard>,
    /// `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`, for [`http_span`]'s spans.
    max_span_attributes: u32,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("service_name", &self.service_name)
            .field("tracing", &self.provider.is_some())
            .field("exporting", &self.exporting)
            .finish()
    }
}

// === impl Telemetry ===

impl Telemetry {
    /// The resolved `service.name` (after `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`).
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// This process's `service.instance.id`.
    pub fn instance_id(&self) -> &str {
        &INSTANCE_ID
    }

    /// The OTLP protocol spans are exported with, or `None` when they are not exported.
    pub fn exporting(&self) -> Option<Protocol> {
        self.exporting
    }

    /// A tracer for [`http_span`]'s HTTP spans, exported to the same collector as `tracing`
    /// spans (through a queue of their own); disabled when `OTEL_SDK_DISABLED=true`, ids and
    /// propagation only (no attributes) when nothing exports.
    pub fn http_tracer(&self) -> http_span::HttpTracer {
        if self.provider.is_none() {
            return http_span::HttpTracer::disabled();
        }
        http_span::HttpTracer::new(
            self.span_queue.clone(),
            self.sampler.clone(),
            self.max_span_attributes,
        )
    }

    /// A writer of JSON log lines that bypasses `tracing`, for a record written on every request
    /// (an access log): same line shape and output as the other lines, batched. See [`lines`].
    pub fn line_log(&self) -> lines::LineLog {
        self.line_log.clone()
    }

    /// Exports every span ended so far, now. Blocks; meant for tests and before `exec`.
    pub fn force_flush(&self) {
        if let Some(queue) = &self.span_queue {
            if !queue.force_flush(FLUSH_TIMEOUT) {
                tracing::warn!("Failed to flush HTTP spans within 5 s.");
            }
        }
        if let Some(provider) = &self.provider {
            if let Err(error) = provider.force_flush() {
                tracing::warn!(%error, "Failed to flush spans.");
            }
        }
    }

    /// Exports queued spans and stops the exporter. Blocks up to 5 s per export queue (HTTP
    /// spans, then `tracing` spans); what the collector has not taken by then is dropped and
    /// counted in a warning.
    pub fn shutdown(mut self) {
        self.shutdown_inner();
    }

    fn shutdown_inner(&mut self) {
        // First: its last lines go through the log writer below.
        if let Some(mut guard) = self.line_guard.take() {
            guard.stop();
        }
        // Before the provider: the queue sends through the provider's exporter.
        if let Some(mut guard) = self.span_queue_guard.take() {
            guard.stop();
        }
        self.span_queue = None;
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
                tracing::warn!(%error, "Failed to flush spans at shutdown.");
            }
        }
        // Last: the lines logged above still reach stdout.
        drop(self.log_guard.take());
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}

/// The longest a flush or the shutdown waits for spans to be exported.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Log lines queued for the writer thread before loggers wait.
const LOG_QUEUE_LINES: usize = 65_536;

/// Sets up telemetry for `service_name` from the process environment. Call once, first thing in `main`.
///
/// Works with or without a Tokio runtime running.
pub fn init(service_name: &str, service_version: &str) -> Result<Telemetry, InitError> {
    init_with_env(service_name, service_version, &ProcessEnv)
}

/// [`init`] reading variables from `env` instead of the process environment.
pub fn init_with_env(
    service_name: &str,
    service_version: &str,
    env: &dyn EnvSource,
) -> Result<Telemetry, InitError> {
    // Log lines are formatted on the calling thread and written by a dedicated thread that
    // batches them (one write per burst instead of one per line). Never lossy: when the queue
    // is full, callers wait rather than drop lines.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ));
    let (mut telemetry, dispatch) = build(service_name, service_version, env, writer)?;
    telemetry.log_guard = Some(guard);
    tracing::dispatcher::set_global_default(dispatch).map_err(|_| InitError::AlreadyInitialized)?;
    // Forward `log` records at the levels the filter can let through, no lower: formatting
    // Pingora's debug! lines only to drop them costs throughput.
    let max_level = tracing::level_filters::LevelFilter::current().as_log();
    if let Err(error) = tracing_log::LogTracer::builder()
        .with_max_level(max_level)
        .init()
    {
        tracing::warn!(%error, "A `log` logger is already installed; `log` records will not reach the JSON log.");
    }
    propagation::install(Arc::clone(&telemetry.propagator), &telemetry.propagators);
    opentelemetry::global::set_text_map_propagator(SharedPropagator(Arc::clone(
        &telemetry.propagator,
    )));
    if let Some(provider) = &telemetry.provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    Ok(telemetry)
}

/// Builds the telemetry pipeline without installing anything globally.
///
/// For tests and embedding: run code under the returned dispatcher with
/// `tracing::dispatcher::with_default`, and pass any [`MakeWriter`] for the JSON log lines.
/// Propagation helpers keep using the process-wide propagators (see [`propagation`]).
pub fn build<W>(
    service_name: &str,
    service_version: &str,
    env: &dyn EnvSource,
    log_writer: W,
) -> Result<(Telemetry, Dispatch), InitError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let settings = env::Settings::from_env(service_name, env).map_err(InitError::InvalidEnv)?;
    // The log layer and the line log write through the same writer.
    let log_writer = Arc::new(log_writer);
    let (line_log, line_guard) = {
        let writer = Arc::clone(&log_writer);
        lines::LineLog::start(&settings.service_name, move |chunk| {
            let _ = std::io::Write::write_all(&mut writer.make_writer(), chunk);
        })
        .map_err(InitError::LineLog)?
    };
    let propagator = propagation::build(&settings.propagators);

    let mut span_queue = None;
    let provider = if settings.sdk_disabled {
        None
    } else {
        let resource = resource(&settings, service_version);
        let mut builder = SdkTracerProvider::builder()
            .with_sampler(settings.sampler.clone())
            .with_resource(resource.clone());
        if let Some(export) = &settings.export {
            let exporter = export::OwnedRuntimeExporter::new(export)?;
            if let Some(sender) = exporter.request_sender() {
                let config = span_queue::QueueConfig {
                    max_queue: settings.max_queue_spans,
                    max_batch: settings.max_export_batch_spans,
                    interval: EXPORT_INTERVAL,
                    stop_timeout: FLUSH_TIMEOUT,
                };
                let frame =
                    otlp_encode::recorded::RequestFrame::new(&resource, &instrumentation_scope());
                span_queue = Some(
                    span_queue::SpanQueue::start(config, frame, Box::new(sender))
                        .map_err(InitError::Runtime)?,
                );
            }
            let config = BatchConfigBuilder::default()
                .with_max_queue_size(settings.max_queue_spans)
                .with_max_export_batch_size(settings.max_export_batch_spans)
                .with_scheduled_delay(EXPORT_INTERVAL)
                .build();
            builder = builder.with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(config)
                    .build(),
            );
        }
        Some(builder.build())
    };

    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer_with_scope(instrumentation_scope()))
            .with_tracked_inactivity(false)
            // Spans at INFO and above become OpenTelemetry spans whatever RUST_LOG says, so turning
            // logs down never breaks traces; only WARN/ERROR events are copied onto spans.
            .with_filter(
                filter_fn(|meta| {
                    if meta.is_span() {
                        *meta.level() <= tracing::Level::INFO
                    } else {
                        *meta.level() <= tracing::Level::WARN
                    }
                })
                .with_max_level_hint(tracing::Level::INFO),
            )
    });
    let log_layer =
        logs::JsonLogLayer::new(settings.service_name.clone(), SharedWriter(log_writer))
            .with_filter(
                EnvFilter::try_new(&settings.log_filter)
                    .unwrap_or_else(|_| EnvFilter::new(env::DEFAULT_LOG_FILTER)),
            );
    let subscriber = tracing_subscriber::registry()
        .with(otel_layer)
        .with(log_layer);

    let telemetry = Telemetry {
        provider,
        log_guard: None,
        line_log,
        line_guard: Some(line_guard),
        service_name: settings.service_name,
        propagator,
        propagators: settings.propagators.clone(),
        exporting: settings.export.map(|e| e.protocol),
        sampler: settings.sampler,
        span_queue: span_queue.as_ref().map(|(queue, _)| queue.clone()),
        span_queue_guard: span_queue.map(|(_, guard)| guard),
        max_span_attributes: settings.max_span_attributes,
    };
    Ok((telemetry, Dispatch::new(subscriber)))
}

/// The scope every span of ours is reported under.
fn instrumentation_scope() -> InstrumentationScope {
    InstrumentationScope::builder("observability")
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_schema_url(SEMCONV_SCHEMA_URL)
        .build()
}

fn resource(settings: &env::Settings, service_version: &str) -> Resource {
    let defaults = [
        KeyValue::new(semconv::SERVICE_VERSION, service_version.to_owned()),
        KeyValue::new(semconv::SERVICE_INSTANCE_ID, INSTANCE_ID.clone()),
    ];
    // The operator's OTEL_RESOURCE_ATTRIBUTES override our defaults; service.name is resolved last.
    let from_env = settings
        .resource_attributes
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()));
    Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(defaults)
        .with_attributes(from_env)
        .with_service_name(settings.service_name.clone())
        .build()
}

/// One log writer shared by the log layer and the line log.
struct SharedWriter<W>(Arc<W>);

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for SharedWriter<W> {
    type Writer = W::Writer;

    fn make_writer(&'a self) -> Self::Writer {
        self.0.make_writer()
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        self.0.make_writer_for(meta)
    }
}

/// Lets the process-wide propagator also serve `opentelemetry::global` users.
#[derive(Debug)]
struct SharedPropagator(Arc<dyn opentelemetry::propagation::TextMapPropagator + Send + Sync>);

impl opentelemetry::propagation::TextMapPropagator for SharedPropagator {
    fn inject_context(
        &self,
        cx: &opentelemetry::Context,
        injector: &mut dyn opentelemetry::propagation::Injector,
    ) {
        self.0.inject_context(cx, injector);
    }

    fn extract_with_context(
        &self,
        cx: &opentelemetry::Context,
        extractor: &dyn opentelemetry::propagation::Extractor,
    ) -> opentelemetry::Context {
        self.0.extract_with_context(cx, extractor)
    }

    fn fields(&self) -> opentelemetry::propagation::text_map_propagator::FieldIter<'_> {
        self.0.fields()
    }
}
