//! End-to-end tests on the namespace testbed: the real `tunfwd` binary, two relays, real traffic.
//!
//! They need root. Without it every test here fails at once with a message saying so: they are
//! never skipped silently. (`cargo test --lib --bins` runs the pure tests without root.)
//! The tests run one at a time: each moves tens to hundreds of MB through two relays on a 2-core
//! machine.
//!
//! Every test runs once per I/O engine: a test body is a function of the engine's name, and
//! [`per_engine!`] makes a module of the same name with one `#[test]` per engine (`uring`,
//! `uring_compat`, `poll`). Each relay is started with `--engine` and must say at startup that it
//! runs the engine it was forced to, so a silent fallback to another engine fails the test.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tunfwd_testkit::testbed::{self, Host, Process, Testbed, endpoint, parse_json};

static SERIAL: Mutex<()> = Mutex::new(());

tunfwd_testkit::per_engine!(
    overlay_ping_both_ways_over_ipv4_and_ipv6,
    tcp_transfers_of_100_mb_verify_in_both_directions,
    one_flow_at_a_time_keeps_to_one_queue_at_every_stage_and_flows_spread_over_queues,
    garbage_and_strangers_are_dropped_and_counted_while_a_transfer_verifies,
    a_peer_that_starts_later_is_reached_and_icmp_errors_are_counted,
    sigterm_reports_and_json_counters_match_what_was_sent,
    offloads_on_and_off_move_hundreds_of_mb_verified_over_ipv4_and_ipv6,
    scarce_buffers_stall_and_recover_without_loss,
    small_mss_transfers_verify_both_ways_without_bad_offload,
    injected_kernel_refusals_take_their_fallbacks_and_lose_nothing,
    a_worker_panic_during_setup_exits_instead_of_hanging,
    a_drain_that_never_finishes_leaks_and_still_reports,
);

/// Runs one test body for `engine`, holding the suite's lock.
fn serially(body: fn(&str), engine: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    body(engine);
}

/// The engines that run multishot operations, which the `multishot-end` fault ends and whose
/// buffer stalls are counted (`buffer_stalls`, `multishot_restarts`).
fn multishot(engine: &str) -> bool {
    engine == "uring"
}

/// A testbed whose tunnels carry nothing the test did not send (no router solicitations), so
/// that the relays' counters can be compared with what the load tools report.
fn testbed() -> Testbed {
    if !testbed::is_root() {
        panic!(
            "the network tests need root (namespaces, veth, TUN): run them as root, e.g. `sudo -E cargo test`; \
             `cargo test --lib --bins` runs the pure tests without root"
        );
    }
    quiet(
        Testbed::new(
            Path::new(env!("CARGO_BIN_EXE_tunfwd")),
            &tunfwd_testkit::binaries::tool("tunload"),
        )
        .expect("building the namespace testbed"),
    )
}

fn quiet(bed: Testbed) -> Testbed {
    bed.silence_router_solicitations()
        .expect("turning off router solicitations in the testbed");
    bed
}

/// tunfwd on `host` with `--engine engine`, `--queues 4` and a stats file named after the host
/// (`a.json`, `b.json`), checked to run that engine.
fn relay(bed: &Testbed, host: Host, engine: &str, extra: &[&str]) -> Process {
    let (name, json) = match host {
        Host::A => ("tunfwd-a", bed.path("a.json")),
        _ => ("tunfwd-b", bed.path("b.json")),
    };
    let mut args = vec![
        "--engine",
        engine,
        "--queues",
        "4",
        "--stats-json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let relay = bed
        .start_tunfwd(host, name, &args)
        .unwrap_or_else(|e| panic!("{name} with --engine {engine}: {e}"));
    testbed::assert_runs(&relay, engine);
    relay
}

/// Both relays, each with [`relay`].
fn relays(bed: &Testbed, engine: &str, extra: &[&str]) -> (Process, Process) {
    (
        relay(bed, Host::A, engine, extra),
        relay(bed, Host::B, engine, extra),
    )
}

/// Stops a relay with SIGTERM, checks it exits 0 with a report, and returns its final JSON.
fn stop(bed: &Testbed, mut relay: Process, json_name: &str) -> Value {
    let json = relay
        .stop_for_report(&bed.path(json_name))
        .unwrap_or_else(|e| panic!("stopping tunfwd: {e}"));
    let report = relay.stdout();
    assert!(
        report.contains("tunfwd stats after"),
        "no final report: {report}"
    );
    assert!(report.contains("udp_to_tun"), "no latency table: {report}");
    json
}

/// `ip -d link show` of the TUN device on `host`: its MTU, gso_max_size and gso_max_segs.
fn tun_details(bed: &Testbed, host: Host) -> String {
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            &bed.namespace(host),
            "-d",
            "link",
            "show",
            "dev",
            "tunfwd0",
        ])
        .output()
        .expect("running ip link show");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn total(report: &Value, field: &str) -> u64 {
    testbed::report_sum(&report["queues"], field)
}

fn drops(report: &Value, reason: &str) -> u64 {
    testbed::report_drops(report, reason)
}

/// `field` of each queue, in queue order.
fn per_queue(report: &Value, field: &str) -> Vec<u64> {
    report["queues"]
        .as_array()
        .expect("an array of queues")
        .iter()
        .map(|q| {
            q[field]
                .as_u64()
                .unwrap_or_else(|| panic!("{field} in {q}"))
        })
        .collect()
}

/// A number in a tool's JSON result.
fn number(result: &Value, field: &str) -> u64 {
    result[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {result}"))
}

/// The relay's JSON stats file (`--stats-json`, rewritten every `--stats-interval`) once `done`
/// holds for it, read every 50 ms for up to 10 s; the last text read if it never does.
fn report_within(path: &Path, done: impl Fn(&Value) -> bool) -> Result<Value, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let report = parse_json(&text).ok();
        if let Some(report) = report.filter(|r| done(r)) {
            return Ok(report);
        }
        if std::time::Instant::now() >= deadline {
            return Err(text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`report_within`], or a panic.
fn report_when(path: &Path, done: impl Fn(&Value) -> bool) -> Value {
    report_within(path, done)
        .unwrap_or_else(|last| panic!("{} never showed what was expected: {last}", path.display()))
}

/// The relay's JSON stats file once the counters in it no longer move: two reports written at
/// least a second apart agree on every queue, the first written at least two seconds after the
/// call (so that every worker had sent a snapshot taken after the call). Needs `--stats-interval
/// 1`.
fn settled_report(path: &Path) -> Value {
    let elapsed = |r: &Value| r["elapsed_secs"].as_f64().unwrap_or(0.0);
    // Written at most a second ago.
    let at_call = elapsed(&report_when(path, |_| true));
    let mut previous = report_when(path, |r| elapsed(r) >= at_call + 2.0);
    for _ in 0..10 {
        let next = report_when(path, |r| elapsed(r) >= elapsed(&previous) + 1.0);
        if next["queues"] == previous["queues"] {
            return next;
        }
        previous = next;
    }
    panic!(
        "the counters in {} never settled: {previous}",
        path.display()
    );
}

fn ping(bed: &Testbed, from: Host, to: &str, count: u32) -> Value {
    bed.tunload_ping(from, to, count, 20, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("ping {to}: {e}"))
}

/// Sends `bytes` per stream over TCP from `from` to the sink on `to_host` at `to_addr`, verified.
fn verified_transfer(
    bed: &Testbed,
    from: Host,
    to_host: Host,
    to_addr: &str,
    bytes: u64,
    streams: usize,
) -> Value {
    verified_transfer_with(bed, from, to_host, to_addr, bytes, streams, &[])
}

/// [`verified_transfer`], with `tcp_options` (such as `--mss 88`) given to both ends.
fn verified_transfer_with(
    bed: &Testbed,
    from: Host,
    to_host: Host,
    to_addr: &str,
    bytes: u64,
    streams: usize,
    tcp_options: &[&str],
) -> Value {
    bed.verified_transfer(from, to_host, to_addr, bytes, streams, tcp_options)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn overlay_ping_both_ways_over_ipv4_and_ipv6(engine: &str) {
    let bed = testbed();
    let (a, b) = relays(&bed, engine, &[]);
    let mut echoes = 0;
    for (from, to) in [
        (Host::A, testbed::B_TUNNEL4),
        (Host::A, testbed::B_TUNNEL6),
        (Host::B, testbed::A_TUNNEL4),
        (Host::B, testbed::A_TUNNEL6),
    ] {
        let r = ping(&bed, from, to, 5);
        assert_eq!(r["received"], 5, "ping {to} from {from:?}: {r}");
        assert_eq!(r["sent"], 5, "ping {to} from {from:?}: {r}");
        echoes += number(&r, "received");
    }
    let report_a = stop(&bed, a, "a.json");
    let report_b = stop(&bed, b, "b.json");
    // Nothing but the pings crossed the tunnel, and each echo crossed it once each way: every
    // stage of either relay carried one packet per echo (requests one way, replies the other).
    for (name, report) in [("A", &report_a), ("B", &report_b)] {
        for field in [
            "tun_rx_packets",
            "udp_tx_packets",
            "udp_rx_packets",
            "tun_tx_packets",
        ] {
            assert_eq!(
                total(report, field),
                echoes,
                "{name} {field}, {echoes} echoes: {report}"
            );
        }
    }
}

/// What the relays counted between two reports, summed over the queues.
fn moved(before: &Value, after: &Value, field: &str) -> u64 {
    total(after, field) - total(before, field)
}

/// Checks that every stage of one direction, from `from`'s TUN to `to`'s, carried the
/// `payload` bytes TCP moved that way between the two pairs of reports, each exactly once: at
/// least the payload (in at least one packet per MSS of it) and at most
/// [`HEADER_ALLOWANCE`] more. `label` names the direction.
fn assert_carried_once(
    (from_before, from_after): (&Value, &Value),
    (to_before, to_after): (&Value, &Value),
    payload: u64,
    mss: u64,
    label: &str,
) {
    let stages = [
        ("tun_rx", from_before, from_after),
        ("udp_tx", from_before, from_after),
        ("udp_rx", to_before, to_after),
        ("tun_tx", to_before, to_after),
    ];
    for (stage, before, after) in stages {
        let bytes = moved(before, after, &format!("{stage}_bytes"));
        let packets = moved(before, after, &format!("{stage}_packets"));
        eprintln!(
            "{label}: {stage} {:.4}x the payload's bytes, {:.4}x its full segments",
            bytes as f64 / payload as f64,
            packets as f64 / (payload as f64 / mss as f64)
        );
        assert!(
            bytes >= payload && bytes as f64 <= payload as f64 * HEADER_ALLOWANCE,
            "{label}: {stage} carried {bytes} bytes for a payload of {payload}\n{after}"
        );
        assert!(
            packets >= payload.div_ceil(mss)
                && packets as f64 <= payload as f64 / mss as f64 * HEADER_ALLOWANCE,
            "{label}: {stage} carried {packets} packets for {payload} bytes at MSS {mss}\n{after}"
        );
    }
}

/// How much more than its TCP payload a direction of a bulk transfer may carry, in bytes or in
/// packets beyond one per MSS, as a factor. Bytes: the IP and TCP headers of each full-size
/// segment (20 + 32 bytes with timestamps over IPv4, 40 + 32 over IPv6: at most 5.1% of the
/// 1400-byte segments of the testbed's 1472-byte MTU). Both: a few short segments (handshake,
/// end of stream) and retransmissions. A relay that sent a packet twice, or counted one twice,
/// would double them.
const HEADER_ALLOWANCE: f64 = 1.08;

fn tcp_transfers_of_100_mb_verify_in_both_directions(engine: &str) {
    let bed = testbed();
    let (a, b) = relays(&bed, engine, &["--stats-interval", "1"]);
    let (a_json, b_json) = (bed.path("a.json"), bed.path("b.json"));
    let mb = 100 << 20;
    let start = (settled_report(&a_json), settled_report(&b_json));
    let there = verified_transfer(&bed, Host::A, Host::B, testbed::B_TUNNEL4, mb, 1);
    let middle = (settled_report(&a_json), settled_report(&b_json));
    let back = verified_transfer(&bed, Host::B, Host::A, testbed::A_TUNNEL6, mb, 1);
    eprintln!("A->B over IPv4: {there}\nB->A over IPv6: {back}");
    let end = (stop(&bed, a, "a.json"), stop(&bed, b, "b.json"));
    // Each byte the sender reports crossed every stage once: its stream, after the 8 bytes of
    // the pattern's seed. (The sink checked every byte and counted the same number.)
    for (sent, (from, to), label) in [
        (
            &there,
            ((&start.0, &middle.0), (&start.1, &middle.1)),
            "A->B",
        ),
        (&back, ((&middle.1, &end.1), (&middle.0, &end.0)), "B->A"),
    ] {
        assert_eq!(number(sent, "bytes"), mb, "{label}: {sent}");
        assert_carried_once(from, to, mb + 8, number(sent, "mss"), label);
    }
}

/// The UDP port of the echo that answers each flow of the steering test.
const ECHO_PORT: u16 = 7000;
/// The relays' queue count in these tests (see [`relay`]).
const QUEUES: usize = 4;

/// The first IPv4/UDP (or IPv6/UDP) packet of a flow from A's tunnel address and `port` to B's
/// echo, as far as the steering program reads it: what either relay's program sees as the
/// datagram's payload (the hash is symmetric, so a reply gives the same answer).
fn first_packet(ipv6: bool, port: u16) -> Vec<u8> {
    const UDP: u8 = 17;
    let mut packet = if ipv6 {
        let address = |a: &str| a.parse::<std::net::Ipv6Addr>().unwrap().octets();
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[6] = UDP; // next header
        p[8..24].copy_from_slice(&address(testbed::A_TUNNEL6));
        p[24..40].copy_from_slice(&address(testbed::B_TUNNEL6));
        p
    } else {
        let address = |a: &str| a.parse::<std::net::Ipv4Addr>().unwrap().octets();
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[9] = UDP; // protocol
        p[12..16].copy_from_slice(&address(testbed::A_TUNNEL4));
        p[16..20].copy_from_slice(&address(testbed::B_TUNNEL4));
        p
    };
    packet.extend_from_slice(&port.to_be_bytes());
    packet.extend_from_slice(&ECHO_PORT.to_be_bytes());
    packet
}

/// A flow's source port for each queue and family: the first port from 20000 up that
/// `steer::flow_index`, the reference of the steering program, puts on that queue. Eight flows,
/// two per queue, half of them IPv6.
fn flows_one_per_queue_and_family() -> Vec<(bool, u16, usize)> {
    let mut flows = Vec::new();
    for ipv6 in [false, true] {
        for queue in 0..QUEUES {
            let port = (20000..30000u16)
                .find(|&port| {
                    tunfwd::testing::flow_index(&first_packet(ipv6, port), QUEUES as u32)
                        == queue as u32
                })
                .expect("a port for every queue");
            flows.push((ipv6, port, queue));
        }
    }
    flows
}

/// The one queue that carried `field`'s packets between two reports. Every one of the
/// `expected` packets counts: the test sent them and the tunnel carries nothing else. `unlearned`
/// packets may have gone to another queue.
fn only_queue(before: &Value, after: &Value, field: &str, expected: u64, unlearned: u64) -> usize {
    let deltas: Vec<u64> = per_queue(after, field)
        .iter()
        .zip(per_queue(before, field))
        .map(|(after, before)| after - before)
        .collect();
    assert_eq!(
        deltas.iter().sum::<u64>(),
        expected,
        "{field} per queue {deltas:?}, {expected} sent"
    );
    let queue = (0..deltas.len())
        .max_by_key(|&q| deltas[q])
        .expect("queues");
    assert!(
        deltas[queue] >= expected - unlearned,
        "{field} was spread over queues {deltas:?}; one queue must carry the flow"
    );
    queue
}

/// One UDP flow at a time, request and reply, each from a source port of its own: at every stage
/// of both relays the flow keeps to one queue; at B the replies are read from the TUN queue the
/// requests were written to, and at A the requests, once the first reply has been written, are
/// read from the queue the replies were written to; and over eight flows the relays use every
/// queue, where the kernel's steering program said they would. With the program missing, every
/// datagram between the relays (one outer address and port pair) lands on one socket, and one
/// queue does all the work.
fn one_flow_at_a_time_keeps_to_one_queue_at_every_stage_and_flows_spread_over_queues(engine: &str) {
    const REQUESTS: u64 = 100;
    let bed = testbed();
    let (a, b) = relays(&bed, engine, &["--stats-interval", "1"]);
    let (a_json, b_json) = (bed.path("a.json"), bed.path("b.json"));
    let mut before = (
        report_when(&a_json, |_| true),
        report_when(&b_json, |_| true),
    );
    let mut used = Vec::new();
    for (ipv6, port, predicted) in flows_one_per_queue_and_family() {
        let (listen, to) = if ipv6 {
            (
                endpoint("::", ECHO_PORT),
                endpoint(testbed::B_TUNNEL6, ECHO_PORT),
            )
        } else {
            (
                endpoint("0.0.0.0", ECHO_PORT),
                endpoint(testbed::B_TUNNEL4, ECHO_PORT),
            )
        };
        let count = REQUESTS.to_string();
        let mut echo = bed
            .tunload_background(
                Host::B,
                "udp-echo",
                &[
                    "udp-echo",
                    "--listen",
                    &listen,
                    "--count",
                    &count,
                    "--seconds",
                    "30",
                ],
            )
            .unwrap();
        let listening = std::time::Instant::now();
        while !echo.stderr().contains("listening") {
            assert!(
                listening.elapsed() < Duration::from_secs(5),
                "udp-echo did not start: {}",
                echo.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let pinged = bed
            .tunload(
                Host::A,
                "udp-ping",
                &[
                    "udp-ping",
                    "--to",
                    &to,
                    "--from-port",
                    &port.to_string(),
                    "--count",
                    &count,
                    "--seconds",
                    "30",
                ],
                Duration::from_secs(40),
            )
            .unwrap_or_else(|e| panic!("flow from port {port}: {e}"));
        let pinged = parse_json(&pinged).unwrap();
        assert!(echo.wait_for(Duration::from_secs(10)).unwrap().success());
        let echoed = parse_json(&echo.stdout()).unwrap();
        assert_eq!(number(&pinged, "received"), REQUESTS, "{pinged}");
        assert_eq!(number(&echoed, "echoed"), REQUESTS, "{echoed}");
        // Every request and every reply, at every stage.
        let all_in = |r: &Value, before: &Value, fields: &[&str]| {
            fields
                .iter()
                .all(|f| total(r, f) - total(before, f) >= REQUESTS)
        };
        let stages = [
            "tun_rx_packets",
            "udp_tx_packets",
            "udp_rx_packets",
            "tun_tx_packets",
        ];
        let after = (
            report_when(&a_json, |r| all_in(r, &before.0, &stages)),
            report_when(&b_json, |r| all_in(r, &before.1, &stages)),
        );
        let flow = format!(
            "flow {} from port {port}",
            if ipv6 { "IPv6" } else { "IPv4" }
        );
        // A reads the first request before it has written a reply of the flow to its TUN, so the
        // TUN picks its queue by hash (`tun_automq_select_queue` in drivers/net/tun.c); each
        // write teaches the TUN the flow's queue (`tun_flow_update`).
        let queue = |(before, after): (&Value, &Value), field: &str, unlearned: u64| {
            only_queue(before, after, field, REQUESTS, unlearned)
        };
        let a_pair = (&before.0, &after.0);
        let b_pair = (&before.1, &after.1);
        let a_request_read = queue(a_pair, "tun_rx_packets", 1);
        let a_request_sent = queue(a_pair, "udp_tx_packets", 1);
        let b_request_received = queue(b_pair, "udp_rx_packets", 0);
        let b_request_written = queue(b_pair, "tun_tx_packets", 0);
        let b_reply_read = queue(b_pair, "tun_rx_packets", 0);
        let b_reply_sent = queue(b_pair, "udp_tx_packets", 0);
        let a_reply_received = queue(a_pair, "udp_rx_packets", 0);
        let a_reply_written = queue(a_pair, "tun_tx_packets", 0);
        assert_eq!(
            (
                a_request_sent,
                b_request_written,
                b_reply_sent,
                a_reply_written
            ),
            (
                a_request_read,
                b_request_received,
                b_reply_read,
                a_reply_received
            ),
            "{flow}: a worker sends or writes what it read or received"
        );
        assert_eq!(
            b_reply_read, b_request_written,
            "{flow}: B must read the replies from the queue it wrote the requests to"
        );
        assert_eq!(
            a_request_read, a_reply_written,
            "{flow}: A must read the requests from the queue it wrote the replies to"
        );
        eprintln!(
            "{flow}: requests on A's queue {a_request_read} and B's {b_request_received}, replies on B's {b_reply_read} and A's {a_reply_received}"
        );
        used.push((flow, a_reply_received, b_request_received, predicted));
        before = after;
    }
    stop(&bed, a, "a.json");
    stop(&bed, b, "b.json");
    // Spread: at each end, the flows went to several queues.
    let distinct = |queues: Vec<usize>| {
        let mut queues = queues;
        queues.sort_unstable();
        queues.dedup();
        queues
    };
    let at_a = distinct(used.iter().map(|u| u.1).collect());
    let at_b = distinct(used.iter().map(|u| u.2).collect());
    assert!(
        at_a.len() >= 3 && at_b.len() >= 3,
        "{} flows used only queues {at_a:?} at A and {at_b:?} at B: {used:?}",
        used.len()
    );
    // Both relays run the same program with the same queue count on a symmetric hash, so both
    // put a flow on the queue the program's reference says.
    for (flow, at_a, at_b, predicted) in &used {
        assert_eq!(
            (at_a, at_b),
            (predicted, predicted),
            "{flow}: the queues the kernel's steering program chose at A and B, and its reference `steer::flow_index`"
        );
    }
}

/// Malformed datagrams from the peer's own address and port (so only validation can catch them) and
/// datagrams from a stranger, both sent all through a verified transfer of fixed length: the
/// tools' own clocks show the garbage went while the transfer was sending, the transfer verifies,
/// and B counts exactly what was sent, each kind under its drop reason.
fn garbage_and_strangers_are_dropped_and_counted_while_a_transfer_verifies(engine: &str) {
    let bed = testbed();
    let (a, b) = relays(&bed, engine, &[]);
    let rounds = 150u64;
    let target_b = endpoint(testbed::B_UNDERLAY, testbed::TUNNEL_PORT);
    let stranger_target = endpoint(testbed::B_UNDERLAY_TO_C, testbed::TUNNEL_PORT);
    let mut sink = bed
        .tunload_background(
            Host::B,
            "tcp-sink",
            &["tcp-sink", "--listen", "0.0.0.0:5201", "--seconds", "60"],
        )
        .unwrap();
    // Sends patterned bytes for 5 s (`--bytes 0`), which the sink checks.
    let mut sender = bed
        .tunload_background(
            Host::A,
            "tcp-send",
            &[
                "tcp-send",
                "--to",
                &endpoint(testbed::B_TUNNEL4, 5201),
                "--bytes",
                "0",
                "--seconds",
                "5",
            ],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // A round of the five kinds every 10 ms, about 1.5 s of garbage from each. The peer's come
    // from A's own address and port, which A's relay holds (raw packets), so only validation can
    // catch them.
    let peer = endpoint(testbed::A_UNDERLAY, testbed::TUNNEL_PORT);
    let rounds_text = rounds.to_string();
    let mut garbage = Vec::new();
    for (host, name, to, from) in [
        (Host::A, "garbage-peer", &target_b, Some(&peer)),
        (Host::C, "garbage-stranger", &stranger_target, None),
    ] {
        let mut args = vec!["garbage", "--to", to, "--count", &rounds_text];
        args.extend(["--interval-ms", "10"]);
        if let Some(from) = from {
            args.extend(["--from", from]);
        }
        garbage.push(bed.tunload_background(host, name, &args).unwrap());
    }
    let garbage: Vec<Value> = garbage
        .iter_mut()
        .map(|g| {
            let status = g.wait_for(Duration::from_secs(30)).unwrap();
            assert!(status.success(), "{}{}", g.stdout(), g.stderr());
            parse_json(&g.stdout()).unwrap()
        })
        .collect();
    let status = sender.wait_for(Duration::from_secs(30)).unwrap();
    assert!(
        status.success(),
        "transfer under garbage failed: {}{}",
        sender.stdout(),
        sender.stderr()
    );
    assert!(
        sink.wait_for(Duration::from_secs(10)).unwrap().success(),
        "{}",
        sink.stderr()
    );
    let sent = parse_json(&sender.stdout()).unwrap();
    let got = parse_json(&sink.stdout()).unwrap();
    assert_eq!(got["verified"], true, "{got}");
    assert_eq!(got["checked"], true, "{got}");
    assert_eq!(got["bytes"], sent["bytes"], "sink {got}, sender {sent}");
    // The garbage went while the transfer was sending, on the clock both tools read.
    let (from, until) = (
        number(&sent, "sending_from_ns"),
        number(&sent, "sending_until_ns"),
    );
    for g in &garbage {
        let (started, ended) = (number(g, "started_ns"), number(g, "ended_ns"));
        assert!(
            from < started && ended < until,
            "the garbage ({started}..{ended} ns) must fall inside the transfer ({from}..{until} ns): {g} {sent}"
        );
    }
    stop(&bed, a, "a.json");
    let report_b = stop(&bed, b, "b.json");
    // B's kernel queued every datagram for the relay: nothing it dropped could hide garbage.
    assert_eq!(
        report_b["kernel_drops"]["udp_socket"], 0,
        "B's sockets dropped datagrams, so it did not see all the garbage: {report_b}"
    );
    // Each kind from the peer under the drop reason tunload gives it; everything from the
    // stranger as foreign, before any validation.
    let (peer, stranger) = (&garbage[0], &garbage[1]);
    let mut expected = std::collections::BTreeMap::<String, u64>::new();
    let reasons = peer["drop_reason_by_kind"].as_object().unwrap();
    for (kind, reason) in reasons {
        *expected
            .entry(reason.as_str().unwrap().to_string())
            .or_default() += number(&peer["sent_by_kind"], kind);
    }
    assert_eq!(number(peer, "sent"), 5 * rounds, "{peer}");
    assert_eq!(number(stranger, "sent"), 5 * rounds, "{stranger}");
    *expected.entry("foreign_source".to_string()).or_default() += number(stranger, "sent");
    for (reason, count) in &expected {
        assert_eq!(drops(&report_b, reason), *count, "{reason}: {report_b}");
    }
    // And nothing else was dropped, but what the AQM (on by default) dropped of the transfer
    // where B's socket queue stood, under its own reason.
    let all_drops: u64 = report_b["queues"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|q| q["drops"].as_object().unwrap().values())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        all_drops - drops(&report_b, "aqm_udp_socket"),
        expected.values().sum::<u64>(),
        "{report_b}"
    );
}

/// An ICMP counter of `host`'s kernel, such as `OutDestUnreachs`, the destination unreachable
/// messages it sent (the `Icmp:` lines of the namespace's /proc/net/snmp; RFC 2011's icmpGroup).
fn icmp_count(bed: &Testbed, host: Host, name: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &bed.namespace(host),
            "cat",
            "/proc/net/snmp",
        ])
        .output()
        .expect("reading /proc/net/snmp");
    let text = String::from_utf8_lossy(&out.stdout);
    // A line of names, then a line of values, per protocol.
    let icmp: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("Icmp: "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let (names, values) = (&icmp[0], &icmp[1]);
    let at = names
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("no {name} in {text}"));
    values[at].parse().unwrap()
}

fn a_peer_that_starts_later_is_reached_and_icmp_errors_are_counted(engine: &str) {
    let bed = testbed();
    let a = relay(&bed, Host::A, engine, &["--stats-interval", "1"]);
    // B has no tunfwd yet: its kernel answers with ICMP port unreachable.
    let mut down = bed
        .tunload_background(
            Host::A,
            "ping-down",
            &[
                "ping",
                "--to",
                testbed::B_TUNNEL4,
                "--count",
                "20",
                "--interval-ms",
                "20",
                "--timeout-ms",
                "300",
            ],
        )
        .unwrap();
    let status = down.wait_for(Duration::from_secs(20)).unwrap();
    let down = parse_json(&down.stdout()).unwrap();
    assert!(
        !status.success() && down["received"] == 0,
        "no replies can come back while B is down: {down}"
    );
    // Every echo request reached A's relay, which sent it (or dropped it as unreachable); and A
    // counted every port unreachable B's kernel sent back, by B's own count: B sends no other,
    // and limits how many it sends (icmp_ratelimit in ip-sysctl.rst). A's path-MTU probes to the
    // peer draw some too, so the two counts are compared once they agree, within 10 s.
    let requests = number(&down, "sent");
    let sent_by_b = || icmp_count(&bed, Host::B, "OutDestUnreachs");
    let while_down = report_within(&bed.path("a.json"), |r| {
        total(r, "tun_rx_packets") == requests
            && total(r, "udp_tx_packets") + drops(r, "peer_unreachable") == requests
            && total(r, "icmp_errors") == sent_by_b()
    })
    .unwrap_or_else(|last| {
        let counted = parse_json(&last).map(|r| total(&r, "icmp_errors"));
        panic!(
            "{requests} echo requests; B's kernel sent {} port unreachables, A's received {}, A's relay counted {counted:?}: {last}",
            sent_by_b(),
            icmp_count(&bed, Host::A, "InDestUnreachs"),
        )
    });
    let icmp_while_down = total(&while_down, "icmp_errors");
    let sent_while_down = total(&while_down, "udp_tx_packets");
    eprintln!(
        "{requests} requests, {sent_while_down} sent, {icmp_while_down} port unreachables from B, all counted"
    );
    assert!(
        icmp_while_down > 0,
        "B's kernel sent no port unreachable: {while_down}"
    );
    let b = relay(&bed, Host::B, engine, &[]);
    let r = ping(&bed, Host::A, testbed::B_TUNNEL4, 5);
    assert_eq!(r["received"], 5, "{r}");
    verified_transfer(&bed, Host::A, Host::B, testbed::B_TUNNEL4, 10 << 20, 1);
    let report_a = stop(&bed, a, "a.json");
    stop(&bed, b, "b.json");
    // Once B was up, nothing more was refused, and A counted every error B's kernel sent.
    assert_eq!(
        total(&report_a, "icmp_errors"),
        sent_by_b(),
        "B's kernel sent the ICMP errors; A's relay counted: {report_a}"
    );
}

fn sigterm_reports_and_json_counters_match_what_was_sent(engine: &str) {
    let bed = testbed();
    let (a, b) = relays(&bed, engine, &["--stats-interval", "1"]);
    let mut sink = bed
        .tunload_background(
            Host::B,
            "udp-sink",
            &[
                "udp-sink",
                "--listen",
                "0.0.0.0:6000",
                "--idle-ms",
                "1000",
                "--seconds",
                "20",
            ],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let flood = bed
        .tunload(
            Host::A,
            "udp-flood",
            &[
                "udp-flood",
                "--to",
                &endpoint(testbed::B_TUNNEL4, 6000),
                "--size",
                "1000",
                "--seconds",
                "2",
            ],
            Duration::from_secs(20),
        )
        .unwrap();
    assert!(sink.wait_for(Duration::from_secs(25)).unwrap().success());
    let flood = parse_json(&flood).unwrap();
    let got = parse_json(&sink.stdout()).unwrap();
    // The periodic report was printed while running.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        a.stdout().matches("tunfwd stats after").count() >= 2,
        "no periodic report: {}",
        a.stdout()
    );
    let report_a = stop(&bed, a, "a.json");
    let report_b = stop(&bed, b, "b.json");
    let sent = flood["sent"].as_u64().unwrap();
    let received = got["received"].as_u64().unwrap();
    assert!(received > 0 && received <= sent);
    // Every counter stage accounts for its packets, from the flood's to the sink's: what the
    // flood sent A read, or A's TUN queue dropped (the flood is the only traffic); what A read it
    // sent or dropped; what B received it wrote or dropped; what B wrote the sink received, or
    // the kernel dropped at the sink's socket. Nothing appears from nowhere.
    let a_read = total(&report_a, "tun_rx_packets");
    let a_tun_queue_drops = report_a["kernel_drops"]["tun_queue"]
        .as_u64()
        .unwrap_or_else(|| panic!("A's TUN queue drops unknown: {report_a}"));
    assert_eq!(
        a_read + a_tun_queue_drops,
        sent,
        "the flood sent {sent}: {flood}\nA: {report_a}"
    );
    let a_sent = total(&report_a, "udp_tx_packets");
    // The AQM (`--aqm codel`, where it is turned on) may drop some of the flood where a queue
    // stood.
    let a_send_drops = drops(&report_a, "udp_send_buffer_full")
        + drops(&report_a, "udp_send_error")
        + drops(&report_a, "peer_unreachable")
        + drops(&report_a, "aqm_tun_ring");
    assert_eq!(a_read, a_sent + a_send_drops, "A: {report_a}");
    let b_received = total(&report_b, "udp_rx_packets");
    let b_written = total(&report_b, "tun_tx_packets");
    assert_eq!(
        b_received,
        b_written + drops(&report_b, "tun_write_error") + drops(&report_b, "aqm_udp_socket"),
        "B: {report_b}"
    );
    assert!(b_received <= a_sent);
    assert_eq!(
        b_written,
        received + number(&got, "socket_drops"),
        "B wrote {b_written}, the sink got {got}"
    );
    assert_eq!(
        report_b["latency_ns"]["udp_to_tun"]["count"]
            .as_u64()
            .unwrap(),
        b_written
    );
    assert_eq!(
        report_a["latency_ns"]["tun_to_udp"]["count"]
            .as_u64()
            .unwrap(),
        a_sent
    );
}

/// `bytes` per stream A to B over IPv4 and B to A over IPv6, each verified; then both relays are
/// stopped, and their final reports returned.
fn both_ways_then_stop(
    bed: &Testbed,
    (a, b): (Process, Process),
    bytes: u64,
    streams: usize,
    label: &str,
) -> (Value, Value) {
    let there = verified_transfer(bed, Host::A, Host::B, testbed::B_TUNNEL4, bytes, streams);
    let back = verified_transfer(bed, Host::B, Host::A, testbed::A_TUNNEL6, bytes, streams);
    eprintln!("{label}: A->B IPv4 {there}, B->A IPv6 {back}");
    (stop(bed, a, "a.json"), stop(bed, b, "b.json"))
}

/// Hundreds of MB each way, IPv4 one way and IPv6 the other, with offloads on (the default) and
/// with `--no-offload`; the counters show the offloads were used exactly when they were on.
fn offloads_on_and_off_move_hundreds_of_mb_verified_over_ipv4_and_ipv6(engine: &str) {
    for offload in [true, false] {
        let bed = testbed();
        let extra: &[&str] = if offload { &[] } else { &["--no-offload"] };
        let (a, b) = relays(&bed, engine, extra);
        let startup = a.stderr();
        if offload {
            assert!(
                startup.contains("tso on")
                    && startup.contains("udp-gso on")
                    && startup.contains("udp-gro on"),
                "{startup}"
            );
        } else {
            assert!(
                startup.contains("tso off,") && startup.contains("udp-gro off"),
                "{startup}"
            );
        }
        // With offloads the TUN's super-packets are capped to fit one GSO send; without, the
        // kernel's default stays.
        let details = tun_details(&bed, Host::A);
        let mtu = details
            .split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .and_then(|m| m.parse::<usize>().ok())
            .expect("mtu in ip link output");
        let cap = if offload {
            tunfwd::testing::tun_gso_max_size(mtu).unwrap()
        } else {
            65536
        };
        assert!(
            details.contains(&format!("gso_max_size {cap} ")),
            "expected gso_max_size {cap}: {details}"
        );
        let label = format!("offload={offload}");
        let (report_a, report_b) = both_ways_then_stop(&bed, (a, b), 200 << 20, 1, &label);
        for (name, report) in [("A", &report_a), ("B", &report_b)] {
            let (gso, gro, merged) = (
                total(report, "gso_sends"),
                total(report, "gro_receives"),
                total(report, "coalesced_writes"),
            );
            if offload {
                // Each way carried 200 MiB of payload. A GSO send, a GRO receive and a merged TUN
                // write are each one IP packet of at most 64 KiB (the 16-bit total length of RFC
                // 791, payload length of RFC 8200), so to carry even half the payload in them
                // takes at least this many of each.
                let half_in_super_packets = (200u64 << 20) / 2 / 65536;
                assert!(
                    gso >= half_in_super_packets
                        && gro >= half_in_super_packets
                        && merged >= half_in_super_packets,
                    "{name}: gso {gso}, gro {gro}, merged {merged}, at least {half_in_super_packets} each: {report}"
                );
            } else {
                assert_eq!((gso, gro, merged), (0, 0, 0), "{name}: {report}");
            }
            assert_eq!(drops(report, "bad_offload"), 0, "{name}: {report}");
            assert_eq!(total(report, "coalesce_fallbacks"), 0, "{name}");
        }
        // Packets are counted per segment at every stage, offloads or not (and the AQM's drops
        // of Not-ECT segments where a queue stood, with `--aqm codel`).
        let a_sent = total(&report_a, "udp_tx_packets");
        assert_eq!(
            total(&report_a, "tun_rx_packets"),
            a_sent
                + drops(&report_a, "udp_send_buffer_full")
                + drops(&report_a, "udp_send_error")
                + drops(&report_a, "aqm_tun_ring")
        );
        assert!(total(&report_b, "udp_rx_packets") <= a_sent);
    }
}

/// With the fewest buffers tunfwd allows (8 per direction per worker), every engine runs out of
/// free buffers again and again under bulk TCP, and must read again once buffers come back: the
/// transfers still verify both ways. The multishot operations of `uring` stop each time (the
/// kernel finds no buffer in the ring), and those stalls are counted, not lost; the other engines
/// only read into a buffer they hold, so they never stall that way.
fn scarce_buffers_stall_and_recover_without_loss(engine: &str) {
    let bed = testbed();
    let (a, b) = relays(
        &bed,
        engine,
        &["--ring-depth", "8", "--buffer-memory", "64K"],
    );
    let (report_a, report_b) = both_ways_then_stop(&bed, (a, b), 100 << 20, 2, "8 buffers");
    let stalls = total(&report_a, "buffer_stalls") + total(&report_b, "buffer_stalls");
    eprintln!("{engine}: buffer stalls: {stalls}");
    if multishot(engine) {
        assert!(stalls > 0, "no buffer ran out: {report_a} {report_b}");
    }
    for (name, report) in [("A", &report_a), ("B", &report_b)] {
        assert_eq!(drops(report, "bad_offload"), 0, "{name}: {report}");
    }
}

/// Inner TCP with a small MSS, down to the kernel's floor of 88 bytes, both ways. The TUN's
/// `gso_max_segs` cap keeps every super-packet within what one split takes, so nothing is
/// dropped as `bad_offload` (before the cap, MSS 400 and below lost every super-packet).
fn small_mss_transfers_verify_both_ways_without_bad_offload(engine: &str) {
    let bed = testbed();
    let (a, b) = relays(&bed, engine, &[]);
    let details = tun_details(&bed, Host::A);
    let cap = tunfwd::testing::MAX_SPLIT_SEGMENTS;
    assert!(
        details.contains(&format!("gso_max_segs {cap} ")),
        "expected gso_max_segs {cap}: {details}"
    );
    for mss in [536u32, 400, 300, 200, 88] {
        let mss_text = mss.to_string();
        let options = ["--mss", mss_text.as_str()];
        let bytes = if mss >= 200 { 24 << 20 } else { 8 << 20 };
        for (from, to_host, to_addr) in [
            (Host::A, Host::B, testbed::B_TUNNEL4),
            (Host::B, Host::A, testbed::A_TUNNEL6),
        ] {
            let sent = verified_transfer_with(&bed, from, to_host, to_addr, bytes, 1, &options);
            eprintln!("MSS {mss} to {to_addr}: {sent}");
            if let Some(in_effect) = sent["mss"].as_u64() {
                assert!(in_effect <= u64::from(mss), "MSS {mss}: {sent}");
            }
        }
    }
    let (report_a, report_b) = (stop(&bed, a, "a.json"), stop(&bed, b, "b.json"));
    for (name, report) in [("A", &report_a), ("B", &report_b)] {
        assert_eq!(drops(report, "bad_offload"), 0, "{name}: {report}");
        assert!(
            total(report, "gso_sends") > 0,
            "{name}: super-packets were split: {report}"
        );
    }
}

/// The `tunfwd` binary built with the `fault-injection` feature, in a target directory of its
/// own (`fault-injection` under `$CARGO_TARGET_DIR`, or under `target`), built once per test
/// run. The shipped binary has none of it.
fn fault_binary() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        // A relative target directory is relative to the package root, where cargo runs tests.
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| root.join("target"), |dir| root.join(dir))
            .join("fault-injection");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = std::process::Command::new(cargo)
            .current_dir(root)
            .args([
                "build",
                "--release",
                "--features",
                "fault-injection",
                "--bin",
                "tunfwd",
            ])
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("running cargo build for the fault-injection binary");
        assert!(
            status.success(),
            "building the fault-injection binary failed"
        );
        target.join("release").join("tunfwd")
    })
}

/// A testbed whose relays run the fault-injection binary with `TUNFWD_FAULTS=faults`.
fn faulty_testbed(faults: &str) -> Testbed {
    let binary = fault_binary();
    let dir = std::env::temp_dir().join(format!("tunfwd-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let name: String = faults
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let wrapper = dir.join(format!("tunfwd-{name}"));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nTUNFWD_FAULTS='{faults}' exec '{}' \"$@\"\n",
            binary.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    if !testbed::is_root() {
        panic!("the network tests need root");
    }
    quiet(
        Testbed::new(&wrapper, &tunfwd_testkit::binaries::tool("tunload"))
            .expect("building the namespace testbed"),
    )
}

/// Each refusal the kernel may make on the data path, injected for a whole transfer each way:
/// no byte is lost or corrupted (the transfers verify), and the counters show the path taken.
fn injected_kernel_refusals_take_their_fallbacks_and_lose_nothing(engine: &str) {
    type Check = fn(&str, &Value, &str);
    // Whether a case applies to an engine.
    type Applies = fn(&str) -> bool;
    let gso_refused: Check = |name, r, stderr| {
        // The fault holds the first refusal back until a second GSO send is in flight: both
        // are redone datagram by datagram, none is counted as a send error.
        assert!(total(r, "gso_fallbacks") >= 2, "{name}: {r}");
        assert_eq!(drops(r, "udp_send_error"), 0, "{name}: {r}");
        assert!(stderr.contains("sending without GSO"), "{name}: {stderr}");
    };
    // Each case: the faults, extra relay options, the engines it applies to, and what the
    // counters must show. The relay core that every engine runs injects all but `multishot-end`,
    // which ends a multishot operation: only `uring` has those.
    let every: Applies = |_| true;
    let cases: [(&str, &[&str], Applies, Check); 6] = [
        ("tun-write-einval", &[], every, |name, r, stderr| {
            assert!(total(r, "coalesce_fallbacks") > 0, "{name}: {r}");
            assert_eq!(
                total(r, "coalesced_writes"),
                total(r, "coalesce_fallbacks"),
                "{name}: every merged write was refused, then redone: {r}"
            );
            assert_eq!(drops(r, "tun_write_error"), 0, "{name}: {r}");
            assert!(
                stderr.contains("refused a merged write"),
                "{name}: {stderr}"
            );
        }),
        // Split super-packets, then (without TSO) batches of plain packets gathered from many
        // buffers, whose per-datagram resends must each be timed once.
        ("gso-eio", &[], every, gso_refused),
        ("gso-eio", &["--no-tso", "--no-uso"], every, gso_refused),
        ("send-enobufs=40", &[], every, |name, r, _| {
            assert!(drops(r, "udp_send_buffer_full") > 0, "{name}: {r}");
        }),
        ("multishot-end=25", &[], multishot, |name, r, _| {
            assert!(total(r, "multishot_restarts") > 10, "{name}: {r}");
        }),
        ("ctrunc", &[], every, |name, r, _| {
            assert!(total(r, "control_truncated") > 0, "{name}: {r}");
            assert_eq!(drops(r, "ip_length_mismatch"), 0, "{name}: {r}");
        }),
    ];
    for (faults, options, applies, check) in cases {
        if !applies(engine) {
            continue;
        }
        let bed = faulty_testbed(faults);
        let (a, b) = relays(&bed, engine, options);
        let there = verified_transfer(&bed, Host::A, Host::B, testbed::B_TUNNEL4, 32 << 20, 1);
        let back = verified_transfer(&bed, Host::B, Host::A, testbed::A_TUNNEL6, 32 << 20, 1);
        eprintln!("{faults}: {there} {back}");
        let (stderr_a, stderr_b) = (a.stderr(), b.stderr());
        let (report_a, report_b) = (stop(&bed, a, "a.json"), stop(&bed, b, "b.json"));
        for (name, report, stderr) in [("A", &report_a, &stderr_a), ("B", &report_b, &stderr_b)] {
            let name = format!("{engine}, {faults} {options:?} on {name}");
            check(&name, report, stderr);
            assert_eq!(drops(report, "bad_offload"), 0, "{name}: {report}");
            // One latency sample per datagram sent, however many resends it took.
            assert_eq!(
                report["latency_ns"]["tun_to_udp"]["count"]
                    .as_u64()
                    .unwrap(),
                total(report, "udp_tx_packets"),
                "{name}: {report}"
            );
        }
    }
}

/// A worker that panics during setup ends tunfwd with a clear error; it used to leave main
/// waiting forever for its report, with SIGINT and SIGTERM blocked.
fn a_worker_panic_during_setup_exits_instead_of_hanging(engine: &str) {
    let bed = faulty_testbed("setup-panic=1");
    let error = bed
        .start_tunfwd(Host::A, "tunfwd-a", &["--engine", engine, "--queues", "2"])
        .err()
        .expect("tunfwd must not come up");
    let text = error.to_string();
    assert!(text.contains("exited early"), "{text}");
    assert!(text.contains("died during setup"), "{text}");
    // The worker died in the forced engine's setup, not in another's.
    let forced = format!("tunfwd: engine {engine}: forced by --engine\n");
    assert!(text.contains(&forced), "{text}");
}

/// When the shutdown drain cannot finish, the worker leaks its buffers rather than free memory
/// the kernel may still write, says so, and tunfwd still reports and exits 0.
fn a_drain_that_never_finishes_leaks_and_still_reports(engine: &str) {
    let bed = faulty_testbed("drain-stuck");
    let (a, b) = relays(&bed, engine, &[]);
    let pinged = ping(&bed, Host::A, testbed::B_TUNNEL4, 5);
    assert_eq!(pinged["received"], 5, "{pinged}");
    let started = std::time::Instant::now();
    let stderr_path = a.stderr_path.clone();
    let report = stop(&bed, a, "a.json");
    assert!(started.elapsed() < Duration::from_secs(10));
    let stderr = std::fs::read_to_string(stderr_path).unwrap();
    assert!(stderr.contains("leaking their buffers"), "{stderr}");
    // The pings are all the tunnel carried.
    assert_eq!(
        total(&report, "tun_rx_packets"),
        number(&pinged, "sent"),
        "{report}"
    );
    drop(b);
}
