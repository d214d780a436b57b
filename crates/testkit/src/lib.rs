//! tunfwd's test kit: what the tests, the benches, the fuzz targets and the tools share, and the
//! product must not ship.
//!
//! * [`testbed`]: three network namespaces joined by veths, the processes started in them, and
//!   the helpers that read what tunfwd and `tunload` report. It drives `ip` (iproute2).
//! * [`per_engine!`]: one `#[test]` per I/O engine for each test body of a namespace suite.
//! * [`packets`]: IPv4/IPv6 TCP/UDP packet builders with their own RFC 1071 checksum, and
//!   etherparse as the judge of a packet's lengths and checksums. The product's unit tests, the
//!   micro benches and the fuzz crate's seeds all build their packets here.
//! * [`cbpf`]: a classic BPF interpreter, the second half of the check that the reuseport
//!   steering program computes what `steer::flow_index` does.
//! * [`sockets`]: the plain UDP sockets a test sends from as a stranger, a router or a sender
//!   that marks its datagrams' TOS.
//! * [`binaries`]: the tools crate's binaries (`tunload`, `simpletun`, `e2e`), built on first
//!   use, for suites and benches of other packages, which cargo builds no binary for.
//! * [`wgpeer`]: the WireGuard peers (upstream and Debian's wireguard-go, boringtun) started in
//!   the testbed's namespaces and configured with `wg`, and `wg show`'s dump parsed.
//!
//! It must never depend on `tunfwd`: the product's own unit tests use it as a dev-dependency,
//! and a test kit that depended on the product would hand them a second, incompatible copy of
//! every tunfwd type. So its builders write bytes, and its checks judge bytes.

pub mod binaries;
pub mod cbpf;
pub mod packets;
pub mod sockets;
pub mod testbed;
pub mod wgpeer;

/// For each test body `fn name(engine: &str)` in the calling test file, a module `name` holding
/// one test per I/O engine: `name::uring`, `name::uring_compat` and `name::poll`. Each calls the
/// file's `serially(body, engine)`, which holds the file's lock around the body.
#[macro_export]
macro_rules! per_engine {
    ($($body:ident),+ $(,)?) => {$(
        mod $body {
            #[test]
            fn uring() {
                super::serially(super::$body, "uring");
            }
            #[test]
            fn uring_compat() {
                super::serially(super::$body, "uring-compat");
            }
            #[test]
            fn poll() {
                super::serially(super::$body, "poll");
            }
        }
    )+};
}
