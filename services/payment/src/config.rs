use std::time::Duration;

use service_kit::{BaseConfig, ConfigErrors, EnvParser, EnvSource};

use crate::provider::ProviderConfig;

#[derive(Debug, Clone)]
pub struct Config {
    pub base: BaseConfig,
    pub provider: ProviderConfig,
}

impl Config {
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, ConfigErrors> {
        let mut p = EnvParser::new(env);
        let base = BaseConfig::parse(&mut p, &crate::SERVICE);
        let provider = ProviderConfig {
            decline_rate: p.rate("PAYMENT_DECLINE_RATE"),
            latency: Duration::from_millis(p.parse("PAYMENT_LATENCY_MS", 0)),
            attempts: p.parse("PAYMENT_RETRY_ATTEMPTS", 3),
            retry_base: Duration::from_millis(p.parse("PAYMENT_RETRY_BASE_MS", 50)),
        };
        if provider.attempts == 0 {
            p.invalid("PAYMENT_RETRY_ATTEMPTS", "0", "must be at least 1");
        }
        p.finish().map(|()| Config { base, provider })
    }
}
