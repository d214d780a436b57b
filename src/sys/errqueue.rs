//! The error queue of the relay's sockets (`MSG_ERRQUEUE`, ip(7) `IP_RECVERR`): ICMP errors about
//! the peer, and the local "message too long" errors of sends over the egress device's MTU.
//!
//! What it owns: the `recvmsg` calls that read a socket's data or error queue with a control
//! area. What each queued error says is `wire::cmsg::parse_queued_error`'s to decode (pure); what
//! the relay makes of the counts is `relay`'s. The sockets themselves are `sys::socket`'s, which
//! re-exports these functions under its own path.

use crate::wire::cmsg::{self, QueuedErrors};
use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

// `wire::cmsg` is pure and lays control areas out by its own `CMSG_SPACE` arithmetic; libc's
// (the C macro's) must agree for each length it uses.
const _: () = {
    // SAFETY: CMSG_SPACE is arithmetic on its argument; it reads no memory.
    let (two, four) = unsafe { (libc::CMSG_SPACE(2), libc::CMSG_SPACE(4)) };
    assert!(two as usize == cmsg::SEGMENT_CONTROL_LEN && four as usize == cmsg::GRO_CONTROL_LEN);
    assert!(four as usize == cmsg::TOS_CONTROL_LEN && four as usize == cmsg::TOS_SEND_CONTROL_LEN);
};

/// Error-queue entries [`drain_error_queue`] reads in one call.
pub const ERROR_QUEUE_BATCH: usize = 64;

/// Reads and discards queued errors (`MSG_ERRQUEUE`): ICMP errors about the peer, and the
/// local "message too long" errors of sends over the egress device's MTU.
///
/// With `IP_RECVERR` each error is queued and charged to the receive buffer, so the queue must be
/// drained or it would crowd out real datagrams. Called only when an error has been reported: a
/// cold path. At most [`ERROR_QUEUE_BATCH`] entries a call, so that a flood of ICMP errors cannot
/// hold up the worker's loop; what is left keeps the socket's error set, is reported again, and
/// is read on a later call. (Reading an entry sets the socket's pending error to the next one's,
/// `sock_dequeue_err_skb` in net/core/skbuff.c; a send that takes it is sent again.)
///
/// The relay's sockets are not connected, so the kernel queues an ICMP error quoting any
/// datagram from their port, to any address (`__udp4_lib_err` looks the socket up by the
/// quoted 4-tuple). Each entry's name is the quoted datagram's destination (ip(7),
/// `IP_RECVERR`); with `peer` given, an ICMP error about a datagram to another address is
/// counted as [`QueuedErrors::elsewhere`] and says nothing about the path.
pub fn drain_error_queue(fd: RawFd, peer: Option<IpAddr>) -> QueuedErrors {
    let mut found = QueuedErrors::default();
    let mut data = [0u8; 64];
    let mut control = [0u8; 256];
    let mut name = [0u8; cmsg::SOCKADDR_MAX_LEN];
    for _ in 0..ERROR_QUEUE_BATCH {
        let Ok(received) = recvmsg_named(
            fd,
            &mut data,
            &mut control,
            &mut name,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        ) else {
            break;
        };
        found.count += 1;
        found.add(&cmsg::parse_queued_error_about(
            &control[..received.control_len.min(control.len())],
            &name[..received.name_len.min(name.len())],
            peer,
        ));
    }
    found
}

/// What one `recvmsg` filled in.
struct Received {
    control_len: usize,
    name_len: usize,
    bytes: usize,
}

/// One `recvmsg` into `data` with a control area; returns the bytes received and the length of
/// the control data the kernel filled in.
pub fn recvmsg_with_control(
    fd: RawFd,
    data: &mut [u8],
    control: &mut [u8],
    flags: libc::c_int,
) -> io::Result<(usize, usize)> {
    recvmsg_named(fd, data, control, &mut [], flags).map(|r| (r.bytes, r.control_len))
}

/// One `recvmsg` into `data`, with a control area and room for the name.
fn recvmsg_named(
    fd: RawFd,
    data: &mut [u8],
    control: &mut [u8],
    name: &mut [u8],
    flags: libc::c_int,
) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    if !name.is_empty() {
        msg.msg_name = name.as_mut_ptr().cast();
        msg.msg_namelen = name.len() as libc::socklen_t;
    }
    // SAFETY: `msg` points at `data`, `control` and `name` (or no name), live for the call, with
    // their lengths.
    let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(Received {
            bytes: n as usize,
            control_len: msg.msg_controllen,
            name_len: msg.msg_namelen as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::socket::{SOCKET_BUFFER_BYTES, local_address, udp_socket};
    use std::net::SocketAddr;
    use std::os::fd::{AsRawFd, OwnedFd};

    /// A socket and a closed port on loopback: each datagram the socket sends there comes back
    /// as an ICMP port unreachable on its error queue (`IP_RECVERR`).
    fn sender_and_closed_port() -> (OwnedFd, SocketAddr) {
        let closed =
            udp_socket("127.0.0.1:0".parse().unwrap(), SOCKET_BUFFER_BYTES as usize).unwrap();
        let to = local_address(&closed).unwrap();
        drop(closed);
        let sender =
            udp_socket("127.0.0.1:0".parse().unwrap(), SOCKET_BUFFER_BYTES as usize).unwrap();
        (sender, to)
    }

    /// Sends one datagram to `to` and drains the error queue for `peer` until its error came
    /// back (2 s at most).
    fn send_and_drain(sender: &OwnedFd, to: SocketAddr, peer: IpAddr) -> QueuedErrors {
        tunfwd_testkit::sockets::send_with_tos(sender, to, b"anyone?", 0).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut found = QueuedErrors::default();
        while found.count == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            found = drain_error_queue(sender.as_raw_fd(), Some(peer));
        }
        found
    }

    /// The port unreachable is counted as from ICMP, of its kind, reporting no path MTU.
    #[test]
    fn the_error_queue_counts_icmp_errors() {
        let (sender, to) = sender_and_closed_port();
        let found = send_and_drain(&sender, to, to.ip());
        use crate::wire::icmp::IcmpKind;
        let mut icmp = [0; IcmpKind::ALL.len()];
        icmp[IcmpKind::PortUnreachable as usize] = 1;
        assert_eq!(
            found,
            QueuedErrors {
                count: 1,
                icmp,
                icmp_path_mtu: None,
                local_path_mtu: None,
                elsewhere: 0,
            }
        );
        assert_eq!(found.icmp_count(), 1);
    }

    /// The same error, drained for a peer at another address: counted as about somewhere else,
    /// of no kind. Then once more for the right peer, to show the error was really there.
    #[test]
    fn an_icmp_error_about_another_address_than_the_peers_is_set_apart() {
        let (sender, to) = sender_and_closed_port();
        let other = send_and_drain(&sender, to, "127.0.0.9".parse().unwrap());
        assert_eq!(
            (other.count, other.elsewhere, other.icmp_count()),
            (1, 1, 0)
        );
        let peer = send_and_drain(&sender, to, to.ip());
        assert_eq!((peer.count, peer.elsewhere, peer.icmp_count()), (1, 0, 1));
    }
}
