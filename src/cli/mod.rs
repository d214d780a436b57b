//! Command line: clap's derive for the syntax and for each option's value ([`Args`], with the
//! value parsers of `parse`), then [`Args::validate`] for what depends on several options or on
//! the machine (the MTU against the peer's family and the addresses, the path MTU floor's range,
//! the CPUs that are online, the peer's name, the accounts of `--user`). PURE.
//!
//! Validation needs facts from the machine (the online CPUs, DNS for a hostname peer, the user
//! database); the caller passes those in, so every rule here is unit-tested without root or
//! network. Every refusal is one line that starts with the option's name: [`ConfigError`] from
//! `validate`, and [`value_error`] for a value clap's parsers refused. The binary prints either
//! and exits with status 2.
//!
//! `args` is the clap struct, `parse` the value parsers (also used by `simpletun` and `tunload`),
//! `validate` the rules between options and the [`Config`] they make.

mod args;
mod parse;
#[cfg(test)]
mod readme;
mod validate;

pub use args::Args;
pub use parse::parse_byte;
#[cfg(test)]
pub use parse::{parse_cpu_list, parse_size};
pub use validate::{Account, Accounts, Config, Entropy, WireguardOptions, pick_peer};

/// The UDP port tunfwd listens on by default.
pub const DEFAULT_PORT: u16 = 55555;
/// Linux's limit on queues of one TUN device (`MAX_TAP_QUEUES` in drivers/net/tun.c).
pub const MAX_QUEUES: usize = 256;
/// The TUN transmit queue length tunfwd sets unless told otherwise. The kernel's is 500, which a
/// flow of small packets fills in 3 ms at 166k packets a second: a worker that waits that long
/// for a CPU loses packets. 2000 lost none at that rate where 500 lost 4 to 5%
/// (bench-results/2026-11-30T160000Z-traffic-shapes.md). It counts packets, not bytes, and one
/// TCP flow's window (its sender's send buffer, 4 MB by default) fills about 60 of them.
pub const DEFAULT_TX_QUEUE_LEN: u32 = 2000;

/// The path MTU below which only an acknowledged size is used, unless `--pmtu-floor` says
/// otherwise: IPv6's minimum link MTU, which an IPv4 path is as likely to carry.
pub const DEFAULT_PMTU_FLOOR: u32 = crate::wire::ip::IPV6_MIN_MTU as u32;

/// The longest `--busy-poll`: 10 ms of spinning after each burst is already most of a core.
const MAX_BUSY_POLL_US: u64 = 10_000;

/// The longest `--peer-refresh`: a day.
const MAX_PEER_REFRESH_SECS: u64 = 86_400;

/// Bad input: which option, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{option}: {problem}")]
pub struct ConfigError {
    /// The option as typed, `--queues`.
    pub option: String,
    pub problem: String,
}

impl ConfigError {
    /// The problem alone, for a clap value parser (clap and [`value_error`] name the option).
    fn into_problem(self) -> String {
        self.problem
    }
}

fn bad(option: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        option: option.to_string(),
        problem: problem.into(),
    }
}

/// A value clap refused, as one line naming its option: what its value parser said
/// (`ValueValidation`: a malformed size, a CPU list, a number out of its range), or that it is
/// not one of the names it takes (`InvalidValue`: `--engine`). `None` for everything else (help,
/// version, a missing, unknown or conflicting option), which clap prints itself, with its usage,
/// and exits 2 for (`clap::Error::exit`).
pub fn value_error(error: &clap::Error) -> Option<ConfigError> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind| match error.get(kind) {
        Some(ContextValue::String(text)) => Some(text.as_str()),
        _ => None,
    };
    // `--queues <N>`: the option and its value name.
    let option = context(ContextKind::InvalidArg)?.split([' ', '=']).next()?;
    let value = context(ContextKind::InvalidValue).unwrap_or("");
    let problem = match error.kind() {
        ErrorKind::InvalidValue => match error.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(names)) => {
                format!("'{value}' is not one of {}", names.join(", "))
            }
            _ => format!("'{value}' is not a value it takes"),
        },
        ErrorKind::ValueValidation => match std::error::Error::source(error) {
            Some(why) => why.to_string(),
            None => format!("'{value}' is not a value it takes"),
        },
        _ => return None,
    };
    Some(bad(option, problem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn refusal(extra: &[&str]) -> Option<String> {
        let mut argv = vec!["tunfwd", "--peer", "198.18.0.2:1"];
        argv.extend_from_slice(extra);
        let e = Args::try_parse_from(argv).expect_err("clap refuses");
        value_error(&e).map(|e| e.to_string())
    }

    /// What the binary prints after `tunfwd: ` for values clap refuses: the option first, then
    /// the parser's own words, or the names an enum takes.
    #[test]
    fn refused_values_are_one_line_naming_the_option() {
        for (extra, want) in [
            (
                &["--engine", "bogus"][..],
                "--engine: 'bogus' is not one of auto, uring, uring-compat, poll",
            ),
            (
                &["--cpus", "4096"],
                "--cpus: CPU 4096 is out of range (at most 1023)",
            ),
            (
                &["--buffer-memory", "lots"],
                "--buffer-memory: 'lots' is not a size between 64K and 1G (bytes, or with K, M \
                 or G)",
            ),
            (&["--queues", "0"], "--queues: 0 is not in 1..=256"),
            (
                &["--busy-poll=10001"],
                "--busy-poll: 10001 is not in 0..=10000",
            ),
            (
                &["--ring-depth", "3"],
                "--ring-depth: 3 is not a power of two in 1..=4096",
            ),
            (&["--listen", "nope"], "--listen: 'nope' is not ADDR:PORT"),
        ] {
            assert_eq!(refusal(extra).as_deref(), Some(want), "{extra:?}");
        }
        assert!(
            refusal(&["--queues", "x"])
                .unwrap()
                .starts_with("--queues: ")
        );
        let peer = Args::try_parse_from(["tunfwd", "--peer", "198.18.0.2"]).unwrap_err();
        assert_eq!(
            value_error(&peer).unwrap().to_string(),
            "--peer: '198.18.0.2' is not HOST:PORT"
        );
    }

    /// Help, version and usage errors are clap's to print, with its usage line.
    #[test]
    fn other_refusals_are_left_to_clap() {
        for argv in [
            &["tunfwd"][..],
            &["tunfwd", "--help"],
            &["tunfwd", "--version"],
            &["tunfwd", "--peer", "198.18.0.2:1", "--no-such-option"],
            &[
                "tunfwd",
                "--peer",
                "198.18.0.2:1",
                "--no-pin",
                "--cpus",
                "1",
            ],
        ] {
            let e = Args::try_parse_from(argv).expect_err("clap refuses");
            assert_eq!(value_error(&e), None, "{argv:?}: {e}");
        }
    }
}
