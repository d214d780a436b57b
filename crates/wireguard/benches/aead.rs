//! Which ChaCha20-Poly1305 should carry the data path: `ring`, `aws-lc-rs` or RustCrypto's
//! `chacha20poly1305`, measured on this CPU rather than assumed.
//!
//! Each group is named after the crate; each row seals or opens one payload size the way
//! `Keypair` does (in place, empty associated data, a 96-bit nonce of four zero bytes and the
//! little-endian counter; wireguard.com/protocol, "Subsequent Messages: Exchange of Data Packets").
//! `65000` is one TSO-sized segment cut into 1420-byte datagrams, each sealed (or opened) on its
//! own, which is what the relay does with a super-packet. The open rows copy the ciphertext back
//! into the working buffer before every open (a memcpy the size of the payload), because opening
//! in place destroys it; the seal rows re-seal the same buffer.
//!
//! The clock is the benchmarking thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time:
//! on a shared 2-core machine, wall time also counts the moments other processes hold the core,
//! and the question here is what one core's worth of AEAD costs. `AEAD_BENCH_CLOCK=wall`
//! switches to criterion's wall clock.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput};
use nix::time::{ClockId, clock_gettime};

const KEY: [u8; 32] = [0x42; 32];
const TAG_LEN: usize = 16;
const DATAGRAM_PAYLOAD: usize = 1420;
const SIZES: [usize; 3] = [64, 1420, 65000];

/// The datagram lengths that a payload of `total` bytes is cut into.
fn datagrams(total: usize) -> impl Iterator<Item = usize> {
    (0..total.div_ceil(DATAGRAM_PAYLOAD))
        .map(move |i| DATAGRAM_PAYLOAD.min(total - i * DATAGRAM_PAYLOAD))
}

fn nonce_bytes(counter: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    nonce
}

/// One AEAD under test: seal a buffer in place and return the tag; open `ciphertext || tag`
/// in place.
trait Aead {
    fn seal(&self, counter: u64, in_out: &mut [u8]) -> [u8; TAG_LEN];
    fn open(&self, counter: u64, in_out_tag: &mut [u8]) -> bool;
}

struct Ring(ring::aead::LessSafeKey);
impl Aead for Ring {
    fn seal(&self, counter: u64, in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce_bytes(counter));
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), in_out)
            .expect("seal");
        tag.as_ref().try_into().expect("16-byte tag")
    }
    fn open(&self, counter: u64, in_out_tag: &mut [u8]) -> bool {
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce_bytes(counter));
        self.0
            .open_in_place(nonce, ring::aead::Aad::empty(), in_out_tag)
            .is_ok()
    }
}

struct AwsLc(aws_lc_rs::aead::LessSafeKey);
impl Aead for AwsLc {
    fn seal(&self, counter: u64, in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce_bytes(counter));
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::empty(), in_out)
            .expect("seal");
        tag.as_ref().try_into().expect("16-byte tag")
    }
    fn open(&self, counter: u64, in_out_tag: &mut [u8]) -> bool {
        let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce_bytes(counter));
        self.0
            .open_in_place(nonce, aws_lc_rs::aead::Aad::empty(), in_out_tag)
            .is_ok()
    }
}

struct RustCrypto(chacha20poly1305::ChaCha20Poly1305);
impl Aead for RustCrypto {
    fn seal(&self, counter: u64, in_out: &mut [u8]) -> [u8; TAG_LEN] {
        use chacha20poly1305::AeadInPlace;
        let tag = self
            .0
            .encrypt_in_place_detached(&nonce_bytes(counter).into(), &[], in_out)
            .expect("seal");
        tag.into()
    }
    fn open(&self, counter: u64, in_out_tag: &mut [u8]) -> bool {
        use chacha20poly1305::AeadInPlace;
        let (ciphertext, tag) = in_out_tag.split_at_mut(in_out_tag.len() - TAG_LEN);
        let tag = chacha20poly1305::Tag::clone_from_slice(tag);
        self.0
            .decrypt_in_place_detached(&nonce_bytes(counter).into(), &[], ciphertext, &tag)
            .is_ok()
    }
}

/// CPU time consumed by the calling thread.
struct ThreadCpuTime {
    wall: WallTime,
}

fn thread_cpu_now() -> Duration {
    let now = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("the thread CPU clock");
    Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32)
}

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_now()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu_now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Values are nanoseconds, as the wall clock's are, so its formatter fits.
        self.wall.formatter()
    }
}

fn bench_crate<M: Measurement>(c: &mut Criterion<M>, group_name: &str, aead: &dyn Aead) {
    let mut group = c.benchmark_group(group_name);
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let mut buffer = vec![0xa5u8; DATAGRAM_PAYLOAD + TAG_LEN];
        group.bench_function(BenchmarkId::new("seal", size), |b| {
            let mut counter = 0u64;
            b.iter(|| {
                for len in datagrams(size) {
                    let tag = aead.seal(counter, &mut buffer[..len]);
                    buffer[len..len + TAG_LEN].copy_from_slice(&tag);
                    counter += 1;
                }
                black_box(&buffer);
            })
        });

        // One sealed datagram per piece, opened in turn.
        let sealed: Vec<Vec<u8>> = datagrams(size)
            .enumerate()
            .map(|(i, len)| {
                let mut datagram = vec![0x5au8; len + TAG_LEN];
                let tag = aead.seal(i as u64, &mut datagram[..len]);
                datagram[len..].copy_from_slice(&tag);
                datagram
            })
            .collect();
        group.bench_function(BenchmarkId::new("open", size), |b| {
            b.iter(|| {
                for (i, datagram) in sealed.iter().enumerate() {
                    let working = &mut buffer[..datagram.len()];
                    working.copy_from_slice(datagram);
                    assert!(aead.open(i as u64, working));
                }
                black_box(&buffer);
            })
        });
    }
    group.finish();
}

/// `Keypair::seal_gather` as the relay calls it for a TSO segment: a 52-byte rewritten header
/// and a 1368-byte payload in two parts (copied into the datagram, sealed there in place), or
/// the same 1420 bytes in one part (sealed straight from it, out of place). The difference is
/// the copy's cost.
fn bench_keypair<M: Measurement>(c: &mut Criterion<M>) {
    let keypair = tunfwd_wireguard::Keypair::from_raw_keys(1, 2, KEY, KEY, 0);
    let mut group = c.benchmark_group("keypair");
    group.throughput(Throughput::Bytes(DATAGRAM_PAYLOAD as u64));
    let plaintext = vec![0x45u8; DATAGRAM_PAYLOAD];
    let (header, payload) = plaintext.split_at(52);
    let mut out = vec![0u8; DATAGRAM_PAYLOAD + 32];
    for (name, parts) in [
        ("two_parts", vec![header, payload]),
        ("one_part", vec![&plaintext[..]]),
    ] {
        group.bench_function(BenchmarkId::new(name, DATAGRAM_PAYLOAD), |b| {
            let mut counter = 0u64;
            b.iter(|| {
                let n = keypair
                    .seal_gather(counter, &parts, &mut out)
                    .expect("seal");
                counter += 1;
                black_box(&out[..n]);
            })
        });
    }
    group.finish();
}

fn aead<M: Measurement>(c: &mut Criterion<M>) {
    bench_keypair(c);

    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &KEY).expect("ring key"),
    );
    bench_crate(c, "ring", &Ring(ring_key));

    let aws_key = aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::CHACHA20_POLY1305, &KEY)
            .expect("aws-lc-rs key"),
    );
    bench_crate(c, "aws-lc-rs", &AwsLc(aws_key));

    use chacha20poly1305::KeyInit;
    let rustcrypto_key = chacha20poly1305::ChaCha20Poly1305::new(&KEY.into());
    bench_crate(c, "chacha20poly1305", &RustCrypto(rustcrypto_key));
}

fn main() {
    let base = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    if std::env::var("AEAD_BENCH_CLOCK").as_deref() == Ok("wall") {
        let mut criterion = base;
        aead(&mut criterion);
        criterion.final_summary();
    } else {
        let mut criterion = base.with_measurement(ThreadCpuTime { wall: WallTime });
        aead(&mut criterion);
        criterion.final_summary();
    }
}
