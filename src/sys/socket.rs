//! Creating and configuring the relay's UDP sockets: one per worker, `SO_REUSEPORT` on the shared
//! listen address, MiB-sized buffers, `IP_RECVERR` so ICMP errors about the peer are reported (an
//! unconnected socket ignores them otherwise), DF on every datagram without obeying the route's
//! path MTU (`IP_PMTUDISC_PROBE`: the relay confirms path MTU hints itself, `relay::plpmtud`), and
//! the reuseport steering program (see `steer`). Also the socket that lets the outer IP layer
//! fragment, for the few inner packets that need it.
//!
//! Sockets are made, bound and read back through `socket2`, and so are the options it has
//! (`SO_REUSEPORT`, `SO_RCVBUF`/`SO_SNDBUF`, `IP_RECVTOS`, `IPV6_RECVTCLASS`); the options it
//! lacks are set with setsockopt(2) here (`set_option`): `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`,
//! `IP_MTU_DISCOVER`/`IPV6_MTU_DISCOVER` values, `IP_RECVERR`/`IPV6_RECVERR`, `UDP_GRO`, the
//! `UDP_SEGMENT` probe, `SO_ATTACH_REUSEPORT_CBPF` and `SO_MEMINFO`. Reading the error queue
//! is `sys::errqueue`'s (re-exported here); the control messages themselves are
//! `wire::cmsg`'s, which makes no system call.

use super::Error;
pub use super::errqueue::{drain_error_queue, recvmsg_with_control};
use crate::wire::cmsg;
use socket2::{Domain, SockAddr, SockRef, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

/// Socket buffer size relays use: several MiB, so bursts are absorbed by the kernel, not dropped.
pub const SOCKET_BUFFER_BYTES: libc::c_int = 8 << 20;

fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    set_option(fd, level, name, &value)
}

/// `setsockopt` with `value` as the option's bytes, for the options `socket2` does not have. The
/// kernel copies `size_of::<T>()` bytes from `value` and checks any pointers inside it itself, so
/// no type can make this unsound; the wrong type just gets an error.
fn set_option<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is valid for reads of size_of::<T>() bytes for the duration of the call.
    super::check(unsafe {
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

const _: () = assert!(cmsg::SOCKADDR_MAX_LEN <= size_of::<libc::sockaddr_storage>());

/// A `sockaddr_in`/`sockaddr_in6` for `address`, in storage that outlives any syscall using it
/// (the workers keep the peer's in their ring memory, where `socket2::SockAddr` cannot go). The
/// bytes are [`cmsg::sockaddr_bytes`]'s, the one place that knows their layout.
pub fn to_sockaddr(address: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let (bytes, len) = cmsg::sockaddr_bytes(address);
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // SAFETY: `len` is at most SOCKADDR_MAX_LEN bytes, which fit in the storage (asserted above
    // the function); any bytes are a valid sockaddr_storage, and the two do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len,
        )
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
    let err = |source| Error::Socket {
        address: listen,
        source,
    };
    let socket = reuseport_socket(listen).map_err(err)?;
    let raw = socket.as_raw_fd();
    set_buffers(&socket, buffer_bytes, buffer_bytes).map_err(err)?;
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
    bind(socket, listen)
}

/// Sets how a socket bound to `listen` treats DF and the path MTU: `v4` for IPv4 (and an
/// IPv6 socket's IPv4-mapped peers, reached through the IPv4 code, which reads the IPv4
/// options), `v6` for IPv6. `socket2` has no `IP_MTU_DISCOVER`.
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

/// Binds `socket` to `listen`, and hands it over as a plain fd.
fn bind(socket: Socket, listen: SocketAddr) -> Result<OwnedFd, Error> {
    socket
        .bind(&SockAddr::from(listen))
        .map_err(|source| Error::Bind {
            address: listen,
            source,
        })?;
    Ok(socket.into())
}

/// A close-on-exec UDP socket of `listen`'s family with `SO_REUSEPORT`, not bound yet.
fn reuseport_socket(listen: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(listen), Type::DGRAM, None)?;
    socket.set_reuse_port(true)?;
    Ok(socket)
}

/// Sets the receive and send buffer sizes.
fn set_buffers(socket: &Socket, receive: libc::c_int, send: libc::c_int) -> io::Result<()> {
    // FORCE ignores net.core.[rw]mem_max but needs CAP_NET_ADMIN (socket(7)); fall back to the
    // capped one. `socket2` has only the capped one.
    if set_int(
        socket.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        receive,
    )
    .is_err()
    {
        socket.set_recv_buffer_size(receive as usize)?;
    }
    if set_int(
        socket.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        send,
    )
    .is_err()
    {
        socket.set_send_buffer_size(send as usize)?;
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
    let err = |source| Error::Socket {
        address: listen,
        source,
    };
    let socket = reuseport_socket(listen).map_err(err)?;
    let raw = socket.as_raw_fd();
    let send = libc::c_int::try_from(buffer_bytes).unwrap_or(libc::c_int::MAX);
    // It receives no datagram, but the ICMP errors the kernel hands it are queued against its
    // receive buffer (`sock_queue_err_skb` refuses one that does not fit), so it needs room.
    set_buffers(&socket, FRAGMENTING_RECEIVE_BYTES, send).map_err(err)?;
    set_path_mtu_discovery(
        raw,
        listen,
        libc::IP_PMTUDISC_WANT,
        libc::IPV6_PMTUDISC_WANT,
    )
    .map_err(err)?;
    set_receive_errors(raw, listen).map_err(err)?;
    bind(socket, listen)
}

/// A port of `local`'s address that no socket holds now, for a reuseport group of the relay's
/// own: one the kernel picks. Not a bind of the group's first socket to port 0: with
/// `SO_REUSEPORT` set, the kernel's pick may be a port that sockets of the same user already hold
/// with `SO_REUSEPORT` (`udp_lib_lport_inuse` in net/ipv4/udp.c counts no conflict with them), and
/// the socket then joins their group: the relay's own listen port (whose datagrams from the peer
/// would then go to a send-only socket that drops them), another of its extra ports, or another
/// relay's. A plain socket conflicts with every socket on the port, so the kernel hands it one
/// nobody holds; it is closed on return, and the group binds that port. Another program may take
/// the port in between: the group's bind then fails with EADDRINUSE (the caller picks again).
pub fn free_port(local: SocketAddr) -> Result<u16, Error> {
    plain_bind(with_port(local, 0))
}

/// Binds a plain UDP socket (neither `SO_REUSEADDR` nor `SO_REUSEPORT`) to `address` and
/// closes it: the port it got, or EADDRINUSE while any socket holds `address`'s port there
/// (the relay's own groups, another program's, another user's).
pub fn plain_bind(address: SocketAddr) -> Result<u16, Error> {
    let err = |source| Error::Bind { address, source };
    let socket = Socket::new(Domain::for_address(address), Type::DGRAM, None).map_err(err)?;
    let fd = bind(socket, address)?;
    local_port(&fd).map_err(err)
}

/// `address` with port `port`: its IPv6 flow info and scope id kept (a link-local address
/// needs its scope to bind), which `SocketAddr::new(address.ip(), port)` would drop.
pub fn with_port(address: SocketAddr, port: u16) -> SocketAddr {
    let mut address = address;
    address.set_port(port);
    address
}

/// An extra socket of a worker, for outer flow entropy (`relay::entropy`): bound to `local`
/// (the listen address, and one of the relay's extra ports: one `--srcport` names and the
/// relay claimed, or one [`free_port`] found) with `SO_REUSEPORT`, so that every worker has its
/// own socket on each extra port; to be connected to the peer ([`connect`]; while that fails,
/// with no route to it yet, the worker tries again); with the options of the worker's socket
/// that matter for sending: DF without obeying the route's path MTU (`IP_PMTUDISC_PROBE`),
/// `IP_RECVERR` (the tuple's ICMP errors are queued on one of the group's sockets, which the
/// kernel picks: `__udp4_lib_err` looks up with no datagram, and a connected socket is chosen
/// by its score, not by the reuseport hash; every worker reads its own), the send buffer.
/// Nothing is sent to these ports, and a connected socket takes no datagram from anyone but
/// the peer (`compute_score` in net/ipv4/udp.c); but anyone who can forge the peer's address can
/// send to them, and nothing reads them. So a socket filter drops every datagram before it is
/// queued ([`drop_every_datagram`]): a flood cannot fill the receive buffer, which the queued
/// ICMP errors are charged to as well. The per-send outer TOS and `UDP_SEGMENT` are control
/// messages, as on the worker's socket.
pub fn extra_socket(local: SocketAddr, buffer_bytes: usize) -> Result<OwnedFd, Error> {
    let err = |source| Error::Socket {
        address: local,
        source,
    };
    let socket = reuseport_socket(local).map_err(err)?;
    let raw = socket.as_raw_fd();
    let send = libc::c_int::try_from(buffer_bytes).unwrap_or(libc::c_int::MAX);
    set_buffers(&socket, FRAGMENTING_RECEIVE_BYTES, send).map_err(err)?;
    set_path_mtu_discovery(
        raw,
        local,
        libc::IP_PMTUDISC_PROBE,
        libc::IPV6_PMTUDISC_PROBE,
    )
    .map_err(err)?;
    set_receive_errors(raw, local).map_err(err)?;
    // Before bind: nothing is queued in between.
    drop_every_datagram(raw).map_err(err)?;
    bind(socket, local)
}

/// Attaches a socket filter that keeps no byte of any datagram, so none is queued to `raw`
/// (`SO_ATTACH_FILTER`, socket(7); a classic BPF program's return value is how much of the
/// packet to keep, and 0 drops it: `sk_filter_trim_cap` in net/core/filter.c). The kernel counts
/// those drops as the socket's (`sk_drops`, `UDP_MIB_INERRORS`). ICMP errors are not datagrams
/// the filter sees: `__udp4_lib_err` and `__udp6_lib_err` queue them on the error queue with
/// `ip_icmp_error` / `ipv6_icmp_error`, so `IP_RECVERR` keeps working.
fn drop_every_datagram(raw: RawFd) -> io::Result<()> {
    let program = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr().cast_mut(),
    };
    // `fprog` points at `program`, which outlives the call; the kernel copies it.
    set_option(raw, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
}

/// Whether `fd` is connected (getpeername(2) finds a peer).
pub fn is_connected(fd: &OwnedFd) -> bool {
    SockRef::from(fd).peer_addr().is_ok()
}

/// Dissolves `fd`'s connection (connect(2) to `AF_UNSPEC`, udp(7)): a send on it then fails
/// with EDESTADDRREQ, and nothing goes to the peer it pointed at.
pub fn disconnect(fd: &OwnedFd) -> io::Result<()> {
    let unspec = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as libc::sa_family_t,
        sa_data: [0; 14],
    };
    // SAFETY: `unspec` is a valid sockaddr that outlives the call, and its size is passed.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &unspec,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Connects a UDP socket to `peer` (again, when the peer moved): connect(2).
pub fn connect(fd: &OwnedFd, peer: SocketAddr) -> io::Result<()> {
    let to = match (local_address(fd)?, peer) {
        // An IPv6 socket reaches an IPv4 peer by its mapped address.
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
            SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
        }
        _ => peer,
    };
    SockRef::from(fd).connect(&SockAddr::from(to))
}

/// A socket bound to `listen` in the workers' reuseport group, after them, that only sends:
/// WireGuard mode's control thread sends its handshake messages and keepalives from it (the
/// steering program never picks it, so it receives nothing).
pub fn sending_socket(listen: SocketAddr) -> Result<OwnedFd, Error> {
    let socket = reuseport_socket(listen).map_err(|source| Error::Socket {
        address: listen,
        source,
    })?;
    bind(socket, listen)
}

/// Marks every packet `fd` sends with `mark` (`SO_MARK`, socket(7); 0 is no mark), for policy
/// routing and firewall rules: WireGuard's `fwmark`. Needs `CAP_NET_ADMIN` (or `CAP_NET_RAW`).
pub fn set_mark(fd: &impl AsFd, mark: u32) -> io::Result<()> {
    SockRef::from(fd).set_mark(mark)
}

/// `IP_RECVERR` (and `IPV6_RECVERR` on an IPv6 socket): ICMP errors about the peer are queued
/// for the socket to read, and set its pending error (ip(7), ipv6(7)). `socket2` has neither.
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
    let socket = SockRef::from(fd);
    if listen.is_ipv6() {
        socket.set_recv_tclass_v6(true)?;
    }
    socket.set_recv_tos_v4(true)
}

/// Asks for the time the kernel took each datagram in (`SO_TIMESTAMPNS`, socket(7): an
/// `SCM_TIMESTAMPNS` control message, `CLOCK_REALTIME`), so that the wait in the socket's
/// receive buffer can be told (`relay::queue`).
pub fn enable_receive_timestamps(fd: &OwnedFd) -> io::Result<()> {
    set_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

/// Turns on `UDP_GRO` (receive several datagrams per buffer, Linux 5.0). False if the kernel
/// refuses.
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
    super::check(unsafe {
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

/// The local address and port `fd` is bound to (getsockname(2)). The address keeps its family
/// (no IPv4-mapped folding): the caller decides what to do with it.
pub fn local_address(fd: &OwnedFd) -> io::Result<SocketAddr> {
    SockRef::from(fd)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
}

/// Attaches the steering program to the reuseport group `fd` belongs to
/// (`SO_ATTACH_REUSEPORT_CBPF`, socket(7); `socket2` has only `SO_ATTACH_FILTER`).
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

/// The peer as a plain socket addresses it: an IPv4-mapped address as plain IPv4, so that the
/// socket's family is the family of the outer header.
#[cfg(test)]
pub fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::OuterFamily;
    use crate::wire::cmsg;
    use socket2::MsgHdr;

    /// Sends one datagram gathered from `parts` to `peer` on `fd`, without blocking, with the outer
    /// TOS when it is not 0, written by `cmsg::write_tos_control` as the workers write it. Returns the
    /// bytes sent. The relay sends through its engines.
    fn send_gathered(
        fd: &OwnedFd,
        peer: SocketAddr,
        parts: &[io::IoSlice<'_>],
        tos: u8,
    ) -> io::Result<usize> {
        let to = SockAddr::from(canonical(peer));
        let mut words = [0u64; 3];
        let control = as_bytes_mut(&mut words);
        let control_len = match tos {
            0 => 0,
            tos => cmsg::write_tos_control(control, tos, OuterFamily::of(peer)),
        };
        let mut message = MsgHdr::new().with_addr(&to).with_buffers(parts);
        if control_len > 0 {
            message = message.with_control(&control[..control_len]);
        }
        SockRef::from(fd).sendmsg(&message, libc::MSG_DONTWAIT)
    }

    #[test]
    fn sockaddr_round_trip() {
        for text in ["198.18.0.1:55555", "[2001:2::1]:7", "[::ffff:198.18.0.1]:9"] {
            let address: SocketAddr = text.parse().unwrap();
            let (storage, len) = to_sockaddr(address);
            let expected_len = if address.is_ipv4() {
                size_of::<libc::sockaddr_in>()
            } else {
                size_of::<libc::sockaddr_in6>()
            };
            assert_eq!(len as usize, expected_len, "{text}");
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

    /// A scoped link-local listen address keeps its scope for the extra ports and the ephemeral
    /// listen port, which a bind needs (`SocketAddr::new(ip, port)` dropped it, and the bind
    /// failed with EINVAL).
    #[test]
    fn with_port_keeps_an_ipv6_scope_and_flow_info() {
        let ip: std::net::Ipv6Addr = "fe80::1".parse().unwrap();
        let scoped = SocketAddr::V6(std::net::SocketAddrV6::new(ip, 55555, 7, 3));
        assert_eq!(
            with_port(scoped, 40000),
            SocketAddr::V6(std::net::SocketAddrV6::new(ip, 40000, 7, 3))
        );
        assert_eq!(
            with_port("198.18.0.1:55555".parse().unwrap(), 0),
            "198.18.0.1:0".parse::<SocketAddr>().unwrap()
        );
        // A plain bind finds a port the relay's own reuseport group does not hold.
        let group = udp_socket("127.0.0.1:0".parse().unwrap(), 1 << 16).unwrap();
        let held = local_port(&group).unwrap();
        for _ in 0..64 {
            assert_ne!(free_port("127.0.0.1:0".parse().unwrap()).unwrap(), held);
        }
        assert!(plain_bind(with_port("127.0.0.1:0".parse().unwrap(), held)).is_err());
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
        assert_eq!(drain_error_queue(first.as_raw_fd(), None).count, 0);
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
            let sender = tunfwd_testkit::sockets::plain_sender(to).unwrap();
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
            let sndbuf = SockRef::from(&fragmenting).send_buffer_size().unwrap();
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
            let stranger = tunfwd_testkit::sockets::plain_sender(listen).unwrap();
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
        SockRef::from(fd)
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
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

    /// An extra socket queues nothing anyone sends it, even from the peer's exact address and
    /// port (which a spoofer can forge), yet its error queue still gets the ICMP errors about
    /// its tuple. Loopback: no privileges needed.
    #[test]
    fn an_extra_socket_queues_no_datagram_but_still_gets_its_icmp_errors() {
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer_address = peer.local_addr().unwrap();
        let extra = extra_socket("127.0.0.1:0".parse().unwrap(), 1 << 16).unwrap();
        connect(&extra, peer_address).unwrap();
        let extra_address = local_address(&extra).unwrap();
        // A flood from the one address the connected socket takes datagrams from.
        for _ in 0..200 {
            peer.send_to(&[0x45u8; 500], extra_address).unwrap();
        }
        let mut buffer = [0u8; 600];
        // SAFETY: `buffer` is valid for writes of its length for the duration of the call.
        let received = unsafe {
            libc::recv(
                extra.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
            )
        };
        let error = io::Error::last_os_error();
        assert_eq!(received, -1, "a datagram was queued");
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock, "{error}");
        assert!(
            receive_drops(&extra).unwrap() >= 200,
            "dropped by the filter, counted by the kernel"
        );
        // The peer goes away: a send to its port now draws an ICMP port unreachable, which the
        // error queue holds.
        drop(peer);
        let sent = SockRef::from(&extra).send(&[0u8; 100]);
        assert!(sent.is_ok(), "{sent:?}");
        let mut queued = super::super::errqueue::drain_error_queue(extra.as_raw_fd(), None);
        for _ in 0..100 {
            if queued.count > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            queued = super::super::errqueue::drain_error_queue(extra.as_raw_fd(), None);
        }
        assert_eq!(
            queued.count, 1,
            "the ICMP error on the error queue: {queued:?}"
        );
    }
}
