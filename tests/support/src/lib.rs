//! Fixtures shared by Vantage's integration tests.
//!
//! # How to use
//!
//! ```no_run
//! # async fn test() -> Result<(), String> {
//! use std::time::Duration;
//! use test_support::OtlpReceiver;
//!
//! let receiver = OtlpReceiver::start();
//! // Point the binary under test at it:
//! //   OTEL_EXPORTER_OTLP_ENDPOINT=<receiver.grpc_endpoint()>                  (grpc)
//! //   OTEL_EXPORTER_OTLP_ENDPOINT=<receiver.http_endpoint()> + http/protobuf  (HTTP)
//! let spans = receiver
//!     .wait_for(|spans| spans.iter().any(|s| s.name() == "GET /health"), Duration::from_secs(10))
//!     .await?;
//! assert_eq!(spans[0].service_name, "gateway");
//!
//! test_support::require_rabbitmq(&test_support::amqp_url())?; // fails (never skips) without a broker
//! let queue = test_support::unique_name("orders-test");
//!
//! # let body = String::new();
//! // GET /metrics, then:
//! let metrics = test_support::parse_openmetrics(&body)?;
//! assert!(metrics.with_exemplars().any(|s| s.name == "http_server_request_duration_seconds_bucket"));
//! # Ok(()) }
//! ```
//!
//! Kept small on purpose: every integration test compiles it.

mod http;
mod openmetrics;
mod otlp;
mod rabbitmq;

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};

pub use http::wait_http_ok;
pub use openmetrics::{parse_openmetrics, Exemplar, Family, Labels, OpenMetrics, Sample};
pub use otlp::{AttrValue, OtlpReceiver, ReceivedSpan, SpanKind};
pub use rabbitmq::{amqp_url, require_rabbitmq, DEFAULT_AMQP_URL};

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Prefer binding `127.0.0.1:0` yourself when the code under test accepts a listener; this is for
/// binaries that only take a port number.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind 127.0.0.1:0")
}

/// `prefix` plus a suffix unique to this process and call, for exchange, queue and file names
/// that must not collide between parallel test runs.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ() {
        let a = unique_name("q");
        let b = unique_name("q");
        assert_ne!(a, b);
        assert!(a.starts_with("q-"));
    }

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("port should be free");
    }
}
