//! The API listener: mutual TLS with the service's SVID (`mtls` mode), or plain HTTP from a
//! mesh sidecar (`linkerd`, `istio`), HTTP/1.1, until shutdown; then open connections finish
//! their requests (bounded).
//!
//! In `mtls` mode every connection must complete a handshake in which the client presents an
//! SVID of the trust domain ([`identity::tls::server_config`], which reads the current SVID per
//! handshake, so a rotated one serves the next connection while open ones keep theirs). A
//! client without a certificate, with one from another CA or an expired one, or plain HTTP,
//! gets no HTTP at all: the connection closes and `shop_tls_handshake_failures_total{reason}`
//! counts it. What the handshake established ([`ConnInfo`]) goes with every request on the
//! connection, for [`crate::authz`] and the SERVER span.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::Response;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use identity::tls::{HandshakeFailure, PeerTls};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::peer::ConnInfo;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the API port speaks.
#[derive(Clone)]
pub(crate) enum Transport {
    /// Mutual TLS; see the module docs.
    Mtls(tokio_rustls::TlsAcceptor),
    /// Plain HTTP, for a sidecar in front (mesh modes). Whom to believe is [`crate::peer`]'s
    /// concern.
    Plain,
}

impl Transport {
    /// `url.scheme` of SERVER spans.
    pub(crate) fn scheme(&self) -> &'static str {
        match self {
            Transport::Mtls(_) => "https",
            Transport::Plain => "http",
        }
    }
}

/// Labels of `shop_tls_handshake_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    reason: &'static str,
}

/// `shop_tls_handshake_failures_total{reason}`: API connections refused in the handshake.
#[derive(Debug, Clone, Default)]
pub(crate) struct HandshakeMetrics {
    failures: Family<FailureLabels, Counter>,
}

impl HandshakeMetrics {
    pub(crate) fn register(registry: &observability::metrics::MetricsRegistry) -> Self {
        let m = HandshakeMetrics::default();
        for reason in HandshakeFailure::ALL {
            let _ = m.failures.get_or_create(&FailureLabels {
                reason: reason.as_str(),
            });
        }
        registry.register(
            "shop_tls_handshake_failures",
            "API connections refused in the TLS handshake, by reason (no_client_certificate, unknown_issuer, expired, not_tls, ...)",
            m.failures.clone(),
        );
        m
    }

    fn failed(&self, reason: HandshakeFailure) {
        self.failures
            .get_or_create(&FailureLabels {
                reason: reason.as_str(),
            })
            .inc();
    }
}

/// Serves `app` on `listener` over `transport` until `shutdown`, then waits up to `drain` for
/// open connections to finish their requests.
pub(crate) async fn serve<S>(
    listener: TcpListener,
    transport: Transport,
    app: S,
    metrics: HandshakeMetrics,
    shutdown: CancellationToken,
    drain: Duration,
) where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "Accepting an API connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        let (app, watcher) = (app.clone(), graceful.watcher());
        match &transport {
            Transport::Plain => {
                let conn = ConnInfo {
                    remote,
                    local,
                    tls: None,
                };
                tokio::spawn(connection(TokioIo::new(tcp), conn, app, watcher));
            }
            Transport::Mtls(acceptor) => {
                let (acceptor, metrics, shutdown) =
                    (acceptor.clone(), metrics.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let accepted = tokio::select! {
                        () = shutdown.cancelled() => return,
                        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => r,
                    };
                    let tls = match accepted {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            let reason = HandshakeFailure::classify_io(&error);
                            metrics.failed(reason);
                            tracing::debug!(%remote, %reason, "Refused an API connection in the TLS handshake.");
                            return;
                        }
                        Err(_) => {
                            metrics.failed(HandshakeFailure::Timeout);
                            return;
                        }
                    };
                    let conn = ConnInfo {
                        remote,
                        local,
                        tls: Some(PeerTls::of(tls.get_ref().1)),
                    };
                    connection(TokioIo::new(tls), conn, app, watcher).await;
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("API connections still open after the drain timeout; closing them.");
    }
}

/// Serves HTTP/1.1 on one connection; the requests carry `conn`.
async fn connection<I, S>(io: TokioIo<I>, conn: ConnInfo, app: S, watcher: Watcher)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let remote: SocketAddr = conn.remote;
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(conn.clone());
        req.extensions_mut().insert(ConnectInfo(remote));
        tower::ServiceExt::oneshot(app.clone(), req)
    });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(io, service);
    if let Err(error) = watcher.watch(http).await {
        tracing::debug!(%error, %remote, "API connection ended with an error.");
    }
}
