//! `udp-flood`: sequence-numbered datagrams as fast as one thread sends them, 64 to a
//! sendmmsg(2), for a tunnel's packet rate and loss (`udp-sink` counts them).

use crate::{print_json, rounded, wildcard_for, with_context};
use serde::Serialize;
use socket2::SockRef;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Datagrams per sendmmsg(2).
const BATCH: usize = 64;

#[derive(Serialize)]
struct Report {
    mode: &'static str,
    size: usize,
    tos: u8,
    sent: u64,
    /// Batches the kernel refused whole (ENOBUFS, or a refused port under overload), sent again.
    send_errors: u64,
    seconds: f64,
    packets_per_s: u64,
}

/// Floods `to` with datagrams of `size` bytes (at least 8, the sequence number) for `limit`, from
/// port `from_port` (0: any), with the TOS / traffic class byte `tos` when it is not 0.
pub fn run(
    to: SocketAddr,
    size: usize,
    limit: Duration,
    from_port: u16,
    tos: u8,
) -> io::Result<()> {
    let size = size.max(8);
    let socket = UdpSocket::bind(wildcard_for(to, from_port))?;
    if tos != 0 {
        let set = match to {
            SocketAddr::V4(_) => SockRef::from(&socket).set_tos_v4(u32::from(tos)),
            SocketAddr::V6(_) => SockRef::from(&socket).set_tclass_v6(u32::from(tos)),
        };
        set.map_err(|e| with_context(e, "setting the TOS"))?;
    }
    socket.connect(to)?;
    let mut payloads = vec![vec![0u8; size]; BATCH];
    let started = Instant::now();
    let (mut seq, mut errors) = (0u64, 0u64);
    while started.elapsed() < limit {
        for (i, payload) in payloads.iter_mut().enumerate() {
            payload[..8].copy_from_slice(&(seq + i as u64).to_le_bytes());
        }
        match send_batch(&socket, &payloads) {
            Ok(sent) => seq += sent as u64,
            Err(_) => {
                // Retry the same sequence numbers.
                errors += 1;
                std::thread::yield_now();
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    print_json(&Report {
        mode: "udp-flood",
        size,
        tos,
        sent: seq,
        send_errors: errors,
        seconds: rounded(seconds, 3),
        packets_per_s: (seq as f64 / seconds).round() as u64,
    });
    Ok(())
}

/// Sends each of `payloads` as one datagram on the connected `socket`, in one sendmmsg(2) call;
/// returns how many the kernel took. Neither std nor socket2 has sendmmsg.
fn send_batch(socket: &UdpSocket, payloads: &[Vec<u8>]) -> io::Result<usize> {
    let mut iovecs: Vec<libc::iovec> = payloads
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr().cast_mut().cast(),
            iov_len: p.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data, for which all zeroes is a valid value: no address,
            // no control data, no flags.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect();
    let count = u32::try_from(headers.len()).expect("a batch fits u32");
    // SAFETY: each header points at one iovec of `iovecs`, each iovec at one payload of
    // `payloads` and its length; all are live, and none moves, until the call returns.
    // sendmmsg(2) reads them and writes only the headers' `msg_len`.
    let sent = unsafe { libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), count, 0) };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_arrives_whole_and_in_order_on_loopback() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.connect(receiver.local_addr().unwrap()).unwrap();
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        assert_eq!(send_batch(&sender, &payloads).unwrap(), 5);
        let mut got = [0u8; 64];
        for expected in &payloads {
            let n = receiver.recv(&mut got).unwrap();
            assert_eq!(&got[..n], &expected[..]);
        }
    }
}
