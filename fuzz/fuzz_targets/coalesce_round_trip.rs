//! Coalescing, checked by its inverse. A UDP GRO buffer (built from the fuzz bytes by
//! `tunfwd_fuzz::gro::decode`, mostly as runs of valid segments of one flow with changes mixed in)
//! is cut at the stride and validated as the worker does (`validate`, once per datagram), grouped
//! by `plan_segments`, and each run of two or more is written as the worker writes it:
//! `finish_segments`' rewritten head, then each later segment after its headers. With the partial checksum completed, as the kernel would
//! (include/linux/skbuff.h, `CHECKSUM_PARTIAL`), that packet must be valid, and splitting it again
//! with the virtio header's GSO type and size must give back exactly the segments that went in:
//! every rule the coalescer enforces is there so that this round trip holds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tunfwd::fuzzing::vnet::{self, FLAG_NEEDS_CSUM, GsoType, VnetHeader};
use tunfwd::fuzzing::{
    MAX_RUN_SEGMENTS, Policy, Segment, Split, complete_checksum, finish_segments, plan_segments,
    validate,
};
use tunfwd_fuzz::{assert_valid, gro, stats_enabled};

static INPUTS: AtomicU64 = AtomicU64::new(0);
static INPUTS_WITH_MERGE: AtomicU64 = AtomicU64::new(0);
static SEGMENTS: AtomicU64 = AtomicU64::new(0);
static RUNS: AtomicU64 = AtomicU64::new(0);
static MERGED_RUNS: AtomicU64 = AtomicU64::new(0);
static MERGED_SEGMENTS: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let case = gro::decode(data);
    let mut buffer = case.buffer;
    // Cut at the stride and keep what is an IP packet, as the worker's `on_udp_recv` does.
    let mut segments = Vec::new();
    for (index, piece) in buffer.chunks(case.stride).enumerate() {
        if let Ok(transport) = validate(piece) {
            segments.push(Segment {
                at: index * case.stride,
                len: piece.len(),
                transport,
            });
        }
    }
    let original = buffer.clone();
    let mut runs = Vec::new();
    plan_segments(&buffer, &segments, Policy::ALL, &mut runs);

    let mut next = 0;
    let mut merged_runs = 0;
    for run in &runs {
        assert_eq!(run.first, next, "runs in order, without gaps: {runs:?}");
        assert!((1..=MAX_RUN_SEGMENTS).contains(&run.count), "{run:?}");
        next += run.count;
        let header = finish_segments(&mut buffer, &segments, *run);
        if run.count == 1 {
            assert_eq!(header, [0u8; vnet::LEN], "a run of one is written plain");
            let range = segments[run.first].range();
            assert_eq!(buffer[range.clone()], original[range], "left untouched");
            continue;
        }
        merged_runs += 1;
        MERGED_SEGMENTS.fetch_add(run.count as u64, Relaxed);
        let vnet = VnetHeader::new_checked(&header[..]).expect("a whole header");
        assert_eq!(vnet.flags(), FLAG_NEEDS_CSUM);
        let gso = vnet.gso_type();
        assert!(
            matches!(gso, GsoType::TcpV4 | GsoType::TcpV6 | GsoType::UdpL4),
            "{gso:?}"
        );
        let header_len = usize::from(vnet.hdr_len());

        // [head with rewritten headers][payload of each later segment], as the worker gathers.
        let mut merged = buffer[segments[run.first].range()].to_vec();
        for segment in &segments[run.first + 1..run.first + run.count] {
            merged.extend_from_slice(&buffer[segment.at + header_len..segment.at + segment.len]);
        }
        assert!(merged.len() <= 65535, "{} bytes", merged.len());
        complete_checksum(
            &mut merged,
            usize::from(vnet.csum_start()),
            usize::from(vnet.csum_offset()),
        )
        .expect("the checksum field is inside the packet");
        assert_valid(&merged);

        let plan = Split::plan(&merged, gso, vnet.gso_size(), MAX_RUN_SEGMENTS)
            .unwrap_or_else(|e| panic!("the merged packet does not split: {e:?}"));
        assert_eq!(plan.count, run.count, "as many segments out as in");
        let mut segment = Vec::new();
        for i in 0..plan.count {
            plan.segment_into(&merged, i, &mut segment);
            let input = &original[segments[run.first + i].range()];
            assert!(
                segment == input,
                "segment {i} of {run:?} differs after the round trip\n in:  {input:02x?}\n out: {segment:02x?}"
            );
        }
    }
    assert_eq!(next, segments.len(), "every segment in exactly one run");

    if stats_enabled() {
        let inputs = INPUTS.fetch_add(1, Relaxed) + 1;
        SEGMENTS.fetch_add(segments.len() as u64, Relaxed);
        RUNS.fetch_add(runs.len() as u64, Relaxed);
        MERGED_RUNS.fetch_add(merged_runs, Relaxed);
        if merged_runs > 0 {
            INPUTS_WITH_MERGE.fetch_add(1, Relaxed);
        }
        if inputs.is_multiple_of(100_000) {
            let with_merge = INPUTS_WITH_MERGE.load(Relaxed);
            eprintln!(
                "stats: {inputs} inputs, {with_merge} ({:.1}%) with a run of 2+; {} segments, \
                 {} runs, {} runs of 2+ holding {} segments",
                100.0 * with_merge as f64 / inputs as f64,
                SEGMENTS.load(Relaxed),
                RUNS.load(Relaxed),
                MERGED_RUNS.load(Relaxed),
                MERGED_SEGMENTS.load(Relaxed),
            );
        }
    }
});
