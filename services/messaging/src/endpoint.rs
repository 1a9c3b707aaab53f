//! Where the broker is and who a service is there: `AMQP_URL`, `AMQP_PASSWORD_FILE` and
//! `AMQP_CA_FILE`, checked once at start-up and read again at every connect (so a rotated
//! password or CA bundle is picked up without a restart).
//!
//! # How to use
//!
//! ```
//! use std::collections::HashMap;
//! use messaging::BrokerEndpoint;
//! use observability::env::EnvParser;
//!
//! let env = HashMap::from([("AMQP_URL", "amqp://orders:s3cret@broker:5672/vantage")]);
//! let mut p = EnvParser::new(&env);
//! let endpoint = BrokerEndpoint::parse(&mut p, "orders");
//! p.finish().unwrap();
//! assert_eq!(endpoint.user(), "orders");
//! assert!(!format!("{endpoint:?}").contains("s3cret"));
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPScheme, AMQPUri, AMQPUserInfo};
use observability::env::EnvParser;
use observability::redact::redact_url;

use crate::MessagingError;

/// The broker a service uses when `AMQP_URL` is unset: the local one, vhost `vantage`, as the
/// service's own user (the password comes from `AMQP_PASSWORD_FILE`).
pub const DEFAULT_URL: &str = "amqp://127.0.0.1:5672/vantage";

/// RabbitMQ's built-in account, which no service may use.
const GUEST: &str = "guest";

/// How to reach the broker and as whom. Inert data, cheap to clone; its `Debug` never shows
/// the password.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerEndpoint {
    /// `amqp(s)://user[:password]@host[:port]/vhost[?frame_max=…]`.
    url: String,
    /// Holds the password when the URL has none; read at every connect.
    password_file: Option<PathBuf>,
    /// PEM bundle of the CAs the broker's certificate must chain to (`amqps://` only); read at
    /// every connect. Only these CAs are trusted, never the system's.
    ca_file: Option<PathBuf>,
}

impl fmt::Debug for BrokerEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerEndpoint")
            .field("url", &redact_url(&self.url))
            .field("user", &self.user())
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl BrokerEndpoint {
    /// Reads `AMQP_URL` (default [`DEFAULT_URL`]), `AMQP_PASSWORD_FILE` and `AMQP_CA_FILE`.
    ///
    /// A URL without a user gets `default_user` (the service's broker user, see
    /// [`Topology::user`](crate::Topology::user)). Recorded as errors: a URL that is not
    /// `amqp://` or `amqps://`, the user `guest`, a password in both the URL and a file, an
    /// unreadable or empty password file, `amqps://` without a CA bundle, a CA bundle for a
    /// plaintext URL, and a CA file without a PEM certificate. The URL is never repeated in an
    /// error (it may hold a password). No password at all fails at connect, naming
    /// `AMQP_PASSWORD_FILE`.
    pub fn parse(p: &mut EnvParser<'_>, default_user: &str) -> Self {
        let raw = p.string("AMQP_URL", DEFAULT_URL);
        let password_file = p.var("AMQP_PASSWORD_FILE").map(PathBuf::from);
        let ca_file = p.var("AMQP_CA_FILE").map(PathBuf::from);
        let mut url = match url::Url::parse(&raw) {
            Ok(u) if matches!(u.scheme(), "amqp" | "amqps") && u.has_host() => Some(u),
            Ok(_) => {
                p.error("AMQP_URL", "must be amqp://… or amqps://… with a host");
                None
            }
            Err(e) => {
                p.error("AMQP_URL", format!("not a URL ({e})"));
                None
            }
        };
        if let Some(u) = url.as_mut() {
            if u.username().is_empty() && u.set_username(default_user).is_err() {
                p.error("AMQP_URL", "cannot carry a user name");
            }
            if percent_decoded(u.username()) == GUEST {
                p.error(
                    "AMQP_URL",
                    "uses RabbitMQ's `guest` account; every service has its own broker user \
                     (see `stack broker-definitions`)",
                );
            }
            // No password at all is not an error here (a client certificate may authenticate
            // one day); connecting says what is missing.
            if u.password().is_some() && password_file.is_some() {
                p.error(
                    "AMQP_PASSWORD_FILE",
                    "AMQP_URL already holds a password; set only one of them",
                );
            }
            let tls = u.scheme() == "amqps";
            match (&ca_file, tls) {
                (None, true) => p.error(
                    "AMQP_CA_FILE",
                    "not set: amqps:// needs the CA bundle that signed the broker's certificate",
                ),
                (Some(_), false) => p.error(
                    "AMQP_CA_FILE",
                    "set, but AMQP_URL is plaintext amqp://; use amqps:// (port 5671)",
                ),
                _ => {}
            }
        }
        if let Some(file) = &password_file {
            if let Err(e) = read_password(file) {
                p.error("AMQP_PASSWORD_FILE", e.to_string());
            }
        }
        if let Some(file) = &ca_file {
            if let Err(e) = read_ca_bundle(file) {
                p.error("AMQP_CA_FILE", e.to_string());
            }
        }
        Self {
            url: url.map(String::from).unwrap_or(raw),
            password_file,
            ca_file,
        }
    }

    /// A URL used as it is (tests, tools): it names its user and password; no files.
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            password_file: None,
            ca_file: None,
        }
    }

    /// The same, with the password read from `path` at every connect.
    pub fn with_password_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.password_file = Some(path.into());
        self
    }

    /// The same, trusting only the CAs in the PEM bundle at `path` for `amqps://`.
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// The broker user this endpoint connects as (empty when the URL does not parse).
    pub fn user(&self) -> String {
        url::Url::parse(&self.url)
            .map(|u| percent_decoded(u.username()))
            .unwrap_or_default()
    }

    /// True for `amqps://`.
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("amqps://")
    }

    /// The URL without its user information, for messages.
    pub fn shown(&self) -> String {
        redact_url(&self.url)
    }

    /// What lapin connects with: the URI (password filled in from the file) and the TLS
    /// settings (the CA bundle read now).
    pub(crate) fn resolve(&self) -> Result<(AMQPUri, OwnedTLSConfig), MessagingError> {
        let invalid = |why: &str| MessagingError::InvalidUrl(why.to_owned());
        let parsed = url::Url::parse(&self.url).map_err(|e| invalid(&e.to_string()))?;
        let mut uri: AMQPUri = self
            .url
            .parse()
            .map_err(|e: String| MessagingError::InvalidUrl(redact_url(&e)))?;
        // lapin takes the host from `Url::domain`, which is empty for an IP address, and then
        // falls back to `localhost`: use the host as written.
        uri.authority.host = match parsed.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err(invalid("no host")),
        };
        let username = percent_decoded(parsed.username());
        if username.is_empty() {
            return Err(invalid("no broker user"));
        }
        let password = match (&self.password_file, parsed.password()) {
            (Some(file), _) => read_password(file)?,
            (None, Some(p)) => percent_decoded(p),
            (None, None) => {
                return Err(invalid(&format!(
                    "no password for the broker user {username}: set AMQP_PASSWORD_FILE or put \
                     it in AMQP_URL"
                )))
            }
        };
        uri.authority.userinfo = AMQPUserInfo { username, password };
        let mut tls = OwnedTLSConfig::default();
        if uri.scheme == AMQPScheme::AMQPS {
            let Some(file) = &self.ca_file else {
                return Err(MessagingError::Tls(
                    "amqps:// needs a CA bundle (AMQP_CA_FILE); the system roots are not trusted"
                        .to_owned(),
                ));
            };
            tls.cert_chain = Some(read_ca_bundle(file)?);
        }
        Ok((uri, tls))
    }
}

/// `s` with its `%XX` escapes decoded (URL user information; invalid UTF-8 becomes U+FFFD).
fn percent_decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The password in `file`, without its trailing line break.
fn read_password(file: &Path) -> Result<String, MessagingError> {
    let text = std::fs::read_to_string(file).map_err(|e| MessagingError::Credentials {
        file: file.to_owned(),
        reason: e.to_string(),
    })?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(MessagingError::Credentials {
            file: file.to_owned(),
            reason: "empty".to_owned(),
        });
    }
    Ok(password.to_owned())
}

/// The PEM text of `file`, once it is known to hold at least one certificate.
fn read_ca_bundle(file: &Path) -> Result<String, MessagingError> {
    let bad = |reason: String| MessagingError::Credentials {
        file: file.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(file).map_err(|e| bad(e.to_string()))?;
    let certs = pem_certificates(&text);
    if certs == 0 {
        return Err(bad(
            "no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned()
        ));
    }
    Ok(text)
}

/// How many complete `CERTIFICATE` blocks `pem` holds.
fn pem_certificates(pem: &str) -> usize {
    let mut count = 0;
    let mut open = false;
    for line in pem.lines().map(str::trim) {
        match line {
            "-----BEGIN CERTIFICATE-----" => open = true,
            "-----END CERTIFICATE-----" if open => {
                count += 1;
                open = false;
            }
            _ => {}
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parsed(env: &[(&str, &str)]) -> (BrokerEndpoint, Vec<String>) {
        let env: HashMap<&str, &str> = env.iter().copied().collect();
        let mut p = EnvParser::new(&env);
        let e = BrokerEndpoint::parse(&mut p, "t.orders");
        let errors = match p.finish() {
            Ok(()) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        };
        (e, errors)
    }

    #[test]
    fn the_default_is_the_local_vantage_vhost_as_the_services_own_user() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let (e, errors) = parsed(&[("AMQP_PASSWORD_FILE", pw.to_str().unwrap())]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(e.user(), "t.orders");
        assert_eq!(e.url, "amqp://t.orders@127.0.0.1:5672/vantage");
        let (uri, tls) = e.resolve().unwrap();
        assert_eq!(uri.authority.userinfo.password, "s3cret");
        assert_eq!(uri.authority.host, "127.0.0.1", "not lapin's `localhost`");
        assert_eq!(uri.vhost, "vantage");
        assert_eq!(tls.cert_chain, None);
        // Rotation: the file is read again at the next connect.
        std::fs::write(&pw, "n3w").unwrap();
        assert_eq!(e.resolve().unwrap().0.authority.userinfo.password, "n3w");
    }

    #[test]
    fn every_mistake_is_reported_and_no_secret_is_repeated() {
        let (_, errors) = parsed(&[("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("`guest`"), "{errors:?}");

        let (_, errors) = parsed(&[
            ("AMQP_URL", "amqps://orders:hunter2@broker/vantage"),
            ("AMQP_PASSWORD_FILE", "/nonexistent/pw"),
        ]);
        let all = errors.join("\n");
        assert!(all.contains("already holds a password"), "{all}");
        assert!(all.contains("/nonexistent/pw"), "{all}");
        assert!(all.contains("AMQP_CA_FILE: not set"), "{all}");
        assert!(!all.contains("hunter2"), "{all}");

        // No password: accepted here, refused at connect with what to set.
        let (e, errors) = parsed(&[("AMQP_URL", "amqp://127.0.0.1/vantage")]);
        assert!(errors.is_empty(), "{errors:?}");
        let err = e.resolve().unwrap_err().to_string();
        assert!(
            err.contains("no password for the broker user t.orders"),
            "{err}"
        );
        assert!(err.contains("AMQP_PASSWORD_FILE"), "{err}");

        let (_, errors) = parsed(&[("AMQP_URL", "http://o:p@x/")]);
        assert!(
            errors[0].starts_with("AMQP_URL: must be amqp"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_ca_bundle_must_hold_a_certificate_and_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "not a certificate").unwrap();
        let ca_path = ca.to_str().unwrap();
        let (_, errors) = parsed(&[
            ("AMQP_URL", "amqps://o:p@broker/vantage"),
            ("AMQP_CA_FILE", ca_path),
        ]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains(&format!("{ca_path}: no PEM certificate")),
            "{errors:?}"
        );
        let (_, errors) = parsed(&[
            ("AMQP_URL", "amqp://o:p@broker/vantage"),
            ("AMQP_CA_FILE", ca_path),
        ]);
        assert!(errors.iter().any(|e| e.contains("plaintext")), "{errors:?}");
        assert_eq!(
            pem_certificates("-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n"),
            1
        );
    }

    #[test]
    fn debug_and_shown_hide_the_password() {
        let e = BrokerEndpoint::url("amqp://app:s3cret@broker:5672/%2f");
        for shown in [format!("{e:?}"), e.shown()] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        assert_eq!(e.user(), "app");
        let (uri, _) = e.resolve().unwrap();
        assert_eq!(uri.vhost, "/");
        assert_eq!(uri.authority.userinfo.password, "s3cret");
    }
}
