use service_kit::{BaseConfig, ConfigErrors, Env, EnvParser};

#[derive(Debug, Clone)]
pub struct Config {
    pub base: BaseConfig,
    /// `INVENTORY_URL`, default `http://127.0.0.1:7002`: where product prices come from.
    pub inventory_url: String,
}

impl Config {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigErrors> {
        let mut p = EnvParser::new(env);
        let base = BaseConfig::parse(&mut p, "cart", 7003);
        let inventory_url = p.string("INVENTORY_URL", "http://127.0.0.1:7002");
        if !inventory_url.starts_with("http://") && !inventory_url.starts_with("https://") {
            p.error(format!(
                "INVENTORY_URL={inventory_url:?}: must be an http(s) URL"
            ));
        }
        p.finish().map(|()| Config {
            base,
            inventory_url: inventory_url.trim_end_matches('/').to_owned(),
        })
    }
}
