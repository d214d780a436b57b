//! The byte stream `tcp-send` sends and `tcp-sink` checks: position-addressed, 8 bytes per
//! position, a SplitMix64 hash of the stream's seed and the word index. The sink regenerates it
//! and finds the first wrong byte, whatever the read boundaries.
//!
//! The word loop is where the time goes, so it handles a u64 at a time instead of byte by byte:
//! the sink checks every byte of multi-GB streams, and a slow check would make the load tool, not
//! the tunnel, the bottleneck.

/// The pattern's word `word` of stream `seed`.
fn word_bytes(seed: u64, word: u64) -> [u8; 8] {
    let mut z = seed.wrapping_add(word.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).to_le_bytes()
}

/// The pattern's word as one little-endian u64.
fn word(seed: u64, word: u64) -> u64 {
    u64::from_le_bytes(word_bytes(seed, word))
}

/// The pattern's byte at stream offset `at`.
fn byte(seed: u64, at: u64) -> u8 {
    word_bytes(seed, at / 8)[(at % 8) as usize]
}

/// The bytes from stream offset `offset` up to the next multiple of 8, at most `len`: the head a
/// span is split at, before its whole words and its tail.
fn head_len(offset: u64, len: usize) -> usize {
    (((8 - offset % 8) % 8) as usize).min(len)
}

/// Fills `out` with the pattern starting at stream offset `offset`.
pub fn fill(seed: u64, offset: u64, out: &mut [u8]) {
    let head = head_len(offset, out.len());
    for (i, b) in out[..head].iter_mut().enumerate() {
        *b = byte(seed, offset + i as u64);
    }
    let first_word = (offset + head as u64) / 8;
    let total = out.len();
    let mut words = out[head..].chunks_exact_mut(8);
    for (k, chunk) in (&mut words).enumerate() {
        chunk.copy_from_slice(&word(seed, first_word + k as u64).to_le_bytes());
    }
    let tail = words.into_remainder();
    let tail_at = offset + (total - tail.len()) as u64;
    for (i, b) in tail.iter_mut().enumerate() {
        *b = byte(seed, tail_at + i as u64);
    }
}

/// The stream offset of the first byte of `data` (which starts at `offset`) that breaks the
/// pattern.
pub fn first_mismatch(seed: u64, offset: u64, data: &[u8]) -> Option<u64> {
    let byte_check = |start: usize, bytes: &[u8]| -> Option<u64> {
        bytes.iter().enumerate().find_map(|(i, b)| {
            let at = offset + (start + i) as u64;
            (*b != byte(seed, at)).then_some(at)
        })
    };
    let head = head_len(offset, data.len());
    if let Some(at) = byte_check(0, &data[..head]) {
        return Some(at);
    }
    let first_word = (offset + head as u64) / 8;
    let words = data[head..].chunks_exact(8);
    let tail_start = data.len() - words.remainder().len();
    for (k, chunk) in words.enumerate() {
        let got = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        if got != word(seed, first_word + k as u64) {
            return byte_check(head + 8 * k, chunk);
        }
    }
    byte_check(tail_start, &data[tail_start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_position_addressed_and_mismatches_are_located() {
        let mut whole = vec![0u8; 1000];
        fill(7, 0, &mut whole);
        let mut part = vec![0u8; 333];
        fill(7, 101, &mut part);
        assert_eq!(&whole[101..434], &part[..]);
        assert_eq!(first_mismatch(7, 0, &whole), None);
        assert_eq!(first_mismatch(7, 101, &part), None);
        part[50] ^= 1;
        assert_eq!(first_mismatch(7, 101, &part), Some(151));
        assert!(
            first_mismatch(8, 0, &whole).is_some(),
            "another seed is another stream"
        );
    }
}
