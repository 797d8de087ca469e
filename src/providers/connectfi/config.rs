//! `[providers.connectfi]` as the config file writes it; `config` reads it
//! and checks it, the provider is built from it.

use std::time::Duration;

use serde::Deserialize;

use crate::settings::{d10m, d10s, duration};

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
