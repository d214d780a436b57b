//! One worker: a pinned thread that owns one TUN queue and one UDP socket, and moves packets
//! between them with one of three I/O engines. Nothing is shared with other workers.
//!
//! The decisions about packets are the relay core's (`crate::relay`, pure). This module is the
//! engine-neutral half of the shell around it: the buffer memory and the per-buffer slots of
//! msghdrs and iovecs that sends and writes are made of ([`slots`]), and what a worker does when
//! a buffer arrives or an operation completes ([`to_udp`], [`to_tun`], [`path`]). Those queue
//! [`Request`]s; an engine carries them out and reports each result back through
//! [`Worker::complete`]:
//! * [`uring`]: io_uring with a multishot read on the TUN and a multishot recvmsg, both picking
//!   buffers from provided-buffer rings (Linux 6.7).
//! * [`compat`]: io_uring with single-shot reads and receives into buffers it owns (Linux 5.15).
//! * [`poll`]: no io_uring; `poll`, `read`/`writev` and `recvmmsg`/`sendmmsg`.
//!
//! # Data path
//! * **TUN to UDP.** A read fills a buffer with `[virtio_net_hdr][IP packet]`. A plain packet is
//!   sent straight out of its buffer; with UDP GSO on, consecutive plain packets of one flow and
//!   one size are gathered from their buffers into a single GSO `sendmsg`. A TSO/USO
//!   super-packet is split (`offload::split`): each segment's rewritten headers go into the
//!   buffer's slot, and the iovec alternates header and payload-in-place, so the payload is never
//!   copied; up to 64 segments go out per GSO send.
//! * **UDP to TUN.** A receive fills a buffer with the source address, the control data and the
//!   payload. With UDP GRO the payload holds several datagrams of one stride; runs of them that
//!   may merge are written to the TUN as one super-packet with
//!   `writev([virtio_net_hdr][head][payloads...])`, again without copying. A merged write the
//!   kernel rejects with EINVAL is redone segment by segment (counted), and merging is switched
//!   off for this worker.
//!
//! Sends use `MSG_DONTWAIT`: a full socket buffer drops the packet (counted), like a full qdisc,
//! instead of parking the send, where a later send could overtake it and reorder the flow. The
//! hot path allocates nothing, takes no lock and logs nothing; problems become counted drops.
//!
//! # ECN and path MTU
//! * **ECN** (`offload::ecn`, RFC 6040): each send carries the outer TOS / traffic class made
//!   from its inner packet's as a control message, only when that byte is not 0; a GSO batch
//!   holds packets of one outer TOS only, and a split super-packet has one for all its segments.
//!   Each receive reports its outer TOS (one per buffer: GRO merges only datagrams with equal
//!   TOS, `udp_gro_receive` in net/ipv4/udp_offload.c), applied to every inner packet before the
//!   coalescer plans the buffer, so marked and unmarked packets never merge.
//! * **Path MTU.** The socket sends with DF (`IP_PMTUDISC_DO`). Each worker keeps its own view of
//!   the path MTU to the peer (`relay::path`). A send refused as too big (EMSGSIZE; a GSO send:
//!   EINVAL), an EMSGSIZE receive, or an ICMP error about the peer only raises a flag; once per
//!   batch of completions the worker drains the error queue and rereads the kernel's path MTU
//!   ([`Worker::end_batch`]). It also rereads it every second, which is how it learns that the
//!   path grew again. The refused sends wait for that look: with `IP_RECVERR`, an ICMP error
//!   from a router sets the socket's pending error (`__udp4_lib_err`, `__udp6_lib_err`) and the
//!   next send fails with it whatever its size (`sock_alloc_send_pskb` checks `sock_error`), so
//!   datagrams that fit the new MTU are sent again, and only those that do not are answered. An
//!   inner packet that no longer fits is dropped and answered with ICMP fragmentation-needed /
//!   packet-too-big written into the TUN (`offload::icmp`, rate-limited), or, if it may not be
//!   answered so, sent on a second socket that lets the outer IP layer fragment it. Its sends
//!   are requests like the others, so they leave in order with the packets around them.
//!
//! All `unsafe` here is about the buffer-lifetime contract stated in `ring`, which every engine
//! keeps: a buffer named by a request in flight is not written, and memory is freed only after
//! every operation has completed (or leaked, if the drain at shutdown does not finish).

mod compat;
#[cfg(test)]
mod lifetime;
mod path;
mod poll;
pub mod probe;
mod slots;
mod to_tun;
mod to_udp;
mod uring;

pub use crate::engine::{Choice, Engine, Features};
pub use crate::relay::tun::MAX_SPLIT_SEGMENTS;
pub use slots::{REPLIES_PER_SECOND, REPLY_BURST};

use crate::faults::Faults;
use crate::offload::coalesce::Policy;
use crate::offload::ecn::Marking;
use crate::offload::split::GSO_MAX_SEGMENTS;
use crate::relay::batch::Batcher;
use crate::offload::icmp::{SharedBucket, SourceLimiter, TokenBucket};
use crate::relay::path::PathMtu;
use crate::relay::plpmtud::{Limits, Plpmtud, SharedPath};
use crate::relay::send::{ErrorReports, Route};
use crate::ring::{BufRing, Op, Token};
use crate::shared::Shared;
use crate::stats::{self, WorkerStats};
use crate::sys;
use crate::sys::{netlink, random};
use crate::sys::socket::{self, OuterFamily};
use crate::wire::vnet;
use slots::{Memory, RefusedSend};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

/// How long an idle worker sleeps before it looks at the stop flag and the stats clock.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long shutdown waits for cancelled operations to report back before leaking their memory.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);
/// A read that fails this many times in a row, with no data in between, is broken.
const MAX_CONSECUTIVE_FAILURES: u32 = 64;
/// How often a worker reads its fragmenting socket's error queue when nothing else made it.
const FRAGMENTING_ERRORS_CHECK: Duration = Duration::from_millis(50);
/// How often the worker that runs the path MTU machine reads the egress device's MTU.
const EGRESS_MTU_RECHECK: Duration = Duration::from_secs(1);
/// Path MTU probes a worker answers a second, at most (and as a burst).
const ACKS_PER_SECOND: u64 = 100;
/// GSO sends one buffer may need; per-segment fallback sends use the msghdrs after these.
const MAX_GSO_SENDS: usize = MAX_SPLIT_SEGMENTS.div_ceil(GSO_MAX_SEGMENTS) + 2;
// A `SendIndex` packs the msghdr into bits 16..31.
const _: () = assert!(MAX_GSO_SENDS + MAX_SPLIT_SEGMENTS < 1 << 15);
// A `WriteIndex` packs a run or segment number into 14 bits.
const _: () = assert!(crate::relay::receive::MAX_GRO_SEGMENTS < 1 << 14);

/// Which offloads are in effect for a worker (negotiated with the kernel by the caller).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    /// The TUN hands us TCP super-packets, and we may write merged TCP ones.
    pub tso: bool,
    /// Same for UDP (USO, Linux 6.2).
    pub uso: bool,
    /// Send several datagrams per `sendmsg` with `UDP_SEGMENT`.
    pub udp_gso: bool,
    /// Receive several datagrams per buffer with `UDP_GRO`.
    pub udp_gro: bool,
}

impl Offloads {
    /// Whether TUN reads may carry super-packets or partial checksums (64 KB buffers needed).
    fn tun_offloads(self) -> bool {
        self.tso || self.uso
    }
}

/// What one worker needs. The fds are opened (and the socket bound) by the caller.
pub struct WorkerConfig {
    pub queue: usize,
    pub cpu: Option<usize>,
    pub engine: Engine,
    /// How long to keep looking for work after handling some, before sleeping (0: never spin).
    pub busy_poll: Duration,
    pub tun: OwnedFd,
    pub socket: OwnedFd,
    /// Lets the outer IP layer fragment (`socket::fragmenting_socket`), for
    /// `TooBig::Fragment`. `None` if it could not be made: such packets are then dropped as
    /// `too_big`.
    pub fragmenting: Option<OwnedFd>,
    pub peer: SocketAddr,
    /// The relay's path MTU state, shared by its workers (`relay::plpmtud`).
    pub shared_path: Arc<SharedPath>,
    /// Set for the one worker that runs the path MTU machine, with its limits.
    pub path_machine: Option<Limits>,
    /// The relay-wide budget of ICMP errors written into the TUN.
    pub reply_budget: Arc<SharedBucket>,
    pub mtu: u32,
    /// The most operations in flight and buffers per direction, a power of two.
    pub ring_depth: usize,
    /// Receive-buffer memory per direction, which may make the buffers fewer than `ring_depth`.
    pub buffer_memory: usize,
    pub offloads: Offloads,
    /// How the outer TOS / traffic class is made, and whether received ECN marks are applied.
    pub marking: Marking,
    pub stop: Arc<AtomicBool>,
    /// How often to leave a stats snapshot in `shared`, if at all.
    pub snapshot_every: Option<Duration>,
    /// What the main thread and the workers share: snapshots, heartbeats, the peer's address.
    pub shared: Arc<Shared>,
}

/// How a worker ended.
pub struct WorkerExit {
    pub stats: WorkerStats,
    /// Set when the worker stopped because its data path broke, not because it was asked to.
    pub error: Option<io::Error>,
}

/// What a `UdpSend` token's index names: msghdr `msg` of TUN buffer `bid`'s slot, and the socket
/// the send went out on. Packed as `bid | msg << 16`, with bit 31 for the fragmenting socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SendIndex {
    bid: u16,
    msg: u16,
    route: Route,
}

const FRAGMENTING_BIT: u32 = 1 << 31;

impl SendIndex {
    fn pack(self) -> u32 {
        let route = match self.route {
            Route::Direct => 0,
            Route::Fragmenting => FRAGMENTING_BIT,
        };
        u32::from(self.bid) | u32::from(self.msg) << 16 | route
    }

    fn unpack(index: u32) -> SendIndex {
        SendIndex {
            bid: index as u16,
            msg: ((index & !FRAGMENTING_BIT) >> 16) as u16,
            route: if index & FRAGMENTING_BIT != 0 {
                Route::Fragmenting
            } else {
                Route::Direct
            },
        }
    }
}

/// What a `TunWrite` token's index names. Packed as `a | b << 16 | kind << 30`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteIndex {
    /// Run `run` of UDP buffer `bid`: one merged or plain packet.
    Run { bid: u16, run: u16 },
    /// Segment `segment` of UDP buffer `bid`, written alone after the kernel refused its run.
    Segment { bid: u16, segment: u16 },
    /// ICMP error `k` that this worker made (`slots::TooBigReplies`).
    Reply { k: u16 },
}

impl WriteIndex {
    fn pack(self) -> u32 {
        let (kind, a, b) = match self {
            WriteIndex::Run { bid, run } => (0, bid, run),
            WriteIndex::Segment { bid, segment } => (1, bid, segment),
            WriteIndex::Reply { k } => (2, k, 0),
        };
        u32::from(a) | u32::from(b & 0x3fff) << 16 | kind << 30
    }

    fn unpack(index: u32) -> WriteIndex {
        let (a, b) = (index as u16, ((index >> 16) & 0x3fff) as u16);
        match index >> 30 {
            0 => WriteIndex::Run { bid: a, run: b },
            1 => WriteIndex::Segment { bid: a, segment: b },
            _ => WriteIndex::Reply { k: a },
        }
    }
}

/// One operation for the engine to carry out, naming memory in `Worker::memory` that stays put
/// and unwritten until its result is reported back with `token` (the contract in `ring`).
#[derive(Debug, Clone, Copy)]
enum Request {
    /// `sendmsg(msg, MSG_DONTWAIT)` on the socket `route` names.
    Send {
        token: Token,
        route: Route,
        msg: *const libc::msghdr,
    },
    /// `writev` on the TUN queue.
    Write {
        token: Token,
        iovs: *const libc::iovec,
        count: u32,
    },
}

/// Requests made and not yet handed to the engine, and how many await their result.
#[derive(Default)]
struct Requests {
    queued: Vec<Request>,
    /// Requests handed over (or injected) whose result has not come back yet.
    in_flight: usize,
    /// Results made up by fault injection, `(token, result)`, for requests never carried out;
    /// delivered with the next batch. Always empty in the shipped binary.
    injected: Vec<(Token, i32)>,
    /// An injected result held back until the next injection (or the drain), so that two
    /// refused operations are in flight at once.
    held: Option<(Token, i32)>,
}

impl Requests {
    fn queue(&mut self, request: Request) {
        self.in_flight += 1;
        self.queued.push(request);
    }

    /// Counts a request in flight that completes with `-errno` without being carried out.
    fn inject(&mut self, token: Token, errno: i32) {
        self.in_flight += 1;
        self.injected.push((token, -errno));
        self.injected.extend(self.held.take());
    }

    /// Like `inject`, but the first such result waits for the next injection.
    fn inject_in_pairs(&mut self, token: Token, errno: i32) {
        if self.held.is_none() && self.injected.is_empty() {
            self.in_flight += 1;
            self.held = Some((token, -errno));
        } else {
            self.inject(token, errno);
        }
    }
}

/// Where a receive put the parts of a datagram in its buffer: byte ranges of the buffer.
#[derive(Debug, Clone)]
struct Received {
    name: std::ops::Range<usize>,
    control: std::ops::Range<usize>,
    payload: std::ops::Range<usize>,
    /// The datagram was longer than the buffer (`MSG_TRUNC`).
    payload_truncated: bool,
    /// The control data was cut (`MSG_CTRUNC`).
    control_truncated: bool,
}

impl Received {
    /// The parts of a single-shot receive of `len` payload bytes into a buffer laid out per
    /// `layout`, from the msghdr the kernel updated.
    fn from_msghdr(msg: &libc::msghdr, layout: ReceiveLayout, len: usize) -> Received {
        let name_len = (msg.msg_namelen as usize).min(layout.name_len);
        let control_at = layout.head + layout.name_len;
        let control_len = (msg.msg_controllen as usize).min(layout.control_len);
        let payload_at = layout.payload_at();
        Received {
            name: layout.head..layout.head + name_len,
            control: control_at..control_at + control_len,
            payload: payload_at..payload_at + len,
            payload_truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
            control_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        }
    }
}

/// The engine-neutral state of a worker.
struct Worker {
    memory: Memory,
    /// For the error queue, and the `poll` engine's system calls.
    socket: OwnedFd,
    tun: OwnedFd,
    /// Lets the outer IP layer fragment, for `TooBig::Fragment` (see `WorkerConfig`).
    fragmenting: Option<OwnedFd>,
    peer: SocketAddr,
    /// The peer as a received datagram's source reads (`socket::source_address`).
    peer_canonical: SocketAddr,
    offloads: Offloads,
    coalesce: Policy,
    marking: Marking,
    path: PathMtu,
    shared_path: Arc<SharedPath>,
    /// The path MTU machine, on the one worker that runs it, and its limits.
    plpmtud: Option<Plpmtud>,
    path_limits: Option<Limits>,
    /// The working size last taken from `shared_path`.
    published_path_mtu: usize,
    /// Probes this worker answers a second, at most: the peer sends one at a time.
    ack_bucket: TokenBucket,
    stats: WorkerStats,
    /// The socket's drop count (`socket::receive_drops`) when last read.
    socket_drops_seen: u32,
    /// When each buffer's packet was read, in ns since the worker's epoch; indexed by buffer id.
    tun_read_at_ns: Box<[u64]>,
    udp_read_at_ns: Box<[u64]>,
    /// Buffers back in the worker's hands, for the engine to read into again.
    tun_free: Vec<u16>,
    udp_free: Vec<u16>,
    batcher: Batcher,
    /// What this batch's completions reported about the path, read at its end.
    reports: ErrorReports,
    /// Sends refused as too big in this batch, settled at its end.
    refused: Vec<RefusedSend>,
    requests: Requests,
    epoch: Instant,
    /// When the path MTU machine next reads the egress device's MTU.
    next_egress_check: Instant,
    /// When the fragmenting socket's error queue is next read, if nothing reads it before.
    next_fragmenting_check: Instant,
    /// When the next stats snapshot is due, if snapshots are sent.
    next_snapshot: Option<Instant>,
    /// The generation of the peer's address this worker sends to (`Shared::peer_if_moved`).
    peer_generation: u64,
    stopping: bool,
    fatal: Option<io::Error>,
    /// Test-only refusals (`crate::faults`); a zero-sized no-op in the shipped binary.
    faults: Faults,
}

/// Runs one worker to completion with its engine. Reports setup success or failure on `ready`
/// first, and drops `ready` right after: the caller counts the reports and treats a closed
/// channel with reports missing as a worker that died in setup (a panic unwinds through here
/// and drops it too), so it can never wait for a report that will not come.
pub fn run(config: WorkerConfig, ready: Sender<Result<(), sys::Error>>) -> Option<WorkerExit> {
    // However this worker ends, a panic included, the others stop too and main reports it.
    let _stop_all = StopOnExit(config.stop.clone());
    match config.engine {
        Engine::Uring => {
            let setup = uring::setup(&config);
            drive(config, ready, setup)
        }
        Engine::UringCompat => {
            let setup = compat::setup(&config);
            drive(config, ready, setup)
        }
        Engine::Poll => {
            let setup = poll::setup(&config);
            drive(config, ready, setup)
        }
    }
}

/// What the run loop needs of an engine.
trait Driver {
    /// One turn: hands the queued requests over, waits for something to happen (at most
    /// `IDLE_WAIT`; not at all while `spinning` or while injected results wait), handles it and
    /// closes the batch. Returns how many completions or packets it handled.
    fn turn(&mut self, worker: &mut Worker, spinning: bool) -> io::Result<usize>;
    /// Stops: cancels what is in flight and waits for the last results. False if something did
    /// not report back within `DRAIN_DEADLINE`.
    fn drain(&mut self, worker: &mut Worker) -> bool;
    /// The engine's own operations (reads, receives, cancels) still in flight.
    fn in_flight(&self) -> usize;
    /// Leaks whatever of the engine's the kernel may still use, after a drain that did not end.
    fn leak(self);
}

/// Runs an engine set up by `setup` until it is asked to stop or its data path breaks, then
/// drains it; leaks the memory if the drain does not finish (the contract in `ring`).
fn drive<D: Driver>(
    config: WorkerConfig,
    ready: Sender<Result<(), sys::Error>>,
    setup: Result<(D, Worker), sys::Error>,
) -> Option<WorkerExit> {
    let (mut engine, mut worker) = report_setup(setup, ready)?;
    let mut spin = Spin::new(config.busy_poll);
    let mut spinning = false;
    while !config.stop.load(Ordering::Relaxed) && worker.fatal.is_none() {
        match engine.turn(&mut worker, spinning) {
            Ok(handled) => spinning = spin.after_batch(handled > 0),
            Err(e) => {
                worker.fatal = Some(e);
                break;
            }
        }
        config.shared.beat(config.queue);
        worker.tick(&config);
    }
    // A fatal error in one worker stops them all.
    config.stop.store(true, Ordering::Relaxed);
    let drained = engine.drain(&mut worker);
    let exit = worker.exit();
    if !drained {
        eprintln!(
            "tunfwd: queue {}: {} operations did not finish at shutdown; leaking their buffers",
            config.queue,
            engine.in_flight() + worker.requests.in_flight
        );
        std::mem::forget(worker.memory);
        engine.leak();
    }
    Some(exit)
}

/// Sets the shared stop flag when dropped.
struct StopOnExit(Arc<AtomicBool>);

impl Drop for StopOnExit {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Waits for `workers` setup reports. Each worker sends one and then drops its sender (see
/// [`run`]); one that dies first drops it unsent. So this returns once every report is in or
/// every sender is gone, and never waits for a worker that is not there.
pub fn await_ready(
    ready: &Receiver<Result<(), sys::Error>>,
    workers: usize,
) -> Result<(), sys::Error> {
    let mut first_error = None;
    let mut reports = 0;
    while reports < workers {
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => break,
        }
        reports += 1;
    }
    match first_error {
        Some(e) => Err(e),
        None if reports < workers => Err(sys::Error::WorkerLost {
            missing: workers - reports,
        }),
        None => Ok(()),
    }
}

/// Reports the outcome of an engine's setup on `ready` and drops it (see [`run`]).
fn report_setup<T>(
    setup: Result<T, sys::Error>,
    ready: Sender<Result<(), sys::Error>>,
) -> Option<T> {
    match setup {
        Ok(parts) => {
            let _ = ready.send(Ok(()));
            Some(parts)
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            None
        }
    }
}

/// When an engine stops looking for work without sleeping (`--busy-poll`): `busy_poll` after
/// the last batch that handled something.
#[derive(Debug, Clone, Copy)]
struct Spin {
    busy_poll: Duration,
    until: Option<Instant>,
}

impl Spin {
    fn new(busy_poll: Duration) -> Spin {
        Spin {
            busy_poll,
            until: None,
        }
    }

    /// Notes a batch that handled `work` completions or packets; returns whether to keep
    /// looking without sleeping.
    fn after_batch(&mut self, work: bool) -> bool {
        if self.busy_poll.is_zero() {
            return false;
        }
        let now = Instant::now();
        if work {
            self.until = Some(now + self.busy_poll);
        }
        match self.until {
            Some(until) if now < until => true,
            _ => {
                self.until = None;
                false
            }
        }
    }
}

/// Reads the test-only faults (`crate::faults`) at the start of a worker's setup, and panics
/// there if asked to.
fn setup_faults(queue: usize) -> Faults {
    let faults = Faults::from_env();
    if faults.setup_panic(queue) {
        panic!("queue {queue}: injected fault: a panic during setup");
    }
    faults
}

/// Pins the calling thread to `cpu`.
fn pin(queue: usize, cpu: usize) -> Result<(), sys::Error> {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        return Err(sys::Error::Pin { queue, cpu });
    }
    Ok(())
}

/// Buffers for a ring of `buf_len`-byte buffers: about `budget` bytes' worth (rounding up, so
/// that 1 MiB makes 16 buffers of 64 KiB plus headers), but at least 8 and at most `depth`,
/// rounded down to a power of two.
///
/// Why a budget: buffers are handed out in turn, so the kernel's copies and our passes over the
/// data cycle through every buffer; their memory is the working set. 256 buffers of 64 KiB (16
/// MiB per direction) is far out of cache. Measured with one TCP stream (`benches/e2e.rs`, the
/// q1 and q1 bufmem16M rows) the 1 MiB default is faster.
fn buffer_count(depth: usize, budget: usize, buf_len: usize) -> u16 {
    const MIN_BUFFERS: usize = 8;
    let fit = budget.div_ceil(buf_len.max(1)).max(MIN_BUFFERS);
    let n = depth.min(fit).max(1);
    (1usize << (usize::BITS - 1 - n.leading_zeros())) as u16
}

/// Where a receive buffer's parts go: `head` bytes of engine header (io_uring's
/// `io_uring_recvmsg_out` for a multishot receive, none otherwise), the source address, the
/// control data, then the payload.
#[derive(Debug, Clone, Copy)]
struct ReceiveLayout {
    head: usize,
    name_len: usize,
    control_len: usize,
}

impl ReceiveLayout {
    fn payload_at(self) -> usize {
        self.head + self.name_len + self.control_len
    }
}

impl Worker {
    /// Builds the engine-neutral half of a worker: buffers, slots, the path view. `head`: the
    /// bytes the engine's receives put ahead of the source address (see [`ReceiveLayout`]).
    fn new(config: &WorkerConfig, faults: Faults, head: usize) -> Result<Worker, sys::Error> {
        let queue = config.queue;
        let offloads = config.offloads;
        let mtu = config.mtu as usize;
        let depth = config.ring_depth;
        let round = |n: usize| n.div_ceil(64) * 64;
        let alloc = |source| sys::Error::RegisterBuffers { queue, source };
        let tun_packet_room = if offloads.tun_offloads() { 65535 } else { mtu };
        let tun_len = round(vnet::LEN + tun_packet_room);
        let tun_count = buffer_count(depth, config.buffer_memory, tun_len);
        let tun_buffers = BufRing::new(0, tun_count, tun_len).map_err(alloc)?;
        let udp_payload_room = if offloads.udp_gro { 65535 } else { mtu };
        // The UDP_GRO segment size and, for ECN, the outer TOS: `udp_recvmsg` puts both.
        let control_len = if offloads.udp_gro {
            socket::GRO_CONTROL_LEN
        } else {
            0
        } + if config.marking.ecn {
            socket::TOS_CONTROL_LEN
        } else {
            0
        };
        let layout = ReceiveLayout {
            head,
            name_len: size_of::<libc::sockaddr_in6>(),
            control_len: match (offloads.udp_gro, faults.ctrunc()) {
                // Less than a cmsghdr: the kernel cuts every UDP_GRO message (MSG_CTRUNC).
                (true, true) => 8,
                _ => control_len,
            },
        };
        let udp_len = round(layout.payload_at() + udp_payload_room);
        let udp_count = buffer_count(depth, config.buffer_memory, udp_len);
        let udp_buffers = BufRing::new(1, udp_count, udp_len).map_err(alloc)?;
        let slot_segments = if offloads.tun_offloads() {
            MAX_SPLIT_SEGMENTS
        } else {
            GSO_MAX_SEGMENTS
        };
        let mut key = [0u8; 16];
        random::fill(&mut key).map_err(|source| sys::Error::Socket {
            address: config.peer,
            source,
        })?;
        let limiter = SourceLimiter::new(
            (
                u64::from_ne_bytes(key[..8].try_into().expect("8 bytes")),
                u64::from_ne_bytes(key[8..].try_into().expect("8 bytes")),
            ),
            slots::REPLIES_PER_SOURCE_PER_SECOND,
            slots::REPLY_BURST_PER_SOURCE,
        );
        // Only the worker that probes sends anything longer than an acknowledgement.
        let control_len = if config.path_machine.is_some() { mtu } else { 0 };
        let memory = Memory::new(
            tun_buffers,
            udp_buffers,
            slot_segments,
            layout,
            config.peer,
            (limiter, config.reply_budget.clone()),
            control_len,
        );
        let family = OuterFamily::of(config.peer);
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|source| sys::Error::Socket {
                address: config.peer,
                source,
            })
        };
        let mut stats = WorkerStats::new(queue);
        let path = PathMtu::new(family, mtu, Some(config.shared_path.working()));
        stats.path.path_mtu = path.path_mtu as u64;
        let now = Instant::now();
        Ok(Worker {
            memory,
            socket: dup(&config.socket)?,
            tun: dup(&config.tun)?,
            fragmenting: config.fragmenting.as_ref().map(dup).transpose()?,
            peer: config.peer,
            peer_canonical: socket::canonical(config.peer),
            offloads,
            coalesce: Policy {
                tcp: offloads.tso,
                udp: offloads.uso,
            },
            marking: config.marking,
            published_path_mtu: path.path_mtu,
            path,
            shared_path: config.shared_path.clone(),
            plpmtud: config.path_machine.map(Plpmtud::new),
            path_limits: config.path_machine,
            ack_bucket: TokenBucket::new(ACKS_PER_SECOND, ACKS_PER_SECOND),
            stats,
            socket_drops_seen: 0,
            tun_read_at_ns: vec![0; usize::from(tun_count)].into_boxed_slice(),
            udp_read_at_ns: vec![0; usize::from(udp_count)].into_boxed_slice(),
            tun_free: (0..tun_count).rev().collect(),
            udp_free: (0..udp_count).rev().collect(),
            batcher: Batcher::default(),
            reports: ErrorReports::default(),
            refused: Vec::with_capacity(MAX_GSO_SENDS),
            requests: Requests {
                queued: Vec::with_capacity(4 * depth + 16),
                ..Requests::default()
            },
            epoch: now,
            next_egress_check: now,
            next_fragmenting_check: now,
            next_snapshot: config.snapshot_every.map(|every| now + every),
            peer_generation: 0,
            stopping: false,
            fatal: None,
            faults,
        })
    }

    /// Nanoseconds since the worker's epoch: the clock of its latency samples.
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Reports the result of a request (a send or a TUN write) back to the worker.
    fn complete(&mut self, token: Token, result: i32, now_ns: u64) {
        self.requests.in_flight = self.requests.in_flight.saturating_sub(1);
        match token.op {
            Op::UdpSend => self.on_send_done(SendIndex::unpack(token.index), result, now_ns),
            Op::TunWrite => self.on_write_done(WriteIndex::unpack(token.index), result, now_ns),
            Op::ControlSend => self.on_control_sent(token.index as usize, result),
            _ => {}
        }
    }

    /// Delivers the results injected since the last batch (test-only faults).
    fn deliver_injected(&mut self, now_ns: u64) {
        if !self.requests.injected.is_empty() {
            for (token, result) in std::mem::take(&mut self.requests.injected) {
                self.complete(token, result, now_ns);
            }
        }
    }

    /// Closes a batch of completions: looks at the path once if a completion asked for it,
    /// settles the sends refused as too big, sends what was gathered.
    fn end_batch(&mut self, now_ns: u64) {
        self.deliver_injected(now_ns);
        self.read_error_reports();
        self.run_path(now_ns);
        // Before the GSO batch gathered in this batch, whose packets were read later. Splits and
        // sends without GSO made during this batch are already queued, so a resent packet can
        // leave after newer ones of its flow: a refusal and resend reorders, as a GSO fallback
        // does.
        self.settle_refusals(now_ns);
        self.send_batch();
    }

    /// Between batches: runs the path MTU machine's timers and sends a stats snapshot when one
    /// is due.
    fn tick(&mut self, config: &WorkerConfig) {
        let now = Instant::now();
        if now >= self.next_fragmenting_check {
            self.read_fragmenting_errors();
            self.next_fragmenting_check = now + FRAGMENTING_ERRORS_CHECK;
        }
        if let Some(machine) = &mut self.plpmtud {
            let now_ns = self.epoch.elapsed().as_nanos() as u64;
            if now >= self.next_egress_check {
                // The egress device's own MTU: local, so trusted (two netlink questions).
                if let Ok(mtu) = netlink::egress_mtu(self.peer.ip()) {
                    machine.on_egress_mtu(mtu as usize, now_ns);
                }
                self.next_egress_check = now + EGRESS_MTU_RECHECK;
            }
            self.run_path(now_ns);
        }
        if let (Some(at), Some(every)) = (self.next_snapshot, config.snapshot_every)
            && now >= at
        {
            self.read_kernel_counts();
            config.shared.put_snapshot(self.stats.clone());
            self.next_snapshot = Some(at + every);
        }
        if let Some(peer) = config.shared.peer_if_moved(&mut self.peer_generation) {
            self.follow_peer(peer);
        }
    }

    /// Sends to `peer` from now on, and takes datagrams from it alone: the peer's name resolved
    /// elsewhere (the main thread looked it up again). The path to it is a new one, so its path
    /// MTU is found anew. The old address stays in memory as long as sends in flight may name it.
    fn follow_peer(&mut self, peer: SocketAddr) {
        if peer == self.peer || OuterFamily::of(peer) != self.path.family {
            return;
        }
        self.peer = peer;
        self.peer_canonical = socket::canonical(peer);
        self.memory.move_peer(peer);
        if let Some(limits) = self.path_limits {
            self.plpmtud = Some(Plpmtud::new(limits));
            self.shared_path.publish(limits.largest);
        }
    }

    /// A read that failed with `errno`: counted, tolerated, or after
    /// `MAX_CONSECUTIVE_FAILURES` in a row the worker's end. `failures` is that read's count.
    fn on_read_error(&mut self, tun: bool, errno: i32, failures: &mut u32) {
        match errno {
            libc::ENOBUFS => self.stats.counters.buffer_stalls += 1,
            libc::ECANCELED | libc::EINTR | libc::EAGAIN => {}
            _ if !tun && self.reports.note_receive_error(errno) => {}
            _ => {
                *failures += 1;
                if *failures >= MAX_CONSECUTIVE_FAILURES {
                    let what = if tun { "TUN read" } else { "UDP receive" };
                    let e = io::Error::from_raw_os_error(errno);
                    self.fatal.get_or_insert(io::Error::new(
                        e.kind(),
                        format!("{what} keeps failing: {e}"),
                    ));
                }
            }
        }
    }

    /// What only the kernel counts: the datagrams its socket dropped before the worker saw them.
    /// One system call; between batches, with each snapshot and at exit. The kernel's count is
    /// 32 bits, so it is added up here as it rises (at least every second with `--metrics`).
    fn read_kernel_counts(&mut self) {
        if let Ok(now) = socket::receive_drops(&self.socket) {
            self.stats.counters.udp_socket_drops += stats::count_since(self.socket_drops_seen, now);
            self.socket_drops_seen = now;
        }
    }

    fn exit(&mut self) -> WorkerExit {
        self.read_kernel_counts();
        WorkerExit {
            stats: self.stats.clone(),
            error: self.fatal.take(),
        }
    }
}

/// Sets `O_NONBLOCK` on `fd`, for the engines that read a TUN queue until it is empty.
fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own, with integer arguments.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_worker_that_dies_in_setup_cannot_hang_the_wait() {
        // Three workers: one reports, one panics before reporting, one reports after the panic
        // and then keeps running (as a healthy worker does). The wait must end, with an error.
        let (tx, rx) = mpsc::channel::<Result<(), sys::Error>>();
        let (hold_tx, hold_rx) = mpsc::channel::<()>();
        let ok = tx.clone();
        ok.send(Ok(())).unwrap();
        drop(ok);
        let dying = tx.clone();
        let panicker = std::thread::spawn(move || {
            let _sender = dying;
            panic!("injected: setup failed");
        });
        let late = tx.clone();
        let survivor = std::thread::spawn(move || {
            late.send(Ok(())).unwrap();
            drop(late); // what `run` does once it has reported
            let _ = hold_rx.recv_timeout(Duration::from_secs(10));
        });
        drop(tx);
        assert!(panicker.join().is_err());
        let (done_tx, done_rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = done_tx.send(await_ready(&rx, 3));
        });
        let verdict = done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("await_ready returned instead of hanging");
        assert!(matches!(
            verdict,
            Err(sys::Error::WorkerLost { missing: 1 })
        ));
        drop(hold_tx);
        survivor.join().unwrap();
        waiter.join().unwrap();
    }

    #[test]
    fn setup_errors_are_reported_and_success_needs_every_worker() {
        let (tx, rx) = mpsc::channel();
        tx.send(Ok(())).unwrap();
        tx.send(Err(sys::Error::Pin { queue: 1, cpu: 9 })).unwrap();
        drop(tx);
        assert!(matches!(
            await_ready(&rx, 2),
            Err(sys::Error::Pin { queue: 1, cpu: 9 })
        ));
        let (tx, rx) = mpsc::channel();
        tx.send(Ok(())).unwrap();
        tx.send(Ok(())).unwrap();
        assert!(await_ready(&rx, 2).is_ok());
    }

    #[test]
    fn send_indexes_round_trip_through_the_token() {
        for route in [Route::Direct, Route::Fragmenting] {
            for bid in [0, 1, 255, u16::MAX] {
                for msg in [
                    0,
                    1,
                    MAX_GSO_SENDS as u16,
                    (MAX_GSO_SENDS + MAX_SPLIT_SEGMENTS) as u16,
                ] {
                    let index = SendIndex { bid, msg, route };
                    let token = Token::new(Op::UdpSend, index.pack());
                    let back = Token::from_user_data(token.user_data()).unwrap();
                    assert_eq!(back.op, Op::UdpSend);
                    assert_eq!(SendIndex::unpack(back.index), index);
                }
            }
        }
    }

    #[test]
    fn write_indexes_round_trip_through_the_token() {
        let mut seen = std::collections::HashSet::new();
        for bid in [0, 1, 255, u16::MAX] {
            for n in [0u16, 1, 127, 0x3fff] {
                for index in [
                    WriteIndex::Run { bid, run: n },
                    WriteIndex::Segment { bid, segment: n },
                    WriteIndex::Reply { k: bid },
                ] {
                    let token = Token::new(Op::TunWrite, index.pack());
                    let back = Token::from_user_data(token.user_data()).unwrap();
                    assert_eq!(WriteIndex::unpack(back.index), index);
                    seen.insert(index.pack());
                }
            }
        }
        // Runs, segments and replies never share an index.
        assert_eq!(seen.len(), 4 * 4 * 2 + 4);
    }

    #[test]
    fn busy_polling_spins_only_after_work_and_only_as_long_as_asked() {
        let mut off = Spin::new(Duration::ZERO);
        assert!(!off.after_batch(true), "0 never spins");
        let mut spin = Spin::new(Duration::from_millis(500));
        assert!(!spin.after_batch(false), "no work yet: sleep");
        assert!(spin.after_batch(true));
        assert!(spin.after_batch(false), "still within 500 ms of the work");
        std::thread::sleep(Duration::from_millis(600));
        assert!(!spin.after_batch(false), "500 ms without work: sleep");
        assert!(!spin.after_batch(false));
        assert!(spin.after_batch(true), "new work spins again");
    }

    #[test]
    fn buffers_fit_the_budget_within_depth() {
        const MIB: usize = 1 << 20;
        let big = 65600; // a 64 KiB super-packet buffer with its headers
        assert_eq!(
            buffer_count(256, MIB, big),
            16,
            "1 MiB / 65600 B = 15.98, rounded up"
        );
        assert_eq!(buffer_count(256, 2 * MIB, big), 32);
        assert_eq!(
            buffer_count(256, 3 * MIB, big),
            32,
            "48 rounded down to a power of two"
        );
        assert_eq!(buffer_count(256, 16 * MIB, big), 256);
        assert_eq!(
            buffer_count(256, MIB, 1536),
            256,
            "MTU-sized buffers: depth rules"
        );
        assert_eq!(buffer_count(64, MIB, 1536), 64);
        assert_eq!(buffer_count(1024, MIB, 1536), 512, "683 rounded down");
        assert_eq!(buffer_count(1, MIB, big), 1, "depth 1 stays 1");
        assert_eq!(buffer_count(256, 64 * 1024, big), 8, "never fewer than 8");
    }
}
