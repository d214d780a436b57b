//! WireGuard mode on the namespace testbed, with the real binary: tunfwd against upstream
//! wireguard-go, tunfwd against itself, a peer with the wrong key, the first packets staged
//! while a handshake runs, fwmark, and wg-quick with `scripts/tunfwd-wg-quick`.
//!
//! The relays are configured as WireGuard users do: a `wg setconf` file for tunfwd's
//! `--config` or for `wg setconf` on wireguard-go's API socket, and `wg show` read back from
//! tunfwd's. Addresses stay in 198.18.0.0/15 and 2001:2::/48. Every loop is bounded; every
//! process is the test's own and is stopped when it is dropped (also on a failed assertion), and
//! the testbed deletes its namespaces.
//!
//! They need root, `wg` and `wg-quick` (Debian's wireguard-tools; wg-quick without the
//! WireGuard kernel module loaded, or it would not run tunfwd) and upstream wireguard-go at
//! `../shared/peers/wireguard-go` (present on CI), and fail at once without them, never
//! skipping silently. They run one at a time: two WireGuard relays and a transfer already fill
//! the machine's two cores.

use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tunfwd_testkit::testbed::{
    self, A_TUNNEL4, A_TUNNEL6, A_UNDERLAY, B_TUNNEL4, B_TUNNEL6, B_UNDERLAY, Host, Process,
    Testbed, report_drops, report_sum,
};

static SERIAL: Mutex<()> = Mutex::new(());

/// Bytes each verified transfer moves.
const TRANSFER_BYTES: u64 = 100_000_000;
const A_PORT: u16 = 51820;
const B_PORT: u16 = 51821;

fn serially() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn testbed() -> Testbed {
    if !testbed::is_root() {
        panic!(
            "the WireGuard tests need root (namespaces, veth, TUN): run them as root, e.g. \
             `sudo -E cargo test --release --test wireguard`"
        );
    }
    Testbed::new(
        Path::new(env!("CARGO_BIN_EXE_tunfwd")),
        &tunfwd_testkit::binaries::tool("tunload"),
    )
    .expect("building the namespace testbed")
}

/// Upstream wireguard-go, beside the repository where present; else Debian's, which
/// `scripts/wireguard-peers` installs (the issue asks for the upstream build where present).
fn wireguard_go() -> PathBuf {
    let upstream = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/wireguard-go");
    if upstream.exists() {
        return upstream;
    }
    let debian = PathBuf::from("/usr/bin/wireguard-go");
    eprintln!(
        "upstream wireguard-go is not at {}: using Debian's {}",
        upstream.display(),
        debian.display()
    );
    assert!(
        debian.exists(),
        "no wireguard-go at {} or {}: install the peers with scripts/wireguard-peers",
        upstream.display(),
        debian.display()
    );
    debian
}

/// Runs `wg ARGS` (in `namespace`, if given) with `input` on its stdin; its stdout.
fn wg(namespace: Option<&str>, args: &[&str], input: Option<&str>) -> String {
    let mut command = match namespace {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "wg"]);
            c
        }
        None => Command::new("wg"),
    };
    let mut child = command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running wg (Debian's wireguard-tools)");
    if let Some(input) = input {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("writing to wg");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("waiting for wg");
    assert!(
        out.status.success(),
        "wg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A key pair from `wg genkey` and `wg pubkey`, base64.
struct Keys {
    private: String,
    public: String,
}

fn keys() -> Keys {
    let private = wg(None, &["genkey"], None);
    let public = wg(None, &["pubkey"], Some(&private));
    Keys { private, public }
}

/// A `wg setconf` file of one interface and one peer, written with mode 0600.
fn config(bed: &Testbed, name: &str, own: &Keys, port: u16, peer: &PeerSpec) -> PathBuf {
    let mut text = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {port}\n\n[Peer]\nPublicKey = {}\n\
         AllowedIPs = {}/32, {}/128\n",
        own.private, peer.public, peer.tunnel4, peer.tunnel6
    );
    if let Some(endpoint) = &peer.endpoint {
        text.push_str(&format!("Endpoint = {endpoint}\n"));
    }
    let path = bed.path(name);
    fs::write(&path, text).expect("writing a WireGuard configuration");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    path
}

/// A's configuration (`a.conf`) with `own` keys and one peer, `peer_public`, at B's overlay
/// addresses and B's endpoint.
fn a_side(bed: &Testbed, own: &Keys, peer_public: &str) -> PathBuf {
    let peer = PeerSpec {
        public: peer_public,
        tunnel4: B_TUNNEL4,
        tunnel6: B_TUNNEL6,
        endpoint: Some(format!("{B_UNDERLAY}:{B_PORT}")),
    };
    config(bed, "a.conf", own, A_PORT, &peer)
}

/// B's configuration (`b.conf`) with `own` keys and one peer, `peer_public`, at A's overlay
/// addresses; with A's endpoint when `endpoint`, else B learns it from A's initiation.
fn b_side(bed: &Testbed, own: &Keys, peer_public: &str, endpoint: bool) -> PathBuf {
    let peer = PeerSpec {
        public: peer_public,
        tunnel4: A_TUNNEL4,
        tunnel6: A_TUNNEL6,
        endpoint: endpoint.then(|| format!("{A_UNDERLAY}:{A_PORT}")),
    };
    config(bed, "b.conf", own, B_PORT, &peer)
}

struct PeerSpec<'a> {
    public: &'a str,
    tunnel4: &'a str,
    tunnel6: &'a str,
    endpoint: Option<String>,
}

/// The interface name of `host`'s relay: unique per testbed, because the API sockets in
/// /var/run/wireguard are shared by every namespace.
fn interface(bed: &Testbed, host: Host) -> String {
    format!("{}w", bed.namespace(host))
}

fn json_path(bed: &Testbed, host: Host) -> PathBuf {
    bed.path(&format!("{host:?}.json"))
}

/// tunfwd in WireGuard mode on `host`, with `config`, the host's overlay addresses and `extra`;
/// returns once it reports its device up.
fn start_tunfwd(bed: &Testbed, host: Host, config: &Path, extra: &[&str]) -> Process {
    let (v4, v6) = match host {
        Host::A => (A_TUNNEL4, A_TUNNEL6),
        _ => (B_TUNNEL4, B_TUNNEL6),
    };
    let json = json_path(bed, host);
    let mut args: Vec<String> = [
        "--wireguard",
        "--dev",
        &interface(bed, host),
        "--config",
        config.to_str().unwrap(),
        "--address",
        &format!("{v4}/24"),
        "--address",
        &format!("{v6}/64"),
        "--stats-json",
        json.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let tunfwd = Path::new(env!("CARGO_BIN_EXE_tunfwd"));
    let mut p = bed
        .spawn(host, &format!("tunfwd-{host:?}"), tunfwd, &args)
        .expect("starting tunfwd");
    wait_until(Duration::from_secs(10), "tunfwd to come up", || {
        if let Ok(Some(status)) = p.try_status() {
            panic!("tunfwd exited early ({status}): {}", p.stderr());
        }
        p.stderr().contains(" up: ")
    });
    let socket = format!("/var/run/wireguard/{}.sock", interface(bed, host));
    let mode = fs::metadata(&socket)
        .unwrap_or_else(|e| panic!("{socket}: {e}"))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{socket} is for root alone");
    p
}

/// Upstream wireguard-go on `host`, configured with `config` through `wg setconf`, with the
/// host's overlay addresses and MTU 1420.
fn start_wireguard_go(bed: &Testbed, host: Host, config: &Path) -> Process {
    let name = interface(bed, host);
    let p = bed
        .spawn(
            host,
            "wireguard-go",
            &wireguard_go(),
            &["-f".to_string(), name.clone()],
        )
        .expect("starting wireguard-go");
    let socket = PathBuf::from(format!("/var/run/wireguard/{name}.sock"));
    wait_until(Duration::from_secs(10), "wireguard-go's API socket", || {
        socket.exists()
    });
    let ns = bed.namespace(host);
    wg(
        Some(&ns),
        &["setconf", &name, config.to_str().unwrap()],
        None,
    );
    let (v4, v6) = match host {
        Host::A => (A_TUNNEL4, A_TUNNEL6),
        _ => (B_TUNNEL4, B_TUNNEL6),
    };
    for args in [
        vec!["-n", &ns, "addr", "add", &format!("{v4}/24"), "dev", &name],
        vec![
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            &name,
            "nodad",
        ],
        vec!["-n", &ns, "link", "set", &name, "mtu", "1420", "up"],
    ] {
        let args: Vec<&str> = args.iter().map(|s| s.as_ref()).collect();
        testbed::ip(&args).expect("configuring wireguard-go's device");
    }
    p
}

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pings `to` from `host` until one answer (the first packet starts the handshake; a relay
/// moving to another port may lose one), within 10 s; then 3 more must all be answered.
fn ping(bed: &Testbed, host: Host, to: &str) {
    let ns = bed.namespace(host);
    let once = |count: &str| {
        Command::new("ip")
            .args([
                "netns", "exec", &ns, "ping", "-c", count, "-i", "0.2", "-W", "1", to,
            ])
            .output()
            .expect("running ping")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !once("1").status.success() {
        assert!(Instant::now() < deadline, "no answer from {to} in 10 s");
    }
    let out = once("3");
    assert!(
        out.status.success(),
        "ping {to} from {host:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `wg show NAME dump`'s peer line on `host`: (endpoint, latest handshake, rx, tx).
fn show(bed: &Testbed, host: Host) -> (String, u64, u64, u64) {
    let dump = wg(
        Some(&bed.namespace(host)),
        &["show", &interface(bed, host), "dump"],
        None,
    );
    let peer: Vec<&str> = dump
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("no peer in {dump}"))
        .split('\t')
        .collect();
    let number = |i: usize| peer[i].parse::<u64>().unwrap();
    (peer[2].to_string(), number(4), number(5), number(6))
}

fn stop(bed: &Testbed, mut relay: Process, host: Host) -> Value {
    relay
        .stop_for_report(&json_path(bed, host))
        .unwrap_or_else(|e| panic!("stopping tunfwd on {host:?}: {e}"))
}

/// tunfwd on A and wireguard-go on B: the side named `initiator` sends first (and so starts the
/// handshake); then ping over v4 and v6 both ways, 100 MB verified each way, and `wg show` on
/// tunfwd's socket reports the handshake, the transfer and the endpoint.
fn interop_with_wireguard_go(initiator: Host) {
    let _serial = serially();
    let bed = testbed();
    let (a, b) = (keys(), keys());
    let (a_config, b_config) = pair_configs(&bed, &a, &b, None);
    let relay = start_tunfwd(&bed, Host::A, &a_config, &[]);
    let _peer = start_wireguard_go(&bed, Host::B, &b_config);
    let (first, other, first_to, other_to) = match initiator {
        Host::A => (Host::A, Host::B, B_TUNNEL4, A_TUNNEL4),
        _ => (Host::B, Host::A, A_TUNNEL4, B_TUNNEL4),
    };
    ping(&bed, first, first_to);
    ping(&bed, other, other_to);
    ping(&bed, Host::A, B_TUNNEL6);
    ping(&bed, Host::B, A_TUNNEL6);
    bed.verified_transfer(Host::B, Host::A, A_TUNNEL4, TRANSFER_BYTES, 1, &[])
        .expect("100 MB from wireguard-go to tunfwd");
    bed.verified_transfer(Host::A, Host::B, B_TUNNEL6, TRANSFER_BYTES, 1, &[])
        .expect("100 MB from tunfwd to wireguard-go");
    let (endpoint, handshake, rx, tx) = show(&bed, Host::A);
    assert_eq!(endpoint, format!("{B_UNDERLAY}:{B_PORT}"));
    assert!(handshake > 0, "wg show reports no handshake");
    assert!(
        rx > TRANSFER_BYTES && tx > TRANSFER_BYTES,
        "wg show's transfer: {rx} received, {tx} sent"
    );
    let report = stop(&bed, relay, Host::A);
    assert!(report_sum(&report["queues"], "wg_handshakes") >= 1);
    assert!(report_sum(&report["queues"], "tun_tx_bytes") > TRANSFER_BYTES);
    for reason in ["wg_bad_tag", "wg_source_not_allowed", "wg_bad_handshake"] {
        assert_eq!(report_drops(&report, reason), 0, "{reason}: {report}");
    }
    assert!(
        !Path::new(&format!(
            "/var/run/wireguard/{}.sock",
            interface(&bed, Host::A)
        ))
        .exists(),
        "the API socket is removed at exit"
    );
}

#[test]
fn tunfwd_initiates_to_wireguard_go() {
    interop_with_wireguard_go(Host::A);
}

#[test]
fn wireguard_go_initiates_to_tunfwd() {
    interop_with_wireguard_go(Host::B);
}

/// Two tunfwd relays at two queues each: a verified transfer each way, over 4 streams so that
/// both queues carry flows.
#[test]
fn tunfwd_to_tunfwd_at_two_queues() {
    let _serial = serially();
    let bed = testbed();
    let (a, b) = (keys(), keys());
    let a_config = a_side(&bed, &a, &b.public);
    // B knows no endpoint: it learns A's from A's initiation (roaming).
    let b_config = b_side(&bed, &b, &a.public, false);
    let relay_a = start_tunfwd(&bed, Host::A, &a_config, &["--queues", "2"]);
    let relay_b = start_tunfwd(&bed, Host::B, &b_config, &["--queues", "2"]);
    ping(&bed, Host::A, B_TUNNEL4);
    ping(&bed, Host::B, A_TUNNEL6);
    bed.verified_transfer(Host::A, Host::B, B_TUNNEL4, TRANSFER_BYTES / 4, 4, &[])
        .expect("100 MB from A to B over 4 streams");
    bed.verified_transfer(Host::B, Host::A, A_TUNNEL6, TRANSFER_BYTES / 4, 4, &[])
        .expect("100 MB from B to A over 4 streams");
    for (relay, host) in [(relay_a, Host::A), (relay_b, Host::B)] {
        let report = stop(&bed, relay, host);
        assert_eq!(report["queues"].as_array().map(Vec::len), Some(2));
        for reason in ["wg_bad_tag", "wg_source_not_allowed", "wg_bad_handshake"] {
            assert_eq!(
                report_drops(&report, reason),
                0,
                "{host:?} {reason}: {report}"
            );
        }
    }
}

/// A peer whose private key is not the one A was configured with: its handshakes are refused
/// (counted as `wg_bad_handshake`), and not one of its packets reaches A's TUN.
#[test]
fn a_peer_with_the_wrong_key_gets_nothing_in() {
    let _serial = serially();
    let bed = testbed();
    let (a, b, stranger) = (keys(), keys(), keys());
    let a_config = a_side(&bed, &a, &b.public);
    // B runs with the stranger's key but claims A as its peer, as an impostor of B would.
    let b_config = b_side(&bed, &stranger, &a.public, true);
    let relay = start_tunfwd(&bed, Host::A, &a_config, &[]);
    let _impostor = start_wireguard_go(&bed, Host::B, &b_config);
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &bed.namespace(Host::B),
            "ping",
            "-c",
            "10",
            "-i",
            "0.2",
            "-W",
            "1",
            A_TUNNEL4,
        ])
        .output()
        .expect("running ping");
    assert!(!out.status.success(), "the impostor's pings were answered");
    let report = stop(&bed, relay, Host::A);
    assert!(
        report_drops(&report, "wg_bad_handshake") >= 1,
        "the impostor's initiations are counted: {report}"
    );
    assert_eq!(report_sum(&report["queues"], "tun_tx_packets"), 0);
    assert_eq!(report_sum(&report["queues"], "wg_handshakes"), 0);
}

/// The two configurations of A (tunfwd) and B, each with the other as its peer; A's with `FwMark
/// = fwmark` when given, and B's with A's endpoint.
fn pair_configs(bed: &Testbed, a: &Keys, b: &Keys, fwmark: Option<&str>) -> (PathBuf, PathBuf) {
    let a_config = a_side(bed, a, &b.public);
    if let Some(mark) = fwmark {
        let text = fs::read_to_string(&a_config).unwrap().replacen(
            "[Interface]\n",
            &format!("[Interface]\nFwMark = {mark}\n"),
            1,
        );
        fs::write(&a_config, text).unwrap();
    }
    let b_config = b_side(bed, b, &a.public, true);
    (a_config, b_config)
}

/// `ping -c COUNT -W 2 TO` from `host`, once: whether every echo was answered.
fn ping_once(bed: &Testbed, host: Host, to: &str, count: &str) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &bed.namespace(host),
            "ping",
            "-c",
            count,
            "-i",
            "0.2",
            "-W",
            "2",
            to,
        ])
        .output()
        .expect("running ping")
        .status
        .success()
}

/// The very first packets to a peer without a session are staged while the handshake runs and
/// sent once it completes (the whitepaper's section 6.2), not dropped: the first ping from a
/// fresh tunfwd to wireguard-go is answered, on each family, and the counters say so.
#[test]
fn the_first_ping_to_a_peer_without_a_session_is_answered() {
    let _serial = serially();
    let bed = testbed();
    let (a, b) = (keys(), keys());
    let (a_config, b_config) = pair_configs(&bed, &a, &b, None);
    let _peer = start_wireguard_go(&bed, Host::B, &b_config);
    let relay = start_tunfwd(&bed, Host::A, &a_config, &[]);
    assert!(
        ping_once(&bed, Host::A, B_TUNNEL4, "1"),
        "the first ping, sent without a session, was not answered"
    );
    let report = stop(&bed, relay, Host::A);
    assert_eq!(report_drops(&report, "wg_no_session"), 0, "{report}");
    assert_eq!(report_drops(&report, "wg_staged_overflow"), 0, "{report}");
    assert!(report_sum(&report["queues"], "wg_staged") >= 1, "{report}");
    assert!(
        report_sum(&report["queues"], "wg_staged_sent") >= 1,
        "{report}"
    );
}

/// The first ping from a fresh tunfwd to another fresh tunfwd, over IPv6 this time, and a
/// burst of 20 pings sent at once before any session: every one answered.
#[test]
fn a_burst_before_the_session_arrives_whole_between_two_tunfwds() {
    let _serial = serially();
    let bed = testbed();
    let (a, b) = (keys(), keys());
    let (a_config, b_config) = pair_configs(&bed, &a, &b, None);
    let relay_b = start_tunfwd(&bed, Host::B, &b_config, &[]);
    let relay_a = start_tunfwd(&bed, Host::A, &a_config, &[]);
    let ns = bed.namespace(Host::A);
    // 20 echoes 10 ms apart: the first ones leave before the handshake completes.
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns, "ping", "-c", "20", "-i", "0.01", "-W", "2", B_TUNNEL6,
        ])
        .output()
        .expect("running ping");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(" 0% packet loss"),
        "{stdout}"
    );
    let report = stop(&bed, relay_a, Host::A);
    assert_eq!(report_drops(&report, "wg_no_session"), 0, "{report}");
    let staged = report_sum(&report["queues"], "wg_staged");
    assert!(staged >= 1, "{report}");
    assert_eq!(
        report_sum(&report["queues"], "wg_staged_sent"),
        staged,
        "{report}"
    );
    drop(relay_b);
}

/// `fwmark` is set on every socket that sends (the control thread's handshakes and the workers'
/// data), from the configuration at startup, at run time through `wg set`, and on the sockets of
/// a new listen port: A reaches B's underlay only through a routing table that `ip rule`
/// selects by that mark. A new listen port something already holds is refused.
#[test]
fn fwmark_marks_every_datagram_tunfwd_sends() {
    let _serial = serially();
    let bed = testbed();
    let (a, b) = (keys(), keys());
    let (a_config, b_config) = pair_configs(&bed, &a, &b, Some("0x1234"));
    let ns = bed.namespace(Host::A);
    // A's route to the underlay leaves the main table for table 100, which only packets marked
    // 0x1234 look up.
    for args in [
        vec!["-n", &ns, "route", "del", "198.18.0.0/30", "dev", "ab"],
        vec![
            "-n",
            &ns,
            "route",
            "add",
            "198.18.0.0/30",
            "dev",
            "ab",
            "table",
            "100",
        ],
        vec!["-n", &ns, "rule", "add", "fwmark", "0x1234", "table", "100"],
    ] {
        testbed::ip(&args).expect("routing A's underlay by mark");
    }
    let _peer = start_wireguard_go(&bed, Host::B, &b_config);
    let relay = start_tunfwd(&bed, Host::A, &a_config, &[]);
    let name = interface(&bed, Host::A);
    assert!(
        ping_once(&bed, Host::A, B_TUNNEL4, "2"),
        "with the configuration's fwmark, A's handshake and pings reach B"
    );
    wg(Some(&ns), &["set", &name, "fwmark", "0"], None);
    assert!(
        !ping_once(&bed, Host::A, B_TUNNEL4, "2"),
        "without a mark, A's datagrams find no route (so the mark is what carried them)"
    );
    wg(Some(&ns), &["set", &name, "fwmark", "0x1234"], None);
    assert!(
        ping_once(&bed, Host::A, B_TUNNEL4, "2"),
        "the mark set at run time"
    );
    // A port something already holds is refused, and the relay stays where it is: here a
    // reuseport socket of root's, which the new sockets (SO_REUSEPORT too) joined without a
    // word before, leaving it a share of the datagrams.
    let squatter = bed
        .in_namespace(Host::A, || {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
            socket.set_reuse_port(true)?;
            socket.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], 51840)).into())?;
            Ok(socket)
        })
        .expect("a reuseport socket on port 51840");
    wg(Some(&ns), &["set", &name, "listen-port", "51840"], None);
    wait_until(Duration::from_secs(10), "the refused move to 51840", || {
        relay.stderr().contains("cannot move to port 51840")
    });
    assert!(!relay.stderr().contains("moved to port 51840"));
    assert!(
        ping_once(&bed, Host::A, B_TUNNEL4, "2"),
        "still relaying on the port it had"
    );
    drop(squatter);
    wg(Some(&ns), &["set", &name, "listen-port", "51830"], None);
    wait_until(Duration::from_secs(10), "the move to port 51830", || {
        relay.stderr().contains("moved to port 51830")
    });
    assert!(
        ping_once(&bed, Host::A, B_TUNNEL4, "2"),
        "the sockets of the new port are marked too"
    );
    assert_eq!(wg(Some(&ns), &["show", &name, "fwmark"], None), "0x1234");
}

/// `scripts/tunfwd-wg-quick` writes its log and PID file as root: it refuses a
/// `TUNFWD_WG_QUICK_DIR` others may write, and a log that is a symbolic link, writing nothing.
#[test]
fn wg_quick_wrapper_refuses_a_directory_others_may_write_and_links() {
    let root = std::env::temp_dir().join(format!("tunfwd-wg-quick-dir-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap();
    let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tunfwd-wg-quick");
    let run = |dir: &Path| {
        let output = Command::new(&wrapper)
            .arg("wgdir0")
            // Never reached when refused; otherwise exits at once, which the wrapper reports.
            .env("TUNFWD", "/bin/true")
            .env("TUNFWD_WG_QUICK_DIR", dir)
            .output()
            .expect("running scripts/tunfwd-wg-quick");
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let open = root.join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let said = run(&open);
    assert!(said.contains("written by group or others"), "{said}");
    assert_eq!(fs::read_dir(&open).unwrap().count(), 0, "nothing written");

    let private = root.join("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let target = root.join("target");
    fs::write(&target, "untouched").unwrap();
    std::os::unix::fs::symlink(&target, private.join("wgdir0.log")).unwrap();
    let said = run(&private);
    assert!(said.contains("symbolic link"), "{said}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "untouched");
    assert!(!private.join("wgdir0.pid").exists());
    fs::remove_dir_all(&root).unwrap();
}

/// wg-quick, with tunfwd as its userspace implementation (`scripts/tunfwd-wg-quick`): `up`
/// brings the interface up with its addresses and routes, pings cross to a tunfwd peer, and
/// `down` (which deletes the interface) makes tunfwd exit cleanly, leaving no process and no
/// API socket behind.
#[test]
fn wg_quick_runs_tunfwd_up_and_down() {
    let _serial = serially();
    assert!(
        !Path::new("/sys/module/wireguard").exists(),
        "the WireGuard kernel module is loaded: wg-quick would use it rather than tunfwd"
    );
    let bed = testbed();
    let (a, b) = (keys(), keys());
    let (_, b_config) = pair_configs(&bed, &a, &b, None);
    let relay_b = start_tunfwd(&bed, Host::B, &b_config, &[]);
    let name = interface(&bed, Host::A);
    // What wg-quick reads: specific prefixes only, so it adds no default route, and no DNS.
    let quick = bed.path(&format!("{name}.conf"));
    fs::write(
        &quick,
        format!(
            "[Interface]\nAddress = {A_TUNNEL4}/24, {A_TUNNEL6}/64\nPrivateKey = {}\n\
             ListenPort = {A_PORT}\n\n[Peer]\nPublicKey = {}\n\
             AllowedIPs = {B_TUNNEL4}/32, {B_TUNNEL6}/128\nEndpoint = {B_UNDERLAY}:{B_PORT}\n",
            a.private, b.public
        ),
    )
    .unwrap();
    fs::set_permissions(&quick, fs::Permissions::from_mode(0o600)).unwrap();
    let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tunfwd-wg-quick");
    let wg_quick = |action: &str| {
        Command::new("ip")
            .args(["netns", "exec", &bed.namespace(Host::A), "wg-quick", action])
            .arg(&quick)
            .env("WG_QUICK_USERSPACE_IMPLEMENTATION", &wrapper)
            .env("TUNFWD", env!("CARGO_BIN_EXE_tunfwd"))
            .env("TUNFWD_WG_QUICK_DIR", bed.path("wg-quick"))
            .output()
            .expect("running wg-quick (Debian's wireguard-tools)")
    };
    let pidfile = bed.path(&format!("wg-quick/{name}.pid"));
    let log = bed.path(&format!("wg-quick/{name}.log"));
    // However the test ends, the tunfwd the wrapper started (and only it) is stopped.
    let _cleanup = KillOnDrop(pidfile.clone());
    let up = wg_quick("up");
    assert!(
        up.status.success(),
        "wg-quick up: {}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    let pid: i32 = fs::read_to_string(&pidfile)
        .expect("the wrapper's PID file")
        .trim()
        .parse()
        .unwrap();
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "tunfwd", "the wrapper's PID is tunfwd's");
    ping(&bed, Host::A, B_TUNNEL4);
    ping(&bed, Host::A, B_TUNNEL6);
    ping(&bed, Host::B, A_TUNNEL4);
    let down = wg_quick("down");
    assert!(
        down.status.success(),
        "wg-quick down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    wait_until(Duration::from_secs(10), "tunfwd to exit", || !running(pid));
    let output = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        output.contains("the device was deleted") && !output.contains("failed"),
        "tunfwd's output: {output}"
    );
    assert!(
        !Path::new(&format!("/var/run/wireguard/{name}.sock")).exists(),
        "the API socket is removed"
    );
    drop(relay_b);
}

/// Whether process `pid` is a tunfwd that runs (not a zombie, which its reaper may not have
/// reaped yet).
fn running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (name, rest) = stat.rsplit_once(") ")?;
            let state = rest.chars().next()?;
            Some(name.ends_with("(tunfwd") && state != 'Z')
        })
        .unwrap_or(false)
}

/// Stops the process whose PID the file names, if it still runs (SIGTERM, then SIGKILL).
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let Some(pid) = fs::read_to_string(&self.0)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
        else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(pid);
        for signal in [
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::Signal::SIGKILL,
        ] {
            if !running(pid.as_raw()) {
                return;
            }
            let _ = nix::sys::signal::kill(pid, signal);
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}
