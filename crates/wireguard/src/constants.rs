//! The protocol's numbers, in one place.
//!
//! Values and names follow the whitepaper's section 6 ("Timers & Stateless UX") and the Linux
//! module's `drivers/net/wireguard/messages.h`. Times are nanoseconds because the whole crate
//! counts time as a `u64` of nanoseconds on the caller's monotonic clock (see the crate docs).

/// Nanoseconds in one second.
pub const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// A keypair that has sent this many messages asks for a new handshake.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// No keypair is used for a counter at or beyond this: 2^64 - 2^13 - 1, so that the replay
/// window (2^13 bits) never has to reason about wrap-around.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// The initiator starts a new handshake when it sends with a keypair this old.
pub const REKEY_AFTER_TIME_NS: u64 = 120 * NANOS_PER_SECOND;
/// A keypair this old is neither used to send nor accepted to receive.
pub const REJECT_AFTER_TIME_NS: u64 = 180 * NANOS_PER_SECOND;
/// How long an initiator keeps retrying one handshake before it gives up.
pub const REKEY_ATTEMPT_TIME_NS: u64 = 90 * NANOS_PER_SECOND;
/// The wait before a handshake initiation is retransmitted (plus [`REKEY_TIMEOUT_JITTER_MAX_NS`]),
/// and the least time between two initiations to one peer.
pub const REKEY_TIMEOUT_NS: u64 = 5 * NANOS_PER_SECOND;
/// The largest random extra wait added to [`REKEY_TIMEOUT_NS`] (a third of a second).
pub const REKEY_TIMEOUT_JITTER_MAX_NS: u64 = NANOS_PER_SECOND / 3;
/// Received data that has not been answered for this long is answered by a keepalive.
pub const KEEPALIVE_TIMEOUT_NS: u64 = 10 * NANOS_PER_SECOND;
/// The responder's cookie secret changes this often; a stored cookie is trusted this long less
/// [`COOKIE_SECRET_LATENCY_NS`].
pub const COOKIE_SECRET_MAX_AGE_NS: u64 = 120 * NANOS_PER_SECOND;
/// Margin the Linux module (`cookie.c`) takes off a stored cookie's life for the trip it made.
pub const COOKIE_SECRET_LATENCY_NS: u64 = 5 * NANOS_PER_SECOND;
/// How many retransmissions fit in [`REKEY_ATTEMPT_TIME_NS`]: 90 / 5 = 18 (`timers.c`).
pub const MAX_TIMER_HANDSHAKES: u32 = (REKEY_ATTEMPT_TIME_NS / REKEY_TIMEOUT_NS) as u32;
/// A peer's initiations are accepted at most this often (`noise.c`, `INITIATIONS_PER_SECOND`).
pub const INITIATIONS_PER_SECOND: u64 = 50;
/// Transport plaintexts are padded with zeros to a multiple of this.
pub const PADDING_MULTIPLE: usize = 16;
/// Packets staged for a peer without a session, at most (the Linux module's
/// `MAX_STAGED_PACKETS`, `drivers/net/wireguard/device.h`).
pub const MAX_STAGED_PACKETS: usize = 128;
/// Bytes staged for a peer without a session, at most: 128 packets of a 1420-byte MTU fit, and
/// a larger MTU stages fewer.
pub const MAX_STAGED_BYTES: usize = 256 * 1024;
