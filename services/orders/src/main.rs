//! Run with `cargo run --bin orders` (env: see `orders::Config`).

use service_kit::ProcessEnv;

/// Exit code for a configuration error (sysexits `EX_USAGE`).
const EX_USAGE: i32 = 64;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = observability::init("orders", env!("CARGO_PKG_VERSION"))?;
    let config = match orders::Config::from_env(&ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("orders: {e}");
            std::process::exit(EX_USAGE);
        }
    };
    let shutdown = service_kit::shutdown_on_signals();
    let result = orders::run(config, shutdown).await;
    telemetry.shutdown();
    result?;
    Ok(())
}
