//! UDP to TUN: what a worker does with a receive, and with the results of its TUN writes.

use super::{Received, Request, Worker, WriteIndex};
use crate::offload::coalesce::Policy;
use crate::relay::receive::{self, Arrival, PLAIN_HEADER, WriteResult};
use crate::ring::{Op, Token};
use crate::stats::{Direction, DropReason};
use crate::sys::socket;
use crate::wire::vnet;

impl Worker {
    /// A receive filled UDP buffer `bid`, which is now the worker's, as `received` says.
    pub(super) fn on_udp_recv(&mut self, bid: u16, received: Received, now_ns: u64) {
        // SAFETY: the receive handed `bid` to the worker: no request names it until it is given
        // back or named by a write below (the contract in `ring`).
        let buffer = unsafe { self.memory.udp_buffers.buffer_mut(bid) };
        let in_bounds = received.payload.end <= buffer.len();
        let control = socket::receive_control(&buffer[received.control.clone()]);
        let payload = buffer
            .get(received.payload.clone())
            .unwrap_or_default();
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
            return self.return_udp_buffer(bid);
        }
        // Exactly the peer's address and port: its fragmenting socket sends from its port too.
        if socket::source_address(&buffer[received.name.clone()]) != Some(self.peer_canonical) {
            self.stats.counters.drop_n(DropReason::ForeignSource, datagrams);
            return self.return_udp_buffer(bid);
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
        let slot = &mut self.memory.udp_slots[usize::from(bid)];
        receive::plan(
            buffer,
            &arrival,
            self.coalesce,
            &mut self.stats,
            &mut slot.plan,
        );
        if !slot.plan.controls.is_empty() {
            self.on_control_messages(bid, now_ns);
        }
        let slot = &mut self.memory.udp_slots[usize::from(bid)];
        if slot.plan.segments.is_empty() {
            return self.return_udp_buffer(bid);
        }
        self.udp_read_at_ns[usize::from(bid)] = now_ns;
        // The writes name their byte ranges by pointer: once the first is queued, the kernel may
        // read those bytes while this worker still writes others of the same buffer (a refused
        // run's head), so no slice over the whole buffer may live on (the contract in `ring`).
        let base = self.memory.udp_buffers.buffer_ptr(bid);
        let plan = &slot.plan;
        let mut iov = 0;
        for (r, run) in plan.runs.iter().enumerate() {
            let start = iov;
            slot.iovs[iov] = libc::iovec {
                iov_base: plan.vnet_headers[r].as_ptr().cast_mut().cast(),
                iov_len: vnet::LEN,
            };
            iov += 1;
            let head = plan.segments[run.first];
            slot.iovs[iov] = libc::iovec {
                iov_base: base.wrapping_add(head.at).cast(),
                iov_len: head.len,
            };
            iov += 1;
            if run.count > 1 {
                // Later segments leave out the headers the merged head carries.
                let header_len = plan.merged_header_len(r);
                for s in &plan.segments[run.first + 1..run.first + run.count] {
                    slot.iovs[iov] = libc::iovec {
                        iov_base: base.wrapping_add(s.at + header_len).cast(),
                        iov_len: s.len - header_len,
                    };
                    iov += 1;
                }
            }
            slot.writes_pending += 1;
            let index = WriteIndex::Run { bid, run: r as u16 };
            let token = Token::new(Op::TunWrite, index.pack());
            if run.count > 1 && self.faults.tun_write_einval() {
                self.requests.inject(token, libc::EINVAL);
                continue;
            }
            self.requests.queue(Request::Write {
                token,
                iovs: slot.iovs[start..].as_ptr(),
                count: (iov - start) as u32,
            });
        }
    }

    pub(super) fn return_udp_buffer(&mut self, bid: u16) {
        self.udp_free.push(bid);
    }

    pub(super) fn on_write_done(&mut self, index: WriteIndex, result: i32, now_ns: u64) {
        let (bid, segments, run) = match index {
            WriteIndex::Reply { k } => return self.on_reply_written(usize::from(k), result),
            WriteIndex::Segment { bid, .. } => (bid, 1, None),
            WriteIndex::Run { bid, run } => {
                let slot = &self.memory.udp_slots[usize::from(bid)];
                let count = slot.plan.runs[usize::from(run)].count;
                (bid, count, Some(usize::from(run)))
            }
        };
        let slot = &mut self.memory.udp_slots[usize::from(bid)];
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
                    self.write_run_segments(bid, r);
                }
                return;
            }
            WriteResult::Dropped => self
                .stats
                .counters
                .drop_n(DropReason::TunWriteError, segments as u64),
        }
        if self.memory.udp_slots[usize::from(bid)].writes_pending == 0 {
            self.return_udp_buffer(bid);
        }
    }

    /// The kernel refused run `r`'s merged write: restores its head, writes each segment alone,
    /// and stops merging on this worker.
    fn write_run_segments(&mut self, bid: u16, r: usize) {
        if self.coalesce != Policy::NONE {
            eprintln!(
                "tunfwd: queue {}: the TUN refused a merged write (EINVAL); writing segments one \
                 by one from now on",
                self.stats.queue
            );
            self.coalesce = Policy::NONE;
        }
        self.stats.counters.coalesce_fallbacks += 1;
        let base = self.memory.udp_buffers.buffer_ptr(bid);
        let slot = &mut self.memory.udp_slots[usize::from(bid)];
        let (head_at, saved) = slot.plan.restore_bytes(r);
        // SAFETY: the worker owns `bid` (the contract in `ring`). The one request that named
        // these bytes, this run's merged write, has completed; the buffer's other writes, maybe
        // still in flight, name other runs' bytes, which this writes none of (only this run's
        // rewritten headers, through a pointer: no slice over the buffer is made while the
        // kernel may read it). `saved` is in the slot, not the buffer, so the two do not overlap,
        // and `head_at + saved.len()` is within the segment the receive put there.
        unsafe {
            std::ptr::copy_nonoverlapping(saved.as_ptr(), base.add(head_at), saved.len());
        }
        let run = slot.plan.runs[r];
        for s in run.first..run.first + run.count {
            let segment = slot.plan.segments[s];
            slot.fallback_iovs[2 * s] = libc::iovec {
                iov_base: PLAIN_HEADER.as_ptr().cast_mut().cast(),
                iov_len: vnet::LEN,
            };
            slot.fallback_iovs[2 * s + 1] = libc::iovec {
                iov_base: base.wrapping_add(segment.at).cast(),
                iov_len: segment.len,
            };
            slot.writes_pending += 1;
            let index = WriteIndex::Segment {
                bid,
                segment: s as u16,
            };
            self.requests.queue(Request::Write {
                token: Token::new(Op::TunWrite, index.pack()),
                iovs: slot.fallback_iovs[2 * s..].as_ptr(),
                count: 2,
            });
        }
    }
}
