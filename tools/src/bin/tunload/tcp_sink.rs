//! `tcp-sink`: accepts TCP streams and checks every byte against the pattern their sender
//! announced (or only counts them, for an unchecked stream).

use crate::tcp::{self, UNCHECKED_SEED, VERDICT_COUNTED, VERDICT_MATCHED, VERDICT_MISMATCH};
use crate::{is_timeout, pattern, print_json, timed_out};
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Serialize)]
struct Report {
    mode: &'static str,
    streams: usize,
    bytes: u64,
    /// Every stream's bytes were compared with the pattern.
    checked: bool,
    /// No stream failed.
    verified: bool,
    /// The smallest MSS in effect on an accepted stream.
    mss: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Accepts `streams` streams; after each one's EOF, replies with the bytes received and whether
/// every byte matched (or that the stream was only counted).
pub fn run(
    listen: SocketAddr,
    streams: usize,
    limit: Duration,
    mss: Option<u32>,
) -> io::Result<()> {
    let listener = tcp::listen(listen, mss)?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + limit;
    let mut handles = Vec::new();
    let mut mss_in_use = None::<u32>;
    while handles.len() < streams {
        match listener.accept() {
            Ok((stream, _)) => {
                let stream_mss = tcp::mss_in_effect(&stream)?;
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
    print_json(&Report {
        mode: "tcp-sink",
        streams,
        bytes: total,
        checked,
        verified: first_error.is_none(),
        mss: mss_in_use,
        error: first_error.clone(),
    });
    match first_error {
        None => Ok(()),
        Some(e) => Err(io::Error::other(format!("stream verification failed: {e}"))),
    }
}

/// Receives one stream; returns its byte count and whether its bytes were checked.
pub fn sink_one(mut stream: TcpStream, deadline: Instant) -> io::Result<(u64, bool)> {
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
            mismatch = pattern::first_mismatch(seed, received, &buf[..n]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

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
        pattern::fill(0x5eed_0001, 0, &mut data);
        data[1000] ^= 0x80;
        stream.write_all(&data).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = [0u8; 9];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(reply[8], VERDICT_MISMATCH);
        let err = sink.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("byte 1000 of 4096"), "{err}");
    }

    #[test]
    fn the_report_has_the_keys_and_types_the_tests_read() {
        let report = Report {
            mode: "tcp-sink",
            streams: 2,
            bytes: 1 << 20,
            checked: true,
            verified: false,
            mss: None,
            error: Some("byte 7 of 9 \"differs\"".into()),
        };
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"mode": "tcp-sink", "streams": 2, "bytes": 1048576,
                "checked": true, "verified": false, "mss": null,
                "error": "byte 7 of 9 \"differs\""})
        );
    }
}
