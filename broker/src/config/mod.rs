//! Broker configuration: flags, environment, TOML file, defaults.
//!
//! Every setting has a flag (`--max-frame-size`), an environment variable
//! (`TERN_MAX_FRAME_SIZE`) and a TOML key (`limits.max_frame_size`). One [`Settings`]
//! struct is both the clap argument set (which reads the environment for a missing flag)
//! and the file format, so the three can never drift apart. Precedence: flag, then
//! environment, then file, then the default in [`Config::default`].

pub mod bridge;
pub mod cluster;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::acl::PermissionSettings;
use crate::auth::{Auth, UserSettings};
use crate::filter::FilterLimits;
use crate::tls::{TlsError, TlsFiles};
use tern_codec::{SubjectLimits, MAX_FRAME_SIZE_LIMIT};

use self::bridge::{BridgeSettings, MqttBridge};
use self::cluster::{ClusterConfig, ClusterSettings};

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}, line {line} column {column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("bridge '{bridge}': invalid value for `{key}`: {reason}")]
    Bridge {
        bridge: String,
        key: String,
        reason: String,
    },
    /// As `Invalid`, for keys that are built at run time (`users[alice].password_hash`).
    #[error("invalid value for `{key}`: {reason}")]
    Setting { key: String, reason: String },
}

/// What to do with a subscriber whose outbound buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumerPolicy {
    /// Drop QoS 0 messages for that subscriber and count them; the connection stays.
    #[default]
    Drop,
    /// Send `slow_consumer` and close the connection.
    Disconnect,
}

/// When the store is made durable (fsync'd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Before any confirm: a confirmed message survives a crash or power cut. Writes
    /// from many publishers share each fsync (group commit).
    Always,
    /// At most this long after a write. Confirms go out before the fsync: a crash can
    /// lose what was confirmed in the last interval.
    Interval(Duration),
    /// Never explicitly; the operating system writes back when it likes. A crash can
    /// lose confirmed messages.
    Never,
}

impl FromStr for SyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(SyncPolicy::Always),
            "never" => Ok(SyncPolicy::Never),
            _ => match s.strip_prefix("interval:") {
                Some(d) => HumanDuration::from_str(d)
                    .and_then(|HumanDuration(d)| {
                        if d.is_zero() {
                            Err("the interval must be longer than 0".to_string())
                        } else {
                            Ok(SyncPolicy::Interval(d))
                        }
                    }),
                None => Err(format!(
                    "'{s}' is not a sync policy: use always, never or interval:<duration> (e.g. interval:100ms)"
                )),
            },
        }
    }
}

impl fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncPolicy::Always => f.write_str("always"),
            SyncPolicy::Never => f.write_str("never"),
            SyncPolicy::Interval(d) => write!(f, "interval:{}", humantime::format_duration(*d)),
        }
    }
}

/// A listen address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    On(SocketAddr),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        s.parse()
            .map(Listen::On)
            .map_err(|_| format!("'{s}' is not an address like 127.0.0.1:9464, or 'off'"))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Off => f.write_str("off"),
            Listen::On(a) => a.fmt(f),
        }
    }
}

/// A duration written the human way: `30s`, `500ms`, `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| format!("'{s}' is not a duration like 30s or 500ms ({e})"))
    }
}

/// Deserializes any `FromStr` type from a TOML string, keeping its error message.
macro_rules! deserialize_from_str {
    ($($t:ty),*) => {
        $(impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        })*
    };
}
deserialize_from_str!(Listen, HumanDuration, SyncPolicy);

/// Settings as given: every field optional, so that layers can be merged.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address for plaintext tern protocol clients, or `off` (then a TLS listener is
    /// needed) [default: 127.0.0.1:7400]
    #[arg(long, env = "TERN_LISTEN", value_name = "ADDR|off")]
    pub listen: Option<Listen>,

    /// Directory of the embedded store [default: ./tern-data]
    #[arg(long, env = "TERN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address of the Prometheus /metrics endpoint, or `off` [default: 127.0.0.1:9464]
    #[arg(long, env = "TERN_METRICS_LISTEN", value_name = "ADDR|off")]
    pub metrics_listen: Option<Listen>,

    /// How long shutdown waits for connections to flush before closing them [default: 5s]
    #[arg(long, env = "TERN_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<HumanDuration>,

    #[command(flatten)]
    #[serde(default)]
    pub limits: LimitSettings,

    #[command(flatten)]
    #[serde(default)]
    pub store: StoreSettings,

    #[command(flatten)]
    #[serde(default)]
    pub queues: QueueSettings,

    /// MQTT bridges: only in the config file.
    #[arg(skip)]
    pub bridge: Option<BridgeSettings>,

    #[command(flatten)]
    #[serde(default)]
    pub tls: TlsSettings,

    #[command(flatten)]
    #[serde(default)]
    pub cluster: ClusterSettings,

    /// Whether clients without credentials may connect [default: true without users, false with]
    #[arg(long, env = "TERN_ALLOW_ANONYMOUS", value_name = "BOOL")]
    pub allow_anonymous: Option<bool>,

    /// Users: only in the config file.
    #[arg(skip)]
    #[serde(default)]
    pub users: Vec<UserSettings>,

    /// What anonymous clients may do when they are allowed: only in the config file.
    #[arg(skip)]
    pub anonymous: Option<PermissionSettings>,
}

/// The `[tls]` table.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Address of the TLS listener, or `off` [default: off]
    #[arg(
        id = "tls_listen",
        long = "tls-listen",
        env = "TERN_TLS_LISTEN",
        value_name = "ADDR|off"
    )]
    pub listen: Option<Listen>,

    /// The server's certificate chain, PEM
    #[arg(
        id = "tls_cert",
        long = "tls-cert",
        env = "TERN_TLS_CERT",
        value_name = "FILE"
    )]
    pub cert: Option<PathBuf>,

    /// The server's private key, PEM
    #[arg(
        id = "tls_key",
        long = "tls-key",
        env = "TERN_TLS_KEY",
        value_name = "FILE"
    )]
    pub key: Option<PathBuf>,

    /// CA certificates, PEM: when set, TLS clients must present a certificate signed by one of them
    #[arg(
        id = "tls_client_ca",
        long = "tls-client-ca",
        env = "TERN_TLS_CLIENT_CA",
        value_name = "FILE"
    )]
    pub client_ca: Option<PathBuf>,
}

/// The `[store]` table.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// When to fsync: always, interval:<duration> or never [default: always]
    #[arg(long, env = "TERN_SYNC", value_name = "POLICY")]
    pub sync: Option<SyncPolicy>,

    /// Most (producer, sequence) pairs remembered for exactly-once publishing [default: 1000000]
    #[arg(long, env = "TERN_DEDUP_WINDOW", value_name = "N")]
    pub dedup_window: Option<usize>,

    /// How long a (producer, sequence) pair is remembered [default: 10m]
    #[arg(long, env = "TERN_DEDUP_AGE", value_name = "DURATION")]
    pub dedup_age: Option<HumanDuration>,

    /// Free bytes the store's filesystem must keep: below it new messages are refused
    /// until space is freed (the disk alarm) [default: 67108864, 64 MiB]
    #[arg(long, env = "TERN_MIN_FREE_BYTES", value_name = "BYTES")]
    pub min_free_bytes: Option<u64>,

    /// Bytes of the store engine's page cache [default: 16777216, 16 MiB]
    #[arg(
        long = "store-cache-bytes",
        env = "TERN_STORE_CACHE_BYTES",
        value_name = "BYTES"
    )]
    pub cache_bytes: Option<u64>,
}

/// The `[queues]` table: defaults for queues declared without these options.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// Delivery attempts before a message is dead-lettered [default: 5]
    #[arg(
        long = "queue-max-deliver",
        env = "TERN_QUEUE_MAX_DELIVER",
        value_name = "N"
    )]
    pub max_deliver: Option<u32>,

    /// Time a consumer has to settle a delivery before it is redelivered [default: 30s]
    #[arg(
        long = "queue-ack-timeout",
        env = "TERN_QUEUE_ACK_TIMEOUT",
        value_name = "DURATION"
    )]
    pub ack_timeout: Option<HumanDuration>,

    /// Bytes of message bodies each queue keeps in memory; the rest is read back from the store when delivered [default: 4194304]
    #[arg(long = "queue-memory", env = "TERN_QUEUE_MEMORY", value_name = "BYTES")]
    pub memory: Option<usize>,

    /// Largest prefetch (unsettled deliveries) a consumer may ask for [default: 10000]
    #[arg(
        long = "queue-max-prefetch",
        env = "TERN_QUEUE_MAX_PREFETCH",
        value_name = "N"
    )]
    pub max_prefetch: Option<u32>,
}

/// The `[limits]` table.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest frame accepted, in bytes; at most 64 MiB [default: 1048576]
    #[arg(long, env = "TERN_MAX_FRAME_SIZE", value_name = "BYTES")]
    pub max_frame_size: Option<u32>,

    /// Most client connections at once [default: 10000]
    #[arg(long, env = "TERN_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most subscriptions one connection may hold [default: 10000]
    #[arg(long, env = "TERN_MAX_SUBSCRIPTIONS", value_name = "N")]
    pub max_subscriptions: Option<usize>,

    /// Most headers one message may carry [default: 64]
    #[arg(long, env = "TERN_MAX_HEADERS", value_name = "N")]
    pub max_headers: Option<usize>,

    /// Longest subject or pattern, in bytes [default: 1024]
    #[arg(long, env = "TERN_MAX_SUBJECT_LEN", value_name = "BYTES")]
    pub max_subject_len: Option<usize>,

    /// Most tokens in a subject or pattern [default: 128]
    #[arg(long, env = "TERN_MAX_SUBJECT_TOKENS", value_name = "N")]
    pub max_subject_tokens: Option<usize>,

    /// Bytes that may wait to be written to one connection before the slow-consumer policy applies [default: 4194304]
    #[arg(long, env = "TERN_MAX_PENDING_BYTES", value_name = "BYTES")]
    pub max_pending_bytes: Option<usize>,

    /// What to do with a subscriber that does not keep up [default: drop]
    #[arg(long, env = "TERN_SLOW_CONSUMER", value_name = "POLICY")]
    pub slow_consumer: Option<SlowConsumerPolicy>,

    /// Time a new connection has to send HELLO [default: 5s]
    #[arg(long, env = "TERN_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
    pub handshake_timeout: Option<HumanDuration>,

    /// Time one socket write may take before the connection is considered dead [default: 10s]
    #[arg(long, env = "TERN_WRITE_TIMEOUT", value_name = "DURATION")]
    pub write_timeout: Option<HumanDuration>,

    /// Most connections from one IP address at once [default: 1000]
    #[arg(long, env = "TERN_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,

    /// A connection silent this long is pinged, and closed if it stays silent as long again [default: 2m]
    #[arg(long, env = "TERN_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<HumanDuration>,

    /// Longest content filter, in bytes [default: 4096]
    #[arg(long, env = "TERN_MAX_FILTER_LEN", value_name = "BYTES")]
    pub max_filter_len: Option<usize>,

    /// Deepest nesting in a content filter; at most 128 [default: 64]
    #[arg(long, env = "TERN_MAX_FILTER_DEPTH", value_name = "N")]
    pub max_filter_depth: Option<usize>,

    /// Most values in one IN list of a content filter [default: 1024]
    #[arg(long, env = "TERN_MAX_FILTER_IN_ITEMS", value_name = "N")]
    pub max_filter_in_items: Option<usize>,
}

impl Settings {
    /// Reads a TOML file.
    ///
    /// # Errors
    ///
    /// The file cannot be read, is not TOML, or has an unknown key (named in the error).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_file_text(path, &text)
    }

    /// Parses `text`, the contents of the config file at `path`, exactly as
    /// [`Settings::from_file`] does once it has read the file (the fuzz target's way
    /// in, without a file per input).
    ///
    /// # Errors
    ///
    /// A [`ConfigError::Parse`] with the position, on one line: not TOML, a wrong type
    /// or an unknown key.
    pub fn from_file_text(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::from_toml(text).map_err(|e| {
            // toml's own message spans several lines (a snippet with a caret); one
            // line with the position reads better in a terminal and in a log.
            let offset = e.span().map_or(0, |s| s.start);
            let before = text.get(..offset).unwrap_or_default();
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: one_line(e.message().trim()),
            }
        })
    }

    /// Parses TOML text.
    ///
    /// # Errors
    ///
    /// Not TOML, a wrong type, or an unknown key.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// `self` where set, `lower` elsewhere.
    ///
    /// Every field is named in the patterns below (none is skipped with `..`), so a new
    /// setting cannot be forgotten here: the file's users or TLS being dropped under
    /// the flags would leave a broker open to everyone.
    pub fn over(self, lower: Settings) -> Settings {
        /// Takes each listed field of `$hi` or, where unset, of `$lo`, which is
        /// destructured exhaustively.
        macro_rules! over {
            ($hi:expr, $lo:expr, $ty:ident { $($field:ident),* $(,)? }) => {{
                let $ty { $($field),* } = $lo;
                $( $hi.$field = $hi.$field.or($field); )*
            }};
        }
        let mut hi = self;
        let Settings {
            listen,
            data_dir,
            metrics_listen,
            shutdown_timeout,
            limits,
            store,
            queues,
            bridge,
            tls,
            cluster,
            allow_anonymous,
            users,
            anonymous,
        } = lower;
        hi.cluster = hi.cluster.over(cluster);
        hi.listen = hi.listen.or(listen);
        hi.data_dir = hi.data_dir.or(data_dir);
        hi.metrics_listen = hi.metrics_listen.or(metrics_listen);
        hi.shutdown_timeout = hi.shutdown_timeout.or(shutdown_timeout);
        hi.bridge = hi.bridge.or(bridge);
        hi.allow_anonymous = hi.allow_anonymous.or(allow_anonymous);
        hi.anonymous = hi.anonymous.or(anonymous);
        if hi.users.is_empty() {
            hi.users = users;
        }
        over!(
            hi.limits,
            limits,
            LimitSettings {
                max_frame_size,
                max_connections,
                max_subscriptions,
                max_headers,
                max_subject_len,
                max_subject_tokens,
                max_pending_bytes,
                slow_consumer,
                handshake_timeout,
                write_timeout,
                max_connections_per_ip,
                idle_timeout,
                max_filter_len,
                max_filter_depth,
                max_filter_in_items,
            }
        );
        over!(
            hi.store,
            store,
            StoreSettings {
                sync,
                dedup_window,
                dedup_age,
                min_free_bytes,
                cache_bytes,
            }
        );
        over!(
            hi.queues,
            queues,
            QueueSettings {
                max_deliver,
                ack_timeout,
                memory,
                max_prefetch,
            }
        );
        over!(
            hi.tls,
            tls,
            TlsSettings {
                listen,
                cert,
                key,
                client_ca,
            }
        );
        hi
    }
}

/// `s` with its control characters escaped (`\n`, `\u{1b}`), so that a message
/// quoting the file (an unknown key is quoted as written, and a quoted TOML key may
/// hold a newline) stays on one line.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// The broker's resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The plaintext listener; `Off` only with a TLS listener.
    pub listen: Listen,
    pub data_dir: PathBuf,
    pub metrics_listen: Listen,
    pub shutdown_timeout: Duration,
    pub limits: Limits,
    pub store: StoreConfig,
    pub queues: QueueDefaults,
    pub bridges: Vec<MqttBridge>,
    /// The TLS listener, if on.
    pub tls: Option<TlsListen>,
    /// Users, tokens and the anonymous policy.
    pub auth: Arc<Auth>,
    /// This node's place in a cluster; `None`: a single node.
    pub cluster: Option<ClusterConfig>,
}

/// Where the TLS listener listens and what it presents.
#[derive(Debug, Clone)]
pub struct TlsListen {
    pub listen: SocketAddr,
    pub files: TlsFiles,
}

/// How the store is written.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub sync: SyncPolicy,
    pub dedup_window: usize,
    pub dedup_age: Duration,
    /// Below this many free bytes on the store's filesystem, new messages are refused.
    pub min_free_bytes: u64,
    /// The store engine's page cache.
    pub cache_bytes: u64,
}

/// Defaults and limits for queues.
#[derive(Debug, Clone)]
pub struct QueueDefaults {
    pub max_deliver: u32,
    pub ack_timeout: Duration,
    pub memory: usize,
    pub max_prefetch: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            sync: SyncPolicy::Always,
            dedup_window: 1_000_000,
            dedup_age: Duration::from_secs(600),
            min_free_bytes: 64 << 20,
            cache_bytes: tern_storage::DEFAULT_CACHE_BYTES,
        }
    }
}

impl Default for QueueDefaults {
    fn default() -> Self {
        Self {
            max_deliver: 5,
            ack_timeout: Duration::from_secs(30),
            // Read-back goes a chunk at a time, so a small budget costs little speed:
            // tern-bench queue (200 k x 128 B) consumed a median 367 k msgs/s with
            // 4 MiB and 348 k with 8 MiB, and ternd peaked at 37 MB against 46 MB.
            memory: 4 * 1024 * 1024,
            max_prefetch: 10_000,
        }
    }
}

/// Resource limits. Every buffer a peer can fill is bounded by one of these.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_frame_size: u32,
    pub max_connections: usize,
    pub max_subscriptions: usize,
    pub max_headers: usize,
    pub subject: SubjectLimits,
    pub max_pending_bytes: usize,
    pub slow_consumer: SlowConsumerPolicy,
    pub handshake_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections_per_ip: usize,
    pub idle_timeout: Duration,
    pub filter: FilterLimits,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Listen::On(SocketAddr::from(([127, 0, 0, 1], 7400))),
            data_dir: PathBuf::from("./tern-data"),
            metrics_listen: Listen::On(SocketAddr::from(([127, 0, 0, 1], 9464))),
            shutdown_timeout: Duration::from_secs(5),
            limits: Limits::default(),
            store: StoreConfig::default(),
            queues: QueueDefaults::default(),
            bridges: Vec::new(),
            tls: None,
            auth: Arc::default(),
            cluster: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_size: tern_codec::DEFAULT_MAX_FRAME_SIZE,
            max_connections: 10_000,
            max_subscriptions: 10_000,
            max_headers: 64,
            subject: SubjectLimits::default(),
            max_pending_bytes: 8 * 1024 * 1024,
            slow_consumer: SlowConsumerPolicy::Drop,
            handshake_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_connections_per_ip: 1000,
            idle_timeout: Duration::from_secs(120),
            filter: FilterLimits::default(),
        }
    }
}

fn at_least<T: PartialOrd + fmt::Display + Copy>(
    key: &'static str,
    value: Option<T>,
    min: T,
) -> Result<Option<T>, ConfigError> {
    match value {
        Some(v) if v < min => Err(ConfigError::Invalid {
            key,
            reason: format!("{v} is below the minimum of {min}"),
        }),
        v => Ok(v),
    }
}

/// Highest `limits.max_filter_depth`: the parser recurses once per level, and 128
/// levels stay well inside a worker thread's stack even in a debug build.
const MAX_FILTER_DEPTH: usize = 128;

fn within(
    key: &'static str,
    value: Option<usize>,
    range: std::ops::RangeInclusive<usize>,
) -> Result<Option<usize>, ConfigError> {
    match value {
        Some(v) if !range.contains(&v) => Err(ConfigError::Invalid {
            key,
            reason: format!("{v} is outside {}..={}", range.start(), range.end()),
        }),
        v => Ok(v),
    }
}

fn nonzero_duration(
    key: &'static str,
    value: Option<HumanDuration>,
) -> Result<Option<Duration>, ConfigError> {
    match value {
        Some(HumanDuration(d)) if d.is_zero() => Err(ConfigError::Invalid {
            key,
            reason: "must be longer than 0".into(),
        }),
        v => Ok(v.map(|d| d.0)),
    }
}

impl Config {
    /// Applies `settings` over the defaults and checks every value.
    ///
    /// # Errors
    ///
    /// A value out of range, naming its key.
    pub fn from_settings(s: Settings) -> Result<Self, ConfigError> {
        let d = Config::default();
        let l = s.limits.clone();
        let max_frame_size = at_least("limits.max_frame_size", l.max_frame_size, 1024)?
            .unwrap_or(d.limits.max_frame_size);
        if max_frame_size > MAX_FRAME_SIZE_LIMIT {
            return Err(ConfigError::Invalid {
                key: "limits.max_frame_size",
                reason: format!(
                    "{max_frame_size} is above the maximum of {MAX_FRAME_SIZE_LIMIT} (64 MiB)"
                ),
            });
        }
        let max_pending_bytes = at_least("limits.max_pending_bytes", l.max_pending_bytes, 1024)?
            .unwrap_or(d.limits.max_pending_bytes);
        let listen = s.listen.unwrap_or(d.listen);
        // Peer links present the same certificate as the TLS listener, if any.
        let tls_files = match (&s.tls.cert, &s.tls.key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: s.tls.client_ca.clone(),
            }),
            _ => None,
        };
        let cluster = cluster::validate(s.cluster, tls_files.as_ref())?;
        let tls = tls_listen(s.tls)?;
        if listen == Listen::Off && tls.is_none() {
            return Err(ConfigError::Invalid {
                key: "listen",
                reason: "is off and there is no TLS listener (tls.listen): no client could connect"
                    .into(),
            });
        }
        Ok(Config {
            listen,
            data_dir: s.data_dir.unwrap_or(d.data_dir),
            metrics_listen: s.metrics_listen.unwrap_or(d.metrics_listen),
            shutdown_timeout: s.shutdown_timeout.map_or(d.shutdown_timeout, |t| t.0),
            limits: Limits {
                max_frame_size,
                max_connections: at_least("limits.max_connections", l.max_connections, 1)?
                    .unwrap_or(d.limits.max_connections),
                max_subscriptions: at_least("limits.max_subscriptions", l.max_subscriptions, 1)?
                    .unwrap_or(d.limits.max_subscriptions),
                max_headers: l.max_headers.unwrap_or(d.limits.max_headers),
                subject: SubjectLimits {
                    max_len: at_least("limits.max_subject_len", l.max_subject_len, 1)?
                        .unwrap_or(d.limits.subject.max_len),
                    max_tokens: at_least("limits.max_subject_tokens", l.max_subject_tokens, 1)?
                        .unwrap_or(d.limits.subject.max_tokens),
                },
                max_pending_bytes,
                slow_consumer: l.slow_consumer.unwrap_or(d.limits.slow_consumer),
                handshake_timeout: nonzero_duration(
                    "limits.handshake_timeout",
                    l.handshake_timeout,
                )?
                .unwrap_or(d.limits.handshake_timeout),
                write_timeout: nonzero_duration("limits.write_timeout", l.write_timeout)?
                    .unwrap_or(d.limits.write_timeout),
                max_connections_per_ip: at_least(
                    "limits.max_connections_per_ip",
                    l.max_connections_per_ip,
                    1,
                )?
                .unwrap_or(d.limits.max_connections_per_ip),
                idle_timeout: nonzero_duration("limits.idle_timeout", l.idle_timeout)?
                    .unwrap_or(d.limits.idle_timeout),
                filter: FilterLimits {
                    max_len: at_least("limits.max_filter_len", l.max_filter_len, 1)?
                        .unwrap_or(d.limits.filter.max_len),
                    max_depth: within(
                        "limits.max_filter_depth",
                        l.max_filter_depth,
                        1..=MAX_FILTER_DEPTH,
                    )?
                    .unwrap_or(d.limits.filter.max_depth),
                    max_in_items: at_least("limits.max_filter_in_items", l.max_filter_in_items, 1)?
                        .unwrap_or(d.limits.filter.max_in_items),
                },
            },
            store: StoreConfig {
                sync: s.store.sync.unwrap_or(d.store.sync),
                dedup_window: at_least("store.dedup_window", s.store.dedup_window, 1)?
                    .unwrap_or(d.store.dedup_window),
                dedup_age: nonzero_duration("store.dedup_age", s.store.dedup_age)?
                    .unwrap_or(d.store.dedup_age),
                min_free_bytes: s.store.min_free_bytes.unwrap_or(d.store.min_free_bytes),
                cache_bytes: s.store.cache_bytes.unwrap_or(d.store.cache_bytes),
            },
            queues: QueueDefaults {
                max_deliver: at_least("queues.max_deliver", s.queues.max_deliver, 1)?
                    .unwrap_or(d.queues.max_deliver),
                ack_timeout: nonzero_duration("queues.ack_timeout", s.queues.ack_timeout)?
                    .unwrap_or(d.queues.ack_timeout),
                memory: s.queues.memory.unwrap_or(d.queues.memory),
                max_prefetch: at_least("queues.max_prefetch", s.queues.max_prefetch, 1)?
                    .unwrap_or(d.queues.max_prefetch),
            },
            bridges: bridge::validate(s.bridge.unwrap_or_default())?,
            tls,
            auth: Arc::new(
                Auth::new(
                    s.users,
                    s.allow_anonymous,
                    s.anonymous.unwrap_or_default(),
                    &SubjectLimits {
                        max_len: l.max_subject_len.unwrap_or(d.limits.subject.max_len),
                        max_tokens: l.max_subject_tokens.unwrap_or(d.limits.subject.max_tokens),
                    },
                )
                .map_err(|(key, reason)| ConfigError::Setting { key, reason })?,
            ),
            cluster,
        })
    }
}

/// The TLS listener's settings, checked: a listen address needs a certificate and a
/// key, and every file must be readable and usable.
fn tls_listen(t: TlsSettings) -> Result<Option<TlsListen>, ConfigError> {
    let listen = match t.listen {
        None | Some(Listen::Off) => return Ok(None),
        Some(Listen::On(addr)) => addr,
    };
    let missing = |key| ConfigError::Invalid {
        key,
        reason: "the TLS listener needs it (a PEM file)".into(),
    };
    let files = TlsFiles {
        cert: t.cert.ok_or_else(|| missing("tls.cert"))?,
        key: t.key.ok_or_else(|| missing("tls.key"))?,
        client_ca: t.client_ca,
    };
    files.load().map_err(|e| ConfigError::Setting {
        key: match &e {
            TlsError::Read { path, .. } | TlsError::NoCertificate { path }
                if Some(path) == files.client_ca.as_ref() =>
            {
                "tls.client_ca".into()
            }
            TlsError::Read { path, .. } | TlsError::NoCertificate { path }
                if *path == files.key =>
            {
                "tls.key".into()
            }
            _ => "tls.cert".into(),
        },
        reason: e.to_string(),
    })?;
    Ok(Some(TlsListen { listen, files }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_parse() {
        let s = Settings::from_toml(
            r#"
            listen = "0.0.0.0:7500"
            metrics_listen = "off"
            shutdown_timeout = "2s"
            [limits]
            max_frame_size = 2048
            slow_consumer = "disconnect"
            handshake_timeout = "250ms"
            "#,
        )
        .unwrap();
        let c = Config::from_settings(s).unwrap();
        assert_eq!(c.listen, "0.0.0.0:7500".parse().unwrap());
        assert_eq!(c.metrics_listen, Listen::Off);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.max_frame_size, 2048);
        assert_eq!(c.limits.slow_consumer, SlowConsumerPolicy::Disconnect);
        assert_eq!(c.limits.handshake_timeout, Duration::from_millis(250));
        assert_eq!(c.limits.max_connections, 10_000, "default kept");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Settings::from_toml("[limits]\nmax_frame_sise = 5").unwrap_err();
        assert!(err.to_string().contains("max_frame_sise"), "{err}");
        let err = Settings::from_toml("lissen = \"x\"").unwrap_err();
        assert!(err.to_string().contains("lissen"), "{err}");
    }

    #[test]
    fn file_errors_are_one_line_with_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\n[limits]\nmax_frame_sise = 5\n",
        )
        .unwrap();
        let err = Settings::from_file(&path).unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("line 3 column 1"), "{err}");
        assert!(err.contains("max_frame_sise"), "{err}");
    }

    /// Found by the `config` fuzz target: a quoted key holding a newline, quoted back
    /// in the "unknown field" message, broke the error over two lines.
    #[test]
    fn file_errors_stay_on_one_line_whatever_the_keys_hold() {
        let err = Settings::from_file_text(Path::new("t.toml"), "\"a\\nb\" = 1\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("unknown field `a\\nb`"), "{err}");
        let err = Settings::from_file_text(Path::new("t.toml"), "\"\\u001b[2J\" = 1")
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\u{1b}'), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = Settings::from_toml("metrics_listen = \"nowhere\"").unwrap_err();
        assert!(err.to_string().contains("nowhere"), "{err}");
        let s = Settings::from_toml("[limits]\nmax_frame_size = 100000000").unwrap();
        let err = Config::from_settings(s).unwrap_err();
        assert!(err.to_string().contains("limits.max_frame_size"), "{err}");
        let s = Settings::from_toml("[limits]\nwrite_timeout = \"0s\"").unwrap();
        let err = Config::from_settings(s).unwrap_err();
        assert!(err.to_string().contains("limits.write_timeout"), "{err}");
    }

    #[test]
    fn sync_policies_parse() {
        let s = Settings::from_toml("[store]\nsync = \"interval:250ms\"").unwrap();
        assert_eq!(
            Config::from_settings(s).unwrap().store.sync,
            SyncPolicy::Interval(Duration::from_millis(250))
        );
        for bad in ["sometimes", "interval:", "interval:0s", "interval:fast"] {
            let err = Settings::from_toml(&format!("[store]\nsync = \"{bad}\"")).unwrap_err();
            assert!(err.to_string().contains("sync"), "{bad}: {err}");
        }
        let c = Config::from_settings(Settings::default()).unwrap();
        assert_eq!(c.store.sync, SyncPolicy::Always);
    }

    #[test]
    fn higher_layer_wins() {
        let file =
            Settings::from_toml("listen = \"127.0.0.1:1\"\n[limits]\nmax_headers = 3").unwrap();
        let flags = Settings {
            listen: Some("127.0.0.1:2".parse().unwrap()),
            ..Settings::default()
        };
        let c = Config::from_settings(flags.over(file)).unwrap();
        assert_eq!(c.listen, Listen::On("127.0.0.1:2".parse().unwrap()));
        assert_eq!(c.limits.max_headers, 3);
    }

    #[test]
    fn file_only_tables_survive_the_flags() {
        // Users, anonymous permissions and TLS files can only come from the file: the
        // flag layer (all unset) must not drop them.
        let file = Settings::from_toml(
            r#"
            allow_anonymous = true
            [[users]]
            name = "alice"
            token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            [anonymous]
            subscribe = ["public.>"]
            [tls]
            listen = "127.0.0.1:0"
            cert = "/etc/tern/cert.pem"
            "#,
        )
        .unwrap();
        let merged = Settings::default().over(file);
        assert_eq!(merged.users.len(), 1);
        assert_eq!(merged.allow_anonymous, Some(true));
        assert!(merged.anonymous.is_some());
        assert_eq!(
            merged.tls.cert.as_deref(),
            Some(Path::new("/etc/tern/cert.pem"))
        );
        assert!(merged.tls.listen.is_some());
    }
}
