//! Whether the public listeners accept connections, for `/readyz`.
//!
//! Pingora starts the proxy and the admin service side by side and binds each one's sockets
//! when it starts, so the admin listener can answer before the public one is bound. Readiness
//! tells an orchestrator to send traffic, so it waits for the public listeners: each is
//! probed with a TCP connect (closed at once, before any request) until every one has
//! accepted once; after that the answer is kept (a bound listener stays bound until shutdown).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long one probe waits for a connect to a local listener.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The public listeners' addresses and whether all have accepted a connection yet.
#[derive(Debug)]
pub(crate) struct Listening {
    addrs: Vec<SocketAddr>,
    all_accepted: AtomicBool,
}

impl Listening {
    /// Probes for the listeners bound at `addrs` (an unspecified address, `0.0.0.0` or `::`,
    /// is probed on the loopback address of its family).
    pub(crate) fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        Listening {
            addrs: addrs.into_iter().map(local).collect(),
            all_accepted: AtomicBool::new(false),
        }
    }

    /// Whether every public listener accepts connections: probed until they all have once.
    pub(crate) async fn accepting(&self) -> bool {
        if self.all_accepted.load(Ordering::Acquire) {
            return true;
        }
        for addr in &self.addrs {
            let connected =
                tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr))
                    .await
                    .is_ok_and(|r| r.is_ok());
            if !connected {
                return false;
            }
        }
        self.all_accepted.store(true, Ordering::Release);
        true
    }
}

/// Where to connect to reach a listener bound at `addr` from this host.
fn local(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_once_every_listener_accepts_and_then_stays_so() {
        let bound = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = bound.local_addr().unwrap();
        let unbound = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(!Listening::new([addr, unbound]).accepting().await);
        let probe = Listening::new([SocketAddr::new("0.0.0.0".parse().unwrap(), addr.port())]);
        assert!(
            probe.accepting().await,
            "an unspecified address is probed on loopback"
        );
        drop(bound);
        assert!(probe.accepting().await, "kept once seen");
    }
}
