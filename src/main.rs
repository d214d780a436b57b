//! `tunfwd`: parse arguments, set up the device and sockets, run one worker per queue, report.

use clap::Parser;
use std::net::ToSocketAddrs;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tunfwd::cli::{Args, Config};
use tunfwd::offload::split;
use tunfwd::stats::{Report, WorkerStats};
use tunfwd::sys::{self, link, signal::Signals, socket, tun};
use tunfwd::worker::{self, WorkerConfig, WorkerExit};
use tunfwd::{ring, steer};

fn main() -> ExitCode {
    let args = Args::parse();
    let online: Vec<usize> = core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default();
    let resolve = |host: &str, port: u16| {
        (host, port)
            .to_socket_addrs()
            .map(|found| found.collect())
            .map_err(|e| e.to_string())
    };
    let config = match args.validate(&online, resolve) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tunfwd: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&config) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tunfwd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up and runs until SIGINT/SIGTERM. `Ok(false)` means a worker failed while running.
fn run(config: &Config) -> Result<bool, sys::Error> {
    // Before any thread exists, so that every worker inherits the blocked mask.
    let signals = Signals::block()?;
    // Probe io_uring once up front so that "disabled" is one clear message, not one per queue.
    drop(ring::build(8, 16).map_err(|source| sys::Error::IoUring { queue: 0, source })?);

    let tun_fds = tun::open_queues(&config.device_name, config.queues)?;
    let wanted = config.offloads;
    let mut tun_offloads = tun::negotiate_offloads(
        &config.device_name,
        &tun_fds[0],
        tun::Offloads {
            checksum: false,
            tso4: wanted.tso,
            tso6: wanted.tso,
            uso4: wanted.uso,
            uso6: wanted.uso,
        },
    )?;
    if tun_offloads.tso4 || tun_offloads.tso6 || tun_offloads.uso4 || tun_offloads.uso6 {
        // Bound the segments per super-packet, not only the bytes: with a small inner MSS a
        // 64 KB super-packet is hundreds of segments, more than one split (and one GSO send)
        // takes. A kernel that refuses the cap could hand those over, so it gets no TSO/USO.
        let cap = split::GSO_MAX_SEGMENTS as u32;
        if let Err(e) = link::set_gso_max_segments(&config.device_name, cap) {
            eprintln!("tunfwd: warning: {e}; turning TSO and USO off");
            tun_offloads = tun::negotiate_offloads(
                &config.device_name,
                &tun_fds[0],
                tun::Offloads::default(),
            )?;
        }
    }
    link::set_mtu(&config.device_name, config.mtu)?;
    link::set_tx_queue_len(&config.device_name, config.tx_queue_len)?;
    link::add_addresses(&config.device_name, &config.addresses)?;
    link::set_up(&config.device_name)?;

    let mut listen = config.listen;
    let mut sockets = Vec::with_capacity(config.queues);
    for _ in 0..config.queues {
        let fd = socket::udp_socket(listen)?;
        if listen.port() == 0 {
            // An ephemeral port: the rest of the group must join the port the first one got.
            listen.set_port(socket::local_port(&fd).map_err(|source| sys::Error::Bind {
                address: listen,
                source,
            })?);
        }
        sockets.push(fd);
    }
    let mut offloads = worker::Offloads {
        tso: tun_offloads.tso4 && tun_offloads.tso6,
        uso: tun_offloads.uso4 && tun_offloads.uso6,
        udp_gso: wanted.udp_gso && sockets.iter().all(socket::supports_gso),
        udp_gro: wanted.udp_gro,
    };
    if offloads.udp_gro {
        offloads.udp_gro = sockets.iter().all(socket::enable_gro);
    }
    // Super-packets sized to fit one UDP GSO send each. Only an optimization: a kernel that
    // refuses gets a warning, and super-packets then cost two sends.
    let mut gso_cap = None;
    if (offloads.tso || offloads.uso)
        && offloads.udp_gso
        && let Some(bytes) = split::tun_gso_max_size(config.mtu as usize)
    {
        match link::set_gso_max_size(&config.device_name, bytes) {
            Ok(()) => gso_cap = Some(bytes),
            Err(e) => eprintln!("tunfwd: warning: {e}"),
        }
    }
    if config.queues > 1 {
        socket::attach_reuseport_program(
            &sockets[0],
            &steer::reuseport_program(config.queues as u32),
        )?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let interval = Duration::from_secs(config.stats_interval_secs);
    let (snapshot_tx, snapshot_rx) = mpsc::channel::<WorkerStats>();
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::with_capacity(config.queues);
    for (queue, (tun, socket)) in tun_fds.into_iter().zip(sockets).enumerate() {
        let worker_config = WorkerConfig {
            queue,
            cpu: config.worker_cpus.as_ref().map(|cpus| cpus[queue]),
            tun,
            socket,
            peer: config.peer,
            mtu: config.mtu,
            ring_depth: config.ring_depth,
            buffer_memory: config.buffer_memory,
            offloads,
            stop: stop.clone(),
            snapshots: (!interval.is_zero()).then(|| (interval, snapshot_tx.clone())),
        };
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("tunfwd-q{queue}"))
            .spawn(move || worker::run(worker_config, ready))
            .expect("spawning a worker thread");
        handles.push(handle);
    }
    drop(ready_tx);
    drop(snapshot_tx);

    if let Err(e) = worker::await_ready(&ready_rx, config.queues) {
        stop.store(true, Ordering::Relaxed);
        for handle in handles {
            let _ = handle.join();
        }
        return Err(e);
    }
    eprintln!(
        "tunfwd: {} up: {} queue(s), MTU {}, listening on {}, peer {}, offloads: {}{}",
        config.device_name,
        config.queues,
        config.mtu,
        listen,
        config.peer,
        describe(wanted, offloads),
        gso_cap.map_or(String::new(), |b| format!(
            "; super-packets up to {b} bytes (one GSO send each)"
        ))
    );

    let started = Instant::now();
    let mut latest: Vec<Option<WorkerStats>> = vec![None; config.queues];
    let mut next_report = started + interval;
    loop {
        let wait = if interval.is_zero() {
            Duration::from_millis(200)
        } else {
            Duration::from_millis(100)
        };
        if signals.wait(wait).is_some() || stop.load(Ordering::Relaxed) {
            break;
        }
        while let Ok(snapshot) = snapshot_rx.try_recv() {
            let queue = snapshot.queue;
            latest[queue] = Some(snapshot);
        }
        if !interval.is_zero() && Instant::now() >= next_report {
            next_report += interval;
            let report = Report::new(
                started.elapsed(),
                latest.iter().flatten().cloned().collect(),
            );
            publish(&report, config.stats_json.as_deref());
        }
    }

    stop.store(true, Ordering::Relaxed);
    let mut all_ok = true;
    let mut finals = Vec::with_capacity(config.queues);
    for handle in handles {
        match handle.join() {
            Ok(Some(WorkerExit { stats, error })) => {
                if let Some(e) = error {
                    eprintln!("tunfwd: queue {} failed: {e}", stats.queue);
                    all_ok = false;
                }
                finals.push(stats);
            }
            Ok(None) => all_ok = false,
            Err(_) => {
                eprintln!("tunfwd: a worker panicked");
                all_ok = false;
            }
        }
    }
    publish(
        &Report::new(started.elapsed(), finals),
        config.stats_json.as_deref(),
    );
    Ok(all_ok)
}

/// One line on which offloads are on, and why any that were asked for are off.
fn describe(wanted: tunfwd::cli::OffloadSwitches, got: worker::Offloads) -> String {
    let one = |name: &str, asked: bool, on: bool| match (asked, on) {
        (_, true) => format!("{name} on"),
        (true, false) => format!("{name} off (kernel refused)"),
        (false, false) => format!("{name} off"),
    };
    [
        one("tso", wanted.tso, got.tso),
        one("uso", wanted.uso, got.uso),
        one("udp-gso", wanted.udp_gso, got.udp_gso),
        one("udp-gro", wanted.udp_gro, got.udp_gro),
    ]
    .join(", ")
}

/// Prints the report and, if asked, writes it as JSON (atomically: a temporary file, then rename).
fn publish(report: &Report, json_path: Option<&Path>) {
    println!("{}", report.to_table());
    if let Some(path) = json_path {
        let text = report.to_json().to_string();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let result = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            eprintln!("tunfwd: cannot write stats to {}: {e}", path.display());
            let _ = std::fs::remove_file(&tmp);
        }
    }
}
