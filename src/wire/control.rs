//! Relay-to-relay control messages: the path MTU probes and their acknowledgements
//! (`relay::plpmtud`, RFC 8899's datagram PLPMTUD). PURE.
//!
//! In the raw wire format every UDP payload is one inner IP packet, whose first nibble is 4 or
//! 6. A control message starts with a zero byte, so no IP packet is ever taken for one and no
//! control message for an IP packet. A relay that does not know them (an older tunfwd, socat's
//! TUN-to-UDP relay) drops them: tunfwd counts `bad_ip_version`, and a TUN refuses a write whose
//! first nibble is neither 4 nor 6 (`tun_get_user` in drivers/net/tun.c). Such a peer never
//! acknowledges a probe, and the prober then knows it cannot confirm anything (see
//! `relay::plpmtud`).
//!
//! ```text
//!  0      1      2      3      4 ........... 11   12 .. 13   14 .. 15   16 ...
//! +------+------+------+------+----------------+----------+----------+---------------+
//! | 0x00 | 'T'  | 'F'  | kind | nonce (u64 BE) | size BE  | 0 0      | zeros (probe)  |
//! +------+------+------+------+----------------+----------+----------+---------------+
//! ```
//! `kind` 1 is a probe, 2 its acknowledgement. A probe is padded with zeros to the UDP payload
//! that makes an outer IP packet of `size` bytes; the acknowledgement is the 16-byte header
//! alone, echoing the probe's nonce and size. The nonce is random, so an acknowledgement cannot
//! be forged by anyone who did not see the probe.

/// Bytes of a control message's header; an acknowledgement is exactly this long.
pub const HEADER_LEN: usize = 16;

mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..3;
    pub const KIND: usize = 3;
    pub const NONCE: Range<usize> = 4..12;
    pub const SIZE: Range<usize> = 12..14;
    pub const RESERVED: Range<usize> = 14..16;
}

const MAGIC: [u8; 3] = [0x00, b'T', b'F'];

/// What a control message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A path MTU probe: answer it with an [`Kind::Ack`] of the same nonce and size.
    Probe,
    /// The acknowledgement of a probe.
    Ack,
}

impl Kind {
    fn to_raw(self) -> u8 {
        match self {
            Kind::Probe => 1,
            Kind::Ack => 2,
        }
    }
}

/// A control message, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    pub kind: Kind,
    pub nonce: u64,
    /// The outer IP packet size the probe tests (outer IP and UDP headers included).
    pub size: u16,
}

/// Whether a datagram may be a control message: its first byte is not an IP version. Cheap
/// enough to ask of every datagram; [`Control::parse`] says whether it is one.
pub fn is_control(datagram: &[u8]) -> bool {
    datagram.first() == Some(&0)
}

impl Control {
    /// Parses a datagram as a control message. `None` for anything else: a wrong magic or kind,
    /// a nonzero reserved field, an acknowledgement of any length but [`HEADER_LEN`], a probe
    /// shorter than its header or with nonzero padding (the padding is all a probe carries, and
    /// a probe with content is not one of ours).
    pub fn parse(datagram: &[u8]) -> Option<Control> {
        let header = datagram.get(..HEADER_LEN)?;
        if header[field::MAGIC] != MAGIC || header[field::RESERVED] != [0, 0] {
            return None;
        }
        let kind = match header[field::KIND] {
            1 if datagram[HEADER_LEN..].iter().all(|b| *b == 0) => Kind::Probe,
            2 if datagram.len() == HEADER_LEN => Kind::Ack,
            _ => return None,
        };
        Some(Control {
            kind,
            nonce: u64::from_be_bytes(header[field::NONCE].try_into().expect("8 bytes")),
            size: u16::from_be_bytes(header[field::SIZE].try_into().expect("2 bytes")),
        })
    }

    /// Writes this message's header into `out` and, for a probe, zeros up to `payload_len`
    /// bytes. Returns the datagram's length: [`HEADER_LEN`] for an acknowledgement,
    /// `payload_len` (at least [`HEADER_LEN`]) for a probe, or `None` if `out` is too short.
    pub fn write(&self, out: &mut [u8], payload_len: usize) -> Option<usize> {
        let len = match self.kind {
            Kind::Probe => payload_len.max(HEADER_LEN),
            Kind::Ack => HEADER_LEN,
        };
        let out = out.get_mut(..len)?;
        out[field::MAGIC].copy_from_slice(&MAGIC);
        out[field::KIND] = self.kind.to_raw();
        out[field::NONCE].copy_from_slice(&self.nonce.to_be_bytes());
        out[field::SIZE].copy_from_slice(&self.size.to_be_bytes());
        out[field::RESERVED].fill(0);
        out[HEADER_LEN..].fill(0);
        Some(len)
    }

    /// The acknowledgement that answers this probe.
    pub fn ack(&self) -> Control {
        Control {
            kind: Kind::Ack,
            ..*self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static ACK: [u8; 16] = [
        0x00, b'T', b'F', 2, 1, 2, 3, 4, 5, 6, 7, 8, 0x05, 0xa8, 0, 0,
    ];

    #[test]
    fn deconstruct() {
        assert_eq!(
            Control::parse(&ACK),
            Some(Control {
                kind: Kind::Ack,
                nonce: 0x0102_0304_0506_0708,
                size: 1448,
            })
        );
        assert!(is_control(&ACK));
    }

    #[test]
    fn construct_and_round_trip() {
        let probe = Control {
            kind: Kind::Probe,
            nonce: u64::MAX - 3,
            size: 1448,
        };
        let mut out = [0xffu8; 1500];
        let len = probe.write(&mut out, 1420).unwrap();
        assert_eq!(len, 1420);
        assert_eq!(Control::parse(&out[..len]), Some(probe));
        let len = probe.ack().write(&mut out, 1420).unwrap();
        assert_eq!(len, HEADER_LEN);
        assert_eq!(Control::parse(&out[..len]), Some(probe.ack()));
        assert_eq!(probe.write(&mut out[..100], 1420), None, "too short");
    }

    #[test]
    fn impossible_len_and_foreign_bytes_are_not_control() {
        assert_eq!(Control::parse(&ACK[..15]), None);
        let mut long_ack = ACK.to_vec();
        long_ack.push(0);
        assert_eq!(
            Control::parse(&long_ack),
            None,
            "an ack is 16 bytes exactly"
        );
        for (at, value) in [(0, 0x45), (1, b't'), (3, 0), (3, 3), (14, 1), (15, 1)] {
            let mut bad = ACK;
            bad[at] = value;
            assert_eq!(Control::parse(&bad), None, "byte {at} = {value}");
        }
        let mut probe = [0u8; 64];
        Control {
            kind: Kind::Probe,
            nonce: 1,
            size: 92,
        }
        .write(&mut probe, 64)
        .unwrap();
        assert!(Control::parse(&probe).is_some());
        probe[40] = 1;
        assert_eq!(Control::parse(&probe), None, "a probe carries only zeros");
        // No IP packet is a control message.
        assert!(!is_control(&[0x45, 0, 0, 20]));
        assert!(!is_control(&[0x60]));
        assert!(!is_control(&[]));
    }
}
