//! Plain entry points for fuzz targets: each takes arbitrary bytes, feeds them to one parser or
//! state machine with fixed keys, and checks invariants that must hold whatever the input.
//!
//! They panic only when an invariant breaks, which is what a fuzzer should report. The keys
//! are fixed and public: these functions are for fuzzing, never for a network.

use std::net::SocketAddr;
use std::sync::Arc;

use rand_core::{CryptoRng, RngCore};

use crate::device::{Device, Outcome, PeerId};
use crate::keys::{PresharedKey, PrivateKey};
use crate::messages::{TRANSPORT_HEADER_LEN, TRANSPORT_TAG_LEN};
use crate::transport::Keypair;

/// A deterministic generator for fuzzing (SplitMix64). It is *not* cryptographic; it only
/// claims `CryptoRng` so a fuzzed device behaves the same on every run.
struct FuzzRng(u64);

impl RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for FuzzRng {}

const SOURCE: &str = "198.18.0.2:51820";

fn device(private: [u8; 32], peer_public_of: [u8; 32], seed: u64) -> (Device, PeerId) {
    let mut device = Device::new(
        Some(PrivateKey::from_bytes(private)),
        1_700_000_000_000_000_000,
        Box::new(FuzzRng(seed)),
    );
    let peer = device
        .add_peer(PrivateKey::from_bytes(peer_public_of).public_key())
        .expect("distinct keys");
    device.set_preshared_key(peer, PresharedKey::from_bytes([7; 32]));
    (device, peer)
}

/// Feed `datagram` to a responder that has one configured peer, first under no load and then
/// under load. Whatever the bytes, it must not panic, and a response or cookie reply must have
/// its message's exact length.
pub fn responder_consume(datagram: &[u8]) {
    let (mut responder, _) = device([1; 32], [2; 32], 1);
    let source: SocketAddr = SOURCE.parse().expect("a literal address");
    for under_load in [false, true] {
        responder.set_under_load(under_load);
        match responder.on_handshake_message(datagram, source, 1) {
            Ok(Outcome::Responded { response, .. }) => assert_eq!(response.datagram.len(), 92),
            Ok(Outcome::CookieReplied { reply }) => assert_eq!(reply.datagram.len(), 64),
            Ok(_) | Err(_) => {}
        }
        let _ = responder.poll(2);
    }
}

/// Feed `datagram` to an initiator whose initiation is in flight (as a response or cookie
/// reply would arrive). Must not panic; a started session must yield a 32-byte keepalive.
pub fn initiator_consume(datagram: &[u8]) {
    let (mut initiator, peer) = device([2; 32], [1; 32], 2);
    let source: SocketAddr = SOURCE.parse().expect("a literal address");
    initiator.set_endpoint(peer, source);
    if let Some(shared) = initiator.peer(peer) {
        shared.activity().request_handshake(0);
    }
    let _ = initiator.poll(0);
    if let Ok(Outcome::SessionStarted { keepalive, .. }) =
        initiator.on_handshake_message(datagram, source, 1)
    {
        assert_eq!(keepalive.datagram.len(), 32);
    }
    let _ = initiator.poll(2);
}

/// Open `datagram` with a fixed keypair. Must not panic; on success the plaintext range lies
/// between the header and the tag.
pub fn open_transport(datagram: &[u8]) {
    let keypair = Arc::new(Keypair::from_raw_keys(1, 2, [3; 32], [4; 32], 0));
    let mut buffer = datagram.to_vec();
    if let Ok(range) = keypair.open(&mut buffer, 0) {
        assert_eq!(range.start, TRANSPORT_HEADER_LEN);
        assert_eq!(range.end, buffer.len() - TRANSPORT_TAG_LEN);
    }
}

/// Parse a UAPI `set=1` body and a `wg setconf` file; must not panic.
pub fn parse_configuration(text: &str) {
    let _ = crate::uapi::parse_set(text);
    let _ = crate::config::parse_config_file(text);
}

/// Seed inputs for the fuzz targets, as (target, name, bytes): messages the fixed devices and
/// keypair really exchange, so that the fuzzer starts past the MACs and the AEAD tag, which it
/// could never forge, and configurations that parse.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let source: SocketAddr = SOURCE.parse().expect("a literal address");
    let (mut initiator, peer) = device([2; 32], [1; 32], 2);
    initiator.set_endpoint(peer, source);
    if let Some(shared) = initiator.peer(peer) {
        shared.activity().request_handshake(0);
    }
    let mut seeds = Vec::new();
    let initiation = initiator
        .poll(0)
        .into_iter()
        .find_map(|action| match action {
            crate::device::Action::SendInitiation { transmit, .. } => Some(transmit.datagram),
            _ => None,
        });
    if let Some(initiation) = initiation {
        let (mut responder, _) = device([1; 32], [2; 32], 1);
        if let Ok(Outcome::Responded { response, .. }) =
            responder.on_handshake_message(&initiation, source, 1)
        {
            seeds.push(("wg_initiator", "response", response.datagram));
        }
        responder.set_under_load(true);
        if let Ok(Outcome::CookieReplied { reply }) =
            responder.on_handshake_message(&initiation, source, 1)
        {
            seeds.push(("wg_initiator", "cookie_reply", reply.datagram));
        }
        seeds.push(("wg_responder", "initiation", initiation));
    }
    // The keypair `open_transport` opens with, seen from the other end.
    let sender = Keypair::from_raw_keys(2, 1, [4; 32], [3; 32], 0);
    for (counter, (name, len)) in [("keepalive", 0usize), ("packet", 60)]
        .into_iter()
        .enumerate()
    {
        let mut out =
            vec![0u8; TRANSPORT_HEADER_LEN + len.next_multiple_of(16) + TRANSPORT_TAG_LEN];
        if let Ok(n) = sender.seal(counter as u64, &vec![0x45; len], &mut out) {
            out.truncate(n);
            seeds.push(("wg_transport", name, out));
        }
    }
    let key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    seeds.push((
        "wg_configuration",
        "setconf",
        format!(
            "[Interface]\nPrivateKey = {key}\nListenPort = 51820\n\n[Peer]\nPublicKey = {key}\n\
             AllowedIPs = 198.19.0.0/24, 2001:2::/64\nEndpoint = 198.18.0.2:51820\n\
             PersistentKeepalive = 25\n"
        )
        .into_bytes(),
    ));
    seeds.push((
        "wg_configuration",
        "uapi_set",
        "private_key=0101010101010101010101010101010101010101010101010101010101010101\n\
         listen_port=51820\nreplace_peers=true\n\
         public_key=0202020202020202020202020202020202020202020202020202020202020202\n\
         endpoint=198.18.0.2:51820\nreplace_allowed_ips=true\nallowed_ip=198.19.0.0/24\n\
         persistent_keepalive_interval=25\n"
            .as_bytes()
            .to_vec(),
    ));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds reach past what the fuzzer cannot forge: a real initiation is answered, a real
    /// response starts the session, a sealed datagram opens, and the configurations parse.
    #[test]
    fn seeds_are_real_messages_and_configurations() {
        let seeds = seeds();
        let find = |target: &str, name: &str| {
            seeds
                .iter()
                .find(|(t, n, _)| *t == target && *n == name)
                .map(|(_, _, bytes)| bytes.clone())
                .unwrap_or_else(|| panic!("no seed {target}/{name}"))
        };
        let source: SocketAddr = SOURCE.parse().unwrap();
        let (mut responder, _) = device([1; 32], [2; 32], 1);
        assert!(matches!(
            responder.on_handshake_message(&find("wg_responder", "initiation"), source, 1),
            Ok(Outcome::Responded { .. })
        ));
        let keypair = Keypair::from_raw_keys(1, 2, [3; 32], [4; 32], 0);
        for name in ["keepalive", "packet"] {
            let mut datagram = find("wg_transport", name);
            assert!(keypair.open(&mut datagram, 0).is_ok(), "{name}");
        }
        let setconf = String::from_utf8(find("wg_configuration", "setconf")).unwrap();
        assert!(
            crate::config::parse_config_file(&setconf).is_ok(),
            "{setconf}"
        );
        let uapi = String::from_utf8(find("wg_configuration", "uapi_set")).unwrap();
        assert!(crate::uapi::parse_set(&uapi).is_ok(), "{uapi}");
        find("wg_initiator", "response");
        find("wg_initiator", "cookie_reply");
    }

    #[test]
    fn entry_points_accept_garbage_and_real_messages() {
        for len in [0usize, 1, 31, 32, 64, 92, 148, 200] {
            for type_byte in 0..6u8 {
                let mut bytes = vec![0x5a; len];
                if let Some(first) = bytes.first_mut() {
                    *first = type_byte;
                }
                if len >= 4 {
                    bytes[1..4].fill(0);
                }
                responder_consume(&bytes);
                initiator_consume(&bytes);
                open_transport(&bytes);
            }
        }
        parse_configuration("[Peer]\nPublicKey = x\n");
        parse_configuration("public_key=00\n");
    }

    #[test]
    fn the_fixed_devices_complete_a_handshake() {
        // The initiator's initiation, fed to the responder, is answered: so the fuzz targets
        // start from devices that really talk to each other.
        let (mut initiator, peer) = device([2; 32], [1; 32], 2);
        let source: SocketAddr = SOURCE.parse().unwrap();
        initiator.set_endpoint(peer, source);
        initiator
            .peer(peer)
            .unwrap()
            .activity()
            .request_handshake(0);
        let actions = initiator.poll(0);
        let Some(crate::device::Action::SendInitiation { transmit, .. }) = actions.first() else {
            panic!("no initiation: {actions:?}");
        };
        let (mut responder, _) = device([1; 32], [2; 32], 1);
        let outcome = responder.on_handshake_message(&transmit.datagram, source, 1);
        let Ok(Outcome::Responded { response, .. }) = outcome else {
            panic!("{outcome:?}");
        };
        let started = initiator.on_handshake_message(&response.datagram, source, 2);
        assert!(
            matches!(started, Ok(Outcome::SessionStarted { .. })),
            "{started:?}"
        );
    }
}
