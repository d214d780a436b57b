//! Views over the four WireGuard messages, as they travel in UDP payloads.
//!
//! Layouts are from the whitepaper (section 5.4) and `drivers/net/wireguard/messages.h`: a
//! little-endian `u32` type whose upper three bytes are zero, then fixed fields. Each view wraps
//! any `T: AsRef<[u8]>` (smoltcp's `wire` style); `new_checked` validates the length and type
//! once, and after that no accessor can panic. Setters exist only for `T: AsMut<[u8]>`.
//! [`classify`] is the relay's cheap router: it reads the first four bytes and the length, and
//! nothing else, so a worker can hand handshake traffic to the control thread without parsing it.

use std::fmt;

/// Message type 1: handshake initiation.
pub const TYPE_INITIATION: u32 = 1;
/// Message type 2: handshake response.
pub const TYPE_RESPONSE: u32 = 2;
/// Message type 3: cookie reply.
pub const TYPE_COOKIE_REPLY: u32 = 3;
/// Message type 4: transport data.
pub const TYPE_TRANSPORT: u32 = 4;

/// Length of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Length of a handshake response.
pub const RESPONSE_LEN: usize = 92;
/// Length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Length of the transport header: type, receiver index, counter.
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// Length of the Poly1305 tag that closes every transport message.
pub const TRANSPORT_TAG_LEN: usize = 16;
/// The shortest transport message: a keepalive (header and tag, no plaintext).
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + TRANSPORT_TAG_LEN;
/// Bytes a transport message adds to its (padded) plaintext.
pub const TRANSPORT_OVERHEAD: usize = TRANSPORT_MIN_LEN;

/// The four kinds of message, as [`classify`] tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Type 1, 148 bytes: the control thread's.
    HandshakeInitiation,
    /// Type 2, 92 bytes: the control thread's.
    HandshakeResponse,
    /// Type 3, 64 bytes: the control thread's.
    CookieReply,
    /// Type 4, 32 bytes or more: a worker's.
    TransportData,
}

/// Which message a datagram is, from its type word and length alone; `None` for anything that
/// is not a well-formed WireGuard message (wrong type, non-zero reserved bytes, wrong length).
pub fn classify(datagram: &[u8]) -> Option<MessageKind> {
    let type_word = u32::from_le_bytes(datagram.get(..4)?.try_into().ok()?);
    match (type_word, datagram.len()) {
        (TYPE_INITIATION, INITIATION_LEN) => Some(MessageKind::HandshakeInitiation),
        (TYPE_RESPONSE, RESPONSE_LEN) => Some(MessageKind::HandshakeResponse),
        (TYPE_COOKIE_REPLY, COOKIE_REPLY_LEN) => Some(MessageKind::CookieReply),
        (TYPE_TRANSPORT, len) if len >= TRANSPORT_MIN_LEN => Some(MessageKind::TransportData),
        _ => None,
    }
}

/// Why a buffer is not the message a view was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageError {
    /// Not the length this message has (or, for transport data, shorter than a keepalive).
    WrongLength,
    /// The type word is another message's, or its reserved bytes are not zero.
    WrongType,
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongLength => f.write_str("message has the wrong length"),
            Self::WrongType => f.write_str("message has the wrong type"),
        }
    }
}

impl std::error::Error for MessageError {}

/// Field ranges, in bytes from the start of the message.
mod field {
    use std::ops::Range;

    pub const TYPE: Range<usize> = 0..4;

    pub mod initiation {
        use std::ops::Range;
        pub const SENDER_INDEX: Range<usize> = 4..8;
        pub const EPHEMERAL: Range<usize> = 8..40;
        pub const STATIC: Range<usize> = 40..88;
        pub const TIMESTAMP: Range<usize> = 88..116;
        pub const MAC1: Range<usize> = 116..132;
        pub const MAC2: Range<usize> = 132..148;
    }

    pub mod response {
        use std::ops::Range;
        pub const SENDER_INDEX: Range<usize> = 4..8;
        pub const RECEIVER_INDEX: Range<usize> = 8..12;
        pub const EPHEMERAL: Range<usize> = 12..44;
        pub const EMPTY: Range<usize> = 44..60;
        pub const MAC1: Range<usize> = 60..76;
        pub const MAC2: Range<usize> = 76..92;
    }

    pub mod cookie_reply {
        use std::ops::Range;
        pub const RECEIVER_INDEX: Range<usize> = 4..8;
        pub const NONCE: Range<usize> = 8..32;
        pub const COOKIE: Range<usize> = 32..64;
    }

    pub mod transport {
        use std::ops::Range;
        pub const RECEIVER_INDEX: Range<usize> = 4..8;
        pub const COUNTER: Range<usize> = 8..16;
        pub const PAYLOAD_START: usize = 16;
    }
}

/// `&buffer[range]` as an array reference; the range's length is `N` by construction of the
/// field constants, and the buffer is long enough once `new_checked` has accepted it.
fn array<const N: usize>(buffer: &[u8], range: std::ops::Range<usize>) -> &[u8; N] {
    buffer[range]
        .try_into()
        .expect("field ranges have the length of their arrays")
}

fn array_mut<const N: usize>(buffer: &mut [u8], range: std::ops::Range<usize>) -> &mut [u8; N] {
    (&mut buffer[range])
        .try_into()
        .expect("field ranges have the length of their arrays")
}

fn read_u32(buffer: &[u8], range: std::ops::Range<usize>) -> u32 {
    u32::from_le_bytes(*array(buffer, range))
}

fn check(buffer: &[u8], message_type: u32, len_ok: bool) -> Result<(), MessageError> {
    if !len_ok {
        return Err(MessageError::WrongLength);
    }
    if read_u32(buffer, field::TYPE) != message_type {
        return Err(MessageError::WrongType);
    }
    Ok(())
}

macro_rules! fixed_view {
    ($(#[$doc:meta])* $name:ident, $type:expr, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// The view without checks; accessors panic if the buffer is shorter than the
            /// message. Meant for filling a buffer that is known to be long enough.
            pub fn new_unchecked(buffer: T) -> Self {
                Self { buffer }
            }

            /// The view, if the buffer is exactly this message's length and type. No accessor
            /// panics afterwards.
            pub fn new_checked(buffer: T) -> Result<Self, MessageError> {
                let bytes = buffer.as_ref();
                check(bytes, $type, bytes.len() == $len)?;
                Ok(Self { buffer })
            }

            /// The whole message.
            pub fn as_bytes(&self) -> &[u8] {
                self.buffer.as_ref()
            }

            /// The buffer back.
            pub fn into_inner(self) -> T {
                self.buffer
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            /// Write the type word (with its three zero bytes).
            pub fn set_message_type(&mut self) {
                self.buffer.as_mut()[field::TYPE].copy_from_slice(&($type as u32).to_le_bytes());
            }
        }
    };
}

fixed_view!(
    /// A handshake initiation (type 1, 148 bytes).
    Initiation,
    TYPE_INITIATION,
    INITIATION_LEN
);
fixed_view!(
    /// A handshake response (type 2, 92 bytes).
    Response,
    TYPE_RESPONSE,
    RESPONSE_LEN
);
fixed_view!(
    /// A cookie reply (type 3, 64 bytes).
    CookieReply,
    TYPE_COOKIE_REPLY,
    COOKIE_REPLY_LEN
);

impl<T: AsRef<[u8]>> Initiation<T> {
    /// The initiator's index for this handshake (and, later, for the keypair).
    pub fn sender_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::initiation::SENDER_INDEX)
    }
    /// The initiator's ephemeral public key, in the clear.
    pub fn ephemeral(&self) -> &[u8; 32] {
        array(self.buffer.as_ref(), field::initiation::EPHEMERAL)
    }
    /// The initiator's static public key, sealed (32 bytes and a tag).
    pub fn encrypted_static(&self) -> &[u8; 48] {
        array(self.buffer.as_ref(), field::initiation::STATIC)
    }
    /// The TAI64N timestamp, sealed (12 bytes and a tag).
    pub fn encrypted_timestamp(&self) -> &[u8; 28] {
        array(self.buffer.as_ref(), field::initiation::TIMESTAMP)
    }
    /// `mac1`.
    pub fn mac1(&self) -> &[u8; 16] {
        array(self.buffer.as_ref(), field::initiation::MAC1)
    }
    /// `mac2` (zeros when the initiator has no cookie).
    pub fn mac2(&self) -> &[u8; 16] {
        array(self.buffer.as_ref(), field::initiation::MAC2)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Initiation<T> {
    /// Set the sender index.
    pub fn set_sender_index(&mut self, index: u32) {
        self.buffer.as_mut()[field::initiation::SENDER_INDEX].copy_from_slice(&index.to_le_bytes());
    }
    /// The ephemeral field, to fill.
    pub fn ephemeral_mut(&mut self) -> &mut [u8; 32] {
        array_mut(self.buffer.as_mut(), field::initiation::EPHEMERAL)
    }
    /// The sealed static field, to fill.
    pub fn encrypted_static_mut(&mut self) -> &mut [u8; 48] {
        array_mut(self.buffer.as_mut(), field::initiation::STATIC)
    }
    /// The sealed timestamp field, to fill.
    pub fn encrypted_timestamp_mut(&mut self) -> &mut [u8; 28] {
        array_mut(self.buffer.as_mut(), field::initiation::TIMESTAMP)
    }
}

impl<T: AsRef<[u8]>> Response<T> {
    /// The responder's index for the new keypair.
    pub fn sender_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::response::SENDER_INDEX)
    }
    /// The initiator's index this response answers.
    pub fn receiver_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::response::RECEIVER_INDEX)
    }
    /// The responder's ephemeral public key, in the clear.
    pub fn ephemeral(&self) -> &[u8; 32] {
        array(self.buffer.as_ref(), field::response::EPHEMERAL)
    }
    /// The sealed empty payload: only a tag.
    pub fn encrypted_nothing(&self) -> &[u8; 16] {
        array(self.buffer.as_ref(), field::response::EMPTY)
    }
    /// `mac1`.
    pub fn mac1(&self) -> &[u8; 16] {
        array(self.buffer.as_ref(), field::response::MAC1)
    }
    /// `mac2`.
    pub fn mac2(&self) -> &[u8; 16] {
        array(self.buffer.as_ref(), field::response::MAC2)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Response<T> {
    /// Set the sender index.
    pub fn set_sender_index(&mut self, index: u32) {
        self.buffer.as_mut()[field::response::SENDER_INDEX].copy_from_slice(&index.to_le_bytes());
    }
    /// Set the receiver index.
    pub fn set_receiver_index(&mut self, index: u32) {
        self.buffer.as_mut()[field::response::RECEIVER_INDEX].copy_from_slice(&index.to_le_bytes());
    }
    /// The ephemeral field, to fill.
    pub fn ephemeral_mut(&mut self) -> &mut [u8; 32] {
        array_mut(self.buffer.as_mut(), field::response::EPHEMERAL)
    }
    /// The sealed empty payload, to fill.
    pub fn encrypted_nothing_mut(&mut self) -> &mut [u8; 16] {
        array_mut(self.buffer.as_mut(), field::response::EMPTY)
    }
}

impl<T: AsRef<[u8]>> CookieReply<T> {
    /// The sender index of the message this reply answers.
    pub fn receiver_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::cookie_reply::RECEIVER_INDEX)
    }
    /// The random XChaCha20 nonce.
    pub fn nonce(&self) -> &[u8; 24] {
        array(self.buffer.as_ref(), field::cookie_reply::NONCE)
    }
    /// The sealed cookie (16 bytes and a tag).
    pub fn encrypted_cookie(&self) -> &[u8; 32] {
        array(self.buffer.as_ref(), field::cookie_reply::COOKIE)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> CookieReply<T> {
    /// Set the receiver index.
    pub fn set_receiver_index(&mut self, index: u32) {
        self.buffer.as_mut()[field::cookie_reply::RECEIVER_INDEX]
            .copy_from_slice(&index.to_le_bytes());
    }
    /// The nonce field, to fill.
    pub fn nonce_mut(&mut self) -> &mut [u8; 24] {
        array_mut(self.buffer.as_mut(), field::cookie_reply::NONCE)
    }
    /// The sealed cookie field, to fill.
    pub fn encrypted_cookie_mut(&mut self) -> &mut [u8; 32] {
        array_mut(self.buffer.as_mut(), field::cookie_reply::COOKIE)
    }
}

/// A transport data message (type 4): a 16-byte header, then the sealed, padded plaintext.
#[derive(Clone, Copy, Debug)]
pub struct Transport<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Transport<T> {
    /// The view without checks; accessors panic on a buffer shorter than a keepalive.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// The view, if the buffer holds at least a header and a tag and has type 4. No accessor
    /// panics afterwards.
    pub fn new_checked(buffer: T) -> Result<Self, MessageError> {
        let bytes = buffer.as_ref();
        check(bytes, TYPE_TRANSPORT, bytes.len() >= TRANSPORT_MIN_LEN)?;
        Ok(Self { buffer })
    }

    /// The receiver's index: which keypair opens this message.
    pub fn receiver_index(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::transport::RECEIVER_INDEX)
    }

    /// The sender's counter, which is also the nonce.
    pub fn counter(&self) -> u64 {
        u64::from_le_bytes(*array(self.buffer.as_ref(), field::transport::COUNTER))
    }

    /// Ciphertext then tag.
    pub fn sealed_payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::transport::PAYLOAD_START..]
    }

    /// The buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Transport<T> {
    /// Write the whole header.
    pub fn set_header(&mut self, receiver_index: u32, counter: u64) {
        let buffer = self.buffer.as_mut();
        buffer[field::TYPE].copy_from_slice(&TYPE_TRANSPORT.to_le_bytes());
        buffer[field::transport::RECEIVER_INDEX].copy_from_slice(&receiver_index.to_le_bytes());
        buffer[field::transport::COUNTER].copy_from_slice(&counter.to_le_bytes());
    }
}

/// The byte offset of `mac1` in a handshake message of length `len`: `mac1` and `mac2` are
/// always the last 32 bytes (whitepaper 5.4.4).
pub(crate) const fn mac1_offset(len: usize) -> usize {
    len - 32
}

/// The byte offset of `mac2`.
pub(crate) const fn mac2_offset(len: usize) -> usize {
    len - 16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(type_word: u32, len: usize) -> Vec<u8> {
        let mut bytes = vec![0xa5; len];
        let type_bytes = type_word.to_le_bytes();
        let head = len.min(4);
        bytes[..head].copy_from_slice(&type_bytes[..head]);
        bytes
    }

    #[test]
    fn classify_checks_type_reserved_bytes_and_length() {
        let cases: &[(Vec<u8>, Option<MessageKind>)] = &[
            (message(1, 148), Some(MessageKind::HandshakeInitiation)),
            (message(1, 147), None),
            (message(1, 149), None),
            (message(2, 92), Some(MessageKind::HandshakeResponse)),
            (message(2, 148), None),
            (message(3, 64), Some(MessageKind::CookieReply)),
            (message(4, 32), Some(MessageKind::TransportData)),
            (message(4, 1452), Some(MessageKind::TransportData)),
            (message(4, 31), None),
            (message(0x0100_0004, 64), None),
            (message(5, 64), None),
            (message(0, 64), None),
            (vec![4, 0, 0], None),
            (Vec::new(), None),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                classify(bytes),
                *expected,
                "{:?} len {}",
                &bytes.get(..4),
                bytes.len()
            );
        }
    }

    #[test]
    fn views_refuse_wrong_lengths_and_types() {
        assert_eq!(
            Initiation::new_checked(&message(1, 147)[..]).unwrap_err(),
            MessageError::WrongLength
        );
        assert_eq!(
            Initiation::new_checked(&message(2, 148)[..]).unwrap_err(),
            MessageError::WrongType
        );
        assert_eq!(
            Response::new_checked(&message(2, 93)[..]).unwrap_err(),
            MessageError::WrongLength
        );
        assert_eq!(
            CookieReply::new_checked(&message(0x0001_0003, 64)[..]).unwrap_err(),
            MessageError::WrongType
        );
        assert_eq!(
            Transport::new_checked(&message(4, 31)[..]).unwrap_err(),
            MessageError::WrongLength
        );
        // Every length from 0 to 200 either passes the check or is refused: never a panic.
        for len in 0..200 {
            for type_word in 1..=4 {
                let bytes = message(type_word, len);
                if let Ok(view) = Initiation::new_checked(&bytes[..]) {
                    let _ = (
                        view.sender_index(),
                        view.mac1(),
                        view.mac2(),
                        view.ephemeral(),
                    );
                }
                if let Ok(view) = Response::new_checked(&bytes[..]) {
                    let _ = (view.receiver_index(), view.encrypted_nothing(), view.mac2());
                }
                if let Ok(view) = CookieReply::new_checked(&bytes[..]) {
                    let _ = (view.receiver_index(), view.nonce(), view.encrypted_cookie());
                }
                if let Ok(view) = Transport::new_checked(&bytes[..]) {
                    let _ = (view.receiver_index(), view.counter(), view.sealed_payload());
                }
            }
        }
    }

    #[test]
    fn fields_land_where_the_protocol_puts_them() {
        let mut bytes = [0u8; INITIATION_LEN];
        let mut initiation = Initiation::new_unchecked(&mut bytes[..]);
        initiation.set_message_type();
        initiation.set_sender_index(0x0403_0201);
        initiation.ephemeral_mut().fill(0xee);
        let view = Initiation::new_checked(&bytes[..]).unwrap();
        assert_eq!(view.sender_index(), 0x0403_0201);
        assert_eq!(&bytes[..8], &[1, 0, 0, 0, 1, 2, 3, 4]);
        assert_eq!(&bytes[8..40], &[0xee; 32]);
        assert_eq!(mac1_offset(INITIATION_LEN), 116);
        assert_eq!(mac2_offset(RESPONSE_LEN), 76);

        let mut bytes = [0u8; TRANSPORT_MIN_LEN];
        Transport::new_unchecked(&mut bytes[..]).set_header(7, 0x0102_0304_0506_0708);
        assert_eq!(
            &bytes[..16],
            &[4, 0, 0, 0, 7, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        let view = Transport::new_checked(&bytes[..]).unwrap();
        assert_eq!(view.counter(), 0x0102_0304_0506_0708);
        assert_eq!(view.sealed_payload().len(), 16);
    }
}
