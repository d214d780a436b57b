//! The WireGuard protocol for tunfwd, sans-IO.
//!
//! # What this crate owns
//! Everything WireGuard decides, and nothing it does to the outside world:
//! - the `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s` handshake exactly as the WireGuard whitepaper
//!   (Donenfeld, NDSS 2017) and wireguard.com/protocol fix it ([`noise`]), with `mac1`/`mac2`
//!   and cookie replies ([`cookie`]) and TAI64N timestamps ([`tai64n`]);
//! - transport data: sealing and opening type-4 datagrams ([`transport`]) with a replay window
//!   ([`replay`]);
//! - the timer rules of the whitepaper's section 6 as a pure state machine per peer
//!   ([`timers`]), keypair rotation and roaming ([`peer`]), the device that ties them together
//!   ([`device`]), and the packets staged while a handshake runs ([`staged`]);
//! - cryptokey routing ([`allowed_ips`]);
//! - configuration: the `wg setconf` file format ([`config`]) and the cross-platform UAPI text
//!   protocol ([`uapi`]), both parsed into one list of operations;
//! - views over the four message types ([`messages`]) and a cheap [`messages::classify`].
//!
//! # What it never does
//! - **I/O**: no sockets, files, threads or system calls. It takes bytes and returns bytes;
//!   the relay sends them.
//! - **Read a clock**: every call that depends on time takes `now_ns`, nanoseconds on the
//!   caller's monotonic clock from an origin the caller chooses (a `u64`, so the data path can
//!   store it in atomics); the device is told once what wall-clock time that origin was, for
//!   initiation timestamps and `last_handshake_time`. Tests drive a fake clock.
//! - **Choose randomness on its own**: the [`device::Device`] takes a cryptographic RNG; tests
//!   seed one, and timer jitter becomes deterministic.
//! - **Log**: errors are small `Copy` enums the relay counts ([`transport::OpenError`],
//!   [`noise::HandshakeError`]); setup errors name the line or the peer.
//! - **Reveal secrets**: private and preshared keys print no key material in `Debug`, are wiped
//!   on drop (`zeroize`), and compare in constant time (`subtle`). The handshake's ephemeral
//!   keys, chaining keys, DH results and derived transport keys are held in wiping types and
//!   dropped when the handshake ends, however it ends. One limit lies in the crates used:
//!   BLAKE2s and HMAC keep internal state on the stack that they do not wipe.
//! - **Implement cryptography**: X25519 is `x25519-dalek`, BLAKE2s `blake2`, HMAC `hmac`, the
//!   handshake's AEADs `chacha20poly1305`, and the data path's ChaCha20-Poly1305 `aws-lc-rs`,
//!   chosen by measurement (`benches/aead.rs`).
//!
//! # How a multi-threaded relay uses it
//! One **control thread** owns the [`device::Device`]: it feeds it handshake datagrams
//! ([`device::Device::on_handshake_message`]), calls [`device::Device::poll`] when
//! [`device::Device::next_timeout`] says, applies configuration, and sends what they return.
//! Every X25519 happens there.
//!
//! **Workers** (one per queue) hold an `Arc<`[`device::DataPlane`]`>` and never block on the
//! control thread:
//! - receive batch: load the [`device::ReceiverTable`] once; for each type-4 datagram look up
//!   its receiver index, lock that keypair's replay window once for the batch, and
//!   [`device::Receiver::open_locked`] in place; check the inner source with
//!   [`device::RouteTable::allows`]; then, once per peer per batch,
//!   [`peer::PeerActivity::on_received`] and [`peer::PeerShared::update_endpoint`] (roaming).
//!   Handshake messages and cookie replies ([`messages::classify`]) go to the control thread.
//! - send batch: load the [`device::RouteTable`] once; [`device::RouteTable::lookup`] the
//!   destination; take the peer's [`peer::PeerShared::send_keypair`], reserve counters for the
//!   whole batch with [`transport::Keypair::reserve_counters`] (one atomic operation), and
//!   [`transport::Keypair::seal_gather`] each packet straight from its pieces into the
//!   datagram; then [`peer::PeerActivity::on_sent`]. With no keypair (or no counters left),
//!   [`peer::PeerShared::stage`] the packet, then [`peer::PeerActivity::request_handshake`],
//!   and wake the control thread if it returns true. The control thread sends what was staged
//!   once the session is up ([`device::Outcome::SessionStarted`], [`device::Action::SendStaged`]).
//!
//! Fuzz targets call the plain functions in [`fuzzing`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod allowed_ips;
pub mod config;
pub mod constants;
pub mod cookie;
mod crypto;
pub mod device;
pub mod fuzzing;
pub mod keys;
pub mod messages;
pub mod noise;
pub mod peer;
pub mod replay;
pub mod staged;
pub mod tai64n;
pub mod timers;
pub mod transport;
pub mod uapi;

pub use allowed_ips::{AllowedIps, IpPrefix};
pub use config::{Endpoint, Operation, PeerChange, PeerUpdate, parse_config_file};
pub use device::{Action, DataPlane, Device, Outcome, PeerId, Transmit};
pub use keys::{PresharedKey, PrivateKey, PublicKey};
pub use messages::{MessageKind, classify};
pub use noise::HandshakeError;
pub use transport::{Keypair, OpenError, SealError};
pub use uapi::{DeviceView, format_get, parse_set};
