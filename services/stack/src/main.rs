//! Run with `cargo run --release --bin stack` (add `-- --demo` for one scripted order).

use std::process::ExitCode;

use clap::Parser as _;
use stack::{Config, Options, Outcome};
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config = match Config::from_options(Options::parse(), |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stack: {e}");
            return Ok(ExitCode::from(2));
        }
    };

    let mut term = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };

    match stack::run(config, shutdown).await {
        Ok(Outcome::Interrupted | Outcome::DemoPassed) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("stack: error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
