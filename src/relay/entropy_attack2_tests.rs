//! Second attack review of outer flow entropy (issue 22): its proofs of concept, turned into
//! regression tests. Each asserts that the attack FAILS (its doc says what the attack was and
//! what stops it now); `holds_` ones show defences that held.
use super::entropy::{Advertiser, PeerAdvertisement, SourcePorts};
use crate::wire::control::Advertisement;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
/// Relay A's (the victim receiver's) cookie, and relay B's.
const A_COOKIE: u64 = 0x0a0a_c00c;
const B_COOKIE: u64 = 0x0b0b_c00c;
const S1: u64 = 0x5151; // B's first run
const S2: u64 = 0x5252; // B's second run
const S3: u64 = 0x5353; // a session the attacker made up

fn counter(start: u64) -> impl FnMut() -> u64 {
    let mut n = start;
    move || {
        n += 1;
        n
    }
}

/// Finding A, fixed: when the peer was silent for longer than PEER_PORTS_FOR_NS before it
/// restarted, its session was forgotten, so the restart was not seen as one and a replay of the
/// dead run's proven advertisement (an on-path observer's) was taken, reinstating the dead
/// run's ports. Now forgetting the peer replaces the cookie and drops the one before: the dead
/// run's advertisements prove nothing again, and the live run proves itself with the new cookie
/// its first answer hands it.
#[test]
fn a_dead_runs_advertisement_replayed_after_a_silence_proves_nothing() {
    let a = SourcePorts::new(&[50000], 0xaaaa, A_COOKIE);
    let mut adv = Advertiser::new();
    let mut nonce = counter(1000);
    let run1 = Advertisement::new(7, S1, A_COOKIE, &[40000, 40001]).unwrap();
    assert_eq!(
        a.accept_peer(&run1),
        PeerAdvertisement::Proven { restarted: false }
    );
    adv.poll(&a, 0, &mut nonce);
    // B goes silent for 9 s (longer than PEER_PORTS_FOR_NS): A forgets its ports and session,
    // and replaces its cookie.
    adv.poll(&a, 9 * S, &mut nonce);
    assert!(a.peer_ports().is_empty(), "forgotten");
    assert!(
        !a.proves(A_COOKIE),
        "the cookie of before the silence proves nothing"
    );
    // B's second run, with the cookie of before, is answered (with the new one), not taken.
    let stale = Advertisement::new(8, S2, A_COOKIE, &[42000]).unwrap();
    assert_eq!(a.accept_peer(&stale), PeerAdvertisement::Unproven);
    let run2 = Advertisement::new(9, S2, a.cookie(), &[42000]).unwrap();
    assert_eq!(
        a.accept_peer(&run2),
        PeerAdvertisement::Proven { restarted: false }
    );
    // The observer replays run 1's advertisement: refused, and the live run's port stays.
    assert_eq!(a.accept_peer(&run1), PeerAdvertisement::Unproven);
    assert_eq!(a.peer_ports(), vec![42000]);
    for k in 0..5u64 {
        let refresh = Advertisement::new(100 + k, S2, a.cookie(), &[42000]).unwrap();
        assert!(matches!(
            a.accept_peer(&refresh),
            PeerAdvertisement::Proven { .. }
        ));
    }
}

/// Finding B, fixed: with a list of the peer's retired sessions, one forged proven
/// advertisement naming a made-up session (from an on-path observer who read the cookie once)
/// retired the live session, and every later advertisement of the live run was refused, for
/// good. The list is gone: a restart taken replaces the cookie, so the live run's next
/// advertisement, answered with the new one, proves itself and takes its ports back.
#[test]
fn one_forged_session_is_undone_by_the_live_peers_next_advertisement() {
    let a = SourcePorts::new(&[50000], 0xaaaa, A_COOKIE);
    let mut adv = Advertiser::new();
    let mut nonce = counter(2000);
    let live = Advertisement::new(1, S2, A_COOKIE, &[42000]).unwrap();
    assert_eq!(
        a.accept_peer(&live),
        PeerAdvertisement::Proven { restarted: false }
    );
    adv.poll(&a, 0, &mut nonce);
    // One datagram, then the attacker leaves.
    let forged = Advertisement::new(2, S3, A_COOKIE, &[43000]).unwrap();
    assert_eq!(
        a.accept_peer(&forged),
        PeerAdvertisement::Proven { restarted: true }
    );
    adv.poll(&a, 1, &mut nonce);
    // The live run's refresh, with the cookie of before: answered, not taken.
    let refresh = Advertisement::new(3, S2, A_COOKIE, &[42000]).unwrap();
    assert_eq!(a.accept_peer(&refresh), PeerAdvertisement::Unproven);
    // Its next, echoing the cookie that answer handed: taken, its port back.
    let proven = Advertisement::new(4, S2, a.cookie(), &[42000]).unwrap();
    assert!(matches!(
        a.accept_peer(&proven),
        PeerAdvertisement::Proven { .. }
    ));
    assert_eq!(a.peer_ports(), vec![42000]);
    // And for the next ten minutes every refresh of the live run is taken.
    let mut t = 1;
    let mut refused = 0;
    while t < 600 * S {
        t += 2 * S;
        adv.poll(&a, t, &mut nonce);
        let refresh = Advertisement::new(t, S2, a.cookie(), &[42000]).unwrap();
        if a.accept_peer(&refresh) == PeerAdvertisement::Unproven {
            refused += 1;
        }
    }
    assert_eq!(refused, 0, "refreshes of the live run refused");
}

/// Finding C, fixed: an acknowledgement that said "not taken" made the advertiser send again
/// at once, so a peer that kept refusing (a locked-out session, or a tunfwd from before the
/// taken flag, whose answers all read as not taken) got one advertisement a round trip: at a
/// 100 us round trip some 10000 a second, forever. Now it sends again at once only when the
/// answer hands a cookie it did not echo; otherwise the answer counts as none and the retries
/// back off (1 s doubling to 10 s).
#[test]
fn not_taken_answers_with_the_cookie_echoed_back_off() {
    let b = SourcePorts::new(&[42000], S2, B_COOKIE);
    let mut b_adv = Advertiser::new();
    let mut nonce = counter(3000);
    let rtt = S / 10_000;
    let mut now = 0;
    let mut sent = Vec::new();
    while now < 60 * S {
        if let (Some(ad), _) = b_adv.poll(&b, now, &mut nonce) {
            sent.push(now);
            assert!(b.post_ack(ad.nonce, A_COOKIE, false));
        }
        now += rtt;
    }
    assert!(!b.in_use(), "B's extra ports never go into use");
    // The first answer hands the cookie (B echoed none): sent again at once; then backing off.
    assert!(
        sent.len() <= 12,
        "{} advertisements in a minute: {sent:?}",
        sent.len()
    );
    assert!(sent.len() >= 5, "still asking: {sent:?}");
    let _ = MS;
}

/// Finding D (reliability, no attacker), fixed: the advertiser's view of the peer's ports
/// (port, count of proving probes, when it changed) survived a restart of the peer while the
/// counts started again at 0; a new count equal to the stale one kept the stale time, and the
/// port was accepted no more right after a probe proved it (the peer's flows on it then dropped
/// as foreign_source until its next probe). Now the view starts anew when a run ends.
#[test]
fn a_port_just_proven_after_a_restart_stays_accepted() {
    let a = SourcePorts::new(&[50000], 0xaaaa, A_COOKIE);
    let mut adv = Advertiser::new();
    let mut nonce = counter(4000);
    a.accept_peer(&Advertisement::new(1, S1, A_COOKIE, &[40000]).unwrap());
    assert!(a.hear_probe(40000));
    adv.poll(&a, 0, &mut nonce);
    assert!(a.accepts(40000));
    // B restarts (same --srcport ports) 7 s later; its first probe from 40000 proves the port.
    let t = 7 * S;
    assert_eq!(
        a.accept_peer(&Advertisement::new(2, S2, A_COOKIE, &[40000]).unwrap()),
        PeerAdvertisement::Proven { restarted: true }
    );
    assert!(a.hear_probe(40000));
    assert!(a.accepts(40000), "proven by a probe just now");
    adv.poll(&a, t, &mut nonce);
    assert!(a.accepts(40000), "still accepted, proven 0 s ago");
}

/// Held: the control parsers do not panic on random or mutated input.
#[test]
fn holds_parsers_survive_random_and_mutated_input() {
    use crate::wire::control::{Control, Kind};
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    let mut buf = [0u8; 200];
    for kind in [Kind::Probe, Kind::Ack, Kind::PortsAck] {
        for cookie in [0, 5] {
            let c = Control {
                kind,
                nonce: 9,
                size: 3,
                cookie,
                taken: cookie != 0,
            };
            if let Some(n) = c.write(&mut buf, 60) {
                seeds.push(buf[..n].to_vec());
            }
        }
    }
    let ad = Advertisement::new(
        1,
        2,
        3,
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
    );
    let n = ad.unwrap().write(&mut buf).unwrap();
    seeds.push(buf[..n].to_vec());
    for i in 0..300_000u64 {
        let mut d = seeds[(i as usize) % seeds.len()].clone();
        match next() % 4 {
            0 => {
                let len = (next() % 120) as usize;
                d = (0..len).map(|_| next() as u8).collect();
            }
            1 => {
                let at = (next() as usize) % d.len();
                d[at] = next() as u8;
            }
            2 => {
                let cut = (next() as usize) % (d.len() + 1);
                d.truncate(cut);
            }
            _ => d.extend((0..next() % 40).map(|_| next() as u8)),
        }
        let _ = Control::parse(&d);
        let _ = Advertisement::parse(&d);
    }
}

mod relay_level {
    use super::super::entropy::SourcePorts;
    use super::super::entropy_tests::{OWN, PEER, PEER_COOKIE, entropy_relay, udp_receive};
    use super::super::lifetime::FakeBuffers;
    use super::super::*;
    use crate::wire::control::{self, Advertisement};

    const S: u64 = 1_000_000_000;

    /// The control messages the relay sends at `now`, as bytes.
    fn answer(r: &mut Relay, b: &FakeBuffers, now: u64) -> Vec<Vec<u8>> {
        let (_, controls) = super::super::entropy_tests::answer(r, b, now);
        controls.into_iter().map(|(bytes, _)| bytes).collect()
    }

    /// Finding C at the relay, fixed: a peer that answers every advertisement "not taken" with
    /// the same cookie got one advertisement per round trip (10000 a second at 100 us); now the
    /// first answer's cookie is echoed at once and the rest back off from 1 s.
    #[test]
    fn a_relay_answered_not_taken_backs_off() {
        let shared = Arc::new(SourcePorts::new(&OWN, 7, 0xc0c0));
        let mut r = entropy_relay(&shared);
        let b = FakeBuffers::new();
        let rtt = 100_000;
        let mut now = S;
        r.on_timeout(now);
        let mut pending: Vec<Vec<u8>> = answer(&mut r, &b, now);
        let mut ads = 0u64;
        let end = now + S;
        while now < end {
            now += rtt;
            let mut replies = Vec::new();
            for bytes in pending.drain(..) {
                if let Some(ad) = Advertisement::parse(&bytes) {
                    ads += 1;
                    let mut ack = vec![0u8; control::PORTS_ACK_LEN];
                    ad.header()
                        .ports_ack(PEER_COOKIE, false)
                        .write(&mut ack, 0)
                        .unwrap();
                    replies.push(ack);
                }
            }
            for reply in replies {
                udp_receive(&mut r, &b, PEER.parse().unwrap(), &reply, now);
            }
            r.on_timeout(now);
            pending = answer(&mut r, &b, now);
        }
        assert!(!shared.in_use());
        assert!(
            ads <= 3,
            "advertisements in one second at 100 us RTT: {ads}"
        );
    }
}
