//! The Docker and Kubernetes paths cannot run here (no engine, no cluster), so these tests
//! hold their files to the same facts the no-Docker stack uses: every service is in the
//! compose file, on the port Prometheus scrapes, built from the one Dockerfile, started after
//! a healthy RabbitMQ; only the agreed ports are published; dashboards are well-formed. The
//! Kubernetes manifests (deploy/k8s) are rendered and validated offline against the Kubernetes
//! schemas, and their NetworkPolicies must allow exactly the connections of the contract
//! (`stack::contract` and the messaging contract).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;
use stack::config::{DEFAULT_BASE_PORT, SERVICES};
use stack::contract::{self, Workload, HTTP_CALLS};

#[path = "deploy_files/kubernetes.rs"]
mod kubernetes;

use kubernetes::{find, labels, of_kind, outside, rendered, Connection, Protocol};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn str_of<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for key in path {
        cur = cur.get(*key)?;
    }
    cur.as_str()
}

/// The compose file with YAML merge keys (`<<`) applied, as Compose applies them.
fn compose_services() -> HashMap<String, Value> {
    let mut doc = yaml("docker-compose.yml");
    doc.apply_merge().unwrap();
    let services = doc.get("services").and_then(Value::as_mapping).unwrap();
    services
        .iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            v.apply_merge().unwrap();
            (k.as_str().unwrap().to_owned(), v)
        })
        .collect()
}

#[test]
fn compose_runs_every_service_from_the_one_dockerfile_after_rabbitmq_is_healthy() {
    let services = compose_services();
    for name in SERVICES.iter().chain(&["gateway"]) {
        let svc = services
            .get(*name)
            .unwrap_or_else(|| panic!("{name} missing from docker-compose.yml"));
        assert_eq!(
            str_of(svc, &["build", "dockerfile"]),
            Some("services/Dockerfile"),
            "{name}"
        );
        assert_eq!(str_of(svc, &["build", "context"]), Some("."), "{name}");
        assert_eq!(
            str_of(svc, &["build", "args", "BIN"]),
            Some(*name),
            "{name}"
        );
        assert!(
            svc.get("healthcheck").is_some(),
            "{name} has a health check"
        );
    }
    for (i, name) in SERVICES.iter().enumerate() {
        let svc = &services[*name];
        assert_eq!(
            str_of(svc, &["depends_on", "rabbitmq", "condition"]),
            Some("service_healthy"),
            "{name} waits for a healthy broker"
        );
        let port = DEFAULT_BASE_PORT + i as u16;
        assert_eq!(
            str_of(svc, &["environment", "LISTEN_ADDR"]),
            Some(format!("0.0.0.0:{port}").as_str()),
            "{name} listens on its default port inside the network"
        );
        // Its own broker user, named as the definitions name it, with a required password.
        let url = str_of(svc, &["environment", "AMQP_URL"]).unwrap_or_default();
        let var = format!("AMQP_PASSWORD_{}", name.to_uppercase());
        assert!(
            url.starts_with(&format!("amqp://${{SHOP_QUEUE_PREFIX:-}}{name}:${{{var}:?")),
            "{name} uses its own broker user and a password without default: {url}"
        );
        assert!(
            url.ends_with("@rabbitmq:5672/vantage"),
            "{name} uses the vhost vantage: {url}"
        );
        assert!(!url.contains("guest"), "{name}: {url}");
        assert_eq!(
            str_of(svc, &["environment", "OTEL_SERVICE_NAME"]),
            Some(*name)
        );
        assert!(
            svc.get("ports").is_none(),
            "{name} is not published to the host"
        );
        let url_var = format!("{}_URL", name.to_uppercase());
        assert_eq!(
            str_of(&services["cart"], &["environment", &url_var]),
            Some(format!("https://{name}:{port}").as_str()),
            "services reach {name} by its compose hostname, over mutual TLS"
        );
        // Its own SVID, from the one-shot certs service, in a volume only it mounts.
        assert_eq!(
            str_of(svc, &["environment", "SVID_DIR"]),
            Some("/var/run/secrets/spiffe")
        );
        assert_eq!(str_of(svc, &["environment", "IDENTITY_MODE"]), Some("mtls"));
        assert_eq!(
            str_of(svc, &["environment", "OPS_LISTEN_ADDR"]),
            Some(format!("0.0.0.0:{}", port + contract::OPS_PORT_OFFSET).as_str()),
            "{name}: probes and metrics on the ops port"
        );
        let mounts: Vec<&str> = svc["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            mounts.contains(&format!("svid-{name}:/var/run/secrets/spiffe:ro").as_str()),
            "{name}: {mounts:?}"
        );
        assert!(
            !mounts.iter().any(|m| m.starts_with("pki:")),
            "{name} cannot read the CA key"
        );
        assert_eq!(
            str_of(svc, &["depends_on", "certs", "condition"]),
            Some("service_completed_successfully")
        );
        assert_eq!(
            str_of(&services["gateway"], &["depends_on", name, "condition"]),
            Some("service_healthy"),
            "the gateway starts after {name} is ready"
        );
    }
    for infra in ["rabbitmq", "jaeger", "prometheus", "grafana"] {
        assert!(services.contains_key(infra), "{infra} missing");
    }
    assert!(services["rabbitmq"].get("healthcheck").is_some());
}

#[test]
fn compose_publishes_only_the_agreed_ports() {
    let mut published = BTreeSet::new();
    for (name, svc) in compose_services() {
        for port in svc
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            published.insert(format!("{name} {}", port.as_str().unwrap()));
        }
    }
    let expected: BTreeSet<String> = [
        "gateway 8080:8080",
        // Operator UIs: loopback only.
        "grafana 127.0.0.1:3000:3000",
        "jaeger 127.0.0.1:16686:16686",
        "rabbitmq 127.0.0.1:15672:15672",
        // Loopback only: for the no-Docker stack on the same machine.
        "rabbitmq 127.0.0.1:5672:5672",
        "jaeger 127.0.0.1:4317:4317",
        "jaeger 127.0.0.1:4318:4318",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(published, expected);
}

fn networks_of(svc: &Value) -> BTreeSet<String> {
    svc["networks"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn compose_puts_only_the_gateway_on_the_edge_and_the_rest_on_an_internal_network() {
    let mut doc = yaml("docker-compose.yml");
    doc.apply_merge().unwrap();
    let networks = &doc["networks"];
    assert_eq!(networks["internal"]["internal"], true, "no route out");
    for open in ["edge", "ops"] {
        assert!(
            networks[open].get("internal").is_none_or(|v| *v == false),
            "{open} can publish ports"
        );
    }
    let services = compose_services();
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| n.to_string()).collect() };
    assert_eq!(
        networks_of(&services["gateway"]),
        set(&["edge", "internal"])
    );
    for name in SERVICES {
        assert_eq!(networks_of(&services[name]), set(&["internal"]), "{name}");
    }
    assert_eq!(networks_of(&services["prometheus"]), set(&["internal"]));
    for ui in ["rabbitmq", "jaeger", "grafana"] {
        assert_eq!(
            networks_of(&services[ui]),
            set(&["internal", "ops"]),
            "{ui}"
        );
    }
    // Every service is on some network (none falls back to the default network), and only
    // the gateway publishes a port beyond loopback.
    for (name, svc) in &services {
        assert!(
            !networks_of(svc).is_empty() || svc["network_mode"] == "none",
            "{name} names its networks (or has none at all)"
        );
        for port in svc["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().unwrap();
            assert!(
                name == "gateway" || port.starts_with("127.0.0.1:"),
                "{name} publishes {port} beyond loopback"
            );
        }
        if networks_of(svc).contains("edge") {
            assert_eq!(name, "gateway", "only the gateway is on the edge network");
        }
    }
}

#[test]
fn compose_operator_uis_take_credentials_from_the_environment() {
    let services = compose_services();
    let grafana = &services["grafana"]["environment"];
    assert_eq!(grafana["GF_AUTH_ANONYMOUS_ENABLED"], "false");
    let password = grafana["GF_SECURITY_ADMIN_PASSWORD"].as_str().unwrap();
    assert!(
        password.starts_with("${GRAFANA_ADMIN_PASSWORD:?"),
        "required, no default: {password}"
    );
    // RabbitMQ's operator account comes from the definitions, its password from the
    // environment without default; RabbitMQ's own default user (guest) is never created.
    let rabbitmq = &services["rabbitmq"];
    assert!(
        rabbitmq
            .get("environment")
            .is_none_or(|e| e.get("RABBITMQ_DEFAULT_USER").is_none()
                && e.get("RABBITMQ_DEFAULT_PASS").is_none()),
        "no default user: {rabbitmq:?}"
    );
    let admin = str_of(
        &services["broker-definitions"],
        &["environment", "RABBITMQ_ADMIN_PASSWORD"],
    )
    .unwrap();
    assert!(
        admin.starts_with("${RABBITMQ_ADMIN_PASSWORD:?"),
        "required, no default: {admin}"
    );
}

/// Compose's broker loads at boot the definitions `stack broker-definitions` generates from
/// the messaging contract: the one-shot service gets a password for every service of the
/// contract (and nothing else), writes into a volume, and RabbitMQ starts only after it
/// succeeded, copies the file to where its config loads it from, and loads it.
#[test]
fn compose_loads_the_broker_definitions_generated_from_the_contract() {
    use stack::broker_definitions::{generate, DefinitionsOptions};
    let services = compose_services();
    let init = &services["broker-definitions"];
    assert_eq!(str_of(init, &["build", "args", "BIN"]), Some("stack"));
    assert_eq!(str_of(init, &["network_mode"]), Some("none"));
    let command: Vec<&str> = init["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(command[0], "broker-definitions");
    let out = command[command.iter().position(|a| *a == "--out").unwrap() + 1];

    // The variables compose gives it are exactly the ones the generator reads.
    let env: BTreeMap<String, String> = init["environment"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                v.as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let passwords: BTreeSet<&str> = env
        .keys()
        .filter(|k| k.starts_with("AMQP_PASSWORD_"))
        .map(String::as_str)
        .collect();
    let wanted: BTreeSet<String> = messaging::contract::SERVICES
        .iter()
        .map(|c| format!("AMQP_PASSWORD_{}", c.service.to_uppercase()))
        .collect();
    assert_eq!(
        passwords,
        wanted.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    for (k, v) in &env {
        assert!(
            v.starts_with(&format!("${{{k}:?")) || k == "SHOP_QUEUE_PREFIX",
            "{k} is required, without default: {v}"
        );
    }
    let options = DefinitionsOptions {
        vhost: "vantage".into(),
        queue_prefix: String::new(),
        password_dir: None,
        admin_user: "vantage-admin".into(),
        admin_password_file: None,
        out: None,
    };
    let defs = generate(&options, |k| {
        env.contains_key(k).then(|| format!("{k}-long-enough"))
    })
    .expect("the generator accepts what compose provides");
    let users: Vec<&str> = defs["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert!(users.contains(&"vantage-admin"), "{users:?}");

    // The volume it writes into is the one RabbitMQ reads, after it succeeded.
    let volume_at = |svc: &Value, target: &str| -> Option<String> {
        svc["volumes"].as_sequence()?.iter().find_map(|v| {
            let v = v.as_str()?;
            let mut parts = v.split(':');
            let (src, dst) = (parts.next()?, parts.next()?);
            (dst == target).then(|| src.to_owned())
        })
    };
    let out_dir = Path::new(out).parent().unwrap().to_str().unwrap();
    let volume = volume_at(init, out_dir).expect("the init service writes into a volume");
    let rabbitmq = &services["rabbitmq"];
    assert_eq!(
        str_of(rabbitmq, &["depends_on", "broker-definitions", "condition"]),
        Some("service_completed_successfully")
    );
    let mounted_at = rabbitmq["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .find_map(|v| v.strip_prefix(&format!("{volume}:")))
        .expect("rabbitmq mounts the definitions volume")
        .trim_end_matches(":ro")
        .to_owned();
    let entrypoint = rabbitmq["entrypoint"]
        .as_sequence()
        .unwrap()
        .last()
        .unwrap();
    let entrypoint = entrypoint.as_str().unwrap();
    let file_name = Path::new(out).file_name().unwrap().to_str().unwrap();
    let copied = format!("{mounted_at}/{file_name} ");
    assert!(entrypoint.contains(&copied), "{entrypoint} copies {copied}");
    assert!(
        entrypoint.ends_with("exec docker-entrypoint.sh rabbitmq-server"),
        "{entrypoint}"
    );
    let conf_mount = volume_at(rabbitmq, "/etc/rabbitmq/conf.d/20-vantage.conf")
        .expect("the broker config is mounted");
    let conf = std::fs::read_to_string(root().join(conf_mount.trim_start_matches("./"))).unwrap();
    let loaded = conf
        .lines()
        .find_map(|l| l.strip_prefix("load_definitions = "))
        .expect("load_definitions");
    assert!(
        entrypoint.contains(&format!("{mounted_at}/{file_name} {loaded} ")),
        "the copy is where the config loads from: {entrypoint} / {loaded}"
    );
}

#[test]
fn prometheus_scrapes_the_gateway_admin_and_every_service() {
    let prom = yaml("observability/prometheus/prometheus.yml");
    let mut targets = BTreeSet::new();
    for job in prom["scrape_configs"].as_sequence().unwrap() {
        for sc in job["static_configs"].as_sequence().unwrap() {
            for t in sc["targets"].as_sequence().unwrap() {
                targets.insert(t.as_str().unwrap().to_owned());
            }
        }
    }
    assert!(targets.contains("gateway:9901"), "{targets:?}");
    for (i, name) in SERVICES.iter().enumerate() {
        // The ops port: the API port speaks mutual TLS only.
        let t = format!(
            "{name}:{}",
            DEFAULT_BASE_PORT + i as u16 + contract::OPS_PORT_OFFSET
        );
        assert!(targets.contains(&t), "{t} not scraped: {targets:?}");
    }
    let gateway = prom["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "gateway")
        .unwrap();
    assert_eq!(
        str_of(gateway, &["authorization", "type"]),
        Some("Bearer"),
        "the gateway's /metrics needs the admin token"
    );
}

#[test]
fn dashboards_are_well_formed_and_provisioned() {
    let dir = root().join("observability/dashboards");
    let mut uids = BTreeSet::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        files += 1;
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = path.display().to_string();
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_owned()),
            "{name}: duplicate uid"
        );
        let mut ids = BTreeSet::new();
        for p in d["panels"].as_array().unwrap() {
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{name}: duplicate panel id"
            );
            let grid = &p["gridPos"];
            let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
            assert!(
                x + w <= 24,
                "{name}: panel {} overflows the grid",
                p["title"]
            );
            if p["type"] == "row" {
                continue;
            }
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}: {} has no query", p["title"]);
            for t in targets {
                let expr = t["expr"].as_str().unwrap();
                assert_eq!(
                    expr.matches('(').count(),
                    expr.matches(')').count(),
                    "{name}: unbalanced query in {}: {expr}",
                    p["title"]
                );
                assert_eq!(t["datasource"]["uid"], "prometheus");
            }
        }
    }
    assert!(files >= 2, "gateway and shop dashboards");

    let ds = yaml("observability/grafana/provisioning/datasources/datasources.yaml");
    let uids: BTreeSet<&str> = ds["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|d| d["uid"].as_str().unwrap())
        .collect();
    assert_eq!(uids, BTreeSet::from(["prometheus", "jaeger"]));
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    assert!(compose.contains("./observability/dashboards:/var/lib/grafana/dashboards:ro"));
    let home = compose
        .lines()
        .find_map(|l| {
            l.trim().strip_prefix(
                "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH: /var/lib/grafana/dashboards/",
            )
        })
        .unwrap();
    assert!(dir.join(home).is_file(), "home dashboard {home} exists");
}

/// What the gateway config says about one route: how it matches and whether it needs a token.
struct GatewayRoute {
    name: String,
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<regex::Regex>,
    methods: Option<Vec<String>>,
    auth: String,
}

impl GatewayRoute {
    fn matches(&self, method: &str, path: &str) -> bool {
        let path_ok = self.exact.as_deref() == Some(path)
            || self.prefix.as_deref().is_some_and(|p| path.starts_with(p))
            || self.regex.as_ref().is_some_and(|r| r.is_match(path));
        let method_ok = self
            .methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m.eq_ignore_ascii_case(method)));
        path_ok && method_ok
    }
}

fn gateway_routes() -> Vec<GatewayRoute> {
    let gw = yaml("gateway/config/example.yaml");
    gw["routes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| {
            let m = &r["match"];
            GatewayRoute {
                name: r["name"].as_str().unwrap().to_owned(),
                exact: m["path_exact"].as_str().map(str::to_owned),
                prefix: m["path_prefix"].as_str().map(str::to_owned),
                regex: m["path_regex"]
                    .as_str()
                    .map(|p| regex::Regex::new(&format!("^{p}$")).unwrap()),
                methods: m["methods"]
                    .as_sequence()
                    .map(|ms| ms.iter().map(|v| v.as_str().unwrap().to_owned()).collect()),
                auth: r["auth"].as_str().unwrap_or("required").to_owned(),
            }
        })
        .collect()
}

/// Every `$ref` in `v`, as JSON-pointer-ish paths.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                if k.as_str() == Some("$ref") {
                    out.push(v.as_str().unwrap().to_owned());
                } else {
                    refs(v, out);
                }
            }
        }
        Value::Sequence(s) => s.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn openapi_matches_what_the_gateway_routes_and_protects() {
    let api = yaml("docs/openapi.yaml");
    assert!(str_of(&api, &["openapi"]).unwrap().starts_with("3.1"));

    let mut all = Vec::new();
    refs(&api, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        let mut cur = &api;
        for part in r.strip_prefix("#/").unwrap().split('/') {
            cur = cur
                .get(part)
                .unwrap_or_else(|| panic!("{r} does not resolve"));
        }
    }

    let routes = gateway_routes();
    let globally_secured = api
        .get("security")
        .and_then(Value::as_sequence)
        .is_some_and(|s| !s.is_empty());
    let mut operations = 0;
    // A concrete path the way a client would send it: `{id}` becomes `x-1`.
    let template = regex::Regex::new(r"\{[^}]+\}").unwrap();
    for (path, item) in api["paths"].as_mapping().unwrap() {
        let path = path.as_str().unwrap();
        let concrete = template.replace_all(path, "x-1").into_owned();
        for (method, op) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap();
            if !["get", "post", "put", "delete", "patch"].contains(&method) {
                continue;
            }
            operations += 1;
            let route = routes
                .iter()
                .find(|r| r.matches(method, &concrete))
                .unwrap_or_else(|| panic!("{method} {path} is documented but not routed"));
            let public = match op.get("security").and_then(Value::as_sequence) {
                Some(s) => s.is_empty(),
                None => !globally_secured,
            };
            let expected = if public { "none" } else { "required" };
            assert_eq!(
                route.auth, expected,
                "{method} {path}: the OpenAPI document and route {} disagree on auth",
                route.name
            );
        }
    }
    assert!(
        operations >= 16,
        "every public operation is documented ({operations})"
    );
}

#[test]
fn the_gateway_container_runs_the_compose_policy_pointing_at_compose_hosts() {
    let services = compose_services();
    let gateway = &services["gateway"];
    let mounts: Vec<&str> = gateway["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let config_mount = "./gateway/config/compose.yaml:/etc/vantage/gateway.yaml:ro";
    assert!(mounts.contains(&config_mount), "{mounts:?}");
    let command: Vec<&str> = gateway["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(command, ["run", "--config", "/etc/vantage/gateway.yaml"]);

    let policy = yaml("gateway/config/compose.yaml");
    assert_eq!(
        str_of(&policy, &["listeners", "admin"]),
        Some("0.0.0.0:9901")
    );
    assert_eq!(
        str_of(&policy, &["listeners", "public"]),
        Some("0.0.0.0:8080")
    );
    for (i, name) in SERVICES.iter().enumerate() {
        let endpoints = &policy["upstreams"][*name]["endpoints"];
        let expected = format!("{name}:{}", DEFAULT_BASE_PORT + i as u16);
        assert_eq!(endpoints.as_sequence().map(|e| e.len()), Some(1), "{name}");
        assert_eq!(endpoints[0].as_str(), Some(expected.as_str()));
        assert!(services.contains_key(*name));
    }
    let jwks = policy["issuers"]
        .as_mapping()
        .unwrap()
        .values()
        .filter_map(|i| i["jwks_url"].as_str())
        .collect::<Vec<_>>();
    assert_eq!(jwks, ["https://users:7001/.well-known/jwks.json"]);
    // Every upstream over mutual TLS with the gateway's SVID, expecting that service's ID.
    for name in SERVICES {
        let tls = &policy["upstreams"][name]["tls"];
        assert_eq!(str_of(tls, &["svid_dir"]), Some("/var/run/secrets/spiffe"));
        assert_eq!(
            tls["spiffe_ids"][0].as_str(),
            Some(format!("spiffe://vantage.local/{name}").as_str())
        );
    }
    assert!(mounts.contains(&"svid-gateway:/var/run/secrets/spiffe:ro"));
}

#[test]
fn the_dockerfile_builds_once_and_runs_one_binary_unprivileged() {
    let text = std::fs::read_to_string(root().join("services/Dockerfile")).unwrap();
    let stages: Vec<&str> = text.split("\nFROM ").skip(1).collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (build, runtime) = (stages[0], stages[1]);
    assert!(build.starts_with("rust:"), "{build}");
    assert!(
        !build.contains("BIN"),
        "the build stage must not depend on BIN, so all eight images share it"
    );
    assert!(build.contains("cargo build --release --locked --bins"));
    assert!(runtime.contains("ARG BIN"));
    assert!(runtime.contains("COPY --from=build /out/${BIN}"));
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "runs unprivileged: USER {user}"
    );

    // The gateway links the system OpenSSL when the workspace's cargo config says so (the
    // config is in the build context): the build stage needs its headers, the runtime its
    // library, or the image fails to build or the gateway to start.
    let cargo_config = std::fs::read_to_string(root().join(".cargo/config.toml")).unwrap();
    let system_openssl = cargo_config
        .lines()
        .any(|l| l.split_whitespace().collect::<String>() == "OPENSSL_NO_VENDOR=\"1\"");
    if system_openssl {
        let installs = |stage: &str, package: &str| {
            stage
                .lines()
                .filter(|l| l.contains("apt-get install"))
                .any(|l| l.split_whitespace().any(|w| w == package))
        };
        assert!(
            installs(build, "libssl-dev"),
            "the build stage installs libssl-dev"
        );
        assert!(
            installs(runtime, "libssl3"),
            "the runtime stage installs libssl3"
        );
    }

    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    for excluded in ["/target", "/.stack", "/.git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == excluded),
            "{excluded} stays out of the build context"
        );
    }
}

// === Kubernetes (deploy/k8s) ===================================================================

#[test]
fn k8s_manifests_validate_offline_against_the_kubernetes_and_crd_schemas() {
    let script = root().join("deploy/k8s/validate.py");
    assert!(
        kubernetes::which("python3"),
        "validating deploy/k8s needs python3; then install the rest with: \
         bash deploy/k8s/install-tools.sh"
    );
    let out = Command::new("python3").arg(&script).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(3),
        "a tool the manifest check needs is missing:\n{stderr}"
    );
    assert!(
        out.status.success(),
        "deploy/k8s does not validate (python3 deploy/k8s/validate.py):\n{stdout}{stderr}"
    );
    for k in kubernetes::KUSTOMIZATIONS {
        assert!(
            stdout.contains(&format!("ok   deploy/k8s/{k}:")),
            "{k} was not validated:\n{stdout}"
        );
    }
}

/// Which mesh a rendering puts the workloads in.
#[derive(Clone, Copy, Debug)]
enum Mesh {
    None,
    Linkerd,
    IstioSidecar,
    IstioAmbient,
}

/// RabbitMQ's own ports between the nodes of one cluster: epmd, Erlang distribution, CLI tools.
fn rabbitmq_cluster_ports() -> impl Iterator<Item = u16> {
    [4369, 25672].into_iter().chain(35672..=35682)
}
/// The operator reaches the management API over TLS; Prometheus the TLS metrics port.
const RABBITMQ_MANAGEMENT_TLS_PORT: u16 = 15671;
const RABBITMQ_METRICS_TLS_PORT: u16 = 15691;
/// Istio ambient's HBONE tunnel port on every meshed pod.
const HBONE_PORT: u16 = 15008;
/// Where Istio's sidecars get their configuration (xDS) and certificates from istiod.
const ISTIOD_XDS_PORT: u16 = 15012;

/// The connections a rendering must allow, and nothing else: the contract's HTTP calls, every
/// broker client (every consumer of the messaging contract among them) to the broker, every
/// workload to the collector and the collector to Jaeger, what RabbitMQ needs for itself,
/// Prometheus to the ops and metrics ports, anyone outside to the public gateway ports, DNS
/// from every pod; plus what the mesh needs.
fn expected_connections(docs: &[Value], mesh: Mesh) -> BTreeSet<Connection> {
    use outside::*;
    let broker = of_kind(docs, "RabbitmqCluster")[0]["metadata"]["name"]
        .as_str()
        .unwrap();
    let tcp = Connection::tcp;
    let mut e = BTreeSet::new();
    for c in HTTP_CALLS {
        e.insert(tcp(c.from.name(), c.to.name(), c.to.api_port()));
    }
    let clients: BTreeSet<Workload> = contract::broker_clients().collect();
    // Every service with a queue or an outbox talks to the broker.
    for consumer in messaging::contract::SERVICES
        .iter()
        .filter(|c| c.has_queue() || !c.produces.is_empty())
        .map(|c| c.service)
    {
        let w = Workload::from_name(consumer)
            .unwrap_or_else(|| panic!("consumer {consumer} is not a workload of the contract"));
        assert!(
            clients.contains(&w),
            "{consumer} uses the broker (queue or outbox) but is not a broker client in stack::contract"
        );
    }
    for w in &clients {
        e.insert(tcp(w.name(), broker, contract::BROKER_AMQPS_PORT));
    }
    for w in Workload::ALL {
        e.insert(tcp(w.name(), "otel-collector", contract::OTLP_GRPC_PORT));
        e.insert(tcp(PROMETHEUS, w.name(), w.ops_port()));
    }
    e.insert(tcp("otel-collector", "jaeger", contract::OTLP_GRPC_PORT));
    for port in rabbitmq_cluster_ports() {
        e.insert(tcp(broker, broker, port));
    }
    e.insert(tcp(RABBITMQ_OPERATOR, broker, RABBITMQ_MANAGEMENT_TLS_PORT));
    e.insert(tcp(PROMETHEUS, broker, RABBITMQ_METRICS_TLS_PORT));
    let peers = kubernetes::peers(docs);
    for p in &peers {
        if p.in_namespace() {
            for protocol in [Protocol::Udp, Protocol::Tcp] {
                e.insert(Connection {
                    from: p.name.clone(),
                    to: KUBE_DNS.to_owned(),
                    protocol,
                    port: 53,
                });
            }
        } else {
            e.insert(tcp(&p.name, "gateway", contract::GATEWAY_PUBLIC_PORT));
            e.insert(tcp(&p.name, "gateway", contract::GATEWAY_PUBLIC_TLS_PORT));
        }
    }
    match mesh {
        Mesh::None => {}
        Mesh::Linkerd => {
            for w in Workload::ALL {
                e.insert(tcp(w.name(), LINKERD_DESTINATION, 8086));
                e.insert(tcp(w.name(), LINKERD_DESTINATION, 8090));
                e.insert(tcp(w.name(), LINKERD_IDENTITY, 8080));
            }
        }
        Mesh::IstioSidecar => {
            for w in Workload::ALL {
                e.insert(tcp(w.name(), ISTIOD, ISTIOD_XDS_PORT));
            }
        }
        Mesh::IstioAmbient => {
            let inside: BTreeSet<&str> = peers
                .iter()
                .filter(|p| p.in_namespace())
                .map(|p| p.name.as_str())
                .collect();
            let tunnelled: Vec<Connection> = e
                .iter()
                .filter(|c| inside.contains(c.from.as_str()) && inside.contains(c.to.as_str()))
                .map(|c| tcp(&c.from, &c.to, HBONE_PORT))
                .collect();
            e.extend(tunnelled);
            for (pod, port) in probe_ports(docs) {
                e.insert(tcp(ZTUNNEL_PROBES, &pod, port));
            }
            // The operator probes RabbitMQ's AMQPS port.
            e.insert(tcp(ZTUNNEL_PROBES, broker, contract::BROKER_AMQPS_PORT));
        }
    }
    e
}

/// The container port a probe or Service port refers to, by number or by name.
fn resolve_port(container: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return n as u16;
    }
    let name = port.as_str().unwrap();
    container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}")) as u16
}

/// (pod name, readiness probe port) of every Deployment and StatefulSet.
fn probe_ports(docs: &[Value]) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for kind in ["Deployment", "StatefulSet"] {
        for w in of_kind(docs, kind) {
            let template = &w["spec"]["template"];
            let name = labels(&template["metadata"]["labels"])["app.kubernetes.io/name"].clone();
            for c in template["spec"]["containers"].as_sequence().unwrap() {
                let probe = &c["readinessProbe"];
                let port = probe["httpGet"]
                    .get("port")
                    .or_else(|| probe["tcpSocket"].get("port"))
                    .unwrap_or_else(|| panic!("{name} has no readiness probe"));
                out.push((name.clone(), resolve_port(c, port)));
            }
        }
    }
    out
}

/// Ports worth asking about besides the ones the policies name: every container port, and
/// ports that must stay closed (plain AMQP and management, Jaeger's UI, SSH, the API server).
fn probe_universe(docs: &[Value]) -> Vec<(Protocol, u16)> {
    let mut ports = vec![22, 80, 443, 5672, 6443, 15672, 15692, 16686];
    for kind in ["Deployment", "StatefulSet"] {
        for w in of_kind(docs, kind) {
            for c in w["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .unwrap()
            {
                for p in c["ports"].as_sequence().into_iter().flatten() {
                    ports.push(p["containerPort"].as_u64().unwrap() as u16);
                }
            }
        }
    }
    ports.into_iter().map(|p| (Protocol::Tcp, p)).collect()
}

/// The differences between what `docs` allow and what they should, as readable lines.
fn policy_differences(docs: &[Value], mesh: Mesh) -> (Vec<String>, Vec<String>) {
    let allowed = kubernetes::allowed_connections(docs, probe_universe(docs));
    let expected = expected_connections(docs, mesh);
    let extra = allowed
        .difference(&expected)
        .map(ToString::to_string)
        .collect();
    let missing = expected
        .difference(&allowed)
        .map(ToString::to_string)
        .collect();
    (extra, missing)
}

fn assert_policies_allow_exactly_the_contract(name: &str, mesh: Mesh, ip_blocks: &[&str]) {
    let docs = rendered(name);
    let blocks = kubernetes::Policies::new(docs).ip_blocks();
    assert_eq!(
        blocks,
        ip_blocks.iter().map(|b| b.to_string()).collect(),
        "{name}: unexpected ipBlocks (pod addresses are not modelled; use selectors)"
    );
    let (extra, missing) = policy_differences(docs, mesh);
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{name}: the NetworkPolicies do not match the contract (services/stack/src/contract.rs, \
         messaging::contract).\nallowed but not in the contract:\n  {}\n\
         in the contract but blocked:\n  {}",
        extra.join("\n  "),
        missing.join("\n  ")
    );
}

#[test]
fn k8s_network_policies_allow_exactly_the_contract() {
    assert_policies_allow_exactly_the_contract("base", Mesh::None, &[]);
}

#[test]
fn k8s_linkerd_network_policies_add_only_the_control_plane() {
    assert_policies_allow_exactly_the_contract("overlays/linkerd", Mesh::Linkerd, &[]);
}

#[test]
fn k8s_istio_sidecar_network_policies_add_only_istiod() {
    assert_policies_allow_exactly_the_contract("overlays/istio-sidecar", Mesh::IstioSidecar, &[]);
}

#[test]
fn k8s_istio_ambient_network_policies_tunnel_only_the_contract() {
    assert_policies_allow_exactly_the_contract(
        "overlays/istio-ambient",
        Mesh::IstioAmbient,
        &["169.254.7.127/32"],
    );
}

/// The check above is only worth something if it notices a change: drop the cart -> inventory
/// rule and open Jaeger's UI, and it must report exactly that.
#[test]
fn k8s_network_policy_check_notices_a_missing_call_and_an_extra_opening() {
    let mut docs = rendered("base").to_vec();
    for d in &mut docs {
        if d["kind"] != "NetworkPolicy" {
            continue;
        }
        let name = d["metadata"]["name"].as_str().unwrap().to_owned();
        let spec = d.get_mut("spec").unwrap();
        if name == "cart" {
            let egress = spec
                .get_mut("egress")
                .and_then(Value::as_sequence_mut)
                .unwrap();
            let before = egress.len();
            egress.retain(|r| {
                r["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] != "inventory"
            });
            assert_eq!(
                egress.len(),
                before - 1,
                "cart's policy has a rule to inventory"
            );
        }
        if name == "jaeger" {
            let ui: Value = serde_yaml::from_str("ports: [{ port: 16686 }]").unwrap();
            spec.get_mut("ingress")
                .and_then(Value::as_sequence_mut)
                .unwrap()
                .push(ui);
        }
    }
    let (extra, missing) = policy_differences(&docs, Mesh::None);
    assert_eq!(missing, ["cart -> inventory:7002/tcp"]);
    assert!(!extra.is_empty());
    for e in &extra {
        assert!(e.ends_with("-> jaeger:16686/tcp"), "{e}");
    }
    assert!(extra.contains(&"internet-client -> jaeger:16686/tcp".to_owned()));
}

/// A container's environment: its `env` values (or `secret:NAME/KEY` for a secretKeyRef) over
/// the ConfigMaps of its `envFrom`.
fn container_env(docs: &[Value], container: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for from in container["envFrom"].as_sequence().into_iter().flatten() {
        let name = from["configMapRef"]["name"].as_str().unwrap();
        env.extend(labels(&find(docs, "ConfigMap", name)["data"]));
    }
    for var in container["env"].as_sequence().into_iter().flatten() {
        let value = match var.get("value") {
            Some(v) => v.as_str().unwrap().to_owned(),
            None => {
                let s = &var["valueFrom"]["secretKeyRef"];
                format!(
                    "secret:{}/{}",
                    s["name"].as_str().unwrap(),
                    s["key"].as_str().unwrap()
                )
            }
        };
        env.insert(var["name"].as_str().unwrap().to_owned(), value);
    }
    env
}

/// The Deployment (gateway) or StatefulSet (services) running `w`.
fn workload(docs: &[Value], w: Workload) -> &Value {
    let kind = if w.is_service() {
        "StatefulSet"
    } else {
        "Deployment"
    };
    find(docs, kind, w.name())
}

fn mount<'a>(container: &'a Value, volume: &str) -> &'a Value {
    container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == volume)
        .unwrap_or_else(|| panic!("{:?} does not mount {volume}", container["name"]))
}

fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

#[test]
fn k8s_workloads_are_hardened_and_follow_the_deployment_conventions() {
    let docs = rendered("base");
    for w in Workload::ALL {
        let name = w.name();
        let set = workload(docs, w);
        let pod = &set["spec"]["template"]["spec"];
        let pod_labels = labels(&set["spec"]["template"]["metadata"]["labels"]);
        assert_eq!(pod_labels["app.kubernetes.io/name"], name);
        assert_eq!(pod["serviceAccountName"], name, "{name}: its own identity");
        find(docs, "ServiceAccount", name);
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_ne!(pod["securityContext"]["runAsUser"].as_u64(), Some(0));
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(pod.get(host).is_none(), "{name}: {host}");
        }
        let containers = pod["containers"].as_sequence().unwrap();
        assert_eq!(containers.len(), 1, "{name}");
        let c = &containers[0];
        assert_eq!(
            c["image"].as_str().unwrap().split(':').next(),
            Some(format!("vantage/{name}").as_str())
        );
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_yaml::from_str::<Value>("[ALL]").unwrap(),
            "{name}"
        );
        assert!(sc["capabilities"].get("add").is_none(), "{name}");
        for (kind, res) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "cpu"),
            ("limits", "memory"),
        ] {
            assert!(
                c["resources"][kind][res].as_str().is_some(),
                "{name}: resources.{kind}.{res}"
            );
        }
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{name} {probe}");
            assert_eq!(
                resolve_port(c, &get["port"]),
                w.ops_port(),
                "{name}: {probe} on the ops port"
            );
        }

        // SVID from csi-driver-spiffe, read-only, where SVID_DIR points.
        let spiffe = volume(pod, "spiffe");
        assert_eq!(spiffe["csi"]["driver"], "spiffe.csi.cert-manager.io");
        assert_eq!(spiffe["csi"]["readOnly"], true);
        let m = mount(c, "spiffe");
        assert_eq!(m["mountPath"], "/var/run/secrets/spiffe", "{name}");
        assert_eq!(m["readOnly"], true, "{name}");

        let env = container_env(docs, c);
        assert_eq!(env["SVID_DIR"], "/var/run/secrets/spiffe", "{name}");
        assert_eq!(env["IDENTITY_MODE"], "mtls", "{name}: the default mode");
        assert_eq!(env["OTEL_SERVICE_NAME"], name);
        assert_eq!(
            env["OTEL_EXPORTER_OTLP_ENDPOINT"],
            format!("http://otel-collector:{}", contract::OTLP_GRPC_PORT)
        );

        // The Service others call.
        let svc = find(docs, "Service", name);
        let selector = labels(&svc["spec"]["selector"]);
        assert!(
            selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{name}: the Service selects the pods"
        );
        let ports = svc["spec"]["ports"].as_sequence().unwrap();
        assert!(
            ports
                .iter()
                .any(|p| resolve_port(c, &p["targetPort"]) == w.api_port()),
            "{name}: the Service forwards to the API port {}",
            w.api_port()
        );

        if !w.is_service() {
            continue;
        }
        assert_eq!(env["LISTEN_ADDR"], format!("0.0.0.0:{}", w.api_port()));
        assert_eq!(env["OPS_LISTEN_ADDR"], format!("0.0.0.0:{}", w.ops_port()));
        assert_eq!(
            env["AMQP_URL"],
            format!("secret:vantage-amqp-{name}/url"),
            "{name}: its own broker user"
        );
        // The broker CA: only ca.crt of the broker's TLS Secret, where AMQP_CA_FILE points.
        let ca = volume(pod, "broker-ca");
        assert_eq!(ca["secret"]["secretName"], "rabbitmq-tls");
        assert_eq!(
            ca["secret"]["items"],
            serde_yaml::from_str::<Value>("[{key: ca.crt, path: ca.crt}]").unwrap()
        );
        let ca_dir = mount(c, "broker-ca")["mountPath"].as_str().unwrap();
        assert_eq!(env["AMQP_CA_FILE"], format!("{ca_dir}/ca.crt"));

        // SQLite: one replica with its own volume, where DATABASE_PATH points.
        assert_eq!(set["spec"]["replicas"], 1, "{name}: SQLite has one writer");
        let claims = set["spec"]["volumeClaimTemplates"].as_sequence().unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0]["metadata"]["name"], "data");
        let data = mount(c, "data")["mountPath"].as_str().unwrap();
        assert_eq!(env["DATABASE_PATH"], format!("{data}/{name}.db"));

        // Every service this one calls, by its Service name and API port.
        for call in HTTP_CALLS.iter().filter(|call| call.from == w) {
            let var = format!("{}_URL", call.to.name().to_uppercase());
            assert_eq!(
                env.get(&var).map(String::as_str),
                Some(format!("https://{}:{}", call.to.name(), call.to.api_port()).as_str()),
                "{name} calls {} ({:?})",
                call.to,
                call.purpose
            );
        }
    }
}

/// Where the gateway's Deployment (compose: its container) mounts the gateway's SVID, and the
/// `svid_dir` its policy names.
const GATEWAY_SVID_DIR: &str = "/var/run/secrets/spiffe";

/// Runs the gateway's own validator, as `gateway validate` does, over the policy `text`
/// (`label` names it in a failure), with an SVID issued for this run in place of the one a
/// deployment mounts at [`GATEWAY_SVID_DIR`]: the validator loads every SVID a policy names.
fn validate_policy(label: &str, text: &str, gateway_id: &str) -> gateway::config::Config {
    let svid = tempfile::tempdir().unwrap();
    identity::dev_ca::DevCa::new("deploy files test CA")
        .unwrap()
        .write_svid(
            svid.path(),
            &gateway_id.parse().unwrap(),
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
    let text = text.replace(GATEWAY_SVID_DIR, svid.path().to_str().unwrap());
    gateway::config::Config::parse(&text, &root().join("gateway/config"))
        .unwrap_or_else(|e| panic!("{label}: {e}"))
}

/// The SPIFFE ID csi-driver-spiffe puts into the SVID of `w`'s pods: it names the pod's
/// ServiceAccount, `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
fn k8s_spiffe_id(docs: &[Value], w: Workload) -> String {
    let set = workload(docs, w);
    let sa = set["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or_else(|| panic!("{w} names its ServiceAccount"));
    let ns = set["metadata"]["namespace"].as_str().unwrap();
    format!("spiffe://vantage.local/ns/{ns}/sa/{sa}")
}

/// The gateway policy file a rendering runs: the key of the ConfigMap the gateway's `--config`
/// points into. Also checks that the file is where the policy volume is mounted.
fn k8s_gateway_policy(docs: &[Value]) -> &str {
    let gw = workload(docs, Workload::Gateway);
    let pod = &gw["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[..2], ["run", "--config"]);
    let config = Path::new(args[2]);
    let dir = mount(c, "policy")["mountPath"].as_str().unwrap();
    assert_eq!(config.parent(), Some(Path::new(dir)));
    let cm_name = volume(pod, "policy")["configMap"]["name"].as_str().unwrap();
    let cm = find(docs, "ConfigMap", cm_name);
    let file = config.file_name().unwrap().to_str().unwrap();
    cm["data"][file].as_str().unwrap()
}

#[test]
fn k8s_gateway_policy_is_valid_and_routes_to_the_service_names() {
    let docs = rendered("base");
    let text = k8s_gateway_policy(docs);
    assert_eq!(
        text,
        std::fs::read_to_string(root().join("deploy/k8s/base/gateway/gateway.yaml")).unwrap()
    );
    let gw = workload(docs, Workload::Gateway);
    let pod = &gw["spec"]["template"]["spec"];
    assert_eq!(
        mount(&pod["containers"][0], "spiffe")["mountPath"].as_str(),
        Some(GATEWAY_SVID_DIR),
        "the policy's svid_dir is where csi-driver-spiffe's volume is mounted"
    );
    assert_eq!(
        volume(pod, "spiffe")["csi"]["driver"],
        "spiffe.csi.cert-manager.io"
    );

    let policy = validate_policy(
        "deploy/k8s/base/gateway/gateway.yaml",
        text,
        &k8s_spiffe_id(docs, Workload::Gateway),
    );
    assert_eq!(
        policy.listeners.admin.port(),
        Workload::Gateway.ops_port(),
        "probes and Prometheus use the admin port"
    );
    assert_eq!(
        policy.listeners.public.port(),
        contract::GATEWAY_PUBLIC_PORT
    );
    let raw: Value = serde_yaml::from_str(text).unwrap();
    // The SVID files the gateway loads: csi-driver-spiffe's names (tls.crt, tls.key, ca.crt).
    let svid_files = |tls: &gateway::config::UpstreamTlsConfig| {
        let paths = tls.svid.paths().expect("the k8s policy reads SVID files");
        [&paths.cert, &paths.key, &paths.bundle]
            .map(|f| f.file_name().and_then(|n| n.to_str()).unwrap().to_owned())
    };
    for s in Workload::SERVICES {
        assert_eq!(
            raw["upstreams"][s.name()]["endpoints"],
            serde_yaml::from_str::<Value>(&format!("[\"{s}:{}\"]", s.api_port())).unwrap(),
            "{s}: the upstream is its Service"
        );
        assert!(contract::calls(Workload::Gateway, s));
        // The services serve their API over mTLS only (IDENTITY_MODE=mtls): every upstream
        // presents the gateway's SVID and accepts only the service's own.
        let tls = policy.upstreams[s.name()]
            .tls
            .as_ref()
            .unwrap_or_else(|| panic!("{s}: the upstream has no tls"));
        assert_eq!(
            str_of(&raw["upstreams"][s.name()]["tls"], &["svid_dir"]),
            Some(GATEWAY_SVID_DIR),
            "{s}"
        );
        assert_eq!(tls.spiffe_ids, [k8s_spiffe_id(docs, s)], "{s}");
        assert_eq!(svid_files(tls), ["tls.crt", "tls.key", "ca.crt"], "{s}");
    }
    let jwks: Vec<&str> = raw["issuers"]
        .as_mapping()
        .unwrap()
        .values()
        .filter_map(|i| i["jwks_url"].as_str())
        .collect();
    assert_eq!(
        jwks,
        [format!(
            "https://users:{}/.well-known/jwks.json",
            Workload::Users.api_port()
        )]
    );
    for (name, issuer) in &policy.issuers {
        let tls = issuer
            .jwks_tls
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no jwks_tls"));
        assert_eq!(tls.spiffe_ids, [k8s_spiffe_id(docs, Workload::Users)]);
    }

    // The services name their callers by the same IDs: their SPIFFE_ID_TEMPLATE maps a workload
    // to the ID csi-driver-spiffe issues it, the gateway's included.
    for s in Workload::SERVICES {
        let env = container_env(
            docs,
            &workload(docs, s)["spec"]["template"]["spec"]["containers"][0],
        );
        assert_eq!(env["SVID_DIR"], GATEWAY_SVID_DIR, "{s}");
        let ids = identity::IdTemplate::new(
            &env["SPIFFE_ID_TEMPLATE"],
            &identity::TrustDomain::default(),
        )
        .unwrap();
        for w in [Workload::Gateway, s] {
            assert_eq!(
                ids.id_of(w.name()).unwrap().as_str(),
                k8s_spiffe_id(docs, w),
                "{s}: the ID of {w}"
            );
        }
    }

    // The compose policy passes the same validator.
    let compose = std::fs::read_to_string(root().join("gateway/config/compose.yaml")).unwrap();
    validate_policy(
        "gateway/config/compose.yaml",
        &compose,
        "spiffe://vantage.local/gateway",
    );
}

/// The policy with its TLS settings taken out and the JWKS URL made plain `http://`: what a
/// mesh overlay's policy must be, given the base one.
fn without_tls(mut policy: Value) -> Value {
    for (_, u) in policy["upstreams"].as_mapping_mut().unwrap().iter_mut() {
        u.as_mapping_mut().unwrap().remove("tls");
    }
    for (_, i) in policy["issuers"].as_mapping_mut().unwrap().iter_mut() {
        let i = i.as_mapping_mut().unwrap();
        i.remove("jwks_tls");
        if let Some(Value::String(url)) = i.get_mut("jwks_url") {
            *url = url.replacen("https://", "http://", 1);
        }
    }
    policy
}

#[test]
fn k8s_mesh_overlays_run_the_gateway_policy_over_plain_http() {
    let base: Value = serde_yaml::from_str(k8s_gateway_policy(rendered("base"))).unwrap();
    for name in MESH_OVERLAYS {
        let docs = rendered(name);
        let text = k8s_gateway_policy(docs);
        let policy = validate_policy(name, text, &k8s_spiffe_id(docs, Workload::Gateway));
        for s in Workload::SERVICES {
            assert!(
                policy.upstreams[s.name()].tls.is_none(),
                "{name}: {s} is plain HTTP to the mesh proxy"
            );
        }
        for (issuer, i) in &policy.issuers {
            assert!(i.jwks_tls.is_none(), "{name}: {issuer}");
            match &i.keys {
                gateway::config::KeySource::JwksUrl { url } => {
                    assert!(url.starts_with("http://"), "{name}: {issuer}: {url}")
                }
                other => panic!("{name}: {issuer}: {other:?}"),
            }
        }
        // Otherwise the very policy of the base: routes, limits, issuers, upstreams.
        let raw: Value = serde_yaml::from_str(text).unwrap();
        assert_eq!(
            raw,
            without_tls(base.clone()),
            "{name}: the mesh policy differs from the base one by more than TLS"
        );
    }
}

/// The SPIRE agent's socket in the SPIRE overlay: in the directory the SPIFFE CSI driver mounts.
const SPIRE_SOCKET: &str = "unix:///var/run/secrets/spiffe/spire-agent.sock";

#[test]
fn k8s_spire_overlay_takes_every_svid_from_the_workload_api() {
    use service_kit::IdentityConfig;
    let docs = rendered("overlays/spire");
    let socket_dir = Path::new(SPIRE_SOCKET.strip_prefix("unix://").unwrap())
        .parent()
        .unwrap();
    for w in Workload::ALL {
        let pod = &workload(docs, w)["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(
            volume(pod, "spiffe")["csi"],
            serde_yaml::from_str::<Value>("{driver: csi.spiffe.io, readOnly: true}").unwrap(),
            "{w}: the agent's socket, from the SPIFFE CSI driver, instead of SVID files"
        );
        assert_eq!(
            mount(container, "spiffe")["mountPath"]
                .as_str()
                .map(Path::new),
            Some(socket_dir),
            "{w}: SPIFFE_ENDPOINT_SOCKET is in the mounted directory"
        );
        if !w.is_service() {
            continue;
        }
        // The services' own parser reads the Workload API as their SVID source, in mtls mode.
        let env: HashMap<String, String> = container_env(docs, container).into_iter().collect();
        let mut p = observability::env::EnvParser::new(&env);
        let config = IdentityConfig::parse(&mut p);
        p.finish().unwrap_or_else(|e| panic!("{w}: {e}"));
        assert_eq!(config.mode, service_kit::IdentityMode::Mtls, "{w}");
        assert_eq!(
            config.svid,
            Some(identity::SvidSource::WorkloadApi(SPIRE_SOCKET.into())),
            "{w}"
        );
    }

    // The gateway: every tls block names the socket, and the policy is otherwise the base's.
    // No SVID file to load (validation checks the endpoint; the agent serves the SVID).
    let text = k8s_gateway_policy(docs);
    let policy = gateway::config::Config::parse(text, &root().join("gateway/config"))
        .unwrap_or_else(|e| panic!("overlays/spire: {e}"));
    let workload_api = gateway::config::SvidConfig::WorkloadApi {
        endpoint: SPIRE_SOCKET.into(),
    };
    for s in Workload::SERVICES {
        let tls = policy.upstreams[s.name()].tls.as_ref().unwrap();
        assert_eq!(tls.svid, workload_api, "{s}");
        assert_eq!(tls.spiffe_ids, [k8s_spiffe_id(docs, s)], "{s}");
    }
    for (issuer, i) in &policy.issuers {
        if let Some(tls) = &i.jwks_tls {
            assert_eq!(tls.svid, workload_api, "{issuer}");
        }
    }
    let base = k8s_gateway_policy(rendered("base"));
    let as_base: Value = serde_yaml::from_str(&text.replace(
        &format!("workload_api: \"{SPIRE_SOCKET}\""),
        &format!("svid_dir: {GATEWAY_SVID_DIR}"),
    ))
    .unwrap();
    assert_eq!(
        as_base,
        serde_yaml::from_str::<Value>(base).unwrap(),
        "the SPIRE policy differs from the base one by more than its SVID source"
    );
}

#[test]
fn k8s_gateway_is_autoscaled_and_keeps_one_pod_through_disruptions() {
    let docs = rendered("base");
    let gw = workload(docs, Workload::Gateway);
    assert!(
        gw["spec"].get("replicas").is_none(),
        "the HorizontalPodAutoscaler owns the replica count"
    );
    let pod_labels = labels(&gw["spec"]["template"]["metadata"]["labels"]);
    let hpa = find(docs, "HorizontalPodAutoscaler", "gateway");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "gateway");
    let min = hpa["spec"]["minReplicas"].as_u64().unwrap();
    assert!(min >= 2, "at least two gateways");
    assert!(hpa["spec"]["maxReplicas"].as_u64().unwrap() > min);
    let pdb = find(docs, "PodDisruptionBudget", "gateway");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let selector = labels(&pdb["spec"]["selector"]["matchLabels"]);
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    let svc = find(docs, "Service", "gateway");
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(
        svc["spec"]["externalTrafficPolicy"], "Local",
        "client addresses reach the per-IP rate limits"
    );
    // Nothing else is exposed outside the cluster.
    for s in of_kind(docs, "Service") {
        if s["metadata"]["name"] != "gateway" {
            assert!(
                s["spec"].get("type").is_none() || s["spec"]["type"] == "ClusterIP",
                "{}",
                s["metadata"]["name"].as_str().unwrap_or("?")
            );
        }
    }
}

#[test]
fn k8s_broker_is_a_three_node_tls_only_rabbitmq_cluster_with_its_definitions() {
    let docs = rendered("base");
    let rmq = find(docs, "RabbitmqCluster", "rabbitmq");
    let spec = &rmq["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["tls"]["disableNonTLSListeners"], true, "AMQPS only");
    let secret = spec["tls"]["secretName"].as_str().unwrap();
    let cert = of_kind(docs, "Certificate")
        .into_iter()
        .find(|c| c["spec"]["secretName"] == secret)
        .expect("a Certificate issues the broker's TLS Secret");
    let names: Vec<&str> = cert["spec"]["dnsNames"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(names.contains(&"rabbitmq"), "{names:?}");
    let issuer = find(
        docs,
        "Issuer",
        cert["spec"]["issuerRef"]["name"].as_str().unwrap(),
    );
    let ca = find(
        docs,
        "Certificate",
        issuer["spec"]["ca"]["secretName"].as_str().unwrap(),
    );
    assert_eq!(ca["spec"]["isCA"], true);
    assert_ne!(
        issuer["metadata"]["name"], "vantage-spiffe",
        "the broker's certificate does not come from the trust-domain CA"
    );
    // The definitions file (vhost, users, permissions) is loaded from a mounted Secret.
    let config = spec["rabbitmq"]["additionalConfig"].as_str().unwrap();
    let path = config
        .lines()
        .find_map(|l| l.strip_prefix("load_definitions = "))
        .expect("load_definitions");
    let sts = &spec["override"]["statefulSet"]["spec"]["template"]["spec"];
    let m = mount(&sts["containers"][0], "definitions");
    assert_eq!(
        Path::new(path).parent(),
        Some(Path::new(m["mountPath"].as_str().unwrap()))
    );
    assert_eq!(
        volume(sts, "definitions")["secret"]["secretName"],
        "vantage-broker-definitions"
    );
    // The definitions create no default user; the operator uses their operator account.
    assert_eq!(
        spec["secretBackend"]["externalSecret"]["name"],
        "vantage-broker-admin"
    );
    assert!(
        !config.contains("default_user"),
        "no default user next to the definitions: {config}"
    );
    // The services' queues are quorum queues (declared so by the services themselves).
    let topology =
        std::fs::read_to_string(root().join("services/messaging/src/topology.rs")).unwrap();
    assert!(topology.contains("\"x-queue-type\"") && topology.contains("\"quorum\""));
}

/// The kustomizations that put the workloads in a service mesh.
const MESH_OVERLAYS: [&str; 3] = [
    "overlays/linkerd",
    "overlays/istio-sidecar",
    "overlays/istio-ambient",
];

#[test]
fn k8s_overlays_switch_the_services_to_the_mesh_identity_modes() {
    // (kustomization, IDENTITY_MODE, scheme of the service URLs). The proxy: a pod annotation
    // for Linkerd, the namespace label for Istio's sidecar injector (with the pods that stay
    // out labelled so) or its ambient data plane.
    for (name, mode, scheme) in [
        ("base", "mtls", "https"),
        ("overlays/linkerd", "linkerd", "http"),
        ("overlays/istio-sidecar", "istio", "http"),
        ("overlays/istio-ambient", "istio", "http"),
    ] {
        let docs = rendered(name);
        let sidecar = name == "overlays/istio-sidecar";
        for w in Workload::ALL {
            let set = workload(docs, w);
            let env = container_env(docs, &set["spec"]["template"]["spec"]["containers"][0]);
            assert_eq!(env["IDENTITY_MODE"], mode, "{name}: {w}");
            let annotations = labels(&set["spec"]["template"]["metadata"]["annotations"]);
            assert_eq!(
                annotations.get("linkerd.io/inject").map(String::as_str),
                (mode == "linkerd").then_some("enabled"),
                "{name}: {w}"
            );
            let pod_labels = labels(&set["spec"]["template"]["metadata"]["labels"]);
            assert_eq!(
                pod_labels.get("sidecar.istio.io/inject"),
                None,
                "{name}: {w} is injected"
            );
            if w == Workload::Cart {
                assert!(
                    env["INVENTORY_URL"].starts_with(&format!("{scheme}://")),
                    "{name}"
                );
            }
            // Behind a sidecar or a Linkerd proxy the gateway still sees its clients'
            // addresses (the per-IP rate limits; both proxies connect to the application from
            // their own address): its public ports bypass the proxy, and nothing else does.
            let ports = |annotation: &str| -> BTreeSet<u16> {
                annotations
                    .get(annotation)
                    .map(|p| p.split(',').map(|p| p.trim().parse().unwrap()).collect())
                    .unwrap_or_default()
            };
            let public: BTreeSet<u16> = [
                contract::GATEWAY_PUBLIC_PORT,
                contract::GATEWAY_PUBLIC_TLS_PORT,
            ]
            .into();
            let bypass = |applies: bool| {
                if applies && w == Workload::Gateway {
                    public.clone()
                } else {
                    BTreeSet::new()
                }
            };
            assert_eq!(
                ports("traffic.sidecar.istio.io/excludeInboundPorts"),
                bypass(sidecar),
                "{name}: {w}"
            );
            assert_eq!(
                ports("config.linkerd.io/skip-inbound-ports"),
                bypass(mode == "linkerd"),
                "{name}: {w}"
            );
        }
        // Only our workloads get a Linkerd proxy or an Istio sidecar.
        for d in of_kind(docs, "Deployment") {
            if Workload::from_name(d["metadata"]["name"].as_str().unwrap()).is_none() {
                let template = &d["spec"]["template"]["metadata"];
                assert!(template["annotations"].get("linkerd.io/inject").is_none());
                assert_eq!(
                    labels(&template["labels"])
                        .get("sidecar.istio.io/inject")
                        .map(String::as_str),
                    sidecar.then_some("false"),
                    "{name}: {:?}",
                    d["metadata"]["name"]
                );
            }
        }
        let broker = &find(docs, "RabbitmqCluster", "rabbitmq")["spec"]["override"]["statefulSet"]
            ["spec"]["template"]["metadata"]["labels"];
        assert_eq!(
            broker
                .get("sidecar.istio.io/inject")
                .and_then(Value::as_str),
            sidecar.then_some("false"),
            "{name}: the broker"
        );
        let ns = labels(&find(docs, "Namespace", kubernetes::NAMESPACE)["metadata"]["labels"]);
        assert_eq!(
            ns.get("istio-injection").map(String::as_str),
            sidecar.then_some("enabled"),
            "{name}"
        );
        assert_eq!(
            ns.get("istio.io/dataplane-mode").map(String::as_str),
            (name == "overlays/istio-ambient").then_some("ambient"),
            "{name}"
        );
    }
}

/// How a mesh overlay's proxy tells the application who calls it.
struct MeshCaller {
    overlay: &'static str,
    /// The header the proxy sets.
    header: &'static str,
    /// Its value for a call from the pods of service account `from` to those of `to`.
    value: fn(from: &str, to: &str) -> String,
    /// The connections the proxy makes to the application: (peer address, the address the
    /// application accepted it on).
    proxy_connections: &'static [(&'static str, &'static str)],
}

/// The pod the checks below put the service in (IPv4 and IPv6).
const POD_IP: &str = "10.244.1.5";
const POD_IP6: &str = "fd00:10:244::5";

/// Linkerd's `l5d-client-id`: the client's identity,
/// `<service account>.<namespace>.serviceaccount.identity.linkerd.<cluster domain>`.
fn l5d_client_id(from: &str, _to: &str) -> String {
    format!("{from}.vantage.serviceaccount.identity.linkerd.cluster.local")
}

/// What Istio's Envoy (sidecar inbound: `APPEND_FORWARD` with subject, URI and DNS) adds to
/// `x-forwarded-client-cert` for a client certificate of Istio's CA: the server's own ID, the
/// certificate's hash, its (empty) subject and its URI SAN, the client's SPIFFE ID in the mesh
/// trust domain `cluster.local`.
fn istio_xfcc(from: &str, to: &str) -> String {
    format!(
        "By=spiffe://cluster.local/ns/vantage/sa/{to};\
         Hash=5e8d1c0a9f3b7e26d4c1a8b0f97e3d2c6a5b4e1f0d9c8b7a6e5d4c3b2a1f0e9d;\
         Subject=\"\";URI=spiffe://cluster.local/ns/vantage/sa/{from}"
    )
}

const MESH_CALLERS: [MeshCaller; 3] = [
    // The Linkerd proxy (2.11 and later) connects to the application's original destination,
    // the pod's own address, from that address.
    MeshCaller {
        overlay: "overlays/linkerd",
        header: service_kit::peer::L5D_CLIENT_ID,
        value: l5d_client_id,
        proxy_connections: &[(POD_IP, POD_IP), (POD_IP6, POD_IP6)],
    },
    // Istio's sidecar connects from its inbound passthrough addresses (Istio 1.10 and later).
    MeshCaller {
        overlay: "overlays/istio-sidecar",
        header: service_kit::peer::XFCC,
        value: istio_xfcc,
        proxy_connections: &[("127.0.0.6", POD_IP), ("::6", POD_IP6)],
    },
    // Ambient has no proxy in the pod: ztunnel delivers requests from the client's (or the
    // waypoint's) pod address, and sets no header. As shipped the services trust no address
    // the mesh uses, and every mesh call is refused; the ID mapping still has to be right for
    // the day MESH_TRUSTED_SIDECARS names a waypoint.
    MeshCaller {
        overlay: "overlays/istio-ambient",
        header: service_kit::peer::XFCC,
        value: istio_xfcc,
        proxy_connections: &[],
    },
];

/// The ServiceAccount `w`'s pods run as, which the mesh names in their identity.
fn service_account(docs: &[Value], w: Workload) -> &str {
    workload(docs, w)["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or_else(|| panic!("{w} names its ServiceAccount"))
}

fn conn_info(remote: &str, local: &str) -> service_kit::peer::ConnInfo {
    let at = |ip: &str| std::net::SocketAddr::new(ip.parse().unwrap(), 7000);
    service_kit::peer::ConnInfo {
        remote: at(remote),
        local: Some(at(local)),
        tls: None,
    }
}

/// Each service's own identity settings, parsed from its rendered container environment as
/// the service parses them, against the identity the mesh presents for every other workload:
/// on the mesh proxy's connections it is that workload (the gateway recognised as the
/// gateway); on any other it is nobody.
#[test]
fn k8s_mesh_overlays_name_every_caller_by_the_identity_its_mesh_presents() {
    use service_kit::peer::{Caller, ConnInfo, IdentityConfig, IdentityMode};
    for mesh in &MESH_CALLERS {
        let docs = rendered(mesh.overlay);
        for s in Workload::SERVICES {
            let container = &workload(docs, s)["spec"]["template"]["spec"]["containers"][0];
            let env: HashMap<String, String> = container_env(docs, container).into_iter().collect();
            let mut p = observability::env::EnvParser::new(&env);
            let config = IdentityConfig::parse(&mut p);
            p.finish()
                .unwrap_or_else(|e| panic!("{}: {s}: {e}", mesh.overlay));
            assert!(config.mode.is_mesh(), "{}: {s}", mesh.overlay);
            assert_eq!(
                config.mode == IdentityMode::Linkerd,
                mesh.header == service_kit::peer::L5D_CLIENT_ID,
                "{}: {s}",
                mesh.overlay
            );
            let caller = |from: Workload, conn: &ConnInfo| {
                let value = (mesh.value)(service_account(docs, from), service_account(docs, s));
                let mut headers = http::HeaderMap::new();
                headers.insert(mesh.header, value.parse().unwrap());
                config.caller(conn, &headers)
            };
            let proxy: Vec<ConnInfo> = mesh
                .proxy_connections
                .iter()
                .map(|(remote, local)| conn_info(remote, local))
                .collect();
            for conn in &proxy {
                assert!(
                    config.is_from_trusted_sidecar(conn),
                    "{}: {s} does not trust the mesh proxy's connection from {} \
                     (MESH_TRUSTED_SIDECARS)",
                    mesh.overlay,
                    conn.remote
                );
            }
            // Every connection the service trusts, the proxy's among them, gets the mapping.
            let mut trusted = proxy;
            trusted.extend(
                config
                    .trusted_sidecars
                    .iter()
                    .map(|n| conn_info(&n.network().to_string(), POD_IP)),
            );
            if config.trust_own_address {
                trusted.push(conn_info(POD_IP, POD_IP));
            }
            for w in Workload::ALL.into_iter().filter(|w| *w != s) {
                for conn in &trusted {
                    match caller(w, conn) {
                        Caller::Workload {
                            workload,
                            is_gateway,
                            id,
                        } => {
                            assert_eq!(
                                workload.as_deref(),
                                Some(w.name()),
                                "{}: {s} does not map {id} to {w} (SPIFFE_TRUST_DOMAIN, \
                                 SPIFFE_ID_TEMPLATE)",
                                mesh.overlay
                            );
                            assert_eq!(
                                is_gateway,
                                w == Workload::Gateway,
                                "{}: {s}: {id} as the gateway",
                                mesh.overlay
                            );
                        }
                        Caller::Anonymous => panic!(
                            "{}: {s}: a call from {w} via {} has no caller",
                            mesh.overlay, conn.remote
                        ),
                    }
                }
                // Another pod (or ztunnel delivering its call) and the address ztunnel probes
                // from are not the proxy: the same header is ignored.
                for conn in [
                    conn_info("10.244.3.17", POD_IP),
                    conn_info("169.254.7.127", POD_IP),
                    conn_info("fd00:10:244::17", POD_IP6),
                ] {
                    assert_eq!(
                        caller(w, &conn),
                        Caller::Anonymous,
                        "{}: {s} believes a header from {}",
                        mesh.overlay,
                        conn.remote
                    );
                }
            }
        }
    }
}

/// Istio's sidecar appends the client it verified to whatever `x-forwarded-client-cert` the
/// client sent: a caller that sends a forged element first is still named by the last one.
#[test]
fn k8s_istio_sidecar_believes_the_element_its_sidecar_appended() {
    use service_kit::peer::{Caller, IdentityConfig};
    let docs = rendered("overlays/istio-sidecar");
    let container = &workload(docs, Workload::Cart)["spec"]["template"]["spec"]["containers"][0];
    let env: HashMap<String, String> = container_env(docs, container).into_iter().collect();
    let mut p = observability::env::EnvParser::new(&env);
    let config = IdentityConfig::parse(&mut p);
    p.finish().unwrap();
    let forged = istio_xfcc("gateway", "cart");
    let appended = istio_xfcc("orders", "cart");
    let mut headers = http::HeaderMap::new();
    headers.insert(
        service_kit::peer::XFCC,
        format!("{forged},{appended}").parse().unwrap(),
    );
    let caller = config.caller(&conn_info("127.0.0.6", POD_IP), &headers);
    assert_eq!(caller.label(), "orders", "{caller:?}");
    assert!(!caller.is_gateway());
    assert!(matches!(caller, Caller::Workload { .. }));
}
