//! `loadgen`: a k6-like load generator for the Vantage shop.
//!
//! Virtual users register, log in, then loop over weighted tasks — browse, add to cart,
//! checkout — against the gateway, for a duration or a number of iterations, optionally
//! at a target rate. Every iteration is one trace: its requests carry a `traceparent`
//! with the same trace id, so any slow or failed iteration can be found in Jaeger. When
//! the load stops, every order placed is polled until it is final (SHIPPED or
//! CANCELLED), and a summary reports requests, errors by status, latency percentiles per
//! route and orders by final status.
//!
//! # How to use
//!
//! ```text
//! cargo run --release --bin loadgen -- --vus 20 --duration 1m --rate 100
//! cargo run --release --bin loadgen -- --iterations 300 --summary-json target/loadgen.json
//! ```
//!
//! The [`api`] module is also the typed client that `stack --demo` drives.

pub mod api;
pub mod config;
mod run;
pub mod stats;
pub mod summary;

pub use config::{Config, ConfigError, Options};
pub use run::run;
pub use summary::Summary;
