//! A counting OTLP trace receiver for benchmarks.
//!
//! `bench/gateway.sh` points the gateway's exporter here to prove that spans really leave the
//! process ("spans received") without a collector's cost or memory: every export request is
//! decoded as an `ExportTraceServiceRequest` (gRPC through tonic, HTTP/protobuf through prost),
//! its spans are counted, and the request is dropped. Nothing is stored, so memory stays flat
//! however long the run.
//!
//! Use [`Sink::bind`] then [`Sink::serve`]; read [`Counts`] from [`Sink::counts`] or over HTTP
//! with `GET /stats` on the HTTP listener (one JSON object).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
use prost::Message as _;
use tokio::net::TcpListener;

/// What the sink has received since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Export requests decoded from OTLP/gRPC.
    pub grpc_requests: u64,
    /// Export requests decoded from OTLP/HTTP (protobuf).
    pub http_requests: u64,
    /// Spans in all decoded export requests.
    pub spans: u64,
    /// Bytes of encoded HTTP export bodies (gRPC bodies are decoded by tonic and not counted).
    pub http_bytes: u64,
    /// HTTP export requests refused: wrong content type or a body that is not an
    /// `ExportTraceServiceRequest`.
    pub rejected: u64,
}

impl Counts {
    /// One JSON object, the body of `GET /stats`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "grpc_requests": self.grpc_requests,
            "http_requests": self.http_requests,
            "spans": self.spans,
            "http_bytes": self.http_bytes,
            "rejected": self.rejected,
        })
        .to_string()
    }
}

#[derive(Default)]
struct Counters {
    grpc_requests: AtomicU64,
    http_requests: AtomicU64,
    spans: AtomicU64,
    http_bytes: AtomicU64,
    rejected: AtomicU64,
}

impl Counters {
    fn add_spans(&self, request: &ExportTraceServiceRequest) {
        let spans: usize = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Counts {
        Counts {
            grpc_requests: self.grpc_requests.load(Ordering::Relaxed),
            http_requests: self.http_requests.load(Ordering::Relaxed),
            spans: self.spans.load(Ordering::Relaxed),
            http_bytes: self.http_bytes.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

/// The two bound listeners and the shared counters.
pub struct Sink {
    grpc: TcpListener,
    http: TcpListener,
    counters: Arc<Counters>,
}

/// A handle that reads the counters while [`Sink::serve`] runs.
#[derive(Clone)]
pub struct CountsHandle(Arc<Counters>);

impl CountsHandle {
    /// The counts so far.
    pub fn get(&self) -> Counts {
        self.0.snapshot()
    }
}

impl Sink {
    /// Binds the OTLP/gRPC and OTLP/HTTP listeners (port 0 picks a free port).
    pub async fn bind(grpc: SocketAddr, http: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            grpc: TcpListener::bind(grpc).await?,
            http: TcpListener::bind(http).await?,
            counters: Arc::default(),
        })
    }

    /// The bound gRPC address (`OTEL_EXPORTER_OTLP_ENDPOINT=http://<this>` with protocol `grpc`).
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The bound HTTP address (exporters append `/v1/traces`; `GET /stats` reads the counts).
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// Reads the counters from elsewhere.
    pub fn counts(&self) -> CountsHandle {
        CountsHandle(Arc::clone(&self.counters))
    }

    /// Serves both listeners until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let service = TraceServiceServer::new(GrpcTraces(Arc::clone(&self.counters)))
            // The SDK batches up to 512 spans per export; leave room for bigger batches.
            .max_decoding_message_size(64 << 20);
        let grpc = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(self.grpc));
        let http = serve_http(self.http, Arc::clone(&self.counters));
        tokio::select! {
            result = grpc => result.map_err(|e| anyhow::anyhow!("OTLP/gRPC server: {e}")),
            () = http => Ok(()),
            () = shutdown => Ok(()),
        }
    }
}

struct GrpcTraces(Arc<Counters>);

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add_spans(request.get_ref());
        self.0.grpc_requests.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn serve_http(listener: TcpListener, counters: Arc<Counters>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| handle_http(req, Arc::clone(&counters)));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(
    status: http::StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

async fn handle_http(
    req: http::Request<Incoming>,
    counters: Arc<Counters>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    use http::StatusCode;
    const PROTOBUF: &str = "application/x-protobuf";
    match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/stats") => {
            let body = Bytes::from(counters.snapshot().to_json());
            return Ok(reply(StatusCode::OK, "application/json", body));
        }
        (&http::Method::POST, "/v1/traces") => {}
        _ => return Ok(reply(StatusCode::NOT_FOUND, "text/plain", Bytes::new())),
    }
    let is_protobuf = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROTOBUF));
    if !is_protobuf {
        counters.rejected.fetch_add(1, Ordering::Relaxed);
        let body = Bytes::from_static(b"only application/x-protobuf is accepted");
        return Ok(reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "text/plain",
            body,
        ));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Ok(reply(StatusCode::BAD_REQUEST, "text/plain", Bytes::new()));
        }
    };
    let len = body.len() as u64;
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            counters.add_spans(&request);
            counters.http_requests.fetch_add(1, Ordering::Relaxed);
            counters.http_bytes.fetch_add(len, Ordering::Relaxed);
            let body = Bytes::from(ExportTraceServiceResponse::default().encode_to_vec());
            Ok(reply(StatusCode::OK, PROTOBUF, body))
        }
        Err(e) => {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            let body = Bytes::from(format!("not an ExportTraceServiceRequest: {e}"));
            Ok(reply(StatusCode::BAD_REQUEST, "text/plain", body))
        }
    }
}
