//! The path to the peer: error reports, path MTU, and packets too big for it.

use super::slots::{REPLY_BUFFERS, TooBigReplies};
use super::{MAX_GSO_SENDS, Request, Requests, Worker, WriteIndex};
use crate::offload::icmp::{self, TooBig};
use crate::offload::split::Split;
use crate::relay::receive::PLAIN_HEADER;
use crate::relay::send::{self, AfterRefusal, RESENDS_PER_SLOT, Route};
use crate::ring::{Op, Token};
use crate::stats::DropReason;
use crate::sys::socket::{self, QueuedErrors};
use crate::wire::vnet;
use std::os::fd::AsRawFd;

impl Worker {
    /// Acts, once per batch, on what its completions reported: drains the error queue, counting
    /// the ICMP errors about the peer in it (at least as many as surfaced on receives), and, if a
    /// send was refused as too big or the queue reported an MTU, rereads the kernel's path MTU
    /// and works to it (to the queue's report if the kernel cannot be asked). The kernel has
    /// applied a local EMSGSIZE or a router's ICMP error to its route to the peer before telling
    /// us, so its view is the one to take.
    pub(super) fn read_error_reports(&mut self) {
        let reports = std::mem::take(&mut self.reports);
        let queued = if reports.drain_queue {
            socket::drain_error_queue(self.socket.as_raw_fd())
        } else {
            QueuedErrors::default()
        };
        self.stats.counters.icmp_errors += queued.from_icmp.max(reports.surfaced_icmp_errors);
        if !reports.reread_path_mtu && queued.path_mtu.is_none() {
            return;
        }
        let known = self
            .path_probe
            .as_ref()
            .and_then(|probe| socket::path_mtu(probe, self.peer).ok());
        if let Some(mtu) = known.or(queued.path_mtu)
            && self.set_path_mtu(mtu as usize)
        {
            self.stats.path.path_mtu_learned_from_errors += 1;
        }
    }

    /// Rereads the kernel's path MTU to the peer (every `PATH_MTU_RECHECK`): it grows again when
    /// a learned one expires (net.ipv4.route.mtu_expires) or the link's MTU is raised.
    pub(super) fn recheck_path_mtu(&mut self) {
        if let Some(probe) = &self.path_probe
            && let Ok(mtu) = socket::path_mtu(probe, self.peer)
        {
            self.set_path_mtu(mtu as usize);
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

    /// Settles the sends refused as too big in this batch, now that the path MTU has been looked
    /// at (`read_error_reports` ran first): each is sent again, without GSO, answered, or sent in
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
            let length = slot.segment_len(r.first);
            let gso = r.msg < MAX_GSO_SENDS && r.segments > 1;
            let resends_left = slot.resends < RESENDS_PER_SLOT;
            match send::after_refusal(r.errno, gso, length, self.path.inner_mtu, resends_left) {
                AfterRefusal::Resend => {
                    slot.resends += 1;
                    let size = gso.then_some(length as u16);
                    self.submit_send(r.bid, r.msg, r.first, r.segments, size, Route::Direct);
                }
                AfterRefusal::WithoutGso => {
                    self.send_without_gso(r.bid, r.first, r.segments, r.errno)
                }
                AfterRefusal::TooBig => self.too_big_on_send(r.bid, r.first, r.segments, now_ns),
                AfterRefusal::Drop => self
                    .stats
                    .counters
                    .drop_n(DropReason::UdpSendError, r.segments as u64),
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

    /// A send of `segments` segments from `first` of `bid`'s slot was refused, and they are
    /// longer than the inner MTU now known: does with them what a read of them now would.
    fn too_big_on_send(&mut self, bid: u16, first: usize, segments: usize, now_ns: u64) {
        let slot = &mut self.memory.tun_slots[usize::from(bid)];
        let per = usize::from(slot.iovs_per_segment);
        // The first segment, header and payload together, to judge and to quote.
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
        let length = slot.segment_len(first);
        match icmp::too_big_action(&quote[..quoted], length, self.path.inner_mtu) {
            TooBig::Reply { mtu } => {
                self.stats
                    .counters
                    .drop_n(DropReason::TooBig, segments as u64);
                if !std::mem::replace(&mut slot.too_big_answered, true) {
                    queue_reply(
                        &mut self.memory.replies,
                        &mut self.requests,
                        &quote[..quoted],
                        mtu,
                        now_ns,
                    );
                }
            }
            TooBig::Fragment => self.send_fragmenting(bid, first, segments),
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
) {
    let Some(k) = replies.busy.iter().position(|busy| !busy) else {
        return;
    };
    let buffer = &mut replies.buffers[k];
    let Some(len) = icmp::too_big_reply(packet, mtu, &mut buffer[vnet::LEN..]) else {
        return;
    };
    if !replies.bucket.allow(now_ns) {
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
