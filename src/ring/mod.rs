//! io_uring ownership: ring setup, provided-buffer rings, and the completion token.
//!
//! # The buffer-lifetime contract (the whole soundness story)
//! Every buffer tunfwd does I/O on lives in a [`BufRing`], allocated once per worker and never
//! moved. A buffer is owned by exactly one side at a time:
//!
//! * **Kernel-owned** from the moment [`BufRing::provide`] puts its id in the ring until a
//!   completion names that id (`cqueue::buffer_select`). The kernel may write to it at any time;
//!   we must not read or write it.
//! * **Worker-owned** from that completion until the worker provides it again. While worker-owned
//!   it may be named by at most one in-flight submission (a send or a TUN write), during which we
//!   do not touch it either; the buffer is provided again only after that submission completes.
//!
//! The memory itself must outlive every operation that can touch it: a worker frees its
//! `BufRing`s only after it has cancelled all operations and seen their last completions. If that
//! drain does not finish, the worker leaks the rings instead of freeing them (`Worker::drop`).
//! Every `unsafe` block in this module and in `worker` refers back to this contract.

mod bufring;
pub mod token;

pub use bufring::BufRing;
pub use token::{Op, Token};

use io_uring::IoUring;
use std::io;

/// Builds a ring, preferring the cheapest completion model the kernel offers.
///
/// `SINGLE_ISSUER | DEFER_TASKRUN` (6.1) runs completion work only when the owning thread waits,
/// so nothing interrupts the hot loop; `COOP_TASKRUN` (5.19) is the next best. Older kernels get
/// a plain ring. SQPOLL is never used: it spins a core at 100% under steady traffic.
///
/// Must be called on the thread that will use the ring (`SINGLE_ISSUER`).
pub fn build(sq_entries: u32, cq_entries: u32) -> io::Result<IoUring> {
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
    for configure in attempts {
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
