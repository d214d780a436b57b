//! WireGuard's timers as a pure state machine per peer.
//!
//! The rules are the whitepaper's section 6 and the Linux module's `timers.c`, restated in
//! terms of *when things last happened* rather than kernel timers that are armed and cancelled:
//! the data path cannot arm timers (it runs on worker threads that only store timestamps into
//! [`crate::peer::PeerActivity`]), so the control thread reads those timestamps, hands them to
//! [`PeerTimers::due`] as an [`Observed`], and gets back what is due now. Each rule:
//!
//! | Linux timer / hook            | here                                                        |
//! |-------------------------------|-------------------------------------------------------------|
//! | `retransmit_handshake`        | `retransmit_at_ns`: REKEY_TIMEOUT + jitter after each initiation; after MAX_TIMER_HANDSHAKES + 2 attempts, give up and schedule zeroing |
//! | `send_keepalive`              | data received and nothing sent since for KEEPALIVE_TIMEOUT (`unanswered_data_since_ns`) |
//! | `new_handshake`               | data sent and nothing authenticated received for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter (`unacknowledged_data_since_ns`) |
//! | `zero_key_material`           | `zero_keys_at_ns`: 3 * REJECT_AFTER_TIME after the last session was derived |
//! | `persistent_keepalive`        | the configured interval after the last authenticated packet in either direction |
//! | `keep_key_fresh` (send)       | a transport packet sent since the last look, with REKEY_AFTER_MESSAGES used or (initiator only) a keypair older than REKEY_AFTER_TIME |
//! | `keep_key_fresh` (receive)    | initiator only, once: a transport packet received on a keypair older than REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT |
//! | staged packet, no valid key   | a worker's `request_handshake` |
//!
//! Initiations other than retransmissions reset the attempt count (`send.c`,
//! `wg_packet_send_queued_handshake_initiation` with `is_retry == false`), and none is sent
//! within REKEY_TIMEOUT of the previous one. Jitter comes from the caller's random number
//! generator, so tests with a seeded one are deterministic.

use crate::constants::{
    KEEPALIVE_TIMEOUT_NS, MAX_TIMER_HANDSHAKES, REJECT_AFTER_TIME_NS, REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME_NS, REKEY_TIMEOUT_JITTER_MAX_NS, REKEY_TIMEOUT_NS,
};

/// Why an initiation is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InitiationReason {
    /// The previous initiation got no response within REKEY_TIMEOUT + jitter.
    Retransmit,
    /// Data is waiting and there is no valid keypair to send it with (or a keepalive is due
    /// without one).
    NoKeypair,
    /// Data was sent and nothing came back for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT.
    StoppedHearingBack,
    /// The current keypair has sent REKEY_AFTER_MESSAGES messages.
    RekeyAfterMessages,
    /// The initiator's current keypair is older than REKEY_AFTER_TIME.
    RekeyAfterTime,
    /// The initiator is still receiving on a keypair close to REJECT_AFTER_TIME.
    RejectAfterTimeNear,
}

/// The facts about the current keypair the rules need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CurrentKeypair {
    /// When it was made.
    pub created_ns: u64,
    /// Whether this side initiated it.
    pub is_initiator: bool,
    /// Send counters handed out so far.
    pub send_counter: u64,
}

/// One look at a peer's activity, taken by the control thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Now, on the caller's clock.
    pub now_ns: u64,
    /// The first data received since anything was last sent to the peer.
    pub unanswered_data_since_ns: Option<u64>,
    /// The first data sent since anything authenticated was last received from the peer.
    pub unacknowledged_data_since_ns: Option<u64>,
    /// The last transport message (data or keepalive) sent.
    pub last_transport_sent_ns: Option<u64>,
    /// The last transport message received and authenticated.
    pub last_transport_received_ns: Option<u64>,
    /// The last handshake message sent.
    pub last_handshake_sent_ns: Option<u64>,
    /// The last handshake message received and authenticated.
    pub last_handshake_received_ns: Option<u64>,
    /// A worker has data and no valid keypair.
    pub handshake_wanted: bool,
    /// The keypair workers send with, if it is valid.
    pub current: Option<CurrentKeypair>,
    /// The PersistentKeepalive interval, if configured.
    pub persistent_keepalive_ns: Option<u64>,
}

impl Observed {
    fn last_traversal_ns(&self) -> Option<u64> {
        [
            self.last_transport_sent_ns,
            self.last_transport_received_ns,
            self.last_handshake_sent_ns,
            self.last_handshake_received_ns,
        ]
        .into_iter()
        .flatten()
        .max()
    }
}

/// What is due at one look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Wipe every keypair and the handshake state.
    pub zero_keys: bool,
    /// The handshake did not complete after MAX_TIMER_HANDSHAKES + 2 attempts.
    pub give_up: bool,
    /// Send an initiation.
    pub initiate: Option<InitiationReason>,
    /// Send a keepalive (if no valid keypair, that means a handshake instead).
    pub keepalive: bool,
    /// The passive keepalive was handled: clear the unanswered-data mark.
    pub clear_unanswered: bool,
    /// The stopped-hearing-back rule fired: clear the unacknowledged-data mark.
    pub clear_unacknowledged: bool,
}

/// The timer state the control thread keeps for one peer.
#[derive(Clone, Debug, Default)]
pub struct PeerTimers {
    last_initiation_sent_ns: Option<u64>,
    handshake_attempts: u32,
    retransmit_at_ns: Option<u64>,
    zero_keys_at_ns: Option<u64>,
    sent_lastminute_handshake: bool,
    new_handshake_jitter_ns: u64,
    keepalive_requested: bool,
    seen_transport_sent_ns: Option<u64>,
    seen_transport_received_ns: Option<u64>,
    /// When a PersistentKeepalive last fell due, so that one that could not be sent (no
    /// endpoint, or a handshake that is rate-limited) waits a whole interval, not a spin.
    last_persistent_keepalive_ns: Option<u64>,
}

/// A jitter in `0..=REKEY_TIMEOUT_JITTER_MAX_NS` from 64 random bits.
pub fn jitter_from(random: u64) -> u64 {
    random % (REKEY_TIMEOUT_JITTER_MAX_NS + 1)
}

fn newer(value: Option<u64>, seen: Option<u64>) -> bool {
    match (value, seen) {
        (Some(value), Some(seen)) => value > seen,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

impl PeerTimers {
    /// Fresh timers; `random` seeds the first stopped-hearing-back jitter.
    pub fn new(random: u64) -> Self {
        Self {
            new_handshake_jitter_ns: jitter_from(random),
            ..Self::default()
        }
    }

    /// Whether an initiation is awaiting its response.
    pub fn handshake_in_flight(&self) -> bool {
        self.retransmit_at_ns.is_some()
    }

    /// The configuration turned PersistentKeepalive on: send one keepalive right away.
    pub fn request_keepalive(&mut self) {
        self.keepalive_requested = true;
    }

    /// Decide what is due at `observed.now_ns`. `random` supplies 64 random bits for jitter.
    pub fn due(&mut self, observed: &Observed, random: &mut dyn FnMut() -> u64) -> Due {
        let now = observed.now_ns;
        let mut due = Due::default();

        if self.zero_keys_at_ns.is_some_and(|at| at <= now) {
            due.zero_keys = true;
            self.on_keys_zeroed();
            return due;
        }

        if self.retransmit_at_ns.is_some_and(|at| at <= now) {
            self.retransmit_at_ns = None;
            if self.handshake_attempts > MAX_TIMER_HANDSHAKES {
                due.give_up = true;
                due.clear_unanswered = true;
                self.zero_keys_at_ns
                    .get_or_insert(now + 3 * REJECT_AFTER_TIME_NS);
            } else {
                self.handshake_attempts += 1;
                due.initiate = Some(InitiationReason::Retransmit);
            }
        }

        let sent_transport = newer(observed.last_transport_sent_ns, self.seen_transport_sent_ns);
        let received_transport = newer(
            observed.last_transport_received_ns,
            self.seen_transport_received_ns,
        );
        self.seen_transport_sent_ns = observed.last_transport_sent_ns;
        self.seen_transport_received_ns = observed.last_transport_received_ns;

        let mut fresh = None;
        if observed.handshake_wanted {
            fresh = Some(InitiationReason::NoKeypair);
        }
        if let Some(since) = observed.unacknowledged_data_since_ns
            && since + KEEPALIVE_TIMEOUT_NS + REKEY_TIMEOUT_NS + self.new_handshake_jitter_ns <= now
        {
            due.clear_unacknowledged = true;
            self.new_handshake_jitter_ns = jitter_from(random());
            fresh = Some(InitiationReason::StoppedHearingBack);
        }
        if let Some(current) = observed.current {
            if sent_transport && current.send_counter > REKEY_AFTER_MESSAGES {
                fresh = Some(InitiationReason::RekeyAfterMessages);
            }
            if sent_transport
                && current.is_initiator
                && observed
                    .last_transport_sent_ns
                    .is_some_and(|sent| sent >= current.created_ns + REKEY_AFTER_TIME_NS)
            {
                fresh = Some(InitiationReason::RekeyAfterTime);
            }
            let near_reject =
                current.created_ns + REJECT_AFTER_TIME_NS - KEEPALIVE_TIMEOUT_NS - REKEY_TIMEOUT_NS;
            if received_transport
                && current.is_initiator
                && !self.sent_lastminute_handshake
                && observed
                    .last_transport_received_ns
                    .is_some_and(|received| received >= near_reject)
            {
                self.sent_lastminute_handshake = true;
                fresh = Some(InitiationReason::RejectAfterTimeNear);
            }
        }

        if let Some(since) = observed.unanswered_data_since_ns
            && since + KEEPALIVE_TIMEOUT_NS <= now
        {
            due.keepalive = true;
            due.clear_unanswered = true;
        }
        if let (Some(interval), Some(last)) = (
            observed.persistent_keepalive_ns,
            self.persistent_keepalive_base(observed),
        ) && last + interval <= now
        {
            due.keepalive = true;
            self.last_persistent_keepalive_ns = Some(now);
        }
        if std::mem::take(&mut self.keepalive_requested) {
            due.keepalive = true;
        }
        if due.keepalive && observed.current.is_none() {
            fresh = fresh.or(Some(InitiationReason::NoKeypair));
        }

        if let Some(reason) = fresh
            && due.initiate.is_none()
        {
            self.handshake_attempts = 0;
            let rate_limited = self
                .last_initiation_sent_ns
                .is_some_and(|sent| now < sent + REKEY_TIMEOUT_NS);
            if !rate_limited {
                due.initiate = Some(reason);
            }
        }
        due
    }

    /// What the PersistentKeepalive interval counts from: the last authenticated packet either
    /// way, or the last time it fell due.
    fn persistent_keepalive_base(&self, observed: &Observed) -> Option<u64> {
        observed
            .last_traversal_ns()
            .max(self.last_persistent_keepalive_ns)
    }

    /// The earliest time something in `observed` or in the timer state falls due.
    pub fn next_deadline(&self, observed: &Observed) -> Option<u64> {
        let now = observed.now_ns;
        let soon = |wanted: bool| wanted.then_some(now);
        [
            self.zero_keys_at_ns,
            self.retransmit_at_ns,
            observed
                .unanswered_data_since_ns
                .map(|since| since + KEEPALIVE_TIMEOUT_NS),
            observed.unacknowledged_data_since_ns.map(|since| {
                since + KEEPALIVE_TIMEOUT_NS + REKEY_TIMEOUT_NS + self.new_handshake_jitter_ns
            }),
            observed
                .persistent_keepalive_ns
                .zip(self.persistent_keepalive_base(observed))
                .map(|(interval, last)| last + interval),
            soon(observed.handshake_wanted || self.keepalive_requested),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// An initiation went out (or would have, had the peer an endpoint) at `now_ns`.
    pub fn on_initiation_sent(&mut self, now_ns: u64, random: u64) {
        self.last_initiation_sent_ns = Some(now_ns);
        self.retransmit_at_ns = Some(now_ns + REKEY_TIMEOUT_NS + jitter_from(random));
    }

    /// A handshake completed: as initiator on the response, as responder on the first
    /// transport message under the new keypair.
    pub fn on_handshake_complete(&mut self) {
        self.retransmit_at_ns = None;
        self.handshake_attempts = 0;
        self.sent_lastminute_handshake = false;
    }

    /// New transport keys were derived at `now_ns`.
    pub fn on_session_derived(&mut self, now_ns: u64) {
        self.zero_keys_at_ns = Some(now_ns + 3 * REJECT_AFTER_TIME_NS);
    }

    /// All key material is gone: nothing left to retransmit or zero.
    pub fn on_keys_zeroed(&mut self) {
        self.zero_keys_at_ns = None;
        self.retransmit_at_ns = None;
        self.handshake_attempts = 0;
        self.sent_lastminute_handshake = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::NANOS_PER_SECOND;

    const S: u64 = NANOS_PER_SECOND;

    fn no_jitter() -> impl FnMut() -> u64 {
        || 0
    }

    #[test]
    fn retransmits_every_rekey_timeout_then_gives_up_and_zeroes_later() {
        let mut timers = PeerTimers::new(0);
        timers.on_initiation_sent(0, 0);
        let mut observed = Observed::default();
        let mut sends = 1;
        let gave_up_at = loop {
            let now = timers.next_deadline(&observed).unwrap();
            observed.now_ns = now;
            let due = timers.due(&observed, &mut no_jitter());
            if due.give_up {
                break now;
            }
            assert_eq!(due.initiate, Some(InitiationReason::Retransmit), "at {now}");
            timers.on_initiation_sent(now, 0);
            sends += 1;
            assert!(sends < 100, "never gave up");
        };
        // MAX_TIMER_HANDSHAKES + 2 initiations, REKEY_TIMEOUT apart: REKEY_ATTEMPT_TIME and a bit.
        assert_eq!(sends, MAX_TIMER_HANDSHAKES + 2);
        assert_eq!(
            gave_up_at,
            u64::from(MAX_TIMER_HANDSHAKES + 2) * REKEY_TIMEOUT_NS
        );
        assert!(!timers.handshake_in_flight());
        observed.now_ns = timers.next_deadline(&observed).unwrap();
        assert_eq!(observed.now_ns, gave_up_at + 3 * REJECT_AFTER_TIME_NS);
        assert!(timers.due(&observed, &mut no_jitter()).zero_keys);
        assert_eq!(timers.next_deadline(&observed), None);
    }

    #[test]
    fn retransmission_waits_rekey_timeout_plus_jitter() {
        let mut timers = PeerTimers::new(0);
        let jitter_random = 123_456_789;
        timers.on_initiation_sent(10 * S, jitter_random);
        let at = 10 * S + REKEY_TIMEOUT_NS + jitter_from(jitter_random);
        assert!(jitter_from(jitter_random) <= REKEY_TIMEOUT_JITTER_MAX_NS);
        assert_eq!(timers.next_deadline(&Observed::default()), Some(at));
        let early = Observed {
            now_ns: at - 1,
            ..Observed::default()
        };
        assert_eq!(timers.due(&early, &mut no_jitter()), Due::default());
        let on_time = Observed {
            now_ns: at,
            ..Observed::default()
        };
        assert_eq!(
            timers.due(&on_time, &mut no_jitter()).initiate,
            Some(InitiationReason::Retransmit)
        );
    }

    #[test]
    fn a_keepalive_answers_data_that_went_unanswered_for_keepalive_timeout() {
        let mut timers = PeerTimers::new(0);
        let mut observed = Observed {
            now_ns: 5 * S,
            unanswered_data_since_ns: Some(3 * S),
            last_transport_received_ns: Some(4 * S),
            current: Some(CurrentKeypair {
                created_ns: 0,
                is_initiator: false,
                send_counter: 0,
            }),
            ..Observed::default()
        };
        assert!(!timers.due(&observed, &mut no_jitter()).keepalive);
        assert_eq!(timers.next_deadline(&observed), Some(13 * S));
        observed.now_ns = 13 * S;
        let due = timers.due(&observed, &mut no_jitter());
        assert!(due.keepalive && due.clear_unanswered);
        assert_eq!(due.initiate, None);
    }

    #[test]
    fn sending_without_hearing_back_starts_a_handshake() {
        let mut timers = PeerTimers::new(0);
        let observed = Observed {
            now_ns: 15 * S,
            unacknowledged_data_since_ns: Some(0),
            ..Observed::default()
        };
        let due = timers.due(&observed, &mut no_jitter());
        assert_eq!(due.initiate, Some(InitiationReason::StoppedHearingBack));
        assert!(due.clear_unacknowledged);
    }

    #[test]
    fn only_the_initiator_rekeys_after_time_and_only_when_sending() {
        let keypair = |is_initiator| CurrentKeypair {
            created_ns: 0,
            is_initiator,
            send_counter: 10,
        };
        for (is_initiator, sent_at, expected) in [
            (
                true,
                REKEY_AFTER_TIME_NS,
                Some(InitiationReason::RekeyAfterTime),
            ),
            (true, REKEY_AFTER_TIME_NS - 1, None),
            (false, REKEY_AFTER_TIME_NS + S, None),
        ] {
            let mut timers = PeerTimers::new(0);
            let observed = Observed {
                now_ns: REKEY_AFTER_TIME_NS + 2 * S,
                last_transport_sent_ns: Some(sent_at),
                current: Some(keypair(is_initiator)),
                ..Observed::default()
            };
            assert_eq!(timers.due(&observed, &mut no_jitter()).initiate, expected);
            // Nothing new sent: the same observation does not trigger again.
            assert_eq!(timers.due(&observed, &mut no_jitter()).initiate, None);
        }
    }

    #[test]
    fn rekey_after_messages_applies_to_both_roles() {
        let mut timers = PeerTimers::new(0);
        let observed = Observed {
            now_ns: S,
            last_transport_sent_ns: Some(S),
            current: Some(CurrentKeypair {
                created_ns: 0,
                is_initiator: false,
                send_counter: REKEY_AFTER_MESSAGES + 1,
            }),
            ..Observed::default()
        };
        assert_eq!(
            timers.due(&observed, &mut no_jitter()).initiate,
            Some(InitiationReason::RekeyAfterMessages)
        );
    }

    #[test]
    fn initiations_are_rate_limited_to_one_per_rekey_timeout() {
        let mut timers = PeerTimers::new(0);
        timers.on_initiation_sent(0, 0);
        timers.on_handshake_complete();
        let mut observed = Observed {
            now_ns: REKEY_TIMEOUT_NS - 1,
            handshake_wanted: true,
            ..Observed::default()
        };
        assert_eq!(timers.due(&observed, &mut no_jitter()).initiate, None);
        observed.now_ns = REKEY_TIMEOUT_NS;
        assert_eq!(
            timers.due(&observed, &mut no_jitter()).initiate,
            Some(InitiationReason::NoKeypair)
        );
    }

    #[test]
    fn persistent_keepalive_follows_the_last_traversal() {
        let mut timers = PeerTimers::new(0);
        let mut observed = Observed {
            now_ns: 30 * S,
            last_transport_received_ns: Some(10 * S),
            last_handshake_sent_ns: Some(12 * S),
            persistent_keepalive_ns: Some(25 * S),
            current: Some(CurrentKeypair {
                created_ns: 0,
                is_initiator: true,
                send_counter: 0,
            }),
            ..Observed::default()
        };
        assert_eq!(timers.next_deadline(&observed), Some(37 * S));
        assert!(!timers.due(&observed, &mut no_jitter()).keepalive);
        observed.now_ns = 37 * S;
        assert!(timers.due(&observed, &mut no_jitter()).keepalive);
        // Nothing went out (no endpoint, say): the next try is a whole interval later.
        assert_eq!(timers.next_deadline(&observed), Some(62 * S));
        assert!(!timers.due(&observed, &mut no_jitter()).keepalive);
    }
}
