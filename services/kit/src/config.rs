//! Configuration from the environment, read through [`Env`] so tests pass a `HashMap`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// A source of configuration strings.
pub trait Env {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl Env for HashMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).map(|v| (*v).to_owned())
    }
}

/// Every invalid variable, reported at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.0.join("; "))
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses variables and collects every failure instead of stopping at the first.
pub struct EnvParser<'a> {
    env: &'a dyn Env,
    errors: Vec<String>,
}

impl<'a> EnvParser<'a> {
    pub fn new(env: &'a dyn Env) -> Self {
        Self {
            env,
            errors: Vec::new(),
        }
    }

    /// `key` parsed as `T`, or `default` when unset.
    pub fn parse<T: FromStr>(&mut self, key: &str, default: T) -> T
    where
        T::Err: fmt::Display,
    {
        match self.env.get(key) {
            None => default,
            Some(raw) => match raw.trim().parse() {
                Ok(v) => v,
                Err(e) => {
                    self.errors.push(format!("{key}={raw:?}: {e}"));
                    default
                }
            },
        }
    }

    /// A fraction in `0..=1`.
    pub fn rate(&mut self, key: &str) -> f64 {
        let v: f64 = self.parse(key, 0.0);
        if !(0.0..=1.0).contains(&v) {
            self.errors
                .push(format!("{key}={v}: must be between 0 and 1"));
            return 0.0;
        }
        v
    }

    /// `key` as a string, or `default`.
    pub fn string(&mut self, key: &str, default: &str) -> String {
        self.env.get(key).unwrap_or_else(|| default.to_owned())
    }

    /// `key` as a string when set.
    pub fn optional(&mut self, key: &str) -> Option<String> {
        self.env.get(key)
    }

    /// Records a failure found by the caller.
    pub fn error(&mut self, message: String) {
        self.errors.push(message);
    }

    pub fn finish(self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// What every service reads. Its `Debug` hides the broker URL's credentials.
#[derive(Clone)]
pub struct BaseConfig {
    /// `LISTEN_ADDR`, default `127.0.0.1:<default port>`. Services trust gateway headers, so they
    /// bind loopback.
    pub listen_addr: SocketAddr,
    /// `DATABASE_PATH`, default `data/<service>.db`; the parent directory is created.
    pub database_path: PathBuf,
    /// `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`. Never logged.
    pub amqp_url: String,
    /// `SHOP_QUEUE_PREFIX`, default empty: prepended to every exchange and queue name.
    pub queue_prefix: String,
}

impl fmt::Debug for BaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BaseConfig")
            .field("listen_addr", &self.listen_addr)
            .field("database_path", &self.database_path)
            .field("amqp_url", &messaging::redact_url(&self.amqp_url))
            .field("queue_prefix", &self.queue_prefix)
            .finish()
    }
}

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

impl BaseConfig {
    /// Reads the shared variables; service-specific ones go through the same `parser`.
    pub fn parse(p: &mut EnvParser<'_>, service: &str, default_port: u16) -> Self {
        Self {
            listen_addr: p.parse(
                "LISTEN_ADDR",
                SocketAddr::from(([127, 0, 0, 1], default_port)),
            ),
            database_path: PathBuf::from(p.string("DATABASE_PATH", &format!("data/{service}.db"))),
            amqp_url: p.string("AMQP_URL", DEFAULT_AMQP_URL),
            queue_prefix: p.string("SHOP_QUEUE_PREFIX", ""),
        }
    }

    /// Only the shared variables.
    pub fn from_env(env: &dyn Env, service: &str, default_port: u16) -> Result<Self, ConfigErrors> {
        let mut p = EnvParser::new(env);
        let c = Self::parse(&mut p, service, default_port);
        p.finish().map(|()| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_every_error_at_once() {
        let env: HashMap<&str, &str> = HashMap::new();
        let c = BaseConfig::from_env(&env, "orders", 7004).unwrap();
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:7004");
        assert_eq!(c.database_path, PathBuf::from("data/orders.db"));
        assert_eq!(c.queue_prefix, "");
        assert!(format!("{c:?}").contains("amqp://***@127.0.0.1"), "{c:?}");

        let env: HashMap<&str, &str> = [("LISTEN_ADDR", "nope"), ("X_RATE", "2")]
            .into_iter()
            .collect();
        let mut p = EnvParser::new(&env);
        let _ = BaseConfig::parse(&mut p, "orders", 7004);
        let _ = p.rate("X_RATE");
        let errors = p.finish().unwrap_err();
        assert_eq!(errors.0.len(), 2, "{errors}");
        assert!(errors.0[0].starts_with("LISTEN_ADDR"));
        assert!(errors.0[1].starts_with("X_RATE"));
    }
}
