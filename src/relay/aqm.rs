//! Active queue management: CoDel (RFC 8289) over the waits tunfwd can time, signalling with ECN
//! (RFC 3168) before it drops. PURE: no clock of its own (the caller passes the time), no I/O.
//!
//! A relay under load keeps a standing queue in front of itself: in the TUN's ring (its sender's
//! TCP stops counting a packet once the TUN has it, since `tun_net_xmit` orphans the skb) and in
//! its UDP socket's receive buffer. Neither kernel queue has a qdisc that manages it, so tunfwd
//! does what a CoDel qdisc would do at the point where it takes packets out of them. CoDel looks
//! at how long packets waited (their sojourn), not how many wait: when every packet of the last
//! `interval` waited longer than `target`, the queue is standing, not absorbing a burst, and
//! [`Codel::judge`] signals one packet; while it keeps standing, the signals come closer together
//! (`interval / sqrt(count)`) until the senders slow down enough to drain it.
//!
//! A signal becomes a Congestion Experienced mark on an ECN-capable inner packet (ECT(0) or
//! ECT(1); the IPv4 header checksum is updated), which RFC 3168 section 5 lets any forwarding
//! node set instead of dropping, and a drop of a Not-ECT one, whose sender has no other way to
//! hear of it ([`signal`]). That is the table RFC 6040 applies when it decapsulates an outer CE,
//! and the same function does it (`offload::ecn::decapsulate`), so a packet tunfwd marks is the
//! packet a congested router between the relays would have made of it. A packet already CE is
//! left as it is and counts as marked, as Linux's `INET_ECN_set_ce` counts it.
//!
//! Two departures from the qdisc, both because tunfwd sees the queues from outside:
//! * CoDel does not drop while the queue holds less than one MTU (`codel_should_drop` in
//!   include/net/codel_impl.h), so that a slow link's single packet in service is not punished.
//!   tunfwd does not know the backlog of a kernel queue without a system call per packet; it
//!   relies on the sojourn alone, which on these links is microseconds per packet.
//! * Packets of at most [`SPARSE_LEN`] bytes (TCP's pure acknowledgements, pings, DNS queries, a
//!   game's or a call's small datagrams) are never signalled. They free next to nothing when
//!   dropped, acknowledgements are Not-ECT by RFC 3168 section 6.1.4 so they could only be
//!   dropped, and they are what an interactive flow sends. A signal that falls due on one waits
//!   for the next longer packet, which a bulk flow supplies at once. This is the part of
//!   fq_codel's per-flow fairness that needs no flow table: the flows that build the queue are
//!   the ones that hear of it.

use crate::offload::ecn::{self, Decapsulated, Ecn};

/// Packets this long or shorter are never marked or dropped (see the module documentation):
/// IPv6 + TCP with timestamps and no payload is 72 bytes, a ping 84 (IPv4) or 104 (IPv6).
pub const SPARSE_LEN: usize = 128;

/// CoDel's two parameters (RFC 8289 section 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// The sojourn a queue may keep standing.
    pub target_ns: u64,
    /// How long it must stand above `target_ns` before anything is signalled, and the base of
    /// the control law's spacing: about the round trip of the flows through it.
    pub interval_ns: u64,
}

impl Params {
    /// RFC 8289 section 4.2's values: a standing queue of 5 ms, judged over 100 ms, for round
    /// trips up to about that long on the Internet. A relay that is itself the bottleneck sees
    /// flows whose round trip is a fraction of a millisecond through it (0.2 ms idle in the
    /// bottleneck bench, bench-results/2026-12-04T162617Z-bufferbloat.md), and these would let
    /// its queue stand for milliseconds, many of those round trips, before signalling.
    pub const RFC_8289: Params = Params {
        target_ns: 5_000_000,
        interval_ns: 100_000_000,
    };

    /// Marks by default: 100 µs over 2 ms. A mark costs an ECN-capable flow no packet, and its
    /// sender slows down at most once a round trip whatever the marks (RFC 3168 section 6.1.2),
    /// so marking early is cheap for it; but a queue kept shorter than a relay's batch starves
    /// the relay of the batches that make it fast. In the bottleneck bench (one and four
    /// ECN-capable cubic streams) 100 µs / 2 ms cut the loaded ping from 2.2 and 15 ms (p50) to
    /// 0.8 and 1.1 ms at 1.08x and 1.02x the throughput; 50 µs / 1 ms to 0.37 and 0.58 ms but
    /// at 0.92x and 0.79x; 200 µs / 4 ms to 1.2 and 1.8 ms at 1.12x.
    pub const MARK: Params = Params {
        target_ns: 100_000,
        interval_ns: 2_000_000,
    };

    /// Drops by default: 250 µs over 5 ms. A drop costs its flow a retransmission, and a flow
    /// that does not slow down for drops (BBR paces at its bandwidth estimate and keeps about
    /// its own round trip of queue, some 0.3 ms here) is only made to retransmit: at 100 µs /
    /// 2 ms one BBR stream was dropped 750-1,400 times in 6 s and lost 10-25% of its rate; at
    /// 250 µs / 5 ms it kept its rate (1.02x, 1.01x for four streams), while one and four
    /// Not-ECT cubic streams' loaded ping fell from 2.2 and 13.7 ms (p50) to 1.4 and 2.3 ms at
    /// 1.09x and 1.10x the throughput.
    pub const DROP: Params = Params {
        target_ns: 250_000,
        interval_ns: 5_000_000,
    };
}

/// What the relay does about its queues (`--aqm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Neither time them nor act: no receive timestamps, no look at the TUN's ring.
    Off,
    /// Time them (the queue-delay histograms), signal nothing.
    Observe,
    /// Time them and signal with CoDel.
    Codel,
}

/// `--aqm`, `--aqm-target`, `--aqm-interval`, `--aqm-drop-target`, `--aqm-drop-interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    /// When ECN-capable packets are marked CE.
    pub mark: Params,
    /// When Not-ECT packets are dropped: no sooner than marks (RFC 3168 section 5 lets a node
    /// mark where it would drop; marking earlier costs an ECN-capable flow no packet).
    pub drop: Params,
    /// The TUN ring's capacity in packets (`--tx-queue-len`: `tun_queue_resize` in
    /// drivers/net/tun.c sizes every queue's ring to the device's `tx_queue_len`), which bounds
    /// a ring that stands full (`relay::queue`).
    pub tun_ring_packets: u32,
}

impl Settings {
    pub const DEFAULT: Settings = Settings {
        mode: Mode::Codel,
        mark: Params::MARK,
        drop: Params::DROP,
        tun_ring_packets: crate::cli::DEFAULT_TX_QUEUE_LEN,
    };

    pub const OFF: Settings = Settings {
        mode: Mode::Off,
        ..Settings::DEFAULT
    };

    /// Whether the queues are timed at all.
    pub fn timed(self) -> bool {
        self.mode != Mode::Off
    }
}

/// The startup log's words for `settings`: `aqm codel (marks: target 5ms, interval 100ms;
/// drops: target 5ms, interval 100ms)`.
pub fn describe(settings: Settings) -> String {
    let time = |ns: u64| match ns {
        ns if ns % 1_000_000_000 == 0 => format!("{}s", ns / 1_000_000_000),
        ns if ns % 1_000_000 == 0 => format!("{}ms", ns / 1_000_000),
        ns if ns % 1_000 == 0 => format!("{}us", ns / 1_000),
        ns => format!("{ns}ns"),
    };
    let params = |p: Params| {
        format!(
            "target {}, interval {}",
            time(p.target_ns),
            time(p.interval_ns)
        )
    };
    match settings.mode {
        Mode::Off => "aqm off".to_string(),
        Mode::Observe => "aqm observe (queues timed, nothing signalled)".to_string(),
        Mode::Codel => format!(
            "aqm codel (marks: {}; drops: {})",
            params(settings.mark),
            params(settings.drop)
        ),
    }
}

/// What [`Codel::judge`] says about one packet leaving the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Mark it CE, or drop it if it is not ECN-capable ([`signal`]).
    Signal,
}

/// One queue's CoDel state (RFC 8289 section 5, and Linux's include/net/codel_impl.h, whose
/// structure this follows: `codel_should_drop` and `codel_dequeue`). Times are the caller's ns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Codel {
    /// When the sojourn will have stood above target for an interval; `None` while it is below.
    first_above_ns: Option<u64>,
    /// When the next signal is due, in the signalling state.
    signal_next_ns: u64,
    /// Signals since the signalling state began (the control law's count), and its value when
    /// the last signalling state began.
    count: u32,
    last_count: u32,
    /// The signalling state: the queue stood above target for an interval, and has not yet
    /// gone below.
    signalling: bool,
    /// A signal fell due and no packet that may take it came for an interval: the packets in
    /// the queue are another CoDel's (a `Queue`'s other class) or sparse. The schedule is
    /// stale, and the standing queue is timed again from the next packet that may be signalled.
    dormant: bool,
}

impl Codel {
    /// Judges a packet that leaves the queue at `now_ns` after waiting `sojourn_ns`. `eligible`:
    /// whether it may be signalled at all (longer than [`SPARSE_LEN`]); one that may not still
    /// tells CoDel how long the queue made it wait, but a signal due now waits for the next
    /// eligible packet.
    pub fn judge(
        &mut self,
        params: Params,
        now_ns: u64,
        sojourn_ns: u64,
        eligible: bool,
    ) -> Verdict {
        let standing = self.standing(params, now_ns, sojourn_ns, eligible);
        if self.signalling {
            if !standing {
                self.signalling = false;
            } else if now_ns >= self.signal_next_ns {
                if eligible {
                    self.count = self.count.saturating_add(1);
                    self.signal_next_ns = control_law(self.signal_next_ns, params, self.count);
                    return Verdict::Signal;
                }
                if now_ns.saturating_sub(self.signal_next_ns) >= params.interval_ns {
                    // RFC 8289 section 5's schedule counts the packets this CoDel dequeues and
                    // may signal; none came for an interval, so the schedule is stale: the
                    // state ends, as if the queue had gone below target for this class, and
                    // its count is kept for the re-entry rule.
                    self.signalling = false;
                    self.go_dormant();
                }
            }
            return Verdict::Pass;
        }
        if !standing {
            return Verdict::Pass;
        }
        if !eligible {
            // Due since `first_above_ns`; stale once no packet that may take it came for an
            // interval.
            if self
                .first_above_ns
                .is_some_and(|due| now_ns.saturating_sub(due) >= params.interval_ns)
            {
                self.go_dormant();
            }
            return Verdict::Pass;
        }
        self.signalling = true;
        // A queue that stood again soon after the last signalling state ended picks up near
        // where that one left off, not from one signal per interval (RFC 8289 section 5.4).
        let delta = self.count.saturating_sub(self.last_count);
        let recent = now_ns.saturating_sub(self.signal_next_ns) < 16 * params.interval_ns;
        self.count = if delta > 1 && recent { delta } else { 1 };
        self.last_count = self.count;
        self.signal_next_ns = control_law(now_ns, params, self.count);
        Verdict::Signal
    }

    /// Whether the queue has stood above target for an interval (`codel_should_drop`, less its
    /// backlog condition: see the module documentation). While dormant, only a packet that may
    /// be signalled starts the interval.
    fn standing(&mut self, params: Params, now_ns: u64, sojourn_ns: u64, eligible: bool) -> bool {
        if sojourn_ns < params.target_ns {
            self.first_above_ns = None;
            self.dormant = false;
            return false;
        }
        if self.dormant {
            if eligible {
                self.dormant = false;
                self.first_above_ns = Some(now_ns.saturating_add(params.interval_ns));
            }
            return false;
        }
        match self.first_above_ns {
            None => {
                self.first_above_ns = Some(now_ns.saturating_add(params.interval_ns));
                false
            }
            Some(at) => now_ns >= at,
        }
    }

    /// Leaves a stale schedule: nothing is due until a packet that may be signalled has found
    /// the queue standing for an interval.
    fn go_dormant(&mut self) {
        self.dormant = true;
        self.first_above_ns = None;
    }

    /// Whether signals are being sent (the queue has stood for an interval).
    #[cfg(test)]
    pub fn signalling(&self) -> bool {
        self.signalling
    }
}

/// RFC 8289's control law: the next signal `interval / sqrt(count)` after `t`.
fn control_law(t: u64, params: Params, count: u32) -> u64 {
    let spacing = params.interval_ns as f64 / f64::from(count.max(1)).sqrt();
    t.saturating_add(spacing as u64)
}

/// What became of a packet that was signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signalled {
    /// It is ECN-capable and now carries CE (or already did).
    Marked,
    /// It is Not-ECT: drop it.
    Drop,
}

/// Signals `packet`, a validated IPv4 or IPv6 packet, in place: CE into an ECT(0) or ECT(1)
/// packet (the IPv4 header checksum updated incrementally, RFC 1624), `Drop` for a Not-ECT one.
/// RFC 3168 section 5 for a forwarding node; the same table as RFC 6040's for an outer CE.
pub fn signal(packet: &mut [u8]) -> Signalled {
    match ecn::decapsulate(Ecn::Ce.bits(), packet) {
        Decapsulated::Drop => Signalled::Drop,
        Decapsulated::Marked(_) | Decapsulated::Unchanged => Signalled::Marked,
    }
}

/// Whether `packet` may be signalled at all: longer than [`SPARSE_LEN`].
pub fn eligible(packet_len: usize) -> bool {
    packet_len > SPARSE_LEN
}

/// What [`Gate::admit`] did to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    Pass,
    /// Marked CE (or already CE).
    Marked,
    /// Not-ECT and signalled: the caller drops it.
    Drop,
}

/// One queue's AQM: a CoDel that marks ECN-capable packets and one that drops Not-ECT ones,
/// each with its own parameters. Both see every packet's sojourn, since both classes wait in
/// the same queue; each signals only packets of its class (a signal due when the other class's
/// packet leaves waits for one of its own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queue {
    mark: Codel,
    drop: Codel,
}

impl Queue {
    /// Judges a packet that leaves the queue at `now_ns` after `sojourn_ns`: `ect` whether it is
    /// ECN-capable (ECT(0), ECT(1) or CE), `bulk` whether it may be signalled at all
    /// ([`eligible`]). `Signal` means mark it if `ect`, drop it if not.
    pub fn judge(
        &mut self,
        settings: Settings,
        now_ns: u64,
        sojourn_ns: u64,
        ect: bool,
        bulk: bool,
    ) -> Verdict {
        let mark = self
            .mark
            .judge(settings.mark, now_ns, sojourn_ns, bulk && ect);
        let drop = self
            .drop
            .judge(settings.drop, now_ns, sojourn_ns, bulk && !ect);
        if mark == Verdict::Signal || drop == Verdict::Signal {
            Verdict::Signal
        } else {
            Verdict::Pass
        }
    }
}

/// Whether `packet` (a validated IP packet) is ECN-capable: ECT(0), ECT(1) or CE.
pub fn is_ect(packet: &[u8]) -> bool {
    Ecn::of(ecn::inner_tos(packet)) != Ecn::NotEct
}

/// One queue's AQM, for the packets that left it together at one moment after one wait (a
/// receive buffer's datagrams): judges each and carries the verdict out on it.
pub struct Gate<'a> {
    pub queue: &'a mut Queue,
    pub settings: Settings,
    pub now_ns: u64,
    pub sojourn_ns: u64,
}

impl Gate<'_> {
    /// Judges `packet` (a validated IP packet) and, if it is signalled, marks it CE or says to
    /// drop it.
    pub fn admit(&mut self, packet: &mut [u8]) -> Admitted {
        let verdict = self.queue.judge(
            self.settings,
            self.now_ns,
            self.sojourn_ns,
            is_ect(packet),
            eligible(packet.len()),
        );
        match verdict {
            Verdict::Pass => Admitted::Pass,
            Verdict::Signal => match signal(packet) {
                Signalled::Marked => Admitted::Marked,
                Signalled::Drop => Admitted::Drop,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::test_packets::{Spec, assert_valid, build};

    const MS: u64 = 1_000_000;
    const P: Params = Params::RFC_8289;

    /// Feeds one packet every `step` ns from `from` to `to` with sojourn `sojourn(t)`; returns
    /// the times of the signals.
    fn drive(
        codel: &mut Codel,
        (from, to, step): (u64, u64, u64),
        sojourn: impl Fn(u64) -> u64,
    ) -> Vec<u64> {
        (from..to)
            .step_by(step as usize)
            .filter(|&t| codel.judge(P, t, sojourn(t), true) == Verdict::Signal)
            .collect()
    }

    #[test]
    fn a_queue_below_target_is_never_signalled() {
        let mut codel = Codel::default();
        let signals = drive(&mut codel, (0, 10_000 * MS, MS / 10), |_| 4 * MS);
        assert!(signals.is_empty(), "{signals:?}");
        assert!(!codel.signalling());
    }

    #[test]
    fn a_burst_shorter_than_an_interval_is_absorbed() {
        let mut codel = Codel::default();
        // 99 ms above target, then it drains: never signalled.
        let signals = drive(&mut codel, (0, 1_000 * MS, MS), |t| {
            if t % (200 * MS) < 99 * MS { 50 * MS } else { 0 }
        });
        assert!(signals.is_empty(), "{signals:?}");
    }

    #[test]
    fn a_standing_queue_is_signalled_after_an_interval_and_then_ever_faster() {
        let mut codel = Codel::default();
        let signals = drive(&mut codel, (0, 1_000 * MS, MS / 10), |_| 6 * MS);
        // The first when it has stood for a full interval.
        assert_eq!(signals[0], 100 * MS);
        // Then interval / sqrt(count) apart: 100 ms, 100/sqrt(2) = 70.7 ms, 100/sqrt(3) = 57.7
        // ms ...
        let gaps: Vec<u64> = signals.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps[0], 100 * MS, "{gaps:?}");
        assert!((70 * MS..=71 * MS).contains(&gaps[1]), "{gaps:?}");
        assert!((57 * MS..=58 * MS).contains(&gaps[2]), "{gaps:?}");
        assert!(
            gaps.windows(2).all(|g| g[1] <= g[0]),
            "ever closer: {gaps:?}"
        );
        assert!(codel.signalling());
    }

    #[test]
    fn the_signalling_stops_when_the_queue_goes_below_target_and_resumes_where_it_left_off() {
        let mut codel = Codel::default();
        let first = drive(&mut codel, (0, 600 * MS, MS), |_| 10 * MS);
        assert!(first.len() >= 5, "{first:?}");
        // One packet below target ends the state.
        assert_eq!(codel.judge(P, 600 * MS, MS, true), Verdict::Pass);
        assert!(!codel.signalling());
        // Standing again soon: the spacing continues from the count reached, not from 100 ms.
        let again = drive(&mut codel, (601 * MS, 1_200 * MS, MS), |_| 10 * MS);
        let gap = again[1] - again[0];
        assert!(gap < 60 * MS, "resumed near the old rate: {again:?}");
    }

    #[test]
    fn sparse_packets_are_timed_but_not_signalled_and_the_signal_waits_for_a_bulk_one() {
        let mut codel = Codel::default();
        assert_eq!(codel.judge(P, 0, 10 * MS, false), Verdict::Pass);
        // Due at 100 ms, but the packet then is sparse: it passes, and the next bulk one is
        // signalled.
        assert_eq!(codel.judge(P, 100 * MS, 10 * MS, false), Verdict::Pass);
        assert_eq!(codel.judge(P, 101 * MS, 10 * MS, true), Verdict::Signal);
        // A sparse packet below target still ends a standing queue.
        assert_eq!(codel.judge(P, 102 * MS, 0, false), Verdict::Pass);
        assert!(!codel.signalling());
        assert!(eligible(SPARSE_LEN + 1) && !eligible(SPARSE_LEN) && !eligible(84));
    }

    /// CoDel marking above 1 ms for 10 ms and dropping above 5 ms for 100 ms.
    fn marks_at_1ms_drops_at_5ms() -> Settings {
        Settings {
            mode: Mode::Codel,
            mark: Params {
                target_ns: MS,
                interval_ns: 10 * MS,
            },
            drop: Params {
                target_ns: 5 * MS,
                interval_ns: 100 * MS,
            },
            ..Settings::DEFAULT
        }
    }

    /// Marks come at their own (shorter) times, drops at theirs, from one shared queue: an
    /// ECN-capable packet is never dropped and a Not-ECT one never marked.
    #[test]
    fn ect_packets_are_marked_on_the_mark_times_and_not_ect_ones_dropped_on_the_drop_times() {
        let settings = marks_at_1ms_drops_at_5ms();
        // A queue standing at 3 ms: above the mark target, below the drop target.
        let mut q = Queue::default();
        let mut marks = 0;
        for t in (0..1_000 * MS).step_by(MS as usize) {
            let ect = t % (2 * MS) == 0;
            if q.judge(settings, t, 3 * MS, ect, true) == Verdict::Signal {
                assert!(
                    ect,
                    "a Not-ECT packet signalled at {t} below the drop target"
                );
                marks += 1;
            }
        }
        assert!(marks > 20, "{marks}");
        // At 6 ms both act, each on its own class, drops only after a 100 ms interval.
        let mut q = Queue::default();
        let mut first_drop = None;
        for t in (0..1_000 * MS).step_by(MS as usize) {
            let ect = t % (2 * MS) == 0;
            if q.judge(settings, t, 6 * MS, ect, true) == Verdict::Signal && !ect {
                first_drop.get_or_insert(t);
            }
        }
        assert_eq!(first_drop, Some(101 * MS));
        // Off the bulk: never.
        let mut q = Queue::default();
        for t in (0..1_000 * MS).step_by(MS as usize) {
            assert_eq!(
                q.judge(settings, t, 50 * MS, t % 2 == 0, false),
                Verdict::Pass
            );
        }
    }

    /// A drop CoDel that sees only ECN-capable packets for a while (an ECN flow, marked by the
    /// other CoDel) keeps no schedule for them: the first Not-ECT packet afterwards is not
    /// dropped at once, whether the drop CoDel had never signalled or was signalling when the
    /// ECN flow began. Drops come again once Not-ECT packets have found the queue standing for
    /// a drop interval, and near the old rate (RFC 8289 section 5.4's re-entry).
    #[test]
    fn an_ecn_flow_leaves_no_stale_drop_schedule_behind() {
        let settings = marks_at_1ms_drops_at_5ms();
        let judge = |q: &mut Queue, t: u64, ect: bool| q.judge(settings, t, 6 * MS, ect, true);
        // Never signalled: 500 ms of an ECN flow (marked), then Not-ECT packets.
        let mut q = Queue::default();
        let marks = (0..500).filter(|&k| judge(&mut q, k * MS, true) == Verdict::Signal);
        assert!(marks.count() > 10, "the ECN flow is marked");
        let first_drop = (500..1_000)
            .map(|k| k * MS)
            .find(|&t| judge(&mut q, t, false) == Verdict::Signal);
        assert_eq!(
            first_drop,
            Some(600 * MS),
            "one drop interval after the first Not-ECT packet, not at once"
        );
        // Signalling: Not-ECT packets dropped for a while, then 500 ms of an ECN flow, then
        // Not-ECT packets again.
        let mut q = Queue::default();
        let drops = (0..600).filter(|&k| judge(&mut q, k * MS, false) == Verdict::Signal);
        assert!(drops.count() >= 4, "the Not-ECT flow is dropped");
        for k in 600..1_100 {
            judge(&mut q, k * MS, true);
        }
        let drops: Vec<u64> = (1_100..1_500)
            .map(|k| k * MS)
            .filter(|&t| judge(&mut q, t, false) == Verdict::Signal)
            .collect();
        assert_eq!(drops.first(), Some(&(1_200 * MS)), "{drops:?}");
        assert!(
            drops[1] - drops[0] < 60 * MS,
            "near the old rate: {drops:?}"
        );
    }

    #[test]
    fn ect_packets_are_marked_ce_with_the_ipv4_checksum_fixed_and_not_ect_ones_dropped() {
        for ipv6 in [false, true] {
            for (ecn, expected) in [
                (Ecn::Ect0, Signalled::Marked),
                (Ecn::Ect1, Signalled::Marked),
                (Ecn::Ce, Signalled::Marked),
                (Ecn::NotEct, Signalled::Drop),
            ] {
                let original = build(&Spec {
                    ipv6,
                    tos: 0xb8 | ecn.bits(),
                    payload_len: 1000,
                    ..Spec::default()
                });
                let mut p = original.clone();
                assert_eq!(signal(&mut p), expected, "ipv6={ipv6} {ecn:?}");
                if expected == Signalled::Drop {
                    assert_eq!(p, original, "a dropped packet is left alone");
                    continue;
                }
                // etherparse checks the IPv4 header checksum, and the TOS says CE with EF kept.
                assert_valid(&p);
                let tos = ecn::inner_tos(&p);
                assert_eq!(tos, 0xb8 | Ecn::Ce.bits(), "ipv6={ipv6} {ecn:?}");
            }
        }
    }
}
