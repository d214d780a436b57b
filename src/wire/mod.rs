//! Packet views over byte buffers. PURE: no I/O, no allocation, no `unsafe`.
//!
//! Every view follows one contract: `new_checked` validates lengths once, and afterwards no
//! accessor panics. Views borrow any `T: AsRef<[u8]>`, so the worker can look at a packet in place
//! in an io_uring buffer without copying it.

pub mod checksum;
pub mod ip;
pub mod vnet;

pub use ip::{IpPacket, IpVersion, Malformed};
pub use vnet::VnetHeader;
