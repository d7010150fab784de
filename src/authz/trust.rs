//! Whose word about a client's address is taken. An Authorize caller names the address of
//! the client it checks; a key fenced to a network would be worthless if anyone could name
//! an address inside it. So the named address counts only from a trusted caller (a gateway
//! or proxy, recognised by its client certificate or its network); from anyone else the
//! address the call itself comes from is used.

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
}
