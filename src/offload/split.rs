//! Splitting a TSO/USO super-packet into IP packets of at most `header + gso_size` bytes.
//!
//! Rules (what the kernel's own `tcp_gso_segment`/`__udp_gso_segment` in
//! net/ipv4/tcp_offload.c and net/ipv4/udp_offload.c, and `inet_gso_segment`/`ipv6_gso_segment`
//! do): every segment gets a copy of all the headers, IPv4 options and IPv6 extension headers
//! included; IPv4 gets id + i, its total length and a fresh header checksum; IPv6 its payload
//! length (which counts the extension headers); TCP gets seq + i * gso_size, FIN and PSH on the
//! last segment only, CWR on the first only (ECE on all), and a full checksum; UDP gets its length
//! and checksum (0 sent as 0xffff, RFC 768). The `hdr_len` in the virtio header is not trusted:
//! headers are parsed. Which IPv6 extension headers are taken is [`Transport::parse`]'s
//! business; headers longer than [`MAX_HEADER_LEN`] are refused, so a caller can size its header
//! room once.

use super::{OffloadError, PROTO_TCP, PROTO_UDP, Transport, tcp_flags};
use crate::wire::checksum::Sum;
use crate::wire::ip::field::V4_ID;
use crate::wire::transport::field::{TCP_FLAGS, TCP_SEQ, UDP_LENGTH};
use crate::wire::vnet::GsoType;
use std::ops::Range;

/// The longest headers (IP, options or extension headers, TCP/UDP) a split takes, and so the room
/// a caller of [`Split::segment`] needs per segment. IPv4 with 40 bytes of options and TCP with 40
/// bytes of options (120) fit; IPv6 leaves 56 bytes of extension headers beside TCP with
/// timestamps.
pub const MAX_HEADER_LEN: usize = 128;

/// Segments per UDP GSO send: the portable limit (`UDP_MAX_SEGMENTS`, 128 only from Linux 6.9).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Bytes per UDP GSO send: an IPv4 datagram's largest payload (65535 - 20 - 8).
pub const GSO_MAX_BYTES: usize = 65507;

/// How many segments of `segment_len` bytes (the first, full-sized one) one UDP GSO send carries.
pub fn segments_per_send(segment_len: usize) -> usize {
    GSO_MAX_SEGMENTS
        .min(GSO_MAX_BYTES / segment_len.max(1))
        .max(1)
}

/// The headers [`tun_gso_max_size`] is sized for: IPv6 + TCP with timestamps (40 + 20 + 12).
const CAP_HEADERS: usize = 72;

/// The `gso_max_size` to give a TUN of this MTU so that the stack's super-packets split into
/// segments that fit one UDP GSO send. Uncapped, a 64 KB TCP super-packet at MTU 1420 splits into
/// 47 segments, one more than a send holds, and every super-packet costs two sends (and two
/// receives, and two TUN writes at the far end). With headers of `h` bytes a super-packet of
/// `cap` bytes has `ceil((cap - h) / (mtu - h))` segments; the cap is the largest size for which
/// that is at most `segments_per_send(mtu)` when `h` = 72, and so also for every smaller `h`
/// (IPv4, or no timestamps). `None`: no cap helps, because the default 64 KiB limit already fits,
/// or because a send holds one segment anyway (MTUs over 32 KB).
pub fn tun_gso_max_size(mtu: usize) -> Option<u32> {
    tun_gso_max_size_growing(mtu, 0)
}

/// [`tun_gso_max_size`] for a relay whose datagrams are up to `growth` bytes longer than the
/// segments they carry (WireGuard's header, tag and padding): a send then holds
/// `segments_per_send(mtu + growth)` of them, and the cap counts that many segments.
pub fn tun_gso_max_size_growing(mtu: usize, growth: usize) -> Option<u32> {
    let per_send = segments_per_send(mtu + growth);
    if mtu <= CAP_HEADERS || per_send < 2 {
        return None;
    }
    let cap = CAP_HEADERS + per_send * (mtu - CAP_HEADERS);
    (cap < 65536).then_some(cap as u32)
}

/// How one super-packet splits. Built by [`Split::plan`]; then [`Split::segment`] for each index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub transport: Transport,
    /// Payload bytes per segment (the last may carry fewer).
    pub gso_size: usize,
    pub count: usize,
    payload_len: usize,
}

impl Split {
    /// Plans the split of `packet` (an IP packet, no virtio header) for GSO type `gso` and
    /// `gso_size`, refusing more than `max_segments` segments.
    pub fn plan(
        packet: &[u8],
        gso: GsoType,
        gso_size: u16,
        max_segments: usize,
    ) -> Result<Split, OffloadError> {
        let transport = Transport::parse(packet).ok_or(OffloadError::BadHeaders)?;
        let matches = match gso {
            GsoType::TcpV4 => transport.protocol == PROTO_TCP && !transport.ipv6,
            GsoType::TcpV6 => transport.protocol == PROTO_TCP && transport.ipv6,
            GsoType::UdpL4 => transport.protocol == PROTO_UDP,
            _ => return Err(OffloadError::BadGso),
        };
        if !matches {
            return Err(OffloadError::GsoTypeMismatch);
        }
        if transport.header_len() > MAX_HEADER_LEN {
            return Err(OffloadError::HeadersTooLong);
        }
        if gso_size == 0 {
            return Err(OffloadError::BadGso);
        }
        let gso_size = usize::from(gso_size);
        let payload_len = packet.len() - transport.header_len();
        let count = payload_len.div_ceil(gso_size).max(1);
        if count > max_segments {
            return Err(OffloadError::TooManySegments);
        }
        Ok(Split {
            transport,
            gso_size,
            count,
            payload_len,
        })
    }

    /// The bytes on the wire of segment `index` (headers plus payload).
    pub fn segment_len(&self, index: usize) -> usize {
        self.transport.header_len() + self.payload_range(index).len()
    }

    /// Where segment `index`'s payload is in the super-packet.
    pub fn payload_range(&self, index: usize) -> Range<usize> {
        let start = self.transport.header_len() + index * self.gso_size;
        let end = (start + self.gso_size).min(self.transport.header_len() + self.payload_len);
        start..end
    }

    /// Writes segment `index`'s headers into `out` (at least `transport.header_len()` bytes, which
    /// is at most [`MAX_HEADER_LEN`]) and
    /// returns the range of its payload in `packet`. `packet` must be the one planned.
    pub fn segment(&self, packet: &[u8], index: usize, out: &mut [u8]) -> Range<usize> {
        let t = &self.transport;
        let header_len = t.header_len();
        let payload = self.payload_range(index);
        let l4_len = t.l4_header_len + payload.len();
        let header = &mut out[..header_len];
        header.copy_from_slice(&packet[..header_len]);
        let last = index + 1 == self.count;
        if !t.ipv6 {
            let id = u16::from_be_bytes(packet[V4_ID].try_into().expect("2 bytes"))
                .wrapping_add(index as u16);
            header[V4_ID].copy_from_slice(&id.to_be_bytes());
        }
        t.set_ip_len(header, l4_len);
        let l4 = t.ip_header_len;
        if t.protocol == PROTO_TCP {
            let seq = t.l4_field(TCP_SEQ);
            let first_seq = u32::from_be_bytes(packet[seq.clone()].try_into().expect("4 bytes"));
            let seq_value = first_seq.wrapping_add((index * self.gso_size) as u32);
            header[seq].copy_from_slice(&seq_value.to_be_bytes());
            let mut flags = packet[l4 + TCP_FLAGS];
            if !last {
                flags &= !(tcp_flags::FIN | tcp_flags::PSH);
            }
            if index != 0 {
                flags &= !tcp_flags::CWR;
            }
            header[l4 + TCP_FLAGS] = flags;
        } else {
            header[t.l4_field(UDP_LENGTH)].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        let field = l4 + t.checksum_offset();
        header[field..field + 2].fill(0);
        let sum = t.pseudo_header(header, l4_len)
            + Sum::of(&header[l4..])
            + Sum::of(&packet[payload.clone()]);
        let c = if t.protocol == PROTO_UDP {
            sum.finish_udp()
        } else {
            sum.finish()
        };
        header[field..field + 2].copy_from_slice(&c.to_be_bytes());
        payload
    }

    /// Segment `index` as one contiguous packet (headers, then payload), for tests and for
    /// callers that copy.
    pub fn segment_into(&self, packet: &[u8], index: usize, out: &mut Vec<u8>) {
        let header_len = self.transport.header_len();
        out.clear();
        out.resize(header_len, 0);
        let payload = self.segment(packet, index, out);
        out.extend_from_slice(&packet[payload]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_packets::{Spec, assert_valid, build};
    use super::*;

    #[test]
    fn capped_super_packets_fit_one_gso_send() {
        for mtu in [576, 1280, 1420, 1452, 1472, 1500, 4000, 9000, 16000, 65535] {
            let Some(cap) = tun_gso_max_size(mtu) else {
                assert!(mtu > 32000, "MTU {mtu} needs a cap");
                continue;
            };
            let cap = cap as usize;
            let per_send = segments_per_send(mtu);
            assert!(per_send * mtu <= GSO_MAX_BYTES && per_send <= GSO_MAX_SEGMENTS);
            // TCP over IPv4 and IPv6, with and without options, and UDP: every header up to 72.
            for headers in [28, 40, 48, 52, 60, 72] {
                let segments = (cap - headers).div_ceil(mtu - headers);
                assert!(
                    segments <= per_send,
                    "MTU {mtu}, {headers} B of headers: {segments} segments > {per_send}"
                );
            }
            // And the cap is tight: one byte more needs one segment more at 72 B of headers.
            assert!((cap + 1 - CAP_HEADERS).div_ceil(mtu - CAP_HEADERS) > per_send);
        }
        assert_eq!(
            tun_gso_max_size(1420),
            Some(62080),
            "46 segments of 1348 + 72"
        );
    }

    /// Datagrams that grow by WireGuard's 32 bytes (a full segment is never padded past the
    /// MTU): the cap counts the segments whose datagrams fit one send, one fewer at 1420 than
    /// the plain cap (45 datagrams of 1452 bytes against 46 of 1420).
    #[test]
    fn capped_super_packets_of_grown_datagrams_fit_one_gso_send() {
        for mtu in [576, 1280, 1420, 1500, 9000] {
            let cap = tun_gso_max_size_growing(mtu, 32).unwrap() as usize;
            let per_send = segments_per_send(mtu + 32);
            assert!(per_send * (mtu + 32) <= GSO_MAX_BYTES);
            for headers in [28, 40, 52, 72] {
                let segments = (cap - headers).div_ceil(mtu - headers);
                assert!(segments <= per_send, "MTU {mtu}: {segments} > {per_send}");
            }
            assert!((cap + 1 - CAP_HEADERS).div_ceil(mtu - CAP_HEADERS) > per_send);
            assert_eq!(tun_gso_max_size_growing(mtu, 0), tun_gso_max_size(mtu));
        }
        assert_eq!(segments_per_send(1420 + 32), 45);
        assert_eq!(tun_gso_max_size_growing(1420, 32), Some(72 + 45 * 1348));
    }

    #[test]
    fn a_capped_super_packet_plans_into_one_send() {
        let cap = tun_gso_max_size(1420).unwrap() as usize;
        for ipv6 in [false, true] {
            let headers = if ipv6 { 72 } else { 52 };
            let p = build(&Spec {
                ipv6,
                tcp_options: vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
                payload_len: cap - headers,
                ..Spec::default()
            });
            assert_eq!(p.len(), cap);
            let gso = if ipv6 { GsoType::TcpV6 } else { GsoType::TcpV4 };
            let plan = Split::plan(&p, gso, (1420 - headers) as u16, 128).unwrap();
            assert_eq!(plan.segment_len(0), 1420);
            assert!(plan.count <= segments_per_send(1420), "{plan:?}");
        }
    }

    fn gso_for(spec: &Spec) -> GsoType {
        match (spec.udp, spec.ipv6) {
            (true, _) => GsoType::UdpL4,
            (false, false) => GsoType::TcpV4,
            (false, true) => GsoType::TcpV6,
        }
    }

    fn split_all(packet: &[u8], gso: GsoType, gso_size: u16) -> Vec<Vec<u8>> {
        let plan = Split::plan(packet, gso, gso_size, 1024).unwrap();
        (0..plan.count)
            .map(|i| {
                let mut seg = Vec::new();
                plan.segment_into(packet, i, &mut seg);
                assert_eq!(seg.len(), plan.segment_len(i));
                seg
            })
            .collect()
    }

    #[test]
    fn table_of_splits() {
        // (ipv6, udp, payload, gso_size, expected segments, tail length)
        let cases = [
            (false, false, 14000, 1400, 10, 1400),
            (false, false, 14001, 1400, 11, 1),
            (true, false, 1000, 1400, 1, 1000),
            (true, false, 65000 - 60, 1380, 48, (65000 - 60) % 1380),
            (false, true, 5000, 1000, 5, 1000),
            (true, true, 4500, 1000, 5, 500),
            (
                false,
                false,
                90000 % 65000,
                536,
                (90000 % 65000usize).div_ceil(536),
                (90000 % 65000) % 536,
            ),
            // More than 64 segments: the worker needs several GSO sends for one super-packet.
            (
                false,
                false,
                65000 - 40,
                536,
                (65000 - 40usize).div_ceil(536),
                (65000 - 40) % 536,
            ),
            (
                true,
                true,
                65000 - 48,
                512,
                (65000 - 48usize).div_ceil(512),
                (65000 - 48) % 512,
            ),
        ];
        for (ipv6, udp, payload_len, gso, count, tail) in cases {
            let spec = Spec {
                ipv6,
                udp,
                payload_len,
                flags: tcp_flags::ACK | tcp_flags::PSH,
                ..Spec::default()
            };
            let packet = build(&spec);
            let segments = split_all(&packet, gso_for(&spec), gso);
            assert_eq!(segments.len(), count, "{ipv6} {udp} {payload_len}/{gso}");
            let t = Transport::parse(&packet).unwrap();
            let tail = if tail == 0 { gso as usize } else { tail };
            assert_eq!(segments.last().unwrap().len() - t.header_len(), tail);
            let mut reassembled = Vec::new();
            for (i, seg) in segments.iter().enumerate() {
                assert_valid(seg);
                let st = Transport::parse(seg).unwrap();
                reassembled.extend_from_slice(&seg[st.header_len()..]);
                if !udp {
                    let l4 = st.ip_header_len;
                    let seq = u32::from_be_bytes(seg[l4 + 4..l4 + 8].try_into().unwrap());
                    assert_eq!(seq, 1000 + (i * gso as usize) as u32);
                    let psh = seg[l4 + 13] & tcp_flags::PSH != 0;
                    assert_eq!(psh, i + 1 == segments.len(), "PSH only on the last");
                }
                if !ipv6 {
                    assert_eq!(
                        u16::from_be_bytes([seg[4], seg[5]]),
                        7 + i as u16,
                        "IPv4 id increments"
                    );
                }
            }
            assert_eq!(reassembled, packet[t.header_len()..], "payload survives");
        }
    }

    #[test]
    fn flags_fin_on_last_cwr_on_first_and_options_copied() {
        let options = vec![1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3];
        let spec = Spec {
            payload_len: 3000,
            flags: tcp_flags::ACK
                | tcp_flags::FIN
                | tcp_flags::PSH
                | tcp_flags::CWR
                | tcp_flags::ECE,
            tcp_options: options.clone(),
            ipv4_options: 4,
            ..Spec::default()
        };
        let packet = build(&spec);
        let segments = split_all(&packet, GsoType::TcpV4, 1000);
        assert_eq!(segments.len(), 3);
        let flags: Vec<u8> = segments.iter().map(|s| s[24 + 13]).collect();
        assert_eq!(flags[0], tcp_flags::ACK | tcp_flags::CWR | tcp_flags::ECE);
        assert_eq!(flags[1], tcp_flags::ACK | tcp_flags::ECE);
        assert_eq!(
            flags[2],
            tcp_flags::ACK | tcp_flags::FIN | tcp_flags::PSH | tcp_flags::ECE
        );
        for s in &segments {
            assert_valid(s);
            assert_eq!(&s[24 + 20..24 + 32], &options[..]);
            assert_eq!(&s[20..24], &[1, 1, 1, 1], "IPv4 options copied");
        }
    }

    #[test]
    fn udp_zero_checksum_is_sent_as_ffff() {
        let mut packet = build(&Spec {
            udp: true,
            payload_len: 100,
            ..Spec::default()
        });
        let plan = Split::plan(&packet, GsoType::UdpL4, 200, 16).unwrap();
        let mut seg = Vec::new();
        plan.segment_into(&packet, 0, &mut seg);
        // Add the current checksum into a payload word: the segment's sum becomes 0xffff, so
        // its checksum computes to 0, which must go out as 0xffff.
        let c = u16::from_be_bytes([seg[26], seg[27]]);
        let word = u16::from_be_bytes([packet[28], packet[29]]);
        let adjusted = Sum(word).add_u16(c).0;
        packet[28..30].copy_from_slice(&adjusted.to_be_bytes());
        plan.segment_into(&packet, 0, &mut seg);
        assert_eq!(
            u16::from_be_bytes([seg[26], seg[27]]),
            0xffff,
            "a UDP checksum of 0 means none"
        );
        assert_valid(&seg);
    }

    #[test]
    fn refusals() {
        let tcp4 = build(&Spec::default());
        assert_eq!(
            Split::plan(&tcp4, GsoType::TcpV6, 100, 64),
            Err(OffloadError::GsoTypeMismatch)
        );
        assert_eq!(
            Split::plan(&tcp4, GsoType::UdpL4, 100, 64),
            Err(OffloadError::GsoTypeMismatch)
        );
        assert_eq!(
            Split::plan(&tcp4, GsoType::TcpV4, 0, 64),
            Err(OffloadError::BadGso)
        );
        assert_eq!(
            Split::plan(&tcp4, GsoType::Udp, 10, 64),
            Err(OffloadError::BadGso)
        );
        assert_eq!(
            Split::plan(&tcp4, GsoType::TcpV4, 1, 64),
            Err(OffloadError::TooManySegments)
        );
        assert_eq!(
            Split::plan(&tcp4[..30], GsoType::TcpV4, 10, 64),
            Err(OffloadError::BadHeaders)
        );
        let mut frag = tcp4.clone();
        frag[7] = 1;
        assert_eq!(
            Split::plan(&frag, GsoType::TcpV4, 10, 64),
            Err(OffloadError::BadHeaders)
        );
    }

    #[test]
    fn exactly_one_segment_keeps_every_flag() {
        let spec = Spec {
            payload_len: 500,
            flags: tcp_flags::ACK | tcp_flags::FIN | tcp_flags::CWR,
            ..Spec::default()
        };
        let packet = build(&spec);
        let segments = split_all(&packet, GsoType::TcpV4, 1400);
        assert_eq!(segments, vec![packet]);
    }
}
