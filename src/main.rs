//! `tunfwd`: parse arguments into a validated `Config`, then `tunfwd::run` it: set up the device
//! and sockets, run one worker per queue, report.
//!
//! The main thread owns everything that is not the data path: setup, the switch to `--user`, the
//! stats snapshots the workers send (merged there, printed, written as JSON, handed to the metrics
//! server), the service manager's notifications, and shutdown (`src/run.rs`). Workers never wait
//! on it.

use clap::Parser;
use nix::unistd::{Group, User};
use std::net::ToSocketAddrs;
use std::process::ExitCode;
use tunfwd::{Account, Accounts, Args};

fn main() -> ExitCode {
    // A value clap refuses is one line naming its option, exit status 2, like what `validate`
    // refuses; help, version and the other usage errors are clap's own to print.
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => match tunfwd::value_error(&e) {
            Some(refusal) => {
                eprintln!("tunfwd: {refusal}");
                return ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    let online: Vec<usize> = core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default();
    let resolve = |host: &str, port: u16| {
        (host, port)
            .to_socket_addrs()
            .map(|found| found.collect())
            .map_err(|e| e.to_string())
    };
    let config = match args.validate(&online, resolve, &SystemAccounts) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tunfwd: {e}");
            return ExitCode::from(2);
        }
    };
    match tunfwd::run(&config) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tunfwd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The system's user database (NSS), for `--user` and `--group`.
struct SystemAccounts;

impl Accounts for SystemAccounts {
    fn user(&self, name: &str) -> Result<Option<Account>, String> {
        User::from_name(name)
            .map(|found| {
                found.map(|u| Account {
                    uid: u.uid.as_raw(),
                    primary_gid: u.gid.as_raw(),
                })
            })
            .map_err(|e| e.to_string())
    }

    fn group(&self, name: &str) -> Result<Option<u32>, String> {
        Group::from_name(name)
            .map(|found| found.map(|g| g.gid.as_raw()))
            .map_err(|e| e.to_string())
    }
}
