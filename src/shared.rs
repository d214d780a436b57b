//! What the main thread and the workers share, none of it on the data path: the latest stats
//! snapshot of each worker, a heartbeat per worker, and the peer's address.
//!
//! * **Snapshots** are one slot per worker that a new snapshot overwrites, not a queue: a main
//!   thread that stalls (its stdout a pipe nobody reads) costs at most one snapshot per worker,
//!   however long it stalls. A worker takes the slot's lock once per snapshot interval.
//! * **Heartbeats** are counters a worker bumps once per turn of its loop (a relaxed store to a
//!   cache line of its own). The main thread sends the service manager `WATCHDOG=1` only if
//!   every worker's counter moved since the last one, so the watchdog proves that the workers
//!   turn, not only that the main loop does.
//! * **The peer's address** changes when `--peer HOSTNAME` resolves elsewhere: the main thread
//!   stores it and bumps a generation; workers look at the generation between batches.

use crate::stats::WorkerStats;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One worker's heartbeat, alone on its cache line so that workers bumping theirs do not slow
/// each other down.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Heartbeat(AtomicU64);

/// The state one relay's main thread and workers share.
#[derive(Debug)]
pub struct Shared {
    snapshots: Vec<Mutex<Option<WorkerStats>>>,
    heartbeats: Vec<Heartbeat>,
    peer: Mutex<SocketAddr>,
    peer_generation: AtomicU64,
}

impl Shared {
    pub fn new(workers: usize, peer: SocketAddr) -> Shared {
        Shared {
            snapshots: (0..workers).map(|_| Mutex::new(None)).collect(),
            heartbeats: (0..workers).map(|_| Heartbeat::default()).collect(),
            peer: Mutex::new(peer),
            peer_generation: AtomicU64::new(0),
        }
    }

    /// A worker's newest snapshot, replacing any the main thread has not taken yet.
    pub fn put_snapshot(&self, snapshot: WorkerStats) {
        let queue = snapshot.queue;
        if let Some(slot) = self.snapshots.get(queue)
            && let Ok(mut slot) = slot.lock()
        {
            *slot = Some(snapshot);
        }
    }

    /// Takes worker `queue`'s snapshot, if a new one came since the last take.
    pub fn take_snapshot(&self, queue: usize) -> Option<WorkerStats> {
        self.snapshots.get(queue)?.lock().ok()?.take()
    }

    /// Worker `queue` finished a turn of its loop.
    pub fn beat(&self, queue: usize) {
        if let Some(h) = self.heartbeats.get(queue) {
            h.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether every worker beat since `seen` was taken; updates `seen`. The queues that did not
    /// are listed in `stalled`.
    pub fn all_beat_since(&self, seen: &mut Vec<u64>, stalled: &mut Vec<usize>) -> bool {
        seen.resize(self.heartbeats.len(), u64::MAX);
        stalled.clear();
        for (queue, (h, last)) in self.heartbeats.iter().zip(seen.iter_mut()).enumerate() {
            let now = h.0.load(Ordering::Relaxed);
            if now == *last {
                stalled.push(queue);
            }
            *last = now;
        }
        stalled.is_empty()
    }

    /// Moves the peer to `address` (the main thread, after a new name lookup).
    pub fn set_peer(&self, address: SocketAddr) {
        if let Ok(mut peer) = self.peer.lock() {
            *peer = address;
        }
        self.peer_generation.fetch_add(1, Ordering::Release);
    }

    /// The peer's address if it changed since generation `seen` (which is updated).
    pub fn peer_if_moved(&self, seen: &mut u64) -> Option<SocketAddr> {
        let generation = self.peer_generation.load(Ordering::Acquire);
        if generation == *seen {
            return None;
        }
        *seen = generation;
        self.peer.lock().ok().map(|peer| *peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_the_latest_one_per_worker_however_many_come() {
        let shared = Shared::new(2, "198.18.0.2:55555".parse().unwrap());
        for n in 0..100 {
            let mut s = WorkerStats::new(1);
            s.counters.tun_rx_packets = n;
            shared.put_snapshot(s);
        }
        assert!(shared.take_snapshot(0).is_none());
        assert_eq!(
            shared.take_snapshot(1).map(|s| s.counters.tun_rx_packets),
            Some(99)
        );
        assert!(shared.take_snapshot(1).is_none(), "taken");
        shared.put_snapshot(WorkerStats::new(7)); // no such worker: ignored
    }

    #[test]
    fn the_watchdog_needs_every_worker_to_beat() {
        let shared = Shared::new(3, "198.18.0.2:55555".parse().unwrap());
        let (mut seen, mut stalled) = (Vec::new(), Vec::new());
        for q in 0..3 {
            shared.beat(q);
        }
        assert!(shared.all_beat_since(&mut seen, &mut stalled));
        shared.beat(0);
        shared.beat(2);
        assert!(!shared.all_beat_since(&mut seen, &mut stalled));
        assert_eq!(stalled, vec![1]);
        for q in 0..3 {
            shared.beat(q);
        }
        assert!(shared.all_beat_since(&mut seen, &mut stalled));
        assert!(
            !shared.all_beat_since(&mut seen, &mut stalled),
            "no beat since"
        );
    }

    #[test]
    fn workers_see_a_moved_peer_once() {
        let shared = Shared::new(1, "198.18.0.2:55555".parse().unwrap());
        let mut seen = 0;
        assert_eq!(shared.peer_if_moved(&mut seen), None);
        let moved: SocketAddr = "198.18.0.9:55555".parse().unwrap();
        shared.set_peer(moved);
        assert_eq!(shared.peer_if_moved(&mut seen), Some(moved));
        assert_eq!(shared.peer_if_moved(&mut seen), None);
    }
}
