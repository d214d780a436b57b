//! The memory a worker does I/O on: the buffers, and beside each buffer the msghdrs, iovecs and
//! control messages its sends or writes are made of. All of it is allocated once at setup and
//! never moved or resized (the contract in `ring`). This is where the relay's requests, which name
//! memory by slot and [`Piece`], become pointers.

use super::ReceiveLayout;
use crate::relay::{Base, CONTROL_SLOTS, MAX_GSO_SENDS, Piece, REPLY_BUFFERS, Relay, WriteIndex};
use crate::ring::BufRing;
use crate::sys::socket;
use crate::wire::OuterFamily;
use crate::wire::cmsg;
use std::net::SocketAddr;

/// Words of one send's control area (`cmsg::SEND_CONTROL_LEN` bytes, 8-byte aligned).
const SEND_CONTROL_WORDS: usize = cmsg::SEND_CONTROL_LEN / 8;
/// Words of a TOS control message alone.
const TOS_CONTROL_WORDS: usize = cmsg::TOS_SEND_CONTROL_LEN / 8;

/// Per TUN buffer: the msghdrs, iovecs and control messages of its sends.
pub(super) struct TunSlotIo {
    /// `[0, MAX_GSO_SENDS)`: GSO or whole-packet sends; `MAX_GSO_SENDS + j`: segment j alone.
    msgs: Box<[libc::msghdr]>,
    /// Per GSO or whole-packet send: its `UDP_SEGMENT` and TOS messages.
    controls: Box<[[u64; SEND_CONTROL_WORDS]]>,
    /// The TOS message the single-segment sends share, and the TOS it says (a slot's sends all
    /// carry one TOS, which changes only when none of them is in flight).
    tos_control: [u64; TOS_CONTROL_WORDS],
    tos_control_for: Option<u8>,
    iovs: Box<[libc::iovec]>,
    /// WireGuard mode: where this slot's sends go (its peer's endpoint), and the address it
    /// holds. Rewritten only when it changes, which is never while a send of the slot is out.
    name: Box<(libc::sockaddr_storage, libc::socklen_t)>,
    name_for: Option<SocketAddr>,
}

/// Per UDP buffer: the iovecs of its writes, and the msghdr of a single-shot receive into it.
pub(super) struct UdpSlotIo {
    iovs: Box<[libc::iovec]>,
    fallback_iovs: Box<[libc::iovec]>,
    /// For the engines whose receives are single-shot: this buffer's own msghdr and iovec, laid
    /// out per `ReceiveLayout` (the kernel rewrites its lengths and flags on each receive).
    pub recv_msg: libc::msghdr,
    pub recv_iov: libc::iovec,
}

/// Everything the kernel may read or write while operations are in flight. Freed only after a
/// complete drain; leaked otherwise (the contract in `ring`).
pub(super) struct Memory {
    pub tun_buffers: BufRing,
    pub udp_buffers: BufRing,
    tun_slots: Box<[TunSlotIo]>,
    pub udp_slots: Box<[UdpSlotIo]>,
    control_msgs: Box<[libc::msghdr; CONTROL_SLOTS]>,
    control_iovs: Box<[libc::iovec; CONTROL_SLOTS]>,
    reply_iovs: Box<[libc::iovec; REPLY_BUFFERS]>,
    pub layout: ReceiveLayout,
    family: OuterFamily,
    /// Read by the kernel through the `msg_name` of every send: the worker's socket and the
    /// fragmenting one are of the same family (both bound to the listen address).
    peer_sockaddr: Box<(libc::sockaddr_storage, libc::socklen_t)>,
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
    /// Slots for `tun_buffers` sized for sends of up to `segments` segments, and for
    /// `udp_buffers`, whose receives are laid out per `layout`.
    pub fn new(
        tun_buffers: BufRing,
        udp_buffers: BufRing,
        segments: usize,
        layout: ReceiveLayout,
        peer: SocketAddr,
    ) -> Memory {
        let tun_slots = (0..tun_buffers.count())
            .map(|_| TunSlotIo {
                msgs: vec![zeroed_msghdr(); MAX_GSO_SENDS + segments].into_boxed_slice(),
                controls: vec![[0u64; SEND_CONTROL_WORDS]; MAX_GSO_SENDS].into_boxed_slice(),
                tos_control: [0; TOS_CONTROL_WORDS],
                tos_control_for: None,
                iovs: vec![EMPTY_IOV; 2 * segments].into_boxed_slice(),
                name: Box::new(socket::to_sockaddr(peer)),
                name_for: None,
            })
            .collect();
        let udp_len = udp_buffers.buf_len();
        let max_gro = crate::relay::receive::MAX_GRO_SEGMENTS;
        let udp_slots = (0..udp_buffers.count())
            .map(|bid| {
                let buffer = udp_buffers.buffer_ptr(bid);
                let mut slot = UdpSlotIo {
                    iovs: vec![EMPTY_IOV; 2 * max_gro].into_boxed_slice(),
                    fallback_iovs: vec![EMPTY_IOV; 2 * max_gro].into_boxed_slice(),
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
        Memory {
            tun_buffers,
            udp_buffers,
            tun_slots,
            udp_slots,
            control_msgs: Box::new([zeroed_msghdr(); CONTROL_SLOTS]),
            control_iovs: Box::new([EMPTY_IOV; CONTROL_SLOTS]),
            reply_iovs: Box::new([EMPTY_IOV; REPLY_BUFFERS]),
            layout,
            family: OuterFamily::of(peer),
            peer_sockaddr: Box::new(socket::to_sockaddr(peer)),
            retired_peer_sockaddr: None,
        }
    }

    /// Names `peer` in every send from now on. Sends are pointed at the address when they are
    /// laid out, so the new storage takes over at once, and the old one lives on, retired, for
    /// those already in flight.
    pub fn move_peer(&mut self, peer: SocketAddr) {
        let moved = std::mem::replace(&mut self.peer_sockaddr, Box::new(socket::to_sockaddr(peer)));
        self.retired_peer_sockaddr = Some(moved);
    }

    /// Where `piece` is: in a buffer of ours, or in the relay's own memory.
    fn iovec(&self, relay: &Relay, piece: Piece) -> libc::iovec {
        resolve(&self.tun_buffers, &self.udp_buffers, relay, piece)
    }

    /// Lays out msghdr `msg` of TUN slot `bid` for a `Request::Send` of segments
    /// `first..first + segments` (`span`), and returns it. `named`: with the peer's address (for
    /// a socket that is not connected to it).
    pub fn lay_out_send(
        &mut self,
        relay: &Relay,
        bid: u16,
        msg: u16,
        (first, segments): (u16, u16),
        segment_size: Option<u16>,
        named: bool,
    ) -> *const libc::msghdr {
        let (pieces, tos) = relay.send_pieces(bid, first, segments);
        let per = if segments == 0 {
            1
        } else {
            pieces.len() / usize::from(segments)
        };
        let iov_start = usize::from(first) * per;
        for (k, piece) in pieces.iter().enumerate() {
            let iov = self.iovec(relay, *piece);
            self.tun_slots[usize::from(bid)].iovs[iov_start + k] = iov;
        }
        let family = self.family;
        let destination = relay.send_destination(bid);
        let slot = &mut self.tun_slots[usize::from(bid)];
        if let Some(to) = destination
            && slot.name_for != Some(to)
        {
            *slot.name = socket::to_sockaddr(dual_stack(to));
            slot.name_for = Some(to);
        }
        let name = match destination {
            Some(_) => &*slot.name,
            None => &*self.peer_sockaddr,
        };
        let name = (&name.0 as *const libc::sockaddr_storage, name.1);
        let msg = usize::from(msg);
        let (control, control_len): (*mut libc::c_void, usize) = if msg < MAX_GSO_SENDS {
            // Its own control area: UDP_SEGMENT and the TOS, either, both or neither.
            let area = &mut slot.controls[msg];
            let len =
                cmsg::write_send_control(socket::as_bytes_mut(area), segment_size, tos, family);
            (area.as_mut_ptr().cast(), len)
        } else if tos == 0 {
            (std::ptr::null_mut(), 0)
        } else {
            // A single segment: the slot's TOS message, written when the slot's TOS changes (no
            // send of the slot is in flight then).
            if slot.tos_control_for != Some(tos) {
                cmsg::write_tos_control(socket::as_bytes_mut(&mut slot.tos_control), tos, family);
                slot.tos_control_for = Some(tos);
            }
            (
                slot.tos_control.as_mut_ptr().cast(),
                cmsg::TOS_SEND_CONTROL_LEN,
            )
        };
        let m = &mut slot.msgs[msg];
        if named {
            m.msg_name = name.0.cast_mut().cast();
            m.msg_namelen = name.1;
        } else {
            m.msg_name = std::ptr::null_mut();
            m.msg_namelen = 0;
        }
        m.msg_iov = slot.iovs[iov_start..].as_mut_ptr();
        m.msg_iovlen = pieces.len();
        m.msg_control = if control_len > 0 {
            control
        } else {
            std::ptr::null_mut()
        };
        m.msg_controllen = control_len;
        m.msg_flags = 0;
        &slot.msgs[msg]
    }

    /// Lays out the iovecs of a `Request::Write` of `index`; returns them, their count, and
    /// whether the write is a merged run (for fault injection).
    pub fn lay_out_write(
        &mut self,
        relay: &Relay,
        index: WriteIndex,
    ) -> (*const libc::iovec, u32, bool) {
        // The iovecs sit where the pieces sit in the relay's slot, so that the writes of one
        // buffer, in flight together, never share one.
        let (at, pieces) = relay.write_pieces(index);
        let iovs: &mut [libc::iovec] = match index {
            WriteIndex::Run { bid, .. } => &mut self.udp_slots[usize::from(bid)].iovs,
            WriteIndex::Segment { bid, .. } => &mut self.udp_slots[usize::from(bid)].fallback_iovs,
            WriteIndex::Reply { .. } => &mut self.reply_iovs[..],
        };
        for (k, piece) in pieces.iter().enumerate() {
            iovs[at + k] = resolve(&self.tun_buffers, &self.udp_buffers, relay, *piece);
        }
        let merged = matches!(index, WriteIndex::Run { .. }) && pieces.len() > 2;
        (iovs[at..].as_ptr(), pieces.len() as u32, merged)
    }

    /// Lays out control slot `k`'s msghdr for a `Request::SendControl` of `len` bytes, to the
    /// peer's address if `addressed` (the worker's `addressed`).
    pub fn lay_out_control(
        &mut self,
        relay: &Relay,
        k: u16,
        len: u32,
        addressed: bool,
    ) -> *const libc::msghdr {
        let k = usize::from(k);
        self.control_iovs[k] = self.iovec(relay, relay.control_piece(k as u16, len));
        let name = &*self.peer_sockaddr;
        let m = &mut self.control_msgs[k];
        *m = zeroed_msghdr();
        if addressed {
            m.msg_name = (&name.0 as *const libc::sockaddr_storage).cast_mut().cast();
            m.msg_namelen = name.1;
        }
        m.msg_iov = &mut self.control_iovs[k];
        m.msg_iovlen = 1;
        &self.control_msgs[k]
    }
}

/// `to` as a dual-stack IPv6 socket names it: an IPv4 address IPv4-mapped. WireGuard mode's
/// sockets are such (bound to `[::]`), and its peers may be of either family.
fn dual_stack(to: SocketAddr) -> SocketAddr {
    match to {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    }
}

/// The iovec of `piece`: in one of the worker's buffers, or in the relay's own memory.
fn resolve(tun: &BufRing, udp: &BufRing, relay: &Relay, piece: Piece) -> libc::iovec {
    let base = match piece.base {
        Base::TunBuffer(bid) => tun.buffer_ptr(bid).cast_const(),
        Base::UdpBuffer(bid) => udp.buffer_ptr(bid).cast_const(),
        own => relay
            .own_bytes(own)
            .map_or(std::ptr::null(), |bytes| bytes.as_ptr()),
    };
    libc::iovec {
        iov_base: base.wrapping_add(piece.offset as usize).cast_mut().cast(),
        iov_len: piece.len as usize,
    }
}

impl UdpSlotIo {
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

/// A view of the worker's buffers for the relay (`relay::Buffers`): what it reads and writes of
/// a buffer after the read that handed it over, while sends or writes of other bytes of the same
/// buffer may be in flight.
pub(super) struct BufferView<'a> {
    pub tun: &'a BufRing,
    pub udp: &'a BufRing,
}

impl crate::relay::Buffers for BufferView<'_> {
    fn tun(&self, bid: u16) -> &[u8] {
        // SAFETY: the relay asks only about a buffer it owns (a read handed it over and it has
        // not been given back), whose bytes no one writes while sends of it are in flight: the
        // kernel only reads them (the contract in `ring`). A shared view is then sound.
        unsafe { std::slice::from_raw_parts(self.tun.buffer_ptr(bid), self.tun.buf_len()) }
    }

    fn write_udp(&self, bid: u16, at: usize, bytes: &[u8]) {
        assert!(
            at + bytes.len() <= self.udp.buf_len(),
            "a write past the buffer"
        );
        // SAFETY: the relay owns `bid` (a receive handed it over). The bytes written are a
        // refused run's head, which the one write that named them has completed; the buffer's
        // other writes, maybe in flight, name other bytes, which this does not touch: no slice
        // over the buffer is made, only these bytes are copied, through a pointer. `bytes` is
        // the relay's own memory, not the buffer, so the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.udp.buffer_ptr(bid).add(at),
                bytes.len(),
            );
        }
    }
}

impl Memory {
    pub fn view(&self) -> BufferView<'_> {
        BufferView {
            tun: &self.tun_buffers,
            udp: &self.udp_buffers,
        }
    }
}
