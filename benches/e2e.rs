//! End-to-end benches on the namespace testbed: tunfwd against the kernel's VXLAN (the in-kernel
//! reference), the bare veth (the ceiling) and the simpletun-style baseline.
//!
//! This is a custom harness (`harness = false`) rather than criterion groups, for one reason: on a
//! 2-vCPU VM absolute numbers swing by tens of percent from minute to minute, so only ratios taken
//! in one sitting mean anything. The systems are therefore **interleaved**: each round runs every
//! scenario on every system in turn, and the reported figure is the median over rounds. Criterion
//! runs one benchmark to completion before the next, which would compare systems measured minutes
//! apart. (The pure code is benched with criterion in `benches/micro.rs`.)
//!
//! Scenarios, with the names `BENCH_SCENARIOS` takes:
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
//!
//! Needs root; without it, prints that and exits 0. Knobs (environment): `BENCH_ROUNDS` (3),
//! `BENCH_SECONDS` per traffic run (5), `BENCH_SYSTEMS` (comma list of system keys as in the
//! report's file names, e.g. `vxlan,tunfwd-q1`; all), `BENCH_SCENARIOS` (comma list of the
//! scenario names above; all), `BENCH_OUT` (directory, `bench-results`). A system that takes part
//! in none of the chosen scenarios is not started, so the MSS scenario alone is
//! `sudo BENCH_SCENARIOS=mss cargo bench --bench e2e`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tunfwd::testbed::{self, Host, Process, Testbed, endpoint, parse_json};

const OVERLAY_MTU: u32 = 1420;
const SIMPLETUN_A: &str = "198.19.2.1";
const SIMPLETUN_B: &str = "198.19.2.2";

/// One tunfwd configuration under test.
#[derive(Debug, Clone, PartialEq)]
struct TunfwdSetup {
    queues: usize,
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
}

impl TunfwdSetup {
    const DEFAULT: TunfwdSetup = TunfwdSetup {
        queues: 1,
        ring_depth: 256,
        offload: true,
        tx_queue_len: 500,
        buffer_memory: "1M",
        ecn: true,
        ect_load: false,
        metrics: false,
        unprivileged: false,
    };

    /// What differs from the defaults, as `(name part, key part)`.
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
        v
    }
}

#[derive(Debug, Clone, PartialEq)]
enum System {
    Veth,
    Vxlan,
    Simpletun,
    Tunfwd(TunfwdSetup),
}

impl System {
    fn name(&self) -> String {
        match self {
            System::Veth => "veth (ceiling)".into(),
            System::Vxlan => "kernel VXLAN".into(),
            System::Simpletun => "simpletun-style".into(),
            System::Tunfwd(t) => {
                format!(
                    "tunfwd q{}{}",
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
            System::Tunfwd(t) => {
                format!(
                    "tunfwd-q{}{}",
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
            System::Tunfwd(_) => testbed::B_TUNNEL4,
        }
    }

    /// Starts the system's processes (none for the kernel's own paths).
    fn start(&self, bed: &Testbed, bins: &Bins) -> Vec<Process> {
        match self {
            System::Veth | System::Vxlan => Vec::new(),
            System::Tunfwd(t) => {
                let (queues, mtu, depth, txq) = (
                    t.queues.to_string(),
                    OVERLAY_MTU.to_string(),
                    t.ring_depth.to_string(),
                    t.tx_queue_len.to_string(),
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
                if t.ect_load {
                    set_tcp_ecn(bed, "1");
                }
                let a = bed
                    .start_tunfwd(Host::A, "bench-tunfwd-a", &args)
                    .expect("tunfwd A");
                let b = bed
                    .start_tunfwd(Host::B, "bench-tunfwd-b", &args)
                    .expect("tunfwd B");
                vec![a, b]
            }
            System::Simpletun => {
                let server = bed
                    .spawn(
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
                    )
                    .expect("simpletun B");
                wait_for_text(&server, "waiting on");
                let client = bed
                    .spawn(
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
                    )
                    .expect("simpletun A");
                wait_for_text(&client, "connected");
                wait_for_text(&server, "connected");
                vec![server, client]
            }
        }
    }
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
}

impl Scenario {
    const ALL: [Scenario; 6] = [
        Scenario::IdleRtt,
        Scenario::Tcp1,
        Scenario::Tcp4,
        Scenario::Udp64,
        Scenario::Udp1400,
        Scenario::InnerMss,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::IdleRtt => "rtt",
            Scenario::Tcp1 => "tcp1",
            Scenario::Tcp4 => "tcp4",
            Scenario::Udp64 => "udp64",
            Scenario::Udp1400 => "udp1400",
            Scenario::InnerMss => "mss",
        }
    }

    /// The MSS scenario compares tunfwd's default setup with the kernel's VXLAN only: it is about
    /// small segments, not about tunfwd's options, and three more runs per system would add
    /// minutes per round.
    fn applies_to(self, system: &System) -> bool {
        match self {
            Scenario::InnerMss => {
                *system == System::Vxlan || *system == System::Tunfwd(TunfwdSetup::DEFAULT)
            }
            _ => true,
        }
    }
}

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
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn wait_for_text(p: &Process, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.stderr().contains(text) {
        assert!(
            Instant::now() < deadline,
            "{text:?} never appeared: {}",
            p.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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

    /// Runs every scenario in `scenarios` that applies to `system`, in the order given.
    fn round(&self, system: &System, bins: &Bins, round: usize, scenarios: &[Scenario]) -> Sample {
        let processes = system.start(self.bed, bins);
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
            }
        }
        drop(processes);
        if ect_load(system) {
            set_tcp_ecn(self.bed, "2");
        }
        sample
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

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
    let out = PathBuf::from(env(
        "BENCH_OUT",
        concat!(env!("CARGO_MANIFEST_DIR"), "/bench-results"),
    ));
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
        tunfwd(1, true),
        tunfwd(1, false),
        tunfwd(4, true),
        tunfwd(4, false),
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
        // A short TUN queue, for latency under load.
        System::Tunfwd(TunfwdSetup {
            tx_queue_len: 32,
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
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| listed("BENCH_SCENARIOS", s.name()))
        .collect();
    let systems: Vec<System> = all
        .into_iter()
        .filter(|s| listed("BENCH_SYSTEMS", &s.key()))
        .filter(|s| scenarios.iter().any(|sc| sc.applies_to(s)))
        .collect();
    assert!(
        !systems.is_empty(),
        "BENCH_SYSTEMS and BENCH_SCENARIOS leave nothing to run (`mss` runs on vxlan and tunfwd-q1 only)"
    );
    let bins = Bins {
        tunfwd: PathBuf::from(env!("CARGO_BIN_EXE_tunfwd")),
        tunload: PathBuf::from(env!("CARGO_BIN_EXE_tunload")),
        simpletun: PathBuf::from(env!("CARGO_BIN_EXE_simpletun")),
    };
    let stamp = command_output("date", &["-u", "+%Y-%m-%dT%H%M%SZ"]);
    // The commit is read now, before the run: the binaries were built from this tree.
    let commit = command_output(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = !command_output(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
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
    for round in 0..rounds {
        for system in &systems {
            eprintln!("round {}/{rounds}: {}", round + 1, system.name());
            let s = runner.round(system, &bins, round, &scenarios);
            eprintln!("  {s:?}");
            samples.entry(system.key()).or_default().push(s);
        }
    }
    drop(bed);

    let metric = |key: &str, m: &str| -> f64 {
        let v: Vec<f64> = samples
            .get(key)
            .map(|ss| ss.iter().filter_map(|s| s.get(m).copied()).collect())
            .unwrap_or_default();
        median(&v)
    };
    write_results(
        &out, &stamp, &commit, &systems, &scenarios, &metric, rounds, seconds,
    );
}

#[allow(clippy::too_many_arguments)]
fn write_results(
    out: &Path,
    stamp: &str,
    commit: &str,
    systems: &[System],
    scenarios: &[Scenario],
    metric: &dyn Fn(&str, &str) -> f64,
    rounds: usize,
    seconds: u64,
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
        "- method: {rounds} interleaved rounds, {seconds} s per traffic run, medians shown; overlay MTU {OVERLAY_MTU} for every tunnel; two namespaces joined by a veth, relay A pinned from the first CPU and relay B from the last (two machines would not share a core); TCP load counted but not checked (`tunload tcp-send --unchecked`, as iperf3), since the tests check every byte"
    );
    let selected = |scenario: Scenario| scenarios.contains(&scenario);
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
    if scenarios.iter().any(|s| *s != Scenario::InnerMss) {
        let _ = writeln!(
            md,
            "| system | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | UDP 64 B rx pps (sent, loss) | UDP 1400 B rx pps (sent, loss) | RTT idle p50/p99 µs | RTT under TCP load p50/p99 µs | CPU s/GB |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for s in systems {
            let k = s.key();
            let m = |name: &str| metric(&k, name);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} ({}, {}%) | {} ({}, {}%) | {}/{} | {}/{} | {} |",
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
            );
        }
        let _ = writeln!(md, "\n## Ratios (same run)\n");
        let _ = writeln!(
            md,
            "| system | TCP 1: ×VXLAN | ×veth | ×simpletun | ×own no-offload | TCP 4: ×VXLAN | UDP 64 B rx: ×VXLAN | ×veth | ×simpletun |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        let ratio = |k: &str, base: &str, m: &str| metric(k, m) / metric(base, m);
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
        write_mss_section(&mut md, systems, metric);
    }
    if selected(Scenario::Tcp1) {
        let _ = writeln!(
            md,
            "\nLatency percentile files (`.hgrm`, µs, ping under single-stream TCP load, round 1): `{stamp}-<system>-loaded-rtt-us.hgrm`. Plot: `{stamp}-e2e.svg`."
        );
        std::fs::write(out.join(format!("{stamp}-e2e.svg")), svg(systems, metric))
            .expect("write plot");
    }
    let md_path = out.join(format!("{stamp}-e2e.md"));
    std::fs::write(&md_path, &md).expect("write results");
    let readme = format!(
        "# Bench results\n\nEach run of `sudo cargo bench --bench e2e` writes `<UTC time>-e2e.md` (machine, commit, command, \
         table, ratios), a plot `<time>-e2e.svg`, and `.hgrm` latency percentile files here. Reproduce with the command in the file; \
         only ratios from one run mean anything on a noisy VM. `cargo bench --bench micro` (criterion) covers the pure code; \
         recorded runs are `<time>-micro.txt`. One-off before/after measurements are `<time>-<topic>.md`, each with its \
         commands (`*-gather-vs-copy.md`: iovec gather against copying split segments).\n\n\
         ## Latest: {stamp}\n\n{}",
        md.split_once('\n').map(|x| x.1).unwrap_or("")
    );
    std::fs::write(out.join("README.md"), readme).expect("write README");
    println!("{md}\nwritten to {}", md_path.display());
}

/// The inner-MSS table: a row per MSS, a Gbit/s column per system that ran it, and each other
/// system against the kernel's VXLAN.
fn write_mss_section(md: &mut String, systems: &[System], metric: &dyn Fn(&str, &str) -> f64) {
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
    let mut header = String::from("| inner MSS (in effect) |");
    for s in &ran {
        let _ = write!(header, " {} Gbit/s |", s.name());
    }
    for s in &against_vxlan {
        let _ = write!(header, " {} ×VXLAN |", s.name());
    }
    let _ = writeln!(md, "{header}");
    let _ = writeln!(
        md,
        "|---|{}",
        "---|".repeat(ran.len() + against_vxlan.len())
    );
    for case in &MSS_CASES {
        let mut in_effect: Vec<String> = ran
            .iter()
            .map(|s| metric(&s.key(), case.in_effect_key))
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
            let _ = write!(row, " {} |", fmt(metric(&s.key(), case.gbit_key), 2));
        }
        for s in &against_vxlan {
            let ratio = metric(&s.key(), case.gbit_key) / metric("vxlan", case.gbit_key);
            let _ = write!(row, " {} |", fmt(ratio, 2));
        }
        let _ = writeln!(md, "{row}");
    }
    let _ = writeln!(
        md,
        "\nThe kernel's VXLAN pays per super-packet here, not per segment: veth carries its UDP-tunnel GSO packets whole (`NETIF_F_GSO_ENCAP_ALL` in drivers/net/veth.c `VETH_FEATURES`) and the far VXLAN hands them to TCP whole, so a smaller MSS costs it little. tunfwd builds and checks every segment's headers in userspace (split at one end, coalesced at the other), although its UDP GSO sends cross the veth whole too. On a real wire every segment exists and the receiver handles each one (GRO at best), so these ratios flatter VXLAN."
    );
}

/// A two-panel bar chart: single-stream TCP Gbit/s, and RTT under load (p50 and p99).
fn svg(systems: &[System], metric: &dyn Fn(&str, &str) -> f64) -> String {
    let (w, row, left) = (900.0, 28.0, 190.0);
    let panel_h = row * systems.len() as f64 + 50.0;
    let h = 2.0 * panel_h + 20.0;
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='13'>\n<rect width='100%' height='100%' fill='white'/>\n"
    );
    let panels: [(&str, [&str; 2], [&str; 2]); 2] = [
        (
            "Single-stream TCP (Gbit/s, median)",
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
