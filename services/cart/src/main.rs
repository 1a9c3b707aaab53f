//! Run with `cargo run --bin cart` (env: see `cart::Config`; exit codes: see `service_kit::main`).

fn main() -> std::process::ExitCode {
    service_kit::main(cart::SERVICE, cart::Config::from_env, cart::run)
}
