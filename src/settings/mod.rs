//! Plain settings types: what the config file's sections become, read by
//! the floors below it (providers, the engine, logging) without importing
//! the loader. `config` parses and validates the file into these.
//! [`check`] holds the checks and the file:line:key errors that `config`
//! and the providers' own config sections share.

pub mod check;
pub mod section;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `[circuit]`: each provider gets its own breaker with these settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitConfig {
    /// Transport errors or 5xx answers in a row that open the circuit.
    #[serde(default = "default_circuit_failures")]
    pub failures: u32,
    /// How long an open circuit waits before one probe call.
    #[serde(default = "d30s", deserialize_with = "duration")]
    pub cool_down: Duration,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        CircuitConfig {
            failures: default_circuit_failures(),
            cool_down: d30s(),
        }
    }
}

pub(crate) fn default_circuit_failures() -> u32 {
    5
}
pub(crate) fn d30s() -> Duration {
    Duration::from_secs(30)
}

/// `[providers.NAME.reconcile]`: the scheduled sweep of unfinished
/// payments whose polling window has ended.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Cron expression with seconds (`sec min hour day month weekday`).
    /// Unset: no scheduled sweep (`payrecon reconcile` still works).
    #[serde(default)]
    pub schedule: Option<String>,
    /// Status inquiries in flight at once during a sweep.
    #[serde(default = "default_sweep_concurrency")]
    pub concurrency: usize,
    /// Status inquiries per second during a sweep (the provider's rate
    /// limit, shared with nothing else).
    #[serde(default = "default_sweep_rate")]
    pub rate_per_sec: f64,
    /// A payment still unfinished at this age raises `payment_stale` (once)
    /// and from then on is asked every `stale_every`, not every run.
    #[serde(default = "d1h", deserialize_with = "duration")]
    pub stale_after: Duration,
    #[serde(default = "d1h", deserialize_with = "duration")]
    pub stale_every: Duration,
    /// From this age on, it is asked every `late_every`.
    #[serde(default = "d1d", deserialize_with = "duration")]
    pub late_after: Duration,
    #[serde(default = "d1d", deserialize_with = "duration")]
    pub late_every: Duration,
    /// From this age on, it is no longer swept (`reconcile_abandoned`).
    #[serde(default = "d30d", deserialize_with = "duration")]
    pub end_age: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            schedule: None,
            concurrency: default_sweep_concurrency(),
            rate_per_sec: default_sweep_rate(),
            stale_after: d1h(),
            stale_every: d1h(),
            late_after: d1d(),
            late_every: d1d(),
            end_age: d30d(),
        }
    }
}

pub(crate) fn default_sweep_concurrency() -> usize {
    4
}
pub(crate) fn default_sweep_rate() -> f64 {
    5.0
}
pub(crate) fn d1h() -> Duration {
    Duration::from_secs(3600)
}
pub(crate) fn d1d() -> Duration {
    Duration::from_secs(86_400)
}
pub(crate) fn d30d() -> Duration {
    Duration::from_secs(30 * 86_400)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable `LEVEL message key=value` lines without colour; the
    /// time first, but under journald (which records it) a syslog
    /// priority instead.
    #[default]
    Text,
    /// One JSON object per line, stable field names.
    Json,
}

/// How the REST API's trust fields are spelled: the seed's schema writes
/// `trust_Seed`, `trust_Value`, `alt_Trust_Value`; its example
/// `trust_seed`, `trust_value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrustSpelling {
    #[default]
    Schema,
    Example,
}

/// How a provider is polled. Defaults are ConnPay's advice: every 3-5 s for
/// 2-3 minutes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollingConfig {
    #[serde(default = "d3s", deserialize_with = "duration")]
    pub poll_interval_min: Duration,
    #[serde(default = "d5s", deserialize_with = "duration")]
    pub poll_interval_max: Duration,
    #[serde(default = "d2m", deserialize_with = "duration")]
    pub poll_window_min: Duration,
    #[serde(default = "d3m", deserialize_with = "duration")]
    pub poll_window_max: Duration,
    /// Polls in flight at once for this provider.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// One inquiry's whole time limit, retries included.
    #[serde(default = "d10s", deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Status inquiries per second, shared by polls, sweeps and action
    /// confirmations. Unset: no limit but `max_in_flight`.
    #[serde(default)]
    pub rate_per_sec: Option<f64>,
}

impl Default for PollingConfig {
    fn default() -> Self {
        PollingConfig {
            poll_interval_min: d3s(),
            poll_interval_max: d5s(),
            poll_window_min: d2m(),
            poll_window_max: d3m(),
            max_in_flight: default_in_flight(),
            request_timeout: d10s(),
            rate_per_sec: None,
        }
    }
}

pub(crate) fn default_in_flight() -> usize {
    64
}

pub(crate) fn d3s() -> Duration {
    Duration::from_secs(3)
}

pub(crate) fn d5s() -> Duration {
    Duration::from_secs(5)
}

pub(crate) fn d10s() -> Duration {
    Duration::from_secs(10)
}

pub(crate) fn d2m() -> Duration {
    Duration::from_secs(120)
}

pub(crate) fn d3m() -> Duration {
    Duration::from_secs(180)
}

/// The longest duration a setting may name: ten years. Anything longer is
/// a typo (or an overflow in waiting) rather than a schedule.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Parses `250ms`, `3s`, `2m`, `1h`, `30d` (and humantime's `1h 30m`),
/// refusing a number too large for its unit instead of wrapping around.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
        return Err(format!("`{s}` has no unit (use ms, s, m, h or d)"));
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 250ms, 3s, 2m, 1h or 30d ({e})"))?;
    if d > MAX_DURATION {
        return Err(format!("`{s}` is out of range (at most 10 years)"));
    }
    Ok(d)
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}
pub(crate) fn d10m() -> Duration {
    Duration::from_secs(600)
}
