//! Which offloads shape the bytes tunfwd reads and writes. PURE: plain data, no I/O.
//!
//! One set of four switches serves every stage: what the operator allows (`cli`), what the TUN
//! and the sockets accept when asked (`sys::tun::negotiate_offloads`, `sys::socket`), what a
//! relay works with (`relay`), and the startup line that compares the first with the last
//! (`operate::describe`). It lives here, below all of them, so that `sys` and `relay` share it
//! without either depending on the other.

/// The offloads, each on or off: allowed, asked for or in effect, as the holder says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    /// TCP segmentation offload with the TUN (`TUN_F_TSO4 | TUN_F_TSO6`): it hands us TCP
    /// super-packets, and we may write merged TCP ones.
    pub tso: bool,
    /// Same for UDP (`TUN_F_USO4 | TUN_F_USO6`, Linux 6.2).
    pub uso: bool,
    /// Send several datagrams per `sendmsg` with `UDP_SEGMENT`.
    pub udp_gso: bool,
    /// Receive several datagrams per buffer with `UDP_GRO`.
    pub udp_gro: bool,
}

impl Offloads {
    /// Whether TUN reads may carry super-packets or partial checksums (64 KB buffers needed).
    pub fn tun_offloads(self) -> bool {
        self.tso || self.uso
    }
}
