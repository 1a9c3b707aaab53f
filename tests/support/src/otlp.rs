//! An in-process OTLP trace receiver (gRPC and HTTP/protobuf) built on `opentelemetry-proto`.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use prost::Message as _;

pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// Collects every span exported to it, over OTLP/gRPC and OTLP/HTTP (protobuf), on 127.0.0.1.
///
/// Runs on its own thread and Tokio runtime, so it works from sync tests and from any runtime;
/// dropping it stops both servers.
pub struct OtlpReceiver {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    store: Arc<Store>,
    runtime: Option<tokio::runtime::Runtime>,
    /// `https` when started with [`OtlpReceiver::start_tls`].
    scheme: &'static str,
}

#[derive(Default)]
struct Store {
    batches: Mutex<Vec<ResourceSpans>>,
    grpc_requests: AtomicUsize,
    http_requests: AtomicUsize,
    /// TLS connections whose client presented a certificate.
    client_certificates: AtomicUsize,
    /// The headers (gRPC metadata) of every export request, in arrival order.
    request_headers: Mutex<Vec<http::HeaderMap>>,
}

impl Store {
    fn add(&self, request: ExportTraceServiceRequest) {
        self.batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(request.resource_spans);
    }

    fn add_headers(&self, headers: http::HeaderMap) {
        self.request_headers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(headers);
    }
}

/// How often [`OtlpReceiver::wait_for`] looks at what arrived.
const POLL_EVERY: Duration = Duration::from_millis(25);

// === impl OtlpReceiver ===

impl OtlpReceiver {
    /// Binds both servers on `127.0.0.1:0` and starts serving.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Like [`start`](Self::start), but both servers speak TLS with `config` (e.g. one that
    /// requires a client certificate); endpoints are `https://`.
    pub fn start_tls(config: Arc<rustls::ServerConfig>) -> Self {
        Self::start_with(Some(config))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        // gRPC needs h2; the HTTP receiver speaks HTTP/1.1 only.
        let acceptor = |alpn: &[u8]| {
            tls.as_ref().map(|c| {
                let mut config = rustls::ServerConfig::clone(c);
                config.alpn_protocols = vec![alpn.to_vec()];
                tokio_rustls::TlsAcceptor::from(Arc::new(config))
            })
        };
        let (grpc_tls, http_tls) = (acceptor(b"h2"), acceptor(b"http/1.1"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-receiver")
            .enable_all()
            .build()
            .expect("start the OTLP receiver runtime");
        let store = Arc::new(Store::default());

        let grpc =
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind gRPC receiver");
        let http =
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind HTTP receiver");
        let grpc_addr = grpc.local_addr().expect("gRPC receiver address");
        let http_addr = http.local_addr().expect("HTTP receiver address");
        grpc.set_nonblocking(true).expect("non-blocking listener");
        http.set_nonblocking(true).expect("non-blocking listener");

        let _entered = runtime.enter();
        let grpc = tokio::net::TcpListener::from_std(grpc).expect("gRPC listener");
        let http = tokio::net::TcpListener::from_std(http).expect("HTTP listener");

        let service = TraceServiceServer::new(GrpcTraces(Arc::clone(&store)));
        let scheme = if tls.is_some() { "https" } else { "http" };
        match grpc_tls {
            None => {
                runtime.spawn(async move {
                    let incoming = tonic::transport::server::TcpIncoming::from(grpc);
                    if let Err(error) = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming(incoming)
                        .await
                    {
                        eprintln!("OTLP gRPC receiver stopped: {error}");
                    }
                });
            }
            Some(acceptor) => {
                let incoming = tls_incoming(grpc, acceptor, Arc::clone(&store));
                runtime.spawn(async move {
                    if let Err(error) = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming(incoming)
                        .await
                    {
                        eprintln!("OTLP gRPC receiver stopped: {error}");
                    }
                });
            }
        }
        runtime.spawn(serve_http(http, Arc::clone(&store), http_tls));

        Self {
            grpc_addr,
            http_addr,
            store,
            runtime: Some(runtime),
            scheme,
        }
    }

    /// `http://127.0.0.1:<port>`: the value for `OTEL_EXPORTER_OTLP_ENDPOINT` with protocol `grpc`.
    pub fn grpc_endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.grpc_addr)
    }

    /// TLS connections on which the exporter presented a client certificate.
    pub fn client_certificates(&self) -> usize {
        self.store.client_certificates.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:<port>`: the value for `OTEL_EXPORTER_OTLP_ENDPOINT` with protocol
    /// `http/protobuf` (exporters append `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.http_addr)
    }

    /// `http://127.0.0.1:<port>/v1/traces`: for `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    pub fn http_traces_url(&self) -> String {
        format!("{}://{}/v1/traces", self.scheme, self.http_addr)
    }

    /// Export requests received over gRPC so far.
    pub fn grpc_requests(&self) -> usize {
        self.store.grpc_requests.load(Ordering::SeqCst)
    }

    /// Export requests received over HTTP so far.
    pub fn http_requests(&self) -> usize {
        self.store.http_requests.load(Ordering::SeqCst)
    }

    /// The headers of every export request so far (for gRPC: its metadata), in arrival order:
    /// to check what credentials an exporter sent.
    pub fn request_headers(&self) -> Vec<http::HeaderMap> {
        self.store
            .request_headers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Everything received, as sent.
    pub fn resource_spans(&self) -> Vec<ResourceSpans> {
        self.store
            .batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every span received, flattened, each with its resource's `service.name`.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let batches = self.store.batches.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for rs in batches.iter() {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| r.attributes.clone())
                .unwrap_or_default();
            let service_name = find(&resource, "service.name")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                let scope_name = ss
                    .scope
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                for span in &ss.spans {
                    out.push(ReceivedSpan {
                        service_name: service_name.clone(),
                        resource: resource.clone(),
                        scope_name: scope_name.clone(),
                        span: span.clone(),
                    });
                }
            }
        }
        out
    }

    /// Waits until `predicate` holds for the spans received so far; returns them.
    ///
    /// `Err` after `timeout` lists what did arrive, so a failing test says what was missing.
    pub async fn wait_for(
        &self,
        predicate: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<ReceivedSpan>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if predicate(&spans) {
                return Ok(spans);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_message(&spans, timeout));
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// [`OtlpReceiver::wait_for`] for tests without an async runtime (or inside one that may
    /// block): the wait runs on the receiver's own runtime, from a thread of its own.
    pub fn wait_for_blocking(
        &self,
        predicate: impl Fn(&[ReceivedSpan]) -> bool + Send,
        timeout: Duration,
    ) -> Result<Vec<ReceivedSpan>, String> {
        let runtime = self
            .runtime
            .as_ref()
            .expect("the receiver runs until dropped");
        std::thread::scope(|scope| {
            scope
                .spawn(|| runtime.block_on(self.wait_for(predicate, timeout)))
                .join()
                .expect("the predicate panicked")
        })
    }

    fn timeout_message(&self, spans: &[ReceivedSpan], timeout: Duration) -> String {
        let names: Vec<String> = spans
            .iter()
            .map(|s| format!("{}:{}", s.service_name, s.name()))
            .collect();
        format!(
            "condition not met within {timeout:?}; received {} spans ({} gRPC / {} HTTP requests): {names:?}",
            spans.len(),
            self.grpc_requests(),
            self.http_requests()
        )
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        // Never blocks, so dropping inside an async test is fine.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

struct GrpcTraces(Arc<Store>);

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0
            .add_headers(request.metadata().clone().into_headers());
        self.0.add(request.into_inner());
        self.0.grpc_requests.fetch_add(1, Ordering::SeqCst);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Accepted TLS connections, for tonic; counts those with a client certificate.
fn tls_incoming(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    store: Arc<Store>,
) -> tokio_stream::wrappers::ReceiverStream<
    std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, tx, store) = (acceptor.clone(), tx.clone(), Arc::clone(&store));
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    if tls.get_ref().1.peer_certificates().is_some() {
                        store.client_certificates.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = tx.send(Ok(tls)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn serve_http(
    listener: tokio::net::TcpListener,
    store: Arc<Store>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (store, tls) = (Arc::clone(&store), tls.clone());
        tokio::spawn(async move {
            let handler = Arc::clone(&store);
            let service =
                hyper::service::service_fn(move |req| handle_http(req, Arc::clone(&handler)));
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    if tls.get_ref().1.peer_certificates().is_some() {
                        store.client_certificates.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                }
            }
        });
    }
}

async fn handle_http(
    req: http::Request<Incoming>,
    store: Arc<Store>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let reply = |status: u16, body: Bytes| {
        let mut response = http::Response::new(Full::new(body));
        *response.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(response)
    };
    if req.method() != http::Method::POST || req.uri().path() != "/v1/traces" {
        return reply(404, Bytes::new());
    }
    let is_protobuf = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-protobuf"));
    if !is_protobuf {
        return reply(415, Bytes::new());
    }
    store.add_headers(req.headers().clone());
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return reply(400, Bytes::new());
    };
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            store.add(request);
            store.http_requests.fetch_add(1, Ordering::SeqCst);
            reply(
                200,
                Bytes::from(ExportTraceServiceResponse::default().encode_to_vec()),
            )
        }
        Err(_) => reply(400, Bytes::new()),
    }
}

/// An attribute value, simplified for assertions.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    /// Arrays, maps and bytes, as their debug text.
    Other(String),
}

impl AttrValue {
    fn from_proto(value: &AnyValue) -> Self {
        match &value.value {
            Some(any_value::Value::StringValue(s)) => AttrValue::Str(s.clone()),
            Some(any_value::Value::IntValue(i)) => AttrValue::Int(*i),
            Some(any_value::Value::DoubleValue(d)) => AttrValue::Double(*d),
            Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(*b),
            other => AttrValue::Other(format!("{other:?}")),
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    fn text(&self) -> String {
        match self {
            AttrValue::Str(s) | AttrValue::Other(s) => s.clone(),
            AttrValue::Int(i) => i.to_string(),
            AttrValue::Double(d) => d.to_string(),
            AttrValue::Bool(b) => b.to_string(),
        }
    }
}

fn find(attributes: &[KeyValue], key: &str) -> Option<AttrValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(AttrValue::from_proto)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One received span with its service.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service_name: String,
    /// All resource attributes.
    pub resource: Vec<KeyValue>,
    /// The instrumentation scope name.
    pub scope_name: String,
    /// The span as received.
    pub span: Span,
}

// === impl ReceivedSpan ===

impl ReceivedSpan {
    pub fn name(&self) -> &str {
        &self.span.name
    }

    /// 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// 16 lower-case hex digits.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// `None` for a root span.
    pub fn parent_span_id(&self) -> Option<String> {
        (!self.span.parent_span_id.is_empty()).then(|| hex(&self.span.parent_span_id))
    }

    pub fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }

    /// A span attribute.
    pub fn attr(&self, key: &str) -> Option<AttrValue> {
        find(&self.span.attributes, key)
    }

    /// A span attribute that is a string.
    pub fn attr_str(&self, key: &str) -> Option<String> {
        self.attr(key).and_then(|v| v.as_str().map(str::to_owned))
    }

    /// A resource attribute.
    pub fn resource_attr(&self, key: &str) -> Option<AttrValue> {
        find(&self.resource, key)
    }

    /// `(trace_id, span_id)` of every link.
    pub fn links(&self) -> Vec<(String, String)> {
        self.span
            .links
            .iter()
            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
            .collect()
    }

    /// Whether the span's status is ERROR.
    pub fn is_error(&self) -> bool {
        self.span.status.as_ref().is_some_and(|s| s.code == 2)
    }

    /// Whether `needle` occurs in the name or any attribute value of the span, its events, its
    /// links or its resource — for "this secret never reached the trace" assertions.
    pub fn contains_text(&self, needle: &str) -> bool {
        let in_attrs = |attrs: &[KeyValue]| {
            attrs.iter().any(|kv| {
                kv.key.contains(needle)
                    || kv
                        .value
                        .as_ref()
                        .is_some_and(|v| AttrValue::from_proto(v).text().contains(needle))
            })
        };
        self.span.name.contains(needle)
            || in_attrs(&self.span.attributes)
            || in_attrs(&self.resource)
            || self
                .span
                .events
                .iter()
                .any(|e| e.name.contains(needle) || in_attrs(&e.attributes))
            || self.span.links.iter().any(|l| in_attrs(&l.attributes))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::ScopeSpans;

    use super::*;

    fn request(service: &str, span_name: &str) -> ExportTraceServiceRequest {
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", service)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![0xab; 16],
                        span_id: vec![0xcd; 8],
                        name: span_name.into(),
                        kind: SpanKind::Server as i32,
                        attributes: vec![kv("http.route", "/x")],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[tokio::test]
    async fn receives_over_grpc() {
        let receiver = OtlpReceiver::start();
        let mut client = TraceServiceClient::connect(receiver.grpc_endpoint())
            .await
            .unwrap();
        client.export(request("svc-a", "GET /x")).await.unwrap();

        let spans = receiver
            .wait_for(|s| !s.is_empty(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.service_name, "svc-a");
        assert_eq!(span.name(), "GET /x");
        assert_eq!(span.trace_id(), "ab".repeat(16));
        assert_eq!(span.span_id(), "cd".repeat(8));
        assert_eq!(span.parent_span_id(), None);
        assert_eq!(span.kind(), SpanKind::Server);
        assert_eq!(span.attr_str("http.route").as_deref(), Some("/x"));
        assert!(span.contains_text("/x"));
        assert!(!span.contains_text("Bearer"));
        assert_eq!((receiver.grpc_requests(), receiver.http_requests()), (1, 0));
    }

    #[tokio::test]
    async fn receives_over_http_and_rejects_junk() {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;

        let receiver = OtlpReceiver::start();
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let post = |body: Vec<u8>, content_type: &'static str| {
            http::Request::post(receiver.http_traces_url())
                .header("content-type", content_type)
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        };
        let ok = client
            .request(post(
                request("svc-b", "POST /y").encode_to_vec(),
                "application/x-protobuf",
            ))
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        let junk = client
            .request(post(vec![0xff, 0xff, 0xff], "application/x-protobuf"))
            .await
            .unwrap();
        assert_eq!(junk.status(), 400);
        let json = client
            .request(post(b"{}".to_vec(), "application/json"))
            .await
            .unwrap();
        assert_eq!(json.status(), 415);

        let spans = receiver
            .wait_for(|s| !s.is_empty(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].service_name, "svc-b");
        assert_eq!((receiver.grpc_requests(), receiver.http_requests()), (0, 1));
    }

    #[test]
    fn wait_for_reports_what_arrived_on_timeout() {
        let receiver = OtlpReceiver::start();
        let error = receiver
            .wait_for_blocking(|s| !s.is_empty(), Duration::from_millis(100))
            .unwrap_err();
        assert!(error.contains("received 0 spans"), "{error}");
    }
}
