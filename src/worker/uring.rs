//! The `uring` engine: one multishot read on the TUN queue (Linux 6.7) and one multishot
//! `recvmsg` on the socket (Linux 6.0), each picking buffers from a provided-buffer ring (5.19),
//! and every request a submission. Completions are reaped in batches: the clock is read once per
//! batch, new submissions go to the kernel with the next wait, and returned buffers are
//! published with one store per batch.

use super::{
    DRAIN_DEADLINE, Driver, Injected, Received, Submission, Worker, WorkerConfig, pin, setup_faults,
};
use crate::faults::Faults;
use crate::relay::{Op, Socket, Token};
use crate::ring;
use crate::sys;
use io_uring::types::{CancelBuilder, Fd, Fixed, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Provided-buffer groups.
const TUN_GROUP: u16 = 0;
const UDP_GROUP: u16 = 1;
/// Indexes in the ring's registered-file table.
pub(super) const TUN_FILE: Fixed = Fixed(0);
pub(super) const UDP_FILE: Fixed = Fixed(1);
/// The extra sockets (`Socket::Extra(k)`) from this index on, then the socket that lets the
/// outer IP layer fragment, when there is one.
const FIRST_EXTRA_FILE: u32 = 2;
/// `struct io_uring_recvmsg_out`: four u32 fields ahead of the name in a multishot recvmsg buffer.
const RECVMSG_OUT_LEN: usize = 16;

pub(super) struct Uring {
    ring: IoUring,
    /// The template of every multishot receive: name and control lengths.
    recv_msg: Box<libc::msghdr>,
    /// Buffers in the kernel's hands, so a multishot op is re-armed only when it can get one.
    tun_in_kernel: usize,
    udp_in_kernel: usize,
    tun_read_armed: bool,
    udp_recv_armed: bool,
    /// Whether the multishot read was armed when the ring was last entered, and whether it
    /// ended since: what the TUN's ring was left as (`report_tun_drain`).
    tun_read_armed_at_wait: bool,
    tun_read_ended: bool,
    /// This engine's own operations (reads, cancels) awaiting their final completion.
    in_flight: usize,
    entries: Vec<squeue::Entry>,
    completions: Vec<cqueue::Entry>,
    /// Results of submissions a test-only fault kept from the ring.
    injected: Injected,
}

pub(super) fn setup(config: &WorkerConfig) -> Result<(Uring, Worker), sys::Error> {
    let queue = config.queue;
    let faults = setup_faults(queue);
    let depth = config.ring_depth;
    let (ring, sq_entries) = build_ring(config, &faults)?;
    let mut worker = Worker::new(config, faults, RECVMSG_OUT_LEN)?;
    register_files(&ring, &worker, queue)?;
    let alloc = |source| sys::Error::RegisterBuffers { queue, source };
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
    let layout = worker.memory.layout;
    let mut recv_msg = Box::new(super::memory::zeroed_msghdr());
    recv_msg.msg_namelen = layout.name_len as libc::socklen_t;
    recv_msg.msg_controllen = layout.control_len;
    enable_restricted(&ring, queue)?;
    let mut engine = Uring {
        ring,
        recv_msg,
        tun_in_kernel: 0,
        udp_in_kernel: 0,
        tun_read_armed: false,
        udp_recv_armed: false,
        tun_read_armed_at_wait: false,
        tun_read_ended: false,
        in_flight: 0,
        entries: Vec::with_capacity(4 * depth + 16),
        completions: Vec::with_capacity(4 * sq_entries as usize),
        injected: Injected::default(),
    };
    engine.give_back(&mut worker);
    Ok((engine, worker))
}

/// The ring of a worker whose `ring_depth` operations per direction may each take a few
/// submissions, on the worker's CPU. Returns it and its SQ size.
pub(super) fn build_ring(
    config: &WorkerConfig,
    faults: &Faults,
) -> Result<(IoUring, u32), sys::Error> {
    let queue = config.queue;
    let sq_entries = (4 * config.ring_depth + 16).next_power_of_two().min(32768) as u32;
    let best = faults
        .ring_setup()
        .unwrap_or(ring::Completion::DeferTaskrun);
    let ring = ring::build_from(sq_entries, sq_entries * 4, best)
        .map_err(|source| sys::Error::IoUring { queue, source })?;
    if let Some(cpu) = config.cpu {
        pin(queue, cpu)?;
        pin_io_workers(&ring, cpu);
    }
    Ok((ring, sq_entries))
}

/// Keeps the ring's io-wq threads, which serve operations that cannot complete inline, on the
/// worker's CPU. Best effort: old kernels lack it and nothing depends on it.
pub(super) fn pin_io_workers(ring: &IoUring, cpu: usize) {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t and CPU_SET bounds-checks `cpu` against its size.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let _ = ring.submitter().register_iowq_aff(&set);
}

/// Limits the ring to the operations tunfwd submits and enables it (`ring::restrict`), once the
/// engine's registrations are done. A kernel that refuses the restrictions gets the ring
/// unrestricted, said once; one that cannot enable it at all is an error.
pub(super) fn enable_restricted(ring: &IoUring, queue: usize) -> Result<(), sys::Error> {
    match ring::restrict(ring) {
        Ok(_) => Ok(()),
        Err(e) => {
            if queue == 0 {
                eprintln!("tunfwd: io_uring refused restrictions ({e}); rings run unrestricted");
            }
            ring.submitter()
                .register_enable_rings()
                .map_err(|source| sys::Error::IoUringFeature {
                    queue,
                    feature: "enabling a ring created disabled",
                    source,
                })
        }
    }
}

/// Registers the TUN queue, the socket, the extra sockets and the fragmenting socket, in that
/// order ([`file_of`]): registered files spare an operation the file-table lookup and reference
/// count.
pub(super) fn register_files(
    ring: &IoUring,
    worker: &Worker,
    queue: usize,
) -> Result<(), sys::Error> {
    let mut files = vec![worker.tun.as_raw_fd(), worker.socket.as_raw_fd()];
    files.extend(worker.extras.iter().map(|fd| fd.as_raw_fd()));
    files.extend(worker.fragmenting.as_ref().map(|fd| fd.as_raw_fd()));
    ring.submitter()
        .register_files(&files)
        .map_err(|source| sys::Error::IoUringFeature {
            queue,
            feature: "registered files",
            source,
        })
}

/// The registered file of `socket`, for a worker with `extras` extra sockets.
fn file_of(socket: Socket, extras: usize) -> Fixed {
    match socket {
        Socket::Worker => UDP_FILE,
        Socket::Extra(k) => Fixed(FIRST_EXTRA_FILE + u32::from(k)),
        Socket::Fragmenting => Fixed(FIRST_EXTRA_FILE + extras as u32),
    }
}

/// The ring entry that carries out `submission`, for a worker with `extras` extra sockets.
pub(super) fn entry_for(submission: Submission, extras: usize) -> squeue::Entry {
    match submission {
        Submission::Send {
            token, socket, msg, ..
        } => {
            let file = file_of(socket, extras);
            opcode::SendMsg::new(file, msg)
                .flags(libc::MSG_DONTWAIT as u32)
                .build()
                .user_data(token.user_data())
        }
        Submission::Write {
            token, iovs, count, ..
        } => opcode::Writev::new(TUN_FILE, iovs, count)
            .build()
            .user_data(token.user_data()),
    }
}

/// Turns the worker's submissions into ring entries, except those a test-only fault refuses:
/// their results wait in `injected`, delivered with the next batch of completions. This is the
/// engine's system-call boundary: what the ring would have been handed.
pub(super) fn take_submissions(
    worker: &mut Worker,
    injected: &mut Injected,
    entries: &mut Vec<squeue::Entry>,
) {
    let Worker {
        submissions,
        faults,
        extras,
        ..
    } = worker;
    for submission in submissions.queued.drain(..) {
        if !injected.intercept(faults, &submission) {
            entries.push(entry_for(submission, extras.len()));
        }
    }
}

/// Hands `entries` to the ring, letting the kernel take what it has whenever the SQ is full, and
/// empties it. An error is the worker's end.
pub(super) fn push_all(ring: &mut IoUring, entries: &mut Vec<squeue::Entry>) -> io::Result<()> {
    let mut start = 0;
    while start < entries.len() {
        let mut sq = ring.submission();
        let room = sq.capacity() - sq.len();
        let end = (start + room).min(entries.len());
        for entry in &entries[start..end] {
            // SAFETY: every entry points only into the worker's memory or fds, which stay alive
            // and owned per the contract in `ring`.
            unsafe { sq.push(entry).expect("room was checked") };
        }
        drop(sq);
        start = end;
        if start < entries.len() {
            // The SQ is full: let the kernel take what it has, then continue.
            if let Err(e) = ring.submit() {
                entries.clear();
                return Err(e);
            }
        }
    }
    entries.clear();
    Ok(())
}

/// Waits up to `timeout` for `want` completions, handing queued submissions to the kernel.
fn wait(ring: &IoUring, want: usize, timeout: Duration) -> io::Result<()> {
    let ts = Timespec::new()
        .sec(timeout.as_secs())
        .nsec(timeout.subsec_nanos());
    let args = SubmitArgs::new().timespec(&ts);
    match ring.submitter().submit_with_args(want, &args) {
        Ok(_) => Ok(()),
        Err(e) if is_interrupted_wait(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `IORING_ENTER_GETEVENTS`.
const ENTER_GETEVENTS: u32 = 1;

/// Hands queued submissions to the kernel and collects what has completed, without sleeping:
/// with `DEFER_TASKRUN` completions are posted only when the thread enters the kernel asking for
/// events, which a plain submit does not (`io_cqring_wait` runs the local work first).
pub(super) fn get_events(ring: &mut IoUring) -> io::Result<()> {
    let pending = ring.submission().len() as u32;
    // SAFETY: no argument is passed; every queued submission points at live memory (the
    // contract in `ring`).
    let entered = unsafe {
        ring.submitter()
            .enter::<libc::sigset_t>(pending, 0, ENTER_GETEVENTS, None)
    };
    match entered {
        Ok(_) => Ok(()),
        Err(e) if is_interrupted_wait(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A wait that ended without an error of the ring's: timed out, interrupted, or the CQ full.
pub(super) fn is_interrupted_wait(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
    )
}

/// What the two io_uring engines differ in: how each queues its own submissions, waits and
/// handles a completion, and what it cancels to stop. The rest of a turn and of a drain they
/// share, in the `Driver` impl below.
pub(super) trait RingEngine: Sized {
    fn ring(&mut self) -> &mut IoUring;
    /// The vector completions are gathered in, kept between batches.
    fn completions(&mut self) -> &mut Vec<cqueue::Entry>;
    /// Results a test-only fault made up, to deliver with the next batch.
    fn injected(&mut self) -> &mut Injected;
    /// The engine's own operations (reads, receives, cancels) awaiting their final completion.
    fn own_in_flight(&self) -> usize;
    /// Queues the worker's requests and the engine's own submissions into the ring.
    fn flush(&mut self, worker: &mut Worker);
    /// Waits for `want` completions, at most `limit`, handing queued submissions over.
    fn wait(&mut self, want: usize, limit: Duration) -> io::Result<()>;
    fn complete(&mut self, worker: &mut Worker, cqe: &cqueue::Entry, now_ns: u64);
    /// After a batch's completions: tells the relay what the TUN's ring was left as, if the
    /// engine drains it in the kernel (`Relay::on_tun_drained`).
    fn report_tun_drain(&mut self, _worker: &mut Worker, _now_ns: u64) {}
    /// Queues the cancellation of every read and receive in flight.
    fn cancel_reads(&mut self);
    /// The ring, the rest of the engine dropped.
    fn into_ring(self) -> IoUring;
}

impl<E: RingEngine> Driver for E {
    fn turn(&mut self, worker: &mut Worker, spinning: bool) -> io::Result<usize> {
        self.flush(worker);
        // Injected completions are ready now: don't sleep waiting for a real one.
        let want = usize::from(self.injected().is_empty());
        if spinning {
            get_events(self.ring())?;
        } else {
            self.wait(want, worker.wait_limit())?;
        }
        Ok(reap(self, worker))
    }

    /// Cancels every read and receive and waits for the last completions. False if they did not
    /// all arrive in time (the caller must then leak the memory).
    fn drain(&mut self, worker: &mut Worker) -> bool {
        worker.stop();
        self.cancel_reads();
        begin_drain(worker, self.injected());
        let deadline = Instant::now() + DRAIN_DEADLINE;
        while self.own_in_flight() + worker.in_flight() > 0 && Instant::now() < deadline {
            self.flush(worker);
            let want = usize::from(self.injected().is_empty());
            if self.wait(want, super::IDLE_WAIT).is_err() {
                break;
            }
            reap(self, worker);
        }
        self.flush(worker);
        self.own_in_flight() + worker.in_flight() == 0
    }

    fn in_flight(&self) -> usize {
        self.own_in_flight()
    }

    fn leak(self) {
        std::mem::forget(self.into_ring());
    }
}

/// Handles every available completion, then closes the batch. Returns how many were work: the
/// idle timer's expiry is not, and must not start a busy-poll spin.
fn reap<E: RingEngine>(engine: &mut E, worker: &mut Worker) -> usize {
    let now = worker.now_ns();
    let mut completions = std::mem::take(engine.completions());
    completions.clear();
    completions.extend(engine.ring().completion());
    for cqe in &completions {
        engine.complete(worker, cqe, now);
    }
    let injected = !engine.injected().is_empty();
    worker.deliver(engine.injected(), now);
    let handled = completions
        .iter()
        .filter(|c| Token::from_user_data(c.user_data()).is_some_and(|t| t.op != Op::Timer))
        .count();
    *engine.completions() = completions;
    engine.report_tun_drain(worker, now);
    worker.end_batch(now);
    handled + usize::from(injected)
}

impl RingEngine for Uring {
    fn ring(&mut self) -> &mut IoUring {
        &mut self.ring
    }

    fn completions(&mut self) -> &mut Vec<cqueue::Entry> {
        &mut self.completions
    }

    fn injected(&mut self) -> &mut Injected {
        &mut self.injected
    }

    fn own_in_flight(&self) -> usize {
        self.in_flight
    }

    /// Also gives returned buffers back and re-arms the multishot operations (not yet to the
    /// kernel: the next wait does that).
    fn flush(&mut self, worker: &mut Worker) {
        take_submissions(worker, &mut self.injected, &mut self.entries);
        self.give_back(worker);
        self.tun_read_armed_at_wait = self.tun_read_armed;
        if let Err(e) = push_all(&mut self.ring, &mut self.entries) {
            worker.fatal.get_or_insert(e);
        }
    }

    fn wait(&mut self, want: usize, limit: Duration) -> io::Result<()> {
        wait(&self.ring, want, limit)
    }

    /// The multishot read runs in the kernel's task work, which `io_uring_enter` runs before it
    /// returns (with `DEFER_TASKRUN`, `io_cqring_wait` runs the ring's local work first): it
    /// reads until a read finds the ring empty and then waits on the file's poll queue again,
    /// posting nothing for that. So a read that was armed when the ring was entered and did not
    /// end (for want of a buffer, `ENOBUFS`) left the ring empty; one that ended, or was not
    /// armed, may have left packets behind.
    fn report_tun_drain(&mut self, worker: &mut Worker, now_ns: u64) {
        let emptied = self.tun_read_armed_at_wait && !std::mem::take(&mut self.tun_read_ended);
        worker.relay.on_tun_drained(emptied, now_ns);
    }

    fn complete(&mut self, worker: &mut Worker, cqe: &cqueue::Entry, now_ns: u64) {
        let Some(token) = Token::from_user_data(cqe.user_data()) else {
            return;
        };
        let (result, flags) = (cqe.result(), cqe.flags());
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        if more && worker.faults.end_multishot() {
            // Injected: make the kernel end this multishot operation, as it may at any time.
            self.in_flight += 1;
            let cancel = opcode::AsyncCancel::new(cqe.user_data()).build();
            self.entries
                .push(cancel.user_data(Token::new(Op::Cancel, 0).user_data()));
        }
        match token.op {
            Op::TunRead => {
                if !more {
                    self.in_flight -= 1;
                    self.tun_read_armed = false;
                    self.tun_read_ended = true;
                    worker.relay.on_multishot_end();
                }
                match bid {
                    Some(bid) if result >= 0 => {
                        self.tun_in_kernel -= 1;
                        worker.on_tun_read(bid, result as usize, now_ns);
                    }
                    _ => worker.on_read_error(true, -result),
                }
            }
            Op::UdpRecv => {
                if !more {
                    self.in_flight -= 1;
                    self.udp_recv_armed = false;
                    worker.relay.on_multishot_end();
                }
                match bid {
                    Some(bid) if result >= 0 => {
                        self.udp_in_kernel -= 1;
                        self.on_udp_recv(worker, bid, result as usize, now_ns);
                    }
                    _ => worker.on_read_error(false, -result),
                }
            }
            Op::UdpSend | Op::TunWrite | Op::ControlSend => worker.complete(token, result, now_ns),
            Op::Cancel | Op::Timer => self.in_flight -= 1,
        }
    }

    /// One cancellation for everything in flight.
    fn cancel_reads(&mut self) {
        self.in_flight += 1;
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::any()).build();
        self.entries
            .push(cancel.user_data(Token::new(Op::Cancel, 0).user_data()));
    }

    fn into_ring(self) -> IoUring {
        self.ring
    }
}

impl Uring {
    /// Gives returned buffers back to the kernel (one publish per ring), then re-arms the
    /// multishot operations that ended, if they have buffers to use.
    fn give_back(&mut self, worker: &mut Worker) {
        let memory = &mut worker.memory;
        for bid in worker.relay.take_free_tun() {
            memory.tun_buffers.provide(bid);
            self.tun_in_kernel += 1;
        }
        for bid in worker.relay.take_free_udp() {
            memory.udp_buffers.provide(bid);
            self.udp_in_kernel += 1;
        }
        memory.tun_buffers.publish();
        memory.udp_buffers.publish();
        if worker.stopping() {
            return;
        }
        if !self.tun_read_armed && self.tun_in_kernel > 0 {
            self.tun_read_armed = true;
            self.in_flight += 1;
            // Not the registered file: on Linux 6.18 a multishot read fails with EBADFD when
            // given one.
            let read = opcode::ReadMulti::new(Fd(worker.tun.as_raw_fd()), 0, TUN_GROUP).build();
            self.entries
                .push(read.user_data(Token::new(Op::TunRead, 0).user_data()));
        }
        if !self.udp_recv_armed && self.udp_in_kernel > 0 {
            self.udp_recv_armed = true;
            self.in_flight += 1;
            let recv = opcode::RecvMsgMulti::new(UDP_FILE, &*self.recv_msg, UDP_GROUP).build();
            self.entries
                .push(recv.user_data(Token::new(Op::UdpRecv, 0).user_data()));
        }
    }

    /// Finds the parts of a multishot receive: `[io_uring_recvmsg_out][name][control][payload]`.
    fn on_udp_recv(&mut self, worker: &mut Worker, bid: u16, len: usize, now_ns: u64) {
        let base = worker.memory.udp_buffers.buffer_ptr(bid) as usize;
        // SAFETY: the completion handed `bid` to the worker; this shared view ends before
        // `on_udp_recv` takes the buffer.
        let buffer = unsafe { worker.memory.udp_buffers.buffer_mut(bid) };
        let Ok(message) = RecvMsgOut::parse(&buffer[..len.min(buffer.len())], &self.recv_msg)
        else {
            return worker.relay.on_unreadable_receive(bid);
        };
        let range = |part: &[u8]| {
            let at = part.as_ptr() as usize - base;
            at..at + part.len()
        };
        let received = Received {
            name: range(message.name_data()),
            control: range(message.control_data()),
            payload: range(message.payload_data()),
            payload_truncated: message.is_payload_truncated(),
            control_truncated: message.is_control_data_truncated(),
        };
        worker.on_udp_recv(bid, received, now_ns);
    }
}

/// What every engine's drain does first: held injected results are let go, and the
/// `drain-stuck` fault makes one operation that never reports back.
pub(super) fn begin_drain(worker: &mut Worker, injected: &mut Injected) {
    injected.release();
    if worker.faults.drain_stuck() {
        worker.submissions.stuck += 1;
    }
}
