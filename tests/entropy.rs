//! Outer flow entropy on the namespace testbed, with the real binary: different inner flows leave
//! in datagrams of different outer 4-tuples, each flow in one, and a receiver's RSS then spreads
//! the receive work over its CPUs (`relay::entropy`).
//!
//! veth has no RSS, but RPS on its receive queue (`/sys/class/net/DEV/queues/rx-0/rps_cpus`)
//! hashes the same outer 4-tuple onto CPUs (`get_rps_cpu` in net/core/dev.c), so it stands in.
//! What the tests count, they count independently of tunfwd: a packet capture in the receiving
//! namespace, on the underlay veth, with one `AF_PACKET` socket per CPU in a `PACKET_FANOUT_CPU`
//! group (packet(7)): the kernel hands each captured packet to the socket of the CPU that
//! processes it, which after RPS is the CPU RPS chose. `/proc/net/softnet_stat` is per CPU too,
//! but for the whole machine (every namespace's backlog: the TUN writes, the other relay's
//! receives, the load tools' loopback), so it cannot say whose work a CPU did; its deltas are
//! printed for the record, and the assertions stand on the capture.
//!
//! They need root and fail at once without it. Every loop is bounded in count and time; only
//! 198.18.0.0/15 and 2001:2::/48 are used, inside the testbed's namespaces, which go on drop,
//! failure included; only processes the tests started are ever signalled.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tunfwd_testkit::testbed::{self, Host, Process, Testbed, parse_json};

static SERIAL: Mutex<()> = Mutex::new(());

fn serially() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn testbed() -> Testbed {
    if !testbed::is_root() {
        panic!(
            "the entropy tests need root (namespaces, veth, TUN, packet capture): run them as \
             root, e.g. `sudo -E cargo test --release --test entropy`"
        );
    }
    let bed = Testbed::new(
        Path::new(env!("CARGO_BIN_EXE_tunfwd")),
        &tunfwd_testkit::binaries::tool("tunload"),
    )
    .expect("building the namespace testbed");
    bed.silence_router_solicitations()
        .expect("turning off router solicitations");
    bed
}

fn cpus() -> usize {
    // SAFETY: sysconf with a valid name has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// The underlay veth end in `host`'s namespace, and the other relay's underlay address.
fn underlay(host: Host) -> (&'static str, Ipv4Addr) {
    match host {
        Host::A => ("ab", testbed::B_UNDERLAY.parse().unwrap()),
        _ => ("ba", testbed::A_UNDERLAY.parse().unwrap()),
    }
}

/// Sets RPS on `host`'s underlay veth to every CPU.
fn rps_on_every_cpu(bed: &Testbed, host: Host) {
    let mask = format!("{:x}", (1u64 << cpus()) - 1);
    let (dev, _) = underlay(host);
    let script = format!("echo {mask} > /sys/class/net/{dev}/queues/rx-0/rps_cpus");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &bed.namespace(host), "sh", "-c", &script])
        .output()
        .expect("running ip netns exec");
    assert!(
        out.status.success(),
        "setting RPS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json_path(bed: &Testbed, host: Host) -> PathBuf {
    bed.path(&format!("{host:?}.json"))
}

/// tunfwd on `host` at four queues, its report in [`json_path`] every second.
fn relay(bed: &Testbed, host: Host, extra: &[&str]) -> Process {
    let json = json_path(bed, host);
    let mut args = vec![
        "--queues",
        "4",
        "--stats-interval",
        "1",
        "--stats-json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    bed.start_tunfwd(host, &format!("tunfwd-{host:?}"), &args)
        .unwrap_or_else(|e| panic!("tunfwd on {host:?}: {e}"))
}

/// A per-queue counter (or `drops.REASON`) summed over a report's queues; the path section's
/// counters (the advertisements among them) with `path.NAME`.
fn total(report: &Value, field: &str) -> u64 {
    let (queues, field) = match field.strip_prefix("path.") {
        Some(field) => (&report["path"]["queues"], field),
        None => (&report["queues"], field),
    };
    let pointer = format!("/{}", field.replace('.', "/"));
    queues.as_array().map_or(0, |queues| {
        queues
            .iter()
            .filter_map(|q| q.pointer(&pointer).and_then(Value::as_u64))
            .sum()
    })
}

/// `host`'s report once its ports are acknowledged and at least `tuples` extra tuples carry
/// flows now (confirmed less unconfirmed: the count of confirmations alone passes the mark when
/// tuples went out of use and came back), waiting at most `limit`.
fn tuples_carrying(bed: &Testbed, host: Host, tuples: u64, limit: Duration) -> Value {
    report_when(bed, host, limit, |r| {
        total(r, "path.ports_acknowledged") >= 1 && carrying(r) >= tuples
    })
}

/// The extra tuples a report says carry flows now.
fn carrying(report: &Value) -> u64 {
    total(report, "path.entropy_tuples_confirmed")
        - total(report, "path.entropy_tuples_unconfirmed")
}

/// `host`'s report once `done` holds for it, read every 100 ms for at most `limit`.
fn report_when(bed: &Testbed, host: Host, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(json_path(bed, host)).unwrap_or_default();
        if let Some(report) = parse_json(&text).ok().filter(|r| done(r)) {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "{host:?}'s report never showed what was expected: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `host`'s report once its counters stopped moving (two reports a second apart agree).
fn settled(bed: &Testbed, host: Host) -> Value {
    let elapsed = |r: &Value| r["elapsed_secs"].as_f64().unwrap_or(0.0);
    let mut previous = report_when(bed, host, Duration::from_secs(5), |_| true);
    for _ in 0..10 {
        let at = elapsed(&previous);
        let next = report_when(bed, host, Duration::from_secs(5), |r| {
            elapsed(r) >= at + 1.0
        });
        if next["queues"] == previous["queues"] {
            return next;
        }
        previous = next;
    }
    panic!("{host:?}'s counters never settled: {previous}");
}

/// The extra source ports a relay's startup line names (`outer entropy: N extra source
/// port(s) [p, q, ...]`); empty when it says entropy is off.
fn advertised_ports(relay: &Process) -> Vec<u16> {
    let stderr = relay.stderr();
    let Some(list) = stderr
        .split("extra source port(s) [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
    else {
        return Vec::new();
    };
    list.split(", ")
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// An inner TCP flow as the capture saw it, by the port of its client (the load tool's sink
/// listens on 5201, each stream comes from a port of its own).
type Flow = u16;

/// What a capture saw of the tunnel datagrams from the other relay.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// Datagrams processed on each CPU (data and control).
    per_cpu: Vec<u64>,
    /// Datagrams per outer source port.
    per_port: BTreeMap<u16, u64>,
    /// The same, of the datagrams that are no control message (inner packets).
    data_per_port: BTreeMap<u16, u64>,
    /// The outer source ports each inner TCP flow (to or from port 5201) came in.
    flows: HashMap<Flow, BTreeSet<u16>>,
    /// Relay-to-relay control messages among them.
    control: u64,
    /// What the kernel dropped at the capture's sockets (`PACKET_STATISTICS`).
    capture_drops: u64,
}

impl Seen {
    fn add(&mut self, other: &Seen) {
        self.per_cpu
            .resize(other.per_cpu.len().max(self.per_cpu.len()), 0);
        for (mine, theirs) in self.per_cpu.iter_mut().zip(&other.per_cpu) {
            *mine += theirs;
        }
        for (port, n) in &other.per_port {
            *self.per_port.entry(*port).or_default() += n;
        }
        for (port, n) in &other.data_per_port {
            *self.data_per_port.entry(*port).or_default() += n;
        }
        for (flow, ports) in &other.flows {
            self.flows.entry(*flow).or_default().extend(ports);
        }
        self.control += other.control;
        self.capture_drops += other.capture_drops;
    }

    fn datagrams(&self) -> u64 {
        self.per_cpu.iter().sum()
    }

    /// Each CPU's share of the datagrams, in percent.
    fn shares(&self) -> Vec<f64> {
        let all = self.datagrams().max(1) as f64;
        self.per_cpu
            .iter()
            .map(|n| 100.0 * *n as f64 / all)
            .collect()
    }
}

/// A capture of the tunnel datagrams that `host` receives from the other relay on its
/// underlay veth, per CPU (see the module documentation), until [`Capture::finish`].
struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Seen>>,
}

/// `PACKET_FANOUT` and its CPU mode (include/uapi/linux/if_packet.h).
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_FANOUT_CPU: u32 = 2;

fn set_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
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
        "setsockopt {level}/{name}: {}",
        io::Error::last_os_error()
    );
}

impl Capture {
    fn start(bed: &Testbed, host: Host) -> Capture {
        let (dev, from) = underlay(host);
        let cpus = cpus();
        let group = (std::process::id() & 0xffff) as libc::c_int;
        let sockets: Vec<OwnedFd> = bed
            .in_namespace(host, || {
                let name = std::ffi::CString::new(dev).unwrap();
                // SAFETY: a NUL-terminated name.
                let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
                if ifindex == 0 {
                    return Err(io::Error::last_os_error());
                }
                let protocol = (libc::ETH_P_IP as u16).to_be();
                let mut sockets = Vec::new();
                // Joined in CPU order: `fanout_demux_cpu` hands CPU c's packets to member c.
                for _ in 0..cpus {
                    // SAFETY: plain socket(2); the result is checked and owned at once.
                    let raw = unsafe {
                        libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(protocol))
                    };
                    if raw < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // SAFETY: `raw` is a new fd that nothing else owns.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
                    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                    address.sll_family = libc::AF_PACKET as u16;
                    address.sll_protocol = protocol;
                    address.sll_ifindex = ifindex as i32;
                    // SAFETY: `address` is a valid sockaddr_ll of the size passed.
                    let rc = unsafe {
                        libc::bind(
                            fd.as_raw_fd(),
                            (&address as *const libc::sockaddr_ll).cast(),
                            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                        )
                    };
                    if rc != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    set_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20);
                    set_int(
                        &fd,
                        libc::SOL_PACKET,
                        PACKET_FANOUT,
                        group | (PACKET_FANOUT_CPU << 16) as libc::c_int,
                    );
                    sockets.push(fd);
                }
                Ok(sockets)
            })
            .expect("opening the capture");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || read_capture(&sockets, from, &stopping));
        Capture {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("finished once")
            .join()
            .expect("the capture thread")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads the capture until `stop` (and what is left then), for at most five minutes.
fn read_capture(sockets: &[OwnedFd], from: Ipv4Addr, stop: &AtomicBool) -> Seen {
    let mut seen = Seen {
        per_cpu: vec![0; sockets.len()],
        ..Seen::default()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut buffer = [0u8; 256];
    let mut draining = 0;
    while Instant::now() < deadline && draining < 3 {
        if stop.load(Ordering::Relaxed) {
            draining += 1;
        }
        let mut fds: Vec<libc::pollfd> = sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfds for the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        for (cpu, socket) in sockets.iter().enumerate() {
            for _ in 0..10_000 {
                // SAFETY: `buffer` is valid for its length; the kernel truncates to it.
                let n = unsafe {
                    libc::recv(
                        socket.as_raw_fd(),
                        buffer.as_mut_ptr().cast(),
                        buffer.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n <= 0 {
                    break;
                }
                note(&mut seen, cpu, &buffer[..n as usize], from);
            }
        }
    }
    for socket in sockets {
        let mut stats = [0u32; 2];
        let mut len = std::mem::size_of_val(&stats) as libc::socklen_t;
        // SAFETY: PACKET_STATISTICS writes a tpacket_stats (two u32) into `stats`.
        unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                stats.as_mut_ptr().cast(),
                &mut len,
            )
        };
        seen.capture_drops += u64::from(stats[1]);
    }
    seen
}

/// Counts one captured IPv4 packet, if it is a tunnel datagram from `from` to the relay port.
fn note(seen: &mut Seen, cpu: usize, packet: &[u8], from: Ipv4Addr) {
    if packet.len() < 28 || packet[0] >> 4 != 4 || packet[9] != 17 {
        return;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let source = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let Some(udp) = packet.get(ihl..ihl + 8) else {
        return;
    };
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    if source != from || dport != testbed::TUNNEL_PORT {
        return;
    }
    seen.per_cpu[cpu] += 1;
    *seen.per_port.entry(sport).or_default() += 1;
    let inner = &packet[ihl + 8..];
    if tunfwd::testing::is_control(inner) {
        seen.control += 1;
        return;
    }
    *seen.data_per_port.entry(sport).or_default() += 1;
    // An inner IPv4 TCP segment of the load tool's streams (port 5201 at one end).
    if inner.len() >= 24 && inner[0] >> 4 == 4 && inner[9] == 6 {
        let at = usize::from(inner[0] & 0x0f) * 4;
        if let Some(ports) = inner.get(at..at + 4) {
            let (a, b) = (
                u16::from_be_bytes([ports[0], ports[1]]),
                u16::from_be_bytes([ports[2], ports[3]]),
            );
            let client = match (a, b) {
                (5201, client) | (client, 5201) => client,
                _ => return,
            };
            seen.flows.entry(client).or_default().insert(sport);
        }
    }
}

/// Per-CPU packets processed and RPS wake-ups (`/proc/net/softnet_stat`'s first and tenth
/// columns), machine-wide.
fn softnet() -> Vec<(u64, u64)> {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let fields: Vec<u64> = line
                .split_whitespace()
                .map(|f| u64::from_str_radix(f, 16).unwrap_or(0))
                .collect();
            (
                fields.first().copied().unwrap_or(0),
                fields.get(9).copied().unwrap_or(0),
            )
        })
        .collect()
}

fn softnet_delta(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<(u64, u64)> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)))
        .collect()
}

/// Eight verified TCP streams from `from` to the other relay's side, 16 MB each.
fn eight_streams(bed: &Testbed, from: Host) {
    let (to, address) = match from {
        Host::A => (Host::B, testbed::B_TUNNEL4),
        _ => (Host::A, testbed::A_TUNNEL4),
    };
    bed.verified_transfer(from, to, address, 16 << 20, 8, &[])
        .unwrap_or_else(|e| panic!("eight streams from {from:?}: {e}"));
}

/// Both relays with `extra`, RPS on both underlay veths, and (with entropy) each relay's ports
/// acknowledged by the other before anything is sent.
fn relays_with_rps(bed: &Testbed, extra: &[&str], entropy: bool) -> (Process, Process) {
    rps_on_every_cpu(bed, Host::A);
    rps_on_every_cpu(bed, Host::B);
    let a = relay(bed, Host::A, extra);
    let b = relay(bed, Host::B, extra);
    if entropy {
        // Acknowledged, and every extra tuple shown to reach the peer (16 at four queues) now:
        // until then a flow leaves from the listen tuple, and would change tuples mid-stream.
        for host in [Host::A, Host::B] {
            tuples_carrying(bed, host, 16, Duration::from_secs(15));
        }
    }
    (a, b)
}

/// Runs eight streams A to B, captured at B, until every CPU did at least `min_share` percent of
/// the receive work or `rounds` rounds ran (each round new flows, so new tuples); then eight
/// streams B to A, captured at A. Returns what B saw per round, and what A saw.
fn transfers(bed: &Testbed, rounds: usize, min_share: f64) -> (Vec<Seen>, Seen) {
    let mut at_b = Vec::new();
    let mut all = Seen::default();
    for round in 0..rounds {
        let before = softnet();
        let capture = Capture::start(bed, Host::B);
        eight_streams(bed, Host::A);
        let seen = capture.finish();
        let delta = softnet_delta(&before, &softnet());
        eprintln!(
            "round {round}: B captured {} datagrams from A per CPU {:?} ({:.1?} %), outer \
             source ports {:?}, {} control, {} capture drops; softnet_stat (processed, \
             received_rps) per CPU, machine-wide: {delta:?}",
            seen.datagrams(),
            seen.per_cpu,
            seen.shares(),
            seen.per_port,
            seen.control,
            seen.capture_drops
        );
        all.add(&seen);
        at_b.push(seen);
        if all.shares().iter().all(|s| *s >= min_share) {
            break;
        }
    }
    let capture = Capture::start(bed, Host::A);
    eight_streams(bed, Host::B);
    let at_a = capture.finish();
    eprintln!(
        "B to A: A captured per CPU {:?}, outer source ports {:?}",
        at_a.per_cpu, at_a.per_port
    );
    (at_b, at_a)
}

/// Each of the load tool's eight inner flows came in exactly one outer tuple.
fn assert_one_tuple_per_flow(seen: &Seen, what: &str) {
    assert!(
        seen.flows.len() >= 8,
        "{what}: the capture saw {} of the eight flows: {:?}",
        seen.flows.len(),
        seen.flows
    );
    for (flow, ports) in &seen.flows {
        assert_eq!(
            ports.len(),
            1,
            "{what}: inner flow from port {flow} came in {} outer tuples: {ports:?}",
            ports.len()
        );
    }
}

fn distinct_tuples(seen: &Seen) -> BTreeSet<u16> {
    seen.flows.values().flatten().copied().collect()
}

/// With outer entropy (`--entropy auto`), RPS spreads a relay's receive work over
/// every CPU; each flow keeps one tuple; transfers verify both ways. Fails with entropy broken:
/// one tuple for every flow puts every datagram on one CPU (the test below shows exactly that
/// with `--entropy off`).
#[test]
fn eight_flows_at_four_queues_take_four_tuples_or_more_one_each_and_receive_work_reaches_every_cpu()
{
    let _serial = serially();
    let bed = testbed();
    let (a, b) = relays_with_rps(&bed, &["--entropy", "auto"], true);
    let a_ports = advertised_ports(&a);
    let b_ports = advertised_ports(&b);
    assert_eq!(
        a_ports.len(),
        16,
        "four extra ports per worker: {}",
        a.stderr()
    );
    let cpus = cpus();
    let (at_b, at_a) = transfers(&bed, 3, 100.0 / (2 * cpus) as f64);
    let first = &at_b[0];
    assert_one_tuple_per_flow(first, "A to B");
    let tuples = distinct_tuples(first);
    assert!(
        tuples.len() >= 4,
        "eight flows took {} outer tuples: {tuples:?} ({:?}; A's ports {a_ports:?})",
        tuples.len(),
        first.flows
    );
    for port in &tuples {
        assert!(
            a_ports.contains(port),
            "port {port} is not one A advertised"
        );
    }
    let mut all = Seen::default();
    for seen in &at_b {
        assert_one_tuple_per_flow(seen, "A to B");
        all.add(seen);
    }
    let shares = all.shares();
    assert!(
        shares.iter().all(|s| *s >= 100.0 / (2 * cpus) as f64),
        "receive work per CPU at B {:?} ({shares:.1?} %): some CPU got less than half its share",
        all.per_cpu
    );
    assert_one_tuple_per_flow(&at_a, "B to A");
    assert!(distinct_tuples(&at_a).len() >= 4, "{:?}", at_a.flows);
    assert!(distinct_tuples(&at_a).iter().all(|p| b_ports.contains(p)));
    let (ra, rb) = (settled(&bed, Host::A), settled(&bed, Host::B));
    for (host, report) in [("A", &ra), ("B", &rb)] {
        assert!(
            total(report, "entropy_tx_packets") > total(report, "udp_tx_packets") / 2,
            "{host}: most datagrams from the extra ports: {}",
            report["queues"]
        );
        assert_eq!(total(report, "drops.foreign_source"), 0, "{host}");
        assert!(total(report, "path.peer_ports_accepted") >= 1, "{host}");
        assert_eq!(total(report, "entropy_fallback_packets"), 0, "{host}");
        assert_eq!(total(report, "drops.bad_control"), 0, "{host}");
    }
    drop((a, b));
}

/// The same with `--entropy off`: one outer tuple for every flow, and RPS puts all of a relay's
/// receive work on one CPU. This is what the test above would see if entropy were broken, and
/// shows that its spread is entropy's doing, not RPS's or the machine's.
#[test]
fn with_entropy_off_every_flow_shares_the_listen_tuple_and_receive_work_stays_on_one_cpu() {
    let _serial = serially();
    let bed = testbed();
    let (a, b) = relays_with_rps(&bed, &["--entropy", "off"], false);
    assert!(advertised_ports(&a).is_empty(), "{}", a.stderr());
    let (at_b, at_a) = transfers(&bed, 1, 101.0);
    let seen = &at_b[0];
    assert_one_tuple_per_flow(seen, "A to B");
    assert_eq!(
        seen.per_port.keys().copied().collect::<Vec<_>>(),
        vec![testbed::TUNNEL_PORT],
        "everything from the listen port"
    );
    let busiest = seen.shares().into_iter().fold(0.0, f64::max);
    assert!(
        busiest >= 99.9,
        "one tuple, one CPU: {:?} ({:.1?} %)",
        seen.per_cpu,
        seen.shares()
    );
    assert_eq!(
        at_a.per_port.keys().copied().collect::<Vec<_>>(),
        vec![testbed::TUNNEL_PORT]
    );
    let report = settled(&bed, Host::A);
    assert_eq!(total(&report, "entropy_tx_packets"), 0);
    drop((a, b));
}

/// An inner IPv4 UDP packet from A's overlay address to `port` on B's.
fn inner_udp(port: u16, payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::new();
    etherparse::PacketBuilder::ipv4(
        testbed::A_TUNNEL4.parse::<Ipv4Addr>().unwrap().octets(),
        testbed::B_TUNNEL4.parse::<Ipv4Addr>().unwrap().octets(),
        64,
    )
    .udp(40123, port)
    .write(&mut packet, payload)
    .unwrap();
    packet
}

/// The exact source check stays exact with entropy on: a datagram from the peer's address but a
/// port it did not advertise is counted `foreign_source` and not delivered, while the same inner
/// packet through the tunnel is.
#[test]
fn a_datagram_from_the_peers_address_but_a_port_it_did_not_advertise_is_foreign() {
    let _serial = serially();
    let bed = testbed();
    let (a, b) = relays_with_rps(&bed, &["--entropy", "auto"], true);
    let advertised = advertised_ports(&a);
    let sink = bed
        .in_namespace(Host::B, || {
            let s = UdpSocket::bind((testbed::B_TUNNEL4, 7000))?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            Ok(s)
        })
        .expect("a UDP sink on B's overlay address");
    let before = settled(&bed, Host::B);
    const SENT: u64 = 50;
    // From A's underlay address, from a port A's relay does not hold.
    let port = bed
        .in_namespace(Host::A, || {
            let s = UdpSocket::bind((testbed::A_UNDERLAY, 0))?;
            let port = s.local_addr()?.port();
            let to = SocketAddrV4::new(testbed::B_UNDERLAY.parse().unwrap(), testbed::TUNNEL_PORT);
            for i in 0..SENT {
                s.send_to(&inner_udp(7000, format!("forged {i}").as_bytes()), to)?;
            }
            Ok(port)
        })
        .expect("sending from A's address");
    assert!(!advertised.contains(&port), "{port} in {advertised:?}");
    let mut buffer = [0u8; 64];
    assert!(
        sink.recv(&mut buffer).is_err(),
        "a datagram from port {port} was delivered: {:?}",
        String::from_utf8_lossy(&buffer)
    );
    let after = settled(&bed, Host::B);
    assert_eq!(
        total(&after, "drops.foreign_source") - total(&before, "drops.foreign_source"),
        SENT,
        "every one counted as foreign"
    );
    // The same through the tunnel (from A's overlay address) arrives.
    bed.in_namespace(Host::A, || {
        let s = UdpSocket::bind((testbed::A_TUNNEL4, 0))?;
        s.send_to(b"through the tunnel", (testbed::B_TUNNEL4, 7000))
    })
    .expect("sending through the tunnel");
    let n = sink.recv(&mut buffer).expect("the tunnel delivers");
    assert_eq!(&buffer[..n], b"through the tunnel");
    drop((a, b));
}

/// Sets `net.ipv4.ip_local_port_range` in `host`'s namespace (it is per namespace).
fn ephemeral_range(bed: &Testbed, host: Host, min: u16, max: u16) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &bed.namespace(host), "sysctl", "-q", "-w"])
        .arg(format!("net.ipv4.ip_local_port_range={min} {max}"))
        .output()
        .expect("running ip netns exec sysctl");
    assert!(
        out.status.success(),
        "setting the ephemeral range: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An ephemeral extra port is one no socket holds. With A's ephemeral range narrowed to its
/// listen port and one more, A sends from that one more alone and says it found no more, and
/// traffic passes both ways. Failed while each tuple's first socket was bound to port 0 with
/// `SO_REUSEPORT` set: the kernel hands such a bind a port the same user's reuseport sockets
/// already hold, here A's listen port (about half of the sixteen picks), whose datagrams from
/// B then went to a send-only extra socket that drops them (in CI, at the full range, the odd
/// relay start took a port that way, and a TCP connection through it timed out).
#[test]
fn extra_ports_are_ports_nobody_holds_even_where_the_ephemeral_range_holds_the_listen_port() {
    let _serial = serially();
    let bed = testbed();
    let listen = testbed::TUNNEL_PORT;
    ephemeral_range(&bed, Host::A, listen, listen + 1);
    let a = relay(&bed, Host::A, &["--entropy", "auto"]);
    let b = relay(&bed, Host::B, &["--entropy", "auto"]);
    assert_eq!(advertised_ports(&a), vec![listen + 1], "{}", a.stderr());
    assert!(
        a.stderr()
            .contains("no free ephemeral port left for outer flow entropy: sending from 1 extra port(s), not 16"),
        "{}",
        a.stderr()
    );
    for (host, tuples) in [(Host::A, 1), (Host::B, 16)] {
        tuples_carrying(&bed, host, tuples, Duration::from_secs(15));
    }
    for (from, to, address) in [
        (Host::A, Host::B, testbed::B_TUNNEL4),
        (Host::B, Host::A, testbed::A_TUNNEL4),
    ] {
        bed.verified_transfer(from, to, address, 4 << 20, 1, &[])
            .unwrap_or_else(|e| panic!("{from:?} to {to:?}: {e}"));
    }
    for host in [Host::A, Host::B] {
        let report = settled(&bed, host);
        assert_eq!(total(&report, "drops.foreign_source"), 0, "{host:?}");
        assert!(
            total(&report, "entropy_tx_packets") > 0,
            "{host:?}: {}",
            report["queues"]
        );
    }
    drop((a, b));
}

/// A relay started before it has a route to its peer (a boot where the underlay comes up
/// later) comes up, says its extra ports wait, and sends from them once the route is there.
/// Failed when each extra socket was connected at startup and a failure was fatal: relay A
/// exited with "Network is unreachable".
#[test]
fn a_relay_started_without_a_route_to_its_peer_comes_up_and_its_extra_ports_follow_the_route() {
    let _serial = serially();
    let bed = testbed();
    let namespace = bed.namespace(Host::A);
    let route = [
        "route",
        "198.18.0.0/30",
        "dev",
        "ab",
        "src",
        testbed::A_UNDERLAY,
    ];
    let change = |verb: &str| {
        let mut args = vec!["-n", namespace.as_str(), route[0], verb];
        args.extend_from_slice(&route[1..]);
        testbed::ip(&args).unwrap_or_else(|e| panic!("ip route {verb}: {e}"));
    };
    change("del");
    let b = relay(&bed, Host::B, &["--entropy", "auto"]);
    let a = relay(&bed, Host::A, &["--entropy", "auto"]);
    let waiting = format!(
        "cannot point the extra source ports at {}:{} yet",
        testbed::B_UNDERLAY,
        testbed::TUNNEL_PORT
    );
    assert!(a.stderr().contains(&waiting), "{}", a.stderr());
    std::thread::sleep(Duration::from_millis(1500));
    change("add");
    for host in [Host::A, Host::B] {
        tuples_carrying(&bed, host, 16, Duration::from_secs(30));
    }
    let pointed = format!(
        "the extra source ports point at {}:{} now",
        testbed::B_UNDERLAY,
        testbed::TUNNEL_PORT
    );
    assert!(a.stderr().contains(&pointed), "{}", a.stderr());
    for (from, to, address) in [
        (Host::A, Host::B, testbed::B_TUNNEL4),
        (Host::B, Host::A, testbed::A_TUNNEL4),
    ] {
        bed.verified_transfer(from, to, address, 4 << 20, 4, &[])
            .unwrap_or_else(|e| panic!("{from:?} to {to:?}: {e}"));
    }
    let report = settled(&bed, Host::A);
    assert!(
        total(&report, "entropy_tx_packets") > 0,
        "{}",
        report["queues"]
    );
    drop((a, b));
}

/// Stops relay A and starts it again (a new session and cookie, no port of B's accepted),
/// its report in a fresh file; a transfer from B to A right after it comes up must complete.
fn restart_a(bed: &Testbed, a: &mut Process, when: &str) -> Process {
    let status = a
        .terminate(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{when}: relay A did not stop on SIGTERM: {e}"));
    assert!(status.success(), "{when}: {status}: {}", a.stderr());
    let _ = std::fs::remove_file(json_path(bed, Host::A));
    let restarted = relay(bed, Host::A, &["--entropy", "auto"]);
    bed.verified_transfer(Host::B, Host::A, testbed::A_TUNNEL4, 1 << 20, 4, &[])
        .unwrap_or_else(|e| panic!("{when}: B to A right after A restarted: {e}"));
    restarted
}

/// A relay that restarts holds none of its peer's ports; the peer learns it from the restarted
/// relay's first advertisement (a new session, which cannot echo the cookie yet) and sends from
/// its listen tuple until it proved its ports to the new relay, so a transfer right after the
/// restart passes. Twice within seconds, as tests/ownership.rs restarts a relay, where a peer
/// that waited for the proven restart (taken once per 10 s) went on sending from ports the new
/// relay dropped. What the new relay still drops as `foreign_source` is what reached it before
/// it could say it restarted: the probes the peer's tuples sent meanwhile (they retry while the
/// relay is down), printed, not bounded here.
#[test]
fn a_restarted_relay_gets_its_peers_flows_at_once() {
    let _serial = serially();
    let bed = testbed();
    let (mut a, b) = relays_with_rps(&bed, &["--entropy", "auto"], true);
    eight_streams(&bed, Host::B);
    let mut a = restart_a(&bed, &mut a, "the first restart");
    let a = restart_a(&bed, &mut a, "the second restart, seconds after the first");
    let report = settled(&bed, Host::A);
    eprintln!(
        "the relay A restarted last counted {} datagram(s) from ports it did not take",
        total(&report, "drops.foreign_source")
    );
    drop((a, b));
}

/// socat's TUN-to-UDP relay speaks the raw format and knows no control message: tunfwd must
/// carry traffic with it both ways, send it everything from the listen port (it never
/// acknowledges an advertisement), and socat must survive tunfwd's control messages.
#[test]
fn socat_as_the_peer_gets_the_listen_tuple_alone_and_traffic_passes_both_ways() {
    let _serial = serially();
    let Some(socat) = ["/usr/bin/socat", "/bin/socat", "/usr/local/bin/socat"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        panic!("socat is needed for the interoperability test: apt-get install socat");
    };
    let bed = testbed();
    let a = relay(&bed, Host::A, &["--entropy", "auto"]);
    let args: Vec<String> = [
        format!(
            "UDP-DATAGRAM:{}:{},bind={}:{}",
            testbed::A_UNDERLAY,
            testbed::TUNNEL_PORT,
            testbed::B_UNDERLAY,
            testbed::TUNNEL_PORT
        ),
        format!(
            "TUN:{}/24,tun-type=tun,iff-no-pi,iff-up,tun-name=socat0",
            testbed::B_TUNNEL4
        ),
    ]
    .into();
    let mut socat = bed
        .spawn(Host::B, "socat", socat, &args)
        .expect("starting socat");
    std::thread::sleep(Duration::from_millis(500));
    let capture = Capture::start(&bed, Host::B);
    // Long enough for several advertisements and the path MTU machines' first probes.
    let pinged = bed
        .tunload(
            Host::A,
            "ping",
            &[
                "ping",
                "--to",
                testbed::B_TUNNEL4,
                "--count",
                "20",
                "--interval-ms",
                "150",
            ],
            Duration::from_secs(30),
        )
        .expect("ping through socat");
    let ping = parse_json(&pinged).unwrap();
    assert_eq!(ping["received"], 20, "{ping}");
    bed.verified_transfer(Host::A, Host::B, testbed::B_TUNNEL4, 4 << 20, 2, &[])
        .expect("A to B through socat");
    bed.verified_transfer(Host::B, Host::A, testbed::A_TUNNEL4, 4 << 20, 2, &[])
        .expect("B to A through socat");
    let seen = capture.finish();
    assert!(
        socat.try_status().expect("socat's status").is_none(),
        "socat exited: {}",
        socat.stderr()
    );
    assert_eq!(
        seen.per_port.keys().copied().collect::<Vec<_>>(),
        vec![testbed::TUNNEL_PORT],
        "tunfwd sent socat something from another port"
    );
    assert!(
        seen.control > 0,
        "tunfwd's control messages went to socat too"
    );
    let report = settled(&bed, Host::A);
    assert!(
        total(&report, "path.ports_advertised") >= 2,
        "{}",
        report["queues"]
    );
    assert_eq!(total(&report, "path.ports_acknowledged"), 0);
    assert_eq!(total(&report, "entropy_tx_packets"), 0);
    assert_eq!(
        total(&report, "entropy_fallback_packets"),
        0,
        "never in use"
    );
    assert_eq!(total(&report, "drops.foreign_source"), 0);
    drop(a);
}

/// Issue 22, finding 4: an extra source port whose datagrams never reach the peer (here B's
/// namespace drops what comes from 12 of A's 16, as a firewall would, or as a NAT that rewrote
/// them would have B's source check do) carries no flow: A sees no acknowledgement of the probes
/// it sends from them, so the flows hashed to them leave from the listen port, counted as
/// `entropy_fallback_packets`; every flow arrives (verified), and none in a datagram from a
/// dropped port. With the check broken, those flows are lost and the transfer fails.
#[test]
fn extra_ports_the_peer_never_receives_carry_no_flow_and_every_flow_still_arrives() {
    let _serial = serially();
    let bed = testbed();
    // A's 16 extra ports are 40000..=40015 (`entropy::ports_in_range` at four queues); B drops
    // 40000..=40011 from A's address by FIB rules ahead of the local table (one per port:
    // this kernel refuses port ranges in rules). The listen port's datagrams pass.
    const DROPPED: std::ops::RangeInclusive<u16> = 40000..=40011;
    let namespace = bed.namespace(Host::B);
    for port in DROPPED {
        let port = port.to_string();
        testbed::ip(&[
            "-n",
            &namespace,
            "rule",
            "add",
            "pref",
            "100",
            "from",
            testbed::A_UNDERLAY,
            "ipproto",
            "udp",
            "sport",
            &port,
            "blackhole",
        ])
        .expect("a rule dropping one of A's extra ports");
    }
    testbed::ip(&[
        "-n", &namespace, "rule", "add", "pref", "200", "lookup", "local",
    ])
    .expect("the local table after those rules");
    testbed::ip(&["-n", &namespace, "rule", "del", "pref", "0"]).expect("the local table moved");
    let a = relay(&bed, Host::A, &["--srcport", "40000", "40015"]);
    let b = relay(&bed, Host::B, &["--entropy", "auto"]);
    assert_eq!(
        advertised_ports(&a),
        (40000..=40015).collect::<Vec<u16>>(),
        "{}",
        a.stderr()
    );
    // A's advertisement (from its listen port) is acknowledged; each tuple then probes, and
    // only the four whose datagrams pass are confirmed. B's tuples are untouched.
    report_when(&bed, Host::A, Duration::from_secs(15), |r| {
        total(r, "path.ports_acknowledged") >= 1 && total(r, "path.entropy_tuples_confirmed") >= 4
    });
    tuples_carrying(&bed, Host::B, 16, Duration::from_secs(15));
    // Long enough for every dropped tuple's first probe to be tried three times.
    std::thread::sleep(Duration::from_secs(3));
    let capture = Capture::start(&bed, Host::B);
    bed.verified_transfer(Host::A, Host::B, testbed::B_TUNNEL4, 4 << 20, 8, &[])
        .expect("every flow arrives");
    let seen = capture.finish();
    eprintln!(
        "B captured from A: data per outer source port {:?}, all {:?}",
        seen.data_per_port, seen.per_port
    );
    assert_one_tuple_per_flow(&seen, "A to B");
    for port in seen.data_per_port.keys() {
        assert!(
            !DROPPED.contains(port),
            "A sent inner packets from port {port}, which B never receives: {:?}",
            seen.data_per_port
        );
    }
    let (ra, rb) = (settled(&bed, Host::A), settled(&bed, Host::B));
    // Probed during the capture, or (a dozen probes unanswered) quiet for a while already.
    assert!(
        seen.per_port.keys().any(|p| DROPPED.contains(p))
            || total(&ra, "path.entropy_tuples_quieted") > 0,
        "A probed its dropped ports: {:?}",
        seen.per_port
    );
    assert_eq!(
        carrying(&ra),
        4,
        "only the tuples that reach B carry flows: {}",
        ra["path"]
    );
    assert!(
        total(&ra, "entropy_fallback_packets") > 0,
        "flows hashed to a dropped port left from the listen port, counted: {}",
        ra["queues"]
    );
    assert!(
        total(&rb, "entropy_tx_packets") > 0,
        "B's tuples carry its flows"
    );
    assert_eq!(total(&rb, "drops.foreign_source"), 0);
    drop((a, b));
}
