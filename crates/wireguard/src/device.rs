//! A WireGuard device: its identity, its peers, and the tables workers read.
//!
//! [`Device`] is the control thread's object. It runs every handshake (the only place X25519
//! runs), every timer, and every configuration change, and it is `&mut self` throughout: one
//! thread owns it. Its inputs are handshake datagrams ([`Device::on_handshake_message`]), the
//! passage of time ([`Device::poll`], due at [`Device::next_timeout`]) and configuration
//! ([`Device::apply`]); its outputs are datagrams to send and events to act on.
//!
//! Workers never touch the `Device`. They hold an `Arc<`[`DataPlane`]`>` and, once per batch,
//! load its two published tables, each an immutable snapshot swapped in whole by the control
//! thread (`arc-swap`, so a read is a couple of atomic operations and never waits):
//! - [`ReceiverTable`]: receiver index -> keypair and peer, for opening type-4 datagrams;
//! - [`RouteTable`]: the cryptokey routing table and the peers by id, for choosing the peer of an
//!   outbound packet and checking the source of an inbound one.
//!
//! A table is rebuilt by copying when it changes (a handshake adds and removes keypairs; a
//! configuration change moves prefixes). That is O(peers) per handshake, which is the price of
//! reads that take no lock; at the handshake rate WireGuard allows (one per peer per two
//! minutes, and at most one per REKEY_TIMEOUT), it stays far below the data path's cost.
//!
//! The data path reports back only through atomics ([`crate::peer::PeerActivity`]), so the
//! control thread must look at them now and then: [`Device::next_timeout`] includes a wake-up
//! every [`ACTIVITY_POLL_INTERVAL_NS`] while any peer has keys, which bounds how late a
//! keepalive or rekey can be. A worker that finds no keypair to send with calls
//! `request_handshake` and, when that returns true, wakes the control thread at once.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use rand_core::CryptoRngCore;

use crate::allowed_ips::{AllowedIps, IpPrefix};
use crate::config::{Endpoint, Operation, PeerChange};
use crate::constants::{
    INITIATIONS_PER_SECOND, NANOS_PER_SECOND, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME_NS,
};
use crate::cookie::{CookieChecker, MacVerdict};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::messages::{
    CookieReply, INITIATION_LEN, Initiation, MessageKind, RESPONSE_LEN, Response,
    TRANSPORT_MIN_LEN, classify,
};
use crate::noise::{self, HandshakeError, Identity, PeerSecrets};
use crate::peer::{Peer, PeerShared};
use crate::replay::ReplayGuard;
use crate::tai64n::Tai64N;
use crate::timers::{CurrentKeypair, InitiationReason, Observed};
use crate::transport::{Keypair, OpenError};
use crate::uapi::{DeviceView, PeerView};

/// While any peer has keys, the control thread looks at the workers' reports at least this
/// often (100 ms): the most a keepalive or a rekey can be late by.
pub const ACTIVITY_POLL_INTERVAL_NS: u64 = NANOS_PER_SECOND / 10;

/// How long the device stays under load after its handshake queue was last deep: one second,
/// as the Linux module holds `last_under_load` (`drivers/net/wireguard/receive.c`).
pub const UNDER_LOAD_HOLD_NS: u64 = NANOS_PER_SECOND;

/// A peer's handle within its device. Stale handles (of a removed peer whose slot was reused)
/// never match the new peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId {
    slot: u32,
    generation: u32,
}

impl PeerId {
    /// A handle from its parts, for tests and fuzz targets.
    pub const fn from_raw(slot: u32, generation: u32) -> Self {
        Self { slot, generation }
    }

    fn slot(self) -> usize {
        self.slot as usize
    }
}

/// Hashes receiver indices, which this device draws at random: the identity is a fine hash
/// for uniform keys that no one else chooses, and costs nothing per datagram.
#[derive(Default)]
pub struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8) | u64::from(byte);
        }
    }

    fn write_u32(&mut self, value: u32) {
        // Spread the 32 random bits over the 64 the table's probing looks at.
        self.0 = u64::from(value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IndexMap<V> = HashMap<u32, V, BuildHasherDefault<IndexHasher>>;

/// A keypair that can open datagrams, with its peer.
#[derive(Clone, Debug)]
pub struct Receiver {
    keypair: Arc<Keypair>,
    peer: Arc<PeerShared>,
}

impl Receiver {
    /// The keypair.
    pub fn keypair(&self) -> &Arc<Keypair> {
        &self.keypair
    }

    /// Its peer.
    pub fn peer(&self) -> &Arc<PeerShared> {
        &self.peer
    }

    /// Open a datagram at `now_ns` (the device's clock) with the keypair's replay window
    /// locked by `replay` (from `keypair().lock_replay()`, once per batch). The first datagram
    /// under a responder's new keypair also makes it the peer's send keypair. The caller then
    /// checks the inner source against [`RouteTable::allows`] and reports the batch to
    /// `peer().activity()`.
    pub fn open_locked(
        &self,
        replay: &mut ReplayGuard<'_>,
        datagram: &mut [u8],
        now_ns: u64,
    ) -> Result<Range<usize>, OpenError> {
        let (range, confirmed_now) = self.keypair.open_confirming(replay, datagram, now_ns)?;
        if confirmed_now {
            self.peer.confirm(&self.keypair);
        }
        Ok(range)
    }

    /// [`Self::open_locked`] with a lock of its own.
    pub fn open(&self, datagram: &mut [u8], now_ns: u64) -> Result<Range<usize>, OpenError> {
        let mut replay = self.keypair.lock_replay();
        self.open_locked(&mut replay, datagram, now_ns)
    }
}

/// Receiver index -> [`Receiver`], as published for workers.
#[derive(Clone, Debug, Default)]
pub struct ReceiverTable {
    receivers: IndexMap<Receiver>,
}

impl ReceiverTable {
    /// The keypair a type-4 datagram with this receiver index is for.
    pub fn get(&self, receiver_index: u32) -> Option<&Receiver> {
        self.receivers.get(&receiver_index)
    }

    /// How many keypairs can open datagrams.
    pub fn len(&self) -> usize {
        self.receivers.len()
    }

    /// True when none can.
    pub fn is_empty(&self) -> bool {
        self.receivers.is_empty()
    }
}

/// Cryptokey routing and peers by id, as published for workers.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    allowed_ips: AllowedIps,
    peers: Vec<Option<Arc<PeerShared>>>,
}

impl RouteTable {
    /// The peer to encrypt a packet for `destination` to.
    pub fn lookup(&self, destination: IpAddr) -> Option<&Arc<PeerShared>> {
        self.allowed_ips
            .lookup(destination)
            .and_then(|id| self.peer(id))
    }

    /// The peer with this id.
    pub fn peer(&self, id: PeerId) -> Option<&Arc<PeerShared>> {
        self.peers
            .get(id.slot())?
            .as_ref()
            .filter(|peer| peer.id() == id)
    }

    /// Whether a packet from `source` may come through `peer`.
    pub fn allows(&self, peer: PeerId, source: IpAddr) -> bool {
        self.allowed_ips.allows(peer, source)
    }

    /// The routing table itself.
    pub fn allowed_ips(&self) -> &AllowedIps {
        &self.allowed_ips
    }

    /// Every peer.
    pub fn peers(&self) -> impl Iterator<Item = &Arc<PeerShared>> {
        self.peers.iter().flatten()
    }
}

/// What workers share with the control thread.
#[derive(Debug, Default)]
pub struct DataPlane {
    receivers: ArcSwap<ReceiverTable>,
    routes: ArcSwap<RouteTable>,
}

impl DataPlane {
    /// The receiver table; load once per batch and drop the guard after it.
    pub fn receivers(&self) -> Guard<Arc<ReceiverTable>> {
        self.receivers.load()
    }

    /// The route table; load once per batch and drop the guard after it.
    pub fn routes(&self) -> Guard<Arc<RouteTable>> {
        self.routes.load()
    }
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The peer it is for, if known (a cookie reply may answer a stranger).
    pub peer: Option<PeerId>,
    /// The destination.
    pub to: SocketAddr,
    /// The UDP payload.
    pub datagram: Vec<u8>,
}

/// What a handshake message led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Responder: send `response`. The new keypair waits for the initiator's first datagram.
    Responded {
        /// The initiating peer.
        peer: PeerId,
        /// The handshake response.
        response: Transmit,
    },
    /// Initiator: the session is up and is the peer's send keypair. Send `keepalive` (already
    /// counted as sent) so the responder can use the session at once, then `staged`.
    SessionStarted {
        /// The responding peer.
        peer: PeerId,
        /// A sealed empty transport message.
        keepalive: Transmit,
        /// The packets staged while the handshake ran, sealed in the order they were staged
        /// (already counted as sent). Sealed before workers could see the new keypair, so no
        /// packet read after them is sealed before them.
        staged: Vec<Transmit>,
    },
    /// Under load and without a valid `mac2`: send this cookie reply instead of answering.
    CookieReplied {
        /// The cookie reply.
        reply: Transmit,
    },
    /// A cookie reply was taken: the next handshake message to `peer` carries `mac2`.
    CookieStored {
        /// The peer that sent it.
        peer: PeerId,
    },
}

/// What the timers want done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a handshake initiation.
    SendInitiation {
        /// To whom.
        peer: PeerId,
        /// Why now.
        reason: InitiationReason,
        /// The message.
        transmit: Transmit,
    },
    /// Send a keepalive (an empty transport message).
    SendKeepalive {
        /// To whom.
        peer: PeerId,
        /// The message.
        transmit: Transmit,
    },
    /// The handshake with `peer` did not complete in time (its staged packets are purged:
    /// [`Action::StagedPurged`]).
    HandshakeGaveUp {
        /// Which peer.
        peer: PeerId,
    },
    /// Send a packet that was staged for `peer` while it had no session, now sealed.
    SendStaged {
        /// To whom.
        peer: PeerId,
        /// The transport message.
        transmit: Transmit,
    },
    /// Packets staged for `peer` were dropped unsent: its handshake gave up, or it was removed.
    StagedPurged {
        /// Which peer.
        peer: PeerId,
        /// How many packets.
        packets: u64,
    },
    /// Every key of `peer` was wiped after 3 * REJECT_AFTER_TIME without a new session.
    KeysZeroed {
        /// Which peer.
        peer: PeerId,
    },
}

/// Why a configuration could not be applied (nothing was changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// An endpoint is a host name: resolve it to an address first.
    UnresolvedEndpoint {
        /// The peer it was for.
        public_key: PublicKey,
    },
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnresolvedEndpoint { public_key } => {
                write!(
                    f,
                    "endpoint of peer {public_key} is a host name, not an address"
                )
            }
        }
    }
}

impl std::error::Error for ApplyError {}

/// The control thread's WireGuard device. See the module docs.
pub struct Device {
    identity: Option<Identity>,
    checker: Option<CookieChecker>,
    listen_port: u16,
    fwmark: u32,
    unix_time_at_origin_ns: u64,
    rng: Box<dyn CryptoRngCore + Send>,
    under_load: bool,
    /// When the handshake queue was last found deep ([`Device::judge_load`]).
    last_under_load_ns: Option<u64>,
    peers: Vec<Option<Peer>>,
    generations: Vec<u32>,
    by_public_key: HashMap<PublicKey, PeerId>,
    /// Local indices of initiations in flight.
    handshakes: IndexMap<PeerId>,
    receivers: ReceiverTable,
    allowed_ips: AllowedIps,
    data_plane: Arc<DataPlane>,
    receivers_changed: bool,
    routes_changed: bool,
    last_poll_ns: u64,
    /// Staged packets of removed peers, reported by the next [`Device::poll`].
    purged_on_removal: Vec<(PeerId, u64)>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("public_key", &self.public_key())
            .field("peers", &self.by_public_key.len())
            .field("receivers", &self.receivers.len())
            .finish_non_exhaustive()
    }
}

impl Device {
    /// A device with no peers.
    ///
    /// Time: every `now_ns` passed to it is nanoseconds on the caller's monotonic clock, from an
    /// origin of the caller's choosing; `unix_time_at_origin_ns` is the wall-clock time (since
    /// the Unix epoch) at that origin. Initiation timestamps are the origin's wall time plus the
    /// monotonic time, so they increase even if the wall clock steps back while running.
    /// `rng` must be a cryptographic generator; it makes ephemeral keys, indices, cookie secrets
    /// and timer jitter.
    pub fn new(
        private_key: Option<PrivateKey>,
        unix_time_at_origin_ns: u64,
        rng: Box<dyn CryptoRngCore + Send>,
    ) -> Self {
        let mut device = Self {
            identity: None,
            checker: None,
            listen_port: 0,
            fwmark: 0,
            unix_time_at_origin_ns,
            rng,
            under_load: false,
            last_under_load_ns: None,
            peers: Vec::new(),
            generations: Vec::new(),
            by_public_key: HashMap::new(),
            handshakes: IndexMap::default(),
            receivers: ReceiverTable::default(),
            allowed_ips: AllowedIps::new(),
            data_plane: Arc::new(DataPlane::default()),
            receivers_changed: false,
            routes_changed: false,
            last_poll_ns: 0,
            purged_on_removal: Vec::new(),
        };
        device.set_private_key(private_key);
        device
    }

    /// The tables workers read.
    pub fn data_plane(&self) -> Arc<DataPlane> {
        self.data_plane.clone()
    }

    /// This device's public key, if it has a private key.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.identity.as_ref().map(|identity| identity.public)
    }

    /// The configured listen port (the relay binds it).
    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// The configured socket mark (the relay sets it).
    pub fn fwmark(&self) -> u32 {
        self.fwmark
    }

    /// Tell the device whether it is under load: then handshake messages need a valid `mac2`
    /// and are otherwise answered with a cookie reply. The caller decides, for example from the
    /// depth of its handshake queue (the Linux module: more than an eighth of it full).
    pub fn set_under_load(&mut self, under_load: bool) {
        self.under_load = under_load;
    }

    /// Decide whether the device is under load from the depth of the caller's handshake queue
    /// at `now_ns`: `deep` puts it under load, and it stays there until the queue has not been
    /// deep for [`UNDER_LOAD_HOLD_NS`]. The Linux module does the same
    /// (`wg_receive_handshake_packet`, `last_under_load`): without the hold, a queue that dips
    /// below the threshold between bursts would let a flood's unproven initiations through to
    /// X25519 again.
    pub fn judge_load(&mut self, deep: bool, now_ns: u64) {
        if deep {
            self.last_under_load_ns = Some(now_ns);
        }
        self.under_load = self
            .last_under_load_ns
            .is_some_and(|at| now_ns < at.saturating_add(UNDER_LOAD_HOLD_NS));
    }

    /// Whether handshake messages currently need a valid `mac2`.
    pub fn is_under_load(&self) -> bool {
        self.under_load
    }

    /// Change (or remove) the private key. Every session ends; peers whose public key is the
    /// new one's are removed (a device is not its own peer), as wireguard-go does.
    pub fn set_private_key(&mut self, private_key: Option<PrivateKey>) {
        let private_key = private_key.filter(|key| !key.is_zero());
        if let (Some(current), Some(new)) = (&self.identity, &private_key)
            && current.private == *new
        {
            return;
        }
        self.identity = private_key.map(Identity::new);
        self.checker = self
            .identity
            .as_ref()
            .map(|identity| CookieChecker::new(&identity.public));
        if let Some(own) = self.public_key()
            && let Some(&id) = self.by_public_key.get(&own)
        {
            self.remove_peer(id);
        }
        for slot in 0..self.peers.len() {
            if self.peers[slot].is_some() {
                self.zero_peer(slot);
                let identity = self.identity.as_ref();
                if let Some(peer) = self.peers[slot].as_mut() {
                    peer.secrets.rekey_identity(identity);
                }
            }
        }
        self.publish();
    }

    /// Add a peer (or return the existing one with this key). `None` if `public_key` is this
    /// device's own.
    pub fn add_peer(&mut self, public_key: PublicKey) -> Option<PeerId> {
        if self.public_key() == Some(public_key) {
            return None;
        }
        if let Some(&id) = self.by_public_key.get(&public_key) {
            return Some(id);
        }
        let slot = match self.peers.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.peers.push(None);
                self.generations.push(0);
                self.peers.len() - 1
            }
        };
        let id = PeerId {
            slot: slot as u32,
            generation: self.generations[slot],
        };
        let shared = Arc::new(PeerShared::new(id, public_key));
        let secrets = PeerSecrets::new(self.identity.as_ref(), public_key, PresharedKey::default());
        self.peers[slot] = Some(Peer::new(shared, secrets, self.rng.next_u64()));
        self.by_public_key.insert(public_key, id);
        self.routes_changed = true;
        self.publish();
        Some(id)
    }

    /// Remove a peer with its keys and allowed IPs.
    pub fn remove_peer(&mut self, id: PeerId) {
        if self.peer_mut(id).is_none() {
            return;
        }
        self.zero_peer(id.slot());
        if let Some(peer) = self.peers[id.slot()].take() {
            self.by_public_key.remove(peer.public_key());
            let packets = peer.shared.staged().purge();
            if packets > 0 {
                self.purged_on_removal.push((id, packets));
            }
        }
        self.generations[id.slot()] = self.generations[id.slot()].wrapping_add(1);
        self.allowed_ips.remove_peer(id);
        self.routes_changed = true;
        self.publish();
    }

    /// The peer with this public key.
    pub fn peer_id(&self, public_key: &PublicKey) -> Option<PeerId> {
        self.by_public_key.get(public_key).copied()
    }

    /// The shared part of a peer (what workers see).
    pub fn peer(&self, id: PeerId) -> Option<&Arc<PeerShared>> {
        self.peers
            .get(id.slot())?
            .as_ref()
            .filter(|peer| peer.shared.id() == id)
            .map(|peer| &peer.shared)
    }

    fn peer_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        self.peers
            .get_mut(id.slot())?
            .as_mut()
            .filter(|peer| peer.shared.id() == id)
    }

    /// Set a peer's preshared key.
    pub fn set_preshared_key(&mut self, id: PeerId, psk: PresharedKey) {
        if let Some(peer) = self.peer_mut(id) {
            peer.set_preshared_key(psk);
        }
    }

    /// Set a peer's endpoint (until roaming changes it).
    pub fn set_endpoint(&mut self, id: PeerId, endpoint: SocketAddr) {
        if let Some(peer) = self.peer_mut(id) {
            peer.shared.update_endpoint(endpoint);
        }
    }

    /// Set PersistentKeepalive (0: off). Turning it on sends a keepalive at the next poll.
    pub fn set_persistent_keepalive(&mut self, id: PeerId, interval_s: u16) {
        if let Some(peer) = self.peer_mut(id) {
            if peer.persistent_keepalive_interval_s == 0 && interval_s != 0 {
                peer.timers.request_keepalive();
            }
            peer.persistent_keepalive_interval_s = interval_s;
        }
    }

    /// Route `prefix` to `id` (moving it from any other peer).
    pub fn add_allowed_ip(&mut self, id: PeerId, prefix: IpPrefix) {
        if self.peer(id).is_some() {
            self.allowed_ips.insert(prefix, id);
            self.routes_changed = true;
            self.publish();
        }
    }

    /// Stop routing `prefix` to `id`.
    pub fn remove_allowed_ip(&mut self, id: PeerId, prefix: IpPrefix) {
        if self.allowed_ips.remove(prefix, id) {
            self.routes_changed = true;
            self.publish();
        }
    }

    /// Remove every allowed IP of `id`.
    pub fn clear_allowed_ips(&mut self, id: PeerId) {
        self.allowed_ips.remove_peer(id);
        self.routes_changed = true;
        self.publish();
    }

    /// Carry out configuration operations (from a file or UAPI `set=1`) in order, as
    /// wireguard-go does. Host-name endpoints must be resolved first; if any is left, nothing
    /// is changed.
    pub fn apply(&mut self, operations: &[Operation]) -> Result<(), ApplyError> {
        for operation in operations {
            if let Operation::UpdatePeer(update) = operation
                && update
                    .changes
                    .iter()
                    .any(|change| matches!(change, PeerChange::Endpoint(Endpoint::Host { .. })))
            {
                return Err(ApplyError::UnresolvedEndpoint {
                    public_key: update.public_key,
                });
            }
        }
        for operation in operations {
            match operation {
                Operation::SetPrivateKey(key) => self.set_private_key(key.clone()),
                Operation::SetListenPort(port) => self.listen_port = *port,
                Operation::SetFwmark(mark) => self.fwmark = *mark,
                Operation::ReplacePeers => {
                    let ids: Vec<PeerId> = self.by_public_key.values().copied().collect();
                    for id in ids {
                        self.remove_peer(id);
                    }
                }
                Operation::UpdatePeer(update) => {
                    let existing = self.peer_id(&update.public_key);
                    if update.remove {
                        if let Some(id) = existing {
                            self.remove_peer(id);
                        }
                        continue;
                    }
                    let id = match existing {
                        Some(id) => id,
                        None if update.update_only => continue,
                        None => match self.add_peer(update.public_key) {
                            Some(id) => id,
                            None => continue,
                        },
                    };
                    for change in &update.changes {
                        match change {
                            PeerChange::PresharedKey(psk) => {
                                self.set_preshared_key(id, psk.clone())
                            }
                            PeerChange::Endpoint(Endpoint::Socket(address)) => {
                                self.set_endpoint(id, *address)
                            }
                            PeerChange::Endpoint(Endpoint::Host { .. }) => {}
                            PeerChange::PersistentKeepalive(seconds) => {
                                self.set_persistent_keepalive(id, *seconds)
                            }
                            PeerChange::ReplaceAllowedIps => self.clear_allowed_ips(id),
                            PeerChange::AddAllowedIp(prefix) => self.add_allowed_ip(id, *prefix),
                            PeerChange::RemoveAllowedIp(prefix) => {
                                self.remove_allowed_ip(id, *prefix)
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The device as UAPI `get=1` reports it.
    pub fn view(&self) -> DeviceView {
        let mut peers: Vec<PeerView> = self
            .peers
            .iter()
            .flatten()
            .map(|peer| PeerView {
                public_key: *peer.public_key(),
                preshared_key: peer.secrets.preshared_key.clone(),
                endpoint: peer.shared.endpoint(),
                last_handshake_unix_ns: peer
                    .last_handshake_ns
                    .map(|ns| self.unix_time_at_origin_ns + ns),
                tx_bytes: peer.shared.activity().tx_bytes(),
                rx_bytes: peer.shared.activity().rx_bytes(),
                persistent_keepalive_interval_s: peer.persistent_keepalive_interval_s,
                allowed_ips: self.allowed_ips.prefixes_of(peer.shared.id()),
            })
            .collect();
        peers.sort_by_key(|peer| *peer.public_key.as_bytes());
        DeviceView {
            private_key: self.identity.as_ref().map(|id| id.private.clone()),
            listen_port: self.listen_port,
            fwmark: self.fwmark,
            peers,
        }
    }

    /// When the last handshake with `id` completed, on the caller's clock.
    pub fn last_handshake_ns(&self, id: PeerId) -> Option<u64> {
        self.peers.get(id.slot())?.as_ref()?.last_handshake_ns
    }

    /// Handle a datagram that [`classify`] called a handshake message or a cookie reply, from
    /// `source`, at `now_ns`.
    pub fn on_handshake_message(
        &mut self,
        datagram: &[u8],
        source: SocketAddr,
        now_ns: u64,
    ) -> Result<Outcome, HandshakeError> {
        self.last_poll_ns = self.last_poll_ns.max(now_ns);
        let outcome = match classify(datagram) {
            Some(MessageKind::HandshakeInitiation) | Some(MessageKind::HandshakeResponse) => {
                let checker = self.checker.as_mut().ok_or(HandshakeError::NoPrivateKey)?;
                match checker.verify(datagram, source, self.under_load, now_ns, &mut *self.rng) {
                    MacVerdict::InvalidMac1 => return Err(HandshakeError::InvalidMac1),
                    MacVerdict::CookieRequired => {
                        // The sender index sits at the same offset in both messages.
                        let sender_index = u32::from_le_bytes([
                            datagram[4],
                            datagram[5],
                            datagram[6],
                            datagram[7],
                        ]);
                        let reply = checker.cookie_reply(
                            datagram,
                            sender_index,
                            source,
                            now_ns,
                            &mut *self.rng,
                        );
                        return Ok(Outcome::CookieReplied {
                            reply: Transmit {
                                peer: None,
                                to: source,
                                datagram: reply.to_vec(),
                            },
                        });
                    }
                    MacVerdict::Valid | MacVerdict::ValidWithCookie => {}
                }
                if datagram.len() == INITIATION_LEN {
                    self.consume_initiation(datagram, source, now_ns)
                } else {
                    self.consume_response(datagram, source, now_ns)
                }
            }
            Some(MessageKind::CookieReply) => self.consume_cookie_reply(datagram, now_ns),
            Some(MessageKind::TransportData) | None => Err(HandshakeError::Malformed),
        };
        self.publish();
        outcome
    }

    fn allocate_index(&mut self) -> u32 {
        loop {
            let index = self.rng.next_u32();
            if !self.handshakes.contains_key(&index) && self.receivers.get(index).is_none() {
                return index;
            }
        }
    }

    fn consume_initiation(
        &mut self,
        datagram: &[u8],
        source: SocketAddr,
        now_ns: u64,
    ) -> Result<Outcome, HandshakeError> {
        let message = Initiation::new_checked(datagram).map_err(|_| HandshakeError::Malformed)?;
        let identity = self.identity.as_ref().ok_or(HandshakeError::NoPrivateKey)?;
        let peers = &self.peers;
        let by_public_key = &self.by_public_key;
        let (id, received) = noise::consume_initiation(identity, &message, |public_key| {
            let id = *by_public_key.get(public_key)?;
            let peer = peers.get(id.slot())?.as_ref()?;
            Some((id, &peer.secrets))
        })?;
        self.take_confirmation(id.slot(), now_ns);
        let index = self.allocate_index();
        let rng = &mut *self.rng;
        let peer = self.peers[id.slot()]
            .as_mut()
            .ok_or(HandshakeError::UnknownPeer)?;
        if peer
            .latest_timestamp
            .is_some_and(|latest| received.timestamp <= latest)
        {
            return Err(HandshakeError::ReplayedTimestamp);
        }
        if peer
            .last_initiation_consumed_ns
            .is_some_and(|last| now_ns < last + NANOS_PER_SECOND / INITIATIONS_PER_SECOND)
        {
            return Err(HandshakeError::InitiationFlood);
        }
        let timestamp: Tai64N = received.timestamp;
        let mut response = [0u8; RESPONSE_LEN];
        let session = noise::create_response(received, &peer.secrets, index, rng, &mut response)?;
        peer.latest_timestamp = Some(timestamp);
        peer.last_initiation_consumed_ns = Some(now_ns);
        peer.cookies.stamp(&mut response, now_ns);
        // One handshake per peer at a time (`noise.c` keeps one state): a pending initiation
        // of ours is superseded by the peer's.
        let superseded = peer.handshake.take().map(|sent| sent.sender_index);
        peer.shared.update_endpoint(source);
        peer.shared
            .activity()
            .on_handshake_received(datagram.len() as u64);
        peer.shared
            .activity()
            .on_handshake_sent(RESPONSE_LEN as u64);
        peer.last_handshake_received_ns = Some(now_ns);
        peer.last_handshake_sent_ns = Some(now_ns);
        peer.timers.on_session_derived(now_ns);
        let keypair = Arc::new(Keypair::new(&session, now_ns));
        let dropped = peer.keypairs.install(keypair.clone());
        peer.shared.publish_next_keypair(peer.keypairs.next.clone());
        let shared = peer.shared.clone();
        if let Some(index) = superseded {
            self.handshakes.remove(&index);
        }
        self.retire(dropped);
        self.add_receiver(keypair, shared);
        Ok(Outcome::Responded {
            peer: id,
            response: Transmit {
                peer: Some(id),
                to: source,
                datagram: response.to_vec(),
            },
        })
    }

    fn consume_response(
        &mut self,
        datagram: &[u8],
        source: SocketAddr,
        now_ns: u64,
    ) -> Result<Outcome, HandshakeError> {
        let message = Response::new_checked(datagram).map_err(|_| HandshakeError::Malformed)?;
        let id = *self
            .handshakes
            .get(&message.receiver_index())
            .ok_or(HandshakeError::UnknownIndex)?;
        self.take_confirmation(id.slot(), now_ns);
        let identity = self.identity.as_ref().ok_or(HandshakeError::NoPrivateKey)?;
        let peer = self.peers[id.slot()]
            .as_mut()
            .ok_or(HandshakeError::UnknownIndex)?;
        let sent = peer
            .handshake
            .as_ref()
            .ok_or(HandshakeError::UnknownIndex)?;
        let session = noise::consume_response(sent, identity, &peer.secrets, &message)?;
        peer.handshake = None;
        peer.shared.update_endpoint(source);
        peer.shared
            .activity()
            .on_handshake_received(datagram.len() as u64);
        peer.last_handshake_received_ns = Some(now_ns);
        peer.timers.on_session_derived(now_ns);
        peer.timers.on_handshake_complete();
        peer.last_handshake_ns = Some(now_ns);
        let keypair = Arc::new(Keypair::new(&session, now_ns));
        let dropped = peer.keypairs.install(keypair.clone());
        peer.shared.publish_next_keypair(peer.keypairs.next.clone());
        let keepalive = seal_keepalive(&keypair, &peer.shared, source, now_ns)
            .ok_or(HandshakeError::UnknownIndex)?;
        // What waited for this session goes first: sealed before the keypair is published, so
        // that no packet a worker reads from now on can be sealed ahead of them.
        let staged = seal_staged(&keypair, &peer.shared, source, now_ns);
        peer.shared.publish_send_keypair(Some(keypair.clone()));
        let shared = peer.shared.clone();
        self.handshakes.remove(&session.local_index);
        self.retire(dropped);
        self.add_receiver(keypair, shared);
        Ok(Outcome::SessionStarted {
            peer: id,
            keepalive,
            staged,
        })
    }

    fn consume_cookie_reply(
        &mut self,
        datagram: &[u8],
        now_ns: u64,
    ) -> Result<Outcome, HandshakeError> {
        let reply = CookieReply::new_checked(datagram).map_err(|_| HandshakeError::Malformed)?;
        let index = reply.receiver_index();
        let id = match self.handshakes.get(&index) {
            Some(&id) => id,
            None => self
                .receivers
                .get(index)
                .map(|receiver| receiver.peer.id())
                .ok_or(HandshakeError::UnknownIndex)?,
        };
        let peer = self.peer_mut(id).ok_or(HandshakeError::UnknownIndex)?;
        peer.cookies
            .consume_reply(&reply, now_ns)
            .map_err(|_| HandshakeError::InvalidCookieReply)?;
        Ok(Outcome::CookieStored { peer: id })
    }

    fn add_receiver(&mut self, keypair: Arc<Keypair>, peer: Arc<PeerShared>) {
        self.receivers
            .receivers
            .insert(keypair.local_index(), Receiver { keypair, peer });
        self.receivers_changed = true;
    }

    fn retire(&mut self, keypairs: Vec<Arc<Keypair>>) {
        for keypair in keypairs {
            keypair.invalidate();
            self.receivers.receivers.remove(&keypair.local_index());
            self.receivers_changed = true;
        }
    }

    /// Wipe a peer's keypairs and handshake state (the Linux module's `zero_key_material`).
    fn zero_peer(&mut self, slot: usize) {
        let Some(peer) = self.peers[slot].as_mut() else {
            return;
        };
        let dropped = peer.keypairs.retain(|_| false);
        let pending = peer.handshake.take().map(|sent| sent.sender_index);
        peer.shared.publish_send_keypair(None);
        peer.shared.publish_next_keypair(None);
        peer.shared.activity().forget_pending();
        peer.timers.on_keys_zeroed();
        if let Some(index) = pending {
            self.handshakes.remove(&index);
        }
        self.retire(dropped);
    }

    fn observe(&self, peer: &Peer, now_ns: u64, handshake_wanted: bool) -> Observed {
        let activity = peer.shared.activity();
        let current = peer
            .keypairs
            .current
            .as_ref()
            .filter(|keypair| keypair.is_valid() && keypair.send_counter() < REJECT_AFTER_MESSAGES)
            .map(|keypair| CurrentKeypair {
                created_ns: keypair.created_ns(),
                is_initiator: keypair.is_initiator(),
                send_counter: keypair.send_counter(),
            });
        Observed {
            now_ns,
            unanswered_data_since_ns: activity.unanswered_data_since_ns(),
            unacknowledged_data_since_ns: activity.unacknowledged_data_since_ns(),
            last_transport_sent_ns: activity.last_transport_sent_ns(),
            last_transport_received_ns: activity.last_transport_received_ns(),
            last_handshake_sent_ns: peer.last_handshake_sent_ns,
            last_handshake_received_ns: peer.last_handshake_received_ns,
            handshake_wanted,
            current,
            persistent_keepalive_ns: (peer.persistent_keepalive_interval_s != 0)
                .then(|| u64::from(peer.persistent_keepalive_interval_s) * NANOS_PER_SECOND),
        }
    }

    /// Run the timers at `now_ns`: rotate confirmed keypairs, drop expired ones, and return
    /// what to send and what happened. Call it at [`Self::next_timeout`].
    pub fn poll(&mut self, now_ns: u64) -> Vec<Action> {
        self.last_poll_ns = self.last_poll_ns.max(now_ns);
        let mut actions: Vec<Action> = self
            .purged_on_removal
            .drain(..)
            .map(|(peer, packets)| Action::StagedPurged { peer, packets })
            .collect();
        for slot in 0..self.peers.len() {
            if self.peers[slot].is_some() {
                self.poll_peer(slot, now_ns, &mut actions);
            }
        }
        self.publish();
        actions
    }

    fn poll_peer(&mut self, slot: usize, now_ns: u64, actions: &mut Vec<Action>) {
        let Some(peer) = self.peers[slot].as_mut() else {
            return;
        };
        let id = peer.shared.id();
        self.take_confirmation(slot, now_ns);
        let Some(peer) = self.peers[slot].as_mut() else {
            return;
        };
        let mut dropped = Vec::new();
        dropped.extend(peer.keypairs.retain(|keypair| {
            keypair.is_valid() && now_ns < keypair.created_ns() + REJECT_AFTER_TIME_NS
        }));
        let current = peer.keypairs.current.clone();
        peer.shared.publish_send_keypair(current);
        peer.shared.publish_next_keypair(peer.keypairs.next.clone());
        self.retire(dropped);

        let Some(peer) = self.peers[slot].as_ref() else {
            return;
        };
        let handshake_wanted = peer.shared.activity().take_handshake_request();
        let observed = self.observe(peer, now_ns, handshake_wanted);
        let random = self.rng.next_u64();
        let Some(peer) = self.peers[slot].as_mut() else {
            return;
        };
        let due = peer.timers.due(&observed, &mut || random);
        if due.clear_unanswered {
            peer.shared
                .activity()
                .clear_unanswered(observed.unanswered_data_since_ns);
        }
        if due.clear_unacknowledged {
            peer.shared
                .activity()
                .clear_unacknowledged(observed.unacknowledged_data_since_ns);
        }
        if due.zero_keys {
            self.zero_peer(slot);
            actions.push(Action::KeysZeroed { peer: id });
            return;
        }
        if due.give_up {
            if let Some(sent) = peer.handshake.take() {
                self.handshakes.remove(&sent.sender_index);
            }
            actions.push(Action::HandshakeGaveUp { peer: id });
            let packets = peer.shared.staged().purge();
            if packets > 0 {
                actions.push(Action::StagedPurged { peer: id, packets });
            }
        }
        if let Some(reason) = due.initiate
            && let Some(transmit) = self.send_initiation(slot, now_ns)
        {
            actions.push(Action::SendInitiation {
                peer: id,
                reason,
                transmit,
            });
        }
        // Packets staged while a session was being confirmed (a responder's, once the
        // initiator's first datagram arrived), or by a worker that just missed the new keypair.
        if let Some(peer) = self.peers[slot].as_ref()
            && let Some(keypair) = peer.shared.send_keypair().filter(|k| k.is_valid())
            && let Some(endpoint) = peer.shared.endpoint()
        {
            for transmit in seal_staged(&keypair, &peer.shared, endpoint, now_ns) {
                actions.push(Action::SendStaged { peer: id, transmit });
            }
        }
        if due.keepalive
            && let Some(peer) = self.peers[slot].as_ref()
            && let Some(keypair) = peer.shared.send_keypair()
            && let Some(endpoint) = peer.shared.endpoint()
            && let Some(transmit) = seal_keepalive(&keypair, &peer.shared, endpoint, now_ns)
        {
            actions.push(Action::SendKeepalive { peer: id, transmit });
        }
    }

    /// If a worker has confirmed the responder's `next` keypair, rotate it in: the handshake is
    /// complete. Runs before anything else touches the slots, so a confirmed keypair is never
    /// mistaken for an unconfirmed one and dropped.
    fn take_confirmation(&mut self, slot: usize, now_ns: u64) {
        let Some(peer) = self.peers[slot].as_mut() else {
            return;
        };
        if peer
            .keypairs
            .next
            .as_ref()
            .is_some_and(|next| next.is_confirmed())
        {
            let dropped = peer.keypairs.promote_next();
            peer.timers.on_handshake_complete();
            peer.last_handshake_ns = Some(now_ns);
            let current = peer.keypairs.current.clone();
            peer.shared.publish_send_keypair(current);
            peer.shared.publish_next_keypair(None);
            self.retire(dropped.into_iter().collect());
        }
    }

    /// Create and record an initiation for the peer in `slot`; the transmit if it has an
    /// endpoint. Timers count it as sent either way, so a peer without an endpoint still gives
    /// up on schedule.
    fn send_initiation(&mut self, slot: usize, now_ns: u64) -> Option<Transmit> {
        let index = self.allocate_index();
        let timestamp = Tai64N::from_unix_nanos(self.unix_time_at_origin_ns + now_ns);
        let identity = self.identity.as_ref()?;
        let rng = &mut *self.rng;
        let peer = self.peers[slot].as_mut()?;
        let mut message = [0u8; INITIATION_LEN];
        let sent =
            noise::create_initiation(identity, &peer.secrets, index, timestamp, rng, &mut message)
                .ok()?;
        peer.cookies.stamp(&mut message, now_ns);
        let superseded = peer.handshake.replace(sent).map(|old| old.sender_index);
        peer.timers.on_initiation_sent(now_ns, rng.next_u64());
        peer.last_handshake_sent_ns = Some(now_ns);
        let id = peer.shared.id();
        let endpoint = peer.shared.endpoint();
        if endpoint.is_some() {
            peer.shared
                .activity()
                .on_handshake_sent(INITIATION_LEN as u64);
        }
        if let Some(old) = superseded {
            self.handshakes.remove(&old);
        }
        self.handshakes.insert(index, id);
        Some(Transmit {
            peer: Some(id),
            to: endpoint?,
            datagram: message.to_vec(),
        })
    }

    /// The earliest time [`Self::poll`] has something to do, on the caller's clock.
    pub fn next_timeout(&self) -> Option<u64> {
        let now = self.last_poll_ns;
        let mut earliest: Option<u64> = None;
        let mut consider = |time: Option<u64>| {
            if let Some(time) = time {
                earliest = Some(earliest.map_or(time, |e| e.min(time)));
            }
        };
        if !self.purged_on_removal.is_empty() {
            consider(Some(now));
        }
        for peer in self.peers.iter().flatten() {
            if peer.shared.has_sendable_staged() {
                consider(Some(now));
            }
            let wanted = peer.shared.activity().has_handshake_request();
            let observed = self.observe(peer, now, wanted);
            consider(peer.timers.next_deadline(&observed));
            let mut has_keys = false;
            for keypair in peer.keypairs.iter() {
                consider(Some(keypair.created_ns() + REJECT_AFTER_TIME_NS));
                has_keys = true;
            }
            // Workers report through atomics only while there are keys to use.
            if has_keys {
                consider(Some(now + ACTIVITY_POLL_INTERVAL_NS));
            }
        }
        earliest
    }

    fn publish(&mut self) {
        if std::mem::take(&mut self.receivers_changed) {
            self.data_plane
                .receivers
                .store(Arc::new(self.receivers.clone()));
        }
        if std::mem::take(&mut self.routes_changed) {
            let peers = self
                .peers
                .iter()
                .map(|peer| peer.as_ref().map(|peer| peer.shared.clone()))
                .collect();
            self.data_plane.routes.store(Arc::new(RouteTable {
                allowed_ips: self.allowed_ips.clone(),
                peers,
            }));
        }
    }
}

/// Take everything staged for `peer` and seal it with `keypair`, in order, to `to`; counted as
/// sent. What cannot be sealed (the keypair ran out of counters, or was retired meanwhile) is
/// dropped: a new handshake is due and the sender retries, as after any loss.
fn seal_staged(keypair: &Keypair, peer: &PeerShared, to: SocketAddr, now_ns: u64) -> Vec<Transmit> {
    // Taken under the lock, sealed outside it: a worker staging meanwhile never waits long.
    let packets = peer.staged().take();
    let Some(counters) = keypair.reserve_counters(packets.len() as u64, now_ns) else {
        return Vec::new();
    };
    let mut transmits = Vec::with_capacity(packets.len());
    let mut bytes = 0;
    for (counter, staged) in counters.zip(packets) {
        let mut datagram = vec![0u8; TRANSPORT_MIN_LEN + staged.plaintext_room];
        let Ok(len) = keypair.seal(counter, &staged.packet, &mut datagram) else {
            break;
        };
        datagram.truncate(len);
        bytes += len as u64;
        transmits.push(Transmit {
            peer: Some(peer.id()),
            to,
            datagram,
        });
    }
    if !transmits.is_empty() {
        peer.activity().on_sent(now_ns, bytes, true);
    }
    transmits
}

/// Seal an empty transport message with `keypair` and count it as sent.
fn seal_keepalive(
    keypair: &Keypair,
    peer: &PeerShared,
    to: SocketAddr,
    now_ns: u64,
) -> Option<Transmit> {
    let counter = keypair.reserve_counters(1, now_ns)?.start;
    let mut datagram = vec![0u8; TRANSPORT_MIN_LEN];
    let len = keypair.seal(counter, &[], &mut datagram).ok()?;
    datagram.truncate(len);
    peer.activity().on_sent(now_ns, len as u64, false);
    Some(Transmit {
        peer: Some(peer.id()),
        to,
        datagram,
    })
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
