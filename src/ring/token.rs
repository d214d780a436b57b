//! The completion token: which operation a completion belongs to, packed into `user_data`.
//!
//! One enum of operation kinds plus an index (a buffer id or a slot), matched once per
//! completion. Packing is `op << 32 | index`, so a token survives the round trip through the
//! kernel bit for bit, and zero (which a stray completion might carry) decodes to nothing.

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
}
