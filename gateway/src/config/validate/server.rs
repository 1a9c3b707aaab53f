//! `server` (process-wide settings) and `identity_headers`.

use std::str::FromStr;
use std::time::Duration;

use http::HeaderName;

use super::super::defaults;
use super::super::raw::RawServer;
use super::super::{ConnectionSettings, HeadLimits, ServerSettings};
use super::Errors;

pub(super) fn server(errs: &mut Errors, raw: Option<serde_yaml::Value>) -> ServerSettings {
    let RawServer {
        workers,
        max_body_bytes,
        grace_period_secs,
        shutdown_timeout_secs,
        reload_poll_ms,
        realm,
        trusted_proxies,
        max_uri_bytes,
        max_header_bytes,
        max_request_header_bytes,
        max_headers,
        request_head_timeout_ms,
        keepalive_timeout_secs,
        max_connections,
        connection_buffer_bytes,
    } = errs.optional("server", raw);
    let workers = workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if workers == 0 {
        errs.push("server.workers", "must be at least 1");
    }
    let realm = realm.unwrap_or_else(|| defaults::REALM.to_string());
    if realm.contains('"') || realm.contains('\\') {
        errs.push("server.realm", "must not contain quotes or backslashes");
    }
    ServerSettings {
        workers,
        max_body_bytes: max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES),
        grace_period: Duration::from_secs(grace_period_secs.unwrap_or(defaults::GRACE_PERIOD_SECS)),
        shutdown_timeout: Duration::from_secs(
            shutdown_timeout_secs.unwrap_or(defaults::SHUTDOWN_TIMEOUT_SECS),
        ),
        reload_poll: Duration::from_millis(reload_poll_ms.unwrap_or(defaults::RELOAD_POLL_MS)),
        realm,
        trusted_proxies: trusted_networks(errs, trusted_proxies.unwrap_or_default()),
        limits: HeadLimits {
            max_uri_bytes: errs.positive(
                "server.max_uri_bytes",
                max_uri_bytes,
                defaults::MAX_URI_BYTES,
            ),
            max_header_bytes: errs.positive(
                "server.max_header_bytes",
                max_header_bytes,
                defaults::MAX_HEADER_BYTES,
            ),
            max_request_header_bytes: errs.positive(
                "server.max_request_header_bytes",
                max_request_header_bytes,
                defaults::MAX_REQUEST_HEADER_BYTES,
            ),
            max_headers: errs.positive("server.max_headers", max_headers, defaults::MAX_HEADERS),
        },
        connections: ConnectionSettings {
            request_head_timeout: Duration::from_millis(errs.positive(
                "server.request_head_timeout_ms",
                request_head_timeout_ms,
                defaults::REQUEST_HEAD_TIMEOUT_MS,
            )),
            keepalive_timeout_secs: errs.positive(
                "server.keepalive_timeout_secs",
                keepalive_timeout_secs,
                defaults::KEEPALIVE_TIMEOUT_SECS,
            ),
            max_connections: errs.positive(
                "server.max_connections",
                max_connections,
                defaults::MAX_CONNECTIONS,
            ),
            buffer_bytes: {
                let bytes = connection_buffer_bytes.unwrap_or(defaults::CONNECTION_BUFFER_BYTES);
                if bytes > defaults::MAX_CONNECTION_BUFFER_BYTES {
                    errs.push(
                        "server.connection_buffer_bytes",
                        format!(
                            "must be at most {} (1 MiB)",
                            defaults::MAX_CONNECTION_BUFFER_BYTES
                        ),
                    );
                }
                bytes
            },
        },
    }
}

/// `server.trusted_proxies`: CIDR networks or single addresses; never "everyone".
fn trusted_networks(errs: &mut Errors, raw: Vec<String>) -> Vec<ipnet::IpNet> {
    let mut networks = Vec::with_capacity(raw.len());
    for (i, entry) in raw.iter().enumerate() {
        let loc = format!("server.trusted_proxies[{i}]");
        let parsed = entry
            .parse::<ipnet::IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) if net.prefix_len() == 0 => errs.push(
                loc,
                format!("{entry:?} trusts every address, so any client could choose its own IP; list your proxies' networks"),
            ),
            Ok(net) => networks.push(net.trunc()),
            Err(_) => errs.push(
                loc,
                format!("{entry:?} is not an IP address or CIDR network (e.g. 10.0.0.0/8, 2001:db8::/32)"),
            ),
        }
    }
    networks
}

/// The built-in identity headers plus the ones the policy adds.
pub(super) fn identity_headers(
    errs: &mut Errors,
    raw: Option<serde_yaml::Value>,
) -> Vec<HeaderName> {
    let extra: Vec<String> = errs.optional("identity_headers", raw);
    let mut identity: Vec<HeaderName> = defaults::IDENTITY_HEADERS
        .into_iter()
        .map(HeaderName::from_static)
        .collect();
    for (i, h) in extra.iter().enumerate() {
        match HeaderName::from_str(h) {
            Ok(h) if !identity.contains(&h) => identity.push(h),
            Ok(_) => {}
            Err(_) => errs.push(
                format!("identity_headers[{i}]"),
                format!("{h:?} is not a valid header name"),
            ),
        }
    }
    identity
}
