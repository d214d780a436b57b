//! `udp-echo`: echoes every datagram back to its sender, the far end of `udp-ping`.

use crate::{is_timeout, print_json};
use serde::Serialize;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

#[derive(Serialize)]
struct Report {
    mode: &'static str,
    received: u64,
    echoed: u64,
}

/// Echoes datagrams back to their senders until `count` have been echoed or `limit` has passed.
/// Says on stderr when it listens, so that a caller can wait for that before sending.
pub fn run(listen: SocketAddr, count: u64, limit: Duration) -> io::Result<()> {
    let socket = UdpSocket::bind(listen)?;
    eprintln!("tunload: udp-echo listening on {}", socket.local_addr()?);
    let (received, echoed) = echo_on(&socket, count, Instant::now() + limit)?;
    print_json(&Report {
        mode: "udp-echo",
        received,
        echoed,
    });
    Ok(())
}

/// The loop of [`run`] on a bound socket: the datagrams received and echoed.
pub fn echo_on(socket: &UdpSocket, count: u64, deadline: Instant) -> io::Result<(u64, u64)> {
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
