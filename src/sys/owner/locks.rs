//! The locks: abstract unix sockets `@tunfwd/dev/NAME` and `@tunfwd/udp/PORT`, bound and never
//! listened on (unix(7), "Abstract sockets"). A bind of a name a live socket holds fails with
//! EADDRINUSE; the name goes with the socket's last file reference. Who holds a taken one is
//! found through /proc/net/unix (`procfs`).

use super::procfs::{abstract_socket_inodes, processes_with_sockets, read_net_table};
use super::{Busy, Conflict, Look, Remains, Resource};
use crate::sys::Error;
use socket2::{Domain, SockAddr, Socket, Type};
use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

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
/// to it (ECONNREFUSED) or queue data on it. Close-on-exec (`socket2` creates every socket so).
fn bind_abstract(name: &str) -> io::Result<OwnedFd> {
    // A leading NUL makes the name abstract (unix(7)), and `socket2` then gives the kernel exactly
    // its bytes, with no trailing NUL, which would be part of the name.
    let path = [&[0u8][..], name.as_bytes()].concat();
    let address = SockAddr::unix(OsStr::from_bytes(&path))?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&address)?;
    Ok(socket.into())
}
