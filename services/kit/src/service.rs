//! A service, described once.

use messaging::Contract;

use crate::authz::AuthzPolicy;

/// What a shop service is: its name and the routing keys it produces and consumes (its
/// [`Contract`] in `messaging::contract`), the port it listens on by default, and its version.
/// Each service crate declares one `pub const SERVICE` (with [`service!`](crate::service)) and
/// hands it to [`main`](crate::main), [`BaseConfig::parse`](crate::BaseConfig::parse) and
/// [`Kit::start`](crate::Kit::start).
///
/// ```
/// use service_kit::Service;
///
/// const SERVICE: Service = Service::new(messaging::contract::ORDERS, 7004, env!("CARGO_PKG_VERSION"));
/// assert_eq!(SERVICE.name(), "orders");
/// assert!(SERVICE.contract.publishes("order.cancelled"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    /// Name, produced and consumed routing keys.
    pub contract: Contract,
    /// `LISTEN_ADDR` is `127.0.0.1:<default_port>` unless set.
    pub default_port: u16,
    /// `service.version` of its telemetry: pass `env!("CARGO_PKG_VERSION")`.
    pub version: &'static str,
    /// Which workloads may call which of its endpoints (default
    /// [`AuthzPolicy::GATEWAY_ONLY`]; declare the service's own with
    /// [`with_authz`](Self::with_authz)).
    pub authz: AuthzPolicy,
}

impl Service {
    /// The service bound by `contract`, on `default_port`, at `version`.
    pub const fn new(contract: Contract, default_port: u16, version: &'static str) -> Self {
        Self {
            contract,
            default_port,
            version,
            authz: AuthzPolicy::GATEWAY_ONLY,
        }
    }

    /// The service with its authorization policy.
    pub const fn with_authz(self, authz: AuthzPolicy) -> Self {
        Self { authz, ..self }
    }

    /// The service's name (`orders`): its telemetry `service.name`, database file, queue and
    /// events' source.
    pub const fn name(&self) -> &'static str {
        self.contract.service
    }
}

/// `service!(messaging::contract::ORDERS, 7004)`: the calling crate's [`Service`], with its
/// `CARGO_PKG_VERSION` as the version.
#[macro_export]
macro_rules! service {
    ($contract:expr, $default_port:expr) => {
        $crate::Service::new($contract, $default_port, env!("CARGO_PKG_VERSION"))
    };
}
