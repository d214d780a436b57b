//! Interface configuration without shelling out to `ip`, all through rtnetlink (`sys::netlink`,
//! which checks that every answer carries its request's sequence number and our port id):
//!
//! - one `RTM_NEWLINK` for what a device's setup changes together ([`configure`]: MTU, transmit
//!   queue length, `IFF_UP`; `ip link set DEV mtu M txqueuelen N up`). The GSO caps are separate
//!   requests of the same kind ([`set_gso_max_segments`], [`set_gso_max_size`]), since a kernel may
//!   refuse one of them while it accepts the rest, and the caller degrades rather than fails then;
//! - one `RTM_NEWADDR` per address ([`add_addresses`]; `ip addr add ADDR/PREFIX dev DEV`), so a
//!   device takes any number of IPv4 addresses with no alias labels (whose `DEV:N` names the old
//!   `SIOCSIFADDR` way needed, and which do not fit IFNAMSIZ past 15 bytes).
//!
//! The requests are built by pure functions, tested on their bytes; only `netlink::exchange`
//! makes system calls. The interface index comes from if_nametoindex(3). Also here: the device's
//! transmit drops, read from /proc/net/dev ([`tx_dropped`]).

use super::{Error, netlink};
use std::fmt;
use std::io;
use std::net::IpAddr;

/// `sizeof(struct ifaddrmsg)` (include/uapi/linux/if_addr.h).
const IFADDRMSG_LEN: usize = 8;

/// What one `RTM_NEWLINK` changes on a device: each attribute that is `Some`, and `IFF_UP` when
/// `up`. Everything else is left as it is (`ifi_change` names `IFF_UP` alone, or no flag).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkChange {
    /// `IFLA_MTU`, in bytes.
    pub mtu: Option<u32>,
    /// `IFLA_TXQLEN`, in packets (for a TUN: packets waiting to be read).
    pub tx_queue_len: Option<u32>,
    /// `IFLA_GSO_MAX_SIZE`, in bytes.
    pub gso_max_size: Option<u32>,
    /// `IFLA_GSO_MAX_SEGS`.
    pub gso_max_segments: Option<u32>,
    /// Set `IFF_UP`.
    pub up: bool,
}

/// `MTU 1472, transmit queue length 2000, up`: what the change sets, for a message.
impl fmt::Display for LinkChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            self.mtu.map(|mtu| format!("MTU {mtu}")),
            self.tx_queue_len
                .map(|packets| format!("transmit queue length {packets}")),
            self.gso_max_size
                .map(|bytes| format!("GSO size cap {bytes} bytes")),
            self.gso_max_segments
                .map(|segments| format!("GSO segment cap {segments}")),
            self.up.then(|| "up".to_string()),
        ];
        let parts: Vec<String> = parts.into_iter().flatten().collect();
        f.write_str(&parts.join(", "))
    }
}

/// The `RTM_NEWLINK` that makes `change` on interface `index`, asking for an ack and creating
/// nothing (no `NLM_F_CREATE`: `rtnl_newlink` in net/core/rtnetlink.c then only calls
/// `do_setlink` on the existing device). PURE.
pub fn link_change_request(index: u32, change: &LinkChange) -> netlink::Request {
    let up = if change.up { libc::IFF_UP as u32 } else { 0 };
    let mut request = netlink::Request::new(
        libc::RTM_NEWLINK,
        libc::NLM_F_ACK as u16,
        &netlink::ifinfomsg(index, up, up),
    );
    for (kind, value) in [
        (libc::IFLA_MTU, change.mtu),
        (libc::IFLA_TXQLEN, change.tx_queue_len),
        (libc::IFLA_GSO_MAX_SIZE, change.gso_max_size),
        (libc::IFLA_GSO_MAX_SEGS, change.gso_max_segments),
    ] {
        if let Some(value) = value {
            request = request.attribute(kind, &value.to_ne_bytes());
        }
    }
    request
}

/// The `RTM_NEWADDR` that adds `address/prefix` to interface `index` the way `ip addr add` does
/// (ip-address(8)): `NLM_F_CREATE | NLM_F_EXCL`, so an address the device has already
/// is EEXIST; `IFA_LOCAL` and `IFA_ADDRESS` both the address (no peer); host scope for 127/8 and
/// global otherwise; no `IFA_BROADCAST`, which `ip` adds only when told (`brd +`) and which a TUN,
/// being point-to-point without `IFF_BROADCAST`, never had from the `SIOCSIFNETMASK` this
/// replaces either (`devinet_ioctl` in net/ipv4/devinet.c). PURE.
pub fn address_request(index: u32, address: IpAddr, prefix: u8) -> netlink::Request {
    let (family, octets, scope) = match address {
        IpAddr::V4(a) => {
            let scope = if a.is_loopback() {
                libc::RT_SCOPE_HOST
            } else {
                libc::RT_SCOPE_UNIVERSE
            };
            (libc::AF_INET, a.octets().to_vec(), scope)
        }
        IpAddr::V6(a) => (libc::AF_INET6, a.octets().to_vec(), libc::RT_SCOPE_UNIVERSE),
    };
    let mut header = [0u8; IFADDRMSG_LEN];
    header[0] = family as u8; // ifa_family
    header[1] = prefix; // ifa_prefixlen
    header[2] = 0; // ifa_flags
    header[3] = scope; // ifa_scope
    header[4..8].copy_from_slice(&index.to_ne_bytes()); // ifa_index
    netlink::Request::new(
        libc::RTM_NEWADDR,
        (libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16,
        &header,
    )
    .attribute(libc::IFA_LOCAL, &octets)
    .attribute(libc::IFA_ADDRESS, &octets)
}

/// The interface index of `device` (if_nametoindex(3)).
pub fn interface_index(device: &str) -> Result<u32, Error> {
    let name = std::ffi::CString::new(device).map_err(|_| Error::InterfaceIndex {
        device: device.to_string(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: `name` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(Error::InterfaceIndex {
            device: device.to_string(),
            source: io::Error::last_os_error(),
        }),
        index => Ok(index),
    }
}

/// Makes `change` on `device` in one `RTM_NEWLINK`, failing with `error` and the kernel's reason.
fn change_link(
    device: &str,
    change: &LinkChange,
    error: impl FnOnce(io::Error) -> Error,
) -> Result<(), Error> {
    let index = interface_index(device)?;
    netlink::exchange(link_change_request(index, change), false)
        .map(drop)
        .map_err(error)
}

/// Sets up `device` with one `RTM_NEWLINK`: what `change` says, typically its MTU, its
/// transmit queue length and `IFF_UP` together.
pub fn configure(device: &str, change: LinkChange) -> Result<(), Error> {
    change_link(device, &change, |source| Error::ConfigureLink {
        device: device.to_string(),
        change,
        source,
    })
}

/// Sets the device's MTU.
#[cfg(test)]
pub fn set_mtu(device: &str, mtu: u32) -> Result<(), Error> {
    let change = LinkChange {
        mtu: Some(mtu),
        ..LinkChange::default()
    };
    change_link(device, &change, |source| Error::SetMtu {
        device: device.to_string(),
        mtu,
        source,
    })
}

/// Brings the device up (`IFF_UP`).
#[cfg(test)]
pub fn set_up(device: &str) -> Result<(), Error> {
    let change = LinkChange {
        up: true,
        ..LinkChange::default()
    };
    change_link(device, &change, |source| Error::SetLinkUp {
        device: device.to_string(),
        source,
    })
}

/// Caps how many segments a GSO super-packet for the device may hold (`ip link set DEV
/// gso_max_segs N`). `gso_max_size` bounds bytes only: an inner TCP sender with a small MSS (88
/// bytes is the kernel's floor, `TCP_MIN_MSS`) otherwise hands over super-packets of hundreds of
/// segments. TCP sizes its super-packets from it (`sk_gso_max_segs`, set when a connection is
/// established), and `netif_skb_features` in net/core/dev.c segments in software any other
/// super-packet with more (forwarded GRO packets, UDP GSO sends). `do_setlink` in
/// net/core/rtnetlink.c accepts it on an existing device.
pub fn set_gso_max_segments(device: &str, segments: u32) -> Result<(), Error> {
    let change = LinkChange {
        gso_max_segments: Some(segments),
        ..LinkChange::default()
    };
    change_link(device, &change, |source| Error::SetGsoMaxSegments {
        device: device.to_string(),
        segments,
        source,
    })
}

/// Caps the size of the GSO super-packets the stack builds for the device (`ip link set DEV
/// gso_max_size N`). New TCP connections size their super-packets from it.
pub fn set_gso_max_size(device: &str, bytes: u32) -> Result<(), Error> {
    let change = LinkChange {
        gso_max_size: Some(bytes),
        ..LinkChange::default()
    };
    change_link(device, &change, |source| Error::SetGsoMaxSize {
        device: device.to_string(),
        bytes,
        source,
    })
}

/// Adds addresses, one `RTM_NEWADDR` each ([`address_request`]); an address the device already
/// has is not an error (restarts are idempotent).
pub fn add_addresses(device: &str, addresses: &[(IpAddr, u8)]) -> Result<(), Error> {
    if addresses.is_empty() {
        return Ok(());
    }
    let index = interface_index(device)?;
    for &(address, prefix) in addresses {
        match netlink::exchange(address_request(index, address, prefix), false) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(source) => {
                return Err(Error::AddAddress {
                    device: device.to_string(),
                    address,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The device's transmit drops as the kernel counts them, since it was created: `tx_dropped`
/// from `/proc/net/dev`, which shows the caller's network namespace. For a TUN these are packets
/// that found their queue's ring (`--tx-queue-len` entries) full before tunfwd read them:
/// `tun_net_xmit` in drivers/net/tun.c drops rather than stopping the queue.
pub fn tx_dropped(device: &str) -> io::Result<u64> {
    let table = std::fs::read_to_string("/proc/net/dev")?;
    parse_tx_dropped(&table, device).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{device} is not in /proc/net/dev"),
        )
    })
}

/// `tx_dropped` of `device` in the text of `/proc/net/dev` (`dev_seq_printf_stats` in
/// net/core/net-procfs.c: `name: ` and then eight receive and eight transmit counters, the fourth
/// of the transmit ones being the drops). PURE.
pub fn parse_tx_dropped(table: &str, device: &str) -> Option<u64> {
    table.lines().find_map(|line| {
        let (name, counters) = line.split_once(':')?;
        if name.trim() != device {
            return None;
        }
        counters.split_whitespace().nth(8 + 3)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_drops_are_read_from_the_devices_own_line() {
        // The layout of /proc/net/dev on Linux 6.18 (two header lines, then one line a device).
        let table = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     240       3    0    0    0     0          0         0      240       3    0    0    0     0       0          0
tunfwd0: 94341605  235320    0    0    0     0          0         0 131275745 1426913    0 358414    0     0       0          0
tunfwd01:       1       2    3    4    5     6          7         8        9      10   11   12   13    14      15         16
 wide0:123456789       2    3    4    5     6          7         8        9      10   11   99   13    14      15         16
";
        assert_eq!(parse_tx_dropped(table, "tunfwd0"), Some(358_414));
        assert_eq!(
            parse_tx_dropped(table, "tunfwd01"),
            Some(12),
            "the fourth transmit counter"
        );
        assert_eq!(parse_tx_dropped(table, "lo"), Some(0));
        assert_eq!(
            parse_tx_dropped(table, "wide0"),
            Some(99),
            "a counter of 8 digits or more leaves no space after the colon"
        );
        assert_eq!(parse_tx_dropped(table, "tunfwd"), None, "no prefix match");
        assert_eq!(parse_tx_dropped(table, "face"), None, "not a header");
        assert_eq!(
            parse_tx_dropped("eth0: 1 2 3", "eth0"),
            None,
            "a short line"
        );
    }

    #[test]
    fn loopback_drops_can_be_read_here() {
        // Needs no privileges: every network namespace has lo.
        assert!(tx_dropped("lo").is_ok());
        assert!(tx_dropped("no-such-device-here").is_err());
    }

    fn u16_at(bytes: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes(bytes[at..at + 2].try_into().unwrap())
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn one_newlink_sets_mtu_queue_length_and_up() {
        let change = LinkChange {
            mtu: Some(1472),
            tx_queue_len: Some(2000),
            up: true,
            ..LinkChange::default()
        };
        let m = link_change_request(7, &change).finish(42);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(u16_at(&m, 4), libc::RTM_NEWLINK);
        assert_eq!(
            u16_at(&m, 6),
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            "an ack is asked for, and nothing is created"
        );
        assert_eq!(u32_at(&m, 8), 42, "the sequence number");
        assert_eq!(u32_at(&m, 20), 7, "ifi_index");
        assert_eq!(u32_at(&m, 24), libc::IFF_UP as u32, "ifi_flags");
        assert_eq!(
            u32_at(&m, 28),
            libc::IFF_UP as u32,
            "ifi_change: IFF_UP alone"
        );
        let attributes: Vec<_> = netlink::attributes(&m[32..]).collect();
        assert_eq!(
            attributes,
            vec![
                (libc::IFLA_MTU, &1472u32.to_ne_bytes()[..]),
                (libc::IFLA_TXQLEN, &2000u32.to_ne_bytes()[..]),
            ]
        );
        assert_eq!(
            change.to_string(),
            "MTU 1472, transmit queue length 2000, up"
        );
    }

    #[test]
    fn a_gso_cap_alone_changes_no_flag() {
        let change = LinkChange {
            gso_max_size: Some(62080),
            ..LinkChange::default()
        };
        let m = link_change_request(3, &change).finish(1);
        assert_eq!(m.len(), 16 + 16 + 8);
        assert_eq!(u32_at(&m, 28), 0, "ifi_change: no flags touched");
        assert_eq!(
            (u16_at(&m, 32), u16_at(&m, 34)),
            (8, libc::IFLA_GSO_MAX_SIZE)
        );
        assert_eq!(u32_at(&m, 36), 62080);
        let segments = LinkChange {
            gso_max_segments: Some(64),
            ..LinkChange::default()
        };
        let m = link_change_request(3, &segments).finish(1);
        assert_eq!(u16_at(&m, 34), libc::IFLA_GSO_MAX_SEGS);
        assert_eq!(segments.to_string(), "GSO segment cap 64");
    }

    #[test]
    fn addresses_are_added_as_ip_addr_add_does() {
        let m = address_request(5, "198.19.0.1".parse().unwrap(), 24).finish(9);
        assert_eq!(u16_at(&m, 4), libc::RTM_NEWADDR);
        assert_eq!(
            u16_at(&m, 6),
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16
        );
        // ifaddrmsg: family, prefix length, flags, scope, index.
        assert_eq!(
            &m[16..20],
            &[libc::AF_INET as u8, 24, 0, libc::RT_SCOPE_UNIVERSE]
        );
        assert_eq!(u32_at(&m, 20), 5);
        let attributes: Vec<_> = netlink::attributes(&m[24..]).collect();
        assert_eq!(
            attributes,
            vec![
                (libc::IFA_LOCAL, &[198u8, 19, 0, 1][..]),
                (libc::IFA_ADDRESS, &[198u8, 19, 0, 1][..]),
            ],
            "no broadcast, as `ip addr add` without `brd`"
        );
        let m = address_request(5, "127.0.0.2".parse().unwrap(), 8).finish(9);
        assert_eq!(
            m[19],
            libc::RT_SCOPE_HOST,
            "loopback addresses are host scope"
        );
        let v6: std::net::Ipv6Addr = "2001:2::1".parse().unwrap();
        let m = address_request(6, IpAddr::V6(v6), 64).finish(9);
        assert_eq!(
            &m[16..20],
            &[libc::AF_INET6 as u8, 64, 0, libc::RT_SCOPE_UNIVERSE]
        );
        assert_eq!(u32_at(&m, 20), 6);
        assert_eq!(
            netlink::attribute(&m[24..], libc::IFA_LOCAL),
            Some(&v6.octets()[..])
        );
        assert_eq!(m.len(), 16 + 8 + 2 * (4 + 16));
    }

    /// What an unprivileged process gets back for a change to loopback: the kernel's refusal,
    /// matched to our request (or, as root, the change is made: the MTU loopback has already).
    #[test]
    fn the_kernel_answers_a_link_change_with_its_verdict() {
        let mtu = netlink::egress_mtu("127.0.0.1".parse().unwrap()).unwrap();
        match set_mtu("lo", mtu) {
            Ok(()) => {}
            Err(Error::SetMtu { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EPERM), "{source}")
            }
            Err(other) => panic!("{other}"),
        }
        assert!(matches!(
            set_up("no-such-device0"),
            Err(Error::InterfaceIndex { .. })
        ));
    }
}
