use service_kit::{BaseConfig, ConfigErrors, EnvParser, EnvSource};

#[derive(Debug, Clone)]
pub struct Config {
    pub base: BaseConfig,
    /// `INVENTORY_URL`, default `http://127.0.0.1:7002`: where product prices come from.
    pub inventory_url: String,
}

impl Config {
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, ConfigErrors> {
        let mut p = EnvParser::new(env);
        let base = BaseConfig::parse(&mut p, &crate::SERVICE);
        let inventory_url = p.string("INVENTORY_URL", "http://127.0.0.1:7002");
        if !inventory_url.starts_with("http://") && !inventory_url.starts_with("https://") {
            p.invalid(
                "INVENTORY_URL",
                inventory_url.clone(),
                "must be an http(s) URL",
            );
        }
        p.finish().map(|()| Config {
            base,
            inventory_url: inventory_url.trim_end_matches('/').to_owned(),
        })
    }
}
