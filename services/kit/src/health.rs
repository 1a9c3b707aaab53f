use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use messaging::{BrokerState, BrokerStatus, Db};
use observability::metrics::{MetricsRegistry, OPENMETRICS_CONTENT_TYPE};
use observability::problem::Problem;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::error::problem_response;

/// What `/readyz` checks and `/metrics` renders.
#[derive(Clone)]
pub struct Health {
    pub(crate) db: Db,
    pub(crate) brokers: Vec<(String, BrokerStatus)>,
    pub(crate) registry: MetricsRegistry,
    /// An outbox row unsent for longer than this makes the service not ready
    /// (`SHOP_OUTBOX_MAX_AGE_SECS`).
    pub(crate) outbox_max_age: Duration,
    pub(crate) gauges: ReadinessGauges,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CheckLabels {
    check: String,
}

/// `shop_readiness_failing{check}` (1 while the check fails, 0 once it passes) and
/// `shop_outbox_oldest_unsent_seconds`, brought up to date by every `/readyz` and `/metrics`.
#[derive(Clone, Default)]
pub(crate) struct ReadinessGauges {
    failing: Family<CheckLabels, Gauge>,
    outbox_age: Gauge,
}

impl ReadinessGauges {
    pub(crate) fn register(&self, registry: &MetricsRegistry) {
        registry.register(
            "shop_readiness_failing",
            "1 while a readiness check fails (broker:<task>, database, outbox), else 0",
            self.failing.clone(),
        );
        registry.register(
            "shop_outbox_oldest_unsent_seconds",
            "Age of the oldest outbox row the broker has not confirmed (0 when none)",
            self.outbox_age.clone(),
        );
    }
}

impl Health {
    /// `/healthz` (process alive), `/readyz` (database answers, every broker task is connected
    /// with its channel open and not blocked by the broker, no outbox row older than the
    /// threshold), `/metrics` (OpenMetrics text).
    pub fn router(self) -> Router {
        Router::new()
            .route(
                "/healthz",
                get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self)
    }

    /// `/healthz` and `/readyz` alone, for the API port: the gateway's health checks come over
    /// the same mTLS as its requests. `/metrics` is on the ops port only.
    pub(crate) fn api_router(&self) -> Router {
        Router::new()
            .route(
                "/healthz",
                get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }
    /// Every failing check, as `broker:<task> (<state>)`, `database`, `outbox (oldest unsent
    /// <n> s)`; updates the readiness gauges.
    async fn failing(&self) -> Vec<String> {
        let mut down = Vec::new();
        for (name, status) in &self.brokers {
            let state = status.state();
            let failing = state != BrokerState::Up;
            self.mark(&format!("broker:{name}"), failing);
            if failing {
                down.push(format!("broker:{name} ({})", state.as_str()));
            }
        }
        let oldest = self
            .db
            .call(|c| {
                c.query_row(
                    "SELECT MIN(created_at) FROM outbox WHERE sent_at IS NULL",
                    [],
                    |r| r.get::<_, Option<String>>(0),
                )
            })
            .await;
        match oldest {
            Ok(oldest) => {
                self.mark("database", false);
                let age = oldest.as_deref().map(age_of).unwrap_or_default();
                self.gauges.outbox_age.set(age.as_secs() as i64);
                let stale = age > self.outbox_max_age;
                self.mark("outbox", stale);
                if stale {
                    down.push(format!("outbox (oldest unsent {} s)", age.as_secs()));
                }
            }
            Err(_) => {
                self.mark("database", true);
                down.push("database".to_owned());
            }
        }
        down
    }

    fn mark(&self, check: &str, failing: bool) {
        self.gauges
            .failing
            .get_or_create(&CheckLabels {
                check: check.to_owned(),
            })
            .set(i64::from(failing));
    }
}

/// How long ago `at` (RFC 3339) was; zero when it does not parse or lies ahead.
fn age_of(at: &str) -> Duration {
    let Ok(at) = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
    else {
        return Duration::ZERO;
    };
    (time::OffsetDateTime::now_utc() - at)
        .try_into()
        .unwrap_or_default()
}

/// 200 `{"status":"ready"}`, or a 503 problem (`not-ready`) naming what is down in `failing`
/// (component names and states only).
async fn readyz(State(h): State<Health>) -> Response {
    let down = h.failing().await;
    if down.is_empty() {
        return axum::Json(serde_json::json!({"status": "ready"})).into_response();
    }
    let detail = format!("not ready: {}", down.join(", "));
    problem_response(Problem::new("not-ready", 503, detail).with_extension("failing", down))
}

async fn metrics(State(h): State<Health>) -> Response {
    let _ = h.failing().await;
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        h.registry.encode(),
    )
        .into_response()
}
