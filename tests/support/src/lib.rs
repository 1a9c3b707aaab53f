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
//! let logs = test_support::scratch_dir("orders-test"); // a new directory under /tmp
//! let users = test_support::binary("users"); // every workspace binary, built once per process
//!
//! # let body = String::new();
//! // GET /metrics, then:
//! let metrics = test_support::parse_openmetrics(&body)?;
//! assert!(metrics.with_exemplars().any(|s| s.name == "http_server_request_duration_seconds_bucket"));
//! # Ok(()) }
//! ```
//!
//! Kept small on purpose: every integration test compiles it. Processes are started and stopped
//! with `stack::supervisor` (one harness for `stack`, the end-to-end and the gateway tests); the
//! broker check is `messaging::probe`.

mod binaries;
mod broker_node;
mod consumer_harness;
mod http;
mod openmetrics;
mod otlp;
mod rabbitmq;
mod tcp;
mod workload_api;

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub use binaries::{binaries, binary, workspace_root};
pub use broker_node::{rabbitmqctl, BrokerNode, Frozen, RABBITMQCTL_DEADLINE};
pub use consumer_harness::ConsumerHarness;
pub use http::wait_http_ok;
pub use openmetrics::{
    parse_openmetrics, sample_suffixes, Exemplar, Family, Labels, OpenMetrics, Sample,
};
pub use otlp::{AttrValue, OtlpReceiver, ReceivedSpan, SpanKind};
pub use rabbitmq::{amqp_url, require_rabbitmq, DEFAULT_AMQP_URL};
pub use tcp::OneShotServer;
pub use workload_api::WorkloadApiServer;

/// Lowest and highest port handed out by [`free_ports`]: below Linux's ephemeral range
/// (32768–60999), which outgoing connections and `bind(0)` servers draw from at random.
const PORT_LOW: u16 = 20_000;
const PORT_HIGH: u16 = 32_000;

/// `n` consecutive TCP ports on 127.0.0.1 that are free right now.
///
/// For binaries that only take a port number; prefer binding `127.0.0.1:0` yourself when the
/// code under test accepts a listener. Ports come from below the ephemeral range, so a port
/// handed out here is not taken a moment later by some client's outgoing connection or another
/// test's `bind(0)`; calls in one process never hand out the same port twice (until the range
/// wraps), and each process starts at a different point so parallel test binaries rarely meet.
pub fn free_ports(n: u16) -> Vec<u16> {
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    assert!(n > 0 && n < 100, "free_ports({n}): ask for 1..100 ports");
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let span = u32::from(PORT_HIGH - PORT_LOW);
    let mut base = next.unwrap_or(PORT_LOW + (std::process::id() % span) as u16);
    let mut tried = 0u32;
    loop {
        if base + n > PORT_HIGH {
            base = PORT_LOW;
        }
        let ports: Vec<u16> = (base..base + n).collect();
        if ports.iter().all(|p| port_is_free(*p)) {
            *next = Some(base + n);
            return ports;
        }
        base += n;
        tried += u32::from(n);
        assert!(
            tried < 2 * span,
            "no {n} consecutive free ports in {PORT_LOW}..{PORT_HIGH}"
        );
    }
}

/// One TCP port on 127.0.0.1 that is free right now; see [`free_ports`].
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// Whether 127.0.0.1:`port` can be bound right now (nothing listens there).
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
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

/// A new, empty directory under the system temp dir, named `prefix` plus a suffix from
/// [`unique_name`]: for logs, databases and configs that must not collide between tests or runs.
/// Left in place afterwards, so a failed test's files can be read.
pub fn scratch_dir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique_name(prefix));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("creating scratch dir {}: {e}", dir.display()));
    dir
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
    fn scratch_dirs_are_new_and_empty() {
        let a = scratch_dir("scratch");
        let b = scratch_dir("scratch");
        assert_ne!(a, b);
        assert!(a.is_dir() && b.is_dir());
        assert_eq!(std::fs::read_dir(&a).unwrap().count(), 0);
    }

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        assert!((PORT_LOW..PORT_HIGH).contains(&port), "{port}");
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("port should be free");
    }

    #[test]
    fn free_ports_are_consecutive_and_never_handed_out_twice() {
        let a = free_ports(9);
        let b = free_ports(9);
        assert_eq!(a.len(), 9);
        assert!(a.windows(2).all(|w| w[1] == w[0] + 1), "{a:?}");
        assert!(a.iter().all(|p| !b.contains(p)), "{a:?} {b:?}");
    }

    #[test]
    fn a_taken_port_is_skipped() {
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, free_port())).unwrap();
        let taken = held.local_addr().unwrap().port();
        for _ in 0..3 {
            assert!(!free_ports(5).contains(&taken));
        }
    }
}
