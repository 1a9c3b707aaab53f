//! Run with `cargo run --bin audit` (env: see `audit::Config`; exit codes: see `service_kit::main`).

fn main() -> std::process::ExitCode {
    service_kit::main(audit::SERVICE, audit::Config::from_env, audit::run)
}
