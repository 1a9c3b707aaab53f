//! What every shop service repeats, written once: env config, SQLite + migrations, the
//! `/healthz` `/readyz` `/metrics` router, one problem+json error type, gateway identity headers,
//! and graceful shutdown.
//!
//! # How to use
//!
//! ```text
//! let config = BaseConfig::from_env(&ProcessEnv, "orders", 7004)?;     // main
//! let mut kit = Kit::start("orders", config, MIGRATIONS).await?;       // db, relay, metrics
//! kit.consume("orders", Arc::new(handler))?;                          // bindings from SUBSCRIPTIONS
//! kit.serve(api_router, shutdown_on_signals()).await?;                 // until SIGINT/SIGTERM
//! ```

pub mod config;
mod error;
mod health;
mod identity;
mod runtime;
mod shutdown;

pub use config::{BaseConfig, ConfigErrors, Env, EnvParser, ProcessEnv};
pub use error::{AppError, Body, Query};
pub use health::Health;
pub use identity::{Admin, Identity, Trace};
pub use runtime::{Kit, KitError};
pub use shutdown::shutdown_on_signals;

/// Now, as RFC 3339 text (what every table stores).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
