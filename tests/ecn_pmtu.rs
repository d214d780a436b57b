//! ECN (RFC 6040) and path MTU across the tunnel, on the namespace testbed with the real binary.
//!
//! They need root and fail at once without it, never skipping silently, as in tests/netns.rs.
//! No packet tools are needed: where a test must see or set the *outer* header, it plays the
//! other relay (or the congested router) itself. A thread of this process enters a namespace
//! with setns(2), which moves only that thread, and uses tunfwd's own socket helpers: a UDP
//! socket on the tunnel port with `IP_RECVTOS` reads the outer TOS of what relay A sends, and a
//! socket that sends with a chosen outer TOS stands in for relay A behind a router that marked
//! CE. (An nftables rule in the middle could mark CE too, but `nft` is not installed on these
//! machines, and tc's pedit action is not built into their kernel.)
//!
//! Every test runs once per I/O engine, as in tests/netns.rs: refused sends and their resends,
//! ICMP too-big replies, sends on a fragmenting socket and the draining of the socket's error
//! queue each go through the engine's own plumbing (poll's sendmmsg and POLLERR, uring-compat's
//! single-shot RECVMSG). A test body is a function of the engine's name, and [`per_engine!`]
//! makes a module of the same name with one `#[test]` per engine (`uring`, `uring_compat`,
//! `poll`). Each relay is started with `--engine` and must say at startup that it runs the engine
//! it was forced to, so a silent fallback to another engine fails the test. The tests run one at
//! a time: each testbed has namespaces of its own, but floods and timed transfers running side
//! by side on a 2-core machine would starve each other's relays.

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tunfwd::testing::{Ecn, decapsulated_ecn, socket};
use tunfwd_testkit::sockets;
use tunfwd_testkit::testbed::{self, Host, Process, Testbed, endpoint, parse_json};

static SERIAL: Mutex<()> = Mutex::new(());

tunfwd_testkit::per_engine!(
    outer_headers_carry_the_inner_ecn_and_the_chosen_dscp,
    outer_marks_reach_the_inner_packets_by_rfc_6040,
    a_transfer_survives_the_path_mtu_dropping_and_senders_are_told,
    fitting_packets_still_go_and_a_forged_smaller_mtu_is_refuted,
);

/// Runs one test body for `engine`, holding the suite's lock.
fn serially(body: fn(&str), engine: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    body(engine);
}

fn testbed() -> Testbed {
    if !testbed::is_root() {
        panic!(
            "the ECN and path MTU tests need root (namespaces, veth, TUN): run them as root, \
             e.g. `sudo -E cargo test --test ecn_pmtu`"
        );
    }
    Testbed::new(
        Path::new(env!("CARGO_BIN_EXE_tunfwd")),
        &tunfwd_testkit::binaries::tool("tunload"),
    )
    .expect("building the namespace testbed")
}

/// Runs `work` in `host`'s network namespace (`Testbed::in_namespace`); panics on failure.
fn in_namespace<T: Send>(
    bed: &Testbed,
    host: Host,
    work: impl FnOnce() -> io::Result<T> + Send,
) -> T {
    bed.in_namespace(host, work)
        .unwrap_or_else(|e| panic!("in namespace {host:?}: {e}"))
}

/// A relay with one queue, as [`relay_with_queues`].
fn relay(bed: &Testbed, host: Host, engine: &str, extra: &[&str]) -> Process {
    relay_with_queues(bed, host, engine, 1, extra)
}

/// A relay forced to run `engine`, with `queues` queues and a stats file named after the host
/// (`A.json`, `B.json`), started with `extra` options and checked to run that engine.
fn relay_with_queues(
    bed: &Testbed,
    host: Host,
    engine: &str,
    queues: usize,
    extra: &[&str],
) -> Process {
    let json = bed.path(&format!("{host:?}.json"));
    let queues = queues.to_string();
    let mut args = vec![
        "--engine",
        engine,
        "--queues",
        &queues,
        "--stats-json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let relay = bed
        .start_tunfwd(host, &format!("tunfwd-{host:?}"), &args)
        .unwrap_or_else(|e| panic!("tunfwd on {host:?} with --engine {engine}: {e}"));
    testbed::assert_runs(&relay, engine);
    relay
}

/// Stops a relay with SIGTERM, checks it exits 0, and returns its final JSON report.
fn stop(bed: &Testbed, mut relay: Process, host: Host) -> Value {
    relay
        .stop_for_report(&bed.path(&format!("{host:?}.json")))
        .unwrap_or_else(|e| panic!("stopping tunfwd on {host:?}: {e}"))
}

/// A field of the report's `path` section, summed over the queues.
fn path_total(report: &Value, field: &str) -> u64 {
    testbed::report_sum(&report["path"]["queues"], field)
}

fn drops(report: &Value, reason: &str) -> u64 {
    testbed::report_drops(report, reason)
}

/// A per-queue counter, summed over the queues.
fn total(report: &Value, field: &str) -> u64 {
    testbed::report_sum(&report["queues"], field)
}

/// Receives datagrams from `fds`, polling each in turn, and hands each one's bytes and TOS /
/// traffic class to `take`, until `take` says it has all it waits for (returns true) or `limit`
/// has passed. Returns whether `take` was satisfied. Waiting for a count rather than for a quiet
/// moment keeps a slow machine from cutting a case short, and lets the caller ignore the
/// stragglers of other cases.
fn receive_until(
    fds: &[&OwnedFd],
    limit: Duration,
    mut take: impl FnMut(&[u8], Option<u8>) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    let mut data = vec![0u8; 65536];
    let mut control = [0u8; 128];
    while Instant::now() < deadline {
        let mut idle = true;
        for fd in fds {
            if let Ok((n, control_len)) = socket::recvmsg_with_control(
                fd.as_raw_fd(),
                &mut data,
                &mut control,
                libc::MSG_DONTWAIT,
            ) {
                idle = false;
                let tos = tunfwd::testing::receive_control(&control[..control_len]).tos;
                if take(&data[..n], tos) {
                    return true;
                }
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    false
}

/// A UDP socket that sends to `to` from any address (the route picks it), with a port of its own.
fn sender_to(to: SocketAddr) -> io::Result<OwnedFd> {
    sockets::plain_sender(to)
}

/// A UDP socket bound to `address` that reports each datagram's TOS.
fn tos_receiver(address: &str) -> io::Result<OwnedFd> {
    let listen: SocketAddr = address.parse().unwrap();
    let fd = socket::udp_socket(listen, socket::SOCKET_BUFFER_BYTES as usize)
        .map_err(io::Error::other)?;
    socket::enable_receive_tos(&fd, listen)?;
    Ok(fd)
}

/// Sends `payload` to `to` with the TOS / traffic class `tos` on the datagram.
fn send_with_tos(fd: &OwnedFd, to: SocketAddr, payload: &[u8], tos: u8) {
    sockets::send_with_tos(fd, to, payload, tos)
        .unwrap_or_else(|e| panic!("send to {to} with TOS {tos:#x}: {e}"));
}

/// An inner UDP packet from relay A's overlay address to B's, `dport`, TOS `tos`, carrying
/// `payload`: what A's kernel would hand A's TUN.
fn inner_udp(ipv6: bool, tos: u8, dport: u16, payload: &[u8]) -> Vec<u8> {
    let builder = if ipv6 {
        let a: std::net::Ipv6Addr = testbed::A_TUNNEL6.parse().unwrap();
        let b: std::net::Ipv6Addr = testbed::B_TUNNEL6.parse().unwrap();
        PacketBuilder::ipv6(a.octets(), b.octets(), 64).udp(40000, dport)
    } else {
        let a: std::net::Ipv4Addr = testbed::A_TUNNEL4.parse().unwrap();
        let b: std::net::Ipv4Addr = testbed::B_TUNNEL4.parse().unwrap();
        PacketBuilder::ipv4(a.octets(), b.octets(), 64).udp(40000, dport)
    };
    let mut p = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut p, payload).unwrap();
    if ipv6 {
        p[0] = 0x60 | tos >> 4;
        p[1] = tos << 4 | (p[1] & 0x0f);
    } else {
        p[1] = tos;
        let header = etherparse::Ipv4HeaderSlice::from_slice(&p)
            .unwrap()
            .to_header();
        p[10..12].copy_from_slice(&header.calc_header_checksum().to_be_bytes());
    }
    p
}

/// The TOS / traffic class of an IP packet, and its UDP destination port and payload if it is
/// UDP.
fn inner_udp_parts(packet: &[u8]) -> Option<(u8, u16, &[u8])> {
    let sliced = SlicedPacket::from_ip(packet).ok()?;
    let tos = match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            h.dcp().value() << 2 | h.ecn().value()
        }
        Some(NetSlice::Ipv6(ip)) => ip.header().traffic_class(),
        _ => return None,
    };
    match &sliced.transport {
        Some(TransportSlice::Udp(udp)) => Some((tos, udp.destination_port(), udp.payload())),
        _ => None,
    }
}

/// Relay options, and (inner TOS, outer TOS expected) for the packets sent under them.
type Setting = (&'static [&'static str], &'static [(u8, u8)]);

/// Encapsulation: relay A's outer header carries the inner ECN field (CE included, RFC 6040
/// normal mode), with DSCP 0 by default, the inner DSCP with `--tos inherit`, a fixed one with
/// `--tos N`, and no ECN with `--no-ecn`. The test is relay B: it receives A's datagrams on the
/// tunnel port and reads each one's outer TOS and, inside, the inner packet's.
fn outer_headers_carry_the_inner_ecn_and_the_chosen_dscp(engine: &str) {
    let bed = testbed();
    let fake_b = in_namespace(&bed, Host::B, || tos_receiver("0.0.0.0:55555"));
    let settings: [Setting; 5] = [
        (
            &[],
            &[
                (0x02, 0x02),
                (0x01, 0x01),
                (0x03, 0x03),
                (0xb8, 0x00),
                (0xba, 0x02),
            ],
        ),
        (
            &["--tos", "inherit"],
            &[(0xba, 0xba), (0x48, 0x48), (0x03, 0x03)],
        ),
        (
            &["--tos", "0x20"],
            &[(0xba, 0x22), (0x00, 0x20), (0x03, 0x23)],
        ),
        (&["--no-ecn"], &[(0x02, 0x00), (0xbb, 0x00)]),
        (
            &["--no-ecn", "--tos", "inherit"],
            &[(0xbb, 0xb8), (0x01, 0x00)],
        ),
    ];
    // Inner traffic from A's namespace into A's TUN, with the inner TOS as a control message.
    let targets: Vec<SocketAddr> = [testbed::B_TUNNEL4, testbed::B_TUNNEL6]
        .iter()
        .map(|b| SocketAddr::new(b.parse::<IpAddr>().unwrap(), 6000))
        .collect();
    let senders = in_namespace(&bed, Host::A, || {
        targets
            .iter()
            .map(|to| sender_to(*to))
            .collect::<io::Result<Vec<_>>>()
    });
    let mut case = 0;
    for (options, cases) in settings {
        let a = relay(&bed, Host::A, engine, options);
        for (sender, &to) in senders.iter().zip(&targets) {
            let ipv6 = to.is_ipv6();
            for &(inner, outer) in cases {
                // Each case's packets say which case they are, so a straggler of the one before
                // cannot be taken for one of this one's.
                case += 1;
                let payload = format!("ecn encapsulation, case {case}");
                for _ in 0..5 {
                    send_with_tos(sender, to, payload.as_bytes(), inner);
                }
                let mut ours: Vec<(u8, Option<u8>)> = Vec::new();
                let mut others = 0;
                receive_until(&[&fake_b], Duration::from_secs(5), |datagram, outer_tos| {
                    match inner_udp_parts(datagram) {
                        Some((inner_seen, 6000, seen)) if seen == payload.as_bytes() => {
                            ours.push((inner_seen, outer_tos))
                        }
                        _ => others += 1,
                    }
                    ours.len() == 5
                });
                let at = format!("{options:?}, IPv6 {ipv6}, inner {inner:#04x}");
                assert_eq!(
                    ours.len(),
                    5,
                    "{at}: {ours:?}, and {others} other datagrams"
                );
                for (inner_seen, outer_seen) in ours {
                    assert_eq!(inner_seen, inner, "{at}: the inner packet is untouched");
                    assert_eq!(outer_seen, Some(outer), "{at}: outer TOS");
                }
            }
        }
        stop(&bed, a, Host::A);
        wait_for_device_gone(&bed, Host::A);
    }
}

/// Waits until the relay's TUN device is gone. It outlives the relay's exit for a moment: the
/// io_uring holds its registered files until the ring's exit work runs, after the process is
/// gone, and a relay started in that window attaches its queues to the dying device, whose old
/// queues then take the packets.
fn wait_for_device_gone(bed: &Testbed, host: Host) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Command::new("ip")
        .args(["-n", &bed.namespace(host), "link", "show", "dev", "tunfwd0"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            Instant::now() < deadline,
            "tunfwd0 outlived its relay by 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Decapsulation, every cell of RFC 6040 Figure 4 over IPv4 and IPv6: the test is relay A (from
/// A's underlay address, so relay B takes the datagrams as its peer's) and the router that
/// marked the outer header. What relay B writes into its TUN is received by sockets in B's
/// namespace, which read the inner TOS: ECN-capable packets under an outer CE arrive CE, an
/// inner ECT(0) under an outer ECT(1) arrives ECT(1), Not-ECT ones under CE never arrive and
/// are counted as `ecn_not_ect`, and the rest arrive as they were sent, DSCP included.
fn outer_marks_reach_the_inner_packets_by_rfc_6040(engine: &str) {
    let bed = testbed();
    let b = relay(&bed, Host::B, engine, &[]);
    let (receiver4, receiver6) = in_namespace(&bed, Host::B, || {
        Ok((tos_receiver("0.0.0.0:7000")?, tos_receiver("[::]:7000")?))
    });
    let peer_b: SocketAddr = endpoint(testbed::B_UNDERLAY, testbed::TUNNEL_PORT)
        .parse()
        .unwrap();
    // From relay A's own address and port: relay B takes datagrams from exactly that.
    let a_port: SocketAddr = endpoint(testbed::A_UNDERLAY, testbed::TUNNEL_PORT)
        .parse()
        .unwrap();
    let fake_a = in_namespace(&bed, Host::A, || {
        socket::udp_socket(a_port, 1 << 20).map_err(io::Error::other)
    });
    const EACH: usize = 5;
    const DSCP: u8 = 0x28; // AF11, which must come through untouched
    let mut expected = BTreeMap::new();
    for ipv6 in [false, true] {
        for outer in Ecn::ALL {
            for inner in Ecn::ALL {
                let id = [u8::from(ipv6), outer.bits(), inner.bits()];
                let packet = inner_udp(ipv6, DSCP | inner.bits(), 7000, &id);
                for _ in 0..EACH {
                    // The outer DSCP is not the inner one's business: give it another.
                    send_with_tos(&fake_a, peer_b, &packet, 0xb8 | outer.bits());
                }
                expected.insert(id, decapsulated_ecn(outer, inner));
            }
        }
    }
    // Wait for every packet that should arrive; a dropped one, arriving anyway, fails the
    // comparison below if it came in time, and the ecn_not_ect count if not.
    let wanted = EACH * expected.values().filter(|result| result.is_some()).count();
    let mut arrived: BTreeMap<[u8; 3], Vec<Option<u8>>> = BTreeMap::new();
    let mut count = 0;
    receive_until(
        &[&receiver4, &receiver6],
        Duration::from_secs(5),
        |payload, tos| {
            if let Ok(id) = <[u8; 3]>::try_from(payload)
                && expected.contains_key(&id)
            {
                arrived.entry(id).or_default().push(tos);
                count += 1;
            }
            count == wanted
        },
    );
    let mut not_ect_drops = 0;
    let mut ce_marks = 0;
    for (id, result) in &expected {
        let got = arrived.get(id).cloned().unwrap_or_default();
        let at = format!(
            "IPv6 {}, outer {:?}, inner {:?}",
            id[0],
            Ecn::of(id[1]),
            Ecn::of(id[2])
        );
        match result {
            None => {
                assert!(got.is_empty(), "{at}: dropped, yet {got:?} arrived");
                not_ect_drops += EACH as u64;
            }
            Some(ecn) => {
                assert_eq!(got, vec![Some(DSCP | ecn.bits()); EACH], "{at}");
                if *ecn == Ecn::Ce && Ecn::of(id[2]) != Ecn::Ce {
                    ce_marks += EACH as u64;
                }
            }
        }
    }
    let report = stop(&bed, b, Host::B);
    assert_eq!(drops(&report, "ecn_not_ect"), not_ect_drops, "{report}");
    assert_eq!(path_total(&report, "ecn_ce_marked"), ce_marks, "{report}");
    assert_eq!(not_ect_drops, 2 * EACH as u64);
    assert_eq!(ce_marks, 4 * EACH as u64);
}

/// Sends `bytes` of verified TCP from A to `to` on B in the background; returns the sink and
/// the sender.
fn start_transfer(bed: &Testbed, to: &str, bytes: u64, name: &str) -> (Process, Process) {
    let listen = endpoint(if to.contains(':') { "::" } else { "0.0.0.0" }, 5201);
    let sink = bed
        .tunload_background(
            Host::B,
            &format!("{name}-sink"),
            &["tcp-sink", "--listen", &listen, "--seconds", "150"],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let sender = bed
        .tunload_background(
            Host::A,
            &format!("{name}-send"),
            &[
                "tcp-send",
                "--to",
                &endpoint(to, 5201),
                "--bytes",
                &bytes.to_string(),
                "--seconds",
                "120",
            ],
        )
        .unwrap();
    (sink, sender)
}

fn finish_transfer((mut sink, mut sender): (Process, Process), bytes: u64, what: &str) {
    let status = sender.wait_for(Duration::from_secs(130)).unwrap();
    assert!(
        status.success(),
        "{what}: the sender failed: {}{}",
        sender.stdout(),
        sender.stderr()
    );
    assert!(
        sink.wait_for(Duration::from_secs(20)).unwrap().success(),
        "{}",
        sink.stderr()
    );
    let verdict = parse_json(&sink.stdout()).unwrap();
    assert_eq!(verdict["verified"], true, "{what}: {verdict}");
    assert_eq!(
        verdict["bytes"].as_u64().unwrap(),
        bytes,
        "{what}: {verdict}"
    );
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends a `size`-byte UDP datagram (DF set: the helper socket discovers the path MTU) from A's
/// namespace to `to`, an overlay address behind relay A, and waits for the ICMP error relay A
/// answers with; returns the MTU it told. The send itself must succeed: A's kernel knows no
/// smaller MTU for `to`, so any error comes from the tunnel.
fn too_big_answer(bed: &Testbed, to: &str, size: usize) -> Option<u32> {
    let to: SocketAddr = endpoint(to, 9).parse().unwrap();
    let local = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let probe = in_namespace(bed, Host::A, || {
        socket::udp_socket(local.parse().unwrap(), socket::SOCKET_BUFFER_BYTES as usize)
            .map_err(io::Error::other)
    });
    let payload = vec![0x5a; size];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        sockets::send_with_tos(&probe, to, &payload, 0)
            .unwrap_or_else(|e| panic!("sending {size} bytes to {to}: {e}"));
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(10));
            if let Some(mtu) = socket::drain_error_queue(probe.as_raw_fd(), None).icmp_path_mtu {
                return Some(mtu);
            }
        }
    }
    None
}

/// Path MTU: a verified 100 MB TCP transfer through relays with default options is running
/// when the underlay veth's MTU drops from 1500 to 1280 at both ends. Relay A's sends start to
/// fail (locally, EMSGSIZE or EINVAL: a veth between namespaces sends no ICMP); it learns the
/// new path MTU, drops what no longer fits, and tells the inner TCP with ICMP
/// fragmentation-needed, which lowers its MSS; the transfer completes verified. Then IPv6 TCP
/// at an inner MTU below IPv6's 1280 minimum still verifies (its 1280-byte packets leave in outer
/// fragments), and a too-big IPv4 and IPv6 datagram each get their ICMP answer with the MTU.
/// Both relays report the new path MTU on every queue, and relay A lowered it (`pmtu_lowered`):
/// the egress device's own MTU, which the local stack reports when it refuses a send, is
/// believed at once.
fn a_transfer_survives_the_path_mtu_dropping_and_senders_are_told(engine: &str) {
    let bed = testbed();
    let (ns_a, ns_b) = (bed.namespace(Host::A), bed.namespace(Host::B));
    let a = relay_with_queues(&bed, Host::A, engine, 2, &[]);
    let b = relay_with_queues(&bed, Host::B, engine, 2, &[]);
    // A token-bucket shaper on A's side of the underlay makes 100 MB take seconds, so the MTU
    // surely drops in the middle of the transfer on any machine.
    sh(&[
        "ip", "netns", "exec", &ns_a, "tc", "qdisc", "add", "dev", "ab", "root", "tbf", "rate",
        "300mbit", "burst", "256kb", "latency", "200ms",
    ]);
    let bytes = 100 << 20;
    let transfer = start_transfer(&bed, testbed::B_TUNNEL4, bytes, "ipv4");
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        transfer.1.stdout().is_empty(),
        "the transfer finished before the MTU dropped"
    );
    sh(&["ip", "-n", &ns_a, "link", "set", "dev", "ab", "mtu", "1280"]);
    sh(&["ip", "-n", &ns_b, "link", "set", "dev", "ba", "mtu", "1280"]);
    finish_transfer(transfer, bytes, "IPv4 TCP across the MTU drop");
    sh(&[
        "ip", "netns", "exec", &ns_a, "tc", "qdisc", "del", "dev", "ab", "root",
    ]);

    // Inner IPv6 on a path whose inner MTU (1252) is below IPv6's minimum.
    let v6_bytes = 8 << 20;
    let transfer = start_transfer(&bed, testbed::B_TUNNEL6, v6_bytes, "ipv6");
    finish_transfer(transfer, v6_bytes, "IPv6 TCP at inner MTU 1252");

    // Addresses behind relay B's side of the overlay that A's kernel has no PMTU for yet.
    std::thread::sleep(Duration::from_millis(1100)); // the reply rate refills
    assert_eq!(too_big_answer(&bed, "198.19.0.77", 1400), Some(1252));
    assert_eq!(too_big_answer(&bed, "2001:2:1::77", 1400), Some(1280));
    std::thread::sleep(Duration::from_millis(1100)); // every queue rechecks the path

    let stderr_a = a.stderr();
    let report_a = stop(&bed, a, Host::A);
    let report_b = stop(&bed, b, Host::B);
    eprintln!(
        "relay A: too_big {}, too_big_replies {}, fragmented_sends {}, \
         pmtu_lowered {}, path_mtu {:?}",
        drops(&report_a, "too_big"),
        path_total(&report_a, "too_big_replies"),
        path_total(&report_a, "fragmented_sends"),
        path_total(&report_a, "pmtu_lowered"),
        report_a["path"]["queues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["path_mtu"].as_u64())
            .collect::<Vec<_>>()
    );
    for (name, report) in [("A", &report_a), ("B", &report_b)] {
        for q in report["path"]["queues"].as_array().unwrap() {
            assert_eq!(q["path_mtu"], 1280, "{name}: {report}");
        }
        assert_eq!(report["path"]["path_mtu"], 1280, "{name}: {report}");
    }
    assert!(drops(&report_a, "too_big") > 0, "{report_a}");
    assert!(path_total(&report_a, "too_big_replies") >= 3, "{report_a}");
    assert!(path_total(&report_a, "fragmented_sends") > 0, "{report_a}");
    assert!(
        path_total(&report_a, "pmtu_lowered") > 0,
        "relay A did not lower its path MTU: {report_a}"
    );
    assert!(
        stderr_a.contains("path MTU to 198.18.0.2 is 1280; inner packets up to 1252 bytes"),
        "relay A did not log the new path MTU: {stderr_a}"
    );
}

/// An ICMP fragmentation-needed about relay A's datagrams, as a router on the underlay would
/// send it, claiming a next-hop MTU of `mtu`: ICMP type 3 code 4 quoting the IPv4 header and UDP
/// header of a datagram from A's tunnel port to B's. The caller's raw socket adds the IP header.
fn frag_needed_about_relay_a(mtu: u16) -> Vec<u8> {
    let a: Ipv4Addr = testbed::A_UNDERLAY.parse().unwrap();
    let b: Ipv4Addr = testbed::B_UNDERLAY.parse().unwrap();
    let datagram_len = 1500u16;
    let mut ip = etherparse::Ipv4Header::new(
        datagram_len - 20,
        64,
        etherparse::IpNumber::UDP,
        a.octets(),
        b.octets(),
    )
    .unwrap();
    ip.dont_fragment = true;
    ip.header_checksum = ip.calc_header_checksum();
    let mut quote = ip.to_bytes().to_vec();
    quote.extend_from_slice(&testbed::TUNNEL_PORT.to_be_bytes());
    quote.extend_from_slice(&testbed::TUNNEL_PORT.to_be_bytes());
    quote.extend_from_slice(&(datagram_len - 20).to_be_bytes());
    quote.extend_from_slice(&[0, 0]);
    let kind = etherparse::Icmpv4Type::DestinationUnreachable(
        etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
    );
    let mut message = etherparse::Icmpv4Header::with_checksum(kind, &quote)
        .to_bytes()
        .to_vec();
    message.extend_from_slice(&quote);
    message
}

/// A raw ICMP socket (root), in the namespace of the thread that makes it.
fn raw_icmp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); owned right after the check.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// Sends `message` on the raw socket `fd` to `to` (the kernel adds the IP header).
fn send_raw(fd: &OwnedFd, to: Ipv4Addr, message: &[u8]) -> io::Result<()> {
    let (storage, len) = socket::to_sockaddr(SocketAddr::new(IpAddr::V4(to), 0));
    // SAFETY: `message` and `storage` are live for the call, with their lengths.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A forged ICMP fragmentation-needed neither costs the packets it is not about nor moves the
/// path MTU. With `IP_RECVERR` each one sets relay A's socket error to EMSGSIZE
/// (`__udp4_lib_err`), and the next send fails with it whatever its size; and it claims a path
/// of 1400 bytes, which the kernel would take for ten minutes. This test plays someone who knows
/// the tunnel's 4-tuple: while small datagrams flood through the tunnel, it sends relay A a
/// stream of fragmentation-needed errors for 1400 bytes from B's host. Relay A must send again
/// the datagrams those errors made the kernel refuse (none dropped as `too_big`, none answered
/// with an ICMP error, none lost as a send error), count each error once as `icmp_too_big`, and
/// keep its path MTU: relay B acknowledges probes of the full size, which refutes every hint.
/// (Before, relay A took 1400, and before that, every refused send was judged too big: fitting
/// packets, whole GSO batches of them, were dropped and their senders told a bogus MTU.)
fn fitting_packets_still_go_and_a_forged_smaller_mtu_is_refuted(engine: &str) {
    let bed = testbed();
    // B first, so that A's first probe is answered: a hint that arrives before the peer has
    // ever answered cannot be confirmed and is taken down to the floor, by design
    // (`relay::plpmtud`), which is not what this test is about. On a loaded machine, B started
    // second could miss all three of A's first tries.
    let b = relay(&bed, Host::B, engine, &[]);
    let a = relay(&bed, Host::A, engine, &[]);
    let mut sink = bed
        .tunload_background(
            Host::B,
            "sink",
            &[
                "udp-sink",
                "--listen",
                "0.0.0.0:6200",
                "--seconds",
                "20",
                "--idle-ms",
                "1500",
            ],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut flood = bed
        .tunload_background(
            Host::A,
            "flood",
            &[
                "udp-flood",
                "--to",
                &endpoint(testbed::B_TUNNEL4, 6200),
                "--size",
                "200",
                "--seconds",
                "3",
            ],
        )
        .unwrap();
    let router = in_namespace(&bed, Host::B, raw_icmp_socket);
    let message = frag_needed_about_relay_a(1400);
    let to: Ipv4Addr = testbed::A_UNDERLAY.parse().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut errors_sent = 0;
    while started.elapsed() < Duration::from_millis(2000) {
        send_raw(&router, to, &message).expect("sending the ICMP error");
        errors_sent += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        flood.wait_for(Duration::from_secs(20)).unwrap().success(),
        "{}",
        flood.stderr()
    );
    assert!(
        sink.wait_for(Duration::from_secs(25)).unwrap().success(),
        "{}",
        sink.stderr()
    );
    let verdict = parse_json(&sink.stdout()).unwrap();
    let report_a = stop(&bed, a, Host::A);
    stop(&bed, b, Host::B);
    eprintln!(
        "{errors_sent} ICMP errors sent; sink {verdict}; relay A: icmp_errors {}, too_big {}, \
         udp_send_error {}, send_retries {}, pmtu_hints {}, pmtu_hints_refuted {}",
        report_a["queues"][0]["icmp_errors"],
        drops(&report_a, "too_big"),
        drops(&report_a, "udp_send_error"),
        total(&report_a, "send_retries"),
        path_total(&report_a, "pmtu_hints"),
        path_total(&report_a, "pmtu_hints_refuted"),
    );
    assert!(verdict["received"].as_u64().unwrap() > 0, "{verdict}");
    assert_eq!(
        report_a["path"]["path_mtu"], 1500,
        "relay A kept its path MTU (the default MTU, 1472, and 28 bytes of headers): {report_a}"
    );
    assert_eq!(path_total(&report_a, "pmtu_lowered"), 0, "{report_a}");
    assert!(
        path_total(&report_a, "pmtu_hints_refuted") > 0,
        "relay A refuted the hints by probing: {report_a}"
    );
    assert!(
        path_total(&report_a, "icmp_too_big") > 0,
        "relay A saw the errors: {report_a}"
    );
    let kinds: u64 = [
        "icmp_port_unreachable",
        "icmp_host_unreachable",
        "icmp_net_unreachable",
        "icmp_too_big",
        "icmp_time_exceeded",
        "icmp_other",
    ]
    .iter()
    .map(|kind| path_total(&report_a, kind))
    .sum();
    assert_eq!(
        total(&report_a, "icmp_errors"),
        kinds,
        "each error counted once, by kind: {report_a}"
    );
    assert!(
        path_total(&report_a, "icmp_too_big") <= errors_sent,
        "no error counted twice: {errors_sent} sent, {report_a}"
    );
    assert_eq!(drops(&report_a, "too_big"), 0, "{report_a}");
    assert_eq!(path_total(&report_a, "too_big_replies"), 0, "{report_a}");
    assert_eq!(drops(&report_a, "udp_send_error"), 0, "{report_a}");
    assert_eq!(drops(&report_a, "peer_unreachable"), 0, "{report_a}");
}
