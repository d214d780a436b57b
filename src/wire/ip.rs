//! The inner IP packet: IPv4 (RFC 791) or IPv6 (RFC 8200), validated against the datagram or
//! read that carried it.
//!
//! tunfwd's wire format is one inner IP packet per UDP payload, with nothing around it, so the
//! packet's own length fields are the only framing there is. A packet whose header disagrees with
//! the bytes we hold is dropped before it reaches the TUN: the kernel would reject or misparse it,
//! and a peer that sends such packets is broken or hostile.

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const IPV4_MIN_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;

mod field {
    // IPv4
    pub const V4_TOTAL_LEN: usize = 2;
    pub const V4_FRAGMENT: usize = 6;
    pub const V4_PROTOCOL: usize = 9;
    pub const V4_SRC: usize = 12;
    pub const V4_DST: usize = 16;
    // IPv6
    pub const V6_PAYLOAD_LEN: usize = 4;
    pub const V6_NEXT_HEADER: usize = 6;
    pub const V6_SRC: usize = 8;
    pub const V6_DST: usize = 24;
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
        let first = *bytes.first().ok_or(Malformed::Empty)?;
        let version = match first >> 4 {
            4 => IpVersion::V4,
            6 => IpVersion::V6,
            other => return Err(Malformed::BadVersion(other)),
        };
        let actual = bytes.len();
        let header_total = match version {
            IpVersion::V4 => {
                if actual < IPV4_MIN_HEADER_LEN {
                    return Err(Malformed::TooShort);
                }
                let ihl = usize::from(first & 0x0f) * 4;
                let total = usize::from(be16(bytes, field::V4_TOTAL_LEN));
                if ihl < IPV4_MIN_HEADER_LEN || ihl > actual || ihl > total {
                    return Err(Malformed::BadHeaderLen);
                }
                total
            }
            IpVersion::V6 => {
                if actual < IPV6_HEADER_LEN {
                    return Err(Malformed::TooShort);
                }
                // A payload length of 0 announces a jumbogram (RFC 2675), which never fits a
                // UDP datagram; it is reported as a mismatch like any other wrong length.
                IPV6_HEADER_LEN + usize::from(be16(bytes, field::V6_PAYLOAD_LEN))
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
            IpVersion::V4 => usize::from(self.buffer.as_ref()[0] & 0x0f) * 4,
            IpVersion::V6 => IPV6_HEADER_LEN,
        }
    }

    /// True for an IPv4 fragment (offset non-zero or more-fragments set).
    pub fn is_fragment(&self) -> bool {
        self.version == IpVersion::V4
            && be16(self.buffer.as_ref(), field::V4_FRAGMENT) & 0x3fff != 0
    }

    pub fn source(&self) -> IpAddr {
        self.address(field::V4_SRC, field::V6_SRC)
    }

    pub fn destination(&self) -> IpAddr {
        self.address(field::V4_DST, field::V6_DST)
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

fn be16(bytes: &[u8], at: usize) -> u16 {
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
