//! Every metric and label the Grafana dashboards query is one that something really exposes,
//! checked against real scrapes: the gateway and the seven services of a running stack (after
//! traffic that gives every queried family samples), and RabbitMQ's prometheus plugin on a node
//! of the test's own. Targets and their labels come from observability/prometheus/prometheus.yml,
//! so renaming a metric or a label in code without the dashboards fails here.
//!
//! Run with `cargo test -p e2e-tests --test dashboards` (RabbitMQ installed: the stack runs on the
//! harness's secured test node, the prometheus plugin on a node of this test's own).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use e2e_tests::dashboards::{
    queries, scrape_jobs, selectors, Exposed, Query, ScrapeJob, Selector, Target,
    PROMETHEUS_SYNTHETIC_METRICS, PROMETHEUS_TARGET_LABELS,
};
use e2e_tests::private_broker::PrivateBroker;
use e2e_tests::{Stack, ADMIN_EMAIL, ADMIN_PASSWORD, SERVICES};
use reqwest::StatusCode;
use serde_json::Value;
use stack::supervisor::Signal;

/// How long the traffic's effects may take to show on `/metrics`.
const SETTLE: Duration = Duration::from_secs(60);

/// Every query of every dashboard, with the metrics it reads.
fn dashboard_selectors() -> Vec<(Query, Selector)> {
    let dir = test_support::workspace_root().join("observability/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    let mut out = Vec::new();
    for file in files {
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let found = queries(&name, &json);
        assert!(!found.is_empty(), "{name} has no queries");
        for query in found {
            let read =
                selectors(&query.expr).unwrap_or_else(|e| panic!("{name} / {}: {e}", query.panel));
            assert!(
                !read.is_empty(),
                "{name} / {}: no metric in `{}`",
                query.panel,
                query.expr
            );
            out.extend(read.into_iter().map(|s| (query.clone(), s)));
        }
    }
    out
}

fn prometheus_jobs() -> Vec<ScrapeJob> {
    let path = test_support::workspace_root().join("observability/prometheus/prometheus.yml");
    scrape_jobs(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_dashboard_query_is_readable_and_names_a_scrape_job() {
    let jobs: BTreeSet<String> = prometheus_jobs().into_iter().map(|j| j.name).collect();
    for (query, selector) in dashboard_selectors() {
        if let Some(job) = &selector.job {
            assert!(
                jobs.contains(job),
                "{} / {}: job {job:?} is not scraped by prometheus.yml ({jobs:?})",
                query.dashboard,
                query.panel
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_a_dashboard_queries_is_exposed() {
    let uses = dashboard_selectors();
    let jobs = prometheus_jobs();
    let (stack, broker) = tokio::join!(
        Stack::start(&[]),
        // Queue statistics every second rather than every five, so a new queue shows sooner.
        PrivateBroker::start(
            &["rabbitmq_prometheus"],
            "collect_statistics_interval = 1000"
        ),
    );
    drive_saga(&stack, &broker).await;
    // Everything scraped once while every target is up: the service whose death gives the
    // gateway its upstream errors is scraped no more afterwards, as Prometheus would find it down.
    let mut seen: BTreeMap<(String, String), (Target, Exposed)> = BTreeMap::new();
    scrape_all(&stack, &broker, &jobs, &[], &mut seen).await;
    break_the_gateway(&stack).await;

    let deadline = Instant::now() + SETTLE;
    loop {
        scrape_all(&stack, &broker, &jobs, &[KILLED], &mut seen).await;
        let mut by_job: BTreeMap<String, Vec<&(Target, Exposed)>> = BTreeMap::new();
        for ((job, _), target) in &seen {
            by_job.entry(job.clone()).or_default().push(target);
        }
        let problems = check(&uses, &by_job);
        // The saga's counters, the reload and the upstream errors show a little after what
        // caused them: only a problem that outlasts SETTLE counts.
        if problems.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dashboards query what nothing exposes:\n  {}",
            problems.join("\n  ")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stack.stop().await;
    drop(broker);
}

/// The service [`break_the_gateway`] kills.
const KILLED: &str = "audit";

/// Scrapes every target of `jobs` into `seen` (merged with earlier scrapes), except the hosts
/// in `down`.
async fn scrape_all(
    stack: &Stack,
    broker: &PrivateBroker,
    jobs: &[ScrapeJob],
    down: &[&str],
    seen: &mut BTreeMap<(String, String), (Target, Exposed)>,
) {
    for job in jobs {
        for target in job.targets.iter().filter(|t| !down.contains(&t.host())) {
            let exposed = scrape(stack, broker, job, target).await;
            seen.entry((job.name.clone(), target.address.clone()))
                .or_insert_with(|| (target.clone(), Exposed::default()))
                .1
                .merge(exposed);
        }
    }
}

/// What the check needs samples of on the shop's side: a shipped and a cancelled order (saga
/// counters and `shop_orders_final{status,reason}`), allowed and denied calls (auth and
/// rate-limit decisions), and a queue on the private broker.
async fn drive_saga(stack: &Stack, broker: &PrivateBroker) {
    let api = &stack.api;
    let (_, shopper) = stack.new_user("dash").await;
    let _admin = stack.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let (s, _) = api.get("/api/cart", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, products) = api.get("/api/products", None).await;
    assert_eq!(s, StatusCode::OK, "{products}");
    let mug = products
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["sku"] == "MUG-001")
        .unwrap()["id"]
        .clone();
    let mug = mug.as_str().unwrap();
    let mut orders = Vec::new();
    for payment_token in ["tok_visa", "tok_declined"] {
        stack.add_to_cart(&shopper, mug, 1).await;
        orders.push(stack.checkout(&shopper, payment_token).await);
    }
    for id in &orders {
        stack
            .poll(&format!("/api/orders/{id}"), &shopper, SETTLE, |o| {
                o["status"] == "SHIPPED" || o["status"] == "CANCELLED"
            })
            .await;
    }

    // A queue, so RabbitMQ's per-queue families have samples.
    let conn =
        lapin::Connection::connect(&broker.amqp_url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            test_support::unique_name("dashboards").as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "ok".into()).await;
}

/// A policy reload and an upstream that is gone (`KILLED`), for the gateway's reload and
/// upstream-error counters.
async fn break_the_gateway(stack: &Stack) {
    stack.signal("gateway", Signal::SIGHUP);
    stack.signal(KILLED, Signal::SIGKILL);
    let admin = stack.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let (s, body) = stack.api.get("/api/audit/stats", Some(&admin)).await;
    assert!(s.is_server_error(), "{KILLED} is down: {s} {body}");
}

/// One target of prometheus.yml, scraped where this test runs it.
async fn scrape(
    stack: &Stack,
    broker: &PrivateBroker,
    job: &ScrapeJob,
    target: &Target,
) -> Exposed {
    let query: Vec<(String, String)> = job
        .params
        .iter()
        .flat_map(|(k, vs)| vs.iter().map(move |v| (k.clone(), v.clone())))
        .collect();
    let host = target.host();
    if host == "gateway" {
        // Authenticated with the admin token, as prometheus.yml's credentials_file does.
        return Exposed::openmetrics(&stack.gateway_metrics().await)
            .unwrap_or_else(|e| panic!("gateway /metrics: {e}"));
    }
    let (url, openmetrics) = if SERVICES.contains(&host) {
        (
            format!("http://{}{}", stack.ops_addrs[host], job.metrics_path),
            true,
        )
    } else if host == "rabbitmq" {
        (broker.prometheus_url(&job.metrics_path), false)
    } else {
        panic!(
            "prometheus.yml scrapes {}, which this test does not run",
            target.address
        );
    };
    let resp = reqwest::Client::new()
        .get(&url)
        .query(&query)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    let text = resp.text().await.unwrap();
    let exposed = if openmetrics {
        Exposed::openmetrics(&text)
    } else {
        Exposed::prometheus_text(&text)
    };
    exposed.unwrap_or_else(|e| panic!("{url}: {e}\n{text}"))
}

/// Every problem with what the dashboards query, given what each job's targets expose.
fn check(
    uses: &[(Query, Selector)],
    scrapes: &BTreeMap<String, Vec<&(Target, Exposed)>>,
) -> Vec<String> {
    let mut problems = BTreeSet::new();
    for (query, selector) in uses {
        let at = format!(
            "{} / {}: `{}`{}",
            query.dashboard,
            query.panel,
            selector.metric,
            selector
                .job
                .as_ref()
                .map_or(String::new(), |j| format!(" (job {j})"))
        );
        let targets: Vec<&(Target, Exposed)> = scrapes
            .iter()
            .filter(|(job, _)| selector.job.as_ref().is_none_or(|j| j == *job))
            .flat_map(|(_, targets)| targets.iter().copied())
            .collect();
        let mut allowed: BTreeSet<String> = PROMETHEUS_TARGET_LABELS
            .iter()
            .map(|l| (*l).to_owned())
            .collect();
        allowed.extend(targets.iter().flat_map(|(t, _)| t.labels.keys().cloned()));
        if !PROMETHEUS_SYNTHETIC_METRICS.contains(&selector.metric.as_str()) {
            let families: Vec<_> = targets
                .iter()
                .filter_map(|(_, exposed)| exposed.family_of(&selector.metric))
                .collect();
            if families.is_empty() {
                problems.insert(format!("{at} is exposed by no target"));
                continue;
            }
            if families.iter().all(|(_, f)| f.samples == 0) {
                problems.insert(format!(
                    "{at}: family `{}` has no samples yet, so its labels cannot be checked",
                    families[0].0
                ));
                continue;
            }
            allowed.extend(families.iter().flat_map(|(_, f)| f.labels.iter().cloned()));
        }
        let unknown: Vec<&String> = selector.labels.difference(&allowed).collect();
        if !unknown.is_empty() {
            problems.insert(format!(
                "{at} uses labels {unknown:?} it does not have ({allowed:?})"
            ));
        }
    }
    problems.into_iter().collect()
}

#[test]
fn the_check_names_missing_metrics_unknown_labels_and_unsampled_families() {
    let use_of = |expr: &str| -> Vec<(Query, Selector)> {
        let query = Query {
            dashboard: "d".into(),
            panel: "p".into(),
            expr: expr.into(),
        };
        selectors(expr)
            .unwrap()
            .into_iter()
            .map(|s| (query.clone(), s))
            .collect()
    };
    let target = Target {
        address: "users:7001".into(),
        labels: [("service".to_owned(), "users".to_owned())].into(),
    };
    let exposed = Exposed::openmetrics(
        "# TYPE shop_messages_consumed counter\n\
         shop_messages_consumed_total{consumer=\"users\",outcome=\"processed\"} 1\n\
         # TYPE shop_outbox_backlog gauge\n# EOF\n",
    )
    .unwrap();
    let scraped = (target, exposed);
    let scrapes: BTreeMap<String, Vec<&(Target, Exposed)>> =
        [("services".to_owned(), vec![&scraped])].into();
    let problems = |expr: &str| check(&use_of(expr), &scrapes);

    assert!(problems(
        r#"sum by (service, consumer) (rate(shop_messages_consumed_total{job="services", outcome="retried"}[5m]))"#
    )
    .is_empty());
    assert!(problems(r#"sum(up{job="services", service=~"$service"})"#).is_empty());
    let missing = problems(r#"outbox_backlog{job="services"}"#);
    assert!(missing[0].contains("exposed by no target"), "{missing:?}");
    let counter_without_total = problems(r#"shop_messages_consumed{job="services"}"#);
    assert!(counter_without_total[0].contains("exposed by no target"));
    let wrong_label =
        problems(r#"sum by (destination) (shop_messages_consumed_total{job="services"})"#);
    assert!(
        wrong_label[0].contains(r#"["destination"]"#),
        "{wrong_label:?}"
    );
    let unsampled = problems(r#"shop_outbox_backlog{job="services"}"#);
    assert!(unsampled[0].contains("no samples yet"), "{unsampled:?}");
    let other_job = problems(r#"shop_outbox_backlog{job="gateway"}"#);
    assert!(
        other_job[0].contains("exposed by no target"),
        "{other_job:?}"
    );
    assert_eq!(problems(r#"up{job="services", route="x"}"#).len(), 1);
}
