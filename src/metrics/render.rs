//! The Prometheus text exposition, version 0.0.4, of a [`Report`]: one family per counter, drops
//! by reason, two latency histograms. PURE: a string from a report, checked in the tests by an
//! independent parser (`prometheus-parse`).

use crate::stats::{Counters, Direction, DropReason, Listed, PathStats, Report, WorkerStats};
use hdrhistogram::Histogram;
use std::fmt::Write as _;

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

/// One counter family per listed counter, `tunfwd_<name>_total{queue}`, with its help.
fn counter_families(
    out: &mut String,
    report: &Report,
    listed: impl Fn(&WorkerStats) -> (Vec<u64>, &'static [&'static str], &'static [&'static str]),
) {
    let rows: Vec<(usize, Vec<u64>)> = report
        .queues
        .iter()
        .map(|q| (q.queue, listed(q).0))
        .collect();
    let (_, names, help) = listed(&WorkerStats::new(0));
    for (i, (name, help)) in names.iter().zip(help).enumerate() {
        let family = format!("tunfwd_{name}_total");
        header(out, &family, "counter", help);
        for (queue, values) in &rows {
            let _ = writeln!(out, "{family}{{queue=\"{queue}\"}} {}", values[i]);
        }
    }
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

    // Every listed counter of `Counters` and `PathStats` (`stats::counters!`), per queue. The
    // kernel's UDP socket drops are one of them; `drops` has its own family, with a reason.
    counter_families(&mut out, report, |q| {
        (q.counters.values(), Counters::NAMES, Counters::HELP)
    });
    counter_families(&mut out, report, |q| {
        (q.path.values(), PathStats::NAMES, PathStats::HELP)
    });
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

    histogram_family(
        &mut out,
        "tunfwd_latency_seconds",
        "From the completion of the read that brought a packet in to the completion of the send \
         or write that took it out, per packet (a super-packet counts as its segments).",
        |direction| report.latency(direction),
    );
    histogram_family(
        &mut out,
        "tunfwd_queue_delay_seconds",
        "How long packets waited in the kernel's queue in front of a worker before it took them: \
         the TUN's ring (tun_to_udp) and the UDP socket's receive buffer (udp_to_tun); what the \
         AQM judges. Empty with --aqm off.",
        |direction| report.queue_delay(direction),
    );
    out
}

/// One histogram family with a series per direction: cumulative buckets, `+Inf`, sum, count.
fn histogram_family(
    out: &mut String,
    name: &str,
    help: &str,
    merged: impl Fn(Direction) -> Histogram<u64>,
) {
    header(out, name, "histogram", help);
    for direction in Direction::ALL {
        let label = direction.name();
        let (counts, total, sum_ns) = buckets(&merged(direction));
        for (le, count) in LATENCY_BUCKETS_NS.iter().zip(counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{direction=\"{label}\",le=\"{}\"}} {count}",
                seconds(*le)
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{direction=\"{label}\",le=\"+Inf\"}} {total}"
        );
        let _ = writeln!(
            out,
            "{name}_sum{{direction=\"{label}\"}} {}",
            sum_ns as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{{direction=\"{label}\"}} {total}");
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::stats::WorkerStats;
    use std::time::Duration;

    /// Two queues with something in every kind of family, out of queue order.
    pub(crate) fn report() -> Report {
        let mut q0 = WorkerStats::new(0);
        q0.counters.tun_rx_packets = 10;
        q0.counters.tun_rx_bytes = 14_200;
        q0.counters.gso_sends = 3;
        q0.counters.multishot_restarts = 2;
        q0.path.path_mtu = 1280;
        q0.path.ecn_ce_marked = 3;
        q0.path.pmtu_lowered = 2;
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
            sample(&text, "tunfwd_pmtu_lowered_total{queue=\"0\"}"),
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
        for listed in Counters::NAMES.iter().chain(PathStats::NAMES) {
            let name = format!("tunfwd_{listed}_total");
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

    /// The queue delay is a histogram family of its own, by direction, from the same
    /// HdrHistograms as the JSON's `queue_delay_ns`; the AQM's marks are counters and its drops
    /// reasons like any other, from the same lists.
    #[test]
    fn queue_delays_marks_and_aqm_drops_are_exposed() {
        let mut q = WorkerStats::new(0);
        q.record_queue_delay_n(Direction::UdpToTun, 3_000_000, 40);
        q.record_queue_delay_n(Direction::TunToUdp, 200_000, 7);
        q.counters.aqm_marked_udp_socket = 5;
        q.counters.drop_n(DropReason::AqmTunRing, 2);
        let report = Report::new(Duration::from_secs(1), vec![q]);
        let text = render(&report);
        let series = |name: &str| {
            sample(&text, name)
                .unwrap_or_else(|| panic!("{name} in\n{text}"))
                .parse::<u64>()
                .unwrap()
        };
        assert!(text.contains("# TYPE tunfwd_queue_delay_seconds histogram\n"));
        let bucket = |dir: &str, le: &str| {
            series(&format!(
                "tunfwd_queue_delay_seconds_bucket{{direction=\"{dir}\",le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("udp_to_tun", "0.0025"), 0);
        assert_eq!(bucket("udp_to_tun", "0.005"), 40);
        assert_eq!(bucket("tun_to_udp", "0.00025"), 7);
        assert_eq!(
            series("tunfwd_queue_delay_seconds_count{direction=\"udp_to_tun\"}"),
            40
        );
        let json = report.to_json();
        assert_eq!(json["queue_delay_ns"]["udp_to_tun"]["count"], 40);
        assert_eq!(json["queue_delay_ns"]["tun_to_udp"]["count"], 7);
        assert_eq!(series("tunfwd_aqm_marked_udp_socket_total{queue=\"0\"}"), 5);
        assert_eq!(series("tunfwd_aqm_marked_tun_ring_total{queue=\"0\"}"), 0);
        assert_eq!(
            series("tunfwd_drops_total{queue=\"0\",reason=\"aqm_tun_ring\"}"),
            2
        );
        assert_eq!(
            series("tunfwd_drops_total{queue=\"0\",reason=\"aqm_udp_socket\"}"),
            0
        );
        let table = report.to_table();
        assert!(table.contains("aqm_tun_ring=2"), "{table}");
        assert!(table.contains("aqm_marked_udp_socket=5"), "{table}");
        assert!(table.contains("queue udp_to_tun"), "{table}");
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
}
