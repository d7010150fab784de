//! Whose word about a client's address is taken. An Authorize caller names the address of
//! the client it checks; a key fenced to a network would be worthless if anyone could name
//! an address inside it. So the named address counts only from a trusted caller (a gateway
//! or proxy, recognised by its client certificate or its network); from anyone else the
//! address the call itself comes from is used.
//!
//! Forward-auth has the same question in HTTP's terms: the proxy in front names the client
//! in `X-Forwarded-For` (or `X-Real-IP`), and that counts only when the connection comes
//! from one of the configured [`ForwardAuthConfig::trusted_proxies`].

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::tls::PeerIdentity;

/// Settings of the Authorize RPC.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthorizeConfig {
    /// Callers whose `client_address` is believed.
    pub trusted_callers: TrustedCallers,
}

/// Callers whose word about their client's address is believed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustedCallers {
    /// Client-certificate names (SAN URI, SAN DNS name or subject CN); needs mutual TLS on
    /// the data plane.
    pub identities: Vec<String>,
    /// Networks the calls come from (`10.0.0.0/8`, `2001:db8::/32`).
    pub networks: Vec<IpNet>,
}

/// Settings of forward-auth (`/forward-auth` on the data plane).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardAuthConfig {
    /// Networks of the proxies (nginx, Traefik, Caddy, Envoy) whose `X-Forwarded-For` and
    /// `X-Real-IP` are believed. Empty: the client is whoever connects.
    pub trusted_proxies: Vec<IpNet>,
}

impl ForwardAuthConfig {
    /// Refuses a network that holds every address: then any client could connect from
    /// inside it and name its own address. Returns the offending field and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self
            .trusted_proxies
            .iter()
            .position(|net| net.prefix_len() == 0)
        {
            Some(i) => Err((
                format!("forward_auth.trusted_proxies[{i}]"),
                format!(
                    "{} trusts every address, so any client could name its own; list the networks your proxies connect from",
                    self.trusted_proxies[i]
                ),
            )),
            None => Ok(()),
        }
    }

    /// Whether connections from `ip` come from a trusted proxy.
    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client address a forward-auth request from `peer` is judged on.
    ///
    /// From an untrusted peer, or without one, the peer's own address: whatever it says in
    /// headers is the client's word. From a trusted proxy, the `X-Forwarded-For` entries
    /// (`forwarded_for`, the header's values in the order received) are read from the
    /// right, each hop appending the address it received the request from; the first
    /// entry outside the trusted networks is the client. Entries further left were written
    /// by that client (or by proxies nobody vouches for) and could be anything, so the
    /// leftmost entry, which a client can set at will, is never taken over it. When every
    /// entry is a trusted address, the leftmost is the client (a request from inside a
    /// proxy's network). Without `X-Forwarded-For`, `X-Real-IP` (`real_ip`) names the
    /// client.
    ///
    /// `None` when a trusted proxy does not say who the client is, or says it with an entry
    /// that is not an address (`unknown`, an obfuscated name, garbage): a key fenced to a
    /// network is then refused, never judged on the proxy's own address.
    pub fn client_ip<'h>(
        &self,
        peer: Option<IpAddr>,
        forwarded_for: impl DoubleEndedIterator<Item = &'h str>,
        real_ip: Option<&'h str>,
    ) -> Option<IpAddr> {
        let peer = peer.map(|ip| ip.to_canonical());
        if !peer.is_some_and(|ip| self.trusts(ip)) {
            return peer;
        }
        let mut entries = forwarded_for
            .rev()
            .flat_map(|value| value.rsplit(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .peekable();
        if entries.peek().is_none() {
            return real_ip.and_then(hop_address);
        }
        let mut leftmost = None;
        for entry in entries {
            let ip = hop_address(entry)?;
            if !self.trusts(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
        leftmost
    }
}

/// The address of one `X-Forwarded-For` entry: an IP address, possibly with a port
/// (`203.0.113.7:4711`, `[2001:db8::7]:443`) or in brackets; IPv4-mapped IPv6 addresses are
/// read as IPv4.
fn hop_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<std::net::SocketAddr>().map(|s| s.ip()))
        .or_else(|_| {
            (entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')))
                .unwrap_or_default()
                .parse::<IpAddr>()
        })
        .ok()?;
    Some(ip.to_canonical())
}

/// Who made a call, as the connection shows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer<'a> {
    /// The address the connection comes from.
    pub addr: Option<IpAddr>,
    /// The names its verified client certificate proves, with mutual TLS.
    pub identity: Option<&'a PeerIdentity>,
}

impl TrustedCallers {
    /// Whether `peer` is trusted.
    pub fn trusts(&self, peer: Peer<'_>) -> bool {
        peer.identity
            .is_some_and(|id| id.is_any_of(&self.identities))
            || peer
                .addr
                .is_some_and(|ip| self.networks.iter().any(|net| net.contains(&ip)))
    }

    /// The client address a call from `peer` is judged on: `named` when the peer is trusted
    /// and named one, otherwise the peer's own address.
    pub fn client_ip(&self, named: Option<IpAddr>, peer: Peer<'_>) -> Option<IpAddr> {
        match named {
            Some(ip) if self.trusts(peer) => Some(ip),
            _ => peer.addr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_address_counts_only_from_a_trusted_caller() {
        let trusted = TrustedCallers {
            identities: vec!["spiffe://mesh/gateway".into()],
            networks: vec!["10.0.0.0/8".parse().unwrap()],
        };
        let gateway = PeerIdentity {
            names: vec!["spiffe://mesh/gateway".into()],
        };
        let stranger = PeerIdentity {
            names: vec!["spiffe://mesh/batch".into()],
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let named = Some(ip("203.0.113.7"));
        let table = [
            (Some(ip("10.1.2.3")), None, named, Some(ip("203.0.113.7"))),
            (Some(ip("192.0.2.1")), None, named, Some(ip("192.0.2.1"))),
            (
                Some(ip("192.0.2.1")),
                Some(&gateway),
                named,
                Some(ip("203.0.113.7")),
            ),
            (
                Some(ip("192.0.2.1")),
                Some(&stranger),
                named,
                Some(ip("192.0.2.1")),
            ),
            (Some(ip("10.1.2.3")), None, None, Some(ip("10.1.2.3"))),
            (None, None, named, None),
        ];
        for (addr, identity, named, judged) in table {
            let peer = Peer { addr, identity };
            assert_eq!(trusted.client_ip(named, peer), judged, "{peer:?}");
        }
        assert!(!TrustedCallers::default().trusts(Peer {
            addr: Some(ip("127.0.0.1")),
            identity: Some(&gateway),
        }));
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy_read_from_the_right() {
        let config = ForwardAuthConfig {
            trusted_proxies: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8:1::/48".parse().unwrap(),
            ],
        };
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let proxy = ip("10.0.0.2");
        let stranger = ip("192.0.2.1");
        /// The peer, the X-Forwarded-For values, X-Real-IP, and the address judged.
        type Case<'a> = (
            Option<IpAddr>,
            &'a [&'a str],
            Option<&'a str>,
            Option<IpAddr>,
        );
        let table: [Case; 22] = [
            // An untrusted peer's headers are its own word.
            (stranger, &["203.0.113.7"], None, stranger),
            (stranger, &[], Some("203.0.113.7"), stranger),
            (None, &["203.0.113.7"], None, None),
            // A trusted proxy names the client.
            (proxy, &["203.0.113.7"], None, ip("203.0.113.7")),
            (proxy, &["203.0.113.7:4711"], None, ip("203.0.113.7")),
            (proxy, &["[2001:db8::7]:443"], None, ip("2001:db8::7")),
            (proxy, &["[2001:db8::7]"], None, ip("2001:db8::7")),
            (proxy, &["::ffff:203.0.113.7"], None, ip("203.0.113.7")),
            // Multi-hop: trusted hops are skipped from the right; the client's own claims
            // to the left of the first untrusted entry are not believed.
            (
                proxy,
                &["198.51.100.1, 203.0.113.7, 10.0.0.9"],
                None,
                ip("203.0.113.7"),
            ),
            (
                proxy,
                &["198.51.100.1", "203.0.113.7", "10.0.0.9"],
                None,
                ip("203.0.113.7"),
            ),
            (proxy, &["10.9.9.9, 203.0.113.7"], None, ip("203.0.113.7")),
            (
                proxy,
                &["203.0.113.7, 2001:db8:1::5"],
                None,
                ip("203.0.113.7"),
            ),
            (proxy, &["garbage, 203.0.113.7"], None, ip("203.0.113.7")),
            // Only trusted hops: the leftmost is the client, inside a proxy network.
            (proxy, &["10.1.2.3, 10.0.0.9"], None, ip("10.1.2.3")),
            // Garbage where a trusted proxy should have written an address: unknown.
            (proxy, &["203.0.113.7, unknown"], None, None),
            (proxy, &["203.0.113.7, 10.0.0.9, _hidden"], None, None),
            (proxy, &["1.2.3"], None, None),
            (proxy, &["203.0.113.7 10.0.0.9"], None, None),
            // Empty entries are skipped; no entry at all falls back to X-Real-IP.
            (proxy, &[" , 203.0.113.7 ,, "], None, ip("203.0.113.7")),
            (proxy, &[], Some(" 203.0.113.7 "), ip("203.0.113.7")),
            (proxy, &[""], Some("not an address"), None),
            (proxy, &[], None, None),
        ];
        for (peer, forwarded_for, real_ip, judged) in table {
            assert_eq!(
                config.client_ip(peer, forwarded_for.iter().copied(), real_ip),
                judged,
                "{peer:?} {forwarded_for:?} {real_ip:?}"
            );
        }
        // An IPv4-mapped peer is the IPv4 proxy.
        assert_eq!(
            config.client_ip(ip("::ffff:10.0.0.2"), ["203.0.113.7"].into_iter(), None),
            ip("203.0.113.7")
        );
        // Nothing trusted: the peer, whatever the headers say.
        assert_eq!(
            ForwardAuthConfig::default().client_ip(proxy, ["203.0.113.7"].into_iter(), None),
            proxy
        );
    }

    #[test]
    fn a_proxy_network_holding_every_address_is_refused() {
        let config = |nets: &[&str]| ForwardAuthConfig {
            trusted_proxies: nets.iter().map(|n| n.parse().unwrap()).collect(),
        };
        assert!(config(&["10.0.0.0/8", "::1/128"]).validate().is_ok());
        for open in ["0.0.0.0/0", "::/0"] {
            let (field, message) = config(&["10.0.0.0/8", open]).validate().unwrap_err();
            assert_eq!(field, "forward_auth.trusted_proxies[1]");
            assert!(message.contains("every address"), "{message}");
        }
    }
}
