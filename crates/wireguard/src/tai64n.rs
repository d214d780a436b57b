//! TAI64N timestamps, the initiation's replay guard.
//!
//! An initiation carries the initiator's wall-clock time as TAI64N (cr.yp.to/libtai/tai64.html):
//! 8 bytes big-endian of `2^62 + 10 + seconds` (the label for TAI, with the 10 s the Linux
//! module and wireguard-go add), then 4 bytes big-endian of nanoseconds. Because both parts are
//! big-endian, comparing the 12 bytes lexicographically compares the times, which is all the
//! responder does: it keeps the greatest timestamp accepted from each peer and refuses any
//! initiation that is not strictly greater (whitepaper 5.1). The nanoseconds are rounded down to
//! a multiple of 2^24 (about 16.8 ms) as `noise.c` and wireguard-go do, so the timestamp does not
//! leak a fine-grained clock, while still allowing `INITIATIONS_PER_SECOND` (50) per second.

/// A 12-byte TAI64N label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tai64N([u8; 12]);

const TAI64_BASE: u64 = (1 << 62) + 10;
const WHITENER_MASK: u32 = (1 << 24) - 1;

impl Tai64N {
    /// The label for `unix_ns` nanoseconds since 1970-01-01 UTC, whitened.
    pub fn from_unix_nanos(unix_ns: u64) -> Self {
        let seconds = unix_ns / 1_000_000_000;
        let nanos = (unix_ns % 1_000_000_000) as u32 & !WHITENER_MASK;
        let mut bytes = [0u8; 12];
        bytes[..8].copy_from_slice(&(TAI64_BASE + seconds).to_be_bytes());
        bytes[8..].copy_from_slice(&nanos.to_be_bytes());
        Self(bytes)
    }

    /// The label from its 12 bytes, as decrypted from an initiation.
    pub const fn from_bytes(bytes: [u8; 12]) -> Self {
        Self(bytes)
    }

    /// The 12 bytes.
    pub const fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_matches_the_tai64n_layout() {
        // 2017-02-26T00:00:00Z plus 0.5 s.
        let stamp = Tai64N::from_unix_nanos(1_488_067_200_500_000_000);
        let seconds = u64::from_be_bytes(stamp.as_bytes()[..8].try_into().unwrap());
        assert_eq!(seconds, 0x4000_0000_0000_000a + 1_488_067_200);
        let nanos = u32::from_be_bytes(stamp.as_bytes()[8..].try_into().unwrap());
        assert_eq!(nanos, 500_000_000 & !WHITENER_MASK);
        assert_eq!(nanos % (1 << 24), 0);
    }

    #[test]
    fn order_follows_time_at_the_whitened_resolution() {
        let base = 1_700_000_000_000_000_000u64;
        let earlier = Tai64N::from_unix_nanos(base);
        let same_slot = Tai64N::from_unix_nanos(base + 1);
        let next_slot = Tai64N::from_unix_nanos(base + (1 << 24));
        let next_second = Tai64N::from_unix_nanos(base + 1_000_000_000);
        assert_eq!(earlier, same_slot);
        assert!(next_slot > earlier);
        assert!(next_second > next_slot);
        // 50 initiations a second stay strictly increasing (20 ms apart > 16.8 ms slots).
        let mut last = Tai64N::default();
        for i in 0..200u64 {
            let stamp = Tai64N::from_unix_nanos(base + i * 20_000_000);
            assert!(stamp > last, "{i}");
            last = stamp;
        }
    }
}
