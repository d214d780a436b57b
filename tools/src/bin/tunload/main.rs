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

use clap::{Parser, Subcommand};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

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
        #[arg(long, value_name = "BYTES", value_parser = parse_mss)]
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
        #[arg(long, value_name = "BYTES", value_parser = parse_mss)]
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
        } => tcp_sink(listen, streams, Duration::from_secs(seconds), mss),
        Mode::TcpSend {
            to,
            bytes,
            seconds,
            streams,
            unchecked,
            mss,
        } => tcp_send(
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
        } => udp_sink(
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
        } => udp_flood(to, size, Duration::from_secs(seconds), from_port, tos),
        Mode::Ping {
            to,
            count,
            interval_ms,
            timeout_ms,
            hgrm,
        } => ping(
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
        } => garbage(to, from, count, Duration::from_millis(interval_ms)),
        Mode::UdpEcho {
            listen,
            count,
            seconds,
        } => udp_echo(listen, count, Duration::from_secs(seconds)),
        Mode::UdpPing {
            to,
            from_port,
            count,
            size,
            timeout_ms,
            seconds,
        } => udp_ping(
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

/// The pattern byte stream: 8 bytes per position, a SplitMix64 hash of seed and word index.
fn pattern_word(seed: u64, word: u64) -> [u8; 8] {
    let mut z = seed.wrapping_add(word.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).to_le_bytes()
}

/// The pattern as one little-endian u64 per 8-byte word (`pattern_word`, as a number).
fn pattern_u64(seed: u64, word: u64) -> u64 {
    u64::from_le_bytes(pattern_word(seed, word))
}

/// Splits a span at stream offset `offset` of `len` bytes into a head up to the next multiple of
/// 8, whole 8-byte words, and a tail: the word loop is where the time goes, so it handles a u64 at
/// a time instead of byte by byte (the sink checks every byte of multi-GB streams; a slow check
/// would make the load tool, not the tunnel, the bottleneck).
fn head_len(offset: u64, len: usize) -> usize {
    (((8 - offset % 8) % 8) as usize).min(len)
}

/// Fills `out` with the pattern starting at stream offset `offset`.
fn fill_pattern(seed: u64, offset: u64, out: &mut [u8]) {
    let head = head_len(offset, out.len());
    for (i, byte) in out[..head].iter_mut().enumerate() {
        let at = offset + i as u64;
        *byte = pattern_word(seed, at / 8)[(at % 8) as usize];
    }
    let first_word = (offset + head as u64) / 8;
    let total = out.len();
    let mut words = out[head..].chunks_exact_mut(8);
    for (k, chunk) in (&mut words).enumerate() {
        chunk.copy_from_slice(&pattern_u64(seed, first_word + k as u64).to_le_bytes());
    }
    let tail = words.into_remainder();
    let tail_at = offset + (total - tail.len()) as u64;
    for (i, byte) in tail.iter_mut().enumerate() {
        let at = tail_at + i as u64;
        *byte = pattern_word(seed, at / 8)[(at % 8) as usize];
    }
}

/// The stream offset of the first byte of `data` (which starts at `offset`) that breaks the pattern.
fn first_mismatch(seed: u64, offset: u64, data: &[u8]) -> Option<u64> {
    let byte_check = |start: usize, bytes: &[u8]| -> Option<u64> {
        bytes.iter().enumerate().find_map(|(i, b)| {
            let at = offset + (start + i) as u64;
            (*b != pattern_word(seed, at / 8)[(at % 8) as usize]).then_some(at)
        })
    };
    let head = head_len(offset, data.len());
    if let Some(at) = byte_check(0, &data[..head]) {
        return Some(at);
    }
    let first_word = (offset + head as u64) / 8;
    let words = data[head..].chunks_exact(8);
    let tail_start = data.len() - words.remainder().len();
    for (k, chunk) in words.enumerate() {
        let got = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        if got != pattern_u64(seed, first_word + k as u64) {
            return byte_check(head + 8 * k, chunk);
        }
    }
    byte_check(tail_start, &data[tail_start..])
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

fn wildcard_for(to: SocketAddr, port: u16) -> SocketAddr {
    if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], port))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
    }
}

/// Accepts `streams` streams; after each one's EOF, replies with the bytes received and whether
/// every byte matched (or that the stream was only counted). `verified` means no stream failed;
/// `checked` that every stream's bytes were compared with the pattern; `mss` is the smallest MSS
/// in effect on an accepted stream.
fn tcp_sink(
    listen: SocketAddr,
    streams: usize,
    limit: Duration,
    mss: Option<u32>,
) -> io::Result<()> {
    let listener = listen_tcp(listen, mss)?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + limit;
    let mut handles = Vec::new();
    let mut mss_in_use = None::<u32>;
    while handles.len() < streams {
        match listener.accept() {
            Ok((stream, _)) => {
                let stream_mss = mss_in_effect(&stream)?;
                mss_in_use = Some(mss_in_use.map_or(stream_mss, |m| m.min(stream_mss)));
                stream.set_nonblocking(false)?;
                handles.push(std::thread::spawn(move || sink_one(stream, deadline)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(timed_out("waiting for streams"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
    let mut total = 0u64;
    let mut checked = true;
    let mut first_error = None;
    for h in handles {
        match h.join().expect("sink thread") {
            Ok((n, stream_checked)) => {
                total += n;
                checked &= stream_checked;
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let verified = first_error.is_none();
    println!(
        "{{\"mode\":\"tcp-sink\",\"streams\":{streams},\"bytes\":{total},\"checked\":{checked},\"verified\":{verified},\"mss\":{}{}}}",
        json_number(mss_in_use),
        first_error
            .as_ref()
            .map(|e| format!(",\"error\":{e:?}"))
            .unwrap_or_default()
    );
    match first_error {
        None => Ok(()),
        Some(e) => Err(io::Error::other(format!("stream verification failed: {e}"))),
    }
}

/// The seed a sender announces for an unchecked stream (patterned streams never use it).
const UNCHECKED_SEED: u64 = 0;
/// The sink's verdict byte: the pattern broke, every byte matched, or the stream was only counted.
const VERDICT_MISMATCH: u8 = 0;
const VERDICT_MATCHED: u8 = 1;
const VERDICT_COUNTED: u8 = 2;

/// Receives one stream; returns its byte count and whether its bytes were checked.
fn sink_one(mut stream: TcpStream, deadline: Instant) -> io::Result<(u64, bool)> {
    let remaining = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    stream.set_read_timeout(Some(remaining()))?;
    let mut header = [0u8; 8];
    stream.read_exact(&mut header)?;
    let seed = u64::from_le_bytes(header);
    let checked = seed != UNCHECKED_SEED;
    let mut buf = vec![0u8; 1 << 20];
    let mut received = 0u64;
    let mut mismatch = None;
    loop {
        if Instant::now() >= deadline {
            return Err(timed_out("stream"));
        }
        stream.set_read_timeout(Some(remaining()))?;
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if is_timeout(&e) => {
                return Err(timed_out("stream"));
            }
            Err(e) => return Err(e),
        };
        if checked && mismatch.is_none() {
            mismatch = first_mismatch(seed, received, &buf[..n]);
        }
        received += n as u64;
    }
    let mut reply = [0u8; 9];
    reply[..8].copy_from_slice(&received.to_le_bytes());
    reply[8] = match (checked, mismatch) {
        (false, _) => VERDICT_COUNTED,
        (true, None) => VERDICT_MATCHED,
        (true, Some(_)) => VERDICT_MISMATCH,
    };
    stream.write_all(&reply)?;
    match mismatch {
        None => Ok((received, checked)),
        Some(at) => Err(io::Error::other(format!(
            "byte {at} of {received} differs from what was sent"
        ))),
    }
}

/// Sends `streams` streams in parallel and prints their total; `mss` in the result is the smallest
/// MSS in effect on a stream.
fn tcp_send(
    to: SocketAddr,
    bytes: u64,
    limit: Duration,
    streams: usize,
    unchecked: bool,
    mss: Option<u32>,
) -> io::Result<()> {
    let started = Instant::now();
    let handles: Vec<_> = (0..streams as u64)
        .map(|i| {
            let seed = if unchecked {
                UNCHECKED_SEED
            } else {
                0x5eed_0000 + i
            };
            std::thread::spawn(move || send_one(to, seed, bytes, limit, mss))
        })
        .collect();
    let mut total = 0;
    let mut mss_in_use = None::<u32>;
    // The window in which every stream was sending: the last stream's start to the first
    // stream's end.
    let (mut sending_from_ns, mut sending_until_ns) = (0u64, u64::MAX);
    let mut failure = None;
    for h in handles {
        match h.join().expect("sender thread") {
            Ok(sent) => {
                total += sent.bytes;
                mss_in_use = Some(mss_in_use.map_or(sent.mss, |m| m.min(sent.mss)));
                sending_from_ns = sending_from_ns.max(sent.sending_from_ns);
                sending_until_ns = sending_until_ns.min(sent.sending_until_ns);
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(e) = failure {
        return Err(e);
    }
    println!(
        "{{\"mode\":\"tcp-send\",\"streams\":{streams},\"bytes\":{total},\"seconds\":{seconds:.3},\"gbit_per_s\":{:.3},\"checked\":{},\"verified\":true,\"mss\":{},\"sending_from_ns\":{sending_from_ns},\"sending_until_ns\":{sending_until_ns}}}",
        total as f64 * 8.0 / seconds / 1e9,
        !unchecked,
        json_number(mss_in_use)
    );
    Ok(())
}

/// What one stream sent, the MSS it sent with, and when it sent: from just before its first
/// byte of pattern was handed to the socket to just after its last, on [`monotonic_ns`]'s clock.
/// A blocking write returns only once the send buffer has room (send(2)), so once that buffer is
/// full the stream's bytes cross the path throughout the window, not only at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    bytes: u64,
    mss: u32,
    sending_from_ns: u64,
    sending_until_ns: u64,
}

/// Now on `CLOCK_MONOTONIC`, in ns. One clock for every process on the machine (clock_gettime(2);
/// network namespaces do not change it, only a time namespace would, time_namespaces(7)), so the
/// windows that tools in different namespaces report can be compared.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec that lives across the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(rc, 0, "CLOCK_MONOTONIC is always there on Linux");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Sends one stream: `bytes` bytes, or for `limit` when `bytes` is 0. A byte count must also
/// finish within `limit`. With `UNCHECKED_SEED` one buffer is filled once and sent over and over.
fn send_one(
    to: SocketAddr,
    seed: u64,
    bytes: u64,
    limit: Duration,
    mss: Option<u32>,
) -> io::Result<Sent> {
    let started = Instant::now();
    // The sink may still be starting: retry refused connections for a few seconds.
    let mut stream = loop {
        match connect_tcp(to, mss, Duration::from_secs(5)) {
            Ok(stream) => break stream,
            Err(e)
                if e.kind() == io::ErrorKind::ConnectionRefused
                    && started.elapsed() < Duration::from_secs(5) =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    };
    let mss = mss_in_effect(&stream)?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(&seed.to_le_bytes())?;
    const BLOCK: usize = 1 << 18;
    let mut buf = vec![0u8; BLOCK];
    let checked = seed != UNCHECKED_SEED;
    if !checked {
        fill_pattern(seed, 0, &mut buf);
    }
    let mut sent = 0u64;
    let sending_from_ns = monotonic_ns();
    loop {
        let in_time = started.elapsed() < limit;
        let more = if bytes > 0 { sent < bytes } else { in_time };
        if !more {
            break;
        }
        if bytes > 0 && !in_time {
            return Err(timed_out(&format!("sending {bytes} bytes (sent {sent})")));
        }
        let n = if bytes > 0 {
            (bytes - sent).min(BLOCK as u64) as usize
        } else {
            BLOCK
        };
        if checked {
            fill_pattern(seed, sent, &mut buf[..n]);
        }
        stream.write_all(&buf[..n])?;
        sent += n as u64;
    }
    let sending_until_ns = monotonic_ns();
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = [0u8; 9];
    stream.read_exact(&mut reply)?;
    let received = u64::from_le_bytes(reply[..8].try_into().expect("8 bytes"));
    let expected = if checked {
        VERDICT_MATCHED
    } else {
        VERDICT_COUNTED
    };
    if received != sent || reply[8] != expected {
        return Err(io::Error::other(format!(
            "sink saw {received} of {sent} bytes, verdict {} (expected {expected})",
            reply[8]
        )));
    }
    Ok(Sent {
        bytes: sent,
        mss,
        sending_from_ns,
        sending_until_ns,
    })
}

/// What the kernel accepts for `TCP_MAXSEG`: `TCP_MIN_MSS` (88) to `MAX_TCP_WINDOW` (65535), with
/// 0 meaning "no clamp" (net/ipv4/tcp.c, the `TCP_MAXSEG` case of `do_tcp_setsockopt`).
const MSS_RANGE: std::ops::RangeInclusive<u32> = 88..=65535;

/// Parses `--mss`: refused here, with the range, rather than as a bare EINVAL from setsockopt(2).
fn parse_mss(text: &str) -> Result<u32, String> {
    let mss: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of bytes"))?;
    if MSS_RANGE.contains(&mss) {
        Ok(mss)
    } else {
        Err(format!(
            "{mss} is outside {}..={}, the MSS range Linux accepts for TCP_MAXSEG",
            MSS_RANGE.start(),
            MSS_RANGE.end()
        ))
    }
}

/// A number, or `null`, for the hand-written JSON result lines.
fn json_number(value: Option<u32>) -> String {
    value.map_or_else(|| "null".to_string(), |v| v.to_string())
}

fn with_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn set_int_option(
    fd: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` lives across the call and `optlen` is its size; the fd is borrowed, so open.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The MSS a connected TCP socket sends with: getsockopt(2) `TCP_MAXSEG` returns `mss_cache`,
/// which leaves out the room the negotiated TCP options take (`tcp_mtu_to_mss` in
/// net/ipv4/tcp_output.c), so a clamp of 536 with timestamps reads 524.
fn mss_in_effect(fd: &impl AsFd) -> io::Result<u32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` live across the call and `len` is the size of `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(with_context(
            io::Error::last_os_error(),
            "reading TCP_MAXSEG",
        ));
    }
    Ok(value.max(0) as u32)
}

/// A socket address in the form connect(2) and bind(2) take.
enum RawSocketAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl RawSocketAddr {
    fn new(addr: SocketAddr) -> RawSocketAddr {
        match addr {
            SocketAddr::V4(a) => RawSocketAddr::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(a) => RawSocketAddr::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            }),
        }
    }

    fn family(&self) -> libc::c_int {
        match self {
            RawSocketAddr::V4(_) => libc::AF_INET,
            RawSocketAddr::V6(_) => libc::AF_INET6,
        }
    }

    /// Pointer and length for a system call; valid while `self` is.
    fn as_parts(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        match self {
            RawSocketAddr::V4(a) => (
                (a as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            RawSocketAddr::V6(a) => (
                (a as *const libc::sockaddr_in6).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ),
        }
    }
}

/// A TCP socket of `addr`'s family, its MSS clamped to `mss` when given. std's `TcpStream` and
/// `TcpListener` create and connect (or listen) in one call, which leaves no moment to set
/// `TCP_MAXSEG` in between; and it has to be set before the handshake, because the MSS option
/// travels only in the SYN and SYN-ACK (RFC 9293 3.7.1; tcp(7), TCP_MAXSEG).
fn tcp_socket(addr: &RawSocketAddr, mss: Option<u32>) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); owned right after the check.
    let fd = unsafe { libc::socket(addr.family(), libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(with_context(io::Error::last_os_error(), "TCP socket"));
    }
    // SAFETY: `fd` is fresh and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(mss) = mss {
        set_int_option(&fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG, mss as libc::c_int)
            .map_err(|e| with_context(e, &format!("setting TCP_MAXSEG to {mss}")))?;
    }
    Ok(fd)
}

/// One attempt to connect to `to` within `timeout`, with the MSS clamped to `mss` when given.
fn connect_tcp(to: SocketAddr, mss: Option<u32>, timeout: Duration) -> io::Result<TcpStream> {
    let raw = RawSocketAddr::new(to);
    let stream = TcpStream::from(tcp_socket(&raw, mss)?);
    // A blocking connect(2) waits at most the send timeout, then fails with EINPROGRESS
    // (net/ipv4/af_inet.c: `__inet_stream_connect` waits `sock_sndtimeo()`).
    stream.set_write_timeout(Some(timeout))?;
    let (addr, len) = raw.as_parts();
    // SAFETY: `addr` points at `raw`, which outlives the call, and `len` is its size.
    if unsafe { libc::connect(stream.as_raw_fd(), addr, len) } < 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EINPROGRESS) {
            timed_out(&format!("connecting to {to}"))
        } else {
            e
        });
    }
    Ok(stream)
}

/// A listener on `listen` whose accepted streams have their MSS clamped to `mss` when given: a
/// listener's `TCP_MAXSEG` goes into the MSS option of its SYN-ACKs (`tcp_mss_clamp` in
/// include/net/tcp.h), also caps the MSS the peer's SYN offers (`tcp_parse_options` in
/// net/ipv4/tcp_input.c), and accepted sockets inherit it as clones of the listener.
fn listen_tcp(listen: SocketAddr, mss: Option<u32>) -> io::Result<TcpListener> {
    let raw = RawSocketAddr::new(listen);
    let fd = tcp_socket(&raw, mss)?;
    // As std's `TcpListener::bind` does, so back-to-back runs can rebind the port.
    set_int_option(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    let (addr, len) = raw.as_parts();
    // SAFETY: `addr` points at `raw`, which outlives the call, and `len` is its size.
    if unsafe { libc::bind(fd.as_raw_fd(), addr, len) } < 0 {
        return Err(with_context(
            io::Error::last_os_error(),
            &format!("binding {listen}"),
        ));
    }
    // SAFETY: plain listen(2) on a socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 128) } < 0 {
        return Err(with_context(io::Error::last_os_error(), "listen"));
    }
    Ok(TcpListener::from(fd))
}

fn udp_sink(listen: SocketAddr, idle: Duration, limit: Duration) -> io::Result<()> {
    let socket = UdpSocket::bind(listen)?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 65536];
    let (mut received, mut bytes, mut max_seq) = (0u64, 0u64, None::<u64>);
    let (mut first, mut last) = (None::<Instant>, Instant::now());
    while Instant::now() < deadline {
        match socket.recv(&mut buf) {
            Ok(n) if n >= 8 => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                received += 1;
                bytes += n as u64;
                let seq = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                max_seq = Some(max_seq.map_or(seq, |m| m.max(seq)));
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {
                if first.is_some() && last.elapsed() >= idle {
                    break;
                }
            }
            Err(e) => return Err(e),
        }
    }
    let sent = max_seq.map_or(0, |m| m + 1);
    // What the kernel dropped at this socket instead of queueing it: a full receive buffer.
    let socket_drops = tunfwd::testing::socket::receive_drops(&OwnedFd::from(socket.try_clone()?))?;
    let seconds = first.map_or(0.0, |f| (last - f).as_secs_f64());
    let pps = if seconds > 0.0 {
        received as f64 / seconds
    } else {
        0.0
    };
    println!(
        "{{\"mode\":\"udp-sink\",\"received\":{received},\"bytes\":{bytes},\"highest_sent\":{sent},\"lost\":{},\"socket_drops\":{socket_drops},\"seconds\":{seconds:.3},\"packets_per_s\":{pps:.0}}}",
        sent.saturating_sub(received)
    );
    Ok(())
}

/// Parses `--tos`: a whole byte, ECN bits included, decimal or `0x`/`0X` hex, as tunfwd's
/// own `--tos` reads its bytes.
fn parse_tos(text: &str) -> Result<u8, String> {
    tunfwd::testing::parse_byte(text)
        .ok_or_else(|| format!("'{text}' is not a byte (0-255 or 0x00-0xff)"))
}

fn udp_flood(
    to: SocketAddr,
    size: usize,
    limit: Duration,
    from_port: u16,
    tos: u8,
) -> io::Result<()> {
    const BATCH: usize = 64;
    let size = size.max(8);
    let socket = UdpSocket::bind(wildcard_for(to, from_port))?;
    if tos != 0 {
        let (level, name) = match to {
            SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_TOS),
            SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
        };
        set_int_option(&socket, level, name, libc::c_int::from(tos))
            .map_err(|e| with_context(e, "setting the TOS"))?;
    }
    socket.connect(to)?;
    let mut payloads = vec![vec![0u8; size]; BATCH];
    let mut iovs: Vec<libc::iovec> = payloads
        .iter_mut()
        .map(|p| libc::iovec {
            iov_base: p.as_mut_ptr().cast(),
            iov_len: p.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data; all-zero is valid.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let started = Instant::now();
    let (mut seq, mut errors) = (0u64, 0u64);
    while started.elapsed() < limit {
        for (i, iov) in iovs.iter().enumerate() {
            // SAFETY: each iovec points at its own live payload of `size` >= 8 bytes.
            let payload = unsafe { std::slice::from_raw_parts_mut(iov.iov_base.cast::<u8>(), 8) };
            payload.copy_from_slice(&(seq + i as u64).to_le_bytes());
        }
        // SAFETY: `headers` holds BATCH initialised headers whose iovecs point at live payloads.
        let sent =
            unsafe { libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), BATCH as u32, 0) };
        if sent < 0 {
            // ENOBUFS or a refused port under overload: retry the same sequence numbers.
            errors += 1;
            std::thread::yield_now();
        } else {
            seq += sent as u64;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"mode\":\"udp-flood\",\"size\":{size},\"tos\":{tos},\"sent\":{seq},\"send_errors\":{errors},\"seconds\":{seconds:.3},\"packets_per_s\":{:.0}}}",
        seq as f64 / seconds
    );
    Ok(())
}

fn raw_icmp_socket(to: IpAddr) -> io::Result<OwnedFd> {
    let (family, protocol) = match to {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
    };
    // SAFETY: plain socket(2); owned right after the check.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("raw ICMP socket (needs root): {e}"),
        ));
    }
    // SAFETY: `fd` is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn icmp_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn write_hgrm(path: &Path, h: &hdrhistogram::Histogram<u64>) -> io::Result<()> {
    let mut text = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    if !h.is_empty() {
        for v in h.iter_quantiles(1) {
            let q = v.quantile_iterated_to();
            let inverse = if q < 1.0 {
                format!("{:.2}", 1.0 / (1.0 - q))
            } else {
                String::new()
            };
            text += &format!(
                "{:12.3} {:14.12} {:10} {:>14}\n",
                v.value_iterated_to() as f64,
                q,
                v.count_since_last_iteration(),
                inverse
            );
        }
    }
    text += &format!(
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n",
        h.mean(),
        h.stdev()
    );
    text += &format!(
        "#[Max     = {:12.3}, Total count    = {:12}]\n",
        h.max() as f64,
        h.len()
    );
    std::fs::write(path, text)
}

fn ping(
    to: IpAddr,
    count: u32,
    interval: Duration,
    timeout: Duration,
    hgrm: Option<&Path>,
) -> io::Result<()> {
    // A raw socket driven through UdpSocket's safe send/recv/timeouts, which work on any datagram fd.
    let socket = UdpSocket::from(raw_icmp_socket(to)?);
    socket.connect(SocketAddr::new(to, 0))?;
    socket.set_read_timeout(Some(Duration::from_millis(2)))?;
    let identifier = (std::process::id() & 0xffff) as u16;
    let mut rtts =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("static bounds");
    let mut sent_at: Vec<Option<Instant>> = vec![None; count as usize];
    let mut buf = [0u8; 2048];
    let mut next_send = Instant::now();
    let mut last_sent = Instant::now();
    let mut sent = 0u32;
    while rtts.len() < u64::from(count) {
        let now = Instant::now();
        if sent < count && now >= next_send {
            let mut packet = [0u8; 64];
            packet[0] = if to.is_ipv4() { 8 } else { 128 };
            packet[4..6].copy_from_slice(&identifier.to_be_bytes());
            packet[6..8].copy_from_slice(&(sent as u16).to_be_bytes());
            if to.is_ipv4() {
                let c = icmp_checksum(&packet);
                packet[2..4].copy_from_slice(&c.to_be_bytes());
            } // The kernel fills in ICMPv6 checksums on raw sockets.
            // Stamp before sending: a sender descheduled right after send() would otherwise see
            // the reply "arrive" almost at once.
            let stamp = Instant::now();
            if socket.send(&packet).is_ok() {
                sent_at[sent as usize] = Some(stamp);
            }
            sent += 1;
            last_sent = Instant::now();
            next_send += interval;
        }
        if sent >= count && now.duration_since(last_sent) >= timeout {
            break;
        }
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if is_timeout(&e) => {
                continue;
            }
            Err(e) => return Err(e),
        };
        // IPv4 raw sockets deliver the IP header; IPv6 ones do not.
        let icmp = if to.is_ipv4() {
            &buf[(usize::from(buf[0] & 0x0f) * 4).min(n)..n]
        } else {
            &buf[..n]
        };
        let reply_type = if to.is_ipv4() { 0 } else { 129 };
        if icmp.len() >= 8 && icmp[0] == reply_type && icmp[4..6] == identifier.to_be_bytes() {
            let seq = usize::from(u16::from_be_bytes([icmp[6], icmp[7]]));
            if let Some(at) = sent_at.get_mut(seq).and_then(Option::take) {
                rtts.saturating_record(at.elapsed().as_micros().max(1) as u64);
            }
        }
    }
    if let Some(path) = hgrm {
        write_hgrm(path, &rtts)?;
    }
    let received = rtts.len();
    let q = |p: f64| {
        if received > 0 {
            rtts.value_at_quantile(p)
        } else {
            0
        }
    };
    println!(
        "{{\"mode\":\"ping\",\"to\":\"{to}\",\"sent\":{sent},\"received\":{received},\"rtt_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"max\":{}}}}}",
        q(0.5),
        q(0.9),
        q(0.99),
        rtts.max()
    );
    if received == 0 {
        Err(io::Error::other(format!("no echo replies from {to}")))
    } else {
        Ok(())
    }
}

/// The kinds of malformed datagram `garbage` sends, in the order it sends them, each with the
/// drop reason tunfwd must count it under (`stats::DropReason`'s names; the unit tests check each
/// against tunfwd's validation).
const GARBAGE_KINDS: [(&str, &str); 5] = [
    ("random", "bad_ip_version"),
    ("truncated", "ip_length_mismatch"),
    ("oversized", "ip_length_mismatch"),
    ("bad_version", "bad_ip_version"),
    ("too_short", "bad_ip_header"),
];

/// The malformed datagrams `garbage` sends: `count` rounds of one of each of [`GARBAGE_KINDS`],
/// in that order, so datagram `i` is of kind `i % 5`.
fn garbage_datagrams(count: u32) -> Vec<Vec<u8>> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // A valid 60-byte IPv4/ICMP packet, corrupted in specific ways below.
    let mut valid = [0u8; 60];
    valid[0] = 0x45;
    valid[2..4].copy_from_slice(&60u16.to_be_bytes());
    valid[8] = 64;
    valid[9] = 1;
    valid[12..16].copy_from_slice(&[198, 19, 0, 99]);
    valid[16..20].copy_from_slice(&[198, 19, 0, 1]);
    let mut out = Vec::new();
    for _ in 0..count {
        // Random bytes whose first nibble is never 4 or 6, so they cannot pass as IP by chance,
        // and at least as long as an IPv4 header, so that only their version is wrong (a relay
        // may judge a shorter datagram by its length alone).
        let mut junk: Vec<u8> = (0..(random() % 1381 + 20))
            .map(|_| random() as u8)
            .collect();
        junk[0] = (junk[0] & 0x0f) | [0x00, 0x10, 0x50, 0x70, 0xf0][(random() % 5) as usize];
        out.push(junk);
        out.push(valid[..40].to_vec()); // truncated: the header still says 60
        let mut oversized = valid.to_vec();
        oversized.extend_from_slice(&[0u8; 100]); // the header says 60, the datagram has 160
        out.push(oversized);
        let mut version = valid.to_vec();
        version[0] = 0x55;
        out.push(version);
        out.push(vec![0x45, 0, 0]); // shorter than any IP header
    }
    out
}

/// An IPv4 packet carrying `payload` in a UDP datagram from `from` to `to`, both checksums set.
fn udp_in_ipv4(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    const UDP: u8 = 17;
    let udp_len = 8 + payload.len();
    let total_len = 20 + udp_len;
    let mut packet = vec![0u8; total_len];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
    packet[8] = 64;
    packet[9] = UDP;
    packet[12..16].copy_from_slice(&from.ip().octets());
    packet[16..20].copy_from_slice(&to.ip().octets());
    let checksum = icmp_checksum(&packet[..20]);
    packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    packet[20..22].copy_from_slice(&from.port().to_be_bytes());
    packet[22..24].copy_from_slice(&to.port().to_be_bytes());
    packet[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
    packet[28..].copy_from_slice(payload);
    // Over the pseudo-header (addresses, protocol, UDP length) and the datagram (RFC 768); a sum
    // of zero goes as all ones, as zero means "no checksum".
    let mut summed = Vec::with_capacity(12 + udp_len);
    summed.extend_from_slice(&packet[12..20]);
    summed.extend_from_slice(&[0, UDP]);
    summed.extend_from_slice(&(udp_len as u16).to_be_bytes());
    summed.extend_from_slice(&packet[20..]);
    let checksum = match icmp_checksum(&summed) {
        0 => 0xffff,
        sum => sum,
    };
    packet[26..28].copy_from_slice(&checksum.to_be_bytes());
    packet
}

/// Sends datagrams to one destination: from a socket of its own, or in raw IPv4 packets from a
/// given address and port.
enum DatagramSender {
    Bound {
        socket: UdpSocket,
        to: SocketAddr,
    },
    /// A raw socket (`IPPROTO_RAW`, which implies `IP_HDRINCL`, raw(7)): the packets it sends
    /// carry their own IPv4 header, so their source is whatever the header says.
    Raw {
        socket: UdpSocket,
        from: SocketAddrV4,
        to: SocketAddrV4,
    },
}

impl DatagramSender {
    fn new(to: SocketAddr, from: Option<SocketAddr>) -> io::Result<DatagramSender> {
        let Some(from) = from else {
            let socket = UdpSocket::bind(wildcard_for(to, 0))?;
            return Ok(DatagramSender::Bound { socket, to });
        };
        let (SocketAddr::V4(from), SocketAddr::V4(to)) = (from, to) else {
            return Err(io::Error::other("--from takes IPv4 only, to an IPv4 --to"));
        };
        // SAFETY: plain socket(2); owned right after the check.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        if fd < 0 {
            return Err(with_context(
                io::Error::last_os_error(),
                "raw IPv4 socket for --from (needs root)",
            ));
        }
        // SAFETY: `fd` is fresh and owned by nobody else. The raw socket is driven through
        // UdpSocket's safe send_to, which works on any datagram fd.
        let socket = UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(DatagramSender::Raw { socket, from, to })
    }

    fn send(&self, payload: &[u8]) -> io::Result<()> {
        match self {
            DatagramSender::Bound { socket, to } => socket.send_to(payload, to).map(drop),
            // The destination port is in the packet; a raw socket's own port is unused.
            DatagramSender::Raw { socket, from, to } => socket
                .send_to(
                    &udp_in_ipv4(*from, *to, payload),
                    SocketAddr::new((*to.ip()).into(), 0),
                )
                .map(drop),
        }
    }
}

/// Sends [`garbage_datagrams`] to `to`, from `from` when given (see [`DatagramSender`]), pausing
/// `interval` after each round (or briefly every 64 datagrams when it is zero). Reports how many
/// of each kind the kernel accepted for sending, and when the first and the last went
/// ([`monotonic_ns`]).
fn garbage(
    to: SocketAddr,
    from: Option<SocketAddr>,
    count: u32,
    interval: Duration,
) -> io::Result<()> {
    let sender = DatagramSender::new(to, from)?;
    let mut sent_by_kind = [0u64; GARBAGE_KINDS.len()];
    let started_ns = monotonic_ns();
    for (i, datagram) in garbage_datagrams(count).iter().enumerate() {
        let kind = i % GARBAGE_KINDS.len();
        if sender.send(datagram).is_ok() {
            sent_by_kind[kind] += 1;
        }
        if !interval.is_zero() {
            if kind == GARBAGE_KINDS.len() - 1 {
                std::thread::sleep(interval);
            }
        } else if (i + 1) % 64 == 0 {
            // Stay a nuisance, not a flood: the point is validation, not overload.
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let ended_ns = monotonic_ns();
    let sent: u64 = sent_by_kind.iter().sum();
    let by_kind = |value: &dyn Fn(usize) -> String| {
        GARBAGE_KINDS
            .iter()
            .enumerate()
            .map(|(k, (name, _))| format!("\"{name}\":{}", value(k)))
            .collect::<Vec<_>>()
            .join(",")
    };
    let from = from.map_or_else(|| "null".to_string(), |f| format!("\"{f}\""));
    println!(
        "{{\"mode\":\"garbage\",\"from\":{from},\"sent\":{sent},\"kinds\":{},\"per_kind\":{count},\"sent_by_kind\":{{{}}},\"drop_reason_by_kind\":{{{}}},\"started_ns\":{started_ns},\"ended_ns\":{ended_ns}}}",
        GARBAGE_KINDS.len(),
        by_kind(&|k| sent_by_kind[k].to_string()),
        by_kind(&|k| format!("\"{}\"", GARBAGE_KINDS[k].1)),
    );
    Ok(())
}

/// Echoes datagrams back to their senders until `count` have been echoed or `limit` has passed.
/// Says on stderr when it listens, so that a caller can wait for that before sending.
fn udp_echo(listen: SocketAddr, count: u64, limit: Duration) -> io::Result<()> {
    let socket = UdpSocket::bind(listen)?;
    eprintln!("tunload: udp-echo listening on {}", socket.local_addr()?);
    let (received, echoed) = echo_on(&socket, count, Instant::now() + limit)?;
    println!("{{\"mode\":\"udp-echo\",\"received\":{received},\"echoed\":{echoed}}}");
    Ok(())
}

/// The loop of [`udp_echo`] on a bound socket: the datagrams received and echoed.
fn echo_on(socket: &UdpSocket, count: u64, deadline: Instant) -> io::Result<(u64, u64)> {
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = [0u8; 65536];
    let (mut received, mut echoed) = (0u64, 0u64);
    while echoed < count && Instant::now() < deadline {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                received += 1;
                if socket.send_to(&buf[..n], from).is_ok() {
                    echoed += 1;
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((received, echoed))
}

/// Sends `count` sequence-numbered datagrams of `size` bytes to an echo, each only once the one
/// before came back or `timeout` passed, within `limit` in all. An error unless every one came
/// back. Reports when the first went and the last came back ([`monotonic_ns`]).
fn udp_ping(
    to: SocketAddr,
    from_port: u16,
    count: u64,
    size: usize,
    timeout: Duration,
    limit: Duration,
) -> io::Result<()> {
    let socket = UdpSocket::bind(wildcard_for(to, from_port))?;
    socket.connect(to)?;
    let deadline = Instant::now() + limit;
    let mut request = vec![0u8; size.max(8)];
    let mut reply = vec![0u8; 65536];
    let (mut sent, mut received) = (0u64, 0u64);
    let started_ns = monotonic_ns();
    while sent < count && Instant::now() < deadline {
        request[..8].copy_from_slice(&sent.to_le_bytes());
        // A connected UDP socket reports an ICMP port unreachable that came back for an earlier
        // request as ECONNREFUSED on its next call (udp(7), ERRORS), and sends nothing then: the
        // earlier request is lost, not the run; this one goes again.
        match socket.send(&request) {
            Ok(_) => sent += 1,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        }
        let wait_until = (Instant::now() + timeout).min(deadline);
        loop {
            let left = wait_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            socket.set_read_timeout(Some(left))?;
            match socket.recv(&mut reply) {
                // Only the echo of this request counts; a late echo of an earlier one does not.
                Ok(n) if n == request.len() && reply[..n] == request[..] => {
                    received += 1;
                    break;
                }
                Ok(_) => {}
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::ConnectionRefused => break,
                Err(e) => return Err(e),
            }
        }
    }
    let ended_ns = monotonic_ns();
    println!(
        "{{\"mode\":\"udp-ping\",\"sent\":{sent},\"received\":{received},\"started_ns\":{started_ns},\"ended_ns\":{ended_ns}}}"
    );
    if received == count {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{received} of {count} requests came back ({sent} sent)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_position_addressed_and_mismatches_are_located() {
        let mut whole = vec![0u8; 1000];
        fill_pattern(7, 0, &mut whole);
        let mut part = vec![0u8; 333];
        fill_pattern(7, 101, &mut part);
        assert_eq!(&whole[101..434], &part[..]);
        assert_eq!(first_mismatch(7, 0, &whole), None);
        assert_eq!(first_mismatch(7, 101, &part), None);
        part[50] ^= 1;
        assert_eq!(first_mismatch(7, 101, &part), Some(151));
        assert!(
            first_mismatch(8, 0, &whole).is_some(),
            "another seed is another stream"
        );
    }

    #[test]
    fn icmp_checksum_verifies_to_zero() {
        let mut packet = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, 0xab, 0xcd, 0xef];
        let c = icmp_checksum(&packet);
        packet[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(icmp_checksum(&packet), 0);
    }

    #[test]
    fn raw_garbage_is_a_valid_ipv4_udp_packet_around_it() {
        let (from, to) = (
            "198.18.0.1:55555".parse().unwrap(),
            "198.18.0.2:55555".parse().unwrap(),
        );
        for payload in garbage_datagrams(2) {
            let packet = udp_in_ipv4(from, to, &payload);
            let parsed = etherparse::SlicedPacket::from_ip(&packet).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = &parsed.net else {
                panic!("not IPv4: {packet:02x?}");
            };
            assert_eq!(
                ip.header().to_header().calc_header_checksum(),
                ip.header().header_checksum()
            );
            assert_eq!(ip.header().source(), [198, 18, 0, 1]);
            let Some(etherparse::TransportSlice::Udp(udp)) = &parsed.transport else {
                panic!("not UDP: {packet:02x?}");
            };
            assert_eq!((udp.source_port(), udp.destination_port()), (55555, 55555));
            assert_eq!(udp.payload(), &payload[..]);
            let expected = udp
                .to_header()
                .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
                .unwrap();
            assert_eq!(udp.checksum(), expected);
        }
    }

    /// Each datagram fails tunfwd's validation for the reason `garbage` reports for its kind,
    /// which is what a test compares the relay's drop counters with.
    #[test]
    fn every_garbage_datagram_is_rejected_for_the_reason_of_its_kind() {
        let datagrams = garbage_datagrams(1000);
        assert_eq!(datagrams.len(), 5000);
        for (i, d) in datagrams.iter().enumerate() {
            let (kind, reason) = GARBAGE_KINDS[i % GARBAGE_KINDS.len()];
            // Nor is any of them a relay-to-relay control message, which is not validated; and
            // only the short kind is shorter than an IPv4 header.
            assert_eq!(tunfwd::testing::Control::parse(d), None, "{kind}: {d:02x?}");
            assert_eq!(d.len() < 20, kind == "too_short", "{kind}: {d:02x?}");
            let error = tunfwd::testing::IpPacket::new_checked(&d[..])
                .err()
                .unwrap_or_else(|| panic!("{kind} passed: {d:02x?}"));
            assert_eq!(
                tunfwd::DropReason::from(error).name(),
                reason,
                "{kind}: {d:02x?}"
            );
        }
    }

    /// Runs one sender against one sink over loopback, with the given MSS clamps; returns both
    /// sides' results and the MSS in effect on the accepted stream.
    fn loopback_stream_with_mss(
        seed: u64,
        bytes: u64,
        sender_mss: Option<u32>,
        sink_mss: Option<u32>,
    ) -> (io::Result<Sent>, io::Result<(u64, bool)>, u32) {
        let listener = listen_tcp("127.0.0.1:0".parse().unwrap(), sink_mss).unwrap();
        let to = listener.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let sink = std::thread::spawn(move || {
            let (stream, _) = listener.accept()?;
            let mss = mss_in_effect(&stream)?;
            sink_one(stream, deadline).map(|r| (r, mss))
        });
        let sent = send_one(to, seed, bytes, Duration::from_secs(10), sender_mss);
        let (sunk, sink_side_mss) = match sink.join().unwrap() {
            Ok((r, mss)) => (Ok(r), mss),
            Err(e) => (Err(e), 0),
        };
        (sent, sunk, sink_side_mss)
    }

    fn loopback_stream(seed: u64, bytes: u64) -> (io::Result<Sent>, io::Result<(u64, bool)>) {
        let (sent, sunk, _) = loopback_stream_with_mss(seed, bytes, None, None);
        (sent, sunk)
    }

    #[test]
    fn checked_and_unchecked_streams_are_counted_and_labelled() {
        let bytes = 3 * (1 << 18) + 12345;
        let (sent, sunk) = loopback_stream(0x5eed_0001, bytes);
        assert_eq!(sent.unwrap().bytes, bytes);
        assert_eq!(sunk.unwrap(), (bytes, true));
        let (sent, sunk) = loopback_stream(UNCHECKED_SEED, bytes);
        assert_eq!(sent.unwrap().bytes, bytes);
        assert_eq!(sunk.unwrap(), (bytes, false), "counted, not checked");
    }

    #[test]
    fn a_stream_reports_a_sending_window_on_the_monotonic_clock() {
        let before = monotonic_ns();
        let (sent, _) = loopback_stream(0x5eed_0005, 1 << 20);
        let sent = sent.unwrap();
        assert!(before <= sent.sending_from_ns, "{before} {sent:?}");
        assert!(sent.sending_from_ns < sent.sending_until_ns, "{sent:?}");
        assert!(sent.sending_until_ns <= monotonic_ns(), "{sent:?}");
    }

    #[test]
    fn udp_ping_waits_for_each_echo_and_fails_when_one_does_not_come() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            echo_on(&socket, 20, Instant::now() + Duration::from_secs(10))
        });
        let timeout = Duration::from_secs(5);
        udp_ping(to, 0, 20, 100, timeout, Duration::from_secs(10)).unwrap();
        assert_eq!(echo.join().unwrap().unwrap(), (20, 20));
        // Nobody echoes any more: the first request goes unanswered.
        let short = Duration::from_millis(50);
        let err = udp_ping(to, 0, 1, 8, short, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("0 of 1"), "{err}");
    }

    #[test]
    fn mss_outside_what_the_kernel_accepts_is_refused_with_the_range() {
        assert_eq!(parse_mss("88"), Ok(88));
        assert_eq!(parse_mss("536"), Ok(536));
        assert_eq!(parse_mss("65535"), Ok(65535));
        for bad in ["0", "87", "65536", "4294967296", "-1", "big"] {
            assert!(parse_mss(bad).is_err(), "{bad}");
        }
        assert!(parse_mss("87").unwrap_err().contains("88..=65535"));
        for mode in [
            &["tcp-send", "--to", "127.0.0.1:1"][..],
            &["tcp-sink", "--listen", "127.0.0.1:1"][..],
        ] {
            let parse = |mss: &str| {
                Cli::try_parse_from(["tunload"].iter().chain(mode).chain(&["--mss", mss]))
            };
            let err = parse("50").err().expect("50 refused").to_string();
            assert!(err.contains("--mss") && err.contains("88..=65535"), "{err}");
            assert!(parse("200").is_ok());
        }
    }

    /// Either end's clamp reaches the other through the handshake: the SYN (or SYN-ACK) carries
    /// it. Loopback's own MSS is near 64 KiB, so any clamp shows.
    #[test]
    fn an_mss_clamp_on_either_end_limits_both_ends() {
        let bytes = 1 << 20;
        let (sent, sunk, sink_mss) = loopback_stream_with_mss(0x5eed_0002, bytes, Some(536), None);
        let sent = sent.unwrap();
        assert_eq!(sent.bytes, bytes);
        assert_eq!(sunk.unwrap(), (bytes, true));
        // Timestamps take 12 of the 536 bytes when both ends use them (net.ipv4.tcp_timestamps).
        assert!((500..=536).contains(&sent.mss), "sender {}", sent.mss);
        assert!((500..=536).contains(&sink_mss), "sink {sink_mss}");
        let (sent, sunk, sink_mss) = loopback_stream_with_mss(0x5eed_0003, bytes, None, Some(400));
        let sent = sent.unwrap();
        assert_eq!(sunk.unwrap(), (bytes, true));
        assert!((360..=400).contains(&sent.mss), "sender {}", sent.mss);
        assert!((360..=400).contains(&sink_mss), "sink {sink_mss}");
        let (sent, _, sink_mss) = loopback_stream_with_mss(UNCHECKED_SEED, bytes, None, None);
        assert!(sent.unwrap().mss > 16_000, "unclamped loopback");
        assert!(sink_mss > 16_000, "unclamped loopback");
    }

    #[test]
    fn ipv6_listeners_and_connections_work_too() {
        let listener = listen_tcp("[::1]:0".parse().unwrap(), Some(1000)).unwrap();
        let to = listener.local_addr().unwrap();
        let sink = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            sink_one(stream, Instant::now() + Duration::from_secs(10))
        });
        let sent = send_one(to, 0x5eed_0004, 100_000, Duration::from_secs(10), None).unwrap();
        assert_eq!(sink.join().unwrap().unwrap(), (100_000, true));
        assert!((900..=1000).contains(&sent.mss), "{}", sent.mss);
    }

    #[test]
    fn a_stream_that_breaks_the_pattern_fails_at_both_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let sink = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            sink_one(stream, Instant::now() + Duration::from_secs(10))
        });
        let mut stream = TcpStream::connect(to).unwrap();
        stream.write_all(&0x5eed_0001u64.to_le_bytes()).unwrap();
        let mut data = vec![0u8; 4096];
        fill_pattern(0x5eed_0001, 0, &mut data);
        data[1000] ^= 0x80;
        stream.write_all(&data).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = [0u8; 9];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(reply[8], VERDICT_MISMATCH);
        let err = sink.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("byte 1000 of 4096"), "{err}");
    }
}
