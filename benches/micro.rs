//! Micro-benches of the pure code, with criterion: checksum by length, IP validation, the flow
//! hash, and splitting and coalescing a 64 KB TCP super-packet (per super-packet and, through
//! `Throughput::Elements`, per segment). Run: `cargo bench --bench micro`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tunfwd::bench::{
    GsoType, IpPacket, Policy, Run, Segment, Split, Sum, finish_segments, flow_index,
    plan_segments, validate,
};
use tunfwd_testkit::packets;

const MSS: u16 = 1380;

/// An IPv4/TCP super-packet of `payload` bytes, from the test kit's builder.
fn super_packet(payload: usize) -> Vec<u8> {
    packets::build(&packets::Spec {
        payload_len: payload,
        ..packets::Spec::default()
    })
}

fn checksum(c: &mut Criterion) {
    let data: Vec<u8> = (0..65535u32).map(|i| (i * 31) as u8).collect();
    let mut group = c.benchmark_group("checksum_by_length");
    for len in [64usize, 1500, 9000, 65535] {
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, &len| {
            b.iter(|| Sum::of(black_box(&data[..len])))
        });
    }
    group.finish();
}

fn parse_and_steer(c: &mut Criterion) {
    let packet = super_packet(1380);
    let mut group = c.benchmark_group("per_packet_pure");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ip_validate", |b| {
        b.iter(|| IpPacket::new_checked(black_box(&packet[..])).is_ok())
    });
    // What the worker does per received datagram: validation and the transport, in one pass.
    group.bench_function("ip_validate_and_transport", |b| {
        b.iter(|| validate(black_box(&packet[..])))
    });
    group.bench_function("flow_index_4_workers", |b| {
        b.iter(|| flow_index(black_box(&packet), 4))
    });
    group.finish();
}

fn split_and_coalesce(c: &mut Criterion) {
    let packet = super_packet(usize::from(MSS) * 47);
    let plan = Split::plan(&packet, GsoType::TcpV4, MSS, 128).unwrap();
    let mut headers = vec![0u8; 128];
    let mut group = c.benchmark_group("split_64k_tcp_super_packet");
    group.throughput(Throughput::Elements(plan.count as u64));
    group.bench_function("segments", |b| {
        b.iter(|| {
            for i in 0..plan.count {
                black_box(plan.segment(black_box(&packet), i, &mut headers));
            }
        })
    });
    // The copying alternative to the worker's iovec gather: every segment written out whole,
    // back to back, as a contiguous GSO send buffer would hold them.
    let header_len = plan.transport.header_len();
    let mut copied = Vec::with_capacity(packet.len() + 47 * 128);
    group.bench_function("segments_copied_contiguous", |b| {
        b.iter(|| {
            copied.clear();
            for i in 0..plan.count {
                let at = copied.len();
                copied.resize(at + header_len, 0);
                let payload = plan.segment(black_box(&packet), i, &mut copied[at..]);
                copied.extend_from_slice(&packet[payload]);
            }
            black_box(&copied);
        })
    });
    group.finish();

    // The segments, back to back as a GRO buffer holds them.
    let mut buffer = Vec::new();
    let mut segments = Vec::new();
    let mut one = Vec::new();
    for i in 0..plan.count {
        plan.segment_into(&packet, i, &mut one);
        segments.push(Segment {
            at: buffer.len(),
            len: one.len(),
            transport: validate(&one).unwrap(),
        });
        buffer.extend_from_slice(&one);
    }
    let mut runs: Vec<Run> = Vec::with_capacity(64);
    let mut group = c.benchmark_group("coalesce_gro_buffer");
    group.throughput(Throughput::Elements(segments.len() as u64));
    // finish_segments rewrites the head's headers in place; restore them after each iteration.
    let head = buffer[segments[0].range()].to_vec();
    // The segments validated once, on arrival, as the worker keeps them: plan and finish only.
    group.bench_function("plan_and_finish_47_segments", |b| {
        b.iter(|| {
            plan_segments(&buffer, &segments, Policy::ALL, &mut runs);
            assert_eq!(runs.len(), 1);
            for run in &runs {
                black_box(finish_segments(&mut buffer, &segments, *run));
            }
            buffer[..head.len()].copy_from_slice(&head);
        })
    });
    // The whole receive path's pure work: validate each datagram, then plan and finish.
    let mut validated = Vec::with_capacity(segments.len());
    group.bench_function("validate_plan_and_finish_47_segments", |b| {
        b.iter(|| {
            validated.clear();
            for s in &segments {
                let transport = validate(black_box(&buffer[s.range()])).unwrap();
                validated.push(Segment { transport, ..*s });
            }
            plan_segments(&buffer, &validated, Policy::ALL, &mut runs);
            assert_eq!(runs.len(), 1);
            for run in &runs {
                black_box(finish_segments(&mut buffer, &validated, *run));
            }
            buffer[..head.len()].copy_from_slice(&head);
        })
    });
    group.finish();
}

criterion_group!(benches, checksum, parse_and_steer, split_and_coalesce);
criterion_main!(benches);
