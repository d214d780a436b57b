//! The chain of IPv6 extension headers behind the fixed header (RFC 8200 section 4), walked one
//! header at a time. PURE.
//!
//! One walk serves two policies. [`Transport::parse`](super::Transport::parse) accepts only the
//! headers behind which tunfwd may segment and merge; `offload::icmp` looks behind every header
//! the kernel's `ipv6_skip_exthdr` skips (net/ipv6/exthdrs_core.c) to see whether a packet is an
//! ICMPv6 error. Both read the chain through [`ExtensionHeaders`], so they agree on where each
//! header starts and how long it is; which headers each accepts is its own business.

use super::ip::IPV6_HEADER_LEN;
use super::ip::field::{EXTENSION_LEN, EXTENSION_NEXT_HEADER, V6_NEXT_HEADER};
use super::ip::next_header::{AUTHENTICATION, DESTINATION_OPTIONS, FRAGMENT, HOP_BY_HOP, ROUTING};

/// One header of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// An extension header the walk knows the length of (Hop-by-Hop Options, Routing, Fragment,
    /// Authentication, Destination Options): its type, the next-header value that named it, and
    /// where it starts in the packet.
    Extension { kind: u8, at: usize },
    /// The first header that is not one of those (TCP, UDP, ICMPv6, ESP, No Next Header, ...):
    /// its protocol number and where it starts.
    UpperLayer { protocol: u8, at: usize },
    /// The header named next would start at `at`, but the packet does not hold its first two
    /// bytes (the packet is shorter than a fixed IPv6 header, or a length runs past its end).
    Truncated { at: usize },
}

/// The headers of an IPv6 packet after its fixed header, in order. Every
/// [`Header::Extension`] and [`Header::UpperLayer`] it yields has its first two bytes inside the
/// packet (an extension header's next-header and length bytes); anything further, such as a
/// Routing header's Segments Left or a Fragment header's offset, the caller reads with `get`.
///
/// The walk ends after the first `UpperLayer` or `Truncated`. Each extension header moves it at
/// least 8 bytes on and the packet is finite, so it always ends. No method panics, whatever
/// the bytes.
#[derive(Debug, Clone)]
pub struct ExtensionHeaders<'a> {
    packet: &'a [u8],
    /// The next header's type and where it starts; `None` once the walk has ended.
    next: Option<(u8, usize)>,
}

impl<'a> ExtensionHeaders<'a> {
    /// The chain of `packet`, an IPv6 packet (its version is not checked).
    pub fn new(packet: &'a [u8]) -> ExtensionHeaders<'a> {
        // A packet shorter than the fixed header holds nothing at 40: the walk ends there.
        let first = packet.get(V6_NEXT_HEADER).copied().unwrap_or_default();
        ExtensionHeaders {
            packet,
            next: Some((first, IPV6_HEADER_LEN)),
        }
    }
}

/// The length in bytes of an extension header of type `kind` whose length byte is `len`, or
/// `None` if `kind` is not an extension header the walk knows (RFC 8200 sections 4.3 to 4.6:
/// 8-octet units past the first 8; RFC 4302 section 2.2: 4-octet units past the first 8 for
/// Authentication; a Fragment header is always 8).
fn extension_len(kind: u8, len: u8) -> Option<usize> {
    match kind {
        HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS => Some((usize::from(len) + 1) * 8),
        AUTHENTICATION => Some((usize::from(len) + 2) * 4),
        FRAGMENT => Some(8),
        _ => None,
    }
}

impl Iterator for ExtensionHeaders<'_> {
    type Item = Header;

    fn next(&mut self) -> Option<Header> {
        let (kind, at) = self.next.take()?;
        let Some(first_two) = self.packet.get(at..at + 2) else {
            return Some(Header::Truncated { at });
        };
        let Some(len) = extension_len(kind, first_two[EXTENSION_LEN]) else {
            return Some(Header::UpperLayer { protocol: kind, at });
        };
        self.next = Some((first_two[EXTENSION_NEXT_HEADER], at + len));
        Some(Header::Extension { kind, at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Header::*;

    /// A fixed IPv6 header naming `first`, then `rest`.
    fn packet(first: u8, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; IPV6_HEADER_LEN];
        p[0] = 0x60;
        p[V6_NEXT_HEADER] = first;
        p.extend_from_slice(rest);
        p
    }

    fn walk(p: &[u8]) -> Vec<Header> {
        ExtensionHeaders::new(p).collect()
    }

    #[test]
    fn each_kind_of_header_is_skipped_by_its_own_length_rule() {
        // Hop-by-Hop (8 bytes) -> Routing (len 1: 16 bytes) -> Authentication (len 2: 16 bytes)
        // -> Fragment (8) -> Destination Options (len 0: 8) -> UDP.
        let mut rest = Vec::new();
        rest.extend([ROUTING, 0, 0, 0, 0, 0, 0, 0]);
        rest.extend([AUTHENTICATION, 1, 0, 0]);
        rest.extend([0; 12]);
        rest.extend([FRAGMENT, 2, 0, 0]);
        rest.extend([0; 12]);
        rest.extend([DESTINATION_OPTIONS, 0, 0, 0, 0, 0, 0, 0]);
        rest.extend([17, 0, 0, 0, 0, 0, 0, 0]);
        rest.extend([0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        let p = packet(HOP_BY_HOP, &rest);
        assert_eq!(
            walk(&p),
            [
                Extension {
                    kind: HOP_BY_HOP,
                    at: 40
                },
                Extension {
                    kind: ROUTING,
                    at: 48
                },
                Extension {
                    kind: AUTHENTICATION,
                    at: 64
                },
                Extension {
                    kind: FRAGMENT,
                    at: 80
                },
                Extension {
                    kind: DESTINATION_OPTIONS,
                    at: 88
                },
                UpperLayer {
                    protocol: 17,
                    at: 96
                },
            ]
        );
    }

    #[test]
    fn a_packet_without_extension_headers_is_its_upper_layer_at_40() {
        let p = packet(6, &[0; 20]);
        assert_eq!(
            walk(&p),
            [UpperLayer {
                protocol: 6,
                at: 40
            }]
        );
        // ESP and No Next Header are not walked past: their length is not in a length byte.
        for protocol in [50, 59, 58] {
            assert_eq!(
                walk(&packet(protocol, &[0; 8])),
                [UpperLayer { protocol, at: 40 }]
            );
        }
    }

    #[test]
    fn a_header_without_its_first_two_bytes_ends_the_walk_as_truncated() {
        assert_eq!(walk(&[0x60; 39]), [Truncated { at: 40 }], "no fixed header");
        assert_eq!(walk(&packet(6, &[])), [Truncated { at: 40 }]);
        assert_eq!(walk(&packet(6, &[0])), [Truncated { at: 40 }]);
        // A Destination Options header of 16 bytes claimed, 8 held.
        let p = packet(DESTINATION_OPTIONS, &[17, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            walk(&p),
            [
                Extension {
                    kind: DESTINATION_OPTIONS,
                    at: 40
                },
                Truncated { at: 56 }
            ]
        );
        // Ending exactly where the next header would start is cut short as well.
        let p = packet(HOP_BY_HOP, &[17, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            walk(&p),
            [
                Extension {
                    kind: HOP_BY_HOP,
                    at: 40
                },
                Truncated { at: 48 }
            ]
        );
    }

    /// Every chain of three headers of the known kinds (or an upper layer early) and then UDP,
    /// with length bytes small and large, cut at every length: the walk ends, never panics,
    /// yields only headers whose first two bytes are held, and each header starts at least 8
    /// bytes past the one before.
    #[test]
    fn the_walk_ends_on_any_chain_cut_anywhere() {
        let kinds = [
            HOP_BY_HOP,
            ROUTING,
            FRAGMENT,
            AUTHENTICATION,
            DESTINATION_OPTIONS,
            17,
        ];
        let kind = |chain: usize, i: u32| kinds[chain / kinds.len().pow(i) % kinds.len()];
        let (mut upper, mut truncated) = (0, 0);
        for chain in 0..kinds.len().pow(3) {
            for lens in 0..4usize.pow(3) {
                // Header i: the type of header i + 1 (UDP after the third), its length byte,
                // and zeros to 16 bytes.
                let mut rest = Vec::new();
                for i in 0..3 {
                    let next = if i < 2 { kind(chain, i + 1) } else { 17 };
                    let len = [0u8, 1, 2, 255][lens / 4usize.pow(i) % 4];
                    rest.extend([next, len]);
                    rest.resize(rest.len() + 14, 0);
                }
                rest.extend([0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
                let whole = packet(kind(chain, 0), &rest);
                for cut in IPV6_HEADER_LEN - 1..=whole.len() {
                    let p = &whole[..cut];
                    let headers = walk(p);
                    match headers.last() {
                        Some(UpperLayer { .. }) => upper += 1,
                        Some(Truncated { .. }) => truncated += 1,
                        other => panic!("the walk ended on {other:?}"),
                    }
                    let mut previous = None;
                    for header in &headers {
                        let at = match *header {
                            Extension { at, .. } | UpperLayer { at, .. } => {
                                assert!(at + 2 <= p.len(), "{header:?} in {} bytes", p.len());
                                at
                            }
                            Truncated { at } => at,
                        };
                        assert!(
                            previous.is_none_or(|before| at >= before + 8),
                            "{headers:?}"
                        );
                        previous = Some(at);
                    }
                }
            }
        }
        assert!(upper > 0 && truncated > 0, "{upper} {truncated}");
    }
}
