//! What a UDP receive buffer holds, and how it goes into the TUN. PURE.
//!
//! With UDP GRO one receive holds several datagrams of one stride (the `UDP_GRO` control
//! message), each one inner IP packet. Each is validated once; RFC 6040 decapsulation applies the
//! outer ECN mark; then runs of consecutive segments that may merge (`offload::coalesce`) get
//! their head rewritten into one super-packet's headers, so that the engine can write each run
//! with one `writev([virtio_net_hdr][head][payloads...])`, without copying.

use super::aqm::Gate;
use crate::offload::coalesce::{self, Policy, Run, Segment};
use crate::offload::ecn::{self, Decapsulated, Ecn};
use crate::offload::split::MAX_HEADER_LEN;
use crate::stats::{DropReason, WorkerStats};
use crate::wire::control::{self, Advertisement, Control};
use crate::wire::vnet::{self, VnetHeader};
use std::ops::Range;

/// Segments one GRO receive buffer may hold (`UDP_GRO_CNT_MAX` is 64).
pub const MAX_GRO_SEGMENTS: usize = 128;
/// Room for one run head's original headers: the most `finish_run` rewrites.
pub const HEADER_ROOM: usize = MAX_HEADER_LEN;
/// A zero virtio_net_hdr, for writes of plain packets.
pub static PLAIN_HEADER: [u8; vnet::LEN] = [0; vnet::LEN];
/// Control messages taken from one buffer, at most; more are dropped as `bad_control`. Above
/// what one receive can hold from the kernel (`UDP_GRO_CNT_MAX` is 64 segments a GRO receive,
/// `net/ipv4/udp_offload.c`), so no valid message is ever dropped for its place: a cap a
/// forger could fill would let forged acknowledgements first in a buffer hide the real ones
/// (a healthy worker of 16 tuples gets 16 back to back). The bound is for memory alone.
pub const MAX_CONTROLS: usize = MAX_GRO_SEGMENTS;
/// The shortest datagram worth looking at one by one (shorter than any IP header, or control
/// message). A stride below it (a GSO packet the peer sent with an absurd `gso_size`, which
/// veth delivers whole) makes every datagram of the buffer malformed, and they are counted at
/// once.
pub const MIN_STRIDE: usize = 16;

/// One receive, as the engine found it.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Where the payload sits in the buffer.
    pub payload: Range<usize>,
    /// The `UDP_GRO` segment size, if the control data had one.
    pub gro_size: Option<usize>,
    /// The kernel cut the control data (`MSG_CTRUNC`).
    pub control_truncated: bool,
    /// The outer TOS / traffic class, or 0 when ECN is not applied.
    pub outer_tos: u8,
}

/// How one receive buffer goes into the TUN: its valid datagrams, and the runs they form.
pub struct ReceivePlan {
    /// Each datagram that is to be written: where it is in the buffer, and its headers, parsed
    /// once when it was validated.
    pub segments: Vec<Segment>,
    pub runs: Vec<Run>,
    /// Per run: the virtio_net_hdr of its merged write (a zero one for a single segment).
    pub vnet_headers: Box<[[u8; vnet::LEN]]>,
    /// Per run of several: its head's headers as they were before `finish_run` rewrote them.
    pub saved_heads: Box<[u8]>,
    /// The relay-to-relay control messages among the datagrams (`wire::control`): where each
    /// is in the buffer. Not written to the TUN: the worker acts on them.
    pub controls: Vec<Control>,
    /// The advertisements of the peer's source ports among them (`control::Kind::Ports`), whole,
    /// in the order of their messages in `controls`. Every one is kept: a forged one coalesced
    /// ahead of the peer's real one must not hide it.
    pub advertisements: Vec<Advertisement>,
}

impl Default for ReceivePlan {
    fn default() -> Self {
        ReceivePlan {
            segments: Vec::with_capacity(MAX_GRO_SEGMENTS),
            runs: Vec::with_capacity(MAX_GRO_SEGMENTS),
            vnet_headers: vec![[0u8; vnet::LEN]; MAX_GRO_SEGMENTS].into_boxed_slice(),
            saved_heads: vec![0u8; MAX_GRO_SEGMENTS * HEADER_ROOM].into_boxed_slice(),
            controls: Vec::with_capacity(MAX_CONTROLS),
            advertisements: Vec::with_capacity(4),
        }
    }
}

impl ReceivePlan {
    /// Every run's virtio header, back to back (`vnet::LEN` apart), as the writes name them.
    pub fn vnet_header_bytes(&self) -> &[u8] {
        self.vnet_headers.as_flattened()
    }

    /// The header length of run `r`'s merged packet, as `finish_run` wrote it into its virtio
    /// header: what each later segment of the run leaves out, and what a refused write restores.
    pub fn merged_header_len(&self, r: usize) -> usize {
        VnetHeader::new_checked(&self.vnet_headers[r][..]).map_or(0, |h| usize::from(h.hdr_len()))
    }

    /// Puts run `r`'s head back as it was, after the kernel refused its merged write: exactly
    /// the bytes `finish_run` rewrote, so that the next run's rewritten head, maybe still in
    /// flight, is left alone.
    #[cfg(test)]
    pub fn restore_run(&self, buffer: &mut [u8], r: usize) {
        let (head_at, saved) = self.restore_bytes(r);
        buffer[head_at..head_at + saved.len()].copy_from_slice(saved);
    }

    /// What [`ReceivePlan::restore_run`] writes: where run `r`'s head is in the buffer, and the
    /// bytes to put back there (exactly those `finish_run` rewrote). For a caller that may not
    /// hold a slice over the whole buffer while other runs are in flight.
    pub fn restore_bytes(&self, r: usize) -> (usize, &[u8]) {
        let head_at = self.segments[self.runs[r].first].at;
        let saved = &self.saved_heads[r * HEADER_ROOM..][..HEADER_ROOM];
        (
            head_at,
            &saved[..self.merged_header_len(r).min(saved.len())],
        )
    }
}

/// Plans the receive `arrival` in `buffer`: validates every datagram (counted drops for bad
/// ones), applies the outer ECN mark, plans the runs (`policy` says which may merge) and rewrites
/// each merged run's head. Counts the datagrams received. An empty `plan.segments` afterwards
/// means nothing is to be written. The tests' and the fuzz target's entry; the worker calls
/// [`plan_gated`].
pub fn plan(
    buffer: &mut [u8],
    arrival: &Arrival,
    policy: Policy,
    stats: &mut WorkerStats,
    plan: &mut ReceivePlan,
) {
    plan_gated(buffer, arrival, policy, stats, plan, None);
}

/// [`plan`], with the AQM's `gate` (`relay::aqm`) judging each datagram after RFC 6040 and
/// before the coalescer: a datagram it marks CE merges only with other marked ones, and one it
/// drops is counted as received and dropped.
pub fn plan_gated(
    buffer: &mut [u8],
    arrival: &Arrival,
    policy: Policy,
    stats: &mut WorkerStats,
    plan: &mut ReceivePlan,
    mut gate: Option<Gate<'_>>,
) {
    if arrival.control_truncated {
        stats.counters.control_truncated += 1;
    }
    let payload_at = arrival.payload.start;
    let payload_len = arrival.payload.len();
    let stride = datagram_stride(
        arrival.gro_size,
        arrival.control_truncated,
        &buffer[arrival.payload.clone()],
    );
    plan.segments.clear();
    plan.runs.clear();
    plan.controls.clear();
    plan.advertisements.clear();
    if payload_len == 0 {
        stats.counters.drop(DropReason::EmptyDatagram);
        return;
    }
    if stride < MIN_STRIDE {
        stats
            .counters
            .drop_n(DropReason::BadIpHeader, payload_len.div_ceil(stride) as u64);
        return;
    }
    let mut offset = 0;
    let mut accepted_bytes = 0u64;
    let mut ecn_drops = 0u64;
    let mut aqm_drops = 0u64;
    while offset < payload_len {
        let seg_len = stride.min(payload_len - offset);
        let at = payload_at + offset;
        offset += seg_len;
        let datagram = &buffer[at..at + seg_len];
        if control::is_control(datagram) {
            // Shaped as a control message: taken as one, or dropped, never written into the
            // TUN (no inner packet is from and to 0.0.0.0 with protocol 253).
            match Control::parse(datagram) {
                _ if plan.controls.len() >= MAX_CONTROLS => {}
                Some(message) if message.kind != control::Kind::Ports => {
                    plan.controls.push(message);
                    // Path MTU messages only, and not hellos: the advertisements and their
                    // acknowledgements, and the extra tuples' keepalives and theirs, every 2 s
                    // for as long as the relays run, have counters of their own in the path
                    // section (`peer_ports_accepted`, `pmtu_probes_answered`, ...), and in the
                    // per-queue counters they would keep a quiet tunnel's counts moving.
                    if message.kind != control::Kind::PortsAck && !message.is_hello() {
                        stats.counters.control_received += 1;
                    }
                    continue;
                }
                Some(message) => {
                    if let Some(advertisement) = Advertisement::parse(datagram) {
                        plan.advertisements.push(advertisement);
                        plan.controls.push(message);
                        continue;
                    }
                }
                _ => {}
            }
            stats.counters.drop(DropReason::BadControl);
            continue;
        }
        // One parse: the validation's view of the headers is what the coalescer uses. ECN
        // decapsulation below rewrites only the TOS / traffic class (and the IPv4 header
        // checksum), so it stays true.
        match coalesce::validate(&buffer[at..at + seg_len]) {
            Ok(transport) if plan.segments.len() < MAX_GRO_SEGMENTS => {
                accepted_bytes += seg_len as u64;
                // RFC 6040 before the coalescer looks: marked and unmarked never merge.
                match ecn::decapsulate(arrival.outer_tos, &mut buffer[at..at + seg_len]) {
                    Decapsulated::Drop => {
                        ecn_drops += 1;
                        continue;
                    }
                    Decapsulated::Marked(Ecn::Ce) => stats.path.ecn_ce_marked += 1,
                    Decapsulated::Marked(_) | Decapsulated::Unchanged => {}
                }
                if let Some(gate) = gate.as_mut()
                    && super::queue::count_admitted(
                        gate.admit(&mut buffer[at..at + seg_len]),
                        stats,
                    )
                {
                    aqm_drops += 1;
                    continue;
                }
                plan.segments.push(Segment {
                    at,
                    len: seg_len,
                    transport,
                });
            }
            Ok(_) => stats.counters.drop(DropReason::OversizedDatagram),
            Err(malformed) => stats.counters.drop(malformed.into()),
        }
    }
    // Dropped for ECN or by the AQM (counted there), but received from the peer: counted as
    // both.
    stats.counters.drop_n(DropReason::EcnNotEct, ecn_drops);
    stats.counters.udp_rx_packets += plan.segments.len() as u64 + ecn_drops + aqm_drops;
    stats.counters.udp_rx_bytes += accepted_bytes;
    plan_runs(buffer, policy, stats, plan);
}

/// Plans the runs of the segments in `plan` (`policy` says which may merge) and rewrites each
/// merged run's head: the second half of [`plan`], also used by WireGuard mode once it has
/// opened the datagrams (`relay::wireguard`).
pub fn plan_runs(
    buffer: &mut [u8],
    policy: Policy,
    stats: &mut WorkerStats,
    plan: &mut ReceivePlan,
) {
    if plan.segments.is_empty() {
        return;
    }
    if plan.segments.len() > 1 {
        stats.counters.gro_receives += 1;
    }
    if policy.tcp || policy.udp {
        coalesce::plan_segments(buffer, &plan.segments, policy, &mut plan.runs);
    } else {
        plan.runs
            .extend((0..plan.segments.len()).map(|first| Run { first, count: 1 }));
    }
    for (r, run) in plan.runs.iter().enumerate() {
        if run.count > 1 {
            // Keep the head's original headers in case the kernel refuses the merged write.
            let head = plan.segments[run.first];
            save_head(
                buffer,
                (head.at, head.len),
                &mut plan.saved_heads[r * HEADER_ROOM..][..HEADER_ROOM],
            );
            plan.vnet_headers[r] = coalesce::finish_segments(buffer, &plan.segments, *run);
            stats.counters.coalesced_writes += 1;
        } else {
            plan.vnet_headers[r] = PLAIN_HEADER;
        }
    }
}

/// What a TUN write's result says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    Written {
        bytes: usize,
    },
    /// The kernel refused a merged write (EINVAL; seen on Linux 6.6.44 with a short tail, and
    /// on vendor kernels): its segments are to be written one by one, and merging stopped.
    MergeRefused,
    Dropped,
}

/// Judges the result of a TUN write of `segments` packets (several: a merged run).
pub fn judge_write(result: i32, segments: usize) -> WriteResult {
    if result >= 0 {
        WriteResult::Written {
            bytes: (result as usize).saturating_sub(vnet::LEN),
        }
    } else if -result == libc::EINVAL && segments > 1 {
        WriteResult::MergeRefused
    } else {
        WriteResult::Dropped
    }
}

/// Copies the first bytes of a run's head segment `(offset, len)`, as many as `finish_run` may
/// rewrite (its headers, at most `HEADER_ROOM`, never past the segment), into `saved`.
pub fn save_head(buffer: &[u8], (head_at, head_len): (usize, usize), saved: &mut [u8]) {
    let n = saved.len().min(head_len);
    saved[..n].copy_from_slice(&buffer[head_at..head_at + n]);
}

/// Puts back the `rewritten` bytes of a head segment that [`save_head`] kept: only those, so
/// that nothing past this run's headers changes.
#[cfg(test)]
pub fn restore_head(buffer: &mut [u8], head_at: usize, saved: &[u8], rewritten: usize) {
    let n = rewritten.min(saved.len());
    buffer[head_at..head_at + n].copy_from_slice(&saved[..n]);
}

/// How many datagrams a receive of `payload` holds, cut as [`datagram_stride`] cuts it (an
/// empty one is one datagram): what a drop of the whole buffer counts.
pub fn datagram_count(gro_size: Option<usize>, control_truncated: bool, payload: &[u8]) -> u64 {
    let stride = datagram_stride(gro_size, control_truncated, payload);
    payload.len().div_ceil(stride).max(1) as u64
}

/// Where to cut a receive buffer into datagrams: at the `UDP_GRO` segment size, which every
/// datagram of a coalesced receive has but the last (`udp_gro_receive` in
/// net/ipv4/udp_offload.c). When the control data came back cut (`MSG_CTRUNC`) that size may be
/// missing; then the first packet's own IP length is the stride, since each datagram is one IP
/// packet (and every piece is validated against its IP length anyway). Otherwise the buffer holds
/// one datagram.
pub fn datagram_stride(gro_size: Option<usize>, control_truncated: bool, payload: &[u8]) -> usize {
    let ip_len = || match payload.first()? >> 4 {
        4 => Some(usize::from(u16::from_be_bytes([
            *payload.get(2)?,
            *payload.get(3)?,
        ]))),
        6 => Some(40 + usize::from(u16::from_be_bytes([*payload.get(4)?, *payload.get(5)?]))),
        _ => None,
    };
    let stride = match gro_size {
        // Never 0 (`wire::cmsg` reads none), but a stride of 0 would cut nothing.
        Some(size) => size.max(1),
        None if control_truncated => ip_len()
            .filter(|len| *len > 0 && *len <= payload.len())
            .unwrap_or(payload.len()),
        None => payload.len(),
    };
    stride.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::test_packets::{Spec, build};

    /// Two UDP flows of two tiny datagrams each: two runs of 2 x 32 bytes, the first far shorter
    /// than HEADER_ROOM.
    fn two_tiny_flows() -> Vec<u8> {
        let mut buffer = Vec::new();
        for sport in [1000, 2000] {
            for id in 7..9 {
                buffer.extend_from_slice(&build(&Spec {
                    udp: true,
                    payload_len: 4,
                    sport,
                    id,
                    ..Spec::default()
                }));
            }
        }
        buffer
    }

    fn arrival(buffer: &[u8], gro_size: usize) -> Arrival {
        Arrival {
            payload: 0..buffer.len(),
            gro_size: Some(gro_size),
            control_truncated: false,
            outer_tos: 0,
        }
    }

    #[test]
    fn a_gro_buffer_is_validated_counted_and_merged_per_flow() {
        let mut buffer = two_tiny_flows();
        let mut stats = WorkerStats::new(0);
        let mut p = ReceivePlan::default();
        let a = arrival(&buffer, 32);
        plan(&mut buffer, &a, Policy::ALL, &mut stats, &mut p);
        assert_eq!(p.segments.len(), 4);
        assert_eq!(
            p.runs,
            vec![Run { first: 0, count: 2 }, Run { first: 2, count: 2 }]
        );
        assert_eq!(stats.counters.udp_rx_packets, 4);
        assert_eq!(stats.counters.gro_receives, 1);
        assert_eq!(stats.counters.coalesced_writes, 2);
        assert_eq!(p.merged_header_len(0), 28);

        // Without merging, each datagram is a run of its own with a plain header.
        let mut buffer = two_tiny_flows();
        plan(&mut buffer, &a, Policy::NONE, &mut stats, &mut p);
        assert_eq!(p.runs.len(), 4);
        assert!(p.runs.iter().all(|r| r.count == 1));
        assert!(p.vnet_headers[..4].iter().all(|h| *h == PLAIN_HEADER));
    }

    #[test]
    fn bad_datagrams_are_counted_drops_and_the_rest_goes_on() {
        let mut buffer = two_tiny_flows();
        buffer[32] = 0x55; // datagram 1: IP version 5
        let mut stats = WorkerStats::new(0);
        let mut p = ReceivePlan::default();
        let a = arrival(&buffer, 32);
        plan(&mut buffer, &a, Policy::ALL, &mut stats, &mut p);
        assert_eq!(p.segments.len(), 3);
        assert_eq!(stats.counters.drops_of(DropReason::BadIpVersion), 1);
        assert_eq!(stats.counters.udp_rx_packets, 3);
        // Garbage alone: nothing to write.
        let mut garbage = vec![0xffu8; 40];
        let a = arrival(&garbage, 40);
        plan(&mut garbage, &a, Policy::ALL, &mut stats, &mut p);
        assert!(p.segments.is_empty());
    }

    #[test]
    fn a_ce_mark_on_a_not_ect_packet_drops_it() {
        // RFC 6040: outer CE over an inner Not-ECT packet is dropped, and counted as received.
        let mut buffer = two_tiny_flows();
        let mut stats = WorkerStats::new(0);
        let mut p = ReceivePlan::default();
        let mut a = arrival(&buffer, 32);
        a.outer_tos = 0x03;
        plan(&mut buffer, &a, Policy::ALL, &mut stats, &mut p);
        assert!(p.segments.is_empty());
        assert_eq!(stats.counters.drops_of(DropReason::EcnNotEct), 4);
        assert_eq!(stats.counters.udp_rx_packets, 4);
    }

    #[test]
    fn restoring_a_short_run_leaves_the_next_runs_rewritten_head_alone() {
        let mut buffer = two_tiny_flows();
        let original = buffer.clone();
        let mut stats = WorkerStats::new(0);
        let mut p = ReceivePlan::default();
        let a = arrival(&buffer, 32);
        plan(&mut buffer, &a, Policy::ALL, &mut stats, &mut p);
        let merged = buffer.clone();
        let head0 = p.segments[p.runs[0].first].at;
        let (head1, len1) = (
            p.segments[p.runs[1].first].at,
            p.segments[p.runs[1].first].len,
        );
        assert!(
            head1 - head0 < HEADER_ROOM,
            "the runs sit closer than HEADER_ROOM"
        );
        assert_ne!(merged[head1..head1 + len1], original[head1..head1 + len1]);

        // What the merged-write EINVAL fallback does for run 0.
        p.restore_run(&mut buffer, 0);
        assert_eq!(
            buffer[..head1],
            original[..head1],
            "run 0 is back as it was"
        );
        assert_eq!(
            buffer[head1..],
            merged[head1..],
            "run 1, maybe in flight, is untouched"
        );

        // Restoring all of HEADER_ROOM, as tunfwd once did, would have undone run 1's rewrite.
        let mut old_way = merged.clone();
        restore_head(
            &mut old_way,
            head0,
            &p.saved_heads[..HEADER_ROOM],
            HEADER_ROOM,
        );
        assert_ne!(old_way[head1..], merged[head1..]);
    }

    #[test]
    fn write_results_say_written_refused_or_dropped() {
        assert_eq!(judge_write(110, 1), WriteResult::Written { bytes: 100 });
        assert_eq!(judge_write(-libc::EINVAL, 2), WriteResult::MergeRefused);
        assert_eq!(judge_write(-libc::EINVAL, 1), WriteResult::Dropped);
        assert_eq!(judge_write(-libc::EIO, 3), WriteResult::Dropped);
    }

    #[test]
    fn stride_comes_from_gro_or_the_first_ip_length_when_control_was_cut() {
        let p = build(&Spec {
            udp: true,
            payload_len: 100,
            ..Spec::default()
        });
        let mut two = p.clone();
        two.extend_from_slice(&p);
        assert_eq!(datagram_stride(Some(128), false, &two), 128);
        assert_eq!(
            datagram_stride(Some(128), true, &two),
            128,
            "the size survived"
        );
        assert_eq!(datagram_stride(None, true, &two), p.len());
        assert_eq!(
            datagram_stride(None, false, &two),
            two.len(),
            "one datagram"
        );
        let v6 = build(&Spec {
            ipv6: true,
            udp: true,
            payload_len: 10,
            ..Spec::default()
        });
        let mut v6s = v6.clone();
        v6s.extend_from_slice(&v6);
        assert_eq!(datagram_stride(None, true, &v6s), v6.len());
        // Garbage or an IP length past the buffer: one datagram, which validation then judges.
        assert_eq!(datagram_stride(None, true, &[0xff; 30]), 30);
        let mut long = p.clone();
        long[2..4].copy_from_slice(&9000u16.to_be_bytes());
        assert_eq!(datagram_stride(None, true, &long), long.len());
        assert_eq!(datagram_stride(None, true, &[]), 1);
    }

    /// What a buffer holds, counted from the inputs the test builds: an empty datagram is one
    /// `empty_datagram`; a stride too short for any packet makes every datagram of the buffer
    /// one `bad_ip_header`, counted without looking at each; control messages are taken out and
    /// not counted as drops.
    #[test]
    fn empty_absurd_and_control_datagrams_are_counted_as_what_they_are() {
        let mut stats = WorkerStats::new(0);
        let mut p = ReceivePlan::default();
        let mut empty: Vec<u8> = Vec::new();
        let a = Arrival {
            payload: 0..0,
            gro_size: None,
            control_truncated: false,
            outer_tos: 0,
        };
        plan(&mut empty, &a, Policy::ALL, &mut stats, &mut p);
        assert_eq!(stats.counters.drops_of(DropReason::EmptyDatagram), 1);
        assert_eq!(stats.counters.udp_rx_packets, 0);

        // A GSO packet of 65000 one-byte datagrams (what veth hands over whole).
        let mut ones = vec![0x45u8; 65_000];
        let a = arrival(&ones, 1);
        plan(&mut ones, &a, Policy::ALL, &mut stats, &mut p);
        assert_eq!(stats.counters.drops_of(DropReason::BadIpHeader), 65_000);
        assert!(p.segments.is_empty());

        // Two probes and a data packet of the same stride (GRO merges datagrams of one size):
        // the control messages are taken out, the packet goes on.
        let data = build(&Spec {
            udp: true,
            payload_len: 40 - 28,
            ..Spec::default()
        });
        let mut buffer = Vec::new();
        for nonce in [1u64, 2] {
            let mut probe = [0u8; 40];
            let control = Control {
                kind: control::Kind::Probe,
                nonce,
                size: 1400,
                cookie: 0,
                taken: false,
            };
            assert_eq!(control.write(&mut probe, 40), Some(40));
            buffer.extend_from_slice(&probe);
        }
        buffer.extend_from_slice(&data);
        let mut stats = WorkerStats::new(0);
        let a = arrival(&buffer, 40);
        plan(&mut buffer, &a, Policy::ALL, &mut stats, &mut p);
        assert_eq!(p.controls.len(), 2);
        assert_eq!(p.controls[1].nonce, 2);
        assert_eq!(stats.counters.control_received, 2);
        assert_eq!(p.segments.len(), 1);
        assert_eq!(stats.counters.total_drops(), 0);
        assert_eq!(stats.counters.udp_rx_packets, 1);
    }

    /// A buffer of control-shaped datagrams: every advertisement is taken (a forged one ahead
    /// must not hide the real one) and every valid probe (eight forged acknowledgements ahead
    /// must not hide a real one); one that does not parse is dropped as `bad_control`; none of
    /// them becomes a segment for the TUN.
    #[test]
    fn control_shaped_datagrams_never_reach_the_tun() {
        let ad = Advertisement::new(5, 6, 7, &[40000, 40001]).unwrap();
        let forged = Advertisement::new(8, 9, 0, &[50000, 50001]).unwrap();
        let mut buffer = vec![0u8; ad.wire_len()];
        forged.write(&mut buffer).unwrap();
        let stride = buffer.len();
        let mut one = vec![0u8; stride];
        ad.write(&mut one).unwrap();
        buffer.extend_from_slice(&one);
        // A probe of the same size; then one of its bytes made wrong.
        let mut probe = vec![0u8; stride];
        let message = Control {
            kind: control::Kind::Probe,
            nonce: 9,
            size: 100,
            cookie: 0,
            taken: false,
        };
        message.write(&mut probe, stride).unwrap();
        let mut bad = probe.clone();
        bad[stride - 1] = 1;
        buffer.extend_from_slice(&bad);
        // Sixteen: as many as a worker of 16 tuples gets back at once.
        for _ in 0..16 {
            buffer.extend_from_slice(&probe);
        }
        let mut stats = WorkerStats::new(0);
        let mut p = ReceivePlan::default();
        let a = arrival(&buffer, stride);
        plan(&mut buffer, &a, Policy::ALL, &mut stats, &mut p);
        assert_eq!(p.advertisements, vec![forged, ad]);
        assert_eq!(p.controls.len(), 2 + 16);
        assert!(
            p.segments.is_empty(),
            "written into the TUN: {:?}",
            p.segments
        );
        assert_eq!(stats.counters.drops_of(DropReason::BadControl), 1);
        assert_eq!(stats.counters.udp_rx_packets, 0);
    }

    #[test]
    fn a_buffer_counts_as_many_datagrams_as_its_stride_cuts() {
        let one = [0x45u8; 100];
        assert_eq!(datagram_count(None, false, &one), 1);
        assert_eq!(
            datagram_count(Some(30), false, &one),
            4,
            "30 + 30 + 30 + 10"
        );
        assert_eq!(datagram_count(Some(100), false, &one), 1);
        assert_eq!(datagram_count(Some(1), false, &one), 100);
        assert_eq!(
            datagram_count(Some(30), false, &[]),
            1,
            "an empty one is one"
        );
    }
}
