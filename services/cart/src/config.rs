use std::time::Duration;

use service_kit::{BaseConfig, ConfigErrors, EnvParser, EnvSource};

#[derive(Debug, Clone)]
pub struct Config {
    pub base: BaseConfig,
    /// `INVENTORY_URL`, default `https://127.0.0.1:7002` (`http://` in the mesh identity modes,
    /// where the sidecar does the TLS): where product prices come from. Must be `https://` in
    /// the `mtls` mode: the call presents cart's SVID and accepts only inventory's.
    pub inventory_url: String,
    /// `CART_PAYMENT_TIMEOUT_SECS`, default 300: how long after checkout an order must be paid
    /// by, stamped into `order.placed` as `payment_deadline`. Orders cancels an order not paid
    /// by then (`timeout`) and payment starts no charge after it. The default rides out a
    /// broker outage of a few minutes (a node restart, a rolling upgrade) without cancelling
    /// the orders checked out meanwhile. Fractions allowed (`0.5`).
    pub payment_timeout: Duration,
}

impl Config {
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, ConfigErrors> {
        let mut p = EnvParser::new(env);
        let base = BaseConfig::parse(&mut p, &crate::SERVICE);
        let mtls = !base.identity.mode.is_mesh();
        let default = if mtls {
            "https://127.0.0.1:7002"
        } else {
            "http://127.0.0.1:7002"
        };
        let inventory_url = p.string("INVENTORY_URL", default);
        if mtls && !inventory_url.starts_with("https://") {
            p.invalid(
                "INVENTORY_URL",
                inventory_url.clone(),
                "must be an https:// URL in IDENTITY_MODE=mtls",
            );
        } else if !inventory_url.starts_with("http://") && !inventory_url.starts_with("https://") {
            p.invalid(
                "INVENTORY_URL",
                inventory_url.clone(),
                "must be an http(s) URL",
            );
        }
        let secs: f64 = p.parse("CART_PAYMENT_TIMEOUT_SECS", 300.0);
        if !(secs > 0.0 && secs.is_finite()) {
            p.invalid(
                "CART_PAYMENT_TIMEOUT_SECS",
                secs.to_string(),
                "must be positive",
            );
        }
        p.finish().map(|()| Config {
            base,
            inventory_url: inventory_url.trim_end_matches('/').to_owned(),
            payment_timeout: Duration::from_secs_f64(secs.max(0.001)),
        })
    }
}
