//! The path to the peer: error reports, path MTU, and packets too big for it.

use super::slots::{REPLY_BUFFERS, TooBigReplies};
use super::{MAX_GSO_SENDS, Request, Requests, Worker, WriteIndex};
use crate::offload::icmp::{self, TooBig};
use crate::offload::split::Split;
use crate::relay::receive::PLAIN_HEADER;
use crate::relay::plpmtud::Probe;
use crate::relay::send::{self, AfterRefusal, RESENDS_PER_SLOT, Route};
use crate::ring::{Op, Token};
use crate::stats::DropReason;
use crate::sys::random;
use crate::sys::socket;
use crate::wire::control::{self, Control};
use crate::wire::icmp::IcmpKind;
use crate::wire::vnet;
use std::os::fd::AsRawFd;

impl Worker {
    /// Acts, once per batch, on what its completions reported: drains the error queue, counting
    /// the ICMP errors about the peer by kind (at least as many as surfaced on receives). An
    /// ICMP message's path MTU is a hint, for the path MTU machine to confirm (it may come from
    /// anyone who knows the 4-tuple); the local stack's "message too long" names the egress
    /// device's own MTU, and is believed at once, here and by the machine.
    pub(super) fn read_error_reports(&mut self) {
        let reports = std::mem::take(&mut self.reports);
        if !reports.drain_queue {
            return;
        }
        let queued = socket::drain_error_queue(self.socket.as_raw_fd());
        self.stats.counters.icmp_errors += queued.from_icmp().max(reports.surfaced_icmp_errors);
        self.take_queued_errors(&queued);
        self.read_fragmenting_errors();
    }

    /// Drains the fragmenting socket's error queue: the kernel may hand it the ICMP errors about
    /// the relay's 4-tuple (see `socket::fragmenting_socket`), and nothing else tells the worker
    /// they are there, since it never receives on that socket. A cheap system call, made with
    /// every batch that reads the worker's own queue and every `FRAGMENTING_ERRORS_CHECK`.
    pub(super) fn read_fragmenting_errors(&mut self) {
        if let Some(fd) = &self.fragmenting {
            let queued = socket::drain_error_queue(fd.as_raw_fd());
            self.stats.counters.icmp_errors += queued.from_icmp();
            self.take_queued_errors(&queued);
        }
    }

    /// Counts queued errors by kind, and acts on the path MTUs they report.
    fn take_queued_errors(&mut self, queued: &socket::QueuedErrors) {
        for kind in IcmpKind::ALL {
            *self.stats.path.icmp_mut(kind) += queued.icmp[kind as usize];
        }
        if let Some(mtu) = queued.icmp_path_mtu {
            self.shared_path.post_hint(mtu);
        }
        if let Some(mtu) = queued.local_path_mtu {
            self.shared_path.post_local_limit(mtu);
            let mtu = (mtu as usize).max(self.path.family.smallest_path_mtu());
            if mtu < self.path.path_mtu {
                self.set_path_mtu(mtu);
            }
        }
    }

    /// Runs the path MTU machine, on the worker that has it: hands it what every worker posted,
    /// sends the probe it asks for, and publishes its working size. Then, on every worker, takes
    /// a newly published working size. A few relaxed atomic loads when nothing happens.
    pub(super) fn run_path(&mut self, now_ns: u64) {
        if let Some(machine) = &mut self.plpmtud {
            self.shared_path.run(machine, now_ns);
            let probe = machine.poll(now_ns, || random::nonzero_u64().unwrap_or(now_ns | 1));
            let counts = machine.counts();
            self.stats.path.take_probe_counts(&counts);
            if let Some(probe) = probe {
                self.send_probe(probe);
            }
        }
        let published = self.shared_path.working();
        if published != self.published_path_mtu {
            self.published_path_mtu = published;
            self.set_path_mtu(published);
        }
    }

    /// Works to `path_mtu` from now on. Returns whether it changed.
    fn set_path_mtu(&mut self, path_mtu: usize) -> bool {
        let changed = self.path.set(path_mtu);
        if changed {
            eprintln!(
                "tunfwd: queue {}: path MTU to {} is {path_mtu}; inner packets up to {} bytes",
                self.stats.queue,
                self.peer.ip(),
                self.path.inner_mtu
            );
        }
        self.stats.path.path_mtu = path_mtu as u64;
        changed
    }

    /// Sends a path MTU probe of `probe.size` bytes (outer headers included) to the peer, if a
    /// control slot is free (a probe that cannot go is a probe lost: the machine tries again).
    fn send_probe(&mut self, probe: Probe) {
        let message = Control {
            kind: control::Kind::Probe,
            nonce: probe.nonce,
            size: u16::try_from(probe.size).unwrap_or(u16::MAX),
        };
        let payload_len = probe.size.saturating_sub(self.path.family.overhead());
        self.queue_control(message, payload_len);
    }

    /// Acts on the control messages a receive into `bid` brought: answers probes (at most
    /// `ACKS_PER_SECOND`), and posts acknowledgements for the path MTU machine, wherever it runs.
    pub(super) fn on_control_messages(&mut self, bid: u16, now_ns: u64) {
        let count = self.memory.udp_slots[usize::from(bid)].plan.controls.len();
        for i in 0..count {
            let message = self.memory.udp_slots[usize::from(bid)].plan.controls[i];
            match message.kind {
                control::Kind::Probe => {
                    if self.ack_bucket.allow(now_ns) && self.queue_control(message.ack(), 0) {
                        self.stats.path.pmtu_probes_answered += 1;
                    }
                }
                control::Kind::Ack => self.shared_path.post_ack(message.nonce),
            }
        }
    }

    /// Writes `message` (a probe padded to `payload_len` bytes, or an acknowledgement) into a
    /// free control slot and queues its send. False if every slot is in flight, or the slot is
    /// too short for the probe.
    fn queue_control(&mut self, message: Control, payload_len: usize) -> bool {
        let controls = &mut self.memory.controls;
        let Some(k) = controls.busy.iter().position(|busy| !busy) else {
            return false;
        };
        let Some(len) = message.write(controls.buffer_mut(k), payload_len) else {
            return false;
        };
        controls.busy[k] = true;
        controls.iovs[k].iov_len = len;
        let msg = controls.point_at_peer(k, &self.memory.peer_sockaddr);
        self.requests.queue(Request::Send {
            token: Token::new(Op::ControlSend, k as u32),
            route: Route::Direct,
            msg,
        });
        true
    }

    /// A control message's send completed. A refusal is not judged: a probe over the egress
    /// device's MTU queued that MTU (read with the next batch), and the machine counts the
    /// probe as lost; an acknowledgement lost is a probe the peer sends again.
    pub(super) fn on_control_sent(&mut self, k: usize, result: i32) {
        if let Some(busy) = self.memory.controls.busy.get_mut(k) {
            *busy = false;
        }
        if result < 0 {
            self.reports.drain_queue |= -result != libc::EINVAL;
        }
    }

    /// Settles the sends refused in this batch, now that the error queue has been read
    /// (`read_error_reports` ran first): each is sent again, one by one, answered, or sent in
    /// outer fragments (`send::after_refusal`); then it stops counting in its slot's
    /// `sends_pending`, and the slot's buffers go back once nothing of it is left in flight or
    /// waiting here.
    pub(super) fn settle_refusals(&mut self, now_ns: u64) {
        if self.refused.is_empty() {
            return;
        }
        let mut refused = std::mem::take(&mut self.refused);
        for r in refused.drain(..) {
            let slot = &mut self.memory.tun_slots[usize::from(r.bid)];
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
                AfterRefusal::TooBig => self.too_big_on_send(r.bid, r.first, r.segments, now_ns),
                AfterRefusal::Drop(reason) => {
                    self.stats.counters.drop_n(reason, r.segments as u64)
                }
            }
            self.memory.tun_slots[usize::from(r.bid)].sends_pending -= 1;
            self.release_if_done(r.bid);
        }
        self.refused = refused;
    }

    /// A packet just read is longer than the inner MTU (a super-packet: its segments are, per
    /// `plan`). Answers its sender, or sends it for the outer IP layer to fragment. Returns
    /// whether sends of its buffer were queued; if not, the caller returns the buffer.
    pub(super) fn too_big_on_read(
        &mut self,
        bid: u16,
        packet_len: usize,
        plan: Option<Split>,
        now_ns: u64,
    ) -> bool {
        let (segment_len, count) = plan
            .as_ref()
            .map_or((packet_len, 1), |p| (p.segment_len(0), p.count));
        // SAFETY: the worker owns `bid` (just read), and no request names it.
        let buffer = unsafe { self.memory.tun_buffers.buffer_mut(bid) };
        let packet = &buffer[vnet::LEN..vnet::LEN + packet_len];
        match icmp::too_big_action(packet, segment_len, self.path.inner_mtu) {
            TooBig::Reply { mtu } => {
                self.stats.counters.drop_n(DropReason::TooBig, count as u64);
                queue_reply(
                    &mut self.memory.replies,
                    &mut self.requests,
                    packet,
                    mtu,
                    now_ns,
                    self.epoch + std::time::Duration::from_nanos(now_ns),
                );
                false
            }
            TooBig::Fragment if self.fragmenting.is_none() => {
                self.stats.counters.drop_n(DropReason::TooBig, count as u64);
                false
            }
            TooBig::Fragment => {
                match plan {
                    Some(plan) => self.lay_out_split(bid, &plan),
                    None => {
                        let packet_ptr = self
                            .memory
                            .tun_buffers
                            .buffer_ptr(bid)
                            .wrapping_add(vnet::LEN);
                        self.lay_out_one(bid, packet_ptr, packet_len);
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
    fn too_big_on_send(&mut self, bid: u16, first: usize, segments: usize, now_ns: u64) {
        let inner_mtu = self.path.inner_mtu;
        let slot = &mut self.memory.tun_slots[usize::from(bid)];
        let per = usize::from(slot.iovs_per_segment);
        // The first segment, header and payload together, to judge and to quote: the datagrams
        // of one send are of one flow, so what may be done with one may be done with all.
        let quote = &mut self.memory.reply_quote;
        let mut quoted = 0;
        for iov in &slot.iovs[first * per..(first + 1) * per] {
            let n = iov.iov_len.min(quote.len() - quoted);
            // SAFETY: the iovec points at this slot's header area or into a TUN buffer of this
            // slot's sends, which stay the worker's until the slot's last send completes and is
            // settled (this one has completed; the buffers go back only at `sends_pending == 0`,
            // after this).
            let bytes = unsafe { std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), n) };
            quote[quoted..quoted + n].copy_from_slice(bytes);
            quoted += n;
        }
        let action = icmp::too_big_action(&quote[..quoted], slot.segment_len(first), inner_mtu);
        let too_big = (first..first + segments)
            .filter(|s| slot.segment_len(*s) > inner_mtu)
            .count() as u64;
        if let TooBig::Reply { mtu } = action {
            self.stats.counters.drop_n(DropReason::TooBig, too_big);
            if !std::mem::replace(&mut slot.too_big_answered, true) {
                queue_reply(
                    &mut self.memory.replies,
                    &mut self.requests,
                    &quote[..quoted],
                    mtu,
                    now_ns,
                    self.epoch + std::time::Duration::from_nanos(now_ns),
                );
            }
        }
        for s in first..first + segments {
            if self.memory.tun_slots[usize::from(bid)].segment_len(s) <= inner_mtu {
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
        if self.fragmenting.is_none() {
            self.stats
                .counters
                .drop_n(DropReason::TooBig, segments as u64);
            return;
        }
        self.send_one_by_one(bid, first, segments, Route::Fragmenting);
    }

    /// A TUN write of one of this worker's ICMP errors completed.
    pub(super) fn on_reply_written(&mut self, k: usize, result: i32) {
        if let Some(busy) = self.memory.replies.busy.get_mut(k) {
            *busy = false;
        }
        if result >= 0 {
            self.stats.path.too_big_replies += 1;
        }
    }
}

/// Builds the ICMP error telling `packet`'s sender that the path takes `mtu` bytes, into a free
/// reply buffer, and queues its write into the TUN; nothing when the rate is spent or every
/// reply buffer is in flight (the packet is dropped all the same, counted as `too_big`). The
/// rules were checked before (`icmp::too_big_action` says `Reply` only when an answer may be
/// sent), so `too_big_reply` refuses nothing here.
fn queue_reply(
    replies: &mut TooBigReplies,
    requests: &mut Requests,
    packet: &[u8],
    mtu: usize,
    now_ns: u64,
    now: std::time::Instant,
) {
    let Some(k) = replies.busy.iter().position(|busy| !busy) else {
        return;
    };
    let Some(source) = icmp::reply_destination(packet) else {
        return;
    };
    let buffer = &mut replies.buffers[k];
    let Some(len) = icmp::too_big_reply(packet, mtu, &mut buffer[vnet::LEN..]) else {
        return;
    };
    // The sender's own budget first: a flooding sender then never reaches the shared one.
    if !replies.per_source.allow(source, now_ns) || !replies.relay_wide.allow(now) {
        return;
    }
    buffer[..vnet::LEN].copy_from_slice(&PLAIN_HEADER);
    replies.busy[k] = true;
    replies.iovs[k].iov_len = vnet::LEN + len;
    debug_assert!(k < REPLY_BUFFERS);
    requests.queue(Request::Write {
        token: Token::new(Op::TunWrite, WriteIndex::Reply { k: k as u16 }.pack()),
        iovs: &replies.iovs[k],
        count: 1,
    });
}
