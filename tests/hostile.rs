//! A hostile underlay, on the namespace testbed with the real binary: what someone on the path, or
//! on the peer's host, can do to a relay without breaking into it.
//!
//! - Forge ICMP errors that quote the tunnel's 4-tuple. With `IP_RECVERR` every one of them is
//!   queued on the relay's socket and sets its pending error, so the next send fails with it
//!   (`__udp4_lib_err` in net/ipv4/udp.c; ip(7)); a fragmentation-needed one also lowers the
//!   route's path MTU for ten minutes (`ipv4_sk_update_pmtu`, `ip_rt_mtu_expires`). RFC 5927
//!   describes the same attacks against TCP; RFC 8899 section 4.6.1 says why a
//!   datagram-layer sender must treat such messages as hints to verify.
//! - Send the relay datagrams from the peer's address but another port.
//! - Move the peer: its name now resolves to another address.
//! - Never read the relay's stdout.
//!
//! They need root and fail at once without it, never skipping silently, as in tests/netns.rs.
//! They run one at a time: the flood measures throughput, which tests running beside it on a
//! 2-core machine would disturb. The relays run the I/O engine tunfwd picks (`auto`); the
//! per-engine plumbing of ICMP errors is tests/ecn_pmtu.rs's.
//!
//! The flood test also writes its figures to `bench-results/icmp-flood-latest.md`.

use etherparse::{Icmpv4Header, Icmpv4Type, PacketBuilder};
use serde_json::Value;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tunfwd_testkit::testbed::{self, Host, Process, Testbed, endpoint, parse_json};

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the suite's lock for the caller's test.
fn serially() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn testbed() -> Testbed {
    if !testbed::is_root() {
        panic!(
            "the hostile-underlay tests need root (namespaces, veth, TUN, raw sockets): run them \
             as root, e.g. `sudo -E cargo test --release --test hostile`"
        );
    }
    Testbed::new(
        Path::new(env!("CARGO_BIN_EXE_tunfwd")),
        &tunfwd_testkit::binaries::tool("tunload"),
    )
    .expect("building the namespace testbed")
}

/// Where `host`'s relay writes its JSON report.
fn json_path(bed: &Testbed, host: Host) -> PathBuf {
    bed.path(&format!("{host:?}.json"))
}

/// tunfwd on `host` through the testbed, with a JSON report at [`json_path`] and `extra`.
fn relay(bed: &Testbed, host: Host, extra: &[&str]) -> Process {
    let json = json_path(bed, host);
    let mut args = vec!["--stats-json", json.to_str().unwrap()];
    args.extend_from_slice(extra);
    bed.start_tunfwd(host, &format!("tunfwd-{host:?}"), &args)
        .unwrap_or_else(|e| panic!("tunfwd on {host:?}: {e}"))
}

/// The last report `host`'s relay wrote (it writes them whole, by rename).
fn latest_report(bed: &Testbed, host: Host) -> Value {
    let text = fs::read_to_string(json_path(bed, host))
        .unwrap_or_else(|e| panic!("the report of {host:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the report of {host:?} ({e}): {text}"))
}

/// Stops a relay with SIGTERM and returns its final JSON report.
fn stop(bed: &Testbed, mut relay: Process, host: Host) -> Value {
    relay
        .stop_for_report(&json_path(bed, host))
        .unwrap_or_else(|e| panic!("stopping tunfwd on {host:?}: {e}"))
}

/// A counter of the report's `path` section summed over the queues; 0 when the report has no
/// such counter (a relay that predates it), so that a check on it fails instead of panicking.
fn path_total(report: &Value, field: &str) -> u64 {
    report["path"]["queues"].as_array().map_or(0, |queues| {
        queues.iter().filter_map(|q| q[field].as_u64()).sum()
    })
}

/// A per-queue counter (or, with `drops/REASON`, a drop reason) summed over the queues; 0 when
/// the report has none.
fn queue_total(report: &Value, field: &str) -> u64 {
    let pointer = format!("/{}", field.replace('.', "/"));
    report["queues"].as_array().map_or(0, |queues| {
        queues
            .iter()
            .filter_map(|q| q.pointer(&pointer).and_then(Value::as_u64))
            .sum()
    })
}

fn drops(report: &Value, reason: &str) -> u64 {
    queue_total(report, &format!("drops.{reason}"))
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

/// `ip ARGS`' standard output; panics if it fails.
fn ip_output(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ipv4(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

/// Sets an integer socket option.
fn set_int(fd: &impl AsRawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: `value` is a live c_int and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level}, {name}): {}",
        io::Error::last_os_error()
    );
}

/// Reads an integer socket option.
fn get_int(fd: &impl AsRawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live and describe a c_int.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The ICMP flood

/// The kinds of ICMP error the flood forges, sent in turn (RFC 792), each with the counter of
/// relay A's report (`path.queues[]`) that counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forged {
    /// Type 3 code 3: ECONNREFUSED on the next send.
    PortUnreachable,
    /// Type 3 code 1: EHOSTUNREACH.
    HostUnreachable,
    /// Type 11 code 0: EHOSTUNREACH too (`__udp4_lib_err`).
    TimeExceeded,
    /// Type 3 code 4 with a next-hop MTU of 552, the smallest the kernel takes
    /// (`net.ipv4.route.min_pmtu`, ip-sysctl.rst): EMSGSIZE, and the route's path MTU drops.
    TooBig,
}

impl Forged {
    const ALL: [Forged; 4] = [
        Forged::PortUnreachable,
        Forged::HostUnreachable,
        Forged::TimeExceeded,
        Forged::TooBig,
    ];

    /// The next-hop MTU the fragmentation-needed messages claim.
    const CLAIMED_MTU: u16 = 552;

    fn counter(self) -> &'static str {
        match self {
            Forged::PortUnreachable => "icmp_port_unreachable",
            Forged::HostUnreachable => "icmp_host_unreachable",
            Forged::TimeExceeded => "icmp_time_exceeded",
            Forged::TooBig => "icmp_too_big",
        }
    }

    fn icmp_type(self) -> Icmpv4Type {
        use etherparse::icmpv4::{DestUnreachableHeader, TimeExceededCode};
        match self {
            Forged::PortUnreachable => {
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
            }
            Forged::HostUnreachable => {
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host)
            }
            Forged::TimeExceeded => {
                Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit)
            }
            Forged::TooBig => {
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: Self::CLAIMED_MTU,
                })
            }
        }
    }

    /// The ICMP message (the caller's raw socket adds the IP header): `self` about a 1500-byte
    /// datagram from relay A's tunnel port to relay B's, quoting its IPv4 header and the first
    /// 8 bytes of its payload, the UDP header, as RFC 792 has routers do.
    fn about_relay_a(self) -> Vec<u8> {
        let datagram_len = 1500u16;
        let mut ip = etherparse::Ipv4Header::new(
            datagram_len - 20,
            64,
            etherparse::IpNumber::UDP,
            ipv4(testbed::A_UNDERLAY).octets(),
            ipv4(testbed::B_UNDERLAY).octets(),
        )
        .unwrap();
        ip.dont_fragment = true;
        ip.header_checksum = ip.calc_header_checksum();
        let mut quote = ip.to_bytes().to_vec();
        quote.extend_from_slice(&testbed::TUNNEL_PORT.to_be_bytes());
        quote.extend_from_slice(&testbed::TUNNEL_PORT.to_be_bytes());
        quote.extend_from_slice(&(datagram_len - 20).to_be_bytes());
        quote.extend_from_slice(&[0, 0]);
        let mut message = Icmpv4Header::with_checksum(self.icmp_type(), &quote)
            .to_bytes()
            .to_vec();
        message.extend_from_slice(&quote);
        message
    }
}

/// A raw ICMP socket (root), in the namespace of the thread that makes it; raw(7).
fn raw_icmp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); owned right after the check.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Sends `message` on the raw socket `fd` to `to` (the kernel adds the IP header).
fn send_raw(fd: &OwnedFd, to: Ipv4Addr, message: &[u8]) -> io::Result<()> {
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(to).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `message` and `address` are live for the call, with their lengths.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            (&address as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Forged messages per second.
const FLOOD_RATE: u32 = 1000;

/// Floods relay A with forged ICMP errors from B's namespace (so from B's underlay address, as
/// an attacker on B's host or on the path would), [`FLOOD_RATE`] a second of the four kinds in
/// turn, from `start` until `end` or until `stop` is set; returns how many of each kind went.
/// Bounded by `end` in time and by its rate in count.
fn flood(bed: &Testbed, start: Instant, end: Instant, stop: &AtomicBool) -> io::Result<[u64; 4]> {
    let messages: Vec<Vec<u8>> = Forged::ALL.iter().map(|k| k.about_relay_a()).collect();
    let to = ipv4(testbed::A_UNDERLAY);
    bed.in_namespace(Host::B, || {
        let socket = raw_icmp_socket()?;
        let mut sent = [0u64; 4];
        std::thread::sleep(start.saturating_duration_since(Instant::now()));
        let every = Duration::from_secs(1) / FLOOD_RATE;
        for i in 0u32.. {
            let due = start + every * i;
            let now = Instant::now();
            if now >= end || stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(due.saturating_duration_since(now));
            let kind = i as usize % messages.len();
            send_raw(&socket, to, &messages[kind])?;
            sent[kind] += 1;
        }
        Ok(sent)
    })
}

/// How many testbeds the flood test tries for one where the errors fail a worker's sends.
const MAX_TESTBEDS: u32 = 12;
/// Relay A's queues in the flood test.
const FLOOD_QUEUES: u32 = 4;
/// Where iperf3 listens, on B's overlay address.
const IPERF_PORT: u16 = 5202;

/// Sends `count` forged port unreachables about relay A's datagrams from B's namespace, `gap`
/// apart. Port unreachables only: a fragmentation-needed would lower A's route before the
/// measurement.
fn forge_port_unreachables(bed: &Testbed, count: u64, gap: Duration) {
    let message = Forged::PortUnreachable.about_relay_a();
    in_namespace(bed, Host::B, || {
        let socket = raw_icmp_socket()?;
        for _ in 0..count {
            send_raw(&socket, ipv4(testbed::A_UNDERLAY), &message)?;
            std::thread::sleep(gap);
        }
        Ok(())
    });
}

/// One counter of queue `queue` in a report; 0 if absent.
fn queue_counter(report: &Value, queue: u32, field: &str) -> u64 {
    let pointer = format!("/queues/{queue}/{}", field.replace('.', "/"));
    report
        .pointer(&pointer)
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// The sends of queue `queue` that failed: sent again (`send_retries`), or lost to an error
/// about the peer or another send error (how a relay without resends counts them).
fn failed_sends(report: &Value, queue: u32) -> u64 {
    [
        "send_retries",
        "drops.peer_unreachable",
        "drops.udp_send_error",
    ]
    .iter()
    .map(|field| queue_counter(report, queue, field))
    .sum()
}

/// An iperf3 client port, `from` or above, whose TCP flow from A's overlay address to B's
/// (port [`IPERF_PORT`]) relay A's steering gives to worker `queue` (`tunfwd::steer::
/// flow_index`, the reference for its reuseport program): that worker receives the flow's
/// acknowledgements and writes them to TUN queue `queue`, so the TUN's automq table sends the
/// flow's data to it too.
fn client_port_for(queue: u32, from: u16) -> u16 {
    (from..=u16::MAX)
        .find(|&port| {
            let builder = PacketBuilder::ipv4(
                ipv4(testbed::A_TUNNEL4).octets(),
                ipv4(testbed::B_TUNNEL4).octets(),
                64,
            )
            .tcp(port, IPERF_PORT, 0, 65535);
            let mut packet = Vec::with_capacity(builder.size(0));
            builder.write(&mut packet, &[]).unwrap();
            tunfwd::testing::flow_index(&packet, FLOOD_QUEUES) == queue
        })
        .expect("a client port for every queue")
}

/// The relays of the flood test, where the ICMP errors about the tunnel fail the sends of the
/// worker that carries the measured flow.
struct FloodBed {
    bed: Testbed,
    a: Process,
    b: Process,
    server: Process,
    /// The worker whose socket the kernel hands the errors to.
    queue: u32,
    /// How many testbeds were built to find it.
    testbeds: u32,
    /// What the probes saw in the testbed kept.
    probe: String,
}

/// Builds testbeds until the kernel hands the ICMP errors about the tunnel to one of relay A's
/// workers' own sockets, and returns it with iperf3's server running on B.
///
/// The kernel gives each error to one socket of the port's reuseport group, picked by a hash of
/// the quoted 4-tuple (`__udp4_lib_err` looks the socket up with no packet to run the group's
/// steering program on, so `reuseport_select_sock` picks by hash; net/core/sock_reuseport.c).
/// The hash mixes in a random value of the network namespace (`net_hash_mix`,
/// include/net/netns/hash.h), so the socket changes from testbed to testbed. Relay A's group
/// holds its 4 workers' sockets and, after them, one socket per worker for outer fragmentation,
/// which that worker also reads errors from. Only on a worker's own socket does an error fail
/// a send (its pending error, `sk_err`), and only the sends of that worker: the case the flood
/// must be survived in is the errors landing on the worker that carries the traffic.
///
/// So: 40 forged port unreachables say which worker reads them (its `icmp_errors` rise by 40,
/// and no other's: every error is counted, once, wherever it lands); then an iperf3 flow
/// steered to that worker runs while 100 more arrive, and its failed sends say whether they
/// land on the worker's own socket. If not, another testbed.
fn testbed_where_errors_fail_a_workers_sends() -> FloodBed {
    let queues = FLOOD_QUEUES.to_string();
    for testbeds in 1..=MAX_TESTBEDS {
        let bed = testbed();
        // B first: relay A's first datagrams would otherwise meet a closed port, and B's host
        // would answer with real port unreachables, counted with the forged ones.
        // One outer tuple (`--entropy off`): the flood quotes the listen tuple, which with outer
        // entropy carries no flow's data (each flow leaves from an extra port of its own, whose
        // ICMP errors its own tuple's path MTU machine confirms by probing that tuple:
        // `a_hint_about_an_extra_tuple_is_probed_on_that_tuple` in src/relay/entropy_tests.rs).
        let b = relay(&bed, Host::B, &["--queues", &queues, "--entropy", "off"]);
        let a = relay(
            &bed,
            Host::A,
            &[
                "--queues",
                &queues,
                "--stats-interval",
                "1",
                "--entropy",
                "off",
            ],
        );
        let server = iperf3_server(&bed);
        // The first report with the path MTU settled.
        std::thread::sleep(Duration::from_millis(1500));
        let errors = |report: &Value| -> Vec<u64> {
            (0..FLOOD_QUEUES)
                .map(|q| queue_counter(report, q, "icmp_errors"))
                .collect()
        };
        let before = errors(&latest_report(&bed, Host::A));
        forge_port_unreachables(&bed, 40, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(2200)); // two reports
        let report = latest_report(&bed, Host::A);
        let rose: Vec<u64> = errors(&report)
            .iter()
            .zip(&before)
            .map(|(n, b)| n.saturating_sub(*b))
            .collect();
        // Every one counted, once, by the worker that reads the socket the kernel chose.
        let Some(queue) = (0..FLOOD_QUEUES).find(|&q| rose[q as usize] == 40) else {
            panic!(
                "relay A did not count each of 40 forged port unreachables once (by queue: \
                 {rose:?}); whichever socket of the group the kernel hands them to, each must \
                 be counted: {report}"
            );
        };
        let failed_before = failed_sends(&report, queue);
        let port = client_port_for(queue, 40000);
        let mut client = iperf3_client(&bed, port, 2);
        let probed = wait_for_bulk(&bed, 2 << 20, Duration::from_secs(15)).map(|_| {
            forge_port_unreachables(&bed, 100, Duration::from_millis(2));
        });
        let _ = client.wait_for(Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(2200)); // two reports
        let failed =
            failed_sends(&latest_report(&bed, Host::A), queue).saturating_sub(failed_before);
        let probe = format!(
            "40 forged errors counted by queue(s) {rose:?}; 100 more during a flow steered to \
             queue {queue} (client port {port}) failed {failed} of its sends"
        );
        eprintln!("testbed {testbeds}: {probe}");
        probed.unwrap_or_else(|e| panic!("the probing iperf3 did not start: {e}"));
        if failed > 0 {
            return FloodBed {
                bed,
                a,
                b,
                server,
                queue,
                testbeds,
                probe,
            };
        }
    }
    panic!("in {MAX_TESTBEDS} testbeds the ICMP errors never reached a worker's own socket");
}

/// iperf3's server on B's overlay address, port [`IPERF_PORT`], once it listens.
fn iperf3_server(bed: &Testbed) -> Process {
    let port = IPERF_PORT.to_string();
    let server = bed
        .spawn(
            Host::B,
            "iperf3-server",
            Path::new("iperf3"),
            &["-s", "-B", testbed::B_TUNNEL4, "-p", &port].map(String::from),
        )
        .expect("starting iperf3 -s (is iperf3 installed?)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !in_namespace(bed, Host::B, || tcp_listening(IPERF_PORT)) {
        assert!(
            Instant::now() < deadline,
            "iperf3 -s did not listen within 10 s: {}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

/// iperf3's client in A's namespace: one TCP stream from client port `port` to the server, for
/// `seconds`, reporting each second in JSON.
fn iperf3_client(bed: &Testbed, port: u16, seconds: u32) -> Process {
    bed.spawn(
        Host::A,
        &format!("iperf3-client-{port}"),
        Path::new("iperf3"),
        &[
            "-c",
            testbed::B_TUNNEL4,
            "-p",
            &IPERF_PORT.to_string(),
            "--cport",
            &port.to_string(),
            "-t",
            &seconds.to_string(),
            "-i",
            "1",
            "-J",
        ]
        .map(String::from),
    )
    .expect("starting iperf3 -c")
}

/// The transmitted bytes of `device` in the namespace of the calling thread, from
/// `/proc/thread-self/net/dev` (the thread's own network namespace; proc(5)).
fn tx_bytes(device: &str) -> io::Result<u64> {
    let text = fs::read_to_string("/proc/thread-self/net/dev")?;
    text.lines()
        .find_map(|line| {
            let (name, counters) = line.split_once(':')?;
            (name.trim() == device).then(|| counters.split_whitespace().nth(8)?.parse().ok())?
        })
        .ok_or_else(|| io::Error::other(format!("no tx_bytes for {device} in {text}")))
}

/// Waits, from A's namespace, until A's underlay device has sent `bytes` more than when called:
/// the moment a bulk transfer has started. Returns that moment, or an error after `limit`.
fn wait_for_bulk(bed: &Testbed, bytes: u64, limit: Duration) -> io::Result<Instant> {
    bed.in_namespace(Host::A, || {
        let before = tx_bytes("ab")?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if tx_bytes("ab")? >= before + bytes {
                return Ok(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(io::Error::other(format!(
            "A's underlay sent less than {bytes} bytes within {limit:?}"
        )))
    })
}

/// The TCP extended counters (`TcpExt` in `/proc/net/netstat`, proc(5); named as in
/// include/uapi/linux/snmp.h) of `host`'s network namespace.
fn tcp_ext(bed: &Testbed, host: Host) -> std::collections::BTreeMap<String, u64> {
    let text = in_namespace(bed, host, || {
        fs::read_to_string("/proc/thread-self/net/netstat")
    });
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Default::default();
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(name, value)| Some((name.to_string(), value.parse().ok()?)))
        .collect()
}

/// How the counters `keys` of [`tcp_ext`] rose from `before` to `after`.
fn tcp_ext_rise(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    keys: &[&str],
) -> String {
    keys.iter()
        .map(|key| {
            let rise = after
                .get(*key)
                .unwrap_or(&0)
                .saturating_sub(*before.get(*key).unwrap_or(&0));
            format!("{key} {rise}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a TCP socket listens on `port` in the calling thread's namespace (`/proc/net/tcp`,
/// state 0A is LISTEN; proc(5)).
fn tcp_listening(port: u16) -> io::Result<bool> {
    let text = fs::read_to_string("/proc/thread-self/net/tcp")?;
    let local = format!(":{port:04X}");
    Ok(text.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "0A"
    }))
}

/// The path MTU A's kernel has cached for B's underlay address: `mtu N` on the `cache` line of
/// `ip route get` (ip-route(8)), `None` when there is no exception with an MTU.
fn cached_route_mtu(bed: &Testbed) -> Option<u32> {
    let out = ip_output(&[
        "-n",
        &bed.namespace(Host::A),
        "route",
        "get",
        testbed::B_UNDERLAY,
    ]);
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "mtu")
        .and_then(|w| w[1].parse().ok())
}

/// What a socket that honours the path MTU would see on A's host: a UDP socket with
/// `IP_PMTUDISC_DO`, connected to B's underlay address, reads the route's path MTU with
/// `IP_MTU` (ip(7)) and tries a 1400-byte datagram. Returns the MTU and the send's result
/// (`Err` with EMSGSIZE when the path MTU is below it). The send goes to the discard port,
/// never to a relay, and its result is all that is looked at.
fn what_a_dont_fragment_socket_sees(bed: &Testbed) -> (i32, io::Result<usize>) {
    in_namespace(bed, Host::A, || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        set_int(
            &socket,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        );
        socket.connect(SocketAddr::new(ipv4(testbed::B_UNDERLAY).into(), 9))?;
        let mtu = get_int(&socket, libc::IPPROTO_IP, libc::IP_MTU)?;
        Ok((mtu, socket.send(&[0u8; 1400])))
    })
}

/// One second (or so) of an iperf3 run: its offsets from the start of the test and its rate.
#[derive(Debug, Clone, Copy)]
struct Interval {
    start: f64,
    end: f64,
    bits_per_second: f64,
    /// TCP retransmissions in the interval, as the sender's kernel counts them.
    retransmits: u64,
}

fn iperf_intervals(report: &Value) -> Vec<Interval> {
    report["intervals"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|i| {
                    let sum = &i["sum"];
                    Some(Interval {
                        start: sum["start"].as_f64()?,
                        end: sum["end"].as_f64()?,
                        bits_per_second: sum["bits_per_second"].as_f64()?,
                        retransmits: sum["retransmits"].as_u64().unwrap_or(0),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The mean rate in Gbit/s of the whole intervals that lie within `from..=to` seconds of the
/// test's start, and how many those were.
fn mean_gbits(intervals: &[Interval], (from, to): (f64, f64)) -> (f64, usize) {
    let picked: Vec<&Interval> = intervals
        .iter()
        .filter(|i| i.start >= from - 0.01 && i.end <= to + 0.01 && i.end - i.start > 0.5)
        .collect();
    let sum: f64 = picked.iter().map(|i| i.bits_per_second).sum();
    (sum / picked.len().max(1) as f64 / 1e9, picked.len())
}

/// The timeline of a measured run, in seconds from the moment bulk data started to flow
/// (iperf3's intervals start there too, within milliseconds). The first second is TCP's start
/// and left out; "before" is the three seconds after it. The flood runs from 4.5 s to 9.5 s,
/// and "during" is the whole seconds inside it; "after" is the three whole seconds that begin
/// three seconds or more after it ended.
const IPERF_SECONDS: u32 = 16;
const FLOOD_FROM: f64 = 4.5;
const FLOOD_TO: f64 = 9.5;
const PHASES: [(&str, (f64, f64), usize); 3] = [
    ("before", (1.0, 4.0), 3),
    ("during", (5.0, 9.0), 4),
    ("after", (13.0, 16.0), 3),
];

/// The bounds issue 18 set: during the flood at least half the throughput before it, after it
/// at least 70%.
const DURING_AT_LEAST: f64 = 0.5;
const AFTER_AT_LEAST: f64 = 0.7;

/// Attempts of the flood test at most, when only a throughput bound is missed (see the test).
const FLOOD_ATTEMPTS: usize = 3;

/// The verified transfer that crosses a second flood.
const FLOOD_TRANSFER_BYTES: u64 = 256 << 20;

/// One measured run: an iperf3 stream through the flood, and what A's kernel showed after it.
struct MeasuredRun {
    /// The iperf3 client's port (its flow steered to the errors' worker).
    port: u16,
    intervals: Vec<Interval>,
    /// Mean Gbit/s and intervals averaged, of each of [`PHASES`].
    phases: [(f64, usize); 3],
    /// Forged errors sent, by kind ([`Forged::ALL`]).
    sent: [u64; 4],
    /// Sends of the errors' worker that failed during the run (`failed_sends`).
    failed_sends: u64,
    /// The path MTU A's kernel cached for B after the flood.
    route_mtu_after: Option<u32>,
    /// What an `IP_PMTUDISC_DO` socket on A saw after the flood: its MTU, and the errno of a
    /// 1400-byte send (0 if it went).
    socket_after: (i32, i32),
    /// What the inner TCP's kernels counted during the run: sender (A) and receiver (B).
    tcp_sender: String,
    tcp_receiver: String,
}

/// One iperf3 stream from client port `port` (steered to worker `queue`, which reads the
/// errors) for [`IPERF_SECONDS`], flooded from [`FLOOD_FROM`] to [`FLOOD_TO`].
fn measured_run(bed: &Testbed, queue: u32, port: u16) -> MeasuredRun {
    let report_before = latest_report(bed, Host::A);
    let (tcp_a, tcp_b) = (tcp_ext(bed, Host::A), tcp_ext(bed, Host::B));
    let mut client = iperf3_client(bed, port, IPERF_SECONDS);
    let t0 = wait_for_bulk(bed, 2 << 20, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("iperf3 did not start: {e}: {}", client.stderr()));
    let at = |s: f64| t0 + Duration::from_secs_f64(s);
    let sent = flood(bed, at(FLOOD_FROM), at(FLOOD_TO), &AtomicBool::new(false)).expect("flooding");
    let route_mtu_after = cached_route_mtu(bed);
    let (socket_mtu, socket_send) = what_a_dont_fragment_socket_sees(bed);
    let status = client
        .wait_for(Duration::from_secs(u64::from(IPERF_SECONDS) + 30))
        .expect("iperf3 -c finishing");
    assert!(
        status.success(),
        "iperf3 -c failed ({status}): {}{}",
        client.stdout(),
        client.stderr()
    );
    // The flood ended seconds ago: the latest report (one a second) covers it.
    let failed_sends = failed_sends(&latest_report(bed, Host::A), queue)
        .saturating_sub(failed_sends(&report_before, queue));
    let iperf: Value = serde_json::from_str(&client.stdout())
        .unwrap_or_else(|e| panic!("iperf3's JSON ({e}): {}", client.stdout()));
    let intervals = iperf_intervals(&iperf);
    // Retransmissions of segments that were not lost but reordered show as D-SACKs (RFC 2883)
    // at the sender and as out-of-order segments at the receiver.
    let tcp_sender = tcp_ext_rise(
        &tcp_a,
        &tcp_ext(bed, Host::A),
        &[
            "TCPDSACKRecv",
            "TCPSACKReorder",
            "TCPLostRetransmit",
            "TCPTimeouts",
        ],
    );
    let tcp_receiver = tcp_ext_rise(
        &tcp_b,
        &tcp_ext(bed, Host::B),
        &["TCPOFOQueue", "TCPDSACKOldSent", "TCPDSACKOfoSent"],
    );
    MeasuredRun {
        tcp_sender,
        tcp_receiver,
        port,
        phases: PHASES.map(|(_, span, _)| mean_gbits(&intervals, span)),
        intervals,
        sent,
        failed_sends,
        route_mtu_after,
        socket_after: (
            socket_mtu,
            socket_send.map_or_else(|e| e.raw_os_error().unwrap_or(-1), |_| 0),
        ),
    }
}

/// One criterion of the flood test and whether it held; `throughput` marks the two that the
/// machine's other work can spoil (see the test).
struct Check {
    what: String,
    ok: bool,
    throughput: bool,
}

/// One attempt of the flood test, in a testbed of its own: its checks, and its figures as
/// Markdown.
struct Attempt {
    checks: Vec<Check>,
    markdown: String,
}

impl Attempt {
    /// Whether everything held but (some of) the throughput.
    fn only_throughput_missed(&self) -> bool {
        self.checks.iter().all(|c| c.ok || c.throughput) && self.checks.iter().any(|c| !c.ok)
    }
}

/// One attempt of the flood test (see the test): a testbed where the errors fail the measured
/// worker's sends, one measured run, a verified transfer through a second flood, and the checks.
fn flood_attempt() -> Attempt {
    let started = Instant::now();
    let load_at_start = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let FloodBed {
        bed,
        a,
        b,
        // Kept until the end (dropping it stops it).
        server: _server,
        queue,
        testbeds,
        probe,
    } = testbed_where_errors_fail_a_workers_sends();
    let engine_line = a
        .stderr()
        .lines()
        .find(|l| l.starts_with("tunfwd: engine "))
        .unwrap_or("tunfwd: engine ?")
        .to_string();
    let route_mtu_at_start = cached_route_mtu(&bed);
    let (socket_mtu_at_start, _) = what_a_dont_fragment_socket_sees(&bed);
    let path_mtu_before = latest_report(&bed, Host::A)["path"]["path_mtu"].clone();
    // A flow steered to the worker that reads the errors, from a port the probe did not use.
    let run = measured_run(
        &bed,
        queue,
        client_port_for(queue, client_port_for(queue, 40000) + 1),
    );

    // A verified transfer through a second flood, which lasts as long as the transfer.
    let stop_flood = AtomicBool::new(false);
    let (transfer, sent_transfer) = std::thread::scope(|s| {
        let flooding = s.spawn(|| {
            let now = Instant::now();
            flood(&bed, now, now + Duration::from_secs(120), &stop_flood)
        });
        let transfer = bed.verified_transfer(
            Host::A,
            Host::B,
            testbed::B_TUNNEL4,
            FLOOD_TRANSFER_BYTES,
            1,
            &[],
        );
        stop_flood.store(true, Ordering::Relaxed);
        let sent = flooding
            .join()
            .expect("the flood thread")
            .expect("flooding");
        (transfer, sent)
    });

    let report_a = stop(&bed, a, Host::A);
    let report_b = stop(&bed, b, Host::B);
    // Every forged error this testbed's relay A was sent, by kind: the run's, the transfer's and
    // the probes' 140 port unreachables (those of testbeds before went to relays now gone).
    let sent: Vec<u64> = (0..Forged::ALL.len())
        .map(|k| run.sent[k] + sent_transfer[k] + if k == 0 { 140 } else { 0 })
        .collect();

    let mut checks: Vec<Check> = Vec::new();
    let mut check = |what: String, ok: bool| {
        checks.push(Check {
            what,
            ok,
            throughput: false,
        })
    };
    let [(before, n0), (during, n1), (after, n2)] = run.phases;
    let whole = n0 == PHASES[0].2 && n1 == PHASES[1].2 && n2 == PHASES[2].2;
    check(
        format!(
            "throughput during the flood {during:.2} Gbit/s >= {DURING_AT_LEAST} x {before:.2} \
             before"
        ),
        whole && during >= DURING_AT_LEAST * before,
    );
    check(
        format!(
            "throughput 3 s after the flood {after:.2} Gbit/s >= {AFTER_AT_LEAST} x {before:.2} \
             before"
        ),
        whole && after >= AFTER_AT_LEAST * before,
    );
    check(
        format!(
            "the errors failed sends of the measured flow's worker (queue {queue}): {}",
            run.failed_sends
        ),
        run.failed_sends > 0,
    );
    let lost: Vec<(&str, u64)> = ["peer_unreachable", "udp_send_error", "too_big"]
        .iter()
        .map(|reason| (*reason, drops(&report_a, reason)))
        .collect();
    check(
        format!("no drops as peer_unreachable, udp_send_error or too_big: {lost:?}"),
        lost.iter().all(|(_, n)| *n == 0),
    );
    check(
        format!(
            "pmtu_lowered == 0 ({})",
            path_total(&report_a, "pmtu_lowered")
        ),
        report_a["path"]["queues"].is_array() && path_total(&report_a, "pmtu_lowered") == 0,
    );
    check(
        format!(
            "path_mtu unchanged: {} before the flood, {} at the end",
            path_mtu_before, report_a["path"]["path_mtu"]
        ),
        path_mtu_before == 1500 && report_a["path"]["path_mtu"] == path_mtu_before,
    );
    for (k, kind) in Forged::ALL.iter().enumerate() {
        let counted = path_total(&report_a, kind.counter());
        check(
            format!(
                "{}: 1 <= {counted} counted <= {} sent",
                kind.counter(),
                sent[k]
            ),
            counted >= 1 && counted <= sent[k],
        );
    }
    check(
        format!(
            "the flood was real: A's kernel cached path MTU {:?} for B after it (none before: \
             {:?})",
            run.route_mtu_after, route_mtu_at_start
        ),
        route_mtu_at_start.is_none() && run.route_mtu_after == Some(u32::from(Forged::CLAIMED_MTU)),
    );
    check(
        format!(
            "an IP_PMTUDISC_DO socket on A: IP_MTU {socket_mtu_at_start} before, {} after, and a \
             1400-byte send then failed with errno {} (EMSGSIZE is {})",
            run.socket_after.0,
            run.socket_after.1,
            libc::EMSGSIZE
        ),
        socket_mtu_at_start == 1500
            && run.socket_after == (i32::from(Forged::CLAIMED_MTU), libc::EMSGSIZE),
    );
    let transfer_text = match &transfer {
        Ok(_) => format!(
            "{} MiB verified while {} more forged errors were sent",
            FLOOD_TRANSFER_BYTES >> 20,
            sent_transfer.iter().sum::<u64>()
        ),
        Err(e) => format!("failed: {e}"),
    };
    check(
        format!("a verified transfer through a flood: {transfer_text}"),
        transfer.is_ok() && sent_transfer.iter().sum::<u64>() > 0,
    );
    checks[0].throughput = true;
    checks[1].throughput = true;

    let mut md = String::new();
    let load: Vec<&str> = load_at_start.split_whitespace().take(3).collect();
    let _ = writeln!(
        md,
        "- load average at the start: {}; relay A says `{engine_line}`",
        load.join(" ")
    );
    let _ = writeln!(
        md,
        "- testbeds built to find one where the errors fail a worker's sends: {testbeds}; in \
         it, {probe}"
    );
    let _ = writeln!(
        md,
        "- the measured flow: client port {}, steered to queue {queue}, whose failed sends rose \
         by {} during the run\n",
        run.port, run.failed_sends
    );
    let _ = writeln!(
        md,
        "| phase | seconds of the run | mean Gbit/s | of before | bound |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for ((name, (from, to), _), (gbits, n)) in PHASES.iter().zip(run.phases) {
        let bound = match *name {
            "during" => format!(">= {DURING_AT_LEAST}"),
            "after" => format!(">= {AFTER_AT_LEAST}"),
            _ => String::new(),
        };
        let _ = writeln!(
            md,
            "| {name} | {from}-{to} ({n} intervals) | {gbits:.2} | {:.2} | {bound} |",
            gbits / before
        );
    }
    let per_second: Vec<String> = run
        .intervals
        .iter()
        .map(|i| format!("{:.2} ({})", i.bits_per_second / 1e9, i.retransmits))
        .collect();
    let _ = writeln!(
        md,
        "\nEach second, Gbit/s (and TCP retransmissions): {}\n",
        per_second.join(" ")
    );
    let _ = writeln!(
        md,
        "The inner TCP during the run: at the sender (A), {}; at the receiver (B), {}.\n",
        run.tcp_sender, run.tcp_receiver
    );
    let _ = writeln!(
        md,
        "| ICMP error | sent (measured run) | sent (verified transfer) | counted by relay A |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    for (k, kind) in Forged::ALL.iter().enumerate() {
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} |",
            kind.counter(),
            run.sent[k],
            sent_transfer[k],
            path_total(&report_a, kind.counter())
        );
    }
    let r = &report_a;
    let _ = writeln!(
        md,
        "\nThe probes sent 140 more port unreachables to this relay A. Relay A at the end: \
         icmp_errors {}, send_retries {}, drops peer_unreachable {}, too_big {}, udp_send_error \
         {}; pmtu_hints {}, pmtu_hints_refuted {}, pmtu_lowered {}, pmtu_probes_sent {}, \
         pmtu_probes_acked {}, path_mtu {}.\n",
        queue_total(r, "icmp_errors"),
        queue_total(r, "send_retries"),
        drops(r, "peer_unreachable"),
        drops(r, "too_big"),
        drops(r, "udp_send_error"),
        path_total(r, "pmtu_hints"),
        path_total(r, "pmtu_hints_refuted"),
        path_total(r, "pmtu_lowered"),
        path_total(r, "pmtu_probes_sent"),
        path_total(r, "pmtu_probes_acked"),
        r["path"]["path_mtu"],
    );
    let nonzero_drops = |report: &Value| -> Vec<(String, u64)> {
        report["queues"][0]["drops"]
            .as_object()
            .map(|reasons| {
                reasons
                    .keys()
                    .map(|reason| (reason.clone(), drops(report, reason)))
                    .filter(|(_, n)| *n > 0)
                    .collect()
            })
            .unwrap_or_default()
    };
    let _ = writeln!(
        md,
        "Losses anywhere in the tunnel: relay A's drops {:?} and kernel drops {}; relay B's \
         drops {:?} and kernel drops {}.\n",
        nonzero_drops(&report_a),
        report_a["kernel_drops"],
        nonzero_drops(&report_b),
        report_b["kernel_drops"],
    );
    let _ = writeln!(md, "Checks:\n");
    for c in &checks {
        let _ = writeln!(md, "- [{}] {}", if c.ok { "x" } else { " " }, c.what);
    }
    let _ = writeln!(md, "\nThis attempt took {:.0?}.", started.elapsed());
    if !checks.iter().all(|c| c.ok) {
        let _ = writeln!(md, "\nRelay A's final report: `{report_a}`");
    }
    Attempt {
        checks,
        markdown: md,
    }
}

/// Issue 18's acceptance test: 1000 forged ICMP errors a second about the tunnel, from the
/// peer's host, do not cut relay A's throughput, do not move its path MTU and lose no packet.
///
/// Relays at `--queues 4`, in a testbed where the kernel hands the errors to one of relay A's
/// workers' own sockets, so that each error fails one of its sends (see
/// [`testbed_where_errors_fail_a_workers_sends`]), and the measured flow steered to that worker.
/// One iperf3 TCP stream A -> B runs 16 s: a second of TCP's start, 3 s before the flood, 5 s
/// of flood, and 3 s measured from three seconds after it ended. The flood quotes relay A's
/// outer 4-tuple and mixes port unreachable, host unreachable, time exceeded and
/// fragmentation-needed (MTU 552) evenly. It is real at the kernel level: A's kernel caches a
/// path MTU of 552 for B, and a socket that obeys it (`IP_PMTUDISC_DO`, as tunfwd's did before)
/// can no longer send 1400 bytes. Relay A must keep the throughput (during >= 0.5x, after >=
/// 0.7x the rate before), drop nothing as `peer_unreachable`, `udp_send_error` or `too_big`,
/// keep its path MTU (`pmtu_lowered` 0, `path_mtu` 1500 throughout), and count each kind of
/// error, never more than were sent. A verified transfer of 256 MiB then crosses a second flood
/// of the same mix.
///
/// The machine is shared, and one TCP stream's rate over three seconds moves with whatever else
/// runs: without any flood, "after" came out at 0.83x to 1.45x of "before" in five runs, and
/// with four other builds beside it one attempt lost an iperf3 interval and the next came in at
/// 0.50x and 0.57x. So an attempt that misses only a throughput bound is made again (at most
/// [`FLOOD_ATTEMPTS`] in all), each from scratch in a new testbed (a flood's cached path MTU
/// would spoil the next baseline in the same one), and the last decides; every other check
/// must hold in all of them. A relay the flood hurts misses every attempt by far: the one
/// before 8a61002 ran at 0.11x to 0.14x during the flood and 0.10x to 0.18x after, in three
/// runs.
///
/// The figures go to the test's output and to `bench-results/icmp-flood-latest.md`, written
/// before the verdict so that a failing run's figures are there too.
#[test]
fn forged_icmp_errors_at_1000_a_second_leave_throughput_and_path_mtu_alone() {
    let _serial = serially();
    let started = Instant::now();
    let mut attempts = vec![flood_attempt()];
    while attempts.len() < FLOOD_ATTEMPTS && attempts.last().unwrap().only_throughput_missed() {
        eprintln!(
            "{}\nonly a throughput bound was missed: once more",
            attempts.last().unwrap().markdown
        );
        attempts.push(flood_attempt());
    }
    let last = attempts.last().unwrap();
    let passed = last.checks.iter().all(|c| c.ok)
        && attempts
            .iter()
            .all(|a| a.checks.iter().all(|c| c.ok || c.throughput));
    let text = flood_results(&attempts, passed, started.elapsed());
    eprintln!("{text}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results/icmp-flood-latest.md");
    if let Err(e) = fs::create_dir_all(out.parent().unwrap()).and_then(|()| fs::write(&out, &text))
    {
        eprintln!("cannot write {}: {e}", out.display());
    }
    let failed: Vec<&str> = attempts
        .iter()
        .flat_map(|a| a.checks.iter())
        .filter(|c| !c.ok)
        .map(|c| c.what.as_str())
        .collect();
    assert!(passed, "failed: {failed:#?}");
}

/// The flood test's results file: how it was run, then each attempt's figures.
fn flood_results(attempts: &[Attempt], passed: bool, took: Duration) -> String {
    let mut md = String::new();
    let manifest = env!("CARGO_MANIFEST_DIR");
    let date = command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);
    let commit = command_line("git", &["-C", manifest, "rev-parse", "--short", "HEAD"]);
    let dirty = !command_line(
        "git",
        &[
            "-C",
            manifest,
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_empty();
    let kernel = command_line("uname", &["-r"]);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        md,
        "# ICMP flood against relay A (issue 18's acceptance test)\n"
    );
    let _ = writeln!(
        md,
        "Produced by the test \
         `forged_icmp_errors_at_1000_a_second_leave_throughput_and_path_mtu_alone` in \
         tests/hostile.rs, which overwrites this file each time it runs; do not edit it by \
         hand.\n"
    );
    let _ = writeln!(md, "- date: {date}");
    let _ = writeln!(
        md,
        "- command: `sudo cargo test --release --test hostile -- forged_icmp_errors`"
    );
    let _ = writeln!(
        md,
        "- commit: {commit}{}",
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "- machine: Linux {kernel}, {cpus} CPUs");
    let _ = writeln!(
        md,
        "- relays: `--queues {FLOOD_QUEUES}`, defaults otherwise; one iperf3 TCP stream A -> B \
         through the tunnel, {IPERF_SECONDS} s, 1 s intervals"
    );
    let _ = writeln!(
        md,
        "- flood: {FLOOD_RATE} ICMP errors/s from B's namespace (source {}) to relay A, quoting \
         {}:{port} -> {}:{port}, the four kinds in turn, from {FLOOD_FROM} s to {FLOOD_TO} s of \
         the run",
        testbed::B_UNDERLAY,
        testbed::A_UNDERLAY,
        testbed::B_UNDERLAY,
        port = testbed::TUNNEL_PORT
    );
    let _ = writeln!(
        md,
        "- where the errors land: the kernel hands all the errors about one 4-tuple to one socket \
         of the port's reuseport group (relay A's 4 workers' and their 4 fragmenting sockets), \
         picked by a hash with a random part per network namespace, and an error fails a send \
         only on a worker's own socket; each attempt builds testbeds until that is where they \
         land, and steers the measured flow to that worker"
    );
    let _ = writeln!(
        md,
        "- result: {} ({} attempt(s), {:.0?})",
        if passed { "pass" } else { "FAIL" },
        attempts.len(),
        took
    );
    for (n, attempt) in attempts.iter().enumerate() {
        let _ = writeln!(md, "\n## Attempt {}\n\n{}", n + 1, attempt.markdown);
    }
    md
}

/// The first line `program args` prints, or `?`.
fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "?".to_string())
}

// ---------------------------------------------------------------------------------------------
// 2. Exact source

/// The inner datagrams' destination port on A's overlay address.
const INNER_PORT: u16 = 7100;
/// Datagrams per batch in the exact-source test.
const BATCH: usize = 16;

/// `BATCH` inner packets as relay B would send them, all of one length: IPv4 UDP from B's
/// overlay address to [`INNER_PORT`] on A's, each payload naming `batch` and its index.
fn inner_packets(batch: &str) -> Vec<Vec<u8>> {
    (0..BATCH)
        .map(|i| {
            let payload = format!("{batch:<16}{i:04}");
            let builder = PacketBuilder::ipv4(
                ipv4(testbed::B_TUNNEL4).octets(),
                ipv4(testbed::A_TUNNEL4).octets(),
                64,
            )
            .udp(40000, INNER_PORT);
            let mut packet = Vec::with_capacity(builder.size(payload.len()));
            builder.write(&mut packet, payload.as_bytes()).unwrap();
            packet
        })
        .collect()
}

/// The payloads that `inner_packets(batch)` carries.
fn inner_payloads(batch: &str) -> Vec<Vec<u8>> {
    (0..BATCH)
        .map(|i| format!("{batch:<16}{i:04}").into_bytes())
        .collect()
}

/// Sends all of `datagrams` (of one length) to `to` in one sendmsg(2) cut into segments of that
/// length by a `UDP_SEGMENT` control message: UDP GSO (udp(7); include/uapi/linux/udp.h).
fn send_segmented(socket: &UdpSocket, to: SocketAddr, datagrams: &[Vec<u8>]) -> io::Result<()> {
    let segment = datagrams[0].len();
    assert!(datagrams.iter().all(|d| d.len() == segment));
    let whole: Vec<u8> = datagrams.concat();
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let mut name = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut iov = libc::iovec {
        iov_base: whole.as_ptr().cast_mut().cast(),
        iov_len: whole.len(),
    };
    // CMSG_SPACE(sizeof(u16)) is 24 bytes on 64-bit Linux; u64 words keep the header aligned.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
    assert!(msg.msg_controllen <= std::mem::size_of_val(&control));
    // SAFETY: `msg` describes `control`, which has room for one header and a u16 (checked
    // above); CMSG_FIRSTHDR and CMSG_DATA point inside it.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&msg);
        (*header).cmsg_level = libc::SOL_UDP;
        (*header).cmsg_type = libc::UDP_SEGMENT;
        (*header).cmsg_len = libc::CMSG_LEN(2) as usize;
        libc::CMSG_DATA(header)
            .cast::<u16>()
            .write_unaligned(segment as u16);
    }
    // SAFETY: `msg` points at `name`, `iov` (over `whole`) and `control`, all live for the call.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    assert_eq!(sent as usize, whole.len(), "a short GSO send");
    Ok(())
}

/// Receives one buffer on a socket with `UDP_GRO` on: its length and the segment size the
/// kernel reports (udp(7)), or `None` if nothing comes within `limit`.
fn receive_with_gro(socket: &UdpSocket, limit: Duration) -> Option<(usize, Option<u16>)> {
    let deadline = Instant::now() + limit;
    let mut data = vec![0u8; 65536];
    let mut control = [0u64; 8];
    while Instant::now() < deadline {
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: `msg` points at `data` and `control`, live for the call, with their lengths.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let mut segment = None;
        // SAFETY: the kernel filled `msg_controllen` bytes of `control`; the CMSG macros stay
        // within them.
        unsafe {
            let mut header = libc::CMSG_FIRSTHDR(&msg);
            while !header.is_null() {
                if (*header).cmsg_level == libc::SOL_UDP && (*header).cmsg_type == libc::UDP_GRO {
                    segment = Some(
                        libc::CMSG_DATA(header)
                            .cast::<libc::c_int>()
                            .read_unaligned() as u16,
                    );
                }
                header = libc::CMSG_NXTHDR(&msg, header);
            }
        }
        return Some((n as usize, segment));
    }
    None
}

/// Every datagram waiting on the non-blocking `socket`.
fn drain(socket: &UdpSocket) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buffer = [0u8; 2048];
    while let Ok(n) = socket.recv(&mut buffer) {
        got.push(buffer[..n].to_vec());
        if got.len() > 10 * BATCH {
            break;
        }
    }
    got
}

/// A UDP socket bound to `address` in the calling thread's namespace, non-blocking.
fn bound(address: &str) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(address)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Waits until `read` reaches `want` (or `limit` passes), then waits out two more reports (the
/// relay writes one a second) so that a late or a double count shows, and returns the value
/// then.
fn settled(read: impl Fn() -> u64, want: u64, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    while read() < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(2200));
    read()
}

/// Relay A takes datagrams from its peer's exact address and port only. From B's underlay
/// address but port 55556, `BATCH` datagrams sent one by one, then `BATCH` more in one GSO send
/// (which the veth hands over whole: a socket of the test's own with `UDP_GRO` receives such a
/// send as one buffer of all of them), each raise `foreign_source` by exactly `BATCH`, and none
/// of their inner packets reaches A's side of the overlay. The same packets from B's address
/// and the tunnel port are delivered, every one, so the check is exact, not a blanket drop.
/// (Relay B is not started: the test plays it, and binds its address and port.)
#[test]
fn only_the_peers_exact_address_and_port_get_through() {
    let _serial = serially();
    let bed = testbed();
    let a = relay(&bed, Host::A, &["--queues", "2", "--stats-interval", "1"]);
    let a_tunnel: SocketAddr = endpoint(testbed::A_UNDERLAY, testbed::TUNNEL_PORT)
        .parse()
        .unwrap();
    let (overlay, gro_probe) = in_namespace(&bed, Host::A, || {
        let overlay = bound(&endpoint(testbed::A_TUNNEL4, INNER_PORT))?;
        let gro_probe = bound(&endpoint(testbed::A_UNDERLAY, 7200))?;
        set_int(&gro_probe, libc::SOL_UDP, libc::UDP_GRO, 1);
        Ok((overlay, gro_probe))
    });
    let stranger = in_namespace(&bed, Host::B, || {
        bound(&endpoint(testbed::B_UNDERLAY, 55556))
    });
    let foreign = || drops(&latest_report(&bed, Host::A), "foreign_source");
    let batch = BATCH as u64;

    for packet in inner_packets("one by one") {
        stranger
            .send_to(&packet, a_tunnel)
            .expect("sending from port 55556");
    }
    let one_by_one = settled(foreign, batch, Duration::from_secs(10));
    assert_eq!(
        one_by_one, batch,
        "foreign_source after {BATCH} datagrams from port 55556"
    );

    // The veth delivers a GSO send whole: the test's own socket gets it as one buffer.
    let probe: SocketAddr = endpoint(testbed::A_UNDERLAY, 7200).parse().unwrap();
    let packets = inner_packets("segmented");
    send_segmented(&stranger, probe, &packets).expect("a GSO send to the probe");
    let whole = receive_with_gro(&gro_probe, Duration::from_secs(5));
    assert_eq!(
        whole,
        Some((BATCH * packets[0].len(), Some(packets[0].len() as u16))),
        "the GSO send did not arrive as one buffer of {BATCH} segments"
    );
    send_segmented(&stranger, a_tunnel, &packets).expect("a GSO send from port 55556");
    let segmented = settled(foreign, 2 * batch, Duration::from_secs(10));
    assert_eq!(
        segmented - one_by_one,
        batch,
        "foreign_source after one GSO send of {BATCH} datagrams from port 55556"
    );
    let leaked = drain(&overlay);
    assert!(
        leaked.is_empty(),
        "{} inner packets from port 55556 reached A's overlay: {:?}",
        leaked.len(),
        leaked
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>()
    );

    // The same packets from B's address and the tunnel port: relay B's, which nothing else holds.
    let peer = in_namespace(&bed, Host::B, || {
        bound(&endpoint(testbed::B_UNDERLAY, testbed::TUNNEL_PORT))
    });
    for packet in inner_packets("from the peer") {
        peer.send_to(&packet, a_tunnel)
            .expect("sending from the peer's port");
    }
    let mut delivered = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while delivered.len() < BATCH && Instant::now() < deadline {
        delivered.extend(drain(&overlay));
        std::thread::sleep(Duration::from_millis(10));
    }
    delivered.sort();
    assert_eq!(
        delivered,
        inner_payloads("from the peer"),
        "what reached A's overlay from the peer's exact address and port"
    );
    let report = stop(&bed, a, Host::A);
    assert_eq!(
        drops(&report, "foreign_source"),
        2 * batch,
        "the peer's datagrams were not counted as foreign: {report}"
    );
    eprintln!(
        "foreign_source: {one_by_one} after {BATCH} one by one, {segmented} after one GSO send \
         of {BATCH}; {} delivered from the peer's port; relay A: udp_rx_packets {}",
        delivered.len(),
        queue_total(&report, "udp_rx_packets")
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The peer moves

const PEER_NAME: &str = "peer.tunfwd.test";
/// An address on B's host where no relay listens: relay B is bound to B's underlay address.
const NOBODY: &str = "198.18.0.9";

/// Waits until `relay`'s standard error contains `text`, within `limit`; returns how long that
/// took, or an error with what it said.
fn wait_for_stderr(relay: &mut Process, text: &str, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let stderr = relay.stderr();
        if stderr.contains(text) {
            return Ok(start.elapsed());
        }
        if let Ok(Some(status)) = relay.try_status() {
            return Err(format!("exited ({status}): {stderr}"));
        }
        if start.elapsed() >= limit {
            return Err(format!("not within {limit:?}: {stderr}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pings B's overlay address from A through tunload; returns the replies received (tunload
/// exits 1 when none come, which is an answer here, not a failure).
fn ping_b(bed: &Testbed, name: &str, count: u32) -> u64 {
    let count = count.to_string();
    let mut ping = bed
        .tunload_background(
            Host::A,
            name,
            &[
                "ping",
                "--to",
                testbed::B_TUNNEL4,
                "--count",
                &count,
                "--interval-ms",
                "20",
                "--timeout-ms",
                "500",
            ],
        )
        .unwrap();
    ping.wait_for(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("ping: {e}"));
    let out = ping.stdout();
    parse_json(&out).unwrap_or_else(|e| panic!("ping: {e}: {}", ping.stderr()))["received"]
        .as_u64()
        .expect("received")
}

/// `--peer HOSTNAME:PORT` with `--peer-refresh 1` follows the name to a new address. Relay A
/// runs in a mount namespace of its own (unshare(1), `--propagation private`) whose /etc/hosts
/// is a bind mount of a file of the test's (hosts(5); glibc's `files` source reads it on every
/// lookup). The name first points at an address of B's host where no relay listens: A's
/// pings die there. Then the test rewrites the file in place (the bind mount follows the inode,
/// so a new file renamed over it would not be seen) to B's real underlay address: relay A must
/// log the move within a few seconds, and pings and a verified transfer then cross.
#[test]
fn a_peer_whose_name_moves_is_followed() {
    let _serial = serially();
    let bed = testbed();
    let (ns_a, ns_b) = (bed.namespace(Host::A), bed.namespace(Host::B));
    ip_output(&[
        "-n",
        &ns_b,
        "addr",
        "add",
        &format!("{NOBODY}/32"),
        "dev",
        "ba",
    ]);
    // A host route on the underlay veth, so that A's datagrams reach B's host (no default route).
    ip_output(&[
        "-n",
        &ns_a,
        "route",
        "add",
        &format!("{NOBODY}/32"),
        "dev",
        "ab",
    ]);
    let listen_b = endpoint(testbed::B_UNDERLAY, testbed::TUNNEL_PORT);
    let b = relay(&bed, Host::B, &["--listen", &listen_b]);

    let hosts = bed.path("hosts");
    fs::write(&hosts, format!("{NOBODY} {PEER_NAME}\n")).unwrap();
    let json = json_path(&bed, Host::A);
    let peer = format!("{PEER_NAME}:{}", testbed::TUNNEL_PORT);
    let args: Vec<String> = [
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount --bind \"$1\" /etc/hosts && shift && exec \"$@\"",
        "sh",
        hosts.to_str().unwrap(),
        env!("CARGO_BIN_EXE_tunfwd"),
        "--peer",
        &peer,
        "--peer-refresh",
        "1",
        "--address",
        &format!("{}/24", testbed::A_TUNNEL4),
        "--queues",
        "2",
        "--stats-json",
        json.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let mut a = bed
        .spawn(Host::A, "tunfwd-A", Path::new("unshare"), &args)
        .expect("starting tunfwd under unshare");
    wait_for_stderr(&mut a, " up: ", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("relay A did not come up: {e}"));
    assert!(
        !fs::read_to_string("/etc/hosts")
            .unwrap_or_default()
            .contains(PEER_NAME),
        "the bind mount leaked out of relay A's mount namespace"
    );
    let first = format!("peer {NOBODY}:{}", testbed::TUNNEL_PORT);
    assert!(
        a.stderr().contains(&first),
        "relay A did not start with {first}: {}",
        a.stderr()
    );

    let before = ping_b(&bed, "ping-before", 5);
    assert_eq!(before, 0, "pings crossed before the peer moved");

    // In place: truncate and write the same inode, which the bind mount shows.
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&hosts)
        .and_then(|mut f| f.write_all(format!("{} {PEER_NAME}\n", testbed::B_UNDERLAY).as_bytes()))
        .unwrap();
    let moved = format!(
        "tunfwd: peer {PEER_NAME} moved from {NOBODY}:{port} to {}:{port}",
        testbed::B_UNDERLAY,
        port = testbed::TUNNEL_PORT
    );
    let took = wait_for_stderr(&mut a, &moved, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("relay A did not log `{moved}`: {e}"));

    // Each worker takes the new address at its next turn, within its idle wait (100 ms,
    // `IDLE_WAIT` in src/worker/mod.rs) when no packet wakes it sooner; a packet that wakes it
    // first still goes to the old address.
    std::thread::sleep(Duration::from_millis(300));
    let after = ping_b(&bed, "ping-after", 5);
    assert_eq!(after, 5, "pings after the move");
    bed.verified_transfer(Host::A, Host::B, testbed::B_TUNNEL4, 32 << 20, 1, &[])
        .unwrap_or_else(|e| panic!("a transfer after the move: {e}"));
    let report = stop(&bed, a, Host::A);
    stop(&bed, b, Host::B);
    // Before the move, the pings did leave relay A, for the old address: B's kernel answered
    // them with port unreachable.
    assert!(
        path_total(&report, "icmp_port_unreachable") > 0,
        "relay A sent nothing to {NOBODY}: {report}"
    );
    eprintln!(
        "relay A logged the move {took:.1?} after the hosts file changed; pings {before}/5 \
         before, {after}/5 after; 32 MiB verified; relay A: icmp_port_unreachable {}, \
         send_retries {}, peer_unreachable {}",
        path_total(&report, "icmp_port_unreachable"),
        queue_total(&report, "send_retries"),
        drops(&report, "peer_unreachable"),
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A stdout nobody reads

/// A process this test started itself. Dropping it stops it: SIGTERM, then SIGKILL after 3 s.
struct Spawned {
    child: Option<Child>,
}

impl Spawned {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then waits up to `limit` for the exit; the status, or `None` if it did not end
    /// (it is then killed).
    fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // The pid is our unreaped child's, so it cannot have been reused; `ip netns exec`
        // execs the program, so it is tunfwd itself.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(3));
    }
}

/// A pipe whose write end is to be a child's stdout, shrunk to one page (the smallest size,
/// fcntl(2) F_SETPIPE_SZ), so that a report or two fill it. Returns (read end, write end, size).
fn small_pipe() -> (OwnedFd, OwnedFd, usize) {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) writes two descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are fresh descriptors nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl(2) on a descriptor we own.
    let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(size > 0, "F_SETPIPE_SZ: {}", io::Error::last_os_error());
    (read, write, size as usize)
}

/// The bytes waiting in a pipe (FIONREAD, pipe(7)).
fn pipe_queued(read: &OwnedFd) -> usize {
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe { libc::ioctl(read.as_raw_fd(), libc::FIONREAD, &mut queued) };
    assert_eq!(rc, 0, "FIONREAD: {}", io::Error::last_os_error());
    queued as usize
}

/// The names of `pid`'s threads that are blocked in write(2) on file descriptor 1: their
/// `/proc/PID/task/TID/syscall` starts with the number of write and the descriptor (proc(5)).
fn threads_blocked_writing_stdout(pid: u32) -> Vec<String> {
    let prefix = format!("{} 0x1 ", libc::SYS_write);
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let syscall = fs::read_to_string(dir.join("syscall")).ok()?;
            syscall
                .starts_with(&prefix)
                .then(|| fs::read_to_string(dir.join("comm")).ok())?
                .map(|comm| comm.trim().to_string())
        })
        .collect()
}

/// The resident set of process `pid` in KiB (`VmRSS`, proc(5)).
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("the relay's status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

/// Where relay A serves metrics, inside its namespace.
const METRICS: &str = "127.0.0.1:9101";

/// Scrapes relay A's metrics from inside its namespace: (uptime in seconds, TUN packets read
/// over all queues), or why not, within 5 s.
fn scrape(bed: &Testbed) -> Result<(f64, f64), String> {
    let exchange = || -> io::Result<String> {
        let address: SocketAddr = METRICS.parse().unwrap();
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    };
    let answer = bed
        .in_namespace(Host::A, exchange)
        .map_err(|e| format!("GET /metrics: {e}"))?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(format!("GET /metrics: {answer}"));
    }
    let sample = |name: &str| -> f64 {
        answer
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Ok((
        sample("tunfwd_uptime_seconds"),
        sample("tunfwd_tun_rx_packets_total"),
    ))
}

/// The growth of relay A's resident set from 5 s to 30 s after startup that the test allows.
const RSS_GROWTH_LIMIT_KIB: u64 = 4 << 10;

/// A relay whose stdout nobody reads keeps its memory and its duties. Relay A runs with
/// `--queues 8 --stats-interval 1 --metrics` and its stdout a pipe that the test never reads,
/// shrunk to one page so that it is full within the first seconds; light traffic (50 pings a
/// second) crosses it. From 5 s to 30 s after startup its resident set must grow by less than
/// 4 MiB (an unbounded queue of stats snapshots grew by megabytes a second at 8 queues);
/// meanwhile the pipe stays full, `/metrics` answers with an uptime and counters that move,
/// and SIGTERM stops the relay within 8 s with exit 0 and the final JSON report written.
#[test]
fn a_stdout_nobody_reads_costs_no_memory_and_stops_nothing() {
    let _serial = serially();
    let bed = testbed();
    let b = relay(&bed, Host::B, &[]);
    let (read_end, write_end, pipe_size) = small_pipe();
    let json = json_path(&bed, Host::A);
    let stderr_path = bed.path("tunfwd-A.err");
    let child = Command::new("ip")
        .args(["netns", "exec", &bed.namespace(Host::A)])
        .arg(env!("CARGO_BIN_EXE_tunfwd"))
        .args([
            "--peer",
            &endpoint(testbed::B_UNDERLAY, testbed::TUNNEL_PORT),
            "--address",
            &format!("{}/24", testbed::A_TUNNEL4),
            "--queues",
            "8",
            "--stats-interval",
            "1",
            "--metrics",
            METRICS,
            "--stats-json",
            json.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("starting relay A");
    let mut a = Spawned { child: Some(child) };
    let stderr = || fs::read_to_string(&stderr_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stderr().contains(" up: ") {
        assert!(
            Instant::now() < deadline,
            "relay A did not come up: {}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let up = Instant::now();
    let pid = a.pid();
    let _pings = bed
        .tunload_background(
            Host::A,
            "ping",
            &[
                "ping",
                "--to",
                testbed::B_TUNNEL4,
                "--count",
                "1750",
                "--interval-ms",
                "20",
            ],
        )
        .unwrap();

    // One scrape before the first sample: the metrics thread's first answer allocates its
    // rendering once (about 4 MiB with eight queues' histograms), which is no growth of the
    // kind this test looks for (a queue of snapshots, megabytes a second), so it goes into
    // the baseline.
    std::thread::sleep((up + Duration::from_secs(4)).saturating_duration_since(Instant::now()));
    scrape(&bed).unwrap_or_else(|e| panic!("with stdout stalled: {e}"));
    let mut samples = Vec::new();
    for at in [5u64, 10, 15, 20, 25] {
        std::thread::sleep(
            (up + Duration::from_secs(at)).saturating_duration_since(Instant::now()),
        );
        samples.push((at, rss_kib(pid)));
    }
    std::thread::sleep((up + Duration::from_secs(28)).saturating_duration_since(Instant::now()));
    let first = scrape(&bed).unwrap_or_else(|e| panic!("with stdout stalled: {e}"));
    std::thread::sleep(Duration::from_millis(2000));
    let second = scrape(&bed).unwrap_or_else(|e| panic!("with stdout stalled: {e}"));
    samples.push((30, rss_kib(pid)));
    let queued = pipe_queued(&read_end);
    let writers = threads_blocked_writing_stdout(pid);
    // The largest of the last two samples against the largest of the first two: the metrics
    // thread's rendering (about 4 MiB) is freed and allocated again, so one sample may catch the
    // resident set without it (CI once read 60708 KiB at 5 s, 64660 from 10 s on, and 61696 at
    // 25 s), which is no growth; a queue of snapshots grows by megabytes a second.
    let largest = |range: &[(u64, u64)]| range.iter().map(|(_, kib)| *kib).max().unwrap_or(0);
    let growth = largest(&samples[samples.len() - 2..]).saturating_sub(largest(&samples[..2]));
    eprintln!(
        "relay A's VmRSS (s, KiB): {samples:?}; growth {growth} KiB from 5 s to 30 s; stdout \
         pipe: {queued} bytes waiting in {pipe_size}, thread(s) {writers:?} blocked writing to \
         it; scrapes (uptime s, tun_rx packets) {first:?} then {second:?}"
    );
    assert!(
        queued > 0 && writers.len() == 1,
        "relay A's stdout was not stalled: {queued} bytes in the pipe, blocked in write(1): \
         {writers:?}"
    );
    assert!(
        growth < RSS_GROWTH_LIMIT_KIB,
        "relay A's resident set grew by {growth} KiB from 5 s to 30 s: {samples:?}"
    );
    assert!(
        second.0 > first.0 && second.1 > first.1,
        "the metrics did not move while stdout was stalled: {first:?} then {second:?}"
    );

    // SIGTERM with stdout still stalled: the relay exits, and writes its final JSON report.
    let _ = fs::remove_file(&json);
    let signalled = Instant::now();
    let status = a.terminate(Duration::from_secs(8));
    let took = signalled.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "relay A did not exit 0 within 8 s of SIGTERM ({status:?}, {took:.1?}): {}",
        stderr()
    );
    let report: Value = serde_json::from_str(
        &fs::read_to_string(&json).unwrap_or_else(|e| panic!("no final JSON report: {e}")),
    )
    .expect("the final JSON report");
    assert_eq!(
        report["queues"].as_array().map(Vec::len),
        Some(8),
        "{report}"
    );
    assert!(
        report["elapsed_secs"].as_f64().unwrap_or(0.0) >= 29.0
            && queue_total(&report, "tun_rx_packets") > 0,
        "{report}"
    );
    eprintln!("SIGTERM: exit 0 after {took:.1?}; final report written");
    drop(b);
}
