//! Interface configuration without shelling out to `ip`: MTU, addresses and link state through the
//! classic `SIOC*` ioctls on a throwaway datagram socket.
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
