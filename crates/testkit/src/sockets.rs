//! The plain UDP sockets a test sends from when it plays a stranger, a router or an application
//! that marks its datagrams: no option tunfwd sets on its own sockets, so that what a test sends
//! does not depend on the code under test.

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, SockaddrStorage, sendmsg, socket,
};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

/// A close-on-exec UDP socket of `peer`'s family (an IPv4-mapped IPv6 address counts as IPv4)
/// that sends from any address and from a port the kernel picks at the first send.
pub fn plain_sender(peer: SocketAddr) -> io::Result<OwnedFd> {
    let family = match peer.ip().to_canonical() {
        std::net::IpAddr::V4(_) => AddressFamily::Inet,
        std::net::IpAddr::V6(_) => AddressFamily::Inet6,
    };
    socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(io::Error::from)
}

/// Sends one datagram of `payload` to `to` on `fd` without blocking, with the TOS (IPv4) or
/// traffic class (IPv6) byte `tos` as a control message when it is not 0 (ip(7) `IP_TOS`,
/// ipv6(7) `IPV6_TCLASS`), ECN bits included. Returns the bytes sent.
pub fn send_with_tos(fd: &OwnedFd, to: SocketAddr, payload: &[u8], tos: u8) -> io::Result<usize> {
    let to = SocketAddr::new(to.ip().to_canonical(), to.port());
    let address = SockaddrStorage::from(to);
    let traffic_class = i32::from(tos);
    let control = match (tos, to) {
        (0, _) => None,
        (_, SocketAddr::V4(_)) => Some(ControlMessage::Ipv4Tos(&tos)),
        (_, SocketAddr::V6(_)) => Some(ControlMessage::Ipv6TClass(&traffic_class)),
    };
    sendmsg(
        fd.as_raw_fd(),
        &[IoSlice::new(payload)],
        control.as_slice(),
        MsgFlags::MSG_DONTWAIT,
        Some(&address),
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    #[test]
    fn a_datagram_sent_with_a_tos_arrives_on_loopback() {
        for (listen, tos) in [("127.0.0.1:0", 0u8), ("127.0.0.1:0", 0xb8), ("[::1]:0", 2)] {
            let receiver = UdpSocket::bind(listen).unwrap();
            receiver
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let to = receiver.local_addr().unwrap();
            let sender = plain_sender(to).unwrap();
            assert_eq!(send_with_tos(&sender, to, b"marked", tos).unwrap(), 6);
            let mut got = [0u8; 16];
            let (n, from) = receiver.recv_from(&mut got).unwrap();
            assert_eq!(&got[..n], b"marked");
            assert_ne!(from.port(), 0, "sent from a port the kernel picked");
        }
    }
}
