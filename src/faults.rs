//! Fault injection for tests: makes a worker see the kernel refuse what it rarely refuses, so the
//! fallback paths run in a real transfer. PURE: parses `TUNFWD_FAULTS` and keeps the counters
//! that decide when a fault fires; the worker does the rest.
//!
//! Only with the `fault-injection` cargo feature, which the namespace tests build into a binary
//! of their own (`target/fault-injection`), and in the library's own unit tests (which set no
//! faults, so that the parser is tested by `cargo test`). Without either, [`Faults`] is a
//! zero-sized stand-in whose every check is a constant `false`: the shipped binary neither reads
//! the variable nor carries any injected path.
//!
//! `TUNFWD_FAULTS` is a comma-separated list:
//! * `setup-panic=Q`: worker `Q` panics during setup (a bug in setup must not hang tunfwd).
//! * `tun-write-einval`: every merged TUN write completes with EINVAL without being written (as
//!   Linux 6.6.44 did with a short tail segment), so it is redone segment by segment.
//! * `gso-eio`: every UDP GSO send completes with EIO without being sent (a device without
//!   checksum offload). The first refusal is held back until the next GSO send is made, so at
//!   least two are in flight when GSO turns off.
//! * `send-enobufs=N`: every Nth UDP send completes with ENOBUFS without being sent.
//! * `multishot-end=N`: every Nth multishot completion, the worker cancels that multishot
//!   operation, so the kernel ends it (no `IORING_CQE_F_MORE`) and it must be re-armed.
//! * `ctrunc`: the receive control area is too small for the `UDP_GRO` message, so the kernel
//!   sets `MSG_CTRUNC` on every coalesced receive.
//! * `drain-stuck`: at shutdown one operation never reports back, so the drain times out and
//!   the worker leaks its buffers instead of freeing memory the kernel might still use.
//! * `ring-setup=coop` / `ring-setup=plain`: io_uring rings are built as on a kernel without
//!   `DEFER_TASKRUN` (5.19 to 6.0) or without `COOP_TASKRUN` too (before 5.19), to measure those
//!   completion models here.

#[cfg(any(test, feature = "fault-injection"))]
mod enabled {
    use super::Call;

    /// What to inject, parsed from `TUNFWD_FAULTS`.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Faults {
        setup_panic_queue: Option<usize>,
        tun_write_einval: bool,
        gso_eio: bool,
        send_enobufs_every: u64,
        multishot_end_every: u64,
        ctrunc: bool,
        drain_stuck: bool,
        ring_setup: Option<crate::ring::Completion>,
        sends: u64,
        multishot_completions: u64,
    }

    impl Faults {
        /// Reads `TUNFWD_FAULTS`; an unknown or malformed entry is a panic at startup, since a
        /// test that asked for a fault it does not get would pass for the wrong reason.
        pub fn from_env() -> Faults {
            match std::env::var("TUNFWD_FAULTS") {
                Ok(text) => Faults::parse(&text).unwrap_or_else(|e| panic!("TUNFWD_FAULTS: {e}")),
                Err(_) => Faults::default(),
            }
        }

        pub fn parse(text: &str) -> Result<Faults, String> {
            let mut f = Faults::default();
            for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (name, value) = match item.split_once('=') {
                    Some((n, v)) => (n, Some(v)),
                    None => (item, None),
                };
                let number = || -> Result<u64, String> {
                    value
                        .and_then(|v| v.parse::<u64>().ok())
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("'{item}' needs a positive number"))
                };
                match name {
                    "setup-panic" => {
                        let queue = value.and_then(|v| v.parse::<usize>().ok());
                        f.setup_panic_queue =
                            Some(queue.ok_or_else(|| format!("'{item}' needs a queue number"))?);
                    }
                    "tun-write-einval" => f.tun_write_einval = true,
                    "gso-eio" => f.gso_eio = true,
                    "send-enobufs" => f.send_enobufs_every = number()?,
                    "multishot-end" => f.multishot_end_every = number()?,
                    "ctrunc" => f.ctrunc = true,
                    "drain-stuck" => f.drain_stuck = true,
                    "ring-setup" => {
                        f.ring_setup = Some(match value {
                            Some("coop") => crate::ring::Completion::CoopTaskrun,
                            Some("plain") => crate::ring::Completion::Plain,
                            _ => return Err(format!("'{item}' needs coop or plain")),
                        })
                    }
                    _ => return Err(format!("unknown fault '{item}'")),
                }
            }
            Ok(f)
        }

        pub fn setup_panic(&self, queue: usize) -> bool {
            self.setup_panic_queue == Some(queue)
        }

        pub fn ctrunc(&self) -> bool {
            self.ctrunc
        }

        pub fn drain_stuck(&self) -> bool {
            self.drain_stuck
        }

        /// The best completion model io_uring rings may use, if limited.
        pub fn ring_setup(&self) -> Option<crate::ring::Completion> {
            self.ring_setup
        }

        /// The error `call` should complete with instead of being made, if any, and whether
        /// that result is to be held back until the next one (so that two are in flight).
        pub fn intercept(&mut self, call: Call) -> Option<(i32, bool)> {
            match call {
                Call::Send { gso } => self.send_error(gso).map(|e| (e, e == libc::EIO)),
                Call::MergedWrite if self.tun_write_einval => Some((libc::EINVAL, false)),
                Call::MergedWrite | Call::Write => None,
            }
        }

        /// The error a UDP send should complete with instead of being sent, if any.
        pub fn send_error(&mut self, gso: bool) -> Option<i32> {
            self.sends += 1;
            if gso && self.gso_eio {
                return Some(libc::EIO);
            }
            let every = self.send_enobufs_every;
            (every > 0 && self.sends.is_multiple_of(every)).then_some(libc::ENOBUFS)
        }

        /// Whether the multishot operation that just completed should be cancelled now.
        pub fn end_multishot(&mut self) -> bool {
            self.multishot_completions += 1;
            let every = self.multishot_end_every;
            every > 0 && self.multishot_completions.is_multiple_of(every)
        }
    }
}

#[cfg(not(any(test, feature = "fault-injection")))]
mod enabled {
    /// The stand-in when fault injection is not compiled in: nothing is ever injected.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Faults;

    impl Faults {
        #[inline(always)]
        pub fn from_env() -> Faults {
            Faults
        }
        #[inline(always)]
        pub fn setup_panic(&self, _queue: usize) -> bool {
            false
        }
        #[inline(always)]
        pub fn ctrunc(&self) -> bool {
            false
        }
        #[inline(always)]
        pub fn drain_stuck(&self) -> bool {
            false
        }
        #[inline(always)]
        pub fn ring_setup(&self) -> Option<crate::ring::Completion> {
            None
        }
        #[inline(always)]
        pub fn intercept(&mut self, _call: super::Call) -> Option<(i32, bool)> {
            None
        }
        #[inline(always)]
        pub fn end_multishot(&mut self) -> bool {
            false
        }
    }
}

pub use enabled::Faults;

/// What an engine is about to do, as far as faults go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// A UDP send; `gso`: of several datagrams.
    Send { gso: bool },
    /// A TUN write of a merged super-packet.
    MergedWrite,
    /// Any other TUN write.
    Write,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_fault_and_refuses_unknown_ones() {
        let mut f = Faults::parse("setup-panic=1, gso-eio,send-enobufs=3,multishot-end=2").unwrap();
        assert!(f.setup_panic(1) && !f.setup_panic(0));
        assert_eq!(f.send_error(true), Some(libc::EIO));
        assert_eq!(f.send_error(false), None);
        assert_eq!(f.send_error(false), Some(libc::ENOBUFS), "the third send");
        assert!(!f.end_multishot());
        assert!(f.end_multishot());
        assert!(Faults::parse("setup-panic=0").unwrap().setup_panic(0));
        assert!(Faults::parse("tun-write-einval,ctrunc,drain-stuck").is_ok());
        assert_eq!(
            Faults::parse("ring-setup=coop").unwrap().ring_setup(),
            Some(crate::ring::Completion::CoopTaskrun)
        );
        assert_eq!(
            Faults::parse("ring-setup=plain").unwrap().ring_setup(),
            Some(crate::ring::Completion::Plain)
        );
        assert_eq!(Faults::parse("").unwrap().ring_setup(), None);
        for bad in [
            "nope",
            "send-enobufs",
            "send-enobufs=0",
            "multishot-end=x",
            "setup-panic",
            "ring-setup",
            "ring-setup=defer",
        ] {
            assert!(Faults::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Faults::parse("").unwrap(), Faults::default());
    }
}
