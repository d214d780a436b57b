//! WireGuard mode of the relay: the data path of `tunfwd --wireguard`. PURE: no system call, no
//! X25519, no clock of its own.
//!
//! The protocol is `tunfwd_wireguard`'s; this module is how one worker's relay uses it, as that
//! crate's docs prescribe:
//! * **TUN to UDP** ([`Relay::wireguard_send`]): a TUN read is classified as in raw mode. Its
//!   destination picks the peer (cryptokey routing, longest prefix, the route table loaded once
//!   per read); the peer's send keypair gives counters for every segment in one atomic
//!   operation; each packet, or each segment of a super-packet (its rewritten header and its
//!   payload gathered from where they are), is sealed straight into its datagram in the slot's
//!   sealed area. The seal is the copy. Datagrams of one peer leave in UDP GSO sends to the
//!   peer's current endpoint ([`Relay::send_destination`]). With no session, the packet (each
//!   segment of a super-packet) is copied into the peer's staged queue (`wg_staged`, bounded by
//!   `tunfwd_wireguard::staged`) and the control thread is asked for a handshake (woken once);
//!   it sends what was staged once the session is up.
//! * **UDP to TUN** ([`Relay::wireguard_receive`]): each datagram of a GRO buffer is classified;
//!   transport data is opened in place under its keypair (the receiver table loaded once per
//!   buffer, each keypair's replay window locked once per run of its datagrams), its inner source
//!   checked against the peer's AllowedIPs, and the inner packets go into raw mode's coalescing
//!   and TUN writes. Handshake messages and cookie replies go to the control thread through a
//!   bounded queue ([`ToControl`]); a full queue is a counted drop, never a wait. The peer's
//!   activity and endpoint (roaming) are reported once per peer per buffer.
//!
//! WireGuard peers speak neither tunfwd's control messages nor its path MTU probing, so neither
//! runs in this mode; outer ECN is not applied either, and outer flow entropy is refused at
//! startup (a WireGuard peer roams to the source of each datagram): every datagram leaves from
//! the listen tuple (tuple 0). The AQM (`relay::queue`) does apply: on a TUN read it judges the
//! inner packet before it is sealed, and on a receive each inner packet once opened, with the
//! wait of the buffer it came in.

use super::receive::{self, ReceivePlan};
use super::slots::{Base, Piece};
use super::tun::FromTun;
use super::{MAX_GSO_SENDS, Received, Relay};
use crate::offload::coalesce::{self, Segment};
use crate::offload::split::{self, MAX_HEADER_LEN, Split};
use crate::stats::{DropReason, WorkerStats};
use crate::wire::cmsg::ReceiveControl;
use crate::wire::vnet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tunfwd_wireguard::device::DataPlane;
use tunfwd_wireguard::messages::{MessageKind, TRANSPORT_HEADER_LEN, classify};
use tunfwd_wireguard::peer::PeerShared;
use tunfwd_wireguard::transport::{OpenError, padded_len};
use tunfwd_wireguard::{Keypair, PeerId};

/// What WireGuard adds to an inner packet: header and tag (padding aside).
pub const OVERHEAD: usize = 32;

/// What a worker hands the control thread.
#[derive(Debug)]
pub enum ToControl {
    /// A handshake initiation, response or cookie reply from `source`.
    Handshake {
        datagram: Vec<u8>,
        source: SocketAddr,
    },
    /// A peer wants a handshake (`PeerActivity::request_handshake` said so): look now.
    Wake,
}

/// What the control thread counts, for queue 0 to report with its own counters (so that every
/// count reaches the stats, the JSON and the metrics by the one path they all take).
#[derive(Debug, Default)]
pub struct ControlCounters {
    pub handshakes: AtomicU64,
    pub cookie_replies: AtomicU64,
    pub bad_handshakes: AtomicU64,
    pub staged_sent: AtomicU64,
    pub staged_purged: AtomicU64,
}

/// What a relay in WireGuard mode is made with.
pub struct WireguardConfig {
    pub data_plane: Arc<DataPlane>,
    /// Hands a message to the control thread without waiting; false if its queue is full.
    pub to_control: Box<dyn FnMut(ToControl) -> bool + Send>,
    /// The control thread's counters, for the relay that reports them (queue 0).
    pub control_counters: Option<Arc<ControlCounters>>,
    /// The relay's `now_ns` plus this is the device's clock.
    pub clock_offset_ns: u64,
}

/// A relay's WireGuard state.
pub(super) struct Wireguard {
    data_plane: Arc<DataPlane>,
    to_control: Box<dyn FnMut(ToControl) -> bool + Send>,
    control_counters: Option<Arc<ControlCounters>>,
    clock_offset_ns: u64,
    /// Per TUN slot: the datagrams sealed from its packet (or super-packet), back to back.
    sealed: Box<[Box<[u8]>]>,
    /// Per TUN slot: where its sends go (its peer's endpoint when it was sealed).
    destinations: Box<[Option<SocketAddr>]>,
    /// The peer of the pending GSO batch: only one peer's datagrams share a send.
    batch_peer: Option<PeerId>,
}

impl Wireguard {
    /// State for `tun_buffers` slots whose reads are at most `mtu` bytes, or super-packets when
    /// `super_packets`.
    pub(super) fn new(
        config: WireguardConfig,
        tun_buffers: u16,
        mtu: usize,
        super_packets: bool,
    ) -> Wireguard {
        let area = if super_packets {
            // Every segment grows by at most its header (copied into each), WireGuard's 32
            // bytes and 15 of padding.
            65_535 + super::MAX_SPLIT_SEGMENTS * (MAX_HEADER_LEN + OVERHEAD + 15)
        } else {
            mtu + OVERHEAD + 15
        };
        Wireguard {
            data_plane: config.data_plane,
            to_control: config.to_control,
            control_counters: config.control_counters,
            clock_offset_ns: config.clock_offset_ns,
            sealed: (0..tun_buffers)
                .map(|_| vec![0u8; area].into_boxed_slice())
                .collect(),
            destinations: vec![None; usize::from(tun_buffers)].into_boxed_slice(),
            batch_peer: None,
        }
    }

    pub(super) fn sealed(&self, bid: u16) -> &[u8] {
        &self.sealed[usize::from(bid)]
    }

    pub(super) fn destination(&self, bid: u16) -> Option<SocketAddr> {
        self.destinations[usize::from(bid)]
    }

    /// Copies the control thread's counts into `stats` (queue 0 only).
    pub(super) fn report_control(&self, stats: &mut WorkerStats) {
        if let Some(counters) = &self.control_counters {
            stats.counters.wg_handshakes = counters.handshakes.load(Ordering::Relaxed);
            stats.counters.wg_cookie_replies = counters.cookie_replies.load(Ordering::Relaxed);
            stats.counters.drops[DropReason::WgBadHandshake as usize] =
                counters.bad_handshakes.load(Ordering::Relaxed);
            stats.counters.wg_staged_sent = counters.staged_sent.load(Ordering::Relaxed);
            stats.counters.drops[DropReason::WgStagedPurged as usize] =
                counters.staged_purged.load(Ordering::Relaxed);
        }
    }
}

/// The destination address of an inner IP packet, if its header has one.
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let octets: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(Ipv4Addr::from(octets).into())
        }
        6 => {
            let octets: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(Ipv6Addr::from(octets).into())
        }
        _ => None,
    }
}

/// The source address of an inner IP packet, and its length by its own header (which the
/// padding of an opened datagram follows), if the header has them.
pub fn source_and_len(packet: &[u8]) -> Option<(IpAddr, usize)> {
    match packet.first()? >> 4 {
        4 => {
            // The whole fixed header, as `destination` reads it: a packet cut short of 20 bytes
            // has a source but no destination (found by the wg_inner fuzz target).
            let header = packet.get(..20)?;
            let octets: [u8; 4] = header[12..16].try_into().ok()?;
            let len = u16::from_be_bytes(header[2..4].try_into().ok()?);
            Some((Ipv4Addr::from(octets).into(), usize::from(len)))
        }
        6 => {
            let header = packet.get(..40)?;
            let octets: [u8; 16] = header[8..24].try_into().ok()?;
            let len = u16::from_be_bytes(header[4..6].try_into().ok()?);
            Some((Ipv6Addr::from(octets).into(), 40 + usize::from(len)))
        }
        _ => None,
    }
}

/// The plaintext bytes a packet of `len` bytes is padded to: a multiple of 16, but never past
/// the MTU (the Linux module's `calculate_skb_padding`).
pub fn padded_to(len: usize, mtu: usize) -> usize {
    padded_len(len).min(mtu.max(len))
}

/// Whether a segment's rewritten header (`header_len` bytes) may go into a super-packet just
/// before the segment's payload at `payload_start`: only past the original header, which the
/// later segments' headers are still built from. The bytes it covers belong to the payload of
/// an earlier segment, sealed before this one.
pub fn header_fits_before(payload_start: usize, header_len: usize) -> bool {
    payload_start >= 2 * header_len
}

/// Why an open failed, as the counter it goes to.
pub fn open_drop(error: OpenError) -> DropReason {
    match error {
        OpenError::Replayed => DropReason::WgReplay,
        OpenError::Malformed | OpenError::WrongIndex => DropReason::WgMalformed,
        OpenError::Expired | OpenError::CounterRejected | OpenError::AuthenticationFailed => {
            DropReason::WgBadTag
        }
    }
}

/// The keypair and endpoint a packet for `peer` is sealed with, if it has a session.
fn session(peer: &PeerShared) -> Option<(Arc<Keypair>, SocketAddr)> {
    let keypair = peer.send_keypair().filter(|k| k.is_valid())?;
    Some((keypair, peer.endpoint()?))
}

/// No session for `peer`: `packets` (each given as its pieces and the most its padded plaintext
/// may be) were staged; count them and what they pushed out, then ask for a handshake, waking
/// the control thread the first time. Staged first, so the woken control thread finds them.
fn staged(
    stats: &mut WorkerStats,
    peer: &PeerShared,
    to_control: &mut (dyn FnMut(ToControl) -> bool + Send),
    device_now_ns: u64,
    (packets, dropped): (u64, u64),
) {
    stats.counters.wg_staged += packets;
    stats.counters.drop_n(DropReason::WgStagedOverflow, dropped);
    if peer.activity().request_handshake(device_now_ns) {
        to_control(ToControl::Wake);
    }
}

impl Relay {
    /// Where the sends of TUN slot `bid` go, when not to the relay's one peer (WireGuard mode).
    pub fn send_destination(&self, bid: u16) -> Option<SocketAddr> {
        self.wireguard.as_ref().and_then(|wg| wg.destination(bid))
    }

    /// A TUN read in WireGuard mode (see the module docs).
    pub(super) fn wireguard_send(&mut self, bid: u16, buffer: &mut [u8], len: usize, now_ns: u64) {
        // The AQM judges the inner packet before it is sealed, as in raw mode.
        let verdict = self.take_tun_read(bid, buffer, len, now_ns);
        match verdict {
            FromTun::Dropped => self.tun_free.push(bid),
            FromTun::Plain { len } => self.wireguard_send_plain(bid, buffer, len, now_ns),
            FromTun::Split(plan) => {
                self.send_batch();
                self.wireguard_send_split(bid, buffer, &plan, now_ns);
            }
            FromTun::TooBig { len, plan } => {
                self.send_batch();
                if !self.too_big_on_read(bid, buffer, len, plan, now_ns) {
                    self.tun_free.push(bid);
                }
            }
        }
    }

    /// Seals one plain packet into its slot and offers it to the GSO batch of its peer.
    fn wireguard_send_plain(&mut self, bid: u16, buffer: &[u8], len: usize, now_ns: u64) {
        let mtu = self.path.inner_mtu;
        let packet = &buffer[vnet::LEN..vnet::LEN + len];
        let Some(wg) = self.wireguard.as_mut() else {
            return self.tun_free.push(bid);
        };
        let device_now_ns = now_ns + wg.clock_offset_ns;
        let routes = wg.data_plane.routes();
        let Some(peer) = destination(packet).and_then(|d| routes.lookup(d)) else {
            self.stats.counters.drop(DropReason::WgNoRoute);
            return self.tun_free.push(bid);
        };
        let reserved = session(peer).and_then(|(keypair, endpoint)| {
            let counters = keypair.reserve_counters(1, device_now_ns)?;
            Some((keypair, endpoint, counters))
        });
        let Some((keypair, endpoint, counters)) = reserved else {
            let dropped = peer.stage(&[packet], padded_to(len, mtu));
            let to_control = &mut *wg.to_control;
            staged(
                &mut self.stats,
                peer,
                to_control,
                device_now_ns,
                (1, dropped),
            );
            return self.tun_free.push(bid);
        };
        let out = &mut wg.sealed[usize::from(bid)];
        let room = TRANSPORT_HEADER_LEN + padded_to(len, mtu) + 16;
        let Ok(sealed) = keypair.seal_gather(counters.start, &[packet], &mut out[..room]) else {
            self.stats.counters.drop(DropReason::WgNoSession);
            return self.tun_free.push(bid);
        };
        peer.activity().on_sent(device_now_ns, sealed as u64, true);
        let peer_id = peer.id();
        wg.destinations[usize::from(bid)] = Some(endpoint);
        drop(routes);
        let piece = Piece::new(Base::Sealed(bid), 0, sealed);
        if !self.offloads.udp_gso {
            self.lay_out_one(bid, piece, 0, 0);
            return self.submit_send(bid, 0, 0, 1, None, super::send::Route::Direct);
        }
        let wg = self.wireguard.as_mut().expect("WireGuard mode");
        if wg.batch_peer != Some(peer_id) {
            self.send_batch();
            if let Some(wg) = self.wireguard.as_mut() {
                wg.batch_peer = Some(peer_id);
            }
        }
        let flow = crate::steer::flow_key(packet);
        match self.batcher.offer(bid, sealed, flow, 0) {
            super::batch::Offer::Joined { position } => {
                let leader = self
                    .batcher
                    .leader()
                    .expect("a packet just joined the batch");
                let slot = &mut self.tun_slots[usize::from(leader)];
                slot.pieces[position] = piece;
                slot.followers.push(bid);
            }
            super::batch::Offer::Leads { flushed } => {
                if let Some(batch) = flushed {
                    self.submit_batch(batch);
                }
                let slot = &mut self.tun_slots[usize::from(bid)];
                slot.followers.clear();
                slot.pieces[0] = piece;
            }
        }
    }

    /// Splits a super-packet and seals each segment (its rewritten header and its payload, in
    /// place in the TUN buffer) into the slot's sealed area; then sends them, up to 64 per GSO
    /// send. From the second segment on, the rewritten header goes into the TUN buffer just
    /// before its payload (over the tail of a payload already sealed, never over the original
    /// header that every segment's is built from: [`header_fits_before`]), so that the AEAD
    /// seals each segment straight from there, without copying it.
    fn wireguard_send_split(&mut self, bid: u16, buffer: &mut [u8], plan: &Split, now_ns: u64) {
        let mtu = self.path.inner_mtu;
        let packet = &mut buffer[vnet::LEN..];
        let Some(wg) = self.wireguard.as_mut() else {
            return self.tun_free.push(bid);
        };
        let device_now_ns = now_ns + wg.clock_offset_ns;
        let routes = wg.data_plane.routes();
        let Some(peer) = destination(packet).and_then(|d| routes.lookup(d)) else {
            self.stats
                .counters
                .drop_n(DropReason::WgNoRoute, plan.count as u64);
            return self.tun_free.push(bid);
        };
        let reserved = session(peer).and_then(|(keypair, endpoint)| {
            let counters = keypair.reserve_counters(plan.count as u64, device_now_ns)?;
            Some((keypair, endpoint, counters))
        });
        let header_len = plan.transport.header_len();
        let Some((keypair, endpoint, counters)) = reserved else {
            // Each segment staged whole, as the Linux module stages a GSO packet's segments.
            let mut queue = peer.staged();
            let mut header = [0u8; MAX_HEADER_LEN];
            let mut dropped = 0;
            for i in 0..plan.count {
                let payload = plan.segment(packet, i, &mut header);
                let room = padded_to(header_len + payload.len(), mtu);
                dropped += queue.push(&[&header[..header_len], &packet[payload]], room);
            }
            drop(queue);
            let counts = (plan.count as u64, dropped);
            staged(
                &mut self.stats,
                peer,
                &mut *wg.to_control,
                device_now_ns,
                counts,
            );
            return self.tun_free.push(bid);
        };
        let count = (counters.end - counters.start) as usize;
        let slot = &mut self.tun_slots[usize::from(bid)];
        slot.begin_sends(0, 1, 0);
        slot.followers.clear();
        let out = &mut wg.sealed[usize::from(bid)];
        let mut at = 0;
        let mut sealed_bytes = 0u64;
        let mut header = [0u8; MAX_HEADER_LEN];
        let mut done = 0;
        for i in 0..count {
            let payload = plan.segment(packet, i, &mut header);
            let segment_len = header_len + payload.len();
            let room = TRANSPORT_HEADER_LEN + padded_to(segment_len, mtu) + 16;
            let Some(target) = out.get_mut(at..at + room) else {
                break;
            };
            let counter = counters.start + i as u64;
            let result = if header_fits_before(payload.start, header_len) {
                let segment = payload.start - header_len..payload.end;
                packet[segment.start..payload.start].copy_from_slice(&header[..header_len]);
                keypair.seal_gather(counter, &[&packet[segment]], target)
            } else {
                let parts: [&[u8]; 2] = [&header[..header_len], &packet[payload]];
                keypair.seal_gather(counter, &parts, target)
            };
            let Ok(sealed) = result else {
                break;
            };
            slot.pieces[i] = Piece::new(Base::Sealed(bid), at, sealed);
            at += sealed;
            sealed_bytes += sealed as u64;
            done += 1;
        }
        if done < plan.count {
            self.stats
                .counters
                .drop_n(DropReason::WgNoSession, (plan.count - done) as u64);
        }
        if done == 0 {
            return self.tun_free.push(bid);
        }
        peer.activity().on_sent(device_now_ns, sealed_bytes, true);
        wg.destinations[usize::from(bid)] = Some(endpoint);
        drop(routes);
        let first_len = self.tun_slots[usize::from(bid)].pieces[0].len as usize;
        let mut first = 0;
        if self.offloads.udp_gso && done > 1 {
            let per_send = split::segments_per_send(first_len);
            for msg in 0..MAX_GSO_SENDS {
                if first == done {
                    break;
                }
                let n = per_send.min(done - first);
                if n > 1 {
                    self.stats.counters.gso_sends += 1;
                }
                let size = (n > 1).then_some(first_len as u16);
                self.submit_send(bid, msg, first, n, size, super::send::Route::Direct);
                first += n;
            }
        }
        for i in first..done {
            self.submit_send(
                bid,
                MAX_GSO_SENDS + i,
                i,
                1,
                None,
                super::send::Route::Direct,
            );
        }
    }

    /// A receive in WireGuard mode (see the module docs). `source` is the datagrams' sender.
    pub(super) fn wireguard_receive(
        &mut self,
        bid: u16,
        buffer: &mut [u8],
        received: Received,
        source: Option<SocketAddr>,
        control: &ReceiveControl,
        now_ns: u64,
    ) {
        let payload_at = received.payload.start;
        let payload_len = received.payload.len();
        let stride = receive::datagram_stride(
            control.gro_segment_size,
            received.control_truncated,
            &buffer[received.payload.clone()],
        );
        let Relay {
            wireguard,
            stats,
            udp_slots,
            queues,
            ..
        } = self;
        let Some(wg) = wireguard.as_mut() else {
            return self.udp_free.push(bid);
        };
        let plan: &mut ReceivePlan = &mut udp_slots[usize::from(bid)].plan;
        plan.segments.clear();
        plan.runs.clear();
        plan.controls.clear();
        plan.advertisements.clear();
        let Some(source) = source else {
            stats.counters.drop_n(
                DropReason::ForeignSource,
                payload_len.div_ceil(stride.max(1)).max(1) as u64,
            );
            return self.udp_free.push(bid);
        };
        if payload_len == 0 {
            stats.counters.drop(DropReason::EmptyDatagram);
            return self.udp_free.push(bid);
        }
        // The AQM judges the inner packets once opened, as raw mode's receive judges its
        // datagrams: the wait is the whole buffer's.
        let mut gate = super::queue::socket_gate(
            queues,
            stats,
            control.received_at_ns,
            payload_len.div_ceil(stride) as u64,
            now_ns,
        );
        let device_now_ns = now_ns + wg.clock_offset_ns;
        let receivers = wg.data_plane.receivers();
        let routes = wg.data_plane.routes();
        // The keypair whose replay window is locked, and the peer whose activity is gathered
        // (its authenticated bytes, and whether any datagram carried data).
        let mut locked = None;
        let mut activity: Option<(&Arc<PeerShared>, u64, bool)> = None;
        let report = |activity: Option<(&Arc<PeerShared>, u64, bool)>| {
            if let Some((peer, bytes, data)) = activity {
                peer.activity().on_received(device_now_ns, bytes, data);
                // Roaming: the endpoint follows the latest authenticated datagram.
                peer.update_endpoint(source);
            }
        };
        let mut offset = 0;
        while offset < payload_len {
            let len = stride.min(payload_len - offset);
            let at = payload_at + offset;
            offset += len;
            let datagram = &mut buffer[at..at + len];
            match classify(datagram) {
                Some(MessageKind::TransportData) => {}
                Some(_) => {
                    let message = ToControl::Handshake {
                        datagram: datagram.to_vec(),
                        source,
                    };
                    if !(wg.to_control)(message) {
                        stats.counters.drop(DropReason::WgHandshakeQueueFull);
                    }
                    continue;
                }
                None => {
                    stats.counters.drop(DropReason::WgMalformed);
                    continue;
                }
            }
            let index = u32::from_le_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
            let Some(receiver) = receivers.get(index) else {
                stats.counters.drop(DropReason::WgUnknownReceiver);
                continue;
            };
            if locked.as_ref().map(|(locked_index, _)| *locked_index) != Some(index) {
                drop(locked.take());
                locked = Some((index, receiver.keypair().lock_replay()));
            }
            let Some((_, guard)) = locked.as_mut() else {
                continue;
            };
            let opened = match receiver.open_locked(guard, datagram, device_now_ns) {
                Ok(range) => range,
                Err(error) => {
                    stats.counters.drop(open_drop(error));
                    continue;
                }
            };
            let peer = receiver.peer();
            match &mut activity {
                Some((current, bytes, data)) if Arc::ptr_eq(current, peer) => {
                    *bytes += len as u64;
                    *data |= !opened.is_empty();
                }
                _ => report(activity.replace((peer, len as u64, !opened.is_empty()))),
            }
            stats.counters.udp_rx_packets += 1;
            stats.counters.udp_rx_bytes += len as u64;
            if opened.is_empty() {
                continue; // A keepalive.
            }
            let inner_at = at + opened.start;
            let inner = &buffer[inner_at..at + opened.end];
            let Some((inner_source, inner_len)) = source_and_len(inner) else {
                stats.counters.drop(DropReason::BadIpHeader);
                continue;
            };
            if inner_len > inner.len() || inner_len == 0 {
                stats.counters.drop(DropReason::IpLengthMismatch);
                continue;
            }
            if !routes.allows(peer.id(), inner_source) {
                stats.counters.drop(DropReason::WgSourceNotAllowed);
                continue;
            }
            match coalesce::validate(&buffer[inner_at..inner_at + inner_len]) {
                Ok(transport) if plan.segments.len() < receive::MAX_GRO_SEGMENTS => {
                    if let Some(gate) = gate.as_mut()
                        && super::queue::count_admitted(
                            gate.admit(&mut buffer[inner_at..inner_at + inner_len]),
                            stats,
                        )
                    {
                        continue;
                    }
                    plan.segments.push(Segment {
                        at: inner_at,
                        len: inner_len,
                        transport,
                    })
                }
                Ok(_) => stats.counters.drop(DropReason::OversizedDatagram),
                Err(malformed) => stats.counters.drop(malformed.into()),
            }
        }
        drop(locked);
        report(activity);
        // `plan_runs` counts the GRO receive.
        receive::plan_runs(buffer, self.coalesce, stats, plan);
        self.write_planned(bid, now_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::icmp::SharedBucket;
    use crate::offload::test_packets::{Spec, build};
    use crate::relay::plpmtud::SharedPath;
    use crate::relay::{Buffers, Offloads, RelayConfig, Request, WriteIndex};
    use tunfwd_wireguard::device::{Action, Outcome};
    use tunfwd_wireguard::{Device, IpPrefix, PrivateKey};

    const A: &str = "198.18.0.1:51820";
    const B: &str = "198.18.0.2:51821";

    struct Memory {
        tun: Vec<Vec<u8>>,
        udp: std::cell::RefCell<Vec<Vec<u8>>>,
    }

    impl Buffers for Memory {
        fn tun(&self, bid: u16) -> &[u8] {
            &self.tun[usize::from(bid)]
        }

        fn write_udp(&self, bid: u16, at: usize, bytes: &[u8]) {
            self.udp.borrow_mut()[usize::from(bid)][at..at + bytes.len()].copy_from_slice(bytes);
        }
    }

    fn memory() -> Memory {
        Memory {
            tun: vec![vec![0u8; 2048]; 4],
            udp: std::cell::RefCell::new(vec![vec![0u8; 2048]; 4]),
        }
    }

    /// Two devices, each the other's peer, A routing 198.19.0.2 to B and B 198.19.0.1 to A,
    /// after a completed handshake.
    fn devices() -> (Device, Device) {
        let (mut a, mut b) = strangers();
        let initiation = initiation(&mut a, 1);
        let Ok(Outcome::Responded { response, .. }) =
            b.on_handshake_message(&initiation.datagram, A.parse().unwrap(), 2)
        else {
            panic!("B answers");
        };
        let Ok(Outcome::SessionStarted { .. }) =
            a.on_handshake_message(&response.datagram, B.parse().unwrap(), 3)
        else {
            panic!("A's session starts");
        };
        (a, b)
    }

    /// The initiation A's timers send to B once a handshake is asked for at `now_ns`.
    fn initiation(a: &mut Device, now_ns: u64) -> tunfwd_wireguard::Transmit {
        let b_in_a = a.data_plane().routes().peers().next().unwrap().id();
        a.peer(b_in_a).unwrap().activity().request_handshake(now_ns);
        a.poll(now_ns)
            .into_iter()
            .find_map(|action| match action {
                Action::SendInitiation { transmit, .. } => Some(transmit),
                _ => None,
            })
            .expect("an initiation")
    }

    /// [`devices`] before any handshake.
    fn strangers() -> (Device, Device) {
        let (a_key, b_key) = (
            PrivateKey::generate(&mut rand_core::OsRng),
            PrivateKey::generate(&mut rand_core::OsRng),
        );
        let (a_public, b_public) = (a_key.public_key(), b_key.public_key());
        let mut a = Device::new(Some(a_key), 0, Box::new(rand_core::OsRng));
        let mut b = Device::new(Some(b_key), 0, Box::new(rand_core::OsRng));
        let b_in_a = a.add_peer(b_public).unwrap();
        let a_in_b = b.add_peer(a_public).unwrap();
        a.set_endpoint(b_in_a, B.parse().unwrap());
        a.add_allowed_ip(b_in_a, "198.19.0.2/32".parse::<IpPrefix>().unwrap());
        b.add_allowed_ip(a_in_b, "198.19.0.1/32".parse::<IpPrefix>().unwrap());
        a.poll(0);
        b.poll(0);
        (a, b)
    }

    fn relay(device: &Device) -> Relay {
        Relay::new(config(device))
    }

    fn config(device: &Device) -> RelayConfig {
        RelayConfig {
            queue: 0,
            peer: "[::]:0".parse().unwrap(),
            mtu: 1420,
            offloads: Offloads {
                tso: false,
                uso: false,
                udp_gso: false,
                udp_gro: false,
            },
            marking: crate::offload::ecn::Marking::DEFAULT,
            tun_buffers: 4,
            udp_buffers: 4,
            fragmenting: false,
            shared_path: Arc::new(SharedPath::new(1468)),
            path_machine: None,
            reply_budget: Arc::new(SharedBucket::new(std::time::Instant::now(), 200, 100)),
            reply_key: (1, 2),
            nonces: Box::new(|| 1),
            epoch: std::time::Instant::now(),
            snapshot_every_ns: None,
            aqm: crate::relay::aqm::Settings::OFF,
            entropy: crate::relay::EntropyConfig::none(),
            wireguard: Some(WireguardConfig {
                data_plane: device.data_plane(),
                to_control: Box::new(|_| true),
                control_counters: None,
                clock_offset_ns: 10,
            }),
        }
    }

    /// The datagram relay `r` sends for the TUN packet `packet`, and where to.
    fn seal_through(r: &mut Relay, m: &mut Memory, packet: &[u8]) -> (Vec<u8>, SocketAddr) {
        let bid = r.pop_free_tun().expect("a TUN buffer");
        let buffer = &mut m.tun[usize::from(bid)];
        buffer[..vnet::LEN].fill(0);
        buffer[vnet::LEN..vnet::LEN + packet.len()].copy_from_slice(packet);
        r.on_tun_read(bid, buffer, vnet::LEN + packet.len(), 100);
        r.end_batch(100, m);
        let Some(Request::Send {
            token,
            bid,
            first,
            segments,
            ..
        }) = r.poll_request()
        else {
            panic!("a send");
        };
        let (pieces, _) = r.send_pieces(bid, first, segments);
        let mut datagram = Vec::new();
        for piece in pieces {
            let bytes = r
                .own_bytes(piece.base)
                .expect("sealed in the relay's memory");
            datagram.extend_from_slice(&bytes[piece.offset as usize..][..piece.len as usize]);
        }
        let to = r.send_destination(bid).expect("a destination");
        r.complete(token, datagram.len() as i32, 200, m);
        (datagram, to)
    }

    /// What relay `r` writes into its TUN for `datagram` from `source`.
    fn open_through(
        r: &mut Relay,
        m: &mut Memory,
        datagram: &[u8],
        source: SocketAddr,
    ) -> Option<Vec<u8>> {
        open_through_at(r, m, datagram, source, 300, None)
    }

    /// [`open_through`] at `now_ns`, with the kernel's receive timestamp (`SCM_TIMESTAMPNS`,
    /// wall clock) `stamp_ns` if given.
    fn open_through_at(
        r: &mut Relay,
        m: &mut Memory,
        datagram: &[u8],
        source: SocketAddr,
        now_ns: u64,
        stamp_ns: Option<u64>,
    ) -> Option<Vec<u8>> {
        let bid = r.pop_free_udp().expect("a UDP buffer");
        let (name, name_len) = crate::wire::cmsg::sockaddr_bytes(source);
        let mut buffer = std::mem::take(&mut m.udp.borrow_mut()[usize::from(bid)]);
        buffer[..name_len].copy_from_slice(&name[..name_len]);
        let control_at = name_len;
        let mut control = control_at..control_at;
        if let Some(stamp) = stamp_ns {
            control.end += crate::wire::cmsg::TIMESTAMP_CONTROL_LEN;
            let fields: [&[u8]; 5] = [
                &32usize.to_ne_bytes(),
                &libc::SOL_SOCKET.to_ne_bytes(),
                &libc::SCM_TIMESTAMPNS.to_ne_bytes(),
                &((stamp / 1_000_000_000) as i64).to_ne_bytes(),
                &((stamp % 1_000_000_000) as i64).to_ne_bytes(),
            ];
            let mut at = control_at;
            for field in fields {
                buffer[at..at + field.len()].copy_from_slice(field);
                at += field.len();
            }
        }
        let at = 64;
        buffer[at..at + datagram.len()].copy_from_slice(datagram);
        let received = Received {
            name: 0..name_len,
            control,
            payload: at..at + datagram.len(),
            payload_truncated: false,
            control_truncated: false,
        };
        r.on_udp_recv(bid, &mut buffer, received, now_ns);
        m.udp.borrow_mut()[usize::from(bid)] = buffer;
        r.end_batch(now_ns, m);
        let Some(Request::Write { token }) = r.poll_request() else {
            return None;
        };
        let (_, pieces) = r.write_pieces(WriteIndex::unpack(token.index));
        let mut written = Vec::new();
        for piece in pieces {
            let udp = m.udp.borrow();
            let bytes = match piece.base {
                Base::UdpBuffer(b) => &udp[usize::from(b)][..],
                base => r.own_bytes(base).expect("the relay's memory"),
            };
            written.extend_from_slice(&bytes[piece.offset as usize..][..piece.len as usize]);
        }
        r.complete(token, written.len() as i32, now_ns + 100, m);
        Some(written[vnet::LEN..].to_vec())
    }

    /// A packet read from A's TUN is sealed to B's endpoint, and B's relay writes exactly that
    /// packet into its TUN; the same datagram again is a replay, a flipped bit a bad tag, and a
    /// packet from a source outside the sender's AllowedIPs is refused.
    #[test]
    fn a_packet_goes_through_sealed_and_comes_out_whole_once() {
        let (a, b) = devices();
        let (mut relay_a, mut relay_b) = (relay(&a), relay(&b));
        let (mut ma, mut mb) = (memory(), memory());
        let packet = build(&Spec {
            udp: true,
            payload_len: 100,
            ..Spec::default()
        });
        let (datagram, to) = seal_through(&mut relay_a, &mut ma, &packet);
        assert_eq!(to, B.parse().unwrap());
        assert_eq!(datagram.len(), 16 + padded_len(packet.len()) + 16);
        assert_ne!(&datagram[16..16 + packet.len()], &packet[..], "encrypted");

        let a_address: SocketAddr = A.parse().unwrap();
        let written = open_through(&mut relay_b, &mut mb, &datagram, a_address);
        assert_eq!(written.as_deref(), Some(&packet[..]));
        assert_eq!(relay_b.stats().counters.tun_tx_packets, 1);

        assert_eq!(
            open_through(&mut relay_b, &mut mb, &datagram, a_address),
            None
        );
        assert_eq!(relay_b.stats().counters.drops_of(DropReason::WgReplay), 1);

        let (mut tampered, _) = seal_through(&mut relay_a, &mut ma, &packet);
        tampered[40] ^= 1;
        assert_eq!(
            open_through(&mut relay_b, &mut mb, &tampered, a_address),
            None
        );
        assert_eq!(relay_b.stats().counters.drops_of(DropReason::WgBadTag), 1);

        // B allows only 198.19.0.1 from A: a packet of A's from 198.19.0.9 is refused.
        let mut spoofed = packet.clone();
        spoofed[15] = 9;
        spoofed[10..12].fill(0);
        let sum = crate::wire::checksum::Sum::of(&spoofed[..20]).finish();
        spoofed[10..12].copy_from_slice(&sum.to_be_bytes());
        let (datagram, _) = seal_through(&mut relay_a, &mut ma, &spoofed);
        assert_eq!(
            open_through(&mut relay_b, &mut mb, &datagram, a_address),
            None
        );
        assert_eq!(
            relay_b
                .stats()
                .counters
                .drops_of(DropReason::WgSourceNotAllowed),
            1
        );

        // No route: a destination no peer of A's has.
        let mut stray = packet.clone();
        stray[19] = 7;
        let bid = relay_a.pop_free_tun().unwrap();
        let buffer = &mut ma.tun[usize::from(bid)];
        buffer[vnet::LEN..vnet::LEN + stray.len()].copy_from_slice(&stray);
        relay_a.on_tun_read(bid, buffer, vnet::LEN + stray.len(), 500);
        assert_eq!(relay_a.stats().counters.drops_of(DropReason::WgNoRoute), 1);
    }

    /// The AQM judges WireGuard mode's inner packets once opened: with the socket's queue
    /// standing above target for an interval, an ECN-capable packet comes out marked CE (its
    /// checksum still right) and a Not-ECT one is dropped, both counted.
    #[test]
    fn the_aqm_marks_and_drops_opened_packets() {
        let (a, b) = devices();
        let mut relay_a = relay(&a);
        let eager = crate::relay::aqm::Params {
            target_ns: 1_000,
            interval_ns: 10_000,
        };
        let mut relay_b = Relay::new(RelayConfig {
            aqm: crate::relay::aqm::Settings {
                mode: crate::relay::aqm::Mode::Codel,
                mark: eager,
                drop: eager,
                ..crate::relay::aqm::Settings::DEFAULT
            },
            ..config(&b)
        });
        const WALL_AHEAD_NS: u64 = 1_000_000_000;
        relay_b.on_wall_clock(0, WALL_AHEAD_NS);
        let (mut ma, mut mb) = (memory(), memory());
        let a_address: SocketAddr = A.parse().unwrap();
        let mut outcomes = Vec::new();
        for (k, tos) in [2u8, 2, 2, 2, 0, 0, 0, 0].into_iter().enumerate() {
            let packet = build(&Spec {
                udp: true,
                payload_len: 1000,
                tos,
                id: k as u16,
                ..Spec::default()
            });
            let (datagram, _) = seal_through(&mut relay_a, &mut ma, &packet);
            let now = 1_000 + k as u64 * 20_000;
            // Each taken in by the kernel a millisecond before the relay reads it.
            let stamp = now + WALL_AHEAD_NS - 1_000_000;
            let written = open_through_at(
                &mut relay_b,
                &mut mb,
                &datagram,
                a_address,
                now,
                Some(stamp),
            );
            outcomes.push((tos, written));
        }
        let c = &relay_b.stats().counters;
        assert!(c.aqm_marked_udp_socket > 0, "{c:?}");
        assert!(c.drops_of(DropReason::AqmUdpSocket) > 0, "{c:?}");
        assert_eq!(
            c.udp_rx_packets, 8,
            "every datagram authenticated and counted"
        );
        let mut ce = 0;
        for (tos, written) in outcomes {
            if let Some(packet) = written {
                crate::offload::test_packets::assert_valid(&packet);
                if tos == 0 {
                    assert_eq!(packet[1] & 3, 0, "Not-ECT is never marked");
                }
                ce += u64::from(packet[1] & 3 == 3);
            } else {
                assert_eq!(tos, 0, "an ECN-capable packet is marked, not dropped");
            }
        }
        assert_eq!(ce, c.aqm_marked_udp_socket, "each mark is a CE in the TUN");
    }

    /// Packets read while A has no session are staged, not sent nor dropped, and the control
    /// thread is woken once; when the handshake completes they go out sealed, in order, and B's
    /// relay writes exactly them into its TUN. Then A sends directly.
    #[test]
    fn packets_without_a_session_are_staged_then_sent_whole() {
        let (mut a, mut b) = strangers();
        let wakes = Arc::new(AtomicU64::new(0));
        let counted = wakes.clone();
        let mut relay_a = Relay::new(RelayConfig {
            wireguard: Some(WireguardConfig {
                data_plane: a.data_plane(),
                to_control: Box::new(move |message| {
                    if matches!(message, ToControl::Wake) {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    true
                }),
                control_counters: None,
                clock_offset_ns: 10,
            }),
            ..config(&a)
        });
        let mut relay_b = relay(&b);
        let (mut ma, mut mb) = (memory(), memory());
        let packets: Vec<Vec<u8>> = [100, 1392]
            .into_iter()
            .map(|payload_len| {
                build(&Spec {
                    udp: true,
                    payload_len,
                    ..Spec::default()
                })
            })
            .collect();
        for (k, packet) in packets.iter().enumerate() {
            let bid = relay_a.pop_free_tun().expect("a TUN buffer");
            let buffer = &mut ma.tun[usize::from(bid)];
            buffer[..vnet::LEN].fill(0);
            buffer[vnet::LEN..vnet::LEN + packet.len()].copy_from_slice(packet);
            relay_a.on_tun_read(bid, buffer, vnet::LEN + packet.len(), 100 + k as u64);
            relay_a.end_batch(100 + k as u64, &ma);
            assert_eq!(relay_a.poll_request(), None, "no session: nothing to send");
        }
        let c = &relay_a.stats().counters;
        assert_eq!(c.wg_staged, 2);
        assert_eq!(c.drops_of(DropReason::WgNoSession), 0);
        assert_eq!(c.udp_tx_packets, 0);
        assert_eq!(wakes.load(Ordering::Relaxed), 1, "woken once");

        let initiation = initiation(&mut a, 200);
        let Ok(Outcome::Responded { response, .. }) =
            b.on_handshake_message(&initiation.datagram, A.parse().unwrap(), 201)
        else {
            panic!("B answers");
        };
        let Ok(Outcome::SessionStarted {
            keepalive, staged, ..
        }) = a.on_handshake_message(&response.datagram, B.parse().unwrap(), 202)
        else {
            panic!("A's session starts");
        };
        let a_address: SocketAddr = A.parse().unwrap();
        assert_eq!(
            open_through(&mut relay_b, &mut mb, &keepalive.datagram, a_address),
            None
        );
        assert_eq!(staged.len(), 2);
        for (transmit, packet) in staged.iter().zip(&packets) {
            assert_eq!(transmit.to, B.parse().unwrap());
            assert!(
                transmit.datagram.len() <= 1420 + OVERHEAD,
                "padded to the MTU at most"
            );
            let written = open_through(&mut relay_b, &mut mb, &transmit.datagram, a_address);
            assert_eq!(written.as_deref(), Some(&packet[..]));
        }
        let (datagram, _) = seal_through(&mut relay_a, &mut ma, &packets[0]);
        let written = open_through(&mut relay_b, &mut mb, &datagram, a_address);
        assert_eq!(
            written.as_deref(),
            Some(&packets[0][..]),
            "then sent directly"
        );
        assert_eq!(relay_a.stats().counters.wg_staged, 2);
    }

    /// Two datagrams in one GRO receive (a `UDP_GRO` control message giving their size) are
    /// both opened and written, and counted as one GRO receive, not two.
    #[test]
    fn a_gro_receive_of_two_datagrams_is_counted_once() {
        let (a, b) = devices();
        let (mut relay_a, mut relay_b) = (relay(&a), relay(&b));
        let (mut ma, mb) = (memory(), memory());
        let packets: Vec<Vec<u8>> = (0..2)
            .map(|id| {
                build(&Spec {
                    udp: true,
                    payload_len: 100,
                    id,
                    ..Spec::default()
                })
            })
            .collect();
        let datagrams: Vec<Vec<u8>> = packets
            .iter()
            .map(|packet| seal_through(&mut relay_a, &mut ma, packet).0)
            .collect();
        let stride = datagrams[0].len();
        assert_eq!(datagrams[1].len(), stride);

        let bid = relay_b.pop_free_udp().expect("a UDP buffer");
        let (name, name_len) = crate::wire::cmsg::sockaddr_bytes(A.parse().unwrap());
        let mut buffer = std::mem::take(&mut mb.udp.borrow_mut()[usize::from(bid)]);
        buffer[..name_len].copy_from_slice(&name[..name_len]);
        // One `SOL_UDP`/`UDP_GRO` message: cmsg_len = CMSG_LEN(sizeof(int)), then the size.
        let control = name_len..name_len + crate::wire::cmsg::GRO_CONTROL_LEN;
        let fields: [&[u8]; 4] = [
            &(size_of::<libc::cmsghdr>() + 4).to_ne_bytes(),
            &libc::SOL_UDP.to_ne_bytes(),
            &libc::UDP_GRO.to_ne_bytes(),
            &(stride as libc::c_int).to_ne_bytes(),
        ];
        let mut at = control.start;
        for field in fields {
            buffer[at..at + field.len()].copy_from_slice(field);
            at += field.len();
        }
        let payload = 128..128 + 2 * stride;
        buffer[payload.start..payload.start + stride].copy_from_slice(&datagrams[0]);
        buffer[payload.start + stride..payload.end].copy_from_slice(&datagrams[1]);
        let received = Received {
            name: 0..name_len,
            control,
            payload,
            payload_truncated: false,
            control_truncated: false,
        };
        relay_b.on_udp_recv(bid, &mut buffer, received, 300);
        mb.udp.borrow_mut()[usize::from(bid)] = buffer;
        relay_b.end_batch(300, &mb);
        while let Some(Request::Write { token }) = relay_b.poll_request() {
            let (_, pieces) = relay_b.write_pieces(WriteIndex::unpack(token.index));
            let len: u32 = pieces.iter().map(|piece| piece.len).sum();
            relay_b.complete(token, len as i32, 400, &mb);
        }
        let c = &relay_b.stats().counters;
        assert_eq!((c.udp_rx_packets, c.tun_tx_packets), (2, 2), "{c:?}");
        assert_eq!(c.gro_receives, 1, "{c:?}");
    }

    /// A TCP super-packet read from A's TUN (TSO) is sealed segment by segment into one GSO
    /// send, each segment's header written into the TUN buffer before its payload where that
    /// fits (from the second segment on, and not when the segment size is under the header's);
    /// B opens every datagram into exactly the segment the splitter makes of the original.
    #[test]
    fn a_super_packet_is_sealed_segment_by_segment() {
        for (payload_len, gso_size) in [(5 * 1000 + 300, 1000u16), (200, 30), (1380 * 3, 1380)] {
            let (a, b) = devices();
            let mut relay_a = Relay::new(RelayConfig {
                offloads: Offloads {
                    tso: true,
                    uso: false,
                    udp_gso: true,
                    udp_gro: false,
                },
                ..config(&a)
            });
            let mut relay_b = relay(&b);
            let mut ma = memory();
            ma.tun = vec![vec![0u8; 70_000]; 4];
            let mut mb = memory();
            let packet = build(&Spec {
                payload_len,
                ..Spec::default()
            });
            let plan = Split::plan(&packet, vnet::GsoType::TcpV4, gso_size, 64).unwrap();
            let segments: Vec<Vec<u8>> = (0..plan.count)
                .map(|i| {
                    let mut segment = Vec::new();
                    plan.segment_into(&packet, i, &mut segment);
                    segment
                })
                .collect();

            let bid = relay_a.pop_free_tun().expect("a TUN buffer");
            let buffer = &mut ma.tun[usize::from(bid)];
            buffer[..vnet::LEN].fill(0);
            buffer[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
            buffer[2..4].copy_from_slice(&40u16.to_le_bytes());
            buffer[4..6].copy_from_slice(&gso_size.to_le_bytes());
            buffer[vnet::LEN..vnet::LEN + packet.len()].copy_from_slice(&packet);
            relay_a.on_tun_read(bid, buffer, vnet::LEN + packet.len(), 100);
            relay_a.end_batch(100, &ma);
            let mut datagrams = Vec::new();
            let mut sends = 0;
            while let Some(Request::Send {
                token,
                bid,
                first,
                segments,
                ..
            }) = relay_a.poll_request()
            {
                sends += 1;
                let (pieces, _) = relay_a.send_pieces(bid, first, segments);
                let mut sent = 0;
                for piece in pieces {
                    let bytes = relay_a.own_bytes(piece.base).expect("sealed");
                    datagrams.push(bytes[piece.offset as usize..][..piece.len as usize].to_vec());
                    sent += piece.len;
                }
                relay_a.complete(token, sent as i32, 200, &ma);
            }
            assert_eq!(sends, 1, "{} segments in one GSO send", plan.count);
            assert_eq!(datagrams.len(), plan.count);
            let a_address: SocketAddr = A.parse().unwrap();
            for (datagram, segment) in datagrams.iter().zip(&segments) {
                let written = open_through(&mut relay_b, &mut mb, datagram, a_address);
                assert_eq!(written.as_deref(), Some(&segment[..]), "gso {gso_size}");
            }
        }
    }

    #[test]
    fn header_goes_before_a_payload_only_past_the_original_header() {
        assert!(
            !header_fits_before(40, 40),
            "the first segment's is the original"
        );
        assert!(
            !header_fits_before(70, 40),
            "would cover the original's last 10 bytes"
        );
        assert!(header_fits_before(80, 40));
        assert!(header_fits_before(1040, 40));
    }

    #[test]
    fn padding_goes_to_16_but_never_past_the_mtu() {
        assert_eq!(padded_to(0, 1420), 0);
        assert_eq!(padded_to(1, 1420), 16);
        assert_eq!(padded_to(1419, 1420), 1420);
        assert_eq!(padded_to(1420, 1420), 1420);
        assert_eq!(padded_to(1400, 1420), 1408);
        assert_eq!(padded_to(1410, 1420), 1420, "capped at the MTU");
        assert_eq!(padded_to(1500, 1420), 1500, "over the MTU: not padded");
    }

    #[test]
    fn addresses_and_lengths_come_from_either_header() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[2..4].copy_from_slice(&20u16.to_be_bytes());
        v4[12..16].copy_from_slice(&[198, 18, 0, 1]);
        v4[16..20].copy_from_slice(&[198, 18, 0, 2]);
        assert_eq!(destination(&v4), Some("198.18.0.2".parse().unwrap()));
        assert_eq!(
            source_and_len(&v4),
            Some(("198.18.0.1".parse().unwrap(), 20))
        );
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&8u16.to_be_bytes());
        v6[8..24].copy_from_slice(&"2001:2::1".parse::<Ipv6Addr>().unwrap().octets());
        v6[24..40].copy_from_slice(&"2001:2::2".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(destination(&v6), Some("2001:2::2".parse().unwrap()));
        assert_eq!(
            source_and_len(&v6),
            Some(("2001:2::1".parse().unwrap(), 48))
        );
        assert_eq!(destination(&[0x55; 40]), None);
        assert_eq!(source_and_len(&[0x45; 10]), None);
        // Cut short of the fixed header: no source where there is no destination either.
        assert_eq!(source_and_len(&v4[..19]), None);
        assert_eq!(source_and_len(&v6[..39]), None);
    }

    #[test]
    fn open_errors_are_counted_as_what_they_are() {
        assert_eq!(open_drop(OpenError::Replayed), DropReason::WgReplay);
        assert_eq!(
            open_drop(OpenError::AuthenticationFailed),
            DropReason::WgBadTag
        );
        assert_eq!(open_drop(OpenError::Malformed), DropReason::WgMalformed);
    }
}
