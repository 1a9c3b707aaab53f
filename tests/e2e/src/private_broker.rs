//! A RabbitMQ node of a test's own, for what the shared broker is not set up to do (such as
//! serving its Prometheus metrics), started and stopped by `stack`'s supervisor.
//!
//! # How to use
//!
//! ```text
//! let broker = PrivateBroker::start(&["rabbitmq_prometheus"], "").await; // ~10 s
//! let conn = lapin::Connection::connect(&broker.amqp_url(), Default::default()).await?;
//! let text = reqwest::get(broker.prometheus_url("/metrics")).await?.text().await?;
//! drop(broker); // SIGTERM: the node stops cleanly; its files stay in a scratch dir
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stack::supervisor::{tail, Launch, Supervisor};

/// Generous: a cold node on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// The process name in the supervisor and its log.
const NODE: &str = "rabbitmq";

/// A running RabbitMQ node on ports of its own (AMQP, Erlang distribution, Prometheus), with its
/// data and config in a scratch directory. Dropping it stops the node (SIGTERM, then SIGKILL
/// after 30 s).
pub struct PrivateBroker {
    sup: Supervisor,
    amqp: SocketAddr,
    prometheus: SocketAddr,
    dir: PathBuf,
}

impl PrivateBroker {
    /// Starts a node with `plugins` enabled and `extra_config` (`rabbitmq.conf` lines) added to
    /// its listeners, and waits until it takes AMQP connections (and serves `/metrics` when
    /// `rabbitmq_prometheus` is among the plugins). Panics, with the node's log and how to
    /// install RabbitMQ, when it cannot.
    pub async fn start(plugins: &[&str], extra_config: &str) -> PrivateBroker {
        let dir = test_support::scratch_dir("rabbitmq-node");
        let ports = test_support::free_ports(3);
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let (amqp, dist, prometheus) = (local(ports[0]), ports[1], local(ports[2]));
        let config = dir.join("rabbitmq.conf");
        std::fs::write(
            &config,
            format!(
                "listeners.tcp.default = {amqp}\n\
                 prometheus.tcp.ip = 127.0.0.1\n\
                 prometheus.tcp.port = {}\n\
                 {extra_config}\n",
                prometheus.port()
            ),
        )
        .unwrap();
        let enabled = dir.join("enabled_plugins");
        std::fs::write(&enabled, format!("[{}].\n", plugins.join(","))).unwrap();
        let node = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a scratch dir has a UTF-8 name")
            .to_owned();
        let launch = Launch::new(NODE, server_program())
            .env("RABBITMQ_NODENAME", format!("{node}@localhost"))
            .env("RABBITMQ_NODE_PORT", amqp.port().to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_CONFIG_FILE", &config)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &enabled)
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_LOGS", "-")
            .stop_on_drop(Duration::from_secs(30));
        let mut sup = Supervisor::new(dir.clone());
        sup.spawn(launch).unwrap_or_else(|e| {
            panic!("{e}; install RabbitMQ (`apt-get install rabbitmq-server`)")
        });
        let mut broker = PrivateBroker {
            sup,
            amqp,
            prometheus,
            dir,
        };
        broker
            .wait_up(plugins.contains(&"rabbitmq_prometheus"))
            .await;
        broker
    }

    async fn wait_up(&mut self, prometheus: bool) {
        let http = reqwest::Client::new();
        if prometheus {
            let url = self.prometheus_url("/metrics");
            let up = self.sup.wait_ready(NODE, &url, START_TIMEOUT, &http).await;
            if let Err(e) = up {
                panic!(
                    "the private RabbitMQ node serves no metrics ({e}); log:\n{}",
                    self.log()
                );
            }
        }
        let url = self.amqp_url();
        let up = self
            .sup
            .wait_until(NODE, START_TIMEOUT, async || {
                let url = url.clone();
                tokio::task::spawn_blocking(move || {
                    messaging::probe::greet(&url, Duration::from_secs(2)).is_ok()
                })
                .await
                .unwrap_or(false)
            })
            .await;
        if let Err(e) = up {
            panic!(
                "the private RabbitMQ node takes no AMQP connections ({e}); log:\n{}",
                self.log()
            );
        }
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` (guest may connect over loopback).
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp)
    }

    /// `http://127.0.0.1:<port><path_and_query>` of the prometheus plugin.
    pub fn prometheus_url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.prometheus)
    }

    /// Where the node keeps its config, data and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The end of the node's log, for failure messages.
    pub fn log(&self) -> String {
        tail(&self.sup.log_path(NODE), 40).join("\n")
    }
}

/// The server script itself: Debian's `rabbitmq-server` on PATH is a wrapper that switches to
/// the `rabbitmq` user when run as root, which could not use a test's scratch directory.
fn server_program() -> PathBuf {
    let debian = Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if debian.is_file() {
        debian.to_owned()
    } else {
        PathBuf::from("rabbitmq-server")
    }
}
