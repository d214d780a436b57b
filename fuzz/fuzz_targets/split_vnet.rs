//! A TUN read: a virtio_net_hdr (include/uapi/linux/virtio_net.h) and a packet, both arbitrary,
//! handled as the worker's `on_tun_read` handles them. No panic; and when the splitter accepts a
//! super-packet, every segment must be a valid packet by etherparse (lengths and checksums), carry
//! at most `gso_size` payload bytes (all but the last exactly that many), and the payloads must
//! tile the original's in order; the headers fit the room `MAX_HEADER_LEN` promises. The input's
//! own checksums and length fields may be anything: the splitter recomputes them all, as the
//! kernel's `tcp_gso_segment`/`__udp_gso_segment` do (net/ipv4/tcp_offload.c,
//! net/ipv4/udp_offload.c).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tunfwd::fuzzing::vnet::{self, FLAG_NEEDS_CSUM, GsoType, VnetHeader};
use tunfwd::fuzzing::{
    MAX_HEADER_LEN, MAX_SPLIT_SEGMENTS as MAX_SEGMENTS, Split, complete_checksum,
};
use tunfwd_fuzz::assert_valid;

fuzz_target!(|data: &[u8]| {
    let Some(header) = VnetHeader::new_checked(data) else {
        return;
    };
    let mut packet = data[vnet::LEN..].to_vec();
    let (gso, gso_size) = (header.gso_type(), header.gso_size());
    match gso {
        GsoType::None => {
            if header.flags() & FLAG_NEEDS_CSUM != 0 {
                let _ = complete_checksum(
                    &mut packet,
                    usize::from(header.csum_start()),
                    usize::from(header.csum_offset()),
                );
            }
        }
        _ => {
            let Ok(plan) = Split::plan(&packet, gso, gso_size, MAX_SEGMENTS) else {
                return;
            };
            assert!((1..=MAX_SEGMENTS).contains(&plan.count));
            let header_len = plan.transport.header_len();
            // The worker sizes each segment's header room once, by this bound.
            assert!(
                header_len <= MAX_HEADER_LEN,
                "{header_len} bytes of headers"
            );
            let mut payloads = Vec::with_capacity(packet.len());
            let mut segment = Vec::new();
            for i in 0..plan.count {
                plan.segment_into(&packet, i, &mut segment);
                assert_eq!(segment.len(), plan.segment_len(i));
                assert_valid(&segment);
                let payload = &segment[header_len..];
                assert!(payload.len() <= usize::from(gso_size));
                if i + 1 < plan.count {
                    assert_eq!(
                        payload.len(),
                        usize::from(gso_size),
                        "only the last is short"
                    );
                }
                payloads.extend_from_slice(payload);
            }
            assert!(
                payloads == packet[header_len..],
                "payloads tile the original"
            );
        }
    }
});
