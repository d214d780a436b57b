//! Writes the committed seed corpora under fuzz/seeds/<target>/: a handful of small inputs per
//! target, each aimed at one path the target should reach from its first execution (a clean run
//! to merge, a short last datagram, a known-good super-packet per GSO type, a kernel-written
//! control message). The fuzzer finds the rest from these.
//!
//!     cd fuzz && cargo run --example make-seeds

use std::fs;
use std::path::Path;
use tunfwd_fuzz::gro::{self, MUTATE, PERSIST, kind};
use tunfwd_fuzz::{Fields, ipv6_extension, tcp_options};

/// Named inputs for one target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let targets: [(&str, Seeds); 11] = [
        ("source_ports", source_port_seeds()),
        ("coalesce_round_trip", coalesce_seeds()),
        ("split_vnet", split_seeds()),
        ("steer_cbpf", steer_seeds()),
        ("gro_cmsg", cmsg_seeds()),
        ("control_messages", control_seeds()),
        ("error_queue", error_queue_seeds()),
        ("netlink_answers", netlink_seeds()),
        ("receive_plan", receive_plan_seeds()),
        ("icmp_too_big", icmp_too_big_seeds()),
        ("receive_control", receive_control_seeds()),
    ];
    // tunfwd-wireguard's targets take the messages its fixed test devices really exchange.
    let wireguard = tunfwd_wireguard::fuzzing::seeds();
    for (target, _, _) in &wireguard {
        let _ = fs::remove_dir_all(root.join(target));
    }
    for (target, name, bytes) in wireguard {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("create the seed directory");
        fs::write(dir.join(name), bytes).expect("write a seed");
    }
    for (target, seeds) in targets {
        let dir = root.join(target);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the seed directory");
        for (name, bytes) in seeds {
            fs::write(dir.join(name), bytes).expect("write a seed");
        }
    }
}

/// An input for `gro::decode`: the header fields in its layout, then the per-datagram ops.
fn gro_input(
    shape: u8,
    pieces: usize,
    payload: u16,
    last_payload: u16,
    seq: u32,
    id: u16,
    ops: &[u8],
) -> Vec<u8> {
    let mut v = vec![shape, (pieces - 1) as u8];
    v.extend_from_slice(&(payload - 1).to_be_bytes());
    v.extend_from_slice(&(last_payload - 1).to_be_bytes());
    v.push(0x5a);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(ops);
    v
}

fn coalesce_seeds() -> Seeds {
    let timestamps = 2 << gro::TCP_OPTIONS_SHIFT;
    let psh_on_third = [0, 0, MUTATE | kind::FLAGS, 0x08];
    let extension_then_clean = [
        MUTATE | kind::IPV6_EXTENSIONS,
        3,
        MUTATE | PERSIST | kind::IPV6_EXTENSIONS,
        1,
    ];
    let mixed = [
        0,
        MUTATE | kind::WINDOW,
        0x10,
        0,
        MUTATE | kind::ID,
        9,
        MUTATE | PERSIST | kind::SOURCE_PORT,
        1,
        0,
        MUTATE | kind::BAD_L4_CHECKSUM,
        1,
        0,
        MUTATE | kind::GARBAGE,
        3,
        0,
    ];
    let mut raw = vec![gro::RAW, 0, 100];
    raw.extend((0..300u32).map(|i| (i * 7 + 3) as u8));
    vec![
        ("tcp4-clean", gro_input(0, 10, 1000, 1, 1000, 7, &[])),
        (
            "tcp6-timestamps-short-last",
            gro_input(
                gro::IPV6 | timestamps | gro::SHORT_LAST,
                20,
                1388,
                100,
                5,
                0,
                &[],
            ),
        ),
        (
            "udp4-tiny-last",
            gro_input(gro::UDP | gro::SHORT_LAST, 8, 1200, 1, 0, 1, &[]),
        ),
        (
            "udp6",
            gro_input(gro::IPV6 | gro::UDP, 5, 500, 1, 0, 0, &[]),
        ),
        (
            "tcp6-extension-headers",
            gro_input(gro::IPV6, 6, 400, 1, 0, 0, &extension_then_clean),
        ),
        (
            "tcp4-psh-third",
            gro_input(0, 6, 700, 1, 9, 100, &psh_on_third),
        ),
        ("tcp4-mixed-changes", gro_input(0, 9, 300, 1, 0, 0, &mixed)),
        ("tcp4-over-run-limit", gro_input(0, 70, 100, 1, 0, 0, &[])),
        (
            "tcp4-64k",
            gro_input(gro::LARGE | gro::SHORT_LAST, 12, 8000, 555, 0, 0, &[]),
        ),
        ("raw", raw),
    ]
}

/// A virtio_net_hdr (include/uapi/linux/virtio_net.h), host byte order, with `hdr_len` the
/// packet's IP and transport headers, and the packet.
fn with_vnet(flags: u8, gso_type: u8, gso_size: u16, csum: (u16, u16), packet: &Fields) -> Vec<u8> {
    let mut v = vec![flags, gso_type];
    v.extend_from_slice(&(packet.header_len() as u16).to_ne_bytes());
    v.extend_from_slice(&gso_size.to_ne_bytes());
    v.extend_from_slice(&csum.0.to_ne_bytes());
    v.extend_from_slice(&csum.1.to_ne_bytes());
    v.extend_from_slice(&packet.build());
    v
}

fn fields(ipv6: bool, udp: bool, payload_len: usize, change: impl Fn(&mut Fields)) -> Fields {
    let mut f = Fields::new(ipv6, udp);
    f.payload = (0..payload_len).map(|i| (i * 31 + 7) as u8).collect();
    change(&mut f);
    f
}

fn packet(ipv6: bool, udp: bool, payload_len: usize, change: impl Fn(&mut Fields)) -> Vec<u8> {
    fields(ipv6, udp, payload_len, change).build()
}

fn split_seeds() -> Seeds {
    const NEEDS_CSUM: u8 = 1;
    let (tcp4, tcp6, udp_l4, ecn) = (1, 4, 5, 0x80);
    vec![
        (
            "tcp4",
            with_vnet(
                NEEDS_CSUM,
                tcp4,
                500,
                (20, 16),
                &fields(false, false, 1200, |_| {}),
            ),
        ),
        (
            "tcp6-ecn-psh-fin",
            with_vnet(
                NEEDS_CSUM,
                tcp6 | ecn,
                400,
                (40, 16),
                &fields(true, false, 900, |f| {
                    f.tcp_options = tcp_options(12, 99);
                    f.flags = 0x80 | 0x10 | 0x08 | 0x01;
                }),
            ),
        ),
        (
            "tcp6-extension-headers",
            with_vnet(
                NEEDS_CSUM,
                tcp6,
                300,
                (64, 16),
                &fields(true, false, 700, |f| {
                    f.ipv6_extensions = [0, 43, 60].map(ipv6_extension).to_vec()
                }),
            ),
        ),
        (
            "udp4",
            with_vnet(
                NEEDS_CSUM,
                udp_l4,
                300,
                (20, 6),
                &fields(false, true, 700, |_| {}),
            ),
        ),
        (
            "udp6",
            with_vnet(
                NEEDS_CSUM,
                udp_l4,
                100,
                (40, 6),
                &fields(true, true, 333, |_| {}),
            ),
        ),
        (
            "plain-needs-csum",
            with_vnet(
                NEEDS_CSUM,
                0,
                0,
                (20, 16),
                &fields(false, false, 50, |_| {}),
            ),
        ),
        (
            "tcp4-options-no-payload",
            with_vnet(
                0,
                tcp4,
                1,
                (0, 0),
                &fields(false, false, 0, |f| f.ipv4_options = vec![1; 12]),
            ),
        ),
    ]
}

fn steer_seeds() -> Seeds {
    let with_workers = |workers: u16, p: Vec<u8>| {
        let mut v = workers.to_be_bytes().to_vec();
        v.extend(p);
        v
    };
    let mut icmp6 = packet(true, true, 8, |_| {});
    icmp6[6] = 58;
    vec![
        ("tcp4", with_workers(4, packet(false, false, 10, |_| {}))),
        ("udp6", with_workers(3, packet(true, true, 10, |_| {}))),
        (
            "fragment4",
            with_workers(8, packet(false, true, 10, |f| f.fragment_word = 0x2000)),
        ),
        (
            "udp4-options",
            with_workers(2, packet(false, true, 4, |f| f.ipv4_options = vec![1; 8])),
        ),
        ("icmp6", with_workers(1, icmp6)),
        ("short", with_workers(256, vec![0x45, 0, 0])),
    ]
}

/// One control message: `struct cmsghdr` (include/linux/socket.h) and its data, padded to
/// `CMSG_ALIGN`.
fn cmsg(len: usize, level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
    let mut v = len.to_ne_bytes().to_vec();
    v.extend_from_slice(&level.to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(8) * 8, 0);
    v
}

fn cmsg_seeds() -> Seeds {
    let gro = |len: usize, size: i32| cmsg(len, libc::SOL_UDP, libc::UDP_GRO, &size.to_ne_bytes());
    let mut after_timestamp = cmsg(32, libc::SOL_SOCKET, libc::SO_TIMESTAMP, &[7; 16]);
    after_timestamp.extend(gro(20, 1380));
    vec![
        ("gro-1420", gro(20, 1420)),
        ("timestamp-then-gro", after_timestamp),
        ("gro-zero-size", gro(20, 0)),
        (
            "zero-len",
            cmsg(0, libc::SOL_UDP, libc::UDP_GRO, &[1, 2, 3, 4]),
        ),
        (
            "other-level",
            cmsg(20, libc::SOL_IP, libc::UDP_GRO, &1000i32.to_ne_bytes()),
        ),
    ]
}

/// What `udp_recvmsg` writes with `SO_TIMESTAMPNS`, `UDP_GRO` and `IP_RECVTOS` on: the time
/// (`sock_recv_cmsgs`) first, then the segment size, then the TOS; and the same cut inside the
/// timespec, and with an IPv6 traffic class.
fn receive_control_seeds() -> Seeds {
    let mut timespec = 1_700_000_000i64.to_ne_bytes().to_vec();
    timespec.extend_from_slice(&123_456_789i64.to_ne_bytes());
    let time = cmsg(32, libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS, &timespec);
    let gro = cmsg(20, libc::SOL_UDP, libc::UDP_GRO, &1380i32.to_ne_bytes());
    let tos = cmsg(17, libc::SOL_IP, libc::IP_TOS, &[0x02]);
    let tclass = cmsg(
        20,
        libc::SOL_IPV6,
        libc::IPV6_TCLASS,
        &0x03i32.to_ne_bytes(),
    );
    let cut = cmsg(28, libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS, &timespec[..12]);
    vec![
        ("time-gro-tos", [time.clone(), gro.clone(), tos].concat()),
        ("time-tclass", [time, tclass].concat()),
        ("gro-then-cut-time", [gro, cut].concat()),
    ]
}

/// A probe of 120 bytes, a hello echoing a cookie, a probe's acknowledgement, and an IPv4 header (not a control message).
fn control_seeds() -> Seeds {
    use tunfwd::fuzzing::control::{Control, Kind};
    let probe = Control {
        kind: Kind::Probe,
        nonce: 0x0123_4567_89ab_cdef,
        size: 148,
        cookie: 0,
        taken: false,
    };
    let mut probe_bytes = vec![0u8; 120];
    probe.write(&mut probe_bytes, 120).expect("room");
    // A hello from an extra port, echoing the receiver's cookie (36 + 8 bytes).
    let echo = Control {
        cookie: 0xc00c1e,
        size: 64,
        ..probe
    };
    let mut echo_bytes = vec![0u8; 64];
    let echo_len = echo.write(&mut echo_bytes, 36).expect("room");
    echo_bytes.truncate(echo_len);
    let mut ack = vec![0u8; tunfwd::fuzzing::control::HEADER_LEN];
    probe.ack().write(&mut ack, 0).expect("room");
    let advertisement = advertisement(7, &[40000, 40001, 65535]);
    let mut ports_ack = vec![0u8; tunfwd::fuzzing::control::PORTS_ACK_LEN];
    Control::parse(&advertisement)
        .expect("an advertisement")
        .ports_ack(0xc00c1e, true)
        .write(&mut ports_ack, 0)
        .expect("room");
    vec![
        ("probe", probe_bytes),
        ("probe-echo", echo_bytes),
        ("ack", ack),
        ("ports", advertisement),
        ("ports-ack", ports_ack),
        ("ipv4", vec![0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 17, 0, 0]),
    ]
}

/// An advertisement of `ports` (`wire::control`, kind 3) with nonce `nonce`.
fn advertisement(nonce: u64, ports: &[u16]) -> Vec<u8> {
    echoing(nonce, ports, 0xc00c1e)
}

/// The same, echoing the cookie `echo`.
fn echoing(nonce: u64, ports: &[u16], echo: u64) -> Vec<u8> {
    let a =
        tunfwd::fuzzing::control::Advertisement::new(nonce, 0x5e55, echo, ports).expect("ports");
    let mut bytes = vec![0u8; a.wire_len()];
    a.write(&mut bytes).expect("room");
    bytes
}

/// Two advertisements in turn (the first byte says where the second starts): one that replaces
/// the other's ports in part, one of none, one of many.
fn source_port_seeds() -> Seeds {
    let pair = |first: Vec<u8>, second: Vec<u8>| {
        let mut input = vec![first.len() as u8];
        input.extend(first);
        input.extend(second);
        input
    };
    // The target's cookie is the input's second and third bytes: the first datagram's first
    // two, 0x45 0x00.
    const COOKIE: u64 = 0x4500;
    let max = tunfwd::fuzzing::control::MAX_PORTS;
    let many: Vec<u16> = (1..=2 * max as u16).map(|i| 30000 + 7 * i).collect();
    vec![
        (
            "replace",
            pair(
                echoing(1, &[40000, 40001], COOKIE),
                echoing(2, &[40001, 50000], COOKIE),
            ),
        ),
        (
            "none-after-some",
            pair(echoing(1, &[9], COOKIE), echoing(2, &[], COOKIE)),
        ),
        ("many", pair(echoing(3, &many[..max], COOKIE), Vec::new())),
        (
            "unproven-changes-nothing",
            pair(echoing(1, &[40000, 40001], COOKIE), echoing(2, &[50000], 0)),
        ),
        (
            "unproven-many-ports",
            pair(
                echoing(1, &many[..max / 2], COOKIE),
                echoing(2, &many[max..], 7),
            ),
        ),
    ]
}

/// One `IP_RECVERR` message: a `sock_extended_err` (errno, origin, type, code, pad, info, data)
/// and the offender's address, as `ip_icmp_error` and `ip_local_error` queue them.
fn extended_error(
    level: i32,
    kind: i32,
    errno: i32,
    origin: u8,
    icmp: (u8, u8),
    info: u32,
) -> Vec<u8> {
    let mut value = Vec::new();
    value.extend_from_slice(&(errno as u32).to_ne_bytes());
    value.extend_from_slice(&[origin, icmp.0, icmp.1, 0]);
    value.extend_from_slice(&info.to_ne_bytes());
    value.extend_from_slice(&0u32.to_ne_bytes());
    value.extend_from_slice(&[0u8; 16]);
    let mut m = Vec::new();
    m.extend_from_slice(&(16 + value.len()).to_ne_bytes());
    m.extend_from_slice(&level.to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&value);
    m
}

/// A fragmentation-needed for 1400, a port unreachable, an ICMPv6 packet-too-big, and the local
/// stack's "message too long" for 1280; each after the input's first byte, which cuts a name of
/// that many bytes (modulo 29) off the end: here a `sockaddr_in` of the target's peer, or of
/// another address for the frag-needed.
fn error_queue_seeds() -> Seeds {
    let (v4, v6) = (
        (libc::SOL_IP, libc::IP_RECVERR),
        (libc::SOL_IPV6, libc::IPV6_RECVERR),
    );
    let named = |control: Vec<u8>, to: [u8; 4]| {
        let mut input = vec![16];
        input.extend_from_slice(&control);
        input.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        input.extend_from_slice(&55555u16.to_be_bytes());
        input.extend_from_slice(&to);
        input.extend_from_slice(&[0; 8]);
        input
    };
    let (peer, elsewhere) = ([198, 18, 0, 2], [203, 0, 113, 7]);
    let frag_needed = || {
        extended_error(
            v4.0,
            v4.1,
            libc::EMSGSIZE,
            libc::SO_EE_ORIGIN_ICMP,
            (3, 4),
            1400,
        )
    };
    vec![
        ("frag-needed", named(frag_needed(), peer)),
        ("frag-needed-elsewhere", named(frag_needed(), elsewhere)),
        (
            "port-unreachable",
            named(
                extended_error(
                    v4.0,
                    v4.1,
                    libc::ECONNREFUSED,
                    libc::SO_EE_ORIGIN_ICMP,
                    (3, 3),
                    0,
                ),
                peer,
            ),
        ),
        (
            "packet-too-big",
            named(
                extended_error(
                    v6.0,
                    v6.1,
                    libc::EMSGSIZE,
                    libc::SO_EE_ORIGIN_ICMP6,
                    (2, 0),
                    1280,
                ),
                peer,
            ),
        ),
        (
            "local",
            named(
                extended_error(
                    v4.0,
                    v4.1,
                    libc::EMSGSIZE,
                    libc::SO_EE_ORIGIN_LOCAL,
                    (0, 0),
                    1280,
                ),
                peer,
            ),
        ),
    ]
}

/// Receives as `receive_plan` reads them (flags, GRO size, outer TOS, payload): two TCP segments
/// of one flow that merge under a GRO size, a UDP datagram marked CE outside, and a cut control
/// area over an IPv6 packet.
fn receive_plan_seeds() -> Seeds {
    let tcp = |seq: u32| packet(false, false, 100, |f| f.seq = seq);
    let mut merge = vec![0b0110];
    merge.extend_from_slice(&(tcp(0).len() as u16).to_be_bytes());
    merge.push(0);
    merge.extend_from_slice(&tcp(0));
    merge.extend_from_slice(&tcp(100));
    let mut ce = vec![0b1000, 0, 0, 0x03];
    ce.extend_from_slice(&packet(false, true, 64, |_| {}));
    let mut cut = vec![0b0001, 0, 0, 0];
    cut.extend_from_slice(&packet(true, false, 40, |_| {}));
    vec![("tcp-merge", merge), ("udp-ce", ce), ("cut-v6", cut)]
}

/// An MTU, then a packet: a full-sized IPv4 TCP segment (with DF) to be told 1252, an IPv6 one
/// to be told 1280, and a short IPv4 one under the 576 floor (no answer).
fn icmp_too_big_seeds() -> Seeds {
    let with_mtu = |mtu: u16, packet: Vec<u8>| {
        let mut input = mtu.to_be_bytes().to_vec();
        input.extend_from_slice(&packet);
        input
    };
    vec![
        (
            "v4-1252",
            with_mtu(1252, packet(false, false, 1432, |_| {})),
        ),
        ("v6-1280", with_mtu(1280, packet(true, false, 1400, |_| {}))),
        ("v4-floor", with_mtu(500, packet(false, false, 10, |_| {}))),
    ]
}

/// The fuzz input's tuple (sequence, port, dump) as `arbitrary` reads it, then an answer with
/// that sequence and port: an `RTM_NEWLINK` with an MTU attribute, then an ack.
fn netlink_seeds() -> Seeds {
    let message = |kind: u16, payload: &[u8]| {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&7u32.to_ne_bytes());
        m.extend_from_slice(&99u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m
    };
    let mut link = vec![0u8; 16];
    link.extend_from_slice(&8u16.to_ne_bytes());
    link.extend_from_slice(&libc::IFLA_MTU.to_ne_bytes());
    link.extend_from_slice(&1420u32.to_ne_bytes());
    let mut input = Vec::new();
    input.extend_from_slice(&7u32.to_le_bytes());
    input.extend_from_slice(&99u32.to_le_bytes());
    input.push(1);
    input.extend_from_slice(&message(libc::RTM_NEWLINK, &link));
    input.extend_from_slice(&message(libc::NLMSG_ERROR as u16, &0i32.to_ne_bytes()));
    vec![("link-then-ack", input)]
}
