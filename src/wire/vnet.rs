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

/// Writes the all-zero header that a plain packet needs on a TUN write.
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
    fn unknown_gso_type_is_not_none() {
        assert_eq!(GsoType::from_raw(2), GsoType::Unknown(2));
        assert_eq!(GsoType::from_raw(0), GsoType::None);
        assert_eq!(GsoType::from_raw(5), GsoType::UdpL4);
    }
}
