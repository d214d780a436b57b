//! The queues in front of the relays under a bulk stream (issue 21): timed, kept short by the
//! AQM, and every packet it drops counted. On the namespace testbed with the real binary.
//!
//! They need root and fail at once without it, never skipping silently, as in tests/netns.rs.
//! They run one at a time: each loads both CPUs of the machine.
//!
//! * Under a verified TCP stream whose endpoints negotiate ECN, the relays time both queues (the
//!   TUN's ring and the UDP socket), the AQM marks CE, and every packet each relay read is sent,
//!   written or counted as dropped under a reason. Once per I/O engine: the receive timestamps
//!   come through each engine's own receive (multishot `recvmsg`, single-shot `RECVMSG`,
//!   `recvmmsg`).
//! * Under a Not-ECT stream the AQM drops instead, the drops are counted, and TCP still delivers
//!   every byte.
//! * Each engine's drain signal (what the TUN ring's wait is read from): a stream the relay
//!   keeps up with reads a short wait and is not signalled; a flood far above what a relay
//!   sharing its CPU serves, which overflows its ring, reads some wait.
//! * With the relays as the bottleneck (both pinned to one CPU, the endpoints to the other), a
//!   ping beside a bulk stream comes back sooner with the AQM than with `--aqm off`, measured in
//!   alternating rounds.
//!
//! The AQM's times here are shorter than its defaults, so that it acts within a short transfer
//! whatever the machine's load: what is tested is that it acts and counts, not where its
//! defaults put the queue (that is bench-results' business).

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;
use tunfwd_testkit::testbed::{self, Host, Process, Testbed, endpoint, parse_json};

static SERIAL: Mutex<()> = Mutex::new(());

tunfwd_testkit::per_engine!(
    an_ecn_stream_is_timed_and_marked_and_every_packet_is_counted,
    a_stream_the_relay_keeps_up_with_reads_a_short_ring_wait,
    a_flood_above_what_the_relay_serves_reads_a_standing_ring,
);

/// An AQM that acts within a second of any standing queue, by marks and by drops.
const EAGER_AQM: [&str; 10] = [
    "--aqm",
    "codel",
    "--aqm-target",
    "100us",
    "--aqm-interval",
    "2ms",
    "--aqm-drop-target",
    "100us",
    "--aqm-drop-interval",
    "2ms",
];

/// What one relay's AQM did at one queue: marks and drops.
fn acted(report: &Value, queue: &str) -> (u64, u64) {
    match queue {
        "tun_ring" => (
            total(report, "aqm_marked_tun_ring"),
            drops(report, "aqm_tun_ring"),
        ),
        _ => (
            total(report, "aqm_marked_udp_socket"),
            drops(report, "aqm_udp_socket"),
        ),
    }
}

/// The queues that carry only the stream's acknowledgements (relay A's socket, relay B's TUN
/// ring): packets of 128 bytes or less, which the AQM never signals.
fn assert_acknowledgements_untouched(a: &Value, b: &Value) {
    assert_eq!(acted(a, "udp_socket"), (0, 0), "A's socket: {a}");
    assert_eq!(acted(b, "tun_ring"), (0, 0), "B's TUN ring: {b}");
}

/// Runs one test body for `engine`, holding the suite's lock.
fn serially(body: fn(&str), engine: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    body(engine);
}

fn testbed() -> Testbed {
    if !testbed::is_root() {
        panic!(
            "the queue tests need root (namespaces, veth, TUN): run them as root, e.g. \
             `sudo -E cargo test --test queue`"
        );
    }
    let bed = Testbed::new(
        Path::new(env!("CARGO_BIN_EXE_tunfwd")),
        &tunfwd_testkit::binaries::tool("tunload"),
    )
    .expect("building the namespace testbed");
    bed.silence_router_solicitations()
        .expect("turning off router solicitations in the testbed");
    bed
}

/// Sets a sysctl in both relays' namespaces.
fn sysctl(bed: &Testbed, setting: &str) {
    for host in [Host::A, Host::B] {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &bed.namespace(host),
                "sysctl",
                "-qw",
                setting,
            ])
            .output()
            .expect("running sysctl");
        assert!(out.status.success(), "sysctl {setting}: {out:?}");
    }
}

/// Sets `net.ipv4.tcp_ecn` in both relays' namespaces: 1 asks for ECN on every connection, 0
/// never uses it (the kernel's default, 2, accepts it but never asks).
fn tcp_ecn(bed: &Testbed, value: &str) {
    sysctl(bed, &format!("net.ipv4.tcp_ecn={value}"));
}

/// The host's list of congestion controls a namespace other than the first may make its default
/// (`tcp_set_default_congestion_control` in net/ipv4/tcp_cong.c refuses the others), with cubic
/// added for as long as this lives, and put back as it was when it is dropped, on failure too.
struct AllowCubic {
    before: Option<String>,
}

const ALLOWED: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";

impl AllowCubic {
    fn new() -> AllowCubic {
        let before = std::fs::read_to_string(ALLOWED).expect("reading the allowed list");
        let list: Vec<&str> = before.split_whitespace().collect();
        if list.contains(&"cubic") {
            return AllowCubic { before: None };
        }
        let with = format!("{} cubic", list.join(" "));
        std::fs::write(ALLOWED, with).expect("allowing cubic");
        AllowCubic {
            before: Some(before.trim().to_string()),
        }
    }
}

impl Drop for AllowCubic {
    fn drop(&mut self) {
        if let Some(before) = self.before.take() {
            let _ = std::fs::write(ALLOWED, before);
        }
    }
}

/// A relay with one queue and a stats file named after the host, started with `extra`.
fn relay(bed: &Testbed, host: Host, extra: &[&str]) -> Process {
    let json = bed.path(&format!("{host:?}.json"));
    let mut args = vec!["--queues", "1", "--stats-json", json.to_str().unwrap()];
    args.extend_from_slice(extra);
    bed.start_tunfwd(host, &format!("tunfwd-{host:?}"), &args)
        .unwrap_or_else(|e| panic!("tunfwd on {host:?}: {e}"))
}

/// Stops a relay with SIGTERM, checks it exits 0, and returns its final JSON report.
fn stop(bed: &Testbed, mut relay: Process, host: Host) -> Value {
    relay
        .stop_for_report(&bed.path(&format!("{host:?}.json")))
        .unwrap_or_else(|e| panic!("stopping tunfwd on {host:?}: {e}"))
}

fn total(report: &Value, field: &str) -> u64 {
    testbed::report_sum(&report["queues"], field)
}

fn drops(report: &Value, reason: &str) -> u64 {
    testbed::report_drops(report, reason)
}

fn all_drops(report: &Value) -> u64 {
    report["queues"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|q| q["drops"].as_object().unwrap().values())
        .map(|v| v.as_u64().unwrap())
        .sum()
}

fn delay_count(report: &Value, direction: &str) -> u64 {
    report["queue_delay_ns"][direction]["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("no queue_delay_ns.{direction}: {report}"))
}

/// The bookkeeping that must hold whatever the AQM did, with nothing in flight: each packet
/// relay A read from its TUN it sent or counted as dropped (the AQM's drops among them), each
/// datagram relay B received it wrote or counted as dropped, and B received what A sent unless
/// B's kernel dropped it first.
fn assert_every_packet_counted(a: &Value, b: &Value) {
    let (a_read, a_sent) = (total(a, "tun_rx_packets"), total(a, "udp_tx_packets"));
    assert_eq!(a_read, a_sent + all_drops(a), "A: {a}");
    let (b_received, b_written) = (total(b, "udp_rx_packets"), total(b, "tun_tx_packets"));
    assert_eq!(b_received, b_written + all_drops(b), "B: {b}");
    if b["kernel_drops"]["udp_socket"] == 0 {
        assert_eq!(a_sent, b_received, "A sent, B received:\nA: {a}\nB: {b}");
    } else {
        assert!(b_received < a_sent, "A: {a}\nB: {b}");
    }
}

/// 300 MB from A to B over one ECN-capable TCP stream, verified, through relays with an eager
/// AQM: both queues in the data's path are timed (A's TUN ring, B's socket), the AQM marked
/// some of the stream's packets CE, and every packet is accounted for.
fn an_ecn_stream_is_timed_and_marked_and_every_packet_is_counted(engine: &str) {
    let bed = testbed();
    tcp_ecn(&bed, "1");
    let mut extra = vec!["--engine", engine];
    extra.extend_from_slice(&EAGER_AQM);
    let a = relay(&bed, Host::A, &extra);
    let b = relay(&bed, Host::B, &extra);
    testbed::assert_runs(&a, engine);
    testbed::assert_runs(&b, engine);
    bed.verified_transfer(Host::A, Host::B, testbed::B_TUNNEL4, 300_000_000, 1, &[])
        .unwrap_or_else(|e| panic!("{engine}: {e}"));
    let report_a = stop(&bed, a, Host::A);
    let report_b = stop(&bed, b, Host::B);
    // Timed: every segment A read, every datagram B received (the path MTU machine's probes
    // and acknowledgements among them, which are not data), and the acknowledgements' way back
    // the same.
    assert_eq!(
        delay_count(&report_a, "tun_to_udp"),
        total(&report_a, "tun_rx_packets"),
        "{report_a}"
    );
    // The control messages a relay receives: the path MTU machine's probes and their
    // acknowledgements, and with outer entropy on the peer's advertisements of its source ports
    // (taken, unproven or ignored) and the acknowledgements of this relay's own.
    let control = |r: &Value| {
        [
            "pmtu_probes_answered",
            "pmtu_probes_acked",
            "peer_ports_accepted",
            "peer_ports_unproven",
            "peer_ports_ignored",
            "ports_acknowledged",
        ]
        .iter()
        .map(|field| testbed::report_sum(&r["path"]["queues"], field))
        .sum::<u64>()
    };
    assert_eq!(
        delay_count(&report_b, "udp_to_tun"),
        total(&report_b, "udp_rx_packets") + control(&report_b),
        "{report_b}"
    );
    assert!(delay_count(&report_b, "tun_to_udp") > 0, "{report_b}");
    assert!(delay_count(&report_a, "udp_to_tun") > 0, "{report_a}");
    // Marked where the data waits: B's socket, whose wait is each datagram's own
    // (`SO_TIMESTAMPNS`), stands behind a stream that B writes slower than it comes; A's ring
    // may mark or not, as its drains find it. The acknowledgements' queues: nothing.
    assert_acknowledgements_untouched(&report_a, &report_b);
    // Whether B's socket queue stands depends on B reading slower than A sends, which on a
    // machine the endpoints share it does not always (2 of 3 engines in one CI run, 1 of 24 runs
    // in a row after it; B's median wait 34-51 us): the marks are asserted where the median
    // datagram waited above the mark target, and the bottleneck test below, whose relays share
    // one CPU, asserts them in every round.
    let (b_marks, b_drops) = acted(&report_b, "udp_socket");
    let b_median_wait = delay(&report_b, "udp_to_tun", "p50");
    if b_median_wait > 100_000 {
        assert!(
            b_marks > 0,
            "{engine}: B's socket stood (median wait {b_median_wait} ns) and marked nothing: \
             {report_b}"
        );
    } else {
        eprintln!("{engine}: B kept up (median wait {b_median_wait} ns), {b_marks} marks");
    }
    // Dropped: nothing, unless a packet was lost elsewhere first. The data is ECT(0); only a
    // retransmission is Not-ECT (RFC 3168 section 6.1.5), and a lone one after the ECN stream
    // finds no drop schedule standing.
    let (_, a_drops) = acted(&report_a, "tun_ring");
    let lost = report_b["kernel_drops"]["udp_socket"].as_u64().unwrap_or(0);
    if lost == 0 {
        assert_eq!(
            (a_drops, b_drops),
            (0, 0),
            "{engine}: A: {report_a}\nB: {report_b}"
        );
    }
    assert_every_packet_counted(&report_a, &report_b);
}

/// The same stream without ECN: the AQM drops, counts each drop under its reason, and TCP still
/// delivers every byte, verified.
#[test]
fn a_not_ect_stream_loses_only_counted_packets_and_arrives_whole() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = testbed();
    tcp_ecn(&bed, "0");
    let a = relay(&bed, Host::A, &EAGER_AQM);
    let b = relay(&bed, Host::B, &EAGER_AQM);
    bed.verified_transfer(Host::A, Host::B, testbed::B_TUNNEL4, 300_000_000, 1, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let report_a = stop(&bed, a, Host::A);
    let report_b = stop(&bed, b, Host::B);
    assert_acknowledgements_untouched(&report_a, &report_b);
    let (a_marks, _) = acted(&report_a, "tun_ring");
    let (b_marks, b_drops) = acted(&report_b, "udp_socket");
    assert_eq!(
        (a_marks, b_marks),
        (0, 0),
        "a Not-ECT stream has nothing to mark"
    );
    assert!(b_drops > 0, "B's socket dropped nothing: {report_b}");
    assert_every_packet_counted(&report_a, &report_b);
}

/// `--aqm observe` under the same stream (it takes no times: it never acts on them): both
/// queues in the data's path are timed, and nothing is marked or dropped by the AQM at either
/// relay.
#[test]
fn observe_times_the_queues_and_never_marks_or_drops() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = testbed();
    tcp_ecn(&bed, "1");
    let observe = ["--aqm", "observe"];
    let a = relay(&bed, Host::A, &observe);
    let b = relay(&bed, Host::B, &observe);
    bed.verified_transfer(Host::A, Host::B, testbed::B_TUNNEL4, 100_000_000, 1, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let report_a = stop(&bed, a, Host::A);
    let report_b = stop(&bed, b, Host::B);
    assert_eq!(
        delay_count(&report_a, "tun_to_udp"),
        total(&report_a, "tun_rx_packets"),
        "{report_a}"
    );
    assert!(delay_count(&report_b, "udp_to_tun") >= total(&report_b, "udp_rx_packets"));
    for (name, report) in [("A", &report_a), ("B", &report_b)] {
        for queue in ["tun_ring", "udp_socket"] {
            assert_eq!(acted(report, queue), (0, 0), "{name}'s {queue}: {report}");
        }
    }
    assert_every_packet_counted(&report_a, &report_b);
}

/// A program in `host`'s namespace pinned to `cpu` (`taskset`), its output kept under `name`.
fn pinned(bed: &Testbed, host: Host, name: &str, cpu: usize, args: &[String]) -> Process {
    let mut all = vec![cpu.to_string()];
    all.extend_from_slice(args);
    let mut with_flag = vec!["-c".to_string()];
    with_flag.extend(all);
    bed.spawn(host, name, Path::new("/usr/bin/taskset"), &with_flag)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// One round: relays with `aqm`, both pinned to CPU 1, a bulk TCP stream from A to B and a ping
/// beside it, both pinned to CPU 0. Returns the ping's p50 and p99, in µs, and the marks and
/// drops both relays' AQMs made at all their queues.
fn loaded_ping(bed: &Testbed, aqm: &[&str]) -> (u64, u64, u64) {
    let tunload = tunfwd_testkit::binaries::tool("tunload")
        .display()
        .to_string();
    let mut extra = vec!["--cpus", "1"];
    extra.extend_from_slice(aqm);
    let a = relay(bed, Host::A, &extra);
    let b = relay(bed, Host::B, &extra);
    let strings = |args: &[&str]| -> Vec<String> {
        std::iter::once(tunload.clone())
            .chain(args.iter().map(|s| s.to_string()))
            .collect()
    };
    let mut sink = pinned(
        bed,
        Host::B,
        "sink",
        0,
        &strings(&["tcp-sink", "--listen", "0.0.0.0:5201", "--seconds", "30"]),
    );
    std::thread::sleep(Duration::from_millis(200));
    let target = endpoint(testbed::B_TUNNEL4, 5201);
    let mut sender = pinned(
        bed,
        Host::A,
        "sender",
        0,
        &strings(&["tcp-send", "--to", &target, "--seconds", "6", "--unchecked"]),
    );
    std::thread::sleep(Duration::from_secs(1));
    let mut ping = pinned(
        bed,
        Host::A,
        "ping",
        0,
        &strings(&[
            "ping",
            "--to",
            testbed::B_TUNNEL4,
            "--count",
            "300",
            "--interval-ms",
            "10",
        ]),
    );
    let pinged = ping.wait_for(Duration::from_secs(20)).unwrap();
    assert!(sender.wait_for(Duration::from_secs(20)).unwrap().success());
    assert!(sink.wait_for(Duration::from_secs(30)).unwrap().success());
    let (report_a, report_b) = (stop(bed, a, Host::A), stop(bed, b, Host::B));
    assert!(
        pinged.success(),
        "ping {pinged}: {} {}\nA: {report_a}\nB: {report_b}",
        ping.stdout(),
        ping.stderr()
    );
    let acted_at = |report: &Value| {
        ["tun_ring", "udp_socket"]
            .iter()
            .map(|queue| {
                let (marks, drops) = acted(report, queue);
                marks + drops
            })
            .sum::<u64>()
    };
    let acted = acted_at(&report_a) + acted_at(&report_b);
    let v = parse_json(&ping.stdout()).unwrap();
    let at = |q: &str| v["rtt_us"][q].as_u64().unwrap();
    (at("p50"), at("p99"), acted)
}

/// With the relays as the bottleneck, the AQM at its defaults signals a bulk ECN-capable cubic
/// stream in every round, and `--aqm off` never does, over three alternating rounds. The loaded
/// ping's p50 and p99 of each round are printed, not asserted: how much the AQM shortens them is
/// a performance figure, recorded by the bench (`scripts/loaded-latency`, bench-results/) where
/// rounds alternate on a quiet machine, not a pass mark for a test on one that others share.
#[test]
fn with_the_relays_as_the_bottleneck_codel_signals_the_bulk_stream_and_off_never_does() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _cubic = AllowCubic::new();
    let bed = testbed();
    tcp_ecn(&bed, "1");
    sysctl(&bed, "net.ipv4.tcp_congestion_control=cubic");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus >= 2, "the bottleneck setup needs two CPUs");
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        off.push(loaded_ping(&bed, &["--aqm", "off"]));
        on.push(loaded_ping(&bed, &["--aqm", "codel"]));
    }
    eprintln!("loaded ping (p50 µs, p99 µs, AQM signals): off {off:?}; codel {on:?}");
    assert!(
        off.iter().all(|round| round.2 == 0),
        "--aqm off marked or dropped: {off:?}"
    );
    assert!(
        on.iter().all(|round| round.2 > 0),
        "--aqm codel left a bulk stream through a bottleneck relay unsignalled: {on:?}"
    );
}

/// `queue_delay_ns.<direction>.<field>` of a report.
fn delay(report: &Value, direction: &str, field: &str) -> u64 {
    report["queue_delay_ns"][direction][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no queue_delay_ns.{direction}.{field}: {report}"))
}

/// A 100 Mbit/s UDP stream (iperf3) and a ping from A to B, which the relays keep up with:
/// A's TUN ring empties at the drains, so the wait read there stays short (the old figure, the
/// time since the ring last emptied, read tens of ms for a relay near its capacity), and CoDel
/// at its defaults signals nothing on it.
fn a_stream_the_relay_keeps_up_with_reads_a_short_ring_wait(engine: &str) {
    let bed = testbed();
    let extra = ["--engine", engine, "--aqm", "codel"];
    let a = relay(&bed, Host::A, &extra);
    let b = relay(&bed, Host::B, &extra);
    testbed::assert_runs(&a, engine);
    testbed::assert_runs(&b, engine);
    let iperf3 = Path::new("/usr/bin/iperf3");
    let strings = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut server = bed
        .spawn(Host::B, "iperf3-server", iperf3, &strings(&["-s", "-1"]))
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let mut client = bed
        .spawn(
            Host::A,
            "iperf3-client",
            iperf3,
            &strings(&[
                "-u",
                "-b",
                "100M",
                "-l",
                "1200",
                "-t",
                "3",
                "-c",
                testbed::B_TUNNEL4,
            ]),
        )
        .expect("iperf3 client");
    let tunload = tunfwd_testkit::binaries::tool("tunload");
    let mut ping = bed
        .spawn(
            Host::A,
            "ping",
            &tunload,
            &strings(&[
                "ping",
                "--to",
                testbed::B_TUNNEL4,
                "--count",
                "200",
                "--interval-ms",
                "10",
            ]),
        )
        .expect("ping");
    assert!(client.wait_for(Duration::from_secs(20)).unwrap().success());
    assert!(ping.wait_for(Duration::from_secs(20)).unwrap().success());
    let _ = server.wait_for(Duration::from_secs(5));
    let report_a = stop(&bed, a, Host::A);
    stop(&bed, b, Host::B);
    let timed = delay_count(&report_a, "tun_to_udp");
    assert!(
        timed > 10_000,
        "{engine}: {timed} packets timed: {report_a}"
    );
    let p99 = delay(&report_a, "tun_to_udp", "p99");
    eprintln!(
        "{engine}: A's ring wait p99 {p99} ns, max {} ns, of {timed}",
        delay(&report_a, "tun_to_udp", "max")
    );
    assert!(
        p99 < 2_000_000,
        "{engine}: A's ring read {p99} ns at p99: {report_a}"
    );
    // Most drains empty the ring, and the engine says so: the median packet waited behind no
    // queue (0, which the histogram's lowest bucket holds as 1 ns).
    let p50 = delay(&report_a, "tun_to_udp", "p50");
    assert!(
        p50 <= 1_000,
        "{engine}: A's ring read {p50} ns at p50: its drains did not say they emptied it: \
         {report_a}"
    );
    assert_eq!(
        acted(&report_a, "tun_ring"),
        (0, 0),
        "{engine}: A's ring signalled: {report_a}"
    );
}

/// A UDP flood from A to B as fast as one CPU sends, into relay A pinned to the other CPU,
/// which a busy loop shares: A serves less than comes, its TUN ring overflows (the kernel drops
/// what finds it full), and the wait read there is above 0.
fn a_flood_above_what_the_relay_serves_reads_a_standing_ring(engine: &str) {
    let bed = testbed();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus >= 2, "the flood setup needs two CPUs");
    let a = relay(
        &bed,
        Host::A,
        &["--engine", engine, "--aqm", "observe", "--cpus", "1"],
    );
    let b = relay(&bed, Host::B, &["--engine", engine]);
    testbed::assert_runs(&a, engine);
    let hog = pinned(
        &bed,
        Host::A,
        "hog",
        1,
        &["/bin/sh", "-c", "while :; do :; done"].map(String::from),
    );
    let tunload = tunfwd_testkit::binaries::tool("tunload")
        .display()
        .to_string();
    let target = endpoint(testbed::B_TUNNEL4, 9);
    let mut flood = pinned(
        &bed,
        Host::A,
        "flood",
        0,
        &[
            tunload.as_str(),
            "udp-flood",
            "--to",
            &target,
            "--size",
            "1200",
            "--seconds",
            "3",
        ]
        .map(String::from),
    );
    assert!(flood.wait_for(Duration::from_secs(20)).unwrap().success());
    drop(hog);
    let report_a = stop(&bed, a, Host::A);
    stop(&bed, b, Host::B);
    let (p99, max) = (
        delay(&report_a, "tun_to_udp", "p99"),
        delay(&report_a, "tun_to_udp", "max"),
    );
    eprintln!(
        "{engine}: A's ring wait p99 {p99} ns, max {max} ns; kernel drops {}",
        report_a["kernel_drops"]
    );
    let overflowed = report_a["kernel_drops"]["tun_queue"].as_u64().unwrap_or(0);
    assert!(
        overflowed > 0,
        "{engine}: the flood did not fill A's ring: {report_a}"
    );
    // The engine said some drain left packets behind: a ring every drain reported emptied
    // reads 0 throughout (the histogram's 1 ns). Not more: the figure is a lower bound, and a
    // relay descheduled for milliseconds by the busy loop while its ring overflows empties it
    // when it runs again, so the packets then read count as not queued (runs here read 19 µs to
    // 58 ms at p99 and 54 µs to 131 ms at most, as the machine's load varied); an open limit,
    // said in docs/latency.md.
    assert!(
        max >= 10_000,
        "{engine}: A's overflowing ring read {max} ns at most: {report_a}"
    );
}
