//! io_uring ownership: ring setup, provided-buffer rings, and the completion token.
//!
//! # The buffer-lifetime contract (the whole soundness story)
//! Every buffer tunfwd does I/O on lives in a [`BufRing`], allocated once per worker and never
//! moved, or in the per-buffer slots beside it (msghdrs, iovecs, rewritten headers, virtio
//! headers), which are allocated with it and never resized. A buffer is owned by exactly one side
//! at a time:
//!
//! * **Kernel-owned** from the moment [`BufRing::provide`] puts its id in the ring until a
//!   completion names that id (`cqueue::buffer_select`). The kernel may write to it at any time;
//!   we must not read or write it.
//! * **Worker-owned** from that completion until the worker provides it again. While it is
//!   worker-owned, any number of in-flight submissions may name it, each reading its own bytes:
//!   the GSO sends of one split super-packet (each over its segments' payloads, plus headers in
//!   the slot), the sends of a batch that gathers several buffers, or the TUN writes of one
//!   receive buffer (one per merged run, over disjoint segments, and the per-segment rewrites of a
//!   run the kernel refused). The slot counts them (`pending`). While a submission is in flight
//!   the worker writes none of the bytes it names; it may still write other bytes of the same
//!   buffer, which is why a refused run's saved headers are restored over exactly the bytes
//!   that were rewritten and no more. The buffer (with a batch's followers) is provided again
//!   only when the last of its submissions has completed.
//!
//! The memory itself must outlive every operation that can touch it: at shutdown a worker
//! cancels all operations and waits for their last completions before freeing anything. If that
//! drain does not finish in time, `worker::run` leaks the memory and the ring
//! (`std::mem::forget`) instead of freeing them, and says so.
//! Every `unsafe` block in this module and in `worker` refers back to this contract.

mod bufring;
pub mod token;

pub use bufring::BufRing;
pub use token::{Op, Token};

use io_uring::IoUring;
use std::io;

/// How a ring runs its completion work, best first: the models [`build`] tries in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// `SINGLE_ISSUER | DEFER_TASKRUN` (Linux 6.1).
    DeferTaskrun = 0,
    /// `COOP_TASKRUN` (5.19).
    CoopTaskrun = 1,
    /// Neither: completion work interrupts the thread when it comes.
    Plain = 2,
}

/// Builds a ring, preferring the cheapest completion model the kernel offers.
///
/// `SINGLE_ISSUER | DEFER_TASKRUN` (6.1) runs completion work only when the owning thread waits,
/// so nothing interrupts the hot loop; `COOP_TASKRUN` (5.19) is the next best. Older kernels get
/// a plain ring. SQPOLL is never used: it spins a core at 100% under steady traffic.
///
/// Must be called on the thread that will use the ring (`SINGLE_ISSUER`).
pub fn build(sq_entries: u32, cq_entries: u32) -> io::Result<IoUring> {
    build_from(sq_entries, cq_entries, Completion::DeferTaskrun)
}

/// [`build`], trying no model better than `best`: what a kernel without the better ones gets
/// (the fault-injection build's `ring-setup`, to measure them on this one).
pub fn build_from(sq_entries: u32, cq_entries: u32, best: Completion) -> io::Result<IoUring> {
    let attempts: [fn(&mut io_uring::Builder); 3] = [
        |b| {
            b.setup_single_issuer().setup_defer_taskrun();
        },
        |b| {
            b.setup_coop_taskrun();
        },
        |_| {},
    ];
    let mut last = io::Error::from_raw_os_error(libc::EINVAL);
    for configure in &attempts[best as usize..] {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(cq_entries).setup_clamp();
        configure(&mut builder);
        match builder.build(sq_entries) {
            Ok(ring) => return Ok(ring),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_build_skips_the_better_models() {
        // Linux 6.1 or later has all three; `SINGLE_ISSUER` comes only with the best.
        let best = match build(8, 16) {
            Ok(ring) => ring,
            Err(e) => {
                // Only io_uring being off here (kernel.io_uring_disabled, seccomp) excuses it.
                let off = matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOSYS));
                assert!(off, "{e}");
                return;
            }
        };
        assert!(best.params().is_setup_single_issuer());
        for limited in [Completion::CoopTaskrun, Completion::Plain] {
            let ring = build_from(8, 16, limited).unwrap();
            assert!(!ring.params().is_setup_single_issuer(), "{limited:?}");
        }
    }
}
