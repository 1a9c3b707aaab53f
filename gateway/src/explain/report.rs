//! What `gateway explain` reports, as text for people and JSON for tools.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::config::{KeyPart, LoadBalancing, Mode, Quotas};
use crate::context::{Failure, RequestCtx};
use crate::ratelimit::{Decision, Policy};

/// The decision trail of one request. [`Explanation::to_text`] and [`Explanation::to_json`]
/// render it; the JSON field names are stable.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub(crate) request: RequestView,
    /// Routes in order up to the chosen one, each with why it did or did not match.
    pub(crate) routes: Vec<RouteCheck>,
    /// The chosen route.
    pub(crate) route: Option<String>,
    pub(crate) auth: Option<AuthView>,
    pub(crate) limits: Vec<LimitView>,
    pub(crate) upstream: Option<UpstreamView>,
    pub(crate) outcome: Outcome,
    /// The compact trail, exactly as the proxy writes it on the span and the access log.
    pub(crate) trail: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct RequestView {
    pub(crate) method: String,
    pub(crate) url: String,
    pub(crate) host: Option<String>,
    /// The normalised path routes are matched on.
    pub(crate) path: String,
    pub(crate) client_ip: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct RouteCheck {
    pub(crate) name: String,
    pub(crate) matched: bool,
    pub(crate) reason: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct AuthView {
    pub(crate) required: bool,
    pub(crate) scopes: Vec<String>,
    pub(crate) issuers: Vec<String>,
    pub(crate) mode: &'static str,
    /// `skipped`, `allowed`, `denied` or `forbidden`.
    pub(crate) result: &'static str,
    /// The reject code, `insufficient_scope`, or empty.
    pub(crate) reason: String,
    /// Whether the result was computed in shadow mode (not enforced).
    pub(crate) shadow: bool,
    pub(crate) steps: Vec<Step>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Step {
    pub(crate) step: &'static str,
    pub(crate) ok: bool,
    pub(crate) detail: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct LimitView {
    pub(crate) policy: String,
    pub(crate) mode: &'static str,
    /// The bucket key, header values masked.
    pub(crate) key: Option<String>,
    pub(crate) tier: Option<String>,
    /// `rate/period, burst N`.
    pub(crate) quota: String,
    /// `allowed` or `limited`.
    pub(crate) result: &'static str,
    pub(crate) remaining: u32,
    pub(crate) limit: u32,
    pub(crate) retry_after_secs: Option<u64>,
}

impl LimitView {
    pub(crate) fn new(policy: &Policy, d: &Decision, key: Option<String>) -> Self {
        let config = policy.config();
        let quota = match (&config.quotas, &d.tier) {
            (Quotas::Single { quota }, _) => Some(*quota),
            (Quotas::Tiered { tiers, .. }, Some(t)) => tiers.get(t).copied(),
            (Quotas::Tiered { .. }, None) => None,
        };
        let headers: Vec<&str> = config
            .key
            .iter()
            .filter_map(|k| match k {
                KeyPart::Header(h) => Some(h.as_str()),
                _ => None,
            })
            .collect();
        LimitView {
            policy: d.policy.clone(),
            mode: policy.mode().name(),
            key: key.map(|k| mask_headers(&k, &headers)),
            tier: d.tier.clone(),
            quota: quota.map_or_else(String::new, |q| {
                format!("{}/{}s, burst {}", q.rate, q.per.as_secs(), q.burst)
            }),
            result: d.result(),
            remaining: d.remaining,
            limit: d.limit,
            retry_after_secs: d.retry_after_secs,
        }
    }
}

/// `name=value` parts of a bucket key whose name is a header the policy keys on, with the value
/// replaced by its length: a header may carry an API key.
fn mask_headers(key: &str, headers: &[&str]) -> String {
    key.split('|')
        .map(|part| match part.split_once('=') {
            Some((name, value)) if headers.contains(&name) => {
                format!("{name}=<{} bytes>", value.len())
            }
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join("|")
}

#[derive(Debug, Serialize)]
pub(crate) struct UpstreamView {
    pub(crate) name: String,
    pub(crate) load_balancing: LoadBalancing,
    /// The endpoint selection picks from fresh state (every endpoint healthy).
    pub(crate) endpoint: Option<String>,
    pub(crate) note: Option<String>,
    /// Path and query sent upstream (after rewrite and normalisation).
    pub(crate) target: Option<String>,
    /// The identity headers the upstream receives (only when auth verified the caller).
    pub(crate) identity: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Outcome {
    /// The status the gateway answers; 200 when it forwards (the upstream's answer is not part
    /// of the policy).
    pub(crate) status: u16,
    pub(crate) forwarded: bool,
    /// Where it was decided: `request_head`, `routing`, `route`, `auth`, `rate_limit`,
    /// `upstream` or `forwarded`.
    pub(crate) stage: &'static str,
    /// The problem type's slug, when refused.
    pub(crate) error: Option<&'static str>,
    /// The problem detail the client would read.
    pub(crate) detail: Option<String>,
}

impl Outcome {
    pub(crate) fn of(ctx: &RequestCtx, status: u16, stage: &'static str) -> Self {
        let error = match &ctx.failure {
            Some(Failure::Answered { error, .. }) => Some(error),
            _ => None,
        };
        Outcome {
            status,
            forwarded: error.is_none() && status == 200,
            stage,
            error: error.map(|e| e.slug()),
            detail: error.map(|e| e.detail()),
        }
    }
}

impl Explanation {
    /// The status the gateway would answer with (200: forwarded upstream).
    pub fn status(&self) -> u16 {
        self.outcome.status
    }

    /// The explanation as JSON (stable field names; see docs/gateway-config.md).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The explanation for people, one section per stage.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let r = &self.request;
        let _ = writeln!(out, "{} {}", r.method, r.url);
        let _ = writeln!(
            out,
            "  host {}, path {}, client {}",
            r.host.as_deref().unwrap_or("(none)"),
            r.path,
            r.client_ip
        );
        let _ = writeln!(out, "\nroute");
        if self.routes.is_empty() {
            let _ = writeln!(out, "  (not reached)");
        }
        for c in &self.routes {
            let mark = if c.matched { "ok" } else { "--" };
            let _ = writeln!(out, "  {mark} {}: {}", c.name, c.reason);
        }
        if self.route.is_none() && !self.routes.is_empty() {
            let _ = writeln!(out, "  => no route chosen");
        }
        if let Some(a) = &self.auth {
            let _ = write!(out, "\nauth");
            if a.required {
                let issuers = if a.issuers.is_empty() {
                    "any issuer".to_string()
                } else {
                    format!("issuers [{}]", a.issuers.join(", "))
                };
                let _ = writeln!(
                    out,
                    " (required, scopes [{}], {issuers}, mode {})",
                    a.scopes.join(", "),
                    a.mode
                );
            } else {
                let _ = writeln!(out, " (none: no token needed)");
            }
            for s in &a.steps {
                let mark = if s.ok { "ok" } else { "NO" };
                let _ = writeln!(out, "  {mark} {}: {}", s.step, s.detail);
            }
            if a.required && a.steps.is_empty() {
                let _ = writeln!(out, "  (not reached)");
            }
            let reason = if a.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", a.reason)
            };
            let shadow = if a.shadow {
                " — shadow mode: not enforced, no identity forwarded unless allowed"
            } else {
                ""
            };
            let _ = writeln!(out, "  => {}{reason}{shadow}", a.result);
        }
        if !self.limits.is_empty() {
            let _ = writeln!(out, "\nrate limits (from full buckets)");
        }
        for l in &self.limits {
            let tier = l
                .tier
                .as_ref()
                .map(|t| format!("[{t}]"))
                .unwrap_or_default();
            let shadow = if l.mode == Mode::Shadow.name() {
                " (shadow: not enforced)"
            } else {
                ""
            };
            let retry = l
                .retry_after_secs
                .map(|s| format!(", retry after {s} s"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} {}{tier}: key {}, quota {} => {}, {}/{} remaining{retry}{shadow}",
                if l.result == "allowed" { "ok" } else { "NO" },
                l.policy,
                l.key.as_deref().unwrap_or("?"),
                l.quota,
                l.result,
                l.remaining,
                l.limit
            );
        }
        if let Some(u) = &self.upstream {
            let _ = writeln!(out, "\nupstream");
            let _ = writeln!(
                out,
                "  {} ({}): {}",
                u.name,
                u.load_balancing.name(),
                u.endpoint.as_deref().unwrap_or("-")
            );
            if let Some(note) = &u.note {
                let _ = writeln!(out, "  note: {note}");
            }
            if let Some(t) = &u.target {
                let _ = writeln!(out, "  sends {t}");
            }
            if u.identity.is_empty() {
                let _ = writeln!(out, "  identity headers: none");
            }
            for (k, v) in &u.identity {
                let _ = writeln!(out, "  {k}: {v}");
            }
        }
        let o = &self.outcome;
        let _ = writeln!(out, "\noutcome");
        match (&o.error, &o.detail) {
            (Some(e), Some(d)) => {
                let _ = writeln!(out, "  {} {e} at {}: {d}", o.status, o.stage);
            }
            _ => {
                let _ = writeln!(out, "  {} forwarded", o.status);
            }
        }
        let _ = writeln!(out, "\ntrail: {}", self.trail);
        out
    }
}
