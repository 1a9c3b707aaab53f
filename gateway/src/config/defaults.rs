//! Every default of the policy file, named once. docs/gateway-config.md cites these names next
//! to each default, and a test checks that the documented value is the one here.

/// `listeners.public`.
pub const PUBLIC_LISTENER: &str = "0.0.0.0:8080";
/// `listeners.admin`: loopback, so metrics and config stay on the host.
pub const ADMIN_LISTENER: &str = "127.0.0.1:9901";
/// `admin.token_env`.
pub const ADMIN_TOKEN_ENV: &str = "VANTAGE_ADMIN_TOKEN";
/// `server.max_body_bytes`: 1 MiB.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;
/// `server.grace_period_secs`.
pub const GRACE_PERIOD_SECS: u64 = 0;
/// `server.shutdown_timeout_secs`.
pub const SHUTDOWN_TIMEOUT_SECS: u64 = 10;
/// `server.reload_poll_ms`.
pub const RELOAD_POLL_MS: u64 = 1000;
/// `server.realm`.
pub const REALM: &str = "vantage";
/// `server.max_uri_bytes`.
pub const MAX_URI_BYTES: usize = 8192;
/// `server.max_header_bytes`.
pub const MAX_HEADER_BYTES: usize = 8192;
/// `server.max_request_header_bytes`.
pub const MAX_REQUEST_HEADER_BYTES: usize = 32 * 1024;
/// `server.max_headers`.
pub const MAX_HEADERS: usize = 100;
/// `server.request_head_timeout_ms`: a request head must be complete this soon after it is due.
pub const REQUEST_HEAD_TIMEOUT_MS: u64 = 10_000;
/// `server.keepalive_timeout_secs`: idle client connections are closed after this.
pub const KEEPALIVE_TIMEOUT_SECS: u64 = 60;
/// `server.max_connections`: client connections open at once on the public listeners.
pub const MAX_CONNECTIONS: usize = 10_000;
/// `server.connection_buffer_bytes`: the read buffer of each plain-HTTP client connection; 0
/// reads straight from the socket. A buffer is held for the connection's whole life, idle or
/// not, and Pingora reads request heads and bodies into buffers of its own (at least 4 KiB),
/// which skip a smaller one anyway: plain HTTP gains nothing from it.
pub const CONNECTION_BUFFER_BYTES: usize = 0;
/// Largest `server.connection_buffer_bytes` accepted.
pub const MAX_CONNECTION_BUFFER_BYTES: usize = 1024 * 1024;
/// Read buffer of each TLS client connection (`listeners.public_tls`): one full TLS record
/// (16 KiB), so OpenSSL reads a record's header and body with one system call.
pub const TLS_CONNECTION_BUFFER_BYTES: usize = 16 * 1024;
/// Identity headers every client copy of is stripped, whatever `identity_headers` adds.
pub const IDENTITY_HEADERS: [&str; 2] = ["x-user-id", "x-user-scopes"];

/// `upstreams.*.connect_timeout_ms`.
pub const CONNECT_TIMEOUT_MS: u64 = 1000;
/// `upstreams.*.read_timeout_ms`.
pub const READ_TIMEOUT_MS: u64 = 10_000;
/// `upstreams.*.retries`.
pub const RETRIES: u32 = 1;
/// `upstreams.*.health_check.path`.
pub const HEALTH_CHECK_PATH: &str = "/healthz";
/// `upstreams.*.health_check.interval_ms`.
pub const HEALTH_CHECK_INTERVAL_MS: u64 = 2000;
/// `upstreams.*.health_check.timeout_ms`.
pub const HEALTH_CHECK_TIMEOUT_MS: u64 = 1000;
/// `upstreams.*.health_check.healthy_threshold`.
pub const HEALTHY_THRESHOLD: u32 = 1;
/// `upstreams.*.health_check.unhealthy_threshold`.
pub const UNHEALTHY_THRESHOLD: u32 = 2;
/// `upstreams.*.passive_ejection.consecutive_failures`.
pub const EJECTION_CONSECUTIVE_FAILURES: u32 = 3;
/// `upstreams.*.passive_ejection.ejection_secs`.
pub const EJECTION_SECS: u64 = 10;
/// `upstreams.*.circuit_breaker.failure_threshold`.
pub const BREAKER_FAILURE_THRESHOLD: u32 = 5;
/// `upstreams.*.circuit_breaker.open_secs`.
pub const BREAKER_OPEN_SECS: u64 = 10;

/// `issuers.*.refresh_interval_secs`.
pub const JWKS_REFRESH_INTERVAL_SECS: u64 = 300;
/// `issuers.*.min_refresh_interval_secs`.
pub const JWKS_MIN_REFRESH_INTERVAL_SECS: u64 = 10;
/// `issuers.*.leeway_secs`.
pub const LEEWAY_SECS: u64 = 30;
/// `issuers.*.max_lifetime_secs`: one day.
pub const MAX_LIFETIME_SECS: u64 = 86_400;

/// `rate_limits.*.idle_prune_secs`.
pub const IDLE_PRUNE_SECS: u64 = 60;
/// `rate_limits.*.ipv6_prefix_len`.
pub const IPV6_PREFIX_LEN: u8 = 64;

/// `stores.*.timeout_ms`: a Redis in the same zone answers in well under a millisecond.
pub const STORE_TIMEOUT_MS: u64 = 5;
/// `stores.*.key_prefix`.
pub const STORE_KEY_PREFIX: &str = "vantage";

/// Every default above by name, for the test that ties docs/gateway-config.md to the code.
#[cfg(test)]
pub(crate) fn by_name() -> Vec<(&'static str, String)> {
    vec![
        ("PUBLIC_LISTENER", PUBLIC_LISTENER.to_string()),
        ("ADMIN_LISTENER", ADMIN_LISTENER.to_string()),
        ("ADMIN_TOKEN_ENV", ADMIN_TOKEN_ENV.to_string()),
        ("MAX_BODY_BYTES", MAX_BODY_BYTES.to_string()),
        ("GRACE_PERIOD_SECS", GRACE_PERIOD_SECS.to_string()),
        ("SHUTDOWN_TIMEOUT_SECS", SHUTDOWN_TIMEOUT_SECS.to_string()),
        ("RELOAD_POLL_MS", RELOAD_POLL_MS.to_string()),
        ("REALM", REALM.to_string()),
        ("MAX_URI_BYTES", MAX_URI_BYTES.to_string()),
        ("MAX_HEADER_BYTES", MAX_HEADER_BYTES.to_string()),
        (
            "MAX_REQUEST_HEADER_BYTES",
            MAX_REQUEST_HEADER_BYTES.to_string(),
        ),
        ("MAX_HEADERS", MAX_HEADERS.to_string()),
        (
            "REQUEST_HEAD_TIMEOUT_MS",
            REQUEST_HEAD_TIMEOUT_MS.to_string(),
        ),
        ("KEEPALIVE_TIMEOUT_SECS", KEEPALIVE_TIMEOUT_SECS.to_string()),
        ("MAX_CONNECTIONS", MAX_CONNECTIONS.to_string()),
        (
            "CONNECTION_BUFFER_BYTES",
            CONNECTION_BUFFER_BYTES.to_string(),
        ),
        ("CONNECT_TIMEOUT_MS", CONNECT_TIMEOUT_MS.to_string()),
        ("READ_TIMEOUT_MS", READ_TIMEOUT_MS.to_string()),
        ("RETRIES", RETRIES.to_string()),
        ("HEALTH_CHECK_PATH", HEALTH_CHECK_PATH.to_string()),
        (
            "HEALTH_CHECK_INTERVAL_MS",
            HEALTH_CHECK_INTERVAL_MS.to_string(),
        ),
        (
            "HEALTH_CHECK_TIMEOUT_MS",
            HEALTH_CHECK_TIMEOUT_MS.to_string(),
        ),
        ("HEALTHY_THRESHOLD", HEALTHY_THRESHOLD.to_string()),
        ("UNHEALTHY_THRESHOLD", UNHEALTHY_THRESHOLD.to_string()),
        (
            "EJECTION_CONSECUTIVE_FAILURES",
            EJECTION_CONSECUTIVE_FAILURES.to_string(),
        ),
        ("EJECTION_SECS", EJECTION_SECS.to_string()),
        (
            "BREAKER_FAILURE_THRESHOLD",
            BREAKER_FAILURE_THRESHOLD.to_string(),
        ),
        ("BREAKER_OPEN_SECS", BREAKER_OPEN_SECS.to_string()),
        (
            "JWKS_REFRESH_INTERVAL_SECS",
            JWKS_REFRESH_INTERVAL_SECS.to_string(),
        ),
        (
            "JWKS_MIN_REFRESH_INTERVAL_SECS",
            JWKS_MIN_REFRESH_INTERVAL_SECS.to_string(),
        ),
        ("LEEWAY_SECS", LEEWAY_SECS.to_string()),
        ("MAX_LIFETIME_SECS", MAX_LIFETIME_SECS.to_string()),
        ("IDLE_PRUNE_SECS", IDLE_PRUNE_SECS.to_string()),
        ("IPV6_PREFIX_LEN", IPV6_PREFIX_LEN.to_string()),
        ("STORE_TIMEOUT_MS", STORE_TIMEOUT_MS.to_string()),
        ("STORE_KEY_PREFIX", STORE_KEY_PREFIX.to_string()),
    ]
}
