//! The gateway config for this run: the repo's example config with its addresses moved
//! to the ports chosen for this stack.
//!
//! The rewrite is textual on purpose: it does not depend on the gateway's config schema,
//! only on the addresses the example uses (the defaults of every service, 8080 and 9901).
//! The result is then checked with `gateway validate`, so a rewrite that breaks the
//! config is caught before anything listens.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{Config, DEFAULT_BASE_PORT, SERVICES};

/// Default public and admin addresses in the example config.
const DEFAULT_GATEWAY_PORT: u16 = 8080;
const DEFAULT_ADMIN_PORT: u16 = 9901;

/// The result of [`rewrite`]: the new text and the default addresses it did not find
/// (worth a warning: the config may route somewhere this stack does not run).
#[derive(Debug, PartialEq, Eq)]
pub struct Rewritten {
    pub text: String,
    pub missing: Vec<String>,
}

/// Moves every default address in `text` to the address chosen in `config`.
pub fn rewrite(text: &str, config: &Config) -> Rewritten {
    let services: Vec<SocketAddr> = config.services.iter().map(|s| s.addr).collect();
    move_addresses(text, &services, config.gateway_addr, config.admin_addr)
}

/// Moves every default address in `text`: the services' (`services`, in [`SERVICES`] order), the
/// public listener's to `gateway` and the admin listener's to `admin`. For harnesses that pick
/// their own ports; [`rewrite`] does it for a `stack` run.
pub fn move_addresses(
    text: &str,
    services: &[SocketAddr],
    gateway: SocketAddr,
    admin: SocketAddr,
) -> Rewritten {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (i, addr) in services.iter().enumerate() {
        let default_port = DEFAULT_BASE_PORT + i as u16;
        for host in ["127.0.0.1", "localhost"] {
            pairs.push((format!("{host}:{default_port}"), addr.to_string()));
        }
    }
    for host in ["0.0.0.0", "127.0.0.1", "localhost"] {
        pairs.push((
            format!("{host}:{DEFAULT_GATEWAY_PORT}"),
            gateway.to_string(),
        ));
    }
    pairs.push((format!("127.0.0.1:{DEFAULT_ADMIN_PORT}"), admin.to_string()));
    pairs.push((format!("0.0.0.0:{DEFAULT_ADMIN_PORT}"), admin.to_string()));

    let (text, hits) = replace_all_once(text, &pairs);
    let found = |port: u16| {
        pairs
            .iter()
            .zip(&hits)
            .any(|((from, _), &n)| n > 0 && from.ends_with(&format!(":{port}")))
    };
    let mut missing = Vec::new();
    for (i, name) in SERVICES.iter().enumerate() {
        let port = DEFAULT_BASE_PORT + i as u16;
        if !found(port) {
            missing.push(format!("{name} (127.0.0.1:{port})"));
        }
    }
    if !found(DEFAULT_GATEWAY_PORT) {
        missing.push(format!("gateway listener (:{DEFAULT_GATEWAY_PORT})"));
    }
    if !found(DEFAULT_ADMIN_PORT) {
        missing.push(format!("admin listener (:{DEFAULT_ADMIN_PORT})"));
    }
    Rewritten { text, missing }
}

/// Replaces every occurrence of each `from` with its `to` in a single left-to-right pass,
/// so a replacement is never replaced again (7001→7002 then 7002→7003 would chain).
/// A match must not continue with a digit (`:70010` is not `:7001`). Returns the hit
/// count per pair.
fn replace_all_once(text: &str, pairs: &[(String, String)]) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(text.len());
    let mut hits = vec![0; pairs.len()];
    let mut rest = text;
    'outer: while !rest.is_empty() {
        for (i, (from, to)) in pairs.iter().enumerate() {
            if let Some(after) = rest.strip_prefix(from.as_str()) {
                if !after.starts_with(|c: char| c.is_ascii_digit()) {
                    out.push_str(to);
                    hits[i] += 1;
                    rest = after;
                    continue 'outer;
                }
            }
        }
        let ch = rest.chars().next().expect("rest is not empty");
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    (out, hits)
}

/// What [`with_mtls`] adds to a policy.
#[derive(Debug, Clone)]
pub struct GatewayTls<'a> {
    /// The gateway's SVID directory, presented to every service.
    pub svid_dir: &'a Path,
    /// The public TLS listener: its address and the edge certificate and key.
    pub public_tls: Option<(SocketAddr, &'a Path, &'a Path)>,
}

/// Puts every hop of the policy `text` on mutual TLS: each service upstream (named as in
/// [`SERVICES`]) gets `tls:` with the gateway's SVID and that service's SPIFFE ID, the issuer's
/// `jwks_url` becomes `https://` with `jwks_tls:` expecting `users`, and with `public_tls` the
/// public TLS listener and `edge_tls` are added. Returns the text and the services it found no
/// upstream for.
///
/// Textual like [`rewrite`], for the same reason: only the example's shape is assumed (two-space
/// indentation, one `endpoints:` line per upstream); `gateway validate` checks the result.
pub fn with_mtls(text: &str, tls: &GatewayTls<'_>) -> Rewritten {
    let svid = tls.svid_dir.display();
    let block = |workload: &str| {
        format!(
            "{{svid_dir: \"{svid}\", spiffe_ids: [\"{}\"]}}",
            crate::certs::Pki::spiffe_id(workload)
        )
    };
    let mut out = String::with_capacity(text.len() + 2048);
    let mut section = String::new();
    let mut upstream: Option<String> = None;
    let mut secured: Vec<String> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_end();
        if !line.starts_with(' ') && !line.starts_with('#') && trimmed.ends_with(':') {
            section = trimmed.trim_end_matches(':').to_owned();
            upstream = None;
        }
        if section == "upstreams" {
            if let Some(name) = trimmed
                .strip_prefix("  ")
                .filter(|n| !n.starts_with(' '))
                .and_then(|n| n.strip_suffix(':'))
            {
                upstream = Some(name.to_owned());
            }
        }
        if section == "issuers" && line.trim_start().starts_with("jwks_url: http://") {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(&line.replacen("jwks_url: http://", "jwks_url: https://", 1));
            out.push('\n');
            out.push_str(&format!("{indent}jwks_tls: {}\n", block("users")));
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if section == "upstreams" && line.starts_with("    endpoints:") {
            if let Some(name) = upstream.as_deref().filter(|n| SERVICES.contains(n)) {
                out.push_str(&format!("    tls: {}\n", block(name)));
                secured.push(name.to_owned());
            }
        }
        if section == "listeners" && line.trim_start().starts_with("public:") {
            if let Some((addr, _, _)) = tls.public_tls {
                out.push_str(&format!("  public_tls: \"{addr}\"\n"));
            }
        }
    }
    if let Some((_, cert, key)) = tls.public_tls {
        out.push_str(&format!(
            "\n# The public TLS listener (added by stack): its certificate from the stack's CA.\n\
             edge_tls: {{cert_file: \"{}\", key_file: \"{}\"}}\n",
            cert.display(),
            key.display()
        ));
    }
    let missing = SERVICES
        .iter()
        .filter(|s| !secured.iter().any(|x| x == *s))
        .map(|s| format!("upstream {s} (no tls added)"))
        .collect();
    Rewritten { text: out, missing }
}

/// The address the gateway's admin listener answers on, for /readyz.
pub fn admin_addr(config: &Config) -> SocketAddr {
    crate::config::connectable(config.admin_addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Options;
    use clap::Parser as _;

    fn config(args: &[&str]) -> Config {
        let opts =
            Options::try_parse_from(std::iter::once("stack").chain(args.iter().copied())).unwrap();
        Config::from_options(opts, |_| None).unwrap()
    }

    const EXAMPLE: &str = "\
listen: 0.0.0.0:8080
admin: 127.0.0.1:9901
jwks_url: http://127.0.0.1:7001/.well-known/jwks.json
upstreams:
  users: [127.0.0.1:7001]
  inventory: [127.0.0.1:7002]
  cart: [\"localhost:7003\"]
  orders: [127.0.0.1:7004]
  payment: [127.0.0.1:7005]
  shipping: [127.0.0.1:7006]
  audit: [127.0.0.1:7007]
  other: [127.0.0.1:70010]
";

    #[test]
    fn shifting_by_one_does_not_chain() {
        let c = config(&[
            "--base-port",
            "7002",
            "--gateway-addr",
            "127.0.0.1:18080",
            "--admin-addr",
            "127.0.0.1:19901",
        ]);
        let r = rewrite(EXAMPLE, &c);
        assert!(r.missing.is_empty(), "{:?}", r.missing);
        assert!(r.text.contains("listen: 127.0.0.1:18080\n"), "{}", r.text);
        assert!(r.text.contains("admin: 127.0.0.1:19901\n"));
        assert!(r
            .text
            .contains("http://127.0.0.1:7002/.well-known/jwks.json"));
        assert!(r.text.contains("users: [127.0.0.1:7002]"));
        assert!(r.text.contains("inventory: [127.0.0.1:7003]"));
        assert!(r.text.contains("cart: [\"127.0.0.1:7004\"]"));
        assert!(r.text.contains("audit: [127.0.0.1:7008]"));
        assert!(
            r.text.contains("other: [127.0.0.1:70010]"),
            "longer ports are left alone"
        );
    }

    #[test]
    fn defaults_leave_the_config_unchanged_except_localhost() {
        let c = config(&[]);
        let r = rewrite(EXAMPLE, &c);
        assert_eq!(r.text, EXAMPLE.replace("localhost:7003", "127.0.0.1:7003"));
    }

    #[test]
    fn every_service_upstream_and_the_jwks_get_mtls() {
        let example = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../gateway/config/example.yaml"
        ))
        .unwrap();
        let dir = Path::new("/run/pki/svid/gateway");
        let r = with_mtls(
            &example,
            &GatewayTls {
                svid_dir: dir,
                public_tls: Some((
                    "127.0.0.1:8443".parse().unwrap(),
                    Path::new("/run/pki/edge/tls.crt"),
                    Path::new("/run/pki/edge/tls.key"),
                )),
            },
        );
        assert!(r.missing.is_empty(), "{:?}", r.missing);
        assert!(r.text.contains(
            "    endpoints: [\"127.0.0.1:7004\"]\n    tls: {svid_dir: \"/run/pki/svid/gateway\", spiffe_ids: [\"spiffe://vantage.local/orders\"]}\n"
        ), "{}", r.text);
        assert!(r
            .text
            .contains("jwks_url: https://127.0.0.1:7001/.well-known/jwks.json\n    jwks_tls: {svid_dir: \"/run/pki/svid/gateway\", spiffe_ids: [\"spiffe://vantage.local/users\"]}"));
        assert!(r.text.contains("  public_tls: \"127.0.0.1:8443\"\n"));
        assert!(r
            .text
            .contains("edge_tls: {cert_file: \"/run/pki/edge/tls.crt\""));
        assert_eq!(r.text.matches("    tls: ").count(), 7);
    }

    #[test]
    fn absent_addresses_are_reported() {
        let r = rewrite(
            "listen: 0.0.0.0:8080\nusers: 127.0.0.1:7001\n",
            &config(&[]),
        );
        assert_eq!(r.missing.len(), 7, "{:?}", r.missing);
        assert!(r.missing[0].starts_with("inventory"));
        assert!(r.missing.last().unwrap().starts_with("admin"));
    }
}
