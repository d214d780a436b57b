//! Segmentation and coalescing: the inverse pair that lets tunfwd move 64 KB super-packets end to
//! end. PURE: no I/O, no allocation; everything writes into caller buffers.
//!
//! * [`split`]: a TSO/USO super-packet read from the TUN (virtio_net_hdr `gso_type` TCPV4, TCPV6
//!   or UDP_L4) becomes MTU-sized IP packets. The payload is never copied: [`split::Split`] hands
//!   out each segment's rewritten headers plus the range of its payload in the original buffer, and
//!   the worker gathers them with an iovec into one UDP GSO send.
//! * [`coalesce`]: segments received in one UDP GRO buffer are merged back, where the kernel's
//!   own GRO would merge them and re-segmenting the result gives the same packets (the rules are
//!   in that module), into one write with `gso_type` TCPV4/TCPV6/UDP_L4 and `NEEDS_CSUM`.
//! * [`complete_checksum`]: a plain packet read with `NEEDS_CSUM` gets its partial checksum
//!   finished before it leaves the host.
//!
//! Both directions see packets through [`Transport`] (`wire::transport`, re-exported here), which
//! knows where the TCP or UDP header starts behind IPv4 options or IPv6 extension headers. The
//! splitter must take those: the stack can hand the TUN a TSO super-packet with Hop-by-Hop or
//! Destination Options, and refusing one drops every segment of it, for as long as the flow sends
//! them. The coalescer leaves them alone, as runs of one. Header fields are read by their names in
//! `wire::ip::field` and `wire::transport::field`.

pub mod coalesce;
pub mod ecn;
pub mod icmp;
pub mod split;
#[cfg(test)]
mod tables;

use crate::wire::checksum::Sum;
use crate::wire::transport::field::UDP_CHECKSUM;

// The parser and the header layout live in `wire`; these names stay here so that
// `offload::Transport` and friends keep working.
#[cfg(test)]
pub use crate::wire::ip::set_ipv4_header_checksum;
pub use crate::wire::transport::{PROTO_TCP, PROTO_UDP, Transport, checksum_is_valid, tcp_flags};

/// Why an offloaded packet could not be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// Not IPv4/IPv6 carrying TCP/UDP, a fragment, or headers out of bounds.
    BadHeaders,
    /// The GSO type disagrees with the packet (TCPV4 on an IPv6 packet, UDP_L4 on TCP...).
    GsoTypeMismatch,
    /// gso_size of zero, or a GSO type this build does not segment.
    BadGso,
    /// Headers longer than [`split::MAX_HEADER_LEN`] (long IPv6 extension headers).
    HeadersTooLong,
    /// More segments than the caller can take.
    TooManySegments,
    /// The partial checksum's position is outside the packet.
    BadChecksumOffset,
}

/// Finishes a partial checksum (`NEEDS_CSUM` without GSO): the field at `start + offset` already
/// holds the pseudo-header sum; sum from `start` to the end and store the complement.
pub fn complete_checksum(
    packet: &mut [u8],
    start: usize,
    offset: usize,
) -> Result<(), OffloadError> {
    let field = start
        .checked_add(offset)
        .ok_or(OffloadError::BadChecksumOffset)?;
    if field + 2 > packet.len() || start > packet.len() {
        return Err(OffloadError::BadChecksumOffset);
    }
    let sum = Sum::of(&packet[start..]);
    let c = if offset == UDP_CHECKSUM.start {
        sum.finish_udp()
    } else {
        sum.finish()
    };
    packet[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_packets {
    //! The test kit's packet builders (`tunfwd_testkit::packets`, with their own checksum code),
    //! and what ties them to this crate's types: the oracle's verdict compared with
    //! [`Transport::parse`], and GRO buffers laid out as [`coalesce::Segment`]s.
    use super::coalesce::{Run, Segment, validate};
    use super::*;
    pub use tunfwd_testkit::packets::{Spec, build, fix_l4_checksum};

    /// xorshift64: reproducible numbers for the randomised tests, enough to mix their cases.
    pub struct Xorshift(pub u64);

    impl Xorshift {
        /// A number in `0..n` (0 when `n` is 0). The seed must not be 0.
        pub fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    /// Lays packets out back to back, as a GRO buffer holds them, each with what
    /// `coalesce::validate` finds in it (every packet must be one it accepts).
    pub fn gro_buffer(packets: &[Vec<u8>]) -> (Vec<u8>, Vec<Segment>) {
        let mut buffer = Vec::new();
        let mut segments = Vec::new();
        for p in packets {
            let transport = validate(p).unwrap_or_else(|e| panic!("{e}: {p:02x?}"));
            segments.push(Segment {
                at: buffer.len(),
                len: p.len(),
                transport,
            });
            buffer.extend_from_slice(p);
        }
        (buffer, segments)
    }

    /// What the kernel would see: the merged packet, with its partial checksum completed.
    pub fn merged(
        buffer: &[u8],
        segments: &[Segment],
        run: Run,
        header: &[u8; crate::wire::vnet::LEN],
    ) -> Vec<u8> {
        let mut out = buffer[segments[run.first].range()].to_vec();
        let t = Transport::parse(&out).unwrap();
        for s in &segments[run.first + 1..run.first + run.count] {
            out.extend_from_slice(&buffer[s.at + t.header_len()..s.at + s.len]);
        }
        let h = crate::wire::vnet::VnetHeader::new_checked(&header[..]).unwrap();
        complete_checksum(
            &mut out,
            usize::from(h.csum_start()),
            usize::from(h.csum_offset()),
        )
        .unwrap();
        out
    }

    /// Asserts, with etherparse as the independent oracle (`packets::assert_valid`), that `p` is
    /// a well-formed packet with correct lengths and checksums, and that [`Transport::parse`]
    /// agrees with the oracle on where its transport header starts.
    pub fn assert_valid(p: &[u8]) {
        let ip_header_len = tunfwd_testkit::packets::assert_valid(p);
        let t = Transport::parse(p).unwrap();
        assert_eq!(
            t.ip_header_len, ip_header_len,
            "the parser and the oracle agree on where L4 starts"
        );
        assert!(checksum_is_valid(p, &t));
    }
}

#[cfg(test)]
mod tests {
    use super::test_packets::*;
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn builders_make_packets_the_oracle_accepts() {
        for ipv6 in [false, true] {
            for udp in [false, true] {
                assert_valid(&build(&Spec {
                    ipv6,
                    udp,
                    ..Spec::default()
                }));
            }
        }
        assert_valid(&build(&Spec {
            ipv4_options: 8,
            tcp_options: vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            ..Spec::default()
        }));
    }

    #[test]
    fn parse_rejects_fragments_refused_extension_headers_and_short_headers() {
        let mut p = build(&Spec::default());
        assert!(Transport::parse(&p).is_some());
        p[6] = 0x20; // more fragments
        assert!(Transport::parse(&p).is_none());
        let p = build(&Spec::default());
        assert!(Transport::parse(&p[..30]).is_none());
        let v6 = |ipv6_extensions: Vec<(u8, Vec<u8>)>| {
            build(&Spec {
                ipv6: true,
                ipv6_extensions,
                ..Spec::default()
            })
        };
        let pad = || vec![1, 4, 0, 0, 0, 0]; // a PadN option filling 8 bytes
        let routing = |segments_left: u8| {
            let mut r = vec![4, segments_left, 0, 0, 0, 0];
            r.extend_from_slice(&"2001:2:1::2".parse::<Ipv6Addr>().unwrap().octets());
            r
        };
        for (name, extensions, ip_header_len) in [
            ("hop-by-hop", vec![(0, pad())], Some(48)),
            ("destination options", vec![(60, pad())], Some(48)),
            ("routing, nothing left", vec![(43, routing(0))], Some(64)),
            (
                "all three",
                vec![(0, pad()), (60, pad()), (43, routing(0)), (60, pad())],
                Some(88),
            ),
            ("routing with segments left", vec![(43, routing(1))], None),
            ("hop-by-hop not first", vec![(60, pad()), (0, pad())], None),
            ("fragment", vec![(44, vec![0; 6])], None),
            ("authentication", vec![(51, vec![0; 14])], None),
        ] {
            let p = v6(extensions);
            let t = Transport::parse(&p);
            assert_eq!(t.map(|t| t.ip_header_len), ip_header_len, "{name}");
            if let Some(t) = t {
                assert_valid(&p);
                // Every cut of the headers is refused, and nothing panics on the way.
                for cut in 0..t.header_len() {
                    assert!(Transport::parse(&p[..cut]).is_none(), "{name} cut at {cut}");
                }
            }
        }
        // An extension header claiming more bytes than the packet has.
        let mut p = v6(vec![(60, pad())]);
        p[41] = 200;
        assert!(Transport::parse(&p).is_none());
    }

    #[test]
    fn completing_a_partial_checksum_gives_the_full_one() {
        for udp in [false, true] {
            for ipv6 in [false, true] {
                let good = build(&Spec {
                    udp,
                    ipv6,
                    payload_len: 333,
                    ..Spec::default()
                });
                let t = Transport::parse(&good).unwrap();
                let mut partial = good.clone();
                let field = t.ip_header_len + t.checksum_offset();
                let pseudo = t.pseudo_header(&good, good.len() - t.ip_header_len);
                partial[field..field + 2].copy_from_slice(&pseudo.0.to_be_bytes());
                complete_checksum(&mut partial, t.ip_header_len, t.checksum_offset()).unwrap();
                assert_eq!(partial, good);
            }
        }
        let mut short = vec![0u8; 10];
        assert_eq!(
            complete_checksum(&mut short, 4, 16),
            Err(OffloadError::BadChecksumOffset)
        );
    }

    #[test]
    fn corrupted_checksums_are_detected() {
        let mut p = build(&Spec {
            payload_len: 50,
            ..Spec::default()
        });
        let t = Transport::parse(&p).unwrap();
        assert!(checksum_is_valid(&p, &t));
        let last = p.len() - 1;
        p[last] ^= 0x40;
        assert!(!checksum_is_valid(&p, &t));
    }

    /// Bounded fuzzing, run by CI: random and mutated bytes through the parser, the splitter and
    /// the coalescer. Beyond "no panic", the invariants: a split's segments are valid packets
    /// whose payloads tile the original's; runs cover every segment exactly once, in order.
    #[test]
    fn fuzz_parser_splitter_coalescer_invariants() {
        use super::coalesce::{Policy, Segment, finish_segments, plan_segments, validate};
        use super::split::Split;
        use crate::wire::vnet::GsoType;
        let mut rng = Xorshift(0x0123_4567_89ab_cdef);
        let mut rnd = move |n: u64| rng.below(n);
        let mut runs = Vec::new();
        for round in 0..20_000 {
            let ipv6 = rnd(2) == 0;
            // Sometimes a chain of extension headers, so that mutations reach the walker.
            let ipv6_extensions = if ipv6 && rnd(3) == 0 {
                (0..1 + rnd(3))
                    .map(|i| match (i, rnd(3)) {
                        (0, 0) => (0, vec![1, 4, 0, 0, 0, 0]),
                        (_, 1) => (43, [vec![4, 0], vec![0; 20]].concat()),
                        _ => (60, vec![1, 4, 0, 0, 0, 0]),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let spec = Spec {
                ipv6,
                ipv6_extensions,
                udp: rnd(2) == 0,
                payload_len: rnd(3000) as usize,
                tcp_options: if rnd(3) == 0 {
                    vec![1; 4 * rnd(10) as usize]
                } else {
                    vec![]
                },
                ..Spec::default()
            };
            let mut p = build(&spec);
            let mutate = round % 2 == 0;
            if mutate {
                for _ in 0..1 + rnd(3) {
                    let at = rnd(p.len() as u64) as usize;
                    p[at] = rnd(256) as u8;
                }
                p.truncate(p.len() - rnd(p.len().min(30) as u64) as usize);
            }
            let transport = Transport::parse(&p);
            let checked = crate::wire::IpPacket::new_checked(&p[..]).map(|_| transport);
            assert_eq!(validate(&p), checked, "one pass, the same answers");
            let gso = [
                GsoType::TcpV4,
                GsoType::TcpV6,
                GsoType::UdpL4,
                GsoType::None,
            ][rnd(4) as usize];
            let size = 1 + rnd(1500) as u16;
            if let Ok(plan) = Split::plan(&p, gso, size, 4096) {
                let mut payload = Vec::new();
                let mut seg = Vec::new();
                for i in 0..plan.count {
                    plan.segment_into(&p, i, &mut seg);
                    let t = Transport::parse(&seg).expect("segments parse");
                    assert!(seg.len() - t.header_len() <= usize::from(size));
                    if !mutate {
                        assert_valid(&seg);
                    }
                    payload.extend_from_slice(&seg[t.header_len()..]);
                }
                assert_eq!(
                    payload,
                    p[plan.transport.header_len()..],
                    "payloads tile the original"
                );
            }
            // Random segment layouts over the same bytes, kept where they validate, as the worker
            // keeps them.
            let mut pieces = Vec::new();
            let mut at = 0;
            while at < p.len() && pieces.len() < 64 {
                let len = (1 + rnd(400) as usize).min(p.len() - at);
                pieces.push((at, len));
                at += len;
            }
            if rnd(2) == 0 {
                pieces = vec![(0, p.len())];
            }
            let segments: Vec<Segment> = pieces
                .iter()
                .filter_map(|&(at, len)| {
                    let transport = validate(&p[at..at + len]).ok()?;
                    Some(Segment { at, len, transport })
                })
                .collect();
            let mut buffer = p.clone();
            plan_segments(&buffer, &segments, Policy::ALL, &mut runs);
            let mut next = 0;
            for run in &runs {
                assert_eq!(run.first, next, "runs in order, no gaps");
                assert!(run.count >= 1);
                next += run.count;
                let _ = finish_segments(&mut buffer, &segments, *run);
            }
            assert_eq!(next, segments.len(), "every segment in exactly one run");
        }
    }
}
