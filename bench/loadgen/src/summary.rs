//! The end-of-run report: a table for people, JSON for tests and scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::RouteSummary;

/// Everything a run measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub gateway_url: String,
    pub vus: usize,
    pub elapsed_secs: f64,
    /// Iterations started (a task each, after the virtual user's setup).
    pub iterations: u64,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub requests_per_sec: f64,
    /// Count per HTTP status over every route (`"transport"`: no response).
    pub statuses: BTreeMap<String, u64>,
    pub routes: Vec<RouteSummary>,
    pub orders: OrderSummary,
    /// Virtual users that could not register, log in or load the catalogue.
    pub setup_failures: u64,
    /// The first few distinct error messages, to start debugging from.
    pub sample_errors: Vec<String>,
}

/// What became of the orders placed during the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct OrderSummary {
    /// Checkouts answered with 202 and an order id.
    pub placed: u64,
    /// Last status seen per order: `SHIPPED`, `CANCELLED (payment_declined)`, or a
    /// non-final one such as `PAID` for orders still unsettled at the end.
    pub by_status: BTreeMap<String, u64>,
    /// Orders that had no final status when --settle-timeout ran out (or could not be read).
    pub unsettled: u64,
}

impl Summary {
    /// Reasons this run should fail; empty when it passed.
    pub fn problems(&self, max_error_rate: f64) -> Vec<String> {
        let mut problems = Vec::new();
        if self.requests == 0 {
            problems.push("no requests were made".to_owned());
        }
        if self.error_rate > max_error_rate {
            problems.push(format!(
                "error rate {:.2}% ({} of {}) is above --max-error-rate {:.2}%",
                self.error_rate * 100.0,
                self.errors,
                self.requests,
                max_error_rate * 100.0
            ));
        }
        if self.orders.unsettled > 0 {
            problems.push(format!(
                "{} of {} orders did not reach a final status",
                self.orders.unsettled, self.orders.placed
            ));
        }
        problems
    }

    /// The human-readable report.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let width = self
            .routes
            .iter()
            .map(|r| r.route.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(
            out,
            "{:<width$}  {:>8} {:>6} {:>9} {:>9} {:>9} {:>9}",
            "route", "requests", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        for r in &self.routes {
            let _ = writeln!(
                out,
                "{:<width$}  {:>8} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                r.route, r.requests, r.errors, r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms
            );
        }
        let _ = writeln!(
            out,
            "\n{} requests in {:.1}s ({:.1}/s) by {} virtual users, {} iterations; {} errors ({:.2}%)",
            self.requests,
            self.elapsed_secs,
            self.requests_per_sec,
            self.vus,
            self.iterations,
            self.errors,
            self.error_rate * 100.0
        );
        let _ = writeln!(out, "statuses: {}", join_counts(&self.statuses));
        let _ = writeln!(
            out,
            "orders:   {} placed; {}; {} unsettled",
            self.orders.placed,
            if self.orders.by_status.is_empty() {
                "none polled".to_owned()
            } else {
                join_counts(&self.orders.by_status)
            },
            self.orders.unsettled
        );
        if self.setup_failures > 0 {
            let _ = writeln!(out, "setup failures: {} virtual users", self.setup_failures);
        }
        for e in &self.sample_errors {
            let _ = writeln!(out, "error: {e}");
        }
        out
    }
}

fn join_counts(map: &BTreeMap<String, u64>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            gateway_url: "http://127.0.0.1:8080".into(),
            vus: 2,
            elapsed_secs: 2.0,
            iterations: 10,
            requests: 40,
            errors: 0,
            error_rate: 0.0,
            requests_per_sec: 20.0,
            statuses: BTreeMap::from([("200".into(), 38), ("202".into(), 2)]),
            routes: vec![RouteSummary {
                route: "GET /api/products".into(),
                requests: 38,
                errors: 0,
                statuses: BTreeMap::from([("200".into(), 38)]),
                p50_ms: 1.0,
                p90_ms: 2.0,
                p99_ms: 3.0,
                max_ms: 4.0,
            }],
            orders: OrderSummary {
                placed: 2,
                by_status: BTreeMap::from([("SHIPPED".into(), 2)]),
                unsettled: 0,
            },
            setup_failures: 0,
            sample_errors: vec![],
        }
    }

    #[test]
    fn a_clean_run_has_no_problems_and_round_trips_as_json() {
        let s = summary();
        assert!(s.problems(0.0).is_empty());
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Summary>(&json).unwrap(), s);
        let table = s.table();
        assert!(table.contains("GET /api/products"), "{table}");
        assert!(table.contains("SHIPPED=2"), "{table}");
    }

    #[test]
    fn errors_and_unsettled_orders_are_problems() {
        let mut s = summary();
        s.errors = 2;
        s.error_rate = 0.05;
        s.orders.unsettled = 1;
        assert_eq!(s.problems(0.01).len(), 2);
        assert_eq!(s.problems(0.10).len(), 1);
        s.requests = 0;
        assert_eq!(s.problems(1.0).len(), 2);
    }
}
