//! What the main thread runs beside the workers once setup is done: the TUN queue drop count,
//! the printer thread for the stats table, the atomic JSON report, the one-line offload summary,
//! and the lookups that follow a `--peer` hostname to new addresses.
//!
//! It never touches the data path: workers send snapshots (`shared::Shared`), and everything
//! here runs on the main thread or a thread of its own that only the main thread talks to. A
//! stdout that blocks or a lookup that takes seconds stalls only that thread, never the loop
//! that answers signals, the watchdog and the metrics.

use crate::cli::pick_peer;
use crate::shared::Shared;
use crate::stats::Report;
use crate::sys::{link, random};
use crate::wire::Offloads;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The TUN device's transmit drops since tunfwd opened its queues (`link::tx_dropped`): packets
/// that found a queue's ring full before a worker read them. A device attached to may have counted
/// some before; those are not reported. `None` throughout if the count cannot be read at the
/// start: a report then says "unknown" rather than a zero it does not know.
pub struct TunQueueDrops {
    device: String,
    at_start: Option<u64>,
    last: Option<u64>,
}

impl TunQueueDrops {
    /// Reads the count now, as the zero of what is reported.
    pub fn start(device: &str) -> TunQueueDrops {
        let at_start = link::tx_dropped(device)
            .inspect_err(|e| {
                eprintln!("tunfwd: warning: the TUN queue drops will not be reported: {e}")
            })
            .ok();
        TunQueueDrops {
            device: device.to_string(),
            at_start,
            last: at_start.map(|_| 0),
        }
    }

    /// Drops since the start; the last count read if the device cannot be read now.
    pub fn read(&mut self) -> Option<u64> {
        if let (Some(at_start), Ok(now)) = (self.at_start, link::tx_dropped(&self.device)) {
            self.last = Some(now.saturating_sub(at_start));
        }
        self.last
    }
}

/// One line on which offloads are on, and why any that were asked for are off.
pub fn describe(wanted: Offloads, got: Offloads) -> String {
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

/// Writes the report as JSON, atomically: a temporary file beside `path`, then a rename. The
/// temporary name has a random part, and the file is created with `O_EXCL | O_NOFOLLOW`
/// (open(2)): whoever can write to the directory cannot guess the name ahead of time to plant a
/// symbolic link there, through which tunfwd would write elsewhere.
pub fn write_json(report: &Report, path: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let text = report.to_json().to_string();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{:016x}", random::nonzero_u64()?));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut file| file.write_all(text.as_bytes()));
    let result = written.and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Prints reports on a thread of its own, so that a stdout that blocks (a pipe into a pager
/// that was paused) stalls only that thread: the main loop goes on answering signals, the
/// watchdog and the metrics. It holds at most one report waiting; a newer one replaces it.
pub struct Printer {
    pending: Arc<(Mutex<PrinterState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct PrinterState {
    waiting: Option<String>,
    /// Set by `finish`: print what waits, then end.
    closing: bool,
    /// The thread is writing (stdout may block it there).
    busy: bool,
}

impl Printer {
    /// Starts the printing thread (or, if no thread can be had, prints in place).
    pub fn spawn() -> Printer {
        let pending = Arc::new((Mutex::new(PrinterState::default()), Condvar::new()));
        let shared = pending.clone();
        let thread = std::thread::Builder::new()
            .name("tunfwd-print".to_string())
            .spawn(move || {
                let (state, wake) = &*shared;
                loop {
                    let text = {
                        let Ok(mut s) = state.lock() else { return };
                        while s.waiting.is_none() && !s.closing {
                            s = match wake.wait(s) {
                                Ok(s) => s,
                                Err(_) => return,
                            };
                        }
                        match s.waiting.take() {
                            Some(text) => {
                                s.busy = true;
                                text
                            }
                            None => return,
                        }
                    };
                    println!("{text}");
                    if let Ok(mut s) = state.lock() {
                        s.busy = false;
                    }
                    wake.notify_all();
                }
            })
            .ok();
        Printer { pending, thread }
    }

    /// Hands `text` to the printer, replacing a report that still waits.
    pub fn print(&self, text: String) {
        if self.thread.is_none() {
            println!("{text}");
            return;
        }
        let (state, wake) = &*self.pending;
        if let Ok(mut s) = state.lock() {
            s.waiting = Some(text);
        }
        wake.notify_all();
    }

    /// Lets what waits be printed, for at most `limit`; then the thread is left behind (the
    /// process is about to exit).
    pub fn finish(mut self, limit: Duration) {
        let (state, wake) = &*self.pending;
        let deadline = Instant::now() + limit;
        if let Ok(mut s) = state.lock() {
            s.closing = true;
            wake.notify_all();
            while (s.waiting.is_some() || s.busy) && Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                s = match wake.wait_timeout(s, left) {
                    Ok((s, _)) => s,
                    Err(_) => return,
                };
            }
            if s.waiting.is_some() || s.busy {
                eprintln!("tunfwd: stdout did not take the final report within {limit:?}");
                return;
            }
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Looks `--peer HOSTNAME` up again every `--peer-refresh`, on a thread of its own (a lookup
/// can take seconds), and moves the workers to a new address when it changes.
pub struct PeerLookup {
    name: Option<(String, u16)>,
    every: Option<Duration>,
    current: SocketAddr,
    next: Instant,
    running: Option<mpsc::Receiver<Result<Vec<SocketAddr>, String>>>,
}

impl PeerLookup {
    /// Follows `name` (`--peer`'s host and port, if it named a host) every `every`
    /// (`--peer-refresh`; `None`: never), starting from `current`.
    pub fn new(
        name: Option<(String, u16)>,
        every: Option<Duration>,
        current: SocketAddr,
    ) -> PeerLookup {
        PeerLookup {
            name,
            every,
            current,
            next: Instant::now() + every.unwrap_or(Duration::ZERO),
            running: None,
        }
    }

    /// The address the workers are sending to.
    #[cfg(test)]
    pub fn current(&self) -> SocketAddr {
        self.current
    }

    /// Starts a lookup when one is due, or takes the answer of the one running and moves the
    /// workers (`shared`) if the address changed. Never waits.
    pub fn poll(&mut self, now: Instant, shared: &Shared) {
        let (Some((host, port)), Some(every)) = (&self.name, self.every) else {
            return;
        };
        if let Some(answer) = &self.running {
            let found = match answer.try_recv() {
                Ok(found) => found,
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => Err("the lookup ended".to_string()),
            };
            self.running = None;
            match found.map(|found| pick_peer(&found, Some(self.current))) {
                Ok(Some(moved)) if moved != self.current => {
                    eprintln!("tunfwd: peer {host} moved from {} to {moved}", self.current);
                    self.current = moved;
                    shared.set_peer(moved);
                }
                Ok(Some(_)) => {}
                Ok(None) => eprintln!(
                    "tunfwd: peer {host} has no address of the family the relay was started with; \
                     keeping {}",
                    self.current
                ),
                Err(e) => eprintln!(
                    "tunfwd: cannot look peer {host} up again ({e}); keeping {}",
                    self.current
                ),
            }
            return;
        }
        if now < self.next {
            return;
        }
        self.next = now + every;
        let (tx, rx) = mpsc::channel();
        let (host, port) = (host.clone(), *port);
        let spawned = std::thread::Builder::new()
            .name("tunfwd-lookup".to_string())
            .spawn(move || {
                let found = (host.as_str(), port)
                    .to_socket_addrs()
                    .map(|found| found.collect())
                    .map_err(|e| e.to_string());
                let _ = tx.send(found);
            });
        if spawned.is_ok() {
            self.running = Some(rx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offload_line_says_what_is_on_and_why_the_rest_is_off() {
        let all = Offloads {
            tso: true,
            uso: true,
            udp_gso: true,
            udp_gro: true,
        };
        let got = Offloads {
            tso: true,
            uso: false,
            udp_gso: true,
            udp_gro: false,
        };
        assert_eq!(
            describe(all, got),
            "tso on, uso off (kernel refused), udp-gso on, udp-gro off (kernel refused)"
        );
        let none = Offloads {
            tso: false,
            uso: false,
            udp_gso: false,
            udp_gro: false,
        };
        assert_eq!(
            describe(none, Offloads::default()),
            "tso off, uso off, udp-gso off, udp-gro off"
        );
    }

    #[test]
    fn json_reports_replace_the_file_whole_and_leave_no_temporary() {
        let dir = std::env::temp_dir().join(format!("tunfwd-operate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stats.json");
        let report = Report::new(Duration::from_secs(3), Vec::new());
        write_json(&report, &path).unwrap();
        write_json(&report, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, report.to_json());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "only the report: {left:?}");
        let nowhere = dir.join("missing").join("stats.json");
        assert!(write_json(&report, &nowhere).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tun_queue_drops_count_from_the_start_or_are_unknown() {
        // Needs no privileges: every network namespace has lo.
        let mut lo = TunQueueDrops::start("lo");
        assert!(lo.read().is_some());
        let mut missing = TunQueueDrops::start("no-such-device0");
        assert_eq!(missing.read(), None, "unknown, not zero");
    }

    #[test]
    fn the_printer_prints_and_finishes_within_its_limit() {
        let printer = Printer::spawn();
        printer.print("first".to_string());
        printer.print("second".to_string());
        let started = Instant::now();
        printer.finish(Duration::from_secs(2));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// `localhost` is in every /etc/hosts: no DNS needed.
    #[test]
    fn a_peer_name_is_looked_up_again_and_the_workers_follow_it() {
        let was: SocketAddr = "127.0.0.2:9".parse().unwrap();
        let shared = Shared::new(1, was);
        let mut seen = 0;
        let _ = shared.peer_if_moved(&mut seen);
        let mut never = PeerLookup::new(None, Some(Duration::ZERO), was);
        never.poll(Instant::now(), &shared);
        assert_eq!(never.current(), was);
        let mut lookup = PeerLookup::new(Some(("localhost".into(), 9)), Some(Duration::ZERO), was);
        let deadline = Instant::now() + Duration::from_secs(5);
        while lookup.current() == was && Instant::now() < deadline {
            lookup.poll(Instant::now(), &shared);
            std::thread::sleep(Duration::from_millis(5));
        }
        let now: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            lookup.current(),
            now,
            "an IPv4 peer follows the name's IPv4 address"
        );
        assert_eq!(shared.peer_if_moved(&mut seen), Some(now));
    }
}
