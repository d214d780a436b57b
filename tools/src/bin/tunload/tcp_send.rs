//! `tcp-send`: parallel TCP streams of patterned bytes (or of one fixed buffer, unchecked), each
//! waiting for the sink's verdict.

use crate::tcp::{self, UNCHECKED_SEED, VERDICT_COUNTED, VERDICT_MATCHED};
use crate::{monotonic_ns, pattern, print_json, rounded, timed_out};
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Serialize)]
struct Report {
    mode: &'static str,
    streams: usize,
    bytes: u64,
    seconds: f64,
    gbit_per_s: f64,
    checked: bool,
    verified: bool,
    /// The smallest MSS in effect on a stream.
    mss: Option<u32>,
    /// The window in which every stream was sending: the last stream's start to the first
    /// stream's end ([`monotonic_ns`]).
    sending_from_ns: u64,
    sending_until_ns: u64,
}

/// Sends `streams` streams in parallel and prints their total.
pub fn run(
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
    print_json(&Report {
        mode: "tcp-send",
        streams,
        bytes: total,
        seconds: rounded(seconds, 3),
        gbit_per_s: rounded(total as f64 * 8.0 / seconds / 1e9, 3),
        checked: !unchecked,
        verified: true,
        mss: mss_in_use,
        sending_from_ns,
        sending_until_ns,
    });
    Ok(())
}

/// What one stream sent, the MSS it sent with, and when it sent: from just before its first
/// byte of pattern was handed to the socket to just after its last, on [`monotonic_ns`]'s clock.
/// A blocking write returns only once the send buffer has room (send(2)), so once that buffer is
/// full the stream's bytes cross the path throughout the window, not only at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub bytes: u64,
    pub mss: u32,
    pub sending_from_ns: u64,
    pub sending_until_ns: u64,
}

/// Sends one stream: `bytes` bytes, or for `limit` when `bytes` is 0. A byte count must also
/// finish within `limit`. With `UNCHECKED_SEED` one buffer is filled once and sent over and over.
pub fn send_one(
    to: SocketAddr,
    seed: u64,
    bytes: u64,
    limit: Duration,
    mss: Option<u32>,
) -> io::Result<Sent> {
    let started = Instant::now();
    // The sink may still be starting: retry refused connections for a few seconds.
    let mut stream = loop {
        match tcp::connect(to, mss, Duration::from_secs(5)) {
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
    let mss = tcp::mss_in_effect(&stream)?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(&seed.to_le_bytes())?;
    const BLOCK: usize = 1 << 18;
    let mut buf = vec![0u8; BLOCK];
    let checked = seed != UNCHECKED_SEED;
    if !checked {
        pattern::fill(seed, 0, &mut buf);
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
            pattern::fill(seed, sent, &mut buf[..n]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp_sink::sink_one;

    /// Runs one sender against one sink over loopback, with the given MSS clamps; returns both
    /// sides' results and the MSS in effect on the accepted stream.
    fn loopback_stream_with_mss(
        seed: u64,
        bytes: u64,
        sender_mss: Option<u32>,
        sink_mss: Option<u32>,
    ) -> (io::Result<Sent>, io::Result<(u64, bool)>, u32) {
        let listener = tcp::listen("127.0.0.1:0".parse().unwrap(), sink_mss).unwrap();
        let to = listener.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let sink = std::thread::spawn(move || {
            let (stream, _) = listener.accept()?;
            let mss = tcp::mss_in_effect(&stream)?;
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
        let listener = tcp::listen("[::1]:0".parse().unwrap(), Some(1000)).unwrap();
        let to = listener.local_addr().unwrap();
        let sink = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            sink_one(stream, Instant::now() + Duration::from_secs(10))
        });
        let sent = send_one(to, 0x5eed_0004, 100_000, Duration::from_secs(10), None).unwrap();
        assert_eq!(sink.join().unwrap().unwrap(), (100_000, true));
        assert!((900..=1000).contains(&sent.mss), "{}", sent.mss);
    }
}
