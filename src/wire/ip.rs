//! The inner IP packet: IPv4 (RFC 791) or IPv6 (RFC 8200), validated against the datagram or
//! read that carried it.
//!
//! tunfwd's wire format is one inner IP packet per UDP payload, with nothing around it, so the
//! packet's own length fields are the only framing there is. A packet whose header disagrees with
//! the bytes we hold is dropped before it reaches the TUN: the kernel would reject or misparse it,
//! and a peer that sends such packets is broken or hostile.
//!
//! This module owns the rules for where an IP header is in bounds ([`header_bounds`]), which every
//! parse of one starts with: [`IpPacket::new_checked`] for a received datagram, and
//! [`Transport::parse`](super::Transport::parse) for a super-packet read from the TUN, whose
//! length field the splitter rewrites anyway. What lies behind the fixed header (IPv4 fragments,
//! IPv6 extension headers, TCP and UDP) is [`super::transport`]'s business;
//! [`IpPacket::transport`] reaches it without checking again what `new_checked` checked.

use super::checksum::Sum;
use super::transport::Transport;
use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const IPV4_MIN_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;
/// The smallest MTU of any IPv6 link (RFC 8200 section 5).
pub const IPV6_MIN_MTU: usize = 1280;

/// The flags and fragment offset word of IPv4: Don't Fragment.
pub const IPV4_DF: u16 = 0x4000;
/// The same word's More Fragments bit and fragment offset: any bit set makes a fragment.
pub const IPV4_FRAGMENT_MASK: u16 = 0x3fff;

/// Where the fields are. A `usize` is a one-byte field; a range, a wider one (network order).
pub mod field {
    use core::ops::Range;

    /// IPv4 (RFC 791 section 3.1): version and IHL.
    pub const V4_VERSION_IHL: usize = 0;
    /// IPv4 type of service: DSCP and ECN (RFC 2474, RFC 3168).
    pub const V4_TOS: usize = 1;
    pub const V4_TOTAL_LEN: Range<usize> = 2..4;
    pub const V4_ID: Range<usize> = 4..6;
    /// Flags and fragment offset.
    pub const V4_FRAGMENT: Range<usize> = 6..8;
    pub const V4_TTL: usize = 8;
    pub const V4_PROTOCOL: usize = 9;
    pub const V4_CHECKSUM: Range<usize> = 10..12;
    pub const V4_SRC: Range<usize> = 12..16;
    pub const V4_DST: Range<usize> = 16..20;

    /// IPv6 (RFC 8200 section 3): version, traffic class and flow label.
    pub const V6_VERSION_CLASS_FLOW: Range<usize> = 0..4;
    pub const V6_PAYLOAD_LEN: Range<usize> = 4..6;
    pub const V6_NEXT_HEADER: usize = 6;
    pub const V6_HOP_LIMIT: usize = 7;
    pub const V6_SRC: Range<usize> = 8..24;
    pub const V6_DST: Range<usize> = 24..40;

    /// An IPv6 extension header's first two bytes (RFC 8200 section 4): the header after it, and
    /// its length in 8-octet units past the first 8 (in 4-octet units past the first 8 for
    /// Authentication, RFC 4302 section 2.2).
    pub const EXTENSION_NEXT_HEADER: usize = 0;
    pub const EXTENSION_LEN: usize = 1;
    /// Segments Left, in a Routing header (RFC 8200 section 4.4).
    pub const ROUTING_SEGMENTS_LEFT: usize = 3;
    /// The fragment offset and M flag, in a Fragment header (RFC 8200 section 4.5).
    pub const FRAGMENT_OFFSET: Range<usize> = 2..4;
}

/// IPv6 next-header values of the extension headers (RFC 8200 section 4, RFC 4302).
pub mod next_header {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTHENTICATION: u8 = 51;
    pub const DESTINATION_OPTIONS: u8 = 60;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

/// Why a buffer is not a well-formed IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Zero bytes.
    Empty,
    /// The version nibble is neither 4 nor 6.
    BadVersion(u8),
    /// Shorter than the fixed header (20 bytes for IPv4, 40 for IPv6).
    TooShort,
    /// IPv4 IHL below 5, or pointing past the bytes we hold.
    BadHeaderLen,
    /// The length field disagrees with the number of bytes we hold.
    LengthMismatch { header: usize, actual: usize },
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Empty => write!(f, "empty packet"),
            Malformed::BadVersion(v) => write!(f, "IP version {v}"),
            Malformed::TooShort => write!(f, "shorter than an IP header"),
            Malformed::BadHeaderLen => write!(f, "bad IPv4 header length"),
            Malformed::LengthMismatch { header, actual } => {
                write!(f, "header says {header} bytes, datagram has {actual}")
            }
        }
    }
}

/// The version of `bytes` and the length of its IP header as the fixed part says it (IHL * 4,
/// IPv4 options included; 40 for IPv6, extension headers not included), checked to be at least
/// the fixed header and within `bytes`. The first rules of every parse; the length field is not
/// read.
pub fn header_bounds(bytes: &[u8]) -> Result<(IpVersion, usize), Malformed> {
    let first = *bytes.first().ok_or(Malformed::Empty)?;
    match first >> 4 {
        4 => {
            if bytes.len() < IPV4_MIN_HEADER_LEN {
                return Err(Malformed::TooShort);
            }
            let ihl = ipv4_header_len(first);
            if ihl < IPV4_MIN_HEADER_LEN || ihl > bytes.len() {
                return Err(Malformed::BadHeaderLen);
            }
            Ok((IpVersion::V4, ihl))
        }
        6 if bytes.len() < IPV6_HEADER_LEN => Err(Malformed::TooShort),
        6 => Ok((IpVersion::V6, IPV6_HEADER_LEN)),
        other => Err(Malformed::BadVersion(other)),
    }
}

/// IHL * 4, from the first byte of an IPv4 header.
fn ipv4_header_len(first: u8) -> usize {
    usize::from(first & 0x0f) * 4
}

/// A validated view of one IPv4 or IPv6 packet.
///
/// After `new_checked` succeeds, the fixed header is in bounds and the packet's length field
/// equals the buffer's length, so no accessor panics.
#[derive(Debug, Clone, Copy)]
pub struct IpPacket<T: AsRef<[u8]>> {
    buffer: T,
    version: IpVersion,
}

impl<T: AsRef<[u8]>> IpPacket<T> {
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let bytes = buffer.as_ref();
        let (version, header_len) = header_bounds(bytes)?;
        let actual = bytes.len();
        let header_total = match version {
            IpVersion::V4 => {
                let total = usize::from(be16(bytes, field::V4_TOTAL_LEN.start));
                if header_len > total {
                    return Err(Malformed::BadHeaderLen);
                }
                total
            }
            // A payload length of 0 announces a jumbogram (RFC 2675), which never fits a UDP
            // datagram; it is reported as a mismatch like any other wrong length.
            IpVersion::V6 => {
                IPV6_HEADER_LEN + usize::from(be16(bytes, field::V6_PAYLOAD_LEN.start))
            }
        };
        if header_total != actual {
            return Err(Malformed::LengthMismatch {
                header: header_total,
                actual,
            });
        }
        Ok(IpPacket { buffer, version })
    }

    pub fn version(&self) -> IpVersion {
        self.version
    }

    pub fn total_len(&self) -> usize {
        self.buffer.as_ref().len()
    }

    /// The IPv4 protocol, or the IPv6 next header (which may be an extension header).
    pub fn protocol(&self) -> u8 {
        let b = self.buffer.as_ref();
        match self.version {
            IpVersion::V4 => b[field::V4_PROTOCOL],
            IpVersion::V6 => b[field::V6_NEXT_HEADER],
        }
    }

    /// IPv4 header length in bytes (IHL * 4), or 40 for IPv6.
    pub fn header_len(&self) -> usize {
        match self.version {
            IpVersion::V4 => ipv4_header_len(self.buffer.as_ref()[field::V4_VERSION_IHL]),
            IpVersion::V6 => IPV6_HEADER_LEN,
        }
    }

    /// True for an IPv4 fragment (offset non-zero or more-fragments set).
    pub fn is_fragment(&self) -> bool {
        self.version == IpVersion::V4 && is_ipv4_fragment(self.buffer.as_ref())
    }

    pub fn source(&self) -> IpAddr {
        self.address(field::V4_SRC.start, field::V6_SRC.start)
    }

    pub fn destination(&self) -> IpAddr {
        self.address(field::V4_DST.start, field::V6_DST.start)
    }

    /// Where the TCP or UDP header is, by the rules of [`Transport::parse`]; `None` for a
    /// fragment, another protocol, a refused IPv6 extension header, or a TCP/UDP header cut
    /// short. One pass: the bounds `new_checked` checked are not checked again.
    pub fn transport(&self) -> Option<Transport> {
        Transport::behind_ip_header(self.buffer.as_ref(), self.version, self.header_len())
    }

    fn address(&self, v4_at: usize, v6_at: usize) -> IpAddr {
        let b = self.buffer.as_ref();
        match self.version {
            IpVersion::V4 => {
                let octets: [u8; 4] = b[v4_at..v4_at + 4].try_into().expect("4-byte range");
                IpAddr::V4(Ipv4Addr::from(octets))
            }
            IpVersion::V6 => {
                let octets: [u8; 16] = b[v6_at..v6_at + 16].try_into().expect("16-byte range");
                IpAddr::V6(Ipv6Addr::from(octets))
            }
        }
    }
}

/// Whether an IPv4 header (at least 8 bytes) is a fragment's: More Fragments set or an offset.
pub(super) fn is_ipv4_fragment(header: &[u8]) -> bool {
    be16(header, field::V4_FRAGMENT.start) & IPV4_FRAGMENT_MASK != 0
}

/// Recomputes an IPv4 header's checksum over `header` (exactly IHL*4 bytes).
pub fn set_ipv4_header_checksum(header: &mut [u8]) {
    header[field::V4_CHECKSUM].fill(0);
    let c = Sum::of(header).finish();
    header[field::V4_CHECKSUM].copy_from_slice(&c.to_be_bytes());
}

pub(super) fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20-byte IPv4 header (ICMP, 198.18.0.1 -> 198.18.0.2) plus 8 bytes of payload.
    static IPV4_PACKET: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 198, 18, 0, 1, 198,
        18, 0, 2, 8, 0, 0xf7, 0xff, 0, 0, 0, 0,
    ];

    fn ipv6_packet(payload_len: u16, actual_payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; IPV6_HEADER_LEN + actual_payload];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&payload_len.to_be_bytes());
        p[6] = 17;
        p[8..24].copy_from_slice(&"2001:2::1".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"2001:2::2".parse::<Ipv6Addr>().unwrap().octets());
        p
    }

    #[test]
    fn deconstruct_ipv4() {
        let p = IpPacket::new_checked(&IPV4_PACKET[..]).unwrap();
        assert_eq!(p.version(), IpVersion::V4);
        assert_eq!(p.protocol(), 1);
        assert_eq!(p.header_len(), 20);
        assert!(!p.is_fragment());
        assert_eq!(p.source(), "198.18.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(p.destination(), "198.18.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn deconstruct_ipv6() {
        let raw = ipv6_packet(8, 8);
        let p = IpPacket::new_checked(&raw[..]).unwrap();
        assert_eq!(p.version(), IpVersion::V6);
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.destination(), "2001:2::2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn impossible_lengths_are_rejected() {
        assert_eq!(
            IpPacket::new_checked(&[][..]).unwrap_err(),
            Malformed::Empty
        );
        assert_eq!(
            IpPacket::new_checked(&IPV4_PACKET[..19]).unwrap_err(),
            Malformed::TooShort
        );
        // Truncated: header says 28, we hold 24.
        assert_eq!(
            IpPacket::new_checked(&IPV4_PACKET[..24]).unwrap_err(),
            Malformed::LengthMismatch {
                header: 28,
                actual: 24
            }
        );
        // Oversized: header says 28, we hold 30.
        let mut longer = IPV4_PACKET.to_vec();
        longer.extend_from_slice(&[0, 0]);
        assert_eq!(
            IpPacket::new_checked(&longer[..]).unwrap_err(),
            Malformed::LengthMismatch {
                header: 28,
                actual: 30
            }
        );
        // IHL of 4 words, and IHL past the end.
        let mut ihl = IPV4_PACKET;
        ihl[0] = 0x44;
        assert_eq!(
            IpPacket::new_checked(&ihl[..]).unwrap_err(),
            Malformed::BadHeaderLen
        );
        ihl[0] = 0x4f;
        assert_eq!(
            IpPacket::new_checked(&ihl[..]).unwrap_err(),
            Malformed::BadHeaderLen
        );
        // IPv6: too short, jumbogram, payload length disagreeing.
        assert_eq!(
            IpPacket::new_checked(&ipv6_packet(0, 0)[..39]).unwrap_err(),
            Malformed::TooShort
        );
        assert!(matches!(
            IpPacket::new_checked(&ipv6_packet(0, 8)[..]).unwrap_err(),
            Malformed::LengthMismatch {
                header: 40,
                actual: 48
            }
        ));
        assert!(matches!(
            IpPacket::new_checked(&ipv6_packet(100, 8)[..]).unwrap_err(),
            Malformed::LengthMismatch {
                header: 140,
                actual: 48
            }
        ));
    }

    #[test]
    fn wrong_versions_are_rejected() {
        for version in [0u8, 1, 5, 7, 15] {
            let mut raw = IPV4_PACKET;
            raw[0] = (version << 4) | 5;
            assert_eq!(
                IpPacket::new_checked(&raw[..]).unwrap_err(),
                Malformed::BadVersion(version)
            );
        }
    }

    #[test]
    fn fragments_are_recognised() {
        let mut raw = IPV4_PACKET;
        raw[6] = 0x20; // more fragments
        assert!(IpPacket::new_checked(&raw[..]).unwrap().is_fragment());
        raw[6] = 0x00;
        raw[7] = 0x10; // offset 16 * 8
        assert!(IpPacket::new_checked(&raw[..]).unwrap().is_fragment());
    }

    #[test]
    fn agrees_with_etherparse_on_random_buffers() {
        // etherparse is the oracle: whatever we accept, it must slice with the same length.
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut raw = if next() % 2 == 0 {
                IPV4_PACKET.to_vec()
            } else {
                ipv6_packet(8, 8)
            };
            // Flip one or two bytes of the header or truncate.
            for _ in 0..(next() % 3) {
                let at = (next() as usize) % raw.len();
                raw[at] = next() as u8;
            }
            let cut = raw.len() - (next() as usize % 4).min(raw.len());
            raw.truncate(cut);
            if let Ok(p) = IpPacket::new_checked(&raw[..]) {
                accepted += 1;
                let len = match p.version() {
                    IpVersion::V4 => {
                        let h =
                            etherparse::Ipv4HeaderSlice::from_slice(&raw).expect("oracle rejects");
                        assert_eq!(h.ihl() as usize * 4, p.header_len());
                        h.total_len() as usize
                    }
                    IpVersion::V6 => {
                        let h =
                            etherparse::Ipv6HeaderSlice::from_slice(&raw).expect("oracle rejects");
                        assert_eq!(h.next_header().0, p.protocol());
                        40 + h.payload_length() as usize
                    }
                };
                assert_eq!(len, p.total_len());
                assert!(p.header_len() <= p.total_len());
            }
        }
        assert!(
            accepted > 1000,
            "the mutation mix accepted too few packets: {accepted}"
        );
    }
}
