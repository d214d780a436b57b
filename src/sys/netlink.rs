//! rtnetlink (netlink(7), rtnetlink(7)): one request, its answers, matched by sequence number.
//!
//! A request is a `nlmsghdr`, a fixed family header (`ifinfomsg`, `ifaddrmsg`, `rtmsg`) and
//! attributes; [`Request`] builds one, [`exchange`] sends it on a fresh socket of the calling
//! thread's network namespace and reads until the kernel's last answer to *that* request (its
//! sequence number and our port id): the data messages of a `GET`, and the `NLMSG_ERROR` ack or
//! `NLMSG_DONE` that ends them. Anything else on the socket is skipped. Parsing is pure and
//! tested on byte arrays; only `exchange` makes system calls.

use super::check;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How long [`exchange`] waits for each datagram of an answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// `sizeof(struct nlmsghdr)`.
pub const HEADER_LEN: usize = 16;
/// `NLA_TYPE_MASK`: an attribute's type without its nested and byte-order flags.
const TYPE_MASK: u16 = 0x3fff;
/// Attribute and message alignment (`NLMSG_ALIGNTO`, `RTA_ALIGNTO`).
const ALIGN: usize = 4;

/// Sequence numbers for this process's requests: each exchange has its own, so an answer to
/// another request is never taken for this one's.
static SEQUENCE: AtomicU32 = AtomicU32::new(1);

/// A request being built.
#[derive(Debug, Clone)]
pub struct Request {
    bytes: Vec<u8>,
}

impl Request {
    /// A message of `kind` (`RTM_GETLINK`...) with `flags` besides `NLM_F_REQUEST`, and the
    /// family header `header` (its bytes, already in native byte order).
    pub fn new(kind: u16, flags: u16, header: &[u8]) -> Request {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // sequence number, set by `finish`
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel is 0
        bytes.extend_from_slice(header);
        pad(&mut bytes);
        Request { bytes }
    }

    /// Adds an attribute.
    pub fn attribute(mut self, kind: u16, value: &[u8]) -> Request {
        let len = 4 + value.len();
        self.bytes.extend_from_slice(&(len as u16).to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        pad(&mut self.bytes);
        self
    }

    /// The message, with its length and sequence number filled in.
    pub fn finish(mut self, sequence: u32) -> Vec<u8> {
        let len = self.bytes.len() as u32;
        self.bytes[0..4].copy_from_slice(&len.to_ne_bytes());
        self.bytes[8..12].copy_from_slice(&sequence.to_ne_bytes());
        self.bytes
    }
}

fn pad(bytes: &mut Vec<u8>) {
    bytes.resize(bytes.len().next_multiple_of(ALIGN), 0);
}

/// One message of an answer: its type, and what follows its `nlmsghdr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: u16,
    pub payload: Vec<u8>,
}

/// The messages of one `recv`, for a request of `sequence` from port `port`: data messages
/// kept, the end found (`Ok(true)`: an ack, `NLMSG_DONE`, or the only answer of a request
/// that is not a dump), or the kernel's error. Messages for other requests are skipped. PURE.
pub fn parse_answers(
    datagram: &[u8],
    sequence: u32,
    port: u32,
    dump: bool,
    into: &mut Vec<Message>,
) -> io::Result<bool> {
    let malformed = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let mut rest = datagram;
    while rest.len() >= HEADER_LEN {
        let word = |at: usize| u32::from_ne_bytes(rest[at..at + 4].try_into().expect("4 bytes"));
        let len = word(0) as usize;
        if len < HEADER_LEN || len > rest.len() {
            return Err(malformed(
                "a netlink message's length runs past its datagram",
            ));
        }
        let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
        let (seq, pid) = (word(8), word(12));
        let payload = &rest[HEADER_LEN..len];
        rest = rest.get(len.next_multiple_of(ALIGN)..).unwrap_or(&[]);
        if seq != sequence || (pid != port && pid != 0) {
            continue;
        }
        match kind {
            k if k == libc::NLMSG_ERROR as u16 => {
                let errno = payload
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    .ok_or_else(|| malformed("a netlink error without its code"))?;
                return match errno {
                    0 => Ok(true),
                    negative => Err(io::Error::from_raw_os_error(negative.saturating_neg())),
                };
            }
            k if k == libc::NLMSG_DONE as u16 => return Ok(true),
            k if k == libc::NLMSG_NOOP as u16 => {}
            _ => {
                into.push(Message {
                    kind,
                    payload: payload.to_vec(),
                });
                if !dump {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// Sends `request` to the kernel and returns its answers: for a request with `NLM_F_ACK`, none
/// (the ack); for a `GET`, its data messages (`dump`: all of a dump, else the one answer). At
/// most 5 s: a kernel that does not answer is an error, not a hang.
pub fn exchange(request: Request, dump: bool) -> io::Result<Vec<Message>> {
    let socket = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(libc::NETLINK_ROUTE)),
    )?;
    socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let fd = socket.as_raw_fd();
    // Bind to learn our port id: answers carry it, and anything else is not ours.
    // SAFETY: sockaddr_nl is plain data; all-zero (family set below) asks for any port id.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    let mut len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: `address` is a valid sockaddr_nl of `len` bytes.
    check(unsafe { libc::bind(fd, (&address as *const libc::sockaddr_nl).cast(), len) })?;
    // SAFETY: getsockname writes at most `len` bytes into `address`.
    check(unsafe {
        libc::getsockname(
            fd,
            (&mut address as *mut libc::sockaddr_nl).cast(),
            &mut len,
        )
    })?;
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let bytes = request.finish(sequence);
    // An unconnected netlink socket sends to the kernel.
    socket.send(&bytes)?;
    let mut answers = Vec::new();
    let mut datagram = vec![0u8; 64 << 10];
    loop {
        // MSG_TRUNC returns the whole length, so a datagram that did not fit is an error.
        // SAFETY: `datagram` is valid for writes of its length.
        let got = unsafe {
            libc::recv(
                fd,
                datagram.as_mut_ptr().cast(),
                datagram.len(),
                libc::MSG_TRUNC,
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = got as usize;
        if got > datagram.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a netlink answer of {got} bytes did not fit"),
            ));
        }
        if parse_answers(
            &datagram[..got],
            sequence,
            address.nl_pid,
            dump,
            &mut answers,
        )? {
            return Ok(answers);
        }
    }
}

/// The attributes in `bytes` (rtattr/nlattr: u16 length including the 4-byte header, u16
/// type, payload, padding to 4), with the flag bits cleared from each type. Stops at the first
/// malformed one. PURE.
pub fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(bytes.get(0..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(bytes.get(2..4)?.try_into().ok()?) & TYPE_MASK;
        let payload = bytes.get(4..len)?;
        bytes = bytes.get(len.next_multiple_of(ALIGN)..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

/// The first attribute of `kind` in `bytes`.
pub fn attribute(bytes: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(bytes).find_map(|(k, payload)| (k == kind).then_some(payload))
}

/// An attribute's payload as a native-endian u32.
pub fn u32_of(payload: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?))
}

/// `sizeof(struct rtmsg)` (include/uapi/linux/rtnetlink.h) and `sizeof(struct ifinfomsg)`.
const RTMSG_LEN: usize = 12;
pub const IFINFOMSG_LEN: usize = 16;

/// A `struct ifinfomsg` (include/uapi/linux/rtnetlink.h), native byte order: family
/// `AF_UNSPEC`, interface `index` (0: by the `IFLA_IFNAME` attribute), and the device flags in
/// `change` set to their values in `flags`. PURE.
pub fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG_LEN] {
    let mut header = [0u8; IFINFOMSG_LEN];
    header[0] = libc::AF_UNSPEC as u8; // ifi_family; a pad byte and ifi_type follow
    header[4..8].copy_from_slice(&(index as i32).to_ne_bytes()); // ifi_index
    header[8..12].copy_from_slice(&flags.to_ne_bytes()); // ifi_flags
    header[12..16].copy_from_slice(&change.to_ne_bytes()); // ifi_change
    header
}

/// An `RTM_GETLINK` for the device named `name` in the calling thread's network namespace
/// (`ip link show NAME`): index 0, and the name as `IFLA_IFNAME`, NUL-terminated. PURE.
pub fn link_by_name_request(name: &str) -> Request {
    let mut value = name.as_bytes().to_vec();
    value.push(0);
    Request::new(libc::RTM_GETLINK, 0, &ifinfomsg(0, 0, 0)).attribute(libc::IFLA_IFNAME, &value)
}

/// An `RTM_GETROUTE` for the route to `destination` (`ip route get`). PURE.
pub fn route_request(destination: std::net::IpAddr) -> Request {
    let (family, address, bits) = match destination.to_canonical() {
        std::net::IpAddr::V4(a) => (libc::AF_INET, a.octets().to_vec(), 32),
        std::net::IpAddr::V6(a) => (libc::AF_INET6, a.octets().to_vec(), 128),
    };
    let mut header = [0u8; RTMSG_LEN];
    header[0] = family as u8; // rtm_family
    header[1] = bits; // rtm_dst_len
    Request::new(libc::RTM_GETROUTE, 0, &header).attribute(libc::RTA_DST, &address)
}

/// An `RTM_GETLINK` for interface `index`. PURE.
pub fn link_request(index: u32) -> Request {
    Request::new(libc::RTM_GETLINK, 0, &ifinfomsg(index, 0, 0))
}

/// The output interface of an `RTM_NEWROUTE` answer (`RTA_OIF`). PURE.
pub fn route_interface(answer: &Message) -> Option<u32> {
    if answer.kind != libc::RTM_NEWROUTE {
        return None;
    }
    u32_of(attribute(answer.payload.get(RTMSG_LEN..)?, libc::RTA_OIF)?)
}

/// The MTU of an `RTM_NEWLINK` answer (`IFLA_MTU`). PURE.
pub fn link_mtu(answer: &Message) -> Option<u32> {
    if answer.kind != libc::RTM_NEWLINK {
        return None;
    }
    u32_of(attribute(
        answer.payload.get(IFINFOMSG_LEN..)?,
        libc::IFLA_MTU,
    )?)
}

/// The MTU of the device the route to `destination` leaves by: two questions to the kernel,
/// which route, then which MTU. Only the device's own MTU: the route's learned path MTU, which
/// anyone who knows a 4-tuple can lower with an ICMP message, is not asked for.
pub fn egress_mtu(destination: std::net::IpAddr) -> io::Result<u32> {
    let not_answered = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let routes = exchange(route_request(destination), false)?;
    let index = routes
        .iter()
        .find_map(route_interface)
        .ok_or_else(|| not_answered("the route to the peer has no output interface"))?;
    let links = exchange(link_request(index), false)?;
    links
        .iter()
        .find_map(link_mtu)
        .ok_or_else(|| not_answered("the output interface has no MTU"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, seq: u32, pid: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((HEADER_LEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&pid.to_ne_bytes());
        m.extend_from_slice(payload);
        pad(&mut m);
        m
    }

    #[test]
    fn requests_have_the_netlink_layout() {
        let bytes = Request::new(libc::RTM_GETLINK, libc::NLM_F_ACK as u16, &[1, 2, 3])
            .attribute(7, &[9, 9, 9, 9, 9])
            .finish(42);
        // header 16 + family header 3 padded to 4 + attribute 4 + 5 padded to 12.
        assert_eq!(bytes.len(), 16 + 4 + 12);
        assert_eq!(u32::from_ne_bytes(bytes[0..4].try_into().unwrap()), 32);
        assert_eq!(
            u16::from_ne_bytes(bytes[4..6].try_into().unwrap()),
            libc::RTM_GETLINK
        );
        assert_eq!(
            u16::from_ne_bytes(bytes[6..8].try_into().unwrap()),
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16
        );
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 42);
        assert_eq!(&bytes[16..20], &[1, 2, 3, 0]);
        let attrs: Vec<_> = attributes(&bytes[20..]).collect();
        assert_eq!(attrs, vec![(7, &[9u8, 9, 9, 9, 9][..])]);
    }

    #[test]
    fn answers_are_matched_by_sequence_and_port() {
        let mut datagram = message(libc::RTM_NEWLINK, 6, 100, &[1; 8]); // another request's
        datagram.extend(message(libc::RTM_NEWLINK, 7, 999, &[2; 8])); // another socket's
        datagram.extend(message(libc::RTM_NEWLINK, 7, 100, &[3; 8]));
        datagram.extend(message(libc::RTM_NEWLINK, 7, 100, &[4; 8]));
        let mut found = Vec::new();
        assert!(!parse_answers(&datagram, 7, 100, true, &mut found).unwrap());
        assert_eq!(found.len(), 2, "a dump goes on until it is done");
        assert_eq!(found[0].payload, vec![3; 8]);
        let done = message(libc::NLMSG_DONE as u16, 7, 100, &[0; 4]);
        assert!(parse_answers(&done, 7, 100, true, &mut found).unwrap());
        let mut one = Vec::new();
        assert!(parse_answers(&datagram, 7, 100, false, &mut one).unwrap());
        assert_eq!(one.len(), 1, "a plain GET has one answer");
    }

    #[test]
    fn acks_and_errors_end_the_answer() {
        let mut found = Vec::new();
        let ack = message(libc::NLMSG_ERROR as u16, 3, 0, &0i32.to_ne_bytes());
        assert!(parse_answers(&ack, 3, 55, false, &mut found).unwrap());
        let refused = message(
            libc::NLMSG_ERROR as u16,
            3,
            55,
            &(-libc::ENODEV).to_ne_bytes(),
        );
        let e = parse_answers(&refused, 3, 55, false, &mut found).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        let stale = message(
            libc::NLMSG_ERROR as u16,
            2,
            55,
            &(-libc::EPERM).to_ne_bytes(),
        );
        assert!(!parse_answers(&stale, 3, 55, false, &mut found).unwrap());
        let mut cut = ack.clone();
        cut[0..4].copy_from_slice(&64u32.to_ne_bytes());
        assert!(parse_answers(&cut, 3, 55, false, &mut found).is_err());
        assert!(!parse_answers(&[0u8; 10], 3, 55, false, &mut found).unwrap());
        // Found by the fuzz target: an error code with no negation.
        let absurd = message(libc::NLMSG_ERROR as u16, 3, 55, &i32::MIN.to_ne_bytes());
        assert!(parse_answers(&absurd, 3, 55, false, &mut found).is_err());
    }

    #[test]
    fn route_and_link_answers_give_the_interface_and_its_mtu() {
        let mut route = vec![0u8; RTMSG_LEN];
        route.extend_from_slice(&8u16.to_ne_bytes());
        route.extend_from_slice(&libc::RTA_OIF.to_ne_bytes());
        route.extend_from_slice(&5u32.to_ne_bytes());
        let answer = Message {
            kind: libc::RTM_NEWROUTE,
            payload: route,
        };
        assert_eq!(route_interface(&answer), Some(5));
        let mut link = vec![0u8; IFINFOMSG_LEN];
        link.extend_from_slice(&8u16.to_ne_bytes());
        link.extend_from_slice(&libc::IFLA_MTU.to_ne_bytes());
        link.extend_from_slice(&1280u32.to_ne_bytes());
        let answer = Message {
            kind: libc::RTM_NEWLINK,
            payload: link,
        };
        assert_eq!(link_mtu(&answer), Some(1280));
        assert_eq!(route_interface(&answer), None, "not a route");
    }

    #[test]
    fn the_kernel_answers_for_loopback() {
        // No privilege needed: ip route get 127.0.0.1 leaves by lo.
        let mtu = egress_mtu("127.0.0.1".parse().unwrap()).unwrap();
        assert!(mtu >= 1280, "loopback MTU {mtu}");
        let e = exchange(link_request(0x7fff_fff0), false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
    }
}
