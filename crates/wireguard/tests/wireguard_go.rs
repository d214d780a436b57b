//! Interop with upstream wireguard-go: proof that this crate speaks WireGuard, not merely a
//! protocol consistent with itself.
//!
//! Needs root, `ip`, `/dev/net/tun`, and the wireguard-go binary (by default
//! `../shared/peers/wireguard-go` beside the repository, or `$WIREGUARD_GO`). Run with
//! `cargo test -p tunfwd-wireguard --release --test wireguard_go -- --ignored`.
//!
//! Layout: two network namespaces made for the test, joined by a veth pair on
//! 198.18.0.0/24. wireguard-go runs in one (`wgkat<pid>go`), listens on 198.18.0.2:51820 and has
//! a TUN interface with 198.19.0.1/24; it is configured through its UAPI socket with a plain
//! `set=1`. This test opens a UDP socket in the other namespace (`wgkat<pid>me`, 198.18.0.1),
//! sends an initiation made by [`Device`], takes wireguard-go's response, derives the session,
//! and sends an ICMP echo request from 198.19.0.2 to 198.19.0.1 as transport data. The echo
//! reply from wireguard-go's kernel must come back and open. Addresses are only from
//! 198.18.0.0/15; no route leaves the namespaces. Everything made is removed on every path (a
//! guard's `Drop`), and only the process this test started is killed.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand_core::OsRng;
use tunfwd_wireguard::device::{Action, Device, Outcome};
use tunfwd_wireguard::{PrivateKey, classify};

const OUR_OUTER: &str = "198.18.0.1";
const GO_OUTER: &str = "198.18.0.2";
const GO_PORT: u16 = 51820;
const GO_INNER: [u8; 4] = [198, 19, 0, 1];
const OUR_INNER: [u8; 4] = [198, 19, 0, 2];

fn run(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Everything the test creates, removed in `Drop` whatever happened.
struct Testbed {
    go_namespace: String,
    our_namespace: String,
    interface: String,
    wireguard_go: Option<Child>,
    log: PathBuf,
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(mut child) = self.wireguard_go.take() {
            // The PID this test started (`ip netns exec` execs wireguard-go in place).
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.interface));
        let _ = run(&["netns", "del", &self.go_namespace]);
        let _ = run(&["netns", "del", &self.our_namespace]);
        // Keep wireguard-go's log only when the test failed.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

fn wireguard_go_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WIREGUARD_GO") {
        return PathBuf::from(path);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for candidate in [
        manifest.join("../../../shared/peers/wireguard-go"),
        PathBuf::from("/work/shared/peers/wireguard-go"),
    ] {
        if candidate.exists() {
            return candidate;
        }
    }
    panic!("wireguard-go not found; set WIREGUARD_GO");
}

/// A UDP socket bound in `namespace`: a short-lived thread enters the namespace, binds, and
/// hands the socket back (a socket stays in the namespace it was made in).
fn socket_in(namespace: &str, bind: SocketAddr) -> UdpSocket {
    let path = format!("/var/run/netns/{namespace}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("namespace file");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        UdpSocket::bind(bind).expect("bind in the namespace")
    })
    .join()
    .expect("socket thread")
}

fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 ICMP echo request from `source` to wireguard-go's interface, 32 bytes of payload.
fn echo_request(source: [u8; 4], identifier: u16, sequence: u16) -> Vec<u8> {
    let mut icmp = vec![8u8, 0, 0, 0];
    icmp.extend_from_slice(&identifier.to_be_bytes());
    icmp.extend_from_slice(&sequence.to_be_bytes());
    icmp.extend((0..32u8).map(|i| i ^ 0x5a));
    let checksum = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut packet = vec![0x45, 0];
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, 1, 0, 0]);
    packet.extend_from_slice(&source);
    packet.extend_from_slice(&GO_INNER);
    let checksum = internet_checksum(&packet);
    packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    packet.extend_from_slice(&icmp);
    packet
}

fn uapi(interface: &str, request: &str) -> String {
    let path = format!("/var/run/wireguard/{interface}.sock");
    let mut stream = UnixStream::connect(&path).expect("UAPI socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    // The answer ends with an empty line.
    while !answer.ends_with(b"\n\n") {
        let n = stream.read(&mut buffer).expect("UAPI answer");
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8(answer).expect("UAPI text")
}

#[test]
#[ignore = "needs root, network namespaces and the wireguard-go binary"]
fn a_handshake_and_an_echo_through_wireguard_go() {
    let tag = std::process::id() % 100_000;
    let mut testbed = Testbed {
        go_namespace: format!("wgkat{tag}go"),
        our_namespace: format!("wgkat{tag}me"),
        interface: format!("wgkat{tag}"),
        wireguard_go: None,
        log: std::env::temp_dir().join(format!("wgkat{tag}-wireguard-go.log")),
    };
    let (go, me, interface) = (
        testbed.go_namespace.clone(),
        testbed.our_namespace.clone(),
        testbed.interface.clone(),
    );
    for step in [
        vec!["netns", "add", &go],
        vec!["netns", "add", &me],
        vec![
            "-n", &me, "link", "add", "veth-me", "type", "veth", "peer", "name", "veth-go",
        ],
        vec!["-n", &me, "link", "set", "veth-go", "netns", &go],
        vec!["-n", &me, "addr", "add", "198.18.0.1/24", "dev", "veth-me"],
        vec!["-n", &go, "addr", "add", "198.18.0.2/24", "dev", "veth-go"],
        vec!["-n", &me, "link", "set", "veth-me", "up"],
        vec!["-n", &go, "link", "set", "veth-go", "up"],
        vec!["-n", &me, "link", "set", "lo", "up"],
        vec!["-n", &go, "link", "set", "lo", "up"],
    ] {
        run(&step).unwrap();
    }

    let log = File::create(&testbed.log).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &go])
        .arg(wireguard_go_binary())
        .args(["-f", &interface])
        .env("LOG_LEVEL", "verbose")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start wireguard-go");
    testbed.wireguard_go = Some(child);
    let socket_path = PathBuf::from(format!("/var/run/wireguard/{interface}.sock"));
    let started = Instant::now();
    while !socket_path.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "wireguard-go did not open its UAPI socket; log: {}",
            std::fs::read_to_string(&testbed.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let go_key = PrivateKey::generate(&mut OsRng);
    let our_key = PrivateKey::generate(&mut OsRng);
    let psk = tunfwd_wireguard::PresharedKey::generate(&mut OsRng);
    let answer = uapi(
        &interface,
        &format!(
            "set=1\nprivate_key={}\nlisten_port={GO_PORT}\nreplace_peers=true\n\
             public_key={}\npreshared_key={}\nreplace_allowed_ips=true\n\
             allowed_ip=198.19.0.2/32\n\n",
            go_key.to_hex().as_str(),
            our_key.public_key().to_hex(),
            psk.to_hex().as_str(),
        ),
    );
    assert_eq!(
        answer, "errno=0\n\n",
        "wireguard-go refused the configuration"
    );
    run(&["-n", &go, "addr", "add", "198.19.0.1/24", "dev", &interface]).unwrap();
    run(&["-n", &go, "link", "set", &interface, "up"]).unwrap();

    let socket = socket_in(&me, format!("{OUR_OUTER}:0").parse().unwrap());
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let go_endpoint: SocketAddr = format!("{GO_OUTER}:{GO_PORT}").parse().unwrap();

    // The clock: nanoseconds since the test started, and the wall time then.
    let origin = Instant::now();
    let unix_origin_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let now = || origin.elapsed().as_nanos() as u64;
    let mut device = Device::new(Some(our_key), unix_origin_ns, Box::new(OsRng));
    let peer = device.add_peer(go_key.public_key()).unwrap();
    device.set_preshared_key(peer, psk);
    device.set_endpoint(peer, go_endpoint);
    device.add_allowed_ip(peer, "198.19.0.0/24".parse().unwrap());

    // Handshake: send the initiation (retransmitting at the device's deadlines) until the
    // response opens a session; at most 10 s.
    device
        .peer(peer)
        .unwrap()
        .activity()
        .request_handshake(now());
    let mut buffer = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut session = false;
    while !session && Instant::now() < deadline {
        for action in device.poll(now()) {
            if let Action::SendInitiation { transmit, .. } = action {
                socket.send_to(&transmit.datagram, transmit.to).unwrap();
            }
        }
        let Ok((len, from)) = socket.recv_from(&mut buffer) else {
            continue;
        };
        match device.on_handshake_message(&buffer[..len], from, now()) {
            Ok(Outcome::SessionStarted { keepalive, .. }) => {
                socket.send_to(&keepalive.datagram, keepalive.to).unwrap();
                session = true;
            }
            other => eprintln!("while waiting for the response: {other:?}"),
        }
    }
    assert!(
        session,
        "no session with wireguard-go; log: {}",
        std::fs::read_to_string(&testbed.log).unwrap_or_default()
    );

    // Transport: an echo request to wireguard-go's interface, and its reply back.
    assert!(
        echo(&device, &socket, go_endpoint, OUR_INNER),
        "no echo reply through wireguard-go; log: {}",
        std::fs::read_to_string(&testbed.log).unwrap_or_default()
    );

    // wireguard-go's own view agrees that a handshake happened and bytes flowed.
    let state = uapi(&interface, "get=1\n\n");
    assert!(state.contains(&format!(
        "public_key={}\n",
        device.public_key().unwrap().to_hex()
    )));
    assert!(!state.contains("last_handshake_time_sec=0\n"), "{state}");
    assert!(state.ends_with("errno=0\n\n"));

    // The other direction: wireguard-go initiates to a second identity of ours, which responds.
    // Turning PersistentKeepalive on makes wireguard-go send a keepalive at once, and having no
    // session for it, a handshake initiation.
    let responder_key = PrivateKey::generate(&mut OsRng);
    let responder_socket = socket_in(&me, format!("{OUR_OUTER}:0").parse().unwrap());
    responder_socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let responder_port = responder_socket.local_addr().unwrap().port();
    let mut responder = Device::new(Some(responder_key.clone()), unix_origin_ns, Box::new(OsRng));
    let go_peer = responder.add_peer(go_key.public_key()).unwrap();
    responder.add_allowed_ip(go_peer, "198.19.0.0/24".parse().unwrap());
    let answer = uapi(
        &interface,
        &format!(
            "set=1\npublic_key={}\nendpoint={OUR_OUTER}:{responder_port}\n\
             persistent_keepalive_interval=1\nreplace_allowed_ips=true\n\
             allowed_ip=198.19.0.3/32\n\n",
            responder_key.public_key().to_hex(),
        ),
    );
    assert_eq!(answer, "errno=0\n\n");
    let responder_plane = responder.data_plane();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut confirmed = false;
    while !confirmed && Instant::now() < deadline {
        let Ok((len, from)) = responder_socket.recv_from(&mut buffer) else {
            continue;
        };
        let datagram = &mut buffer[..len];
        match classify(datagram) {
            Some(tunfwd_wireguard::MessageKind::TransportData) => {
                let index = u32::from_le_bytes(datagram[4..8].try_into().unwrap());
                let receivers = responder_plane.receivers();
                if let Some(receiver) = receivers.get(index) {
                    receiver
                        .open(datagram, now())
                        .expect("wireguard-go's datagram opens");
                    confirmed = receiver.peer().send_keypair().is_some();
                }
            }
            Some(_) => match responder.on_handshake_message(datagram, from, now()) {
                Ok(Outcome::Responded { response, .. }) => {
                    assert_eq!(response.to, go_endpoint);
                    responder_socket
                        .send_to(&response.datagram, response.to)
                        .unwrap();
                }
                other => panic!("as responder: {other:?}"),
            },
            None => panic!("not a WireGuard message"),
        }
    }
    assert!(
        confirmed,
        "wireguard-go never confirmed our response; log: {}",
        std::fs::read_to_string(&testbed.log).unwrap_or_default()
    );
    assert!(
        echo(&responder, &responder_socket, go_endpoint, [198, 19, 0, 3]),
        "no echo reply to the responder identity"
    );
}

/// Send echo requests from `source` through `device`'s session until a reply opens (at most 20
/// requests, 10 s); false if none did.
fn echo(device: &Device, socket: &UdpSocket, go_endpoint: SocketAddr, source: [u8; 4]) -> bool {
    let plane = device.data_plane();
    let peer = plane
        .routes()
        .lookup(GO_INNER.into())
        .expect("a route")
        .clone();
    let keypair = peer.send_keypair().expect("a send keypair");
    let mut buffer = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sequence = 0u16;
    while Instant::now() < deadline && sequence < 20 {
        sequence += 1;
        let request = echo_request(source, 0x7777, sequence);
        let counter = keypair
            .reserve_counters(1, keypair.created_ns())
            .unwrap()
            .start;
        let mut datagram = [0u8; 1500];
        let len = keypair.seal(counter, &request, &mut datagram).unwrap();
        socket.send_to(&datagram[..len], go_endpoint).unwrap();
        for _ in 0..4 {
            let Ok((len, from)) = socket.recv_from(&mut buffer) else {
                break;
            };
            let datagram = &mut buffer[..len];
            if classify(datagram) != Some(tunfwd_wireguard::MessageKind::TransportData) {
                continue;
            }
            let index = u32::from_le_bytes(datagram[4..8].try_into().unwrap());
            let receivers = plane.receivers();
            let receiver = receivers.get(index).expect("a known receiver index");
            // Within REJECT_AFTER_TIME of the handshake: the test takes seconds.
            let range = receiver
                .open(datagram, receiver.keypair().created_ns())
                .expect("wireguard-go's datagram opens");
            assert_eq!(from, go_endpoint);
            let packet = &datagram[range];
            if packet.is_empty() {
                continue; // a keepalive
            }
            assert_eq!(packet[0] >> 4, 4, "IPv4");
            let header_len = usize::from(packet[0] & 0x0f) * 4;
            let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            assert_eq!(packet[9], 1, "ICMP");
            assert_eq!(&packet[12..16], &GO_INNER);
            assert_eq!(&packet[16..20], &source);
            assert!(plane.routes().allows(peer.id(), GO_INNER.into()));
            let icmp = &packet[header_len..total_len];
            assert_eq!(icmp[0], 0, "echo reply");
            assert_eq!(u16::from_be_bytes([icmp[4], icmp[5]]), 0x7777);
            assert_eq!(&icmp[8..], &request[28..]);
            return true;
        }
    }
    false
}
