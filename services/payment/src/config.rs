use std::path::{Path, PathBuf};
use std::time::Duration;

use service_kit::{BaseConfig, ConfigErrors, EnvParser, EnvSource};

use crate::provider::ProviderConfig;

#[derive(Debug, Clone)]
pub struct Config {
    pub base: BaseConfig,
    pub provider: ProviderConfig,
    /// `PAYMENT_PROVIDER_LEDGER`, default the database path (`DATABASE_PATH`) with
    /// `-provider.db` in place of its extension (`data/payment-provider.db`): the simulated
    /// provider's own SQLite file ([`crate::provider`]), apart from payment's database. Its
    /// directory is created.
    pub provider_ledger: PathBuf,
}

/// `data/payment.db` → `data/payment-provider.db`.
fn default_ledger(database: &Path) -> PathBuf {
    let stem = database
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "payment".to_owned());
    database.with_file_name(format!("{stem}-provider.db"))
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
        let ledger_default = default_ledger(&base.database_path);
        let provider_ledger =
            PathBuf::from(p.string("PAYMENT_PROVIDER_LEDGER", &ledger_default.to_string_lossy()));
        if provider_ledger == base.database_path {
            p.invalid(
                "PAYMENT_PROVIDER_LEDGER",
                provider_ledger.display().to_string(),
                "must not be payment's own database (DATABASE_PATH)",
            );
        }
        p.finish().map(|()| Config {
            base,
            provider,
            provider_ledger,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_ledger_sits_beside_the_database_unless_told() {
        let env: BTreeMap<&str, &str> = [
            ("SVID_DIR", "/svid"),
            ("DATABASE_PATH", "/var/lib/shop/payment.db"),
        ]
        .into();
        let c = Config::from_env(&env).unwrap();
        assert_eq!(
            c.provider_ledger,
            Path::new("/var/lib/shop/payment-provider.db")
        );
        let env: BTreeMap<&str, &str> = [
            ("SVID_DIR", "/svid"),
            ("PAYMENT_PROVIDER_LEDGER", "/elsewhere/ledger.db"),
        ]
        .into();
        let c = Config::from_env(&env).unwrap();
        assert_eq!(c.provider_ledger, Path::new("/elsewhere/ledger.db"));
    }

    #[test]
    fn the_ledger_is_not_the_database() {
        let env: BTreeMap<&str, &str> = [
            ("SVID_DIR", "/svid"),
            ("DATABASE_PATH", "data/payment.db"),
            ("PAYMENT_PROVIDER_LEDGER", "data/payment.db"),
        ]
        .into();
        let errors = Config::from_env(&env).unwrap_err();
        let variables: Vec<&str> = errors.0.iter().map(|e| e.variable).collect();
        assert_eq!(variables, ["PAYMENT_PROVIDER_LEDGER"], "{errors:?}");
    }
}
