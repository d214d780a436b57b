//! SIGINT/SIGTERM as values rather than handlers: the main thread blocks them before any worker
//! exists (so every thread inherits the mask) and then waits for them with a timeout, which doubles
//! as the stats interval. No async-signal-safety puzzles, no self-pipe.

use super::Error;
use std::io;
use std::time::Duration;

pub struct Signals {
    set: libc::sigset_t,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signals {
    /// Blocks SIGINT and SIGTERM on the calling thread. Call before spawning workers.
    pub fn block() -> Result<Signals, Error> {
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; the calls only write to it or read it.
        let ret = unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
        };
        if ret != 0 {
            return Err(Error::Signals(io::Error::from_raw_os_error(ret)));
        }
        Ok(Signals { set })
    }

    /// Waits up to `timeout` for SIGINT or SIGTERM.
    pub fn wait(&self, timeout: Duration) -> Option<Signal> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `set` was initialised in `block`; a null info pointer is allowed.
        let signal = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
        match signal {
            libc::SIGINT => Some(Signal::Interrupt),
            libc::SIGTERM => Some(Signal::Terminate),
            _ => None, // EAGAIN (timeout) or EINTR
        }
    }
}
