//! The Docker path cannot run here (no engine), so these tests hold its files to the
//! same facts the no-Docker stack uses: every service is in the compose file, on the
//! port Prometheus scrapes, built from the one Dockerfile, started after a healthy
//! RabbitMQ; only the agreed ports are published; dashboards are well-formed.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_yaml::Value;
use stack::config::{DEFAULT_BASE_PORT, SERVICES};

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
        assert_eq!(
            str_of(svc, &["environment", "AMQP_URL"]),
            Some("amqp://guest:guest@rabbitmq:5672/%2f")
        );
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
            Some(format!("http://{name}:{port}").as_str()),
            "services reach {name} by its compose hostname"
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
        "grafana 3000:3000",
        "jaeger 16686:16686",
        "rabbitmq 15672:15672",
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
        let t = format!("{name}:{}", DEFAULT_BASE_PORT + i as u16);
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
    assert_eq!(jwks, ["http://users:7001/.well-known/jwks.json"]);
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

    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    for excluded in ["/target", "/.stack", "/.git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == excluded),
            "{excluded} stays out of the build context"
        );
    }
}
