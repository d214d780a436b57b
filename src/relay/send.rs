//! What a UDP send's result means, and what becomes of a send refused as too big. PURE.

use crate::stats::DropReason;

/// Refused sends of one slot that may be sent again (see [`AfterRefusal::Resend`]). A bound, so
/// that a kernel that keeps refusing them cannot keep a buffer out of the ring forever; one is
/// what an ICMP error about an earlier datagram costs. Each refusal takes one pending error, so
/// only a new ICMP error arriving between two tries fails the next: with 4, a flood of about
/// 50,000 forged port-unreachables a second (which anyone may send: they quote the relay's
/// public 4-tuple) still cost a few batches; 16 consecutive ones would take such errors
/// arriving faster than the worker resends.
pub const RESENDS_PER_SLOT: u8 = 16;

/// Which socket a send goes out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The worker's socket, DF on every datagram.
    Direct,
    /// The one that lets the outer IP layer fragment.
    Fragmenting,
}

/// What a send's result says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    /// `bytes` went out.
    Sent { bytes: usize },
    /// Refused, maybe for something that was not this send's doing, so judged again once the
    /// batch has read the error queue ([`after_refusal`]):
    /// * EMSGSIZE: over the egress device's MTU (with the MTU queued, `ip_local_error`), or an
    ///   ICMP fragmentation-needed left as the socket's pending error, which any send takes;
    /// * EINVAL for a GSO send: `udp_send_skb` refuses a `gso_size` over the device's MTU;
    /// * ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, EHOSTDOWN, EPROTO, ENETDOWN: with
    ///   `IP_RECVERR` an ICMP error about an earlier datagram (any flow's) becomes the socket's
    ///   pending error (`__udp4_lib_err`, `__udp6_lib_err`), and the next send fails with it
    ///   (`sock_alloc_send_pskb` checks `sock_error`), which clears it.
    Refused { errno: i32 },
    /// A GSO send refused with EIO: the egress device cannot do UDP GSO (no checksum offload).
    GsoUnusable { errno: i32 },
    /// Lost, for this reason.
    Dropped(DropReason),
}

/// Judges the result of a send (`gso`: it carried several segments with `UDP_SEGMENT`) on the
/// socket `route` names. Only the worker's own socket sends with DF, so only its sends are
/// refused as too big.
pub fn judge(result: i32, gso: bool, route: Route) -> SendResult {
    if result >= 0 {
        return SendResult::Sent {
            bytes: result as usize,
        };
    }
    let errno = -result;
    let direct = route == Route::Direct;
    // Both sockets have IP_RECVERR (the kernel hands an ICMP error to either), so a send on
    // either may take a pending error; only the worker's own socket sends with DF.
    if is_peer_unreachable(errno)
        || (direct && (errno == libc::EMSGSIZE || (gso && errno == libc::EINVAL)))
    {
        SendResult::Refused { errno }
    } else if direct && gso && errno == libc::EIO {
        SendResult::GsoUnusable { errno }
    } else if errno == libc::EAGAIN || errno == libc::ENOBUFS {
        SendResult::Dropped(DropReason::UdpSendBufferFull)
    } else if is_peer_unreachable(errno) {
        SendResult::Dropped(DropReason::PeerUnreachable)
    } else {
        SendResult::Dropped(DropReason::UdpSendError)
    }
}

/// The errors an ICMP error about the peer turns into (`IP_RECVERR`).
pub fn is_peer_unreachable(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::ENETDOWN
            | libc::EPROTO
    )
}

/// What becomes of a refused send, once the batch has read the error queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRefusal {
    /// Send it again as it was: the refusal was the socket's pending error, an ICMP error about
    /// an earlier datagram, which the refused send cleared; or its datagrams fit after all.
    Resend,
    /// A GSO send of datagrams that fit, refused with EINVAL: sent again datagram by datagram
    /// (each then fails alone, with the egress device's MTU queued, if it is too long).
    OneByOne,
    /// Longer than the inner MTU: answered or sent in outer fragments
    /// (`offload::icmp::TooBig`).
    TooBig,
    /// The slot's resends are spent: dropped, for this reason.
    Drop(DropReason),
}

/// Judges a send refused with `errno` whose datagrams are `segment_len` bytes (a GSO send: each
/// but maybe the last), once the batch has read the error queue (so `inner_mtu` includes any
/// local limit it reported): only datagrams longer than `inner_mtu` are too big, and an error
/// about the peer is taken as what it is with `IP_RECVERR`, an earlier datagram's.
pub fn after_refusal(
    errno: i32,
    gso: bool,
    segment_len: usize,
    inner_mtu: usize,
    resends_left: bool,
) -> AfterRefusal {
    if is_peer_unreachable(errno) {
        return if resends_left {
            AfterRefusal::Resend
        } else {
            AfterRefusal::Drop(DropReason::PeerUnreachable)
        };
    }
    if segment_len > inner_mtu {
        AfterRefusal::TooBig
    } else if gso && errno == libc::EINVAL {
        AfterRefusal::OneByOne
    } else if resends_left {
        AfterRefusal::Resend
    } else {
        AfterRefusal::Drop(DropReason::UdpSendError)
    }
}

/// What the completions of one batch said about the path, acted on once at its end, however
/// many of them said it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorReports {
    /// Read the error queue: a refusal or an ICMP error put something there.
    pub drain_queue: bool,
    /// ICMP errors that surfaced as a receive's error (each also queued, unless drained before).
    pub surfaced_icmp_errors: u64,
    /// Extra sockets (bit `k` for `Socket::Extra(k)`) whose queue a refusal put something in.
    pub drain_extra: u64,
}

impl ErrorReports {
    /// Notes what a send's result says about the path.
    pub fn note_send(&mut self, result: SendResult) {
        // A GSO EINVAL queues nothing; the others were, or came from, a queued error.
        if let SendResult::Refused { errno } = result {
            self.drain_queue |= errno != libc::EINVAL;
        }
    }

    /// Notes a receive that failed with `errno`. Returns whether that was about the path (and
    /// so no fault of the receive).
    pub fn note_receive_error(&mut self, errno: i32) -> bool {
        if errno == libc::EMSGSIZE {
            // IP_RECVERR: an ICMP fragmentation-needed or packet-too-big about our datagrams set
            // the socket's error (`__udp4_lib_err`), which this receive took; the MTU it reports
            // is queued.
            self.drain_queue = true;
            true
        } else if is_peer_unreachable(errno) {
            // IP_RECVERR: an ICMP error about the peer surfaced on the receive.
            self.drain_queue = true;
            self.surfaced_icmp_errors += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_judged_by_errno_gso_and_route() {
        use Route::*;
        use SendResult::*;
        let e = |errno: i32| -errno;
        for (result, gso, route, expected) in [
            (1400, false, Direct, Sent { bytes: 1400 }),
            (
                e(libc::EMSGSIZE),
                false,
                Direct,
                Refused {
                    errno: libc::EMSGSIZE,
                },
            ),
            (
                e(libc::EINVAL),
                true,
                Direct,
                Refused {
                    errno: libc::EINVAL,
                },
            ),
            (
                e(libc::EINVAL),
                false,
                Direct,
                Dropped(DropReason::UdpSendError),
            ),
            (
                e(libc::EMSGSIZE),
                false,
                Fragmenting,
                Dropped(DropReason::UdpSendError),
            ),
            (e(libc::EIO), true, Direct, GsoUnusable { errno: libc::EIO }),
            (
                e(libc::EIO),
                false,
                Direct,
                Dropped(DropReason::UdpSendError),
            ),
            (
                e(libc::ENOBUFS),
                true,
                Direct,
                Dropped(DropReason::UdpSendBufferFull),
            ),
            (
                e(libc::EAGAIN),
                false,
                Direct,
                Dropped(DropReason::UdpSendBufferFull),
            ),
            (
                e(libc::ECONNREFUSED),
                false,
                Direct,
                Refused {
                    errno: libc::ECONNREFUSED,
                },
            ),
            (
                e(libc::EHOSTUNREACH),
                true,
                Fragmenting,
                Refused {
                    errno: libc::EHOSTUNREACH,
                },
            ),
            (
                e(libc::ENOTCONN),
                false,
                Fragmenting,
                Dropped(DropReason::UdpSendError),
            ),
        ] {
            assert_eq!(
                judge(result, gso, route),
                expected,
                "{result} {gso} {route:?}"
            );
        }
    }

    #[test]
    fn reports_ask_for_the_queue_only_when_something_was_queued() {
        let mut r = ErrorReports::default();
        r.note_send(SendResult::Sent { bytes: 1 });
        r.note_send(SendResult::Dropped(DropReason::UdpSendBufferFull));
        assert_eq!(r, ErrorReports::default());
        r.note_send(SendResult::Refused {
            errno: libc::EINVAL,
        });
        assert!(!r.drain_queue, "a GSO EINVAL queues nothing");
        r.note_send(SendResult::Refused {
            errno: libc::ECONNREFUSED,
        });
        assert!(r.drain_queue);
        let mut r = ErrorReports::default();
        assert!(!r.note_receive_error(libc::EBADF));
        assert!(r.note_receive_error(libc::ECONNREFUSED));
        assert!(r.note_receive_error(libc::EMSGSIZE));
        assert_eq!(r.surfaced_icmp_errors, 1);
        assert!(r.drain_queue);
        let mut r = ErrorReports::default();
        r.note_send(SendResult::Refused {
            errno: libc::EHOSTUNREACH,
        });
        assert!(r.drain_queue, "a pending ICMP error was queued too");
    }

    /// After a router's ICMP error, the socket's pending EMSGSIZE fails the next send whatever its
    /// size. Judged against the path MTU known once the error queue is read, a send whose
    /// datagrams fit goes out again, and only datagrams longer than the inner MTU are too big.
    /// (tunfwd once answered every refused send as too big: a 100-byte ping after a frag-needed
    /// for 1400 bytes was dropped, and its sender told the MTU was 1372.) An ICMP error about
    /// an earlier datagram, pending on the socket, costs the send it fails nothing either: it
    /// is sent again (once dropped as `peer_unreachable`, a whole GSO batch of any flow).
    #[test]
    fn refused_sends_that_fit_are_sent_again() {
        use AfterRefusal::*;
        let emsgsize = libc::EMSGSIZE;
        let einval = libc::EINVAL;
        for (errno, gso, length, inner_mtu, resends_left, expected) in [
            // The pending error of a router's ICMP: the datagrams fit.
            (emsgsize, false, 100, 1372, true, Resend),
            (emsgsize, true, 1372, 1372, true, Resend),
            // They no longer fit: answered or fragmented, whatever the errno.
            (emsgsize, false, 1373, 1372, true, TooBig),
            (emsgsize, true, 1400, 1252, true, TooBig),
            (einval, true, 1400, 1252, true, TooBig),
            (einval, true, 1400, 1252, false, TooBig),
            // A GSO EINVAL for datagrams that fit: one by one, GSO stays on.
            (einval, true, 1200, 1252, true, OneByOne),
            (einval, true, 1200, 1252, false, OneByOne),
            // Refused again and again though they fit: not forever.
            (
                emsgsize,
                false,
                100,
                1372,
                false,
                Drop(DropReason::UdpSendError),
            ),
            // Pending errors about earlier datagrams, whatever the length.
            (libc::ECONNREFUSED, true, 1400, 1252, true, Resend),
            (libc::EHOSTUNREACH, false, 100, 1252, true, Resend),
            (libc::EPROTO, false, 100, 1252, true, Resend),
            (libc::ENETUNREACH, false, 100, 1252, true, Resend),
            (libc::EHOSTDOWN, false, 100, 1252, true, Resend),
            (
                libc::ECONNREFUSED,
                false,
                100,
                1252,
                false,
                Drop(DropReason::PeerUnreachable),
            ),
        ] {
            assert_eq!(
                after_refusal(errno, gso, length, inner_mtu, resends_left),
                expected,
                "errno {errno} gso {gso} length {length} inner MTU {inner_mtu}"
            );
        }
    }
}
