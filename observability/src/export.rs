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

use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

use crate::env::{ExportSettings, ExportTls, Protocol};
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
            let https = settings.endpoint.starts_with("https://");
            let tls = &settings.tls;
            match settings.protocol {
                Protocol::Grpc => {
                    let mut builder = opentelemetry_otlp::SpanExporter::builder()
                        .with_tonic()
                        .with_endpoint(settings.endpoint.clone())
                        .with_timeout(EXPORT_TIMEOUT);
                    if https || tls.ca_pem.is_some() || tls.client_pem.is_some() {
                        builder = builder.with_tls_config(grpc_tls(tls));
                    }
                    builder.build()
                }
                Protocol::HttpProtobuf => {
                    let mut builder = opentelemetry_otlp::SpanExporter::builder()
                        .with_http()
                        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                        .with_endpoint(settings.endpoint.clone())
                        .with_timeout(EXPORT_TIMEOUT);
                    if tls.ca_pem.is_some() || tls.client_pem.is_some() {
                        builder = builder.with_http_client(http_client(tls)?);
                    }
                    builder.build()
                }
            }
            .map_err(InitError::Exporter)?
        };
        Ok(Self {
            inner: Arc::new(inner),
            runtime: Some(runtime),
        })
    }
}

/// tonic's TLS for the collector: the configured CA (else the web's public roots) and, for
/// mutual TLS, the client certificate.
fn grpc_tls(tls: &ExportTls) -> tonic::transport::ClientTlsConfig {
    let mut config = tonic::transport::ClientTlsConfig::new();
    config = match &tls.ca_pem {
        Some(ca) => config.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        None => config.with_webpki_roots(),
    };
    if let Some((cert, key)) = &tls.client_pem {
        config = config.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    config
}

/// A reqwest client trusting the configured CA and presenting the client certificate.
fn http_client(tls: &ExportTls) -> Result<reqwest::Client, InitError> {
    let mut builder = reqwest::Client::builder().timeout(EXPORT_TIMEOUT);
    if let Some(ca) = &tls.ca_pem {
        for cert in
            reqwest::Certificate::from_pem_bundle(ca).map_err(|e| InitError::Tls(e.to_string()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some((cert, key)) = &tls.client_pem {
        let mut pem = cert.clone();
        pem.push(b'\n');
        pem.extend_from_slice(key);
        builder = builder.identity(
            reqwest::Identity::from_pem(&pem).map_err(|e| InitError::Tls(e.to_string()))?,
        );
    }
    builder.build().map_err(|e| InitError::Tls(e.to_string()))
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
