//! The internet checksum (RFC 1071) and the TCP/UDP pseudo-headers. PURE.
//!
//! Sums are kept as a folded, *uncomplemented* 16-bit one's-complement value in network order
//! ([`Sum`]), so partial sums over a header, a payload and a pseudo-header combine with
//! `+` and are complemented once, by [`Sum::finish`]. The summing loop reads native
//! 32-bit words into a 64-bit accumulator and byte-swaps once at the end: one's-complement
//! addition is byte-order independent up to that final swap (RFC 1071 section 2(B)).

use std::net::{Ipv4Addr, Ipv6Addr};

/// A folded one's-complement sum, not yet complemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sum(pub u16);

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

impl Sum {
    /// The sum of `data` as big-endian 16-bit words (an odd last byte is padded with zero).
    pub fn of(data: &[u8]) -> Sum {
        let mut acc: u64 = 0;
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            acc += u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
            acc += u64::from(u32::from_ne_bytes([c[4], c[5], c[6], c[7]]));
        }
        let mut rest = chunks.remainder().chunks_exact(2);
        for c in &mut rest {
            acc += u64::from(u16::from_ne_bytes([c[0], c[1]]));
        }
        if let [last] = rest.remainder() {
            acc += u64::from(u16::from_ne_bytes([*last, 0]));
        }
        Sum(u16::from_be(fold(acc)))
    }

    /// Adds a 16-bit value.
    pub fn add_u16(self, value: u16) -> Sum {
        self + Sum(value)
    }

    /// One's-complement subtraction (RFC 1624): removes `value` from the sum.
    pub fn sub_u16(self, value: u16) -> Sum {
        self + Sum(!value)
    }

    /// The checksum to store: the complement of the sum.
    pub fn finish(self) -> u16 {
        !self.0
    }

    /// The checksum to store in a UDP header: as [`Sum::finish`], but a computed 0 goes out as
    /// 0xffff, because 0 there means "no checksum" (RFC 768; RFC 8200 section 8.1 for IPv6).
    pub fn finish_udp(self) -> u16 {
        match self.finish() {
            0 => 0xffff,
            checksum => checksum,
        }
    }
}

/// One's-complement addition of two sums.
impl std::ops::Add for Sum {
    type Output = Sum;

    fn add(self, other: Sum) -> Sum {
        Sum(fold(u64::from(self.0) + u64::from(other.0)))
    }
}

/// The TCP/UDP pseudo-header over IPv4 (RFC 793, RFC 768).
pub fn pseudo_header_v4(source: Ipv4Addr, destination: Ipv4Addr, protocol: u8, l4_len: u16) -> Sum {
    (Sum::of(&source.octets()) + Sum::of(&destination.octets()))
        .add_u16(u16::from(protocol))
        .add_u16(l4_len)
}

/// The TCP/UDP pseudo-header over IPv6 (RFC 8200 section 8.1).
pub fn pseudo_header_v6(source: Ipv6Addr, destination: Ipv6Addr, protocol: u8, l4_len: u32) -> Sum {
    (Sum::of(&source.octets()) + Sum::of(&destination.octets()))
        .add_u16((l4_len >> 16) as u16)
        .add_u16(l4_len as u16)
        .add_u16(u16::from(protocol))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook loop, as the reference.
    fn reference(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn matches_the_reference_for_every_length_up_to_9001() {
        let mut state = 0x1234_5678u32;
        let data: Vec<u8> = (0..9001)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (state >> 16) as u8
            })
            .collect();
        for len in 0..=9001 {
            // Compare modulo the two encodings of zero (0x0000 and 0xffff) in one's complement.
            let ours = Sum::of(&data[..len]).0;
            let theirs = reference(&data[..len]);
            assert!(
                ours == theirs
                    || (ours == 0xffff && theirs == 0)
                    || (ours == 0 && theirs == 0xffff),
                "len {len}"
            );
        }
        assert_eq!(Sum::of(&[0xff; 4096]).0, 0xffff);
    }

    #[test]
    fn partial_sums_combine_at_even_offsets() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for split in (0..1000).step_by(2) {
            assert_eq!(
                (Sum::of(&data[..split]) + Sum::of(&data[split..])).finish(),
                Sum::of(&data).finish()
            );
        }
    }

    #[test]
    fn a_udp_checksum_is_never_0() {
        assert_eq!(Sum(0xffff).finish(), 0);
        assert_eq!(Sum(0xffff).finish_udp(), 0xffff);
        for sum in [0u16, 1, 0x1234, 0xfffe] {
            assert_eq!(Sum(sum).finish_udp(), Sum(sum).finish(), "{sum:#x}");
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
        assert_eq!(
            Sum::of(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]).0,
            0xddf2
        );
    }

    #[test]
    fn incremental_update_matches_recomputation() {
        let mut header = [
            0x45u8, 0, 0, 60, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
        ];
        let before = Sum::of(&header);
        let old = u16::from_be_bytes([header[2], header[3]]);
        header[2..4].copy_from_slice(&1500u16.to_be_bytes());
        assert_eq!(
            before.sub_u16(old).add_u16(1500).finish(),
            Sum::of(&header).finish()
        );
    }
}
