//! The memory a worker does I/O on: the buffers, and beside each buffer the slot of msghdrs,
//! iovecs, control messages and rewritten headers that its sends or writes are made of. All of
//! it is allocated once at setup and never moved or resized (the contract in `ring`).

use super::{MAX_GSO_SENDS, ReceiveLayout};
use crate::offload::icmp::{self, SharedBucket, SourceLimiter};
use crate::offload::split::{GSO_MAX_SEGMENTS, MAX_HEADER_LEN};
use crate::relay::receive::{MAX_GRO_SEGMENTS, ReceivePlan};
use crate::relay::send::Route;
use crate::ring::BufRing;
use crate::sys::socket::{self, OuterFamily};
use crate::wire::vnet;
use std::net::SocketAddr;
use std::sync::Arc;

/// Room for one segment's rewritten headers: the most `split` produces, beyond which it refuses
/// the super-packet.
pub(super) const HEADER_ROOM: usize = MAX_HEADER_LEN;
/// ICMP too-big errors a worker may write into the TUN for one inner sender: a burst, then this
/// many a second. One tells a sender its path; more are for the packets it sent before it knew.
pub(super) const REPLIES_PER_SOURCE_PER_SECOND: u64 = 10;
pub(super) const REPLY_BURST_PER_SOURCE: u64 = 10;
/// And for the whole relay, all senders together (the kernel's own limit for the host,
/// net.ipv4.icmp_msgs_per_sec, is 1000 a second with a burst of 50).
pub const REPLIES_PER_SECOND: u64 = 200;
pub const REPLY_BURST: u64 = 100;
/// ICMP errors that may be on their way into the TUN at once; more wait for a free buffer (and
/// are not sent, like those over the rate).
pub(super) const REPLY_BUFFERS: usize = 8;

/// Per TUN buffer: the sends that carry its packet (or, as a batch leader, the packets of several
/// buffers). Built once; the pointers inside point at this slot, at the buffer, and at the peer
/// address, all of which stay put until the worker is gone.
pub(super) struct TunSlot {
    /// `[0, MAX_GSO_SENDS)`: GSO or whole-packet sends; `MAX_GSO_SENDS + j`: segment j alone.
    pub msgs: Box<[libc::msghdr]>,
    /// Per GSO send, or whole-packet send: its `UDP_SEGMENT` and TOS control messages.
    pub controls: Box<[[u64; socket::SEND_CONTROL_WORDS]]>,
    /// The outer TOS of everything this slot sends: one packet, one batch of equal TOS, or one
    /// super-packet.
    pub tos: u8,
    /// The TOS control message alone, for the sends of single segments, and its length (0 when
    /// the TOS is 0); written when the slot's sends begin, read by all of them.
    pub tos_control: [u64; 3],
    pub tos_control_len: usize,
    /// Set once this slot's packet was answered as too big, so a super-packet whose sends fail
    /// one by one is answered once.
    pub too_big_answered: bool,
    /// Refused sends of this slot sent again (`relay::send::RESENDS_PER_SLOT`).
    pub resends: u8,
    pub iovs: Box<[libc::iovec]>,
    /// Rewritten headers of each segment of a split super-packet.
    pub headers: Box<[u8]>,
    /// Segments carried by each msghdr, and the first segment (for fallback).
    pub msg_segments: Box<[(u16, u16)]>,
    /// How many iovecs each segment uses (2 for split: header and payload; 1 for a batch).
    pub iovs_per_segment: u8,
    /// Other buffers whose packets this slot's batch send carries.
    pub followers: Vec<u16>,
    /// Sends in flight, or refused and waiting to be settled; the buffer (and followers) go back
    /// when it reaches zero.
    pub sends_pending: u16,
}

/// Per UDP buffer: how it goes into the TUN, and the writes made from it.
pub(super) struct UdpSlot {
    pub plan: ReceivePlan,
    pub iovs: Box<[libc::iovec]>,
    pub fallback_iovs: Box<[libc::iovec]>,
    /// TUN writes in flight; the buffer goes back when it reaches zero.
    pub writes_pending: u16,
    /// For the engines whose receives are single-shot: this buffer's own msghdr and iovec, laid
    /// out per `ReceiveLayout` (the kernel rewrites its lengths and flags on each receive).
    pub recv_msg: libc::msghdr,
    pub recv_iov: libc::iovec,
}

/// ICMP errors for packets too big for the path, built into buffers of their own and written into
/// the TUN, within a budget per inner sender and one for the whole relay.
pub(super) struct TooBigReplies {
    pub per_source: SourceLimiter,
    pub relay_wide: Arc<SharedBucket>,
    /// `[virtio_net_hdr][ICMP error]` each; in the kernel's hands while `busy`.
    pub buffers: Box<[[u8; vnet::LEN + icmp::MAX_REPLY]]>,
    pub iovs: Box<[libc::iovec; REPLY_BUFFERS]>,
    pub busy: [bool; REPLY_BUFFERS],
}

/// Control messages (`wire::control`: path MTU probes and acknowledgements) on their way out,
/// each from a buffer of its own with its own iovec and msghdr: an acknowledgement is 16 bytes,
/// a probe as long as the device MTU (only the worker that runs the path MTU machine sends
/// those).
pub(super) const CONTROL_SLOTS: usize = 4;

pub(super) struct ControlSends {
    /// `CONTROL_SLOTS` buffers of `len` bytes each, back to back.
    buffers: Box<[u8]>,
    len: usize,
    pub iovs: Box<[libc::iovec; CONTROL_SLOTS]>,
    pub msgs: Box<[libc::msghdr; CONTROL_SLOTS]>,
    /// In the kernel's hands until the send's result comes back.
    pub busy: [bool; CONTROL_SLOTS],
}

impl ControlSends {
    fn new(len: usize) -> ControlSends {
        let len = len.max(crate::wire::control::HEADER_LEN);
        let mut controls = ControlSends {
            buffers: vec![0u8; CONTROL_SLOTS * len].into_boxed_slice(),
            len,
            iovs: Box::new([EMPTY_IOV; CONTROL_SLOTS]),
            msgs: Box::new([zeroed_msghdr(); CONTROL_SLOTS]),
            busy: [false; CONTROL_SLOTS],
        };
        for k in 0..CONTROL_SLOTS {
            controls.iovs[k].iov_base = controls.buffers[k * len..].as_mut_ptr().cast();
        }
        controls
    }

    /// Slot `k`'s buffer, to write a message into. The caller checked that it is not busy.
    pub fn buffer_mut(&mut self, k: usize) -> &mut [u8] {
        debug_assert!(!self.busy[k]);
        &mut self.buffers[k * self.len..][..self.len]
    }

    /// Points slot `k`'s msghdr at its iovec and at `peer`, and returns it for the request.
    pub fn point_at_peer(
        &mut self,
        k: usize,
        peer: &(libc::sockaddr_storage, libc::socklen_t),
    ) -> *const libc::msghdr {
        let m = &mut self.msgs[k];
        m.msg_name = (&peer.0 as *const libc::sockaddr_storage).cast_mut().cast();
        m.msg_namelen = peer.1;
        m.msg_iov = &mut self.iovs[k];
        m.msg_iovlen = 1;
        m.msg_control = std::ptr::null_mut();
        m.msg_controllen = 0;
        &self.msgs[k]
    }
}

/// A refused send, held until the batch has read the error queue (`Worker::settle_refusals`).
/// Its slot's buffers stay out of the ring until then.
#[derive(Debug, Clone, Copy)]
pub(super) struct RefusedSend {
    pub bid: u16,
    pub msg: usize,
    pub first: usize,
    pub segments: usize,
    pub errno: i32,
    pub route: Route,
}

/// Everything the kernel may read or write while operations are in flight. Freed only after a
/// complete drain; leaked otherwise (the contract in `ring`).
pub(super) struct Memory {
    pub tun_buffers: BufRing,
    pub udp_buffers: BufRing,
    pub tun_slots: Box<[TunSlot]>,
    pub udp_slots: Box<[UdpSlot]>,
    pub replies: TooBigReplies,
    pub controls: ControlSends,
    /// A segment whose send failed as too big, header and payload put together, to quote from.
    pub reply_quote: Box<[u8; icmp::MAX_REPLY]>,
    pub layout: ReceiveLayout,
    /// Read by the kernel through the `msg_name` of every send: the worker's socket and the
    /// fragmenting one are of the same family (both bound to the listen address).
    pub peer_sockaddr: Box<(libc::sockaddr_storage, libc::socklen_t)>,
    /// The peer's address before it last moved, kept while sends made before may still name it
    /// (a move comes at most once per name lookup, seconds apart; sends complete in far less).
    retired_peer_sockaddr: Option<Box<(libc::sockaddr_storage, libc::socklen_t)>>,
}

pub(super) fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain data; all-zero is valid (no name, no iovecs, no control).
    unsafe { std::mem::zeroed() }
}

pub(super) const EMPTY_IOV: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

impl Memory {
    /// Slots for `tun_buffers` sized for sends of up to `segments` segments
    /// (`MAX_SPLIT_SEGMENTS` when the TUN hands over super-packets, one GSO batch's worth
    /// otherwise), and for `udp_buffers`, whose receives are laid out per `layout`.
    pub fn new(
        tun_buffers: BufRing,
        udp_buffers: BufRing,
        segments: usize,
        layout: ReceiveLayout,
        peer: SocketAddr,
        reply_limits: (SourceLimiter, Arc<SharedBucket>),
        control_len: usize,
    ) -> Memory {
        let peer_sockaddr = Box::new(socket::to_sockaddr(peer));
        let tun_slots = (0..tun_buffers.count())
            .map(|_| new_tun_slot(&peer_sockaddr, segments))
            .collect();
        let udp_len = udp_buffers.buf_len();
        let udp_slots = (0..udp_buffers.count())
            .map(|bid| {
                let buffer = udp_buffers.buffer_ptr(bid);
                let mut slot = UdpSlot {
                    plan: ReceivePlan::default(),
                    iovs: vec![EMPTY_IOV; 2 * MAX_GRO_SEGMENTS].into_boxed_slice(),
                    fallback_iovs: vec![EMPTY_IOV; 2 * MAX_GRO_SEGMENTS].into_boxed_slice(),
                    writes_pending: 0,
                    recv_msg: zeroed_msghdr(),
                    recv_iov: libc::iovec {
                        iov_base: buffer.wrapping_add(layout.payload_at()).cast(),
                        iov_len: udp_len - layout.payload_at(),
                    },
                };
                slot.recv_msg.msg_name = buffer.wrapping_add(layout.head).cast();
                slot.recv_msg.msg_control =
                    buffer.wrapping_add(layout.head + layout.name_len).cast();
                slot
            })
            .collect();
        let mut replies = TooBigReplies {
            per_source: reply_limits.0,
            relay_wide: reply_limits.1,
            buffers: vec![[0u8; vnet::LEN + icmp::MAX_REPLY]; REPLY_BUFFERS].into_boxed_slice(),
            iovs: Box::new([EMPTY_IOV; REPLY_BUFFERS]),
            busy: [false; REPLY_BUFFERS],
        };
        for k in 0..REPLY_BUFFERS {
            replies.iovs[k].iov_base = replies.buffers[k].as_mut_ptr().cast();
        }
        Memory {
            tun_buffers,
            udp_buffers,
            tun_slots,
            udp_slots,
            replies,
            controls: ControlSends::new(control_len),
            reply_quote: Box::new([0u8; icmp::MAX_REPLY]),
            layout,
            peer_sockaddr,
            retired_peer_sockaddr: None,
        }
    }
}

impl Memory {
    /// Names `peer` in every send from now on. The sends are pointed at the address when they
    /// are made (`submit_send`, `ControlSends::point_at_peer`), so the new storage takes over
    /// at once, and the old one lives on, retired, for those already in flight.
    pub fn move_peer(&mut self, peer: SocketAddr) {
        let moved = std::mem::replace(&mut self.peer_sockaddr, Box::new(socket::to_sockaddr(peer)));
        self.retired_peer_sockaddr = Some(moved);
    }
}

impl UdpSlot {
    /// Readies this buffer's msghdr for a single-shot receive: the kernel rewrote its lengths.
    pub fn arm_receive(&mut self, layout: ReceiveLayout) {
        self.recv_msg.msg_namelen = layout.name_len as libc::socklen_t;
        self.recv_msg.msg_controllen = layout.control_len;
        if layout.control_len == 0 {
            self.recv_msg.msg_control = std::ptr::null_mut();
        }
        self.recv_msg.msg_flags = 0;
        self.recv_msg.msg_iov = &mut self.recv_iov;
        self.recv_msg.msg_iovlen = 1;
    }
}

/// A slot for sends of up to `segments` segments.
fn new_tun_slot(peer: &(libc::sockaddr_storage, libc::socklen_t), segments: usize) -> TunSlot {
    let mut msgs = vec![zeroed_msghdr(); MAX_GSO_SENDS + segments].into_boxed_slice();
    for m in msgs.iter_mut() {
        m.msg_name = (&peer.0 as *const libc::sockaddr_storage).cast_mut().cast();
        m.msg_namelen = peer.1;
    }
    TunSlot {
        msgs,
        controls: vec![[0u64; socket::SEND_CONTROL_WORDS]; MAX_GSO_SENDS].into_boxed_slice(),
        tos: 0,
        tos_control: [0; 3],
        tos_control_len: 0,
        too_big_answered: false,
        resends: 0,
        iovs: vec![EMPTY_IOV; 2 * segments].into_boxed_slice(),
        headers: vec![0u8; segments * HEADER_ROOM].into_boxed_slice(),
        msg_segments: vec![(0, 0); MAX_GSO_SENDS + segments].into_boxed_slice(),
        iovs_per_segment: 1,
        followers: Vec::with_capacity(GSO_MAX_SEGMENTS),
        sends_pending: 0,
    }
}

impl TunSlot {
    /// Prepares a slot whose sends are about to begin (none of its earlier ones is in flight):
    /// its outer TOS and the TOS message its single-segment sends share.
    pub fn begin_sends(&mut self, tos: u8, family: OuterFamily) {
        self.tos = tos;
        self.too_big_answered = false;
        self.resends = 0;
        self.tos_control_len = if tos == 0 {
            0
        } else {
            socket::write_tos_control(&mut self.tos_control, tos, family)
        };
    }

    /// The bytes of segment `segment` of this slot's sends: its one iovec (a batch) or its
    /// header and payload (a split).
    pub fn segment_len(&self, segment: usize) -> usize {
        let per = usize::from(self.iovs_per_segment);
        self.iovs[segment * per..(segment + 1) * per]
            .iter()
            .map(|iov| iov.iov_len)
            .sum()
    }
}
