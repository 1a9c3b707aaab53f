//! The broker the stack's services use: one user per service (never `guest`) with the
//! permissions of the messaging contract, in the vhost `AMQP_URL` names (default `vantage`).
//!
//! Before the services start, the stack
//! 1. keeps one generated password per service in `<run dir>/broker/passwords/<service>`
//!    (0600; generated once, reused by later runs),
//! 2. writes the definitions (`messaging::definitions`: vhost, users with password hashes,
//!    permissions, topic permissions, exchanges, queues, bindings) to
//!    `<run dir>/broker/definitions.json`,
//! 3. imports them into the broker: through the management API when `RABBITMQ_ADMIN_URL`
//!    names one (`http://admin:password@127.0.0.1:15672`), else with `rabbitmqctl
//!    import_definitions` on this machine (which needs to be run as root or as the `rabbitmq`
//!    user), or not at all with `--broker-provisioned` (someone imported the file already),
//! 4. logs in as every service user and checks its queue exists, so a broker that did not take
//!    the definitions is one clear error before any service starts.
//!
//! Each service then gets `AMQP_URL` with its user and no password, `AMQP_PASSWORD_FILE`
//! naming its password file, and `AMQP_CA_FILE` for `amqps://`. Imports change nothing but the
//! vhost and the users they name: the broker's own accounts (`guest` included) and settings are
//! left alone. With `--queue-prefix P` the users are `P<service>`, so parallel stacks on one
//! broker never share users.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use messaging::contract;
use messaging::definitions::{self, PasswordHash};
use messaging::{AmqpConfig, BrokerEndpoint, Topology};
use rand::distr::{Alphanumeric, SampleString as _};

use crate::error::StackError;

/// The broker options of `stack` (flattened into [`Options`](crate::Options)).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BrokerOptions {
    /// Import the broker definitions through this management API
    /// (`http://<admin>:<password>@127.0.0.1:15672`) instead of `rabbitmqctl`.
    #[arg(long, env = "RABBITMQ_ADMIN_URL", hide_env_values = true)]
    pub broker_admin_url: Option<String>,

    /// The broker already has `<run dir>/broker/definitions.json` (you imported it): import
    /// nothing, only check that every service user can log in.
    #[arg(long)]
    pub broker_provisioned: bool,

    /// CA bundle (PEM) that signed the broker's certificate, for an `amqps://` AMQP_URL.
    #[arg(long, env = "AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,
}

/// How the definitions get into the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provisioner {
    /// `rabbitmqctl import_definitions` (the definitions on stdin), against the node
    /// `rabbitmqctl` reaches on this machine.
    Rabbitmqctl,
    /// `POST /api/definitions` of the management API at `base` (`http://host:15672`) as `user`.
    Management {
        base: String,
        user: String,
        password: String,
    },
    /// Someone imported them already.
    AlreadyProvisioned,
}

/// Where the broker is and how the stack sets it up. Validated once, inert.
#[derive(Debug, Clone)]
pub struct BrokerPlan {
    /// `AMQP_URL` without credentials: scheme, host, port, vhost, query.
    url: url::Url,
    /// The vhost (from the URL's path; `/` when it has none).
    pub vhost: String,
    pub topology: Topology,
    pub provisioner: Provisioner,
    pub ca_file: Option<PathBuf>,
}

impl BrokerPlan {
    /// Checks `amqp_url` (it names the broker and the vhost, never a user: each service gets
    /// its own), the admin URL and the CA bundle. Every problem is returned.
    pub fn new(
        amqp_url: &str,
        queue_prefix: &str,
        options: &BrokerOptions,
    ) -> Result<BrokerPlan, Vec<String>> {
        let mut errors = Vec::new();
        let url = match url::Url::parse(amqp_url) {
            Ok(u) if matches!(u.scheme(), "amqp" | "amqps") && u.has_host() => Some(u),
            _ => {
                errors.push("AMQP_URL must be amqp://host:port/vhost or amqps://…".to_owned());
                None
            }
        };
        if let Some(u) = &url {
            if !u.username().is_empty() || u.password().is_some() {
                errors.push(
                    "AMQP_URL must not name a user: the stack gives every service its own broker \
                     user (drop the `user:password@` part)"
                        .to_owned(),
                );
            }
            match (u.scheme(), &options.amqp_ca_file) {
                ("amqps", None) => errors.push(
                    "an amqps:// AMQP_URL needs AMQP_CA_FILE (the CA that signed the broker's \
                     certificate)"
                        .to_owned(),
                ),
                ("amqp", Some(_)) => {
                    errors.push("AMQP_CA_FILE is set but AMQP_URL is plaintext amqp://".to_owned())
                }
                _ => {}
            }
        }
        if let Some(ca) = &options.amqp_ca_file {
            if !ca.is_file() {
                errors.push(format!("AMQP_CA_FILE {}: no such file", ca.display()));
            }
        }
        let provisioner = match (&options.broker_admin_url, options.broker_provisioned) {
            (Some(_), true) => {
                errors.push(
                    "--broker-provisioned and RABBITMQ_ADMIN_URL exclude each other".to_owned(),
                );
                Provisioner::AlreadyProvisioned
            }
            (None, true) => Provisioner::AlreadyProvisioned,
            (None, false) => Provisioner::Rabbitmqctl,
            (Some(admin), false) => match management(admin) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(e);
                    Provisioner::Rabbitmqctl
                }
            },
        };
        let Some(url) = url.filter(|_| errors.is_empty()) else {
            return Err(errors);
        };
        let vhost = match url.path() {
            "" | "/" => "/".to_owned(),
            path => percent_decode(&path[1..]),
        };
        Ok(BrokerPlan {
            url,
            vhost,
            topology: Topology::new(queue_prefix),
            provisioner,
            ca_file: options.amqp_ca_file.clone(),
        })
    }

    /// `host:port` of the broker, for messages.
    pub fn shown(&self) -> String {
        let port = self.url.port().unwrap_or(if self.url.scheme() == "amqps" {
            5671
        } else {
            5672
        });
        format!("{}:{port}", self.url.host_str().unwrap_or("?"))
    }

    /// `AMQP_URL` of `service`: this URL with the service's user and no password.
    pub fn url_of(&self, service: &str) -> String {
        let mut u = self.url.clone();
        // A user name from the contract and a prefix without spaces always fits a URL.
        let _ = u.set_username(&self.topology.user(service));
        u.to_string()
    }
}

/// The management API from `RABBITMQ_ADMIN_URL`, with its credentials taken out of the URL.
fn management(admin_url: &str) -> Result<Provisioner, String> {
    let bad =
        "RABBITMQ_ADMIN_URL must be http(s)://<admin>:<password>@host:port (the management API)";
    let mut u = url::Url::parse(admin_url).map_err(|_| bad.to_owned())?;
    if !matches!(u.scheme(), "http" | "https") || u.username().is_empty() {
        return Err(bad.to_owned());
    }
    let user = percent_decode(u.username());
    let password = u.password().map(percent_decode).unwrap_or_default();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    Ok(Provisioner::Management {
        base: u.as_str().trim_end_matches('/').to_owned(),
        user,
        password,
    })
}

/// The broker of one stack run, set up: passwords and definitions on disk.
#[derive(Debug)]
pub struct Broker {
    pub plan: BrokerPlan,
    /// `<run dir>/broker`.
    pub dir: PathBuf,
    pub definitions: PathBuf,
}

impl Broker {
    /// Writes (or reuses) the passwords and writes the definitions under `<run_dir>/broker`.
    pub fn prepare(plan: BrokerPlan, run_dir: &Path) -> Result<Broker, StackError> {
        let dir = run_dir.join("broker");
        let passwords = dir.join("passwords");
        create_private_dir(&dir)?;
        create_private_dir(&passwords)?;
        let mut hashes = std::collections::HashMap::new();
        for c in contract::SERVICES {
            let file = passwords.join(c.service);
            let password = match std::fs::read_to_string(&file) {
                Ok(p) if !p.trim().is_empty() => p.trim().to_owned(),
                _ => {
                    let p = Alphanumeric.sample_string(&mut rand::rng(), 32);
                    crate::write_private(&file, &p)?;
                    p
                }
            };
            hashes.insert(c.service, PasswordHash::new(&password));
        }
        let json = definitions::build(&plan.vhost, &plan.topology, |s| hashes[s].clone(), None);
        let definitions = dir.join("definitions.json");
        let text = serde_json::to_string_pretty(&json).map_err(|e| StackError::Io {
            context: "encoding the broker definitions".into(),
            source: std::io::Error::other(e),
        })?;
        crate::write_private(&definitions, &text)?;
        Ok(Broker {
            plan,
            dir,
            definitions,
        })
    }

    /// The password file of `service`.
    pub fn password_file(&self, service: &str) -> PathBuf {
        self.dir.join("passwords").join(service)
    }

    /// What `service` connects with: `AMQP_URL`, `AMQP_PASSWORD_FILE`, and `AMQP_CA_FILE`
    /// for amqps.
    pub fn service_env(&self, service: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("AMQP_URL".to_owned(), self.plan.url_of(service)),
            (
                "AMQP_PASSWORD_FILE".to_owned(),
                self.password_file(service).display().to_string(),
            ),
        ];
        if let Some(ca) = &self.plan.ca_file {
            env.push(("AMQP_CA_FILE".to_owned(), ca.display().to_string()));
        }
        env
    }

    /// Imports the definitions as the plan says.
    pub async fn import(&self) -> Result<(), StackError> {
        let text = std::fs::read_to_string(&self.definitions).map_err(StackError::io(format!(
            "reading {}",
            self.definitions.display()
        )))?;
        match &self.plan.provisioner {
            Provisioner::AlreadyProvisioned => Ok(()),
            Provisioner::Rabbitmqctl => self.import_with_rabbitmqctl(&text).await,
            Provisioner::Management {
                base,
                user,
                password,
            } => {
                self.import_with_management(&text, base, user, password)
                    .await
            }
        }
    }

    async fn import_with_rabbitmqctl(&self, text: &str) -> Result<(), StackError> {
        use tokio::io::AsyncWriteExt as _;
        let failed =
            |reason: String| self.provision_failed("rabbitmqctl import_definitions", reason);
        let mut child = tokio::process::Command::new("rabbitmqctl")
            .args(["import_definitions", "--format", "json"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("cannot run rabbitmqctl: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(text.as_bytes())
                .await
                .map_err(|e| failed(format!("writing to rabbitmqctl: {e}")))?;
        }
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .map_err(|_| failed("no answer within 120 s".to_owned()))?
            .map_err(|e| failed(e.to_string()))?;
        if out.status.success() {
            return Ok(());
        }
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let first = said
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("Importing"))
            .unwrap_or("no output")
            .to_owned();
        Err(failed(format!("{} ({first})", out.status)))
    }

    async fn import_with_management(
        &self,
        text: &str,
        base: &str,
        user: &str,
        password: &str,
    ) -> Result<(), StackError> {
        let failed =
            |reason: String| self.provision_failed(&format!("POST {base}/api/definitions"), reason);
        let response = reqwest::Client::new()
            .post(format!("{base}/api/definitions"))
            .basic_auth(user, Some(password))
            .header("content-type", "application/json")
            .body(text.to_owned())
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| failed(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(failed(format!("{status}: {}", body.trim())))
    }

    fn provision_failed(&self, how: &str, reason: String) -> StackError {
        StackError::BrokerProvisioning {
            how: how.to_owned(),
            reason,
            broker: self.plan.shown(),
            definitions: self.definitions.clone(),
        }
    }

    /// Logs in as every service user and checks that its queue exists, retrying for up to
    /// `within` (a `rabbitmqctl` import finishes after the command returns).
    pub async fn verify(&self, within: Duration) -> Result<(), StackError> {
        let deadline = Instant::now() + within;
        for c in contract::SERVICES {
            let mut endpoint = BrokerEndpoint::url(self.plan.url_of(c.service))
                .with_password_file(self.password_file(c.service));
            if let Some(ca) = &self.plan.ca_file {
                endpoint = endpoint.with_ca_file(ca);
            }
            let amqp = AmqpConfig {
                endpoint,
                topology: self.plan.topology.clone(),
                connection_name: self.plan.topology.user(c.service),
                subscriptions: &[],
            };
            loop {
                let checked = check_user(&amqp, c).await;
                match checked {
                    Ok(()) => break,
                    Err(reason) if Instant::now() >= deadline => {
                        return Err(StackError::BrokerRefused {
                            user: amqp.user(),
                            broker: self.plan.shown(),
                            reason,
                            definitions: self.definitions.clone(),
                        })
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        Ok(())
    }
}

/// One service user logs in; a consumer's queue must exist.
async fn check_user(amqp: &AmqpConfig, c: &contract::Contract) -> Result<(), String> {
    let conn = amqp
        .connect("stack-check")
        .await
        .map_err(|e| e.to_string())?;
    let checked = if c.has_queue() {
        amqp.topology
            .ensure_consumer(
                &conn,
                c.service,
                c.consumes,
                messaging::DEFAULT_DELIVERY_LIMIT,
                &amqp.user(),
            )
            .await
            .map_err(|e| e.to_string())
    } else {
        Ok(())
    };
    let _ = conn.close(200, "checked".into()).await;
    checked
}

fn create_private_dir(dir: &Path) -> Result<(), StackError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).map_err(StackError::io(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(StackError::io(format!("restricting {}", dir.display())))
}

/// `s` with its `%XX` escapes decoded (URL user information; invalid UTF-8 becomes U+FFFD).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(url: &str, opts: BrokerOptions) -> Result<BrokerPlan, Vec<String>> {
        BrokerPlan::new(url, "p.", &opts)
    }

    #[test]
    fn the_url_names_the_broker_and_vhost_and_each_service_gets_its_user() {
        let p = plan("amqp://127.0.0.1:5672/vantage", BrokerOptions::default()).unwrap();
        assert_eq!(p.vhost, "vantage");
        assert_eq!(p.provisioner, Provisioner::Rabbitmqctl);
        assert_eq!(p.url_of("orders"), "amqp://p.orders@127.0.0.1:5672/vantage");
        assert_eq!(p.shown(), "127.0.0.1:5672");
        let p = plan(
            "amqp://localhost/%2f?frame_max=131072",
            BrokerOptions::default(),
        )
        .unwrap();
        assert_eq!(p.vhost, "/");
        assert_eq!(
            p.url_of("cart"),
            "amqp://p.cart@localhost/%2f?frame_max=131072"
        );
    }

    #[test]
    fn credentials_in_the_url_a_missing_ca_and_a_bad_admin_url_are_all_reported() {
        let errors = plan(
            "amqps://guest:guest@127.0.0.1/vantage",
            BrokerOptions {
                broker_admin_url: Some("ftp://x".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("must not name a user"), "{errors:?}");
        assert!(errors[1].contains("AMQP_CA_FILE"), "{errors:?}");
        assert!(errors[2].contains("RABBITMQ_ADMIN_URL"), "{errors:?}");
        assert!(!errors.join(" ").contains("guest:guest"));
    }

    #[test]
    fn the_admin_url_loses_its_credentials_to_basic_auth() {
        let p = plan(
            "amqp://127.0.0.1/vantage",
            BrokerOptions {
                broker_admin_url: Some("http://ops:s%40cret@127.0.0.1:15672/".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            p.provisioner,
            Provisioner::Management {
                base: "http://127.0.0.1:15672".into(),
                user: "ops".into(),
                password: "s@cret".into(),
            }
        );
    }

    #[test]
    fn passwords_are_generated_once_and_the_definitions_hold_only_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan("amqp://127.0.0.1/vantage", BrokerOptions::default()).unwrap();
        let first = Broker::prepare(p.clone(), dir.path()).unwrap();
        let pw = std::fs::read_to_string(first.password_file("orders")).unwrap();
        assert_eq!(pw.len(), 32);
        let second = Broker::prepare(p, dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(second.password_file("orders")).unwrap(),
            pw
        );
        let text = std::fs::read_to_string(&second.definitions).unwrap();
        assert!(!text.contains(&pw), "no password in the definitions");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let user = json["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "p.orders")
            .unwrap();
        let hash = user["password_hash"].as_str().unwrap();
        assert!(PasswordHash::from_stored(hash).verifies(&pw));
        use std::os::unix::fs::PermissionsExt as _;
        for f in [second.definitions.clone(), second.password_file("orders")] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        let env = second.service_env("orders");
        assert_eq!(
            env[0],
            (
                "AMQP_URL".into(),
                "amqp://p.orders@127.0.0.1/vantage".into()
            )
        );
        assert_eq!(env[1].0, "AMQP_PASSWORD_FILE");
    }
}
