//! The `gateway` binary: `gateway run --config FILE` or `gateway validate FILE`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// A proxy allocates and frees many small buffers per request; mimalloc's thread-local free lists
// beat glibc malloc there (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Vantage API gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given policy file.
    Run {
        /// Policy file (YAML).
        #[arg(long, short, env = "GATEWAY_CONFIG")]
        config: PathBuf,
    },
    /// Check a policy file and print every error; binds nothing. Exit 0 when valid, 1 otherwise.
    Validate {
        /// Policy file (YAML).
        file: PathBuf,
    },
}

/// Exit code for a bad configuration (sysexits EX_CONFIG).
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file } => match gateway::Config::load(&file) {
            Ok(config) => {
                for w in &config.warnings {
                    println!("  warning: {w}");
                }
                println!(
                    "{}: OK ({} routes, {} upstreams, {} issuers, {} rate-limit policies, {} warning(s))",
                    file.display(),
                    config.routes.len(),
                    config.upstreams.len(),
                    config.issuers.len(),
                    config.rate_limits.len(),
                    config.warnings.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{}: {} error(s)", file.display(), errors.0.len());
                for e in &errors.0 {
                    eprintln!("  {e}");
                }
                ExitCode::from(1)
            }
        },
        Command::Run { config } => {
            let telemetry = match observability::init("gateway", env!("CARGO_PKG_VERSION")) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("gateway: telemetry set-up failed: {e}");
                    return ExitCode::from(EX_CONFIG);
                }
            };
            let result = gateway::run(&config, &telemetry);
            telemetry.shutdown();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(gateway::StartError::Config(errors)) => {
                    eprintln!("{}: {} error(s)", config.display(), errors.0.len());
                    for e in &errors.0 {
                        eprintln!("  {e}");
                    }
                    ExitCode::from(EX_CONFIG)
                }
                Err(e) => {
                    eprintln!("gateway: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
