//! Configuration from the environment: what every service reads ([`BaseConfig`]), through
//! observability's one [`EnvParser`], so tests pass a `HashMap` and every bad variable is
//! reported at once.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use messaging::{BrokerEndpoint, RetryBackoff, Topology};
use observability::env::{EnvErrors, EnvParser, EnvSource};

use crate::peer::IdentityConfig;
use crate::Service;

/// Every invalid variable, reported at once (observability's [`EnvErrors`]).
pub type ConfigErrors = EnvErrors;

/// What every service reads. Its `Debug` hides the broker URL's credentials.
#[derive(Clone)]
pub struct BaseConfig {
    /// `LISTEN_ADDR`, default `127.0.0.1:<default port>`: the API, over mutual TLS (or plain
    /// HTTP from a mesh sidecar, see [`IdentityConfig`]).
    pub listen_addr: SocketAddr,
    /// `DATABASE_PATH`, default `data/<service>.db`; the parent directory is created.
    pub database_path: PathBuf,
    /// The broker and the service's own user there: `AMQP_URL` (default
    /// `amqp://127.0.0.1:5672/vantage`, the user `<prefix><service>` when the URL names none),
    /// `AMQP_PASSWORD_FILE`, `AMQP_CA_FILE` (see [`BrokerEndpoint::parse`]). Never logged.
    pub amqp: BrokerEndpoint,
    /// `SHOP_QUEUE_PREFIX`, default empty: prepended to every exchange and queue name.
    pub queue_prefix: String,
    /// `OPS_LISTEN_ADDR`, default the `LISTEN_ADDR` host with its port + 100 (port 0 stays 0):
    /// `/healthz`, `/readyz`, `/metrics` over plain HTTP, nothing else.
    pub ops_addr: SocketAddr,
    /// `IDENTITY_MODE`, `SVID_DIR` (or the `SVID_*_FILE`s, or `SPIFFE_ENDPOINT_SOCKET`), `SPIFFE_TRUST_DOMAIN`,
    /// `SPIFFE_ID_TEMPLATE`, `MESH_TRUSTED_SIDECARS`: see [`IdentityConfig`].
    pub identity: IdentityConfig,
    /// `SHOP_RETRY_BASE_MS` (default 1000) and `SHOP_RETRY_MAX_MS` (default 60000): a delivery
    /// whose handler failed transiently waits the base, then twice as long after each further
    /// failure up to the max, before its next attempt (see `messaging::retry`).
    pub retry: RetryBackoff,
    /// `SHOP_OUTBOX_MAX_AGE_SECS`, default 60: `/readyz` fails (`outbox`) while an event has
    /// waited longer than this for the broker's confirm (a broker down, blocked or refusing).
    pub outbox_max_age: Duration,
}

impl fmt::Debug for BaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BaseConfig")
            .field("listen_addr", &self.listen_addr)
            .field("database_path", &self.database_path)
            .field("amqp", &self.amqp)
            .field("queue_prefix", &self.queue_prefix)
            .field("ops_addr", &self.ops_addr)
            .field("identity", &self.identity)
            .field("retry", &self.retry)
            .field("outbox_max_age", &self.outbox_max_age)
            .finish()
    }
}

impl BaseConfig {
    /// Reads the shared variables; service-specific ones go through the same `parser`.
    pub fn parse(p: &mut EnvParser<'_>, service: &Service) -> Self {
        let queue_prefix = p.string("SHOP_QUEUE_PREFIX", "");
        let user = Topology::new(queue_prefix.clone()).user(service.name());
        let retry = RetryBackoff {
            base: Duration::from_millis(p.parse("SHOP_RETRY_BASE_MS", 1000)),
            max: Duration::from_millis(p.parse("SHOP_RETRY_MAX_MS", 60_000)),
        };
        if retry.base.is_zero() || retry.max < retry.base {
            p.invalid(
                "SHOP_RETRY_MAX_MS",
                retry.max.as_millis().to_string(),
                "SHOP_RETRY_BASE_MS must be positive and at most SHOP_RETRY_MAX_MS",
            );
        }
        let listen_addr = p.parse(
            "LISTEN_ADDR",
            SocketAddr::from(([127, 0, 0, 1], service.default_port)),
        );
        let ops_default = match listen_addr.port() {
            0 => listen_addr,
            port => SocketAddr::new(
                listen_addr.ip(),
                port.saturating_add(crate::OPS_PORT_OFFSET),
            ),
        };
        Self {
            listen_addr,
            database_path: PathBuf::from(
                p.string("DATABASE_PATH", &format!("data/{}.db", service.name())),
            ),
            amqp: BrokerEndpoint::parse(p, &user),
            queue_prefix,
            ops_addr: p.parse("OPS_LISTEN_ADDR", ops_default),
            identity: IdentityConfig::parse(p),
            retry,
            outbox_max_age: Duration::from_secs(p.parse("SHOP_OUTBOX_MAX_AGE_SECS", 60)),
        }
    }

    /// Only the shared variables.
    pub fn from_env(env: &dyn EnvSource, service: &Service) -> Result<Self, ConfigErrors> {
        let mut p = EnvParser::new(env);
        let c = Self::parse(&mut p, service);
        p.finish().map(|()| c)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const ORDERS: Service = Service::new(messaging::contract::ORDERS, 7004, "0");

    #[test]
    fn defaults_and_every_error_at_once() {
        let env: HashMap<&str, &str> = [("SVID_DIR", "/svid")].into_iter().collect();
        let c = BaseConfig::from_env(&env, &ORDERS).unwrap();
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:7004");
        assert_eq!(c.ops_addr.to_string(), "127.0.0.1:7104");
        assert_eq!(c.database_path, PathBuf::from("data/orders.db"));
        assert_eq!(c.queue_prefix, "");
        assert!(format!("{c:?}").contains("amqp://***@127.0.0.1"), "{c:?}");
        // The local broker's vhost `vantage`, as the service's own user (never guest).
        assert_eq!(c.amqp.user(), "orders");
        assert!(format!("{c:?}").contains("127.0.0.1:5672/vantage"), "{c:?}");

        let env: HashMap<&str, &str> = [
            ("LISTEN_ADDR", "nope"),
            ("X_RATE", "2"),
            ("SVID_DIR", "/svid"),
        ]
        .into_iter()
        .collect();
        let mut p = EnvParser::new(&env);
        let _ = BaseConfig::parse(&mut p, &ORDERS);
        let _ = p.rate("X_RATE");
        let errors = p.finish().unwrap_err();
        assert_eq!(errors.0.len(), 2, "{errors}");
        assert!(errors.0[0].to_string().starts_with("LISTEN_ADDR"));
        assert!(errors.0[1].to_string().starts_with("X_RATE"));
    }
}
