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

pub use bufring::BufRing;

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
    let models = [
        Completion::DeferTaskrun,
        Completion::CoopTaskrun,
        Completion::Plain,
    ];
    let mut last = io::Error::from_raw_os_error(libc::EINVAL);
    for model in models.into_iter().skip(best as usize) {
        // Created disabled where the kernel can (5.10), so that `restrict` can limit it before
        // its first submission; a kernel that refuses that gets the ring without it.
        for disabled in [true, false] {
            let mut builder = IoUring::builder();
            builder.setup_cqsize(cq_entries).setup_clamp();
            match model {
                Completion::DeferTaskrun => {
                    builder.setup_single_issuer().setup_defer_taskrun();
                }
                Completion::CoopTaskrun => {
                    builder.setup_coop_taskrun();
                }
                Completion::Plain => {}
            }
            if disabled {
                builder.setup_r_disabled();
            }
            match builder.build(sq_entries) {
                Ok(ring) => return Ok(ring),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = e,
                Err(e) => return Err(e),
            }
        }
    }
    Err(last)
}

/// The submission opcodes tunfwd's engines use: reads of the TUN (multishot and plain),
/// `recvmsg`, `sendmsg`, `writev`, timeouts and cancellations. Nothing else.
const ALLOWED_OPS: [u8; 7] = [
    io_uring::opcode::Read::CODE,
    io_uring::opcode::ReadMulti::CODE,
    io_uring::opcode::RecvMsg::CODE,
    io_uring::opcode::SendMsg::CODE,
    io_uring::opcode::Writev::CODE,
    io_uring::opcode::Timeout::CODE,
    io_uring::opcode::AsyncCancel::CODE,
];

/// Limits a ring built disabled (`build_from`) to [`ALLOWED_OPS`], with registered files and
/// buffer selection as the only submission flags and no registration at all from now on
/// (`IORING_REGISTER_RESTRICTIONS`, Linux 5.10), then enables it. Call it once the engine's own
/// registrations (files, buffer rings, io-wq affinity) are done. Returns whether the ring is
/// restricted: false for a ring the kernel would not create disabled, which runs unrestricted.
///
/// Why: io_uring operations are not system calls, so a seccomp filter (systemd's
/// `SystemCallFilter=`, `RestrictAddressFamilies=`) never sees them; a restricted ring cannot
/// open, connect or do anything else tunfwd does not, whatever a bug made it submit.
pub fn restrict(ring: &IoUring) -> io::Result<bool> {
    use io_uring::register::Restriction;
    let flags = io_uring::squeue::Flags::FIXED_FILE | io_uring::squeue::Flags::BUFFER_SELECT;
    let mut restrictions: Vec<Restriction> = ALLOWED_OPS
        .iter()
        .map(|op| Restriction::sqe_op(*op))
        .chain([Restriction::sqe_flags_allowed(flags.bits())])
        .collect();
    match ring.submitter().register_restrictions(&mut restrictions) {
        // Only a ring created disabled takes restrictions (`io_register_restrictions`).
        Err(e) if e.raw_os_error() == Some(libc::EBADFD) => return Ok(false),
        result => result?,
    }
    ring.submitter().register_enable_rings()?;
    Ok(true)
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

    /// The result of one NOP on `ring`.
    fn nop(ring: &mut IoUring) -> i32 {
        let nop = io_uring::opcode::Nop::new().build().user_data(7);
        // SAFETY: a NOP points at no memory.
        unsafe { ring.submission().push(&nop).unwrap() };
        ring.submit_and_wait(1).unwrap();
        ring.completion().next().unwrap().result()
    }

    #[test]
    fn a_restricted_ring_refuses_what_tunfwd_does_not_do() {
        let Ok(mut ring) = build(8, 16) else {
            return; // io_uring is off here; the test above says whether that is allowed
        };
        assert!(
            restrict(&ring).unwrap(),
            "Linux 5.10 or later creates disabled rings"
        );
        assert_eq!(
            nop(&mut ring),
            -libc::EACCES,
            "not one of the allowed opcodes"
        );
        let e = ring.submitter().register_files(&[0]).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EACCES),
            "no registration once enabled"
        );
        // Without restrictions the same NOP completes.
        let mut open = build(8, 16).unwrap();
        open.submitter().register_enable_rings().unwrap();
        assert_eq!(nop(&mut open), 0);
    }
}
