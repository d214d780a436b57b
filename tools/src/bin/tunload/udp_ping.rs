//! `udp-ping`: one request and its reply at a time over UDP, from a chosen source port, so that a
//! test knows exactly how many packets each flow put through a tunnel each way.

use crate::{is_timeout, monotonic_ns, print_json, wildcard_for};
use serde::Serialize;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

#[derive(Serialize)]
struct Report {
    mode: &'static str,
    sent: u64,
    received: u64,
    started_ns: u64,
    ended_ns: u64,
}

/// Sends `count` sequence-numbered datagrams of `size` bytes to an echo, each only once the one
/// before came back or `timeout` passed, within `limit` in all. An error unless every one came
/// back. Reports when the first went and the last came back ([`monotonic_ns`]).
pub fn run(
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
    print_json(&Report {
        mode: "udp-ping",
        sent,
        received,
        started_ns,
        ended_ns,
    });
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
    use crate::udp_echo::echo_on;

    #[test]
    fn udp_ping_waits_for_each_echo_and_fails_when_one_does_not_come() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            echo_on(&socket, 20, Instant::now() + Duration::from_secs(10))
        });
        let timeout = Duration::from_secs(5);
        run(to, 0, 20, 100, timeout, Duration::from_secs(10)).unwrap();
        assert_eq!(echo.join().unwrap().unwrap(), (20, 20));
        // Nobody echoes any more: the first request goes unanswered.
        let short = Duration::from_millis(50);
        let err = run(to, 0, 1, 8, short, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("0 of 1"), "{err}");
    }
}
