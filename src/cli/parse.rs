//! The values of single options, parsed: what clap's `value_parser`s call (the functions that
//! return `Result<_, String>`, whose message is the problem alone: [`super::value_error`] puts the
//! option's name in front), and the public parsers other tools share (`simpletun --address`,
//! `tunload udp-flood --tos`). PURE.

use super::{ConfigError, bad};
use crate::offload::ecn::{ECN_MASK, OuterDscp};
use std::net::{IpAddr, SocketAddr};

/// `IFNAMSIZ - 1`: an interface name's bytes, without the terminating NUL.
pub const MAX_DEVICE_NAME: usize = 15;

/// The most CPUs a `cpu_set_t` can name (`CPU_SETSIZE` in glibc's <sched.h>); a CPU number at or
/// above it cannot be pinned to, so a list is refused before it is expanded (a range such as
/// `0-18446744073709551615` would otherwise allocate without bound).
pub const MAX_CPUS: usize = 1024;

const MIN_BUFFER_MEMORY: usize = 64 << 10;
const MAX_BUFFER_MEMORY: usize = 1 << 30;

/// The largest `--ring-depth`.
const MAX_RING_DEPTH: usize = 4096;

/// Where the peer is, before name resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSpec {
    Address(SocketAddr),
    Name { host: String, port: u16 },
}

/// A `--cpus` list, in the order workers take its CPUs (a newtype, so that clap takes the list
/// as one value rather than an `Option<Vec<_>>` of several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// Parses `--peer` without resolving names.
pub fn parse_peer(text: &str) -> Result<PeerSpec, ConfigError> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(PeerSpec::Address(address));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| bad("--peer", format!("'{text}' is not HOST:PORT")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("--peer", format!("'{port}' is not a port number")))?;
    if host.is_empty() || host.contains(':') || host.contains(char::is_whitespace) {
        return Err(bad(
            "--peer",
            format!("'{text}' is not HOST:PORT (write IPv6 as [ADDR]:PORT)"),
        ));
    }
    if port == 0 {
        return Err(bad("--peer", "port 0 is not a destination"));
    }
    Ok(PeerSpec::Name {
        host: host.to_string(),
        port,
    })
}

/// Parses a byte size: digits, optionally followed by K, M or G (powers of 1024).
pub fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last()? {
        (at, 'K' | 'k') => (&text[..at], 10),
        (at, 'M' | 'm') => (&text[..at], 20),
        (at, 'G' | 'g') => (&text[..at], 30),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: usize = digits.parse().ok()?;
    n.checked_mul(1 << shift)
}

/// Parses a CPU list such as `0-3,6`. A CPU named twice keeps its first place (`2,0-3` is
/// `2,0,1,3`), so round-robin pinning never puts two workers on one core by accident.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, ConfigError> {
    let mut cpus = Vec::new();
    let mut seen = [false; MAX_CPUS];
    let number = |s: &str| {
        let n = s
            .trim()
            .parse::<usize>()
            .map_err(|_| bad("--cpus", format!("'{s}' is not a CPU number")))?;
        if n >= MAX_CPUS {
            return Err(bad(
                "--cpus",
                format!("CPU {n} is out of range (at most {})", MAX_CPUS - 1),
            ));
        }
        Ok(n)
    };
    for part in text.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (number(lo)?, number(hi)?),
            None => {
                let n = number(part)?;
                (n, n)
            }
        };
        if lo > hi {
            return Err(bad("--cpus", format!("range '{part}' runs backwards")));
        }
        for (cpu, seen) in seen.iter_mut().enumerate().take(hi + 1).skip(lo) {
            if !std::mem::replace(seen, true) {
                cpus.push(cpu);
            }
        }
    }
    Ok(cpus)
}

/// Parses an `--address` such as `198.19.0.1/24` or `2001:2::1/64`.
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), ConfigError> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| bad("--address", format!("'{text}' has no /PREFIX")))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| bad("--address", format!("'{addr}' is not an IP address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| bad("--address", format!("prefix '{prefix}' is not 0..={max}")))?;
    Ok((addr, prefix))
}

/// Checks `--dev`: an interface name Linux accepts (`dev_valid_name` in net/core/dev.c).
pub fn validate_device_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(bad("--dev", "empty device name"));
    }
    if name.len() > MAX_DEVICE_NAME {
        return Err(bad(
            "--dev",
            format!(
                "'{name}' is {} bytes; Linux allows at most {MAX_DEVICE_NAME}",
                name.len()
            ),
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':', '%'])
        || name.contains(char::is_whitespace)
    {
        return Err(bad(
            "--dev",
            format!("'{name}' is not a valid interface name"),
        ));
    }
    Ok(())
}

/// Parses a byte, decimal or hex with a `0x` or `0X` prefix: the TOS values of `--tos` here
/// and of `tunload udp-flood --tos`, which takes whole bytes, ECN bits included.
pub fn parse_byte(text: &str) -> Option<u8> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16).ok(),
        None => text.parse::<u8>().ok(),
    }
}

/// Parses `--tos`: `inherit`, or a TOS byte (decimal or `0x` hex) with its ECN bits clear, since
/// those come from the inner packet.
pub fn parse_tos(text: &str) -> Result<OuterDscp, ConfigError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("inherit") {
        return Ok(OuterDscp::Inherit);
    }
    let value = parse_byte(text).ok_or_else(|| {
        bad(
            "--tos",
            format!("'{text}' is neither 'inherit' nor a byte (0-255, or 0x00-0xff)"),
        )
    })?;
    if value & ECN_MASK != 0 {
        return Err(bad(
            "--tos",
            format!(
                "{value:#04x} sets the ECN bits (the low two), which come from the inner packet; \
                 the DSCP alone is {:#04x}",
                value & !ECN_MASK
            ),
        ));
    }
    Ok(OuterDscp::Fixed(value))
}

/// Parses `--metrics`: an IP address and a non-zero port. No hostnames: the listener is bound
/// before anything else, and a name that resolves to several addresses would have to pick one.
pub fn parse_metrics_address(text: &str) -> Result<SocketAddr, ConfigError> {
    let address: SocketAddr = text.parse().map_err(|_| {
        bad(
            "--metrics",
            format!("'{text}' is not ADDR:PORT (an IP address and a port, e.g. 127.0.0.1:9101)"),
        )
    })?;
    if address.port() == 0 {
        return Err(bad(
            "--metrics",
            "port 0 would be a random port that no scraper knows; choose one",
        ));
    }
    Ok(address)
}

// The value parsers clap calls: each option's parser above, its problem alone as the error.

pub(super) fn peer(text: &str) -> Result<PeerSpec, String> {
    parse_peer(text).map_err(ConfigError::into_problem)
}

pub(super) fn listen(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("'{text}' is not ADDR:PORT"))
}

pub(super) fn device_name(text: &str) -> Result<String, String> {
    validate_device_name(text).map_err(ConfigError::into_problem)?;
    Ok(text.to_string())
}

pub(super) fn cpu_list(text: &str) -> Result<CpuList, String> {
    parse_cpu_list(text)
        .map(CpuList)
        .map_err(ConfigError::into_problem)
}

pub(super) fn cidr(text: &str) -> Result<(IpAddr, u8), String> {
    parse_cidr(text).map_err(ConfigError::into_problem)
}

/// `--ring-depth`: a power of two, at most 4096 (io_uring's own limit is higher; past it the
/// rings' memory grows with no gain measured).
pub(super) fn ring_depth(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_RING_DEPTH).contains(&n) && n.is_power_of_two() => Ok(n),
        Ok(n) => Err(format!("{n} is not a power of two in 1..={MAX_RING_DEPTH}")),
        Err(_) => Err(format!("'{text}' is not a number")),
    }
}

/// `--buffer-memory` and `--socket-buffer`: a size from 64 KiB to 1 GiB.
pub(super) fn buffer_size(text: &str) -> Result<usize, String> {
    parse_size(text)
        .filter(|b| (MIN_BUFFER_MEMORY..=MAX_BUFFER_MEMORY).contains(b))
        .ok_or_else(|| {
            format!("'{text}' is not a size between 64K and 1G (bytes, or with K, M or G)")
        })
}

/// The shortest `--aqm-target` and `--aqm-interval`: a wait of a few microseconds is a wake-up,
/// not a queue. The longest: a second and ten, past any round trip a tunnel carries.
pub const MIN_AQM_TIME_NS: u64 = 10_000;
pub const MAX_AQM_TARGET_NS: u64 = 1_000_000_000;
pub const MAX_AQM_INTERVAL_NS: u64 = 10_000_000_000;

/// A time with its unit, `ns`, `us` (or `µs`), `ms` or `s`, as nanoseconds: `5ms`, `500us`,
/// `1.5ms`. `None` for anything else, a number without a unit included.
pub fn parse_time_ns(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    let ns = (value * scale).round();
    (ns.is_finite() && ns <= u64::MAX as f64).then_some(ns as u64)
}

/// `--aqm-target` and `--aqm-interval`: a time from [`MIN_AQM_TIME_NS`] to `max_ns`.
fn aqm_time(text: &str, max_ns: u64) -> Result<u64, String> {
    let show = |ns: u64| match ns {
        ns if ns >= 1_000_000_000 => format!("{}s", ns / 1_000_000_000),
        ns if ns >= 1_000_000 => format!("{}ms", ns / 1_000_000),
        ns => format!("{}us", ns / 1_000),
    };
    parse_time_ns(text)
        .filter(|ns| (MIN_AQM_TIME_NS..=max_ns).contains(ns))
        .ok_or_else(|| {
            format!(
                "'{text}' is not a time between {} and {} (with ns, us, ms or s)",
                show(MIN_AQM_TIME_NS),
                show(max_ns)
            )
        })
}

pub(super) fn aqm_target(text: &str) -> Result<u64, String> {
    aqm_time(text, MAX_AQM_TARGET_NS)
}

pub(super) fn aqm_interval(text: &str) -> Result<u64, String> {
    aqm_time(text, MAX_AQM_INTERVAL_NS)
}

pub(super) fn tos(text: &str) -> Result<OuterDscp, String> {
    parse_tos(text).map_err(ConfigError::into_problem)
}

pub(super) fn metrics_address(text: &str) -> Result<SocketAddr, String> {
    parse_metrics_address(text).map_err(ConfigError::into_problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte parser `--tos` and `tunload udp-flood --tos` share: ECN bits are the caller's
    /// business here, and either spelling of the hex prefix works.
    #[test]
    fn bytes_parse_in_decimal_and_either_hex_prefix() {
        for (text, byte) in [
            ("0", Some(0)),
            ("255", Some(255)),
            ("0xb9", Some(0xb9)),
            ("0XB9", Some(0xb9)),
            (" 0x03 ", Some(3)),
            ("3", Some(3)),
            ("256", None),
            ("0x100", None),
            ("0x", None),
            ("b9", None),
            ("-1", None),
            ("", None),
        ] {
            assert_eq!(parse_byte(text), byte, "{text:?}");
        }
    }

    #[test]
    fn buffer_sizes_are_64k_to_1g() {
        assert_eq!(buffer_size("64K"), Ok(64 << 10));
        assert_eq!(buffer_size("1G"), Ok(1 << 30));
        for text in ["63K", "2G", "lots", ""] {
            assert!(
                buffer_size(text)
                    .unwrap_err()
                    .ends_with("is not a size between 64K and 1G (bytes, or with K, M or G)"),
                "{text}"
            );
        }
    }

    #[test]
    fn times_need_a_unit_and_aqm_times_a_range() {
        assert_eq!(parse_time_ns("5ms"), Some(5_000_000));
        assert_eq!(parse_time_ns("500us"), Some(500_000));
        assert_eq!(parse_time_ns("500µs"), Some(500_000));
        assert_eq!(parse_time_ns("1.5ms"), Some(1_500_000));
        assert_eq!(parse_time_ns("2s"), Some(2_000_000_000));
        assert_eq!(parse_time_ns("750ns"), Some(750));
        for text in ["5", "ms", "5 m", "-5ms", "5ms5", "1e3us", "", "1..5ms"] {
            assert_eq!(parse_time_ns(text), None, "{text:?}");
        }
        assert_eq!(aqm_target("10us"), Ok(10_000));
        assert_eq!(aqm_target("1s"), Ok(1_000_000_000));
        assert_eq!(aqm_interval("10s"), Ok(10_000_000_000));
        assert_eq!(
            aqm_target("9us").unwrap_err(),
            "'9us' is not a time between 10us and 1s (with ns, us, ms or s)"
        );
        assert!(aqm_target("2s").is_err());
        assert!(aqm_interval("11s").is_err());
        assert!(aqm_interval("5").is_err(), "a unit is needed");
    }

    #[test]
    fn ring_depths_are_powers_of_two_up_to_4096() {
        assert_eq!(ring_depth("1"), Ok(1));
        assert_eq!(ring_depth("4096"), Ok(4096));
        for (text, says) in [
            ("3", "3 is not a power of two in 1..=4096"),
            ("0", "0 is not a power of two"),
            ("8192", "8192 is not"),
            ("x", "'x' is not a number"),
        ] {
            assert!(ring_depth(text).unwrap_err().starts_with(says), "{text}");
        }
    }
}
