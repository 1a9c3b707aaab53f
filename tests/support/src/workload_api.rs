//! A SPIFFE Workload API endpoint for tests, in the place of a SPIRE agent (there is no SPIRE
//! binary here): gRPC over HTTP/2 on a Unix socket, `FetchX509SVID` only, speaking the
//! Workload API's wire format so the real client (the `spiffe` crate, through tonic) is what
//! the tests exercise.
//!
//! Like an agent it refuses a call without the `workload.spiffe.io: true` header, answers
//! `PermissionDenied` ("no identity issued") until the test issues an SVID, keeps every stream
//! open and pushes each newly issued SVID down all of them (rotation), and can drop every
//! stream at once (an agent restart).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// `X509SVIDResponse` of the Workload API (the fields a test needs).
#[derive(Clone, PartialEq, prost::Message)]
struct X509SvidResponse {
    #[prost(message, repeated, tag = "1")]
    svids: Vec<X509Svid>,
}

/// `X509SVID` of the Workload API.
#[derive(Clone, PartialEq, prost::Message)]
struct X509Svid {
    #[prost(string, tag = "1")]
    spiffe_id: String,
    /// DER certificates, leaf first, concatenated.
    #[prost(bytes = "vec", tag = "2")]
    x509_svid: Vec<u8>,
    /// PKCS#8 DER.
    #[prost(bytes = "vec", tag = "3")]
    x509_svid_key: Vec<u8>,
    /// DER CA certificates, concatenated.
    #[prost(bytes = "vec", tag = "4")]
    bundle: Vec<u8>,
}

type Body = BoxBody<Bytes, Infallible>;
type Stream = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

#[derive(Default)]
struct State {
    /// The gRPC message frame of the SVID issued last.
    current: Mutex<Option<Bytes>>,
    streams: Mutex<Vec<Stream>>,
    calls: AtomicUsize,
    refused: AtomicUsize,
}

/// An in-process Workload API on a Unix socket in a temporary directory; stops when dropped.
pub struct WorkloadApiServer {
    socket: PathBuf,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl WorkloadApiServer {
    /// Listens on `<tempdir>/agent.sock`, with no SVID issued yet.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a directory for the agent socket");
        let socket = dir.path().join("agent.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("workload-api")
            .enable_all()
            .build()
            .expect("start the Workload API runtime");
        let listener = {
            let _entered = runtime.enter();
            tokio::net::UnixListener::bind(&socket).expect("bind the Workload API socket")
        };
        let state = Arc::new(State::default());
        runtime.spawn(serve(listener, Arc::clone(&state)));
        WorkloadApiServer {
            socket,
            state,
            runtime: Some(runtime),
            _dir: dir,
        }
    }

    /// `unix:///…/agent.sock`: the value for `SPIFFE_ENDPOINT_SOCKET`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Makes this the workload's SVID (PEM chain leaf first, PEM PKCS#8 key, PEM bundle) and
    /// sends it down every open stream, as an agent does on rotation.
    pub fn issue(&self, spiffe_id: &str, cert_pem: &str, key_pem: &str, bundle_pem: &str) {
        let ders = |pem: &str| -> Vec<u8> {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .map(|c| c.expect("a PEM certificate").to_vec())
                .collect::<Vec<_>>()
                .concat()
        };
        let key = match PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("a PEM key") {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            _ => panic!("the Workload API carries PKCS#8 keys"),
        };
        let message = X509SvidResponse {
            svids: vec![X509Svid {
                spiffe_id: spiffe_id.to_owned(),
                x509_svid: ders(cert_pem),
                x509_svid_key: key,
                bundle: ders(bundle_pem),
            }],
        };
        let frame = grpc_frame(&message);
        // Under the streams' lock, as `answer` reads the current SVID: a stream opening now
        // either starts with this SVID or is in the list it is sent to.
        let mut streams = self.state.streams.lock().unwrap();
        *self.state.current.lock().unwrap() = Some(frame.clone());
        streams.retain(|stream| stream.try_send(Ok(Frame::data(frame.clone()))).is_ok());
    }

    /// Ends every open stream with `UNAVAILABLE`, as a restarting agent does; clients must
    /// reconnect.
    pub fn close_streams(&self) {
        for stream in self.state.streams.lock().unwrap().drain(..) {
            let _ = stream.try_send(Ok(Frame::trailers(status(14, "agent restarting"))));
        }
    }

    /// `FetchX509SVID` calls that carried the security header.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Calls refused for a missing `workload.spiffe.io` header.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }
}

impl Drop for WorkloadApiServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn serve(listener: tokio::net::UnixListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(answer(&state, req)) }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(state: &State, req: Request<Incoming>) -> Response<Body> {
    if req
        .headers()
        .get("workload.spiffe.io")
        .map(|v| v.as_bytes())
        != Some(b"true")
    {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return trailers_only(3, "security header missing from request");
    }
    if req.uri().path() != "/SpiffeWorkloadAPI/FetchX509SVID" {
        return trailers_only(12, "only FetchX509SVID is served here");
    }
    // The streams' lock first (see `issue`); the call is counted once the stream is listed.
    let mut streams = state.streams.lock().unwrap();
    let Some(current) = state.current.lock().unwrap().clone() else {
        state.calls.fetch_add(1, Ordering::SeqCst);
        return trailers_only(7, "no identity issued");
    };
    let (tx, rx) = mpsc::channel(16);
    tx.try_send(Ok(Frame::data(current)))
        .expect("a new stream has room");
    streams.push(tx);
    state.calls.fetch_add(1, Ordering::SeqCst);
    drop(streams);
    Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(ReceiverStream::new(rx)).boxed())
        .expect("a valid response")
}

/// A gRPC response with no messages: the status in the headers.
fn trailers_only(code: u32, message: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.extend(status(code, message));
    response
}

fn status(code: u32, message: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("grpc-status", HeaderValue::from(code));
    headers.insert(
        "grpc-message",
        HeaderValue::from_str(message).expect("an ASCII message"),
    );
    headers
}

/// gRPC's length-prefixed message: no compression, 4-byte big-endian length, protobuf.
fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + body.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(body.len()).expect("a small message"));
    frame.put_slice(&body);
    frame.freeze()
}
