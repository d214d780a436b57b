//! The binary's contract with operators on bad input: exit status 2 and one line naming the option.
//! Runs without root: validation happens before any device or socket is touched.

use std::path::Path;
use std::process::Command;
use tunfwd_testkit::testbed::run_to_exit;

fn run(args: &[&str]) -> (Option<i32>, String) {
    run_to_exit(Path::new(env!("CARGO_BIN_EXE_tunfwd")), args)
}

#[test]
fn invalid_values_exit_2_with_one_line_naming_the_option() {
    let cases: &[(&[&str], &str)] = &[
        (&["--peer", "198.18.0.2"], "--peer"),
        (&["--peer", "198.18.0.2:1", "--queues", "0"], "--queues"),
        (&["--peer", "198.18.0.2:1", "--queues", "300"], "--queues"),
        (
            &["--peer", "198.18.0.2:1", "--dev", "much-too-long-name"],
            "--dev",
        ),
        (&["--peer", "198.18.0.2:1", "--mtu", "100"], "--mtu"),
        (
            &[
                "--peer",
                "198.18.0.2:1",
                "--mtu",
                "1200",
                "--address",
                "2001:2::1/64",
            ],
            "--mtu",
        ),
        (&["--peer", "198.18.0.2:1", "--cpus", "4096"], "--cpus"),
        (
            &["--peer", "198.18.0.2:1", "--address", "198.19.0.1/40"],
            "--address",
        ),
        (&["--peer", "no-such-host.invalid:1"], "--peer"),
        (
            &["--peer", "198.18.0.2:1", "--buffer-memory", "lots"],
            "--buffer-memory",
        ),
    ];
    for (args, option) in cases {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("tunfwd: {option}:")),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn syntax_errors_exit_2_and_help_documents_defaults() {
    let (code, _) = run(&["--queues", "4"]);
    assert_eq!(code, Some(2), "--peer is required");
    let out = Command::new(env!("CARGO_BIN_EXE_tunfwd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--peer",
        "--listen",
        "55555",
        "tunfwd0",
        "online CPUs",
        "--stats-json",
        "1472",
        "--ring-depth",
        "--buffer-memory",
        "[default: 1M]",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
    let version = Command::new(env!("CARGO_BIN_EXE_tunfwd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("tunfwd "));
}

/// WireGuard mode takes its peers from WireGuard's configuration: `--peer` with it is refused,
/// as is `--config` without it, and outer flow entropy with it, all with exit status 2.
#[test]
fn wireguard_mode_refuses_peer_and_config_needs_it() {
    let (status, stderr) = run(&["--wireguard", "--peer", "198.18.0.2:51820"]);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(
        stderr.contains("--peer") && stderr.contains("--wireguard"),
        "{stderr}"
    );
    let (status, stderr) = run(&["--config", "/nonexistent.conf", "--dev", "wg0"]);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("--wireguard"), "{stderr}");
    let (status, stderr) = run(&["--dev", "wg0"]);
    assert_eq!(status, Some(2), "no --peer and no --wireguard: {stderr}");
    // Outer entropy is on by default in raw mode but off in WireGuard mode: asked for nothing,
    // nothing is refused for it.
    let (_, stderr) = run(&[
        "--wireguard",
        "--config",
        "/nonexistent.conf",
        "--dev",
        "wg0",
    ]);
    assert!(
        !stderr.contains("--entropy") && !stderr.contains("--srcport"),
        "{stderr}"
    );
    // A WireGuard peer roams to each datagram's source: no extra source ports in this mode.
    for (args, option) in [
        (&["--wireguard", "--entropy", "auto"][..], "--entropy"),
        (&["--wireguard", "--srcport", "40000", "40099"], "--srcport"),
    ] {
        let (status, stderr) = run(args);
        assert_eq!(status, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(option), "{args:?}: {stderr}");
    }
}
