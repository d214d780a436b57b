//! The receive-side replay window: which counters of one keypair have been accepted.
//!
//! The design is the Linux module's (`drivers/net/wireguard/receive.c`, `counter_validate`),
//! itself RFC 6479's: a ring of 128 `u64` words (8192 bits), of which one word is the slack that
//! lets the window slide a whole word at a time, so it remembers the last 8128 counters below
//! the highest accepted one. Accepting a counter far ahead clears only the words it skips (at
//! most the whole ring), never shifts a bitmap. Anything older than the window is refused: the
//! sender's counter only grows, so a packet that late is either a replay or not worth the risk.
//!
//! Workers of a multi-threaded relay open datagrams of the same keypair at once, and the window
//! must see each counter exactly once. It sits behind a `Mutex` that a worker locks once per
//! receive batch ([`ReplayProtection::lock`]) and then checks every counter of the batch that
//! belongs to this keypair under that one lock. The check must come after the AEAD has
//! authenticated the packet (whitepaper 5.4.6), or a forged counter would move the window.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::constants::REJECT_AFTER_MESSAGES;

const WORD_BITS: u64 = u64::BITS as u64;
const RING_WORDS: usize = 128;
/// How far below the highest accepted counter a counter may be and still be accepted once.
pub const WINDOW_SIZE: u64 = RING_WORDS as u64 * WORD_BITS - WORD_BITS;

/// The window itself, without a lock. [`ReplayProtection`] is the shared form.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// The highest accepted counter plus one, so that zero means "nothing accepted yet".
    top: u64,
    /// Bit `p % 64` of word `(p / 64) % RING_WORDS` is set when position `p` (a counter plus
    /// one) has been accepted.
    ring: [u64; RING_WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// A window that has accepted nothing.
    pub const fn new() -> Self {
        Self {
            top: 0,
            ring: [0; RING_WORDS],
        }
    }

    /// Accept `counter` if it has not been seen, is not too old, and is below
    /// `REJECT_AFTER_MESSAGES`; remember it if accepted.
    pub fn check_and_set(&mut self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        // Positions are counters plus one; cannot overflow because of the check above, and
        // neither can `position + WINDOW_SIZE`.
        let position = counter + 1;
        if position + WINDOW_SIZE < self.top {
            return false;
        }
        let word = position / WORD_BITS;
        if position > self.top {
            let top_word = self.top / WORD_BITS;
            // Clear the words between the old top's word and the new one; past a full ring
            // every word is stale anyway.
            let skipped = (word - top_word).min(RING_WORDS as u64);
            for step in 1..=skipped {
                self.ring[((top_word + step) % RING_WORDS as u64) as usize] = 0;
            }
            self.top = position;
        }
        let slot = &mut self.ring[(word % RING_WORDS as u64) as usize];
        let bit = 1u64 << (position % WORD_BITS);
        let fresh = *slot & bit == 0;
        *slot |= bit;
        fresh
    }

    /// The highest counter accepted so far.
    pub fn highest_accepted(&self) -> Option<u64> {
        self.top.checked_sub(1)
    }
}

/// The window of one keypair, shared by the workers that open its datagrams.
#[derive(Debug, Default)]
pub struct ReplayProtection {
    window: Mutex<ReplayWindow>,
}

impl ReplayProtection {
    /// A fresh window.
    pub fn new() -> Self {
        Self::default()
    }

    /// Take the window for a batch. Hold the guard while checking the batch's counters of this
    /// keypair, then drop it; never hold it across I/O.
    pub fn lock(&self) -> ReplayGuard<'_> {
        // No code panics while holding the lock, so a poisoned window is still consistent.
        ReplayGuard {
            window: self.window.lock().unwrap_or_else(PoisonError::into_inner),
            owner: self,
        }
    }
}

/// A locked window; see [`ReplayProtection::lock`].
pub struct ReplayGuard<'a> {
    window: MutexGuard<'a, ReplayWindow>,
    owner: &'a ReplayProtection,
}

impl ReplayGuard<'_> {
    /// [`ReplayWindow::check_and_set`] under the lock.
    pub fn check_and_set(&mut self, counter: u64) -> bool {
        self.window.check_and_set(counter)
    }

    /// True when this guard locks `protection` (and not another keypair's window).
    pub fn guards(&self, protection: &ReplayProtection) -> bool {
        std::ptr::eq(self.owner, protection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `counters` in order and compare each verdict.
    fn run(steps: &[(u64, bool)]) {
        let mut window = ReplayWindow::new();
        for (i, &(counter, expected)) in steps.iter().enumerate() {
            assert_eq!(
                window.check_and_set(counter),
                expected,
                "step {i}: counter {counter}"
            );
        }
    }

    #[test]
    fn table() {
        let w = WINDOW_SIZE;
        let cases: &[(&str, &[(u64, bool)])] = &[
            ("first zero", &[(0, true), (0, false)]),
            ("in order", &[(0, true), (1, true), (2, true), (1, false)]),
            (
                "out of order inside the window, each once",
                &[
                    (5, true),
                    (2, true),
                    (4, true),
                    (2, false),
                    (3, true),
                    (3, false),
                    (0, true),
                ],
            ),
            (
                "duplicates of the highest",
                &[(100, true), (100, false), (100, false)],
            ),
            (
                "edge of the window",
                &[(w + 10, true), (10, true), (9, false), (10, false)],
            ),
            (
                "just outside after a jump",
                &[(0, true), (w + 2, true), (1, false), (2, true)],
            ),
            (
                "jump far ahead forgets everything below",
                &[
                    (1, true),
                    (2, true),
                    (1_000_000, true),
                    (2, false),
                    (999_999, true),
                ],
            ),
            (
                "jump by exactly one ring clears stale bits",
                &[
                    (64, true),
                    (64 + 128 * 64, true),
                    (64, false),
                    (64 + 128 * 64 - 1, true),
                ],
            ),
            (
                "word boundaries",
                &[
                    (62, true),
                    (63, true),
                    (64, true),
                    (127, true),
                    (128, true),
                    (63, false),
                ],
            ),
            (
                "near REJECT_AFTER_MESSAGES",
                &[
                    (REJECT_AFTER_MESSAGES - 2, true),
                    (REJECT_AFTER_MESSAGES - 1, true),
                    (REJECT_AFTER_MESSAGES, false),
                    (REJECT_AFTER_MESSAGES + 1, false),
                    (u64::MAX, false),
                    (REJECT_AFTER_MESSAGES - 1, false),
                    (REJECT_AFTER_MESSAGES - 3, true),
                    (REJECT_AFTER_MESSAGES - 1 - w, true),
                    (REJECT_AFTER_MESSAGES - 2 - w, false),
                    (0, false),
                ],
            ),
            ("u64::MAX first", &[(u64::MAX, false), (0, true)]),
        ];
        for (name, steps) in cases {
            eprintln!("case: {name}");
            run(steps);
        }
    }

    #[test]
    fn every_counter_in_a_shuffled_window_is_accepted_exactly_once() {
        let mut window = ReplayWindow::new();
        // A fixed permutation of 0..4096 (multiplication by an odd number modulo 2^12).
        let counters: Vec<u64> = (0..4096u64).map(|i| (i * 2053) % 4096).collect();
        for &counter in &counters {
            assert!(window.check_and_set(counter), "{counter}");
        }
        for &counter in &counters {
            assert!(!window.check_and_set(counter), "{counter}");
        }
        assert_eq!(window.highest_accepted(), Some(4095));
    }

    #[test]
    fn threads_sharing_a_window_accept_each_counter_once() {
        let protection = std::sync::Arc::new(ReplayProtection::new());
        let accepted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let protection = &protection;
                let accepted = &accepted;
                scope.spawn(move || {
                    for batch in (0..2000u64).collect::<Vec<_>>().chunks(32) {
                        let mut guard = protection.lock();
                        assert!(guard.guards(protection));
                        for &counter in batch {
                            if guard.check_and_set(counter) {
                                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(accepted.into_inner(), 2000);
    }
}
