//! The WireGuard harness (`wgpeer`) and the reference peers, before tunfwd takes part: two
//! implementations joined in two namespaces of the testbed, configured with `wg` only, carry
//! ping over IPv4 and IPv6 and a verified TCP transfer each way, and `wg show` reports the
//! handshake, the bytes and the endpoint on both sides. If these fail, a failure of tunfwd's
//! interop tests says nothing about tunfwd.
//!
//! They need root and the peers (`scripts/wireguard-peers`); without them they fail, saying
//! which is missing. They run one at a time.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use tunfwd_testkit::testbed::{self, Host, Testbed, parse_json};
use tunfwd_testkit::wgpeer::{self, Device, Implementation, Interface, Peers};

static SERIAL: Mutex<()> = Mutex::new(());

/// The overlay MTU on both peers (wireguard-go's default).
const MTU: u32 = 1420;
/// Bytes each way in the verified transfers: enough for many full windows, short enough for
/// boringtun's 0.4 Gbit/s on a shared machine.
const TRANSFER_BYTES: u64 = 50 << 20;

fn testbed() -> Testbed {
    assert!(
        testbed::is_root(),
        "the WireGuard peer tests need root (namespaces, TUN): run them as root, e.g. `sudo -E cargo test`"
    );
    let tunload = tunfwd_testkit::binaries::tool("tunload");
    // No tunfwd runs here; the testbed only needs a path for it.
    let unused_tunfwd = tunload.with_file_name("tunfwd");
    let bed = Testbed::new(&unused_tunfwd, &tunload).expect("building the namespace testbed");
    bed.silence_router_solicitations()
        .expect("turning off router solicitations");
    bed
}

/// `implementation` on `host` with the testbed's overlay addresses for that host, listening on
/// `port`.
fn device(
    bed: &Testbed,
    peers: &Peers,
    implementation: Implementation,
    host: Host,
    port: u16,
) -> Device {
    let (v4, v6, tag) = match host {
        Host::A => (testbed::A_TUNNEL4, testbed::A_TUNNEL6, "wga"),
        _ => (testbed::B_TUNNEL4, testbed::B_TUNNEL6, "wgb"),
    };
    let config = Interface {
        keys: wgpeer::generate_keys(&peers.wg).expect("wg genkey"),
        listen_port: port,
        addresses: vec![format!("{v4}/24"), format!("{v6}/64")],
        mtu: MTU,
    };
    let interface = wgpeer::interface_name(tag);
    Device::start(bed, peers, implementation, host, &interface, &config)
        .unwrap_or_else(|e| panic!("starting {}: {e}", implementation.key()))
}

fn ping(bed: &Testbed, from: Host, to: &str) {
    let out = bed
        .tunload(
            from,
            &format!("ping-{to}"),
            &["ping", "--to", to, "--count", "20", "--interval-ms", "20"],
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("ping {to}: {e}"));
    let result = parse_json(&out).unwrap();
    assert_eq!(result["received"], result["sent"], "ping {to}: {result}");
}

/// `initiator` on A (given B's endpoint) and `responder` on B (given none: it learns A's from the
/// handshake); pings and transfers both ways; `wg show` on both; both stop cleanly.
fn joined(initiator: Implementation, responder: Implementation) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let peers = Peers::from_env();
    let bed = testbed();
    let a = device(&bed, &peers, initiator, Host::A, 0);
    let b = device(&bed, &peers, responder, Host::B, 51820);
    let b_endpoint: SocketAddr = format!("{}:51820", testbed::B_UNDERLAY).parse().unwrap();
    wgpeer::join(
        &a,
        &[
            &format!("{}/32", testbed::A_TUNNEL4),
            &format!("{}/128", testbed::A_TUNNEL6),
        ],
        None,
        &b,
        &[
            &format!("{}/32", testbed::B_TUNNEL4),
            &format!("{}/128", testbed::B_TUNNEL6),
        ],
        Some(b_endpoint),
    )
    .expect("joining the peers");
    let a_port = a.listen_port().unwrap();
    assert_ne!(a_port, 0, "A picked no port");

    ping(&bed, Host::A, testbed::B_TUNNEL4);
    ping(&bed, Host::A, testbed::B_TUNNEL6);
    ping(&bed, Host::B, testbed::A_TUNNEL4);
    bed.verified_transfer(Host::A, Host::B, testbed::B_TUNNEL4, TRANSFER_BYTES, 1, &[])
        .unwrap_or_else(|e| panic!("A to B: {e}"));
    bed.verified_transfer(Host::B, Host::A, testbed::A_TUNNEL6, TRANSFER_BYTES, 1, &[])
        .unwrap_or_else(|e| panic!("B to A: {e}"));

    let a_endpoint: SocketAddr = format!("{}:{a_port}", testbed::A_UNDERLAY).parse().unwrap();
    for (device, other, endpoint) in [(&a, &b, b_endpoint), (&b, &a, a_endpoint)] {
        let dump = device.dump().unwrap();
        // boringtun's `get=1` gives its public key as `own_public_key`, which wg does not read,
        // and never its private key, so wg prints `(none)` for both.
        if device.implementation != Implementation::Boringtun {
            assert_eq!(dump.public_key, device.keys.public);
        }
        let peer = dump
            .peer(&other.keys.public)
            .unwrap_or_else(|| panic!("{} lost its peer: {dump:?}", device.interface));
        assert!(
            device
                .implementation
                .handshake_within(peer, Duration::from_secs(120)),
            "{}: no recent handshake: {peer:?}",
            device.implementation.key()
        );
        assert_eq!(
            peer.endpoint,
            Some(endpoint),
            "{}: {peer:?}",
            device.implementation.key()
        );
        // Each way carried a whole transfer: the counters hold at least the TCP payload.
        assert!(
            peer.rx_bytes > TRANSFER_BYTES && peer.tx_bytes > TRANSFER_BYTES,
            "{}: transfer counters {peer:?}",
            device.implementation.key()
        );
    }
    for device in [a, b] {
        let name = device.implementation.key();
        let interface = device.interface.clone();
        let status = device
            .stop()
            .unwrap_or_else(|e| panic!("stopping {name}: {e}"));
        // wireguard-go exits 0 on SIGTERM; boringtun is killed by it (it installs no handler).
        assert!(
            status.success() || status.to_string().contains("SIGTERM"),
            "{name} exited {status}"
        );
        assert!(!wgpeer::socket_path(&interface).exists());
    }
    assert!(Path::new(wgpeer::SOCKET_DIR).is_dir());
}

#[test]
fn upstream_wireguard_go_initiates_to_boringtun() {
    joined(
        Implementation::WireguardGoUpstream,
        Implementation::Boringtun,
    );
}

#[test]
fn boringtun_initiates_to_debian_wireguard_go() {
    joined(Implementation::Boringtun, Implementation::WireguardGoDebian);
}

#[test]
fn upstream_wireguard_go_initiates_to_debian_wireguard_go() {
    joined(
        Implementation::WireguardGoUpstream,
        Implementation::WireguardGoDebian,
    );
}
