//! One worker: a pinned thread that owns one TUN queue, one UDP socket, one io_uring and two
//! provided-buffer rings, and moves packets between them. Nothing is shared with other workers.
//!
//! # Data path
//! * **TUN to UDP.** One multishot read on the TUN queue (Linux 6.7) fills buffers from the TUN
//!   ring: `[virtio_net_hdr][IP packet]`. Each packet goes out as a `sendmsg` whose iovec points
//!   just past the header, in the same buffer: no copy. The buffer returns to the ring when the
//!   send completes.
//! * **UDP to TUN.** One multishot `recvmsg` (Linux 6.0) fills buffers from the UDP ring:
//!   `[io_uring_recvmsg_out][source address][payload]`. After the source and the IP header are
//!   checked, the 10 bytes before the payload are overwritten with a zero virtio_net_hdr and the
//!   TUN write covers `[header][packet]`, again in place.
//!
//! Completions are reaped in batches: the time is read once per batch, new submissions are queued
//! and handed to the kernel with the next wait, and returned buffers are published with one store
//! per batch. The hot path allocates nothing, takes no lock and logs nothing; problems become
//! counted drops (`stats::DropReason`).
//!
//! Sends use `MSG_DONTWAIT`: a full socket buffer drops the packet (counted), like a full qdisc,
//! instead of parking the send in io_uring, where a later send could overtake it and reorder the
//! flow.
//!
//! All `unsafe` here is about the buffer-lifetime contract stated in `ring`.

use crate::ring::{self, BufRing, Op, Token};
use crate::stats::{Direction, DropReason, WorkerStats};
use crate::sys::{self, socket};
use crate::wire::{IpPacket, VnetHeader, vnet};
use io_uring::types::{CancelBuilder, Fd, RecvMsgOut, SubmitArgs, Timespec};
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
/// `struct io_uring_recvmsg_out`: four u32 fields ahead of the name in a multishot recvmsg buffer.
const RECVMSG_OUT_LEN: usize = 16;
/// How long an idle worker sleeps before it looks at the stop flag and the stats clock.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long shutdown waits for cancelled operations to report back before leaking their memory.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);
/// A multishot operation that fails this many times in a row, with no data in between, is broken.
const MAX_CONSECUTIVE_FAILURES: u32 = 64;

/// What one worker needs. The fds are opened (and the socket bound) by the caller.
pub struct WorkerConfig {
    pub queue: usize,
    pub cpu: Option<usize>,
    pub tun: OwnedFd,
    pub socket: OwnedFd,
    pub peer: SocketAddr,
    pub mtu: u32,
    /// Buffers per direction, a power of two; also the most operations in flight per direction.
    pub ring_depth: usize,
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

/// A `sendmsg` header and its iovec, one per TUN buffer, pointing into that buffer. Built once;
/// per packet only `iov_len` changes.
struct SendSlot {
    msg: libc::msghdr,
    iov: libc::iovec,
}

/// Everything the kernel may read or write while operations are in flight. Freed only after a
/// complete drain; leaked otherwise (the contract in `ring`).
struct KernelMemory {
    tun_buffers: BufRing,
    udp_buffers: BufRing,
    send_slots: Box<[SendSlot]>,
    recv_msg: Box<libc::msghdr>,
    /// Read by the kernel only, through every send slot's `msg_name`.
    #[expect(dead_code, reason = "kept alive for the kernel, never read from Rust")]
    peer_sockaddr: Box<(libc::sockaddr_storage, libc::socklen_t)>,
}

struct Worker {
    memory: KernelMemory,
    tun: OwnedFd,
    socket: OwnedFd,
    peer: SocketAddr,
    stats: WorkerStats,
    /// When each buffer's packet was read, in ns since `epoch`; indexed by buffer id.
    tun_read_at_ns: Box<[u64]>,
    udp_read_at_ns: Box<[u64]>,
    /// Buffers in the kernel's hands, so a multishot op is re-armed only when it can get one.
    tun_buffers_in_kernel: usize,
    udp_buffers_in_kernel: usize,
    tun_read_armed: bool,
    udp_recv_armed: bool,
    tun_read_failures: u32,
    udp_recv_failures: u32,
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
        let now = epoch.elapsed().as_nanos() as u64;
        completions.clear();
        completions.extend(ring.completion());
        for cqe in &completions {
            worker.complete(cqe, now);
        }
        worker.rearm();
        if let (Some(at), Some((every, sender))) = (next_snapshot, &config.snapshots) {
            if Instant::now() >= at {
                let _ = sender.send(worker.stats.clone());
                next_snapshot = Some(at + *every);
            }
        }
    }
    if config.stop.load(Ordering::Relaxed) && worker.fatal.is_none() {
        // Asked to stop: fine. A fatal error makes every other worker stop too.
    } else {
        config.stop.store(true, Ordering::Relaxed);
    }

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
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET initialise it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t and CPU_SET bounds-checks `cpu` against its size.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // io-wq threads serve operations that cannot complete inline; keep them on this worker's CPU.
    // Best effort: old kernels lack it and nothing depends on it.
    let _ = ring.submitter().register_iowq_aff(&set);
    Ok(())
}

fn setup(config: &WorkerConfig) -> Result<(IoUring, Worker), sys::Error> {
    let queue = config.queue;
    let depth = config.ring_depth;
    let sq_entries = (2 * depth + 8).next_power_of_two() as u32;
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

    let mtu = config.mtu as usize;
    let round = |n: usize| n.div_ceil(64) * 64;
    let count = depth as u16;
    let alloc = |source| sys::Error::RegisterBuffers { queue, source };
    let tun_buffers = BufRing::new(TUN_GROUP, count, round(vnet::LEN + mtu)).map_err(alloc)?;
    let name_len = size_of::<libc::sockaddr_in6>();
    let udp_buffers =
        BufRing::new(UDP_GROUP, count, round(RECVMSG_OUT_LEN + name_len + mtu)).map_err(alloc)?;

    let peer_sockaddr = Box::new(socket::to_sockaddr(config.peer));
    let mut send_slots: Box<[SendSlot]> = (0..count)
        .map(|bid| SendSlot {
            // SAFETY: msghdr is plain data; all-zero is valid. The pointers are set below.
            msg: unsafe { std::mem::zeroed() },
            iov: libc::iovec {
                // SAFETY: offset `vnet::LEN` stays inside the buffer (its length is larger).
                iov_base: unsafe { tun_buffers.buffer_ptr(bid).add(vnet::LEN) }.cast(),
                iov_len: 0,
            },
        })
        .collect();
    for slot in send_slots.iter_mut() {
        slot.msg.msg_name = (&peer_sockaddr.0 as *const libc::sockaddr_storage)
            .cast_mut()
            .cast();
        slot.msg.msg_namelen = peer_sockaddr.1;
        slot.msg.msg_iov = &mut slot.iov;
        slot.msg.msg_iovlen = 1;
    }
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut recv_msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    recv_msg.msg_namelen = name_len as libc::socklen_t;

    let memory = KernelMemory {
        tun_buffers,
        udp_buffers,
        send_slots,
        recv_msg,
        peer_sockaddr,
    };
    let mut worker = Worker {
        memory,
        tun: config
            .tun
            .try_clone()
            .map_err(|source| sys::Error::IoUring { queue, source })?,
        socket: config
            .socket
            .try_clone()
            .map_err(|source| sys::Error::IoUring { queue, source })?,
        peer: config.peer,
        stats: WorkerStats::new(queue),
        tun_read_at_ns: vec![0; depth].into_boxed_slice(),
        udp_read_at_ns: vec![0; depth].into_boxed_slice(),
        tun_buffers_in_kernel: 0,
        udp_buffers_in_kernel: 0,
        tun_read_armed: false,
        udp_recv_armed: false,
        tun_read_failures: 0,
        udp_recv_failures: 0,
        in_flight: 0,
        stopping: false,
        fatal: None,
        pending: Vec::with_capacity(2 * depth + 8),
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
    for bid in 0..count {
        worker.memory.tun_buffers.provide(bid);
        worker.memory.udp_buffers.provide(bid);
    }
    worker.tun_buffers_in_kernel = depth;
    worker.udp_buffers_in_kernel = depth;
    worker.rearm();
    Ok((ring, worker))
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

    fn submit(&mut self, entry: squeue::Entry, token: Token) {
        self.in_flight += 1;
        self.pending.push(entry.user_data(token.user_data()));
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
            let recv = opcode::RecvMsgMulti::new(
                Fd(self.socket.as_raw_fd()),
                &*self.memory.recv_msg,
                UDP_GROUP,
            )
            .build();
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
            Op::UdpSend => {
                let bid = token.index as u16;
                if result >= 0 {
                    self.stats.counters.udp_tx_packets += 1;
                    self.stats.counters.udp_tx_bytes += result as u64;
                    let started = self.tun_read_at_ns[usize::from(bid)];
                    self.stats
                        .record_latency(Direction::TunToUdp, now_ns.saturating_sub(started));
                } else {
                    let errno = -result;
                    let reason = if errno == libc::EAGAIN || errno == libc::ENOBUFS {
                        DropReason::UdpSendBufferFull
                    } else if is_peer_unreachable(errno) {
                        self.stats.counters.icmp_errors +=
                            socket::drain_error_queue(self.socket.as_raw_fd());
                        DropReason::PeerUnreachable
                    } else {
                        DropReason::UdpSendError
                    };
                    self.stats.counters.drop(reason);
                }
                self.return_tun_buffer(bid);
            }
            Op::TunWrite => {
                let bid = token.index as u16;
                if result >= 0 {
                    self.stats.counters.tun_tx_packets += 1;
                    self.stats.counters.tun_tx_bytes +=
                        (result as usize).saturating_sub(vnet::LEN) as u64;
                    let started = self.udp_read_at_ns[usize::from(bid)];
                    self.stats
                        .record_latency(Direction::UdpToTun, now_ns.saturating_sub(started));
                } else {
                    self.stats.counters.drop(DropReason::TunWriteError);
                }
                self.return_udp_buffer(bid);
            }
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

    fn on_tun_read(&mut self, bid: u16, len: usize, now_ns: u64) {
        // SAFETY: the completion selected `bid`, so the worker owns it until it is provided again
        // or named by a submission (the contract in `ring`).
        let buffer = unsafe { self.memory.tun_buffers.buffer_mut(bid) };
        let Some(header) = VnetHeader::new_checked(&buffer[..len.min(buffer.len())]) else {
            self.stats.counters.drop(DropReason::TunShortRead);
            return self.return_tun_buffer(bid);
        };
        if !header.is_plain() {
            self.stats.counters.drop(DropReason::TunUnexpectedOffload);
            return self.return_tun_buffer(bid);
        }
        let packet_len = len - vnet::LEN;
        self.stats.counters.tun_rx_packets += 1;
        self.stats.counters.tun_rx_bytes += packet_len as u64;
        self.tun_read_at_ns[usize::from(bid)] = now_ns;
        let slot = &mut self.memory.send_slots[usize::from(bid)];
        slot.iov.iov_len = packet_len;
        let send = opcode::SendMsg::new(Fd(self.socket.as_raw_fd()), &slot.msg)
            .flags(libc::MSG_DONTWAIT as u32)
            .build();
        self.submit(send, Token::new(Op::UdpSend, u32::from(bid)));
    }

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
        let packet = match IpPacket::new_checked(payload) {
            Ok(packet) => packet,
            Err(malformed) => {
                self.stats.counters.drop(malformed.into());
                return self.return_udp_buffer(bid);
            }
        };
        let packet_len = packet.total_len();
        let offset = payload.as_ptr() as usize - buffer.as_ptr() as usize;
        // The name area (at least 28 bytes) sits just before the payload, so there is always room
        // for the 10-byte header; it has been read already.
        let header_at = offset - vnet::LEN;
        vnet::write_plain(&mut buffer[header_at..offset]);
        self.stats.counters.udp_rx_packets += 1;
        self.stats.counters.udp_rx_bytes += packet_len as u64;
        self.udp_read_at_ns[usize::from(bid)] = now_ns;
        let write = opcode::Write::new(
            Fd(self.tun.as_raw_fd()),
            buffer[header_at..].as_mut_ptr(),
            (vnet::LEN + packet_len) as u32,
        )
        .build();
        self.submit(write, Token::new(Op::TunWrite, u32::from(bid)));
    }

    /// Cancels everything in flight and waits for the last completions. False if they did not all
    /// arrive in time (the caller must then leak `memory`).
    fn drain(
        &mut self,
        ring: &mut IoUring,
        epoch: Instant,
        completions: &mut Vec<cqueue::Entry>,
    ) -> bool {
        self.stopping = true;
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::any()).build();
        self.submit(cancel, Token::new(Op::Cancel, 0));
        let deadline = Instant::now() + DRAIN_DEADLINE;
        while self.in_flight > 0 && Instant::now() < deadline {
            self.flush(ring);
            if wait(ring, 1, IDLE_WAIT).is_err() {
                break;
            }
            let now = epoch.elapsed().as_nanos() as u64;
            completions.clear();
            completions.extend(ring.completion());
            for cqe in completions.iter() {
                self.complete(cqe, now);
            }
        }
        self.flush(ring);
        self.in_flight == 0
    }
}
