//! The completion token: which operation a completion belongs to, packed into `user_data`. PURE.
//!
//! One enum of operation kinds plus an index (a buffer id or a slot), matched once per
//! completion. Packing is `op << 32 | index`, so a token survives the round trip through the
//! kernel bit for bit, and zero (which a stray completion might carry) decodes to nothing.

use super::send::Route;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// The multishot read on the TUN queue.
    TunRead = 1,
    /// The multishot recvmsg on the UDP socket.
    UdpRecv = 2,
    /// A sendmsg of one packet; the index is the TUN buffer it came from.
    UdpSend = 3,
    /// A write to the TUN queue; the index is the UDP buffer it came from.
    TunWrite = 4,
    /// A cancel request (at shutdown, or an injected end of a multishot operation).
    Cancel = 5,
    /// The timeout that bounds a wait when the kernel cannot take one with the wait itself.
    Timer = 6,
    /// A sendmsg of a relay-to-relay control message (a path MTU probe or its acknowledgement);
    /// the index is the control slot.
    ControlSend = 7,
}

impl Op {
    fn from_raw(raw: u8) -> Option<Op> {
        Some(match raw {
            1 => Op::TunRead,
            2 => Op::UdpRecv,
            3 => Op::UdpSend,
            4 => Op::TunWrite,
            5 => Op::Cancel,
            6 => Op::Timer,
            7 => Op::ControlSend,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub op: Op,
    pub index: u32,
}

impl Token {
    pub const fn new(op: Op, index: u32) -> Token {
        Token { op, index }
    }

    pub const fn user_data(self) -> u64 {
        ((self.op as u64) << 32) | self.index as u64
    }

    pub fn from_user_data(user_data: u64) -> Option<Token> {
        if user_data >> 40 != 0 {
            return None;
        }
        let op = Op::from_raw((user_data >> 32) as u8)?;
        Some(Token {
            op,
            index: user_data as u32,
        })
    }
}

/// What a `UdpSend` token's index names: the sends of TUN slot `bid` made with its msghdr
/// `msg`, on the socket `route` names. Packed as `bid | msg << 16`, with bit 31 for the
/// fragmenting socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendIndex {
    pub bid: u16,
    pub msg: u16,
    pub route: Route,
}

const FRAGMENTING_BIT: u32 = 1 << 31;

impl SendIndex {
    pub fn pack(self) -> u32 {
        let route = match self.route {
            Route::Direct => 0,
            Route::Fragmenting => FRAGMENTING_BIT,
        };
        u32::from(self.bid) | u32::from(self.msg) << 16 | route
    }

    pub fn unpack(index: u32) -> SendIndex {
        SendIndex {
            bid: index as u16,
            msg: ((index & !FRAGMENTING_BIT) >> 16) as u16,
            route: if index & FRAGMENTING_BIT != 0 {
                Route::Fragmenting
            } else {
                Route::Direct
            },
        }
    }
}

/// What a `TunWrite` token's index names. Packed as `a | b << 16 | kind << 30`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteIndex {
    /// Run `run` of UDP buffer `bid`: one merged or plain packet.
    Run { bid: u16, run: u16 },
    /// Segment `segment` of UDP buffer `bid`, written alone after the kernel refused its run.
    Segment { bid: u16, segment: u16 },
    /// ICMP error `k` that this relay made (`slots::TooBigReplies`).
    Reply { k: u16 },
}

impl WriteIndex {
    pub fn pack(self) -> u32 {
        let (kind, a, b) = match self {
            WriteIndex::Run { bid, run } => (0, bid, run),
            WriteIndex::Segment { bid, segment } => (1, bid, segment),
            WriteIndex::Reply { k } => (2, k, 0),
        };
        u32::from(a) | u32::from(b & 0x3fff) << 16 | kind << 30
    }

    pub fn unpack(index: u32) -> WriteIndex {
        let (a, b) = (index as u16, ((index >> 16) & 0x3fff) as u16);
        match index >> 30 {
            0 => WriteIndex::Run { bid: a, run: b },
            1 => WriteIndex::Segment { bid: a, segment: b },
            _ => WriteIndex::Reply { k: a },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_op_and_edge_index() {
        for op in [
            Op::TunRead,
            Op::UdpRecv,
            Op::UdpSend,
            Op::TunWrite,
            Op::Cancel,
            Op::Timer,
            Op::ControlSend,
        ] {
            for index in [0, 1, 255, 65535, u32::MAX] {
                let t = Token::new(op, index);
                assert_eq!(Token::from_user_data(t.user_data()), Some(t));
            }
        }
    }

    #[test]
    fn distinct_tokens_have_distinct_user_data() {
        let a = Token::new(Op::UdpSend, 7).user_data();
        let b = Token::new(Op::TunWrite, 7).user_data();
        let c = Token::new(Op::UdpSend, 8).user_data();
        assert!(a != b && a != c && b != c);
    }

    #[test]
    fn garbage_user_data_decodes_to_nothing() {
        assert_eq!(Token::from_user_data(0), None);
        assert_eq!(Token::from_user_data(8 << 32), None);
        assert_eq!(Token::from_user_data(u64::MAX), None);
        assert_eq!(Token::from_user_data(1 << 40 | 1 << 32), None);
    }

    #[test]
    fn send_indexes_round_trip_through_the_token() {
        for route in [Route::Direct, Route::Fragmenting] {
            for bid in [0, 1, 255, u16::MAX] {
                for msg in [0, 1, 10, 0x7ffe] {
                    let index = SendIndex { bid, msg, route };
                    let token = Token::new(Op::UdpSend, index.pack());
                    let back = Token::from_user_data(token.user_data()).unwrap();
                    assert_eq!(back.op, Op::UdpSend);
                    assert_eq!(SendIndex::unpack(back.index), index);
                }
            }
        }
    }

    #[test]
    fn write_indexes_round_trip_through_the_token() {
        let mut seen = std::collections::HashSet::new();
        for bid in [0, 1, 255, u16::MAX] {
            for n in [0u16, 1, 127, 0x3fff] {
                for index in [
                    WriteIndex::Run { bid, run: n },
                    WriteIndex::Segment { bid, segment: n },
                    WriteIndex::Reply { k: bid },
                ] {
                    let token = Token::new(Op::TunWrite, index.pack());
                    let back = Token::from_user_data(token.user_data()).unwrap();
                    assert_eq!(WriteIndex::unpack(back.index), index);
                    seen.insert(index.pack());
                }
            }
        }
        // Runs, segments and replies never share an index.
        assert_eq!(seen.len(), 4 * 4 * 2 + 4);
    }
}
