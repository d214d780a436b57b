//! Any datagram through `wire::control::Control::parse`, the parser of relay-to-relay control
//! messages (path MTU probes and acknowledgements), which every worker runs on datagrams from
//! the peer. No panic, and the parse is exact: what it accepts, `write` gives back byte for byte
//! (so nothing in an accepted datagram is ignored), and nothing whose first nibble is an IP
//! version is ever taken for one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tunfwd::fuzzing::control::{self, Control, Kind};

fuzz_target!(|datagram: &[u8]| {
    let Some(message) = Control::parse(datagram) else {
        return;
    };
    assert!(control::is_control(datagram));
    assert!(!matches!(datagram[0] >> 4, 4 | 6), "an IP packet taken for a control message");
    let mut out = vec![0xa5u8; datagram.len().max(control::HEADER_LEN)];
    let len = message
        .write(&mut out, datagram.len())
        .expect("room for what was parsed");
    assert_eq!(&out[..len], datagram, "{message:?} does not write back as parsed");
    match message.kind {
        Kind::Ack => assert_eq!(len, control::HEADER_LEN),
        Kind::Probe => assert_eq!(message.ack().kind, Kind::Ack),
    }
});
