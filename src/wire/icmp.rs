//! What an ICMP or ICMPv6 error says, by kind: how the errors the kernel queues about the peer
//! (`IP_RECVERR`, `sock_extended_err`'s type and code) are counted. PURE.

/// The kinds of error a relay counts apart (RFC 792, RFC 4443).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    /// ICMP destination unreachable code 3; ICMPv6 destination unreachable code 4.
    PortUnreachable,
    /// ICMP codes 1 and 10 (host unreachable, prohibited); ICMPv6 code 3 (address unreachable).
    HostUnreachable,
    /// ICMP codes 0, 6, 9 (network unreachable, unknown, prohibited); ICMPv6 code 0 (no route).
    NetUnreachable,
    /// ICMP fragmentation needed (code 4); ICMPv6 packet too big (type 2).
    TooBig,
    /// ICMP time exceeded (type 11); ICMPv6 time exceeded (type 3).
    TimeExceeded,
    /// Any other error: administratively prohibited, parameter problem, source route failed...
    Other,
}

impl IcmpKind {
    pub const ALL: [IcmpKind; 6] = [
        IcmpKind::PortUnreachable,
        IcmpKind::HostUnreachable,
        IcmpKind::NetUnreachable,
        IcmpKind::TooBig,
        IcmpKind::TimeExceeded,
        IcmpKind::Other,
    ];

    /// The name in reports.
    #[cfg(test)]
    pub fn name(self) -> &'static str {
        match self {
            IcmpKind::PortUnreachable => "port_unreachable",
            IcmpKind::HostUnreachable => "host_unreachable",
            IcmpKind::NetUnreachable => "net_unreachable",
            IcmpKind::TooBig => "too_big",
            IcmpKind::TimeExceeded => "time_exceeded",
            IcmpKind::Other => "other",
        }
    }

    /// The kind of an ICMP (`v6` false) or ICMPv6 error of this type and code.
    pub fn of(v6: bool, icmp_type: u8, code: u8) -> IcmpKind {
        match (v6, icmp_type, code) {
            (false, 3, 3) | (true, 1, 4) => IcmpKind::PortUnreachable,
            (false, 3, 1 | 10) | (true, 1, 3) => IcmpKind::HostUnreachable,
            (false, 3, 0 | 6 | 9) | (true, 1, 0) => IcmpKind::NetUnreachable,
            (false, 3, 4) | (true, 2, _) => IcmpKind::TooBig,
            (false, 11, _) | (true, 3, _) => IcmpKind::TimeExceeded,
            _ => IcmpKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_type_and_code() {
        for (v6, t, c, kind) in [
            (false, 3, 3, IcmpKind::PortUnreachable),
            (true, 1, 4, IcmpKind::PortUnreachable),
            (false, 3, 1, IcmpKind::HostUnreachable),
            (true, 1, 3, IcmpKind::HostUnreachable),
            (false, 3, 0, IcmpKind::NetUnreachable),
            (true, 1, 0, IcmpKind::NetUnreachable),
            (false, 3, 4, IcmpKind::TooBig),
            (true, 2, 0, IcmpKind::TooBig),
            (false, 11, 0, IcmpKind::TimeExceeded),
            (true, 3, 1, IcmpKind::TimeExceeded),
            (false, 3, 13, IcmpKind::Other),
            (false, 12, 0, IcmpKind::Other),
            (true, 4, 0, IcmpKind::Other),
            // Type 2 is packet too big in ICMPv6 only.
            (false, 2, 0, IcmpKind::Other),
        ] {
            assert_eq!(IcmpKind::of(v6, t, c), kind, "v6 {v6} type {t} code {c}");
        }
        let mut names: Vec<_> = IcmpKind::ALL.iter().map(|k| k.name()).collect();
        names.dedup();
        assert_eq!(names.len(), IcmpKind::ALL.len());
    }
}
