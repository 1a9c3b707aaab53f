//! The process around a service: telemetry, configuration, signals, exit codes.

use std::future::Future;
use std::process::ExitCode;

use observability::env::{EnvSource, ProcessEnv};
use tokio_util::sync::CancellationToken;

use crate::{shutdown_on_signals, ConfigErrors, Service};

/// Exit code for a configuration error: an environment variable is invalid (sysexits `EX_USAGE`).
/// Nothing was bound or opened.
pub const EX_USAGE: u8 = 64;

/// Exit code for any other failure: telemetry could not be set up (an invalid `OTEL_*` or
/// `RUST_LOG` included), the service could not start (database, port, signing keys…), or serving
/// failed.
pub const EX_FAILURE: u8 = 1;

/// Runs a service as a process and returns its exit code: `fn main() -> ExitCode` of every
/// service is this one call.
///
/// In order: builds the Tokio runtime, sets up telemetry for [`Service::name`], reads the
/// configuration with `from_env` from the process environment, and runs `run` until SIGINT or
/// SIGTERM cancels its token (then flushes telemetry).
///
/// Exit codes, the same for every service:
///
/// | code | when |
/// |---|---|
/// | 0 | stopped after SIGINT/SIGTERM |
/// | 1 ([`EX_FAILURE`]) | telemetry set-up, start-up or serving failed; the error and its causes are on stderr |
/// | 64 ([`EX_USAGE`]) | invalid configuration; every bad variable is on stderr as `<service>: invalid configuration: …` |
///
/// ```text
/// fn main() -> std::process::ExitCode {
///     service_kit::main(orders::SERVICE, orders::Config::from_env, orders::run)
/// }
/// ```
pub fn main<C, F, R, Fut, E>(service: Service, from_env: F, run: R) -> ExitCode
where
    F: FnOnce(&dyn EnvSource) -> Result<C, ConfigErrors>,
    R: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(anyhow::Error::new(e).context("cannot start the Tokio runtime")),
    };
    runtime.block_on(async move {
        let telemetry = match observability::init(service.name(), service.version) {
            Ok(t) => t,
            Err(e) => return fail(e.into()),
        };
        let config = match from_env(&ProcessEnv) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{}: {e}", service.name());
                return ExitCode::from(EX_USAGE);
            }
        };
        let result = run(config, shutdown_on_signals()).await;
        telemetry.shutdown();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e.into()),
        }
    })
}

/// Prints `error` with its causes, as a `main` returning `anyhow::Result` would.
fn fail(error: anyhow::Error) -> ExitCode {
    eprintln!("Error: {error:?}");
    ExitCode::from(EX_FAILURE)
}
