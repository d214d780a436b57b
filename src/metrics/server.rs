//! The HTTP server behind `--metrics`: one thread, non-blocking sockets and `poll(2)` over the
//! listener and every open connection, bounded whatever its clients do (see the module above).
//! What a connection waits for, when it expires and whom to evict is the pure table
//! [`Connections`], tested on fake time; the thread around it only turns its decisions into
//! system calls. Every answer comes from the latest [`Published`] report, rendered once per report.

use super::Published;
use super::render::CONTENT_TYPE;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest request head read; Prometheus sends a few hundred bytes.
pub const MAX_REQUEST_HEAD: usize = 8 << 10;
/// How long one connection may take, from its accept to the last byte of its answer, whatever the
/// client does. A scrape's request arrives within a round trip and its answer is one write; a
/// client still unanswered after 2 s is either gone or holding the slot on purpose.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// How many connections may be open at once; one more evicts the one nearest its deadline.
pub const MAX_CONNECTIONS: usize = 64;

/// What a request gets, decided from its head alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    HeadTooLarge,
}

/// Routes a request head (the request line and headers, without the body). PURE.
pub fn route(head: &[u8]) -> Route {
    let Ok(head) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let request_line = head.lines().next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    if method != "GET" {
        return Route::MethodNotAllowed;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

/// A request arriving in pieces, as any client may send it, through one connection's exchange:
/// `input`'s first byte sets the piece length (1 to 256), the rest is the bytes. For the fuzz
/// target of the request parser (network input): whatever the bytes, the head kept never
/// exceeds [`MAX_REQUEST_HEAD`], an answer is a whole HTTP/1.1 response, and a scrape's is
/// rendered only for `GET /metrics`. Panics when one of those breaks.
pub fn fuzz_request(input: &[u8]) {
    let Some((&piece, bytes)) = input.split_first() else {
        return;
    };
    let mut exchange = Exchange::Head(Vec::new());
    let mut rendered = false;
    for chunk in bytes.chunks(usize::from(piece) + 1) {
        let next = exchange.receive(chunk, || {
            rendered = true;
            "tunfwd_up 1\n".to_string()
        });
        match &exchange {
            Exchange::Head(head) => {
                assert!(head.len() <= MAX_REQUEST_HEAD);
                assert_eq!(next, Next::Read);
            }
            Exchange::Answer { bytes, sent } => {
                assert_eq!(*sent, 0);
                assert!(bytes.starts_with(b"HTTP/1.1 "), "{bytes:?}");
                assert!(bytes.windows(4).any(|w| w == b"\r\n\r\n"));
                let is_scrape = bytes.starts_with(b"HTTP/1.1 200 OK\r\n");
                assert_eq!(is_scrape, rendered, "rendered only for a scrape");
                assert_eq!(next, Next::Write);
            }
        }
    }
}

/// The whole HTTP/1.1 response for `route`; `render` is called only for [`Route::Metrics`].
pub fn response(route: Route, render: impl FnOnce() -> String) -> Vec<u8> {
    let (status, extra, content_type, body) = match route {
        Route::Metrics => ("200 OK", "", CONTENT_TYPE, render()),
        Route::NotFound => (
            "404 Not Found",
            "",
            "text/plain; charset=utf-8",
            "tunfwd serves /metrics only\n".to_string(),
        ),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "Allow: GET\r\n",
            "text/plain; charset=utf-8",
            "use GET\n".to_string(),
        ),
        Route::BadRequest => (
            "400 Bad Request",
            "",
            "text/plain; charset=utf-8",
            "bad request\n".to_string(),
        ),
        Route::HeadTooLarge => (
            "431 Request Header Fields Too Large",
            "",
            "text/plain; charset=utf-8",
            "request head too large\n".to_string(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Binds the listener. Called during setup, before privileges are dropped, so that a bad address
/// fails at startup and a port below 1024 can be used.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(address)
}

/// Serves `published` on `listener` from a thread of its own, for the rest of the process's life,
/// within [`REQUEST_DEADLINE`] per connection and [`MAX_CONNECTIONS`] at once.
pub fn spawn_server(listener: TcpListener, published: Arc<Published>) -> io::Result<()> {
    spawn_with(listener, published, LIMITS)
}

fn spawn_with(listener: TcpListener, published: Arc<Published>, limits: Limits) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("tunfwd-metrics".to_string())
        .spawn(move || serve(&listener, &published, limits))
        .map(drop)
}

/// The server's bounds, gathered so that tests can shrink them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    /// From accept to the last byte of the answer.
    deadline: Duration,
    /// Connections open at once.
    connections: usize,
}

const LIMITS: Limits = Limits {
    deadline: REQUEST_DEADLINE,
    connections: MAX_CONNECTIONS,
};

/// What a connection waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// More of its request head.
    Read,
    /// Room in its socket for the rest of the answer.
    Write,
    /// Nothing: answered, or nobody left to answer. Close it.
    Close,
}

/// One connection's exchange, without its socket: the request head read so far, then the answer
/// and how much of it has been sent. PURE.
#[derive(Debug)]
enum Exchange {
    Head(Vec<u8>),
    Answer { bytes: Vec<u8>, sent: usize },
}

impl Exchange {
    fn next(&self) -> Next {
        match self {
            Exchange::Head(_) => Next::Read,
            Exchange::Answer { bytes, sent } if *sent < bytes.len() => Next::Write,
            Exchange::Answer { .. } => Next::Close,
        }
    }

    /// Takes bytes of the request. Once the head is whole, or [`MAX_REQUEST_HEAD`] long without
    /// its end, the answer is built (`render` is called for a scrape only); bytes after the head
    /// are ignored, and so are bytes once the answer is being sent.
    fn receive(&mut self, bytes: &[u8], render: impl FnOnce() -> String) -> Next {
        let Exchange::Head(head) = self else {
            return self.next();
        };
        let scanned = head.len();
        let room = MAX_REQUEST_HEAD - scanned;
        head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        // No end lay wholly in what was scanned before, so look again only from 3 bytes back
        // (the longest end, CRLF CRLF, is 4): a head trickled a byte at a time costs linear time.
        let from = scanned.saturating_sub(3);
        let route = match head_end(&head[from..]) {
            Some(end) => route(&head[..from + end]),
            None if head.len() >= MAX_REQUEST_HEAD => Route::HeadTooLarge,
            None => return Next::Read,
        };
        *self = Exchange::Answer {
            bytes: response(route, render),
            sent: 0,
        };
        self.next()
    }

    /// What is left of the answer to send; empty while the head is still being read.
    fn unsent(&self) -> &[u8] {
        match self {
            Exchange::Head(_) => &[],
            Exchange::Answer { bytes, sent } => &bytes[*sent..],
        }
    }

    /// Counts `n` more bytes of the answer as sent.
    fn sent(&mut self, n: usize) -> Next {
        if let Exchange::Answer { bytes, sent } = self {
            *sent = (*sent + n).min(bytes.len());
        }
        self.next()
    }
}

#[derive(Debug)]
struct Connection<C> {
    io: C,
    deadline: Instant,
    exchange: Exchange,
}

/// The open connections, each with its deadline, in a fixed number of slots. PURE: the I/O
/// handle `C` is only carried (a `TcpStream` in the server, a name in the tests), and time is
/// whatever `now` the caller passes in.
///
/// When every slot is taken, a new connection evicts the one nearest its deadline, which, since
/// every connection gets the same deadline at its accept, is the oldest. The alternatives are
/// worse under a flood of slow clients: refusing the newcomer locks a scraper out for as long as
/// the flood lasts, and evicting at random may take a scraper that is mid-answer. With the oldest
/// going first, a flood that opens `r` connections a second still leaves each newcomer
/// `MAX_CONNECTIONS / r` seconds, and a scrape needs one round trip.
struct Connections<C> {
    limits: Limits,
    slots: Vec<Option<Connection<C>>>,
}

impl<C> Connections<C> {
    fn new(limits: Limits) -> Connections<C> {
        Connections {
            limits,
            slots: (0..limits.connections.max(1)).map(|_| None).collect(),
        }
    }

    fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Takes a connection accepted at `now` into a free slot or, the table being full, into the
    /// slot of the connection nearest its deadline, which is handed back to be closed. Returns
    /// the slot.
    fn admit(&mut self, io: C, now: Instant) -> (usize, Option<C>) {
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None => self.nearest_deadline().unwrap_or(0),
        };
        let connection = Connection {
            io,
            deadline: now + self.limits.deadline,
            exchange: Exchange::Head(Vec::new()),
        };
        (slot, self.slots[slot].replace(connection).map(|c| c.io))
    }

    fn nearest_deadline(&self) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| Some((slot, c.as_ref()?.deadline)))
            .min_by_key(|&(_, deadline)| deadline)
            .map(|(slot, _)| slot)
    }

    /// Removes every connection whose deadline has come, whatever it was doing, and hands them
    /// back to be closed.
    fn expire(&mut self, now: Instant) -> Vec<C> {
        let mut expired = Vec::new();
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|c| c.deadline <= now) {
                expired.extend(slot.take().map(|c| c.io));
            }
        }
        expired
    }

    /// When the next connection's deadline comes, if any is open.
    fn next_deadline(&self) -> Option<Instant> {
        self.slots.iter().flatten().map(|c| c.deadline).min()
    }

    /// The open connections: slot, handle, and what each waits for.
    fn open(&self) -> impl Iterator<Item = (usize, &C, Next)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| c.as_ref().map(|c| (slot, &c.io, c.exchange.next())))
    }

    fn get(&self, slot: usize) -> Option<(&C, Next)> {
        let c = self.slots.get(slot)?.as_ref()?;
        Some((&c.io, c.exchange.next()))
    }

    /// Bytes of the request arrived on `slot`; see [`Exchange::receive`].
    fn receive(&mut self, slot: usize, bytes: &[u8], render: impl FnOnce() -> String) -> Next {
        match self.slots.get_mut(slot) {
            Some(Some(c)) => c.exchange.receive(bytes, render),
            _ => Next::Close,
        }
    }

    fn unsent(&self, slot: usize) -> &[u8] {
        match self.slots.get(slot) {
            Some(Some(c)) => c.exchange.unsent(),
            _ => &[],
        }
    }

    fn sent(&mut self, slot: usize, n: usize) -> Next {
        match self.slots.get_mut(slot) {
            Some(Some(c)) => c.exchange.sent(n),
            _ => Next::Close,
        }
    }

    /// Removes the connection in `slot` and hands it back to be closed.
    fn close(&mut self, slot: usize) -> Option<C> {
        self.slots.get_mut(slot)?.take().map(|c| c.io)
    }
}

/// How long to wait after poll(2) failed, or to stop accepting after accept(2) failed for want of
/// fds or memory (the connection stays in the listen queue and the listener stays readable, so
/// accepting again at once would spin).
const ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The most reads and writes made on one connection per readiness. A whole head is at most 9
/// reads of 1 KiB and an answer usually one write, so this only keeps a connection that moves
/// bytes as fast as they are taken from holding the thread; poll(2) reports it again.
const PASSES_PER_TURN: usize = 32;

/// The server loop: poll(2) over the listener and every open connection, until the process ends.
fn serve(listener: &TcpListener, published: &Published, limits: Limits) -> ! {
    let mut connections: Connections<TcpStream> = Connections::new(limits);
    // `fds[0]` is the listener; `fds[i + 1]` is the connection in slot `polled[i]`.
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(connections.capacity() + 1);
    let mut polled: Vec<usize> = Vec::with_capacity(connections.capacity());
    let mut accept_paused_until: Option<Instant> = None;
    let pollfd = |fd, events| libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        let now = Instant::now();
        // Dropping a stream closes it.
        drop(connections.expire(now));
        accept_paused_until = accept_paused_until.filter(|&until| until > now);
        fds.clear();
        polled.clear();
        // poll(2): a negative fd is ignored, which is how the listener sits out a pause.
        let listening = accept_paused_until.map_or(listener.as_raw_fd(), |_| -1);
        fds.push(pollfd(listening, libc::POLLIN));
        for (slot, stream, next) in connections.open() {
            let events = match next {
                Next::Read => libc::POLLIN,
                Next::Write => libc::POLLOUT,
                Next::Close => continue,
            };
            fds.push(pollfd(stream.as_raw_fd(), events));
            polled.push(slot);
        }
        let wake = connections
            .next_deadline()
            .into_iter()
            .chain(accept_paused_until)
            .min();
        match crate::sys::poll(&mut fds, poll_timeout(now, wake)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // ENOMEM, say: don't spin.
            Err(_) => {
                std::thread::sleep(ERROR_PAUSE);
                continue;
            }
        }
        for (ready, &slot) in fds[1..].iter().zip(&polled) {
            // POLLERR and POLLHUP count too: the read or write then says what happened.
            if ready.revents != 0 {
                advance(&mut connections, slot, published);
            }
        }
        if fds[0].revents != 0 && accept_all(listener, &mut connections, published).is_err() {
            accept_paused_until = Some(Instant::now() + ERROR_PAUSE);
        }
    }
}

/// Accepts what the listen queue holds, at most a table's worth at a time (more would only evict
/// the ones just accepted). An error is one that pausing may cure (EMFILE, ENFILE, ENOBUFS,
/// ENOMEM).
fn accept_all(
    listener: &TcpListener,
    connections: &mut Connections<TcpStream>,
    published: &Published,
) -> io::Result<()> {
    for _ in 0..connections.capacity() {
        match listener.accept() {
            Ok((stream, _)) => {
                // accept(2): on Linux the new socket does not inherit O_NONBLOCK from the
                // listener. One that cannot be made non-blocking is dropped, so closed.
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let (slot, evicted) = connections.admit(stream, Instant::now());
                drop(evicted);
                // A request already waiting is answered now, not a poll turn later.
                advance(connections, slot, published);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // A signal, or a client that gave up before it was accepted (ECONNABORTED).
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves the connection in `slot` on as far as its socket allows without blocking: reads its
/// head, builds the answer and writes it. Closes it once answered, or when the client has gone
/// away or its socket failed (nobody left to answer).
fn advance(connections: &mut Connections<TcpStream>, slot: usize, published: &Published) {
    let mut chunk = [0u8; 1024];
    for _ in 0..PASSES_PER_TURN {
        let Some((stream, next)) = connections.get(slot) else {
            return;
        };
        // `Read` and `Write` are implemented for `&TcpStream`, so the stream stays in the table.
        let step = match next {
            Next::Read => match (&*stream).read(&mut chunk) {
                // The client went away before finishing its request.
                Ok(0) => Ok(Next::Close),
                Ok(n) => {
                    Ok(connections.receive(slot, &chunk[..n], || published.rendered().to_string()))
                }
                Err(e) => Err(e),
            },
            Next::Write => match (&*stream).write(connections.unsent(slot)) {
                Ok(0) => Ok(Next::Close),
                Ok(n) => Ok(connections.sent(slot, n)),
                Err(e) => Err(e),
            },
            Next::Close => Ok(Next::Close),
        };
        match step {
            Ok(Next::Read | Next::Write) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Next::Close) | Err(_) => {
                drop(connections.close(slot));
                return;
            }
        }
    }
}

/// The poll(2) timeout until `wake`, in whole milliseconds rounded up, so that the loop does not
/// wake just before a deadline and spin until it; -1, no timeout, without one.
fn poll_timeout(now: Instant, wake: Option<Instant>) -> libc::c_int {
    wake.map_or(-1, |at| {
        let ms = at
            .saturating_duration_since(now)
            .as_nanos()
            .div_ceil(1_000_000);
        libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
    })
}

/// Where the request head ends: after the first empty line (RFC 9112 section 2.2 allows a bare
/// LF as a line terminator).
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::render::tests::report;
    use std::io::{Read, Write};

    #[test]
    fn requests_are_routed_by_method_and_path() {
        let cases: &[(&[u8], Route)] = &[
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", Route::Metrics),
            (b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n", Route::Metrics),
            (b"GET /metrics HTTP/1.1\n\n", Route::Metrics),
            (b"GET / HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET /metrics/ HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            (b"HEAD /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            (b"GET /metrics\r\n\r\n", Route::BadRequest),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"GET metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"GET /metrics SPDY/3\r\n\r\n", Route::BadRequest),
            (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"", Route::BadRequest),
        ];
        for (head, expected) in cases {
            assert_eq!(route(head), *expected, "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn responses_have_status_length_and_close() {
        let ok = String::from_utf8(response(Route::Metrics, || "a 1\n".to_string())).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(ok.contains("Content-Length: 4\r\n"));
        assert!(ok.contains("Connection: close\r\n"));
        assert!(ok.ends_with("\r\n\r\na 1\n"));
        let not_allowed = response(Route::MethodNotAllowed, || unreachable!("no render"));
        let not_allowed = String::from_utf8(not_allowed).unwrap();
        assert!(not_allowed.starts_with("HTTP/1.1 405 "));
        assert!(not_allowed.contains("Allow: GET\r\n"));
        let not_found = String::from_utf8(response(Route::NotFound, String::new)).unwrap();
        assert!(not_found.starts_with("HTTP/1.1 404 "));
    }

    /// The fuzz target's entry point holds its invariants on a scrape, a refused method, a head
    /// too large and garbage, in pieces of every size.
    #[test]
    fn the_request_fuzz_entry_point_holds_on_plain_inputs() {
        let mut too_large = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        too_large.resize(MAX_REQUEST_HEAD + 100, b'a');
        for body in [
            &b"GET /metrics HTTP/1.1\r\n\r\n"[..],
            b"POST / HTTP/1.0\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
            &too_large,
        ] {
            for piece in [0u8, 1, 7, 255] {
                let mut input = vec![piece];
                input.extend_from_slice(body);
                fuzz_request(&input);
            }
        }
    }

    #[test]
    fn head_ends_at_the_first_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    /// The server on loopback: a scrape, a 404, a 405, and an oversized head, one after another
    /// on the one thread. No root needed.
    #[test]
    fn server_answers_on_loopback() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let published = Published::new(report());
        spawn_server(listener, published.clone()).unwrap();
        let ask = |request: &[u8]| {
            let mut s = TcpStream::connect(address).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // An oversized head may be answered before all of it is sent; the rest may fail.
            let _ = s.write_all(request);
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer
        };
        let scrape = ask(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
        assert!(scrape.starts_with("HTTP/1.1 200 OK\r\n"), "{scrape}");
        assert!(scrape.contains("tunfwd_tun_rx_packets_total{queue=\"0\"} 10\n"));
        let mut newer = report();
        newer.queues[0].counters.tun_rx_packets = 11;
        published.publish(newer);
        let scrape = ask(b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(scrape.contains("tunfwd_tun_rx_packets_total{queue=\"0\"} 11\n"));
        assert!(ask(b"GET /nothing HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(ask(b"DELETE /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST_HEAD)
        );
        let answer = ask(huge.as_bytes());
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
            "{answer}"
        );
        // Still serving after all that.
        assert!(ask(b"GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 OK\r\n"));
    }

    const SMALL: Limits = Limits {
        deadline: Duration::from_secs(2),
        connections: 3,
    };

    fn no_render() -> String {
        unreachable!("nothing to render yet")
    }

    #[test]
    fn a_trickling_connection_is_closed_at_its_deadline() {
        let mut table = Connections::new(SMALL);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let (trickler, _) = table.admit("trickler", at(0));
        let (slow_reader, _) = table.admit("slow reader", at(500));
        assert_eq!(table.next_deadline(), Some(at(2000)));
        // A byte every 100 ms of a head that never ends: more is always wanted, and nothing
        // but the deadline ends it.
        let head = b"GET /metrics HTTP/1.1\r\nX-Slow: ";
        for i in 0..20 {
            assert!(table.expire(at(100 * i)).is_empty(), "{i}");
            let byte = head.get(i as usize).copied().unwrap_or(b'a');
            assert_eq!(table.receive(trickler, &[byte], no_render), Next::Read);
        }
        // The other asked properly but takes its answer a byte at a time.
        let whole = b"GET /metrics HTTP/1.1\r\n\r\n";
        let render = || "a 1\n".to_string();
        assert_eq!(table.receive(slow_reader, whole, render), Next::Write);
        assert_eq!(table.sent(slow_reader, 1), Next::Write);
        assert_eq!(table.expire(at(1999)), Vec::<&str>::new());
        assert_eq!(table.expire(at(2000)), vec!["trickler"]);
        assert!(table.get(trickler).is_none());
        assert_eq!(table.next_deadline(), Some(at(2500)));
        assert_eq!(table.sent(slow_reader, 1), Next::Write);
        assert_eq!(table.expire(at(2600)), vec!["slow reader"]);
        assert_eq!(table.next_deadline(), None);
        assert_eq!(table.open().count(), 0);
    }

    #[test]
    fn a_full_table_evicts_the_connection_nearest_its_deadline() {
        let mut table = Connections::new(SMALL);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let (first, evicted) = table.admit(1, at(0));
        assert_eq!(evicted, None);
        let (second, _) = table.admit(2, at(10));
        assert_eq!(table.admit(3, at(20)).1, None);
        assert_eq!(table.open().count(), 3);
        // The oldest, so the nearest its deadline, makes room, and the newcomer starts afresh.
        assert_eq!(table.admit(4, at(30)), (first, Some(1)));
        assert_eq!(table.get(first), Some((&4, Next::Read)));
        assert_eq!(table.next_deadline(), Some(at(2010)));
        // Past its deadline but not yet expired, it goes first all the same.
        assert_eq!(table.admit(5, at(5000)), (second, Some(2)));
        assert_eq!(table.open().count(), 3);
        // A slot freed by closing is taken before anyone is evicted.
        assert_eq!(table.close(first), Some(4));
        assert_eq!(table.admit(6, at(5001)), (first, None));
        let mut open: Vec<i32> = table.open().map(|(_, id, _)| *id).collect();
        open.sort();
        assert_eq!(open, [3, 5, 6]);
    }

    #[test]
    fn a_complete_request_gets_an_answer() {
        let mut table = Connections::new(SMALL);
        let now = Instant::now();
        let (slot, _) = table.admit((), now);
        assert_eq!(table.receive(slot, b"GET /metr", no_render), Next::Read);
        assert_eq!(table.unsent(slot), b"");
        assert_eq!(
            table.receive(slot, b"ics HTTP/1.1\r\nHost: x\r", no_render),
            Next::Read
        );
        let mut renders = 0;
        let render = || {
            renders += 1;
            "a 1\n".to_string()
        };
        assert_eq!(table.receive(slot, b"\n\r\n", render), Next::Write);
        assert_eq!(renders, 1);
        let answer = response(Route::Metrics, || "a 1\n".to_string());
        assert_eq!(table.unsent(slot), answer);
        // What follows the head is ignored; the answer goes out as the socket takes it.
        assert_eq!(table.receive(slot, b"more", no_render), Next::Write);
        assert_eq!(table.sent(slot, 10), Next::Write);
        assert_eq!(table.unsent(slot), &answer[10..]);
        assert_eq!(table.sent(slot, answer.len() - 10), Next::Close);
        assert_eq!(table.close(slot), Some(()));

        // Every route, from a head in one piece; and a head that never ends within the cap.
        let cases: [(&[u8], &str); 4] = [
            (b"GET /other HTTP/1.1\n\n", "HTTP/1.1 404 "),
            (b"PUT /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405 "),
            (b"GET\r\n\r\n", "HTTP/1.1 400 "),
            (&[b'a'; MAX_REQUEST_HEAD + 100], "HTTP/1.1 431 "),
        ];
        for (request, status) in cases {
            let (slot, _) = table.admit((), now);
            assert_eq!(table.receive(slot, request, no_render), Next::Write);
            assert!(
                table.unsent(slot).starts_with(status.as_bytes()),
                "{status}"
            );
            table.close(slot);
        }
        // The cap counts bytes however they arrive, and a head that ends within it is served.
        let (slot, _) = table.admit((), now);
        let mut head = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        head.resize(MAX_REQUEST_HEAD - 4, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        for piece in head.chunks(1000) {
            table.receive(slot, piece, || "a 1\n".to_string());
        }
        assert!(table.unsent(slot).starts_with(b"HTTP/1.1 200 OK\r\n"));
    }

    #[test]
    fn poll_waits_until_the_next_deadline_rounded_up() {
        let now = Instant::now();
        assert_eq!(poll_timeout(now, None), -1);
        assert_eq!(poll_timeout(now, Some(now)), 0);
        assert_eq!(poll_timeout(now, Some(now - Duration::from_secs(1))), 0);
        assert_eq!(poll_timeout(now, Some(now + Duration::from_micros(1))), 1);
        assert_eq!(
            poll_timeout(now, Some(now + Duration::from_millis(1500))),
            1500
        );
        assert_eq!(
            poll_timeout(now, Some(now + Duration::from_secs(1 << 40))),
            libc::c_int::MAX
        );
    }

    /// The server on loopback with a small table: when it is full a scrape evicts the oldest
    /// connection and is answered, and a client that never finishes its head is cut off at its
    /// deadline, however it keeps sending.
    #[test]
    fn slow_clients_are_evicted_and_cut_off_on_loopback() {
        let limits = Limits {
            deadline: Duration::from_millis(500),
            connections: 2,
        };
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        spawn_with(listener, Published::new(report()), limits).unwrap();
        let started = Instant::now();
        let slow = |bytes: &[u8]| {
            let mut s = TcpStream::connect(address).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(bytes).unwrap();
            // Accepted before the next one.
            std::thread::sleep(Duration::from_millis(50));
            s
        };
        let mut oldest = slow(b"GET /metrics HTTP/1.1\r\n");
        let mut trickler = slow(b"G");
        let mut scrape = TcpStream::connect(address).unwrap();
        scrape
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        scrape.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = String::new();
        scrape.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        let mut byte = [0u8; 1];
        assert_eq!(oldest.read(&mut byte).unwrap(), 0, "the oldest was closed");
        assert!(started.elapsed() < limits.deadline, "evicted, not expired");
        // A byte every 100 ms until the server closes the connection (a write after its FIN
        // draws a reset, so the second one after it fails at the latest).
        let mut writes = 0;
        while trickler.write_all(b"E").is_ok() && writes < 50 {
            writes += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        let cut_off = started.elapsed();
        assert!(
            cut_off >= limits.deadline && cut_off < limits.deadline * 3,
            "{cut_off:?} after {writes} bytes"
        );
    }
}
