//! Random numbers from the kernel (getrandom(2)), for what must not be guessed: path MTU probe
//! nonces, temporary file names. Not a hot path.

use std::io;

/// Fills `out` from the kernel's random number generator, blocking only until it is seeded.
pub fn fill(out: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < out.len() {
        let rest = &mut out[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

/// A random 64-bit number that is never 0 (0 means "none" where nonces are kept).
pub fn nonzero_u64() -> io::Result<u64> {
    loop {
        let mut bytes = [0u8; 8];
        fill(&mut bytes)?;
        let n = u64::from_ne_bytes(bytes);
        if n != 0 {
            return Ok(n);
        }
    }
}

/// A nonce for a path MTU probe or an advertisement: a fresh random number, or 0 if the kernel
/// gave none. 0 fails closed: it is "none", which no acknowledgement matches
/// (`relay::plpmtud::SharedPath::post_ack`, `relay::entropy::SourcePorts::post_ack`), so the
/// probe counts as lost and the advertisement goes unanswered; a constant in its place would
/// be a nonce that any forger could acknowledge.
pub fn nonce_or_none() -> u64 {
    nonce_from(nonzero_u64())
}

fn nonce_from(random: io::Result<u64>) -> u64 {
    random.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_the_kernel_did_not_give_is_none() {
        assert_eq!(
            nonce_from(Err(io::Error::from_raw_os_error(libc::ENOSYS))),
            0
        );
        assert_eq!(nonce_from(Ok(7)), 7);
        assert_ne!(nonce_or_none(), 0, "getrandom works here");
    }

    #[test]
    fn numbers_differ_and_are_not_zero() {
        let a = nonzero_u64().unwrap();
        let b = nonzero_u64().unwrap();
        assert_ne!(a, 0);
        assert_ne!(a, b, "two 64-bit draws collided");
        let mut big = [0u8; 1000];
        fill(&mut big).unwrap();
        assert!(big.iter().any(|b| *b != 0));
    }
}
