//! Entry points for the fuzz targets of the relay's network input, with the properties each
//! must keep checked here, beside the code they describe. Not a stable API.

use super::receive::{Arrival, ReceivePlan, datagram_count, plan};
use crate::offload::coalesce::Policy;
use crate::stats::{Counters, DropReason, WorkerStats};
use std::cell::RefCell;

/// Where the fuzzed payload starts in its buffer, as a receive leaves room in front.
const PAYLOAD_AT: usize = 16;

/// One UDP receive buffer, as anyone on the path may fill it, through [`plan`]. `input`: byte 0
/// holds the flags (bit 0 the control data came back cut, bit 1 a `UDP_GRO` size is present,
/// bits 2 and 3 the TCP and UDP merge policy), bytes 1-2 the GRO size (big-endian; 0 is never
/// reported, as `wire::cmsg` reads it), byte 3 the outer TOS, the rest the payload.
///
/// Panics unless: every datagram the buffer holds is counted exactly once, as received (an
/// `ecn_not_ect` drop is both), dropped or taken as a control message; each planned segment lies inside
/// the payload, in order, without overlap, and none is shaped as a control message (those never
/// go into the TUN); every advertisement taken is whole, one for each advertisement message
/// among the controls; and the runs cover the segments once,
/// in order.
pub fn receive_plan(input: &[u8]) {
    let [flags, gro_high, gro_low, outer_tos, payload @ ..] = input else {
        return;
    };
    let gro_size = usize::from(u16::from_be_bytes([*gro_high, *gro_low]));
    let arrival = Arrival {
        payload: PAYLOAD_AT..PAYLOAD_AT + payload.len(),
        gro_size: (flags & 2 != 0 && gro_size > 0).then_some(gro_size),
        control_truncated: flags & 1 != 0,
        outer_tos: *outer_tos,
    };
    let policy = Policy {
        tcp: flags & 4 != 0,
        udp: flags & 8 != 0,
    };
    let mut buffer = vec![0u8; PAYLOAD_AT + payload.len()];
    buffer[PAYLOAD_AT..].copy_from_slice(payload);
    // Made once a thread: a plan's buffers and the stats' histograms cost more than a plan.
    thread_local! {
        static STATE: RefCell<(WorkerStats, ReceivePlan)> =
            RefCell::new((WorkerStats::new(0), ReceivePlan::default()));
    }
    STATE.with_borrow_mut(|(stats, receive)| {
        stats.counters = Counters::default();
        plan(&mut buffer, &arrival, policy, stats, receive);
        check(&arrival, payload, stats, receive);
    });
}

/// The properties [`receive_plan`] promises, of one plan.
fn check(arrival: &Arrival, payload: &[u8], stats: &WorkerStats, receive: &ReceivePlan) {
    let c = &stats.counters;
    let expected = datagram_count(arrival.gro_size, arrival.control_truncated, payload);
    let ecn = c.drops[DropReason::EcnNotEct as usize];
    // Every control message taken is in `controls`; the path MTU ones are also counted as
    // `control_received` (advertisements of source ports have counters of their own).
    let controls = receive.controls.len() as u64;
    let accounted = c.udp_rx_packets + c.total_drops() - ecn + controls;
    assert_eq!(accounted, expected, "counted {c:?}");
    assert!(c.control_received <= controls);
    let mut end = PAYLOAD_AT;
    for segment in &receive.segments {
        assert!(
            segment.at >= end && segment.len > 0,
            "{segment:?} after {end}"
        );
        end = segment.at + segment.len;
        assert!(end <= arrival.payload.end);
        let bytes = &payload[segment.at - PAYLOAD_AT..end - PAYLOAD_AT];
        assert!(
            !crate::wire::control::is_control(bytes),
            "a control-shaped datagram planned for the TUN: {segment:?}"
        );
    }
    let advertisements = receive
        .controls
        .iter()
        .filter(|c| c.kind == crate::wire::control::Kind::Ports)
        .count();
    assert_eq!(
        advertisements,
        receive.advertisements.len(),
        "an advertisement message without its advertisement, or the reverse"
    );
    let mut next = 0;
    for run in &receive.runs {
        assert_eq!(run.first, next, "runs in order, none skipped");
        assert!(run.count > 0);
        next += run.count;
    }
    assert_eq!(next, receive.segments.len(), "the runs cover every segment");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The properties hold for inputs built by hand, and a broken count would trip them: a
    /// checked property, not a silent one.
    #[test]
    fn hand_made_receives_keep_the_properties() {
        let mut udp = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0];
        udp.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
        udp.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 8, 0, 0]);
        let mut two = vec![0b1110, 0, 28, 0];
        two.extend_from_slice(&udp);
        two.extend_from_slice(&udp);
        receive_plan(&two);
        let mut garbage = vec![0b0010, 0, 1, 0];
        garbage.extend_from_slice(&[7; 40]);
        receive_plan(&garbage);
        receive_plan(&[0, 0, 0, 0]);
        receive_plan(&[1, 0, 0, 3, 0x45]);
    }
}
