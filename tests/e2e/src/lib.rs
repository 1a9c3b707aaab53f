//! Harness for end-to-end tests: builds the real binaries, starts every shop service and the
//! gateway on free ports with their own databases and queue prefix (processes run under
//! `stack::supervisor`, the harness `stack` itself uses), and stops them on drop.
//!
//! # How to use
//!
//! ```text
//! let stack = Stack::start(&[("cart", "CART_PAYMENT_TIMEOUT_SECS", "1")]).await;
//! let token = stack.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
//! let (status, body) = stack.api.get("/api/products", None).await;
//! stack.stop().await; // or drop it: processes are killed either way
//! ```
//!
//! The broker is secured as deployed: a RabbitMQ node of this test process
//! (`test_support::BrokerNode`, one per test binary), AMQPS only for the services, each with its
//! own user and the contract's permissions, imported by the stack's own provisioning
//! (`stack::broker`, through the management API) into a vhost of each test's own, deleted on
//! [`Stack::stop`]. Needs `rabbitmq-server` installed; fails with instructions when it is not.

pub mod dashboards;
pub mod private_broker;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use loadgen::api::{Reply, ShopClient};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use stack::supervisor::{tail, Launch, Signal, Supervisor};
use test_support::BrokerNode;

/// Every service, in start order (users first: the gateway reads its JWKS).
pub use stack::config::SERVICES;
pub const ADMIN_EMAIL: &str = "admin@e2e.test";
pub const ADMIN_PASSWORD: &str = "admin-password-e2e";
const GATEWAY_ADMIN_TOKEN: &str = "e2e-admin-token";
/// How long each process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Log lines shown in a failure message.
const LOG_LINES: usize = 40;

/// Sets up this stack's corner of the test broker: vhost, users, queues, through the stack's own
/// provisioning; returns it and the node.
async fn secured_broker(dir: &Path, prefix: &str) -> (stack::broker::Broker, &'static BrokerNode) {
    // Booting the node blocks for seconds: off the runtime, so other futures (another broker
    // starting beside this stack) go on meanwhile.
    let node = tokio::task::spawn_blocking(BrokerNode::shared)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let vhost = prefix.trim_end_matches('.');
    let url = format!("amqps://localhost:{}/{vhost}", node.amqps_port());
    let options = stack::broker::BrokerOptions {
        broker_admin_url: Some(node.management_url()),
        broker_provisioned: false,
        amqp_ca_file: Some(node.ca_file().to_owned()),
    };
    let plan = stack::broker::BrokerPlan::new(&url, prefix, &options)
        .unwrap_or_else(|e| panic!("broker plan: {e:?}"));
    let broker =
        stack::broker::Broker::prepare(plan, dir).expect("broker passwords and definitions");
    broker
        .import()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log_tail()));
    broker
        .verify(Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (broker, node)
}

/// The gateway's public API, as a test sees it: every call returns the status and the body
/// (JSON, or the text as a JSON string) and panics only when no response came. A thin layer
/// over [`ShopClient::request`], the one shop client.
pub struct Api {
    client: ShopClient,
}

impl Api {
    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let (s, v, _) = answer(
            path,
            self.client
                .request(Method::GET, path, token, None, &[])
                .await,
        );
        (s, v)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self.post_with(path, token, body, &[]).await;
        (s, v)
    }

    pub async fn post_with(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let sent = self
            .client
            .request(Method::POST, path, token, Some(&body), headers)
            .await;
        answer(path, sent)
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let sent = self
            .client
            .request(Method::DELETE, path, token, None, &[])
            .await;
        let (s, v, _) = answer(path, sent);
        (s, v)
    }
}

/// Status, body and headers of a reply; panics when no response came.
fn answer(
    path: &str,
    sent: Result<Reply, reqwest::Error>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let reply = sent.unwrap_or_else(|e| panic!("{path}: {e}"));
    let value = reply.json_or_text();
    (reply.status, value, reply.headers)
}

/// A running shop: seven services and the gateway.
pub struct Stack {
    pub api: Api,
    /// Service name → `127.0.0.1:port` of its API (mutual TLS), for assertions on internal state.
    pub addrs: HashMap<&'static str, String>,
    /// Service name → `127.0.0.1:port` of its ops port (`/healthz`, `/readyz`, `/metrics`).
    pub ops_addrs: HashMap<&'static str, String>,
    /// The stack's certificates: every workload's SVID, the CA (`stack::certs`).
    pub pki: stack::certs::PkiPaths,
    pub prefix: String,
    /// The gateway's admin listener, `127.0.0.1:port`.
    pub admin_addr: String,
    /// Plain HTTP: readiness and `/metrics` on the ops ports, the gateway.
    http: reqwest::Client,
    /// Mutual TLS with the gateway's SVID, for calls to a service's own API that bypass the
    /// gateway (as the gateway, the one caller whose x-user-id the services believe).
    mtls: reqwest::Client,
    /// This stack's vhost and users on the test broker node.
    broker: stack::broker::Broker,
    node: &'static BrokerNode,
    /// Declared before `dir`: the processes are gone before their directory is.
    sup: Supervisor,
    dir: tempfile::TempDir,
}

impl Stack {
    /// Starts everything; `extra_env` is `(service, variable, value)`.
    pub async fn start(extra_env: &[(&str, &str, &str)]) -> Stack {
        let bin = test_support::binaries();
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("e2e-{}.", uuid::Uuid::new_v4().simple());
        let (broker, node) = secured_broker(dir.path(), &prefix).await;
        // Ports below the ephemeral range: a `bind(0)` port could be taken by another test's
        // service or client before ours binds it, and a readiness probe would then be answered
        // by someone else's process.
        let ports = test_support::free_ports(SERVICES.len() as u16 * 2 + 2);
        let addr_at = |offset: usize| -> HashMap<&'static str, String> {
            SERVICES
                .iter()
                .enumerate()
                .map(|(i, s)| (*s, format!("127.0.0.1:{}", ports[offset + i])))
                .collect()
        };
        let (addrs, ops_addrs) = (addr_at(0), addr_at(SERVICES.len()));
        let (gateway_port, admin_port) = (ports[2 * SERVICES.len()], ports[2 * SERVICES.len() + 1]);
        // The trust domain: a CA of this stack's own and one SVID per workload, as `stack` makes them.
        let pki = stack::certs::Pki::prepare(dir.path())
            .unwrap_or_else(|e| panic!("stack certificates: {e}"))
            .paths;
        let http = reqwest::Client::new();
        let mtls = mtls_client(&pki);
        let mut stack = Stack {
            api: Api {
                client: ShopClient::new(http.clone(), &format!("http://127.0.0.1:{gateway_port}")),
            },
            addrs: addrs.clone(),
            ops_addrs: ops_addrs.clone(),
            pki: pki.clone(),
            mtls,
            prefix: prefix.clone(),
            admin_addr: format!("127.0.0.1:{admin_port}"),
            http,
            broker,
            node,
            sup: Supervisor::new(dir.path().to_path_buf()),
            dir,
        };
        for svc in SERVICES {
            let mut env: Vec<(String, String)> = vec![
                ("LISTEN_ADDR".into(), addrs[svc].clone()),
                ("OPS_LISTEN_ADDR".into(), ops_addrs[svc].clone()),
                ("IDENTITY_MODE".into(), "mtls".into()),
                ("SVID_DIR".into(), pki.svid_dir(svc).display().to_string()),
                (
                    "DATABASE_PATH".into(),
                    stack
                        .dir
                        .path()
                        .join(format!("data/{svc}.db"))
                        .display()
                        .to_string(),
                ),
                ("SHOP_QUEUE_PREFIX".into(), prefix.clone()),
                (
                    "INVENTORY_URL".into(),
                    format!("https://{}", addrs["inventory"]),
                ),
                ("SHOP_ADMIN_EMAIL".into(), ADMIN_EMAIL.into()),
                ("SHOP_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
                // Debug builds hash slowly; the cost is not what these tests check.
                ("USERS_ARGON2_MEMORY_KIB".into(), "1024".into()),
                ("USERS_ARGON2_ITERATIONS".into(), "1".into()),
                ("PAYMENT_RETRY_BASE_MS".into(), "20".into()),
                // Redelivery back-off (50, 100, 200, 400, 800 ms): short, so a dead-lettered
                // message is there within seconds.
                ("SHOP_RETRY_BASE_MS".into(), "50".into()),
                ("RUST_LOG".into(), "info".into()),
            ];
            // Its own broker user over AMQPS: AMQP_URL, AMQP_PASSWORD_FILE, AMQP_CA_FILE.
            env.extend(stack.broker.service_env(svc));
            for (s, k, v) in extra_env {
                if *s == svc {
                    env.push(((*k).into(), (*v).into()));
                }
            }
            stack.spawn(svc, &bin.join(svc), &[], env);
        }
        for svc in SERVICES {
            let url = format!("http://{}/readyz", ops_addrs[svc]);
            stack.wait_for(svc, &url).await;
        }
        let config = stack.gateway_config(gateway_port, admin_port);
        let config_path = stack.dir.path().join("gateway.yaml");
        std::fs::write(&config_path, config).unwrap();
        stack.spawn(
            "gateway",
            &bin.join("gateway"),
            &["run", "--config", &config_path.display().to_string()],
            vec![
                ("VANTAGE_ADMIN_TOKEN".into(), GATEWAY_ADMIN_TOKEN.into()),
                ("RUST_LOG".into(), "info".into()),
            ],
        );
        let url = format!("http://127.0.0.1:{gateway_port}/api/products");
        stack.wait_for("gateway", &url).await;
        stack.assert_running();
        stack
    }

    /// Panics with the log of any process that has exited: one that could not bind its port
    /// would otherwise leave the test talking to whatever else answers there.
    pub fn assert_running(&mut self) {
        let exited = self
            .sup
            .exited()
            .unwrap_or_else(|e| panic!("watching the stack: {e}"));
        if let Some(exited) = exited {
            panic!(
                "{} exited ({}); log:\n{}",
                exited.name,
                exited.status,
                self.log(&exited.name)
            );
        }
    }

    /// The example gateway policy, pointed at this stack's ports.
    fn gateway_config(&self, public: u16, admin: u16) -> String {
        let example = std::fs::read_to_string(
            test_support::workspace_root().join("gateway/config/example.yaml"),
        )
        .expect("gateway/config/example.yaml");
        let services: Vec<std::net::SocketAddr> = SERVICES
            .iter()
            .map(|svc| self.addrs[svc].parse().expect("service address"))
            .collect();
        let local = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let moved =
            stack::gateway_config::move_addresses(&example, &services, local(public), local(admin));
        assert!(
            moved.missing.is_empty(),
            "example.yaml lost default addresses: {:?}",
            moved.missing
        );
        // Every hop over mutual TLS, as `stack` runs it.
        let gateway_svid = self.pki.svid_dir("gateway");
        let secured = stack::gateway_config::with_mtls(
            &moved.text,
            &stack::gateway_config::GatewayTls {
                svid_dir: &gateway_svid,
                public_tls: None,
            },
        );
        assert!(
            secured.missing.is_empty(),
            "upstreams without tls: {:?}",
            secured.missing
        );
        secured.text
    }

    fn spawn(&mut self, name: &str, bin: &Path, args: &[&str], env: Vec<(String, String)>) {
        let launch = Launch::new(name, bin)
            .args(args)
            .envs(env)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            // An error that ends a process is one line in its log, not a backtrace that pushes
            // the cause out of the tail shown in failure messages.
            .env("RUST_LIB_BACKTRACE", "0")
            .current_dir(self.dir.path());
        self.sup
            .spawn(launch)
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    }

    /// Waits until `url` answers 200; panics with the log of `name` if it exits or times out.
    async fn wait_for(&mut self, name: &str, url: &str) {
        if let Err(e) = self
            .sup
            .wait_ready(name, url, READY_TIMEOUT, &self.http)
            .await
        {
            panic!(
                "{name} did not become ready at {url} ({e}); log:\n{}",
                self.log(name)
            );
        }
    }

    /// The last part of a process's log, for failure messages.
    pub fn log(&self, name: &str) -> String {
        tail(&self.sup.log_path(name), LOG_LINES).join("\n")
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let (s, body) = self
            .api
            .post(
                "/api/users/login",
                None,
                serde_json::json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "login {email}: {body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Registers a fresh user and returns `(user id, token)`.
    pub async fn new_user(&self, name: &str) -> (String, String) {
        let email = format!("{name}-{}@e2e.test", uuid::Uuid::new_v4().simple());
        let (s, body) = self
            .api
            .post(
                "/api/users/register",
                None,
                serde_json::json!({"email": email, "password": "pa55word!", "name": name}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "register: {body}");
        let token = self.login(&email, "pa55word!").await;
        (body["id"].as_str().unwrap().to_owned(), token)
    }

    /// `POST /api/cart/items` as `token`; asserts 200.
    pub async fn add_to_cart(&self, token: &str, product: &str, quantity: u32) {
        let (s, body) = self
            .api
            .post(
                "/api/cart/items",
                Some(token),
                serde_json::json!({"product_id": product, "quantity": quantity}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "add to cart: {body}");
    }

    /// `POST /api/cart/checkout` as `token`; asserts 202 with the order's `Location`, returns
    /// the order id.
    pub async fn checkout(&self, token: &str, payment_token: &str) -> String {
        let (s, body, headers) = self
            .api
            .post_with(
                "/api/cart/checkout",
                Some(token),
                serde_json::json!({"payment_token": payment_token}),
                &[],
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "checkout: {body}");
        let id = body["order_id"].as_str().unwrap().to_owned();
        assert_eq!(headers["location"], format!("/api/orders/{id}").as_str());
        id
    }

    /// Calls a service directly (bypassing the gateway, over mutual TLS with the gateway's
    /// SVID) as the admin, for internal state.
    pub async fn internal_admin_get(&self, service: &str, path: &str) -> Value {
        let url = format!("https://{}{}", self.addrs[service], path);
        let headers = [("x-user-id", "e2e-admin"), ("x-user-scopes", "shop admin")];
        self.direct_get(&self.mtls, &url, &headers)
            .await
            .json()
            .await
            .unwrap()
    }

    /// `GET url` straight to one process of the stack; panics unless it answers 2xx.
    async fn direct_get(
        &self,
        client: &reqwest::Client,
        url: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = client.get(url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        resp
    }

    /// Takes every message out of `<prefix><consumer>.dlq` (bodies as JSON when they parse),
    /// as the consumer's own broker user (the only one that may read it).
    pub async fn drain_dead_letters(&self, consumer: &str) -> Vec<Value> {
        let conn = self.broker_connection(consumer).await;
        let ch = conn.create_channel().await.unwrap();
        let queue = messaging::Topology::new(self.prefix.clone()).dead_letter_queue(consumer);
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(
                queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            out.push(
                serde_json::from_slice(&m.delivery.data).unwrap_or(Value::String(
                    String::from_utf8_lossy(&m.delivery.data).into(),
                )),
            );
        }
        let _ = conn.close(200, "ok".into()).await;
        out
    }

    /// A service's `/metrics` text, from its ops port.
    pub async fn metrics(&self, service: &str) -> String {
        let url = format!("http://{}/metrics", self.ops_addrs[service]);
        self.direct_get(&self.http, &url, &[])
            .await
            .text()
            .await
            .unwrap()
    }

    /// The gateway's `/metrics` text (with the admin token).
    pub async fn gateway_metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin_addr);
        let bearer = format!("Bearer {GATEWAY_ADMIN_TOKEN}");
        let headers = [("authorization", bearer.as_str())];
        self.direct_get(&self.http, &url, &headers)
            .await
            .text()
            .await
            .unwrap()
    }

    /// Sends `signal` to one process of the stack (`"gateway"` or a service): SIGHUP makes the
    /// gateway reload its policy, SIGKILL takes an upstream away.
    pub fn signal(&self, name: &str, signal: Signal) {
        self.sup
            .signal(name, signal)
            .unwrap_or_else(|e| panic!("{signal} to {name}: {e}"));
    }

    /// Polls `GET path` until `done(body)` or the timeout; returns the last body.
    pub async fn poll(
        &self,
        path: &str,
        token: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let (s, body) = self.api.get(path, Some(token)).await;
            if s.is_success() && done(&body) {
                return body;
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} polling {path}: last {s} {body}\norders log:\n{}\npayment log:\n{}",
                    self.log("orders"),
                    self.log("payment")
                );
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// The RabbitMQ node this stack's vhost lives on: one per test binary, so a test that stops,
    /// freezes or alarms it (`rabbitmqctl stop_app`, …) must be alone in its binary.
    pub fn broker_node(&self) -> &'static BrokerNode {
        self.node
    }

    /// A broker connection as `service`'s own user.
    pub async fn broker_connection(&self, service: &str) -> lapin::Connection {
        let env: std::collections::HashMap<String, String> =
            self.broker.service_env(service).into_iter().collect();
        let endpoint = messaging::BrokerEndpoint::url(&env["AMQP_URL"])
            .with_password_file(&env["AMQP_PASSWORD_FILE"])
            .with_ca_file(&env["AMQP_CA_FILE"]);
        let amqp = messaging::AmqpConfig {
            endpoint,
            topology: messaging::Topology::new(self.prefix.clone()),
            connection_name: format!("{}e2e", self.prefix),
            subscriptions: &[],
        };
        amqp.connect("e2e")
            .await
            .unwrap_or_else(|e| panic!("connecting as {service}: {e}"))
    }

    /// The broker users connected to this stack's vhost, each with whether its connection is
    /// TLS, from the management API (which lists a connection a few seconds after it opens).
    pub async fn broker_connections(&self, wanted: usize) -> Vec<(String, bool)> {
        let vhost = &self.broker.plan.vhost;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let listed: Value = serde_json::from_str(&self.node.get("/api/connections").unwrap())
                .expect("connections as JSON");
            let ours: Vec<(String, bool)> = listed
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["vhost"] == vhost.as_str())
                .map(|c| {
                    (
                        c["user"].as_str().unwrap_or_default().to_owned(),
                        c["ssl"].as_bool().unwrap_or(false),
                    )
                })
                .collect();
            if ours.len() >= wanted || Instant::now() > deadline {
                return ours;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops the processes and deletes this stack's vhost (queues and exchanges with it) and
    /// broker users. Dropping the stack stops the processes too, but leaves the vhost.
    pub async fn stop(mut self) {
        self.sup.kill_all().await;
        let _ = self.node.delete_vhost(&self.broker.plan.vhost);
        for svc in SERVICES {
            let _ = self.node.delete_user(&self.broker.plan.topology.user(svc));
        }
    }
}

/// A client presenting the gateway's SVID that accepts any service's SPIFFE ID.
fn mtls_client(pki: &stack::certs::PkiPaths) -> reqwest::Client {
    let paths = identity::SvidPaths::detect(&pki.svid_dir("gateway")).expect("gateway SVID");
    let id = identity::WorkloadIdentity::load(&paths, None).expect("gateway SVID");
    let services = SERVICES
        .iter()
        .map(|s| stack::certs::Pki::spiffe_id(s).parse().expect("SPIFFE ID"))
        .collect();
    let tls = identity::tls::client_config(&id, services);
    reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("mTLS client")
}

/// The `sub` and `scope` claims of a token (read without verifying; the gateway verifies).
pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}
