//! Packets staged for a peer while its handshake runs.
//!
//! A packet for a peer with no session is not dropped: it waits here, copied, until a keypair
//! exists, and then goes out in the order it came (the whitepaper's section 6.2, "unless there
//! is a valid session, queue the packet and initiate a handshake"). The queue is bounded in
//! packets, as the Linux module bounds its `staged_packet_queue` (`MAX_STAGED_PACKETS`, 128,
//! `drivers/net/wireguard/device.c`, `wg_xmit`), and in bytes, which the module need not do (its
//! packets are at most the MTU) but a device with a 64 KiB MTU would. When a packet would not
//! fit, the oldest ones make room, as `wg_xmit` drops from the head: the newest packets are the
//! ones a sender that is still retrying cares about. If the handshake gives up
//! (REKEY_ATTEMPT_TIME), the whole queue goes (`wg_packet_purge_staged_packets` in
//! `timers.c`, `wg_expired_retransmit_handshake`).
//!
//! Only the path without a session touches it: workers push under the peer's lock (one per
//! packet or per split super-packet), the control thread takes everything at once when a
//! keypair is ready and seals outside the lock. A worker with a session never locks it.

use std::collections::VecDeque;

use crate::constants::{MAX_STAGED_BYTES, MAX_STAGED_PACKETS};

/// One staged plaintext and the most it may be padded to (the relay's MTU cap on padding).
#[derive(Debug)]
pub struct StagedPacket {
    /// The inner IP packet.
    pub packet: Box<[u8]>,
    /// The padded plaintext must not be longer than this (at least `packet.len()`).
    pub plaintext_room: usize,
}

/// A bounded first-in first-out queue of staged packets.
#[derive(Debug, Default)]
pub struct StagedPackets {
    packets: VecDeque<StagedPacket>,
    bytes: usize,
}

impl StagedPackets {
    /// Stage the concatenation of `parts` (for example a split segment's rewritten header and
    /// its payload), to be padded to at most `plaintext_room` bytes. Returns how many older
    /// packets were dropped to make room (the caller counts them). A packet longer than the
    /// byte bound by itself is refused: then the return value counts it too, and it is not
    /// staged.
    pub fn push(&mut self, parts: &[&[u8]], plaintext_room: usize) -> u64 {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        if len > MAX_STAGED_BYTES {
            return 1;
        }
        let mut dropped = 0;
        while self.packets.len() >= MAX_STAGED_PACKETS || self.bytes + len > MAX_STAGED_BYTES {
            let Some(oldest) = self.packets.pop_front() else {
                break;
            };
            self.bytes -= oldest.packet.len();
            dropped += 1;
        }
        let mut packet = Vec::with_capacity(len);
        for part in parts {
            packet.extend_from_slice(part);
        }
        self.bytes += len;
        self.packets.push_back(StagedPacket {
            packet: packet.into_boxed_slice(),
            plaintext_room: plaintext_room.max(len),
        });
        dropped
    }

    /// Everything staged, oldest first; the queue is empty afterwards.
    pub fn take(&mut self) -> VecDeque<StagedPacket> {
        self.bytes = 0;
        std::mem::take(&mut self.packets)
    }

    /// Drop everything staged; returns how many packets that was.
    pub fn purge(&mut self) -> u64 {
        self.take().len() as u64
    }

    /// Packets staged.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Bytes staged (the packets' own lengths).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_bytes(queue: &mut StagedPackets) -> Vec<u8> {
        queue.take().into_iter().map(|p| p.packet[0]).collect()
    }

    #[test]
    fn packets_come_out_in_order_and_whole() {
        let mut queue = StagedPackets::default();
        assert_eq!(queue.push(&[&[1, 2], &[3]], 16), 0);
        assert_eq!(queue.push(&[&[4; 100]], 90), 0);
        assert_eq!((queue.len(), queue.bytes()), (2, 103));
        let taken = queue.take();
        assert_eq!(&*taken[0].packet, &[1, 2, 3]);
        assert_eq!(taken[0].plaintext_room, 16);
        assert_eq!(taken[1].plaintext_room, 100, "never less than the packet");
        assert!(queue.is_empty());
        assert_eq!(queue.bytes(), 0);
    }

    #[test]
    fn past_the_count_the_oldest_go() {
        let mut queue = StagedPackets::default();
        let mut dropped = 0;
        for k in 0..MAX_STAGED_PACKETS + 3 {
            dropped += queue.push(&[&[k as u8]], 16);
        }
        assert_eq!(dropped, 3);
        assert_eq!(queue.len(), MAX_STAGED_PACKETS);
        let kept = first_bytes(&mut queue);
        assert_eq!(kept[0], 3, "packets 0, 1 and 2 made room");
        assert_eq!(*kept.last().unwrap(), (MAX_STAGED_PACKETS + 2) as u8);
    }

    #[test]
    fn past_the_bytes_the_oldest_go() {
        let mut queue = StagedPackets::default();
        let big = vec![7u8; 60_000];
        let mut dropped = 0;
        for k in 0..6u8 {
            let mut packet = big.clone();
            packet[0] = k;
            dropped += queue.push(&[&packet], 60_000);
        }
        assert!(queue.bytes() <= MAX_STAGED_BYTES);
        assert_eq!(dropped as usize, 6 - MAX_STAGED_BYTES / 60_000);
        let kept = first_bytes(&mut queue);
        assert_eq!(*kept.last().unwrap(), 5, "the newest stays");
        assert_eq!(queue.push(&[&vec![0u8; MAX_STAGED_BYTES + 1]], 0), 1);
        assert!(queue.is_empty(), "one packet over the bound is refused");
        queue.push(&[&[1]], 16);
        assert_eq!(queue.purge(), 1);
        assert!(queue.is_empty());
    }
}
