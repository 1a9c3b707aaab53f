//! Run with `cargo run --bin users` (env: see `users::Config`; exit codes: see `service_kit::main`).

fn main() -> std::process::ExitCode {
    service_kit::main(users::SERVICE, users::Config::from_env, users::run)
}
