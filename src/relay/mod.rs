//! The relay core: [`Relay`], one worker's whole protocol state, with no I/O. PURE: no io_uring
//! type, no file descriptor, no clock, no `unsafe` (the crate denies it, and this module does not
//! allow it back).
//!
//! A `Relay` owns everything a worker remembers between system calls: which buffers are its to
//! hand out and which are in the kernel's hands, the GSO batch being gathered, every send and
//! write in flight and what each carries, refused sends waiting to be judged, the path to the
//! peer (its MTU machine, `plpmtud`), the ICMP errors it may still write, its counters and
//! latency samples. It takes events in and hands requests out, as quinn-proto's `Connection`
//! and boringtun's `Tunn` do:
//!
//! * in: [`Relay::on_tun_read`] and [`Relay::on_udp_recv`] (a buffer the engine filled),
//!   [`Relay::complete`] (a request's result), [`Relay::on_read_error`], the answers to the
//!   system requests ([`Relay::on_errors_drained`], [`Relay::on_socket_drops`],
//!   [`Relay::on_egress_mtu`]), [`Relay::follow_peer`], and the time with each;
//! * out: [`Relay::poll_request`] (what to do, naming buffers and slots by index, never by
//!   pointer), [`Relay::poll_timeout`] (when to call [`Relay::on_timeout`] at the latest), and
//!   the buffers it gives back ([`Relay::take_free_tun`], [`Relay::take_free_udp`]).
//!
//! The shell (`worker`) turns each request into an iovec over its buffers and a system call, by
//! whatever engine it runs, and feeds the result back. So the relay's whole bookkeeping runs in
//! tests with fake buffers and fake results, without a socket (`relay::lifetime`).
//!
//! The decisions it makes are functions of their own, each tested alone: [`tun::classify`] (what
//! a TUN read is), [`batch::Batcher`] (which plain packets share a GSO send), [`send::judge`] and
//! [`send::after_refusal`] (what a send's result means), [`receive::plan`] (what a receive holds
//! and how it goes into the TUN), [`receive::judge_write`], [`plpmtud::Plpmtud`] (the path MTU).

pub mod aqm;
pub mod batch;
pub mod entropy;
#[cfg(test)]
mod entropy_attack2_tests;
#[cfg(test)]
mod entropy_attack_tests;
#[cfg(test)]
mod entropy_pair_tests;
#[cfg(test)]
mod entropy_tests;
#[doc(hidden)]
pub mod fuzz;
#[cfg(test)]
mod lifetime;
pub mod path;
mod path_control;
pub mod plpmtud;
mod queue;
pub mod receive;
pub mod send;
mod slots;
pub mod token;
pub mod tun;
mod tun_to_udp;
mod udp_to_tun;
pub mod wireguard;

pub use slots::{Base, CONTROL_SLOTS, HEADER_ROOM, Piece, REPLY_BUFFERS};
pub use token::{Op, SendIndex, Token, WriteIndex};

use crate::offload::coalesce::Policy;
use crate::offload::ecn::Marking;
use crate::offload::icmp::{SharedBucket, SourceLimiter};
use crate::offload::split::GSO_MAX_SEGMENTS;
use crate::stats::{self, WorkerStats};
use crate::wire::OuterFamily;
use batch::Batcher;
use entropy::{Advertiser, SourcePorts};
use path::PathMtu;
use plpmtud::{Limits, Plpmtud, SharedPath};
use send::{ErrorReports, Route};
use slots::{ControlSends, RefusedSend, TooBigReplies, TunSlot, UdpSlot};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

pub use tun::MAX_SPLIT_SEGMENTS;

/// GSO sends one buffer may need; per-segment sends use the msghdrs after these.
pub const MAX_GSO_SENDS: usize = MAX_SPLIT_SEGMENTS.div_ceil(GSO_MAX_SEGMENTS) + 2;
// A `SendIndex` packs the msghdr into bits 16..31.
const _: () = assert!(MAX_GSO_SENDS + MAX_SPLIT_SEGMENTS < 1 << 15);
// A `WriteIndex` packs a run or segment number into 14 bits.
const _: () = assert!(receive::MAX_GRO_SEGMENTS < 1 << 14);

/// ICMP too-big errors a relay may write into the TUN for one inner sender: a burst, then this
/// many a second. One tells a sender its path; more are for the packets it sent before it knew.
pub const REPLIES_PER_SOURCE_PER_SECOND: u64 = 10;
pub const REPLY_BURST_PER_SOURCE: u64 = 10;
/// And for the whole relay, all senders together (the kernel's own limit for the host,
/// net.ipv4.icmp_msgs_per_sec, is 1000 a second with a burst of 50).
pub const REPLIES_PER_SECOND: u64 = 200;
pub const REPLY_BURST: u64 = 100;
/// How often the fragmenting socket's error queue is read when nothing else made it.
const FRAGMENTING_ERRORS_EVERY_NS: u64 = 50_000_000;
/// How often the relay that runs the path MTU machine asks for the egress device's MTU.
const EGRESS_MTU_EVERY_NS: u64 = 1_000_000_000;

/// Which offloads are in effect (negotiated with the kernel by the caller).
pub use crate::wire::Offloads;

/// What a relay is made with.
pub struct RelayConfig {
    pub queue: usize,
    pub peer: SocketAddr,
    /// The device MTU.
    pub mtu: usize,
    pub offloads: Offloads,
    pub marking: Marking,
    /// TUN and UDP buffers the shell has (ids `0..count`).
    pub tun_buffers: u16,
    pub udp_buffers: u16,
    /// Whether the shell has a socket that lets the outer IP layer fragment.
    pub fragmenting: bool,
    /// The relay's path MTU state, shared by its workers (`plpmtud`).
    pub shared_path: Arc<SharedPath>,
    /// Set for the one worker that runs the path MTU machine, with its limits.
    pub path_machine: Option<Limits>,
    /// The relay-wide budget of ICMP errors written into the TUN.
    pub reply_budget: Arc<SharedBucket>,
    /// The key of the per-sender ICMP budget's hash (random, from the shell).
    pub reply_key: (u64, u64),
    /// Fresh random numbers, for path MTU probe nonces (from the shell).
    pub nonces: Box<dyn FnMut() -> u64 + Send>,
    /// The instant the caller's `now_ns` counts from (the relay-wide ICMP budget keeps its own
    /// clock, shared by all workers).
    pub epoch: std::time::Instant,
    /// How often to take a stats snapshot (reading the socket's drop count first), if at all.
    pub snapshot_every_ns: Option<u64>,
    /// Whether the queues in front of the worker are timed, and what the AQM does (`--aqm`).
    pub aqm: aqm::Settings,
    /// Outer flow entropy: this worker's extra sockets and what the relay's workers share.
    pub entropy: EntropyConfig,
    /// WireGuard mode (`relay::wireguard`); `None` in raw mode.
    pub wireguard: Option<wireguard::WireguardConfig>,
}

/// A worker's part in outer flow entropy (`entropy`).
pub struct EntropyConfig {
    /// What the relay's workers share: the relay's extra ports, the peer's.
    pub source_ports: Arc<SourcePorts>,
    /// The extra tuples: this worker has a socket on each (`Socket::Extra(0..sockets)`).
    pub sockets: u8,
    /// The relay's workers: this one runs the path MTU machine of every extra tuple `k` with
    /// `k % workers == queue`.
    pub workers: usize,
    /// Run the advertiser (one worker per relay).
    pub advertise: bool,
    /// The path MTU limits, for a machine per extra tuple.
    pub limits: Option<Limits>,
}

impl EntropyConfig {
    /// No extra sockets and no advertiser (what a test relay without entropy has).
    #[cfg(test)]
    pub fn none() -> EntropyConfig {
        EntropyConfig {
            source_ports: Arc::new(SourcePorts::new(&[], 0, 1)),
            sockets: 0,
            workers: 1,
            advertise: false,
            limits: None,
        }
    }
}

/// The path MTU machine of one extra tuple, in the one worker that runs it: probes sent from
/// that worker's socket on the tuple, hints from every worker's (`SourcePorts::post_tuple_hint`),
/// its working size published for every worker.
struct TuplePath {
    /// The tuple: `Socket::Extra(index)`.
    index: u8,
    machine: Plpmtud,
    /// Its probes the peer has not answered lately ([`QuietTuple`]).
    quiet: QuietTuple,
}

/// How a tuple whose probes go unanswered backs off: a NAT that rewrites its port, or a firewall
/// that drops it, answers none, and its machine would otherwise probe it for as long as the
/// relay runs (about 80 probes a minute per tuple, up to the path MTU each, keeping a NAT
/// mapping alive for nothing). After [`QUIET_AFTER_PROBES`] unanswered in a row the machine is
/// paused for [`QUIET_FIRST_NS`], doubling each time up to [`QUIET_MAX_NS`], then probes again;
/// an answer starts over.
#[derive(Debug, Clone, Copy)]
struct QuietTuple {
    /// The machine's probes sent, and acknowledged, when last looked at.
    sent_mark: u64,
    acked_seen: u64,
    /// The next pause, and when the current one ends (`None`: probing).
    wait_ns: u64,
    until_ns: Option<u64>,
}

const QUIET_AFTER_PROBES: u64 = 12;
const QUIET_FIRST_NS: u64 = 10_000_000_000;
const QUIET_MAX_NS: u64 = 300_000_000_000;

impl QuietTuple {
    fn new(machine: &Plpmtud) -> QuietTuple {
        QuietTuple {
            sent_mark: machine.counts().probes_sent,
            acked_seen: machine.counts().probes_acked,
            wait_ns: QUIET_FIRST_NS,
            until_ns: None,
        }
    }

    /// After the machine ran at `now_ns`: whether it should pause now (its last
    /// [`QUIET_AFTER_PROBES`] probes all went unanswered).
    fn should_pause(&mut self, machine: &Plpmtud, now_ns: u64) -> bool {
        let counts = machine.counts();
        if counts.probes_acked != self.acked_seen {
            *self = QuietTuple::new(machine);
            return false;
        }
        if counts.probes_sent.saturating_sub(self.sent_mark) < QUIET_AFTER_PROBES {
            return false;
        }
        self.until_ns = Some(now_ns + self.wait_ns);
        self.wait_ns = (self.wait_ns * 2).min(QUIET_MAX_NS);
        true
    }

    /// Whether the pause is over at `now_ns` (the machine is then resumed, and counted from).
    fn pause_over(&mut self, machine: &Plpmtud, now_ns: u64) -> bool {
        if self.until_ns.is_some_and(|until| now_ns >= until) {
            self.until_ns = None;
            self.sent_mark = machine.counts().probes_sent;
            return true;
        }
        false
    }
}

/// Where a receive put the parts of a datagram in its buffer: byte ranges of the buffer.
#[derive(Debug, Clone)]
pub struct Received {
    pub name: Range<usize>,
    pub control: Range<usize>,
    pub payload: Range<usize>,
    /// The datagram was longer than the buffer (`MSG_TRUNC`).
    pub payload_truncated: bool,
    /// The control data was cut (`MSG_CTRUNC`).
    pub control_truncated: bool,
}

/// Which of the shell's sockets a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Socket {
    /// The worker's own, on the listen port.
    Worker,
    /// The one that lets the outer IP layer fragment (also on the listen port).
    Fragmenting,
    /// Extra socket `k` of the worker, on a port of its own (outer flow entropy, `entropy`).
    Extra(u8),
}

/// What the relay asks of the shell. Sends and writes name their memory by slot; the shell
/// points an iovec at each [`Piece`] ([`Relay::send_pieces`], [`Relay::write_pieces`]) and must
/// report each one's result back with its token. The others are answered at once, by calling
/// the matching `on_*` method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `sendmsg(MSG_DONTWAIT)` on `socket` (`route`'s: the fragmenting one, or the one of the
    /// slot's tuple): segments `first..first + segments` of TUN slot `bid`, with `UDP_SEGMENT`
    /// when `segment_size` is given and the slot's outer TOS, through the slot's msghdr `msg`
    /// (the token's `SendIndex`).
    Send {
        token: Token,
        bid: u16,
        msg: u16,
        first: u16,
        segments: u16,
        segment_size: Option<u16>,
        route: Route,
        socket: Socket,
    },
    /// `writev` to the TUN of what the token's `WriteIndex` names (`write_pieces`).
    Write { token: Token },
    /// `sendmsg` of control buffer `k`'s first `len` bytes on `socket` (the worker's, or an
    /// extra socket for its tuple's path MTU probes).
    SendControl {
        token: Token,
        k: u16,
        len: u32,
        socket: Socket,
    },
    /// Read (and discard) `socket`'s error queue: `on_errors_drained`.
    DrainErrors { socket: Socket },
    /// Read the worker socket's drop count (`SO_MEMINFO`): `on_socket_drops`.
    ReadSocketDrops,
    /// Read the egress device's MTU toward the peer: `on_egress_mtu`.
    ReadEgressMtu,
}

/// One worker's protocol state. See the module documentation.
pub struct Relay {
    queue: usize,
    peer: SocketAddr,
    /// The peer as a received datagram's source reads (the canonical address).
    peer_canonical: SocketAddr,
    offloads: Offloads,
    coalesce: Policy,
    marking: Marking,
    fragmenting: bool,
    path: PathMtu,
    shared_path: Arc<SharedPath>,
    plpmtud: Option<Plpmtud>,
    path_limits: Option<Limits>,
    /// The working size last taken from `shared_path`.
    published_path_mtu: usize,
    nonces: Box<dyn FnMut() -> u64 + Send>,
    epoch: std::time::Instant,
    stats: WorkerStats,
    /// The socket's drop count (`SO_MEMINFO`) when last read.
    socket_drops_seen: u32,
    tun_slots: Box<[TunSlot]>,
    udp_slots: Box<[UdpSlot]>,
    replies: TooBigReplies,
    controls: ControlSends,
    /// A segment whose send failed as too big, header and payload put together, to quote from.
    reply_quote: Box<[u8]>,
    /// When each buffer's packet was read, in the caller's ns; indexed by buffer id.
    tun_read_at_ns: Box<[u64]>,
    udp_read_at_ns: Box<[u64]>,
    /// Buffers back in the relay's hands, for the shell to read into again.
    tun_free: Vec<u16>,
    udp_free: Vec<u16>,
    batcher: Batcher,
    /// What this batch's completions reported about the path, read at its end.
    reports: ErrorReports,
    /// Sends refused in this batch, settled at its end.
    refused: Vec<RefusedSend>,
    /// A `DrainErrors` for the worker's socket is out: the refusals and the gathered batch wait
    /// for its answer.
    awaiting_errors: bool,
    requests: VecDeque<Request>,
    /// Sends and writes handed out whose result has not come back yet.
    in_flight: usize,
    /// Failed TUN reads and UDP receives in a row (`on_read_error`), each set back to 0 by a
    /// read that brought something.
    read_failures: ReadFailures,
    snapshot_every_ns: Option<u64>,
    next_snapshot_ns: Option<u64>,
    /// A snapshot waits for the socket's drop count (`ReadSocketDrops` is out).
    snapshot_pending: bool,
    snapshot: Option<WorkerStats>,
    next_fragmenting_check_ns: u64,
    next_egress_check_ns: u64,
    stopping: bool,
    /// Outer flow entropy: the shared state, this worker's extra sockets and where they start
    /// among the relay's, the advertiser (one worker per relay), whether the extra ports are in
    /// use as of this batch, and a path MTU machine per extra tuple while they are.
    source_ports: Arc<SourcePorts>,
    extra_sockets: u8,
    workers: usize,
    advertiser: Option<Advertiser>,
    entropy_in_use: bool,
    tuple_limits: Option<Limits>,
    tuple_paths: Vec<TuplePath>,
    /// What retired tuple machines counted, so the report keeps it.
    retired_tuple_counts: plpmtud::Counts,
    /// The queues in front of the worker, timed, and their AQM (`queue`).
    queues: queue::Queues,
    /// WireGuard mode's state; `None` in raw mode.
    wireguard: Option<wireguard::Wireguard>,
}

impl Relay {
    pub fn new(config: RelayConfig) -> Relay {
        let RelayConfig {
            queue,
            peer,
            mtu,
            offloads,
            marking,
            tun_buffers,
            udp_buffers,
            fragmenting,
            shared_path,
            path_machine,
            reply_budget,
            reply_key,
            nonces,
            epoch,
            snapshot_every_ns,
            entropy,
            aqm,
            wireguard,
        } = config;
        let family = OuterFamily::of(peer);
        let slot_segments = slot_segments(offloads);
        let path = PathMtu::new(family, mtu, Some(shared_path.working()));
        let mut stats = WorkerStats::new(queue);
        stats.path.path_mtu = path.path_mtu as u64;
        let limiter = SourceLimiter::new(
            reply_key,
            REPLIES_PER_SOURCE_PER_SECOND,
            REPLY_BURST_PER_SOURCE,
        );
        Relay {
            queue,
            peer,
            peer_canonical: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
            offloads,
            coalesce: Policy {
                tcp: offloads.tso,
                udp: offloads.uso,
            },
            marking,
            fragmenting,
            published_path_mtu: path.path_mtu,
            path,
            shared_path,
            plpmtud: path_machine.map(Plpmtud::new),
            path_limits: path_machine,
            nonces,
            epoch,
            stats,
            socket_drops_seen: 0,
            tun_slots: (0..tun_buffers)
                .map(|_| TunSlot::new(slot_segments))
                .collect(),
            udp_slots: (0..udp_buffers).map(|_| UdpSlot::new()).collect(),
            replies: TooBigReplies::new(limiter, reply_budget),
            // Only the workers that probe send anything longer than an acknowledgement or an
            // advertisement.
            controls: ControlSends::new(
                if path_machine.is_some() || (entropy.sockets > 0 && entropy.limits.is_some()) {
                    mtu
                } else {
                    0
                }
                .max(entropy.source_ports.advertisement_len()),
            ),
            reply_quote: vec![0u8; crate::offload::icmp::MAX_REPLY].into_boxed_slice(),
            tun_read_at_ns: vec![0; usize::from(tun_buffers)].into_boxed_slice(),
            udp_read_at_ns: vec![0; usize::from(udp_buffers)].into_boxed_slice(),
            tun_free: (0..tun_buffers).rev().collect(),
            udp_free: (0..udp_buffers).rev().collect(),
            batcher: Batcher::default(),
            reports: ErrorReports::default(),
            refused: Vec::with_capacity(MAX_GSO_SENDS),
            awaiting_errors: false,
            requests: VecDeque::with_capacity(4 * usize::from(tun_buffers.max(udp_buffers)) + 16),
            in_flight: 0,
            read_failures: ReadFailures::default(),
            snapshot_every_ns,
            next_snapshot_ns: snapshot_every_ns,
            snapshot_pending: false,
            snapshot: None,
            next_fragmenting_check_ns: 0,
            next_egress_check_ns: 0,
            stopping: false,
            advertiser: entropy.advertise.then(Advertiser::new),
            source_ports: entropy.source_ports,
            extra_sockets: entropy.sockets,
            workers: entropy.workers.max(1),
            entropy_in_use: false,
            tuple_limits: entropy.limits,
            tuple_paths: Vec::new(),
            retired_tuple_counts: plpmtud::Counts::default(),
            queues: queue::Queues::new(aqm),
            wireguard: wireguard.map(|config| {
                wireguard::Wireguard::new(config, tun_buffers, mtu, offloads.tun_offloads())
            }),
        }
    }

    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// The next request, in the order they were made (sends of one flow must reach the kernel
    /// in the order their packets were read).
    pub fn poll_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    /// Sends and writes handed out whose result has not come back: what a shutdown waits for.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The TUN buffers given back since the last call, for the shell to read into again.
    pub fn take_free_tun(&mut self) -> std::vec::Drain<'_, u16> {
        self.tun_free.drain(..)
    }

    pub fn take_free_udp(&mut self) -> std::vec::Drain<'_, u16> {
        self.udp_free.drain(..)
    }

    /// One free TUN buffer, for an engine that reads into one at a time.
    pub fn pop_free_tun(&mut self) -> Option<u16> {
        self.tun_free.pop()
    }

    pub fn pop_free_udp(&mut self) -> Option<u16> {
        self.udp_free.pop()
    }

    pub fn has_free_tun(&self) -> bool {
        !self.tun_free.is_empty()
    }

    pub fn has_free_udp(&self) -> bool {
        !self.udp_free.is_empty()
    }

    /// A TUN buffer the shell took but did not fill (the read failed or was not made).
    pub fn give_back_tun(&mut self, bid: u16) {
        self.tun_free.push(bid);
    }

    pub fn give_back_udp(&mut self, bid: u16) {
        self.udp_free.push(bid);
    }

    /// The pieces of a `Request::Send`, and the outer TOS its datagrams carry.
    pub fn send_pieces(&self, bid: u16, first: u16, segments: u16) -> (&[Piece], u8) {
        let slot = &self.tun_slots[usize::from(bid)];
        (
            slot.segment_pieces(usize::from(first), usize::from(segments)),
            slot.tos,
        )
    }

    /// The pieces of a `Request::Write` with token index `index`, and where they start in their
    /// slot's array of pieces.
    pub fn write_pieces(&self, index: WriteIndex) -> (usize, &[Piece]) {
        match index {
            WriteIndex::Run { bid, run } => {
                let slot = &self.udp_slots[usize::from(bid)];
                let r = usize::from(run);
                let (start, end) = udp_to_tun::run_pieces(&slot.plan, &slot.run_starts, r);
                (start, &slot.pieces[start..end])
            }
            WriteIndex::Segment { bid, segment } => {
                let s = usize::from(segment);
                (
                    2 * s,
                    &self.udp_slots[usize::from(bid)].fallback_pieces[2 * s..2 * s + 2],
                )
            }
            WriteIndex::Reply { k } => {
                let k = usize::from(k);
                (k, &self.replies.pieces[k..k + 1])
            }
        }
    }

    /// The bytes of the relay's own memory that pieces of `base` name: rewritten split headers,
    /// run headers, control messages, ICMP errors. `None` for the shell's buffers. They stay put
    /// and unwritten while a request that names them is in flight.
    pub fn own_bytes(&self, base: Base) -> Option<&[u8]> {
        match base {
            Base::SplitHeaders(bid) => Some(&self.tun_slots[usize::from(bid)].headers),
            Base::RunHeaders(bid) => {
                Some(self.udp_slots[usize::from(bid)].plan.vnet_header_bytes())
            }
            Base::PlainHeader => Some(&receive::PLAIN_HEADER),
            Base::Control => Some(self.controls.bytes()),
            Base::Reply => Some(&self.replies.buffers),
            Base::Sealed(bid) => self.wireguard.as_ref().map(|wg| wg.sealed(bid)),
            Base::TunBuffer(_) | Base::UdpBuffer(_) => None,
        }
    }

    /// When `on_timeout` must be called at the latest (in the caller's ns), if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut at = self.next_snapshot_ns;
        let mut earliest = |t: Option<u64>| {
            if let Some(t) = t {
                at = Some(at.map_or(t, |a| a.min(t)));
            }
        };
        if self.fragmenting {
            earliest(Some(self.next_fragmenting_check_ns));
        }
        if let Some(machine) = &self.plpmtud {
            earliest(machine.next_deadline_ns());
            earliest(Some(self.next_egress_check_ns));
        }
        if let Some(advertiser) = &self.advertiser {
            earliest(Some(advertiser.next_deadline_ns(&self.source_ports)));
        }
        for tuple in &self.tuple_paths {
            earliest(tuple.machine.next_deadline_ns());
        }
        if self.extra_sockets > 0 {
            // Their error queues, read now and then as the fragmenting socket's are; and
            // whether the extra ports went into use.
            earliest(Some(self.next_fragmenting_check_ns));
        }
        at
    }

    /// Runs what is due by `now_ns`: the path MTU machine's timers, the periodic look at the
    /// fragmenting socket's errors and at the egress device's MTU, a stats snapshot.
    pub fn on_timeout(&mut self, now_ns: u64) {
        if (self.fragmenting || self.extra_sockets > 0) && now_ns >= self.next_fragmenting_check_ns
        {
            self.next_fragmenting_check_ns = now_ns + FRAGMENTING_ERRORS_EVERY_NS;
            if self.fragmenting {
                self.requests.push_back(Request::DrainErrors {
                    socket: Socket::Fragmenting,
                });
            }
            // An extra socket receives nothing, so only this and a refused send read its queue.
            for k in 0..self.extra_sockets {
                self.requests.push_back(Request::DrainErrors {
                    socket: Socket::Extra(k),
                });
            }
        }
        if self.plpmtud.is_some() && now_ns >= self.next_egress_check_ns {
            self.next_egress_check_ns = now_ns + EGRESS_MTU_EVERY_NS;
            self.requests.push_back(Request::ReadEgressMtu);
        }
        if self.plpmtud.is_some() || self.advertiser.is_some() || self.extra_sockets > 0 {
            self.run_path(now_ns);
        }
        if let (Some(at), Some(every)) = (self.next_snapshot_ns, self.snapshot_every_ns)
            && now_ns >= at
        {
            self.next_snapshot_ns = Some(at.max(now_ns.saturating_sub(every)) + every);
            self.request_snapshot();
        }
    }

    /// Asks for the socket's drop count, after which a snapshot is ready (`take_snapshot`).
    pub fn request_snapshot(&mut self) {
        if !self.snapshot_pending {
            self.snapshot_pending = true;
            self.requests.push_back(Request::ReadSocketDrops);
        }
    }

    /// A snapshot of the counters, once one is ready.
    pub fn take_snapshot(&mut self) -> Option<WorkerStats> {
        self.snapshot.take()
    }

    /// The socket's drop count (`SO_MEMINFO`), or `None` if it could not be read. The kernel's
    /// count is 32 bits, so it is added up here as it rises.
    pub fn on_socket_drops(&mut self, dropped: Option<u32>) {
        if let Some(now) = dropped {
            self.stats.counters.udp_socket_drops += stats::count_since(self.socket_drops_seen, now);
            self.socket_drops_seen = now;
        }
        if std::mem::take(&mut self.snapshot_pending) {
            if let Some(wg) = &self.wireguard {
                wg.report_control(&mut self.stats);
            }
            self.snapshot = Some(self.stats.clone());
        }
    }

    /// A read or receive failed with `errno`: `Err` with the error once it is the worker's end
    /// (that read's failures in a row reached `MAX_CONSECUTIVE_FAILURES`; a TUN read or a UDP
    /// receive that brings something starts the count again).
    pub fn on_read_error(&mut self, tun: bool, errno: i32) -> Result<(), i32> {
        const MAX_CONSECUTIVE_FAILURES: u32 = 64;
        let failures = if tun {
            &mut self.read_failures.tun
        } else {
            &mut self.read_failures.udp
        };
        match errno {
            libc::ENOBUFS => self.stats.counters.buffer_stalls += 1,
            libc::ECANCELED | libc::EINTR | libc::EAGAIN => {}
            _ if !tun && self.reports.note_receive_error(errno) => {}
            _ => {
                *failures += 1;
                if *failures >= MAX_CONSECUTIVE_FAILURES {
                    return Err(errno);
                }
            }
        }
        Ok(())
    }

    /// A receive into `bid` whose parts could not be found (a multishot receive's header said
    /// more than the buffer holds): an oversized datagram, counted, and the buffer goes back.
    pub fn on_unreadable_receive(&mut self, bid: u16) {
        self.read_failures.udp = 0;
        self.stats
            .counters
            .drop(crate::stats::DropReason::OversizedDatagram);
        self.udp_free.push(bid);
    }

    /// The worker's socket has something in its error queue (`POLLERR`), which no receive takes:
    /// it is read at the end of this batch.
    pub fn note_error_queue(&mut self) {
        self.reports.drain_queue = true;
    }

    /// Counts a multishot operation the kernel ended, unless the relay is stopping.
    pub fn on_multishot_end(&mut self) {
        if !self.stopping {
            self.stats.counters.multishot_restarts += 1;
        }
    }

    /// The result of a request the shell carried out (a send or a write).
    pub fn complete(&mut self, token: Token, result: i32, now_ns: u64, buffers: &impl Buffers) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match token.op {
            Op::UdpSend => self.on_send_done(SendIndex::unpack(token.index), result, now_ns),
            Op::TunWrite => {
                self.on_write_done(WriteIndex::unpack(token.index), result, now_ns, buffers)
            }
            Op::ControlSend => self.on_control_sent(token.index as usize, result),
            _ => {}
        }
    }

    /// Closes a batch of completions. If a completion said something is in the error queue,
    /// or a send was refused, asks for the queues to be read first: the answer
    /// (`on_errors_drained`) settles the refused sends against what they say, and only then is
    /// the GSO batch gathered in this batch sent, after the resends, whose packets were read
    /// before. Takes the path MTU the machine published.
    pub fn end_batch(&mut self, now_ns: u64, buffers: &impl Buffers) {
        self.run_path(now_ns);
        if self.reports.drain_queue || !self.refused.is_empty() {
            self.awaiting_errors = true;
            // The extra sockets' first: the worker socket's answer settles the refusals, which
            // must know what every queue said.
            let extras = std::mem::take(&mut self.reports.drain_extra);
            for k in 0..self.extra_sockets {
                if extras & (1 << k) != 0 {
                    self.requests.push_back(Request::DrainErrors {
                        socket: Socket::Extra(k),
                    });
                }
            }
            self.requests.push_back(Request::DrainErrors {
                socket: Socket::Worker,
            });
            return;
        }
        self.settle_refusals(now_ns, buffers);
        self.send_batch();
    }

    /// Stops: sends what was gathered, and arms nothing more (`stopping`).
    pub fn stop(&mut self) {
        self.send_batch();
        self.stopping = true;
    }

    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// Sends to `peer` from now on, and takes datagrams from it alone: the peer's name resolved
    /// elsewhere. The path to it is a new one, so its path MTU is found anew.
    pub fn follow_peer(&mut self, peer: SocketAddr) -> bool {
        if peer == self.peer || OuterFamily::of(peer) != self.path.family {
            return false;
        }
        self.peer = peer;
        self.peer_canonical = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        if let Some(limits) = self.path_limits {
            self.plpmtud = Some(Plpmtud::new(limits));
            self.shared_path.publish(limits.largest);
        }
        // A new peer knows nothing of this relay's ports, nor this relay of its.
        if let Some(advertiser) = &mut self.advertiser {
            advertiser.reset(&self.source_ports, 0);
        }
        true
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Queues a send or a write, counting it in flight.
    fn queue_io(&mut self, request: Request) {
        self.in_flight += 1;
        self.requests.push_back(request);
    }
}

/// The segments one TUN buffer's slot must have room for: a super-packet's, split, when the
/// TUN hands them over (`MAX_SPLIT_SEGMENTS`), else one GSO send's worth of plain packets. The
/// relay's slots and the worker's memory are both sized by it.
pub fn slot_segments(offloads: Offloads) -> usize {
    if offloads.tun_offloads() {
        MAX_SPLIT_SEGMENTS
    } else {
        GSO_MAX_SEGMENTS
    }
}

/// Failed reads in a row, per direction.
#[derive(Debug, Default)]
struct ReadFailures {
    tun: u32,
    udp: u32,
}

/// What the relay asks of the shell's buffers after a read handed one over: the bytes of a TUN
/// buffer (some of which sends in flight may be reading, so only a shared view), and a write of
/// a few bytes into a UDP buffer, leaving its other bytes, which writes in flight may be
/// reading, alone (never through a slice over the whole buffer).
pub trait Buffers {
    fn tun(&self, bid: u16) -> &[u8];
    fn write_udp(&self, bid: u16, at: usize, bytes: &[u8]);
}
