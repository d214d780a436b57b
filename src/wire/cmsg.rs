//! Control messages (cmsg(3)) and the other bytes the kernel hands a UDP socket besides the
//! payload: what a receive's control area says (`UDP_GRO`, the outer TOS), what a send's
//! carries (`UDP_SEGMENT`, the TOS), what an error-queue entry reports (`sock_extended_err`), and
//! a datagram's address as a `sockaddr_in`/`sockaddr_in6` (read and written). PURE: bytes in,
//! values out, no system call and no `unsafe`; the caller provides the 8-byte alignment the
//! kernel's messages need.
//!
//! The layout is the one of 64-bit Linux (include/linux/socket.h: `cmsg_len` is a `size_t`, and
//! `CMSG_ALIGN` rounds to `sizeof(long)`), checked at compile time below.

use super::OuterFamily;
use super::icmp::IcmpKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Where a `sockaddr_in` and a `sockaddr_in6` keep their fields (include/uapi/linux/in.h and
/// in6.h), as bytes: the layout io_uring's recvmsg leaves in a buffer and sendmsg reads.
mod sockaddr {
    use core::ops::Range;
    /// Both start with the family, in host order, and the port, big-endian.
    pub const FAMILY: Range<usize> = 0..2;
    pub const PORT: Range<usize> = 2..4;
    pub const V4_ADDRESS: Range<usize> = 4..8;
    pub const V4_LEN: usize = 16;
    /// The flow information and scope id are in host order, as `SocketAddrV6` keeps them.
    pub const V6_FLOWINFO: Range<usize> = 4..8;
    pub const V6_ADDRESS: Range<usize> = 8..24;
    pub const V6_SCOPE_ID: Range<usize> = 24..28;
    pub const V6_LEN: usize = 28;
}

// The byte layout above is libc's.
const _: () = {
    use core::mem::offset_of;
    use libc::{sockaddr_in, sockaddr_in6};
    assert!(offset_of!(sockaddr_in, sin_family) == sockaddr::FAMILY.start);
    assert!(offset_of!(sockaddr_in, sin_port) == sockaddr::PORT.start);
    assert!(offset_of!(sockaddr_in, sin_addr) == sockaddr::V4_ADDRESS.start);
    assert!(size_of::<sockaddr_in>() == sockaddr::V4_LEN);
    assert!(offset_of!(sockaddr_in6, sin6_family) == sockaddr::FAMILY.start);
    assert!(offset_of!(sockaddr_in6, sin6_port) == sockaddr::PORT.start);
    assert!(offset_of!(sockaddr_in6, sin6_flowinfo) == sockaddr::V6_FLOWINFO.start);
    assert!(offset_of!(sockaddr_in6, sin6_addr) == sockaddr::V6_ADDRESS.start);
    assert!(offset_of!(sockaddr_in6, sin6_scope_id) == sockaddr::V6_SCOPE_ID.start);
    assert!(size_of::<sockaddr_in6>() == sockaddr::V6_LEN);
};

/// Room for the bytes of either `sockaddr`.
pub const SOCKADDR_MAX_LEN: usize = sockaddr::V6_LEN;

/// The address and port in raw `sockaddr_in`/`sockaddr_in6` bytes (as io_uring's recvmsg
/// returns them). IPv4-mapped IPv6 addresses come back as IPv4, so they compare equal to the
/// peer's [`canonical`] address.
pub fn source_address(name: &[u8]) -> Option<SocketAddr> {
    use sockaddr::*;
    let family = libc::c_int::from(u16::from_ne_bytes(name.get(FAMILY)?.try_into().ok()?));
    let port = u16::from_be_bytes(name.get(PORT)?.try_into().ok()?);
    let ip = match family {
        libc::AF_INET => {
            let octets: [u8; 4] = name.get(V4_ADDRESS)?.try_into().ok()?;
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        libc::AF_INET6 => {
            let octets: [u8; 16] = name.get(V6_ADDRESS)?.try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(octets)).to_canonical()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The `sockaddr_in` (IPv4) or `sockaddr_in6` (IPv6) of `address`, as bytes, and how many of
/// them it takes: what sendmsg(2) and connect(2) read as a name. The inverse of
/// [`source_address`], but for the IPv4-mapped folding: an IPv6 address stays IPv6.
pub fn sockaddr_bytes(address: SocketAddr) -> ([u8; SOCKADDR_MAX_LEN], usize) {
    use sockaddr::*;
    let mut bytes = [0u8; SOCKADDR_MAX_LEN];
    bytes[PORT].copy_from_slice(&address.port().to_be_bytes());
    let (family, len) = match address {
        SocketAddr::V4(a) => {
            bytes[V4_ADDRESS].copy_from_slice(&a.ip().octets());
            (libc::AF_INET, V4_LEN)
        }
        SocketAddr::V6(a) => {
            bytes[V6_FLOWINFO].copy_from_slice(&a.flowinfo().to_ne_bytes());
            bytes[V6_ADDRESS].copy_from_slice(&a.ip().octets());
            bytes[V6_SCOPE_ID].copy_from_slice(&a.scope_id().to_ne_bytes());
            (libc::AF_INET6, V6_LEN)
        }
    };
    bytes[FAMILY].copy_from_slice(&(family as libc::sa_family_t).to_ne_bytes());
    (bytes, len)
}

/// `CMSG_SPACE(len)` on 64-bit Linux: the header, then `len` bytes rounded up to the 8-byte
/// alignment of `long` (include/linux/socket.h).
const fn cmsg_space(len: usize) -> usize {
    CMSG_HEADER + len.next_multiple_of(8)
}

/// Room for one `UDP_GRO` control message: `CMSG_SPACE(sizeof(int))`.
pub const GRO_CONTROL_LEN: usize = cmsg_space(size_of::<libc::c_int>());
/// Room for one received TOS or traffic class message: `IP_TOS` carries a byte
/// (`ip_cmsg_recv_tos` in net/ipv4/ip_sockglue.c), `IPV6_TCLASS` an int
/// (`ip6_datagram_recv_specific_ctl` in net/ipv6/datagram.c): `CMSG_SPACE` of the larger.
pub const TOS_CONTROL_LEN: usize = cmsg_space(size_of::<libc::c_int>());
/// Room for one `SCM_TIMESTAMPNS` message: `CMSG_SPACE(sizeof(struct timespec))`, a 64-bit
/// `tv_sec` and `tv_nsec` on 64-bit Linux (`__sock_recv_timestamp` in net/socket.c).
pub const TIMESTAMP_CONTROL_LEN: usize = cmsg_space(size_of::<libc::timespec>());
/// `sizeof(struct cmsghdr)` on 64-bit Linux (include/linux/socket.h): a `size_t` and two ints.
pub const CMSG_HEADER: usize = 16;
/// `CMSG_SPACE(sizeof(u16))`: a `UDP_SEGMENT` message.
pub const SEGMENT_CONTROL_LEN: usize = cmsg_space(size_of::<u16>());
/// `CMSG_SPACE(sizeof(int))`: an `IP_TOS` or `IPV6_TCLASS` message as a send carries it.
pub const TOS_SEND_CONTROL_LEN: usize = cmsg_space(size_of::<libc::c_int>());
/// The control area of one send: a `UDP_SEGMENT` message and a TOS message.
pub const SEND_CONTROL_LEN: usize = SEGMENT_CONTROL_LEN + TOS_SEND_CONTROL_LEN;

// The layout above is the 64-bit one; on any other the kernel would read these areas wrong.
const _: () = assert!(size_of::<libc::cmsghdr>() == CMSG_HEADER);
const _: () = assert!(
    size_of::<usize>() == 8,
    "cmsg alignment is sizeof(long): 8 here"
);
const _: () = assert!(size_of::<libc::sock_extended_err>() == 16);

/// Walks the messages of a control area as the kernel's `CMSG_NXTHDR` does
/// (include/linux/socket.h), handing `visit` each one's level, type and data (the bytes its
/// `cmsg_len` covers after the header, which may be fewer than its type needs) until `visit`
/// returns false. It stops at the first message that is not `CMSG_OK` (its `cmsg_len` shorter
/// than the header or past the area): when the area was too small the kernel cuts the last
/// message and shortens its `cmsg_len` (`put_cmsg` in net/core/scm.c, which also sets
/// `MSG_CTRUNC`), and nothing after a bad length can be trusted.
fn walk_messages(control: &[u8], mut visit: impl FnMut(i32, i32, &[u8]) -> bool) {
    let mut at = 0;
    while control.len() - at >= CMSG_HEADER {
        let left = control.len() - at;
        let word = |from: usize, to: usize| &control[at + from..at + to];
        let len = usize::from_ne_bytes(word(0, 8).try_into().expect("8 bytes"));
        let level = i32::from_ne_bytes(word(8, 12).try_into().expect("4 bytes"));
        let kind = i32::from_ne_bytes(word(12, 16).try_into().expect("4 bytes"));
        if len < CMSG_HEADER || len > left {
            return;
        }
        if !visit(level, kind, &control[at + CMSG_HEADER..at + len]) {
            return;
        }
        // CMSG_ALIGN to sizeof(long); no overflow, since len <= left.
        let step = len.div_ceil(8) * 8;
        if step >= left {
            return;
        }
        at += step;
    }
}

/// What the data path reads from a receive's control area.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiveControl {
    /// The `UDP_GRO` segment size.
    pub gro_segment_size: Option<usize>,
    /// The outer TOS / traffic class (`IP_RECVTOS`, `IPV6_RECVTCLASS`).
    pub tos: Option<u8>,
    /// When the kernel received the datagram, in ns since the Unix epoch (`SO_TIMESTAMPNS`,
    /// `CLOCK_REALTIME`; socket(7)). Under `UDP_GRO` the first datagram's.
    pub received_at_ns: Option<u64>,
}

/// Reads the `UDP_GRO` segment size, the outer TOS and the receive timestamp from a recvmsg
/// control area. The first message of each kind decides; one whose `cmsg_len` cannot hold its
/// value was cut, and ends the walk (see [`walk_messages`]).
pub fn receive_control(control: &[u8]) -> ReceiveControl {
    let mut found = ReceiveControl::default();
    let (mut gro_seen, mut tos_seen, mut time_seen) = (false, false, false);
    walk_messages(control, |level, kind, data| {
        match (level, kind) {
            (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) if !time_seen => {
                time_seen = true;
                let Some(bytes) = data.get(..16) else {
                    return false;
                };
                let seconds = i64::from_ne_bytes(bytes[..8].try_into().expect("8 bytes"));
                let nanos = i64::from_ne_bytes(bytes[8..].try_into().expect("8 bytes"));
                found.received_at_ns = u64::try_from(seconds)
                    .ok()
                    .zip(u64::try_from(nanos).ok().filter(|n| *n < 1_000_000_000))
                    .and_then(|(s, n)| s.checked_mul(1_000_000_000)?.checked_add(n));
            }
            (libc::SOL_UDP, libc::UDP_GRO) if !gro_seen => {
                gro_seen = true;
                let Some(bytes) = data.get(..4) else {
                    return false;
                };
                let size = i32::from_ne_bytes(bytes.try_into().expect("4 bytes"));
                found.gro_segment_size = usize::try_from(size).ok().filter(|s| *s > 0);
            }
            (libc::SOL_IP, libc::IP_TOS) if !tos_seen => {
                tos_seen = true;
                let Some(&tos) = data.first() else {
                    return false;
                };
                found.tos = Some(tos);
            }
            (libc::SOL_IPV6, libc::IPV6_TCLASS) if !tos_seen => {
                tos_seen = true;
                let Some(bytes) = data.get(..4) else {
                    return false;
                };
                let class = i32::from_ne_bytes(bytes.try_into().expect("4 bytes"));
                found.tos = u8::try_from(class).ok();
            }
            _ => {}
        }
        !(gro_seen && tos_seen && time_seen)
    });
    found
}

/// Reads the `UDP_GRO` segment size from a recvmsg control area, if there is one: the first
/// `SOL_UDP`/`UDP_GRO` message that is `CMSG_OK` and whose `cmsg_len` holds its `int` decides.
pub fn gro_segment_size(control: &[u8]) -> Option<usize> {
    receive_control(control).gro_segment_size
}

/// Fills `out` (at least [`SEGMENT_CONTROL_LEN`] bytes, 8-byte aligned in the caller's
/// memory) with one `UDP_SEGMENT` message and returns its length.
pub fn write_segment_control(out: &mut [u8], segment_size: u16) -> usize {
    let len = CMSG_HEADER + 2;
    out[0..8].copy_from_slice(&len.to_ne_bytes());
    out[8..12].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    out[12..16].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
    out[16..18].copy_from_slice(&segment_size.to_ne_bytes());
    out[18..SEGMENT_CONTROL_LEN].fill(0);
    SEGMENT_CONTROL_LEN
}

/// Fills a send's control area (at least [`SEND_CONTROL_LEN`] bytes, 8-byte aligned in the
/// caller's memory) with a `UDP_SEGMENT` message when `segment_size` is given and a TOS
/// message (`IP_TOS` or `IPV6_TCLASS`, an int; `ip_cmsg_send` and `ip6_datagram_send_ctl`) when
/// `tos` is not 0, and returns the length used: 0 when neither is needed, so that the send
/// carries no control data at all.
pub fn write_send_control(
    out: &mut [u8],
    segment_size: Option<u16>,
    tos: u8,
    family: OuterFamily,
) -> usize {
    let mut len = 0;
    if let Some(size) = segment_size {
        len += write_segment_control(out, size);
    }
    if tos != 0 {
        len += write_tos_control(&mut out[len..], tos, family);
    }
    len
}

/// Fills `out` (at least [`TOS_SEND_CONTROL_LEN`] bytes, 8-byte aligned) with one TOS /
/// traffic class message and returns its length.
pub fn write_tos_control(out: &mut [u8], tos: u8, family: OuterFamily) -> usize {
    let (level, kind) = match family {
        OuterFamily::Ipv4 => (libc::SOL_IP, libc::IP_TOS),
        OuterFamily::Ipv6 => (libc::SOL_IPV6, libc::IPV6_TCLASS),
    };
    let len = CMSG_HEADER + 4;
    out[0..8].copy_from_slice(&len.to_ne_bytes());
    out[8..12].copy_from_slice(&level.to_ne_bytes());
    out[12..16].copy_from_slice(&kind.to_ne_bytes());
    out[16..20].copy_from_slice(&i32::from(tos).to_ne_bytes());
    out[20..TOS_SEND_CONTROL_LEN].fill(0);
    TOS_SEND_CONTROL_LEN
}

/// What the error queue held, as `sys::socket::drain_error_queue` adds its entries up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueuedErrors {
    /// Errors read and discarded.
    pub count: u64,
    /// Those of them that an ICMP or ICMPv6 message caused (`SO_EE_ORIGIN_ICMP[6]`), by
    /// [`IcmpKind`] (indexed like `IcmpKind::ALL`), as opposed to the local stack refusing a
    /// send over the egress device's MTU (`SO_EE_ORIGIN_LOCAL`).
    pub icmp: [u64; IcmpKind::ALL.len()],
    /// The smallest path MTU an ICMP fragmentation-needed or packet-too-big claimed: a hint,
    /// from anyone who knows the 4-tuple (`relay::plpmtud`).
    pub icmp_path_mtu: Option<u32>,
    /// The smallest MTU the local stack refused a send over: the egress device's, believed.
    pub local_path_mtu: Option<u32>,
    /// ICMP errors about a datagram to another address than the peer's: forged (the socket is
    /// not connected, so any quote of its port reaches it), or about an address the peer has
    /// left. Counted here only; not by kind, and their MTU is no hint.
    pub elsewhere: u64,
}

impl QueuedErrors {
    /// The ICMP errors among them, of every kind.
    pub fn icmp_count(&self) -> u64 {
        self.icmp.iter().sum()
    }

    /// Adds what another drain found.
    pub fn add(&mut self, other: &QueuedErrors) {
        self.count += other.count;
        self.elsewhere += other.elsewhere;
        for (mine, theirs) in self.icmp.iter_mut().zip(other.icmp) {
            *mine += theirs;
        }
        let smaller = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.icmp_path_mtu = smaller(self.icmp_path_mtu, other.icmp_path_mtu);
        self.local_path_mtu = smaller(self.local_path_mtu, other.local_path_mtu);
    }

    /// Adds what one queued error says.
    fn note(&mut self, error: QueuedError) {
        match error.origin {
            libc::SO_EE_ORIGIN_ICMP | libc::SO_EE_ORIGIN_ICMP6 => {
                let v6 = error.origin == libc::SO_EE_ORIGIN_ICMP6;
                let kind = IcmpKind::of(v6, error.icmp_type, error.icmp_code);
                self.icmp[kind as usize] += 1;
                if let Some(mtu) = error.path_mtu() {
                    self.icmp_path_mtu = Some(self.icmp_path_mtu.map_or(mtu, |m| m.min(mtu)));
                }
            }
            libc::SO_EE_ORIGIN_LOCAL => {
                if let Some(mtu) = error.path_mtu() {
                    self.local_path_mtu = Some(self.local_path_mtu.map_or(mtu, |m| m.min(mtu)));
                }
            }
            _ => {}
        }
    }
}

/// The parts of a `sock_extended_err` (include/uapi/linux/errqueue.h) tunfwd reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QueuedError {
    errno: u32,
    origin: u8,
    icmp_type: u8,
    icmp_code: u8,
    info: u32,
}

impl QueuedError {
    /// The path MTU this error reports, if it is one: `ee_errno` EMSGSIZE from an ICMP
    /// fragmentation-needed, an ICMPv6 packet-too-big, or the local stack refusing a send over
    /// the MTU it knows (`ip_local_error`, `ipv6_local_error`); `ee_info` is then the MTU
    /// (`ip_icmp_error` in net/ipv4/ip_sockglue.c, `ipv6_icmp_error` in net/ipv6/datagram.c).
    fn path_mtu(self) -> Option<u32> {
        let from_mtu_report = matches!(
            self.origin,
            libc::SO_EE_ORIGIN_LOCAL | libc::SO_EE_ORIGIN_ICMP | libc::SO_EE_ORIGIN_ICMP6
        );
        (self.errno == libc::EMSGSIZE as u32 && from_mtu_report && self.info > 0)
            .then_some(self.info)
    }
}

/// The first `IP_RECVERR` / `IPV6_RECVERR` message of an error-queue entry's control data.
fn queued_error(control: &[u8]) -> Option<QueuedError> {
    let mut found = None;
    walk_messages(control, |level, kind, data| {
        let is_error = matches!(
            (level, kind),
            (libc::SOL_IP, libc::IP_RECVERR) | (libc::SOL_IPV6, libc::IPV6_RECVERR)
        );
        if !is_error || data.len() < 16 {
            return true;
        }
        found = Some(QueuedError {
            errno: u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")),
            origin: data[4],
            icmp_type: data[5],
            icmp_code: data[6],
            info: u32::from_ne_bytes(data[8..12].try_into().expect("4 bytes")),
        });
        false
    });
    found
}

/// What one error-queue entry's control data says, as [`drain_error_queue`] adds it up (for
/// the fuzz target and the tests).
pub fn parse_queued_error(control: &[u8]) -> QueuedErrors {
    let mut found = QueuedErrors::default();
    if let Some(error) = queued_error(control) {
        found.note(error);
    }
    found
}

/// What one error-queue entry says, given its name (the destination of the datagram the error
/// is about: ip(7), `IP_RECVERR`) and the peer's address: an ICMP error about a datagram to
/// anyone else is counted as [`QueuedErrors::elsewhere`] and nothing more. With no peer, or a
/// name that does not parse, every entry is taken as about the peer.
pub fn parse_queued_error_about(control: &[u8], name: &[u8], peer: Option<IpAddr>) -> QueuedErrors {
    let mut found = QueuedErrors::default();
    let Some(error) = queued_error(control) else {
        return found;
    };
    let from_icmp = matches!(
        error.origin,
        libc::SO_EE_ORIGIN_ICMP | libc::SO_EE_ORIGIN_ICMP6
    );
    let about = source_address(name).map(|to| to.ip());
    match (peer, about) {
        (Some(peer), Some(about)) if from_icmp && about != peer.to_canonical() => {
            found.elsewhere += 1;
        }
        _ => found.note(error),
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `UDP_GRO` control message saying 1420, with `cmsg_len` as given.
    fn gro_message(cmsg_len: usize) -> [u8; GRO_CONTROL_LEN] {
        let mut control = [0u8; GRO_CONTROL_LEN];
        control[0..8].copy_from_slice(&cmsg_len.to_ne_bytes());
        control[8..12].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
        control[12..16].copy_from_slice(&libc::UDP_GRO.to_ne_bytes());
        control[16..20].copy_from_slice(&1420i32.to_ne_bytes());
        control
    }

    #[test]
    fn gro_control_message_is_found() {
        let mut control = gro_message(20);
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
        let mut control = gro_message(17);
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
        let mut bytes = [0xffu8; SEGMENT_CONTROL_LEN];
        assert_eq!(write_segment_control(&mut bytes, 1400), 24);
        assert_eq!(usize::from_ne_bytes(bytes[0..8].try_into().unwrap()), 18);
        assert_eq!(
            i32::from_ne_bytes(bytes[12..16].try_into().unwrap()),
            libc::UDP_SEGMENT
        );
        assert_eq!(u16::from_ne_bytes(bytes[16..18].try_into().unwrap()), 1400);
    }

    /// One control message: `cmsg_len`, level, type, then `data`, padded to 8 bytes.
    fn message(level: i32, kind: i32, data: &[u8], len: Option<usize>) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&len.unwrap_or(CMSG_HEADER + data.len()).to_ne_bytes());
        m.extend_from_slice(&level.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(data);
        m.resize(m.len().div_ceil(8) * 8, 0);
        m
    }

    /// An `SCM_TIMESTAMPNS` message as `put_cmsg` writes it: a `struct timespec`.
    fn timestamp(seconds: i64, nanos: i64, len: Option<usize>) -> Vec<u8> {
        let mut data = seconds.to_ne_bytes().to_vec();
        data.extend_from_slice(&nanos.to_ne_bytes());
        message(libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS, &data, len)
    }

    #[test]
    fn the_receive_timestamp_is_read_beside_the_gro_size_and_tos() {
        let gro = message(libc::SOL_UDP, libc::UDP_GRO, &1400i32.to_ne_bytes(), None);
        let tos = message(libc::SOL_IP, libc::IP_TOS, &[0x02], None);
        let stamp = timestamp(1_700_000_000, 123_456_789, None);
        // udp_recvmsg writes the timestamp first (`sock_recv_cmsgs`), then GRO, then the TOS.
        let all = [stamp.clone(), gro.clone(), tos.clone()].concat();
        assert!(all.len() <= TIMESTAMP_CONTROL_LEN + GRO_CONTROL_LEN + TOS_CONTROL_LEN);
        let found = receive_control(&all);
        assert_eq!(found.received_at_ns, Some(1_700_000_000_123_456_789));
        assert_eq!(found.gro_segment_size, Some(1400));
        assert_eq!(found.tos, Some(2));
        let reordered = receive_control(&[gro.clone(), tos.clone(), stamp].concat());
        assert_eq!(reordered, found);
        // Cut inside the timespec: not read, and nothing after it either.
        let cut = timestamp(1, 2, Some(CMSG_HEADER + 12));
        assert_eq!(
            receive_control(&[cut, gro.clone()].concat()),
            ReceiveControl::default()
        );
        // A time before the epoch, nanoseconds out of range, or past u64 ns: no time.
        for (seconds, nanos) in [(-1, 0), (5, 1_000_000_000), (5, -1), (i64::MAX, 0)] {
            let odd = timestamp(seconds, nanos, None);
            assert_eq!(
                receive_control(&odd).received_at_ns,
                None,
                "{seconds} {nanos}"
            );
        }
    }

    #[test]
    fn gro_size_and_tos_are_read_in_either_order() {
        let gro = message(libc::SOL_UDP, libc::UDP_GRO, &1400i32.to_ne_bytes(), None);
        let tos4 = message(libc::SOL_IP, libc::IP_TOS, &[0x03], None);
        let tos6 = message(
            libc::SOL_IPV6,
            libc::IPV6_TCLASS,
            &0xb9i32.to_ne_bytes(),
            None,
        );
        let both = |a: &[u8], b: &[u8]| [a, b].concat();
        let expect = |gro_segment_size, tos| ReceiveControl {
            gro_segment_size,
            tos,
            received_at_ns: None,
        };
        assert_eq!(
            receive_control(&both(&gro, &tos4)),
            expect(Some(1400), Some(3))
        );
        assert_eq!(
            receive_control(&both(&tos4, &gro)),
            expect(Some(1400), Some(3))
        );
        assert_eq!(
            receive_control(&both(&gro, &tos6)),
            expect(Some(1400), Some(0xb9))
        );
        assert_eq!(receive_control(&tos4), expect(None, Some(3)));
        assert_eq!(receive_control(&[]), expect(None, None));
        assert_eq!(gro_segment_size(&both(&tos4, &gro)), Some(1400));
        // The two areas tunfwd sizes hold both messages as the kernel writes them.
        assert!(both(&gro, &tos6).len() <= GRO_CONTROL_LEN + TOS_CONTROL_LEN);
        // A TOS message cut before its byte, or a traffic class cut inside its int, is not read,
        // and nothing after it is trusted.
        let cut4 = message(libc::SOL_IP, libc::IP_TOS, &[0x03], Some(CMSG_HEADER));
        assert_eq!(receive_control(&both(&cut4, &gro)), expect(None, None));
        let cut6 = message(libc::SOL_IPV6, libc::IPV6_TCLASS, &[2, 0, 0, 0], Some(18));
        assert_eq!(
            receive_control(&both(&gro, &cut6)),
            expect(Some(1400), None)
        );
        // A traffic class outside a byte is no TOS.
        let odd = message(
            libc::SOL_IPV6,
            libc::IPV6_TCLASS,
            &300i32.to_ne_bytes(),
            None,
        );
        assert_eq!(receive_control(&odd), expect(None, None));
    }

    #[test]
    fn send_control_holds_segment_size_and_tos_only_when_needed() {
        let mut words = [0u8; SEND_CONTROL_LEN];
        assert_eq!(
            write_send_control(&mut words, None, 0, OuterFamily::Ipv4),
            0
        );
        assert_eq!(
            write_send_control(&mut words, Some(1400), 0, OuterFamily::Ipv4),
            24
        );
        for (family, level, kind) in [
            (OuterFamily::Ipv4, libc::SOL_IP, libc::IP_TOS),
            (OuterFamily::Ipv6, libc::SOL_IPV6, libc::IPV6_TCLASS),
        ] {
            let len = write_send_control(&mut words, Some(1400), 0xb9, family);
            assert_eq!(len, 48);
            let bytes = &words[..len];
            let mut seen = Vec::new();
            walk_messages(bytes, |l, k, data| {
                seen.push((l, k, data.to_vec()));
                true
            });
            assert_eq!(
                seen,
                vec![
                    (
                        libc::SOL_UDP,
                        libc::UDP_SEGMENT,
                        1400u16.to_ne_bytes().to_vec()
                    ),
                    (level, kind, 0xb9i32.to_ne_bytes().to_vec()),
                ]
            );
            let len = write_send_control(&mut words, None, 2, family);
            assert_eq!(len, 24);
        }
    }

    /// A `sock_extended_err` as `ip_local_error` / `ip_icmp_error` queue it.
    fn extended_error(level: i32, kind: i32, errno: i32, origin: u8, info: u32) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&(errno as u32).to_ne_bytes());
        e.extend_from_slice(&[origin, 3, 4, 0]);
        e.extend_from_slice(&info.to_ne_bytes());
        e.extend_from_slice(&0u32.to_ne_bytes());
        e.extend_from_slice(&[0u8; 16]); // the offender's address
        message(level, kind, &e, None)
    }

    #[test]
    fn queued_errors_are_hints_from_icmp_and_limits_from_the_local_stack() {
        let v4 = |errno, origin, info| {
            extended_error(libc::SOL_IP, libc::IP_RECVERR, errno, origin, info)
        };
        let v6 = |errno, origin, info| {
            extended_error(libc::SOL_IPV6, libc::IPV6_RECVERR, errno, origin, info)
        };
        use libc::{SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6, SO_EE_ORIGIN_LOCAL};
        let local = parse_queued_error(&v4(libc::EMSGSIZE, SO_EE_ORIGIN_LOCAL, 1280));
        assert_eq!(
            (
                local.local_path_mtu,
                local.icmp_path_mtu,
                local.icmp_count()
            ),
            (Some(1280), None, 0)
        );
        // `extended_error` writes type 3 code 4: fragmentation needed.
        let icmp = parse_queued_error(&v4(libc::EMSGSIZE, SO_EE_ORIGIN_ICMP, 1400));
        assert_eq!(
            (icmp.icmp_path_mtu, icmp.local_path_mtu),
            (Some(1400), None)
        );
        assert_eq!(icmp.icmp[IcmpKind::TooBig as usize], 1);
        let v6_big = parse_queued_error(&v6(libc::EMSGSIZE, SO_EE_ORIGIN_ICMP6, 1280));
        assert_eq!(v6_big.icmp_path_mtu, Some(1280));
        assert_eq!(
            v6_big.icmp[IcmpKind::TimeExceeded as usize],
            1,
            "`extended_error` writes type 3, which in ICMPv6 is time exceeded"
        );
        for (control, why) in [
            (v4(libc::ECONNREFUSED, SO_EE_ORIGIN_ICMP, 0), "not EMSGSIZE"),
            (v4(libc::EMSGSIZE, SO_EE_ORIGIN_ICMP, 0), "no MTU"),
        ] {
            let found = parse_queued_error(&control);
            assert_eq!(found.icmp_path_mtu, None, "{why}");
            assert_eq!(found.icmp_count(), 1, "{why}");
        }
        let unknown = parse_queued_error(&v4(libc::EMSGSIZE, 0, 1280));
        assert_eq!(unknown, QueuedErrors::default(), "no origin");
        let mut cut = v4(libc::EMSGSIZE, SO_EE_ORIGIN_LOCAL, 1280);
        cut[0..8].copy_from_slice(&(CMSG_HEADER + 10).to_ne_bytes());
        assert_eq!(
            parse_queued_error(&cut),
            QueuedErrors::default(),
            "cut short"
        );
        assert_eq!(parse_queued_error(&[]), QueuedErrors::default());
    }

    #[test]
    fn an_icmp_error_about_another_destination_is_no_hint() {
        let big = extended_error(
            libc::SOL_IP,
            libc::IP_RECVERR,
            libc::EMSGSIZE,
            libc::SO_EE_ORIGIN_ICMP,
            552,
        );
        let local = extended_error(
            libc::SOL_IP,
            libc::IP_RECVERR,
            libc::EMSGSIZE,
            libc::SO_EE_ORIGIN_LOCAL,
            1280,
        );
        let name = |to: &str| {
            let (bytes, len) = sockaddr_bytes(to.parse().unwrap());
            bytes[..len].to_vec()
        };
        let peer: Option<IpAddr> = "198.18.0.2".parse().ok();
        let about_peer = parse_queued_error_about(&big, &name("198.18.0.2:55555"), peer);
        assert_eq!(about_peer, parse_queued_error(&big), "the peer's, any port");
        let other_port = parse_queued_error_about(&big, &name("198.18.0.2:9"), peer);
        assert_eq!(other_port.icmp_path_mtu, Some(552), "ports are not checked");
        let forged = parse_queued_error_about(&big, &name("203.0.113.7:55555"), peer);
        assert_eq!(
            forged,
            QueuedErrors {
                elsewhere: 1,
                ..QueuedErrors::default()
            }
        );
        let mapped = parse_queued_error_about(&big, &name("[::ffff:198.18.0.2]:55555"), peer);
        assert_eq!(mapped.icmp_path_mtu, Some(552), "IPv4-mapped is the peer");
        let mapped_peer = "::ffff:198.18.0.2".parse().ok();
        let plain = parse_queued_error_about(&big, &name("198.18.0.2:55555"), mapped_peer);
        assert_eq!(plain.elsewhere, 0, "a mapped peer matches its IPv4 form");
        let own_limit = parse_queued_error_about(&local, &name("203.0.113.7:1"), peer);
        assert_eq!(
            own_limit.local_path_mtu,
            Some(1280),
            "the local stack's limit is believed"
        );
        for (name, peer) in [(name("203.0.113.7:1"), None), (vec![1, 2, 3], peer)] {
            assert_eq!(
                parse_queued_error_about(&big, &name, peer),
                parse_queued_error(&big),
                "no peer, or no name: taken as about the peer"
            );
        }
    }

    #[test]
    fn a_source_address_is_read_from_sockaddr_bytes() {
        // Written by hand, as the kernel lays them out.
        let mut v4 = vec![0u8; 16];
        v4[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&55555u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[198, 18, 0, 1]);
        assert_eq!(source_address(&v4), "198.18.0.1:55555".parse().ok());
        let mut v6 = vec![0u8; 28];
        v6[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&7u16.to_be_bytes());
        v6[8..24].copy_from_slice(&"::ffff:198.18.0.1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(
            source_address(&v6),
            "198.18.0.1:7".parse().ok(),
            "IPv4-mapped reads as IPv4"
        );
        assert_eq!(source_address(&v4[..7]), None, "cut inside the address");
        assert_eq!(source_address(&[0u8; 3]), None);
        assert_eq!(source_address(&[0u8; 28]), None, "AF_UNSPEC");

        // And written by `sockaddr_bytes`: the same bytes.
        let (bytes, len) = sockaddr_bytes("198.18.0.1:55555".parse().unwrap());
        assert_eq!(&bytes[..len], &v4[..]);
        let (bytes, len) = sockaddr_bytes("[::ffff:198.18.0.1]:7".parse().unwrap());
        assert_eq!(&bytes[..len], &v6[..]);
    }

    #[test]
    fn sockaddr_bytes_keep_the_flow_information_and_scope_of_ipv6() {
        let address = SocketAddr::V6(std::net::SocketAddrV6::new(
            "fe80::1".parse().unwrap(),
            4789,
            0x000a_bcde,
            3,
        ));
        let (bytes, len) = sockaddr_bytes(address);
        assert_eq!(len, size_of::<libc::sockaddr_in6>());
        assert_eq!(bytes[0..2], (libc::AF_INET6 as u16).to_ne_bytes());
        assert_eq!(bytes[2..4], 4789u16.to_be_bytes());
        assert_eq!(bytes[4..8], 0x000a_bcdeu32.to_ne_bytes());
        assert_eq!(
            bytes[8..24],
            "fe80::1".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(bytes[24..28], 3u32.to_ne_bytes());
    }
}
