//! Outer flow entropy through the whole relay core, sans-IO: which socket each send names before
//! and after the peer acknowledges the relay's ports, and what the receiving relay accepts from
//! which source port. No socket: requests are read off the relay and answered by hand.

use super::entropy::SourcePorts;
use super::lifetime::{FakeBuffers, config};
use super::*;
use crate::offload::test_packets::{Spec, build};
use crate::stats::DropReason;
use crate::wire::control::{self, Advertisement, Control};
use crate::wire::vnet;
use std::collections::{HashMap, HashSet};

pub(super) const PEER: &str = "198.18.0.2:55555";
pub(super) const OWN: [u16; 4] = [40000, 40001, 40002, 40003];
/// The relay's cookie, which the peer's proven advertisements echo, and the peer's.
pub(super) const OWN_COOKIE: u64 = 0x0c00_c1e0;
pub(super) const PEER_COOKIE: u64 = 0x0eeb_c00c;

pub(super) fn limits() -> plpmtud::Limits {
    plpmtud::Limits {
        largest: 1448,
        floor: 1280,
        smallest: 552,
        hello: 28 + control::HEADER_LEN,
    }
}

/// A relay with four extra sockets that advertises them, as queue 0 of a relay does.
pub(super) fn entropy_relay(shared: &Arc<SourcePorts>) -> Relay {
    Relay::new(RelayConfig {
        entropy: EntropyConfig {
            source_ports: shared.clone(),
            sockets: OWN.len() as u8,
            workers: 1,
            advertise: true,
            limits: Some(limits()),
        },
        ..config()
    })
}

/// Answers every request: sends and writes succeed, system requests find nothing. Returns the
/// sends' sockets in order, and the control messages sent (their bytes and socket).
pub(super) fn answer(
    r: &mut Relay,
    b: &FakeBuffers,
    now: u64,
) -> (Vec<Socket>, Vec<(Vec<u8>, Socket)>) {
    let mut sends = Vec::new();
    let mut controls = Vec::new();
    for _ in 0..100 {
        r.end_batch(now, b);
        let mut any = false;
        while let Some(request) = r.poll_request() {
            any = true;
            match request {
                Request::Send { token, socket, .. } => {
                    sends.push(socket);
                    r.complete(token, 100, now, b);
                }
                Request::SendControl {
                    token,
                    k,
                    len,
                    socket,
                } => {
                    let piece = r.control_piece(k, len);
                    let bytes = r.own_bytes(piece.base).unwrap();
                    let at = piece.offset as usize;
                    controls.push((bytes[at..at + piece.len as usize].to_vec(), socket));
                    r.complete(token, len as i32, now, b);
                }
                Request::Write { token } => r.complete(token, 100, now, b),
                Request::DrainErrors { socket } => {
                    r.on_errors_drained(socket, Default::default(), now, b)
                }
                Request::ReadSocketDrops => r.on_socket_drops(Some(0)),
                Request::ReadEgressMtu => r.on_egress_mtu(None, now),
            }
        }
        if !any {
            break;
        }
    }
    (sends, controls)
}

/// A plain UDP packet of the flow with source port `sport`, read from the TUN.
pub(super) fn tun_read(r: &mut Relay, b: &mut FakeBuffers, sport: u16, now: u64) {
    let packet = build(&Spec {
        udp: true,
        payload_len: 100,
        sport,
        ..Spec::default()
    });
    let bid = r.pop_free_tun().expect("a free TUN buffer");
    let buffer = &mut b.tun[usize::from(bid)];
    buffer[..vnet::LEN].fill(0);
    buffer[vnet::LEN..vnet::LEN + packet.len()].copy_from_slice(&packet);
    r.on_tun_read(bid, buffer, vnet::LEN + packet.len(), now);
}

/// A receive of `payload` from `from`.
pub(super) fn udp_receive(
    r: &mut Relay,
    b: &FakeBuffers,
    from: SocketAddr,
    payload: &[u8],
    now: u64,
) {
    let bid = r.pop_free_udp().expect("a free UDP buffer");
    // A sockaddr_in, as the kernel fills a receive's name (ip(7)).
    let SocketAddr::V4(v4) = from else {
        panic!("IPv4 only here");
    };
    let mut name = [0u8; 16];
    name[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    name[2..4].copy_from_slice(&v4.port().to_be_bytes());
    name[4..8].copy_from_slice(&v4.ip().octets());
    let mut udp = b.udp.borrow_mut();
    let buffer = &mut udp[usize::from(bid)];
    buffer[..name.len()].copy_from_slice(&name);
    buffer[128..128 + payload.len()].copy_from_slice(payload);
    let received = Received {
        name: 0..name.len(),
        control: 0..0,
        payload: 128..128 + payload.len(),
        payload_truncated: false,
        control_truncated: false,
    };
    r.on_udp_recv(bid, buffer, received, now);
}

fn from_port(port: u16) -> SocketAddr {
    SocketAddr::new(PEER.parse::<SocketAddr>().unwrap().ip(), port)
}

/// The peer's acknowledgement of `advertisement`, with its cookie.
pub(super) fn ports_ack(advertisement: &Advertisement) -> Vec<u8> {
    let mut ack = vec![0u8; control::PORTS_ACK_LEN];
    advertisement
        .header()
        .ports_ack(PEER_COOKIE, advertisement.echo == PEER_COOKIE)
        .write(&mut ack, 0)
        .unwrap();
    ack
}

/// Acknowledges, from the peer's listen port, every probe among `controls` sent from a socket
/// `delivered` says reaches the peer, and every advertisement (as the peer does); returns the
/// probes answered (socket and size).
fn answer_probes(
    r: &mut Relay,
    b: &FakeBuffers,
    controls: &[(Vec<u8>, Socket)],
    delivered: impl Fn(Socket) -> bool,
    now: u64,
) -> Vec<(Socket, u16)> {
    let mut answered = Vec::new();
    for (bytes, socket) in controls {
        if let Some(advertisement) = Advertisement::parse(bytes) {
            udp_receive(r, b, PEER.parse().unwrap(), &ports_ack(&advertisement), now);
        }
        if let Some(probe) = Control::parse(bytes).filter(|c| c.kind == control::Kind::Probe)
            && delivered(*socket)
        {
            let mut reply = [0u8; control::HEADER_LEN];
            probe.ack().write(&mut reply, 0).unwrap();
            udp_receive(r, b, PEER.parse().unwrap(), &reply, now);
            answered.push((*socket, probe.size));
        }
    }
    answered
}

/// Delivers `datagram` from the peer's listen port at `*now`, then runs the relay 1 us later
/// (`*now` moves on); returns the control messages it sent.
fn receive_then_run(
    r: &mut Relay,
    b: &FakeBuffers,
    datagram: &[u8],
    now: &mut u64,
) -> Vec<(Vec<u8>, Socket)> {
    udp_receive(r, b, PEER.parse().unwrap(), datagram, *now);
    *now += 1000;
    r.on_timeout(*now);
    answer(r, b, *now).1
}

/// The advertisement among `controls`; `what` says why one is expected.
fn advertisement_in(controls: &[(Vec<u8>, Socket)], what: &str) -> Advertisement {
    controls
        .iter()
        .find_map(|(bytes, _)| Advertisement::parse(bytes))
        .unwrap_or_else(|| panic!("{what}"))
}

/// Starts `r` (an [`entropy_relay`]) and has the peer acknowledge its advertisement, and the
/// one that echoes the cookie that acknowledgement handed; returns the control messages of the
/// first batch after, which hold the extra tuples' first probes.
fn acknowledged(r: &mut Relay, b: &FakeBuffers, now: u64) -> Vec<(Vec<u8>, Socket)> {
    r.on_timeout(now);
    let (_, controls) = answer(r, b, now);
    let advertisement = advertisement_in(&controls, "an advertisement at the start");
    udp_receive(r, b, PEER.parse().unwrap(), &ports_ack(&advertisement), now);
    r.on_timeout(now + 500);
    let (_, controls) = answer(r, b, now + 500);
    let proof = advertisement_in(&controls, "advertised again at once, echoing the cookie");
    assert_eq!(proof.echo, PEER_COOKIE);
    udp_receive(r, b, PEER.parse().unwrap(), &ports_ack(&proof), now + 500);
    r.on_timeout(now + 1000);
    answer(r, b, now + 1000).1
}

#[test]
fn flows_leave_from_the_listen_tuple_until_acknowledged_then_each_from_one_extra_socket() {
    let shared = Arc::new(SourcePorts::new(&OWN, 7, OWN_COOKIE));
    let mut r = entropy_relay(&shared);
    let mut b = FakeBuffers::new();
    let mut now = 1_000_000;
    r.on_timeout(now);
    let (_, controls) = answer(&mut r, &b, now);
    let advertisement = controls
        .iter()
        .find_map(|(bytes, socket)| {
            Advertisement::parse(bytes).inspect(|_| {
                assert_eq!(*socket, Socket::Worker, "advertised from the listen tuple");
            })
        })
        .expect("an advertisement at the start");
    assert_eq!(
        (advertisement.session, advertisement.ports()),
        (7, &OWN[..])
    );
    // Not acknowledged yet: everything leaves from the listen tuple.
    for sport in 1000..1016 {
        now += 1000;
        tun_read(&mut r, &mut b, sport, now);
        let (sends, _) = answer(&mut r, &b, now);
        assert_eq!(
            sends,
            vec![Socket::Worker],
            "flow {sport} before the acknowledgement"
        );
    }
    // The acknowledgement, from the peer's listen tuple.
    let controls = receive_then_run(&mut r, &b, &ports_ack(&advertisement), &mut now);
    // The acknowledgement carried the peer's cookie: echoed at once. The peer took nothing
    // yet (it takes only an advertisement that echoes its cookie): still the listen tuple.
    assert!(!shared.in_use());
    let proof = advertisement_in(&controls, "advertised again at once, echoing the cookie");
    assert_eq!(proof.echo, PEER_COOKIE);
    now += 1000;
    tun_read(&mut r, &mut b, 1000, now);
    assert_eq!(answer(&mut r, &b, now).0, vec![Socket::Worker]);
    let controls = receive_then_run(&mut r, &b, &ports_ack(&proof), &mut now);
    assert!(shared.in_use());
    // The extra tuples' path MTU machines ask the peer, each from its own socket.
    let probed: HashSet<Socket> = controls
        .iter()
        .filter(|(bytes, _)| Control::parse(bytes).is_some_and(|c| c.kind == control::Kind::Probe))
        .map(|(_, socket)| *socket)
        .collect();
    for k in 0..OWN.len() as u8 {
        assert!(
            probed.contains(&Socket::Extra(k)),
            "tuple {k} probed: {probed:?}"
        );
    }
    // In use, but no tuple is shown to reach the peer yet: every flow still leaves from the
    // listen tuple, counted.
    for sport in 1000..1016 {
        now += 1000;
        tun_read(&mut r, &mut b, sport, now);
        let (sends, _) = answer(&mut r, &b, now);
        assert_eq!(
            sends,
            vec![Socket::Worker],
            "flow {sport} before any probe's answer"
        );
    }
    assert_eq!(r.stats().counters.entropy_fallback_packets, 16);
    assert_eq!(r.stats().counters.entropy_tx_packets, 0);
    // The peer answers each tuple's probe: each tuple carries flows from the next batch.
    answer_probes(&mut r, &b, &controls, |_| true, now);
    now += 1000;
    r.on_timeout(now);
    answer(&mut r, &b, now);
    assert_eq!(r.stats().path.entropy_tuples_confirmed, OWN.len() as u64);
    // Now each flow leaves from one extra socket, always the same, and the flows spread.
    let mut tuple_of = HashMap::new();
    for round in 0..3 {
        for sport in 1000..1064 {
            now += 1000;
            tun_read(&mut r, &mut b, sport, now);
            let (sends, _) = answer(&mut r, &b, now);
            assert_eq!(sends.len(), 1);
            assert!(matches!(sends[0], Socket::Extra(_)), "{sends:?}");
            let first = *tuple_of.entry(sport).or_insert(sends[0]);
            assert_eq!(
                first, sends[0],
                "flow {sport} moved tuples in round {round}"
            );
        }
    }
    let used: HashSet<_> = tuple_of.values().collect();
    assert_eq!(used.len(), OWN.len(), "64 flows over 4 sockets: {used:?}");
    assert_eq!(r.stats().counters.entropy_tx_packets, 3 * 64);
    assert_eq!(r.stats().counters.entropy_fallback_packets, 16, "no more");
    assert_eq!(
        r.stats().path.ports_acknowledged,
        2,
        "the first, and the one that echoed the cookie"
    );
}

/// A worker that does not advertise, sharing `shared` (ports of its own or none).
fn receiving_relay(shared: &Arc<SourcePorts>) -> Relay {
    Relay::new(RelayConfig {
        entropy: EntropyConfig {
            source_ports: shared.clone(),
            ..EntropyConfig::none()
        },
        ..config()
    })
}

/// A hello probe as an extra tuple of the peer's sends it, echoing `cookie` (0: none).
pub(super) fn echo_probe(cookie: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; 64];
    let probe = Control {
        kind: control::Kind::Probe,
        nonce: 0x5151 ^ cookie,
        size: 64,
        cookie,
        taken: false,
    };
    let len = probe.write(&mut bytes, control::HEADER_LEN).unwrap();
    bytes.truncate(len);
    bytes
}

/// An advertisement as the wire carries it.
pub(super) fn wire_bytes(ad: &Advertisement) -> Vec<u8> {
    let mut bytes = vec![0u8; ad.wire_len()];
    ad.write(&mut bytes).unwrap();
    bytes
}

#[test]
fn the_receiver_accepts_exactly_the_listen_port_and_the_advertised_ports() {
    // A worker of a relay with entropy on (it has ports of its own), not the one advertising.
    let shared = Arc::new(SourcePorts::new(&[41000], 9, OWN_COOKIE));
    let mut r = receiving_relay(&shared);
    let b = FakeBuffers::new();
    let now = 1_000_000;
    let packet = build(&Spec {
        udp: true,
        payload_len: 40,
        ..Spec::default()
    });
    let foreign = |r: &Relay| r.stats().counters.drops_of(DropReason::ForeignSource);
    udp_receive(&mut r, &b, from_port(40000), &packet, now);
    assert_eq!(foreign(&r), 1, "not advertised yet");
    // An advertisement from an extra port is not taken.
    let ad = Advertisement::new(77, 5, OWN_COOKIE, &[40000, 40001]).unwrap();
    let bytes = wire_bytes(&ad);
    udp_receive(&mut r, &b, from_port(40001), &bytes, now);
    assert_eq!(foreign(&r), 2);
    assert!(!shared.accepts(40001));
    // From the listen port it is, and acknowledged from the listen tuple.
    udp_receive(&mut r, &b, PEER.parse().unwrap(), &bytes, now);
    let (_, controls) = answer(&mut r, &b, now);
    let acks: Vec<_> = controls
        .iter()
        .filter_map(|(bytes, socket)| Some((Control::parse(bytes)?, *socket)))
        .collect();
    assert_eq!(
        acks,
        vec![(ad.header().ports_ack(OWN_COOKIE, true), Socket::Worker)],
        "acknowledged with this relay's cookie"
    );
    assert_eq!(r.stats().path.peer_ports_accepted, 1);
    // Advertised, not proven: a datagram from 40000 is dropped, and so are probes that do not
    // echo the cookie (behind a NAT the number may be another host's at the NAT's address).
    let before = foreign(&r);
    for datagram in [&packet, &echo_probe(OWN_COOKIE ^ 1), &echo_probe(0)] {
        udp_receive(&mut r, &b, from_port(40000), datagram, now);
    }
    assert_eq!(foreign(&r), before + 3, "advertised, not proven");
    assert!(shared.advertised(40000) && !shared.accepts(40000));
    // A probe that echoes the cookie from each proves it, and is answered.
    for port in [40000, 40001] {
        udp_receive(&mut r, &b, from_port(port), &echo_probe(OWN_COOKIE), now);
        let (_, controls) = answer(&mut r, &b, now);
        assert_eq!(controls.len(), 1, "the probe from {port} answered");
        assert!(shared.accepts(port), "{port} proven");
    }
    assert_eq!(foreign(&r), before + 3);
    let received = |r: &Relay| r.stats().counters.udp_rx_packets;
    for port in [55555, 40000, 40001] {
        let before = received(&r);
        udp_receive(&mut r, &b, from_port(port), &packet, now);
        answer(&mut r, &b, now);
        assert_eq!(received(&r), before + 1, "from port {port}");
    }
    for port in [40002, 39999, 55556, 1] {
        let before = foreign(&r);
        udp_receive(&mut r, &b, from_port(port), &packet, now);
        assert_eq!(foreign(&r), before + 1, "from port {port}");
    }
    // Another address with an advertised port is foreign too.
    let before = foreign(&r);
    udp_receive(
        &mut r,
        &b,
        "198.18.0.9:40000".parse().unwrap(),
        &packet,
        now,
    );
    assert_eq!(foreign(&r), before + 1);
}

/// With `--entropy off` (no ports of its own, no advertiser to expire the peer's) the peer's
/// advertisements are counted and not taken: its extra ports stay foreign, and no
/// acknowledgement goes back, so the peer keeps to its listen tuple.
#[test]
fn a_relay_with_entropy_off_takes_no_advertisement() {
    let shared = Arc::new(SourcePorts::new(&[], 9, OWN_COOKIE));
    let mut r = receiving_relay(&shared);
    let b = FakeBuffers::new();
    let now = 1_000_000;
    let ad = Advertisement::new(77, 5, OWN_COOKIE, &[40000, 40001]).unwrap();
    let bytes = wire_bytes(&ad);
    udp_receive(&mut r, &b, PEER.parse().unwrap(), &bytes, now);
    let (_, controls) = answer(&mut r, &b, now);
    assert!(controls.is_empty(), "acknowledged: {controls:?}");
    assert!(!shared.accepts(40000));
    assert_eq!(r.stats().path.peer_ports_ignored, 1);
    assert_eq!(r.stats().path.peer_ports_accepted, 0);
    let packet = build(&Spec {
        udp: true,
        payload_len: 40,
        ..Spec::default()
    });
    udp_receive(&mut r, &b, from_port(40000), &packet, now);
    assert_eq!(r.stats().counters.drops_of(DropReason::ForeignSource), 1);
}

#[test]
fn a_relay_whose_peer_never_answers_sends_only_from_the_listen_tuple() {
    let shared = Arc::new(SourcePorts::new(&OWN, 7, OWN_COOKIE));
    let mut r = entropy_relay(&shared);
    let mut b = FakeBuffers::new();
    let mut now = 1_000_000;
    let mut advertisements = 0;
    for step in 0..200u64 {
        now += 50_000_000;
        r.on_timeout(now);
        tun_read(&mut r, &mut b, 1000 + (step % 50) as u16, now);
        let (sends, controls) = answer(&mut r, &b, now);
        assert!(sends.iter().all(|s| *s == Socket::Worker), "{sends:?}");
        assert!(controls.iter().all(|(_, s)| *s == Socket::Worker));
        advertisements += controls
            .iter()
            .filter(|(bytes, _)| Advertisement::parse(bytes).is_some())
            .count();
    }
    assert!(!shared.in_use());
    assert_eq!(advertisements, 4, "at 1, 2, 4 and 8 s: backing off");
    assert_eq!(r.stats().counters.entropy_tx_packets, 0);
}

/// An ICMP hint about an extra tuple, found on any worker's socket on it, goes to that tuple's
/// path MTU machine, which confirms it by probing from that tuple: acknowledged, the hint was
/// false and nothing changes. The listen tuple's machine is not asked.
#[test]
fn a_hint_about_an_extra_tuple_is_probed_on_that_tuple() {
    let shared = Arc::new(SourcePorts::new(&OWN, 7, OWN_COOKIE));
    let mut r = entropy_relay(&shared);
    let b = FakeBuffers::new();
    let mut now = 1_000_000;
    let controls = acknowledged(&mut r, &b, now);
    // Every tuple's machine asks the peer, and is answered, until all settle at 1448.
    let answer_probes = |r: &mut Relay, controls: &[(Vec<u8>, Socket)], now: u64| {
        answer_probes(r, &b, controls, |_| true, now)
    };
    answer_probes(&mut r, &controls, now);
    for _ in 0..10 {
        now += 2_000_000;
        r.on_timeout(now);
        let (_, controls) = answer(&mut r, &b, now);
        answer_probes(&mut r, &controls, now);
    }
    assert_eq!(r.path.path_mtu, 1448);
    // Tuple 2's socket reports a fragmentation-needed for 1300.
    let mut queued = crate::wire::cmsg::QueuedErrors {
        count: 1,
        icmp_path_mtu: Some(1300),
        ..Default::default()
    };
    queued.icmp[crate::wire::icmp::IcmpKind::TooBig as usize] = 1;
    r.on_errors_drained(Socket::Extra(2), queued, now, &b);
    assert_eq!(r.stats().path.icmp_too_big, 1, "counted by kind");
    now += 1_000_000;
    r.on_timeout(now);
    let (_, controls) = answer(&mut r, &b, now);
    let probed = answer_probes(&mut r, &controls, now);
    assert_eq!(
        probed,
        vec![(Socket::Extra(2), 1448)],
        "the working size, probed on the tuple the hint named"
    );
    for tuple in &r.tuple_paths {
        assert_eq!(
            tuple.machine.counts().hints,
            u64::from(tuple.index == 2),
            "tuple {}: only the named tuple's machine hears the hint",
            tuple.index
        );
    }
    for _ in 0..5 {
        now += 2_000_000;
        r.on_timeout(now);
        let (_, controls) = answer(&mut r, &b, now);
        answer_probes(&mut r, &controls, now);
    }
    assert_eq!(r.path.path_mtu, 1448, "refuted: nothing changed");
    assert_eq!(r.stats().path.pmtu_hints_refuted, 1);
}

/// Issue 22, finding 1, through the relay: a blind spoofer of the peer's address and listen
/// port cannot take the peer's ports away or fake a restart. Its advertisements (no cookie)
/// change nothing; the peer's own (echoing the cookie this relay's acknowledgement carried)
/// replace them.
#[test]
fn a_forged_advertisement_cannot_remove_the_peers_ports_or_fake_a_restart() {
    let shared = Arc::new(SourcePorts::new(&OWN, 7, OWN_COOKIE));
    let mut r = entropy_relay(&shared);
    let b = FakeBuffers::new();
    let mut now = 1_000_000;
    r.on_timeout(now);
    answer(&mut r, &b, now);
    let peer_ad = |ports: &[u16], session, echo| {
        wire_bytes(&Advertisement::new(session ^ echo, session, echo, ports).unwrap())
    };
    // The peer's first advertisement knows no cookie: its ports are not taken, and the
    // answer hands it the cookie.
    udp_receive(
        &mut r,
        &b,
        PEER.parse().unwrap(),
        &peer_ad(&[50000, 50001], 0x5e55, 0),
        now,
    );
    let (_, controls) = answer(&mut r, &b, now);
    let acks: Vec<Control> = controls
        .iter()
        .filter_map(|(bytes, _)| Control::parse(bytes))
        .filter(|c| c.kind == control::Kind::PortsAck)
        .collect();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].cookie, OWN_COOKIE);
    assert!(
        !shared.advertised(50000) && !shared.advertised(50001),
        "ports taken without the cookie"
    );
    assert_eq!(r.stats().path.peer_ports_unproven, 1);
    // Proven: the peer's set becomes exactly what it names.
    udp_receive(
        &mut r,
        &b,
        PEER.parse().unwrap(),
        &peer_ad(&[50000, 50001], 0x5e55, OWN_COOKIE),
        now,
    );
    assert_eq!(r.stats().path.peer_ports_accepted, 1);
    // Forgeries: other ports, none, a new session (a "restart"), with wrong cookies.
    for (i, forged) in [
        peer_ad(&[60000], 0x5e55, 1),
        peer_ad(&[], 0x5e55, OWN_COOKIE ^ 1),
        peer_ad(&[50000], 0xbad, 0),
        peer_ad(&[61000, 61001], 0xbad2, 0xffff),
    ]
    .iter()
    .enumerate()
    {
        now += 1000;
        udp_receive(&mut r, &b, PEER.parse().unwrap(), forged, now);
        r.on_timeout(now);
        answer(&mut r, &b, now);
        assert!(
            shared.advertised(50000) && shared.advertised(50001),
            "forgery {i} removed the peer's ports"
        );
    }
    assert_eq!(
        r.stats().path.peer_restarts,
        0,
        "a forged restart was taken"
    );
    assert_eq!(r.stats().path.peer_ports_unproven, 5);
    // The peer's own restart (a proven new session) is taken.
    now += 1000;
    udp_receive(
        &mut r,
        &b,
        PEER.parse().unwrap(),
        &peer_ad(&[50002], 0x5e56, OWN_COOKIE),
        now,
    );
    r.on_timeout(now);
    answer(&mut r, &b, now);
    assert_eq!(r.stats().path.peer_restarts, 1);
    assert_eq!(shared.peer_ports(), vec![50002]);
}

/// Issue 22, finding 4: an extra tuple carries flows only once the peer acknowledged a probe
/// sent from it, and stops when those acknowledgements stop. Here the peer never hears tuples
/// 1 and 3 (a NAT rewrote their ports, say): their flows leave from the listen tuple, counted
/// as `entropy_fallback_packets`; when tuple 0 goes quiet too, its flows follow.
#[test]
fn a_tuple_whose_probes_go_unanswered_carries_no_flow() {
    let shared = Arc::new(SourcePorts::new(&OWN, 7, OWN_COOKIE));
    let mut r = entropy_relay(&shared);
    let mut b = FakeBuffers::new();
    let mut now = 1_000_000;
    let heard = |socket: Socket| matches!(socket, Socket::Extra(0) | Socket::Extra(2));
    let controls = acknowledged(&mut r, &b, now);
    answer_probes(&mut r, &b, &controls, heard, now);
    // Run a few seconds: every tuple probes, only 0 and 2 are heard.
    for _ in 0..40 {
        now += 100_000_000;
        r.on_timeout(now);
        let (_, controls) = answer(&mut r, &b, now);
        answer_probes(&mut r, &b, &controls, heard, now);
    }
    assert!(shared.tuple_confirmed(0) && shared.tuple_confirmed(2));
    assert!(!shared.tuple_confirmed(1) && !shared.tuple_confirmed(3));
    let mut from = HashMap::new();
    for sport in 1000..1064 {
        now += 1000;
        tun_read(&mut r, &mut b, sport, now);
        let (sends, _) = answer(&mut r, &b, now);
        *from.entry(sends[0]).or_insert(0) += 1;
    }
    assert!(!from.contains_key(&Socket::Extra(1)) && !from.contains_key(&Socket::Extra(3)));
    assert!(
        from[&Socket::Extra(0)] > 0 && from[&Socket::Extra(2)] > 0,
        "{from:?}"
    );
    assert_eq!(
        r.stats().counters.entropy_fallback_packets,
        from[&Socket::Worker],
        "{from:?}"
    );
    assert!(from[&Socket::Worker] > 16, "half the flows: {from:?}");
    // Tuple 0's answers stop too: within TUPLE_CONFIRMED_FOR_NS and a keepalive it carries
    // nothing either.
    let heard = |socket: Socket| socket == Socket::Extra(2);
    let mut unconfirmed_at = None;
    for step in 0..200 {
        now += 100_000_000;
        r.on_timeout(now);
        let (_, controls) = answer(&mut r, &b, now);
        answer_probes(&mut r, &b, &controls, heard, now);
        if !shared.tuple_confirmed(0) {
            unconfirmed_at = Some(step);
            break;
        }
    }
    let step = unconfirmed_at.expect("tuple 0 kept carrying flows");
    assert!(step <= 90, "after {step} tenths of a second");
    assert!(shared.tuple_confirmed(2));
    assert_eq!(r.stats().path.entropy_tuples_unconfirmed, 1);
    for sport in 1000..1064 {
        now += 1000;
        tun_read(&mut r, &mut b, sport, now);
        let (sends, _) = answer(&mut r, &b, now);
        assert!(
            matches!(sends[0], Socket::Worker | Socket::Extra(2)),
            "flow {sport} from {sends:?}"
        );
    }
}

/// Issue 22, finding 3: a hint posted about a tuple while no machine ran is not taken by the
/// machine that starts next (it starts as answered, and confirms by probing); and a tuple not
/// yet confirmed holds no flow down, whatever its machine believes.
/// A tuple whose probes the peer never answers (a NAT that rewrites its port, a firewall that
/// drops it) backs off: a dozen unanswered probes, then quiet for 10 s, doubling up to five
/// minutes, where it probed about 80 times a minute for as long as the relay ran. The tuples
/// that are answered keep their keepalives, and the quiet one carries flows again once its
/// probes are answered.
#[test]
fn a_tuple_whose_probes_go_unanswered_backs_off() {
    let shared = Arc::new(SourcePorts::new(&OWN, 7, OWN_COOKIE));
    let mut r = entropy_relay(&shared);
    let b = FakeBuffers::new();
    let mut now = 1_000_000;
    let controls = acknowledged(&mut r, &b, now);
    let heard = |socket: Socket| socket != Socket::Extra(1);
    answer_probes(&mut r, &b, &controls, heard, now);
    let mut probes = HashMap::<Socket, u64>::new();
    const STEP: u64 = 100_000_000;
    // Ten minutes; the peer keeps its advertisement answered (answer_probes acknowledges it).
    for _ in 0..6000 {
        now += STEP;
        r.on_timeout(now);
        let (_, controls) = answer(&mut r, &b, now);
        for (_, socket) in probes_of(&controls) {
            *probes.entry(socket).or_default() += 1;
        }
        answer_probes(&mut r, &b, &controls, heard, now);
    }
    let quiet = probes.get(&Socket::Extra(1)).copied().unwrap_or(0);
    assert!(
        (12..150).contains(&quiet),
        "tuple 1 probed {quiet} times in ten minutes unanswered: {probes:?}"
    );
    assert!(probes[&Socket::Extra(0)] >= 200, "{probes:?}");
    eprintln!(
        "probes in ten minutes {probes:?}, quieted {}",
        r.stats().path.entropy_tuples_quieted
    );
    assert!(r.stats().path.entropy_tuples_quieted >= 5);
    assert!(!shared.tuple_confirmed(1) && shared.tuple_confirmed(0));
    // Its probes answered from now: it carries flows again within its longest pause.
    let mut confirmed_after = None;
    for step in 0..3100 {
        now += STEP;
        r.on_timeout(now);
        let (_, controls) = answer(&mut r, &b, now);
        answer_probes(&mut r, &b, &controls, |_| true, now);
        if shared.tuple_confirmed(1) {
            confirmed_after = Some(step);
            break;
        }
    }
    assert!(confirmed_after.is_some(), "tuple 1 never carried again");
}

#[test]
fn a_hint_without_a_machine_or_an_unprobed_tuple_pulls_no_flow_down() {
    let shared = Arc::new(SourcePorts::new(&OWN, 7, OWN_COOKIE));
    let mut r = entropy_relay(&shared);
    let b = FakeBuffers::new();
    let mut now = 1_000_000;
    // Forged fragmentation-needed for every tuple, before the ports are in use.
    for k in 0..OWN.len() {
        shared.post_tuple_hint(k, 600);
    }
    let controls = acknowledged(&mut r, &b, now);
    // The peer answers probes from no extra tuple (a NAT, say), and so none is confirmed.
    let heard = |socket: Socket| socket == Socket::Worker;
    answer_probes(&mut r, &b, &controls, heard, now);
    for _ in 0..50 {
        now += 100_000_000;
        r.on_timeout(now);
        let (_, controls) = answer(&mut r, &b, now);
        answer_probes(&mut r, &b, &controls, heard, now);
        assert_eq!(r.path.path_mtu, 1448, "pulled down at {now}");
    }
    // A hint now, about a tuple that carries no flow: still nothing.
    shared.post_tuple_hint(1, 600);
    for _ in 0..20 {
        now += 100_000_000;
        r.on_timeout(now);
        let (_, controls) = answer(&mut r, &b, now);
        answer_probes(&mut r, &b, &controls, heard, now);
        assert_eq!(r.path.path_mtu, 1448, "pulled down at {now}");
    }
    assert_eq!(r.stats().path.pmtu_lowered, 0);
}

/// A receive of `datagrams` (all from `from`) coalesced by UDP GRO: the stride is the first
/// datagram's length, as when the control data was cut (`MSG_CTRUNC`) and none says it.
fn udp_receive_coalesced(
    r: &mut Relay,
    b: &FakeBuffers,
    from: SocketAddr,
    datagrams: &[Vec<u8>],
    now: u64,
) {
    let payload: Vec<u8> = datagrams.concat();
    let bid = r.pop_free_udp().expect("a free UDP buffer");
    let SocketAddr::V4(v4) = from else {
        panic!("an IPv4 peer")
    };
    let mut name = [0u8; 16];
    name[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    name[2..4].copy_from_slice(&v4.port().to_be_bytes());
    name[4..8].copy_from_slice(&v4.ip().octets());
    let mut udp = b.udp.borrow_mut();
    let buffer = &mut udp[usize::from(bid)];
    buffer[..name.len()].copy_from_slice(&name);
    buffer[128..128 + payload.len()].copy_from_slice(&payload);
    let received = Received {
        name: 0..name.len(),
        control: 0..0,
        payload: 128..128 + payload.len(),
        payload_truncated: false,
        control_truncated: true,
    };
    r.on_udp_recv(bid, buffer, received, now);
}

/// The acknowledgements of `probes`, each as the peer writes it.
fn acks_of(probes: &[Control]) -> Vec<Vec<u8>> {
    probes
        .iter()
        .map(|p| {
            let mut reply = vec![0u8; control::HEADER_LEN];
            p.ack().write(&mut reply, 0).unwrap();
            reply
        })
        .collect()
}

fn probes_in(controls: &[(Vec<u8>, Socket)]) -> Vec<Control> {
    controls
        .iter()
        .filter_map(|(bytes, _)| Control::parse(bytes))
        .filter(|c| c.kind == control::Kind::Probe)
        .collect()
}

/// A blind spoofer's advertisement of the same length, coalesced by UDP GRO ahead of the
/// peer's real one (which echoes the cookie), hides nothing: both are taken, the real one
/// first, and its ports are accepted.
#[test]
fn a_forged_advertisement_ahead_in_one_receive_does_not_hide_the_real_one() {
    let shared = Arc::new(SourcePorts::new(&OWN, 7, OWN_COOKIE));
    let mut r = entropy_relay(&shared);
    let b = FakeBuffers::new();
    let now = 1_000_000;
    r.on_timeout(now);
    answer(&mut r, &b, now);
    let real = Advertisement::new(0x1111, 0x5e55, OWN_COOKIE, &[50000, 50001]).unwrap();
    let forged = Advertisement::new(0x6666, 0xbad, 0, &[60000, 60001]).unwrap();
    let datagrams = [wire_bytes(&forged), wire_bytes(&real)];
    udp_receive_coalesced(&mut r, &b, PEER.parse().unwrap(), &datagrams, now);
    let (_, controls) = answer(&mut r, &b, now);
    let acked: Vec<u64> = controls
        .iter()
        .filter_map(|(bytes, _)| Control::parse(bytes))
        .filter(|c| c.kind == control::Kind::PortsAck)
        .map(|c| c.nonce)
        .collect();
    assert_eq!(
        acked.first(),
        Some(&0x1111),
        "the proven one first: {acked:x?}"
    );
    assert!(shared.advertised(50000) && shared.advertised(50001));
    assert_eq!(r.stats().counters.drops_of(DropReason::BadControl), 0);
}

/// Eight forged probe acknowledgements ahead of the real ones in one GRO receive hide
/// nothing: every tuple whose probe was answered is confirmed.
#[test]
fn forged_acknowledgements_ahead_in_one_receive_do_not_hide_the_real_ones() {
    let shared = Arc::new(SourcePorts::new(&OWN, 7, OWN_COOKIE));
    let mut r = entropy_relay(&shared);
    let b = FakeBuffers::new();
    let now = 1_000_000;
    let probes = probes_in(&acknowledged(&mut r, &b, now));
    assert!(!probes.is_empty());
    let forged: Vec<Control> = (1..=8u64)
        .map(|n| Control {
            kind: control::Kind::Probe,
            nonce: 0xdead_0000 + n,
            size: 100,
            cookie: 0,
            taken: false,
        })
        .collect();
    let mut datagrams = acks_of(&forged);
    datagrams.extend(acks_of(&probes));
    let later = now + 2000;
    udp_receive_coalesced(&mut r, &b, PEER.parse().unwrap(), &datagrams, later);
    r.on_timeout(later);
    answer(&mut r, &b, later);
    assert_eq!(shared.confirmed_tuples(), probes.len() as u32);
    assert_eq!(r.stats().counters.drops_of(DropReason::BadControl), 0);
    assert_eq!(r.stats().counters.control_unexpected, 8);
}

/// A healthy worker of 16 tuples sends their first probes in one batch; the peer's 16
/// acknowledgements, coalesced into one receive, are all taken.
#[test]
fn sixteen_acknowledgements_in_one_receive_all_count() {
    let own: Vec<u16> = (40000..40016).collect();
    let shared = Arc::new(SourcePorts::new(&own, 7, OWN_COOKIE));
    let mut r = Relay::new(RelayConfig {
        entropy: EntropyConfig {
            source_ports: shared.clone(),
            sockets: own.len() as u8,
            workers: 1,
            advertise: true,
            limits: Some(limits()),
        },
        ..config()
    });
    let b = FakeBuffers::new();
    let now = 1_000_000;
    let probes = probes_in(&acknowledged(&mut r, &b, now));
    assert_eq!(probes.len(), 16);
    let later = now + 2000;
    udp_receive_coalesced(&mut r, &b, PEER.parse().unwrap(), &acks_of(&probes), later);
    r.on_timeout(later);
    answer(&mut r, &b, later);
    assert_eq!(shared.confirmed_tuples(), 16);
    assert_eq!(r.stats().counters.drops_of(DropReason::BadControl), 0);
}

/// Answers to forged probes (any nonce, from the peer's listen port) in one batch fill only
/// the control slots for answers: the relay's own advertisement due in that batch still goes,
/// and every answer that could not go, the acknowledgement of the peer's advertisement
/// among them, is counted.
#[test]
fn forged_probes_do_not_use_up_the_relays_own_control_slots() {
    let shared = Arc::new(SourcePorts::new(&OWN, 7, OWN_COOKIE));
    let mut r = entropy_relay(&shared);
    let b = FakeBuffers::new();
    let now = 1_000_000;
    let probe = |n: u64| {
        let mut p = vec![0u8; control::HEADER_LEN];
        Control {
            kind: control::Kind::Probe,
            nonce: n,
            size: 64,
            cookie: 0,
            taken: false,
        }
        .write(&mut p, 0)
        .unwrap();
        p
    };
    let forged: Vec<Vec<u8>> = (0..24).map(|n| probe(100 + n)).collect();
    udp_receive_coalesced(&mut r, &b, PEER.parse().unwrap(), &forged, now);
    let real = Advertisement::new(0x1111, 0x5e55, 0, &[50000]).unwrap();
    udp_receive(&mut r, &b, PEER.parse().unwrap(), &wire_bytes(&real), now);
    let (_, controls) = answer(&mut r, &b, now);
    let ads_sent = controls
        .iter()
        .filter_map(|(bytes, _)| Control::parse(bytes))
        .filter(|c| c.kind == control::Kind::Ports)
        .count();
    assert_eq!(ads_sent, 1, "the relay's own advertisement went");
    assert_eq!(r.stats().path.ports_advertised, 1);
    let unanswered = 24 + 1 - super::slots::ANSWER_CONTROL_SLOTS as u64;
    assert_eq!(r.stats().counters.control_unanswered, unanswered);
}

/// The peer's acknowledgement of `advertisement` with cookie `cookie`.
fn ports_ack_with(advertisement: &Advertisement, cookie: u64) -> Vec<u8> {
    let mut ack = vec![0u8; control::PORTS_ACK_LEN];
    advertisement
        .header()
        .ports_ack(cookie, advertisement.echo == cookie)
        .write(&mut ack, 0)
        .unwrap();
    ack
}

/// The extra tuples' probes echo the peer's cookie (which proves their ports to it). A forged
/// restart hint (an unproven advertisement of another session) only makes the relay advertise:
/// the peer answers with the cookie it had, and the ports stay in use, every tuple confirmed. A
/// real restart shows in that answer, a new cookie: the ports go out of use, and the tuples'
/// machines are kept (paused, with what they know), carrying flows again only once a probe
/// sent after the restart, echoing the new cookie, is acknowledged.
#[test]
fn tuple_probes_echo_the_cookie_and_only_a_real_restart_pauses_the_tuples() {
    let shared = Arc::new(SourcePorts::new(&OWN, 7, OWN_COOKIE));
    let mut r = entropy_relay(&shared);
    let mut b = FakeBuffers::new();
    let mut now = 1_000_000;
    let controls = acknowledged(&mut r, &b, now);
    let probes = probes_of(&controls);
    assert_eq!(probes.len(), OWN.len());
    for (probe, socket) in &probes {
        assert!(matches!(socket, Socket::Extra(_)));
        assert_eq!(probe.cookie, PEER_COOKIE, "from {socket:?}");
    }
    answer_probes(&mut r, &b, &controls, |_| true, now + 1000);
    now += 2000;
    r.on_timeout(now);
    answer(&mut r, &b, now);
    assert_eq!(shared.confirmed_tuples(), OWN.len() as u32);
    let sent_before: u64 = r
        .tuple_paths
        .iter()
        .map(|t| t.machine.counts().probes_sent)
        .sum();
    // A forged hint: one advertisement, answered by the real peer with its cookie.
    let hint = |session| wire_bytes(&Advertisement::new(0xf00d, session, 0, &[]).unwrap());
    udp_receive(&mut r, &b, PEER.parse().unwrap(), &hint(0xbad), now);
    r.on_timeout(now);
    let (_, controls) = answer(&mut r, &b, now);
    let advertisement = advertisement_in(&controls, "advertised at once");
    receive_then_run(&mut r, &b, &ports_ack(&advertisement), &mut now);
    assert!(shared.in_use());
    assert_eq!(shared.confirmed_tuples(), OWN.len() as u32);
    assert_eq!(r.stats().path.entropy_tuples_unconfirmed, 0);
    tun_read(&mut r, &mut b, 1000, now);
    assert!(matches!(answer(&mut r, &b, now).0[..], [Socket::Extra(_)]));
    // A real restart: the next hint's advertisement is answered with a new cookie.
    const NEW_COOKIE: u64 = 0x0c00_c1e2;
    now += super::entropy::RESTART_HINT_INTERVAL_NS;
    udp_receive(&mut r, &b, PEER.parse().unwrap(), &hint(0x5e56), now);
    r.on_timeout(now);
    let (_, controls) = answer(&mut r, &b, now);
    let advertisement = advertisement_in(&controls, "advertised at once");
    let ack = ports_ack_with(&advertisement, NEW_COOKIE);
    let controls = receive_then_run(&mut r, &b, &ack, &mut now);
    assert!(!shared.in_use(), "out of use at the new cookie");
    assert_eq!(shared.confirmed_tuples(), 0);
    assert_eq!(r.tuple_paths.len(), OWN.len(), "the machines are kept");
    let sent_after: u64 = r
        .tuple_paths
        .iter()
        .map(|t| t.machine.counts().probes_sent)
        .sum();
    assert!(sent_after >= sent_before, "{sent_after} < {sent_before}");
    tun_read(&mut r, &mut b, 1000, now);
    assert_eq!(answer(&mut r, &b, now).0, vec![Socket::Worker]);
    // The proof, acknowledged: in use, and each tuple probes at once, echoing the new cookie;
    // its flows fall back until that probe is acknowledged.
    let proof = advertisement_in(&controls, "the proof, at once");
    assert_eq!(proof.echo, NEW_COOKIE);
    let ack = ports_ack_with(&proof, NEW_COOKIE);
    let controls = receive_then_run(&mut r, &b, &ack, &mut now);
    assert!(shared.in_use());
    let probes = probes_of(&controls);
    assert_eq!(probes.len(), OWN.len(), "{probes:?}");
    assert!(probes.iter().all(|(p, _)| p.cookie == NEW_COOKIE));
    assert_eq!(shared.confirmed_tuples(), 0);
    tun_read(&mut r, &mut b, 1000, now);
    assert_eq!(answer(&mut r, &b, now).0, vec![Socket::Worker]);
    answer_probes(&mut r, &b, &controls, |_| true, now);
    now += 1000;
    r.on_timeout(now);
    answer(&mut r, &b, now);
    assert_eq!(shared.confirmed_tuples(), OWN.len() as u32);
    tun_read(&mut r, &mut b, 1000, now);
    assert!(matches!(answer(&mut r, &b, now).0[..], [Socket::Extra(_)]));
}

/// The probes among `controls`, with the socket each left from.
fn probes_of(controls: &[(Vec<u8>, Socket)]) -> Vec<(Control, Socket)> {
    controls
        .iter()
        .filter_map(|(bytes, socket)| Some((Control::parse(bytes)?, *socket)))
        .filter(|(c, _)| c.kind == control::Kind::Probe)
        .collect()
}
