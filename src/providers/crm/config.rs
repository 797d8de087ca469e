//! `[providers.crm]` as the config file writes it; `config` reads it
//! and checks it, the provider is built from it.

use std::time::Duration;

use serde::Deserialize;

use crate::settings::{d10m, d10s, duration};

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
