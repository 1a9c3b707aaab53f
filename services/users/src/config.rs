use service_kit::{BaseConfig, ConfigErrors, EnvParser, EnvSource};

use crate::passwords::Argon2Params;

/// users' configuration. Secrets (`admin_password`) never reach logs: `Debug` redacts them.
#[derive(Clone)]
pub struct Config {
    pub base: BaseConfig,
    /// `USERS_JWT_ISSUER`, default `vantage-users`: the `iss` claim.
    pub issuer: String,
    /// `USERS_JWT_AUDIENCE`, default `vantage-api`: the `aud` claim.
    pub audience: String,
    /// `USERS_TOKEN_TTL_SECS`, default 900: token lifetime, and how long a retired key stays in
    /// the JWKS.
    pub token_ttl_secs: u64,
    /// `SHOP_ADMIN_EMAIL`: with `SHOP_ADMIN_PASSWORD`, creates the admin account at start.
    pub admin_email: Option<String>,
    /// `SHOP_ADMIN_PASSWORD`.
    pub admin_password: Option<String>,
    /// `USERS_ARGON2_MEMORY_KIB` (default 19456) and `USERS_ARGON2_ITERATIONS` (default 2):
    /// the OWASP argon2id baseline. Tests lower them.
    pub argon2: Argon2Params,
    /// `USERS_HASH_CONCURRENCY`, default: the number of CPUs. Threads computing password
    /// hashes; more requests wait their turn.
    pub hash_concurrency: usize,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen_addr", &self.base.listen_addr)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("admin_email", &self.admin_email)
            .field(
                "admin_password",
                &self.admin_password.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, ConfigErrors> {
        let mut p = EnvParser::new(env);
        let base = BaseConfig::parse(&mut p, &crate::SERVICE);
        let c = Config {
            base,
            issuer: p.string("USERS_JWT_ISSUER", "vantage-users"),
            audience: p.string("USERS_JWT_AUDIENCE", "vantage-api"),
            token_ttl_secs: p.parse("USERS_TOKEN_TTL_SECS", 900),
            admin_email: p.optional("SHOP_ADMIN_EMAIL"),
            admin_password: p.optional("SHOP_ADMIN_PASSWORD"),
            argon2: Argon2Params {
                memory_kib: p.parse("USERS_ARGON2_MEMORY_KIB", 19_456),
                iterations: p.parse("USERS_ARGON2_ITERATIONS", 2),
            },
            hash_concurrency: p.parse(
                "USERS_HASH_CONCURRENCY",
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        };
        if c.hash_concurrency == 0 {
            p.invalid("USERS_HASH_CONCURRENCY", "0", "must be at least 1");
        }
        if c.token_ttl_secs == 0 {
            p.invalid("USERS_TOKEN_TTL_SECS", "0", "must be positive");
        }
        if c.admin_email.is_some() != c.admin_password.is_some() {
            p.error(
                "SHOP_ADMIN_EMAIL",
                "SHOP_ADMIN_EMAIL and SHOP_ADMIN_PASSWORD must be set together",
            );
        }
        if c.argon2.memory_kib < 8 || c.argon2.iterations == 0 {
            p.error(
                "USERS_ARGON2_MEMORY_KIB",
                "USERS_ARGON2_MEMORY_KIB >= 8 and USERS_ARGON2_ITERATIONS >= 1 required",
            );
        }
        p.finish().map(|()| c)
    }
}
