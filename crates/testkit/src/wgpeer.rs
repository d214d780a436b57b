//! The WireGuard peers tunfwd is tested and benched against, run in the namespace testbed:
//! upstream wireguard-go, Debian's wireguard-go and Cloudflare's boringtun, each started on a TUN
//! the test names and configured with `wg`(8) through its userspace API socket
//! (`/var/run/wireguard/NAME.sock`), exactly as an operator would.
//!
//! It owns the peer's process (stopped by its PID only, never by name), the TUN it made (gone
//! with the process) and the key file it wrote; all of them are cleaned up on drop, on success and
//! on failure alike. A stale API socket is removed only once the process that served it is known
//! to be gone, since `/var/run/wireguard` is shared by every namespace on the machine: that is
//! also why [`interface_name`] makes names unique per process.
//!
//! It never links a WireGuard implementation: it drives the binaries, so that what a test checks
//! against is what users run. The same `wg` functions ([`show_dump`], [`set`]) work against
//! tunfwd's own API socket in `--wireguard` mode.
//!
//! The binaries come from the environment, with defaults that `scripts/wireguard-peers` installs
//! (see [`Peers::from_env`]).

use crate::testbed::{Host, Process, Testbed, ip};
use std::fs;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where every userspace WireGuard (wireguard-go, boringtun, tunfwd) serves its API socket: the
/// cross-platform userspace API (<https://www.wireguard.com/xplatform/>).
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// How long a peer has to create its API socket after it starts.
const START_LIMIT: Duration = Duration::from_secs(10);

/// A WireGuard implementation the tests run beside tunfwd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// wireguard-go 0.0.20250522 (../shared/peers/wireguard-go): TUN offloads, UDP GSO and GRO.
    WireguardGoUpstream,
    /// Debian's `wireguard-go` package, a 2022 snapshot without the offloads.
    WireguardGoDebian,
    /// Cloudflare's boringtun-cli from crates.io.
    Boringtun,
    /// tunfwd itself in `--wireguard` mode (the binary given with [`Peers::with_tunfwd`]). Not in
    /// [`Implementation::ALL`], which lists the peers it is tested against.
    Tunfwd,
}

impl Implementation {
    pub const ALL: [Implementation; 3] = [
        Implementation::WireguardGoUpstream,
        Implementation::WireguardGoDebian,
        Implementation::Boringtun,
    ];

    /// A short name for file names, process names and messages.
    pub fn key(self) -> &'static str {
        match self {
            Implementation::WireguardGoUpstream => "wggo-upstream",
            Implementation::WireguardGoDebian => "wggo-debian",
            Implementation::Boringtun => "boringtun",
            Implementation::Tunfwd => "tunfwd",
        }
    }

    /// A name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Implementation::WireguardGoUpstream => "wireguard-go (upstream)",
            Implementation::WireguardGoDebian => "wireguard-go (Debian)",
            Implementation::Boringtun => "boringtun",
            Implementation::Tunfwd => "tunfwd --wireguard",
        }
    }

    /// The environment variable that names its binary (none for tunfwd, which the caller gives).
    pub fn env_var(self) -> &'static str {
        match self {
            Implementation::WireguardGoUpstream => "TUNFWD_WIREGUARD_GO_UPSTREAM",
            Implementation::WireguardGoDebian => "TUNFWD_WIREGUARD_GO_DEBIAN",
            Implementation::Boringtun => "TUNFWD_BORINGTUN",
            Implementation::Tunfwd => "(none: Peers::with_tunfwd)",
        }
    }

    /// Whether `peer`, from this implementation's `wg show`, had a handshake at most `age` ago.
    /// boringtun 0.7.1 answers `last_handshake_time_sec` with the seconds *since* the handshake
    /// rather than the UNIX time of it (`device/api.rs`: `time_since_last_handshake`), which
    /// `wg show` then prints as a date in 1970; the others give the UNIX time.
    pub fn handshake_within(self, peer: &PeerDump, age: Duration) -> bool {
        match self {
            Implementation::Boringtun => {
                peer.latest_handshake != 0 && peer.latest_handshake <= age.as_secs()
            }
            _ => peer.handshake_within(age),
        }
    }

    /// The arguments that run it in the foreground on `interface` with `config`'s MTU and
    /// addresses, keeping root (the testbed's processes are stopped by the test, and boringtun
    /// otherwise drops to `SUDO_UID`, which would lose it the right to its socket directory).
    /// tunfwd takes the MTU and addresses as options (the interface contract of issue 20); the
    /// others get them from `ip` once they run.
    fn arguments(self, interface: &str, config: &Interface) -> Vec<String> {
        match self {
            Implementation::WireguardGoUpstream | Implementation::WireguardGoDebian => {
                vec!["-f".into(), interface.into()]
            }
            Implementation::Boringtun => vec![
                "--foreground".into(),
                "--disable-drop-privileges".into(),
                interface.into(),
            ],
            Implementation::Tunfwd => {
                let mut args = vec![
                    "--wireguard".to_string(),
                    "--dev".into(),
                    interface.into(),
                    "--mtu".into(),
                    config.mtu.to_string(),
                ];
                for address in &config.addresses {
                    args.extend(["--address".to_string(), address.clone()]);
                }
                args
            }
        }
    }
}

/// Whether `tunfwd` has the WireGuard mode: `tunfwd --wireguard --help` exits 0 where it does,
/// and 2 with clap's "unexpected argument" where it does not. The error says which, with
/// tunfwd's first line.
pub fn tunfwd_wireguard_support(tunfwd: &Path) -> Result<(), String> {
    let out = Command::new(tunfwd)
        .args(["--wireguard", "--help"])
        .output()
        .map_err(|e| format!("running {}: {e}", tunfwd.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(format!(
        "{} refuses --wireguard ({}): {}",
        tunfwd.display(),
        out.status,
        stderr.lines().next().unwrap_or("").trim()
    ))
}

/// The binaries: `wg` and the three implementations.
#[derive(Debug, Clone)]
pub struct Peers {
    pub wg: PathBuf,
    wireguard_go_upstream: PathBuf,
    wireguard_go_debian: PathBuf,
    boringtun: PathBuf,
    tunfwd: Option<PathBuf>,
}

/// The workspace's root, from this crate's place in it (`crates/testkit`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Upstream wireguard-go beside the workspace where present (`../shared/peers/wireguard-go`),
/// else Debian's (`/usr/bin/wireguard-go`), said on stderr: the upstream build is used where a
/// machine has it, and a machine without it still tests interop with a wireguard-go.
fn upstream_or_debian() -> PathBuf {
    let upstream = workspace_root().join("../shared/peers/wireguard-go");
    if upstream.exists() {
        return upstream;
    }
    eprintln!(
        "upstream wireguard-go is not at {}: its tests use Debian's /usr/bin/wireguard-go",
        upstream.display()
    );
    PathBuf::from("/usr/bin/wireguard-go")
}

impl Peers {
    /// The binaries from the environment, each with its default: `TUNFWD_WG` (`wg` on the
    /// PATH), `TUNFWD_WIREGUARD_GO_UPSTREAM` (`../shared/peers/wireguard-go` from the workspace
    /// root, or Debian's where that is missing), `TUNFWD_WIREGUARD_GO_DEBIAN` (`/usr/bin/wireguard-go`) and `TUNFWD_BORINGTUN`
    /// (`target/peers/bin/boringtun-cli`, where `scripts/wireguard-peers` installs it).
    pub fn from_env() -> Peers {
        let path =
            |var: &str, default: PathBuf| std::env::var_os(var).map_or(default, PathBuf::from);
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace_root().join("target"), PathBuf::from);
        Peers {
            wg: path("TUNFWD_WG", PathBuf::from("wg")),
            wireguard_go_upstream: path(
                Implementation::WireguardGoUpstream.env_var(),
                upstream_or_debian(),
            ),
            wireguard_go_debian: path(
                Implementation::WireguardGoDebian.env_var(),
                PathBuf::from("/usr/bin/wireguard-go"),
            ),
            boringtun: path(
                Implementation::Boringtun.env_var(),
                target.join("peers/bin/boringtun-cli"),
            ),
            tunfwd: None,
        }
    }

    /// The same, with `tunfwd` as the binary of [`Implementation::Tunfwd`].
    pub fn with_tunfwd(mut self, tunfwd: &Path) -> Peers {
        self.tunfwd = Some(tunfwd.to_path_buf());
        self
    }

    pub fn program(&self, implementation: Implementation) -> &Path {
        match implementation {
            Implementation::WireguardGoUpstream => &self.wireguard_go_upstream,
            Implementation::WireguardGoDebian => &self.wireguard_go_debian,
            Implementation::Boringtun => &self.boringtun,
            Implementation::Tunfwd => self
                .tunfwd
                .as_deref()
                .unwrap_or(Path::new("tunfwd (not given: Peers::with_tunfwd)")),
        }
    }

    /// An error, saying how to get them, unless `wg` runs and `implementation`'s binary is an
    /// executable file.
    pub fn check(&self, implementation: Implementation) -> io::Result<()> {
        let install = "install the peers with scripts/wireguard-peers (as root)";
        Command::new(&self.wg)
            .arg("--version")
            .output()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "`{}` does not run ({e}): {install}, or set TUNFWD_WG",
                        self.wg.display()
                    ),
                )
            })?;
        let program = self.program(implementation);
        if implementation == Implementation::Tunfwd {
            return tunfwd_wireguard_support(program).map_err(io::Error::other);
        }
        let executable = fs::metadata(program)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !executable {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} is not at {}: {install}, or set {}",
                    implementation.key(),
                    program.display(),
                    implementation.env_var()
                ),
            ));
        }
        Ok(())
    }

    /// The first line of `implementation`'s version output, for reports.
    pub fn version(&self, implementation: Implementation) -> Option<String> {
        let out = Command::new(self.program(implementation))
            .arg("--version")
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
    }
}

static NEXT_INTERFACE: AtomicUsize = AtomicUsize::new(0);

/// An interface name unique on this machine while this process lives: `tag` (at most 4
/// characters), then this process's id and a sequence number in hex, at most 15 characters in
/// all (`IFNAMSIZ`). API sockets share one directory across namespaces, so two tests, or two
/// test binaries at once, must never pick the same name.
pub fn interface_name(tag: &str) -> String {
    assert!(
        tag.len() <= 4 && tag.chars().all(|c| c.is_ascii_alphanumeric()),
        "interface tag {tag:?}"
    );
    let name = format!(
        "{tag}{:x}x{:x}",
        std::process::id(),
        NEXT_INTERFACE.fetch_add(1, Ordering::Relaxed)
    );
    assert!(name.len() <= 15, "interface name {name} too long");
    name
}

/// The API socket of `interface`.
pub fn socket_path(interface: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{interface}.sock"))
}

/// A key pair from `wg genkey` and `wg pubkey`, base64 as wg prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub private: String,
    pub public: String,
}

/// `wg genkey`, then `wg pubkey` of it.
pub fn generate_keys(wg: &Path) -> io::Result<KeyPair> {
    let private = run_wg(wg, &["genkey"], None)?;
    let public = run_wg(wg, &["pubkey"], Some(&private))?;
    Ok(KeyPair { private, public })
}

/// `wg genpsk`.
pub fn generate_preshared_key(wg: &Path) -> io::Result<String> {
    run_wg(wg, &["genpsk"], None)
}

/// Runs `wg ARGS` with `input` on its stdin; its trimmed stdout, or an error with its stderr.
fn run_wg(wg: &Path, args: &[&str], input: Option<&str>) -> io::Result<String> {
    let mut child = Command::new(wg)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("running {}: {e}", wg.display())))?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        stdin.write_all(input.as_bytes())?;
        stdin.write_all(b"\n")?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "wg {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Writes `key` into `path`, readable by its owner only (as `wg` wants key files, and tunfwd
/// demands).
pub fn write_key_file(path: &Path, key: &str) -> io::Result<()> {
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{key}")
}

/// `wg set INTERFACE ARGS...` against its API socket (any userspace implementation, tunfwd's
/// included).
pub fn set(wg: &Path, interface: &str, args: &[&str]) -> io::Result<()> {
    let mut all = vec!["set", interface];
    all.extend_from_slice(args);
    run_wg(wg, &all, None).map(drop)
}

/// `wg setconf INTERFACE FILE`.
pub fn setconf(wg: &Path, interface: &str, file: &Path) -> io::Result<()> {
    run_wg(wg, &["setconf", interface, &file.to_string_lossy()], None).map(drop)
}

/// `wg syncconf INTERFACE FILE`.
pub fn syncconf(wg: &Path, interface: &str, file: &Path) -> io::Result<()> {
    run_wg(wg, &["syncconf", interface, &file.to_string_lossy()], None).map(drop)
}

/// `wg show INTERFACE dump`, parsed.
pub fn show_dump(wg: &Path, interface: &str) -> io::Result<Dump> {
    let text = run_wg(wg, &["show", interface, "dump"], None)?;
    Dump::parse(&text).ok_or_else(|| io::Error::other(format!("unexpected `wg show dump`: {text}")))
}

/// One `get=1` exchange on `interface`'s API socket, raw: the `key=value` lines up to the
/// `errno=` line. For what `wg show` does not print.
pub fn uapi_get(interface: &str) -> io::Result<String> {
    let mut stream = UnixStream::connect(socket_path(interface))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"get=1\n\n")?;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains("\n\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    Ok(text)
}

/// What `wg show INTERFACE dump` prints: the interface's line, then one line per peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    pub public_key: String,
    pub listen_port: u16,
    pub peers: Vec<PeerDump>,
}

/// One peer's line of a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDump {
    pub public_key: String,
    /// `None` when wg prints `(none)`.
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<String>,
    /// Seconds since the epoch; 0 for never.
    pub latest_handshake: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl Dump {
    /// Parses the tab-separated dump (wg(8): private-key, public-key, listen-port, fwmark; then
    /// per peer public-key, preshared-key, endpoint, allowed-ips, latest-handshake, transfer-rx,
    /// transfer-tx, persistent-keepalive).
    pub fn parse(text: &str) -> Option<Dump> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let interface: Vec<&str> = lines.next()?.split('\t').collect();
        if interface.len() != 4 {
            return None;
        }
        let mut peers = Vec::new();
        for line in lines {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 8 {
                return None;
            }
            peers.push(PeerDump {
                public_key: f[0].to_string(),
                endpoint: f[2].parse().ok(),
                allowed_ips: if f[3] == "(none)" {
                    Vec::new()
                } else {
                    f[3].split(',').map(str::to_string).collect()
                },
                latest_handshake: f[4].parse().ok()?,
                rx_bytes: f[5].parse().ok()?,
                tx_bytes: f[6].parse().ok()?,
            });
        }
        Some(Dump {
            public_key: interface[1].to_string(),
            listen_port: interface[2].parse().ok()?,
            peers,
        })
    }

    /// The peer with public key `public_key`.
    pub fn peer(&self, public_key: &str) -> Option<&PeerDump> {
        self.peers.iter().find(|p| p.public_key == public_key)
    }
}

impl PeerDump {
    /// Whether the latest handshake is at most `age` old by this machine's clock.
    pub fn handshake_within(&self, age: Duration) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.latest_handshake != 0 && now.saturating_sub(self.latest_handshake) <= age.as_secs()
    }
}

/// Polls `wg show INTERFACE dump` every 50 ms until `done` holds for it, for up to `limit`; the
/// dump that satisfied it, or an error with the last one.
pub fn dump_when(
    wg: &Path,
    interface: &str,
    limit: Duration,
    done: impl Fn(&Dump) -> bool,
) -> io::Result<Dump> {
    let deadline = Instant::now() + limit;
    loop {
        let last = show_dump(wg, interface);
        if let Ok(dump) = &last
            && done(dump)
        {
            return Ok(dump.clone());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "`wg show {interface} dump` never showed what was expected within {limit:?}: {last:?}"
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `text` appears in `process`'s stderr, while it runs, for up to `limit`.
fn wait_for_stderr(process: &mut Process, text: &str, limit: Duration) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if process.stderr().contains(text) {
            return Ok(());
        }
        if let Some(status) = process.try_status()? {
            return Err(io::Error::other(format!(
                "it exited ({status}) before saying {text:?}: {}",
                process.stderr()
            )));
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "it did not say {text:?} within {limit:?}: {}",
                    process.stderr()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `interface`'s API socket accepts a connection, while `process` runs, for up to
/// `limit`.
pub fn wait_for_socket(process: &mut Process, interface: &str, limit: Duration) -> io::Result<()> {
    let path = socket_path(interface);
    let deadline = Instant::now() + limit;
    loop {
        if UnixStream::connect(&path).is_ok() {
            return Ok(());
        }
        if let Some(status) = process.try_status()? {
            return Err(io::Error::other(format!(
                "it exited ({status}) before serving {}: {}{}",
                path.display(),
                process.stdout(),
                process.stderr()
            )));
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} did not appear within {limit:?}: {}",
                    path.display(),
                    process.stderr()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A peer's own side of a tunnel: its key pair, port and the addresses on its interface.
#[derive(Debug, Clone)]
pub struct Interface {
    pub keys: KeyPair,
    /// 0 lets the implementation pick one (read it from [`Dump::listen_port`]).
    pub listen_port: u16,
    /// CIDRs for `ip addr add` on the TUN.
    pub addresses: Vec<String>,
    pub mtu: u32,
}

/// What one peer of a device knows of another: `wg set ... peer KEY ...`.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<String>,
    pub persistent_keepalive: Option<u16>,
    pub preshared_key: Option<String>,
}

impl PeerConfig {
    /// The arguments of `wg set` that add this peer; `scratch` is where a preshared key's file
    /// goes.
    fn set_arguments(&self, scratch: &Path) -> io::Result<Vec<String>> {
        let mut args = vec!["peer".to_string(), self.public_key.clone()];
        if let Some(endpoint) = self.endpoint {
            args.extend(["endpoint".into(), endpoint.to_string()]);
        }
        args.extend(["allowed-ips".into(), self.allowed_ips.join(",")]);
        if let Some(seconds) = self.persistent_keepalive {
            args.extend(["persistent-keepalive".into(), seconds.to_string()]);
        }
        if let Some(psk) = &self.preshared_key {
            write_key_file(scratch, psk)?;
            args.extend([
                "preshared-key".into(),
                scratch.to_string_lossy().into_owned(),
            ]);
        }
        Ok(args)
    }
}

/// A running WireGuard peer in a namespace of the testbed. Dropping it stops the process (its
/// PID only) and removes what it left behind.
pub struct Device {
    pub implementation: Implementation,
    pub host: Host,
    pub interface: String,
    pub keys: KeyPair,
    wg: PathBuf,
    namespace: String,
    scratch: PathBuf,
    process: Option<Process>,
}

impl Device {
    /// Starts `implementation` in `host`'s namespace on a new TUN named `interface`, waits for
    /// its API socket, gives it `config`'s key and port with `wg set`, adds the addresses and MTU
    /// with `ip`, and brings the link up. On an error, whatever started is stopped again.
    pub fn start(
        bed: &Testbed,
        peers: &Peers,
        implementation: Implementation,
        host: Host,
        interface: &str,
        config: &Interface,
    ) -> io::Result<Device> {
        Device::start_with(bed, peers, implementation, host, interface, config, &[])
    }

    /// [`Device::start`] with `extra` arguments for the program, such as tunfwd's `--queues 1`
    /// or `--stats-json PATH`. tunfwd on B is pinned from the last CPU down unless `extra`
    /// chooses (as `Testbed::start_tunfwd` does), and is waited for until it reports that it is
    /// up, the readiness signal of both of its modes.
    pub fn start_with(
        bed: &Testbed,
        peers: &Peers,
        implementation: Implementation,
        host: Host,
        interface: &str,
        config: &Interface,
        extra: &[&str],
    ) -> io::Result<Device> {
        peers.check(implementation)?;
        let mut args = implementation.arguments(interface, config);
        let scratch = bed.path(&format!("{interface}.key"));
        if implementation == Implementation::Tunfwd {
            // tunfwd takes its key and port at startup from a `wg setconf` file (`--config`),
            // so that it binds its port once; `wg set` then adds the peers.
            let file = bed.path(&format!("{interface}.conf"));
            write_key_file(
                &file,
                &format!(
                    "[Interface]\nPrivateKey = {}\nListenPort = {}",
                    config.keys.private, config.listen_port
                ),
            )?;
            args.extend(["--config".to_string(), file.to_string_lossy().into_owned()]);
        }
        let chose = extra
            .iter()
            .any(|a| *a == "--no-pin" || *a == "--cpus" || a.starts_with("--cpus="));
        if implementation == Implementation::Tunfwd && host == Host::B && !chose {
            args.extend(["--cpus".to_string(), crate::testbed::reversed_cpu_list()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut process = bed.spawn(
            host,
            &format!("{}-{interface}", implementation.key()),
            peers.program(implementation),
            &args,
        )?;
        // wireguard-go prints a page-long warning on Linux unless told it runs in the foreground
        // on purpose; the flag does that. Nothing else is needed in the environment.
        let waited = if implementation == Implementation::Tunfwd {
            wait_for_stderr(&mut process, " up: ", START_LIMIT)
                .and_then(|()| wait_for_socket(&mut process, interface, START_LIMIT))
        } else {
            wait_for_socket(&mut process, interface, START_LIMIT)
        };
        let device = Device {
            implementation,
            host,
            interface: interface.to_string(),
            keys: config.keys.clone(),
            wg: peers.wg.clone(),
            namespace: bed.namespace(host),
            scratch,
            process: Some(process),
        };
        waited.map_err(|e| device.failed("start", e))?;
        device
            .configure(config)
            .map_err(|e| device.failed("configure", e))?;
        Ok(device)
    }

    fn configure(&self, config: &Interface) -> io::Result<()> {
        if self.implementation == Implementation::Tunfwd {
            // Its key and port came from `--config`; it made its TUN with the MTU and addresses
            // it was given, and brought it up.
            return Ok(());
        }
        write_key_file(&self.scratch, &config.keys.private)?;
        let key = self.scratch.to_string_lossy().into_owned();
        let port = config.listen_port.to_string();
        self.set(&["private-key", &key, "listen-port", &port])?;
        let ns = self.namespace.as_str();
        let mtu = config.mtu.to_string();
        for address in &config.addresses {
            let mut args = vec![
                "-n",
                ns,
                "addr",
                "add",
                address.as_str(),
                "dev",
                &self.interface,
            ];
            if address.contains(':') {
                args.push("nodad");
            }
            ip(&args)?;
        }
        ip(&["-n", ns, "link", "set", &self.interface, "mtu", &mtu, "up"])
    }

    /// An error naming the device and what failed, with the process's output.
    fn failed(&self, what: &str, e: io::Error) -> io::Error {
        let output = self
            .process
            .as_ref()
            .map(|p| format!("{}{}", p.stdout(), p.stderr()))
            .unwrap_or_default();
        io::Error::new(
            e.kind(),
            format!(
                "{} on {} in {}: {what}: {e}; its output: {output}",
                self.implementation.key(),
                self.interface,
                self.namespace
            ),
        )
    }

    /// `wg set` on this device.
    pub fn set(&self, args: &[&str]) -> io::Result<()> {
        set(&self.wg, &self.interface, args)
    }

    /// Adds (or updates) a peer with `wg set`.
    pub fn add_peer(&self, peer: &PeerConfig) -> io::Result<()> {
        let psk = self
            .scratch
            .with_extension(format!("psk{}", self.interface));
        let args = peer.set_arguments(&psk)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let done = self.set(&args);
        let _ = fs::remove_file(psk);
        done
    }

    /// `wg show` on this device, parsed.
    pub fn dump(&self) -> io::Result<Dump> {
        show_dump(&self.wg, &self.interface)
    }

    /// The port it listens on, which it picked itself when configured with 0.
    pub fn listen_port(&self) -> io::Result<u16> {
        Ok(self.dump()?.listen_port)
    }

    /// The process, for its output or its PID.
    pub fn process(&self) -> &Process {
        self.process
            .as_ref()
            .expect("a running device has its process")
    }

    /// Stops the process with SIGTERM, waits for it, and checks that it removed its API socket
    /// (wireguard-go and boringtun both do on SIGTERM). Its exit status.
    pub fn stop(mut self) -> io::Result<ExitStatus> {
        let mut process = self.process.take().expect("stopped once");
        let status = process.terminate(Duration::from_secs(10));
        drop(process);
        let socket = socket_path(&self.interface);
        let left = socket.exists();
        let _ = fs::remove_file(&socket);
        let status = status?;
        if left {
            return Err(io::Error::other(format!(
                "{} exited ({status}) and left {} behind",
                self.implementation.key(),
                socket.display()
            )));
        }
        Ok(status)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // Process's own drop: SIGTERM to its PID, then SIGKILL after 3 s; reaped either way.
        if let Some(process) = self.process.take() {
            drop(process);
            // Its process is gone, so the socket, if any, is a stale one of ours.
            let _ = fs::remove_file(socket_path(&self.interface));
        }
        let _ = fs::remove_file(&self.scratch);
    }
}

/// Two devices that know each other: `a` gets `b` as its peer and `b` gets `a`, each with the
/// other's underlay address and port as its endpoint when `endpoints` says so (a responder that
/// is given no endpoint learns it from the initiator's first message).
pub fn join(
    a: &Device,
    a_allowed: &[&str],
    a_endpoint: Option<SocketAddr>,
    b: &Device,
    b_allowed: &[&str],
    b_endpoint: Option<SocketAddr>,
) -> io::Result<()> {
    a.add_peer(&PeerConfig {
        public_key: b.keys.public.clone(),
        endpoint: b_endpoint,
        allowed_ips: b_allowed.iter().map(|s| s.to_string()).collect(),
        persistent_keepalive: None,
        preshared_key: None,
    })?;
    b.add_peer(&PeerConfig {
        public_key: a.keys.public.clone(),
        endpoint: a_endpoint,
        allowed_ips: a_allowed.iter().map(|s| s.to_string()).collect(),
        persistent_keepalive: None,
        preshared_key: None,
    })
}

/// Sums every number stored under a key named `name` anywhere in `value`: a counter of tunfwd's
/// JSON report wherever the report keeps it (per queue, under `drops`, or in a section of its
/// own). `None` when no such key exists at all, which a test must treat as a missing counter,
/// not as zero.
pub fn json_counter(value: &serde_json::Value, name: &str) -> Option<u64> {
    fn walk(value: &serde_json::Value, name: &str, sum: &mut Option<u64>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    if key == name
                        && let Some(n) = v.as_u64()
                    {
                        *sum = Some(sum.unwrap_or(0) + n);
                        continue;
                    }
                    walk(v, name, sum);
                }
            }
            serde_json::Value::Array(items) => {
                for v in items {
                    walk(v, name, sum);
                }
            }
            _ => {}
        }
    }
    let mut sum = None;
    walk(value, name, &mut sum);
    sum
}

/// The UDP datagrams to one IPv4 address and port that a namespace's interfaces carry, taken
/// off the wire with a packet socket (packet(7), `SOCK_DGRAM`: from the IP header on), as a
/// capture tool would: for replaying them later. Each datagram is checked to be whole (the UDP
/// length agrees with the IP length), so a GSO super-packet that crosses a veth whole is left
/// out rather than cut wrong.
pub struct Capture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<io::Result<Vec<Vec<u8>>>>>,
}

impl Capture {
    /// Starts capturing in `host`'s namespace the payloads of UDP datagrams to `to`.
    pub fn start(bed: &Testbed, host: Host, to: std::net::SocketAddrV4) -> io::Result<Capture> {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockProtocol, SockType, setsockopt, socket, sockopt,
        };
        let fd = bed.in_namespace(host, || {
            let fd = socket(
                AddressFamily::Packet,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::EthAll,
            )
            .map_err(io::Error::from)?;
            let timeout = nix::sys::time::TimeVal::new(0, 100_000);
            setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(io::Error::from)?;
            Ok(fd)
        })?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut payloads = Vec::new();
            let mut packet = vec![0u8; 65536];
            while !stopping.load(Ordering::Relaxed) {
                match nix::sys::socket::recv(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &mut packet,
                    nix::sys::socket::MsgFlags::empty(),
                ) {
                    Ok(n) => {
                        if let Some(payload) = udp_payload_to(&packet[..n], to) {
                            payloads.push(payload.to_vec());
                        }
                    }
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(io::Error::from(e)),
                }
            }
            Ok(payloads)
        });
        Ok(Capture {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns the payloads captured, in the order they crossed.
    pub fn stop(mut self) -> io::Result<Vec<Vec<u8>>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .map_err(|_| io::Error::other("the capture thread panicked"))?
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The payload of `packet` (an IPv4 packet from its header on) if it is one whole UDP datagram
/// to `to`.
fn udp_payload_to(packet: &[u8], to: std::net::SocketAddrV4) -> Option<&[u8]> {
    if packet.len() < 28 || packet[0] >> 4 != 4 || packet[9] != 17 {
        return None;
    }
    let header = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if header < 20 || total > packet.len() || total < header + 8 {
        return None;
    }
    let destination = std::net::Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let udp = &packet[header..total];
    let port = u16::from_be_bytes([udp[2], udp[3]]);
    let length = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    (destination == *to.ip() && port == to.port() && length == udp.len()).then(|| &udp[8..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_parses_into_the_interface_and_its_peers() {
        let text = "cHJpdmF0ZQ==\tcHVibGlj\t51820\toff\n\
                    cGVlcjE=\t(none)\t198.18.0.2:51820\t198.19.0.2/32,2001:2:1::2/128\t1733300000\t1234\t5678\toff\n\
                    cGVlcjI=\t(none)\t(none)\t(none)\t0\t0\t0\t25\n";
        let dump = Dump::parse(text).unwrap();
        assert_eq!(dump.public_key, "cHVibGlj");
        assert_eq!(dump.listen_port, 51820);
        assert_eq!(dump.peers.len(), 2);
        let first = dump.peer("cGVlcjE=").unwrap();
        assert_eq!(first.endpoint, Some("198.18.0.2:51820".parse().unwrap()));
        assert_eq!(first.allowed_ips, ["198.19.0.2/32", "2001:2:1::2/128"]);
        assert_eq!(
            (first.latest_handshake, first.rx_bytes, first.tx_bytes),
            (1733300000, 1234, 5678)
        );
        let second = dump.peer("cGVlcjI=").unwrap();
        assert_eq!(second.endpoint, None);
        assert!(second.allowed_ips.is_empty());
        assert!(!second.handshake_within(Duration::from_secs(1_000_000_000)));
        let v6 = "k\tK\t0\toff\np\t(none)\t[2001:2::1]:4000\t::/0\t0\t0\t0\toff\n";
        assert_eq!(
            Dump::parse(v6).unwrap().peers[0].endpoint,
            Some("[2001:2::1]:4000".parse().unwrap())
        );
        assert_eq!(Dump::parse("too\tfew\n"), None);
        assert_eq!(Dump::parse("a\tb\t1\toff\nshort\tline\n"), None);
    }

    #[test]
    fn only_whole_udp_datagrams_to_the_address_are_captured() {
        let to: std::net::SocketAddrV4 = "198.18.0.2:51820".parse().unwrap();
        let datagram = |destination: [u8; 4], port: u16, payload: &[u8], udp_extra: u16| {
            let total = (20 + 8 + payload.len()) as u16;
            let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 1];
            p[2..4].copy_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&destination);
            p.extend_from_slice(&4000u16.to_be_bytes());
            p.extend_from_slice(&port.to_be_bytes());
            p.extend_from_slice(&(8 + payload.len() as u16 + udp_extra).to_be_bytes());
            p.extend_from_slice(&[0, 0]);
            p.extend_from_slice(payload);
            p
        };
        let good = datagram([198, 18, 0, 2], 51820, b"\x04\0\0\0data", 0);
        assert_eq!(udp_payload_to(&good, to), Some(&b"\x04\0\0\0data"[..]));
        assert_eq!(
            udp_payload_to(&datagram([198, 18, 0, 9], 51820, b"x", 0), to),
            None
        );
        assert_eq!(
            udp_payload_to(&datagram([198, 18, 0, 2], 51821, b"x", 0), to),
            None
        );
        // A super-packet's UDP length is one segment's, not the whole's.
        assert_eq!(
            udp_payload_to(&datagram([198, 18, 0, 2], 51820, b"xy", 1), to),
            None
        );
        let mut tcp = good.clone();
        tcp[9] = 6;
        assert_eq!(udp_payload_to(&tcp, to), None);
        assert_eq!(udp_payload_to(&good[..27], to), None);
    }

    #[test]
    fn interface_names_are_unique_and_fit_ifnamsiz() {
        let (one, two) = (interface_name("wgxy"), interface_name("wgxy"));
        assert_ne!(one, two);
        assert!(one.len() <= 15 && one.starts_with("wgxy"), "{one}");
    }

    #[test]
    fn json_counters_are_summed_wherever_they_are() {
        let report = serde_json::json!({
            "queues": [
                {"drops": {"wg_replay": 2, "foreign_source": 1}, "wg_handshakes": 1},
                {"drops": {"wg_replay": 3}, "wg_handshakes": 0},
            ],
            "wireguard": {"wg_cookie_replies": 7},
        });
        assert_eq!(json_counter(&report, "wg_replay"), Some(5));
        assert_eq!(json_counter(&report, "wg_handshakes"), Some(1));
        assert_eq!(json_counter(&report, "wg_cookie_replies"), Some(7));
        assert_eq!(json_counter(&report, "wg_bad_tag"), None);
    }
}
