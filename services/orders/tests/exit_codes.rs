//! The process contract every service gets from `service_kit::main`, checked on the real
//! `orders` binary: exit 64 before anything is opened when a variable is invalid (every bad one
//! listed), exit 1 with the reason when start-up fails.

use std::process::{Command, Output};

fn orders(env: &[(&str, &str)], dir: &std::path::Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orders"));
    cmd.env("DATABASE_PATH", dir.join("orders.db"))
        .env("OTEL_SDK_DISABLED", "true")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the orders binary")
}

#[test]
fn an_invalid_variable_exits_64_and_names_every_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = orders(
        &[
            ("LISTEN_ADDR", "nope"),
            ("ORDERS_PAYMENT_TIMEOUT_SECS", "-1"),
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(r#"orders: invalid configuration: LISTEN_ADDR="nope""#),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"ORDERS_PAYMENT_TIMEOUT_SECS="-1": must be positive"#),
        "{stderr}"
    );
    assert!(
        !dir.path().join("orders.db").exists(),
        "nothing is opened before the configuration is valid"
    );
}

#[test]
fn a_failed_start_exits_1_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    // No broker is needed to fail: the port is taken before anything is published.
    let out = orders(
        &[
            ("LISTEN_ADDR", &addr),
            ("AMQP_URL", "amqp://orders:pw@127.0.0.1:1/vantage"),
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}
