//! The process contract every service gets from `service_kit::main`, checked on the real
//! `orders` binary: exit 64 before anything is opened when a variable is invalid (every bad one
//! listed), exit 1 with the reason when start-up fails, and the HTTP port bound before anything
//! touches the broker.

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
        stderr.contains("SVID_DIR: required in IDENTITY_MODE=mtls"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("orders.db").exists(),
        "nothing is opened before the configuration is valid"
    );
}

#[test]
fn a_bad_svid_file_exits_1_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let svid = dir.path().join("svid");
    std::fs::create_dir_all(&svid).unwrap();
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(svid.join(f), "not PEM").unwrap();
    }
    let out = orders(&[("SVID_DIR", svid.to_str().unwrap())], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: not a PEM certificate",
            svid.join("tls.crt").display()
        )),
        "{stderr}"
    );
    assert!(
        !dir.path().join("orders.db").exists(),
        "the SVID is checked before the database is opened"
    );
}

#[test]
fn a_failed_start_exits_1_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // A valid SVID, so start-up gets as far as binding its port.
    let ca = identity::dev_ca::DevCa::new("exit code test CA").unwrap();
    let svid = dir.path().join("svid");
    ca.write_svid(
        &svid,
        &"spiffe://vantage.local/orders".parse().unwrap(),
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    // No broker is needed to fail: the port is taken before anything is published.
    let out = orders(
        &[
            ("LISTEN_ADDR", &addr),
            ("SVID_DIR", svid.to_str().unwrap()),
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

/// Issue 14: the port is bound before the relay and the consumer start, so a taken port with a
/// reachable broker is one error line and exit 1: no broker connection was opened, so no lapin
/// panic while the runtime shuts down, and nothing was taken off the queue.
#[test]
fn a_taken_port_is_one_error_line_even_with_a_broker() {
    // A broker that answers (services refuse `guest`, so as their own user name).
    test_support::require_rabbitmq(&test_support::amqp_url()).unwrap_or_else(|why| panic!("{why}"));
    let url = "amqp://orders:pw@127.0.0.1:5672/vantage".to_owned();
    let dir = tempfile::tempdir().unwrap();
    let ca = identity::dev_ca::DevCa::new("exit code test CA").unwrap();
    let svid = dir.path().join("svid");
    ca.write_svid(
        &svid,
        &"spiffe://vantage.local/orders".parse().unwrap(),
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let prefix = format!("{}.", test_support::unique_name("exit-codes"));
    let out = orders(
        &[
            ("LISTEN_ADDR", &addr),
            ("SVID_DIR", svid.to_str().unwrap()),
            ("AMQP_URL", &url),
            ("SHOP_QUEUE_PREFIX", &prefix),
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("Error")).collect();
    assert_eq!(
        errors,
        [format!(
            "Error: cannot listen on {addr}: Address already in use (os error 98)"
        )],
        "{stderr}"
    );
    assert!(!stderr.contains("Caused by"), "{stderr}");
    for text in [&stderr, &stdout] {
        assert!(!text.contains("panicked"), "{text}");
        assert!(
            !text.contains("Consumer attached"),
            "consumed before binding:\n{text}"
        );
    }
}
