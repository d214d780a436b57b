//! Curve25519 keys and preshared keys, and their two text forms.
//!
//! `wg genkey` and configuration files print keys as base64 (44 characters with one `=`); the
//! cross-platform UAPI (wireguard.com/xplatform) uses 64 lowercase hex digits. Both forms parse
//! into the same types here, so a `--config` file and a `set=1` request end in the same key.
//!
//! What this module promises about secrets: a [`PrivateKey`] or [`PresharedKey`] is wiped when it
//! is dropped (`zeroize`), its `Debug` prints no key material, and comparing two of them takes the
//! same time whatever their contents (`subtle`). Public keys are compared in constant time too,
//! because the handshake looks peers up by them. Parsing (`base64` crate, hex below) is not
//! constant time: keys are parsed from the operator's configuration, not from the network.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of every key in WireGuard: X25519 scalars and points, and the preshared key.
pub const KEY_LEN: usize = 32;
const BASE64_LEN: usize = 44;
const HEX_LEN: usize = 64;

/// Why a key string was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyParseError {
    /// Not 44 base64 characters, or not 64 hex digits.
    WrongLength,
    /// The right length, but a character outside the alphabet (or base64 that does not decode
    /// to exactly 32 bytes).
    BadEncoding,
}

impl fmt::Display for KeyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongLength => f.write_str("a key is 44 base64 characters or 64 hex digits"),
            Self::BadEncoding => f.write_str("a key has a character outside its encoding"),
        }
    }
}

impl std::error::Error for KeyParseError {}

fn decode_base64(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyParseError> {
    if text.len() != BASE64_LEN {
        return Err(KeyParseError::WrongLength);
    }
    // The engine wants room for its worst-case estimate (33 bytes for 44 characters).
    let mut decoded = Zeroizing::new([0u8; KEY_LEN + 1]);
    let written = base64::engine::general_purpose::STANDARD
        .decode_slice(text, &mut decoded[..])
        .map_err(|_| KeyParseError::BadEncoding)?;
    if written != KEY_LEN {
        return Err(KeyParseError::BadEncoding);
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&decoded[..KEY_LEN]);
    Ok(key)
}

fn encode_base64(key: &[u8; KEY_LEN]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decode_hex(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyParseError> {
    let bytes = text.as_bytes();
    if bytes.len() != HEX_LEN {
        return Err(KeyParseError::WrongLength);
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    for (out, pair) in key.iter_mut().zip(bytes.chunks_exact(2)) {
        let high = hex_digit(pair[0]).ok_or(KeyParseError::BadEncoding)?;
        let low = hex_digit(pair[1]).ok_or(KeyParseError::BadEncoding)?;
        *out = (high << 4) | low;
    }
    Ok(key)
}

fn encode_hex(key: &[u8; KEY_LEN]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(HEX_LEN);
    for byte in key {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    text
}

/// A device's static X25519 private key (`wg genkey`).
///
/// Wiped on drop; `Debug` shows only the public half.
#[derive(Clone)]
pub struct PrivateKey(x25519_dalek::StaticSecret);

impl PrivateKey {
    /// A fresh key from a cryptographic random number generator.
    pub fn generate(rng: &mut (impl rand_core::CryptoRngCore + ?Sized)) -> Self {
        Self(x25519_dalek::StaticSecret::random_from_rng(rng))
    }

    /// The key from its 32 raw bytes (clamping happens when it is used, as in RFC 7748).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let bytes = Zeroizing::new(bytes);
        Self(x25519_dalek::StaticSecret::from(*bytes))
    }

    /// The key in base64, as `wg genkey` prints it.
    pub fn from_base64(text: &str) -> Result<Self, KeyParseError> {
        decode_base64(text).map(|bytes| Self::from_bytes(*bytes))
    }

    /// The key in 64 hex digits, as the UAPI carries it.
    pub fn from_hex(text: &str) -> Result<Self, KeyParseError> {
        decode_hex(text).map(|bytes| Self::from_bytes(*bytes))
    }

    /// The key in base64, for `wg showconf`-style output. The caller owns the secret string.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(encode_base64(self.0.as_bytes()))
    }

    /// The key in lowercase hex, for a UAPI `get=1` answer.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(encode_hex(self.0.as_bytes()))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// True for the all-zero key, which the UAPI uses to mean "no private key".
    pub fn is_zero(&self) -> bool {
        bool::from(self.0.as_bytes().ct_eq(&[0u8; KEY_LEN]))
    }

    /// X25519 with a peer's public key; `None` if the result is all zeros (a low-order point),
    /// which the Linux module refuses as well (`noise.c`, `mix_dh`).
    pub(crate) fn diffie_hellman(&self, public: &PublicKey) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        let shared = self
            .0
            .diffie_hellman(&x25519_dalek::PublicKey::from(public.0));
        shared
            .was_contributory()
            .then(|| Zeroizing::new(shared.to_bytes()))
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.as_bytes().ct_eq(other.0.as_bytes()))
    }
}

impl Eq for PrivateKey {}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl FromStr for PrivateKey {
    type Err = KeyParseError;
    /// Base64, the configuration-file form.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_base64(text)
    }
}

/// A static X25519 public key: a peer's identity.
#[derive(Clone, Copy)]
pub struct PublicKey([u8; KEY_LEN]);

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Consistent with the constant-time `PartialEq`: equal keys have equal bytes.
        self.0.hash(state);
    }
}

impl PublicKey {
    /// The key from its 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key in base64 (`wg pubkey`).
    pub fn from_base64(text: &str) -> Result<Self, KeyParseError> {
        decode_base64(text).map(|bytes| Self(*bytes))
    }

    /// The key in 64 hex digits (UAPI).
    pub fn from_hex(text: &str) -> Result<Self, KeyParseError> {
        decode_hex(text).map(|bytes| Self(*bytes))
    }

    /// Base64, as `wg show` prints it.
    pub fn to_base64(&self) -> String {
        encode_base64(&self.0)
    }

    /// Lowercase hex, as the UAPI carries it.
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl FromStr for PublicKey {
    type Err = KeyParseError;
    /// Base64, the configuration-file form.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_base64(text)
    }
}

/// The optional symmetric key `Q` mixed into the handshake (the `psk2` of `IKpsk2`). All zeros
/// means "none", as the whitepaper specifies.
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop)]
pub struct PresharedKey([u8; KEY_LEN]);

impl PresharedKey {
    /// The key from its 32 raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let bytes = Zeroizing::new(bytes);
        Self(*bytes)
    }

    /// A fresh key (`wg genpsk`).
    pub fn generate(rng: &mut (impl rand_core::CryptoRngCore + ?Sized)) -> Self {
        let mut key = Self::default();
        rng.fill_bytes(&mut key.0);
        key
    }

    /// The key in base64 (`wg genpsk`, configuration files).
    pub fn from_base64(text: &str) -> Result<Self, KeyParseError> {
        decode_base64(text).map(|bytes| Self::from_bytes(*bytes))
    }

    /// The key in 64 hex digits (UAPI).
    pub fn from_hex(text: &str) -> Result<Self, KeyParseError> {
        decode_hex(text).map(|bytes| Self::from_bytes(*bytes))
    }

    /// Base64. The caller owns the secret string.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(encode_base64(&self.0))
    }

    /// Lowercase hex. The caller owns the secret string.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(encode_hex(&self.0))
    }

    /// True when no preshared key is configured.
    pub fn is_zero(&self) -> bool {
        bool::from(self.0.ct_eq(&[0u8; KEY_LEN]))
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl PartialEq for PresharedKey {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl Eq for PresharedKey {}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.is_zero() { "none" } else { "set" };
        write!(f, "PresharedKey({state})")
    }
}

impl FromStr for PresharedKey {
    type Err = KeyParseError;
    /// Base64, the configuration-file form.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_base64(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7748, section 6.1: Alice's X25519 key pair, in the two encodings used here.
    const RFC7748_PRIVATE_HEX: &str =
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const RFC7748_PUBLIC_HEX: &str =
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    const PRIVATE_BASE64: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    const PUBLIC_BASE64: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    #[test]
    fn base64_round_trips_and_derives_the_public_key() {
        let private = PrivateKey::from_base64(PRIVATE_BASE64).unwrap();
        assert_eq!(private, PrivateKey::from_hex(RFC7748_PRIVATE_HEX).unwrap());
        assert_eq!(private.public_key().to_hex(), RFC7748_PUBLIC_HEX);
        assert_eq!(private.to_base64().as_str(), PRIVATE_BASE64);
        assert_eq!(private.public_key().to_base64(), PUBLIC_BASE64);
        let public: PublicKey = PUBLIC_BASE64.parse().unwrap();
        assert_eq!(public, private.public_key());
    }

    #[test]
    fn hex_round_trips_and_accepts_either_case() {
        let public = PublicKey::from_base64(PUBLIC_BASE64).unwrap();
        let hex = public.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex, hex.to_lowercase());
        assert_eq!(PublicKey::from_hex(&hex).unwrap(), public);
        assert_eq!(PublicKey::from_hex(&hex.to_uppercase()).unwrap(), public);
        let psk = PresharedKey::from_bytes([7; 32]);
        assert_eq!(PresharedKey::from_hex(&psk.to_hex()).unwrap(), psk);
    }

    #[test]
    fn malformed_keys_are_refused() {
        let cases: &[(&str, KeyParseError)] = &[
            ("", KeyParseError::WrongLength),
            (&PRIVATE_BASE64[..43], KeyParseError::WrongLength),
            (
                "!wdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=",
                KeyParseError::BadEncoding,
            ),
            // 44 characters that decode to 33 bytes.
            (
                "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCoA",
                KeyParseError::BadEncoding,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                PrivateKey::from_base64(text).unwrap_err(),
                *expected,
                "{text:?}"
            );
        }
        assert_eq!(
            PublicKey::from_hex(&"g".repeat(64)),
            Err(KeyParseError::BadEncoding)
        );
        assert_eq!(PublicKey::from_hex("00"), Err(KeyParseError::WrongLength));
    }

    #[test]
    fn debug_never_prints_secrets() {
        let private = PrivateKey::from_base64(PRIVATE_BASE64).unwrap();
        let shown = format!("{private:?}");
        assert!(!shown.contains(PRIVATE_BASE64));
        assert!(!shown.contains(private.to_hex().as_str()));
        let psk = PresharedKey::from_bytes([0xab; 32]);
        let shown = format!("{psk:?}");
        assert_eq!(shown, "PresharedKey(set)");
        assert!(!shown.contains("ab"));
    }

    #[test]
    fn zero_keys_are_recognised() {
        assert!(PresharedKey::default().is_zero());
        assert!(PrivateKey::from_bytes([0; 32]).is_zero());
        assert!(!PrivateKey::from_base64(PRIVATE_BASE64).unwrap().is_zero());
    }
}
