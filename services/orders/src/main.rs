//! Run with `cargo run --bin orders` (env: see `orders::Config`; exit codes: see `service_kit::main`).

fn main() -> std::process::ExitCode {
    service_kit::main(orders::SERVICE, orders::Config::from_env, orders::run)
}
