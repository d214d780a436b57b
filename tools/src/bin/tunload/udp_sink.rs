//! `udp-sink`: counts the sequence-numbered datagrams of a `udp-flood`, for packet rate and loss,
//! and what the kernel dropped at its socket.

use crate::{is_timeout, print_json, rounded};
use serde::Serialize;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

#[derive(Serialize)]
struct Report {
    mode: &'static str,
    received: u64,
    bytes: u64,
    /// One past the highest sequence number received: what the flood sent, as far as the sink
    /// can tell.
    highest_sent: u64,
    lost: u64,
    /// What the kernel dropped at this socket instead of queueing it: a full receive buffer.
    socket_drops: u32,
    /// From the first datagram to the last.
    seconds: f64,
    packets_per_s: u64,
}

/// Receives until `idle` passes without a datagram (after the first) or `limit` in all.
pub fn run(listen: SocketAddr, idle: Duration, limit: Duration) -> io::Result<()> {
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
    let socket_drops = tunfwd::testing::socket::receive_drops(&OwnedFd::from(socket.try_clone()?))?;
    let seconds = first.map_or(0.0, |f| (last - f).as_secs_f64());
    let pps = if seconds > 0.0 {
        received as f64 / seconds
    } else {
        0.0
    };
    print_json(&Report {
        mode: "udp-sink",
        received,
        bytes,
        highest_sent: sent,
        lost: sent.saturating_sub(received),
        socket_drops,
        seconds: rounded(seconds, 3),
        packets_per_s: pps.round() as u64,
    });
    Ok(())
}
