//! Opening the TUN device: one fd per queue, `IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE | IFF_VNET_HDR`.
//!
//! drivers/net/tun.c: each `TUNSETIFF` with the same name and `IFF_MULTI_QUEUE` attaches one more
//! queue (at most 256, `MAX_TAP_QUEUES`). The first creates the device unless a persistent one of
//! that name exists; a device created with other flags makes `TUNSETIFF` fail with EINVAL.

use super::{Error, check, ifreq_named};
use crate::wire::{Offloads, vnet};
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};

/// The `TUNSETOFFLOAD` mask for the TUN's part of `offloads`: TSO and USO for both IP versions,
/// and the partial checksums that any of them needs (`TUN_F_CSUM`).
fn tun_offload_mask(offloads: Offloads) -> libc::c_uint {
    let mut mask = 0;
    if offloads.tun_offloads() {
        mask |= libc::TUN_F_CSUM;
    }
    if offloads.tso {
        mask |= libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    }
    if offloads.uso {
        mask |= libc::TUN_F_USO4 | libc::TUN_F_USO6;
    }
    mask
}

/// Opens /dev/net/tun and attaches it to `device` with `flags` (`TUNSETIFF`): a new device, one
/// more queue of a multiqueue one, or an existing persistent device.
fn attach(device: &str, flags: libc::c_int, queue: usize) -> Result<OwnedFd, Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(Error::OpenTun)?;
    let fd = OwnedFd::from(file);
    let mut req = ifreq_named(device);
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) }).map_err(|source| {
        Error::CreateQueue {
            device: device.to_string(),
            queue,
            source,
        }
    })?;
    Ok(fd)
}

/// Opens a classic single-queue TUN without vnet headers (`IFF_TUN | IFF_NO_PI`): what the
/// simpletun-style baseline uses. tunfwd itself never calls this.
pub fn open_plain(device: &str) -> Result<OwnedFd, Error> {
    attach(device, libc::IFF_TUN | libc::IFF_NO_PI, 0)
}

/// Sets the offload mask, asking for `wanted`'s TSO and USO and settling for less: USO needs
/// Linux 6.2, so a kernel that refuses it (EINVAL) gets TSO alone, and one that refuses that gets
/// nothing. The mask belongs to the device and survives on a persistent one, so it is always
/// set, even to nothing. Returns `wanted` with TSO and USO as the TUN took them; UDP GSO and GRO
/// are the sockets' business and pass through as they are.
pub fn negotiate_offloads(device: &str, fd: &OwnedFd, wanted: Offloads) -> Result<Offloads, Error> {
    let without_uso = Offloads {
        uso: false,
        ..wanted
    };
    let mut attempts = vec![wanted];
    if without_uso != wanted {
        attempts.push(without_uso);
    }
    attempts.push(Offloads {
        tso: false,
        uso: false,
        ..wanted
    });
    let mut last = None;
    for attempt in attempts {
        // SAFETY: TUNSETOFFLOAD takes the mask by value.
        match check(unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                tun_offload_mask(attempt) as libc::c_ulong,
            )
        }) {
            Ok(_) => return Ok(attempt),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => {
                return Err(Error::SetOffload {
                    device: device.to_string(),
                    source: e,
                });
            }
        }
    }
    Err(Error::SetOffload {
        device: device.to_string(),
        source: last.expect("at least one attempt"),
    })
}

/// Opens `queues` queues of TUN device `device` and sets the vnet header size on each.
pub fn open_queues(device: &str, queues: usize) -> Result<Vec<OwnedFd>, Error> {
    let mut fds = Vec::with_capacity(queues);
    for queue in 0..queues {
        let fd = attach(
            device,
            libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE | libc::IFF_VNET_HDR,
            queue,
        )?;
        let header_len = vnet::LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) }).map_err(
            |source| Error::SetVnetHeaderSize {
                device: device.to_string(),
                source,
            },
        )?;
        fds.push(fd);
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_asks_for_both_ip_versions_and_the_checksums_they_need() {
        let none = Offloads::default();
        assert_eq!(tun_offload_mask(none), 0);
        let sockets_only = Offloads {
            udp_gso: true,
            udp_gro: true,
            ..none
        };
        assert_eq!(tun_offload_mask(sockets_only), 0, "not the TUN's");
        let tso = Offloads { tso: true, ..none };
        assert_eq!(
            tun_offload_mask(tso),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
        let uso = Offloads { uso: true, ..none };
        assert_eq!(
            tun_offload_mask(uso),
            libc::TUN_F_CSUM | libc::TUN_F_USO4 | libc::TUN_F_USO6
        );
        assert_eq!(
            tun_offload_mask(Offloads {
                tso: true,
                uso: true,
                ..sockets_only
            }),
            tun_offload_mask(tso) | tun_offload_mask(uso)
        );
    }
}
