//! Who the client is, and what the gateway tells the upstream about it.
//!
//! By default the gateway is the edge: the TCP peer is the client, and whatever
//! `X-Forwarded-For` / `X-Forwarded-Proto` a client sends is discarded (it is trivially forged).
//! Behind a load balancer or CDN, list its networks in `server.trusted_proxies`: when the TCP peer
//! is trusted, its `X-Forwarded-For` is read right to left, skipping addresses that are trusted
//! too, and the first untrusted address is the client — the address rate limits key on, the
//! access log records and spans report as `client.address`. Entries left of it were written by
//! the client itself and are dropped.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// The forwarding headers, by ready names (read from the client's request, written to the
/// upstream's): a `&str` name would be parsed on every use.
pub(crate) const X_FORWARDED_FOR: http::HeaderName =
    http::HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: http::HeaderName =
    http::HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: http::HeaderName =
    http::HeaderName::from_static("x-forwarded-host");

/// The client as the gateway sees it, and the forwarding headers to send upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForwardedClient {
    /// The client's address.
    pub(crate) ip: IpAddr,
    /// `X-Forwarded-For` for the upstream: the client, then every trusted hop, ending with the
    /// TCP peer.
    pub(crate) forwarded_for: String,
    /// `X-Forwarded-Proto` for the upstream: a trusted proxy's `http`/`https`, else `http`.
    pub(crate) proto: &'static str,
}

impl ForwardedClient {
    /// The client's address as text: the first entry of [`ForwardedClient::forwarded_for`],
    /// formatted once.
    pub(crate) fn client_text(&self) -> &str {
        self.forwarded_for
            .split(',')
            .next()
            .unwrap_or(&self.forwarded_for)
    }
}

/// Resolves the client of a request that arrived from `peer` with `headers`, over a connection
/// that was `own_proto` (`https` on the TLS listener). `X-Forwarded-For` (every value, in
/// order) and `X-Forwarded-Proto` are looked up only when `peer` is a `trusted` proxy.
pub(crate) fn resolve(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    own_proto: &'static str,
) -> ForwardedClient {
    // One spelling per client: an IPv4 client on a dual-stack socket is its IPv4 address.
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return ForwardedClient {
            ip: peer,
            forwarded_for: ip_string(peer),
            proto: own_proto,
        };
    }
    // Right to left: the nearest hop first. An entry that is not an address ends the walk:
    // nothing left of it can be believed.
    let hops: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut chain = vec![peer];
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else { break };
        chain.push(ip);
        if !is_trusted(&ip) {
            break;
        }
    }
    let ip = *chain.last().unwrap_or(&peer);
    let forwarded_for = chain
        .iter()
        .rev()
        .map(|ip| ip_string(*ip))
        .collect::<Vec<_>>()
        .join(", ");
    let proto = match headers
        .get(&X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    ForwardedClient {
        ip,
        forwarded_for,
        proto,
    }
}

pub(crate) use observability::http_trace::ip_string;

/// An `X-Forwarded-For` entry: an address, optionally with a port (`203.0.113.7:4711`,
/// `[2001:db8::1]:443`).
/// `[2001:db8::1]` without a port too; IPv4-mapped IPv6 (`::ffff:192.0.2.1`) is read as IPv4.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let bare = hop.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    bare.unwrap_or(hop)
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn addresses_are_canonical_whatever_their_spelling() {
        assert_eq!(parse_hop("[2001:db8::1]"), "2001:db8::1".parse().ok());
        assert_eq!(parse_hop("[2001:db8::1]:443"), "2001:db8::1".parse().ok());
        assert_eq!(parse_hop("192.0.2.1:8080"), "192.0.2.1".parse().ok());
        assert_eq!(parse_hop("::ffff:192.0.2.1"), "192.0.2.1".parse().ok());
        let mapped = run("::ffff:127.0.0.1", &[], None, &[]);
        assert_eq!(mapped.ip.to_string(), "127.0.0.1");
        assert_eq!(mapped.forwarded_for, "127.0.0.1");
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn run(peer: &str, xff: &[&str], proto: Option<&str>, trusted: &[&str]) -> ForwardedClient {
        let mut headers = HeaderMap::new();
        for v in xff {
            headers.append(&X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        if let Some(p) = proto {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_str(p).unwrap());
        }
        let c = resolve(peer.parse().unwrap(), &headers, &nets(trusted), "http");
        assert_eq!(
            c.client_text(),
            c.ip.to_string(),
            "the chain starts with the client"
        );
        c
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_and_headers_are_ignored() {
        let c = run("198.51.100.9", &["6.6.6.6"], Some("https"), &[]);
        assert_eq!(c.ip.to_string(), "198.51.100.9");
        assert_eq!(c.forwarded_for, "198.51.100.9");
        assert_eq!(c.proto, "http");
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_its_address() {
        let c = run("198.51.100.9", &["10.0.0.1"], None, &["10.0.0.0/8"]);
        assert_eq!(c.ip.to_string(), "198.51.100.9");
        assert_eq!(c.forwarded_for, "198.51.100.9");
    }

    #[test]
    fn behind_a_trusted_proxy_the_first_untrusted_hop_is_the_client() {
        // The client forged 6.6.6.6; the CDN (trusted) appended the real client, the LB the CDN.
        let c = run(
            "10.0.0.2",
            &["6.6.6.6, 203.0.113.7", "192.0.2.10"],
            Some("HTTPS"),
            &["10.0.0.0/8", "192.0.2.0/24"],
        );
        assert_eq!(c.ip.to_string(), "203.0.113.7");
        assert_eq!(c.forwarded_for, "203.0.113.7, 192.0.2.10, 10.0.0.2");
        assert_eq!(c.proto, "https");
    }

    #[test]
    fn a_malformed_entry_stops_the_walk_at_the_last_good_hop() {
        let c = run("10.0.0.2", &["203.0.113.7, bogus"], None, &["10.0.0.0/8"]);
        assert_eq!(c.ip.to_string(), "10.0.0.2");
        assert_eq!(c.forwarded_for, "10.0.0.2");
        assert_eq!(c.proto, "http");
    }

    #[test]
    fn ports_and_ipv6_are_understood_and_all_trusted_means_the_leftmost() {
        let c = run(
            "::1",
            &["[2001:db8::7]:443, 127.0.0.1:80"],
            None,
            &["::1/128", "127.0.0.0/8", "2001:db8::/32"],
        );
        assert_eq!(c.ip.to_string(), "2001:db8::7");
        assert_eq!(c.forwarded_for, "2001:db8::7, 127.0.0.1, ::1");
    }

    #[test]
    fn no_header_from_a_trusted_peer_leaves_the_peer() {
        let c = run("10.0.0.2", &[], None, &["10.0.0.0/8"]);
        assert_eq!(c.ip.to_string(), "10.0.0.2");
        assert_eq!(c.forwarded_for, "10.0.0.2");
    }
}
