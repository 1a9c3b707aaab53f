//! Property: however a path is spelled, if any common upstream would read it as a path under a
//! protected prefix, the gateway either refuses it or routes it to the protected route — so the
//! upstream never receives it without a verified identity.
//!
//! "Common upstreams" are modelled as readings of the forwarded path: decode every escape once
//! (nginx, most frameworks), twice (a proxy chain that decodes again), with `\` as `/` (IIS),
//! and with `;params` dropped (Tomcat, Spring); each then resolves dot segments and merges
//! slashes.

use proptest::prelude::*;

use super::normalize;
use crate::routing::{compile, select};

const POLICY: &str = "  - {name: audit, match: {path_prefix: /api/audit}, upstream: u, scopes: [admin]}
  - {name: stock, match: {path_regex: \"/api/items/[^/]+/stock\", methods: [GET]}, upstream: u, scopes: [admin]}
  - {name: public, match: {path_prefix: /api}, upstream: u, auth: none}
  - {name: rest, match: {path_prefix: /}, upstream: u, auth: none}
";

static ROUTES: std::sync::LazyLock<Vec<std::sync::Arc<crate::state::Route>>> =
    std::sync::LazyLock::new(|| compile(POLICY));

/// Pieces that path-confusion attacks are made of.
fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "api",
        "audit",
        "items",
        "7",
        "stock",
        "x",
        "AUDIT",
        "aud",
        "it",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2e%2e",
        ".%2e",
        "%252e",
        "%252e%252e",
        "%2f",
        "%2F",
        "%5c",
        "%5C",
        "\\",
        "%00",
        "%c0%ae",
        ";",
        ";x=1",
        "..;",
        "%3b",
        "%61udit",
        "%41",
        "~",
        "%7e",
        "%25",
        "",
        "/",
        "//",
    ])
}

/// A path made of pieces, each joined to the previous one by a `/` or glued to it; the
/// protected prefix is put in front half the time, so most spellings are near it.
fn spelling() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop::collection::vec((piece(), prop::bool::weighted(0.7)), 1..8),
    )
        .prop_map(|(near, parts)| {
            let mut s = String::from(if near { "/api/" } else { "/" });
            for (i, (p, slash)) in parts.iter().enumerate() {
                if i > 0 && *slash {
                    s.push('/');
                }
                s.push_str(p);
            }
            s
        })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn resolve(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// The paths an upstream might serve for the forwarded `path`.
fn readings(path: &str) -> Vec<String> {
    let once = percent_decode(path);
    let twice = percent_decode(&once);
    let mut all = Vec::new();
    for p in [path.to_string(), once, twice] {
        let backslash = p.replace('\\', "/");
        let no_params: String = backslash
            .split('/')
            .map(|s| s.split(';').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("/");
        for r in [&p, &backslash, &no_params] {
            all.push(resolve(r));
        }
    }
    all
}

/// Paths are case-sensitive (RFC 3986 §6.2.2.1), here as in the gateway: a case-insensitive
/// upstream needs a `(?i)` regex route (docs/security.md).
fn under(path: &str, prefix: &str) -> bool {
    path == prefix || path.starts_with(&format!("{prefix}/"))
}

fn is_stock(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    segs.len() == 5 && segs[1] == "api" && segs[2] == "items" && segs[4] == "stock"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn a_protected_path_never_reaches_the_upstream_without_identity(raw in spelling()) {
        let routes = &*ROUTES;
        let Ok(normal) = normalize(&raw) else { return Ok(()) };
        if normal.encoded_slash {
            // No route here opts in to encoded slashes: refused.
            return Ok(());
        }
        let method = http::Method::GET;
        let Ok(route) = select(routes, None, &normal.path, &method) else { return Ok(()) };
        let protected = route.config.auth != crate::config::AuthPolicy::None;
        for reading in readings(&normal.path) {
            if under(&reading, "/api/audit") || is_stock(&reading) {
                prop_assert!(
                    protected,
                    "{raw:?} → forwarded as {:?}, which an upstream may read as {reading:?}, went to public route {:?}",
                    normal.path, route.config.name
                );
            }
        }
    }

    #[test]
    fn normalising_twice_changes_nothing(raw in spelling()) {
        if let Ok(once) = normalize(&raw) {
            let twice = normalize(&once.path).expect("a normalised path normalises");
            prop_assert_eq!(&twice.path, &once.path);
        }
    }
}
