//! Turns a [`RawConfig`] into a [`Config`], collecting every error with its location.
//!
//! One file per section of the policy: [`listeners`] (listeners and admin), [`server`] (server
//! settings and identity headers), [`tls`] (the edge certificate, upstream mTLS), [`upstreams`],
//! [`issuers`], [`rate_limits`], [`routes`].
//! Sections are checked independently, so one broken section never hides another's errors;
//! routes are checked last, against the names the other sections defined.

mod issuers;
mod listeners;
mod rate_limits;
mod routes;
mod server;
mod tls;
mod upstreams;

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;

use super::raw::RawConfig;
use super::{Config, ConfigError, ConfigErrors};

/// Collects errors as validation walks the file.
pub(super) struct Errors(Vec<ConfigError>);

impl Errors {
    pub(super) fn push(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            location: location.into(),
            message: message.into(),
        });
    }

    /// How many errors so far (to tell whether a part added any).
    pub(super) fn count(&self) -> usize {
        self.0.len()
    }

    /// Deserializes one section, recording a failure at `location`.
    pub(super) fn section<T: DeserializeOwned>(
        &mut self,
        location: &str,
        value: serde_yaml::Value,
    ) -> Option<T> {
        match serde_yaml::from_value::<T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(location, e.to_string());
                None
            }
        }
    }

    /// An optional section: absent or `null` is the section's defaults.
    pub(super) fn optional<T: DeserializeOwned + Default>(
        &mut self,
        location: &str,
        value: Option<serde_yaml::Value>,
    ) -> T {
        match value {
            None | Some(serde_yaml::Value::Null) => T::default(),
            Some(v) => self.section(location, v).unwrap_or_default(),
        }
    }

    /// Each entry of a named map section (`upstreams`, `issuers`, `rate_limits`), deserialized
    /// as `R` and checked by `check`; entries that do not deserialize are left out.
    pub(super) fn named<R: DeserializeOwned, T>(
        &mut self,
        section: &str,
        entries: BTreeMap<String, serde_yaml::Value>,
        mut check: impl FnMut(&mut Self, &str, R) -> T,
    ) -> BTreeMap<String, T> {
        entries
            .into_iter()
            .filter_map(|(name, v)| {
                let loc = format!("{section}.{name}");
                let raw: R = self.section(&loc, v)?;
                Some((name, check(self, &loc, raw)))
            })
            .collect()
    }

    /// `v`, or `default` when absent; an error when it is 0.
    pub(super) fn positive<N: Copy + PartialEq + Default>(
        &mut self,
        loc: &str,
        v: Option<N>,
        default: N,
    ) -> N {
        let v = v.unwrap_or(default);
        if v == N::default() {
            self.push(loc, "must be greater than 0");
        }
        v
    }
}

/// A `mode` / `auth_mode` value; absent is [`Mode::Enforce`].
pub(super) fn mode(errs: &mut Errors, loc: &str, raw: Option<&str>) -> super::Mode {
    match raw.map(str::parse::<super::Mode>) {
        None => super::Mode::default(),
        Some(Ok(mode)) => mode,
        Some(Err(e)) => {
            errs.push(loc, e.to_string());
            super::Mode::default()
        }
    }
}

pub(super) fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let raw: RawConfig = match serde_yaml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let location = e
                .location()
                .map(|l| format!("line {}, column {}", l.line(), l.column()))
                .unwrap_or_else(|| "file".to_string());
            return Err(ConfigErrors(vec![ConfigError {
                location,
                message: e.to_string(),
            }]));
        }
    };
    let mut errs = Errors(Vec::new());
    let config = build(raw, base_dir, &mut errs);
    if errs.0.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errs.0))
    }
}

fn build(raw: RawConfig, base_dir: &Path, errs: &mut Errors) -> Config {
    let RawConfig {
        listeners,
        admin,
        server,
        edge_tls,
        identity_headers,
        upstreams,
        issuers,
        rate_limits,
        routes,
    } = raw;
    let (listeners, admin) = listeners::listeners_and_admin(errs, listeners, admin);
    let server_settings = server::server(errs, server);
    let identity_headers = server::identity_headers(errs, identity_headers);
    let edge_tls = tls::edge(errs, edge_tls, base_dir);
    match (listeners.public_tls, &edge_tls) {
        (Some(_), None) => errs.push(
            "listeners.public_tls",
            "needs edge_tls (the certificate to serve)",
        ),
        (None, Some(_)) => errs.push("edge_tls", "is served only on listeners.public_tls; set it"),
        _ => {}
    }
    let upstreams = errs.named("upstreams", upstreams, |errs, loc, raw| {
        upstreams::upstream(errs, loc, raw, base_dir)
    });
    let issuers = errs.named("issuers", issuers, |errs, loc, raw| {
        issuers::issuer(errs, loc, raw, base_dir)
    });
    let rate_limits = errs.named("rate_limits", rate_limits, rate_limits::rate_limit);
    let routes = routes::routes(
        errs,
        routes,
        &routes::Defined {
            upstreams: &upstreams,
            issuers: &issuers,
            rate_limits: &rate_limits,
            max_body_bytes: server_settings.max_body_bytes,
        },
    );
    Config {
        listeners,
        admin,
        server: server_settings,
        edge_tls,
        identity_headers,
        upstreams,
        issuers,
        rate_limits,
        warnings: routes::overlap_warnings(&routes),
        routes,
    }
}
