//! The configuration file: its typed shape, defaults, validation, and
//! errors that name the file, the line and the key at fault.
//!
//! Secrets are never in the file. The file names environment variables
//! (`*_env` keys) and the loader reads them from an environment map that
//! the caller passes in, so tests never touch the real environment.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::settings::{d10s, d1h, d30d, duration};
pub use crate::settings::{
    parse_duration, CircuitConfig, LogFormat, PollingConfig, ReconcileConfig, Secret,
    TrustSpelling, MAX_DURATION,
};

/// A configuration error, with where it is.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    /// Dotted key, e.g. `providers.connpay.poll_interval_min`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

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
    #[serde(default = "d10s", deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Deliveries in flight at once (each for a different payment).
    #[serde(default = "default_notify_in_flight")]
    pub max_in_flight: usize,
}

fn d3d() -> Duration {
    Duration::from_secs(3 * 86_400)
}
fn d1s() -> Duration {
    Duration::from_secs(1)
}
fn default_notify_in_flight() -> usize {
    16
}

fn validate_reconcile(
    r: &ReconcileConfig,
    section: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if let Some(cron) = &r.schedule {
        if let Err(e) = cron_ok(cron) {
            return Err(err(&format!("{section}.schedule"), e));
        }
    }
    if r.concurrency == 0 {
        return Err(err(
            &format!("{section}.concurrency"),
            "must be at least 1".into(),
        ));
    }
    if !(r.rate_per_sec > 0.0 && r.rate_per_sec.is_finite()) {
        return Err(err(
            &format!("{section}.rate_per_sec"),
            "must be more than zero".into(),
        ));
    }
    if !(r.stale_after <= r.late_after && r.late_after <= r.end_age) {
        return Err(err(
            &format!("{section}.late_after"),
            "ages must grow: stale_after <= late_after <= end_age".into(),
        ));
    }
    Ok(())
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

fn d5m() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The sled folder. Created if missing.
    pub path: PathBuf,
    /// sled's page cache, MiB.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
    /// zstd compression of stored records: half the disk, for a third
    /// less ingest throughput and much slower restarts after heavy writes
    /// (BENCHMARKS.md). Off by default. Fixed when the store is created.
    #[serde(default)]
    pub compression: bool,
}

fn default_cache_mb() -> u64 {
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

fn default_callback_connections() -> usize {
    512
}

fn default_admin_connections() -> usize {
    64
}

fn default_orphans_per_key() -> u64 {
    crate::store::DEFAULT_ORPHANS_PER_KEY
}

fn default_orphans_total() -> u64 {
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersConfig {
    pub connpay: Option<ConnpayConfig>,
    pub myfatoorah: Option<MyfatoorahConfig>,
    pub rest_status: Option<RestStatusConfig>,
    pub connectfi: Option<ConnectfiConfig>,
    pub crm: Option<CrmConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrmConfig {
    /// The CRM.COM API root.
    pub base_url: String,
    pub username_env: String,
    pub password_env: String,
    /// The log-in method (unconfirmed in the documents: configurable).
    #[serde(default = "default_crm_login")]
    pub login_path: String,
    #[serde(default = "default_crm_user_field")]
    pub username_field: String,
    #[serde(default = "default_crm_pass_field")]
    pub password_field: String,
    #[serde(default = "d10m", deserialize_with = "duration")]
    pub token_ttl: Duration,
    /// Status codes that mean the token expired.
    #[serde(default = "default_crm_expired")]
    pub expired_token_codes: Vec<String>,
    #[serde(default = "d10s", deserialize_with = "duration")]
    pub request_timeout: Duration,
}

fn default_crm_login() -> String {
    "/users/login".into()
}
fn default_crm_user_field() -> String {
    "username".into()
}
fn default_crm_pass_field() -> String {
    "password".into()
}
fn default_crm_expired() -> Vec<String> {
    vec!["INVALID_TOKEN".into(), "TOKEN_EXPIRED".into()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectfiConfig {
    /// `CONNECTFI_BASE_URL`.
    pub base_url: String,
    /// Environment variables holding the log-in credentials.
    pub client_id_env: String,
    pub client_secret_env: String,
    /// The log-in path and how its body names the credentials (not in
    /// the seed: configurable).
    #[serde(default = "default_cfi_login")]
    pub login_path: String,
    #[serde(default = "default_cfi_id_field")]
    pub client_id_field: String,
    #[serde(default = "default_cfi_secret_field")]
    pub client_secret_field: String,
    /// Token lifetime when the log-in answer gives none.
    #[serde(default = "d10m", deserialize_with = "duration")]
    pub token_ttl: Duration,
    #[serde(default = "d10s", deserialize_with = "duration")]
    pub request_timeout: Duration,
}

fn default_cfi_login() -> String {
    "/auth/get-token".into()
}
fn default_cfi_id_field() -> String {
    "clientId".into()
}
fn default_cfi_secret_field() -> String {
    "clientSecret".into()
}
fn d10m() -> Duration {
    Duration::from_secs(600)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestStatusConfig {
    /// The API root, e.g. `https://payments.example.com/api/v1`.
    pub base_url: String,
    /// Environment variable holding the API key (header and body).
    pub api_key_env: String,
    #[serde(default)]
    pub trust_spelling: TrustSpelling,
    #[serde(default = "d10s", deserialize_with = "duration")]
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MyfatoorahConfig {
    /// `https://apitest.myfatoorah.com` (test) or the country's live URL.
    pub base_url: String,
    /// Environment variable holding the API token (sent as a bearer token).
    pub token_env: String,
    /// Environment variable holding the webhook secret key. Unset: webhooks
    /// are refused (they cannot be verified).
    #[serde(default)]
    pub webhook_secret_env: Option<String>,
    /// `[providers.myfatoorah.polling]`. GetPaymentStatus is rate-limited:
    /// by default every 10-15 s for 5 minutes, 8 in flight.
    #[serde(default = "myfatoorah_polling")]
    pub polling: PollingConfig,
    /// `[providers.myfatoorah.reconcile]`. Slow by default: the inquiry
    /// is rate-limited.
    #[serde(default = "myfatoorah_reconcile")]
    pub reconcile: ReconcileConfig,
}

fn myfatoorah_reconcile() -> ReconcileConfig {
    ReconcileConfig {
        concurrency: 2,
        rate_per_sec: 2.0,
        ..ReconcileConfig::default()
    }
}

fn myfatoorah_polling() -> PollingConfig {
    PollingConfig {
        poll_interval_min: Duration::from_secs(10),
        poll_interval_max: Duration::from_secs(15),
        poll_window_min: Duration::from_secs(300),
        poll_window_max: Duration::from_secs(300),
        max_in_flight: 8,
        // The documents say GetPaymentStatus is rate-limited but not how
        // much: 10 a second is an assumption (docs/providers.md).
        rate_per_sec: Some(10.0),
        ..PollingConfig::default()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnpayConfig {
    /// `https://sandbox.connpay.com` or `https://gate.connpay.com`.
    pub base_url: String,
    /// Environment variable holding the merchant control key.
    pub control_key_env: String,
    /// `[providers.connpay.polling]`.
    #[serde(default)]
    pub polling: PollingConfig,
    /// `[providers.connpay.reconcile]`.
    #[serde(default)]
    pub reconcile: ReconcileConfig,
}

fn default_callback_listen() -> SocketAddr {
    ([0, 0, 0, 0], 8080).into()
}
fn default_admin_listen() -> SocketAddr {
    ([127, 0, 0, 1], 8081).into()
}
/// Callbacks are a few hundred bytes of query string; 16 KiB leaves room
/// for a JSON webhook while keeping a flood cheap to refuse.
fn default_max_body() -> usize {
    16 * 1024
}
/// A gateway sends its headers at once; slow senders are cut off early.
fn default_header_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_log_level() -> String {
    "info".into()
}

/// The validated configuration with its secrets resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: FileConfig,
    pub admin_token: Option<Secret>,
    pub notify: Option<crate::engine::notify::NotifySettings>,
    pub connpay: Option<Connpay>,
    pub myfatoorah: Option<Myfatoorah>,
    pub rest_status: Option<RestStatus>,
    pub connectfi: Option<crate::providers::connectfi::Login>,
    /// connectFi's base URL and request timeout, with `connectfi`.
    pub connectfi_url: Option<(String, Duration)>,
    pub crm: Option<crate::providers::crm::Login>,
    pub crm_url: Option<(String, Duration)>,
}

/// The REST status API's settings, ready to use.
#[derive(Debug, Clone)]
pub struct RestStatus {
    pub base_url: String,
    pub api_key: Secret,
    pub trust_spelling: TrustSpelling,
    pub request_timeout: Duration,
}

/// MyFatoorah's settings, ready to use.
#[derive(Debug, Clone)]
pub struct Myfatoorah {
    pub base_url: String,
    pub token: Secret,
    pub webhook_secret: Option<Secret>,
    pub polling: PollingConfig,
}

/// ConnPay's settings, ready to use.
#[derive(Debug, Clone)]
pub struct Connpay {
    pub base_url: String,
    pub control_key: Secret,
    pub polling: PollingConfig,
}

impl Config {
    /// Reads and validates `path`, taking secrets from `env`.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&path.display().to_string(), &text, env)
    }

    /// Parses and validates a config text; `name` is used in errors.
    pub fn parse(
        name: &str,
        text: &str,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let file = parse_file(name, text)?;
        Config::resolve(name, text, file, env)
    }

    /// Reads `path` for its settings alone, without the secrets (offline
    /// commands that only need the store path).
    pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: name.clone(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        parse_file(&name, &text)
    }

    fn resolve(
        name: &str,
        text: &str,
        file: FileConfig,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let err = |key: &str, message: String| {
            let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key));
            ConfigError {
                file: name.to_string(),
                line: locate_key(text, section, leaf),
                key: Some(key.to_string()),
                message,
            }
        };
        // A secret is a systemd credential named like the variable
        // (`$CREDENTIALS_DIRECTORY/NAME`, from LoadCredential=) or, failing
        // that, the environment variable itself.
        let secret = |key: &str, var: &str| -> Result<Secret, ConfigError> {
            if let Some(dir) = env.get("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
                let path = Path::new(dir).join(var);
                match std::fs::read_to_string(&path) {
                    Ok(v) if !v.trim_end_matches(['\r', '\n']).is_empty() => {
                        return Ok(Secret::new(v.trim_end_matches(['\r', '\n'])));
                    }
                    Ok(_) => {
                        return Err(err(
                            key,
                            format!("credential `{}` is empty", path.display()),
                        ))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(err(
                            key,
                            format!("cannot read credential `{}`: {e}", path.display()),
                        ))
                    }
                }
            }
            match env.get(var) {
                Some(v) if !v.is_empty() => Ok(Secret::new(v.clone())),
                _ => Err(err(
                    key,
                    format!(
                        "environment variable `{var}` is not set or empty (and no systemd credential `{var}`)"
                    ),
                )),
            }
        };
        crate::logging::check_level(&file.log.level).map_err(|e| {
            err(
                "log.level",
                format!("`{}` is not a log filter: {e}", file.log.level),
            )
        })?;
        let admin_token = match &file.admin.token_env {
            Some(var) => Some(secret("admin.token_env", var)?),
            None => None,
        };
        let connpay = match &file.providers.connpay {
            Some(c) => {
                let p = "providers.connpay";
                check_url(&c.base_url, p, &err)?;
                validate_polling(&c.polling, &format!("{p}.polling"), &err)?;
                validate_reconcile(&c.reconcile, &format!("{p}.reconcile"), &err)?;
                Some(Connpay {
                    base_url: c.base_url.trim_end_matches('/').to_string(),
                    control_key: secret(&format!("{p}.control_key_env"), &c.control_key_env)?,
                    polling: c.polling.clone(),
                })
            }
            None => None,
        };
        let myfatoorah = match &file.providers.myfatoorah {
            Some(c) => {
                let p = "providers.myfatoorah";
                check_url(&c.base_url, p, &err)?;
                validate_polling(&c.polling, &format!("{p}.polling"), &err)?;
                validate_reconcile(&c.reconcile, &format!("{p}.reconcile"), &err)?;
                Some(Myfatoorah {
                    base_url: c.base_url.trim_end_matches('/').to_string(),
                    token: secret(&format!("{p}.token_env"), &c.token_env)?,
                    webhook_secret: match &c.webhook_secret_env {
                        Some(var) => Some(secret(&format!("{p}.webhook_secret_env"), var)?),
                        None => None,
                    },
                    polling: c.polling.clone(),
                })
            }
            None => None,
        };
        let rest_status = match &file.providers.rest_status {
            Some(c) => {
                let p = "providers.rest_status";
                check_url(&c.base_url, p, &err)?;
                Some(RestStatus {
                    base_url: c.base_url.trim_end_matches('/').to_string(),
                    api_key: secret(&format!("{p}.api_key_env"), &c.api_key_env)?,
                    trust_spelling: c.trust_spelling,
                    request_timeout: c.request_timeout,
                })
            }
            None => None,
        };
        let (connectfi, connectfi_url) = match &file.providers.connectfi {
            Some(c) => {
                let p = "providers.connectfi";
                check_url(&c.base_url, p, &err)?;
                if !c.login_path.starts_with('/') {
                    return Err(err(&format!("{p}.login_path"), "must start with /".into()));
                }
                let login = crate::providers::connectfi::Login {
                    path: c.login_path.clone(),
                    client_id_field: c.client_id_field.clone(),
                    client_secret_field: c.client_secret_field.clone(),
                    client_id: secret(&format!("{p}.client_id_env"), &c.client_id_env)?,
                    client_secret: secret(&format!("{p}.client_secret_env"), &c.client_secret_env)?,
                    default_ttl: c.token_ttl,
                };
                (
                    Some(login),
                    Some((
                        c.base_url.trim_end_matches('/').to_string(),
                        c.request_timeout,
                    )),
                )
            }
            None => (None, None),
        };
        let (crm, crm_url) = match &file.providers.crm {
            Some(c) => {
                let p = "providers.crm";
                check_url(&c.base_url, p, &err)?;
                if !c.login_path.starts_with('/') {
                    return Err(err(&format!("{p}.login_path"), "must start with /".into()));
                }
                let login = crate::providers::crm::Login {
                    path: c.login_path.clone(),
                    username_field: c.username_field.clone(),
                    password_field: c.password_field.clone(),
                    username: secret(&format!("{p}.username_env"), &c.username_env)?,
                    password: secret(&format!("{p}.password_env"), &c.password_env)?,
                    ttl: c.token_ttl,
                    expired_token_codes: c.expired_token_codes.clone(),
                };
                (
                    Some(login),
                    Some((
                        c.base_url.trim_end_matches('/').to_string(),
                        c.request_timeout,
                    )),
                )
            }
            None => (None, None),
        };
        let notify = match &file.notify {
            Some(n) => {
                let p = "notify";
                if !(n.url.starts_with("http://") || n.url.starts_with("https://")) {
                    return Err(err(
                        "notify.url",
                        format!("`{}` is not an http(s) URL", n.url),
                    ));
                }
                let current = secret(&format!("{p}.secret_env"), &n.secret_env)?;
                crate::engine::notify::secret_key(current.expose())
                    .map_err(|e| err("notify.secret_env", format!("the secret {e}")))?;
                let previous = match (&n.previous_secret_env, &n.previous_secret_until) {
                    (None, None) => None,
                    (Some(var), Some(until)) => {
                        let s = secret("notify.previous_secret_env", var)?;
                        crate::engine::notify::secret_key(s.expose()).map_err(|e| {
                            err("notify.previous_secret_env", format!("the secret {e}"))
                        })?;
                        let until = chrono::DateTime::parse_from_rfc3339(until).map_err(|e| {
                            err(
                                "notify.previous_secret_until",
                                format!("`{until}` is not an RFC 3339 time like 2026-12-01T00:00:00Z: {e}"),
                            )
                        })?;
                        Some((s, until.timestamp_millis().max(0) as u64))
                    }
                    _ => {
                        return Err(err(
                            "notify.previous_secret_until",
                            "previous_secret_env and previous_secret_until go together".into(),
                        ))
                    }
                };
                if n.max_in_flight == 0 {
                    return Err(err("notify.max_in_flight", "must be at least 1".into()));
                }
                if n.min_delay.is_zero() || n.max_delay < n.min_delay {
                    return Err(err(
                        "notify.max_delay",
                        "need 0 < min_delay <= max_delay".into(),
                    ));
                }
                Some(crate::engine::notify::NotifySettings {
                    url: n.url.clone(),
                    secret: current,
                    previous,
                    horizon: n.horizon,
                    min_delay: n.min_delay,
                    max_delay: n.max_delay,
                    request_timeout: n.request_timeout,
                    max_in_flight: n.max_in_flight,
                })
            }
            None => None,
        };
        Ok(Config {
            file,
            admin_token,
            notify,
            connpay,
            myfatoorah,
            rest_status,
            connectfi,
            connectfi_url,
            crm,
            crm_url,
        })
    }
}

impl Config {
    /// The engine's settings from this config.
    pub fn engine_settings(&self) -> crate::engine::Settings {
        use crate::model::ProviderId;
        let mut reconcile = HashMap::new();
        if let Some(c) = &self.file.providers.connpay {
            reconcile.insert(ProviderId::Connpay, c.reconcile.clone());
        }
        if let Some(c) = &self.file.providers.myfatoorah {
            reconcile.insert(ProviderId::Myfatoorah, c.reconcile.clone());
        }
        crate::engine::Settings {
            action_deadline: self.file.actions.deadline,
            circuit: self.file.circuit.clone(),
            reconcile,
            notify: self.notify.clone(),
            orphan_ttl: Some(self.file.callback.orphan_ttl),
        }
    }
}

/// The TOML parse and the shape check, with the line and key at fault.
fn parse_file(name: &str, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, key) = match e.span() {
            Some(span) => {
                let (line, key) = locate_offset(text, span.start);
                (Some(line), key)
            }
            None => (None, None),
        };
        ConfigError {
            file: name.to_string(),
            line,
            key,
            message: e.message().to_string(),
        }
    })
}

/// A provider's `base_url` must be an http(s) URL.
fn check_url(
    url: &str,
    section: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(err(
            &format!("{section}.base_url"),
            format!("`{url}` is not an http(s) URL"),
        ))
    }
}

fn validate_polling(
    p: &PollingConfig,
    section: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if p.poll_interval_min.is_zero() {
        return Err(err(
            &format!("{section}.poll_interval_min"),
            "must be more than zero".into(),
        ));
    }
    if p.poll_interval_max < p.poll_interval_min {
        return Err(err(
            &format!("{section}.poll_interval_max"),
            "must not be less than poll_interval_min".into(),
        ));
    }
    if p.poll_window_max < p.poll_window_min {
        return Err(err(
            &format!("{section}.poll_window_max"),
            "must not be less than poll_window_min".into(),
        ));
    }
    if p.max_in_flight == 0 {
        return Err(err(
            &format!("{section}.max_in_flight"),
            "must be at least 1".into(),
        ));
    }
    if let Some(r) = p.rate_per_sec {
        if !(r > 0.0 && r.is_finite()) {
            return Err(err(
                &format!("{section}.rate_per_sec"),
                "must be more than zero".into(),
            ));
        }
    }
    Ok(())
}

/// Checks a cron expression the way tokio-cron-scheduler will read it:
/// six or seven fields, seconds first.
fn cron_ok(expr: &str) -> Result<(), String> {
    let n = expr.split_whitespace().count();
    if !(6..=7).contains(&n) {
        return Err(format!(
            "`{expr}` has {n} fields; use sec min hour day month weekday [year]"
        ));
    }
    Ok(())
}

/// The 1-based line of byte `offset`, and the dotted key written on it.
fn locate_offset(text: &str, offset: usize) -> (usize, Option<String>) {
    let offset = offset.min(text.len());
    let line_no = text[..offset].matches('\n').count() + 1;
    let mut section = String::new();
    let mut key = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = section_header(t) {
            section = name;
            if i + 1 == line_no {
                key = Some(section.clone());
            }
        } else if i + 1 == line_no {
            if let Some((k, _)) = t.split_once('=') {
                let k = k.trim().trim_matches('"');
                key = Some(if section.is_empty() {
                    k.to_string()
                } else {
                    format!("{section}.{k}")
                });
            }
        }
        if i + 1 >= line_no {
            break;
        }
    }
    (line_no, key)
}

/// The line on which `leaf` is set inside `[section]`.
fn locate_key(text: &str, section: &str, leaf: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = section_header(t) {
            current = name;
        } else if current == section {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim().trim_matches('"') == leaf {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

fn section_header(t: &str) -> Option<String> {
    let inner = t.strip_prefix('[')?.split(']').next()?;
    Some(inner.trim_matches('[').trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        HashMap::from([("CP_KEY".to_string(), "k3y".to_string())])
    }

    const GOOD: &str = r#"
[store]
path = "/tmp/x"

[providers.connpay]
base_url = "http://127.0.0.1:9000"
control_key_env = "CP_KEY"

[providers.connpay.polling]
poll_interval_min = "3s"
"#;

    #[test]
    fn a_good_file_loads_with_defaults_and_secrets_from_env() {
        let c = Config::parse("c.toml", GOOD, &env()).unwrap();
        let cp = c.connpay.unwrap();
        assert_eq!(cp.control_key.expose(), "k3y");
        assert_eq!(cp.polling.poll_interval_max, Duration::from_secs(5));
        assert_eq!(cp.polling.poll_window_max, Duration::from_secs(180));
        assert_eq!(format!("{:?}", cp.control_key), "[redacted]");
        assert!(c.file.admin.listen.ip().is_loopback());
    }

    #[test]
    fn an_unknown_key_names_the_key_and_line() {
        let bad = GOOD.replace("poll_interval_min", "pol_interval_min");
        let e = Config::parse("c.toml", &bad, &env()).unwrap_err();
        assert_eq!(e.line, Some(10));
        assert_eq!(
            e.key.as_deref(),
            Some("providers.connpay.polling.pol_interval_min")
        );
        assert!(e
            .to_string()
            .starts_with("c.toml:10: key `providers.connpay.polling.pol_interval_min`"));
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let bad = GOOD.replace("\"3s\"", "\"three\"");
        let e = Config::parse("c.toml", &bad, &env()).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("providers.connpay.polling.poll_interval_min")
        );
        assert_eq!(e.line, Some(10));
        let bad = GOOD.replace("path = \"/tmp/x\"", "path = 7");
        let e = Config::parse("c.toml", &bad, &env()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("store.path"), "{e}");
    }

    #[test]
    fn validation_errors_name_the_key_and_line() {
        let bad = GOOD.replace("\"3s\"", "\"9s\"");
        let e = Config::parse("c.toml", &bad, &env()).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("providers.connpay.polling.poll_interval_max")
        );
        let e = Config::parse("c.toml", GOOD, &HashMap::new()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("providers.connpay.control_key_env"));
        assert_eq!(e.line, Some(7));
        assert!(e.message.contains("CP_KEY"));
    }

    #[test]
    fn secrets_come_from_systemd_credentials_before_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("CP_KEY"), "from-credential\n").unwrap();
        let mut e = env();
        e.insert(
            "CREDENTIALS_DIRECTORY".into(),
            dir.path().display().to_string(),
        );
        let c = Config::parse("c.toml", GOOD, &e).unwrap();
        assert_eq!(c.connpay.unwrap().control_key.expose(), "from-credential");
        // No credential file of that name: the environment variable.
        std::fs::remove_file(dir.path().join("CP_KEY")).unwrap();
        let c = Config::parse("c.toml", GOOD, &e).unwrap();
        assert_eq!(c.connpay.unwrap().control_key.expose(), "k3y");
        // An empty credential is an error naming the key.
        std::fs::write(dir.path().join("CP_KEY"), "\n").unwrap();
        let err = Config::parse("c.toml", GOOD, &e).unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("providers.connpay.control_key_env")
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5").is_err());
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("5x").is_err());
        // Once wrapped around to 44 s and passed check-config.
        let err = parse_duration("307445734561825861m").unwrap_err();
        assert!(err.contains("307445734561825861m"), "{err}");
        assert!(parse_duration("11000d")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_duration("18446744073709551615s").is_err());
    }
}
