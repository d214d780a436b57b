//! Table-driven tests of the coalescer and the splitter, each the other's oracle, with etherparse
//! as the independent judge of every packet built.
//!
//! The coalescing table follows the cases of the kernel's GRO selftest
//! (tools/testing/selftests/net/gro.c: data, ack, flags, tcp, ip, large), run over IPv4 and IPv6
//! where a case applies, plus UDP and the cases where our rules are stricter than the kernel's
//! (the row says so). A row gives the segments in arrival order and the runs expected, as segment
//! counts. Every merged packet must be valid, carry a virtio header that describes it, and split
//! back with `split::Split` into exactly the segments it was merged from: that is what a kernel
//! forwarding our write would send on.
//!
//! The splitting table covers what the kernel can hand a TUN in one TSO/USO super-packet: IPv6
//! extension headers, IPv4 options, ECN flags, and gso_size at its edges.

use super::coalesce::{MAX_RUN_SEGMENTS, Policy, Run, Segment, finish_segments, plan_segments};
use super::split::{MAX_HEADER_LEN, Split};
use super::test_packets::{Spec, assert_valid, build, fix_l4_checksum, gro_buffer, merged};
use super::{OffloadError, PROTO_TCP, Transport, set_ipv4_header_checksum, tcp_flags};
use crate::wire::vnet::{self, FLAG_NEEDS_CSUM, GSO_ECN, GsoType, VnetHeader};
use std::net::Ipv6Addr;

const V4: &[bool] = &[false];
const V6: &[bool] = &[true];
const BOTH: &[bool] = &[false, true];

/// gro.c's PAYLOAD_LEN.
const PAYLOAD: usize = 100;
const START_SEQ: u32 = 1000;

fn gso_type_of(ipv6: bool, udp: bool) -> GsoType {
    match (udp, ipv6) {
        (true, _) => GsoType::UdpL4,
        (false, false) => GsoType::TcpV4,
        (false, true) => GsoType::TcpV6,
    }
}

/// Segment `i` of a TCP flow of `PAYLOAD`-byte segments (IPv4 ID 7 + i), as `edit` changes it.
fn tcp(ipv6: bool, i: usize, edit: impl FnOnce(&mut Spec)) -> Vec<u8> {
    let mut spec = Spec {
        ipv6,
        seq: START_SEQ + (i * PAYLOAD) as u32,
        id: 7 + i as u16,
        payload_len: PAYLOAD,
        ..Spec::default()
    };
    edit(&mut spec);
    build(&spec)
}

/// Datagram `i` of a UDP flow, as `edit` changes it.
fn udp(ipv6: bool, i: usize, edit: impl FnOnce(&mut Spec)) -> Vec<u8> {
    tcp(ipv6, i, |s| {
        s.udp = true;
        edit(s)
    })
}

fn same(_: &mut Spec) {}

/// Segments `0..n` of one TCP flow.
fn flow(ipv6: bool, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| tcp(ipv6, i, same)).collect()
}

/// `packets` with packet `at` replaced.
fn with(mut packets: Vec<Vec<u8>>, at: usize, packet: Vec<u8>) -> Vec<Vec<u8>> {
    packets[at] = packet;
    packets
}

/// `p` changed after it was built (a broken checksum, say).
fn mangled(mut p: Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    f(&mut p);
    p
}

fn l4_offset(ipv6: bool) -> usize {
    if ipv6 { 40 } else { 20 }
}

/// TCP options as gro.c's `add_standard_tcp_options` lays them out: a timestamp and two NOPs, in
/// one of three orders.
fn timestamps(tsval: u32, order: usize) -> Vec<u8> {
    let mut ts = vec![8, 10];
    ts.extend_from_slice(&tsval.to_be_bytes());
    ts.extend_from_slice(&0u32.to_be_bytes());
    match order {
        0 => [vec![1, 1], ts].concat(),
        1 => [vec![1], ts, vec![1]].concat(),
        _ => [ts, vec![1, 1]].concat(),
    }
}

/// A Hop-by-Hop or Destination Options header body of 6 bytes (gro.c's EXT_PAYLOAD_1/2 fill).
fn options_body(fill: u8) -> Vec<u8> {
    vec![fill; 6]
}

/// A segment routing header (RFC 8754) whose one segment is the final destination.
fn routing(segments_left: u8) -> Vec<u8> {
    let mut r = vec![4, segments_left, 0, 0, 0, 0];
    r.extend_from_slice(&"2001:2:1::2".parse::<Ipv6Addr>().unwrap().octets());
    r
}

type Make = Box<dyn Fn(bool) -> (Vec<Vec<u8>>, Vec<usize>)>;

struct Row {
    name: &'static str,
    versions: &'static [bool],
    /// The segments in arrival order, and the segment count of each run expected.
    make: Make,
}

fn row(
    name: &'static str,
    versions: &'static [bool],
    make: impl Fn(bool) -> (Vec<Vec<u8>>, Vec<usize>) + 'static,
) -> Row {
    Row {
        name,
        versions,
        make: Box::new(make),
    }
}

/// gro.c `send_flags`: five segments, the middle one with `flag`. With `payload` it carries
/// data at its place in the sequence; without, it is gro.c's empty segment at offset 0.
fn flag_in_the_middle(ipv6: bool, flag: u8, payload: bool) -> Vec<Vec<u8>> {
    let middle = tcp(ipv6, 2, |s| {
        s.flags |= flag;
        if !payload {
            s.payload_len = 0;
            s.seq = START_SEQ;
        }
    });
    with(flow(ipv6, 5), 2, middle)
}

/// gro.c `send_flush_id_case`: IPv4 segments with these IDs and DF.
fn ids(ids: &[u16], df: bool) -> Vec<Vec<u8>> {
    (0..ids.len())
        .map(|i| {
            tcp(false, i, |s| {
                s.id = ids[i];
                s.df = df;
            })
        })
        .collect()
}

/// gro.c `send_large`: 16 segments of MSS = 4096 - 20 - 40 bytes, a last one of `remainder`
/// bytes and one more of `remainder` bytes after a gap. With gro.c's remainder the first 17 fill
/// exactly 65535 bytes of IP packet.
fn large(ipv6: bool, extra: usize) -> Vec<Vec<u8>> {
    const MSS: usize = 4096 - 20 - 40;
    const FULL: usize = (65535 - 20 - 40) / MSS;
    let remainder = (65535 - 20 - 40 + if ipv6 { 0 } else { 20 }) % MSS + extra;
    let segment = |i: usize, len: usize| {
        tcp(ipv6, i, |s| {
            s.seq = START_SEQ + (i * MSS) as u32;
            s.payload_len = len;
        })
    };
    let mut packets: Vec<_> = (0..FULL).map(|i| segment(i, MSS)).collect();
    packets.push(segment(FULL, remainder));
    packets.push(segment(FULL + 1, remainder));
    packets
}

/// UDP datagrams of 4000 bytes filling 65535 bytes with a shorter last one, then another of the
/// same short size; `extra` bytes more on the short ones.
fn large_udp(ipv6: bool, extra: usize) -> Vec<Vec<u8>> {
    let room = 65535 - if ipv6 { 48 } else { 28 };
    let full = room / 4000;
    let short = room % 4000 + extra;
    (0..full + 2)
        .map(|i| {
            udp(ipv6, i, |s| {
                s.payload_len = if i < full { 4000 } else { short }
            })
        })
        .collect()
}

fn coalesce_rows() -> Vec<Row> {
    use tcp_flags::{CWR, ECE, FIN, PSH, RST, SYN, URG};
    vec![
        // gro.c "data".
        row("data: same size", BOTH, |v6| (flow(v6, 2), vec![2])),
        row("data: a short last segment merges", BOTH, |v6| {
            let last = tcp(v6, 1, |s| s.payload_len = PAYLOAD / 2);
            (with(flow(v6, 2), 1, last), vec![2])
        }),
        row("data: a short first segment ends the run", BOTH, |v6| {
            let first = tcp(v6, 0, |s| s.payload_len = PAYLOAD / 2);
            let next = tcp(v6, 1, |s| s.seq = START_SEQ + (PAYLOAD / 2) as u32);
            (vec![first, next], vec![1, 1])
        }),
        row(
            "data: a short segment in the middle ends the run",
            BOTH,
            |v6| {
                let short = tcp(v6, 1, |s| s.payload_len = PAYLOAD / 2);
                let next = tcp(v6, 2, |s| s.seq = START_SEQ + (PAYLOAD * 3 / 2) as u32);
                (vec![tcp(v6, 0, same), short, next], vec![2, 1])
            },
        ),
        row("data: two flows interleaved", BOTH, |v6| {
            let b = |i| tcp(v6, i, |s| s.sport = 1);
            let a = |i| tcp(v6, i, same);
            (vec![a(0), a(1), b(0), b(1), a(2)], vec![2, 2, 1])
        }),
        // gro.c "ack".
        row("ack: pure and duplicate ACKs", BOTH, |v6| {
            let ack = |ack_offset| {
                tcp(v6, 0, |s| {
                    s.payload_len = 0;
                    s.ack += ack_offset;
                })
            };
            (vec![ack(0), ack(0), ack(1)], vec![1, 1, 1])
        }),
        // gro.c "flags".
        row("flags: PSH ends the run", BOTH, |v6| {
            (flag_in_the_middle(v6, PSH, true), vec![3, 2])
        }),
        row("flags: empty SYN in the middle", BOTH, |v6| {
            (flag_in_the_middle(v6, SYN, false), vec![2, 1, 2])
        }),
        row("flags: empty RST in the middle", BOTH, |v6| {
            (flag_in_the_middle(v6, RST, false), vec![2, 1, 2])
        }),
        row("flags: empty URG in the middle", BOTH, |v6| {
            (flag_in_the_middle(v6, URG, false), vec![2, 1, 2])
        }),
        row("flags: SYN with data in sequence", BOTH, |v6| {
            (flag_in_the_middle(v6, SYN, true), vec![2, 1, 2])
        }),
        row("flags: RST with data in sequence", BOTH, |v6| {
            (flag_in_the_middle(v6, RST, true), vec![2, 1, 2])
        }),
        row("flags: URG with data in sequence", BOTH, |v6| {
            let packets = flag_in_the_middle(v6, URG, true);
            (packets, vec![2, 1, 2])
        }),
        // The kernel merges a FIN as the last segment; we never merge one.
        row("flags: FIN with data in sequence (stricter)", BOTH, |v6| {
            (flag_in_the_middle(v6, FIN, true), vec![2, 1, 2])
        }),
        row("flags: CWR on the head merges, with GSO_ECN", BOTH, |v6| {
            (
                with(flow(v6, 3), 0, tcp(v6, 0, |s| s.flags |= CWR)),
                vec![3],
            )
        }),
        row("flags: CWR in the middle starts a run", BOTH, |v6| {
            (flag_in_the_middle(v6, CWR, true), vec![2, 3])
        }),
        row("flags: ECE on every segment merges", BOTH, |v6| {
            let packets = (0..3).map(|i| tcp(v6, i, |s| s.flags |= ECE)).collect();
            (packets, vec![3])
        }),
        row("flags: ECE on one segment only", BOTH, |v6| {
            (flag_in_the_middle(v6, ECE, true), vec![2, 1, 2])
        }),
        // gro.c "tcp".
        row("tcp: bad checksum", BOTH, |v6| {
            let at = l4_offset(v6) + 16;
            let bad = mangled(tcp(v6, 1, same), |p| {
                let c = u16::from_be_bytes([p[at], p[at + 1]]).wrapping_sub(1);
                p[at..at + 2].copy_from_slice(&c.to_be_bytes());
            });
            (with(flow(v6, 2), 1, bad), vec![1, 1])
        }),
        row("tcp: seq + 1", BOTH, |v6| {
            let off = tcp(v6, 1, |s| s.seq += 1);
            (with(flow(v6, 2), 1, off), vec![1, 1])
        }),
        row(
            "tcp: timestamps, same kind, other value or order",
            BOTH,
            |v6| {
                let ts = |i, tsval, order| tcp(v6, i, |s| s.tcp_options = timestamps(tsval, order));
                let packets = vec![ts(0, 0, 0), ts(1, 0, 0), ts(2, 100, 0), ts(3, 100, 1)];
                ([packets, vec![ts(4, 100, 2)]].concat(), vec![2, 1, 1, 1])
            },
        ),
        row("tcp: identical timestamps merge", BOTH, |v6| {
            let packets = (0..3)
                .map(|i| tcp(v6, i, |s| s.tcp_options = timestamps(7, 0)))
                .collect();
            (packets, vec![3])
        }),
        row("tcp: options of another length", BOTH, |v6| {
            let ts = |i| tcp(v6, i, |s| s.tcp_options = timestamps(0, 0));
            let window_scale = tcp(v6, 2, |s| s.tcp_options = vec![1, 3, 3, 0]);
            (vec![ts(0), ts(1), window_scale], vec![2, 1])
        }),
        row(
            "tcp: options of the same length, other content",
            BOTH,
            |v6| {
                let mss = tcp(v6, 0, |s| s.tcp_options = vec![2, 4, 5, 0xb4]);
                let window_scale = tcp(v6, 1, |s| s.tcp_options = vec![1, 3, 3, 7]);
                (vec![mss, window_scale], vec![1, 1])
            },
        ),
        row("tcp: other ack", BOTH, |v6| {
            (with(flow(v6, 2), 1, tcp(v6, 1, |s| s.ack += 1)), vec![1, 1])
        }),
        row("tcp: other window", BOTH, |v6| {
            (
                with(flow(v6, 2), 1, tcp(v6, 1, |s| s.window -= 1)),
                vec![1, 1],
            )
        }),
        row("tcp: other reserved bits (AE)", BOTH, |v6| {
            let ae = tcp(v6, 1, |s| s.tcp_reserved = 1);
            (with(flow(v6, 2), 1, ae), vec![1, 1])
        }),
        row("tcp: other urgent pointer without URG", BOTH, |v6| {
            (
                with(flow(v6, 2), 1, tcp(v6, 1, |s| s.urgent = 9)),
                vec![1, 1],
            )
        }),
        // gro.c "ip".
        row("ip: ECN ECT(0) on the second", BOTH, |v6| {
            (
                with(flow(v6, 2), 1, tcp(v6, 1, |s| s.tos = 0x02)),
                vec![1, 1],
            )
        }),
        row("ip: ECN CE in the middle", BOTH, |v6| {
            let ce = tcp(v6, 2, |s| s.tos = 0x03);
            (with(flow(v6, 4), 2, ce), vec![2, 1, 1])
        }),
        row("ip: ECN CE on every segment merges", BOTH, |v6| {
            let packets = (0..3).map(|i| tcp(v6, i, |s| s.tos = 0x03)).collect();
            (packets, vec![3])
        }),
        row("ip: TOS (gro.c: tos 1, priority 0xf)", BOTH, |v6| {
            let tos = tcp(v6, 1, |s| s.tos = if v6 { 0xf0 } else { 1 });
            (with(flow(v6, 2), 1, tos), vec![1, 1])
        }),
        row("ip: DSCP", BOTH, |v6| {
            (
                with(flow(v6, 2), 1, tcp(v6, 1, |s| s.tos = 0xb8)),
                vec![1, 1],
            )
        }),
        row("ip: TTL or hop limit", BOTH, |v6| {
            (with(flow(v6, 2), 1, tcp(v6, 1, |s| s.ttl = 7)), vec![1, 1])
        }),
        row("ip: DF on one only", V4, |_| {
            (
                with(flow(false, 2), 1, tcp(false, 1, |s| s.df = false)),
                vec![1, 1],
            )
        }),
        row("ip: flow label on one only", V6, |_| {
            let labelled = tcp(true, 1, |s| s.flow_label = 0x12345);
            (with(flow(true, 2), 1, labelled), vec![1, 1])
        }),
        row("ip: the same flow label merges", V6, |_| {
            let packets = (0..2)
                .map(|i| tcp(true, i, |s| s.flow_label = 0x12345))
                .collect();
            (packets, vec![2])
        }),
        row("ip: IPv4 options in the middle", V4, |_| {
            let options = tcp(false, 1, |s| s.ipv4_options = 4);
            (with(flow(false, 3), 1, options), vec![1, 1, 1])
        }),
        row("ip: the same IPv4 options on both", V4, |_| {
            let packets = (0..2)
                .map(|i| tcp(false, i, |s| s.ipv4_options = 4))
                .collect();
            (packets, vec![1, 1])
        }),
        row("ip: IPv4 fragment", V4, |_| {
            let fragment = mangled(tcp(false, 1, same), |p| {
                p[6] |= 0x20;
                set_ipv4_header_checksum(&mut p[..20]);
            });
            (with(flow(false, 2), 1, fragment), vec![1, 1])
        }),
        row("ip: bad IPv4 header checksum", V4, |_| {
            let bad = mangled(tcp(false, 1, same), |p| p[10] ^= 0x10);
            (with(flow(false, 2), 1, bad), vec![1, 1])
        }),
        row("ip: IPv6 fragment header", V6, |_| {
            let fragment = tcp(true, 2, |s| s.ipv6_extensions = vec![(44, vec![0; 6])]);
            (with(flow(true, 4), 2, fragment), vec![2, 1, 1])
        }),
        // The kernel merges identical extension headers; we never do.
        row("ip: identical hop-by-hop headers (stricter)", V6, |_| {
            let hop = |i| tcp(true, i, |s| s.ipv6_extensions = vec![(0, options_body(0))]);
            (vec![hop(0), hop(1)], vec![1, 1])
        }),
        row("ip: hop-by-hop headers of other content", V6, |_| {
            let hop = |i, fill| {
                tcp(true, i, |s| {
                    s.ipv6_extensions = vec![(0, options_body(fill))]
                })
            };
            (vec![hop(0, 0), hop(1, 0x11)], vec![1, 1])
        }),
        row("ip: identical routing and destination options", V6, |_| {
            let ext = |i| {
                tcp(true, i, |s| {
                    s.ipv6_extensions = vec![(43, routing(0)), (60, options_body(0))]
                })
            };
            (vec![ext(0), ext(1)], vec![1, 1])
        }),
        // gro.c "ip", `send_flush_id_case`. The kernel merges fixed IDs too (FIXEDID); a
        // virtio_net_hdr cannot say so, so we do not.
        row("ip id: DF, incrementing", V4, |_| {
            (ids(&[8, 9], true), vec![2])
        }),
        row("ip id: DF, fixed (stricter)", V4, |_| {
            (ids(&[8, 8], true), vec![1, 1])
        }),
        row("ip id: no DF, incrementing", V4, |_| {
            (ids(&[8, 9], false), vec![2])
        }),
        row("ip id: no DF, fixed (stricter)", V4, |_| {
            (ids(&[8, 8], false), vec![1, 1])
        }),
        row("ip id: DF, two incrementing, one fixed", V4, |_| {
            (ids(&[8, 9, 9], true), vec![2, 1])
        }),
        row(
            "ip id: DF, two fixed, one incrementing (kernel: 2, 1)",
            V4,
            |_| (ids(&[8, 8, 9], true), vec![1, 2]),
        ),
        row("ip id: a gap", V4, |_| {
            (ids(&[8, 10, 11], true), vec![1, 2])
        }),
        row("ip id: wrapping", V4, |_| {
            (ids(&[0xfffe, 0xffff, 0], true), vec![3])
        }),
        // gro.c "large", and our segment-count limit.
        row("large: exactly 65535 bytes", BOTH, |v6| {
            (large(v6, 0), vec![17, 1])
        }),
        row("large: one byte over", BOTH, |v6| {
            (large(v6, 1), vec![16, 1, 1])
        }),
        row("count: MAX_RUN_SEGMENTS", BOTH, |v6| {
            (flow(v6, MAX_RUN_SEGMENTS), vec![MAX_RUN_SEGMENTS])
        }),
        row("count: one more than MAX_RUN_SEGMENTS", BOTH, |v6| {
            (flow(v6, 2 * MAX_RUN_SEGMENTS + 1), vec![64, 64, 1])
        }),
        // UDP (net/ipv4/udp_offload.c `udp_gro_receive_segment`).
        row("udp: same size", BOTH, |v6| {
            ((0..3).map(|i| udp(v6, i, same)).collect(), vec![3])
        }),
        row("udp: a short last datagram merges", BOTH, |v6| {
            let packets = (0..3)
                .map(|i| udp(v6, i, |s| s.payload_len = if i == 2 { 40 } else { 100 }))
                .collect();
            (packets, vec![3])
        }),
        row("udp: a last datagram of 1 byte merges", BOTH, |v6| {
            let packets = (0..2)
                .map(|i| udp(v6, i, |s| s.payload_len = if i == 1 { 1 } else { 100 }))
                .collect();
            (packets, vec![2])
        }),
        row(
            "udp: a short datagram in the middle ends the run",
            BOTH,
            |v6| {
                let packets = (0..3)
                    .map(|i| udp(v6, i, |s| s.payload_len = if i == 1 { 40 } else { 100 }))
                    .collect();
                (packets, vec![2, 1])
            },
        ),
        row("udp: a longer follower", BOTH, |v6| {
            let packets = (0..2)
                .map(|i| udp(v6, i, |s| s.payload_len = if i == 0 { 40 } else { 100 }))
                .collect();
            (packets, vec![1, 1])
        }),
        row("udp: other port", BOTH, |v6| {
            (
                vec![udp(v6, 0, same), udp(v6, 1, |s| s.sport = 1)],
                vec![1, 1],
            )
        }),
        row("udp: other TOS", BOTH, |v6| {
            (
                vec![udp(v6, 0, same), udp(v6, 1, |s| s.tos = 0xb8)],
                vec![1, 1],
            )
        }),
        row("udp: other TTL or hop limit", BOTH, |v6| {
            (
                vec![udp(v6, 0, same), udp(v6, 1, |s| s.ttl = 3)],
                vec![1, 1],
            )
        }),
        row("udp: other flow label", V6, |_| {
            let labelled = udp(true, 1, |s| s.flow_label = 5);
            (vec![udp(true, 0, same), labelled], vec![1, 1])
        }),
        row("udp: fixed IPv4 ID", V4, |_| {
            (
                vec![udp(false, 0, same), udp(false, 1, |s| s.id = 7)],
                vec![1, 1],
            )
        }),
        row("udp: bad checksum", BOTH, |v6| {
            let bad = mangled(udp(v6, 1, same), |p| *p.last_mut().unwrap() ^= 1);
            (vec![udp(v6, 0, same), bad], vec![1, 1])
        }),
        row("udp: no checksum (IPv4 zero)", V4, |_| {
            let none = mangled(udp(false, 1, same), |p| p[26..28].fill(0));
            (vec![udp(false, 0, same), none], vec![1, 1])
        }),
        row("udp: length field shorter than the datagram", BOTH, |v6| {
            let at = l4_offset(v6) + 4;
            let short = mangled(udp(v6, 1, same), |p| {
                let len = u16::from_be_bytes([p[at], p[at + 1]]) - 1;
                p[at..at + 2].copy_from_slice(&len.to_be_bytes());
                fix_l4_checksum(p);
            });
            (vec![udp(v6, 0, same), short], vec![1, 1])
        }),
        row("udp: destination options", V6, |_| {
            let ext = |i| udp(true, i, |s| s.ipv6_extensions = vec![(60, options_body(0))]);
            (vec![ext(0), ext(1)], vec![1, 1])
        }),
        row("udp: exactly 65535 bytes", BOTH, |v6| {
            let packets = large_udp(v6, 0);
            let full = packets.len() - 2;
            (packets, vec![full + 1, 1])
        }),
        row("udp: one byte over", BOTH, |v6| {
            let packets = large_udp(v6, 1);
            let full = packets.len() - 2;
            (packets, vec![full, 2])
        }),
        row("udp: one more than MAX_RUN_SEGMENTS", BOTH, |v6| {
            let packets = (0..MAX_RUN_SEGMENTS + 1)
                .map(|i| udp(v6, i, same))
                .collect();
            (packets, vec![MAX_RUN_SEGMENTS, 1])
        }),
        row("udp after tcp on the same ports", BOTH, |v6| {
            (vec![tcp(v6, 0, same), udp(v6, 1, same)], vec![1, 1])
        }),
    ]
}

/// Checks a merged run: valid, described by its virtio header, and split back into `inputs`.
fn check_merged(buffer: &[u8], segments: &[Segment], run: Run, inputs: &[Vec<u8>], at: &str) {
    let mut buffer = buffer.to_vec();
    let header = finish_segments(&mut buffer, segments, run);
    let whole = merged(&buffer, segments, run, &header);
    assert_valid(&whole);
    let t = Transport::parse(&whole).unwrap();
    let h = VnetHeader::new_checked(&header[..]).unwrap();
    let gso = gso_type_of(t.ipv6, t.protocol != PROTO_TCP);
    assert_eq!(h.gso_type(), gso, "{at}");
    assert_eq!(h.flags(), FLAG_NEEDS_CSUM, "{at}");
    assert_eq!(usize::from(h.hdr_len()), t.header_len(), "{at}");
    assert_eq!(usize::from(h.csum_start()), t.ip_header_len, "{at}");
    assert_eq!(usize::from(h.csum_offset()), t.checksum_offset(), "{at}");
    assert_eq!(
        usize::from(h.gso_size()),
        inputs[0].len() - t.header_len(),
        "{at}"
    );
    let cwr = t.protocol == PROTO_TCP && whole[t.ip_header_len + 13] & tcp_flags::CWR != 0;
    assert_eq!(header[1] & GSO_ECN != 0, cwr, "{at}: GSO_ECN iff CWR");
    // The oracle: what a kernel re-segmenting our write would send on.
    let plan = Split::plan(&whole, gso, h.gso_size(), MAX_RUN_SEGMENTS).unwrap();
    assert_eq!(plan.count, inputs.len(), "{at}");
    let mut segment = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        plan.segment_into(&whole, i, &mut segment);
        assert!(segment == *input, "{at}: segment {i} does not round-trip");
    }
}

#[test]
fn coalescing_table() {
    let rows = coalesce_rows();
    assert!(rows.len() >= 60, "{} rows", rows.len());
    for row in rows {
        for &ipv6 in row.versions {
            let at = format!("{} (ipv6={ipv6})", row.name);
            let (packets, expected) = (row.make)(ipv6);
            let (buffer, segments) = gro_buffer(&packets);
            let mut runs = Vec::new();
            plan_segments(&buffer, &segments, Policy::ALL, &mut runs);
            let counts: Vec<usize> = runs.iter().map(|r| r.count).collect();
            assert_eq!(counts, expected, "{at}");
            let mut next = 0;
            for &run in &runs {
                assert_eq!(run.first, next, "{at}: runs in order");
                next += run.count;
                let inputs = &packets[run.first..run.first + run.count];
                if run.count == 1 {
                    let mut scratch = buffer.clone();
                    assert_eq!(
                        finish_segments(&mut scratch, &segments, run),
                        [0; vnet::LEN],
                        "{at}"
                    );
                    assert_eq!(scratch, buffer, "{at}: a run of one is left alone");
                } else {
                    check_merged(&buffer, &segments, run, inputs, &at);
                }
            }
            assert_eq!(next, packets.len(), "{at}");
        }
    }
}

struct SplitRow {
    name: &'static str,
    spec: Spec,
    gso_size: u16,
    max_segments: usize,
    /// The GSO type when it is not the one that fits the packet.
    gso: Option<GsoType>,
    expected: Result<usize, OffloadError>,
}

fn split_row(
    name: &'static str,
    spec: Spec,
    gso_size: u16,
    expected: Result<usize, OffloadError>,
) -> SplitRow {
    SplitRow {
        name,
        spec,
        gso_size,
        max_segments: 128,
        gso: None,
        expected,
    }
}

fn v6_with(extensions: Vec<(u8, Vec<u8>)>, udp: bool, payload_len: usize) -> Spec {
    Spec {
        ipv6: true,
        udp,
        payload_len,
        ipv6_extensions: extensions,
        flags: tcp_flags::ACK | tcp_flags::PSH,
        ..Spec::default()
    }
}

fn split_rows() -> Vec<SplitRow> {
    use tcp_flags::{ACK, CWR, ECE, FIN, PSH};
    let hop = || (0, options_body(0));
    let dest = || (60, options_body(0));
    let ecn = ACK | CWR | ECE | PSH | FIN;
    // Destination options of `len` bytes, one PadN option filling them.
    let long_dest = |len: usize| (60, [vec![1, (len - 4) as u8], vec![0; len - 4]].concat());
    let mut rows = vec![
        split_row(
            "TSO6 hop-by-hop",
            v6_with(vec![hop()], false, 5000),
            1400,
            Ok(4),
        ),
        split_row(
            "TSO6 destination options",
            v6_with(vec![dest()], false, 5000),
            1400,
            Ok(4),
        ),
        split_row(
            "TSO6 routing, no segments left",
            v6_with(vec![(43, routing(0))], false, 5000),
            1400,
            Ok(4),
        ),
        split_row(
            "TSO6 hop-by-hop, destination options, routing, destination options",
            v6_with(vec![hop(), dest(), (43, routing(0)), dest()], false, 4200),
            1400,
            Ok(3),
        ),
        split_row(
            "USO6 hop-by-hop",
            v6_with(vec![hop()], true, 5000),
            1400,
            Ok(4),
        ),
        split_row(
            "USO6 destination options and routing",
            v6_with(vec![dest(), (43, routing(0))], true, 4000),
            1000,
            Ok(4),
        ),
        split_row(
            "TSO6 routing with segments left: the checksum would need the last address",
            v6_with(vec![(43, routing(1))], false, 5000),
            1400,
            Err(OffloadError::BadHeaders),
        ),
        split_row(
            "TSO6 fragment header",
            v6_with(vec![(44, vec![0; 6])], false, 5000),
            1400,
            Err(OffloadError::BadHeaders),
        ),
        split_row(
            "TSO6 hop-by-hop after destination options",
            v6_with(vec![dest(), hop()], false, 5000),
            1400,
            Err(OffloadError::BadHeaders),
        ),
        split_row(
            "TSO6 headers of exactly MAX_HEADER_LEN",
            Spec {
                tcp_options: vec![1; 4],
                ..v6_with(vec![long_dest(MAX_HEADER_LEN - 64)], false, 3000)
            },
            1000,
            Ok(3),
        ),
        split_row(
            "TSO6 headers one option word over MAX_HEADER_LEN",
            Spec {
                tcp_options: vec![1; 12],
                ..v6_with(vec![long_dest(MAX_HEADER_LEN - 64)], false, 3000)
            },
            1000,
            Err(OffloadError::HeadersTooLong),
        ),
        split_row(
            "TSO6 ECN flags with extension headers",
            Spec {
                flags: ecn,
                ..v6_with(vec![hop()], false, 3000)
            },
            1000,
            Ok(3),
        ),
        split_row(
            "TSO4 IPv4 options",
            Spec {
                ipv4_options: 4,
                payload_len: 5000,
                ..Spec::default()
            },
            1400,
            Ok(4),
        ),
        split_row(
            "TSO4 40 bytes of IPv4 options and TCP timestamps",
            Spec {
                ipv4_options: 40,
                tcp_options: timestamps(5, 0),
                payload_len: 5000,
                ..Spec::default()
            },
            1400,
            Ok(4),
        ),
        split_row(
            "USO4 IPv4 options",
            Spec {
                udp: true,
                ipv4_options: 8,
                payload_len: 5000,
                ..Spec::default()
            },
            1400,
            Ok(4),
        ),
        split_row(
            "TSO4 CWR, ECE, PSH, FIN",
            Spec {
                flags: ecn,
                payload_len: 3000,
                ..Spec::default()
            },
            1000,
            Ok(3),
        ),
        split_row(
            "TSO4 IPv4 ID wraps",
            Spec {
                id: 0xfffe,
                payload_len: 4000,
                ..Spec::default()
            },
            1000,
            Ok(4),
        ),
    ];
    for ipv6 in [false, true] {
        for udp in [false, true] {
            let spec = |payload_len| Spec {
                ipv6,
                udp,
                payload_len,
                ..Spec::default()
            };
            rows.push(split_row(
                "gso_size 0",
                spec(1000),
                0,
                Err(OffloadError::BadGso),
            ));
            rows.push(split_row(
                "gso_size above the payload",
                spec(1000),
                1001,
                Ok(1),
            ));
            rows.push(split_row("gso_size 65535", spec(1000), 65535, Ok(1)));
            rows.push(split_row(
                "gso_size equal to the payload",
                spec(1000),
                1000,
                Ok(1),
            ));
            rows.push(split_row("gso_size 1", spec(5), 1, Ok(5)));
            rows.push(SplitRow {
                max_segments: 64,
                ..split_row("exactly max_segments", spec(6400), 100, Ok(64))
            });
            rows.push(SplitRow {
                max_segments: 64,
                ..split_row(
                    "one byte more than max_segments",
                    spec(6401),
                    100,
                    Err(OffloadError::TooManySegments),
                )
            });
            rows.push(SplitRow {
                max_segments: 64,
                ..split_row(
                    "gso_size one less than max_segments needs",
                    spec(6400),
                    99,
                    Err(OffloadError::TooManySegments),
                )
            });
            let wrong = match (udp, ipv6) {
                (true, _) => GsoType::TcpV4,
                (false, false) => GsoType::TcpV6,
                (false, true) => GsoType::TcpV4,
            };
            rows.push(SplitRow {
                gso: Some(wrong),
                ..split_row(
                    "GSO type of another packet",
                    spec(1000),
                    100,
                    Err(OffloadError::GsoTypeMismatch),
                )
            });
        }
    }
    rows
}

/// Checks every segment of a split against the super-packet it came from.
fn check_segments(packet: &[u8], spec: &Spec, segments: &[Vec<u8>], gso_size: usize, at: &str) {
    let t = Transport::parse(packet).unwrap();
    let l4 = t.ip_header_len;
    let mut payload = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        let at = format!("{at}, segment {i}");
        let first = i == 0;
        let last = i + 1 == segments.len();
        assert_valid(segment);
        let st = Transport::parse(segment).unwrap();
        assert_eq!(st, t, "{at}");
        let data = &segment[st.header_len()..];
        assert!(
            data.len() == gso_size || (last && data.len() <= gso_size),
            "{at}"
        );
        payload.extend_from_slice(data);
        if t.ipv6 {
            // Version, traffic class, flow label; next header, hop limit, addresses; every
            // extension header byte for byte.
            assert_eq!(segment[..4], packet[..4], "{at}");
            assert_eq!(
                segment[6..l4],
                packet[6..l4],
                "{at}: extension headers copied"
            );
        } else {
            let id = u16::from_be_bytes([packet[4], packet[5]]).wrapping_add(i as u16);
            assert_eq!(segment[4..6], id.to_be_bytes(), "{at}: IPv4 id");
            assert_eq!(segment[..2], packet[..2], "{at}");
            assert_eq!(segment[6..10], packet[6..10], "{at}");
            assert_eq!(
                segment[12..l4],
                packet[12..l4],
                "{at}: addresses and options copied"
            );
        }
        if spec.udp {
            assert_eq!(segment[l4..l4 + 4], packet[l4..l4 + 4], "{at}: ports");
            continue;
        }
        let seq = u32::from_be_bytes(segment[l4 + 4..l4 + 8].try_into().unwrap());
        assert_eq!(
            seq,
            spec.seq.wrapping_add((i * gso_size) as u32),
            "{at}: seq"
        );
        let flags = segment[l4 + 13];
        let mut expected = spec.flags;
        if !first {
            expected &= !tcp_flags::CWR;
        }
        if !last {
            expected &= !(tcp_flags::PSH | tcp_flags::FIN);
        }
        assert_eq!(flags, expected, "{at}: flags (CWR first only, ECE on all)");
        assert_eq!(
            segment[l4 + 8..l4 + 13],
            packet[l4 + 8..l4 + 13],
            "{at}: ack"
        );
        assert_eq!(
            segment[l4 + 14..l4 + 16],
            packet[l4 + 14..l4 + 16],
            "{at}: window"
        );
        assert_eq!(
            segment[l4 + 18..st.header_len()],
            packet[l4 + 18..t.header_len()],
            "{at}: urgent pointer and options"
        );
    }
    assert_eq!(
        payload,
        packet[t.header_len()..],
        "{at}: payloads tile the original"
    );
}

#[test]
fn splitting_table() {
    let rows = split_rows();
    for row in &rows {
        let spec = &row.spec;
        let at = format!("{} (ipv6={} udp={})", row.name, spec.ipv6, spec.udp);
        let packet = build(spec);
        let gso = row.gso.unwrap_or(gso_type_of(spec.ipv6, spec.udp));
        let plan = Split::plan(&packet, gso, row.gso_size, row.max_segments);
        assert_eq!(plan.map(|p| p.count), row.expected, "{at}");
        let Ok(plan) = plan else { continue };
        let segments: Vec<Vec<u8>> = (0..plan.count)
            .map(|i| {
                let mut s = Vec::new();
                plan.segment_into(&packet, i, &mut s);
                assert_eq!(s.len(), plan.segment_len(i), "{at}");
                // The zero-copy form writes the same headers into a room of MAX_HEADER_LEN.
                let mut room = [0u8; MAX_HEADER_LEN];
                let payload = plan.segment(&packet, i, &mut room);
                let header_len = plan.transport.header_len();
                assert_eq!(room[..header_len], s[..header_len], "{at}");
                assert_eq!(packet[payload], s[header_len..], "{at}");
                s
            })
            .collect();
        check_segments(&packet, spec, &segments, usize::from(row.gso_size), &at);
        // The other way round: segments the coalescer may merge come back as the original.
        let (buffer, layout) = gro_buffer(&segments);
        let mut runs = Vec::new();
        plan_segments(&buffer, &layout, Policy::ALL, &mut runs);
        let mergeable = !plan.transport.has_ip_options()
            && spec.flags & (tcp_flags::FIN | tcp_flags::CWR) == 0
            && plan.count <= MAX_RUN_SEGMENTS;
        if plan.count == 1 {
            assert_eq!(
                segments,
                vec![packet.clone()],
                "{at}: one segment is the packet"
            );
        } else if mergeable {
            assert_eq!(
                runs,
                vec![Run {
                    first: 0,
                    count: plan.count
                }],
                "{at}"
            );
            let mut buffer = buffer.clone();
            let header = finish_segments(&mut buffer, &layout, runs[0]);
            assert_eq!(merged(&buffer, &layout, runs[0], &header), packet, "{at}");
        } else if plan.transport.has_ip_options() {
            assert!(runs.iter().all(|r| r.count == 1), "{at}: never merged");
        }
    }
    assert!(rows.len() >= 50, "{} rows", rows.len());
}

/// The worker hands `Split::plan` the GSO type and size from the virtio header and never its
/// `hdr_len`; a wrong one changes nothing.
#[test]
fn a_wrong_hdr_len_changes_nothing() {
    let spec = v6_with(vec![(0, options_body(0))], false, 3000);
    let packet = build(&spec);
    let mut reference = None;
    for hdr_len in [0u16, 1, 60, 68, 74, 200, 65535] {
        let mut raw = [0u8; vnet::LEN];
        raw[0] = FLAG_NEEDS_CSUM;
        raw[1] = 4; // TCPV6
        raw[2..4].copy_from_slice(&hdr_len.to_ne_bytes());
        raw[4..6].copy_from_slice(&1000u16.to_ne_bytes());
        raw[6..8].copy_from_slice(&48u16.to_ne_bytes());
        raw[8..10].copy_from_slice(&16u16.to_ne_bytes());
        let h = VnetHeader::new_checked(&raw[..]).unwrap();
        assert_eq!(h.hdr_len(), hdr_len);
        let plan = Split::plan(&packet, h.gso_type(), h.gso_size(), 64).unwrap();
        assert_eq!(
            plan.transport.header_len(),
            68,
            "parsed, not taken from hdr_len"
        );
        let segments: Vec<Vec<u8>> = (0..plan.count)
            .map(|i| {
                let mut s = Vec::new();
                plan.segment_into(&packet, i, &mut s);
                s
            })
            .collect();
        check_segments(&packet, &spec, &segments, 1000, "hdr_len");
        assert_eq!(*reference.get_or_insert_with(|| segments.clone()), segments);
    }
}
