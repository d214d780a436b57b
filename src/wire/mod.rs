//! Packet views over byte buffers. PURE: no I/O, no allocation, no `unsafe`.
//!
//! Every view follows one contract: `new_checked` validates lengths once, and afterwards no
//! accessor panics. Views borrow any `T: AsRef<[u8]>`, so the worker can look at a packet in place
//! in an io_uring buffer without copying it.
//!
//! An IP header is parsed by one set of rules, here: [`ip`] says where the fixed header is in
//! bounds and checks a datagram's length field; [`transport`] says where the TCP or UDP header
//! starts behind options and extension headers, which [`extension`] walks, one header at a
//! time, for it and for every other reader of them. The offload code reads fields through their
//! names in `ip::field` and `transport::field`.
//!
//! Two plain types that every layer above shares live here too, below `sys` and `relay` alike:
//! [`OuterFamily`] and [`Offloads`].

pub mod checksum;
pub mod cmsg;
pub mod control;
pub mod extension;
pub mod icmp;
pub mod ip;
mod offloads;
mod outer;
pub mod transport;
pub mod vnet;

pub use ip::{IpPacket, IpVersion, Malformed};
pub use offloads::Offloads;
pub use outer::OuterFamily;
pub use vnet::VnetHeader;
