//! What every shop service repeats, written once: the service's description ([`Service`]) and
//! process ([`main`]: telemetry, env config, signals, exit codes), SQLite + migrations, the
//! outbox handle, consumers, the API server over mutual TLS with the service's SVID (or behind
//! a mesh sidecar, [`peer`]) and its authorization policy ([`authz`]), the plain ops port
//! (`/healthz` `/readyz` `/metrics`), the HTTP client that presents the SVID, one problem+json
//! error type, gateway identity headers (believed from the gateway only), and graceful shutdown.
//!
//! # How to use
//!
//! ```text
//! // lib.rs of a service: described once
//! pub const SERVICE: Service = Service::new(messaging::contract::ORDERS, 7004, env!("CARGO_PKG_VERSION"));
//! pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), KitError> {
//!     let mut kit = Kit::start(SERVICE, config.base, MIGRATIONS, shutdown).await?; // db, relay, metrics
//!     kit.consume(Arc::new(handler))?;               // queue bound to SERVICE's consumed keys
//!     let outbox = kit.outbox();                     // events as "orders"; wakes the relay
//!     kit.serve(api_router(outbox)).await            // until SIGINT/SIGTERM
//! }
//! // main.rs
//! fn main() -> ExitCode { service_kit::main(orders::SERVICE, orders::Config::from_env, orders::run) }
//! ```
//!
//! # Exit codes
//!
//! The same for every service (see [`main`]): 0 after SIGINT/SIGTERM, 64 ([`EX_USAGE`]) for an
//! invalid environment variable (every one is listed on stderr), 1 ([`EX_FAILURE`]) when
//! telemetry, start-up or serving fails.

pub mod authz;
pub mod config;
mod entry;
mod error;
mod health;
mod identity;
mod ops;
pub mod peer;
mod runtime;
mod service;
mod shutdown;
mod svid;
mod tls_server;

pub use authz::{AuthzPolicy, Rule, Verb};
pub use config::{BaseConfig, ConfigErrors};
pub use entry::{main, EX_FAILURE, EX_USAGE};
pub use error::{AppError, Body, Query};
pub use health::Health;
pub use identity::{Admin, Identity, OwnerOrAdmin, Trace};
pub use messaging::clock::{now_ms, now_rfc3339};
pub use observability::env::{EnvParser, EnvSource, ProcessEnv};
pub use peer::{Caller, IdentityConfig, IdentityMode};
pub use runtime::{create_parent_dir, Kit, KitError};
pub use service::Service;
pub use shutdown::shutdown_on_signals;

/// The ops port (`/healthz`, `/readyz`, `/metrics`, plain HTTP) is the API port plus this.
pub const OPS_PORT_OFFSET: u16 = 100;
