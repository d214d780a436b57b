//! `simpletun`: a baseline, not a product. It exists only so benchmarks can compare tunfwd with
//! the classic tutorial tunnel, and it keeps that tunnel's design on purpose: one `poll()` loop
//! over a plain TUN fd and a TCP socket, one `read()` per packet, each relayed as a 2-byte
//! big-endian length and then the packet (two writes, Nagle left on), no batching, no offloads.
//! Written here from that description.

use clap::Parser;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use tunfwd::testing::tun;
use tunfwd_testkit::testbed::ip;

#[derive(Parser)]
#[command(
    name = "simpletun",
    about = "Baseline tunnel for benchmarks only: TUN over one TCP stream, one packet per syscall"
)]
struct Args {
    /// TUN device name.
    #[arg(long, default_value = "stun0")]
    dev: String,
    /// Address for the device, ADDR/PREFIX (as `ip address add` takes it). Repeatable.
    #[arg(long = "address")]
    addresses: Vec<String>,
    #[arg(long, default_value_t = 1420)]
    mtu: u32,
    /// Server mode: accept one connection here.
    #[arg(long, conflicts_with = "connect")]
    listen: Option<SocketAddr>,
    /// Client mode: connect to the server here.
    #[arg(long)]
    connect: Option<SocketAddr>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("simpletun: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> io::Result<()> {
    let fd = tun::open_plain(&args.dev).map_err(io::Error::other)?;
    // Configured the tutorial's way, with iproute2: setup is not what the baseline measures.
    ip(&[
        "link",
        "set",
        "dev",
        &args.dev,
        "mtu",
        &args.mtu.to_string(),
    ])?;
    for address in &args.addresses {
        ip(&["address", "add", address, "dev", &args.dev])?;
    }
    ip(&["link", "set", "dev", &args.dev, "up"])?;
    let mut tun = File::from(fd);
    let mut net = match (args.listen, args.connect) {
        (Some(listen), None) => {
            eprintln!("simpletun: {} up, waiting on {listen}", args.dev);
            TcpListener::bind(listen)?.accept()?.0
        }
        (None, Some(server)) => {
            let started = Instant::now();
            loop {
                match TcpStream::connect(server) {
                    Ok(s) => break s,
                    Err(_) if started.elapsed() < Duration::from_secs(10) => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "give exactly one of --listen or --connect",
            ));
        }
    };
    eprintln!("simpletun: {} up: connected", args.dev);
    let mut packet = vec![0u8; 65536];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: tun.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: net.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let n = tun.read(&mut packet)?;
            net.write_all(&(n as u16).to_be_bytes())?;
            net.write_all(&packet[..n])?;
        }
        if fds[1].revents & (libc::POLLIN | libc::POLLHUP) != 0 {
            let mut length = [0u8; 2];
            if let Err(e) = net.read_exact(&mut length) {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    return Ok(()); // the other end closed
                }
                return Err(e);
            }
            let n = usize::from(u16::from_be_bytes(length));
            net.read_exact(&mut packet[..n])?;
            tun.write_all(&packet[..n])?;
        }
    }
}
