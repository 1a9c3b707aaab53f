//! Unit tests of [`Config::parse`]: defaults, every error with its location, "did you mean",
//! golden files for the shipped policies, and the docs' defaults against [`defaults`].

use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, Path::new("."))
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const MINIMAL: &str = "upstreams:\n  u: {endpoints: [\"127.0.0.1:1\"]}\n\
                       routes:\n  - {name: r, match: {path_prefix: /}, upstream: u, auth: none}\n";

#[test]
fn a_minimal_policy_gets_every_default() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.listeners.public.to_string(), defaults::PUBLIC_LISTENER);
    assert_eq!(c.listeners.admin.to_string(), defaults::ADMIN_LISTENER);
    assert_eq!(c.admin.token_env, defaults::ADMIN_TOKEN_ENV);
    assert_eq!(c.server.max_body_bytes, defaults::MAX_BODY_BYTES);
    assert_eq!(c.server.realm, defaults::REALM);
    assert_eq!(
        c.identity_headers,
        [
            HeaderName::from_static("x-user-id"),
            HeaderName::from_static("x-user-scopes")
        ]
    );
    let u = &c.upstreams["u"];
    assert_eq!(u.load_balancing, LoadBalancing::RoundRobin);
    assert_eq!(
        u.connect_timeout,
        Duration::from_millis(defaults::CONNECT_TIMEOUT_MS)
    );
    assert_eq!(
        u.read_timeout,
        Duration::from_millis(defaults::READ_TIMEOUT_MS)
    );
    assert_eq!(u.retries, defaults::RETRIES);
    assert!(u.health_check.is_none());
    assert_eq!(
        u.circuit_breaker.failure_threshold,
        defaults::BREAKER_FAILURE_THRESHOLD
    );
    let r = &c.routes[0];
    assert_eq!(r.auth, AuthPolicy::None);
    assert_eq!(r.max_body_bytes, defaults::MAX_BODY_BYTES);
    assert!(matches!(&r.path, PathMatch::Prefix(p) if p.is_empty()));
}

#[test]
fn auth_is_required_unless_a_route_says_otherwise() {
    let text =
        "issuers:\n  i: {issuer: x, algorithms: [ES256], jwks_url: \"http://127.0.0.1:1/jwks\"}\n\
                upstreams:\n  u: {endpoints: [\"127.0.0.1:1\"]}\n\
                routes:\n  - {name: r, match: {path_prefix: /}, upstream: u}\n";
    let c = parse(text).unwrap();
    assert_eq!(
        c.routes[0].auth,
        AuthPolicy::Required {
            scopes: vec![],
            issuers: vec![],
            mode: Mode::Enforce,
        }
    );
}

#[test]
fn closed_sets_parse_and_list_their_values() {
    assert_eq!(
        "least_connections".parse(),
        Ok(LoadBalancing::LeastConnections)
    );
    assert_eq!("none".parse(), Ok(AuthMode::None));
    assert_eq!(
        "hour".parse::<Per>().map(Per::duration),
        Ok(Duration::from_secs(3600))
    );
    for name in LoadBalancing::NAMES {
        assert_eq!(name.parse::<LoadBalancing>().unwrap().name(), *name);
    }
    assert_eq!("claim:sub".parse(), Ok(KeyPart::Claim("sub".into())));
    assert_eq!(
        "header:X-Api-Key".parse(),
        Ok(KeyPart::Header(HeaderName::from_static("x-api-key")))
    );
    assert_eq!("client_ip".parse(), Ok(KeyPart::ClientIp));
    let e = "clientip".parse::<KeyPart>().unwrap_err().to_string();
    assert!(e.contains("did you mean \"client_ip\"?"), "{e}");
    let e = "claims:sub".parse::<KeyPart>().unwrap_err().to_string();
    assert!(e.contains("did you mean \"claim:sub\"?"), "{e}");
    let e = "claim:".parse::<KeyPart>().unwrap_err().to_string();
    assert!(e.contains("names no claim"), "{e}");
}

#[test]
fn every_error_is_listed_with_its_location_and_a_suggestion() {
    let text = "upstreams:\n  orders: {endpoints: [\"127.0.0.1:1\"], load_balancing: round-robin}\n\
                issuers:\n  shop: {issuer: x, algorithms: [ES256], jwks_url: \"http://127.0.0.1:1/jwks\"}\n\
                rate_limits:\n  per_user: {key: [claim:sub, clientip], rate: 1, per: minutes}\n\
                routes:\n  - {name: a, match: {path_prefix: /a}, upstream: ordrs, rate_limits: [per_usr], issuers: [shpo]}\n\
                \x20 - {name: b, match: {path_prefix: /b}, upstream: orders, auth: requried}\n";
    let errs = errors(text);
    let expect = [
        (
            "upstreams.orders.load_balancing",
            "did you mean \"round_robin\"?",
        ),
        ("rate_limits.per_user.key[1]", "did you mean \"client_ip\"?"),
        ("rate_limits.per_user.per", "did you mean \"minute\"?"),
        ("routes[0] \"a\".upstream", "did you mean \"orders\"?"),
        (
            "routes[0] \"a\".rate_limits[0]",
            "did you mean \"per_user\"?",
        ),
        ("routes[0] \"a\".issuers[0]", "did you mean \"shop\"?"),
        ("routes[1] \"b\".auth", "did you mean \"required\"?"),
    ];
    for (location, hint) in expect {
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("{location}:")) && e.contains(hint)),
            "no error at {location} with {hint:?}:\n{}",
            errs.join("\n")
        );
    }
    assert_eq!(errs.len(), expect.len(), "{}", errs.join("\n"));
}

#[test]
fn stores_are_checked_and_a_misspelt_store_gets_a_suggestion() {
    let text = "stores:\n  shared: {redis: \"redis://127.0.0.1:6379/0\", timeout_ms: 5, on_error: deny}\n\
                \x20 bad: {redis: \"http://user:hunter2@cache:6379\", timeout_ms: 0, on_error: fail-open, key_prefix: \"a b\"}\n\
                revocations: {store: sharde}\n\
                rate_limits:\n  p: {key: [client_ip], rate: 1, per: second, store: shraed}\n\
                upstreams:\n  u: {endpoints: [\"127.0.0.1:1\"]}\n\
                routes:\n  - {name: a, match: {path_prefix: /a}, upstream: u, auth: none, rate_limits: [p]}\n";
    let errs = errors(text);
    let expect = [
        ("stores.bad.redis", "scheme \"http\" is not supported"),
        ("stores.bad.timeout_ms", "greater than 0"),
        ("stores.bad.on_error", "is not one of allow, deny"),
        ("stores.bad.key_prefix", "without spaces"),
        ("revocations.store", "did you mean \"shared\"?"),
        ("rate_limits.p.store", "did you mean \"shared\"?"),
    ];
    for (location, hint) in expect {
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("{location}:")) && e.contains(hint)),
            "no error at {location} with {hint:?}:\n{}",
            errs.join("\n")
        );
    }
    assert_eq!(errs.len(), expect.len(), "{}", errs.join("\n"));
    assert!(
        !errs.iter().any(|e| e.contains("hunter2")),
        "a store URL's password is never repeated: {errs:?}"
    );

    let ok = parse(&text.replace("  bad: {redis: \"http://user:hunter2@cache:6379\", timeout_ms: 0, on_error: fail-open, key_prefix: \"a b\"}\n", "").replace("sharde", "shared").replace("shraed", "shared")).unwrap();
    let store = &ok.stores["shared"];
    assert_eq!(store.timeout, std::time::Duration::from_millis(5));
    assert_eq!(store.on_error, super::OnError::Deny);
    assert_eq!(store.key_prefix, "vantage");
    assert_eq!(ok.rate_limits["p"].store.as_deref(), Some("shared"));
    assert_eq!(ok.revocations.store.as_deref(), Some("shared"));

    let secret = parse(&MINIMAL.replace(
        "routes:",
        "stores:\n  s: {redis: \"redis://gw:hunter2@cache:6379/0\"}\nroutes:",
    ))
    .unwrap();
    let shown = secret.redacted_json().to_string();
    assert!(
        !shown.contains("hunter2") && shown.contains("cache:6379"),
        "{shown}"
    );
}

#[test]
fn a_syntax_error_names_its_line() {
    let errs = errors("routes: [\n");
    assert!(errs[0].starts_with("line "), "{errs:?}");
}

#[test]
fn unknown_fields_are_errors() {
    let errs = errors(&MINIMAL.replace("auth: none", "auth: none, scoeps: [x]"));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("routes[0] \"r\"") && e.contains("scoeps")),
        "{errs:?}"
    );
}

// === golden files ===

/// `gateway/config/NAME.yaml` parsed and shown as `/config` shows it (paths relative to the
/// crate, `workers` fixed), compared with `gateway/config/golden/NAME.json`. After an intended
/// change, regenerate with `UPDATE_GOLDEN=1 cargo test -p gateway golden` and review the diff.
/// Where the compose policy expects the gateway's SVID (its `svid-gateway` volume).
const SVID_MOUNT: &str = "/var/run/secrets/spiffe";

fn golden(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config_dir = dir.join("config");
    let text = std::fs::read_to_string(config_dir.join(format!("{name}.yaml"))).unwrap();
    // A policy written for a container (compose) names the SVID mount, which validation reads:
    // point it at an SVID issued here for the run, and show the mount path again.
    let svid = std::env::temp_dir().join(format!("vantage-golden-{name}-{}", std::process::id()));
    let mounted = text.contains(SVID_MOUNT);
    if mounted {
        identity::dev_ca::DevCa::new("golden test CA")
            .unwrap()
            .write_svid(
                &svid,
                &"spiffe://vantage.local/gateway".parse().unwrap(),
                std::time::Duration::from_secs(3600),
            )
            .unwrap();
    }
    let text = text.replace(SVID_MOUNT, svid.to_str().unwrap());
    let config = Config::parse(&text, &config_dir).unwrap_or_else(|e| panic!("{name}.yaml: {e}"));
    if mounted {
        std::fs::remove_dir_all(&svid).unwrap();
    }
    let mut json = config.redacted_json();
    json["server"]["workers"] = 0.into();
    let actual = serde_json::to_string_pretty(&json)
        .unwrap()
        .replace(svid.to_str().unwrap(), SVID_MOUNT)
        .replace(&format!("{}/", dir.display()), "");
    let path = dir.join("config/golden").join(format!("{name}.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{actual}\n")).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (create it with UPDATE_GOLDEN=1)", path.display()));
    if let Some((i, (a, e))) = actual
        .lines()
        .zip(expected.lines())
        .enumerate()
        .find(|(_, (a, e))| a != e)
    {
        panic!(
            "{name}.yaml no longer parses to {} — line {}: got {a:?}, golden has {e:?}",
            path.display(),
            i + 1
        );
    }
    assert_eq!(
        actual.lines().count(),
        expected.lines().count(),
        "{name}.yaml no longer parses to {} (length differs)",
        path.display()
    );
}

#[test]
fn golden_example_policy() {
    golden("example");
    let c =
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.yaml")).unwrap();
    // The facts the shop's security rests on, spelled out beside the snapshot.
    let audit = c.routes.iter().find(|r| r.name == "audit").unwrap();
    assert_eq!(
        audit.auth,
        AuthPolicy::Required {
            scopes: vec!["admin".into()],
            issuers: vec![],
            mode: Mode::Enforce,
        }
    );
    let stock = c.routes.iter().position(|r| r.name == "products-stock");
    let read = c.routes.iter().position(|r| r.name == "products-read");
    assert!(
        stock < read,
        "the admin stock route must come before the public catalogue"
    );
    assert_eq!(c.issuers["shop"].max_lifetime_secs, 3600);
}

#[test]
fn golden_compose_policy() {
    golden("compose");
}

// === docs ===

/// Every "`value` (`NAME`)" in docs/gateway-config.md states the value of `defaults::NAME`,
/// and every default is documented.
#[test]
fn documented_defaults_are_the_defaults() {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/gateway-config.md"
    ))
    .unwrap();
    let cited = Regex::new(r"`([^`]+)` \(`([A-Z][A-Z0-9_]+)`").unwrap();
    let known = defaults::by_name();
    let mut seen = std::collections::BTreeSet::new();
    for c in cited.captures_iter(&docs) {
        let (value, name) = (&c[1], &c[2]);
        let Some((_, actual)) = known.iter().find(|(n, _)| *n == name) else {
            panic!("docs cite {name}, which is not in config/defaults.rs");
        };
        assert_eq!(value, actual, "docs say {name} is {value}");
        seen.insert(name.to_string());
    }
    for (name, _) in &known {
        assert!(
            seen.contains(*name),
            "{name} is not documented in docs/gateway-config.md"
        );
    }
}

// === warnings ===

fn warnings(routes: &str) -> Vec<String> {
    let text = format!(
        "issuers:\n  i: {{issuer: x, algorithms: [ES256], jwks_url: \"http://127.0.0.1:1/k\"}}\n\
         upstreams:\n  u: {{endpoints: [\"127.0.0.1:1\"]}}\nroutes:\n{routes}"
    );
    parse(&text)
        .unwrap()
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_route_an_earlier_one_covers_is_reported_unreachable() {
    let w = warnings(
        "  - {name: api, match: {path_prefix: /api}, upstream: u, auth: none}\n\
         \x20 - {name: audit, match: {path_prefix: /api/audit}, upstream: u, scopes: [admin]}\n",
    );
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("routes[1] \"audit\": is unreachable"),
        "{w:?}"
    );
}

#[test]
fn overlapping_routes_with_different_protection_are_reported() {
    let w = warnings(
        "  - {name: audit, match: {path_prefix: /api/audit}, upstream: u, scopes: [admin]}\n\
         \x20 - {name: api, match: {path_prefix: /api}, upstream: u, auth: none}\n\
         \x20 - {name: me, match: {path_exact: /api/me}, upstream: u, auth: none}\n",
    );
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].contains("routes[1] \"api\": overlaps routes[0] \"audit\""),
        "{w:?}"
    );
    assert!(w[0].contains("auth: none vs scopes [admin]"), "{w:?}");
    assert!(w[1].contains("routes[2] \"me\": is unreachable"), "{w:?}");
}

#[test]
fn routes_sharing_a_path_by_method_or_with_equal_protection_are_quiet() {
    let w = warnings(
        "  - {name: get, match: {path_exact: /a, methods: [GET]}, upstream: u, auth: none}\n\
         \x20 - {name: post, match: {path_exact: /a, methods: [POST]}, upstream: u}\n\
         \x20 - {name: b-x, match: {host: h.example, path_prefix: /b/x}, upstream: u}\n\
         \x20 - {name: b, match: {path_prefix: /b}, upstream: u}\n",
    );
    assert!(w.is_empty(), "{w:?}");
}

#[test]
fn shadow_mode_on_limits_and_route_auth_with_every_error_listed() {
    let issuers =
        "issuers:\n  i: {issuer: x, algorithms: [ES256], jwks_url: \"http://127.0.0.1:1/jwks\"}\n\
         upstreams:\n  u: {endpoints: [\"127.0.0.1:1\"]}\n";
    let c = parse(&format!(
        "{issuers}rate_limits:\n  p: {{key: [client_ip], rate: 1, per: second, mode: shadow}}\n  \
         q: {{key: [client_ip], rate: 1, per: second}}\n\
         routes:\n  - {{name: r, match: {{path_prefix: /}}, upstream: u, auth_mode: shadow, rate_limits: [p, q]}}\n"
    ))
    .unwrap();
    assert_eq!(c.rate_limits["p"].mode, Mode::Shadow);
    assert_eq!(
        c.rate_limits["q"].mode,
        Mode::Enforce,
        "enforce is the default"
    );
    assert_eq!(c.routes[0].auth.mode(), Mode::Shadow);
    let errs = errors(&format!(
        "{issuers}rate_limits:\n  p: {{key: [client_ip], rate: 1, per: second, mode: shadwo}}\n\
         routes:\n  - {{name: r, match: {{path_prefix: /a}}, upstream: u, auth_mode: dry}}\n  \
         - {{name: s, match: {{path_prefix: /b}}, upstream: u, auth: none, auth_mode: shadow}}\n"
    ));
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        errs[0].starts_with("rate_limits.p.mode: ") && errs[0].contains("did you mean \"shadow\""),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("routes[0] \"r\".auth_mode: "),
        "{errs:?}"
    );
    assert!(errs[1].contains("enforce, shadow"), "{errs:?}");
    assert!(
        errs[2].starts_with("routes[1] \"s\".auth_mode: auth: none has nothing to shadow"),
        "{errs:?}"
    );
}

#[test]
fn the_connection_read_buffer_may_be_off_and_is_bounded() {
    assert_eq!(parse(MINIMAL).unwrap().server.connections.buffer_bytes, 0);
    let with = |bytes: usize| format!("server: {{connection_buffer_bytes: {bytes}}}\n{MINIMAL}");
    assert_eq!(
        parse(&with(16384)).unwrap().server.connections.buffer_bytes,
        16384
    );
    let errs = errors(&with(2 * 1024 * 1024));
    assert!(
        errs.iter()
            .any(|e| e.contains("server.connection_buffer_bytes") && e.contains("at most 1048576")),
        "{errs:?}"
    );
}
