//! `listeners` and `admin`: where the gateway listens, and how the admin listener is protected.

use std::net::SocketAddr;

use super::super::defaults;
use super::super::raw::{RawAdmin, RawListeners};
use super::super::{AdminSettings, Listeners};
use super::Errors;

pub(super) fn listeners_and_admin(
    errs: &mut Errors,
    listeners: Option<serde_yaml::Value>,
    admin: Option<serde_yaml::Value>,
) -> (Listeners, AdminSettings) {
    let RawListeners {
        public,
        admin: admin_addr,
        public_tls,
    } = errs.optional("listeners", listeners);
    let public_tls = public_tls.map(|a| addr(errs, "listeners.public_tls", &a));
    let public = addr(
        errs,
        "listeners.public",
        public.as_deref().unwrap_or(defaults::PUBLIC_LISTENER),
    );
    let admin_addr = addr(
        errs,
        "listeners.admin",
        admin_addr.as_deref().unwrap_or(defaults::ADMIN_LISTENER),
    );

    let RawAdmin {
        token_env,
        allow_public_bind,
    } = errs.optional("admin", admin);
    let allow_public_bind = allow_public_bind.unwrap_or(false);
    if !admin_addr.ip().is_loopback() && !allow_public_bind {
        errs.push(
            "listeners.admin",
            format!(
                "{admin_addr} is not a loopback address; the admin listener exposes metrics and config, \
                 so set admin.allow_public_bind: true if you really mean it"
            ),
        );
    }
    if public == admin_addr {
        errs.push("listeners.admin", "must differ from listeners.public");
    }
    if public_tls.is_some_and(|t| t == public || t == admin_addr) {
        errs.push(
            "listeners.public_tls",
            "must differ from listeners.public and listeners.admin",
        );
    }
    let token_env = token_env.unwrap_or_else(|| defaults::ADMIN_TOKEN_ENV.to_string());
    if token_env.is_empty() {
        errs.push("admin.token_env", "must name an environment variable");
    }
    (
        Listeners {
            public,
            admin: admin_addr,
            public_tls,
        },
        AdminSettings {
            token_env,
            allow_public_bind,
        },
    )
}

fn addr(errs: &mut Errors, loc: &str, s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| {
        errs.push(loc, format!("{s:?} is not an address like 127.0.0.1:8080"));
        SocketAddr::from(([0, 0, 0, 0], 0))
    })
}
