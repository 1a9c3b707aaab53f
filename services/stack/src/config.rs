//! Command-line options and the validated configuration of a stack run.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The services, in start order, with the offset of their port from `--base-port`.
/// `users` comes first: the gateway reads its JWKS from it.
pub const SERVICES: [&str; 7] = [
    "users",
    "inventory",
    "cart",
    "orders",
    "payment",
    "shipping",
    "audit",
];

/// The ports the example gateway config (and every service's default) uses.
pub const DEFAULT_BASE_PORT: u16 = 7001;

/// Admin account created by `users` when the environment does not name one. A development
/// default, printed at start-up; set `SHOP_ADMIN_PASSWORD` for anything shared.
pub const DEV_ADMIN_EMAIL: &str = "admin@vantage.local";
/// See [`DEV_ADMIN_EMAIL`].
pub const DEV_ADMIN_PASSWORD: &str = "vantage-dev-admin";

/// Command-line options; [`Config::from_options`] validates them.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "stack",
    about = "Run the Vantage gateway and its seven services as local processes.",
    after_help = "Needs a RabbitMQ (AMQP_URL, default amqp://127.0.0.1:5672/vantage): \
                  `rabbitmq-server -detached` or `docker compose up -d rabbitmq`. Each service \
                  gets its own broker user, imported with `rabbitmqctl import_definitions` (run \
                  as root or rabbitmq) or through RABBITMQ_ADMIN_URL. Every OTEL_*, \
                  RUST_LOG and fault flag (PAYMENT_DECLINE_RATE, PAYMENT_LATENCY_MS, \
                  INVENTORY_FAILURE_RATE, SHIPPING_CONSUMER_DELAY_MS, ...) set in the environment \
                  is passed on to the children."
)]
pub struct Options {
    /// Run one scripted shopper journey, print its order timeline and trace id, then stop.
    #[arg(long)]
    pub demo: bool,

    /// Public address of the gateway.
    #[arg(long, env = "STACK_GATEWAY_ADDR", default_value = "0.0.0.0:8080")]
    pub gateway_addr: SocketAddr,

    /// Public TLS address of the gateway (HTTP/2 and HTTP/1.1), with a certificate from the
    /// stack's CA (`<run dir>/pki/ca.crt`).
    #[arg(long, env = "STACK_GATEWAY_TLS_ADDR", default_value = "0.0.0.0:8443")]
    pub gateway_tls_addr: SocketAddr,

    /// Admin address of the gateway (/healthz, /readyz, /metrics, /config).
    #[arg(long, env = "STACK_ADMIN_ADDR", default_value = "127.0.0.1:9901")]
    pub admin_addr: SocketAddr,

    /// Port of `users`; the other services take the next six ports in the order
    /// users, inventory, cart, orders, payment, shipping, audit.
    #[arg(long, env = "STACK_BASE_PORT", default_value_t = DEFAULT_BASE_PORT)]
    pub base_port: u16,

    /// Directory for logs (`logs/`), databases (`data/`) and the generated gateway config.
    #[arg(long, env = "STACK_RUN_DIR", default_value = ".stack")]
    pub run_dir: PathBuf,

    /// Delete the databases in the run directory before starting.
    #[arg(long)]
    pub fresh: bool,

    /// The broker and vhost every service uses (no user: each service gets its own).
    #[arg(long, env = "AMQP_URL", default_value = messaging::DEFAULT_URL)]
    pub amqp_url: String,

    #[command(flatten)]
    pub broker: crate::broker::BrokerOptions,

    /// Prefix for exchange and queue names, so parallel stacks never share queues.
    #[arg(long, env = "SHOP_QUEUE_PREFIX")]
    pub queue_prefix: Option<String>,

    /// Gateway config to start from (default: gateway/config/example.yaml in the repo).
    /// Its 127.0.0.1:7001..7007, :8080 and :9901 addresses are rewritten to the chosen ports.
    #[arg(long)]
    pub gateway_config: Option<PathBuf>,

    /// Directory holding the `gateway` and service binaries (default: next to `stack`).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,

    /// Do not run `cargo build` for the binaries first, even inside the repo.
    #[arg(long)]
    pub no_build: bool,

    /// How long each process may take to answer /readyz with 200.
    #[arg(long, default_value_t = 60)]
    pub ready_timeout_secs: u64,

    /// How long the demo waits for its order to become final.
    #[arg(long, default_value_t = 60)]
    pub demo_timeout_secs: u64,

    /// Admin account created by `users`.
    #[arg(long, env = "SHOP_ADMIN_EMAIL", default_value = DEV_ADMIN_EMAIL)]
    pub admin_email: String,

    /// Password of the admin account.
    #[arg(long, env = "SHOP_ADMIN_PASSWORD", hide_env_values = true, hide_default_value = true, default_value = DEV_ADMIN_PASSWORD)]
    pub admin_password: String,
}

/// One service process to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: &'static str,
    /// The API (mutual TLS).
    pub addr: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics` (plain HTTP): the API port + 100.
    pub ops_addr: SocketAddr,
}

/// A validated stack configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub demo: bool,
    pub gateway_addr: SocketAddr,
    pub gateway_tls_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub services: Vec<ServiceSpec>,
    pub run_dir: PathBuf,
    pub fresh: bool,
    pub amqp_url: String,
    /// Where the broker is and how the stack provisions its users ([`crate::broker`]).
    pub broker: crate::broker::BrokerPlan,
    pub queue_prefix: Option<String>,
    pub gateway_config: Option<PathBuf>,
    pub bin_dir: Option<PathBuf>,
    pub build: bool,
    pub ready_timeout: Duration,
    pub demo_timeout: Duration,
    pub admin_email: String,
    pub admin_password: String,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific one), to say where traces go.
    pub otlp_endpoint: Option<String>,
}

/// Every problem found in the options, reported at once.
#[derive(Debug, thiserror::Error)]
#[error("invalid options: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Validates `opts`; `env` is how OTEL variables are read (a closure, so tests need no real env).
    pub fn from_options(
        opts: Options,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let Options {
            demo,
            gateway_addr,
            gateway_tls_addr,
            admin_addr,
            base_port,
            run_dir,
            fresh,
            amqp_url,
            broker,
            queue_prefix,
            gateway_config,
            bin_dir,
            no_build,
            ready_timeout_secs,
            demo_timeout_secs,
            admin_email,
            admin_password,
        } = opts;
        let mut errors = Vec::new();
        let last = u32::from(base_port) + SERVICES.len() as u32 - 1
            + u32::from(crate::contract::OPS_PORT_OFFSET);
        if base_port == 0 || last > u32::from(u16::MAX) {
            errors.push(format!(
                "--base-port {base_port} leaves no room for {} services and their ops ports (+{})",
                SERVICES.len(),
                crate::contract::OPS_PORT_OFFSET
            ));
        }
        let plan = crate::broker::BrokerPlan::new(
            &amqp_url,
            queue_prefix.as_deref().unwrap_or_default(),
            &broker,
        )
        .map_err(|e| errors.extend(e))
        .ok();
        if ready_timeout_secs == 0 || demo_timeout_secs == 0 {
            errors.push("timeouts must be at least one second".to_owned());
        }
        if !admin_email.contains('@') {
            errors.push(format!(
                "SHOP_ADMIN_EMAIL {admin_email:?} is not an email address"
            ));
        }
        if admin_password.len() < 8 {
            errors.push("SHOP_ADMIN_PASSWORD must be at least 8 characters".to_owned());
        }
        if let Some(p) = queue_prefix.as_deref() {
            if p.contains(char::is_whitespace) {
                errors.push(format!("SHOP_QUEUE_PREFIX {p:?} must not contain spaces"));
            }
        }
        let Some(broker) = plan.filter(|_| errors.is_empty()) else {
            return Err(ConfigError(errors));
        };
        let host = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let services = SERVICES
            .iter()
            .enumerate()
            .map(|(i, name)| ServiceSpec {
                name,
                addr: SocketAddr::new(host, base_port + i as u16),
                ops_addr: SocketAddr::new(
                    host,
                    base_port + i as u16 + crate::contract::OPS_PORT_OFFSET,
                ),
            })
            .collect();
        let otlp_endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .filter(|e| !e.is_empty())
            .filter(|_| env("OTEL_SDK_DISABLED").as_deref() != Some("true"));
        Ok(Config {
            demo,
            gateway_addr,
            gateway_tls_addr,
            admin_addr,
            services,
            run_dir,
            fresh,
            amqp_url,
            broker,
            queue_prefix: queue_prefix.filter(|p| !p.is_empty()),
            gateway_config,
            bin_dir,
            build: !no_build,
            ready_timeout: Duration::from_secs(ready_timeout_secs),
            demo_timeout: Duration::from_secs(demo_timeout_secs),
            admin_email,
            admin_password,
            otlp_endpoint,
        })
    }

    /// Whether the admin password is the documented development default (then it is
    /// safe to print; a password from the environment never is).
    pub fn admin_password_is_dev_default(&self) -> bool {
        self.admin_password == DEV_ADMIN_PASSWORD
    }

    /// The URL a client on this machine uses for the gateway.
    pub fn gateway_url(&self) -> String {
        format!("http://{}", connectable(self.gateway_addr))
    }

    /// The gateway's public TLS base URL (`https://localhost:<port>`: the edge certificate names
    /// localhost and 127.0.0.1).
    pub fn gateway_tls_url(&self) -> String {
        format!("https://localhost:{}", self.gateway_tls_addr.port())
    }

    /// The gateway admin base URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", connectable(self.admin_addr))
    }
}

/// A wildcard listen address is reached through loopback.
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Options {
        Options::try_parse_from(std::iter::once("stack").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn services_take_consecutive_ports_from_the_base() {
        let c = Config::from_options(opts(&["--base-port", "17001"]), |_| None).unwrap();
        assert_eq!(c.services.len(), 7);
        assert_eq!(c.services[0].name, "users");
        assert_eq!(c.services[0].addr.port(), 17001);
        assert_eq!(c.services[6].name, "audit");
        assert_eq!(c.services[6].addr.port(), 17007);
        assert_eq!(c.gateway_url(), "http://127.0.0.1:8080");
        assert_eq!(c.admin_url(), "http://127.0.0.1:9901");
        assert!(c.build);
        assert!(c.otlp_endpoint.is_none());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = Config::from_options(
            opts(&[
                "--base-port",
                "65530",
                "--amqp-url",
                "http://x",
                "--admin-email",
                "nobody",
                "--admin-password",
                "short",
            ]),
            |_| None,
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
    }

    #[test]
    fn traces_endpoint_prefers_the_traces_variable_and_respects_sdk_disabled() {
        let o = || opts(&[]);
        let c = Config::from_options(o(), |k| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://a:4317".into()),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some("http://b:4318/v1/traces".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://b:4318/v1/traces"));
        let c = Config::from_options(o(), |k| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://a:4317".into()),
            "OTEL_SDK_DISABLED" => Some("true".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.otlp_endpoint, None);
    }
}
