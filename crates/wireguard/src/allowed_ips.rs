//! Cryptokey routing: which peer owns which inner addresses (whitepaper section 2).
//!
//! Outbound, the destination of a packet from the TUN device picks the peer to encrypt it for
//! ([`AllowedIps::lookup`], longest prefix wins). Inbound, a decrypted packet is accepted only if
//! its source address routes back to the peer whose keypair opened it ([`AllowedIps::allows`]).
//! Both run once per packet on worker threads, so lookups take `&self`, allocate nothing and
//! take no lock: the table is built on the control thread and published whole.
//!
//! The layout is "sorted prefix lists": for each address family, one table per prefix length in
//! use, longest first, each a sorted vector of masked network addresses searched by bisection.
//! A lookup costs one binary search per distinct prefix length present (a handful in real
//! configurations), touches contiguous memory, and needs no pointer chasing. Inserting a prefix
//! another peer owns moves it to the new peer, as `wg set ... allowed-ips` does; host bits
//! beyond the prefix length are cleared on insert.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::device::PeerId;

/// An IP network: an address with its host bits cleared, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    address: IpAddr,
    len: u8,
}

/// Why a prefix did not parse or was out of range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixError {
    /// The address part is not an IPv4 or IPv6 address.
    BadAddress,
    /// The length is not a number, or is longer than the address (32 or 128).
    BadLength,
}

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadAddress => "prefix address is not an IP address",
            Self::BadLength => "prefix length out of range",
        })
    }
}

impl std::error::Error for PrefixError {}

fn family_bits(address: &IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn address_bits(address: &IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u128::from(u32::from(*v4)),
        IpAddr::V6(v6) => u128::from(*v6),
    }
}

/// The mask of a `len`-bit prefix in a `width`-bit address, right-aligned in a `u128`.
fn mask(len: u8, width: u8) -> u128 {
    let width_mask = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    if len == 0 {
        0
    } else {
        (u128::MAX << (width - len)) & width_mask
    }
}

impl IpPrefix {
    /// The network of `address`/`len`, with host bits cleared.
    pub fn new(address: IpAddr, len: u8) -> Result<Self, PrefixError> {
        let width = family_bits(&address);
        if len > width {
            return Err(PrefixError::BadLength);
        }
        let network = address_bits(&address) & mask(len, width);
        let address = match address {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(network as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(network)),
        };
        Ok(Self { address, len })
    }

    /// The network address.
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// True for `/0`.
    pub fn is_default_route(&self) -> bool {
        self.len == 0
    }

    /// Whether `address` is inside this network.
    pub fn contains(&self, address: IpAddr) -> bool {
        family_bits(&address) == family_bits(&self.address)
            && address_bits(&address) & mask(self.len, family_bits(&address))
                == address_bits(&self.address)
    }
}

impl FromStr for IpPrefix {
    type Err = PrefixError;

    /// `address/len`, or a bare address as a host route (`wg` accepts both).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, len) = match text.split_once('/') {
            Some((address, len)) => (address, Some(len)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| PrefixError::BadAddress)?;
        let len = match len {
            None => family_bits(&address),
            Some(len) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
                len.parse().map_err(|_| PrefixError::BadLength)?
            }
            Some(_) => return Err(PrefixError::BadLength),
        };
        Self::new(address, len)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.len)
    }
}

/// All networks of one prefix length in one family, sorted by network address.
#[derive(Clone, Debug)]
struct LengthTable {
    len: u8,
    mask: u128,
    entries: Vec<(u128, PeerId)>,
}

/// One family's tables, longest prefix first.
#[derive(Clone, Debug)]
struct FamilyTable {
    width: u8,
    tables: Vec<LengthTable>,
}

impl FamilyTable {
    const fn new(width: u8) -> Self {
        Self {
            width,
            tables: Vec::new(),
        }
    }

    fn lookup(&self, address: u128) -> Option<PeerId> {
        self.tables.iter().find_map(|table| {
            let network = address & table.mask;
            table
                .entries
                .binary_search_by_key(&network, |&(network, _)| network)
                .ok()
                .map(|at| table.entries[at].1)
        })
    }

    fn insert(&mut self, network: u128, len: u8, peer: PeerId) {
        let position = self.tables.partition_point(|table| table.len > len);
        if self
            .tables
            .get(position)
            .is_none_or(|table| table.len != len)
        {
            self.tables.insert(
                position,
                LengthTable {
                    len,
                    mask: mask(len, self.width),
                    entries: Vec::new(),
                },
            );
        }
        let entries = &mut self.tables[position].entries;
        match entries.binary_search_by_key(&network, |&(network, _)| network) {
            Ok(at) => entries[at].1 = peer,
            Err(at) => entries.insert(at, (network, peer)),
        }
    }

    fn remove(&mut self, network: u128, len: u8, peer: PeerId) -> bool {
        let Some(position) = self.tables.iter().position(|table| table.len == len) else {
            return false;
        };
        let entries = &mut self.tables[position].entries;
        let removed = match entries.binary_search_by_key(&network, |&(network, _)| network) {
            Ok(at) if entries[at].1 == peer => {
                entries.remove(at);
                true
            }
            _ => false,
        };
        if entries.is_empty() {
            self.tables.remove(position);
        }
        removed
    }

    fn remove_peer(&mut self, peer: PeerId) {
        for table in &mut self.tables {
            table.entries.retain(|&(_, owner)| owner != peer);
        }
        self.tables.retain(|table| !table.entries.is_empty());
    }

    fn entries(&self) -> impl Iterator<Item = (u128, u8, PeerId)> + '_ {
        self.tables.iter().flat_map(|table| {
            table
                .entries
                .iter()
                .map(move |&(network, peer)| (network, table.len, peer))
        })
    }
}

/// The cryptokey routing table of a device.
#[derive(Clone, Debug)]
pub struct AllowedIps {
    v4: FamilyTable,
    v6: FamilyTable,
}

impl Default for AllowedIps {
    fn default() -> Self {
        Self::new()
    }
}

impl AllowedIps {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            v4: FamilyTable::new(32),
            v6: FamilyTable::new(128),
        }
    }

    fn family(&self, address: &IpAddr) -> &FamilyTable {
        match address {
            IpAddr::V4(_) => &self.v4,
            IpAddr::V6(_) => &self.v6,
        }
    }

    fn family_mut(&mut self, address: &IpAddr) -> &mut FamilyTable {
        match address {
            IpAddr::V4(_) => &mut self.v4,
            IpAddr::V6(_) => &mut self.v6,
        }
    }

    /// Give `prefix` to `peer`, taking it from any other peer that had it.
    pub fn insert(&mut self, prefix: IpPrefix, peer: PeerId) {
        let network = address_bits(&prefix.address);
        self.family_mut(&prefix.address)
            .insert(network, prefix.len, peer);
    }

    /// Remove `prefix` if `peer` owns it; returns whether it did.
    pub fn remove(&mut self, prefix: IpPrefix, peer: PeerId) -> bool {
        let network = address_bits(&prefix.address);
        self.family_mut(&prefix.address)
            .remove(network, prefix.len, peer)
    }

    /// Remove every prefix of `peer`.
    pub fn remove_peer(&mut self, peer: PeerId) {
        self.v4.remove_peer(peer);
        self.v6.remove_peer(peer);
    }

    /// The peer whose longest matching prefix contains `destination`.
    pub fn lookup(&self, destination: IpAddr) -> Option<PeerId> {
        // An IPv4-mapped IPv6 address is an IPv6 address here, as in the Linux module.
        self.family(&destination).lookup(address_bits(&destination))
    }

    /// Whether a packet from `source` may arrive through `peer`.
    pub fn allows(&self, peer: PeerId, source: IpAddr) -> bool {
        self.lookup(source) == Some(peer)
    }

    /// The prefixes `peer` owns, IPv4 first, longest first.
    pub fn prefixes_of(&self, peer: PeerId) -> Vec<IpPrefix> {
        let v4 = self.v4.entries().map(|(network, len, owner)| {
            (
                owner,
                IpPrefix {
                    address: IpAddr::V4(Ipv4Addr::from(network as u32)),
                    len,
                },
            )
        });
        let v6 = self.v6.entries().map(|(network, len, owner)| {
            (
                owner,
                IpPrefix {
                    address: IpAddr::V6(Ipv6Addr::from(network)),
                    len,
                },
            )
        });
        v4.chain(v6)
            .filter(|&(owner, _)| owner == peer)
            .map(|(_, prefix)| prefix)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u32) -> PeerId {
        PeerId::from_raw(n, 0)
    }

    fn prefix(text: &str) -> IpPrefix {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn prefixes_parse_mask_and_print() {
        let cases = [
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("192.0.2.77/32", "192.0.2.77/32"),
            ("192.0.2.77", "192.0.2.77/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("1.2.3.4/0", "0.0.0.0/0"),
            ("2001:db8:1:2::5/48", "2001:db8:1::/48"),
            ("::/0", "::/0"),
            ("2001:db8::1", "2001:db8::1/128"),
        ];
        for (input, shown) in cases {
            assert_eq!(prefix(input).to_string(), shown, "{input}");
        }
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "host/8",
            "10.0.0/8",
        ] {
            assert!(bad.parse::<IpPrefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_longest_prefix_wins() {
        let mut table = AllowedIps::new();
        table.insert(prefix("0.0.0.0/0"), peer(0));
        table.insert(prefix("10.0.0.0/8"), peer(1));
        table.insert(prefix("10.1.0.0/16"), peer(2));
        table.insert(prefix("10.1.2.3/32"), peer(3));
        table.insert(prefix("2001:db8::/32"), peer(4));
        table.insert(prefix("2001:db8:ff::/48"), peer(5));
        let cases = [
            ("10.1.2.3", Some(3)),
            ("10.1.2.4", Some(2)),
            ("10.2.0.1", Some(1)),
            ("11.0.0.1", Some(0)),
            ("2001:db8::1", Some(4)),
            ("2001:db8:ff::1", Some(5)),
            ("2001:db9::1", None),
            ("::ffff:10.1.2.3", None),
        ];
        for (address, expected) in cases {
            assert_eq!(table.lookup(ip(address)), expected.map(peer), "{address}");
        }
        assert!(table.allows(peer(2), ip("10.1.9.9")));
        assert!(!table.allows(peer(1), ip("10.1.9.9")));
    }

    #[test]
    fn inserting_a_prefix_owned_by_another_peer_moves_it() {
        let mut table = AllowedIps::new();
        table.insert(prefix("192.0.2.0/24"), peer(1));
        table.insert(prefix("192.0.2.99/24"), peer(2));
        assert_eq!(table.lookup(ip("192.0.2.1")), Some(peer(2)));
        assert!(table.prefixes_of(peer(1)).is_empty());
        assert_eq!(table.prefixes_of(peer(2)), vec![prefix("192.0.2.0/24")]);
        // Removing with the wrong owner leaves it.
        assert!(!table.remove(prefix("192.0.2.0/24"), peer(1)));
        assert!(table.remove(prefix("192.0.2.0/24"), peer(2)));
        assert_eq!(table.lookup(ip("192.0.2.1")), None);
    }

    #[test]
    fn removing_a_peer_removes_all_its_prefixes() {
        let mut table = AllowedIps::new();
        table.insert(prefix("10.0.0.0/8"), peer(1));
        table.insert(prefix("10.9.0.0/16"), peer(2));
        table.insert(prefix("fd00::/8"), peer(1));
        table.insert(prefix("10.9.9.0/24"), peer(1));
        table.remove_peer(peer(1));
        assert_eq!(table.lookup(ip("10.1.1.1")), None);
        assert_eq!(table.lookup(ip("10.9.9.9")), Some(peer(2)));
        assert_eq!(table.lookup(ip("fd00::1")), None);
        assert_eq!(table.prefixes_of(peer(2)), vec![prefix("10.9.0.0/16")]);
    }

    /// Against a brute-force reference over a few hundred random prefixes and addresses.
    #[test]
    fn lookups_match_a_linear_scan() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut table = AllowedIps::new();
        let mut reference: Vec<(IpPrefix, PeerId)> = Vec::new();
        for i in 0..300u32 {
            let bits = next();
            let address = if bits & 1 == 0 {
                IpAddr::V4(Ipv4Addr::from((bits >> 8) as u32 & 0x0aff_ffff))
            } else {
                IpAddr::V6(Ipv6Addr::from(u128::from(bits) << 64 | 0x2001_0db8))
            };
            let len = (next() % (u64::from(family_bits(&address)) + 1)) as u8;
            let network = IpPrefix::new(address, len).unwrap();
            table.insert(network, peer(i % 7));
            reference.retain(|(existing, _)| *existing != network);
            reference.push((network, peer(i % 7)));
        }
        for _ in 0..5000 {
            let bits = next();
            let address = if bits & 1 == 0 {
                IpAddr::V4(Ipv4Addr::from((bits >> 8) as u32 & 0x0aff_ffff))
            } else {
                IpAddr::V6(Ipv6Addr::from(u128::from(next()) << 64 | 0x2001_0db8))
            };
            let expected = reference
                .iter()
                .filter(|(network, _)| network.contains(address))
                .max_by_key(|(network, _)| network.prefix_len())
                .map(|&(_, owner)| owner);
            assert_eq!(table.lookup(address), expected, "{address}");
        }
    }
}
