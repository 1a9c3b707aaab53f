//! The OTLP span exporter: spans encoded by [`crate::otlp_encode`], sent over gRPC (tonic) or
//! HTTP/protobuf (reqwest), on a Tokio runtime of its own.
//!
//! opentelemetry-rust's default `BatchSpanProcessor` runs on its own OS thread and drives each
//! export with `futures_executor::block_on`. Both transports are Tokio-based, so on that thread
//! they would panic with "there is no reactor running" — and the gateway calls `init` before
//! Pingora has started any runtime. We therefore give the exporter its own one-worker Tokio
//! runtime: the gRPC channel is built inside it (tonic spawns its connection task there) and
//! every send is spawned onto it and awaited through the `JoinHandle`, which works from any
//! executor or plain thread. The batch is encoded on the caller's thread before that, so only
//! the bytes cross over.
//!
//! We do not use `opentelemetry_otlp::SpanExporter`: it converts every span into prost structs
//! (a `String` per attribute key and value) before encoding them, which costs more than the
//! gateway's own work per request at sampling 1.0. Its behaviour is kept: endpoints as
//! [`crate::env`] resolves them, TLS with an optional CA and client certificate, the 5 s
//! timeout, `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`, partial-success logging, and its retry
//! policy (3 retries, exponential backoff from 100 ms to 1.6 s with up to 100 ms jitter,
//! server throttling hints honoured, all within the timeout).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use parking_lot::Mutex;
use prost::Message as _;

use crate::env::{ExportSettings, ExportTls, Protocol};
use crate::otlp_encode::TraceEncoder;
use crate::InitError;

/// Per-export deadline, retries included; the SDK default (10 s) would stall shutdown when the
/// collector is down.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The gRPC method every OTLP trace collector serves.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// What the collector sees as our client.
const USER_AGENT: &str = concat!("vantage-observability/", env!("CARGO_PKG_VERSION"));

/// Retries after the first attempt (opentelemetry-otlp's recommended policy).
const MAX_RETRIES: u32 = 3;
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_millis(1600);
const MAX_JITTER_MILLIS: u32 = 100;
/// The longest a server's throttling hint (Retry-After, gRPC RetryInfo) may stretch backoff.
const MAX_THROTTLE: Duration = Duration::from_secs(30);

/// An OTLP exporter that owns the Tokio runtime it sends on.
#[derive(Debug)]
pub(crate) struct OwnedRuntimeExporter {
    /// Buffers reused from batch to batch; exports are sequential, so it is never contended.
    encoder: Mutex<TraceEncoder>,
    transport: Arc<Transport>,
    /// Set by `shutdown`: later exports fail with `AlreadyShutdown`, as upstream's do.
    shut_down: AtomicBool,
    /// `Option` so `Drop` can take it and shut it down without blocking.
    runtime: Option<tokio::runtime::Runtime>,
}

/// Where encoded requests go.
enum Transport {
    Grpc {
        channel: tonic::transport::Channel,
        metadata: tonic::metadata::MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: reqwest::Url,
        headers: http::HeaderMap,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header names only: the values are often credentials.
        match self {
            Transport::Grpc { metadata, .. } => f
                .debug_struct("Grpc")
                .field("metadata", &metadata.keys().collect::<Vec<_>>())
                .finish_non_exhaustive(),
            Transport::Http { url, headers, .. } => f
                .debug_struct("Http")
                .field("url", &url.as_str())
                .field("headers", &headers.keys().collect::<Vec<_>>())
                .finish_non_exhaustive(),
        }
    }
}

// === impl OwnedRuntimeExporter ===

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
        let mut headers = http::HeaderMap::with_capacity(settings.headers.len());
        for (name, value) in &settings.headers {
            headers.append(name.clone(), value.clone());
        }
        // tonic spawns its connection worker while building; it must land on our runtime.
        let entered = runtime.enter();
        let transport = match settings.protocol {
            Protocol::Grpc => Transport::Grpc {
                channel: grpc_channel(settings)?,
                metadata: tonic::metadata::MetadataMap::from_headers(headers),
            },
            Protocol::HttpProtobuf => Transport::Http {
                client: http_client(&settings.tls)?,
                url: reqwest::Url::parse(&settings.endpoint).map_err(|error| {
                    InitError::Exporter(format!(
                        "invalid endpoint `{}`: {error}",
                        settings.endpoint
                    ))
                })?,
                headers,
            },
        };
        drop(entered);
        Ok(Self {
            encoder: Mutex::new(TraceEncoder::default()),
            transport: Arc::new(transport),
            shut_down: AtomicBool::new(false),
            runtime: Some(runtime),
        })
    }
}

/// A lazily connecting channel to the collector, with the same TLS and timeout rules as
/// opentelemetry-otlp: TLS for `https` or whenever a CA or client certificate is configured.
fn grpc_channel(settings: &ExportSettings) -> Result<tonic::transport::Channel, InitError> {
    let invalid = |error: tonic::transport::Error| {
        InitError::Exporter(format!(
            "invalid gRPC endpoint `{}`: {}",
            settings.endpoint,
            error_chain(&error)
        ))
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
        .map_err(invalid)?
        .timeout(EXPORT_TIMEOUT)
        .user_agent(USER_AGENT)
        .map_err(invalid)?;
    let tls = &settings.tls;
    if settings.endpoint.starts_with("https://") || tls.ca_pem.is_some() || tls.client_pem.is_some()
    {
        endpoint = endpoint.tls_config(grpc_tls(tls)).map_err(|error| {
            InitError::Tls(format!("gRPC TLS settings: {}", error_chain(&error)))
        })?;
    }
    Ok(endpoint.connect_lazy())
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

/// A reqwest client with the export timeout, trusting the configured CA and presenting the
/// client certificate when there are any.
fn http_client(tls: &ExportTls) -> Result<reqwest::Client, InitError> {
    let mut builder = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .user_agent(USER_AGENT);
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

impl OwnedRuntimeExporter {
    /// A sender of already-encoded requests over this exporter's transport and runtime, for
    /// [`crate::span_queue`]. It stops working once the exporter is dropped.
    pub(crate) fn request_sender(&self) -> Option<RequestSender> {
        Some(RequestSender {
            runtime: self.runtime.as_ref()?.handle().clone(),
            transport: Arc::clone(&self.transport),
        })
    }
}

/// Sends encoded `ExportTraceServiceRequest`s with the exporter's transport, retries and
/// timeout; from [`OwnedRuntimeExporter::request_sender`].
pub(crate) struct RequestSender {
    runtime: tokio::runtime::Handle,
    transport: Arc<Transport>,
}

impl crate::span_queue::BatchSink for RequestSender {
    fn send(&self, request: Bytes, deadline: Option<Instant>) -> Result<(), String> {
        let transport = Arc::clone(&self.transport);
        // Spawned onto the export runtime, as the SDK exporter's sends are; this thread waits
        // for the task, until `deadline` if there is one.
        let task = self
            .runtime
            .spawn(async move { transport.send(request).await });
        let outcome = match deadline {
            None => self.runtime.block_on(task),
            Some(deadline) => {
                let deadline = tokio::time::Instant::from_std(deadline);
                match self
                    .runtime
                    .block_on(async { tokio::time::timeout_at(deadline, task).await })
                {
                    Ok(joined) => joined,
                    Err(_) => return Err("the export did not finish before shutdown".into()),
                }
            }
        };
        match outcome {
            Ok(Ok(partial)) => {
                if let Some(partial) = partial {
                    partial.log();
                }
                Ok(())
            }
            Ok(Err(error)) => Err(error.to_string()),
            Err(error) => Err(format!("export task failed: {error}")),
        }
    }
}

impl SpanExporter for OwnedRuntimeExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let handle = match &self.runtime {
            Some(runtime) if !self.shut_down.load(Ordering::Acquire) => {
                let body = self.encoder.lock().encode(&batch);
                drop(batch);
                let transport = Arc::clone(&self.transport);
                Some(runtime.spawn(async move { transport.send(body).await }))
            }
            _ => None,
        };
        async move {
            let Some(handle) = handle else {
                return Err(OTelSdkError::AlreadyShutdown);
            };
            let rejected = handle.await.unwrap_or_else(|error| {
                Err(OTelSdkError::InternalFailure(format!(
                    "export task failed: {error}"
                )))
            })?;
            // Logged here, on the caller's thread: the export runtime's threads log nowhere.
            if let Some(partial) = rejected {
                partial.log();
            }
            Ok(())
        }
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        // Nothing is buffered here: the batch processor has already sent what it held.
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called once while the provider is built, before any export.
        self.encoder.get_mut().set_resource(resource);
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

// === sending ===

/// What the collector said it dropped (`ExportTracePartialSuccess`), when it dropped anything.
#[derive(Debug)]
struct PartialSuccess {
    rejected_spans: i64,
    error_message: String,
}

impl PartialSuccess {
    /// The warning for it; on the caller's thread (the export runtime's threads log nowhere).
    fn log(&self) {
        tracing::warn!(
            rejected_spans = self.rejected_spans,
            error_message = %self.error_message,
            "The trace collector rejected some spans."
        );
    }

    fn from_response(response: ExportTraceServiceResponse) -> Option<Self> {
        let partial = response.partial_success?;
        (partial.rejected_spans > 0 || !partial.error_message.is_empty()).then_some(Self {
            rejected_spans: partial.rejected_spans,
            error_message: partial.error_message,
        })
    }
}

/// Whether a failed attempt is worth repeating.
#[derive(Debug, PartialEq)]
enum Retry {
    No,
    Yes,
    /// The server asked us to wait at least this long.
    After(Duration),
}

/// A failed attempt: its message (for the batch processor's log line) and whether to retry.
#[derive(Debug)]
struct Failure {
    message: String,
    retry: Retry,
}

impl Transport {
    /// Sends one encoded request, retrying per the policy above until [`EXPORT_TIMEOUT`].
    async fn send(&self, body: Bytes) -> Result<Option<PartialSuccess>, OTelSdkError> {
        let start = Instant::now();
        let mut attempt = 0;
        let mut delay = INITIAL_BACKOFF;
        let mut delay_cap = MAX_BACKOFF;
        loop {
            let failure = match self.send_once(body.clone()).await {
                Ok(partial) => return Ok(partial),
                Err(failure) => failure,
            };
            let remaining = EXPORT_TIMEOUT.saturating_sub(start.elapsed());
            let sleep = match failure.retry {
                _ if attempt >= MAX_RETRIES || remaining.is_zero() => None,
                Retry::No => None,
                Retry::Yes => Some(delay.saturating_add(jitter()).min(delay_cap)),
                Retry::After(server) => {
                    let server = server.min(MAX_THROTTLE);
                    if server > delay_cap {
                        delay_cap = MAX_THROTTLE;
                    }
                    delay = delay.max(server);
                    Some(delay.saturating_add(jitter()).min(delay_cap))
                }
            };
            match sleep {
                Some(sleep) if sleep < remaining => {
                    attempt += 1;
                    tokio::time::sleep(sleep).await;
                    delay = delay.saturating_mul(2).min(delay_cap);
                }
                _ => return Err(OTelSdkError::InternalFailure(failure.message)),
            }
        }
    }

    async fn send_once(&self, body: Bytes) -> Result<Option<PartialSuccess>, Failure> {
        match self {
            Transport::Grpc { channel, metadata } => send_grpc(channel, metadata, body).await,
            Transport::Http {
                client,
                url,
                headers,
            } => send_http(client, url, headers, body).await,
        }
    }
}

/// Up to [`MAX_JITTER_MILLIS`] of jitter, so exporters restarted together do not retry together.
fn jitter() -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(u64::from(nanos % (MAX_JITTER_MILLIS + 1)))
}

async fn send_grpc(
    channel: &tonic::transport::Channel,
    metadata: &tonic::metadata::MetadataMap,
    body: Bytes,
) -> Result<Option<PartialSuccess>, Failure> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|error| Failure {
        message: format!(
            "gRPC export failed: channel not ready: {}",
            error_chain(&error)
        ),
        retry: Retry::Yes,
    })?;
    let mut request = tonic::Request::new(body);
    *request.metadata_mut() = metadata.clone();
    let path = http::uri::PathAndQuery::from_static(GRPC_EXPORT_PATH);
    match grpc.unary(request, path, PreEncodedCodec).await {
        Ok(response) => Ok(PartialSuccess::from_response(response.into_inner())),
        Err(status) => Err(grpc_failure(&status)),
    }
}

/// The status as an error message and a retry decision, as opentelemetry-otlp classifies it.
/// The status message is left out (a collector may echo credentials into it); a locally made
/// status (connect failure, timeout) carries its cause chain, which is ours to show.
fn grpc_failure(status: &tonic::Status) -> Failure {
    use tonic::Code;
    use tonic_types::StatusExt as _;
    let mut message = format!("gRPC export failed with code {:?}", status.code());
    if let Some(source) = std::error::Error::source(status) {
        message.push_str(": ");
        message.push_str(&error_chain(source));
    }
    let hint = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .filter(|delay| !delay.is_zero());
    let retry = match status.code() {
        Code::ResourceExhausted => hint.map_or(Retry::No, Retry::After),
        Code::Unavailable => hint.map_or(Retry::Yes, Retry::After),
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::DataLoss => Retry::Yes,
        _ => Retry::No,
    };
    Failure { message, retry }
}

async fn send_http(
    client: &reqwest::Client,
    url: &reqwest::Url,
    headers: &http::HeaderMap,
    body: Bytes,
) -> Result<Option<PartialSuccess>, Failure> {
    let response = client
        .post(url.clone())
        .headers(headers.clone())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(body)
        .send()
        .await
        .map_err(|error| Failure {
            // Without the URL: it is in the configuration already and may carry credentials.
            message: format!("HTTP export failed: {}", error_chain(&error.without_url())),
            retry: Retry::Yes,
        })?;
    let status = response.status();
    if !status.is_success() {
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok());
        return Err(Failure {
            message: format!("HTTP export failed with status {}", status.as_u16()),
            retry: http_retry(status.as_u16(), retry_after),
        });
    }
    // A body that is not a response (some collectors send none) is no partial success.
    let body = response.bytes().await.unwrap_or_default();
    Ok(ExportTraceServiceResponse::decode(body)
        .ok()
        .and_then(PartialSuccess::from_response))
}

/// Whether an HTTP status is worth retrying, as opentelemetry-otlp classifies it: 429 and 503
/// (after `Retry-After` seconds when given, at most 10 minutes), 502 and 504.
fn http_retry(status: u16, retry_after: Option<&str>) -> Retry {
    let after = retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs.min(600)));
    match status {
        429 | 503 => after.map_or(Retry::Yes, Retry::After),
        502 | 504 => Retry::Yes,
        _ => Retry::No,
    }
}

/// `error` and its causes, `: `-separated.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

// === impl PreEncodedCodec ===

/// A tonic codec whose requests are already-encoded protobuf bytes and whose responses are
/// `ExportTraceServiceResponse`s.
#[derive(Debug, Clone, Copy, Default)]
struct PreEncodedCodec;

impl tonic::codec::Codec for PreEncodedCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = PreEncodedCodec;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncodedCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder
    }
}

impl tonic::codec::Encoder for PreEncodedCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

/// Decodes the collector's answer with prost.
#[derive(Debug, Clone, Copy, Default)]
struct ResponseDecoder;

impl tonic::codec::Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, Self::Error> {
        let response = ExportTraceServiceResponse::decode(src)
            .map_err(|error| tonic::Status::internal(format!("undecodable response: {error}")))?;
        Ok(Some(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_are_retried_as_opentelemetry_otlp_retries_them() {
        assert_eq!(http_retry(503, None), Retry::Yes);
        assert_eq!(
            http_retry(429, Some(" 2 ")),
            Retry::After(Duration::from_secs(2))
        );
        assert_eq!(
            http_retry(503, Some("86400")),
            Retry::After(Duration::from_secs(600))
        );
        assert_eq!(http_retry(429, Some("soon")), Retry::Yes);
        assert_eq!(http_retry(502, None), Retry::Yes);
        assert_eq!(http_retry(504, Some("3")), Retry::Yes);
        for status in [400, 401, 403, 404, 413, 500, 501] {
            assert_eq!(http_retry(status, None), Retry::No, "{status}");
        }
    }

    #[test]
    fn grpc_codes_are_retried_as_opentelemetry_otlp_retries_them() {
        use tonic::Code;
        for code in [
            Code::Unavailable,
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::DataLoss,
        ] {
            assert_eq!(
                grpc_failure(&tonic::Status::new(code, "")).retry,
                Retry::Yes
            );
        }
        for code in [
            Code::ResourceExhausted,
            Code::Unknown,
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Internal,
            Code::Unimplemented,
        ] {
            assert_eq!(grpc_failure(&tonic::Status::new(code, "")).retry, Retry::No);
        }
    }

    #[test]
    fn a_grpc_failure_never_repeats_the_collectors_message() {
        let failure = grpc_failure(&tonic::Status::unauthenticated("bad token s3cret"));
        assert_eq!(
            failure.message,
            "gRPC export failed with code Unauthenticated"
        );
    }
}
