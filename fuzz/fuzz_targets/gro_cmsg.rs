//! The control area of a `recvmsg`, arbitrary bytes, through `wire::cmsg::gro_segment_size`. No
//! panic, and two properties checked against the plain re-implementation below:
//!
//! * sound: a segment size only from the first `SOL_UDP`/`UDP_GRO` message, well-formed and
//!   wholly within the area, with no malformed message before it;
//! * complete: on an area the kernel could have written, where no message before that one was
//!   cut short, exactly its size. (`put_cmsg`, net/core/scm.c, cuts a message only when the area
//!   is full, so a cut message is always the last; what a reader does with bytes after one is its
//!   own choice, and either choice passes.)

#![no_main]

use libfuzzer_sys::fuzz_target;
use tunfwd::fuzzing::gro_segment_size;

/// `sizeof(struct cmsghdr)` on 64-bit Linux: `size_t cmsg_len; int cmsg_level; int cmsg_type`
/// (include/linux/socket.h).
const HEADER: usize = 16;
/// `CMSG_ALIGN` rounds to `sizeof(long)`.
const ALIGN: usize = 8;

/// The bytes of value a message of this level and type carries when the kernel writes it whole,
/// for the types a relay's socket receives: `UDP_GRO` an `int` (`udp_cmsg_recv`,
/// include/net/udp.h), `IP_TOS` one byte (`ip_cmsg_recv_tos`, net/ipv4/ip_sockglue.c),
/// `IPV6_TCLASS` an `int` (`ip6_datagram_recv_specific_ctl`, net/ipv6/datagram.c),
/// `SCM_TIMESTAMPNS` a 16-byte `struct timespec` (`__sock_recv_timestamp`, net/socket.c; the
/// relay asks for it since the AQM times the socket's queue).
fn value_len(level: i32, kind: i32) -> Option<usize> {
    match (level, kind) {
        (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) => Some(16),
        (libc::SOL_UDP, libc::UDP_GRO) => Some(4),
        (libc::SOL_IP, libc::IP_TOS) => Some(1),
        (libc::SOL_IPV6, libc::IPV6_TCLASS) => Some(4),
        _ => None,
    }
}

/// Walks the messages the way the kernel's own macros do (include/linux/socket.h): the next
/// header must fit in what is left (`__cmsg_nxthdr`), and a message is usable only if `CMSG_OK`
/// holds (`cmsg_len` at least a header and at most the bytes left); nothing after a message that
/// is not can be trusted. Returns the first `UDP_GRO` message's size if it is whole and positive,
/// and whether a message before it was cut short of its value.
fn reference(control: &[u8]) -> (Option<usize>, bool) {
    let mut cut_before = false;
    let mut at = 0;
    while control.len() - at >= HEADER {
        let left = control.len() - at;
        let message = &control[at..];
        let len = usize::from_ne_bytes(message[0..8].try_into().unwrap());
        let level = i32::from_ne_bytes(message[8..12].try_into().unwrap());
        let kind = i32::from_ne_bytes(message[12..16].try_into().unwrap());
        if len < HEADER || len > left {
            return (None, cut_before);
        }
        let cut = value_len(level, kind).is_some_and(|value| len < HEADER + value);
        if level == libc::SOL_UDP && kind == libc::UDP_GRO {
            if cut {
                return (None, cut_before);
            }
            let size = i32::from_ne_bytes(message[HEADER..HEADER + 4].try_into().unwrap());
            return (
                usize::try_from(size).ok().filter(|size| *size > 0),
                cut_before,
            );
        }
        cut_before |= cut;
        let step = len.div_ceil(ALIGN) * ALIGN; // no overflow: len <= left
        if step >= left {
            return (None, cut_before);
        }
        at += step;
    }
    (None, cut_before)
}

fuzz_target!(|control: &[u8]| {
    let found = gro_segment_size(control);
    let (expected, cut_before) = reference(control);
    if found.is_some() || !cut_before {
        assert_eq!(found, expected, "control area {control:02x?}");
    }
});
