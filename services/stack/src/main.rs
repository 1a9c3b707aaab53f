//! Run with `cargo run --release --bin stack` (add `-- --demo` for one scripted order);
//! `stack broker-definitions --help` writes the broker definitions of a deployment;
//! `stack certs --help` a development trust domain (CA, SVIDs, edge certificate).

use std::process::ExitCode;

use clap::Parser as _;
use stack::{Config, Options, Outcome};
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("broker-definitions") {
        return Ok(stack::broker_definitions::main(args.skip(1)));
    }
    if args.peek().map(String::as_str) == Some("certs") {
        return Ok(stack::certs::main(args.skip(1)));
    }
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
