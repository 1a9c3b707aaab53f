//! `stack broker-definitions`: the RabbitMQ definitions file of a deployment, from the
//! messaging contract (`messaging::definitions`), with the passwords given to it.
//!
//! ```text
//! # one file per service in DIR, named after the service (users, inventory, …)
//! stack broker-definitions --password-dir DIR --out definitions.json
//! # or from the environment: AMQP_PASSWORD_USERS, AMQP_PASSWORD_INVENTORY, …
//! AMQP_PASSWORD_USERS=… … stack broker-definitions > definitions.json
//! ```
//!
//! Compose loads the file at boot (`load_definitions`, written by its one-shot
//! `broker-definitions` service), Kubernetes from the Secret `vantage-broker-definitions`;
//! `stack` imports its own (see [`crate::broker`]). Passwords never come from the repository
//! and never reach the file: it holds salted hashes.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;

use clap::Parser;
use messaging::contract;
use messaging::definitions::{self, Admin, PasswordHash};
use messaging::Topology;

/// Options of `stack broker-definitions`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "stack broker-definitions",
    about = "Write the RabbitMQ definitions (vhost, one user per service, permissions, topic \
             permissions, exchanges, queues, bindings) derived from the messaging contract.",
    after_help = "Each service's password comes from <password-dir>/<service> or, without \
                  --password-dir, from AMQP_PASSWORD_<SERVICE> (AMQP_PASSWORD_ORDERS, …). The \
                  operator account (tag administrator, no permission in the vhost) is added \
                  when RABBITMQ_ADMIN_PASSWORD or --admin-password-file gives its password."
)]
pub struct DefinitionsOptions {
    /// The vhost.
    #[arg(long, default_value = "vantage")]
    pub vhost: String,

    /// Prefix of every exchange, queue and user name (as the services' SHOP_QUEUE_PREFIX).
    #[arg(long, env = "SHOP_QUEUE_PREFIX", default_value = "")]
    pub queue_prefix: String,

    /// Directory with one password file per service, named after it.
    #[arg(long)]
    pub password_dir: Option<PathBuf>,

    /// Name of the operator account.
    #[arg(long, default_value = "vantage-admin")]
    pub admin_user: String,

    /// File holding the operator account's password.
    #[arg(long)]
    pub admin_password_file: Option<PathBuf>,

    /// Where to write the definitions (mode 0600); default standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Why no definitions could be written: every problem found.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct DefinitionsError(pub Vec<String>);

/// Builds the definitions from `options`; `env` reads variables (a closure, so tests need no
/// real environment).
pub fn generate(
    options: &DefinitionsOptions,
    env: impl Fn(&str) -> Option<String>,
) -> Result<serde_json::Value, DefinitionsError> {
    let mut errors = Vec::new();
    let mut hashes: HashMap<&str, PasswordHash> = HashMap::new();
    for c in contract::SERVICES {
        let (source, password) = match &options.password_dir {
            Some(dir) => {
                let file = dir.join(c.service);
                (
                    file.display().to_string(),
                    std::fs::read_to_string(&file).map_err(|e| e.to_string()),
                )
            }
            None => {
                let var = format!("AMQP_PASSWORD_{}", c.service.to_uppercase());
                let value = env(&var).ok_or_else(|| "not set".to_owned());
                (var, value)
            }
        };
        match password.map(|p| p.trim_end_matches(['\n', '\r']).to_owned()) {
            Ok(p) if p.len() >= 12 => {
                hashes.insert(c.service, PasswordHash::new(&p));
            }
            Ok(_) => errors.push(format!(
                "{source}: a broker password needs 12 characters or more"
            )),
            Err(e) => errors.push(format!("{source}: {e}")),
        }
    }
    let admin_password = match &options.admin_password_file {
        Some(file) => match std::fs::read_to_string(file) {
            Ok(p) => Some(p.trim_end_matches(['\n', '\r']).to_owned()),
            Err(e) => {
                errors.push(format!("{}: {e}", file.display()));
                None
            }
        },
        None => env("RABBITMQ_ADMIN_PASSWORD"),
    };
    if admin_password.as_ref().is_some_and(|p| p.len() < 12) {
        errors.push("the operator account's password needs 12 characters or more".to_owned());
    }
    if options.vhost.is_empty() {
        errors.push("--vhost must not be empty".to_owned());
    }
    if !errors.is_empty() {
        return Err(DefinitionsError(errors));
    }
    let admin = admin_password.map(|p| Admin {
        name: options.admin_user.clone(),
        password: PasswordHash::new(&p),
    });
    Ok(definitions::build(
        &options.vhost,
        &Topology::new(options.queue_prefix.clone()),
        |s| hashes[s].clone(),
        admin.as_ref(),
    ))
}

/// Runs the subcommand with `args` (without the program name and the subcommand); returns the
/// exit code: 0, 2 for bad options or passwords, 1 when the file cannot be written.
pub fn main(args: impl IntoIterator<Item = String>) -> std::process::ExitCode {
    let options = match DefinitionsOptions::try_parse_from(
        std::iter::once("stack broker-definitions".to_owned()).chain(args),
    ) {
        Ok(o) => o,
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let json = match generate(&options, |k| {
        std::env::var(k).ok().filter(|v| !v.is_empty())
    }) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("stack broker-definitions: {e} (see --help)");
            return std::process::ExitCode::from(2);
        }
    };
    let text = match serde_json::to_string_pretty(&json) {
        Ok(t) => t + "\n",
        Err(e) => {
            eprintln!("stack broker-definitions: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let written = match &options.out {
        Some(path) => crate::write_private(path, &text).map_err(|e| e.to_string()),
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string()),
    };
    match written {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stack broker-definitions: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> DefinitionsOptions {
        DefinitionsOptions::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn passwords_come_from_files_or_the_environment_and_only_hashes_leave() {
        let dir = tempfile::tempdir().unwrap();
        for c in contract::SERVICES {
            std::fs::write(
                dir.path().join(c.service),
                format!("{}-password-1\n", c.service),
            )
            .unwrap();
        }
        let dir_arg = dir.path().display().to_string();
        let json = generate(&options(&["--password-dir", &dir_arg]), |_| None).unwrap();
        let text = json.to_string();
        assert!(!text.contains("password-1"), "{text}");
        let users = json["users"].as_array().unwrap();
        assert_eq!(
            users.len(),
            contract::SERVICES.len(),
            "no operator account asked for"
        );
        let orders = users.iter().find(|u| u["name"] == "orders").unwrap();
        assert!(
            PasswordHash::from_stored(orders["password_hash"].as_str().unwrap())
                .verifies("orders-password-1")
        );
        assert_eq!(json["vhosts"][0]["name"], "vantage");

        let env = |k: &str| match k {
            "RABBITMQ_ADMIN_PASSWORD" => Some("operator-password".to_owned()),
            k if k.starts_with("AMQP_PASSWORD_") => Some(format!("{k}-value")),
            _ => None,
        };
        let json = generate(&options(&["--vhost", "shop", "--queue-prefix", "x."]), env).unwrap();
        let users = json["users"].as_array().unwrap();
        assert!(users.iter().any(|u| u["name"] == "x.payment"));
        let admin = users.last().unwrap();
        assert_eq!(admin["name"], "vantage-admin");
        assert_eq!(admin["tags"], serde_json::json!(["administrator"]));
    }

    #[test]
    fn every_missing_or_short_password_is_named() {
        let env = |k: &str| (k == "AMQP_PASSWORD_CART").then(|| "short".to_owned());
        let err = generate(&options(&[]), env).unwrap_err();
        assert_eq!(err.0.len(), contract::SERVICES.len(), "{err}");
        assert!(
            err.to_string().contains("AMQP_PASSWORD_ORDERS: not set"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("AMQP_PASSWORD_CART: a broker password needs 12"),
            "{err}"
        );
        assert!(
            !err.to_string().contains("short"),
            "never repeats a password: {err}"
        );
    }
}
