//! What the relay remembers about each buffer while operations on it are in flight: the pieces
//! its sends or writes are made of, how many of them are out, and what a refusal needs to send
//! them again. PURE: pieces name memory by [`Base`] and offset, never by pointer; the shell turns
//! them into iovecs when it hands a request to the kernel.

use super::Socket;
use super::receive::{MAX_GRO_SEGMENTS, ReceivePlan};
use super::send::Route;
use crate::offload::icmp::{self, SharedBucket, SourceLimiter};
use crate::offload::split::{GSO_MAX_SEGMENTS, MAX_HEADER_LEN};
use crate::wire::{control, vnet};
use std::sync::Arc;

/// Room for one segment's rewritten headers: the most `split` produces, beyond which it refuses
/// the super-packet.
pub const HEADER_ROOM: usize = MAX_HEADER_LEN;
/// ICMP too-big errors that may be on their way into the TUN at once; more are not sent (like
/// those over the rate).
pub const REPLY_BUFFERS: usize = 8;
/// Control slots kept for this relay's own messages: its listen tuple machine's probe, its
/// advertisement, and one probe for each extra tuple's machine, which all start (and send
/// their keepalives) together. The first `OWN_CONTROL_SLOTS` slots are theirs alone, so that
/// answers to the peer (which anyone who can forge its address can ask for) never leave this
/// relay's own probes and advertisement unsent.
pub const OWN_CONTROL_SLOTS: usize = 2 + super::entropy::MAX_TUPLES;
/// Control slots for answers to the peer: as many as its own messages of one batch, which need
/// one each (its listen tuple's probe, its advertisement, its extra tuples' probes).
pub const ANSWER_CONTROL_SLOTS: usize = 2 + super::entropy::MAX_TUPLES;
/// Control messages (path MTU probes, advertisements and acknowledgements) that may be on their
/// way out at once: this relay's own, then the answers.
pub const CONTROL_SLOTS: usize = OWN_CONTROL_SLOTS + ANSWER_CONTROL_SLOTS;

/// The memory a [`Piece`] is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// TUN buffer `bid` (the shell's), where a read put `[virtio_net_hdr][packet]`.
    TunBuffer(u16),
    /// UDP buffer `bid` (the shell's), where a receive put the datagrams.
    UdpBuffer(u16),
    /// The headers the relay rewrote for the segments of TUN slot `bid`'s split super-packet.
    SplitHeaders(u16),
    /// The virtio headers of UDP slot `bid`'s merged writes, one per run.
    RunHeaders(u16),
    /// An all-zero virtio header, for a plain packet's write.
    PlainHeader,
    /// The relay's control message buffers.
    Control,
    /// The relay's ICMP error buffers.
    Reply,
    /// The datagrams WireGuard mode sealed from TUN slot `bid`'s packet (`relay::wireguard`).
    Sealed(u16),
}

/// One iovec's worth of a send or a write: `len` bytes at `offset` in `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub base: Base,
    pub offset: u32,
    pub len: u32,
}

impl Piece {
    pub const EMPTY: Piece = Piece {
        base: Base::PlainHeader,
        offset: 0,
        len: 0,
    };

    pub fn new(base: Base, offset: usize, len: usize) -> Piece {
        Piece {
            base,
            offset: offset as u32,
            len: len as u32,
        }
    }
}

/// Per TUN buffer: the sends that carry its packet (or, as a batch leader, the packets of several
/// buffers), and the headers of its split.
#[derive(Debug)]
pub struct TunSlot {
    /// `pieces_per_segment` pieces per segment: a batch's packets (one each), or a split's
    /// header and payload (two each).
    pub pieces: Box<[Piece]>,
    pub pieces_per_segment: u8,
    /// Rewritten headers of each segment of a split super-packet, `HEADER_ROOM` apart.
    pub headers: Box<[u8]>,
    /// Per msghdr: the segments it carries and the first of them. `[0, MAX_GSO_SENDS)` are GSO
    /// or whole-packet sends; `MAX_GSO_SENDS + j` sends segment j alone.
    pub msg_segments: Box<[(u16, u16)]>,
    /// The outer TOS of everything this slot sends: one packet, one batch of equal TOS, or one
    /// super-packet.
    pub tos: u8,
    /// Set once this slot's packet was answered as too big, so a super-packet whose sends fail
    /// one by one is answered once.
    pub too_big_answered: bool,
    /// Refused sends of this slot sent again (`send::RESENDS_PER_SLOT`).
    pub resends: u8,
    /// The outer tuple its direct sends leave from: 0 for the listen tuple, `k + 1` for extra
    /// socket `k` (`entropy::tuple_for`). One flow per slot, so one tuple.
    pub tuple: u8,
    /// The flow's extra tuple is in use but not confirmed (`entropy::SourcePorts::
    /// tuple_confirmed`): it leaves from the listen tuple instead, counted when sent.
    pub fallback: bool,
    /// Other buffers whose packets this slot's batch send carries.
    pub followers: Vec<u16>,
    /// Sends in flight, or refused and waiting to be settled; the buffer (and followers) go back
    /// when it reaches zero.
    pub sends_pending: u16,
}

impl TunSlot {
    /// A slot for sends of up to `segments` segments.
    pub fn new(segments: usize) -> TunSlot {
        TunSlot {
            pieces: vec![Piece::EMPTY; 2 * segments].into_boxed_slice(),
            pieces_per_segment: 1,
            headers: vec![0u8; segments * HEADER_ROOM].into_boxed_slice(),
            msg_segments: vec![(0, 0); super::MAX_GSO_SENDS + segments].into_boxed_slice(),
            tos: 0,
            too_big_answered: false,
            resends: 0,
            tuple: 0,
            fallback: false,
            followers: Vec::with_capacity(GSO_MAX_SEGMENTS),
            sends_pending: 0,
        }
    }

    /// Prepares a slot whose sends are about to begin (none of its earlier ones is in flight),
    /// from outer tuple `tuple`.
    pub fn begin_sends(&mut self, tos: u8, pieces_per_segment: u8, tuple: u8) {
        self.tos = tos;
        self.tuple = tuple;
        self.fallback = false;
        self.too_big_answered = false;
        self.resends = 0;
        self.pieces_per_segment = pieces_per_segment;
    }

    /// The pieces of segments `first..first + count`.
    pub fn segment_pieces(&self, first: usize, count: usize) -> &[Piece] {
        let per = usize::from(self.pieces_per_segment);
        &self.pieces[first * per..(first + count) * per]
    }

    /// The bytes of segment `segment` of this slot's sends.
    pub fn segment_len(&self, segment: usize) -> usize {
        self.segment_pieces(segment, 1)
            .iter()
            .map(|p| p.len as usize)
            .sum()
    }
}

/// Per UDP buffer: how it goes into the TUN, and the writes made from it.
pub struct UdpSlot {
    pub plan: ReceivePlan,
    /// Per run: its virtio header, its head, the payloads of its later segments.
    pub pieces: Box<[Piece]>,
    /// Where each run's pieces begin in `pieces`.
    pub run_starts: Box<[u16]>,
    /// Per segment written alone after its run was refused: a plain header and the segment.
    pub fallback_pieces: Box<[Piece]>,
    /// TUN writes in flight; the buffer goes back when it reaches zero.
    pub writes_pending: u16,
}

impl UdpSlot {
    pub fn new() -> UdpSlot {
        UdpSlot {
            plan: ReceivePlan::default(),
            pieces: vec![Piece::EMPTY; 2 * MAX_GRO_SEGMENTS].into_boxed_slice(),
            run_starts: vec![0; MAX_GRO_SEGMENTS].into_boxed_slice(),
            fallback_pieces: vec![Piece::EMPTY; 2 * MAX_GRO_SEGMENTS].into_boxed_slice(),
            writes_pending: 0,
        }
    }
}

/// ICMP errors for packets too big for the path, built into buffers of the relay's own and
/// written into the TUN, within a budget per inner sender and one for the whole relay.
#[derive(Debug)]
pub struct TooBigReplies {
    pub per_source: SourceLimiter,
    pub relay_wide: Arc<SharedBucket>,
    /// `[virtio_net_hdr][ICMP error]` each, `REPLY_LEN` apart; in the kernel's hands while
    /// `busy`.
    pub buffers: Box<[u8]>,
    pub busy: [bool; REPLY_BUFFERS],
    /// Per buffer, the one piece its write is: the header and the error, as long as it is.
    pub pieces: [Piece; REPLY_BUFFERS],
}

/// Bytes of one ICMP error buffer.
pub const REPLY_LEN: usize = vnet::LEN + icmp::MAX_REPLY;

impl TooBigReplies {
    pub fn new(per_source: SourceLimiter, relay_wide: Arc<SharedBucket>) -> TooBigReplies {
        TooBigReplies {
            per_source,
            relay_wide,
            buffers: vec![0u8; REPLY_BUFFERS * REPLY_LEN].into_boxed_slice(),
            busy: [false; REPLY_BUFFERS],
            pieces: [Piece::EMPTY; REPLY_BUFFERS],
        }
    }
}

/// Control messages on their way out, each from a buffer of its own: an acknowledgement is 16
/// bytes, a probe as long as the device MTU (only the worker that runs the path MTU machine
/// sends those).
#[derive(Debug)]
pub struct ControlSends {
    buffers: Box<[u8]>,
    /// Bytes of each buffer.
    pub len: usize,
    pub busy: [bool; CONTROL_SLOTS],
    /// Bytes of the message in each busy slot, to send it again as it was.
    pub message_len: [u32; CONTROL_SLOTS],
    /// Times each busy slot's message was sent again after a refusal.
    pub resends: [u8; CONTROL_SLOTS],
    /// The socket each busy slot's message goes out on.
    pub socket: [Socket; CONTROL_SLOTS],
}

impl ControlSends {
    pub fn new(len: usize) -> ControlSends {
        let len = len.max(control::HEADER_LEN);
        ControlSends {
            buffers: vec![0u8; CONTROL_SLOTS * len].into_boxed_slice(),
            len,
            busy: [false; CONTROL_SLOTS],
            message_len: [0; CONTROL_SLOTS],
            resends: [0; CONTROL_SLOTS],
            socket: [Socket::Worker; CONTROL_SLOTS],
        }
    }

    /// Slot `k`'s buffer, to write a message into. The caller checked that it is not busy.
    pub fn buffer_mut(&mut self, k: usize) -> &mut [u8] {
        debug_assert!(!self.busy[k]);
        &mut self.buffers[k * self.len..][..self.len]
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buffers
    }
}

/// A refused send, held until the batch has read the error queue (`Relay::settle_refusals`).
/// Its slot's buffers stay out of the ring until then.
#[derive(Debug, Clone, Copy)]
pub struct RefusedSend {
    pub bid: u16,
    pub msg: usize,
    pub first: usize,
    pub segments: usize,
    pub errno: i32,
    pub route: Route,
}
