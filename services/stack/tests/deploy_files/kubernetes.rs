//! Reading the rendered Kubernetes manifests, and a NetworkPolicy evaluator to ask them which
//! connections they allow.
//!
//! The evaluator implements the `networking.k8s.io/v1` semantics the manifests rely on: a pod
//! selected by any policy of a type (Ingress/Egress) is isolated in that direction and allows
//! only what one of those policies' rules allows; a connection needs the source's egress and
//! the destination's ingress. Peers are `podSelector`/`namespaceSelector` (with `matchLabels`
//! and `matchExpressions`) and `ipBlock`; ports are numeric with optional `endPort`. Pods have
//! no IP address in this model, so an `ipBlock` only ever matches the external addresses
//! listed in [`peers`]; the checks forbid `ipBlock`s other than the ones they expect.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use serde_yaml::Value;

pub(crate) const NAMESPACE: &str = "vantage";

/// The kustomizations under deploy/k8s, by name.
pub(crate) const KUSTOMIZATIONS: [&str; 5] = [
    "base",
    "overlays/linkerd",
    "overlays/istio-sidecar",
    "overlays/istio-ambient",
    "overlays/spire",
];

/// Renders `deploy/k8s/<name>` with `kustomize build` or `kubectl kustomize`, once per test run.
pub(crate) fn rendered(name: &str) -> &'static [Value] {
    static RENDERED: OnceLock<BTreeMap<&'static str, Vec<Value>>> = OnceLock::new();
    let all = RENDERED.get_or_init(|| {
        KUSTOMIZATIONS
            .iter()
            .map(|k| (*k, render(&super::root().join("deploy/k8s").join(k))))
            .collect()
    });
    &all[name]
}

fn render(dir: &Path) -> Vec<Value> {
    let tool = if which("kustomize") {
        vec!["kustomize", "build"]
    } else if which("kubectl") {
        vec!["kubectl", "kustomize"]
    } else {
        panic!(
            "rendering deploy/k8s needs kustomize v5 or kubectl (which embeds it) on PATH; \
             install it with: bash deploy/k8s/install-tools.sh (as root; .ci/run does)"
        )
    };
    let out = Command::new(tool[0])
        .args(&tool[1..])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {}: {}",
        tool.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n---\n")
        .map(|doc| serde_yaml::from_str::<Value>(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

pub(crate) fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The resources of `kind` in a rendering.
pub(crate) fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The resource `kind/name`, or a panic naming what is missing.
pub(crate) fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} is not in the rendering"))
}

pub(crate) fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
            };
            (k.as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// Something that can open or accept a connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Peer {
    /// Short name used in messages and expectations.
    pub(crate) name: String,
    /// `None` for an address outside the cluster.
    pub(crate) namespace: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) namespace_labels: BTreeMap<String, String>,
    pub(crate) ip: Option<Ipv4Addr>,
}

impl Peer {
    fn pod(name: &str, namespace: &str, labels: &[(&str, &str)]) -> Peer {
        Peer {
            name: name.to_owned(),
            namespace: Some(namespace.to_owned()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            namespace_labels: BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                namespace.to_owned(),
            )]),
            ip: None,
        }
    }

    fn address(name: &str, ip: Ipv4Addr) -> Peer {
        Peer {
            name: name.to_owned(),
            namespace: None,
            labels: BTreeMap::new(),
            namespace_labels: BTreeMap::new(),
            ip: Some(ip),
        }
    }

    pub(crate) fn in_namespace(&self) -> bool {
        self.namespace.as_deref() == Some(NAMESPACE)
    }
}

/// The labels the RabbitMQ Cluster Operator puts on the pods of a RabbitmqCluster named `name`.
pub(crate) fn rabbitmq_pod_labels(name: &str) -> [(&str, &str); 3] {
    [
        ("app.kubernetes.io/name", name),
        ("app.kubernetes.io/component", "rabbitmq"),
        ("app.kubernetes.io/part-of", "rabbitmq"),
    ]
}

/// Names of the peers outside our manifests, as [`peers`] names them.
pub(crate) mod outside {
    pub(crate) const KUBE_DNS: &str = "kube-dns";
    pub(crate) const PROMETHEUS: &str = "prometheus";
    pub(crate) const RABBITMQ_OPERATOR: &str = "rabbitmq-operator";
    pub(crate) const LINKERD_DESTINATION: &str = "linkerd-destination";
    pub(crate) const LINKERD_IDENTITY: &str = "linkerd-identity";
    pub(crate) const ISTIOD: &str = "istiod";
    pub(crate) const ZTUNNEL_PROBES: &str = "ztunnel-probes";
    pub(crate) const INTERNET: &str = "internet-client";
    pub(crate) const STRANGER: &str = "stranger";
    pub(crate) const DEBUG_POD: &str = "debug-pod";
}

/// Every peer the check considers: one per pod template in the rendering (named by its
/// `app.kubernetes.io/name` label), the RabbitMQ pods the operator creates, and the peers
/// outside the manifests: the cluster DNS, Prometheus, the RabbitMQ operator, Linkerd's and
/// Istio's control planes, the address ztunnel probes from, a client on the internet, a pod in another
/// namespace and a stray pod in ours (neither may reach anything but the public gateway).
pub(crate) fn peers(docs: &[Value]) -> Vec<Peer> {
    use outside::*;
    let ns_labels = labels(&find(docs, "Namespace", NAMESPACE)["metadata"]["labels"]);
    let mut peers = Vec::new();
    for kind in ["Deployment", "StatefulSet"] {
        for w in of_kind(docs, kind) {
            let pod_labels = labels(&w["spec"]["template"]["metadata"]["labels"]);
            let name = pod_labels
                .get("app.kubernetes.io/name")
                .unwrap_or_else(|| {
                    panic!(
                        "{kind}/{} pods carry no app.kubernetes.io/name",
                        w["metadata"]["name"].as_str().unwrap_or("?")
                    )
                })
                .clone();
            peers.push(Peer {
                name,
                namespace: Some(NAMESPACE.to_owned()),
                labels: pod_labels,
                namespace_labels: BTreeMap::new(),
                ip: None,
            });
        }
    }
    for cluster in of_kind(docs, "RabbitmqCluster") {
        let name = cluster["metadata"]["name"].as_str().unwrap();
        peers.push(Peer::pod(name, NAMESPACE, &rabbitmq_pod_labels(name)));
    }
    peers.push(Peer::pod(
        DEBUG_POD,
        NAMESPACE,
        &[("app.kubernetes.io/name", "debug")],
    ));
    for p in &mut peers {
        p.namespace_labels = ns_labels.clone();
        p.namespace_labels.insert(
            "kubernetes.io/metadata.name".to_owned(),
            NAMESPACE.to_owned(),
        );
    }
    peers.extend([
        Peer::pod(KUBE_DNS, "kube-system", &[("k8s-app", "kube-dns")]),
        Peer::pod(
            PROMETHEUS,
            "monitoring",
            &[("app.kubernetes.io/name", "prometheus")],
        ),
        Peer::pod(
            RABBITMQ_OPERATOR,
            "rabbitmq-system",
            &[
                ("app.kubernetes.io/name", "rabbitmq-cluster-operator"),
                ("app.kubernetes.io/component", "rabbitmq-operator"),
            ],
        ),
        Peer::pod(
            LINKERD_DESTINATION,
            "linkerd",
            &[("linkerd.io/control-plane-component", "destination")],
        ),
        Peer::pod(
            LINKERD_IDENTITY,
            "linkerd",
            &[("linkerd.io/control-plane-component", "identity")],
        ),
        Peer::pod(ISTIOD, "istio-system", &[("app", "istiod")]),
        Peer::pod(STRANGER, "default", &[("app", "stranger")]),
        Peer::address(ZTUNNEL_PROBES, Ipv4Addr::new(169, 254, 7, 127)),
        Peer::address(INTERNET, Ipv4Addr::new(203, 0, 113, 9)),
    ]);
    peers
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Protocol {
    Tcp,
    Udp,
}

/// One connection: from a peer to a peer's port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Connection {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) protocol: Protocol,
    pub(crate) port: u16,
}

impl Connection {
    pub(crate) fn tcp(from: &str, to: &str, port: u16) -> Connection {
        Connection {
            from: from.to_owned(),
            to: to.to_owned(),
            protocol: Protocol::Tcp,
            port,
        }
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        write!(f, "{} -> {}:{}/{proto}", self.from, self.to, self.port)
    }
}

/// The NetworkPolicies of a rendering.
pub(crate) struct Policies<'a> {
    policies: Vec<&'a Value>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl<'a> Policies<'a> {
    pub(crate) fn new(docs: &'a [Value]) -> Self {
        let policies = of_kind(docs, "NetworkPolicy");
        for p in &policies {
            assert_eq!(
                p["metadata"]["namespace"],
                NAMESPACE,
                "{}",
                p["metadata"]["name"].as_str().unwrap_or("?")
            );
        }
        Policies { policies }
    }

    /// The numeric ports any policy names, ranges expanded.
    pub(crate) fn ports(&self) -> BTreeSet<(Protocol, u16)> {
        let mut out = BTreeSet::new();
        for p in &self.policies {
            for dir in ["ingress", "egress"] {
                for rule in p["spec"][dir].as_sequence().into_iter().flatten() {
                    for port in rule["ports"].as_sequence().into_iter().flatten() {
                        let (proto, from, to) = port_range(port);
                        out.extend((from..=to).map(|n| (proto, n)));
                    }
                }
            }
        }
        out
    }

    /// Every `ipBlock` CIDR any policy names.
    pub(crate) fn ip_blocks(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for p in &self.policies {
            for (dir, key) in [("ingress", "from"), ("egress", "to")] {
                for rule in p["spec"][dir].as_sequence().into_iter().flatten() {
                    for peer in rule[key].as_sequence().into_iter().flatten() {
                        if let Some(cidr) = peer["ipBlock"]["cidr"].as_str() {
                            out.insert(cidr.to_owned());
                        }
                    }
                }
            }
        }
        out
    }

    /// Whether the policies let `from` connect to `to` on `port`.
    pub(crate) fn allows(&self, from: &Peer, to: &Peer, protocol: Protocol, port: u16) -> bool {
        let egress =
            !from.in_namespace() || self.allowed(Direction::Egress, from, to, protocol, port);
        let ingress =
            !to.in_namespace() || self.allowed(Direction::Ingress, to, from, protocol, port);
        egress && ingress
    }

    /// Whether `pod` may send to (egress) or receive from (ingress) `other`.
    fn allowed(
        &self,
        dir: Direction,
        pod: &Peer,
        other: &Peer,
        protocol: Protocol,
        port: u16,
    ) -> bool {
        let (rules_key, peers_key, type_name) = match dir {
            Direction::Ingress => ("ingress", "from", "Ingress"),
            Direction::Egress => ("egress", "to", "Egress"),
        };
        let mut isolated = false;
        for p in &self.policies {
            let spec = &p["spec"];
            if !selects(&spec["podSelector"], &pod.labels) {
                continue;
            }
            let types: Vec<&str> = match spec["policyTypes"].as_sequence() {
                Some(t) => t.iter().map(|t| t.as_str().unwrap()).collect(),
                None if spec.get("egress").is_some() => vec!["Ingress", "Egress"],
                None => vec!["Ingress"],
            };
            if !types.contains(&type_name) {
                continue;
            }
            isolated = true;
            for rule in spec[rules_key].as_sequence().into_iter().flatten() {
                let peer_ok = match rule.get(peers_key).and_then(Value::as_sequence) {
                    None => true,
                    Some(s) if s.is_empty() => true,
                    Some(s) => s.iter().any(|peer| peer_matches(peer, other)),
                };
                let port_ok = match rule.get("ports").and_then(Value::as_sequence) {
                    None => true,
                    Some(s) if s.is_empty() => true,
                    Some(s) => s.iter().any(|p| {
                        let (proto, from, to) = port_range(p);
                        proto == protocol && (from..=to).contains(&port)
                    }),
                };
                if peer_ok && port_ok {
                    return true;
                }
            }
        }
        !isolated
    }
}

/// (protocol, first, last) of a NetworkPolicyPort; named ports are refused (the check cannot
/// resolve them and numbers say what is open).
fn port_range(p: &Value) -> (Protocol, u16, u16) {
    let protocol = match p["protocol"].as_str().unwrap_or("TCP") {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        other => panic!("unexpected protocol {other}"),
    };
    let from = p["port"]
        .as_u64()
        .unwrap_or_else(|| panic!("NetworkPolicy ports must be numbers: {p:?}"))
        as u16;
    let to = p["endPort"].as_u64().map_or(from, |e| e as u16);
    (protocol, from, to)
}

/// Whether a NetworkPolicyPeer matches `peer` (for policies in [`NAMESPACE`]).
fn peer_matches(rule_peer: &Value, peer: &Peer) -> bool {
    if let Some(block) = rule_peer.get("ipBlock") {
        let Some(ip) = peer.ip else { return false };
        let inside = |cidr: &Value| in_cidr(ip, cidr.as_str().unwrap());
        return inside(&block["cidr"])
            && !block["except"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(inside);
    }
    let Some(ns) = &peer.namespace else {
        return false;
    };
    let ns_ok = match rule_peer.get("namespaceSelector") {
        None => ns == NAMESPACE,
        Some(sel) => selects(sel, &peer.namespace_labels),
    };
    let pod_ok = match rule_peer.get("podSelector") {
        None => true,
        Some(sel) => selects(sel, &peer.labels),
    };
    ns_ok && pod_ok
}

/// A LabelSelector against labels; an empty selector selects everything.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let wanted = self::labels(&selector["matchLabels"]);
    if !wanted.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        return false;
    }
    selector["matchExpressions"]
        .as_sequence()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap();
            let values: Vec<&str> = e["values"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|v| v.as_str().unwrap())
                .collect();
            let have = labels.get(key).map(String::as_str);
            match e["operator"].as_str().unwrap() {
                "In" => have.is_some_and(|h| values.contains(&h)),
                "NotIn" => have.is_none_or(|h| !values.contains(&h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                other => panic!("unknown selector operator {other}"),
            }
        })
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let net: Ipv4Addr = net
        .parse()
        .unwrap_or_else(|_| panic!("not an IPv4 CIDR: {cidr}"));
    let len: u32 = len.parse().unwrap();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Every connection the policies allow between the peers (at least one side in [`NAMESPACE`]),
/// over the ports the policies name plus `extra_ports`.
pub(crate) fn allowed_connections(
    docs: &[Value],
    extra_ports: impl IntoIterator<Item = (Protocol, u16)>,
) -> BTreeSet<Connection> {
    let policies = Policies::new(docs);
    let peers = peers(docs);
    let mut ports = policies.ports();
    ports.extend(extra_ports);
    let mut out = BTreeSet::new();
    for from in &peers {
        for to in &peers {
            if !from.in_namespace() && !to.in_namespace() {
                continue;
            }
            for &(protocol, port) in &ports {
                if policies.allows(from, to, protocol, port) {
                    out.insert(Connection {
                        from: from.name.clone(),
                        to: to.name.clone(),
                        protocol,
                        port,
                    });
                }
            }
        }
    }
    out
}
