//! The error queue of the relay's sockets (`MSG_ERRQUEUE`, ip(7) `IP_RECVERR`): ICMP errors about
//! the peer, and the local "message too long" errors of sends over the egress device's MTU.
//!
//! What it owns: the `recvmsg` calls that read a socket's data or error queue with a control
//! area. What each queued error says is `wire::cmsg::parse_queued_error`'s to decode (pure); what
//! the relay makes of the counts is `relay`'s. The sockets themselves are `sys::socket`'s, which
//! re-exports these functions under its own path.

use crate::wire::cmsg::{self, QueuedErrors};
use std::io;
use std::os::fd::RawFd;

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
pub fn drain_error_queue(fd: RawFd) -> QueuedErrors {
    let mut found = QueuedErrors::default();
    let mut data = [0u8; 64];
    let mut control = [0u8; 256];
    for _ in 0..ERROR_QUEUE_BATCH {
        let Ok((_, control_len)) = recvmsg_with_control(
            fd,
            &mut data,
            &mut control,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        ) else {
            break;
        };
        found.count += 1;
        found.add(&cmsg::parse_queued_error(
            &control[..control_len.min(control.len())],
        ));
    }
    found
}

/// One `recvmsg` into `data` with a control area; returns the bytes received and the length of
/// the control data the kernel filled in.
pub fn recvmsg_with_control(
    fd: RawFd,
    data: &mut [u8],
    control: &mut [u8],
    flags: libc::c_int,
) -> io::Result<(usize, usize)> {
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
    // SAFETY: `msg` points at `data` and `control`, live for the call, with their lengths.
    let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok((n as usize, msg.msg_controllen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::socket::{SOCKET_BUFFER_BYTES, local_address, udp_socket};
    use std::os::fd::AsRawFd;

    /// A datagram to a closed port on loopback comes back as an ICMP port unreachable on the
    /// error queue (`IP_RECVERR`), counted as from ICMP and reporting no path MTU.
    #[test]
    fn the_error_queue_counts_icmp_errors() {
        let closed =
            udp_socket("127.0.0.1:0".parse().unwrap(), SOCKET_BUFFER_BYTES as usize).unwrap();
        let to = local_address(&closed).unwrap();
        drop(closed);
        let sender =
            udp_socket("127.0.0.1:0".parse().unwrap(), SOCKET_BUFFER_BYTES as usize).unwrap();
        tunfwd_testkit::sockets::send_with_tos(&sender, to, b"anyone?", 0).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut found = QueuedErrors::default();
        while found.count == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            found = drain_error_queue(sender.as_raw_fd());
        }
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
            }
        );
        assert_eq!(found.icmp_count(), 1);
    }
}
