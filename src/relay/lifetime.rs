//! The relay driven by a fake engine, with no socket, no ring and no kernel: buffers are plain
//! vectors, and every request gets a random result (sent, refused as too big, GSO unusable, a
//! full buffer, an error about an earlier datagram, a refused merged write). Whatever the
//! results, every buffer comes back exactly once, nothing stays in flight, and every packet the
//! test fed in is counted once, as sent or as dropped: the test counts what it fed, and the
//! relay's counters must agree with that count, not only with themselves.

use super::*;
use crate::offload::ecn::Ecn;
use crate::offload::test_packets::{Spec, Xorshift, build};
use crate::stats::DropReason;
use crate::wire::cmsg::QueuedErrors;
use crate::wire::transport::tcp_flags;
use crate::wire::vnet;
use std::cell::RefCell;

const BUFFERS: u16 = 16;
const PEER: &str = "198.18.0.2:55555";

/// Buffers as plain memory.
pub(super) struct FakeBuffers {
    pub(super) tun: Vec<Vec<u8>>,
    pub(super) udp: RefCell<Vec<Vec<u8>>>,
}

impl FakeBuffers {
    pub(super) fn new() -> FakeBuffers {
        FakeBuffers {
            tun: vec![vec![0u8; 65600]; usize::from(BUFFERS)],
            udp: RefCell::new(vec![vec![0u8; 65600]; usize::from(BUFFERS)]),
        }
    }
}

impl Buffers for FakeBuffers {
    fn tun(&self, bid: u16) -> &[u8] {
        &self.tun[usize::from(bid)]
    }

    fn write_udp(&self, bid: u16, at: usize, bytes: &[u8]) {
        self.udp.borrow_mut()[usize::from(bid)][at..at + bytes.len()].copy_from_slice(bytes);
    }
}

fn relay() -> Relay {
    Relay::new(config())
}

/// A relay whose AQM signals nearly every bulk packet that waited at all: CoDel with a 1 µs
/// target over 10 µs, so that the drops and marks it makes land in the tests' sums.
fn relay_with_eager_aqm() -> Relay {
    Relay::new(RelayConfig {
        aqm: aqm::Settings {
            mode: aqm::Mode::Codel,
            mark: EAGER,
            drop: EAGER,
            ..aqm::Settings::DEFAULT
        },
        ..config()
    })
}

const EAGER: aqm::Params = aqm::Params {
    target_ns: 1_000,
    interval_ns: 10_000,
};

/// The wall clock the fake engine reports: a second ahead of the relay's.
const WALL_AHEAD_NS: u64 = 1_000_000_000;

pub(super) fn config() -> RelayConfig {
    let mut nonce = 0u64;
    RelayConfig {
        queue: 0,
        peer: PEER.parse().unwrap(),
        mtu: 1420,
        offloads: Offloads {
            tso: true,
            uso: true,
            udp_gso: true,
            udp_gro: true,
        },
        marking: crate::offload::ecn::Marking::DEFAULT,
        tun_buffers: BUFFERS,
        udp_buffers: BUFFERS,
        fragmenting: true,
        shared_path: Arc::new(SharedPath::new(1448)),
        path_machine: None,
        reply_budget: Arc::new(SharedBucket::new(std::time::Instant::now(), 200, 100)),
        reply_key: (1, 2),
        nonces: Box::new(move || {
            nonce += 1;
            nonce
        }),
        epoch: std::time::Instant::now(),
        snapshot_every_ns: None,
        entropy: crate::relay::EntropyConfig::none(),
        aqm: aqm::Settings::OFF,
        wireguard: None,
    }
}

/// Closes batches, answers every system request and gives every send and write a result, until
/// no request is left. `failures` in 16ths: how often a send or write fails, and then with which
/// error is random.
fn settle(r: &mut Relay, b: &FakeBuffers, rng: &mut Xorshift, failures: u64, now: &mut u64) {
    for _ in 0..1000 {
        *now += 1000;
        r.on_wall_clock(*now, *now + WALL_AHEAD_NS);
        r.end_batch(*now, b);
        let mut answered = 0;
        while let Some(request) = r.poll_request() {
            answered += 1;
            let fail = rng.below(16) < failures;
            let (token, result) = match request {
                Request::Send { token, .. } | Request::SendControl { token, .. } => {
                    let errors = [
                        libc::EMSGSIZE,
                        libc::EINVAL,
                        libc::EIO,
                        libc::ENOBUFS,
                        libc::ECONNREFUSED,
                        libc::EHOSTUNREACH,
                    ];
                    let e = errors[rng.below(errors.len() as u64) as usize];
                    (token, if fail { -e } else { 1400 })
                }
                Request::Write { token } => {
                    let e = [libc::EINVAL, libc::EIO][rng.below(2) as usize];
                    (token, if fail { -e } else { 1400 })
                }
                Request::DrainErrors { socket } => {
                    r.on_errors_drained(socket, QueuedErrors::default(), *now, b);
                    continue;
                }
                Request::ReadSocketDrops => {
                    r.on_socket_drops(Some(0));
                    continue;
                }
                Request::ReadEgressMtu => {
                    r.on_egress_mtu(None, *now);
                    continue;
                }
            };
            r.complete(token, result, *now, b);
        }
        if answered == 0 {
            return;
        }
    }
    panic!("requests kept coming after 1000 rounds");
}

fn all_back(free: Vec<u16>) {
    let mut free = free;
    free.sort_unstable();
    assert_eq!(
        free,
        (0..BUFFERS).collect::<Vec<_>>(),
        "every buffer back, once"
    );
}

fn tso_header(gso_size: u16) -> [u8; vnet::LEN] {
    let mut h = [0u8; vnet::LEN];
    h[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
    h[2..4].copy_from_slice(&40u16.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h
}

#[test]
fn tun_buffers_all_come_back_and_every_packet_is_counted_once_whatever_the_sends_return() {
    let mut aqm_acted = 0;
    for seed in 1..=40u64 {
        // Every other seed with an AQM that drops and marks: a super-packet that loses its last
        // segment must still count every segment once.
        let eager = seed % 2 == 0;
        let mut r = if eager {
            relay_with_eager_aqm()
        } else {
            relay()
        };
        let mut b = FakeBuffers::new();
        let mut rng = Xorshift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut now = 0u64;
        let mut fed = 0u64;
        for round in 0..30u32 {
            if eager {
                // A drain 50 µs before the burst is read left packets behind (which the burst
                // reads first, so they waited those 50 µs).
                r.on_tun_drained(true, now);
                r.on_tun_drained(false, now);
                now += 50_000;
            }
            // A burst: plain packets of a few flows and sizes (GSO batches and their ends), and
            // super-packets that split.
            for k in 0..rng.below(12) + 1 {
                let Some(bid) = r.pop_free_tun() else {
                    break;
                };
                // ECT(0) or Not-ECT, so that the AQM marks some and drops others.
                let tos = [0, 2][rng.below(2) as usize];
                let (header, packet, packets) = if rng.below(4) == 0 {
                    let payload = 1000 * (rng.below(60) as usize + 2);
                    let big = build(&Spec {
                        payload_len: payload,
                        tos,
                        ..Spec::default()
                    });
                    (tso_header(1000), big, payload.div_ceil(1000) as u64)
                } else {
                    let small = build(&Spec {
                        payload_len: [1380, 1380, 1380, 600, 40][rng.below(5) as usize],
                        sport: 40000 + rng.below(3) as u16,
                        seq: round * 100_000 + k as u32 * 1380,
                        tos,
                        ..Spec::default()
                    });
                    ([0; vnet::LEN], small, 1)
                };
                let buffer = &mut b.tun[usize::from(bid)];
                buffer[..vnet::LEN].copy_from_slice(&header);
                buffer[vnet::LEN..vnet::LEN + packet.len()].copy_from_slice(&packet);
                r.on_tun_read(bid, buffer, vnet::LEN + packet.len(), now);
                fed += packets;
            }
            let failures = rng.below(17);
            settle(&mut r, &b, &mut rng, failures, &mut now);
        }
        settle(&mut r, &b, &mut rng, 0, &mut now);
        all_back(r.take_free_tun().collect());
        assert_eq!(r.in_flight(), 0);
        let c = &r.stats().counters;
        assert_eq!(
            c.tun_rx_packets, fed,
            "seed {seed}: every packet fed was read once"
        );
        assert_eq!(
            c.udp_tx_packets + c.total_drops(),
            fed,
            "seed {seed}: every packet sent or dropped, once: {c:?}"
        );
        let acted = c.drops_of(DropReason::AqmTunRing) + c.aqm_marked_tun_ring;
        assert!(eager || acted == 0, "seed {seed}: the AQM is off");
        aqm_acted += acted;
    }
    assert!(aqm_acted > 0, "the eager AQM dropped or marked something");
}

/// The packets of a `Request::Send` as they leave: its pieces, read from the shell's TUN
/// buffers or the relay's own memory, laid end to end and cut at each IP packet's length.
fn sent_packets(r: &Relay, b: &FakeBuffers, bid: u16, first: u16, segments: u16) -> Vec<Vec<u8>> {
    let (pieces, _) = r.send_pieces(bid, first, segments);
    let mut bytes = Vec::new();
    for piece in pieces {
        let range = piece.offset as usize..(piece.offset + piece.len) as usize;
        match piece.base {
            Base::TunBuffer(bid) => bytes.extend_from_slice(&b.tun[usize::from(bid)][range]),
            base => bytes.extend_from_slice(&r.own_bytes(base).expect("the relay's bytes")[range]),
        }
    }
    let mut packets = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let len = match rest[0] >> 4 {
            4 => usize::from(u16::from_be_bytes([rest[2], rest[3]])),
            _ => 40 + usize::from(u16::from_be_bytes([rest[4], rest[5]])),
        };
        packets.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    packets
}

/// Closes batches and completes every request with success until none is left, and returns
/// the packets the sends carried.
fn settle_and_collect(r: &mut Relay, b: &FakeBuffers, now: &mut u64) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    for _ in 0..1000 {
        *now += 1000;
        r.end_batch(*now, b);
        let mut answered = 0;
        while let Some(request) = r.poll_request() {
            answered += 1;
            match request {
                Request::Send {
                    token,
                    bid,
                    first,
                    segments,
                    ..
                } => {
                    sent.extend(sent_packets(r, b, bid, first, segments));
                    r.complete(token, 1400, *now, b);
                }
                Request::SendControl { token, .. } | Request::Write { token } => {
                    r.complete(token, 1400, *now, b)
                }
                Request::DrainErrors { socket } => {
                    r.on_errors_drained(socket, QueuedErrors::default(), *now, b)
                }
                Request::ReadSocketDrops => r.on_socket_drops(Some(0)),
                Request::ReadEgressMtu => r.on_egress_mtu(None, *now),
            }
        }
        if answered == 0 {
            return sent;
        }
    }
    panic!("requests kept coming after 1000 rounds");
}

/// Reads `packet` from the TUN into a free buffer, behind `header` (a virtio header).
fn read_tun(r: &mut Relay, b: &mut FakeBuffers, header: [u8; vnet::LEN], packet: &[u8], now: u64) {
    let bid = r.pop_free_tun().expect("a free TUN buffer");
    let buffer = &mut b.tun[usize::from(bid)];
    buffer[..vnet::LEN].copy_from_slice(&header);
    buffer[vnet::LEN..vnet::LEN + packet.len()].copy_from_slice(packet);
    r.on_tun_read(bid, buffer, vnet::LEN + packet.len(), now);
}

/// Tells the relay the TUN's ring has stood for `ns`: a drain that long ago left packets behind
/// (the next read takes them), and the relay was busy since (`queue`'s module doc).
fn ring_stood(r: &mut Relay, now: &mut u64, ns: u64) {
    r.on_tun_drained(true, *now);
    r.on_tun_drained(false, *now);
    *now += ns;
}

/// Receives `payload` (a GRO buffer's datagrams, all of one stride) from the peer into UDP
/// buffer `bid`, stamped (`SCM_TIMESTAMPNS`) as taken in by the kernel `waited_ns` before `now`
/// (on the wall clock the fake engine reports, `WALL_AHEAD_NS` ahead).
fn receive_stamped(
    r: &mut Relay,
    b: &FakeBuffers,
    bid: u16,
    payload: &[u8],
    now: u64,
    waited_ns: u64,
) {
    // The `sockaddr_in` of the peer, as a receive puts it in the buffer.
    let (name, name_len) = crate::wire::cmsg::sockaddr_bytes(PEER.parse().unwrap());
    let name = &name[..name_len];
    let mut buffer = std::mem::take(&mut b.udp.borrow_mut()[usize::from(bid)]);
    buffer[..name.len()].copy_from_slice(name);
    let stamp = now + WALL_AHEAD_NS - waited_ns;
    let control = name.len()..name.len() + crate::wire::cmsg::TIMESTAMP_CONTROL_LEN;
    buffer[control.start..control.start + 8].copy_from_slice(&32usize.to_ne_bytes());
    buffer[control.start + 8..control.start + 12].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
    buffer[control.start + 12..control.start + 16]
        .copy_from_slice(&libc::SCM_TIMESTAMPNS.to_ne_bytes());
    buffer[control.start + 16..control.start + 24]
        .copy_from_slice(&((stamp / 1_000_000_000) as i64).to_ne_bytes());
    buffer[control.start + 24..control.start + 32]
        .copy_from_slice(&((stamp % 1_000_000_000) as i64).to_ne_bytes());
    let at = 64;
    buffer[at..at + payload.len()].copy_from_slice(payload);
    let received = Received {
        name: 0..name.len(),
        control,
        payload: at..at + payload.len(),
        payload_truncated: false,
        // No UDP_GRO message: the first datagram's IP length is the stride.
        control_truncated: true,
    };
    r.on_udp_recv(bid, &mut buffer, received, now);
    b.udp.borrow_mut()[usize::from(bid)] = buffer;
}

/// `--aqm observe` times both queues as `codel` does, and signals nothing: under the eager
/// AQM's times, a ring that stands for 50 µs and datagrams that waited a millisecond in the
/// socket, ECT and Not-ECT, every packet is timed at its wait, none is marked or dropped, and
/// every one leaves as it came.
#[test]
fn observe_times_the_queues_and_never_marks_or_drops() {
    let mut r = Relay::new(RelayConfig {
        aqm: aqm::Settings {
            mode: aqm::Mode::Observe,
            mark: EAGER,
            drop: EAGER,
            ..aqm::Settings::DEFAULT
        },
        ..config()
    });
    let mut b = FakeBuffers::new();
    let mut now = 0u64;
    r.on_wall_clock(now, now + WALL_AHEAD_NS);
    let (mut fed, mut sent, mut datagrams) = (Vec::new(), Vec::new(), 0u64);
    for round in 0..30u32 {
        ring_stood(&mut r, &mut now, 50_000);
        for k in 0..4u32 {
            let packet = build(&Spec {
                payload_len: 1200,
                tos: [0, Ecn::Ect0.bits()][(k % 2) as usize],
                seq: round * 100_000 + k * 1200,
                ..Spec::default()
            });
            read_tun(&mut r, &mut b, [0; vnet::LEN], &packet, now);
            fed.push(packet);
        }
        let bid = r.pop_free_udp().expect("a free UDP buffer");
        let payload: Vec<u8> = (0..4u32)
            .flat_map(|s| {
                build(&Spec {
                    payload_len: 1000,
                    seq: round * 100_000 + s * 1000,
                    tos: [0, Ecn::Ect0.bits()][(s % 2) as usize],
                    ..Spec::default()
                })
            })
            .collect();
        receive_stamped(&mut r, &b, bid, &payload, now, 1_000_000);
        datagrams += 4;
        r.on_wall_clock(now, now + WALL_AHEAD_NS);
        sent.extend(settle_and_collect(&mut r, &b, &mut now));
    }
    let stats = r.stats();
    let c = &stats.counters;
    let changed = sent.iter().zip(&fed).filter(|(s, f)| s != f).count();
    assert!(
        sent.len() == fed.len() && changed == 0,
        "every TUN packet left as it came: {} of {} sent, {changed} changed",
        sent.len(),
        fed.len()
    );
    assert_eq!(c.tun_tx_packets, datagrams, "every datagram written");
    assert_eq!(c.total_drops(), 0, "{c:?}");
    assert_eq!(c.aqm_marked_tun_ring + c.aqm_marked_udp_socket, 0);
    let (ring, socket) = (&stats.queue_delay_tun_ns, &stats.queue_delay_udp_ns);
    assert_eq!(ring.len(), fed.len() as u64, "every TUN packet timed");
    assert_eq!(socket.len(), datagrams, "every datagram timed");
    assert!(
        ring.equivalent(ring.value_at_quantile(0.5), 50_000),
        "the ring's 50 µs: {}",
        ring.value_at_quantile(0.5)
    );
    assert!(
        socket.equivalent(socket.value_at_quantile(0.5), 1_000_000),
        "the socket's millisecond: {}",
        socket.value_at_quantile(0.5)
    );
}

/// Under the eager AQM and a standing ring, plain packets and super-packets, ECT(0) and
/// Not-ECT, IPv4 and IPv6: every ECN-capable packet leaves (marked CE or not), none is dropped,
/// and every one marked CE leaves with valid checksums (the IPv4 header's updated); the
/// Not-ECT ones are sent or counted as the AQM's drops.
#[test]
fn the_eager_aqm_never_drops_an_ect_packet_and_marks_with_valid_checksums() {
    let mut r = relay_with_eager_aqm();
    let mut b = FakeBuffers::new();
    let mut rng = Xorshift(0x5eed);
    let mut now = 0u64;
    let (mut ect_fed, mut not_ect_fed) = (0u64, 0u64);
    let mut sent = Vec::new();
    for round in 0..40u32 {
        ring_stood(&mut r, &mut now, 50_000);
        for k in 0..6u32 {
            let ect = rng.below(2) == 0;
            let ipv6 = rng.below(2) == 0;
            let spec = |payload_len| Spec {
                ipv6,
                payload_len,
                tos: if ect { Ecn::Ect0.bits() } else { 0 },
                sport: 40000 + (k % 3) as u16,
                seq: round * 1_000_000 + k * 10_000,
                ..Spec::default()
            };
            let segments = if !ipv6 && rng.below(3) == 0 {
                let big = build(&spec(4000));
                read_tun(&mut r, &mut b, tso_header(1000), &big, now);
                4
            } else {
                read_tun(&mut r, &mut b, [0; vnet::LEN], &build(&spec(1200)), now);
                1
            };
            *if ect { &mut ect_fed } else { &mut not_ect_fed } += segments;
        }
        sent.extend(settle_and_collect(&mut r, &b, &mut now));
    }
    let c = &r.stats().counters;
    let ecn = |p: &Vec<u8>| Ecn::of(crate::offload::ecn::inner_tos(p));
    let ce: Vec<_> = sent.iter().filter(|p| ecn(p) == Ecn::Ce).collect();
    let ect_sent = sent.iter().filter(|p| ecn(p) != Ecn::NotEct).count() as u64;
    assert_eq!(ect_sent, ect_fed, "no ECN-capable packet dropped: {c:?}");
    assert_eq!(ce.len() as u64, c.aqm_marked_tun_ring, "every mark counted");
    assert!(!ce.is_empty(), "the eager AQM marked");
    for p in ce {
        crate::offload::test_packets::assert_valid(p);
    }
    let not_ect_sent = sent.len() as u64 - ect_sent;
    let dropped = c.drops_of(DropReason::AqmTunRing);
    assert!(dropped > 0, "the eager AQM dropped");
    assert_eq!(not_ect_sent + dropped, not_ect_fed, "{c:?}");
}

/// A Not-ECT super-packet the AQM drops loses its last segment, as a router that dropped one
/// packet of the burst would; one whose last segment carries FIN loses all of them, since no
/// other segment may take the FIN over.
#[test]
fn a_dropped_super_packet_loses_its_last_segment_or_all_of_it_with_fin() {
    for fin in [false, true] {
        let mut r = relay_with_eager_aqm();
        let mut b = FakeBuffers::new();
        let mut now = 0u64;
        // The ring stands, and a first packet starts CoDel's interval without being signalled.
        ring_stood(&mut r, &mut now, 50_000);
        read_tun(
            &mut r,
            &mut b,
            [0; vnet::LEN],
            &build(&Spec::default()),
            now,
        );
        let mut sent = settle_and_collect(&mut r, &b, &mut now);
        assert_eq!(sent.len(), 1, "not yet signalled");
        // An interval later: the super-packet of 5 segments is.
        now += 50_000;
        let flags = tcp_flags::ACK | if fin { tcp_flags::FIN } else { 0 };
        let big = build(&Spec {
            payload_len: 5000,
            flags,
            ..Spec::default()
        });
        read_tun(&mut r, &mut b, tso_header(1000), &big, now);
        sent.extend(settle_and_collect(&mut r, &b, &mut now));
        let c = &r.stats().counters;
        let (expect_sent, expect_dropped) = if fin { (1, 5) } else { (5, 1) };
        assert_eq!(sent.len(), expect_sent, "fin={fin}: {c:?}");
        assert_eq!(
            c.drops_of(DropReason::AqmTunRing),
            expect_dropped,
            "fin={fin}"
        );
        assert_eq!(c.tun_rx_packets, 6);
        if !fin {
            // The four left are the first four, in order, and none carries FIN.
            let seqs: Vec<u32> = sent[1..]
                .iter()
                .map(|p| u32::from_be_bytes([p[24], p[25], p[26], p[27]]))
                .collect();
            assert_eq!(seqs, [1000, 2000, 3000, 4000]);
        }
    }
}

#[test]
fn udp_buffers_all_come_back_and_every_datagram_is_counted_once_whatever_the_writes_return() {
    let mut aqm_acted = 0;
    for seed in 1..=40u64 {
        // Every other seed with an AQM, the datagrams stamped as having waited a millisecond.
        let eager = seed % 2 == 0;
        let mut r = if eager {
            relay_with_eager_aqm()
        } else {
            relay()
        };
        let b = FakeBuffers::new();
        let mut rng = Xorshift(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
        let mut now = 0u64;
        // As the worker does when it starts.
        r.on_wall_clock(now, now + WALL_AHEAD_NS);
        let mut fed = 0u64;
        let mut merged = 0;
        for round in 0..30u32 {
            for _ in 0..rng.below(6) + 1 {
                let Some(bid) = r.pop_free_udp() else {
                    break;
                };
                // A GRO buffer: runs of consecutive segments of two flows, which merge, and the
                // kernel may refuse the merged writes.
                let mut payload = Vec::new();
                let segments = rng.below(20) as u32 + 1;
                for s in 0..segments {
                    payload.extend(build(&Spec {
                        payload_len: 1000,
                        sport: 40000 + (s / 7) as u16,
                        seq: round * 1_000_000 + s * 1000,
                        id: s as u16,
                        tos: [0, 2][rng.below(2) as usize],
                        ..Spec::default()
                    }));
                }
                fed += u64::from(segments);
                receive_stamped(&mut r, &b, bid, &payload, now, 1_000_000);
                merged += 1;
            }
            let failures = rng.below(17);
            settle(&mut r, &b, &mut rng, failures, &mut now);
        }
        settle(&mut r, &b, &mut rng, 0, &mut now);
        all_back(r.take_free_udp().collect());
        assert_eq!(r.in_flight(), 0);
        let c = &r.stats().counters;
        assert_eq!(
            c.udp_rx_packets, fed,
            "seed {seed}: every datagram fed was received"
        );
        assert_eq!(
            c.tun_tx_packets
                + c.drops_of(DropReason::TunWriteError)
                + c.drops_of(DropReason::AqmUdpSocket),
            fed,
            "seed {seed}: every datagram written or dropped, once: {c:?}"
        );
        assert!(
            merged > 0 && c.coalesced_writes > 0,
            "seed {seed}: runs merged"
        );
        let acted = c.drops_of(DropReason::AqmUdpSocket) + c.aqm_marked_udp_socket;
        assert!(eager || acted == 0, "seed {seed}: the AQM is off");
        aqm_acted += acted;
        // Every datagram was timed, at the millisecond it waited (as the relay saw it).
        let timed = r.stats().queue_delay_udp_ns.len();
        assert_eq!(timed, if eager { fed } else { 0 }, "seed {seed}");
    }
    assert!(aqm_acted > 0, "the eager AQM dropped or marked something");
}

#[test]
fn a_request_names_what_the_relay_completes() {
    let mut r = relay();
    let mut b = FakeBuffers::new();
    let packet = build(&Spec::default());
    let bid = r.pop_free_tun().unwrap();
    let buffer = &mut b.tun[usize::from(bid)];
    buffer[vnet::LEN..vnet::LEN + packet.len()].copy_from_slice(&packet);
    r.on_tun_read(bid, buffer, vnet::LEN + packet.len(), 0);
    r.end_batch(0, &b);
    let Some(Request::Send {
        token,
        bid: sent,
        first: 0,
        segments: 1,
        segment_size: None,
        ..
    }) = r.poll_request()
    else {
        panic!("one packet, one send");
    };
    assert_eq!(sent, bid);
    assert_eq!(token.op, Op::UdpSend);
    let (pieces, _) = r.send_pieces(bid, 0, 1);
    assert_eq!(
        pieces,
        &[Piece::new(Base::TunBuffer(bid), vnet::LEN, packet.len())],
        "the packet, in place after its virtio header"
    );
    assert_eq!(r.poll_request(), None);
    r.complete(token, packet.len() as i32, 1, &b);
    assert_eq!(r.in_flight(), 0);
    assert_eq!(r.take_free_tun().count(), usize::from(BUFFERS));
}

/// A probe refused with what may be the socket's pending error (with `IP_RECVERR` a forged
/// ICMP error fails the next send, whatever it is) is sent again as it was, so that forged
/// errors cannot make probes look lost and confirm a forged hint; a slot whose resends are
/// spent comes free.
#[test]
fn a_probe_refused_by_a_pending_error_is_sent_again() {
    let mut r = Relay::new(RelayConfig {
        path_machine: Some(crate::relay::plpmtud::Limits {
            largest: 1448,
            floor: 1280,
            smallest: 552,
            hello: 28 + crate::wire::control::HEADER_LEN,
        }),
        ..config()
    });
    let b = FakeBuffers::new();
    let mut now = 1_000_000u64;
    r.on_timeout(now);
    let first = std::iter::from_fn(|| r.poll_request())
        .find_map(|q| match q {
            Request::SendControl { token, k, len, .. } => Some((token, k, len)),
            _ => None,
        })
        .expect("the machine asks the peer whether it answers probes");
    let mut sends = vec![first];
    let errnos = [libc::EMSGSIZE, libc::ECONNREFUSED, libc::EHOSTUNREACH];
    for errno in errnos
        .into_iter()
        .cycle()
        .take(send::RESENDS_PER_SLOT.into())
    {
        let (token, _, _) = *sends.last().unwrap();
        now += 1000;
        r.complete(token, -errno, now, &b);
        let again: Vec<_> = std::iter::from_fn(|| r.poll_request())
            .filter_map(|q| match q {
                Request::SendControl { token, k, len, .. } => Some((token, k, len)),
                _ => None,
            })
            .collect();
        assert_eq!(
            again.len(),
            1,
            "refused with errno {errno}, sent again once"
        );
        assert_eq!(
            (again[0].1, again[0].2),
            (first.1, first.2),
            "the same message"
        );
        sends.push(again[0]);
    }
    assert_eq!(r.stats.counters.send_retries, send::RESENDS_PER_SLOT as u64);
    let (token, _, _) = *sends.last().unwrap();
    r.complete(token, -libc::EMSGSIZE, now, &b);
    assert!(
        std::iter::from_fn(|| r.poll_request()).all(|q| !matches!(q, Request::SendControl { .. })),
        "the resends are spent"
    );
    assert!(
        r.controls.busy.iter().all(|busy| !busy),
        "the slot came free"
    );
}

/// Every probe from the peer is answered, however many come: a budget of answers would be one
/// that forged probes could spend, leaving the peer's real probes unanswered and its path MTU
/// machine to take them as lost. Answers wait only for a free control buffer.
#[test]
fn every_probe_from_the_peer_is_answered() {
    let (name, name_len) = crate::wire::cmsg::sockaddr_bytes(PEER.parse().unwrap());
    let name = &name[..name_len];
    let mut r = relay();
    let b = FakeBuffers::new();
    let mut rng = Xorshift(7);
    let mut now = 0u64;
    let probes = 500u64;
    let mut acks = 0u64;
    for nonce in 1..=probes {
        let bid = r.pop_free_udp().expect("buffers come back");
        let mut buffer = std::mem::take(&mut b.udp.borrow_mut()[usize::from(bid)]);
        buffer[..name.len()].copy_from_slice(name);
        let at = 64;
        let probe = crate::wire::control::Control {
            kind: crate::wire::control::Kind::Probe,
            nonce,
            size: 1400,
            cookie: 0,
            taken: false,
        };
        let len = probe.write(&mut buffer[at..], 100).unwrap();
        let received = Received {
            name: 0..name.len(),
            control: 64..64,
            payload: at..at + len,
            payload_truncated: false,
            control_truncated: true,
        };
        r.on_udp_recv(bid, &mut buffer, received, now);
        b.udp.borrow_mut()[usize::from(bid)] = buffer;
        // All within one second.
        now += 1_000_000;
        r.end_batch(now, &b);
        while let Some(request) = r.poll_request() {
            match request {
                Request::SendControl { token, .. } => {
                    acks += 1;
                    r.complete(token, 16, now, &b);
                }
                Request::DrainErrors { socket } => {
                    r.on_errors_drained(socket, QueuedErrors::default(), now, &b);
                }
                Request::ReadSocketDrops => r.on_socket_drops(Some(0)),
                Request::ReadEgressMtu => r.on_egress_mtu(None, now),
                Request::Send { token, .. } | Request::Write { token } => {
                    r.complete(token, 1400, now, &b)
                }
            }
        }
        settle(&mut r, &b, &mut rng, 0, &mut now);
    }
    assert_eq!(acks, probes, "every probe answered");
    assert_eq!(r.stats().counters.control_received, probes);
    assert_eq!(r.stats().path.pmtu_probes_answered, probes);
    assert_eq!(r.stats().counters.control_unanswered, 0);
}

/// A read that fails ends the worker only after 64 failures in a row in its direction. A read
/// that brings something starts that direction's count again; a stall (ENOBUFS) or an
/// interrupted read is no failure; one direction's failures do not count for the other's.
#[test]
fn only_a_run_of_read_failures_ends_the_worker() {
    let fail = |r: &mut Relay, tun: bool, times: usize| {
        (0..times).all(|_| r.on_read_error(tun, libc::EIO).is_ok())
    };
    let mut r = relay();
    assert!(fail(&mut r, true, 63));
    assert!(fail(&mut r, false, 63), "the UDP side counts apart");
    for errno in [libc::ENOBUFS, libc::EINTR, libc::EAGAIN, libc::ECANCELED] {
        assert!(r.on_read_error(true, errno).is_ok());
    }
    assert_eq!(r.on_read_error(true, libc::EIO), Err(libc::EIO), "the 64th");

    let mut r = relay();
    assert!(fail(&mut r, true, 63));
    let bid = r.pop_free_tun().unwrap();
    let mut short = [0u8; 4];
    r.on_tun_read(bid, &mut short, 4, 0);
    assert!(
        fail(&mut r, true, 63),
        "a read that brought bytes starts again"
    );
    assert!(r.on_read_error(true, libc::EIO).is_err());

    let mut r = relay();
    assert!(fail(&mut r, false, 63));
    let bid = r.pop_free_udp().unwrap();
    r.on_unreadable_receive(bid);
    assert!(
        fail(&mut r, false, 63),
        "so does a receive, even an unreadable one"
    );
    assert!(r.on_read_error(false, libc::EIO).is_err());
}
