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
//!   it does merge identical IPv6 extension headers, we never do), no fragments (those are
//!   refused by `Transport::parse`), and a valid IPv4 header checksum;
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

use super::{PROTO_TCP, PROTO_UDP, Transport, checksum_is_valid, tcp_flags};
use crate::wire::checksum::Sum;
use crate::wire::vnet::{self, GSO_ECN};

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

struct Head {
    transport: Transport,
    first: usize,
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
    let l4 = t.ip_header_len;
    u32::from_be_bytes(packet[l4 + 4..l4 + 8].try_into().expect("4 bytes"))
}

fn tcp_flags_of(packet: &[u8], t: &Transport) -> u8 {
    packet[t.ip_header_len + 13]
}

fn ipv4_id(packet: &[u8]) -> u16 {
    u16::from_be_bytes([packet[4], packet[5]])
}

/// The checks every segment of a merged run must pass on its own, head or follower: a sound IPv4
/// header, a UDP length and checksum as `udp_gro_receive_segment` wants them, a valid L4 checksum.
fn is_sound(packet: &[u8], t: &Transport) -> bool {
    if !t.ipv6 && Sum::of(&packet[..t.ip_header_len]).0 != 0xffff {
        return false; // inet_gro_receive: ip_fast_csum fails
    }
    if t.protocol == PROTO_UDP {
        let l4 = &packet[t.ip_header_len..];
        let length = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
        if length != l4.len() || l4[6..8] == [0, 0] {
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
    let same_ip = if t.ipv6 {
        head_packet[0..4] == next[0..4] && head_packet[6..40] == next[6..40]
    } else {
        head_packet[1] == next[1]
            && head_packet[6..10] == next[6..10]
            && head_packet[12..20] == next[12..20]
            && ipv4_id(next) == ipv4_id(head_packet).wrapping_add(head.count as u16)
    };
    let l4 = t.ip_header_len;
    if !same_ip || head_packet[l4..l4 + 4] != next[l4..l4 + 4] {
        return false;
    }
    if t.protocol == PROTO_TCP {
        // The flag word: data offset and reserved bits, flags, window. CWR may be on the head
        // only and PSH on the last only (`plan_runs` closes the run on PSH).
        let head_flags = tcp_flags_of(head_packet, h);
        let flags = tcp_flags_of(next, t);
        if flags & !tcp_flags::PSH != head_flags & !tcp_flags::CWR
            || head_packet[l4 + 12] != next[l4 + 12]
            || head_packet[l4 + 14..l4 + 16] != next[l4 + 14..l4 + 16]
        {
            return false; // also refuses CWR, SYN, FIN, RST, URG on a follower
        }
        // Same ack, urgent pointer and options; adjacent sequence numbers. The urgent pointer
        // means nothing without URG, but re-segmentation copies the head's into every segment.
        if head_packet[l4 + 8..l4 + 12] != next[l4 + 8..l4 + 12]
            || head_packet[l4 + 18..l4 + t.l4_header_len] != next[l4 + 18..l4 + t.l4_header_len]
            || tcp_seq(next, t) != head.next_seq
        {
            return false;
        }
    }
    is_sound(next, t)
}

/// Groups the segments of one buffer into runs. `segments` holds each valid IP packet's
/// `(offset, len)` in `buffer`, in arrival order; `runs` is cleared and filled (its capacity is
/// reused, so steady state does not allocate).
pub fn plan_runs(buffer: &[u8], segments: &[(usize, usize)], policy: Policy, runs: &mut Vec<Run>) {
    runs.clear();
    let mut head: Option<Head> = None;
    for (index, &(offset, len)) in segments.iter().enumerate() {
        let packet = &buffer[offset..offset + len];
        let transport = Transport::parse(packet);
        if let (Some(h), Some(t)) = (head.as_mut(), transport.as_ref()) {
            let (head_offset, head_len) = segments[h.first];
            if can_append(&buffer[head_offset..head_offset + head_len], h, packet, t) {
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
        }
        if let Some(h) = head.take() {
            runs.push(Run {
                first: h.first,
                count: h.count,
            });
        }
        match transport {
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
                    count: 1,
                    payload_len: payload,
                    total_len: len,
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
/// `[virtio header][head segment][payloads of the rest]`.
pub fn finish_run(buffer: &mut [u8], segments: &[(usize, usize)], run: Run) -> [u8; vnet::LEN] {
    let mut header = [0u8; vnet::LEN];
    if run.count < 2 {
        return header;
    }
    let (head_offset, head_len) = segments[run.first];
    let t = Transport::parse(&buffer[head_offset..head_offset + head_len])
        .expect("planned runs have parsed heads");
    let (last_offset, _) = segments[run.first + run.count - 1];
    // A UDP datagram has no byte 13 in its L4 header when its payload is 5 bytes or fewer.
    let last_flags = if t.protocol == PROTO_TCP {
        buffer
            .get(last_offset + t.ip_header_len + 13)
            .copied()
            .unwrap_or(0)
    } else {
        0
    };
    let head_payload = head_len - t.header_len();
    let total_payload: usize = segments[run.first..run.first + run.count]
        .iter()
        .map(|(_, len)| len - t.header_len())
        .sum();
    let l4_len = t.l4_header_len + total_payload;
    let l4 = t.ip_header_len;
    let head = &mut buffer[head_offset..head_offset + t.header_len()];
    t.set_ip_len(head, l4_len);
    let mut gso_type = match (t.protocol, t.ipv6) {
        (PROTO_TCP, false) => 1,
        (PROTO_TCP, true) => 4,
        _ => 5,
    };
    if t.protocol == PROTO_TCP {
        head[l4 + 13] |= last_flags & tcp_flags::PSH;
        if head[l4 + 13] & tcp_flags::CWR != 0 {
            gso_type |= GSO_ECN;
        }
    } else {
        head[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    let field = l4 + t.checksum_offset();
    let pseudo = t.pseudo_header(head, l4_len);
    head[field..field + 2].copy_from_slice(&pseudo.0.to_be_bytes());
    header[0] = vnet::FLAG_NEEDS_CSUM;
    header[1] = gso_type;
    header[2..4].copy_from_slice(&(t.header_len() as u16).to_ne_bytes());
    header[4..6].copy_from_slice(&(head_payload as u16).to_ne_bytes());
    header[6..8].copy_from_slice(&(l4 as u16).to_ne_bytes());
    header[8..10].copy_from_slice(&(t.checksum_offset() as u16).to_ne_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::super::OffloadError;
    use super::super::split::Split;
    use super::super::test_packets::{Spec, assert_valid, build, gro_buffer, merged};
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
            plan_runs(&buffer, &layout, BOTH, &mut runs);
            assert_eq!(
                runs,
                vec![Run {
                    first: 0,
                    count: segments.len()
                }],
                "{ipv6} {udp}"
            );
            let header = finish_run(&mut buffer, &layout, runs[0]);
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
        plan_runs(&buffer, &layout, BOTH, &mut runs);
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
        let t = Transport::parse(&ack).unwrap();
        let c = {
            ack[36..38].fill(0);
            t.pseudo_header(&ack, ack.len() - 20)
                .add(crate::wire::checksum::Sum::of(&ack[20..]))
                .finish()
        };
        ack[36..38].copy_from_slice(&c.to_be_bytes());
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
        plan_runs(
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
        plan_runs(
            &buffer,
            &layout,
            Policy {
                tcp: true,
                udp: false,
            },
            &mut runs,
        );
        assert_eq!(runs.len(), 3);
        plan_runs(&buffer, &layout, BOTH, &mut runs);
        assert_eq!(runs, vec![Run { first: 0, count: 3 }]);
    }

    /// Plans and finishes every run of `packets` laid out in an exactly sized buffer (nothing
    /// after the last byte), returning the runs and the packets as written.
    fn plan_and_finish(packets: &[Vec<u8>]) -> (Vec<(usize, usize)>, Vec<Vec<u8>>) {
        let (mut buffer, layout) = gro_buffer(packets);
        assert_eq!(buffer.len(), packets.iter().map(Vec::len).sum::<usize>());
        let mut runs = Vec::new();
        plan_runs(&buffer, &layout, BOTH, &mut runs);
        let mut written = Vec::new();
        for run in &runs {
            let header = finish_run(&mut buffer, &layout, *run);
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
        let mut state = 0xdead_beef_cafe_f00du64;
        let mut rnd = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n.max(1)
        };
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
            plan_runs(&buffer, &layout, BOTH, &mut runs);
            assert_eq!(
                runs.iter().map(|r| r.count).sum::<usize>(),
                packets.len(),
                "every segment written once"
            );
            let mut written = Vec::new();
            for run in runs {
                let header = finish_run(&mut buffer, &layout, run);
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
}
