//! Per-worker counters and latency histograms, merged only when a report is made. PURE.
//!
//! Each worker owns one [`WorkerStats`] and updates it with plain adds: no atomics, no locks, so
//! counting costs the hot path nothing it would notice. A report takes copies from every worker
//! (a snapshot sent at an interval, or the final one at exit) and merges histograms with
//! `Histogram::add` there, once.

use crate::wire::icmp::IcmpKind;
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use std::fmt::Write as _;
use std::time::Duration;

/// Declares [`DropReason`] with its report name, and derives `ALL` and `name` from the one list,
/// so that a new variant cannot be left out of the counters (a hand-kept `ALL` that missed one
/// would index past the array the first time that reason was counted).
macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)+) => {
        /// Why a packet was dropped. Each reason is its own counter.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum DropReason {
            $($(#[doc = $doc])* $variant,)+
        }

        impl DropReason {
            /// Every reason, in declaration order (`ALL[r as usize] == r`).
            pub const ALL: [DropReason; [$(DropReason::$variant),+].len()] =
                [$(DropReason::$variant),+];

            /// The name used in reports and JSON.
            pub fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)+
                }
            }
        }
    };
}

drop_reasons! {
    /// A TUN read shorter than the virtio_net_hdr.
    TunShortRead => "tun_short_read",
    /// A TUN read that carried a GSO super-packet or a partial checksum, which this build was not
    /// negotiated to receive.
    TunUnexpectedOffload => "tun_unexpected_offload",
    /// The UDP socket's send buffer was full (EAGAIN/ENOBUFS); like a full qdisc, the packet goes.
    UdpSendBufferFull => "udp_send_buffer_full",
    /// The send failed because the peer's host or port is unreachable (an ICMP error came back).
    PeerUnreachable => "peer_unreachable",
    /// Any other send error.
    UdpSendError => "udp_send_error",
    /// A datagram larger than the receive buffer (that is, than the device MTU).
    OversizedDatagram => "oversized_datagram",
    /// A datagram from an address or port other than the peer's.
    ForeignSource => "foreign_source",
    /// A datagram with no payload at all: no inner packet.
    EmptyDatagram => "empty_datagram",
    /// The first nibble is neither 4 nor 6.
    BadIpVersion => "bad_ip_version",
    /// Empty, shorter than an IP header, or a bad IPv4 header length.
    BadIpHeader => "bad_ip_header",
    /// The IP length field disagrees with the datagram's length.
    IpLengthMismatch => "ip_length_mismatch",
    /// The TUN device rejected a write.
    TunWriteError => "tun_write_error",
    /// A super-packet or partial checksum from the TUN that cannot be split or completed.
    BadOffload => "bad_offload",
    /// A datagram whose outer header says Congestion Experienced around an inner packet that is
    /// not ECN-capable: RFC 6040 section 4.2 drops it, as its sender cannot be told otherwise.
    EcnNotEct => "ecn_not_ect",
    /// An inner packet (or a super-packet's segment) longer than the path to the peer takes; its
    /// sender is told with ICMP fragmentation-needed or packet-too-big where the rules allow.
    TooBig => "too_big",
    /// A Not-ECT packet read from the TUN that the AQM dropped, the queue in the TUN's ring
    /// having stood above `--aqm-target` for `--aqm-interval` (`relay::aqm`, RFC 8289). An
    /// ECN-capable one would have been marked CE instead (`aqm_marked_tun_ring`).
    AqmTunRing => "aqm_tun_ring",
    /// A Not-ECT packet received from the peer that the AQM dropped, the queue in the UDP
    /// socket's receive buffer having stood above target (`aqm_marked_udp_socket` otherwise).
    AqmUdpSocket => "aqm_udp_socket",
    /// WireGuard mode: a transport datagram whose receiver index names no current keypair.
    WgUnknownReceiver => "wg_unknown_receiver",
    /// WireGuard mode: an authentic transport datagram whose counter was seen or is too old.
    WgReplay => "wg_replay",
    /// WireGuard mode: a transport datagram whose tag did not verify (forged, corrupted, or
    /// sealed with another key), or whose keypair has expired.
    WgBadTag => "wg_bad_tag",
    /// WireGuard mode: an authentic packet whose inner source is outside its peer's AllowedIPs.
    WgSourceNotAllowed => "wg_source_not_allowed",
    /// WireGuard mode: a TUN packet whose destination is in no peer's AllowedIPs.
    WgNoRoute => "wg_no_route",
    /// WireGuard mode: a TUN packet whose keypair expired or ran out of counters between its
    /// lookup and its seal (a packet for a peer without a session is staged, `wg_staged`).
    WgNoSession => "wg_no_session",
    /// WireGuard mode: a handshake message or cookie reply the control thread refused.
    WgBadHandshake => "wg_bad_handshake",
    /// WireGuard mode: a handshake message dropped because the control thread's queue was full
    /// (a flood of initiations never stalls a worker).
    WgHandshakeQueueFull => "wg_handshake_queue_full",
    /// WireGuard mode: a datagram that is no WireGuard message (unknown type or length).
    WgMalformed => "wg_malformed",
    /// WireGuard mode: a packet staged for a peer without a session, dropped (the oldest first,
    /// as the Linux module does) to make room: more than 128 packets or 256 KiB were waiting.
    WgStagedOverflow => "wg_staged_overflow",
    /// WireGuard mode: a staged packet dropped unsent because its peer's handshake gave up
    /// (REKEY_ATTEMPT_TIME, 90 s) or the peer was removed. Counted by the control thread and
    /// reported with queue 0's.
    WgStagedPurged => "wg_staged_purged",
    /// A datagram shaped as a relay-to-relay control message (IPv4, 0.0.0.0 to 0.0.0.0,
    /// protocol 253) that is not one this relay takes: malformed, or past `MAX_CONTROLS` in one
    /// receive (more than the kernel coalesces into one). Never written to the TUN.
    BadControl => "bad_control",
}

impl DropReason {
    fn index(self) -> usize {
        self as usize
    }
}

impl From<crate::wire::Malformed> for DropReason {
    fn from(m: crate::wire::Malformed) -> DropReason {
        use crate::wire::Malformed;
        match m {
            Malformed::BadVersion(_) => DropReason::BadIpVersion,
            Malformed::Empty | Malformed::TooShort | Malformed::BadHeaderLen => {
                DropReason::BadIpHeader
            }
            Malformed::LengthMismatch { .. } => DropReason::IpLengthMismatch,
        }
    }
}

/// The direction a latency or queue-delay sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    TunToUdp,
    UdpToTun,
}

impl Direction {
    /// Both, in the order every report lists them.
    pub const ALL: [Direction; 2] = [Direction::TunToUdp, Direction::UdpToTun];

    /// The name reports use: the JSON key, the metrics' `direction` label, the table's row.
    pub fn name(self) -> &'static str {
        match self {
            Direction::TunToUdp => "tun_to_udp",
            Direction::UdpToTun => "udp_to_tun",
        }
    }
}

/// Declares a struct of `u64` counters from one list, each with the one-line help that reports
/// print, and derives from the same list what every report needs: the names ([`Listed::NAMES`]),
/// the help, the values in order, and adding one worker's counts to another's. The JSON, the
/// Prometheus families and docs/stats.md's counter lists (checked by `cli::readme`) all come
/// from these lists, so a counter cannot be added to one of them and forgotten in another.
macro_rules! counters {
    (
        $(#[doc = $struct_doc:literal])*
        pub struct $name:ident {
            $( $(#[doc = $doc:literal])* $field:ident => $help:literal, )+
        }
        extra { $($extra:tt)* }
    ) => {
        $(#[doc = $struct_doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: u64, )+
            $($extra)*
        }

        impl Listed for $name {
            const NAMES: &'static [&'static str] = &[$(stringify!($field)),+];
            const HELP: &'static [&'static str] = &[$($help),+];

            fn values(&self) -> Vec<u64> {
                vec![$(self.$field),+]
            }

            fn add_listed(&mut self, other: &Self) {
                $(self.$field += other.$field;)+
            }
        }
    };
}

/// A struct declared with `counters!`: its counters by name, in declaration order.
pub trait Listed {
    /// Each counter's name, as the JSON and (with `tunfwd_` and `_total`) the metrics spell it.
    const NAMES: &'static [&'static str];
    /// Each counter's help: one sentence.
    const HELP: &'static [&'static str];
    /// Each counter's value, in the order of `NAMES`.
    fn values(&self) -> Vec<u64>;
    /// Adds every listed counter of `other`.
    fn add_listed(&mut self, other: &Self);
}

/// How many of [`Counters`]' first counters the stats table shows as its columns.
const TABLE_COLUMNS: usize = 8;

counters! {
    /// Counters of one queue. All counts are since the worker started.
    pub struct Counters {
        tun_rx_packets => "IP packets read from the TUN queue (a super-packet counts as its segments).",
        tun_rx_bytes => "Bytes read from the TUN queue.",
        udp_tx_packets => "Datagrams sent to the peer.",
        udp_tx_bytes => "UDP payload bytes sent to the peer.",
        udp_rx_packets => "Valid datagrams received from the peer.",
        udp_rx_bytes => "UDP payload bytes received from the peer.",
        tun_tx_packets => "IP packets written to the TUN queue (a merged super-packet counts as its segments).",
        tun_tx_bytes => "Bytes written to the TUN queue.",
        /// Each ICMP error about the peer is counted once, from the error queue, by kind too
        /// (`PathStats`).
        icmp_errors => "ICMP errors about the peer that the socket reported.",
        /// The sockets are not connected, so an ICMP error quoting any datagram from their port
        /// reaches them (`sys::errqueue::drain_error_queue`); these quoted another destination.
        icmp_elsewhere => "ICMP errors about a datagram to another address than the peer's (forged, or about an address the peer left), ignored.",
        /// With `IP_RECVERR`, an ICMP error about an earlier datagram fails the next send, of any
        /// flow, which is then sent again (`relay::send::AfterRefusal::Resend`).
        send_retries => "Sends redone because an error about an earlier datagram failed them.",
        /// Path MTU probes and acknowledgements from the peer's exact address and ports (each
        /// answered probe is also in `PathStats::pmtu_probes_answered`).
        control_received => "Control messages (path MTU probes and acknowledgements, not the small hellos and keepalives) received from the peer.",
        /// Every probe and advertisement from the peer is answered while a control buffer for
        /// answers is free; these found every one in flight.
        control_unanswered => "Probes and advertisements from the peer left unanswered: every control buffer for answers was in flight.",
        /// This relay's own probes and advertisements that found every control buffer kept
        /// for them in flight (`relay::slots::OWN_CONTROL_SLOTS`): a probe counts as lost,
        /// an advertisement goes soon after.
        control_unsent => "This relay's own probes and advertisements not sent at once: every control buffer for them was in flight.",
        buffer_stalls => "Multishot receives that stopped because every buffer was in use.",
        gso_sends => "UDP sends that carried more than one datagram (UDP_SEGMENT).",
        gro_receives => "UDP receives that delivered more than one datagram (UDP_GRO).",
        coalesced_writes => "TUN writes of a merged super-packet.",
        coalesce_fallbacks => "Merged TUN writes the kernel refused, redone segment by segment.",
        gso_fallbacks => "GSO sends the kernel refused, redone datagram by datagram.",
        /// `MSG_CTRUNC`: the `UDP_GRO` segment size may be missing, so the buffer is cut at the
        /// first packet's IP length instead.
        control_truncated => "Receives whose control data came back cut (MSG_CTRUNC).",
        /// A buffer stall among them.
        multishot_restarts => "Times the kernel ended a multishot read or receive and it was armed again.",
        /// Never seen by tunfwd, so not in `drops`. Read from the kernel
        /// (`socket::receive_drops`) with each snapshot; one per buffer, which under UDP GRO may
        /// hold several datagrams.
        udp_socket_drops => "Receive buffers the kernel dropped at the queue's UDP socket, its buffer full, before tunfwd read them.",
        /// Outer flow entropy (`relay::entropy`): the rest of `udp_tx_packets` left from the
        /// listen port.
        entropy_tx_packets => "Datagrams sent from one of the extra source ports (outer flow entropy) rather than the listen port.",
        /// Outer flow entropy: the flow's tuple is in use but the peer has not acknowledged a
        /// probe from it lately (`relay::entropy`, a NAT rewriting or a firewall dropping its
        /// port), so its datagrams left from the listen port.
        entropy_fallback_packets => "Datagrams of flows whose extra source port the peer is not shown to receive, sent from the listen port instead.",
        /// Late (a retried probe answered twice) or forged: their nonce names nothing the
        /// relay waits for.
        control_unexpected => "Acknowledgements (of path MTU probes or of advertisements) from the peer that answer nothing this relay waits for.",
        /// `relay::aqm`: the TUN ring's queue stood above target; the Not-ECT ones are the
        /// `aqm_tun_ring` drops.
        aqm_marked_tun_ring => "ECN-capable packets read from the TUN that the AQM marked CE, its ring's queue standing above target (RFC 8289, RFC 3168).",
        /// The same for the UDP socket's receive buffer; `aqm_udp_socket` drops otherwise.
        aqm_marked_udp_socket => "ECN-capable packets received from the peer that the AQM marked CE, the socket's queue standing above target (RFC 8289, RFC 3168).",
        /// Counted by the control thread and reported with queue 0's counters.
        wg_handshakes => "WireGuard mode: handshakes completed (as initiator or responder).",
        /// Counted by the control thread and reported with queue 0's counters.
        wg_cookie_replies => "WireGuard mode: cookie replies sent to handshake messages under load.",
        /// Each is in `tun_rx_packets`, and later in `wg_staged_sent` or a drop
        /// (`wg_staged_overflow`, `wg_staged_purged`).
        wg_staged => "WireGuard mode: TUN packets (or segments of a super-packet) staged for a peer without a session while its handshake runs.",
        /// Sent from the control thread's socket, so not in `udp_tx_packets`. Counted by the
        /// control thread and reported with queue 0's counters.
        wg_staged_sent => "WireGuard mode: staged packets sent once their peer's session was up.",
    }
    extra {
        /// Packets dropped, by [`DropReason`].
        pub drops: [u64; DropReason::ALL.len()],
    }
}

/// What the path MTU machine (`relay::plpmtud`) counts, reported per worker in [`PathStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlpmtudCounts {
    pub probes_sent: u64,
    pub probes_acked: u64,
    /// ICMP hints of a smaller path MTU.
    pub hints: u64,
    /// Hints a probe of the working size showed to be false.
    pub hints_refuted: u64,
    /// Times the working size went down (a confirmed hint, a local limit, an unconfirmable
    /// hint taken down to the floor).
    pub lowered: u64,
    /// Times the working size went back up.
    pub raised: u64,
    /// Probe losses that small probes shared (congestion, or the peer away): not taken as the
    /// path's doing.
    pub inconclusive: u64,
}

counters! {
    /// What a queue counts of ECN, ICMP and the path MTU. Kept beside [`Counters`], not in it,
    /// because `path_mtu` is a gauge (merged by taking the smallest) where every counter adds up.
    /// These reach the table, the JSON's `path` section and the metrics (`metrics::render`).
    pub struct PathStats {
        /// RFC 6040: the outer header arrived marked.
        ecn_ce_marked => "Inner packets marked Congestion Experienced on decapsulation (RFC 6040).",
        /// `too_big` drops, rate-limited per sender and for the whole relay.
        too_big_replies => "ICMP errors written to the TUN for inner packets too big for the path.",
        /// IPv4 without DF, and IPv6 of at most 1280 bytes when the path is below the IPv6
        /// minimum.
        fragmented_sends => "Inner packets too big for the path sent for the outer IP layer to fragment.",
        icmp_port_unreachable => "ICMP errors about the peer: port unreachable.",
        icmp_host_unreachable => "ICMP errors about the peer: host unreachable.",
        icmp_net_unreachable => "ICMP errors about the peer: network unreachable.",
        /// Hints to the path MTU machine, never orders (`relay::plpmtud`).
        icmp_too_big => "ICMP errors about the peer: fragmentation needed or packet too big.",
        icmp_time_exceeded => "ICMP errors about the peer: time exceeded.",
        icmp_other => "ICMP errors about the peer: any other kind.",
        pmtu_probes_sent => "Path MTU probes sent to the peer.",
        pmtu_probes_acked => "Path MTU probes the peer acknowledged.",
        pmtu_probes_answered => "Path MTU probes from the peer that this relay acknowledged.",
        pmtu_hints => "ICMP messages that claimed a smaller path MTU (hints to confirm).",
        pmtu_hints_refuted => "Path MTU hints that a probe of the working size proved false.",
        pmtu_lowered => "Times the working path MTU went down.",
        pmtu_raised => "Times the working path MTU went back up.",
        /// Outer flow entropy (`relay::entropy`), on the one worker that advertises; sent every
        /// 2 s once acknowledged, like the path MTU probes a relay-to-relay exchange.
        ports_advertised => "Advertisements of this relay's extra source ports sent to the peer.",
        ports_acknowledged => "Advertisements of this relay's extra source ports the peer acknowledged.",
        peer_ports_accepted => "Advertisements of the peer's source ports taken (each replaces the one before).",
        /// With `--entropy off` nothing would expire the peer's ports, so none are taken.
        peer_ports_ignored => "Advertisements of the peer's source ports not taken: this relay runs with --entropy off.",
        /// Without the echo of this relay's cookie (a restarted peer's first, or forged): they
        /// change nothing; one naming another session than the peer's makes this relay send from
        /// its listen tuple and advertise, at most once a second (`relay::entropy`).
        peer_ports_unproven => "Advertisements of the peer's source ports that did not echo this relay's cookie: answered with it, not taken.",
        /// Rate-limited (`relay::entropy::RESTART_INTERVAL_NS`); on the one worker that
        /// advertises.
        peer_restarts => "Restarts of the peer (a proven advertisement with a new session) acted on.",
        /// On the worker that runs the tuple's path MTU machine.
        entropy_tuples_confirmed => "Times an extra source port began carrying flows: the peer acknowledged a probe sent from it.",
        entropy_tuples_unconfirmed => "Times an extra source port stopped carrying flows: the peer's acknowledgements of probes from it stopped.",
        /// Each pause lasts 10 s, doubling up to 5 minutes while none is answered
        /// (`relay::QuietTuple`).
        entropy_tuples_quieted => "Times an extra source port's probes paused after a dozen went unanswered in a row (a NAT or firewall that rewrites or drops the port).",
    }
    extra {
        /// A gauge, not a count: the path MTU to the peer (outer headers included) the worker
        /// currently works to; 0 until known. Merged by taking the smallest known one.
        pub path_mtu: u64,
    }
}

impl PathStats {
    fn add(&mut self, other: &PathStats) {
        self.add_listed(other);
        self.path_mtu = match (self.path_mtu, other.path_mtu) {
            (0, theirs) => theirs,
            (mine, 0) => mine,
            (mine, theirs) => mine.min(theirs),
        };
    }

    /// The counter of ICMP errors of `kind`.
    pub fn icmp_mut(&mut self, kind: IcmpKind) -> &mut u64 {
        match kind {
            IcmpKind::PortUnreachable => &mut self.icmp_port_unreachable,
            IcmpKind::HostUnreachable => &mut self.icmp_host_unreachable,
            IcmpKind::NetUnreachable => &mut self.icmp_net_unreachable,
            IcmpKind::TooBig => &mut self.icmp_too_big,
            IcmpKind::TimeExceeded => &mut self.icmp_time_exceeded,
            IcmpKind::Other => &mut self.icmp_other,
        }
    }

    /// Takes the path MTU machine's counts (cumulative, so assigned, not added).
    pub fn take_probe_counts(&mut self, counts: &PlpmtudCounts) {
        self.pmtu_probes_sent = counts.probes_sent;
        self.pmtu_probes_acked = counts.probes_acked;
        self.pmtu_hints = counts.hints;
        self.pmtu_hints_refuted = counts.hints_refuted;
        self.pmtu_lowered = counts.lowered;
        self.pmtu_raised = counts.raised;
    }
}

impl Counters {
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason.index()] += 1;
    }

    pub fn drop_n(&mut self, reason: DropReason, packets: u64) {
        self.drops[reason.index()] += packets;
    }

    pub fn drops_of(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    fn add(&mut self, other: &Counters) {
        self.add_listed(other);
        for (mine, theirs) in self.drops.iter_mut().zip(other.drops) {
            *mine += theirs;
        }
    }
}

/// Every listed counter of `counters`, by name, as JSON.
fn listed_json<T: Listed>(counters: &T, into: &mut Map<String, Value>) {
    for (name, value) in T::NAMES.iter().zip(counters.values()) {
        into.insert((*name).to_string(), json!(value));
    }
}

/// How much a 32-bit kernel counter that wraps (such as a socket's `sk_drops`) rose from `last` to
/// `now`, read often enough that it cannot have gone round more than once between. PURE.
pub fn count_since(last: u32, now: u32) -> u64 {
    u64::from(now.wrapping_sub(last))
}

/// Latencies are recorded in ns, from 1 ns to a minute, to 3 significant digits.
const LATENCY_MAX_NS: u64 = 60_000_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("static histogram bounds are valid")
}

/// A queue-delay histogram: the same range to two significant digits (1%), which is what an
/// operator reads a standing queue to, in a seventh of the memory (3,840 counts against 27,648: about 31 KB against 221 KB).
/// Every worker sends its histograms with each snapshot, and the main thread keeps and merges
/// them, so a relay of many queues would otherwise carry megabytes more for them.
fn new_queue_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 2).expect("static histogram bounds are valid")
}

/// Everything one worker counts. Owned by that worker alone.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    pub queue: usize,
    pub counters: Counters,
    pub path: PathStats,
    pub tun_to_udp_ns: Histogram<u64>,
    pub udp_to_tun_ns: Histogram<u64>,
    /// How long packets waited in the kernel's queue in front of the worker before it took them
    /// (`relay::queue`), per direction: `tun_to_udp` in the TUN's ring, `udp_to_tun` in the UDP
    /// socket's receive buffer. What the AQM judges. Empty with `--aqm off`.
    pub queue_delay_tun_ns: Histogram<u64>,
    pub queue_delay_udp_ns: Histogram<u64>,
}

impl WorkerStats {
    pub fn new(queue: usize) -> Self {
        WorkerStats {
            queue,
            counters: Counters::default(),
            path: PathStats::default(),
            tun_to_udp_ns: new_histogram(),
            udp_to_tun_ns: new_histogram(),
            queue_delay_tun_ns: new_queue_histogram(),
            queue_delay_udp_ns: new_queue_histogram(),
        }
    }

    /// Records how long `packets` packets waited in the kernel's queue in front of the worker in
    /// `direction`; values past the histogram's range are clamped, not lost.
    pub fn record_queue_delay_n(&mut self, direction: Direction, ns: u64, packets: u64) {
        let h = match direction {
            Direction::TunToUdp => &mut self.queue_delay_tun_ns,
            Direction::UdpToTun => &mut self.queue_delay_udp_ns,
        };
        let _ = h.record_n(ns.clamp(1, LATENCY_MAX_NS), packets);
    }

    /// Adds what `other` (an earlier worker of the same queue) counted and measured.
    pub fn absorb(&mut self, other: &WorkerStats) {
        self.counters.add(&other.counters);
        self.path.add(&other.path);
        self.tun_to_udp_ns
            .add(&other.tun_to_udp_ns)
            .expect("histograms share bounds");
        self.udp_to_tun_ns
            .add(&other.udp_to_tun_ns)
            .expect("histograms share bounds");
    }

    /// Records one packet's latency; values past the histogram's range are clamped, not lost.
    pub fn record_latency(&mut self, direction: Direction, ns: u64) {
        self.record_latency_n(direction, ns, 1);
    }

    /// Records the same latency for `packets` packets: a super-packet counts per segment.
    pub fn record_latency_n(&mut self, direction: Direction, ns: u64, packets: u64) {
        let h = match direction {
            Direction::TunToUdp => &mut self.tun_to_udp_ns,
            Direction::UdpToTun => &mut self.udp_to_tun_ns,
        };
        let _ = h.record_n(ns.clamp(1, LATENCY_MAX_NS), packets);
    }
}

/// Percentiles of one direction's latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary {
                count: 0,
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
            };
        }
        LatencySummary {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    fn to_json(self) -> Value {
        json!({"count": self.count, "p50": self.p50, "p90": self.p90, "p99": self.p99,
               "p999": self.p999, "max": self.max})
    }
}

/// A merged view of all workers at one moment.
#[derive(Debug, Clone)]
pub struct Report {
    pub elapsed: Duration,
    /// One entry per queue, sorted by queue index.
    pub queues: Vec<WorkerStats>,
    /// Packets the kernel dropped, mostly because a TUN queue's ring was full, before a worker
    /// read them (the device's `tx_dropped` since tunfwd opened its queues, `link::tx_dropped`):
    /// never seen by tunfwd, so not in `drops`. The device counts them for all its queues
    /// together. `None` when the count could not be read.
    pub tun_queue_drops: Option<u64>,
}

impl Report {
    pub fn new(elapsed: Duration, mut queues: Vec<WorkerStats>) -> Self {
        queues.sort_by_key(|q| q.queue);
        Report {
            elapsed,
            queues,
            tun_queue_drops: None,
        }
    }

    pub fn with_tun_queue_drops(mut self, packets: Option<u64>) -> Self {
        self.tun_queue_drops = packets;
        self
    }

    pub fn totals(&self) -> Counters {
        let mut total = Counters::default();
        for q in &self.queues {
            total.add(&q.counters);
        }
        total
    }

    /// Every queue's [`PathStats`], merged (the path MTU: the smallest known).
    pub fn path_totals(&self) -> PathStats {
        let mut total = PathStats::default();
        for q in &self.queues {
            total.add(&q.path);
        }
        total
    }

    /// All workers' histograms of one direction, merged.
    pub fn latency(&self, direction: Direction) -> Histogram<u64> {
        self.merged(new_histogram(), |q| match direction {
            Direction::TunToUdp => &q.tun_to_udp_ns,
            Direction::UdpToTun => &q.udp_to_tun_ns,
        })
    }

    /// All workers' queue-delay histograms of one direction, merged.
    pub fn queue_delay(&self, direction: Direction) -> Histogram<u64> {
        self.merged(new_queue_histogram(), |q| match direction {
            Direction::TunToUdp => &q.queue_delay_tun_ns,
            Direction::UdpToTun => &q.queue_delay_udp_ns,
        })
    }

    /// The histogram `pick` takes from each worker, added into `merged`.
    fn merged(
        &self,
        mut merged: Histogram<u64>,
        pick: impl Fn(&WorkerStats) -> &Histogram<u64>,
    ) -> Histogram<u64> {
        for q in &self.queues {
            merged.add(pick(q)).expect("histograms share bounds");
        }
        merged
    }

    pub fn to_json(&self) -> Value {
        let queues: Vec<Value> = self
            .queues
            .iter()
            .map(|q| {
                let c = &q.counters;
                let drops: Map<String, Value> = DropReason::ALL
                    .iter()
                    .map(|r| (r.name().to_string(), json!(c.drops_of(*r))))
                    .collect();
                let mut queue = Map::new();
                queue.insert("queue".to_string(), json!(q.queue));
                listed_json(c, &mut queue);
                queue.insert("drops".to_string(), Value::Object(drops));
                Value::Object(queue)
            })
            .collect();
        let paths: Vec<Value> = self
            .queues
            .iter()
            .map(|q| {
                let mut path = Map::new();
                path.insert("queue".to_string(), json!(q.queue));
                path.insert("path_mtu".to_string(), json!(q.path.path_mtu));
                listed_json(&q.path, &mut path);
                Value::Object(path)
            })
            .collect();
        json!({
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "queues": queues,
            "kernel_drops": {
                "tun_queue": self.tun_queue_drops,
                "udp_socket": self.totals().udp_socket_drops,
            },
            "path": {
                "path_mtu": self.path_totals().path_mtu,
                "queues": paths,
            },
            "latency_ns": self.histograms_json(Report::latency),
            "queue_delay_ns": self.histograms_json(Report::queue_delay),
        })
    }

    /// `{tun_to_udp: {count, p50, ...}, udp_to_tun: {...}}` of one kind of histogram.
    fn histograms_json(&self, merged: fn(&Report, Direction) -> Histogram<u64>) -> Value {
        Value::Object(
            Direction::ALL
                .iter()
                .map(|d| {
                    let summary = LatencySummary::of(&merged(self, *d));
                    (d.name().to_string(), summary.to_json())
                })
                .collect(),
        )
    }

    /// The human-readable report.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "tunfwd stats after {:.1} s",
            self.elapsed.as_secs_f64()
        );
        // The first `TABLE_COLUMNS` counters of the list (packets and bytes, each way) are the
        // columns, a count 12 wide and bytes 14, so the list's order decides them.
        let width = |i: usize| if i.is_multiple_of(2) { 12 } else { 14 };
        let header: String = Counters::NAMES[..TABLE_COLUMNS]
            .iter()
            .enumerate()
            .map(|(i, name)| format!(" {:>w$}", name.replace("_packets", "_pkts"), w = width(i)))
            .collect();
        let _ = writeln!(out, "{:>5}{header} {:>8}", "queue", "drops");
        let row = |out: &mut String, label: &str, c: &Counters| {
            let cells: String = c
                .values()
                .into_iter()
                .take(TABLE_COLUMNS)
                .enumerate()
                .map(|(i, value)| format!(" {value:>w$}", w = width(i)))
                .collect();
            let _ = writeln!(out, "{label:>5}{cells} {:>8}", c.total_drops());
        };
        for q in &self.queues {
            row(&mut out, &q.queue.to_string(), &q.counters);
        }
        let total = self.totals();
        let path = self.path_totals();
        row(&mut out, "total", &total);
        let nonzero: Vec<String> = DropReason::ALL
            .iter()
            .filter(|r| total.drops_of(**r) > 0)
            .map(|r| format!("{}={}", r.name(), total.drops_of(*r)))
            .collect();
        let _ = writeln!(
            out,
            "drops: {}; path_mtu={}",
            if nonzero.is_empty() {
                "none".to_string()
            } else {
                nonzero.join(" ")
            },
            path.path_mtu
        );
        // Every other counter that is not zero, by its listed name: the columns above and the
        // kernel's drops below are left out.
        let columns = &Counters::NAMES[..TABLE_COLUMNS];
        let others: Vec<String> = Counters::NAMES
            .iter()
            .zip(total.values())
            .filter(|(name, _)| !columns.contains(name) && **name != "udp_socket_drops")
            .chain(PathStats::NAMES.iter().zip(path.values()))
            .filter(|(_, value)| *value > 0)
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        let _ = writeln!(
            out,
            "counters: {}",
            if others.is_empty() {
                "all zero".to_string()
            } else {
                others.join(" ")
            }
        );
        let _ = writeln!(
            out,
            "kernel drops (before tunfwd could read them): tun_queue={} udp_socket={}",
            self.tun_queue_drops
                .map_or_else(|| "unknown".to_string(), |n| n.to_string()),
            total.udp_socket_drops
        );
        let _ = writeln!(
            out,
            "{:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency (ns)", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for direction in Direction::ALL {
            let s = LatencySummary::of(&self.latency(direction));
            let _ = writeln!(
                out,
                "{:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                direction.name(),
                s.count,
                s.p50,
                s.p90,
                s.p99,
                s.p999,
                s.max
            );
        }
        // The wait in the kernel's queue in front of the worker, when it is timed (`--aqm`).
        for direction in Direction::ALL {
            let s = LatencySummary::of(&self.queue_delay(direction));
            if s.count > 0 {
                let _ = writeln!(
                    out,
                    "{:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                    format!("queue {}", direction.name()),
                    s.count,
                    s.p50,
                    s.p90,
                    s.p99,
                    s.p999,
                    s.max
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(queue: usize, packets: u64, latencies: &[u64]) -> WorkerStats {
        let mut w = WorkerStats::new(queue);
        w.counters.tun_rx_packets = packets;
        w.counters.tun_rx_bytes = packets * 100;
        w.counters.udp_tx_packets = packets;
        w.counters.drop(DropReason::ForeignSource);
        for &ns in latencies {
            w.record_latency(Direction::TunToUdp, ns);
        }
        w.record_latency(Direction::UdpToTun, 5_000);
        w
    }

    #[test]
    fn merging_adds_counters_and_histograms() {
        let r = Report::new(
            Duration::from_secs(2),
            vec![worker(1, 10, &[1_000, 2_000]), worker(0, 5, &[100_000])],
        );
        assert_eq!(r.queues[0].queue, 0, "sorted by queue");
        let t = r.totals();
        assert_eq!(t.tun_rx_packets, 15);
        assert_eq!(t.tun_rx_bytes, 1500);
        assert_eq!(t.drops_of(DropReason::ForeignSource), 2);
        assert_eq!(t.total_drops(), 2);
        let h = r.latency(Direction::TunToUdp);
        assert_eq!(h.len(), 3);
        assert!(h.max() >= 99_900 && h.max() <= 100_100);
        assert_eq!(r.latency(Direction::UdpToTun).len(), 2);
    }

    #[test]
    fn the_path_mtu_gauge_merges_to_the_smallest_known() {
        let mut queues: Vec<WorkerStats> = (0..3).map(WorkerStats::new).collect();
        queues[0].path.path_mtu = 1500;
        queues[1].path.path_mtu = 1280;
        queues[2].path.path_mtu = 0; // not known yet
        queues[1].path.too_big_replies = 3;
        queues[2].path.too_big_replies = 4;
        queues[0].path.pmtu_lowered = 1;
        queues[2].path.pmtu_lowered = 2;
        let r = Report::new(Duration::from_secs(1), queues);
        assert_eq!(r.path_totals().path_mtu, 1280);
        assert_eq!(r.path_totals().too_big_replies, 7);
        assert_eq!(r.path_totals().pmtu_lowered, 3);
        let v = r.to_json();
        assert_eq!(v["path"]["queues"][0]["path_mtu"], 1500);
        assert_eq!(v["path"]["queues"][1]["path_mtu"], 1280);
        assert_eq!(v["path"]["queues"][2]["too_big_replies"], 4);
        assert_eq!(v["path"]["queues"][2]["pmtu_lowered"], 2);
        assert_eq!(v["path"]["path_mtu"], 1280);
        assert!(v["queues"][0].get("path_mtu").is_none());
        assert!(r.to_table().contains("path_mtu=1280"));
        assert!(r.to_table().contains("too_big_replies=7 pmtu_lowered=3"));
        let unknown = Report::new(Duration::from_secs(1), vec![WorkerStats::new(0)]);
        assert_eq!(unknown.path_totals().path_mtu, 0);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let r = Report::new(
            Duration::from_millis(1500),
            vec![worker(0, 7, &[1_000; 100])],
        );
        let text = serde_json::to_string(&r.to_json()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let q = &v["queues"][0];
        assert_eq!(q["queue"], 0);
        assert_eq!(q["tun_rx_packets"], 7);
        assert_eq!(q["tun_rx_bytes"], 700);
        assert_eq!(q["udp_tx_packets"], 7);
        assert_eq!(q["drops"]["foreign_source"], 1);
        assert_eq!(q["drops"]["bad_ip_version"], 0);
        assert_eq!(q["drops"].as_object().unwrap().len(), DropReason::ALL.len());
        let lat = &v["latency_ns"]["tun_to_udp"];
        assert_eq!(lat["count"], 100);
        for key in ["p50", "p90", "p99", "p999", "max"] {
            let ns = lat[key].as_u64().unwrap();
            assert!((999..=1001).contains(&ns), "{key} = {ns}");
        }
        assert_eq!(v["latency_ns"]["udp_to_tun"]["count"], 1);
    }

    #[test]
    fn drop_reasons_have_distinct_names_and_indices() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn every_reason_can_be_counted() {
        // Counting each reason indexes the array by its discriminant: a reason missing from
        // ALL would panic here (the array would be too short) or be reported under no name.
        let mut c = Counters::default();
        for (n, r) in DropReason::ALL.iter().enumerate() {
            c.drop_n(*r, n as u64 + 1);
        }
        for (n, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(c.drops_of(*r), n as u64 + 1, "{}", r.name());
        }
        assert_eq!(
            DropReason::ALL.last().map(|r| r.index()),
            Some(DropReason::ALL.len() - 1)
        );
    }

    #[test]
    fn table_lists_queues_total_drops_and_percentiles() {
        let r = Report::new(
            Duration::from_secs(1),
            vec![worker(0, 3, &[2_000]), worker(1, 4, &[])],
        );
        let t = r.to_table();
        assert!(t.contains("total"));
        assert!(t.contains("foreign_source=2"));
        assert!(t.contains("tun_to_udp"));
        assert!(t.contains("p99.9"));
        assert_eq!(t.lines().count(), 1 + 1 + 2 + 1 + 3 + 1 + 2);
        let header: Vec<&str> = t.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            [
                "queue",
                "tun_rx_pkts",
                "tun_rx_bytes",
                "udp_tx_pkts",
                "udp_tx_bytes",
                "udp_rx_pkts",
                "udp_rx_bytes",
                "tun_tx_pkts",
                "tun_tx_bytes",
                "drops"
            ]
        );
        let total: Vec<&str> = t.lines().nth(4).unwrap().split_whitespace().collect();
        assert_eq!(
            total,
            ["total", "7", "700", "7", "0", "0", "0", "0", "0", "2"]
        );
        assert_eq!(
            t.lines().nth(1).unwrap().len(),
            t.lines().nth(4).unwrap().len(),
            "header and rows line up"
        );
    }

    #[test]
    fn a_wrapping_kernel_counter_keeps_counting() {
        assert_eq!(count_since(0, 0), 0);
        assert_eq!(count_since(10, 17), 7);
        assert_eq!(count_since(u32::MAX - 1, 3), 5, "across the wrap");
        let mut total = 0u64;
        let mut last = 0u32;
        for now in [4_000_000_000u32, 4_294_967_295, 1_000, 2_000] {
            total += count_since(last, now);
            last = now;
        }
        assert_eq!(total, (1u64 << 32) + 2_000);
    }

    #[test]
    fn the_kernels_drops_are_reported_apart_from_tunfwds() {
        let mut queues: Vec<WorkerStats> = (0..2).map(WorkerStats::new).collect();
        queues[0].counters.udp_socket_drops = 5;
        queues[1].counters.udp_socket_drops = 7;
        queues[1].counters.drop(DropReason::TunWriteError);
        let r = Report::new(Duration::from_secs(1), queues).with_tun_queue_drops(Some(11));
        assert_eq!(r.totals().udp_socket_drops, 12);
        assert_eq!(
            r.totals().total_drops(),
            1,
            "the kernel's drops are not tunfwd's"
        );
        let v = r.to_json();
        assert_eq!(v["kernel_drops"]["tun_queue"], 11);
        assert_eq!(v["kernel_drops"]["udp_socket"], 12);
        assert_eq!(v["queues"][1]["udp_socket_drops"], 7);
        assert!(
            r.to_table().contains(
                "kernel drops (before tunfwd could read them): tun_queue=11 udp_socket=12"
            )
        );
        let unknown = Report::new(Duration::from_secs(1), vec![WorkerStats::new(0)]);
        assert!(unknown.to_json()["kernel_drops"]["tun_queue"].is_null());
        assert!(
            unknown
                .to_table()
                .contains("tun_queue=unknown udp_socket=0")
        );
    }

    #[test]
    fn super_packets_count_latency_per_segment() {
        let mut w = WorkerStats::new(0);
        w.record_latency_n(Direction::TunToUdp, 7_000, 45);
        assert_eq!(w.tun_to_udp_ns.len(), 45);
        w.counters.drop_n(DropReason::TunWriteError, 3);
        assert_eq!(w.counters.drops_of(DropReason::TunWriteError), 3);
    }

    #[test]
    fn out_of_range_latency_is_clamped() {
        let mut w = WorkerStats::new(0);
        w.record_latency(Direction::UdpToTun, 0);
        w.record_latency(Direction::UdpToTun, u64::MAX);
        assert_eq!(w.udp_to_tun_ns.len(), 2);
    }
}
