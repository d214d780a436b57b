//! `mac1`, `mac2` and cookie replies: WireGuard's defence against handshake floods.
//!
//! Whitepaper section 5.3 and 5.4.7, and the Linux module's `cookie.c`. Every handshake message
//! ends in `mac1 = MAC(HASH(label-mac1 || S_pub_receiver), msg[..mac1])`, which proves the sender
//! knows whom it is talking to and costs the receiver one BLAKE2s, not an X25519. A responder
//! that is under load (the caller decides, typically from its queue depth) also wants
//! `mac2 = MAC(cookie, msg[..mac2])`, where the cookie is `MAC(R_secret, source IP || port)`:
//! proof that the sender can receive at the address it claims. A message without a good `mac2`
//! is then answered with a cookie reply instead of a handshake: the cookie sealed with
//! XChaCha20-Poly1305 under `HASH(label-cookie || S_pub_responder)`, a random nonce, and the
//! message's `mac1` as associated data, so only the peer that sent that message can use it.
//!
//! [`CookieChecker`] is the receiving side (one per device); [`CookieJar`] is the sending side
//! (one per peer): it remembers the last `mac1` it sent and the cookie it was given.

use std::net::{IpAddr, SocketAddr};

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::constants::{COOKIE_SECRET_LATENCY_NS, COOKIE_SECRET_MAX_AGE_NS};
use crate::crypto::{self, MAC_LEN};
use crate::keys::PublicKey;
use crate::messages::{COOKIE_REPLY_LEN, CookieReply, mac1_offset, mac2_offset};

/// `label-mac1`.
pub const LABEL_MAC1: &[u8; 8] = b"mac1----";
/// `label-cookie`.
pub const LABEL_COOKIE: &[u8; 8] = b"cookie--";

/// A cookie: 16 bytes that name a source address for two minutes.
pub(crate) type Cookie = [u8; MAC_LEN];

/// The two keys derived from one public key: for `mac1`, and for sealing cookies.
#[derive(Clone)]
pub(crate) struct LabelKeys {
    mac1: [u8; 32],
    cookie: [u8; 32],
}

impl LabelKeys {
    pub(crate) fn new(public_key: &PublicKey) -> Self {
        Self {
            mac1: crypto::hash(&[LABEL_MAC1, public_key.as_bytes()]),
            cookie: crypto::hash(&[LABEL_COOKIE, public_key.as_bytes()]),
        }
    }
}

/// `mac1` of a whole handshake message (the bytes before the `mac1` field).
fn compute_mac1(keys: &LabelKeys, message: &[u8]) -> [u8; MAC_LEN] {
    crypto::mac(&keys.mac1, &[&message[..mac1_offset(message.len())]])
}

fn compute_mac2(cookie: &Cookie, message: &[u8]) -> [u8; MAC_LEN] {
    crypto::mac(cookie, &[&message[..mac2_offset(message.len())]])
}

fn field(message: &[u8], offset: usize) -> &[u8; MAC_LEN] {
    message[offset..offset + MAC_LEN]
        .try_into()
        .expect("a handshake message ends in two 16-byte MACs")
}

/// How a handshake message fared at the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacVerdict {
    /// `mac1` is wrong: drop silently.
    InvalidMac1,
    /// `mac1` is right and no cookie was asked for (not under load).
    Valid,
    /// Under load, and `mac2` proves the source address: process it.
    ValidWithCookie,
    /// Under load, and `mac2` is missing or stale: answer with a cookie reply.
    CookieRequired,
}

/// The responder's gate: checks `mac1` always and `mac2` under load, and writes cookie replies.
pub struct CookieChecker {
    keys: LabelKeys,
    secret: Zeroizing<[u8; 32]>,
    secret_born_ns: Option<u64>,
}

impl CookieChecker {
    /// The gate for a device whose static public key is `local_public`.
    pub fn new(local_public: &PublicKey) -> Self {
        Self {
            keys: LabelKeys::new(local_public),
            secret: Zeroizing::new([0; 32]),
            secret_born_ns: None,
        }
    }

    /// Judge a whole handshake message (initiation or response) from `source`.
    pub fn verify(
        &mut self,
        message: &[u8],
        source: SocketAddr,
        under_load: bool,
        now_ns: u64,
        rng: &mut dyn CryptoRngCore,
    ) -> MacVerdict {
        use subtle::ConstantTimeEq;
        let mac1 = compute_mac1(&self.keys, message);
        if !bool::from(mac1.ct_eq(field(message, mac1_offset(message.len())))) {
            return MacVerdict::InvalidMac1;
        }
        if !under_load {
            return MacVerdict::Valid;
        }
        let cookie = self.cookie_for(source, now_ns, rng);
        let mac2 = compute_mac2(&cookie, message);
        if bool::from(mac2.ct_eq(field(message, mac2_offset(message.len())))) {
            MacVerdict::ValidWithCookie
        } else {
            MacVerdict::CookieRequired
        }
    }

    /// The cookie reply to `message` (whose `mac1` was valid), addressed to `sender_index`.
    pub fn cookie_reply(
        &mut self,
        message: &[u8],
        sender_index: u32,
        source: SocketAddr,
        now_ns: u64,
        rng: &mut dyn CryptoRngCore,
    ) -> [u8; COOKIE_REPLY_LEN] {
        let cookie = Zeroizing::new(self.cookie_for(source, now_ns, rng));
        let mac1 = *field(message, mac1_offset(message.len()));
        let mut out = [0u8; COOKIE_REPLY_LEN];
        let mut reply = CookieReply::new_unchecked(&mut out[..]);
        reply.set_message_type();
        reply.set_receiver_index(sender_index);
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        *reply.nonce_mut() = nonce;
        crypto::xaead_seal(
            &self.keys.cookie,
            &nonce,
            &cookie[..],
            &mac1,
            reply.encrypted_cookie_mut(),
        );
        out
    }

    /// `MAC(R_secret, IP || port)`, with the address encoded as the Linux module hashes it: the
    /// address bytes in network order (4 or 16), then the port big-endian. An IPv4-mapped IPv6
    /// source (a dual-stack socket) counts as its IPv4 address.
    fn cookie_for(
        &mut self,
        source: SocketAddr,
        now_ns: u64,
        rng: &mut dyn CryptoRngCore,
    ) -> Cookie {
        let stale = match self.secret_born_ns {
            None => true,
            Some(born) => now_ns.saturating_sub(born) >= COOKIE_SECRET_MAX_AGE_NS,
        };
        if stale {
            rng.fill_bytes(&mut self.secret[..]);
            self.secret_born_ns = Some(now_ns);
        }
        let port = source.port().to_be_bytes();
        match source.ip().to_canonical() {
            IpAddr::V4(ip) => crypto::mac(&self.secret[..], &[&ip.octets(), &port]),
            IpAddr::V6(ip) => crypto::mac(&self.secret[..], &[&ip.octets(), &port]),
        }
    }
}

/// Why a cookie reply was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieReplyError {
    /// No handshake message was sent to this peer that the reply could answer.
    NothingSent,
    /// The reply does not authenticate against the last `mac1` sent (forged, or stale).
    Forged,
}

/// The sending side's memory: what `mac1` went out last, and the cookie that came back.
pub(crate) struct CookieJar {
    keys: LabelKeys,
    last_mac1_sent: Option<[u8; MAC_LEN]>,
    cookie: Option<(Zeroizing<Cookie>, u64)>,
}

impl CookieJar {
    /// The jar for messages to a peer whose static public key is `remote_public`.
    pub(crate) fn new(remote_public: &PublicKey) -> Self {
        Self {
            keys: LabelKeys::new(remote_public),
            last_mac1_sent: None,
            cookie: None,
        }
    }

    /// Fill in `mac1` and `mac2` of an outgoing handshake message. `mac2` is zero unless a cookie
    /// arrived less than `COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY` ago (`cookie.c`).
    pub(crate) fn stamp(&mut self, message: &mut [u8], now_ns: u64) {
        let len = message.len();
        let mac1 = compute_mac1(&self.keys, message);
        message[mac1_offset(len)..mac2_offset(len)].copy_from_slice(&mac1);
        self.last_mac1_sent = Some(mac1);
        let mac2 = match &self.cookie {
            Some((cookie, received_ns))
                if now_ns.saturating_sub(*received_ns)
                    < COOKIE_SECRET_MAX_AGE_NS - COOKIE_SECRET_LATENCY_NS =>
            {
                compute_mac2(cookie, message)
            }
            _ => [0; MAC_LEN],
        };
        message[mac2_offset(len)..].copy_from_slice(&mac2);
    }

    /// Take the cookie from a reply to the last message sent. A reply is good for one message:
    /// the next one must be sent (with its new `mac1`) before another reply is accepted.
    pub(crate) fn consume_reply(
        &mut self,
        reply: &CookieReply<&[u8]>,
        now_ns: u64,
    ) -> Result<(), CookieReplyError> {
        let Some(mac1) = self.last_mac1_sent else {
            return Err(CookieReplyError::NothingSent);
        };
        let mut cookie = Zeroizing::new([0u8; MAC_LEN]);
        crypto::xaead_open(
            &self.keys.cookie,
            reply.nonce(),
            reply.encrypted_cookie(),
            &mac1,
            &mut cookie[..],
        )
        .map_err(|()| CookieReplyError::Forged)?;
        self.cookie = Some((cookie, now_ns));
        self.last_mac1_sent = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use crate::messages::{INITIATION_LEN, TYPE_COOKIE_REPLY};
    use rand_core::OsRng;

    fn responder() -> (PublicKey, CookieChecker) {
        let public = PrivateKey::generate(&mut OsRng).public_key();
        (public, CookieChecker::new(&public))
    }

    fn initiation_to(jar: &mut CookieJar, now_ns: u64) -> [u8; INITIATION_LEN] {
        let mut message = [0x11u8; INITIATION_LEN];
        message[..4].copy_from_slice(&1u32.to_le_bytes());
        jar.stamp(&mut message, now_ns);
        message
    }

    #[test]
    fn mac1_is_checked_always_and_mac2_only_under_load() {
        let (public, mut checker) = responder();
        let mut jar = CookieJar::new(&public);
        let source: SocketAddr = "198.18.0.2:51820".parse().unwrap();
        let mut message = initiation_to(&mut jar, 0);
        assert_eq!(
            checker.verify(&message, source, false, 0, &mut OsRng),
            MacVerdict::Valid
        );
        assert_eq!(
            checker.verify(&message, source, true, 0, &mut OsRng),
            MacVerdict::CookieRequired
        );
        message[20] ^= 1;
        assert_eq!(
            checker.verify(&message, source, false, 0, &mut OsRng),
            MacVerdict::InvalidMac1
        );
    }

    #[test]
    fn a_cookie_reply_unlocks_the_next_message_from_the_same_address_only() {
        let (public, mut checker) = responder();
        let mut jar = CookieJar::new(&public);
        let source: SocketAddr = "[2001:db8::2]:51820".parse().unwrap();
        let first = initiation_to(&mut jar, 0);
        let reply_bytes = checker.cookie_reply(&first, 77, source, 0, &mut OsRng);
        let reply = CookieReply::new_checked(&reply_bytes[..]).unwrap();
        assert_eq!(reply.receiver_index(), 77);
        jar.consume_reply(&reply, 1).unwrap();
        // A second copy of the same reply is refused: it answered a message already answered.
        assert_eq!(
            jar.consume_reply(&reply, 1),
            Err(CookieReplyError::NothingSent)
        );

        let second = initiation_to(&mut jar, 2);
        assert_eq!(
            checker.verify(&second, source, true, 2, &mut OsRng),
            MacVerdict::ValidWithCookie
        );
        let elsewhere: SocketAddr = "[2001:db8::3]:51820".parse().unwrap();
        assert_eq!(
            checker.verify(&second, elsewhere, true, 2, &mut OsRng),
            MacVerdict::CookieRequired
        );
        let other_port: SocketAddr = "[2001:db8::2]:51821".parse().unwrap();
        assert_eq!(
            checker.verify(&second, other_port, true, 2, &mut OsRng),
            MacVerdict::CookieRequired
        );
    }

    #[test]
    fn forged_and_misdirected_replies_are_refused() {
        let (public, mut checker) = responder();
        let mut jar = CookieJar::new(&public);
        let source: SocketAddr = "198.18.0.2:1".parse().unwrap();
        let first = initiation_to(&mut jar, 0);

        // Sealed for another message's mac1.
        let mut other = first;
        other[30] ^= 0xff;
        let mut other_jar = CookieJar::new(&public);
        other_jar.stamp(&mut other, 0);
        let reply_bytes = checker.cookie_reply(&other, 1, source, 0, &mut OsRng);
        let reply = CookieReply::new_checked(&reply_bytes[..]).unwrap();
        assert_eq!(jar.consume_reply(&reply, 0), Err(CookieReplyError::Forged));

        // Any flipped bit of a genuine reply.
        let genuine = checker.cookie_reply(&first, 1, source, 0, &mut OsRng);
        for byte in 8..COOKIE_REPLY_LEN {
            let mut forged = genuine;
            forged[byte] ^= 0x01;
            let reply = CookieReply::new_checked(&forged[..]).unwrap();
            assert_eq!(
                jar.consume_reply(&reply, 0),
                Err(CookieReplyError::Forged),
                "{byte}"
            );
        }
        // A reply from a key that is not the peer's.
        let (_, mut impostor) = responder();
        let reply_bytes = impostor.cookie_reply(&first, 1, source, 0, &mut OsRng);
        assert_eq!(
            u32::from_le_bytes(reply_bytes[..4].try_into().unwrap()),
            TYPE_COOKIE_REPLY
        );
        let reply = CookieReply::new_checked(&reply_bytes[..]).unwrap();
        assert_eq!(jar.consume_reply(&reply, 0), Err(CookieReplyError::Forged));
    }

    #[test]
    fn cookies_expire_and_secrets_rotate() {
        let (public, mut checker) = responder();
        let mut jar = CookieJar::new(&public);
        let source: SocketAddr = "198.18.0.2:1".parse().unwrap();
        let first = initiation_to(&mut jar, 0);
        let reply_bytes = checker.cookie_reply(&first, 1, source, 0, &mut OsRng);
        jar.consume_reply(&CookieReply::new_checked(&reply_bytes[..]).unwrap(), 0)
            .unwrap();
        let usable_ns = COOKIE_SECRET_MAX_AGE_NS - COOKIE_SECRET_LATENCY_NS;
        let late = initiation_to(&mut jar, usable_ns - 1);
        assert_ne!(&late[132..], &[0; 16]);
        assert_eq!(
            checker.verify(&late, source, true, usable_ns - 1, &mut OsRng),
            MacVerdict::ValidWithCookie
        );
        let too_late = initiation_to(&mut jar, usable_ns);
        assert_eq!(&too_late[132..], &[0; 16]);
        // The responder's secret has changed after COOKIE_SECRET_MAX_AGE: an old cookie fails.
        assert_eq!(
            checker.verify(&late, source, true, COOKIE_SECRET_MAX_AGE_NS, &mut OsRng),
            MacVerdict::CookieRequired
        );
    }
}
