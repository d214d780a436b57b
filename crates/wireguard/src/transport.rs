//! Transport data: sealing and opening datagrams with a session's keys, on any thread.
//!
//! A [`Keypair`] is what one completed handshake leaves behind (whitepaper 5.4.6): an index on
//! each side, a key for each direction, and the counter that is both the nonce and the replay
//! guard. It is `Send + Sync` and lives in an `Arc`, because several workers seal and open
//! datagrams of the same peer at once. Each of those workers:
//! - reserves a run of send counters with one atomic operation per batch
//!   ([`Keypair::reserve_counters`]) and seals each datagram with its own counter, so no two
//!   datagrams ever share a nonce;
//! - locks the replay window once per receive batch ([`Keypair::lock_replay`]) and opens each
//!   datagram with [`Keypair::open_locked`], which authenticates first and only then lets the
//!   counter into the window.
//!
//! The AEAD is ChaCha20-Poly1305 from `aws-lc-rs`, chosen by measurement on the deployment CPU
//! against `ring` and RustCrypto's `chacha20poly1305` (`benches/aead.rs`; the numbers are in the
//! repository's `bench-results/`): it sealed and opened 1420-byte datagrams fastest per core.
//! Its key context lives in memory that aws-lc wipes when it is freed (`OPENSSL_free` cleanses),
//! so a dropped `Keypair` leaves no key behind; the raw keys from the handshake are wiped as soon
//! as aws-lc has them.
//!
//! The control thread retires a keypair by marking it invalid ([`Keypair::invalidate`]); workers
//! that still hold it then get [`SealError::Invalid`] / [`OpenError::Expired`]. The control
//! thread also retires keypairs when they reach `REJECT_AFTER_TIME`, but it may be late (busy
//! with a flood of handshakes), so the data path enforces that limit itself (whitepaper 6.2:
//! no message is sent or accepted under a keypair older than REJECT_AFTER_TIME): counter
//! reservation and opening take the caller's `now_ns` of the batch and compare it with the
//! keypair's age. One comparison per batch or datagram; the per-packet path reads no clock.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use crate::constants::{PADDING_MULTIPLE, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME_NS};
use crate::crypto::counter_nonce;
use crate::messages::{TRANSPORT_HEADER_LEN, TRANSPORT_MIN_LEN, TRANSPORT_TAG_LEN, TYPE_TRANSPORT};
use crate::noise::SessionKeys;
use crate::replay::{ReplayGuard, ReplayProtection};

/// Why a datagram could not be sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SealError {
    /// `out` cannot hold the header, the plaintext and the tag.
    BufferTooSmall,
    /// The counter is at or beyond `REJECT_AFTER_MESSAGES`.
    CounterExhausted,
    /// The control thread has retired this keypair, or it is older than REJECT_AFTER_TIME.
    Invalid,
}

/// Why a datagram was dropped on receive. A small `Copy` enum the relay counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpenError {
    /// Shorter than a keepalive (32 bytes), or not type 4.
    Malformed,
    /// The receiver index is not this keypair's.
    WrongIndex,
    /// The keypair has been retired (expired, replaced, or its peer's keys zeroed), or is
    /// older than REJECT_AFTER_TIME.
    Expired,
    /// The counter is at or beyond `REJECT_AFTER_MESSAGES`.
    CounterRejected,
    /// The tag did not verify: corrupted, forged, or another key's.
    AuthenticationFailed,
    /// Authentic, but this counter was already accepted or is older than the window.
    Replayed,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed transport datagram",
            Self::WrongIndex => "receiver index of another keypair",
            Self::Expired => "keypair retired",
            Self::CounterRejected => "counter beyond REJECT_AFTER_MESSAGES",
            Self::AuthenticationFailed => "authentication failed",
            Self::Replayed => "replayed or too old",
        })
    }
}

impl std::error::Error for OpenError {}

/// The plaintext length after zero padding to a multiple of 16 (whitepaper 5.4.6).
pub const fn padded_len(plaintext_len: usize) -> usize {
    plaintext_len.next_multiple_of(PADDING_MULTIPLE)
}

/// The datagram length for a plaintext of `plaintext_len` bytes: header, padded plaintext, tag.
pub const fn sealed_len(plaintext_len: usize) -> usize {
    TRANSPORT_HEADER_LEN + padded_len(plaintext_len) + TRANSPORT_TAG_LEN
}

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("a 32-byte ChaCha20-Poly1305 key"),
    )
}

/// One session's transport state, shared by every thread that touches the peer's datagrams.
pub struct Keypair {
    local_index: u32,
    remote_index: u32,
    is_initiator: bool,
    created_ns: u64,
    send_key: LessSafeKey,
    receive_key: LessSafeKey,
    /// The next send counter not yet handed to anyone.
    send_counter: AtomicU64,
    replay: ReplayProtection,
    valid: AtomicBool,
    /// A responder's keypair may not send until a datagram from the initiator opens under it,
    /// proving the initiator derived the same keys (whitepaper 5.4.6). Cleared by that first
    /// datagram; always clear for the initiator.
    awaiting_confirmation: AtomicBool,
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keypair")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("is_initiator", &self.is_initiator)
            .field("created_ns", &self.created_ns)
            .field("send_counter", &self.send_counter.load(Ordering::Relaxed))
            .field("valid", &self.is_valid())
            .finish_non_exhaustive()
    }
}

impl Keypair {
    pub(crate) fn new(session: &SessionKeys, now_ns: u64) -> Self {
        Self {
            local_index: session.local_index,
            remote_index: session.remote_index,
            is_initiator: session.is_initiator,
            created_ns: now_ns,
            send_key: key(&session.send_key),
            receive_key: key(&session.receive_key),
            send_counter: AtomicU64::new(0),
            replay: ReplayProtection::new(),
            valid: AtomicBool::new(true),
            awaiting_confirmation: AtomicBool::new(!session.is_initiator),
        }
    }

    /// A keypair from raw keys, for tests, benches and fuzz targets that need one without a
    /// handshake. Never use fixed keys on a network.
    pub fn from_raw_keys(
        local_index: u32,
        remote_index: u32,
        send_key: [u8; 32],
        receive_key: [u8; 32],
        created_ns: u64,
    ) -> Self {
        let session = SessionKeys {
            local_index,
            remote_index,
            send_key: zeroize::Zeroizing::new(send_key),
            receive_key: zeroize::Zeroizing::new(receive_key),
            is_initiator: true,
        };
        Self::new(&session, created_ns)
    }

    /// Our index: datagrams to us under this keypair carry it.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// The peer's index: datagrams we send carry it.
    pub fn remote_index(&self) -> u32 {
        self.remote_index
    }

    /// Whether this side sent the initiation that made the keypair.
    pub fn is_initiator(&self) -> bool {
        self.is_initiator
    }

    /// When the handshake that made it completed, on the caller's clock.
    pub fn created_ns(&self) -> u64 {
        self.created_ns
    }

    /// How many send counters have been handed out.
    pub fn send_counter(&self) -> u64 {
        self.send_counter.load(Ordering::Relaxed)
    }

    /// False once the control thread has retired it.
    pub fn is_valid(&self) -> bool {
        self.valid.load(Ordering::Relaxed)
    }

    /// Whether the keypair is REJECT_AFTER_TIME old or older at `now_ns` (the clock its
    /// `created_ns` is on): then nothing may be sent or accepted under it (whitepaper 6.2).
    pub fn is_expired_at(&self, now_ns: u64) -> bool {
        now_ns >= self.created_ns.saturating_add(REJECT_AFTER_TIME_NS)
    }

    /// Retire the keypair: every later seal and open fails.
    pub(crate) fn invalidate(&self) {
        self.valid.store(false, Ordering::Relaxed);
    }

    /// False for a responder's keypair until the initiator's first datagram under it opened.
    pub fn is_confirmed(&self) -> bool {
        !self.awaiting_confirmation.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn from_raw_keys_with_role(index: u32, is_initiator: bool) -> Self {
        let session = SessionKeys {
            local_index: index,
            remote_index: index,
            send_key: zeroize::Zeroizing::new([1; 32]),
            receive_key: zeroize::Zeroizing::new([2; 32]),
            is_initiator,
        };
        Self::new(&session, 0)
    }

    /// Reserve `count` consecutive send counters for one batch at `now_ns`: one atomic
    /// read-modify-write, however many datagrams. Returns fewer than asked for near
    /// `REJECT_AFTER_MESSAGES`, and `None` once the counters are used up, the keypair is
    /// retired or it is REJECT_AFTER_TIME old; then a new handshake is needed.
    pub fn reserve_counters(&self, count: u64, now_ns: u64) -> Option<Range<u64>> {
        if !self.is_valid() || count == 0 || self.is_expired_at(now_ns) {
            return None;
        }
        // A compare-and-swap loop rather than `fetch_add`, so that refused reservations never
        // move the counter: it stays at most REJECT_AFTER_MESSAGES and can never wrap.
        let start = self
            .send_counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
                (next < REJECT_AFTER_MESSAGES)
                    .then(|| next.saturating_add(count).min(REJECT_AFTER_MESSAGES))
            })
            .ok()?;
        Some(start..start.saturating_add(count).min(REJECT_AFTER_MESSAGES))
    }

    /// Seal one plaintext; see [`Self::seal_gather`].
    pub fn seal(&self, counter: u64, plaintext: &[u8], out: &mut [u8]) -> Result<usize, SealError> {
        self.seal_gather(counter, &[plaintext], out)
    }

    /// Seal the concatenation of `parts` (for example a rewritten header and a payload that
    /// stays where it is) straight into `out` as a type-4 datagram: header, ciphertext of the
    /// plaintext zero-padded to a multiple of 16, tag. Returns the datagram's length.
    ///
    /// One part is sealed straight from where it is into `out` (the AEAD reads it and writes
    /// the ciphertext, its padding sealed as extra plaintext): no copy. Several parts are copied
    /// once, into `out`, and encrypted there in place. Padding never goes past the end
    /// of `out`, so a caller that wants the Linux module's padding (at most up to the MTU) passes
    /// an `out` of `MTU + 32` bytes. `counter` must come from [`Self::reserve_counters`]; a
    /// counter used twice would reuse a nonce.
    pub fn seal_gather(
        &self,
        counter: u64,
        parts: &[&[u8]],
        out: &mut [u8],
    ) -> Result<usize, SealError> {
        if !self.is_valid() {
            return Err(SealError::Invalid);
        }
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(SealError::CounterExhausted);
        }
        let plaintext_len: usize = parts.iter().map(|part| part.len()).sum();
        let room = out
            .len()
            .checked_sub(TRANSPORT_MIN_LEN)
            .ok_or(SealError::BufferTooSmall)?;
        if plaintext_len > room {
            return Err(SealError::BufferTooSmall);
        }
        let body_len = padded_len(plaintext_len).min(room);
        let datagram_len = TRANSPORT_HEADER_LEN + body_len + TRANSPORT_TAG_LEN;
        let (header, rest) = out.split_at_mut(TRANSPORT_HEADER_LEN);
        header[..4].copy_from_slice(&TYPE_TRANSPORT.to_le_bytes());
        header[4..8].copy_from_slice(&self.remote_index.to_le_bytes());
        header[8..16].copy_from_slice(&counter.to_le_bytes());
        let nonce = Nonce::assume_unique_for_key(counter_nonce(counter));
        if let [plaintext] = parts {
            // `body_len - plaintext_len` is under 16: the padding's zeros are the AEAD's extra
            // plaintext, sealed just before the tag.
            const ZEROS: [u8; PADDING_MULTIPLE] = [0; PADDING_MULTIPLE];
            let (ciphertext, rest) = rest.split_at_mut(plaintext_len);
            let padding = &ZEROS[..body_len - plaintext_len];
            self.send_key
                .seal_out_of_place_scatter(
                    nonce,
                    Aad::empty(),
                    plaintext,
                    ciphertext,
                    padding,
                    &mut rest[..padding.len() + TRANSPORT_TAG_LEN],
                )
                .map_err(|_| SealError::BufferTooSmall)?;
            return Ok(datagram_len);
        }
        let (body, rest) = rest.split_at_mut(body_len);
        let mut filled = 0;
        for part in parts {
            body[filled..filled + part.len()].copy_from_slice(part);
            filled += part.len();
        }
        body[filled..].fill(0);
        let tag = self
            .send_key
            .seal_in_place_separate_tag(nonce, Aad::empty(), body)
            .map_err(|_| SealError::BufferTooSmall)?;
        rest[..TRANSPORT_TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(datagram_len)
    }

    /// Lock this keypair's replay window for a batch (see `replay.rs`).
    pub fn lock_replay(&self) -> ReplayGuard<'_> {
        self.replay.lock()
    }

    /// Open one datagram at `now_ns`, locking the replay window for it alone. Batches should
    /// prefer [`Self::open_locked`].
    pub fn open(&self, datagram: &mut [u8], now_ns: u64) -> Result<Range<usize>, OpenError> {
        let mut guard = self.replay.lock();
        self.open_locked(&mut guard, datagram, now_ns)
    }

    /// Open a type-4 datagram in place with the replay window already locked. On success the
    /// returned range of `datagram` holds the plaintext, still padded (the relay trims it by the
    /// inner IP header's length); an empty range is a keepalive. The counter enters the window
    /// only after the tag has verified. A `replay` guard of another keypair is not used: this
    /// keypair's own window is locked instead. A keypair REJECT_AFTER_TIME old at `now_ns`
    /// opens nothing.
    pub fn open_locked(
        &self,
        replay: &mut ReplayGuard<'_>,
        datagram: &mut [u8],
        now_ns: u64,
    ) -> Result<Range<usize>, OpenError> {
        self.open_confirming(replay, datagram, now_ns)
            .map(|(range, _)| range)
    }

    /// [`Self::open_locked`], also telling whether this datagram was the one that confirmed a
    /// responder's keypair.
    pub(crate) fn open_confirming(
        &self,
        replay: &mut ReplayGuard<'_>,
        datagram: &mut [u8],
        now_ns: u64,
    ) -> Result<(Range<usize>, bool), OpenError> {
        let counter = self.decrypt(datagram, now_ns)?;
        let fresh = if replay.guards(&self.replay) {
            replay.check_and_set(counter)
        } else {
            debug_assert!(false, "open_locked with another keypair's replay guard");
            self.replay.lock().check_and_set(counter)
        };
        if !fresh {
            return Err(OpenError::Replayed);
        }
        let confirmed_now = self.awaiting_confirmation.load(Ordering::Relaxed)
            && self.awaiting_confirmation.swap(false, Ordering::Relaxed);
        Ok((
            TRANSPORT_HEADER_LEN..datagram.len() - TRANSPORT_TAG_LEN,
            confirmed_now,
        ))
    }

    /// Authenticate and decrypt in place, without the replay window; returns the counter.
    fn decrypt(&self, datagram: &mut [u8], now_ns: u64) -> Result<u64, OpenError> {
        if datagram.len() < TRANSPORT_MIN_LEN || datagram[..4] != TYPE_TRANSPORT.to_le_bytes() {
            return Err(OpenError::Malformed);
        }
        let receiver_index =
            u32::from_le_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
        if receiver_index != self.local_index {
            return Err(OpenError::WrongIndex);
        }
        if !self.is_valid() || self.is_expired_at(now_ns) {
            return Err(OpenError::Expired);
        }
        let mut counter_bytes = [0u8; 8];
        counter_bytes.copy_from_slice(&datagram[8..16]);
        let counter = u64::from_le_bytes(counter_bytes);
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(OpenError::CounterRejected);
        }
        self.receive_key
            .open_in_place(
                Nonce::assume_unique_for_key(counter_nonce(counter)),
                Aad::empty(),
                &mut datagram[TRANSPORT_HEADER_LEN..],
            )
            .map_err(|_| OpenError::AuthenticationFailed)?;
        Ok(counter)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Two keypairs that talk to each other: (ours, theirs).
    pub(crate) fn linked_pair() -> (Keypair, Keypair) {
        let ours = Keypair::from_raw_keys(1, 2, [0x11; 32], [0x22; 32], 0);
        let theirs = Keypair::from_raw_keys(2, 1, [0x22; 32], [0x11; 32], 0);
        (ours, theirs)
    }

    #[test]
    fn seal_then_open_round_trips_with_padding_to_16() {
        let (ours, theirs) = linked_pair();
        for len in [0usize, 1, 15, 16, 17, 100, 1420] {
            let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut datagram = vec![0xffu8; 2048];
            let written = ours.seal(len as u64, &plaintext, &mut datagram).unwrap();
            assert_eq!(written, sealed_len(len));
            assert_eq!((written - 32) % 16, 0, "len {len}");
            let range = theirs.open(&mut datagram[..written], 0).unwrap();
            assert_eq!(range.len(), padded_len(len));
            assert_eq!(&datagram[range.start..range.start + len], &plaintext[..]);
            assert!(
                datagram[range.start + len..range.end]
                    .iter()
                    .all(|&b| b == 0)
            );
        }
    }

    /// A single part (sealed out of place, its padding as extra plaintext) and the same bytes
    /// in two parts (copied, sealed in place) make the same datagram, at every padding length
    /// and with the padding cut short by a small `out`; and the single part is left as it was.
    #[test]
    fn one_part_seals_out_of_place_like_parts_copied_in() {
        let (ours, theirs) = linked_pair();
        for len in (0..=80).chain([1419, 1420]) {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            for out_len in [sealed_len(len), len + 32, len + 33] {
                let mut one = vec![0xa5u8; out_len];
                let mut two = vec![0x5au8; out_len];
                let (head, tail) = plaintext.split_at(len / 3);
                let n = ours.seal(9, &plaintext, &mut one).unwrap();
                let m = ours.seal_gather(9, &[head, tail], &mut two).unwrap();
                assert_eq!(n, m, "len {len}, out {out_len}");
                assert_eq!(n, 32 + padded_len(len).min(out_len - 32));
                assert_eq!(one[..n], two[..n], "len {len}, out {out_len}");
                assert_eq!(
                    plaintext,
                    (0..len).map(|i| (i * 7 + 3) as u8).collect::<Vec<_>>()
                );
                // The same counter each time: decrypted past the replay window.
                assert_eq!(theirs.decrypt(&mut one[..n], 0), Ok(9));
                assert_eq!(&one[16..16 + len], &plaintext[..]);
                assert!(one[16 + len..n - 16].iter().all(|&b| b == 0));
            }
        }
    }

    #[test]
    fn a_keepalive_is_only_a_header_and_a_tag() {
        let (ours, theirs) = linked_pair();
        let mut datagram = [0u8; 32];
        assert_eq!(ours.seal(0, &[], &mut datagram), Ok(32));
        assert_eq!(theirs.open(&mut datagram, 0), Ok(16..16));
    }

    #[test]
    fn gathered_parts_seal_like_one_slice() {
        let (ours, theirs) = linked_pair();
        let header = [0x45u8; 20];
        let payload = [0x99u8; 1000];
        let mut gathered = [0u8; 1100];
        let n = ours
            .seal_gather(5, &[&header, &payload], &mut gathered)
            .unwrap();
        let mut whole = [0u8; 1100];
        let joined: Vec<u8> = header.iter().chain(payload.iter()).copied().collect();
        let m = ours.seal(5, &joined, &mut whole).unwrap();
        assert_eq!(gathered[..n], whole[..m]);
        let range = theirs.open(&mut gathered[..n], 0).unwrap();
        assert_eq!(&gathered[range.start..range.start + 1020], &joined[..]);
    }

    #[test]
    fn padding_stops_at_the_end_of_the_buffer() {
        let (ours, theirs) = linked_pair();
        // 1420 bytes is not a multiple of 16; an out of MTU + 32 bytes caps the padding.
        let plaintext = [7u8; 1420];
        let mut datagram = [0u8; 1420 + 32];
        assert_eq!(ours.seal(0, &plaintext, &mut datagram), Ok(1452));
        assert_eq!(theirs.open(&mut datagram, 0), Ok(16..1436));
        let mut short = [0u8; 1420 + 31];
        assert_eq!(
            ours.seal(1, &plaintext, &mut short),
            Err(SealError::BufferTooSmall)
        );
    }

    #[test]
    fn tampering_with_any_byte_fails() {
        let (ours, theirs) = linked_pair();
        let mut sealed = [0u8; 64];
        let n = ours
            .seal(3, b"a payload of some length", &mut sealed)
            .unwrap();
        for byte in 0..n {
            let mut tampered = sealed;
            tampered[byte] ^= 0x04;
            let result = theirs.open(&mut tampered[..n], 0);
            let expected = match byte {
                0..4 => OpenError::Malformed,
                4..8 => OpenError::WrongIndex,
                _ => OpenError::AuthenticationFailed,
            };
            assert_eq!(result, Err(expected), "byte {byte}");
        }
        // Truncated by one byte, and too short to hold a tag (on copies: a failed open may
        // overwrite the buffer).
        let mut truncated = sealed;
        assert_eq!(
            theirs.open(&mut truncated[..n - 1], 0),
            Err(OpenError::AuthenticationFailed)
        );
        assert_eq!(
            theirs.open(&mut truncated[..31], 0),
            Err(OpenError::Malformed)
        );
        // The failures did not touch the window: the genuine datagram still opens once.
        assert!(theirs.open(&mut sealed[..n], 0).is_ok());
        let mut again = sealed;
        ours.seal(3, b"a payload of some length", &mut again)
            .unwrap();
        assert_eq!(theirs.open(&mut again[..n], 0), Err(OpenError::Replayed));
    }

    #[test]
    fn counters_at_reject_after_messages_are_refused() {
        let (ours, theirs) = linked_pair();
        let mut datagram = [0u8; 48];
        assert_eq!(
            ours.seal(REJECT_AFTER_MESSAGES, b"x", &mut datagram),
            Err(SealError::CounterExhausted)
        );
        assert_eq!(
            ours.seal(u64::MAX, b"x", &mut datagram),
            Err(SealError::CounterExhausted)
        );
        let n = ours
            .seal(REJECT_AFTER_MESSAGES - 1, b"x", &mut datagram)
            .unwrap();
        assert!(theirs.open(&mut datagram[..n], 0).is_ok());
        // A forged header counter at the limit is refused before any decryption.
        datagram[8..16].copy_from_slice(&REJECT_AFTER_MESSAGES.to_le_bytes());
        assert_eq!(
            theirs.open(&mut datagram[..n], 0),
            Err(OpenError::CounterRejected)
        );
    }

    #[test]
    fn reservations_stop_at_the_limit_and_never_wrap() {
        let (ours, _) = linked_pair();
        assert_eq!(ours.reserve_counters(64, 0), Some(0..64));
        assert_eq!(ours.reserve_counters(1, 0), Some(64..65));
        ours.send_counter
            .store(REJECT_AFTER_MESSAGES - 10, Ordering::Relaxed);
        assert_eq!(
            ours.reserve_counters(64, 0),
            Some(REJECT_AFTER_MESSAGES - 10..REJECT_AFTER_MESSAGES)
        );
        for _ in 0..10_000 {
            assert_eq!(ours.reserve_counters(64, 0), None);
        }
        assert_eq!(ours.send_counter(), REJECT_AFTER_MESSAGES);
    }

    #[test]
    fn threads_reserving_at_once_never_share_a_counter() {
        let (ours, _) = linked_pair();
        let ranges = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        let range = ours.reserve_counters(7, 0).unwrap();
                        ranges.lock().unwrap().push(range);
                    }
                });
            }
        });
        let mut ranges = ranges.into_inner().unwrap();
        ranges.sort_by_key(|range| range.start);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert_eq!(ranges.last().unwrap().end, 28_000);
    }

    #[test]
    fn a_retired_keypair_neither_seals_nor_opens() {
        let (ours, theirs) = linked_pair();
        let mut datagram = [0u8; 48];
        let n = ours.seal(0, b"x", &mut datagram).unwrap();
        theirs.invalidate();
        assert_eq!(theirs.open(&mut datagram[..n], 0), Err(OpenError::Expired));
        ours.invalidate();
        assert_eq!(ours.seal(1, b"x", &mut datagram), Err(SealError::Invalid));
        assert_eq!(ours.reserve_counters(1, 0), None);
    }

    #[test]
    fn a_keypair_reject_after_time_old_neither_opens_nor_seals() {
        // Made at 5 s; the control thread has not retired them (it may be late).
        let created_ns = 5_000_000_000;
        let ours = Keypair::from_raw_keys(1, 2, [0x11; 32], [0x22; 32], created_ns);
        let theirs = Keypair::from_raw_keys(2, 1, [0x22; 32], [0x11; 32], created_ns);
        let last_ns = created_ns + REJECT_AFTER_TIME_NS - 1;
        let mut datagram = [0u8; 48];
        let counter = ours.reserve_counters(1, last_ns).unwrap().start;
        let n = ours.seal(counter, b"x", &mut datagram).unwrap();
        let mut late = datagram;
        assert!(theirs.open(&mut datagram[..n], last_ns).is_ok());
        assert_eq!(ours.reserve_counters(1, last_ns + 1), None);
        assert_eq!(
            theirs.open(&mut late[..n], last_ns + 1),
            Err(OpenError::Expired)
        );
        assert_eq!(
            ours.send_counter(),
            1,
            "a refused reservation takes nothing"
        );
    }

    #[test]
    fn a_foreign_guard_still_checks_the_right_window() {
        let (ours, theirs) = linked_pair();
        let (other, _) = linked_pair();
        let mut datagram = [0u8; 48];
        let n = ours.seal(9, b"x", &mut datagram).unwrap();
        let copy = datagram;
        let mut guard = theirs.lock_replay();
        assert!(
            theirs
                .open_locked(&mut guard, &mut datagram[..n], 0)
                .is_ok()
        );
        drop(guard);
        if cfg!(not(debug_assertions)) {
            let mut foreign = other.lock_replay();
            let mut replayed = copy;
            assert_eq!(
                theirs.open_locked(&mut foreign, &mut replayed[..n], 0),
                Err(OpenError::Replayed)
            );
        }
    }
}
