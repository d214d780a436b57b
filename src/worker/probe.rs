//! Asks this kernel what it lets this process do with io_uring (see `crate::engine`).

use crate::engine::Features;
use crate::ring;
use io_uring::{Probe, opcode};

/// Asks this kernel: sets up a small ring (on this thread) and lists its opcodes.
pub fn probe() -> Features {
    let ring = match ring::build(8, 16) {
        Ok(ring) => ring,
        Err(e) => return Features::no_io_uring(e.raw_os_error().unwrap_or(libc::ENOSYS)),
    };
    let mut probe = Probe::new();
    if ring.submitter().register_probe(&mut probe).is_err() {
        return Features::default();
    }
    let has = |code| probe.is_supported(code);
    Features {
        setup_errno: None,
        probed: true,
        fast_poll: ring.params().is_feature_fast_poll(),
        kernel: nix::sys::utsname::uname()
            .ok()
            .and_then(|u| crate::engine::kernel_version(&u.release().to_string_lossy())),
        read_multishot: has(opcode::ReadMulti::CODE),
        single_shot: [
            opcode::Read::CODE,
            opcode::Writev::CODE,
            opcode::SendMsg::CODE,
            opcode::RecvMsg::CODE,
            opcode::Timeout::CODE,
            opcode::AsyncCancel::CODE,
        ]
        .into_iter()
        .all(has),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, choose};

    #[test]
    fn this_kernel_runs_every_engine() {
        // The suite runs on Linux 6.18 with io_uring allowed (the namespace tests force each
        // engine); if that ever changes, this says so first.
        let f = probe();
        assert_eq!(f.setup_errno, None, "io_uring is refused here: {f:?}");
        for engine in Engine::ALL {
            assert!(choose(Some(engine), &f).is_ok(), "{engine}: {f:?}");
        }
    }
}
