//! `garbage`: malformed datagrams aimed at a tunnel's UDP port, of five kinds, each counted with
//! the drop reason tunfwd must give it; from a socket of its own, or in raw IPv4 packets from a
//! relay's own address and port.

use crate::{monotonic_ns, print_json, wildcard_for, with_context};
use serde::ser::{Serialize, SerializeMap, Serializer};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;
use tunfwd_testkit::packets::Fields;

/// The kinds of malformed datagram `garbage` sends, in the order it sends them, each with the
/// drop reason tunfwd must count it under (`DropReason`'s names; the unit tests check each
/// against tunfwd's validation).
const GARBAGE_KINDS: [(&str, &str); 5] = [
    ("random", "bad_ip_version"),
    ("truncated", "ip_length_mismatch"),
    ("oversized", "ip_length_mismatch"),
    ("bad_version", "bad_ip_version"),
    ("too_short", "bad_ip_header"),
];

#[derive(serde::Serialize)]
struct Report {
    mode: &'static str,
    from: Option<SocketAddr>,
    sent: u64,
    kinds: usize,
    per_kind: u32,
    sent_by_kind: ByKind<u64>,
    drop_reason_by_kind: ByKind<&'static str>,
    started_ns: u64,
    ended_ns: u64,
}

/// One value per kind, written as a JSON object keyed by the kinds' names, in
/// [`GARBAGE_KINDS`]' order.
struct ByKind<T>([T; GARBAGE_KINDS.len()]);

impl<T: Serialize> Serialize for ByKind<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(GARBAGE_KINDS.len()))?;
        for ((name, _), value) in GARBAGE_KINDS.iter().zip(&self.0) {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// The malformed datagrams `garbage` sends: `count` rounds of one of each of [`GARBAGE_KINDS`],
/// in that order, so datagram `i` is of kind `i % 5`.
fn garbage_datagrams(count: u32) -> Vec<Vec<u8>> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // A valid 60-byte IPv4/ICMP packet, corrupted in specific ways below.
    let mut valid = [0u8; 60];
    valid[0] = 0x45;
    valid[2..4].copy_from_slice(&60u16.to_be_bytes());
    valid[8] = 64;
    valid[9] = 1;
    valid[12..16].copy_from_slice(&[198, 19, 0, 99]);
    valid[16..20].copy_from_slice(&[198, 19, 0, 1]);
    let mut out = Vec::new();
    for _ in 0..count {
        // Random bytes whose first nibble is never 4 or 6, so they cannot pass as IP by chance,
        // and at least as long as an IPv4 header, so that only their version is wrong (a relay
        // may judge a shorter datagram by its length alone).
        let mut junk: Vec<u8> = (0..(random() % 1381 + 20))
            .map(|_| random() as u8)
            .collect();
        junk[0] = (junk[0] & 0x0f) | [0x00, 0x10, 0x50, 0x70, 0xf0][(random() % 5) as usize];
        out.push(junk);
        out.push(valid[..40].to_vec()); // truncated: the header still says 60
        let mut oversized = valid.to_vec();
        oversized.extend_from_slice(&[0u8; 100]); // the header says 60, the datagram has 160
        out.push(oversized);
        let mut version = valid.to_vec();
        version[0] = 0x55;
        out.push(version);
        out.push(vec![0x45, 0, 0]); // shorter than any IP header
    }
    out
}

/// An IPv4 packet carrying `payload` in a UDP datagram from `from` to `to`, both checksums set
/// (no DF, identification 0).
fn udp_in_ipv4(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut fields = Fields::new(false, true);
    fields.source[..4].copy_from_slice(&from.ip().octets());
    fields.destination[..4].copy_from_slice(&to.ip().octets());
    fields.source_port = from.port();
    fields.destination_port = to.port();
    fields.id = 0;
    fields.fragment_word = 0;
    fields.payload = payload.to_vec();
    fields.build()
}

/// Sends datagrams to one destination: from a socket of its own, or in raw IPv4 packets from a
/// given address and port.
enum DatagramSender {
    Bound {
        socket: UdpSocket,
        to: SocketAddr,
    },
    /// A raw socket (`IPPROTO_RAW`, which implies `IP_HDRINCL`, raw(7)): the packets it sends
    /// carry their own IPv4 header, so their source is whatever the header says. It is driven
    /// through `UdpSocket`'s safe `send_to`, which works on any datagram-like fd.
    Raw {
        socket: UdpSocket,
        from: SocketAddrV4,
        to: SocketAddrV4,
    },
}

impl DatagramSender {
    fn new(to: SocketAddr, from: Option<SocketAddr>) -> io::Result<DatagramSender> {
        let Some(from) = from else {
            let socket = UdpSocket::bind(wildcard_for(to, 0))?;
            return Ok(DatagramSender::Bound { socket, to });
        };
        let (SocketAddr::V4(from), SocketAddr::V4(to)) = (from, to) else {
            return Err(io::Error::other("--from takes IPv4 only, to an IPv4 --to"));
        };
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .map_err(|e| with_context(e, "raw IPv4 socket for --from (needs root)"))?;
        Ok(DatagramSender::Raw {
            socket: socket.into(),
            from,
            to,
        })
    }

    fn send(&self, payload: &[u8]) -> io::Result<()> {
        match self {
            DatagramSender::Bound { socket, to } => socket.send_to(payload, to).map(drop),
            // The destination port is in the packet; a raw socket's own port is unused.
            DatagramSender::Raw { socket, from, to } => socket
                .send_to(
                    &udp_in_ipv4(*from, *to, payload),
                    SocketAddr::new((*to.ip()).into(), 0),
                )
                .map(drop),
        }
    }
}

/// Sends [`garbage_datagrams`] to `to`, from `from` when given (see [`DatagramSender`]), pausing
/// `interval` after each round (or briefly every 64 datagrams when it is zero). Reports how many
/// of each kind the kernel accepted for sending, and when the first and the last went
/// ([`monotonic_ns`]).
pub fn run(
    to: SocketAddr,
    from: Option<SocketAddr>,
    count: u32,
    interval: Duration,
) -> io::Result<()> {
    let sender = DatagramSender::new(to, from)?;
    let mut sent_by_kind = [0u64; GARBAGE_KINDS.len()];
    let started_ns = monotonic_ns();
    for (i, datagram) in garbage_datagrams(count).iter().enumerate() {
        let kind = i % GARBAGE_KINDS.len();
        if sender.send(datagram).is_ok() {
            sent_by_kind[kind] += 1;
        }
        if !interval.is_zero() {
            if kind == GARBAGE_KINDS.len() - 1 {
                std::thread::sleep(interval);
            }
        } else if (i + 1) % 64 == 0 {
            // Stay a nuisance, not a flood: the point is validation, not overload.
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let ended_ns = monotonic_ns();
    print_json(&Report {
        mode: "garbage",
        from,
        sent: sent_by_kind.iter().sum(),
        kinds: GARBAGE_KINDS.len(),
        per_kind: count,
        sent_by_kind: ByKind(sent_by_kind),
        drop_reason_by_kind: ByKind(GARBAGE_KINDS.map(|(_, reason)| reason)),
        started_ns,
        ended_ns,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunfwd::DropReason;
    use tunfwd::testing::{Control, IpPacket};

    #[test]
    fn raw_garbage_is_a_valid_ipv4_udp_packet_around_it() {
        let (from, to) = (
            "198.18.0.1:55555".parse().unwrap(),
            "198.18.0.2:55555".parse().unwrap(),
        );
        for payload in garbage_datagrams(2) {
            let packet = udp_in_ipv4(from, to, &payload);
            let parsed = etherparse::SlicedPacket::from_ip(&packet).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = &parsed.net else {
                panic!("not IPv4: {packet:02x?}");
            };
            assert_eq!(
                ip.header().to_header().calc_header_checksum(),
                ip.header().header_checksum()
            );
            assert_eq!(ip.header().source(), [198, 18, 0, 1]);
            assert_eq!(
                (ip.header().identification(), ip.header().dont_fragment()),
                (0, false)
            );
            let Some(etherparse::TransportSlice::Udp(udp)) = &parsed.transport else {
                panic!("not UDP: {packet:02x?}");
            };
            assert_eq!((udp.source_port(), udp.destination_port()), (55555, 55555));
            assert_eq!(udp.payload(), &payload[..]);
            let expected = udp
                .to_header()
                .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
                .unwrap();
            assert_eq!(udp.checksum(), expected);
        }
    }

    /// Each datagram fails tunfwd's validation for the reason `garbage` reports for its kind,
    /// which is what a test compares the relay's drop counters with.
    #[test]
    fn every_garbage_datagram_is_rejected_for_the_reason_of_its_kind() {
        let datagrams = garbage_datagrams(1000);
        assert_eq!(datagrams.len(), 5000);
        for (i, d) in datagrams.iter().enumerate() {
            let (kind, reason) = GARBAGE_KINDS[i % GARBAGE_KINDS.len()];
            // Nor is any of them a relay-to-relay control message, which is not validated; and
            // only the short kind is shorter than an IPv4 header.
            assert_eq!(Control::parse(d), None, "{kind}: {d:02x?}");
            assert_eq!(d.len() < 20, kind == "too_short", "{kind}: {d:02x?}");
            let error = IpPacket::new_checked(&d[..])
                .err()
                .unwrap_or_else(|| panic!("{kind} passed: {d:02x?}"));
            assert_eq!(DropReason::from(error).name(), reason, "{kind}: {d:02x?}");
        }
    }

    #[test]
    fn the_report_names_each_kind_in_order() {
        let json = serde_json::to_string(&ByKind([1u64, 2, 3, 4, 5])).unwrap();
        assert_eq!(
            json,
            r#"{"random":1,"truncated":2,"oversized":3,"bad_version":4,"too_short":5}"#
        );
    }
}
