//! The `uring-compat` engine: io_uring without multishot operations and without
//! provided-buffer rings, for kernels older than 6.7. A free buffer is named by a single-shot
//! READ on the TUN queue or RECVMSG on the socket; sends and writes are SENDMSG and WRITEV as in
//! `uring`. Waits are bounded by a TIMEOUT submission, not by the wait's own
//! argument (`IORING_ENTER_EXT_ARG` is Linux 5.11). Its opcodes are in Linux 5.6 (READ and WRITE
//! 5.6, SENDMSG and RECVMSG 5.3, TIMEOUT 5.4, ASYNC_CANCEL 5.5, opcode probing 5.6), but its floor
//! is 5.15 (`engine::COMPAT_FLOOR`): see below.
//!
//! One read is armed on the TUN queue and one receive on the socket at a time (`MAX_ARMED`), so
//! completions come in the order the data came; when the read completes, what else the queue
//! holds is read at once with plain non-blocking reads (as the `poll` engine reads), so that plain
//! packets still share GSO sends. The TUN fd is `O_NONBLOCK`: a TUN file does not
//! say it can be read without blocking (no `FMODE_NOWAIT`), and io_uring would hand a read of a
//! blocking TUN fd to an io-wq thread. From Linux 5.15 (commit 5d329e1286b0, "io_uring: allow
//! retry for O_NONBLOCK if async is supported") a read of a pollable `O_NONBLOCK` file that finds
//! nothing waits on the file's poll queue and is retried on the worker's own thread; before 5.15
//! it fails with EAGAIN at once, and this engine would spin: hence its floor.

use super::poll::{READ_BUDGET, read_tun};
use super::uring::UDP_FILE;
use super::uring::{
    RingEngine, build_ring, enable_restricted, is_interrupted_wait, push_all, register_files,
    take_submissions,
};
use super::{
    IDLE_WAIT, Injected, Worker, WorkerConfig, received_from_msghdr, set_nonblocking, setup_faults,
};
use crate::relay::{Op, Token};
use crate::sys;
use io_uring::types::{Fd, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};
use std::io;
use std::os::fd::AsRawFd;

/// Reads (and receives) armed on one file at once. One, so that no completion can overtake
/// another: with four or more armed on one TUN queue, `iou-wrk` threads appeared under load (on
/// 6.18), so some reads were handed to io-wq, where two can take packets in one order and post
/// them in the other; with one or two, none. One costs nothing measurable here
/// (`bench-results/2026-11-30T141500Z-compat-io-wq.md`).
const MAX_ARMED: usize = 1;

pub(super) struct Compat {
    ring: IoUring,
    /// Which buffers a read or receive names now.
    tun_reading: Box<[bool]>,
    udp_reading: Box<[bool]>,
    /// Reads and receives armed now (at most `MAX_ARMED` each).
    tun_armed: usize,
    udp_armed: usize,
    /// The wait bound. The kernel copies it when it takes the TIMEOUT (`io_timeout_prep`), so
    /// an armed timer pins no memory and is not counted in `in_flight`: it may be left armed at
    /// shutdown, and goes with the ring.
    timeout: Box<Timespec>,
    timer_armed: bool,
    /// This engine's own operations (reads, receives, cancels) not yet completed.
    in_flight: usize,
    entries: Vec<squeue::Entry>,
    completions: Vec<cqueue::Entry>,
    /// Results of submissions a test-only fault kept from the ring.
    injected: Injected,
}

pub(super) fn setup(config: &WorkerConfig) -> Result<(Compat, Worker), sys::Error> {
    let queue = config.queue;
    let faults = setup_faults(queue);
    let depth = config.ring_depth;
    let (ring, sq_entries) = build_ring(config, &faults)?;
    let worker = Worker::new(config, faults, 0)?;
    set_nonblocking(&worker.tun).map_err(|source| sys::Error::IoUring { queue, source })?;
    register_files(&ring, &worker, queue)?;
    enable_restricted(&ring, queue)?;
    let engine = Compat {
        ring,
        tun_reading: vec![false; usize::from(worker.memory.tun_buffers.count())].into_boxed_slice(),
        udp_reading: vec![false; usize::from(worker.memory.udp_buffers.count())].into_boxed_slice(),
        tun_armed: 0,
        udp_armed: 0,
        timeout: Box::new(
            Timespec::new()
                .sec(IDLE_WAIT.as_secs())
                .nsec(IDLE_WAIT.subsec_nanos()),
        ),
        timer_armed: false,
        in_flight: 0,
        entries: Vec::with_capacity(4 * depth + 16),
        completions: Vec::with_capacity(4 * sq_entries as usize),
        injected: Injected::default(),
    };
    Ok((engine, worker))
}

impl Compat {
    fn arm_reads(&mut self, worker: &mut Worker) {
        let tun = Fd(worker.tun.as_raw_fd());
        let tun_len = worker.memory.tun_buffers.buf_len() as u32;
        while self.tun_armed < MAX_ARMED
            && let Some(bid) = worker.relay.pop_free_tun()
        {
            self.tun_armed += 1;
            let buffer = worker.memory.tun_buffers.buffer_ptr(bid);
            self.tun_reading[usize::from(bid)] = true;
            self.in_flight += 1;
            let read = opcode::Read::new(tun, buffer, tun_len).build();
            self.entries
                .push(read.user_data(Token::new(Op::TunRead, u32::from(bid)).user_data()));
        }
        let layout = worker.memory.layout;
        while self.udp_armed < MAX_ARMED
            && let Some(bid) = worker.relay.pop_free_udp()
        {
            self.udp_armed += 1;
            let slot = &mut worker.memory.udp_slots[usize::from(bid)];
            slot.arm_receive(layout);
            self.udp_reading[usize::from(bid)] = true;
            self.in_flight += 1;
            let recv = opcode::RecvMsg::new(UDP_FILE, &mut slot.recv_msg).build();
            self.entries
                .push(recv.user_data(Token::new(Op::UdpRecv, u32::from(bid)).user_data()));
        }
    }
}

impl RingEngine for Compat {
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

    /// Names every free buffer with a read or a receive, then queues the worker's requests.
    fn flush(&mut self, worker: &mut Worker) {
        if !worker.stopping() {
            self.arm_reads(worker);
        }
        take_submissions(worker, &mut self.injected, &mut self.entries);
        if let Err(e) = push_all(&mut self.ring, &mut self.entries) {
            worker.fatal.get_or_insert(e);
        }
    }

    /// Arms reads and receives on free buffers, up to `MAX_ARMED` on each file.
    /// Waits for `want` completions, at most `IDLE_WAIT`: arms the TIMEOUT if it is not armed.
    fn wait(&mut self, want: usize, _limit: std::time::Duration) -> io::Result<()> {
        if want > 0 && !self.timer_armed {
            self.timer_armed = true;
            let timer = opcode::Timeout::new(&*self.timeout).build();
            self.entries
                .push(timer.user_data(Token::new(Op::Timer, 0).user_data()));
            push_all(&mut self.ring, &mut self.entries)?;
        }
        match self.ring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            Err(e) if is_interrupted_wait(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn complete(&mut self, worker: &mut Worker, cqe: &cqueue::Entry, now_ns: u64) {
        let Some(token) = Token::from_user_data(cqe.user_data()) else {
            return;
        };
        let result = cqe.result();
        match token.op {
            Op::TunRead => {
                self.in_flight -= 1;
                let bid = token.index as u16;
                self.tun_reading[usize::from(bid)] = false;
                self.tun_armed -= 1;
                if result > 0 {
                    worker.on_tun_read(bid, result as usize, now_ns);
                    // What else the queue holds, read at once with plain reads, so that plain
                    // packets can share GSO sends and the one armed read is not a bottleneck. No
                    // read is armed now, so nothing can overtake these. The armed read's packet
                    // counts as this drain's first: if it took the last free buffer, packets
                    // may be left behind, and the drain says so.
                    read_tun(worker, READ_BUDGET - 1, 1, now_ns);
                } else {
                    worker.relay.give_back_tun(bid);
                    // A TUN read never returns 0 bytes while the device is there.
                    let errno = if result == 0 { libc::EIO } else { -result };
                    worker.on_read_error(true, errno);
                }
            }
            Op::UdpRecv => {
                self.in_flight -= 1;
                let bid = token.index as u16;
                self.udp_reading[usize::from(bid)] = false;
                self.udp_armed -= 1;
                if result >= 0 {
                    let layout = worker.memory.layout;
                    let msg = &worker.memory.udp_slots[usize::from(bid)].recv_msg;
                    let received = received_from_msghdr(msg, layout, result as usize);
                    worker.on_udp_recv(bid, received, now_ns);
                } else {
                    worker.relay.give_back_udp(bid);
                    worker.on_read_error(false, -result);
                }
            }
            Op::UdpSend | Op::TunWrite | Op::ControlSend => worker.complete(token, result, now_ns),
            Op::Timer => self.timer_armed = false,
            Op::Cancel => self.in_flight -= 1,
        }
    }

    /// One cancellation for each read and receive armed.
    fn cancel_reads(&mut self) {
        let reading = |op, flags: &[bool]| {
            let armed = flags.iter().enumerate().filter(|(_, r)| **r);
            armed
                .map(move |(bid, _)| Token::new(op, bid as u32).user_data())
                .collect::<Vec<_>>()
        };
        let mut armed = reading(Op::TunRead, &self.tun_reading);
        armed.extend(reading(Op::UdpRecv, &self.udp_reading));
        for user_data in armed {
            self.in_flight += 1;
            let entry = opcode::AsyncCancel::new(user_data).build();
            self.entries
                .push(entry.user_data(Token::new(Op::Cancel, 0).user_data()));
        }
    }

    fn into_ring(self) -> IoUring {
        self.ring
    }
}
