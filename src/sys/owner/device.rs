//! What rtnetlink says of the device name, in this thread's network namespace: absent, not a
//! TUN, or a TUN with whether it is persistent and how many queues are attached (drivers/net/tun.c
//! `tun_fill_info`: `IFLA_TUN_PERSIST`, `IFLA_TUN_NUM_QUEUES`). Netlink rather than
//! /sys/class/net: sysfs shows the namespace of whoever mounted it, which is not this one after a
//! bare setns(2), and tun_flags does not say whether queues are attached. The request and its
//! answer go through `sys::netlink` (sequence number and port id checked); reading the answer is
//! PURE.

use super::procfs::processes_with_tun;
use super::{Busy, Conflict, Look, Remains};
use crate::sys::Error;
use crate::sys::netlink::{self, Message};
use std::io;

/// `IFLA_TUN_*` in include/uapi/linux/if_link.h; the libc crate lacks them.
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PERSIST: u16 = 6;
const IFLA_TUN_NUM_QUEUES: u16 = 8;
const IFLA_TUN_NUM_DISABLED_QUEUES: u16 = 9;

/// Asks the kernel about the device; if it is a TUN with queues attached, finds who holds them.
pub(super) fn look_at_device(device: &str) -> Result<Look<()>, Error> {
    let link = query_link(device).map_err(|source| Error::QueryDevice {
        device: device.to_string(),
        source,
    })?;
    let queues = match link {
        // Not there: TUNSETIFF will create it. Not a TUN: TUNSETIFF will refuse it, with its own
        // message (`Error::CreateQueue`).
        Link::Absent | Link::Other => return Ok(Look::Free(())),
        // Persistent with nothing attached: free to attach to.
        Link::Tun {
            persistent: true,
            queues: Some(0),
        } => return Ok(Look::Free(())),
        Link::Tun { queues, .. } => queues,
    };
    let holders = processes_with_tun(device);
    if holders.is_empty()
        && matches!(
            link,
            Link::Tun {
                persistent: true,
                queues: None
            }
        )
    {
        // A persistent single-queue device says nothing of its queues; with no holder it is free.
        return Ok(Look::Free(()));
    }
    Ok(Look::Busy(Busy {
        holders,
        remains: Remains::Queues { queues },
        conflict: Conflict::Device {
            device: device.to_string(),
        },
    }))
}

/// What the kernel says of a device name in this thread's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No device of that name.
    Absent,
    /// A device that is not a TUN (a TAP included).
    Other,
    /// A TUN device, and the queues attached to it (enabled and disabled), which the kernel gives
    /// for a multiqueue device only.
    Tun {
        persistent: bool,
        queues: Option<u32>,
    },
}

/// Asks rtnetlink about `device` (`RTM_GETLINK` by name). The netlink socket belongs to the
/// calling thread's network namespace, which is the one the device name is looked up in.
fn query_link(device: &str) -> io::Result<Link> {
    link_from_answer(netlink::exchange(
        netlink::link_by_name_request(device),
        false,
    ))
}

/// What the kernel's answer to an `RTM_GETLINK` by name says: `RTM_NEWLINK` for a device
/// (net/core/rtnetlink.c `rtnl_fill_ifinfo`, whose `IFLA_LINKINFO` holds the kind and, for a
/// TUN, drivers/net/tun.c `tun_fill_info`'s attributes), or ENODEV for no such device. PURE.
fn link_from_answer(answer: io::Result<Vec<Message>>) -> io::Result<Link> {
    let messages = match answer {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(Link::Absent),
        other => other?,
    };
    let message = messages.first().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "netlink acknowledged RTM_GETLINK without an answer",
        )
    })?;
    if message.kind != libc::RTM_NEWLINK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected netlink reply type {}", message.kind),
        ));
    }
    let attributes = message
        .payload
        .get(netlink::IFINFOMSG_LEN..)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short netlink reply"))?;
    let Some(info) = netlink::attribute(attributes, libc::IFLA_LINKINFO) else {
        return Ok(Link::Other);
    };
    if netlink::attribute(info, libc::IFLA_INFO_KIND) != Some(b"tun\0") {
        return Ok(Link::Other);
    }
    let data = netlink::attribute(info, libc::IFLA_INFO_DATA).unwrap_or(&[]);
    let byte = |kind| netlink::attribute(data, kind).and_then(|p| p.first().copied());
    let word = |kind| netlink::attribute(data, kind).and_then(netlink::u32_of);
    // IFLA_TUN_TYPE is `tun->flags & TUN_TYPE_MASK`: IFF_TUN or IFF_TAP.
    if byte(IFLA_TUN_TYPE) != Some(libc::IFF_TUN as u8) {
        return Ok(Link::Other);
    }
    Ok(Link::Tun {
        persistent: byte(IFLA_TUN_PERSIST).is_some_and(|p| p != 0),
        queues: word(IFLA_TUN_NUM_QUEUES)
            .map(|enabled| enabled + word(IFLA_TUN_NUM_DISABLED_QUEUES).unwrap_or(0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's answer as `netlink::exchange` reads it (sequence 0, port 0), then as
    /// [`query_link`] reads that.
    fn parse_getlink_reply(reply: &[u8]) -> io::Result<Link> {
        let mut found = Vec::new();
        let parsed = netlink::parse_answers(reply, 0, 0, false, &mut found);
        link_from_answer(parsed.map(|_| found))
    }

    /// Builds a netlink attribute: header, payload, padding.
    fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    /// An RTM_NEWLINK message carrying `attributes` after the ifinfomsg.
    fn newlink(attributes: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = attributes.concat();
        let len = 32 + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[0; 16]);
        m.extend_from_slice(&body);
        m
    }

    fn tun_info(kind: &[u8], data: &[Vec<u8>]) -> Vec<u8> {
        // The kernel nests with nla_nest_start_noflag; a flagged nest must parse the same.
        let mut info = nla(libc::IFLA_INFO_KIND, kind);
        info.extend(nla(libc::IFLA_INFO_DATA | 1 << 15, &data.concat()));
        nla(libc::IFLA_LINKINFO, &info)
    }

    #[test]
    fn getlink_replies_say_absent_other_or_tun_with_its_queues() {
        let error = |errno: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
            m.extend_from_slice(&[0; 10]);
            m.extend_from_slice(&(-errno).to_ne_bytes());
            m.extend_from_slice(&[0; 16]);
            m
        };
        let name = nla(libc::IFLA_IFNAME, b"tunfwd0\0");
        let tun = |persist: u8, queues: Option<(u32, u32)>| {
            let mut data = vec![
                nla(IFLA_TUN_TYPE, &[libc::IFF_TUN as u8]),
                nla(IFLA_TUN_PERSIST, &[persist]),
            ];
            if let Some((enabled, disabled)) = queues {
                data.push(nla(IFLA_TUN_NUM_QUEUES, &enabled.to_ne_bytes()));
                data.push(nla(IFLA_TUN_NUM_DISABLED_QUEUES, &disabled.to_ne_bytes()));
            }
            newlink(&[name.clone(), tun_info(b"tun\0", &data)])
        };
        let tap = newlink(&[tun_info(
            b"tun\0",
            &[nla(IFLA_TUN_TYPE, &[libc::IFF_TAP as u8])],
        )]);
        let veth = newlink(&[name.clone(), tun_info(b"veth\0", &[])]);
        let cases: Vec<(Vec<u8>, Result<Link, i32>)> = vec![
            (error(libc::ENODEV), Ok(Link::Absent)),
            (error(libc::EPERM), Err(libc::EPERM)),
            (newlink(std::slice::from_ref(&name)), Ok(Link::Other)),
            (veth, Ok(Link::Other)),
            (tap, Ok(Link::Other)),
            (
                tun(0, Some((4, 0))),
                Ok(Link::Tun {
                    persistent: false,
                    queues: Some(4),
                }),
            ),
            (
                tun(1, Some((0, 0))),
                Ok(Link::Tun {
                    persistent: true,
                    queues: Some(0),
                }),
            ),
            (
                tun(1, Some((2, 1))),
                Ok(Link::Tun {
                    persistent: true,
                    queues: Some(3),
                }),
            ),
            (
                tun(1, None),
                Ok(Link::Tun {
                    persistent: true,
                    queues: None,
                }),
            ),
        ];
        for (reply, want) in cases {
            let got = parse_getlink_reply(&reply).map_err(|e| e.raw_os_error().unwrap_or(-1));
            assert_eq!(got, want, "{reply:?}");
        }
        for short in [&[][..], &[40, 0, 0, 0, 16, 0], &tun(0, None)[..20]] {
            assert!(parse_getlink_reply(short).is_err(), "{short:?}");
        }
        // A truncated attribute ends the walk instead of reading past it.
        let mut cut = nla(libc::IFLA_LINKINFO, &[1, 2, 3, 4]);
        cut[0] = 200;
        assert_eq!(netlink::attributes(&cut).count(), 0);
    }

    #[test]
    fn getlink_requests_name_the_device_padded() {
        let request = netlink::link_by_name_request("tunfwd0").finish(1);
        assert_eq!(request.len(), 16 + 16 + 12);
        assert_eq!(u32::from_ne_bytes(request[0..4].try_into().unwrap()), 44);
        assert_eq!(
            u16::from_ne_bytes(request[4..6].try_into().unwrap()),
            libc::RTM_GETLINK
        );
        assert_eq!(
            netlink::attribute(&request[32..], libc::IFLA_IFNAME),
            Some(&b"tunfwd0\0"[..])
        );
    }

    #[test]
    fn the_kernel_answers_getlink_for_loopback_and_a_missing_name() {
        // RTM_GETLINK needs no privilege.
        assert_eq!(query_link("lo").unwrap(), Link::Other);
        let missing = format!("tfd{}", std::process::id() % 100_000);
        assert_eq!(query_link(&missing).unwrap(), Link::Absent);
    }
}
