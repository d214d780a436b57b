//! `struct virtio_net_hdr` (include/uapi/linux/virtio_net.h), the header that starts every read
//! and write on a TUN opened with `IFF_VNET_HDR`.
//!
//! The TUN device speaks it in host byte order (we never set `TUNSETVNETLE`/`BE`), so fields are
//! read with `from_ne_bytes` over fixed ranges rather than by casting to a `#[repr(C)]` struct.

/// Bytes in the header. We set this size explicitly with `TUNSETVNETHDRSZ`.
pub const LEN: usize = 10;

mod field {
    use core::ops::Range;
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Range<usize> = 2..4;
    pub const GSO_SIZE: Range<usize> = 4..6;
    pub const CSUM_START: Range<usize> = 6..8;
    pub const CSUM_OFFSET: Range<usize> = 8..10;
}

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
pub const FLAG_NEEDS_CSUM: u8 = 1;

/// The `gso_type` values of virtio_net.h, without the ECN bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoType {
    None,
    TcpV4,
    Udp,
    TcpV6,
    UdpL4,
    /// A value this build does not know. Never silently treated as `None`.
    Unknown(u8),
}

/// `VIRTIO_NET_HDR_GSO_ECN`, or-ed into `gso_type`.
pub const GSO_ECN: u8 = 0x80;

impl GsoType {
    pub fn from_raw(raw: u8) -> GsoType {
        match raw & !GSO_ECN {
            0 => GsoType::None,
            1 => GsoType::TcpV4,
            3 => GsoType::Udp,
            4 => GsoType::TcpV6,
            5 => GsoType::UdpL4,
            other => GsoType::Unknown(other),
        }
    }

    /// The `gso_type` value, without the ECN bit.
    pub fn to_raw(self) -> u8 {
        match self {
            GsoType::None => 0,
            GsoType::TcpV4 => 1,
            GsoType::Udp => 3,
            GsoType::TcpV6 => 4,
            GsoType::UdpL4 => 5,
            GsoType::Unknown(other) => other,
        }
    }
}

/// A read-only view of a virtio_net_hdr at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct VnetHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VnetHeader<T> {
    /// Checks that the buffer holds a whole header. No accessor panics afterwards.
    pub fn new_checked(buffer: T) -> Option<Self> {
        (buffer.as_ref().len() >= LEN).then_some(VnetHeader { buffer })
    }

    fn u16_at(&self, range: core::ops::Range<usize>) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_ne_bytes([b[range.start], b[range.start + 1]])
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    pub fn gso_type(&self) -> GsoType {
        GsoType::from_raw(self.buffer.as_ref()[field::GSO_TYPE])
    }
    pub fn hdr_len(&self) -> u16 {
        self.u16_at(field::HDR_LEN)
    }
    pub fn gso_size(&self) -> u16 {
        self.u16_at(field::GSO_SIZE)
    }
    pub fn csum_start(&self) -> u16 {
        self.u16_at(field::CSUM_START)
    }
    pub fn csum_offset(&self) -> u16 {
        self.u16_at(field::CSUM_OFFSET)
    }
    /// True for a plain packet: no GSO and no partial checksum to complete.
    pub fn is_plain(&self) -> bool {
        self.gso_type() == GsoType::None && self.flags() & FLAG_NEEDS_CSUM == 0
    }
}

/// Setters, for the header of a TCP write (the coalescer fills one in a `[u8; LEN]`).
impl<T: AsRef<[u8]> + AsMut<[u8]>> VnetHeader<T> {
    fn set_u16_at(&mut self, range: core::ops::Range<usize>, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_ne_bytes());
    }

    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }
    /// The GSO type, with `VIRTIO_NET_HDR_GSO_ECN` when `ecn`.
    pub fn set_gso_type(&mut self, gso_type: GsoType, ecn: bool) {
        self.buffer.as_mut()[field::GSO_TYPE] = gso_type.to_raw() | if ecn { GSO_ECN } else { 0 };
    }
    pub fn set_hdr_len(&mut self, value: u16) {
        self.set_u16_at(field::HDR_LEN, value);
    }
    pub fn set_gso_size(&mut self, value: u16) {
        self.set_u16_at(field::GSO_SIZE, value);
    }
    pub fn set_csum_start(&mut self, value: u16) {
        self.set_u16_at(field::CSUM_START, value);
    }
    pub fn set_csum_offset(&mut self, value: u16) {
        self.set_u16_at(field::CSUM_OFFSET, value);
    }
}

/// Writes the all-zero header that a plain packet needs on a TUN write.
#[cfg(test)]
pub fn write_plain(buffer: &mut [u8]) {
    buffer[..LEN].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_in_host_order() {
        let mut raw = [0u8; LEN];
        raw[0] = FLAG_NEEDS_CSUM;
        raw[1] = 4 | GSO_ECN;
        raw[2..4].copy_from_slice(&54u16.to_ne_bytes());
        raw[4..6].copy_from_slice(&1440u16.to_ne_bytes());
        raw[6..8].copy_from_slice(&40u16.to_ne_bytes());
        raw[8..10].copy_from_slice(&16u16.to_ne_bytes());
        let h = VnetHeader::new_checked(&raw[..]).unwrap();
        assert_eq!(h.gso_type(), GsoType::TcpV6);
        assert_eq!(h.hdr_len(), 54);
        assert_eq!(h.gso_size(), 1440);
        assert_eq!(h.csum_start(), 40);
        assert_eq!(h.csum_offset(), 16);
        assert!(!h.is_plain());
    }

    #[test]
    fn short_buffer_is_rejected_and_zero_header_is_plain() {
        assert!(VnetHeader::new_checked(&[0u8; LEN - 1][..]).is_none());
        let mut raw = [0xffu8; LEN + 2];
        write_plain(&mut raw);
        assert!(VnetHeader::new_checked(&raw[..]).unwrap().is_plain());
        assert_eq!(&raw[LEN..], &[0xff, 0xff]);
    }

    #[test]
    fn setters_write_what_the_getters_read() {
        let mut raw = [0u8; LEN];
        let mut h = VnetHeader::new_checked(&mut raw[..]).unwrap();
        h.set_flags(FLAG_NEEDS_CSUM);
        h.set_gso_type(GsoType::TcpV6, true);
        h.set_hdr_len(54);
        h.set_gso_size(1440);
        h.set_csum_start(40);
        h.set_csum_offset(16);
        let mut expected = [0u8; LEN];
        expected[0] = FLAG_NEEDS_CSUM;
        expected[1] = 4 | GSO_ECN;
        expected[2..4].copy_from_slice(&54u16.to_ne_bytes());
        expected[4..6].copy_from_slice(&1440u16.to_ne_bytes());
        expected[6..8].copy_from_slice(&40u16.to_ne_bytes());
        expected[8..10].copy_from_slice(&16u16.to_ne_bytes());
        assert_eq!(raw, expected);
        for raw in 0..=255u8 {
            let gso = GsoType::from_raw(raw);
            assert_eq!(gso.to_raw(), raw & !GSO_ECN, "{raw:#x}");
        }
    }

    #[test]
    fn unknown_gso_type_is_not_none() {
        assert_eq!(GsoType::from_raw(2), GsoType::Unknown(2));
        assert_eq!(GsoType::from_raw(0), GsoType::None);
        assert_eq!(GsoType::from_raw(5), GsoType::UdpL4);
    }
}
