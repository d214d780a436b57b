//! The queues in front of a worker, timed and kept short: how long packets waited in the TUN's
//! ring and in the UDP socket's receive buffer before the worker took them, and the AQM
//! (`aqm`, CoDel) that signals their senders when that wait stands. PURE: the shell reports the
//! clocks and what it saw; this decides.
//!
//! The two kernel queues are timed differently, by what each lets a reader see:
//! * **The UDP socket.** With `SO_TIMESTAMPNS` every receive carries the time the kernel took the
//!   datagram in (`CLOCK_REALTIME`, socket(7); under `UDP_GRO` the first datagram's). Its wait is
//!   the wall clock when the relay takes the buffer less that time. The shell reports the wall
//!   clock beside the relay's own (monotonic) one once per turn ([`Relay::on_wall_clock`]), so
//!   the relay converts with one subtraction and no system call.
//! * **The TUN's ring.** A read carries no time and the ring counts nothing a reader can see
//!   (`tun_chr_ioctl` in drivers/net/tun.c has no `FIONREAD`), so no packet's own wait is
//!   visible. What is visible is when the ring was empty: every engine reads the ring until a
//!   read finds nothing (the `poll` and `uring-compat` engines until `EAGAIN`; the `uring`
//!   engine's multishot read, inside `io_uring_enter`, until its retry finds nothing and it
//!   waits on the file's poll queue again) unless it runs out of free buffers or of its read
//!   budget first. The engine says which after each of these drains ([`Relay::on_tun_drained`]).
//!   A packet in the ring at time `t` came in after the last moment the ring was empty, so
//!   `t` less that moment bounds its wait from above. That is the wait the relay counts while the
//!   drains leave packets behind. After a drain that emptied the ring, the packets the next
//!   batch reads came in while the relay served the last one: they wait a batch, not behind a
//!   queue, and the last of them waited about nothing. They count as 0. CoDel asks whether the
//!   queue went empty within an interval (RFC 8289 section 2: a "good queue" drains within a
//!   round trip, a standing one does not), and that is what a drain answers.
//!   The wait so counted is read at the batch after the drain that told it (as PIE computes its
//!   queue delay every update interval and applies it to the packets in between, RFC 8033
//!   section 4.2): the engines report a drain after handing its packets over.
//!   While drains never empty the ring, the bound grows with the time since it last did, and
//!   for a queue that stands at a constant length for longer than it takes to drain it, it is
//!   above the packets' real wait (their wait is the backlog over the departure rate, RFC 8033
//!   section 4.3, and the backlog is not visible). It errs toward signalling a queue that does
//!   not empty, which is what CoDel is for.
//!
//! A super-packet is judged as one packet and timed as its segments. Marked, every segment
//! carries CE (they copy its header). Dropped, it loses its last segment only, as a router that
//! dropped one packet of the burst would; its whole self if its last segment carries FIN, which
//! no other segment may take over.

use super::Relay;
use super::aqm::{self, Admitted, Gate, Mode, Settings, Verdict};
use super::tun::FromTun;
use crate::stats::{Direction, DropReason};
use crate::wire::transport::{PROTO_TCP, field, tcp_flags};
use crate::wire::vnet;

/// What a relay knows about its queues.
#[derive(Debug, Clone)]
pub(super) struct Queues {
    settings: Settings,
    tun: aqm::Queue,
    udp: aqm::Queue,
    /// The last time a drain of the TUN's ring found it empty.
    tun_emptied_at_ns: u64,
    /// Whether the last drain left packets in the ring (it ran out of buffers or budget first).
    tun_left_behind: bool,
    /// `CLOCK_REALTIME` minus the relay's clock, as last reported; `None` until then.
    wall_offset_ns: Option<i64>,
}

impl Queues {
    pub(super) fn new(settings: Settings) -> Queues {
        Queues {
            settings,
            tun: aqm::Queue::default(),
            udp: aqm::Queue::default(),
            tun_emptied_at_ns: 0,
            tun_left_behind: false,
            wall_offset_ns: None,
        }
    }

    /// How long a packet the TUN hands over at `now_ns` has waited (see the module doc): 0 after
    /// a drain that emptied the ring, else at most the time since one did.
    fn tun_wait_ns(&self, now_ns: u64) -> u64 {
        if self.tun_left_behind {
            now_ns.saturating_sub(self.tun_emptied_at_ns)
        } else {
            0
        }
    }

    /// How long a datagram the kernel took in at `received_at_ns` (wall clock) has waited, at
    /// the relay's `now_ns`; `None` without both clocks.
    fn socket_wait_ns(&self, received_at_ns: Option<u64>, now_ns: u64) -> Option<u64> {
        let wall_now = now_ns.checked_add_signed(self.wall_offset_ns?)?;
        Some(wall_now.saturating_sub(received_at_ns?))
    }
}

impl Relay {
    /// Whether the queues are timed (`--aqm` is not `off`): the shell then reports the wall clock
    /// and the socket carries receive timestamps.
    pub fn times_queues(&self) -> bool {
        self.queues.settings.timed()
    }

    /// The wall clock (`CLOCK_REALTIME`, ns since the Unix epoch) at the relay's `now_ns`: what
    /// the socket's receive timestamps are read against. The shell reports it once per turn, so
    /// a step of the wall clock skews the waits of one turn at most.
    pub fn on_wall_clock(&mut self, now_ns: u64, wall_ns: u64) {
        self.queues.wall_offset_ns = Some(wall_ns as i64 - now_ns as i64);
    }

    /// After the engine read the TUN's ring until it stopped, at `now_ns`: `emptied` if it
    /// stopped because a read found the ring empty, not for want of a free buffer or of read
    /// budget (see the module doc).
    pub fn on_tun_drained(&mut self, emptied: bool, now_ns: u64) {
        let queues = &mut self.queues;
        queues.tun_left_behind = !emptied;
        if emptied {
            queues.tun_emptied_at_ns = now_ns;
        }
    }

    /// Times a TUN read that `classify` judged `verdict`, and lets the AQM act on it: returns the
    /// verdict to carry out, which is `Dropped` (counted) for a packet the AQM dropped and a
    /// split one segment shorter for a super-packet that lost its last.
    /// `read_len` is what the read put in `buffer`, the virtio header included.
    pub(super) fn gate_tun_read(
        &mut self,
        buffer: &mut [u8],
        read_len: usize,
        verdict: FromTun,
        now_ns: u64,
    ) -> FromTun {
        let queues = &mut self.queues;
        if !queues.settings.timed() {
            return verdict;
        }
        let (len, segments) = match verdict {
            FromTun::Plain { len } => (len, 1),
            FromTun::Split(plan) => (read_len.min(buffer.len()) - vnet::LEN, plan.count),
            FromTun::Dropped | FromTun::TooBig { .. } => return verdict,
        };
        let wait = queues.tun_wait_ns(now_ns);
        self.stats
            .record_queue_delay_n(Direction::TunToUdp, wait, segments as u64);
        if queues.settings.mode != Mode::Codel {
            return verdict;
        }
        let bulk = segments > 1 || aqm::eligible(len);
        let packet = &mut buffer[vnet::LEN..vnet::LEN + len];
        let ect = aqm::is_ect(packet);
        if queues.tun.judge(queues.settings, now_ns, wait, ect, bulk) == Verdict::Pass {
            return verdict;
        }
        let counters = &mut self.stats.counters;
        match (aqm::signal(packet), verdict) {
            (aqm::Signalled::Marked, _) => {
                counters.aqm_marked_tun_ring += segments as u64;
                verdict
            }
            (aqm::Signalled::Drop, FromTun::Split(mut plan))
                if plan.count > 1 && !carries_fin(packet, &plan.transport) =>
            {
                counters.drop(DropReason::AqmTunRing);
                plan.count -= 1;
                FromTun::Split(plan)
            }
            (aqm::Signalled::Drop, _) => {
                counters.drop_n(DropReason::AqmTunRing, segments as u64);
                FromTun::Dropped
            }
        }
    }
}

/// Times a receive of `datagrams` datagrams that the kernel took in at `received_at_ns` (wall
/// clock), and returns the AQM's gate for its datagrams, if it acts. Over the relay's fields, not
/// the relay, so that the gate can be used while the receive's slot and the counters are.
pub(super) fn socket_gate<'a>(
    queues: &'a mut Queues,
    stats: &mut crate::stats::WorkerStats,
    received_at_ns: Option<u64>,
    datagrams: u64,
    now_ns: u64,
) -> Option<Gate<'a>> {
    if !queues.settings.timed() {
        return None;
    }
    let wait = queues.socket_wait_ns(received_at_ns, now_ns)?;
    stats.record_queue_delay_n(Direction::UdpToTun, wait, datagrams);
    (queues.settings.mode == Mode::Codel).then_some(Gate {
        queue: &mut queues.udp,
        settings: queues.settings,
        now_ns,
        sojourn_ns: wait,
    })
}

/// Whether a TCP super-packet's FIN is set (it travels on the last segment only).
fn carries_fin(packet: &[u8], transport: &crate::wire::transport::Transport) -> bool {
    transport.protocol == PROTO_TCP
        && packet
            .get(transport.ip_header_len + field::TCP_FLAGS)
            .is_some_and(|flags| flags & tcp_flags::FIN != 0)
}

/// Counts what a gate did to one received datagram; true if it is to be dropped.
pub(super) fn count_admitted(admitted: Admitted, stats: &mut crate::stats::WorkerStats) -> bool {
    match admitted {
        Admitted::Pass => false,
        Admitted::Marked => {
            stats.counters.aqm_marked_udp_socket += 1;
            false
        }
        Admitted::Drop => {
            stats.counters.drop(DropReason::AqmUdpSocket);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    //! The TUN ring's wait, by value: a fake ring that knows when each packet came in, drained
    //! by a fake engine as the real ones drain it, into a relay that only observes; what the
    //! relay recorded is held against what the packets really waited.
    use super::super::lifetime::{FakeBuffers, config};
    use super::super::{Relay, RelayConfig, Request};
    use super::aqm::{self, Mode};
    use crate::offload::test_packets::{Spec, build};
    use crate::wire::cmsg::QueuedErrors;
    use crate::wire::vnet;
    use std::collections::VecDeque;

    const US: u64 = 1_000;

    /// How the fake engine tells the relay what the ring was left as.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Report {
        /// As the engines do: after each drain, whether it stopped on an empty ring.
        Drain,
        /// As tunfwd did before: a look at the end of each batch, after the relay served it,
        /// whether packets wait (`poll` with no timeout), reported as a drain that left them.
        LookAtBatchEnd,
    }

    /// A TUN ring fed by `arrivals` (ns, in order), drained every `batch_ns` by at most
    /// `budget` reads, and reported as `report` says. Returns the relay, which observes, and the
    /// real waits of the packets it read.
    fn drive(arrivals: &[u64], batch_ns: u64, budget: usize, report: Report) -> (Relay, Vec<u64>) {
        let mut r = Relay::new(RelayConfig {
            aqm: aqm::Settings {
                mode: Mode::Observe,
                ..aqm::Settings::DEFAULT
            },
            ..config()
        });
        let mut b = FakeBuffers::new();
        let packet = build(&Spec {
            payload_len: 1000,
            ..Spec::default()
        });
        let mut ring = VecDeque::new();
        let mut next = arrivals.iter().copied().peekable();
        let mut waits = Vec::new();
        let end = arrivals.last().copied().unwrap_or(0) + 100 * batch_ns;
        let mut now = 0;
        while now < end {
            // Everything that came in up to now waits in the ring.
            while let Some(at) = next.next_if(|&at| at <= now) {
                ring.push_back(at);
            }
            // The drain: reads until the ring is empty, the budget is spent or no buffer is
            // free, all at the batch's clock (as the engines stamp a batch).
            let mut reads = 0;
            while reads < budget && !ring.is_empty() {
                let Some(bid) = r.pop_free_tun() else { break };
                let at = ring.pop_front().unwrap();
                waits.push(now - at);
                let buffer = &mut b.tun[usize::from(bid)];
                buffer[..vnet::LEN].fill(0);
                buffer[vnet::LEN..vnet::LEN + packet.len()].copy_from_slice(&packet);
                r.on_tun_read(bid, buffer, vnet::LEN + packet.len(), now);
                reads += 1;
            }
            if report == Report::Drain && reads > 0 {
                r.on_tun_drained(ring.is_empty(), now);
            }
            // The relay serves the batch for `batch_ns`; packets keep coming in meanwhile.
            let served = now + batch_ns;
            while let Some(at) = next.next_if(|&at| at <= served) {
                ring.push_back(at);
            }
            if report == Report::LookAtBatchEnd && reads > 0 {
                r.on_tun_drained(ring.is_empty(), served);
            }
            r.end_batch(served, &b);
            while let Some(request) = r.poll_request() {
                match request {
                    Request::Send { token, .. }
                    | Request::Write { token }
                    | Request::SendControl { token, .. } => r.complete(token, 1400, served, &b),
                    Request::DrainErrors { socket } => {
                        r.on_errors_drained(socket, QueuedErrors::default(), served, &b)
                    }
                    Request::ReadSocketDrops => r.on_socket_drops(Some(0)),
                    Request::ReadEgressMtu => r.on_egress_mtu(None, served),
                }
            }
            now = served;
        }
        assert!(ring.is_empty(), "the ring was read to its end");
        (r, waits)
    }

    /// Steady arrivals, `count` of them `gap_ns` apart from `from_ns`.
    fn steady(from_ns: u64, gap_ns: u64, count: u64) -> Vec<u64> {
        (0..count).map(|k| from_ns + k * gap_ns).collect()
    }

    /// 90,000 packets a second, drained at each batch of 100 µs: each packet waits up to a batch
    /// while the relay serves the last one, and the ring is empty after every drain. No queue
    /// stands, and the wait reads as none; a look at each batch's end would find the packets
    /// that came in during it, every time, and read a wait that grows for as long as the
    /// traffic lasts (the review's finding).
    #[test]
    fn a_ring_emptied_by_every_drain_reads_as_no_wait() {
        let arrivals = steady(0, 11 * US, 9_000);
        let (r, waits) = drive(&arrivals, 100 * US, 16, Report::Drain);
        let delay = &r.stats().queue_delay_tun_ns;
        assert_eq!(delay.len(), arrivals.len() as u64, "every packet timed");
        assert!(
            *waits.iter().max().unwrap() >= 80 * US,
            "the packets really waited up to a batch"
        );
        assert!(
            delay.max() <= 1,
            "but behind no queue: {} ns at most",
            delay.max()
        );

        let (old, _) = drive(&arrivals, 100 * US, 16, Report::LookAtBatchEnd);
        let old = &old.stats().queue_delay_tun_ns;
        assert!(
            old.value_at_quantile(0.5) > 10_000 * US,
            "a look at each batch's end reads a steady ring as standing: median {} ns",
            old.value_at_quantile(0.5)
        );
    }

    /// A backlog of N = 320 packets that came in at once behind steady traffic (10,000 a second),
    /// drained 16 packets per 100 µs batch, so at R = 160,000 a second: its last packet waits
    /// about N / R = 2 ms, and so does the wait the relay reads at most, within a batch; once
    /// the ring is empty again the wait reads as none.
    #[test]
    fn a_backlog_of_n_packets_drained_at_rate_r_reads_about_n_over_r() {
        let mut arrivals = steady(0, 100 * US, 200);
        let burst_at = 5_000 * US + 50 * US;
        arrivals.extend(std::iter::repeat_n(burst_at, 320));
        arrivals.sort_unstable();
        let (r, waits) = drive(&arrivals, 100 * US, 16, Report::Drain);
        let n_over_r = 320 * 1_000_000_000 / 160_000;
        let longest = *waits.iter().max().unwrap();
        assert!(
            longest.abs_diff(n_over_r) <= 150 * US,
            "the backlog's last packet waited about N / R: {longest} ns"
        );
        let delay = &r.stats().queue_delay_tun_ns;
        let read = delay.max();
        assert!(
            read.abs_diff(n_over_r) <= n_over_r / 10 + 100 * US,
            "the relay read about N / R = {n_over_r} ns at most: {read} ns"
        );
        // The backlog's packets are most of those that waited at all; the steady ones around
        // it did not.
        let timed_above = delay.count_between(50 * US, u64::MAX);
        assert!(
            (250..=340).contains(&timed_above),
            "{timed_above} packets read as waiting"
        );
        assert!(
            delay.value_at_quantile(0.25) <= 1,
            "{} ns",
            delay.value_at_quantile(0.25)
        );

        let (old, _) = drive(&arrivals, 100 * US, 16, Report::LookAtBatchEnd);
        let old = old.stats().queue_delay_tun_ns.max();
        assert!(
            old > 4 * n_over_r,
            "a look at each batch's end reads far more than the backlog: {old} ns"
        );
    }
}
