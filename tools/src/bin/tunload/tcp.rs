//! What `tcp-sink` and `tcp-send` share: their sockets, with the MSS clamped before the
//! handshake, and the little protocol around the stream (the sender's seed first, the sink's
//! byte count and verdict last).

use crate::with_context;
use socket2::{Domain, SockAddr, SockRef, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

/// The seed a sender announces for an unchecked stream (patterned streams never use it).
pub const UNCHECKED_SEED: u64 = 0;
/// The sink's verdict byte: the pattern broke, every byte matched, or the stream was only counted.
pub const VERDICT_MISMATCH: u8 = 0;
pub const VERDICT_MATCHED: u8 = 1;
pub const VERDICT_COUNTED: u8 = 2;

/// What the kernel accepts for `TCP_MAXSEG`: `TCP_MIN_MSS` (88) to `MAX_TCP_WINDOW` (65535), with
/// 0 meaning "no clamp" (net/ipv4/tcp.c, the `TCP_MAXSEG` case of `do_tcp_setsockopt`).
const MSS_RANGE: std::ops::RangeInclusive<u32> = 88..=65535;

/// Parses `--mss`: refused here, with the range, rather than as a bare EINVAL from setsockopt(2).
pub fn parse_mss(text: &str) -> Result<u32, String> {
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

/// The MSS a connected TCP socket sends with: getsockopt(2) `TCP_MAXSEG` returns `mss_cache`,
/// which leaves out the room the negotiated TCP options take (`tcp_mtu_to_mss` in
/// net/ipv4/tcp_output.c), so a clamp of 536 with timestamps reads 524.
pub fn mss_in_effect(stream: &impl AsFd) -> io::Result<u32> {
    SockRef::from(stream)
        .tcp_mss()
        .map_err(|e| with_context(e, "reading TCP_MAXSEG"))
}

/// A TCP socket of `address`'s family, its MSS clamped to `mss` when given. std's `TcpStream` and
/// `TcpListener` create and connect (or listen) in one call, which leaves no moment to set
/// `TCP_MAXSEG` in between; and it has to be set before the handshake, because the MSS option
/// travels only in the SYN and SYN-ACK (RFC 9293 3.7.1; tcp(7), TCP_MAXSEG).
fn tcp_socket(address: SocketAddr, mss: Option<u32>) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)
        .map_err(|e| with_context(e, "TCP socket"))?;
    if let Some(mss) = mss {
        socket
            .set_tcp_mss(mss)
            .map_err(|e| with_context(e, &format!("setting TCP_MAXSEG to {mss}")))?;
    }
    Ok(socket)
}

/// One attempt to connect to `to` within `timeout`, with the MSS clamped to `mss` when given.
pub fn connect(to: SocketAddr, mss: Option<u32>, timeout: Duration) -> io::Result<TcpStream> {
    let socket = tcp_socket(to, mss)?;
    match socket.connect_timeout(&SockAddr::from(to), timeout) {
        Ok(()) => Ok(socket.into()),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            Err(crate::timed_out(&format!("connecting to {to}")))
        }
        Err(e) => Err(e),
    }
}

/// A listener on `address` whose accepted streams have their MSS clamped to `mss` when given: a
/// listener's `TCP_MAXSEG` goes into the MSS option of its SYN-ACKs (`tcp_mss_clamp` in
/// include/net/tcp.h), also caps the MSS the peer's SYN offers (`tcp_parse_options` in
/// net/ipv4/tcp_input.c), and accepted sockets inherit it as clones of the listener.
pub fn listen(address: SocketAddr, mss: Option<u32>) -> io::Result<TcpListener> {
    let socket = tcp_socket(address, mss)?;
    // As std's `TcpListener::bind` does, so back-to-back runs can rebind the port.
    socket.set_reuse_address(true)?;
    socket
        .bind(&SockAddr::from(address))
        .map_err(|e| with_context(e, &format!("binding {address}")))?;
    socket.listen(128).map_err(|e| with_context(e, "listen"))?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

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
                <crate::Cli as clap::Parser>::try_parse_from(
                    ["tunload"].iter().chain(mode).chain(&["--mss", mss]),
                )
            };
            let err = parse("50").err().expect("50 refused").to_string();
            assert!(err.contains("--mss") && err.contains("88..=65535"), "{err}");
            assert!(parse("200").is_ok());
        }
    }

    #[test]
    fn a_refused_connection_is_refused_and_a_listener_takes_one() {
        let listener = listen("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let to = listener.local_addr().unwrap();
        let stream = connect(to, Some(1000), Duration::from_secs(5)).unwrap();
        assert!((900..=1000).contains(&mss_in_effect(&stream).unwrap()));
        drop(listener);
        let err = connect(to, None, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    }
}
