//! What a UDP send's result means, and what becomes of a send refused as too big. PURE.

use crate::stats::DropReason;

/// Refused sends of one slot that may be sent again because they fit the path after all (see
/// [`AfterRefusal::Resend`]). A bound, so that a kernel that keeps refusing them cannot keep a
/// buffer out of the ring forever; one is what a router's ICMP error costs.
pub const RESENDS_PER_SLOT: u8 = 4;

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
    /// Refused as too big for the path, which shrank after the packets were read: EMSGSIZE
    /// (with the MTU queued, `ip_local_error`), or for a GSO send EINVAL (`udp_send_skb` refuses
    /// a gso_size that does not fit the path, or the device cannot do GSO at all). Or a router's
    /// ICMP left EMSGSIZE as the socket's pending error, which any send takes. Which it was is
    /// known once the path MTU has been looked at: [`after_refusal`].
    Refused { errno: i32 },
    /// A GSO send refused with EIO: the egress device cannot do UDP GSO (no checksum offload).
    GsoUnusable { errno: i32 },
    /// Lost, for this reason.
    Dropped(DropReason),
}

/// Judges the result of a send (`gso`: it carried several segments with `UDP_SEGMENT`) on the
/// socket `route` names. Only the worker's own socket has `IP_RECVERR` and DF, so only its
/// sends are refused as too big.
pub fn judge(result: i32, gso: bool, route: Route) -> SendResult {
    if result >= 0 {
        return SendResult::Sent {
            bytes: result as usize,
        };
    }
    let errno = -result;
    let direct = route == Route::Direct;
    if direct && (errno == libc::EMSGSIZE || (gso && errno == libc::EINVAL)) {
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

/// What becomes of a send refused as too big, once the path MTU has been looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRefusal {
    /// Its datagrams fit the path: send them again as they were. The refusal was the socket's
    /// pending error, which a router's ICMP set (`__udp4_lib_err` / `__udp6_lib_err` with
    /// `IP_RECVERR`) and which the next send of any size takes (`sock_alloc_send_pskb` checks
    /// `sock_error`), and which that send cleared.
    Resend,
    /// A GSO send of datagrams that fit, refused with EINVAL: the egress device cannot do UDP
    /// GSO, so they go one by one.
    WithoutGso,
    /// Longer than the inner MTU: answered or sent in outer fragments
    /// (`offload::icmp::TooBig`).
    TooBig,
    /// They fit, yet the slot's resends are spent: dropped as a send error.
    Drop,
}

/// Judges a send refused with `errno` (EMSGSIZE, or EINVAL for a GSO send) whose datagrams are
/// `segment_len` bytes (a GSO send: each but maybe the last), after the path MTU was looked at:
/// only datagrams longer than `inner_mtu` are too big.
pub fn after_refusal(
    errno: i32,
    gso: bool,
    segment_len: usize,
    inner_mtu: usize,
    resends_left: bool,
) -> AfterRefusal {
    if segment_len > inner_mtu {
        AfterRefusal::TooBig
    } else if gso && errno == libc::EINVAL {
        AfterRefusal::WithoutGso
    } else if resends_left {
        AfterRefusal::Resend
    } else {
        AfterRefusal::Drop
    }
}

/// What the completions of one batch said about the path, acted on once at its end, however
/// many of them said it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorReports {
    /// Read the error queue: a refusal or an ICMP error put something there.
    pub drain_queue: bool,
    /// Reread the kernel's path MTU: a send was refused as too big.
    pub reread_path_mtu: bool,
    /// ICMP errors that surfaced as a receive's error (each also queued, unless drained before).
    pub surfaced_icmp_errors: u64,
}

impl ErrorReports {
    /// Notes what a send's result says about the path.
    pub fn note_send(&mut self, result: SendResult, route: Route) {
        match result {
            SendResult::Refused { errno } => {
                self.reread_path_mtu = true;
                self.drain_queue |= errno == libc::EMSGSIZE;
            }
            // The fragmenting socket has no IP_RECVERR, so nothing is queued for it.
            SendResult::Dropped(DropReason::PeerUnreachable) => {
                self.drain_queue |= route == Route::Direct
            }
            _ => {}
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
            self.reread_path_mtu = true;
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
                Dropped(DropReason::PeerUnreachable),
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
    fn reports_ask_for_the_queue_and_the_mtu_only_when_something_said_so() {
        let mut r = ErrorReports::default();
        r.note_send(SendResult::Sent { bytes: 1 }, Route::Direct);
        r.note_send(
            SendResult::Dropped(DropReason::PeerUnreachable),
            Route::Fragmenting,
        );
        assert_eq!(r, ErrorReports::default());
        r.note_send(
            SendResult::Refused {
                errno: libc::EINVAL,
            },
            Route::Direct,
        );
        assert!(r.reread_path_mtu && !r.drain_queue);
        r.note_send(
            SendResult::Dropped(DropReason::PeerUnreachable),
            Route::Direct,
        );
        assert!(r.drain_queue);
        let mut r = ErrorReports::default();
        assert!(!r.note_receive_error(libc::EBADF));
        assert!(r.note_receive_error(libc::ECONNREFUSED));
        assert!(r.note_receive_error(libc::EMSGSIZE));
        assert_eq!(r.surfaced_icmp_errors, 1);
        assert!(r.drain_queue && r.reread_path_mtu);
    }

    /// After a router's ICMP error, the socket's pending EMSGSIZE fails the next send whatever its
    /// size. Judged against the path MTU learned from it, a send whose datagrams fit goes out
    /// again, and only datagrams longer than the new inner MTU are too big. (tunfwd once answered
    /// every refused send as too big: a 100-byte ping after a frag-needed for 1400 bytes was
    /// dropped, and its sender told the MTU was 1372.)
    #[test]
    fn refused_sends_that_fit_the_learned_mtu_are_sent_again() {
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
            // A GSO EINVAL for datagrams that fit: the device cannot do GSO.
            (einval, true, 1200, 1252, true, WithoutGso),
            (einval, true, 1200, 1252, false, WithoutGso),
            // Refused again and again though they fit: not forever.
            (emsgsize, false, 100, 1372, false, Drop),
        ] {
            assert_eq!(
                after_refusal(errno, gso, length, inner_mtu, resends_left),
                expected,
                "errno {errno} gso {gso} length {length} inner MTU {inner_mtu}"
            );
        }
    }
}
