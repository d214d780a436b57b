//! The tools crate's binaries (`tunload`, `simpletun`, the `e2e` orchestrator), for the suites and
//! benches of other packages.
//!
//! Cargo gives a test or bench the path of its own package's binaries only
//! (`CARGO_BIN_EXE_<name>`), and builds no other package's. So the first call in a process runs
//! `cargo build --bins` for `tools/` in the profile and the target directory of the calling
//! executable: a no-op when they are fresh, and what makes `cargo test --release --test netns`
//! run the `tunload` of the tree it was built from, never a stale one. Cargo holds its build lock
//! only while it compiles, so the nested build can share the target directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The tools crate's manifest, from this crate's place in the workspace (`crates/testkit`).
const TOOLS_MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/Cargo.toml");

/// The path of the tools crate's binary `name`, built (once per process) if it is missing or
/// stale. Panics, with cargo's own messages above, if it cannot be built.
pub fn tool(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(build_tools)
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} has no binary {name} after building the tools crate",
        dir.display()
    );
    path
}

/// Builds every binary of the tools crate where the running executable's own profile puts its
/// binaries; returns that directory.
fn build_tools() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("the running executable: {e}"))?;
    let (target_dir, profile) = target_and_profile(&me)
        .ok_or_else(|| format!("{} is not in a cargo target directory", me.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--bins", "--manifest-path", TOOLS_MANIFEST])
        .arg("--target-dir")
        .arg(&target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let status = build
        .status()
        .map_err(|e| format!("running cargo to build the tools ({TOOLS_MANIFEST}): {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the tools crate ({TOOLS_MANIFEST}) failed: {status}"
        ));
    }
    Ok(target_dir.join(profile))
}

/// The target directory and the profile directory's name of an executable cargo built: a test or
/// bench lives in `<target>/<profile>/deps/`, an example in `<target>/<profile>/examples/`, a
/// binary in `<target>/<profile>/`. The `test` and `bench` profiles build into `debug` and
/// `release`, whose names are also the `dev` and `release` profiles' directories.
fn target_and_profile(executable: &Path) -> Option<(PathBuf, String)> {
    let mut dir = executable.parent()?;
    if matches!(dir.file_name()?.to_str()?, "deps" | "examples") {
        dir = dir.parent()?;
    }
    let profile = dir.file_name()?.to_str()?.to_string();
    Some((dir.parent()?.to_path_buf(), profile))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_benches_and_binaries_find_their_profile_and_target_directory() {
        for (executable, target, profile) in [
            (
                "/w/target/release/deps/netns-0123abcd",
                "/w/target",
                "release",
            ),
            ("/w/target/debug/deps/cli-0123abcd", "/w/target", "debug"),
            ("/elsewhere/perf/tunfwd-demo", "/elsewhere", "perf"),
            ("/w/target/release/examples/x", "/w/target", "release"),
        ] {
            assert_eq!(
                target_and_profile(Path::new(executable)),
                Some((PathBuf::from(target), profile.to_string())),
                "{executable}"
            );
        }
    }
}
