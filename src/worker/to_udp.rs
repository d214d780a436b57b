//! TUN to UDP: what a worker does with a TUN read, and with the results of its sends.

use super::slots::RefusedSend;
use super::{MAX_GSO_SENDS, Request, SendIndex, Worker};
use crate::offload::split::{self, Split};
use crate::relay::batch::{self, Offer};
use crate::relay::send::{self, Route, SendResult};
use crate::relay::tun::{self, FromTun};
use crate::ring::{Op, Token};
use crate::stats::Direction;
use crate::steer;
use crate::wire::vnet;
use std::io;

impl Worker {
    /// A TUN read of `len` bytes filled buffer `bid`, which is now the worker's.
    pub(super) fn on_tun_read(&mut self, bid: u16, len: usize, now_ns: u64) {
        // SAFETY: the read handed `bid` to the worker: no request names it until it is given
        // back or named by a send below (the contract in `ring`).
        let buffer = unsafe { self.memory.tun_buffers.buffer_mut(bid) };
        let verdict = tun::classify(
            buffer,
            len,
            self.offloads.tun_offloads(),
            self.path.inner_mtu,
            &mut self.stats.counters,
        );
        self.tun_read_at_ns[usize::from(bid)] = now_ns;
        match verdict {
            FromTun::Dropped => self.return_tun_buffer(bid),
            FromTun::Plain { len } => self.add_to_batch(bid, len),
            FromTun::Split(plan) => {
                // Anything gathered so far goes first, so the flow order is kept.
                self.send_batch();
                self.send_split(bid, plan);
            }
            FromTun::TooBig { len, plan } => {
                self.send_batch();
                if !self.too_big_on_read(bid, len, plan, now_ns) {
                    self.return_tun_buffer(bid);
                }
            }
        }
    }

    pub(super) fn return_tun_buffer(&mut self, bid: u16) {
        self.tun_free.push(bid);
    }

    /// Adds a plain packet to the pending GSO batch, or sends it alone.
    fn add_to_batch(&mut self, bid: u16, len: usize) {
        let packet_ptr = self
            .memory
            .tun_buffers
            .buffer_ptr(bid)
            .wrapping_add(vnet::LEN);
        if !self.offloads.udp_gso {
            self.lay_out_one(bid, packet_ptr, len);
            return self.submit_send(bid, 0, 0, 1, None, Route::Direct);
        }
        // SAFETY: the worker owns `bid` (just read); only its first bytes are read here.
        let packet = unsafe { std::slice::from_raw_parts(packet_ptr, len) };
        let flow = steer::flow_key(packet);
        let tos = self.outer_tos(packet);
        let iov = libc::iovec {
            iov_base: packet_ptr.cast(),
            iov_len: len,
        };
        match self.batcher.offer(bid, len, flow, tos) {
            Offer::Joined { position } => {
                let leader = self.batcher_leader();
                let slot = &mut self.memory.tun_slots[usize::from(leader)];
                slot.iovs[position] = iov;
                slot.followers.push(bid);
            }
            Offer::Leads { flushed } => {
                if let Some(batch) = flushed {
                    self.submit_batch(batch);
                }
                let slot = &mut self.memory.tun_slots[usize::from(bid)];
                slot.followers.clear();
                slot.iovs[0] = iov;
            }
        }
    }

    /// The buffer leading the pending batch.
    fn batcher_leader(&self) -> u16 {
        self.batcher
            .leader()
            .expect("a packet just joined the batch")
    }

    /// The outer TOS / traffic class for an inner packet (see `offload::ecn`).
    pub(super) fn outer_tos(&self, packet: &[u8]) -> u8 {
        if self.marking.always_zero() {
            0
        } else {
            self.marking
                .outer_tos(crate::offload::ecn::inner_tos(packet))
        }
    }

    /// Prepares `bid`'s slot to send its one plain packet of `len` bytes at `packet_ptr`.
    pub(super) fn lay_out_one(&mut self, bid: u16, packet_ptr: *mut u8, len: usize) {
        // SAFETY: the worker owns `bid` (just read); only its first bytes are read here.
        let tos = self.outer_tos(unsafe { std::slice::from_raw_parts(packet_ptr, len) });
        let family = self.path.family;
        let slot = &mut self.memory.tun_slots[usize::from(bid)];
        slot.begin_sends(tos, family);
        slot.followers.clear();
        slot.iovs[0] = libc::iovec {
            iov_base: packet_ptr.cast(),
            iov_len: len,
        };
        slot.iovs_per_segment = 1;
    }

    /// Sends the pending batch, if any.
    pub(super) fn send_batch(&mut self) {
        if let Some(batch) = self.batcher.take() {
            self.submit_batch(batch);
        }
    }

    /// Sends a batch: one GSO send for several packets, a plain send for one.
    fn submit_batch(&mut self, batch: batch::Batch) {
        let slot = &mut self.memory.tun_slots[usize::from(batch.leader)];
        slot.begin_sends(batch.tos, self.path.family);
        slot.iovs_per_segment = 1;
        let segment_size = (batch.count > 1).then_some(batch.segment_size as u16);
        if batch.count > 1 {
            self.stats.counters.gso_sends += 1;
        }
        self.submit_send(batch.leader, 0, 0, batch.count, segment_size, Route::Direct);
    }

    /// Queues msghdr `msg` of `bid`'s slot, covering `segments` segments from `first_segment`,
    /// with `UDP_SEGMENT` when `segment_size` is given, on the socket `route` names. Every send
    /// of the worker goes through here, so they all reach the kernel in the order they were
    /// made, and each counts in its slot's `sends_pending`.
    pub(super) fn submit_send(
        &mut self,
        bid: u16,
        msg: usize,
        first_segment: usize,
        segments: usize,
        segment_size: Option<u16>,
        route: Route,
    ) {
        let slot = &mut self.memory.tun_slots[usize::from(bid)];
        let per = usize::from(slot.iovs_per_segment);
        let iov_start = first_segment * per;
        let m = &mut slot.msgs[msg];
        m.msg_iov = slot.iovs[iov_start..].as_mut_ptr();
        m.msg_iovlen = segments * per;
        let name = &*self.memory.peer_sockaddr;
        m.msg_name = (&name.0 as *const libc::sockaddr_storage).cast_mut().cast();
        m.msg_namelen = name.1;
        if msg < MAX_GSO_SENDS {
            // Its own control area: UDP_SEGMENT and the TOS, either, both or neither.
            let control = &mut slot.controls[msg];
            let len = crate::sys::socket::write_send_control(
                control,
                segment_size,
                slot.tos,
                self.path.family,
            );
            m.msg_controllen = len;
            m.msg_control = if len > 0 {
                control.as_mut_ptr().cast()
            } else {
                std::ptr::null_mut()
            };
        } else {
            // A single segment: at most the slot's TOS message, which no send writes to.
            m.msg_controllen = slot.tos_control_len;
            m.msg_control = if slot.tos_control_len > 0 {
                slot.tos_control.as_mut_ptr().cast()
            } else {
                std::ptr::null_mut()
            };
        }
        slot.msg_segments[msg] = (segments as u16, first_segment as u16);
        slot.sends_pending += 1;
        let index = SendIndex {
            bid,
            msg: msg as u16,
            route,
        };
        let token = Token::new(Op::UdpSend, index.pack());
        if route == Route::Direct
            && let Some(errno) = self.faults.send_error(segment_size.is_some())
        {
            if errno == libc::EIO {
                // Refused GSO sends come in pairs: the second is in flight when the first fails.
                return self.requests.inject_in_pairs(token, errno);
            }
            return self.requests.inject(token, errno);
        }
        let msg: *const libc::msghdr = &slot.msgs[msg];
        self.requests.queue(Request::Send { token, route, msg });
    }

    /// Sends a super-packet's segments: headers rewritten into the slot, payloads in place.
    fn send_split(&mut self, bid: u16, plan: Split) {
        self.lay_out_split(bid, &plan);
        let seg0 = plan.segment_len(0);
        let mut first = 0;
        if self.offloads.udp_gso && plan.count > 1 {
            let per_send = split::segments_per_send(seg0);
            // `MAX_GSO_SENDS` sends hold `MAX_SPLIT_SEGMENTS` segments of any size.
            for msg in 0..MAX_GSO_SENDS {
                if first == plan.count {
                    break;
                }
                let n = per_send.min(plan.count - first);
                if n > 1 {
                    self.stats.counters.gso_sends += 1;
                }
                let size = (n > 1).then_some(seg0 as u16);
                self.submit_send(bid, msg, first, n, size, Route::Direct);
                first += n;
            }
        }
        for i in first..plan.count {
            self.submit_send(bid, MAX_GSO_SENDS + i, i, 1, None, Route::Direct);
        }
    }

    /// Prepares `bid`'s slot to send the segments of the super-packet in it: each segment's
    /// headers rewritten into the slot, its iovecs alternating header and payload-in-place.
    pub(super) fn lay_out_split(&mut self, bid: u16, plan: &Split) {
        let packet_ptr = self
            .memory
            .tun_buffers
            .buffer_ptr(bid)
            .wrapping_add(vnet::LEN);
        let header_len = plan.transport.header_len();
        // SAFETY: the worker owns `bid`; the packet was just read into it, and no request names
        // it yet.
        let buffer = unsafe { self.memory.tun_buffers.buffer_mut(bid) };
        let packet = &buffer[vnet::LEN..];
        // The segments' IP headers are copies of the super-packet's: one TOS for all.
        let tos = self.outer_tos(packet);
        let slot = &mut self.memory.tun_slots[usize::from(bid)];
        slot.begin_sends(tos, self.path.family);
        slot.followers.clear();
        slot.iovs_per_segment = 2;
        for i in 0..plan.count {
            let header =
                &mut slot.headers[i * super::slots::HEADER_ROOM..][..super::slots::HEADER_ROOM];
            let payload = plan.segment(packet, i, header);
            slot.iovs[2 * i] = libc::iovec {
                iov_base: header.as_mut_ptr().cast(),
                iov_len: header_len,
            };
            slot.iovs[2 * i + 1] = libc::iovec {
                iov_base: packet_ptr.wrapping_add(payload.start).cast(),
                iov_len: payload.len(),
            };
        }
    }

    pub(super) fn on_send_done(&mut self, index: SendIndex, result: i32, now_ns: u64) {
        let SendIndex { bid, msg, route } = index;
        let msg = usize::from(msg);
        let slot = &mut self.memory.tun_slots[usize::from(bid)];
        let (segments, first) = slot.msg_segments[msg];
        let (segments, first) = (usize::from(segments), usize::from(first));
        let gso = msg < MAX_GSO_SENDS && segments > 1;
        let verdict = send::judge(result, gso, route);
        self.reports.note_send(verdict);
        match verdict {
            SendResult::Refused { errno } => {
                // Settled once the batch has looked at the path MTU: until then the send stays
                // counted in `sends_pending`, so its slot keeps its buffers.
                self.refused.push(RefusedSend {
                    bid,
                    msg,
                    first,
                    segments,
                    errno,
                    route,
                });
                return;
            }
            SendResult::Sent { bytes } => {
                slot.sends_pending -= 1;
                self.stats.counters.udp_tx_packets += segments as u64;
                self.stats.counters.udp_tx_bytes += bytes as u64;
                if route == Route::Fragmenting {
                    self.stats.path.fragmented_sends += segments as u64;
                }
                self.time_sent(bid, first, segments, now_ns);
            }
            SendResult::GsoUnusable { errno } => {
                slot.sends_pending -= 1;
                self.send_without_gso(bid, first, segments, errno);
            }
            SendResult::Dropped(reason) => {
                slot.sends_pending -= 1;
                self.stats.counters.drop_n(reason, segments as u64);
            }
        }
        self.release_if_done(bid);
    }

    /// One latency sample per datagram sent, timed from the read of the buffer it came from: a
    /// batch leader's or follower's own buffer, or the one super-packet a split came from.
    fn time_sent(&mut self, bid: u16, first: usize, segments: usize, now_ns: u64) {
        let slot = &self.memory.tun_slots[usize::from(bid)];
        if slot.iovs_per_segment == 1 {
            for segment in first..first + segments {
                let source = batch::segment_source(bid, &slot.followers, segment);
                let started = self.tun_read_at_ns[usize::from(source)];
                self.stats
                    .record_latency(Direction::TunToUdp, now_ns.saturating_sub(started));
            }
        } else {
            // A split's segments all came in with one read: one histogram update for all.
            let started = self.tun_read_at_ns[usize::from(bid)];
            self.stats.record_latency_n(
                Direction::TunToUdp,
                now_ns.saturating_sub(started),
                segments as u64,
            );
        }
    }

    /// The egress device cannot do UDP GSO (no checksum offload): turns it off and sends these
    /// segments one by one (quinn-udp and wireguard-go do the same). Every GSO send that fails
    /// so is redone, also those already in flight when GSO went off.
    pub(super) fn send_without_gso(&mut self, bid: u16, first: usize, segments: usize, errno: i32) {
        if self.offloads.udp_gso {
            self.offloads.udp_gso = false;
            eprintln!(
                "tunfwd: queue {}: UDP GSO send failed ({}); sending without GSO from now on",
                self.stats.queue,
                io::Error::from_raw_os_error(errno)
            );
        }
        self.stats.counters.gso_fallbacks += 1;
        self.send_one_by_one(bid, first, segments, Route::Direct);
    }

    /// Sends segments `first..first + segments` of `bid`'s slot one datagram a send, each with
    /// its own msghdr (after the GSO sends'), on the socket `route` names.
    pub(super) fn send_one_by_one(
        &mut self,
        bid: u16,
        first: usize,
        segments: usize,
        route: Route,
    ) {
        for segment in first..first + segments {
            self.submit_send(bid, MAX_GSO_SENDS + segment, segment, 1, None, route);
        }
    }

    /// Gives `bid`'s buffer (and its batch's followers) back once none of its sends is in flight
    /// or waiting to be settled.
    pub(super) fn release_if_done(&mut self, bid: u16) {
        let slot = &mut self.memory.tun_slots[usize::from(bid)];
        if slot.sends_pending == 0 {
            self.tun_free.extend_from_slice(&slot.followers);
            slot.followers.clear();
            self.tun_free.push(bid);
        }
    }
}
