//! SPIFFE IDs (`spiffe://<trust-domain>/<path>`) and the template that maps workload names to
//! them.

use std::fmt;
use std::str::FromStr;

/// The default trust domain of a Vantage deployment.
pub const DEFAULT_TRUST_DOMAIN: &str = "vantage.local";

/// The default workload → SPIFFE ID template: `spiffe://{trust_domain}/{workload}`. In
/// Kubernetes with csi-driver-spiffe use `spiffe://{trust_domain}/ns/vantage/sa/{workload}`.
pub const DEFAULT_ID_TEMPLATE: &str = "spiffe://{trust_domain}/{workload}";

/// Why a string is not a SPIFFE ID, trust domain or ID template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("{0:?} does not start with spiffe://")]
    Scheme(String),
    #[error("trust domain {0:?} must be 1..255 characters of a-z, 0-9, '.', '-', '_'")]
    TrustDomain(String),
    #[error("{0:?} has no workload path (spiffe://<trust-domain>/<path>)")]
    NoPath(String),
    #[error("path of {0:?} must be segments of A-Z, a-z, 0-9, '.', '-', '_' (no empty, '.' or '..' segment, no trailing '/')")]
    Path(String),
    #[error("template {0:?} must start with spiffe:// and contain {{workload}} exactly once")]
    Template(String),
    #[error("workload name {0:?} must be a non-empty path segment")]
    Workload(String),
}

// === impl TrustDomain ===

/// A SPIFFE trust domain name (`vantage.local`): lower-case letters, digits, `.`, `-`, `_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// The trust domain's name, without `spiffe://`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    /// [`DEFAULT_TRUST_DOMAIN`].
    fn default() -> Self {
        TrustDomain(DEFAULT_TRUST_DOMAIN.to_owned())
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 255
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if ok {
            Ok(TrustDomain(s.to_owned()))
        } else {
            Err(SpiffeIdError::TrustDomain(s.to_owned()))
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl SpiffeId ===

/// A workload's SPIFFE ID: `spiffe://<trust-domain>/<path>`, as in the URI SAN of its X.509
/// SVID. Parsed strictly (the SPIFFE ID standard): no query, fragment, port or user info, and a
/// non-empty path.
///
/// ```
/// let id: identity::SpiffeId = "spiffe://vantage.local/orders".parse().unwrap();
/// assert_eq!(id.trust_domain().as_str(), "vantage.local");
/// assert_eq!(id.path(), "/orders");
/// assert_eq!(id.to_string(), "spiffe://vantage.local/orders");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Starts with `/`.
    path: String,
    /// The whole ID, formatted once (it is compared and printed per request).
    full: String,
}

impl SpiffeId {
    /// The ID `spiffe://<trust_domain><path>`; `path` starts with `/`.
    pub fn new(trust_domain: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        format!("spiffe://{trust_domain}{path}").parse()
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, starting with `/` (`/orders`, `/ns/vantage/sa/orders`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_owned()))?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let trust_domain: TrustDomain = td.parse()?;
        if path.is_empty() || path == "/" {
            return Err(SpiffeIdError::NoPath(s.to_owned()));
        }
        let segments_ok = path[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
        if !segments_ok {
            return Err(SpiffeIdError::Path(s.to_owned()));
        }
        Ok(SpiffeId {
            trust_domain,
            path: path.to_owned(),
            full: s.to_owned(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

// === impl IdTemplate ===

/// Maps workload names (`orders`) to SPIFFE IDs and back, in one trust domain.
///
/// The template (env `SPIFFE_ID_TEMPLATE`, default [`DEFAULT_ID_TEMPLATE`]) may use
/// `{trust_domain}` and must use `{workload}` exactly once. Authorization policies name
/// workloads; the template turns them into the IDs the certificates carry.
///
/// ```
/// use identity::{IdTemplate, TrustDomain};
///
/// let t = IdTemplate::new("spiffe://{trust_domain}/ns/vantage/sa/{workload}", &TrustDomain::default()).unwrap();
/// let id = t.id_of("cart").unwrap();
/// assert_eq!(id.as_str(), "spiffe://vantage.local/ns/vantage/sa/cart");
/// assert_eq!(t.workload_of(&id), Some("cart"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdTemplate {
    /// The template with `{trust_domain}` already filled in.
    prefix: String,
    suffix: String,
    trust_domain: TrustDomain,
}

impl IdTemplate {
    /// `template` resolved in `trust_domain`.
    pub fn new(template: &str, trust_domain: &TrustDomain) -> Result<Self, SpiffeIdError> {
        let filled = template.replace("{trust_domain}", trust_domain.as_str());
        let bad = || SpiffeIdError::Template(template.to_owned());
        if !filled.starts_with("spiffe://") || filled.matches("{workload}").count() != 1 {
            return Err(bad());
        }
        let (prefix, suffix) = filled.split_once("{workload}").ok_or_else(bad)?;
        let t = IdTemplate {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
            trust_domain: trust_domain.clone(),
        };
        // A template whose IDs would not parse, or would leave the trust domain, is rejected now.
        match t.id_of("workload") {
            Ok(id) if id.trust_domain() == trust_domain => Ok(t),
            _ => Err(bad()),
        }
    }

    /// [`DEFAULT_ID_TEMPLATE`] in `trust_domain`.
    pub fn default_in(trust_domain: &TrustDomain) -> Self {
        IdTemplate::new(DEFAULT_ID_TEMPLATE, trust_domain).expect("the default template is valid")
    }

    /// The trust domain the template was resolved in.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The SPIFFE ID of `workload`.
    pub fn id_of(&self, workload: &str) -> Result<SpiffeId, SpiffeIdError> {
        if workload.is_empty() || workload.contains('/') {
            return Err(SpiffeIdError::Workload(workload.to_owned()));
        }
        format!("{}{workload}{}", self.prefix, self.suffix).parse()
    }

    /// The workload `id` names under this template, if it matches it.
    pub fn workload_of<'a>(&self, id: &'a SpiffeId) -> Option<&'a str> {
        let w = id
            .as_str()
            .strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())?;
        (!w.is_empty() && !w.contains('/')).then_some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_valid_ids() {
        for s in [
            "spiffe://vantage.local/orders",
            "spiffe://cluster.local/ns/vantage/sa/cart",
            "spiffe://a-b_c.1/x.y-z_9",
        ] {
            let id: SpiffeId = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
        }
        let id: SpiffeId = "spiffe://td/ns/x".parse().unwrap();
        assert_eq!((id.trust_domain().as_str(), id.path()), ("td", "/ns/x"));
    }

    #[test]
    fn rejects_what_the_standard_rejects() {
        for s in [
            "http://vantage.local/orders",
            "SPIFFE://vantage.local/orders",
            "spiffe://Vantage.local/orders",
            "spiffe://vantage.local",
            "spiffe://vantage.local/",
            "spiffe:///orders",
            "spiffe://vantage.local:443/orders",
            "spiffe://user@vantage.local/orders",
            "spiffe://vantage.local/orders/",
            "spiffe://vantage.local//orders",
            "spiffe://vantage.local/a/../b",
            "spiffe://vantage.local/a?x=1",
            "spiffe://vantage.local/a#f",
            "spiffe://vantage.local/a b",
        ] {
            assert!(s.parse::<SpiffeId>().is_err(), "{s} should be rejected");
        }
        assert!(matches!(
            "x".parse::<SpiffeId>(),
            Err(SpiffeIdError::Scheme(_))
        ));
        assert!("".parse::<TrustDomain>().is_err());
        assert!("a".repeat(256).parse::<TrustDomain>().is_err());
    }

    #[test]
    fn templates_map_workloads_both_ways() {
        let td: TrustDomain = "cluster.local".parse().unwrap();
        let t = IdTemplate::default_in(&td);
        let id = t.id_of("orders").unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/orders");
        assert_eq!(t.workload_of(&id), Some("orders"));
        let other: SpiffeId = "spiffe://cluster.local/ns/x/sa/orders".parse().unwrap();
        assert_eq!(t.workload_of(&other), None);
        let elsewhere: SpiffeId = "spiffe://evil.local/orders".parse().unwrap();
        assert_eq!(t.workload_of(&elsewhere), None);

        let k8s = IdTemplate::new("spiffe://{trust_domain}/ns/vantage/sa/{workload}", &td).unwrap();
        assert_eq!(k8s.workload_of(&other), None);
        let sa: SpiffeId = "spiffe://cluster.local/ns/vantage/sa/cart".parse().unwrap();
        assert_eq!(k8s.workload_of(&sa), Some("cart"));
        assert!(t.id_of("a/b").is_err());
        assert!(t.id_of("").is_err());
    }

    #[test]
    fn bad_templates_are_rejected() {
        let td = TrustDomain::default();
        for t in [
            "spiffe://{trust_domain}/orders",
            "spiffe://{trust_domain}/{workload}/{workload}",
            "https://{trust_domain}/{workload}",
            "spiffe://other.domain/{workload}",
            "spiffe://{trust_domain}/{workload}?x",
        ] {
            assert!(IdTemplate::new(t, &td).is_err(), "{t}");
        }
    }
}
