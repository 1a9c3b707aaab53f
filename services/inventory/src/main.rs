//! Run with `cargo run --bin inventory` (env: see `inventory::Config`; exit codes: see `service_kit::main`).

fn main() -> std::process::ExitCode {
    service_kit::main(
        inventory::SERVICE,
        inventory::Config::from_env,
        inventory::run,
    )
}
