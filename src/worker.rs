//! One worker: a pinned thread that owns one TUN queue, one UDP socket, one io_uring and two
//! provided-buffer rings, and moves packets between them. Nothing is shared with other workers.
//!
//! # Data path
//! * **TUN to UDP.** One multishot read on the TUN queue (Linux 6.7) fills buffers from the TUN
//!   ring: `[virtio_net_hdr][IP packet]`. A plain packet is sent straight out of its buffer; with
//!   UDP GSO on, consecutive plain packets of one flow and one size are gathered from their
//!   buffers into a single GSO `sendmsg`. A TSO/USO super-packet is split (`offload::split`): each
//!   segment's rewritten headers go into the buffer's slot, and the iovec alternates header and
//!   payload-in-place, so the payload is never copied; up to 64 segments go out per GSO send.
//! * **UDP to TUN.** One multishot `recvmsg` (Linux 6.0) fills buffers from the UDP ring:
//!   `[io_uring_recvmsg_out][source address][control][payload]`. With UDP GRO the payload holds
//!   several datagrams of one stride (the `UDP_GRO` control message). Each is validated; then
//!   runs of consecutive segments that may merge (`offload::coalesce`) are written to the TUN as
//!   one super-packet with `writev([virtio_net_hdr][head][payloads...])`, again without copying.
//!   A merged write the kernel rejects with EINVAL is redone segment by segment (counted), and
//!   merging is switched off for this worker.
//!
//! Completions are reaped in batches: the clock is read once per batch, new submissions are
//! queued and handed to the kernel with the next wait, and returned buffers are published with one
//! store per batch. The hot path allocates nothing, takes no lock and logs nothing; problems
//! become counted drops (`stats::DropReason`).
//!
//! Sends use `MSG_DONTWAIT`: a full socket buffer drops the packet (counted), like a full qdisc,
//! instead of parking the send in io_uring, where a later send could overtake it and reorder the
//! flow.
//!
//! # ECN and path MTU
//! * **ECN** (`offload::ecn`, RFC 6040): each send carries the outer TOS / traffic class made
//!   from its inner packet's as a control message, only when that byte is not 0; a GSO batch
//!   holds packets of one outer TOS only, and a split super-packet has one for all its segments.
//!   Each receive reports its outer TOS (one per buffer: GRO merges only datagrams with equal
//!   TOS, `udp_gro_receive` in net/ipv4/udp_offload.c), which is applied to every inner packet
//!   before the coalescer plans the buffer, so marked and unmarked packets never merge.
//! * **Path MTU.** The socket sends with DF (`IP_PMTUDISC_DO`). Each worker keeps its own view of
//!   the path MTU to the peer and of the inner MTU that follows from it. A send refused as too
//!   big (EMSGSIZE; a GSO send: EINVAL), an EMSGSIZE receive, or an ICMP error about the peer
//!   only raises a flag; once per batch of completions the worker drains the error queue and
//!   rereads the kernel's path MTU (`Worker::read_error_reports`), so a burst of refusals costs
//!   one drain and one reread, not one of each per refusal. It also rereads it every second,
//!   which is how it learns that the path grew again. The refused sends wait for that look: with
//!   `IP_RECVERR`, an ICMP error from a router sets the socket's pending error
//!   (`__udp4_lib_err`, `__udp6_lib_err`) and the next send fails with it whatever its size
//!   (`sock_alloc_send_pskb` checks `sock_error`), so datagrams that fit the new MTU are sent
//!   again, and only those that do not are answered. An inner packet (or a super-packet's
//!   segment) that no longer fits is dropped and answered with ICMP fragmentation-needed /
//!   packet-too-big written into the TUN (`offload::icmp`, rate-limited), or, if it may not be
//!   answered so (IPv4 without DF, IPv6 of at most 1280 bytes, and whatever else the ICMP rules
//!   forbid answering), sent on a second socket that lets the outer IP layer fragment it. That
//!   socket is a registered file of the ring too, and its sends are submissions like the others,
//!   from the same slots, so they leave in order with the packets around them. The TUN device's
//!   MTU is left alone: changing it needs `CAP_NET_ADMIN`, which `--user` gives up, and the ICMP
//!   errors reach the inner senders that matter.
//!
//! All `unsafe` here is about the buffer-lifetime contract stated in `ring`.

use crate::faults::Faults;
use crate::offload::coalesce::{self, Policy, Run};
use crate::offload::complete_checksum;
use crate::offload::ecn::{self, Decapsulated, Ecn, Marking};
use crate::offload::icmp::{self, TokenBucket, TooBig};
use crate::offload::split::{self, GSO_MAX_BYTES, GSO_MAX_SEGMENTS, Split};
use crate::ring::{self, BufRing, Op, Token};
use crate::stats::{Direction, DropReason, WorkerStats};
use crate::steer;
use crate::sys::socket::{OuterFamily, QueuedErrors};
use crate::sys::{self, socket};
use crate::wire::vnet::{FLAG_NEEDS_CSUM, GsoType};
use crate::wire::{IpPacket, VnetHeader, vnet};
use io_uring::types::{CancelBuilder, Fd, Fixed, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, Probe, cqueue, opcode, squeue};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

const TUN_GROUP: u16 = 0;
const UDP_GROUP: u16 = 1;
/// Indexes in the ring's registered-file table.
const TUN_FILE: Fixed = Fixed(0);
const UDP_FILE: Fixed = Fixed(1);
/// The socket that lets the outer IP layer fragment (`PathMtu::fragmenting`), when there is one.
const FRAGMENTING_FILE: Fixed = Fixed(2);
/// `struct io_uring_recvmsg_out`: four u32 fields ahead of the name in a multishot recvmsg buffer.
const RECVMSG_OUT_LEN: usize = 16;
/// How long an idle worker sleeps before it looks at the stop flag and the stats clock.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long shutdown waits for cancelled operations to report back before leaking their memory.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);
/// A multishot operation that fails this many times in a row, with no data in between, is broken.
const MAX_CONSECUTIVE_FAILURES: u32 = 64;
/// Segments one super-packet may split into (gso_size >= 512 for a 64 KB packet).
///
/// The TUN's `gso_max_segs` is capped at this (see `main`), so a super-packet never holds more.
/// A small inner MSS is why it is large: `gso_max_size` keeps a super-packet under 62 KB at MTU
/// 1420, which at MSS 200 is 310 segments. Capping at one GSO send's 64 instead made the stack
/// hand over 12 KB super-packets, and cost a third of the throughput at MSS 200 (measured with
/// `DEMO_MSS=200 ./demo`: 2.8 Gbit/s at 64, 4.7 at 128, 6.4 at 512).
pub const MAX_SPLIT_SEGMENTS: usize = 512;
/// Room for one segment's rewritten headers: the most `split` produces (IPv4 60 + TCP 60, or
/// IPv6 with extension headers), beyond which it refuses the super-packet.
const HEADER_ROOM: usize = split::MAX_HEADER_LEN;
/// GSO sends one buffer may need; per-segment fallback sends use the msghdrs after these.
const MAX_GSO_SENDS: usize = MAX_SPLIT_SEGMENTS.div_ceil(GSO_MAX_SEGMENTS) + 2;
/// Segments one GRO receive buffer may hold (`UDP_GRO_CNT_MAX` is 64).
const MAX_GRO_SEGMENTS: usize = 128;
/// Token index bit: a per-segment rewrite of a merged TUN write that the kernel refused.
const FALLBACK_BIT: u32 = 1 << 31;
/// A zero virtio_net_hdr, for writes of plain packets.
static PLAIN_HEADER: [u8; vnet::LEN] = [0; vnet::LEN];
/// Token index bit: a TUN write of an ICMP error this worker made (see `TooBigReplies`).
const REPLY_BIT: u32 = 1 << 30;
/// How often a worker rereads the kernel's path MTU to the peer (two system calls).
const PATH_MTU_RECHECK: Duration = Duration::from_secs(1);
/// ICMP too-big errors a worker may write into the TUN: a burst, then this many a second (the
/// kernel's own limit, net.ipv4.icmp_msgs_per_sec, is 1000 a second for the whole host).
const REPLIES_PER_SECOND: u64 = 100;
const REPLY_BURST: u64 = 50;
/// ICMP errors that may be on their way into the TUN at once; more wait for a free buffer (and
/// are not sent, like those over the rate).
const REPLY_BUFFERS: usize = 8;
/// Token index bit of a `UdpSend`: the send went out on the fragmenting socket (`SendIndex`).
const FRAGMENTING_BIT: u32 = 1 << 31;
/// Refused sends of one slot that may be sent again because they fit the path after all (see
/// `AfterRefusal::Resend`). A bound, so that a kernel that keeps refusing them cannot keep a
/// buffer out of the ring forever; one is what a router's ICMP error costs.
const RESENDS_PER_SLOT: u8 = 4;
// A `SendIndex` packs the msghdr into bits 16..31.
const _: () = assert!(MAX_GSO_SENDS + MAX_SPLIT_SEGMENTS < 1 << 15);

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
    pub tun: OwnedFd,
    pub socket: OwnedFd,
    pub peer: SocketAddr,
    pub mtu: u32,
    /// The most operations in flight and buffers per direction, a power of two.
    pub ring_depth: usize,
    /// Receive-buffer memory per direction, which may make the buffers fewer than `ring_depth`.
    pub buffer_memory: usize,
    pub offloads: Offloads,
    /// How the outer TOS / traffic class is made, and whether received ECN marks are applied.
    pub marking: Marking,
    pub stop: Arc<AtomicBool>,
    /// Where to send a stats snapshot, and how often.
    pub snapshots: Option<(Duration, Sender<WorkerStats>)>,
}

/// How a worker ended.
pub struct WorkerExit {
    pub stats: WorkerStats,
    /// Set when the worker stopped because its data path broke, not because it was asked to.
    pub error: Option<io::Error>,
}

/// Per TUN buffer: the sends that carry its packet (or, as a batch leader, the packets of several
/// buffers). Built once; the pointers inside point at this slot, at the buffer, and at the peer
/// address, all of which stay put until the worker is gone.
struct TunSlot {
    /// `[0, MAX_GSO_SENDS)`: GSO or whole-packet sends; `MAX_GSO_SENDS + j`: segment j alone.
    msgs: Box<[libc::msghdr]>,
    /// Per GSO send, or whole-packet send: its `UDP_SEGMENT` and TOS control messages.
    controls: Box<[[u64; socket::SEND_CONTROL_WORDS]]>,
    /// The outer TOS of everything this slot sends: one packet, one batch of equal TOS, or one
    /// super-packet.
    tos: u8,
    /// The TOS control message alone, for the sends of single segments, and its length (0 when
    /// the TOS is 0); written when the slot's sends begin, read by all of them.
    tos_control: [u64; 3],
    tos_control_len: usize,
    /// Set once this slot's packet was answered as too big, so a super-packet whose sends fail
    /// one by one is answered once.
    too_big_answered: bool,
    /// Refused sends of this slot sent again (`RESENDS_PER_SLOT`).
    resends: u8,
    iovs: Box<[libc::iovec]>,
    /// Rewritten headers of each segment of a split super-packet.
    headers: Box<[u8]>,
    /// Segments carried by each msghdr, and the first segment (for fallback).
    msg_segments: Box<[(u16, u16)]>,
    /// How many iovecs each segment uses (2 for split: header and payload; 1 for a batch).
    iovs_per_segment: u8,
    /// Other buffers whose packets this slot's batch send carries.
    followers: Vec<u16>,
    /// Sends in flight; the buffer (and followers) go back to the ring when it reaches zero.
    pending: u16,
}

/// Per UDP buffer: the TUN writes made from it.
struct UdpSlot {
    iovs: Box<[libc::iovec]>,
    fallback_iovs: Box<[libc::iovec]>,
    vnet_headers: Box<[[u8; vnet::LEN]]>,
    /// The original headers of each merged run's head segment, for the EINVAL fallback.
    saved_headers: Box<[u8]>,
    segments: Vec<(usize, usize)>,
    runs: Vec<Run>,
    pending: u16,
}

/// Everything the kernel may read or write while operations are in flight. Freed only after a
/// complete drain; leaked otherwise (the contract in `ring`).
struct KernelMemory {
    tun_buffers: BufRing,
    udp_buffers: BufRing,
    tun_slots: Box<[TunSlot]>,
    udp_slots: Box<[UdpSlot]>,
    /// The ICMP errors being written into the TUN.
    replies: TooBigReplies,
    recv_msg: Box<libc::msghdr>,
    /// Read by the kernel through the `msg_name` of every send on the worker's socket.
    peer_sockaddr: Box<(libc::sockaddr_storage, libc::socklen_t)>,
    /// The same peer for the fragmenting socket, whose family is the outer header's: an
    /// IPv4-mapped peer as plain IPv4 (`socket::canonical`).
    fragmenting_peer_sockaddr: Box<(libc::sockaddr_storage, libc::socklen_t)>,
}

/// Consecutive plain packets waiting to go out as one GSO send.
#[derive(Debug, Clone, Copy)]
struct Batch {
    leader: u16,
    count: usize,
    segment_size: usize,
    bytes: usize,
    flow: Option<u32>,
    /// The outer TOS of every packet in the batch: one send carries one.
    tos: u8,
    /// A shorter packet ended the batch: nothing more may follow it.
    closed: bool,
}

/// What the worker knows of the path to the peer. Its own: no state is shared between workers.
struct PathMtu {
    /// Reads the kernel's path MTU (`socket::path_mtu`); `None` if it could not be created.
    probe: Option<OwnedFd>,
    family: OuterFamily,
    /// The path MTU, outer headers included, and the inner packets it leaves room for (never more
    /// than the device MTU).
    path_mtu: usize,
    inner_mtu: usize,
    device_mtu: usize,
    /// Lets the outer IP layer fragment, for `TooBig::Fragment`; registered as
    /// `FRAGMENTING_FILE`, through which every send on it goes. `None` if it could not be made
    /// (said once at startup): such packets are then dropped as `too_big`.
    fragmenting: Option<OwnedFd>,
}

/// What the completions of one batch said about the path, acted on once at its end
/// (`Worker::read_error_reports`), however many of them said it.
#[derive(Debug, Clone, Copy, Default)]
struct ErrorReports {
    /// Read the error queue: a refusal or an ICMP error put something there.
    drain_queue: bool,
    /// Reread the kernel's path MTU: a send was refused as too big.
    reread_path_mtu: bool,
    /// ICMP errors that surfaced as a receive's error (each also queued, unless drained before).
    surfaced_icmp_errors: u64,
}

/// Which socket a send goes out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The worker's socket, DF on every datagram.
    Direct,
    /// The one that lets the outer IP layer fragment (`FRAGMENTING_FILE`).
    Fragmenting,
}

/// What a `UdpSend` token's index names: msghdr `msg` of TUN buffer `bid`'s slot, and the socket
/// the send went out on. Packed as `bid | msg << 16`, with `FRAGMENTING_BIT` for the
/// fragmenting socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SendIndex {
    bid: u16,
    msg: u16,
    route: Route,
}

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

/// A send refused as too big for the path, held until the batch has looked at the path MTU
/// (`Worker::settle_refusals`). Its slot's buffers stay out of the ring until then.
#[derive(Debug, Clone, Copy)]
struct RefusedSend {
    bid: u16,
    msg: usize,
    first: usize,
    segments: usize,
    errno: i32,
}

/// What becomes of a send refused as too big, once the path MTU has been looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterRefusal {
    /// Its datagrams fit the path: send them again as they were. The refusal was the socket's
    /// pending error, which a router's ICMP set (`__udp4_lib_err` / `__udp6_lib_err` with
    /// `IP_RECVERR`) and which the next send of any size takes (`sock_alloc_send_pskb` checks
    /// `sock_error`), and which that send cleared.
    Resend,
    /// A GSO send of datagrams that fit, refused with EINVAL: the egress device cannot do UDP
    /// GSO, so they go one by one.
    WithoutGso,
    /// Longer than the inner MTU: answered or sent in outer fragments (`TooBig`).
    TooBig,
    /// They fit, yet the slot's resends are spent: dropped as a send error.
    Drop,
}

/// Judges a send refused with `errno` (EMSGSIZE, or EINVAL for a GSO send) whose datagrams are
/// `segment_len` bytes (a GSO send: each but maybe the last), after the path MTU was looked at:
/// only datagrams longer than `inner_mtu` are too big.
fn after_refusal(
    errno: i32,
    gso: bool,
    segment_len: usize,
    inner_mtu: usize,
    resends_left: bool,
) -> AfterRefusal {
    if segment_len > inner_mtu {
        AfterRefusal::TooBig
    } else if gso && errno == libc::EINVAL {
        AfterRefusal::WithoutGso
    } else if resends_left {
        AfterRefusal::Resend
    } else {
        AfterRefusal::Drop
    }
}

impl PathMtu {
    /// Takes `path_mtu` as the path's MTU. Returns whether it changed.
    fn set(&mut self, path_mtu: usize) -> bool {
        // An IPv4 host takes 68 bytes at least (RFC 791); nothing below makes sense to work to.
        let inner = path_mtu
            .saturating_sub(self.family.overhead())
            .min(self.device_mtu)
            .max(68);
        let changed = path_mtu != self.path_mtu;
        self.path_mtu = path_mtu;
        self.inner_mtu = inner;
        changed
    }
}

/// ICMP errors for packets too big for the path, built into buffers of their own and written into
/// the TUN through the ring, at most `REPLIES_PER_SECOND`.
struct TooBigReplies {
    bucket: TokenBucket,
    /// `[virtio_net_hdr][ICMP error]` each; in the kernel's hands while `busy`.
    buffers: Box<[[u8; vnet::LEN + icmp::MAX_REPLY]]>,
    busy: [bool; REPLY_BUFFERS],
}

struct Worker {
    memory: KernelMemory,
    /// For the error queue; operations name it through `UDP_FILE`.
    socket: OwnedFd,
    /// The TUN queue for reads, which cannot use the registered file (see `setup`).
    tun: OwnedFd,
    peer: SocketAddr,
    offloads: Offloads,
    coalesce: Policy,
    marking: Marking,
    path: PathMtu,
    /// A segment whose send failed as too big, header and payload put together, to quote from.
    reply_quote: Box<[u8; icmp::MAX_REPLY]>,
    stats: WorkerStats,
    /// When each buffer's packet was read, in ns since the worker's epoch; indexed by buffer id.
    tun_read_at_ns: Box<[u64]>,
    udp_read_at_ns: Box<[u64]>,
    /// Buffers in the kernel's hands, so a multishot op is re-armed only when it can get one.
    tun_buffers_in_kernel: usize,
    udp_buffers_in_kernel: usize,
    tun_read_armed: bool,
    udp_recv_armed: bool,
    tun_read_failures: u32,
    udp_recv_failures: u32,
    batch: Option<Batch>,
    /// What this batch's completions reported about the path, read at its end.
    reports: ErrorReports,
    /// Sends refused as too big in this batch, settled at its end.
    refused: Vec<RefusedSend>,
    submissions: Submissions,
    stopping: bool,
    fatal: Option<io::Error>,
    /// Test-only refusals (`crate::faults`); a zero-sized no-op in the shipped binary.
    faults: Faults,
}

/// Submissions made since the last flush, and how many operations await their final completion.
/// A separate struct so that code holding a slot of `Worker::memory` can submit too.
struct Submissions {
    queued: Vec<squeue::Entry>,
    /// Operations submitted whose final completion has not been seen yet.
    in_flight: usize,
    /// Completions made up by fault injection, `(user_data, result)`, for operations that were
    /// never handed to the kernel; delivered at the next reap. Always empty in the shipped binary.
    injected: Vec<(u64, i32)>,
    /// An injected completion held back until the next injection (or the drain), so that two
    /// refused operations are in flight at once.
    held: Option<(u64, i32)>,
}

impl Submissions {
    /// Queues `entry` under `token` for the next flush and counts it in flight.
    fn queue(&mut self, entry: squeue::Entry, token: Token) {
        self.in_flight += 1;
        self.queued.push(entry.user_data(token.user_data()));
    }

    /// Counts an operation in flight that completes with `-errno` without reaching the kernel.
    fn inject(&mut self, token: Token, errno: i32) {
        self.in_flight += 1;
        self.injected.push((token.user_data(), -errno));
        self.injected.extend(self.held.take());
    }

    /// Like `inject`, but the first such completion waits for the next injection.
    fn inject_in_pairs(&mut self, token: Token, errno: i32) {
        if self.held.is_none() && self.injected.is_empty() {
            self.in_flight += 1;
            self.held = Some((token.user_data(), -errno));
        } else {
            self.inject(token, errno);
        }
    }
}

/// Runs one worker to completion. Reports setup success or failure on `ready` first, and drops
/// `ready` right after: the caller counts the reports and treats a closed channel with reports
/// missing as a worker that died in setup (a panic unwinds through here and drops it too), so it
/// can never wait for a report that will not come.
pub fn run(config: WorkerConfig, ready: Sender<Result<(), sys::Error>>) -> Option<WorkerExit> {
    let queue = config.queue;
    // However this worker ends, a panic included, the others stop too and main reports it.
    let _stop_all = StopOnExit(config.stop.clone());
    let setup = setup(&config);
    let (mut ring, mut worker) = match setup {
        Ok(parts) => {
            let _ = ready.send(Ok(()));
            drop(ready);
            parts
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return None;
        }
    };
    let epoch = Instant::now();
    let mut next_snapshot = config.snapshots.as_ref().map(|(every, _)| epoch + *every);
    let mut next_path_check = epoch + PATH_MTU_RECHECK;
    let mut completions: Vec<cqueue::Entry> = Vec::with_capacity(ring.completion().capacity());

    while !config.stop.load(Ordering::Relaxed) && worker.fatal.is_none() {
        worker.flush(&mut ring);
        // Injected completions are ready now: don't sleep waiting for a real one.
        let want = usize::from(worker.submissions.injected.is_empty());
        if let Err(e) = wait(&ring, want, IDLE_WAIT) {
            worker.fatal = Some(e);
            break;
        }
        worker.reap(&mut ring, epoch, &mut completions);
        let now = Instant::now();
        if now >= next_path_check {
            worker.recheck_path_mtu();
            next_path_check = now + PATH_MTU_RECHECK;
        }
        if let (Some(at), Some((every, sender))) = (next_snapshot, &config.snapshots)
            && now >= at
        {
            let _ = sender.send(worker.stats.clone());
            next_snapshot = Some(at + *every);
        }
    }
    // A fatal error in one worker stops them all.
    config.stop.store(true, Ordering::Relaxed);

    let drained = worker.drain(&mut ring, epoch, &mut completions);
    let exit = WorkerExit {
        stats: worker.stats.clone(),
        error: worker.fatal.take(),
    };
    if !drained {
        eprintln!(
            "tunfwd: queue {queue}: {} operations did not finish at shutdown; leaking their buffers",
            worker.submissions.in_flight
        );
        std::mem::forget(worker.memory);
        std::mem::forget(ring);
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

fn wait(ring: &IoUring, want: usize, timeout: Duration) -> io::Result<()> {
    let ts = Timespec::new()
        .sec(timeout.as_secs())
        .nsec(timeout.subsec_nanos());
    let args = SubmitArgs::new().timespec(&ts);
    match ring.submitter().submit_with_args(want, &args) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn pin(queue: usize, cpu: usize, ring: &IoUring) -> Result<(), sys::Error> {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        return Err(sys::Error::Pin { queue, cpu });
    }
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t and CPU_SET bounds-checks `cpu` against its size.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // io-wq threads serve operations that cannot complete inline; keep them on this worker's CPU.
    // Best effort: old kernels lack it and nothing depends on it.
    let _ = ring.submitter().register_iowq_aff(&set);
    Ok(())
}

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain data; all-zero is valid (no name, no iovecs, no control).
    unsafe { std::mem::zeroed() }
}

const EMPTY_IOV: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// A slot for sends of up to `segments` segments: `MAX_SPLIT_SEGMENTS` when the TUN hands over
/// super-packets, one GSO batch's worth otherwise.
fn new_tun_slot(peer: &(libc::sockaddr_storage, libc::socklen_t), segments: usize) -> TunSlot {
    let mut msgs = vec![zeroed_msghdr(); MAX_GSO_SENDS + segments].into_boxed_slice();
    for m in msgs.iter_mut() {
        m.msg_name = (&peer.0 as *const libc::sockaddr_storage).cast_mut().cast();
        m.msg_namelen = peer.1;
    }
    TunSlot {
        msgs,
        controls: vec![[0u64; socket::SEND_CONTROL_WORDS]; MAX_GSO_SENDS].into_boxed_slice(),
        tos: 0,
        tos_control: [0; 3],
        tos_control_len: 0,
        too_big_answered: false,
        resends: 0,
        iovs: vec![EMPTY_IOV; 2 * segments].into_boxed_slice(),
        headers: vec![0u8; segments * HEADER_ROOM].into_boxed_slice(),
        msg_segments: vec![(0, 0); MAX_GSO_SENDS + segments].into_boxed_slice(),
        iovs_per_segment: 1,
        followers: Vec::with_capacity(GSO_MAX_SEGMENTS),
        pending: 0,
    }
}

fn new_udp_slot() -> UdpSlot {
    UdpSlot {
        iovs: vec![EMPTY_IOV; 2 * MAX_GRO_SEGMENTS].into_boxed_slice(),
        fallback_iovs: vec![EMPTY_IOV; 2 * MAX_GRO_SEGMENTS].into_boxed_slice(),
        vnet_headers: vec![[0u8; vnet::LEN]; MAX_GRO_SEGMENTS].into_boxed_slice(),
        saved_headers: vec![0u8; MAX_GRO_SEGMENTS * HEADER_ROOM].into_boxed_slice(),
        segments: Vec::with_capacity(MAX_GRO_SEGMENTS),
        runs: Vec::with_capacity(MAX_GRO_SEGMENTS),
        pending: 0,
    }
}

fn setup(config: &WorkerConfig) -> Result<(IoUring, Worker), sys::Error> {
    let queue = config.queue;
    let faults = Faults::from_env();
    if faults.setup_panic(queue) {
        panic!("queue {queue}: injected fault: a panic during setup");
    }
    let depth = config.ring_depth;
    let sq_entries = (4 * depth + 16).next_power_of_two().min(32768) as u32;
    let ring = ring::build(sq_entries, sq_entries * 4)
        .map_err(|source| sys::Error::IoUring { queue, source })?;
    if let Some(cpu) = config.cpu {
        pin(queue, cpu, &ring)?;
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|source| sys::Error::IoUringFeature {
            queue,
            feature: "opcode probing",
            source,
        })?;
    if !probe.is_supported(opcode::ReadMulti::CODE) {
        return Err(sys::Error::IoUringFeature {
            queue,
            feature: "multishot read",
            source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
        });
    }

    // The socket for outer fragmentation sends from the listen address, so that the peer takes
    // its datagrams as ours (see `socket::fragmenting_socket`).
    let source = socket::local_address(&config.socket)
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |address| address.ip());
    let fragmenting = match socket::fragmenting_socket(config.peer, source) {
        Ok(fd) => Some(fd),
        Err(e) => {
            eprintln!(
                "tunfwd: queue {queue}: no socket for outer fragmentation ({e}); inner packets \
                 that would need it are dropped as too_big"
            );
            None
        }
    };

    // Registered files spare an operation the file-table lookup and reference count. Not for the
    // TUN's multishot read: on Linux 6.18 it fails with EBADFD when given the registered file.
    let mut files = vec![config.tun.as_raw_fd(), config.socket.as_raw_fd()];
    files.extend(fragmenting.as_ref().map(|fd| fd.as_raw_fd()));
    ring.submitter()
        .register_files(&files)
        .map_err(|source| sys::Error::IoUringFeature {
            queue,
            feature: "registered files",
            source,
        })?;

    let offloads = config.offloads;
    let mtu = config.mtu as usize;
    let round = |n: usize| n.div_ceil(64) * 64;
    let alloc = |source| sys::Error::RegisterBuffers { queue, source };
    let tun_packet_room = if offloads.tun_offloads() { 65535 } else { mtu };
    let tun_len = round(vnet::LEN + tun_packet_room);
    let tun_count = buffer_count(depth, config.buffer_memory, tun_len);
    let tun_buffers = BufRing::new(TUN_GROUP, tun_count, tun_len).map_err(alloc)?;
    let name_len = size_of::<libc::sockaddr_in6>();
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
    let udp_len = round(RECVMSG_OUT_LEN + name_len + control_len + udp_payload_room);
    let udp_count = buffer_count(depth, config.buffer_memory, udp_len);
    let udp_buffers = BufRing::new(UDP_GROUP, udp_count, udp_len).map_err(alloc)?;

    let peer_sockaddr = Box::new(socket::to_sockaddr(config.peer));
    let slot_segments = if offloads.tun_offloads() {
        MAX_SPLIT_SEGMENTS
    } else {
        GSO_MAX_SEGMENTS
    };
    let tun_slots: Box<[TunSlot]> = (0..tun_count)
        .map(|_| new_tun_slot(&peer_sockaddr, slot_segments))
        .collect();
    let udp_slots: Box<[UdpSlot]> = (0..udp_count).map(|_| new_udp_slot()).collect();
    let mut recv_msg = Box::new(zeroed_msghdr());
    recv_msg.msg_namelen = name_len as libc::socklen_t;
    recv_msg.msg_controllen = match (offloads.udp_gro, faults.ctrunc()) {
        // Less than a cmsghdr: the kernel cuts every UDP_GRO message and sets MSG_CTRUNC.
        (true, true) => 8,
        _ => control_len,
    };
    let family = OuterFamily::of(config.peer);
    let mut path = PathMtu {
        probe: socket::path_mtu_probe(config.peer).ok(),
        family,
        path_mtu: 0,
        inner_mtu: mtu,
        device_mtu: mtu,
        fragmenting,
    };
    // Until the kernel says otherwise, the path takes what the device MTU was chosen for.
    let known = path
        .probe
        .as_ref()
        .and_then(|probe| socket::path_mtu(probe, config.peer).ok());
    path.set(known.map_or(mtu + family.overhead(), |m| m as usize));

    let memory = KernelMemory {
        tun_buffers,
        udp_buffers,
        tun_slots,
        udp_slots,
        replies: TooBigReplies {
            bucket: TokenBucket::new(REPLIES_PER_SECOND, REPLY_BURST),
            buffers: vec![[0u8; vnet::LEN + icmp::MAX_REPLY]; REPLY_BUFFERS].into_boxed_slice(),
            busy: [false; REPLY_BUFFERS],
        },
        recv_msg,
        peer_sockaddr,
        fragmenting_peer_sockaddr: Box::new(socket::to_sockaddr(socket::canonical(config.peer))),
    };
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|source| sys::Error::IoUring { queue, source })
    };
    let mut worker = Worker {
        memory,
        socket: dup(&config.socket)?,
        tun: dup(&config.tun)?,
        peer: config.peer,
        offloads,
        coalesce: Policy {
            tcp: offloads.tso,
            udp: offloads.uso,
        },
        marking: config.marking,
        path,
        reply_quote: Box::new([0u8; icmp::MAX_REPLY]),
        stats: WorkerStats::new(queue),
        tun_read_at_ns: vec![0; usize::from(tun_count)].into_boxed_slice(),
        udp_read_at_ns: vec![0; usize::from(udp_count)].into_boxed_slice(),
        tun_buffers_in_kernel: 0,
        udp_buffers_in_kernel: 0,
        tun_read_armed: false,
        udp_recv_armed: false,
        tun_read_failures: 0,
        udp_recv_failures: 0,
        batch: None,
        reports: ErrorReports::default(),
        refused: Vec::with_capacity(MAX_GSO_SENDS),
        submissions: Submissions {
            queued: Vec::with_capacity(4 * depth + 16),
            in_flight: 0,
            injected: Vec::new(),
            held: None,
        },
        stopping: false,
        fatal: None,
        faults,
    };
    // SAFETY: the rings live in `worker.memory`, which is freed only after a complete drain or
    // leaked (the contract in `ring`).
    unsafe {
        worker
            .memory
            .tun_buffers
            .register(&ring.submitter())
            .map_err(alloc)?;
        worker
            .memory
            .udp_buffers
            .register(&ring.submitter())
            .map_err(alloc)?;
    }
    for bid in 0..tun_count {
        worker.return_tun_buffer(bid);
    }
    for bid in 0..udp_count {
        worker.return_udp_buffer(bid);
    }
    worker.stats.path.path_mtu = worker.path.path_mtu as u64;
    worker.rearm();
    Ok((ring, worker))
}

/// Buffers for a ring of `buf_len`-byte buffers: about `budget` bytes' worth (rounding up, so
/// that 1 MiB makes 16 buffers of 64 KiB plus headers), but at least 8 and at most `depth`,
/// rounded down to a power of two.
///
/// Why a budget: a provided-buffer ring hands its buffers out in turn, so the kernel's copies
/// and our passes over the data cycle through every buffer in the ring; the ring's memory is the
/// working set. 256 buffers of 64 KiB (16 MiB per direction) is far out of cache. Measured with
/// one TCP stream (`benches/e2e.rs`, the q1 and q1 bufmem16M rows) the 1 MiB default is faster.
fn buffer_count(depth: usize, budget: usize, buf_len: usize) -> u16 {
    const MIN_BUFFERS: usize = 8;
    let fit = budget.div_ceil(buf_len.max(1)).max(MIN_BUFFERS);
    let n = depth.min(fit).max(1);
    (1usize << (usize::BITS - 1 - n.leading_zeros())) as u16
}

/// Copies the first bytes of a run's head segment `(offset, len)`, as many as `finish_run` may
/// rewrite (its headers, at most `HEADER_ROOM`, never past the segment), into `saved`.
fn save_head(buffer: &[u8], (head_at, head_len): (usize, usize), saved: &mut [u8]) {
    let n = saved.len().min(head_len);
    saved[..n].copy_from_slice(&buffer[head_at..head_at + n]);
}

/// Puts back the `rewritten` bytes of a head segment that [`save_head`] kept: only those, so
/// that nothing past this run's headers changes.
fn restore_head(buffer: &mut [u8], head_at: usize, saved: &[u8], rewritten: usize) {
    let n = rewritten.min(saved.len());
    buffer[head_at..head_at + n].copy_from_slice(&saved[..n]);
}

/// Where to cut a receive buffer into datagrams: at the `UDP_GRO` segment size, which every
/// datagram of a coalesced receive has but the last (`udp_gro_receive` in
/// net/ipv4/udp_offload.c). When the control data came back cut (`MSG_CTRUNC`) that size may be
/// missing; then the first packet's own IP length is the stride, since each datagram is one IP
/// packet (and every piece is validated against its IP length anyway). Otherwise the buffer holds
/// one datagram.
fn datagram_stride(gro_size: Option<usize>, control_truncated: bool, payload: &[u8]) -> usize {
    let ip_len = || match payload.first()? >> 4 {
        4 => Some(usize::from(u16::from_be_bytes([
            *payload.get(2)?,
            *payload.get(3)?,
        ]))),
        6 => Some(40 + usize::from(u16::from_be_bytes([*payload.get(4)?, *payload.get(5)?]))),
        _ => None,
    };
    let stride = match gro_size {
        Some(size) => size,
        None if control_truncated => ip_len()
            .filter(|len| *len > 0 && *len <= payload.len())
            .unwrap_or(payload.len()),
        None => payload.len(),
    };
    stride.max(1)
}

/// The TUN buffer that segment `segment` of slot `bid`'s sends was read into. A batch
/// (`iovs_per_segment` 1) carries one packet per buffer: the leader's, then its followers' in
/// order. A split (2) carries the segments of the one super-packet in `bid`.
fn segment_source(bid: u16, iovs_per_segment: u8, followers: &[u16], segment: usize) -> u16 {
    match (iovs_per_segment, segment) {
        (1, 0) => bid,
        (1, k) => followers.get(k - 1).copied().unwrap_or(bid),
        _ => bid,
    }
}

/// Prepares a slot whose sends are about to begin (none of its earlier ones is in flight): its
/// outer TOS and the TOS message its single-segment sends share.
fn begin_sends(slot: &mut TunSlot, tos: u8, family: OuterFamily) {
    slot.tos = tos;
    slot.too_big_answered = false;
    slot.resends = 0;
    slot.tos_control_len = if tos == 0 {
        0
    } else {
        socket::write_tos_control(&mut slot.tos_control, tos, family)
    };
}

/// The bytes of segment `segment` of a slot's sends: its one iovec (a batch) or its header and
/// payload (a split).
fn segment_len(slot: &TunSlot, segment: usize) -> usize {
    let per = usize::from(slot.iovs_per_segment);
    slot.iovs[segment * per..(segment + 1) * per]
        .iter()
        .map(|iov| iov.iov_len)
        .sum()
}

/// Builds the ICMP error telling `packet`'s sender that the path takes `mtu` bytes, into a free
/// reply buffer, and queues its write into the TUN; nothing when the rate is spent or every
/// reply buffer is in flight (the packet is dropped all the same, counted as `too_big`). The
/// rules were checked before (`icmp::too_big_action` says `Reply` only when an answer may be
/// sent), so `too_big_reply` refuses nothing here.
fn queue_reply(
    replies: &mut TooBigReplies,
    submissions: &mut Submissions,
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
    let write = opcode::Write::new(TUN_FILE, buffer.as_ptr(), (vnet::LEN + len) as u32).build();
    submissions.queue(write, Token::new(Op::TunWrite, REPLY_BIT | k as u32));
}

fn is_peer_unreachable(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::ENETDOWN
            | libc::EPROTO
    )
}

impl Worker {
    /// Hands queued submissions to the ring (not yet to the kernel: the next wait does that).
    fn flush(&mut self, ring: &mut IoUring) {
        let mut start = 0;
        let queued = &self.submissions.queued;
        while start < queued.len() {
            let mut sq = ring.submission();
            let room = sq.capacity() - sq.len();
            let end = (start + room).min(queued.len());
            for entry in &queued[start..end] {
                // SAFETY: every entry points only into `self.memory` or the worker's fds, which stay
                // alive and owned per the contract in `ring`.
                unsafe { sq.push(entry).expect("room was checked") };
            }
            drop(sq);
            start = end;
            if start < queued.len() {
                // The SQ is full: let the kernel take what it has, then continue.
                if let Err(e) = ring.submit() {
                    self.fatal.get_or_insert(e);
                    break;
                }
            }
        }
        self.submissions.queued.clear();
    }

    /// Handles every available completion, then closes the batch: looks at the path once if a
    /// completion asked for it, settles the sends refused as too big, sends what was gathered,
    /// publishes returned buffers, re-arms multishot operations.
    fn reap(&mut self, ring: &mut IoUring, epoch: Instant, completions: &mut Vec<cqueue::Entry>) {
        let now = epoch.elapsed().as_nanos() as u64;
        completions.clear();
        completions.extend(ring.completion());
        for cqe in completions.iter() {
            self.complete(cqe.user_data(), cqe.result(), cqe.flags(), now);
        }
        if !self.submissions.injected.is_empty() {
            for (user_data, result) in std::mem::take(&mut self.submissions.injected) {
                self.complete(user_data, result, 0, now);
            }
        }
        self.read_error_reports();
        // Before the GSO batch gathered in this reap, whose packets were read later. Splits and
        // sends without GSO made during this reap are already queued, so a resent packet can
        // leave after newer ones of its flow: a refusal and resend reorders, as a GSO fallback
        // does.
        self.settle_refusals(now);
        self.send_batch();
        self.rearm();
    }

    fn submit(&mut self, entry: squeue::Entry, token: Token) {
        self.submissions.queue(entry, token);
    }

    /// Publishes the buffers returned during this batch, then re-arms the multishot operations
    /// that ended, if they have buffers to use.
    fn rearm(&mut self) {
        self.memory.tun_buffers.publish();
        self.memory.udp_buffers.publish();
        if self.stopping {
            return;
        }
        if !self.tun_read_armed && self.tun_buffers_in_kernel > 0 {
            self.tun_read_armed = true;
            let read = opcode::ReadMulti::new(Fd(self.tun.as_raw_fd()), 0, TUN_GROUP).build();
            self.submit(read, Token::new(Op::TunRead, 0));
        }
        if !self.udp_recv_armed && self.udp_buffers_in_kernel > 0 {
            self.udp_recv_armed = true;
            let recv =
                opcode::RecvMsgMulti::new(UDP_FILE, &*self.memory.recv_msg, UDP_GROUP).build();
            self.submit(recv, Token::new(Op::UdpRecv, 0));
        }
    }

    fn return_tun_buffer(&mut self, bid: u16) {
        self.memory.tun_buffers.provide(bid);
        self.tun_buffers_in_kernel += 1;
    }

    fn return_udp_buffer(&mut self, bid: u16) {
        self.memory.udp_buffers.provide(bid);
        self.udp_buffers_in_kernel += 1;
    }

    fn complete(&mut self, user_data: u64, result: i32, flags: u32, now_ns: u64) {
        let more = cqueue::more(flags);
        if !more {
            self.submissions.in_flight = self.submissions.in_flight.saturating_sub(1);
        }
        let Some(token) = Token::from_user_data(user_data) else {
            return;
        };
        let bid = cqueue::buffer_select(flags);
        if more && self.faults.end_multishot() {
            // Injected: make the kernel end this multishot operation, as it may at any time.
            let cancel = opcode::AsyncCancel::new(user_data).build();
            self.submit(cancel, Token::new(Op::Cancel, 0));
        }
        match token.op {
            Op::TunRead => {
                if !more {
                    self.tun_read_armed = false;
                    self.count_multishot_end();
                }
                match bid {
                    Some(bid) if result >= 0 => {
                        self.tun_buffers_in_kernel -= 1;
                        self.tun_read_failures = 0;
                        self.on_tun_read(bid, result as usize, now_ns);
                    }
                    _ => self.on_multishot_error(Op::TunRead, result),
                }
            }
            Op::UdpRecv => {
                if !more {
                    self.udp_recv_armed = false;
                    self.count_multishot_end();
                }
                match bid {
                    Some(bid) if result >= 0 => {
                        self.udp_buffers_in_kernel -= 1;
                        self.udp_recv_failures = 0;
                        self.on_udp_recv(bid, result as usize, now_ns);
                    }
                    _ => self.on_multishot_error(Op::UdpRecv, result),
                }
            }
            Op::UdpSend => self.on_send_done(token.index, result, now_ns),
            Op::TunWrite => self.on_write_done(token.index, result, now_ns),
            Op::Cancel => {}
        }
    }

    /// A multishot operation ended; unless we are stopping, `rearm` starts it again.
    fn count_multishot_end(&mut self) {
        if !self.stopping {
            self.stats.counters.multishot_restarts += 1;
        }
    }

    fn on_multishot_error(&mut self, op: Op, result: i32) {
        let errno = -result;
        match errno {
            libc::ENOBUFS => self.stats.counters.buffer_stalls += 1,
            libc::ECANCELED | libc::EINTR | libc::EAGAIN => {}
            libc::EMSGSIZE if op == Op::UdpRecv => {
                // IP_RECVERR: an ICMP fragmentation-needed or packet-too-big about our datagrams
                // set the socket's error (`__udp4_lib_err`), which this receive took; the MTU it
                // reports is queued. Read at the end of the batch.
                self.reports.drain_queue = true;
                self.reports.reread_path_mtu = true;
            }
            _ if op == Op::UdpRecv && is_peer_unreachable(errno) => {
                // IP_RECVERR: an ICMP error about the peer surfaced on the receive; count what
                // is queued at the end of the batch, and keep receiving.
                self.reports.drain_queue = true;
                self.reports.surfaced_icmp_errors += 1;
            }
            _ => {
                let failures = match op {
                    Op::TunRead => &mut self.tun_read_failures,
                    _ => &mut self.udp_recv_failures,
                };
                *failures += 1;
                if *failures >= MAX_CONSECUTIVE_FAILURES {
                    let what = if op == Op::TunRead {
                        "TUN read"
                    } else {
                        "UDP receive"
                    };
                    let e = io::Error::from_raw_os_error(errno);
                    self.fatal.get_or_insert(io::Error::new(
                        e.kind(),
                        format!("{what} keeps failing: {e}"),
                    ));
                }
            }
        }
    }

    // ---- TUN to UDP ----

    fn on_tun_read(&mut self, bid: u16, len: usize, now_ns: u64) {
        // SAFETY: the completion selected `bid`, so the worker owns it until it is provided again
        // or named by a submission (the contract in `ring`).
        let buffer = unsafe { self.memory.tun_buffers.buffer_mut(bid) };
        let len = len.min(buffer.len());
        let Some(header) = VnetHeader::new_checked(&buffer[..len]) else {
            self.stats.counters.drop(DropReason::TunShortRead);
            return self.return_tun_buffer(bid);
        };
        let (gso, gso_size, flags) = (header.gso_type(), header.gso_size(), header.flags());
        let (csum_start, csum_offset) = (
            usize::from(header.csum_start()),
            usize::from(header.csum_offset()),
        );
        let packet_len = len - vnet::LEN;
        // Packets are counted as IP packets on the wire: a super-packet by its segments (below).
        self.stats.counters.tun_rx_bytes += packet_len as u64;
        self.tun_read_at_ns[usize::from(bid)] = now_ns;
        let packet = &mut buffer[vnet::LEN..len];
        match gso {
            GsoType::None => {
                self.stats.counters.tun_rx_packets += 1;
                if flags & FLAG_NEEDS_CSUM != 0
                    && complete_checksum(packet, csum_start, csum_offset).is_err()
                {
                    self.stats.counters.drop(DropReason::BadOffload);
                    return self.return_tun_buffer(bid);
                }
                if packet_len > self.path.inner_mtu {
                    // Anything gathered so far goes first, so the flow order is kept.
                    self.send_batch();
                    if !self.too_big_on_read(bid, packet_len, None, now_ns) {
                        self.return_tun_buffer(bid);
                    }
                    return;
                }
                self.add_to_batch(bid, packet_len);
            }
            GsoType::TcpV4 | GsoType::TcpV6 | GsoType::UdpL4 if self.offloads.tun_offloads() => {
                let plan = Split::plan(packet, gso, gso_size, MAX_SPLIT_SEGMENTS);
                // Anything gathered so far goes first, so the flow order is kept.
                self.send_batch();
                match plan {
                    Ok(plan) => {
                        self.stats.counters.tun_rx_packets += plan.count as u64;
                        if plan.segment_len(0) > self.path.inner_mtu {
                            if !self.too_big_on_read(bid, packet_len, Some(plan), now_ns) {
                                self.return_tun_buffer(bid);
                            }
                            return;
                        }
                        self.send_split(bid, plan);
                    }
                    Err(_) => {
                        self.stats.counters.tun_rx_packets += 1;
                        self.stats.counters.drop(DropReason::BadOffload);
                        self.return_tun_buffer(bid);
                    }
                }
            }
            _ => {
                self.stats.counters.tun_rx_packets += 1;
                self.stats.counters.drop(DropReason::TunUnexpectedOffload);
                self.return_tun_buffer(bid);
            }
        }
    }

    /// Adds a plain packet to the pending GSO batch, or sends it alone.
    fn add_to_batch(&mut self, bid: u16, len: usize) {
        let packet_ptr = self
            .memory
            .tun_buffers
            .buffer_ptr(bid)
            .wrapping_add(vnet::LEN);
        if !self.offloads.udp_gso {
            return self.send_one(bid, packet_ptr, len);
        }
        // SAFETY: the worker owns `bid` (just read); only its first bytes are read here.
        let packet = unsafe { std::slice::from_raw_parts(packet_ptr, len) };
        // Only packets of one flow key share a send: the receiving relay's steering program sees
        // the first segment only, and all of them go to the worker it picks. And one send has one
        // outer TOS.
        let flow = steer::flow_key(packet);
        let tos = self.outer_tos(packet);
        if let Some(batch) = self.batch {
            let fits = !batch.closed
                && batch.flow == flow
                && batch.tos == tos
                && len <= batch.segment_size
                && batch.count < GSO_MAX_SEGMENTS
                && batch.bytes + len <= GSO_MAX_BYTES;
            if fits {
                let slot = &mut self.memory.tun_slots[usize::from(batch.leader)];
                slot.iovs[batch.count] = libc::iovec {
                    iov_base: packet_ptr.cast(),
                    iov_len: len,
                };
                slot.followers.push(bid);
                self.batch = Some(Batch {
                    count: batch.count + 1,
                    bytes: batch.bytes + len,
                    closed: len < batch.segment_size,
                    ..batch
                });
                return;
            }
            self.send_batch();
        }
        let slot = &mut self.memory.tun_slots[usize::from(bid)];
        slot.followers.clear();
        slot.iovs[0] = libc::iovec {
            iov_base: packet_ptr.cast(),
            iov_len: len,
        };
        self.batch = Some(Batch {
            leader: bid,
            count: 1,
            segment_size: len,
            bytes: len,
            flow,
            tos,
            closed: false,
        });
    }

    /// The outer TOS / traffic class for an inner packet (see `offload::ecn`).
    fn outer_tos(&self, packet: &[u8]) -> u8 {
        if self.marking.always_zero() {
            0
        } else {
            self.marking.outer_tos(ecn::inner_tos(packet))
        }
    }

    fn send_one(&mut self, bid: u16, packet_ptr: *mut u8, len: usize) {
        self.lay_out_one(bid, packet_ptr, len);
        self.submit_send(bid, 0, 0, 1, None, Route::Direct);
    }

    /// Prepares `bid`'s slot to send its one plain packet of `len` bytes at `packet_ptr`.
    fn lay_out_one(&mut self, bid: u16, packet_ptr: *mut u8, len: usize) {
        // SAFETY: the worker owns `bid` (just read); only its first bytes are read here.
        let tos = self.outer_tos(unsafe { std::slice::from_raw_parts(packet_ptr, len) });
        let family = self.path.family;
        let slot = &mut self.memory.tun_slots[usize::from(bid)];
        begin_sends(slot, tos, family);
        slot.followers.clear();
        slot.iovs[0] = libc::iovec {
            iov_base: packet_ptr.cast(),
            iov_len: len,
        };
        slot.iovs_per_segment = 1;
    }

    /// Sends the pending batch: one GSO send for several packets, a plain send for one.
    fn send_batch(&mut self) {
        let Some(batch) = self.batch.take() else {
            return;
        };
        let slot = &mut self.memory.tun_slots[usize::from(batch.leader)];
        begin_sends(slot, batch.tos, self.path.family);
        slot.iovs_per_segment = 1;
        let segment_size = (batch.count > 1).then_some(batch.segment_size as u16);
        if batch.count > 1 {
            self.stats.counters.gso_sends += 1;
        }
        self.submit_send(batch.leader, 0, 0, batch.count, segment_size, Route::Direct);
    }

    /// Queues msghdr `msg` of `bid`'s slot, covering `segments` segments from `first_segment`,
    /// with `UDP_SEGMENT` when `segment_size` is given, on the socket `route` names. Every send
    /// of the worker goes through here, so they all reach the kernel in the order they were
    /// made, and each counts in its slot's `pending`.
    fn submit_send(
        &mut self,
        bid: u16,
        msg: usize,
        first_segment: usize,
        segments: usize,
        segment_size: Option<u16>,
        route: Route,
    ) {
        let slot = &mut self.memory.tun_slots[usize::from(bid)];
        let per = usize::from(slot.iovs_per_segment);
        let iov_start = first_segment * per;
        let m = &mut slot.msgs[msg];
        m.msg_iov = slot.iovs[iov_start..].as_mut_ptr();
        m.msg_iovlen = segments * per;
        // A msghdr may carry a segment directly once and, refused, on the fragmenting socket next:
        // each send names its socket's kind of address.
        let (name, file) = match route {
            Route::Direct => (&*self.memory.peer_sockaddr, UDP_FILE),
            Route::Fragmenting => (&*self.memory.fragmenting_peer_sockaddr, FRAGMENTING_FILE),
        };
        m.msg_name = (&name.0 as *const libc::sockaddr_storage).cast_mut().cast();
        m.msg_namelen = name.1;
        if msg < MAX_GSO_SENDS {
            // Its own control area: UDP_SEGMENT and the TOS, either, both or neither.
            let control = &mut slot.controls[msg];
            let len = socket::write_send_control(control, segment_size, slot.tos, self.path.family);
            m.msg_controllen = len;
            m.msg_control = if len > 0 {
                control.as_mut_ptr().cast()
            } else {
                std::ptr::null_mut()
            };
        } else {
            // A single segment: at most the slot's TOS message, which no send writes to.
            m.msg_controllen = slot.tos_control_len;
            m.msg_control = if slot.tos_control_len > 0 {
                slot.tos_control.as_mut_ptr().cast()
            } else {
                std::ptr::null_mut()
            };
        }
        slot.msg_segments[msg] = (segments as u16, first_segment as u16);
        slot.pending += 1;
        let index = SendIndex {
            bid,
            msg: msg as u16,
            route,
        };
        let token = Token::new(Op::UdpSend, index.pack());
        if route == Route::Direct
            && let Some(errno) = self.faults.send_error(segment_size.is_some())
        {
            if errno == libc::EIO {
                // Refused GSO sends come in pairs: the second is in flight when the first fails.
                return self.submissions.inject_in_pairs(token, errno);
            }
            return self.submissions.inject(token, errno);
        }
        let send = opcode::SendMsg::new(file, &slot.msgs[msg])
            .flags(libc::MSG_DONTWAIT as u32)
            .build();
        self.submit(send, token);
    }

    /// Sends a super-packet's segments: headers rewritten into the slot, payloads in place.
    fn send_split(&mut self, bid: u16, plan: Split) {
        self.lay_out_split(bid, &plan);
        let seg0 = plan.segment_len(0);
        if self.offloads.udp_gso && plan.count > 1 {
            let per_send = split::segments_per_send(seg0);
            let mut first = 0;
            let mut msg = 0;
            while first < plan.count && msg < MAX_GSO_SENDS {
                let n = per_send.min(plan.count - first);
                if n > 1 {
                    self.stats.counters.gso_sends += 1;
                }
                let size = (n > 1).then_some(seg0 as u16);
                self.submit_send(bid, msg, first, n, size, Route::Direct);
                first += n;
                msg += 1;
            }
            // Only if the GSO sends ran out (they cannot at the capped sizes): one by one.
            for i in first..plan.count {
                self.submit_send(bid, MAX_GSO_SENDS + i, i, 1, None, Route::Direct);
            }
        } else {
            for i in 0..plan.count {
                self.submit_send(bid, MAX_GSO_SENDS + i, i, 1, None, Route::Direct);
            }
        }
    }

    /// Prepares `bid`'s slot to send the segments of the super-packet in it: each segment's
    /// headers rewritten into the slot, its iovecs alternating header and payload-in-place.
    fn lay_out_split(&mut self, bid: u16, plan: &Split) {
        let packet_ptr = self
            .memory
            .tun_buffers
            .buffer_ptr(bid)
            .wrapping_add(vnet::LEN);
        let header_len = plan.transport.header_len();
        // SAFETY: the worker owns `bid`; the packet was just read into it, and no submission
        // names it yet.
        let buffer = unsafe { self.memory.tun_buffers.buffer_mut(bid) };
        let packet = &buffer[vnet::LEN..];
        // The segments' IP headers are copies of the super-packet's: one TOS for all.
        let tos = self.outer_tos(packet);
        let slot = &mut self.memory.tun_slots[usize::from(bid)];
        begin_sends(slot, tos, self.path.family);
        slot.followers.clear();
        slot.iovs_per_segment = 2;
        for i in 0..plan.count {
            let header = &mut slot.headers[i * HEADER_ROOM..(i + 1) * HEADER_ROOM];
            let payload = plan.segment(packet, i, header);
            slot.iovs[2 * i] = libc::iovec {
                iov_base: header.as_mut_ptr().cast(),
                iov_len: header_len,
            };
            slot.iovs[2 * i + 1] = libc::iovec {
                iov_base: packet_ptr.wrapping_add(payload.start).cast(),
                iov_len: payload.len(),
            };
        }
    }

    fn on_send_done(&mut self, index: u32, result: i32, now_ns: u64) {
        let SendIndex { bid, msg, route } = SendIndex::unpack(index);
        let msg = usize::from(msg);
        let slot = &mut self.memory.tun_slots[usize::from(bid)];
        let (segments, first) = slot.msg_segments[msg];
        let (segments, first) = (usize::from(segments), usize::from(first));
        let gso = msg < MAX_GSO_SENDS && segments > 1;
        let errno = -result;
        if result < 0
            && route == Route::Direct
            && (errno == libc::EMSGSIZE || (gso && errno == libc::EINVAL))
        {
            // Over the path MTU, which shrank after the packets were read: EMSGSIZE (with the MTU
            // queued, `ip_local_error`), or for a GSO send EINVAL (`udp_send_skb` refuses a
            // gso_size that does not fit the path, or the device cannot do GSO at all). Or a
            // router's ICMP left EMSGSIZE as the socket's pending error, which any send takes.
            // Which it was is known once the path MTU has been looked at, once for the whole
            // batch: until then the send stays counted in `pending`, so its slot keeps its
            // buffers however the slot's other refused sends are settled.
            self.reports.reread_path_mtu = true;
            self.reports.drain_queue |= errno == libc::EMSGSIZE;
            self.refused.push(RefusedSend {
                bid,
                msg,
                first,
                segments,
                errno,
            });
            return;
        }
        slot.pending -= 1;
        if result >= 0 {
            self.stats.counters.udp_tx_packets += segments as u64;
            self.stats.counters.udp_tx_bytes += result as u64;
            if route == Route::Fragmenting {
                self.stats.path.fragmented_sends += segments as u64;
            }
            // One sample per datagram, timed from the read of the buffer it came from: a batch
            // leader's or follower's own buffer, or the one super-packet a split came from.
            let slot = &self.memory.tun_slots[usize::from(bid)];
            if slot.iovs_per_segment == 1 {
                for segment in first..first + segments {
                    let source = segment_source(bid, 1, &slot.followers, segment);
                    let started = self.tun_read_at_ns[usize::from(source)];
                    self.stats
                        .record_latency(Direction::TunToUdp, now_ns.saturating_sub(started));
                }
            } else {
                // A split's segments all came in with one read: one histogram update for all.
                let started = self.tun_read_at_ns[usize::from(bid)];
                self.stats.record_latency_n(
                    Direction::TunToUdp,
                    now_ns.saturating_sub(started),
                    segments as u64,
                );
            }
        } else if route == Route::Direct && gso && errno == libc::EIO {
            self.send_without_gso(bid, first, segments, errno);
        } else {
            let reason = if errno == libc::EAGAIN || errno == libc::ENOBUFS {
                DropReason::UdpSendBufferFull
            } else if is_peer_unreachable(errno) {
                // The fragmenting socket has no IP_RECVERR, so nothing is queued for it.
                self.reports.drain_queue |= route == Route::Direct;
                DropReason::PeerUnreachable
            } else {
                DropReason::UdpSendError
            };
            self.stats.counters.drop_n(reason, segments as u64);
        }
        self.release_if_done(bid);
    }

    /// The egress device cannot do UDP GSO (no checksum offload): turns it off and sends these
    /// segments one by one (quinn-udp and wireguard-go do the same). Every GSO send that fails
    /// so is redone, also those already in flight when GSO went off.
    fn send_without_gso(&mut self, bid: u16, first: usize, segments: usize, errno: i32) {
        if self.offloads.udp_gso {
            self.offloads.udp_gso = false;
            eprintln!(
                "tunfwd: queue {}: UDP GSO send failed ({}); sending without GSO from now on",
                self.stats.queue,
                io::Error::from_raw_os_error(errno)
            );
        }
        self.stats.counters.gso_fallbacks += 1;
        for segment in first..first + segments {
            self.submit_send(
                bid,
                MAX_GSO_SENDS + segment,
                segment,
                1,
                None,
                Route::Direct,
            );
        }
    }

    /// Gives `bid`'s buffer (and its batch's followers) back to the ring once none of its sends
    /// is in flight or waiting to be settled.
    fn release_if_done(&mut self, bid: u16) {
        let slot = &mut self.memory.tun_slots[usize::from(bid)];
        if slot.pending == 0 {
            let followers = std::mem::take(&mut slot.followers);
            for &f in &followers {
                self.return_tun_buffer(f);
            }
            self.memory.tun_slots[usize::from(bid)].followers = followers;
            self.return_tun_buffer(bid);
        }
    }

    // ---- Path MTU ----

    /// Acts, once per batch, on what its completions reported: drains the error queue, counting
    /// the ICMP errors about the peer in it (at least as many as surfaced on receives), and, if a
    /// send was refused as too big or the queue reported an MTU, rereads the kernel's path MTU
    /// and works to it (to the queue's report if the kernel cannot be asked). The kernel has
    /// applied a local EMSGSIZE or a router's ICMP error to its route to the peer before telling
    /// us, so its view is the one to take.
    fn read_error_reports(&mut self) {
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
            .path
            .probe
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
    fn recheck_path_mtu(&mut self) {
        if let Some(probe) = &self.path.probe
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
    /// outer fragments (`after_refusal`); then it stops counting in its slot's `pending`, and the
    /// slot's buffers go back once nothing of it is left in flight or waiting here.
    fn settle_refusals(&mut self, now_ns: u64) {
        if self.refused.is_empty() {
            return;
        }
        let mut refused = std::mem::take(&mut self.refused);
        for r in refused.drain(..) {
            let slot = &mut self.memory.tun_slots[usize::from(r.bid)];
            let length = segment_len(slot, r.first);
            let gso = r.msg < MAX_GSO_SENDS && r.segments > 1;
            let resends_left = slot.resends < RESENDS_PER_SLOT;
            match after_refusal(r.errno, gso, length, self.path.inner_mtu, resends_left) {
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
            self.memory.tun_slots[usize::from(r.bid)].pending -= 1;
            self.release_if_done(r.bid);
        }
        self.refused = refused;
    }

    /// A packet just read is longer than the inner MTU (a super-packet: its segments are, per
    /// `plan`). Answers its sender, or sends it for the outer IP layer to fragment. Returns
    /// whether sends of its buffer were queued; if not, the caller returns the buffer.
    fn too_big_on_read(
        &mut self,
        bid: u16,
        packet_len: usize,
        plan: Option<Split>,
        now_ns: u64,
    ) -> bool {
        let (segment_len, count) = plan
            .as_ref()
            .map_or((packet_len, 1), |p| (p.segment_len(0), p.count));
        // SAFETY: the worker owns `bid` (just read), and no submission names it.
        let buffer = unsafe { self.memory.tun_buffers.buffer_mut(bid) };
        let packet = &buffer[vnet::LEN..vnet::LEN + packet_len];
        match icmp::too_big_action(packet, segment_len, self.path.inner_mtu) {
            TooBig::Reply { mtu } => {
                self.stats.counters.drop_n(DropReason::TooBig, count as u64);
                queue_reply(
                    &mut self.memory.replies,
                    &mut self.submissions,
                    packet,
                    mtu,
                    now_ns,
                );
                false
            }
            TooBig::Fragment if self.path.fragmenting.is_none() => {
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
        let quote = &mut self.reply_quote;
        let mut quoted = 0;
        for iov in &slot.iovs[first * per..(first + 1) * per] {
            let n = iov.iov_len.min(quote.len() - quoted);
            // SAFETY: the iovec points at this slot's header area or into a TUN buffer of this
            // slot's sends, which stay the worker's until the slot's last send completes and is
            // settled (this one has completed; the buffers go back only at `pending == 0`,
            // after this).
            let bytes = unsafe { std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), n) };
            quote[quoted..quoted + n].copy_from_slice(bytes);
            quoted += n;
        }
        let length = segment_len(slot, first);
        match icmp::too_big_action(&quote[..quoted], length, self.path.inner_mtu) {
            TooBig::Reply { mtu } => {
                self.stats
                    .counters
                    .drop_n(DropReason::TooBig, segments as u64);
                if !std::mem::replace(&mut slot.too_big_answered, true) {
                    queue_reply(
                        &mut self.memory.replies,
                        &mut self.submissions,
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
    /// socket, as submissions like every other send, so that they reach the kernel after the
    /// packets queued before them and not ahead (a system call of their own would overtake
    /// those, which leave only at the next flush). Drops them, counted, if there is no such
    /// socket.
    fn send_fragmenting(&mut self, bid: u16, first: usize, segments: usize) {
        if self.path.fragmenting.is_none() {
            self.stats
                .counters
                .drop_n(DropReason::TooBig, segments as u64);
            return;
        }
        for segment in first..first + segments {
            self.submit_send(
                bid,
                MAX_GSO_SENDS + segment,
                segment,
                1,
                None,
                Route::Fragmenting,
            );
        }
    }

    // ---- UDP to TUN ----

    fn on_udp_recv(&mut self, bid: u16, len: usize, now_ns: u64) {
        // SAFETY: as in `on_tun_read`: the completion handed `bid` to the worker.
        let buffer = unsafe { self.memory.udp_buffers.buffer_mut(bid) };
        let Ok(message) =
            RecvMsgOut::parse(&buffer[..len.min(buffer.len())], &self.memory.recv_msg)
        else {
            self.stats.counters.drop(DropReason::OversizedDatagram);
            return self.return_udp_buffer(bid);
        };
        if message.is_payload_truncated() {
            self.stats.counters.drop(DropReason::OversizedDatagram);
            return self.return_udp_buffer(bid);
        }
        if socket::source_ip(message.name_data()) != Some(self.peer.ip().to_canonical()) {
            self.stats.counters.drop(DropReason::ForeignSource);
            return self.return_udp_buffer(bid);
        }
        let payload = message.payload_data();
        let payload_at = payload.as_ptr() as usize - buffer.as_ptr() as usize;
        let truncated = message.is_control_data_truncated();
        if truncated {
            self.stats.counters.control_truncated += 1;
        }
        let control = socket::receive_control(message.control_data());
        let stride = datagram_stride(control.gro_segment_size, truncated, payload);
        // One outer TOS for the whole buffer: GRO merges only datagrams with equal TOS.
        let outer_tos = if self.marking.ecn {
            control.tos.unwrap_or(0)
        } else {
            0
        };
        let payload_len = payload.len();
        let slot = &mut self.memory.udp_slots[usize::from(bid)];
        slot.segments.clear();
        let mut offset = 0;
        let mut accepted_bytes = 0u64;
        let mut ecn_drops = 0u64;
        while offset < payload_len {
            let seg_len = stride.min(payload_len - offset);
            let at = payload_at + offset;
            offset += seg_len;
            let valid = IpPacket::new_checked(&buffer[at..at + seg_len]).map(drop);
            match valid {
                Ok(()) if slot.segments.len() < MAX_GRO_SEGMENTS => {
                    accepted_bytes += seg_len as u64;
                    // RFC 6040 before the coalescer looks: marked and unmarked never merge.
                    match ecn::decapsulate(outer_tos, &mut buffer[at..at + seg_len]) {
                        Decapsulated::Drop => {
                            ecn_drops += 1;
                            continue;
                        }
                        Decapsulated::Marked(Ecn::Ce) => self.stats.path.ecn_ce_marked += 1,
                        Decapsulated::Marked(_) | Decapsulated::Unchanged => {}
                    }
                    slot.segments.push((at, seg_len));
                }
                Ok(()) => self.stats.counters.drop(DropReason::OversizedDatagram),
                Err(malformed) => self.stats.counters.drop(malformed.into()),
            }
        }
        // Dropped for ECN, but received from the peer: counted as both.
        self.stats.counters.drop_n(DropReason::EcnNotEct, ecn_drops);
        self.stats.counters.udp_rx_packets += slot.segments.len() as u64 + ecn_drops;
        self.stats.counters.udp_rx_bytes += accepted_bytes;
        if slot.segments.is_empty() {
            return self.return_udp_buffer(bid);
        }
        if slot.segments.len() > 1 {
            self.stats.counters.gro_receives += 1;
        }
        self.udp_read_at_ns[usize::from(bid)] = now_ns;
        let policy = self.coalesce;
        let mut runs = std::mem::take(&mut slot.runs);
        if policy.tcp || policy.udp {
            coalesce::plan_runs(buffer, &slot.segments, policy, &mut runs);
        } else {
            runs.clear();
            runs.extend((0..slot.segments.len()).map(|first| Run { first, count: 1 }));
        }
        let mut iov = 0;
        for (r, run) in runs.iter().enumerate() {
            if run.count > 1 {
                // Keep the head's original headers in case the kernel refuses the merged write.
                save_head(
                    buffer,
                    slot.segments[run.first],
                    &mut slot.saved_headers[r * HEADER_ROOM..][..HEADER_ROOM],
                );
                slot.vnet_headers[r] = coalesce::finish_run(buffer, &slot.segments, *run);
                self.stats.counters.coalesced_writes += 1;
            }
            let start = iov;
            let header: *const u8 = if run.count > 1 {
                slot.vnet_headers[r].as_ptr()
            } else {
                PLAIN_HEADER.as_ptr()
            };
            slot.iovs[iov] = libc::iovec {
                iov_base: header.cast_mut().cast(),
                iov_len: vnet::LEN,
            };
            iov += 1;
            let (head_at, head_len) = slot.segments[run.first];
            slot.iovs[iov] = libc::iovec {
                iov_base: buffer[head_at..].as_mut_ptr().cast(),
                iov_len: head_len,
            };
            iov += 1;
            if run.count > 1 {
                // The merged packet's header length, as finish_run wrote it into the vnet header.
                let header_len = VnetHeader::new_checked(&slot.vnet_headers[r][..])
                    .map_or(0, |h| usize::from(h.hdr_len()));
                for &(at, len) in &slot.segments[run.first + 1..run.first + run.count] {
                    slot.iovs[iov] = libc::iovec {
                        iov_base: buffer[at + header_len..].as_mut_ptr().cast(),
                        iov_len: len - header_len,
                    };
                    iov += 1;
                }
            }
            slot.pending += 1;
            let token = Token::new(Op::TunWrite, u32::from(bid) | (r as u32) << 16);
            if run.count > 1 && self.faults.tun_write_einval() {
                self.submissions.inject(token, libc::EINVAL);
                continue;
            }
            let write =
                opcode::Writev::new(TUN_FILE, slot.iovs[start..].as_ptr(), (iov - start) as u32)
                    .build();
            self.submissions.queue(write, token);
        }
        slot.runs = runs;
    }

    fn on_write_done(&mut self, index: u32, result: i32, now_ns: u64) {
        if index & (REPLY_BIT | FALLBACK_BIT) == REPLY_BIT {
            let k = (index & 0xffff) as usize;
            if let Some(busy) = self.memory.replies.busy.get_mut(k) {
                *busy = false;
            }
            if result >= 0 {
                self.stats.path.too_big_replies += 1;
            }
            return;
        }
        let bid = (index & 0xffff) as u16;
        let fallback = index & FALLBACK_BIT != 0;
        let r = ((index & !FALLBACK_BIT) >> 16) as usize;
        let slot = &mut self.memory.udp_slots[usize::from(bid)];
        slot.pending -= 1;
        let segments = if fallback {
            1
        } else {
            slot.runs[r].count as u64
        };
        if result >= 0 {
            self.stats.counters.tun_tx_packets += segments;
            self.stats.counters.tun_tx_bytes += (result as usize).saturating_sub(vnet::LEN) as u64;
            let started = self.udp_read_at_ns[usize::from(bid)];
            self.stats.record_latency_n(
                Direction::UdpToTun,
                now_ns.saturating_sub(started),
                segments,
            );
        } else if -result == libc::EINVAL && segments > 1 {
            // The kernel refused a merged write (seen on Linux 6.6.44 with a short tail, and on
            // vendor kernels): restore the head's headers, write each segment alone, and stop
            // merging on this worker.
            self.write_run_segments(bid, r);
            return;
        } else {
            self.stats
                .counters
                .drop_n(DropReason::TunWriteError, segments);
        }
        if self.memory.udp_slots[usize::from(bid)].pending == 0 {
            self.return_udp_buffer(bid);
        }
    }

    fn write_run_segments(&mut self, bid: u16, r: usize) {
        if self.coalesce != Policy::NONE {
            eprintln!(
                "tunfwd: queue {}: the TUN refused a merged write (EINVAL); writing segments one by one from now on",
                self.stats.queue
            );
            self.coalesce = Policy::NONE;
        }
        self.stats.counters.coalesce_fallbacks += 1;
        // SAFETY: the worker owns `bid` (the contract in `ring`). The one submission that named
        // this run's bytes, its merged write, has completed; the buffer's other writes, maybe
        // still in flight, name other runs' bytes, which this writes none of (`restore_head`
        // touches only this run's rewritten headers).
        let buffer = unsafe { self.memory.udp_buffers.buffer_mut(bid) };
        let slot = &mut self.memory.udp_slots[usize::from(bid)];
        let run = slot.runs[r];
        let (head_at, _) = slot.segments[run.first];
        // Exactly the bytes finish_run rewrote (the merged packet's header length): a run can be
        // shorter than HEADER_ROOM, and the next run's rewritten head, maybe still in flight,
        // starts right after it.
        let rewritten = VnetHeader::new_checked(&slot.vnet_headers[r][..])
            .map_or(0, |h| usize::from(h.hdr_len()));
        restore_head(
            buffer,
            head_at,
            &slot.saved_headers[r * HEADER_ROOM..][..HEADER_ROOM],
            rewritten,
        );
        for s in run.first..run.first + run.count {
            let (at, len) = slot.segments[s];
            slot.fallback_iovs[2 * s] = libc::iovec {
                iov_base: PLAIN_HEADER.as_ptr().cast_mut().cast(),
                iov_len: vnet::LEN,
            };
            slot.fallback_iovs[2 * s + 1] = libc::iovec {
                iov_base: buffer[at..].as_mut_ptr().cast(),
                iov_len: len,
            };
            let write =
                opcode::Writev::new(TUN_FILE, slot.fallback_iovs[2 * s..].as_ptr(), 2).build();
            slot.pending += 1;
            self.submissions.queue(
                write,
                Token::new(
                    Op::TunWrite,
                    u32::from(bid) | FALLBACK_BIT | (s as u32) << 16,
                ),
            );
        }
    }

    /// Cancels everything in flight and waits for the last completions. False if they did not all
    /// arrive in time (the caller must then leak `memory`).
    fn drain(
        &mut self,
        ring: &mut IoUring,
        epoch: Instant,
        completions: &mut Vec<cqueue::Entry>,
    ) -> bool {
        self.send_batch();
        self.stopping = true;
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::any()).build();
        self.submit(cancel, Token::new(Op::Cancel, 0));
        let held = self.submissions.held.take();
        self.submissions.injected.extend(held);
        if self.faults.drain_stuck() {
            // Injected: an operation that never reports back.
            self.submissions.in_flight += 1;
        }
        let deadline = Instant::now() + DRAIN_DEADLINE;
        while self.submissions.in_flight > 0 && Instant::now() < deadline {
            self.flush(ring);
            if wait(ring, 1, IDLE_WAIT).is_err() {
                break;
            }
            self.reap(ring, epoch, completions);
        }
        self.flush(ring);
        self.submissions.in_flight == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::test_packets::{Spec, build};
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

    /// Two UDP flows of two tiny datagrams each: two runs of 2 x 32 bytes, the first far shorter
    /// than HEADER_ROOM.
    fn two_tiny_runs() -> (Vec<u8>, Vec<(usize, usize)>, Vec<Run>) {
        let mut buffer = Vec::new();
        let mut segments = Vec::new();
        for sport in [1000, 2000] {
            for id in 7..9 {
                let p = build(&Spec {
                    udp: true,
                    payload_len: 4,
                    sport,
                    id,
                    ..Spec::default()
                });
                segments.push((buffer.len(), p.len()));
                buffer.extend_from_slice(&p);
            }
        }
        let mut runs = Vec::new();
        coalesce::plan_runs(&buffer, &segments, Policy::ALL, &mut runs);
        assert_eq!(
            runs,
            vec![Run { first: 0, count: 2 }, Run { first: 2, count: 2 }]
        );
        (buffer, segments, runs)
    }

    #[test]
    fn restoring_a_short_run_leaves_the_next_runs_rewritten_head_alone() {
        let (mut buffer, segments, runs) = two_tiny_runs();
        let original = buffer.clone();
        let mut saved = vec![0u8; runs.len() * HEADER_ROOM];
        let mut vnet_headers = Vec::new();
        for (r, run) in runs.iter().enumerate() {
            save_head(
                &buffer,
                segments[run.first],
                &mut saved[r * HEADER_ROOM..][..HEADER_ROOM],
            );
            vnet_headers.push(coalesce::finish_run(&mut buffer, &segments, *run));
        }
        let merged = buffer.clone();
        let (head0, _) = segments[runs[0].first];
        let (head1, len1) = segments[runs[1].first];
        assert!(
            head1 - head0 < HEADER_ROOM,
            "the runs sit closer than HEADER_ROOM"
        );
        assert_ne!(merged[head1..head1 + len1], original[head1..head1 + len1]);

        // What the merged-write EINVAL fallback does for run 0.
        let rewritten = usize::from(
            VnetHeader::new_checked(&vnet_headers[0][..])
                .unwrap()
                .hdr_len(),
        );
        restore_head(&mut buffer, head0, &saved[..HEADER_ROOM], rewritten);
        assert_eq!(
            buffer[..head1],
            original[..head1],
            "run 0 is back to its original segments"
        );
        assert_eq!(
            buffer[head1..],
            merged[head1..],
            "run 1, maybe still in flight, is untouched"
        );

        // Restoring all of HEADER_ROOM, as tunfwd once did, would have undone run 1's rewrite.
        let mut old_way = merged.clone();
        restore_head(&mut old_way, head0, &saved[..HEADER_ROOM], HEADER_ROOM);
        assert_ne!(old_way[head1..], merged[head1..]);
    }

    #[test]
    fn stride_comes_from_gro_or_the_first_ip_length_when_control_was_cut() {
        let p = build(&Spec {
            udp: true,
            payload_len: 100,
            ..Spec::default()
        });
        let mut two = p.clone();
        two.extend_from_slice(&p);
        assert_eq!(datagram_stride(Some(128), false, &two), 128);
        assert_eq!(
            datagram_stride(Some(128), true, &two),
            128,
            "the size survived"
        );
        assert_eq!(datagram_stride(None, true, &two), p.len());
        assert_eq!(
            datagram_stride(None, false, &two),
            two.len(),
            "one datagram"
        );
        let v6 = build(&Spec {
            ipv6: true,
            udp: true,
            payload_len: 10,
            ..Spec::default()
        });
        let mut v6s = v6.clone();
        v6s.extend_from_slice(&v6);
        assert_eq!(datagram_stride(None, true, &v6s), v6.len());
        // Garbage or an IP length past the buffer: one datagram, which validation then judges.
        assert_eq!(datagram_stride(None, true, &[0xff; 30]), 30);
        let mut long = p.clone();
        long[2..4].copy_from_slice(&9000u16.to_be_bytes());
        assert_eq!(datagram_stride(None, true, &long), long.len());
        assert_eq!(datagram_stride(None, true, &[]), 1);
    }

    #[test]
    fn each_sent_segment_is_timed_from_its_own_buffer() {
        let followers = [7, 9, 4];
        let batch: Vec<u16> = (0..4)
            .map(|k| segment_source(3, 1, &followers, k))
            .collect();
        assert_eq!(batch, vec![3, 7, 9, 4]);
        assert!(
            (0..40).all(|k| segment_source(3, 2, &[], k) == 3),
            "a split"
        );
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

    /// After a router's ICMP error, the socket's pending EMSGSIZE fails the next send whatever its
    /// size. Judged against the path MTU learned from it, a send whose datagrams fit goes out
    /// again, and only datagrams longer than the new inner MTU are too big. (tunfwd once answered
    /// every refused send as too big: a 100-byte ping after a frag-needed for 1400 bytes was
    /// dropped, and its sender told the MTU was 1372.)
    #[test]
    fn refused_sends_that_fit_the_learned_mtu_are_sent_again() {
        use AfterRefusal::*;
        let emsgsize = libc::EMSGSIZE;
        let einval = libc::EINVAL;
        for (errno, gso, length, inner_mtu, resends_left, expected) in [
            // The pending error of a router's ICMP: the datagrams fit.
            (emsgsize, false, 100, 1372, true, Resend),
            (emsgsize, true, 1372, 1372, true, Resend),
            // They no longer fit: answered or fragmented, whatever the errno.
            (emsgsize, false, 1373, 1372, true, TooBig),
            (emsgsize, true, 1400, 1252, true, TooBig),
            (einval, true, 1400, 1252, true, TooBig),
            (einval, true, 1400, 1252, false, TooBig),
            // A GSO EINVAL for datagrams that fit: the device cannot do GSO.
            (einval, true, 1200, 1252, true, WithoutGso),
            (einval, true, 1200, 1252, false, WithoutGso),
            // Refused again and again though they fit: not forever.
            (emsgsize, false, 100, 1372, false, Drop),
        ] {
            assert_eq!(
                after_refusal(errno, gso, length, inner_mtu, resends_left),
                expected,
                "errno {errno} gso {gso} length {length} inner MTU {inner_mtu}"
            );
        }
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
