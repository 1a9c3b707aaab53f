//! `upstreams`: named endpoint pools with their timeouts, retries and health settings.

use std::net::SocketAddr;
use std::time::Duration;

use super::super::defaults;
use super::super::raw::{RawBreaker, RawHealthCheck, RawPassive, RawUpstream};
use super::super::{
    CircuitBreakerConfig, HealthCheckConfig, LoadBalancing, PassiveEjectionConfig, UpstreamConfig,
};
use super::Errors;

pub(super) fn upstream(
    errs: &mut Errors,
    loc: &str,
    raw: RawUpstream,
    base_dir: &std::path::Path,
) -> UpstreamConfig {
    let RawUpstream {
        endpoints,
        load_balancing,
        connect_timeout_ms,
        read_timeout_ms,
        retries,
        health_check,
        passive_ejection,
        circuit_breaker,
        tls,
    } = raw;
    let name = loc.strip_prefix("upstreams.").unwrap_or(loc);
    if endpoints.is_empty() {
        errs.push(
            format!("{loc}.endpoints"),
            "at least one endpoint is needed",
        );
    }
    let endpoints = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| host_port(errs, &format!("{loc}.endpoints[{i}]"), e))
        .collect();
    let load_balancing = match load_balancing.as_deref().map(str::parse::<LoadBalancing>) {
        None => LoadBalancing::RoundRobin,
        Some(Ok(lb)) => lb,
        Some(Err(e)) => {
            errs.push(format!("{loc}.load_balancing"), e.to_string());
            LoadBalancing::RoundRobin
        }
    };
    UpstreamConfig {
        endpoints,
        load_balancing,
        connect_timeout: Duration::from_millis(errs.positive(
            &format!("{loc}.connect_timeout_ms"),
            connect_timeout_ms,
            defaults::CONNECT_TIMEOUT_MS,
        )),
        read_timeout: Duration::from_millis(errs.positive(
            &format!("{loc}.read_timeout_ms"),
            read_timeout_ms,
            defaults::READ_TIMEOUT_MS,
        )),
        retries: retries.unwrap_or(defaults::RETRIES),
        health_check: health_check.map(|h| health(errs, &format!("{loc}.health_check"), h)),
        passive_ejection: passive(errs, &format!("{loc}.passive_ejection"), passive_ejection),
        circuit_breaker: breaker(errs, &format!("{loc}.circuit_breaker"), circuit_breaker),
        tls: tls.and_then(|t| super::tls::upstream(errs, &format!("{loc}.tls"), name, t, base_dir)),
    }
}

fn health(errs: &mut Errors, loc: &str, raw: RawHealthCheck) -> HealthCheckConfig {
    let RawHealthCheck {
        path,
        interval_ms,
        timeout_ms,
        healthy_threshold,
        unhealthy_threshold,
    } = raw;
    let path = path.unwrap_or_else(|| defaults::HEALTH_CHECK_PATH.to_string());
    if !path.starts_with('/') {
        errs.push(format!("{loc}.path"), "must start with /");
    }
    HealthCheckConfig {
        path,
        interval: Duration::from_millis(errs.positive(
            &format!("{loc}.interval_ms"),
            interval_ms,
            defaults::HEALTH_CHECK_INTERVAL_MS,
        )),
        timeout: Duration::from_millis(errs.positive(
            &format!("{loc}.timeout_ms"),
            timeout_ms,
            defaults::HEALTH_CHECK_TIMEOUT_MS,
        )),
        healthy_threshold: errs.positive(
            &format!("{loc}.healthy_threshold"),
            healthy_threshold,
            defaults::HEALTHY_THRESHOLD,
        ),
        unhealthy_threshold: errs.positive(
            &format!("{loc}.unhealthy_threshold"),
            unhealthy_threshold,
            defaults::UNHEALTHY_THRESHOLD,
        ),
    }
}

fn passive(errs: &mut Errors, loc: &str, raw: Option<RawPassive>) -> PassiveEjectionConfig {
    let RawPassive {
        consecutive_failures,
        ejection_secs,
    } = raw.unwrap_or_default();
    PassiveEjectionConfig {
        consecutive_failures: errs.positive(
            &format!("{loc}.consecutive_failures"),
            consecutive_failures,
            defaults::EJECTION_CONSECUTIVE_FAILURES,
        ),
        ejection: Duration::from_secs(errs.positive(
            &format!("{loc}.ejection_secs"),
            ejection_secs,
            defaults::EJECTION_SECS,
        )),
    }
}

fn breaker(errs: &mut Errors, loc: &str, raw: Option<RawBreaker>) -> CircuitBreakerConfig {
    let RawBreaker {
        failure_threshold,
        open_secs,
    } = raw.unwrap_or_default();
    CircuitBreakerConfig {
        failure_threshold: errs.positive(
            &format!("{loc}.failure_threshold"),
            failure_threshold,
            defaults::BREAKER_FAILURE_THRESHOLD,
        ),
        open_for: Duration::from_secs(errs.positive(
            &format!("{loc}.open_secs"),
            open_secs,
            defaults::BREAKER_OPEN_SECS,
        )),
    }
}

/// `host:port` with a valid port and a non-empty host (names are resolved at load, not here,
/// so `gateway validate` works anywhere).
fn host_port(errs: &mut Errors, loc: &str, s: &str) -> String {
    if s.parse::<SocketAddr>().is_ok() {
        return s.to_string();
    }
    let ok = s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok_and(|p| p > 0)
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    });
    if !ok {
        errs.push(
            loc,
            format!("{s:?} is not host:port like 127.0.0.1:7001 or users:7001"),
        );
    }
    s.to_string()
}
