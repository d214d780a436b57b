//! UDP to TUN: what the relay does with a receive, and with the results of its TUN writes. PURE.

use super::receive::{self, Arrival, ReceivePlan, WriteResult};
use super::slots::{Base, Piece};
use super::{Buffers, Received, Relay, Request, Token, WriteIndex};
use crate::offload::coalesce::Policy;
use crate::stats::{Direction, DropReason};
use crate::wire::{cmsg, control, vnet};

/// Where run `r`'s pieces are in its slot's `pieces` (`run_starts` holds where each begins):
/// its virtio header, its head, then one per later segment.
pub(super) fn run_pieces(plan: &ReceivePlan, run_starts: &[u16], r: usize) -> (usize, usize) {
    let start = usize::from(run_starts[r]);
    (start, start + 1 + plan.runs[r].count)
}

impl Relay {
    /// A receive filled UDP buffer `bid` (`buffer`, which the relay now owns and no request
    /// names), as `received` says.
    pub fn on_udp_recv(&mut self, bid: u16, buffer: &mut [u8], received: Received, now_ns: u64) {
        self.read_failures.udp = 0;
        let in_bounds = received.payload.end <= buffer.len();
        let control = cmsg::receive_control(buffer.get(received.control.clone()).unwrap_or(&[]));
        let payload = buffer.get(received.payload.clone()).unwrap_or_default();
        // What a drop of the whole buffer counts: every datagram in it (a GRO buffer holds many).
        let datagrams = receive::datagram_count(
            control.gro_segment_size,
            received.control_truncated,
            payload,
        );
        if received.payload_truncated || !in_bounds {
            self.stats
                .counters
                .drop_n(DropReason::OversizedDatagram, datagrams);
            return self.udp_free.push(bid);
        }
        let source = cmsg::source_address(buffer.get(received.name.clone()).unwrap_or(&[]));
        // WireGuard mode authenticates each datagram instead, and takes it from any source.
        if self.wireguard.is_some() {
            return self.wireguard_receive(bid, buffer, received, source, &control, now_ns);
        }
        // Exactly the peer's address, and its listen port (its fragmenting socket sends from
        // there too) or a port it advertised and proved its own by probes from it that echo
        // this relay's cookie (`entropy`). From a port advertised but not proven (yet, or any
        // more) only such a probe is taken: behind a NAT the peer advertises port numbers it
        // holds before the NAT, which at the NAT's address may be anyone's.
        let from_listen = source == Some(self.peer_canonical);
        let extra_port = source
            .filter(|s| !from_listen && s.ip() == self.peer_canonical.ip())
            .map(|s| s.port());
        let from_peer = from_listen
            || extra_port.is_some_and(|port| {
                self.source_ports.accepts(port)
                    || (self.source_ports.advertised(port)
                        && datagrams == 1
                        && control::Control::parse(payload).is_some_and(|c| {
                            c.kind == control::Kind::Probe && self.source_ports.proves(c.cookie)
                        }))
            });
        if !from_peer {
            self.stats
                .counters
                .drop_n(DropReason::ForeignSource, datagrams);
            return self.udp_free.push(bid);
        }
        let arrival = Arrival {
            payload: received.payload,
            gro_size: control.gro_segment_size,
            control_truncated: received.control_truncated,
            // One outer TOS for the whole buffer: GRO merges only datagrams with equal TOS.
            outer_tos: if self.marking.ecn {
                control.tos.unwrap_or(0)
            } else {
                0
            },
        };
        let slot = &mut self.udp_slots[usize::from(bid)];
        let gate = super::queue::socket_gate(
            &mut self.queues,
            &mut self.stats,
            control.received_at_ns,
            datagrams,
            now_ns,
        );
        receive::plan_gated(
            buffer,
            &arrival,
            self.coalesce,
            &mut self.stats,
            &mut slot.plan,
            gate,
        );
        if !slot.plan.controls.is_empty() {
            self.on_control_messages(bid, from_listen, extra_port);
        }
        self.write_planned(bid, now_ns);
    }

    /// Writes what `bid`'s plan holds into the TUN, run by run, or gives the buffer back if it
    /// holds nothing to write.
    pub(super) fn write_planned(&mut self, bid: u16, now_ns: u64) {
        let slot = &mut self.udp_slots[usize::from(bid)];
        if slot.plan.segments.is_empty() {
            return self.udp_free.push(bid);
        }
        self.udp_read_at_ns[usize::from(bid)] = now_ns;
        let plan = &slot.plan;
        let mut p = 0;
        for (r, run) in plan.runs.iter().enumerate() {
            slot.run_starts[r] = p as u16;
            slot.pieces[p] = Piece::new(Base::RunHeaders(bid), r * vnet::LEN, vnet::LEN);
            p += 1;
            let head = plan.segments[run.first];
            slot.pieces[p] = Piece::new(Base::UdpBuffer(bid), head.at, head.len);
            p += 1;
            if run.count > 1 {
                // Later segments leave out the headers the merged head carries.
                let header_len = plan.merged_header_len(r);
                for s in &plan.segments[run.first + 1..run.first + run.count] {
                    slot.pieces[p] =
                        Piece::new(Base::UdpBuffer(bid), s.at + header_len, s.len - header_len);
                    p += 1;
                }
            }
        }
        let runs = plan.runs.len();
        slot.writes_pending += runs as u16;
        for r in 0..runs {
            let index = WriteIndex::Run { bid, run: r as u16 };
            self.queue_io(Request::Write {
                token: Token::new(super::Op::TunWrite, index.pack()),
            });
        }
    }

    pub(super) fn on_write_done(
        &mut self,
        index: WriteIndex,
        result: i32,
        now_ns: u64,
        buffers: &impl Buffers,
    ) {
        let (bid, segments, run) = match index {
            WriteIndex::Reply { k } => return self.on_reply_written(usize::from(k), result),
            WriteIndex::Segment { bid, .. } => (bid, 1, None),
            WriteIndex::Run { bid, run } => {
                let slot = &self.udp_slots[usize::from(bid)];
                let count = slot.plan.runs[usize::from(run)].count;
                (bid, count, Some(usize::from(run)))
            }
        };
        let slot = &mut self.udp_slots[usize::from(bid)];
        slot.writes_pending -= 1;
        match receive::judge_write(result, segments) {
            WriteResult::Written { bytes } => {
                self.stats.counters.tun_tx_packets += segments as u64;
                self.stats.counters.tun_tx_bytes += bytes as u64;
                let started = self.udp_read_at_ns[usize::from(bid)];
                self.stats.record_latency_n(
                    Direction::UdpToTun,
                    now_ns.saturating_sub(started),
                    segments as u64,
                );
            }
            WriteResult::MergeRefused => {
                if let Some(r) = run {
                    self.write_run_segments(bid, r, buffers);
                }
                return;
            }
            WriteResult::Dropped => self
                .stats
                .counters
                .drop_n(DropReason::TunWriteError, segments as u64),
        }
        if self.udp_slots[usize::from(bid)].writes_pending == 0 {
            self.udp_free.push(bid);
        }
    }

    /// The kernel refused run `r`'s merged write: restores its head, writes each segment alone,
    /// and stops merging on this worker.
    fn write_run_segments(&mut self, bid: u16, r: usize, buffers: &impl Buffers) {
        if self.coalesce != Policy::NONE {
            eprintln!(
                "tunfwd: queue {}: the TUN refused a merged write (EINVAL); writing segments one \
                 by one from now on",
                self.queue
            );
            self.coalesce = Policy::NONE;
        }
        self.stats.counters.coalesce_fallbacks += 1;
        let slot = &mut self.udp_slots[usize::from(bid)];
        // Only this run's rewritten headers: the buffer's other writes, maybe still in flight,
        // name other runs' bytes (`Buffers::write_udp` touches nothing else).
        let (head_at, saved) = slot.plan.restore_bytes(r);
        buffers.write_udp(bid, head_at, saved);
        let run = slot.plan.runs[r];
        for s in run.first..run.first + run.count {
            let segment = slot.plan.segments[s];
            slot.fallback_pieces[2 * s] = Piece::new(Base::PlainHeader, 0, vnet::LEN);
            slot.fallback_pieces[2 * s + 1] =
                Piece::new(Base::UdpBuffer(bid), segment.at, segment.len);
        }
        slot.writes_pending += run.count as u16;
        for s in run.first..run.first + run.count {
            let index = WriteIndex::Segment {
                bid,
                segment: s as u16,
            };
            self.queue_io(Request::Write {
                token: Token::new(super::Op::TunWrite, index.pack()),
            });
        }
    }
}
