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
//! * **The TUN's ring.** A read carries no time, and the ring counts no bytes. So at the end of
//!   each batch that read from it the relay asks whether packets are still waiting there
//!   ([`Request::ProbeTunBacklog`], a `poll` with no timeout); while every look finds the ring
//!   holding packets, it has stood since the first of those looks, and a packet read now is
//!   counted as having waited that long. That is what CoDel asks about a queue: whether it went
//!   empty within the last `target`, not how long each packet took. A packet read after a look
//!   that found the ring empty counts as not having waited (it came in after that look, and the
//!   worker was woken for it).
//!
//! A super-packet is judged as one packet and timed as its segments. Marked, every segment
//! carries CE (they copy its header). Dropped, it loses its last segment only, as a router that
//! dropped one packet of the burst would; its whole self if its last segment carries FIN, which
//! no other segment may take over.

use super::aqm::{self, Admitted, Gate, Mode, Settings, Verdict};
use super::tun::FromTun;
use super::{Relay, Request};
use crate::stats::{Direction, DropReason};
use crate::wire::transport::{PROTO_TCP, field, tcp_flags};
use crate::wire::vnet;

/// What a relay knows about its queues.
#[derive(Debug, Clone)]
pub(super) struct Queues {
    settings: Settings,
    tun: aqm::Queue,
    udp: aqm::Queue,
    /// The first of an unbroken run of looks that found the TUN's ring holding packets; `None`
    /// when the last look found it empty.
    tun_backlog_since_ns: Option<u64>,
    /// Whether this batch read from the TUN (and so the ring is worth a look at its end).
    tun_read_in_batch: bool,
    /// `CLOCK_REALTIME` minus the relay's clock, as last reported; `None` until then.
    wall_offset_ns: Option<i64>,
}

impl Queues {
    pub(super) fn new(settings: Settings) -> Queues {
        Queues {
            settings,
            tun: aqm::Queue::default(),
            udp: aqm::Queue::default(),
            tun_backlog_since_ns: None,
            tun_read_in_batch: false,
            wall_offset_ns: None,
        }
    }

    /// How long a packet the TUN hands over at `now_ns` has waited (see the module doc).
    fn tun_wait_ns(&self, now_ns: u64) -> u64 {
        self.tun_backlog_since_ns
            .map_or(0, |since| now_ns.saturating_sub(since))
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

    /// The answer to `Request::ProbeTunBacklog`: whether packets wait in the TUN's ring at
    /// `now_ns`.
    pub fn on_tun_backlog(&mut self, waiting: bool, now_ns: u64) {
        let queues = &mut self.queues;
        queues.tun_backlog_since_ns = if waiting {
            Some(queues.tun_backlog_since_ns.unwrap_or(now_ns))
        } else {
            None
        };
    }

    /// At the end of a batch: asks for a look at the TUN's ring if the batch read from it or the
    /// ring held packets at the last look.
    pub(super) fn probe_tun_backlog(&mut self) {
        let queues = &mut self.queues;
        if queues.settings.timed()
            && (std::mem::take(&mut queues.tun_read_in_batch)
                || queues.tun_backlog_since_ns.is_some())
        {
            self.requests.push_back(Request::ProbeTunBacklog);
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
        queues.tun_read_in_batch = true;
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
