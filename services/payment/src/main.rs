//! Run with `cargo run --bin payment` (env: see `payment::Config`; exit codes: see `service_kit::main`).

fn main() -> std::process::ExitCode {
    service_kit::main(payment::SERVICE, payment::Config::from_env, payment::run)
}
