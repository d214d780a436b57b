//! Exclusive ownership of the TUN device and the UDP port, claimed before either is opened.
//!
//! Why: a TUN queue is attached without `IFF_TUN_EXCL` and the UDP port is joined with
//! `SO_REUSEPORT`, both on purpose (one queue and one socket per worker). So a second relay on the
//! same `--dev` or port silently joins the first one's device and reuseport group, and its
//! steering program sends flows to sockets and queues nobody reads. [`claim`] makes that a clear
//! failure at startup instead, and waits out what a `kill -9`'d relay leaves behind.
//!
//! The locks are abstract unix-domain sockets (unix(7), "Abstract sockets"), `@tunfwd/dev/NAME`
//! and `@tunfwd/udp/PORT`, bound and never listened on. Abstract names live in the network
//! namespace, as device names and ports do. A bind of a name that a live socket holds fails with
//! EADDRINUSE, and the name is freed when the socket's last file reference goes:
//! net/unix/af_unix.c `unix_release_sock` starts with `unix_remove_socket`, and it runs from the
//! socket file's release. Exit closes a process's files (kernel/exit.c `do_exit` calls
//! `exit_files`, then `exit_task_work` runs the final `__fput`s), so a `kill -9`'d holder frees
//! its names before it even becomes a zombie. Measured on Linux 6.18: 20 of 20 holders killed with
//! SIGKILL had freed the name by the time they were zombies (at most 4.6 ms after the kill), and a
//! bind right after `waitpid` always succeeded. A relay's io_uring worker threads share its fd
//! table, which goes with the last of them: in 1 of 20 kill-and-restart cycles of
//! tests/ownership.rs the lock was still bound 24 ms after the kill, by a process whose fds /proc
//! no longer showed, and was waited for like any leftover. The lock fds are never handed to io_uring, so no
//! ring keeps them alive; they are `SOCK_CLOEXEC`; and being plain fds they survive the switch to
//! `--user`. tunfwd never forks, so nothing inherits them.
//!
//! The port lock is keyed by the port number alone. Whether two UDP sockets on one port conflict
//! depends on their addresses and on `IPV6_V6ONLY` (an IPv6 socket on `::` is dual-stack by default,
//! ipv6(7)), and `0.0.0.0:P` and `[::]:P` do conflict there. Two relays on one port number are
//! refused even where the addresses would have let them coexist: a needless refusal is a clear
//! message, a missed conflict is traffic lost without a word.
//!
//! The locks only keep tunfwds apart. Anything else is looked for too, the way the kernel sees it:
//! - the port: a test bind of the listen address with neither `SO_REUSEADDR` nor `SO_REUSEPORT`
//!   fails with EADDRINUSE while any socket is bound there (a killed relay's included);
//! - the device: rtnetlink `RTM_GETLINK` says whether it exists in this thread's network
//!   namespace, whether it is a TUN, whether it is persistent, and how many queues are attached
//!   (drivers/net/tun.c `tun_fill_info`: `IFLA_TUN_PERSIST`, `IFLA_TUN_NUM_QUEUES`). Netlink
//!   rather than /sys/class/net: sysfs shows the namespace of whoever mounted it, which is not this
//!   one after a bare setns(2), and tun_flags does not say whether queues are attached.
//!
//! Who holds it is found through /proc: the socket's inode (from /proc/net/unix for a lock,
//! /proc/net/udp{,6} for the port) against the `socket:[INODE]` links in /proc/PID/fd; a TUN
//! queue through the `iff:\tNAME` line drivers/net/tun.c `tun_chr_show_fdinfo` writes in
//! /proc/PID/fdinfo/FD, from a process with a thread in this network namespace. The command comes from
//! /proc/PID/cmdline. Reading another user's /proc/PID/fd needs root (proc(5), ptrace access
//! mode); tunfwd claims while still root.
//!
//! What is busy but held by no live process is what a killed relay leaves: after `kill -9`, its
//! io_uring instances are torn down asynchronously (io_uring/io_uring.c `io_ring_exit_work`), and
//! until then the requests in flight hold the files of its TUN queues and UDP sockets. Measured
//! here (Linux 6.18, a 2-queue relay on the uring engine, 10 kills): the relay was reaped 1.5 to
//! 2.6 ms after SIGKILL, its device went 32 to 51 ms after the kill and its UDP sockets 52 to 77
//! ms after. With 4 queues (tests/ownership.rs, 20 restarts started at once after the kill), the
//! new relay waited 47 to 50 ms for the old queues and 70 to 99 ms for the last old socket. A holder that is exiting (SIGKILL pending, `PF_EXITING`, or a zombie) counts as
//! leaving. [`claim`] waits for such leftovers, looking again every 20 ms, for at most its `wait`;
//! a live holder fails at once, named.
//!
//! Never: this module opens no TUN queue and binds no relay socket; it only looks. Its decisions
//! (what a /proc line says, whether two addresses overlap, whether to wait) are pure functions
//! with table tests; the system calls are the thin layer around them.

use super::{Error, check};
use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a busy resource is looked at again while what holds it goes away.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The longest command line quoted in a message; a longer one is cut there.
const COMMAND_CHARS: usize = 160;

/// `PF_EXITING` in include/linux/sched.h: the task is in `do_exit`. /proc/PID/stat field 9 is the
/// task's flags word (proc(5)).
const PF_EXITING: u64 = 0x4;

/// `IFLA_TUN_*` in include/uapi/linux/if_link.h; the libc crate lacks them.
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PERSIST: u16 = 6;
const IFLA_TUN_NUM_QUEUES: u16 = 8;
const IFLA_TUN_NUM_DISABLED_QUEUES: u16 = 9;
/// An attribute type without the `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER` bits
/// (include/uapi/linux/netlink.h).
const NLA_TYPE_MASK: u16 = libc::NLA_TYPE_MASK as u16;

/// What tunfwd claims: a TUN device by name, a UDP port by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Device(String),
    Port(u16),
}

impl Resource {
    /// The abstract socket name that marks this resource as a tunfwd's (without the leading NUL).
    fn lock_name(&self) -> String {
        match self {
            Resource::Device(name) => format!("tunfwd/dev/{name}"),
            Resource::Port(port) => format!("tunfwd/udp/{port}"),
        }
    }

    /// The option an operator changes to avoid the conflict.
    fn option(&self) -> &'static str {
        match self {
            Resource::Device(_) => "--dev",
            Resource::Port(_) => "--listen",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Device(name) => write!(f, "device {name}"),
            Resource::Port(port) => write!(f, "UDP port {port}"),
        }
    }
}

/// A process found holding a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command line, arguments joined by spaces (or `[comm]` when it has none).
    pub command: String,
    /// Killed or exiting: what it holds is about to go.
    pub exiting: bool,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PID {} ({})", self.pid, self.command)
    }
}

/// Holders as `PID 1 (a), PID 2 (b)`.
struct HolderList<'a>(&'a [Holder]);

impl fmt::Display for HolderList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, holder) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{holder}")?;
        }
        Ok(())
    }
}

/// What still held a resource, with no live process behind it, when [`claim`] stopped waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remains {
    /// Processes that hold it and are exiting.
    Exiting(Vec<Holder>),
    /// Sockets bound to the port that no process has open.
    Sockets { count: usize },
    /// A TUN device that no process has open; `queues` attached, when the kernel says.
    Queues { queues: Option<u32> },
    /// A holder that /proc does not show: one far enough into its exit that its fd table is
    /// gone, or, when tunfwd is not root, another user's process.
    Unseen,
}

const TORN_DOWN: &str = "a killed relay's, which the kernel has not released yet";

impl fmt::Display for Remains {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remains::Exiting(holders) => {
                write!(f, "{} holds it and is exiting", HolderList(holders))
            }
            Remains::Sockets { count } => write!(
                f,
                "{count} UDP socket(s) bound to it are open in no process ({TORN_DOWN})"
            ),
            Remains::Queues { queues: Some(n) } => {
                write!(f, "it has {n} queue(s) open in no process ({TORN_DOWN})")
            }
            Remains::Queues { queues: None } => {
                write!(f, "it is open in no process ({TORN_DOWN})")
            }
            Remains::Unseen => f.write_str(
                "no process that /proc shows holds it (its holder is exiting, or belongs to \
                 another user and tunfwd is not root)",
            ),
        }
    }
}

/// The message of each error this module returns (called from `Error`'s `Display`).
pub(super) fn describe(error: &Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match error {
        Error::ClaimLock { resource, source } => write!(
            f,
            "cannot claim {resource} (binding the abstract unix socket @{}): {source}",
            resource.lock_name()
        ),
        Error::AlreadyServed {
            resource, holders, ..
        } => write!(
            f,
            "{resource} is already served by {}. Stop that relay first, or choose another {}",
            HolderList(holders),
            resource.option()
        ),
        Error::PortInUse {
            address, holders, ..
        } => write!(
            f,
            "cannot listen on {address}: UDP port {} is in use by {}. Choose another --listen, \
             or stop that program",
            address.port(),
            HolderList(holders)
        ),
        Error::DeviceInUse { device, holders } => write!(
            f,
            "device {device} is in use by {}, which holds queues of it. Choose another --dev, or \
             stop that program",
            HolderList(holders)
        ),
        Error::StillHeld {
            resource,
            waited,
            remains,
            source,
        } => {
            write!(
                f,
                "{resource} is still taken after waiting {:.1}s: {remains}",
                waited.as_secs_f64()
            )?;
            match source {
                Some(e) => write!(f, " ({e})"),
                None => Ok(()),
            }
        }
        Error::FindHolders {
            resource,
            path,
            source,
        } => write!(
            f,
            "cannot read {} to find what holds {resource}: {source}",
            path.display()
        ),
        Error::QueryDevice { device, source } => write!(
            f,
            "cannot ask the kernel about device {device} (rtnetlink RTM_GETLINK): {source}"
        ),
        _ => unreachable!("owner::describe is only called for the ownership errors"),
    }
}

/// The OS error behind each error this module returns (called from `Error::source`).
pub(super) fn source(error: &Error) -> Option<&(dyn std::error::Error + 'static)> {
    match error {
        Error::ClaimLock { source, .. }
        | Error::AlreadyServed { source, .. }
        | Error::PortInUse { source, .. }
        | Error::FindHolders { source, .. }
        | Error::QueryDevice { source, .. } => Some(source),
        Error::StillHeld { source, .. } => source.as_ref().map(|e| e as _),
        _ => None,
    }
}

/// The device and port, held for as long as this value lives. Keep it for the life of the process
/// (`let _ownership = claim(..)?`; `let _ = ` would drop it at once). Dropping it, exiting or being
/// killed releases both.
#[derive(Debug)]
pub struct Ownership {
    _device: OwnedFd,
    _port: Option<OwnedFd>,
    waited: Duration,
}

impl Ownership {
    /// How long [`claim`] waited for leftovers to go (zero if nothing was in the way), for a log
    /// line: a relay restarted right after `kill -9` waits for the killed one's queues and
    /// sockets.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

/// Claims `device` and `listen`'s port for this process, before either is opened.
///
/// Fails at once, naming the process, if another tunfwd serves either, if another live process
/// holds the port, or if a live process holds queues of the device. What is busy with no live
/// process behind it (a killed relay's device and sockets, which the kernel releases shortly) is
/// waited for, for at most `wait` in all, then reported. Port 0 (an ephemeral port) claims no port.
pub fn claim(device: &str, listen: SocketAddr, wait: Duration) -> Result<Ownership, Error> {
    let started = Instant::now();
    let mut clock = Clock {
        started,
        deadline: started + wait,
        waited: false,
    };
    let device_resource = Resource::Device(device.to_string());
    let device_lock = settle(&device_resource, &mut clock, || {
        look_at_lock(&device_resource)
    })?;
    let port_lock = match listen.port() {
        0 => None,
        port => {
            let resource = Resource::Port(port);
            Some(settle(&resource, &mut clock, || look_at_lock(&resource))?)
        }
    };
    settle(&device_resource, &mut clock, || look_at_device(device))?;
    if listen.port() != 0 {
        settle(&Resource::Port(listen.port()), &mut clock, || {
            look_at_port(listen)
        })?;
    }
    Ok(Ownership {
        _device: device_lock,
        _port: port_lock,
        waited: if clock.waited {
            started.elapsed()
        } else {
            Duration::ZERO
        },
    })
}

/// One look at a resource.
#[derive(Debug)]
enum Look<T> {
    /// Nothing stands in the way; `T` is what was taken (a lock) or `()`.
    Free(T),
    Busy(Busy),
}

/// A resource something holds.
#[derive(Debug)]
struct Busy {
    /// The processes found holding it, exiting ones included.
    holders: Vec<Holder>,
    /// What to report if no live process holds it and it is still there when the wait ends.
    remains: Remains,
    conflict: Conflict,
}

/// How a resource was found busy, and so which error a live holder makes.
#[derive(Debug)]
enum Conflict {
    /// Binding the lock's abstract name failed with EADDRINUSE.
    Lock {
        resource: Resource,
        source: io::Error,
    },
    /// The test bind of the listen address failed with EADDRINUSE.
    Port {
        address: SocketAddr,
        source: io::Error,
    },
    /// The kernel says the TUN device has queues attached.
    Device { device: String },
}

impl Conflict {
    fn in_use(self, holders: Vec<Holder>) -> Error {
        match self {
            Conflict::Lock { resource, source } => Error::AlreadyServed {
                resource,
                holders,
                source,
            },
            Conflict::Port { address, source } => Error::PortInUse {
                address,
                holders,
                source,
            },
            Conflict::Device { device } => Error::DeviceInUse { device, holders },
        }
    }

    fn into_source(self) -> Option<io::Error> {
        match self {
            Conflict::Lock { source, .. } | Conflict::Port { source, .. } => Some(source),
            Conflict::Device { .. } => None,
        }
    }
}

/// What to do about a busy resource.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Live processes hold it: fail now, naming them.
    Fail(Vec<Holder>),
    /// Only leftovers, and time left: look again shortly.
    Wait,
    /// Only leftovers, and the time is up: report what remains.
    GiveUp(Remains),
}

/// Decides from the holders found and whether time is left. PURE.
fn decide(holders: &[Holder], remains: &Remains, time_left: bool) -> Step {
    let live: Vec<Holder> = holders.iter().filter(|h| !h.exiting).cloned().collect();
    if !live.is_empty() {
        Step::Fail(live)
    } else if time_left {
        Step::Wait
    } else if holders.is_empty() {
        Step::GiveUp(remains.clone())
    } else {
        Step::GiveUp(Remains::Exiting(holders.to_vec()))
    }
}

/// The one wait [`claim`] shares among everything it looks at.
struct Clock {
    started: Instant,
    deadline: Instant,
    /// Whether anything was waited for.
    waited: bool,
}

/// Looks at `resource` until it is free: fails at once on a live holder, and at the deadline on
/// leftovers.
fn settle<T>(
    resource: &Resource,
    clock: &mut Clock,
    mut look: impl FnMut() -> Result<Look<T>, Error>,
) -> Result<T, Error> {
    loop {
        let busy = match look()? {
            Look::Free(taken) => return Ok(taken),
            Look::Busy(busy) => busy,
        };
        let now = Instant::now();
        match decide(&busy.holders, &busy.remains, now < clock.deadline) {
            Step::Fail(live) => return Err(busy.conflict.in_use(live)),
            Step::Wait => {
                clock.waited = true;
                std::thread::sleep(POLL_INTERVAL.min(clock.deadline - now));
            }
            Step::GiveUp(remains) => {
                return Err(Error::StillHeld {
                    resource: resource.clone(),
                    waited: now - clock.started,
                    remains,
                    source: busy.conflict.into_source(),
                });
            }
        }
    }
}

/// Tries to take the lock on `resource`; if another socket has its name, finds who.
fn look_at_lock(resource: &Resource) -> Result<Look<OwnedFd>, Error> {
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

/// Test-binds the listen address; if something is bound there, finds who.
fn look_at_port(listen: SocketAddr) -> Result<Look<()>, Error> {
    // std's UdpSocket sets neither SO_REUSEADDR nor SO_REUSEPORT, so this bind fails while any
    // socket is bound to an overlapping address, a relay's reuseport group included. Like the
    // relay's own sockets, an IPv6 one is left dual-stack. It is closed on return.
    let source = match UdpSocket::bind(listen) {
        Ok(_) => return Ok(Look::Free(())),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => e,
        // Anything else (an address this host lacks, say) is for the relay's own bind to report.
        Err(_) => return Ok(Look::Free(())),
    };
    let resource = Resource::Port(listen.port());
    let mut inodes = Vec::new();
    for (table, ipv6) in [("udp", false), ("udp6", true)] {
        let text = read_net_table(&resource, table)?;
        inodes.extend(
            text.lines()
                .filter_map(|line| parse_udp_row(line, ipv6))
                .filter(|row| overlaps(listen, row.local))
                .map(|row| row.inode),
        );
    }
    Ok(Look::Busy(Busy {
        holders: processes_with_sockets(&inodes),
        remains: Remains::Sockets {
            count: inodes.len(),
        },
        conflict: Conflict::Port {
            address: listen,
            source,
        },
    }))
}

/// Asks the kernel about the device; if it is a TUN with queues attached, finds who holds them.
fn look_at_device(device: &str) -> Result<Look<()>, Error> {
    let link = query_link(device).map_err(|source| Error::QueryDevice {
        device: device.to_string(),
        source,
    })?;
    let queues = match link {
        // Not there: TUNSETIFF will create it. Not a TUN: TUNSETIFF will refuse it, with its own
        // message (`Error::CreateQueue`).
        Link::Absent | Link::Other => return Ok(Look::Free(())),
        // Persistent with nothing attached: free to attach to.
        Link::Tun {
            persistent: true,
            queues: Some(0),
        } => return Ok(Look::Free(())),
        Link::Tun { queues, .. } => queues,
    };
    let holders = processes_with_tun(device);
    if holders.is_empty()
        && matches!(
            link,
            Link::Tun {
                persistent: true,
                queues: None
            }
        )
    {
        // A persistent single-queue device says nothing of its queues; with no holder it is free.
        return Ok(Look::Free(()));
    }
    Ok(Look::Busy(Busy {
        holders,
        remains: Remains::Queues { queues },
        conflict: Conflict::Device {
            device: device.to_string(),
        },
    }))
}

/// `/proc/thread-self/net/NAME`: the table of this thread's network namespace (after setns(2),
/// /proc/self/net would still show the process's).
fn read_net_table(resource: &Resource, name: &str) -> Result<String, Error> {
    let path = PathBuf::from("/proc/thread-self/net").join(name);
    fs::read_to_string(&path).map_err(|source| Error::FindHolders {
        resource: resource.clone(),
        path,
        source,
    })
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

/// The inodes of the sockets bound to the abstract `name` in the text of /proc/net/unix. PURE.
///
/// net/unix/af_unix.c `unix_seq_show`: `Num RefCount Protocol Flags Type St Inode Path`, with an
/// abstract path shown as `@` and then the name, NUL bytes also as `@`.
fn abstract_socket_inodes(table: &str, name: &str) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let inode = fields.nth(6)?.parse().ok()?;
            let path = fields.next()?;
            (path.strip_prefix('@') == Some(name) && fields.next().is_none()).then_some(inode)
        })
        .collect()
}

/// One row of /proc/net/udp or /proc/net/udp6.
#[derive(Debug, PartialEq, Eq)]
struct UdpRow {
    local: SocketAddr,
    inode: u64,
}

/// Parses a row of /proc/net/udp (`ipv6` false) or /proc/net/udp6; `None` for the header. PURE.
///
/// net/ipv4/udp.c `udp4_format_sock`: `sl local_address rem_address st tx_queue:rx_queue tr:tm
/// retrnsmt uid timeout inode ...`. The address is the `__be32` printed with `%08X`, so its bytes
/// are the native-endian bytes of that number; IPv6 (net/ipv6/datagram.c
/// `__ip6_dgram_sock_seq_show`) prints the four 32-bit words the same way. The port is in host
/// order.
fn parse_udp_row(line: &str, ipv6: bool) -> Option<UdpRow> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 10 || !fields[0].ends_with(':') {
        return None;
    }
    let (address, port) = fields[1].split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = if ipv6 {
        if address.len() != 32 {
            return None;
        }
        let mut octets = [0u8; 16];
        for (word, chunk) in octets.chunks_mut(4).enumerate() {
            let hex = address.get(word * 8..word * 8 + 8)?;
            chunk.copy_from_slice(&u32::from_str_radix(hex, 16).ok()?.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(octets))
    } else {
        if address.len() != 8 {
            return None;
        }
        IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(address, 16).ok()?.to_ne_bytes(),
        ))
    };
    Some(UdpRow {
        local: SocketAddr::new(ip, port),
        inode: fields[9].parse().ok()?,
    })
}

/// The IPv4 and IPv6 destinations a UDP socket bound to `ip` receives: `None` for none,
/// `Some(None)` for any, `Some(Some(a))` for `a` alone. An IPv6 socket on `::` is taken as
/// dual-stack, as it is unless `IPV6_V6ONLY` (ipv6(7)), which /proc does not show; an
/// IPv4-mapped address stands for its IPv4 address.
fn receives(ip: IpAddr) -> (Option<Option<Ipv4Addr>>, Option<Option<Ipv6Addr>>) {
    let any_or = |unspecified: bool, a| if unspecified { None } else { Some(a) };
    match ip {
        IpAddr::V4(a) => (Some(any_or(a.is_unspecified(), a)), None),
        IpAddr::V6(a) if a.is_unspecified() => (Some(None), Some(None)),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => (Some(any_or(v4.is_unspecified(), v4)), None),
            None => (None, Some(Some(a))),
        },
    }
}

/// Whether a socket bound to `bound` stands in the way of binding `listen`: the same port and
/// addresses that overlap (one of them a wildcard, or both the same). PURE.
fn overlaps(listen: SocketAddr, bound: SocketAddr) -> bool {
    fn meet<A: PartialEq>(x: Option<Option<A>>, y: Option<Option<A>>) -> bool {
        match (x, y) {
            (Some(x), Some(y)) => x.is_none() || y.is_none() || x == y,
            _ => false,
        }
    }
    let (listen4, listen6) = receives(listen.ip());
    let (bound4, bound6) = receives(bound.ip());
    listen.port() == bound.port() && (meet(listen4, bound4) || meet(listen6, bound6))
}

/// The inode in a /proc/PID/fd link such as `socket:[12345]`. PURE.
fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The device a TUN fd is attached to, from its /proc/PID/fdinfo text: the `iff:\tNAME` line of
/// drivers/net/tun.c `tun_chr_show_fdinfo` (empty for an fd attached to nothing). PURE.
fn tun_fdinfo_device(fdinfo: &str) -> Option<&str> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("iff:"))
        .map(str::trim)
        .filter(|name| !name.is_empty())
}

/// A command from /proc/PID/cmdline (arguments, each ended by a NUL) and /proc/PID/comm, for a
/// message: the arguments joined by spaces, cut at `COMMAND_CHARS`; `[comm]` when there are none
/// (a kernel thread, or a process that has exited). PURE.
fn command_line(cmdline: &[u8], comm: &str) -> String {
    let cmdline = cmdline.strip_suffix(b"\0").unwrap_or(cmdline);
    if cmdline.is_empty() {
        return format!("[{}]", comm.trim());
    }
    let joined: String = String::from_utf8_lossy(cmdline).replace('\0', " ");
    if joined.chars().count() > COMMAND_CHARS {
        let cut: String = joined.chars().take(COMMAND_CHARS).collect();
        format!("{cut}...")
    } else {
        joined
    }
}

/// Whether a process is on its way out, from /proc/PID/stat and /proc/PID/status: a zombie or
/// dead (state `Z`/`X`), in `do_exit` (`PF_EXITING`), or with SIGKILL pending (proc(5): `SigPnd`
/// for the thread, `ShdPnd` for the process), which it cannot survive. PURE.
fn exiting(stat: &str, status: &str) -> bool {
    // The command in field 2 may hold spaces and parentheses; the fields after its last `)` are
    // state (3), ppid, pgrp, session, tty_nr, tpgid, flags (9).
    let mut after = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace();
    let state = after.next();
    let flags: u64 = after.nth(5).and_then(|f| f.parse().ok()).unwrap_or(0);
    let sigkill = 1u64 << (libc::SIGKILL - 1);
    let killed = status.lines().any(|line| {
        line.strip_prefix("SigPnd:")
            .or_else(|| line.strip_prefix("ShdPnd:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & sigkill != 0)
    });
    matches!(state, Some("Z" | "X" | "x")) || flags & PF_EXITING != 0 || killed
}

/// The process `pid`, for a message.
fn holder(pid: u32) -> Holder {
    let read = |name: &str| fs::read(format!("/proc/{pid}/{name}")).unwrap_or_default();
    let text = |name: &str| String::from_utf8_lossy(&read(name)).into_owned();
    Holder {
        pid,
        command: command_line(&read("cmdline"), &text("comm")),
        exiting: exiting(&text("stat"), &text("status")),
    }
}

/// The processes with an open fd whose link `matches` (given the pid, the fd's name and the link),
/// in pid order. Processes that exit meanwhile, or whose fds this user may not read, are skipped.
fn processes_where(mut matches: impl FnMut(u32, &str, &Path) -> bool) -> Vec<Holder> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.into_iter()
        .filter(|&pid| {
            let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                return false;
            };
            fds.filter_map(Result::ok).any(|fd| {
                let name = fd.file_name();
                let link = fs::read_link(fd.path());
                match (name.to_str(), link) {
                    (Some(name), Ok(link)) => matches(pid, name, &link),
                    _ => false,
                }
            })
        })
        .map(holder)
        .collect()
}

/// The processes with one of the sockets `inodes` open.
fn processes_with_sockets(inodes: &[u64]) -> Vec<Holder> {
    if inodes.is_empty() {
        return Vec::new();
    }
    processes_where(|_, _, link| socket_inode(link).is_some_and(|inode| inodes.contains(&inode)))
}

/// The processes with a queue of TUN device `device` open and a thread in this thread's network
/// namespace. Device names are per namespace and fdinfo does not say which namespace's device it
/// means, so a process elsewhere (the other relay of a test bed, say) with a device of that name
/// is not counted. A TUN device cannot change namespace (drivers/net/tun.c `tun_setup` marks it
/// `netns_local`), so a queue is opened by a thread in the device's namespace; the namespace
/// belongs to each thread (setns(2)), so every thread of the process is asked, not only the first
/// (/proc/PID/task/TID/ns/net).
fn processes_with_tun(device: &str) -> Vec<Holder> {
    let here = fs::read_link("/proc/thread-self/ns/net").ok();
    processes_where(|pid, fd, link| {
        link == Path::new("/dev/net/tun")
            && fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
                .is_ok_and(|info| tun_fdinfo_device(&info) == Some(device))
            && here
                .as_ref()
                .is_none_or(|here| has_thread_in_namespace(pid, here))
    })
}

/// Whether a thread of process `pid` is in the network namespace `namespace` (a `net:[INODE]`
/// link). A process whose threads cannot be read is counted in, rather than missed.
fn has_thread_in_namespace(pid: u32, namespace: &Path) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    let mut readable = false;
    for task in tasks.filter_map(Result::ok) {
        if let Ok(theirs) = fs::read_link(task.path().join("ns/net")) {
            readable = true;
            if theirs == namespace {
                return true;
            }
        }
    }
    !readable
}

/// What the kernel says of a device name in this thread's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No device of that name.
    Absent,
    /// A device that is not a TUN (a TAP included).
    Other,
    /// A TUN device, and the queues attached to it (enabled and disabled), which the kernel gives
    /// for a multiqueue device only.
    Tun {
        persistent: bool,
        queues: Option<u32>,
    },
}

/// An `RTM_GETLINK` request for the device named `device`: nlmsghdr, ifinfomsg (index 0: by
/// name), then `IFLA_IFNAME` with the NUL-terminated name, padded to 4 bytes. PURE.
fn getlink_request(device: &str) -> Vec<u8> {
    let name_len = device.len() + 1;
    let attribute_len = 4 + name_len;
    let len = 16 + 16 + attribute_len.next_multiple_of(4);
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.push(libc::AF_UNSPEC as u8); // ifi_family
    m.push(0); // padding
    m.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    m.extend_from_slice(&0i32.to_ne_bytes()); // ifi_index
    m.extend_from_slice(&0u32.to_ne_bytes()); // ifi_flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // ifi_change
    m.extend_from_slice(&(attribute_len as u16).to_ne_bytes());
    m.extend_from_slice(&libc::IFLA_IFNAME.to_ne_bytes());
    m.extend_from_slice(device.as_bytes());
    m.resize(len, 0); // the name's NUL and the padding
    m
}

/// The netlink attributes in `bytes` (rtattr/nlattr: u16 length including the 4-byte header, u16
/// type, payload, padding to 4), with the flag bits cleared from each type. Stops at the first
/// malformed one. PURE.
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(bytes.get(0..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(bytes.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let payload = bytes.get(4..len)?;
        bytes = bytes.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

fn attribute(bytes: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(bytes).find_map(|(k, payload)| (k == kind).then_some(payload))
}

/// The kernel's answer to [`getlink_request`]: `RTM_NEWLINK` for a device (net/core/rtnetlink.c
/// `rtnl_fill_ifinfo`, whose `IFLA_LINKINFO` holds the kind and, for a TUN, drivers/net/tun.c
/// `tun_fill_info`'s attributes), or `NLMSG_ERROR` with ENODEV for no such device. PURE.
fn parse_getlink_reply(reply: &[u8]) -> io::Result<Link> {
    let short = || io::Error::new(io::ErrorKind::InvalidData, "short netlink reply");
    let u16_at = |at: usize| {
        reply
            .get(at..at + 2)
            .map(|b| u16::from_ne_bytes(b.try_into().expect("2 bytes")))
    };
    let len = reply
        .get(0..4)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or_else(short)?;
    let message = reply.get(..len).ok_or_else(short)?;
    match u16_at(4).ok_or_else(short)? {
        kind if kind == libc::NLMSG_ERROR as u16 => {
            let errno = message
                .get(16..20)
                .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                .ok_or_else(short)?;
            match errno.saturating_neg() {
                libc::ENODEV => Ok(Link::Absent),
                0 => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "netlink acknowledged RTM_GETLINK without an answer",
                )),
                errno => Err(io::Error::from_raw_os_error(errno)),
            }
        }
        kind if kind == libc::RTM_NEWLINK => {
            let Some(info) = attribute(message.get(32..).ok_or_else(short)?, libc::IFLA_LINKINFO)
            else {
                return Ok(Link::Other);
            };
            if attribute(info, libc::IFLA_INFO_KIND) != Some(b"tun\0") {
                return Ok(Link::Other);
            }
            let data = attribute(info, libc::IFLA_INFO_DATA).unwrap_or(&[]);
            let byte = |kind| attribute(data, kind).and_then(|p| p.first().copied());
            let word = |kind| {
                attribute(data, kind)
                    .and_then(|p| p.get(0..4))
                    .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
            };
            // IFLA_TUN_TYPE is `tun->flags & TUN_TYPE_MASK`: IFF_TUN or IFF_TAP.
            if byte(IFLA_TUN_TYPE) != Some(libc::IFF_TUN as u8) {
                return Ok(Link::Other);
            }
            Ok(Link::Tun {
                persistent: byte(IFLA_TUN_PERSIST).is_some_and(|p| p != 0),
                queues: word(IFLA_TUN_NUM_QUEUES)
                    .map(|enabled| enabled + word(IFLA_TUN_NUM_DISABLED_QUEUES).unwrap_or(0)),
            })
        }
        kind => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected netlink reply type {kind}"),
        )),
    }
}

/// Asks rtnetlink about `device`. The netlink socket belongs to the calling thread's network
/// namespace, which is the one the device name is looked up in.
fn query_link(device: &str) -> io::Result<Link> {
    // SAFETY: plain socket(2); owned right after the check.
    let raw = check(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    })?;
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    super::socket::set_option(
        sock.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVTIMEO,
        &timeout,
    )?;
    let request = getlink_request(device);
    // An unconnected, unbound netlink socket sends to the kernel.
    // SAFETY: `request` is valid for reads of its length.
    let sent = unsafe { libc::send(sock.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // One link's message is a few KiB (its statistics are most of it); MSG_TRUNC makes recv
    // return the whole length, so a reply that did not fit is an error, not a silent cut.
    let mut reply = vec![0u8; 64 << 10];
    // SAFETY: `reply` is valid for writes of its length.
    let got = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            libc::MSG_TRUNC,
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = got as usize;
    if got > reply.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the netlink reply ({got} bytes) did not fit"),
        ));
    }
    parse_getlink_reply(&reply[..got])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static NEXT: AtomicUsize = AtomicUsize::new(0);

    /// A device name no other test (or test run) uses: nothing of that name exists, so only the
    /// lock decides.
    fn fresh_device() -> String {
        format!(
            "tfo{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A loopback address with a port that was free a moment ago.
    fn free_port() -> SocketAddr {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    fn me() -> u32 {
        std::process::id()
    }

    fn holder(pid: u32, exiting: bool) -> Holder {
        Holder {
            pid,
            command: format!("p{pid}"),
            exiting,
        }
    }

    // --- pure parts ---

    #[test]
    fn abstract_names_are_found_in_proc_net_unix() {
        let table = "\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 20817 /run/systemd/notify
0000000000000000: 00000002 00000000 00000000 0001 07 901 @tunfwd/dev/tunfwd0
0000000000000000: 00000003 00000000 00000000 0001 03 31337
0000000000000000: 00000002 00000000 00000000 0001 07 902 @tunfwd/dev/tunfwd01
0000000000000000: 00000002 00000000 00000000 0001 07 903 tunfwd/dev/tunfwd0
0000000000000000: 00000002 00000000 00000000 0001 07 904 @tunfwd/udp/55555
0000000000000000: 00000002 00000000 00000000 0002 07  77 @tunfwd/dev/tunfwd0
0000000000000000: 00000002 00000000 00000000 0001 07 905 @tunfwd/dev/tunfwd0 trailing
";
        assert_eq!(
            abstract_socket_inodes(table, "tunfwd/dev/tunfwd0"),
            [901, 77]
        );
        assert_eq!(abstract_socket_inodes(table, "tunfwd/udp/55555"), [904]);
        assert!(abstract_socket_inodes(table, "tunfwd/udp/5555").is_empty());
        assert!(abstract_socket_inodes("", "x").is_empty());
        // The header is skipped even if a name looks like it.
        assert!(abstract_socket_inodes(table, "Path").is_empty());
    }

    #[test]
    fn udp_rows_parse_with_native_endian_addresses() {
        let v4 = |a: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(a));
        let v6 = |a: Ipv6Addr| {
            a.octets()
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_ne_bytes(w.try_into().unwrap())))
                .collect::<String>()
        };
        let row = |address: String, port: u16, inode: u64| {
            format!(
                "  127: {address}:{port:04X} 00000000:0000 07 00000000:00000000 00:00000000 \
                 00000000     0        0 {inode} 2 0000000000000000 0"
            )
        };
        let cases: Vec<(String, bool, Option<UdpRow>)> = vec![
            (
                row(v4([127, 0, 0, 1]), 55555, 4242),
                false,
                Some(UdpRow {
                    local: "127.0.0.1:55555".parse().unwrap(),
                    inode: 4242,
                }),
            ),
            (
                row(v4([0, 0, 0, 0]), 53, 1),
                false,
                Some(UdpRow {
                    local: "0.0.0.0:53".parse().unwrap(),
                    inode: 1,
                }),
            ),
            (
                row(v6(Ipv6Addr::UNSPECIFIED), 55555, 7),
                true,
                Some(UdpRow {
                    local: "[::]:55555".parse().unwrap(),
                    inode: 7,
                }),
            ),
            (
                row(v6("2001:2::1".parse().unwrap()), 1, 8),
                true,
                Some(UdpRow {
                    local: "[2001:2::1]:1".parse().unwrap(),
                    inode: 8,
                }),
            ),
            (
                row(v6("::ffff:198.18.0.1".parse().unwrap()), 9, 9),
                true,
                Some(UdpRow {
                    local: "[::ffff:198.18.0.1]:9".parse().unwrap(),
                    inode: 9,
                }),
            ),
            // The header, wrong families, garbage.
            (
                "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops".into(),
                false,
                None,
            ),
            (row(v4([1, 2, 3, 4]), 1, 1), true, None),
            (row(v6(Ipv6Addr::LOCALHOST), 1, 1), false, None),
            ("  1: zzzzzzzz:0035 00000000:0000 07 0 0 0 0 0 12".into(), false, None),
            ("  1: 0100007F:0035".into(), false, None),
            (String::new(), false, None),
        ];
        for (line, ipv6, want) in cases {
            assert_eq!(parse_udp_row(&line, ipv6), want, "{line}");
        }
    }

    #[test]
    fn the_local_udp_tables_parse_and_list_a_bound_socket() {
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let v6 = UdpSocket::bind("[::1]:0").ok();
        let rows = |name, ipv6| -> Vec<UdpRow> {
            fs::read_to_string(format!("/proc/thread-self/net/{name}"))
                .unwrap()
                .lines()
                .filter_map(|l| parse_udp_row(l, ipv6))
                .collect()
        };
        let local = v4.local_addr().unwrap();
        assert!(
            rows("udp", false).iter().any(|r| r.local == local),
            "{local}"
        );
        if let Some(v6) = v6 {
            let local = v6.local_addr().unwrap();
            assert!(
                rows("udp6", true).iter().any(|r| r.local == local),
                "{local}"
            );
        }
    }

    #[test]
    fn overlapping_addresses_are_the_kernels_conflicts() {
        let cases = [
            // (listen, bound, conflict)
            ("0.0.0.0:5000", "0.0.0.0:5000", true),
            ("0.0.0.0:5000", "0.0.0.0:5001", false),
            ("0.0.0.0:5000", "127.0.0.1:5000", true),
            ("127.0.0.1:5000", "0.0.0.0:5000", true),
            ("127.0.0.1:5000", "127.0.0.2:5000", false),
            ("127.0.0.1:5000", "127.0.0.1:5000", true),
            // An IPv6 wildcard is dual-stack unless IPV6_V6ONLY, which /proc does not show.
            ("0.0.0.0:5000", "[::]:5000", true),
            ("[::]:5000", "0.0.0.0:5000", true),
            ("[::]:5000", "198.18.0.1:5000", true),
            ("198.18.0.1:5000", "[::]:5000", true),
            ("[::]:5000", "[2001:2::1]:5000", true),
            ("[2001:2::1]:5000", "[2001:2::2]:5000", false),
            ("[2001:2::1]:5000", "0.0.0.0:5000", false),
            ("0.0.0.0:5000", "[2001:2::1]:5000", false),
            // IPv4-mapped addresses are their IPv4 addresses.
            ("198.18.0.1:5000", "[::ffff:198.18.0.1]:5000", true),
            ("198.18.0.2:5000", "[::ffff:198.18.0.1]:5000", false),
            ("[::ffff:0.0.0.0]:5000", "198.18.0.2:5000", true),
            ("[::ffff:198.18.0.1]:5000", "[2001:2::1]:5000", false),
        ];
        for (listen, bound, want) in cases {
            let (l, b): (SocketAddr, SocketAddr) =
                (listen.parse().unwrap(), bound.parse().unwrap());
            assert_eq!(overlaps(l, b), want, "{listen} vs {bound}");
        }
    }

    #[test]
    fn fd_links_and_fdinfo_name_sockets_and_tun_devices() {
        assert_eq!(socket_inode(Path::new("socket:[12345]")), Some(12345));
        for other in [
            "pipe:[12345]",
            "socket:[]",
            "socket:[12a]",
            "/dev/net/tun",
            "socket:[1",
        ] {
            assert_eq!(socket_inode(Path::new(other)), None, "{other}");
        }
        let attached = "pos:\t0\nflags:\t02004002\nmnt_id:\t25\nino:\t131\niff:\ttunfwd0\n";
        assert_eq!(tun_fdinfo_device(attached), Some("tunfwd0"));
        assert_eq!(tun_fdinfo_device("pos:\t0\niff:\t\n"), None);
        assert_eq!(tun_fdinfo_device("pos:\t0\nflags:\t02\n"), None);
    }

    #[test]
    fn command_lines_are_joined_and_cut() {
        assert_eq!(
            command_line(
                b"tunfwd\0--dev\0tunfwd0\0--peer\x00198.18.0.2:55555\0",
                "tunfwd\n"
            ),
            "tunfwd --dev tunfwd0 --peer 198.18.0.2:55555"
        );
        assert_eq!(command_line(b"", "kworker/0:1\n"), "[kworker/0:1]");
        assert_eq!(command_line(b"a\0\0b\0", "x"), "a  b");
        let long = [b'x'; COMMAND_CHARS + 10];
        let cut = command_line(&long, "x");
        assert_eq!(cut.len(), COMMAND_CHARS + 3);
        assert!(cut.ends_with("..."));
    }

    #[test]
    fn exiting_processes_are_told_from_stat_and_status() {
        let stat = |state: &str, flags: u64| {
            format!("1234 (tun fwd) (x)) {state} 1 1234 1234 0 -1 {flags} 100 0 0 0 5 3 0 0 20 0 4")
        };
        let status = |sig: &str, shd: &str| {
            format!(
                "Name:\ttunfwd\nState:\tS (sleeping)\nSigPnd:\t{sig}\nShdPnd:\t{shd}\nSigBlk:\t0000000000000100\n"
            )
        };
        let quiet = status("0000000000000000", "0000000000000000");
        let cases = [
            (stat("S", 4194560), quiet.clone(), false),
            (stat("R", 4194560), quiet.clone(), false),
            (stat("Z", 4194560), quiet.clone(), true),
            (stat("X", 0), quiet.clone(), true),
            // PF_EXITING
            (stat("D", 4194564), quiet.clone(), true),
            // SIGKILL pending for the process or the thread; a blocked-mask bit does not count.
            (
                stat("S", 0),
                status("0000000000000000", "0000000000000100"),
                true,
            ),
            (
                stat("S", 0),
                status("0000000000000100", "0000000000000000"),
                true,
            ),
            (
                stat("S", 0),
                status("0000000000004000", "0000000000000002"),
                false,
            ),
            // Unreadable (the process is gone): not exiting by this test, and harmless.
            (String::new(), String::new(), false),
        ];
        for (stat, status, want) in cases {
            assert_eq!(exiting(&stat, &status), want, "{stat} / {status}");
        }
    }

    #[test]
    fn live_holders_fail_at_once_and_leftovers_are_waited_for_until_the_deadline() {
        let sockets = Remains::Sockets { count: 2 };
        let cases = [
            (vec![], true, Step::Wait),
            (vec![], false, Step::GiveUp(sockets.clone())),
            (vec![holder(1, true)], true, Step::Wait),
            (
                vec![holder(1, true)],
                false,
                Step::GiveUp(Remains::Exiting(vec![holder(1, true)])),
            ),
            (
                vec![holder(1, false)],
                true,
                Step::Fail(vec![holder(1, false)]),
            ),
            (
                vec![holder(1, true), holder(2, false)],
                true,
                Step::Fail(vec![holder(2, false)]),
            ),
            (
                vec![holder(1, false), holder(2, false)],
                false,
                Step::Fail(vec![holder(1, false), holder(2, false)]),
            ),
        ];
        for (holders, time_left, want) in cases {
            assert_eq!(decide(&holders, &sockets, time_left), want, "{holders:?}");
        }
    }

    /// Builds a netlink attribute: header, payload, padding.
    fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    /// An RTM_NEWLINK message carrying `attributes` after the ifinfomsg.
    fn newlink(attributes: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = attributes.concat();
        let len = 32 + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[0; 16]);
        m.extend_from_slice(&body);
        m
    }

    fn tun_info(kind: &[u8], data: &[Vec<u8>]) -> Vec<u8> {
        // The kernel nests with nla_nest_start_noflag; a flagged nest must parse the same.
        let mut info = nla(libc::IFLA_INFO_KIND, kind);
        info.extend(nla(libc::IFLA_INFO_DATA | 1 << 15, &data.concat()));
        nla(libc::IFLA_LINKINFO, &info)
    }

    #[test]
    fn getlink_replies_say_absent_other_or_tun_with_its_queues() {
        let error = |errno: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
            m.extend_from_slice(&[0; 10]);
            m.extend_from_slice(&(-errno).to_ne_bytes());
            m.extend_from_slice(&[0; 16]);
            m
        };
        let name = nla(libc::IFLA_IFNAME, b"tunfwd0\0");
        let tun = |persist: u8, queues: Option<(u32, u32)>| {
            let mut data = vec![
                nla(IFLA_TUN_TYPE, &[libc::IFF_TUN as u8]),
                nla(IFLA_TUN_PERSIST, &[persist]),
            ];
            if let Some((enabled, disabled)) = queues {
                data.push(nla(IFLA_TUN_NUM_QUEUES, &enabled.to_ne_bytes()));
                data.push(nla(IFLA_TUN_NUM_DISABLED_QUEUES, &disabled.to_ne_bytes()));
            }
            newlink(&[name.clone(), tun_info(b"tun\0", &data)])
        };
        let tap = newlink(&[tun_info(
            b"tun\0",
            &[nla(IFLA_TUN_TYPE, &[libc::IFF_TAP as u8])],
        )]);
        let veth = newlink(&[name.clone(), tun_info(b"veth\0", &[])]);
        let cases: Vec<(Vec<u8>, Result<Link, i32>)> = vec![
            (error(libc::ENODEV), Ok(Link::Absent)),
            (error(libc::EPERM), Err(libc::EPERM)),
            (newlink(std::slice::from_ref(&name)), Ok(Link::Other)),
            (veth, Ok(Link::Other)),
            (tap, Ok(Link::Other)),
            (
                tun(0, Some((4, 0))),
                Ok(Link::Tun {
                    persistent: false,
                    queues: Some(4),
                }),
            ),
            (
                tun(1, Some((0, 0))),
                Ok(Link::Tun {
                    persistent: true,
                    queues: Some(0),
                }),
            ),
            (
                tun(1, Some((2, 1))),
                Ok(Link::Tun {
                    persistent: true,
                    queues: Some(3),
                }),
            ),
            (
                tun(1, None),
                Ok(Link::Tun {
                    persistent: true,
                    queues: None,
                }),
            ),
        ];
        for (reply, want) in cases {
            let got = parse_getlink_reply(&reply).map_err(|e| e.raw_os_error().unwrap_or(-1));
            assert_eq!(got, want, "{reply:?}");
        }
        for short in [&[][..], &[40, 0, 0, 0, 16, 0], &tun(0, None)[..20]] {
            assert!(parse_getlink_reply(short).is_err(), "{short:?}");
        }
        // A truncated attribute ends the walk instead of reading past it.
        let mut cut = nla(libc::IFLA_LINKINFO, &[1, 2, 3, 4]);
        cut[0] = 200;
        assert_eq!(attributes(&cut).count(), 0);
    }

    #[test]
    fn getlink_requests_name_the_device_padded() {
        let request = getlink_request("tunfwd0");
        assert_eq!(request.len(), 16 + 16 + 12);
        assert_eq!(u32::from_ne_bytes(request[0..4].try_into().unwrap()), 44);
        assert_eq!(
            u16::from_ne_bytes(request[4..6].try_into().unwrap()),
            libc::RTM_GETLINK
        );
        assert_eq!(
            attribute(&request[32..], libc::IFLA_IFNAME),
            Some(&b"tunfwd0\0"[..])
        );
    }

    #[test]
    fn the_kernel_answers_getlink_for_loopback_and_a_missing_name() {
        // RTM_GETLINK needs no privilege.
        assert_eq!(query_link("lo").unwrap(), Link::Other);
        assert_eq!(query_link(&fresh_device()).unwrap(), Link::Absent);
    }

    #[test]
    fn messages_name_the_holder_and_what_to_do() {
        let tunfwd = Holder {
            pid: 1234,
            command: "tunfwd --dev tunfwd0 --peer 198.18.0.2:55555".into(),
            exiting: false,
        };
        let in_use = || io::Error::from_raw_os_error(libc::EADDRINUSE);
        let cases = [
            (
                Error::AlreadyServed {
                    resource: Resource::Device("tunfwd0".into()),
                    holders: vec![tunfwd.clone()],
                    source: in_use(),
                },
                "device tunfwd0 is already served by PID 1234 (tunfwd --dev tunfwd0 --peer \
                 198.18.0.2:55555). Stop that relay first, or choose another --dev",
            ),
            (
                Error::AlreadyServed {
                    resource: Resource::Port(55555),
                    holders: vec![tunfwd.clone()],
                    source: in_use(),
                },
                "UDP port 55555 is already served by PID 1234 (tunfwd --dev tunfwd0 --peer \
                 198.18.0.2:55555). Stop that relay first, or choose another --listen",
            ),
            (
                Error::PortInUse {
                    address: "0.0.0.0:55555".parse().unwrap(),
                    holders: vec![holder(7, false), holder(8, false)],
                    source: in_use(),
                },
                "cannot listen on 0.0.0.0:55555: UDP port 55555 is in use by PID 7 (p7), PID 8 \
                 (p8). Choose another --listen, or stop that program",
            ),
            (
                Error::DeviceInUse {
                    device: "tunfwd0".into(),
                    holders: vec![holder(9, false)],
                },
                "device tunfwd0 is in use by PID 9 (p9), which holds queues of it. Choose \
                 another --dev, or stop that program",
            ),
            (
                Error::StillHeld {
                    resource: Resource::Port(55555),
                    waited: Duration::from_millis(10_004),
                    remains: Remains::Sockets { count: 4 },
                    source: Some(in_use()),
                },
                "UDP port 55555 is still taken after waiting 10.0s: 4 UDP socket(s) bound to it \
                 are open in no process (a killed relay's, which the kernel has not released \
                 yet) (Address already in use (os error 98))",
            ),
            (
                Error::StillHeld {
                    resource: Resource::Device("tunfwd0".into()),
                    waited: Duration::from_millis(250),
                    remains: Remains::Queues { queues: Some(4) },
                    source: None,
                },
                "device tunfwd0 is still taken after waiting 0.2s: it has 4 queue(s) open in no \
                 process (a killed relay's, which the kernel has not released yet)",
            ),
            (
                Error::StillHeld {
                    resource: Resource::Device("tunfwd0".into()),
                    waited: Duration::from_secs(10),
                    remains: Remains::Exiting(vec![holder(5, true)]),
                    source: Some(in_use()),
                },
                "device tunfwd0 is still taken after waiting 10.0s: PID 5 (p5) holds it and is \
                 exiting (Address already in use (os error 98))",
            ),
        ];
        for (error, want) in cases {
            assert_eq!(error.to_string(), want);
        }
        let served = Error::AlreadyServed {
            resource: Resource::Port(1),
            holders: vec![tunfwd],
            source: in_use(),
        };
        let source = std::error::Error::source(&served).expect("the bind's error is kept");
        assert!(source.to_string().contains("os error 98"), "{source}");
    }

    // --- the kernel, on loopback, without root ---

    #[test]
    fn a_second_claim_in_this_process_fails_naming_this_pid() {
        let device = fresh_device();
        let listen = free_port();
        let first = claim(&device, listen, Duration::from_secs(1)).expect("the first claim");
        let started = Instant::now();
        match claim(&device, listen, Duration::from_secs(5)) {
            Err(Error::AlreadyServed {
                resource: Resource::Device(d),
                holders,
                source,
            }) => {
                assert_eq!(d, device);
                assert_eq!(holders.iter().map(|h| h.pid).collect::<Vec<_>>(), [me()]);
                assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
                let message = Error::AlreadyServed {
                    resource: Resource::Device(d),
                    holders,
                    source,
                }
                .to_string();
                assert!(
                    message.starts_with(&format!(
                        "device {device} is already served by PID {} (",
                        me()
                    )),
                    "{message}"
                );
            }
            other => panic!("expected AlreadyServed for the device, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a live holder is not waited for"
        );
        // Another device on the same port: the port lock says no.
        match claim(&fresh_device(), listen, Duration::from_secs(5)) {
            Err(Error::AlreadyServed {
                resource: Resource::Port(port),
                holders,
                ..
            }) => {
                assert_eq!(port, listen.port());
                assert_eq!(holders[0].pid, me());
            }
            other => panic!("expected AlreadyServed for the port, got {other:?}"),
        }
        // The same port number on another address is refused too: the lock is the port alone.
        let elsewhere = SocketAddr::new("127.0.0.2".parse().unwrap(), listen.port());
        assert!(matches!(
            claim(&fresh_device(), elsewhere, Duration::ZERO),
            Err(Error::AlreadyServed {
                resource: Resource::Port(_),
                ..
            })
        ));
        assert_eq!(first.waited(), Duration::ZERO, "nothing was in the way");
        drop(first);
        claim(&device, listen, Duration::ZERO).expect("free again once the first is dropped");
    }

    #[test]
    fn the_lock_sockets_are_close_on_exec_and_refuse_connections() {
        let device = fresh_device();
        let ownership = claim(&device, free_port(), Duration::ZERO).unwrap();
        for fd in [&ownership._device, ownership._port.as_ref().unwrap()] {
            // SAFETY: F_GETFD on an fd this test owns.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
        let name = Resource::Device(device).lock_name();
        let address =
            <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
                name.as_bytes(),
            )
            .unwrap();
        let refused = UnixStream::connect_addr(&address).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn port_zero_claims_no_port() {
        let first = claim(
            &fresh_device(),
            "127.0.0.1:0".parse().unwrap(),
            Duration::ZERO,
        )
        .unwrap();
        assert!(first._port.is_none());
        claim(
            &fresh_device(),
            "127.0.0.1:0".parse().unwrap(),
            Duration::ZERO,
        )
        .unwrap();
    }

    #[test]
    fn a_port_held_by_a_plain_udp_socket_is_reported_with_this_pid() {
        let held = UdpSocket::bind("127.0.0.1:0").unwrap();
        let listen = held.local_addr().unwrap();
        for asked in [
            listen,
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), listen.port()),
        ] {
            let started = Instant::now();
            match claim(&fresh_device(), asked, Duration::from_secs(5)) {
                Err(Error::PortInUse {
                    address,
                    holders,
                    source,
                }) => {
                    assert_eq!(address, asked);
                    assert_eq!(holders.len(), 1, "{holders:?}");
                    assert_eq!(holders[0].pid, me());
                    assert!(!holders[0].exiting);
                    assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
                }
                other => panic!("expected PortInUse for {asked}, got {other:?}"),
            }
            assert!(started.elapsed() < Duration::from_secs(2));
        }
        // The lock of a failed claim is released: once the socket goes, the port can be claimed.
        drop(held);
        claim(&fresh_device(), listen, Duration::ZERO).expect("free once the socket is closed");
    }

    /// Sends `fd` over a fresh unix socket pair and closes it here: the file is then held only by
    /// the message in flight, which no /proc/PID/fd shows, as a killed relay's io_uring holds its
    /// sockets. Dropping the pair (its receiving end) releases it.
    fn park_in_flight(fd: OwnedFd) -> (UnixStream, UnixStream) {
        let (sender, receiver) = UnixStream::pair().unwrap();
        let raw = fd.as_raw_fd();
        let mut control = [0u64; 4];
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // SAFETY: msghdr is plain data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) } as _;
        // SAFETY: `msg` points at `control`, which has room for one cmsg with one int.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), raw);
        }
        // SAFETY: `msg` and everything it points to live across the call.
        let sent = unsafe { libc::sendmsg(sender.as_raw_fd(), &msg, 0) };
        assert_eq!(sent, 1, "{}", io::Error::last_os_error());
        drop(fd);
        (sender, receiver)
    }

    /// A UDP socket on a loopback port, held only in flight.
    fn leftover_socket() -> (SocketAddr, (UnixStream, UnixStream)) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = socket.local_addr().unwrap();
        (address, park_in_flight(OwnedFd::from(socket)))
    }

    #[test]
    fn a_leftover_socket_that_goes_within_the_wait_is_waited_for() {
        let (listen, pair) = leftover_socket();
        assert!(
            UdpSocket::bind(listen).is_err(),
            "the in-flight socket keeps the port"
        );
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(pair);
        });
        let started = Instant::now();
        let ownership = claim(&fresh_device(), listen, Duration::from_secs(5));
        let took = started.elapsed();
        closer.join().unwrap();
        let ownership = ownership.expect("the leftover went within the wait");
        assert!(took >= Duration::from_millis(190), "claimed after {took:?}");
        assert!(ownership.waited() >= Duration::from_millis(190) && ownership.waited() <= took);
        assert!(took < Duration::from_secs(2), "claimed after {took:?}");
    }

    #[test]
    fn a_leftover_socket_that_stays_is_reported_after_the_wait() {
        let (listen, _pair) = leftover_socket();
        let wait = Duration::from_millis(300);
        let started = Instant::now();
        let result = claim(&fresh_device(), listen, wait);
        let took = started.elapsed();
        match result {
            Err(Error::StillHeld {
                resource: Resource::Port(port),
                waited,
                remains: Remains::Sockets { count: 1 },
                source: Some(source),
            }) => {
                assert_eq!(port, listen.port());
                assert!(waited >= wait && waited < wait * 3, "{waited:?}");
                assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
            }
            other => panic!("expected StillHeld with one socket, got {other:?}"),
        }
        assert!(took >= wait && took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn a_wait_of_zero_looks_once() {
        let (listen, _pair) = leftover_socket();
        let started = Instant::now();
        assert!(matches!(
            claim(&fresh_device(), listen, Duration::ZERO),
            Err(Error::StillHeld { .. })
        ));
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    /// The environment variable that makes [`hold_a_lock_until_killed`] hold a lock.
    const HOLD: &str = "TUNFWD_TEST_HOLD_LOCK";

    /// Not a test of its own: the child process of
    /// [`a_lock_held_by_a_killed_process_is_free_once_it_has_exited`]. Without `HOLD` it does
    /// nothing.
    #[test]
    #[ignore = "a helper process for another test"]
    fn hold_a_lock_until_killed() {
        let Ok(device) = std::env::var(HOLD) else {
            return;
        };
        let _held = claim(&device, "127.0.0.1:0".parse().unwrap(), Duration::ZERO).unwrap();
        println!("holding");
        // Bounded: the parent kills it long before.
        std::thread::sleep(Duration::from_secs(30));
    }

    #[test]
    fn a_lock_held_by_a_killed_process_is_free_once_it_has_exited() {
        let device = fresh_device();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sys::owner::tests::hold_a_lock_until_killed",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HOLD, &device)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let child_pid = child.id();
        let kill = |child: &mut std::process::Child| {
            let _ = child.kill();
            let _ = child.wait();
        };
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // The harness prints `test NAME ... ` before the helper's own line, on the same line.
        if !lines.any(|l| l.is_ok_and(|l| l.trim_end().ends_with(" holding"))) {
            kill(&mut child);
            panic!("the helper never held the lock");
        }
        // Held by a live process: named, at once.
        match claim(
            &device,
            "127.0.0.1:0".parse().unwrap(),
            Duration::from_secs(5),
        ) {
            Err(Error::AlreadyServed { holders, .. }) => {
                assert_eq!(holders.len(), 1);
                assert_eq!(holders[0].pid, child_pid);
                assert!(
                    holders[0].command.contains("hold_a_lock_until_killed"),
                    "{holders:?}"
                );
            }
            other => {
                kill(&mut child);
                panic!("expected AlreadyServed by the helper, got {other:?}");
            }
        }
        // SIGKILL, and claim at once without reaping it: an exiting holder is waited for, and
        // the kernel frees the name as the process's files close, before it is even reaped.
        // SAFETY: kill(2) of the child this test started and has not reaped.
        unsafe { libc::kill(child_pid as libc::pid_t, libc::SIGKILL) };
        let started = Instant::now();
        let claimed = claim(
            &device,
            "127.0.0.1:0".parse().unwrap(),
            Duration::from_secs(5),
        );
        let took = started.elapsed();
        kill(&mut child);
        claimed.expect("the killed holder's lock is free");
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }
}
