//! Upstream pools: endpoint selection, active health checks, passive ejection and a circuit
//! breaker. One [`Upstream`] per named upstream in the config; rebuilt on reload.
//! [`attempt`] is one request's use of a pool: selection, failures, retries.

pub(crate) mod attempt;
pub(crate) mod health;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::config::{CircuitBreakerConfig, LoadBalancing, UpstreamConfig};
use crate::tls::UpstreamTls;

/// One endpoint of a pool and what is known of its health.
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    /// `addr` as text (the access line's `endpoint`), formatted once.
    pub(crate) addr_text: Box<str>,
    /// Result of active health checks (true until a check says otherwise).
    active_healthy: AtomicBool,
    /// Consecutive failed requests, for passive ejection.
    consecutive_failures: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    /// Requests in flight, for least-connections.
    inflight: Arc<AtomicUsize>,
}

impl Endpoint {
    fn new(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            addr_text: addr.to_string().into_boxed_str(),
            active_healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            inflight: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn available(&self, now: Instant) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
            && self.ejected_until.lock().is_none_or(|until| until <= now)
    }

    /// Marks a request in flight until the guard drops.
    pub(crate) fn track(&self) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(Arc::clone(&self.inflight))
    }
}

/// Decrements an endpoint's in-flight count on drop.
pub(crate) struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// The circuit breaker is open.
    CircuitOpen,
    /// Every endpoint is unhealthy or ejected.
    NoHealthyEndpoint,
}

#[derive(Debug)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial request is out since `trial_since`.
    HalfOpen {
        trial_since: Instant,
    },
}

/// Fails fast while an upstream keeps failing: after `failure_threshold` failed requests in a
/// row it opens for `open_for`, then lets one trial request through; its success closes it, its
/// failure opens it again. A trial that never reports back (the client left before it reached
/// the upstream) does not leave the circuit stuck: after `open_for` another trial goes.
pub(crate) struct CircuitBreaker {
    config: CircuitBreakerConfig,
    state: Mutex<BreakerState>,
}

impl CircuitBreaker {
    fn new(config: CircuitBreakerConfig) -> Self {
        CircuitBreaker {
            config,
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
        }
    }

    /// Whether a request may go upstream now.
    fn allow(&self) -> bool {
        let mut state = self.state.lock();
        let now = Instant::now();
        match *state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if now >= until => {
                *state = BreakerState::HalfOpen { trial_since: now };
                true
            }
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { trial_since } if now >= trial_since + self.config.open_for => {
                *state = BreakerState::HalfOpen { trial_since: now };
                true
            }
            BreakerState::HalfOpen { .. } => false,
        }
    }

    fn on_success(&self) {
        *self.state.lock() = BreakerState::Closed { failures: 0 };
    }

    /// Returns true when this failure opened the circuit.
    fn on_failure(&self) -> bool {
        let mut state = self.state.lock();
        let open_until = Instant::now() + self.config.open_for;
        let (next, opened) = match *state {
            BreakerState::Closed { failures } if failures + 1 >= self.config.failure_threshold => {
                (BreakerState::Open { until: open_until }, true)
            }
            BreakerState::Closed { failures } => (
                BreakerState::Closed {
                    failures: failures + 1,
                },
                false,
            ),
            BreakerState::HalfOpen { .. } => (BreakerState::Open { until: open_until }, true),
            BreakerState::Open { until } => (BreakerState::Open { until }, false),
        };
        *state = next;
        opened
    }

    /// 0 closed, 1 half-open, 2 open: `gateway_circuit_state`.
    pub(crate) fn state_value(&self) -> i64 {
        match *self.state.lock() {
            BreakerState::Closed { .. } => 0,
            BreakerState::HalfOpen { .. } => 1,
            BreakerState::Open { .. } => 2,
        }
    }

    /// `closed`, `open` or `half_open`, for metrics and /config.
    pub(crate) fn state_name(&self) -> &'static str {
        match *self.state.lock() {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half_open",
        }
    }
}

/// A named pool.
pub(crate) struct Upstream {
    pub(crate) name: String,
    pub(crate) config: UpstreamConfig,
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
    pub(crate) breaker: CircuitBreaker,
    /// Mutual TLS towards it, when the policy sets `tls`.
    pub(crate) tls: Option<Arc<UpstreamTls>>,
}

impl Upstream {
    /// A pool over `addresses`, the resolved `config.endpoints`.
    pub(crate) fn new(
        name: String,
        config: UpstreamConfig,
        addresses: Vec<SocketAddr>,
        tls: Option<Arc<UpstreamTls>>,
    ) -> Arc<Self> {
        let endpoints = addresses
            .into_iter()
            .map(|a| Arc::new(Endpoint::new(a)))
            .collect();
        let breaker = CircuitBreaker::new(config.circuit_breaker.clone());
        Arc::new(Upstream {
            name,
            config,
            endpoints,
            next: AtomicUsize::new(0),
            breaker,
            tls,
        })
    }

    /// Chooses an endpoint, avoiding `avoid` (the one that just failed) when another is available.
    pub(crate) fn select(&self, avoid: Option<SocketAddr>) -> Result<Arc<Endpoint>, Unavailable> {
        if !self.breaker.allow() {
            return Err(Unavailable::CircuitOpen);
        }
        let now = Instant::now();
        let healthy: Vec<&Arc<Endpoint>> =
            self.endpoints.iter().filter(|e| e.available(now)).collect();
        // A retry never goes back to the endpoint that just failed.
        let candidates: Vec<&Arc<Endpoint>> = match avoid {
            Some(addr) => healthy.iter().copied().filter(|e| e.addr != addr).collect(),
            None => healthy,
        };
        if candidates.is_empty() {
            return Err(Unavailable::NoHealthyEndpoint);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let chosen = match self.config.load_balancing {
            LoadBalancing::RoundRobin => candidates[start % candidates.len()],
            LoadBalancing::LeastConnections => {
                // Rotate the starting point so ties spread evenly.
                (0..candidates.len())
                    .map(|i| candidates[(start + i) % candidates.len()])
                    .min_by_key(|e| e.inflight.load(Ordering::Relaxed))
                    .expect("non-empty")
            }
        };
        Ok(Arc::clone(chosen))
    }

    /// Whether an endpoint other than `failed` can take a retry now.
    pub(crate) fn has_alternative(&self, failed: Option<SocketAddr>) -> bool {
        let now = Instant::now();
        self.endpoints
            .iter()
            .any(|e| Some(e.addr) != failed && e.available(now))
    }

    /// Records a successful exchange with `endpoint`.
    pub(crate) fn record_endpoint_success(&self, endpoint: &Endpoint) {
        endpoint.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Records a failed attempt on `endpoint`; ejects it after too many in a row.
    pub(crate) fn record_endpoint_failure(&self, endpoint: &Endpoint) {
        let failures = endpoint
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let passive = &self.config.passive_ejection;
        if failures >= passive.consecutive_failures {
            *endpoint.ejected_until.lock() = Some(Instant::now() + passive.ejection);
            endpoint.consecutive_failures.store(0, Ordering::Relaxed);
            tracing::warn!(upstream = %self.name, endpoint = %endpoint.addr, failures, ejection_secs = passive.ejection.as_secs(), "Ejected endpoint after consecutive failures.");
        }
    }

    /// Records how a request that reached this upstream finally ended (after retries), for the
    /// circuit breaker.
    pub(crate) fn record_request_outcome(&self, ok: bool) {
        if ok {
            self.breaker.on_success();
        } else if self.breaker.on_failure() {
            tracing::warn!(upstream = %self.name, open_secs = self.config.circuit_breaker.open_for.as_secs(), "Circuit opened.");
        }
    }

    /// Number of endpoints currently taking traffic.
    pub(crate) fn available_endpoints(&self) -> usize {
        let now = Instant::now();
        self.endpoints.iter().filter(|e| e.available(now)).count()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn breaker_opens_then_half_opens() {
        let b = CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 2,
            open_for: Duration::from_millis(30),
        });
        assert!(b.allow());
        assert!(!b.on_failure());
        assert!(b.on_failure());
        assert!(!b.allow(), "open");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "one trial");
        assert!(!b.allow(), "only one trial at a time");
        b.on_success();
        assert!(b.allow());
        assert_eq!(b.state_name(), "closed");
    }

    #[test]
    fn a_failed_trial_reopens_and_a_lost_trial_does_not_leave_it_stuck() {
        let b = CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 1,
            open_for: Duration::from_millis(30),
        });
        assert!(b.on_failure());
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "trial");
        assert!(b.on_failure(), "a failed trial opens it again");
        assert_eq!(b.state_name(), "open");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "second trial");
        // That trial never reports back; after open_for another one may go.
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "a lost trial is replaced");
        assert_eq!(b.state_value(), 1);
    }
}
