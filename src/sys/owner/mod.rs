//! Exclusive ownership of the TUN device and the UDP port, claimed before either is opened.
//!
//! Why: a TUN queue is attached without `IFF_TUN_EXCL` and the UDP port is joined with
//! `SO_REUSEPORT`, both on purpose (one queue and one socket per worker). So a second relay on the
//! same `--dev` or port silently joins the first one's device and reuseport group, and its
//! steering program sends flows to sockets and queues nobody reads. [`claim`] makes that a clear
//! failure at startup instead, and waits out what a `kill -9`'d relay leaves behind.
//!
//! The locks are `flock(2)` locks on files in `/run/tunfwd`, a directory only root can write
//! (`locks` says why not abstract unix sockets, which any local user could bind first, and what is
//! checked): `net-INODE.dev-NAME.lock` and `net-INODE.udp-PORT.lock`, keyed by the inode of the
//! claiming thread's network namespace, since device names and ports are per namespace. The kernel
//! drops a flock when the last descriptor of its open file goes, so a relay that exits or is
//! killed frees its locks with its files (kernel/exit.c `do_exit` calls `exit_files`). A relay's
//! io_uring worker threads share its descriptor table, which goes with the last of them (with the
//! abstract-socket locks used before, 1 of 20 kill-and-restart cycles of tests/ownership.rs found
//! a lock still held 24 ms after the kill); its holder is then exiting, and is waited for like any
//! leftover. The lock files are only as shared as /run: relays in mount namespaces with /run
//! apart do not see each other's locks (the device and port checks below still do). The lock fds
//! are never handed to io_uring, so no ring keeps them alive; they are close-on-exec; and being
//! plain fds they survive the switch to `--user`. tunfwd never forks, so nothing inherits them.
//!
//! The holder writes its PID and command line into the file after it takes the lock, so a second
//! tunfwd names it even where /proc does not show it (systemd's `ProtectProc=invisible` hides a
//! relay that switched to `--user` from a root without `CAP_SYS_PTRACE`). A held lock means a live
//! holder: one /proc does not show is named at once from its file, never waited for.
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
//! Who holds a lock is what its file says, checked against /proc when /proc shows that PID. Who
//! holds the port or the device is found through /proc: the socket's inode (from /proc/net/udp{,6})
//! against the `socket:[INODE]` links in /proc/PID/fd; a TUN queue through the `iff:\tNAME` line
//! drivers/net/tun.c `tun_chr_show_fdinfo` writes in /proc/PID/fdinfo/FD, from a process with a
//! thread in this network namespace. The command comes from /proc/PID/cmdline, made printable
//! (control characters escaped) before any message quotes it. Reading another user's /proc/PID/fd
//! needs root with `CAP_SYS_PTRACE` (proc(5), ptrace access mode); tunfwd claims while still root.
//!
//! What is busy but held by no live process is what a killed relay leaves: after `kill -9`, its
//! io_uring instances are torn down asynchronously (io_uring/io_uring.c `io_ring_exit_work`), and
//! until then the requests in flight hold the files of its TUN queues and UDP sockets. Measured
//! here (Linux 6.18, a 2-queue relay on the uring engine, 10 kills): the relay was reaped 1.5 to
//! 2.6 ms after SIGKILL, its device went 32 to 51 ms after the kill and its UDP sockets 52 to 77
//! ms after. With 4 queues (tests/ownership.rs, 20 restarts started at once after the kill), the
//! new relay waited 47 to 50 ms for the old queues and 70 to 99 ms for the last old socket. A
//! holder that is exiting (SIGKILL pending, `PF_EXITING`, or a zombie) counts as leaving. [`claim`]
//! waits for such leftovers, looking again every 20 ms, for at most its `wait`; a live holder fails
//! at once, named. A holder that /proc does not show cannot be seen exiting, so a restart by hand
//! in such a /proc right after `kill -9` can fail once, naming the dying relay; systemd restarts a
//! unit only once its cgroup is empty.
//!
//! Never: this module opens no TUN queue and binds no relay socket; it only looks. Its decisions
//! (what a /proc line says, whether two addresses overlap, whether to wait) are pure functions
//! with table tests; the system calls are the thin layer around them. `locks` takes the lock
//! files, `device` asks rtnetlink about the device (through `sys::netlink`), `procfs` reads
//! /proc for the holders; this file decides, waits, and tests the whole on loopback.

mod device;
mod locks;
mod procfs;
#[doc(hidden)]
pub use procfs::fuzz_proc_text;

use super::Error;
use device::look_at_device;
use locks::{LockDir, look_at_lock};
use procfs::{
    NETWORK_NAMESPACE, network_namespace, overlaps, parse_udp_row, printable,
    processes_with_sockets, read_net_table, socket_inode,
};
use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use locks::RUNTIME_DIR;

/// How often a busy resource is looked at again while what holds it goes away.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What tunfwd claims: a TUN device by name, a UDP port by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Device(String),
    Port(u16),
}

impl Resource {
    /// The option an operator changes to avoid the conflict.
    pub(crate) fn option(&self) -> &'static str {
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
    /// Its command line, arguments joined by spaces (or `[comm]` when it has none), from /proc or
    /// from its lock file: text another process chose, shown escaped (`Display`).
    pub command: String,
    /// Killed or exiting: what it holds is about to go.
    pub exiting: bool,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Escaped here too, whoever built the holder: a newline or an ESC in a command line
        // would forge log lines or drive the terminal that shows the message.
        write!(
            f,
            "PID {} ({})",
            self.pid,
            printable(self.command.as_bytes())
        )
    }
}

/// Holders as `PID 1 (a), PID 2 (b)`.
pub(crate) struct HolderList<'a>(pub(crate) &'a [Holder]);

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
        }
    }
}

/// The device and port, held for as long as this value lives. Keep it for the life of the process
/// (`let _ownership = claim(..)?`; `let _ = ` would drop it at once). Dropping it, exiting or being
/// killed releases both.
#[derive(Debug)]
pub struct Ownership {
    _device: OwnedFd,
    /// The listen port's lock (none for port 0), then each extra port's.
    _ports: Vec<OwnedFd>,
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

/// Claims `device` and `listen`'s port for this process, before either is opened, with the lock
/// files in [`RUNTIME_DIR`] (created if missing; refused unless only root can write it).
///
/// Fails at once, naming the process, if another tunfwd serves either, if another live process
/// holds the port, or if a live process holds queues of the device. What is busy with no live
/// process behind it (a killed relay's device and sockets, which the kernel releases shortly) is
/// waited for, for at most `wait` in all, then reported. Port 0 (an ephemeral port) claims no port.
/// The device and port are those of the calling thread's network namespace.
///
/// `extra_ports` (the ports `--srcport` names, on `listen`'s address) are claimed the same way
/// as the listen port: the relay's sockets on them join with `SO_REUSEPORT` too, so another
/// program's socket there, or another tunfwd's, would otherwise be joined without a word.
pub fn claim(
    device: &str,
    listen: SocketAddr,
    extra_ports: &[u16],
    wait: Duration,
) -> Result<Ownership, Error> {
    claim_in(Path::new(RUNTIME_DIR), device, listen, extra_ports, wait)
}

/// [`claim`], with the lock files in `dir`.
fn claim_in(
    dir: &Path,
    device: &str,
    listen: SocketAddr,
    extra_ports: &[u16],
    wait: Duration,
) -> Result<Ownership, Error> {
    let started = Instant::now();
    let mut clock = Clock {
        started,
        deadline: started + wait,
        waited: false,
    };
    let device_resource = Resource::Device(device.to_string());
    let locks = LockDir::open(dir)?;
    let namespace = network_namespace().map_err(|source| Error::ClaimLock {
        resource: device_resource.clone(),
        path: PathBuf::from(NETWORK_NAMESPACE),
        source,
    })?;
    let device_lock = settle(&device_resource, &mut clock, || {
        look_at_lock(&locks, &device_resource, namespace)
    })?;
    let ports: Vec<u16> = std::iter::once(listen.port())
        .chain(extra_ports.iter().copied())
        .filter(|port| *port != 0)
        .collect();
    let mut port_locks = Vec::with_capacity(ports.len());
    for port in &ports {
        let resource = Resource::Port(*port);
        port_locks.push(settle(&resource, &mut clock, || {
            look_at_lock(&locks, &resource, namespace)
        })?);
    }
    settle(&device_resource, &mut clock, || look_at_device(device))?;
    for port in ports {
        let address = crate::sys::socket::with_port(listen, port);
        settle(&Resource::Port(port), &mut clock, || look_at_port(address))?;
    }
    Ok(Ownership {
        _device: device_lock,
        _ports: port_locks,
        waited: if clock.waited {
            started.elapsed()
        } else {
            Duration::ZERO
        },
    })
}

/// One look at a resource.
#[derive(Debug)]
pub(super) enum Look<T> {
    /// Nothing stands in the way; `T` is what was taken (a lock) or `()`.
    Free(T),
    Busy(Busy),
}

/// A resource something holds.
#[derive(Debug)]
pub(super) struct Busy {
    /// The processes found holding it, exiting ones included.
    pub(super) holders: Vec<Holder>,
    /// What to report if no live process holds it and it is still there when the wait ends.
    pub(super) remains: Remains,
    pub(super) conflict: Conflict,
}

/// How a resource was found busy, and so which error a live holder makes.
#[derive(Debug)]
pub(super) enum Conflict {
    /// Another process holds the lock file `lock`.
    Lock { resource: Resource, lock: PathBuf },
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
            Conflict::Lock { resource, lock } => Error::AlreadyServed {
                resource,
                holders,
                lock,
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
            Conflict::Port { source, .. } => Some(source),
            Conflict::Lock { .. } | Conflict::Device { .. } => None,
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

/// The UDP sockets of this process's user bound where they overlap `address` (its port;
/// /proc/net/udp and udp6 of this thread's network namespace), `ours` left out: their inodes.
/// After a reuseport group of the relay's binds a port it found free, such a socket shares it:
/// one that bound it with `SO_REUSEPORT` in between, which the kernel lets share the port
/// without a conflict only with sockets of the same user, and whose group the relay's sockets
/// then joined. Another user's socket there could not have been bound (EADDRINUSE) and coexists
/// without sharing anything (one with `IPV6_V6ONLY`, or bound to another device, which /proc
/// does not show), so it is not counted. Where /proc shows neither the tables nor this
/// process's own sockets, nothing can be told, and none is returned.
pub fn strangers_on(address: SocketAddr, ours: &[OwnedFd]) -> Vec<u64> {
    let resource = Resource::Port(address.port());
    let ours: Option<Vec<u64>> = ours
        .iter()
        .map(|fd| {
            let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
            socket_inode(&link)
        })
        .collect();
    let Some(ours) = ours else {
        return Vec::new();
    };
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::geteuid() };
    let mut strangers = Vec::new();
    for (table, ipv6) in [("udp", false), ("udp6", true)] {
        let Ok(text) = read_net_table(&resource, table) else {
            return Vec::new();
        };
        strangers.extend(
            text.lines()
                .filter_map(|line| parse_udp_row(line, ipv6))
                .filter(|row| {
                    row.uid == uid && overlaps(address, row.local) && !ours.contains(&row.inode)
                })
                .map(|row| row.inode),
        );
    }
    strangers
}

/// The live processes holding the sockets of `inodes` (through /proc), for a message.
pub fn socket_holders(inodes: &[u64]) -> Vec<Holder> {
    processes_with_sockets(inodes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::Ipv4Addr;
    use std::os::unix::fs::OpenOptionsExt;
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

    /// The test binary's file name, which its command line starts with (whatever test filter
    /// it was run with).
    fn this_program() -> String {
        std::env::current_exe()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// A lock directory of this test's own, standing in for /run/tunfwd (which only root may
    /// create): made 0755 here, owned by whoever runs the tests, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "tunfwd-owner-{}-{}",
                me(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            Scratch(dir)
        }

        fn claim(
            &self,
            device: &str,
            listen: SocketAddr,
            wait: Duration,
        ) -> Result<Ownership, Error> {
            claim_in(&self.0, device, listen, &[], wait)
        }

        /// The lock file of `resource` in this thread's network namespace.
        fn lock_file(&self, resource: &Resource) -> PathBuf {
            self.0.join(locks::lock_file_name(
                resource,
                network_namespace().unwrap(),
            ))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
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
                    lock: "/run/tunfwd/net-1.dev-tunfwd0.lock".into(),
                },
                "device tunfwd0 is already served by PID 1234 (tunfwd --dev tunfwd0 --peer \
                 198.18.0.2:55555). Stop that relay first, or choose another --dev",
            ),
            (
                Error::AlreadyServed {
                    resource: Resource::Port(55555),
                    holders: vec![tunfwd.clone()],
                    lock: "/run/tunfwd/net-1.udp-55555.lock".into(),
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
        let lock = Error::LockHeld {
            resource: Resource::Device("tunfwd0".into()),
            path: "/run/tunfwd/net-1.dev-tunfwd0.lock".into(),
            record: "77 tunfwd".into(),
        };
        assert_eq!(
            lock.to_string(),
            "device tunfwd0 is locked by a process this one cannot name: its lock file \
             /run/tunfwd/net-1.dev-tunfwd0.lock says \"77 tunfwd\". Stop what holds it (`fuser \
             -v /run/tunfwd/net-1.dev-tunfwd0.lock`), or choose another --dev"
        );
        let denied = || io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(
            Error::LockDirectory {
                path: "/run/tunfwd".into(),
                source: denied(),
            }
            .to_string(),
            "cannot keep the device and port locks in /run/tunfwd: Permission denied (os error \
             13). Run tunfwd as root, or make the directory, owned by the user tunfwd runs as and \
             writable by no one else (the unit's RuntimeDirectory=tunfwd and \
             contrib/systemd/tunfwd.tmpfiles make it for root)"
        );
        assert_eq!(
            Error::ClaimLock {
                resource: Resource::Port(55555),
                path: "/run/tunfwd/net-1.udp-55555.lock".into(),
                source: denied(),
            }
            .to_string(),
            "cannot claim UDP port 55555 (/run/tunfwd/net-1.udp-55555.lock): Permission denied \
             (os error 13). The lock files are their directory owner's: run tunfwd as root (or \
             as that user)"
        );
        let empty = Error::LockHeld {
            resource: Resource::Port(1),
            path: "/run/tunfwd/net-1.udp-1.lock".into(),
            record: String::new(),
        };
        assert!(
            empty
                .to_string()
                .contains("its lock file /run/tunfwd/net-1.udp-1.lock is empty."),
            "{empty}"
        );
        // A command line is shown escaped whoever built the holder: one line, no terminal codes.
        let forged = Error::AlreadyServed {
            resource: Resource::Device("tunfwd0".into()),
            holders: vec![Holder {
                pid: 66,
                command: "squat.py\ntunfwd: tunfwd0 up: \x1b[2J".into(),
                exiting: false,
            }],
            lock: "/run/tunfwd/net-1.dev-tunfwd0.lock".into(),
        }
        .to_string();
        assert_eq!(
            forged,
            "device tunfwd0 is already served by PID 66 (squat.py\\ntunfwd: tunfwd0 up: \
             \\u{1b}[2J). Stop that relay first, or choose another --dev"
        );
    }

    // --- the kernel, on loopback, without root ---

    #[test]
    fn a_second_claim_in_this_process_fails_naming_this_pid() {
        let locks = Scratch::new();
        let device = fresh_device();
        let listen = free_port();
        let first = locks
            .claim(&device, listen, Duration::from_secs(1))
            .expect("the first claim");
        let started = Instant::now();
        match locks.claim(&device, listen, Duration::from_secs(5)) {
            Err(Error::AlreadyServed {
                resource: Resource::Device(d),
                holders,
                lock,
            }) => {
                assert_eq!(d, device);
                assert_eq!(holders.iter().map(|h| h.pid).collect::<Vec<_>>(), [me()]);
                assert_eq!(lock, locks.lock_file(&Resource::Device(device.clone())));
                let message = Error::AlreadyServed {
                    resource: Resource::Device(d),
                    holders,
                    lock,
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
        match locks.claim(&fresh_device(), listen, Duration::from_secs(5)) {
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
            locks.claim(&fresh_device(), elsewhere, Duration::ZERO),
            Err(Error::AlreadyServed {
                resource: Resource::Port(_),
                ..
            })
        ));
        assert_eq!(first.waited(), Duration::ZERO, "nothing was in the way");
        drop(first);
        locks
            .claim(&device, listen, Duration::ZERO)
            .expect("free again once the first is dropped");
    }

    /// After a group binds a port, the sockets of others there are found, this process's own
    /// other socket included (a same-user reuseport socket the group joined without a conflict).
    #[test]
    fn strangers_on_a_port_are_the_sockets_besides_ours() {
        let reuseport = |port: u16| {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            socket.set_reuse_port(true).unwrap();
            socket
                .bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
                .unwrap();
            OwnedFd::from(socket)
        };
        let stranger = reuseport(0);
        let address = SocketAddr::from((
            [127, 0, 0, 1],
            crate::sys::socket::local_port(&stranger).unwrap(),
        ));
        let ours = vec![reuseport(address.port()), reuseport(address.port())];
        let link = std::fs::read_link(format!("/proc/self/fd/{}", stranger.as_raw_fd())).unwrap();
        let inode = socket_inode(&link).unwrap();
        assert_eq!(strangers_on(address, &ours), vec![inode]);
        assert_eq!(
            socket_holders(&[inode])
                .iter()
                .map(|h| h.pid)
                .collect::<Vec<_>>(),
            [me()]
        );
        drop(stranger);
        assert_eq!(strangers_on(address, &ours), Vec::<u64>::new());
        // On another address of the port, nothing overlaps.
        let elsewhere = SocketAddr::from(([127, 0, 0, 2], address.port()));
        assert_eq!(strangers_on(elsewhere, &[]), Vec::<u64>::new());
    }

    /// The ports `--srcport` names are claimed as the listen port is: one another relay serves
    /// (its listen port), or one any live socket holds (a reuseport group of this process's
    /// included, which a relay's sockets would otherwise join), fails at once, naming it.
    #[test]
    fn an_extra_port_another_relay_serves_or_a_socket_holds_fails_naming_it() {
        let locks = Scratch::new();
        let first_listen = free_port();
        let _first = locks
            .claim(&fresh_device(), first_listen, Duration::ZERO)
            .expect("the first relay's claim");
        let listen = free_port();
        match claim_in(
            &locks.0,
            &fresh_device(),
            listen,
            &[first_listen.port()],
            Duration::from_secs(5),
        ) {
            Err(Error::AlreadyServed {
                resource: Resource::Port(port),
                holders,
                ..
            }) => {
                assert_eq!(port, first_listen.port());
                assert_eq!(holders[0].pid, me());
            }
            other => panic!("expected AlreadyServed for the extra port, got {other:?}"),
        }
        let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        held.set_reuse_port(true).unwrap();
        held.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let held_port = held.local_addr().unwrap().as_socket().unwrap().port();
        let started = Instant::now();
        match claim_in(
            &locks.0,
            &fresh_device(),
            listen,
            &[held_port],
            Duration::from_secs(5),
        ) {
            Err(Error::PortInUse {
                address, holders, ..
            }) => {
                assert_eq!(address, SocketAddr::new(listen.ip(), held_port));
                assert_eq!(holders.iter().map(|h| h.pid).collect::<Vec<_>>(), [me()]);
            }
            other => panic!("expected PortInUse for the extra port, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a live holder is not waited for"
        );
        drop(held);
        let ownership = claim_in(
            &locks.0,
            &fresh_device(),
            listen,
            &[held_port],
            Duration::ZERO,
        )
        .expect("free once the socket is closed");
        assert_eq!(
            ownership._ports.len(),
            2,
            "the listen port's lock and the extra one's"
        );
    }

    #[test]
    fn lock_files_are_private_close_on_exec_and_name_their_holder() {
        let locks = Scratch::new();
        let device = fresh_device();
        let listen = free_port();
        let ownership = locks.claim(&device, listen, Duration::ZERO).unwrap();
        let files = [
            (
                &ownership._device,
                locks.lock_file(&Resource::Device(device.clone())),
            ),
            (
                &ownership._ports[0],
                locks.lock_file(&Resource::Port(listen.port())),
            ),
        ];
        for (fd, path) in files {
            // SAFETY: F_GETFD on an fd this test owns.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert!(meta.is_file());
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
                0o600,
                "{}: a lock file others can open is a lock they can take",
                path.display()
            );
            let record = std::fs::read_to_string(&path).unwrap();
            let (pid, command) = record.trim_end().split_once(' ').unwrap();
            assert_eq!(pid, me().to_string(), "{record:?}");
            assert!(command.contains(&this_program()), "{record:?}");
            assert_eq!(record.lines().count(), 1, "{record:?}");
        }
        // The lock is the open file's: another open of it (in this process, too) cannot take it.
        let again = std::fs::File::open(locks.lock_file(&Resource::Device(device))).unwrap();
        // SAFETY: flock(2) on a descriptor `again` owns.
        let taken = unsafe { libc::flock(again.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(taken, -1);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::EWOULDBLOCK)
        );
    }

    #[test]
    fn the_lock_directory_is_made_0755_and_refused_when_others_could_change_it() {
        let locks = Scratch::new();
        let dir = locks.0.join("run");
        let mode = |path: &Path| {
            std::os::unix::fs::PermissionsExt::mode(
                &std::fs::symlink_metadata(path).unwrap().permissions(),
            ) & 0o7777
        };
        let set = |path: &Path, mode| {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap()
        };
        // Missing: made, 0755 whatever the umask.
        claim_in(&dir, &fresh_device(), free_port(), &[], Duration::ZERO).unwrap();
        assert_eq!(mode(&dir), 0o755);
        for (unsafe_mode, says) in [
            (0o775, "its mode is 0775: its group may write it"),
            (
                0o1777,
                "its mode is 1777: its group and others may write it",
            ),
        ] {
            set(&dir, unsafe_mode);
            match claim_in(&dir, &fresh_device(), free_port(), &[], Duration::ZERO) {
                Err(e @ Error::UnsafeLockDirectory { .. }) => {
                    let message = e.to_string();
                    assert!(message.contains(says), "{message}");
                    assert!(
                        message.starts_with(&format!(
                            "refusing to keep the device and port locks in {}: ",
                            dir.display()
                        )),
                        "{message}"
                    );
                }
                other => panic!("expected UnsafeLockDirectory for {unsafe_mode:o}, got {other:?}"),
            }
        }
        set(&dir, 0o755);
        // A symlink to a good directory is not followed.
        let link = locks.0.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(
            claim_in(&link, &fresh_device(), free_port(), &[], Duration::ZERO),
            Err(Error::UnsafeLockDirectory { .. })
        ));
        // Another user's directory: only root can make one, so only root tests it.
        if effective_uid_is_root() {
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            match claim_in(&dir, &fresh_device(), free_port(), &[], Duration::ZERO) {
                Err(e @ Error::UnsafeLockDirectory { .. }) => {
                    assert!(
                        e.to_string().contains("owned by uid 65534, not root"),
                        "{e}"
                    )
                }
                other => panic!("expected UnsafeLockDirectory for uid 65534, got {other:?}"),
            }
        }
    }

    fn effective_uid_is_root() -> bool {
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_symlink_or_a_readable_file_in_place_of_a_lock_file_is_refused_never_followed() {
        let locks = Scratch::new();
        let device = fresh_device();
        let path = locks.lock_file(&Resource::Device(device.clone()));
        let target = locks.0.join("precious");
        std::fs::write(&target, "keep me\n").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        match locks.claim(&device, free_port(), Duration::ZERO) {
            Err(e @ Error::ClaimLock { .. }) => {
                assert!(e.to_string().contains("symbolic link"), "{e}")
            }
            other => panic!("expected ClaimLock for a symlink, got {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        match locks.claim(&device, free_port(), Duration::ZERO) {
            Err(e @ Error::ClaimLock { .. }) => assert!(
                e.to_string()
                    .contains("its mode is 0644: its group and others may read or write it"),
                "{e}"
            ),
            other => panic!("expected ClaimLock for a 0644 lock file, got {other:?}"),
        }
    }

    /// Takes `resource`'s lock file by hand, as some other process would, and writes `record`.
    fn hold_by_hand(locks: &Scratch, resource: &Resource, record: &str) -> std::fs::File {
        let path = locks.lock_file(resource);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .unwrap();
        // SAFETY: flock(2) on a descriptor `file` owns.
        let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(taken, 0, "{}", io::Error::last_os_error());
        std::io::Write::write_all(&mut &file, record.as_bytes()).unwrap();
        file
    }

    #[test]
    fn a_held_lock_is_named_as_its_file_says_and_only_a_nameless_one_is_looked_at_again() {
        let locks = Scratch::new();
        let device = fresh_device();
        let resource = Resource::Device(device.clone());
        let no_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        // Held, and its file names a process that exists (this one, which /proc shows): failed at
        // once, named by /proc, with a wait far longer than the look.
        let held = hold_by_hand(&locks, &resource, &format!("{} whatever\n", me()));
        let started = Instant::now();
        match locks.claim(&device, no_port, Duration::from_secs(5)) {
            Err(Error::AlreadyServed { holders, .. }) => {
                assert_eq!(holders.len(), 1);
                assert_eq!(holders[0].pid, me());
                assert!(!holders[0].exiting);
                assert!(holders[0].command.contains(&this_program()), "{holders:?}");
            }
            other => panic!("expected AlreadyServed, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(held);
        // Held, and its file names no process that exists (a PID above pid_max): looked at again
        // for IDENTIFY_WAIT, not for the whole wait, then reported as it reads.
        let nameless = (1u32 << 22) + 1;
        let forged = format!("{nameless} fake\x1b[2J\ntunfwd: forged line\n");
        let held = hold_by_hand(&locks, &resource, &forged);
        let started = Instant::now();
        let result = locks.claim(&device, no_port, Duration::from_secs(5));
        let took = started.elapsed();
        match result {
            Err(e @ Error::LockHeld { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains(&format!("says \"{nameless} fake\\u{{1b}}[2J\"")),
                    "{message}"
                );
                assert!(
                    !message.contains('\n') && !message.contains('\x1b'),
                    "{message}"
                );
            }
            other => panic!("expected LockHeld, got {other:?}"),
        }
        assert!(
            took >= locks::IDENTIFY_WAIT && took < Duration::from_secs(2),
            "took {took:?}"
        );
        // A holder that has just taken the lock and not yet written its name (an empty file)
        // writes it meanwhile: then it is named.
        held.set_len(0).unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::os::unix::fs::FileExt::write_all_at(
                &held,
                format!("{} late\n", me()).as_bytes(),
                0,
            )
            .unwrap();
            held
        });
        let started = Instant::now();
        let result = locks.claim(&device, no_port, Duration::from_secs(5));
        let held = writer.join().unwrap();
        let took = started.elapsed();
        match result {
            Err(Error::AlreadyServed { holders, .. }) => assert_eq!(holders[0].pid, me()),
            other => panic!("expected AlreadyServed once named, got {other:?}"),
        }
        assert!(took < locks::IDENTIFY_WAIT, "took {took:?}");
        drop(held);
        locks
            .claim(&device, no_port, Duration::ZERO)
            .expect("free once the hand-held lock is closed");
    }

    #[test]
    fn port_zero_claims_no_port() {
        let locks = Scratch::new();
        let first = locks
            .claim(
                &fresh_device(),
                "127.0.0.1:0".parse().unwrap(),
                Duration::ZERO,
            )
            .unwrap();
        assert!(first._ports.is_empty());
        locks
            .claim(
                &fresh_device(),
                "127.0.0.1:0".parse().unwrap(),
                Duration::ZERO,
            )
            .unwrap();
    }

    #[test]
    fn a_port_held_by_a_plain_udp_socket_is_reported_with_this_pid() {
        let locks = Scratch::new();
        let held = UdpSocket::bind("127.0.0.1:0").unwrap();
        let listen = held.local_addr().unwrap();
        for asked in [
            listen,
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), listen.port()),
        ] {
            let started = Instant::now();
            match locks.claim(&fresh_device(), asked, Duration::from_secs(5)) {
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
        locks
            .claim(&fresh_device(), listen, Duration::ZERO)
            .expect("free once the socket is closed");
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
        let locks = Scratch::new();
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
        let ownership = locks.claim(&fresh_device(), listen, Duration::from_secs(5));
        let took = started.elapsed();
        closer.join().unwrap();
        let ownership = ownership.expect("the leftover went within the wait");
        assert!(took >= Duration::from_millis(190), "claimed after {took:?}");
        assert!(ownership.waited() >= Duration::from_millis(190) && ownership.waited() <= took);
        assert!(took < Duration::from_secs(2), "claimed after {took:?}");
    }

    #[test]
    fn a_leftover_socket_that_stays_is_reported_after_the_wait() {
        let locks = Scratch::new();
        let (listen, _pair) = leftover_socket();
        let wait = Duration::from_millis(300);
        let started = Instant::now();
        let result = locks.claim(&fresh_device(), listen, wait);
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
        let locks = Scratch::new();
        let (listen, _pair) = leftover_socket();
        let started = Instant::now();
        assert!(matches!(
            locks.claim(&fresh_device(), listen, Duration::ZERO),
            Err(Error::StillHeld { .. })
        ));
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    /// The environment variables that make [`hold_a_lock_until_killed`] hold a device's lock, and
    /// say in which directory.
    const HOLD: &str = "TUNFWD_TEST_HOLD_LOCK";
    const HOLD_IN: &str = "TUNFWD_TEST_HOLD_LOCK_IN";

    /// Not a test of its own: the child process of
    /// [`a_lock_held_by_a_killed_process_is_free_once_it_has_exited`]. Without `HOLD` it does
    /// nothing.
    #[test]
    #[ignore = "a helper process for another test"]
    fn hold_a_lock_until_killed() {
        let (Ok(device), Some(dir)) = (std::env::var(HOLD), std::env::var_os(HOLD_IN)) else {
            return;
        };
        let no_port = "127.0.0.1:0".parse().unwrap();
        let _held = claim_in(Path::new(&dir), &device, no_port, &[], Duration::ZERO).unwrap();
        println!("holding");
        // Bounded: the parent kills it long before.
        std::thread::sleep(Duration::from_secs(30));
    }

    #[test]
    fn a_lock_held_by_a_killed_process_is_free_once_it_has_exited() {
        let locks = Scratch::new();
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
            .env(HOLD_IN, &locks.0)
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
        match locks.claim(
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
        // the kernel drops the lock as the process's files close, before it is even reaped.
        // SAFETY: kill(2) of the child this test started and has not reaped.
        unsafe { libc::kill(child_pid as libc::pid_t, libc::SIGKILL) };
        let started = Instant::now();
        let claimed = locks.claim(
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
