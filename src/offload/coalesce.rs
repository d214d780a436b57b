//! Coalescing the segments of one UDP GRO buffer into super-packets for the TUN (receive GRO).
//!
//! Only *consecutive* segments are merged, so nothing is reordered; a segment that cannot join the
//! run before it starts a new one. A merged run is written with `NEEDS_CSUM` and a GSO type, and
//! the kernel may segment it again (forwarding, or a TSO-less device) with `tcp_gso_segment` /
//! `__udp_gso_segment`. So the rule is: merge only what re-segmentation gives back byte for byte,
//! which is also what the kernel's own GRO merges (net/ipv4/tcp_offload.c `tcp_gro_receive`,
//! net/ipv4/udp_offload.c `udp_gro_receive_segment`, net/ipv4/af_inet.c `inet_gro_receive`,
//! net/ipv6/ip6_offload.c `ipv6_gro_receive`), minus what a virtio_net_hdr cannot say:
//!
//! * the same addresses, ports and protocol; the same TOS/traffic class (ECN bits included),
//!   TTL/hop limit, DF and IPv6 flow label;
//! * no IPv4 options and no IPv6 extension headers (the kernel flushes on `*(u8 *)iph != 0x45`;
//!   it does merge identical IPv6 extension headers, we never do), no fragments (the parser
//!   refuses those: [`validate`] gives them no [`Transport`]), and a valid IPv4 header checksum;
//! * IPv4 IDs that go up by one per segment. The kernel also merges a fixed ID when DF is set
//!   and marks the result `SKB_GSO_TCP_FIXEDID`, but a virtio_net_hdr has no way to carry that
//!   mark: the kernel would re-segment our write with incrementing IDs and forward different
//!   packets from those that arrived;
//! * for TCP: the same ack, adjacent sequence numbers, identical options (so timestamps must be
//!   equal too) and urgent pointer, and the same "flag word" (data offset, reserved bits, flags
//!   and window; `tcp_flag_word`), except that the head may carry CWR and the last PSH. SYN, RST,
//!   URG and FIN never merge (the kernel takes a FIN as the last segment; we are stricter);
//! * for UDP: a length field equal to the datagram's, and a checksum that is present (the kernel
//!   flushes on a zero UDP checksum "for symmetry with GSO", which always computes one);
//! * valid TCP/UDP checksums: the merged packet is written with `NEEDS_CSUM`, so the kernel would
//!   otherwise bless a corrupt segment with a fresh checksum;
//! * only the last segment shorter than the first, at most [`MAX_RUN_SEGMENTS`] segments and
//!   65535 bytes in all.
//!
//! Each datagram is parsed once, on arrival: [`validate`] checks it against the datagram and finds
//! its TCP or UDP header in one pass, and the worker keeps the answer in a [`Segment`], which
//! [`plan_segments`] and [`finish_segments`] read instead of parsing again. Between the two, ECN
//! decapsulation (`super::ecn::decapsulate`) may rewrite a segment's TOS / traffic class and IPv4
//! header checksum; it never moves a header or changes a length, so the [`Transport`] found before
//! it is still the one the bytes would give. The planner reads the rewritten bytes themselves, so
//! the new marks decide what merges.

use super::{PROTO_TCP, PROTO_UDP, Transport, checksum_is_valid, tcp_flags};
use crate::wire::checksum::Sum;
use crate::wire::ip::field::{
    V4_DST, V4_FRAGMENT, V4_ID, V4_PROTOCOL, V4_SRC, V4_TOS, V6_DST, V6_NEXT_HEADER,
    V6_VERSION_CLASS_FLOW,
};
use crate::wire::transport::field::{
    PORTS, TCP_ACK, TCP_DATA_OFFSET, TCP_FLAGS, TCP_SEQ, TCP_URGENT, TCP_WINDOW, UDP_CHECKSUM,
    UDP_LENGTH,
};
use crate::wire::vnet::{self, FLAG_NEEDS_CSUM, GsoType, VnetHeader};
use crate::wire::{IpPacket, Malformed};
use core::ops::Range;

/// At most this many segments in one super-packet (the portable GSO limit).
pub const MAX_RUN_SEGMENTS: usize = 64;
/// An IP packet's largest size.
const MAX_PACKET: usize = 65535;

/// Which protocols may be merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub tcp: bool,
    pub udp: bool,
}

impl Policy {
    pub const ALL: Policy = Policy {
        tcp: true,
        udp: true,
    };
    pub const NONE: Policy = Policy {
        tcp: false,
        udp: false,
    };
}

/// Segments `first..first + count` of a buffer, to be written to the TUN as one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub first: usize,
    pub count: usize,
}

/// Validates one received datagram as an inner IP packet and finds its TCP or UDP header, in one
/// pass: `Err` for a datagram to drop (the reason is counted), `Ok(None)` for a packet to write
/// as it is (a fragment, another protocol, refused IPv6 extension headers), `Ok(Some(_))` for one
/// the coalescer may merge. The same rules as `IpPacket::new_checked` then `Transport::parse`.
pub fn validate(bytes: &[u8]) -> Result<Option<Transport>, Malformed> {
    Ok(IpPacket::new_checked(bytes)?.transport())
}

/// One datagram of a UDP GRO buffer that [`validate`] accepted: `len` bytes at `at`, and what
/// `validate` found in them.
///
/// `transport` must be what `validate` returned for those bytes. ECN decapsulation between the
/// two keeps it so (see the module docs); any other rewrite of the headers needs a new
/// `validate`. The planner trusts it to stay in bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub at: usize,
    pub len: usize,
    pub transport: Option<Transport>,
}

impl Segment {
    /// Where the segment is in its buffer.
    pub fn range(&self) -> Range<usize> {
        self.at..self.at + self.len
    }
}

struct Head {
    transport: Transport,
    first: usize,
    /// Where the head segment is in the buffer.
    at: usize,
    len: usize,
    count: usize,
    payload_len: usize,
    total_len: usize,
    /// Set once the run can take no more (PSH, a short segment, size or count limit).
    closed: bool,
    /// The next sequence number expected (TCP).
    next_seq: u32,
}

fn payload_len(packet: &[u8], t: &Transport) -> usize {
    packet.len() - t.header_len()
}

fn tcp_seq(packet: &[u8], t: &Transport) -> u32 {
    u32::from_be_bytes(packet[t.l4_field(TCP_SEQ)].try_into().expect("4 bytes"))
}

fn tcp_flags_of(packet: &[u8], t: &Transport) -> u8 {
    packet[t.ip_header_len + TCP_FLAGS]
}

fn ipv4_id(packet: &[u8]) -> u16 {
    u16::from_be_bytes(packet[V4_ID].try_into().expect("2 bytes"))
}

/// The checks every segment of a merged run must pass on its own, head or follower: a sound IPv4
/// header, a UDP length and checksum as `udp_gro_receive_segment` wants them, a valid L4 checksum.
fn is_sound(packet: &[u8], t: &Transport) -> bool {
    if !t.ipv6 && Sum::of(&packet[..t.ip_header_len]).0 != 0xffff {
        return false; // inet_gro_receive: ip_fast_csum fails
    }
    if t.protocol == PROTO_UDP {
        let l4 = &packet[t.ip_header_len..];
        let length = usize::from(u16::from_be_bytes(
            l4[UDP_LENGTH].try_into().expect("2 bytes"),
        ));
        if length != l4.len() || l4[UDP_CHECKSUM] == [0, 0] {
            return false;
        }
    }
    checksum_is_valid(packet, t)
}

/// Whether `packet` may start a run (a run of one is always fine; this says whether it may grow).
fn can_lead(packet: &[u8], t: &Transport, policy: Policy) -> bool {
    let allowed = match t.protocol {
        PROTO_TCP => policy.tcp,
        PROTO_UDP => policy.udp,
        _ => false,
    };
    if !allowed || t.has_ip_options() || payload_len(packet, t) == 0 {
        return false;
    }
    if t.protocol == PROTO_TCP {
        let flags = tcp_flags_of(packet, t);
        if flags
            & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST | tcp_flags::URG | tcp_flags::PSH)
            != 0
        {
            return false;
        }
    }
    is_sound(packet, t)
}

/// Whether `next` may be appended to the run led by `head` (whose last segment ended at
/// `head.next_seq`).
fn can_append(head_packet: &[u8], head: &Head, next: &[u8], t: &Transport) -> bool {
    let h = &head.transport;
    // Equal transports: the same IP version, protocol and header lengths, and since the head has
    // no IP options (`can_lead`), neither has `next`.
    if head.closed || head.count >= MAX_RUN_SEGMENTS || t != h {
        return false;
    }
    let len = payload_len(next, t);
    if len == 0 || len > head.payload_len || head.total_len + len > MAX_PACKET {
        return false;
    }
    // IP fields that must match: IPv4 TOS, flags (DF), TTL, protocol and addresses, with the ID
    // one more per segment; IPv6 version, traffic class and flow label, next header, hop limit
    // and addresses.
    let same = |range: Range<usize>| head_packet[range.clone()] == next[range];
    let same_ip = if t.ipv6 {
        same(V6_VERSION_CLASS_FLOW) && same(V6_NEXT_HEADER..V6_DST.end)
    } else {
        head_packet[V4_TOS] == next[V4_TOS]
            && same(V4_FRAGMENT.start..V4_PROTOCOL + 1)
            && same(V4_SRC.start..V4_DST.end)
            && ipv4_id(next) == ipv4_id(head_packet).wrapping_add(head.count as u16)
    };
    if !same_ip || !same(t.l4_field(PORTS)) {
        return false;
    }
    if t.protocol == PROTO_TCP {
        // The flag word: data offset and reserved bits, flags, window. CWR may be on the head
        // only and PSH on the last only (`plan` closes the run on PSH).
        let l4 = t.ip_header_len;
        let head_flags = tcp_flags_of(head_packet, h);
        let flags = tcp_flags_of(next, t);
        if flags & !tcp_flags::PSH != head_flags & !tcp_flags::CWR
            || head_packet[l4 + TCP_DATA_OFFSET] != next[l4 + TCP_DATA_OFFSET]
            || !same(t.l4_field(TCP_WINDOW))
        {
            return false; // also refuses CWR, SYN, FIN, RST, URG on a follower
        }
        // Same ack, urgent pointer and options; adjacent sequence numbers. The urgent pointer
        // means nothing without URG, but re-segmentation copies the head's into every segment.
        if !same(t.l4_field(TCP_ACK))
            || !same(l4 + TCP_URGENT.start..t.header_len())
            || tcp_seq(next, t) != head.next_seq
        {
            return false;
        }
    }
    is_sound(next, t)
}

/// Groups the segments of one buffer into runs. `segments` holds each valid IP packet of `buffer`
/// with what [`validate`] found in it, in arrival order; `runs` is cleared and filled (its
/// capacity is reused, so steady state does not allocate). Nothing is parsed again, except in
/// debug builds, which check each segment's `transport` against a fresh [`validate`].
pub fn plan_segments(buffer: &[u8], segments: &[Segment], policy: Policy, runs: &mut Vec<Run>) {
    plan(
        buffer,
        segments.len(),
        |index| {
            let segment = segments[index];
            debug_assert_eq!(
                validate(&buffer[segment.range()]),
                Ok(segment.transport),
                "segment {index} carries what validate finds"
            );
            segment
        },
        policy,
        runs,
    );
}

/// The planner, over `count` segments that `segment` gives, each asked for once and in order.
fn plan(
    buffer: &[u8],
    count: usize,
    segment: impl Fn(usize) -> Segment,
    policy: Policy,
    runs: &mut Vec<Run>,
) {
    runs.clear();
    let mut head: Option<Head> = None;
    for index in 0..count {
        let segment = segment(index);
        let packet = &buffer[segment.range()];
        if let (Some(h), Some(t)) = (head.as_mut(), segment.transport.as_ref())
            && can_append(&buffer[h.at..h.at + h.len], h, packet, t)
        {
            let payload = payload_len(packet, t);
            h.count += 1;
            h.total_len += payload;
            if t.protocol == PROTO_TCP {
                h.next_seq = h.next_seq.wrapping_add(payload as u32);
                h.closed |= tcp_flags_of(packet, t) & tcp_flags::PSH != 0;
            }
            h.closed |= payload < h.payload_len;
            continue;
        }
        if let Some(h) = head.take() {
            runs.push(Run {
                first: h.first,
                count: h.count,
            });
        }
        match segment.transport {
            Some(t) if can_lead(packet, &t, policy) => {
                let payload = payload_len(packet, &t);
                let next_seq = if t.protocol == PROTO_TCP {
                    tcp_seq(packet, &t).wrapping_add(payload as u32)
                } else {
                    0
                };
                head = Some(Head {
                    transport: t,
                    first: index,
                    at: segment.at,
                    len: segment.len,
                    count: 1,
                    payload_len: payload,
                    total_len: segment.len,
                    closed: false,
                    next_seq,
                });
            }
            _ => runs.push(Run {
                first: index,
                count: 1,
            }),
        }
    }
    if let Some(h) = head {
        runs.push(Run {
            first: h.first,
            count: h.count,
        });
    }
}

/// Prepares a run for writing. For a run of one, returns the all-zero virtio header. For a longer
/// run, rewrites the head segment's headers in place to describe the whole super-packet (lengths,
/// IPv4 header checksum, PSH from the last segment, the pseudo-header sum in the checksum field)
/// and returns the virtio header with `NEEDS_CSUM` and the GSO type and size. The caller writes
/// `[virtio header][head segment][payloads of the rest]`. `run` must come from [`plan_segments`]
/// over the same `segments`.
pub fn finish_segments(buffer: &mut [u8], segments: &[Segment], run: Run) -> [u8; vnet::LEN] {
    if run.count < 2 {
        return [0; vnet::LEN];
    }
    let members = &segments[run.first..run.first + run.count];
    let bytes = members.iter().map(|s| s.len).sum();
    finish(
        buffer,
        members[0],
        members[run.count - 1].at,
        bytes,
        run.count,
    )
}

/// Rewrites the head of a run of `count` segments, `bytes` long in all, whose last segment
/// starts at `last_at`.
fn finish(
    buffer: &mut [u8],
    head: Segment,
    last_at: usize,
    bytes: usize,
    count: usize,
) -> [u8; vnet::LEN] {
    let t = head
        .transport
        .expect("planned runs of two or more have parsed heads");
    // A UDP datagram has no byte 13 in its L4 header when its payload is 5 bytes or fewer.
    let last_flags = if t.protocol == PROTO_TCP {
        buffer
            .get(last_at + t.ip_header_len + TCP_FLAGS)
            .copied()
            .unwrap_or(0)
    } else {
        0
    };
    let head_payload = head.len - t.header_len();
    let total_payload = bytes - count * t.header_len();
    let l4_len = t.l4_header_len + total_payload;
    let l4 = t.ip_header_len;
    let header = &mut buffer[head.at..head.at + t.header_len()];
    t.set_ip_len(header, l4_len);
    let mut ecn = false;
    if t.protocol == PROTO_TCP {
        header[l4 + TCP_FLAGS] |= last_flags & tcp_flags::PSH;
        ecn = header[l4 + TCP_FLAGS] & tcp_flags::CWR != 0;
    } else {
        header[t.l4_field(UDP_LENGTH)].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    let field = l4 + t.checksum_offset();
    let pseudo = t.pseudo_header(header, l4_len);
    header[field..field + 2].copy_from_slice(&pseudo.0.to_be_bytes());
    let gso_type = match (t.protocol, t.ipv6) {
        (PROTO_TCP, false) => GsoType::TcpV4,
        (PROTO_TCP, true) => GsoType::TcpV6,
        _ => GsoType::UdpL4,
    };
    let mut raw = [0u8; vnet::LEN];
    let mut vnet = VnetHeader::new_checked(&mut raw[..]).expect("a whole header");
    vnet.set_flags(FLAG_NEEDS_CSUM);
    vnet.set_gso_type(gso_type, ecn);
    vnet.set_hdr_len(t.header_len() as u16);
    vnet.set_gso_size(head_payload as u16);
    vnet.set_csum_start(l4 as u16);
    vnet.set_csum_offset(t.checksum_offset() as u16);
    raw
}

#[cfg(test)]
mod tests {
    use super::super::OffloadError;
    use super::super::split::Split;
    use super::super::test_packets::{
        Spec, Xorshift, assert_valid, build, fix_l4_checksum, gro_buffer, merged,
    };
    use super::*;
    use crate::wire::vnet::{GsoType, VnetHeader};

    const BOTH: Policy = Policy::ALL;

    fn split(packet: &[u8], gso: GsoType, size: u16) -> Vec<Vec<u8>> {
        let plan = Split::plan(packet, gso, size, 1024).unwrap();
        (0..plan.count)
            .map(|i| {
                let mut s = Vec::new();
                plan.segment_into(packet, i, &mut s);
                s
            })
            .collect()
    }

    #[test]
    fn split_then_coalesce_gives_back_the_same_bytes() {
        for (ipv6, udp, payload_len, gso) in [
            (false, false, 20000, 1380),
            (true, false, 30001, 1360),
            (false, true, 9000, 1000),
            (true, true, 7777, 1200),
            (false, false, 1380 * 47, 1380),
        ] {
            let flags = tcp_flags::ACK | tcp_flags::PSH;
            let original = build(&Spec {
                ipv6,
                udp,
                payload_len,
                flags,
                ..Spec::default()
            });
            let gso_type = match (udp, ipv6) {
                (true, _) => GsoType::UdpL4,
                (false, false) => GsoType::TcpV4,
                (false, true) => GsoType::TcpV6,
            };
            let segments = split(&original, gso_type, gso);
            let (mut buffer, layout) = gro_buffer(&segments);
            let mut runs = Vec::new();
            plan_segments(&buffer, &layout, BOTH, &mut runs);
            assert_eq!(
                runs,
                vec![Run {
                    first: 0,
                    count: segments.len()
                }],
                "{ipv6} {udp}"
            );
            let header = finish_segments(&mut buffer, &layout, runs[0]);
            let h = VnetHeader::new_checked(&header[..]).unwrap();
            assert_eq!(h.gso_type(), gso_type);
            assert_eq!(usize::from(h.gso_size()), usize::from(gso));
            let whole = merged(&buffer, &layout, runs[0], &header);
            assert_eq!(whole, original, "{ipv6} {udp} {payload_len}");
            assert_valid(&whole);
        }
    }

    /// A TCP segment at `seq` with IPv4 id `7 + seq / 100`: segments of 100 bytes have
    /// consecutive IDs, as a sender's TSO gives them.
    fn tcp(seq: u32, payload_len: usize, flags: u8) -> Vec<u8> {
        build(&Spec {
            seq,
            id: 7u16.wrapping_add((seq / 100) as u16),
            payload_len,
            flags: tcp_flags::ACK | flags,
            ..Spec::default()
        })
    }

    fn runs_of(packets: &[Vec<u8>]) -> Vec<(usize, usize)> {
        let (buffer, layout) = gro_buffer(packets);
        let mut runs = Vec::new();
        plan_segments(&buffer, &layout, BOTH, &mut runs);
        runs.iter().map(|r| (r.first, r.count)).collect()
    }

    #[test]
    fn table_of_what_may_merge() {
        type Case = (&'static str, Vec<Vec<u8>>, Vec<(usize, usize)>);
        let cases: Vec<Case> = vec![
            (
                "adjacent",
                vec![tcp(0, 100, 0), tcp(100, 100, 0), tcp(200, 100, 0)],
                vec![(0, 3)],
            ),
            (
                "short tail ends the run",
                vec![tcp(0, 100, 0), tcp(100, 50, 0), tcp(150, 100, 0)],
                vec![(0, 2), (2, 1)],
            ),
            (
                "longer follower",
                vec![tcp(0, 100, 0), tcp(100, 150, 0)],
                vec![(0, 1), (1, 1)],
            ),
            (
                "gap in seq",
                vec![tcp(0, 100, 0), tcp(150, 100, 0)],
                vec![(0, 1), (1, 1)],
            ),
            (
                "out of order",
                vec![tcp(100, 100, 0), tcp(0, 100, 0)],
                vec![(0, 1), (1, 1)],
            ),
            (
                "PSH only last",
                vec![
                    tcp(0, 100, 0),
                    tcp(100, 100, tcp_flags::PSH),
                    tcp(200, 100, 0),
                ],
                vec![(0, 2), (2, 1)],
            ),
            (
                "PSH head never leads",
                vec![tcp(0, 100, tcp_flags::PSH), tcp(100, 100, 0)],
                vec![(0, 1), (1, 1)],
            ),
            (
                "FIN never merges",
                vec![tcp(0, 100, 0), tcp(100, 100, tcp_flags::FIN)],
                vec![(0, 1), (1, 1)],
            ),
            (
                "CWR on head only",
                vec![tcp(0, 100, tcp_flags::CWR), tcp(100, 100, 0)],
                vec![(0, 2)],
            ),
            (
                "CWR on follower",
                vec![tcp(0, 100, 0), tcp(100, 100, tcp_flags::CWR)],
                vec![(0, 1), (1, 1)],
            ),
            (
                "pure ACKs",
                vec![tcp(0, 0, 0), tcp(0, 0, 0)],
                vec![(0, 1), (1, 1)],
            ),
        ];
        for (name, packets, expected) in cases {
            assert_eq!(runs_of(&packets), expected, "{name}");
        }
    }

    #[test]
    fn header_differences_prevent_merging() {
        let base = Spec {
            payload_len: 100,
            ..Spec::default()
        };
        let first = build(&base);
        let next = |spec: Spec| {
            vec![
                first.clone(),
                build(&Spec {
                    seq: 1100,
                    id: 8,
                    ..spec
                }),
            ]
        };
        let differing: Vec<(&str, Vec<Vec<u8>>)> = vec![
            (
                "port",
                next(Spec {
                    sport: 1,
                    payload_len: 100,
                    ..Spec::default()
                }),
            ),
            (
                "ttl",
                next(Spec {
                    ttl: 3,
                    payload_len: 100,
                    ..Spec::default()
                }),
            ),
            (
                "options",
                next(Spec {
                    tcp_options: vec![1, 1, 1, 1],
                    payload_len: 100,
                    ..Spec::default()
                }),
            ),
            (
                "ip options",
                vec![
                    build(&Spec {
                        ipv4_options: 4,
                        ..Spec::default()
                    }),
                    build(&Spec {
                        ipv4_options: 4,
                        seq: 1100,
                        id: 8,
                        ..Spec::default()
                    }),
                ],
            ),
            (
                "ipv6 vs ipv4",
                next(Spec {
                    ipv6: true,
                    payload_len: 100,
                    ..Spec::default()
                }),
            ),
        ];
        assert_eq!(
            runs_of(&next(Spec {
                payload_len: 100,
                ..Spec::default()
            })),
            vec![(0, 2)],
            "control: nothing differs"
        );
        for (name, packets) in differing {
            assert_eq!(runs_of(&packets), vec![(0, 1), (1, 1)], "{name}");
        }
        let mut corrupt = build(&Spec {
            seq: 1100,
            id: 8,
            payload_len: 100,
            ..Spec::default()
        });
        *corrupt.last_mut().unwrap() ^= 1;
        assert_eq!(
            runs_of(&[first.clone(), corrupt]),
            vec![(0, 1), (1, 1)],
            "bad checksum"
        );
        let mut ack = build(&Spec {
            seq: 1100,
            id: 8,
            payload_len: 100,
            ..Spec::default()
        });
        ack[20 + 11] = 99;
        fix_l4_checksum(&mut ack);
        assert_eq!(
            runs_of(&[first.clone(), ack]),
            vec![(0, 1), (1, 1)],
            "different ack"
        );
    }

    #[test]
    fn interleaved_flows_are_not_reordered_or_merged_across() {
        let a = |seq| {
            build(&Spec {
                seq,
                id: 7 + (seq / 100) as u16,
                payload_len: 100,
                sport: 1,
                ..Spec::default()
            })
        };
        let b = |seq| {
            build(&Spec {
                seq,
                id: 7 + (seq / 100) as u16,
                payload_len: 100,
                sport: 2,
                ..Spec::default()
            })
        };
        assert_eq!(
            runs_of(&[a(0), a(100), b(0), b(100), a(200)]),
            vec![(0, 2), (2, 2), (4, 1)]
        );
    }

    #[test]
    fn fragments_and_policy_off_stay_single() {
        let mut frag = tcp(0, 100, 0);
        frag[6] |= 0x20;
        assert_eq!(runs_of(&[frag.clone(), frag]), vec![(0, 1), (1, 1)]);
        let packets = [tcp(0, 100, 0), tcp(100, 100, 0)];
        let (buffer, layout) = gro_buffer(&packets);
        let mut runs = Vec::new();
        plan_segments(
            &buffer,
            &layout,
            Policy {
                tcp: false,
                udp: true,
            },
            &mut runs,
        );
        assert_eq!(runs.len(), 2);
        let u = |payload_len, id| {
            build(&Spec {
                udp: true,
                payload_len,
                id,
                ..Spec::default()
            })
        };
        let (buffer, layout) = gro_buffer(&[u(100, 7), u(100, 8), u(40, 9)]);
        plan_segments(
            &buffer,
            &layout,
            Policy {
                tcp: true,
                udp: false,
            },
            &mut runs,
        );
        assert_eq!(runs.len(), 3);
        plan_segments(&buffer, &layout, BOTH, &mut runs);
        assert_eq!(runs, vec![Run { first: 0, count: 3 }]);
    }

    /// Plans and finishes every run of `packets` laid out in an exactly sized buffer (nothing
    /// after the last byte), returning the runs and the packets as written.
    fn plan_and_finish(packets: &[Vec<u8>]) -> (Vec<(usize, usize)>, Vec<Vec<u8>>) {
        let (mut buffer, layout) = gro_buffer(packets);
        assert_eq!(buffer.len(), packets.iter().map(Vec::len).sum::<usize>());
        let mut runs = Vec::new();
        plan_segments(&buffer, &layout, BOTH, &mut runs);
        let mut written = Vec::new();
        for run in &runs {
            let header = finish_segments(&mut buffer, &layout, *run);
            written.push(if run.count > 1 {
                merged(&buffer, &layout, *run, &header)
            } else {
                packets[run.first].clone()
            });
        }
        (runs.iter().map(|r| (r.first, r.count)).collect(), written)
    }

    #[test]
    fn finish_run_reads_no_tcp_flags_past_a_short_udp_tail() {
        // The last datagram's payload is 1..=5 bytes and ends the buffer: byte 13 of its "TCP
        // header" is past the end.
        for ipv6 in [false, true] {
            for tail in 1..=5 {
                let u = |payload_len, id| {
                    build(&Spec {
                        ipv6,
                        udp: true,
                        payload_len,
                        id,
                        ..Spec::default()
                    })
                };
                let packets = [u(100, 7), u(tail, 8)];
                let (runs, written) = plan_and_finish(&packets);
                assert_eq!(runs, vec![(0, 2)], "{ipv6} {tail}");
                assert_valid(&written[0]);
                assert_eq!(written[0].len(), packets[0].len() + tail);
            }
        }
    }

    #[test]
    fn segments_differing_in_the_tcp_flag_word_do_not_merge() {
        for ipv6 in [false, true] {
            let seg = |seq: u32, id: u16, window: u16, tcp_reserved: u8| {
                build(&Spec {
                    ipv6,
                    seq,
                    id,
                    window,
                    tcp_reserved,
                    ..Spec::default()
                })
            };
            assert_eq!(
                runs_of(&[seg(0, 7, 64000, 0), seg(100, 8, 64000, 0)]),
                vec![(0, 2)],
                "same flag word"
            );
            assert_eq!(
                runs_of(&[seg(0, 7, 64000, 0), seg(100, 8, 64000, 1)]),
                vec![(0, 1), (1, 1)],
                "AE bit"
            );
            assert_eq!(
                runs_of(&[seg(0, 7, 64000, 0), seg(100, 8, 65000, 0)]),
                vec![(0, 1), (1, 1)],
                "window"
            );
        }
    }

    #[test]
    fn ipv4_ids_must_be_consecutive() {
        for udp in [false, true] {
            let seg = |i: u32, id: u16| {
                build(&Spec {
                    udp,
                    seq: i * 100,
                    id,
                    ..Spec::default()
                })
            };
            type Case = (&'static str, [u16; 3], Vec<(usize, usize)>);
            let cases: [Case; 5] = [
                ("incrementing", [7, 8, 9], vec![(0, 3)]),
                ("wrapping", [0xfffe, 0xffff, 0], vec![(0, 3)]),
                ("fixed", [7, 7, 7], vec![(0, 1), (1, 1), (2, 1)]),
                ("gap", [7, 9, 10], vec![(0, 1), (1, 2)]),
                ("incrementing then fixed", [7, 8, 8], vec![(0, 2), (2, 1)]),
            ];
            for (name, ids, expected) in cases {
                let packets: Vec<_> = (0..3).map(|i| seg(i, ids[i as usize])).collect();
                assert_eq!(runs_of(&packets), expected, "{name} udp={udp}");
            }
        }
    }

    #[test]
    fn a_bad_ipv4_header_checksum_is_not_merged() {
        for bad in [0, 1] {
            let mut packets = vec![
                tcp(0, 100, 0),
                build(&Spec {
                    seq: 100,
                    id: 8,
                    ..Spec::default()
                }),
            ];
            packets[bad][10] ^= 0x10;
            assert_eq!(runs_of(&packets), vec![(0, 1), (1, 1)], "bad header {bad}");
        }
    }

    #[test]
    fn udp_without_a_checksum_is_not_merged() {
        let mut packets: Vec<_> = (0..2)
            .map(|i| {
                build(&Spec {
                    udp: true,
                    id: 7 + i,
                    ..Spec::default()
                })
            })
            .collect();
        assert_eq!(runs_of(&packets), vec![(0, 2)]);
        packets[1][26..28].fill(0);
        assert_eq!(runs_of(&packets), vec![(0, 1), (1, 1)], "follower");
        packets[0][26..28].fill(0);
        assert_eq!(runs_of(&packets), vec![(0, 1), (1, 1)], "both");
    }

    #[test]
    fn urgent_pointers_must_match() {
        let seg = |seq, id, urgent| {
            build(&Spec {
                seq,
                id,
                urgent,
                ..Spec::default()
            })
        };
        assert_eq!(
            runs_of(&[seg(0, 7, 0), seg(100, 8, 5)]),
            vec![(0, 1), (1, 1)]
        );
    }

    #[test]
    fn run_size_is_capped() {
        let packets: Vec<Vec<u8>> = (0..70).map(|i| tcp(i * 100, 100, 0)).collect();
        assert_eq!(runs_of(&packets), vec![(0, 64), (64, 6)]);
        let big: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                build(&Spec {
                    seq: i * 30000,
                    id: 7 + i as u16,
                    payload_len: 30000,
                    ..Spec::default()
                })
            })
            .collect();
        assert_eq!(runs_of(&big), vec![(0, 2), (2, 1)], "65535-byte limit");
    }

    /// Property test, bounded: random flows, sizes and flags, split and shuffled in places; every
    /// merged packet must be valid per the oracle, and the concatenation of all written payloads
    /// per flow must equal what was sent in the order sent.
    #[test]
    fn random_streams_survive_split_and_coalesce() {
        let mut rng = Xorshift(0xdead_beef_cafe_f00d);
        let mut rnd = move |n: u64| rng.below(n);
        for _ in 0..300 {
            let mut packets = Vec::new();
            let ipv6 = rnd(2) == 0;
            for flow in 0..(1 + rnd(3)) as u16 {
                let payload_len = 1 + rnd(6000) as usize;
                let gso = 200 + rnd(1300) as u16;
                let flags = if rnd(4) == 0 {
                    tcp_flags::ACK | tcp_flags::PSH
                } else {
                    tcp_flags::ACK
                };
                let p = build(&Spec {
                    ipv6,
                    payload_len,
                    sport: 100 + flow,
                    flags,
                    seq: rnd(1 << 31) as u32,
                    ..Spec::default()
                });
                packets.extend(split(
                    &p,
                    if ipv6 { GsoType::TcpV6 } else { GsoType::TcpV4 },
                    gso,
                ));
            }
            if packets.len() > 2 && rnd(3) == 0 {
                let i = rnd(packets.len() as u64 - 1) as usize;
                packets.swap(i, i + 1);
            }
            let (mut buffer, layout) = gro_buffer(&packets);
            let mut runs = Vec::new();
            plan_segments(&buffer, &layout, BOTH, &mut runs);
            assert_eq!(
                runs.iter().map(|r| r.count).sum::<usize>(),
                packets.len(),
                "every segment written once"
            );
            let mut written = Vec::new();
            for run in runs {
                let header = finish_segments(&mut buffer, &layout, run);
                let p = if run.count > 1 {
                    merged(&buffer, &layout, run, &header)
                } else {
                    packets[run.first].clone()
                };
                assert_valid(&p);
                written.push(p);
            }
            // Same bytes per flow, in order: compare against the segments as sent.
            let payloads = |ps: &[Vec<u8>], port: u16| -> Vec<u8> {
                ps.iter()
                    .filter(|p| {
                        u16::from_be_bytes([
                            p[if ipv6 { 40 } else { 20 }],
                            p[if ipv6 { 41 } else { 21 }],
                        ]) == port
                    })
                    .flat_map(|p| p[Transport::parse(p).unwrap().header_len()..].to_vec())
                    .collect()
            };
            for port in 100..103 {
                assert_eq!(payloads(&written, port), payloads(&packets, port));
            }
        }
        let _ = OffloadError::BadGso;
    }

    /// `validate`, one pass, answers as `IpPacket::new_checked` and then `Transport::parse` do, on
    /// packets with options and extension headers (accepted and refused ones) mutated at random;
    /// where it finds a TCP or UDP header, etherparse finds it at the same place.
    #[test]
    fn validate_is_new_checked_then_parse_with_etherparse_as_judge() {
        use crate::wire::ip::field::{V4_TOTAL_LEN, V6_PAYLOAD_LEN};
        use etherparse::{IpSlice, TcpSlice};
        let mut rng = Xorshift(0x5eed_0f0e_ba55_1234);
        let mut rnd = move |n: u64| rng.below(n);
        let pad = || vec![1, 4, 0, 0, 0, 0];
        let (mut accepted, mut with_transport, mut with_options) = (0, 0, 0);
        for _ in 0..30_000 {
            let ipv6 = rnd(2) == 0;
            let ipv6_extensions = if ipv6 {
                (0..rnd(4))
                    .map(|_| match rnd(6) {
                        0 => (0, pad()),
                        1 => (43, [vec![4, rnd(2) as u8], vec![0; 20]].concat()),
                        2 => (44, vec![0; 6]),
                        3 => (51, vec![0; 14]),
                        _ => (60, pad()),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let mut p = build(&Spec {
                ipv6,
                ipv6_extensions,
                udp: rnd(2) == 0,
                payload_len: rnd(200) as usize,
                ipv4_options: if ipv6 { 0 } else { 4 * rnd(3) as usize },
                tcp_options: vec![1; 4 * rnd(4) as usize],
                ..Spec::default()
            });
            // Damage the headers, cut or grow the packet, and often make the length field agree
            // again, so that the damage gets past the datagram check to the transport rules.
            for _ in 0..rnd(4) {
                let at = rnd(p.len().min(100) as u64) as usize;
                p[at] = rnd(256) as u8;
            }
            match rnd(4) {
                0 => p.truncate(rnd(p.len() as u64 + 1) as usize),
                1 => p.extend((0..rnd(20)).map(|_| rnd(256) as u8)),
                _ => {}
            }
            if rnd(4) != 0 && p.len() >= 40 {
                let len = p.len() as u16;
                match p[0] >> 4 {
                    4 => p[V4_TOTAL_LEN].copy_from_slice(&len.to_be_bytes()),
                    6 => p[V6_PAYLOAD_LEN].copy_from_slice(&(len - 40).to_be_bytes()),
                    _ => {}
                }
            }
            let found = validate(&p);
            let expected = IpPacket::new_checked(&p[..]).map(|_| Transport::parse(&p));
            assert_eq!(found, expected, "{p:02x?}");
            let Ok(transport) = found else { continue };
            accepted += 1;
            let Some(t) = transport else { continue };
            with_transport += 1;
            // The IP layer alone: etherparse's UDP slice also checks the UDP length field, which
            // is the coalescer's business, not the parser's.
            let ip = IpSlice::from_slice(&p)
                .unwrap_or_else(|e| panic!("we take {t:?}, etherparse refuses {e:?}: {p:02x?}"));
            let l4 = ip.payload();
            assert_eq!(l4.ip_number.0, t.protocol, "{p:02x?}");
            assert_eq!(p.len() - l4.payload.len(), t.ip_header_len, "{p:02x?}");
            if t.protocol == PROTO_TCP {
                let tcp =
                    TcpSlice::from_slice(l4.payload).expect("etherparse takes the TCP header");
                assert_eq!(tcp.slice().len() - tcp.payload().len(), t.l4_header_len);
            } else {
                assert_eq!(t.l4_header_len, 8);
            }
            with_options += usize::from(t.has_ip_options());
        }
        assert!(
            accepted > 10_000 && with_transport > 5_000 && with_options > 1_000,
            "{accepted} accepted, {with_transport} with a transport, {with_options} with options"
        );
    }
}
