//! What a TUN read is, and what becomes of it. PURE.

use crate::offload::complete_checksum;
use crate::offload::split::Split;
use crate::stats::{Counters, DropReason};
use crate::wire::VnetHeader;
use crate::wire::vnet::{self, FLAG_NEEDS_CSUM, GsoType};

/// Segments one super-packet may split into (gso_size >= 512 for a 64 KB packet).
///
/// The TUN's `gso_max_segs` is capped at this (see `main`), so a super-packet never holds more.
/// A small inner MSS is why it is large: `gso_max_size` keeps a super-packet under 62 KB at MTU
/// 1420, which at MSS 200 is 310 segments. Capping at one GSO send's 64 instead made the stack
/// hand over 12 KB super-packets, and cost a third of the throughput at MSS 200 (measured with
/// `DEMO_MSS=200 ./demo`: 2.8 Gbit/s at 64, 4.7 at 128, 6.4 at 512).
pub const MAX_SPLIT_SEGMENTS: usize = 512;

/// What one TUN read (`[virtio_net_hdr][IP packet]`) turned out to be. The packet starts at
/// `vnet::LEN` in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromTun {
    /// Dropped, and counted; the buffer can go back.
    Dropped,
    /// A plain packet of `len` bytes (its checksum completed if the kernel left it partial),
    /// which fits the inner MTU: to be sent, alone or in a GSO batch.
    Plain { len: usize },
    /// A super-packet, to be sent as the segments of this plan.
    Split(Split),
    /// Longer than the inner MTU (a super-packet: its segments are): to be answered with an ICMP
    /// error or sent in outer fragments (`offload::icmp::too_big_action`).
    TooBig { len: usize, plan: Option<Split> },
}

/// Judges the `len` bytes a TUN read put in `buffer`, and counts the read. `super_packets`:
/// whether TSO or USO was negotiated, so that the TUN may hand over super-packets.
pub fn classify(
    buffer: &mut [u8],
    len: usize,
    super_packets: bool,
    inner_mtu: usize,
    counters: &mut Counters,
) -> FromTun {
    let len = len.min(buffer.len());
    let Some(header) = VnetHeader::new_checked(&buffer[..len]) else {
        counters.drop(DropReason::TunShortRead);
        return FromTun::Dropped;
    };
    let (gso, gso_size, flags) = (header.gso_type(), header.gso_size(), header.flags());
    let (csum_start, csum_offset) = (
        usize::from(header.csum_start()),
        usize::from(header.csum_offset()),
    );
    let packet_len = len - vnet::LEN;
    // Packets are counted as IP packets on the wire: a super-packet by its segments (below).
    counters.tun_rx_bytes += packet_len as u64;
    let packet = &mut buffer[vnet::LEN..len];
    match gso {
        GsoType::None => {
            counters.tun_rx_packets += 1;
            if flags & FLAG_NEEDS_CSUM != 0
                && complete_checksum(packet, csum_start, csum_offset).is_err()
            {
                counters.drop(DropReason::BadOffload);
                return FromTun::Dropped;
            }
            if packet_len > inner_mtu {
                return FromTun::TooBig {
                    len: packet_len,
                    plan: None,
                };
            }
            FromTun::Plain { len: packet_len }
        }
        GsoType::TcpV4 | GsoType::TcpV6 | GsoType::UdpL4 if super_packets => {
            match Split::plan(packet, gso, gso_size, MAX_SPLIT_SEGMENTS) {
                Ok(plan) => {
                    counters.tun_rx_packets += plan.count as u64;
                    if plan.segment_len(0) > inner_mtu {
                        FromTun::TooBig {
                            len: packet_len,
                            plan: Some(plan),
                        }
                    } else {
                        FromTun::Split(plan)
                    }
                }
                Err(_) => {
                    counters.tun_rx_packets += 1;
                    counters.drop(DropReason::BadOffload);
                    FromTun::Dropped
                }
            }
        }
        _ => {
            counters.tun_rx_packets += 1;
            counters.drop(DropReason::TunUnexpectedOffload);
            FromTun::Dropped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::test_packets::{Spec, build};

    fn read_of(header: [u8; vnet::LEN], packet: &[u8]) -> Vec<u8> {
        let mut buffer = header.to_vec();
        buffer.extend_from_slice(packet);
        buffer
    }

    fn super_header(gso_type: u8, gso_size: u16, hdr_len: u16) -> [u8; vnet::LEN] {
        let mut h = [0u8; vnet::LEN];
        h[1] = gso_type;
        h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
        h[4..6].copy_from_slice(&gso_size.to_le_bytes());
        h
    }

    #[test]
    fn plain_packets_pass_when_they_fit_and_are_too_big_when_not() {
        let p = build(&Spec {
            payload_len: 100,
            ..Spec::default()
        });
        let mut c = Counters::default();
        let mut buffer = read_of([0; vnet::LEN], &p);
        let len = buffer.len();
        assert_eq!(
            classify(&mut buffer, len, true, 1420, &mut c),
            FromTun::Plain { len: p.len() }
        );
        assert_eq!(
            classify(&mut buffer, len, true, p.len() - 1, &mut c),
            FromTun::TooBig {
                len: p.len(),
                plan: None
            }
        );
        assert_eq!(c.tun_rx_packets, 2);
        assert_eq!(c.tun_rx_bytes, 2 * p.len() as u64);
    }

    #[test]
    fn short_reads_and_unnegotiated_offloads_are_counted_drops() {
        let mut c = Counters::default();
        let mut short = [0u8; vnet::LEN - 1];
        assert_eq!(
            classify(&mut short, 9, true, 1420, &mut c),
            FromTun::Dropped
        );
        assert_eq!(c.drops_of(DropReason::TunShortRead), 1);
        let p = build(&Spec {
            payload_len: 3000,
            ..Spec::default()
        });
        let mut buffer = read_of(super_header(1, 1000, 40), &p);
        let len = buffer.len();
        assert_eq!(
            classify(&mut buffer, len, false, 1420, &mut c),
            FromTun::Dropped
        );
        assert_eq!(c.drops_of(DropReason::TunUnexpectedOffload), 1);
    }

    #[test]
    fn super_packets_split_or_are_judged_by_their_first_segment() {
        let p = build(&Spec {
            payload_len: 3000,
            ..Spec::default()
        });
        let mut c = Counters::default();
        let mut buffer = read_of(super_header(1, 1000, 40), &p);
        let len = buffer.len();
        let FromTun::Split(plan) = classify(&mut buffer, len, true, 1420, &mut c) else {
            panic!("a TSO packet splits");
        };
        assert_eq!(plan.count, 3);
        assert_eq!(c.tun_rx_packets, 3, "counted by its segments");
        assert!(matches!(
            classify(&mut buffer, len, true, 1000, &mut c),
            FromTun::TooBig { plan: Some(_), .. }
        ));
        // A bad gso_size is a bad offload, not a crash.
        let mut bad = read_of(super_header(1, 0, 40), &p);
        let len = bad.len();
        assert_eq!(
            classify(&mut bad, len, true, 1420, &mut c),
            FromTun::Dropped
        );
        assert_eq!(c.drops_of(DropReason::BadOffload), 1);
    }
}
