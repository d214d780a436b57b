//! tunfwd: forwards IP packets between a multiqueue Linux TUN device and a UDP peer.
//!
//! The crate is a pure core inside a thin I/O shell. `relay::Relay` is one worker's whole
//! protocol state, sans-IO: buffers in and out, sends and writes in flight, refusals, the path
//! MTU machine, counters; it takes events and the time and hands out requests that name memory
//! by slot, never by pointer. `relay`, `wire`, `offload`, `steer`, `engine`, `cli` and `stats`
//! decide things and make no system call. `worker` is the shell: it owns the buffers and fds,
//! turns the relay's requests into iovecs and system calls with the I/O engine `engine` chose
//! (io_uring with multishot operations, io_uring without, or plain `poll`), and feeds the
//! results back; `run` sets everything up and is what the main thread runs beside the workers,
//! with `operate` (the printer, the JSON report, the peer lookups). `unsafe` is fenced into three
//! modules: `sys` (fds, ioctls, socket options), `ring` (io_uring buffer memory, with the
//! buffer-lifetime contract), and `worker`, whose engines carry out requests that point into
//! that memory and cite the contract at each `unsafe` block.
//!
//! Dependencies point one way: `main -> run -> worker -> {relay, engine, ring, sys, stats,
//! offload, faults, shared}`, `relay -> {offload, steer, wire, stats}`, `stats -> wire`,
//! `offload -> wire`, `steer -> wire`, `sys -> wire`, `wire -> nothing`.
//!
//! # API
//!
//! The crate is a binary's library, and every module is private, so that the compiler reports
//! code nothing uses. What it exports is what `src/main.rs` needs to be the `tunfwd` command:
//! the command line ([`Args`], validated into a [`Config`] against the user database
//! [`Accounts`]), [`run`], and its setup [`Error`]; plus the names a report gives its counters'
//! drop reasons ([`DropReason`]). Three hidden modules re-export, item by item, what the
//! integration tests and the tools ([`testing`]), the fuzz targets ([`fuzzing`]) and the micro
//! benches ([`bench`]) call; they are not an API anyone else should use.
#![deny(unsafe_code)]

mod cli;
mod engine;
mod faults;
mod metrics;
mod notify;
mod offload;
mod operate;
mod relay;
#[allow(unsafe_code)]
mod ring;
mod run;
mod shared;
mod stats;
mod steer;
#[allow(unsafe_code)]
mod sys;
mod wire;
mod wireguard;
#[allow(unsafe_code)]
mod worker;

pub use cli::{Account, Accounts, Args, Config, ConfigError, DEFAULT_TX_QUEUE_LEN, value_error};
pub use run::run;
pub use stats::DropReason;
pub use sys::Error;

/// What the integration tests (`tests/`) and the tools (`tools/`: tunload, simpletun, the e2e
/// orchestrator) call besides the command line, item by item, under the names of the modules
/// they live in where a caller spells those. Not a stable API.
#[doc(hidden)]
pub mod testing {
    pub use crate::cli::parse_byte;
    pub use crate::offload::ecn::{Ecn, decapsulated_ecn};
    pub use crate::offload::split::tun_gso_max_size;
    pub use crate::steer::flow_index;
    pub use crate::wire::IpPacket;
    pub use crate::wire::cmsg::receive_control;
    pub use crate::wire::control::{Control, is_control};
    pub use crate::worker::MAX_SPLIT_SEGMENTS;

    /// One relay per device and port (`tests/ownership.rs`).
    pub mod owner {
        pub use crate::sys::owner::{Remains, Resource, claim};
    }

    /// Opening TUN devices: a relay's queues, and simpletun's one plain fd.
    pub mod tun {
        pub use crate::sys::tun::{open_plain, open_queues};
    }

    /// The relay's own UDP sockets and their options, for a test that plays a relay or reads
    /// what one reads (`tests/ecn_pmtu.rs`), and the kernel's drop count for `tunload udp-sink`.
    pub mod socket {
        pub use crate::sys::socket::{
            SOCKET_BUFFER_BYTES, drain_error_queue, enable_receive_tos, receive_drops,
            recvmsg_with_control, to_sockaddr, udp_socket,
        };
    }
}

/// What the fuzz targets (`fuzz/fuzz_targets/`) and their seed maker call: the parsers, the
/// splitter, the coalescer and the steering program, item by item, under the names of the
/// modules they live in where a target spells those. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::offload::coalesce::{
        MAX_RUN_SEGMENTS, Policy, Segment, finish_segments, plan_segments, validate,
    };
    pub use crate::offload::complete_checksum;
    pub use crate::offload::icmp::{
        IPV4_ERROR_MAX, IPV6_MIN_MTU, MAX_REPLY, TooBig, may_answer, too_big_action, too_big_reply,
    };
    pub use crate::offload::split::{MAX_HEADER_LEN, Split};
    pub use crate::relay::fuzz::receive_plan;
    pub use crate::steer::{flow_index, flow_key, reuseport_program};
    pub use crate::sys::owner::fuzz_proc_text;
    pub use crate::wire::cmsg::{
        QueuedErrors, gro_segment_size, parse_queued_error, parse_queued_error_about,
        receive_control,
    };
    pub use crate::wire::{IpPacket, IpVersion};
    pub use crate::worker::MAX_SPLIT_SEGMENTS;

    /// The virtio_net_hdr view the splitter reads and the coalescer writes.
    pub mod vnet {
        pub use crate::wire::vnet::{FLAG_NEEDS_CSUM, GsoType, LEN, VnetHeader};
    }

    /// The metrics server's request parser, over one connection's exchange.
    pub use crate::metrics::fuzz_request;

    /// WireGuard mode: the inner headers of an opened datagram, and the steering program.
    pub mod wireguard {
        pub use crate::relay::wireguard::{destination, source_and_len};
        pub use crate::wireguard::{steering_index, steering_program};
    }

    /// Relay-to-relay control messages.
    pub mod control {
        pub use crate::wire::control::{
            Advertisement, Control, HEADER_LEN, Kind, MAX_PORTS, PORTS_ACK_LEN, is_control,
        };
    }

    /// The set of source ports a relay accepts from its peer, as advertisements make it.
    pub mod entropy {
        pub use crate::relay::entropy::{PeerAdvertisement, SourcePorts};
    }

    /// rtnetlink answers.
    pub mod netlink {
        pub use crate::sys::netlink::{
            HEADER_LEN, attributes, link_mtu, parse_answers, route_interface,
        };
    }
}

/// What the criterion micro benches (`benches/micro.rs`) call: the pure code of the data path.
/// Not a stable API.
#[doc(hidden)]
pub mod bench {
    pub use crate::offload::coalesce::{
        Policy, Run, Segment, finish_segments, plan_segments, validate,
    };
    pub use crate::offload::split::Split;
    pub use crate::steer::flow_index;
    pub use crate::wire::IpPacket;
    pub use crate::wire::checksum::Sum;
    pub use crate::wire::vnet::GsoType;
}
