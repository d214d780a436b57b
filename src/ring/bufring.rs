//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19): a fixed set of equal buffers
//! that the kernel picks from when a multishot read or receive has data.
//!
//! See the buffer-lifetime contract in the parent module: this type owns the memory, and
//! [`BufRing::provide`] hands a buffer to the kernel.

use io_uring::types::BufRingEntry;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

const PAGE: usize = 4096;

pub struct BufRing {
    group: u16,
    entries: NonNull<BufRingEntry>,
    entries_layout: Layout,
    memory: NonNull<u8>,
    memory_layout: Layout,
    buf_len: usize,
    count: u16,
    /// Our tail; the kernel sees it only after `publish`.
    tail: u16,
}

impl BufRing {
    /// Allocates `count` buffers of `buf_len` bytes (count a power of two, at most 32768).
    pub fn new(group: u16, count: u16, buf_len: usize) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 || buf_len == 0 || buf_len > u32::MAX as usize
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad buffer ring geometry",
            ));
        }
        let entries_layout =
            Layout::from_size_align(usize::from(count) * size_of::<BufRingEntry>(), PAGE)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let memory_layout = Layout::from_size_align(usize::from(count) * buf_len, PAGE)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: both layouts have non-zero size (count >= 1, buf_len >= 1).
        let entries = NonNull::new(unsafe { alloc_zeroed(entries_layout) }.cast::<BufRingEntry>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: as above.
        let Some(memory) = NonNull::new(unsafe { alloc_zeroed(memory_layout) }) else {
            // SAFETY: `entries` came from `alloc_zeroed` with this layout and is not used again.
            unsafe { dealloc(entries.as_ptr().cast(), entries_layout) };
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        Ok(BufRing {
            group,
            entries,
            entries_layout,
            memory,
            memory_layout,
            buf_len,
            count,
            tail: 0,
        })
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    pub fn buf_len(&self) -> usize {
        self.buf_len
    }

    /// Registers the ring with `ring`'s kernel context.
    ///
    /// # Safety
    /// The caller keeps `self` alive, unmoved in memory, until every operation that may select from
    /// this group has completed (the contract in `ring`).
    pub unsafe fn register(&self, submitter: &io_uring::Submitter<'_>) -> io::Result<()> {
        // SAFETY: the entries array is page aligned, `count` entries long, and (by this function's
        // contract) outlives its use by the kernel.
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.entries.as_ptr() as u64,
                self.count,
                self.group,
                0,
            )
        }
    }

    /// Hands buffer `bid` to the kernel; it becomes visible at the next [`publish`](Self::publish).
    /// The caller must own `bid` and have no submission in flight that names it.
    pub fn provide(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        let slot = usize::from(self.tail & (self.count - 1));
        // SAFETY: `slot < count`, inside the entries allocation. Setting addr, len and bid leaves the
        // `resv` field (the kernel-visible tail, which aliases entry 0) untouched.
        let entry = unsafe { &mut *self.entries.as_ptr().add(slot) };
        entry.set_addr(self.buffer_ptr(bid) as u64);
        entry.set_len(self.buf_len as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every provided buffer visible to the kernel (one release store per batch).
    pub fn publish(&self) {
        // SAFETY: `tail` points at entry 0's `resv` field, inside the allocation, suitably aligned
        // for a u16; the kernel reads it with acquire semantics, so a release store is the protocol.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The start of buffer `bid`. A pointer, not a slice: whether it may be touched depends on who
    /// owns it (the contract in `ring`).
    pub fn buffer_ptr(&self, bid: u16) -> *mut u8 {
        assert!(bid < self.count, "buffer id out of range");
        // SAFETY: bid < count, so the offset stays inside the allocation.
        unsafe { self.memory.as_ptr().add(usize::from(bid) * self.buf_len) }
    }

    /// Buffer `bid` as a mutable slice.
    ///
    /// # Safety
    /// The caller owns `bid` (a completion selected it and it has not been provided or submitted
    /// again) and holds no other reference to it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn buffer_mut(&self, bid: u16) -> &mut [u8] {
        // SAFETY: in bounds (`buffer_ptr`), and exclusively ours by this function's contract.
        unsafe { std::slice::from_raw_parts_mut(self.buffer_ptr(bid), self.buf_len) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both pointers came from `alloc_zeroed` with these layouts. The owner guarantees
        // (contract in `ring`) that the kernel no longer uses them, or leaks `self` instead.
        unsafe {
            dealloc(self.entries.as_ptr().cast(), self.entries_layout);
            dealloc(self.memory.as_ptr(), self.memory_layout);
        }
    }
}

// SAFETY: BufRing owns its allocations outright; moving it to another thread moves that ownership.
unsafe impl Send for BufRing {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_is_checked() {
        assert!(BufRing::new(0, 3, 100).is_err());
        assert!(BufRing::new(0, 0, 100).is_err());
        assert!(BufRing::new(0, 4, 0).is_err());
        let r = BufRing::new(1, 4, 100).unwrap();
        assert_eq!(r.buffer_ptr(1) as usize - r.buffer_ptr(0) as usize, 100);
        assert_eq!(r.memory.as_ptr() as usize % PAGE, 0);
    }

    #[test]
    fn provide_and_publish_fill_entries_and_tail() {
        let mut r = BufRing::new(0, 4, 64).unwrap();
        for bid in [2, 0, 3] {
            r.provide(bid);
        }
        r.publish();
        // SAFETY: reading entries we wrote, with no kernel involved in this test.
        let entries = unsafe { std::slice::from_raw_parts(r.entries.as_ptr(), 4) };
        assert_eq!(entries[0].bid(), 2);
        assert_eq!(entries[1].bid(), 0);
        assert_eq!(entries[2].addr(), r.buffer_ptr(3) as u64);
        assert_eq!(entries[2].len(), 64);
        // SAFETY: as above.
        let tail = unsafe { *BufRingEntry::tail(r.entries.as_ptr()) };
        assert_eq!(tail, 3);
    }

    #[test]
    fn tail_wraps_around_the_ring() {
        let mut r = BufRing::new(0, 2, 8).unwrap();
        for round in 0..5u16 {
            r.provide(round % 2);
        }
        r.publish();
        assert_eq!(r.tail, 5);
    }
}
