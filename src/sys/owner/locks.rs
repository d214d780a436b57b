//! The locks: abstract unix sockets `@tunfwd/dev/NAME` and `@tunfwd/udp/PORT`, bound and never
//! listened on (unix(7), "Abstract sockets"). A bind of a name a live socket holds fails with
//! EADDRINUSE; the name goes with the socket's last file reference. Who holds a taken one is
//! found through /proc/net/unix (`procfs`).

use super::procfs::{abstract_socket_inodes, processes_with_sockets, read_net_table};
use super::{Busy, Conflict, Look, Remains, Resource};
use crate::sys::{Error, check};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Tries to take the lock on `resource`; if another socket has its name, finds who.
pub(super) fn look_at_lock(resource: &Resource) -> Result<Look<OwnedFd>, Error> {
    let name = resource.lock_name();
    let source = match bind_abstract(&name) {
        Ok(fd) => return Ok(Look::Free(fd)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => e,
        Err(source) => {
            return Err(Error::ClaimLock {
                resource: resource.clone(),
                source,
            });
        }
    };
    let table = read_net_table(resource, "unix")?;
    Ok(Look::Busy(Busy {
        holders: processes_with_sockets(&abstract_socket_inodes(&table, &name)),
        remains: Remains::Unseen,
        conflict: Conflict::Lock {
            resource: resource.clone(),
            source,
        },
    }))
}

/// Binds a new unix stream socket to the abstract `name`, without listening: nothing can connect
/// to it (ECONNREFUSED) or queue data on it. Close-on-exec.
fn bind_abstract(name: &str) -> io::Result<OwnedFd> {
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // sun_path[0] stays NUL: an abstract name (unix(7)).
    let path = &mut address.sun_path[1..];
    if name.len() > path.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (dst, src) in path.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // The name is exactly the bytes given: no trailing NULs, which would be part of it.
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + 1 + name.len();
    // SAFETY: plain socket(2); owned right after the check.
    let raw =
        check(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `address` is a sockaddr_un of which the first `len` bytes are initialised.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&address as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    })?;
    Ok(fd)
}
