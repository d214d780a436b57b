//! [`Error`]: every setup step that can fail, one variant per operation, each keeping the OS
//! error it failed with and naming the device, queue, CPU or address it concerns.
//!
//! The messages are for an operator: where a common cause has a known remedy (no root, no tun
//! module, a port another program holds) the message says what to do. `thiserror` writes the
//! `Display` and `source` impls from the `#[error]` attributes; the few messages whose wording
//! depends on the errno take a hint from a function below, or, where the whole sentence changes,
//! are written by one (`#[error(fmt = ...)]`).

use super::link::LinkChange;
use super::owner::{self, HolderList};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A setup step that failed. One variant per operation; each keeps the OS error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/net/tun: {0}{hint}", hint = open_tun_hint(.0))]
    OpenTun(#[source] io::Error),
    #[error(fmt = create_queue_message)]
    CreateQueue {
        device: String,
        queue: usize,
        source: io::Error,
    },
    #[error("cannot set the vnet header size on {device}: {source}")]
    SetVnetHeaderSize { device: String, source: io::Error },
    #[error("cannot set offloads on {device}: {source}")]
    SetOffload { device: String, source: io::Error },
    #[error("cannot find interface {device}: {source}")]
    InterfaceIndex { device: String, source: io::Error },
    #[error("cannot cap the GSO size of {device} at {bytes} bytes: {source}")]
    SetGsoMaxSize {
        device: String,
        bytes: u32,
        source: io::Error,
    },
    #[error("cannot cap the GSO segment count of {device} at {segments}: {source}")]
    SetGsoMaxSegments {
        device: String,
        segments: u32,
        source: io::Error,
    },
    #[error("cannot set MTU {mtu} on {device}: {source}")]
    SetMtu {
        device: String,
        mtu: u32,
        source: io::Error,
    },
    #[error("cannot bring {device} up: {source}")]
    SetLinkUp { device: String, source: io::Error },
    /// The one `RTM_NEWLINK` that sets a device's MTU and transmit queue length and brings it up
    /// (`link::configure`).
    #[error("cannot configure {device} ({change}): {source}")]
    ConfigureLink {
        device: String,
        change: LinkChange,
        source: io::Error,
    },
    #[error("cannot add address {address} to {device}: {source}")]
    AddAddress {
        device: String,
        address: IpAddr,
        source: io::Error,
    },
    #[error("cannot create a UDP socket for {address}: {source}")]
    Socket {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("cannot listen on {address}: {source}{hint}", hint = bind_hint(.source))]
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("cannot attach the flow-steering program: {0}")]
    ReusePortProgram(#[source] io::Error),
    #[error(fmt = io_uring_message)]
    IoUring { queue: usize, source: io::Error },
    #[error(
        "queue {queue}: this kernel's io_uring lacks {feature}: {source}. tunfwd needs Linux 6.7 or later"
    )]
    IoUringFeature {
        queue: usize,
        feature: &'static str,
        source: io::Error,
    },
    #[error(
        "queue {queue}: cannot register io_uring buffer rings: {source}. tunfwd needs Linux 6.7 or later"
    )]
    RegisterBuffers { queue: usize, source: io::Error },
    /// Pinning a worker to its CPU (`--cpus`), with the reason the kernel gave
    /// (`affinity::confirm_pinned`).
    #[error("cannot pin queue {queue} to CPU {cpu}: {source}{hint}", hint = pin_hint(.cpu, .source))]
    Pin {
        queue: usize,
        cpu: usize,
        source: io::Error,
    },
    #[error("cannot set up signal handling: {0}")]
    Signals(#[source] io::Error),
    /// Workers that ended during setup without reporting (a panic; its message is above).
    #[error("{missing} worker(s) died during setup without reporting (a bug: see the panic above)")]
    WorkerLost { missing: usize },
    /// Binding the `--metrics` listener.
    #[error(
        "cannot serve metrics on {address}: {source}{hint}",
        hint = metrics_listen_hint(.address, .source)
    )]
    MetricsListen {
        address: SocketAddr,
        source: io::Error,
    },
    /// One step of switching to `--user` (`setgroups`, `setgid` or `setuid`).
    #[error(
        "cannot switch to user {user} ({step}): {source}{hint}",
        hint = drop_privileges_hint(.source)
    )]
    DropPrivileges {
        user: String,
        step: &'static str,
        source: io::Error,
    },
    /// Reading the threads' credentials back after the switch.
    #[error("cannot read the threads' credentials back from /proc/self/task: {0}")]
    CheckPrivileges(#[source] io::Error),
    /// A thread that still has another uid or gid, or a capability, after the switch.
    #[error(
        "after switching users, thread {thread} has uid {uid}, gid {gid} and capabilities \
         {capabilities:#x}; refusing to run with privileges it was told to drop (--user \
         clears capabilities only when tunfwd starts as root)"
    )]
    PrivilegesRemain {
        thread: u32,
        uid: u32,
        gid: u32,
        capabilities: u64,
    },
    /// Writing the first stats report, which proves `--stats-json` is writable.
    #[error(
        "cannot write the stats report to {}: {source}{hint}",
        .path.display(),
        hint = stats_file_hint(.source)
    )]
    StatsFile { path: PathBuf, source: io::Error },
    /// WireGuard mode: the `--config` file cannot be read.
    #[error("cannot read the WireGuard configuration {}: {source}", .path.display())]
    WireguardConfigRead { path: PathBuf, source: io::Error },
    /// WireGuard mode: the `--config` file (which holds the private key) is readable by others.
    #[error(
        "the WireGuard configuration {} may be read by its group or others (mode {mode:03o}); \
         it holds the private key: chmod 600 it",
        .path.display()
    )]
    WireguardConfigMode { path: PathBuf, mode: u32 },
    /// WireGuard mode: the `--config` file does not parse.
    #[error("WireGuard configuration {}: {source}", .path.display())]
    WireguardConfigParse {
        path: PathBuf,
        source: tunfwd_wireguard::config::ConfigError,
    },
    /// WireGuard mode: a peer's endpoint host name does not resolve.
    #[error("WireGuard configuration {}: cannot resolve endpoint {host}: {source}", .path.display())]
    WireguardResolve {
        path: PathBuf,
        host: String,
        source: io::Error,
    },
    /// WireGuard mode: the userspace API socket cannot be made.
    #[error("cannot serve the WireGuard API socket {}: {source}", .path.display())]
    UapiSocket { path: PathBuf, source: io::Error },
    /// WireGuard mode: the configuration's fwmark cannot be set on the sockets (`SO_MARK`).
    #[error(
        "cannot set fwmark {mark:#x} on the WireGuard sockets: {source} (it needs CAP_NET_ADMIN)"
    )]
    WireguardFwmark { mark: u32, source: io::Error },
    /// No engine that was asked for can run here (`crate::engine::choose` says why).
    #[error("{0}")]
    Engine(String),
    /// The directory of the lock files (`owner::RUNTIME_DIR`) cannot be created or opened.
    #[error(
        "cannot keep the device and port locks in {}: {source}{hint}",
        .path.display(),
        hint = lock_directory_hint(.source)
    )]
    LockDirectory { path: PathBuf, source: io::Error },
    /// The directory of the lock files is one that someone other than root could change.
    #[error(
        "refusing to keep the device and port locks in {}: {problem}. It must be a directory \
         that root owns and only root can write (`install -d -m 0755 -o root -g root {}`)",
        .path.display(),
        .path.display()
    )]
    UnsafeLockDirectory { path: PathBuf, problem: String },
    /// Opening, checking, locking or writing the lock file of a device or port, for a reason
    /// other than another process holding it (`owner::claim`).
    #[error(
        "cannot claim {resource} ({}): {source}{hint}",
        .path.display(),
        hint = claim_lock_hint(.source)
    )]
    ClaimLock {
        resource: owner::Resource,
        path: PathBuf,
        source: io::Error,
    },
    /// Another tunfwd, alive, holds the lock on the device or port.
    #[error(
        "{resource} is already served by {}. Stop that relay first, or choose another {}",
        HolderList(.holders),
        .resource.option()
    )]
    AlreadyServed {
        resource: owner::Resource,
        holders: Vec<owner::Holder>,
        /// The lock file it holds.
        lock: PathBuf,
    },
    /// The lock is held, but its file names no process that exists here (held by something
    /// other than a tunfwd, or by one in another PID namespace).
    #[error(
        "{resource} is locked by a process this one cannot name: its lock file {} {}. Stop \
         what holds it (`fuser -v {}`), or choose another {}",
        .path.display(),
        LockFileSays(.record),
        .path.display(),
        .resource.option()
    )]
    LockHeld {
        resource: owner::Resource,
        path: PathBuf,
        /// The file's first line, printable.
        record: String,
    },
    /// Live processes hold sockets bound to the listen address's port (found by a test bind).
    #[error(
        "cannot listen on {address}: UDP port {} is in use by {}. Choose another --listen, \
         or stop that program",
        .address.port(),
        HolderList(.holders)
    )]
    PortInUse {
        address: SocketAddr,
        holders: Vec<owner::Holder>,
        source: io::Error,
    },
    /// Live processes hold queues of the TUN device.
    #[error(
        "device {device} is in use by {}, which holds queues of it. Choose another --dev, or \
         stop that program",
        HolderList(.holders)
    )]
    DeviceInUse {
        device: String,
        holders: Vec<owner::Holder>,
    },
    /// The device, port or lock was still taken, by no live process, when the wait ran out.
    #[error(
        "{resource} is still taken after waiting {:.1}s: {remains}{}",
        .waited.as_secs_f64(),
        InParentheses(.source.as_ref())
    )]
    StillHeld {
        resource: owner::Resource,
        waited: Duration,
        remains: owner::Remains,
        source: Option<io::Error>,
    },
    /// Reading /proc to find what holds the device or port.
    #[error(
        "cannot read {} to find what holds {resource}: {source}",
        .path.display()
    )]
    FindHolders {
        resource: owner::Resource,
        path: PathBuf,
        source: io::Error,
    },
    /// Asking rtnetlink whether the device exists, is a TUN and has queues attached.
    #[error("cannot ask the kernel about device {device} (rtnetlink RTM_GETLINK): {source}")]
    QueryDevice { device: String, source: io::Error },
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

const NEED_ROOT: &str = "run tunfwd as root, or give it CAP_NET_ADMIN";

/// What to do when /dev/net/tun cannot be opened: load the module, or get the privilege.
fn open_tun_hint(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::NotFound {
        ". Load the tun module (modprobe tun) or create the node (mknod /dev/net/tun c 10 200)"
            .to_string()
    } else if is_permission(e) {
        format!(". {NEED_ROOT}")
    } else {
        String::new()
    }
}

/// `TUNSETIFF` failed: without privilege the device cannot be created; with EINVAL a device of
/// that name exists with other flags (drivers/net/tun.c `tun_set_iff` compares them).
fn create_queue_message(
    device: &String,
    queue: &usize,
    source: &io::Error,
    f: &mut fmt::Formatter<'_>,
) -> fmt::Result {
    if is_permission(source) {
        write!(
            f,
            "cannot create TUN device {device} (queue {queue}): {source}. {NEED_ROOT}"
        )
    } else if source.raw_os_error() == Some(libc::EINVAL) {
        write!(
            f,
            "cannot attach queue {queue} of {device}: {source}. A device of that name exists with \
             other flags; tunfwd needs a multiqueue TUN with vnet headers. Delete it \
             (ip link del {device}) or choose another --dev"
        )
    } else {
        write!(
            f,
            "cannot create queue {queue} of TUN device {device}: {source}"
        )
    }
}

/// `io_uring_setup` refused outright is a policy (a sysctl or seccomp), not a bug: say which
/// and how to run anyway.
fn io_uring_message(queue: &usize, source: &io::Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

fn bind_hint(source: &io::Error) -> &'static str {
    if source.kind() == io::ErrorKind::AddrInUse {
        ". Another program (or another tunfwd) holds the port; choose another with --listen"
    } else {
        ""
    }
}

/// sched_setaffinity(2): EINVAL when the mask holds no CPU the thread may use, which for one
/// CPU means it is outside the thread's cgroup cpuset (kernel/sched/core.c
/// `__sched_setaffinity` intersects the mask with `cpuset_cpus_allowed`) or offline.
fn pin_hint(cpu: &usize, source: &io::Error) -> String {
    if source.raw_os_error() == Some(libc::EINVAL) {
        format!(
            ". CPU {cpu} is not one this thread may run on: outside its cgroup's cpuset, or \
             offline; choose others with --cpus, or use --no-pin"
        )
    } else {
        String::new()
    }
}

fn metrics_listen_hint(address: &SocketAddr, source: &io::Error) -> String {
    if source.kind() == io::ErrorKind::AddrInUse {
        ". Another program holds the port; choose another with --metrics".to_string()
    } else if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
        format!(". {} is not an address of this host", address.ip())
    } else {
        String::new()
    }
}

fn drop_privileges_hint(source: &io::Error) -> &'static str {
    if is_permission(source) {
        ". --user needs tunfwd to start as root"
    } else {
        ""
    }
}

fn stats_file_hint(source: &io::Error) -> &'static str {
    if is_permission(source) {
        ". Its directory must be writable by the user tunfwd runs as (see --user)"
    } else {
        ""
    }
}

/// ` (the error)`, or nothing.
/// What a lock file's first line says, for [`Error::LockHeld`].
struct LockFileSays<'a>(&'a str);

impl fmt::Display for LockFileSays<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("is empty")
        } else {
            write!(f, "says \"{}\"", self.0)
        }
    }
}

fn lock_directory_hint(e: &io::Error) -> &'static str {
    if is_permission(e) || e.raw_os_error() == Some(libc::EROFS) {
        ". Run tunfwd as root, or make the directory, owned by the user tunfwd runs as and \
         writable by no one else (the unit's RuntimeDirectory=tunfwd and \
         contrib/systemd/tunfwd.tmpfiles make it for root)"
    } else {
        ""
    }
}

fn claim_lock_hint(e: &io::Error) -> &'static str {
    if is_permission(e) {
        ". The lock files are their directory owner's: run tunfwd as root (or as that user)"
    } else {
        ""
    }
}

struct InParentheses<'a>(Option<&'a io::Error>);

impl fmt::Display for InParentheses<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(e) => write!(f, " ({e})"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn errno(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    /// The wording operators (and the namespace tests) rely on, for each errno-dependent form.
    #[test]
    fn messages_depend_on_the_errno_where_a_remedy_does() {
        let cases: Vec<(Error, &str)> = vec![
            (
                Error::OpenTun(errno(libc::ENOENT)),
                "cannot open /dev/net/tun: No such file or directory (os error 2). Load the tun \
                 module (modprobe tun) or create the node (mknod /dev/net/tun c 10 200)",
            ),
            (
                Error::OpenTun(errno(libc::EPERM)),
                "cannot open /dev/net/tun: Operation not permitted (os error 1). run tunfwd as \
                 root, or give it CAP_NET_ADMIN",
            ),
            (
                Error::OpenTun(errno(libc::EIO)),
                "cannot open /dev/net/tun: Input/output error (os error 5)",
            ),
            (
                Error::CreateQueue {
                    device: "t0".into(),
                    queue: 1,
                    source: errno(libc::EINVAL),
                },
                "cannot attach queue 1 of t0: Invalid argument (os error 22). A device of that \
                 name exists with other flags; tunfwd needs a multiqueue TUN with vnet headers. \
                 Delete it (ip link del t0) or choose another --dev",
            ),
            (
                Error::CreateQueue {
                    device: "t0".into(),
                    queue: 0,
                    source: errno(libc::EPERM),
                },
                "cannot create TUN device t0 (queue 0): Operation not permitted (os error 1). run \
                 tunfwd as root, or give it CAP_NET_ADMIN",
            ),
            (
                Error::CreateQueue {
                    device: "t0".into(),
                    queue: 2,
                    source: errno(libc::EBUSY),
                },
                "cannot create queue 2 of TUN device t0: Device or resource busy (os error 16)",
            ),
            (
                Error::Bind {
                    address: "0.0.0.0:1".parse().unwrap(),
                    source: errno(libc::EADDRINUSE),
                },
                "cannot listen on 0.0.0.0:1: Address already in use (os error 98). Another \
                 program (or another tunfwd) holds the port; choose another with --listen",
            ),
            (
                Error::IoUring {
                    queue: 0,
                    source: errno(libc::EPERM),
                },
                "io_uring is unavailable (queue 0): Operation not permitted (os error 1). It is \
                 disabled by the sysctl kernel.io_uring_disabled or by a seccomp profile \
                 (containers, LXC); run with --engine poll (or auto), or set \
                 kernel.io_uring_disabled=0 or allow io_uring_setup",
            ),
            (
                Error::IoUring {
                    queue: 3,
                    source: errno(libc::ENOMEM),
                },
                "cannot set up io_uring for queue 3: Cannot allocate memory (os error 12)",
            ),
            (
                Error::Pin {
                    queue: 1,
                    cpu: 9,
                    source: errno(libc::EINVAL),
                },
                "cannot pin queue 1 to CPU 9: Invalid argument (os error 22). CPU 9 is not one \
                 this thread may run on: outside its cgroup's cpuset, or offline; choose others \
                 with --cpus, or use --no-pin",
            ),
            (
                Error::MetricsListen {
                    address: "192.0.2.1:9101".parse().unwrap(),
                    source: errno(libc::EADDRNOTAVAIL),
                },
                "cannot serve metrics on 192.0.2.1:9101: Cannot assign requested address (os \
                 error 99). 192.0.2.1 is not an address of this host",
            ),
            (
                Error::MetricsListen {
                    address: "127.0.0.1:9101".parse().unwrap(),
                    source: errno(libc::EADDRINUSE),
                },
                "cannot serve metrics on 127.0.0.1:9101: Address already in use (os error 98). \
                 Another program holds the port; choose another with --metrics",
            ),
            (
                Error::DropPrivileges {
                    user: "relay".into(),
                    step: "setuid",
                    source: errno(libc::EPERM),
                },
                "cannot switch to user relay (setuid): Operation not permitted (os error 1). \
                 --user needs tunfwd to start as root",
            ),
            (
                Error::StatsFile {
                    path: "/run/x.json".into(),
                    source: errno(libc::EACCES),
                },
                "cannot write the stats report to /run/x.json: Permission denied (os error 13). \
                 Its directory must be writable by the user tunfwd runs as (see --user)",
            ),
            (
                Error::ConfigureLink {
                    device: "t0".into(),
                    change: LinkChange {
                        mtu: Some(1472),
                        tx_queue_len: Some(2000),
                        up: true,
                        ..LinkChange::default()
                    },
                    source: errno(libc::EINVAL),
                },
                "cannot configure t0 (MTU 1472, transmit queue length 2000, up): Invalid \
                 argument (os error 22)",
            ),
            (Error::Engine("no engine".into()), "no engine"),
        ];
        for (error, want) in cases {
            assert_eq!(error.to_string(), want, "{error:?}");
        }
    }

    #[test]
    fn every_os_error_is_kept_as_the_source() {
        let with = Error::Pin {
            queue: 0,
            cpu: 1,
            source: errno(libc::EINVAL),
        };
        let source = with.source().expect("a source");
        assert_eq!(source.to_string(), errno(libc::EINVAL).to_string());
        assert!(Error::Signals(errno(libc::EPERM)).source().is_some());
        assert!(Error::WorkerLost { missing: 1 }.source().is_none());
        assert!(Error::Engine("x".into()).source().is_none());
        let still = |source| Error::StillHeld {
            resource: owner::Resource::Port(1),
            waited: Duration::from_millis(1500),
            remains: owner::Remains::Sockets { count: 1 },
            source,
        };
        assert!(still(None).source().is_none());
        assert!(still(Some(errno(libc::EADDRINUSE))).source().is_some());
        assert!(
            still(Some(errno(libc::EADDRINUSE)))
                .to_string()
                .ends_with(" (Address already in use (os error 98))")
        );
    }
}
