//! The `[[bridge.mqtt]]` settings of the config file, and their validation into
//! [`MqttBridge`]s: URLs, credentials, TLS, and each import's and export's topic
//! mapping (`crate::bridge::mapping`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::{ConfigError, HumanDuration};
use crate::bridge::mapping::{self, Route};

/// Default `buffer` of a QoS 1 export: messages its queue holds while the MQTT broker
/// is away; beyond it the oldest are dropped (and counted by the queue).
pub const DEFAULT_EXPORT_BUFFER: u64 = 100_000;

/// The `[bridge]` table of the config file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSettings {
    #[serde(default)]
    pub mqtt: Vec<MqttBridgeSettings>,
}

/// One `[[bridge.mqtt]]` entry, as written. Every key is optional here so that
/// [`validate`] can name the bridge in the error for a missing or unknown one.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct MqttBridgeSettings {
    pub name: Option<String>,
    pub url: Option<String>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub keep_alive: Option<HumanDuration>,
    pub clean_session: Option<bool>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub reconnect_delay_min: Option<HumanDuration>,
    pub reconnect_delay_max: Option<HumanDuration>,
    #[serde(default)]
    pub import: Vec<ImportSettings>,
    #[serde(default)]
    pub export: Vec<ExportSettings>,
    /// Keys this version does not know, reported by [`validate`].
    #[serde(flatten)]
    pub unknown: BTreeMap<String, IgnoredAny>,
}

/// One `[[bridge.mqtt.import]]` entry: MQTT → tern.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ImportSettings {
    pub mqtt: Option<String>,
    pub tern: Option<String>,
    pub qos: Option<u8>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, IgnoredAny>,
}

/// One `[[bridge.mqtt.export]]` entry: tern → MQTT.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ExportSettings {
    pub tern: Option<String>,
    pub mqtt: Option<String>,
    pub qos: Option<u8>,
    pub retain: Option<bool>,
    pub buffer: Option<u64>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, IgnoredAny>,
}

/// A string that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A validated bridge configuration.
#[derive(Debug, Clone)]
pub struct MqttBridge {
    pub name: String,
    /// The URL as configured, for logs.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// TLS settings for `mqtts://` (roots, client certificate), loaded at start.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub client_id: String,
    pub credentials: Option<(String, Secret)>,
    pub keep_alive: Duration,
    pub clean_session: bool,
    pub reconnect_delay_min: Duration,
    pub reconnect_delay_max: Duration,
    pub imports: Vec<Import>,
    pub exports: Vec<Export>,
}

/// MQTT → tern.
#[derive(Debug, Clone)]
pub struct Import {
    pub route: Route,
    /// The QoS of the MQTT subscription: 0 or 1.
    pub qos: u8,
}

/// tern → MQTT.
#[derive(Debug, Clone)]
pub struct Export {
    pub route: Route,
    /// 0: a plain subscription, at most once. 1: a durable queue, at least once.
    pub qos: u8,
    pub retain: bool,
    /// Most messages the queue holds (QoS 1).
    pub buffer: u64,
    /// The queue's name (QoS 1): `bridge.<name>.export.<n>`.
    pub queue: String,
}

fn err(bridge: &str, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Bridge {
        bridge: bridge.to_string(),
        key: key.into(),
        reason: reason.into(),
    }
}

fn unknown_keys(
    bridge: &str,
    prefix: &str,
    unknown: &BTreeMap<String, IgnoredAny>,
) -> Result<(), ConfigError> {
    match unknown.keys().next() {
        Some(k) => Err(err(
            bridge,
            format!("{prefix}{k}"),
            "unknown key (see docs/BRIDGE.md for the keys a bridge takes)",
        )),
        None => Ok(()),
    }
}

/// Checks every bridge's settings.
///
/// # Errors
///
/// A setting that is wrong, naming the bridge and the key.
pub fn validate(settings: BridgeSettings) -> Result<Vec<MqttBridge>, ConfigError> {
    let mut names = HashSet::new();
    let mut clients = HashSet::new();
    let mut bridges = Vec::with_capacity(settings.mqtt.len());
    for (i, s) in settings.mqtt.into_iter().enumerate() {
        let b = validate_one(i, s)?;
        if !names.insert(b.name.clone()) {
            return Err(err(&b.name, "name", "two bridges have this name"));
        }
        if !clients.insert((b.host.clone(), b.port, b.client_id.clone())) {
            return Err(err(
                &b.name,
                "client_id",
                format!(
                    "another bridge connects to {} with client id '{}'; the MQTT broker would disconnect one for the other",
                    b.url, b.client_id
                ),
            ));
        }
        bridges.push(b);
    }
    Ok(bridges)
}

fn validate_one(index: usize, s: MqttBridgeSettings) -> Result<MqttBridge, ConfigError> {
    let placeholder = format!("#{}", index + 1);
    let name = match s.name {
        None => return Err(err(&placeholder, "name", "every bridge needs a name")),
        Some(n) => {
            if n.is_empty()
                || n.len() > 64
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(err(
                    &placeholder,
                    "name",
                    format!("'{n}' is not a bridge name: use 1 to 64 letters, digits, '-' and '_' (it names queues and metrics)"),
                ));
            }
            n
        }
    };
    let b = name.as_str();
    unknown_keys(b, "", &s.unknown)?;
    let url = s.url.ok_or_else(|| {
        err(
            b,
            "url",
            "missing: give mqtt://host:port or mqtts://host:port",
        )
    })?;
    let (tls, host, port) = parse_url(&url).map_err(|reason| err(b, "url", reason))?;
    let client_id = s.client_id.unwrap_or_else(|| format!("tern-{name}"));
    if client_id.is_empty() || client_id.len() > 65_535 {
        return Err(err(b, "client_id", "must be 1 to 65535 bytes"));
    }
    let password = match (s.password, s.password_file) {
        (Some(_), Some(_)) => {
            return Err(err(
                b,
                "password_file",
                "give password or password_file, not both",
            ))
        }
        (Some(p), None) => Some(p),
        (None, Some(path)) => Some(read_password(&path).map_err(|r| err(b, "password_file", r))?),
        (None, None) => None,
    };
    let credentials = match (s.username, password) {
        (Some(u), p) => Some((u, Secret(p.unwrap_or_default()))),
        (None, Some(_)) => {
            return Err(err(
                b,
                "username",
                "a password needs a username (MQTT sends none without one)",
            ))
        }
        (None, None) => None,
    };
    let keep_alive = s.keep_alive.map_or(Duration::from_secs(30), |d| d.0);
    if !(keep_alive.is_zero()
        || (Duration::from_secs(1)..=Duration::from_secs(65_535)).contains(&keep_alive))
    {
        return Err(err(
            b,
            "keep_alive",
            "must be 0s (off) or from 1s to 65535s (MQTT counts it in whole seconds)",
        ));
    }
    let tls = if tls {
        Some(tls_config(
            b,
            s.ca_file.as_deref(),
            s.cert_file.as_deref(),
            s.key_file.as_deref(),
        )?)
    } else {
        for (key, v) in [
            ("ca_file", &s.ca_file),
            ("cert_file", &s.cert_file),
            ("key_file", &s.key_file),
        ] {
            if v.is_some() {
                return Err(err(
                    b,
                    key,
                    "TLS files are for mqtts:// URLs; this bridge's url is mqtt://",
                ));
            }
        }
        None
    };
    let reconnect_delay_min = s
        .reconnect_delay_min
        .map_or(Duration::from_millis(250), |d| d.0);
    let reconnect_delay_max = s
        .reconnect_delay_max
        .map_or(Duration::from_secs(30), |d| d.0);
    if reconnect_delay_min.is_zero() {
        return Err(err(b, "reconnect_delay_min", "must be longer than 0"));
    }
    if reconnect_delay_max < reconnect_delay_min {
        return Err(err(
            b,
            "reconnect_delay_max",
            "must not be shorter than reconnect_delay_min",
        ));
    }
    if s.import.is_empty() && s.export.is_empty() {
        return Err(err(
            b,
            "import",
            "a bridge needs at least one [[bridge.mqtt.import]] or [[bridge.mqtt.export]]",
        ));
    }
    let mut imports = Vec::with_capacity(s.import.len());
    for (i, im) in s.import.into_iter().enumerate() {
        let key = |k: &str| format!("import[{i}].{k}");
        unknown_keys(b, &format!("import[{i}]."), &im.unknown)?;
        if im.mqtt.is_none() {
            return Err(err(
                b,
                key("mqtt"),
                "missing: the MQTT filter to subscribe to",
            ));
        }
        let route = Route::new(im.mqtt.as_deref(), im.tern.as_deref())
            .map_err(|(side, e)| err(b, key(side), e.to_string()))?;
        imports.push(Import {
            route,
            qos: qos(b, &key("qos"), im.qos)?,
        });
    }
    let mut exports = Vec::with_capacity(s.export.len());
    for (i, ex) in s.export.into_iter().enumerate() {
        let key = |k: &str| format!("export[{i}].{k}");
        unknown_keys(b, &format!("export[{i}]."), &ex.unknown)?;
        if ex.tern.is_none() {
            return Err(err(b, key("tern"), "missing: the tern pattern to export"));
        }
        // A mismatch is blamed on the optional side, the one that adapts the mapping.
        let route = Route::new(ex.mqtt.as_deref(), ex.tern.as_deref()).map_err(|(side, e)| {
            let side = if matches!(e, mapping::MapError::Mismatch(_)) {
                "mqtt"
            } else {
                side
            };
            err(b, key(side), e.to_string())
        })?;
        let qos = qos(b, &key("qos"), ex.qos)?;
        let buffer = match (qos, ex.buffer) {
            (0, Some(_)) => {
                return Err(err(
                    b,
                    key("buffer"),
                    "only a qos = 1 export buffers messages",
                ))
            }
            (_, Some(0)) => return Err(err(b, key("buffer"), "must be at least 1")),
            (_, n) => n.unwrap_or(DEFAULT_EXPORT_BUFFER),
        };
        exports.push(Export {
            route,
            qos,
            retain: ex.retain.unwrap_or(false),
            buffer,
            queue: format!("bridge.{name}.export.{i}"),
        });
    }
    Ok(MqttBridge {
        name,
        url,
        host,
        port,
        tls,
        client_id,
        credentials,
        keep_alive,
        clean_session: s.clean_session.unwrap_or(false),
        reconnect_delay_min,
        reconnect_delay_max,
        imports,
        exports,
    })
}

fn qos(bridge: &str, key: &str, qos: Option<u8>) -> Result<u8, ConfigError> {
    match qos.unwrap_or(1) {
        q @ (0 | 1) => Ok(q),
        q => Err(err(
            bridge,
            key,
            format!(
                "{q} is not a QoS the bridge offers: use 0 (at most once) or 1 (at least once)"
            ),
        )),
    }
}

/// `mqtt://host[:port]` or `mqtts://host[:port]` → (tls, host, port).
fn parse_url(url: &str) -> Result<(bool, String, u16), String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else {
        return Err(format!(
            "'{url}' is not an MQTT URL: use mqtt://host:port, or mqtts://host:port for TLS"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "'{url}' has a path, query or user part: give only host and port (and username/password as their own keys)"
        ));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("'{url}': an IPv6 address needs its closing ']'"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("'{url}': expected ':port' after ']'"))?,
            ),
        };
        (format!("[{addr}]"), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("'{url}' has no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("'{url}': '{p}' is not a port number")),
        },
    };
    Ok((tls, host, port))
}

fn read_password(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

/// The rustls client settings of an `mqtts://` bridge: `ca_file`'s certificates as
/// roots (the system's when there is none), and a client certificate if both
/// `cert_file` and `key_file` are given.
fn tls_config(
    b: &str,
    ca_file: Option<&Path>,
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let read_certs =
        |key: &str, path: &Path| -> Result<Vec<CertificateDer<'static>>, ConfigError> {
            if !path.is_file() {
                return Err(err(
                    b,
                    key,
                    format!("cannot read {}: no such file", path.display()),
                ));
            }
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    err(
                        b,
                        key,
                        format!("cannot read certificates from {}: {e}", path.display()),
                    )
                })?;
            if certs.is_empty() {
                return Err(err(
                    b,
                    key,
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            Ok(certs)
        };
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certs("ca_file", path)? {
                roots.add(cert).map_err(|e| {
                    err(
                        b,
                        "ca_file",
                        format!("{}: not a usable CA certificate: {e}", path.display()),
                    )
                })?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system certificate rustls cannot use is skipped, as browsers do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(err(
                    b,
                    "ca_file",
                    "no ca_file given and no system root certificates found: give the CA that signed the MQTT broker's certificate",
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(b, "url", format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let config = match (cert_file, key_file) {
        (Some(cert), Some(key)) => {
            let certs = read_certs("cert_file", cert)?;
            if !key.is_file() {
                return Err(err(
                    b,
                    "key_file",
                    format!("cannot read {}: no such file", key.display()),
                ));
            }
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                err(
                    b,
                    "key_file",
                    format!("no PEM private key in {}: {e}", key.display()),
                )
            })?;
            builder.with_client_auth_cert(certs, key_der).map_err(|e| {
                err(
                    b,
                    "key_file",
                    format!("the key does not fit the certificate: {e}"),
                )
            })?
        }
        (Some(_), None) => return Err(err(b, "key_file", "cert_file needs key_file too")),
        (None, Some(_)) => return Err(err(b, "cert_file", "key_file needs cert_file too")),
        (None, None) => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<Vec<MqttBridge>, ConfigError> {
        let s: BridgeSettings = toml::from_str(toml).unwrap();
        validate(s)
    }

    fn error(toml: &str) -> String {
        parse(toml).unwrap_err().to_string()
    }

    const GOOD: &str = r#"
        [[mqtt]]
        name = "site-a"
        url = "mqtt://127.0.0.1:1883"
        client_id = "tern-site-a"
        username = "u"
        password = "p"
        keep_alive = "30s"
        clean_session = false
          [[mqtt.import]]
          mqtt = "sensors/+/temperature"
          tern = "sensors.*.temperature"
          qos = 1
          [[mqtt.export]]
          tern = "commands.>"
          mqtt = "commands/#"
          qos = 1
          retain = false
          buffer = 500
    "#;

    #[test]
    fn the_issue_example_validates() {
        let b = parse(GOOD).unwrap();
        assert_eq!(b.len(), 1);
        let b = &b[0];
        assert_eq!((b.host.as_str(), b.port), ("127.0.0.1", 1883));
        assert_eq!(b.imports[0].route.tern_pattern(), "sensors.*.temperature");
        assert_eq!(b.exports[0].queue, "bridge.site-a.export.0");
        assert_eq!(b.exports[0].buffer, 500);
        assert!(
            !format!("{b:?}").contains("\"p\""),
            "the password is not shown"
        );
    }

    #[test]
    fn defaults_fill_in() {
        let b =
            parse("[[mqtt]]\nname = \"x\"\nurl = \"mqtt://h\"\n[[mqtt.export]]\ntern = \"a.*\"\n")
                .unwrap();
        let b = &b[0];
        assert_eq!(b.port, 1883);
        assert_eq!(b.client_id, "tern-x");
        assert_eq!(b.exports[0].route.mqtt_filter(), "a/+");
        assert_eq!(b.exports[0].qos, 1);
        assert_eq!(b.exports[0].buffer, DEFAULT_EXPORT_BUFFER);
        assert!(!b.clean_session);
    }

    #[test]
    fn errors_name_the_bridge_and_the_key() {
        let cases = [
            (
                GOOD.replace("tern = \"sensors.*.temperature\"", "tern = \"sensors.>\""),
                "import[0].tern",
            ),
            (
                GOOD.replace("mqtt = \"commands/#\"", "mqtt = \"commands/+\""),
                "export[0].mqtt",
            ),
            (GOOD.replace("keep_alive", "keepalive"), "keepalive"),
            (
                GOOD.replace("retain = false", "retain = false\n reatin = true"),
                "export[0].reatin",
            ),
            (GOOD.replace("mqtt://127", "http://127"), "url"),
            (
                GOOD.replace("mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:99999"),
                "url",
            ),
            (
                GOOD.replace(
                    "qos = 1\n          [[mqtt.export]]",
                    "qos = 2\n          [[mqtt.export]]",
                ),
                "import[0].qos",
            ),
            (
                GOOD.replace(
                    "password = \"p\"",
                    "password = \"p\"\npassword_file = \"/x\"",
                ),
                "password_file",
            ),
            (
                GOOD.replace("buffer = 500", "buffer = 0"),
                "export[0].buffer",
            ),
            (
                GOOD.replace("clean_session = false", "ca_file = \"/x\""),
                "ca_file",
            ),
            (
                GOOD.replace("mqtt://127.0.0.1:1883", "mqtts://127.0.0.1")
                    .replace("clean_session = false", "ca_file = \"/no/such/ca.pem\""),
                "ca_file",
            ),
            (
                GOOD.replace("password = \"p\"", "password_file = \"/no/such/file\""),
                "password_file",
            ),
            (
                GOOD.replace("name = \"site-a\"", "name = \"site a\""),
                "name",
            ),
        ];
        for (toml, key) in cases {
            let e = error(&toml);
            assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
            assert!(e.contains("bridge '"), "{key}: {e}");
        }
        let twice = format!("{GOOD}\n{}", GOOD.replace("tern-site-a", "other"));
        assert!(error(&twice).contains("two bridges have this name"));
        let e = error("[[mqtt]]\nurl = \"mqtt://h\"");
        assert!(e.contains("bridge '#1'") && e.contains("`name`"), "{e}");
    }

    /// The commented example in config/ternd.toml, uncommented, is a valid bridge (less
    /// the files it names, which do not exist here).
    #[test]
    fn the_shipped_example_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/ternd.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text
            .find("# [[bridge.mqtt]]")
            .expect("the example is there");
        let toml: String = text[start..]
            .lines()
            .map(|l| l.trim_start_matches('#').trim())
            .filter(|l| {
                let key = l.split(" = ").next().unwrap_or("");
                (l.starts_with("[[")
                    || (l.contains(" = ")
                        && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')))
                    && !key.ends_with("_file")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let settings = crate::Settings::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let b = validate(settings.bridge.unwrap()).unwrap();
        assert_eq!(b[0].name, "site-a");
        assert_eq!(b[0].imports.len(), 1);
        assert_eq!(b[0].exports[0].buffer, DEFAULT_EXPORT_BUFFER);
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtts://broker.example"),
            Ok((true, "broker.example".into(), 8883))
        );
        assert_eq!(
            parse_url("mqtt://[::1]:1884/"),
            Ok((false, "[::1]".into(), 1884))
        );
        for bad in [
            "tcp://h",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://u@h",
            "mqtt://h/path",
            "mqtt://[::1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
