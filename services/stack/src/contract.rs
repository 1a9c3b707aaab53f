//! Who calls whom over HTTP, and on which ports: the one table the deployment is checked against.
//!
//! The gateway forwards client requests to the services and reads the signing keys of `users`;
//! `cart` asks `inventory` for prices. Nothing else calls a service. The broker paths are not
//! here: they come from the messaging contract (`messaging::events`), and every workload exports
//! traces to the collector. `services/stack/tests/deploy_files.rs` derives from this table and
//! the messaging contract exactly which connections the Kubernetes NetworkPolicies
//! (`deploy/k8s`) must allow, and fails on any connection allowed but not listed here, or listed
//! but blocked. So a new call is a line here plus the manifests, or the test fails.
//!
//! Ports follow the deployment conventions: service API ports 7001..7007 in [`Workload::SERVICES`]
//! order (mTLS in the default identity mode), an ops port (`/healthz`, `/readyz`, `/metrics`) 100
//! above each, and for the gateway the public ports 8080 and 8443 and the admin port 9901.

use std::fmt;

/// A program of this repository that runs as its own deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    Gateway,
    Users,
    Inventory,
    Cart,
    Orders,
    Payment,
    Shipping,
    Audit,
}

impl Workload {
    /// Every workload: the gateway, then the services.
    pub const ALL: [Workload; 8] = [
        Workload::Gateway,
        Workload::Users,
        Workload::Inventory,
        Workload::Cart,
        Workload::Orders,
        Workload::Payment,
        Workload::Shipping,
        Workload::Audit,
    ];

    /// The seven shop services in port order (the order of [`crate::config::SERVICES`]).
    pub const SERVICES: [Workload; 7] = [
        Workload::Users,
        Workload::Inventory,
        Workload::Cart,
        Workload::Orders,
        Workload::Payment,
        Workload::Shipping,
        Workload::Audit,
    ];

    /// The name used everywhere: binary, host name, Kubernetes labels, SPIFFE path, broker user.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Gateway => "gateway",
            Workload::Users => "users",
            Workload::Inventory => "inventory",
            Workload::Cart => "cart",
            Workload::Orders => "orders",
            Workload::Payment => "payment",
            Workload::Shipping => "shipping",
            Workload::Audit => "audit",
        }
    }

    /// The workload named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    /// Whether this is one of the seven services (everything but the gateway).
    pub fn is_service(self) -> bool {
        self != Workload::Gateway
    }

    /// The port other workloads call: 7001..7007 for the services, 8080 (public) for the gateway.
    pub fn api_port(self) -> u16 {
        match Workload::SERVICES.iter().position(|w| *w == self) {
            Some(i) => crate::config::DEFAULT_BASE_PORT + i as u16,
            None => GATEWAY_PUBLIC_PORT,
        }
    }

    /// The plain-HTTP port for probes and scraping: API port + 100 for the services, the admin
    /// port 9901 for the gateway.
    pub fn ops_port(self) -> u16 {
        match self {
            Workload::Gateway => GATEWAY_ADMIN_PORT,
            service => service.api_port() + OPS_PORT_OFFSET,
        }
    }

    /// The workload's SPIFFE ID in `trust_domain` (default [`TRUST_DOMAIN`]).
    pub fn spiffe_id(self, trust_domain: &str) -> String {
        format!("spiffe://{trust_domain}/{}", self.name())
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The default SPIFFE trust domain.
pub const TRUST_DOMAIN: &str = "vantage.local";
/// The gateway's plain public listener.
pub const GATEWAY_PUBLIC_PORT: u16 = 8080;
/// The gateway's TLS public listener.
pub const GATEWAY_PUBLIC_TLS_PORT: u16 = 8443;
/// The gateway's admin listener (`/healthz`, `/readyz`, `/metrics`, `/config`).
pub const GATEWAY_ADMIN_PORT: u16 = 9901;
/// Ops port = API port + this.
pub const OPS_PORT_OFFSET: u16 = 100;
/// AMQP over TLS, the only broker port services use in a deployment.
pub const BROKER_AMQPS_PORT: u16 = 5671;
/// OTLP over gRPC, where every workload sends traces (the collector) and the collector sends
/// them on (Jaeger).
pub const OTLP_GRPC_PORT: u16 = 4317;

/// Why one workload calls another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Forwards client requests on the routes of the gateway policy, and checks the upstream's
    /// health (`upstreams.*.health_check`).
    Routes,
    /// Reads the token signing keys (`issuers.*.jwks_url`).
    Jwks,
    /// Reads product prices when an item is added to a cart (`INVENTORY_URL`).
    Prices,
}

/// One HTTP call between workloads, always to the callee's [`Workload::api_port`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpCall {
    pub from: Workload,
    pub to: Workload,
    pub purpose: Purpose,
}

const fn call(from: Workload, to: Workload, purpose: Purpose) -> HttpCall {
    HttpCall { from, to, purpose }
}

/// Every HTTP call one workload makes to another. A pair may appear more than once, for
/// different purposes (the gateway calls `users` for routes and for its keys).
pub const HTTP_CALLS: &[HttpCall] = &[
    call(Workload::Gateway, Workload::Users, Purpose::Routes),
    call(Workload::Gateway, Workload::Users, Purpose::Jwks),
    call(Workload::Gateway, Workload::Inventory, Purpose::Routes),
    call(Workload::Gateway, Workload::Cart, Purpose::Routes),
    call(Workload::Gateway, Workload::Orders, Purpose::Routes),
    call(Workload::Gateway, Workload::Payment, Purpose::Routes),
    call(Workload::Gateway, Workload::Shipping, Purpose::Routes),
    call(Workload::Gateway, Workload::Audit, Purpose::Routes),
    call(Workload::Cart, Workload::Inventory, Purpose::Prices),
];

/// Whether `from` calls `to` over HTTP for any purpose.
pub fn calls(from: Workload, to: Workload) -> bool {
    HTTP_CALLS.iter().any(|c| c.from == from && c.to == to)
}

/// The workloads that hold a broker connection: every service, because each one runs the
/// outbox relay of the service kit (which connects even before the service has published
/// anything); consumers are the services in `messaging::events::SUBSCRIPTIONS`. The gateway
/// never talks to the broker.
pub fn broker_clients() -> impl Iterator<Item = Workload> {
    Workload::SERVICES.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ports_follow_the_conventions() {
        for (i, name) in crate::config::SERVICES.iter().enumerate() {
            let w = Workload::from_name(name).unwrap();
            assert_eq!(w, Workload::SERVICES[i]);
            assert_eq!(w.api_port(), 7001 + i as u16);
            assert_eq!(w.ops_port(), 7101 + i as u16);
            assert_eq!(w.to_string(), *name);
        }
        assert_eq!(Workload::Gateway.api_port(), 8080);
        assert_eq!(Workload::Gateway.ops_port(), 9901);
        assert_eq!(Workload::from_name("nope"), None);
        assert_eq!(
            Workload::Orders.spiffe_id(TRUST_DOMAIN),
            "spiffe://vantage.local/orders"
        );
    }

    #[test]
    fn every_service_is_reachable_through_the_gateway_and_nothing_calls_the_gateway() {
        for s in Workload::SERVICES {
            assert!(calls(Workload::Gateway, s), "{s}");
            assert!(!calls(s, Workload::Gateway), "{s}");
        }
        assert!(HTTP_CALLS.iter().all(|c| c.from != c.to));
    }
}
