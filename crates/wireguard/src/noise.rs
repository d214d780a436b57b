//! The handshake: `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`, as WireGuard fixes it.
//!
//! Every step follows the whitepaper's section 5.4.2-5.4.5 (also wireguard.com/protocol), in the
//! same order and with the same names: `C` the chaining key, `H` the transcript hash, `E`/`S`
//! ephemeral and static keys, `Q` the preshared key. The functions here are pure: they take keys,
//! an index and a timestamp chosen by the caller, and a random number generator for ephemeral
//! keys, and they write messages into the caller's buffers without their MACs (`cookie.rs` adds
//! those). Which peer a message belongs to, whether its timestamp is new, and what to do with the
//! resulting keys is `device.rs`'s business.
//!
//! Secrets: ephemeral private keys, chaining keys, DH results and transport keys are held in
//! `Zeroizing` or `x25519_dalek` types, which wipe them when dropped, whether the handshake
//! completes or fails half way.

use rand_core::CryptoRngCore;
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{self, HASH_LEN};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::messages::{Initiation, Response};
use crate::tai64n::Tai64N;

/// The Noise protocol name, hashed into the first chaining key.
pub const CONSTRUCTION: &[u8; 37] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard's prologue, hashed into the first transcript hash.
pub const IDENTIFIER: &[u8; 34] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";

/// Why a handshake message was dropped. The relay counts these; none carries data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeError {
    /// Not a handshake message of the expected length and type.
    Malformed,
    /// `mac1` did not verify: not meant for this device, or corrupted.
    InvalidMac1,
    /// This device has no private key configured.
    NoPrivateKey,
    /// An AEAD field did not decrypt: wrong keys, or tampered.
    DecryptFailed,
    /// The initiator's static key is not a configured peer.
    UnknownPeer,
    /// A Diffie-Hellman result was all zeros (a low-order public key).
    LowOrderPoint,
    /// The initiation's timestamp is not newer than the last accepted one from that peer.
    ReplayedTimestamp,
    /// The peer's previous initiation was accepted less than 1/50 s ago (`noise.c`).
    InitiationFlood,
    /// A response or cookie reply names an index with no handshake waiting for it.
    UnknownIndex,
    /// A cookie reply did not authenticate against the last message sent to that peer.
    InvalidCookieReply,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Self::Malformed => "malformed handshake message",
            Self::InvalidMac1 => "invalid mac1",
            Self::NoPrivateKey => "no private key configured",
            Self::DecryptFailed => "handshake field failed to decrypt",
            Self::UnknownPeer => "initiation from an unknown static key",
            Self::LowOrderPoint => "Diffie-Hellman result is zero",
            Self::ReplayedTimestamp => "initiation timestamp not newer than the last",
            Self::InitiationFlood => "initiations from this peer too frequent",
            Self::UnknownIndex => "no handshake waits for this index",
            Self::InvalidCookieReply => "cookie reply failed to authenticate",
        };
        f.write_str(text)
    }
}

impl std::error::Error for HandshakeError {}

/// `C0 = HASH(CONSTRUCTION)`.
pub fn initial_chaining_key() -> [u8; HASH_LEN] {
    crypto::hash(&[CONSTRUCTION])
}

/// `H0 = HASH(C0 || IDENTIFIER)`.
pub fn initial_hash() -> [u8; HASH_LEN] {
    crypto::hash(&[&initial_chaining_key(), IDENTIFIER])
}

/// This device's static identity, with the one value both roles start from.
pub(crate) struct Identity {
    pub(crate) private: PrivateKey,
    pub(crate) public: PublicKey,
    /// `HASH(H0 || S_pub_local)`: the responder's first transcript hash.
    hash_as_responder: [u8; HASH_LEN],
}

impl Identity {
    pub(crate) fn new(private: PrivateKey) -> Self {
        let public = private.public_key();
        Self {
            hash_as_responder: crypto::hash(&[&initial_hash(), public.as_bytes()]),
            private,
            public,
        }
    }
}

/// What a device keeps about one peer for handshakes with it.
pub(crate) struct PeerSecrets {
    pub(crate) remote_static: PublicKey,
    pub(crate) preshared_key: PresharedKey,
    /// `DH(S_priv_local, S_pub_remote)`, computed once per key change as the Linux module does;
    /// `None` when that is zero, which makes every handshake with this peer fail.
    static_static: Option<Zeroizing<[u8; 32]>>,
    /// `HASH(H0 || S_pub_remote)`: the initiator's first transcript hash.
    hash_as_initiator: [u8; HASH_LEN],
}

impl PeerSecrets {
    pub(crate) fn new(
        identity: Option<&Identity>,
        remote_static: PublicKey,
        psk: PresharedKey,
    ) -> Self {
        Self {
            static_static: identity.and_then(|id| id.private.diffie_hellman(&remote_static)),
            hash_as_initiator: crypto::hash(&[&initial_hash(), remote_static.as_bytes()]),
            remote_static,
            preshared_key: psk,
        }
    }

    /// Recompute the static-static secret after the local private key changed.
    pub(crate) fn rekey_identity(&mut self, identity: Option<&Identity>) {
        self.static_static = identity.and_then(|id| id.private.diffie_hellman(&self.remote_static));
    }
}

/// The running `C` and `H` of one handshake.
struct Transcript {
    chaining_key: Zeroizing<[u8; HASH_LEN]>,
    hash: [u8; HASH_LEN],
}

impl Transcript {
    fn new(hash: [u8; HASH_LEN]) -> Self {
        Self {
            chaining_key: Zeroizing::new(initial_chaining_key()),
            hash,
        }
    }

    /// `H = HASH(H || data)`.
    fn mix_hash(&mut self, data: &[u8]) {
        self.hash = crypto::hash(&[&self.hash, data]);
    }

    /// `C = KDF1(C, data)`.
    fn mix_key(&mut self, data: &[u8]) {
        self.chaining_key = crypto::kdf1(&self.chaining_key, data);
    }

    /// `(C, k) = KDF2(C, dh)`: the key for the next AEAD field.
    fn mix_dh(&mut self, dh: &[u8; 32]) -> Zeroizing<[u8; 32]> {
        let (chaining_key, key) = crypto::kdf2(&self.chaining_key, dh);
        self.chaining_key = chaining_key;
        key
    }

    /// `field = AEAD(k, 0, plaintext, H); H = HASH(H || field)`.
    fn seal_and_hash(&mut self, key: &[u8; 32], plaintext: &[u8], out: &mut [u8]) {
        crypto::aead_seal(key, 0, plaintext, &self.hash, out);
        self.mix_hash(out);
    }

    /// The inverse of [`Self::seal_and_hash`].
    fn open_and_hash(
        &mut self,
        key: &[u8; 32],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<(), HandshakeError> {
        crypto::aead_open(key, 0, sealed, &self.hash, out)
            .map_err(|()| HandshakeError::DecryptFailed)?;
        self.mix_hash(sealed);
        Ok(())
    }

    /// `(T_first, T_second) = KDF2(C, ε)`: initiator's send key first.
    fn split(&self) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
        crypto::kdf2(&self.chaining_key, &[])
    }
}

impl Drop for Transcript {
    fn drop(&mut self) {
        self.hash.zeroize();
    }
}

fn dh(private: &PrivateKey, public: &PublicKey) -> Result<Zeroizing<[u8; 32]>, HandshakeError> {
    private
        .diffie_hellman(public)
        .ok_or(HandshakeError::LowOrderPoint)
}

/// The transport keys of a completed handshake, and the indices that name them.
pub(crate) struct SessionKeys {
    /// Our index: the receiver index of datagrams sent to us under these keys.
    pub(crate) local_index: u32,
    /// The peer's index: the receiver index we put on datagrams we send.
    pub(crate) remote_index: u32,
    pub(crate) send_key: Zeroizing<[u8; 32]>,
    pub(crate) receive_key: Zeroizing<[u8; 32]>,
    pub(crate) is_initiator: bool,
}

/// An initiation in flight: what the initiator must remember to read the response.
pub(crate) struct InitiationSent {
    pub(crate) sender_index: u32,
    ephemeral: PrivateKey,
    transcript: Transcript,
}

/// Write a handshake initiation (all but `mac1`/`mac2`) for the peer `peer`.
pub(crate) fn create_initiation(
    identity: &Identity,
    peer: &PeerSecrets,
    sender_index: u32,
    timestamp: Tai64N,
    rng: &mut dyn CryptoRngCore,
    out: &mut [u8; crate::messages::INITIATION_LEN],
) -> Result<InitiationSent, HandshakeError> {
    let static_static = peer
        .static_static
        .as_ref()
        .ok_or(HandshakeError::LowOrderPoint)?;
    let mut message = Initiation::new_unchecked(&mut out[..]);
    message.set_message_type();
    message.set_sender_index(sender_index);

    // H = HASH(HASH(H0) || S_pub_r) was precomputed; C = C0.
    let mut transcript = Transcript::new(peer.hash_as_initiator);

    let ephemeral = PrivateKey::generate(rng);
    let ephemeral_public = ephemeral.public_key();
    *message.ephemeral_mut() = *ephemeral_public.as_bytes();
    transcript.mix_key(ephemeral_public.as_bytes());
    transcript.mix_hash(ephemeral_public.as_bytes());

    let shared = dh(&ephemeral, &peer.remote_static)?;
    let key = transcript.mix_dh(&shared);
    transcript.seal_and_hash(
        &key,
        identity.public.as_bytes(),
        message.encrypted_static_mut(),
    );

    let key = transcript.mix_dh(static_static);
    transcript.seal_and_hash(
        &key,
        timestamp.as_bytes(),
        message.encrypted_timestamp_mut(),
    );

    Ok(InitiationSent {
        sender_index,
        ephemeral,
        transcript,
    })
}

/// An initiation the responder has read: who sent it, when, and the state to answer it.
pub(crate) struct InitiationReceived {
    pub(crate) remote_static: PublicKey,
    pub(crate) remote_index: u32,
    pub(crate) timestamp: Tai64N,
    remote_ephemeral: PublicKey,
    transcript: Transcript,
}

/// Read an initiation as the responder. `find_peer` maps the decrypted static key to the peer's
/// secrets (and whatever handle the caller wants back); the timestamp is returned unjudged.
pub(crate) fn consume_initiation<'p, P>(
    identity: &Identity,
    message: &Initiation<&[u8]>,
    find_peer: impl FnOnce(&PublicKey) -> Option<(P, &'p PeerSecrets)>,
) -> Result<(P, InitiationReceived), HandshakeError> {
    let mut transcript = Transcript::new(identity.hash_as_responder);

    let remote_ephemeral = PublicKey::from_bytes(*message.ephemeral());
    transcript.mix_key(remote_ephemeral.as_bytes());
    transcript.mix_hash(remote_ephemeral.as_bytes());

    let shared = dh(&identity.private, &remote_ephemeral)?;
    let key = transcript.mix_dh(&shared);
    let mut static_bytes = [0u8; 32];
    transcript.open_and_hash(&key, message.encrypted_static(), &mut static_bytes)?;
    let remote_static = PublicKey::from_bytes(static_bytes);

    let (handle, peer) = find_peer(&remote_static).ok_or(HandshakeError::UnknownPeer)?;
    let static_static = peer
        .static_static
        .as_ref()
        .ok_or(HandshakeError::LowOrderPoint)?;
    let key = transcript.mix_dh(static_static);
    let mut timestamp = [0u8; 12];
    transcript.open_and_hash(&key, message.encrypted_timestamp(), &mut timestamp)?;

    Ok((
        handle,
        InitiationReceived {
            remote_static,
            remote_index: message.sender_index(),
            timestamp: Tai64N::from_bytes(timestamp),
            remote_ephemeral,
            transcript,
        },
    ))
}

/// Write the response (all but `mac1`/`mac2`) to an initiation, and derive the keys.
pub(crate) fn create_response(
    received: InitiationReceived,
    peer: &PeerSecrets,
    sender_index: u32,
    rng: &mut dyn CryptoRngCore,
    out: &mut [u8; crate::messages::RESPONSE_LEN],
) -> Result<SessionKeys, HandshakeError> {
    let InitiationReceived {
        remote_static,
        remote_index,
        remote_ephemeral,
        mut transcript,
        ..
    } = received;
    let mut message = Response::new_unchecked(&mut out[..]);
    message.set_message_type();
    message.set_sender_index(sender_index);
    message.set_receiver_index(remote_index);

    let ephemeral = PrivateKey::generate(rng);
    let ephemeral_public = ephemeral.public_key();
    *message.ephemeral_mut() = *ephemeral_public.as_bytes();
    transcript.mix_key(ephemeral_public.as_bytes());
    transcript.mix_hash(ephemeral_public.as_bytes());

    transcript.mix_key(&dh(&ephemeral, &remote_ephemeral)?[..]);
    transcript.mix_key(&dh(&ephemeral, &remote_static)?[..]);

    // (C, τ, k) = KDF3(C, Q); H = HASH(H || τ)
    let (chaining_key, tau, key) =
        crypto::kdf3(&transcript.chaining_key, peer.preshared_key.as_bytes());
    transcript.chaining_key = chaining_key;
    transcript.mix_hash(&tau[..]);
    transcript.seal_and_hash(&key, &[], message.encrypted_nothing_mut());

    let (initiator_send, initiator_receive) = transcript.split();
    Ok(SessionKeys {
        local_index: sender_index,
        remote_index,
        send_key: initiator_receive,
        receive_key: initiator_send,
        is_initiator: false,
    })
}

/// Read the response to `sent` as the initiator, and derive the keys.
pub(crate) fn consume_response(
    sent: &InitiationSent,
    identity: &Identity,
    peer: &PeerSecrets,
    message: &Response<&[u8]>,
) -> Result<SessionKeys, HandshakeError> {
    if message.receiver_index() != sent.sender_index {
        return Err(HandshakeError::UnknownIndex);
    }
    let mut transcript = Transcript {
        chaining_key: sent.transcript.chaining_key.clone(),
        hash: sent.transcript.hash,
    };

    let remote_ephemeral = PublicKey::from_bytes(*message.ephemeral());
    transcript.mix_key(remote_ephemeral.as_bytes());
    transcript.mix_hash(remote_ephemeral.as_bytes());

    transcript.mix_key(&dh(&sent.ephemeral, &remote_ephemeral)?[..]);
    transcript.mix_key(&dh(&identity.private, &remote_ephemeral)?[..]);

    let (chaining_key, tau, key) =
        crypto::kdf3(&transcript.chaining_key, peer.preshared_key.as_bytes());
    transcript.chaining_key = chaining_key;
    transcript.mix_hash(&tau[..]);
    transcript.open_and_hash(&key, message.encrypted_nothing(), &mut [])?;

    let (send_key, receive_key) = transcript.split();
    Ok(SessionKeys {
        local_index: sent.sender_index,
        remote_index: message.sender_index(),
        send_key,
        receive_key,
        is_initiator: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{INITIATION_LEN, RESPONSE_LEN};
    use rand_core::OsRng;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The protocol's first two values are fixed by its names. These constants were computed
    /// once with Python's `hashlib.blake2s` (an independent BLAKE2s) from the two strings, the
    /// way wireguard-go's `device/noise-protocol.go` computes `InitialChainKey` and
    /// `InitialHash` at start-up. A typo in either name breaks this test; the interop test in
    /// `tests/wireguard_go.rs` checks the rest of the handshake against wireguard-go itself.
    #[test]
    fn initial_chaining_key_and_hash_are_wireguards() {
        assert_eq!(
            hex(&initial_chaining_key()),
            "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"
        );
        assert_eq!(
            hex(&initial_hash()),
            "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3"
        );
    }

    struct Side {
        identity: Identity,
        peer: PeerSecrets,
    }

    fn pair(psk: [u8; 32]) -> (Side, Side) {
        let initiator = Identity::new(PrivateKey::generate(&mut OsRng));
        let responder = Identity::new(PrivateKey::generate(&mut OsRng));
        let initiator_peer = PeerSecrets::new(
            Some(&initiator),
            responder.public,
            PresharedKey::from_bytes(psk),
        );
        let responder_peer = PeerSecrets::new(
            Some(&responder),
            initiator.public,
            PresharedKey::from_bytes(psk),
        );
        (
            Side {
                identity: initiator,
                peer: initiator_peer,
            },
            Side {
                identity: responder,
                peer: responder_peer,
            },
        )
    }

    fn handshake(
        initiator: &Side,
        responder: &Side,
        timestamp: Tai64N,
    ) -> Result<(SessionKeys, SessionKeys), HandshakeError> {
        let mut initiation = [0u8; INITIATION_LEN];
        let sent = create_initiation(
            &initiator.identity,
            &initiator.peer,
            11,
            timestamp,
            &mut OsRng,
            &mut initiation,
        )?;
        let view = Initiation::new_checked(&initiation[..]).unwrap();
        let ((), received) = consume_initiation(&responder.identity, &view, |key| {
            (*key == responder.peer.remote_static).then_some(((), &responder.peer))
        })?;
        assert_eq!(received.timestamp, timestamp);
        assert_eq!(received.remote_index, 11);
        let mut response = [0u8; RESPONSE_LEN];
        let responder_keys =
            create_response(received, &responder.peer, 22, &mut OsRng, &mut response)?;
        let view = Response::new_checked(&response[..]).unwrap();
        let initiator_keys = consume_response(&sent, &initiator.identity, &initiator.peer, &view)?;
        Ok((initiator_keys, responder_keys))
    }

    #[test]
    fn both_sides_derive_crossed_transport_keys() {
        for psk in [[0u8; 32], [0x5a; 32]] {
            let (initiator, responder) = pair(psk);
            let (i, r) = handshake(&initiator, &responder, Tai64N::from_unix_nanos(1)).unwrap();
            assert_eq!(*i.send_key, *r.receive_key);
            assert_eq!(*i.receive_key, *r.send_key);
            assert_ne!(*i.send_key, *i.receive_key);
            assert_eq!((i.local_index, i.remote_index), (11, 22));
            assert_eq!((r.local_index, r.remote_index), (22, 11));
            assert!(i.is_initiator && !r.is_initiator);
        }
    }

    #[test]
    fn a_mismatched_preshared_key_fails_at_the_response() {
        let (initiator, mut responder) = pair([1; 32]);
        responder.peer.preshared_key = PresharedKey::from_bytes([2; 32]);
        assert_eq!(
            handshake(&initiator, &responder, Tai64N::default()).err(),
            Some(HandshakeError::DecryptFailed)
        );
    }

    #[test]
    fn an_unknown_initiator_is_refused_after_its_static_decrypts() {
        let (initiator, responder) = pair([0; 32]);
        let mut initiation = [0u8; INITIATION_LEN];
        create_initiation(
            &initiator.identity,
            &initiator.peer,
            1,
            Tai64N::default(),
            &mut OsRng,
            &mut initiation,
        )
        .unwrap();
        let view = Initiation::new_checked(&initiation[..]).unwrap();
        let result = consume_initiation::<()>(&responder.identity, &view, |_| None);
        assert_eq!(result.err(), Some(HandshakeError::UnknownPeer));
    }

    #[test]
    fn any_flipped_bit_in_the_sealed_fields_fails() {
        let (initiator, responder) = pair([0; 32]);
        let mut initiation = [0u8; INITIATION_LEN];
        create_initiation(
            &initiator.identity,
            &initiator.peer,
            1,
            Tai64N::default(),
            &mut OsRng,
            &mut initiation,
        )
        .unwrap();
        for byte in 8..116 {
            let mut tampered = initiation;
            tampered[byte] ^= 0x80;
            let view = Initiation::new_checked(&tampered[..]).unwrap();
            let result = consume_initiation(&responder.identity, &view, |key| {
                (*key == responder.peer.remote_static).then_some(((), &responder.peer))
            });
            assert!(result.is_err(), "byte {byte}");
        }
    }
}
