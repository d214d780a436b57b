//! One relay per device and port (issue 18): the real `tunfwd` binary on the namespace testbed.
//!
//! A second relay on a running one's device and port must fail at startup, naming the first,
//! instead of joining its TUN queues and reuseport group. A relay killed with SIGKILL and started
//! again at once must come up on a device and port of its own: the killed one's io_uring keeps
//! its queues and sockets alive for tens of milliseconds after it dies
//! (io_uring/io_uring.c `io_ring_exit_work`), and a restart that joined them would send flows to
//! sockets and queues that nobody reads.
//!
//! A third test calls `owner::claim` itself, inside a testbed namespace, on TUN devices it opens:
//! one held by a live program that is not a relay, one held by no process, one persistent.
//!
//! Two more are the security review's (issue 18): a local user (uid 65534) holding whatever it can
//! create, the abstract names tunfwd once locked with included, must not keep a root relay from
//! starting; and a second relay whose /proc hides the first (`hidepid=invisible`, the unit's
//! capabilities, so no `CAP_SYS_PTRACE`) must still name it at once, not wait out the claim.
//!
//! They need root and fail at once without it, never skipping silently, as in tests/netns.rs.
//! Every wait is bounded; every relay is one this test started, and the testbed kills it and
//! deletes its namespaces on every path, failure included.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tunfwd::Error;
use tunfwd::testing::{owner, tun};
use tunfwd_testkit::testbed::{self, Host, Process, Signal, Testbed};

static SERIAL: Mutex<()> = Mutex::new(());

/// The engine whose leftovers outlive a killed relay: io_uring requests in flight hold the files.
const ENGINE: &str = "uring";
const QUEUES: &str = "4";

fn testbed() -> Testbed {
    if !testbed::is_root() {
        panic!(
            "the ownership tests need root (namespaces, veth, TUN): run them as root, e.g. \
             `sudo -E cargo test --test ownership`"
        );
    }
    Testbed::new(
        Path::new(env!("CARGO_BIN_EXE_tunfwd")),
        &tunfwd_testkit::binaries::tool("tunload"),
    )
    .expect("building the namespace testbed")
}

/// The options every relay here gets besides those `Testbed::start_tunfwd` adds.
fn options() -> [&'static str; 4] {
    ["--engine", ENGINE, "--queues", QUEUES]
}

fn relay(bed: &Testbed, host: Host, name: &str) -> Process {
    bed.start_tunfwd(host, name, &options())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The full command line `Testbed::start_tunfwd` gives relay A, for starting a second one by
/// hand: peer B, A's overlay addresses, then [`options`].
fn relay_a_arguments() -> Vec<String> {
    let mut args = vec![
        "--peer".to_string(),
        format!("{}:{}", testbed::B_UNDERLAY, testbed::TUNNEL_PORT),
        "--address".to_string(),
        format!("{}/24", testbed::A_TUNNEL4),
        "--address".to_string(),
        format!("{}/64", testbed::A_TUNNEL6),
    ];
    args.extend(options().iter().map(|s| s.to_string()));
    args
}

/// A short verified TCP transfer over the overlay, from A to B and back.
fn transfers_verify(bed: &Testbed, bytes: u64, when: &str) {
    for (from, to, address) in [
        (Host::A, Host::B, testbed::B_TUNNEL4),
        (Host::B, Host::A, testbed::A_TUNNEL4),
    ] {
        bed.verified_transfer(from, to, address, bytes, 1, &[])
            .unwrap_or_else(|e| panic!("{when}: {bytes} bytes from {from:?} to {to:?}: {e}"));
    }
}

/// The TUN queues of `tunfwd0` on `host` as the kernel counts them (`numqueues` in `ip -d link`).
fn tun_queues(bed: &Testbed, host: Host) -> Option<u32> {
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            &bed.namespace(host),
            "-d",
            "link",
            "show",
            "dev",
            "tunfwd0",
        ])
        .output()
        .expect("running ip link show");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words.find(|w| *w == "numqueues")?;
    words.next()?.parse().ok()
}

/// A relay of 4 queues binds 8 sockets to its port: each worker's, and each worker's
/// fragmenting one (`socket::fragmenting_socket`).
const SOCKETS_PER_RELAY: usize = 8;

/// The UDP sockets bound to the tunnel port in `host`'s namespace, from its /proc/net/udp and
/// udp6 (local port in hex, the second field), read by an independent few lines here.
fn tunnel_port_sockets(bed: &Testbed, host: Host) -> usize {
    let port = format!(":{:04X}", testbed::TUNNEL_PORT);
    bed.in_namespace(host, || {
        let mut count = 0;
        for table in ["udp", "udp6"] {
            let text = std::fs::read_to_string(format!("/proc/thread-self/net/{table}"))?;
            count += text
                .lines()
                .skip(1)
                .filter(|line| {
                    line.split_whitespace()
                        .nth(1)
                        .is_some_and(|local| local.ends_with(&port))
                })
                .count();
        }
        Ok(count)
    })
    .expect("reading the namespace's UDP table")
}

#[test]
fn a_second_relay_on_the_same_device_and_port_exits_1_naming_the_first() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = testbed();
    let mut first = relay(&bed, Host::A, "tunfwd-a");
    let _b = relay(&bed, Host::B, "tunfwd-b");
    let first_pid = first.pid().expect("relay A runs");
    transfers_verify(&bed, 1_000_000, "before the second relay");

    let started = Instant::now();
    let mut second = bed
        .spawn(
            Host::A,
            "tunfwd-a-second",
            Path::new(env!("CARGO_BIN_EXE_tunfwd")),
            &relay_a_arguments(),
        )
        .expect("starting the second relay");
    // It must fail at startup; a relay that joined the first one's device and port would run on
    // until this kills it.
    let status = second.wait_for(Duration::from_secs(5)).unwrap_or_else(|e| {
        panic!(
            "the second relay on relay A's device and port did not exit within 5 s: it ran \
             alongside the first ({e}); relay A's device now has {:?} queue(s) and its port {} \
             socket(s)",
            tun_queues(&bed, Host::A),
            tunnel_port_sockets(&bed, Host::A)
        )
    });
    let took = started.elapsed();
    let stderr = second.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {stderr}");
    assert!(
        stderr.contains(&format!(
            "device tunfwd0 is already served by PID {first_pid} ("
        )) && stderr.contains("tunfwd"),
        "the second relay's error does not name the first (PID {first_pid}): {stderr}"
    );
    eprintln!(
        "the second relay exited 1 after {took:?}: {}",
        stderr.trim()
    );

    // The first relay is untouched: still running, alone on its device and port, relaying.
    assert!(
        first.try_status().unwrap().is_none(),
        "relay A died: {}",
        first.stderr()
    );
    assert_eq!(tun_queues(&bed, Host::A), Some(4));
    assert_eq!(tunnel_port_sockets(&bed, Host::A), SOCKETS_PER_RELAY);
    transfers_verify(&bed, 5_000_000, "after the second relay");
}

#[test]
fn twenty_restarts_right_after_kill_9_each_come_up_alone_and_relay() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = testbed();
    let mut a = relay(&bed, Host::A, "tunfwd-a");
    let _b = relay(&bed, Host::B, "tunfwd-b");
    transfers_verify(&bed, 1_000_000, "before the first kill");

    const CYCLES: usize = 20;
    // Each cycle is a restart (under a second when all goes well) and two 3 MB transfers.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut restarts = Vec::with_capacity(CYCLES);
    for cycle in 1..=CYCLES {
        assert!(
            Instant::now() < deadline,
            "cycle {cycle}: out of time after {restarts:?}"
        );
        let killed = a.pid().expect("relay A runs");
        a.signal(Signal::SIGKILL);
        // At once, without even reaping the killed one: its io_uring teardown, its device and its
        // sockets are all still in the kernel's hands.
        let started = Instant::now();
        let restarted = bed
            .start_tunfwd(Host::A, &format!("tunfwd-a{cycle}"), &options())
            .unwrap_or_else(|e| {
                panic!("cycle {cycle}: the restart after kill -9 of PID {killed} failed: {e}")
            });
        let came_up = started.elapsed();
        // The new relay reports up only once its queues and sockets exist, so whatever the kernel
        // counts now is the new relay's plus any of the killed one's it joined.
        let queues = tun_queues(&bed, Host::A);
        let sockets = tunnel_port_sockets(&bed, Host::A);
        drop(std::mem::replace(&mut a, restarted));
        assert_eq!(
            (queues, sockets),
            (Some(4), SOCKETS_PER_RELAY),
            "cycle {cycle}: relay A came up {came_up:?} after kill -9 of PID {killed} sharing \
             its device or port with the killed one's leftovers (queues, sockets)"
        );
        restarts.push(came_up);
        transfers_verify(&bed, 3_000_000, &format!("cycle {cycle}"));
    }
    restarts.sort_unstable();
    eprintln!(
        "{CYCLES} restarts after kill -9 came up in {:?} (median), {:?} (slowest)",
        restarts[CYCLES / 2],
        restarts[CYCLES - 1]
    );
}

/// Sends `fd` over a fresh unix socket pair and closes it here: the file is then held only by the
/// message in flight, which no /proc/PID/fd shows, as a killed relay's io_uring holds its queues.
/// Dropping the pair releases it.
fn hold_in_flight(fd: OwnedFd) -> (UnixStream, UnixStream) {
    let (sender, receiver) = UnixStream::pair().unwrap();
    let mut control = [0u64; 4];
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) } as _;
    // SAFETY: `msg` points at `control`, which has room for one cmsg carrying one int.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd.as_raw_fd());
    }
    // SAFETY: `msg` and everything it points to live across the call.
    let sent = unsafe { libc::sendmsg(sender.as_raw_fd(), &msg, 0) };
    assert_eq!(sent, 1, "{}", io::Error::last_os_error());
    drop(fd);
    (sender, receiver)
}

fn open_queues(device: &str, queues: usize) -> io::Result<Vec<OwnedFd>> {
    tun::open_queues(device, queues).map_err(|e| io::Error::other(e.to_string()))
}

#[test]
fn claims_refuse_a_tun_held_by_a_program_wait_out_one_held_by_none_and_take_a_persistent_one() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = testbed();
    let me = std::process::id();
    let no_port: SocketAddr = "0.0.0.0:0".parse().unwrap();
    bed.in_namespace(Host::A, || {
        // A live program (this test) holds a queue: refused at once, naming it.
        let mut queues = open_queues("tunfwd0", 1)?;
        let started = Instant::now();
        match owner::claim("tunfwd0", no_port, &[], Duration::from_secs(5)) {
            Err(e @ Error::DeviceInUse { .. }) => {
                let Error::DeviceInUse { device, holders } = &e else {
                    unreachable!()
                };
                assert_eq!(device, "tunfwd0");
                assert_eq!(holders.iter().map(|h| h.pid).collect::<Vec<_>>(), [me]);
                let message = e.to_string();
                assert!(
                    message.starts_with(&format!("device tunfwd0 is in use by PID {me} (")),
                    "{message}"
                );
            }
            other => panic!("expected DeviceInUse naming this test, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));

        // The same queue held by no process: waited for until it goes (with it the device, which
        // is not persistent).
        let pair = hold_in_flight(queues.remove(0));
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(pair);
        });
        let claimed = owner::claim("tunfwd0", no_port, &[], Duration::from_secs(5));
        closer.join().unwrap();
        let ownership = claimed.expect("the device held only in flight went within the wait");
        assert!(
            ownership.waited() >= Duration::from_millis(190),
            "{:?}",
            ownership.waited()
        );
        drop(ownership);

        // Held by no process and not going: reported after the wait, with its queue count.
        let mut queues = open_queues("tunfwd0", 2)?;
        let _stuck = (
            hold_in_flight(queues.remove(0)),
            hold_in_flight(queues.remove(0)),
        );
        match owner::claim("tunfwd0", no_port, &[], Duration::from_millis(300)) {
            Err(Error::StillHeld {
                resource: owner::Resource::Device(device),
                waited,
                remains: owner::Remains::Queues { queues: Some(2) },
                source: None,
            }) => {
                assert_eq!(device, "tunfwd0");
                assert!(waited >= Duration::from_millis(300), "{waited:?}");
            }
            other => panic!("expected StillHeld with 2 queues, got {other:?}"),
        }
        Ok(())
    })
    .expect("the claims in namespace A");

    // A persistent device with nothing attached is free to take; with a queue open, it is not.
    let ns = bed.namespace(Host::A);
    testbed::ip(&[
        "-n",
        &ns,
        "tuntap",
        "add",
        "dev",
        "tunfwd1",
        "mode",
        "tun",
        "multi_queue",
    ])
    .expect("creating a persistent TUN");
    bed.in_namespace(Host::A, || {
        owner::claim("tunfwd1", no_port, &[], Duration::ZERO)
            .expect("a persistent idle TUN is free");
        let queues = open_queues("tunfwd1", 2)?;
        match owner::claim("tunfwd1", no_port, &[], Duration::from_secs(5)) {
            Err(Error::DeviceInUse { holders, .. }) => {
                assert_eq!(holders.iter().map(|h| h.pid).collect::<Vec<_>>(), [me])
            }
            other => panic!("expected DeviceInUse on the persistent TUN, got {other:?}"),
        }
        drop(queues);
        owner::claim("tunfwd1", no_port, &[], Duration::ZERO).expect("free again once closed");
        Ok(())
    })
    .expect("the claims on a persistent TUN");
}

/// Where tunfwd keeps its lock files, as the squatter below knows from the documentation.
const RUNTIME_DIR: &str = "/run/tunfwd";

/// The environment variable that makes [`squat_as_an_unprivileged_user`] squat, on this port.
const SQUAT: &str = "TUNFWD_TEST_SQUAT_PORT";

/// The user the squatter runs as: `nobody`, as the review's did.
const NOBODY: &str = "65534";

/// Not a test of its own: the process [`an_unprivileged_user_cannot_keep_a_root_relay_from_its_device_or_port`]
/// runs as uid 65534 in namespace A. Without `SQUAT` it does nothing. It takes every lock on
/// `tunfwd0` and the port that a local user might: the abstract names tunfwd once locked with
/// (`@tunfwd/dev/tunfwd0`, `@tunfwd/udp/PORT`, which no permission guards), the directory and the
/// lock files of today, by creating them or by opening and flock(2)ing what exists. It prints what
/// it got, then `squatting`, and holds all of it until killed (at most 60 s).
#[test]
#[ignore = "a helper process for another test"]
fn squat_as_an_unprivileged_user() {
    let Ok(port) = std::env::var(SQUAT) else {
        return;
    };
    // SAFETY: getuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    println!("uid {uid}");
    assert_ne!(uid, 0, "the squatter must not be root");
    let mut kept: Vec<Box<dyn std::any::Any>> = Vec::new();
    for name in [
        "tunfwd/dev/tunfwd0".to_string(),
        format!("tunfwd/udp/{port}"),
    ] {
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        match UnixListener::bind_addr(&address) {
            Ok(socket) => {
                println!("bound @{name}");
                kept.push(Box::new(socket));
            }
            Err(e) => println!("cannot bind @{name}: {e}"),
        }
    }
    let dir = Path::new(RUNTIME_DIR);
    match fs::create_dir(dir) {
        Ok(()) => println!("created {RUNTIME_DIR}"),
        Err(e) => println!("cannot create {RUNTIME_DIR}: {e}"),
    }
    // The lock files tunfwd would use in this namespace, and every file already there.
    let namespace = fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
    let mut paths: Vec<_> = [
        format!("net-{namespace}.dev-tunfwd0.lock"),
        format!("net-{namespace}.udp-{port}.lock"),
    ]
    .iter()
    .map(|name| dir.join(name))
    .collect();
    if let Ok(entries) = fs::read_dir(dir) {
        paths.extend(entries.filter_map(|e| Some(e.ok()?.path())));
    }
    for path in paths {
        let shown = path.display();
        let opened = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .or_else(|_| fs::File::open(&path));
        let file = match opened {
            Ok(file) => file,
            Err(e) => {
                println!("cannot open {shown}: {e}");
                continue;
            }
        };
        // SAFETY: flock(2) on a descriptor `file` owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            println!("locked {shown}");
        } else {
            println!(
                "opened but cannot lock {shown}: {}",
                io::Error::last_os_error()
            );
        }
        kept.push(Box::new(file));
    }
    println!("squatting");
    // Bounded: the test kills it long before.
    std::thread::sleep(Duration::from_secs(60));
    drop(kept);
}

/// Waits (at most 10 s) for `process` to print `line` on its standard output; its output so far.
fn wait_for_line(process: &mut Process, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let said = process.stdout();
        if said.lines().any(|l| l.trim_end().ends_with(line)) {
            return said;
        }
        let exited = process.try_status().ok().flatten();
        if exited.is_some() || Instant::now() >= deadline {
            panic!(
                "no `{line}` from it ({exited:?}): {said}{}",
                process.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_unprivileged_user_cannot_keep_a_root_relay_from_its_device_or_port() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = testbed();
    let _b = relay(&bed, Host::B, "tunfwd-b");
    // A first relay on A comes and goes, so its lock files are there for the squatter to try.
    let mut first = relay(&bed, Host::A, "tunfwd-a-first");
    let status = first
        .terminate(Duration::from_secs(10))
        .expect("the first relay A stops on SIGTERM");
    assert!(status.success(), "{status}: {}", first.stderr());

    let helper = std::env::current_exe().unwrap();
    let args: Vec<String> = [
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
        "env",
        &format!("{SQUAT}={}", testbed::TUNNEL_PORT),
        helper.to_str().unwrap(),
        "--exact",
        "squat_as_an_unprivileged_user",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut squatter = bed
        .spawn(Host::A, "squatter", Path::new("setpriv"), &args)
        .expect("starting the squatter");
    let said = wait_for_line(&mut squatter, "squatting");
    eprintln!("the squatter, as uid {NOBODY}:\n{said}");
    assert!(said.contains(&format!("uid {NOBODY}")), "{said}");
    // The review's attack is on: the old locks are the squatter's.
    for name in [
        "tunfwd/dev/tunfwd0".to_string(),
        format!("tunfwd/udp/{}", testbed::TUNNEL_PORT),
    ] {
        assert!(
            said.contains(&format!("bound @{name}")),
            "the squatter could not even bind @{name}, so this test proves nothing: {said}"
        );
    }

    // A root relay on the same device and port starts regardless, and relays.
    let started = Instant::now();
    let _a = bed
        .start_tunfwd(Host::A, "tunfwd-a", &options())
        .unwrap_or_else(|e| {
            panic!(
                "uid {NOBODY} kept root tunfwd from its device or port: {e}\nthe squatter \
                 holds:\n{said}"
            )
        });
    eprintln!(
        "relay A came up in {:?} beside the squatter",
        started.elapsed()
    );
    transfers_verify(&bed, 1_000_000, "with the squatter holding what it could");

    // Nothing of today's locks was the squatter's to take or make, and they are root's alone.
    assert!(
        !said.contains("\nlocked ") && !said.contains("\ncreated "),
        "{said}"
    );
    assert!(
        said.contains(&format!("cannot create {RUNTIME_DIR}")),
        "{said}"
    );
    let locks: Vec<_> = fs::read_dir(RUNTIME_DIR)
        .expect("the lock directory")
        .filter_map(|e| e.ok())
        .collect();
    let dir = fs::symlink_metadata(RUNTIME_DIR).unwrap();
    assert!(dir.is_dir() && dir.uid() == 0, "{dir:?}");
    assert_eq!(dir.permissions().mode() & 0o022, 0, "{dir:?}");
    for lock in &locks {
        let meta = lock.metadata().unwrap();
        if meta.is_file() {
            assert_eq!(meta.uid(), 0, "{:?}", lock.path());
            assert_eq!(meta.permissions().mode() & 0o077, 0, "{:?}", lock.path());
        }
    }
    for tried in said.lines().filter(|l| l.contains(".lock")) {
        assert!(tried.starts_with("cannot open "), "{tried}");
    }
    assert!(
        said.lines().any(|l| l.contains(".dev-tunfwd0.lock")),
        "the squatter tried no lock file: {said}"
    );
}

/// Runs its arguments (a program, then its own) in a mount namespace of its own with /proc
/// mounted with `$1` as options, as root with only the unit's capabilities: no `CAP_SYS_PTRACE`
/// (to see through `hidepid` or read another user's fd links), no `CAP_KILL`, no
/// `CAP_DAC_OVERRIDE`. It first checks (`$2`) that relay `$3` is hidden as asked, and exits 3 if
/// not, so that a test of a hidden relay cannot pass on a visible one:
/// - `fds`: /proc shows the relay but not where its fds lead (systemd's `ProtectProc=invisible`
///   mounts /proc `hidepid=invisible`, and a process in group 0, as root is, still sees every
///   /proc/PID there: proc(5), "gid=");
/// - `pid`: /proc/PID is not there at all.
const HIDDEN: &str = r#"mount -t proc -o "$1" proc /proc || exit 3
check=$2; first=$3; shift 3
exec setpriv --bounding-set -all,+net_admin,+net_bind_service,+setuid,+setgid sh -c '
check=$1; first=$2; shift 2
case $check in
fds) if readlink /proc/$first/fd/0 >/dev/null 2>&1; then
    echo "the fds of PID $first are readable here: nothing is hidden" >&2; exit 3; fi ;;
pid) if [ -e /proc/$first ]; then
    echo "PID $first is visible here: nothing is hidden" >&2; exit 3; fi ;;
esac
exec "$@"' sh "$check" "$first" "$@""#;

#[test]
fn a_second_relay_is_named_at_once_where_proc_hides_the_first() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bed = testbed();
    // The first relay switches to uid 65534 once set up, as the unit's do with --user.
    let mut with_user: Vec<&str> = options().to_vec();
    with_user.extend(["--user", "nobody"]);
    let mut first = bed
        .start_tunfwd(Host::A, "tunfwd-a", &with_user)
        .unwrap_or_else(|e| panic!("relay A: {e}"));
    let _b = relay(&bed, Host::B, "tunfwd-b");
    let first_pid = first.pid().expect("relay A runs");
    transfers_verify(&bed, 1_000_000, "before the second relay");

    for (proc_options, hidden) in [
        // As the unit's ProtectProc=invisible: the relay is there, its fds are not readable.
        ("hidepid=invisible", "fds"),
        // Stricter: only members of a group nobody here is in would see other users' PIDs.
        ("hidepid=invisible,gid=65533", "pid"),
    ] {
        let mut args: Vec<String> = [
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            HIDDEN,
            "sh",
            proc_options,
            hidden,
            &first_pid.to_string(),
            env!("CARGO_BIN_EXE_tunfwd"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(relay_a_arguments());
        args.extend(["--user".to_string(), "nobody".to_string()]);
        let started = Instant::now();
        let mut second = bed
            .spawn(
                Host::A,
                &format!("tunfwd-a-second-{hidden}"),
                Path::new("unshare"),
                &args,
            )
            .expect("starting the second relay");
        let status = second.wait_for(Duration::from_secs(5)).unwrap_or_else(|e| {
            panic!(
                "{proc_options}: the second relay, whose /proc hides the first's {hidden}, did \
                 not exit within 5 s: it waited for a live relay as if it were exiting ({e})"
            )
        });
        let took = started.elapsed();
        let stderr = second.stderr();
        assert_eq!(status.code(), Some(1), "{proc_options}: {stderr}");
        assert!(
            took < Duration::from_secs(3),
            "{proc_options}: took {took:?}: {stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "device tunfwd0 is already served by PID {first_pid} ("
            )) && stderr.contains("tunfwd --peer"),
            "{proc_options}: the second relay's error does not name the first (PID \
             {first_pid}): {stderr}"
        );
        eprintln!(
            "{proc_options}: the second relay exited 1 after {took:?}: {}",
            stderr.trim()
        );
    }

    assert!(
        first.try_status().unwrap().is_none(),
        "relay A died: {}",
        first.stderr()
    );
    assert_eq!(tun_queues(&bed, Host::A), Some(4));
    transfers_verify(&bed, 1_000_000, "after the second relays");
}
