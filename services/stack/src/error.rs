//! Why a stack run stopped. Each message is one line a newcomer can act on.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything that can end a stack run early.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot create the stack's certificates: {0}")]
    Certs(String),

    #[error(
        "RabbitMQ is not reachable at {addr} ({reason}); start one with `rabbitmq-server -detached` \
         or `docker compose up -d rabbitmq`, or point AMQP_URL at yours"
    )]
    RabbitUnreachable { addr: String, reason: String },

    #[error(
        "cannot import the broker definitions into {broker} with `{how}`: {reason}. Run stack as \
         a user that may use rabbitmqctl (root or rabbitmq), or set \
         RABBITMQ_ADMIN_URL=http://<admin>:<password>@127.0.0.1:15672 to use the management \
         plugin, or import {} yourself (`sudo rabbitmqctl import_definitions {}`) and start \
         again with --broker-provisioned",
        .definitions.display(), .definitions.display()
    )]
    BrokerProvisioning {
        how: String,
        reason: String,
        broker: String,
        definitions: PathBuf,
    },

    #[error(
        "the broker at {broker} does not accept the service user {user} ({reason}); did the \
         definitions ({}) reach this broker? rabbitmqctl imports into the node RABBITMQ_NODENAME \
         names (default rabbit@<this host>)",
        .definitions.display()
    )]
    BrokerRefused {
        user: String,
        broker: String,
        reason: String,
        definitions: PathBuf,
    },

    #[error("port {port} ({owner}) is already in use; stop what holds it or choose other ports (--base-port, --gateway-addr, --admin-addr)")]
    PortTaken { port: u16, owner: String },

    #[error("{} not found; build the binaries with `cargo build --release --workspace --bins` (or pass --bin-dir)", .path.display())]
    MissingBinary { path: PathBuf },

    #[error("`{command}` failed ({status}); fix the build first")]
    BuildFailed { command: String, status: ExitStatus },

    #[error("no gateway config: pass --gateway-config FILE (gateway/config/example.yaml is only found when stack runs from the repo's target dir)")]
    NoGatewayConfig,

    #[error("the gateway rejected {}: {message}", .path.display())]
    InvalidGatewayConfig { path: PathBuf, message: String },

    #[error("{name} was not ready after {}s (see {})", .timeout.as_secs(), .log.display())]
    NotReady {
        name: String,
        timeout: Duration,
        log: PathBuf,
    },

    #[error("{name} exited ({status}); its last log lines are above, the full log is {}", .log.display())]
    ChildExited {
        name: String,
        status: ExitStatus,
        log: PathBuf,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("demo failed: {0}")]
    Demo(String),
}

impl StackError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StackError {
        let context = context.into();
        move |source| StackError::Io { context, source }
    }
}
