use service_kit::{BaseConfig, ConfigErrors, EnvParser, EnvSource};

#[derive(Debug, Clone)]
pub struct Config {
    pub base: BaseConfig,
    /// `INVENTORY_URL`, default `https://127.0.0.1:7002` (`http://` in the mesh identity modes,
    /// where the sidecar does the TLS): where product prices come from. Must be `https://` in
    /// the `mtls` mode: the call presents cart's SVID and accepts only inventory's.
    pub inventory_url: String,
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
        p.finish().map(|()| Config {
            base,
            inventory_url: inventory_url.trim_end_matches('/').to_owned(),
        })
    }
}
