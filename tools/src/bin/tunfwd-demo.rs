//! `tunfwd-demo`: tunfwd's main job on one machine, with no second host. Run through `./demo`.
//!
//! Builds the namespace testbed, runs a tunfwd relay in each of two namespaces, drives a bulk TCP
//! transfer and a ping latency probe through the tunnel with `tunload`, prints the throughput and
//! both relays' reports, and tears everything down, also on Ctrl-C. `DEMO_SECONDS` sets the
//! transfer's length (5), `TUNFWD_ARGS` adds options to both relays, and `DEMO_UNCHECKED=1` makes
//! the transfer counted rather than checked byte by byte (as in the benches and `scripts/profile`).
//! `DEMO_STREAMS` sets the number of parallel TCP streams (1). `DEMO_THROUGH=vxlan` sends the same
//! traffic through the kernel's own VXLAN tunnel (overlay MTU 1420) instead of tunfwd, so that
//! `scripts/profile` can profile the in-kernel reference under the same load. `DEMO_MSS` clamps
//! the streams' MSS at both ends (`tunload --mss`), to look at small-segment traffic.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tunfwd_testkit::testbed::{self, Host, Process, Testbed, endpoint, parse_json};

/// The VXLAN reference's overlay MTU, the benches' overlay MTU.
const VXLAN_MTU: u32 = 1420;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn main() {
    // Ctrl-C reaches the whole process group: the tools stop, and we fall through to cleanup.
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::SigHandler::Handler(on_interrupt),
        );
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::SigHandler::Handler(on_interrupt),
        );
    }
    if let Err(e) = run() {
        eprintln!("tunfwd-demo: {e}");
        std::process::exit(1);
    }
}

fn sibling(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    me.with_file_name(name)
}

fn check_interrupt() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Err("interrupted; cleaning up".into())
    } else {
        Ok(())
    }
}

/// Pings `to` from A `count` times, `interval_ms` apart, for at most `limit`; returns the RTT
/// percentiles and replies.
fn ping(
    bed: &Testbed,
    to: &str,
    (count, interval_ms): (u32, u32),
    limit: Duration,
) -> Result<String, String> {
    let v = bed
        .tunload_ping(Host::A, to, count, interval_ms, limit)
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "p50 {} µs, p99 {} µs ({} of {} replies)",
        v["rtt_us"]["p50"], v["rtt_us"]["p99"], v["received"], v["sent"]
    ))
}

/// Starts a relay in each namespace with the demo's options; returns them named for the report.
fn start_relays(bed: &Testbed) -> Result<Vec<(&'static str, Process)>, String> {
    let queues = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2)
        .to_string();
    // Extra tunfwd options for both relays, e.g. TUNFWD_ARGS="--no-offload" (used by scripts/profile).
    let extra = std::env::var("TUNFWD_ARGS").unwrap_or_default();
    let extra_a = std::env::var("TUNFWD_ARGS_A").unwrap_or_default();
    let extra_b = std::env::var("TUNFWD_ARGS_B").unwrap_or_default();
    let mut args = Vec::new();
    if !extra
        .split_whitespace()
        .any(|a| a == "--queues" || a.starts_with("--queues="))
    {
        args.extend(["--queues", queues.as_str()]);
    }
    args.extend(extra.split_whitespace());
    let mut args_a = args.clone();
    args_a.extend(extra_a.split_whitespace());
    let mut args_b = args.clone();
    args_b.extend(extra_b.split_whitespace());
    let a = bed
        .start_tunfwd(Host::A, "tunfwd-a", &args_a)
        .map_err(|e| e.to_string())?;
    let b = bed
        .start_tunfwd(Host::B, "tunfwd-b", &args_b)
        .map_err(|e| e.to_string())?;
    println!(
        "tunfwd relays up ({}): tunnel 198.19.0.1 <-> 198.19.0.2\n",
        args.join(" ")
    );
    Ok(vec![("A", a), ("B", b)])
}

fn run() -> Result<(), String> {
    if !testbed::is_root() {
        return Err(
            "the demo creates network namespaces and TUN devices: run it as root (sudo ./demo)"
                .into(),
        );
    }
    let seconds = std::env::var("DEMO_SECONDS").unwrap_or_else(|_| "5".into());
    let streams = std::env::var("DEMO_STREAMS").unwrap_or_else(|_| "1".into());
    if !matches!(streams.parse::<u32>(), Ok(1..=64)) {
        return Err(format!("DEMO_STREAMS must be 1..=64, not {streams:?}"));
    }
    let mss = std::env::var("DEMO_MSS").ok();
    let through_vxlan = match std::env::var("DEMO_THROUGH").as_deref() {
        Err(_) | Ok("tunfwd") => false,
        Ok("vxlan") => true,
        Ok(other) => {
            return Err(format!(
                "DEMO_THROUGH must be tunfwd or vxlan, not {other:?}"
            ));
        }
    };
    let bed = Testbed::new(&sibling("tunfwd"), &sibling("tunload")).map_err(|e| e.to_string())?;
    println!(
        "testbed: namespaces {} and {} joined by a veth (198.18.0.1 <-> 198.18.0.2)",
        bed.namespace(Host::A),
        bed.namespace(Host::B)
    );
    let (far, relays) = if through_vxlan {
        bed.add_vxlan(VXLAN_MTU).map_err(|e| e.to_string())?;
        println!(
            "reference: the kernel's VXLAN tunnel, overlay MTU {VXLAN_MTU}: {} <-> {}\n",
            testbed::A_VXLAN4,
            testbed::B_VXLAN4
        );
        (testbed::B_VXLAN4, Vec::new())
    } else {
        (testbed::B_TUNNEL4, start_relays(&bed)?)
    };
    check_interrupt()?;

    let idle = ping(&bed, far, (50, 10), Duration::from_secs(20))?;
    println!("ping through the tunnel, idle:      {idle}");
    check_interrupt()?;

    let mut sink_args = vec![
        "tcp-sink",
        "--listen",
        "0.0.0.0:5201",
        "--seconds",
        "60",
        "--streams",
        &streams,
    ];
    let mss_args: Vec<&str> = mss.iter().flat_map(|m| ["--mss", m.as_str()]).collect();
    sink_args.extend_from_slice(&mss_args);
    let mut sink = bed
        .tunload_background(Host::B, "tcp-sink", &sink_args)
        .map_err(|e| e.to_string())?;
    let target = endpoint(far, 5201);
    let mut send_args = vec![
        "tcp-send",
        "--to",
        &target,
        "--seconds",
        &seconds,
        "--streams",
        &streams,
    ];
    if std::env::var("DEMO_UNCHECKED").is_ok_and(|v| v == "1") {
        send_args.push("--unchecked");
    }
    send_args.extend_from_slice(&mss_args);
    let cpu_before = testbed::busy_cpu_seconds();
    let mut sender = bed
        .tunload_background(Host::A, "tcp-send", &send_args)
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(500));
    let loaded = ping(&bed, far, (100, 20), Duration::from_secs(30))?;
    let limit = Duration::from_secs(seconds.parse::<u64>().unwrap_or(5) + 30);
    let sent_ok = sender.wait_for(limit).map_err(|e| e.to_string())?.success();
    let cpu = testbed::busy_cpu_seconds() - cpu_before;
    let sink_ok = sink
        .wait_for(Duration::from_secs(20))
        .map_err(|e| e.to_string())?
        .success();
    check_interrupt()?;
    if !sent_ok || !sink_ok {
        return Err(format!(
            "transfer failed: {}{}{}",
            sender.stderr(),
            sink.stdout(),
            sink.stderr()
        ));
    }
    let transfer = parse_json(&sender.stdout()).map_err(|e| e.to_string())?;
    println!("ping through the tunnel, under load: {loaded}");
    let how = if transfer["checked"] == true {
        "every byte verified at the far end"
    } else {
        "counted at the far end, not checked"
    };
    println!(
        "bulk TCP A -> B, {streams} stream(s): {} bytes in {} s = {} Gbit/s, {how}",
        transfer["bytes"], transfer["seconds"], transfer["gbit_per_s"]
    );
    let gb = transfer["bytes"].as_f64().unwrap_or(0.0) / 1e9;
    if gb > 0.0 {
        println!(
            "CPU: {cpu:.1} busy CPU-seconds on the whole machine while sending = {:.2} s/GB\n",
            cpu / gb
        );
    }

    for (name, mut relay) in relays {
        let status = relay
            .terminate(Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        println!("==== relay {name} ({status}) ====\n{}", relay.stdout());
    }
    Ok(())
}
