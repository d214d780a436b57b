//! Switching to an unprivileged user once setup is done (`--user`), and proving it happened.
//!
//! Why after setup: the kernel checks privilege when a TUN queue is created (`TUNSETIFF` wants
//! `CAP_NET_ADMIN`, drivers/net/tun.c `tun_not_capable`), when the link is configured and when a
//! socket is bound, not when an fd that exists is read, written or sent on. So tunfwd does all of
//! that as root, and gives the identity up for the rest of its life: a bug in the packet path then
//! runs as a user that can do nothing with the machine. (A TUN and bound sockets keep working after
//! `setuid`; creating new ones does not, so nothing after setup may need to.)
//!
//! Why every thread needs care: credentials belong to each thread, not the process. setuid(2),
//! NOTES: "At the kernel level, user IDs and group IDs are a per-thread attribute", and glibc's
//! NPTL wrappers for setuid, setgid and setgroups make every other thread repeat the change, by a
//! signal-based technique (musl does the same). The worker threads exist by now, and each must
//! lose root. nix calls those libc wrappers; rather than trust that blindly, [`switch_to`] reads
//! every thread's `/proc/self/task/TID/status` back and refuses to go on if one kept a uid, a gid
//! or a capability.
//!
//! Why no capability survives: capabilities(7), "Effect of user ID changes on capabilities": when
//! a thread whose real, effective or saved uid was 0 sets all three to nonzero, the kernel clears
//! its permitted, effective and ambient sets, unless `SECBIT_KEEP_CAPS` is set, which tunfwd never
//! does (security/commoncap.c `cap_emulate_setxuid`). The bounding set stays; it matters only to
//! execve, and tunfwd never execs.
//!
//! Order: supplementary groups, then the gid, then the uid. Each needs `CAP_SETGID` or
//! `CAP_SETUID`, and both are gone once the uid is not 0.

use super::Error;
use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
use std::fs;
use std::io;

/// Switches every thread to `uid`, `gid` and the supplementary groups `[gid]`, then checks that
/// each thread holds exactly those ids and no capability. `user` names the account in errors.
pub fn switch_to(user: &str, uid: u32, gid: u32) -> Result<(), Error> {
    let step = |step: &'static str, result: nix::Result<()>| {
        result.map_err(|errno| Error::DropPrivileges {
            user: user.to_string(),
            step,
            source: io::Error::from(errno),
        })
    };
    step("setgroups", setgroups(&[Gid::from_raw(gid)]))?;
    // With CAP_SETGID, setgid sets the real, effective and saved gid; setuid likewise (setgid(2),
    // setuid(2)), so no saved id is left to switch back to.
    step("setgid", setgid(Gid::from_raw(gid)))?;
    step("setuid", setuid(Uid::from_raw(uid)))?;
    verify_all_threads(uid, gid)
}

/// Reads every thread's credentials from `/proc/self/task` and checks them against `uid`/`gid`.
pub fn verify_all_threads(uid: u32, gid: u32) -> Result<(), Error> {
    let tasks = fs::read_dir("/proc/self/task").map_err(Error::CheckPrivileges)?;
    let mut threads = 0;
    for task in tasks {
        let task = task.map_err(Error::CheckPrivileges)?;
        let Some(thread) = task
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let text = match fs::read_to_string(task.path().join("status")) {
            Ok(text) => text,
            // A thread that ended since the directory was listed holds nothing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::CheckPrivileges(e)),
        };
        let credentials = ThreadCredentials::parse(&text).ok_or_else(|| {
            Error::CheckPrivileges(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/self/task/{thread}/status lacks the Uid, Gid, Groups or Cap lines"),
            ))
        })?;
        if !credentials.is_only(uid, gid) {
            return Err(Error::PrivilegesRemain {
                thread,
                uid: credentials.uids[1],
                gid: credentials.gids[1],
                capabilities: credentials.capabilities(),
            });
        }
        threads += 1;
    }
    if threads == 0 {
        return Err(Error::CheckPrivileges(io::Error::new(
            io::ErrorKind::NotFound,
            "no threads listed in /proc/self/task",
        )));
    }
    Ok(())
}

/// One thread's ids and capability sets, as `/proc/PID/task/TID/status` shows them
/// (Documentation/filesystems/proc.rst, "Contents of the status fields").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCredentials {
    /// Real, effective, saved set and filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved set and filesystem gid.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    /// `CapAmb` exists since Linux 4.3; older kernels have no ambient set, so 0.
    pub cap_ambient: u64,
}

impl ThreadCredentials {
    /// Parses a status file; `None` when a field tunfwd relies on is missing or malformed.
    pub fn parse(status: &str) -> Option<ThreadCredentials> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let ids = |name: &str| -> Option<[u32; 4]> {
            let values: Vec<u32> = field(name)?
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            values.try_into().ok()
        };
        let mask = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
        Some(ThreadCredentials {
            uids: ids("Uid")?,
            gids: ids("Gid")?,
            groups: field("Groups")?
                .split_whitespace()
                .map(|g| g.parse().ok())
                .collect::<Option<_>>()?,
            cap_permitted: mask("CapPrm")?,
            cap_effective: mask("CapEff")?,
            cap_ambient: match field("CapAmb") {
                Some(_) => mask("CapAmb")?,
                None => 0,
            },
        })
    }

    /// Every capability the thread could use now or regain without an execve.
    pub fn capabilities(&self) -> u64 {
        self.cap_permitted | self.cap_effective | self.cap_ambient
    }

    /// True when all four uids are `uid`, all four gids are `gid`, the supplementary groups are
    /// at most `[gid]`, and no capability is left.
    pub fn is_only(&self, uid: u32, gid: u32) -> bool {
        self.uids.iter().all(|&u| u == uid)
            && self.gids.iter().all(|&g| g == gid)
            && self.groups.iter().all(|&g| g == gid)
            && self.capabilities() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "Name:\ttunfwd-q0\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\n\
        Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t64\nGroups:\t0 \nNStgid:\t4242\n\
        CapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n\
        CapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\n";

    const NOBODY: &str = "Name:\ttunfwd\nUid:\t65534\t65534\t65534\t65534\n\
        Gid:\t65534\t65534\t65534\t65534\nGroups:\t65534 \nCapInh:\t0000000000000000\n\
        CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\n\
        CapAmb:\t0000000000000000\n";

    #[test]
    fn root_thread_is_not_only_nobody() {
        let c = ThreadCredentials::parse(ROOT).unwrap();
        assert_eq!(c.uids, [0; 4]);
        assert_eq!(c.groups, vec![0]);
        assert_eq!(c.cap_effective, 0x1ff_ffff_ffff);
        assert!(!c.is_only(65534, 65534));
    }

    #[test]
    fn dropped_thread_has_only_its_ids_and_no_capabilities() {
        let c = ThreadCredentials::parse(NOBODY).unwrap();
        assert_eq!(c.uids, [65534; 4]);
        assert_eq!(c.capabilities(), 0);
        assert!(c.is_only(65534, 65534));
        assert!(!c.is_only(65534, 65533), "gid differs");
        // The bounding set is not a capability the thread holds.
        assert_eq!(c.cap_permitted | c.cap_effective, 0);
    }

    #[test]
    fn any_leftover_fails_the_check() {
        let saved_root = NOBODY.replace(
            "Uid:\t65534\t65534\t65534\t65534",
            "Uid:\t65534\t65534\t0\t65534",
        );
        assert!(
            !ThreadCredentials::parse(&saved_root)
                .unwrap()
                .is_only(65534, 65534)
        );
        let extra_group = NOBODY.replace("Groups:\t65534 ", "Groups:\t27 65534");
        assert!(
            !ThreadCredentials::parse(&extra_group)
                .unwrap()
                .is_only(65534, 65534)
        );
        let ambient = NOBODY.replace("CapAmb:\t0000000000000000", "CapAmb:\t0000000000001000");
        let c = ThreadCredentials::parse(&ambient).unwrap();
        assert_eq!(c.capabilities(), 1 << 12, "CAP_NET_ADMIN is bit 12");
        assert!(!c.is_only(65534, 65534));
        let no_groups = NOBODY.replace("Groups:\t65534 ", "Groups:\t");
        assert!(
            ThreadCredentials::parse(&no_groups)
                .unwrap()
                .is_only(65534, 65534)
        );
    }

    #[test]
    fn old_kernels_without_capamb_parse_and_garbage_does_not() {
        let old = NOBODY.replace("CapAmb:\t0000000000000000\n", "");
        assert_eq!(ThreadCredentials::parse(&old).unwrap().cap_ambient, 0);
        assert_eq!(ThreadCredentials::parse(""), None);
        assert_eq!(
            ThreadCredentials::parse(&NOBODY.replace("\t65534\t65534\n", "\n")),
            None
        );
        assert_eq!(
            ThreadCredentials::parse(&NOBODY.replace("CapEff:\t0000", "CapEff:\tzz00")),
            None
        );
    }

    #[test]
    fn this_process_reads_back_consistently() {
        // Whoever runs the tests, every thread of this process has the ids of the main thread.
        let me =
            ThreadCredentials::parse(&fs::read_to_string("/proc/self/status").unwrap()).unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        assert_eq!(me.uids[1], uid);
        if me.capabilities() == 0
            && me.uids.iter().all(|&u| u == uid)
            && me.gids.iter().all(|&g| g == me.gids[0])
            && me.groups.iter().all(|&g| g == me.gids[0])
        {
            assert!(verify_all_threads(uid, me.gids[0]).is_ok());
        } else {
            assert!(matches!(
                verify_all_threads(uid, me.gids[0]),
                Err(Error::PrivilegesRemain { .. })
            ));
        }
    }
}
