//! What `tunfwd` does once its options are valid: claims the device and the port, sets up the
//! TUN queues, the link and one UDP socket per queue, starts one worker per queue, and then, on
//! the main thread, merges the workers' stats snapshots, prints and publishes them, answers the
//! service manager, follows the peer's name, and stops everything on SIGINT or SIGTERM. Workers
//! never wait on it.

use crate::cli::{Config, Entropy};
use crate::metrics::{self, Published};
use crate::notify::{self, Notifier};
use crate::offload::icmp::SharedBucket;
use crate::offload::split;
use crate::operate::{PeerLookup, Printer, TunQueueDrops, describe, write_json};
use crate::relay::entropy::{self, SourcePorts};
use crate::relay::plpmtud::{Limits, SharedPath};
use crate::shared::Shared;
use crate::stats::{Report, WorkerStats};
use crate::sys::{self, link, privileges, random, signal::Signals, socket, tun};
use crate::wire::control;
use crate::worker::{self, WorkerConfig, WorkerExit};
use crate::{engine, steer};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a starting relay waits for a killed one's device and sockets to be released by the
/// kernel (tens of ms here; see `sys::owner`), before it gives up and says what is left.
const CLAIM_WAIT: Duration = Duration::from_secs(10);

/// How fresh `--metrics` keeps the counters: workers send a snapshot at least this often.
const METRICS_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);

/// How often workers send snapshots: at the print interval, and at least every second when
/// metrics are served. Zero means never (only the final report at exit).
fn snapshot_interval(print: Duration, metrics: bool) -> Duration {
    match (metrics, print.is_zero()) {
        (false, _) => print,
        (true, true) => METRICS_SNAPSHOT_INTERVAL,
        (true, false) => print.min(METRICS_SNAPSHOT_INTERVAL),
    }
}

/// Sets up the device, the sockets and one worker per queue as `config` says, and runs until
/// SIGINT or SIGTERM: then stops the workers, prints the final report (and writes it as JSON when
/// asked) and returns. `Ok(false)` means a worker failed while running; an error, that setup
/// failed, with what to do about it. Tells the service manager (`NOTIFY_SOCKET`) when it is ready,
/// how it is doing, and when it stops.
pub fn run(config: &Config) -> Result<bool, sys::Error> {
    let notifier = &mut Notifier::from_env();
    // Before any thread exists, so that every worker inherits the blocked mask.
    let signals = Signals::block()?;
    // WireGuard mode: the device, configured from --config, before the port it names is bound.
    let mut prepared = config
        .wireguard
        .as_ref()
        .map(crate::wireguard::prepare)
        .transpose()?;
    let mut listen = config.listen;
    if let Some(prepared) = &prepared {
        listen.set_port(prepared.device.listen_port());
    }
    // The device and the port are this relay's alone: a second relay on either exits naming the
    // first, and a restart waits (at most `CLAIM_WAIT`) for a killed relay's leftovers to go
    // rather than join its reuseport group or its queues. Held until exit.
    // Outer flow entropy: the ports `--srcport` names are claimed like the listen port (the
    // relay's sockets join them with SO_REUSEPORT as well); ephemeral ones are found free below.
    let named_ports = match config.entropy {
        Entropy::Range(min, max) => entropy::ports_in_range((min, max), config.queues),
        Entropy::Off | Entropy::Ephemeral => Vec::new(),
    };
    let ownership = sys::owner::claim(&config.device_name, listen, &named_ports, CLAIM_WAIT)?;
    if !ownership.waited().is_zero() {
        eprintln!(
            "tunfwd: waited {:.0?} for the previous relay's device and sockets to go",
            ownership.waited()
        );
    }
    // Bound first: a bad address is one clear message before any device exists, and binding
    // happens while still privileged (a port below 1024 with --user).
    let metrics_listener = match config.metrics {
        Some(address) => Some(
            metrics::bind(address)
                .map_err(|source| sys::Error::MetricsListen { address, source })?,
        ),
        None => None,
    };
    // Probe io_uring once up front so that "disabled" is one clear message, not one per queue.
    // The engine, from what this kernel and this process's seccomp profile allow; a forced one
    // that cannot run here is an error before anything is set up.
    let choice =
        engine::choose(config.engine, &worker::probe::probe()).map_err(sys::Error::Engine)?;
    eprintln!("tunfwd: engine {}: {}", choice.engine, choice.reason);

    let tun_fds = tun::open_queues(&config.device_name, config.queues)?;
    // Before the link is up, so that every drop from then on is counted as tunfwd's.
    let mut tun_drops = TunQueueDrops::start(&config.device_name);
    let wanted = config.offloads;
    let mut offloads = tun::negotiate_offloads(&config.device_name, &tun_fds[0], wanted)?;
    if offloads.tun_offloads() {
        // Bound the segments per super-packet, not only the bytes: at the kernel's smallest
        // MSS (88) a 64 KB super-packet is 862 segments, more than one split takes. A kernel
        // that refuses the cap could hand those over, so it gets no TSO/USO.
        let cap = worker::MAX_SPLIT_SEGMENTS as u32;
        if let Err(e) = link::set_gso_max_segments(&config.device_name, cap) {
            eprintln!("tunfwd: warning: {e}; turning TSO and USO off");
            offloads = tun::negotiate_offloads(
                &config.device_name,
                &tun_fds[0],
                worker::Offloads {
                    tso: false,
                    uso: false,
                    ..offloads
                },
            )?;
        }
    }
    // One RTM_NEWLINK for the MTU, the queue length and IFF_UP, then the addresses: a TUN is
    // point-to-point without ARP, so an IPv6 address on a link that is up is usable at once
    // (no duplicate address detection, `addrconf_dad_begin` in net/ipv6/addrconf.c).
    link::configure(
        &config.device_name,
        link::LinkChange {
            mtu: Some(config.mtu),
            tx_queue_len: Some(config.tx_queue_len),
            up: true,
            ..link::LinkChange::default()
        },
    )?;
    link::add_addresses(&config.device_name, &config.addresses)?;

    if listen.port() == 0 {
        // An ephemeral port: one nobody holds, which the whole group joins (a reuseport bind of
        // port 0 may be handed a port another group of this user's holds: `socket::free_port`),
        // and none `--srcport` names (claimed, but not bound yet).
        let port = free_port_besides(listen, &named_ports)?.ok_or_else(|| sys::Error::Bind {
            address: listen,
            source: std::io::Error::from_raw_os_error(libc::EADDRINUSE),
        })?;
        listen.set_port(port);
    }
    let mut sockets = Vec::with_capacity(config.queues);
    for _ in 0..config.queues {
        let fd = socket::udp_socket(listen, config.socket_buffer)?;
        set_receive_options(&fd, listen, config)?;
        sockets.push(fd);
    }
    // Outer flow entropy: the relay's extra ports, and every worker's own socket on each
    // (`relay::entropy`).
    let wanted_ports = match config.entropy {
        Entropy::Off => Vec::new(),
        Entropy::Ephemeral => vec![0; entropy::tuples(config.queues)],
        Entropy::Range(..) => named_ports.clone(),
    };
    let mut extra_sockets: Vec<Vec<std::os::fd::OwnedFd>> =
        (0..config.queues).map(|_| Vec::new()).collect();
    let mut own_ports = Vec::with_capacity(wanted_ports.len());
    for port in wanted_ports {
        let Some((port, fds)) = extra_port_sockets(listen, port, &named_ports, config)? else {
            eprintln!(
                "tunfwd: warning: no free ephemeral port left for outer flow entropy: sending \
                 from {} extra port(s), not {} (net.ipv4.ip_local_port_range, or --srcport)",
                own_ports.len(),
                entropy::tuples(config.queues)
            );
            break;
        };
        for (sockets, fd) in extra_sockets.iter_mut().zip(fds) {
            sockets.push(fd);
        }
        own_ports.push(port);
    }
    // Pointed at the peer; with no route to it yet, the workers try again every second and the
    // extra ports carry nothing meanwhile (their probes fail, so no tuple is confirmed).
    let refusals: Vec<std::io::Error> = extra_sockets
        .iter()
        .flatten()
        .filter_map(|fd| socket::connect(fd, config.peer).err())
        .collect();
    if let Some(e) = refusals.first() {
        eprintln!(
            "tunfwd: warning: cannot point the extra source ports at {} yet ({e}): they carry \
             nothing until they can (tried again every second)",
            config.peer
        );
    }
    let session = random::nonzero_u64().map_err(|source| sys::Error::Socket {
        address: listen,
        source,
    })?;
    // The cookie the peer's advertisements must echo to take ports away (`relay::entropy`).
    let cookie = random::nonzero_u64().map_err(|source| sys::Error::Socket {
        address: listen,
        source,
    })?;
    let source_ports = Arc::new(SourcePorts::new(&own_ports, session, cookie));
    offloads.udp_gso = wanted.udp_gso
        && sockets.iter().all(socket::supports_gso)
        && extra_sockets.iter().flatten().all(socket::supports_gso);
    if offloads.udp_gro {
        offloads.udp_gro = sockets.iter().all(socket::enable_gro);
    }
    // Super-packets sized to fit one UDP GSO send each. Only an optimization: a kernel that
    // refuses gets a warning, and super-packets then cost two sends.
    let mut gso_cap = None;
    // WireGuard's datagrams are longer than the segments they seal: fewer fit one send.
    let growth = if prepared.is_some() {
        crate::relay::wireguard::OVERHEAD
    } else {
        0
    };
    if (offloads.tso || offloads.uso)
        && offloads.udp_gso
        && let Some(bytes) = split::tun_gso_max_size_growing(config.mtu as usize, growth)
    {
        match link::set_gso_max_size(&config.device_name, bytes) {
            Ok(()) => gso_cap = Some(bytes),
            Err(e) => eprintln!("tunfwd: warning: {e}"),
        }
    }
    // After every worker's socket, so that they come first in the reuseport group and the
    // steering program never picks one of these (see `socket::fragmenting_socket`).
    let mut fragmenting: Vec<Option<std::os::fd::OwnedFd>> = Vec::with_capacity(config.queues);
    // WireGuard peers do not take outer fragments of its datagrams any better than whole ones;
    // that mode sends whole datagrams only.
    for queue in 0..config.queues {
        if prepared.is_some() {
            fragmenting.push(None);
            continue;
        }
        fragmenting.push(
            socket::fragmenting_socket(listen, config.socket_buffer)
                .inspect_err(|e| {
                    eprintln!(
                        "tunfwd: queue {queue}: no socket for outer fragmentation ({e}); inner \
                         packets that would need it are dropped as too_big"
                    )
                })
                .ok(),
        );
    }
    // Always: with one queue too, the group has the fragmenting socket in it, which the
    // kernel's own reuseport hash could pick.
    let program = if prepared.is_some() {
        crate::wireguard::steering_program(config.queues as u32)
    } else {
        steer::reuseport_program(config.queues as u32)
    };
    socket::attach_reuseport_program(&sockets[0], &program)?;
    // WireGuard mode: the control thread, with its socket after the workers' in the group, and
    // the API socket, served before the relay says it is ready.
    let wireguard = match prepared.take() {
        Some(prepared) => {
            let sending = socket::sending_socket(listen)?;
            Some(crate::wireguard::start(
                prepared,
                &config.device_name,
                sending,
                copies(&sockets, listen)?,
                listen.port(),
            )?)
        }
        None => None,
    };
    let family = crate::wire::OuterFamily::of(config.peer);
    let largest = config.mtu as usize + family.overhead();
    let shared_path = Arc::new(SharedPath::new(largest));
    let limits = Limits {
        largest,
        floor: config.pmtu_floor as usize,
        smallest: family.smallest_path_mtu(),
        hello: family.overhead() + control::HEADER_LEN,
    };
    let reply_budget = Arc::new(SharedBucket::new(
        Instant::now(),
        worker::REPLIES_PER_SECOND,
        worker::REPLY_BURST,
    ));

    let mut stop = Arc::new(AtomicBool::new(false));
    let print_interval = Duration::from_secs(config.stats_interval_secs);
    let snapshots = snapshot_interval(print_interval, config.metrics.is_some());
    let shared = Arc::new(Shared::new(config.queues, config.peer));
    // WireGuard mode: copies of the TUN queues, to start the workers again on a new port.
    let kept_tun = match wireguard {
        Some(_) => tun_fds
            .iter()
            .enumerate()
            .map(|(queue, fd)| {
                fd.try_clone().map_err(|source| sys::Error::CreateQueue {
                    device: config.device_name.clone(),
                    queue,
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    // Starts one worker per queue on these fds, and waits for each to report itself ready.
    let spawn_workers = |stop: &Arc<AtomicBool>,
                         fds: Vec<QueueFds>|
     -> Result<Vec<JoinHandle<Option<WorkerExit>>>, sys::Error> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut handles = Vec::with_capacity(config.queues);
        for (queue, fds) in fds.into_iter().enumerate() {
            let worker_config = WorkerConfig {
                queue,
                cpu: config.worker_cpus.as_ref().map(|cpus| cpus[queue]),
                engine: choice.engine,
                busy_poll: config.busy_poll,
                tun: fds.tun,
                socket: fds.socket,
                fragmenting: fds.fragmenting,
                extra_sockets: fds.extra_sockets,
                source_ports: source_ports.clone(),
                workers: config.queues,
                // The relay's one advertiser, beside its path MTU machine; none with `--entropy
                // off`, which sends as before outer entropy existed (it still takes the peer's).
                // WireGuard mode has entropy off (`cli`): its peers roam to each datagram's
                // source.
                advertise: queue == 0 && config.entropy != Entropy::Off,
                tuple_limits: Some(limits),
                peer: config.peer,
                shared_path: shared_path.clone(),
                // One machine for the relay: every worker's datagrams share one 4-tuple, so one
                // path. None in WireGuard mode, whose peers do not answer its probes.
                path_machine: (queue == 0 && wireguard.is_none()).then_some(limits),
                reply_budget: reply_budget.clone(),
                mtu: config.mtu,
                ring_depth: config.ring_depth,
                buffer_memory: config.buffer_memory,
                offloads,
                marking: config.marking,
                aqm: config.aqm,
                stop: stop.clone(),
                snapshot_every: (!snapshots.is_zero()).then_some(snapshots),
                shared: shared.clone(),
                wireguard: wireguard
                    .as_ref()
                    .map(|(_, links)| worker::WorkerWireguard {
                        data_plane: links.data_plane.clone(),
                        to_control: links.to_control.clone(),
                        pending: links.pending.clone(),
                        control_counters: (queue == 0).then(|| links.counters.clone()),
                        epoch: links.epoch,
                    }),
            };
            let ready = ready_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tunfwd-q{queue}"))
                .spawn(move || worker::run(worker_config, ready))
                .expect("spawning a worker thread");
            handles.push(handle);
        }
        drop(ready_tx);
        if let Err(e) = worker::await_ready(&ready_rx, config.queues) {
            stop_after_setup_failure(stop, handles);
            return Err(e);
        }
        Ok(handles)
    };
    let queues = tun_fds
        .into_iter()
        .zip(sockets)
        .zip(fragmenting)
        .zip(extra_sockets)
        .map(|(((tun, socket), fragmenting), extra_sockets)| QueueFds {
            tun,
            socket,
            fragmenting,
            extra_sockets,
        })
        .collect();
    let mut handles = spawn_workers(&stop, queues)?;
    // WireGuard mode: what workers stopped for a new port had counted.
    let mut carried: Vec<WorkerStats> = (0..config.queues).map(WorkerStats::new).collect();

    let started = Instant::now();
    // Every queue from the start, zeros until its first snapshot.
    let mut latest: Vec<WorkerStats> = (0..config.queues).map(WorkerStats::new).collect();
    if let Err(e) = drop_privileges_and_check_output(config, &latest) {
        stop_after_setup_failure(&stop, handles);
        return Err(e);
    }
    let up = match &wireguard {
        Some(_) => format!(
            "{} up: WireGuard, {} queue(s), MTU {}, listening on {}, API socket {}",
            config.device_name,
            config.queues,
            config.mtu,
            listen,
            crate::wireguard::socket_path(&config.device_name).display()
        ),
        None => format!(
            "{} up: {} queue(s), MTU {}, listening on {}, peer {}, {}",
            config.device_name,
            config.queues,
            config.mtu,
            listen,
            config.peer,
            describe_entropy(source_ports.own())
        ),
    };
    eprintln!(
        "tunfwd: {up}, offloads: {}{}; {}",
        describe(wanted, offloads),
        gso_cap.map_or(String::new(), |b| format!(
            "; super-packets up to {b} bytes (one GSO send each)"
        )),
        crate::relay::aqm::describe(config.aqm)
    );

    let published = metrics_listener.map(|listener| {
        let published = Published::new(Report::new(Duration::ZERO, latest.clone()));
        metrics::spawn_server(listener, published.clone()).expect("spawning the metrics thread");
        published
    });
    notifier.ready(&up);

    let printer = Printer::spawn();
    let mut peer = PeerLookup::new(config.peer_name.clone(), config.peer_refresh, config.peer);
    let (mut beats_seen, mut stalled) = (Vec::new(), Vec::new());
    let mut next_report = started + print_interval;
    let idle_wait = if snapshots.is_zero() {
        Duration::from_millis(200)
    } else {
        Duration::from_millis(100)
    };
    loop {
        let mut wait = idle_wait;
        if let Some(due) = notifier.watchdog_due() {
            wait = wait.min(due.saturating_duration_since(Instant::now()));
        }
        if signals.wait(wait).is_some() || stop.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        // WATCHDOG=1 says the workers turn, not only this loop: each must have beaten since.
        notifier.watchdog(now, || {
            let alive = shared.all_beat_since(&mut beats_seen, &mut stalled);
            if !alive {
                eprintln!(
                    "tunfwd: queue(s) {stalled:?} did not turn since the last watchdog \
                     ping; withholding WATCHDOG=1"
                );
            }
            alive
        });
        peer.poll(now, &shared);
        // WireGuard mode: `wg set ... listen-port P` moves the relay to port P.
        // Not onto a port anything holds: the new sockets set SO_REUSEPORT, and would join a
        // group of the same user's there without a word (its first socket keeps a share of the
        // datagrams, or all of them with a steering program of its own).
        if let Some((control, _)) = &wireguard
            && let Some(port) = control.rebind_wanted()
            && socket::plain_bind(socket::with_port(listen, port))
                .inspect_err(|e| {
                    eprintln!(
                        "tunfwd: cannot move to port {port}: {e}; staying on port {}",
                        listen.port()
                    )
                })
                .is_ok()
        {
            let (_, finals) = stop_and_join(&stop, std::mem::take(&mut handles));
            for stats in finals {
                carried[stats.queue].absorb(&stats);
            }
            latest = (0..config.queues).map(WorkerStats::new).collect();
            stop = Arc::new(AtomicBool::new(false));
            listen.set_port(port);
            let restarted =
                rebind_wireguard(config, listen, offloads, &kept_tun).and_then(|(fds, sending)| {
                    let workers = fds.iter().map(|q| &q.socket).collect::<Vec<_>>();
                    control.replace_sockets(sending, copies(&workers, listen)?, port);
                    spawn_workers(&stop, fds)
                });
            match restarted {
                Ok(started) => {
                    handles = started;
                    eprintln!("tunfwd: {} moved to port {port}", config.device_name);
                }
                Err(e) => {
                    eprintln!("tunfwd: cannot move to port {port}: {e}");
                    break;
                }
            }
        }
        let mut fresh = false;
        for (queue, slot) in latest.iter_mut().enumerate() {
            if let Some(mut snapshot) = shared.take_snapshot(queue) {
                snapshot.absorb(&carried[queue]);
                *slot = snapshot;
                fresh = true;
            }
        }
        if fresh && (published.is_some() || notifier.enabled()) {
            let report = Report::new(started.elapsed(), latest.clone())
                .with_tun_queue_drops(tun_drops.read());
            notifier.status(now, &notify::status_line(&report));
            if let Some(published) = &published {
                published.publish(report);
            }
        }
        if !print_interval.is_zero() && now >= next_report {
            next_report += print_interval;
            let report = Report::new(started.elapsed(), latest.clone())
                .with_tun_queue_drops(tun_drops.read());
            publish(&report, config.stats_json.as_deref(), &printer);
        }
    }

    notifier.stopping(&format!("{} stopping", config.device_name));
    // Read while the queues are open: a device tunfwd created goes with its last queue. (A
    // persistent one stays, but what it drops once no worker reads is not tunfwd's to report.)
    let final_tun_drops = tun_drops.read();
    let (all_ok, mut finals) = stop_and_join(&stop, handles);
    for stats in &mut finals {
        stats.absorb(&carried[stats.queue]);
    }
    // Stops the control thread and removes the API socket.
    drop(wireguard);
    publish(
        &Report::new(started.elapsed(), finals).with_tun_queue_drops(final_tun_drops),
        config.stats_json.as_deref(),
        &printer,
    );
    printer.finish(FINAL_PRINT_WAIT);
    Ok(all_ok)
}

/// The startup line's words on outer entropy: the extra source ports, in use once the peer
/// acknowledges them.
fn describe_entropy(ports: &[u16]) -> String {
    if ports.is_empty() {
        return "outer entropy off (every datagram from the listen port)".to_string();
    }
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    let list = if sorted.len() <= 64 {
        format!("{sorted:?}")
    } else {
        format!("{}..={}", sorted[0], sorted[sorted.len() - 1])
    };
    format!(
        "outer entropy: {} extra source port(s) {list}, used once the peer acknowledges them",
        ports.len()
    )
}

/// Tries for a free port for an extra tuple when another program takes the one found first.
const FREE_PORT_TRIES: usize = 8;

/// Every worker's socket on the extra port `wanted` of `listen`'s address (one `--srcport`
/// names, which `run` claimed), or on a free one for `wanted` 0 ([`socket::free_port`]); the
/// port, with the sockets in the workers' order, once no other socket shares it. `None` when
/// the kernel has no free ephemeral port left, or others took [`FREE_PORT_TRIES`] of them first.
fn extra_port_sockets(
    listen: SocketAddr,
    wanted: u16,
    named: &[u16],
    config: &Config,
) -> Result<Option<(u16, Vec<OwnedFd>)>, sys::Error> {
    for _ in 0..FREE_PORT_TRIES {
        let port = match wanted {
            0 => match free_port_besides(listen, named)? {
                Some(port) => port,
                None => return Ok(None),
            },
            named => named,
        };
        let local = socket::with_port(listen, port);
        let mut fds = Vec::with_capacity(config.queues);
        for _ in 0..config.queues {
            match socket::extra_socket(local, config.socket_buffer) {
                Ok(fd) => fds.push(fd),
                // Taken since it was found free: another, if it was the kernel's pick.
                Err(e) if address_in_use(&e) && wanted == 0 => break,
                Err(e) => return Err(e),
            }
        }
        if fds.len() < config.queues {
            continue;
        }
        // Bound with SO_REUSEPORT, so a same-user socket that took the port in between
        // (after `free_port`, or after `owner::claim` test-bound a `--srcport` one) shares it
        // without a conflict: then it is not this relay's alone.
        let strangers = sys::owner::strangers_on(local, &fds);
        if strangers.is_empty() {
            return Ok(Some((port, fds)));
        }
        if wanted != 0 {
            return Err(sys::Error::PortInUse {
                address: local,
                holders: sys::owner::socket_holders(&strangers),
                source: std::io::Error::from_raw_os_error(libc::EADDRINUSE),
            });
        }
    }
    Ok(None)
}

fn address_in_use(e: &sys::Error) -> bool {
    matches!(e, sys::Error::Bind { source, .. } if source.raw_os_error() == Some(libc::EADDRINUSE))
}

/// A free port of `listen`'s address ([`socket::free_port`]) that is none of `besides` (ports
/// claimed and not bound yet) nor the listen port; `None` when the kernel has none left.
fn free_port_besides(listen: SocketAddr, besides: &[u16]) -> Result<Option<u16>, sys::Error> {
    for _ in 0..FREE_PORT_TRIES {
        match socket::free_port(listen) {
            Ok(port) if port == listen.port() || besides.contains(&port) => {}
            Ok(port) => return Ok(Some(port)),
            Err(e) if address_in_use(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// What one worker is started with: its TUN queue, its socket, its socket for outer
/// fragmentation and its extra sockets for outer flow entropy.
struct QueueFds {
    tun: OwnedFd,
    socket: OwnedFd,
    fragmenting: Option<OwnedFd>,
    extra_sockets: Vec<OwnedFd>,
}

/// The receive options of a worker's socket on `listen`: the outer TOS of each receive, for
/// RFC 6040 decapsulation; when the AQM times the queues, when the kernel took each datagram in
/// (the wait in the socket).
fn set_receive_options(
    fd: &OwnedFd,
    listen: SocketAddr,
    config: &Config,
) -> Result<(), sys::Error> {
    let error = |source| sys::Error::Socket {
        address: listen,
        source,
    };
    if config.marking.ecn {
        socket::enable_receive_tos(fd, listen).map_err(error)?;
    }
    if config.aqm.timed() {
        socket::enable_receive_timestamps(fd).map_err(error)?;
    }
    Ok(())
}

/// Copies of `sockets` (the same sockets), for the WireGuard control thread to set the fwmark on.
fn copies<S: AsFd>(sockets: &[S], listen: SocketAddr) -> Result<Vec<OwnedFd>, sys::Error> {
    sockets
        .iter()
        .map(|fd| {
            fd.as_fd()
                .try_clone_to_owned()
                .map_err(|source| sys::Error::Socket {
                    address: listen,
                    source,
                })
        })
        .collect()
}

/// WireGuard mode, moving to another port: binds one socket per queue on `listen`, as at
/// startup, with the steering program, then the control thread's socket after them; pairs the
/// worker sockets with copies of the TUN queues. No fragmenting and no extra sockets: WireGuard
/// mode has neither.
fn rebind_wireguard(
    config: &Config,
    listen: SocketAddr,
    offloads: worker::Offloads,
    kept_tun: &[OwnedFd],
) -> Result<(Vec<QueueFds>, OwnedFd), sys::Error> {
    let mut fds = Vec::with_capacity(config.queues);
    for (queue, tun) in kept_tun.iter().enumerate() {
        let socket = socket::udp_socket(listen, config.socket_buffer)?;
        set_receive_options(&socket, listen, config)?;
        if offloads.udp_gro && !socket::enable_gro(&socket) {
            eprintln!("tunfwd: queue {queue}: UDP GRO refused on the new socket");
        }
        let tun = tun.try_clone().map_err(|source| sys::Error::CreateQueue {
            device: config.device_name.clone(),
            queue,
            source,
        })?;
        fds.push(QueueFds {
            tun,
            socket,
            fragmenting: None,
            extra_sockets: Vec::new(),
        });
    }
    if let Some(first) = fds.first() {
        socket::attach_reuseport_program(
            &first.socket,
            &crate::wireguard::steering_program(config.queues as u32),
        )?;
    }
    Ok((fds, socket::sending_socket(listen)?))
}

/// After setup: switches to `--user` if asked, then writes a first (all-zero) report to
/// `--stats-json`, which proves that the user tunfwd now is can write there, at startup rather
/// than at exit.
fn drop_privileges_and_check_output(
    config: &Config,
    latest: &[WorkerStats],
) -> Result<(), sys::Error> {
    if let Some(run_as) = &config.run_as {
        privileges::switch_to(&run_as.user, run_as.uid, run_as.gid)?;
        eprintln!(
            "tunfwd: switched every thread to user {} (uid {}), {} (gid {}); no capabilities kept",
            run_as.user,
            run_as.uid,
            run_as
                .group
                .as_deref()
                .map_or("its primary group".to_string(), |g| format!("group {g}")),
            run_as.gid
        );
    }
    if let Some(path) = &config.stats_json {
        write_json(&Report::new(Duration::ZERO, latest.to_vec()), path).map_err(|source| {
            sys::Error::StatsFile {
                path: path.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Stops every worker after setup failed; the setup error is what gets reported, not their stats.
fn stop_after_setup_failure(stop: &AtomicBool, handles: Vec<JoinHandle<Option<WorkerExit>>>) {
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        let _ = handle.join();
    }
}

/// Stops every worker and waits for it. Returns whether all ended well, and their final stats.
fn stop_and_join(
    stop: &AtomicBool,
    handles: Vec<JoinHandle<Option<WorkerExit>>>,
) -> (bool, Vec<WorkerStats>) {
    stop.store(true, Ordering::Relaxed);
    let mut all_ok = true;
    let mut device_gone = false;
    let mut finals = Vec::with_capacity(handles.len());
    for handle in handles {
        match handle.join() {
            Ok(Some(WorkerExit {
                stats,
                error,
                device_gone: gone,
            })) => {
                device_gone |= gone;
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
    if device_gone {
        eprintln!("tunfwd: the device was deleted; stopping");
    }
    (all_ok, finals)
}

/// Prints the report (through the printer thread) and, if asked, writes it as JSON.
fn publish(report: &Report, json_path: Option<&Path>, printer: &Printer) {
    printer.print(report.to_table());
    if let Some(path) = json_path
        && let Err(e) = write_json(report, path)
    {
        eprintln!("tunfwd: cannot write stats to {}: {e}", path.display());
    }
}

/// How long the final report may wait for a stdout that nobody reads before tunfwd exits
/// without it (the JSON, if asked for, is written all the same).
const FINAL_PRINT_WAIT: Duration = Duration::from_secs(2);
