//! tunfwd: forwards IP packets between a multiqueue Linux TUN device and a UDP peer.
//!
//! The crate is a pure core inside a thin I/O shell. `wire`, `steer`, `cli` and `stats` decide
//! things and make no system call. `unsafe` is fenced into three modules: `sys` (fds, ioctls,
//! socket options), `ring` (io_uring buffer memory, with the buffer-lifetime contract), and
//! `worker`, which pushes submissions that point into that memory and cites the contract at each
//! `unsafe` block. `worker` ties one TUN queue, one UDP socket and one ring together on one
//! pinned thread.
//!
//! Dependencies point one way: `worker -> {ring, sys, stats, wire}`, `wire -> nothing`.
#![deny(unsafe_code)]

pub mod cli;
pub mod engine;
pub mod faults;
pub mod metrics;
pub mod notify;
pub mod offload;
pub mod relay;
#[allow(unsafe_code)]
pub mod ring;
pub mod stats;
pub mod steer;
#[allow(unsafe_code)]
pub mod sys;
pub mod testbed;
pub mod wire;
#[allow(unsafe_code)]
pub mod worker;
