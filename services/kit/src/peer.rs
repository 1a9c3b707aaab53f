//! Who is calling a service: the identity mode (`IDENTITY_MODE`), where the service's own SVID
//! is, which sidecars are trusted in a mesh, and the [`Caller`] of each request.
//!
//! Three modes, one authorization policy ([`crate::authz`]) over them:
//!
//! - `mtls` (default): the service terminates mutual TLS itself with its SVID; the caller is
//!   the SPIFFE ID of the client certificate, verified in the handshake. Plain HTTP on the API
//!   port is refused.
//! - `linkerd`: the Linkerd proxy in the pod terminates mTLS and forwards plain HTTP with
//!   `l5d-client-id`; the caller is taken from that header, only on connections from a trusted
//!   sidecar (`MESH_TRUSTED_SIDECARS`, default the pod itself: its own address, and loopback).
//! - `istio`: the same with Envoy's `x-forwarded-client-cert` (its last element's `URI=`).
//!
//! A connection from anywhere else in a mesh mode has no caller at all: its headers are ignored,
//! and the policy refuses it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use identity::tls::PeerTls;
use identity::{IdTemplate, SpiffeId, SvidSource, TrustDomain};
use ipnet::IpNet;
use observability::env::EnvParser;

/// `IDENTITY_MODE`.
pub const IDENTITY_MODE_ENV: &str = "IDENTITY_MODE";
/// `MESH_TRUSTED_SIDECARS`: comma-separated addresses or networks (`127.0.0.1`, `10.0.0.0/8`),
/// and [`OWN_ADDRESS`].
pub const MESH_TRUSTED_SIDECARS_ENV: &str = "MESH_TRUSTED_SIDECARS";
/// The entry of `MESH_TRUSTED_SIDECARS` that trusts a connection whose peer address is the
/// address it was accepted on: one opened from inside the pod to the pod's own IP, which is how
/// the Linkerd proxy (2.11 and later) forwards requests to the application. No packet from
/// outside the pod carries the pod's own address as its source (the kernel drops it).
pub const OWN_ADDRESS: &str = "pod";
/// Linkerd's header naming the client's TLS identity.
pub const L5D_CLIENT_ID: &str = "l5d-client-id";
/// Envoy's (Istio's) header describing the client certificate.
pub const XFCC: &str = "x-forwarded-client-cert";

/// How a service learns who calls it (`IDENTITY_MODE`, default `mtls`). A closed set: there
/// is no plain mode, so a service never trusts a caller it cannot identify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityMode {
    /// Mutual TLS with the service's own SVID (`SVID_DIR`, the `SVID_*_FILE`s or
    /// `SPIFFE_ENDPOINT_SOCKET` required).
    Mtls,
    /// Behind a Linkerd proxy: `l5d-client-id` from a trusted sidecar.
    Linkerd,
    /// Behind Envoy (Istio sidecar or waypoint): `x-forwarded-client-cert` from a trusted sidecar.
    Istio,
}

impl IdentityMode {
    /// The variable's value: `mtls`, `linkerd`, `istio`.
    pub const fn as_str(self) -> &'static str {
        match self {
            IdentityMode::Mtls => "mtls",
            IdentityMode::Linkerd => "linkerd",
            IdentityMode::Istio => "istio",
        }
    }

    /// Whether a sidecar does the TLS (the API port speaks plain HTTP to it).
    pub const fn is_mesh(self) -> bool {
        !matches!(self, IdentityMode::Mtls)
    }
}

impl std::str::FromStr for IdentityMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mtls" => Ok(IdentityMode::Mtls),
            "linkerd" => Ok(IdentityMode::Linkerd),
            "istio" => Ok(IdentityMode::Istio),
            _ => Err("must be one of mtls, linkerd, istio".to_owned()),
        }
    }
}

impl fmt::Display for IdentityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity settings of a service, parsed once with the rest of its configuration.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// `IDENTITY_MODE`, default `mtls`.
    pub mode: IdentityMode,
    /// `SVID_DIR`, or `SVID_CERT_FILE` + `SVID_KEY_FILE` + `SVID_BUNDLE_FILE`, or
    /// `SPIFFE_ENDPOINT_SOCKET` (a SPIRE agent's Workload API): the service's own SVID.
    /// Required in `mtls` mode; unused in the mesh modes (the sidecar holds the identity).
    pub svid: Option<SvidSource>,
    /// `SPIFFE_TRUST_DOMAIN` and `SPIFFE_ID_TEMPLATE` (defaults `vantage.local`,
    /// `spiffe://{trust_domain}/{workload}`): how the workloads named in the policy map to
    /// SPIFFE IDs.
    pub ids: IdTemplate,
    /// The networks of `MESH_TRUSTED_SIDECARS` (default `pod,127.0.0.1,::1`): the TCP peers
    /// whose mesh identity headers are believed (mesh modes only).
    pub trusted_sidecars: Vec<IpNet>,
    /// Whether `MESH_TRUSTED_SIDECARS` names [`OWN_ADDRESS`] (it does by default): a connection
    /// from the address it was accepted on comes from the pod itself, and is believed too.
    pub trust_own_address: bool,
}

impl IdentityConfig {
    /// Reads the identity variables through `p` (errors are collected there).
    pub fn parse(p: &mut EnvParser<'_>) -> Self {
        let mode = p.parse(IDENTITY_MODE_ENV, IdentityMode::Mtls);
        let trust_domain: TrustDomain =
            p.parse(identity::SPIFFE_TRUST_DOMAIN_ENV, TrustDomain::default());
        let ids = match p.var(identity::SPIFFE_ID_TEMPLATE_ENV) {
            None => IdTemplate::default_in(&trust_domain),
            Some(t) => IdTemplate::new(&t, &trust_domain).unwrap_or_else(|e| {
                p.invalid(identity::SPIFFE_ID_TEMPLATE_ENV, t.clone(), e.to_string());
                IdTemplate::default_in(&trust_domain)
            }),
        };
        let (svid, source_ok) = match SvidSource::from_vars(|k| p.var(k)) {
            Ok(s) => (s, true),
            Err(e) => {
                let var = match e {
                    identity::SvidSourceError::BadEndpoint(..) => {
                        identity::SPIFFE_ENDPOINT_SOCKET_ENV
                    }
                    _ => identity::SVID_DIR_ENV,
                };
                p.error(var, e.to_string());
                (None, false)
            }
        };
        if mode == IdentityMode::Mtls && svid.is_none() && source_ok {
            p.error(
                identity::SVID_DIR_ENV,
                "required in IDENTITY_MODE=mtls (the service's SVID: tls.crt, tls.key, ca.crt), unless SPIFFE_ENDPOINT_SOCKET names a SPIFFE Workload API",
            );
        }
        let (trusted_sidecars, trust_own_address) = match p.var(MESH_TRUSTED_SIDECARS_ENV) {
            None => (loopback(), true),
            Some(raw) => match parse_sidecars(&raw) {
                Ok(n) => n,
                Err(e) => {
                    p.invalid(MESH_TRUSTED_SIDECARS_ENV, raw, e);
                    (loopback(), true)
                }
            },
        };
        IdentityConfig {
            mode,
            svid,
            ids,
            trusted_sidecars,
            trust_own_address,
        }
    }

    /// `mtls` with the SVID in `svid_dir`, default trust domain and template: what tests and
    /// the stack use.
    pub fn mtls(svid_dir: impl Into<std::path::PathBuf>) -> Self {
        IdentityConfig {
            mode: IdentityMode::Mtls,
            svid: Some(SvidSource::Dir(svid_dir.into())),
            ids: IdTemplate::default_in(&TrustDomain::default()),
            trusted_sidecars: loopback(),
            trust_own_address: true,
        }
    }

    /// The gateway's SPIFFE ID: the only caller whose `x-user-id` is believed.
    pub fn gateway_id(&self) -> SpiffeId {
        self.ids
            .id_of("gateway")
            .expect("a valid template gives every workload name an ID")
    }

    /// Whether a connection from `addr` comes from a trusted sidecar network (the
    /// [`OWN_ADDRESS`] rule needs the connection: see [`IdentityConfig::is_from_trusted_sidecar`]).
    pub fn is_trusted_sidecar(&self, addr: IpAddr) -> bool {
        let addr = unmapped(addr);
        self.trusted_sidecars.iter().any(|n| n.contains(&addr))
    }

    /// Whether `conn` comes from a trusted sidecar: its peer is in a trusted network, or it is
    /// the pod's own address and [`OWN_ADDRESS`] is trusted.
    pub fn is_from_trusted_sidecar(&self, conn: &ConnInfo) -> bool {
        let remote = conn.remote.ip();
        self.is_trusted_sidecar(remote)
            || (self.trust_own_address
                && conn
                    .local
                    .is_some_and(|local| unmapped(local.ip()) == unmapped(remote)))
    }

    /// The caller of a request: from the connection's TLS in `mtls` mode; from the mesh header
    /// when the connection comes from a trusted sidecar; nobody otherwise.
    pub fn caller(&self, conn: &ConnInfo, headers: &HeaderMap) -> Caller {
        let id = match self.mode {
            IdentityMode::Mtls => conn.tls.as_ref().and_then(|t| t.spiffe_id.clone()),
            IdentityMode::Linkerd | IdentityMode::Istio if !self.is_from_trusted_sidecar(conn) => {
                None
            }
            IdentityMode::Linkerd => {
                header(headers, L5D_CLIENT_ID).and_then(|v| linkerd_client_id(v, &self.ids))
            }
            IdentityMode::Istio => header(headers, XFCC).and_then(xfcc_uri),
        };
        match id {
            None => Caller::Anonymous,
            Some(id) => {
                let workload = (id.trust_domain() == self.ids.trust_domain())
                    .then(|| self.ids.workload_of(&id).map(str::to_owned))
                    .flatten();
                Caller::Workload {
                    is_gateway: id == self.gateway_id(),
                    id,
                    workload,
                }
            }
        }
    }
}

/// `::ffff:10.1.2.3` → `10.1.2.3` (a dual-stack listener reports IPv4 peers so).
fn unmapped(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

fn loopback() -> Vec<IpNet> {
    vec![
        IpNet::from(IpAddr::from([127, 0, 0, 1])),
        IpNet::from(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
    ]
}

/// `pod, 10.0.0.0/8, 127.0.0.1` → the networks (a bare address is a /32 or /128), and whether
/// [`OWN_ADDRESS`] is among them.
fn parse_sidecars(raw: &str) -> Result<(Vec<IpNet>, bool), String> {
    let (mut networks, mut own) = (Vec::new(), false);
    for s in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if s == OWN_ADDRESS {
            own = true;
            continue;
        }
        networks.push(
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("{s:?} is not an IP address or network, nor {OWN_ADDRESS:?}")
                })?,
        );
    }
    Ok((networks, own))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// `l5d-client-id`: a SPIFFE ID, or Linkerd's DNS-like identity
/// `<service-account>.<namespace>.serviceaccount.identity.linkerd.<cluster-domain>`, whose
/// service account names the workload.
fn linkerd_client_id(value: &str, ids: &IdTemplate) -> Option<SpiffeId> {
    if value.starts_with("spiffe://") {
        return value.parse().ok();
    }
    let mut labels = value.split('.');
    let (sa, _ns, kind) = (labels.next()?, labels.next()?, labels.next()?);
    if kind != "serviceaccount" || labels.next() != Some("identity") {
        return None;
    }
    ids.id_of(sa).ok()
}

/// `x-forwarded-client-cert`: the `URI=` of its last element (the proxy appends the client of
/// the latest hop last).
fn xfcc_uri(value: &str) -> Option<SpiffeId> {
    let last = split_unquoted(value, ',').pop()?;
    split_unquoted(last, ';').into_iter().find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("uri")
            .then(|| v.trim().trim_matches('"').parse().ok())
            .flatten()
    })
}

/// Splits on `sep` outside double quotes.
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let (mut out, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// What a connection established, inserted into every request made on it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP peer.
    pub remote: SocketAddr,
    /// The address the connection was accepted on (`None` when the socket could not tell).
    pub local: Option<SocketAddr>,
    /// The TLS facts in `mtls` mode (`None` for plain HTTP from a sidecar).
    pub tls: Option<PeerTls>,
}

/// The workload calling, as the authorization layer decided it; in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Nobody we can identify (a mesh-mode connection that is not from a trusted sidecar, or
    /// one without the header).
    Anonymous,
    /// A workload with a verified SPIFFE ID.
    Workload {
        id: SpiffeId,
        /// Its name under the ID template, when it is in our trust domain and matches it.
        workload: Option<String>,
        /// Whether it is the gateway (only then are `x-user-id`/`x-user-scopes` believed).
        is_gateway: bool,
    },
}

impl Caller {
    /// The metric label: the workload name, `other` for an ID outside the template, or
    /// `anonymous`.
    pub fn label(&self) -> &str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::Workload {
                workload: Some(w), ..
            } => w,
            Caller::Workload { .. } => "other",
        }
    }

    /// Whether this is the gateway.
    pub fn is_gateway(&self) -> bool {
        matches!(
            self,
            Caller::Workload {
                is_gateway: true,
                ..
            }
        )
    }
}

/// Puts the caller and the connection's TLS facts on the request's SERVER span (the current
/// span): `vantage.peer.spiffe_id`, and in `mtls` mode the semantic conventions' `tls.*`.
/// A `map_request` middleware inside the HTTP server layer.
pub(crate) async fn record_on_span(req: axum::extract::Request) -> axum::extract::Request {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::Span::current();
    if let Some(Caller::Workload { id, .. }) = req.extensions().get::<Caller>() {
        span.set_attribute("vantage.peer.spiffe_id", id.to_string());
    }
    if let Some(tls) = req
        .extensions()
        .get::<ConnInfo>()
        .and_then(|c| c.tls.as_ref())
    {
        span.set_attribute("tls.established", true);
        span.set_attribute("tls.protocol.name", "tls");
        span.set_attribute("tls.protocol.version", tls.protocol_version);
        span.set_attribute("tls.cipher", tls.cipher);
        span.set_attribute("tls.resumed", tls.resumed);
        if let Some(p) = &tls.next_protocol {
            span.set_attribute("tls.next_protocol", p.clone());
        }
        if let Some(s) = tls.peer_subject.as_ref().filter(|s| !s.is_empty()) {
            span.set_attribute("tls.client.subject", s.clone());
        }
        if let Some(t) = &tls.peer_not_after {
            span.set_attribute("tls.client.not_after", t.clone());
        }
    }
    req
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<IdentityConfig, observability::env::EnvErrors> {
        let env: HashMap<&str, &str> = vars.iter().copied().collect();
        let mut p = EnvParser::new(&env);
        let c = IdentityConfig::parse(&mut p);
        p.finish().map(|()| c)
    }

    #[test]
    fn mtls_needs_an_svid_and_every_error_is_listed() {
        let errors = parse(&[
            ("IDENTITY_MODE", "plain"),
            ("MESH_TRUSTED_SIDECARS", "10.0.0.0/8, nope"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            errors.contains("IDENTITY_MODE=\"plain\": must be one of mtls, linkerd, istio"),
            "{errors}"
        );
        assert!(errors.contains("SVID_DIR: required"), "{errors}");
        assert!(errors.contains("\"nope\" is not an IP"), "{errors}");
        let c = parse(&[("SVID_DIR", "/svid")]).unwrap();
        assert_eq!(c.mode, IdentityMode::Mtls);
        assert_eq!(c.gateway_id().as_str(), "spiffe://vantage.local/gateway");
        let c = parse(&[("IDENTITY_MODE", "linkerd")]).unwrap();
        assert!(c.svid.is_none() && c.is_trusted_sidecar("127.0.0.1".parse().unwrap()));
        assert!(!c.is_trusted_sidecar("10.1.2.3".parse().unwrap()));
        assert!(c.trust_own_address, "the default trusts the pod itself");
        let c = parse(&[
            ("IDENTITY_MODE", "istio"),
            ("MESH_TRUSTED_SIDECARS", "127.0.0.6, ::6"),
        ])
        .unwrap();
        assert!(!c.trust_own_address && !c.is_trusted_sidecar("127.0.0.1".parse().unwrap()));
        assert!(c.is_trusted_sidecar("::6".parse().unwrap()));
    }

    #[test]
    fn the_workload_api_is_an_svid_source_of_its_own() {
        let c = parse(&[("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/agent.sock")]).unwrap();
        assert_eq!(
            c.svid,
            Some(SvidSource::WorkloadApi(
                "unix:///run/spire/agent.sock".into()
            ))
        );
        let errors = parse(&[("SPIFFE_ENDPOINT_SOCKET", "/run/spire/agent.sock")])
            .unwrap_err()
            .to_string();
        assert!(
            errors.contains(
                "SPIFFE_ENDPOINT_SOCKET: \"/run/spire/agent.sock\" is not a Workload API endpoint"
            ),
            "{errors}"
        );
        let errors = parse(&[
            ("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/agent.sock"),
            ("SVID_DIR", "/svid"),
        ])
        .unwrap_err()
        .to_string();
        assert!(errors.contains("not several"), "{errors}");
    }

    fn conn(remote: &str, local: &str) -> ConnInfo {
        ConnInfo {
            remote: remote.parse().unwrap(),
            local: Some(local.parse().unwrap()),
            tls: None,
        }
    }

    #[test]
    fn the_pods_own_address_is_a_sidecar_only_when_trusted() {
        let default = parse(&[("IDENTITY_MODE", "linkerd")]).unwrap();
        let networks_only = parse(&[
            ("IDENTITY_MODE", "linkerd"),
            ("MESH_TRUSTED_SIDECARS", "127.0.0.1,::1"),
        ])
        .unwrap();
        // The Linkerd proxy connects to the pod's own IP, from it.
        let from_proxy = conn("10.244.1.5:41000", "10.244.1.5:7002");
        assert!(default.is_from_trusted_sidecar(&from_proxy));
        assert!(!networks_only.is_from_trusted_sidecar(&from_proxy));
        // A dual-stack listener reports the same IPv4 addresses mapped.
        let mapped = conn("[::ffff:10.244.1.5]:41000", "10.244.1.5:7002");
        assert!(default.is_from_trusted_sidecar(&mapped));
        // Another pod, and a connection whose listener address is unknown.
        assert!(!default.is_from_trusted_sidecar(&conn("10.244.1.6:41000", "10.244.1.5:7002")));
        let unknown = ConnInfo {
            local: None,
            ..from_proxy.clone()
        };
        assert!(!default.is_from_trusted_sidecar(&unknown));
        let mut headers = HeaderMap::new();
        headers.insert(
            L5D_CLIENT_ID,
            "gateway.vantage.serviceaccount.identity.linkerd.cluster.local"
                .parse()
                .unwrap(),
        );
        assert!(default.caller(&from_proxy, &headers).is_gateway());
        assert_eq!(
            networks_only.caller(&from_proxy, &headers),
            Caller::Anonymous
        );
        let e = parse(&[
            ("IDENTITY_MODE", "linkerd"),
            ("MESH_TRUSTED_SIDECARS", "pods"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("nor \"pod\""), "{e}");
    }

    #[test]
    fn mesh_headers_name_the_caller() {
        let ids = IdTemplate::default_in(&TrustDomain::default());
        assert_eq!(
            linkerd_client_id(
                "cart.vantage.serviceaccount.identity.linkerd.cluster.local",
                &ids
            )
            .unwrap()
            .as_str(),
            "spiffe://vantage.local/cart"
        );
        assert_eq!(linkerd_client_id("cart.example.com", &ids), None);
        let xfcc = "By=spiffe://vantage.local/inventory;Hash=ab;URI=spiffe://vantage.local/gateway,\
                    By=spiffe://vantage.local/inventory;Hash=\"c,d\";Subject=\"\";URI=spiffe://vantage.local/cart";
        assert_eq!(
            xfcc_uri(xfcc).unwrap().as_str(),
            "spiffe://vantage.local/cart"
        );
        assert_eq!(xfcc_uri("Hash=ab;DNS=cart"), None);
    }
}
