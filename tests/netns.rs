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
use tunfwd::testbed::{self, Host, Process, Testbed, endpoint, parse_json};

static SERIAL: Mutex<()> = Mutex::new(());

tunfwd::per_engine!(
    overlay_ping_both_ways_over_ipv4_and_ipv6,
    tcp_transfers_of_100_mb_verify_in_both_directions,
    concurrent_flows_spread_over_queues_at_both_ends,
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

fn testbed() -> Testbed {
    if !testbed::is_root() {
        panic!(
            "the network tests need root (namespaces, veth, TUN): run them as root, e.g. `sudo -E cargo test`; \
             `cargo test --lib --bins` runs the pure tests without root"
        );
    }
    Testbed::new(
        Path::new(env!("CARGO_BIN_EXE_tunfwd")),
        Path::new(env!("CARGO_BIN_EXE_tunload")),
    )
    .expect("building the namespace testbed")
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

fn busy_queues(report: &Value, field: &str, at_least: u64) -> usize {
    report["queues"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q[field].as_u64().unwrap() >= at_least)
        .count()
}

fn ping(bed: &Testbed, from: Host, to: &str, count: u32) -> Value {
    let out = bed
        .tunload(
            from,
            &format!("ping-{to}"),
            &[
                "ping",
                "--to",
                to,
                "--count",
                &count.to_string(),
                "--interval-ms",
                "20",
            ],
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("ping {to}: {e}"));
    parse_json(&out).unwrap()
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
    for (from, to) in [
        (Host::A, testbed::B_TUNNEL4),
        (Host::A, testbed::B_TUNNEL6),
        (Host::B, testbed::A_TUNNEL4),
        (Host::B, testbed::A_TUNNEL6),
    ] {
        let r = ping(&bed, from, to, 5);
        assert_eq!(r["received"], 5, "ping {to} from {from:?}: {r}");
    }
    let report_a = stop(&bed, a, "a.json");
    stop(&bed, b, "b.json");
    // 20 echo requests went out and 20 replies came in, through A's device.
    assert!(total(&report_a, "tun_rx_packets") >= 20);
    assert!(total(&report_a, "tun_tx_packets") >= 20);
}

fn tcp_transfers_of_100_mb_verify_in_both_directions(engine: &str) {
    let bed = testbed();
    let (a, b) = relays(&bed, engine, &[]);
    let mb = 100 << 20;
    let there = verified_transfer(&bed, Host::A, Host::B, testbed::B_TUNNEL4, mb, 1);
    let back = verified_transfer(&bed, Host::B, Host::A, testbed::A_TUNNEL6, mb, 1);
    eprintln!("A->B over IPv4: {there}\nB->A over IPv6: {back}");
    let report_a = stop(&bed, a, "a.json");
    let report_b = stop(&bed, b, "b.json");
    // Each byte crossed the tunnel: the relays' counters agree with what TCP moved.
    assert!(total(&report_a, "udp_tx_bytes") > mb);
    assert!(total(&report_b, "tun_tx_bytes") > mb);
    assert!(total(&report_b, "udp_tx_bytes") > mb);
    assert!(total(&report_a, "tun_tx_bytes") > mb);
}

fn concurrent_flows_spread_over_queues_at_both_ends(engine: &str) {
    let bed = testbed();
    let (a, b) = relays(&bed, engine, &[]);
    verified_transfer(&bed, Host::A, Host::B, testbed::B_TUNNEL4, 8 << 20, 12);
    let report_a = stop(&bed, a, "a.json");
    let report_b = stop(&bed, b, "b.json");
    // Data: read from A's TUN on several queues, received on several of B's sockets.
    let a_queues = busy_queues(&report_a, "tun_rx_packets", 200);
    let b_queues = busy_queues(&report_b, "udp_rx_packets", 200);
    // ACKs: read from B's TUN and received by A, on several queues too.
    let b_ack_queues = busy_queues(&report_b, "tun_rx_packets", 200);
    let a_ack_queues = busy_queues(&report_a, "udp_rx_packets", 200);
    assert!(
        a_queues >= 2 && b_queues >= 2 && b_ack_queues >= 2 && a_ack_queues >= 2,
        "queues busy: A tun_rx {a_queues}, B udp_rx {b_queues}, B tun_rx {b_ack_queues}, A udp_rx {a_ack_queues}\nA: {report_a}\nB: {report_b}"
    );
}

fn garbage_and_strangers_are_dropped_and_counted_while_a_transfer_verifies(engine: &str) {
    let bed = testbed();
    let (a, b) = relays(&bed, engine, &[]);
    let count = 200u64;
    let target_b = endpoint(testbed::B_UNDERLAY, testbed::TUNNEL_PORT);
    let stranger_target = endpoint(testbed::B_UNDERLAY_TO_C, testbed::TUNNEL_PORT);
    let mut sink = bed
        .tunload_background(
            Host::B,
            "tcp-sink",
            &["tcp-sink", "--listen", "0.0.0.0:5201", "--seconds", "120"],
        )
        .unwrap();
    let mut sender = bed
        .tunload_background(
            Host::A,
            "tcp-send",
            &[
                "tcp-send",
                "--to",
                &endpoint(testbed::B_TUNNEL4, 5201),
                "--bytes",
                &(60u64 << 20).to_string(),
                "--seconds",
                "100",
            ],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // From the peer's own address (so only validation can catch them) and from a stranger.
    bed.tunload(
        Host::A,
        "garbage-peer",
        &["garbage", "--to", &target_b, "--count", &count.to_string()],
        Duration::from_secs(30),
    )
    .unwrap();
    bed.tunload(
        Host::C,
        "garbage-stranger",
        &[
            "garbage",
            "--to",
            &stranger_target,
            "--count",
            &count.to_string(),
        ],
        Duration::from_secs(30),
    )
    .unwrap();
    let status = sender.wait_for(Duration::from_secs(110)).unwrap();
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
    assert_eq!(parse_json(&sink.stdout()).unwrap()["verified"], true);
    stop(&bed, a, "a.json");
    let report_b = stop(&bed, b, "b.json");
    // Per kind: random bytes and version 5 -> bad version; truncated and oversized -> length
    // mismatch; 3 bytes -> bad header. Everything from C -> foreign source.
    assert_eq!(drops(&report_b, "bad_ip_version"), 2 * count, "{report_b}");
    assert_eq!(
        drops(&report_b, "ip_length_mismatch"),
        2 * count,
        "{report_b}"
    );
    assert_eq!(drops(&report_b, "bad_ip_header"), count, "{report_b}");
    assert_eq!(drops(&report_b, "foreign_source"), 5 * count, "{report_b}");
    assert!(busy_queues(&report_b, "udp_rx_packets", 1) >= 1);
}

fn a_peer_that_starts_later_is_reached_and_icmp_errors_are_counted(engine: &str) {
    let bed = testbed();
    let a = relay(&bed, Host::A, engine, &[]);
    // B has no tunfwd yet: its kernel answers with ICMP port unreachable.
    let out = bed.tunload(
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
        Duration::from_secs(20),
    );
    assert!(
        out.is_err(),
        "no replies can come back while B is down: {out:?}"
    );
    let b = relay(&bed, Host::B, engine, &[]);
    let r = ping(&bed, Host::A, testbed::B_TUNNEL4, 5);
    assert_eq!(r["received"], 5, "{r}");
    verified_transfer(&bed, Host::A, Host::B, testbed::B_TUNNEL4, 10 << 20, 1);
    let report_a = stop(&bed, a, "a.json");
    stop(&bed, b, "b.json");
    let icmp: u64 = total(&report_a, "icmp_errors");
    let unreachable = drops(&report_a, "peer_unreachable");
    assert!(
        icmp + unreachable > 0,
        "the ICMP errors from the down peer were not counted: {report_a}"
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
    // Every counter stage accounts for its packets: what A read it sent or dropped; what B
    // received it wrote or dropped; nothing appears from nowhere.
    let a_read = total(&report_a, "tun_rx_packets");
    let a_sent = total(&report_a, "udp_tx_packets");
    let a_send_drops = drops(&report_a, "udp_send_buffer_full")
        + drops(&report_a, "udp_send_error")
        + drops(&report_a, "peer_unreachable");
    assert_eq!(a_read, a_sent + a_send_drops, "A: {report_a}");
    let b_received = total(&report_b, "udp_rx_packets");
    let b_written = total(&report_b, "tun_tx_packets");
    assert_eq!(
        b_received,
        b_written + drops(&report_b, "tun_write_error"),
        "B: {report_b}"
    );
    assert!(b_received <= a_sent);
    assert!(a_read >= received, "A read {a_read}, sink got {received}");
    assert!(
        b_written >= received,
        "B wrote {b_written}, sink got {received}"
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
            tunfwd::offload::split::tun_gso_max_size(mtu).unwrap()
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
                assert!(
                    gso > 100 && gro > 100 && merged > 100,
                    "{name}: gso {gso}, gro {gro}, merged {merged}: {report}"
                );
            } else {
                assert_eq!((gso, gro, merged), (0, 0, 0), "{name}: {report}");
            }
            assert_eq!(drops(report, "bad_offload"), 0, "{name}: {report}");
            assert_eq!(total(report, "coalesce_fallbacks"), 0, "{name}");
        }
        // Packets are counted per segment at every stage, offloads or not.
        let a_sent = total(&report_a, "udp_tx_packets");
        assert_eq!(
            total(&report_a, "tun_rx_packets"),
            a_sent + drops(&report_a, "udp_send_buffer_full") + drops(&report_a, "udp_send_error")
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
    let cap = tunfwd::worker::MAX_SPLIT_SEGMENTS;
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
    Testbed::new(&wrapper, Path::new(env!("CARGO_BIN_EXE_tunload")))
        .expect("building the namespace testbed")
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
    assert!(total(&report, "tun_rx_packets") >= 5, "{report}");
    drop(b);
}
