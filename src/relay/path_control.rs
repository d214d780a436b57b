//! The path to the peer: what the error queues report, the path MTU machine, the control
//! messages between relays, and the ICMP errors written into the TUN. PURE.

use super::entropy::{AdvertiserEvent, PeerAdvertisement};
use super::plpmtud::{Counts, Plpmtud, Probe};
use super::send;
use super::slots::{Base, CONTROL_SLOTS, OWN_CONTROL_SLOTS, Piece, REPLY_LEN};
use super::{Buffers, Relay, Request, Socket, Token, TuplePath, WriteIndex};
use crate::offload::icmp;
use crate::relay::receive::PLAIN_HEADER;
use crate::wire::cmsg::QueuedErrors;
use crate::wire::control::{self, Advertisement, Control};
use crate::wire::icmp::IcmpKind;
use crate::wire::vnet;

impl Relay {
    /// What reading `socket`'s error queue found (`Request::DrainErrors`). Counts the ICMP
    /// errors about the peer by kind (at least as many, on the worker's socket, as surfaced on
    /// receives). An ICMP message's path MTU is a hint, for the path MTU machine to confirm (it
    /// may come from anyone who knows the 4-tuple); the local stack's "message too long" names
    /// the egress device's own MTU, and is believed at once, here and by the machine. The answer
    /// for the worker's socket settles the refused sends, then sends the gathered batch.
    pub fn on_errors_drained(
        &mut self,
        socket: Socket,
        queued: QueuedErrors,
        now_ns: u64,
        buffers: &impl Buffers,
    ) {
        let mut icmp_errors = queued.icmp_count();
        if socket == Socket::Worker {
            // A receive surfaces the pending error whatever it is about: those set apart here
            // are not about the peer.
            let reports = std::mem::take(&mut self.reports);
            let surfaced = reports
                .surfaced_icmp_errors
                .saturating_sub(queued.elsewhere);
            icmp_errors = icmp_errors.max(surfaced);
        }
        self.stats.counters.icmp_errors += icmp_errors;
        self.stats.counters.icmp_elsewhere += queued.elsewhere;
        for kind in IcmpKind::ALL {
            *self.stats.path.icmp_mut(kind) += queued.icmp[kind as usize];
        }
        if let Some(mtu) = queued.icmp_path_mtu {
            match socket {
                // A hint about an extra tuple is confirmed by probing that tuple (its path may
                // differ under ECMP), by the machine of the worker that owns it.
                Socket::Extra(k) => self.source_ports.post_tuple_hint(usize::from(k), mtu),
                // The listen tuple's (the worker's and the fragmenting socket's).
                Socket::Worker | Socket::Fragmenting => self.shared_path.post_hint(mtu),
            }
        }
        if let Some(mtu) = queued.local_path_mtu {
            self.shared_path.post_local_limit(mtu);
            let mtu = (mtu as usize).max(self.path.family.smallest_path_mtu());
            if mtu < self.path.path_mtu {
                self.set_path_mtu(mtu);
            }
        }
        if socket == Socket::Worker && std::mem::take(&mut self.awaiting_errors) {
            // The fragmenting socket may hold the ICMP errors about the relay's 4-tuple too
            // (see `socket::fragmenting_socket`): read with every batch that read this one.
            if self.fragmenting {
                self.requests.push_back(Request::DrainErrors {
                    socket: Socket::Fragmenting,
                });
            }
            self.settle_refusals(now_ns, buffers);
            self.send_batch();
        }
    }

    /// The egress device's MTU toward the peer (`Request::ReadEgressMtu`), or `None` if it could
    /// not be read.
    pub fn on_egress_mtu(&mut self, mtu: Option<u32>, now_ns: u64) {
        if let (Some(machine), Some(mtu)) = (&mut self.plpmtud, mtu) {
            machine.on_egress_mtu(mtu as usize, now_ns);
        }
    }

    /// Runs the path MTU machine, on the relay that has it: hands it what every worker posted,
    /// sends the probe it asks for, and publishes its working size. Then, on every relay, takes
    /// a newly published working size. A few relaxed atomic loads when nothing happens.
    pub(super) fn run_path(&mut self, now_ns: u64) {
        self.run_entropy(now_ns);
        let mut counts = self.retired_tuple_counts;
        if let Some(machine) = &mut self.plpmtud {
            self.shared_path.run(machine, now_ns);
            let probe = machine.poll(now_ns, &mut self.nonces);
            self.shared_path.expect(machine);
            counts.add(&machine.counts());
            if let Some(probe) = probe {
                self.send_probe(probe, Socket::Worker);
            }
        }
        let mut probes = [None; 64];
        for (slot, tuple) in probes.iter_mut().zip(&mut self.tuple_paths) {
            if !self.entropy_in_use {
                // Paused while the ports are out of use (`run_entropy`).
                counts.add(&tuple.machine.counts());
                continue;
            }
            let index = usize::from(tuple.index);
            if tuple.quiet.until_ns.is_some() {
                if !tuple.quiet.pause_over(&tuple.machine, now_ns) {
                    counts.add(&tuple.machine.counts());
                    continue;
                }
                tuple.machine.resume(now_ns);
            }
            if let Some(hint) = self.source_ports.take_tuple_hint(index) {
                tuple.machine.on_hint(hint as usize, now_ns);
            }
            self.shared_path
                .feed_tuple_acks(index, &mut tuple.machine, now_ns);
            let probe = tuple.machine.poll(now_ns, &mut self.nonces);
            self.shared_path
                .expect_on_tuple(index, Some(&tuple.machine));
            counts.add(&tuple.machine.counts());
            // A tuple carries flows only while the peer acknowledges what is sent from it; one
            // that does not carries nothing, so its working size holds no flow down.
            let since = now_ns.saturating_sub(super::entropy::TUPLE_CONFIRMED_FOR_NS);
            let confirmed = tuple.machine.acked_since(since);
            if confirmed != self.source_ports.tuple_confirmed(index) {
                self.source_ports.set_tuple_confirmed(index, confirmed);
                if confirmed {
                    self.stats.path.entropy_tuples_confirmed += 1;
                } else {
                    self.stats.path.entropy_tuples_unconfirmed += 1;
                }
            }
            self.source_ports
                .publish_tuple_working(index, confirmed.then(|| tuple.machine.working()));
            *slot = probe.map(|probe| (probe, Socket::Extra(tuple.index)));
            if !confirmed && tuple.quiet.should_pause(&tuple.machine, now_ns) {
                // Unanswered for a dozen probes (already unconfirmed: they span more than
                // `TUPLE_CONFIRMED_FOR_NS`): quiet for a while, see `QuietTuple`.
                tuple.machine.pause();
                self.shared_path.expect_on_tuple(index, None);
                self.stats.path.entropy_tuples_quieted += 1;
            }
        }
        for (probe, socket) in probes.into_iter().flatten() {
            self.send_probe(probe, socket);
        }
        if self.plpmtud.is_some() || !self.tuple_paths.is_empty() || counts != Counts::default() {
            self.stats.path.take_probe_counts(&counts);
        }
        // Every flow works to the smallest path any tuple in use was shown to take.
        let mut published = self.shared_path.working();
        if self.entropy_in_use
            && let Some(tuples) = self.source_ports.smallest_tuple_working()
        {
            published = published.min(tuples);
        }
        if published != self.published_path_mtu {
            self.published_path_mtu = published;
            self.set_path_mtu(published);
        }
    }

    /// Outer flow entropy, once per batch: the advertiser's timers and messages (on the worker
    /// that has it), and whether this relay's extra ports are in use, which starts or retires the
    /// extra tuples' path MTU machines.
    fn run_entropy(&mut self, now_ns: u64) {
        if let Some(advertiser) = &mut self.advertiser {
            let nonces = &mut self.nonces;
            let (advertisement, event) = advertiser.poll(&self.source_ports, now_ns, nonces);
            self.stats.path.ports_advertised = advertiser.sent;
            self.stats.path.ports_acknowledged = advertiser.acked;
            self.stats.path.peer_restarts = advertiser.restarts;
            if let AdvertiserEvent::InUse(in_use) = event {
                eprintln!(
                    "tunfwd: {} extra source port(s) {} toward {}",
                    self.source_ports.own().len(),
                    if in_use {
                        "in use: the peer acknowledged them"
                    } else {
                        "out of use: the peer stopped acknowledging them"
                    },
                    self.peer
                );
            }
            if let Some(advertisement) = advertisement
                && !self.queue_advertisement(&advertisement)
                && let Some(advertiser) = &mut self.advertiser
            {
                advertiser.unsent(now_ns);
                self.stats.path.ports_advertised = advertiser.sent;
                self.stats.counters.control_unsent += 1;
            }
        }
        let in_use = self.extra_sockets > 0 && self.source_ports.in_use();
        if in_use == self.entropy_in_use {
            return;
        }
        self.entropy_in_use = in_use;
        // A tuple that goes out of use carries nothing (no working size, no confirmation) and
        // carries flows again only once the peer acknowledges a probe sent from it after it
        // came back (the peer may have restarted, and takes nothing from its port before such a
        // probe); its machine is kept, with what it knows of the path, and idles meanwhile.
        // After the peer moved (its cookie forgotten: `Advertiser::reset`) they are paths to
        // another host, and go: a tuple that comes into use then is a path not yet known, with
        // no hint taken from before (one posted while no machine ran would otherwise reach the
        // machine before its first probe). Counts carry over.
        let moved = self.source_ports.peer_cookie() == 0;
        for tuple in &mut self.tuple_paths {
            let index = usize::from(tuple.index);
            self.source_ports.publish_tuple_working(index, None);
            self.source_ports.set_tuple_confirmed(index, false);
            if in_use {
                tuple.machine.resume(now_ns);
            } else {
                tuple.machine.pause();
            }
            tuple.quiet = super::QuietTuple::new(&tuple.machine);
        }
        if !in_use && moved {
            for tuple in self.tuple_paths.drain(..) {
                self.retired_tuple_counts.add(&tuple.machine.counts());
                let index = usize::from(tuple.index);
                self.source_ports.take_tuple_hint(index);
                self.shared_path.expect_on_tuple(index, None);
            }
        }
        if !in_use || !self.tuple_paths.is_empty() {
            return;
        }
        if let Some(limits) = self.tuple_limits {
            let (queue, workers) = (self.queue, self.workers);
            self.tuple_paths = (0..self.extra_sockets)
                .filter(|k| usize::from(*k) % workers == queue % workers)
                .map(|index| {
                    self.source_ports.take_tuple_hint(usize::from(index));
                    let machine = Plpmtud::for_tuple(limits, super::entropy::REFRESH_INTERVAL_NS);
                    TuplePath {
                        index,
                        quiet: super::QuietTuple::new(&machine),
                        machine,
                    }
                })
                .collect();
        }
    }

    /// Works to `path_mtu` from now on. Returns whether it changed.
    fn set_path_mtu(&mut self, path_mtu: usize) -> bool {
        let changed = self.path.set(path_mtu);
        if changed {
            eprintln!(
                "tunfwd: queue {}: path MTU to {} is {path_mtu}; inner packets up to {} bytes",
                self.queue,
                self.peer.ip(),
                self.path.inner_mtu
            );
        }
        self.stats.path.path_mtu = path_mtu as u64;
        changed
    }

    /// Sends a path MTU probe of `probe.size` bytes (outer headers included) to the peer from
    /// `socket`'s tuple, if a control slot is free (a probe that cannot go is a probe lost: the
    /// machine tries again).
    fn send_probe(&mut self, probe: Probe, socket: Socket) {
        // From an extra tuple, the probe echoes the peer's cookie: that proves the tuple's port
        // to the peer, which takes nothing else from it before (`entropy`).
        let cookie = match socket {
            Socket::Extra(_) => self.source_ports.peer_cookie(),
            Socket::Worker | Socket::Fragmenting => 0,
        };
        let message = Control {
            kind: control::Kind::Probe,
            nonce: probe.nonce,
            size: u16::try_from(probe.size).unwrap_or(u16::MAX),
            cookie,
            taken: false,
        };
        let payload_len = probe.size.saturating_sub(self.path.family.overhead());
        if !self.queue_control(message, payload_len, socket, Slots::Own) {
            self.stats.counters.control_unsent += 1;
        }
    }

    /// Acts on the control messages a receive into `bid` brought, which came from the peer's
    /// listen port if `from_listen` (else from a port it advertised): answers every probe and
    /// every advertisement (they passed the exact source check; an answer goes only to the peer
    /// and is no larger than what it answers, so there is nothing to amplify, and a budget of
    /// answers would be one that forged probes could spend, making the peer's real probes look
    /// lost), posts acknowledgements for the path MTU machines and the advertiser, wherever they
    /// run, and takes the peer's advertisement of its ports, but only from its listen port. A
    /// probe from `extra_port` (another port of the peer's address) that echoes this relay's
    /// cookie proves that port the peer's ([`super::entropy::SourcePorts::hear_probe`]).
    pub(super) fn on_control_messages(
        &mut self,
        bid: u16,
        from_listen: bool,
        extra_port: Option<u16>,
    ) {
        let slot = &mut self.udp_slots[usize::from(bid)];
        let count = slot.plan.controls.len();
        let advertisements = std::mem::take(&mut slot.plan.advertisements);
        for i in 0..count {
            let message = self.udp_slots[usize::from(bid)].plan.controls[i];
            match message.kind {
                control::Kind::Probe => {
                    if let Some(port) = extra_port
                        && self.source_ports.proves(message.cookie)
                    {
                        self.source_ports.hear_probe(port);
                    }
                    if self.queue_control(message.ack(), 0, Socket::Worker, Slots::Answers) {
                        self.stats.path.pmtu_probes_answered += 1;
                    } else {
                        self.stats.counters.control_unanswered += 1;
                    }
                }
                control::Kind::Ack => {
                    if !self.shared_path.post_ack(message.nonce) {
                        self.stats.counters.control_unexpected += 1;
                    }
                }
                // Below, once every other message is handled.
                control::Kind::Ports => {}
                control::Kind::PortsAck => {
                    if !self
                        .source_ports
                        .post_ack(message.nonce, message.cookie, message.taken)
                    {
                        self.stats.counters.control_unexpected += 1;
                    }
                }
            }
        }
        // The advertisements, each paired with its message (they are in the same order): the
        // ones that echo this relay's cookie first, so that none forged without it, coalesced
        // ahead in the same receive, takes the place or the control slot of the peer's own.
        for proven in [true, false] {
            let mut next = 0;
            for i in 0..count {
                let message = self.udp_slots[usize::from(bid)].plan.controls[i];
                if message.kind != control::Kind::Ports {
                    continue;
                }
                let advertisement = &advertisements[next];
                next += 1;
                if self.source_ports.proves(advertisement.echo) == proven {
                    self.take_advertisement(message, advertisement, from_listen);
                }
            }
        }
        // Given back, for its capacity.
        let slot = &mut self.udp_slots[usize::from(bid)];
        slot.plan.advertisements = advertisements;
        slot.plan.advertisements.clear();
    }

    /// Takes the peer's `advertisement` (its `message`), but only from its listen port, and
    /// acknowledges it.
    fn take_advertisement(
        &mut self,
        message: Control,
        advertisement: &Advertisement,
        from_listen: bool,
    ) {
        if !from_listen {
            self.stats
                .counters
                .drop(crate::stats::DropReason::ForeignSource);
            return;
        }
        if self.source_ports.own().is_empty() {
            // `--entropy off`: no advertiser runs here to expire the peer's ports (or forget
            // them when the peer moves), so taking them would keep them open for good.
            // Unacknowledged, the peer keeps to its listen tuple.
            self.stats.path.peer_ports_ignored += 1;
            return;
        }
        let taken = match self.source_ports.accept_peer(advertisement) {
            PeerAdvertisement::Proven { restarted } => {
                if restarted {
                    // The ended run's cookie goes now: the answer hands the one in use.
                    self.source_ports.replace_cookie_if_due(&mut self.nonces);
                }
                self.stats.path.peer_ports_accepted += 1;
                true
            }
            PeerAdvertisement::Unproven => {
                self.stats.path.peer_ports_unproven += 1;
                false
            }
        };
        // Acknowledged either way, with this relay's cookie, which the peer's next
        // advertisement echoes. Unanswered (and counted) when every control buffer for answers
        // is in flight: the peer advertises again within a second.
        let ack = message.ports_ack(self.source_ports.cookie(), taken);
        if !self.queue_control(ack, 0, Socket::Worker, Slots::Answers) {
            self.stats.counters.control_unanswered += 1;
        }
    }

    /// Writes `message` (a probe padded to `payload_len` bytes, or an acknowledgement) into a
    /// free control slot of `slots` and queues its send on `socket`. False if every one of them
    /// is in flight, or the slot is too short for the probe.
    fn queue_control(
        &mut self,
        message: Control,
        payload_len: usize,
        socket: Socket,
        slots: Slots,
    ) -> bool {
        let Some(k) = self.free_control(slots) else {
            return false;
        };
        let Some(len) = message.write(self.controls.buffer_mut(k), payload_len) else {
            return false;
        };
        self.occupy_control(k, len, socket);
        true
    }

    /// A free control slot of `slots`.
    fn free_control(&self, slots: Slots) -> Option<usize> {
        let range = match slots {
            Slots::Own => 0..OWN_CONTROL_SLOTS,
            Slots::Answers => OWN_CONTROL_SLOTS..CONTROL_SLOTS,
        };
        range.into_iter().find(|k| !self.controls.busy[*k])
    }

    /// Writes this relay's advertisement into a free control slot of its own and queues its
    /// send from the listen tuple (the peer takes advertisements from there alone). False if
    /// it could not: the advertiser then sends it again soon.
    fn queue_advertisement(&mut self, advertisement: &Advertisement) -> bool {
        let Some(k) = self.free_control(Slots::Own) else {
            return false;
        };
        let Some(len) = advertisement.write(self.controls.buffer_mut(k)) else {
            return false;
        };
        self.occupy_control(k, len, Socket::Worker);
        true
    }

    fn occupy_control(&mut self, k: usize, len: usize, socket: Socket) {
        self.controls.busy[k] = true;
        self.controls.message_len[k] = len as u32;
        self.controls.resends[k] = 0;
        self.controls.socket[k] = socket;
        self.send_control(k);
    }

    /// Queues the send of busy control slot `k`'s message.
    fn send_control(&mut self, k: usize) {
        debug_assert!(k < CONTROL_SLOTS && self.controls.busy[k]);
        self.queue_io(Request::SendControl {
            token: Token::new(super::Op::ControlSend, k as u32),
            k: k as u16,
            len: self.controls.message_len[k],
            socket: self.controls.socket[k],
        });
    }

    /// The piece a `Request::SendControl` sends.
    pub fn control_piece(&self, k: u16, len: u32) -> Piece {
        Piece::new(
            Base::Control,
            usize::from(k) * self.controls.len,
            len as usize,
        )
    }

    /// A control message's send completed. A refusal that may be the socket's pending error
    /// (`send::is_peer_unreachable`, or EMSGSIZE: with `IP_RECVERR` any ICMP error about an
    /// earlier datagram, a forged fragmentation-needed too, fails the next send, whatever its
    /// size, and that send clears it) is sent again, up to `RESENDS_PER_SLOT` times: a probe
    /// lost that way would count against the path and could confirm a forged hint. Other
    /// refusals are not judged: a probe over the egress device's MTU queued that MTU (read with
    /// the next batch) and fails again, and the machine counts it as lost; an acknowledgement
    /// lost is a probe the peer sends again.
    pub(super) fn on_control_sent(&mut self, k: usize, result: i32) {
        if k >= CONTROL_SLOTS || !self.controls.busy[k] {
            return;
        }
        if result < 0 {
            let errno = -result;
            self.reports.drain_queue |= errno != libc::EINVAL;
            if let Socket::Extra(socket) = self.controls.socket[k] {
                self.reports.drain_extra |= 1 << socket;
            }
            let maybe_pending = send::is_peer_unreachable(errno) || errno == libc::EMSGSIZE;
            if maybe_pending && self.controls.resends[k] < send::RESENDS_PER_SLOT {
                self.controls.resends[k] += 1;
                self.stats.counters.send_retries += 1;
                self.send_control(k);
                return;
            }
        }
        self.controls.busy[k] = false;
    }

    /// Builds the ICMP error telling `packet`'s sender that the path takes `mtu` bytes, into a
    /// free reply buffer, and queues its write into the TUN; nothing when the sender's or the
    /// relay's budget is spent or every reply buffer is in flight (the packet is dropped all the
    /// same, counted as `too_big`). The rules were checked before (`icmp::too_big_action` says
    /// `Reply` only when an answer may be sent), so `too_big_reply` refuses nothing here.
    pub(super) fn queue_reply(&mut self, packet: &[u8], mtu: usize, now_ns: u64) {
        let replies = &mut self.replies;
        let Some(k) = replies.busy.iter().position(|busy| !busy) else {
            return;
        };
        let Some(source) = icmp::reply_destination(packet) else {
            return;
        };
        let at = k * REPLY_LEN;
        let error = &mut replies.buffers[at + vnet::LEN..at + REPLY_LEN];
        let Some(len) = icmp::too_big_reply(packet, mtu, error) else {
            return;
        };
        // The sender's own budget first: a flooding sender then never reaches the shared one.
        let now = self.epoch + std::time::Duration::from_nanos(now_ns);
        if !replies.per_source.allow(source, now_ns) || !replies.relay_wide.allow(now) {
            return;
        }
        replies.buffers[at..at + vnet::LEN].copy_from_slice(&PLAIN_HEADER);
        replies.busy[k] = true;
        replies.pieces[k] = Piece::new(Base::Reply, k * REPLY_LEN, vnet::LEN + len);
        self.queue_io(Request::Write {
            token: Token::new(
                super::Op::TunWrite,
                WriteIndex::Reply { k: k as u16 }.pack(),
            ),
        });
    }

    /// A TUN write of one of this relay's ICMP errors completed.
    pub(super) fn on_reply_written(&mut self, k: usize, result: i32) {
        if let Some(busy) = self.replies.busy.get_mut(k) {
            *busy = false;
        }
        if result >= 0 {
            self.stats.path.too_big_replies += 1;
        }
    }
}

/// Which control slots a message may take ([`OWN_CONTROL_SLOTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slots {
    /// This relay's own probes and advertisement.
    Own,
    /// Answers to the peer's probes and advertisements.
    Answers,
}
