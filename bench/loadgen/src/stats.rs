//! Recording responses and turning them into a summary.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::Route;

/// The status key used for requests that got no HTTP response at all.
pub const TRANSPORT_ERROR: &str = "transport";

/// Thread-safe sink for every request's outcome. Latencies are kept raw (microseconds)
/// so percentiles are exact; a few hundred thousand samples is a few megabytes.
#[derive(Debug, Default)]
pub struct Recorder {
    routes: Mutex<HashMap<Route, RouteSamples>>,
    requests: AtomicU64,
    errors: AtomicU64,
    allowed: Vec<u16>,
}

#[derive(Debug, Default)]
struct RouteSamples {
    latencies_us: Vec<u64>,
    statuses: BTreeMap<String, u64>,
    errors: u64,
}

impl Recorder {
    /// A recorder that does not count `allowed` statuses as errors (besides 2xx).
    pub fn new(allowed: Vec<u16>) -> Self {
        Recorder {
            allowed,
            ..Recorder::default()
        }
    }

    /// Whether a response with this status (or `None`: no response) is an error.
    pub fn is_error(&self, status: Option<u16>) -> bool {
        match status {
            None => true,
            Some(s) => !(200..300).contains(&s) && !self.allowed.contains(&s),
        }
    }

    /// Records one request.
    pub fn record(&self, route: Route, status: Option<u16>, elapsed: Duration) {
        self.add(route, status, elapsed, self.is_error(status));
    }

    /// Records a response whose status the caller expected at this point (e.g. a 404
    /// while an order is not in the read model yet): counted, never an error.
    pub fn record_tolerated(&self, route: Route, status: u16, elapsed: Duration) {
        self.add(route, Some(status), elapsed, false);
    }

    fn add(&self, route: Route, status: Option<u16>, elapsed: Duration, error: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let key = status.map_or_else(|| TRANSPORT_ERROR.to_owned(), |s| s.to_string());
        let mut routes = self.routes.lock().expect("recorder lock poisoned");
        let samples = routes.entry(route).or_default();
        samples
            .latencies_us
            .push(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
        *samples.statuses.entry(key).or_default() += 1;
        if error {
            samples.errors += 1;
        }
    }

    /// Requests so far (for the progress bar).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Errors so far (for the progress bar).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Per-route rows, sorted by route, and the status counts over all routes.
    pub fn routes(&self) -> (Vec<RouteSummary>, BTreeMap<String, u64>) {
        let mut routes = self.routes.lock().expect("recorder lock poisoned");
        let mut totals = BTreeMap::new();
        let mut rows: Vec<RouteSummary> = routes
            .iter_mut()
            .map(|(route, s)| {
                s.latencies_us.sort_unstable();
                for (k, v) in &s.statuses {
                    *totals.entry(k.clone()).or_default() += v;
                }
                RouteSummary {
                    route: route.label().to_owned(),
                    requests: s.latencies_us.len() as u64,
                    errors: s.errors,
                    statuses: s.statuses.clone(),
                    p50_ms: percentile_ms(&s.latencies_us, 50.0),
                    p90_ms: percentile_ms(&s.latencies_us, 90.0),
                    p99_ms: percentile_ms(&s.latencies_us, 99.0),
                    max_ms: s.latencies_us.last().map_or(0.0, |&us| us as f64 / 1000.0),
                }
            })
            .collect();
        rows.sort_by(|a, b| a.route.cmp(&b.route));
        (rows, totals)
    }
}

/// Nearest-rank percentile of sorted microsecond samples, in milliseconds.
pub fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted_us.len()) - 1;
    sorted_us[idx] as f64 / 1000.0
}

/// One row of the latency table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RouteSummary {
    pub route: String,
    pub requests: u64,
    pub errors: u64,
    /// Count per HTTP status (`"transport"` when there was no response).
    pub statuses: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile_ms(&samples, 50.0), 50.0);
        assert_eq!(percentile_ms(&samples, 90.0), 90.0);
        assert_eq!(percentile_ms(&samples, 99.0), 99.0);
        assert_eq!(percentile_ms(&[4000], 99.0), 4.0);
        assert_eq!(percentile_ms(&[], 50.0), 0.0);
    }

    #[test]
    fn allowed_statuses_are_counted_but_not_errors() {
        let r = Recorder::new(vec![429]);
        r.record(Route::Products, Some(200), Duration::from_millis(2));
        r.record(Route::Products, Some(429), Duration::from_millis(1));
        r.record(Route::Products, Some(503), Duration::from_millis(9));
        r.record(Route::Checkout, None, Duration::from_millis(3));
        r.record_tolerated(Route::Order, 404, Duration::from_millis(1));
        assert_eq!(r.requests(), 5);
        assert_eq!(r.errors(), 2);
        let (rows, totals) = r.routes();
        assert_eq!(rows.len(), 3);
        assert_eq!(totals.get("404"), Some(&1));
        let products = rows
            .iter()
            .find(|row| row.route == "GET /api/products")
            .unwrap();
        assert_eq!(products.requests, 3);
        assert_eq!(products.errors, 1);
        assert_eq!(products.max_ms, 9.0);
        assert_eq!(totals.get("429"), Some(&1));
        assert_eq!(totals.get(TRANSPORT_ERROR), Some(&1));
    }
}
