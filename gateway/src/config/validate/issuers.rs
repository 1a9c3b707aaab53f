//! `issuers`: who may sign tokens, with which algorithms and keys.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::super::defaults;
use super::super::raw::RawIssuer;
use super::super::{IssuerConfig, KeySource};
use super::Errors;

pub(super) fn issuer(
    errs: &mut Errors,
    loc: &str,
    raw: RawIssuer,
    base_dir: &Path,
) -> IssuerConfig {
    let RawIssuer {
        issuer,
        audiences,
        algorithms,
        jwks_url,
        jwks_tls,
        jwks_file,
        pem_file,
        pem_kid,
        refresh_interval_secs,
        min_refresh_interval_secs,
        leeway_secs,
        max_lifetime_secs,
    } = raw;
    if issuer.is_empty() {
        errs.push(format!("{loc}.issuer"), "must not be empty");
    }
    if algorithms.is_empty() {
        errs.push(
            format!("{loc}.algorithms"),
            "list at least one algorithm, e.g. [ES256]",
        );
    }
    let algorithms: Vec<Algorithm> = algorithms
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match Algorithm::from_str(a) {
            Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
                errs.push(
                    format!("{loc}.algorithms[{i}]"),
                    format!("{a} is symmetric; only asymmetric algorithms (RS*, PS*, ES*, EdDSA) are accepted"),
                );
                None
            }
            Ok(alg) => Some(alg),
            Err(_) => {
                errs.push(format!("{loc}.algorithms[{i}]"), format!("{a:?} is not a JWS algorithm"));
                None
            }
        })
        .collect();
    let sources = [jwks_url.is_some(), jwks_file.is_some(), pem_file.is_some()]
        .iter()
        .filter(|s| **s)
        .count();
    if sources != 1 {
        errs.push(loc, "set exactly one of jwks_url, jwks_file, pem_file");
    }
    let jwks_tls = match (jwks_tls, &jwks_url) {
        (None, _) => None,
        (Some(_), None) => {
            errs.push(format!("{loc}.jwks_tls"), "needs jwks_url");
            None
        }
        (Some(t), Some(url)) => {
            if !url.starts_with("https://") {
                errs.push(
                    format!("{loc}.jwks_url"),
                    "must be an https:// URL with jwks_tls",
                );
            }
            super::tls::upstream(errs, &format!("{loc}.jwks_tls"), "jwks", t, base_dir)
        }
    };
    let keys = if let Some(url) = jwks_url {
        match url::Url::parse(&url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => errs.push(format!("{loc}.jwks_url"), "must be an http(s) URL"),
        }
        KeySource::JwksUrl { url }
    } else if let Some(path) = jwks_file {
        let path = base_dir.join(path);
        if let Err(e) = crate::auth::keys::load_jwks_file(&path, &algorithms) {
            errs.push(format!("{loc}.jwks_file"), e.to_string());
        }
        KeySource::JwksFile { path }
    } else if let Some(path) = pem_file {
        let path = base_dir.join(path);
        if algorithms.len() != 1 {
            errs.push(
                format!("{loc}.algorithms"),
                "a pem_file issuer needs exactly one algorithm",
            );
        } else if let Err(e) =
            crate::auth::keys::load_pem_file(&path, algorithms[0], pem_kid.clone())
        {
            errs.push(format!("{loc}.pem_file"), e.to_string());
        }
        KeySource::PemFile { path, kid: pem_kid }
    } else {
        KeySource::JwksFile {
            path: base_dir.to_path_buf(),
        }
    };
    IssuerConfig {
        issuer,
        audiences,
        algorithms,
        keys,
        jwks_tls,
        refresh_interval: Duration::from_secs(errs.positive(
            &format!("{loc}.refresh_interval_secs"),
            refresh_interval_secs,
            defaults::JWKS_REFRESH_INTERVAL_SECS,
        )),
        min_refresh_interval: Duration::from_secs(
            min_refresh_interval_secs.unwrap_or(defaults::JWKS_MIN_REFRESH_INTERVAL_SECS),
        ),
        leeway_secs: leeway_secs.unwrap_or(defaults::LEEWAY_SECS),
        max_lifetime_secs: errs.positive(
            &format!("{loc}.max_lifetime_secs"),
            max_lifetime_secs,
            defaults::MAX_LIFETIME_SECS,
        ),
    }
}
