//! Outer flow entropy: which outer 4-tuple an inner flow leaves with, and the exchange that makes
//! it safe for the peer's exact source check. PURE: no fd, no clock of its own.
//!
//! # Why
//! Every datagram between two relays used to carry one outer 4-tuple, so a receiving NIC's RSS
//! (and the underlay's ECMP, and any flow table keyed on it) put the whole tunnel on one queue,
//! one core and one path. The kernel's own UDP tunnels take the outer source port from a hash of
//! the inner flow (VXLAN, RFC 7348 section 5, `ip link ... vxlan srcport MIN MAX`; GUE and FOU
//! with `encap-sport auto`; RFC 8086 asks the same of GRE-in-UDP).
//!
//! # How
//! A relay sends from a few extra ports besides its listen port ([`tuples`]: the kernel's
//! ephemeral ones, or `--srcport MIN MAX`), and each flow from one of them, chosen by
//! [`tuple_for`], a hash of the inner flow key that is independent of `steer::flow_index`'s
//! choice of worker (so the flows of one worker spread over the tuples too). Every worker holds a
//! socket of its own on each of those ports (`SO_REUSEPORT`, send-only, connected to the peer):
//! nothing is shared, and a flow keeps its tuple even when it moves to another worker, as a flow
//! does once, when the first reply teaches the TUN's flow table where it belongs (see `steer`).
//! Datagrams still go to the peer's listen port, where its reuseport program steers them by the
//! inner flow, so a flow stays on one worker at both ends as before, and on one tuple.
//!
//! The receiver accepts datagrams only from the peer's address and its listen port, or one of
//! the exact ports the peer advertised and proved its own ([`SourcePorts::accepts`]): a port
//! the peer advertised is accepted only once a probe that echoes this relay's cookie (current or
//! previous; `wire::control`, kind 1) came *from that port*, and only while such probes keep
//! coming ([`TUPLE_CONFIRMED_FOR_NS`]; each extra tuple sends one at least every
//! [`REFRESH_INTERVAL_NS`]). From a port advertised but not proven, that probe alone is taken
//! (and acknowledged); anything else is dropped as `foreign_source`. Behind a NAT the peer
//! advertises the port numbers it holds before the NAT, which at the NAT's public address may be
//! another host's (a NAT neighbour, a CGNAT co-subscriber): they never prove themselves, since
//! the peer's probes arrive from other public ports, so nobody is let in by them. So a relay
//! sends from its extra
//! ports only once the peer acknowledged an advertisement of them that echoed the peer's cookie
//! (see the threat model below; `wire::control`, kind 3; its acknowledgement, kind 4, says
//! whether it was taken), sent
//! from the listen tuple ([`Advertiser`]); until then, and always toward a peer that never
//! answers (an older tunfwd, socat's TUN-to-UDP relay), it sends from the listen tuple alone.
//! And each extra tuple carries flows only while the peer acknowledges the path MTU probes sent
//! *from it* ([`SourcePorts::tuple_confirmed`]; a keepalive probe every [`REFRESH_INTERVAL_NS`]
//! when no other is due): a NAT or firewall that rewrites or drops the extra ports' datagrams
//! leaves those tuples unconfirmed, and their flows leave from the listen tuple
//! (`entropy_fallback_packets`). An advertisement is accepted only from the peer's listen port;
//! it expires unless refreshed, and the sender's session shows a restart, so a relay that
//! restarted is told the ports again at once.
//!
//! # Threat model: who can change the accepted ports
//! An attacker off the path who knows the tunnel's outer 4-tuple can send datagrams with the
//! peer's address and listen port (a blind spoofer), but sees nothing the relays send. An
//! advertisement proves it comes from the peer only by echoing this relay's cookie: a random
//! u64 ([`SourcePorts::cookie`], replaced every 2 to 4 minutes, the one before still taken, so
//! that one seen proves nothing for long: [`COOKIE_LIFETIME_NS`]) that this relay sends to the peer alone, in every
//! acknowledgement of an advertisement (kind 4). The advertiser takes a cookie only from an
//! acknowledgement that echoes the random nonce of one of its own advertisements, so a blind
//! spoofer can neither read a cookie nor plant one. A proven advertisement replaces the
//! accepted ports (removing those it no longer names), refreshes their lifetime and may show a
//! restart (a new session), and restarts are taken at most once per [`RESTART_INTERVAL_NS`]. An
//! unproven one (a restarted peer's first, which no longer knows the cookie, or a forgery) is
//! acknowledged, which hands the real peer the cookie (its advertiser sends again at once on
//! learning a new one, so a restart costs about one round trip; the acknowledgement says it was
//! not taken), and changes nothing: it can
//! neither add, remove nor replace the peer's ports, refresh their lifetime, nor signal a
//! restart. Were it allowed to add ports, another process on the peer's host (or behind the
//! same NAT address) could have one of its own ports accepted with a single spoofed datagram
//! from the listen port, and then send as the peer without spoofing. An attacker on the path sees the cookie, and can
//! drop the tunnel's datagrams besides: that is out of scope, as for the raw format in general.
//! What it can do lasts only as long as it keeps sending: whenever the peer restarts or is
//! forgotten (its ports expired), this relay replaces its cookie and takes the one before no
//! more, so no advertisement of a run that ended proves anything again (a replay of one would
//! put the dead run's ports back), and a forged session, once taken, is undone by the real
//! peer's next advertisement, which the new cookie in its answer lets it prove at once. (A list
//! of the peer's retired sessions did this once, and let one forged session lock the live one
//! out for good.)
//!
//! An unproven advertisement that names a session other than the peer's (a restarted peer's
//! first, which holds none of this relay's ports) makes this relay advertise at once, at most
//! once per [`RESTART_HINT_INTERVAL_NS`] and only toward a peer that answered before, and does
//! nothing else: its ports stay in use, the back-off of unanswered advertisements is left as it
//! was, so a blind forger of such hints costs one advertisement a second at most. A real
//! restart shows unforgeably in the answer (matched by its random nonce): it hands a new cookie,
//! which takes this relay's ports out of use until the advertisement that echoes it is
//! acknowledged. The extra tuples' path MTU machines are then paused, not discarded (what they
//! know of the path holds), and each tuple carries flows again once a probe sent from it after
//! that, echoing the new cookie, is acknowledged.
//!
//! After this relay replaces its cookie, the peer's next refresh still echoes the one before:
//! it is taken, and acknowledged as taken with the new cookie, so the peer keeps its ports in use
//! and echoes the new one in an advertisement soon after.
//!
//! The peer's ports are published in two bitmaps of atomics that every worker reads without a
//! lock (advertised, and accepted: one load per receive, two from a port not accepted);
//! whichever worker takes an advertisement or a proving probe writes them, under a lock that
//! only writers take (a control message, a few a minute per tuple). The advertiser times the
//! accepted ports out by its own clock.

use crate::wire::control::{Advertisement, MAX_PORTS};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// How often an acknowledged advertisement is sent again (the peer's view expires without it),
/// and how often an extra tuple's machine sends a keepalive probe when no other is due.
pub const REFRESH_INTERVAL_NS: u64 = 2_000_000_000;
/// How soon an unacknowledged one is tried again: this, doubling with each try up to
/// [`MAX_RETRY_INTERVAL_NS`], so that a peer that is down or does not know advertisements gets
/// one every ten seconds, as it gets the path MTU machine's hellos.
pub const RETRY_INTERVAL_NS: u64 = 1_000_000_000;
pub const MAX_RETRY_INTERVAL_NS: u64 = 10_000_000_000;
/// How soon an advertisement that found no free control slot goes again: slots free as their
/// sends complete, within a batch or two.
pub const UNSENT_RETRY_NS: u64 = 1_000_000;
/// How long an acknowledgement keeps the extra ports in use: three refreshes. A peer that stops
/// answering (it went away, or was replaced by one that does not know advertisements) gets the
/// listen tuple alone again after this.
pub const IN_USE_FOR_NS: u64 = 3 * REFRESH_INTERVAL_NS;
/// How long an acknowledged probe from an extra tuple keeps the tuple carrying flows: three
/// keepalives, each tried [`super::plpmtud::MAX_PROBES`] times.
pub const TUPLE_CONFIRMED_FOR_NS: u64 = 3 * REFRESH_INTERVAL_NS;
/// How long the peer's advertised ports are accepted without a fresh advertisement: four of its
/// refreshes. A port the peer no longer holds could be bound by anyone on its host.
pub const PEER_PORTS_FOR_NS: u64 = 4 * REFRESH_INTERVAL_NS;
/// A relay's cookie is replaced by a fresh random one after this, plus a random part of as much
/// again (2 to 4 minutes), and the one before is still taken until the next replacement: a
/// cookie seen once (by an attacker on the path, in one acknowledgement) proves advertisements
/// for 8 minutes at most, not for the life of the process.
pub const COOKIE_LIFETIME_NS: u64 = 120_000_000_000;
/// A restart of the peer (a proven advertisement with a new session) is acted on at most this
/// often; one that comes sooner waits.
pub const RESTART_INTERVAL_NS: u64 = 10_000_000_000;
/// A sign that the peer may have restarted, which proves nothing (an advertisement without the
/// cookie that names another session than the peer's), makes this relay advertise at once at
/// most this often, and nothing else: it may be forged, so what it can cost is bounded to one
/// advertisement a second, to the peer's address.
pub const RESTART_HINT_INTERVAL_NS: u64 = 1_000_000_000;
/// Extra outer tuples a relay sends from, at most: as many receive queues as a NIC's RSS
/// commonly has, few enough that every worker can hold a socket for each. An advertisement names
/// at most this many ports (`wire::control::MAX_PORTS`).
pub const MAX_TUPLES: usize = MAX_PORTS;
/// Extra sockets all workers together may hold (each worker holds one per tuple).
const SOCKET_BUDGET: usize = 512;

/// Extra tuples a relay of `queues` workers sends from: [`MAX_TUPLES`], fewer when each of that
/// many workers holding a socket per tuple would pass [`SOCKET_BUDGET`] (8 at 64 queues, 2 at
/// 256).
pub fn tuples(queues: usize) -> usize {
    (SOCKET_BUDGET / queues.max(1)).clamp(1, MAX_TUPLES)
}

/// The ports of `--srcport MIN MAX` a relay of `queues` workers sends from: [`tuples`] of them,
/// spread evenly over the range (all of it, if it is smaller).
pub fn ports_in_range(range: (u16, u16), queues: usize) -> Vec<u16> {
    let (min, max) = (usize::from(range.0), usize::from(range.1.max(range.0)));
    let size = max - min + 1;
    let count = tuples(queues).min(size);
    (0..count)
        .map(|i| (min + i * size / count) as u16)
        .collect()
}

/// Which of the relay's `sockets` extra tuples the flow with `flow_key` leaves from (0-based),
/// on whichever worker sends it, or `None` when there are none. A murmur3 finalizer of the key,
/// reduced by multiply-high: a different function of the key than `steer::flow_index`'s
/// `(key * GOLDEN) >> 16 % workers`, so the flows one worker owns spread over all the tuples.
/// Anything without a flow key (not IPv4 or IPv6) takes tuple 0.
pub fn tuple_for(flow_key: Option<u32>, sockets: usize) -> Option<usize> {
    if sockets == 0 {
        return None;
    }
    let Some(mut h) = flow_key else {
        return Some(0);
    };
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    Some(((u64::from(h) * sockets as u64) >> 32) as usize)
}

/// Bits in [`SourcePorts`]' bitmap of the peer's ports: one per port number.
const PORT_WORDS: usize = 65536 / 64;
// One bit per extra tuple in `SourcePorts::confirmed`.
const _: () = assert!(MAX_TUPLES <= 32);

/// What one relay's workers share about outer entropy: its own extra ports (fixed at setup),
/// whether the peer acknowledged them, which of them the peer is shown to receive, the ports the
/// peer advertised, and the path MTU each extra tuple works to. Atomics only on the paths
/// workers read.
#[derive(Debug)]
pub struct SourcePorts {
    /// The relay's extra ports: tuple `k` (`Socket::Extra(k)` in every worker) is `own[k]`.
    own: Box<[u16]>,
    /// Random, for this run: it tells the peer that a restart happened.
    session: u64,
    /// Random, never 0, replaced every few minutes ([`COOKIE_LIFETIME_NS`]): sent to the peer in
    /// acknowledgements of its advertisements, which prove their origin by echoing it or the
    /// one before, `previous_cookie` (0: none yet) (see the threat model above).
    cookie: AtomicU64,
    previous_cookie: AtomicU64,
    /// The peer acknowledged an advertisement of `own`: workers send from them.
    in_use: AtomicBool,
    /// Per extra tuple, one bit: the peer acknowledged a probe sent from it lately
    /// ([`TUPLE_CONFIRMED_FOR_NS`]), so flows hashed to it leave from it.
    confirmed: AtomicU32,
    /// The nonce of the latest acknowledgement of an advertisement the advertiser waits for
    /// (0: none yet).
    acked_nonce: AtomicU64,
    /// Whether the peer said it took that advertisement.
    acked_taken: AtomicBool,
    /// The nonces of the advertiser's latest two advertisements (0: none): only their
    /// acknowledgements are kept, so a forged one cannot overwrite a real one before the
    /// advertiser reads it (as `plpmtud::SharedPath` does for probes).
    expected_nonces: [AtomicU64; 2],
    /// The peer's cookie, from an acknowledgement the advertiser waited for (0: none yet): this
    /// relay's advertisements echo it.
    peer_cookie: AtomicU64,
    /// The peer's advertised ports, one bit per port number: a datagram from one of them is
    /// taken only if it is a probe that echoes the cookie ([`SourcePorts::advertised`]).
    advertised_bits: Box<[AtomicU64]>,
    /// The peer's accepted ports, one bit per port number: advertised, and a probe that echoed
    /// the cookie came from it lately ([`SourcePorts::accepts`]).
    peer_bits: Box<[AtomicU64]>,
    /// Writers only: the ports `advertised_bits` holds, how many proving probes came from each,
    /// and the peer's session.
    peer: Mutex<PeerPorts>,
    /// Probes that echoed the cookie, from any advertised port: the advertiser notes a change
    /// to time the ports' acceptance out.
    probes_heard: AtomicU64,
    /// Advertisements that renewed the peer's ports: the advertiser notes a change to time them
    /// out.
    peer_refreshes: AtomicU64,
    /// The peer's session changed (it restarted): advertise again. Taken by the advertiser, at
    /// most once per [`RESTART_INTERVAL_NS`].
    peer_restarted: AtomicBool,
    /// An unproven advertisement named a session other than the peer's (it may have
    /// restarted, and then drops whatever this relay sends from its extra ports): advertise
    /// again, whose answer tells. Taken by the advertiser, at most once per
    /// [`RESTART_HINT_INTERVAL_NS`].
    peer_restart_hinted: AtomicBool,
    /// A run of the peer's ended ([`SourcePorts::run_ended`]): replace the cookie at the
    /// advertiser's next poll, and how many runs ended, for the advertiser's view.
    replace_cookie_due: AtomicBool,
    peer_runs: AtomicU64,
    /// Per extra tuple, its path MTU machine's working size; `u32::MAX` while it carries no
    /// flows (not in use, or not confirmed).
    tuple_working: Box<[AtomicU32]>,
    /// Per extra tuple, the smallest ICMP hint any worker's socket on it reported, for the
    /// worker that runs the tuple's machine; `u32::MAX` for none.
    tuple_hints: Box<[AtomicU32]>,
}

#[derive(Debug, Default)]
struct PeerPorts {
    ports: Vec<u16>,
    /// Per port in `ports`: probes that echoed the cookie heard from it.
    heard: Vec<u64>,
    session: Option<u64>,
}

/// The advertiser's view of one of the peer's ports: the count of proving probes from it when
/// last looked at, and when (the advertiser's clock) it last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Heard {
    port: u16,
    count: u64,
    at_ns: u64,
}

/// What taking a peer's advertisement did ([`SourcePorts::accept_peer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAdvertisement {
    /// It echoed this relay's cookie: its ports replaced the peer's; `restarted` if its session
    /// is another than before (the first seen is no restart).
    Proven { restarted: bool },
    /// It did not: nothing changed (it is only answered, with the cookie).
    Unproven,
}

impl SourcePorts {
    /// `own` are this relay's extra ports (at most [`MAX_TUPLES`]: more are left out);
    /// `session` and `cookie` random numbers for this run (a cookie of 0 is taken as 1).
    pub fn new(own: &[u16], session: u64, cookie: u64) -> SourcePorts {
        let own: Box<[u16]> = own.iter().copied().take(MAX_TUPLES).collect();
        SourcePorts {
            tuple_working: (0..own.len()).map(|_| AtomicU32::new(u32::MAX)).collect(),
            tuple_hints: (0..own.len()).map(|_| AtomicU32::new(u32::MAX)).collect(),
            own,
            session,
            cookie: AtomicU64::new(cookie.max(1)),
            previous_cookie: AtomicU64::new(0),
            in_use: AtomicBool::new(false),
            confirmed: AtomicU32::new(0),
            acked_nonce: AtomicU64::new(0),
            acked_taken: AtomicBool::new(false),
            expected_nonces: [AtomicU64::new(0), AtomicU64::new(0)],
            peer_cookie: AtomicU64::new(0),
            advertised_bits: (0..PORT_WORDS).map(|_| AtomicU64::new(0)).collect(),
            peer_bits: (0..PORT_WORDS).map(|_| AtomicU64::new(0)).collect(),
            peer: Mutex::new(PeerPorts::default()),
            probes_heard: AtomicU64::new(0),
            peer_refreshes: AtomicU64::new(0),
            peer_restarted: AtomicBool::new(false),
            peer_restart_hinted: AtomicBool::new(false),
            replace_cookie_due: AtomicBool::new(false),
            peer_runs: AtomicU64::new(0),
        }
    }

    /// This relay's extra ports.
    pub fn own(&self) -> &[u16] {
        &self.own
    }

    pub fn session(&self) -> u64 {
        self.session
    }

    /// This relay's cookie, for its acknowledgements of the peer's advertisements.
    pub fn cookie(&self) -> u64 {
        self.cookie.load(Ordering::Relaxed)
    }

    /// Whether an advertisement that echoes `echo` proves it comes from the peer: `echo` is
    /// this relay's cookie, or the one before it (the peer may not have seen the new one yet).
    pub fn proves(&self, echo: u64) -> bool {
        echo != 0
            && (echo == self.cookie.load(Ordering::Relaxed)
                || echo == self.previous_cookie.load(Ordering::Relaxed))
    }

    /// Replaces this relay's cookie with `fresh`; the one it replaces is still taken until the
    /// next replacement. A `fresh` of 0 (the kernel gave no random number:
    /// `sys::random::nonce_or_none`) replaces nothing: a constant in its place would be a cookie
    /// anyone could guess, and the current one stays as unguessable as it was.
    fn rotate_cookie(&self, fresh: u64) {
        if fresh == 0 {
            return;
        }
        let before = self.cookie.swap(fresh, Ordering::Relaxed);
        self.previous_cookie.store(before, Ordering::Relaxed);
    }

    /// The length of this relay's advertisement datagram.
    pub fn advertisement_len(&self) -> usize {
        crate::wire::control::ADVERTISEMENT_FIXED_LEN + 2 * self.own.len()
    }

    /// Whether the peer acknowledged this relay's ports, so that workers send from them.
    pub fn in_use(&self) -> bool {
        self.in_use.load(Ordering::Acquire)
    }

    fn set_in_use(&self, in_use: bool) {
        self.in_use.store(in_use, Ordering::Release);
    }

    /// Whether extra tuple `index` carries flows: the peer acknowledged a probe sent from it
    /// lately.
    pub fn tuple_confirmed(&self, index: usize) -> bool {
        index < 32 && self.confirmed.load(Ordering::Relaxed) & (1 << index) != 0
    }

    /// Says whether extra tuple `index` carries flows (its machine's worker, after each run).
    pub fn set_tuple_confirmed(&self, index: usize, confirmed: bool) {
        if index < self.own.len() {
            if confirmed {
                self.confirmed.fetch_or(1 << index, Ordering::Relaxed);
            } else {
                self.confirmed.fetch_and(!(1 << index), Ordering::Relaxed);
            }
        }
    }

    /// How many extra tuples carry flows now.
    pub fn confirmed_tuples(&self) -> u32 {
        self.confirmed.load(Ordering::Relaxed).count_ones()
    }

    /// Whether a datagram from the peer's address and source port `port` comes from a port the
    /// peer advertised and proved its own lately, by probes that echo the cookie from it (its
    /// listen port is checked by the caller).
    pub fn accepts(&self, port: u16) -> bool {
        port != 0 && bit_of(&self.peer_bits, port)
    }

    /// Whether the peer advertised `port` (accepted or not): a probe that echoes the cookie is
    /// taken from it, nothing else until such a probe came ([`SourcePorts::hear_probe`]).
    pub fn advertised(&self, port: u16) -> bool {
        port != 0 && bit_of(&self.advertised_bits, port)
    }

    /// A probe that echoed the cookie came from the peer's address and advertised port `port`:
    /// the port is the peer's, and accepted until such probes stop
    /// ([`TUPLE_CONFIRMED_FOR_NS`]; the advertiser times it out). Returns whether `port` was
    /// advertised.
    pub fn hear_probe(&self, port: u16) -> bool {
        let mut peer = self.peer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = peer.ports.iter().position(|p| *p == port) else {
            return false;
        };
        peer.heard[i] += 1;
        set_bit(&self.peer_bits, port, true);
        drop(peer);
        self.probes_heard.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The advertiser's look at which of the peer's ports are still heard from at `now_ns`
    /// (`seen`: its view, brought up to date): a port with no proving probe for
    /// [`TUPLE_CONFIRMED_FOR_NS`] is accepted no more. Returns when the next one would expire.
    fn expire_unheard(&self, seen: &mut Vec<Heard>, now_ns: u64) -> Option<u64> {
        let peer = self.peer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = None::<u64>;
        let mut fresh = Vec::with_capacity(peer.ports.len());
        for (port, count) in peer.ports.iter().zip(&peer.heard) {
            if *count == 0 {
                continue;
            }
            let at_ns = match seen.iter().find(|h| h.port == *port) {
                Some(h) if h.count == *count => h.at_ns,
                _ => now_ns,
            };
            let until = at_ns + TUPLE_CONFIRMED_FOR_NS;
            if now_ns > until {
                set_bit(&self.peer_bits, *port, false);
            } else {
                next = Some(next.map_or(until + 1, |n| n.min(until + 1)));
            }
            fresh.push(Heard {
                port: *port,
                count: *count,
                at_ns,
            });
        }
        *seen = fresh;
        next
    }

    /// Takes the peer's advertisement (from its listen port): one that echoes this relay's
    /// cookie replaces the ports the peer advertised before, and tells whether the peer
    /// restarted; one that does not changes nothing (see the threat model above).
    pub fn accept_peer(&self, advertisement: &Advertisement) -> PeerAdvertisement {
        let mut peer = self.peer.lock().unwrap_or_else(|e| e.into_inner());
        if !self.proves(advertisement.echo) {
            if peer.session != Some(advertisement.session) {
                self.peer_restart_hinted.store(true, Ordering::Relaxed);
            }
            return PeerAdvertisement::Unproven;
        }
        let new = &advertisement.ports()[..advertisement.ports().len().min(MAX_PORTS)];
        let restarted = peer
            .session
            .replace(advertisement.session)
            .is_some_and(|before| before != advertisement.session);
        if restarted {
            self.run_ended();
        }
        // A port is accepted only once a probe that echoes the cookie came from it: one that
        // stays keeps what it proved, unless the peer restarted (its sockets are new).
        let heard: Vec<u64> = new
            .iter()
            .map(|port| match peer.ports.iter().position(|p| p == port) {
                Some(i) if !restarted => peer.heard[i],
                _ => 0,
            })
            .collect();
        // New bits first, then the old ones that went: a port in both is never unset.
        for port in new {
            set_bit(&self.advertised_bits, *port, true);
        }
        for (port, count) in new.iter().zip(&heard) {
            if *count == 0 {
                set_bit(&self.peer_bits, *port, false);
            }
        }
        for port in std::mem::take(&mut peer.ports) {
            if !new.contains(&port) {
                set_bit(&self.peer_bits, port, false);
                set_bit(&self.advertised_bits, port, false);
            }
        }
        peer.ports = new.to_vec();
        peer.heard = heard;
        drop(peer);
        self.peer_refreshes.fetch_add(1, Ordering::Relaxed);
        if restarted {
            self.peer_restarted.store(true, Ordering::Relaxed);
        }
        PeerAdvertisement::Proven { restarted }
    }

    /// Forgets the peer's ports (they expired, or the peer moved).
    pub fn forget_peer(&self) {
        let mut peer = self.peer.lock().unwrap_or_else(|e| e.into_inner());
        for port in std::mem::take(&mut peer.ports) {
            set_bit(&self.peer_bits, port, false);
            set_bit(&self.advertised_bits, port, false);
        }
        peer.heard.clear();
        peer.session = None;
        self.run_ended();
    }

    /// The peer's run that this relay knew ended (it restarted, or was forgotten): the
    /// advertiser replaces the cookie at its next poll and takes the one before no more (see
    /// the threat model), and starts its view of the ports heard from anew (their counts
    /// start again at 0, and a stale count equal to a new one would keep a stale time).
    fn run_ended(&self) {
        self.replace_cookie_due.store(true, Ordering::Relaxed);
        self.peer_runs.fetch_add(1, Ordering::Relaxed);
    }

    /// If a run of the peer's ended since the last call ([`SourcePorts::run_ended`]), replaces
    /// this relay's cookie with a fresh one from `fresh` and takes the one before no more. The
    /// advertiser calls it at each poll; the worker that took a proven advertisement showing a
    /// restart calls it before it answers, so that the answer hands the restarted peer the
    /// cookie in use from then on, not the ended run's (whose replacement, at the advertiser's
    /// next poll, left the restarted peer's probes echoing a cookie that proves nothing, and its
    /// tuples unconfirmed until its next refresh learned the new one: about a second).
    pub fn replace_cookie_if_due(&self, mut fresh: impl FnMut() -> u64) {
        if self.replace_cookie_due.swap(false, Ordering::Relaxed) {
            self.replace_cookie(fresh());
        }
    }

    /// Replaces this relay's cookie with `fresh` and takes the one before no more (a run of the
    /// peer's ended). A `fresh` of 0 (no random number) keeps the current one, as
    /// `rotate_cookie` does, and drops only the one before.
    fn replace_cookie(&self, fresh: u64) {
        if fresh != 0 {
            self.cookie.store(fresh, Ordering::Relaxed);
        }
        self.previous_cookie.store(0, Ordering::Relaxed);
    }

    /// The ports the peer advertised, as accepted now.
    pub fn peer_ports(&self) -> Vec<u16> {
        let peer = self.peer.lock().unwrap_or_else(|e| e.into_inner());
        peer.ports.clone()
    }

    /// The peer's cookie as this relay's advertiser learned it (0: none yet): the probes sent
    /// from the extra tuples echo it, so that the peer accepts the tuple's port.
    pub fn peer_cookie(&self) -> u64 {
        self.peer_cookie.load(Ordering::Relaxed)
    }

    /// The peer acknowledged the advertisement with `nonce`, handing its `cookie`, and said
    /// whether it `taken` it (any worker may see it): kept only if it is one of the two the
    /// advertiser waits for. Returns whether it was.
    pub fn post_ack(&self, nonce: u64, cookie: u64, taken: bool) -> bool {
        let expected = nonce != 0
            && self
                .expected_nonces
                .iter()
                .any(|expected| expected.load(Ordering::Relaxed) == nonce);
        if expected {
            if cookie != 0 {
                self.peer_cookie.store(cookie, Ordering::Relaxed);
            }
            self.acked_taken.store(taken, Ordering::Relaxed);
            self.acked_nonce.store(nonce, Ordering::Relaxed);
        }
        expected
    }

    /// An ICMP error about extra tuple `index` claims the path takes `mtu` bytes (any worker's
    /// socket on the tuple may hold it: the kernel picks one).
    pub fn post_tuple_hint(&self, index: usize, mtu: u32) {
        if let Some(slot) = self.tuple_hints.get(index) {
            slot.fetch_min(mtu, Ordering::Relaxed);
        }
    }

    /// Takes the smallest hint posted about tuple `index` since the last take.
    pub fn take_tuple_hint(&self, index: usize) -> Option<u32> {
        let hint = self
            .tuple_hints
            .get(index)?
            .swap(u32::MAX, Ordering::Relaxed);
        (hint != u32::MAX).then_some(hint)
    }

    /// Publishes extra tuple `index`'s working path MTU (`None`: it carries no flows).
    pub fn publish_tuple_working(&self, index: usize, working: Option<usize>) {
        if let Some(slot) = self.tuple_working.get(index) {
            let value = working.map_or(u32::MAX, |w| w as u32);
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// The smallest working size of the extra tuples that carry flows, if any: every flow works
    /// to the smallest path any of them was shown to take, since a flow's tuple is not known when
    /// its packets are read and measured against the inner MTU. A tuple not confirmed carries
    /// nothing, so what its machine believes (before its first answer, or with its datagrams
    /// lost) pulls no flow down.
    pub fn smallest_tuple_working(&self) -> Option<usize> {
        self.tuple_working
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .min()
            .filter(|w| *w != u32::MAX)
            .map(|w| w as usize)
    }
}

fn bit_of(bits: &[AtomicU64], port: u16) -> bool {
    bits[usize::from(port) / 64].load(Ordering::Acquire) & (1 << (port % 64)) != 0
}

fn set_bit(bits: &[AtomicU64], port: u16, on: bool) {
    let bit = 1u64 << (port % 64);
    let word = &bits[usize::from(port) / 64];
    if on {
        word.fetch_or(bit, Ordering::Release);
    } else {
        word.fetch_and(!bit, Ordering::Release);
    }
}

/// The wait before the next refresh of an acknowledged advertisement: [`REFRESH_INTERVAL_NS`]
/// give or take a quarter, uniformly, from `random` (a random number of its own: not the
/// advertisement's nonce, which an observer on the path reads), so that
/// refreshes cannot be foreseen to the nanosecond nor fall into step with other timers (RFC 3550
/// section 6.2 randomizes its reports' interval for that reason). At most 2.5 s: three of them still fit in
/// [`IN_USE_FOR_NS`] and [`PEER_PORTS_FOR_NS`].
fn refresh_interval_ns(random: u64) -> u64 {
    const SPREAD_NS: u64 = REFRESH_INTERVAL_NS / 2;
    REFRESH_INTERVAL_NS - SPREAD_NS / 2 + random % (SPREAD_NS + 1)
}

/// What the advertiser asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdvertiserEvent {
    /// Nothing changed.
    None,
    /// The extra ports went into use (the peer acknowledged them) or out of it.
    InUse(bool),
}

/// The one advertiser of a relay (it runs in one worker): sends the relay's ports to the peer,
/// from the listen tuple, until acknowledged and then every [`REFRESH_INTERVAL_NS`]; puts them
/// in use when acknowledged and out of use when acknowledgements stop; and lets the peer's
/// ports expire when the peer stops refreshing them.
#[derive(Debug, Clone)]
pub struct Advertiser {
    /// The latest advertisement's nonce (0: none sent yet).
    nonce: u64,
    /// The one before, whose acknowledgement may still be on its way.
    previous_nonce: u64,
    /// The peer's cookie the latest advertisement echoed.
    echoed: u64,
    /// The peer's cookie the one before echoed.
    previous_echoed: u64,
    next_send_ns: u64,
    /// The wait before the next try while unacknowledged.
    retry_ns: u64,
    /// `retry_ns` before the latest unacknowledged send doubled it.
    retry_before_ns: u64,
    acked_at_ns: Option<u64>,
    /// The peer's refresh count when last looked at, and when it changed.
    peer_refreshes_seen: u64,
    peer_accepted_at_ns: Option<u64>,
    /// When a restart of the peer was last acted on.
    restart_at_ns: Option<u64>,
    /// When a hint of one was last acted on.
    restart_hint_at_ns: Option<u64>,
    /// When this relay's cookie is replaced next (`None`: not set yet, at the first poll).
    rotate_cookie_at_ns: Option<u64>,
    /// The peer's ports heard from ([`SourcePorts::expire_unheard`]), the count of proving
    /// probes when last looked, and when the next of them expires.
    heard: Vec<Heard>,
    probes_heard_seen: u64,
    heard_expiry_ns: Option<u64>,
    /// The count of the peer's runs that ended when last looked ([`SourcePorts::run_ended`]).
    peer_runs_seen: u64,
    in_use: bool,
    /// Advertisements sent, and acknowledged; restarts of the peer acted on.
    pub sent: u64,
    pub acked: u64,
    pub restarts: u64,
}

impl Default for Advertiser {
    fn default() -> Self {
        Advertiser::new()
    }
}

impl Advertiser {
    pub fn new() -> Advertiser {
        Advertiser {
            nonce: 0,
            previous_nonce: 0,
            echoed: 0,
            previous_echoed: 0,
            next_send_ns: 0,
            retry_ns: RETRY_INTERVAL_NS,
            retry_before_ns: RETRY_INTERVAL_NS,
            acked_at_ns: None,
            peer_refreshes_seen: 0,
            peer_accepted_at_ns: None,
            restart_at_ns: None,
            restart_hint_at_ns: None,
            rotate_cookie_at_ns: None,
            heard: Vec::new(),
            probes_heard_seen: 0,
            heard_expiry_ns: None,
            peer_runs_seen: 0,
            in_use: false,
            sent: 0,
            acked: 0,
            restarts: 0,
        }
    }

    /// Whether a restart of the peer may be acted on at `now_ns`.
    fn restart_allowed(&self, now_ns: u64) -> bool {
        self.restart_at_ns
            .is_none_or(|at| now_ns >= at + RESTART_INTERVAL_NS)
    }

    /// Runs what is due at `now_ns` against the shared state: takes an acknowledgement, expires
    /// the ports in use or the peer's, and returns the advertisement to send now, if one is due
    /// (`nonce` is asked for fresh random numbers). Also says when the ports in use changed, and
    /// replaces this relay's cookie when its time came.
    pub fn poll(
        &mut self,
        shared: &SourcePorts,
        now_ns: u64,
        mut nonce: impl FnMut() -> u64,
    ) -> (Option<Advertisement>, AdvertiserEvent) {
        match self.rotate_cookie_at_ns {
            Some(at) if now_ns >= at => {
                shared.rotate_cookie(nonce());
                self.rotate_cookie_at_ns = None;
            }
            _ => {}
        }
        if self.rotate_cookie_at_ns.is_none() {
            self.rotate_cookie_at_ns =
                Some(now_ns + COOKIE_LIFETIME_NS + nonce() % COOKIE_LIFETIME_NS);
        }
        let acked = shared.acked_nonce.swap(0, Ordering::Relaxed);
        if acked != 0 && (acked == self.nonce || acked == self.previous_nonce) {
            let echoed = if acked == self.nonce {
                self.echoed
            } else {
                self.previous_echoed
            };
            self.acked += 1;
            let changed = shared.peer_cookie.load(Ordering::Relaxed) != echoed;
            let taken = shared.acked_taken.load(Ordering::Relaxed);
            if taken || changed {
                self.retry_ns = RETRY_INTERVAL_NS;
            }
            if taken {
                // The peer took its ports. If it answered with another cookie than the one
                // echoed (it replaced its cookie, and still takes the one before), echo the
                // new one soon: the ports stay in use meanwhile.
                self.acked_at_ns = Some(now_ns);
                if changed {
                    self.next_send_ns = self.next_send_ns.min(now_ns + UNSENT_RETRY_NS);
                }
            } else {
                // Answered, not taken (the peer takes only an advertisement that echoes its
                // cookie, which this answer carried): prove this relay's ports at once, and
                // use them only once that one is acknowledged. Not taken under ports in use
                // (the peer restarted, holds none of them, and hands a new cookie: an answer
                // no blind spoofer can forge, since it echoes this advertisement's random
                // nonce) takes them out of use until then.
                self.acked_at_ns = None;
                if changed {
                    self.next_send_ns = now_ns;
                }
                // Not taken though it echoed the cookie the answer hands again: nothing new to
                // prove with (a peer that refuses it, or one from before the taken flag, whose
                // answers all read as not taken), so it counts as unanswered and the retries
                // keep backing off, not one advertisement a round trip.
            }
        }
        let runs = shared.peer_runs.load(Ordering::Relaxed);
        let run_ended = runs != self.peer_runs_seen;
        if run_ended {
            // The peer's counts of proving probes start again at 0: a stale count equal to a
            // new one would keep its stale time and expire a port just proven.
            self.peer_runs_seen = runs;
            self.heard.clear();
        }
        let refreshes = shared.peer_refreshes.load(Ordering::Relaxed);
        let probes_heard = shared.probes_heard.load(Ordering::Relaxed);
        if refreshes != self.peer_refreshes_seen
            || run_ended
            || probes_heard != self.probes_heard_seen
            || self.heard_expiry_ns.is_some_and(|at| now_ns >= at)
        {
            self.probes_heard_seen = probes_heard;
            self.heard_expiry_ns = shared.expire_unheard(&mut self.heard, now_ns);
        }
        if refreshes != self.peer_refreshes_seen {
            self.peer_refreshes_seen = refreshes;
            self.peer_accepted_at_ns = Some(now_ns);
        }
        if self
            .peer_accepted_at_ns
            .is_some_and(|at| now_ns.saturating_sub(at) > PEER_PORTS_FOR_NS)
        {
            self.peer_accepted_at_ns = None;
            shared.forget_peer();
        }
        shared.replace_cookie_if_due(&mut nonce);
        if self.restart_allowed(now_ns) && shared.peer_restarted.swap(false, Ordering::Relaxed) {
            // The peer knows nothing of ours: tell it now. Its acknowledgement, with its new
            // cookie, takes them out of use until the advertisement that echoes it is
            // acknowledged (above).
            self.restart_at_ns = Some(now_ns);
            self.restarts += 1;
            self.next_send_ns = now_ns;
            self.retry_ns = RETRY_INTERVAL_NS;
        }
        if self
            .restart_hint_at_ns
            .is_none_or(|at| now_ns >= at + RESTART_HINT_INTERVAL_NS)
            && shared.peer_restart_hinted.swap(false, Ordering::Relaxed)
            && shared.peer_cookie.load(Ordering::Relaxed) != 0
        {
            // Perhaps a restart (perhaps a forgery, which anyone can send): advertise now, and
            // nothing else. A restarted peer answers with a new cookie, which shows the restart
            // unforgeably (the answer echoes this advertisement's random nonce) and takes the
            // ports out of use then; a forgery costs one advertisement a second at most, the
            // ports stay in use and the back-off is left as it was. Toward a peer that never
            // answered (no cookie known), not even that.
            self.restart_hint_at_ns = Some(now_ns);
            self.next_send_ns = self.next_send_ns.min(now_ns);
        }
        if self
            .acked_at_ns
            .is_some_and(|at| now_ns.saturating_sub(at) > IN_USE_FOR_NS)
        {
            // Expired: it sets no deadline any more (one in the past would wake the worker at
            // once, again and again), and unanswered advertisements back off again.
            self.acked_at_ns = None;
        }
        let in_use = !shared.own().is_empty() && self.acked_at_ns.is_some();
        let event = if in_use != self.in_use {
            self.in_use = in_use;
            shared.set_in_use(in_use);
            AdvertiserEvent::InUse(in_use)
        } else {
            AdvertiserEvent::None
        };
        if now_ns < self.next_send_ns {
            return (None, event);
        }
        self.previous_nonce = self.nonce;
        self.previous_echoed = self.echoed;
        self.nonce = nonce();
        shared.expected_nonces[0].store(self.nonce, Ordering::Relaxed);
        shared.expected_nonces[1].store(self.previous_nonce, Ordering::Relaxed);
        self.sent += 1;
        self.next_send_ns = now_ns
            + if self.acked_at_ns.is_some() {
                refresh_interval_ns(nonce())
            } else {
                let wait = self.retry_ns;
                self.retry_before_ns = wait;
                self.retry_ns = (wait * 2).min(MAX_RETRY_INTERVAL_NS);
                wait
            };
        self.echoed = shared.peer_cookie.load(Ordering::Relaxed);
        let advertisement =
            Advertisement::new(self.nonce, shared.session(), self.echoed, shared.own());
        (advertisement, event)
    }

    /// The advertisement `poll` returned at `now_ns` could not be sent (every control slot of
    /// this relay's own was in flight): not counted as sent, its back-off undone, and another
    /// due after [`UNSENT_RETRY_NS`] (its nonce stays expected, as the previous one is).
    pub fn unsent(&mut self, now_ns: u64) {
        self.sent = self.sent.saturating_sub(1);
        if self.acked_at_ns.is_none() {
            self.retry_ns = self.retry_before_ns;
        }
        self.next_send_ns = now_ns + UNSENT_RETRY_NS;
    }

    /// When `poll` must run next at the latest.
    pub fn next_deadline_ns(&self, shared: &SourcePorts) -> u64 {
        let mut at = self.next_send_ns;
        if let Some(rotate) = self.rotate_cookie_at_ns {
            at = at.min(rotate);
        }
        if let Some(acked) = self.acked_at_ns {
            at = at.min(acked + IN_USE_FOR_NS + 1);
        }
        if let Some(accepted) = self.peer_accepted_at_ns {
            at = at.min(accepted + PEER_PORTS_FOR_NS + 1);
        }
        if let Some(expiry) = self.heard_expiry_ns {
            at = at.min(expiry);
        }
        if let Some(restart) = self.restart_at_ns
            && shared.peer_restarted.load(Ordering::Relaxed)
        {
            at = at.min(restart + RESTART_INTERVAL_NS);
        }
        if shared.peer_restart_hinted.load(Ordering::Relaxed) {
            at = at.min(
                self.restart_hint_at_ns
                    .map_or(0, |hint| hint + RESTART_HINT_INTERVAL_NS),
            );
        }
        at
    }

    /// The peer moved to another address: nothing it acknowledged or advertised holds.
    pub fn reset(&mut self, shared: &SourcePorts, now_ns: u64) {
        *self = Advertiser {
            rotate_cookie_at_ns: self.rotate_cookie_at_ns,
            sent: self.sent,
            acked: self.acked,
            restarts: self.restarts,
            next_send_ns: now_ns,
            ..Advertiser::new()
        };
        shared.set_in_use(false);
        shared.peer_cookie.store(0, Ordering::Relaxed);
        shared.forget_peer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steer;

    const S: u64 = 1_000_000_000;
    /// The latest a refresh is due after the one before (it is jittered).
    const LATEST_REFRESH_NS: u64 = REFRESH_INTERVAL_NS * 5 / 4;

    #[test]
    fn tuples_fit_the_socket_budget_and_a_port_range_is_spread_over() {
        assert_eq!(tuples(1), 16);
        assert_eq!(tuples(32), 16);
        assert_eq!(tuples(64), 8);
        assert_eq!(tuples(256), 2);
        for queues in [1, 4, 33, 64, 256] {
            assert!(tuples(queues) * queues <= SOCKET_BUDGET.max(queues));
        }
        assert_eq!(
            ports_in_range((40000, 40159), 4),
            (0..16).map(|i| 40000 + 10 * i).collect::<Vec<u16>>()
        );
        assert_eq!(ports_in_range((40000, 40002), 4), vec![40000, 40001, 40002]);
        assert_eq!(ports_in_range((65535, 65535), 1), vec![65535]);
        for queues in [1, 2, 4, 64, 256] {
            for range in [
                (1u16, 65535u16),
                (40000, 40010),
                (50000, 50000),
                (60000, 60300),
            ] {
                let ports = ports_in_range(range, queues);
                let mut unique = ports.clone();
                unique.sort_unstable();
                unique.dedup();
                assert_eq!(
                    unique.len(),
                    ports.len(),
                    "{range:?} at {queues}: no port twice"
                );
                assert!(ports.len() <= MAX_PORTS && !ports.is_empty());
                assert!(ports.iter().all(|p| (range.0..=range.1).contains(p)));
            }
        }
    }

    #[test]
    fn a_flow_keeps_its_tuple_and_flows_on_one_worker_spread_over_its_sockets() {
        assert_eq!(tuple_for(Some(7), 0), None);
        assert_eq!(tuple_for(None, 4), Some(0));
        for key in 0..1000u32 {
            assert_eq!(tuple_for(Some(key), 4), tuple_for(Some(key), 4), "stable");
            assert!(tuple_for(Some(key), 4).unwrap() < 4);
        }
        // Keys of one worker out of four (as the steering program picks): every socket of that
        // worker gets about a quarter of them. A choice that repeated steer's would put them
        // all on one.
        for workers in [2u32, 4, 8] {
            for worker in 0..workers {
                let mut per_socket = [0u32; 4];
                let mut keys = 0;
                for n in 0..200_000u32 {
                    let key = n.wrapping_mul(2_654_435_761) ^ (n >> 3);
                    if steer::flow_index(&ipv4_key_packet(key), workers) != worker {
                        continue;
                    }
                    keys += 1;
                    per_socket[tuple_for(steer::flow_key(&ipv4_key_packet(key)), 4).unwrap()] += 1;
                }
                let even = keys / 4;
                for (socket, n) in per_socket.iter().enumerate() {
                    assert!(
                        n.abs_diff(even) < even / 10,
                        "workers {workers}, worker {worker}: socket {socket} took {n} of {keys}"
                    );
                }
            }
        }
    }

    /// An IPv4 packet (not TCP or UDP) whose flow key is `key`: source `key`, destination 0.
    fn ipv4_key_packet(key: u32) -> [u8; 20] {
        let mut p = [0u8; 20];
        p[0] = 0x45;
        p[9] = 47;
        p[12..16].copy_from_slice(&key.to_be_bytes());
        p
    }

    /// This relay's cookie in the tests.
    const COOKIE: u64 = 0xc0c0;

    /// Puts the advertiser's ports in use at `now` as the peer, whose cookie is `peer_cookie`,
    /// would: it answers the first advertisement (which cannot echo its cookie) with the cookie,
    /// and takes the next one, which echoes it. Nonces `nonce` and `nonce + 1`.
    fn into_use(a: &mut Advertiser, shared: &SourcePorts, now: u64, peer_cookie: u64, nonce: u64) {
        let first = a.poll(shared, now, || nonce).0.expect("due");
        assert!(shared.post_ack(first.nonce, peer_cookie, false));
        let (proof, event) = a.poll(shared, now, || nonce + 1);
        assert_eq!(event, AdvertiserEvent::None, "answered, not taken");
        let proof = proof.expect("sent again at once");
        assert_eq!(proof.echo, peer_cookie);
        assert!(shared.post_ack(proof.nonce, peer_cookie, true));
        assert_eq!(a.poll(shared, now, || 0).1, AdvertiserEvent::InUse(true));
        assert!(shared.in_use());
    }

    /// A proven advertisement: it echoes [`COOKIE`].
    fn advertisement(ports: &[u16], session: u64) -> Advertisement {
        Advertisement::new(1, session, COOKIE, ports).unwrap()
    }

    #[test]
    fn the_accepted_set_is_exactly_the_latest_advertisement() {
        let shared = SourcePorts::new(&[], 1, COOKIE);
        assert!(!shared.advertised(40000));
        assert!(
            shared.accept_peer(&advertisement(&[40000, 40001, 65535], 9))
                == PeerAdvertisement::Proven { restarted: false },
            "the first"
        );
        for port in [40000, 40001, 65535] {
            assert!(shared.advertised(port), "{port}");
        }
        for port in [0, 1, 39999, 40002, 55555, 65534] {
            assert!(!shared.advertised(port), "{port}");
        }
        // The same session again: no restart. A new list replaces the old one.
        assert_eq!(
            shared.accept_peer(&advertisement(&[40001, 50000], 9)),
            PeerAdvertisement::Proven { restarted: false }
        );
        assert!(!shared.advertised(40000) && !shared.advertised(65535));
        assert!(shared.advertised(40001) && shared.advertised(50000));
        assert_eq!(shared.peer_ports(), vec![40001, 50000]);
        assert_eq!(
            shared.accept_peer(&advertisement(&[50000], 10)),
            PeerAdvertisement::Proven { restarted: true },
            "restart"
        );
        assert!(!shared.advertised(40001) && shared.advertised(50000));
        shared.forget_peer();
        assert!(!shared.advertised(50000));
        assert!(shared.peer_ports().is_empty());
        // An empty advertisement leaves nothing but the listen port (checked elsewhere).
        shared.accept_peer(&advertisement(&[1, 2], 11));
        shared.accept_peer(&advertisement(&[], 11));
        assert!(!shared.advertised(1) && !shared.advertised(2));
    }

    /// An advertised port is accepted only once a probe that echoes the cookie came from it
    /// (the relay takes that probe, and calls `hear_probe`), and only while such probes keep
    /// coming: behind a NAT the peer's advertised numbers may be anyone's at its address. A port
    /// the next advertisement keeps keeps what it proved; a restart of the peer forgets it.
    #[test]
    fn an_advertised_port_is_accepted_only_while_probes_that_echo_the_cookie_come_from_it() {
        let shared = SourcePorts::new(&[1], 1, COOKIE);
        let mut a = Advertiser::new();
        assert!(!shared.hear_probe(40000), "not advertised");
        assert!(!shared.accepts(40000) && !shared.advertised(40000));
        shared.accept_peer(&advertisement(&[40000, 40001], 9));
        assert!(shared.advertised(40000) && !shared.accepts(40000));
        assert!(!shared.accepts(40001));
        a.poll(&shared, S, || 3);
        assert!(shared.hear_probe(40000));
        assert!(shared.accepts(40000) && !shared.accepts(40001));
        a.poll(&shared, 2 * S, || 4);
        assert!(a.next_deadline_ns(&shared) <= 2 * S + TUPLE_CONFIRMED_FOR_NS + 1);
        // Kept alive by probes every 2 s (and the peer's refreshes, which keep what it proved).
        let mut now = 2 * S;
        for k in 0..10u64 {
            now += 2 * S;
            shared.accept_peer(&advertisement(&[40000, 40001], 9));
            shared.hear_probe(40000);
            a.poll(&shared, now, || 10 + k);
            assert!(shared.accepts(40000), "{k}");
        }
        // A refresh that keeps the port keeps it accepted.
        shared.accept_peer(&advertisement(&[40000], 9));
        assert!(shared.accepts(40000));
        a.poll(&shared, now, || 29);
        // The probes stop: accepted no more after TUPLE_CONFIRMED_FOR_NS.
        a.poll(&shared, now + TUPLE_CONFIRMED_FOR_NS, || 30);
        assert!(shared.accepts(40000), "not yet");
        assert!(a.next_deadline_ns(&shared) <= now + TUPLE_CONFIRMED_FOR_NS + 1);
        a.poll(&shared, now + TUPLE_CONFIRMED_FOR_NS + 1, || 31);
        assert!(!shared.accepts(40000), "expired");
        assert!(shared.advertised(40000), "still advertised");
        // A probe again: accepted again.
        now += TUPLE_CONFIRMED_FOR_NS + 2;
        shared.hear_probe(40000);
        a.poll(&shared, now, || 32);
        assert!(shared.accepts(40000));
        // The peer restarted (a new session, proven): its new sockets prove themselves anew.
        shared.accept_peer(&advertisement(&[40000], 10));
        assert!(shared.advertised(40000) && !shared.accepts(40000));
        shared.hear_probe(40000);
        shared.forget_peer();
        assert!(!shared.accepts(40000) && !shared.advertised(40000));
    }

    /// The refresh's jitter comes from a random number drawn for it, not from the
    /// advertisement's nonce, which the advertisement carries in the clear.
    #[test]
    fn the_refresh_jitter_is_not_foreseeable_from_the_nonce() {
        let shared = SourcePorts::new(&[40000], 1, COOKIE);
        let mut a = Advertiser::new();
        into_use(&mut a, &shared, 1, 0x9999, 5);
        let mut random = 1000u64;
        let mut fresh = || {
            random = random
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            random
        };
        let mut now = 1;
        let mut checked = 0;
        while checked < 5 {
            now += S / 100;
            if let Some(ad) = a.poll(&shared, now, &mut fresh).0 {
                shared.post_ack(ad.nonce, 0x9999, true);
                let gap = a.next_deadline_ns(&shared) - now;
                assert_ne!(
                    gap,
                    refresh_interval_ns(ad.nonce),
                    "foreseen from the nonce"
                );
                checked += 1;
            }
        }
    }

    /// When the kernel gives no random number (0), the cookie is not replaced: a constant in
    /// its place (it used to become 1) would be one anyone could echo.
    #[test]
    fn a_cookie_is_not_replaced_by_a_guessable_one() {
        let shared = SourcePorts::new(&[1], 1, COOKIE);
        shared.rotate_cookie(0);
        assert_eq!(shared.cookie(), COOKIE);
        assert!(!shared.proves(1));
        shared.rotate_cookie(0x5eed);
        assert_eq!(shared.cookie(), 0x5eed);
        assert!(shared.proves(COOKIE), "the one before still taken");
        // Through the advertiser: its rotation, with no random number, keeps the cookie.
        let mut a = Advertiser::new();
        a.poll(&shared, 0, || 0);
        a.poll(&shared, 5 * COOKIE_LIFETIME_NS, || 0);
        assert_eq!(shared.cookie(), 0x5eed);
    }

    /// A blind spoofer of the peer's address and listen port (or another process on the
    /// peer's host) cannot echo the cookie: its advertisements change nothing, neither add,
    /// remove nor replace a port, refresh the set's lifetime, nor tell of a restart.
    #[test]
    fn an_advertisement_without_the_cookie_changes_nothing() {
        let shared = SourcePorts::new(&[1], 1, COOKIE);
        let forged =
            |ports: &[u16], session| Advertisement::new(2, session, COOKIE ^ 1, ports).unwrap();
        assert_eq!(
            shared.accept_peer(&advertisement(&[40000, 40001], 9)),
            PeerAdvertisement::Proven { restarted: false }
        );
        let refreshes = shared.peer_refreshes.load(Ordering::Relaxed);
        for (ports, session) in [(&[50000][..], 666), (&[][..], 667), (&[40000][..], 9)] {
            assert_eq!(
                shared.accept_peer(&forged(ports, session)),
                PeerAdvertisement::Unproven
            );
        }
        assert_eq!(shared.peer_ports(), vec![40000, 40001]);
        assert!(!shared.accepts(50000), "a port added without the cookie");
        assert!(!shared.peer_restarted.load(Ordering::Relaxed), "no restart");
        assert_eq!(
            shared.peer_refreshes.load(Ordering::Relaxed),
            refreshes,
            "the set's lifetime refreshed without the cookie"
        );
        // With no set yet (a restarted relay), nothing either.
        let fresh = SourcePorts::new(&[1], 1, COOKIE);
        assert_eq!(
            fresh.accept_peer(&forged(&[50000], 666)),
            PeerAdvertisement::Unproven
        );
        assert!(fresh.peer_ports().is_empty());
    }

    /// The advertiser echoes the cookie the peer's acknowledgement carried, at once, and takes
    /// one only from an acknowledgement of its own advertisement.
    #[test]
    fn the_advertiser_echoes_the_cookie_of_a_real_acknowledgement_at_once() {
        let shared = SourcePorts::new(&[40000], 1, COOKIE);
        let mut a = Advertiser::new();
        let first = a.poll(&shared, 0, || 5).0.unwrap();
        assert_eq!(first.echo, 0, "none known yet");
        assert!(
            !shared.post_ack(77, 0xbad, true),
            "a forged nonce plants nothing"
        );
        assert!(a.poll(&shared, 1, || 6).0.is_none());
        assert!(shared.post_ack(first.nonce, 0x5eed, false));
        let (again, event) = a.poll(&shared, 2, || 7);
        assert_eq!(event, AdvertiserEvent::None, "the peer took nothing yet");
        assert!(!shared.in_use());
        assert_eq!(again.expect("sent at once").echo, 0x5eed);
        // Its acknowledgement, with the same cookie: in use, and refreshes keep their interval.
        shared.post_ack(7, 0x5eed, true);
        let (none, event) = a.poll(&shared, 3, || 8);
        assert!(none.is_none());
        assert_eq!(event, AdvertiserEvent::InUse(true));
        let refresh = a.poll(&shared, 2 + LATEST_REFRESH_NS, || 9).0.unwrap();
        assert_eq!(refresh.echo, 0x5eed);
    }

    /// A restart is acted on at once the first time, then at most once per
    /// RESTART_INTERVAL_NS: a peer that restarts again and again (or anything that could make
    /// it look so) makes no burst of advertisements and probes.
    #[test]
    fn restarts_are_rate_limited() {
        let shared = SourcePorts::new(&[40000], 1, COOKIE);
        let mut a = Advertiser::new();
        a.poll(&shared, 0, || 1);
        shared.accept_peer(&advertisement(&[41000], 100));
        let mut now = 1;
        a.poll(&shared, now, || 2);
        let mut acted = Vec::new();
        for session in 101..200u64 {
            now += REFRESH_INTERVAL_NS / 4;
            // Each restart taken replaces the cookie: the next run echoes the one it was handed.
            let ad = Advertisement::new(session, session, shared.cookie(), &[41000]).unwrap();
            shared.accept_peer(&ad);
            let before = a.restarts;
            a.poll(&shared, now, || session);
            if a.restarts > before {
                acted.push(now);
            }
            assert!(a.next_deadline_ns(&shared) > now);
        }
        assert!(acted.len() >= 2);
        for pair in acted.windows(2) {
            assert!(pair[1] - pair[0] >= RESTART_INTERVAL_NS, "{acted:?}");
        }
        // The last one is still acted on once the interval passed.
        let last = Advertisement::new(500, 500, shared.cookie(), &[41000]).unwrap();
        shared.accept_peer(&last);
        let before = a.restarts;
        let deadline = a.next_deadline_ns(&shared);
        assert!(deadline <= acted.last().unwrap() + RESTART_INTERVAL_NS);
        a.poll(&shared, acted.last().unwrap() + RESTART_INTERVAL_NS, || 3);
        assert_eq!(a.restarts, before + 1);
    }

    #[test]
    fn tuples_carry_flows_only_while_confirmed() {
        let shared = SourcePorts::new(&[1, 2, 3], 1, COOKIE);
        assert_eq!(shared.confirmed_tuples(), 0);
        shared.set_tuple_confirmed(1, true);
        shared.set_tuple_confirmed(9, true);
        assert!(shared.tuple_confirmed(1) && !shared.tuple_confirmed(0));
        assert!(!shared.tuple_confirmed(9), "no such tuple");
        assert_eq!(shared.confirmed_tuples(), 1);
        shared.set_tuple_confirmed(1, false);
        assert!(!shared.tuple_confirmed(1));
    }

    #[test]
    fn ports_go_into_use_only_when_acknowledged_and_out_when_acks_stop() {
        let shared = SourcePorts::new(&[40000, 40001], 77, COOKIE);
        let mut a = Advertiser::new();
        let mut nonce = 100;
        let mut fresh = || {
            nonce += 1;
            nonce
        };
        let (sent, event) = a.poll(&shared, 0, &mut fresh);
        let sent = sent.unwrap();
        assert_eq!((sent.session, sent.ports()), (77, &[40000u16, 40001][..]));
        assert_eq!(event, AdvertiserEvent::None);
        assert!(!shared.in_use());
        // A forged or stale acknowledgement is nothing.
        shared.post_ack(sent.nonce + 1000, 0x9999, true);
        assert_eq!(a.poll(&shared, S / 10, &mut fresh).1, AdvertiserEvent::None);
        // Not acknowledged: sent again after the retry interval.
        assert!(
            a.poll(&shared, RETRY_INTERVAL_NS - 1, &mut fresh)
                .0
                .is_none()
        );
        let again = a.poll(&shared, RETRY_INTERVAL_NS, &mut fresh).0.unwrap();
        assert_ne!(again.nonce, sent.nonce);
        // Acknowledged (the one before still counts, its answer may be late), with the peer's
        // cookie, which neither echoed: not in use, and the proof goes at once.
        shared.post_ack(sent.nonce, 0x9999, false);
        let (proof, event) = a.poll(&shared, RETRY_INTERVAL_NS + 1, &mut fresh);
        assert_eq!(event, AdvertiserEvent::None);
        assert!(!shared.in_use());
        let proof = proof.expect("the proof, at once");
        assert_eq!(proof.echo, 0x9999);
        // Its acknowledgement puts the ports in use.
        shared.post_ack(proof.nonce, 0x9999, true);
        let (_, event) = a.poll(&shared, RETRY_INTERVAL_NS + 2, &mut fresh);
        assert_eq!(event, AdvertiserEvent::InUse(true));
        assert!(shared.in_use());
        // Refreshed every REFRESH_INTERVAL_NS; each acknowledged keeps them in use.
        let mut now = RETRY_INTERVAL_NS + 1;
        for _ in 0..5 {
            now += LATEST_REFRESH_NS;
            let (ad, event) = a.poll(&shared, now, &mut fresh);
            assert_eq!(event, AdvertiserEvent::None);
            shared.post_ack(ad.expect("a refresh").nonce, 0x9999, true);
        }
        // The peer stops answering: out of use after IN_USE_FOR_NS.
        let acked_at = now + 1;
        a.poll(&shared, acked_at, &mut fresh);
        let mut out = None;
        while now < acked_at + IN_USE_FOR_NS + 2 * S {
            now += S / 10;
            if let (_, AdvertiserEvent::InUse(false)) = a.poll(&shared, now, &mut fresh) {
                out = Some(now);
                break;
            }
        }
        let out = out.expect("out of use");
        assert!(out > acked_at + IN_USE_FOR_NS && out <= acked_at + IN_USE_FOR_NS + S);
        assert!(!shared.in_use());
        // With nothing acknowledged, the next wake-up is ahead, never behind (a deadline in the
        // past would spin the worker), and the advertisements back off to MAX_RETRY_INTERVAL_NS.
        let mut sends = Vec::new();
        for _ in 0..2000 {
            now += S / 10;
            if a.poll(&shared, now, &mut fresh).0.is_some() {
                sends.push(now);
            }
            assert!(
                a.next_deadline_ns(&shared) > now,
                "a deadline behind now: {now}"
            );
        }
        let gaps: Vec<u64> = sends.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.ends_with(&[MAX_RETRY_INTERVAL_NS; 3]), "{gaps:?}");
    }

    /// Only the acknowledgement of an advertisement the advertiser waits for is kept, so
    /// forged ones (from the peer's address and port, spoofed) cannot push a real one out
    /// before the advertiser reads it and so take the ports out of use.
    #[test]
    fn forged_acknowledgements_cannot_overwrite_a_real_one() {
        let shared = SourcePorts::new(&[40000], 5, COOKIE);
        let mut a = Advertiser::new();
        let first = a.poll(&shared, 0, || 8).0.unwrap();
        shared.post_ack(first.nonce, 0x9999, false);
        let sent = a.poll(&shared, 0, || 9).0.unwrap();
        shared.post_ack(sent.nonce, 0x9999, true);
        for forged in 1000..2000 {
            shared.post_ack(forged, 0x6666, true);
        }
        assert_eq!(a.poll(&shared, 1, || 10).1, AdvertiserEvent::InUse(true));
    }

    #[test]
    fn a_peer_that_never_answers_never_gets_the_extra_ports() {
        let shared = SourcePorts::new(&[40000], 1, COOKIE);
        let mut a = Advertiser::new();
        let mut sent = 0;
        for step in 0..600u64 {
            let (ad, event) = a.poll(&shared, step * S / 10, || step + 1);
            sent += u64::from(ad.is_some());
            assert_eq!(event, AdvertiserEvent::None);
        }
        assert!(!shared.in_use());
        // At 0, 1, 3, 7 and 15 s, then every 10 s.
        assert_eq!(sent, 9, "backing off to one every ten seconds");
    }

    #[test]
    fn a_relay_without_extra_ports_advertises_none_and_never_uses_any() {
        let shared = SourcePorts::new(&[], 5, COOKIE);
        let mut a = Advertiser::new();
        let ad = a.poll(&shared, 0, || 3).0.unwrap();
        assert!(ad.ports().is_empty());
        shared.post_ack(3, 0x9999, false);
        assert_eq!(a.poll(&shared, 1, || 4).1, AdvertiserEvent::None);
        assert!(!shared.in_use());
    }

    #[test]
    fn the_peers_ports_expire_and_a_restart_is_answered_at_once() {
        let shared = SourcePorts::new(&[40000], 1, COOKIE);
        let mut a = Advertiser::new();
        into_use(&mut a, &shared, 1, 0x9999, 5);
        shared.accept_peer(&advertisement(&[41000], 50));
        a.poll(&shared, 2, || 7);
        // The peer restarted: a new session. Ours are advertised at once; its answer, with its
        // new cookie, takes them out of use (`a_new_cookie_takes_the_ports_out_of_use...`).
        shared.accept_peer(&advertisement(&[42000], 51));
        let (ad, event) = a.poll(&shared, 3, || 8);
        assert_eq!(event, AdvertiserEvent::None);
        assert_eq!(ad.map(|a| a.nonce), Some(8));
        assert_eq!(a.restarts, 1);
        assert!(shared.advertised(42000) && !shared.advertised(41000));
        // No refresh from the peer: its ports expire.
        a.poll(&shared, 3 + PEER_PORTS_FOR_NS, || 9);
        assert!(shared.advertised(42000), "not yet");
        a.poll(&shared, 4 + PEER_PORTS_FOR_NS, || 10);
        assert!(!shared.advertised(42000), "expired");
        assert!(a.next_deadline_ns(&shared) > 4 + PEER_PORTS_FOR_NS);
    }

    /// An acknowledgement that hands a cookie other than the one the advertisement echoed
    /// (the peer restarted, and took nothing) takes the ports out of use at once, until the
    /// advertisement that echoes the new cookie is acknowledged: the earlier acknowledgement
    /// would otherwise keep them in use against a peer that drops them.
    #[test]
    fn a_new_cookie_takes_the_ports_out_of_use_until_it_is_echoed() {
        let shared = SourcePorts::new(&[40000], 1, COOKIE);
        let mut a = Advertiser::new();
        into_use(&mut a, &shared, 1, 0x9999, 5);
        let refresh = a.poll(&shared, 1 + LATEST_REFRESH_NS, || 7).0.unwrap();
        assert_eq!(refresh.echo, 0x9999);
        shared.post_ack(refresh.nonce, 0x7777, false);
        let (proof, event) = a.poll(&shared, 2 + LATEST_REFRESH_NS, || 8);
        assert_eq!(event, AdvertiserEvent::InUse(false));
        assert!(!shared.in_use());
        let proof = proof.expect("the proof, at once");
        assert_eq!(proof.echo, 0x7777);
        // Still out of use while it is on its way.
        assert_eq!(
            a.poll(&shared, 3 + LATEST_REFRESH_NS, || 9),
            (None, AdvertiserEvent::None)
        );
        shared.post_ack(proof.nonce, 0x7777, true);
        assert_eq!(
            a.poll(&shared, 4 + LATEST_REFRESH_NS, || 9).1,
            AdvertiserEvent::InUse(true)
        );
    }

    /// The cookie is replaced after COOKIE_LIFETIME_NS plus a random part of as much again,
    /// at a random time each run; an advertisement that echoes the one before is still proven
    /// (the peer learns the new one from the next acknowledgement), one that echoes the one
    /// before that is not: a cookie seen once proves nothing after two replacements.
    #[test]
    fn the_cookie_is_replaced_every_few_minutes_and_the_one_before_still_taken() {
        let shared = SourcePorts::new(&[40000], 1, COOKIE);
        let mut a = Advertiser::new();
        let mut random = 7u64;
        let mut fresh = || {
            random = random
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            random
        };
        let mut now = 0;
        let mut cookies = vec![shared.cookie()];
        let mut replaced_at = vec![0];
        // Six replacements take 24 minutes at most: 3000 half seconds.
        for step in 0..3000u64 {
            now += S / 2;
            if step % 4 == 0 {
                // The peer refreshes its ports every 2 s: it is never forgotten (which would
                // replace the cookie and drop the one before, see run_ended).
                let refresh = Advertisement::new(5, 1, shared.cookie(), &[41000]).unwrap();
                shared.accept_peer(&refresh);
            }
            a.poll(&shared, now, &mut fresh);
            assert!(a.next_deadline_ns(&shared) > now, "a deadline behind now");
            if shared.cookie() != *cookies.last().unwrap() {
                cookies.push(shared.cookie());
                replaced_at.push(now);
                let [older @ .., before, current] = &cookies[..] else {
                    unreachable!()
                };
                assert!(shared.proves(*current) && shared.proves(*before));
                for old in older {
                    assert!(!shared.proves(*old), "a cookie two replacements old");
                    let stale = Advertisement::new(3, 1, *old, &[50000]).unwrap();
                    assert_eq!(shared.accept_peer(&stale), PeerAdvertisement::Unproven);
                }
                let late = Advertisement::new(4, 1, *before, &[41000]).unwrap();
                assert!(matches!(
                    shared.accept_peer(&late),
                    PeerAdvertisement::Proven { .. }
                ));
            }
        }
        assert!(replaced_at.len() >= 6, "replaced at {replaced_at:?}");
        let gaps: Vec<u64> = replaced_at.windows(2).map(|w| w[1] - w[0]).collect();
        for gap in &gaps {
            assert!(
                (COOKIE_LIFETIME_NS..=2 * COOKIE_LIFETIME_NS + S).contains(gap),
                "{gaps:?}"
            );
        }
        assert!(gaps.windows(2).any(|w| w[0] != w[1]), "random: {gaps:?}");
        assert!(!shared.accepts(50000));
    }

    /// Refreshes come REFRESH_INTERVAL_NS apart give or take a quarter, never two the same
    /// distance apart in a row here (random nonces), and the ports stay in use throughout.
    #[test]
    fn refreshes_are_jittered_within_a_quarter_of_their_interval() {
        let shared = SourcePorts::new(&[40000], 1, COOKIE);
        let mut a = Advertiser::new();
        into_use(&mut a, &shared, 1, 0x9999, 5);
        let mut random = 11u64;
        let mut fresh = || {
            random = random
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            random >> 1
        };
        let mut sent_at = Vec::new();
        let mut now = 1;
        for _ in 0..2000 {
            now += S / 100;
            let (ad, event) = a.poll(&shared, now, &mut fresh);
            assert_eq!(event, AdvertiserEvent::None, "in use throughout");
            if let Some(ad) = ad {
                sent_at.push(now);
                shared.post_ack(ad.nonce, 0x9999, true);
            }
        }
        let gaps: Vec<u64> = sent_at.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= 5, "{gaps:?}");
        for gap in &gaps {
            // Polled every 10 ms: a refresh is seen up to that late.
            assert!(
                (REFRESH_INTERVAL_NS * 3 / 4..=LATEST_REFRESH_NS + S / 100).contains(gap),
                "{gaps:?}"
            );
        }
        assert!(gaps.windows(2).all(|w| w[0] != w[1]), "{gaps:?}");
    }

    /// A restarted peer's first advertisement cannot echo the cookie, but names a new session:
    /// this relay advertises at once, so the peer answers with its new cookie within a round
    /// trip, and that answer (which echoes the advertisement's random nonce, so no blind
    /// spoofer can forge it) takes the ports out of use until the advertisement that echoes the
    /// new cookie is acknowledged. Anyone can send such a hint, so it does nothing else: the
    /// ports stay in use, the tuples' machines are kept (`a_forged_restart_hint_keeps...` in
    /// `entropy_tests`), the back-off is not reset, at most one advertisement per
    /// RESTART_HINT_INTERVAL_NS; no port is added, none of the peer's removed, no restart taken.
    #[test]
    fn an_unproven_advertisement_of_a_new_session_only_advertises_at_once() {
        let shared = SourcePorts::new(&[40000], 1, COOKIE);
        let mut a = Advertiser::new();
        into_use(&mut a, &shared, 1, 0x9999, 5);
        shared.accept_peer(&advertisement(&[41000], 50));
        let unproven = |session| Advertisement::new(3, session, 0, &[42000]).unwrap();
        // The peer's own session, unproven (a stale cookie): nothing.
        shared.accept_peer(&unproven(50));
        assert_eq!(a.poll(&shared, 2, || 6), (None, AdvertiserEvent::None));
        // Another session: advertised at once, and still in use.
        shared.accept_peer(&unproven(51));
        let (ad, event) = a.poll(&shared, 3, || 7);
        assert_eq!(event, AdvertiserEvent::None, "still in use");
        assert!(shared.in_use());
        assert_eq!(ad.map(|ad| ad.echo), Some(0x9999));
        assert!(shared.advertised(41000) && !shared.advertised(42000));
        assert_eq!(a.restarts, 0, "no restart taken");
        // A forgery: the real peer answers with the cookie it had: nothing changes.
        shared.post_ack(7, 0x9999, true);
        assert_eq!(a.poll(&shared, 4, || 8), (None, AdvertiserEvent::None));
        assert!(shared.in_use());
        // A real restart: the next hint's advertisement is answered with a new cookie: out of
        // use now, and the advertisement echoing it goes at once; its acknowledgement puts
        // them in use again.
        shared.accept_peer(&unproven(52));
        let now = 4 + RESTART_HINT_INTERVAL_NS;
        let ad = a.poll(&shared, now, || 9).0.expect("advertised at once");
        shared.post_ack(ad.nonce, 0x7777, false);
        let (proof, event) = a.poll(&shared, now + 1, || 10);
        assert_eq!(event, AdvertiserEvent::InUse(false));
        assert_eq!(proof.expect("the proof, at once").echo, 0x7777);
        shared.post_ack(10, 0x7777, true);
        assert_eq!(
            a.poll(&shared, now + 2, || 11).1,
            AdvertiserEvent::InUse(true)
        );
        // More of them within a second: one advertisement more at most, once the second passed.
        let mut sent = 0;
        let mut at = now + 2;
        for session in 60..100 {
            at += S / 20;
            shared.accept_peer(&unproven(session));
            sent += u32::from(a.poll(&shared, at, || session).0.is_some());
            assert!(shared.in_use());
        }
        assert!(at < now + 3 * RESTART_HINT_INTERVAL_NS);
        assert!(sent <= 2, "{sent} advertisements in two seconds");
        assert!(shared.advertised(41000) && !shared.advertised(42000));
    }

    #[test]
    fn a_moved_peer_starts_over() {
        let shared = SourcePorts::new(&[40000], 1, COOKIE);
        let mut a = Advertiser::new();
        into_use(&mut a, &shared, 1, 0x9999, 5);
        shared.accept_peer(&advertisement(&[41000], 50));
        a.reset(&shared, 10);
        assert!(!shared.in_use() && !shared.accepts(41000));
        assert!(a.poll(&shared, 10, || 7).0.is_some(), "advertised at once");
    }

    #[test]
    fn tuple_hints_keep_the_smallest_until_taken() {
        let shared = SourcePorts::new(&[1, 2], 1, COOKIE);
        assert_eq!(shared.take_tuple_hint(1), None);
        shared.post_tuple_hint(1, 1400);
        shared.post_tuple_hint(1, 1300);
        shared.post_tuple_hint(1, 1350);
        shared.post_tuple_hint(7, 1);
        assert_eq!(shared.take_tuple_hint(0), None);
        assert_eq!(shared.take_tuple_hint(1), Some(1300));
        assert_eq!(shared.take_tuple_hint(1), None, "taken");
    }

    #[test]
    fn tuple_paths_publish_their_smallest_working_size() {
        let shared = SourcePorts::new(&[1, 2, 3], 1, COOKIE);
        assert_eq!(shared.smallest_tuple_working(), None);
        shared.publish_tuple_working(0, Some(1448));
        shared.publish_tuple_working(2, Some(1300));
        assert_eq!(shared.smallest_tuple_working(), Some(1300));
        shared.publish_tuple_working(2, None);
        assert_eq!(shared.smallest_tuple_working(), Some(1448));
        shared.publish_tuple_working(9, Some(10));
        assert_eq!(shared.smallest_tuple_working(), Some(1448), "no such tuple");
    }

    /// An advertisement that could not be sent is not counted as sent, and goes again after
    /// `UNSENT_RETRY_NS`, not a back-off later.
    #[test]
    fn an_unsent_advertisement_goes_again_soon() {
        let shared = SourcePorts::new(&[40000], 1, 3);
        let mut a = Advertiser::new();
        assert!(a.poll(&shared, 0, || 5).0.is_some());
        a.unsent(0);
        assert_eq!(a.sent, 0);
        assert_eq!(a.next_deadline_ns(&shared), UNSENT_RETRY_NS);
        assert!(a.poll(&shared, UNSENT_RETRY_NS, || 6).0.is_some());
        assert_eq!(a.sent, 1);
        assert_eq!(
            a.next_deadline_ns(&shared),
            UNSENT_RETRY_NS + RETRY_INTERVAL_NS,
            "the back-off starts over from its first wait"
        );
    }
}
