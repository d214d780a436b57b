//! tunfwd: forwards IP packets between a multiqueue Linux TUN device and a UDP peer.
//!
//! The crate is a pure core inside a thin I/O shell. [`relay::Relay`] is one worker's whole
//! protocol state, sans-IO: buffers in and out, sends and writes in flight, refusals, the path
//! MTU machine, counters; it takes events and the time and hands out requests that name memory
//! by slot, never by pointer. `relay`, `wire`, `offload`, `steer`, `engine`, `cli` and `stats`
//! decide things and make no system call. `worker` is the shell: it owns the buffers and fds,
//! turns the relay's requests into iovecs and system calls with the I/O engine `engine` chose
//! (io_uring with multishot operations, io_uring without, or plain `poll`), and feeds the
//! results back; `operate` is what the main thread runs beside the workers (the printer, the
//! JSON report, the peer lookups). `unsafe` is fenced into three modules: `sys` (fds, ioctls,
//! socket options), `ring` (io_uring buffer memory, with the buffer-lifetime contract), and
//! `worker`, whose engines carry out requests that point into that memory and cite the contract
//! at each `unsafe` block.
//!
//! Dependencies point one way: `main -> worker -> {relay, engine, ring, sys, stats}`,
//! `relay -> {offload, wire, stats}`, `sys -> wire`, `wire -> nothing`.
#![deny(unsafe_code)]

pub mod cli;
pub mod engine;
pub mod faults;
pub mod metrics;
pub mod notify;
pub mod offload;
pub mod operate;
pub mod relay;
#[allow(unsafe_code)]
pub mod ring;
pub mod shared;
pub mod stats;
pub mod steer;
#[allow(unsafe_code)]
pub mod sys;
pub mod testbed;
pub mod wire;
#[allow(unsafe_code)]
pub mod worker;
