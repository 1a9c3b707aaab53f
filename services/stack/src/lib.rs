//! `stack`: the whole Vantage shop on one machine, without Docker.
//!
//! Starts the seven services and then the gateway as separate processes (each stays its
//! own deployable binary), waits for every `/readyz`, and prints where to send requests,
//! the admin account and where traces go. It stops everything on Ctrl-C or SIGTERM, or
//! as soon as one child dies, after printing that child's last log lines.
//!
//! # How to use
//!
//! ```text
//! rabbitmq-server -detached                 # or: docker compose up -d rabbitmq
//! cargo run --release --bin stack           # builds the other binaries, then runs them
//! cargo run --release --bin stack -- --demo # one scripted order, then stop (exit 0 = shipped)
//! ```
//!
//! Logs go to `.stack/logs/<name>.log`, databases to `.stack/data/`, the gateway config
//! actually used to `.stack/gateway.yaml`, and the broker users' passwords and definitions to
//! `.stack/broker/` (see [`broker`]). Ports, the run directory and the queue
//! prefix are flags (see `stack --help`), so tests run isolated stacks side by side.

pub mod broker;
pub mod broker_definitions;
pub mod certs;
pub mod config;
pub mod contract;
pub mod demo;
pub mod error;
pub mod gateway_config;
pub mod preflight;
pub mod supervisor;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use config::{Config, ConfigError, Options};
pub use error::StackError;

use preflight::BuildTree;
use supervisor::{Launch, Supervisor};

/// How long the broker may take to accept the service users after the import.
const BROKER_CHECK: Duration = Duration::from_secs(15);

/// How long each child gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How a run ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by Ctrl-C / SIGTERM.
    Interrupted,
    /// `--demo` finished with a shipped order.
    DemoPassed,
}

/// The binaries a run needs, resolved before anything starts.
struct Binaries {
    gateway: PathBuf,
    services: Vec<PathBuf>,
}

/// Runs the stack until `shutdown` resolves, a child dies, or the demo ends.
/// Every child is stopped before this returns, whatever the outcome.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, StackError> {
    preflight::check_broker(&config.amqp_url)?;
    let mut wanted: Vec<(SocketAddr, &str)> =
        config.services.iter().map(|s| (s.addr, s.name)).collect();
    wanted.extend(config.services.iter().map(|s| (s.ops_addr, s.name)));
    wanted.push((config.gateway_addr, "gateway"));
    wanted.push((config.gateway_tls_addr, "gateway TLS"));
    wanted.push((config.admin_addr, "gateway admin"));
    preflight::check_ports(wanted)?;

    let bin_dir = match &config.bin_dir {
        Some(dir) => dir.clone(),
        None => own_dir()?,
    };
    let tree = BuildTree::locate(&bin_dir);
    if config.build {
        if let Some(tree) = &tree {
            tree.build()?;
        }
    }
    let binaries = Binaries {
        gateway: preflight::binary(&bin_dir, "gateway")?,
        services: config
            .services
            .iter()
            .map(|s| preflight::binary(&bin_dir, s.name))
            .collect::<Result<_, _>>()?,
    };

    let dirs = RunDirs::prepare(&config.run_dir, config.fresh)?;
    let pki = certs::Pki::prepare(&dirs.root)?;
    let pki_paths = pki.paths.clone();
    println!(
        "  ✓ certs     trust domain spiffe://{}, one SVID per workload in {}",
        contract::TRUST_DOMAIN,
        pki_paths.dir.join("svid").display()
    );
    let broker = broker::Broker::prepare(config.broker.clone(), &dirs.root)?;
    broker.import().await?;
    broker.verify(BROKER_CHECK).await?;
    println!(
        "  ✓ broker    {} vhost {:?}, one user per service ({})",
        config.broker.shown(),
        config.broker.vhost,
        broker.definitions.display()
    );
    let source = match (&config.gateway_config, &tree) {
        (Some(path), _) => path.clone(),
        (None, Some(tree)) => tree
            .root
            .join("gateway")
            .join("config")
            .join("example.yaml"),
        (None, None) => return Err(StackError::NoGatewayConfig),
    };
    let gateway_config = write_gateway_config(&config, &source, &dirs.root, &pki_paths)?;
    validate_gateway_config(&binaries.gateway, &gateway_config).await?;

    // SVIDs are re-issued before they expire for as long as the stack runs.
    let renewing = tokio_util::sync::CancellationToken::new();
    let renewer = tokio::spawn(pki.renew(renewing.clone()));
    let mut sup = Supervisor::new(dirs.logs.clone());
    let demo = config.demo;
    let result = tokio::select! {
        r = serve(&config, &mut sup, &binaries, &dirs, &broker, &gateway_config, &pki_paths) => r,
        () = shutdown => {
            println!("stack: stopping");
            if demo {
                Err(StackError::Demo("interrupted".to_owned()))
            } else {
                Ok(Outcome::Interrupted)
            }
        }
    };
    sup.stop_all(STOP_GRACE).await;
    renewing.cancel();
    let _ = renewer.await;
    if result.is_ok() {
        println!("stack: stopped");
    }
    result
}

/// Starts everything, then waits for the demo to finish or a child to die.
async fn serve(
    config: &Config,
    sup: &mut Supervisor,
    binaries: &Binaries,
    dirs: &RunDirs,
    broker: &broker::Broker,
    gateway_config: &Path,
    pki: &certs::PkiPaths,
) -> Result<Outcome, StackError> {
    let http = reqwest::Client::new();
    for (svc, bin) in config.services.iter().zip(&binaries.services) {
        sup.spawn(
            Launch::new(svc.name, bin)
                .envs(service_env(config, svc, dirs, broker, pki))
                // The stack's own SVIDs, not an agent the caller's shell may point at.
                .env_remove(identity::SPIFFE_ENDPOINT_SOCKET_ENV)
                .own_process_group(),
        )?;
    }
    for svc in &config.services {
        // Readiness on the plain ops port; the API port speaks mutual TLS only.
        let url = format!("http://{}/readyz", svc.ops_addr);
        let took = sup
            .wait_ready(svc.name, &url, config.ready_timeout, &http)
            .await?;
        println!(
            "  ✓ {:<9} ready on {} ({:.1}s)",
            svc.name,
            svc.addr,
            took.as_secs_f64()
        );
    }

    let args = vec![
        "run".to_owned(),
        "--config".to_owned(),
        gateway_config.display().to_string(),
    ];
    let mut env = vec![("OTEL_SERVICE_NAME".to_owned(), "gateway".to_owned())];
    if let Some(token) = &dirs.admin_token {
        env.push((ADMIN_TOKEN_ENV.to_owned(), token.clone()));
    }
    sup.spawn(
        Launch::new("gateway", &binaries.gateway)
            .args(args)
            .envs(env)
            .own_process_group(),
    )?;
    let url = format!("{}/readyz", config.admin_url());
    let took = sup
        .wait_ready("gateway", &url, config.ready_timeout, &http)
        .await?;
    println!(
        "  ✓ {:<9} ready on {} ({:.1}s)",
        "gateway",
        config.gateway_addr,
        took.as_secs_f64()
    );
    print_banner(config, dirs, pki);

    if config.demo {
        let url = config.gateway_url();
        tokio::select! {
            r = demo::run(&url, config.demo_timeout, config.otlp_endpoint.is_some()) => r.map(|_| Outcome::DemoPassed),
            e = sup.first_exit() => Err(e),
        }
    } else {
        println!("Press Ctrl-C to stop.");
        Err(sup.first_exit().await)
    }
}

fn print_banner(config: &Config, dirs: &RunDirs, pki: &certs::PkiPaths) {
    let first = config
        .services
        .first()
        .map(|s| s.addr.port())
        .unwrap_or_default();
    let last = config
        .services
        .last()
        .map(|s| s.addr.port())
        .unwrap_or_default();
    println!();
    println!("Vantage is up.");
    println!("  gateway   {}", config.gateway_url());
    println!(
        "  gateway   {} (TLS): curl --cacert {} {}/api/products",
        config.gateway_tls_url(),
        pki.ca_file.display(),
        config.gateway_tls_url()
    );
    println!(
        "  admin     {}/metrics  (also /healthz /readyz /config)",
        config.admin_url()
    );
    println!("  services  127.0.0.1:{first}..{last} (users, inventory, cart, orders, payment, shipping, audit), mutual TLS only; ops ports (/healthz /readyz /metrics) +{}", contract::OPS_PORT_OFFSET);
    println!(
        "  certs     CA {}, SVIDs {}/<workload>/ (re-issued before expiry)",
        pki.ca_file.display(),
        pki.dir.join("svid").display()
    );
    if config.admin_password_is_dev_default() {
        println!(
            "  account   {} / {} (development default; set SHOP_ADMIN_EMAIL and SHOP_ADMIN_PASSWORD)",
            config.admin_email,
            config::DEV_ADMIN_PASSWORD
        );
    } else {
        println!(
            "  account   {} (password from SHOP_ADMIN_PASSWORD)",
            config.admin_email
        );
    }
    match &config.otlp_endpoint {
        Some(endpoint) => {
            println!("  traces    OTLP to {endpoint} (Jaeger UI: http://localhost:16686)")
        }
        None => println!(
            "  traces    not exported; set OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 \
             (e.g. `docker compose up -d jaeger`)"
        ),
    }
    if dirs.admin_token.is_some() {
        println!(
            "  metrics   curl -H \"Authorization: Bearer $(cat {})\" {}/metrics",
            dirs.admin_token_file.display(),
            config.admin_url()
        );
    }
    println!("  logs      {}", dirs.logs.display());
    println!();
}

/// The environment of one service: the contract every service reads.
fn service_env(
    config: &Config,
    svc: &config::ServiceSpec,
    dirs: &RunDirs,
    broker: &broker::Broker,
    pki: &certs::PkiPaths,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("LISTEN_ADDR".to_owned(), svc.addr.to_string()),
        ("OPS_LISTEN_ADDR".to_owned(), svc.ops_addr.to_string()),
        ("IDENTITY_MODE".to_owned(), "mtls".to_owned()),
        (
            "SVID_DIR".to_owned(),
            pki.svid_dir(svc.name).display().to_string(),
        ),
        (
            "DATABASE_PATH".to_owned(),
            dirs.data
                .join(format!("{}.db", svc.name))
                .display()
                .to_string(),
        ),
        ("OTEL_SERVICE_NAME".to_owned(), svc.name.to_owned()),
    ];
    // Its own broker user: AMQP_URL, AMQP_PASSWORD_FILE (and AMQP_CA_FILE).
    env.extend(broker.service_env(svc.name));
    // Where each service finds the others over HTTP (e.g. cart reads prices from
    // INVENTORY_URL). Every service gets all of them; each reads only what it calls.
    for other in &config.services {
        env.push((
            format!("{}_URL", other.name.to_uppercase()),
            format!("https://{}", other.addr),
        ));
    }
    if let Some(prefix) = &config.queue_prefix {
        env.push(("SHOP_QUEUE_PREFIX".to_owned(), prefix.clone()));
    }
    if svc.name == "users" {
        env.push(("SHOP_ADMIN_EMAIL".to_owned(), config.admin_email.clone()));
        env.push((
            "SHOP_ADMIN_PASSWORD".to_owned(),
            config.admin_password.clone(),
        ));
    }
    env
}

/// The run directory and its parts, as absolute paths (children may resolve them
/// from another working directory).
struct RunDirs {
    root: PathBuf,
    logs: PathBuf,
    data: PathBuf,
    /// A per-run admin token for the gateway's /metrics and /config, generated when
    /// `VANTAGE_ADMIN_TOKEN` is not set. Written to a 0600 file, never printed.
    admin_token: Option<String>,
    admin_token_file: PathBuf,
}

/// The variable the example gateway config names in `admin.token_env`.
const ADMIN_TOKEN_ENV: &str = "VANTAGE_ADMIN_TOKEN";

impl RunDirs {
    fn prepare(run_dir: &Path, fresh: bool) -> Result<Self, StackError> {
        let root = {
            std::fs::create_dir_all(run_dir)
                .map_err(StackError::io(format!("creating {}", run_dir.display())))?;
            std::fs::canonicalize(run_dir)
                .map_err(StackError::io(format!("resolving {}", run_dir.display())))?
        };
        let logs = root.join("logs");
        let data = root.join("data");
        if fresh && data.exists() {
            std::fs::remove_dir_all(&data)
                .map_err(StackError::io(format!("removing {}", data.display())))?;
        }
        for dir in [&logs, &data] {
            std::fs::create_dir_all(dir)
                .map_err(StackError::io(format!("creating {}", dir.display())))?;
        }
        let admin_token_file = root.join("admin-token");
        let admin_token = match std::env::var(ADMIN_TOKEN_ENV) {
            Ok(set) if !set.is_empty() => None,
            _ => {
                let token = uuid::Uuid::new_v4().simple().to_string();
                write_private(&admin_token_file, &token)?;
                Some(token)
            }
        };
        Ok(RunDirs {
            root,
            logs,
            data,
            admin_token,
            admin_token_file,
        })
    }
}

/// Writes a file only its owner can read.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), StackError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(StackError::io(format!("creating {}", path.display())))?;
    f.write_all(contents.as_bytes())
        .map_err(StackError::io(format!("writing {}", path.display())))
}

fn write_gateway_config(
    config: &Config,
    source: &Path,
    run_dir: &Path,
    pki: &certs::PkiPaths,
) -> Result<PathBuf, StackError> {
    let text = std::fs::read_to_string(source)
        .map_err(StackError::io(format!("reading {}", source.display())))?;
    let moved = gateway_config::rewrite(&text, config);
    let gateway_svid = pki.svid_dir("gateway");
    let secured = gateway_config::with_mtls(
        &moved.text,
        &gateway_config::GatewayTls {
            svid_dir: &gateway_svid,
            public_tls: Some((config.gateway_tls_addr, &pki.edge_cert, &pki.edge_key)),
        },
    );
    let rewritten = gateway_config::Rewritten {
        text: secured.text,
        missing: moved.missing.into_iter().chain(secured.missing).collect(),
    };
    for missing in &rewritten.missing {
        eprintln!(
            "stack: warning: {} has no default address for {missing}; the gateway may not reach it",
            source.display()
        );
    }
    let target = run_dir.join("gateway.yaml");
    std::fs::write(&target, rewritten.text)
        .map_err(StackError::io(format!("writing {}", target.display())))?;
    Ok(target)
}

/// `gateway validate FILE`, so a bad config is reported before anything listens.
async fn validate_gateway_config(gateway: &Path, config: &Path) -> Result<(), StackError> {
    let out = tokio::process::Command::new(gateway)
        .arg("validate")
        .arg(config)
        .output()
        .await
        .map_err(StackError::io(format!(
            "running {} validate",
            gateway.display()
        )))?;
    if out.status.success() {
        return Ok(());
    }
    let mut message = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if message.is_empty() {
        message = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    Err(StackError::InvalidGatewayConfig {
        path: config.to_owned(),
        message: message.lines().collect::<Vec<_>>().join("; "),
    })
}

fn own_dir() -> Result<PathBuf, StackError> {
    let exe = std::env::current_exe().map_err(StackError::io("locating the stack binary"))?;
    Ok(exe
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".")))
}
