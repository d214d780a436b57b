//! How tunfwd picks its I/O engine from what the host allows, with the real binary: on a host
//! that forbids io_uring, `auto` falls back to `poll` and still carries traffic, and the io_uring
//! engines, forced, refuse to start; where io_uring is allowed, `auto` runs `uring`. Also how an
//! unknown engine name is refused.
//!
//! `kernel.io_uring_disabled` is one setting for the whole machine, not one per namespace, so the
//! test that sets it lives in this test binary of its own: cargo runs test binaries one after
//! another, so no other binary's relays start while io_uring is off. Within this binary, every
//! test that starts tunfwd past its option checks holds [`IO_URING`], so none of them runs while
//! another has io_uring turned off. The setting is put back on every path, panics included.
//!
//! The namespace tests need root; without it they fail at once, saying so.

use serde_json::Value;
use std::fs;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tunfwd_testkit::testbed::{self, Host, Process, Testbed, engine_lines};

/// Held by every test that starts tunfwd far enough to probe io_uring.
static IO_URING: Mutex<()> = Mutex::new(());

/// The switch for io_uring (Linux 6.6): 0 allows it, 1 allows it to root and one group, 2 forbids
/// it to every process, root included (`io_uring_setup` fails with EPERM).
const IO_URING_DISABLED: &str = "/proc/sys/kernel/io_uring_disabled";

fn hold_io_uring() -> MutexGuard<'static, ()> {
    IO_URING.lock().unwrap_or_else(|e| e.into_inner())
}

fn testbed() -> Testbed {
    if !testbed::is_root() {
        panic!(
            "the engine tests need root (namespaces, veth, TUN, kernel.io_uring_disabled): run \
             them as root, e.g. `sudo -E cargo test --test engines`"
        );
    }
    Testbed::new(
        Path::new(env!("CARGO_BIN_EXE_tunfwd")),
        &tunfwd_testkit::binaries::tool("tunload"),
    )
    .expect("building the namespace testbed")
}

/// `kernel.io_uring_disabled=2` while it lives. Dropping it, on a panic too, writes back the
/// value read before.
struct IoUringDisabled {
    previous: String,
}

impl IoUringDisabled {
    fn new() -> IoUringDisabled {
        let previous = fs::read_to_string(IO_URING_DISABLED)
            .unwrap_or_else(|e| panic!("reading {IO_URING_DISABLED} (Linux 6.6): {e}"));
        // Made before the write, so that a failed write still puts the old value back.
        let disabled = IoUringDisabled {
            previous: previous.trim().to_string(),
        };
        fs::write(IO_URING_DISABLED, "2")
            .unwrap_or_else(|e| panic!("writing 2 to {IO_URING_DISABLED}: {e}"));
        disabled
    }
}

impl Drop for IoUringDisabled {
    fn drop(&mut self) {
        if let Err(e) = fs::write(IO_URING_DISABLED, &self.previous) {
            eprintln!(
                "cannot put {IO_URING_DISABLED} back to {}: {e}; io_uring stays disabled",
                self.previous
            );
        }
    }
}

/// tunfwd on `host` with `--queues 2`, a stats file `<name>.json` and `extra`.
fn relay(bed: &Testbed, host: Host, name: &str, extra: &[&str]) -> Process {
    let json = bed.path(&format!("{name}.json"));
    let mut args = vec!["--queues", "2", "--stats-json", json.to_str().unwrap()];
    args.extend_from_slice(extra);
    bed.start_tunfwd(host, name, &args)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Stops a relay with SIGTERM and returns the report it wrote to `<name>.json`.
fn stop(bed: &Testbed, mut relay: Process, name: &str) -> Value {
    relay
        .stop_for_report(&bed.path(&format!("{name}.json")))
        .unwrap_or_else(|e| panic!("stopping {name}: {e}"))
}

fn total(report: &Value, field: &str) -> u64 {
    testbed::report_sum(&report["queues"], field)
}

/// On a host where `kernel.io_uring_disabled=2`, as in a container whose seccomp profile refuses
/// io_uring: both relays, left to choose, run `poll` and say why, hold no io_uring instance, and
/// carry verified TCP both ways (IPv4 one way, IPv6 the other) while io_uring stays off; forced
/// to `uring` or `uring-compat`, tunfwd exits 1 before setting anything up, saying why.
#[test]
fn with_io_uring_disabled_auto_runs_poll_and_the_io_uring_engines_refuse_to_start() {
    let _io_uring = hold_io_uring();
    let bed = testbed();
    let disabled = IoUringDisabled::new();
    let a = relay(&bed, Host::A, "tunfwd-a", &[]);
    let b = relay(&bed, Host::B, "tunfwd-b", &[]);
    for (name, relay) in [("A", &a), ("B", &b)] {
        let stderr = relay.stderr();
        let lines = engine_lines(&stderr);
        assert_eq!(lines.len(), 1, "{name}: one engine line: {stderr}");
        for needed in [
            "tunfwd: engine poll: ",
            "not uring: io_uring is unavailable (",
            "not uring-compat: io_uring is unavailable (",
        ] {
            assert!(lines[0].contains(needed), "{name}: no {needed:?}: {stderr}");
        }
        assert_eq!(relay.io_uring_instances(), 0, "{name}: {stderr}");
    }
    let tunfwd = Path::new(env!("CARGO_BIN_EXE_tunfwd"));
    for engine in ["uring", "uring-compat"] {
        let name = format!("forced-{engine}");
        // Another device and port than the relay on A, should it get that far.
        let args: Vec<String> = [
            "--peer",
            &testbed::endpoint(testbed::B_UNDERLAY, testbed::TUNNEL_PORT),
            "--listen",
            "0.0.0.0:55556",
            "--dev",
            "tunfwd9",
            "--engine",
            engine,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut forced = bed.spawn(Host::A, &name, tunfwd, &args).unwrap();
        let status = forced
            .wait_for(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let stderr = forced.stderr();
        assert_eq!(status.code(), Some(1), "{name}: {stderr}");
        let why = format!("tunfwd: --engine {engine} cannot run here: io_uring is unavailable (");
        assert!(stderr.starts_with(&why), "{name}: {stderr}");
        assert!(engine_lines(&stderr).is_empty(), "{name}: {stderr}");
    }
    let bytes = 32 << 20;
    for (from, to_host, to_addr) in [
        (Host::A, Host::B, testbed::B_TUNNEL4),
        (Host::B, Host::A, testbed::A_TUNNEL6),
    ] {
        let sent = bed
            .verified_transfer(from, to_host, to_addr, bytes, 1, &[])
            .unwrap_or_else(|e| panic!("poll relays, io_uring disabled: {e}"));
        eprintln!("poll to {to_addr}: {sent}");
    }
    let (report_a, report_b) = (stop(&bed, a, "tunfwd-a"), stop(&bed, b, "tunfwd-b"));
    // Each way, every byte went through both relays.
    for (name, report) in [("A", &report_a), ("B", &report_b)] {
        for field in ["udp_tx_bytes", "tun_tx_bytes"] {
            assert!(total(report, field) > bytes, "{name} {field}: {report}");
        }
    }
    let previous = disabled.previous.clone();
    drop(disabled);
    let now = fs::read_to_string(IO_URING_DISABLED).unwrap();
    assert_eq!(now.trim(), previous, "{IO_URING_DISABLED} was not put back");
}

/// Where io_uring is allowed, on a kernel with multishot reads (Linux 6.7; CI runs 6.18), `auto`
/// runs the fastest engine, `uring`, and says the kernel has everything it needs.
#[test]
fn with_io_uring_allowed_auto_runs_uring() {
    let _io_uring = hold_io_uring();
    let bed = testbed();
    let a = relay(&bed, Host::A, "tunfwd-a", &[]);
    let b = relay(&bed, Host::B, "tunfwd-b", &[]);
    for (name, relay) in [("A", &a), ("B", &b)] {
        let stderr = relay.stderr();
        assert_eq!(
            engine_lines(&stderr),
            ["tunfwd: engine uring: the kernel has everything it needs"],
            "{name} (is kernel.io_uring_disabled 0?): {stderr}"
        );
        assert!(relay.io_uring_instances() > 0, "{name}: {stderr}");
    }
    let pinged = bed
        .tunload_ping(Host::A, testbed::B_TUNNEL4, 3, 20, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("ping over uring relays: {e}"));
    assert_eq!(pinged["received"], 3, "{pinged}");
    stop(&bed, a, "tunfwd-a");
    stop(&bed, b, "tunfwd-b");
}

/// An engine name tunfwd does not know is a usage error: exit 2 and one line naming the option
/// and the names it takes, before anything is probed or set up (so no root is needed).
#[test]
fn an_unknown_engine_exits_2_naming_the_option_and_the_engines() {
    let (code, stderr) = testbed::run_to_exit(
        Path::new(env!("CARGO_BIN_EXE_tunfwd")),
        &["--peer", "198.18.0.2:1", "--engine", "bogus"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("tunfwd: --engine: "), "{stderr}");
    assert!(
        stderr.contains("'bogus'") && stderr.contains("auto, uring, uring-compat, poll"),
        "{stderr}"
    );
}
