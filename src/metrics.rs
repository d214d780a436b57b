//! Prometheus metrics: the text exposition (PURE) and the small HTTP server that serves it.
//!
//! What it owns: turning a [`Report`] into the Prometheus text format, version 0.0.4, and answering
//! `GET /metrics` with the latest one. What it must never do: touch the data path. Workers send
//! their snapshots to the main thread as they already do for `--stats-interval`; the main thread
//! merges them into a `Report` and swaps it into [`Published`]; the server thread takes the
//! current `Arc<Report>` under a lock held only for that pointer copy, and renders outside it. No
//! worker ever sees the lock, so a slow scraper costs the relay nothing.
//!
//! Why hand-written: the metric set is fixed (one family per `Counters` field, drops by reason,
//! two latency histograms), the format is a line per sample, and rendering from the `Report` we
//! already have keeps one source of truth. The `prometheus` crate (0.14) would add 13 crates to
//! tunfwd's 32, protobuf among them, and a registry of atomics updated beside our counters (the
//! shared registry the house style avoids); `prometheus-client` would add 8 and still want its
//! own metric types registered and updated; `tiny_http` would add 5, and its own threads and
//! parser, for what is here a dozen lines of request-line parsing. This module adds no
//! dependency, in about as many lines as the glue to those crates would take.
//! A real parser (the `prometheus-parse` crate, a dev-dependency) checks its output in the tests.
//!
//! The server is deliberately minimal: one thread, one connection at a time, read and write
//! timeouts, a bounded request head, `Connection: close`. That is what a Prometheus server scraping
//! every few seconds needs, and it cannot be made to allocate without bound.

use crate::stats::{Counters, Direction, DropReason, PathStats, Report};
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `Content-Type` of the text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the latency histogram buckets, in ns: 1 µs to 1 s, at 1, 2.5 and 5 per decade.
/// A packet through an idle relay takes microseconds; a full queue takes milliseconds.
pub const LATENCY_BUCKETS_NS: [u64; 19] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// One per-queue counter family: its name without prefix and suffix, its help, and its value.
struct Family {
    name: &'static str,
    help: &'static str,
    value: u64,
}

/// Every `Counters` field but `drops`, which has its own family with a `reason` label. The
/// destructuring names every field, so a field added to `Counters` does not compile here until it
/// is exported (or explicitly skipped).
fn families(c: &Counters) -> [Family; 18] {
    let Counters {
        tun_rx_packets,
        tun_rx_bytes,
        udp_tx_packets,
        udp_tx_bytes,
        udp_rx_packets,
        udp_rx_bytes,
        tun_tx_packets,
        tun_tx_bytes,
        drops: _,
        icmp_errors,
        buffer_stalls,
        gso_sends,
        gro_receives,
        coalesced_writes,
        coalesce_fallbacks,
        gso_fallbacks,
        control_truncated,
        multishot_restarts,
        udp_socket_drops,
    } = *c;
    let f = |name, help, value| Family { name, help, value };
    [
        f(
            "tun_rx_packets",
            "IP packets read from the TUN queue (a super-packet counts as its segments).",
            tun_rx_packets,
        ),
        f(
            "tun_rx_bytes",
            "Bytes read from the TUN queue.",
            tun_rx_bytes,
        ),
        f(
            "udp_tx_packets",
            "Datagrams sent to the peer.",
            udp_tx_packets,
        ),
        f(
            "udp_tx_bytes",
            "UDP payload bytes sent to the peer.",
            udp_tx_bytes,
        ),
        f(
            "udp_rx_packets",
            "Valid datagrams received from the peer.",
            udp_rx_packets,
        ),
        f(
            "udp_rx_bytes",
            "UDP payload bytes received from the peer.",
            udp_rx_bytes,
        ),
        f(
            "tun_tx_packets",
            "IP packets written to the TUN queue (a merged super-packet counts as its segments).",
            tun_tx_packets,
        ),
        f(
            "tun_tx_bytes",
            "Bytes written to the TUN queue.",
            tun_tx_bytes,
        ),
        f(
            "icmp_errors",
            "ICMP errors about the peer that the socket reported.",
            icmp_errors,
        ),
        f(
            "buffer_stalls",
            "Multishot receives that stopped because every buffer was in use.",
            buffer_stalls,
        ),
        f(
            "gso_sends",
            "UDP sends that carried more than one datagram (UDP_SEGMENT).",
            gso_sends,
        ),
        f(
            "gro_receives",
            "UDP receives that delivered more than one datagram (UDP_GRO).",
            gro_receives,
        ),
        f(
            "coalesced_writes",
            "TUN writes of a merged super-packet.",
            coalesced_writes,
        ),
        f(
            "coalesce_fallbacks",
            "Merged TUN writes the kernel refused, redone segment by segment.",
            coalesce_fallbacks,
        ),
        f(
            "gso_fallbacks",
            "GSO sends the kernel refused, redone datagram by datagram.",
            gso_fallbacks,
        ),
        f(
            "control_truncated",
            "Receives whose control data came back cut (MSG_CTRUNC).",
            control_truncated,
        ),
        f(
            "multishot_restarts",
            "Times the kernel ended a multishot read or receive and it was armed again.",
            multishot_restarts,
        ),
        f(
            "udp_socket_drops",
            "Receive buffers the kernel dropped at the queue's UDP socket, its buffer full, before \
             tunfwd read them (under UDP GRO one buffer may hold several datagrams).",
            udp_socket_drops,
        ),
    ]
}

/// Writes `ns` as decimal seconds, exactly: 2500 is `0.0000025`, 1e9 is `1`.
fn seconds(ns: u64) -> String {
    let (whole, fraction) = (ns / 1_000_000_000, ns % 1_000_000_000);
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:09}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Cumulative counts of one histogram at each of [`LATENCY_BUCKETS_NS`], then the total count and
/// the sum in ns.
///
/// A recorded value stands for a small range (HdrHistogram keeps 3 significant digits); it is
/// placed by the top of its range, the value `value_at_quantile` reports, so the buckets agree
/// with the JSON report's percentiles. The sum uses the middle of each range, as the histogram's
/// own mean does.
fn buckets(h: &Histogram<u64>) -> ([u64; LATENCY_BUCKETS_NS.len()], u64, u128) {
    let mut counts = [0u64; LATENCY_BUCKETS_NS.len()];
    let mut total = 0u64;
    let mut sum_ns = 0u128;
    for v in h.iter_recorded() {
        let n = v.count_at_value();
        let top = v.value_iterated_to();
        total += n;
        sum_ns += u128::from(h.median_equivalent(top)) * u128::from(n);
        if let Some(first) = LATENCY_BUCKETS_NS.iter().position(|&le| top <= le) {
            counts[first] += n;
        }
    }
    let mut running = 0;
    for c in counts.iter_mut() {
        running += *c;
        *c = running;
    }
    (counts, total, sum_ns)
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders `report` in the Prometheus text exposition format, version 0.0.4. Every family has
/// `# HELP` and `# TYPE`; every drop reason appears for every queue, zeros included, so a rate
/// over it never starts from a missing series.
pub fn render(report: &Report) -> String {
    let mut out = String::with_capacity(16 << 10);
    header(
        &mut out,
        "tunfwd_queues",
        "gauge",
        "Worker queues, one TUN queue and pinned thread each.",
    );
    let _ = writeln!(out, "tunfwd_queues {}", report.queues.len());
    header(
        &mut out,
        "tunfwd_uptime_seconds",
        "gauge",
        "Seconds since the workers came up, when the snapshot was taken.",
    );
    let _ = writeln!(
        out,
        "tunfwd_uptime_seconds {}",
        report.elapsed.as_secs_f64()
    );

    let rows: Vec<(usize, [Family; 18])> = report
        .queues
        .iter()
        .map(|q| (q.queue, families(&q.counters)))
        .collect();
    for (i, meta) in families(&Counters::default()).iter().enumerate() {
        let name = format!("tunfwd_{}_total", meta.name);
        header(&mut out, &name, "counter", meta.help);
        for (queue, values) in &rows {
            let _ = writeln!(out, "{name}{{queue=\"{queue}\"}} {}", values[i].value);
        }
    }

    // ECN and the path MTU, per queue (`PathStats`; destructured so a new field must be exported).
    let PathStats {
        ecn_ce_marked: _,
        too_big_replies: _,
        fragmented_sends: _,
        path_mtu_learned_from_errors: _,
        path_mtu: _,
    } = PathStats::default();
    let path_counters: [(&str, &str, fn(&PathStats) -> u64); 4] = [
        (
            "tunfwd_ecn_ce_marked_total",
            "Inner packets marked CE on decapsulation because the outer header was (RFC 6040).",
            |p| p.ecn_ce_marked,
        ),
        (
            "tunfwd_too_big_replies_total",
            "ICMP fragmentation-needed / packet-too-big errors sent to inner senders.",
            |p| p.too_big_replies,
        ),
        (
            "tunfwd_fragmented_sends_total",
            "Inner packets too big for the path sent for the outer IP layer to fragment.",
            |p| p.fragmented_sends,
        ),
        (
            "tunfwd_path_mtu_learned_from_errors_total",
            "Path MTU changes learned from a refused send or an error-queue report.",
            |p| p.path_mtu_learned_from_errors,
        ),
    ];
    for (name, help, value) in path_counters {
        header(&mut out, name, "counter", help);
        for q in &report.queues {
            let _ = writeln!(out, "{name}{{queue=\"{}\"}} {}", q.queue, value(&q.path));
        }
    }
    header(
        &mut out,
        "tunfwd_path_mtu_bytes",
        "gauge",
        "The path MTU to the peer (outer headers included) the queue works to; 0 until known.",
    );
    for q in &report.queues {
        let _ = writeln!(
            out,
            "tunfwd_path_mtu_bytes{{queue=\"{}\"}} {}",
            q.queue, q.path.path_mtu
        );
    }

    // Left out, not zero, when the device's count could not be read.
    if let Some(dropped) = report.tun_queue_drops {
        header(
            &mut out,
            "tunfwd_tun_queue_drops_total",
            "counter",
            "Packets the kernel dropped, mostly because a TUN queue's ring was full, before \
             tunfwd read them (the device's tx_dropped since tunfwd opened it; all queues \
             together).",
        );
        let _ = writeln!(out, "tunfwd_tun_queue_drops_total {dropped}");
    }

    header(
        &mut out,
        "tunfwd_drops_total",
        "counter",
        "Packets dropped, by reason.",
    );
    for q in &report.queues {
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "tunfwd_drops_total{{queue=\"{}\",reason=\"{}\"}} {}",
                q.queue,
                reason.name(),
                q.counters.drops_of(reason)
            );
        }
    }

    header(
        &mut out,
        "tunfwd_latency_seconds",
        "histogram",
        "From the completion of the read that brought a packet in to the completion of the send \
         or write that took it out, per packet (a super-packet counts as its segments).",
    );
    for (label, direction) in [
        ("tun_to_udp", Direction::TunToUdp),
        ("udp_to_tun", Direction::UdpToTun),
    ] {
        let (counts, total, sum_ns) = buckets(&report.latency(direction));
        for (le, count) in LATENCY_BUCKETS_NS.iter().zip(counts) {
            let _ = writeln!(
                out,
                "tunfwd_latency_seconds_bucket{{direction=\"{label}\",le=\"{}\"}} {count}",
                seconds(*le)
            );
        }
        let _ = writeln!(
            out,
            "tunfwd_latency_seconds_bucket{{direction=\"{label}\",le=\"+Inf\"}} {total}"
        );
        let _ = writeln!(
            out,
            "tunfwd_latency_seconds_sum{{direction=\"{label}\"}} {}",
            sum_ns as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "tunfwd_latency_seconds_count{{direction=\"{label}\"}} {total}"
        );
    }
    out
}

/// The latest report, shared between the main thread (which replaces it) and the server thread
/// (which reads it). The lock guards one pointer copy; workers never touch it.
pub struct Published {
    latest: Mutex<Arc<Report>>,
}

impl Published {
    pub fn new(report: Report) -> Arc<Published> {
        Arc::new(Published {
            latest: Mutex::new(Arc::new(report)),
        })
    }

    pub fn publish(&self, report: Report) {
        let report = Arc::new(report);
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = report;
    }

    pub fn latest(&self) -> Arc<Report> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The largest request head read; Prometheus sends a few hundred bytes.
pub const MAX_REQUEST_HEAD: usize = 8 << 10;
/// How long one client may take to send its request or to read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Serves `published` on `listener` from a thread of its own, one connection at a time, for the
/// rest of the process's life.
pub fn spawn_server(listener: TcpListener, published: Arc<Published>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("tunfwd-metrics".to_string())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    // A client that misbehaves gets a closed connection; the next one is served.
                    Ok(stream) => {
                        let _ = serve(stream, &published);
                    }
                    // Out of fds, say: don't spin.
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .map(drop)
}

/// Reads one request head, answers it and closes the connection.
fn serve(mut stream: TcpStream, published: &Published) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let route = loop {
        if let Some(end) = head_end(&head) {
            break route(&head[..end]);
        }
        if head.len() >= MAX_REQUEST_HEAD {
            break Route::HeadTooLarge;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            // The client went away before finishing its request: nobody to answer.
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    };
    let answer = response(route, || render(&published.latest()));
    stream.write_all(&answer)?;
    stream.flush()
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
    use crate::stats::WorkerStats;

    fn report() -> Report {
        let mut q0 = WorkerStats::new(0);
        q0.counters.tun_rx_packets = 10;
        q0.counters.tun_rx_bytes = 14_200;
        q0.counters.gso_sends = 3;
        q0.counters.multishot_restarts = 2;
        q0.path.path_mtu = 1280;
        q0.path.ecn_ce_marked = 3;
        q0.path.path_mtu_learned_from_errors = 2;
        q0.counters.drop_n(DropReason::ForeignSource, 4);
        for ns in [800, 1_000, 1_001, 2_400, 30_000, 2_000_000_000] {
            q0.record_latency(Direction::TunToUdp, ns);
        }
        let mut q1 = WorkerStats::new(1);
        q1.counters.udp_rx_packets = 7;
        q1.counters.udp_socket_drops = 9;
        q1.record_latency_n(Direction::UdpToTun, 4_000, 45);
        Report::new(Duration::from_millis(2500), vec![q1, q0]).with_tun_queue_drops(Some(6))
    }

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn seconds_are_exact_decimals() {
        assert_eq!(seconds(1_000), "0.000001");
        assert_eq!(seconds(2_500), "0.0000025");
        assert_eq!(seconds(250_000_000), "0.25");
        assert_eq!(seconds(1_000_000_000), "1");
        assert_eq!(seconds(61_500_000_000), "61.5");
        assert_eq!(seconds(0), "0");
    }

    #[test]
    fn bucket_bounds_rise_a_few_per_decade() {
        assert!(LATENCY_BUCKETS_NS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(LATENCY_BUCKETS_NS[0], 1_000);
        assert_eq!(*LATENCY_BUCKETS_NS.last().unwrap(), 1_000_000_000);
    }

    #[test]
    fn every_counter_is_labelled_by_queue_with_base_units() {
        let text = render(&report());
        assert_eq!(
            sample(&text, "tunfwd_tun_rx_packets_total{queue=\"0\"}"),
            Some("10")
        );
        assert_eq!(
            sample(&text, "tunfwd_tun_rx_bytes_total{queue=\"0\"}"),
            Some("14200")
        );
        assert_eq!(
            sample(&text, "tunfwd_udp_rx_packets_total{queue=\"1\"}"),
            Some("7")
        );
        assert_eq!(
            sample(&text, "tunfwd_gso_sends_total{queue=\"0\"}"),
            Some("3")
        );
        assert_eq!(
            sample(&text, "tunfwd_multishot_restarts_total{queue=\"0\"}"),
            Some("2")
        );
        assert_eq!(sample(&text, "tunfwd_queues"), Some("2"));
        assert_eq!(
            sample(&text, "tunfwd_path_mtu_bytes{queue=\"0\"}"),
            Some("1280")
        );
        assert_eq!(
            sample(&text, "tunfwd_path_mtu_bytes{queue=\"1\"}"),
            Some("0")
        );
        assert_eq!(
            sample(&text, "tunfwd_ecn_ce_marked_total{queue=\"0\"}"),
            Some("3")
        );
        assert_eq!(
            sample(
                &text,
                "tunfwd_path_mtu_learned_from_errors_total{queue=\"0\"}"
            ),
            Some("2")
        );
        assert_eq!(sample(&text, "tunfwd_uptime_seconds"), Some("2.5"));
        assert_eq!(
            sample(&text, "tunfwd_udp_socket_drops_total{queue=\"1\"}"),
            Some("9")
        );
        assert_eq!(sample(&text, "tunfwd_tun_queue_drops_total"), Some("6"));
        assert!(text.contains("# TYPE tunfwd_tun_queue_drops_total counter\n"));
        let unknown = render(&Report::new(Duration::ZERO, vec![WorkerStats::new(0)]));
        assert!(
            !unknown.contains("tunfwd_tun_queue_drops_total"),
            "an unknown count is left out, not given as 0"
        );
        for family in families(&Counters::default()) {
            let name = format!("tunfwd_{}_total", family.name);
            assert!(text.contains(&format!("# TYPE {name} counter\n")), "{name}");
            for queue in 0..2 {
                assert!(
                    sample(&text, &format!("{name}{{queue=\"{queue}\"}}")).is_some(),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn every_drop_reason_appears_for_every_queue() {
        let text = render(&report());
        for queue in 0..2 {
            for reason in DropReason::ALL {
                let series = format!(
                    "tunfwd_drops_total{{queue=\"{queue}\",reason=\"{}\"}}",
                    reason.name()
                );
                let expected = if queue == 0 && reason == DropReason::ForeignSource {
                    "4"
                } else {
                    "0"
                };
                assert_eq!(sample(&text, &series), Some(expected), "{series}");
            }
        }
    }

    #[test]
    fn histograms_are_cumulative_and_end_at_the_count() {
        let text = render(&report());
        let bucket = |dir: &str, le: &str| {
            sample(
                &text,
                &format!("tunfwd_latency_seconds_bucket{{direction=\"{dir}\",le=\"{le}\"}}"),
            )
            .unwrap_or_else(|| panic!("{dir} {le}"))
            .parse::<u64>()
            .unwrap()
        };
        // 800 and 1000 ns are at most 1 µs; 1001 is not; 2400 is within 2.5 µs; 30 µs within
        // 50; 2 s only in +Inf.
        assert_eq!(bucket("tun_to_udp", "0.000001"), 2);
        assert_eq!(bucket("tun_to_udp", "0.0000025"), 4);
        assert_eq!(bucket("tun_to_udp", "0.000025"), 4);
        assert_eq!(bucket("tun_to_udp", "0.00005"), 5);
        assert_eq!(bucket("tun_to_udp", "1"), 5);
        assert_eq!(bucket("tun_to_udp", "+Inf"), 6);
        assert_eq!(bucket("udp_to_tun", "0.0000025"), 0);
        assert_eq!(bucket("udp_to_tun", "0.000005"), 45);
        for dir in ["tun_to_udp", "udp_to_tun"] {
            let mut last = 0;
            for le in LATENCY_BUCKETS_NS {
                let c = bucket(dir, &seconds(le));
                assert!(c >= last, "{dir} le={le}");
                last = c;
            }
            let count = sample(
                &text,
                &format!("tunfwd_latency_seconds_count{{direction=\"{dir}\"}}"),
            );
            assert_eq!(count.unwrap().parse::<u64>().unwrap(), bucket(dir, "+Inf"));
        }
        // The count is the JSON report's count.
        let json = report().to_json();
        assert_eq!(json["latency_ns"]["udp_to_tun"]["count"], 45);
        assert_eq!(json["latency_ns"]["tun_to_udp"]["count"], 6);
        // 45 packets of 4 µs: 180 µs, within the histogram's precision.
        let sum: f64 = sample(
            &text,
            "tunfwd_latency_seconds_sum{direction=\"udp_to_tun\"}",
        )
        .unwrap()
        .parse()
        .unwrap();
        assert!((sum - 180e-6).abs() < 180e-6 * 1e-3, "{sum}");
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let text = render(&report());
        let mut declared: Vec<String> = Vec::new();
        let mut helped: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                assert!(!help.is_empty() && !help.contains('\\'), "{line}");
                helped.push(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert_eq!(
                    helped.last().map(String::as_str),
                    Some(name),
                    "HELP precedes TYPE"
                );
                declared.push(name.to_string());
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = declared.last().expect("a sample before any TYPE");
                let base = name
                    .strip_suffix("_bucket")
                    .or_else(|| name.strip_suffix("_sum"))
                    .or_else(|| name.strip_suffix("_count"))
                    .filter(|base| base == family)
                    .unwrap_or(name);
                assert_eq!(base, family, "{line}");
                assert!(line.is_ascii() && !line.contains("  "), "{line}");
            }
        }
        let mut unique = declared.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), declared.len(), "each family declared once");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn an_empty_report_renders_zeros() {
        let text = render(&Report::new(Duration::ZERO, vec![WorkerStats::new(0)]));
        assert_eq!(
            sample(&text, "tunfwd_tun_rx_packets_total{queue=\"0\"}"),
            Some("0")
        );
        assert_eq!(
            sample(
                &text,
                "tunfwd_latency_seconds_bucket{direction=\"tun_to_udp\",le=\"+Inf\"}"
            ),
            Some("0")
        );
        assert_eq!(
            sample(
                &text,
                "tunfwd_latency_seconds_sum{direction=\"tun_to_udp\"}"
            ),
            Some("0")
        );
    }

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
}
