//! `cargo bench --bench e2e`: the end-to-end comparison of tunfwd with the kernel's VXLAN, the
//! bare veth and the simpletun baseline, on the namespace testbed.
//!
//! The orchestrator is a tool, not a bench: it needs root, installs iperf3 and ping when they are
//! missing, and writes its report to `bench-results/`. It lives in the tools crate
//! (`tools/src/bin/e2e.rs`, whose doc lists the scenarios, the systems and the `BENCH_*` knobs).
//! This entry point builds the tools (`tunload`, `simpletun`, `e2e`) beside the `tunfwd` cargo
//! built for this bench, and runs the orchestrator with this process's environment.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS; // `cargo bench -- --list` and test harness probes.
    }
    if !tunfwd_testkit::testbed::is_root() {
        println!(
            "e2e benches: skipped, they need root (network namespaces and TUN devices): run `sudo cargo bench --bench e2e`"
        );
        return ExitCode::SUCCESS;
    }
    let orchestrator = tunfwd_testkit::binaries::tool("e2e");
    let tunfwd = std::path::Path::new(env!("CARGO_BIN_EXE_tunfwd"));
    assert_eq!(
        tunfwd.parent(),
        orchestrator.parent(),
        "the orchestrator runs the tunfwd beside it"
    );
    match Command::new(&orchestrator).status() {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("e2e benches: {} failed: {status}", orchestrator.display());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("e2e benches: cannot run {}: {e}", orchestrator.display());
            ExitCode::FAILURE
        }
    }
}
