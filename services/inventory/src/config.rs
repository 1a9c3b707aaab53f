use service_kit::{BaseConfig, ConfigErrors, EnvParser, EnvSource};

#[derive(Debug, Clone)]
pub struct Config {
    pub base: BaseConfig,
    /// `INVENTORY_FAILURE_RATE`, default 0: share (0..1) of reservation attempts that fail
    /// transiently (the message is retried, then dead-lettered past the delivery limit).
    pub failure_rate: f64,
}

impl Config {
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, ConfigErrors> {
        let mut p = EnvParser::new(env);
        let base = BaseConfig::parse(&mut p, &crate::SERVICE);
        let failure_rate = p.rate("INVENTORY_FAILURE_RATE");
        p.finish().map(|()| Config { base, failure_rate })
    }
}
