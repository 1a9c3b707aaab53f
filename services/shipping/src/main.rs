//! Run with `cargo run --bin shipping` (env: see `shipping::Config`).

use service_kit::ProcessEnv;

/// Exit code for a configuration error (sysexits `EX_USAGE`).
const EX_USAGE: i32 = 64;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = observability::init("shipping", env!("CARGO_PKG_VERSION"))?;
    let config = match shipping::Config::from_env(&ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shipping: {e}");
            std::process::exit(EX_USAGE);
        }
    };
    let shutdown = service_kit::shutdown_on_signals();
    let result = shipping::run(config, shutdown).await;
    telemetry.shutdown();
    result?;
    Ok(())
}
