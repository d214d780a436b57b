//! Configuration as a list of operations, and the `wg setconf` file format that produces one.
//!
//! Both ways of configuring a device, a `--config FILE` in `wg setconf` format and a UAPI
//! `set=1` request (`uapi.rs`), parse into the same [`Operation`] list, which
//! `Device::apply` carries out. Order matters and is kept: in UAPI, `replace_allowed_ips`
//! clears only what was added before it.
//!
//! The file format is wireguard-tools' (`wg(8)`, "CONFIGURATION FILE FORMAT", and its
//! `config.c`): `[Interface]` with `PrivateKey`, `ListenPort`, `FwMark`; `[Peer]` with
//! `PublicKey`, `PresharedKey`, `AllowedIPs` (comma-separated), `Endpoint`,
//! `PersistentKeepalive`. Like `wg`, section names and keys are case-insensitive, `#` starts a
//! comment, and all whitespace inside a line is ignored. `wg-quick`'s own keys (`Address`,
//! `DNS`, `MTU`, ...) are refused, as `wg setconf` refuses them. A file replaces the whole
//! configuration (`wg setconf`): the list starts with [`Operation::ReplacePeers`] and each peer
//! with [`PeerChange::ReplaceAllowedIps`]. Keys in a file are base64. A host name in `Endpoint`
//! is returned unresolved ([`Endpoint::Host`]): resolving is I/O, the caller's.

use std::fmt;
use std::net::SocketAddr;

use crate::allowed_ips::{IpPrefix, PrefixError};
use crate::keys::{KeyParseError, PresharedKey, PrivateKey, PublicKey};

/// Where a peer is, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// An address and port.
    Socket(SocketAddr),
    /// A host name and port from a configuration file, for the caller to resolve.
    Host {
        /// The name, as written.
        host: String,
        /// The port.
        port: u16,
    },
}

/// One change to a device, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Set the private key; `None` (an all-zero key in UAPI) removes it.
    SetPrivateKey(Option<PrivateKey>),
    /// The UDP port to listen on (0: any). The relay acts on it; the device only reports it.
    SetListenPort(u16),
    /// The socket mark (0: none). Reported back by `get`, applied by the relay.
    SetFwmark(u32),
    /// Remove every peer.
    ReplacePeers,
    /// Create, change or remove one peer.
    UpdatePeer(PeerUpdate),
}

/// What to do to the peer with one public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerUpdate {
    /// Which peer.
    pub public_key: PublicKey,
    /// Remove the peer (the changes are then moot).
    pub remove: bool,
    /// Change the peer only if it exists; never create it.
    pub update_only: bool,
    /// The changes, in order.
    pub changes: Vec<PeerChange>,
}

impl PeerUpdate {
    /// An update that creates or changes the peer.
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            remove: false,
            update_only: false,
            changes: Vec::new(),
        }
    }
}

/// One change to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerChange {
    /// Set the preshared key (all zeros: none).
    PresharedKey(PresharedKey),
    /// Set the endpoint.
    Endpoint(Endpoint),
    /// Set the PersistentKeepalive interval in seconds (0: off).
    PersistentKeepalive(u16),
    /// Remove every allowed IP of the peer.
    ReplaceAllowedIps,
    /// Route this prefix to the peer (moving it from any other peer).
    AddAllowedIp(IpPrefix),
    /// Stop routing this prefix to the peer.
    RemoveAllowedIp(IpPrefix),
}

/// What was wrong in a configuration file, and on which line (from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The line, counting from 1.
    pub line: usize,
    /// What was wrong with it.
    pub kind: ConfigErrorKind,
}

/// The kinds of [`ConfigError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// A line that is neither a `[Section]` nor `Key = Value`.
    Malformed,
    /// A section other than `[Interface]` or `[Peer]`.
    UnknownSection,
    /// A key before any section.
    OutsideSection,
    /// A key this section does not have.
    UnknownKey,
    /// A key that did not parse.
    BadKey(KeyParseError),
    /// A number out of range or not a number.
    BadNumber,
    /// An endpoint without a port, or with a bracket out of place.
    BadEndpoint,
    /// An allowed IP that did not parse.
    BadPrefix(PrefixError),
    /// A `[Peer]` section that ends without a `PublicKey`.
    MissingPublicKey,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        match self.kind {
            ConfigErrorKind::Malformed => f.write_str("expected [Section] or Key = Value"),
            ConfigErrorKind::UnknownSection => f.write_str("unknown section"),
            ConfigErrorKind::OutsideSection => f.write_str("key outside any section"),
            ConfigErrorKind::UnknownKey => f.write_str("unknown key for this section"),
            ConfigErrorKind::BadKey(error) => write!(f, "bad key: {error}"),
            ConfigErrorKind::BadNumber => f.write_str("bad number"),
            ConfigErrorKind::BadEndpoint => f.write_str("bad endpoint, expected HOST:PORT"),
            ConfigErrorKind::BadPrefix(error) => write!(f, "bad allowed IP: {error}"),
            ConfigErrorKind::MissingPublicKey => f.write_str("[Peer] section without PublicKey"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parse an endpoint: `a.b.c.d:port`, `[v6]:port`, or `host:port` (unresolved).
pub fn parse_endpoint(text: &str) -> Option<Endpoint> {
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(Endpoint::Socket(socket));
    }
    let (host, port) = text.rsplit_once(':')?;
    let port = parse_decimal(port)?.try_into().ok()?;
    if host.is_empty() || host.contains([':', '[', ']']) {
        return None;
    }
    Some(Endpoint::Host {
        host: host.to_owned(),
        port,
    })
}

fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `strtoul(text, NULL, 0)` as `wg` uses it for FwMark: decimal, `0x` hex, or `0` octal.
fn parse_c_number(text: &str) -> Option<u64> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16)
            .ok()
            .filter(|_| !hex.is_empty());
    }
    if text.len() > 1 && text.starts_with('0') {
        return u64::from_str_radix(&text[1..], 8).ok();
    }
    parse_decimal(text)
}

enum Section {
    None,
    Interface,
    Peer {
        update: Option<PeerUpdate>,
        changes: Vec<PeerChange>,
        started_at: usize,
    },
}

/// Parse a `wg setconf` file into the operations that replace a device's configuration.
pub fn parse_config_file(text: &str) -> Result<Vec<Operation>, ConfigError> {
    let mut operations = vec![Operation::ReplacePeers];
    let mut section = Section::None;
    let finish = |section: Section, operations: &mut Vec<Operation>| -> Result<(), ConfigError> {
        if let Section::Peer {
            update,
            changes,
            started_at,
        } = section
        {
            let mut update = update.ok_or(ConfigError {
                line: started_at,
                kind: ConfigErrorKind::MissingPublicKey,
            })?;
            update.changes = std::iter::once(PeerChange::ReplaceAllowedIps)
                .chain(changes)
                .collect();
            operations.push(Operation::UpdatePeer(update));
        }
        Ok(())
    };

    for (index, raw_line) in text.lines().enumerate() {
        let line_number = index + 1;
        let error = |kind| ConfigError {
            line: line_number,
            kind,
        };
        let without_comment = raw_line.split('#').next().unwrap_or("");
        let line: String = without_comment
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            let previous = std::mem::replace(&mut section, Section::None);
            finish(previous, &mut operations)?;
            section = if line.eq_ignore_ascii_case("[Interface]") {
                Section::Interface
            } else if line.eq_ignore_ascii_case("[Peer]") {
                Section::Peer {
                    update: None,
                    changes: Vec::new(),
                    started_at: line_number,
                }
            } else {
                return Err(error(ConfigErrorKind::UnknownSection));
            };
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or(error(ConfigErrorKind::Malformed))?;
        let key = key.to_ascii_lowercase();
        match &mut section {
            Section::None => return Err(error(ConfigErrorKind::OutsideSection)),
            Section::Interface => {
                let operation = match key.as_str() {
                    "privatekey" => Operation::SetPrivateKey(Some(
                        PrivateKey::from_base64(value)
                            .map_err(|e| error(ConfigErrorKind::BadKey(e)))?,
                    )),
                    "listenport" => Operation::SetListenPort(
                        parse_decimal(value)
                            .and_then(|port| port.try_into().ok())
                            .ok_or(error(ConfigErrorKind::BadNumber))?,
                    ),
                    "fwmark" if value.eq_ignore_ascii_case("off") => Operation::SetFwmark(0),
                    "fwmark" => Operation::SetFwmark(
                        parse_c_number(value)
                            .and_then(|mark| mark.try_into().ok())
                            .ok_or(error(ConfigErrorKind::BadNumber))?,
                    ),
                    _ => return Err(error(ConfigErrorKind::UnknownKey)),
                };
                operations.push(operation);
            }
            Section::Peer {
                update, changes, ..
            } => match key.as_str() {
                "publickey" => {
                    let public_key = PublicKey::from_base64(value)
                        .map_err(|e| error(ConfigErrorKind::BadKey(e)))?;
                    *update = Some(PeerUpdate::new(public_key));
                }
                "presharedkey" => changes.push(PeerChange::PresharedKey(
                    PresharedKey::from_base64(value)
                        .map_err(|e| error(ConfigErrorKind::BadKey(e)))?,
                )),
                "allowedips" => {
                    for item in value.split(',').filter(|item| !item.is_empty()) {
                        let prefix = item
                            .parse()
                            .map_err(|e| error(ConfigErrorKind::BadPrefix(e)))?;
                        changes.push(PeerChange::AddAllowedIp(prefix));
                    }
                }
                "endpoint" => changes.push(PeerChange::Endpoint(
                    parse_endpoint(value).ok_or(error(ConfigErrorKind::BadEndpoint))?,
                )),
                "persistentkeepalive" => {
                    let seconds = if value.eq_ignore_ascii_case("off") {
                        0
                    } else {
                        parse_decimal(value)
                            .and_then(|seconds| seconds.try_into().ok())
                            .ok_or(error(ConfigErrorKind::BadNumber))?
                    };
                    changes.push(PeerChange::PersistentKeepalive(seconds));
                }
                _ => return Err(error(ConfigErrorKind::UnknownKey)),
            },
        }
    }
    finish(section, &mut operations)?;
    Ok(operations)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    const PUBLIC_A: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
    const PUBLIC_B: &str = "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=";
    const PSK: &str = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=";

    #[test]
    fn a_full_file_becomes_the_operations_of_wg_setconf() {
        let text = format!(
            "# a comment\n\
             [Interface]\n\
             PrivateKey = {PRIVATE}\n\
             ListenPort = 51820\n\
             fwmark = 0x1234\n\
             \n\
             [Peer]  # trailing comment\n\
             PublicKey = {PUBLIC_A}\n\
             PresharedKey = {PSK}\n\
             AllowedIPs = 10.0.0.0/8, 192.0.2.1 ,2001:db8::/32\n\
             Endpoint = [2001:db8::1]:51820\n\
             PersistentKeepalive = 25\n\
             [PEER]\n\
             publickey={PUBLIC_B}\n\
             Endpoint = vpn.example.net:4500\n\
             AllowedIPs =\n\
             PersistentKeepalive = off\n"
        );
        let operations = parse_config_file(&text).unwrap();
        let expected = vec![
            Operation::ReplacePeers,
            Operation::SetPrivateKey(Some(PrivateKey::from_base64(PRIVATE).unwrap())),
            Operation::SetListenPort(51820),
            Operation::SetFwmark(0x1234),
            Operation::UpdatePeer(PeerUpdate {
                public_key: PublicKey::from_base64(PUBLIC_A).unwrap(),
                remove: false,
                update_only: false,
                changes: vec![
                    PeerChange::ReplaceAllowedIps,
                    PeerChange::PresharedKey(PresharedKey::from_base64(PSK).unwrap()),
                    PeerChange::AddAllowedIp("10.0.0.0/8".parse().unwrap()),
                    PeerChange::AddAllowedIp("192.0.2.1/32".parse().unwrap()),
                    PeerChange::AddAllowedIp("2001:db8::/32".parse().unwrap()),
                    PeerChange::Endpoint(Endpoint::Socket("[2001:db8::1]:51820".parse().unwrap())),
                    PeerChange::PersistentKeepalive(25),
                ],
            }),
            Operation::UpdatePeer(PeerUpdate {
                public_key: PublicKey::from_base64(PUBLIC_B).unwrap(),
                remove: false,
                update_only: false,
                changes: vec![
                    PeerChange::ReplaceAllowedIps,
                    PeerChange::Endpoint(Endpoint::Host {
                        host: "vpn.example.net".into(),
                        port: 4500,
                    }),
                    PeerChange::PersistentKeepalive(0),
                ],
            }),
        ];
        assert_eq!(operations, expected);
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, usize, ConfigErrorKind)] = &[
            ("PrivateKey = x", 1, ConfigErrorKind::OutsideSection),
            (
                "[Interface]\nAddress = 10.0.0.1/24",
                2,
                ConfigErrorKind::UnknownKey,
            ),
            ("[Wireguard]", 1, ConfigErrorKind::UnknownSection),
            (
                "[Interface]\nListenPort = 65536",
                2,
                ConfigErrorKind::BadNumber,
            ),
            ("[Interface]\nListenPort", 2, ConfigErrorKind::Malformed),
            (
                "[Interface]\nPrivateKey = abc",
                2,
                ConfigErrorKind::BadKey(KeyParseError::WrongLength),
            ),
            (
                "[Peer]\nAllowedIPs = 10.0.0.0/8",
                1,
                ConfigErrorKind::MissingPublicKey,
            ),
            (
                "[Peer]\nAllowedIPs = 10.0.0.0/40",
                2,
                ConfigErrorKind::BadPrefix(PrefixError::BadLength),
            ),
            (
                "[Peer]\nEndpoint = 192.0.2.1",
                2,
                ConfigErrorKind::BadEndpoint,
            ),
            (
                "[Peer]\nEndpoint = 2001:db8::1:51820",
                2,
                ConfigErrorKind::BadEndpoint,
            ),
            (
                "[Peer]\nPersistentKeepalive = 70000",
                2,
                ConfigErrorKind::BadNumber,
            ),
        ];
        for (text, line, kind) in cases {
            assert_eq!(
                parse_config_file(text),
                Err(ConfigError {
                    line: *line,
                    kind: *kind
                }),
                "{text:?}"
            );
        }
    }

    #[test]
    fn endpoints_parse_as_wg_writes_them() {
        assert_eq!(
            parse_endpoint("192.0.2.1:51820"),
            Some(Endpoint::Socket("192.0.2.1:51820".parse().unwrap()))
        );
        assert_eq!(
            parse_endpoint("[::1]:1"),
            Some(Endpoint::Socket("[::1]:1".parse().unwrap()))
        );
        assert_eq!(
            parse_endpoint("host:1"),
            Some(Endpoint::Host {
                host: "host".into(),
                port: 1
            })
        );
        for bad in [
            "host",
            "host:",
            ":1",
            "host:65536",
            "[::1]",
            "::1:80",
            "host:-1",
        ] {
            assert_eq!(parse_endpoint(bad), None, "{bad}");
        }
    }
}
