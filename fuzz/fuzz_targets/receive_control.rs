//! The control area of a `recvmsg`, arbitrary bytes, through `wire::cmsg::receive_control`
//! (`tunfwd::fuzzing::receive_control`), which every receive of every worker runs: the `UDP_GRO`
//! segment size, the outer TOS and the `SCM_TIMESTAMPNS` receive time that the AQM reads the
//! socket's queue delay from. No panic, and for each of the three, checked against the plain
//! re-implementation below:
//!
//! * sound: a value only from the first message of its kind, well-formed and wholly within the
//!   area, with no malformed message before it; a time only if it is a real one (not before the
//!   epoch, nanoseconds below a second, within u64 nanoseconds);
//! * complete: on an area where no message before that one was cut short, exactly its value.
//!   (`put_cmsg`, net/core/scm.c, cuts a message only when the area is full, so a cut message is
//!   always the last; what a reader does with bytes after one is its own choice.)

#![no_main]

use libfuzzer_sys::fuzz_target;
use tunfwd::fuzzing::receive_control;

/// `sizeof(struct cmsghdr)` on 64-bit Linux (include/linux/socket.h).
const HEADER: usize = 16;
/// `CMSG_ALIGN` rounds to `sizeof(long)`.
const ALIGN: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gro,
    Tos4,
    Tos6,
    Time,
}

/// The kind of a message and the bytes of value it carries when the kernel writes it whole:
/// `UDP_GRO` an `int` (`udp_cmsg_recv`), `IP_TOS` a byte (`ip_cmsg_recv_tos`), `IPV6_TCLASS` an
/// `int`, `SCM_TIMESTAMPNS` a `struct timespec` (`__sock_recv_timestamp`, net/socket.c).
fn kind(level: i32, kind: i32) -> Option<(Kind, usize)> {
    match (level, kind) {
        (libc::SOL_UDP, libc::UDP_GRO) => Some((Kind::Gro, 4)),
        (libc::SOL_IP, libc::IP_TOS) => Some((Kind::Tos4, 1)),
        (libc::SOL_IPV6, libc::IPV6_TCLASS) => Some((Kind::Tos6, 4)),
        (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) => Some((Kind::Time, 16)),
        _ => None,
    }
}

/// What the reference finds for one field: its value (if its first message is whole), and
/// whether a message before that one was cut short.
#[derive(Default)]
struct Found {
    gro: (Option<usize>, bool),
    tos: (Option<u8>, bool),
    time: (Option<u64>, bool),
}

/// Walks the messages as the kernel's own macros do (`__cmsg_nxthdr`, `CMSG_OK`); the first
/// message of each kind decides that kind; nothing after a message that is not `CMSG_OK`, or
/// after a cut message of a kind the reader knows, is trusted.
fn reference(control: &[u8]) -> Found {
    let mut found = Found::default();
    let (mut gro_seen, mut tos_seen, mut time_seen) = (false, false, false);
    let mut cut_before = false;
    let mut at = 0;
    // Past the walk's end, every field not yet seen counts as having a cut (or nothing) before
    // it: `cut_before` stays as it was, which the caller reads for unseen fields.
    let mark_unseen = |found: &mut Found, cut: bool, g: bool, t: bool, s: bool| {
        if !g {
            found.gro.1 |= cut;
        }
        if !t {
            found.tos.1 |= cut;
        }
        if !s {
            found.time.1 |= cut;
        }
    };
    while control.len() - at >= HEADER {
        let left = control.len() - at;
        let m = &control[at..];
        let len = usize::from_ne_bytes(m[0..8].try_into().unwrap());
        let level = i32::from_ne_bytes(m[8..12].try_into().unwrap());
        let type_ = i32::from_ne_bytes(m[12..16].try_into().unwrap());
        if len < HEADER || len > left {
            break;
        }
        if let Some((k, value_len)) = kind(level, type_) {
            let cut = len < HEADER + value_len;
            let data = &m[HEADER..len];
            match k {
                Kind::Gro if !gro_seen => {
                    gro_seen = true;
                    if cut {
                        cut_before = true;
                        break;
                    }
                    let size = i32::from_ne_bytes(data[..4].try_into().unwrap());
                    found.gro = (usize::try_from(size).ok().filter(|s| *s > 0), cut_before);
                }
                Kind::Tos4 | Kind::Tos6 if !tos_seen => {
                    tos_seen = true;
                    if cut {
                        cut_before = true;
                        break;
                    }
                    let tos = if k == Kind::Tos4 {
                        Some(data[0])
                    } else {
                        u8::try_from(i32::from_ne_bytes(data[..4].try_into().unwrap())).ok()
                    };
                    found.tos = (tos, cut_before);
                }
                Kind::Time if !time_seen => {
                    time_seen = true;
                    if cut {
                        cut_before = true;
                        break;
                    }
                    let seconds = i64::from_ne_bytes(data[..8].try_into().unwrap());
                    let nanos = i64::from_ne_bytes(data[8..16].try_into().unwrap());
                    let time = if seconds >= 0 && (0..1_000_000_000).contains(&nanos) {
                        (seconds as u64)
                            .checked_mul(1_000_000_000)
                            .and_then(|ns| ns.checked_add(nanos as u64))
                    } else {
                        None
                    };
                    found.time = (time, cut_before);
                }
                _ => cut_before |= cut,
            }
        }
        if gro_seen && tos_seen && time_seen {
            break;
        }
        let step = len.div_ceil(ALIGN) * ALIGN; // no overflow: len <= left
        if step >= left {
            break;
        }
        at += step;
    }
    mark_unseen(&mut found, cut_before, gro_seen, tos_seen, time_seen);
    found
}

fuzz_target!(|control: &[u8]| {
    let got = receive_control(control);
    let expected = reference(control);
    let check = |name: &str, got: Option<u64>, (want, cut_before): (Option<u64>, bool)| {
        if got.is_some() || !cut_before {
            assert_eq!(got, want, "{name} of control area {control:02x?}");
        }
    };
    check(
        "UDP_GRO",
        got.gro_segment_size.map(|s| s as u64),
        (expected.gro.0.map(|s| s as u64), expected.gro.1),
    );
    check(
        "TOS",
        got.tos.map(u64::from),
        (expected.tos.0.map(u64::from), expected.tos.1),
    );
    check("SCM_TIMESTAMPNS", got.received_at_ns, expected.time);
});
