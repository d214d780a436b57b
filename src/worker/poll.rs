//! The `poll` engine: no io_uring at all, for hosts that forbid it (`kernel.io_uring_disabled`,
//! the default seccomp profiles of Docker and Kubernetes) or kernels without it. One `poll` on
//! the TUN queue and the socket; then up to `READ_BUDGET` reads of the TUN (each a packet or a
//! super-packet), one `recvmmsg` into free buffers, and the requests the relay core made carried
//! out at once: runs of sends as one `sendmmsg`, TUN writes as `writev`. UDP GSO and GRO, TSO
//! and USO work as in the io_uring engines: the same relay core decides, over the same slots.
//!
//! Every request completes within the call that carries it out, so buffers come back at once and
//! nothing is in flight between loop turns.

use super::uring::begin_drain;
use super::{
    DRAIN_DEADLINE, Driver, Injected, Submission, Worker, WorkerConfig, pin, received_from_msghdr,
    set_nonblocking, setup_faults,
};
use crate::relay::{Socket, Token};
use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

/// TUN reads per loop turn, at most: enough to fill GSO batches, few enough that the socket is
/// served too.
pub(super) const READ_BUDGET: usize = 64;
/// Messages per `recvmmsg` and `sendmmsg`.
const MMSG_BATCH: usize = 64;
/// Rounds of carrying out requests and closing the batch per loop turn: a round's results can
/// make requests (a send without GSO, a resend, a segment-by-segment write), and those can
/// again, a bounded number of times (`RESENDS_PER_SLOT`, GSO off for good after one fallback).
const MAX_ROUNDS: usize = 16;

pub(super) struct Poll {
    tun: RawFd,
    socket: RawFd,
    fragmenting: Option<RawFd>,
    extras: Vec<RawFd>,
    mmsgs: Vec<libc::mmsghdr>,
    tokens: Vec<Token>,
    received: Vec<u16>,
    results: Vec<(Token, i32)>,
    requests: Vec<Submission>,
    /// Results of submissions a test-only fault kept from their system call.
    injected: Injected,
}

pub(super) fn setup(config: &WorkerConfig) -> Result<(Poll, Worker), sys::Error> {
    let queue = config.queue;
    let faults = setup_faults(queue);
    if let Some(cpu) = config.cpu {
        pin(queue, cpu)?;
    }
    let worker = Worker::new(config, faults, 0)?;
    set_nonblocking(&worker.tun).map_err(|source| sys::Error::Socket {
        address: config.peer,
        source,
    })?;
    let engine = Poll {
        tun: worker.tun.as_raw_fd(),
        socket: worker.socket.as_raw_fd(),
        fragmenting: worker.fragmenting.as_ref().map(|fd| fd.as_raw_fd()),
        extras: worker.extras.iter().map(|fd| fd.as_raw_fd()).collect(),
        // SAFETY: mmsghdr is plain data; all-zero is valid.
        mmsgs: vec![unsafe { std::mem::zeroed() }; MMSG_BATCH],
        tokens: Vec::with_capacity(MMSG_BATCH),
        received: Vec::with_capacity(MMSG_BATCH),
        results: Vec::with_capacity(4 * config.ring_depth + 16),
        requests: Vec::with_capacity(4 * config.ring_depth + 16),
        injected: Injected::default(),
    };
    Ok((engine, worker))
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

impl Driver for Poll {
    fn turn(&mut self, worker: &mut Worker, spinning: bool) -> io::Result<usize> {
        self.carry_out(worker);
        worker.note_wait();
        let (tun_ready, udp_ready) = self.wait(worker, spinning)?;
        let now = worker.now_ns();
        let mut handled = 0;
        if tun_ready {
            handled += self.read_tun(worker, now);
        }
        if udp_ready {
            handled += self.receive(worker, now);
        }
        worker.end_batch(now);
        Ok(handled)
    }

    fn drain(&mut self, worker: &mut Worker) -> bool {
        Poll::drain(self, worker)
    }

    fn in_flight(&self) -> usize {
        0
    }

    fn leak(self) {}
}

impl Poll {
    /// Waits up to `IDLE_WAIT` (not at all if injected results wait, or while `spinning`) until
    /// the TUN or the socket has data for a free buffer. Returns which of them has.
    fn wait(&self, worker: &mut Worker, spinning: bool) -> io::Result<(bool, bool)> {
        let mut fds = [
            libc::pollfd {
                fd: if !worker.relay.has_free_tun() {
                    -1
                } else {
                    self.tun
                },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if !worker.relay.has_free_udp() {
                    -1
                } else {
                    self.socket
                },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Requests left over (`MAX_ROUNDS` ran out) are carried out at once, not after a sleep.
        let timeout =
            if self.injected.is_empty() && worker.submissions.queued.is_empty() && !spinning {
                worker.wait_limit().as_millis() as i32
            } else {
                0
            };
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if n < 0 {
            let e = errno();
            return if e == libc::EINTR {
                Ok((false, false))
            } else {
                Err(io::Error::from_raw_os_error(e))
            };
        }
        // An error or hang-up is read too, so that the read reports it. POLLERR on the socket
        // can also mean only that its error queue holds something (`IP_RECVERR`), which no
        // receive takes: drain it at the end of this batch, or every poll would return at once.
        if fds[1].revents & libc::POLLERR != 0 {
            worker.relay.note_error_queue();
        }
        let ready = |p: &libc::pollfd| p.revents != 0;
        Ok((ready(&fds[0]), ready(&fds[1])))
    }

    /// Reads the TUN queue until it is empty, the budget is spent or no buffer is free. Returns
    /// how many reads brought a packet.
    fn read_tun(&mut self, worker: &mut Worker, now_ns: u64) -> usize {
        read_tun(worker, READ_BUDGET, 0, now_ns)
    }

    /// One `recvmmsg` into as many free buffers as it may fill. Returns how many it filled.
    fn receive(&mut self, worker: &mut Worker, now_ns: u64) -> usize {
        let layout = worker.memory.layout;
        self.received.clear();
        while self.received.len() < MMSG_BATCH {
            let Some(bid) = worker.relay.pop_free_udp() else {
                break;
            };
            let slot = &mut worker.memory.udp_slots[usize::from(bid)];
            slot.arm_receive(layout);
            self.mmsgs[self.received.len()] = libc::mmsghdr {
                msg_hdr: slot.recv_msg,
                msg_len: 0,
            };
            self.received.push(bid);
        }
        if self.received.is_empty() {
            return 0;
        }
        // SAFETY: each mmsghdr names the free buffer `received[k]` (its name, control and
        // payload areas, per `layout`), which nothing else uses during the call.
        let n = unsafe {
            libc::recvmmsg(
                self.socket,
                self.mmsgs.as_mut_ptr(),
                self.received.len() as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let got = if n < 0 {
            let e = errno();
            if e != libc::EAGAIN {
                worker.on_read_error(false, e);
            }
            0
        } else {
            n as usize
        };
        for k in 0..self.received.len() {
            let bid = self.received[k];
            if k < got {
                let m = &self.mmsgs[k];
                let received = received_from_msghdr(&m.msg_hdr, layout, m.msg_len as usize);
                worker.on_udp_recv(bid, received, now_ns);
            } else {
                worker.relay.give_back_udp(bid);
            }
        }
        got
    }

    /// Carries out the worker's requests, reports their results and closes the batch, until no
    /// request is left (or `MAX_ROUNDS`).
    fn carry_out(&mut self, worker: &mut Worker) {
        for _ in 0..MAX_ROUNDS {
            if worker.submissions.queued.is_empty() && self.injected.is_empty() {
                return;
            }
            // At the system-call boundary: what a test-only fault refuses is not carried out,
            // and its result comes back with the others'.
            self.requests.clear();
            for submission in worker.submissions.queued.drain(..) {
                if !self.injected.intercept(&mut worker.faults, &submission) {
                    self.requests.push(submission);
                }
            }
            let mut i = 0;
            while i < self.requests.len() {
                i += match self.requests[i] {
                    Submission::Send { socket, .. } => self.send_run(i, socket),
                    Submission::Write {
                        token, iovs, count, ..
                    } => {
                        // SAFETY: the iovecs name the worker's memory, which no one writes until
                        // this result is reported (the contract in `ring`).
                        let n = unsafe { libc::writev(self.tun, iovs, count as i32) };
                        let result = if n < 0 { -errno() } else { n as i32 };
                        self.results.push((token, result));
                        1
                    }
                };
            }
            self.requests.clear();
            let now = worker.now_ns();
            for (token, result) in self.results.drain(..) {
                worker.complete(token, result, now);
            }
            worker.deliver(&mut self.injected, now);
            worker.end_batch(now);
        }
    }

    /// Sends the run of consecutive sends on `socket` that starts at request `start` with one
    /// `sendmmsg`. Returns how many requests it settled: those sent, or the first alone if it
    /// failed (a later one's error would be lost: `sendmmsg` reports only the count sent).
    fn send_run(&mut self, start: usize, socket: Socket) -> usize {
        self.tokens.clear();
        for request in &self.requests[start..] {
            match *request {
                Submission::Send {
                    token,
                    socket: s,
                    msg,
                    ..
                } if s == socket && self.tokens.len() < MMSG_BATCH => {
                    // SAFETY: `msg` points at a msghdr in the worker's slots, complete and
                    // unchanged until its result is reported.
                    let msg_hdr = unsafe { *msg };
                    self.mmsgs[self.tokens.len()] = libc::mmsghdr {
                        msg_hdr,
                        msg_len: 0,
                    };
                    self.tokens.push(token);
                }
                _ => break,
            }
        }
        let fd = match socket {
            Socket::Worker => self.socket,
            Socket::Fragmenting => self.fragmenting.unwrap_or(-1),
            Socket::Extra(k) => self.extras.get(usize::from(k)).copied().unwrap_or(-1),
        };
        // SAFETY: the mmsghdrs name the worker's memory, unchanged during the call.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.mmsgs.as_mut_ptr(),
                self.tokens.len() as u32,
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            let e = if n == 0 { libc::EAGAIN } else { errno() };
            self.results.push((self.tokens[0], -e));
            return 1;
        }
        let n = n as usize;
        for k in 0..n {
            self.results
                .push((self.tokens[k], self.mmsgs[k].msg_len as i32));
        }
        n
    }

    /// Carries out what is left and settles what was refused. False if something did not
    /// report back in time (the caller must then leak the memory).
    fn drain(&mut self, worker: &mut Worker) -> bool {
        worker.stop();
        begin_drain(worker, &mut self.injected);
        let deadline = Instant::now() + DRAIN_DEADLINE;
        while worker.in_flight() > 0 && Instant::now() < deadline {
            self.carry_out(worker);
            let now = worker.now_ns();
            worker.end_batch(now);
            if worker.in_flight() > 0 {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        worker.in_flight() == 0
    }
}

/// Why a drain of the TUN's ring stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stopped {
    /// A read found the ring empty (`EAGAIN`).
    Empty,
    /// No buffer was free for the next read.
    NoBuffer,
    /// The read budget was spent.
    Budget,
}

/// What a drain that stopped as `stopped` tells the relay (`Relay::on_tun_drained`), if
/// anything, after `before` packets it read otherwise (the `uring-compat` engine's armed read)
/// and `read` plain reads. A drain that read nothing and
/// stopped for want of a buffer says nothing about the ring (the last drain's word stands); one
/// that read a packet and then found no buffer may have left packets behind, even if that
/// packet came from the armed read and took the last buffer.
pub(super) fn drain_word(stopped: Stopped, before: usize, read: usize) -> Option<bool> {
    match stopped {
        Stopped::Empty => Some(true),
        Stopped::NoBuffer | Stopped::Budget => (before + read > 0).then_some(false),
    }
}

/// Reads the worker's (non-blocking) TUN queue until it is empty, `budget` reads brought a
/// packet or no buffer is free, handing each packet to the worker, and then tells the relay
/// whether the ring was left empty (`Relay::on_tun_drained`). `before`: packets this drain
/// read already (1 after the `uring-compat` engine's armed read). Returns how many of these
/// reads brought a packet.
pub(super) fn read_tun(worker: &mut Worker, budget: usize, before: usize, now_ns: u64) -> usize {
    let tun = worker.tun.as_raw_fd();
    let len = worker.memory.tun_buffers.buf_len();
    let stop = |worker: &mut Worker, stopped, read: usize| {
        if let Some(emptied) = drain_word(stopped, before, read) {
            worker.relay.on_tun_drained(emptied, now_ns);
        }
        read
    };
    for read in 0..budget {
        let Some(bid) = worker.relay.pop_free_tun() else {
            return stop(worker, Stopped::NoBuffer, read);
        };
        let buffer = worker.memory.tun_buffers.buffer_ptr(bid);
        // SAFETY: `bid` was free: no request names it, and `buffer` holds `len` bytes.
        let n = unsafe { libc::read(tun, buffer.cast(), len) };
        if n > 0 {
            worker.on_tun_read(bid, n as usize, now_ns);
            continue;
        }
        worker.relay.give_back_tun(bid);
        // A TUN read never returns 0 bytes while the device is there.
        let e = if n == 0 { libc::EIO } else { errno() };
        if e == libc::EAGAIN {
            return stop(worker, Stopped::Empty, read);
        }
        worker.on_read_error(true, e);
        return read;
    }
    stop(worker, Stopped::Budget, budget)
}

#[cfg(test)]
mod tests {
    use super::{Stopped, drain_word};

    /// The `uring-compat` engine's armed read took the last free buffer, and the plain reads
    /// after it found none: packets may be left behind, and the drain must say so (it said
    /// nothing, so "emptied" from an earlier drain stood over a real standing queue).
    #[test]
    fn an_armed_read_that_took_the_last_buffer_leaves_packets_behind() {
        assert_eq!(drain_word(Stopped::NoBuffer, 1, 0), Some(false));
        assert_eq!(drain_word(Stopped::NoBuffer, 0, 3), Some(false));
        assert_eq!(
            drain_word(Stopped::NoBuffer, 0, 0),
            None,
            "nothing read: no word"
        );
        assert_eq!(drain_word(Stopped::Budget, 1, 63), Some(false));
        assert_eq!(drain_word(Stopped::Empty, 1, 0), Some(true));
        assert_eq!(drain_word(Stopped::Empty, 0, 5), Some(true));
    }
}
