//! The namespace testbed shared by the demo, the integration tests and the e2e benches.
//!
//! Three network namespaces: `a` and `b` are the two relay hosts, joined by a veth (the underlay);
//! `c` is a stranger with its own veth to `b`, for traffic from an address that is not the peer.
//! Addresses come from the benchmarking ranges (198.18.0.0/15, 2001:2::/48) and exist only inside
//! these namespaces; no default route is ever added.
//!
//! This is test tooling, not the product: it drives `ip` (iproute2) rather than netlink. Every
//! process it starts is bounded in time, and everything is torn down on drop, on success and on
//! failure alike. It only ever kills the processes it started itself.

pub use nix::sys::signal::Signal;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Underlay (veth) addresses.
pub const A_UNDERLAY: &str = "198.18.0.1";
pub const B_UNDERLAY: &str = "198.18.0.2";
pub const C_UNDERLAY: &str = "198.18.0.5";
pub const B_UNDERLAY_TO_C: &str = "198.18.0.6";
/// tunfwd's overlay addresses.
pub const A_TUNNEL4: &str = "198.19.0.1";
pub const B_TUNNEL4: &str = "198.19.0.2";
pub const A_TUNNEL6: &str = "2001:2:1::1";
pub const B_TUNNEL6: &str = "2001:2:1::2";
/// The kernel VXLAN reference tunnel's overlay addresses.
pub const A_VXLAN4: &str = "198.19.1.1";
pub const B_VXLAN4: &str = "198.19.1.2";
/// The UDP port tunfwd listens on in the testbed.
pub const TUNNEL_PORT: u16 = 55555;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    A,
    B,
    C,
}

impl Host {
    fn suffix(self) -> &'static str {
        match self {
            Host::A => "a",
            Host::B => "b",
            Host::C => "c",
        }
    }
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// Busy CPU seconds over all CPUs since boot (user, nice, system, irq, softirq and steal), from
/// `/proc/stat`. The difference across a transfer is what the whole machine spent on it.
pub fn busy_cpu_seconds() -> f64 {
    busy_seconds_in(&fs::read_to_string("/proc/stat").unwrap_or_default())
}

fn busy_seconds_in(stat: &str) -> f64 {
    let line = stat.lines().next().unwrap_or("");
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // Fields: user nice system idle iowait irq softirq steal ...
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    // USER_HZ is 100 on every Linux ABI.
    busy / 100.0
}

/// True when running as root, which the testbed needs.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub struct Testbed {
    id: String,
    dir: PathBuf,
    tunfwd: PathBuf,
    tunload: PathBuf,
}

/// A process started in a namespace. Dropping it terminates it (SIGTERM, then SIGKILL).
pub struct Process {
    child: Option<Child>,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    name: String,
}

impl Testbed {
    /// Builds the three namespaces and their veths. `tunfwd` and `tunload` are the binaries to run.
    pub fn new(tunfwd: &Path, tunload: &Path) -> io::Result<Testbed> {
        if !is_root() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the namespace testbed needs root (network namespaces, veth and TUN devices)",
            ));
        }
        let id = format!(
            "tfw{}x{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("{id}-testbed"));
        fs::create_dir_all(&dir)?;
        let bed = Testbed {
            id,
            dir,
            tunfwd: tunfwd.to_path_buf(),
            tunload: tunload.to_path_buf(),
        };
        bed.build()?;
        Ok(bed)
    }

    pub fn namespace(&self, host: Host) -> String {
        format!("{}{}", self.id, host.suffix())
    }

    /// A file in this testbed's scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs `work` on a thread that has entered `host`'s network namespace (setns(2) moves only
    /// the calling thread). Sockets it creates stay in that namespace and may be used from any
    /// thread afterwards.
    pub fn in_namespace<T: Send>(
        &self,
        host: Host,
        work: impl FnOnce() -> io::Result<T> + Send,
    ) -> io::Result<T> {
        let path = format!("/var/run/netns/{}", self.namespace(host));
        let run = || -> io::Result<T> {
            nix::sched::setns(fs::File::open(&path)?, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            work()
        };
        std::thread::scope(|s| s.spawn(run).join())
            .map_err(|_| io::Error::other("the thread in the namespace panicked"))?
    }

    fn build(&self) -> io::Result<()> {
        let (a, b, c) = (
            self.namespace(Host::A),
            self.namespace(Host::B),
            self.namespace(Host::C),
        );
        for ns in [&a, &b, &c] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            // Overlay IPv6 addresses are usable at once: no duplicate address detection here.
            self.sh(ns, "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad; echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad")?;
        }
        ip(&[
            "link", "add", "ab", "netns", &a, "type", "veth", "peer", "name", "ba", "netns", &b,
        ])?;
        ip(&[
            "link", "add", "cb", "netns", &c, "type", "veth", "peer", "name", "bc", "netns", &b,
        ])?;
        for (ns, dev, v4, v6) in [
            (&a, "ab", "198.18.0.1/30", "2001:2::1/64"),
            (&b, "ba", "198.18.0.2/30", "2001:2::2/64"),
            (&c, "cb", "198.18.0.5/30", "2001:2:0:1::1/64"),
            (&b, "bc", "198.18.0.6/30", "2001:2:0:1::2/64"),
        ] {
            ip(&["-n", ns, "addr", "add", v4, "dev", dev])?;
            ip(&["-n", ns, "addr", "add", v6, "dev", dev, "nodad"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    fn sh(&self, ns: &str, script: &str) -> io::Result<()> {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", script])
            .output()?;
        check_output("sh", &out)
    }

    /// Starts `program` in `host`'s namespace, its output going to files named after `name`.
    pub fn spawn(
        &self,
        host: Host,
        name: &str,
        program: &Path,
        args: &[String],
    ) -> io::Result<Process> {
        let stdout_path = self.path(&format!("{name}.out"));
        let stderr_path = self.path(&format!("{name}.err"));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespace(host)])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path)?)
            .stderr(fs::File::create(&stderr_path)?)
            .spawn()?;
        Ok(Process {
            child: Some(child),
            stdout_path,
            stderr_path,
            name: name.to_string(),
        })
    }

    /// Runs `tunload` in `host`'s namespace to completion, within `limit`.
    pub fn tunload(
        &self,
        host: Host,
        name: &str,
        args: &[&str],
        limit: Duration,
    ) -> io::Result<String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut p = self.spawn(host, name, &self.tunload.clone(), &args)?;
        let status = p.wait_for(limit)?;
        let stdout = p.stdout();
        if !status.success() {
            return Err(io::Error::other(format!(
                "tunload {args:?} failed ({status}): {}{}",
                stdout,
                p.stderr()
            )));
        }
        Ok(stdout)
    }

    /// `tunload ping` from `host` to `to`: `count` echoes `interval_ms` apart, to completion
    /// within `limit`, its JSON summary (`sent`, `received`, the round trips). tunload fails
    /// when no echo comes back, which is an error here.
    pub fn tunload_ping(
        &self,
        host: Host,
        to: &str,
        count: u32,
        interval_ms: u32,
        limit: Duration,
    ) -> io::Result<serde_json::Value> {
        let (count, interval) = (count.to_string(), interval_ms.to_string());
        let out = self.tunload(
            host,
            &format!("ping-{to}"),
            &[
                "ping",
                "--to",
                to,
                "--count",
                &count,
                "--interval-ms",
                &interval,
            ],
            limit,
        )?;
        parse_json(&out)
    }

    /// Starts `tunload` in the background (a sink, usually).
    pub fn tunload_background(&self, host: Host, name: &str, args: &[&str]) -> io::Result<Process> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.spawn(host, name, &self.tunload.clone(), &args)
    }

    /// Starts tunfwd on `host` (A or B) pointing at the other one, with the overlay addresses, and
    /// waits until it reports that the device is up.
    pub fn start_tunfwd(&self, host: Host, name: &str, extra: &[&str]) -> io::Result<Process> {
        let (peer, v4, v6) = match host {
            Host::A => (B_UNDERLAY, A_TUNNEL4, A_TUNNEL6),
            Host::B => (A_UNDERLAY, B_TUNNEL4, B_TUNNEL6),
            Host::C => return Err(io::Error::other("tunfwd runs on A and B only")),
        };
        let mut args = vec![
            "--peer".to_string(),
            format!("{peer}:{TUNNEL_PORT}"),
            "--address".to_string(),
            format!("{v4}/24"),
            "--address".to_string(),
            format!("{v6}/64"),
        ];
        // The two relays stand in for two machines. Pinned the same way, both ends' queue 0 would
        // share CPU 0 and take turns on it, which no real deployment does; so unless the caller
        // chose, B pins its queues from the last CPU down while A goes from the first up.
        let chose = extra
            .iter()
            .any(|a| *a == "--no-pin" || *a == "--cpus" || a.starts_with("--cpus="));
        if host == Host::B && !chose {
            args.push("--cpus".to_string());
            args.push(reversed_cpu_list());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = self.spawn(host, name, &self.tunfwd.clone(), &args)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if p.stderr().contains(" up: ") {
                return Ok(p);
            }
            if let Some(status) = p.try_status()? {
                return Err(io::Error::other(format!(
                    "tunfwd exited early ({status}): {}",
                    p.stderr()
                )));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "tunfwd did not come up: {}",
                    p.stderr()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Moves `bytes` per stream over TCP from `from` to a sink on `to_host` listening at
    /// `to_addr` (port 5201), with `tcp_options` (such as `--mss 88`) given to both ends, within
    /// 150 s. An error unless the sink got every byte and checked each against the pattern.
    /// Returns the sender's JSON report.
    pub fn verified_transfer(
        &self,
        from: Host,
        to_host: Host,
        to_addr: &str,
        bytes: u64,
        streams: usize,
        tcp_options: &[&str],
    ) -> io::Result<serde_json::Value> {
        let any = if to_addr.contains(':') {
            "::"
        } else {
            "0.0.0.0"
        };
        let listen = endpoint(any, 5201);
        let target = endpoint(to_addr, 5201);
        let streams_text = streams.to_string();
        let mut sink_args = vec![
            "tcp-sink",
            "--listen",
            &listen,
            "--streams",
            &streams_text,
            "--seconds",
            "150",
        ];
        sink_args.extend_from_slice(tcp_options);
        let mut sink = self.tunload_background(to_host, "tcp-sink", &sink_args)?;
        let bytes_text = bytes.to_string();
        let mut send_args = vec![
            "tcp-send",
            "--to",
            &target,
            "--bytes",
            &bytes_text,
            "--streams",
            &streams_text,
            "--seconds",
            "120",
        ];
        send_args.extend_from_slice(tcp_options);
        let sent = self
            .tunload(from, "tcp-send", &send_args, Duration::from_secs(150))
            .map_err(|e| io::Error::other(format!("transfer to {target}: {e}")))?;
        let status = sink.wait_for(Duration::from_secs(20))?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "the sink for {target} failed ({status}): {}{}",
                sink.stdout(),
                sink.stderr()
            )));
        }
        let got = parse_json(&sink.stdout())?;
        let expected = bytes * streams as u64;
        if got["verified"] != true || got["checked"] != true || got["bytes"] != expected {
            return Err(io::Error::other(format!(
                "the sink for {target} did not check {expected} bytes: {got}"
            )));
        }
        parse_json(&sent)
    }

    /// Adds the kernel's own VXLAN tunnel between A and B over the same veth, as the in-kernel
    /// reference, with overlay addresses `A_VXLAN4`/`B_VXLAN4`.
    pub fn add_vxlan(&self, mtu: u32) -> io::Result<()> {
        for (host, local, remote, overlay) in [
            (Host::A, A_UNDERLAY, B_UNDERLAY, A_VXLAN4),
            (Host::B, B_UNDERLAY, A_UNDERLAY, B_VXLAN4),
        ] {
            let ns = self.namespace(host);
            let dev = if host == Host::A { "ab" } else { "ba" };
            ip(&[
                "-n", &ns, "link", "add", "vx0", "type", "vxlan", "id", "42", "local", local,
                "remote", remote, "dstport", "4789", "dev", dev,
            ])?;
            ip(&[
                "-n",
                &ns,
                "link",
                "set",
                "vx0",
                "mtu",
                &mtu.to_string(),
                "up",
            ])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{overlay}/24"),
                "dev",
                "vx0",
            ])?;
        }
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for host in [Host::A, Host::B, Host::C] {
            // Deleting a namespace deletes its veth ends too.
            let _ = ip(&["netns", "del", &self.namespace(host)]);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn check_output(what: &str, out: &Output) -> io::Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Runs `ip ARGS`, turning a failure into an error carrying its stderr.
pub fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        io::Error::new(e.kind(), format!("cannot run `ip` (install iproute2): {e}"))
    })?;
    check_output(&format!("ip {}", args.join(" ")), &out)
}

impl Process {
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn try_status(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait(),
            None => Ok(None),
        }
    }

    /// Waits for exit; past `limit` the process is killed and that is an error.
    pub fn wait_for(&mut self, limit: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_status()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} did not finish within {limit:?}: {}",
                        self.name,
                        self.stderr()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The io_uring instances the process holds open: the links in `/proc/PID/fd` to an
    /// `anon_inode:[io_uring]` file, one per ring. Zero for a process that uses none, or is gone.
    pub fn io_uring_instances(&self) -> usize {
        let Some(pid) = self.pid() else {
            return 0;
        };
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            return 0;
        };
        fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.as_os_str() == "anon_inode:[io_uring]")
            .count()
    }

    /// Sends a signal to the process we started (and only to it).
    /// The pid is one we spawned and have not reaped, so it cannot have been reused; and
    /// `ip netns exec` execs the program, so the pid is the program itself.
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }

    /// SIGTERM, then wait up to `limit` for a clean exit.
    pub fn terminate(&mut self, limit: Duration) -> io::Result<ExitStatus> {
        self.signal(Signal::SIGTERM);
        self.wait_for(limit)
    }

    /// Stops a tunfwd relay with SIGTERM and returns the final JSON report it wrote to `json`. An
    /// error if it does not exit 0 within 10 s (with its stderr), or the report is missing.
    pub fn stop_for_report(&mut self, json: &Path) -> io::Result<serde_json::Value> {
        let status = self.terminate(Duration::from_secs(10))?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "tunfwd exited with {status}: {}",
                self.stderr()
            )));
        }
        parse_json(&fs::read_to_string(json)?)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(Signal::SIGTERM);
            let _ = self.wait_for(Duration::from_secs(3));
            self.kill();
        }
    }
}

/// The sum of `field` over an array of per-queue objects of a tunfwd JSON report, such as
/// `report["queues"]` or `report["path"]["queues"]`.
pub fn report_sum(queues: &serde_json::Value, field: &str) -> u64 {
    queues
        .as_array()
        .expect("an array of queues")
        .iter()
        .map(|q| {
            q[field]
                .as_u64()
                .unwrap_or_else(|| panic!("{field} in {q}"))
        })
        .sum()
}

/// Packets dropped for `reason`, summed over a tunfwd JSON report's queues.
pub fn report_drops(report: &serde_json::Value, reason: &str) -> u64 {
    report["queues"]
        .as_array()
        .expect("an array of queues")
        .iter()
        .map(|q| {
            q["drops"][reason]
                .as_u64()
                .unwrap_or_else(|| panic!("{reason} in {q}"))
        })
        .sum()
}

/// Runs `program` with `args` to its exit, for what it says about bad input: its exit status and
/// its standard error.
pub fn run_to_exit(program: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts that `relay` runs the engine it was forced to with `--engine`: its stderr names that
/// engine and no other, and it holds io_uring instances exactly when the engine uses io_uring.
pub fn assert_runs(relay: &Process, engine: &str) {
    let stderr = relay.stderr();
    assert_eq!(
        engine_lines(&stderr),
        [format!("tunfwd: engine {engine}: forced by --engine")],
        "the relay does not run the engine it was forced to: {stderr}"
    );
    let rings = relay.io_uring_instances();
    if engine == "poll" {
        assert_eq!(rings, 0, "the poll engine holds io_uring instances");
    } else {
        assert!(rings > 0, "the {engine} engine holds no io_uring instance");
    }
}

/// The lines of a tunfwd's stderr that name the I/O engine it chose at startup and why, such as
/// `tunfwd: engine uring: forced by --engine`. A relay that started prints exactly one.
pub fn engine_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.starts_with("tunfwd: engine "))
        .collect()
}

/// Parses the one JSON line a `tunload` mode prints.
pub fn parse_json(text: &str) -> io::Result<serde_json::Value> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line)
        .map_err(|e| io::Error::other(format!("bad JSON from tool ({e}): {text}")))
}

/// This machine's CPUs as a `--cpus` list, last first (e.g. `1,0`).
pub fn reversed_cpu_list() -> String {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .iter()
        .map(|c| c.id)
        .collect();
    if ids.is_empty() {
        ids.push(0);
    }
    ids.sort_unstable();
    ids.iter()
        .rev()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `addr:port` with IPv6 bracketed.
pub fn endpoint(addr: &str, port: u16) -> String {
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{addr}]:{port}"),
        _ => format!("{addr}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_lines_are_the_startup_lines_naming_an_engine() {
        let stderr = "tunfwd: engine poll: not uring: io_uring is unavailable\n\
                      tunfwd: warning: the engine is slow\n\
                      tunfwd0 up: 4 queue(s)\n";
        assert_eq!(
            engine_lines(stderr),
            ["tunfwd: engine poll: not uring: io_uring is unavailable"]
        );
        assert!(engine_lines("tunfwd: --engine uring cannot run here: no").is_empty());
    }

    #[test]
    fn busy_seconds_count_everything_but_idle_and_iowait() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let stat = "cpu  100 20 300 9000 50 4 6 70 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(
            busy_seconds_in(stat),
            (100 + 20 + 300 + 4 + 6 + 70) as f64 / 100.0
        );
        assert_eq!(busy_seconds_in(""), 0.0);
    }
}

impl Testbed {
    /// Stops the kernels of A, B and C from sending IPv6 router solicitations on the interfaces
    /// created from now on (`router_solicitations` 0 for `all` and `default`, ip-sysctl.rst; RFC
    /// 4861 6.3.7), so that the tunnel carries only what a test sends and a test can compare the
    /// relays' counters with its own exactly. Otherwise the kernel solicits on each new tunnel
    /// device at 0, 4, 12, 28 s... after it comes up, one packet each time, through the tunnel.
    /// Call it before starting the relays.
    pub fn silence_router_solicitations(&self) -> io::Result<()> {
        for host in [Host::A, Host::B, Host::C] {
            self.sh(
                &self.namespace(host),
                "echo 0 > /proc/sys/net/ipv6/conf/all/router_solicitations; \
                 echo 0 > /proc/sys/net/ipv6/conf/default/router_solicitations",
            )?;
        }
        Ok(())
    }
}

/// The median of `rounds` by `figure`: the round whose figure is the middle one in ascending order
/// (the lower middle one when their number is even), among the rounds whose figure is a finite
/// number. A report that shows this round's other figures beside it shows figures that occurred
/// together, which per-figure medians would not. Ties keep the rounds' order. `None` when no
/// round has the figure.
pub fn median_round<T>(rounds: &[T], figure: impl Fn(&T) -> Option<f64>) -> Option<&T> {
    let mut ranked: Vec<(f64, &T)> = rounds
        .iter()
        .filter_map(|round| figure(round).filter(|v| v.is_finite()).map(|v| (v, round)))
        .collect();
    if ranked.is_empty() {
        return None;
    }
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some(ranked[(ranked.len() - 1) / 2].1)
}

#[cfg(test)]
mod median_round_tests {
    use super::median_round;

    /// (tcp Gbit/s, udp pps, loss) per round: the figures of one round belong together.
    type Round = (f64, f64, f64);

    #[test]
    fn the_median_round_keeps_its_own_figures_together() {
        let rounds: [Round; 3] = [
            (12.0, 383_339.0, 0.438),
            (9.0, 242_115.0, 0.1),
            (15.0, 1.0, 0.9),
        ];
        let picked = median_round(&rounds, |r| Some(r.0)).unwrap();
        assert_eq!(*picked, (12.0, 383_339.0, 0.438));
        // By another figure, another round, again whole.
        let picked = median_round(&rounds, |r| Some(r.1)).unwrap();
        assert_eq!(*picked, (9.0, 242_115.0, 0.1));
    }

    #[test]
    fn an_even_count_takes_the_lower_middle_round_and_ties_keep_their_order() {
        let rounds = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(median_round(&rounds, |r| Some(*r)), Some(&2.0));
        let tied = [(5.0, 'a'), (5.0, 'b'), (5.0, 'c')];
        assert_eq!(median_round(&tied, |r| Some(r.0)).unwrap().1, 'b');
        let two = [(7.0, 'x'), (7.0, 'y')];
        assert_eq!(median_round(&two, |r| Some(r.0)).unwrap().1, 'x');
    }

    #[test]
    fn rounds_without_the_figure_are_left_out() {
        let rounds = [None, Some(f64::NAN), Some(3.0), Some(1.0), None, Some(2.0)];
        assert_eq!(median_round(&rounds, |r| *r), Some(&Some(2.0)));
        let none: [Option<f64>; 2] = [None, Some(f64::INFINITY)];
        assert_eq!(median_round(&none, |r| *r), None);
        assert_eq!(median_round(&[] as &[f64], |r| Some(*r)), None);
    }
}
