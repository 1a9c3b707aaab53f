//! The broker's side of the contract: a RabbitMQ definitions file (vhost, one user per
//! service, permissions, topic permissions, exchanges, queues with their arguments, bindings)
//! derived from [`contract::SERVICES`] and the [`Topology`].
//!
//! Compose (`load_definitions`), Kubernetes (the Secret the RabbitmqCluster loads) and the
//! local `stack` (`rabbitmqctl import_definitions` or the management API) all import what
//! `stack broker-definitions` writes from here, so the broker enforces exactly the contract:
//!
//! - **configure** and **read**: only the service's own queue and dead-letter queue (nothing
//!   for a service without a queue); configure also its retry exchange and queues
//!   ([`crate::retry`]). Services declare nothing on a provisioned broker; they check that their
//!   queues exist (which needs no permission) and consume from their queue.
//! - **write**: the events exchange for a service that publishes, and its own retry exchange
//!   for a service with a queue. Binding a queue needs read on the exchange, which no service
//!   has: the bindings are the contract's.
//! - **topic permissions** on the events exchange: write only the routing keys the service
//!   produces (`^(order\.paid|order\.cancelled)$` for orders), read nothing.
//!
//! Passwords are hashed here (RabbitMQ's salted SHA-256, `rabbit_password_hashing_sha256`);
//! the file holds no password. No user has a tag, so none may set another user's `user_id`
//! (the `impersonator` tag), except the optional operator account (`administrator`), which has
//! no permission in the vhost.
//!
//! # How to use
//!
//! ```
//! use messaging::definitions::{self, PasswordHash};
//! use messaging::Topology;
//!
//! let topology = Topology::default();
//! let json = definitions::build("vantage", &topology, |service| PasswordHash::new(&format!("pw-{service}")), None);
//! assert_eq!(json["vhosts"][0]["name"], "vantage");
//! let orders = definitions::grant(&topology, &messaging::contract::ORDERS);
//! assert_eq!(orders.topic_write, r"^(order\.paid|order\.cancelled)$");
//! assert_eq!(orders.read, r"^(orders|orders\.dlq)$");
//! ```

use base64::Engine as _;
use lapin::types::AMQPValue;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::contract::{self, Contract};
use crate::{Topology, DEFAULT_DELIVERY_LIMIT, RETRY_LEVELS};

/// A regular expression that matches nothing a client can name.
pub const NOTHING: &str = "^$";

/// What one service's broker user may do in the vhost, as RabbitMQ regular expressions.
///
/// A consumer may also configure its retry exchange and queues and write to its retry exchange
/// ([`crate::retry`]): it republishes its own failed deliveries there, and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub service: &'static str,
    /// The broker user: [`Topology::user`].
    pub user: String,
    /// Queues and exchanges it may declare and delete.
    pub configure: String,
    /// Exchanges it may publish to (and queues it may bind, which needs read on the exchange).
    pub write: String,
    /// Queues it may consume from.
    pub read: String,
    /// Routing keys it may publish to the events exchange.
    pub topic_write: String,
    /// Routing keys it may bind to on the events exchange.
    pub topic_read: String,
}

/// The grant of `service`, from its contract: what the module documentation says.
pub fn grant(topology: &Topology, service: &Contract) -> Grant {
    let name = service.service;
    let (configure, read) = if service.has_queue() {
        let own = [topology.queue(name), topology.dead_letter_queue(name)];
        let mut retries = vec![topology.retry_exchange(name)];
        retries.extend(topology.retry_queues(name));
        (one_of(own.iter().cloned().chain(retries)), one_of(own))
    } else {
        (NOTHING.to_owned(), NOTHING.to_owned())
    };
    let mut writable = Vec::new();
    if !service.produces.is_empty() {
        writable.push(topology.exchange());
    }
    if service.has_queue() {
        writable.push(topology.retry_exchange(name));
    }
    let write = if writable.is_empty() {
        NOTHING.to_owned()
    } else {
        one_of(writable)
    };
    let topic_write = if service.produces.is_empty() {
        NOTHING.to_owned()
    } else {
        one_of(service.produces.iter().map(|k| (*k).to_owned()))
    };
    Grant {
        service: service.service,
        user: topology.user(service.service),
        configure,
        write,
        read,
        topic_write,
        topic_read: NOTHING.to_owned(),
    }
}

/// The grants of every service of the contract, in its order.
pub fn grants(topology: &Topology) -> Vec<Grant> {
    contract::SERVICES
        .iter()
        .map(|c| grant(topology, c))
        .collect()
}

/// An anchored regular expression matching exactly `names`: `^x$` or `^(x|y)$`.
fn one_of(names: impl IntoIterator<Item = String>) -> String {
    let names: Vec<String> = names.into_iter().map(|n| escape(&n)).collect();
    match names.as_slice() {
        [one] => format!("^{one}$"),
        _ => format!("^({})$", names.join("|")),
    }
}

/// `name` with every regular-expression metacharacter escaped.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A password as RabbitMQ stores it: base64 of a 4-byte salt followed by
/// SHA-256(salt ‖ password). Its `Debug` shows nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash(..)")
    }
}

/// The `hashing_algorithm` of [`PasswordHash`].
pub const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";

impl PasswordHash {
    /// Hashes `password` with a fresh random salt.
    pub fn new(password: &str) -> Self {
        let mut salt = [0u8; 4];
        aws_lc_rs::rand::fill(&mut salt).expect("the system random generator works");
        Self::with_salt(password, salt)
    }

    /// Hashes `password` with `salt` (for tests that need a stable output).
    pub fn with_salt(password: &str, salt: [u8; 4]) -> Self {
        let mut input = salt.to_vec();
        input.extend_from_slice(password.as_bytes());
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
        let mut stored = salt.to_vec();
        stored.extend_from_slice(digest.as_ref());
        Self(base64::engine::general_purpose::STANDARD.encode(stored))
    }

    /// Whether this is the hash of `password`.
    pub fn verifies(&self, password: &str) -> bool {
        let Ok(stored) = base64::engine::general_purpose::STANDARD.decode(&self.0) else {
            return false;
        };
        let Ok(salt) = <[u8; 4]>::try_from(stored.get(..4).unwrap_or_default()) else {
            return false;
        };
        Self::with_salt(password, salt) == *self
    }

    /// A hash in its stored form (a definitions file's `password_hash`).
    pub fn from_stored(stored: &str) -> Self {
        Self(stored.to_owned())
    }

    /// The stored form, as it goes into `password_hash`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The operator's account: tag `administrator` (management UI and API, `rabbitmqctl` is not
/// needed), no permission in the vhost. A RabbitMQ that loads definitions at boot creates no
/// default user, so without one only `rabbitmqctl` on a node can administer it.
#[derive(Debug, Clone)]
pub struct Admin {
    pub name: String,
    pub password: PasswordHash,
}

/// The definitions file: `vhost`, the users of every service (their passwords from
/// `password_of(service)`), the optional `admin`, permissions, topic permissions, both
/// exchanges, every consumer's queue and dead-letter queue, and the bindings.
pub fn build(
    vhost: &str,
    topology: &Topology,
    password_of: impl Fn(&str) -> PasswordHash,
    admin: Option<&Admin>,
) -> Value {
    let grants = grants(topology);
    let mut users: Vec<Value> = grants
        .iter()
        .map(|g| user(&g.user, &password_of(g.service), &[]))
        .collect();
    if let Some(a) = admin {
        users.push(user(&a.name, &a.password, &["administrator"]));
    }
    let permissions: Vec<Value> = grants
        .iter()
        .map(|g| {
            json!({
                "user": g.user, "vhost": vhost,
                "configure": g.configure, "write": g.write, "read": g.read,
            })
        })
        .collect();
    let topic_permissions: Vec<Value> = grants
        .iter()
        .map(|g| {
            json!({
                "user": g.user, "vhost": vhost, "exchange": topology.exchange(),
                "write": g.topic_write, "read": g.topic_read,
            })
        })
        .collect();
    let exchange = |name: String, kind: &str| {
        json!({
            "name": name, "vhost": vhost, "type": kind,
            "durable": true, "auto_delete": false, "internal": false, "arguments": {},
        })
    };
    let mut exchanges = vec![
        exchange(topology.exchange(), "topic"),
        exchange(topology.dead_letter_exchange(), "direct"),
    ];
    let queue = |name: String, arguments: Map<String, Value>| {
        json!({
            "name": name, "vhost": vhost, "durable": true, "auto_delete": false,
            "arguments": arguments,
        })
    };
    let binding = |source: String, destination: String, key: &str| {
        json!({
            "source": source, "vhost": vhost, "destination": destination,
            "destination_type": "queue", "routing_key": key, "arguments": {},
        })
    };
    let mut queues = Vec::new();
    let mut bindings = Vec::new();
    for c in contract::consumers() {
        let dlq = topology.dead_letter_queue(c.service);
        let mut dlq_args = Map::new();
        dlq_args.insert("x-queue-type".into(), "quorum".into());
        queues.push(queue(dlq.clone(), dlq_args));
        bindings.push(binding(topology.dead_letter_exchange(), dlq, c.service));
        let args = topology
            .queue_arguments(c.service, DEFAULT_DELIVERY_LIMIT)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), json_of(&v)))
            .collect();
        queues.push(queue(topology.queue(c.service), args));
        let retry = topology.retry_exchange(c.service);
        exchanges.push(exchange(retry.clone(), "direct"));
        for level in 1..=RETRY_LEVELS {
            let args = topology
                .retry_queue_arguments(c.service)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), json_of(&v)))
                .collect();
            let q = topology.retry_queue(c.service, level);
            queues.push(queue(q.clone(), args));
            bindings.push(binding(retry.clone(), q, &level.to_string()));
        }
        for key in c.consumes {
            bindings.push(binding(topology.exchange(), topology.queue(c.service), key));
        }
    }
    json!({
        "vhosts": [{ "name": vhost }],
        "users": users,
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    })
}

fn user(name: &str, password: &PasswordHash, tags: &[&str]) -> Value {
    json!({
        "name": name,
        "password_hash": password.as_str(),
        "hashing_algorithm": HASHING_ALGORITHM,
        "tags": tags,
    })
}

/// A queue argument as JSON: RabbitMQ imports a JSON number as a long and a string as a
/// long string, the types the services declare with.
fn json_of(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::LongString(s) => Value::String(s.to_string()),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::ShortString(s) => Value::String(s.to_string()),
        other => panic!("queue argument {other:?} has no JSON form in the definitions"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::SagaEvent;

    #[test]
    fn a_password_hash_is_rabbitmqs_salted_sha256() {
        // RabbitMQ's own documented example: salt 908D C60A, password "test12".
        let h = PasswordHash::with_salt("test12", [0x90, 0x8D, 0xC6, 0x0A]);
        assert_eq!(
            h.as_str(),
            "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
        );
        assert!(h.verifies("test12"));
        assert!(!h.verifies("test13"));
        let a = PasswordHash::new("x");
        let b = PasswordHash::new("x");
        assert!(a.verifies("x") && b.verifies("x"));
        assert_ne!(a, b, "fresh salt each time");
        assert_eq!(format!("{a:?}"), "PasswordHash(..)");
    }

    #[test]
    fn regexes_are_anchored_and_escape_the_prefix() {
        let g = grant(&Topology::new("t-1.x+"), &contract::PAYMENT);
        assert_eq!(g.user, "t-1.x+payment");
        assert_eq!(
            g.configure,
            r"^(t-1\.x\+payment|t-1\.x\+payment\.dlq|t-1\.x\+payment\.retry|t-1\.x\+payment\.retry\.1|t-1\.x\+payment\.retry\.2|t-1\.x\+payment\.retry\.3|t-1\.x\+payment\.retry\.4|t-1\.x\+payment\.retry\.5)$"
        );
        assert_eq!(g.read, r"^(t-1\.x\+payment|t-1\.x\+payment\.dlq)$");
        assert_eq!(g.write, r"^(t-1\.x\+shop\.events|t-1\.x\+payment\.retry)$");
        assert_eq!(
            g.topic_write,
            r"^(payment\.succeeded|payment\.failed|payment\.refunded)$"
        );
        let cart = grant(&Topology::default(), &contract::CART);
        assert_eq!(
            (cart.configure.as_str(), cart.read.as_str()),
            (NOTHING, NOTHING)
        );
        let users = grant(&Topology::default(), &contract::USERS);
        assert_eq!(
            (users.write.as_str(), users.topic_write.as_str()),
            (NOTHING, NOTHING)
        );
    }

    /// Evaluates the generated definitions against the contract the way the broker would: a
    /// definitions file that drifts from `messaging::contract` fails here.
    #[test]
    fn the_definitions_grant_exactly_the_contract() {
        let t = Topology::new("p.");
        let admin = Admin {
            name: "ops".into(),
            password: PasswordHash::new("ops-pw"),
        };
        let defs = build(
            "vh",
            &t,
            |s| PasswordHash::new(&format!("{s}-pw")),
            Some(&admin),
        );
        let rx = |s: &str| regex::Regex::new(s).unwrap();
        let find = |section: &str, user: &str| -> Value {
            defs[section]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["user"] == user)
                .cloned()
                .unwrap_or_else(|| panic!("{section}: no entry for {user}"))
        };
        let queue_names: Vec<String> = defs["queues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            defs["users"].as_array().unwrap().len(),
            contract::SERVICES.len() + 1
        );
        for c in contract::SERVICES {
            let user = t.user(c.service);
            let u = defs["users"]
                .as_array()
                .unwrap()
                .iter()
                .find(|u| u["name"] == user.as_str())
                .unwrap();
            assert_eq!(u["tags"], json!([]), "{user}: no tag, so no impersonation");
            let pw = PasswordHash(u["password_hash"].as_str().unwrap().to_owned());
            assert!(pw.verifies(&format!("{}-pw", c.service)));
            let p = find("permissions", &user);
            let tp = find("topic_permissions", &user);
            assert_eq!(tp["exchange"], t.exchange());
            for key in SagaEvent::KEYS {
                assert_eq!(
                    rx(tp["write"].as_str().unwrap()).is_match(key),
                    c.publishes(key),
                    "{user} publishing {key}"
                );
                assert!(!rx(tp["read"].as_str().unwrap()).is_match(key));
            }
            let write = rx(p["write"].as_str().unwrap());
            assert_eq!(
                write.is_match(&t.exchange()),
                !c.produces.is_empty(),
                "{user}"
            );
            for other in contract::consumers() {
                assert_eq!(
                    write.is_match(&t.retry_exchange(other.service)),
                    other.service == c.service,
                    "{user} writes {}'s retries",
                    other.service
                );
            }
            for q in &queue_names {
                let own = *q == t.queue(c.service) || *q == t.dead_letter_queue(c.service);
                let own_retry = t.retry_queues(c.service).contains(q);
                assert_eq!(
                    rx(p["configure"].as_str().unwrap()).is_match(q),
                    own || own_retry,
                    "{user} configure {q}"
                );
                assert_eq!(
                    rx(p["read"].as_str().unwrap()).is_match(q),
                    own,
                    "{user} read {q}"
                );
                assert!(!write.is_match(q), "{user} writes {q}");
            }
            for x in [t.exchange(), t.dead_letter_exchange()] {
                assert!(
                    !rx(p["configure"].as_str().unwrap()).is_match(&x),
                    "{user} configures {x}"
                );
                assert!(
                    !rx(p["read"].as_str().unwrap()).is_match(&x),
                    "{user} binds to {x}"
                );
            }
        }
        let ops = defs["users"].as_array().unwrap().last().unwrap();
        assert_eq!(ops["tags"], json!(["administrator"]));
        assert!(defs["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["user"] != "ops"));

        // Queues and bindings: each consumer's, with the arguments the services declare.
        for c in contract::consumers() {
            let q = defs["queues"]
                .as_array()
                .unwrap()
                .iter()
                .find(|q| q["name"] == t.queue(c.service).as_str())
                .unwrap();
            assert_eq!(
                q["arguments"],
                json!({
                    "x-queue-type": "quorum",
                    "x-dead-letter-exchange": "p.shop.dlx",
                    "x-dead-letter-routing-key": c.service,
                    "x-delivery-limit": DEFAULT_DELIVERY_LIMIT,
                })
            );
            let mut keys: Vec<&str> = defs["bindings"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b["destination"] == t.queue(c.service).as_str())
                .map(|b| b["routing_key"].as_str().unwrap())
                .collect();
            keys.sort_unstable();
            let mut want = c.consumes.to_vec();
            want.sort_unstable();
            assert_eq!(keys, want, "{}", c.service);
        }
        assert_eq!(
            queue_names.len(),
            (2 + RETRY_LEVELS as usize) * contract::consumers().count()
        );
        // Retry queues dead-letter back to their consumer's queue, at least once.
        let q = defs["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == t.retry_queue("payment", 2).as_str())
            .unwrap();
        assert_eq!(
            q["arguments"],
            json!({
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": "p.payment",
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            })
        );
    }
}

#[cfg(test)]
mod docs {
    use super::*;

    /// A regular expression in a Markdown table cell: `|` escaped.
    fn cell(regex: &str) -> String {
        format!("`{}`", regex.replace('|', "\\|"))
    }

    /// docs/security.md shows the permissions the definitions grant: one row per service, the
    /// same as the grants (so the table cannot drift from the contract either).
    #[test]
    fn the_security_doc_shows_the_permissions_the_definitions_grant() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/security.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let t = Topology::default();
        for c in contract::SERVICES {
            let g = grant(&t, c);
            let consumes = if c.consumes.is_empty() {
                "—".to_owned()
            } else {
                c.consumes
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let row = format!(
                "| {} | {} | {} | {} | {} | {} |",
                c.service,
                cell(&g.configure),
                cell(&g.write),
                cell(&g.read),
                cell(&g.topic_write),
                consumes
            );
            assert!(doc.contains(&row), "docs/security.md lacks the row\n{row}");
        }
    }
}
