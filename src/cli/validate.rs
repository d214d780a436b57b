//! The rules between options, and the [`Config`] they make: [`Args::validate`]. Each option's
//! own form was checked as clap parsed it (`parse`); what is left needs several options together
//! or facts from the machine, which the caller passes in (the online CPUs, a resolver for the
//! peer's name, the user database). PURE.

use super::args::EntropyChoice;
use super::parse::{CpuList, PeerSpec};
use super::{Args, ConfigError, DEFAULT_PMTU_FLOOR, DEFAULT_PORT, MAX_QUEUES, bad};
use crate::engine::Engine;
use crate::offload::ecn::{Marking, OuterDscp};
use crate::relay::aqm;
use crate::wire::{Offloads, OuterFamily};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

/// The underlay MTU the default device MTU is made to fit.
const UNDERLAY_MTU: u32 = 1500;

/// A user account, as the system's user database has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub primary_gid: u32,
}

/// The user database (NSS, in production). Like `resolve` for the peer, the caller passes it in,
/// so that `--user` and `--group` are checked here and unit-tested without real accounts.
pub trait Accounts {
    /// The user called `name`; `Ok(None)` when there is none, `Err` when the lookup failed.
    fn user(&self, name: &str) -> Result<Option<Account>, String>;
    /// The gid of the group called `name`; `Ok(None)` when there is none.
    fn group(&self, name: &str) -> Result<Option<u32>, String>;
}

/// Who tunfwd becomes after setup (`--user`, `--group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    /// `--group`, or `None` for the user's primary group.
    pub group: Option<String>,
    pub gid: u32,
}

/// A validated configuration. Every field is in range; the device does not exist yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub peer: SocketAddr,
    pub listen: SocketAddr,
    pub device_name: String,
    pub queues: usize,
    /// The CPU for each worker, or `None` when pinning is off.
    pub worker_cpus: Option<Vec<usize>>,
    pub addresses: Vec<(IpAddr, u8)>,
    pub mtu: u32,
    pub stats_interval_secs: u64,
    pub stats_json: Option<PathBuf>,
    pub ring_depth: usize,
    /// The engine `--engine` forced; `None` for `auto`.
    pub engine: Option<Engine>,
    /// How long a worker keeps looking for work after handling some (`--busy-poll`).
    pub busy_poll: std::time::Duration,
    pub buffer_memory: usize,
    /// `--socket-buffer`, in bytes.
    pub socket_buffer: usize,
    pub tx_queue_len: u32,
    /// The offloads the operator allows; the kernel may still refuse some (probed at startup).
    pub offloads: Offloads,
    /// How the outer TOS / traffic class is made (`--tos`, `--no-ecn`).
    pub marking: Marking,
    /// The path MTU floor (`--pmtu-floor`), outer headers included.
    pub pmtu_floor: u32,
    /// The peer's hostname and port, when `--peer` named one, and how often to look it up again
    /// (`None`: never).
    pub peer_name: Option<(String, u16)>,
    pub peer_refresh: Option<std::time::Duration>,
    /// Where to serve Prometheus metrics.
    pub metrics: Option<SocketAddr>,
    /// The user to switch to after setup.
    pub run_as: Option<RunAs>,
    /// `--aqm`, `--aqm-target`, `--aqm-interval`.
    pub aqm: aqm::Settings,
    /// Outer flow entropy (`--entropy`, `--srcport`).
    pub entropy: Entropy,
    /// Set in WireGuard mode (`--wireguard`).
    pub wireguard: Option<WireguardOptions>,
}

/// Where a relay's outer flow entropy sends from (`relay::entropy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entropy {
    /// `--entropy off`: the listen port alone.
    Off,
    /// Ports the kernel picks, a few per worker.
    Ephemeral,
    /// `--srcport MIN MAX`.
    Range(u16, u16),
}

/// What `--wireguard` mode is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardOptions {
    /// `--config`: a `wg setconf` file to apply at startup.
    pub config_file: Option<PathBuf>,
}

/// What WireGuard adds to each datagram: its 16-byte header and 16-byte tag. The default MTU in
/// WireGuard mode leaves room for it (1500 - 48 - 32 = 1420, WireGuard's usual MTU).
pub const WIREGUARD_OVERHEAD: u32 = 32;

/// The address to use of those a peer's name resolved to. Once the relay runs (`of`, the
/// address in use): that one while the answer still holds it, so that a name with several
/// addresses does not move the tunnel at every lookup, else the first of its family. Before:
/// the first IPv4 one, else the first.
pub fn pick_peer(found: &[SocketAddr], of: Option<SocketAddr>) -> Option<SocketAddr> {
    match of {
        Some(current) if found.contains(&current) => Some(current),
        Some(current) => found
            .iter()
            .find(|a| a.is_ipv4() == current.is_ipv4())
            .copied(),
        None => found
            .iter()
            .find(|a| a.is_ipv4())
            .or(found.first())
            .copied(),
    }
}

/// Resolves `--user` and `--group`. Refuses uid 0 and gid 0: switching to root keeps everything,
/// which is never what `--user` was written for.
fn validate_run_as(
    user: &str,
    group: Option<&str>,
    accounts: &impl Accounts,
) -> Result<RunAs, ConfigError> {
    let valid_name = |name: &str| {
        !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == ':' || c == '/')
    };
    if !valid_name(user) {
        return Err(bad("--user", format!("'{user}' is not a user name")));
    }
    let account = accounts
        .user(user)
        .map_err(|why| bad("--user", format!("cannot look up user '{user}': {why}")))?
        .ok_or_else(|| bad("--user", format!("no user '{user}' on this system")))?;
    if account.uid == 0 {
        return Err(bad(
            "--user",
            format!("'{user}' is uid 0: switching to it would keep every privilege"),
        ));
    }
    let gid = match group {
        Some(name) => {
            if !valid_name(name) {
                return Err(bad("--group", format!("'{name}' is not a group name")));
            }
            let gid = accounts
                .group(name)
                .map_err(|why| bad("--group", format!("cannot look up group '{name}': {why}")))?
                .ok_or_else(|| bad("--group", format!("no group '{name}' on this system")))?;
            if gid == 0 {
                return Err(bad("--group", format!("'{name}' is gid 0 (root's group)")));
            }
            gid
        }
        None if account.primary_gid == 0 => {
            return Err(bad(
                "--user",
                format!(
                    "'{user}' has gid 0 (root's group) as its primary group; name another with --group"
                ),
            ));
        }
        None => account.primary_gid,
    };
    Ok(RunAs {
        user: user.to_string(),
        uid: account.uid,
        group: group.map(str::to_string),
        gid,
    })
}

impl Args {
    /// Validates the arguments. `online_cpus` is the machine's online CPU list; `resolve` turns a
    /// hostname and port into addresses (DNS, in production); `accounts` looks up `--user` and
    /// `--group`.
    pub fn validate(
        &self,
        online_cpus: &[usize],
        resolve: impl Fn(&str, u16) -> Result<Vec<SocketAddr>, String>,
        accounts: &impl Accounts,
    ) -> Result<Config, ConfigError> {
        let mut peer_name = None;
        let peer = match self.peer.clone() {
            // WireGuard mode has peers of its own; the relay's one peer is the unspecified
            // address, never sent to, and the outer family is IPv6 (its sockets are dual-stack).
            None if self.wireguard => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
            None => return Err(bad("--peer", "required (or --wireguard)")),
            Some(PeerSpec::Address(address)) => address,
            Some(PeerSpec::Name { host, port }) => {
                let found = resolve(&host, port)
                    .map_err(|why| bad("--peer", format!("cannot resolve '{host}': {why}")))?;
                // Prefer IPv4, as the default MTU and the examples do; any address will work.
                let chosen = pick_peer(&found, None)
                    .ok_or_else(|| bad("--peer", format!("'{host}' has no addresses")))?;
                peer_name = Some((host, port));
                chosen
            }
        };
        if peer.port() == 0 && !self.wireguard {
            return Err(bad("--peer", "port 0 is not a destination"));
        }
        if !self.wireguard && (peer.ip().is_unspecified() || peer.ip().is_multicast()) {
            return Err(bad(
                "--peer",
                format!("{} is not a unicast address", peer.ip()),
            ));
        }

        let listen = match self.listen {
            Some(listen) => {
                if listen.is_ipv4() != peer.is_ipv4() {
                    return Err(bad("--listen", "must be the same IP family as --peer"));
                }
                listen
            }
            // WireGuard mode: the port is the configuration's ListenPort (0: any), bound later.
            None if self.wireguard => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
            None if peer.is_ipv4() => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), DEFAULT_PORT),
            None => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), DEFAULT_PORT),
        };

        let queues = self.queues.unwrap_or(online_cpus.len().max(1));
        if !(1..=MAX_QUEUES).contains(&queues) {
            return Err(bad(
                "--queues",
                format!("{queues} is not between 1 and {MAX_QUEUES}"),
            ));
        }

        let worker_cpus = if self.no_pin {
            None
        } else {
            let pool = match &self.cpus {
                Some(CpuList(cpus)) => {
                    if let Some(unknown) = cpus.iter().find(|c| !online_cpus.contains(c)) {
                        return Err(bad(
                            "--cpus",
                            format!("CPU {unknown} is not online (online: {online_cpus:?})"),
                        ));
                    }
                    cpus.clone()
                }
                None => online_cpus.to_vec(),
            };
            if pool.is_empty() {
                return Err(bad("--cpus", "no CPUs to pin to (use --no-pin)"));
            }
            Some((0..queues).map(|q| pool[q % pool.len()]).collect())
        };

        let addresses = self.addresses.clone();

        // The outer headers as the peer is written: an IPv4-mapped peer counts as IPv6 here
        // (more overhead, a higher smallest path MTU), though its datagrams travel in IPv4
        // (`OuterFamily::of`).
        let family = if peer.is_ipv4() {
            OuterFamily::Ipv4
        } else {
            OuterFamily::Ipv6
        };
        let overhead = family.overhead() as u32;
        let wireguard_overhead = if self.wireguard {
            WIREGUARD_OVERHEAD
        } else {
            0
        };
        let mtu = self
            .mtu
            .unwrap_or(UNDERLAY_MTU - overhead - wireguard_overhead);
        let has_ipv6 = addresses.iter().any(|(a, _)| a.is_ipv6());
        let min_mtu = if has_ipv6 { 1280 } else { 576 };
        if !(min_mtu..=65535).contains(&mtu) {
            let why = if has_ipv6 {
                " (IPv6 needs at least 1280)"
            } else {
                ""
            };
            return Err(bad(
                "--mtu",
                format!("{mtu} is not between {min_mtu} and 65535{why}"),
            ));
        }

        let smallest = family.smallest_path_mtu() as u32;
        let largest = mtu + overhead;
        let pmtu_floor = self
            .pmtu_floor
            .unwrap_or(DEFAULT_PMTU_FLOOR.min(largest).max(smallest));
        if !(smallest..=largest.max(smallest)).contains(&pmtu_floor) {
            return Err(bad(
                "--pmtu-floor",
                format!(
                    "{pmtu_floor} is not between {smallest} and {largest} (the MTU plus the \
                     outer headers)"
                ),
            ));
        }
        let aqm = self.validate_aqm()?;
        let dscp = self.tos.unwrap_or(OuterDscp::Fixed(0));
        let run_as = self
            .user
            .as_deref()
            .map(|user| validate_run_as(user, self.group.as_deref(), accounts))
            .transpose()?;
        let entropy = match (self.entropy, self.srcport.as_deref()) {
            (Some(EntropyChoice::Off), Some(_)) => {
                return Err(bad(
                    "--srcport",
                    "names ports to send from, but --entropy is off",
                ));
            }
            // On by default in raw mode; WireGuard mode sends from its listen port only (below).
            (None, None) if self.wireguard => Entropy::Off,
            (None | Some(EntropyChoice::Auto), None) => Entropy::Ephemeral,
            (Some(EntropyChoice::Off), None) => Entropy::Off,
            (None | Some(EntropyChoice::Auto), Some(&[min, max])) => {
                if min > max {
                    return Err(bad("--srcport", format!("{min} {max}: MIN is above MAX")));
                }
                if (min..=max).contains(&listen.port()) {
                    return Err(bad(
                        "--srcport",
                        format!(
                            "{min}-{max} holds the listen port {}; the extra ports must be others",
                            listen.port()
                        ),
                    ));
                }
                Entropy::Range(min, max)
            }
            (None | Some(EntropyChoice::Auto), Some(other)) => {
                return Err(bad("--srcport", format!("takes MIN MAX, not {other:?}")));
            }
        };
        // A WireGuard peer answers the endpoint its last authenticated datagram came from, so
        // datagrams from extra source ports would move its endpoint off the listen port.
        if self.wireguard && entropy != Entropy::Off {
            let option = if self.srcport.is_some() {
                "--srcport"
            } else {
                "--entropy"
            };
            return Err(bad(
                option,
                "WireGuard mode sends from its listen port only (a WireGuard peer roams to \
                 the source of each datagram)",
            ));
        }

        Ok(Config {
            peer,
            listen,
            device_name: self.dev.clone(),
            queues,
            worker_cpus,
            addresses,
            mtu,
            stats_interval_secs: self.stats_interval,
            stats_json: self.stats_json.clone(),
            ring_depth: self.ring_depth,
            engine: self.engine.engine(),
            busy_poll: std::time::Duration::from_micros(self.busy_poll),
            buffer_memory: self.buffer_memory,
            socket_buffer: self.socket_buffer,
            tx_queue_len: self.tx_queue_len,
            offloads: Offloads {
                tso: !(self.no_offload || self.no_tso),
                uso: !(self.no_offload || self.no_uso),
                udp_gso: !(self.no_offload || self.no_udp_gso),
                udp_gro: !(self.no_offload || self.no_udp_gro),
            },
            marking: Marking {
                dscp,
                // WireGuard peers neither set nor read the outer ECN bits as tunfwd does.
                ecn: !self.no_ecn && !self.wireguard,
            },
            pmtu_floor,
            peer_refresh: (peer_name.is_some() && self.peer_refresh > 0)
                .then(|| std::time::Duration::from_secs(self.peer_refresh)),
            peer_name,
            metrics: self.metrics,
            run_as,
            entropy,
            aqm,
            wireguard: self.wireguard.then(|| WireguardOptions {
                config_file: self.config.clone(),
            }),
        })
    }

    /// `--aqm` with its times: each target below its interval, as CoDel needs (RFC 8289 section
    /// 4.4 puts it at 5 to 10% of it), drops no sooner than marks, and no times for an AQM that
    /// signals nothing.
    fn validate_aqm(&self) -> Result<aqm::Settings, ConfigError> {
        let mode = self.aqm.mode();
        let times = [
            (self.aqm_target, "--aqm-target"),
            (self.aqm_interval, "--aqm-interval"),
            (self.aqm_drop_target, "--aqm-drop-target"),
            (self.aqm_drop_interval, "--aqm-drop-interval"),
        ];
        if mode != aqm::Mode::Codel
            && let Some((_, option)) = times.iter().find(|(given, _)| given.is_some())
        {
            return Err(bad(option, "has no effect unless --aqm codel"));
        }
        let pair = |target: Option<u64>,
                    interval: Option<u64>,
                    default: aqm::Params,
                    names: (&str, &str)| {
            let params = aqm::Params {
                target_ns: target.unwrap_or(default.target_ns),
                interval_ns: interval.unwrap_or(default.interval_ns),
            };
            if params.target_ns >= params.interval_ns {
                let option = if target.is_some() { names.0 } else { names.1 };
                return Err(bad(
                    option,
                    format!(
                        "the target ({} ns) must be shorter than the interval ({} ns)",
                        params.target_ns, params.interval_ns
                    ),
                ));
            }
            Ok(params)
        };
        let mark = pair(
            self.aqm_target,
            self.aqm_interval,
            aqm::Settings::DEFAULT.mark,
            ("--aqm-target", "--aqm-interval"),
        )?;
        let drop = pair(
            self.aqm_drop_target,
            self.aqm_drop_interval,
            aqm::Settings::DEFAULT.drop,
            ("--aqm-drop-target", "--aqm-drop-interval"),
        )?;
        if drop.target_ns < mark.target_ns {
            let option = if self.aqm_drop_target.is_some() {
                "--aqm-drop-target"
            } else {
                "--aqm-target"
            };
            return Err(bad(
                option,
                format!(
                    "drops ({} ns) must not come before marks ({} ns): marking first costs \
                     an ECN-capable flow no packet",
                    drop.target_ns, mark.target_ns
                ),
            ));
        }
        Ok(aqm::Settings {
            mode,
            mark,
            drop,
            tun_ring_packets: self.tx_queue_len,
        })
    }
}

#[cfg(test)]
mod tests {

    /// A name with several addresses keeps the one in use while it is in the answer, and moves
    /// only when it is gone, to the first of the same family.
    #[test]
    fn a_peer_keeps_its_address_while_the_name_still_has_it() {
        let a: SocketAddr = "198.18.0.2:55555".parse().unwrap();
        let b: SocketAddr = "198.18.0.3:55555".parse().unwrap();
        let v6: SocketAddr = "[2001:2::2]:55555".parse().unwrap();
        assert_eq!(
            pick_peer(&[v6, a, b], None),
            Some(a),
            "IPv4 first at the start"
        );
        assert_eq!(pick_peer(&[a, b], Some(b)), Some(b), "still answered: kept");
        assert_eq!(pick_peer(&[v6, b, a], Some(a)), Some(a));
        assert_eq!(
            pick_peer(&[v6, b], Some(a)),
            Some(b),
            "gone: the first IPv4 one"
        );
        assert_eq!(pick_peer(&[v6], Some(a)), None, "never another family");
    }

    use super::*;
    use crate::cli::{parse_cpu_list, parse_size, value_error};
    use clap::Parser;
    use std::time::Duration;

    fn no_dns(_: &str, _: u16) -> Result<Vec<SocketAddr>, String> {
        Err("no DNS in tests".into())
    }

    /// A user database with `relay` (uid 990, group 990), `rootgroup` (primary gid 0), `root`,
    /// groups `relay`, `metrics` (991) and `wheel` (0); `broken` fails the lookup.
    struct FakeAccounts;

    impl Accounts for FakeAccounts {
        fn user(&self, name: &str) -> Result<Option<Account>, String> {
            let account = |uid, primary_gid| Ok(Some(Account { uid, primary_gid }));
            match name {
                "relay" => account(990, 990),
                "rootgroup" => account(992, 0),
                "root" => account(0, 0),
                "broken" => Err("NSS is down".into()),
                _ => Ok(None),
            }
        }

        fn group(&self, name: &str) -> Result<Option<u32>, String> {
            match name {
                "relay" => Ok(Some(990)),
                "metrics" => Ok(Some(991)),
                "wheel" => Ok(Some(0)),
                "broken" => Err("NSS is down".into()),
                _ => Ok(None),
            }
        }
    }

    /// Parses and validates as the binary does: a value clap refuses is an error that names its
    /// option too ([`value_error`]); any other refusal of clap's fails the test.
    fn check_argv(argv: &[&str], online: &[usize]) -> Result<Config, ConfigError> {
        let args = Args::try_parse_from(argv)
            .map_err(|e| value_error(&e).unwrap_or_else(|| panic!("{argv:?}: {e}")))?;
        args.validate(online, no_dns, &FakeAccounts)
    }

    fn check(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["tunfwd", "--peer", "198.18.0.2:55555"];
        argv.extend_from_slice(extra);
        check_argv(&argv, &[0, 1, 2, 3])
    }

    #[test]
    fn defaults() {
        let c = check(&[]).unwrap();
        assert_eq!(c.peer, "198.18.0.2:55555".parse().unwrap());
        assert_eq!(c.listen, "0.0.0.0:55555".parse().unwrap());
        assert_eq!(c.device_name, "tunfwd0");
        assert_eq!(c.queues, 4);
        assert_eq!(c.worker_cpus, Some(vec![0, 1, 2, 3]));
        assert_eq!(c.mtu, 1472);
        assert_eq!(c.stats_interval_secs, 0);
    }

    #[test]
    fn ipv6_peer_changes_listen_family_and_mtu() {
        let c = Args::try_parse_from(["tunfwd", "--peer", "[2001:2::2]:7000"])
            .unwrap()
            .validate(&[0], no_dns, &FakeAccounts)
            .unwrap();
        assert_eq!(c.listen, "[::]:55555".parse().unwrap());
        assert_eq!(c.mtu, 1452);
        assert_eq!(c.queues, 1);
    }

    /// `--pmtu-floor` lies between the outer family's smallest path MTU and the MTU plus the
    /// outer headers; an IPv4-mapped peer is held to IPv6's numbers (see `validate`).
    #[test]
    fn the_pmtu_floor_is_bounded_by_the_outer_family() {
        for (peer, smallest, largest) in [
            ("198.18.0.2:55555", 552, 1500),
            ("[2001:2::2]:7000", 1280, 1500),
            ("[::ffff:198.18.0.2]:7000", 1280, 1500),
        ] {
            let floor = |floor: u32| {
                let floor = floor.to_string();
                check_argv(&["tunfwd", "--peer", peer, "--pmtu-floor", &floor], &[0])
                    .map(|c| c.pmtu_floor)
            };
            assert_eq!(floor(smallest).ok(), Some(smallest), "{peer}");
            assert_eq!(floor(largest).ok(), Some(largest), "{peer}");
            assert!(floor(smallest - 1).is_err(), "{peer}");
            assert!(floor(largest + 1).is_err(), "{peer}");
        }
    }

    #[test]
    fn hostname_peer_is_resolved_preferring_ipv4() {
        let c = Args::try_parse_from(["tunfwd", "--peer", "relay.example:9000"])
            .unwrap()
            .validate(
                &[0],
                |host, port| {
                    assert_eq!((host, port), ("relay.example", 9000));
                    Ok(vec![
                        "[2001:2::9]:9000".parse().unwrap(),
                        "198.18.0.9:9000".parse().unwrap(),
                    ])
                },
                &FakeAccounts,
            )
            .unwrap();
        assert_eq!(c.peer, "198.18.0.9:9000".parse().unwrap());
        let e = Args::try_parse_from(["tunfwd", "--peer", "nowhere.invalid:9000"])
            .unwrap()
            .validate(&[0], no_dns, &FakeAccounts)
            .unwrap_err();
        assert_eq!(e.option, "--peer");
        assert!(e.problem.contains("cannot resolve"));
    }

    #[test]
    fn bad_values_name_their_option() {
        let cases: &[(&[&str], &str)] = &[
            (&["--queues", "0"], "--queues"),
            (&["--queues", "257"], "--queues"),
            (&["--dev", "a-name-longer-than-15"], "--dev"),
            (&["--dev", "bad/name"], "--dev"),
            (&["--mtu", "575"], "--mtu"),
            (&["--mtu", "65536"], "--mtu"),
            (&["--mtu", "1000", "--address", "2001:2::1/64"], "--mtu"),
            (&["--cpus", "9"], "--cpus"),
            (&["--cpus", "3-1"], "--cpus"),
            (&["--cpus", "x"], "--cpus"),
            (&["--address", "198.19.0.1"], "--address"),
            (&["--address", "198.19.0.1/33"], "--address"),
            (&["--address", "nonsense/24"], "--address"),
            (&["--listen", "[::]:55555"], "--listen"),
            (&["--listen", "nope"], "--listen"),
            (&["--ring-depth", "3"], "--ring-depth"),
            (&["--ring-depth", "0"], "--ring-depth"),
            (&["--tx-queue-len", "0"], "--tx-queue-len"),
            (&["--buffer-memory", "1X"], "--buffer-memory"),
            (&["--buffer-memory", "1.5M"], "--buffer-memory"),
            (&["--buffer-memory", "1K"], "--buffer-memory"),
            (&["--buffer-memory", "2G"], "--buffer-memory"),
            (&["--buffer-memory", "M"], "--buffer-memory"),
            (&["--socket-buffer", "8"], "--socket-buffer"),
            (&["--socket-buffer", "2G"], "--socket-buffer"),
            (&["--busy-poll", "10001"], "--busy-poll"),
            (&["--engine", "epoll"], "--engine"),
            (&["--metrics", "9101"], "--metrics"),
            (&["--metrics", "localhost:9101"], "--metrics"),
            (&["--metrics", "127.0.0.1:0"], "--metrics"),
            (&["--metrics", "127.0.0.1:65536"], "--metrics"),
            (&["--user", "nosuchuser"], "--user"),
            (&["--user", "broken"], "--user"),
            (&["--user", "root"], "--user"),
            (&["--user", "rootgroup"], "--user"),
            (&["--user", ""], "--user"),
            (&["--user", "a b"], "--user"),
            (&["--user", "relay", "--group", "nosuchgroup"], "--group"),
            (&["--user", "relay", "--group", "broken"], "--group"),
            (&["--user", "relay", "--group", "wheel"], "--group"),
        ];
        for (extra, option) in cases {
            let e = check(extra).expect_err(&format!("{extra:?} should fail"));
            assert_eq!(&e.option, option, "{extra:?}: {e}");
            assert!(e.to_string().starts_with(option));
        }
        for peer in [
            "198.18.0.2",
            "198.18.0.2:x",
            ":55555",
            "0.0.0.0:55555",
            "198.18.0.2:0",
            "a b:1",
        ] {
            let e = check_argv(&["tunfwd", "--peer", peer], &[0]).expect_err(peer);
            assert_eq!(e.option, "--peer", "{peer}");
        }
    }

    #[test]
    fn tos_and_ecn() {
        let c = check(&[]).unwrap();
        assert_eq!(c.marking, Marking::DEFAULT);
        assert_eq!(c.marking.dscp, OuterDscp::Fixed(0));
        assert!(c.marking.ecn);
        for (text, dscp) in [
            ("inherit", OuterDscp::Inherit),
            ("INHERIT", OuterDscp::Inherit),
            ("0xb8", OuterDscp::Fixed(0xb8)),
            ("184", OuterDscp::Fixed(184)),
            ("0", OuterDscp::Fixed(0)),
            ("0XFC", OuterDscp::Fixed(0xfc)),
        ] {
            assert_eq!(
                check(&["--tos", text]).unwrap().marking.dscp,
                dscp,
                "{text}"
            );
        }
        let c = check(&["--no-ecn", "--tos", "inherit"]).unwrap();
        assert_eq!(
            c.marking,
            Marking {
                dscp: OuterDscp::Inherit,
                ecn: false
            }
        );
        for (text, says) in [
            ("0xb9", "ECN bits"),
            ("2", "ECN bits"),
            ("256", "neither"),
            ("0x1fc", "neither"),
            ("0x", "neither"),
            ("ef", "neither"),
            ("", "neither"),
        ] {
            let e = check(&["--tos", text]).unwrap_err();
            assert_eq!(e.option, "--tos", "{text}");
            assert!(e.problem.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn metrics_address_and_run_as() {
        let c = check(&[]).unwrap();
        assert_eq!((c.metrics, c.run_as), (None, None));
        let c = check(&["--metrics", "127.0.0.1:9101"]).unwrap();
        assert_eq!(c.metrics, Some("127.0.0.1:9101".parse().unwrap()));
        let c = check(&["--metrics", "[::1]:9101"]).unwrap();
        assert_eq!(c.metrics, Some("[::1]:9101".parse().unwrap()));
        let c = check(&["--user", "relay"]).unwrap();
        assert_eq!(
            c.run_as,
            Some(RunAs {
                user: "relay".into(),
                uid: 990,
                group: None,
                gid: 990
            })
        );
        let c = check(&["--user", "rootgroup", "--group", "metrics"]).unwrap();
        assert_eq!(
            c.run_as,
            Some(RunAs {
                user: "rootgroup".into(),
                uid: 992,
                group: Some("metrics".into()),
                gid: 991
            })
        );
        assert!(
            Args::try_parse_from(["tunfwd", "--peer", "1.2.3.4:5", "--group", "relay"]).is_err(),
            "--group needs --user"
        );
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("512K"), Some(512 << 10));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("16m"), Some(16 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        for bad in ["", "K", "1.5M", "1MB", "x", "99999999999999999999G"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        assert_eq!(check(&[]).unwrap().buffer_memory, 1 << 20);
        assert_eq!(
            check(&["--buffer-memory", "16M"]).unwrap().buffer_memory,
            16 << 20
        );
        assert_eq!(check(&[]).unwrap().socket_buffer, 8 << 20);
        assert_eq!(
            check(&["--socket-buffer", "1M"]).unwrap().socket_buffer,
            1 << 20
        );
    }

    #[test]
    fn entropy_and_source_ports() {
        assert_eq!(
            check(&[]).unwrap().entropy,
            Entropy::Ephemeral,
            "on by default in raw mode"
        );
        assert_eq!(
            check(&["--entropy", "auto"]).unwrap().entropy,
            Entropy::Ephemeral
        );
        assert_eq!(check(&["--entropy", "off"]).unwrap().entropy, Entropy::Off);
        assert_eq!(
            check(&["--srcport", "40000", "40099"]).unwrap().entropy,
            Entropy::Range(40000, 40099)
        );
        assert_eq!(
            check(&["--srcport", "9", "9"]).unwrap().entropy,
            Entropy::Range(9, 9)
        );
        for (extra, says) in [
            (&["--srcport", "40099", "40000"][..], "MIN is above MAX"),
            (&["--srcport", "55000", "56000"], "listen port 55555"),
            (
                &["--listen", "0.0.0.0:40050", "--srcport", "40000", "40099"],
                "listen port",
            ),
            (&["--srcport", "0", "10"], "0 is not in 1..=65535"),
            (&["--srcport", "1", "65536"], "65536"),
            (&["--srcport", "x", "10"], "invalid digit"),
            (
                &["--entropy", "off", "--srcport", "1", "2"],
                "--entropy is off",
            ),
        ] {
            let e = check(extra).expect_err(&format!("{extra:?}"));
            assert_eq!(e.option, "--srcport", "{extra:?}: {e}");
            assert!(e.problem.contains(says), "{extra:?}: {e}");
        }
        let e = check(&["--entropy", "sometimes"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--entropy: 'sometimes' is not one of auto, off"
        );
        let one = Args::try_parse_from(["tunfwd", "--peer", "198.18.0.2:1", "--srcport", "5"]);
        assert!(one.is_err(), "two values");
    }

    #[test]
    fn wireguard_mode_sends_from_its_listen_port_only() {
        let wireguard = |extra: &[&str]| {
            let mut argv = vec!["tunfwd", "--wireguard"];
            argv.extend_from_slice(extra);
            check_argv(&argv, &[0, 1])
        };
        assert_eq!(
            wireguard(&[]).unwrap().entropy,
            Entropy::Off,
            "off by default in WireGuard mode"
        );
        assert_eq!(
            wireguard(&["--entropy", "off"]).unwrap().entropy,
            Entropy::Off
        );
        for (extra, option) in [
            (&["--entropy", "auto"][..], "--entropy"),
            (&["--srcport", "40000", "40099"], "--srcport"),
        ] {
            let e = wireguard(extra).expect_err(&format!("{extra:?}"));
            assert_eq!(e.option, option, "{extra:?}: {e}");
            assert!(e.problem.contains("listen port only"), "{extra:?}: {e}");
        }
    }

    #[test]
    fn engine_and_busy_poll_are_taken_as_given() {
        let c = check(&[]).unwrap();
        assert_eq!((c.engine, c.busy_poll), (None, Duration::ZERO));
        let c = check(&["--engine", "poll", "--busy-poll", "50"]).unwrap();
        assert_eq!(c.engine, Some(Engine::Poll));
        assert_eq!(c.busy_poll, Duration::from_micros(50));
        assert_eq!(
            check(&["--engine", "uring-compat"]).unwrap().engine,
            Some(Engine::UringCompat)
        );
        assert_eq!(check(&["--engine", "auto"]).unwrap().engine, None);
    }

    #[test]
    fn cpus_round_robin_and_mtu_bounds() {
        let c = check(&["--queues", "5", "--cpus", "1,3"]).unwrap();
        assert_eq!(c.worker_cpus, Some(vec![1, 3, 1, 3, 1]));
        assert_eq!(check(&["--no-pin"]).unwrap().worker_cpus, None);
        assert_eq!(parse_cpu_list("0-2,2,5").unwrap(), vec![0, 1, 2, 5]);
    }

    #[test]
    fn cpu_lists_keep_first_places_and_refuse_huge_numbers() {
        assert_eq!(parse_cpu_list("2,0-3").unwrap(), vec![2, 0, 1, 3]);
        assert_eq!(parse_cpu_list("3,1,3,1").unwrap(), vec![3, 1]);
        assert_eq!(parse_cpu_list("1023").unwrap(), vec![1023]);
        for huge in [
            "0-18446744073709551615",
            "1024",
            "5-1024",
            "99999999999999999999",
        ] {
            let e = parse_cpu_list(huge).unwrap_err();
            assert_eq!(e.option, "--cpus", "{huge}");
        }
        // Through validation too: a duplicate must not pin two workers to one core.
        let c = check(&["--queues", "4", "--cpus", "2,0-3"]).unwrap();
        assert_eq!(c.worker_cpus, Some(vec![2, 0, 1, 3]));
        assert_eq!(check(&["--mtu", "576"]).unwrap().mtu, 576);
        assert_eq!(
            check(&["--mtu", "1280", "--address", "2001:2::1/64"])
                .unwrap()
                .mtu,
            1280
        );
        let c = check(&["--address", "198.19.0.1/24", "--address", "2001:2::1/64"]).unwrap();
        assert_eq!(
            c.addresses,
            vec![
                ("198.19.0.1".parse().unwrap(), 24),
                ("2001:2::1".parse().unwrap(), 64)
            ]
        );
    }

    #[test]
    fn offload_switches() {
        let all = Offloads {
            tso: true,
            uso: true,
            udp_gso: true,
            udp_gro: true,
        };
        assert_eq!(check(&[]).unwrap().offloads, all);
        let none = Offloads {
            tso: false,
            uso: false,
            udp_gso: false,
            udp_gro: false,
        };
        assert_eq!(check(&["--no-offload"]).unwrap().offloads, none);
        assert_eq!(
            check(&["--no-tso", "--no-udp-gro"]).unwrap().offloads,
            Offloads {
                tso: false,
                udp_gro: false,
                ..all
            }
        );
        assert_eq!(
            check(&["--no-uso", "--no-udp-gso"]).unwrap().offloads,
            Offloads {
                uso: false,
                udp_gso: false,
                ..all
            }
        );
    }

    /// The AQM reads a ring that stands full by the ring's size, which `--tx-queue-len` sets.
    #[test]
    fn the_aqm_knows_the_tun_rings_size() {
        let default = check(&["--aqm", "codel"]).unwrap().aqm.tun_ring_packets;
        assert_eq!(default, crate::cli::DEFAULT_TX_QUEUE_LEN);
        let c = check(&["--aqm", "codel", "--tx-queue-len", "500"]).unwrap();
        assert_eq!(c.aqm.tun_ring_packets, 500);
    }

    #[test]
    fn the_aqm_marks_before_it_drops_and_each_target_is_below_its_interval() {
        assert_eq!(
            check(&[]).unwrap().aqm.mode,
            aqm::Mode::Off,
            "off unless asked for"
        );
        let c = check(&["--aqm", "codel"]).unwrap();
        assert_eq!(c.aqm, aqm::Settings::DEFAULT);
        assert_eq!(c.aqm.mode, aqm::Mode::Codel);
        assert!(c.aqm.mark.target_ns <= c.aqm.drop.target_ns);
        let c = check(&[
            "--aqm",
            "codel",
            "--aqm-target",
            "200us",
            "--aqm-interval",
            "4ms",
            "--aqm-drop-target",
            "5ms",
            "--aqm-drop-interval",
            "100ms",
        ])
        .unwrap();
        assert_eq!(
            (c.aqm.mark, c.aqm.drop),
            (
                aqm::Params {
                    target_ns: 200_000,
                    interval_ns: 4_000_000
                },
                aqm::Params::RFC_8289
            )
        );
        assert_eq!(check(&["--aqm", "off"]).unwrap().aqm.mode, aqm::Mode::Off);
        assert_eq!(
            check(&["--aqm", "observe"]).unwrap().aqm.mode,
            aqm::Mode::Observe
        );
        let refused = |extra: &[&str]| check(extra).unwrap_err().to_string();
        for (extra, says) in [
            (
                &["--aqm", "off", "--aqm-target", "1ms"][..],
                "--aqm-target: has no effect unless --aqm codel",
            ),
            (
                &["--aqm", "observe", "--aqm-drop-interval", "9ms"],
                "--aqm-drop-interval: has no effect unless --aqm codel",
            ),
            (
                &["--aqm", "codel", "--aqm-target", "3ms"],
                "--aqm-target: the target (3000000 ns) must be shorter than the interval \
                 (2000000 ns)",
            ),
            (
                &["--aqm", "codel", "--aqm-drop-interval", "100us"],
                "--aqm-drop-interval: the target (250000 ns) must be shorter than the interval \
                 (100000 ns)",
            ),
            (
                &["--aqm", "codel", "--aqm-target", "300us"],
                "--aqm-target: drops (250000 ns) must not come before marks (300000 ns)",
            ),
            (
                &["--aqm", "codel", "--aqm-drop-target", "20us"],
                "--aqm-drop-target: drops (20000 ns) must not come before marks (100000 ns)",
            ),
            (
                &["--aqm", "red"],
                "--aqm: 'red' is not one of codel, observe, off",
            ),
            (
                &["--aqm-target", "5"],
                "--aqm-target: '5' is not a time between 10us and 1s",
            ),
        ] {
            let text = refused(extra);
            assert!(text.starts_with(says), "{extra:?}: {text}");
        }
    }

    #[test]
    fn clap_rejects_syntax_errors() {
        assert!(
            Args::try_parse_from(["tunfwd"]).is_err(),
            "--peer is required"
        );
        assert!(Args::try_parse_from(["tunfwd", "--peer", "1.2.3.4:5", "--queues", "x"]).is_err());
        assert!(
            Args::try_parse_from(["tunfwd", "--peer", "1.2.3.4:5", "--no-pin", "--cpus", "1"])
                .is_err()
        );
    }
}
