//! End-to-end benches on the namespace testbed: tunfwd against the kernel's VXLAN (the in-kernel
//! reference), the bare veth (the ceiling) and the simpletun-style baseline.
//!
//! This is a custom harness (`harness = false`) rather than criterion groups, for one reason: on a
//! 2-vCPU VM absolute numbers swing by tens of percent from minute to minute, so only ratios taken
//! in one sitting mean anything. The systems are therefore **interleaved**: each round runs every
//! scenario on every system in turn. Each row of the report is one real round, the median round by
//! the row's primary figure, with that round's other figures beside it: medians taken column by
//! column would put figures side by side that never occurred together. Criterion
//! runs one benchmark to completion before the next, which would compare systems measured minutes
//! apart. (The pure code is benched with criterion in `benches/micro.rs`.)
//!
//! Scenarios, with the names `BENCH_SCENARIOS` takes. With the project's own load tool, `tunload`:
//! * `rtt`: ICMP RTT on an idle tunnel.
//! * `tcp1`: single-stream TCP, with ICMP RTT under that load and CPU seconds per GB moved (all
//!   CPUs, from /proc/stat: both relays, the load tool and the kernel's softirq work all live on
//!   this machine).
//! * `tcp4`: four TCP streams.
//! * `udp64`, `udp1400`: 64-byte and 1400-byte UDP floods (sent, received, loss).
//! * `mss`: single-stream TCP with the inner MSS clamped to 536, 400 and 200 on both ends
//!   (`tunload --mss`), through tunfwd q1 with default options and through the kernel's VXLAN
//!   only, reported per MSS with the tunfwd/VXLAN ratio. Small segments multiply the packets per
//!   byte, and a 64 KB super-packet at MSS 400 or less holds more than 128 segments.
//! * `idle-cpu`: the CPU time the two relays take while nothing flows for 10 s (tunfwd rows
//!   only), as a percentage of one core per relay.
//!
//! With iperf3 and iputils ping, a load generator nobody here wrote, so that a figure that only
//! tunload produces stands out. They run through veth, VXLAN, the tunfwd rows that differ from the
//! defaults only in queue count or I/O engine, and tunfwd at its defaults; the report puts each
//! beside its tunload counterpart:
//! * `iperf-tcp1`, `iperf-tcp4`, `iperf-tcp64`: `iperf3 -P 1`, `-P 4`, `-P 64`, A to B; the
//!   receiver's Gbit/s.
//! * `iperf-tcp1-reverse`: `iperf3 -R`, one stream B to A.
//! * `iperf-udp64-1`, `iperf-udp64-8`: `iperf3 -u -l 64 -b 0` with 1 and with 8 flows (`-P 8`):
//!   packets received per second, sent per second, loss.
//! * `ping-idle`: `ping -i 0.01`, 500 echoes on an idle tunnel; average, p50 and p99 of the
//!   replies' times.
//! * `ping-loaded`: the same during one iperf3 TCP stream.
//!
//! When iperf3 or ping is missing the bench installs it with `scripts/bench-tools` (Debian's
//! `iperf3` and `iputils-ping`); if that fails, the scenarios that need it are skipped, with the
//! reason printed and written into the report.
//!
//! Systems, by the keys `BENCH_SYSTEMS` takes: `veth`, `vxlan`, `simpletun`; `tunfwd-default`
//! (no option but the testbed's overlay MTU, so as many queues as online CPUs); `tunfwd-q1`,
//! `tunfwd-q4` and their variations (`tunfwd-q1-nooffload`, `tunfwd-q1-d1`, ...: the key names
//! what differs from q1's defaults); `tunfwd-poll-q1` and `tunfwd-compat-q1` (`--engine poll` and
//! `--engine uring-compat`); `tunfwd-q1-bp10000` and `tunfwd-q2-bp10000` (`--busy-poll 10000`); `tunfwd-q2-txq500` (the
//! kernel's TUN queue length); the WireGuards of issue 20, each on both ends and configured with
//! `wg` (`tunfwd_testkit::wgpeer`): `wggo-upstream` (../shared/peers/wireguard-go),
//! `wggo-debian` (Debian's package), `boringtun` (boringtun-cli from crates.io), and tunfwd's
//! own WireGuard mode, `tunfwd-wireguard` (its defaults) and `tunfwd-wireguard-q1`, which are
//! skipped with the reason in the log and the report when this tunfwd refuses `--wireguard`.
//! A missing peer is installed with `scripts/wireguard-peers`, or skipped the same way; each
//! binary's path can be given in the environment (`wgpeer::Peers::from_env`). A tunfwd that does not start (an option this build lacks, say) is
//! reported as not started, in the log and in the report, and the rest of the run goes on.
//!
//! Needs root; without it, prints that and exits 0. Knobs (environment): `BENCH_ROUNDS` (3),
//! `BENCH_SECONDS` per traffic run (5), `BENCH_SYSTEMS` (comma list of system keys as in the
//! report's file names, e.g. `vxlan,tunfwd-q1,tunfwd-default,tunfwd-poll-q1`; all),
//! `BENCH_SCENARIOS` (comma list of the scenario names above; all), `BENCH_OUT` (directory,
//! `bench-results`). A system that takes part in none of the chosen scenarios is not started, so
//! the MSS scenario alone is `sudo BENCH_SCENARIOS=mss cargo bench --bench e2e`.
//!
//! `cargo bench --bench e2e` builds this tool and runs it (`benches/e2e.rs`); it can also run on
//! its own, as `target/release/e2e` after `cargo build --release -p tunfwd -p tunfwd-tools`. It
//! runs the `tunfwd`, `tunload` and `simpletun` binaries that sit beside it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tunfwd_testkit::testbed::{self, Host, Process, Testbed, endpoint, parse_json};
use tunfwd_testkit::wgpeer::{self, Device, Implementation, Peers};

const OVERLAY_MTU: u32 = 1420;
const SIMPLETUN_A: &str = "198.19.2.1";
const SIMPLETUN_B: &str = "198.19.2.2";

/// `--engine`: the I/O engine tunfwd's workers run, when not tunfwd's own choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Poll,
    UringCompat,
}

impl Engine {
    fn flag(self) -> &'static str {
        match self {
            Engine::Poll => "poll",
            Engine::UringCompat => "uring-compat",
        }
    }

    /// The system key's part, e.g. `tunfwd-poll-q1`.
    fn key(self) -> &'static str {
        match self {
            Engine::Poll => "poll",
            Engine::UringCompat => "compat",
        }
    }
}

/// One tunfwd configuration under test.
#[derive(Debug, Clone, PartialEq)]
struct TunfwdSetup {
    queues: usize,
    /// `--engine`; `None` leaves the choice to tunfwd (`auto`).
    engine: Option<Engine>,
    ring_depth: usize,
    offload: bool,
    tx_queue_len: u32,
    /// `--buffer-memory`.
    buffer_memory: &'static str,
    /// ECN propagation (RFC 6040); false runs the relays with `--no-ecn`.
    ecn: bool,
    /// ECN-capable load: the TCP endpoints negotiate ECN (`net.ipv4.tcp_ecn=1` in both
    /// namespaces) and the UDP flood marks ECT(0), so every outer header carries a mark and every
    /// send a TOS control message. Otherwise the load is Not-ECT, as the kernel's defaults make it.
    ect_load: bool,
    /// `--metrics` on (each relay serves it on its namespace's loopback): workers then send a
    /// snapshot every second and the main thread merges it, which is what the endpoint costs
    /// (scrapes themselves read the merged report and never reach a worker).
    metrics: bool,
    /// `--user nobody`: every worker thread runs without privileges after setup.
    unprivileged: bool,
    /// `--busy-poll` in microseconds; 0 leaves it off (the default).
    busy_poll_us: u64,
}

impl TunfwdSetup {
    const DEFAULT: TunfwdSetup = TunfwdSetup {
        queues: 1,
        engine: None,
        ring_depth: 256,
        offload: true,
        tx_queue_len: tunfwd::DEFAULT_TX_QUEUE_LEN,
        buffer_memory: "1M",
        ecn: true,
        ect_load: false,
        metrics: false,
        unprivileged: false,
        busy_poll_us: 0,
    };

    /// What differs from the defaults besides the queue count and the engine, which name and key
    /// spell before everything else, as `(name part, key part)`.
    fn variations(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        if self.ring_depth != Self::DEFAULT.ring_depth {
            v.push((
                format!(" depth{}", self.ring_depth),
                format!("-d{}", self.ring_depth),
            ));
        }
        if !self.offload {
            v.push((" no-offload".into(), "-nooffload".into()));
        }
        if self.tx_queue_len != Self::DEFAULT.tx_queue_len {
            v.push((
                format!(" txq{}", self.tx_queue_len),
                format!("-txq{}", self.tx_queue_len),
            ));
        }
        if self.buffer_memory != Self::DEFAULT.buffer_memory {
            v.push((
                format!(" bufmem{}", self.buffer_memory),
                format!("-bufmem{}", self.buffer_memory),
            ));
        }
        if !self.ecn {
            v.push((" no-ecn".into(), "-noecn".into()));
        }
        if self.ect_load {
            v.push((" ECT load".into(), "-ect".into()));
        }
        if self.metrics {
            v.push((" metrics".into(), "-metrics".into()));
        }
        if self.unprivileged {
            v.push((" user nobody".into(), "-nobody".into()));
        }
        if self.busy_poll_us != 0 {
            v.push((
                format!(" busy-poll {} µs", self.busy_poll_us),
                format!("-bp{}", self.busy_poll_us),
            ));
        }
        v
    }
}

#[derive(Debug, Clone, PartialEq)]
enum System {
    Veth,
    Vxlan,
    Simpletun,
    /// tunfwd with no option but the testbed's overlay MTU: as many queues as online CPUs, and
    /// whatever else tunfwd defaults to in the build under test. Unlike `Tunfwd(DEFAULT)`, which
    /// pins every value, this row follows tunfwd when its defaults change.
    TunfwdDefaults,
    Tunfwd(TunfwdSetup),
    /// The same WireGuard implementation on A and B (`wgpeer`): upstream wireguard-go, Debian's
    /// or boringtun, configured with `wg`, overlay MTU as every tunnel here.
    WireGuard(Implementation),
    /// tunfwd in WireGuard mode on A and B (`--wireguard`, configured with `wg`): at its
    /// defaults (`None`: one queue per CPU) or with `--queues N`.
    TunfwdWireGuard(Option<usize>),
}

impl System {
    fn name(&self) -> String {
        match self {
            System::Veth => "veth (ceiling)".into(),
            System::Vxlan => "kernel VXLAN".into(),
            System::Simpletun => "simpletun-style".into(),
            System::TunfwdDefaults => "tunfwd defaults".into(),
            System::WireGuard(implementation) => implementation.name().into(),
            System::TunfwdWireGuard(None) => "tunfwd --wireguard defaults".into(),
            System::TunfwdWireGuard(Some(queues)) => format!("tunfwd --wireguard q{queues}"),
            System::Tunfwd(t) => {
                format!(
                    "tunfwd {}q{}{}",
                    t.engine
                        .map(|e| format!("{} ", e.flag()))
                        .unwrap_or_default(),
                    t.queues,
                    t.variations()
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<String>()
                )
            }
        }
    }

    fn key(&self) -> String {
        match self {
            System::Veth => "veth".into(),
            System::Vxlan => "vxlan".into(),
            System::Simpletun => "simpletun".into(),
            System::TunfwdDefaults => "tunfwd-default".into(),
            System::WireGuard(implementation) => implementation.key().into(),
            System::TunfwdWireGuard(None) => "tunfwd-wireguard".into(),
            System::TunfwdWireGuard(Some(queues)) => format!("tunfwd-wireguard-q{queues}"),
            System::Tunfwd(t) => {
                format!(
                    "tunfwd-{}q{}{}",
                    t.engine
                        .map(|e| format!("{}-", e.key()))
                        .unwrap_or_default(),
                    t.queues,
                    t.variations()
                        .iter()
                        .map(|(_, k)| k.as_str())
                        .collect::<String>()
                )
            }
        }
    }

    /// B's address for this system's traffic.
    fn target(&self) -> &'static str {
        match self {
            System::Veth => testbed::B_UNDERLAY,
            System::Vxlan => testbed::B_VXLAN4,
            System::Simpletun => SIMPLETUN_B,
            System::TunfwdDefaults
            | System::Tunfwd(_)
            | System::WireGuard(_)
            | System::TunfwdWireGuard(_) => testbed::B_TUNNEL4,
        }
    }

    /// Whether the iperf3 and ping scenarios run on this system: the references, and the tunfwd
    /// rows that differ from the defaults only in queue count or I/O engine. The other rows vary
    /// one option each, which tunload's scenarios already measure; eight more runs on each would
    /// add minutes per round.
    fn compares_load_tools(&self) -> bool {
        match self {
            System::Veth | System::Vxlan | System::TunfwdDefaults => true,
            // Issue 20 compares the WireGuards on every shape.
            System::WireGuard(_) | System::TunfwdWireGuard(_) => true,
            System::Simpletun => false,
            // Busy polling is the latency option: ping, above all, measures what it does. The
            // TUN queue's length is what small packets and many flows test.
            System::Tunfwd(t) => {
                t.variations().is_empty()
                    || t.busy_poll_us != 0
                    || t.tx_queue_len != TunfwdSetup::DEFAULT.tx_queue_len
            }
        }
    }

    /// Starts the system's processes (none for the kernel's own paths). On an error, whatever did
    /// start has been stopped again.
    fn start(&self, bed: &Testbed, bins: &Bins) -> io::Result<Vec<Running>> {
        match self {
            System::WireGuard(implementation) => {
                start_wireguard(bed, &bins.peers, *implementation, &[])
            }
            System::TunfwdWireGuard(queues) => {
                let queues = queues.map(|q| q.to_string());
                let mut extra = Vec::new();
                if let Some(q) = &queues {
                    extra.extend(["--queues", q.as_str()]);
                }
                start_wireguard(bed, &bins.peers, Implementation::Tunfwd, &extra)
            }
            _ => Ok(self
                .start_processes(bed, bins)?
                .into_iter()
                .map(Running::Process)
                .collect()),
        }
    }

    fn start_processes(&self, bed: &Testbed, bins: &Bins) -> io::Result<Vec<Process>> {
        match self {
            System::Veth | System::Vxlan => Ok(Vec::new()),
            System::WireGuard(_) | System::TunfwdWireGuard(_) => {
                unreachable!("started by System::start")
            }
            System::TunfwdDefaults => {
                let mtu = OVERLAY_MTU.to_string();
                let args = ["--mtu", mtu.as_str()];
                let a = bed.start_tunfwd(Host::A, "bench-tunfwd-a", &args)?;
                let b = bed.start_tunfwd(Host::B, "bench-tunfwd-b", &args)?;
                Ok(vec![a, b])
            }
            System::Tunfwd(t) => {
                let (queues, mtu, depth, txq, busy_poll) = (
                    t.queues.to_string(),
                    OVERLAY_MTU.to_string(),
                    t.ring_depth.to_string(),
                    t.tx_queue_len.to_string(),
                    t.busy_poll_us.to_string(),
                );
                let mut args = vec![
                    "--queues",
                    &queues,
                    "--mtu",
                    &mtu,
                    "--ring-depth",
                    &depth,
                    "--tx-queue-len",
                    &txq,
                    "--buffer-memory",
                    t.buffer_memory,
                ];
                if let Some(engine) = t.engine {
                    args.extend(["--engine", engine.flag()]);
                }
                if !t.offload {
                    args.push("--no-offload");
                }
                if !t.ecn {
                    args.push("--no-ecn");
                }
                if t.metrics {
                    args.extend(["--metrics", "127.0.0.1:9101"]);
                }
                if t.unprivileged {
                    args.extend(["--user", "nobody"]);
                }
                if t.busy_poll_us != 0 {
                    args.extend(["--busy-poll", &busy_poll]);
                }
                let a = bed.start_tunfwd(Host::A, "bench-tunfwd-a", &args)?;
                let b = bed.start_tunfwd(Host::B, "bench-tunfwd-b", &args)?;
                Ok(vec![a, b])
            }
            System::Simpletun => {
                let mut server = bed.spawn(
                    Host::B,
                    "simpletun-b",
                    &bins.simpletun,
                    &strings(&[
                        "--dev",
                        "stun0",
                        "--address",
                        &format!("{SIMPLETUN_B}/24"),
                        "--mtu",
                        &OVERLAY_MTU.to_string(),
                        "--listen",
                        &endpoint(testbed::B_UNDERLAY, 7000),
                    ]),
                )?;
                wait_for_text(&mut server, "waiting on")?;
                let mut client = bed.spawn(
                    Host::A,
                    "simpletun-a",
                    &bins.simpletun,
                    &strings(&[
                        "--dev",
                        "stun0",
                        "--address",
                        &format!("{SIMPLETUN_A}/24"),
                        "--mtu",
                        &OVERLAY_MTU.to_string(),
                        "--connect",
                        &endpoint(testbed::B_UNDERLAY, 7000),
                    ]),
                )?;
                wait_for_text(&mut client, "connected")?;
                wait_for_text(&mut server, "connected")?;
                Ok(vec![server, client])
            }
        }
    }
}

/// A system's running part: a process, or a WireGuard device (a process with its API socket and
/// key file, cleaned up on drop).
enum Running {
    Process(Process),
    Device(Device),
}

impl Running {
    fn pid(&self) -> Option<u32> {
        match self {
            Running::Process(p) => p.pid(),
            Running::Device(d) => d.process().pid(),
        }
    }
}

/// The WireGuard port on A and on B.
const WIREGUARD_PORT: u16 = 51820;

/// `implementation` on A and on B with the testbed's overlay addresses at `OVERLAY_MTU`, each the
/// other's peer with an endpoint (so either may initiate), `extra` given to each program; then
/// a first exchange of pings, and a wait until both report a handshake, so that no scenario
/// measures the handshake.
fn start_wireguard(
    bed: &Testbed,
    peers: &Peers,
    implementation: Implementation,
    extra: &[&str],
) -> io::Result<Vec<Running>> {
    let mut devices = Vec::new();
    for (host, v4, v6, tag) in [
        (Host::A, testbed::A_TUNNEL4, testbed::A_TUNNEL6, "bwa"),
        (Host::B, testbed::B_TUNNEL4, testbed::B_TUNNEL6, "bwb"),
    ] {
        let config = wgpeer::Interface {
            keys: wgpeer::generate_keys(&peers.wg)?,
            listen_port: WIREGUARD_PORT,
            addresses: vec![format!("{v4}/24"), format!("{v6}/64")],
            mtu: OVERLAY_MTU,
        };
        let interface = wgpeer::interface_name(tag);
        devices.push(Device::start_with(
            bed,
            peers,
            implementation,
            host,
            &interface,
            &config,
            extra,
        )?);
    }
    let underlay = |address: &str| -> SocketAddr {
        format!("{address}:{WIREGUARD_PORT}")
            .parse()
            .expect("an underlay endpoint")
    };
    let (a, b) = (&devices[0], &devices[1]);
    wgpeer::join(
        a,
        &[
            &format!("{}/32", testbed::A_TUNNEL4),
            &format!("{}/128", testbed::A_TUNNEL6),
        ],
        Some(underlay(testbed::A_UNDERLAY)),
        b,
        &[
            &format!("{}/32", testbed::B_TUNNEL4),
            &format!("{}/128", testbed::B_TUNNEL6),
        ],
        Some(underlay(testbed::B_UNDERLAY)),
    )?;
    // The first echo waits for the handshake; the result does not matter, the handshake does.
    let _ = bed.tunload(
        Host::A,
        "bench-wireguard-warmup",
        &[
            "ping",
            "--to",
            testbed::B_TUNNEL4,
            "--count",
            "5",
            "--interval-ms",
            "200",
        ],
        Duration::from_secs(20),
    );
    for (device, other) in [(a, b), (b, a)] {
        wgpeer::dump_when(&peers.wg, &device.interface, Duration::from_secs(10), |d| {
            d.peer(&other.keys.public)
                .is_some_and(|p| p.latest_handshake != 0)
        })?;
    }
    Ok(devices.into_iter().map(Running::Device).collect())
}

/// Sets `net.ipv4.tcp_ecn` in both relay namespaces: "1" asks for ECN on every connection, "2"
/// (the kernel's default) only accepts it.
fn set_tcp_ecn(bed: &Testbed, value: &str) {
    for host in [Host::A, Host::B] {
        let status = std::process::Command::new("ip")
            .args(["netns", "exec", &bed.namespace(host), "sysctl", "-qw"])
            .arg(format!("net.ipv4.tcp_ecn={value}"))
            .status()
            .expect("running sysctl");
        assert!(status.success(), "setting net.ipv4.tcp_ecn={value}");
    }
}

/// Whether the system's load is ECN-capable (see `TunfwdSetup::ect_load`).
fn ect_load(system: &System) -> bool {
    matches!(system, System::Tunfwd(t) if t.ect_load)
}

/// What a round measures on a system; `name` is what `BENCH_SCENARIOS` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    IdleRtt,
    Tcp1,
    Tcp4,
    Udp64,
    Udp1400,
    InnerMss,
    IperfTcp1,
    IperfTcp4,
    IperfTcp64,
    IperfTcp1Reverse,
    IperfUdp64OneFlow,
    IperfUdp64EightFlows,
    PingIdle,
    PingLoaded,
    IdleCpu,
}

impl Scenario {
    const ALL: [Scenario; 15] = [
        Scenario::IdleRtt,
        Scenario::Tcp1,
        Scenario::Tcp4,
        Scenario::Udp64,
        Scenario::Udp1400,
        Scenario::InnerMss,
        Scenario::IperfTcp1,
        Scenario::IperfTcp4,
        Scenario::IperfTcp64,
        Scenario::IperfTcp1Reverse,
        Scenario::IperfUdp64OneFlow,
        Scenario::IperfUdp64EightFlows,
        Scenario::PingIdle,
        Scenario::PingLoaded,
        Scenario::IdleCpu,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::IdleRtt => "rtt",
            Scenario::Tcp1 => "tcp1",
            Scenario::Tcp4 => "tcp4",
            Scenario::Udp64 => "udp64",
            Scenario::Udp1400 => "udp1400",
            Scenario::InnerMss => "mss",
            Scenario::IperfTcp1 => "iperf-tcp1",
            Scenario::IperfTcp4 => "iperf-tcp4",
            Scenario::IperfTcp64 => "iperf-tcp64",
            Scenario::IperfTcp1Reverse => "iperf-tcp1-reverse",
            Scenario::IperfUdp64OneFlow => "iperf-udp64-1",
            Scenario::IperfUdp64EightFlows => "iperf-udp64-8",
            Scenario::PingIdle => "ping-idle",
            Scenario::PingLoaded => "ping-loaded",
            Scenario::IdleCpu => "idle-cpu",
        }
    }

    /// The MSS scenario compares tunfwd's default setup with the kernel's VXLAN only: it is about
    /// small segments, not about tunfwd's options, and three more runs per system would add
    /// minutes per round. The iperf3 and ping scenarios run where `System::compares_load_tools`
    /// says.
    fn applies_to(self, system: &System) -> bool {
        match self {
            Scenario::InnerMss => {
                *system == System::Vxlan || *system == System::Tunfwd(TunfwdSetup::DEFAULT)
            }
            _ if !self.tools().is_empty() => system.compares_load_tools(),
            // The kernel's own tunnels have no process of their own to measure.
            Scenario::IdleCpu => matches!(
                system,
                System::TunfwdDefaults
                    | System::Tunfwd(_)
                    | System::WireGuard(_)
                    | System::TunfwdWireGuard(_)
            ),
            _ => true,
        }
    }

    /// The tools from outside the project that the scenario runs; tunload is built with the bench.
    fn tools(self) -> &'static [LoadTool] {
        match self {
            Scenario::IperfTcp1
            | Scenario::IperfTcp4
            | Scenario::IperfTcp64
            | Scenario::IperfTcp1Reverse
            | Scenario::IperfUdp64OneFlow
            | Scenario::IperfUdp64EightFlows => &[LoadTool::Iperf3],
            Scenario::PingIdle => &[LoadTool::Ping],
            Scenario::PingLoaded => &[LoadTool::Iperf3, LoadTool::Ping],
            _ => &[],
        }
    }

    /// What an iperf3-only scenario runs.
    fn iperf_load(self) -> Option<IperfLoad> {
        let tcp = |streams, reverse, gbit_key| {
            Some(IperfLoad::Tcp {
                streams,
                reverse,
                gbit_key,
            })
        };
        match self {
            Scenario::IperfTcp1 => tcp(1, false, "iperf_tcp1_gbit_s"),
            Scenario::IperfTcp4 => tcp(4, false, "iperf_tcp4_gbit_s"),
            Scenario::IperfTcp64 => tcp(64, false, "iperf_tcp64_gbit_s"),
            Scenario::IperfTcp1Reverse => tcp(1, true, "iperf_tcp1_reverse_gbit_s"),
            Scenario::IperfUdp64OneFlow => Some(IperfLoad::Udp64 {
                flows: 1,
                keys: IPERF_UDP64_ONE_FLOW,
            }),
            Scenario::IperfUdp64EightFlows => Some(IperfLoad::Udp64 {
                flows: 8,
                keys: IPERF_UDP64_EIGHT_FLOWS,
            }),
            _ => None,
        }
    }

    /// Whether the scenario fills the main (tunload) table.
    fn in_main_table(self) -> bool {
        matches!(
            self,
            Scenario::IdleRtt
                | Scenario::Tcp1
                | Scenario::Tcp4
                | Scenario::Udp64
                | Scenario::Udp1400
        )
    }
}

/// A load generator from outside the project, run when installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoadTool {
    Iperf3,
    Ping,
}

impl LoadTool {
    const ALL: [LoadTool; 2] = [LoadTool::Iperf3, LoadTool::Ping];

    fn command(self) -> &'static str {
        match self {
            LoadTool::Iperf3 => "iperf3",
            LoadTool::Ping => "ping",
        }
    }

    /// The first line of the tool's version output, or `None` when it does not run.
    fn version(self) -> Option<String> {
        let flag = match self {
            LoadTool::Iperf3 => "--version",
            LoadTool::Ping => "-V",
        };
        let out = Command::new(self.command()).arg(flag).output().ok()?;
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
    }
}

/// One iperf3 client run and the sample keys of what it reports.
#[derive(Debug, Clone, Copy)]
enum IperfLoad {
    /// Bulk TCP with `-P streams`, A to B or (`-R`) B to A: the receiver's Gbit/s.
    Tcp {
        streams: usize,
        reverse: bool,
        gbit_key: &'static str,
    },
    /// `-u -l 64 -b 0` with `-P flows`: 64-byte datagrams as fast as iperf3 sends them.
    Udp64 { flows: usize, keys: UdpKeys },
}

/// Sample keys of a UDP flood: packets received and sent per second, and the loss fraction.
#[derive(Debug, Clone, Copy)]
struct UdpKeys {
    rx_pps: &'static str,
    sent_pps: &'static str,
    loss: &'static str,
}

const IPERF_UDP64_ONE_FLOW: UdpKeys = UdpKeys {
    rx_pps: "iperf_udp64_1_rx_pps",
    sent_pps: "iperf_udp64_1_sent_pps",
    loss: "iperf_udp64_1_loss",
};
const IPERF_UDP64_EIGHT_FLOWS: UdpKeys = UdpKeys {
    rx_pps: "iperf_udp64_8_rx_pps",
    sent_pps: "iperf_udp64_8_sent_pps",
    loss: "iperf_udp64_8_loss",
};

/// Sample keys of a ping run: the replies' average, p50 and p99 in µs, and the loss fraction.
struct PingKeys {
    avg_us: &'static str,
    p50_us: &'static str,
    p99_us: &'static str,
    loss: &'static str,
}

const PING_IDLE: PingKeys = PingKeys {
    avg_us: "ping_idle_avg_us",
    p50_us: "ping_idle_p50_us",
    p99_us: "ping_idle_p99_us",
    loss: "ping_idle_loss",
};
const PING_LOADED: PingKeys = PingKeys {
    avg_us: "ping_loaded_avg_us",
    p50_us: "ping_loaded_p50_us",
    p99_us: "ping_loaded_p99_us",
    loss: "ping_loaded_loss",
};

/// The port of the iperf3 server on B. tunload's TCP sink has iperf3's own default, 5201.
const IPERF_PORT: u16 = 5301;
/// `ping -i`: an echo every 10 ms, as tunload's pings go every 5 to 20 ms (iputils 20221126 lets
/// anyone go down to 2 ms; older ones needed root below 200 ms, which the bench has).
const PING_INTERVAL_MS: u64 = 10;
/// Echoes in `ping-idle`: 5 s at `PING_INTERVAL_MS`, so that 5 replies lie beyond the p99.
const PING_IDLE_COUNT: u64 = 500;

/// One inner MSS of the `mss` scenario, with its sample keys.
struct MssCase {
    mss: u32,
    gbit_key: &'static str,
    in_effect_key: &'static str,
}

/// 536 is the default MSS for IPv4 (RFC 9293, 3.7.1); 400 and 200 put more than 128 segments into
/// a 64 KB super-packet, more than one UDP GSO send carries (`UDP_MAX_SEGMENTS`, 128 since Linux
/// 6.9).
const MSS_CASES: [MssCase; 3] = [
    MssCase {
        mss: 536,
        gbit_key: "mss536_gbit_s",
        in_effect_key: "mss536_in_effect",
    },
    MssCase {
        mss: 400,
        gbit_key: "mss400_gbit_s",
        in_effect_key: "mss400_in_effect",
    },
    MssCase {
        mss: 200,
        gbit_key: "mss200_gbit_s",
        in_effect_key: "mss200_in_effect",
    },
];

struct Bins {
    tunfwd: PathBuf,
    tunload: PathBuf,
    simpletun: PathBuf,
    /// `wg`, the WireGuard peers and this tunfwd for its WireGuard mode.
    peers: Peers,
}

/// The workspace this tool was built in: where `bench-results/` and `scripts/` are.
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tools/ is inside the workspace")
}

/// The binary `name` beside this one, where cargo builds every binary of one profile; panics,
/// saying how to build it, if it is not there.
fn sibling(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    let path = me.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build it beside {} (cargo build --release -p tunfwd -p tunfwd-tools)",
        path.display(),
        me.display()
    );
    path
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Waits up to 10 s for `text` on the process's stderr.
fn wait_for_text(p: &mut Process, text: &str) -> io::Result<()> {
    wait_for_output(p, text, Process::stderr)
}

/// Waits up to 10 s for `text` in the output `read` returns (stdout or stderr); an error, with
/// both, if it never appears or the process exits first.
fn wait_for_output(p: &mut Process, text: &str, read: fn(&Process) -> String) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !read(p).contains(text) {
        let exited = p.try_status()?;
        if exited.is_some() || Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "{text:?} never appeared{}: {}{}",
                exited.map(|s| format!(" ({s})")).unwrap_or_default(),
                p.stdout(),
                p.stderr()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

type Sample = BTreeMap<&'static str, f64>;

struct Runner<'a> {
    bed: &'a Testbed,
    seconds: u64,
    out: PathBuf,
    stamp: String,
}

impl Runner<'_> {
    /// TCP bulk over `system` with `streams` streams; `mss` clamps the inner MSS on both ends,
    /// `with_ping` measures RTT under the load into that `.hgrm` file.
    fn tcp(
        &self,
        system: &System,
        streams: usize,
        mss: Option<&MssCase>,
        with_ping: Option<&str>,
    ) -> Sample {
        let target = endpoint(system.target(), 5201);
        let (secs, sink_secs, streams_arg) = (
            self.seconds.to_string(),
            (self.seconds + 60).to_string(),
            streams.to_string(),
        );
        let mss_arg = mss.map(|c| c.mss.to_string());
        let mut sink_args = vec![
            "tcp-sink",
            "--listen",
            "0.0.0.0:5201",
            "--streams",
            &streams_arg,
            "--seconds",
            &sink_secs,
        ];
        let mut send_args = vec![
            "tcp-send",
            "--to",
            &target,
            "--seconds",
            &secs,
            "--streams",
            &streams_arg,
            // Counted, not checked, as iperf3 does: the tests check every byte, and here
            // the pattern's CPU would come out of the 2 cores the systems share.
            "--unchecked",
        ];
        if let Some(mss) = &mss_arg {
            // Both ends: each one's clamp goes out in its SYN or SYN-ACK.
            sink_args.extend(["--mss", mss]);
            send_args.extend(["--mss", mss]);
        }
        let mut sink = self
            .bed
            .tunload_background(Host::B, "bench-tcp-sink", &sink_args)
            .unwrap();
        let cpu_before = testbed::busy_cpu_seconds();
        let mut sender = self
            .bed
            .tunload_background(Host::A, "bench-tcp-send", &send_args)
            .unwrap();
        let mut sample = Sample::new();
        if let Some(hgrm) = with_ping {
            std::thread::sleep(Duration::from_millis(500));
            let count = ((self.seconds * 1000).saturating_sub(1500) / 20)
                .max(10)
                .to_string();
            let out = self.bed.tunload(
                Host::A,
                "bench-ping-loaded",
                &[
                    "ping",
                    "--to",
                    system.target(),
                    "--count",
                    &count,
                    "--interval-ms",
                    "20",
                    "--hgrm",
                    hgrm,
                ],
                Duration::from_secs(self.seconds + 30),
            );
            if let Ok(v) = out.and_then(|o| parse_json(&o)) {
                sample.insert(
                    "loaded_rtt_p50_us",
                    v["rtt_us"]["p50"].as_f64().unwrap_or(f64::NAN),
                );
                sample.insert(
                    "loaded_rtt_p99_us",
                    v["rtt_us"]["p99"].as_f64().unwrap_or(f64::NAN),
                );
                sample.insert(
                    "loaded_ping_loss",
                    1.0 - v["received"].as_f64().unwrap_or(0.0) / v["sent"].as_f64().unwrap_or(1.0),
                );
            }
        }
        let ok = sender
            .wait_for(Duration::from_secs(self.seconds + 90))
            .map(|s| s.success())
            .unwrap_or(false);
        let cpu = testbed::busy_cpu_seconds() - cpu_before;
        if ok {
            let _ = sink.wait_for(Duration::from_secs(30));
        } else {
            // Nothing to wait for: the sink may be draining a stalled stream until its deadline.
            let _ = sink.terminate(Duration::from_secs(3));
        }
        let key = match (mss, streams) {
            (Some(c), _) => c.gbit_key,
            (None, 1) => "tcp1_gbit_s",
            (None, _) => "tcp4_gbit_s",
        };
        match parse_json(&sender.stdout()) {
            Ok(v) if ok => {
                let gbit = v["gbit_per_s"].as_f64().unwrap_or(0.0);
                sample.insert(key, gbit);
                let gb = v["bytes"].as_f64().unwrap_or(0.0) / 1e9;
                if streams == 1 && mss.is_none() && gb > 0.0 {
                    sample.insert("cpu_s_per_gb", cpu / gb);
                }
                if let Some(c) = mss {
                    sample.insert(c.in_effect_key, v["mss"].as_f64().unwrap_or(f64::NAN));
                }
            }
            _ => {
                eprintln!(
                    "  {} tcp x{streams}{} failed: {}",
                    system.name(),
                    mss.map(|c| format!(" at MSS {}", c.mss))
                        .unwrap_or_default(),
                    sender.stderr()
                );
                sample.insert(key, 0.0);
            }
        }
        sample
    }

    fn udp(&self, system: &System, size: usize) -> Sample {
        let mut sink = self
            .bed
            .tunload_background(
                Host::B,
                "bench-udp-sink",
                &[
                    "udp-sink",
                    "--listen",
                    "0.0.0.0:6000",
                    "--idle-ms",
                    "700",
                    "--seconds",
                    &(self.seconds + 20).to_string(),
                ],
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let (to, size_arg, secs) = (
            endpoint(system.target(), 6000),
            size.to_string(),
            self.seconds.min(3).to_string(),
        );
        let mut flood_args = vec![
            "udp-flood",
            "--to",
            &to,
            "--size",
            &size_arg,
            "--seconds",
            &secs,
        ];
        if ect_load(system) {
            flood_args.extend(["--tos", "2"]);
        }
        let flood = self.bed.tunload(
            Host::A,
            "bench-udp-flood",
            &flood_args,
            Duration::from_secs(30),
        );
        let _ = sink.wait_for(Duration::from_secs(self.seconds + 30));
        let mut sample = Sample::new();
        let prefix = if size <= 64 { "udp64" } else { "udp1400" };
        if let (Ok(f), Ok(s)) = (
            flood.and_then(|o| parse_json(&o)),
            parse_json(&sink.stdout()),
        ) {
            let sent = f["sent"].as_f64().unwrap_or(0.0);
            let received = s["received"].as_f64().unwrap_or(0.0);
            let flood_secs = f["seconds"].as_f64().unwrap_or(1.0);
            sample.insert(
                if size <= 64 {
                    "udp64_sent_pps"
                } else {
                    "udp1400_sent_pps"
                },
                sent / flood_secs,
            );
            // Received per second of the flood's duration: what got through while it ran.
            sample.insert(
                if size <= 64 {
                    "udp64_rx_pps"
                } else {
                    "udp1400_rx_pps"
                },
                received / flood_secs,
            );
            sample.insert(
                if size <= 64 {
                    "udp64_loss"
                } else {
                    "udp1400_loss"
                },
                if sent > 0.0 {
                    1.0 - received / sent
                } else {
                    f64::NAN
                },
            );
        } else {
            eprintln!("  {} {prefix} failed", system.name());
        }
        sample
    }

    fn idle_ping(&self, system: &System) -> Sample {
        let mut sample = Sample::new();
        let out = self.bed.tunload(
            Host::A,
            "bench-ping-idle",
            &[
                "ping",
                "--to",
                system.target(),
                "--count",
                "200",
                "--interval-ms",
                "5",
            ],
            Duration::from_secs(20),
        );
        if let Ok(v) = out.and_then(|o| parse_json(&o)) {
            sample.insert(
                "idle_rtt_p50_us",
                v["rtt_us"]["p50"].as_f64().unwrap_or(f64::NAN),
            );
            sample.insert(
                "idle_rtt_p99_us",
                v["rtt_us"]["p99"].as_f64().unwrap_or(f64::NAN),
            );
        }
        sample
    }

    /// Starts an iperf3 server on B that serves one test and exits (`--one-off`), and waits until
    /// it listens. Dropping the `Process` stops a server that is still there.
    fn iperf_server(&self) -> io::Result<Process> {
        let mut server = self.bed.spawn(
            Host::B,
            "bench-iperf3-server",
            Path::new(LoadTool::Iperf3.command()),
            &strings(&[
                "--server",
                "--one-off",
                "--port",
                &IPERF_PORT.to_string(),
                // Output to a file is block-buffered; this makes "Server listening" appear at once.
                "--forceflush",
            ]),
        )?;
        wait_for_output(&mut server, "Server listening", Process::stdout)?;
        Ok(server)
    }

    /// Starts an iperf3 client on A against `system`'s B for `self.seconds`, JSON report on its
    /// stdout, with `extra` options.
    fn iperf_client(&self, system: &System, name: &str, extra: &[&str]) -> io::Result<Process> {
        let mut args = strings(&[
            "--client",
            system.target(),
            "--port",
            &IPERF_PORT.to_string(),
            "--time",
            &self.seconds.to_string(),
            "--json",
            "--connect-timeout",
            "5000",
        ]);
        args.extend(strings(extra));
        self.bed
            .spawn(Host::A, name, Path::new(LoadTool::Iperf3.command()), &args)
    }

    /// Waits for an iperf3 client (killing it past the run's length plus 30 s) and then for its
    /// one-off server, and returns the client's JSON report.
    fn iperf_report(
        &self,
        client: &mut Process,
        server: &mut Process,
    ) -> io::Result<serde_json::Value> {
        let status = client.wait_for(Duration::from_secs(self.seconds + 30))?;
        // The server exits after its one test; one that has not by now is killed on drop.
        let _ = server.wait_for(Duration::from_secs(5));
        let text = client.stdout();
        let report: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            io::Error::other(format!(
                "iperf3 ({status}) printed no JSON report ({e}): {text}{}",
                client.stderr()
            ))
        })?;
        // iperf3 3.12 exits 0 when a test fails, and says why in the report.
        if let Some(error) = report["error"].as_str() {
            return Err(io::Error::other(format!("iperf3: {error}")));
        }
        if !status.success() {
            return Err(io::Error::other(format!(
                "iperf3 exited with {status}: {}",
                client.stderr()
            )));
        }
        Ok(report)
    }

    /// An iperf3 scenario: one server, one client with the scenario's options.
    fn iperf(&self, system: &System, scenario: Scenario) -> Sample {
        let mut sample = Sample::new();
        let Some(load) = scenario.iperf_load() else {
            return sample;
        };
        let streams = match load {
            IperfLoad::Tcp { streams, .. } => streams,
            IperfLoad::Udp64 { flows, .. } => flows,
        }
        .to_string();
        let mut extra = vec!["--parallel", &streams];
        match load {
            IperfLoad::Tcp { reverse: true, .. } => extra.push("--reverse"),
            IperfLoad::Tcp { .. } => {}
            IperfLoad::Udp64 { .. } => {
                extra.extend(["--udp", "--length", "64", "--bitrate", "0"]);
            }
        }
        let report = self.iperf_server().and_then(|mut server| {
            let mut client = self.iperf_client(system, "bench-iperf3-client", &extra)?;
            self.iperf_report(&mut client, &mut server)
        });
        let figures = report.and_then(|report| {
            let end = &report["end"];
            match load {
                IperfLoad::Tcp { gbit_key, .. } => {
                    let bits_per_s = json_number(end, &["sum_received", "bits_per_second"])?;
                    Ok(vec![(gbit_key, bits_per_s / 1e9)])
                }
                IperfLoad::Udp64 { keys, .. } => {
                    // In 3.12 `sum_received.packets` is what the receiver expected from the
                    // sequence numbers (received + lost); what arrived is its bytes over the
                    // fixed 64-byte length.
                    let received = json_number(end, &["sum_received", "bytes"])? / 64.0;
                    let received_secs = json_number(end, &["sum_received", "seconds"])?;
                    let sent = json_number(end, &["sum_sent", "packets"])?;
                    let sent_secs = json_number(end, &["sum_sent", "seconds"])?;
                    let lost_percent = json_number(end, &["sum", "lost_percent"])?;
                    Ok(vec![
                        (keys.rx_pps, received / received_secs),
                        (keys.sent_pps, sent / sent_secs),
                        (keys.loss, lost_percent / 100.0),
                    ])
                }
            }
        });
        match figures {
            Ok(figures) => sample.extend(figures),
            Err(e) => eprintln!("  {} {} failed: {e}", system.name(), scenario.name()),
        }
        sample
    }

    /// iputils ping from A to `system`'s B: up to `count` echoes every `PING_INTERVAL_MS`, for
    /// `deadline_secs` at most (`-w`), summarised from every reply's own time. On a busy machine
    /// ping paces itself slower than asked, so the loss is taken against the echoes its summary
    /// says it sent, not against `count`.
    fn ping(
        &self,
        system: &System,
        scenario: Scenario,
        count: u64,
        deadline_secs: u64,
        keys: &PingKeys,
    ) -> Sample {
        let args = strings(&[
            "-n",
            "-i",
            &format!("{:.3}", PING_INTERVAL_MS as f64 / 1000.0),
            "-c",
            &count.to_string(),
            "-W",
            "1",
            "-w",
            &deadline_secs.to_string(),
            system.target(),
        ]);
        let name = format!("bench-iputils-{}", scenario.name());
        let output = self
            .bed
            .spawn(Host::A, &name, Path::new(LoadTool::Ping.command()), &args)
            .and_then(|mut ping| {
                // Exit status 1 means some echoes went unanswered, which the loss reports.
                ping.wait_for(Duration::from_secs(deadline_secs + 10))?;
                Ok((ping.stdout(), ping.stderr()))
            });
        let mut sample = Sample::new();
        let (mut rtts, sent) = match output {
            Ok((stdout, stderr)) => {
                let rtts = reply_times_us(&stdout);
                if rtts.is_empty() {
                    eprintln!(
                        "  {} {}: no echo replies: {stdout}{stderr}",
                        system.name(),
                        scenario.name()
                    );
                    return sample;
                }
                (rtts, echoes_sent(&stdout).unwrap_or(f64::NAN))
            }
            Err(e) => {
                eprintln!("  {} {} failed: {e}", system.name(), scenario.name());
                return sample;
            }
        };
        rtts.sort_by(f64::total_cmp);
        sample.insert(keys.avg_us, rtts.iter().sum::<f64>() / rtts.len() as f64);
        sample.insert(keys.p50_us, percentile(&rtts, 0.50));
        sample.insert(keys.p99_us, percentile(&rtts, 0.99));
        sample.insert(keys.loss, 1.0 - rtts.len() as f64 / sent);
        sample
    }

    /// `ping-loaded`: ping while one iperf3 TCP stream runs from A to B. If the stream fails, the
    /// times were not taken under load and are dropped.
    fn ping_loaded(&self, system: &System) -> Sample {
        // From 0.5 s into the stream to 0.5 s before its end at the latest (`-w` takes whole
        // seconds), however slowly ping paces itself.
        let deadline_secs = self.seconds.saturating_sub(1).max(1);
        let count = deadline_secs * 1000 / PING_INTERVAL_MS;
        let load = self.iperf_server().and_then(|server| {
            let client = self.iperf_client(system, "bench-iperf3-load", &[])?;
            Ok((server, client))
        });
        let (mut server, mut client) = match load {
            Ok(processes) => processes,
            Err(e) => {
                eprintln!("  {} ping-loaded: no iperf3 load: {e}", system.name());
                return Sample::new();
            }
        };
        std::thread::sleep(Duration::from_millis(500));
        let mut sample = self.ping(
            system,
            Scenario::PingLoaded,
            count,
            deadline_secs,
            &PING_LOADED,
        );
        let load_gbit_s = self
            .iperf_report(&mut client, &mut server)
            .and_then(|report| json_number(&report["end"], &["sum_received", "bits_per_second"]));
        match load_gbit_s {
            Ok(bits_per_s) => {
                sample.insert("ping_loaded_load_gbit_s", bits_per_s / 1e9);
                sample
            }
            Err(e) => {
                eprintln!(
                    "  {} ping-loaded: the iperf3 load failed, times dropped: {e}",
                    system.name()
                );
                Sample::new()
            }
        }
    }

    /// Starts `system`, runs every scenario in `scenarios` that applies to it, in the order given,
    /// and stops it. An error if it does not start.
    fn round(
        &self,
        system: &System,
        bins: &Bins,
        round: usize,
        scenarios: &[Scenario],
    ) -> io::Result<Sample> {
        if ect_load(system) {
            set_tcp_ecn(self.bed, "1");
        }
        let sample = system.start(self.bed, bins).map(|processes| {
            let sample = self.scenarios(system, round, scenarios, &processes);
            drop(processes);
            sample
        });
        if ect_load(system) {
            set_tcp_ecn(self.bed, "2");
        }
        sample
    }

    fn scenarios(
        &self,
        system: &System,
        round: usize,
        scenarios: &[Scenario],
        processes: &[Running],
    ) -> Sample {
        let mut sample = Sample::new();
        for scenario in scenarios.iter().filter(|s| s.applies_to(system)) {
            match scenario {
                Scenario::IdleRtt => sample.extend(self.idle_ping(system)),
                Scenario::Tcp1 => {
                    let hgrm = self.out.join(format!(
                        "{}-{}-loaded-rtt-us.hgrm",
                        self.stamp,
                        system.key()
                    ));
                    sample.extend(self.tcp(
                        system,
                        1,
                        None,
                        (round == 0).then_some(hgrm.to_str().unwrap()),
                    ));
                    if round != 0 {
                        // The loaded-RTT histogram file is kept from round 0; later rounds still
                        // measure it.
                        let scratch = self.bed.path("loaded.hgrm");
                        sample.extend(
                            self.tcp(system, 1, None, Some(scratch.to_str().unwrap()))
                                .into_iter()
                                .filter(|(k, _)| k.starts_with("loaded")),
                        );
                    }
                }
                Scenario::Tcp4 => sample.extend(self.tcp(system, 4, None, None)),
                Scenario::Udp64 => sample.extend(self.udp(system, 64)),
                Scenario::Udp1400 => sample.extend(self.udp(system, 1372)),
                Scenario::InnerMss => {
                    for case in &MSS_CASES {
                        sample.extend(self.tcp(system, 1, Some(case), None));
                    }
                }
                Scenario::IperfTcp1
                | Scenario::IperfTcp4
                | Scenario::IperfTcp64
                | Scenario::IperfTcp1Reverse
                | Scenario::IperfUdp64OneFlow
                | Scenario::IperfUdp64EightFlows => sample.extend(self.iperf(system, *scenario)),
                Scenario::PingIdle => {
                    // What the relays spend on 100 echoes a second: busy polling spins after each.
                    let meter = CpuMeter::start(processes);
                    sample.extend(self.ping(
                        system,
                        Scenario::PingIdle,
                        PING_IDLE_COUNT,
                        // Twice the nominal time, and then some: see `ping`.
                        2 * PING_IDLE_COUNT * PING_INTERVAL_MS / 1000 + 3,
                        &PING_IDLE,
                    ));
                    if let Some(percent) = meter.and_then(|m| m.percent_per_process()) {
                        sample.insert("ping_idle_relay_cpu_pct", percent);
                    }
                }
                Scenario::PingLoaded => sample.extend(self.ping_loaded(system)),
                Scenario::IdleCpu => {
                    if let Some(percent) = idle_cpu_percent(processes) {
                        sample.insert("idle_cpu_pct", percent);
                    }
                }
            }
        }
        sample
    }
}

/// How long `idle-cpu` watches relays that carry nothing.
const IDLE_CPU_SECONDS: u64 = 10;

/// The CPU time the relays in `processes` took, all threads, while no traffic flowed for
/// `IDLE_CPU_SECONDS`, as a percentage of one core per relay. `None` without a process to watch.
fn idle_cpu_percent(processes: &[Running]) -> Option<f64> {
    // Let the relays settle after starting (and after the previous scenario's traffic).
    std::thread::sleep(Duration::from_secs(1));
    let meter = CpuMeter::start(processes)?;
    std::thread::sleep(Duration::from_secs(IDLE_CPU_SECONDS));
    meter.percent_per_process()
}

/// The CPU time (utime + stime from /proc/PID/stat, all threads) that a set of processes takes
/// from `start` to `percent_per_process`.
struct CpuMeter {
    pids: Vec<u32>,
    ticks: Vec<f64>,
    since: Instant,
}

impl CpuMeter {
    /// `None` without a process to watch, or if one has gone.
    fn start(processes: &[Running]) -> Option<CpuMeter> {
        let pids: Vec<u32> = processes.iter().filter_map(Running::pid).collect();
        if pids.is_empty() {
            return None;
        }
        let ticks = pids
            .iter()
            .map(|&p| process_ticks(p))
            .collect::<Option<_>>()?;
        Some(CpuMeter {
            pids,
            ticks,
            since: Instant::now(),
        })
    }

    /// The CPU time taken since `start`, as a percentage of one core per process.
    fn percent_per_process(&self) -> Option<f64> {
        let after: Vec<f64> = self
            .pids
            .iter()
            .map(|&p| process_ticks(p))
            .collect::<Option<_>>()?;
        let hz: f64 = command_output("getconf", &["CLK_TCK"])
            .trim()
            .parse()
            .ok()?;
        let used: f64 = after.iter().zip(&self.ticks).map(|(a, b)| a - b).sum();
        let seconds = self.since.elapsed().as_secs_f64();
        Some(100.0 * used / hz / seconds / self.pids.len() as f64)
    }
}

/// utime + stime of a process, in clock ticks.
fn process_ticks(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
}

/// The number at `path` under `value` in a JSON report; an error naming the path if it is not
/// there.
fn json_number(value: &serde_json::Value, path: &[&str]) -> io::Result<f64> {
    path.iter()
        .fold(value, |v, field| &v[*field])
        .as_f64()
        .ok_or_else(|| io::Error::other(format!("no number at {} in the report", path.join("."))))
}

/// The round-trip times, in µs, of the echo replies in iputils ping's output
/// (`64 bytes from 198.19.0.2: icmp_seq=1 ttl=64 time=0.123 ms`), duplicates left out.
fn reply_times_us(ping_output: &str) -> Vec<f64> {
    ping_output
        .lines()
        .filter(|line| !line.contains("DUP!"))
        .filter_map(|line| {
            let (value, unit) = line.split_once("time=")?.1.split_once(' ')?;
            let ms: f64 = value.parse().ok()?;
            unit.starts_with("ms").then_some(ms * 1000.0)
        })
        .collect()
}

/// The echoes iputils ping sent, from its summary (`500 packets transmitted, 498 received, ...`).
fn echoes_sent(ping_output: &str) -> Option<f64> {
    ping_output.lines().find_map(|line| {
        line.split_once(" packets transmitted")?
            .0
            .trim()
            .parse()
            .ok()
    })
}

/// The nearest-rank percentile `q` (0 to 1) of `sorted`, ascending and not empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The sample key that holds the round a sample was taken in (0-based).
const ROUND: &str = "round";

/// Every round's sample of every system, by system key, and the rows the report takes from them.
struct Results {
    samples: BTreeMap<String, Vec<Sample>>,
}

/// One round of one system, as a report row shows it: all of its figures are from that round.
#[derive(Clone, Copy)]
struct Row<'a>(Option<&'a Sample>);

impl Row<'_> {
    /// A figure of the row's round; NaN (shown as "-") when that round did not measure it.
    fn get(&self, key: &str) -> f64 {
        self.0.and_then(|s| s.get(key).copied()).unwrap_or(f64::NAN)
    }

    /// The row's round, 1-based as the log counts them, or "-".
    fn round(&self) -> String {
        let round = self.get(ROUND);
        if round.is_finite() {
            format!("{}", round as usize + 1)
        } else {
            "-".into()
        }
    }
}

impl Results {
    /// The row for `system`: its median round by the first of `primaries` that any of its rounds
    /// measured (`testbed::median_round`).
    fn row(&self, system: &str, primaries: &[&str]) -> Row<'_> {
        let rounds = self.samples.get(system).map(Vec::as_slice).unwrap_or(&[]);
        let primary = primaries.iter().find(|p| {
            rounds
                .iter()
                .any(|s| s.get(**p).is_some_and(|v| v.is_finite()))
        });
        Row(primary.and_then(|p| testbed::median_round(rounds, |s| s.get(*p).copied())))
    }

    /// `system`'s sample of round `round`, if it ran then.
    fn of_round(&self, system: &str, round: f64) -> Option<&Sample> {
        self.samples
            .get(system)?
            .iter()
            .find(|s| s.get(ROUND) == Some(&round))
    }
}

/// The primary figures of the main table's rows (and of the tunload columns beside iperf3), in
/// order of preference: the first one a system measured picks its row's round.
const MAIN_PRIMARY: [&str; 6] = [
    "tcp1_gbit_s",
    "tcp4_gbit_s",
    "udp64_rx_pps",
    "udp1400_rx_pps",
    "idle_rtt_p50_us",
    "iperf_tcp1_gbit_s",
];

fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cc = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .unwrap_or_default()
        .trim()
        .to_string();
    format!("{model}, {cores} cores, Linux {kernel}, TCP congestion control {cc}")
}

fn fmt(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "-".into()
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and test harness probes.
    }
    if !testbed::is_root() {
        println!(
            "e2e benches: skipped, they need root (network namespaces and TUN devices): run `sudo cargo bench --bench e2e`"
        );
        return;
    }
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let rounds: usize = env("BENCH_ROUNDS", "3").parse().expect("BENCH_ROUNDS");
    let seconds: u64 = env("BENCH_SECONDS", "5").parse().expect("BENCH_SECONDS");
    let out = std::env::var_os("BENCH_OUT")
        .map_or_else(|| workspace_root().join("bench-results"), PathBuf::from);
    std::fs::create_dir_all(&out).expect("output directory");
    let tunfwd = |queues, offload| {
        System::Tunfwd(TunfwdSetup {
            queues,
            offload,
            ..TunfwdSetup::DEFAULT
        })
    };
    let all = vec![
        System::Veth,
        System::Vxlan,
        System::Simpletun,
        System::TunfwdDefaults,
        tunfwd(1, true),
        tunfwd(1, false),
        tunfwd(4, true),
        tunfwd(4, false),
        // The I/O engines besides the one tunfwd picks itself, at one queue.
        System::Tunfwd(TunfwdSetup {
            engine: Some(Engine::Poll),
            ..TunfwdSetup::DEFAULT
        }),
        System::Tunfwd(TunfwdSetup {
            engine: Some(Engine::UringCompat),
            ..TunfwdSetup::DEFAULT
        }),
        // What io_uring batching is worth: one operation in flight.
        System::Tunfwd(TunfwdSetup {
            ring_depth: 1,
            ..TunfwdSetup::DEFAULT
        }),
        System::Tunfwd(TunfwdSetup {
            ring_depth: 1,
            offload: false,
            ..TunfwdSetup::DEFAULT
        }),
        // The kernel's TUN queue length, tunfwd's default before 2026-11-30, at the default
        // queue count on the 2-CPU testbed.
        System::Tunfwd(TunfwdSetup {
            queues: 2,
            tx_queue_len: 500,
            ..TunfwdSetup::DEFAULT
        }),
        // 256 buffers of 64 KiB per direction, as before the 1 MiB default.
        System::Tunfwd(TunfwdSetup {
            buffer_memory: "16M",
            ..TunfwdSetup::DEFAULT
        }),
        // What ECN propagation costs: off, and on with every packet marked.
        System::Tunfwd(TunfwdSetup {
            ecn: false,
            ..TunfwdSetup::DEFAULT
        }),
        System::Tunfwd(TunfwdSetup {
            ect_load: true,
            ..TunfwdSetup::DEFAULT
        }),
        // What serving metrics costs the data path: a snapshot per worker per second.
        System::Tunfwd(TunfwdSetup {
            metrics: true,
            ..TunfwdSetup::DEFAULT
        }),
        // And running without privileges after setup.
        System::Tunfwd(TunfwdSetup {
            unprivileged: true,
            ..TunfwdSetup::DEFAULT
        }),
        // The latency option: spin for 10 ms after each burst, longer than `ping-idle`'s interval,
        // so that no echo waits for a wake-up; at one queue and at two (the default queue count on
        // the 2-CPU testbed). Shorter spins did not help here (bench-results, 2026-11-30).
        System::Tunfwd(TunfwdSetup {
            busy_poll_us: 10_000,
            ..TunfwdSetup::DEFAULT
        }),
        System::Tunfwd(TunfwdSetup {
            queues: 2,
            busy_poll_us: 10_000,
            ..TunfwdSetup::DEFAULT
        }),
        // The userspace WireGuards of issue 20, and tunfwd's WireGuard mode at its defaults and
        // at one queue.
        System::WireGuard(Implementation::WireguardGoUpstream),
        System::WireGuard(Implementation::WireguardGoDebian),
        System::WireGuard(Implementation::Boringtun),
        System::TunfwdWireGuard(None),
        System::TunfwdWireGuard(Some(1)),
    ];
    let listed = |var: &str, name: &str| {
        std::env::var(var)
            .ok()
            .is_none_or(|w| w.split(',').any(|k| k.trim() == name))
    };
    if let Ok(w) = std::env::var("BENCH_SCENARIOS") {
        let unknown: Vec<&str> = w
            .split(',')
            .map(str::trim)
            .filter(|k| Scenario::ALL.iter().all(|s| s.name() != *k))
            .collect();
        assert!(
            unknown.is_empty(),
            "BENCH_SCENARIOS: unknown {unknown:?}; the scenarios are {:?}",
            Scenario::ALL.map(Scenario::name)
        );
    }
    let mut scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| listed("BENCH_SCENARIOS", s.name()))
        .collect();
    // Lines for the report's header: tool versions, skipped scenarios, systems that did not start.
    let mut notes = load_tools(&mut scenarios);
    if scenarios.is_empty() {
        println!("e2e benches: nothing left to run without iperf3 or ping");
        return;
    }
    let systems: Vec<System> = all
        .into_iter()
        .filter(|s| listed("BENCH_SYSTEMS", &s.key()))
        .filter(|s| scenarios.iter().any(|sc| sc.applies_to(s)))
        .collect();
    assert!(
        !systems.is_empty(),
        "BENCH_SYSTEMS and BENCH_SCENARIOS leave nothing to run (`mss` runs on vxlan and tunfwd-q1 only; iperf3 and ping on veth, vxlan, tunfwd-default, tunfwd-q1, tunfwd-q4 and the engine rows)"
    );
    let tunfwd = sibling("tunfwd");
    let bins = Bins {
        peers: Peers::from_env().with_tunfwd(&tunfwd),
        tunfwd,
        tunload: sibling("tunload"),
        simpletun: sibling("simpletun"),
    };
    let systems = wireguard_systems_available(systems, &bins.peers, &mut notes);
    if systems.is_empty() {
        println!("e2e benches: nothing left to run");
        return;
    }
    let stamp = command_output("date", &["-u", "+%Y-%m-%dT%H%M%SZ"]);
    // The commit is read now, before the run: the binaries were built from this tree.
    let commit = command_output(
        "git",
        &[
            "-C",
            &workspace_root().to_string_lossy(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = !command_output(
        "git",
        &[
            "-C",
            &workspace_root().to_string_lossy(),
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_empty();
    let commit = format!(
        "{commit}{}",
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    );
    let bed = Testbed::new(&bins.tunfwd, &bins.tunload).expect("testbed");
    bed.add_vxlan(OVERLAY_MTU).expect("vxlan");
    let runner = Runner {
        bed: &bed,
        seconds,
        out: out.clone(),
        stamp: stamp.clone(),
    };

    let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    // Per system that failed to start: in how many rounds, and the first error.
    let mut not_started: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for round in 0..rounds {
        for system in &systems {
            eprintln!("round {}/{rounds}: {}", round + 1, system.name());
            match runner.round(system, &bins, round, &scenarios) {
                Ok(mut s) => {
                    eprintln!("  {s:?}");
                    s.insert(ROUND, round as f64);
                    samples.entry(system.key()).or_default().push(s);
                }
                Err(e) => {
                    eprintln!("  {} did not start: {e}", system.name());
                    not_started
                        .entry(system.key())
                        .or_insert_with(|| (0, e.to_string()))
                        .0 += 1;
                }
            }
        }
    }
    drop(bed);
    for system in &systems {
        if let Some((failed, error)) = not_started.get(&system.key()) {
            // The first line says why; tunfwd's usage text follows it.
            let mut error = error.lines().next().unwrap_or("").trim().to_string();
            if let Some((cut, _)) = error.char_indices().nth(240) {
                error.truncate(cut);
                error.push_str(" ...");
            }
            let rounds_failed = if *failed == rounds {
                "in any round".to_string()
            } else {
                format!("in {failed} of {rounds} rounds (figures from the others)")
            };
            notes.push(format!(
                "{} did not start {rounds_failed}: {error}",
                system.name()
            ));
        }
    }

    let results = Results { samples };
    write_results(
        &out, &stamp, &commit, &systems, &scenarios, &results, rounds, seconds, &notes,
    );
}

/// Leaves out the WireGuard systems that cannot run here, each with a line for the report saying
/// why: a peer that is not installed (`scripts/wireguard-peers` installs them, as root), or a
/// tunfwd without `--wireguard`. For those that can, the report names the peer's version.
fn wireguard_systems_available(
    systems: Vec<System>,
    peers: &Peers,
    notes: &mut Vec<String>,
) -> Vec<System> {
    let wanted: Vec<Implementation> = systems
        .iter()
        .filter_map(|s| match s {
            System::WireGuard(implementation) => Some(*implementation),
            System::TunfwdWireGuard(_) => Some(Implementation::Tunfwd),
            _ => None,
        })
        .collect();
    if wanted
        .iter()
        .any(|i| *i != Implementation::Tunfwd && peers.check(*i).is_err())
    {
        let script = workspace_root().join("scripts/wireguard-peers");
        eprintln!(
            "e2e: a WireGuard peer is missing; running {}",
            script.display()
        );
        if let Err(e) = Command::new(script).status() {
            eprintln!("e2e: scripts/wireguard-peers did not run: {e}");
        }
    }
    let mut unavailable: BTreeMap<String, String> = BTreeMap::new();
    for implementation in wanted {
        match peers.check(implementation) {
            Ok(()) if implementation == Implementation::Tunfwd => {}
            Ok(()) => notes.push(format!(
                "{}: {}",
                implementation.name(),
                peers
                    .version(implementation)
                    .unwrap_or_else(|| "version unknown".into())
            )),
            Err(e) => {
                unavailable.insert(implementation.key().to_string(), e.to_string());
            }
        }
    }
    systems
        .into_iter()
        .filter(|system| {
            let implementation = match system {
                System::WireGuard(implementation) => *implementation,
                System::TunfwdWireGuard(_) => Implementation::Tunfwd,
                _ => return true,
            };
            match unavailable.get(implementation.key()) {
                None => true,
                Some(why) => {
                    let line = format!("skipped {}: {why}", system.name());
                    println!("e2e: {line}");
                    notes.push(line);
                    false
                }
            }
        })
        .collect()
}

/// Makes sure iperf3 and ping are there for the chosen scenarios that need them: when one is
/// missing, runs `scripts/bench-tools` (which installs it on Debian, as root); when it is still
/// missing, drops those scenarios and says why. Returns the report's lines about the tools.
fn load_tools(scenarios: &mut Vec<Scenario>) -> Vec<String> {
    let needed: Vec<LoadTool> = LoadTool::ALL
        .into_iter()
        .filter(|t| scenarios.iter().any(|s| s.tools().contains(t)))
        .collect();
    if needed.is_empty() {
        return Vec::new();
    }
    let mut install_outcome = String::new();
    if needed.iter().any(|t| t.version().is_none()) {
        let script = workspace_root().join("scripts/bench-tools");
        eprintln!(
            "e2e: iperf3 or ping is missing; running {}",
            script.display()
        );
        install_outcome = match Command::new(script).status() {
            Ok(status) if status.success() => String::new(),
            Ok(status) => format!("; scripts/bench-tools failed ({status})"),
            Err(e) => format!("; scripts/bench-tools did not run: {e}"),
        };
    }
    let mut notes = Vec::new();
    for tool in needed {
        match tool.version() {
            Some(version) => notes.push(format!("{}: {version}", tool.command())),
            None => {
                let skipped: Vec<&str> = scenarios
                    .iter()
                    .filter(|s| s.tools().contains(&tool))
                    .map(|s| s.name())
                    .collect();
                let line = format!(
                    "skipped {}: {} is not installed{install_outcome}",
                    skipped.join(", "),
                    tool.command()
                );
                println!("e2e: {line}");
                notes.push(line);
                scenarios.retain(|s| !s.tools().contains(&tool));
            }
        }
    }
    notes
}

#[allow(clippy::too_many_arguments)]
fn write_results(
    out: &Path,
    stamp: &str,
    commit: &str,
    systems: &[System],
    scenarios: &[Scenario],
    results: &Results,
    rounds: usize,
    seconds: u64,
    notes: &[String],
) {
    let mut command = String::from("sudo");
    for k in [
        "BENCH_ROUNDS",
        "BENCH_SECONDS",
        "BENCH_SYSTEMS",
        "BENCH_SCENARIOS",
    ] {
        if let Ok(v) = std::env::var(k) {
            command += &format!(" {k}={v}");
        }
    }
    command += " cargo bench --bench e2e";
    let mut md = String::new();
    let _ = writeln!(md, "# End-to-end bench, {stamp}\n");
    let _ = writeln!(md, "- machine: {}", machine());
    let _ = writeln!(md, "- commit: {commit}");
    let _ = writeln!(md, "- command: `{command}`");
    let _ = writeln!(
        md,
        "- method: {rounds} interleaved rounds, {seconds} s per traffic run; each row of a table is one real round, not medians taken column by column: the median round by the row's primary figure (the lower middle one when the rounds are even), with all of that round's figures, so the figures in a row occurred together; the row's last column names the round; the primary figure of the main table and of the tunload columns beside iperf3 is the first of TCP 1 stream, TCP 4 streams, UDP 64 B rx, UDP 1400 B rx and idle RTT p50 that the system measured, and the other tables name theirs; overlay MTU {OVERLAY_MTU} for every tunnel; two namespaces joined by a veth, relay A pinned from the first CPU and relay B from the last (two machines would not share a core); TCP load counted but not checked (`tunload tcp-send --unchecked`, as iperf3), since the tests check every byte"
    );
    let selected = |scenario: Scenario| scenarios.contains(&scenario);
    if systems.contains(&System::TunfwdDefaults) {
        let _ = writeln!(
            md,
            "- tunfwd defaults: no option but `--mtu {OVERLAY_MTU}` (and, on B, the testbed's `--cpus` from the last CPU down), so one queue per online CPU"
        );
    }
    let load_tools = scenarios.iter().any(|s| !s.tools().is_empty());
    if load_tools {
        let _ = writeln!(
            md,
            "- iperf3 and ping: `iperf3 --server --one-off` on B, `iperf3 --client --time {seconds} --json` on A; TCP figures are the receiver's (`end.sum_received.bits_per_second`); UDP is `--udp --length 64 --bitrate 0`, received pps `end.sum_received.bytes` / 64 over its `seconds`, sent pps from `end.sum_sent.packets`, loss `end.sum.lost_percent`. `ping -i 0.01` (slower when the machine is busy): {PING_IDLE_COUNT} echoes idle, and under load from 0.5 s into one iperf3 TCP stream to at most 0.5 s before its end; p50, p99 and average from every reply's `time=`, loss against the echoes ping's summary says it sent"
        );
    }
    for note in notes {
        let _ = writeln!(md, "- {note}");
    }
    if selected(Scenario::InnerMss) {
        let _ = writeln!(
            md,
            "- inner MSS: single-stream TCP with `tunload --mss` on both tcp-send and tcp-sink, through the kernel's VXLAN and tunfwd q1 with default options; \"in effect\" is getsockopt(TCP_MAXSEG) on the sender, which leaves out the room TCP options take (12 bytes of timestamps)"
        );
    }
    if selected(Scenario::Tcp1) {
        let _ = writeln!(
            md,
            "- CPU s/GB: busy CPU seconds on the whole machine (both relays, load tool, softirq) per GB moved in the single-stream run"
        );
    }
    let _ = writeln!(md);
    if scenarios.iter().any(|s| s.in_main_table()) {
        let _ = writeln!(
            md,
            "| system | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | UDP 64 B rx pps (sent, loss) | UDP 1400 B rx pps (sent, loss) | RTT idle p50/p99 µs | RTT under TCP load p50/p99 µs | CPU s/GB | round |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        for s in systems {
            let row = results.row(&s.key(), &MAIN_PRIMARY);
            let m = |name: &str| row.get(name);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} ({}, {}%) | {} ({}, {}%) | {}/{} | {}/{} | {} | {} |",
                s.name(),
                fmt(m("tcp1_gbit_s"), 2),
                fmt(m("tcp4_gbit_s"), 2),
                fmt(m("udp64_rx_pps"), 0),
                fmt(m("udp64_sent_pps"), 0),
                fmt(100.0 * m("udp64_loss"), 1),
                fmt(m("udp1400_rx_pps"), 0),
                fmt(m("udp1400_sent_pps"), 0),
                fmt(100.0 * m("udp1400_loss"), 1),
                fmt(m("idle_rtt_p50_us"), 0),
                fmt(m("idle_rtt_p99_us"), 0),
                fmt(m("loaded_rtt_p50_us"), 0),
                fmt(m("loaded_rtt_p99_us"), 0),
                fmt(m("cpu_s_per_gb"), 2),
                row.round(),
            );
        }
        let _ = writeln!(md, "\n## Ratios (same run)\n");
        let _ = writeln!(
            md,
            "Each ratio divides two figures of the table above, each from its row's round.\n"
        );
        let _ = writeln!(
            md,
            "| system | TCP 1: ×VXLAN | ×veth | ×simpletun | ×own no-offload | TCP 4: ×VXLAN | UDP 64 B rx: ×VXLAN | ×veth | ×simpletun |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        let ratio = |k: &str, base: &str, m: &str| {
            results.row(k, &MAIN_PRIMARY).get(m) / results.row(base, &MAIN_PRIMARY).get(m)
        };
        for s in systems {
            let k = s.key();
            // The same tunfwd configuration with offloads off, when this one has them on.
            let own = match s {
                System::Tunfwd(t) if t.offload => Some(
                    System::Tunfwd(TunfwdSetup {
                        offload: false,
                        ..t.clone()
                    })
                    .key(),
                ),
                _ => None,
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.name(),
                fmt(ratio(&k, "vxlan", "tcp1_gbit_s"), 2),
                fmt(ratio(&k, "veth", "tcp1_gbit_s"), 2),
                fmt(ratio(&k, "simpletun", "tcp1_gbit_s"), 1),
                own.map_or("-".into(), |own| fmt(ratio(&k, &own, "tcp1_gbit_s"), 1)),
                fmt(ratio(&k, "vxlan", "tcp4_gbit_s"), 2),
                fmt(ratio(&k, "vxlan", "udp64_rx_pps"), 2),
                fmt(ratio(&k, "veth", "udp64_rx_pps"), 2),
                fmt(ratio(&k, "simpletun", "udp64_rx_pps"), 1),
            );
        }
    }
    if selected(Scenario::InnerMss) {
        write_mss_section(&mut md, systems, results, rounds);
    }
    if selected(Scenario::IdleCpu) {
        write_idle_cpu_section(&mut md, systems, results);
    }
    if load_tools {
        write_load_tools_section(&mut md, systems, results);
    }
    if selected(Scenario::Tcp1) {
        let _ = writeln!(
            md,
            "\nLatency percentile files (`.hgrm`, µs, ping under single-stream TCP load, round 1): `{stamp}-<system>-loaded-rtt-us.hgrm`. Plot: `{stamp}-e2e.svg`."
        );
        std::fs::write(out.join(format!("{stamp}-e2e.svg")), svg(systems, results))
            .expect("write plot");
    }
    let md_path = out.join(format!("{stamp}-e2e.md"));
    std::fs::write(&md_path, &md).expect("write results");
    let readme = format!(
        "# Latest end-to-end bench\n\nWritten by every run of `cargo bench --bench e2e`; the notebook is README.md. Each run of `sudo cargo bench --bench e2e` writes `<UTC time>-e2e.md` (machine, commit, command, \
         table, ratios), a plot `<time>-e2e.svg`, and `.hgrm` latency percentile files here. Reproduce with the command in the file; \
         only ratios from one run mean anything on a noisy VM. `cargo bench --bench micro` (criterion) covers the pure code; \
         recorded runs are `<time>-micro.txt`. One-off before/after measurements are `<time>-<topic>.md`, each with its \
         commands (`*-gather-vs-copy.md`: iovec gather against copying split segments). tunfwd rows run at tunfwd's \
         defaults unless their name says otherwise, and the defaults change: `--tx-queue-len` was 500 before commit \
         c3ab2cf (2026-11-30) and 2000 since.\n\n\
         ## Latest: {stamp}\n\n{}",
        md.split_once('\n').map(|x| x.1).unwrap_or("")
    );
    // latest.md, not README.md: the README is the benchmark notebook, written by hand.
    std::fs::write(out.join("latest.md"), readme).expect("write latest.md");
    println!("{md}\nwritten to {}", md_path.display());
}

/// The inner-MSS table: a row per MSS, a Gbit/s column per system that ran it, and each other
/// system against the kernel's VXLAN. A row is one round of the interleaved run, every system's
/// figure from it: the median round by the first system's ratio to VXLAN (by the first system's
/// Gbit/s without VXLAN).
fn write_mss_section(md: &mut String, systems: &[System], results: &Results, rounds: usize) {
    let ran: Vec<&System> = systems
        .iter()
        .filter(|s| Scenario::InnerMss.applies_to(s))
        .collect();
    let against_vxlan: Vec<&System> = ran
        .iter()
        .copied()
        .filter(|s| **s != System::Vxlan)
        .collect();
    if !md.ends_with("\n\n") {
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "## Inner MSS: single-stream TCP, MSS clamped on both ends (same run)\n"
    );
    let primary = match (
        ran.iter().any(|s| **s == System::Vxlan),
        against_vxlan.first(),
    ) {
        (true, Some(first)) => format!("{} ×VXLAN", first.name()),
        _ => ran
            .first()
            .map_or("-".into(), |s| format!("{} Gbit/s", s.name())),
    };
    let _ = writeln!(
        md,
        "Each row is one round, every figure in it from that round: the median round by {primary}.\n"
    );
    let mut header = String::from("| inner MSS (in effect) |");
    for s in &ran {
        let _ = write!(header, " {} Gbit/s |", s.name());
    }
    for s in &against_vxlan {
        let _ = write!(header, " {} ×VXLAN |", s.name());
    }
    header.push_str(" round |");
    let _ = writeln!(md, "{header}");
    let _ = writeln!(
        md,
        "|---|{}",
        "---|".repeat(ran.len() + against_vxlan.len() + 1)
    );
    for case in &MSS_CASES {
        // A round's figure for `system`, NaN where it did not run or measure.
        let at = |system: &System, round: usize, key: &str| {
            results
                .of_round(&system.key(), round as f64)
                .and_then(|s| s.get(key).copied())
                .unwrap_or(f64::NAN)
        };
        let vs_vxlan = |system: &System, round: usize| {
            at(system, round, case.gbit_key) / at(&System::Vxlan, round, case.gbit_key)
        };
        let by: Box<dyn Fn(usize) -> f64> = match against_vxlan.first() {
            Some(first) if ran.iter().any(|s| **s == System::Vxlan) => {
                Box::new(move |round| vs_vxlan(first, round))
            }
            _ => Box::new(|round| {
                ran.first()
                    .map_or(f64::NAN, |s| at(s, round, case.gbit_key))
            }),
        };
        let all: Vec<usize> = (0..rounds).collect();
        let round = testbed::median_round(&all, |r| Some(by(*r))).copied();
        let figure = |system: &System, key: &str| round.map_or(f64::NAN, |r| at(system, r, key));
        let mut in_effect: Vec<String> = ran
            .iter()
            .map(|s| figure(s, case.in_effect_key))
            .filter(|v| v.is_finite())
            .map(|v| fmt(v, 0))
            .collect();
        in_effect.dedup();
        let mut row = format!(
            "| {} ({}) |",
            case.mss,
            if in_effect.is_empty() {
                "-".to_string()
            } else {
                in_effect.join("/")
            }
        );
        for s in &ran {
            let _ = write!(row, " {} |", fmt(figure(s, case.gbit_key), 2));
        }
        for s in &against_vxlan {
            let ratio = figure(s, case.gbit_key) / figure(&System::Vxlan, case.gbit_key);
            let _ = write!(row, " {} |", fmt(ratio, 2));
        }
        let _ = write!(
            row,
            " {} |",
            round.map_or("-".into(), |r| (r + 1).to_string())
        );
        let _ = writeln!(md, "{row}");
    }
    let _ = writeln!(
        md,
        "\nThe kernel's VXLAN pays per super-packet here, not per segment: veth carries its UDP-tunnel GSO packets whole (`NETIF_F_GSO_ENCAP_ALL` in drivers/net/veth.c `VETH_FEATURES`) and the far VXLAN hands them to TCP whole, so a smaller MSS costs it little. tunfwd builds and checks every segment's headers in userspace (split at one end, coalesced at the other), although its UDP GSO sends cross the veth whole too. On a real wire every segment exists and the receiver handles each one (GRO at best), so these ratios flatter VXLAN."
    );
}

/// The relays' CPU while nothing flows (`idle-cpu`).
fn write_idle_cpu_section(md: &mut String, systems: &[System], results: &Results) {
    const PRIMARY: [&str; 2] = ["idle_cpu_pct", "ping_idle_relay_cpu_pct"];
    let idle: Vec<&System> = systems
        .iter()
        .filter(|s| results.row(&s.key(), &PRIMARY).0.is_some())
        .collect();
    if idle.is_empty() {
        return;
    }
    if !md.ends_with("\n\n") {
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "## Idle CPU\n\nEach row is the median round by the CPU without traffic.\n\n| system | % of one core per relay, {IDLE_CPU_SECONDS} s without traffic | during `ping-idle` ({} echoes a second) | round |\n|---|---|---|---|",
        1000 / PING_INTERVAL_MS
    );
    for s in idle {
        let row = results.row(&s.key(), &PRIMARY);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            s.name(),
            fmt(row.get("idle_cpu_pct"), 2),
            fmt(row.get("ping_idle_relay_cpu_pct"), 1),
            row.round()
        );
    }
}

/// tunload's figures beside iperf3's and ping's for the same shapes, on the systems that ran both,
/// then each against the kernel's VXLAN. A figure from one tool only is the tool to suspect.
fn write_load_tools_section(md: &mut String, systems: &[System], results: &Results) {
    /// The RTT table's rows: the median round by tunload's idle p50, else ping's.
    const RTT_PRIMARY: [&str; 4] = [
        "idle_rtt_p50_us",
        PING_IDLE.p50_us,
        "loaded_rtt_p50_us",
        PING_LOADED.p50_us,
    ];
    let ran: Vec<&System> = systems.iter().filter(|s| s.compares_load_tools()).collect();
    if !md.ends_with("\n\n") {
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "## Load tools side by side: tunload and iperf3/ping (same run)\n"
    );
    let _ = writeln!(
        md,
        "The rows are the main table's rounds (the median round by tunload's TCP 1 stream), each figure from the row's round.\n"
    );
    let _ = writeln!(
        md,
        "| system | TCP 1 stream Gbit/s: tunload | iperf3 | TCP 4 streams: tunload | iperf3 | TCP 64 streams: iperf3 | TCP 1 stream B to A: iperf3 | UDP 64 B rx pps (loss): tunload | iperf3 1 flow | iperf3 8 flows | round |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    let pps_loss = |row: Row, pps: &str, loss: &str| {
        format!(
            "{} ({}%)",
            fmt(row.get(pps), 0),
            fmt(100.0 * row.get(loss), 1)
        )
    };
    for s in &ran {
        let row = results.row(&s.key(), &MAIN_PRIMARY);
        let m = |name: &str| row.get(name);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.name(),
            fmt(m("tcp1_gbit_s"), 2),
            fmt(m("iperf_tcp1_gbit_s"), 2),
            fmt(m("tcp4_gbit_s"), 2),
            fmt(m("iperf_tcp4_gbit_s"), 2),
            fmt(m("iperf_tcp64_gbit_s"), 2),
            fmt(m("iperf_tcp1_reverse_gbit_s"), 2),
            pps_loss(row, "udp64_rx_pps", "udp64_loss"),
            pps_loss(row, IPERF_UDP64_ONE_FLOW.rx_pps, IPERF_UDP64_ONE_FLOW.loss),
            pps_loss(
                row,
                IPERF_UDP64_EIGHT_FLOWS.rx_pps,
                IPERF_UDP64_EIGHT_FLOWS.loss
            ),
            row.round(),
        );
    }
    let _ = writeln!(
        md,
        "\nEach row of the round-trip table is the median round by tunload's idle p50 (by ping's without tunload).\n"
    );
    let _ = writeln!(
        md,
        "| system | RTT idle µs: tunload p50/p99 | ping p50/p99 (avg) | RTT under 1 TCP stream µs: tunload p50/p99 | ping p50/p99 (avg) | iperf3 stream under that ping Gbit/s | round |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let ping = |row: Row, keys: &PingKeys| {
        format!(
            "{}/{} ({})",
            fmt(row.get(keys.p50_us), 0),
            fmt(row.get(keys.p99_us), 0),
            fmt(row.get(keys.avg_us), 0)
        )
    };
    for s in &ran {
        let row = results.row(&s.key(), &RTT_PRIMARY);
        let m = |name: &str| row.get(name);
        let _ = writeln!(
            md,
            "| {} | {}/{} | {} | {}/{} | {} | {} | {} |",
            s.name(),
            fmt(m("idle_rtt_p50_us"), 0),
            fmt(m("idle_rtt_p99_us"), 0),
            ping(row, &PING_IDLE),
            fmt(m("loaded_rtt_p50_us"), 0),
            fmt(m("loaded_rtt_p99_us"), 0),
            ping(row, &PING_LOADED),
            fmt(m("ping_loaded_load_gbit_s"), 2),
            row.round(),
        );
    }
    let _ = writeln!(
        md,
        "\n| system | TCP 1: tunload ×VXLAN | iperf3 ×VXLAN | TCP 4: tunload ×VXLAN | iperf3 ×VXLAN | TCP 64: iperf3 ×VXLAN | TCP 1 B to A: iperf3 ×VXLAN | UDP 64 B rx: tunload ×VXLAN | iperf3 1 flow ×VXLAN | iperf3 8 flows ×VXLAN |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    // Ratios of the figures in the first table of this section, each from its row's round.
    let vxlan = results.row("vxlan", &MAIN_PRIMARY);
    for s in ran.iter().filter(|s| ***s != System::Vxlan) {
        let row = results.row(&s.key(), &MAIN_PRIMARY);
        let ratio = |m: &str| fmt(row.get(m) / vxlan.get(m), 2);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.name(),
            ratio("tcp1_gbit_s"),
            ratio("iperf_tcp1_gbit_s"),
            ratio("tcp4_gbit_s"),
            ratio("iperf_tcp4_gbit_s"),
            ratio("iperf_tcp64_gbit_s"),
            ratio("iperf_tcp1_reverse_gbit_s"),
            ratio("udp64_rx_pps"),
            ratio(IPERF_UDP64_ONE_FLOW.rx_pps),
            ratio(IPERF_UDP64_EIGHT_FLOWS.rx_pps),
        );
    }
    let _ = writeln!(
        md,
        "\ntunload's RTT is its own raw-socket ping (p50/p99 from an HDR histogram), under its own TCP stream; ping's is iputils' per-reply `time=`, under an iperf3 stream. Both send 64-byte echoes."
    );
}

/// A two-panel bar chart: single-stream TCP Gbit/s, and RTT under load (p50 and p99).
fn svg(systems: &[System], results: &Results) -> String {
    let metric = |system: &str, key: &str| results.row(system, &MAIN_PRIMARY).get(key);
    let (w, row, left) = (900.0, 28.0, 190.0);
    let panel_h = row * systems.len() as f64 + 50.0;
    let h = 2.0 * panel_h + 20.0;
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='13'>\n<rect width='100%' height='100%' fill='white'/>\n"
    );
    let panels: [(&str, [&str; 2], [&str; 2]); 2] = [
        (
            "Single-stream TCP (Gbit/s, median round)",
            ["tcp1_gbit_s", ""],
            ["#3a7", ""],
        ),
        (
            "Ping RTT under TCP load (µs): p50, p99",
            ["loaded_rtt_p50_us", "loaded_rtt_p99_us"],
            ["#37a", "#a73"],
        ),
    ];
    for (p, (title, metrics, colors)) in panels.iter().enumerate() {
        let top = p as f64 * (panel_h + 20.0);
        let max = systems
            .iter()
            .flat_map(|sys| {
                metrics
                    .iter()
                    .filter(|m| !m.is_empty())
                    .map(|m| metric(&sys.key(), m))
            })
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let _ = writeln!(
            s,
            "<text x='10' y='{}' font-weight='bold'>{title}</text>",
            top + 20.0
        );
        for (i, sys) in systems.iter().enumerate() {
            let y = top + 35.0 + i as f64 * row;
            let _ = writeln!(s, "<text x='10' y='{}'>{}</text>", y + 16.0, sys.name());
            let bars: Vec<(&str, &str)> = metrics
                .iter()
                .zip(colors.iter())
                .filter(|(m, _)| !m.is_empty())
                .map(|(m, c)| (*m, *c))
                .collect();
            let bar_h = (row - 6.0) / bars.len() as f64;
            for (j, (m, color)) in bars.iter().enumerate() {
                let v = metric(&sys.key(), m);
                let v = if v.is_finite() { v } else { 0.0 };
                let len = (w - left - 90.0) * v / max;
                let by = y + j as f64 * bar_h;
                let _ = writeln!(
                    s,
                    "<rect x='{left}' y='{by}' width='{len:.1}' height='{:.1}' fill='{color}'/>",
                    bar_h - 1.0
                );
                let _ = writeln!(
                    s,
                    "<text x='{:.1}' y='{:.1}' font-size='11'>{}</text>",
                    left + len + 4.0,
                    by + bar_h - 3.0,
                    fmt(v, if v < 10.0 { 2 } else { 0 })
                );
            }
        }
    }
    s += "</svg>\n";
    s
}
