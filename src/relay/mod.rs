//! The relay core: what happens to packets, with no I/O. PURE: no io_uring type, no file
//! descriptor, no `unsafe` (the crate denies it, and this module does not allow it back).
//!
//! Every I/O engine (`worker::uring`, `worker::compat`, `worker::poll`) reads bytes into buffers
//! of its own and hands them here; the core says what the bytes are and what to do with them,
//! and counts what happened. The engine then does it: lays out the sends and writes over its
//! buffers, submits them however it submits, and reports each result back here to be judged.
//!
//! * TUN to UDP: [`tun::classify`] validates a TUN read (virtio_net_hdr, checksum completion,
//!   the split plan of a super-packet, the inner MTU); [`batch::Batcher`] decides which plain
//!   packets share one GSO send; [`send::judge`] and [`send::after_refusal`] say what a send's
//!   result means (sent, refused as too big, GSO unusable, dropped and why).
//! * UDP to TUN: [`receive::plan`] cuts a receive buffer into datagrams, validates each once,
//!   applies RFC 6040 decapsulation, plans the runs that merge into one TUN write and rewrites
//!   their heads; [`receive::judge_write`] says what a TUN write's result means.
//! * [`path::PathMtu`] is a worker's view of the path to the peer.
//!
//! Counters and latency samples go into [`crate::stats::WorkerStats`], which is pure as well.

pub mod batch;
pub mod path;
pub mod plpmtud;
pub mod receive;
pub mod send;
pub mod tun;
