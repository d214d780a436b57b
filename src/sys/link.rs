//! Interface configuration without shelling out to `ip`: MTU, addresses and link state through the
//! classic `SIOC*` ioctls on a throwaway datagram socket; the GSO size limit, which has no ioctl,
//! through one rtnetlink request.
//!
//! IPv4: `SIOCSIFADDR` replaces the interface's primary address, so the first IPv4 address goes on
//! the device itself and further ones on alias labels `dev:1`, `dev:2`... (net/ipv4/devinet.c).
//! IPv6: `SIOCSIFADDR` on an AF_INET6 socket takes a `struct in6_ifreq` and adds (net/ipv6/addrconf.c).

use super::{Error, check, ifreq_named};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn control_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is owned immediately after the check.
    let fd = check(unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl(fd: &OwnedFd, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every SIOC* request used here reads or writes one `struct ifreq`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request as _, req as *mut libc::ifreq) }).map(drop)
}

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

pub fn set_mtu(device: &str, mtu: u32) -> Result<(), Error> {
    let err = |source| Error::SetMtu {
        device: device.to_string(),
        mtu,
        source,
    };
    let sock = control_socket(libc::AF_INET).map_err(err)?;
    let mut req = ifreq_named(device);
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    ioctl(&sock, libc::SIOCSIFMTU, &mut req).map_err(err)
}

/// Sets the device's transmit queue length in packets (for a TUN: packets waiting to be read).
pub fn set_tx_queue_len(device: &str, packets: u32) -> Result<(), Error> {
    let err = |source| Error::SetTxQueueLen {
        device: device.to_string(),
        packets,
        source,
    };
    let sock = control_socket(libc::AF_INET).map_err(err)?;
    let mut req = ifreq_named(device);
    req.ifr_ifru.ifru_metric = packets as libc::c_int; // ifr_qlen shares the union's int slot
    ioctl(&sock, libc::SIOCSIFTXQLEN, &mut req).map_err(err)
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

pub fn set_up(device: &str) -> Result<(), Error> {
    let err = |source| Error::SetLinkUp {
        device: device.to_string(),
        source,
    };
    let sock = control_socket(libc::AF_INET).map_err(err)?;
    let mut req = ifreq_named(device);
    ioctl(&sock, libc::SIOCGIFFLAGS, &mut req).map_err(err)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(&sock, libc::SIOCSIFFLAGS, &mut req).map_err(err)
}

/// `IFLA_GSO_MAX_SEGS` and `IFLA_GSO_MAX_SIZE` in include/uapi/linux/if_link.h; the libc crate
/// lacks them. `do_setlink` in net/core/rtnetlink.c accepts both on an existing device.
const IFLA_GSO_MAX_SEGS: u16 = 40;
const IFLA_GSO_MAX_SIZE: u16 = 41;

/// Caps how many segments a GSO super-packet for the device may hold (`ip link set DEV
/// gso_max_segs N`). `gso_max_size` bounds bytes only: an inner TCP sender with a small MSS (88
/// bytes is the kernel's floor, `TCP_MIN_MSS`) otherwise hands over super-packets of hundreds of
/// segments. TCP sizes its super-packets from it (`sk_gso_max_segs`, set when a connection is
/// established), and `netif_skb_features` in net/core/dev.c segments in software any other
/// super-packet with more (forwarded GRO packets, UDP GSO sends).
pub fn set_gso_max_segments(device: &str, segments: u32) -> Result<(), Error> {
    let err = |source| Error::SetGsoMaxSegments {
        device: device.to_string(),
        segments,
        source,
    };
    let index = interface_index(device)?;
    let request = setlink_u32_request(index, IFLA_GSO_MAX_SEGS, segments);
    rtnetlink_exchange(&request).map_err(err)
}

/// Caps the size of the GSO super-packets the stack builds for the device (`ip link set DEV
/// gso_max_size N`). New TCP connections size their super-packets from it.
pub fn set_gso_max_size(device: &str, bytes: u32) -> Result<(), Error> {
    let err = |source| Error::SetGsoMaxSize {
        device: device.to_string(),
        bytes,
        source,
    };
    let index = interface_index(device)?;
    let request = setlink_u32_request(index, IFLA_GSO_MAX_SIZE, bytes);
    rtnetlink_exchange(&request).map_err(err)
}

/// An `RTM_NEWLINK` request (asking for an ack) that sets one u32 attribute on interface `index`:
/// nlmsghdr, ifinfomsg, then one rtattr with its value, all in native byte order.
fn setlink_u32_request(index: u32, attribute: u16, value: u32) -> Vec<u8> {
    const LEN: u32 = 16 + 16 + 4 + 4;
    let mut m = Vec::with_capacity(LEN as usize);
    m.extend_from_slice(&LEN.to_ne_bytes());
    m.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.push(libc::AF_UNSPEC as u8); // ifi_family
    m.push(0); // padding
    m.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    m.extend_from_slice(&(index as i32).to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // ifi_flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // ifi_change: change no flags
    m.extend_from_slice(&8u16.to_ne_bytes()); // rta_len
    m.extend_from_slice(&attribute.to_ne_bytes());
    m.extend_from_slice(&value.to_ne_bytes());
    debug_assert_eq!(m.len(), LEN as usize);
    m
}

/// The kernel's verdict in an `NLMSG_ERROR` ack: `Ok` for error 0, the errno otherwise.
fn parse_ack(reply: &[u8]) -> io::Result<()> {
    let field = |at: usize, len: usize| {
        reply
            .get(at..at + len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short netlink reply"))
    };
    let kind = u16::from_ne_bytes(field(4, 2)?.try_into().expect("2 bytes"));
    if kind != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected netlink reply type {kind}"),
        ));
    }
    match i32::from_ne_bytes(field(16, 4)?.try_into().expect("4 bytes")) {
        0 => Ok(()),
        negative_errno => Err(io::Error::from_raw_os_error(
            negative_errno.saturating_neg(),
        )),
    }
}

/// Sends one request to the kernel's rtnetlink and waits for its ack.
fn rtnetlink_exchange(request: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket(2); the result is owned immediately after the check.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    })?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    super::socket::set_option(
        sock.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVTIMEO,
        &timeout,
    )?;
    // An unconnected, unbound netlink socket sends to the kernel.
    // SAFETY: `request` is valid for reads of its length.
    let sent = unsafe { libc::send(sock.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 1024];
    // SAFETY: `reply` is valid for writes of its length.
    let got = unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_ack(&reply[..got as usize])
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; this is how the ifreq API takes it.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Adds addresses; an address the device already has is not an error (restarts are idempotent).
pub fn add_addresses(device: &str, addresses: &[(IpAddr, u8)]) -> Result<(), Error> {
    let mut ipv4_count = 0;
    for &(address, prefix) in addresses {
        let err = |source| Error::AddAddress {
            device: device.to_string(),
            address,
            source,
        };
        let ignore_exists = |r: io::Result<()>| match r {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        };
        match address {
            IpAddr::V4(v4) => {
                let label = if ipv4_count == 0 {
                    device.to_string()
                } else {
                    format!("{device}:{ipv4_count}")
                };
                if label.len() > 15 {
                    return Err(err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "too many IPv4 addresses for this device name's length",
                    )));
                }
                ipv4_count += 1;
                let sock = control_socket(libc::AF_INET).map_err(err)?;
                let mut req = ifreq_named(&label);
                req.ifr_ifru.ifru_addr = sockaddr_in(v4);
                ignore_exists(ioctl(&sock, libc::SIOCSIFADDR, &mut req)).map_err(err)?;
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(prefix))
                };
                let mut req = ifreq_named(&label);
                req.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
                ioctl(&sock, libc::SIOCSIFNETMASK, &mut req).map_err(err)?;
            }
            IpAddr::V6(v6) => {
                let sock = control_socket(libc::AF_INET6).map_err(err)?;
                let mut req = libc::in6_ifreq {
                    ifr6_addr: libc::in6_addr {
                        s6_addr: v6.octets(),
                    },
                    ifr6_prefixlen: u32::from(prefix),
                    ifr6_ifindex: interface_index(device)? as libc::c_int,
                };
                // SAFETY: SIOCSIFADDR on an AF_INET6 socket reads one `struct in6_ifreq`.
                let r = check(unsafe {
                    libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR as _, &mut req)
                });
                ignore_exists(r.map(drop)).map_err(err)?;
            }
        }
    }
    Ok(())
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

    #[test]
    fn setlink_request_has_the_rtnetlink_layout() {
        let m = setlink_u32_request(7, IFLA_GSO_MAX_SIZE, 62080);
        let u16_at = |at: usize| u16::from_ne_bytes(m[at..at + 2].try_into().unwrap());
        let u32_at = |at: usize| u32::from_ne_bytes(m[at..at + 4].try_into().unwrap());
        assert_eq!(u32_at(0) as usize, m.len());
        assert_eq!(u16_at(4), libc::RTM_NEWLINK);
        assert_eq!(
            u16_at(6),
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            "an ack is asked for, and nothing is created"
        );
        assert_eq!(u32_at(20), 7, "ifi_index");
        assert_eq!(u32_at(28), 0, "ifi_change: no flags touched");
        assert_eq!((u16_at(32), u16_at(34)), (8, 41));
        assert_eq!(u32_at(36), 62080);
    }

    #[test]
    fn acks_are_read_as_success_or_errno() {
        let ack = |error: i32| {
            let mut m = vec![0u8; 36];
            m[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
            m[16..20].copy_from_slice(&error.to_ne_bytes());
            m
        };
        assert!(parse_ack(&ack(0)).is_ok());
        let e = parse_ack(&ack(-libc::EINVAL)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        assert!(parse_ack(&ack(0)[..10]).is_err(), "short reply");
        let mut other = ack(0);
        other[4..6].copy_from_slice(&3u16.to_ne_bytes()); // NLMSG_DONE
        assert!(parse_ack(&other).is_err());
    }
}
