//! Which plain packets share one UDP GSO send. PURE.
//!
//! Consecutive plain packets of one flow key and one outer TOS, all of the first one's size but
//! maybe a shorter last, go out as one `sendmsg` with `UDP_SEGMENT` (what `udp_send_skb`
//! accepts). Only packets of one flow key share a send: the receiving relay's steering program
//! sees the first segment only, and all of them go to the worker it picks. And one send carries
//! one outer TOS.

use crate::offload::split::{GSO_MAX_BYTES, GSO_MAX_SEGMENTS};

/// Consecutive plain packets waiting to go out as one GSO send. Packet 0 is in buffer `leader`;
/// the others in the buffers the engine keeps as the leader's followers, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub leader: u16,
    pub count: usize,
    pub segment_size: usize,
    pub bytes: usize,
    pub flow: Option<u32>,
    /// The outer TOS of every packet in the batch: one send carries one.
    pub tos: u8,
    /// A shorter packet ended the batch: nothing more may follow it.
    pub closed: bool,
}

/// What became of a packet offered to the [`Batcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// It joined the pending batch as packet `position` (its buffer is the leader's follower
    /// `position - 1`).
    Joined { position: usize },
    /// It leads a new batch; `flushed`, the batch pending before, if any, must be sent first.
    Leads { flushed: Option<Batch> },
}

/// The one pending batch of a worker.
#[derive(Debug, Default)]
pub struct Batcher {
    pending: Option<Batch>,
}

impl Batcher {
    /// Offers the plain packet of `len` bytes in buffer `id`.
    pub fn offer(&mut self, id: u16, len: usize, flow: Option<u32>, tos: u8) -> Offer {
        if let Some(batch) = &mut self.pending {
            let fits = !batch.closed
                && batch.flow == flow
                && batch.tos == tos
                && len <= batch.segment_size
                && batch.count < GSO_MAX_SEGMENTS
                && batch.bytes + len <= GSO_MAX_BYTES;
            if fits {
                batch.count += 1;
                batch.bytes += len;
                batch.closed = len < batch.segment_size;
                return Offer::Joined {
                    position: batch.count - 1,
                };
            }
        }
        let flushed = self.pending.replace(Batch {
            leader: id,
            count: 1,
            segment_size: len,
            bytes: len,
            flow,
            tos,
            closed: false,
        });
        Offer::Leads { flushed }
    }

    /// The buffer leading the pending batch, if there is one.
    pub fn leader(&self) -> Option<u16> {
        self.pending.map(|b| b.leader)
    }

    /// Takes the pending batch, to send it now.
    pub fn take(&mut self) -> Option<Batch> {
        self.pending.take()
    }
}

/// The buffer that segment `segment` of a batch was read into: the leader's, then its
/// followers' in order. Each datagram is timed from its own buffer's read.
pub fn segment_source(leader: u16, followers: &[u16], segment: usize) -> u16 {
    match segment {
        0 => leader,
        k => followers.get(k - 1).copied().unwrap_or(leader),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_flow_of_equal_sizes_shares_a_send_until_a_shorter_packet_closes_it() {
        let mut b = Batcher::default();
        assert_eq!(b.offer(1, 1000, Some(7), 0), Offer::Leads { flushed: None });
        assert_eq!(b.offer(2, 1000, Some(7), 0), Offer::Joined { position: 1 });
        assert_eq!(b.offer(3, 600, Some(7), 0), Offer::Joined { position: 2 });
        let Offer::Leads {
            flushed: Some(done),
        } = b.offer(4, 600, Some(7), 0)
        else {
            panic!("a closed batch takes nothing more");
        };
        assert_eq!((done.leader, done.count, done.bytes), (1, 3, 2600));
        assert_eq!(b.take().map(|b| b.leader), Some(4));
        assert_eq!(b.take(), None);
    }

    #[test]
    fn another_flow_tos_or_a_longer_packet_starts_a_new_batch() {
        for (flow, tos, len) in [(Some(8), 0, 1000), (Some(7), 2, 1000), (Some(7), 0, 1001)] {
            let mut b = Batcher::default();
            b.offer(1, 1000, Some(7), 0);
            assert!(
                matches!(
                    b.offer(2, len, flow, tos),
                    Offer::Leads { flushed: Some(_) }
                ),
                "flow {flow:?} tos {tos} len {len}"
            );
        }
    }

    #[test]
    fn a_batch_stops_at_the_gso_limits() {
        let mut b = Batcher::default();
        for id in 0..GSO_MAX_SEGMENTS as u16 {
            b.offer(id, 100, None, 0);
        }
        let Offer::Leads {
            flushed: Some(full),
        } = b.offer(99, 100, None, 0)
        else {
            panic!("64 segments at most");
        };
        assert_eq!(full.count, GSO_MAX_SEGMENTS);
        let mut b = Batcher::default();
        let mut bytes = 0;
        let mut id = 0;
        while let Offer::Leads { flushed: None } | Offer::Joined { .. } = b.offer(id, 1400, None, 0)
        {
            bytes += 1400;
            id += 1;
            if id > 100 {
                break;
            }
        }
        assert!(bytes <= GSO_MAX_BYTES, "{bytes} bytes in one send");
        assert_eq!(id, (GSO_MAX_BYTES / 1400) as u16);
    }

    #[test]
    fn each_sent_segment_is_timed_from_its_own_buffer() {
        let followers = [7, 9, 4];
        let sources: Vec<u16> = (0..4).map(|k| segment_source(3, &followers, k)).collect();
        assert_eq!(sources, vec![3, 7, 9, 4]);
    }
}
