//! The handshake's symmetric primitives, named as in the whitepaper (section 5.4): `HASH`, `MAC`,
//! `HMAC`, `KDF1..3`, `AEAD` and `XAEAD`.
//!
//! Every primitive comes from a maintained crate (`blake2`, `hmac`, `chacha20poly1305`); this
//! module only fixes their parameters the way WireGuard does. It serves the control thread
//! (handshake and cookies); the data path's AEAD lives in `transport.rs`, chosen by measurement.
//! Outputs that are secret come back as `Zeroizing`. The hashing crates keep their own internal
//! state on the stack without wiping it; the Linux module wipes it (`memzero_explicit` in
//! `noise.c`), which these crates give no way to do.

use blake2::Blake2s256;
use blake2::digest::{Digest, KeyInit, Mac, consts::U16};
use chacha20poly1305::{AeadInPlace, ChaCha20Poly1305, Tag, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

pub(crate) const HASH_LEN: usize = 32;
pub(crate) const MAC_LEN: usize = 16;
pub(crate) const TAG_LEN: usize = 16;

type Blake2sMac128 = blake2::Blake2sMac<U16>;
type HmacBlake2s = hmac::SimpleHmac<Blake2s256>;

/// `HASH(a || b || ...)`: BLAKE2s with a 32-byte output.
pub(crate) fn hash(parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut state = Blake2s256::new();
    for part in parts {
        state.update(part);
    }
    state.finalize().into()
}

/// `MAC(key, a || b || ...)`: keyed BLAKE2s with a 16-byte output. Keys are 16 (a cookie) or 32
/// bytes, both within BLAKE2s's limit, so keying cannot fail.
pub(crate) fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut state = <Blake2sMac128 as KeyInit>::new_from_slice(key)
        .expect("BLAKE2s accepts keys of 1..=32 bytes");
    for part in parts {
        Mac::update(&mut state, part);
    }
    state.finalize().into_bytes().into()
}

/// `HMAC(key, input)` over BLAKE2s-256 (RFC 2104 with a 64-byte block).
fn hmac(key: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; HASH_LEN]> {
    let mut state =
        <HmacBlake2s as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        Mac::update(&mut state, part);
    }
    Zeroizing::new(state.finalize().into_bytes().into())
}

/// `KDFn(key, input)`: HKDF-style expansion with `HMAC`; returns `n` 32-byte outputs.
fn kdf<const N: usize>(key: &[u8; HASH_LEN], input: &[u8]) -> [Zeroizing<[u8; HASH_LEN]>; N] {
    let pseudo_random_key = hmac(key, &[input]);
    let mut previous: Option<Zeroizing<[u8; HASH_LEN]>> = None;
    std::array::from_fn(|i| {
        let counter = [i as u8 + 1];
        let output = match &previous {
            None => hmac(&pseudo_random_key[..], &[&counter]),
            Some(previous) => hmac(&pseudo_random_key[..], &[&previous[..], &counter]),
        };
        previous = Some(output.clone());
        output
    })
}

/// A 32-byte secret that is wiped on drop.
pub(crate) type Secret = Zeroizing<[u8; HASH_LEN]>;

pub(crate) fn kdf1(key: &[u8; HASH_LEN], input: &[u8]) -> Secret {
    let [first] = kdf::<1>(key, input);
    first
}

pub(crate) fn kdf2(key: &[u8; HASH_LEN], input: &[u8]) -> (Secret, Secret) {
    let [first, second] = kdf::<2>(key, input);
    (first, second)
}

pub(crate) fn kdf3(key: &[u8; HASH_LEN], input: &[u8]) -> (Secret, Secret, Secret) {
    let [first, second, third] = kdf::<3>(key, input);
    (first, second, third)
}

/// The 96-bit ChaCha20-Poly1305 nonce: 32 zero bits, then the 64-bit counter little-endian.
pub(crate) fn counter_nonce(counter: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    nonce
}

/// `AEAD(key, counter, plaintext, ad)` into `out`, which is `plaintext.len() + 16` bytes long.
pub(crate) fn aead_seal(
    key: &[u8; 32],
    counter: u64,
    plaintext: &[u8],
    associated_data: &[u8],
    out: &mut [u8],
) {
    debug_assert_eq!(out.len(), plaintext.len() + TAG_LEN);
    let (ciphertext, tag_out) = out.split_at_mut(plaintext.len());
    ciphertext.copy_from_slice(plaintext);
    let cipher = ChaCha20Poly1305::new(key.into());
    let tag = cipher
        .encrypt_in_place_detached(&counter_nonce(counter).into(), associated_data, ciphertext)
        .expect("handshake messages are far below the AEAD's length limit");
    tag_out.copy_from_slice(&tag);
}

/// The inverse of [`aead_seal`]: `sealed` is ciphertext then tag; `out` gets the plaintext.
pub(crate) fn aead_open(
    key: &[u8; 32],
    counter: u64,
    sealed: &[u8],
    associated_data: &[u8],
    out: &mut [u8],
) -> Result<(), ()> {
    let Some(ciphertext_len) = sealed.len().checked_sub(TAG_LEN) else {
        return Err(());
    };
    debug_assert_eq!(out.len(), ciphertext_len);
    let (ciphertext, tag) = sealed.split_at(ciphertext_len);
    out.copy_from_slice(ciphertext);
    let cipher = ChaCha20Poly1305::new(key.into());
    cipher
        .decrypt_in_place_detached(
            &counter_nonce(counter).into(),
            associated_data,
            out,
            Tag::from_slice(tag),
        )
        .map_err(|_| ())
}

/// `XAEAD(key, nonce, plaintext, ad)`: XChaCha20-Poly1305, for cookie replies.
pub(crate) fn xaead_seal(
    key: &[u8; 32],
    nonce: &[u8; 24],
    plaintext: &[u8],
    associated_data: &[u8],
    out: &mut [u8],
) {
    debug_assert_eq!(out.len(), plaintext.len() + TAG_LEN);
    let (ciphertext, tag_out) = out.split_at_mut(plaintext.len());
    ciphertext.copy_from_slice(plaintext);
    let cipher = XChaCha20Poly1305::new(key.into());
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(nonce), associated_data, ciphertext)
        .expect("a cookie is far below the AEAD's length limit");
    tag_out.copy_from_slice(&tag);
}

/// The inverse of [`xaead_seal`].
pub(crate) fn xaead_open(
    key: &[u8; 32],
    nonce: &[u8; 24],
    sealed: &[u8],
    associated_data: &[u8],
    out: &mut [u8],
) -> Result<(), ()> {
    let Some(ciphertext_len) = sealed.len().checked_sub(TAG_LEN) else {
        return Err(());
    };
    debug_assert_eq!(out.len(), ciphertext_len);
    let (ciphertext, tag) = sealed.split_at(ciphertext_len);
    out.copy_from_slice(ciphertext);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            associated_data,
            out,
            Tag::from_slice(tag),
        )
        .map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    // RFC 7693, appendix B: BLAKE2s-256("abc").
    #[test]
    fn hash_is_blake2s_256() {
        assert_eq!(
            hex(&hash(&[b"ab", b"c"])),
            "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
        );
    }

    // RFC 4231-shaped check that HMAC uses BLAKE2s's 64-byte block: a key longer than the
    // block is hashed first, so HMAC(k) == HMAC(HASH(k)) for a 65-byte k.
    #[test]
    fn hmac_hashes_keys_longer_than_the_block() {
        let long_key = [0x0bu8; 65];
        assert_eq!(
            *hmac(&long_key, &[b"x"]),
            *hmac(&hash(&[&long_key]), &[b"x"])
        );
        let block_key = [0x0bu8; 64];
        assert_ne!(
            *hmac(&block_key, &[b"x"]),
            *hmac(&hash(&[&block_key]), &[b"x"])
        );
    }

    #[test]
    fn kdf_outputs_chain() {
        let key = [1u8; 32];
        let (t1, t2) = kdf2(&key, b"input");
        let (u1, u2, u3) = kdf3(&key, b"input");
        assert_eq!(*t1, *u1);
        assert_eq!(*t2, *u2);
        assert_eq!(*kdf1(&key, b"input"), *t1);
        let prk = hmac(&key, &[b"input"]);
        assert_eq!(*u3, *hmac(&prk[..], &[&u2[..], &[3]]));
    }

    #[test]
    fn aead_round_trips_and_binds_associated_data() {
        let key = [9u8; 32];
        let mut sealed = [0u8; 5 + TAG_LEN];
        aead_seal(&key, 0, b"hello", b"ad", &mut sealed);
        let mut opened = [0u8; 5];
        assert!(aead_open(&key, 0, &sealed, b"ad", &mut opened).is_ok());
        assert_eq!(&opened, b"hello");
        assert!(aead_open(&key, 0, &sealed, b"other", &mut opened).is_err());
        assert!(aead_open(&key, 1, &sealed, b"ad", &mut opened).is_err());

        let nonce = [3u8; 24];
        let mut sealed = [0u8; 16 + TAG_LEN];
        xaead_seal(&key, &nonce, &[5; 16], b"mac1", &mut sealed);
        let mut opened = [0u8; 16];
        assert!(xaead_open(&key, &nonce, &sealed, b"mac1", &mut opened).is_ok());
        assert_eq!(opened, [5; 16]);
        sealed[0] ^= 1;
        assert!(xaead_open(&key, &nonce, &sealed, b"mac1", &mut opened).is_err());
    }
}
