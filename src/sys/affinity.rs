//! CPU affinity: pinning the calling thread to one CPU, and saying why when the kernel refuses.
//!
//! `core_affinity::set_for_current` makes the sched_setaffinity(2) call but returns only a bool,
//! so the errno is read here right after it, before any other system call can overwrite it, and
//! the thread's affinity is then read back (sched_getaffinity(2)) to confirm that it is the one
//! CPU asked for. The usual refusal is EINVAL: the mask holds no CPU the thread may use, because
//! the CPU is outside the thread's cgroup cpuset or offline (kernel/sched/core.c
//! `__sched_setaffinity` intersects the mask with `cpuset_cpus_allowed`).

use nix::sched::{CpuSet, sched_getaffinity};
use nix::unistd::Pid;
use std::io;

/// Pins the calling thread to `cpu` and confirms it. The error is the kernel's (EINVAL for a CPU
/// the thread may not use), or, should the affinity read back differ, a description of it.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // A CPU past what a `cpu_set_t` holds (CPU_SETSIZE, sched_setaffinity(2)) cannot be named,
    // and `core_affinity` would index past its set.
    if cpu >= CpuSet::count() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        // Nothing ran between the failed sched_setaffinity and here: errno is still its.
        return Err(io::Error::last_os_error());
    }
    let allowed = sched_getaffinity(Pid::from_raw(0)).map_err(io::Error::from)?;
    let on: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    if on == [cpu] {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "the thread's affinity reads back as CPUs {on:?}, not CPU {cpu} alone"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a thread of its own, so that the test thread keeps its affinity. No root needed: a
    /// thread may narrow its own affinity, and is refused a CPU outside its allowed set.
    #[test]
    fn a_thread_is_pinned_to_an_allowed_cpu_and_refused_another_with_einval() {
        std::thread::spawn(|| {
            let allowed = sched_getaffinity(Pid::from_raw(0)).unwrap();
            let first = (0..CpuSet::count())
                .find(|&c| allowed.is_set(c).unwrap())
                .expect("some CPU is allowed");
            pin_current_thread(first).unwrap();
            let beyond = CpuSet::count() - 1;
            if !allowed.is_set(beyond).unwrap() {
                let e = pin_current_thread(beyond).unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
            }
            let e = pin_current_thread(CpuSet::count()).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        })
        .join()
        .unwrap();
    }
}
