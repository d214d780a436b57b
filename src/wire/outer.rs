//! Which IP header a relay's datagrams travel in, and what it costs. PURE.

use std::net::SocketAddr;

/// Which IP header the worker's datagrams travel in: decides the level of the TOS control
/// message and the outer header bytes. A dual-stack IPv6 socket talking to an IPv4-mapped peer
/// sends IPv4, and `udp_sendmsg` then reads only `SOL_IP` messages (`ip_cmsg_send` in
/// net/ipv4/ip_sockglue.c), so the family follows the peer's canonical address, not the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OuterFamily {
    Ipv4,
    Ipv6,
}

impl OuterFamily {
    pub fn of(peer: SocketAddr) -> OuterFamily {
        if peer.ip().to_canonical().is_ipv4() {
            OuterFamily::Ipv4
        } else {
            OuterFamily::Ipv6
        }
    }

    /// The smallest path MTU ever worked to: IPv6's minimum link MTU (RFC 8200), and for IPv4
    /// the kernel's floor for a learned path MTU (`net.ipv4.route.min_pmtu`, 552 by default).
    pub fn smallest_path_mtu(self) -> usize {
        match self {
            OuterFamily::Ipv4 => 552,
            OuterFamily::Ipv6 => super::ip::IPV6_MIN_MTU,
        }
    }

    /// Outer IP and UDP header bytes.
    pub fn overhead(self) -> usize {
        match self {
            OuterFamily::Ipv4 => 20 + 8,
            OuterFamily::Ipv6 => 40 + 8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_family_follows_the_canonical_peer() {
        assert_eq!(
            OuterFamily::of("[::ffff:1.2.3.4]:5".parse().unwrap()),
            OuterFamily::Ipv4
        );
        assert_eq!(
            OuterFamily::of("[2001:2::1]:5".parse().unwrap()),
            OuterFamily::Ipv6
        );
    }
}
