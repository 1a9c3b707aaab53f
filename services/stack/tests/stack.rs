//! The stack as a user runs it: the real `stack` binary starting the real services and
//! gateway against the real RabbitMQ at `AMQP_URL` (default 127.0.0.1:5672, the broker a
//! newcomer starts with `rabbitmq-server -detached`), then `loadgen` or `--demo` against it.
//! The stack imports its broker users with `rabbitmqctl import_definitions`, as it does for
//! everyone who runs it on such a broker.
//!
//! Each test gets its own ports, run directory (databases, logs, broker passwords), vhost and
//! queue prefix (so its own broker users), so tests and parallel runs never share state; the
//! vhost and users are deleted afterwards. Without a broker the tests fail and say how to start
//! one; they never skip.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use stack::config::SERVICES;
use stack::supervisor::{tail, Launch, Signal, Supervisor};
use test_support::{amqp_url, binary, workspace_root};

/// Debug builds on a shared 2-core machine start slowly; this is the ceiling, not the norm.
const START_TIMEOUT: Duration = Duration::from_secs(240);
/// The supervised process: the `stack` binary under test.
const STACK: &str = "stack";

/// The broker of `AMQP_URL` with the vhost `vhost` and no credentials: what the stack takes.
fn broker_url(vhost: &str) -> String {
    let (host, port) =
        messaging::probe::authority(&amqp_url()).unwrap_or_else(|| ("127.0.0.1".to_owned(), 5672));
    format!("amqp://{host}:{port}/{vhost}")
}

/// Fails the test, with how to start a broker, when none answers at AMQP_URL.
fn require_broker() {
    if let Err(e) = test_support::require_rabbitmq(&amqp_url()) {
        panic!("these tests need RabbitMQ: {e}");
    }
}

/// Ports for one stack: seven consecutive ones for the services plus gateway, admin and the
/// gateway's TLS listener; the services' ops ports are 100 above theirs.
#[derive(Debug, Clone, Copy)]
struct Ports {
    base: u16,
    gateway: u16,
    admin: u16,
    gateway_tls: u16,
}

impl Ports {
    /// Ten consecutive ports that are free right now, below the ephemeral range (see
    /// [`test_support::free_ports`]), whose ops ports are free too.
    fn free() -> Ports {
        loop {
            let base = test_support::free_ports(10)[0];
            if (base + 100..base + 107).all(test_support::port_is_free) {
                return Ports {
                    base,
                    gateway: base + 7,
                    admin: base + 8,
                    gateway_tls: base + 9,
                };
            }
        }
    }

    fn all(&self) -> Vec<u16> {
        (self.base..self.base + 7)
            .chain(self.base + 100..self.base + 107)
            .chain([self.gateway, self.admin, self.gateway_tls])
            .collect()
    }
}

/// A `stack` process under test, run by the supervisor with its stdout and stderr captured to
/// files. Dropping it stops the stack (SIGTERM, so it stops its children) if the test did not
/// already, then deletes its vhost and broker users.
struct Stack {
    sup: Supervisor,
    ports: Ports,
    dir: PathBuf,
    /// The vhost of this stack (also its queue and user prefix, with a dot), deleted on drop
    /// with its users.
    vhost: String,
}

impl Stack {
    fn start(extra: &[&str], env: &[(&str, &str)]) -> Stack {
        let ports = Ports::free();
        let dir = test_support::scratch_dir("stacktest-run");
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a scratch dir has a UTF-8 name")
            .to_owned();
        let launch = Launch::new(STACK, binary("stack"))
            .args([
                "--no-build",
                "--base-port",
                &ports.base.to_string(),
                "--gateway-addr",
                &format!("127.0.0.1:{}", ports.gateway),
                "--admin-addr",
                &format!("127.0.0.1:{}", ports.admin),
                "--gateway-tls-addr",
                &format!("127.0.0.1:{}", ports.gateway_tls),
                "--run-dir",
                &dir.join("run").display().to_string(),
                "--queue-prefix",
                &format!("{name}."),
                "--ready-timeout-secs",
                &START_TIMEOUT.as_secs().to_string(),
                "--gateway-config",
                &workspace_root()
                    .join("gateway/config/example.yaml")
                    .display()
                    .to_string(),
            ])
            .args(extra.iter().copied())
            .env("AMQP_URL", broker_url(&name))
            // Debug builds hash slowly (argon2 at its default cost took over the gateway's 5 s
            // upstream timeout on a loaded 2-core machine); the cost is not what these tests
            // check. The e2e tests do the same.
            .env("USERS_ARGON2_MEMORY_KIB", "1024")
            .env("USERS_ARGON2_ITERATIONS", "1")
            .envs(env.iter().copied())
            .stderr_apart()
            .stop_on_drop(Duration::from_secs(30));
        let mut sup = Supervisor::new(dir.clone());
        sup.spawn(launch).expect("starting the stack binary");
        Stack {
            sup,
            ports,
            dir,
            vhost: name,
        }
    }

    fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.gateway)
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.sup.log_path(STACK)).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.sup.stderr_path(STACK)).unwrap_or_default()
    }

    /// Everything worth seeing when a test fails: the stack's output and each child's log tail.
    fn report(&self) -> String {
        let mut out = format!(
            "--- stack stdout ---\n{}\n--- stack stderr ---\n{}\n",
            self.stdout(),
            self.stderr()
        );
        let logs = self.dir.join("run").join("logs");
        if let Ok(entries) = std::fs::read_dir(&logs) {
            for entry in entries.flatten() {
                out.push_str(&format!(
                    "--- {} (last lines) ---\n",
                    entry.path().display()
                ));
                for line in tail(&entry.path(), 15) {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Waits until the stack says it is up; fails with its output if it exits first.
    async fn wait_up(&mut self) {
        let stdout = self.sup.log_path(STACK);
        let up = self
            .sup
            .wait_until(STACK, START_TIMEOUT, async || {
                std::fs::read_to_string(&stdout).is_ok_and(|out| out.contains("Vantage is up."))
            })
            .await;
        if let Err(e) = up {
            panic!("stack was not up: {e}\n{}", self.report());
        }
    }

    /// Waits for the stack to exit on its own.
    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.sup.wait_exit(STACK, timeout).await {
            Some(status) => status,
            None => panic!("stack still running after {timeout:?}\n{}", self.report()),
        }
    }

    /// SIGTERM, as `docker stop` or a service manager would send it.
    async fn terminate(&mut self) -> ExitStatus {
        self.sup.signal(STACK, Signal::SIGTERM).unwrap();
        self.wait_exit(Duration::from_secs(60)).await
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // The process must be gone before its vhost and users are deleted.
        self.sup.stop_now();
        delete_broker_state(&self.vhost);
    }
}

/// Runs `stack --demo` with `env` to its end; asserts it exited 0 and returns what it printed.
async fn run_demo(env: &[(&str, &str)]) -> (Stack, String) {
    let mut stack = Stack::start(&["--demo", "--demo-timeout-secs", "90"], env);
    let status = stack
        .wait_exit(START_TIMEOUT + Duration::from_secs(120))
        .await;
    let out = stack.stdout();
    assert!(
        status.success(),
        "demo failed ({status})\n{}",
        stack.report()
    );
    (stack, out)
}

/// The trace id `--demo` printed, checked to be 32 hex digits.
fn printed_trace_id(out: &str) -> String {
    let trace_id = out
        .lines()
        .find_map(|l| l.strip_prefix("demo: trace id "))
        .unwrap_or_else(|| panic!("no trace id printed\n{out}"));
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    assert!(
        trace_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{trace_id}"
    );
    trace_id.to_owned()
}

/// Deletes the vhost a stack provisioned (its queues and exchanges with it) and its users, so
/// test runs do not pile up in the shared broker. All at once: each `rabbitmqctl` takes a
/// second to start.
fn delete_broker_state(vhost: &str) {
    let mut commands = vec![vec!["delete_vhost".to_owned(), vhost.to_owned()]];
    for service in SERVICES {
        commands.push(vec!["delete_user".to_owned(), format!("{vhost}.{service}")]);
    }
    let children: Vec<_> = commands
        .iter()
        .filter_map(|args| {
            Command::new("rabbitmqctl")
                .arg("-q")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()
        })
        .collect();
    for mut child in children {
        let _ = child.wait();
    }
}

/// The stack's services log in as their own users: the broker lists a connection for each
/// service user and none for guest, and the definitions file holds no password.
fn assert_services_use_their_own_broker_users(stack: &Stack) {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "user", "vhost"])
        .output()
        .expect("rabbitmqctl list_connections");
    let listed = String::from_utf8_lossy(&out.stdout);
    let ours: Vec<&str> = listed
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(stack.vhost.as_str()))
        .collect();
    for service in SERVICES {
        let user = format!("{}.{service}", stack.vhost);
        assert!(
            ours.iter()
                .any(|l| l.split_whitespace().next() == Some(user.as_str())),
            "no connection of {user} in {}:\n{listed}",
            stack.vhost
        );
    }
    assert!(
        ours.iter().all(|l| !l.starts_with("guest")),
        "guest connected to {}:\n{listed}",
        stack.vhost
    );
    let broker = stack.dir.join("run").join("broker");
    let definitions = std::fs::read_to_string(broker.join("definitions.json")).unwrap();
    for service in SERVICES {
        let password = std::fs::read_to_string(broker.join("passwords").join(service)).unwrap();
        assert!(
            !definitions.contains(password.trim()),
            "{service}'s password in the definitions"
        );
    }
    assert!(
        stack.stdout().contains("one user per service"),
        "{}",
        stack.stdout()
    );
}

#[tokio::test]
async fn stack_carries_loadgen_traffic_and_every_order_becomes_final() {
    require_broker();
    let mut stack = Stack::start(&[], &[]);
    stack.wait_up().await;
    assert_services_use_their_own_broker_users(&stack);
    let up = stack.stdout();
    assert!(
        up.contains(&stack.gateway_url()),
        "banner names the gateway URL\n{up}"
    );
    assert!(
        up.contains("admin@vantage.local"),
        "banner names the admin account\n{up}"
    );

    let summary_path = stack.dir.join("summary.json");
    let out = tokio::process::Command::new(binary("loadgen"))
        .args(["--gateway-url", &stack.gateway_url()])
        // The example policy allows 20 req/s per user and 50 anonymous req/s per IP; at
        // 15 iterations/s over 4 users the run stays under both, so any 429 is a real error.
        .args(["--vus", "4", "--iterations", "120", "--rate", "15"])
        .args(["--weights", "50,25,25"])
        .args(["--settle-timeout", "90s", "--no-progress"])
        .args(["--summary-json", &summary_path.display().to_string()])
        .output()
        .await
        .expect("running loadgen");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let why = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "loadgen failed ({})\n{table}\n{why}\n{}",
        out.status,
        stack.report()
    );

    let summary: loadgen::Summary =
        serde_json::from_slice(&std::fs::read(&summary_path).unwrap()).unwrap();
    assert!(summary.requests >= 200, "a few hundred requests\n{table}");
    assert_eq!(summary.errors, 0, "no unexpected errors\n{table}");
    assert_eq!(summary.setup_failures, 0, "{table}");
    assert!(summary.orders.placed >= 10, "checkouts happened\n{table}");
    assert_eq!(summary.orders.unsettled, 0, "every order is final\n{table}");
    let finals: u64 = summary
        .orders
        .by_status
        .iter()
        .filter(|(status, _)| *status == "SHIPPED" || status.starts_with("CANCELLED"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(finals, summary.orders.placed, "{table}");
    assert!(
        summary
            .orders
            .by_status
            .get("SHIPPED")
            .copied()
            .unwrap_or(0)
            > 0,
        "tok_visa orders ship\n{table}"
    );
    for route in [
        "POST /api/cart/checkout",
        "GET /api/products",
        "GET /api/orders/{id}",
    ] {
        assert!(
            summary
                .routes
                .iter()
                .any(|r| r.route == route && r.requests > 0),
            "{route} was exercised\n{table}"
        );
    }

    let status = stack.terminate().await;
    assert!(
        status.success(),
        "SIGTERM is a clean stop: {status}\n{}",
        stack.report()
    );
    assert!(
        stack.stdout().contains("stack: stopped"),
        "{}",
        stack.report()
    );
    for port in stack.ports.all() {
        assert!(
            test_support::port_is_free(port),
            "port {port} released after stop\n{}",
            stack.report()
        );
    }
}

#[tokio::test]
async fn stack_demo_ships_one_order_and_exits_zero() {
    require_broker();
    let (stack, out) = run_demo(&[]).await;
    assert!(out.contains("final status SHIPPED"), "{out}");
    for expected in ["PENDING", "PAID", "SHIPPED"] {
        assert!(out.contains(expected), "timeline shows {expected}\n{out}");
    }
    printed_trace_id(&out);
    for port in stack.ports.all() {
        assert!(
            test_support::port_is_free(port),
            "port {port} released after the demo"
        );
    }
}

#[tokio::test]
async fn the_demo_trace_id_is_the_trace_every_hop_exports() {
    require_broker();
    let receiver = test_support::OtlpReceiver::start();
    let endpoint = receiver.grpc_endpoint();
    let (stack, out) = run_demo(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
    ])
    .await;
    assert!(
        out.contains("traces    OTLP to"),
        "the banner says where traces go\n{out}"
    );
    let trace_id = printed_trace_id(&out);
    assert!(
        out.contains(&format!("http://localhost:16686/trace/{trace_id}")),
        "{out}"
    );

    // Every process has stopped (and so flushed) by now; the saga's consumers ran
    // under the same trace, carried through the outbox and the AMQP headers.
    let expected: Vec<&str> = std::iter::once("gateway")
        .chain(stack::config::SERVICES)
        .collect();
    let found = receiver
        .wait_for(
            |spans| {
                expected.iter().all(|svc| {
                    spans
                        .iter()
                        .any(|s| s.service_name == *svc && s.trace_id() == trace_id)
                })
            },
            Duration::from_secs(20),
        )
        .await;
    let spans = match found {
        Ok(spans) => spans,
        Err(missing) => panic!(
            "trace {trace_id} is not complete: {missing}\n{}",
            stack.report()
        ),
    };
    assert_trace_shape(&trace_id, &spans);
}

/// What an SRE relies on in Jaeger: one connected trace whose async edges go through the broker,
/// with the expected span kinds and attributes, the gateway's decisions, and no credentials.
fn assert_trace_shape(trace_id: &str, all: &[test_support::ReceivedSpan]) {
    use std::collections::HashSet;
    use test_support::SpanKind;

    let spans: Vec<_> = all.iter().filter(|s| s.trace_id() == trace_id).collect();
    let ids: HashSet<String> = spans.iter().map(|s| s.span_id()).collect();
    let kinds_of = |svc: &str| -> HashSet<i32> {
        spans
            .iter()
            .filter(|s| s.service_name == svc)
            .map(|s| s.kind() as i32)
            .collect()
    };
    let has = |svc: &str, kind: SpanKind| kinds_of(svc).contains(&(kind as i32));

    // Span kinds per hop.
    assert!(
        has("gateway", SpanKind::Server) && has("gateway", SpanKind::Client),
        "gateway SERVER + CLIENT"
    );
    assert!(has("cart", SpanKind::Server), "cart takes the checkout");
    for svc in ["cart", "inventory", "payment"] {
        assert!(
            has(svc, SpanKind::Producer),
            "{svc} publishes through its outbox"
        );
    }
    for svc in ["inventory", "payment", "shipping", "orders"] {
        assert!(has(svc, SpanKind::Consumer), "{svc} consumes events");
    }

    // Connected: only the gateway's SERVER spans have a parent outside the trace (the demo
    // client's own span); every other span's parent was exported too.
    for s in &spans {
        let parent = s.parent_span_id();
        let is_entry = s.service_name == "gateway" && s.kind() as i32 == SpanKind::Server as i32;
        if !is_entry {
            let parent = parent
                .unwrap_or_else(|| panic!("{} span {:?} has no parent", s.service_name, s.name()));
            assert!(
                ids.contains(&parent),
                "{} span {:?} hangs off a span that is not in the trace",
                s.service_name,
                s.name()
            );
        }
    }

    // Across the broker: each CONSUMER's parent is a PRODUCER of the trace, and it links to it.
    let producers: Vec<_> = spans
        .iter()
        .filter(|s| s.kind() as i32 == SpanKind::Producer as i32)
        .collect();
    for p in &producers {
        assert_eq!(
            p.attr_str("messaging.system").as_deref(),
            Some("rabbitmq"),
            "{}",
            p.name()
        );
        for key in [
            "messaging.destination.name",
            "messaging.rabbitmq.destination.routing_key",
            "messaging.message.id",
            "messaging.operation.type",
        ] {
            assert!(
                p.attr(key).is_some(),
                "PRODUCER {} ({}) lacks {key}",
                p.name(),
                p.service_name
            );
        }
    }
    let producer_ids: HashSet<String> = producers.iter().map(|p| p.span_id()).collect();
    let consumers: Vec<_> = spans
        .iter()
        .filter(|s| s.kind() as i32 == SpanKind::Consumer as i32)
        .collect();
    assert!(!consumers.is_empty());
    for c in &consumers {
        let parent = c.parent_span_id().unwrap_or_default();
        assert!(
            producer_ids.contains(&parent),
            "CONSUMER {} ({}) is not a child of a PRODUCER",
            c.name(),
            c.service_name
        );
        assert!(
            c.links()
                .iter()
                .any(|(t, sp)| t == trace_id && *sp == parent),
            "CONSUMER {} ({}) does not link to its producer",
            c.name(),
            c.service_name
        );
        assert_eq!(c.attr_str("messaging.system").as_deref(), Some("rabbitmq"));
    }

    // The gateway's span of an authenticated call carries its decisions.
    let checkout = spans
        .iter()
        .find(|s| {
            s.service_name == "gateway"
                && s.kind() as i32 == SpanKind::Server as i32
                && s.attr_str("http.request.method").as_deref() == Some("POST")
                && s.attr_str("url.path").as_deref() == Some("/api/cart/checkout")
        })
        .expect("the gateway span of the checkout");
    assert_eq!(checkout.attr_str("vantage.route").as_deref(), Some("cart"));
    assert_eq!(
        checkout.attr_str("vantage.auth.result").as_deref(),
        Some("allowed")
    );
    assert!(checkout.attr_str("vantage.auth.issuer").is_some());
    assert!(checkout.attr_str("enduser.id").is_some());
    assert_eq!(
        checkout.attr_str("vantage.ratelimit.result").as_deref(),
        Some("allowed")
    );
    assert!(checkout.attr("vantage.ratelimit.remaining").is_some());
    for key in [
        "http.route",
        "url.scheme",
        "server.address",
        "client.address",
        "network.protocol.version",
        "http.response.status_code",
    ] {
        assert!(checkout.attr(key).is_some(), "gateway span lacks {key}");
    }

    // No credentials anywhere: every JWT starts with "eyJ" (base64 of `{"`).
    for s in all {
        assert!(
            !s.contains_text("eyJ"),
            "a token-like value in {} span {:?}",
            s.service_name,
            s.name()
        );
        assert!(
            !s.contains_text("Bearer "),
            "a bearer credential in {} span {:?}",
            s.service_name,
            s.name()
        );
    }
}

#[tokio::test]
async fn stack_without_rabbitmq_says_how_to_start_one() {
    let closed = test_support::free_port();
    let url = format!("amqp://127.0.0.1:{closed}/vantage");
    let out = Command::new(binary("stack"))
        .args(["--no-build", "--amqp-url", &url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{closed}")), "{stderr}");
    assert!(stderr.contains("rabbitmq-server -detached"), "{stderr}");
    assert!(stderr.contains("docker compose up -d rabbitmq"), "{stderr}");

    // Credentials in AMQP_URL are refused (every service gets its own user), and not printed.
    let url = format!("amqp://guest:s3cret@127.0.0.1:{closed}/%2f");
    let out = Command::new(binary("stack"))
        .args(["--no-build", "--amqp-url", &url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("must not name a user"), "{stderr}");
    assert!(
        !stderr.contains("s3cret") && !stderr.contains("guest:"),
        "no credentials in output: {stderr}"
    );
}

#[tokio::test]
async fn stack_names_the_port_that_is_taken() {
    require_broker();
    let ports = Ports::free();
    let _held = TcpListener::bind(("127.0.0.1", ports.base + 2)).unwrap();
    let out = Command::new(binary("stack"))
        .arg("--no-build")
        .args(["--base-port", &ports.base.to_string()])
        .args(["--gateway-addr", &format!("127.0.0.1:{}", ports.gateway)])
        .args(["--admin-addr", &format!("127.0.0.1:{}", ports.admin)])
        .args([
            "--gateway-tls-addr",
            &format!("127.0.0.1:{}", ports.gateway_tls),
        ])
        .env("AMQP_URL", broker_url("vantage"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&format!("port {} (cart) is already in use", ports.base + 2)),
        "{stderr}"
    );
}
