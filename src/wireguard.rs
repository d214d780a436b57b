//! WireGuard mode's control thread (`tunfwd --wireguard`): the one owner of the
//! [`Device`], and the userspace API socket `wg` talks to.
//!
//! The control thread runs every handshake (the only X25519 in the process), every timer and
//! every configuration change; the workers' relays (`relay::wireguard`) never wait on it. Its
//! inputs come through one bounded queue: handshake messages and cookie replies the workers
//! received, and wake-ups (a worker has a packet for a peer with no session, or a `wg` client
//! connected). It sends what the device returns (initiations, responses, cookie replies,
//! keepalives, and the packets workers staged for a peer while its handshake ran) from a socket
//! of its own, bound to the workers' port in their `SO_REUSEPORT` group after them, so the
//! steering program never hands it a datagram. It also keeps copies of the workers' sockets, to
//! set the configuration's `fwmark` (`SO_MARK`) on every socket that sends, at startup and
//! whenever `wg set ... fwmark` changes it.
//!
//! The API socket is the cross-platform userspace API (wireguard.com/xplatform), as
//! wireguard-go and boringtun serve it: `/var/run/wireguard/DEV.sock`, mode 0600 in a 0755
//! directory, `get=1` and `set=1` (the text is `tunfwd_wireguard::uapi`'s). A small thread
//! accepts connections and hands each to the control thread, which answers it.

use crate::cli::WireguardOptions;
use crate::relay::wireguard::{ControlCounters, ToControl};
use crate::sys;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tunfwd_wireguard::config::{Endpoint, Operation, PeerChange, parse_config_file};
use tunfwd_wireguard::device::{Action, Outcome, Transmit};
use tunfwd_wireguard::uapi::{self, UapiError, UapiErrorKind};
use tunfwd_wireguard::{DataPlane, Device};
use zeroize::Zeroizing;

/// Where the API sockets live (wireguard-go's `ipc/uapi_unix.go`).
pub const SOCKET_DIRECTORY: &str = "/var/run/wireguard";
/// Messages the control thread's queue holds: a flood beyond it is dropped (and counted) by the
/// workers, never waited for.
pub const QUEUE_LEN: usize = 1024;
/// Under load (cookies required) when more than this many handshake messages wait: an eighth of
/// the queue, as the Linux module judges its own (`wg_packet_receive`). The device then stays
/// under load for a second after the queue was last this deep (`Device::judge_load`).
const UNDER_LOAD: usize = QUEUE_LEN / 8;
/// The most queued messages the control thread takes between two runs of the timers and the
/// API socket. A flood above the thread's handshake rate keeps the queue full; without a cap
/// the timers (initiations, retransmissions, keepalives, rekeys, key expiry) and `wg` would
/// wait for it to end. 64 initiations are a few milliseconds of X25519.
const DRAIN_LIMIT: usize = 64;
/// The longest the control thread sleeps between looks at the stop flag.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long a `wg` client may take to send its request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest API line taken, newline included. The longest valid ones (a key's 64 hex digits,
/// an IPv6 endpoint or prefix) are under 100 bytes; a longer line is a protocol error.
const MAX_LINE: usize = 4096;
/// What `wg` is told for a request that is not the protocol (cut off, too long, not UTF-8, an
/// unknown command), as wireguard-go answers it: -EPROTO.
const PROTOCOL_ERROR: &str = "errno=-71\n\n";

/// The device, configured from `--config` if given, and the origin of its clock.
pub struct Prepared {
    pub device: Device,
    pub epoch: Instant,
}

/// Makes the device and applies `--config`: refused if the file may be read by anyone but its
/// owner (it holds the private key), does not parse, or names an endpoint that does not resolve.
pub fn prepare(options: &WireguardOptions) -> Result<Prepared, sys::Error> {
    let epoch = Instant::now();
    let unix_now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut device = Device::new(None, unix_now_ns, Box::new(rand_core::OsRng));
    if let Some(path) = &options.config_file {
        let operations = read_config(path)?;
        device
            .apply(&operations)
            .expect("every host name was resolved");
    }
    Ok(Prepared { device, epoch })
}

/// Reads, checks and parses a `wg setconf` file, resolving its host-name endpoints.
fn read_config(path: &Path) -> Result<Vec<Operation>, sys::Error> {
    let read = |source| sys::Error::WireguardConfigRead {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mode = file.metadata().map_err(read)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(sys::Error::WireguardConfigMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = io::read_to_string(file).map_err(read)?;
    let mut operations =
        parse_config_file(&text).map_err(|source| sys::Error::WireguardConfigParse {
            path: path.to_path_buf(),
            source,
        })?;
    for operation in &mut operations {
        let Operation::UpdatePeer(update) = operation else {
            continue;
        };
        for change in &mut update.changes {
            if let PeerChange::Endpoint(Endpoint::Host { host, port }) = change {
                let resolve = |source| sys::Error::WireguardResolve {
                    path: path.to_path_buf(),
                    host: host.clone(),
                    source,
                };
                let found = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(resolve)?
                    .next()
                    .ok_or_else(|| resolve(io::Error::from(io::ErrorKind::NotFound)))?;
                *change = PeerChange::Endpoint(Endpoint::Socket(found));
            }
        }
    }
    Ok(operations)
}

/// The API socket's path for device `name`.
pub fn socket_path(name: &str) -> PathBuf {
    Path::new(SOCKET_DIRECTORY).join(format!("{name}.sock"))
}

/// What the workers are given to reach the control thread.
pub struct Links {
    pub data_plane: Arc<DataPlane>,
    pub to_control: SyncSender<ToControl>,
    pub pending: Arc<AtomicUsize>,
    pub counters: Arc<ControlCounters>,
    pub epoch: Instant,
}

/// The running control thread; dropping it stops it and removes the API socket.
pub struct Control {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    socket_path: PathBuf,
    wake: SyncSender<ToControl>,
    port: Arc<Port>,
}

/// The port the relay is bound to, the one `set=1` asked for, and the sockets.
struct Port {
    bound: AtomicU16,
    /// A port to move to (0: none), set by `set=1`, taken by the main thread.
    wanted: AtomicU16,
    sockets: Mutex<Sockets>,
}

/// Every socket that sends WireGuard datagrams, and the mark they carry.
struct Sockets {
    /// The control thread's.
    control: UdpSocket,
    /// Copies of the workers' (the same sockets: a copy shares its socket's options).
    workers: Vec<OwnedFd>,
    /// The `SO_MARK` they have (0: none).
    mark: u32,
}

impl Sockets {
    /// Sets `mark` on every socket (0 takes the mark off).
    fn set_mark(&mut self, mark: u32) -> io::Result<()> {
        sys::socket::set_mark(&self.control, mark)?;
        for worker in &self.workers {
            sys::socket::set_mark(worker, mark)?;
        }
        self.mark = mark;
        Ok(())
    }
}

impl Control {
    /// A port `wg set ... listen-port` asked for, once: the main thread then binds the workers
    /// there ([`Self::replace_socket`]).
    pub fn rebind_wanted(&self) -> Option<u16> {
        match self.port.wanted.swap(0, Ordering::Relaxed) {
            0 => None,
            port if port == self.port.bound.load(Ordering::Relaxed) => None,
            port => Some(port),
        }
    }

    /// The relay moved to `port`: the control thread sends from `socket`, bound there, from now,
    /// and the workers (started after this) from `workers`. The fwmark is set on them first.
    pub fn replace_sockets(&self, socket: OwnedFd, workers: Vec<OwnedFd>, port: u16) {
        let mut sockets = self
            .port
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mark = sockets.mark;
        *sockets = Sockets {
            control: UdpSocket::from(socket),
            workers,
            mark: 0,
        };
        if mark != 0
            && let Err(e) = sockets.set_mark(mark)
        {
            eprintln!("tunfwd: cannot set fwmark {mark:#x} on the sockets of port {port}: {e}");
        }
        self.port.bound.store(port, Ordering::Relaxed);
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.try_send(ToControl::Wake);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

/// Serves the API socket of device `name` and starts the control thread, which owns `device`
/// and sends from `socket` (bound to `listen_port`); `workers` are copies of the workers'
/// sockets. Sets the configuration's fwmark on all of them first. Returns the control thread
/// and what workers need.
pub fn start(
    prepared: Prepared,
    name: &str,
    socket: OwnedFd,
    workers: Vec<OwnedFd>,
    listen_port: u16,
) -> Result<(Control, Links), sys::Error> {
    let Prepared { device, epoch } = prepared;
    let mut sockets = Sockets {
        control: UdpSocket::from(socket),
        workers,
        mark: 0,
    };
    let mark = device.fwmark();
    if mark != 0 {
        sockets
            .set_mark(mark)
            .map_err(|source| sys::Error::WireguardFwmark { mark, source })?;
    }
    let path = socket_path(name);
    let listener = listen(&path).map_err(|source| sys::Error::UapiSocket {
        path: path.clone(),
        source,
    })?;
    let (to_control, from_workers) = mpsc::sync_channel(QUEUE_LEN);
    let (clients_tx, clients) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let pending = Arc::new(AtomicUsize::new(0));
    let counters = Arc::new(ControlCounters::default());
    let links = Links {
        data_plane: device.data_plane(),
        to_control: to_control.clone(),
        pending: pending.clone(),
        counters: counters.clone(),
        epoch,
    };
    let wake = to_control.clone();
    let port = Arc::new(Port {
        bound: AtomicU16::new(listen_port),
        wanted: AtomicU16::new(0),
        sockets: Mutex::new(sockets),
    });
    std::thread::Builder::new()
        .name("tunfwd-wg-api".into())
        .spawn(move || accept(listener, clients_tx, wake))
        .expect("spawning the WireGuard API thread");
    let mut thread = ControlThread {
        device,
        epoch,
        port: port.clone(),
        from_workers,
        clients,
        pending,
        counters,
        stop: stop.clone(),
    };
    let handle = std::thread::Builder::new()
        .name("tunfwd-wg".into())
        .spawn(move || thread.run())
        .expect("spawning the WireGuard control thread");
    Ok((
        Control {
            stop,
            thread: Some(handle),
            socket_path: path,
            wake: to_control,
            port,
        },
        links,
    ))
}

/// Binds the API socket: the directory 0755, the socket 0600. A socket file left by a relay
/// that is gone is replaced (the device's lock, `sys::owner`, says no other relay serves it).
///
/// `bind` makes the socket file 0777 less the umask (unix(7)), and connecting needs only write
/// permission on it; so it is bound in a fresh 0700 directory beside its place, made 0600 there
/// and only then renamed into place. It is never where anyone but root can reach it with a
/// wider mode, whatever the umask, and no process-wide umask is changed under running threads.
fn listen(path: &Path) -> io::Result<UnixListener> {
    listen_observed(path, |_| {})
}

/// [`listen`], calling `bound` with the socket's path right after `bind` (for the tests).
fn listen_observed(path: &Path, bound: impl FnOnce(&Path)) -> io::Result<UnixListener> {
    let (Some(directory), Some(file_name)) = (path.parent(), path.file_name()) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(directory)?;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut staging_name = std::ffi::OsString::from(".");
    staging_name.push(file_name);
    staging_name.push(format!(".{}", std::process::id()));
    let staging = directory.join(staging_name);
    // Left by a relay of this pid that died here (remove_dir_all follows no symlink).
    match std::fs::remove_dir_all(&staging) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let staged = staging.join(file_name);
    let listener = UnixListener::bind(&staged).and_then(|listener| {
        bound(&staged);
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&staging);
    listener
}

/// Hands each client to the control thread, and wakes it.
fn accept(listener: UnixListener, clients: mpsc::Sender<UnixStream>, wake: SyncSender<ToControl>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if clients.send(stream).is_err() {
            return;
        }
        // Waits if a flood fills the queue: a client may, a worker never does.
        if wake.send(ToControl::Wake).is_err() {
            return;
        }
    }
}

struct ControlThread {
    device: Device,
    epoch: Instant,
    port: Arc<Port>,
    from_workers: Receiver<ToControl>,
    clients: Receiver<UnixStream>,
    pending: Arc<AtomicUsize>,
    counters: Arc<ControlCounters>,
    stop: Arc<AtomicBool>,
}

impl ControlThread {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn run(&mut self) {
        while !self.stop.load(Ordering::Relaxed) && self.turn() {}
    }

    /// One turn of the loop: wait for a message or the next timer, take at most
    /// [`DRAIN_LIMIT`] queued messages (fewer if a timer falls due meanwhile), then answer `wg`
    /// clients and run the timers, whatever is still queued. False once the workers are gone.
    fn turn(&mut self) -> bool {
        let now_ns = self.now_ns();
        let next_timeout = self.device.next_timeout();
        let wait = next_timeout
            .map_or(IDLE_WAIT, |at| {
                Duration::from_nanos(at.saturating_sub(now_ns))
            })
            .min(IDLE_WAIT);
        match self.from_workers.recv_timeout(wait) {
            Ok(message) => {
                self.take(message);
                // More of what is queued, without waiting, until the cap or a timer is due.
                for _ in 1..DRAIN_LIMIT {
                    if next_timeout.is_some_and(|at| self.now_ns() >= at) {
                        break;
                    }
                    let Ok(message) = self.from_workers.try_recv() else {
                        break;
                    };
                    self.take(message);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return false,
        }
        while let Ok(client) = self.clients.try_recv() {
            self.serve(client);
        }
        self.poll();
        true
    }

    /// Runs the device's timers and sends what they return.
    fn poll(&mut self) {
        let actions = self.device.poll(self.now_ns());
        for action in actions {
            match action {
                Action::SendInitiation { transmit, .. }
                | Action::SendKeepalive { transmit, .. } => self.send(&transmit),
                Action::SendStaged { transmit, .. } => {
                    self.counters.staged_sent.fetch_add(1, Ordering::Relaxed);
                    self.send(&transmit);
                }
                Action::StagedPurged { packets, .. } => {
                    self.counters
                        .staged_purged
                        .fetch_add(packets, Ordering::Relaxed);
                }
                Action::HandshakeGaveUp { .. } | Action::KeysZeroed { .. } => {}
            }
        }
    }

    fn take(&mut self, message: ToControl) {
        let ToControl::Handshake { datagram, source } = message else {
            return;
        };
        let waiting = self
            .pending
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        let now_ns = self.now_ns();
        self.device.judge_load(waiting > UNDER_LOAD, now_ns);
        match self.device.on_handshake_message(&datagram, source, now_ns) {
            Ok(Outcome::Responded { response, .. }) => {
                self.counters.handshakes.fetch_add(1, Ordering::Relaxed);
                self.send(&response);
            }
            Ok(Outcome::SessionStarted {
                keepalive, staged, ..
            }) => {
                self.counters.handshakes.fetch_add(1, Ordering::Relaxed);
                self.send(&keepalive);
                self.counters
                    .staged_sent
                    .fetch_add(staged.len() as u64, Ordering::Relaxed);
                for transmit in &staged {
                    self.send(transmit);
                }
            }
            Ok(Outcome::CookieReplied { reply }) => {
                self.counters.cookie_replies.fetch_add(1, Ordering::Relaxed);
                self.send(&reply);
            }
            Ok(Outcome::CookieStored { .. }) => {}
            Err(_) => {
                self.counters.bad_handshakes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn send(&self, transmit: &Transmit) {
        let to = match transmit.to {
            SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
            v6 => v6,
        };
        // Lost like any datagram if the socket refuses; the timers send again.
        let sockets = self
            .port
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _ = sockets.control.send_to(&transmit.datagram, to);
    }

    /// Sets the device's fwmark on every socket if it changed (`wg set ... fwmark`). If a
    /// socket refuses it, the sockets go back to their mark and so does the device, so that
    /// `get=1` reports the mark the sockets carry.
    fn apply_fwmark(&mut self) -> io::Result<()> {
        let mark = self.device.fwmark();
        let mut sockets = self
            .port
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if sockets.mark == mark {
            return Ok(());
        }
        let result = sockets.set_mark(mark);
        if let Err(e) = &result {
            eprintln!("tunfwd: WireGuard API: cannot set fwmark {mark:#x}: {e}");
            let previous = sockets.mark;
            let _ = sockets.set_mark(previous);
            self.device
                .apply(&[Operation::SetFwmark(previous)])
                .expect("a mark needs no resolving");
        }
        result
    }

    /// Answers one `wg` client: any number of `get=1` / `set=1` requests until it closes. A
    /// request counts only whole, ended by its blank line: one cut off (the client closed or
    /// timed out), with a line longer than [`MAX_LINE`] or not UTF-8 changes nothing and is
    /// answered with [`PROTOCOL_ERROR`], and the connection closes.
    fn serve(&mut self, stream: UnixStream) {
        let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
        let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
        let mut reader = BufReader::new(&stream);
        let mut writer = &stream;
        let mut line = Zeroizing::new(Vec::with_capacity(MAX_LINE));
        loop {
            let command = match read_line(&mut reader, &mut line) {
                Line::Text(command) => command.to_owned(),
                Line::End => return,
                Line::Broken => {
                    let _ = writer.write_all(PROTOCOL_ERROR.as_bytes());
                    return;
                }
            };
            let mut body = Zeroizing::new(String::new());
            let whole = loop {
                match read_line(&mut reader, &mut line) {
                    Line::Text("") => break true,
                    Line::Text(text) => {
                        push_secret(&mut body, text);
                        push_secret(&mut body, "\n");
                    }
                    Line::End | Line::Broken => break false,
                }
            };
            if !whole {
                eprintln!(
                    "tunfwd: WireGuard API: a {command} request was cut off; nothing applied"
                );
                let _ = writer.write_all(PROTOCOL_ERROR.as_bytes());
                return;
            }
            let answer = match command.as_str() {
                "get=1" => {
                    let mut view = self.device.view();
                    // The port set (which the relay moves to within a moment), or the one an
                    // unset port got.
                    if view.listen_port == 0 {
                        view.listen_port = self.port.bound.load(Ordering::Relaxed);
                    }
                    Zeroizing::new(uapi::format_get(&view))
                }
                "set=1" => {
                    let result = uapi::parse_set(&body).and_then(|operations| {
                        self.device.apply(&operations).map_err(|_| UapiError {
                            line: 0,
                            kind: UapiErrorKind::BadEndpoint,
                        })
                    });
                    if let Err(error) = &result {
                        eprintln!("tunfwd: WireGuard API: {error}");
                    }
                    let wanted = self.device.listen_port();
                    if wanted != 0 && wanted != self.port.bound.load(Ordering::Relaxed) {
                        self.port.wanted.store(wanted, Ordering::Relaxed);
                    }
                    Zeroizing::new(match self.apply_fwmark() {
                        // As wireguard-go answers a mark it cannot set: the error's errno.
                        Err(e) if result.is_ok() => {
                            format!("errno=-{}\n\n", e.raw_os_error().unwrap_or(libc::EIO))
                        }
                        _ => uapi::format_errno(&result),
                    })
                }
                _ => {
                    let _ = writer.write_all(PROTOCOL_ERROR.as_bytes());
                    return;
                }
            };
            if writer.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// One line of an API request.
enum Line<'a> {
    /// A whole line, without its newline.
    Text(&'a str),
    /// The client closed before the line began.
    End,
    /// Cut off (closed or timed out mid-line), longer than [`MAX_LINE`], or not UTF-8.
    Broken,
}

/// Reads one line into `buffer` (its capacity, [`MAX_LINE`], is never exceeded, so a key in it
/// is never left behind by a reallocation).
fn read_line<'a>(reader: &mut impl BufRead, buffer: &'a mut Zeroizing<Vec<u8>>) -> Line<'a> {
    buffer.clear();
    match io::Read::take(&mut *reader, MAX_LINE as u64).read_until(b'\n', buffer) {
        Ok(0) => Line::End,
        Ok(_) if buffer.last() == Some(&b'\n') => {
            match std::str::from_utf8(&buffer[..buffer.len() - 1]) {
                Ok(text) => Line::Text(text),
                Err(_) => Line::Broken,
            }
        }
        Ok(_) | Err(_) => Line::Broken,
    }
}

/// Appends `text` to `secret`, moving it to a larger buffer itself when full, so that the
/// buffer left behind is wiped rather than freed with keys in it.
fn push_secret(secret: &mut Zeroizing<String>, text: &str) {
    if secret.capacity() - secret.len() < text.len() {
        let wanted = (secret.len() + text.len()).max(secret.capacity() * 2);
        let mut grown = Zeroizing::new(String::with_capacity(wanted));
        grown.push_str(secret);
        *secret = grown;
    }
    secret.push_str(text);
}

/// The reuseport steering program of WireGuard mode: a datagram's worker from its bytes 4..8
/// (a transport message's receiver index, a handshake message's sender index), spread by a
/// multiplicative hash and reduced modulo the number of workers. The inner flow is encrypted,
/// so a peer's datagrams under one keypair all go to one worker (as wireguard-go's and the
/// Linux module's receive path keep one peer's packets together); different peers, and one
/// peer's successive keypairs, spread. Only worker sockets, which come first in the group, are
/// ever picked: the control socket after them never receives.
pub fn steering_program(workers: u32) -> Vec<libc::sock_filter> {
    use libc::{BPF_A, BPF_ABS, BPF_ALU, BPF_K, BPF_LD, BPF_MOD, BPF_MUL, BPF_RET, BPF_RSH, BPF_W};
    let op = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    vec![
        // A short datagram makes the load fail, which ends the program with 0: worker 0.
        op(BPF_LD | BPF_W | BPF_ABS, 4),
        op(BPF_ALU | BPF_MUL | BPF_K, GOLDEN),
        op(BPF_ALU | BPF_RSH | BPF_K, 16),
        op(BPF_ALU | BPF_MOD | BPF_K, workers.max(1)),
        op(BPF_RET | BPF_A, 0),
    ]
}

/// Fibonacci hashing's multiplier, as `steer` uses it.
const GOLDEN: u32 = 0x9E37_79B1;

/// What [`steering_program`] computes: the worker of a datagram (its reference, for the tests
/// and the `wg_inner` fuzz target).
pub fn steering_index(datagram: &[u8], workers: u32) -> u32 {
    let Some(word) = datagram.get(4..8) else {
        return 0;
    };
    // cBPF loads words in network byte order.
    let word = u32::from_be_bytes(word.try_into().expect("four bytes"));
    (word.wrapping_mul(GOLDEN) >> 16) % workers.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunfwd_wireguard::PrivateKey;

    /// A control thread for `device`, sending from a loopback socket, with `workers` as the
    /// workers' sockets; and the workers' end of its queue.
    fn control_thread(
        device: Device,
        workers: Vec<OwnedFd>,
    ) -> (ControlThread, SyncSender<ToControl>) {
        let (to_control, from_workers) = mpsc::sync_channel(QUEUE_LEN);
        let (_clients, clients) = mpsc::channel();
        let thread = ControlThread {
            device,
            epoch: Instant::now(),
            port: Arc::new(Port {
                bound: AtomicU16::new(0),
                wanted: AtomicU16::new(0),
                sockets: Mutex::new(Sockets {
                    // Dual-stack, as the relay's: `send` maps IPv4 destinations to IPv6.
                    control: UdpSocket::bind("[::]:0").unwrap(),
                    workers,
                    mark: 0,
                }),
            }),
            from_workers,
            clients,
            pending: Arc::new(AtomicUsize::new(0)),
            counters: Arc::new(ControlCounters::default()),
            stop: Arc::new(AtomicBool::new(false)),
        };
        (thread, to_control)
    }

    fn device() -> Device {
        Device::new(
            Some(PrivateKey::generate(&mut rand_core::OsRng)),
            0,
            Box::new(rand_core::OsRng),
        )
    }

    /// An initiation to `to` from a device `to` has never heard of: its mac1 is valid (it takes
    /// only the public key), so only X25519 or a cookie tells it apart.
    fn stranger_initiation(to: tunfwd_wireguard::PublicKey) -> Vec<u8> {
        let mut stranger = device();
        let id = stranger.add_peer(to).unwrap();
        stranger.set_endpoint(id, "127.0.0.1:9".parse().unwrap());
        stranger.peer(id).unwrap().activity().request_handshake(1);
        stranger
            .poll(1)
            .into_iter()
            .find_map(|action| match action {
                Action::SendInitiation { transmit, .. } => Some(transmit.datagram),
                _ => None,
            })
            .expect("an initiation")
    }

    #[test]
    fn a_handshake_flood_does_not_stop_the_timers() {
        let device = device();
        let public = device.public_key().unwrap();
        let (mut thread, to_control) = control_thread(device, Vec::new());
        // A real peer, whose endpoint is this socket.
        let observer = UdpSocket::bind("127.0.0.1:0").unwrap();
        observer.set_nonblocking(true).unwrap();
        let peer = thread
            .device
            .add_peer(PrivateKey::generate(&mut rand_core::OsRng).public_key())
            .unwrap();
        thread
            .device
            .set_endpoint(peer, observer.local_addr().unwrap());
        // The workers filled the queue with a flood: more than one turn may take.
        let flood = stranger_initiation(public);
        let source: SocketAddr = "127.0.0.1:9".parse().unwrap();
        while to_control
            .try_send(ToControl::Handshake {
                datagram: flood.clone(),
                source,
            })
            .is_ok()
        {
            thread.pending.fetch_add(1, Ordering::Relaxed);
        }
        assert_eq!(thread.pending.load(Ordering::Relaxed), QUEUE_LEN);
        // A worker has a packet for the peer and no session.
        let now_ns = thread.now_ns();
        assert!(
            thread
                .device
                .peer(peer)
                .unwrap()
                .activity()
                .request_handshake(now_ns)
        );
        assert!(thread.turn());
        let mut initiation = [0u8; 256];
        let len = observer
            .recv(&mut initiation)
            .expect("the peer's initiation went out during the flood");
        assert_eq!((len, initiation[0]), (148, 1));
        let left = thread.pending.load(Ordering::Relaxed);
        assert!(
            (QUEUE_LEN - DRAIN_LIMIT..QUEUE_LEN).contains(&left),
            "{left} messages left after one turn"
        );
        assert!(thread.device.is_under_load());
    }

    /// `request` sent by a client that then closes its end; the answer.
    fn ask(thread: &mut ControlThread, request: &[u8]) -> String {
        use std::io::Read;
        let (server, mut client) = UnixStream::pair().unwrap();
        client.write_all(request).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        thread.serve(server);
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn a_set_request_cut_off_changes_nothing() {
        let mut device = device();
        device
            .add_peer(PrivateKey::generate(&mut rand_core::OsRng).public_key())
            .unwrap();
        let (mut thread, _) = control_thread(device, Vec::new());
        let long = format!("set=1\nfwmark=1{}\n\n", "0".repeat(MAX_LINE));
        for request in [
            &b"set=1\nreplace_peers=true\n\xff\xfe\n\n"[..],
            b"set=1\nreplace_peers=true\n",
            b"set=1\nreplace_peers=true",
            long.as_bytes(),
        ] {
            assert_eq!(ask(&mut thread, request), PROTOCOL_ERROR, "{request:?}");
            assert_eq!(thread.device.view().peers.len(), 1, "{request:?}");
            assert_eq!(thread.device.fwmark(), 0);
        }
        // Whole, the same request applies.
        assert_eq!(
            ask(&mut thread, b"set=1\nreplace_peers=true\n\n"),
            "errno=0\n\n"
        );
        assert!(thread.device.view().peers.is_empty());
    }

    #[test]
    fn a_fwmark_the_sockets_refuse_is_not_kept() {
        // A "worker socket" that is no socket: setting a mark on it fails (ENOTSOCK), as it
        // would without CAP_NET_ADMIN.
        let not_a_socket = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let (mut thread, _) = control_thread(device(), vec![not_a_socket]);
        let answer = ask(&mut thread, b"set=1\nfwmark=42\n\n");
        assert_ne!(answer, "errno=0\n\n");
        assert!(answer.starts_with("errno=-"), "{answer}");
        assert_eq!(thread.device.fwmark(), 0);
        let get = ask(&mut thread, b"get=1\n\n");
        assert!(!get.contains("fwmark="), "{get}");
        assert!(get.ends_with("errno=0\n\n"), "{get}");
    }

    #[test]
    fn the_api_socket_is_never_reachable_by_others() {
        use nix::sys::stat::{Mode, umask};
        let directory = std::env::temp_dir().join(format!("tunfwd-wg-api-{}", std::process::id()));
        let path = directory.join("wgtest.sock");
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        // The most open umask: bind alone would make the socket 0777.
        let previous = umask(Mode::empty());
        let mut seen = None;
        let listener = listen_observed(&path, |bound| {
            seen = Some((mode(bound), mode(bound.parent().unwrap())));
        });
        umask(previous);
        let (socket, parent) = seen.expect("bound");
        // Connecting takes write permission on the socket and search on its directory.
        assert!(
            socket & 0o022 == 0 || parent & 0o011 == 0,
            "bound {socket:o} in a directory of {parent:o}"
        );
        let _listener = listener.unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&directory), 0o755);
        // Only the socket is left beside it.
        let entries: Vec<_> = std::fs::read_dir(&directory).unwrap().collect();
        assert_eq!(entries.len(), 1);
        assert!(UnixStream::connect(&path).is_ok());
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn the_program_is_what_the_reference_computes() {
        let program = steering_program(3);
        assert_eq!(program.len(), 5);
        assert_eq!(program[3].k, 3);
        let mut spread = [0u32; 3];
        for index in 0..3000u32 {
            let mut datagram = [4u8, 0, 0, 0, 0, 0, 0, 0];
            datagram[4..8].copy_from_slice(&index.wrapping_mul(0x2545_f491).to_le_bytes());
            spread[steering_index(&datagram, 3) as usize] += 1;
        }
        assert!(spread.iter().all(|n| *n > 800), "{spread:?}");
        assert_eq!(steering_index(&[1, 0, 0], 3), 0);
    }

    #[test]
    fn a_config_readable_by_others_is_refused_and_one_of_its_owner_applies() {
        let dir = std::env::temp_dir().join(format!("tunfwd-wg-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wg0.conf");
        std::fs::write(
            &path,
            "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\nListenPort = 51820\n\n\
             [Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\nAllowedIPs = 198.18.2.0/24\n\
             Endpoint = 127.0.0.1:51821\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let options = WireguardOptions {
            config_file: Some(path.clone()),
        };
        let refused = prepare(&options).err().expect("mode 644 is refused");
        assert!(refused.to_string().contains("chmod 600"), "{refused}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let prepared = prepare(&options).expect("mode 600 is taken");
        assert_eq!(prepared.device.listen_port(), 51820);
        let view = prepared.device.view();
        assert_eq!(view.peers.len(), 1);
        assert_eq!(
            view.peers[0].endpoint,
            Some("127.0.0.1:51821".parse().unwrap())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
