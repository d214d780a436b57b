//! Answering an inner packet that no longer fits the path: ICMP "fragmentation needed" (IPv4,
//! RFC 792 and RFC 1191) or ICMPv6 "packet too big" (RFC 4443 section 3.2, RFC 8201). PURE.
//!
//! When the path between the relays shrinks, the inner senders must learn it, or every packet of
//! the old size vanishes (a black hole: TCP connects, then stalls at the first full segment). The
//! relay is the only one who knows, so it answers such a packet itself, as the kernel's own UDP
//! tunnels do (`skb_tunnel_check_pmtu` and `iptunnel_pmtud_build_icmp[v6]` in
//! net/ipv4/ip_tunnel_core.c), and the worker writes the answer into the TUN:
//!
//! * From the original packet's **destination**, to its source, with its TTL / hop limit; DF set,
//!   ID 0, TOS 0. Not from the TUN device's own address: the local stack would drop an incoming
//!   packet whose source is one of its own addresses as a martian, and tunfwd may have no address
//!   at all.
//! * Quoting as much of the original packet as fits in 576 bytes (IPv4, RFC 1812 section 4.3.2.3)
//!   or 1280 (IPv6, RFC 4443 section 2.4(c)).
//! * Never about a packet that may not cause one: an IPv4 packet without DF, or a fragment; an
//!   ICMP error; a packet from an unspecified, loopback, broadcast or multicast source, or to a
//!   broadcast or multicast destination; an ICMPv6 error or redirect, or a non-first IPv6
//!   fragment (RFC 1122 section 3.2.2, RFC 4443 section 2.4(e); the checks of
//!   `iptunnel_pmtud_check_icmp[v6]`). RFC 4443 section 2.4(e.3) would allow a packet-too-big
//!   about an IPv6 packet to a multicast group, but the answer comes from the original's
//!   destination, and a multicast address is never a source (RFC 4291 section 2.7).
//! * Never with an MTU below 576 (IPv4) or 1280 (IPv6), where the kernel sends nothing either
//!   (RFC 8200 section 5: 1280 is every IPv6 link's minimum; a node never lowers its estimate
//!   below it, RFC 8201 section 4).
//!
//! A packet that may not be answered is not dropped silently either: [`too_big_action`] sends it
//! on in outer fragments ([`TooBig::Fragment`]), as the kernel's tunnels pass such a packet on
//! (`skb_tunnel_check_pmtu` returns 0 when `iptunnel_pmtud_check_icmp[v6]` refuses). Dropping it
//! would make a black hole of exactly the cases the rules protect: an IPv4 path whose inner MTU
//! is below 576 (a path under 604 bytes) would carry no full-sized DF packet and tell no one.
//!
//! [`TokenBucket`] rate-limits the answers per worker, as `icmp_ratelimit` does for the kernel's.

use crate::wire::checksum::{Sum, pseudo_header_v6};
use crate::wire::extension::{ExtensionHeaders, Header};
use crate::wire::ip::field::{
    FRAGMENT_OFFSET, V4_CHECKSUM, V4_DST, V4_FRAGMENT, V4_ID, V4_PROTOCOL, V4_SRC, V4_TOS,
    V4_TOTAL_LEN, V4_TTL, V4_VERSION_IHL, V6_DST, V6_HOP_LIMIT, V6_NEXT_HEADER, V6_PAYLOAD_LEN,
    V6_SRC, V6_VERSION_CLASS_FLOW,
};
use crate::wire::ip::next_header::FRAGMENT;
use crate::wire::ip::{IPV4_DF, IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN};
use std::net::Ipv6Addr;

/// The largest ICMPv4 error tunfwd builds, its IP header included (RFC 1812 section 4.3.2.3).
pub const IPV4_ERROR_MAX: usize = 576;
/// The IPv6 minimum MTU, which is also the largest ICMPv6 error (RFC 4443 section 2.4(c)).
pub use crate::wire::ip::IPV6_MIN_MTU;
/// The smallest next-hop MTU tunfwd reports for IPv4: the kernel neither sends nor honours less
/// (`iptunnel_pmtud_check_icmp`; net.ipv4.route.min_pmtu is 552).
pub const IPV4_MIN_REPORTED_MTU: usize = 576;
/// Room for any reply [`too_big_reply`] builds.
pub const MAX_REPLY: usize = IPV6_MIN_MTU;

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
/// The ICMP header (RFC 792) and the ICMPv6 header (RFC 4443 section 2.1): type, code, checksum,
/// then four bytes whose use depends on the type (here, the MTU).
const ICMP_HEADER_LEN: usize = 8;
mod icmp_field {
    use core::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    /// Destination unreachable, code 4: unused, then the next-hop MTU (RFC 1191 section 4).
    pub const UNUSED: Range<usize> = 4..6;
    pub const NEXT_HOP_MTU: Range<usize> = 6..8;
    /// Packet too big: the MTU (RFC 4443 section 3.2).
    pub const MTU: Range<usize> = 4..8;
}

/// What an inner packet larger than the inner MTU gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooBig {
    /// An ICMP error telling the sender this MTU; the packet is dropped.
    Reply { mtu: usize },
    /// Send it anyway and let the outer IP layer fragment it: an IPv6 packet of at most 1280
    /// bytes on a path whose inner MTU is below the IPv6 minimum, which the link (here, the
    /// tunnel) must carry in pieces (RFC 8200 section 5; RFC 2473 section 7.1 for IPv6 tunnels),
    /// and every packet the rules above forbid answering: an IPv4 packet without DF (a router
    /// would fragment it, RFC 791), a fragment, an ICMP error, an IPv4 packet when the MTU to
    /// report is below 576, odd addresses.
    Fragment,
}

/// What to do with an inner packet of `len` bytes, longer than `inner_mtu`, whose headers start
/// `header` (an IPv4 or IPv6 packet, at least its fixed header). For a super-packet, `len` is a
/// segment's length and `header` the super-packet's, which its segments copy. `Reply` only when
/// [`too_big_reply`] would build the answer; anything else is passed on, in outer fragments.
pub fn too_big_action(header: &[u8], len: usize, inner_mtu: usize) -> TooBig {
    let mtu = match header.first().map(|b| b >> 4) {
        Some(6) if len <= IPV6_MIN_MTU => return TooBig::Fragment,
        Some(6) => inner_mtu.max(IPV6_MIN_MTU),
        _ => inner_mtu,
    };
    if may_answer(header, mtu) {
        TooBig::Reply { mtu }
    } else {
        TooBig::Fragment
    }
}

/// Whether the rules above allow telling `packet`'s sender that the path takes `mtu` bytes.
pub fn may_answer(packet: &[u8], mtu: usize) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) => may_answer_v4(packet, mtu),
        Some(6) => may_answer_v6(packet, mtu),
        _ => false,
    }
}

/// Builds into `out` the ICMP error telling `packet`'s sender that the path takes at most `mtu`
/// bytes, and returns its length; `None` when the rules above forbid an answer. `out` must hold
/// [`MAX_REPLY`] bytes.
pub fn too_big_reply(packet: &[u8], mtu: usize, out: &mut [u8]) -> Option<usize> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => fragmentation_needed(packet, mtu, out),
        Some(6) => packet_too_big(packet, mtu, out),
        _ => None,
    }
}

/// `iptunnel_pmtud_check_icmp`: DF set and not a fragment, an MTU the kernel honours, no odd
/// address, not an ICMP error.
fn may_answer_v4(packet: &[u8], mtu: usize) -> bool {
    if packet.len() < IPV4_MIN_HEADER_LEN || !(IPV4_MIN_REPORTED_MTU..=65535).contains(&mtu) {
        return false;
    }
    let ihl = usize::from(packet[V4_VERSION_IHL] & 0x0f) * 4;
    // DF set, and not a fragment: exactly the DF bit in the flags and offset.
    let fragment_word = u16::from_be_bytes(packet[V4_FRAGMENT].try_into().expect("2 bytes"));
    if ihl < IPV4_MIN_HEADER_LEN || fragment_word != IPV4_DF {
        return false;
    }
    let source = &packet[V4_SRC];
    let destination = &packet[V4_DST];
    let bad_source =
        source[0] == 0 || source[0] == 127 || source == [255; 4] || (224..240).contains(&source[0]);
    let bad_destination = destination == [255; 4] || (224..240).contains(&destination[0]);
    if bad_source || bad_destination {
        return false;
    }
    if packet[V4_PROTOCOL] == PROTO_ICMP {
        // icmp_is_err: destination unreachable, source quench, redirect, time exceeded,
        // parameter problem. A packet too short to show its type is not answered either.
        return match packet.get(ihl) {
            Some(kind) => !matches!(kind, 3 | 4 | 5 | 11 | 12),
            None => false,
        };
    }
    true
}

/// `iptunnel_pmtud_check_icmpv6`, and no multicast destination (see the module docs).
fn may_answer_v6(packet: &[u8], mtu: usize) -> bool {
    if packet.len() < IPV6_HEADER_LEN || mtu < IPV6_MIN_MTU || mtu > u32::MAX as usize {
        return false;
    }
    let address = |field: core::ops::Range<usize>| {
        Ipv6Addr::from(<[u8; 16]>::try_from(&packet[field]).expect("16 bytes"))
    };
    let (source, destination) = (address(V6_SRC), address(V6_DST));
    if source.is_unspecified()
        || source.is_multicast()
        || source.is_loopback()
        || destination.is_multicast()
    {
        return false;
    }
    match upper_layer(packet) {
        UpperLayer::NonFirstFragment => false,
        UpperLayer::Protocol(PROTO_ICMPV6, at) => match packet.get(at) {
            // Errors are types 0-127 (RFC 4443 section 2.1); 137 is a redirect (RFC 4861).
            Some(&kind) => kind >= 128 && kind != 137,
            None => false,
        },
        UpperLayer::Protocol(..) | UpperLayer::Unknown => true,
    }
}

/// ICMP type 3 code 4 with the next-hop MTU in the second half of the unused word (RFC 1191
/// section 4).
fn fragmentation_needed(packet: &[u8], mtu: usize, out: &mut [u8]) -> Option<usize> {
    if !may_answer_v4(packet, mtu) {
        return None;
    }
    const HEADERS: usize = IPV4_MIN_HEADER_LEN + ICMP_HEADER_LEN;
    let source: [u8; 4] = packet[V4_SRC].try_into().ok()?;
    let destination: [u8; 4] = packet[V4_DST].try_into().ok()?;
    let quote = packet.len().min(IPV4_ERROR_MAX - HEADERS);
    let total = HEADERS + quote;
    let out = out.get_mut(..total)?;
    let (ip, rest) = out.split_at_mut(IPV4_MIN_HEADER_LEN);
    ip[V4_VERSION_IHL] = 0x45;
    ip[V4_TOS] = 0;
    ip[V4_TOTAL_LEN].copy_from_slice(&(total as u16).to_be_bytes());
    ip[V4_ID].fill(0);
    ip[V4_FRAGMENT].copy_from_slice(&IPV4_DF.to_be_bytes());
    ip[V4_TTL] = packet[V4_TTL]; // the original's TTL, as iptunnel_pmtud_build_icmp does
    ip[V4_PROTOCOL] = PROTO_ICMP;
    ip[V4_CHECKSUM].fill(0);
    ip[V4_SRC].copy_from_slice(&destination);
    ip[V4_DST].copy_from_slice(&source);
    let header_checksum = Sum::of(ip).finish();
    ip[V4_CHECKSUM].copy_from_slice(&header_checksum.to_be_bytes());
    rest[icmp_field::TYPE] = 3; // destination unreachable
    rest[icmp_field::CODE] = 4; // fragmentation needed and DF set
    rest[icmp_field::CHECKSUM].fill(0);
    rest[icmp_field::UNUSED].fill(0);
    rest[icmp_field::NEXT_HOP_MTU].copy_from_slice(&(mtu as u16).to_be_bytes());
    rest[ICMP_HEADER_LEN..].copy_from_slice(&packet[..quote]);
    let checksum = Sum::of(rest).finish();
    rest[icmp_field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    Some(total)
}

/// ICMPv6 type 2 code 0 with the MTU (RFC 4443 section 3.2).
fn packet_too_big(packet: &[u8], mtu: usize, out: &mut [u8]) -> Option<usize> {
    if !may_answer_v6(packet, mtu) {
        return None;
    }
    const HEADERS: usize = IPV6_HEADER_LEN + ICMP_HEADER_LEN;
    let source = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[V6_SRC]).ok()?);
    let destination = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[V6_DST]).ok()?);
    let quote = packet.len().min(IPV6_MIN_MTU - HEADERS);
    let total = HEADERS + quote;
    let out = out.get_mut(..total)?;
    let payload_len = (ICMP_HEADER_LEN + quote) as u16;
    let (ip, rest) = out.split_at_mut(IPV6_HEADER_LEN);
    // Version 6; traffic class and flow label 0.
    ip[V6_VERSION_CLASS_FLOW].copy_from_slice(&[0x60, 0, 0, 0]);
    ip[V6_PAYLOAD_LEN].copy_from_slice(&payload_len.to_be_bytes());
    ip[V6_NEXT_HEADER] = PROTO_ICMPV6;
    ip[V6_HOP_LIMIT] = packet[V6_HOP_LIMIT]; // the original's hop limit
    ip[V6_SRC].copy_from_slice(&destination.octets());
    ip[V6_DST].copy_from_slice(&source.octets());
    rest[icmp_field::TYPE] = 2; // packet too big
    rest[icmp_field::CODE] = 0;
    rest[icmp_field::CHECKSUM].fill(0);
    rest[icmp_field::MTU].copy_from_slice(&(mtu as u32).to_be_bytes());
    rest[ICMP_HEADER_LEN..].copy_from_slice(&packet[..quote]);
    let checksum = (pseudo_header_v6(destination, source, PROTO_ICMPV6, u32::from(payload_len))
        + Sum::of(rest))
    .finish();
    rest[icmp_field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    Some(total)
}

enum UpperLayer {
    /// The protocol number and where its header starts.
    Protocol(u8, usize),
    /// A fragment other than the first: its upper-layer header is elsewhere.
    NonFirstFragment,
    /// The extension headers run past the bytes we have.
    Unknown,
}

/// Skips IPv6 extension headers as `ipv6_skip_exthdr` does (net/ipv6/exthdrs_core.c):
/// Hop-by-Hop, Routing, Destination Options, Authentication and Fragment headers, wherever they
/// stand (a non-zero fragment offset ends the walk).
///
/// The same walk as `Transport::parse`'s ([`ExtensionHeaders`]), with a policy of its own: that
/// one refuses what tunfwd does not segment or merge (a Fragment or AH header, a Routing header
/// with segments left), where this one must see behind all of them whether the packet is an
/// ICMPv6 error, as `iptunnel_pmtud_check_icmpv6` does.
fn upper_layer(packet: &[u8]) -> UpperLayer {
    for header in ExtensionHeaders::new(packet) {
        match header {
            Header::Extension { kind: FRAGMENT, at } => {
                let Some(offset) = packet.get(at + FRAGMENT_OFFSET.start..at + FRAGMENT_OFFSET.end)
                else {
                    return UpperLayer::Unknown;
                };
                if u16::from_be_bytes([offset[0], offset[1]]) & 0xfff8 != 0 {
                    return UpperLayer::NonFirstFragment;
                }
            }
            Header::Extension { .. } => {}
            Header::UpperLayer { protocol, at } => return UpperLayer::Protocol(protocol, at),
            Header::Truncated { .. } => return UpperLayer::Unknown,
        }
    }
    UpperLayer::Unknown
}

/// A token bucket: `burst` answers at once, then `per_second` a second. Time is the caller's
/// monotonic clock in ns, so the bucket is deterministic under test.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: u64,
    burst: u64,
    per_second: u64,
    last_refill_ns: u64,
}

impl TokenBucket {
    pub fn new(per_second: u64, burst: u64) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            burst,
            per_second: per_second.max(1),
            last_refill_ns: 0,
        }
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self, now_ns: u64) -> bool {
        let interval_ns = 1_000_000_000 / self.per_second;
        let earned = now_ns.saturating_sub(self.last_refill_ns) / interval_ns;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(self.burst);
            self.last_refill_ns += earned * interval_ns;
            if self.tokens == self.burst {
                // A full bucket earns nothing more: no credit piles up while idle.
                self.last_refill_ns = now_ns;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Who an ICMP error would go to: the source address of the packet it answers, as 16 bytes
/// (IPv4 mapped into IPv6), or `None` if the packet is too short to say.
pub fn reply_destination(packet: &[u8]) -> Option<[u8; 16]> {
    match packet.first()? >> 4 {
        4 => {
            let v4: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            Some(std::net::Ipv4Addr::from(v4).to_ipv6_mapped().octets())
        }
        6 => packet.get(8..24)?.try_into().ok(),
        _ => None,
    }
}

/// The sender `source` (an IPv6 address, IPv4 ones mapped) counts as: its /24 if IPv4, its /64
/// if IPv6.
fn sender_prefix(mut source: [u8; 16]) -> [u8; 16] {
    let mapped = std::net::Ipv6Addr::from(source).to_ipv4_mapped().is_some();
    if mapped {
        source[15] = 0;
    } else {
        source[8..].fill(0);
    }
    source
}

/// Slots of a [`SourceLimiter`]: the senders one worker keeps a budget for at once.
pub const LIMITED_SOURCES: usize = 64;

/// ICMP errors per inner sender: a token bucket per source prefix, so that one sender that
/// floods oversized packets spends its own budget and no one else's (the kernel rate-limits
/// its own ICMP errors per destination the same way, `icmpv4_xrlim_allow`). A sender is its
/// /24 (IPv4) or /64 (IPv6), the unit one host or subnet can change its address within at
/// will (an IPv6 host's temporary addresses, RFC 8981), so rotating addresses there buys no
/// budget. Direct-mapped by a keyed hash of the prefix (the key is random per worker, so a
/// sender cannot choose prefixes that share another's slot); a slot taken over by another
/// prefix keeps the tokens it had, so rotating prefixes buys no fresh bursts either, only the
/// slots' refill. What a sender rotating over many prefixes still gets is bounded by the
/// relay-wide [`SharedBucket`]. PURE but for the key, which the caller draws.
#[derive(Debug, Clone)]
pub struct SourceLimiter {
    key: (u64, u64),
    per_second: u64,
    burst: u64,
    slots: Box<[Option<SourceBudget>]>,
}

/// A slot of a [`SourceLimiter`]: the sender's address (16 bytes, IPv4 mapped) and its bucket.
type SourceBudget = ([u8; 16], TokenBucket);

impl SourceLimiter {
    pub fn new(key: (u64, u64), per_second: u64, burst: u64) -> SourceLimiter {
        SourceLimiter {
            key,
            per_second,
            burst,
            slots: vec![None; LIMITED_SOURCES].into_boxed_slice(),
        }
    }

    /// Takes a token of the bucket of `source`'s prefix if there is one.
    pub fn allow(&mut self, source: [u8; 16], now_ns: u64) -> bool {
        use std::hash::{BuildHasher, Hasher};
        let source = sender_prefix(source);
        let mut hasher =
            std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default().build_hasher();
        hasher.write_u64(self.key.0);
        hasher.write(&source);
        hasher.write_u64(self.key.1);
        let slot = &mut self.slots[hasher.finish() as usize % LIMITED_SOURCES];
        match slot {
            Some((owner, bucket)) if *owner == source => bucket.allow(now_ns),
            Some((owner, bucket)) => {
                *owner = source;
                bucket.allow(now_ns)
            }
            None => {
                let mut bucket = TokenBucket::new(self.per_second, self.burst);
                bucket.last_refill_ns = now_ns;
                let allowed = bucket.allow(now_ns);
                *slot = Some((source, bucket));
                allowed
            }
        }
    }
}

/// One budget of ICMP errors for the whole relay, shared by its workers: however many senders
/// there are, the relay writes at most this many errors a second into the TUN. Taken only after a
/// sender's own [`SourceLimiter`] allowed an error, so the lock is off the data path (a packet
/// too big for the path is already a slow path) and never held for more than a few adds.
#[derive(Debug)]
pub struct SharedBucket {
    /// The clock the bucket counts from: every worker's own clock starts elsewhere.
    epoch: std::time::Instant,
    bucket: std::sync::Mutex<TokenBucket>,
}

impl SharedBucket {
    pub fn new(epoch: std::time::Instant, per_second: u64, burst: u64) -> SharedBucket {
        SharedBucket {
            epoch,
            bucket: std::sync::Mutex::new(TokenBucket::new(per_second, burst)),
        }
    }

    /// Takes a token if there is one.
    pub fn allow(&self, now: std::time::Instant) -> bool {
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        match self.bucket.lock() {
            Ok(mut bucket) => bucket.allow(now_ns),
            // A worker panicked holding it: the relay is stopping anyway.
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::test_packets::{Spec, build};
    use etherparse::{Icmpv4Type, Icmpv6Type, NetSlice, SlicedPacket, TransportSlice};

    fn reply(packet: &[u8], mtu: usize) -> Option<Vec<u8>> {
        let mut out = [0u8; MAX_REPLY];
        too_big_reply(packet, mtu, &mut out).map(|n| out[..n].to_vec())
    }

    fn tcp(ipv6: bool, payload_len: usize) -> Vec<u8> {
        build(&Spec {
            ipv6,
            payload_len,
            ttl: 61,
            ..Spec::default()
        })
    }

    /// Frag-needed for a 1472-byte TCP packet: etherparse reads it as a valid IPv4 packet with a
    /// correct header checksum, ICMP type 3 code 4, a correct ICMP checksum, the MTU in place,
    /// addresses swapped, the original's TTL, and a quote of the original cut at 576 bytes.
    #[test]
    fn fragmentation_needed_is_valid_and_says_the_mtu() {
        let original = tcp(false, 1432);
        assert_eq!(original.len(), 1472);
        let r = reply(&original, 1252).expect("DF set: answered");
        assert_eq!(r.len(), IPV4_ERROR_MAX);
        let sliced = SlicedPacket::from_ip(&r).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &sliced.net else {
            panic!("not IPv4")
        };
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(usize::from(h.total_len), r.len());
        assert!(h.dont_fragment);
        assert_eq!(h.time_to_live, 61);
        assert_eq!(h.source, original[16..20]);
        assert_eq!(h.destination, original[12..16]);
        let Some(TransportSlice::Icmpv4(icmp)) = &sliced.transport else {
            panic!("not ICMP: {:?}", sliced.transport)
        };
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1252
                }
            )
        );
        assert_eq!(
            icmp.checksum(),
            icmp.icmp_type().calc_checksum(icmp.payload())
        );
        assert_eq!(icmp.payload(), &original[..548], "the quote");
    }

    #[test]
    fn packet_too_big_is_valid_and_says_the_mtu() {
        let original = tcp(true, 1400);
        let r = reply(&original, 1280).expect("answered");
        assert_eq!(r.len(), IPV6_MIN_MTU, "the quote fills the minimum MTU");
        let sliced = SlicedPacket::from_ip(&r).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &sliced.net else {
            panic!("not IPv6")
        };
        let h = ip.header().to_header();
        assert_eq!(usize::from(h.payload_length) + 40, r.len());
        assert_eq!(h.hop_limit, 61);
        assert_eq!(h.source, <[u8; 16]>::try_from(&original[24..40]).unwrap());
        assert_eq!(
            h.destination,
            <[u8; 16]>::try_from(&original[8..24]).unwrap()
        );
        assert_eq!(h.traffic_class, 0);
        let Some(TransportSlice::Icmpv6(icmp)) = &sliced.transport else {
            panic!("not ICMPv6: {:?}", sliced.transport)
        };
        assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1280 });
        let expected = icmp
            .icmp_type()
            .calc_checksum(h.source, h.destination, icmp.payload())
            .unwrap();
        assert_eq!(icmp.checksum(), expected);
        assert_eq!(icmp.payload(), &original[..1232]);
        // A short original is quoted whole.
        let small = tcp(true, 10);
        let r = reply(&small, 1300).unwrap();
        assert_eq!(r.len(), 48 + small.len());
        assert_eq!(&r[48..], &small[..]);
    }

    #[test]
    fn no_answer_where_the_rules_forbid_one() {
        let df = tcp(false, 100);
        assert!(reply(&df, 1252).is_some());
        assert!(reply(&df, 575).is_none(), "below 576");
        let mut no_df = df.clone();
        no_df[6] = 0;
        assert!(reply(&no_df, 1252).is_none(), "DF clear");
        let mut fragment = df.clone();
        fragment[6] |= 0x20; // MF
        assert!(reply(&fragment, 1252).is_none(), "a fragment");
        for (at, value, why) in [
            (12, 0, "source 0/8"),
            (12, 127, "loopback source"),
            (12, 224, "multicast source"),
            (16, 239, "multicast destination"),
        ] {
            let mut p = df.clone();
            p[at] = value;
            assert!(reply(&p, 1252).is_none(), "{why}");
        }
        let mut broadcast = df.clone();
        broadcast[16..20].fill(255);
        assert!(reply(&broadcast, 1252).is_none(), "broadcast destination");
        // An ICMP error is never answered; an echo request is.
        let mut icmp = df.clone();
        icmp[9] = PROTO_ICMP;
        for (kind, answered) in [(3, false), (11, false), (12, false), (8, true), (0, true)] {
            icmp[20] = kind;
            assert_eq!(reply(&icmp, 1252).is_some(), answered, "ICMP type {kind}");
        }

        let v6 = tcp(true, 1300);
        assert!(reply(&v6, 1280).is_some());
        assert!(reply(&v6, 1279).is_none(), "below 1280");
        for (address, why) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("ff02::1", "multicast"),
        ] {
            let mut p = v6.clone();
            p[8..24].copy_from_slice(&address.parse::<Ipv6Addr>().unwrap().octets());
            assert!(reply(&p, 1280).is_none(), "{why} source");
        }
        // The answer would come from a multicast group: no answer to a multicast destination.
        for (address, answered) in [
            ("ff02::1", false),
            ("ff0e::1:3", false),
            ("2001:db8::9", true),
        ] {
            let mut p = v6.clone();
            p[24..40].copy_from_slice(&address.parse::<Ipv6Addr>().unwrap().octets());
            assert_eq!(reply(&p, 1280).is_some(), answered, "destination {address}");
        }
        let mut icmp6 = v6.clone();
        icmp6[6] = PROTO_ICMPV6;
        for (kind, answered) in [(1, false), (2, false), (137, false), (128, true)] {
            icmp6[40] = kind;
            assert_eq!(
                reply(&icmp6, 1280).is_some(),
                answered,
                "ICMPv6 type {kind}"
            );
        }
        // Behind a Destination Options header, the ICMPv6 type is still found.
        let mut behind = build(&Spec {
            ipv6: true,
            ipv6_extensions: vec![(60, vec![1, 4, 0, 0, 0, 0])],
            payload_len: 1300,
            ..Spec::default()
        });
        behind[40] = PROTO_ICMPV6;
        behind[48] = 1;
        assert!(
            reply(&behind, 1280).is_none(),
            "an ICMPv6 error behind options"
        );
        behind[48] = 128;
        assert!(reply(&behind, 1280).is_some());
        // A non-first fragment is not answered; a first one is.
        let mut fragment = build(&Spec {
            ipv6: true,
            ipv6_extensions: vec![(44, vec![0, 0, 0, 0, 0, 1])],
            payload_len: 1300,
            ..Spec::default()
        });
        assert!(reply(&fragment, 1280).is_some(), "first fragment");
        fragment[42..44].copy_from_slice(&(185u16 << 3).to_be_bytes());
        assert!(reply(&fragment, 1280).is_none(), "later fragment");
        assert!(reply(&[0x45; 10], 1280).is_none());
        assert!(reply(&[], 1280).is_none());
    }

    #[test]
    fn too_big_packets_are_answered_or_fragmented_by_kind() {
        let df = tcp(false, 1432);
        assert_eq!(
            too_big_action(&df, df.len(), 1252),
            TooBig::Reply { mtu: 1252 }
        );
        let mut no_df = df.clone();
        no_df[6] = 0;
        assert_eq!(too_big_action(&no_df, no_df.len(), 1252), TooBig::Fragment);
        // IPv6 above the minimum MTU: told the larger of the inner MTU and 1280.
        let v6 = tcp(true, 1400);
        assert_eq!(
            too_big_action(&v6, v6.len(), 1300),
            TooBig::Reply { mtu: 1300 }
        );
        assert_eq!(
            too_big_action(&v6, v6.len(), 1252),
            TooBig::Reply { mtu: 1280 }
        );
        // At or below 1280 the tunnel must carry it, in outer fragments.
        let v6_min = tcp(true, 1280 - 60);
        assert_eq!(v6_min.len(), 1280);
        assert_eq!(
            too_big_action(&v6_min, v6_min.len(), 1252),
            TooBig::Fragment
        );
        // A super-packet is judged by its segments' length, not its own.
        assert_eq!(too_big_action(&v6, 1280, 1252), TooBig::Fragment);
        assert_eq!(too_big_action(&v6, 1281, 1252), TooBig::Reply { mtu: 1280 });
    }

    /// Whatever the rules forbid answering goes on in outer fragments, never into a silent
    /// drop, as `skb_tunnel_check_pmtu` passes it on: and `Reply` comes exactly when an answer
    /// can be built.
    #[test]
    fn packets_that_may_not_be_answered_are_fragmented() {
        let df = tcp(false, 1432);
        // An IPv4 path under 604 bytes: an inner MTU below 576, which no one may be told.
        assert_eq!(
            too_big_action(&df, df.len(), 576),
            TooBig::Reply { mtu: 576 }
        );
        assert_eq!(too_big_action(&df, df.len(), 575), TooBig::Fragment);
        assert_eq!(too_big_action(&df, df.len(), 400), TooBig::Fragment);
        let mut multicast = df.clone();
        multicast[16] = 239;
        let mut fragment = df.clone();
        fragment[6] |= 0x20;
        let mut icmp_error = df.clone();
        icmp_error[9] = PROTO_ICMP;
        icmp_error[20] = 11;
        let v6 = tcp(true, 1400);
        let mut v6_multicast = v6.clone();
        v6_multicast[24..40].copy_from_slice(&"ff05::2".parse::<Ipv6Addr>().unwrap().octets());
        let mut v6_loopback_source = v6.clone();
        v6_loopback_source[8..24].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        for (packet, why) in [
            (&multicast, "IPv4 multicast destination"),
            (&fragment, "IPv4 fragment"),
            (&icmp_error, "ICMP error"),
            (&v6_multicast, "IPv6 multicast destination"),
            (&v6_loopback_source, "IPv6 loopback source"),
        ] {
            assert_eq!(
                too_big_action(packet, packet.len(), 1252),
                TooBig::Fragment,
                "{why}"
            );
        }
        assert_eq!(too_big_action(&[0x00; 40], 1400, 1252), TooBig::Fragment);
        for packet in [&df, &v6] {
            for inner_mtu in [400, 575, 576, 1252, 1300] {
                let mut out = [0u8; MAX_REPLY];
                match too_big_action(packet, packet.len(), inner_mtu) {
                    TooBig::Reply { mtu } => {
                        assert!(
                            too_big_reply(packet, mtu, &mut out).is_some(),
                            "{inner_mtu}"
                        )
                    }
                    TooBig::Fragment => assert!(!may_answer(packet, inner_mtu), "{inner_mtu}"),
                }
            }
        }
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(10, 3);
        let second = 1_000_000_000;
        assert!((0..3).all(|_| b.allow(5)));
        assert!(!b.allow(5), "burst spent");
        assert!(!b.allow(5 + second / 20), "half a token");
        assert!(b.allow(5 + second / 10));
        assert!(!b.allow(5 + second / 10));
        // A long idle period refills to the burst, no more.
        let later = 100 * second;
        assert!((0..3).all(|_| b.allow(later)));
        assert!(!b.allow(later));
        // Ten a second over a second, after the burst.
        let allowed = (1..=100)
            .filter(|i| b.allow(later + i * second / 100))
            .count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn a_flooding_source_does_not_starve_another() {
        let mut limiter = SourceLimiter::new((1, 2), 10, 10);
        let epoch = std::time::Instant::now();
        let cap = SharedBucket::new(epoch, 200, 100);
        let at = |ns: u64| epoch + std::time::Duration::from_nanos(ns);
        let flooder = [1u8; 16];
        let other = [2u8; 16];
        let (mut flooder_allowed, mut other_allowed) = (0, 0);
        // One second: the flooder asks 10 000 times, the other sender 5 times, interleaved.
        for i in 0..10_000u64 {
            let now = i * 100_000;
            if limiter.allow(flooder, now) && cap.allow(at(now)) {
                flooder_allowed += 1;
            }
            if i % 2000 == 0 && limiter.allow(other, now) && cap.allow(at(now)) {
                other_allowed += 1;
            }
        }
        assert!(
            (10..=20).contains(&flooder_allowed),
            "the flooder gets its burst and rate: {flooder_allowed}"
        );
        assert_eq!(other_allowed, 5, "the other sender is answered every time");
    }

    /// Rotating addresses within a /64 (IPv6) or a /24 (IPv4) is one sender; and a sender that
    /// rotates over many prefixes takes over slots with the tokens they have, not fresh bursts.
    #[test]
    fn rotating_addresses_buys_no_budget() {
        let v6 = |last: u64| {
            let mut a = [0x20, 0x01, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0];
            a[8..].copy_from_slice(&last.to_be_bytes());
            a
        };
        let v4 = |host: u8| {
            std::net::Ipv4Addr::new(198, 18, 5, host)
                .to_ipv6_mapped()
                .octets()
        };
        for address in [&v6 as &dyn Fn(u64) -> [u8; 16], &|n| v4(n as u8)] {
            let mut limiter = SourceLimiter::new((5, 6), 10, 10);
            let allowed = (0..1000u64)
                .filter(|n| limiter.allow(address(*n), 1_000))
                .count();
            assert_eq!(allowed, 10, "one burst for the whole prefix");
        }
        // 1000 different /64s in a millisecond: at most one burst per slot, then only what the
        // slots refill.
        let mut limiter = SourceLimiter::new((5, 6), 10, 10);
        let mut allowed = 0;
        for n in 0..1000u64 {
            let mut a = v6(1);
            a[..8].copy_from_slice(&(0x2001_0002_0000_0000 + n).to_be_bytes());
            for _ in 0..3 {
                allowed += usize::from(limiter.allow(a, 1_000 + n));
            }
        }
        assert!(allowed <= LIMITED_SOURCES * 10 + 1, "{allowed}");
    }

    #[test]
    fn the_shared_cap_bounds_every_source_together() {
        let mut limiter = SourceLimiter::new((3, 4), 10, 10);
        let epoch = std::time::Instant::now();
        let cap = SharedBucket::new(epoch, 200, 100);
        let mut allowed = 0;
        // 1000 senders, 2 requests each, within a millisecond: the cap's burst decides.
        for n in 0..1000u32 {
            let mut source = [0u8; 16];
            source[..4].copy_from_slice(&n.to_be_bytes());
            for _ in 0..2 {
                if limiter.allow(source, 1_000) && cap.allow(epoch) {
                    allowed += 1;
                }
            }
        }
        assert_eq!(allowed, 100);
    }

    #[test]
    fn replies_go_to_the_packets_source() {
        let v4 = build(&Spec::default());
        let expected = std::net::Ipv4Addr::new(v4[12], v4[13], v4[14], v4[15]).to_ipv6_mapped();
        assert_eq!(reply_destination(&v4), Some(expected.octets()));
        let v6 = build(&Spec {
            ipv6: true,
            ..Spec::default()
        });
        let source: [u8; 16] = v6[8..24].try_into().unwrap();
        assert_eq!(reply_destination(&v6), Some(source));
        assert_eq!(reply_destination(&v4[..15]), None);
        assert_eq!(reply_destination(&[0x50; 40]), None);
    }
}
