//! A fake engine that carries out no request but reports random results for them, to check the
//! buffer-lifetime bookkeeping without root or a kernel in the way: whatever the results (sent,
//! refused as too big, GSO unusable, a full buffer, a refused merged write), every buffer comes
//! back exactly once, nothing stays in flight, and every packet is counted once, as sent or as
//! dropped.

use super::*;
use crate::offload::test_packets::{Spec, build};
use crate::ring::Token;
use crate::stats::DropReason;
use std::net::UdpSocket;

/// A worker over real but idle sockets (the TUN fd is a socket too: no request reaches it).
fn worker() -> Worker {
    let socket = socket::udp_socket("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
    let tun = OwnedFd::from(UdpSocket::bind("127.0.0.1:0").unwrap());
    let config = WorkerConfig {
        queue: 0,
        cpu: None,
        engine: Engine::Poll,
        busy_poll: Duration::ZERO,
        tun,
        socket,
        fragmenting: None,
        peer: "127.0.0.1:9".parse().unwrap(),
        shared_path: Arc::new(SharedPath::new(1448)),
        path_machine: None,
        reply_budget: Arc::new(SharedBucket::new(Instant::now(), 200, 100)),
        mtu: 1420,
        ring_depth: 64,
        buffer_memory: 1 << 20,
        offloads: Offloads {
            tso: true,
            uso: true,
            udp_gso: true,
            udp_gro: true,
        },
        marking: crate::offload::ecn::Marking::DEFAULT,
        stop: Arc::new(AtomicBool::new(false)),
        snapshot_every: None,
        shared: Arc::new(crate::shared::Shared::new(1, "127.0.0.1:9".parse().unwrap())),
    };
    Worker::new(&config, Faults::from_env(), 0).unwrap()
}

/// xorshift64: reproducible, and enough to mix the results.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Closes batches and reports a result for every request, until none is left. `failures` in
/// 16ths: how often a request fails, and then with which error is random.
fn settle(w: &mut Worker, rng: &mut Rng, failures: u64) {
    for _ in 0..1000 {
        w.end_batch(w.now_ns());
        if w.requests.queued.is_empty() && w.requests.injected.is_empty() {
            return;
        }
        for request in std::mem::take(&mut w.requests.queued) {
            let fail = rng.below(16) < failures;
            let (token, result) = match request {
                Request::Send { token, .. } => {
                    let errors = [
                        libc::EMSGSIZE,
                        libc::EINVAL,
                        libc::EIO,
                        libc::ENOBUFS,
                        libc::ECONNREFUSED,
                    ];
                    let e = errors[rng.below(errors.len() as u64) as usize];
                    (token, if fail { -e } else { 1400 })
                }
                Request::Write { token, .. } => {
                    let e = [libc::EINVAL, libc::EIO][rng.below(2) as usize];
                    (token, if fail { -e } else { 1400 })
                }
            };
            w.complete(token, result, w.now_ns());
        }
    }
    panic!("requests kept coming after 1000 rounds");
}

fn all_back(free: &[u16], count: usize) {
    let mut free = free.to_vec();
    free.sort_unstable();
    assert_eq!(
        free,
        (0..count as u16).collect::<Vec<_>>(),
        "every buffer back, once"
    );
}

/// Writes a TUN read (`[virtio_net_hdr][packet]`) into a free buffer and hands it over.
fn tun_read(w: &mut Worker, header: [u8; vnet::LEN], packet: &[u8]) -> bool {
    let Some(bid) = w.tun_free.pop() else {
        return false;
    };
    // SAFETY: `bid` was free, and no request names it.
    let buffer = unsafe { w.memory.tun_buffers.buffer_mut(bid) };
    buffer[..vnet::LEN].copy_from_slice(&header);
    buffer[vnet::LEN..vnet::LEN + packet.len()].copy_from_slice(packet);
    w.on_tun_read(bid, vnet::LEN + packet.len(), w.now_ns());
    true
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
    for seed in 1..=40u64 {
        let mut w = worker();
        let mut rng = Rng(seed * 0x9e37_79b9_7f4a_7c15);
        let count = w.tun_read_at_ns.len();
        for round in 0..30u32 {
            // A burst: plain packets of a few flows and sizes (GSO batches and their ends), and
            // super-packets that split.
            for k in 0..rng.below(12) + 1 {
                let packet = build(&Spec {
                    payload_len: [1380, 1380, 1380, 600][rng.below(4) as usize],
                    sport: 40000 + rng.below(3) as u16,
                    seq: round * 100_000 + k as u32 * 1380,
                    ..Spec::default()
                });
                let read = if rng.below(4) == 0 {
                    let big = build(&Spec {
                        payload_len: 1000 * (rng.below(60) as usize + 2),
                        ..Spec::default()
                    });
                    tun_read(&mut w, tso_header(1000), &big)
                } else {
                    tun_read(&mut w, [0; vnet::LEN], &packet)
                };
                if !read {
                    break;
                }
            }
            let failures = rng.below(17);
            settle(&mut w, &mut rng, failures);
        }
        settle(&mut w, &mut rng, 0);
        all_back(&w.tun_free, count);
        assert_eq!(w.requests.in_flight, 0);
        assert!(w.memory.tun_slots.iter().all(|s| s.sends_pending == 0));
        let c = &w.stats.counters;
        assert_eq!(
            c.udp_tx_packets + c.total_drops(),
            c.tun_rx_packets,
            "seed {seed}: every packet sent or dropped, once: {c:?}"
        );
        assert!(c.tun_rx_packets > 100, "seed {seed}: {c:?}");
    }
}

#[test]
fn udp_buffers_all_come_back_and_every_datagram_is_counted_once_whatever_the_writes_return() {
    for seed in 1..=40u64 {
        let mut w = worker();
        let mut rng = Rng(seed * 0x2545_f491_4f6c_dd1d);
        let count = w.udp_read_at_ns.len();
        let layout = w.memory.layout;
        let (name, name_len) = socket::to_sockaddr(w.peer);
        // SAFETY: sockaddr_storage is plain data, at least `name_len` bytes long.
        let name = unsafe {
            std::slice::from_raw_parts(
                (&name as *const libc::sockaddr_storage).cast::<u8>(),
                name_len as usize,
            )
        }
        .to_vec();
        for round in 0..30u32 {
            for _ in 0..rng.below(6) + 1 {
                let Some(bid) = w.udp_free.pop() else {
                    break;
                };
                // A GRO buffer: runs of consecutive segments of two flows, which merge, and
                // the kernel may refuse the merged writes.
                let mut payload = Vec::new();
                let segments = rng.below(20) as u32 + 1;
                for s in 0..segments {
                    payload.extend(build(&Spec {
                        payload_len: 1000,
                        sport: 40000 + (s / 7) as u16,
                        seq: round * 1_000_000 + s * 1000,
                        id: s as u16,
                        ..Spec::default()
                    }));
                }
                // SAFETY: `bid` was free, and no request names it.
                let buffer = unsafe { w.memory.udp_buffers.buffer_mut(bid) };
                buffer[layout.head..layout.head + name.len()].copy_from_slice(&name);
                let at = layout.payload_at();
                buffer[at..at + payload.len()].copy_from_slice(&payload);
                let received = Received {
                    name: layout.head..layout.head + name.len(),
                    control: layout.head + layout.name_len..layout.head + layout.name_len,
                    payload: at..at + payload.len(),
                    payload_truncated: false,
                    // No UDP_GRO message: the first datagram's IP length is the stride.
                    control_truncated: true,
                };
                w.on_udp_recv(bid, received, w.now_ns());
            }
            let failures = rng.below(17);
            settle(&mut w, &mut rng, failures);
        }
        settle(&mut w, &mut rng, 0);
        all_back(&w.udp_free, count);
        assert_eq!(w.requests.in_flight, 0);
        assert!(w.memory.udp_slots.iter().all(|s| s.writes_pending == 0));
        let c = &w.stats.counters;
        assert_eq!(
            c.tun_tx_packets + c.drops_of(DropReason::TunWriteError),
            c.udp_rx_packets,
            "seed {seed}: every datagram written or dropped, once: {c:?}"
        );
        assert!(c.udp_rx_packets > 100, "seed {seed}: {c:?}");
        assert!(c.coalesced_writes > 0, "seed {seed}: runs merged");
    }
}

#[test]
fn a_request_token_names_what_the_worker_completes() {
    // The fake engine's premise: every queued request carries a token that `complete` takes.
    let mut w = worker();
    let packet = build(&Spec::default());
    assert!(tun_read(&mut w, [0; vnet::LEN], &packet));
    w.end_batch(w.now_ns());
    let [Request::Send { token, .. }] = w.requests.queued[..] else {
        panic!("one packet, one send: {:?}", w.requests.queued);
    };
    assert_eq!(token.op, Op::UdpSend);
    assert_eq!(Token::from_user_data(token.user_data()), Some(token));
}
