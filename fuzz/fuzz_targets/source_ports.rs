//! Two datagrams, as a peer's advertisements of its source ports (`wire::control`, kind 3),
//! through `Advertisement::parse` and into the set of ports a relay accepts datagrams from
//! (`relay::entropy::SourcePorts`). The input is split at its first byte's position: the two
//! halves are the two datagrams, taken in turn; the relay's cookie is the input's second and
//! third bytes (so that some advertisements echo it and some do not). No panic; what parses
//! writes back byte for byte; after an advertisement that echoes the cookie, the advertised set
//! holds exactly its ports; after one that does not, the set is as it was; a port is accepted
//! only once advertised and proven by a probe from it; and no port the input names otherwise is
//! ever accepted (the exact source check may never accept more than the peer advertised).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tunfwd::fuzzing::control::{Advertisement, MAX_PORTS};
use tunfwd::fuzzing::entropy::{PeerAdvertisement, SourcePorts};

fuzz_target!(|input: &[u8]| {
    let Some((&split, rest)) = input.split_first() else {
        return;
    };
    let cookie = u64::from(u16::from_be_bytes([
        rest.first().copied().unwrap_or(0),
        rest.get(1).copied().unwrap_or(0),
    ]))
    .max(1);
    let at = usize::from(split).min(rest.len());
    let (first, second) = rest.split_at(at);
    let shared = SourcePorts::new(&[], 1, cookie);
    // Ports the input mentions anywhere: the candidates a wrong set would accept.
    let mentioned: Vec<u16> = rest
        .windows(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
        .collect();
    let mut accepted: Vec<u16> = Vec::new();
    // Advertised ports a probe that echoes the cookie came from.
    let mut heard: Vec<u16> = Vec::new();
    for datagram in [first, second] {
        let Some(advertisement) = Advertisement::parse(datagram) else {
            continue;
        };
        let mut out = vec![0u8; datagram.len()];
        let len = advertisement
            .write(&mut out)
            .expect("room for what was parsed");
        assert_eq!(&out[..len], datagram);
        let before = accepted.clone();
        match shared.accept_peer(&advertisement) {
            PeerAdvertisement::Proven { restarted } => {
                assert_eq!(advertisement.echo, cookie);
                accepted = advertisement.ports().to_vec();
                // What stays keeps what it proved, unless the peer restarted.
                heard.retain(|p| !restarted && accepted.contains(p));
            }
            PeerAdvertisement::Unproven => {
                assert_ne!(advertisement.echo, cookie);
                assert_eq!(accepted, before, "an unproven advertisement changed the set");
            }
        }
        for port in &accepted {
            assert!(shared.advertised(*port), "advertised port {port} not taken");
        }
        for port in &mentioned {
            assert_eq!(
                shared.advertised(*port),
                accepted.contains(port),
                "port {port}: advertised {:?}",
                accepted
            );
            // Accepted only once a probe that echoes the cookie came from it.
            assert_eq!(
                shared.accepts(*port),
                accepted.contains(port) && heard.contains(port),
                "port {port}: accepted {:?}, heard {:?}",
                accepted,
                heard
            );
        }
        assert!(!shared.accepts(0) && !shared.advertised(0));
        // A probe from the first advertised port proves it; from a port not advertised, none.
        for port in accepted.first().into_iter().chain(mentioned.first()) {
            let taken = shared.hear_probe(*port);
            assert_eq!(taken, accepted.contains(port));
            if taken {
                heard.push(*port);
            }
            assert_eq!(shared.accepts(*port), taken);
        }
        let mut listed = shared.peer_ports();
        assert!(listed.len() <= MAX_PORTS);
        listed.sort_unstable();
        listed.dedup();
        let mut want = accepted.clone();
        want.sort_unstable();
        want.dedup();
        assert_eq!(listed, want);
    }
    shared.forget_peer();
    for port in accepted.iter().chain(&mentioned) {
        assert!(!shared.accepts(*port), "port {port} after forgetting");
    }
});
