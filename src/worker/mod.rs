//! One worker: a pinned thread that owns one TUN queue and one UDP socket, and moves packets
//! between them with one of three I/O engines. Nothing is shared with other workers on the data
//! path.
//!
//! The protocol state is the relay core's (`crate::relay::Relay`, pure): which buffers are out,
//! what each send and write carries, what a result means, the path MTU, the counters. This module
//! is the shell around it, and does only I/O: it owns the buffers and, beside them, the msghdrs,
//! iovecs and control messages sends and writes are made of ([`memory`]); it turns each of the
//! relay's requests into those ([`Worker::pump`]) and answers the relay's system requests (the
//! error queue, `SO_MEMINFO`, the egress MTU) at once; an engine carries out the sends and writes
//! and reports each result back ([`Worker::complete`]):
//! * [`uring`]: io_uring with a multishot read on the TUN and a multishot recvmsg, both picking
//!   buffers from provided-buffer rings (Linux 6.7).
//! * [`compat`]: io_uring with single-shot reads and receives into buffers it owns (Linux 5.15).
//! * [`poll`]: no io_uring; `poll`, `read`/`writev` and `recvmmsg`/`sendmmsg`.
//!
//! Test-only faults (`crate::faults`) are injected by each engine where it would make the system
//! call, and their results come back through that engine's own completion path.
//!
//! All `unsafe` here is about the buffer-lifetime contract stated in `ring`, which every engine
//! keeps: a buffer named by a request in flight is not written, and memory is freed only after
//! every operation has completed (or leaked, if the drain at shutdown does not finish).

mod compat;
mod memory;
mod poll;
pub mod probe;
mod uring;

pub use crate::engine::Engine;
pub use crate::relay::{MAX_SPLIT_SEGMENTS, Offloads, REPLIES_PER_SECOND, REPLY_BURST};

use crate::faults::{Call, Faults};
use crate::offload::ecn::Marking;
use crate::offload::icmp::SharedBucket;
use crate::relay::entropy::SourcePorts;
use crate::relay::plpmtud::{Limits, SharedPath};
use crate::relay::wireguard::{ControlCounters, ToControl, WireguardConfig};
use crate::relay::{
    EntropyConfig, Received, Relay, RelayConfig, Request, Socket, Token, WriteIndex,
};
use crate::ring::BufRing;
use crate::shared::Shared;
use crate::stats::WorkerStats;
use crate::sys;
use crate::sys::{netlink, random, socket};
use crate::wire::{cmsg, vnet};
use memory::Memory;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

/// How long an idle worker sleeps at most before it looks at the stop flag and the timers.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long shutdown waits for cancelled operations to report back before leaking their memory.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);
/// How often a worker tries again to point extra sockets it could not at the peer.
const EXTRAS_RETRY_NS: u64 = 1_000_000_000;

/// What one worker needs. The fds are opened (and the sockets bound) by the caller.
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
    /// Extra sockets for outer flow entropy (`relay::entropy`): this worker's own on each of the
    /// relay's extra ports, connected to the peer; sent from once the peer acknowledged them.
    pub extra_sockets: Vec<OwnedFd>,
    /// What the relay's workers share about outer entropy.
    pub source_ports: Arc<SourcePorts>,
    /// The relay's workers (which of them probes which extra tuple).
    pub workers: usize,
    /// Run the advertiser of the relay's extra ports (one worker).
    pub advertise: bool,
    /// Path MTU limits, for the extra tuples' machines.
    pub tuple_limits: Option<Limits>,
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
    /// Whether the queues in front of the worker are timed, and what the AQM does (`--aqm`);
    /// when timed, the socket has `SO_TIMESTAMPNS` on.
    pub aqm: crate::relay::aqm::Settings,
    pub stop: Arc<AtomicBool>,
    /// How often to leave a stats snapshot in `shared`, if at all.
    pub snapshot_every: Option<Duration>,
    /// What the main thread and the workers share: snapshots, heartbeats, the peer's address.
    pub shared: Arc<Shared>,
    /// WireGuard mode: what the worker shares with the control thread; `None` in raw mode.
    pub wireguard: Option<WorkerWireguard>,
}

/// What a worker in WireGuard mode shares with the control thread (`crate::wireguard`).
#[derive(Clone)]
pub struct WorkerWireguard {
    /// The tables the control thread publishes.
    pub data_plane: Arc<tunfwd_wireguard::DataPlane>,
    /// The control thread's bounded queue; a worker never waits on it.
    pub to_control: std::sync::mpsc::SyncSender<ToControl>,
    /// Handshake messages queued and not yet taken: the control thread's measure of load.
    pub pending: Arc<std::sync::atomic::AtomicUsize>,
    /// The control thread's counters, given to queue 0 only, which reports them.
    pub control_counters: Option<Arc<ControlCounters>>,
    /// The origin of the device's clock.
    pub epoch: Instant,
}

impl WorkerWireguard {
    /// The relay's half: `now` is the worker's epoch.
    fn relay_config(&self, now: Instant) -> WireguardConfig {
        let to_control = self.to_control.clone();
        let pending = self.pending.clone();
        WireguardConfig {
            data_plane: self.data_plane.clone(),
            to_control: Box::new(move |message| {
                let handshake = matches!(message, ToControl::Handshake { .. });
                if handshake {
                    pending.fetch_add(1, Ordering::Relaxed);
                }
                let sent = to_control.try_send(message).is_ok();
                if handshake && !sent {
                    pending.fetch_sub(1, Ordering::Relaxed);
                }
                sent
            }),
            control_counters: self.control_counters.clone(),
            clock_offset_ns: now.saturating_duration_since(self.epoch).as_nanos() as u64,
        }
    }
}

/// How a worker ended.
pub struct WorkerExit {
    pub stats: WorkerStats,
    /// Set when the worker stopped because its data path broke, not because it was asked to.
    pub error: Option<io::Error>,
    /// Set when the worker stopped because its TUN device was deleted.
    pub device_gone: bool,
}

/// One send or write for the engine to carry out, naming memory in `Worker::memory` (and the
/// relay's own) that stays put and unwritten until its result is reported back with `token`
/// (the contract in `ring`).
#[derive(Debug, Clone, Copy)]
enum Submission {
    /// `sendmsg(msg, MSG_DONTWAIT)` on `socket`.
    Send {
        token: Token,
        socket: Socket,
        msg: *const libc::msghdr,
        /// It carries several datagrams (`UDP_SEGMENT`).
        gso: bool,
    },
    /// `writev` on the TUN queue.
    Write {
        token: Token,
        iovs: *const libc::iovec,
        count: u32,
        /// It writes a merged super-packet.
        merged: bool,
    },
}

impl Submission {
    fn token(&self) -> Token {
        match *self {
            Submission::Send { token, .. } | Submission::Write { token, .. } => token,
        }
    }

    /// What the submission is, for fault injection.
    fn call(&self) -> Call {
        match *self {
            Submission::Send { gso, .. } => Call::Send { gso },
            Submission::Write { merged: true, .. } => Call::MergedWrite,
            Submission::Write { .. } => Call::Write,
        }
    }
}

/// Submissions made and not yet handed to the engine. How many await their result is the
/// relay's count ([`Relay::in_flight`]); `stuck` adds the operations the `drain-stuck` fault
/// makes up, which never report back.
#[derive(Default)]
struct Submissions {
    queued: Vec<Submission>,
    stuck: usize,
}

/// Results an engine made up for submissions it did not carry out (test-only faults), waiting
/// to be delivered through its completion path. Always empty in the shipped binary.
#[derive(Default)]
struct Injected {
    ready: Vec<(Token, i32)>,
    /// One held back until the next injection (or the drain), so that two refused operations
    /// are in flight at once.
    held: Option<(Token, i32)>,
}

impl Injected {
    /// Asks the faults whether `submission` is to fail instead of being carried out; if so,
    /// keeps its result for the engine to deliver and returns true.
    fn intercept(&mut self, faults: &mut Faults, submission: &Submission) -> bool {
        let Some((errno, hold)) = faults.intercept(submission.call()) else {
            return false;
        };
        let result = (submission.token(), -errno);
        if hold && self.held.is_none() && self.ready.is_empty() {
            self.held = Some(result);
        } else {
            self.ready.push(result);
            self.ready.extend(self.held.take());
        }
        true
    }

    /// Lets a held result go (at the drain: no second refusal will come).
    fn release(&mut self) {
        self.ready.extend(self.held.take());
    }

    fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }
}

/// Builds the `Received` of a single-shot receive of `len` payload bytes into a buffer laid out
/// per `layout`, from the msghdr the kernel updated.
fn received_from_msghdr(msg: &libc::msghdr, layout: ReceiveLayout, len: usize) -> Received {
    let name_len = (msg.msg_namelen as usize).min(layout.name_len);
    let control_at = layout.head + layout.name_len;
    let control_len = msg.msg_controllen.min(layout.control_len);
    let payload_at = layout.payload_at();
    Received {
        name: layout.head..layout.head + name_len,
        control: control_at..control_at + control_len,
        payload: payload_at..payload_at + len,
        payload_truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        control_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    }
}

/// Whether a send on `socket` names the peer's address. Not on an extra socket, which is
/// connected to the peer: the kernel then takes its cached route (`udp_sendmsg`), and one not
/// connected yet (no route to the peer at startup) fails its tuple's probes as it fails its data,
/// so that the tuple is not confirmed while its data cannot go.
fn addressed(socket: Socket) -> bool {
    !matches!(socket, Socket::Extra(_))
}

/// The shell of one worker: the relay, and the memory and fds its requests are carried out on.
struct Worker {
    relay: Relay,
    memory: Memory,
    /// For the error queue, `SO_MEMINFO`, and the `poll` engine's system calls.
    socket: OwnedFd,
    tun: OwnedFd,
    fragmenting: Option<OwnedFd>,
    /// Extra sockets for outer flow entropy, `Socket::Extra(k)`.
    extras: Vec<OwnedFd>,
    /// When to try again to point the extra sockets that are not connected at the peer (no
    /// route to it at startup, or after it moved); `None` while all are.
    extras_retry_at_ns: Option<u64>,
    submissions: Submissions,
    epoch: Instant,
    /// The generation of the peer's address the relay sends to (`Shared::peer_if_moved`).
    peer_generation: u64,
    fatal: Option<io::Error>,
    /// The TUN device was deleted: stop.
    device_gone: bool,
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
    while !config.stop.load(Ordering::Relaxed) && worker.fatal.is_none() && !worker.device_gone {
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
            engine.in_flight() + worker.in_flight()
        );
        // The relay's own memory (rewritten headers, control messages) may be named too.
        std::mem::forget(worker.memory);
        std::mem::forget(worker.relay);
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

/// Pins the calling thread to `cpu`; the error says why the kernel refused
/// (`sys::affinity::pin_current_thread`).
fn pin(queue: usize, cpu: usize) -> Result<(), sys::Error> {
    sys::affinity::pin_current_thread(cpu).map_err(|source| sys::Error::Pin { queue, cpu, source })
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
    /// Builds the engine-neutral half of a worker: buffers, slots, the relay. `head`: the bytes
    /// the engine's receives put ahead of the source address (see [`ReceiveLayout`]).
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
            cmsg::GRO_CONTROL_LEN
        } else {
            0
        } + if config.marking.ecn {
            cmsg::TOS_CONTROL_LEN
        } else {
            0
        } + if config.aqm.timed() {
            cmsg::TIMESTAMP_CONTROL_LEN
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
        let slot_segments = crate::relay::slot_segments(offloads);
        let memory = Memory::new(tun_buffers, udp_buffers, slot_segments, layout, config.peer);
        let random = |source| sys::Error::Socket {
            address: config.peer,
            source,
        };
        let reply_key = (
            random::nonzero_u64().map_err(random)?,
            random::nonzero_u64().map_err(random)?,
        );
        let now = Instant::now();
        let relay = Relay::new(RelayConfig {
            queue,
            peer: config.peer,
            mtu,
            offloads,
            marking: config.marking,
            tun_buffers: tun_count,
            udp_buffers: udp_count,
            fragmenting: config.fragmenting.is_some(),
            shared_path: config.shared_path.clone(),
            path_machine: config.path_machine,
            reply_budget: config.reply_budget.clone(),
            reply_key,
            epoch: now,
            nonces: Box::new(random::nonce_or_none),
            snapshot_every_ns: config.snapshot_every.map(|every| every.as_nanos() as u64),
            entropy: EntropyConfig {
                source_ports: config.source_ports.clone(),
                sockets: config.extra_sockets.len() as u8,
                workers: config.workers,
                advertise: config.advertise,
                limits: config.tuple_limits,
            },
            aqm: config.aqm,
            wireguard: config.wireguard.as_ref().map(|wg| wg.relay_config(now)),
        });
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|source| sys::Error::Socket {
                address: config.peer,
                source,
            })
        };
        let mut worker = Worker {
            relay,
            memory,
            socket: dup(&config.socket)?,
            tun: dup(&config.tun)?,
            fragmenting: config.fragmenting.as_ref().map(dup).transpose()?,
            extras: config
                .extra_sockets
                .iter()
                .map(dup)
                .collect::<Result<_, _>>()?,
            extras_retry_at_ns: config
                .extra_sockets
                .iter()
                .any(|fd| !socket::is_connected(fd))
                .then_some(0),
            submissions: Submissions {
                queued: Vec::with_capacity(4 * depth + 16),
                ..Submissions::default()
            },
            epoch: now,
            peer_generation: 0,
            fatal: None,
            device_gone: false,
            faults,
        };
        worker.report_wall_clock(worker.now_ns());
        Ok(worker)
    }

    /// Nanoseconds since the worker's epoch: the relay's clock.
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A TUN read of `len` bytes filled buffer `bid`, which is now the relay's.
    fn on_tun_read(&mut self, bid: u16, len: usize, now_ns: u64) {
        // SAFETY: the read handed `bid` to the worker: no request names it until the relay names
        // it in one or gives it back (the contract in `ring`), and this slice ends before then.
        let buffer = unsafe { self.memory.tun_buffers.buffer_mut(bid) };
        self.relay.on_tun_read(bid, buffer, len, now_ns);
    }

    /// A receive filled UDP buffer `bid`, which is now the relay's, as `received` says.
    fn on_udp_recv(&mut self, bid: u16, received: Received, now_ns: u64) {
        // SAFETY: as for `on_tun_read`: no request names `bid` yet.
        let buffer = unsafe { self.memory.udp_buffers.buffer_mut(bid) };
        self.relay.on_udp_recv(bid, buffer, received, now_ns);
    }

    /// A read or receive failed; after too many in a row, the worker's end.
    fn on_read_error(&mut self, tun: bool, errno: i32) {
        // A queue whose device was deleted (`ip link delete`, which `wg-quick down` runs)
        // answers every read with EBADFD (`tun_chr_read_iter`, drivers/net/tun.c): the relay's
        // end, not a fault.
        if tun && errno == libc::EBADFD {
            self.device_gone = true;
            return;
        }
        if self.relay.on_read_error(tun, errno).is_err() {
            let what = if tun { "TUN read" } else { "UDP receive" };
            let e = io::Error::from_raw_os_error(errno);
            self.fatal.get_or_insert(io::Error::new(
                e.kind(),
                format!("{what} keeps failing: {e}"),
            ));
        }
    }

    /// Submissions whose result has not come back: the relay's sends and writes, and what the
    /// `drain-stuck` fault made up.
    fn in_flight(&self) -> usize {
        self.relay.in_flight() + self.submissions.stuck
    }

    /// Reports the result of a submission (a send or a TUN write) back to the relay.
    fn complete(&mut self, token: Token, result: i32, now_ns: u64) {
        let view = self.memory.view();
        self.relay.complete(token, result, now_ns, &view);
    }

    /// Delivers results an engine made up (test-only faults).
    fn deliver(&mut self, injected: &mut Injected, now_ns: u64) {
        for (token, result) in std::mem::take(&mut injected.ready) {
            self.complete(token, result, now_ns);
        }
    }

    /// Closes a batch of completions, and turns what the relay asked for into submissions.
    /// The engine is about to wait for something to do: tells the relay when, if it times the
    /// TUN's ring (`Relay::on_engine_wait`), so that the wait is not counted as queueing.
    fn note_wait(&mut self) {
        if self.relay.times_queues() {
            let now = self.now_ns();
            self.relay.on_engine_wait(now);
        }
    }

    fn end_batch(&mut self, now_ns: u64) {
        let view = self.memory.view();
        self.relay.end_batch(now_ns, &view);
        self.pump(now_ns);
    }

    /// Takes the relay's requests: each send or write is laid out over the memory and queued
    /// for the engine; each system request is carried out here and answered at once (which may
    /// make more requests, taken in turn).
    fn pump(&mut self, now_ns: u64) {
        while let Some(request) = self.relay.poll_request() {
            let submission = match request {
                Request::Send {
                    token,
                    bid,
                    msg,
                    first,
                    segments,
                    segment_size,
                    socket,
                    ..
                } => Submission::Send {
                    token,
                    socket,
                    msg: self.memory.lay_out_send(
                        &self.relay,
                        bid,
                        msg,
                        (first, segments),
                        segment_size,
                        addressed(socket),
                    ),
                    gso: segment_size.is_some(),
                },
                Request::Write { token } => {
                    let index = WriteIndex::unpack(token.index);
                    let (iovs, count, merged) = self.memory.lay_out_write(&self.relay, index);
                    Submission::Write {
                        token,
                        iovs,
                        count,
                        merged,
                    }
                }
                Request::SendControl {
                    token,
                    k,
                    len,
                    socket,
                } => Submission::Send {
                    token,
                    socket,
                    msg: self
                        .memory
                        .lay_out_control(&self.relay, k, len, addressed(socket)),
                    gso: false,
                },
                Request::DrainErrors { socket } => {
                    let fd = self.socket_fd(socket);
                    let peer = Some(self.relay.peer().ip());
                    let queued = fd
                        .map(|fd| socket::drain_error_queue(fd, peer))
                        .unwrap_or_default();
                    let view = self.memory.view();
                    self.relay.on_errors_drained(socket, queued, now_ns, &view);
                    continue;
                }
                Request::ReadSocketDrops => {
                    self.relay
                        .on_socket_drops(socket::receive_drops(&self.socket).ok());
                    continue;
                }
                Request::ReadEgressMtu => {
                    let mtu = netlink::egress_mtu(self.relay.peer().ip()).ok();
                    self.relay.on_egress_mtu(mtu, now_ns);
                    continue;
                }
            };
            self.submissions.queued.push(submission);
        }
    }

    /// Between batches: runs the relay's timers when due, leaves a snapshot for the main thread
    /// when one is ready, and follows the peer when its name moved.
    fn tick(&mut self, config: &WorkerConfig) {
        let now_ns = self.now_ns();
        self.report_wall_clock(now_ns);
        if self.relay.poll_timeout().is_some_and(|at| now_ns >= at) {
            self.relay.on_timeout(now_ns);
            self.pump(now_ns);
        }
        if let Some(snapshot) = self.relay.take_snapshot() {
            config.shared.put_snapshot(snapshot);
        }
        if let Some(peer) = config.shared.peer_if_moved(&mut self.peer_generation)
            && self.relay.follow_peer(peer)
        {
            self.memory.move_peer(peer);
            self.point_extras(peer, now_ns, config.queue, true);
        }
        if self.extras_retry_at_ns.is_some_and(|at| now_ns >= at) {
            self.point_extras(self.relay.peer(), now_ns, config.queue, false);
        }
    }

    /// Points the extra sockets at `peer` (all of them after it `moved`, else those not
    /// connected yet). One that cannot be is disconnected, so that nothing it sends (its
    /// tuple's probes, which echo the peer's cookie) goes to the old address, and is tried
    /// again in [`EXTRAS_RETRY_NS`]; its tuple carries nothing meanwhile.
    fn point_extras(&mut self, peer: SocketAddr, now_ns: u64, queue: usize, moved: bool) {
        let mut failed = None;
        for fd in &self.extras {
            if !moved && socket::is_connected(fd) {
                continue;
            }
            if let Err(e) = socket::connect(fd, peer) {
                // Still connected to the old peer after a failed connect (the kernel changes
                // nothing then): undone.
                let _ = socket::disconnect(fd);
                failed = Some(e);
            }
        }
        match failed {
            Some(e) => {
                if moved {
                    eprintln!(
                        "tunfwd: queue {queue}: cannot point the extra sockets at {peer} ({e}): \
                         they carry nothing until they can (tried again every second)"
                    );
                }
                self.extras_retry_at_ns = Some(now_ns + EXTRAS_RETRY_NS);
            }
            None => {
                if self.extras_retry_at_ns.take().is_some() && !moved && queue == 0 {
                    eprintln!("tunfwd: the extra source ports point at {peer} now");
                }
            }
        }
    }

    /// The fd of `socket`, if the worker has it.
    fn socket_fd(&self, socket: Socket) -> Option<std::os::fd::RawFd> {
        match socket {
            Socket::Worker => Some(self.socket.as_raw_fd()),
            Socket::Fragmenting => self.fragmenting.as_ref().map(|fd| fd.as_raw_fd()),
            Socket::Extra(k) => self.extras.get(usize::from(k)).map(|fd| fd.as_raw_fd()),
        }
    }

    /// Tells the relay the wall clock at its `now_ns`, for the socket's receive timestamps,
    /// when it times its queues.
    fn report_wall_clock(&mut self, now_ns: u64) {
        if self.relay.times_queues() {
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            self.relay.on_wall_clock(now_ns, wall);
        }
    }

    /// How long an engine may wait for something to happen: until the relay's next timer, at
    /// most `IDLE_WAIT`.
    fn wait_limit(&self) -> Duration {
        let now_ns = self.now_ns();
        self.relay
            .poll_timeout()
            .map_or(IDLE_WAIT, |at| {
                Duration::from_nanos(at.saturating_sub(now_ns))
            })
            .min(IDLE_WAIT)
    }

    /// Stops: sends what was gathered, arms nothing more.
    fn stop(&mut self) {
        self.relay.stop();
        let now_ns = self.now_ns();
        self.pump(now_ns);
    }

    fn stopping(&self) -> bool {
        self.relay.stopping()
    }

    /// The final counters, the socket's drops read once more.
    fn exit(&mut self) -> WorkerExit {
        self.relay.request_snapshot();
        let now_ns = self.now_ns();
        self.pump(now_ns);
        let stats = self
            .relay
            .take_snapshot()
            .unwrap_or_else(|| self.relay.stats().clone());
        WorkerExit {
            stats,
            error: self.fatal.take(),
            device_gone: self.device_gone,
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
        tx.send(Err(sys::Error::Pin {
            queue: 1,
            cpu: 9,
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        }))
        .unwrap();
        drop(tx);
        assert!(matches!(
            await_ready(&rx, 2),
            Err(sys::Error::Pin {
                queue: 1,
                cpu: 9,
                ..
            })
        ));
        let (tx, rx) = mpsc::channel();
        tx.send(Ok(())).unwrap();
        tx.send(Ok(())).unwrap();
        assert!(await_ready(&rx, 2).is_ok());
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
