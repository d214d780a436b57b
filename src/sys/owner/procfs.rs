//! Who holds a socket or a TUN queue, as /proc shows it: the tables of /proc/net (`udp`, `udp6`)
//! name sockets by inode, /proc/PID/fd links name the sockets a process has open, and
//! /proc/PID/fdinfo names the device of a TUN fd. Reading another user's /proc/PID/fd needs root
//! with CAP_SYS_PTRACE (proc(5), ptrace access mode), and under `hidepid=invisible` (systemd's
//! `ProtectProc=invisible`) another user's /proc/PID is not there at all; the lock files
//! (`locks`) name their holders without /proc. The parsers are PURE and tested on the text the
//! kernel writes; the rest walks /proc and skips whatever vanishes meanwhile.
//!
//! Whatever is read here is written by other processes (a command line is anything its owner
//! chose), so every string taken from it for a message goes through [`printable`] first.

use super::{Holder, Resource};
use crate::sys::Error;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The longest command line quoted in a message; a longer one is cut there.
pub(super) const COMMAND_CHARS: usize = 160;

/// `PF_EXITING` in include/linux/sched.h: the task is in `do_exit`. /proc/PID/stat field 9 is the
/// task's flags word (proc(5)).
const PF_EXITING: u64 = 0x4;

/// `/proc/thread-self/net/NAME`: the table of this thread's network namespace (after setns(2),
/// /proc/self/net would still show the process's).
pub(super) fn read_net_table(resource: &Resource, name: &str) -> Result<String, Error> {
    let path = PathBuf::from("/proc/thread-self/net").join(name);
    fs::read_to_string(&path).map_err(|source| Error::FindHolders {
        resource: resource.clone(),
        path,
        source,
    })
}

/// Where this thread's network namespace is named: its inode tells namespaces apart while they
/// live (namespaces(7), "The /proc/[pid]/ns/ directory").
pub(super) const NETWORK_NAMESPACE: &str = "/proc/thread-self/ns/net";

/// The inode of this thread's network namespace.
pub(super) fn network_namespace() -> io::Result<u64> {
    Ok(fs::metadata(NETWORK_NAMESPACE)?.ino())
}

/// `text` fit for one line of a message or a log: valid UTF-8 is kept, but control characters
/// (C0, DEL, C1: a newline, an ESC that starts a terminal sequence) and the invisible characters
/// that reorder or hide text (bidirectional overrides and isolates, zero-width marks) become
/// escapes (`\n`, `\t`, `\r`, `\u{1b}`), and bytes that are not UTF-8 become `\xNN`. A backslash is
/// kept as it is, so escaping twice changes nothing. PURE.
pub(crate) fn printable(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() || hides_text(c) => out.extend(c.escape_unicode()),
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// Format characters that change how the text around them shows: bidirectional embeddings,
/// overrides, isolates and marks, zero-width characters, the BOM.
fn hides_text(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// One row of /proc/net/udp or /proc/net/udp6.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct UdpRow {
    pub(super) local: SocketAddr,
    /// The socket's owner (its creator's effective uid): only sockets of one user can share a
    /// port with `SO_REUSEPORT` (net/ipv4/udp.c `udp_lib_lport_inuse`).
    pub(super) uid: u32,
    pub(super) inode: u64,
}

/// Parses a row of /proc/net/udp (`ipv6` false) or /proc/net/udp6; `None` for the header. PURE.
///
/// net/ipv4/udp.c `udp4_format_sock`: `sl local_address rem_address st tx_queue:rx_queue tr:tm
/// retrnsmt uid timeout inode ...`. The address is the `__be32` printed with `%08X`, so its bytes
/// are the native-endian bytes of that number; IPv6 (net/ipv6/datagram.c
/// `__ip6_dgram_sock_seq_show`) prints the four 32-bit words the same way. The port is in host
/// order.
pub(super) fn parse_udp_row(line: &str, ipv6: bool) -> Option<UdpRow> {
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
        uid: fields[7].parse().ok()?,
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
pub(super) fn overlaps(listen: SocketAddr, bound: SocketAddr) -> bool {
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
pub(super) fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The device a TUN fd is attached to, from its /proc/PID/fdinfo text: the `iff:\tNAME` line of
/// drivers/net/tun.c `tun_chr_show_fdinfo` (empty for an fd attached to nothing). PURE.
pub(super) fn tun_fdinfo_device(fdinfo: &str) -> Option<&str> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("iff:"))
        .map(str::trim)
        .filter(|name| !name.is_empty())
}

/// A command from /proc/PID/cmdline (arguments, each ended by a NUL) and /proc/PID/comm, for a
/// message: the arguments joined by spaces, made [`printable`], cut at `COMMAND_CHARS`; `[comm]`
/// when there are none (a kernel thread, or a process that has exited). PURE.
pub(super) fn command_line(cmdline: &[u8], comm: &[u8]) -> String {
    let cmdline = cmdline.strip_suffix(b"\0").unwrap_or(cmdline);
    if cmdline.is_empty() {
        let comm = comm.strip_suffix(b"\n").unwrap_or(comm);
        return format!("[{}]", cut(printable(comm)));
    }
    let joined: Vec<u8> = cmdline
        .iter()
        .map(|&b| if b == 0 { b' ' } else { b })
        .collect();
    cut(printable(&joined))
}

/// `text` cut at `COMMAND_CHARS` characters, with `...` when it was longer. PURE.
pub(super) fn cut(text: String) -> String {
    if text.chars().count() > COMMAND_CHARS {
        let cut: String = text.chars().take(COMMAND_CHARS).collect();
        format!("{cut}...")
    } else {
        text
    }
}

/// Whether a process is on its way out, from /proc/PID/stat and /proc/PID/status: a zombie or
/// dead (state `Z`/`X`), in `do_exit` (`PF_EXITING`), or with SIGKILL pending (proc(5): `SigPnd`
/// for the thread, `ShdPnd` for the process), which it cannot survive. PURE.
pub(super) fn exiting(stat: &str, status: &str) -> bool {
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
pub(super) fn holder(pid: u32) -> Holder {
    let read = |name: &str| fs::read(format!("/proc/{pid}/{name}")).unwrap_or_default();
    let text = |name: &str| String::from_utf8_lossy(&read(name)).into_owned();
    Holder {
        pid,
        command: command_line(&read("cmdline"), &read("comm")),
        exiting: exiting(&text("stat"), &text("status")),
    }
}

/// The process `pid` if /proc shows it here: `None` when it has no /proc/PID/stat that this
/// process may read (it is gone, in another PID namespace, or hidden by `hidepid`).
pub(super) fn visible_holder(pid: u32) -> Option<Holder> {
    fs::metadata(format!("/proc/{pid}/stat")).ok()?;
    Some(holder(pid))
}

/// The processes with an open fd whose link `matches` (given the pid, the fd's name and the link),
/// in pid order. Processes that exit meanwhile, or whose fds this user may not read, are skipped.
pub(super) fn processes_where(mut matches: impl FnMut(u32, &str, &Path) -> bool) -> Vec<Holder> {
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
pub(super) fn processes_with_sockets(inodes: &[u64]) -> Vec<Holder> {
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
pub(super) fn processes_with_tun(device: &str) -> Vec<Holder> {
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
pub(super) fn has_thread_in_namespace(pid: u32, namespace: &Path) -> bool {
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

/// Text from /proc that other processes write (a command line and `comm` are anything their
/// owner chose), through every parser here, for the fuzz target: `input` is cut in two at its
/// first byte's value. Panics unless: [`printable`] leaves no control or text-hiding character
/// and escaping its output again changes nothing; a command is at most `COMMAND_CHARS`
/// characters plus its brackets or `...`, and printable too; a TUN device name is a trimmed,
/// non-empty piece of the text; the rest does not panic.
pub fn fuzz_proc_text(input: &[u8]) {
    let Some((&at, rest)) = input.split_first() else {
        return;
    };
    let (first, second) = rest.split_at(usize::from(at).min(rest.len()));
    let shown = printable(rest);
    assert!(
        !shown.chars().any(|c| c.is_control() || hides_text(c)),
        "{shown:?}"
    );
    assert_eq!(
        printable(shown.as_bytes()),
        shown,
        "escaping twice changes nothing"
    );
    let command = command_line(first, second);
    // Cut at `COMMAND_CHARS`, then `...`, then the brackets of a `comm`.
    assert!(command.chars().count() <= COMMAND_CHARS + 5, "{command:?}");
    assert_eq!(printable(command.as_bytes()), command);
    let (first, second) = (
        String::from_utf8_lossy(first),
        String::from_utf8_lossy(second),
    );
    for line in first.lines() {
        let _ = parse_udp_row(line, false);
        let _ = parse_udp_row(line, true);
    }
    if let Some(name) = tun_fdinfo_device(&first) {
        assert!(!name.is_empty() && name.trim() == name && first.contains(name));
    }
    let _ = exiting(&first, &second);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

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
        // The owner's uid, which says who could share the port with SO_REUSEPORT.
        let other_user = row(v4([127, 0, 0, 1]), 55555, 4243).replacen("     0  ", "  1000  ", 1);
        assert_eq!(parse_udp_row(&other_user, false).map(|r| r.uid), Some(1000));
        let cases: Vec<(String, bool, Option<UdpRow>)> = vec![
            (
                row(v4([127, 0, 0, 1]), 55555, 4242),
                false,
                Some(UdpRow {
                    local: "127.0.0.1:55555".parse().unwrap(),
                    uid: 0,
                    inode: 4242,
                }),
            ),
            (
                row(v4([0, 0, 0, 0]), 53, 1),
                false,
                Some(UdpRow {
                    local: "0.0.0.0:53".parse().unwrap(),
                    uid: 0,
                    inode: 1,
                }),
            ),
            (
                row(v6(Ipv6Addr::UNSPECIFIED), 55555, 7),
                true,
                Some(UdpRow {
                    local: "[::]:55555".parse().unwrap(),
                    uid: 0,
                    inode: 7,
                }),
            ),
            (
                row(v6("2001:2::1".parse().unwrap()), 1, 8),
                true,
                Some(UdpRow {
                    local: "[2001:2::1]:1".parse().unwrap(),
                    uid: 0,
                    inode: 8,
                }),
            ),
            (
                row(v6("::ffff:198.18.0.1".parse().unwrap()), 9, 9),
                true,
                Some(UdpRow {
                    local: "[::ffff:198.18.0.1]:9".parse().unwrap(),
                    uid: 0,
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
                b"tunfwd\n"
            ),
            "tunfwd --dev tunfwd0 --peer 198.18.0.2:55555"
        );
        assert_eq!(command_line(b"", b"kworker/0:1\n"), "[kworker/0:1]");
        assert_eq!(command_line(b"a\0\0b\0", b"x"), "a  b");
        let long = [b'x'; COMMAND_CHARS + 10];
        let cut = command_line(&long, b"x");
        assert_eq!(cut.len(), COMMAND_CHARS + 3);
        assert!(cut.ends_with("..."));
    }

    /// The review's squatter: a command line that ends a fake log line and starts a forged one,
    /// with terminal escapes, bytes that are not UTF-8 and a right-to-left override. One line
    /// comes out, with nothing a terminal acts on.
    #[test]
    fn command_lines_from_proc_cannot_forge_log_lines_or_drive_a_terminal() {
        let cmdline = b"/usr/bin/python3\0squat.py\nnobody\0\ntunfwd: tunfwd0 up: 4 queues\x1b[2K\r\x1b]0;x\x07\0\xff\xfe\0\xe2\x80\xae\x7f\xc2\x9b\0";
        let shown = command_line(cmdline, b"python3\n");
        assert_eq!(
            shown,
            "/usr/bin/python3 squat.py\\nnobody \\ntunfwd: tunfwd0 up: 4 queues\\u{1b}[2K\\r\\u{1b}]0;x\\u{7} \\xff\\xfe \\u{202e}\\u{7f}\\u{9b}"
        );
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        // A command name is escaped the same way (comm is up to 15 bytes of anything).
        assert_eq!(command_line(b"", b"a\x1b[31m\nb\n"), "[a\\u{1b}[31m\\nb]");
        // Escaping is idempotent, and leaves ordinary text, backslashes and non-ASCII alone.
        for text in [
            shown.as_str(),
            "tunfwd --dev t\\0 --peer relais-b.exemple.fr:55555 ü",
        ] {
            assert_eq!(printable(text.as_bytes()), text);
        }
        // The cut counts escaped characters, and still cuts.
        let long = [b'\n'; COMMAND_CHARS];
        let cut = command_line(&long, b"x");
        assert_eq!(cut, format!("{}...", "\\n".repeat(COMMAND_CHARS / 2)));
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
}
