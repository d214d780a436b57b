//! WireGuard mode on the namespace testbed, with the real binary: tunfwd against upstream
//! wireguard-go, tunfwd against itself, and a peer with the wrong key.
//!
//! The relays are configured as WireGuard users do: a `wg setconf` file for tunfwd's
//! `--config` or for `wg setconf` on wireguard-go's API socket, and `wg show` read back from
//! tunfwd's. Addresses stay in 198.18.0.0/15 and 2001:2::/48. Every loop is bounded; every
//! process is the test's own and is stopped when it is dropped (also on a failed assertion), and
//! the testbed deletes its namespaces.
//!
//! They need root, `wg` (Debian's wireguard-tools) and upstream wireguard-go at
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

/// Upstream wireguard-go, beside the repository.
fn wireguard_go() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/wireguard-go");
    assert!(
        path.exists(),
        "upstream wireguard-go is missing at {} (see ../shared/peers/README.md)",
        path.display()
    );
    path
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

/// Pings `to` from `host` until one answer (the first packet starts the handshake and may be
/// dropped as `wg_no_session`), within 10 s; then 3 more must all be answered.
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
    let a_config = config(
        &bed,
        "a.conf",
        &a,
        A_PORT,
        &PeerSpec {
            public: &b.public,
            tunnel4: B_TUNNEL4,
            tunnel6: B_TUNNEL6,
            endpoint: Some(format!("{B_UNDERLAY}:{B_PORT}")),
        },
    );
    let b_config = config(
        &bed,
        "b.conf",
        &b,
        B_PORT,
        &PeerSpec {
            public: &a.public,
            tunnel4: A_TUNNEL4,
            tunnel6: A_TUNNEL6,
            endpoint: Some(format!("{A_UNDERLAY}:{A_PORT}")),
        },
    );
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
    let a_config = config(
        &bed,
        "a.conf",
        &a,
        A_PORT,
        &PeerSpec {
            public: &b.public,
            tunnel4: B_TUNNEL4,
            tunnel6: B_TUNNEL6,
            endpoint: Some(format!("{B_UNDERLAY}:{B_PORT}")),
        },
    );
    // B knows no endpoint: it learns A's from A's initiation (roaming).
    let b_config = config(
        &bed,
        "b.conf",
        &b,
        B_PORT,
        &PeerSpec {
            public: &a.public,
            tunnel4: A_TUNNEL4,
            tunnel6: A_TUNNEL6,
            endpoint: None,
        },
    );
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
    let a_config = config(
        &bed,
        "a.conf",
        &a,
        A_PORT,
        &PeerSpec {
            public: &b.public,
            tunnel4: B_TUNNEL4,
            tunnel6: B_TUNNEL6,
            endpoint: Some(format!("{B_UNDERLAY}:{B_PORT}")),
        },
    );
    // B runs with the stranger's key but claims A as its peer, as an impostor of B would.
    let b_config = config(
        &bed,
        "b.conf",
        &stranger,
        B_PORT,
        &PeerSpec {
            public: &a.public,
            tunnel4: A_TUNNEL4,
            tunnel6: A_TUNNEL6,
            endpoint: Some(format!("{A_UNDERLAY}:{A_PORT}")),
        },
    );
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
