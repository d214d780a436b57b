//! The UDP socket of one worker: `SO_REUSEPORT` on the shared listen address, MiB-sized buffers,
//! `IP_RECVERR` so ICMP errors about the peer are reported (an unconnected socket ignores them
//! otherwise), DF on every datagram without obeying the route's path MTU (`IP_PMTUDISC_PROBE`:
//! the relay confirms path MTU hints itself, `relay::plpmtud`), and the reuseport steering
//! program (see `steer`). Also the control messages the data path reads and writes (`UDP_GRO`,
//! `UDP_SEGMENT`, the TOS / traffic class), the error queue, and the socket that lets the outer
//! IP layer fragment, for the few inner packets that need it.

use super::{Error, check};
use crate::wire::OuterFamily;
use crate::wire::cmsg::{self, QueuedErrors};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Socket buffer size relays use: several MiB, so bursts are absorbed by the kernel, not dropped.
pub const SOCKET_BUFFER_BYTES: libc::c_int = 8 << 20;

fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    set_option(fd, level, name, &value)
}

/// `setsockopt` with `value` as the option's bytes. The kernel copies `size_of::<T>()` bytes from
/// `value` and checks any pointers inside it itself, so no type can make this unsound; the wrong
/// type just gets an error.
pub(crate) fn set_option<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is valid for reads of size_of::<T>() bytes for the duration of the call.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A `sockaddr_in`/`sockaddr_in6` for `address`, in storage that outlives any syscall using it.
pub fn to_sockaddr(address: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match address {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The bytes of `words`: control messages need the 8-byte alignment of a `cmsghdr`
/// (include/linux/socket.h), which `u64` storage gives and a byte array does not.
pub fn as_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u8 has no alignment requirement and every byte pattern is a valid u64 and u8;
    // the slice covers exactly the words' memory, borrowed exclusively for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), size_of_val(words)) }
}

/// Creates one worker's socket, bound to `listen` with `SO_REUSEPORT`, with send and receive
/// buffers of `buffer_bytes` each.
pub fn udp_socket(listen: SocketAddr, buffer_bytes: usize) -> Result<OwnedFd, Error> {
    let buffer_bytes = libc::c_int::try_from(buffer_bytes).unwrap_or(libc::c_int::MAX);
    let family = if listen.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let err = |source| Error::Socket {
        address: listen,
        source,
    };
    let fd = reuseport_socket(family).map_err(err)?;
    let raw = fd.as_raw_fd();
    set_buffers(raw, buffer_bytes, buffer_bytes).map_err(err)?;
    // DF on every datagram, never fragmented, but sent whatever path MTU the route learned:
    // `IP_PMTUDISC_PROBE` (ip(7); `ip_sk_use_pmtu` and `ip6_skb_dst_mtu` then take the device's
    // MTU). The route's path MTU is lowered by any ICMP error that quotes our public 4-tuple,
    // so it is only a hint here (`relay::plpmtud`); the errors still reach the error queue
    // (`IP_RECVERR`), which is where the hints come from. A send over the egress device's own MTU
    // still fails with EMSGSIZE, and that local limit is believed.
    set_path_mtu_discovery(
        raw,
        listen,
        libc::IP_PMTUDISC_PROBE,
        libc::IPV6_PMTUDISC_PROBE,
    )
    .map_err(err)?;
    set_receive_errors(raw, listen).map_err(err)?;
    bind(&fd, listen)?;
    Ok(fd)
}

/// Sets how a socket bound to `listen` treats DF and the path MTU: `v4` for IPv4 (and an
/// IPv6 socket's IPv4-mapped peers, reached through the IPv4 code, which reads the IPv4
/// options), `v6` for IPv6.
fn set_path_mtu_discovery(
    raw: RawFd,
    listen: SocketAddr,
    v4: libc::c_int,
    v6: libc::c_int,
) -> io::Result<()> {
    if listen.is_ipv6() {
        set_int(raw, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, v6)?;
    }
    set_int(raw, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, v4)
}

/// Binds `fd` to `listen`.
fn bind(fd: &OwnedFd, listen: SocketAddr) -> Result<(), Error> {
    let (storage, len) = to_sockaddr(listen);
    // SAFETY: `storage` holds a sockaddr of length `len`.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
    .map(drop)
    .map_err(|source| Error::Bind {
        address: listen,
        source,
    })
}

/// A UDP socket of `family` with `SO_REUSEPORT`, not bound yet.
fn reuseport_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); owned right after the check.
    let raw = check(unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    Ok(fd)
}

/// Sets the receive and send buffer sizes.
fn set_buffers(raw: RawFd, receive: libc::c_int, send: libc::c_int) -> io::Result<()> {
    for (force, plain, bytes) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, receive),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, send),
    ] {
        // FORCE ignores net.core.[rw]mem_max but needs CAP_NET_ADMIN; fall back to the capped one.
        if set_int(raw, libc::SOL_SOCKET, force, bytes).is_err() {
            set_int(raw, libc::SOL_SOCKET, plain, bytes)?;
        }
    }
    Ok(())
}

/// The fragmenting socket's receive buffer: room for a few hundred queued ICMP errors.
const FRAGMENTING_RECEIVE_BYTES: libc::c_int = 256 << 10;

/// A socket whose datagrams the outer IP layer may fragment (`IP_PMTUDISC_WANT`: DF only on
/// datagrams that fit the path, ip(7)), for the inner packets that must cross a path too small
/// for them whole (`offload::icmp::TooBig::Fragment`); the worker sends on it through its ring.
///
/// It sends from the relay's own address and port, so that the peer, which accepts datagrams
/// from exactly its peer's address and port, takes them: it joins the workers' reuseport group
/// on `listen`, after all of them (call it once every worker's socket is bound). The steering
/// program returns only the indexes of the workers' sockets, which are the first in the group
/// (`reuseport_add_sock` appends; `run_bpf_filter` in net/core/sock_reuseport.c), so a socket
/// joined later is never picked for a datagram: it never receives one. An ICMP error is another
/// matter: the kernel finds the socket for it with no datagram to run the program on, by the
/// 4-tuple's hash over the whole group (`__udp4_lib_err` looks up with no skb, and
/// `reuseport_select_sock` then picks by hash), so it may land here. This socket therefore has
/// `IP_RECVERR` too, and the worker reads its error queue. Its send buffer is the workers', so a
/// burst of such packets is not refused sooner.
pub fn fragmenting_socket(listen: SocketAddr, buffer_bytes: usize) -> Result<OwnedFd, Error> {
    let family = if listen.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let err = |source| Error::Socket {
        address: listen,
        source,
    };
    let fd = reuseport_socket(family).map_err(err)?;
    let raw = fd.as_raw_fd();
    let send = libc::c_int::try_from(buffer_bytes).unwrap_or(libc::c_int::MAX);
    // It receives no datagram, but the ICMP errors the kernel hands it are queued against its
    // receive buffer (`sock_queue_err_skb` refuses one that does not fit), so it needs room.
    set_buffers(raw, FRAGMENTING_RECEIVE_BYTES, send).map_err(err)?;
    set_path_mtu_discovery(
        raw,
        listen,
        libc::IP_PMTUDISC_WANT,
        libc::IPV6_PMTUDISC_WANT,
    )
    .map_err(err)?;
    set_receive_errors(raw, listen).map_err(err)?;
    bind(&fd, listen)?;
    Ok(fd)
}

/// `IP_RECVERR` (and `IPV6_RECVERR` on an IPv6 socket): ICMP errors about the peer are queued
/// for the socket to read, and set its pending error (ip(7), ipv6(7)).
fn set_receive_errors(raw: RawFd, listen: SocketAddr) -> io::Result<()> {
    if listen.is_ipv6() {
        set_int(raw, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 1)?;
    }
    set_int(raw, libc::IPPROTO_IP, libc::IP_RECVERR, 1)
}

/// Asks for the outer TOS / traffic class of each receive (`IP_RECVTOS`, `IPV6_RECVTCLASS`), for
/// ECN decapsulation. An IPv6 socket asks for both: datagrams from an IPv4-mapped peer carry
/// `IP_TOS` (`udpv6_recvmsg` hands IPv4 datagrams to `ip_cmsg_recv_offset`).
pub fn enable_receive_tos(fd: &OwnedFd, listen: SocketAddr) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    if listen.is_ipv4() {
        set_int(raw, libc::IPPROTO_IP, libc::IP_RECVTOS, 1)
    } else {
        set_int(raw, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1)?;
        set_int(raw, libc::IPPROTO_IP, libc::IP_RECVTOS, 1)
    }
}

/// Turns on `UDP_GRO` (receive several datagrams per buffer). False if the kernel refuses.
pub fn enable_gro(fd: &OwnedFd) -> bool {
    set_int(fd.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1).is_ok()
}

/// How many receive buffers the kernel dropped at `fd` instead of queueing them, since it was
/// created: `SK_MEMINFO_DROPS` of `SO_MEMINFO` (Linux 4.12; include/uapi/linux/sock_diag.h). For a
/// UDP socket that is mostly a full receive buffer (`__udp_queue_rcv_skb` in net/ipv4/udp.c),
/// counted per buffer: under `UDP_GRO` one buffer may hold several datagrams. These packets never
/// reach tunfwd, so only the kernel can count them. The kernel's count is 32 bits (`sk_drops`, an
/// `atomic_t`) and wraps; see [`crate::stats::count_since`].
pub fn receive_drops(fd: &OwnedFd) -> io::Result<u32> {
    let mut meminfo = [0u32; 16];
    let mut len = std::mem::size_of_val(&meminfo) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `meminfo` and stores the length it wrote.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            meminfo.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    let at = libc::SK_MEMINFO_DROPS as usize;
    if (len as usize) < (at + 1) * std::mem::size_of::<u32>() {
        return Err(io::Error::other(
            "SO_MEMINFO has no drop count on this kernel",
        ));
    }
    Ok(meminfo[at])
}

/// Whether the socket accepts `UDP_SEGMENT` (GSO, Linux 4.18), probed by setting it to 0 (no
/// default segmentation: each send says its own segment size). quinn-udp probes the same way.
pub fn supports_gso(fd: &OwnedFd) -> bool {
    set_int(fd.as_raw_fd(), libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok()
}

/// The local port `fd` is bound to.
pub fn local_port(fd: &OwnedFd) -> io::Result<u16> {
    local_address(fd).map(|address| address.port())
}

/// The local address and port `fd` is bound to (getsockname(2)).
pub fn local_address(fd: &OwnedFd) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data; getsockname writes at most `len` bytes into it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: as above.
    check(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    })?;
    let filled = (len as usize).min(size_of::<libc::sockaddr_storage>());
    // SAFETY: reading the bytes getsockname initialised, within the local struct.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&storage as *const libc::sockaddr_storage).cast::<u8>(),
            filled,
        )
    };
    // Both sockaddr_in and sockaddr_in6 keep the port, big-endian, at bytes 2..4. The address
    // keeps its family here (no IPv4-mapped folding): the caller decides what to do with it.
    let port = u16::from_be_bytes([bytes[2], bytes[3]]);
    let ip = match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if filled >= 8 => IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(&bytes[4..8]).expect("4 bytes"),
        )),
        libc::AF_INET6 if filled >= 24 => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&bytes[8..24]).expect("16 bytes"),
        )),
        _ => return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Attaches the steering program to the reuseport group `fd` belongs to.
pub fn attach_reuseport_program(fd: &OwnedFd, program: &[libc::sock_filter]) -> Result<(), Error> {
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr().cast_mut(),
    };
    // `fprog` points at `program`, which outlives the call; the kernel copies it.
    set_option(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_ATTACH_REUSEPORT_CBPF,
        &fprog,
    )
    .map_err(Error::ReusePortProgram)
}

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

/// The peer as the path MTU helpers address it: an IPv4-mapped address as plain IPv4, so that
/// their socket family is the family of the outer header.
pub fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

/// A plain UDP socket of the peer's canonical family, not bound: the kernel picks a port at the
/// first connect or send.
fn helper_socket(peer: SocketAddr) -> io::Result<OwnedFd> {
    let family = match OuterFamily::of(peer) {
        OuterFamily::Ipv4 => libc::AF_INET,
        OuterFamily::Ipv6 => libc::AF_INET6,
    };
    // SAFETY: plain socket(2); owned right after the check.
    let raw = check(unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A plain UDP socket of `peer`'s canonical family that sends from any address and a port the
/// kernel picks (tests use it as a stranger or a router would).
pub fn plain_sender(peer: SocketAddr) -> io::Result<OwnedFd> {
    helper_socket(peer)
}

/// Sends one datagram gathered from `parts` to `peer` on `fd`,
/// without blocking, with the outer TOS when it is not 0. Returns the bytes sent.
pub fn send_gathered(
    fd: &OwnedFd,
    peer: SocketAddr,
    parts: &[io::IoSlice<'_>],
    tos: u8,
) -> io::Result<usize> {
    let (mut storage, len) = to_sockaddr(canonical(peer));
    let mut control = [0u64; 3];
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = len;
    // IoSlice is ABI-compatible with iovec (std's documented guarantee on Unix); the kernel
    // only reads through it.
    msg.msg_iov = parts.as_ptr().cast_mut().cast();
    msg.msg_iovlen = parts.len();
    if tos != 0 {
        msg.msg_controllen =
            cmsg::write_tos_control(as_bytes_mut(&mut control), tos, OuterFamily::of(peer));
        msg.msg_control = control.as_mut_ptr().cast();
    }
    // SAFETY: `msg` points at `storage`, `parts` and `control`, all live for the call.
    let sent = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
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

    #[test]
    fn sockaddr_round_trip() {
        for text in ["198.18.0.1:55555", "[2001:2::1]:7", "[::ffff:198.18.0.1]:9"] {
            let address: SocketAddr = text.parse().unwrap();
            let (storage, len) = to_sockaddr(address);
            // SAFETY: reading the bytes of a local, initialised struct.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&storage as *const libc::sockaddr_storage).cast::<u8>(),
                    len as usize,
                )
            };
            assert_eq!(
                cmsg::source_address(bytes),
                Some(canonical(address)),
                "{text}"
            );
        }
        assert_eq!(cmsg::source_address(&[0u8; 3]), None);
        assert_eq!(cmsg::source_address(&[0u8; 28]), None, "AF_UNSPEC");
        let v4 = to_sockaddr("198.18.0.1:55555".parse().unwrap());
        // SAFETY: reading the bytes of a local, initialised struct.
        let bytes = unsafe {
            std::slice::from_raw_parts((&v4.0 as *const libc::sockaddr_storage).cast::<u8>(), 7)
        };
        assert_eq!(cmsg::source_address(bytes), None, "cut inside the address");
    }

    #[test]
    fn a_full_receive_buffer_is_counted_as_drops() {
        // Needs no privileges: loopback. The smallest receive buffer the kernel allows (it
        // doubles the request and keeps a floor of a few KB), and no reader.
        let receiver = udp_socket("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let to = local_address(&receiver).unwrap();
        assert_eq!(receive_drops(&receiver).unwrap(), 0, "a fresh socket");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..1000 {
            sender.send_to(&[0u8; 1000], to).unwrap();
        }
        let dropped = receive_drops(&receiver).unwrap();
        assert!(
            dropped > 500 && dropped < 1000,
            "{dropped} of 1000 datagrams dropped at a receive buffer of a few KB"
        );
    }

    #[test]
    fn reuseport_sockets_share_a_port_and_accept_the_program() {
        // Needs no privileges: loopback, an ephemeral port.
        let first =
            udp_socket("127.0.0.1:0".parse().unwrap(), SOCKET_BUFFER_BYTES as usize).unwrap();
        let port = local_port(&first).unwrap();
        assert_ne!(port, 0);
        let second = udp_socket(
            SocketAddr::from(([127, 0, 0, 1], port)),
            SOCKET_BUFFER_BYTES as usize,
        )
        .unwrap();
        attach_reuseport_program(&second, &crate::steer::reuseport_program(2)).unwrap();
        assert_eq!(drain_error_queue(first.as_raw_fd()).count, 0);
    }

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
        send_gathered(&sender, to, &[io::IoSlice::new(b"anyone?")], 0).unwrap();
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
        assert_eq!(found.from_icmp(), 1);
    }

    /// The outer TOS goes out as a control message and comes back as one, over IPv4 and IPv6
    /// loopback (no root): what ECN encapsulation and decapsulation rely on.
    #[test]
    fn tos_is_sent_and_received_per_datagram_on_loopback() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let listen: SocketAddr = local.parse().unwrap();
            let receiver = udp_socket(listen, SOCKET_BUFFER_BYTES as usize).unwrap();
            enable_receive_tos(&receiver, listen).unwrap();
            let to = SocketAddr::new(listen.ip(), local_port(&receiver).unwrap());
            let sender = plain_sender(to).unwrap();
            for tos in [0x02u8, 0x03, 0xb8 | 0x01, 0] {
                let payload = [tos; 40];
                let sent = send_gathered(&sender, to, &[io::IoSlice::new(&payload)], tos).unwrap();
                assert_eq!(sent, payload.len());
                let mut data = [0u8; 64];
                let mut control = [0u8; 64];
                let (n, control_len) =
                    recvmsg_with_control(receiver.as_raw_fd(), &mut data, &mut control, 0).unwrap();
                assert_eq!(n, 40);
                assert_eq!(
                    cmsg::receive_control(&control[..control_len]).tos,
                    Some(tos),
                    "{local} TOS {tos:#x}"
                );
            }
        }
    }

    /// The fragmenting socket sends from the workers' address and port, with DF only where the
    /// path takes the datagram, and never receives: it joined the group after the workers, and
    /// the steering program picks only the workers' sockets.
    #[test]
    fn the_fragmenting_socket_sends_from_the_relays_port_and_never_receives() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let mut listen: SocketAddr = local.parse().unwrap();
            let worker = udp_socket(listen, SOCKET_BUFFER_BYTES as usize).unwrap();
            listen.set_port(local_port(&worker).unwrap());
            let fragmenting = fragmenting_socket(listen, SOCKET_BUFFER_BYTES as usize).unwrap();
            attach_reuseport_program(&worker, &crate::steer::reuseport_program(1)).unwrap();
            assert_eq!(local_address(&fragmenting).unwrap(), listen);
            let mut sndbuf: libc::c_int = 0;
            let mut len = size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: `sndbuf` is valid for writes of `len` bytes for the duration of the call.
            let got = unsafe {
                libc::getsockopt(
                    fragmenting.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&mut sndbuf as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(got, 0);
            // The kernel doubles what it was given (socket(7)); capped by wmem_max without
            // CAP_NET_ADMIN, but never below the default of 212992.
            assert!(sndbuf >= 212_992, "SO_SNDBUF {sndbuf}");
            // What it sends comes from the relay's port.
            let receiver = udp_socket(local.parse().unwrap(), 1 << 20).unwrap();
            let to = local_address(&receiver).unwrap();
            send_gathered(&fragmenting, to, &[io::IoSlice::new(b"from our port")], 0).unwrap();
            let mut data = [0u8; 64];
            let mut name = [0u8; 128];
            let (n, from) = receive_from(&receiver, &mut data, &mut name);
            assert_eq!(n, 13);
            assert_eq!(from, Some(canonical(listen)), "{local}");
            // What arrives at the port goes to the worker, every time.
            let stranger = plain_sender(listen).unwrap();
            for _ in 0..20 {
                send_gathered(&stranger, listen, &[io::IoSlice::new(b"hello")], 0).unwrap();
            }
            for _ in 0..20 {
                assert_eq!(receive_from(&worker, &mut data, &mut name).0, 5);
            }
            let mut nothing = [0u8; 8];
            let r = recvmsg_with_control(
                fragmenting.as_raw_fd(),
                &mut nothing,
                &mut [],
                libc::MSG_DONTWAIT,
            );
            assert_eq!(
                r.map_err(|e| e.raw_os_error()),
                Err(Some(libc::EAGAIN)),
                "{local}"
            );
        }
    }

    /// One blocking receive (at most 2 s): its length and source.
    fn receive_from(fd: &OwnedFd, data: &mut [u8], name: &mut [u8]) -> (usize, Option<SocketAddr>) {
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        set_option(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout,
        )
        .unwrap();
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = name.as_mut_ptr().cast();
        msg.msg_namelen = name.len() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // SAFETY: `msg` points at `name`, `iov` and `data`, all live for the call.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
        assert!(n >= 0, "{}", io::Error::last_os_error());
        (
            n as usize,
            cmsg::source_address(&name[..msg.msg_namelen as usize]),
        )
    }

    /// Socket-level GSO in, GRO out, on loopback (no root): one sendmsg with `UDP_SEGMENT`
    /// carrying 10 datagrams arrives as one buffer whose `UDP_GRO` stride cuts it back into them.
    #[test]
    fn gso_send_arrives_as_gro_segments_on_loopback() {
        let receiver =
            udp_socket("127.0.0.1:0".parse().unwrap(), SOCKET_BUFFER_BYTES as usize).unwrap();
        assert!(enable_gro(&receiver));
        enable_receive_tos(&receiver, "127.0.0.1:0".parse().unwrap()).unwrap();
        let port = local_port(&receiver).unwrap();
        let sender =
            udp_socket("127.0.0.1:0".parse().unwrap(), SOCKET_BUFFER_BYTES as usize).unwrap();
        assert!(supports_gso(&sender));
        let segment = 1000usize;
        let payload: Vec<u8> = (0..segment * 9 + 300)
            .map(|i| (i / segment) as u8)
            .collect();
        let (dest, dest_len) = to_sockaddr(SocketAddr::from(([127, 0, 0, 1], port)));
        let mut control = [0u64; cmsg::SEND_CONTROL_LEN / 8];
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr().cast_mut().cast(),
            iov_len: payload.len(),
        };
        // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&dest as *const libc::sockaddr_storage).cast_mut().cast();
        msg.msg_namelen = dest_len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // ECT(0) on every datagram of the send, and the receive reports it once for the buffer.
        msg.msg_controllen = cmsg::write_send_control(
            as_bytes_mut(&mut control),
            Some(segment as u16),
            0x02,
            OuterFamily::Ipv4,
        );
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: `msg` is fully initialised and its buffers are live.
        let sent = unsafe { libc::sendmsg(sender.as_raw_fd(), &msg, 0) };
        assert_eq!(
            sent,
            payload.len() as isize,
            "{}",
            io::Error::last_os_error()
        );

        let mut buffer = vec![0u8; 65536];
        let mut control_in = [0u8; 64];
        let (received, control_len) =
            recvmsg_with_control(receiver.as_raw_fd(), &mut buffer, &mut control_in, 0).unwrap();
        assert_eq!(received, payload.len(), "all 10 datagrams in one receive");
        let received_control = cmsg::receive_control(&control_in[..control_len]);
        let stride = received_control
            .gro_segment_size
            .expect("a UDP_GRO control message");
        assert_eq!(stride, segment);
        assert_eq!(received_control.tos, Some(0x02), "the TOS of the GSO send");
        let pieces: Vec<&[u8]> = buffer[..received].chunks(stride).collect();
        assert_eq!(pieces.len(), 10);
        for (i, piece) in pieces.iter().enumerate() {
            assert!(piece.iter().all(|b| *b == i as u8), "segment {i} intact");
        }
        assert_eq!(pieces[9].len(), 300, "the short tail stays last");
    }
}
