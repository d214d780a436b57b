//! The systemd notification protocol (sd_notify(3)), by hand: a few datagrams on a Unix socket.
//!
//! What it owns: telling the service manager that tunfwd is up (`READY=1`), how it is doing
//! (`STATUS=`), that it is alive (`WATCHDOG=1`), and that it is stopping (`STOPPING=1`). Why by
//! hand: the protocol is "send `KEY=VALUE` lines as one datagram to the `AF_UNIX` socket named in
//! `$NOTIFY_SOCKET`", an abstract socket when the name starts with `@` (sd_notify(3), "NOTES");
//! libsystemd would be a C dependency for that. What it must never do: fail or stall tunfwd. With
//! `$NOTIFY_SOCKET` unset every call is a no-op, the socket is non-blocking (a manager that does
//! not read costs a skipped message, not a stuck main loop), and a failure is reported once.
//!
//! Only the main thread sends, and only from its loop: the units use `NotifyAccess=main`, and the
//! watchdog then proves that loop is turning (it is the loop that collects the workers' stats and
//! notices a failed worker).

use crate::stats::Report;
use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where `$NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A socket in the file system.
    Path(PathBuf),
    /// An abstract socket: the name after the `@` (which stands for the leading NUL byte).
    Abstract(Vec<u8>),
}

/// Parses `$NOTIFY_SOCKET`: an absolute path, or `@name` for an abstract socket. Anything else
/// (empty, relative, or the `vsock:` form that only virtual machines use) means no notifications.
pub fn parse_target(value: &OsStr) -> Option<Target> {
    let bytes = value.as_bytes();
    match bytes.first()? {
        b'/' => Some(Target::Path(PathBuf::from(value))),
        b'@' if bytes.len() > 1 => Some(Target::Abstract(bytes[1..].to_vec())),
        _ => None,
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises.
/// `None` when the variable is unset, not a positive number, or when `$WATCHDOG_PID` is set to
/// another process's pid (the watchdog is then someone else's to feed).
pub fn watchdog_interval(
    usec: Option<&str>,
    watchdog_pid: Option<&str>,
    our_pid: u32,
) -> Option<Duration> {
    if let Some(pid) = watchdog_pid
        && pid.trim().parse::<u32>().ok() != Some(our_pid)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Bytes in a short human form with binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The one-line `STATUS=` text for a report: traffic each way, drops, and the latency count.
pub fn status_line(report: &Report) -> String {
    let t = report.totals();
    format!(
        "{} queue(s), up {} s; tun->udp {} packets ({}), udp->tun {} packets ({}); {} dropped",
        report.queues.len(),
        report.elapsed.as_secs(),
        t.udp_tx_packets,
        human_bytes(t.udp_tx_bytes),
        t.tun_tx_packets,
        human_bytes(t.tun_tx_bytes),
        t.total_drops()
    )
}

/// The datagram for a set of assignments. A value may not hold a newline, which would start
/// another assignment, so newlines become spaces.
pub fn message(assignments: &[(&str, &str)]) -> String {
    assignments
        .iter()
        .map(|(key, value)| format!("{key}={}\n", value.replace('\n', " ")))
        .collect()
}

/// When the next `WATCHDOG=1` is due, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchdog {
    pub every: Duration,
    pub next: Instant,
}

impl Watchdog {
    /// True when a ping is due at `now`; the next one is then scheduled from `now`, so a late
    /// loop pings once, not once per missed period.
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.every;
        true
    }
}

/// The fewest seconds between two `STATUS=` messages.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);

/// The connection to the service manager, or nothing when tunfwd was not started by one.
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Watchdog>,
    last_status: Option<Instant>,
    warned: bool,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            socket: None,
            watchdog: None,
            last_status: None,
            warned: false,
        }
    }

    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`. Unset or unusable: disabled
    /// (with a warning when the socket is named but cannot be used).
    pub fn from_env() -> Notifier {
        let Some(target) = std::env::var_os("NOTIFY_SOCKET").and_then(|v| parse_target(&v)) else {
            return Notifier::disabled();
        };
        let socket = match Notifier::open(&target) {
            Ok(socket) => socket,
            Err(e) => {
                eprintln!("tunfwd: warning: cannot use NOTIFY_SOCKET ({target:?}): {e}");
                return Notifier::disabled();
            }
        };
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        let watchdog =
            watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id()).map(|every| {
                Watchdog {
                    every,
                    next: Instant::now(),
                }
            });
        Notifier {
            socket: Some(socket),
            watchdog,
            last_status: None,
            warned: false,
        }
    }

    fn open(target: &Target) -> std::io::Result<(UnixDatagram, SocketAddr)> {
        let address = match target {
            Target::Path(path) => SocketAddr::from_pathname(path)?,
            Target::Abstract(name) => SocketAddr::from_abstract_name(name)?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok((socket, address))
    }

    /// True when a service manager is listening.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    fn send(&mut self, text: &str) {
        let Some((socket, address)) = &self.socket else {
            return;
        };
        if let Err(e) = socket.send_to_addr(text.as_bytes(), address)
            && !std::mem::replace(&mut self.warned, true)
        {
            eprintln!("tunfwd: warning: cannot notify the service manager: {e}");
        }
    }

    /// `READY=1`, with the first status line.
    pub fn ready(&mut self, status: &str) {
        self.send(&message(&[("READY", "1"), ("STATUS", status)]));
    }

    /// `STATUS=line`, at most once per [`STATUS_EVERY`].
    pub fn status(&mut self, now: Instant, line: &str) {
        if self.last_status.is_some_and(|at| now < at + STATUS_EVERY) {
            return;
        }
        self.last_status = Some(now);
        self.send(&message(&[("STATUS", line)]));
    }

    /// When the next watchdog ping is due, for the main loop's wait.
    pub fn watchdog_due(&self) -> Option<Instant> {
        self.socket.as_ref().and(self.watchdog.map(|w| w.next))
    }

    /// Sends `WATCHDOG=1` if it is due and `alive` says so (asked only when it is due). A ping
    /// withheld is not made up for: the next is due an interval later, and if the service
    /// manager's timeout passes first, it restarts the service, which is the point.
    pub fn watchdog(&mut self, now: Instant, alive: impl FnOnce() -> bool) {
        if self.socket.is_some()
            && let Some(w) = self.watchdog.as_mut()
            && w.due(now)
            && alive()
        {
            self.send(&message(&[("WATCHDOG", "1")]));
        }
    }

    /// `STOPPING=1`, once the main loop has been told to stop.
    pub fn stopping(&mut self, status: &str) {
        self.send(&message(&[("STOPPING", "1"), ("STATUS", status)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{DropReason, WorkerStats};

    #[test]
    fn targets_are_absolute_paths_or_abstract_names() {
        assert_eq!(
            parse_target(OsStr::new("/run/systemd/notify")),
            Some(Target::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_target(OsStr::new("@/org/freedesktop/systemd1/notify/42")),
            Some(Target::Abstract(
                b"/org/freedesktop/systemd1/notify/42".to_vec()
            ))
        );
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            assert_eq!(parse_target(OsStr::new(bad)), None, "{bad}");
        }
    }

    #[test]
    fn watchdog_is_half_the_timeout_and_only_for_our_pid() {
        let half = Some(Duration::from_millis(100));
        assert_eq!(watchdog_interval(Some("200000"), None, 7), half);
        assert_eq!(watchdog_interval(Some("200000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval(Some("200000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("200000"), Some("x"), 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("-5"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(Some("1"), None, 7),
            Some(Duration::from_millis(1))
        );
    }

    #[test]
    fn watchdog_fires_when_due_and_reschedules_from_now() {
        let start = Instant::now();
        let every = Duration::from_millis(100);
        let mut w = Watchdog { every, next: start };
        assert!(w.due(start));
        assert!(!w.due(start + Duration::from_millis(50)));
        // Late by several periods: one ping, then a full period.
        let late = start + Duration::from_millis(450);
        assert!(w.due(late));
        assert_eq!(w.next, late + every);
        assert!(!w.due(late + Duration::from_millis(99)));
    }

    #[test]
    fn messages_are_key_value_lines_without_stray_newlines() {
        assert_eq!(
            message(&[("READY", "1"), ("STATUS", "up")]),
            "READY=1\nSTATUS=up\n"
        );
        assert_eq!(message(&[("STATUS", "a\nb")]), "STATUS=a b\n");
    }

    #[test]
    fn status_line_sums_the_queues() {
        let mut q0 = WorkerStats::new(0);
        q0.counters.udp_tx_packets = 1000;
        q0.counters.udp_tx_bytes = 1_500_000;
        q0.counters.drop_n(DropReason::ForeignSource, 3);
        let mut q1 = WorkerStats::new(1);
        q1.counters.tun_tx_packets = 2;
        q1.counters.tun_tx_bytes = 100;
        let report = Report::new(Duration::from_secs(61), vec![q0, q1]);
        let line = status_line(&report);
        assert_eq!(
            line,
            "2 queue(s), up 61 s; tun->udp 1000 packets (1.4 MiB), udp->tun 2 packets (100 B); 3 dropped"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn human_bytes_picks_a_unit() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }

    /// The whole path over an abstract socket, as systemd's own manager socket is, with a fake
    /// manager in this process. No root needed; abstract names live in this network namespace.
    #[test]
    fn notifications_reach_an_abstract_socket() {
        let name = format!("tunfwd-notify-test-{}", std::process::id());
        let manager =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let target = parse_target(OsStr::new(&format!("@{name}"))).unwrap();
        let mut n = Notifier {
            socket: Some(Notifier::open(&target).unwrap()),
            watchdog: Some(Watchdog {
                every: Duration::from_millis(100),
                next: Instant::now(),
            }),
            last_status: None,
            warned: false,
        };
        let receive = || {
            let mut buf = [0u8; 512];
            let len = manager.recv(&mut buf).unwrap();
            String::from_utf8(buf[..len].to_vec()).unwrap()
        };
        n.ready("up");
        assert_eq!(receive(), "READY=1\nSTATUS=up\n");
        let now = Instant::now();
        n.watchdog(now, || true);
        assert_eq!(receive(), "WATCHDOG=1\n");
        n.watchdog(now, || panic!("not due again yet: not even asked"));
        // Due, but a worker has not turned: withheld, and the next comes an interval later.
        n.watchdog(now + Duration::from_millis(150), || false);
        n.watchdog(now + Duration::from_millis(300), || true);
        assert_eq!(receive(), "WATCHDOG=1\n");
        n.status(now, "first");
        n.status(now + Duration::from_millis(500), "too soon");
        n.status(now + Duration::from_millis(1000), "second");
        assert_eq!(receive(), "STATUS=first\n");
        assert_eq!(receive(), "STATUS=second\n");
        n.stopping("bye");
        assert_eq!(receive(), "STOPPING=1\nSTATUS=bye\n");
        assert!(!n.warned);
    }

    #[test]
    fn a_disabled_notifier_does_nothing() {
        let mut n = Notifier::disabled();
        assert!(!n.enabled());
        n.ready("up");
        n.watchdog(Instant::now(), || true);
        assert_eq!(n.watchdog_due(), None);
        n.stopping("bye");
    }
}
