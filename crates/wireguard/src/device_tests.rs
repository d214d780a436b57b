//! Two devices talking through a fake network and a fake clock: handshakes, cookies, rotation,
//! timers, roaming, configuration. The "workers" here are the few lines a relay's worker runs:
//! load a table, seal or open, report activity.

use std::net::SocketAddr;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::constants::{
    KEEPALIVE_TIMEOUT_NS, MAX_TIMER_HANDSHAKES, REKEY_ATTEMPT_TIME_NS, REKEY_TIMEOUT_JITTER_MAX_NS,
    REKEY_TIMEOUT_NS,
};
use crate::messages::{COOKIE_REPLY_LEN, TYPE_COOKIE_REPLY};

const S: u64 = NANOS_PER_SECOND;
const UNIX_ORIGIN_NS: u64 = 1_750_000_000 * NANOS_PER_SECOND;

fn rng(seed: u64) -> Box<dyn CryptoRngCore + Send> {
    Box::new(ChaCha20Rng::seed_from_u64(seed))
}

struct Pair {
    a: Device,
    b: Device,
    /// B as A's peer.
    b_in_a: PeerId,
    /// A as B's peer.
    a_in_b: PeerId,
    a_address: SocketAddr,
    b_address: SocketAddr,
}

fn pair(psk: Option<[u8; 32]>) -> Pair {
    let a_key = PrivateKey::generate(&mut ChaCha20Rng::seed_from_u64(100));
    let b_key = PrivateKey::generate(&mut ChaCha20Rng::seed_from_u64(200));
    let a_public = a_key.public_key();
    let b_public = b_key.public_key();
    let mut a = Device::new(Some(a_key), UNIX_ORIGIN_NS, rng(1));
    let mut b = Device::new(Some(b_key), UNIX_ORIGIN_NS, rng(2));
    let b_in_a = a.add_peer(b_public).unwrap();
    let a_in_b = b.add_peer(a_public).unwrap();
    if let Some(psk) = psk {
        a.set_preshared_key(b_in_a, PresharedKey::from_bytes(psk));
        b.set_preshared_key(a_in_b, PresharedKey::from_bytes(psk));
    }
    let a_address: SocketAddr = "198.18.0.1:51820".parse().unwrap();
    let b_address: SocketAddr = "198.18.0.2:51820".parse().unwrap();
    a.set_endpoint(b_in_a, b_address);
    a.add_allowed_ip(b_in_a, "10.0.0.2/32".parse().unwrap());
    b.add_allowed_ip(a_in_b, "10.0.0.1/32".parse().unwrap());
    Pair {
        a,
        b,
        b_in_a,
        a_in_b,
        a_address,
        b_address,
    }
}

/// A worker sealing one packet for `peer`: `None` means no usable keypair.
fn seal(device: &Device, peer: PeerId, payload: &[u8], now_ns: u64) -> Option<Vec<u8>> {
    let plane = device.data_plane();
    let routes = plane.routes();
    let shared = routes.peer(peer)?;
    let keypair = shared.send_keypair()?;
    let counter = keypair.reserve_counters(1, now_ns)?.start;
    let mut datagram = vec![0u8; payload.len() + 64];
    let len = keypair.seal(counter, payload, &mut datagram).ok()?;
    datagram.truncate(len);
    shared
        .activity()
        .on_sent(now_ns, len as u64, !payload.is_empty());
    Some(datagram)
}

/// A worker opening one datagram from `source`; returns the (padded) plaintext.
fn open(
    device: &Device,
    mut datagram: Vec<u8>,
    source: SocketAddr,
    now_ns: u64,
) -> Result<Vec<u8>, OpenError> {
    let plane = device.data_plane();
    let receivers = plane.receivers();
    let index = u32::from_le_bytes(datagram[4..8].try_into().unwrap());
    let receiver = receivers.get(index).ok_or(OpenError::WrongIndex)?;
    let mut replay = receiver.keypair().lock_replay();
    let range = receiver.open_locked(&mut replay, &mut datagram, now_ns)?;
    let activity = receiver.peer().activity();
    activity.on_received(now_ns, datagram.len() as u64, !range.is_empty());
    receiver.peer().update_endpoint(source);
    Ok(datagram[range].to_vec())
}

fn padded(payload: &[u8]) -> Vec<u8> {
    let mut padded = payload.to_vec();
    padded.resize(payload.len().next_multiple_of(16), 0);
    padded
}

/// A asks for a handshake and it runs to completion (initiation, response, keepalive), all at
/// `now_ns`. Returns the keepalive B received.
fn handshake(pair: &mut Pair, now_ns: u64) {
    pair.a
        .peer(pair.b_in_a)
        .unwrap()
        .activity()
        .request_handshake(now_ns);
    let actions = pair.a.poll(now_ns);
    let initiation = actions
        .iter()
        .find_map(|action| match action {
            Action::SendInitiation { transmit, .. } => Some(transmit.clone()),
            _ => None,
        })
        .expect("an initiation");
    assert_eq!(initiation.to, pair.b_address);
    complete(pair, &initiation, now_ns);
}

/// Deliver `initiation` to B and the response back to A, then A's keepalive to B.
fn complete(pair: &mut Pair, initiation: &Transmit, now_ns: u64) {
    let outcome = pair
        .b
        .on_handshake_message(&initiation.datagram, pair.a_address, now_ns)
        .unwrap();
    let Outcome::Responded { peer, response } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(peer, pair.a_in_b);
    assert_eq!(response.to, pair.a_address);
    let outcome = pair
        .a
        .on_handshake_message(&response.datagram, pair.b_address, now_ns)
        .unwrap();
    let Outcome::SessionStarted {
        peer, keepalive, ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(peer, pair.b_in_a);
    assert_eq!(keepalive.datagram.len(), 32);
    assert_eq!(
        open(&pair.b, keepalive.datagram, pair.a_address, now_ns).unwrap(),
        Vec::<u8>::new()
    );
}

fn round_trip(pair: &mut Pair, now_ns: u64) {
    let to_b = seal(&pair.a, pair.b_in_a, b"from a to b", now_ns).expect("A can send");
    assert_eq!(
        open(&pair.b, to_b, pair.a_address, now_ns).unwrap(),
        padded(b"from a to b")
    );
    let to_a = seal(&pair.b, pair.a_in_b, b"and back", now_ns).expect("B can send");
    assert_eq!(
        open(&pair.a, to_a, pair.b_address, now_ns).unwrap(),
        padded(b"and back")
    );
}

#[test]
fn handshake_then_transport_both_ways_with_and_without_psk() {
    for psk in [None, Some([0x42; 32])] {
        let mut pair = pair(psk);
        handshake(&mut pair, S);
        round_trip(&mut pair, S);
        assert_eq!(pair.a.last_handshake_ns(pair.b_in_a), Some(S));
        // B's handshake completes when the confirming keepalive is seen by its timers.
        pair.b.poll(S);
        assert_eq!(pair.b.last_handshake_ns(pair.a_in_b), Some(S));
    }
}

#[test]
fn mismatched_psk_completes_no_session() {
    let mut pair = pair(None);
    pair.b
        .set_preshared_key(pair.a_in_b, PresharedKey::from_bytes([9; 32]));
    pair.a
        .peer(pair.b_in_a)
        .unwrap()
        .activity()
        .request_handshake(0);
    let Action::SendInitiation { transmit, .. } = &pair.a.poll(0)[0] else {
        panic!()
    };
    let Ok(Outcome::Responded { response, .. }) =
        pair.b
            .on_handshake_message(&transmit.datagram, pair.a_address, 0)
    else {
        panic!()
    };
    assert_eq!(
        pair.a
            .on_handshake_message(&response.datagram, pair.b_address, 0),
        Err(HandshakeError::DecryptFailed)
    );
    assert!(seal(&pair.a, pair.b_in_a, b"x", 0).is_none());
}

/// Poll `device` at its deadlines until it sends an initiation, for at most `limit_ns`.
fn next_initiation(device: &mut Device, limit_ns: u64) -> (Transmit, u64) {
    for _ in 0..100_000 {
        let now = device.next_timeout().expect("something scheduled");
        assert!(now <= limit_ns, "no initiation before {limit_ns}");
        for action in device.poll(now) {
            if let Action::SendInitiation { transmit, .. } = action {
                return (transmit, now);
            }
        }
    }
    panic!("no initiation")
}

/// The initiation A sends at `now_ns` once asked for a handshake.
fn initiation_from_a(pair: &mut Pair, now_ns: u64) -> Transmit {
    pair.a
        .peer(pair.b_in_a)
        .unwrap()
        .activity()
        .request_handshake(now_ns);
    polled_initiation(&mut pair.a, now_ns)
}

/// The initiation `device`'s poll at `now_ns` sends: its timers or a request asked for one.
fn polled_initiation(device: &mut Device, now_ns: u64) -> Transmit {
    device
        .poll(now_ns)
        .into_iter()
        .find_map(|action| match action {
            Action::SendInitiation { transmit, .. } => Some(transmit),
            _ => None,
        })
        .expect("an initiation")
}

#[test]
fn a_wrong_mac1_is_dropped_before_any_work() {
    let mut pair = pair(None);
    let initiation = initiation_from_a(&mut pair, 0);
    for byte in [0x20, 116, 131] {
        let mut tampered = initiation.datagram.clone();
        tampered[byte] ^= 1;
        assert_eq!(
            pair.b.on_handshake_message(&tampered, pair.a_address, 0),
            Err(HandshakeError::InvalidMac1),
            "byte {byte}"
        );
    }
    // An initiation for another device (mac1 keyed by another public key).
    let mut third = Device::new(
        Some(PrivateKey::generate(&mut ChaCha20Rng::seed_from_u64(300))),
        0,
        rng(3),
    );
    assert_eq!(
        third.on_handshake_message(&initiation.datagram, pair.a_address, 0),
        Err(HandshakeError::InvalidMac1)
    );
}

#[test]
fn a_replayed_initiation_is_refused() {
    let mut pair = pair(None);
    let initiation = initiation_from_a(&mut pair, 0);
    assert!(matches!(
        pair.b
            .on_handshake_message(&initiation.datagram, pair.a_address, 0),
        Ok(Outcome::Responded { .. })
    ));
    // The same bytes a minute later: same timestamp.
    assert_eq!(
        pair.b
            .on_handshake_message(&initiation.datagram, pair.a_address, 60 * S),
        Err(HandshakeError::ReplayedTimestamp)
    );
    // A fresh initiation 10 ms after the first is a flood (more than 50 a second).
    let (transmit, _) = next_initiation(&mut pair.a, 10 * S);
    assert_eq!(
        pair.b
            .on_handshake_message(&transmit.datagram, pair.a_address, 10_000_000),
        Err(HandshakeError::InitiationFlood)
    );
}

#[test]
fn under_load_a_cookie_is_required_and_then_accepted() {
    let mut pair = pair(None);
    pair.b.set_under_load(true);
    let first = initiation_from_a(&mut pair, 0);
    let Ok(Outcome::CookieReplied { reply }) =
        pair.b
            .on_handshake_message(&first.datagram, pair.a_address, 0)
    else {
        panic!("expected a cookie reply")
    };
    assert_eq!(reply.to, pair.a_address);
    assert_eq!(reply.datagram.len(), COOKIE_REPLY_LEN);
    assert_eq!(&reply.datagram[..4], &TYPE_COOKIE_REPLY.to_le_bytes());
    assert_eq!(
        pair.a
            .on_handshake_message(&reply.datagram, pair.b_address, 0),
        Ok(Outcome::CookieStored { peer: pair.b_in_a })
    );
    // The retransmission carries mac2 and gets through.
    let (retry, when) = next_initiation(&mut pair.a, 10 * S);
    assert!((REKEY_TIMEOUT_NS..=REKEY_TIMEOUT_NS + REKEY_TIMEOUT_JITTER_MAX_NS).contains(&when));
    assert_ne!(&retry.datagram[132..], &[0u8; 16]);
    complete(&mut pair, &retry, when);
    round_trip(&mut pair, when);
    // From another address the same cookie is worthless.
    let other: SocketAddr = "198.18.0.9:51820".parse().unwrap();
    let again = initiation_from_a(&mut pair, when + REKEY_TIMEOUT_NS);
    assert!(matches!(
        pair.b
            .on_handshake_message(&again.datagram, other, when + REKEY_TIMEOUT_NS),
        Ok(Outcome::CookieReplied { .. })
    ));
}

#[test]
fn a_forged_cookie_reply_is_refused() {
    let mut pair = pair(None);
    let initiation = initiation_from_a(&mut pair, 0);
    pair.b.set_under_load(true);
    let Ok(Outcome::CookieReplied { reply }) =
        pair.b
            .on_handshake_message(&initiation.datagram, pair.a_address, 0)
    else {
        panic!()
    };
    let mut forged = reply.datagram.clone();
    forged[40] ^= 1;
    assert_eq!(
        pair.a.on_handshake_message(&forged, pair.b_address, 0),
        Err(HandshakeError::InvalidCookieReply)
    );
    let mut wrong_index = reply.datagram.clone();
    wrong_index[4] ^= 1;
    assert_eq!(
        pair.a.on_handshake_message(&wrong_index, pair.b_address, 0),
        Err(HandshakeError::UnknownIndex)
    );
    // The genuine one still works after the forgeries.
    assert_eq!(
        pair.a
            .on_handshake_message(&reply.datagram, pair.b_address, 0),
        Ok(Outcome::CookieStored { peer: pair.b_in_a })
    );
}

/// Traffic both ways every second for three rekeys. Each second both sides must have a key to
/// send with, and every datagram must open; the initiator rekeys on REKEY_AFTER_TIME.
#[test]
fn keypairs_rotate_across_three_rekeys_without_a_gap() {
    let mut pair = pair(Some([1; 32]));
    handshake(&mut pair, 0);
    let mut rekeys = 0;
    let mut indices = vec![
        pair.a
            .peer(pair.b_in_a)
            .unwrap()
            .send_keypair()
            .unwrap()
            .local_index(),
    ];
    for second in 1..=400u64 {
        let now = second * S;
        round_trip(&mut pair, now);
        for action in pair.a.poll(now) {
            match action {
                Action::SendInitiation {
                    transmit, reason, ..
                } => {
                    assert_eq!(reason, InitiationReason::RekeyAfterTime, "at {second} s");
                    // The old keys keep working while the handshake is in flight.
                    round_trip(&mut pair, now);
                    complete(&mut pair, &transmit, now);
                    rekeys += 1;
                    indices.push(
                        pair.a
                            .peer(pair.b_in_a)
                            .unwrap()
                            .send_keypair()
                            .unwrap()
                            .local_index(),
                    );
                }
                Action::SendKeepalive { .. } => {}
                other => panic!("unexpected {other:?} at {second} s"),
            }
        }
        for action in pair.b.poll(now) {
            assert!(
                matches!(action, Action::SendKeepalive { .. }),
                "unexpected {action:?} at {second} s"
            );
        }
    }
    assert_eq!(rekeys, 3);
    indices.dedup();
    assert_eq!(indices.len(), 4);
    // Only the keypairs still in a slot can open datagrams: previous and current on each side.
    assert_eq!(pair.a.data_plane().receivers().len(), 2);
    assert_eq!(pair.b.data_plane().receivers().len(), 2);
}

#[test]
fn the_responder_sends_under_the_new_keypair_once_confirmed() {
    let mut pair = pair(None);
    handshake(&mut pair, 0);
    let first_b_keypair = pair.b.peer(pair.a_in_b).unwrap().send_keypair().unwrap();
    // A second handshake: B's new keypair waits in `next` until A sends under it.
    let initiation = initiation_from_a(&mut pair, REKEY_TIMEOUT_NS);
    let Ok(Outcome::Responded { response, .. }) =
        pair.b
            .on_handshake_message(&initiation.datagram, pair.a_address, REKEY_TIMEOUT_NS)
    else {
        panic!()
    };
    let still = pair.b.peer(pair.a_in_b).unwrap().send_keypair().unwrap();
    assert!(Arc::ptr_eq(&still, &first_b_keypair));
    // B still sends (under the old keypair) and A still opens it.
    let to_a = seal(&pair.b, pair.a_in_b, b"old keys", REKEY_TIMEOUT_NS).unwrap();
    assert!(open(&pair.a, to_a, pair.b_address, REKEY_TIMEOUT_NS).is_ok());
    let Ok(Outcome::SessionStarted { keepalive, .. }) =
        pair.a
            .on_handshake_message(&response.datagram, pair.b_address, REKEY_TIMEOUT_NS)
    else {
        panic!()
    };
    // The worker that opens A's keepalive switches B to the new keypair, before any poll.
    open(
        &pair.b,
        keepalive.datagram,
        pair.a_address,
        REKEY_TIMEOUT_NS,
    )
    .unwrap();
    let now = pair.b.peer(pair.a_in_b).unwrap().send_keypair().unwrap();
    assert!(!Arc::ptr_eq(&now, &first_b_keypair));
    round_trip(&mut pair, REKEY_TIMEOUT_NS);
}

#[test]
fn a_keepalive_answers_data_after_keepalive_timeout() {
    let mut pair = pair(None);
    handshake(&mut pair, 0);
    let t = S;
    let datagram = seal(&pair.a, pair.b_in_a, b"data", t).unwrap();
    open(&pair.b, datagram, pair.a_address, t).unwrap();
    let deadline = pair.b.next_timeout().unwrap();
    assert!(deadline <= t + KEEPALIVE_TIMEOUT_NS);
    assert!(pair.b.poll(t + KEEPALIVE_TIMEOUT_NS - 1).is_empty());
    let actions = pair.b.poll(t + KEEPALIVE_TIMEOUT_NS);
    let [Action::SendKeepalive { peer, transmit }] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(*peer, pair.a_in_b);
    assert_eq!(transmit.to, pair.a_address);
    assert_eq!(
        open(
            &pair.a,
            transmit.datagram.clone(),
            pair.b_address,
            t + KEEPALIVE_TIMEOUT_NS
        ),
        Ok(Vec::new())
    );
    // Answered: no second keepalive.
    assert!(pair.b.poll(t + 3 * KEEPALIVE_TIMEOUT_NS).is_empty());
}

#[test]
fn sending_data_that_gets_no_answer_starts_a_handshake() {
    let mut pair = pair(None);
    handshake(&mut pair, 0);
    let datagram = seal(&pair.a, pair.b_in_a, b"into the void", S).unwrap();
    drop(datagram);
    let quiet = S + KEEPALIVE_TIMEOUT_NS + REKEY_TIMEOUT_NS;
    let mut reasons = Vec::new();
    for step in 0..=400u64 {
        let now = quiet + step * REKEY_TIMEOUT_JITTER_MAX_NS / 400;
        for action in pair.a.poll(now) {
            if let Action::SendInitiation { reason, .. } = action {
                reasons.push((reason, now));
            }
        }
    }
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert_eq!(reasons[0].0, InitiationReason::StoppedHearingBack);
}

#[test]
fn initiations_retransmit_then_give_up_then_keys_are_zeroed() {
    let mut pair = pair(None);
    handshake(&mut pair, 0);
    // B vanishes. A wants a new handshake at 10 s.
    let start = 10 * S;
    let _ = initiation_from_a(&mut pair, start);
    let mut sent_at = vec![start];
    let mut gave_up = None;
    let mut zeroed = None;
    let mut now = start;
    for _ in 0..10_000 {
        let Some(next) = pair.a.next_timeout() else {
            break;
        };
        assert!(next >= now);
        now = next;
        for action in pair.a.poll(now) {
            match action {
                Action::SendInitiation { reason, .. } => {
                    assert_eq!(reason, InitiationReason::Retransmit);
                    let gap = now - sent_at.last().unwrap();
                    assert!(
                        (REKEY_TIMEOUT_NS..=REKEY_TIMEOUT_NS + REKEY_TIMEOUT_JITTER_MAX_NS)
                            .contains(&gap),
                        "gap {gap}"
                    );
                    sent_at.push(now);
                }
                Action::HandshakeGaveUp { .. } => gave_up = Some(now),
                Action::KeysZeroed { .. } => zeroed = Some(now),
                Action::SendKeepalive { .. } => {}
                Action::SendStaged { .. } | Action::StagedPurged { .. } => {
                    panic!("nothing was staged: {action:?}")
                }
            }
        }
        if zeroed.is_some() {
            break;
        }
    }
    assert_eq!(sent_at.len() as u32, MAX_TIMER_HANDSHAKES + 2);
    let gave_up = gave_up.expect("gave up");
    assert!(gave_up - start >= REKEY_ATTEMPT_TIME_NS);
    // The session from time 0 was rejected at REJECT_AFTER_TIME: nothing to send with.
    assert!(seal(&pair.a, pair.b_in_a, b"x", gave_up).is_none());
    // Zeroing was already due 3 * REJECT_AFTER_TIME after the session of time 0; giving up
    // does not postpone it (`timers.c` arms it only if not pending).
    assert_eq!(zeroed, Some(3 * REJECT_AFTER_TIME_NS));
    assert!(pair.a.data_plane().receivers().is_empty());
    assert_eq!(pair.a.next_timeout(), None);
}

#[test]
fn keys_expire_after_reject_after_time_and_are_zeroed_after_three_times_that() {
    let mut pair = pair(None);
    handshake(&mut pair, 0);
    pair.b.poll(0);
    let before = seal(&pair.a, pair.b_in_a, b"late", REJECT_AFTER_TIME_NS - 1).unwrap();
    // B, the responder, never rekeys on time; its keys simply expire.
    let actions = pair.b.poll(REJECT_AFTER_TIME_NS);
    assert!(actions.is_empty(), "{actions:?}");
    assert!(seal(&pair.b, pair.a_in_b, b"x", REJECT_AFTER_TIME_NS).is_none());
    assert_eq!(
        open(&pair.b, before, pair.a_address, REJECT_AFTER_TIME_NS),
        Err(OpenError::WrongIndex)
    );
    let mut zeroed_at = None;
    for _ in 0..100_000 {
        let Some(now) = pair.b.next_timeout() else {
            break;
        };
        if pair
            .b
            .poll(now)
            .iter()
            .any(|action| matches!(action, Action::KeysZeroed { .. }))
        {
            zeroed_at = Some(now);
            break;
        }
    }
    assert_eq!(zeroed_at, Some(3 * REJECT_AFTER_TIME_NS));
}

#[test]
fn the_initiator_rekeys_before_reject_after_time_when_it_only_receives() {
    let mut pair = pair(None);
    handshake(&mut pair, 0);
    pair.b.poll(0);
    let mut reasons = Vec::new();
    // B sends to A at 100 s (A's passive keepalive answers at 110 s, before REKEY_AFTER_TIME:
    // no rekey) and again at 166 s, past REJECT - KEEPALIVE - REKEY_TIMEOUT: A rekeys once.
    for second in [100, 110, 166, 167, 168] {
        let now = second * S;
        if second == 110 {
            for action in pair.a.poll(now) {
                let Action::SendKeepalive { transmit, .. } = action else {
                    panic!("{action:?}")
                };
                open(&pair.b, transmit.datagram, pair.a_address, now).unwrap();
            }
            continue;
        }
        let datagram = seal(&pair.b, pair.a_in_b, b"one-way", now).unwrap();
        open(&pair.a, datagram, pair.b_address, now).unwrap();
        for action in pair.a.poll(now) {
            match action {
                Action::SendInitiation { reason, .. } => reasons.push((reason, second)),
                Action::SendKeepalive { transmit, .. } => {
                    open(&pair.b, transmit.datagram, pair.a_address, now).unwrap();
                }
                other => panic!("{other:?}"),
            }
        }
        pair.b.poll(now);
    }
    assert_eq!(reasons, vec![(InitiationReason::RejectAfterTimeNear, 166)]);
}

#[test]
fn roaming_follows_the_latest_authenticated_datagram() {
    let mut pair = pair(None);
    handshake(&mut pair, 0);
    assert_eq!(
        pair.b.peer(pair.a_in_b).unwrap().endpoint(),
        Some(pair.a_address)
    );
    let moved: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    let datagram = seal(&pair.a, pair.b_in_a, b"from elsewhere", S).unwrap();
    // A forged copy from a third address does not move the endpoint.
    let mut forged = datagram.clone();
    forged[20] ^= 1;
    let spoofed: SocketAddr = "198.18.0.66:1".parse().unwrap();
    assert!(open(&pair.b, forged, spoofed, S).is_err());
    assert_eq!(
        pair.b.peer(pair.a_in_b).unwrap().endpoint(),
        Some(pair.a_address)
    );
    open(&pair.b, datagram, moved, S).unwrap();
    assert_eq!(pair.b.peer(pair.a_in_b).unwrap().endpoint(), Some(moved));
}

#[test]
fn cryptokey_routing_is_published_to_workers() {
    let pair = pair(None);
    let plane = pair.a.data_plane();
    let routes = plane.routes();
    assert_eq!(
        routes
            .lookup("10.0.0.2".parse().unwrap())
            .map(|peer| peer.id()),
        Some(pair.b_in_a)
    );
    assert!(routes.lookup("10.0.0.3".parse().unwrap()).is_none());
    assert!(routes.allows(pair.b_in_a, "10.0.0.2".parse().unwrap()));
    assert!(!routes.allows(pair.b_in_a, "10.0.0.1".parse().unwrap()));
}

#[test]
fn several_peers_per_device_each_get_their_own_session() {
    let hub_key = PrivateKey::generate(&mut ChaCha20Rng::seed_from_u64(10));
    let hub_public = hub_key.public_key();
    let mut hub = Device::new(Some(hub_key), 0, rng(10));
    let mut spokes = Vec::new();
    for n in 0..3u64 {
        let key = PrivateKey::generate(&mut ChaCha20Rng::seed_from_u64(20 + n));
        let public = key.public_key();
        let mut spoke = Device::new(Some(key), 0, rng(20 + n));
        let hub_id = spoke.add_peer(hub_public).unwrap();
        let hub_address: SocketAddr = "198.18.1.1:51820".parse().unwrap();
        spoke.set_endpoint(hub_id, hub_address);
        let spoke_id = hub.add_peer(public).unwrap();
        let address: SocketAddr = format!("198.18.2.{}:51820", n + 1).parse().unwrap();
        spoke.peer(hub_id).unwrap().activity().request_handshake(0);
        let Action::SendInitiation { transmit, .. } = &spoke.poll(0)[0] else {
            panic!()
        };
        let Ok(Outcome::Responded { peer, response }) =
            hub.on_handshake_message(&transmit.datagram, address, 0)
        else {
            panic!()
        };
        assert_eq!(peer, spoke_id);
        let Ok(Outcome::SessionStarted { keepalive, .. }) =
            spoke.on_handshake_message(&response.datagram, hub_address, 0)
        else {
            panic!()
        };
        open(&hub, keepalive.datagram, address, 0).unwrap();
        spokes.push((spoke, hub_id, spoke_id, address));
    }
    for (spoke, _, spoke_id, address) in &spokes {
        let reply = seal(&hub, *spoke_id, b"hello spoke", S).unwrap();
        assert_eq!(
            open(spoke, reply, *address, S).unwrap(),
            padded(b"hello spoke")
        );
    }
    assert_eq!(hub.data_plane().receivers().len(), 3);
}

#[test]
fn configuration_applies_and_reads_back_through_uapi() {
    let mut device = Device::new(None, UNIX_ORIGIN_NS, rng(5));
    let private = PrivateKey::generate(&mut ChaCha20Rng::seed_from_u64(5));
    let peer = PrivateKey::generate(&mut ChaCha20Rng::seed_from_u64(6)).public_key();
    let body = format!(
        "private_key={}\nlisten_port=51820\nreplace_peers=true\npublic_key={}\n\
         endpoint=198.18.0.2:51820\npersistent_keepalive_interval=25\n\
         replace_allowed_ips=true\nallowed_ip=10.0.0.0/8\nallowed_ip=10.9.0.0/16\n\
         allowed_ip=-10.9.0.0/16\n",
        private.to_hex().as_str(),
        peer.to_hex()
    );
    device
        .apply(&crate::uapi::parse_set(&body).unwrap())
        .unwrap();
    assert_eq!(device.public_key(), Some(private.public_key()));
    let text = crate::uapi::format_get(&device.view());
    assert!(text.starts_with(&format!(
        "private_key={}\nlisten_port=51820\n",
        private.to_hex().as_str()
    )));
    assert!(text.contains(&format!("public_key={}\n", peer.to_hex())));
    assert!(text.contains("endpoint=198.18.0.2:51820\n"));
    assert!(text.contains("persistent_keepalive_interval=25\n"));
    assert!(text.contains("allowed_ip=10.0.0.0/8\n"));
    assert!(!text.contains("10.9.0.0"));
    assert!(text.ends_with("errno=0\n\n"));
    // Turning PersistentKeepalive on asks for a keepalive at once: with no session, that is a
    // handshake.
    let actions = device.poll(0);
    assert!(matches!(
        actions.as_slice(),
        [Action::SendInitiation {
            reason: InitiationReason::NoKeypair,
            ..
        }]
    ));
    // A file with a host name is refused whole until resolved.
    let file = format!(
        "[Peer]\nPublicKey = {}\nEndpoint = vpn.example.net:51820\n",
        peer.to_base64()
    );
    let operations = crate::config::parse_config_file(&file).unwrap();
    assert_eq!(
        device.apply(&operations),
        Err(ApplyError::UnresolvedEndpoint { public_key: peer })
    );
    assert_eq!(device.view().peers.len(), 1);
    // remove=true removes.
    let remove = format!("public_key={}\nremove=true\n", peer.to_hex());
    device
        .apply(&crate::uapi::parse_set(&remove).unwrap())
        .unwrap();
    assert!(device.view().peers.is_empty());
    assert!(
        device
            .data_plane()
            .routes()
            .lookup("10.0.0.1".parse().unwrap())
            .is_none()
    );
}

#[test]
fn a_device_is_never_its_own_peer() {
    let key = PrivateKey::generate(&mut ChaCha20Rng::seed_from_u64(8));
    let public = key.public_key();
    let mut device = Device::new(Some(key.clone()), 0, rng(8));
    assert_eq!(device.add_peer(public), None);
    let mut other = Device::new(None, 0, rng(9));
    let id = other.add_peer(public).unwrap();
    other.set_private_key(Some(key));
    assert!(other.peer(id).is_none());
}

#[test]
fn the_shared_types_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Keypair>();
    send_sync::<DataPlane>();
    send_sync::<PeerShared>();
    send_sync::<ReceiverTable>();
    send_sync::<RouteTable>();
    send::<Device>();
}

#[test]
fn a_persistent_keepalive_without_an_endpoint_does_not_spin() {
    let mut device = Device::new(
        Some(PrivateKey::generate(&mut ChaCha20Rng::seed_from_u64(40))),
        0,
        rng(40),
    );
    let peer = device
        .add_peer(PrivateKey::generate(&mut ChaCha20Rng::seed_from_u64(41)).public_key())
        .unwrap();
    device.set_persistent_keepalive(peer, 1);
    let mut polls = 0;
    let mut now = 0;
    while let Some(next) = device.next_timeout() {
        assert!(next >= now);
        now = next;
        if now > 200 * S {
            break;
        }
        device.poll(now);
        polls += 1;
        assert!(polls < 1000, "{polls} polls by {now} ns");
    }
}

/// What A's worker does with a packet for B while there is no session: stage it, then ask for
/// a handshake.
fn stage_at_a(pair: &Pair, packet: &[u8], now_ns: u64) -> u64 {
    let shared = pair.a.peer(pair.b_in_a).unwrap();
    assert!(shared.send_keypair().is_none(), "no session yet");
    let dropped = shared.stage(&[packet], packet.len().next_multiple_of(16));
    shared.activity().request_handshake(now_ns);
    dropped
}

#[test]
fn packets_staged_without_a_session_go_out_in_order_once_it_starts() {
    let mut pair = pair(None);
    let packets: Vec<Vec<u8>> = (0..3u8).map(|k| vec![k; 40 + usize::from(k)]).collect();
    for packet in &packets {
        assert_eq!(stage_at_a(&pair, packet, S), 0);
    }
    let initiation = polled_initiation(&mut pair.a, S);
    let Ok(Outcome::Responded { response, .. }) =
        pair.b
            .on_handshake_message(&initiation.datagram, pair.a_address, S + 1)
    else {
        panic!("B answers")
    };
    let outcome = pair
        .a
        .on_handshake_message(&response.datagram, pair.b_address, S + 2)
        .unwrap();
    let Outcome::SessionStarted {
        keepalive, staged, ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(
        pair.a.peer(pair.b_in_a).unwrap().staged().is_empty(),
        "taken"
    );
    // The keepalive confirms B's keypair; then the staged packets arrive whole, in order,
    // under the next counters.
    assert_eq!(
        open(&pair.b, keepalive.datagram, pair.a_address, S + 3),
        Ok(vec![])
    );
    for (k, (transmit, packet)) in staged.iter().zip(&packets).enumerate() {
        assert_eq!(transmit.to, pair.b_address);
        let counter = u64::from_le_bytes(transmit.datagram[8..16].try_into().unwrap());
        assert_eq!(counter, 1 + k as u64);
        let opened = open(&pair.b, transmit.datagram.clone(), pair.a_address, S + 3).unwrap();
        assert_eq!(opened, padded(packet));
    }
    assert_eq!(staged.len(), 3);
    let sent = pair
        .a
        .peer(pair.b_in_a)
        .unwrap()
        .activity()
        .last_data_sent_ns();
    assert_eq!(sent, Some(S + 2), "counted as data sent, for the timers");
    // Nothing is left for a poll to send.
    assert!(
        !pair
            .a
            .poll(S + 4)
            .iter()
            .any(|action| matches!(action, Action::SendStaged { .. }))
    );
}

#[test]
fn staged_packets_are_purged_when_the_handshake_gives_up() {
    let mut pair = pair(None);
    for k in 0..5u8 {
        stage_at_a(&pair, &[k; 60], S);
    }
    let _ = polled_initiation(&mut pair.a, S);
    // B never answers: A retries until REKEY_ATTEMPT_TIME, then gives up and purges.
    let mut purged = None;
    for _ in 0..10_000 {
        let Some(now) = pair.a.next_timeout() else {
            break;
        };
        for action in pair.a.poll(now) {
            match action {
                Action::StagedPurged { peer, packets } => {
                    assert_eq!(peer, pair.b_in_a);
                    purged = Some((packets, now));
                }
                Action::SendStaged { .. } => panic!("no session: nothing may be sent"),
                _ => {}
            }
        }
        if purged.is_some() {
            break;
        }
    }
    let (packets, at) = purged.expect("purged on giving up");
    assert_eq!(packets, 5);
    assert!(at - S >= REKEY_ATTEMPT_TIME_NS, "{at}");
    assert!(pair.a.peer(pair.b_in_a).unwrap().staged().is_empty());
}

#[test]
fn packets_staged_while_a_session_was_confirmed_go_at_the_next_poll() {
    let mut pair = pair(None);
    // B has A's endpoint only once A initiated; A's initiation makes B the responder, whose
    // keypair may not send until A's first datagram confirms it.
    let initiation = initiation_from_a(&mut pair, S);
    let Ok(Outcome::Responded { response, .. }) =
        pair.b
            .on_handshake_message(&initiation.datagram, pair.a_address, S + 1)
    else {
        panic!("B answers")
    };
    let a_in_b = pair.b.peer(pair.a_in_b).unwrap().clone();
    assert!(a_in_b.send_keypair().is_none(), "unconfirmed");
    a_in_b.stage(&[b"reply to a".as_slice()], 16);
    assert!(pair.b.poll(S + 2).is_empty(), "still unconfirmed");
    let Ok(Outcome::SessionStarted { keepalive, .. }) =
        pair.a
            .on_handshake_message(&response.datagram, pair.b_address, S + 3)
    else {
        panic!("A's session starts")
    };
    // B's worker opens A's keepalive, which confirms the keypair: the poll sends what waited.
    open(&pair.b, keepalive.datagram, pair.a_address, S + 4).unwrap();
    assert!(
        pair.b.next_timeout().is_some_and(|at| at <= S + 4),
        "due at once"
    );
    let sent: Vec<Transmit> = pair
        .b
        .poll(S + 4)
        .into_iter()
        .filter_map(|action| match action {
            Action::SendStaged { transmit, .. } => Some(transmit),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, pair.a_address);
    let opened = open(&pair.a, sent[0].datagram.clone(), pair.b_address, S + 5).unwrap();
    assert_eq!(opened, padded(b"reply to a"));
}

#[test]
fn a_removed_peers_staged_packets_are_counted_at_the_next_poll() {
    let mut pair = pair(None);
    stage_at_a(&pair, &[1; 20], S);
    stage_at_a(&pair, &[2; 20], S);
    pair.a.remove_peer(pair.b_in_a);
    assert!(
        pair.a.next_timeout().is_some_and(|at| at <= S),
        "due at once"
    );
    let actions = pair.a.poll(S);
    assert!(
        actions.contains(&Action::StagedPurged {
            peer: pair.b_in_a,
            packets: 2
        }),
        "{actions:?}"
    );
    assert!(pair.a.poll(S + 1).is_empty());
}

#[test]
fn without_a_poll_a_session_still_stops_at_reject_after_time() {
    // The control thread is busy (a handshake flood) and never looks at the keypairs: the
    // workers refuse them on their own once REJECT_AFTER_TIME has passed.
    let mut pair = pair(None);
    handshake(&mut pair, 0);
    round_trip(&mut pair, 1);
    let last = REJECT_AFTER_TIME_NS - 1;
    let datagram = seal(&pair.a, pair.b_in_a, b"in time", last).expect("still in time");
    assert!(open(&pair.b, datagram.clone(), pair.a_address, last).is_ok());
    assert_eq!(
        seal(&pair.a, pair.b_in_a, b"late", REJECT_AFTER_TIME_NS),
        None
    );
    let late = seal(&pair.b, pair.a_in_b, b"late", last).unwrap();
    assert_eq!(
        open(&pair.a, late, pair.b_address, REJECT_AFTER_TIME_NS),
        Err(OpenError::Expired)
    );
}

#[test]
fn a_datagram_under_an_older_unconfirmed_keypair_does_not_make_it_the_send_keypair() {
    let mut pair = pair(None);
    let now = 10 * S;
    // A initiates and B responds: B's K1 waits in `next`; A's session starts on K1, and A's
    // keepalive is lost.
    let first = initiation_from_a(&mut pair, now);
    let Ok(Outcome::Responded { response, .. }) =
        pair.b
            .on_handshake_message(&first.datagram, pair.a_address, now)
    else {
        panic!("B responds")
    };
    let Ok(Outcome::SessionStarted { .. }) =
        pair.a
            .on_handshake_message(&response.datagram, pair.b_address, now)
    else {
        panic!("A's session starts")
    };
    // B has data and nothing to send it with: it initiates, and its own session K2 starts;
    // the unconfirmed K1 moves to `previous`.
    pair.b
        .peer(pair.a_in_b)
        .unwrap()
        .activity()
        .request_handshake(now);
    let second = polled_initiation(&mut pair.b, now);
    let Ok(Outcome::Responded { response, .. }) =
        pair.a
            .on_handshake_message(&second.datagram, pair.b_address, now + 1)
    else {
        panic!("A responds")
    };
    let Ok(Outcome::SessionStarted { .. }) =
        pair.b
            .on_handshake_message(&response.datagram, pair.a_address, now + 1)
    else {
        panic!("B's session starts")
    };
    let k2 = send_index(&pair.b, pair.a_in_b);
    // A still sends under K1 (its K2 waits for B's first datagram); B opens it under K1.
    let data = seal(&pair.a, pair.b_in_a, b"x", now + 2).unwrap();
    open(&pair.b, data, pair.a_address, now + 2).unwrap();
    assert_eq!(
        send_index(&pair.b, pair.a_in_b),
        k2,
        "B went back to sending under the older K1"
    );
    pair.b.poll(now + 3);
    assert_eq!(send_index(&pair.b, pair.a_in_b), k2);
}

/// The local index of `peer`'s send keypair in `device`.
fn send_index(device: &Device, peer: PeerId) -> u32 {
    device
        .peer(peer)
        .and_then(|shared| shared.send_keypair())
        .expect("a send keypair")
        .local_index()
}

#[test]
fn under_load_holds_for_a_second_after_the_queue_was_last_deep() {
    let mut pair = pair(None);
    let t = 50 * S;
    pair.b.judge_load(false, t);
    assert!(!pair.b.is_under_load());
    pair.b.judge_load(true, t);
    assert!(pair.b.is_under_load());
    // The queue dips below the threshold: still under load for the rest of the second, so an
    // initiation without mac2 gets a cookie reply, not X25519.
    pair.b.judge_load(false, t + UNDER_LOAD_HOLD_NS - 1);
    assert!(pair.b.is_under_load());
    let initiation = initiation_from_a(&mut pair, t + UNDER_LOAD_HOLD_NS - 1);
    assert!(matches!(
        pair.b.on_handshake_message(
            &initiation.datagram,
            pair.a_address,
            t + UNDER_LOAD_HOLD_NS - 1
        ),
        Ok(Outcome::CookieReplied { .. })
    ));
    // Deep again restarts the second; a second after the last deep look, the load is over.
    pair.b.judge_load(true, t + 2 * S);
    pair.b.judge_load(false, t + 3 * S - 1);
    assert!(pair.b.is_under_load());
    pair.b.judge_load(false, t + 3 * S);
    assert!(!pair.b.is_under_load());
}
