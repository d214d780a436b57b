//! tunfwd's WireGuard mode (`tunfwd --wireguard`, issue 20) against the WireGuards users run:
//! upstream wireguard-go, Debian's wireguard-go and boringtun, each as initiator and as
//! responder, and tunfwd's refusals and defences with real peers on the other side.
//!
//! Everything is configured the way an operator would: `wg set` through each side's userspace API
//! socket (`tunfwd_testkit::wgpeer`), and checked with `wg show` on tunfwd's own socket. tunfwd
//! runs on B; its peers on A (and, for the hub, on C). Addresses come from the benchmarking ranges
//! only (198.18.0.0/15, 2001:2::/48), inside the testbed's namespaces. Every loop is bounded and
//! every process and socket is cleaned up on drop, when a test fails too.
//!
//! They need root, the peers (`scripts/wireguard-peers`) and a tunfwd with `--wireguard`; without
//! any of them they fail at once, saying which. They run one at a time. The basic interop with
//! upstream wireguard-go, tunfwd with tunfwd and the wrong key are in tests/wireguard.rs.

use serde_json::Value;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tunfwd_testkit::testbed::{self, Host, Process, Testbed, endpoint, parse_json};
use tunfwd_testkit::wgpeer::{self, Capture, Device, Implementation, Interface, PeerConfig, Peers};

static SERIAL: Mutex<()> = Mutex::new(());

/// The overlay MTU on every side (wireguard-go's default).
const MTU: u32 = 1420;
/// tunfwd's WireGuard port on B.
const TUNFWD_PORT: u16 = 51820;
/// The peers' ports on A and C.
const PEER_PORT: u16 = 51821;
/// Bytes each way in the interop transfers.
const TRANSFER_BYTES: u64 = 100 << 20;
/// The hub's second peer's overlay address, on C.
const C_TUNNEL4: &str = "198.19.0.3";
const C_TUNNEL6: &str = "2001:2:1::3";

/// Holds the suite's lock for the caller's test.
fn serially() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn tunfwd_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tunfwd"))
}

/// The testbed and the peers, or a panic saying what is missing: root, tunfwd's WireGuard mode.
fn setup() -> (Testbed, Peers) {
    assert!(
        testbed::is_root(),
        "the WireGuard interop tests need root (namespaces, TUN): run them as root, e.g. `sudo -E cargo test`"
    );
    if let Err(e) = wgpeer::tunfwd_wireguard_support(tunfwd_binary()) {
        panic!("needs tunfwd --wireguard (branch wireguard-mode): {e}");
    }
    let bed = Testbed::new(tunfwd_binary(), &tunfwd_testkit::binaries::tool("tunload"))
        .expect("building the namespace testbed");
    bed.silence_router_solicitations()
        .expect("turning off router solicitations");
    (bed, Peers::from_env().with_tunfwd(tunfwd_binary()))
}

fn config(peers: &Peers, port: u16, v4: &str, v6: &str) -> Interface {
    Interface {
        keys: wgpeer::generate_keys(&peers.wg).expect("wg genkey"),
        listen_port: port,
        addresses: vec![format!("{v4}/24"), format!("{v6}/64")],
        mtu: MTU,
    }
}

/// tunfwd on B (overlay `B_TUNNEL4`/`B_TUNNEL6`) on port `TUNFWD_PORT`, its JSON report at
/// `b.json` every second; `extra` for more options.
fn start_tunfwd(bed: &Testbed, peers: &Peers, extra: &[&str]) -> Device {
    let json = bed.path("b.json");
    let mut args = vec![
        "--stats-json",
        json.to_str().unwrap(),
        "--stats-interval",
        "1",
    ];
    args.extend_from_slice(extra);
    let config = config(peers, TUNFWD_PORT, testbed::B_TUNNEL4, testbed::B_TUNNEL6);
    Device::start_with(
        bed,
        peers,
        Implementation::Tunfwd,
        Host::B,
        &wgpeer::interface_name("tfwg"),
        &config,
        &args,
    )
    .unwrap_or_else(|e| panic!("starting tunfwd --wireguard: {e}"))
}

/// `implementation` on `host` with `v4`/`v6` as its overlay addresses, on `PEER_PORT`.
fn start_peer(
    bed: &Testbed,
    peers: &Peers,
    implementation: Implementation,
    host: Host,
    v4: &str,
    v6: &str,
) -> Device {
    let config = config(peers, PEER_PORT, v4, v6);
    Device::start(
        bed,
        peers,
        implementation,
        host,
        &wgpeer::interface_name("pwg"),
        &config,
    )
    .unwrap_or_else(|e| panic!("starting {}: {e}", implementation.key()))
}

/// `peer: KEY endpoint E allowed-ips ...` on `device`.
fn add_peer(device: &Device, other: &Device, endpoint: Option<SocketAddr>, allowed: &[String]) {
    device
        .add_peer(&PeerConfig {
            public_key: other.keys.public.clone(),
            endpoint,
            allowed_ips: allowed.to_vec(),
            persistent_keepalive: None,
            preshared_key: None,
        })
        .unwrap_or_else(|e| panic!("wg set {} peer ...: {e}", device.interface));
}

fn host_routes(v4: &str, v6: &str) -> Vec<String> {
    vec![format!("{v4}/32"), format!("{v6}/128")]
}

fn socket(address: &str, port: u16) -> SocketAddr {
    endpoint(address, port).parse().unwrap()
}

/// tunfwd on B and `implementation` on A, each the other's peer; the initiator knows the
/// responder's endpoint and the responder does not (it learns it from the handshake).
struct Pair {
    tunfwd: Device,
    peer: Device,
}

fn pair(
    bed: &Testbed,
    peers: &Peers,
    implementation: Implementation,
    tunfwd_initiates: bool,
) -> Pair {
    let tunfwd = start_tunfwd(bed, peers, &[]);
    let peer = start_peer(
        bed,
        peers,
        implementation,
        Host::A,
        testbed::A_TUNNEL4,
        testbed::A_TUNNEL6,
    );
    let (to_peer, to_tunfwd) = if tunfwd_initiates {
        (Some(socket(testbed::A_UNDERLAY, PEER_PORT)), None)
    } else {
        (None, Some(socket(testbed::B_UNDERLAY, TUNFWD_PORT)))
    };
    add_peer(
        &tunfwd,
        &peer,
        to_peer,
        &host_routes(testbed::A_TUNNEL4, testbed::A_TUNNEL6),
    );
    add_peer(
        &peer,
        &tunfwd,
        to_tunfwd,
        &host_routes(testbed::B_TUNNEL4, testbed::B_TUNNEL6),
    );
    Pair { tunfwd, peer }
}

/// `tunload ping` of `count` echoes; every one must come back.
fn ping(bed: &Testbed, from: Host, to: &str, count: u32) {
    let result = bed
        .tunload_ping(from, to, count, 20, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("ping {to} from {from:?}: {e}"));
    assert_eq!(
        result["received"], result["sent"],
        "ping {to} from {from:?}: {result}"
    );
}

/// iputils ping from `from` with `options` (a source address, say), up to `count` echoes 50 ms
/// apart, each waited for 1 s at most: (transmitted, received) from its summary.
fn iputils_ping(bed: &Testbed, from: Host, options: &[&str], to: &str, count: u32) -> (u64, u64) {
    let mut args: Vec<String> = ["-n", "-i", "0.05", "-W", "1", "-c", &count.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(options.iter().map(|s| s.to_string()));
    args.push(to.to_string());
    let mut ping = bed
        .spawn(from, &format!("iputils-{to}"), Path::new("ping"), &args)
        .expect("starting ping");
    ping.wait_for(Duration::from_secs(30))
        .expect("ping finishes");
    let out = ping.stdout();
    let summary = out
        .lines()
        .find(|l| l.contains(" packets transmitted"))
        .unwrap_or_else(|| panic!("no summary from ping: {out}{}", ping.stderr()));
    let numbers: Vec<u64> = summary
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// A verified transfer of `bytes` from `from` to `to_addr` on `to_host`; its sender's report.
fn transfer(bed: &Testbed, from: Host, to_host: Host, to_addr: &str, bytes: u64) -> Value {
    bed.verified_transfer(from, to_host, to_addr, bytes, 1, &[])
        .unwrap_or_else(|e| panic!("{bytes} bytes from {from:?} to {to_addr}: {e}"))
}

/// A verified transfer that sends for `seconds` (tcp-send `--bytes 0`) from A to B's
/// `B_TUNNEL4`, running while the caller does something to the tunnel.
struct TimedTransfer {
    sink: Process,
    sender: Process,
}

impl TimedTransfer {
    fn start(bed: &Testbed, seconds: u64) -> TimedTransfer {
        let sink = bed
            .tunload_background(
                Host::B,
                "tcp-sink",
                &["tcp-sink", "--listen", "0.0.0.0:5201", "--seconds", "90"],
            )
            .unwrap();
        let sender = bed
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
                    &seconds.to_string(),
                ],
            )
            .unwrap();
        TimedTransfer { sink, sender }
    }

    /// Waits for both ends; panics unless the sink got and checked every byte sent. The
    /// sender's report.
    fn finish(mut self, what: &str) -> Value {
        let status = self.sender.wait_for(Duration::from_secs(90)).unwrap();
        assert!(
            status.success(),
            "{what}: the transfer failed: {}{}",
            self.sender.stdout(),
            self.sender.stderr()
        );
        let status = self.sink.wait_for(Duration::from_secs(30)).unwrap();
        assert!(
            status.success(),
            "{what}: the sink failed: {}",
            self.sink.stderr()
        );
        let sent = parse_json(&self.sender.stdout()).unwrap();
        let got = parse_json(&self.sink.stdout()).unwrap();
        assert_eq!(got["verified"], true, "{what}: {got}");
        assert_eq!(got["checked"], true, "{what}: {got}");
        assert_eq!(
            got["bytes"], sent["bytes"],
            "{what}: sink {got}, sender {sent}"
        );
        assert!(
            sent["bytes"].as_u64().unwrap() > 0,
            "{what}: nothing sent: {sent}"
        );
        sent
    }
}

/// Stops tunfwd with SIGTERM: it must exit 0 and remove its API socket (the contract). Its final
/// JSON report.
fn stop_tunfwd(bed: &Testbed, tunfwd: Device) -> Value {
    let interface = tunfwd.interface.clone();
    let status = tunfwd
        .stop()
        .unwrap_or_else(|e| panic!("stopping tunfwd: {e}"));
    assert!(status.success(), "tunfwd exited with {status}");
    assert!(!wgpeer::socket_path(&interface).exists());
    let text = std::fs::read_to_string(bed.path("b.json")).expect("tunfwd's JSON report");
    parse_json(&text).unwrap()
}

/// A counter of tunfwd's JSON report, wherever the report keeps it; a panic if the report has
/// no such counter (the contract names it, so a missing one is a failure, not a zero).
fn counter(report: &Value, name: &str) -> u64 {
    wgpeer::json_counter(report, name)
        .unwrap_or_else(|| panic!("tunfwd's report has no counter {name}: {report}"))
}

/// The drop reasons and counters of the contract, all of which must be in the report.
const WIREGUARD_COUNTERS: [&str; 9] = [
    "wg_unknown_receiver",
    "wg_replay",
    "wg_bad_tag",
    "wg_source_not_allowed",
    "wg_no_route",
    "wg_no_session",
    "wg_bad_handshake",
    "wg_handshakes",
    "wg_cookie_replies",
];

/// The interop test: ping both ways over IPv4 and IPv6 (the initiator first), 100 MB verified
/// each way, `wg show` on tunfwd's socket (handshake, bytes, endpoint) and on the peer's, and a
/// clean stop with every counter of the contract in the report.
fn interop(implementation: Implementation, tunfwd_initiates: bool) {
    let _serial = serially();
    let (bed, peers) = setup();
    let Pair { tunfwd, peer } = pair(&bed, &peers, implementation, tunfwd_initiates);
    let (initiator, responder, responder_v4, responder_v6, initiator_v4) = if tunfwd_initiates {
        (
            Host::B,
            Host::A,
            testbed::A_TUNNEL4,
            testbed::A_TUNNEL6,
            testbed::B_TUNNEL4,
        )
    } else {
        (
            Host::A,
            Host::B,
            testbed::B_TUNNEL4,
            testbed::B_TUNNEL6,
            testbed::A_TUNNEL4,
        )
    };
    // The first echo starts the handshake. Every implementation, tunfwd too (`wg_staged`), holds
    // a packet that has no session yet and sends it once the handshake completes: none of
    // these 10 echoes 20 ms apart is lost, the first sent before the handshake completes.
    ping(&bed, initiator, responder_v4, 10);
    ping(&bed, initiator, responder_v6, 10);
    ping(&bed, responder, initiator_v4, 10);
    transfer(&bed, Host::A, Host::B, testbed::B_TUNNEL4, TRANSFER_BYTES);
    transfer(&bed, Host::B, Host::A, testbed::A_TUNNEL6, TRANSFER_BYTES);

    let dump = tunfwd.dump().expect("wg show on tunfwd's socket");
    assert_eq!(dump.public_key, tunfwd.keys.public, "{dump:?}");
    assert_eq!(dump.listen_port, TUNFWD_PORT, "{dump:?}");
    let seen = dump
        .peer(&peer.keys.public)
        .unwrap_or_else(|| panic!("tunfwd lost its peer: {dump:?}"));
    assert!(
        seen.handshake_within(Duration::from_secs(120)),
        "tunfwd's wg show has no recent handshake: {seen:?}"
    );
    assert_eq!(
        seen.endpoint,
        Some(socket(testbed::A_UNDERLAY, PEER_PORT)),
        "tunfwd's wg show: {seen:?}"
    );
    assert!(
        seen.rx_bytes > TRANSFER_BYTES && seen.tx_bytes > TRANSFER_BYTES,
        "tunfwd's wg show counts less than a transfer each way: {seen:?}"
    );
    let theirs = peer.dump().expect("wg show on the peer");
    let seen_by_peer = theirs
        .peer(&tunfwd.keys.public)
        .unwrap_or_else(|| panic!("the peer lost tunfwd: {theirs:?}"));
    assert!(
        implementation.handshake_within(seen_by_peer, Duration::from_secs(120)),
        "{}: {seen_by_peer:?}",
        implementation.key()
    );
    assert_eq!(
        seen_by_peer.endpoint,
        Some(socket(testbed::B_UNDERLAY, TUNFWD_PORT)),
        "{}: {seen_by_peer:?}",
        implementation.key()
    );
    // wireguard-go counts what crosses the wire, as tunfwd does: nothing arrives that was not
    // sent, so tunfwd's rx is at most the peer's tx and the peer's rx at most tunfwd's tx, to
    // within the keepalives that may cross between the two reads. (Not equal: a slow peer's
    // socket drops what tunfwd sent faster than it reads, and TCP sends it again.) boringtun
    // 0.7.1 counts otherwise (its tx is below what tunfwd receives from it), so it is not held
    // to this.
    if implementation != Implementation::Boringtun {
        let slack = 4096;
        assert!(
            seen.rx_bytes <= seen_by_peer.tx_bytes + slack
                && seen_by_peer.rx_bytes <= seen.tx_bytes + slack,
            "tunfwd {seen:?} and {} {seen_by_peer:?} disagree on the bytes",
            implementation.key()
        );
    }
    drop(peer);
    let report = stop_tunfwd(&bed, tunfwd);
    for name in WIREGUARD_COUNTERS {
        counter(&report, name);
    }
    assert!(counter(&report, "wg_handshakes") >= 1, "{report}");
    for refusal in [
        "wg_bad_tag",
        "wg_replay",
        "wg_unknown_receiver",
        "wg_bad_handshake",
    ] {
        assert_eq!(
            counter(&report, refusal),
            0,
            "{refusal} with an honest peer: {report}"
        );
    }
}

mod interop {
    use super::*;

    #[test]
    fn upstream_wireguard_go_initiates() {
        interop(Implementation::WireguardGoUpstream, false);
    }

    #[test]
    fn upstream_wireguard_go_responds() {
        interop(Implementation::WireguardGoUpstream, true);
    }

    #[test]
    fn debian_wireguard_go_initiates() {
        interop(Implementation::WireguardGoDebian, false);
    }

    #[test]
    fn debian_wireguard_go_responds() {
        interop(Implementation::WireguardGoDebian, true);
    }

    #[test]
    fn boringtun_initiates() {
        interop(Implementation::Boringtun, false);
    }

    #[test]
    fn boringtun_responds() {
        interop(Implementation::Boringtun, true);
    }
}

/// Roaming: the peer moves to another source port (`wg set listen-port`, which rebinds its
/// socket) in the middle of a transfer from A to B, whose ACKs must then follow it; the transfer
/// completes verified and tunfwd's `wg show` names the new endpoint.
#[test]
fn the_endpoint_follows_the_peer_to_a_new_port_mid_transfer() {
    let _serial = serially();
    let (bed, peers) = setup();
    let Pair { tunfwd, peer } = pair(&bed, &peers, Implementation::WireguardGoUpstream, false);
    ping(&bed, Host::A, testbed::B_TUNNEL4, 5);
    let before = tunfwd.dump().unwrap();
    assert_eq!(
        before.peer(&peer.keys.public).unwrap().endpoint,
        Some(socket(testbed::A_UNDERLAY, PEER_PORT))
    );
    let running = TimedTransfer::start(&bed, 6);
    std::thread::sleep(Duration::from_secs(2));
    let moved_port = PEER_PORT + 100;
    peer.set(&["listen-port", &moved_port.to_string()])
        .expect("moving the peer to another port");
    let sent = running.finish("across the move");
    let after = wgpeer::dump_when(&peers.wg, &tunfwd.interface, Duration::from_secs(5), |d| {
        d.peer(&peer.keys.public)
            .is_some_and(|p| p.endpoint == Some(socket(testbed::A_UNDERLAY, moved_port)))
    })
    .unwrap_or_else(|e| panic!("tunfwd did not follow the peer to port {moved_port}: {e}"));
    let seen = after.peer(&peer.keys.public).unwrap();
    assert!(
        seen.rx_bytes >= sent["bytes"].as_u64().unwrap(),
        "{seen:?} {sent}"
    );
    // And it keeps working both ways at the new port.
    ping(&bed, Host::B, testbed::A_TUNNEL6, 5);
    drop(peer);
    stop_tunfwd(&bed, tunfwd);
}

/// A hub: tunfwd on B with two peers, upstream wireguard-go on A and boringtun on C, each
/// allowed its own overlay addresses. B reaches each by its address and only through its peer;
/// A reaches C through the hub (B forwards between its two peers on the one interface); an
/// address no peer holds is dropped as `wg_no_route`.
#[test]
fn a_hub_with_two_peers_routes_by_allowed_ips() {
    let _serial = serially();
    let (bed, peers) = setup();
    let tunfwd = start_tunfwd(&bed, &peers, &[]);
    let a = start_peer(
        &bed,
        &peers,
        Implementation::WireguardGoUpstream,
        Host::A,
        testbed::A_TUNNEL4,
        testbed::A_TUNNEL6,
    );
    let c = start_peer(
        &bed,
        &peers,
        Implementation::Boringtun,
        Host::C,
        C_TUNNEL4,
        C_TUNNEL6,
    );
    add_peer(
        &tunfwd,
        &a,
        None,
        &host_routes(testbed::A_TUNNEL4, testbed::A_TUNNEL6),
    );
    add_peer(&tunfwd, &c, None, &host_routes(C_TUNNEL4, C_TUNNEL6));
    // Each peer sends the whole overlay to the hub.
    let overlay = vec!["198.19.0.0/24".to_string(), "2001:2:1::/64".to_string()];
    add_peer(
        &a,
        &tunfwd,
        Some(socket(testbed::B_UNDERLAY, TUNFWD_PORT)),
        &overlay,
    );
    add_peer(
        &c,
        &tunfwd,
        Some(socket(testbed::B_UNDERLAY_TO_C, TUNFWD_PORT)),
        &overlay,
    );
    let forward = Command::new("ip")
        .args(["netns", "exec", &bed.namespace(Host::B), "sh", "-c"])
        .arg("echo 1 > /proc/sys/net/ipv4/ip_forward; echo 1 > /proc/sys/net/ipv6/conf/all/forwarding")
        .status()
        .unwrap();
    assert!(forward.success(), "turning on forwarding in B");

    ping(&bed, Host::A, testbed::B_TUNNEL4, 5);
    ping(&bed, Host::C, testbed::B_TUNNEL6, 5);
    // What each spoke received from the hub, by its own `wg show`.
    let received = |spoke: &Device| {
        spoke
            .dump()
            .unwrap()
            .peer(&tunfwd.keys.public)
            .map_or(0, |p| p.rx_bytes)
    };
    let (a_before, c_before) = (received(&a), received(&c));
    // Each echo comes back only if the hub sent the request to the peer that holds the address
    // (the other would take it in and drop it: not its address).
    ping(&bed, Host::B, testbed::A_TUNNEL4, 20);
    ping(&bed, Host::B, C_TUNNEL6, 20);
    let (a_got, c_got) = (received(&a) - a_before, received(&c) - c_before);
    // 20 requests each, every one at least an IP and ICMP header (28 bytes for IPv4, 48 for
    // IPv6, padded to 16) and WireGuard's 32; a misroute would leave a spoke without them.
    assert!(
        a_got >= 20 * (32 + 32) && c_got >= 20 * (48 + 32),
        "the hub's echoes reached A with {a_got} bytes and C with {c_got}: each should get its own 20"
    );
    // Between the spokes, through the hub.
    ping(&bed, Host::A, C_TUNNEL4, 10);
    ping(&bed, Host::C, testbed::A_TUNNEL6, 10);
    transfer(&bed, Host::A, Host::C, C_TUNNEL4, 20 << 20);

    let dump = tunfwd.dump().unwrap();
    for (device, endpoint) in [
        (&a, socket(testbed::A_UNDERLAY, PEER_PORT)),
        (&c, socket(testbed::C_UNDERLAY, PEER_PORT)),
    ] {
        let seen = dump.peer(&device.keys.public).unwrap();
        assert_eq!(seen.endpoint, Some(endpoint), "{seen:?}");
        assert!(seen.handshake_within(Duration::from_secs(120)), "{seen:?}");
    }
    // The transfer from A to C crossed the hub: in from A, out to C.
    let (from_a, to_c) = (
        dump.peer(&a.keys.public).unwrap().rx_bytes,
        dump.peer(&c.keys.public).unwrap().tx_bytes,
    );
    assert!(from_a > 20 << 20 && to_c > 20 << 20, "{dump:?}");
    // Nobody holds 198.19.0.9: tunfwd has nowhere to send it.
    let (sent, received) = iputils_ping(&bed, Host::B, &[], "198.19.0.9", 10);
    assert_eq!(received, 0);
    drop(a);
    drop(c);
    let report = stop_tunfwd(&bed, tunfwd);
    // At least those echoes; B's kernel sends a few packets of its own to the interface's
    // multicast addresses, which no peer holds either (13 against 10 echoes, in one run).
    let no_route = counter(&report, "wg_no_route");
    assert!(
        no_route >= sent,
        "{no_route} no-route drops for {sent} echoes: {report}"
    );
    assert_eq!(counter(&report, "wg_source_not_allowed"), 0, "{report}");
}

/// A peer that sends from an address outside its AllowedIPs: tunfwd decrypts the packet, finds
/// the source is not the peer's, drops it and counts it, over IPv4 and IPv6; the peer's own
/// addresses still pass.
#[test]
fn a_source_outside_allowed_ips_is_dropped_and_counted() {
    let _serial = serially();
    let (bed, peers) = setup();
    let Pair { tunfwd, peer } = pair(&bed, &peers, Implementation::WireguardGoUpstream, false);
    // A second address on the peer's interface that tunfwd does not allow for it; the peer
    // itself sends B's addresses to tunfwd whatever the source.
    let ns = bed.namespace(Host::A);
    testbed::ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        "198.19.7.1/32",
        "dev",
        &peer.interface,
    ])
    .unwrap();
    testbed::ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        "2001:2:7::1/128",
        "dev",
        &peer.interface,
        "nodad",
    ])
    .unwrap();
    ping(&bed, Host::A, testbed::B_TUNNEL4, 5);
    let (sent4, received4) =
        iputils_ping(&bed, Host::A, &["-I", "198.19.7.1"], testbed::B_TUNNEL4, 20);
    let (sent6, received6) = iputils_ping(
        &bed,
        Host::A,
        &["-I", "2001:2:7::1"],
        testbed::B_TUNNEL6,
        20,
    );
    assert_eq!(
        (received4, received6),
        (0, 0),
        "echoes from outside AllowedIPs were answered"
    );
    assert!(sent4 == 20 && sent6 == 20, "{sent4} {sent6}");
    ping(&bed, Host::A, testbed::B_TUNNEL6, 5);
    drop(peer);
    let report = stop_tunfwd(&bed, tunfwd);
    assert_eq!(
        counter(&report, "wg_source_not_allowed"),
        sent4 + sent6,
        "{report}"
    );
}

/// Transport datagrams from the peer, captured off B's veth while pings cross, and sent again
/// later, from the stranger's address: tunfwd drops every one as a replay and counts it, and its
/// endpoint for the peer stays where it was (a replay must not move it).
#[test]
fn replayed_captured_datagrams_are_dropped_and_counted() {
    let _serial = serially();
    let (bed, peers) = setup();
    let Pair { tunfwd, peer } = pair(&bed, &peers, Implementation::WireguardGoDebian, false);
    ping(&bed, Host::A, testbed::B_TUNNEL4, 3);
    let to: SocketAddrV4 = format!("{}:{TUNFWD_PORT}", testbed::B_UNDERLAY)
        .parse()
        .unwrap();
    let capture = Capture::start(&bed, Host::B, to).expect("capturing on B");
    std::thread::sleep(Duration::from_millis(200));
    ping(&bed, Host::A, testbed::B_TUNNEL4, 20);
    std::thread::sleep(Duration::from_millis(200));
    let captured = capture.stop().expect("the capture");
    // Transport data only (type 4): a replayed handshake message is another refusal.
    let data: Vec<Vec<u8>> = captured
        .into_iter()
        .filter(|d| d.len() >= 32 && d[..4] == [4, 0, 0, 0])
        .collect();
    assert!(
        data.len() >= 20,
        "captured {} transport datagrams",
        data.len()
    );
    let target = socket(testbed::B_UNDERLAY_TO_C, TUNFWD_PORT);
    bed.in_namespace(Host::C, || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        for datagram in &data {
            socket.send_to(datagram, target)?;
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    })
    .expect("replaying from C");
    std::thread::sleep(Duration::from_millis(500));
    let dump = tunfwd.dump().unwrap();
    assert_eq!(
        dump.peer(&peer.keys.public).unwrap().endpoint,
        Some(socket(testbed::A_UNDERLAY, PEER_PORT)),
        "a replay moved the endpoint: {dump:?}"
    );
    ping(&bed, Host::A, testbed::B_TUNNEL4, 5);
    drop(peer);
    let report = stop_tunfwd(&bed, tunfwd);
    assert_eq!(counter(&report, "wg_replay"), data.len() as u64, "{report}");
}

/// A stranger sends 10k handshake initiations a second with a valid mac1 (one initiation of
/// its own to tunfwd's public key, captured and sent again and again) all through a 6 s
/// transfer: tunfwd, under load, answers with cookie replies instead of doing the
/// Diffie-Hellman for each, and the transfer completes verified.
#[test]
fn a_flood_of_initiations_engages_cookies_and_the_transfer_completes() {
    let _serial = serially();
    let (bed, peers) = setup();
    let Pair { tunfwd, peer } = pair(&bed, &peers, Implementation::WireguardGoUpstream, false);
    ping(&bed, Host::A, testbed::B_TUNNEL4, 3);

    // The stranger's initiation: a WireGuard on C that takes tunfwd's key as its peer's, made to
    // send its first initiation to a socket of the test's instead of to tunfwd.
    let trap = bed
        .in_namespace(Host::C, || {
            let socket = UdpSocket::bind(format!("{}:0", testbed::C_UNDERLAY))?;
            socket.set_read_timeout(Some(Duration::from_secs(10)))?;
            Ok(socket)
        })
        .unwrap();
    let stranger = start_peer(
        &bed,
        &peers,
        Implementation::WireguardGoDebian,
        Host::C,
        "198.19.5.1",
        "2001:2:5::1",
    );
    add_peer(
        &stranger,
        &tunfwd,
        Some(trap.local_addr().unwrap()),
        &["198.19.5.0/24".to_string()],
    );
    let _ = iputils_ping(&bed, Host::C, &[], "198.19.5.2", 1);
    let mut buf = [0u8; 256];
    let initiation = loop {
        let (n, _) = trap.recv_from(&mut buf).expect("the stranger's initiation");
        if n == 148 && buf[..4] == [1, 0, 0, 0] {
            break buf[..n].to_vec();
        }
    };
    drop(stranger);

    let target = socket(testbed::B_UNDERLAY_TO_C, TUNFWD_PORT);
    let running = TimedTransfer::start(&bed, 6);
    std::thread::sleep(Duration::from_millis(500));
    let stop = AtomicBool::new(false);
    let (sent, seconds, cookies) = std::thread::scope(|s| {
        let replies = s.spawn(|| {
            // Cookie replies (type 3, 64 bytes) coming back to the flood's socket.
            let mut cookies = 0u64;
            let mut buf = [0u8; 256];
            trap.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, _)) = trap.recv_from(&mut buf)
                    && n == 64
                    && buf[..4] == [3, 0, 0, 0]
                {
                    cookies += 1;
                }
            }
            cookies
        });
        // 100 initiations every 10 ms for 4 s, paced against the clock.
        let started = Instant::now();
        let (mut sent, mut tried) = (0u64, 0u64);
        while started.elapsed() < Duration::from_secs(4) {
            let due = (started.elapsed().as_millis() as u64 / 10 + 1) * 100;
            while tried < due {
                tried += 1;
                if trap.send_to(&initiation, target).is_ok() {
                    sent += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let seconds = started.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        (sent, seconds, replies.join().unwrap())
    });
    let rate = sent as f64 / seconds;
    assert!(
        rate >= 9_000.0,
        "the flood ran at {rate:.0} initiations/s only"
    );
    running.finish("under a flood of initiations");
    assert!(
        cookies > 0,
        "no cookie reply came back to the stranger ({sent} initiations)"
    );
    ping(&bed, Host::A, testbed::B_TUNNEL4, 5);
    drop(peer);
    let report = stop_tunfwd(&bed, tunfwd);
    let replies = counter(&report, "wg_cookie_replies");
    assert!(
        replies >= cookies,
        "tunfwd counts {replies} cookie replies, the stranger got {cookies}: {report}"
    );
    // The flood cost no handshake with the real peer beyond the first ones.
    assert!(counter(&report, "wg_handshakes") <= 3, "{report}");
}

/// `wg set NAME listen-port P` on a running tunfwd rebinds it (the contract): `wg show` reports
/// the new port, and a peer that moves its endpoint there is answered from it.
#[test]
fn setting_the_listen_port_while_running_rebinds() {
    let _serial = serially();
    let (bed, peers) = setup();
    let Pair { tunfwd, peer } = pair(&bed, &peers, Implementation::WireguardGoUpstream, false);
    ping(&bed, Host::A, testbed::B_TUNNEL4, 3);
    let moved = TUNFWD_PORT + 7;
    tunfwd
        .set(&["listen-port", &moved.to_string()])
        .expect("wg set listen-port on tunfwd");
    let dump = tunfwd.dump().unwrap();
    assert_eq!(dump.listen_port, moved, "wg show after the move: {dump:?}");
    peer.set(&[
        "peer",
        &tunfwd.keys.public,
        "endpoint",
        &endpoint(testbed::B_UNDERLAY, moved),
    ])
    .unwrap();
    // The relay moves "within a moment" (its workers stop and start again on the new port):
    // echoes are answered from there within 5 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = bed
            .tunload_ping(Host::A, testbed::B_TUNNEL4, 3, 20, Duration::from_secs(10))
            .ok();
        if out.as_ref().is_some_and(|r| r["received"] == r["sent"]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no echo through port {moved} within 5 s of the move: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ping(&bed, Host::A, testbed::B_TUNNEL4, 5);
    let theirs = peer.dump().unwrap();
    assert_eq!(
        theirs.peer(&tunfwd.keys.public).unwrap().endpoint,
        Some(socket(testbed::B_UNDERLAY, moved)),
        "{theirs:?}"
    );
    drop(peer);
    stop_tunfwd(&bed, tunfwd);
}
