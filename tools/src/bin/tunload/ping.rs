//! `ping`: ICMP or ICMPv6 echo over a raw socket (root), for overlay reachability and round-trip
//! times, with the times' distribution optionally written as an HdrHistogram `.hgrm` file.

use crate::{is_timeout, print_json, with_context};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};
use tunfwd_testkit::packets::ones_complement_sum;

#[derive(Serialize)]
struct Report {
    mode: &'static str,
    to: String,
    sent: u32,
    received: u64,
    rtt_us: Rtts,
}

#[derive(Serialize)]
struct Rtts {
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

/// A raw ICMP socket for `to`'s family, driven through `UdpSocket`'s safe send, receive and
/// timeouts, which work on any datagram-like fd.
fn raw_icmp_socket(to: IpAddr) -> io::Result<UdpSocket> {
    let (domain, protocol) = match to {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let socket = Socket::new(domain, Type::RAW, Some(protocol))
        .map_err(|e| with_context(e, "raw ICMP socket (needs root)"))?;
    Ok(socket.into())
}

/// The ICMP checksum (RFC 792): the complement of the RFC 1071 sum over the message.
fn icmp_checksum(message: &[u8]) -> u16 {
    !ones_complement_sum(message)
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

/// Sends `count` echo requests `interval` apart and waits up to `timeout` after the last for
/// their replies. An error if none came back.
pub fn run(
    to: IpAddr,
    count: u32,
    interval: Duration,
    timeout: Duration,
    hgrm: Option<&Path>,
) -> io::Result<()> {
    let socket = raw_icmp_socket(to)?;
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
    print_json(&Report {
        mode: "ping",
        to: to.to_string(),
        sent,
        received,
        rtt_us: Rtts {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: rtts.max(),
        },
    });
    if received == 0 {
        Err(io::Error::other(format!("no echo replies from {to}")))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_checksum_verifies_to_zero() {
        let mut packet = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, 0xab, 0xcd, 0xef];
        let c = icmp_checksum(&packet);
        packet[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(icmp_checksum(&packet), 0);
    }
}
