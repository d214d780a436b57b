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

#[cfg(test)]
mod tests {
    use super::*;

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
