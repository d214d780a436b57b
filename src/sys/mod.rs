//! The system-call edge: TUN ioctls, interface configuration, socket options, signals.
//!
//! Everything here turns raw fds into `OwnedFd` right after the `< 0` check, so no error path leaks
//! one. Kernel constants come from `libc`; any it lacks are defined once here, naming their header.
//! Errors keep their `io::Error` source and say which device, queue or address they concern, plus
//! what an operator can do about the common causes.

pub mod link;
pub mod netlink;
pub mod owner;
pub mod privileges;
pub mod random;
pub mod signal;
pub mod socket;
pub mod tun;

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

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

/// A setup step that failed. One variant per operation; each keeps the OS error.
#[derive(Debug)]
pub enum Error {
    OpenTun(io::Error),
    CreateQueue {
        device: String,
        queue: usize,
        source: io::Error,
    },
    SetVnetHeaderSize {
        device: String,
        source: io::Error,
    },
    SetOffload {
        device: String,
        source: io::Error,
    },
    InterfaceIndex {
        device: String,
        source: io::Error,
    },
    SetTxQueueLen {
        device: String,
        packets: u32,
        source: io::Error,
    },
    SetGsoMaxSize {
        device: String,
        bytes: u32,
        source: io::Error,
    },
    SetGsoMaxSegments {
        device: String,
        segments: u32,
        source: io::Error,
    },
    SetMtu {
        device: String,
        mtu: u32,
        source: io::Error,
    },
    SetLinkUp {
        device: String,
        source: io::Error,
    },
    AddAddress {
        device: String,
        address: IpAddr,
        source: io::Error,
    },
    Socket {
        address: SocketAddr,
        source: io::Error,
    },
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
    ReusePortProgram(io::Error),
    IoUring {
        queue: usize,
        source: io::Error,
    },
    IoUringFeature {
        queue: usize,
        feature: &'static str,
        source: io::Error,
    },
    RegisterBuffers {
        queue: usize,
        source: io::Error,
    },
    Pin {
        queue: usize,
        cpu: usize,
    },
    Signals(io::Error),
    /// Workers that ended during setup without reporting (a panic; its message is above).
    WorkerLost {
        missing: usize,
    },
    /// Binding the `--metrics` listener.
    MetricsListen {
        address: SocketAddr,
        source: io::Error,
    },
    /// One step of switching to `--user` (`setgroups`, `setgid` or `setuid`).
    DropPrivileges {
        user: String,
        step: &'static str,
        source: io::Error,
    },
    /// Reading the threads' credentials back after the switch.
    CheckPrivileges(io::Error),
    /// A thread that still has another uid or gid, or a capability, after the switch.
    PrivilegesRemain {
        thread: u32,
        uid: u32,
        gid: u32,
        capabilities: u64,
    },
    /// Writing the first stats report, which proves `--stats-json` is writable.
    StatsFile {
        path: std::path::PathBuf,
        source: io::Error,
    },
    /// No engine that was asked for can run here (`crate::engine::choose` says why).
    Engine(String),
    /// Creating or binding the abstract unix socket that marks a device or port as this relay's,
    /// for a reason other than another holding it (`owner::claim`).
    ClaimLock {
        resource: owner::Resource,
        source: io::Error,
    },
    /// Another tunfwd, alive, holds the lock on the device or port.
    AlreadyServed {
        resource: owner::Resource,
        holders: Vec<owner::Holder>,
        source: io::Error,
    },
    /// Live processes hold sockets bound to the listen address's port (found by a test bind).
    PortInUse {
        address: SocketAddr,
        holders: Vec<owner::Holder>,
        source: io::Error,
    },
    /// Live processes hold queues of the TUN device.
    DeviceInUse {
        device: String,
        holders: Vec<owner::Holder>,
    },
    /// The device, port or lock was still taken, by no live process, when the wait ran out.
    StillHeld {
        resource: owner::Resource,
        waited: std::time::Duration,
        remains: owner::Remains,
        source: Option<io::Error>,
    },
    /// Reading /proc to find what holds the device or port.
    FindHolders {
        resource: owner::Resource,
        path: std::path::PathBuf,
        source: io::Error,
    },
    /// Asking rtnetlink whether the device exists, is a TUN and has queues attached.
    QueryDevice {
        device: String,
        source: io::Error,
    },
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

const NEED_ROOT: &str = "run tunfwd as root, or give it CAP_NET_ADMIN";

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::OpenTun(e) if e.kind() == io::ErrorKind::NotFound => write!(
                f,
                "cannot open /dev/net/tun: {e}. Load the tun module (modprobe tun) or create the node \
                 (mknod /dev/net/tun c 10 200)"
            ),
            Error::OpenTun(e) if is_permission(e) => {
                write!(f, "cannot open /dev/net/tun: {e}. {NEED_ROOT}")
            }
            Error::OpenTun(e) => write!(f, "cannot open /dev/net/tun: {e}"),
            Error::CreateQueue {
                device,
                queue,
                source,
            } if is_permission(source) => {
                write!(
                    f,
                    "cannot create TUN device {device} (queue {queue}): {source}. {NEED_ROOT}"
                )
            }
            Error::CreateQueue {
                device,
                queue,
                source,
            } if source.raw_os_error() == Some(libc::EINVAL) => {
                write!(
                    f,
                    "cannot attach queue {queue} of {device}: {source}. A device of that name exists with \
                     other flags; tunfwd needs a multiqueue TUN with vnet headers. Delete it \
                     (ip link del {device}) or choose another --dev"
                )
            }
            Error::CreateQueue {
                device,
                queue,
                source,
            } => {
                write!(
                    f,
                    "cannot create queue {queue} of TUN device {device}: {source}"
                )
            }
            Error::SetVnetHeaderSize { device, source } => {
                write!(f, "cannot set the vnet header size on {device}: {source}")
            }
            Error::SetOffload { device, source } => {
                write!(f, "cannot set offloads on {device}: {source}")
            }
            Error::InterfaceIndex { device, source } => {
                write!(f, "cannot find interface {device}: {source}")
            }
            Error::SetMtu {
                device,
                mtu,
                source,
            } => write!(f, "cannot set MTU {mtu} on {device}: {source}"),
            Error::SetGsoMaxSize {
                device,
                bytes,
                source,
            } => write!(
                f,
                "cannot cap the GSO size of {device} at {bytes} bytes: {source}"
            ),
            Error::SetGsoMaxSegments {
                device,
                segments,
                source,
            } => write!(
                f,
                "cannot cap the GSO segment count of {device} at {segments}: {source}"
            ),
            Error::SetTxQueueLen {
                device,
                packets,
                source,
            } => {
                write!(
                    f,
                    "cannot set the transmit queue length of {device} to {packets}: {source}"
                )
            }
            Error::SetLinkUp { device, source } => write!(f, "cannot bring {device} up: {source}"),
            Error::AddAddress {
                device,
                address,
                source,
            } => {
                write!(f, "cannot add address {address} to {device}: {source}")
            }
            Error::Socket { address, source } => {
                write!(f, "cannot create a UDP socket for {address}: {source}")
            }
            Error::Bind { address, source } if source.kind() == io::ErrorKind::AddrInUse => write!(
                f,
                "cannot listen on {address}: {source}. Another program (or another tunfwd) holds the port; \
                 choose another with --listen"
            ),
            Error::Bind { address, source } => write!(f, "cannot listen on {address}: {source}"),
            Error::ReusePortProgram(e) => write!(f, "cannot attach the flow-steering program: {e}"),
            Error::IoUring { queue, source } => {
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EACCES)
                ) {
                    write!(
                        f,
                        "io_uring is unavailable (queue {queue}): {source}. It is disabled by the sysctl \
                         kernel.io_uring_disabled or by a seccomp profile (containers, LXC); run with \
                         --engine poll (or auto), or set kernel.io_uring_disabled=0 or allow io_uring_setup"
                    )
                } else {
                    write!(f, "cannot set up io_uring for queue {queue}: {source}")
                }
            }
            Error::IoUringFeature {
                queue,
                feature,
                source,
            } => write!(
                f,
                "queue {queue}: this kernel's io_uring lacks {feature}: {source}. tunfwd needs Linux 6.7 or later"
            ),
            Error::RegisterBuffers { queue, source } => write!(
                f,
                "queue {queue}: cannot register io_uring buffer rings: {source}. tunfwd needs Linux 6.7 or later"
            ),
            Error::Pin { queue, cpu } => write!(f, "cannot pin queue {queue} to CPU {cpu}"),
            Error::Signals(e) => write!(f, "cannot set up signal handling: {e}"),
            Error::WorkerLost { missing } => write!(
                f,
                "{missing} worker(s) died during setup without reporting (a bug: see the panic above)"
            ),
            Error::MetricsListen { address, source }
                if source.kind() == io::ErrorKind::AddrInUse =>
            {
                write!(
                    f,
                    "cannot serve metrics on {address}: {source}. Another program holds the port; \
                     choose another with --metrics"
                )
            }
            Error::MetricsListen { address, source }
                if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) =>
            {
                write!(
                    f,
                    "cannot serve metrics on {address}: {source}. {} is not an address of this host",
                    address.ip()
                )
            }
            Error::MetricsListen { address, source } => {
                write!(f, "cannot serve metrics on {address}: {source}")
            }
            Error::DropPrivileges { user, step, source } if is_permission(source) => write!(
                f,
                "cannot switch to user {user} ({step}): {source}. --user needs tunfwd to start as \
                 root"
            ),
            Error::DropPrivileges { user, step, source } => {
                write!(f, "cannot switch to user {user} ({step}): {source}")
            }
            Error::CheckPrivileges(e) => write!(
                f,
                "cannot read the threads' credentials back from /proc/self/task: {e}"
            ),
            Error::PrivilegesRemain {
                thread,
                uid,
                gid,
                capabilities,
            } => write!(
                f,
                "after switching users, thread {thread} has uid {uid}, gid {gid} and capabilities \
                 {capabilities:#x}; refusing to run with privileges it was told to drop (--user \
                 clears capabilities only when tunfwd starts as root)"
            ),
            Error::StatsFile { path, source } if is_permission(source) => write!(
                f,
                "cannot write the stats report to {}: {source}. Its directory must be writable by \
                 the user tunfwd runs as (see --user)",
                path.display()
            ),
            Error::StatsFile { path, source } => {
                write!(
                    f,
                    "cannot write the stats report to {}: {source}",
                    path.display()
                )
            }
            Error::Engine(why) => f.write_str(why),
            Error::ClaimLock { .. }
            | Error::AlreadyServed { .. }
            | Error::PortInUse { .. }
            | Error::DeviceInUse { .. }
            | Error::StillHeld { .. }
            | Error::FindHolders { .. }
            | Error::QueryDevice { .. } => owner::describe(self, f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::OpenTun(e)
            | Error::ReusePortProgram(e)
            | Error::Signals(e)
            | Error::CreateQueue { source: e, .. }
            | Error::SetVnetHeaderSize { source: e, .. }
            | Error::SetOffload { source: e, .. }
            | Error::InterfaceIndex { source: e, .. }
            | Error::SetMtu { source: e, .. }
            | Error::SetTxQueueLen { source: e, .. }
            | Error::SetGsoMaxSize { source: e, .. }
            | Error::SetGsoMaxSegments { source: e, .. }
            | Error::SetLinkUp { source: e, .. }
            | Error::AddAddress { source: e, .. }
            | Error::Socket { source: e, .. }
            | Error::Bind { source: e, .. }
            | Error::IoUring { source: e, .. }
            | Error::IoUringFeature { source: e, .. }
            | Error::RegisterBuffers { source: e, .. }
            | Error::MetricsListen { source: e, .. }
            | Error::DropPrivileges { source: e, .. }
            | Error::CheckPrivileges(e)
            | Error::StatsFile { source: e, .. } => Some(e),
            Error::Pin { .. }
            | Error::WorkerLost { .. }
            | Error::PrivilegesRemain { .. }
            | Error::Engine(_) => None,
            Error::ClaimLock { .. }
            | Error::AlreadyServed { .. }
            | Error::PortInUse { .. }
            | Error::DeviceInUse { .. }
            | Error::StillHeld { .. }
            | Error::FindHolders { .. }
            | Error::QueryDevice { .. } => owner::source(self),
        }
    }
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
