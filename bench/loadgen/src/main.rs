//! Run with `cargo run --release --bin loadgen -- --help`.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use loadgen::{Config, Options};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let options = Options::parse();
    let config = match Config::try_from(&options) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return Ok(ExitCode::from(2));
        }
    };

    let shutdown = async {
        // If the handler cannot be installed, never resolve: the run ends on its own.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        eprintln!("loadgen: stopping; waiting for placed orders (Ctrl-C again to quit now)");
        tokio::spawn(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    };
    let summary = loadgen::run(&config, shutdown).await;

    print!("{}", summary.table());
    if let Some(path) = &options.summary_json {
        let json = serde_json::to_vec_pretty(&summary)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    let problems = summary.problems(config.max_error_rate);
    for p in &problems {
        eprintln!("loadgen: FAILED: {p}");
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
