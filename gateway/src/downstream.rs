//! Connection hygiene on the public listeners: what Pingora leaves to the application.
//!
//! - **A deadline for every request head** (`server.request_head_timeout_ms`). Pingora times out
//!   each *read*, so a client that sends one byte at a time is never timed out (slowloris).
//!   [`Guarded`] wraps each HTTP/1 connection: from the moment a request head is due (the
//!   connection opened, or the first byte after a response) it must be complete within the
//!   deadline, or the connection is closed.
//! - **A cap on open connections** (`server.max_connections`): past it a new connection is
//!   closed at once, logged (at most once a second) and counted, so the process never runs out
//!   of file descriptors and every connection already open keeps working.
//! - Idle keep-alive connections are closed after `server.keepalive_timeout_secs` (set per
//!   request in the proxy: Pingora's default for HTTP/1.1 is to wait forever).
//! - **Idle connections hold little memory.** Pingora's HTTP/1 keep-alive loop waits for the
//!   next request inside its per-request future, which is sized for the whole proxy pipeline
//!   (every phase's state, the request context) and holds a 4 KiB head buffer. [`Hygiene`] runs
//!   that loop itself: between requests it waits for the next request with only the
//!   connection and a small future alive, and hands the connection, with the bytes that
//!   arrived, to Pingora once the client sends (see docs/benchmarks.md, "Idle keep-alive
//!   connections").
//!
//! HTTP/2 connections (ALPN `h2` on the TLS listener) are counted against the cap but not
//! wrapped: their framing has its own flow control and Pingora its own idle timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// The connection metrics (handles onto the gateway's registry).
#[derive(Clone, Default)]
pub(crate) struct ConnectionMetrics {
    /// `gateway_open_connections`.
    pub(crate) open: Gauge,
    /// `gateway_connections_refused_total`.
    pub(crate) refused: Counter,
    /// `gateway_request_head_timeouts_total`.
    pub(crate) head_timeouts: Counter,
}

/// The limits [`Hygiene`] enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// How long a request head may take once it is due.
    pub(crate) head_timeout: Duration,
    /// Most connections open at once on the public listeners.
    pub(crate) max_connections: usize,
}

/// How long an idle keep-alive connection is kept: read at each wait, so a reload applies.
pub(crate) type IdleTimeout = Box<dyn Fn() -> Duration + Send + Sync>;

/// Wraps the proxy application: caps connections, guards every HTTP/1 connection and runs its
/// keep-alive loop.
pub(crate) struct Hygiene<A> {
    inner: Arc<A>,
    limits: Limits,
    idle_timeout: IdleTimeout,
    permits: Arc<Semaphore>,
    metrics: ConnectionMetrics,
    /// When the last "connection limit reached" line was logged (ms since start).
    last_warned_ms: AtomicU64,
    started: Instant,
}

impl<A> Hygiene<A> {
    pub(crate) fn new(
        inner: A,
        limits: Limits,
        idle_timeout: IdleTimeout,
        metrics: ConnectionMetrics,
    ) -> Self {
        Hygiene {
            inner: Arc::new(inner),
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            idle_timeout,
            metrics,
            last_warned_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn refuse(&self) {
        self.metrics.refused.inc();
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        if (now.saturating_sub(last) >= 1000 || last == 0)
            && self
                .last_warned_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                max_connections = self.limits.max_connections,
                "Connection limit reached; closing new connections until others finish."
            );
        }
    }
}

#[async_trait]
impl<A> ServerApp for Hygiene<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A connection handed back by a custom protocol is already guarded, holding its permit.
        if stream.as_any().is::<Guarded>() {
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.refuse();
            return None;
        };
        self.metrics.open.inc();
        let guarded = Box::new(Guarded::new(
            stream,
            self.limits.head_timeout,
            permit,
            self.metrics.clone(),
        ));
        let options = self.inner.server_options();
        if !guarded.h1 || options.is_some_and(|o| o.h2c || o.force_custom) {
            // HTTP/2 (ALPN h2), h2c or a custom protocol: Pingora's own handling.
            return ServerApp::process_new(&self.inner, guarded, shutdown).await;
        }
        self.serve_http1(guarded, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

impl<A> Hygiene<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// One HTTP/1 connection, request after request: what Pingora's own loop does (its
    /// defaults for the first request, the previous request's settings for the next), except
    /// that between requests only `conn` and this future are alive, not Pingora's request
    /// future. The gateway does not enable HTTP/1.1 pipelining, so a reused connection never
    /// carries bytes of the next request that were read already: waiting for the socket is
    /// right.
    async fn serve_http1(&self, mut conn: Box<Guarded>, shutdown: &ShutdownWatch) {
        let mut settings = None;
        loop {
            let mut session = ServerSession::new_http1(conn);
            match settings.take() {
                Some(previous) => pingora_core::apps::HttpPersistentSettings::apply_to_session(
                    previous,
                    &mut session,
                ),
                None => {
                    // Pingora's defaults; the proxy sets the policy's value on every request.
                    session.set_keepalive((!*shutdown.borrow()).then_some(60));
                    session.set_keepalive_reuses_remaining(
                        self.inner
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            let Some(reused) = self.inner.process_new_http(session, shutdown).await else {
                return;
            };
            let (stream, next) = reused.consume();
            let Ok(back) = stream.into_any().downcast::<Guarded>() else {
                return;
            };
            conn = back;
            settings = next;
            if !conn.wait_for_request((self.idle_timeout)(), shutdown).await {
                return;
            }
        }
    }
}

/// Where the request on a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A head is due: it must be complete by the deadline (armed from the first byte of a
    /// kept-alive request, from the accept for the first).
    Head,
    /// The head arrived; the body and the response follow.
    Rest,
}

/// An HTTP/1 connection with a deadline on each request head, and a permit of the
/// connection cap released when it closes.
pub(crate) struct Guarded {
    inner: Stream,
    phase: Phase,
    h1: bool,
    head_timeout: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The last bytes read, to find `\r\n\r\n` across reads.
    tail: [u8; 3],
    /// The start of the next request, read while waiting for it ([`Guarded::wait_for_request`])
    /// and not yet handed to Pingora.
    stash: Option<Bytes>,
    _permit: OwnedSemaphorePermit,
    metrics: ConnectionMetrics,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("phase", &self.phase)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Guarded {
    fn new(
        inner: Stream,
        head_timeout: Duration,
        permit: OwnedSemaphorePermit,
        metrics: ConnectionMetrics,
    ) -> Self {
        let h1 = !matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        Guarded {
            inner,
            phase: Phase::Head,
            h1,
            head_timeout,
            deadline: h1.then(|| Box::pin(tokio::time::sleep(head_timeout))),
            tail: [0; 3],
            stash: None,
            _permit: permit,
            metrics,
        }
    }

    /// Scans newly read bytes for the end of the head (a blank line).
    fn saw(&mut self, bytes: &[u8]) {
        if self.phase != Phase::Head || bytes.is_empty() {
            return;
        }
        // A blank line inside these bytes, or one that straddles the previous read.
        let mut joint = [0u8; 6];
        joint[..3].copy_from_slice(&self.tail);
        let k = bytes.len().min(3);
        joint[3..3 + k].copy_from_slice(&bytes[..k]);
        let done = has_blank_line(&joint[..3 + k]) || has_blank_line(bytes);
        if bytes.len() >= 3 {
            self.tail.copy_from_slice(&bytes[bytes.len() - 3..]);
        } else {
            self.tail.rotate_left(bytes.len());
            self.tail[3 - bytes.len()..].copy_from_slice(bytes);
        }
        if done {
            self.phase = Phase::Rest;
            self.deadline = None;
            self.tail = [0; 3];
        } else if self.deadline.is_none() {
            // First bytes of a kept-alive request, and the head is not all here: it is due
            // from now. (A head that arrives in one read, the usual case, needs no timer.)
            self.deadline = Some(Box::pin(tokio::time::sleep(self.head_timeout)));
        }
    }
}

impl Guarded {
    /// Waits, between two requests, for the next one to start arriving, and keeps what arrived
    /// for Pingora's first read. False when the connection should close instead: the client
    /// closed it or failed, `idle` passed first, or the server is shutting down.
    ///
    /// One `read(2)` takes in everything that has arrived (usually the whole head), into this
    /// thread's scratch buffer: the waiting future holds no buffer while the connection is
    /// idle, and Pingora does not read the socket again for what is already here.
    async fn wait_for_request(&mut self, idle: Duration, shutdown: &ShutdownWatch) -> bool {
        if *shutdown.borrow() {
            return false;
        }
        let mut shutdown = shutdown.clone();
        let inner = &mut self.inner;
        // From the inner stream: the bytes are replayed, and seen by `saw`, when Pingora reads.
        let read = std::future::poll_fn(|cx| poll_read_arrived(Pin::new(&mut *inner), cx));
        let arrived = tokio::select! {
            read = tokio::time::timeout(idle, read) => match read {
                Ok(Ok(bytes)) if !bytes.is_empty() => Some(bytes),
                _ => None,
            },
            _ = shutdown.changed() => None,
        };
        let got = arrived.is_some();
        self.stash = arrived;
        got
    }

    /// After a write: once a response goes out, the next bytes read start the next head.
    fn wrote(&mut self, written: &Poll<std::io::Result<usize>>) {
        if self.h1 && matches!(written, Poll::Ready(Ok(n)) if *n > 0) && self.phase == Phase::Rest {
            self.phase = Phase::Head;
            self.deadline = None;
        }
    }
}

/// The most [`Guarded::wait_for_request`] reads at once: Pingora's own first read of a head.
const ARRIVED_READ_BYTES: usize = 4096;

/// Reads what has arrived on `stream` and returns a copy of just those bytes (empty at end of
/// stream). The read goes into a per-thread scratch buffer, so a pending wait holds no buffer.
fn poll_read_arrived(
    stream: Pin<&mut Stream>,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<Bytes>> {
    fn read_into(
        stream: Pin<&mut Stream>,
        cx: &mut Context<'_>,
        scratch: &mut [u8],
    ) -> Poll<std::io::Result<Bytes>> {
        let mut buf = ReadBuf::new(scratch);
        match stream.poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(Bytes::copy_from_slice(buf.filled()))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
    thread_local! {
        static SCRATCH: std::cell::RefCell<Box<[u8]>> =
            std::cell::RefCell::new(vec![0; ARRIVED_READ_BYTES].into_boxed_slice());
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => read_into(stream, cx, &mut scratch),
        // Not reached (nothing polls a second wait from inside a read); stay correct anyway.
        Err(_) => read_into(stream, cx, &mut vec![0; ARRIVED_READ_BYTES]),
    })
}

/// Whether `bytes` hold the blank line that ends a head (CRLF CRLF, or bare LF LF).
fn has_blank_line(bytes: &[u8]) -> bool {
    // Every `\r\n\r\n` or `\n\n` starts at a line feed: look only there (memchr finds them
    // many bytes at a time; a head with a long token is a few hundred bytes of one line).
    memchr::memchr_iter(b'\n', bytes).any(|i| match bytes.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => i > 0 && bytes[i - 1] == b'\r' && bytes.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.h1 {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        if let Some(stash) = &mut this.stash {
            // What arrived while waiting: handed over without another read of the socket
            // (Pingora reads again if the head is not complete yet).
            let n = stash.len().min(buf.remaining());
            buf.put_slice(&stash.split_to(n));
            if stash.is_empty() {
                this.stash = None;
            }
            this.saw(&buf.filled()[before..]);
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.saw(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut() {
                    if this.phase == Phase::Head && deadline.as_mut().poll(cx).is_ready() {
                        this.metrics.head_timeouts.inc();
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "request head not complete in time",
                        )));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&written);
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.metrics.open.dec();
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora_core::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora_core::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: a `\r\n\r\n` or a `\n\n` anywhere.
    fn blank_line_by_definition(bytes: &[u8]) -> bool {
        bytes.windows(4).any(|w| w == b"\r\n\r\n") || bytes.windows(2).any(|w| w == b"\n\n")
    }

    #[test]
    fn a_blank_line_is_found_exactly_where_the_definition_finds_one() {
        // Every string of up to 8 bytes over `a`, `\r` and `\n`.
        let alphabet = [b'a', b'\r', b'\n'];
        let mut checked = 0;
        for len in 0..=8u32 {
            for mut n in 0..3usize.pow(len) {
                let mut s = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    s.push(alphabet[n % 3]);
                    n /= 3;
                }
                assert_eq!(has_blank_line(&s), blank_line_by_definition(&s), "{s:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, (0..=8).map(|l| 3usize.pow(l)).sum::<usize>());
        // A long head, with its end and without.
        let mut head = b"GET / HTTP/1.1\r\nAuthorization: Bearer ".to_vec();
        head.extend(std::iter::repeat_n(b'x', 900));
        assert!(!has_blank_line(&head));
        head.extend_from_slice(b"\r\n\r\n");
        assert!(has_blank_line(&head));
    }
}
