//! The UDP socket of one worker: `SO_REUSEPORT` on the shared listen address, MiB-sized buffers,
//! `IP_RECVERR` so ICMP errors about the peer are reported (an unconnected socket ignores them
//! otherwise), and the reuseport steering program (see `steer`).

use super::{Error, check};
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

/// The IP address in raw `sockaddr_in`/`sockaddr_in6` bytes (as io_uring's recvmsg returns them).
/// IPv4-mapped IPv6 addresses come back as IPv4, so they compare equal to the peer's address.
pub fn source_ip(name: &[u8]) -> Option<IpAddr> {
    let family = libc::c_int::from(u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?));
    match family {
        libc::AF_INET => {
            let octets: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        libc::AF_INET6 => {
            let octets: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(octets)).to_canonical())
        }
        _ => None,
    }
}

/// Room for one `UDP_GRO` control message: `CMSG_SPACE(sizeof(int))` on 64-bit Linux.
pub const GRO_CONTROL_LEN: usize = 24;

/// Reads the `UDP_GRO` segment size from a recvmsg control area, if there is one.
///
/// Walks the messages as the kernel's `CMSG_NXTHDR` does (include/linux/socket.h) and trusts a
/// message only if it is `CMSG_OK`: its `cmsg_len` covers at least the header and lies within the
/// area. When the area was too small the kernel cuts the last message and shortens its
/// `cmsg_len` (`put_cmsg` in net/core/scm.c, which also sets `MSG_CTRUNC`), so a `UDP_GRO` whose
/// `cmsg_len` cannot hold its `int` is cut, and the bytes after it are not the size.
pub fn gro_segment_size(control: &[u8]) -> Option<usize> {
    let header = size_of::<libc::cmsghdr>();
    let mut at = 0;
    while control.len() - at >= header {
        let left = control.len() - at;
        let len = usize::from_ne_bytes(control[at..at + 8].try_into().ok()?);
        let level = i32::from_ne_bytes(control[at + 8..at + 12].try_into().ok()?);
        let kind = i32::from_ne_bytes(control[at + 12..at + 16].try_into().ok()?);
        if len < header || len > left {
            return None;
        }
        if level == libc::SOL_UDP && kind == libc::UDP_GRO {
            if len < header + 4 {
                return None;
            }
            let size = i32::from_ne_bytes(control[at + header..at + header + 4].try_into().ok()?);
            return usize::try_from(size).ok().filter(|s| *s > 0);
        }
        // CMSG_ALIGN to sizeof(long); no overflow, since len <= left.
        let step = len.div_ceil(8) * 8;
        if step >= left {
            return None;
        }
        at += step;
    }
    None
}

/// Fills a control buffer with one `UDP_SEGMENT` message and returns its length.
pub fn write_segment_control(control: &mut [u64; 3], segment_size: u16) -> usize {
    let bytes: &mut [u8; 24] = bytemuck_u64x3(control);
    let len = size_of::<libc::cmsghdr>() + 2;
    bytes[0..8].copy_from_slice(&len.to_ne_bytes());
    bytes[8..12].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    bytes[12..16].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
    bytes[16..18].copy_from_slice(&segment_size.to_ne_bytes());
    24 // CMSG_SPACE(sizeof(u16))
}

fn bytemuck_u64x3(words: &mut [u64; 3]) -> &mut [u8; 24] {
    // SAFETY: [u64; 3] and [u8; 24] have the same size, and u8 has no alignment requirement.
    unsafe { &mut *(words as *mut [u64; 3]).cast::<[u8; 24]>() }
}

/// Creates one worker's socket, bound to `listen` with `SO_REUSEPORT`.
pub fn udp_socket(listen: SocketAddr) -> Result<OwnedFd, Error> {
    let family = if listen.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let err = |source| Error::Socket {
        address: listen,
        source,
    };
    // SAFETY: plain socket(2); owned right after the check.
    let raw = check(unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
        .map_err(err)?;
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let raw = fd.as_raw_fd();
    set_int(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).map_err(err)?;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // FORCE ignores net.core.[rw]mem_max but needs CAP_NET_ADMIN; fall back to the capped one.
        if set_int(raw, libc::SOL_SOCKET, force, SOCKET_BUFFER_BYTES).is_err() {
            set_int(raw, libc::SOL_SOCKET, plain, SOCKET_BUFFER_BYTES).map_err(err)?;
        }
    }
    if listen.is_ipv4() {
        set_int(raw, libc::IPPROTO_IP, libc::IP_RECVERR, 1).map_err(err)?;
    } else {
        set_int(raw, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 1).map_err(err)?;
    }
    let (storage, len) = to_sockaddr(listen);
    // SAFETY: `storage` holds a sockaddr of length `len`.
    check(unsafe { libc::bind(raw, (&storage as *const libc::sockaddr_storage).cast(), len) })
        .map_err(|source| Error::Bind {
            address: listen,
            source,
        })?;
    Ok(fd)
}

/// Turns on `UDP_GRO` (receive several datagrams per buffer). False if the kernel refuses.
pub fn enable_gro(fd: &OwnedFd) -> bool {
    set_int(fd.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1).is_ok()
}

/// Whether the socket accepts `UDP_SEGMENT` (GSO, Linux 4.18), probed by setting it to 0 (no
/// default segmentation: each send says its own segment size). quinn-udp probes the same way.
pub fn supports_gso(fd: &OwnedFd) -> bool {
    set_int(fd.as_raw_fd(), libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok()
}

/// The local port `fd` is bound to.
pub fn local_port(fd: &OwnedFd) -> io::Result<u16> {
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
    // Both sockaddr_in and sockaddr_in6 keep the port, big-endian, at bytes 2..4.
    // SAFETY: reading the initialised bytes of a local struct.
    let bytes = unsafe {
        std::slice::from_raw_parts((&storage as *const libc::sockaddr_storage).cast::<u8>(), 4)
    };
    Ok(u16::from_be_bytes([bytes[2], bytes[3]]))
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

/// Reads and discards queued ICMP errors (`MSG_ERRQUEUE`), returning how many there were.
///
/// With `IP_RECVERR` each error is queued and charged to the receive buffer, so the queue must be
/// drained or it would crowd out real datagrams. Called only when an error has been reported: a
/// cold path, bounded to the queue's length at the time.
pub fn drain_error_queue(fd: RawFd) -> u64 {
    let mut drained = 0;
    let mut data = [0u8; 64];
    let mut control = [0u8; 256];
    for _ in 0..4096 {
        if recvmsg_with_control(
            fd,
            &mut data,
            &mut control,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        )
        .is_err()
        {
            break;
        }
        drained += 1;
    }
    drained
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
                source_ip(bytes),
                Some(address.ip().to_canonical()),
                "{text}"
            );
        }
        assert_eq!(source_ip(&[0u8; 3]), None);
        assert_eq!(source_ip(&[0u8; 28]), None, "AF_UNSPEC");
    }

    #[test]
    fn reuseport_sockets_share_a_port_and_accept_the_program() {
        // Needs no privileges: loopback, an ephemeral port.
        let first = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = local_port(&first).unwrap();
        assert_ne!(port, 0);
        let second = udp_socket(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        attach_reuseport_program(&second, &crate::steer::reuseport_program(2)).unwrap();
        assert_eq!(drain_error_queue(first.as_raw_fd()), 0);
    }

    #[test]
    fn gro_control_message_is_found() {
        let mut control = [0u8; GRO_CONTROL_LEN];
        control[0..8].copy_from_slice(&20usize.to_ne_bytes());
        control[8..12].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
        control[12..16].copy_from_slice(&libc::UDP_GRO.to_ne_bytes());
        control[16..20].copy_from_slice(&1420i32.to_ne_bytes());
        assert_eq!(gro_segment_size(&control), Some(1420));
        control[12..16].copy_from_slice(&99i32.to_ne_bytes());
        assert_eq!(gro_segment_size(&control), None);
        assert_eq!(gro_segment_size(&[]), None);
        control[0..8].copy_from_slice(&0usize.to_ne_bytes());
        assert_eq!(
            gro_segment_size(&control),
            None,
            "a zero cmsg_len must not loop"
        );
    }

    #[test]
    fn a_cut_gro_message_is_not_read() {
        // The fuzzer's finding: cmsg_len 17 says the message was cut after one byte of its int
        // (what put_cmsg does when the area is too small); the bytes after it are not the size.
        let mut control = [0u8; GRO_CONTROL_LEN];
        control[0..8].copy_from_slice(&17usize.to_ne_bytes());
        control[8..12].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
        control[12..16].copy_from_slice(&libc::UDP_GRO.to_ne_bytes());
        control[16..20].copy_from_slice(&1420i32.to_ne_bytes());
        assert_eq!(gro_segment_size(&control), None);
        // A cmsg_len past the area is not CMSG_OK either.
        control[0..8].copy_from_slice(&25usize.to_ne_bytes());
        assert_eq!(gro_segment_size(&control), None);
        control[0..8].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(gro_segment_size(&control), None);
        control[0..8].copy_from_slice(&20usize.to_ne_bytes());
        assert_eq!(gro_segment_size(&control), Some(1420));
    }

    #[test]
    fn segment_control_message_layout() {
        let mut words = [0u64; 3];
        assert_eq!(write_segment_control(&mut words, 1400), 24);
        let bytes = bytemuck_u64x3(&mut words);
        assert_eq!(usize::from_ne_bytes(bytes[0..8].try_into().unwrap()), 18);
        assert_eq!(
            i32::from_ne_bytes(bytes[12..16].try_into().unwrap()),
            libc::UDP_SEGMENT
        );
        assert_eq!(u16::from_ne_bytes(bytes[16..18].try_into().unwrap()), 1400);
    }

    /// Socket-level GSO in, GRO out, on loopback (no root): one sendmsg with `UDP_SEGMENT`
    /// carrying 10 datagrams arrives as one buffer whose `UDP_GRO` stride cuts it back into them.
    #[test]
    fn gso_send_arrives_as_gro_segments_on_loopback() {
        let receiver = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(enable_gro(&receiver));
        let port = local_port(&receiver).unwrap();
        let sender = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(supports_gso(&sender));
        let segment = 1000usize;
        let payload: Vec<u8> = (0..segment * 9 + 300)
            .map(|i| (i / segment) as u8)
            .collect();
        let (dest, dest_len) = to_sockaddr(SocketAddr::from(([127, 0, 0, 1], port)));
        let mut control = [0u64; 3];
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
        msg.msg_controllen = write_segment_control(&mut control, segment as u16);
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
        let stride =
            gro_segment_size(&control_in[..control_len]).expect("a UDP_GRO control message");
        assert_eq!(stride, segment);
        let pieces: Vec<&[u8]> = buffer[..received].chunks(stride).collect();
        assert_eq!(pieces.len(), 10);
        for (i, piece) in pieces.iter().enumerate() {
            assert!(piece.iter().all(|b| *b == i as u8), "segment {i} intact");
        }
        assert_eq!(pieces[9].len(), 300, "the short tail stays last");
    }
}
