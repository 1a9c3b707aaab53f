//! The OTLP span exporter, made independent of the caller's async runtime.
//!
//! opentelemetry-rust's default `BatchSpanProcessor` runs on its own OS thread and drives each
//! export with `futures_executor::block_on`. Both OTLP transports we ship are Tokio-based (tonic
//! for gRPC, async reqwest for HTTP), so on that thread they would panic with "there is no reactor
//! running" — and the gateway calls `init` before Pingora has started any runtime. We therefore
//! give the exporter its own one-worker Tokio runtime: the exporter is built inside it (tonic
//! spawns its connection task there) and every export is spawned onto it and awaited through the
//! `JoinHandle`, which works from any executor or plain thread.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

use crate::env::{ExportSettings, Protocol};
use crate::InitError;

/// Per-export deadline; the SDK default (10 s) would stall shutdown when the collector is down.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// An OTLP exporter that owns the Tokio runtime it runs on.
#[derive(Debug)]
pub(crate) struct OwnedRuntimeExporter {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    /// `Option` so `Drop` can take it and shut it down without blocking.
    runtime: Option<tokio::runtime::Runtime>,
}

impl OwnedRuntimeExporter {
    pub(crate) fn new(settings: &ExportSettings) -> Result<Self, InitError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otel-export")
            // The export path (tonic, hyper, h2, reqwest) must not feed telemetry back into the
            // pipeline it is draining; its failures reach the log through the batch processor.
            .on_thread_start(|| {
                std::mem::forget(tracing::dispatcher::set_default(&tracing::Dispatch::none()))
            })
            .enable_all()
            .build()
            .map_err(InitError::Runtime)?;
        let inner = {
            // tonic spawns its connection worker while building; it must land on our runtime.
            let _entered = runtime.enter();
            match settings.protocol {
                Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(settings.endpoint.clone())
                    .with_timeout(EXPORT_TIMEOUT)
                    .build(),
                Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(settings.endpoint.clone())
                    .with_timeout(EXPORT_TIMEOUT)
                    .build(),
            }
            .map_err(InitError::Exporter)?
        };
        Ok(Self {
            inner: Arc::new(inner),
            runtime: Some(runtime),
        })
    }
}

impl SpanExporter for OwnedRuntimeExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let inner = Arc::clone(&self.inner);
        let handle = self
            .runtime
            .as_ref()
            .map(|runtime| runtime.spawn(async move { inner.export(batch).await }));
        async move {
            match handle {
                Some(handle) => handle.await.unwrap_or_else(|error| {
                    Err(OTelSdkError::InternalFailure(format!(
                        "export task failed: {error}"
                    )))
                }),
                None => Err(OTelSdkError::AlreadyShutdown),
            }
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called once while the provider is built, before any export holds a clone.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

impl Drop for OwnedRuntimeExporter {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside async code; this never blocks.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
