//! TUN to UDP: what the relay does with a TUN read, and with the results of its sends. PURE.

use super::batch::{self, Offer};
use super::entropy;
use super::send::{self, AfterRefusal, RESENDS_PER_SLOT, Route, SendResult};
use super::slots::{Base, Piece, RefusedSend};
use super::tun::{self, FromTun};
use super::{Buffers, MAX_GSO_SENDS, Relay, Request, SendIndex, Socket};
use crate::offload::icmp::{self, TooBig};
use crate::offload::split::{self, Split};
use crate::stats::{Direction, DropReason};
use crate::steer;
use crate::wire::vnet;
use std::io;

impl Relay {
    /// What every TUN read goes through first, in raw and in WireGuard mode: classified, its
    /// time stamped, and judged by the AQM on the inner packet (`gate_tun_read`). Returns the
    /// verdict to carry out.
    pub(super) fn take_tun_read(
        &mut self,
        bid: u16,
        buffer: &mut [u8],
        len: usize,
        now_ns: u64,
    ) -> FromTun {
        let verdict = tun::classify(
            buffer,
            len,
            self.offloads.tun_offloads(),
            self.path.inner_mtu,
            &mut self.stats.counters,
        );
        self.tun_read_at_ns[usize::from(bid)] = now_ns;
        self.gate_tun_read(buffer, len, verdict, now_ns)
    }

    /// A TUN read of `len` bytes filled buffer `bid` (`buffer`, which the relay now owns and no
    /// request names).
    pub fn on_tun_read(&mut self, bid: u16, buffer: &mut [u8], len: usize, now_ns: u64) {
        self.read_failures.tun = 0;
        if self.wireguard.is_some() {
            return self.wireguard_send(bid, buffer, len, now_ns);
        }
        let verdict = self.take_tun_read(bid, buffer, len, now_ns);
        match verdict {
            FromTun::Dropped => self.tun_free.push(bid),
            FromTun::Plain { len } => self.add_to_batch(bid, &buffer[vnet::LEN..vnet::LEN + len]),
            FromTun::Split(plan) => {
                // Anything gathered so far goes first, so the flow order is kept.
                self.send_batch();
                self.lay_out_split(bid, buffer, &plan);
                self.send_split(bid, &plan);
            }
            FromTun::TooBig { len, plan } => {
                self.send_batch();
                if !self.too_big_on_read(bid, buffer, len, plan, now_ns) {
                    self.tun_free.push(bid);
                }
            }
        }
    }

    /// Adds a plain packet to the pending GSO batch, or sends it alone.
    fn add_to_batch(&mut self, bid: u16, packet: &[u8]) {
        let tos = self.outer_tos(packet);
        let piece = Piece::new(Base::TunBuffer(bid), vnet::LEN, packet.len());
        let flow = steer::flow_key(packet);
        if !self.offloads.udp_gso {
            let (tuple, fallback) = self.tuple_for(flow);
            self.lay_out_one(bid, piece, tos, tuple);
            self.tun_slots[usize::from(bid)].fallback = fallback;
            return self.submit_send(bid, 0, 0, 1, None, Route::Direct);
        }
        match self.batcher.offer(bid, packet.len(), flow, tos) {
            Offer::Joined { position } => {
                let leader = self
                    .batcher
                    .leader()
                    .expect("a packet just joined the batch");
                let slot = &mut self.tun_slots[usize::from(leader)];
                slot.pieces[position] = piece;
                slot.followers.push(bid);
            }
            Offer::Leads { flushed } => {
                if let Some(batch) = flushed {
                    self.submit_batch(batch);
                }
                let slot = &mut self.tun_slots[usize::from(bid)];
                slot.followers.clear();
                slot.pieces[0] = piece;
            }
        }
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

    /// The outer tuple a flow with `flow` as its key leaves from now: the listen tuple (0) until
    /// the peer acknowledged this relay's extra ports, then extra socket `k` as `k + 1`
    /// (`entropy::tuple_for`) while the peer is shown to receive what `k` sends, else the listen
    /// tuple again; and whether it fell back so.
    fn tuple_for(&self, flow: Option<u32>) -> (u8, bool) {
        if !self.entropy_in_use {
            return (0, false);
        }
        match entropy::tuple_for(flow, usize::from(self.extra_sockets)) {
            Some(k) if self.source_ports.tuple_confirmed(k) => (k as u8 + 1, false),
            Some(_) => (0, true),
            None => (0, false),
        }
    }

    /// Prepares `bid`'s slot to send one plain packet, `piece`, from outer tuple `tuple`.
    pub(super) fn lay_out_one(&mut self, bid: u16, piece: Piece, tos: u8, tuple: u8) {
        let slot = &mut self.tun_slots[usize::from(bid)];
        slot.begin_sends(tos, 1, tuple);
        slot.followers.clear();
        slot.pieces[0] = piece;
    }

    /// Sends the pending batch, if any.
    pub(super) fn send_batch(&mut self) {
        if let Some(batch) = self.batcher.take() {
            self.submit_batch(batch);
        }
    }

    /// Sends a batch: one GSO send for several packets, a plain send for one.
    pub(super) fn submit_batch(&mut self, batch: batch::Batch) {
        let (tuple, fallback) = self.tuple_for(batch.flow);
        let slot = &mut self.tun_slots[usize::from(batch.leader)];
        slot.begin_sends(batch.tos, 1, tuple);
        slot.fallback = fallback;
        let segment_size = (batch.count > 1).then_some(batch.segment_size as u16);
        if batch.count > 1 {
            self.stats.counters.gso_sends += 1;
        }
        self.submit_send(batch.leader, 0, 0, batch.count, segment_size, Route::Direct);
    }

    /// Queues a send of `segments` segments from `first` of `bid`'s slot through its msghdr
    /// `msg`, with `UDP_SEGMENT` when `segment_size` is given, on `route`'s socket. Every send
    /// goes through here, so they all reach the kernel in the order they were made, and each
    /// counts in its slot's `sends_pending`.
    pub(super) fn submit_send(
        &mut self,
        bid: u16,
        msg: usize,
        first: usize,
        segments: usize,
        segment_size: Option<u16>,
        route: Route,
    ) {
        let slot = &mut self.tun_slots[usize::from(bid)];
        slot.msg_segments[msg] = (segments as u16, first as u16);
        slot.sends_pending += 1;
        // The fragmenting path leaves from the listen tuple (it is the listen port's socket).
        let socket = match (route, slot.tuple) {
            (Route::Fragmenting, _) => Socket::Fragmenting,
            (Route::Direct, 0) => Socket::Worker,
            (Route::Direct, tuple) => Socket::Extra(tuple - 1),
        };
        let index = SendIndex {
            bid,
            msg: msg as u16,
            route,
        };
        self.queue_io(Request::Send {
            token: super::Token::new(super::Op::UdpSend, index.pack()),
            bid,
            msg: msg as u16,
            first: first as u16,
            segments: segments as u16,
            segment_size,
            route,
            socket,
        });
    }

    /// Sends a super-packet's segments, laid out by `lay_out_split`: up to 64 per GSO send.
    fn send_split(&mut self, bid: u16, plan: &Split) {
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

    /// Prepares `bid`'s slot to send the segments of the super-packet in `buffer`: each
    /// segment's headers rewritten into the slot, its pieces header then payload-in-place, so the
    /// payload is never copied.
    fn lay_out_split(&mut self, bid: u16, buffer: &[u8], plan: &Split) {
        let packet = &buffer[vnet::LEN..];
        let header_len = plan.transport.header_len();
        // The segments' IP headers are copies of the super-packet's: one TOS for all, and one
        // flow, so one tuple.
        let tos = self.outer_tos(packet);
        let (tuple, fallback) = self.tuple_for(steer::flow_key(packet));
        let slot = &mut self.tun_slots[usize::from(bid)];
        slot.begin_sends(tos, 2, tuple);
        slot.fallback = fallback;
        slot.followers.clear();
        for i in 0..plan.count {
            let at = i * super::HEADER_ROOM;
            let header = &mut slot.headers[at..at + super::HEADER_ROOM];
            let payload = plan.segment(packet, i, header);
            slot.pieces[2 * i] = Piece::new(Base::SplitHeaders(bid), at, header_len);
            slot.pieces[2 * i + 1] = Piece::new(
                Base::TunBuffer(bid),
                vnet::LEN + payload.start,
                payload.len(),
            );
        }
    }

    pub(super) fn on_send_done(&mut self, index: SendIndex, result: i32, now_ns: u64) {
        let SendIndex { bid, msg, route } = index;
        let msg = usize::from(msg);
        let slot = &mut self.tun_slots[usize::from(bid)];
        let (segments, first) = slot.msg_segments[msg];
        let (segments, first) = (usize::from(segments), usize::from(first));
        let gso = msg < MAX_GSO_SENDS && segments > 1;
        let verdict = send::judge(result, gso, route);
        self.reports.note_send(verdict);
        let extra = (route == Route::Direct && slot.tuple > 0).then(|| slot.tuple - 1);
        match verdict {
            SendResult::Refused { errno } => {
                // The error is on the queue of the socket that sent it.
                if let Some(k) = extra {
                    self.reports.drain_extra |= 1 << k;
                }
                // Settled once the batch has read the error queue: until then the send stays
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
                if extra.is_some() {
                    self.stats.counters.entropy_tx_packets += segments as u64;
                } else if slot.fallback && route == Route::Direct {
                    self.stats.counters.entropy_fallback_packets += segments as u64;
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
        let slot = &self.tun_slots[usize::from(bid)];
        if slot.pieces_per_segment == 1 {
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
    fn send_without_gso(&mut self, bid: u16, first: usize, segments: usize, errno: i32) {
        if self.offloads.udp_gso {
            self.offloads.udp_gso = false;
            eprintln!(
                "tunfwd: queue {}: UDP GSO send failed ({}); sending without GSO from now on",
                self.queue,
                io::Error::from_raw_os_error(errno)
            );
        }
        self.stats.counters.gso_fallbacks += 1;
        self.send_one_by_one(bid, first, segments, Route::Direct);
    }

    /// Sends segments `first..first + segments` of `bid`'s slot one datagram a send, each with
    /// its own msghdr (after the GSO sends'), on the socket `route` names.
    fn send_one_by_one(&mut self, bid: u16, first: usize, segments: usize, route: Route) {
        for segment in first..first + segments {
            self.submit_send(bid, MAX_GSO_SENDS + segment, segment, 1, None, route);
        }
    }

    /// Gives `bid`'s buffer (and its batch's followers) back once none of its sends is in flight
    /// or waiting to be settled.
    fn release_if_done(&mut self, bid: u16) {
        let slot = &mut self.tun_slots[usize::from(bid)];
        if slot.sends_pending == 0 {
            self.tun_free.extend_from_slice(&slot.followers);
            slot.followers.clear();
            self.tun_free.push(bid);
        }
    }

    /// Settles the sends refused in this batch, now that the error queue has been read: each is
    /// sent again, one by one, answered, or sent in outer fragments (`send::after_refusal`);
    /// then it stops counting in its slot's `sends_pending`, and the slot's buffers go back once
    /// nothing of it is left in flight or waiting here.
    pub(super) fn settle_refusals(&mut self, now_ns: u64, buffers: &impl Buffers) {
        if self.refused.is_empty() {
            return;
        }
        let mut refused = std::mem::take(&mut self.refused);
        for r in refused.drain(..) {
            let slot = &mut self.tun_slots[usize::from(r.bid)];
            // A batch's datagrams are as long as its first, or shorter (its last).
            let length = slot.segment_len(r.first);
            let gso = r.msg < MAX_GSO_SENDS && r.segments > 1;
            let resends_left = slot.resends < RESENDS_PER_SLOT;
            match send::after_refusal(r.errno, gso, length, self.path.inner_mtu, resends_left) {
                AfterRefusal::Resend => {
                    slot.resends += 1;
                    self.stats.counters.send_retries += 1;
                    let size = gso.then_some(length as u16);
                    self.submit_send(r.bid, r.msg, r.first, r.segments, size, r.route);
                }
                AfterRefusal::OneByOne => {
                    self.stats.counters.gso_fallbacks += 1;
                    self.send_one_by_one(r.bid, r.first, r.segments, Route::Direct);
                }
                AfterRefusal::TooBig => {
                    self.too_big_on_send(r.bid, r.first, r.segments, now_ns, buffers)
                }
                AfterRefusal::Drop(reason) => self.stats.counters.drop_n(reason, r.segments as u64),
            }
            self.tun_slots[usize::from(r.bid)].sends_pending -= 1;
            self.release_if_done(r.bid);
        }
        self.refused = refused;
    }

    /// A packet just read is longer than the inner MTU (a super-packet: its segments are, per
    /// `plan`). Answers its sender, or sends it for the outer IP layer to fragment. Returns
    /// whether sends of its buffer were queued; if not, the caller gives the buffer back.
    pub(super) fn too_big_on_read(
        &mut self,
        bid: u16,
        buffer: &[u8],
        packet_len: usize,
        plan: Option<Split>,
        now_ns: u64,
    ) -> bool {
        let (segment_len, count) = plan
            .as_ref()
            .map_or((packet_len, 1), |p| (p.segment_len(0), p.count));
        let packet = &buffer[vnet::LEN..vnet::LEN + packet_len];
        match icmp::too_big_action(packet, segment_len, self.path.inner_mtu) {
            TooBig::Reply { mtu } => {
                self.stats.counters.drop_n(DropReason::TooBig, count as u64);
                self.queue_reply(packet, mtu, now_ns);
                false
            }
            TooBig::Fragment if !self.fragmenting => {
                self.stats.counters.drop_n(DropReason::TooBig, count as u64);
                false
            }
            TooBig::Fragment => {
                match plan {
                    Some(plan) => self.lay_out_split(bid, buffer, &plan),
                    None => {
                        let tos = self.outer_tos(packet);
                        let piece = Piece::new(Base::TunBuffer(bid), vnet::LEN, packet_len);
                        // Sent in outer fragments from the listen tuple (the fragmenting socket's).
                        self.lay_out_one(bid, piece, tos, 0);
                    }
                }
                self.send_fragmenting(bid, 0, count);
                true
            }
        }
    }

    /// A send of `segments` segments from `first` of `bid`'s slot was refused, and the first is
    /// longer than the inner MTU now known. Each datagram is judged on its own: one that fits (a
    /// batch's shorter last) is sent again alone; the others are done with as a read of them
    /// now would (answered once per slot, or sent in outer fragments).
    fn too_big_on_send(
        &mut self,
        bid: u16,
        first: usize,
        segments: usize,
        now_ns: u64,
        buffers: &impl Buffers,
    ) {
        let inner_mtu = self.path.inner_mtu;
        // The first segment, header and payload together, to judge and to quote: the datagrams
        // of one send are of one flow, so what may be done with one may be done with all.
        let mut quote = std::mem::take(&mut self.reply_quote);
        let mut quoted = 0;
        for piece in self.tun_slots[usize::from(bid)].segment_pieces(first, 1) {
            let bytes = match piece.base {
                Base::TunBuffer(b) => buffers.tun(b),
                base => self.own_bytes(base).unwrap_or_default(),
            };
            let (at, len) = (piece.offset as usize, piece.len as usize);
            let n = len.min(quote.len() - quoted);
            quote[quoted..quoted + n].copy_from_slice(&bytes[at..at + n]);
            quoted += n;
        }
        let slot = &mut self.tun_slots[usize::from(bid)];
        let action = icmp::too_big_action(&quote[..quoted], slot.segment_len(first), inner_mtu);
        let too_big = (first..first + segments)
            .filter(|s| slot.segment_len(*s) > inner_mtu)
            .count() as u64;
        if let TooBig::Reply { mtu } = action {
            self.stats.counters.drop_n(DropReason::TooBig, too_big);
            if !std::mem::replace(&mut slot.too_big_answered, true) {
                self.queue_reply(&quote[..quoted], mtu, now_ns);
            }
        }
        self.reply_quote = quote;
        for s in first..first + segments {
            if self.tun_slots[usize::from(bid)].segment_len(s) <= inner_mtu {
                self.stats.counters.send_retries += 1;
                self.submit_send(bid, MAX_GSO_SENDS + s, s, 1, None, Route::Direct);
            } else if action == TooBig::Fragment {
                self.send_fragmenting(bid, s, 1);
            }
        }
    }

    /// Sends segments `first..first + segments` of `bid`'s slot one by one on the fragmenting
    /// socket, as requests like every other send, so that they reach the kernel after the
    /// packets queued before them and not ahead. Drops them, counted, if there is no such
    /// socket.
    fn send_fragmenting(&mut self, bid: u16, first: usize, segments: usize) {
        if !self.fragmenting {
            self.stats
                .counters
                .drop_n(DropReason::TooBig, segments as u64);
            return;
        }
        self.send_one_by_one(bid, first, segments, Route::Fragmenting);
    }
}
