//! Running tunfwd in production: Prometheus metrics, systemd notifications and the unit file, and
//! the switch to an unprivileged user, each checked on the real binary.
//!
//! The namespace tests need root and fail at once without it, never skipping silently, as in
//! tests/netns.rs. The metrics listener binds inside relay A's namespace, so scrapes are made
//! from there too: a thread of this test process enters that namespace with setns(2) (which moves
//! only the calling thread) and makes the HTTP request itself, so no curl or python is needed.
//! Its output is read by an independent parser, the `prometheus-parse` crate.

use clap::Parser;
use prometheus_parse::{HistogramCount, Sample, Scrape, Value as Metric};
use serde_json::Value;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tunfwd::{Account, Accounts, Args, DropReason};
use tunfwd_testkit::testbed::{self, Host, Process, Testbed, endpoint, parse_json};

static SERIAL: Mutex<()> = Mutex::new(());

/// Where relay A serves metrics, inside its namespace (the testbed brings `lo` up).
const METRICS: &str = "127.0.0.1:9101";

fn require_root() {
    if !testbed::is_root() {
        panic!(
            "the operations tests need root (namespaces, TUN, switching users): run them as root, \
             e.g. `sudo -E cargo test --test operations`"
        );
    }
}

fn testbed_running(tunfwd: &Path) -> Testbed {
    require_root();
    Testbed::new(tunfwd, &tunfwd_testkit::binaries::tool("tunload"))
        .expect("building the namespace testbed")
}

fn testbed() -> Testbed {
    testbed_running(Path::new(env!("CARGO_BIN_EXE_tunfwd")))
}

/// A scratch directory of this test process, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tunfwd-ops-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `GET path` on `address` from inside `host`'s network namespace. Returns the status and body.
fn http_get(bed: &Testbed, host: Host, address: &str, path: &str) -> (u16, String) {
    let address: SocketAddr = address.parse().unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/plain\r\n\r\n");
    let exchange = || -> io::Result<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| io::Error::other(format!("no end of head: {answer}")))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line: {head}")))?;
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| io::Error::other(format!("no Content-Length: {head}")))?;
        assert_eq!(length, body.len(), "Content-Length");
        Ok((status, body.to_string()))
    };
    bed.in_namespace(host, exchange)
        .unwrap_or_else(|e| panic!("GET {path} from {address}: {e}"))
}

fn scrape_text(bed: &Testbed) -> String {
    let (status, body) = http_get(bed, Host::A, METRICS, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// Parses a scrape and checks it is well-formed: no line the parser skipped, `# HELP` for every
/// family, cumulative histogram buckets that end at `+Inf` with the `_count`.
fn parse_scrape(text: &str) -> Scrape {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("scrape parses");
    // prometheus-parse skips what it cannot read: count what it read against the sample lines.
    let lines = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    let parsed: usize = scrape
        .samples
        .iter()
        .map(|s| match &s.value {
            Metric::Histogram(buckets) => buckets.len(),
            _ => 1,
        })
        .sum();
    assert_eq!(parsed, lines, "every sample line parsed:\n{text}");
    for s in &scrape.samples {
        let family = ["_sum", "_count"]
            .iter()
            .find_map(|suffix| s.metric.strip_suffix(suffix))
            .filter(|base| scrape.docs.contains_key(*base))
            .unwrap_or(&s.metric);
        assert!(scrape.docs.contains_key(family), "no HELP for {family}");
        assert!(
            text.contains(&format!("# TYPE {} ", s.metric))
                || text.contains(&format!("# TYPE {family} ")),
            "no TYPE for {}",
            s.metric
        );
    }
    for direction in ["tun_to_udp", "udp_to_tun"] {
        let b = buckets(&scrape, direction);
        assert!(b.len() > 10, "a few buckets per decade: {b:?}");
        assert!(
            b.windows(2).all(|w| w[0].less_than < w[1].less_than),
            "{b:?}"
        );
        assert!(b.windows(2).all(|w| w[0].count <= w[1].count), "{b:?}");
        let last = b.last().unwrap();
        assert!(last.less_than.is_infinite());
        assert_eq!(last.count, latency_count(&scrape, direction) as f64);
    }
    scrape
}

fn number(s: &Sample) -> f64 {
    match s.value {
        Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => v,
        _ => panic!("{} is not a number", s.metric),
    }
}

/// One series' value; panics when it is missing.
fn series(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(number)
        .unwrap_or_else(|| panic!("no {metric} {labels:?}"))
}

/// A counter summed over the queues.
fn total(scrape: &Scrape, metric: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .map(number)
        .sum()
}

fn buckets(scrape: &Scrape, direction: &str) -> Vec<HistogramCount> {
    scrape
        .samples
        .iter()
        .find_map(|s| match &s.value {
            Metric::Histogram(b)
                if s.metric == "tunfwd_latency_seconds"
                    && s.labels.get("direction") == Some(direction) =>
            {
                Some(b.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no latency histogram for {direction}"))
}

fn latency_count(scrape: &Scrape, direction: &str) -> u64 {
    series(
        scrape,
        "tunfwd_latency_seconds_count",
        &[("direction", direction)],
    ) as u64
}

/// The relay-to-relay exchange's path counters, which move every 2 s for as long as two relays
/// run (outer entropy's advertisements and keepalive probes), traffic or not; and the queue
/// delay histograms, since the socket's wait is timed for every datagram, the exchange's too.
fn periodic_path_counter(sample: &str) -> bool {
    [
        "tunfwd_pmtu_probes_",
        "tunfwd_ports_",
        "tunfwd_peer_ports_",
        "tunfwd_queue_delay_seconds",
    ]
    .iter()
    .any(|p| sample.starts_with(p))
}

/// Scrapes until three scrapes in a row, more than a snapshot interval apart, agree on every
/// sample but the uptime and [`periodic_path_counter`]s: the workers' latest snapshots then
/// hold everything they counted.
fn settled_scrape(bed: &Testbed) -> String {
    let without_uptime = |text: &str| {
        text.lines()
            .filter(|l| !l.starts_with("tunfwd_uptime_seconds ") && !periodic_path_counter(l))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut previous = String::new();
    let mut moved = Vec::new();
    let mut agreeing = 0;
    for _ in 0..40 {
        let text = scrape_text(bed);
        let now = without_uptime(&text);
        moved = now
            .lines()
            .filter(|l| !previous.lines().any(|p| p == *l))
            .map(str::to_string)
            .collect();
        if now == previous {
            agreeing += 1;
            if agreeing == 2 {
                return text;
            }
        } else {
            agreeing = 0;
        }
        previous = now;
        std::thread::sleep(Duration::from_millis(1200));
    }
    panic!("the counters never settled; the last scrape moved {moved:#?}:\n{previous}");
}

/// Stops a relay with SIGTERM, checks it exits 0 with a report, and returns its final JSON.
fn stop(mut relay: Process, json: &Path) -> Value {
    let report = relay
        .stop_for_report(json)
        .unwrap_or_else(|e| panic!("stopping tunfwd: {e}"));
    assert!(relay.stdout().contains("tunfwd stats after"));
    report
}

fn json_total(report: &Value, field: &str) -> u64 {
    testbed::report_sum(&report["queues"], field)
}

/// Starts a verified TCP sink on `to_host` and a sender on `from` for `seconds`; returns both.
fn start_transfer(
    bed: &Testbed,
    from: Host,
    to_host: Host,
    to_addr: &str,
    amount: &[&str],
) -> (Process, Process) {
    let listen = endpoint(
        if to_addr.contains(':') {
            "::"
        } else {
            "0.0.0.0"
        },
        5201,
    );
    let sink = bed
        .tunload_background(
            to_host,
            "tcp-sink",
            &["tcp-sink", "--listen", &listen, "--seconds", "60"],
        )
        .unwrap();
    // The sink must be listening before the sender connects.
    std::thread::sleep(Duration::from_millis(300));
    let target = endpoint(to_addr, 5201);
    let mut args = vec!["tcp-send", "--to", &target];
    args.extend_from_slice(amount);
    let sender = bed.tunload_background(from, "tcp-send", &args).unwrap();
    (sender, sink)
}

/// Waits for a transfer and checks that every byte arrived, verified.
fn finish_transfer(mut sender: Process, mut sink: Process) -> u64 {
    let status = sender.wait_for(Duration::from_secs(60)).unwrap();
    assert!(
        status.success(),
        "sender: {}{}",
        sender.stdout(),
        sender.stderr()
    );
    let status = sink.wait_for(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "sink: {}{}", sink.stdout(), sink.stderr());
    let sent = parse_json(&sender.stdout()).unwrap();
    let got = parse_json(&sink.stdout()).unwrap();
    assert_eq!(got["verified"], true, "{got}");
    assert_eq!(got["bytes"], sent["bytes"], "{got} {sent}");
    let bytes = got["bytes"].as_u64().unwrap();
    assert!(bytes > 0, "{got}");
    bytes
}

fn verified_transfer(bed: &Testbed, from: Host, to_host: Host, to_addr: &str, bytes: u64) {
    let bytes = bytes.to_string();
    let (sender, sink) = start_transfer(
        bed,
        from,
        to_host,
        to_addr,
        &["--bytes", &bytes, "--seconds", "50"],
    );
    finish_transfer(sender, sink);
}

#[test]
fn metrics_rise_during_a_verified_transfer_and_match_the_final_report() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = testbed();
    let json_a = bed.path("a.json");
    let a = bed
        .start_tunfwd(
            Host::A,
            "tunfwd-a",
            &[
                "--queues",
                "2",
                "--metrics",
                METRICS,
                "--stats-json",
                json_a.to_str().unwrap(),
            ],
        )
        .expect("tunfwd on A");
    let _b = bed
        .start_tunfwd(Host::B, "tunfwd-b", &["--queues", "2"])
        .expect("tunfwd on B");

    // Served from the start, every queue and every drop reason, zeros included.
    let before = parse_scrape(&scrape_text(&bed));
    assert_eq!(series(&before, "tunfwd_queues", &[]), 2.0);
    for queue in ["0", "1"] {
        for reason in DropReason::ALL {
            series(
                &before,
                "tunfwd_drops_total",
                &[("queue", queue), ("reason", reason.name())],
            );
        }
        series(&before, "tunfwd_gso_sends_total", &[("queue", queue)]);
    }
    let (status, _) = http_get(&bed, Host::A, METRICS, "/");
    assert_eq!(status, 404);

    // Three seconds of verified TCP from A to B, scraped twice while it runs.
    let (mut sender, sink) = start_transfer(
        &bed,
        Host::A,
        Host::B,
        testbed::B_TUNNEL4,
        &["--bytes", "0", "--seconds", "3"],
    );
    std::thread::sleep(Duration::from_millis(1300));
    let during_1 = parse_scrape(&scrape_text(&bed));
    std::thread::sleep(Duration::from_millis(1300));
    let during_2 = parse_scrape(&scrape_text(&bed));
    assert!(
        sender.try_status().unwrap().is_none(),
        "both scrapes were taken while the transfer ran"
    );
    for metric in [
        "tunfwd_tun_rx_bytes_total",
        "tunfwd_tun_rx_packets_total",
        "tunfwd_udp_tx_packets_total",
        "tunfwd_udp_rx_packets_total",
    ] {
        let (x, y, z) = (
            total(&before, metric),
            total(&during_1, metric),
            total(&during_2, metric),
        );
        assert!(x < y && y < z, "{metric} rises: {x} {y} {z}");
    }
    assert!(latency_count(&during_1, "tun_to_udp") < latency_count(&during_2, "tun_to_udp"));
    finish_transfer(sender, sink);

    // Settled, the scrape says what the final report says, to the packet.
    let settled_text = settled_scrape(&bed);
    let settled = parse_scrape(&settled_text);
    assert!(
        total(&settled, "tunfwd_tun_rx_bytes_total")
            > total(&during_2, "tunfwd_tun_rx_bytes_total")
    );
    let report = stop(a, &json_a);
    for direction in ["tun_to_udp", "udp_to_tun"] {
        let json_count = report["latency_ns"][direction]["count"].as_u64().unwrap();
        assert!(json_count > 0, "{direction}");
        assert_eq!(
            latency_count(&settled, direction),
            json_count,
            "{direction}: scrape\n{settled_text}\nreport {report}"
        );
    }
    for queue in report["queues"].as_array().unwrap() {
        let q = queue["queue"].to_string();
        for (field, value) in queue.as_object().unwrap() {
            match field.as_str() {
                "queue" => {}
                "drops" => {
                    for (reason, count) in value.as_object().unwrap() {
                        let labels = [("queue", q.as_str()), ("reason", reason.as_str())];
                        assert_eq!(
                            series(&settled, "tunfwd_drops_total", &labels),
                            count.as_u64().unwrap() as f64,
                            "{labels:?}"
                        );
                    }
                }
                _ => assert_eq!(
                    series(&settled, &format!("tunfwd_{field}_total"), &[("queue", &q)]),
                    value.as_u64().unwrap() as f64,
                    "queue {q} {field}"
                ),
            }
        }
    }
    for queue in report["path"]["queues"].as_array().unwrap() {
        let q = queue["queue"].to_string();
        for (field, value) in queue.as_object().unwrap() {
            let name = match field.as_str() {
                "queue" => continue,
                "path_mtu" => "tunfwd_path_mtu_bytes".to_string(),
                other => format!("tunfwd_{other}_total"),
            };
            let scraped = series(&settled, &name, &[("queue", &q)]);
            let reported = value.as_u64().unwrap() as f64;
            if periodic_path_counter(&name) {
                // Outer entropy's exchange goes on every 2 s: the final report may hold more.
                assert!(
                    scraped <= reported,
                    "queue {q} {field}: {scraped} > {reported}"
                );
            } else {
                assert_eq!(scraped, reported, "queue {q} {field}");
            }
        }
    }
    assert_eq!(
        total(&settled, "tunfwd_udp_tx_packets_total"),
        json_total(&report, "udp_tx_packets") as f64
    );
}

fn tunfwd(args: &[&str]) -> (Option<i32>, String) {
    testbed::run_to_exit(Path::new(env!("CARGO_BIN_EXE_tunfwd")), args)
}

/// Bad values exit 2 before anything is set up; no root needed.
#[test]
fn operations_options_are_validated_with_exit_2_naming_the_option() {
    let peer = ["--peer", "198.18.0.2:55555"];
    let cases: &[(&[&str], &str)] = &[
        (&["--metrics", "nonsense"], "--metrics"),
        (&["--metrics", "localhost:9101"], "--metrics"),
        (&["--metrics", "127.0.0.1:0"], "--metrics"),
        (&["--user", "tunfwd-no-such-user"], "--user"),
        (&["--user", "root"], "--user"),
        (
            &["--user", "nobody", "--group", "tunfwd-no-such-group"],
            "--group",
        ),
    ];
    for (extra, option) in cases {
        let args: Vec<&str> = peer.iter().chain(extra.iter()).copied().collect();
        let (code, stderr) = tunfwd(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("tunfwd: {option}:")),
            "{args:?}: {stderr}"
        );
    }
    let (code, _) = tunfwd(&["--peer", "198.18.0.2:1", "--group", "nogroup"]);
    assert_eq!(code, Some(2), "--group needs --user");
    let help = Command::new(env!("CARGO_BIN_EXE_tunfwd"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "--metrics",
        "/metrics",
        "--user",
        "no capabilities",
        "--group",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

/// A metrics address that cannot be bound fails at startup, before any device exists, with exit
/// status 1 and a message naming the address. No root needed.
#[test]
fn an_unbindable_metrics_address_exits_1_at_startup() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = held.local_addr().unwrap().to_string();
    let (code, stderr) = tunfwd(&["--peer", "198.18.0.2:55555", "--metrics", &address]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot serve metrics on {address}"))
            && stderr.contains("holds the port"),
        "{stderr}"
    );
    // TEST-NET-1 is nobody's address; make sure it is not this machine's before relying on it.
    if TcpListener::bind("192.0.2.1:0").is_err() {
        let (code, stderr) = tunfwd(&["--peer", "198.18.0.2:55555", "--metrics", "192.0.2.1:9101"]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("not an address of this host"), "{stderr}");
    }
}

/// One thread's ids and capabilities from /proc/PID/task/TID/status, read independently of the
/// product's own parser.
fn thread_status(status: &str) -> (String, Vec<String>, Vec<String>, String, String, String) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .trim()
            .to_string()
    };
    let words = |s: String| s.split_whitespace().map(str::to_string).collect();
    (
        field("Name"),
        words(field("Uid")),
        words(field("Gid")),
        field("CapPrm"),
        field("CapEff"),
        field("CapAmb"),
    )
}

#[test]
fn user_nobody_keeps_no_privilege_in_any_thread_and_still_relays() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = testbed();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a user called nobody");
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());

    // The report directory must be writable by the user: a root-owned one fails at startup.
    let unwritable = bed.path("a.json");
    let err = bed
        .start_tunfwd(
            Host::A,
            "tunfwd-a-unwritable",
            &[
                "--queues",
                "2",
                "--user",
                "nobody",
                "--stats-json",
                unwritable.to_str().unwrap(),
            ],
        )
        .err()
        .expect("an unwritable --stats-json stops tunfwd at startup");
    let err = err.to_string();
    assert!(err.contains("exit status: 1"), "{err}");
    assert!(err.contains("cannot write the stats report"), "{err}");

    let dir = bed.path("nobody");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    let json_a = dir.join("a.json");
    let json_b = bed.path("b.json");
    let a = bed
        .start_tunfwd(
            Host::A,
            "tunfwd-a",
            &[
                "--queues",
                "2",
                "--user",
                "nobody",
                "--stats-json",
                json_a.to_str().unwrap(),
                "--metrics",
                METRICS,
            ],
        )
        .expect("tunfwd on A");
    let b = bed
        .start_tunfwd(
            Host::B,
            "tunfwd-b",
            &["--queues", "2", "--stats-json", json_b.to_str().unwrap()],
        )
        .expect("tunfwd on B");
    assert!(
        a.stderr()
            .contains(&format!("switched every thread to user nobody (uid {uid})")),
        "{}",
        a.stderr()
    );

    // `ip netns exec` execs tunfwd, so the child's pid is tunfwd's.
    let pid = a.pid().unwrap();
    let mut names = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let (name, uids, gids, permitted, effective, ambient) = thread_status(&status);
        assert_eq!(
            uids,
            vec![uid.to_string(); 4],
            "{name}: real, effective, saved, fs uid"
        );
        assert_eq!(gids, vec![gid.to_string(); 4], "{name}: gids");
        assert_eq!(effective, "0000000000000000", "{name}: CapEff");
        assert_eq!(permitted, "0000000000000000", "{name}: CapPrm");
        assert_eq!(ambient, "0000000000000000", "{name}: CapAmb");
        names.push(name);
    }
    for thread in ["tunfwd-q0", "tunfwd-q1", "tunfwd-metrics"] {
        assert!(names.iter().any(|n| n == thread), "{thread} in {names:?}");
    }
    assert!(
        fs::metadata(&json_a).is_ok(),
        "first report written at startup"
    );

    // The device, sockets and rings set up as root keep working as nobody, both ways.
    verified_transfer(&bed, Host::A, Host::B, testbed::B_TUNNEL4, 20_000_000);
    verified_transfer(&bed, Host::B, Host::A, testbed::A_TUNNEL6, 20_000_000);
    let scrape = parse_scrape(&scrape_text(&bed));
    assert_eq!(series(&scrape, "tunfwd_queues", &[]), 2.0);

    // SIGTERM still writes the final report, as nobody.
    let report_a = stop(a, &json_a);
    assert!(
        json_total(&report_a, "tun_rx_bytes") > 20_000_000,
        "{report_a}"
    );
    assert!(
        json_total(&report_a, "tun_tx_bytes") > 20_000_000,
        "{report_a}"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(&json_a).unwrap().uid(),
        uid,
        "written by nobody"
    );
    let report_b = stop(b, &json_b);
    assert!(json_total(&report_b, "udp_rx_bytes") > 20_000_000);
}

/// A message received by the fake service manager: when, what, and whether tunfwd had already
/// logged its "up:" line.
struct Notification {
    at: Duration,
    text: String,
    after_up: bool,
}

#[test]
fn systemd_notifications_ready_watchdog_status_and_stopping() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let scratch = Scratch::new("notify");
    let socket_path = scratch.0.join("notify.sock");
    let manager = UnixDatagram::bind(&socket_path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // The testbed runs the program it is given through `ip netns exec`, which keeps the
    // environment; this wrapper sets the manager's variables as systemd would, for tunfwd alone.
    // After `exec`, $$ is tunfwd's pid, so WATCHDOG_PID names it.
    let wrapper = scratch.0.join("tunfwd-notify");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nNOTIFY_SOCKET={} WATCHDOG_USEC=200000 WATCHDOG_PID=$$ exec {} \"$@\"\n",
            socket_path.display(),
            env!("CARGO_BIN_EXE_tunfwd")
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let bed = testbed_running(&wrapper);
    let stderr_path = bed.path("tunfwd-a.err");

    let start = Instant::now();
    let notifications = std::thread::scope(|s| {
        let listener = s.spawn(|| {
            let mut got: Vec<Notification> = Vec::new();
            let mut buf = [0u8; 4096];
            while start.elapsed() < Duration::from_secs(40) {
                let Ok(len) = manager.recv(&mut buf) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                let after_up = fs::read_to_string(&stderr_path)
                    .unwrap_or_default()
                    .contains(" up: ");
                let stopping = text.contains("STOPPING=1");
                got.push(Notification {
                    at: start.elapsed(),
                    text,
                    after_up,
                });
                if stopping {
                    break;
                }
            }
            got
        });
        let mut a = bed
            .start_tunfwd(
                Host::A,
                "tunfwd-a",
                &["--queues", "2", "--stats-interval", "1"],
            )
            .expect("tunfwd on A");
        std::thread::sleep(Duration::from_millis(2500));
        let status = a.terminate(Duration::from_secs(10)).unwrap();
        assert!(status.success(), "{}", a.stderr());
        listener.join().unwrap()
    });

    let texts: Vec<&str> = notifications.iter().map(|n| n.text.as_str()).collect();
    let first = notifications.first().expect("notifications arrived");
    assert!(first.text.starts_with("READY=1\n"), "{texts:?}");
    assert!(first.after_up, "READY=1 comes after the up: line");
    assert!(
        first.text.contains("STATUS=tunfwd0 up: 2 queue(s)"),
        "{texts:?}"
    );
    assert_eq!(texts.iter().filter(|t| t.contains("READY=1")).count(), 1);
    let watchdogs: Vec<Duration> = notifications
        .iter()
        .filter(|n| n.text == "WATCHDOG=1\n")
        .map(|n| n.at)
        .collect();
    // Every 100 ms for 2.5 s: allow for a loaded machine, but demand a steady beat.
    assert!(watchdogs.len() >= 10, "{} watchdog pings", watchdogs.len());
    let longest = watchdogs.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(longest < Duration::from_secs(1), "a gap of {longest:?}");
    let statuses: Vec<&&str> = texts
        .iter()
        .filter(|t| t.starts_with("STATUS=") && t.contains("queue(s), up"))
        .collect();
    assert!(!statuses.is_empty(), "periodic STATUS lines: {texts:?}");
    assert!(statuses.iter().all(|t| t.lines().count() == 1));
    let last = texts.last().unwrap();
    assert!(last.starts_with("STOPPING=1\n"), "{texts:?}");
}

/// A user database that has the example's `tunfwd` user.
struct ExampleAccounts;

impl Accounts for ExampleAccounts {
    fn user(&self, name: &str) -> Result<Option<Account>, String> {
        Ok((name == "tunfwd").then_some(Account {
            uid: 990,
            primary_gid: 990,
        }))
    }

    fn group(&self, _: &str) -> Result<Option<u32>, String> {
        Ok(None)
    }
}

/// The unit says what README.md says it does, its example options are valid, and, where
/// `systemd-analyze` exists, systemd accepts every line of it.
#[test]
fn the_systemd_unit_and_example_are_valid() {
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let unit = fs::read_to_string(contrib.join("tunfwd@.service")).unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "Restart=on-failure",
        "EnvironmentFile=/etc/tunfwd/%i.env",
        "ExecStart=/usr/local/bin/tunfwd $TUNFWD_ARGS",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK AF_UNIX",
        "DeviceAllow=/dev/net/tun rw",
        "SystemCallFilter=@system-service io_uring_setup io_uring_enter io_uring_register",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")));
    assert!(
        !unit
            .lines()
            .any(|l| l.starts_with("SystemCallFilter=~@privileged")),
        "~@privileged would forbid setuid"
    );

    // The example's options pass tunfwd's own validation.
    let env = fs::read_to_string(contrib.join("example.env")).unwrap();
    let options = env
        .lines()
        .find_map(|l| l.strip_prefix("TUNFWD_ARGS="))
        .expect("TUNFWD_ARGS in example.env");
    let argv = std::iter::once("tunfwd").chain(options.split_whitespace());
    let config = Args::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("example.env: {e}"))
        .validate(&[0, 1], |_, _| Err("no DNS".into()), &ExampleAccounts)
        .unwrap_or_else(|e| panic!("example.env: {e}"));
    assert!(config.metrics.is_some() && config.run_as.is_some());
    assert!(config.stats_json.unwrap().starts_with("/run/tunfwd"));

    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if !analyze.is_ok_and(|o| o.status.success()) {
        eprintln!("note: systemd-analyze is not installed; the unit was checked by content only");
        return;
    }
    // `verify` wants an instance and an executable that exists: the binary under test.
    let scratch = Scratch::new("unit");
    let instance = scratch.0.join("tunfwd@site1.service");
    fs::write(
        &instance,
        unit.replace("/usr/local/bin/tunfwd", env!("CARGO_BIN_EXE_tunfwd")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&instance)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    // Unknown keys and bad values are warnings with exit status 0: there must be none about us.
    let about_us: Vec<&str> = said.lines().filter(|l| l.contains("tunfwd@")).collect();
    assert!(about_us.is_empty(), "systemd-analyze verify: {about_us:?}");
}

/// Runs `args` in `host`'s namespace and returns its standard output.
fn output_in(bed: &Testbed, host: Host, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &bed.namespace(host)])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {:?}", out);
    String::from_utf8(out.stdout).unwrap()
}

/// `read`'s value once two reads 200 ms apart agree (within 5 s).
fn settled(read: impl Fn() -> u64) -> u64 {
    let mut last = read();
    for _ in 0..25 {
        std::thread::sleep(Duration::from_millis(200));
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the count kept moving: {last}");
}

/// The drops the kernel counts for the UDP sockets bound to `port` (IPv4), as `/proc/net/udp`
/// shows them in `host`'s namespace: the last column, per socket.
fn proc_udp_drops(bed: &Testbed, host: Host, port: u16) -> u64 {
    let table = output_in(bed, host, &["cat", "/proc/net/udp"]);
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&local))
        })
        .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn drops_in_the_kernel_before_tunfwd_reads_are_reported() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = testbed();
    let scratch = Scratch::new("kernel-drops");
    let (a_json, b_json) = (scratch.0.join("a.json"), scratch.0.join("b.json"));
    // One outer tuple each (`--entropy off`): the drop counts are compared exactly, and a port
    // advertisement, sent every 1 to 8 s while the stopped peer does not answer, could land in a
    // full socket after the count settled.
    let a = bed
        .start_tunfwd(
            Host::A,
            "tunfwd-a",
            &[
                "--entropy",
                "off",
                "--queues",
                "1",
                "--tx-queue-len",
                "8",
                "--stats-json",
                a_json.to_str().unwrap(),
            ],
        )
        .unwrap();
    let b = bed
        .start_tunfwd(
            Host::B,
            "tunfwd-b",
            &[
                "--entropy",
                "off",
                "--queues",
                "1",
                "--socket-buffer",
                "64K",
                "--stats-json",
                b_json.to_str().unwrap(),
            ],
        )
        .unwrap();
    // The queue length asked for, and the default where none was.
    let txqlen = |host| {
        let link: Value = serde_json::from_str(&output_in(
            &bed,
            host,
            &["ip", "-j", "link", "show", "tunfwd0"],
        ))
        .unwrap();
        link[0]["txqlen"].as_u64().unwrap()
    };
    assert_eq!(txqlen(Host::A), 8);
    assert_eq!(txqlen(Host::B), u64::from(tunfwd::DEFAULT_TX_QUEUE_LEN));
    let flood = |name: &str| {
        let target = endpoint(testbed::B_TUNNEL4, 7000);
        let out = bed
            .tunload(
                Host::A,
                name,
                &["udp-flood", "--to", &target, "--seconds", "1"],
                Duration::from_secs(10),
            )
            .unwrap();
        parse_json(&out).unwrap()["sent"].as_u64().unwrap()
    };

    // Relay A stopped: its TUN queue's ring of 8 fills and the kernel drops the rest.
    a.signal(nix::sys::signal::Signal::SIGSTOP);
    let sent = flood("flood-into-a-stopped");
    let ring_drops = || {
        let link: Value = serde_json::from_str(&output_in(
            &bed,
            Host::A,
            &["ip", "-j", "-s", "link", "show", "tunfwd0"],
        ))
        .unwrap();
        link[0]["stats64"]["tx"]["dropped"].as_u64().unwrap()
    };
    let first = ring_drops();
    assert!(first > sent / 2, "{first} of {sent} dropped at a ring of 8");
    a.signal(nix::sys::signal::Signal::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));

    // Relay B stopped: its socket's 128 KB receive buffer fills and the kernel drops the rest.
    b.signal(nix::sys::signal::Signal::SIGSTOP);
    flood("flood-into-b-stopped");
    // Relay A may still be sending what its ring held when the flood ended: wait until B's count
    // stops moving, so that the report and this read see the same drops.
    let socket_drops = settled(|| proc_udp_drops(&bed, Host::B, testbed::TUNNEL_PORT));
    assert!(socket_drops > 0, "relay B's socket dropped nothing");
    b.signal(nix::sys::signal::Signal::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));

    // The second flood went through A's ring of 8 too, and lost some there.
    let ring_drops = settled(ring_drops);
    let a_report = stop(a, &a_json);
    let b_report = stop(b, &b_json);
    // Each report says exactly what the kernel counted, apart from tunfwd's own drops.
    assert_eq!(
        a_report["kernel_drops"]["tun_queue"], ring_drops,
        "{a_report}"
    );
    assert_eq!(
        b_report["kernel_drops"]["udp_socket"], socket_drops,
        "{b_report}"
    );
    assert_eq!(json_total(&b_report, "udp_socket_drops"), socket_drops);
    assert_eq!(a_report["kernel_drops"]["udp_socket"], 0, "{a_report}");
    assert_eq!(b_report["kernel_drops"]["tun_queue"], 0, "{b_report}");
    let a_table = fs::read_to_string(bed.path("tunfwd-a.out")).unwrap();
    assert!(
        a_table.contains(&format!(
            "kernel drops (before tunfwd could read them): tun_queue={ring_drops} udp_socket=0"
        )),
        "{a_table}"
    );
}

/// Issue 18: fifty clients that each trickle a never-finished request head, a byte every 200 ms,
/// reconnecting whenever the server closes them, do not hold up a scrape. Ten scrapes spread over
/// the five seconds they keep at it each get a whole 200 answer within a second. (The server that
/// answered one connection at a time, with a timeout per read, stayed with the first of them for
/// as long as it kept sending.)
#[test]
fn scrapes_are_answered_within_a_second_while_fifty_clients_trickle() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const SLOW_CLIENTS: usize = 50;
    const TRICKLE_EVERY: Duration = Duration::from_millis(200);
    const SCRAPES: usize = 10;
    const SCRAPE_EVERY: Duration = Duration::from_millis(450);
    const SCRAPE_LIMIT: Duration = Duration::from_secs(1);
    /// What the slow clients send, then `a` forever: a head that never ends.
    const SLOW_HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: slow\r\nX-Slow: ";

    /// One scrape with its own timeouts: the status and body length of a whole answer.
    fn scrape(address: SocketAddr) -> Result<(u16, usize), String> {
        let exchange = || -> io::Result<Vec<u8>> {
            let mut stream = TcpStream::connect_timeout(&address, SCRAPE_LIMIT)?;
            stream.set_read_timeout(Some(SCRAPE_LIMIT * 3 / 2))?;
            stream.set_write_timeout(Some(SCRAPE_LIMIT))?;
            stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: scraper\r\n\r\n")?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer)?;
            Ok(answer)
        };
        let answer =
            String::from_utf8(exchange().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no end of head in {answer:?}"))?;
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|l| l.trim().parse::<usize>().ok());
        match (status, length) {
            (Some(status), Some(length)) if length == body.len() => Ok((status, length)),
            _ => Err(format!(
                "cut or malformed answer: {head:?}, {} body bytes",
                body.len()
            )),
        }
    }

    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = testbed();
    let _a = bed
        .start_tunfwd(
            Host::A,
            "tunfwd-a",
            &["--queues", "1", "--metrics", METRICS],
        )
        .expect("tunfwd on A");
    let address: SocketAddr = METRICS.parse().unwrap();

    // Threads spawned from the thread in A's namespace are in it too (a new thread shares its
    // creator's namespaces unless cloned with CLONE_NEWNET).
    let (scrapes, trickled) = bed
        .in_namespace(Host::A, || {
            let stop = AtomicBool::new(false);
            let connected = AtomicUsize::new(0);
            std::thread::scope(|s| {
                // One thread keeps all fifty going: every tick, each sends its next byte, and
                // one the server has closed (a read says end of file) connects again.
                let trickler = s.spawn(|| {
                    let mut clients: Vec<Option<(TcpStream, usize)>> =
                        (0..SLOW_CLIENTS).map(|_| None).collect();
                    let (mut bytes, mut connects, mut closed_by_server) = (0usize, 0usize, 0usize);
                    let started = Instant::now();
                    // At most 15 s of ticks, whatever happens to the scraper.
                    for tick in 0..75u32 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        for client in clients.iter_mut() {
                            if let Some((stream, _)) = client {
                                let mut byte = [0u8; 1];
                                match (&*stream).read(&mut byte) {
                                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                                    _ => {
                                        closed_by_server += 1;
                                        *client = None;
                                    }
                                }
                            }
                            if client.is_none() {
                                let stream = TcpStream::connect_timeout(&address, SCRAPE_LIMIT)
                                    .and_then(|s| s.set_nonblocking(true).map(|()| s));
                                if let Ok(stream) = stream {
                                    connects += 1;
                                    *client = Some((stream, 0));
                                }
                            }
                            if let Some((stream, sent)) = client {
                                let byte = SLOW_HEAD.get(*sent).copied().unwrap_or(b'a');
                                if (&*stream).write(&[byte]).is_ok_and(|n| n == 1) {
                                    *sent += 1;
                                    bytes += 1;
                                } else {
                                    *client = None;
                                }
                            }
                        }
                        connected.store(clients.iter().flatten().count(), Ordering::Relaxed);
                        let next = started + TRICKLE_EVERY * (tick + 1);
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                    (started.elapsed(), bytes, connects, closed_by_server)
                    // The streams close as `clients` drops.
                });

                // Scrape once every slow client is connected and has sent a byte or two.
                let waiting = Instant::now();
                while connected.load(Ordering::Relaxed) < SLOW_CLIENTS
                    && waiting.elapsed() < Duration::from_secs(5)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                std::thread::sleep(TRICKLE_EVERY * 2);
                let mut scrapes = Vec::with_capacity(SCRAPES);
                for _ in 0..SCRAPES {
                    let began = Instant::now();
                    let outcome = scrape(address);
                    let took = began.elapsed();
                    let failed = !matches!(outcome, Ok((200, _))) || took > SCRAPE_LIMIT;
                    scrapes.push((took, connected.load(Ordering::Relaxed), outcome));
                    // One failure says it all; the old server would fail the other nine alike.
                    if failed {
                        break;
                    }
                    std::thread::sleep(SCRAPE_EVERY.saturating_sub(took));
                }
                stop.store(true, Ordering::Relaxed);
                let trickled = trickler.join().expect("the trickling thread");
                Ok((scrapes, trickled))
            })
        })
        .expect("scraping from A's namespace");

    let (trickled_for, bytes, connects, closed_by_server) = trickled;
    eprintln!(
        "slow clients: {trickled_for:?} of trickling, {bytes} bytes, {connects} connections, \
         {closed_by_server} closed by the server; scrapes (time, slow clients connected): {:?}",
        scrapes
            .iter()
            .map(|(took, connected, _)| (*took, *connected))
            .collect::<Vec<_>>()
    );
    for (i, (took, connected, outcome)) in scrapes.iter().enumerate() {
        assert!(
            matches!(outcome, Ok((200, length)) if *length > 0),
            "scrape {} of {SCRAPES}, with {connected} slow clients connected: {outcome:?} after \
             {took:?}",
            i + 1
        );
        assert!(
            *took <= SCRAPE_LIMIT,
            "scrape {} of {SCRAPES}, with {connected} slow clients connected, took {took:?}",
            i + 1
        );
        assert_eq!(
            *connected,
            SLOW_CLIENTS,
            "scrape {} ran among them all",
            i + 1
        );
    }
    assert_eq!(scrapes.len(), SCRAPES);
    assert!(
        trickled_for >= Duration::from_secs(4) && bytes >= SLOW_CLIENTS * 20,
        "the slow clients kept at it throughout: {trickled_for:?}, {bytes} bytes"
    );
}
