//! The file's shape as written: one serde type per section, with its
//! defaults (before secrets are resolved and values checked).

use super::*;
use std::collections::BTreeMap;

impl FileConfig {
    /// The default connection limits of the callback and admin listeners.
    pub fn default_limits() -> (usize, usize) {
        (default_callback_connections(), default_admin_connections())
    }
}

/// The whole file, as written (before secrets are resolved).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub store: StoreConfig,
    #[serde(default)]
    pub callback: CallbackConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub providers: ProvidersConfig,
    #[serde(default)]
    pub actions: ActionsConfig,
    #[serde(default)]
    pub service: ServiceConfig,
    #[serde(default)]
    pub circuit: CircuitConfig,
    /// `[notify]`: state changes POSTed to the platform. Absent: none.
    #[serde(default)]
    pub notify: Option<NotifyConfig>,
    #[serde(default)]
    pub tls: TlsConfig,
}

/// `[tls]`: whom provider calls and notifications trust. The system's
/// trust store and the webpki roots always; this adds more.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// A PEM file of CA certificates to trust as well (a corporate CA
    /// that re-signs outbound TLS, a provider's private CA).
    #[serde(default)]
    pub extra_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// The platform's endpoint for events.
    pub url: String,
    /// Names the Standard Webhooks secret (`whsec_` + base64).
    pub secret_env: String,
    /// During a rotation: the old secret, which also signs until
    /// `previous_secret_until` (RFC 3339).
    #[serde(default)]
    pub previous_secret_env: Option<String>,
    #[serde(default)]
    pub previous_secret_until: Option<String>,
    /// How long a notice is retried before it is given up.
    #[serde(default = "d3d", deserialize_with = "duration")]
    pub horizon: Duration,
    #[serde(default = "d1s", deserialize_with = "duration")]
    pub min_delay: Duration,
    #[serde(default = "d1h", deserialize_with = "duration")]
    pub max_delay: Duration,
    /// One delivery's time limit: Standard Webhooks asks receivers to
    /// answer within 15-30 s.
    #[serde(default = "d15s", deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Deliveries in flight at once (each for a different payment).
    #[serde(default = "default_notify_in_flight")]
    pub max_in_flight: usize,
}

pub(super) fn d3d() -> Duration {
    Duration::from_secs(3 * 86_400)
}
pub(super) fn d15s() -> Duration {
    Duration::from_secs(15)
}
pub(super) fn d1s() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_notify_in_flight() -> usize {
    16
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// How long SIGTERM waits for in-flight polls, actions, requests and
    /// notifications before the store is flushed and the process exits.
    /// Anything cut off is redone after a restart (it is all persisted).
    #[serde(default = "d10s", deserialize_with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            shutdown_grace: d10s(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsConfig {
    /// How long an action may be retried before it fails (or, if its
    /// outcome is uncertain, is parked as unknown).
    #[serde(default = "d5m", deserialize_with = "duration")]
    pub deadline: Duration,
}

impl Default for ActionsConfig {
    fn default() -> Self {
        ActionsConfig { deadline: d5m() }
    }
}

pub(super) fn d5m() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Which engine: sled (embedded, one instance; the default) or
    /// PostgreSQL (several instances on one database; docs/postgres.md).
    #[serde(default)]
    pub backend: StoreBackend,
    /// The sled folder. Created if missing. Needed with sled only.
    #[serde(default)]
    pub path: PathBuf,
    /// PostgreSQL: `postgres://user@host:5432/database`, without the
    /// password.
    #[serde(default)]
    pub url: Option<String>,
    /// PostgreSQL: names the password (an environment variable or a
    /// systemd credential), if the server asks for one.
    #[serde(default)]
    pub password_env: Option<String>,
    /// PostgreSQL: connections this instance keeps at most.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// sled's page cache, MiB.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
    /// zstd compression of stored records: half the disk, for a third
    /// less ingest throughput and much slower restarts after heavy writes
    /// (BENCHMARKS.md). Off by default. Fixed when the store is created.
    #[serde(default)]
    pub compression: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Sled,
    Postgres,
}

impl StoreConfig {
    /// How to reach PostgreSQL, with the password given (None with sled
    /// or without a URL).
    pub fn pg_settings(&self, password: Option<String>) -> Option<crate::store::pg::PgSettings> {
        let url = self
            .url
            .clone()
            .filter(|_| self.backend == StoreBackend::Postgres)?;
        Some(crate::store::pg::PgSettings {
            url,
            password,
            pool_size: self.pool_size,
            schema: None,
        })
    }
}

pub(super) fn default_pool_size() -> usize {
    crate::store::pg::DEFAULT_POOL_SIZE
}

pub(super) fn default_cache_mb() -> u64 {
    crate::store::DEFAULT_CACHE_MB
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackConfig {
    /// Where providers' callbacks arrive (behind a TLS proxy in production).
    #[serde(default = "default_callback_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_header_timeout", deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// A client must send a whole request body within this time, on both
    /// listeners (408 otherwise): a slow or never-ending body cannot hold
    /// a connection.
    #[serde(default = "d10s", deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// Open connections on the callback listener; more are answered 503 at
    /// once. Far below the unit's LimitNOFILE, so the process keeps file
    /// descriptors for its store and provider calls.
    #[serde(default = "default_callback_connections")]
    pub max_connections: usize,
    /// Callbacks for payments not tracked yet, kept at most per lookup key
    /// and in all; beyond, a callback is answered 503 and nothing stored
    /// (the provider sends it again later).
    #[serde(default = "default_orphans_per_key")]
    pub orphan_max_per_key: u64,
    #[serde(default = "default_orphans_total")]
    pub orphan_max_total: u64,
    /// How long an orphan callback waits for its payment before it is
    /// forgotten. Paynet re-sends for 14 days; 30 covers that twice.
    #[serde(default = "d30d", deserialize_with = "duration")]
    pub orphan_ttl: Duration,
}

pub(super) fn default_callback_connections() -> usize {
    512
}

pub(super) fn default_admin_connections() -> usize {
    64
}

pub(super) fn default_orphans_per_key() -> u64 {
    crate::store::DEFAULT_ORPHANS_PER_KEY
}

pub(super) fn default_orphans_total() -> u64 {
    crate::store::DEFAULT_ORPHANS_TOTAL
}

impl Default for CallbackConfig {
    fn default() -> Self {
        CallbackConfig {
            listen: default_callback_listen(),
            max_body_bytes: default_max_body(),
            header_read_timeout: default_header_timeout(),
            body_read_timeout: d10s(),
            max_connections: default_callback_connections(),
            orphan_max_per_key: default_orphans_per_key(),
            orphan_max_total: default_orphans_total(),
            orphan_ttl: d30d(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The admin API. Loopback by default; providers must never reach it.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Environment variable holding the bearer token. Unset: no token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Open connections on the admin listener; more are answered 503.
    #[serde(default = "default_admin_connections")]
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token_env: None,
            max_connections: default_admin_connections(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing-subscriber filter, e.g. `info` or `payrecon=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_log_level(),
        }
    }
}

/// `[providers.<name>]` sections as written. Each is read, checked and
/// built by the provider registered under that name; a name no provider
/// has is refused (by `Config::parse`, at its line).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProvidersConfig(pub BTreeMap<String, toml::Table>);

pub(super) fn default_callback_listen() -> SocketAddr {
    ([0, 0, 0, 0], 8080).into()
}
pub(super) fn default_admin_listen() -> SocketAddr {
    ([127, 0, 0, 1], 8081).into()
}
/// Callbacks are a few hundred bytes of query string; 16 KiB leaves room
/// for a JSON webhook while keeping a flood cheap to refuse.
pub(super) fn default_max_body() -> usize {
    16 * 1024
}
/// A gateway sends its headers at once; slow senders are cut off early.
pub(super) fn default_header_timeout() -> Duration {
    Duration::from_secs(5)
}
pub(super) fn default_log_level() -> String {
    "info".into()
}
