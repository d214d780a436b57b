//! The locks: `flock(2)` on files in a directory only root can write, `/run/tunfwd`, one file per
//! network namespace and resource: `net-INODE.dev-NAME.lock` and `net-INODE.udp-PORT.lock`.
//!
//! Why files and not abstract unix sockets (which tunfwd used first): an abstract name has no
//! owner and no permissions (unix(7)), so any local user could bind `@tunfwd/dev/tunfwd0` first and
//! keep every root tunfwd from its device. A file in a directory that root owns and only root can
//! write can only be created by root, and is opened only by root: the files are mode 0600, because
//! `flock` needs no write access (flock(2): "regardless of the mode in which the file was opened"),
//! so a lock file anyone may read is a lock anyone may take.
//!
//! What is trusted, and checked: the directory is created 0755 if missing, then opened with
//! `O_NOFOLLOW | O_DIRECTORY` and refused unless it is a directory owned by root (or by the user
//! tunfwd runs as, for an unprivileged test) that neither group nor others may write. Lock files
//! are opened relative to that descriptor with `O_NOFOLLOW` (a symlink is refused, never followed)
//! and `O_NONBLOCK` (a FIFO cannot hang the open), and refused unless each is a regular file with
//! the same owner and no group or other permission.
//!
//! The kernel keeps the lock with the open file description and drops it when the last descriptor
//! of it closes (flock(2)), so a holder that exits or is killed frees it with its files. The
//! descriptors are close-on-exec (tunfwd never forks, and nothing it executes inherits them), are
//! never handed to io_uring (no ring's requests keep them open), and, being plain descriptors,
//! stay open after the switch to `--user`. A killed relay's io_uring worker threads share its
//! descriptor table, which goes with the last of them, a few tens of ms after the kill at most;
//! while it stays, the holder is exiting, and [`claim`](super::claim) waits for it as for any
//! leftover.
//!
//! The holder writes who it is into the file once it has the lock: `PID COMMAND\n`, the command
//! made [`printable`]. A second tunfwd that finds the lock taken names the holder from /proc when
//! /proc shows it (with whether it is exiting), and otherwise from the file: under systemd's
//! `ProtectProc=invisible`, and without `CAP_SYS_PTRACE`, a relay that switched to `--user` is not
//! in this process's /proc at all. A lock that is held means a live holder, so a hidden one is
//! named at once, not waited for. Only a file that names no process that exists (its holder took
//! the lock this very moment and has not written yet, or is in another PID namespace) is looked at
//! again, for at most [`IDENTIFY_WAIT`], and then reported as it reads.
//!
//! Lock files stay when their holder goes (removing one safely would need every taker to check it
//! locked the file that is still linked); they are empty of meaning until locked again, and /run
//! is emptied at boot.

use super::procfs::{self, printable, visible_holder};
use super::{Busy, Conflict, Holder, Look, POLL_INTERVAL, Remains, Resource};
use crate::sys::{Error, check};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the lock files are kept.
pub const RUNTIME_DIR: &str = "/run/tunfwd";

/// How long a lock file that names no process that exists is looked at again before it is
/// reported: its holder writes its name microseconds after it takes the lock.
pub(super) const IDENTIFY_WAIT: Duration = Duration::from_millis(500);

/// The most of a lock file read to name its holder.
const RECORD_BYTES: usize = 1024;

/// The directory of the lock files, open and checked.
#[derive(Debug)]
pub(super) struct LockDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl LockDir {
    /// Opens `path`, creating it (mode 0755) if it is missing, and checks that only root (or this
    /// process's user) can change what is in it.
    pub(super) fn open(path: &Path) -> Result<LockDir, Error> {
        let failed = |source| Error::LockDirectory {
            path: path.to_path_buf(),
            source,
        };
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| failed(io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: `c_path` is a NUL-terminated string that outlives the call.
        let created = match check(unsafe { libc::mkdir(c_path.as_ptr(), 0o755) }) {
            Ok(_) => true,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
            Err(e) => return Err(failed(e)),
        };
        // SAFETY: `c_path` is a NUL-terminated string that outlives the call; owned right after.
        let raw = check(unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => Error::UnsafeLockDirectory {
                path: path.to_path_buf(),
                problem: "it is not a directory (a symbolic link is not followed)".into(),
            },
            _ => failed(e),
        })?;
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if created {
            // The umask (0027 in the unit) would leave 0750, and a --stats-json directory inside
            // it must be reachable by the --user.
            // SAFETY: fchmod(2) on a descriptor this function owns.
            check(unsafe { libc::fchmod(fd.as_raw_fd(), 0o755) }).map_err(failed)?;
        }
        let meta = File::from(fd.try_clone().map_err(failed)?)
            .metadata()
            .map_err(failed)?;
        if let Some(problem) = unsafe_because(
            meta.is_dir(),
            "a directory",
            meta.uid(),
            meta.mode(),
            0o022,
            effective_uid(),
        ) {
            return Err(Error::UnsafeLockDirectory {
                path: path.to_path_buf(),
                problem,
            });
        }
        Ok(LockDir {
            fd,
            path: path.to_path_buf(),
        })
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Why a directory or lock file cannot be trusted, or `None` if it can: it must be `what` (`is`),
/// owned by root or by `euid` (who can change it anyway), with none of the `forbidden` mode bits.
/// PURE.
pub(super) fn unsafe_because(
    is: bool,
    what: &str,
    uid: u32,
    mode: u32,
    forbidden: u32,
    euid: u32,
) -> Option<String> {
    if !is {
        Some(format!("it is not {what}"))
    } else if uid != 0 && uid != euid {
        Some(format!("it is owned by uid {uid}, not root"))
    } else if mode & forbidden != 0 {
        let who = match (mode & forbidden & 0o070 != 0, mode & forbidden & 0o007 != 0) {
            (true, true) => "its group and others",
            (true, false) => "its group",
            _ => "others",
        };
        let may = if forbidden & 0o044 != 0 {
            "read or write"
        } else {
            "write"
        };
        Some(format!(
            "its mode is {:04o}: {who} may {may} it",
            mode & 0o7777
        ))
    } else {
        None
    }
}

/// The lock file's name for `resource` in network namespace `namespace`: device names and ports
/// are per namespace, and so are the locks. Bytes other than letters, digits, `_`, `-` and `.`
/// are written `%XX`, so no name leaves the directory. PURE.
pub(super) fn lock_file_name(resource: &Resource, namespace: u64) -> String {
    let what = match resource {
        Resource::Device(name) => {
            let mut encoded = String::from("dev-");
            for byte in name.bytes() {
                if byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.') {
                    encoded.push(byte as char);
                } else {
                    encoded.push_str(&format!("%{byte:02X}"));
                }
            }
            encoded
        }
        Resource::Port(port) => format!("udp-{port}"),
    };
    format!("net-{namespace}.{what}.lock")
}

/// What a lock file says of its holder: `PID COMMAND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) pid: u32,
    pub(super) command: String,
}

/// The record this process writes: its PID and its command line, printable and cut. PURE.
pub(super) fn format_record(pid: u32, command: &str) -> String {
    format!("{pid} {}\n", procfs::cut(printable(command.as_bytes())))
}

/// Reads a lock file's first line as `PID COMMAND`; `None` if it is empty or does not start with
/// a PID (1 to `i32::MAX`: a PID that kill(2) could take for a process group is no PID). PURE.
pub(super) fn parse_record(text: &[u8]) -> Option<Record> {
    let line = text.split(|&b| b == b'\n').next()?;
    let (pid, command) = match line.iter().position(|&b| b == b' ') {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &b""[..]),
    };
    let pid: i32 = std::str::from_utf8(pid).ok()?.parse().ok()?;
    if pid <= 0 {
        return None;
    }
    Some(Record {
        pid: pid as u32,
        command: procfs::cut(printable(command)),
    })
}

/// Who holds a taken lock, from its file's record, from what /proc shows of that PID (`seen`),
/// and whether a process of that PID exists at all (`exists`): /proc's view when there is one,
/// else a live holder named as its file says; `None` when the file names no process that exists.
/// PURE.
pub(super) fn name_holder(
    record: Option<Record>,
    seen: Option<Holder>,
    exists: bool,
) -> Option<Holder> {
    let record = record?;
    match seen {
        // /proc may show the process but not its command line or name (an exiting one).
        Some(holder) if holder.command == "[]" => Some(Holder {
            command: record.command,
            ..holder
        }),
        Some(holder) => Some(holder),
        None if exists => Some(Holder {
            pid: record.pid,
            command: record.command,
            exiting: false,
        }),
        None => None,
    }
}

/// Whether a process `pid` exists, visible in /proc or not: kill(2) with signal 0 checks
/// existence and permission, and fails with EPERM (not ESRCH) for a process that exists but may
/// not be signalled, such as another user's without `CAP_KILL`.
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; `pid` is positive, so it names one process, never a group.
    let sent = unsafe { libc::kill(pid, 0) };
    sent == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This process's own record.
fn own_record() -> String {
    let read = |name: &str| std::fs::read(format!("/proc/self/{name}")).unwrap_or_default();
    let command = procfs::command_line(&read("cmdline"), &read("comm"));
    format_record(std::process::id(), &command)
}

/// Tries to take the lock on `resource` in network namespace `namespace`; if another holds it,
/// names the holder.
pub(super) fn look_at_lock(
    dir: &LockDir,
    resource: &Resource,
    namespace: u64,
) -> Result<Look<OwnedFd>, Error> {
    let name = lock_file_name(resource, namespace);
    let path = dir.path.join(&name);
    let failed = |source| Error::ClaimLock {
        resource: resource.clone(),
        path: path.clone(),
        source,
    };
    let deadline = Instant::now() + IDENTIFY_WAIT;
    loop {
        let file = open_lock_file(dir, &name).map_err(failed)?;
        // SAFETY: flock(2) on a descriptor `file` owns.
        match check(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
            Ok(_) => {
                file.set_len(0).map_err(failed)?;
                file.write_all_at(own_record().as_bytes(), 0)
                    .map_err(failed)?;
                return Ok(Look::Free(OwnedFd::from(file)));
            }
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {}
            Err(e) => return Err(failed(e)),
        }
        let mut text = vec![0u8; RECORD_BYTES];
        let read = file.read_at(&mut text, 0).map_err(failed)?;
        text.truncate(read);
        drop(file);
        let record = parse_record(&text);
        let seen = record.as_ref().and_then(|r| visible_holder(r.pid));
        let exists = record.as_ref().is_some_and(|r| process_exists(r.pid));
        if let Some(holder) = name_holder(record, seen, exists) {
            return Ok(Look::Busy(Busy {
                holders: vec![holder.clone()],
                remains: Remains::Exiting(vec![holder]),
                conflict: Conflict::Lock {
                    resource: resource.clone(),
                    lock: path,
                },
            }));
        }
        let now = Instant::now();
        if now >= deadline {
            let first_line = text.split(|&b| b == b'\n').next().unwrap_or_default();
            return Err(Error::LockHeld {
                resource: resource.clone(),
                path,
                record: procfs::cut(printable(first_line)),
            });
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// Opens (creating it, mode 0600) the lock file `name` in `dir`, without following a symlink,
/// and checks that it is a regular file only its owner, root, can open.
fn open_lock_file(dir: &LockDir, name: &str) -> io::Result<File> {
    let c_name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `dir.fd` is an open directory and `c_name` a NUL-terminated string, both outliving
    // the call; the result is owned right after the check.
    let raw = check(unsafe {
        libc::openat(
            dir.fd.as_fd().as_raw_fd(),
            c_name.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    })
    .map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "it is a symbolic link, which is not followed; remove it",
            )
        } else {
            e
        }
    })?;
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    let meta = file.metadata()?;
    if let Some(problem) = unsafe_because(
        meta.is_file(),
        "a regular file",
        meta.uid(),
        meta.mode(),
        0o077,
        effective_uid(),
    ) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{problem}; remove it"),
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_file_names_are_per_namespace_and_stay_in_the_directory() {
        let cases = [
            (
                Resource::Device("tunfwd0".into()),
                4026531840,
                "net-4026531840.dev-tunfwd0.lock",
            ),
            (
                Resource::Device("tunfwd0".into()),
                4026532999,
                "net-4026532999.dev-tunfwd0.lock",
            ),
            (Resource::Port(55555), 7, "net-7.udp-55555.lock"),
            (
                Resource::Device("t_u-n.0".into()),
                1,
                "net-1.dev-t_u-n.0.lock",
            ),
            // Names the kernel refuses anyway cannot climb out or hide either.
            (Resource::Device("..".into()), 1, "net-1.dev-...lock"),
            (
                Resource::Device("../x/y z\n".into()),
                1,
                "net-1.dev-..%2Fx%2Fy%20z%0A.lock",
            ),
            (Resource::Device("ü".into()), 1, "net-1.dev-%C3%BC.lock"),
        ];
        for (resource, namespace, want) in cases {
            let name = lock_file_name(&resource, namespace);
            assert_eq!(name, want, "{resource:?}");
            assert!(!name.contains('/'));
        }
    }

    #[test]
    fn records_say_pid_and_printable_command_and_are_read_back() {
        let written = format_record(1234, "tunfwd --dev tunfwd0");
        assert_eq!(written, "1234 tunfwd --dev tunfwd0\n");
        assert_eq!(
            parse_record(written.as_bytes()),
            Some(Record {
                pid: 1234,
                command: "tunfwd --dev tunfwd0".into()
            })
        );
        // One line, whatever the command holds.
        assert_eq!(format_record(7, "a\nb\x1b"), "7 a\\nb\\u{1b}\n");
        type Case<'a> = (&'a [u8], Option<(u32, &'a str)>);
        let cases: [Case; 9] = [
            (b"", None),
            (b"\n", None),
            (b"x 1\n", None),
            (b"0 init\n", None),
            (b"-1 all\n", None),
            (b"4294967295 big\n", None),
            (b"42\n", Some((42, ""))),
            (
                b"42 fake\x1b[2J\ntunfwd: forged\n",
                Some((42, "fake\\u{1b}[2J")),
            ),
            (b"42 \xff\n", Some((42, "\\xff"))),
        ];
        for (text, want) in cases {
            let want = want.map(|(pid, command)| Record {
                pid,
                command: command.into(),
            });
            assert_eq!(parse_record(text), want, "{text:?}");
        }
    }

    #[test]
    fn a_held_lock_names_its_holder_from_proc_else_from_its_file() {
        let record = Some(Record {
            pid: 9,
            command: "tunfwd --dev t0".into(),
        });
        let seen = Holder {
            pid: 9,
            command: "tunfwd --dev t0 --peer x".into(),
            exiting: true,
        };
        let from_file = Holder {
            pid: 9,
            command: "tunfwd --dev t0".into(),
            exiting: false,
        };
        let cases = [
            // /proc shows it: its view, exiting or not.
            (record.clone(), Some(seen.clone()), true, Some(seen.clone())),
            // Hidden from /proc but there: live, as the file says.
            (record.clone(), None, true, Some(from_file)),
            // Shown, but with no command: the file's.
            (
                record.clone(),
                Some(Holder {
                    command: "[]".into(),
                    ..seen.clone()
                }),
                true,
                Some(Holder {
                    command: "tunfwd --dev t0".into(),
                    ..seen.clone()
                }),
            ),
            // Not there at all, or no record: unknown.
            (record, None, false, None),
            (None, None, true, None),
        ];
        for (record, seen, exists, want) in cases {
            assert_eq!(
                name_holder(record.clone(), seen, exists),
                want,
                "{record:?}"
            );
        }
    }

    #[test]
    fn only_a_root_owned_directory_and_private_files_are_trusted() {
        let dir = |uid, mode, euid| unsafe_because(true, "a directory", uid, mode, 0o022, euid);
        let file = |uid, mode, euid| unsafe_because(true, "a regular file", uid, mode, 0o077, euid);
        assert_eq!(dir(0, 0o40755, 0), None);
        assert_eq!(dir(0, 0o41755, 0), None);
        assert_eq!(dir(1000, 0o40700, 1000), None, "the user tunfwd runs as");
        assert_eq!(
            dir(1000, 0o40755, 0).as_deref(),
            Some("it is owned by uid 1000, not root")
        );
        assert_eq!(
            dir(0, 0o40775, 0).as_deref(),
            Some("its mode is 0775: its group may write it")
        );
        assert_eq!(
            dir(0, 0o41777, 0).as_deref(),
            Some("its mode is 1777: its group and others may write it")
        );
        assert_eq!(
            dir(0, 0o40757, 0).as_deref(),
            Some("its mode is 0757: others may write it")
        );
        assert_eq!(
            unsafe_because(false, "a directory", 0, 0o755, 0o022, 0).as_deref(),
            Some("it is not a directory")
        );
        assert_eq!(file(0, 0o100600, 0), None);
        assert_eq!(
            file(0, 0o100644, 0).as_deref(),
            Some("its mode is 0644: its group and others may read or write it")
        );
        assert_eq!(
            file(65534, 0o100600, 0).as_deref(),
            Some("it is owned by uid 65534, not root")
        );
    }

    #[test]
    fn process_exists_says_yes_for_this_one_and_no_for_nonsense() {
        assert!(process_exists(std::process::id()));
        assert!(process_exists(1), "init exists, signalled or not");
        assert!(!process_exists(0), "0 is a process group, not a PID");
        assert!(!process_exists(u32::MAX), "-1 would be every process");
        // pid_max is at most 2^22 (proc(5)).
        assert!(!process_exists((1 << 22) + 1));
    }
}
