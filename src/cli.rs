//! Command line: clap's derive for the syntax, then [`Args::validate`] for the meaning. PURE.
//!
//! Validation needs two facts from the machine (the online CPUs and, for a hostname peer, DNS);
//! the caller passes those in, so every rule here is unit-tested without root or network.

use crate::engine::Engine;
use crate::offload::ecn::{ECN_MASK, Marking, OuterDscp};
use clap::Parser;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

/// The UDP port tunfwd listens on by default.
pub const DEFAULT_PORT: u16 = 55555;
/// Linux's limit on queues of one TUN device (`MAX_TAP_QUEUES` in drivers/net/tun.c).
pub const MAX_QUEUES: usize = 256;
/// `IFNAMSIZ - 1`: an interface name's bytes, without the terminating NUL.
pub const MAX_DEVICE_NAME: usize = 15;
/// The TUN transmit queue length tunfwd sets unless told otherwise. The kernel's is 500, which a
/// flow of small packets fills in 3 ms at 166k packets a second: a worker that waits that long
/// for a CPU loses packets. 2000 lost none at that rate where 500 lost 4 to 5%
/// (bench-results/2026-11-30T160000Z-traffic-shapes.md). It counts packets, not bytes, and one
/// TCP flow's window (its sender's send buffer, 4 MB by default) fills about 60 of them.
pub const DEFAULT_TX_QUEUE_LEN: u32 = 2000;
/// Outer IPv4 + UDP header bytes, and outer IPv6 + UDP.
pub const OVERHEAD_V4: u32 = 20 + 8;
pub const OVERHEAD_V6: u32 = 40 + 8;
const UNDERLAY_MTU: u32 = 1500;

/// The path MTU below which only an acknowledged size is used, unless `--pmtu-floor` says
/// otherwise: IPv6's minimum link MTU, which an IPv4 path is as likely to carry.
pub const DEFAULT_PMTU_FLOOR: u32 = 1280;

/// The longest `--busy-poll`: 10 ms of spinning after each burst is already most of a core.
const MAX_BUSY_POLL_US: u64 = 10_000;

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
    /// The other relay, as IPv4:PORT, [IPv6]:PORT or HOSTNAME:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub peer: String,

    /// Local UDP address to receive on. [default: the wildcard address of the peer's family, port 55555]
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,

    /// TUN device to create, or to attach to if it already exists as a persistent device.
    #[arg(long, value_name = "NAME", default_value = "tunfwd0")]
    pub dev: String,

    /// Number of TUN queues, one worker thread each (1 to 256). [default: the number of online CPUs]
    #[arg(long, value_name = "N")]
    pub queues: Option<usize>,

    /// CPUs to pin workers to, round-robin, e.g. 0-3,6. [default: all online CPUs]
    #[arg(long, value_name = "LIST", conflicts_with = "no_pin")]
    pub cpus: Option<String>,

    /// Do not pin workers to CPUs.
    #[arg(long)]
    pub no_pin: bool,

    /// Address to assign to the device, as ADDR/PREFIX (IPv4 or IPv6). Repeatable. The link is
    /// brought up when any address is given.
    #[arg(long = "address", value_name = "CIDR")]
    pub addresses: Vec<String>,

    /// Device MTU in bytes. [default: 1500 minus the outer headers: 1472 for an IPv4 peer, 1452 for IPv6]
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
    #[arg(long, value_name = "PACKETS", default_value_t = DEFAULT_TX_QUEUE_LEN)]
    pub tx_queue_len: u32,

    /// io_uring operations each worker keeps in flight per direction (1 to 4096, a power of two).
    /// 1 turns batching off, for measuring what batching is worth.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub ring_depth: usize,

    /// The I/O engine: `uring` (Linux 6.7), `uring-compat` (io_uring without multishot, Linux
    /// 5.15), `poll` (no io_uring: what a default container seccomp profile allows), or `auto`,
    /// the fastest this kernel and this process's seccomp profile allow.
    #[arg(
        long,
        value_name = "auto|uring|uring-compat|poll",
        default_value = "auto"
    )]
    pub engine: String,

    /// After handling packets, keep looking for more for USECS microseconds (0 to 10000) before
    /// going to sleep: round trips through an otherwise idle tunnel skip a thread wake-up, at
    /// the price of that much CPU after each burst. 0 (the default) never spins.
    #[arg(long, value_name = "USECS", default_value_t = 0)]
    pub busy_poll: u64,

    /// Receive-buffer memory per direction per worker, e.g. 512K, 1M, 16M. Buffers are 64 KiB
    /// with offloads (so 1M makes 16) and MTU-sized without; at least 8, at most --ring-depth.
    /// Small keeps the buffers in cache, which moves bulk traffic faster.
    #[arg(long, value_name = "BYTES", default_value = "1M")]
    pub buffer_memory: String,

    /// Send and receive buffer of each worker's UDP socket, e.g. 256K, 8M: what the kernel holds
    /// for a worker that falls behind. Large absorbs bursts of small packets; small keeps the
    /// queue, and the latency of everything behind it, short under sustained load.
    #[arg(long, value_name = "BYTES", default_value = "8M")]
    pub socket_buffer: String,

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
    #[arg(long, value_name = "N|inherit")]
    pub tos: Option<String>,

    /// Do not propagate ECN (RFC 6040): the outer ECN field is always Not-ECT, and marks on
    /// received outer headers are ignored.
    #[arg(long)]
    pub no_ecn: bool,

    /// Below this path MTU (outer headers included, 552 or more; 1280 or more to an IPv6 peer),
    /// tunfwd works only to sizes the peer relay acknowledged: an ICMP message that claims a
    /// smaller path is a hint, confirmed by probing before it is believed. [default: 1280, or
    /// the MTU plus the outer headers if that is smaller]
    #[arg(long, value_name = "BYTES")]
    pub pmtu_floor: Option<u32>,

    /// With a HOSTNAME in --peer: look the name up again every SECS seconds, and follow the peer
    /// to a new address (logged). 0 looks it up once, at startup.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub peer_refresh: u64,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (an IP address and a port, e.g.
    /// 127.0.0.1:9101). Bound at startup; counters are at most a second old.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,

    /// After setup (device, sockets, rings, CPU pinning), switch every thread to this user, keeping
    /// no capabilities: nothing after setup needs privilege. tunfwd must start as root (leaving uid
    /// 0 is what clears the capabilities). The --stats-json directory must be writable by the user;
    /// tunfwd writes a first report there right after switching, and exits if it cannot.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// The group to switch to with --user. [default: the user's primary group]
    #[arg(long, value_name = "NAME", requires = "user")]
    pub group: Option<String>,
}

/// Offloads the operator allows; the kernel may still refuse some (probed at startup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadSwitches {
    pub tso: bool,
    pub uso: bool,
    pub udp_gso: bool,
    pub udp_gro: bool,
}

/// A user account, as the system's user database has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub primary_gid: u32,
}

/// The user database (NSS, in production). Like `resolve` for the peer, the caller passes it in,
/// so that `--user` and `--group` are checked here and unit-tested without real accounts.
pub trait Accounts {
    /// The user called `name`; `Ok(None)` when there is none, `Err` when the lookup failed.
    fn user(&self, name: &str) -> Result<Option<Account>, String>;
    /// The gid of the group called `name`; `Ok(None)` when there is none.
    fn group(&self, name: &str) -> Result<Option<u32>, String>;
}

/// Who tunfwd becomes after setup (`--user`, `--group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    /// `--group`, or `None` for the user's primary group.
    pub group: Option<String>,
    pub gid: u32,
}

/// Where the peer is, before name resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSpec {
    Address(SocketAddr),
    Name { host: String, port: u16 },
}

/// A validated configuration. Every field is in range; the device does not exist yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub peer: SocketAddr,
    pub listen: SocketAddr,
    pub device_name: String,
    pub queues: usize,
    /// The CPU for each worker, or `None` when pinning is off.
    pub worker_cpus: Option<Vec<usize>>,
    pub addresses: Vec<(IpAddr, u8)>,
    pub mtu: u32,
    pub stats_interval_secs: u64,
    pub stats_json: Option<PathBuf>,
    pub ring_depth: usize,
    /// The engine `--engine` forced; `None` for `auto`.
    pub engine: Option<Engine>,
    /// How long a worker keeps looking for work after handling some (`--busy-poll`).
    pub busy_poll: std::time::Duration,
    pub buffer_memory: usize,
    /// `--socket-buffer`, in bytes.
    pub socket_buffer: usize,
    pub tx_queue_len: u32,
    pub offloads: OffloadSwitches,
    /// How the outer TOS / traffic class is made (`--tos`, `--no-ecn`).
    pub marking: Marking,
    /// The path MTU floor (`--pmtu-floor`), outer headers included.
    pub pmtu_floor: u32,
    /// The peer's hostname and port, when `--peer` named one, and how often to look it up again
    /// (`None`: never).
    pub peer_name: Option<(String, u16)>,
    pub peer_refresh: Option<std::time::Duration>,
    /// Where to serve Prometheus metrics.
    pub metrics: Option<SocketAddr>,
    /// The user to switch to after setup.
    pub run_as: Option<RunAs>,
}

/// Bad input: which option, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub option: &'static str,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.option, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn bad(option: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        option,
        problem: problem.into(),
    }
}

/// The address to use of those a peer's name resolved to: one of the family `of` (the socket's,
/// once it exists), or the first IPv4 one, else the first, when there is no socket yet.
pub fn pick_peer(found: &[SocketAddr], of: Option<SocketAddr>) -> Option<SocketAddr> {
    match of {
        Some(current) => found
            .iter()
            .find(|a| a.is_ipv4() == current.is_ipv4())
            .copied(),
        None => found
            .iter()
            .find(|a| a.is_ipv4())
            .or(found.first())
            .copied(),
    }
}

/// Parses `--peer` without resolving names.
pub fn parse_peer(text: &str) -> Result<PeerSpec, ConfigError> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(PeerSpec::Address(address));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| bad("--peer", format!("'{text}' is not HOST:PORT")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("--peer", format!("'{port}' is not a port number")))?;
    if host.is_empty() || host.contains(':') || host.contains(char::is_whitespace) {
        return Err(bad(
            "--peer",
            format!("'{text}' is not HOST:PORT (write IPv6 as [ADDR]:PORT)"),
        ));
    }
    if port == 0 {
        return Err(bad("--peer", "port 0 is not a destination"));
    }
    Ok(PeerSpec::Name {
        host: host.to_string(),
        port,
    })
}

const MIN_BUFFER_MEMORY: usize = 64 << 10;
const MAX_BUFFER_MEMORY: usize = 1 << 30;

/// Parses a byte size: digits, optionally followed by K, M or G (powers of 1024).
pub fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last()? {
        (at, 'K' | 'k') => (&text[..at], 10),
        (at, 'M' | 'm') => (&text[..at], 20),
        (at, 'G' | 'g') => (&text[..at], 30),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: usize = digits.parse().ok()?;
    n.checked_mul(1 << shift)
}

/// The most CPUs a `cpu_set_t` can name (`CPU_SETSIZE` in glibc's <sched.h>); a CPU number at or
/// above it cannot be pinned to, so a list is refused before it is expanded (a range such as
/// `0-18446744073709551615` would otherwise allocate without bound).
pub const MAX_CPUS: usize = 1024;

/// Parses a CPU list such as `0-3,6`. A CPU named twice keeps its first place (`2,0-3` is
/// `2,0,1,3`), so round-robin pinning never puts two workers on one core by accident.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, ConfigError> {
    let mut cpus = Vec::new();
    let mut seen = [false; MAX_CPUS];
    let number = |s: &str| {
        let n = s
            .trim()
            .parse::<usize>()
            .map_err(|_| bad("--cpus", format!("'{s}' is not a CPU number")))?;
        if n >= MAX_CPUS {
            return Err(bad(
                "--cpus",
                format!("CPU {n} is out of range (at most {})", MAX_CPUS - 1),
            ));
        }
        Ok(n)
    };
    for part in text.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (number(lo)?, number(hi)?),
            None => {
                let n = number(part)?;
                (n, n)
            }
        };
        if lo > hi {
            return Err(bad("--cpus", format!("range '{part}' runs backwards")));
        }
        for (cpu, seen) in seen.iter_mut().enumerate().take(hi + 1).skip(lo) {
            if !std::mem::replace(seen, true) {
                cpus.push(cpu);
            }
        }
    }
    Ok(cpus)
}

/// Parses an `--address` such as `198.19.0.1/24` or `2001:2::1/64`.
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), ConfigError> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| bad("--address", format!("'{text}' has no /PREFIX")))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| bad("--address", format!("'{addr}' is not an IP address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| bad("--address", format!("prefix '{prefix}' is not 0..={max}")))?;
    Ok((addr, prefix))
}

fn validate_device_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(bad("--dev", "empty device name"));
    }
    if name.len() > MAX_DEVICE_NAME {
        return Err(bad(
            "--dev",
            format!(
                "'{name}' is {} bytes; Linux allows at most {MAX_DEVICE_NAME}",
                name.len()
            ),
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':', '%'])
        || name.contains(char::is_whitespace)
    {
        return Err(bad(
            "--dev",
            format!("'{name}' is not a valid interface name"),
        ));
    }
    Ok(())
}

/// Parses a byte, decimal or hex with a `0x` or `0X` prefix: the TOS values of `--tos` here
/// and of `tunload udp-flood --tos`, which takes whole bytes, ECN bits included.
pub fn parse_byte(text: &str) -> Option<u8> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16).ok(),
        None => text.parse::<u8>().ok(),
    }
}

/// Parses `--tos`: `inherit`, or a TOS byte (decimal or `0x` hex) with its ECN bits clear, since
/// those come from the inner packet.
pub fn parse_tos(text: &str) -> Result<OuterDscp, ConfigError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("inherit") {
        return Ok(OuterDscp::Inherit);
    }
    let value = parse_byte(text).ok_or_else(|| {
        bad(
            "--tos",
            format!("'{text}' is neither 'inherit' nor a byte (0-255, or 0x00-0xff)"),
        )
    })?;
    if value & ECN_MASK != 0 {
        return Err(bad(
            "--tos",
            format!(
                "{value:#04x} sets the ECN bits (the low two), which come from the inner packet; \
                 the DSCP alone is {:#04x}",
                value & !ECN_MASK
            ),
        ));
    }
    Ok(OuterDscp::Fixed(value))
}

/// Parses `--metrics`: an IP address and a non-zero port. No hostnames: the listener is bound
/// before anything else, and a name that resolves to several addresses would have to pick one.
pub fn parse_metrics_address(text: &str) -> Result<SocketAddr, ConfigError> {
    let address: SocketAddr = text.parse().map_err(|_| {
        bad(
            "--metrics",
            format!("'{text}' is not ADDR:PORT (an IP address and a port, e.g. 127.0.0.1:9101)"),
        )
    })?;
    if address.port() == 0 {
        return Err(bad(
            "--metrics",
            "port 0 would be a random port that no scraper knows; choose one",
        ));
    }
    Ok(address)
}

/// Resolves `--user` and `--group`. Refuses uid 0 and gid 0: switching to root keeps everything,
/// which is never what `--user` was written for.
fn validate_run_as(
    user: &str,
    group: Option<&str>,
    accounts: &impl Accounts,
) -> Result<RunAs, ConfigError> {
    let valid_name = |name: &str| {
        !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == ':' || c == '/')
    };
    if !valid_name(user) {
        return Err(bad("--user", format!("'{user}' is not a user name")));
    }
    let account = accounts
        .user(user)
        .map_err(|why| bad("--user", format!("cannot look up user '{user}': {why}")))?
        .ok_or_else(|| bad("--user", format!("no user '{user}' on this system")))?;
    if account.uid == 0 {
        return Err(bad(
            "--user",
            format!("'{user}' is uid 0: switching to it would keep every privilege"),
        ));
    }
    let gid = match group {
        Some(name) => {
            if !valid_name(name) {
                return Err(bad("--group", format!("'{name}' is not a group name")));
            }
            let gid = accounts
                .group(name)
                .map_err(|why| bad("--group", format!("cannot look up group '{name}': {why}")))?
                .ok_or_else(|| bad("--group", format!("no group '{name}' on this system")))?;
            if gid == 0 {
                return Err(bad("--group", format!("'{name}' is gid 0 (root's group)")));
            }
            gid
        }
        None if account.primary_gid == 0 => {
            return Err(bad(
                "--user",
                format!(
                    "'{user}' has gid 0 (root's group) as its primary group; name another with --group"
                ),
            ));
        }
        None => account.primary_gid,
    };
    Ok(RunAs {
        user: user.to_string(),
        uid: account.uid,
        group: group.map(str::to_string),
        gid,
    })
}

impl Args {
    /// Validates the arguments. `online_cpus` is the machine's online CPU list; `resolve` turns a
    /// hostname and port into addresses (DNS, in production); `accounts` looks up `--user` and
    /// `--group`.
    pub fn validate(
        &self,
        online_cpus: &[usize],
        resolve: impl Fn(&str, u16) -> Result<Vec<SocketAddr>, String>,
        accounts: &impl Accounts,
    ) -> Result<Config, ConfigError> {
        let mut peer_name = None;
        let peer = match parse_peer(&self.peer)? {
            PeerSpec::Address(address) => address,
            PeerSpec::Name { host, port } => {
                let found = resolve(&host, port)
                    .map_err(|why| bad("--peer", format!("cannot resolve '{host}': {why}")))?;
                // Prefer IPv4, as the default MTU and the examples do; any address will work.
                let chosen = pick_peer(&found, None)
                    .ok_or_else(|| bad("--peer", format!("'{host}' has no addresses")))?;
                peer_name = Some((host, port));
                chosen
            }
        };
        if peer.port() == 0 {
            return Err(bad("--peer", "port 0 is not a destination"));
        }
        if peer.ip().is_unspecified() || peer.ip().is_multicast() {
            return Err(bad(
                "--peer",
                format!("{} is not a unicast address", peer.ip()),
            ));
        }

        let listen = match &self.listen {
            Some(text) => {
                let listen: SocketAddr = text
                    .parse()
                    .map_err(|_| bad("--listen", format!("'{text}' is not ADDR:PORT")))?;
                if listen.is_ipv4() != peer.is_ipv4() {
                    return Err(bad("--listen", "must be the same IP family as --peer"));
                }
                listen
            }
            None if peer.is_ipv4() => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), DEFAULT_PORT),
            None => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), DEFAULT_PORT),
        };

        validate_device_name(&self.dev)?;

        let queues = self.queues.unwrap_or(online_cpus.len().max(1));
        if !(1..=MAX_QUEUES).contains(&queues) {
            return Err(bad(
                "--queues",
                format!("{queues} is not between 1 and {MAX_QUEUES}"),
            ));
        }

        let worker_cpus = if self.no_pin {
            None
        } else {
            let pool = match &self.cpus {
                Some(text) => {
                    let cpus = parse_cpu_list(text)?;
                    if let Some(unknown) = cpus.iter().find(|c| !online_cpus.contains(c)) {
                        return Err(bad(
                            "--cpus",
                            format!("CPU {unknown} is not online (online: {online_cpus:?})"),
                        ));
                    }
                    cpus
                }
                None => online_cpus.to_vec(),
            };
            if pool.is_empty() {
                return Err(bad("--cpus", "no CPUs to pin to (use --no-pin)"));
            }
            Some((0..queues).map(|q| pool[q % pool.len()]).collect())
        };

        let addresses = self
            .addresses
            .iter()
            .map(|a| parse_cidr(a))
            .collect::<Result<Vec<_>, _>>()?;

        let overhead = if peer.is_ipv4() {
            OVERHEAD_V4
        } else {
            OVERHEAD_V6
        };
        let mtu = self.mtu.unwrap_or(UNDERLAY_MTU - overhead);
        let has_ipv6 = addresses.iter().any(|(a, _)| a.is_ipv6());
        let min_mtu = if has_ipv6 { 1280 } else { 576 };
        if !(min_mtu..=65535).contains(&mtu) {
            let why = if has_ipv6 {
                " (IPv6 needs at least 1280)"
            } else {
                ""
            };
            return Err(bad(
                "--mtu",
                format!("{mtu} is not between {min_mtu} and 65535{why}"),
            ));
        }

        if !(1..=4096).contains(&self.ring_depth) || !self.ring_depth.is_power_of_two() {
            return Err(bad(
                "--ring-depth",
                format!("{} is not a power of two in 1..=4096", self.ring_depth),
            ));
        }

        let engine = match self.engine.as_str() {
            "auto" => None,
            name => Some(Engine::from_name(name).ok_or_else(|| {
                bad(
                    "--engine",
                    format!("'{name}' is not one of auto, uring, uring-compat, poll"),
                )
            })?),
        };

        if self.busy_poll > MAX_BUSY_POLL_US {
            return Err(bad(
                "--busy-poll",
                format!(
                    "{} is not between 0 and {MAX_BUSY_POLL_US} microseconds",
                    self.busy_poll
                ),
            ));
        }

        let socket_buffer = parse_size(&self.socket_buffer)
            .filter(|b| (MIN_BUFFER_MEMORY..=MAX_BUFFER_MEMORY).contains(b))
            .ok_or_else(|| {
                bad(
                    "--socket-buffer",
                    format!(
                        "'{}' is not a size between 64K and 1G (bytes, or with K, M or G)",
                        self.socket_buffer
                    ),
                )
            })?;

        let buffer_memory = parse_size(&self.buffer_memory)
            .filter(|b| (MIN_BUFFER_MEMORY..=MAX_BUFFER_MEMORY).contains(b))
            .ok_or_else(|| {
                bad(
                    "--buffer-memory",
                    format!(
                        "'{}' is not a size between 64K and 1G (bytes, or with K, M or G)",
                        self.buffer_memory
                    ),
                )
            })?;

        if !(1..=1_000_000).contains(&self.tx_queue_len) {
            return Err(bad(
                "--tx-queue-len",
                format!("{} is not between 1 and 1000000", self.tx_queue_len),
            ));
        }

        let smallest = if peer.is_ipv4() { 552 } else { 1280 };
        let largest = mtu + overhead;
        let pmtu_floor = self
            .pmtu_floor
            .unwrap_or(DEFAULT_PMTU_FLOOR.min(largest).max(smallest));
        if !(smallest..=largest.max(smallest)).contains(&pmtu_floor) {
            return Err(bad(
                "--pmtu-floor",
                format!(
                    "{pmtu_floor} is not between {smallest} and {largest} (the MTU plus the \
                     outer headers)"
                ),
            ));
        }
        if self.peer_refresh > 86_400 {
            return Err(bad(
                "--peer-refresh",
                format!("{} is not between 0 and 86400 seconds", self.peer_refresh),
            ));
        }

        let dscp = self
            .tos
            .as_deref()
            .map(parse_tos)
            .transpose()?
            .unwrap_or(OuterDscp::Fixed(0));
        let metrics = self
            .metrics
            .as_deref()
            .map(parse_metrics_address)
            .transpose()?;
        let run_as = self
            .user
            .as_deref()
            .map(|user| validate_run_as(user, self.group.as_deref(), accounts))
            .transpose()?;

        Ok(Config {
            peer,
            listen,
            device_name: self.dev.clone(),
            queues,
            worker_cpus,
            addresses,
            mtu,
            stats_interval_secs: self.stats_interval,
            stats_json: self.stats_json.clone(),
            ring_depth: self.ring_depth,
            engine,
            busy_poll: std::time::Duration::from_micros(self.busy_poll),
            buffer_memory,
            socket_buffer,
            tx_queue_len: self.tx_queue_len,
            offloads: OffloadSwitches {
                tso: !(self.no_offload || self.no_tso),
                uso: !(self.no_offload || self.no_uso),
                udp_gso: !(self.no_offload || self.no_udp_gso),
                udp_gro: !(self.no_offload || self.no_udp_gro),
            },
            marking: Marking {
                dscp,
                ecn: !self.no_ecn,
            },
            pmtu_floor,
            peer_refresh: (peer_name.is_some() && self.peer_refresh > 0)
                .then(|| std::time::Duration::from_secs(self.peer_refresh)),
            peer_name,
            metrics,
            run_as,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["tunfwd", "--peer", "198.18.0.2:55555"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("clap accepts")
    }

    fn no_dns(_: &str, _: u16) -> Result<Vec<SocketAddr>, String> {
        Err("no DNS in tests".into())
    }

    /// A user database with `relay` (uid 990, group 990), `rootgroup` (primary gid 0), `root`,
    /// groups `relay`, `metrics` (991) and `wheel` (0); `broken` fails the lookup.
    struct FakeAccounts;

    impl Accounts for FakeAccounts {
        fn user(&self, name: &str) -> Result<Option<Account>, String> {
            let account = |uid, primary_gid| Ok(Some(Account { uid, primary_gid }));
            match name {
                "relay" => account(990, 990),
                "rootgroup" => account(992, 0),
                "root" => account(0, 0),
                "broken" => Err("NSS is down".into()),
                _ => Ok(None),
            }
        }

        fn group(&self, name: &str) -> Result<Option<u32>, String> {
            match name {
                "relay" => Ok(Some(990)),
                "metrics" => Ok(Some(991)),
                "wheel" => Ok(Some(0)),
                "broken" => Err("NSS is down".into()),
                _ => Ok(None),
            }
        }
    }

    fn check(extra: &[&str]) -> Result<Config, ConfigError> {
        args(extra).validate(&[0, 1, 2, 3], no_dns, &FakeAccounts)
    }

    #[test]
    fn defaults() {
        let c = check(&[]).unwrap();
        assert_eq!(c.peer, "198.18.0.2:55555".parse().unwrap());
        assert_eq!(c.listen, "0.0.0.0:55555".parse().unwrap());
        assert_eq!(c.device_name, "tunfwd0");
        assert_eq!(c.queues, 4);
        assert_eq!(c.worker_cpus, Some(vec![0, 1, 2, 3]));
        assert_eq!(c.mtu, 1472);
        assert_eq!(c.stats_interval_secs, 0);
    }

    #[test]
    fn ipv6_peer_changes_listen_family_and_mtu() {
        let c = Args::try_parse_from(["tunfwd", "--peer", "[2001:2::2]:7000"])
            .unwrap()
            .validate(&[0], no_dns, &FakeAccounts)
            .unwrap();
        assert_eq!(c.listen, "[::]:55555".parse().unwrap());
        assert_eq!(c.mtu, 1452);
        assert_eq!(c.queues, 1);
    }

    #[test]
    fn hostname_peer_is_resolved_preferring_ipv4() {
        let c = Args::try_parse_from(["tunfwd", "--peer", "relay.example:9000"])
            .unwrap()
            .validate(
                &[0],
                |host, port| {
                    assert_eq!((host, port), ("relay.example", 9000));
                    Ok(vec![
                        "[2001:2::9]:9000".parse().unwrap(),
                        "198.18.0.9:9000".parse().unwrap(),
                    ])
                },
                &FakeAccounts,
            )
            .unwrap();
        assert_eq!(c.peer, "198.18.0.9:9000".parse().unwrap());
        let e = Args::try_parse_from(["tunfwd", "--peer", "nowhere.invalid:9000"])
            .unwrap()
            .validate(&[0], no_dns, &FakeAccounts)
            .unwrap_err();
        assert_eq!(e.option, "--peer");
        assert!(e.problem.contains("cannot resolve"));
    }

    #[test]
    fn bad_values_name_their_option() {
        let cases: &[(&[&str], &str)] = &[
            (&["--queues", "0"], "--queues"),
            (&["--queues", "257"], "--queues"),
            (&["--dev", "a-name-longer-than-15"], "--dev"),
            (&["--dev", "bad/name"], "--dev"),
            (&["--mtu", "575"], "--mtu"),
            (&["--mtu", "65536"], "--mtu"),
            (&["--mtu", "1000", "--address", "2001:2::1/64"], "--mtu"),
            (&["--cpus", "9"], "--cpus"),
            (&["--cpus", "3-1"], "--cpus"),
            (&["--cpus", "x"], "--cpus"),
            (&["--address", "198.19.0.1"], "--address"),
            (&["--address", "198.19.0.1/33"], "--address"),
            (&["--address", "nonsense/24"], "--address"),
            (&["--listen", "[::]:55555"], "--listen"),
            (&["--listen", "nope"], "--listen"),
            (&["--ring-depth", "3"], "--ring-depth"),
            (&["--ring-depth", "0"], "--ring-depth"),
            (&["--tx-queue-len", "0"], "--tx-queue-len"),
            (&["--buffer-memory", "1X"], "--buffer-memory"),
            (&["--buffer-memory", "1.5M"], "--buffer-memory"),
            (&["--buffer-memory", "1K"], "--buffer-memory"),
            (&["--buffer-memory", "2G"], "--buffer-memory"),
            (&["--buffer-memory", "M"], "--buffer-memory"),
            (&["--socket-buffer", "8"], "--socket-buffer"),
            (&["--socket-buffer", "2G"], "--socket-buffer"),
            (&["--busy-poll", "10001"], "--busy-poll"),
            (&["--engine", "epoll"], "--engine"),
            (&["--metrics", "9101"], "--metrics"),
            (&["--metrics", "localhost:9101"], "--metrics"),
            (&["--metrics", "127.0.0.1:0"], "--metrics"),
            (&["--metrics", "127.0.0.1:65536"], "--metrics"),
            (&["--user", "nosuchuser"], "--user"),
            (&["--user", "broken"], "--user"),
            (&["--user", "root"], "--user"),
            (&["--user", "rootgroup"], "--user"),
            (&["--user", ""], "--user"),
            (&["--user", "a b"], "--user"),
            (&["--user", "relay", "--group", "nosuchgroup"], "--group"),
            (&["--user", "relay", "--group", "broken"], "--group"),
            (&["--user", "relay", "--group", "wheel"], "--group"),
        ];
        for (extra, option) in cases {
            let e = check(extra).expect_err(&format!("{extra:?} should fail"));
            assert_eq!(&e.option, option, "{extra:?}: {e}");
            assert!(e.to_string().starts_with(option));
        }
        for peer in [
            "198.18.0.2",
            "198.18.0.2:x",
            ":55555",
            "0.0.0.0:55555",
            "198.18.0.2:0",
            "a b:1",
        ] {
            let e = Args::try_parse_from(["tunfwd", "--peer", peer])
                .unwrap()
                .validate(&[0], no_dns, &FakeAccounts)
                .expect_err(peer);
            assert_eq!(e.option, "--peer", "{peer}");
        }
    }

    #[test]
    fn tos_and_ecn() {
        let c = check(&[]).unwrap();
        assert_eq!(c.marking, Marking::DEFAULT);
        assert_eq!(c.marking.dscp, OuterDscp::Fixed(0));
        assert!(c.marking.ecn);
        for (text, dscp) in [
            ("inherit", OuterDscp::Inherit),
            ("INHERIT", OuterDscp::Inherit),
            ("0xb8", OuterDscp::Fixed(0xb8)),
            ("184", OuterDscp::Fixed(184)),
            ("0", OuterDscp::Fixed(0)),
            ("0XFC", OuterDscp::Fixed(0xfc)),
        ] {
            assert_eq!(
                check(&["--tos", text]).unwrap().marking.dscp,
                dscp,
                "{text}"
            );
        }
        let c = check(&["--no-ecn", "--tos", "inherit"]).unwrap();
        assert_eq!(
            c.marking,
            Marking {
                dscp: OuterDscp::Inherit,
                ecn: false
            }
        );
        for (text, says) in [
            ("0xb9", "ECN bits"),
            ("2", "ECN bits"),
            ("256", "neither"),
            ("0x1fc", "neither"),
            ("0x", "neither"),
            ("ef", "neither"),
            ("", "neither"),
        ] {
            let e = check(&["--tos", text]).unwrap_err();
            assert_eq!(e.option, "--tos", "{text}");
            assert!(e.problem.contains(says), "{text}: {e}");
        }
    }

    /// The byte parser `--tos` and `tunload udp-flood --tos` share: ECN bits are the caller's
    /// business here, and either spelling of the hex prefix works.
    #[test]
    fn bytes_parse_in_decimal_and_either_hex_prefix() {
        for (text, byte) in [
            ("0", Some(0)),
            ("255", Some(255)),
            ("0xb9", Some(0xb9)),
            ("0XB9", Some(0xb9)),
            (" 0x03 ", Some(3)),
            ("3", Some(3)),
            ("256", None),
            ("0x100", None),
            ("0x", None),
            ("b9", None),
            ("-1", None),
            ("", None),
        ] {
            assert_eq!(parse_byte(text), byte, "{text:?}");
        }
    }

    #[test]
    fn metrics_address_and_run_as() {
        let c = check(&[]).unwrap();
        assert_eq!((c.metrics, c.run_as), (None, None));
        let c = check(&["--metrics", "127.0.0.1:9101"]).unwrap();
        assert_eq!(c.metrics, Some("127.0.0.1:9101".parse().unwrap()));
        let c = check(&["--metrics", "[::1]:9101"]).unwrap();
        assert_eq!(c.metrics, Some("[::1]:9101".parse().unwrap()));
        let c = check(&["--user", "relay"]).unwrap();
        assert_eq!(
            c.run_as,
            Some(RunAs {
                user: "relay".into(),
                uid: 990,
                group: None,
                gid: 990
            })
        );
        let c = check(&["--user", "rootgroup", "--group", "metrics"]).unwrap();
        assert_eq!(
            c.run_as,
            Some(RunAs {
                user: "rootgroup".into(),
                uid: 992,
                group: Some("metrics".into()),
                gid: 991
            })
        );
        assert!(
            Args::try_parse_from(["tunfwd", "--peer", "1.2.3.4:5", "--group", "relay"]).is_err(),
            "--group needs --user"
        );
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("512K"), Some(512 << 10));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("16m"), Some(16 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        for bad in ["", "K", "1.5M", "1MB", "x", "99999999999999999999G"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        assert_eq!(check(&[]).unwrap().buffer_memory, 1 << 20);
        assert_eq!(
            check(&["--buffer-memory", "16M"]).unwrap().buffer_memory,
            16 << 20
        );
        assert_eq!(check(&[]).unwrap().socket_buffer, 8 << 20);
        assert_eq!(
            check(&["--socket-buffer", "1M"]).unwrap().socket_buffer,
            1 << 20
        );
    }

    #[test]
    fn engine_and_busy_poll_are_taken_as_given() {
        let c = check(&[]).unwrap();
        assert_eq!((c.engine, c.busy_poll), (None, Duration::ZERO));
        let c = check(&["--engine", "poll", "--busy-poll", "50"]).unwrap();
        assert_eq!(c.engine, Some(Engine::Poll));
        assert_eq!(c.busy_poll, Duration::from_micros(50));
        assert_eq!(
            check(&["--engine", "uring-compat"]).unwrap().engine,
            Some(Engine::UringCompat)
        );
        assert_eq!(check(&["--engine", "auto"]).unwrap().engine, None);
    }

    #[test]
    fn cpus_round_robin_and_mtu_bounds() {
        let c = check(&["--queues", "5", "--cpus", "1,3"]).unwrap();
        assert_eq!(c.worker_cpus, Some(vec![1, 3, 1, 3, 1]));
        assert_eq!(check(&["--no-pin"]).unwrap().worker_cpus, None);
        assert_eq!(parse_cpu_list("0-2,2,5").unwrap(), vec![0, 1, 2, 5]);
    }

    #[test]
    fn cpu_lists_keep_first_places_and_refuse_huge_numbers() {
        assert_eq!(parse_cpu_list("2,0-3").unwrap(), vec![2, 0, 1, 3]);
        assert_eq!(parse_cpu_list("3,1,3,1").unwrap(), vec![3, 1]);
        assert_eq!(parse_cpu_list("1023").unwrap(), vec![1023]);
        for huge in [
            "0-18446744073709551615",
            "1024",
            "5-1024",
            "99999999999999999999",
        ] {
            let e = parse_cpu_list(huge).unwrap_err();
            assert_eq!(e.option, "--cpus", "{huge}");
        }
        // Through validation too: a duplicate must not pin two workers to one core.
        let c = check(&["--queues", "4", "--cpus", "2,0-3"]).unwrap();
        assert_eq!(c.worker_cpus, Some(vec![2, 0, 1, 3]));
        assert_eq!(check(&["--mtu", "576"]).unwrap().mtu, 576);
        assert_eq!(
            check(&["--mtu", "1280", "--address", "2001:2::1/64"])
                .unwrap()
                .mtu,
            1280
        );
        let c = check(&["--address", "198.19.0.1/24", "--address", "2001:2::1/64"]).unwrap();
        assert_eq!(
            c.addresses,
            vec![
                ("198.19.0.1".parse().unwrap(), 24),
                ("2001:2::1".parse().unwrap(), 64)
            ]
        );
    }

    #[test]
    fn offload_switches() {
        let all = OffloadSwitches {
            tso: true,
            uso: true,
            udp_gso: true,
            udp_gro: true,
        };
        assert_eq!(check(&[]).unwrap().offloads, all);
        let none = OffloadSwitches {
            tso: false,
            uso: false,
            udp_gso: false,
            udp_gro: false,
        };
        assert_eq!(check(&["--no-offload"]).unwrap().offloads, none);
        assert_eq!(
            check(&["--no-tso", "--no-udp-gro"]).unwrap().offloads,
            OffloadSwitches {
                tso: false,
                udp_gro: false,
                ..all
            }
        );
        assert_eq!(
            check(&["--no-uso", "--no-udp-gso"]).unwrap().offloads,
            OffloadSwitches {
                uso: false,
                udp_gso: false,
                ..all
            }
        );
    }

    #[test]
    fn clap_rejects_syntax_errors() {
        assert!(
            Args::try_parse_from(["tunfwd"]).is_err(),
            "--peer is required"
        );
        assert!(Args::try_parse_from(["tunfwd", "--peer", "1.2.3.4:5", "--queues", "x"]).is_err());
        assert!(
            Args::try_parse_from(["tunfwd", "--peer", "1.2.3.4:5", "--no-pin", "--cpus", "1"])
                .is_err()
        );
    }
}
