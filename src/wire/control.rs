//! Relay-to-relay control messages: the path MTU probes and their acknowledgements
//! (`relay::plpmtud`, RFC 8899's datagram PLPMTUD), and the source ports a relay advertises for
//! outer flow entropy with theirs (`relay::entropy`). PURE.
//!
//! In the raw wire format every UDP payload is one inner IP packet. A control message is one
//! too, as far as a relay that does not know them can tell: an IPv4 header (RFC 791) from and
//! to 0.0.0.0 with protocol 253 (RFC 3692: for experiments) and TTL 1, exactly as long as the
//! datagram and with a valid checksum, and the message after it. Such a relay (an older
//! tunfwd, socat's TUN-to-UDP relay) writes it into its TUN like any packet, and its IP stack
//! drops it without a word, though not as a martian: `ip_route_input_slow` (net/ipv4/route.c)
//! takes a packet from 0.0.0.0 to 0.0.0.0 as a limited broadcast (`brd_input`, before its
//! zero-address checks), so it is delivered locally, where no protocol handles 253 (counted as
//! `InUnknownProtos`; raw sockets of that protocol, and packet sniffers, do see it), and no ICMP
//! protocol unreachable answers it (`icmp_send` sends nothing about a broadcast, net/ipv4/icmp.c;
//! RFC 1122 section 3.2.2). It is never forwarded. It must be an IP
//! packet: a TUN refuses a write whose first nibble is neither 4 nor 6 (`tun_get_user` in
//! drivers/net/tun.c), and socat exits on the first write refused. No real traffic goes to
//! 0.0.0.0, so nothing a host sends is taken for a control message. Such a peer never
//! acknowledges a probe, and the prober then knows it cannot confirm anything (see
//! `relay::plpmtud`); nor an advertisement, so the advertiser keeps to the listen tuple
//! (`relay::entropy`).
//!
//! ```text
//!  0 ..... 19      20     21     22     23     24 ........ 31   32 .. 33   34 .. 35   36 ...
//! +--------------+------+------+------+------+----------------+----------+--------+-------+
//! | IPv4, 0 -> 0 | 0x00 | 'T'  | 'F'  | kind | nonce (u64 BE) | size BE  | 0 0    | zeros |
//! +--------------+------+------+------+------+----------------+----------+--------+-------+
//! ```
//! `kind` 1 is a probe, 2 its acknowledgement. A probe is padded to the UDP payload that makes
//! an outer IP packet of `size` bytes; the acknowledgement is the 36-byte header alone, echoing
//! the probe's nonce and size. The nonce is random, so an acknowledgement cannot be forged by
//! anyone who did not see the probe. A probe sent from one of the sender's extra ports (outer
//! flow entropy) carries the echo of the receiver's cookie in its first 8 padding bytes (u64 BE,
//! as an advertisement echoes it; 0 for none), which proves to the receiver that the port is
//! the sender's: such a probe is at least `36 + 8` bytes, so a hello grows by 8. Every other
//! padding byte is zero, and a probe shorter than `36 + 8` bytes is all zeros after its header:
//!
//! ```text
//!  0 .. 35          36 ........ 43    44 ...
//! +----------------+----------------+-------+
//! | header, kind 1 | echo u64 BE    | zeros |
//! +----------------+----------------+-------+
//! ```
//!
//! `kind` 3 is an advertisement: the source ports its sender sends from besides its listen
//! port. `size` is their number N (at most [`MAX_PORTS`]), and the header is followed by the
//! sender's session (a random u64 it keeps while it runs, so that a restart shows), the echo
//! (the receiver's cookie as the sender last learned it from an acknowledgement, 0 for none) and
//! N ports, big-endian, none of them 0; the datagram is exactly `36 + 16 + 2N` bytes:
//!
//! ```text
//!  0 .. 35          36 ........ 43    44 ........ 51   52 53   54 55   ...
//! +----------------+----------------+----------------+-------+-------+-----
//! | header, kind 3 | session u64 BE | echo u64 BE    | port  | port  | ...
//! +----------------+----------------+----------------+-------+-------+-----
//! ```
//! `kind` 4 acknowledges one: the header, echoing its nonce and N, with the reserved field's
//! first byte 1 if the acknowledging relay took the advertisement (it echoed its cookie, current
//! or previous) and 0 if not (every other reserved byte, and both in every other kind, 0), and
//! the acknowledging relay's cookie (u64 BE, never 0), `36 + 8` bytes. Only a relay whose advertisement was
//! acknowledged sends from those ports, and its peer accepts datagrams from exactly those; only
//! an advertisement that echoes the receiver's cookie may take ports away or tell of a restart
//! (see `relay::entropy`).

/// Bytes of the IPv4 header a control message starts with.
pub const WRAP_LEN: usize = 20;
/// Bytes of a control message's header, that IPv4 header included; an acknowledgement is
/// exactly this long.
pub const HEADER_LEN: usize = WRAP_LEN + 16;
/// The IPv4 protocol number of a control message's header (RFC 3692).
const WRAP_PROTOCOL: u8 = 253;
/// Source ports one advertisement names, at most: the most extra tuples a relay sends from
/// (`relay::entropy::MAX_TUPLES`), so a peer's advertisement costs a receiver at most this many
/// bits set and cleared.
pub const MAX_PORTS: usize = 16;
/// Bytes of an advertisement's session field, after the header.
pub const SESSION_LEN: usize = 8;
/// Bytes of an advertisement's echo field, after the session, of an acknowledgement's
/// cookie, after the header, and of a probe's echo, after the header.
pub const COOKIE_LEN: usize = 8;
/// Bytes of an advertisement before its ports.
pub const ADVERTISEMENT_FIXED_LEN: usize = HEADER_LEN + SESSION_LEN + COOKIE_LEN;
/// Bytes of an advertisement's acknowledgement: the header and the cookie.
pub const PORTS_ACK_LEN: usize = HEADER_LEN + COOKIE_LEN;

mod field {
    use super::WRAP_LEN as W;
    use core::ops::Range;
    pub const MAGIC: Range<usize> = W..W + 3;
    pub const KIND: usize = W + 3;
    pub const NONCE: Range<usize> = W + 4..W + 12;
    pub const SIZE: Range<usize> = W + 12..W + 14;
    pub const RESERVED: Range<usize> = W + 14..W + 16;
}

/// The IPv4 header a control message of `total_len` bytes starts with; `None` past 65535.
fn wrapper(total_len: usize) -> Option<[u8; WRAP_LEN]> {
    let total = u16::try_from(total_len).ok()?;
    let mut h = [0u8; WRAP_LEN];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[8] = 1; // TTL
    h[9] = WRAP_PROTOCOL;
    // Addresses 0.0.0.0; the header checksum last.
    let checksum = crate::wire::checksum::Sum::of(&h).finish();
    h[10..12].copy_from_slice(&checksum.to_be_bytes());
    Some(h)
}

const MAGIC: [u8; 3] = [0x00, b'T', b'F'];

/// What a control message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A path MTU probe: answer it with an [`Kind::Ack`] of the same nonce and size.
    Probe,
    /// The acknowledgement of a probe.
    Ack,
    /// The source ports the sender sends from besides its listen port ([`Advertisement`]);
    /// `size` is their number.
    Ports,
    /// The acknowledgement of an advertisement, echoing its nonce and number of ports.
    PortsAck,
}

impl Kind {
    fn to_raw(self) -> u8 {
        match self {
            Kind::Probe => 1,
            Kind::Ack => 2,
            Kind::Ports => 3,
            Kind::PortsAck => 4,
        }
    }
}

/// A control message, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    pub kind: Kind,
    pub nonce: u64,
    /// The outer IP packet size the probe tests (outer IP and UDP headers included).
    pub size: u16,
    /// [`Kind::PortsAck`]: the acknowledging relay's cookie, which its peer's advertisements
    /// echo from then on. [`Kind::Probe`]: the echo of the receiver's cookie (a probe sent from
    /// an extra port; 0: none). 0 otherwise.
    pub cookie: u64,
    /// [`Kind::PortsAck`] only (false otherwise): the acknowledging relay took the
    /// advertisement (it echoed that relay's cookie, current or previous): the reserved
    /// field's first byte is 1 (0: not taken).
    pub taken: bool,
}

/// Whether a datagram may be a control message: IPv4 with protocol 253 from and to 0.0.0.0.
/// Cheap enough to ask of every datagram; [`Control::parse`] says whether it is one.
pub fn is_control(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN
        && datagram[0] == 0x45
        && datagram[9] == WRAP_PROTOCOL
        && datagram[12..WRAP_LEN] == [0; 8]
}

impl Control {
    /// Parses a datagram as a control message. `None` for anything else: a wrong magic or kind,
    /// a nonzero reserved field (but an advertisement's acknowledgement's flag), an acknowledgement of any length but [`HEADER_LEN`], a probe
    /// shorter than its header or with nonzero padding (the padding is all a probe carries, and
    /// a probe with content is not one of ours), an advertisement that is not exactly as
    /// [`Advertisement::parse`] takes it.
    pub fn parse(datagram: &[u8]) -> Option<Control> {
        let header = datagram.get(..HEADER_LEN)?;
        if header[..WRAP_LEN] != wrapper(datagram.len())?
            || header[field::MAGIC] != MAGIC
            || header[field::RESERVED][1] != 0
        {
            return None;
        }
        // The flag of an advertisement's acknowledgement; zero in every other message.
        let taken = match (header[field::KIND], header[field::RESERVED][0]) {
            (_, 0) => false,
            (4, 1) => true,
            _ => return None,
        };
        let size = u16::from_be_bytes(header[field::SIZE].try_into().expect("2 bytes"));
        let kind = match header[field::KIND] {
            1 if datagram[probe_padding(datagram.len())..]
                .iter()
                .all(|b| *b == 0) =>
            {
                Kind::Probe
            }
            2 if datagram.len() == HEADER_LEN => Kind::Ack,
            3 if ports_body(datagram, size).is_some() => Kind::Ports,
            4 if datagram.len() == PORTS_ACK_LEN
                && usize::from(size) <= MAX_PORTS
                && datagram[HEADER_LEN..] != [0; COOKIE_LEN] =>
            {
                Kind::PortsAck
            }
            _ => return None,
        };
        let cookie = match kind {
            Kind::PortsAck => u64::from_be_bytes(datagram[HEADER_LEN..].try_into().ok()?),
            Kind::Probe if datagram.len() >= HEADER_LEN + COOKIE_LEN => u64::from_be_bytes(
                datagram[HEADER_LEN..HEADER_LEN + COOKIE_LEN]
                    .try_into()
                    .ok()?,
            ),
            _ => 0,
        };
        Some(Control {
            kind,
            nonce: u64::from_be_bytes(header[field::NONCE].try_into().expect("8 bytes")),
            size,
            cookie,
            taken,
        })
    }

    /// Writes this message's header into `out` and, for a probe, its echo (if not 0) and zeros
    /// up to `payload_len` bytes. Returns the datagram's length: [`HEADER_LEN`] for a probe's
    /// acknowledgement, [`PORTS_ACK_LEN`] for an advertisement's (its cookie after the header),
    /// `payload_len` (at least [`HEADER_LEN`], and [`HEADER_LEN`] + [`COOKIE_LEN`] with an
    /// echo) for a probe, or `None` if `out` is too short, or for an advertisement, whose ports
    /// only [`Advertisement::write`] has.
    pub fn write(&self, out: &mut [u8], payload_len: usize) -> Option<usize> {
        let len = match self.kind {
            Kind::Probe if self.cookie != 0 => payload_len.max(HEADER_LEN + COOKIE_LEN),
            Kind::Probe => payload_len.max(HEADER_LEN),
            Kind::Ack => HEADER_LEN,
            Kind::PortsAck => PORTS_ACK_LEN,
            Kind::Ports => return None,
        };
        let out = out.get_mut(..len)?;
        out[..WRAP_LEN].copy_from_slice(&wrapper(len)?);
        out[field::MAGIC].copy_from_slice(&MAGIC);
        out[field::KIND] = self.kind.to_raw();
        out[field::NONCE].copy_from_slice(&self.nonce.to_be_bytes());
        out[field::SIZE].copy_from_slice(&self.size.to_be_bytes());
        out[field::RESERVED].fill(0);
        if self.kind == Kind::PortsAck && self.taken {
            out[field::RESERVED.start] = 1;
        }
        out[HEADER_LEN..].fill(0);
        match self.kind {
            Kind::PortsAck => out[HEADER_LEN..].copy_from_slice(&self.cookie.to_be_bytes()),
            Kind::Probe if self.cookie != 0 => {
                out[HEADER_LEN..HEADER_LEN + COOKIE_LEN].copy_from_slice(&self.cookie.to_be_bytes())
            }
            _ => {}
        }
        Some(len)
    }

    /// Whether this probe (or probe acknowledgement) is a hello: no larger than the smallest
    /// probe a relay sends (the header in an outer IPv6 packet: 48 bytes of headers), so it
    /// tests no path MTU, only that the peer answers. The extra tuples' keepalives are hellos.
    pub fn is_hello(&self) -> bool {
        usize::from(self.size) <= 48 + HEADER_LEN
    }

    /// The acknowledgement that answers this probe.
    pub fn ack(&self) -> Control {
        Control {
            kind: Kind::Ack,
            cookie: 0,
            taken: false,
            ..*self
        }
    }

    /// The acknowledgement that answers this advertisement, carrying the acknowledging relay's
    /// `cookie` (not 0), and whether it `taken` the advertisement.
    pub fn ports_ack(&self, cookie: u64, taken: bool) -> Control {
        Control {
            kind: Kind::PortsAck,
            cookie,
            taken,
            ..*self
        }
    }
}

/// Where a probe of `len` bytes has only zeros from: after its echo, if it has room for one.
fn probe_padding(len: usize) -> usize {
    if len >= HEADER_LEN + COOKIE_LEN {
        HEADER_LEN + COOKIE_LEN
    } else {
        HEADER_LEN
    }
}

/// The body of an advertisement of `count` ports (the session, the echo and the ports), if
/// `datagram` is exactly that long and names no port 0.
fn ports_body(datagram: &[u8], count: u16) -> Option<&[u8]> {
    let count = usize::from(count);
    if count > MAX_PORTS || datagram.len() != ADVERTISEMENT_FIXED_LEN + 2 * count {
        return None;
    }
    let body = &datagram[HEADER_LEN..];
    body[SESSION_LEN + COOKIE_LEN..]
        .chunks_exact(2)
        .all(|port| port != [0, 0])
        .then_some(body)
}

/// An advertisement (kind 3): the source ports its sender sends from besides its listen port,
/// the session that says whether the sender restarted, and the echo of the receiver's cookie
/// that proves the sender sees what the receiver sends it. Fixed size, no allocation: a worker
/// keeps one per receive buffer.
#[derive(Clone, PartialEq, Eq)]
pub struct Advertisement {
    pub nonce: u64,
    pub session: u64,
    /// The receiver's cookie, as the sender last learned it (0: none yet).
    pub echo: u64,
    len: u16,
    ports: [u16; MAX_PORTS],
}

impl std::fmt::Debug for Advertisement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advertisement")
            .field("nonce", &self.nonce)
            .field("session", &self.session)
            .field("echo", &self.echo)
            .field("ports", &self.ports())
            .finish()
    }
}

impl Advertisement {
    /// An advertisement of `ports`, echoing `echo`; `None` if there are more than [`MAX_PORTS`]
    /// or one is 0.
    pub fn new(nonce: u64, session: u64, echo: u64, ports: &[u16]) -> Option<Advertisement> {
        if ports.len() > MAX_PORTS || ports.contains(&0) {
            return None;
        }
        let mut all = [0u16; MAX_PORTS];
        all[..ports.len()].copy_from_slice(ports);
        Some(Advertisement {
            nonce,
            session,
            echo,
            len: ports.len() as u16,
            ports: all,
        })
    }

    /// The ports advertised, in the order they were written.
    pub fn ports(&self) -> &[u16] {
        &self.ports[..usize::from(self.len)]
    }

    /// Parses a datagram as an advertisement: exactly what [`Control::parse`] takes as
    /// [`Kind::Ports`], and nothing else.
    pub fn parse(datagram: &[u8]) -> Option<Advertisement> {
        let header = Control::parse(datagram).filter(|c| c.kind == Kind::Ports)?;
        let body = ports_body(datagram, header.size)?;
        let mut ports = [0u16; MAX_PORTS];
        let ports_at = SESSION_LEN + COOKIE_LEN;
        for (port, bytes) in ports.iter_mut().zip(body[ports_at..].chunks_exact(2)) {
            *port = u16::from_be_bytes([bytes[0], bytes[1]]);
        }
        Some(Advertisement {
            nonce: header.nonce,
            session: u64::from_be_bytes(body[..SESSION_LEN].try_into().expect("8 bytes")),
            echo: u64::from_be_bytes(body[SESSION_LEN..ports_at].try_into().expect("8 bytes")),
            len: header.size,
            ports,
        })
    }

    /// The datagram's length: `36 + 16 + 2N`.
    pub fn wire_len(&self) -> usize {
        ADVERTISEMENT_FIXED_LEN + 2 * usize::from(self.len)
    }

    /// Writes the datagram into `out`; its length, or `None` if `out` is too short.
    pub fn write(&self, out: &mut [u8]) -> Option<usize> {
        let len = self.wire_len();
        let out = out.get_mut(..len)?;
        out[..WRAP_LEN].copy_from_slice(&wrapper(len)?);
        out[field::MAGIC].copy_from_slice(&MAGIC);
        out[field::KIND] = Kind::Ports.to_raw();
        out[field::NONCE].copy_from_slice(&self.nonce.to_be_bytes());
        out[field::SIZE].copy_from_slice(&self.len.to_be_bytes());
        out[field::RESERVED].fill(0);
        out[HEADER_LEN..HEADER_LEN + SESSION_LEN].copy_from_slice(&self.session.to_be_bytes());
        out[HEADER_LEN + SESSION_LEN..ADVERTISEMENT_FIXED_LEN]
            .copy_from_slice(&self.echo.to_be_bytes());
        for (bytes, port) in out[ADVERTISEMENT_FIXED_LEN..]
            .chunks_exact_mut(2)
            .zip(self.ports())
        {
            bytes.copy_from_slice(&port.to_be_bytes());
        }
        Some(len)
    }

    /// Its header as a [`Control`] (kind [`Kind::Ports`], `size` the number of ports).
    pub fn header(&self) -> Control {
        Control {
            kind: Kind::Ports,
            nonce: self.nonce,
            size: self.len,
            cookie: 0,
            taken: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `body` after the IPv4 header of a control message as long as both.
    fn wrapped(body: &[u8]) -> Vec<u8> {
        let mut datagram = wrapper(WRAP_LEN + body.len()).unwrap().to_vec();
        datagram.extend_from_slice(body);
        datagram
    }

    fn ack() -> Vec<u8> {
        wrapped(&[
            0x00, b'T', b'F', 2, 1, 2, 3, 4, 5, 6, 7, 8, 0x05, 0xa8, 0, 0,
        ])
    }

    #[test]
    fn deconstruct() {
        assert_eq!(
            Control::parse(&ack()),
            Some(Control {
                kind: Kind::Ack,
                nonce: 0x0102_0304_0506_0708,
                size: 1448,
                cookie: 0,
                taken: false,
            })
        );
        assert!(is_control(&ack()));
        // The header is a valid IPv4 header, by an independent parser.
        let bytes = ack();
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&bytes).unwrap();
        assert_eq!(ip.total_len(), 36);
        assert_eq!(ip.protocol(), etherparse::IpNumber(253));
        assert_eq!(ip.destination(), [0, 0, 0, 0]);
        assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
    }

    #[test]
    fn construct_and_round_trip() {
        let probe = Control {
            kind: Kind::Probe,
            nonce: u64::MAX - 3,
            size: 1448,
            cookie: 0,
            taken: false,
        };
        let mut out = [0xffu8; 1500];
        let len = probe.write(&mut out, 1420).unwrap();
        assert_eq!(len, 1420);
        assert_eq!(Control::parse(&out[..len]), Some(probe));
        let len = probe.ack().write(&mut out, 1420).unwrap();
        assert_eq!(len, HEADER_LEN);
        assert_eq!(Control::parse(&out[..len]), Some(probe.ack()));
        assert_eq!(probe.write(&mut out[..100], 1420), None, "too short");
        // One that echoes a cookie carries it after the header, and a hello grows to hold it;
        // its acknowledgement does not carry it.
        for (payload_len, want) in [(1420, 1420), (HEADER_LEN, HEADER_LEN + COOKIE_LEN)] {
            let echo = Control {
                cookie: 0x0102_0304_0506_0708,
                ..probe
            };
            let len = echo.write(&mut out, payload_len).unwrap();
            assert_eq!(len, want);
            assert_eq!(
                out[HEADER_LEN..HEADER_LEN + COOKIE_LEN],
                [1, 2, 3, 4, 5, 6, 7, 8]
            );
            assert!(out[HEADER_LEN + COOKIE_LEN..len].iter().all(|b| *b == 0));
            assert_eq!(Control::parse(&out[..len]), Some(echo));
            assert_eq!(echo.ack().cookie, 0);
        }
    }

    #[test]
    fn impossible_len_and_foreign_bytes_are_not_control() {
        let ack = ack();
        assert_eq!(Control::parse(&ack[..HEADER_LEN - 1]), None);
        let mut long_ack = ack.clone();
        long_ack.push(0);
        assert_eq!(
            Control::parse(&long_ack),
            None,
            "an ack is 16 bytes exactly"
        );
        for (at, value) in [
            (20, 0x45),
            (21, b't'),
            (23, 0),
            (23, 5),
            (34, 1),
            (35, 1),
            (0, 0x46),
            (8, 2),
            (9, 17),
            (11, 0),
            (19, 1),
        ] {
            let mut bad = ack.clone();
            bad[at] = value;
            assert_eq!(Control::parse(&bad), None, "byte {at} = {value}");
        }
        let mut probe = [0u8; 64];
        Control {
            kind: Kind::Probe,
            nonce: 1,
            size: 92,
            cookie: 0,
            taken: false,
        }
        .write(&mut probe, 64)
        .unwrap();
        assert!(Control::parse(&probe).is_some());
        // Its first 8 padding bytes are the echo; every other one is zero.
        probe[40] = 1;
        assert_eq!(Control::parse(&probe).map(|c| c.cookie), Some(1 << 24));
        probe[44] = 1;
        assert_eq!(
            Control::parse(&probe),
            None,
            "a probe carries only its echo"
        );
        let mut short = [0u8; HEADER_LEN + COOKIE_LEN - 1];
        Control {
            kind: Kind::Probe,
            nonce: 1,
            size: 64,
            cookie: 0,
            taken: false,
        }
        .write(&mut short, HEADER_LEN + COOKIE_LEN - 1)
        .unwrap();
        assert!(Control::parse(&short).is_some());
        short[HEADER_LEN] = 1;
        assert_eq!(
            Control::parse(&short),
            None,
            "no room for an echo: zeros only"
        );
        // No IP packet is a control message.
        assert!(!is_control(&[0x45, 0, 0, 20]));
        assert!(!is_control(&[0x60]));
        assert!(!is_control(&[]));
    }

    /// An advertisement of two ports, byte by byte.
    fn ports() -> Vec<u8> {
        wrapped(&[
            0x00, b'T', b'F', 3, 0, 0, 0, 0, 0, 0, 0, 9, 0, 2, 0,
            0, // header: nonce 9, 2 ports
            0, 0, 0, 0, 0, 0, 0x12, 0x34, // session 0x1234
            0, 0, 0, 0, 0, 0, 0x56, 0x78, // echo 0x5678
            0xc0, 0x00, 0xff, 0xff, // 49152, 65535
        ])
    }

    #[test]
    fn advertisements_deconstruct_construct_and_round_trip() {
        let ports = ports();
        let a = Advertisement::parse(&ports).unwrap();
        assert_eq!((a.nonce, a.session, a.echo), (9, 0x1234, 0x5678));
        assert_eq!(a.ports(), &[49152, 65535]);
        assert_eq!(
            Control::parse(&ports),
            Some(Control {
                kind: Kind::Ports,
                nonce: 9,
                size: 2,
                cookie: 0,
                taken: false,
            })
        );
        let mut out = [0xaau8; 600];
        assert_eq!(a.write(&mut out), Some(56));
        assert_eq!(out[..56], ports[..]);
        let ack = a.header().ports_ack(0xc0c0, false);
        assert_eq!((ack.kind, ack.cookie), (Kind::PortsAck, 0xc0c0));
        let ack_len = ack.write(&mut out, 0).unwrap();
        assert_eq!(ack_len, PORTS_ACK_LEN);
        assert_eq!(out[HEADER_LEN..ack_len], 0xc0c0u64.to_be_bytes());
        assert_eq!(Control::parse(&out[..ack_len]), Some(ack));
        assert_eq!(out[34..36], [0, 0], "not taken");
        // Taken: the reserved field's first byte is 1; no other value, nor in another kind.
        let taken = a.header().ports_ack(0xc0c0, true);
        let ack_len = taken.write(&mut out, 0).unwrap();
        assert_eq!(out[34..36], [1, 0]);
        assert_eq!(Control::parse(&out[..ack_len]), Some(taken));
        out[34] = 2;
        assert_eq!(Control::parse(&out[..ack_len]), None);
        let probe_ack = Control {
            kind: Kind::Ack,
            nonce: 9,
            size: 64,
            cookie: 0,
            taken: false,
        };
        let len = probe_ack.write(&mut out, 0).unwrap();
        assert!(Control::parse(&out[..len]).is_some());
        out[34] = 1;
        assert_eq!(Control::parse(&out[..len]), None, "a flag on a probe's ack");
        assert_eq!(a.header().write(&mut out, 0), None, "needs the ports");
        // The most, and none.
        let many: Vec<u16> = (1..=MAX_PORTS as u16).collect();
        let full = Advertisement::new(u64::MAX, 7, 8, &many).unwrap();
        let len = full.write(&mut out).unwrap();
        assert_eq!(len, 52 + 2 * MAX_PORTS);
        assert_eq!(Advertisement::parse(&out[..len]).unwrap(), full);
        let none = Advertisement::new(1, 2, 0, &[]).unwrap();
        let len = none.write(&mut out).unwrap();
        assert_eq!(len, 52);
        assert_eq!(
            Advertisement::parse(&out[..len]).unwrap().ports(),
            &[] as &[u16]
        );
        assert_eq!(full.write(&mut out[..60]), None, "too short");
    }

    #[test]
    fn advertisements_of_impossible_lengths_or_ports_are_refused() {
        let too_many: Vec<u16> = (1..=MAX_PORTS as u16 + 1).collect();
        assert!(Advertisement::new(1, 1, 0, &too_many).is_none());
        assert!(Advertisement::new(1, 1, 0, &[5, 0]).is_none(), "port 0");
        let ports = ports();
        assert!(Advertisement::parse(&ports[..55]).is_none(), "cut");
        let mut long = ports[WRAP_LEN..].to_vec();
        long.extend_from_slice(&[0, 1]);
        let long = wrapped(&long);
        assert!(
            Advertisement::parse(&long).is_none(),
            "a port more than it says"
        );
        assert!(Control::parse(&long).is_none());
        let mut zero = ports.clone();
        zero[54..56].fill(0);
        assert!(Control::parse(&zero).is_none(), "port 0");
        let mut count = ports.clone();
        count[32..34].copy_from_slice(&(MAX_PORTS as u16 + 1).to_be_bytes());
        assert!(Control::parse(&count).is_none());
        // An acknowledgement of an advertisement: the header and a cookie that is not 0, and no
        // more ports than there can be.
        let mut body = ack()[WRAP_LEN..].to_vec();
        body[3] = 4;
        body[12..14].copy_from_slice(&2u16.to_be_bytes());
        body.extend_from_slice(&77u64.to_be_bytes());
        let ack = wrapped(&body);
        let parsed = Control::parse(&ack).unwrap();
        assert_eq!((parsed.kind, parsed.cookie), (Kind::PortsAck, 77));
        assert!(
            Advertisement::parse(&ack).is_none(),
            "an ack is no advertisement"
        );
        assert!(Control::parse(&ack[..HEADER_LEN]).is_none(), "no cookie");
        let mut zero = ack.clone();
        zero[HEADER_LEN..].fill(0);
        assert!(Control::parse(&zero).is_none(), "cookie 0");
        let mut many = ack.clone();
        many[32..34].copy_from_slice(&(MAX_PORTS as u16 + 1).to_be_bytes());
        assert!(Control::parse(&many).is_none());
    }
}
