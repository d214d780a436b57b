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
//! All `unsafe` here is about the buffer-lifetime contract stated in `ring`.

use crate::offload::coalesce::{self, Policy, Run};
use crate::offload::complete_checksum;
use crate::offload::split::{self, GSO_MAX_BYTES, GSO_MAX_SEGMENTS, Split};
use crate::ring::{self, BufRing, Op, Token};
use crate::stats::{Direction, DropReason, WorkerStats};
use crate::steer;
use crate::sys::{self, socket};
use crate::wire::vnet::{FLAG_NEEDS_CSUM, GsoType};
use crate::wire::{IpPacket, VnetHeader, vnet};
use io_uring::types::{CancelBuilder, Fd, Fixed, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, Probe, cqueue, opcode, squeue};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

const TUN_GROUP: u16 = 0;
const UDP_GROUP: u16 = 1;
/// Indexes in the ring's registered-file table.
const TUN_FILE: Fixed = Fixed(0);
const UDP_FILE: Fixed = Fixed(1);
/// `struct io_uring_recvmsg_out`: four u32 fields ahead of the name in a multishot recvmsg buffer.
const RECVMSG_OUT_LEN: usize = 16;
/// How long an idle worker sleeps before it looks at the stop flag and the stats clock.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long shutdown waits for cancelled operations to report back before leaking their memory.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);
/// A multishot operation that fails this many times in a row, with no data in between, is broken.
const MAX_CONSECUTIVE_FAILURES: u32 = 64;
/// Segments one super-packet may split into (gso_size >= 512 for a 64 KB packet).
const MAX_SPLIT_SEGMENTS: usize = 128;
/// Room for one segment's IP + TCP headers (60 + 60 bytes at most).
const HEADER_ROOM: usize = 128;
/// GSO sends one buffer may need; per-segment fallback sends use the msghdrs after these.
const MAX_GSO_SENDS: usize = MAX_SPLIT_SEGMENTS.div_ceil(GSO_MAX_SEGMENTS) + 2;
/// Segments one GRO receive buffer may hold (`UDP_GRO_CNT_MAX` is 64).
const MAX_GRO_SEGMENTS: usize = 128;
/// Token index bit: a per-segment rewrite of a merged TUN write that the kernel refused.
const FALLBACK_BIT: u32 = 1 << 31;
/// A zero virtio_net_hdr, for writes of plain packets.
static PLAIN_HEADER: [u8; vnet::LEN] = [0; vnet::LEN];

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
    /// One `UDP_SEGMENT` control message per GSO send.
    controls: Box<[[u64; 3]]>,
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
    recv_msg: Box<libc::msghdr>,
    /// Read by the kernel only, through every send's `msg_name`.
    #[expect(dead_code, reason = "kept alive for the kernel, never read from Rust")]
    peer_sockaddr: Box<(libc::sockaddr_storage, libc::socklen_t)>,
}

/// Consecutive plain packets waiting to go out as one GSO send.
#[derive(Debug, Clone, Copy)]
struct Batch {
    leader: u16,
    count: usize,
    segment_size: usize,
    bytes: usize,
    flow: Option<u32>,
    /// A shorter packet ended the batch: nothing more may follow it.
    closed: bool,
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
    /// Operations submitted whose final completion has not been seen yet.
    in_flight: usize,
    stopping: bool,
    fatal: Option<io::Error>,
    pending: Vec<squeue::Entry>,
}

/// Runs one worker to completion. Reports setup success or failure on `ready` first.
pub fn run(config: WorkerConfig, ready: Sender<Result<(), sys::Error>>) -> Option<WorkerExit> {
    let queue = config.queue;
    let (mut ring, mut worker) = match setup(&config) {
        Ok(parts) => parts,
        Err(e) => {
            let _ = ready.send(Err(e));
            return None;
        }
    };
    let _ = ready.send(Ok(()));
    let epoch = Instant::now();
    let mut next_snapshot = config.snapshots.as_ref().map(|(every, _)| epoch + *every);
    let mut completions: Vec<cqueue::Entry> = Vec::with_capacity(ring.completion().capacity());

    while !config.stop.load(Ordering::Relaxed) && worker.fatal.is_none() {
        worker.flush(&mut ring);
        if let Err(e) = wait(&ring, 1, IDLE_WAIT) {
            worker.fatal = Some(e);
            break;
        }
        worker.reap(&mut ring, epoch, &mut completions);
        if let (Some(at), Some((every, sender))) = (next_snapshot, &config.snapshots)
            && Instant::now() >= at
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
            worker.in_flight
        );
        std::mem::forget(worker.memory);
        std::mem::forget(ring);
    }
    Some(exit)
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

fn new_tun_slot(peer: &(libc::sockaddr_storage, libc::socklen_t)) -> TunSlot {
    let mut msgs = vec![zeroed_msghdr(); MAX_GSO_SENDS + MAX_SPLIT_SEGMENTS].into_boxed_slice();
    for m in msgs.iter_mut() {
        m.msg_name = (&peer.0 as *const libc::sockaddr_storage).cast_mut().cast();
        m.msg_namelen = peer.1;
    }
    TunSlot {
        msgs,
        controls: vec![[0u64; 3]; MAX_GSO_SENDS].into_boxed_slice(),
        iovs: vec![EMPTY_IOV; 2 * MAX_SPLIT_SEGMENTS].into_boxed_slice(),
        headers: vec![0u8; MAX_SPLIT_SEGMENTS * HEADER_ROOM].into_boxed_slice(),
        msg_segments: vec![(0, 0); MAX_GSO_SENDS + MAX_SPLIT_SEGMENTS].into_boxed_slice(),
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

    // Registered files spare an operation the file-table lookup and reference count. Not for the
    // TUN's multishot read: on Linux 6.18 it fails with EBADFD when given the registered file.
    ring.submitter()
        .register_files(&[config.tun.as_raw_fd(), config.socket.as_raw_fd()])
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
    let udp_len = round(RECVMSG_OUT_LEN + name_len + socket::GRO_CONTROL_LEN + udp_payload_room);
    let udp_count = buffer_count(depth, config.buffer_memory, udp_len);
    let udp_buffers = BufRing::new(UDP_GROUP, udp_count, udp_len).map_err(alloc)?;

    let peer_sockaddr = Box::new(socket::to_sockaddr(config.peer));
    let tun_slots: Box<[TunSlot]> = (0..tun_count)
        .map(|_| new_tun_slot(&peer_sockaddr))
        .collect();
    let udp_slots: Box<[UdpSlot]> = (0..udp_count).map(|_| new_udp_slot()).collect();
    let mut recv_msg = Box::new(zeroed_msghdr());
    recv_msg.msg_namelen = name_len as libc::socklen_t;
    recv_msg.msg_controllen = if offloads.udp_gro {
        socket::GRO_CONTROL_LEN
    } else {
        0
    };

    let memory = KernelMemory {
        tun_buffers,
        udp_buffers,
        tun_slots,
        udp_slots,
        recv_msg,
        peer_sockaddr,
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
        in_flight: 0,
        stopping: false,
        fatal: None,
        pending: Vec::with_capacity(4 * depth + 16),
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
    worker.rearm();
    Ok((ring, worker))
}

/// Queues `entry` under `token` for the next flush and counts it in flight. It takes the two
/// fields rather than the worker, so code that holds a slot of `Worker::memory` can submit too.
fn queue_submission(
    in_flight: &mut usize,
    pending: &mut Vec<squeue::Entry>,
    entry: squeue::Entry,
    token: Token,
) {
    *in_flight += 1;
    pending.push(entry.user_data(token.user_data()));
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
        while start < self.pending.len() {
            let mut sq = ring.submission();
            let room = sq.capacity() - sq.len();
            let end = (start + room).min(self.pending.len());
            for entry in &self.pending[start..end] {
                // SAFETY: every entry points only into `self.memory` or the worker's fds, which stay
                // alive and owned per the contract in `ring`.
                unsafe { sq.push(entry).expect("room was checked") };
            }
            drop(sq);
            start = end;
            if start < self.pending.len() {
                // The SQ is full: let the kernel take what it has, then continue.
                if let Err(e) = ring.submit() {
                    self.fatal.get_or_insert(e);
                    break;
                }
            }
        }
        self.pending.clear();
    }

    /// Handles every available completion, then closes the batch: sends what was gathered,
    /// publishes returned buffers, re-arms multishot operations.
    fn reap(&mut self, ring: &mut IoUring, epoch: Instant, completions: &mut Vec<cqueue::Entry>) {
        let now = epoch.elapsed().as_nanos() as u64;
        completions.clear();
        completions.extend(ring.completion());
        for cqe in completions.iter() {
            self.complete(cqe, now);
        }
        self.send_batch();
        self.rearm();
    }

    fn submit(&mut self, entry: squeue::Entry, token: Token) {
        queue_submission(&mut self.in_flight, &mut self.pending, entry, token);
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

    fn complete(&mut self, cqe: &cqueue::Entry, now_ns: u64) {
        let more = cqueue::more(cqe.flags());
        if !more {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        let Some(token) = Token::from_user_data(cqe.user_data()) else {
            return;
        };
        let result = cqe.result();
        let bid = cqueue::buffer_select(cqe.flags());
        match token.op {
            Op::TunRead => {
                if !more {
                    self.tun_read_armed = false;
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

    fn on_multishot_error(&mut self, op: Op, result: i32) {
        let errno = -result;
        match errno {
            libc::ENOBUFS => self.stats.counters.buffer_stalls += 1,
            libc::ECANCELED | libc::EINTR | libc::EAGAIN => {}
            _ if op == Op::UdpRecv && is_peer_unreachable(errno) => {
                // IP_RECVERR: an ICMP error about the peer surfaced on the receive; count what
                // is queued, and keep receiving.
                self.stats.counters.icmp_errors +=
                    socket::drain_error_queue(self.socket.as_raw_fd()).max(1);
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
                self.add_to_batch(bid, packet_len);
            }
            GsoType::TcpV4 | GsoType::TcpV6 | GsoType::UdpL4 if self.offloads.tun_offloads() => {
                let plan = Split::plan(packet, gso, gso_size, MAX_SPLIT_SEGMENTS);
                // Anything gathered so far goes first, so the flow order is kept.
                self.send_batch();
                match plan {
                    Ok(plan) => {
                        self.stats.counters.tun_rx_packets += plan.count as u64;
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
        // the first segment only, and all of them go to the worker it picks.
        let flow = steer::flow_key(packet);
        if let Some(batch) = self.batch {
            let fits = !batch.closed
                && batch.flow == flow
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
            closed: false,
        });
    }

    fn send_one(&mut self, bid: u16, packet_ptr: *mut u8, len: usize) {
        let slot = &mut self.memory.tun_slots[usize::from(bid)];
        slot.followers.clear();
        slot.iovs[0] = libc::iovec {
            iov_base: packet_ptr.cast(),
            iov_len: len,
        };
        slot.iovs_per_segment = 1;
        self.submit_send(bid, 0, 0, 1, None);
    }

    /// Sends the pending batch: one GSO send for several packets, a plain send for one.
    fn send_batch(&mut self) {
        let Some(batch) = self.batch.take() else {
            return;
        };
        let slot = &mut self.memory.tun_slots[usize::from(batch.leader)];
        slot.iovs_per_segment = 1;
        let segment_size = (batch.count > 1).then_some(batch.segment_size as u16);
        if batch.count > 1 {
            self.stats.counters.gso_sends += 1;
        }
        self.submit_send(batch.leader, 0, 0, batch.count, segment_size);
    }

    /// Queues msghdr `msg` of `bid`'s slot, covering `segments` segments from `first_segment`,
    /// with `UDP_SEGMENT` when `segment_size` is given.
    fn submit_send(
        &mut self,
        bid: u16,
        msg: usize,
        first_segment: usize,
        segments: usize,
        segment_size: Option<u16>,
    ) {
        let slot = &mut self.memory.tun_slots[usize::from(bid)];
        let per = usize::from(slot.iovs_per_segment);
        let iov_start = first_segment * per;
        let m = &mut slot.msgs[msg];
        m.msg_iov = slot.iovs[iov_start..].as_mut_ptr();
        m.msg_iovlen = segments * per;
        match segment_size {
            Some(size) => {
                let control = &mut slot.controls[msg.min(MAX_GSO_SENDS - 1)];
                m.msg_controllen = socket::write_segment_control(control, size);
                m.msg_control = control.as_mut_ptr().cast();
            }
            None => {
                m.msg_control = std::ptr::null_mut();
                m.msg_controllen = 0;
            }
        }
        slot.msg_segments[msg] = (segments as u16, first_segment as u16);
        slot.pending += 1;
        let send = opcode::SendMsg::new(UDP_FILE, &slot.msgs[msg])
            .flags(libc::MSG_DONTWAIT as u32)
            .build();
        self.submit(
            send,
            Token::new(Op::UdpSend, u32::from(bid) | (msg as u32) << 16),
        );
    }

    /// Sends a super-packet's segments: headers rewritten into the slot, payloads in place.
    fn send_split(&mut self, bid: u16, plan: Split) {
        let packet_ptr = self
            .memory
            .tun_buffers
            .buffer_ptr(bid)
            .wrapping_add(vnet::LEN);
        let header_len = plan.transport.header_len();
        {
            // SAFETY: the worker owns `bid`; the packet was just read into it.
            let buffer = unsafe { self.memory.tun_buffers.buffer_mut(bid) };
            let packet = &buffer[vnet::LEN..];
            let slot = &mut self.memory.tun_slots[usize::from(bid)];
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
        let seg0 = plan.segment_len(0);
        if self.offloads.udp_gso && plan.count > 1 {
            let per_send = split::segments_per_send(seg0);
            let mut first = 0;
            let mut msg = 0;
            while first < plan.count {
                let n = per_send.min(plan.count - first);
                if n > 1 {
                    self.stats.counters.gso_sends += 1;
                }
                self.submit_send(bid, msg, first, n, (n > 1).then_some(seg0 as u16));
                first += n;
                msg += 1;
            }
        } else {
            for i in 0..plan.count {
                self.submit_send(bid, MAX_GSO_SENDS + i, i, 1, None);
            }
        }
    }

    fn on_send_done(&mut self, index: u32, result: i32, now_ns: u64) {
        let bid = (index & 0xffff) as u16;
        let msg = (index >> 16) as usize;
        let slot = &mut self.memory.tun_slots[usize::from(bid)];
        let (segments, first) = slot.msg_segments[msg];
        slot.pending -= 1;
        let is_batch = slot.iovs_per_segment == 1;
        if result >= 0 {
            self.stats.counters.udp_tx_packets += u64::from(segments);
            self.stats.counters.udp_tx_bytes += result as u64;
            if is_batch {
                // Each packet of a batch has its own read time.
                let started = self.tun_read_at_ns[usize::from(bid)];
                self.stats
                    .record_latency(Direction::TunToUdp, now_ns.saturating_sub(started));
                for k in 0..slot.followers.len() {
                    let started = self.tun_read_at_ns[usize::from(slot.followers[k])];
                    self.stats
                        .record_latency(Direction::TunToUdp, now_ns.saturating_sub(started));
                }
            } else {
                let started = self.tun_read_at_ns[usize::from(bid)];
                self.stats.record_latency_n(
                    Direction::TunToUdp,
                    now_ns.saturating_sub(started),
                    u64::from(segments),
                );
            }
        } else {
            let errno = -result;
            if segments > 1
                && (errno == libc::EIO || errno == libc::EINVAL)
                && self.offloads.udp_gso
            {
                // The egress device cannot do UDP GSO (no checksum offload): turn it off and send
                // these segments one by one (quinn-udp and wireguard-go do the same).
                self.offloads.udp_gso = false;
                self.stats.counters.gso_fallbacks += 1;
                eprintln!(
                    "tunfwd: queue {}: UDP GSO send failed ({}); sending without GSO from now on",
                    self.stats.queue,
                    io::Error::from_raw_os_error(errno)
                );
                for j in 0..usize::from(segments) {
                    let segment = usize::from(first) + j;
                    self.submit_send(bid, MAX_GSO_SENDS + segment, segment, 1, None);
                }
                return;
            }
            let reason = if errno == libc::EAGAIN || errno == libc::ENOBUFS {
                DropReason::UdpSendBufferFull
            } else if is_peer_unreachable(errno) {
                self.stats.counters.icmp_errors +=
                    socket::drain_error_queue(self.socket.as_raw_fd());
                DropReason::PeerUnreachable
            } else {
                DropReason::UdpSendError
            };
            self.stats.counters.drop_n(reason, u64::from(segments));
        }
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
        let stride = socket::gro_segment_size(message.control_data())
            .unwrap_or(payload.len())
            .max(1);
        let payload_len = payload.len();
        let slot = &mut self.memory.udp_slots[usize::from(bid)];
        slot.segments.clear();
        let mut offset = 0;
        let mut accepted_bytes = 0u64;
        while offset < payload_len {
            let seg_len = stride.min(payload_len - offset);
            let at = payload_at + offset;
            offset += seg_len;
            match IpPacket::new_checked(&buffer[at..at + seg_len]) {
                Ok(_) if slot.segments.len() < MAX_GRO_SEGMENTS => {
                    slot.segments.push((at, seg_len));
                    accepted_bytes += seg_len as u64;
                }
                Ok(_) => self.stats.counters.drop(DropReason::OversizedDatagram),
                Err(malformed) => self.stats.counters.drop(malformed.into()),
            }
        }
        if slot.segments.is_empty() {
            return self.return_udp_buffer(bid);
        }
        if slot.segments.len() > 1 {
            self.stats.counters.gro_receives += 1;
        }
        self.stats.counters.udp_rx_packets += slot.segments.len() as u64;
        self.stats.counters.udp_rx_bytes += accepted_bytes;
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
                let (head_at, _) = slot.segments[run.first];
                let saved = &mut slot.saved_headers[r * HEADER_ROOM..][..HEADER_ROOM];
                let n = HEADER_ROOM.min(buffer.len() - head_at);
                saved[..n].copy_from_slice(&buffer[head_at..head_at + n]);
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
            let write =
                opcode::Writev::new(TUN_FILE, slot.iovs[start..].as_ptr(), (iov - start) as u32)
                    .build();
            slot.pending += 1;
            queue_submission(
                &mut self.in_flight,
                &mut self.pending,
                write,
                Token::new(Op::TunWrite, u32::from(bid) | (r as u32) << 16),
            );
        }
        slot.runs = runs;
    }

    fn on_write_done(&mut self, index: u32, result: i32, now_ns: u64) {
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
        // SAFETY: the worker owns `bid`: its only submission (this run's write) has completed, and
        // the buffer's other writes do not touch this run's bytes.
        let buffer = unsafe { self.memory.udp_buffers.buffer_mut(bid) };
        let slot = &mut self.memory.udp_slots[usize::from(bid)];
        let run = slot.runs[r];
        let (head_at, _) = slot.segments[run.first];
        let saved = &slot.saved_headers[r * HEADER_ROOM..][..HEADER_ROOM];
        let n = HEADER_ROOM.min(buffer.len() - head_at);
        buffer[head_at..head_at + n].copy_from_slice(&saved[..n]);
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
            queue_submission(
                &mut self.in_flight,
                &mut self.pending,
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
        let deadline = Instant::now() + DRAIN_DEADLINE;
        while self.in_flight > 0 && Instant::now() < deadline {
            self.flush(ring);
            if wait(ring, 1, IDLE_WAIT).is_err() {
                break;
            }
            self.reap(ring, epoch, completions);
        }
        self.flush(ring);
        self.in_flight == 0
    }
}

#[cfg(test)]
mod tests {
    use super::buffer_count;

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
