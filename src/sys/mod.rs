//! The system-call edge: TUN ioctls, interface configuration (rtnetlink), sockets and their
//! options, the error queue, CPU affinity, signals.
//!
//! Everything here turns raw fds into `OwnedFd` right after the `< 0` check (or gets them owned
//! from `socket2`), so no error path leaks one. Kernel constants come from `libc`; any it lacks
//! are defined once here, naming their header. Errors ([`Error`]) keep their `io::Error` source
//! and say which device, queue or address they concern, plus what an operator can do about the
//! common causes.

pub mod affinity;
mod error;
pub mod errqueue;
pub mod link;
pub mod netlink;
pub mod owner;
pub mod privileges;
pub mod random;
pub mod signal;
pub mod socket;
pub mod tun;

pub use error::Error;

use std::io;

/// poll(2) over `fds`, waiting at most `timeout_ms` (negative: no limit); returns how many have
/// events. The metrics server's one system call that is not a socket's.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    let count = libc::nfds_t::try_from(fds.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `fds` is an exclusively borrowed slice of `count` initialised `pollfd`s, valid for
    // the whole call; poll(2) reads their `fd` and `events` and writes only their `revents`.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), count, timeout_ms) };
    usize::try_from(ready).map_err(|_| io::Error::last_os_error())
}

/// Turns a libc return value into `io::Result`, reading errno on -1.
pub(crate) fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A `struct ifreq` naming `device` (which the caller has validated to fit IFNAMSIZ).
pub(crate) fn ifreq_named(device: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .zip(device.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    req
}
