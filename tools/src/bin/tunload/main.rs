//! `tunload`: the traffic tool that ships with tunfwd, so the demo, the tests and the benches need
//! nothing installed. Every mode is bounded in time (and, where it makes sense, in count), and
//! prints one JSON line with its result.
//!
//! * `tcp-sink` / `tcp-send`: bulk TCP whose every byte is checked at the far end. The stream is a
//!   position-addressed pattern (a hash of seed and offset), so the sink regenerates it and finds
//!   the first wrong byte, whatever the read boundaries. `tcp-send --unchecked` sends a fixed
//!   buffer that the sink only counts, as iperf3 does: making and checking the pattern costs CPU
//!   that a 2-core benchmark would take away from the system under test.
//!   `--mss` clamps the streams' MSS on both ends (`TCP_MAXSEG` before connect(2) and on the
//!   listener before listen(2)), so a tunnel can be driven with many small segments; both modes
//!   report the MSS in effect. `tcp-send --bytes 0` sends for `--seconds` instead of a count.
//! * `udp-sink` / `udp-flood`: sequence-numbered datagrams for packet rate and loss (the sink
//!   also reports what the kernel dropped at its socket, `SO_MEMINFO`);
//!   `udp-flood --tos` sets the datagrams' TOS / traffic class (ECN bits included), to drive a
//!   tunnel's ECN handling.
//! * `ping`: ICMP/ICMPv6 echo over a raw socket (root), for overlay reachability and RTT.
//! * `udp-echo` / `udp-ping`: one request and its reply at a time over UDP, from a chosen source
//!   port, so a test knows exactly how many packets each flow put through a tunnel each way.
//! * `garbage`: malformed datagrams aimed at a tunnel's UDP port, of five kinds, each counted
//!   with the drop reason tunfwd must give it; `--interval-ms` spreads them out in time, and
//!   `--from` sends them from a relay's own address and port (raw IPv4, root).
//!
//! `tcp-send`, `udp-ping` and `garbage` report when they sent, in ns on `CLOCK_MONOTONIC`, which
//! every namespace shares, so a test can prove that two tools' traffic overlapped.
//!
//! One file per mode; `tcp` holds what the two TCP modes share, `pattern` the checked byte
//! stream. Sockets come from std and `socket2`, the result lines from `serde_json`, and the
//! packets `garbage` wraps in raw IPv4 from the test kit's builder.

use clap::{Parser, Subcommand};
use nix::time::{ClockId, clock_gettime};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

mod garbage;
mod pattern;
mod ping;
mod tcp;
mod tcp_send;
mod tcp_sink;
mod udp_echo;
mod udp_flood;
mod udp_ping;
mod udp_sink;

#[derive(Parser)]
#[command(
    name = "tunload",
    version,
    about = "Bounded traffic generator and checker for tunfwd tests and benches"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Accept TCP streams and verify every byte.
    TcpSink {
        #[arg(long)]
        listen: SocketAddr,
        /// Streams to accept before exiting.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Clamp the accepted streams' MSS (TCP_MAXSEG on the listener, before listen), 88..=65535.
        #[arg(long, value_name = "BYTES", value_parser = tcp::parse_mss)]
        mss: Option<u32>,
    },
    /// Send TCP streams of patterned bytes and wait for the sink's verdict.
    TcpSend {
        #[arg(long)]
        to: SocketAddr,
        /// Bytes per stream (0: send for --seconds instead).
        #[arg(long, default_value_t = 0)]
        bytes: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Send a fixed buffer that the sink counts but does not check (for benchmarks).
        #[arg(long)]
        unchecked: bool,
        /// Clamp each stream's MSS (TCP_MAXSEG before connect), 88..=65535.
        #[arg(long, value_name = "BYTES", value_parser = tcp::parse_mss)]
        mss: Option<u32>,
    },
    /// Count sequence-numbered datagrams.
    UdpSink {
        #[arg(long)]
        listen: SocketAddr,
        /// Stop this long after the last datagram.
        #[arg(long, default_value_t = 1000)]
        idle_ms: u64,
        /// Stop after this long in all.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Send sequence-numbered datagrams as fast as possible.
    UdpFlood {
        #[arg(long)]
        to: SocketAddr,
        /// Payload bytes per datagram (at least 8).
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Source port (0: any), to make the flow distinct.
        #[arg(long, default_value_t = 0)]
        from_port: u16,
        /// The datagrams' TOS (IPv4) or traffic class (IPv6) byte, ECN bits included: 2 is
        /// ECT(0), 0xb8 is EF without ECN.
        #[arg(long, default_value_t = 0, value_parser = parse_tos)]
        tos: u8,
    },
    /// ICMP echo over a raw socket (needs root).
    Ping {
        #[arg(long)]
        to: IpAddr,
        #[arg(long, default_value_t = 10)]
        count: u32,
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        /// How long to wait for replies after the last request.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Write the RTT percentile distribution (HdrHistogram .hgrm text, in µs) here.
        #[arg(long)]
        hgrm: Option<std::path::PathBuf>,
    },
    /// Send malformed datagrams to a tunnel's UDP port.
    Garbage {
        #[arg(long)]
        to: SocketAddr,
        /// Datagrams of each kind.
        #[arg(long, default_value_t = 100)]
        count: u32,
        /// Pause after each round of one datagram of every kind (0: a short pause every 64
        /// datagrams), to spread the garbage over `count` times this long.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// Send from this IPv4 address and port, which a relay may hold, in raw IPv4 packets
        /// (needs root) instead of from a socket of its own on any port.
        #[arg(long)]
        from: Option<SocketAddr>,
    },
    /// Echo every datagram back to its sender.
    UdpEcho {
        #[arg(long)]
        listen: SocketAddr,
        /// Stop after echoing this many datagrams.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Stop after this long in all.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Request and reply over UDP, one at a time: a sequence-numbered datagram to an echo
    /// (`udp-echo`), then wait for it to come back before sending the next.
    UdpPing {
        #[arg(long)]
        to: SocketAddr,
        /// Source port (0: any), to make the flow distinct.
        #[arg(long, default_value_t = 0)]
        from_port: u16,
        #[arg(long, default_value_t = 100)]
        count: u64,
        /// Payload bytes per datagram (at least 8).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// How long to wait for each reply.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Stop after this long in all.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

fn main() {
    let result = match Cli::parse().mode {
        Mode::TcpSink {
            listen,
            streams,
            seconds,
            mss,
        } => tcp_sink::run(listen, streams, Duration::from_secs(seconds), mss),
        Mode::TcpSend {
            to,
            bytes,
            seconds,
            streams,
            unchecked,
            mss,
        } => tcp_send::run(
            to,
            bytes,
            Duration::from_secs(seconds),
            streams,
            unchecked,
            mss,
        ),
        Mode::UdpSink {
            listen,
            idle_ms,
            seconds,
        } => udp_sink::run(
            listen,
            Duration::from_millis(idle_ms),
            Duration::from_secs(seconds),
        ),
        Mode::UdpFlood {
            to,
            size,
            seconds,
            from_port,
            tos,
        } => udp_flood::run(to, size, Duration::from_secs(seconds), from_port, tos),
        Mode::Ping {
            to,
            count,
            interval_ms,
            timeout_ms,
            hgrm,
        } => ping::run(
            to,
            count,
            Duration::from_millis(interval_ms),
            Duration::from_millis(timeout_ms),
            hgrm.as_deref(),
        ),
        Mode::Garbage {
            to,
            count,
            interval_ms,
            from,
        } => garbage::run(to, from, count, Duration::from_millis(interval_ms)),
        Mode::UdpEcho {
            listen,
            count,
            seconds,
        } => udp_echo::run(listen, count, Duration::from_secs(seconds)),
        Mode::UdpPing {
            to,
            from_port,
            count,
            size,
            timeout_ms,
            seconds,
        } => udp_ping::run(
            to,
            from_port,
            count,
            size,
            Duration::from_millis(timeout_ms),
            Duration::from_secs(seconds),
        ),
    };
    if let Err(e) = result {
        eprintln!("tunload: {e}");
        std::process::exit(1);
    }
}

/// Prints a mode's result: one JSON object on one line, its keys in the order `report` declares
/// them.
fn print_json(report: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string(report).expect("a report is plain data")
    );
}

/// `value` rounded to `digits` decimals, as the result lines give seconds and rates.
fn rounded(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// Now on `CLOCK_MONOTONIC`, in ns. One clock for every process on the machine (clock_gettime(2);
/// network namespaces do not change it, only a time namespace would, time_namespaces(7)), so the
/// windows that tools in different namespaces report can be compared.
fn monotonic_ns() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always there");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// A read that timed out: `SO_RCVTIMEO` reports EAGAIN, which std calls WouldBlock.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

fn with_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The wildcard address of `to`'s family, port `port`.
fn wildcard_for(to: SocketAddr, port: u16) -> SocketAddr {
    if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], port))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
    }
}

/// Parses `--tos`: a whole byte, ECN bits included, decimal or `0x`/`0X` hex, as tunfwd's
/// own `--tos` reads its bytes.
fn parse_tos(text: &str) -> Result<u8, String> {
    tunfwd::testing::parse_byte(text)
        .ok_or_else(|| format!("'{text}' is not a byte (0-255 or 0x00-0xff)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_seconds_keep_their_decimals() {
        assert_eq!(rounded(5.0004999, 3), 5.0);
        assert_eq!(rounded(12.34567, 3), 12.346);
        assert_eq!(
            serde_json::to_string(&rounded(1.23456, 3)).unwrap(),
            "1.235"
        );
    }

    #[test]
    fn a_tos_is_a_byte_in_decimal_or_hex() {
        assert_eq!(parse_tos("2"), Ok(2));
        assert_eq!(parse_tos("0xb8"), Ok(0xb8));
        assert!(parse_tos("256").is_err());
    }
}
