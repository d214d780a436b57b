//! The path MTU to the peer, confirmed by probing: RFC 8899's datagram packetization layer path
//! MTU discovery, between two relays. PURE: takes events and the time, hands out probes to send.
//!
//! # Why not the kernel's path MTU
//! The kernel lowers a route's path MTU on any ICMP fragmentation-needed or packet-too-big that
//! quotes the socket's 4-tuple (`__udp4_lib_err`, `ipv4_sk_update_pmtu`), down to
//! `net.ipv4.route.min_pmtu` (552), for `mtu_expires` (ten minutes). A tunnel's outer 4-tuple is
//! public, so one spoofed message is enough to push most traffic onto the slow path for ten
//! minutes. So the worker's socket sends with DF but ignores the route's path MTU
//! (`IP_PMTUDISC_PROBE`, ip(7)), and an ICMP message is only a *hint*, to be confirmed here
//! before anything changes.
//!
//! # How a hint is confirmed
//! A probe is a datagram of exactly the size to test (`wire::control`), which the peer relay
//! acknowledges. On a hint below the working size:
//! * if the peer answers probes, the working size is probed: acknowledged, the hint was false
//!   and nothing changes (a spoofed message costs one probe); not acknowledged after
//!   [`MAX_PROBES`] tries, a small probe is sent: a loss that small packets share is congestion
//!   or a peer gone, not the path MTU, and proves nothing (RFC 8899 section 4.4 warns against
//!   taking one for the other). If the small probe is acknowledged, the working size is tried
//!   again the same way [`RECHECK_NS`] later (plus up to as much again, at random); failed again,
//!   the hint was true, and the largest size that works is searched for between the largest
//!   acknowledged size and the smallest that failed, trying the hint first, then the floor, then
//!   midpoints, every failure checked against a small probe the same way;
//! * if the peer has never answered (a peer that does not know probes, such as socat's relay),
//!   nothing can be confirmed: the hint is taken, but never below the floor (1280 unless
//!   configured), and the full size is tried again after [`RAISE_INTERVAL_NS`].
//!
//! # A failure counts twice
//! One burst of loss can take the three tries of the working size and spare the small probe
//! after them (under a flood, or made by an attacker who cannot see the probes but can fill a
//! queue at the right moment). So no failure lowers the working size the first time: the one
//! that would (the working size's, or a search's that would take it lower) is tried again
//! after [`RECHECK_NS`] plus a random part of as much again, and counts only if it fails again,
//! small probe and all. The forger or the burst must then do it twice, 1 to 2 s apart, at
//! moments it cannot predict. Once the working size has failed twice the path has changed, and
//! the rest of that search goes on as before, except at or below the floor, where the first
//! failure of the search is tried again the same way.
//!
//! The price is time. With a probe timeout `T` (four smoothed round trips, 100 ms to 1 s) and a
//! round trip `R`, a round of three tries and a small probe ends within `5.5 T + R`, so a true
//! drop that a hint reports is acted on within `2 s + 11 T + 2 R` of the hint, instead of
//! `5.5 T + R` with one round: about 3.1 s instead of 0.55 s with the usual 100 ms timeout, at
//! most 13 s and two round trips with the 1 s one. A drop under the floor then takes the floor's
//! own recheck, as before. Meanwhile traffic goes on as it did while the hint was being
//! confirmed: the working size stays, packets that fit the new path go through, and those
//! between the new path MTU and the working size are lost until the working size is lowered, a
//! second or two longer than with one round, in exchange for no loss at all after a false hint.
//!
//! Sizes are outer IP packet sizes (outer IP and UDP headers included). Below the floor the
//! working size goes only to a size the peer acknowledged. The egress device's own MTU is
//! local knowledge, trusted at once: as the local stack reports it when it refuses a send
//! (`SO_EE_ORIGIN_LOCAL`), or as the caller reads it from the routing table. Whenever the working
//! size is below the largest, the largest is probed again every [`RAISE_INTERVAL_NS`], so a path
//! that grows back is used again within that time, not after the kernel's ten minutes.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The path MTU machines one [`SharedPath`] keeps acknowledgements for: the listen tuple's
/// (slot 0) and one per extra outer tuple (`relay::entropy`), each with a slot of its own.
const MACHINES: usize = 1 + super::entropy::MAX_TUPLES;

/// Tries of one probe size before it counts as not getting through (RFC 8899's MAX_PROBES).
pub const MAX_PROBES: u8 = 3;
/// How often a working size below the largest is tested again against the largest.
pub const RAISE_INTERVAL_NS: u64 = 30_000_000_000;
/// How often a peer that has never answered is asked again whether it answers probes.
pub const HELLO_INTERVAL_NS: u64 = 10_000_000_000;
/// How long a probe waits for its acknowledgement before it is tried again: four smoothed
/// round trips within these bounds, or the default before the first round trip is measured.
pub const PROBE_TIMEOUT_DEFAULT_NS: u64 = 500_000_000;
pub const PROBE_TIMEOUT_MIN_NS: u64 = 100_000_000;
pub const PROBE_TIMEOUT_MAX_NS: u64 = 1_000_000_000;
/// The search stops when the largest acknowledged and the smallest failed size are this close.
pub const SEARCH_GRANULARITY: usize = 8;
/// A failure that would lower the working size counts only when it happened twice, the second
/// time at least this long after the first (plus up to as much again, at random): an attacker
/// who can make a few probes look lost at the right moments, or a burst of loss that eats the
/// large probes and spares the small one, must then do it twice, seconds apart, at moments it
/// cannot predict. Kept once per search above the floor (the working size failing again) and
/// once more at or below it (see the module documentation).
pub const RECHECK_NS: u64 = 1_000_000_000;

/// The sizes the search works within, outer headers included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest: what the device MTU was chosen for.
    pub largest: usize,
    /// Below this, only a size the peer acknowledged is used.
    pub floor: usize,
    /// The smallest working size ever used (IPv4's 552, the kernel's `min_pmtu`; IPv6's 1280).
    pub smallest: usize,
    /// The size of the probe that asks whether the peer answers at all.
    pub hello: usize,
}

/// A probe to send now: a datagram making an outer IP packet of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub nonce: u64,
    pub size: usize,
}

/// What the machine counts: kept in `stats`, which reports it per worker in `PathStats`.
pub use crate::stats::PlpmtudCounts as Counts;

impl Counts {
    /// Adds another machine's counts (a relay reports its machines' together).
    pub fn add(&mut self, other: &Counts) {
        self.probes_sent += other.probes_sent;
        self.probes_acked += other.probes_acked;
        self.hints += other.hints;
        self.hints_refuted += other.hints_refuted;
        self.lowered += other.lowered;
        self.raised += other.raised;
        self.inconclusive += other.inconclusive;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Does the peer answer probes at all?
    Hello,
    /// Does the working size still get through (a hint said it does not)?
    Confirm,
    /// Part of the search for the largest size that gets through.
    Search,
    /// Does the largest size get through again?
    Raise,
    /// Do small probes get through, now that a larger one did not? Carries what failed.
    Baseline { failed: FailedProbe },
}

/// A probe that went unacknowledged, waiting for the small probe that says whether it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FailedProbe {
    size: usize,
    confirming: bool,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    probe: Probe,
    purpose: Purpose,
    tries: u8,
    sent_ns: u64,
    deadline_ns: u64,
}

/// One relay's path MTU machine.
#[derive(Debug, Clone)]
pub struct Plpmtud {
    limits: Limits,
    working: usize,
    /// The peer has acknowledged a probe.
    peer_answers: bool,
    srtt_ns: Option<u64>,
    /// The largest size acknowledged since the search last started (0: none).
    acked: usize,
    /// The smallest size that failed since the search last started (`largest + 1`: none).
    failed: usize,
    /// The smallest hint not yet settled.
    hint: Option<usize>,
    searching: bool,
    /// The working size needs confirming at the next chance (a hint, or the start).
    confirm: bool,
    /// A probe just lost, for a small probe to say whether it counts, and when to send that.
    baseline: Option<FailedProbe>,
    baseline_at_ns: u64,
    /// A failure that would lower the working size seen once, to be tried again at the time
    /// given before it is believed ([`RECHECK_NS`]).
    recheck: Option<(FailedProbe, u64)>,
    /// When the first failure above the floor that would lower the working size was seen, in the
    /// current confirmation and the search it starts.
    strike_ns: Option<u64>,
    /// When the first failure at or below the floor of the current search was seen.
    floor_strike_ns: Option<u64>,
    /// The state of the timers' jitter ([`Plpmtud::jitter_ns`]), reseeded with a fresh random
    /// number (not its nonce) at each new probe.
    jitter_seed: u64,
    outstanding: Option<Outstanding>,
    /// The egress device's MTU as last read (`on_egress_mtu`).
    egress_mtu: Option<usize>,
    next_hello_ns: u64,
    raise_at_ns: Option<u64>,
    /// When the peer last acknowledged a probe of this machine's.
    last_ack_ns: Option<u64>,
    /// For an extra tuple's machine: a small probe this often when no other is due, so that the
    /// tuple's delivery is checked all the time (`relay::entropy`, [`Plpmtud::for_tuple`]).
    keepalive_ns: Option<u64>,
    next_keepalive_ns: u64,
    /// [`Plpmtud::pause`]d: no deadline, and not run.
    paused: bool,
    counts: Counts,
}

impl Plpmtud {
    /// Starts at the largest size, asking the peer at once whether it answers probes.
    pub fn new(limits: Limits) -> Plpmtud {
        Plpmtud {
            limits,
            working: limits.largest,
            peer_answers: false,
            srtt_ns: None,
            acked: 0,
            failed: limits.largest + 1,
            hint: None,
            searching: false,
            confirm: true,
            baseline: None,
            baseline_at_ns: 0,
            recheck: None,
            strike_ns: None,
            floor_strike_ns: None,
            jitter_seed: 0,
            outstanding: None,
            egress_mtu: None,
            next_hello_ns: 0,
            raise_at_ns: None,
            last_ack_ns: None,
            keepalive_ns: None,
            next_keepalive_ns: 0,
            paused: false,
            counts: Counts::default(),
        }
    }

    /// The machine of an extra outer tuple (`relay::entropy`): the peer is known to answer
    /// probes (it acknowledged this relay's advertisement), so it starts as answered: a hint
    /// that comes before its first probe is confirmed by probing, never taken unconfirmed, and
    /// its first probe tests the working size. When no other probe is due it sends a small one
    /// every `keepalive_ns`, from the tuple, so [`Plpmtud::acked_since`] says whether the tuple's
    /// datagrams still reach the peer.
    pub fn for_tuple(limits: Limits, keepalive_ns: u64) -> Plpmtud {
        Plpmtud {
            peer_answers: true,
            keepalive_ns: Some(keepalive_ns),
            ..Plpmtud::new(limits)
        }
    }

    /// Stops until [`Plpmtud::resume`] (an extra tuple's ports went out of use): no deadline,
    /// and every acknowledgement so far forgotten (the peer may not take the tuple's datagrams
    /// any more), so that only one of a probe after it resumed shows the tuple carries again.
    /// What it knows of the path stays.
    pub fn pause(&mut self) {
        self.paused = true;
        self.last_ack_ns = None;
    }

    /// Runs again after [`Plpmtud::pause`], with a keepalive at once.
    pub fn resume(&mut self, now_ns: u64) {
        if std::mem::take(&mut self.paused) {
            self.next_keepalive_ns = now_ns;
        }
    }

    /// Whether the peer acknowledged one of this machine's probes at or after `since_ns`.
    pub fn acked_since(&self, since_ns: u64) -> bool {
        self.last_ack_ns.is_some_and(|at| at >= since_ns)
    }

    /// The path MTU to work to now, outer headers included.
    pub fn working(&self) -> usize {
        self.working
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Whether the peer has ever acknowledged a probe.
    #[cfg(test)]
    pub fn peer_answers(&self) -> bool {
        self.peer_answers
    }

    /// An ICMP fragmentation-needed or packet-too-big saying the path takes `size` bytes: a
    /// hint, confirmed before it is believed (see the module documentation).
    pub fn on_hint(&mut self, size: usize, now_ns: u64) {
        self.counts.hints += 1;
        if size >= self.working {
            return;
        }
        if !self.peer_answers {
            // Nothing can be confirmed: take it, but not below the floor.
            let lowered = size.max(self.limits.floor).max(self.limits.smallest);
            if lowered < self.working {
                self.set_working(lowered);
                self.raise_at_ns = Some(now_ns + RAISE_INTERVAL_NS);
            }
            return;
        }
        self.hint = Some(self.hint.map_or(size, |h| h.min(size)));
        if !self.searching {
            self.confirm = true;
        }
    }

    /// The local stack refused a send over the egress device's MTU (`SO_EE_ORIGIN_LOCAL`,
    /// `size` being that MTU): not from the network, so believed at once.
    pub fn on_local_limit(&mut self, size: usize, now_ns: u64) {
        let size = size.max(self.limits.smallest);
        if size < self.working {
            self.set_working(size);
            self.failed = self.failed.min(size + 1);
            self.acked = self.acked.min(size);
            self.raise_at_ns = Some(now_ns + RAISE_INTERVAL_NS);
        }
    }

    /// The egress device's MTU toward the peer, read from the routing table (local, so
    /// trusted): a smaller one is taken at once; a larger one than before, while the working size
    /// is under the largest, is tried at once.
    pub fn on_egress_mtu(&mut self, mtu: usize, now_ns: u64) {
        let previous = self.egress_mtu.replace(mtu);
        if mtu < self.working {
            self.on_local_limit(mtu, now_ns);
        } else if previous.is_some_and(|p| mtu > p) && self.working < self.limits.largest {
            self.failed = self.limits.largest + 1;
            self.raise_at_ns = Some(now_ns);
        }
    }

    /// An acknowledgement with `nonce` arrived from the peer.
    pub fn on_ack(&mut self, nonce: u64, now_ns: u64) {
        let Some(out) = self.outstanding else {
            return;
        };
        if out.probe.nonce != nonce {
            return;
        }
        self.outstanding = None;
        self.counts.probes_acked += 1;
        self.peer_answers = true;
        self.last_ack_ns = Some(now_ns);
        let sample = now_ns.saturating_sub(out.sent_ns);
        self.srtt_ns = Some(match self.srtt_ns {
            // RFC 6298's smoothing.
            Some(srtt) => (7 * srtt + sample) / 8,
            None => sample,
        });
        let size = out.probe.size;
        self.acked = self.acked.max(size);
        match out.purpose {
            Purpose::Hello => {}
            Purpose::Baseline { failed } => self.take_failure(failed, now_ns),
            Purpose::Confirm => {
                if size >= self.working {
                    if self.hint.take().is_some() {
                        self.counts.hints_refuted += 1;
                    }
                    self.confirm = false;
                    // A failure seen once was not the path: the next one starts anew.
                    self.strike_ns = None;
                    self.floor_strike_ns = None;
                }
            }
            Purpose::Search => {
                if size > self.working {
                    self.set_working(size);
                }
                self.continue_search(now_ns);
            }
            Purpose::Raise => {
                if size > self.working {
                    self.set_working(size);
                    self.counts.raised += 1;
                }
                self.raise_at_ns = None;
                self.failed = self.limits.largest + 1;
            }
        }
    }

    /// What to send now, if anything: a probe (a new one, or another try of the outstanding
    /// one). `nonce` is asked for fresh random numbers when a new probe is made: its nonce, and
    /// the timers' jitter seed.
    pub fn poll(&mut self, now_ns: u64, mut nonce: impl FnMut() -> u64) -> Option<Probe> {
        if !self.peer_answers && self.raise_at_ns.is_some_and(|at| now_ns >= at) {
            // Nothing to confirm with: after the interval, simply work to the largest size
            // again, and let a real limit hint it down again.
            self.raise_at_ns = None;
            self.set_working(self.largest_now());
            self.counts.raised += 1;
        }
        if let Some(out) = self.outstanding
            && now_ns < out.deadline_ns
        {
            return None;
        }
        let timeout_ns = self.timeout_ns();
        let jitter_ns = self.jitter_ns(timeout_ns / 2);
        if let Some(out) = &mut self.outstanding {
            if out.tries < MAX_PROBES {
                out.tries += 1;
                out.sent_ns = now_ns;
                out.deadline_ns = now_ns + timeout_ns + jitter_ns;
                self.counts.probes_sent += 1;
                return Some(out.probe);
            }
            let out = self.outstanding.take().expect("just looked");
            self.on_failure(out, now_ns);
        }
        let (purpose, size) = self.next_probe(now_ns)?;
        let probe = Probe {
            nonce: nonce(),
            size,
        };
        // A random number of its own, not the nonce, which the probe carries in the clear: an
        // observer on the path would foresee the timers from it.
        self.jitter_seed = nonce();
        if let Some(interval) = self.keepalive_ns {
            // Any probe checks delivery: the next keepalive only after a quiet interval.
            self.next_keepalive_ns = now_ns + self.keepalive_gap_ns(interval);
        }
        let timeout_ns = self.timeout_ns();
        self.outstanding = Some(Outstanding {
            probe,
            purpose,
            tries: 1,
            sent_ns: now_ns,
            deadline_ns: now_ns + timeout_ns + self.jitter_ns(timeout_ns / 2),
        });
        self.counts.probes_sent += 1;
        Some(probe)
    }

    /// When `poll` next has something to do, if ever: a probe's deadline, a hello, a raise.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self.paused {
            return None;
        }
        if let Some(out) = self.outstanding {
            return Some(out.deadline_ns);
        }
        if !self.peer_answers {
            let raise = self.raise_at_ns.unwrap_or(u64::MAX);
            return Some(self.next_hello_ns.min(raise));
        }
        if self.baseline.is_some() {
            return Some(self.baseline_at_ns);
        }
        if let Some((_, at)) = self.recheck {
            return Some(at);
        }
        if self.confirm || self.searching {
            return Some(0);
        }
        let keepalive = self.keepalive_ns.map(|_| self.next_keepalive_ns);
        match (self.raise_at_ns, keepalive) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A pseudo-random delay below `range_ns`, different at each call, from the random seed drawn
    /// at the latest new probe: an attacker sees neither, so cannot time its forgeries
    /// to the machine's timers (RFC 8899 section 4.6.1 asks a sender to make PTB-driven changes
    /// hard to induce).
    fn jitter_ns(&mut self, range_ns: u64) -> u64 {
        // SplitMix64's step: every call moves the seed and mixes all its bits.
        self.jitter_seed = self.jitter_seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.jitter_seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if range_ns == 0 { 0 } else { z % range_ns }
    }

    /// The largest size worth trying: the configured one, or the egress device's MTU if that is
    /// smaller.
    fn largest_now(&self) -> usize {
        self.egress_mtu
            .map_or(self.limits.largest, |m| m.min(self.limits.largest))
    }

    fn timeout_ns(&self) -> u64 {
        self.srtt_ns.map_or(PROBE_TIMEOUT_DEFAULT_NS, |srtt| {
            (4 * srtt).clamp(PROBE_TIMEOUT_MIN_NS, PROBE_TIMEOUT_MAX_NS)
        })
    }

    fn next_probe(&mut self, now_ns: u64) -> Option<(Purpose, usize)> {
        if !self.peer_answers {
            if now_ns < self.next_hello_ns {
                return None;
            }
            self.next_hello_ns = now_ns + HELLO_INTERVAL_NS;
            return Some((Purpose::Hello, self.limits.hello));
        }
        if let Some(failed) = self.baseline {
            if now_ns < self.baseline_at_ns {
                return None;
            }
            self.baseline = None;
            return Some((Purpose::Baseline { failed }, self.limits.hello));
        }
        if let Some((failed, at)) = self.recheck {
            if now_ns < at {
                return None;
            }
            self.recheck = None;
            let purpose = if failed.confirming {
                Purpose::Confirm
            } else {
                Purpose::Search
            };
            return Some((purpose, failed.size));
        }
        if self.searching {
            return self.search_candidate().map(|size| (Purpose::Search, size));
        }
        if self.confirm {
            if self.working < self.failed {
                return Some((Purpose::Confirm, self.working));
            }
            self.confirm = false;
        }
        match self.raise_at_ns {
            Some(at) if now_ns >= at && self.working < self.largest_now() => {
                self.raise_at_ns = Some(now_ns + RAISE_INTERVAL_NS);
                Some((Purpose::Raise, self.largest_now()))
            }
            _ => self.keepalive(now_ns),
        }
    }

    /// The keepalive of an extra tuple's machine, when due: a hello, whose loss means nothing
    /// for the path MTU (a tuple that stops getting them through stops carrying flows).
    fn keepalive(&mut self, now_ns: u64) -> Option<(Purpose, usize)> {
        let interval = self.keepalive_ns?;
        if now_ns < self.next_keepalive_ns {
            return None;
        }
        self.next_keepalive_ns = now_ns + self.keepalive_gap_ns(interval);
        Some((Purpose::Hello, self.limits.hello))
    }

    /// The quiet time before the next keepalive: `interval` give or take a quarter, uniformly
    /// (RFC 8085 section 3.1.5 asks periodic messages to be jittered), so that neither the
    /// relays' keepalives fall into step nor an observer can tell to the nanosecond when the
    /// next one goes.
    fn keepalive_gap_ns(&mut self, interval: u64) -> u64 {
        interval - interval / 4 + self.jitter_ns(interval / 2 + 1)
    }

    fn on_failure(&mut self, out: Outstanding, now_ns: u64) {
        let size = out.probe.size;
        match out.purpose {
            Purpose::Hello | Purpose::Raise => {}
            Purpose::Confirm | Purpose::Search => {
                // Does a small probe get through? Asked next (`next_probe`), before anything
                // is concluded, after a random part of a probe timeout: not at a moment that
                // follows from when the larger probe went.
                self.baseline = Some(FailedProbe {
                    size,
                    confirming: out.purpose == Purpose::Confirm,
                });
                let timeout_ns = self.timeout_ns();
                self.baseline_at_ns = now_ns + self.jitter_ns(timeout_ns);
            }
            Purpose::Baseline { .. } => {
                // Small probes are lost too: the loss says nothing about the path MTU.
                self.counts.inconclusive += 1;
                self.confirm = false;
                self.recheck = None;
                self.strike_ns = None;
                self.floor_strike_ns = None;
                if self.searching {
                    self.searching = false;
                    if self.working < self.limits.largest {
                        self.raise_at_ns = Some(now_ns + RAISE_INTERVAL_NS);
                    }
                }
                self.hint = None;
            }
        }
    }

    /// A probe of `failed.size` was lost while a small probe got through: the path does not
    /// take that size, if it is not the first such failure that would lower the working size
    /// (`strike`).
    fn take_failure(&mut self, failed: FailedProbe, now_ns: u64) {
        if !self.strike(failed, now_ns) {
            return;
        }
        self.failed = self.failed.min(failed.size);
        if failed.confirming {
            self.confirm = false;
            self.searching = true;
            // It got through before: the path changed, and what was acknowledged then says
            // nothing now (the small probe just acknowledged is below anything searched).
            self.acked = 0;
        }
        let believed = self.believed(self.failed, self.acked);
        if believed < self.working {
            self.set_working(believed);
        }
        self.continue_search(now_ns);
    }

    /// Whether a failure checked against a small probe counts now. One at or below the floor,
    /// and one above it that would lower the working size, count only when another did before,
    /// at least [`RECHECK_NS`] earlier, in this search or the confirmation that
    /// started it: the first is tried again after that time plus a random part of it, and until
    /// then nothing changes.
    fn strike(&mut self, failed: FailedProbe, now_ns: u64) -> bool {
        let below_floor = failed.size <= self.limits.floor;
        if !below_floor {
            let acked = if failed.confirming { 0 } else { self.acked };
            if self.believed(self.failed.min(failed.size), acked) >= self.working {
                // Only narrows the search: nothing changes that traffic depends on.
                return true;
            }
        }
        let first = if below_floor {
            self.floor_strike_ns
        } else {
            self.strike_ns
        };
        if let Some(first) = first {
            return now_ns >= first + RECHECK_NS;
        }
        if below_floor {
            self.floor_strike_ns = Some(now_ns);
        } else {
            self.strike_ns = Some(now_ns);
        }
        let at = now_ns + RECHECK_NS + self.jitter_ns(RECHECK_NS);
        self.recheck = Some((failed, at));
        false
    }

    /// What to work to until the search ends, given the smallest failed and the largest
    /// acknowledged size: the largest acknowledged size, or the hint or the floor if they are
    /// under what failed.
    fn believed(&self, failed: usize, acked: usize) -> usize {
        [self.hint, Some(self.limits.floor)]
            .into_iter()
            .flatten()
            .filter(|s| *s >= self.limits.floor && *s < failed)
            .max()
            .unwrap_or(0)
            .max(acked)
            .max(self.limits.smallest)
            .min(failed.saturating_sub(1).max(self.limits.smallest))
    }

    /// Ends the search once the acknowledged and failed sizes meet, settling on the largest
    /// acknowledged one.
    fn continue_search(&mut self, now_ns: u64) {
        if !self.searching || self.search_candidate().is_some() {
            return;
        }
        self.searching = false;
        self.hint = None;
        self.strike_ns = None;
        self.floor_strike_ns = None;
        let settled = self.acked.max(self.limits.smallest);
        if settled != self.working {
            self.set_working(settled);
        }
        if self.working < self.limits.largest {
            self.raise_at_ns = Some(now_ns + RAISE_INTERVAL_NS);
        }
    }

    /// The next size to try in the search: the hint, the floor, then the midpoint of what is
    /// left between the largest acknowledged and the smallest failed size.
    fn search_candidate(&self) -> Option<usize> {
        let low = self.acked.max(self.limits.smallest.saturating_sub(1));
        if self.failed <= low + SEARCH_GRANULARITY {
            return None;
        }
        let open = |s: usize| s > self.acked && s < self.failed && s >= self.limits.smallest;
        if let Some(hint) = self.hint.filter(|h| open(*h)) {
            return Some(hint);
        }
        if open(self.limits.floor) {
            return Some(self.limits.floor);
        }
        let mid = (low + self.failed) / 2;
        open(mid).then_some(mid)
    }

    fn set_working(&mut self, size: usize) {
        if size < self.working {
            self.counts.lowered += 1;
        }
        self.working = size;
    }
}

/// The path MTU state one relay's workers share: the hints and acknowledgements any worker sees,
/// for the one worker that runs the [`Plpmtud`] machine, and the working size it publishes for
/// all. Only atomics, touched once per batch at most: the kernel delivers the ICMP errors about
/// a reuseport group's 4-tuple to one socket it picks by hash, and a probe's acknowledgement to
/// whichever worker the steering program picks, so neither need land where the machine runs.
#[derive(Debug)]
pub struct SharedPath {
    /// The smallest ICMP hint not yet taken by the machine; `u32::MAX` for none.
    hint: AtomicU32,
    /// The smallest local limit not yet taken; `u32::MAX` for none.
    local_limit: AtomicU32,
    /// Per machine (slot 0: the listen tuple's; slot `1 + k`: extra tuple `k`'s), the nonce of
    /// the latest acknowledgement of its outstanding probe (0: none yet).
    acked_nonces: [AtomicU64; MACHINES],
    /// Per machine, the nonce of the probe it waits for (0: none): only that probe's
    /// acknowledgement is kept, in that machine's slot alone, so a forged one can neither
    /// overwrite a real one before the machine reads it nor reach another tuple's machine.
    expected_nonces: [AtomicU64; MACHINES],
    /// The working size the machine published.
    working: AtomicU32,
}

impl SharedPath {
    pub fn new(working: usize) -> SharedPath {
        SharedPath {
            hint: AtomicU32::new(u32::MAX),
            local_limit: AtomicU32::new(u32::MAX),
            acked_nonces: std::array::from_fn(|_| AtomicU64::new(0)),
            expected_nonces: std::array::from_fn(|_| AtomicU64::new(0)),
            working: AtomicU32::new(working as u32),
        }
    }

    pub fn post_hint(&self, size: u32) {
        self.hint.fetch_min(size, Ordering::Relaxed);
    }

    pub fn post_local_limit(&self, size: u32) {
        self.local_limit.fetch_min(size, Ordering::Relaxed);
    }

    /// An acknowledgement arrived (any worker may see the one of any machine's probe): kept
    /// only in the slot of the machine whose outstanding probe it answers, if any. Returns
    /// whether it answered one.
    pub fn post_ack(&self, nonce: u64) -> bool {
        if nonce == 0 {
            return false;
        }
        let mut expected_by_any = false;
        for (expected, acked) in self.expected_nonces.iter().zip(&self.acked_nonces) {
            if expected.load(Ordering::Relaxed) == nonce {
                acked.store(nonce, Ordering::Relaxed);
                expected_by_any = true;
            }
        }
        expected_by_any
    }

    /// Says which probe's acknowledgement to keep for the listen tuple's machine (its
    /// outstanding one, after `poll`).
    pub fn expect(&self, machine: &Plpmtud) {
        self.expect_in(0, machine);
    }

    /// Says which probe's acknowledgement to keep for extra tuple `index`'s machine (its
    /// outstanding one, after `poll`; none once `machine` is `None`, the tuple out of use).
    /// A tuple past the slots keeps none, so its probes look lost: safe, never in use since
    /// `relay::entropy::tuples` caps them.
    pub fn expect_on_tuple(&self, index: usize, machine: Option<&Plpmtud>) {
        if index + 1 < MACHINES {
            match machine {
                Some(machine) => self.expect_in(index + 1, machine),
                None => {
                    self.expected_nonces[index + 1].store(0, Ordering::Relaxed);
                    self.acked_nonces[index + 1].store(0, Ordering::Relaxed);
                }
            }
        }
    }

    fn expect_in(&self, slot: usize, machine: &Plpmtud) {
        let nonce = machine.outstanding.map_or(0, |out| out.probe.nonce);
        self.expected_nonces[slot].store(nonce, Ordering::Relaxed);
    }

    /// Hands extra tuple `index`'s machine the acknowledgement kept for it, if any.
    pub fn feed_tuple_acks(&self, index: usize, machine: &mut Plpmtud, now_ns: u64) {
        if index + 1 < MACHINES {
            self.feed_acks_in(index + 1, machine, now_ns);
        }
    }

    fn feed_acks_in(&self, slot: usize, machine: &mut Plpmtud, now_ns: u64) {
        let nonce = self.acked_nonces[slot].load(Ordering::Relaxed);
        if nonce != 0 {
            machine.on_ack(nonce, now_ns);
        }
    }

    /// Hands what the workers posted to the machine, and publishes its working size.
    pub fn run(&self, machine: &mut Plpmtud, now_ns: u64) {
        let hint = self.hint.swap(u32::MAX, Ordering::Relaxed);
        if hint != u32::MAX {
            machine.on_hint(hint as usize, now_ns);
        }
        let local = self.local_limit.swap(u32::MAX, Ordering::Relaxed);
        if local != u32::MAX {
            machine.on_local_limit(local as usize, now_ns);
        }
        self.feed_acks_in(0, machine, now_ns);
        self.publish(machine.working());
    }

    pub fn publish(&self, working: usize) {
        self.working.store(working as u32, Ordering::Relaxed);
    }

    /// The working size the machine published last.
    pub fn working(&self) -> usize {
        self.working.load(Ordering::Relaxed) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const LIMITS: Limits = Limits {
        largest: 1448,
        floor: 1280,
        smallest: 552,
        hello: 44,
    };

    /// A peer on a path of `path_mtu` that acknowledges every probe that fits, `rtt` later.
    struct Path {
        path_mtu: usize,
        answers: bool,
        rtt_ns: u64,
        in_flight: Vec<(u64, u64)>,
        nonce: u64,
        /// Until then, every probe larger than a hello goes unanswered (an attacker draining
        /// the peer's answers, or dropping them, at the moments that matter).
        suppress_until_ns: u64,
    }

    impl Path {
        fn new(path_mtu: usize) -> Path {
            Path {
                path_mtu,
                answers: true,
                rtt_ns: MS,
                in_flight: Vec::new(),
                nonce: 0,
                suppress_until_ns: 0,
            }
        }

        /// Runs the machine from `from` for `for_ns` in steps of 1 ms; returns the sizes probed.
        fn run(&mut self, m: &mut Plpmtud, from: u64, for_ns: u64) -> Vec<usize> {
            let mut sent = Vec::new();
            let mut now = from;
            while now < from + for_ns {
                let arrived: Vec<u64> = self
                    .in_flight
                    .iter()
                    .filter(|(at, _)| *at <= now)
                    .map(|(_, n)| *n)
                    .collect();
                self.in_flight.retain(|(at, _)| *at > now);
                for nonce in arrived {
                    m.on_ack(nonce, now);
                }
                self.nonce += 1;
                let fresh = self.nonce;
                if let Some(p) = m.poll(now, || fresh) {
                    sent.push(p.size);
                    let suppressed = p.size > LIMITS.hello && now < self.suppress_until_ns;
                    if self.answers && p.size <= self.path_mtu && !suppressed {
                        self.in_flight.push((now + self.rtt_ns, p.nonce));
                    }
                }
                now += MS;
            }
            sent
        }
    }

    fn settled(path: &mut Path) -> Plpmtud {
        let mut m = Plpmtud::new(LIMITS);
        path.run(&mut m, 0, 100 * MS);
        m
    }

    #[test]
    fn the_start_asks_the_peer_then_confirms_the_largest_size() {
        let mut path = Path::new(1500);
        let mut m = Plpmtud::new(LIMITS);
        let sent = path.run(&mut m, 0, 100 * MS);
        assert_eq!(sent, vec![44, 1448]);
        assert!(m.peer_answers());
        assert_eq!(m.working(), 1448);
        assert_eq!(m.next_deadline_ns(), None, "settled: nothing more to do");
    }

    #[test]
    fn a_false_hint_costs_one_probe_and_changes_nothing() {
        let mut path = Path::new(1500);
        let mut m = settled(&mut path);
        let mut now = 100 * MS;
        for _ in 0..1000 {
            m.on_hint(552, now);
            path.run(&mut m, now, MS);
            now += MS;
        }
        assert_eq!(m.working(), 1448, "never lowered");
        let c = m.counts();
        assert_eq!(c.lowered, 0);
        assert!(c.hints_refuted >= 400, "{c:?}");
        assert_eq!(c.hints, 1000);
    }

    #[test]
    fn a_true_hint_is_confirmed_and_the_largest_size_that_works_is_found() {
        let mut path = Path::new(1500);
        let mut m = settled(&mut path);
        path.path_mtu = 1400;
        m.on_hint(1400, 100 * MS);
        let sent = path.run(&mut m, 100 * MS, 20_000 * MS);
        let tries = MAX_PROBES as usize;
        // The working size fails, checked against a small probe, and again a second or two
        // later ([`RECHECK_NS`]) before the search starts.
        for round in [0, tries + 1] {
            assert_eq!(sent[round..round + tries], [1448; MAX_PROBES as usize]);
            assert_eq!(
                sent[round + tries],
                LIMITS.hello,
                "a small probe says the loss counts"
            );
        }
        assert_eq!(sent[2 * tries + 2], 1400, "the hint is tried first");
        assert!(
            m.working() <= 1400 && m.working() > 1400 - SEARCH_GRANULARITY,
            "{}",
            m.working()
        );
        assert!(m.counts().lowered >= 1);
        assert_eq!(m.next_deadline_ns().map(|d| d > 20_000 * MS), Some(true));
    }

    #[test]
    fn a_hint_below_the_floor_is_used_only_once_confirmed() {
        let mut path = Path::new(1500);
        let mut m = settled(&mut path);
        path.path_mtu = 1000;
        m.on_hint(1000, 100 * MS);
        // Step by step: the working size is never under the floor unless acknowledged.
        let mut seen_floor = false;
        for step in 0..6000 {
            let now = (100 + step) * MS;
            path.run(&mut m, now, MS);
            assert!(
                m.working() >= LIMITS.floor || m.working() <= m.acked,
                "at {step} ms: working {} acked {}",
                m.working(),
                m.acked
            );
            seen_floor |= m.working() == LIMITS.floor;
        }
        assert!(seen_floor, "the floor is believed while it is tried");
        assert!(m.working() <= 1000 && m.working() > 1000 - SEARCH_GRANULARITY);
    }

    /// One forged hint far below the floor, and every larger probe unanswered while small ones
    /// get through, from the hint until 600 ms after the working size first falls: an attack
    /// that outlasted the working size's recheck, in the manner of the one on a drainable answer
    /// budget. The working size drops to the floor, but never below it: the failure under the
    /// floor must repeat at least a second later, by when the attack has to be still going.
    #[test]
    fn a_burst_of_lost_probes_after_a_forged_hint_never_takes_it_below_the_floor() {
        let mut path = Path::new(1500);
        let mut m = settled(&mut path);
        m.on_hint(552, 100 * MS);
        path.suppress_until_ns = u64::MAX;
        let mut lowest = m.working();
        for step in 0..8000 {
            let now = (100 + step) * MS;
            path.run(&mut m, now, MS);
            if m.working() < lowest && path.suppress_until_ns == u64::MAX {
                path.suppress_until_ns = now + 600 * MS;
            }
            lowest = lowest.min(m.working());
        }
        assert_eq!(lowest, LIMITS.floor, "{:?}", m.counts());
        // A path that really stopped taking them is still found, only later.
        path.path_mtu = 1000;
        m.on_hint(1000, 5_100 * MS);
        path.run(&mut m, 5_100 * MS, 10_000 * MS);
        assert!(m.working() <= 1000, "{}", m.working());
    }

    /// A burst of loss (or an attacker) eats the three tries of the working size after a
    /// forged hint, and spares the small probe that follows: seen once, that is not the path.
    /// The working size is tried again a second or two later, gets through, and never changed;
    /// and another such burst 10 s later, after another forged hint, is again seen once only.
    #[test]
    fn one_burst_of_lost_probes_after_a_forged_hint_lowers_nothing() {
        for seed in 0..20 {
            let mut path = Path::new(1500);
            path.nonce = seed * 1000;
            let mut m = settled(&mut path);
            for burst in 0..2u64 {
                let start = 100 * MS + burst * 10_000 * MS;
                m.on_hint(1400, start);
                path.suppress_until_ns = u64::MAX;
                for step in 0..10_000 {
                    let sent = path.run(&mut m, start + step * MS, MS);
                    if sent.contains(&LIMITS.hello) {
                        // The burst ends as the small probe goes.
                        path.suppress_until_ns = 0;
                    }
                    assert_eq!(
                        m.working(),
                        1448,
                        "seed {seed}, burst {burst}, at {step} ms"
                    );
                }
            }
            let c = m.counts();
            // The settled machine's two, then twice the lost tries, the small probe and the
            // recheck.
            assert_eq!(c.probes_sent, 2 + 2 * (MAX_PROBES as u64 + 2), "{c:?}");
            assert_eq!((c.lowered, c.hints_refuted), (0, 2), "{c:?}");
        }
    }

    /// The path really shrinks to 1400: the search still starts, once the working size failed
    /// twice, and the working size is down to the hint within the bound the module
    /// documentation gives (on this machine's fake clock): the recheck's 2 s at most, and two
    /// rounds of three tries and a small probe, with a probe timeout of 100 ms (four 1 ms round
    /// trips, raised to the minimum).
    #[test]
    fn a_true_drop_is_acted_on_within_the_stated_bound() {
        let timeout = PROBE_TIMEOUT_MIN_NS;
        let round = 3 * (timeout + timeout / 2) + timeout + MS;
        let bound = 2 * RECHECK_NS + 2 * round;
        for seed in 0..20 {
            let mut path = Path::new(1500);
            path.nonce = seed * 1000;
            let mut m = settled(&mut path);
            path.path_mtu = 1400;
            m.on_hint(1400, 100 * MS);
            let mut lowered_after = None;
            for step in 0..20_000 {
                path.run(&mut m, (100 + step) * MS, MS);
                if m.working() <= 1400 && lowered_after.is_none() {
                    lowered_after = Some(step * MS);
                }
            }
            let after = lowered_after.expect("lowered");
            assert!(after <= bound, "seed {seed}: {after} ns, bound {bound}");
            assert!(after > RECHECK_NS, "seed {seed}: not before the recheck");
            assert!(m.working() <= 1400 && m.working() > 1400 - SEARCH_GRANULARITY);
        }
    }

    /// Probe timers are not a fixed function of when the previous probe went: retries and the
    /// small probe after a loss come after random delays.
    #[test]
    fn probe_timers_are_jittered() {
        let mut gaps = std::collections::BTreeSet::new();
        for seed in 1..20u64 {
            let mut m = Plpmtud::new(LIMITS);
            let first = m.poll(0, || seed * 7919).unwrap();
            assert_eq!(first.size, LIMITS.hello);
            let mut now = 0;
            while m.poll(now, || 1).is_none() {
                now += MS;
            }
            gaps.insert(now);
        }
        assert!(gaps.len() > 5, "retry times {gaps:?}");
    }

    /// A tuple's keepalives come `keepalive_ns` apart give or take a quarter, at random.
    #[test]
    fn keepalives_are_jittered_within_a_quarter() {
        const KEEPALIVE: u64 = 2_000 * MS;
        let mut gaps = std::collections::BTreeSet::new();
        for seed in 1..40u64 {
            let mut m = Plpmtud::for_tuple(LIMITS, KEEPALIVE);
            let mut path = Path::new(1500);
            // Settle: the start's probes answered, then keepalives alone.
            path.run(&mut m, 0, 5_000 * MS);
            let mut now = 5_000 * MS;
            let mut sent = Vec::new();
            while sent.len() < 3 && now < 20_000 * MS {
                if let Some(probe) = m.poll(now, || seed * 7919 + now) {
                    m.on_ack(probe.nonce, now + MS);
                    sent.push(now);
                }
                now += MS;
            }
            assert_eq!(sent.len(), 3, "seed {seed}: keepalives at {sent:?}");
            for pair in sent.windows(2) {
                let gap = pair[1] - pair[0];
                assert!(
                    (KEEPALIVE * 3 / 4..=KEEPALIVE * 5 / 4 + MS).contains(&gap),
                    "seed {seed}: a keepalive {gap} ns after the last"
                );
                gaps.insert(gap);
            }
        }
        assert!(gaps.len() > 20, "keepalive gaps {gaps:?}");
    }

    /// The timers' jitter comes from a random number drawn for it, not from the probe's nonce,
    /// which the probe carries in the clear: two machines whose probes have the same nonce but
    /// draw other random numbers for their jitter time them differently.
    #[test]
    fn the_jitter_is_not_foreseeable_from_the_nonce() {
        let deadline = |jitter_random: u64| {
            let mut m = Plpmtud::new(LIMITS);
            let mut draws = [0x5eed_u64, jitter_random].into_iter();
            let probe = m
                .poll(0, || draws.next().unwrap_or(1))
                .expect("a probe at once");
            assert_eq!(probe.nonce, 0x5eed);
            m.next_deadline_ns().expect("its timeout")
        };
        assert_ne!(deadline(100), deadline(200));
    }

    /// With a machine per outer tuple, an acknowledgement is kept only in the slot of the
    /// machine whose outstanding probe it names: one for another tuple's probe, or for none,
    /// changes nothing there, a flood of them cannot push a real one out before its machine
    /// reads it, and a tuple out of use (or past the slots) keeps none.
    #[test]
    fn acknowledgements_reach_only_the_machine_whose_probe_they_name() {
        let shared = SharedPath::new(1448);
        let mut listen = Plpmtud::new(LIMITS);
        let mut zero = Plpmtud::new(LIMITS);
        let mut one = Plpmtud::new(LIMITS);
        listen.poll(0, || 11).unwrap();
        let p0 = zero.poll(0, || 22).unwrap();
        let p1 = one.poll(0, || 33).unwrap();
        shared.expect(&listen);
        shared.expect_on_tuple(0, Some(&zero));
        shared.expect_on_tuple(1, Some(&one));
        shared.post_ack(p0.nonce);
        for forged in 100..1000 {
            shared.post_ack(forged);
        }
        shared.run(&mut listen, MS);
        shared.feed_tuple_acks(1, &mut one, MS);
        assert!(
            !listen.peer_answers() && !one.peer_answers(),
            "tuple 0's acknowledgement moved no other machine"
        );
        shared.feed_tuple_acks(0, &mut zero, MS);
        assert!(zero.peer_answers(), "kept through the flood");
        shared.expect_on_tuple(1, None);
        shared.post_ack(p1.nonce);
        shared.feed_tuple_acks(1, &mut one, 2 * MS);
        assert!(!one.peer_answers(), "a tuple out of use keeps nothing");
        let mut far = Plpmtud::new(LIMITS);
        let pf = far.poll(0, || 44).unwrap();
        shared.expect_on_tuple(MACHINES, Some(&far));
        shared.post_ack(pf.nonce);
        shared.feed_tuple_acks(MACHINES, &mut far, MS);
        assert!(!far.peer_answers(), "no slot, nothing kept");
    }

    #[test]
    fn a_peer_that_never_answers_has_hints_taken_down_to_the_floor_only() {
        let mut path = Path::new(1500);
        path.answers = false;
        let mut m = Plpmtud::new(LIMITS);
        path.run(&mut m, 0, 100 * MS);
        assert!(!m.peer_answers());
        m.on_hint(552, 100 * MS);
        assert_eq!(m.working(), 1280);
        m.on_hint(1400, 101 * MS);
        assert_eq!(m.working(), 1280, "never raised by a hint");
        // Back to the largest size after the interval: a real limit would hint it down again.
        path.run(&mut m, 101 * MS, RAISE_INTERVAL_NS - 10 * MS);
        assert_eq!(m.working(), 1280);
        path.run(&mut m, RAISE_INTERVAL_NS + 91 * MS, 20 * MS);
        assert_eq!(m.working(), 1448);
        assert_eq!(m.counts().raised, 1);
    }

    #[test]
    fn a_local_limit_is_trusted_at_once_and_raised_again_by_probing() {
        let mut path = Path::new(1500);
        let mut m = settled(&mut path);
        m.on_local_limit(1300, 100 * MS);
        assert_eq!(m.working(), 1300);
        // The device MTU went back up: the raise probe finds it.
        path.run(&mut m, 100 * MS, RAISE_INTERVAL_NS + 100 * MS);
        assert_eq!(m.working(), 1448);
        assert_eq!(m.counts().raised, 1);
    }

    #[test]
    fn a_path_that_grows_back_is_used_again_within_the_raise_interval() {
        let mut path = Path::new(1500);
        let mut m = settled(&mut path);
        path.path_mtu = 1400;
        m.on_hint(1400, 100 * MS);
        path.run(&mut m, 100 * MS, 10_000 * MS);
        assert!(m.working() <= 1400);
        path.path_mtu = 1500;
        path.run(&mut m, 10_100 * MS, RAISE_INTERVAL_NS + 1000 * MS);
        assert_eq!(m.working(), 1448);
    }

    #[test]
    fn forged_or_stale_acknowledgements_are_ignored() {
        let mut m = Plpmtud::new(LIMITS);
        let p = m.poll(0, || 77).unwrap();
        assert_eq!(p.nonce, 77);
        m.on_ack(78, MS);
        assert!(!m.peer_answers());
        m.on_ack(77, MS);
        assert!(m.peer_answers());
        m.on_ack(77, 2 * MS);
        assert_eq!(m.counts().probes_acked, 1, "once");
    }

    #[test]
    fn the_shared_state_carries_hints_acks_and_the_working_size() {
        let shared = SharedPath::new(1448);
        let mut m = Plpmtud::new(LIMITS);
        let p = m.poll(0, || 5).unwrap();
        shared.post_ack(p.nonce);
        shared.run(&mut m, 0);
        assert!(
            !m.peer_answers(),
            "an acknowledgement of no probe expected is not kept"
        );
        shared.expect(&m);
        shared.post_ack(p.nonce);
        shared.post_ack(p.nonce + 1);
        shared.post_hint(1400);
        shared.post_hint(1300);
        shared.run(&mut m, MS);
        assert!(m.peer_answers());
        assert_eq!(m.counts().hints, 1, "the smallest hint, once");
        shared.post_local_limit(1200);
        shared.run(&mut m, 2 * MS);
        assert_eq!(shared.working(), 1200);
    }

    #[test]
    fn a_loss_small_probes_share_is_not_the_paths_doing() {
        let mut path = Path::new(1500);
        let mut m = settled(&mut path);
        // A hint arrives while everything is lost (congestion, or the peer restarting).
        path.answers = false;
        m.on_hint(1280, 100 * MS);
        path.run(&mut m, 100 * MS, 5_000 * MS);
        assert_eq!(m.working(), 1448, "nothing concluded from a general loss");
        assert_eq!(m.counts().inconclusive, 1);
        assert_eq!(m.counts().lowered, 0);
        // And once packets get through again, a true hint is still acted on.
        path.answers = true;
        path.path_mtu = 1400;
        m.on_hint(1400, 5_100 * MS);
        path.run(&mut m, 5_100 * MS, 20_000 * MS);
        assert!(m.working() <= 1400, "{}", m.working());
    }

    #[test]
    fn the_egress_devices_mtu_is_taken_at_once_both_ways() {
        let mut path = Path::new(1500);
        let mut m = settled(&mut path);
        m.on_egress_mtu(1500, 100 * MS);
        assert_eq!(m.working(), 1448, "a larger device than the largest size");
        m.on_egress_mtu(1280, 200 * MS);
        assert_eq!(m.working(), 1280);
        assert_eq!(
            path.run(&mut m, 200 * MS, 1000 * MS),
            Vec::<usize>::new(),
            "nothing to probe: the device says so"
        );
        m.on_egress_mtu(1500, 1300 * MS);
        path.run(&mut m, 1300 * MS, 100 * MS);
        assert_eq!(m.working(), 1448, "raised as soon as the device grew");
    }
}
