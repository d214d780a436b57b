//! Any datagram through `wire::control::Control::parse`, the parser of relay-to-relay control
//! messages (path MTU probes, with or without an echo of the receiver's cookie, and their
//! acknowledgements, source port advertisements and theirs),
//! which every worker runs on datagrams from the peer. No panic, and the parse is exact: what it
//! accepts, `write` (or `Advertisement::write`) gives back byte for byte (so nothing in an
//! accepted datagram is ignored), and what it accepts is an IPv4 header to 0.0.0.0 with
//! protocol 253, which no real traffic is.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tunfwd::fuzzing::control::{self, Advertisement, Control, Kind};

fuzz_target!(|datagram: &[u8]| {
    let Some(message) = Control::parse(datagram) else {
        assert!(Advertisement::parse(datagram).is_none());
        return;
    };
    assert!(control::is_control(datagram));
    assert_eq!(datagram[0], 0x45, "an IPv4 header first");
    assert_eq!(datagram[9], 253, "protocol 253");
    assert_eq!(&datagram[16..20], &[0, 0, 0, 0], "to 0.0.0.0");
    let total = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    assert_eq!(
        total,
        datagram.len(),
        "the header says the datagram's length"
    );
    let mut out = vec![0xa5u8; datagram.len().max(control::HEADER_LEN)];
    let len = match message.kind {
        Kind::Ports => {
            let advertisement = Advertisement::parse(datagram).expect("parsed as a header too");
            assert_eq!(advertisement.header(), message);
            assert_eq!(advertisement.ports().len(), usize::from(message.size));
            assert!(advertisement.ports().iter().all(|p| *p != 0));
            assert_eq!(message.write(&mut out, datagram.len()), None);
            advertisement
                .write(&mut out)
                .expect("room for what was parsed")
        }
        _ => {
            assert!(Advertisement::parse(datagram).is_none());
            message
                .write(&mut out, datagram.len())
                .expect("room for what was parsed")
        }
    };
    assert_eq!(
        &out[..len],
        datagram,
        "{message:?} does not write back as parsed"
    );
    match message.kind {
        Kind::Ack => assert_eq!(len, control::HEADER_LEN),
        Kind::PortsAck => {
            assert_eq!(len, control::PORTS_ACK_LEN);
            assert_ne!(message.cookie, 0, "an acknowledgement's cookie is never 0");
        }
        Kind::Probe => assert_eq!(message.ack().kind, Kind::Ack),
        Kind::Ports => {
            assert!(usize::from(message.size) <= control::MAX_PORTS);
            assert_eq!(message.ports_ack(1, true).kind, Kind::PortsAck);
        }
    }
    assert!(
        !message.taken || message.kind == Kind::PortsAck,
        "only an advertisement's acknowledgement says whether it was taken"
    );
    match message.kind {
        Kind::PortsAck => {}
        Kind::Probe if message.cookie != 0 => assert!(
            len >= control::HEADER_LEN + 8,
            "a probe's echo (8 bytes after the header) is inside it"
        ),
        _ => assert_eq!(
            message.cookie, 0,
            "only an advertisement's acknowledgement and a probe have a cookie"
        ),
    }
});
