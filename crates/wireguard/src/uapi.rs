//! The cross-platform userspace API's text protocol (wireguard.com/xplatform), without the socket.
//!
//! A client (`wg`, `wg-quick`) connects to `/var/run/wireguard/IFNAME.sock` and writes `get=1`
//! or `set=1` followed by `key=value` lines and an empty line; the daemon answers with lines of
//! its own ending in `errno=N` and an empty line. The socket belongs to the relay; this module
//! only turns a `set=1` body into [`Operation`]s ([`parse_set`]) and a [`DeviceView`] into the
//! `get=1` answer ([`format_get`]). Keys are 64 hex digits here (`wg` converts from base64).
//!
//! Error numbers are wireguard-go's (`ipc/uapi_unix.go`, `device/uapi.go`): a line without `=`
//! is `EPROTO` (71); everything else that is wrong (a bad key, number, endpoint or prefix, an
//! unknown key, a `true`-only key with another value, a peer key before any `public_key`) is
//! `EINVAL` (22). wireguard-go writes them negated (`errno=-22`), which is what `wg` expects of
//! a `set`; [`format_errno`] does the same.

use std::fmt;
use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::allowed_ips::IpPrefix;
use crate::config::{Endpoint, Operation, PeerChange, PeerUpdate};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};

/// `EINVAL`.
pub const EINVAL: i32 = 22;
/// `EPROTO`.
pub const EPROTO: i32 = 71;

/// What was wrong with a `set=1` body, with the line (from 1) for the operator's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UapiError {
    /// The line of the body, counting from 1.
    pub line: usize,
    /// What was wrong with it.
    pub kind: UapiErrorKind,
}

/// The kinds of [`UapiError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UapiErrorKind {
    /// A line without `=`.
    Malformed,
    /// A key this position does not have (a peer key before `public_key`, a get-only key).
    UnknownKey,
    /// A key (private, public, preshared) that is not 64 hex digits.
    BadKey,
    /// A number out of range or not a number.
    BadNumber,
    /// A key that only takes `true`, with another value.
    NotTrue,
    /// An endpoint that is not `a.b.c.d:port` or `[v6]:port`.
    BadEndpoint,
    /// An allowed IP that is not `address/length`.
    BadPrefix,
    /// A `protocol_version` other than 1.
    UnsupportedProtocolVersion,
}

impl UapiError {
    /// The positive errno wireguard-go reports for this error.
    pub fn errno(&self) -> i32 {
        match self.kind {
            UapiErrorKind::Malformed => EPROTO,
            _ => EINVAL,
        }
    }
}

impl fmt::Display for UapiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            UapiErrorKind::Malformed => "line without '='",
            UapiErrorKind::UnknownKey => "key not valid here",
            UapiErrorKind::BadKey => "key is not 64 hex digits",
            UapiErrorKind::BadNumber => "bad number",
            UapiErrorKind::NotTrue => "value must be 'true'",
            UapiErrorKind::BadEndpoint => "bad endpoint",
            UapiErrorKind::BadPrefix => "bad allowed_ip",
            UapiErrorKind::UnsupportedProtocolVersion => "protocol_version must be 1",
        };
        write!(f, "UAPI set, line {}: {what}", self.line)
    }
}

impl std::error::Error for UapiError {}

fn require_true(value: &str) -> Result<(), UapiErrorKind> {
    if value == "true" {
        Ok(())
    } else {
        Err(UapiErrorKind::NotTrue)
    }
}

fn number<T: TryFrom<u64>>(value: &str) -> Result<T, UapiErrorKind> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UapiErrorKind::BadNumber);
    }
    value
        .parse::<u64>()
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or(UapiErrorKind::BadNumber)
}

/// `address/length` as Go's `netip.ParsePrefix` takes it: the length is required and has no
/// leading zeros or sign.
fn prefix(value: &str) -> Result<IpPrefix, UapiErrorKind> {
    let (_, len) = value.split_once('/').ok_or(UapiErrorKind::BadPrefix)?;
    if len.len() > 1 && len.starts_with('0') {
        return Err(UapiErrorKind::BadPrefix);
    }
    value.parse().map_err(|_| UapiErrorKind::BadPrefix)
}

/// Parse the body of a `set=1` request (the lines after `set=1`, up to the empty line that ends
/// it, or the end of `body`).
pub fn parse_set(body: &str) -> Result<Vec<Operation>, UapiError> {
    let mut operations = Vec::new();
    let mut peer: Option<PeerUpdate> = None;
    for (index, line) in body.split('\n').enumerate() {
        let line_number = index + 1;
        if line.is_empty() {
            break;
        }
        let error = |kind| UapiError {
            line: line_number,
            kind,
        };
        let (key, value) = line
            .split_once('=')
            .ok_or(error(UapiErrorKind::Malformed))?;
        if key == "public_key" {
            operations.extend(peer.take().map(Operation::UpdatePeer));
            let public_key =
                PublicKey::from_hex(value).map_err(|_| error(UapiErrorKind::BadKey))?;
            peer = Some(PeerUpdate::new(public_key));
            continue;
        }
        let Some(update) = peer.as_mut() else {
            let operation = match key {
                "private_key" => {
                    let key =
                        PrivateKey::from_hex(value).map_err(|_| error(UapiErrorKind::BadKey))?;
                    Operation::SetPrivateKey((!key.is_zero()).then_some(key))
                }
                "listen_port" => Operation::SetListenPort(number(value).map_err(error)?),
                "fwmark" => Operation::SetFwmark(number(value).map_err(error)?),
                "replace_peers" => {
                    require_true(value).map_err(error)?;
                    Operation::ReplacePeers
                }
                _ => return Err(error(UapiErrorKind::UnknownKey)),
            };
            operations.push(operation);
            continue;
        };
        match key {
            "update_only" => {
                require_true(value).map_err(error)?;
                update.update_only = true;
            }
            "remove" => {
                require_true(value).map_err(error)?;
                update.remove = true;
            }
            "preshared_key" => update.changes.push(PeerChange::PresharedKey(
                PresharedKey::from_hex(value).map_err(|_| error(UapiErrorKind::BadKey))?,
            )),
            "endpoint" => update.changes.push(PeerChange::Endpoint(Endpoint::Socket(
                value
                    .parse::<SocketAddr>()
                    .map_err(|_| error(UapiErrorKind::BadEndpoint))?,
            ))),
            "persistent_keepalive_interval" => update.changes.push(
                PeerChange::PersistentKeepalive(number(value).map_err(error)?),
            ),
            "replace_allowed_ips" => {
                require_true(value).map_err(error)?;
                update.changes.push(PeerChange::ReplaceAllowedIps);
            }
            "allowed_ip" => {
                let change = match value.strip_prefix('-') {
                    Some(removed) => PeerChange::RemoveAllowedIp(prefix(removed).map_err(error)?),
                    None => PeerChange::AddAllowedIp(prefix(value).map_err(error)?),
                };
                update.changes.push(change);
            }
            "protocol_version" => {
                if value != "1" {
                    return Err(error(UapiErrorKind::UnsupportedProtocolVersion));
                }
            }
            _ => return Err(error(UapiErrorKind::UnknownKey)),
        }
    }
    operations.extend(peer.map(Operation::UpdatePeer));
    Ok(operations)
}

/// A device's state as `get=1` reports it.
#[derive(Clone, Debug, Default)]
pub struct DeviceView {
    /// The private key, if set.
    pub private_key: Option<PrivateKey>,
    /// The listen port (0: not reported).
    pub listen_port: u16,
    /// The socket mark (0: not reported).
    pub fwmark: u32,
    /// The peers.
    pub peers: Vec<PeerView>,
}

/// One peer in a [`DeviceView`].
#[derive(Clone, Debug)]
pub struct PeerView {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Its preshared key (all zeros: none).
    pub preshared_key: PresharedKey,
    /// Where its datagrams go.
    pub endpoint: Option<SocketAddr>,
    /// When the last handshake completed, in nanoseconds since the Unix epoch.
    pub last_handshake_unix_ns: Option<u64>,
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// PersistentKeepalive in seconds (0: off).
    pub persistent_keepalive_interval_s: u16,
    /// Its allowed IPs.
    pub allowed_ips: Vec<IpPrefix>,
}

/// The complete answer to `get=1`, in wireguard-go's order, ending with `errno=0` and the empty
/// line.
pub fn format_get(view: &DeviceView) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let mut line = |args: fmt::Arguments<'_>| {
        let _ = out.write_fmt(args);
        out.push('\n');
    };
    if let Some(private_key) = &view.private_key {
        line(format_args!(
            "private_key={}",
            private_key.to_hex().as_str()
        ));
    }
    if view.listen_port != 0 {
        line(format_args!("listen_port={}", view.listen_port));
    }
    if view.fwmark != 0 {
        line(format_args!("fwmark={}", view.fwmark));
    }
    for peer in &view.peers {
        line(format_args!("public_key={}", peer.public_key.to_hex()));
        line(format_args!(
            "preshared_key={}",
            peer.preshared_key.to_hex().as_str()
        ));
        line(format_args!("protocol_version=1"));
        if let Some(endpoint) = peer.endpoint {
            line(format_args!("endpoint={endpoint}"));
        }
        let handshake_ns = peer.last_handshake_unix_ns.unwrap_or(0);
        line(format_args!(
            "last_handshake_time_sec={}",
            handshake_ns / 1_000_000_000
        ));
        line(format_args!(
            "last_handshake_time_nsec={}",
            handshake_ns % 1_000_000_000
        ));
        line(format_args!("tx_bytes={}", peer.tx_bytes));
        line(format_args!("rx_bytes={}", peer.rx_bytes));
        line(format_args!(
            "persistent_keepalive_interval={}",
            peer.persistent_keepalive_interval_s
        ));
        for prefix in &peer.allowed_ips {
            line(format_args!("allowed_ip={prefix}"));
        }
    }
    line(format_args!("errno=0"));
    out.push('\n');
    out
}

/// The answer to a `set=1`: `errno=0` or wireguard-go's negated errno, and the empty line.
pub fn format_errno(result: &Result<(), UapiError>) -> String {
    match result {
        Ok(()) => "errno=0\n\n".to_owned(),
        Err(error) => format!("errno=-{}\n\n", error.errno()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    const KEY_B: &str = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
    const PRIVATE: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";

    #[test]
    fn a_set_request_parses_in_order() {
        let body = format!(
            "private_key={PRIVATE}\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n\
             public_key={KEY_A}\npreshared_key={KEY_B}\nendpoint=[2001:db8::1]:51820\n\
             persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.0.0.0/8\n\
             allowed_ip=-192.0.2.0/24\nprotocol_version=1\n\
             public_key={KEY_B}\nupdate_only=true\nendpoint=198.18.0.2:1\n\
             public_key={KEY_A}\nremove=true\n\nignored after the blank line"
        );
        let operations = parse_set(&body).unwrap();
        let a = PublicKey::from_hex(KEY_A).unwrap();
        let b = PublicKey::from_hex(KEY_B).unwrap();
        assert_eq!(
            operations,
            vec![
                Operation::SetPrivateKey(Some(PrivateKey::from_hex(PRIVATE).unwrap())),
                Operation::SetListenPort(51820),
                Operation::SetFwmark(0),
                Operation::ReplacePeers,
                Operation::UpdatePeer(PeerUpdate {
                    public_key: a,
                    remove: false,
                    update_only: false,
                    changes: vec![
                        PeerChange::PresharedKey(PresharedKey::from_hex(KEY_B).unwrap()),
                        PeerChange::Endpoint(Endpoint::Socket(
                            "[2001:db8::1]:51820".parse().unwrap()
                        )),
                        PeerChange::PersistentKeepalive(25),
                        PeerChange::ReplaceAllowedIps,
                        PeerChange::AddAllowedIp("10.0.0.0/8".parse().unwrap()),
                        PeerChange::RemoveAllowedIp("192.0.2.0/24".parse().unwrap()),
                    ],
                }),
                Operation::UpdatePeer(PeerUpdate {
                    public_key: b,
                    remove: false,
                    update_only: true,
                    changes: vec![PeerChange::Endpoint(Endpoint::Socket(
                        "198.18.0.2:1".parse().unwrap()
                    ))],
                }),
                Operation::UpdatePeer(PeerUpdate {
                    public_key: a,
                    remove: true,
                    update_only: false,
                    changes: vec![],
                }),
            ]
        );
    }

    #[test]
    fn an_all_zero_private_key_removes_it() {
        let body = format!("private_key={}\n", "0".repeat(64));
        assert_eq!(
            parse_set(&body).unwrap(),
            vec![Operation::SetPrivateKey(None)]
        );
    }

    #[test]
    fn bad_input_gets_wireguard_gos_errno() {
        let peer = format!("public_key={KEY_A}\n");
        let cases: Vec<(String, usize, UapiErrorKind, i32)> = vec![
            ("no equals sign".into(), 1, UapiErrorKind::Malformed, EPROTO),
            ("private_key=abc".into(), 1, UapiErrorKind::BadKey, EINVAL),
            (
                format!("private_key={}", "x".repeat(64)),
                1,
                UapiErrorKind::BadKey,
                EINVAL,
            ),
            (
                "listen_port=65536".into(),
                1,
                UapiErrorKind::BadNumber,
                EINVAL,
            ),
            ("listen_port=-1".into(), 1, UapiErrorKind::BadNumber, EINVAL),
            (
                "fwmark=4294967296".into(),
                1,
                UapiErrorKind::BadNumber,
                EINVAL,
            ),
            (
                "replace_peers=false".into(),
                1,
                UapiErrorKind::NotTrue,
                EINVAL,
            ),
            (
                "endpoint=192.0.2.1:1".into(),
                1,
                UapiErrorKind::UnknownKey,
                EINVAL,
            ),
            ("public_key=zz".into(), 1, UapiErrorKind::BadKey, EINVAL),
            (
                format!("{peer}endpoint=2001:db8::1:51820"),
                2,
                UapiErrorKind::BadEndpoint,
                EINVAL,
            ),
            (
                format!("{peer}endpoint=host.example:1"),
                2,
                UapiErrorKind::BadEndpoint,
                EINVAL,
            ),
            (
                format!("{peer}allowed_ip=10.0.0.1"),
                2,
                UapiErrorKind::BadPrefix,
                EINVAL,
            ),
            (
                format!("{peer}allowed_ip=10.0.0.0/08"),
                2,
                UapiErrorKind::BadPrefix,
                EINVAL,
            ),
            (
                format!("{peer}allowed_ip=10.0.0.0/33"),
                2,
                UapiErrorKind::BadPrefix,
                EINVAL,
            ),
            (
                format!("{peer}remove=yes"),
                2,
                UapiErrorKind::NotTrue,
                EINVAL,
            ),
            (
                format!("{peer}protocol_version=2"),
                2,
                UapiErrorKind::UnsupportedProtocolVersion,
                EINVAL,
            ),
            (
                format!("{peer}tx_bytes=5"),
                2,
                UapiErrorKind::UnknownKey,
                EINVAL,
            ),
            (
                format!("{peer}persistent_keepalive_interval=65536"),
                2,
                UapiErrorKind::BadNumber,
                EINVAL,
            ),
        ];
        for (body, line, kind, errno) in cases {
            let error = parse_set(&body).unwrap_err();
            assert_eq!(error, UapiError { line, kind }, "{body:?}");
            assert_eq!(error.errno(), errno);
        }
        assert_eq!(
            format_errno(&Err(UapiError {
                line: 1,
                kind: UapiErrorKind::BadKey
            })),
            "errno=-22\n\n"
        );
        assert_eq!(format_errno(&Ok(())), "errno=0\n\n");
    }

    #[test]
    fn get_prints_what_wireguard_go_prints() {
        let view = DeviceView {
            private_key: Some(PrivateKey::from_hex(PRIVATE).unwrap()),
            listen_port: 51820,
            fwmark: 0,
            peers: vec![PeerView {
                public_key: PublicKey::from_hex(KEY_A).unwrap(),
                preshared_key: PresharedKey::default(),
                endpoint: Some("[2001:db8::1]:51820".parse().unwrap()),
                last_handshake_unix_ns: Some(1_700_000_000_123_456_789),
                tx_bytes: 1000,
                rx_bytes: 2000,
                persistent_keepalive_interval_s: 25,
                allowed_ips: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            }],
        };
        let expected = format!(
            "private_key={PRIVATE}\nlisten_port=51820\npublic_key={KEY_A}\npreshared_key={}\n\
             protocol_version=1\nendpoint=[2001:db8::1]:51820\n\
             last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=123456789\n\
             tx_bytes=1000\nrx_bytes=2000\npersistent_keepalive_interval=25\n\
             allowed_ip=10.0.0.0/8\nallowed_ip=fd00::/8\nerrno=0\n\n",
            "0".repeat(64)
        );
        assert_eq!(format_get(&view), expected);
    }
}
