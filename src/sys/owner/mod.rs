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
//! with table tests; the system calls are the thin layer around them. `locks` takes the abstract
//! sockets, `device` asks rtnetlink about the device (through `sys::netlink`), `procfs` reads
//! /proc for the holders; this file decides, waits, and tests the whole on loopback.

mod device;
mod locks;
mod procfs;

use super::Error;
use device::look_at_device;
use locks::look_at_lock;
use procfs::{overlaps, parse_udp_row, processes_with_sockets, read_net_table};
use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// How often a busy resource is looked at again while what holds it goes away.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What tunfwd claims: a TUN device by name, a UDP port by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Device(String),
    Port(u16),
}

impl Resource {
    /// The abstract socket name that marks this resource as a tunfwd's (without the leading NUL).
    pub(crate) fn lock_name(&self) -> String {
        match self {
            Resource::Device(name) => format!("tunfwd/dev/{name}"),
            Resource::Port(port) => format!("tunfwd/udp/{port}"),
        }
    }

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
    use std::os::fd::AsRawFd;
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
