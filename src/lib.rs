//! tunfwd: forwards IP packets between a multiqueue Linux TUN device and a UDP peer.
//!
//! The crate is a pure core inside a thin I/O shell. `relay` (what happens to packets), `wire`,
//! `offload`, `steer`, `engine`, `cli` and `stats` decide things and make no system call.
//! `unsafe` is fenced into three modules: `sys` (fds, ioctls, socket options), `ring` (io_uring
//! buffer memory, with the buffer-lifetime contract), and `worker`, whose engines carry out
//! requests that point into that memory and cite the contract at each `unsafe` block. `worker`
//! ties one TUN queue and one UDP socket together on one pinned thread, with the I/O engine
//! `engine` chose: io_uring with multishot operations, io_uring without, or plain `poll`.
//!
//! Dependencies point one way: `worker -> {relay, engine, ring, sys, stats, wire}`,
//! `relay -> {offload, wire, stats}` (and the plain `sys::socket::OuterFamily` enum), `wire ->
//! nothing`.
#![deny(unsafe_code)]

pub mod cli;
pub mod engine;
pub mod faults;
pub mod metrics;
pub mod notify;
pub mod offload;
pub mod relay;
pub mod shared;
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
