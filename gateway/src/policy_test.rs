//! `gateway test`: policy unit tests for CI.
//!
//! # How to use
//! `gateway test --config gateway/config/example.yaml gateway/config/example.cases.yaml` runs
//! every case of the cases file (format in docs/gateway-config.md, example next to the
//! policy) and prints a pass/fail table; it exits 1 when a case fails and 78 when the policy or
//! the cases file is invalid (every error listed with its location).
//!
//! A case is a request (method, URL, headers, client address, and a token minted from a named
//! test key with given claims) and the outcome expected (status, route, auth result or reason,
//! rate-limit policy, identity forwarded, a piece of the trail). Each case runs through
//! `explain::explain_on` — the admission pipeline the proxy runs — on its own fresh
//! generation, so buckets never leak from one case to the next; `repeat: N` sends the request N
//! times to exercise a limit.
//!
//! Test keys are generated for each run (or read from a PEM file) and *stand in for* the keys of
//! the issuer they name: for that issuer the run trusts the test keys' public halves instead of
//! its `jwks_url` / `jwks_file` / `pem_file`, so the policy's algorithms, audiences, lifetimes,
//! scopes and limits are tested offline, with no private key in the repository. A key with
//! `trusted: false` signs tokens the issuer does not trust (forgeries, unknown `kid`s).

mod cases;
mod keys;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::JwkSet;
use serde_json::Value;

use crate::config::{Config, ConfigErrors, KeySource};
use crate::explain::{self, Explanation};
use crate::state::Runtime;
use cases::{Case, Cases, Token};

/// Why the cases could not run.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// The policy file is invalid.
    #[error(transparent)]
    Config(ConfigErrors),
    /// The cases file is invalid: every error, with its location.
    #[error(transparent)]
    Cases(ConfigErrors),
    /// The async runtime could not start, or the test keys could not be staged.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The outcome of every case.
#[derive(Debug)]
pub struct Report {
    title: String,
    rows: Vec<Row>,
}

#[derive(Debug)]
struct Row {
    name: String,
    request: String,
    got: String,
    failures: Vec<String>,
}

impl Report {
    /// Whether every case passed.
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.failures.is_empty())
    }

    /// Names of the cases that failed.
    pub fn failed(&self) -> Vec<&str> {
        self.rows
            .iter()
            .filter(|r| !r.failures.is_empty())
            .map(|r| r.name.as_str())
            .collect()
    }

    /// The pass/fail table: one line per case (`PASS`/`FAIL`, name, request, what happened),
    /// each failure's mismatches below it, and a count.
    pub fn table(&self) -> String {
        let width = |f: fn(&Row) -> &str, min: usize| {
            self.rows
                .iter()
                .map(|r| f(r).chars().count())
                .max()
                .unwrap_or(0)
                .max(min)
        };
        let (wn, wr) = (width(|r| &r.name, 4), width(|r| &r.request, 7));
        let mut out = format!("{}\n", self.title);
        let _ = writeln!(out, "  {:<6}{:<wn$}  {:<wr$}  got", "", "case", "request");
        for r in &self.rows {
            let mark = if r.failures.is_empty() {
                "PASS"
            } else {
                "FAIL"
            };
            let _ = writeln!(
                out,
                "  {mark:<6}{:<wn$}  {:<wr$}  {}",
                r.name, r.request, r.got
            );
            for f in &r.failures {
                let _ = writeln!(out, "  {:<6}{:<wn$}  - {f}", "", "");
            }
        }
        let failed = self.failed().len();
        let _ = writeln!(
            out,
            "{} case(s): {} passed, {failed} failed",
            self.rows.len(),
            self.rows.len() - failed
        );
        out
    }
}

/// Runs the cases file at `cases_path` against the policy at `config_path`.
pub fn run(config_path: &Path, cases_path: &Path) -> Result<Report, TestError> {
    let config = Config::load(config_path).map_err(TestError::Config)?;
    let cases = cases::load(cases_path, &config).map_err(|e| TestError::Cases(ConfigErrors(e)))?;
    let staged = stage_keys(&config, &cases)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let issuers = explain::load_issuers(&staged.config).await;
        staged.remove();
        let issuers = issuers.map_err(TestError::Config)?;
        let mut rows = Vec::new();
        for case in &cases.cases {
            let runtime = Runtime::offline(staged.config.clone(), issuers.clone());
            rows.push(run_case(&runtime, &cases, case).await);
        }
        Ok::<_, TestError>(rows)
    })?;
    Ok(Report {
        title: format!(
            "gateway test: {} against {}",
            cases_path.display(),
            config_path.display()
        ),
        rows: result,
    })
}

/// The policy with each issuer named by a trusted test key trusting those keys instead, and the
/// JWKS files written for that.
struct Staged {
    config: Config,
    files: Vec<PathBuf>,
}

impl Staged {
    fn remove(&self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn stage_keys(config: &Config, cases: &Cases) -> Result<Staged, std::io::Error> {
    let mut config = config.clone();
    let mut by_issuer: BTreeMap<&str, Vec<jsonwebtoken::jwk::Jwk>> = BTreeMap::new();
    for key in cases.keys.values().filter(|k| k.trusted) {
        by_issuer
            .entry(key.issuer.as_str())
            .or_default()
            .push(key.jwk.clone());
    }
    let mut files = Vec::new();
    for (issuer, keys) in by_issuer {
        let path = std::env::temp_dir().join(format!(
            "vantage-policy-test-{}-{}-{issuer}.json",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let jwks = serde_json::to_vec(&JwkSet { keys }).map_err(std::io::Error::other)?;
        std::fs::write(&path, jwks)?;
        if let Some(cfg) = config.issuers.get_mut(issuer) {
            cfg.keys = KeySource::JwksFile { path: path.clone() };
        }
        files.push(path);
    }
    Ok(Staged { config, files })
}

async fn run_case(runtime: &Runtime, cases: &Cases, case: &Case) -> Row {
    let mut request = case.request.clone();
    let summary = format!("{} {}", request.method.to_ascii_uppercase(), request.url);
    match token(runtime, cases, case) {
        Ok(Some(t)) => request.headers.push(format!("Authorization: Bearer {t}")),
        Ok(None) => {}
        Err(e) => return row(case, summary, "-".into(), vec![e]),
    }
    let mut last = None;
    for _ in 0..case.repeat {
        match explain::explain_on(runtime, &request).await {
            Ok(e) => last = Some(e),
            Err(e) => return row(case, summary, "-".into(), vec![e.to_string()]),
        }
    }
    let Some(got) = last else {
        return row(case, summary, "-".into(), vec!["not run".into()]);
    };
    let failures = compare(case, &got);
    row(case, summary, describe(&got), failures)
}

fn row(case: &Case, request: String, got: String, failures: Vec<String>) -> Row {
    Row {
        name: case.name.clone(),
        request,
        got,
        failures,
    }
}

/// The token of a case: minted with its defaults (the issuer's `iss`, its first audience,
/// `sub: test-user`, `iat` now, `exp` in `expires_in_secs`), then the case's claims over them.
fn token(runtime: &Runtime, cases: &Cases, case: &Case) -> Result<Option<String>, String> {
    let Some(token) = &case.token else {
        return Ok(None);
    };
    let (key_name, claims, expires_in_secs, kid) = match token {
        Token::Raw(t) => return Ok(Some(t.clone())),
        Token::Minted {
            key,
            claims,
            expires_in_secs,
            kid,
        } => (key, claims, *expires_in_secs, kid),
    };
    let key = &cases.keys[key_name];
    let issuer = &runtime.config.issuers[&key.issuer];
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let mut all = serde_json::Map::new();
    all.insert("iss".into(), Value::from(issuer.issuer.clone()));
    if let Some(aud) = issuer.audiences.first() {
        all.insert("aud".into(), Value::from(aud.clone()));
    }
    all.insert("sub".into(), Value::from("test-user"));
    all.insert("iat".into(), Value::from(now));
    all.insert("exp".into(), Value::from(now + expires_in_secs));
    for (k, v) in claims {
        if v.is_null() {
            all.remove(k);
        } else {
            all.insert(k.clone(), v.clone());
        }
    }
    key.sign(kid.as_deref(), &Value::Object(all)).map(Some)
}

/// `status route auth limit…`: what a case got, for the table.
fn describe(e: &Explanation) -> String {
    let mut out = format!(
        "{} {}",
        e.outcome.status,
        e.route.as_deref().unwrap_or("no-route")
    );
    if let Some(a) = &e.auth {
        let _ = write!(
            out,
            " auth:{}",
            if a.reason.is_empty() {
                a.result
            } else {
                a.reason.as_str()
            }
        );
        if a.shadow {
            out.push_str("(shadow)");
        }
    }
    for l in &e.limits {
        let _ = write!(out, " {}:{}", l.policy, l.result);
    }
    out
}

/// Every way `got` differs from what `case` expects.
fn compare(case: &Case, got: &Explanation) -> Vec<String> {
    let x = &case.expect;
    let mut failures = Vec::new();
    if let Some(status) = x.status.filter(|s| *s != got.outcome.status) {
        failures.push(format!(
            "expected status {status}, got {}{}",
            got.outcome.status,
            got.outcome
                .detail
                .as_ref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        ));
    }
    if let Some(route) = &x.route {
        let actual = got.route.as_deref().unwrap_or("none");
        if route != actual {
            failures.push(format!("expected route {route}, got {actual}"));
        }
    }
    if let Some(auth) = &x.auth {
        let (result, reason) = got
            .auth
            .as_ref()
            .map_or(("skipped", ""), |a| (a.result, a.reason.as_str()));
        if auth != result && auth != reason {
            let got = if reason.is_empty() {
                result.to_string()
            } else {
                format!("{result} ({reason})")
            };
            failures.push(format!("expected auth {auth}, got {got}"));
        }
    }
    if let Some((policy, result)) = &x.limit {
        match got.limits.iter().find(|l| &l.policy == policy) {
            None => failures.push(format!(
                "expected limit {policy} to be consulted; it was not"
            )),
            Some(l) => {
                if let Some(r) = result.as_deref().filter(|r| *r != l.result) {
                    failures.push(format!("expected limit {policy}:{r}, got {}", l.result));
                }
            }
        }
    }
    if let Some(identity) = &x.identity {
        let actual = got
            .upstream
            .as_ref()
            .and_then(|u| u.identity.get("x-user-id"))
            .map_or("none", String::as_str);
        if identity != actual {
            failures.push(format!("expected identity {identity}, got {actual}"));
        }
    }
    if let Some(needle) = x
        .trail_contains
        .as_ref()
        .filter(|n| !got.trail.contains(n.as_str()))
    {
        failures.push(format!(
            "expected the trail to contain {needle:?}: {}",
            got.trail
        ));
    }
    failures
}
