use std::time::Duration;

use service_kit::{BaseConfig, ConfigErrors, EnvParser, EnvSource};

#[derive(Debug, Clone)]
pub struct Config {
    pub base: BaseConfig,
    /// `ORDERS_PAYMENT_TIMEOUT_SECS`, default 30: for an `order.placed` without a
    /// `payment_deadline` (from a cart older than the field), an order not PAID this long after
    /// it was placed is cancelled (`timeout`). Orders with a deadline use it (cart's
    /// `CART_PAYMENT_TIMEOUT_SECS`). Fractions allowed (`0.5`).
    pub payment_timeout: Duration,
}

impl Config {
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, ConfigErrors> {
        let mut p = EnvParser::new(env);
        let base = BaseConfig::parse(&mut p, &crate::SERVICE);
        let secs: f64 = p.parse("ORDERS_PAYMENT_TIMEOUT_SECS", 30.0);
        if !(secs > 0.0 && secs.is_finite()) {
            p.invalid(
                "ORDERS_PAYMENT_TIMEOUT_SECS",
                secs.to_string(),
                "must be positive",
            );
        }
        p.finish().map(|()| Config {
            base,
            payment_timeout: Duration::from_secs_f64(secs.max(0.001)),
        })
    }
}
