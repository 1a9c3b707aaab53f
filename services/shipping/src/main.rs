//! Run with `cargo run --bin shipping` (env: see `shipping::Config`; exit codes: see `service_kit::main`).

fn main() -> std::process::ExitCode {
    service_kit::main(shipping::SERVICE, shipping::Config::from_env, shipping::run)
}
