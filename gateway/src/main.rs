//! The `gateway` binary: `gateway run --config FILE`, `gateway validate FILE`,
//! `gateway explain --config FILE METHOD URL` or `gateway test --config FILE CASES`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// A proxy allocates and frees many small buffers per request; mimalloc's thread-local free lists
// beat glibc malloc there; the v2 line (workspace Cargo.toml) costs fewer instructions per
// allocation than v3 (see docs/benchmarks.md).
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
    /// Show, offline, every decision the policy makes about one request: route, auth steps,
    /// rate limits, upstream. Exit 0 when it would be forwarded, 1 when refused, 78 on a bad
    /// policy or request.
    Explain {
        /// Policy file (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// A request header, `Name: value`; repeat for more.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The client address the request comes from.
        #[arg(long, default_value = "127.0.0.1")]
        client_ip: std::net::IpAddr,
        /// The request method.
        method: String,
        /// An absolute URL (`https://host/path?q`) or a path.
        url: String,
    },
    /// Run policy test cases (see gateway/config/example.cases.yaml) and print a pass/fail
    /// table. Exit 0 when every case passes, 1 when one fails, 78 on a bad policy or cases file.
    Test {
        /// Policy file (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// Cases file (YAML).
        cases: PathBuf,
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
        Command::Explain {
            config,
            headers,
            json,
            client_ip,
            method,
            url,
        } => {
            let request = gateway::explain::ExplainRequest {
                method,
                url,
                headers,
                client_ip,
            };
            match gateway::explain::explain(&config, &request) {
                Ok(explanation) => {
                    if json {
                        println!("{:#}", explanation.to_json());
                    } else {
                        print!("{}", explanation.to_text());
                    }
                    if explanation.status() == 200 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(gateway::explain::ExplainError::Config(errors)) => {
                    print_errors(&config, &errors);
                    ExitCode::from(EX_CONFIG)
                }
                Err(e) => {
                    eprintln!("gateway explain: {e}");
                    ExitCode::from(EX_CONFIG)
                }
            }
        }
        Command::Test { config, cases } => match gateway::policy_test::run(&config, &cases) {
            Ok(report) => {
                print!("{}", report.table());
                if report.passed() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(gateway::policy_test::TestError::Config(errors)) => {
                print_errors(&config, &errors);
                ExitCode::from(EX_CONFIG)
            }
            Err(gateway::policy_test::TestError::Cases(errors)) => {
                print_errors(&cases, &errors);
                ExitCode::from(EX_CONFIG)
            }
            Err(e) => {
                eprintln!("gateway test: {e}");
                ExitCode::from(EX_CONFIG)
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
                    print_errors(&config, &errors);
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

/// Every error of a file, with its location, on stderr.
fn print_errors(file: &std::path::Path, errors: &gateway::ConfigErrors) {
    eprintln!("{}: {} error(s)", file.display(), errors.0.len());
    for e in &errors.0 {
        eprintln!("  {e}");
    }
}
