//! The command line's syntax: clap's derive, with a value parser for every option whose value has
//! a form (`parse`), so that a malformed value is refused as clap parses, naming its option.
//! What depends on several options or on the machine is `validate`'s.

use super::parse::{self, CpuList, PeerSpec};
use super::{DEFAULT_TX_QUEUE_LEN, MAX_BUSY_POLL_US, MAX_PEER_REFRESH_SECS, MAX_QUEUES};
use crate::engine::Engine;
use crate::offload::ecn::OuterDscp;
use clap::builder::RangedU64ValueParser;
use clap::{Parser, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// `--engine`: one of the engines, or `auto` for the fastest this kernel allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineChoice {
    Auto,
    Uring,
    UringCompat,
    Poll,
}

impl EngineChoice {
    /// The engine forced, or `None` for `auto`.
    pub fn engine(self) -> Option<Engine> {
        match self {
            EngineChoice::Auto => None,
            EngineChoice::Uring => Some(Engine::Uring),
            EngineChoice::UringCompat => Some(Engine::UringCompat),
            EngineChoice::Poll => Some(Engine::Poll),
        }
    }
}

/// `--entropy`: whether different inner flows leave from different outer source ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EntropyChoice {
    /// Once the peer acknowledged them (a tunfwd that knows outer entropy); the listen port
    /// alone toward any other peer.
    Auto,
    /// The listen port alone, always: one outer 4-tuple for the whole tunnel.
    Off,
}

/// `--aqm`: what tunfwd does about the queues in front of its workers (`relay::aqm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AqmChoice {
    Codel,
    Observe,
    Off,
}

impl AqmChoice {
    pub fn mode(self) -> crate::relay::aqm::Mode {
        use crate::relay::aqm::Mode;
        match self {
            AqmChoice::Codel => Mode::Codel,
            AqmChoice::Observe => Mode::Observe,
            AqmChoice::Off => Mode::Off,
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tunfwd",
    version,
    about = "Forward IP packets between a multiqueue TUN device and a UDP peer",
    long_about = "Forward IP packets between a multiqueue TUN device and a UDP peer.\n\n\
        Run it on both ends of a link, each pointing --peer at the other; the two TUN devices are \
        then joined. Each inner IP packet travels as one UDP payload with no extra header."
)]
pub struct Args {
    /// The other relay, as IPv4:PORT, [IPv6]:PORT or HOSTNAME:PORT. Required, except with
    /// --wireguard, which takes its peers from the WireGuard configuration instead.
    #[arg(
        long,
        value_name = "HOST:PORT",
        value_parser = parse::peer,
        required_unless_present = "wireguard",
        conflicts_with = "wireguard"
    )]
    pub peer: Option<PeerSpec>,

    /// WireGuard mode: speak the WireGuard protocol to WireGuard peers, configured through the
    /// userspace API socket /var/run/wireguard/DEV.sock (`wg set`, `wg setconf`, `wg show`).
    #[arg(long)]
    pub wireguard: bool,

    /// WireGuard mode: a `wg setconf` file (the format `wg showconf` prints) applied at startup.
    /// Refused if its group or others may read it.
    #[arg(long, value_name = "FILE", requires = "wireguard")]
    pub config: Option<PathBuf>,

    /// Local UDP address to receive on. [default: the wildcard address of the peer's family, port 55555]
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse::listen)]
    pub listen: Option<SocketAddr>,

    /// TUN device to create, or to attach to if it already exists as a persistent device.
    #[arg(long, value_name = "NAME", default_value = "tunfwd0", value_parser = parse::device_name)]
    pub dev: String,

    /// Number of TUN queues, one worker thread each (1 to 256). [default: the number of online CPUs]
    #[arg(
        long,
        value_name = "N",
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_QUEUES as u64)
    )]
    pub queues: Option<usize>,

    /// CPUs to pin workers to, round-robin, e.g. 0-3,6. [default: all online CPUs]
    #[arg(
        long,
        value_name = "LIST",
        conflicts_with = "no_pin",
        value_parser = parse::cpu_list
    )]
    pub cpus: Option<CpuList>,

    /// Do not pin workers to CPUs.
    #[arg(long)]
    pub no_pin: bool,

    /// Address to assign to the device, as ADDR/PREFIX (IPv4 or IPv6). Repeatable. The link is
    /// brought up when any address is given.
    #[arg(long = "address", value_name = "CIDR", value_parser = parse::cidr)]
    pub addresses: Vec<(IpAddr, u8)>,

    /// Device MTU in bytes. [default: 1500 minus the outer headers: 1472 for an IPv4 peer, 1452 for IPv6; 1420 with --wireguard]
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<u32>,

    /// Print the stats report every SECS seconds; 0 prints it only at exit.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub stats_interval: u64,

    /// Also write the stats report as JSON to PATH, at each interval and at exit (atomically).
    #[arg(long, value_name = "PATH")]
    pub stats_json: Option<PathBuf>,

    /// Packets the TUN device may queue for tunfwd to read (its txqueuelen); the kernel drops
    /// what finds the queue full (reported as `kernel drops: tun_queue`).
    #[arg(
        long,
        value_name = "PACKETS",
        default_value_t = DEFAULT_TX_QUEUE_LEN,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub tx_queue_len: u32,

    /// io_uring operations each worker keeps in flight per direction (1 to 4096, a power of two).
    /// 1 turns batching off, for measuring what batching is worth.
    #[arg(long, value_name = "N", default_value = "256", value_parser = parse::ring_depth)]
    pub ring_depth: usize,

    /// The I/O engine: `uring` (Linux 6.7), `uring-compat` (io_uring without multishot, Linux
    /// 5.15), `poll` (no io_uring: what a default container seccomp profile allows), or `auto`,
    /// the fastest this kernel and this process's seccomp profile allow.
    #[arg(
        long,
        value_name = "auto|uring|uring-compat|poll",
        default_value = "auto",
        hide_possible_values = true
    )]
    pub engine: EngineChoice,

    /// After handling packets, keep looking for more for USECS microseconds (0 to 10000) before
    /// going to sleep: round trips through an otherwise idle tunnel skip a thread wake-up, at
    /// the price of that much CPU after each burst. 0 (the default) never spins.
    #[arg(
        long,
        value_name = "USECS",
        default_value_t = 0,
        value_parser = clap::value_parser!(u64).range(0..=MAX_BUSY_POLL_US)
    )]
    pub busy_poll: u64,

    /// Receive-buffer memory per direction per worker, e.g. 512K, 1M, 16M. Buffers are 64 KiB
    /// with offloads (so 1M makes 16) and MTU-sized without; at least 8, at most --ring-depth.
    /// Small keeps the buffers in cache, which moves bulk traffic faster.
    #[arg(
        long,
        value_name = "BYTES",
        default_value = "1M",
        value_parser = parse::buffer_size
    )]
    pub buffer_memory: usize,

    /// Send and receive buffer of each worker's UDP socket, e.g. 256K, 8M: what the kernel holds
    /// for a worker that falls behind. Large absorbs bursts of small packets; small keeps the
    /// queue, and the latency of everything behind it, short under sustained load.
    #[arg(
        long,
        value_name = "BYTES",
        default_value = "8M",
        value_parser = parse::buffer_size
    )]
    pub socket_buffer: usize,

    /// Do not negotiate TCP segmentation offload with the TUN (no TCP super-packets either way).
    #[arg(long)]
    pub no_tso: bool,

    /// Do not negotiate UDP segmentation offload with the TUN (Linux 6.2+; no UDP super-packets).
    #[arg(long)]
    pub no_uso: bool,

    /// Do not send several datagrams per sendmsg (UDP_SEGMENT).
    #[arg(long)]
    pub no_udp_gso: bool,

    /// Do not receive several datagrams per buffer (UDP_GRO).
    #[arg(long)]
    pub no_udp_gro: bool,

    /// All of --no-tso, --no-uso, --no-udp-gso and --no-udp-gro.
    #[arg(long)]
    pub no_offload: bool,

    /// The DSCP of the outer header: N is a TOS / traffic class byte (0-255, decimal or 0x hex)
    /// whose low two bits, the ECN field, must be 0 (0xb8 is EF); `inherit` copies the inner
    /// packet's DSCP. The outer ECN field is the inner one either way, unless --no-ecn.
    /// [default: 0]
    #[arg(long, value_name = "N|inherit", value_parser = parse::tos)]
    pub tos: Option<OuterDscp>,

    /// Do not propagate ECN (RFC 6040): the outer ECN field is always Not-ECT, and marks on
    /// received outer headers are ignored.
    #[arg(long)]
    pub no_ecn: bool,

    /// What to do about the queues in front of each worker (the TUN's ring, the UDP socket's
    /// receive buffer): `codel` times how long packets wait there and, when that wait stands
    /// above --aqm-target for --aqm-interval, marks ECN-capable packets CE and drops others, ever
    /// more often until it falls (RFC 8289, RFC 3168); `observe` only times them (the stats'
    /// queue delay); `off` does neither. Off by default: the drop times were measured only on
    /// sub-millisecond round trips (raise --aqm-interval and --aqm-drop-interval to the flows'
    /// round trip on a longer path), and the TUN ring's wait, which no reader can see, is
    /// counted as a lower bound, so a standing ring is mostly left alone (docs/latency.md).
    #[arg(
        long,
        value_name = "codel|observe|off",
        default_value = "off",
        hide_possible_values = true
    )]
    pub aqm: AqmChoice,

    /// The wait the AQM lets a queue keep standing before it marks ECN-capable packets CE, with
    /// its unit (10us to 1s). [default: 100us]
    #[arg(long, value_name = "TIME", value_parser = parse::aqm_target)]
    pub aqm_target: Option<u64>,

    /// How long a queue must stand above --aqm-target before the AQM marks, and the base of its
    /// spacing: about the round trip of the flows through the tunnel (10us to 10s, above
    /// --aqm-target). [default: 2ms]
    #[arg(long, value_name = "TIME", value_parser = parse::aqm_interval)]
    pub aqm_interval: Option<u64>,

    /// The same for dropping Not-ECT packets, which costs their flows a retransmission: at least
    /// --aqm-target. [default: 250us]
    #[arg(long, value_name = "TIME", value_parser = parse::aqm_target)]
    pub aqm_drop_target: Option<u64>,

    /// The interval for drops, above --aqm-drop-target. [default: 5ms]
    #[arg(long, value_name = "TIME", value_parser = parse::aqm_interval)]
    pub aqm_drop_interval: Option<u64>,

    /// Below this path MTU (outer headers included, 552 or more; 1280 or more to an IPv6 peer),
    /// tunfwd works only to sizes the peer relay acknowledged: an ICMP message that claims a
    /// smaller path is a hint, confirmed by probing before it is believed. [default: 1280, or
    /// the MTU plus the outer headers if that is smaller]
    #[arg(long, value_name = "BYTES")]
    pub pmtu_floor: Option<u32>,

    /// With a HOSTNAME in --peer: look the name up again every SECS seconds, and follow the peer
    /// to a new address (logged). 0 looks it up once, at startup.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(0..=MAX_PEER_REFRESH_SECS)
    )]
    pub peer_refresh: u64,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (an IP address and a port, e.g.
    /// 127.0.0.1:9101). Bound at startup; counters are at most a second old.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse::metrics_address)]
    pub metrics: Option<SocketAddr>,

    /// After setup (device, sockets, rings, CPU pinning), switch every thread to this user, keeping
    /// no capabilities: nothing after setup needs privilege. tunfwd must start as root (leaving uid
    /// 0 is what clears the capabilities). The --stats-json directory must be writable by the user;
    /// tunfwd writes a first report there right after switching, and exits if it cannot.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// The group to switch to with --user. [default: the user's primary group]
    #[arg(long, value_name = "NAME", requires = "user")]
    pub group: Option<String>,

    /// Outer flow entropy: `auto` sends each inner flow from one of a few extra source ports
    /// (a hash of the flow picks it, as VXLAN does), so that a receiver's RSS and the underlay's
    /// ECMP spread the tunnel, once the peer relay acknowledged those ports (a peer that does
    /// not answer, such as socat, gets the listen port alone); `off` sends everything from the
    /// listen port and takes no advertisement of the peer's. Each extra port carries flows only
    /// while the peer acknowledges probes sent from it, so a NAT or firewall that rewrites or
    /// drops them leaves those flows on the listen port. [default: auto, off with --wireguard]
    #[arg(long, value_name = "auto|off", hide_possible_values = true)]
    pub entropy: Option<EntropyChoice>,

    /// The source ports outer entropy sends from, as `ip link ... vxlan srcport MIN MAX` names
    /// them (1-65535, not the listen port): split among the workers, each binding up to four of
    /// its share. [default: ports the kernel picks, four per worker]
    #[arg(
        long,
        num_args = 2,
        value_names = ["MIN", "MAX"],
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub srcport: Option<Vec<u16>>,
}
