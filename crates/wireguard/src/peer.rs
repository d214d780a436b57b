//! One peer: the part workers share (keypair to send with, endpoint, activity) and the part only
//! the control thread touches (handshake state, keypair slots, timers, cookies).
//!
//! Workers see a peer through [`PeerShared`], reached lock-free from the device's published
//! tables. They read its send keypair and endpoint once per batch (`arc-swap` loads), and report
//! what they did with relaxed atomic stores into [`PeerActivity`] once per batch. Nothing a worker
//! does can block the control thread or another worker, and no X25519 ever runs on a worker.
//!
//! The control thread's [`Peer`] owns the three keypair slots of the Linux module's
//! `noise_keypairs` (`drivers/net/wireguard/noise.c`, `add_new_keypair` and
//! `wg_noise_received_with_keypair`): `current` is what workers send with; `previous` still
//! opens datagrams sent before a rekey; `next` is a responder's new keypair, which may not send
//! until the initiator proves it has the same keys by sending under it. That first datagram is
//! opened by a worker, which then publishes `next` as the send keypair itself (so the responder
//! answers under the new keys at once, with no gap), and the control thread rotates its slots
//! on its next look.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwapOption;

use crate::cookie::CookieJar;
use crate::device::PeerId;
use crate::keys::{PresharedKey, PublicKey};
use crate::noise::{InitiationSent, PeerSecrets};
use crate::staged::StagedPackets;
use crate::tai64n::Tai64N;
use crate::timers::PeerTimers;
use crate::transport::Keypair;

const NEVER: u64 = u64::MAX;

fn load(cell: &AtomicU64) -> Option<u64> {
    match cell.load(Ordering::Relaxed) {
        NEVER => None,
        value => Some(value),
    }
}

/// Store `value` into `cell` unless it is already there: an extra load saves a cache-line write
/// on the common path.
fn store_if_changed(cell: &AtomicU64, value: u64) {
    if cell.load(Ordering::Relaxed) != value {
        cell.store(value, Ordering::Relaxed);
    }
}

/// What the data path did for one peer, written by workers once per batch with relaxed stores
/// and read by the control thread's timers. Times are the caller's `now_ns` of the batch.
#[derive(Debug)]
pub struct PeerActivity {
    last_transport_sent_ns: AtomicU64,
    last_transport_received_ns: AtomicU64,
    last_data_sent_ns: AtomicU64,
    last_data_received_ns: AtomicU64,
    unanswered_data_since_ns: AtomicU64,
    unacknowledged_data_since_ns: AtomicU64,
    handshake_wanted_since_ns: AtomicU64,
    tx_bytes: AtomicU64,
    rx_bytes: AtomicU64,
}

impl Default for PeerActivity {
    fn default() -> Self {
        Self {
            last_transport_sent_ns: AtomicU64::new(NEVER),
            last_transport_received_ns: AtomicU64::new(NEVER),
            last_data_sent_ns: AtomicU64::new(NEVER),
            last_data_received_ns: AtomicU64::new(NEVER),
            unanswered_data_since_ns: AtomicU64::new(NEVER),
            unacknowledged_data_since_ns: AtomicU64::new(NEVER),
            handshake_wanted_since_ns: AtomicU64::new(NEVER),
            tx_bytes: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
        }
    }
}

impl PeerActivity {
    /// A batch of transport datagrams went out: `bytes` on the wire (UDP payloads), and
    /// `carried_data` if any was more than a keepalive.
    pub fn on_sent(&self, now_ns: u64, bytes: u64, carried_data: bool) {
        self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
        store_if_changed(&self.last_transport_sent_ns, now_ns);
        // Anything sent answers the data received before it (`timers.c`,
        // `wg_timers_any_authenticated_packet_sent`).
        store_if_changed(&self.unanswered_data_since_ns, NEVER);
        if carried_data {
            store_if_changed(&self.last_data_sent_ns, now_ns);
            if self.unacknowledged_data_since_ns.load(Ordering::Relaxed) == NEVER {
                self.unacknowledged_data_since_ns
                    .store(now_ns, Ordering::Relaxed);
            }
        }
    }

    /// A batch of transport datagrams was authenticated: `bytes` on the wire, `carried_data` if
    /// any was more than a keepalive.
    pub fn on_received(&self, now_ns: u64, bytes: u64, carried_data: bool) {
        self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        store_if_changed(&self.last_transport_received_ns, now_ns);
        store_if_changed(&self.unacknowledged_data_since_ns, NEVER);
        if carried_data {
            store_if_changed(&self.last_data_received_ns, now_ns);
            if self.unanswered_data_since_ns.load(Ordering::Relaxed) == NEVER {
                self.unanswered_data_since_ns
                    .store(now_ns, Ordering::Relaxed);
            }
        }
    }

    /// A worker has a packet for this peer and no valid keypair. Returns true the first time
    /// since the control thread last looked: then wake the control thread, which will start a
    /// handshake (the packet itself is the caller's to queue or drop).
    pub fn request_handshake(&self, now_ns: u64) -> bool {
        self.handshake_wanted_since_ns
            .compare_exchange(NEVER, now_ns, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Bytes sent, for `wg show` (`tx_bytes`).
    pub fn tx_bytes(&self) -> u64 {
        self.tx_bytes.load(Ordering::Relaxed)
    }

    /// Bytes received, for `wg show` (`rx_bytes`).
    pub fn rx_bytes(&self) -> u64 {
        self.rx_bytes.load(Ordering::Relaxed)
    }

    /// When data (not a keepalive) was last sent.
    pub fn last_data_sent_ns(&self) -> Option<u64> {
        load(&self.last_data_sent_ns)
    }

    /// When data (not a keepalive) was last received.
    pub fn last_data_received_ns(&self) -> Option<u64> {
        load(&self.last_data_received_ns)
    }

    /// When any transport datagram was last authenticated.
    pub fn last_transport_received_ns(&self) -> Option<u64> {
        load(&self.last_transport_received_ns)
    }

    /// When any transport datagram was last sent.
    pub fn last_transport_sent_ns(&self) -> Option<u64> {
        load(&self.last_transport_sent_ns)
    }

    pub(crate) fn unanswered_data_since_ns(&self) -> Option<u64> {
        load(&self.unanswered_data_since_ns)
    }

    pub(crate) fn unacknowledged_data_since_ns(&self) -> Option<u64> {
        load(&self.unacknowledged_data_since_ns)
    }

    /// Clear a mark the timers handled, unless a worker has replaced it meanwhile.
    pub(crate) fn clear_unanswered(&self, observed: Option<u64>) {
        if let Some(value) = observed {
            let _ = self.unanswered_data_since_ns.compare_exchange(
                value,
                NEVER,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    pub(crate) fn clear_unacknowledged(&self, observed: Option<u64>) {
        if let Some(value) = observed {
            let _ = self.unacknowledged_data_since_ns.compare_exchange(
                value,
                NEVER,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    pub(crate) fn has_handshake_request(&self) -> bool {
        self.handshake_wanted_since_ns.load(Ordering::Relaxed) != NEVER
    }

    /// Take the handshake request, if any.
    pub(crate) fn take_handshake_request(&self) -> bool {
        self.handshake_wanted_since_ns
            .swap(NEVER, Ordering::Relaxed)
            != NEVER
    }

    /// The control thread sent a handshake message: it answers received data too.
    pub(crate) fn on_handshake_sent(&self, bytes: u64) {
        self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
        store_if_changed(&self.unanswered_data_since_ns, NEVER);
    }

    /// The control thread authenticated a handshake message from the peer.
    pub(crate) fn on_handshake_received(&self, bytes: u64) {
        self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        store_if_changed(&self.unacknowledged_data_since_ns, NEVER);
    }

    pub(crate) fn forget_pending(&self) {
        self.unanswered_data_since_ns
            .store(NEVER, Ordering::Relaxed);
        self.unacknowledged_data_since_ns
            .store(NEVER, Ordering::Relaxed);
        self.handshake_wanted_since_ns
            .store(NEVER, Ordering::Relaxed);
    }
}

/// The part of a peer that workers read and write, without locks while it has a session.
#[derive(Debug)]
pub struct PeerShared {
    id: PeerId,
    public_key: PublicKey,
    send_keypair: ArcSwapOption<Keypair>,
    /// The control thread's `next` slot, as published: the one keypair a worker may confirm.
    next_keypair: ArcSwapOption<Keypair>,
    endpoint: ArcSwapOption<SocketAddr>,
    activity: PeerActivity,
    /// Packets waiting for a session (`crate::staged`); locked only without one.
    staged: Mutex<StagedPackets>,
}

impl PeerShared {
    pub(crate) fn new(id: PeerId, public_key: PublicKey) -> Self {
        Self {
            id,
            public_key,
            send_keypair: ArcSwapOption::empty(),
            next_keypair: ArcSwapOption::empty(),
            endpoint: ArcSwapOption::empty(),
            activity: PeerActivity::default(),
            staged: Mutex::new(StagedPackets::default()),
        }
    }

    /// No session to send `parts` (one packet, in pieces) with: copy it into the peer's staged
    /// queue, padded later to at most `plaintext_room` bytes. Returns the packets dropped to
    /// make room (`crate::staged`). Call it before `activity().request_handshake`, so that the
    /// control thread, once woken, finds the packet.
    pub fn stage(&self, parts: &[&[u8]], plaintext_room: usize) -> u64 {
        self.staged().push(parts, plaintext_room)
    }

    /// Whether packets are staged and a valid keypair and an endpoint are there to send them.
    pub(crate) fn has_sendable_staged(&self) -> bool {
        !self.staged().is_empty()
            && self.endpoint().is_some()
            && self
                .send_keypair()
                .is_some_and(|keypair| keypair.is_valid())
    }

    /// The staged queue, locked: for staging several packets (a split super-packet's segments)
    /// under one lock, and for the control thread.
    pub fn staged(&self) -> MutexGuard<'_, StagedPackets> {
        self.staged.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The peer's handle in its device.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// The peer's static public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// What workers report about this peer.
    pub fn activity(&self) -> &PeerActivity {
        &self.activity
    }

    /// The keypair to seal with, loaded once per batch. `None`, or one whose
    /// `reserve_counters` returns `None`, means: call `activity().request_handshake`.
    pub fn send_keypair(&self) -> Option<Arc<Keypair>> {
        self.send_keypair.load_full()
    }

    pub(crate) fn publish_send_keypair(&self, keypair: Option<Arc<Keypair>>) {
        let unchanged = match (&*self.send_keypair.load(), &keypair) {
            (Some(published), Some(new)) => Arc::ptr_eq(published, new),
            (None, None) => true,
            _ => false,
        };
        if !unchanged {
            self.send_keypair.store(keypair);
        }
    }

    /// Where to send this peer's datagrams: the source of its latest authenticated datagram,
    /// or the configured endpoint.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint.load().as_deref().copied()
    }

    /// Roaming: a datagram from `source` has been authenticated as this peer's. Stores only
    /// when the address changed, so calling it once per batch costs a load.
    pub fn update_endpoint(&self, source: SocketAddr) {
        if self.endpoint() != Some(source) {
            self.endpoint.store(Some(Arc::new(source)));
        }
    }

    /// The control thread's `next` slot changed: publish it for [`Self::confirm`].
    pub(crate) fn publish_next_keypair(&self, keypair: Option<Arc<Keypair>>) {
        let unchanged = match (&*self.next_keypair.load(), &keypair) {
            (Some(published), Some(new)) => Arc::ptr_eq(published, new),
            (None, None) => true,
            _ => false,
        };
        if !unchanged {
            self.next_keypair.store(keypair);
        }
    }

    /// A worker's datagram just confirmed `keypair`, a responder's keypair: if it is still the
    /// `next` one, send with it from now on (see the module docs); the control thread rotates
    /// its slots on its next look. One that left `next` unconfirmed (a newer session of this
    /// side's own initiation replaced it) is never made the send keypair again, as the Linux
    /// module's `wg_noise_received_with_keypair` only rotates in `next_keypair`.
    pub(crate) fn confirm(&self, keypair: &Arc<Keypair>) {
        let is_next = self
            .next_keypair
            .load()
            .as_ref()
            .is_some_and(|next| Arc::ptr_eq(next, keypair));
        if is_next && keypair.is_valid() {
            self.send_keypair.store(Some(keypair.clone()));
        }
    }
}

/// The three keypair slots.
#[derive(Default)]
pub(crate) struct KeypairSlots {
    pub(crate) previous: Option<Arc<Keypair>>,
    pub(crate) current: Option<Arc<Keypair>>,
    pub(crate) next: Option<Arc<Keypair>>,
}

impl KeypairSlots {
    /// Install a keypair this side just derived; returns the ones that fell out.
    pub(crate) fn install(&mut self, keypair: Arc<Keypair>) -> Vec<Arc<Keypair>> {
        let mut dropped = Vec::new();
        if keypair.is_initiator() {
            // The response proved the keys; usable at once. A pending `next` becomes previous
            // (the Linux module's choice), else the current one does.
            if let Some(next) = self.next.take() {
                dropped.extend(self.previous.replace(next));
                dropped.extend(self.current.take());
            } else {
                dropped.extend(self.previous.take());
                self.previous = self.current.take();
            }
            self.current = Some(keypair);
        } else {
            // Unconfirmed: wait in `next`; the old previous goes, the old current stays.
            dropped.extend(self.next.replace(keypair));
            dropped.extend(self.previous.take());
        }
        dropped
    }

    /// `next` has received its first datagram: rotate it in. Returns what fell out.
    pub(crate) fn promote_next(&mut self) -> Option<Arc<Keypair>> {
        let next = self.next.take()?;
        let dropped = self.previous.take();
        self.previous = self.current.replace(next);
        dropped
    }

    /// Remove keypairs for which `expired` holds.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Keypair) -> bool) -> Vec<Arc<Keypair>> {
        let mut dropped = Vec::new();
        for slot in [&mut self.previous, &mut self.current, &mut self.next] {
            if slot.as_ref().is_some_and(|keypair| !keep(keypair)) {
                dropped.extend(slot.take());
            }
        }
        dropped
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Keypair>> {
        [&self.previous, &self.current, &self.next]
            .into_iter()
            .flatten()
    }
}

/// Everything the control thread keeps about one peer.
pub(crate) struct Peer {
    pub(crate) shared: Arc<PeerShared>,
    pub(crate) secrets: PeerSecrets,
    pub(crate) cookies: CookieJar,
    pub(crate) handshake: Option<InitiationSent>,
    pub(crate) latest_timestamp: Option<Tai64N>,
    pub(crate) last_initiation_consumed_ns: Option<u64>,
    pub(crate) keypairs: KeypairSlots,
    pub(crate) timers: PeerTimers,
    pub(crate) persistent_keepalive_interval_s: u16,
    pub(crate) last_handshake_ns: Option<u64>,
    pub(crate) last_handshake_sent_ns: Option<u64>,
    pub(crate) last_handshake_received_ns: Option<u64>,
}

impl Peer {
    pub(crate) fn new(shared: Arc<PeerShared>, secrets: PeerSecrets, random: u64) -> Self {
        Self {
            cookies: CookieJar::new(&secrets.remote_static),
            shared,
            secrets,
            handshake: None,
            latest_timestamp: None,
            last_initiation_consumed_ns: None,
            keypairs: KeypairSlots::default(),
            timers: PeerTimers::new(random),
            persistent_keepalive_interval_s: 0,
            last_handshake_ns: None,
            last_handshake_sent_ns: None,
            last_handshake_received_ns: None,
        }
    }

    pub(crate) fn public_key(&self) -> &PublicKey {
        &self.secrets.remote_static
    }

    pub(crate) fn set_preshared_key(&mut self, psk: PresharedKey) {
        self.secrets.preshared_key = psk;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair(index: u32, is_initiator: bool) -> Arc<Keypair> {
        Arc::new(Keypair::from_raw_keys_with_role(index, is_initiator))
    }

    fn names(slots: &KeypairSlots) -> [Option<u32>; 3] {
        [&slots.previous, &slots.current, &slots.next]
            .map(|slot| slot.as_ref().map(|k| k.local_index()))
    }

    #[test]
    fn slots_rotate_as_the_linux_module_does() {
        let mut slots = KeypairSlots::default();
        assert!(slots.install(keypair(1, true)).is_empty());
        assert_eq!(names(&slots), [None, Some(1), None]);
        assert!(slots.install(keypair(2, true)).is_empty());
        assert_eq!(names(&slots), [Some(1), Some(2), None]);
        // Responder: waits in next; previous goes; current keeps sending.
        let dropped = slots.install(keypair(3, false));
        assert_eq!(
            dropped.iter().map(|k| k.local_index()).collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(names(&slots), [None, Some(2), Some(3)]);
        // A newer responder keypair replaces the unconfirmed one.
        let dropped = slots.install(keypair(4, false));
        assert_eq!(
            dropped.iter().map(|k| k.local_index()).collect::<Vec<_>>(),
            [3]
        );
        assert!(slots.promote_next().is_none());
        assert_eq!(names(&slots), [Some(2), Some(4), None]);
        // An initiator keypair while one waits in next: next becomes previous.
        let dropped = slots.install(keypair(5, false));
        assert_eq!(
            dropped.iter().map(|k| k.local_index()).collect::<Vec<_>>(),
            [2]
        );
        let dropped = slots.install(keypair(6, true));
        assert_eq!(
            dropped.iter().map(|k| k.local_index()).collect::<Vec<_>>(),
            [4]
        );
        assert_eq!(names(&slots), [Some(5), Some(6), None]);
    }

    #[test]
    fn activity_marks_follow_the_timer_rules() {
        let activity = PeerActivity::default();
        activity.on_received(10, 100, true);
        activity.on_received(20, 100, true);
        assert_eq!(activity.unanswered_data_since_ns(), Some(10));
        activity.on_sent(25, 32, false);
        assert_eq!(activity.unanswered_data_since_ns(), None);
        activity.on_sent(30, 100, true);
        activity.on_sent(40, 100, true);
        assert_eq!(activity.unacknowledged_data_since_ns(), Some(30));
        activity.on_received(45, 32, false);
        assert_eq!(activity.unacknowledged_data_since_ns(), None);
        assert_eq!(activity.unanswered_data_since_ns(), None);
        assert_eq!((activity.tx_bytes(), activity.rx_bytes()), (232, 232));
        assert!(activity.request_handshake(50));
        assert!(!activity.request_handshake(51));
        assert!(activity.take_handshake_request());
        assert!(!activity.take_handshake_request());
    }

    #[test]
    fn clearing_a_mark_keeps_a_newer_one() {
        let activity = PeerActivity::default();
        activity.on_received(10, 1, true);
        activity.on_sent(11, 1, false);
        activity.on_received(12, 1, true);
        activity.clear_unanswered(Some(10));
        assert_eq!(activity.unanswered_data_since_ns(), Some(12));
        activity.clear_unanswered(Some(12));
        assert_eq!(activity.unanswered_data_since_ns(), None);
    }
}
