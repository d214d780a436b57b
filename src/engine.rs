//! Which I/O engine the workers run, chosen at startup from what the kernel and the seccomp
//! profile allow. PURE: [`choose`] can be fed the feature sets that old kernels and container
//! profiles report; `worker::probe::probe` asks this kernel.

use std::fmt;

/// An I/O engine. All of them run the same relay core (`crate::relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// io_uring with a multishot read on the TUN (Linux 6.7), a multishot recvmsg (6.0) and
    /// provided-buffer rings (5.19).
    Uring,
    /// io_uring with single-shot reads and receives into buffers the engine owns: opcodes of
    /// Linux 5.15 (see [`COMPAT_FLOOR`]).
    UringCompat,
    /// No io_uring: `poll`, `read`/`writev` on the TUN, `recvmmsg`/`sendmmsg` on the socket.
    Poll,
}

impl Engine {
    pub const ALL: [Engine; 3] = [Engine::Uring, Engine::UringCompat, Engine::Poll];

    /// The name `--engine` takes and the logs use.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Uring => "uring",
            Engine::UringCompat => "uring-compat",
            Engine::Poll => "poll",
        }
    }

    pub fn from_name(name: &str) -> Option<Engine> {
        Engine::ALL.into_iter().find(|e| e.name() == name)
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the kernel lets this process do with io_uring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// `io_uring_setup` failed with this errno: ENOSYS (no io_uring, or a seccomp filter that
    /// says so), EPERM (`kernel.io_uring_disabled`, or Docker's default seccomp profile).
    pub setup_errno: Option<i32>,
    /// `IORING_REGISTER_PROBE` (Linux 5.6) answered; without it no opcode is known to work.
    pub probed: bool,
    /// `IORING_OP_READ_MULTISHOT` (Linux 6.7).
    pub read_multishot: bool,
    /// The opcodes `uring-compat` uses: READ, WRITEV, SENDMSG, RECVMSG, TIMEOUT, ASYNC_CANCEL.
    pub single_shot: bool,
    /// `IORING_FEAT_FAST_POLL` (Linux 5.7): a read or receive with no data yet waits on the
    /// file's poll queue, on the ring's own thread, instead of blocking an io-wq thread.
    pub fast_poll: bool,
    /// The kernel's version, `(major, minor)` from uname's release; `None` if unreadable.
    pub kernel: Option<(u32, u32)>,
}

impl Features {
    /// A kernel without io_uring, or a process not allowed to use it.
    pub fn no_io_uring(errno: i32) -> Features {
        Features {
            setup_errno: Some(errno),
            ..Features::default()
        }
    }
}

/// The oldest kernel `uring-compat` runs on: its opcodes are Linux 5.6 and fast poll 5.7, but a
/// TUN file does not say it can be read without blocking (no `FMODE_NOWAIT`), so the engine makes
/// its fd `O_NONBLOCK`, and only from 5.15 (commit 5d329e1286b0, "io_uring: allow retry for
/// O_NONBLOCK if async is supported") does io_uring wait on the poll queue for such a read
/// instead of failing it with EAGAIN at once. (A blocking fd would put each armed read in an
/// io-wq thread of its own, where two can take packets in one order and complete in the other.)
pub const COMPAT_FLOOR: (u32, u32) = (5, 15);

/// `(major, minor)` of a kernel release string such as `6.1.0-18-amd64` or `5.15.0-91-generic`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The engine to run, and why, in words for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub engine: Engine,
    pub reason: String,
}

/// Picks the engine: `forced` if given and the kernel can run it (an error saying why not
/// otherwise), else the fastest the kernel can run.
pub fn choose(forced: Option<Engine>, f: &Features) -> Result<Choice, String> {
    let lacks = |engine: Engine| -> Option<String> {
        if engine == Engine::Poll {
            return None;
        }
        if let Some(errno) = f.setup_errno {
            return Some(format!(
                "io_uring is unavailable ({}; kernel.io_uring_disabled or a seccomp profile)",
                std::io::Error::from_raw_os_error(errno)
            ));
        }
        if !f.probed {
            return Some("the kernel cannot list its io_uring opcodes (Linux 5.6)".into());
        }
        match engine {
            Engine::Uring if !f.read_multishot => {
                Some("the kernel has no multishot read (Linux 6.7)".into())
            }
            _ if !f.single_shot => Some(
                "the kernel lacks an io_uring opcode uring-compat needs (READ, WRITEV, SENDMSG, \
                 RECVMSG, TIMEOUT, ASYNC_CANCEL; Linux 5.6)"
                    .into(),
            ),
            _ if !f.fast_poll => Some(
                "the kernel's io_uring has no fast poll (IORING_FEAT_FAST_POLL, Linux 5.7)".into(),
            ),
            _ if f.kernel.is_none_or(|k| k < COMPAT_FLOOR) => Some(format!(
                "io_uring waits on a non-blocking TUN read only from Linux {}.{}",
                COMPAT_FLOOR.0, COMPAT_FLOOR.1
            )),
            _ => None,
        }
    };
    if let Some(engine) = forced {
        return match lacks(engine) {
            None => Ok(Choice {
                engine,
                reason: "forced by --engine".into(),
            }),
            Some(why) => Err(format!("--engine {engine} cannot run here: {why}")),
        };
    }
    let mut passed_over = Vec::new();
    for engine in Engine::ALL {
        match lacks(engine) {
            None => {
                let reason = if passed_over.is_empty() {
                    "the kernel has everything it needs".to_string()
                } else {
                    passed_over.join("; ")
                };
                return Ok(Choice { engine, reason });
            }
            Some(why) => passed_over.push(format!("not {engine}: {why}")),
        }
    }
    unreachable!("poll lacks nothing")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(read_multishot: bool) -> Features {
        Features {
            setup_errno: None,
            probed: true,
            read_multishot,
            single_shot: true,
            fast_poll: true,
            kernel: Some(if read_multishot { (6, 18) } else { (6, 1) }),
        }
    }

    #[test]
    fn auto_takes_the_fastest_engine_the_kernel_runs() {
        // Linux 6.7 and later.
        assert_eq!(choose(None, &kernel(true)).unwrap().engine, Engine::Uring);
        // Debian 12 and Amazon Linux 2023 (6.1), Ubuntu 22.04 (5.15), RHEL 9 (5.14).
        let old = choose(None, &kernel(false)).unwrap();
        assert_eq!(old.engine, Engine::UringCompat);
        assert!(old.reason.contains("multishot read"), "{}", old.reason);
        // kernel.io_uring_disabled=2, or Docker's default seccomp profile: EPERM.
        let disabled = choose(None, &Features::no_io_uring(libc::EPERM)).unwrap();
        assert_eq!(disabled.engine, Engine::Poll);
        assert!(
            disabled.reason.contains("io_uring is unavailable"),
            "{}",
            disabled.reason
        );
        // A kernel built without io_uring, or a filter that answers ENOSYS.
        assert_eq!(
            choose(None, &Features::no_io_uring(libc::ENOSYS))
                .unwrap()
                .engine,
            Engine::Poll
        );
        // io_uring, but before opcode probing (5.5), or with an opcode missing.
        let unprobed = Features {
            probed: false,
            ..kernel(false)
        };
        assert_eq!(choose(None, &unprobed).unwrap().engine, Engine::Poll);
        let partial = Features {
            single_shot: false,
            ..kernel(false)
        };
        assert_eq!(choose(None, &partial).unwrap().engine, Engine::Poll);
        // Linux 5.4 (Ubuntu 20.04): the opcodes but no fast poll.
        let no_fast_poll = Features {
            fast_poll: false,
            kernel: Some((5, 4)),
            ..kernel(false)
        };
        let c = choose(None, &no_fast_poll).unwrap();
        assert_eq!(c.engine, Engine::Poll);
        assert!(c.reason.contains("fast poll"), "{}", c.reason);
        // Linux 5.10 (Debian 11) and 5.14 (RHEL 9): fast poll, but a non-blocking TUN read
        // fails at once instead of waiting.
        for old in [(5, 10), (5, 14)] {
            let before_floor = Features {
                kernel: Some(old),
                ..kernel(false)
            };
            let c = choose(None, &before_floor).unwrap();
            assert_eq!(c.engine, Engine::Poll);
            assert!(c.reason.contains("non-blocking TUN read"), "{}", c.reason);
        }
        // Linux 5.15 (Ubuntu 22.04).
        let at_floor = Features {
            kernel: Some((5, 15)),
            ..kernel(false)
        };
        assert_eq!(choose(None, &at_floor).unwrap().engine, Engine::UringCompat);
    }

    #[test]
    fn kernel_versions_come_from_release_strings() {
        assert_eq!(kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(kernel_version("5.14.0-362.8.1.el9_3.x86_64"), Some((5, 14)));
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("garbage"), None);
        assert!((5, 14) < COMPAT_FLOOR && (5, 15) >= COMPAT_FLOOR && (6, 1) > COMPAT_FLOOR);
    }

    #[test]
    fn a_forced_engine_runs_or_is_refused_with_the_reason() {
        for engine in Engine::ALL {
            let choice = choose(Some(engine), &kernel(true)).unwrap();
            assert_eq!(choice.engine, engine);
            assert_eq!(choice.reason, "forced by --engine");
        }
        let e = choose(Some(Engine::Uring), &kernel(false)).unwrap_err();
        assert!(
            e.contains("--engine uring cannot run here") && e.contains("6.7"),
            "{e}"
        );
        assert_eq!(
            choose(Some(Engine::UringCompat), &kernel(false))
                .unwrap()
                .engine,
            Engine::UringCompat
        );
        let none = Features::no_io_uring(libc::EPERM);
        for engine in [Engine::Uring, Engine::UringCompat] {
            let e = choose(Some(engine), &none).unwrap_err();
            assert!(e.contains("io_uring is unavailable"), "{e}");
        }
        assert_eq!(
            choose(Some(Engine::Poll), &none).unwrap().engine,
            Engine::Poll
        );
    }

    #[test]
    fn names_round_trip() {
        for engine in Engine::ALL {
            assert_eq!(Engine::from_name(engine.name()), Some(engine));
        }
        assert_eq!(Engine::from_name("epoll"), None);
    }
}
