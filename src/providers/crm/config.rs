//! `[providers.crm]` as the config file writes it, and the
//! provider's registration: how it is checked and built from it.

use std::time::Duration;

use serde::Deserialize;
use std::sync::Arc;

use crate::model::ProviderId;
use crate::providers::{Configured, Plugin};
use crate::settings::check::ConfigError;
use crate::settings::section::Section;

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

pub static PLUGIN: Plugin = Plugin {
    id: ProviderId::Crm,
    callback_methods: &[],
    secret_keys: &[],
    actions: super::actions::ACTIONS,
    demo: Some(super::demo::start),
    demo_payments: None,
    configure,
};

fn configure(s: &Section<'_>) -> Result<Option<Configured>, ConfigError> {
    let Some(c) = s.read::<CrmConfig>()? else {
        return Ok(None);
    };
    let base_url = s.base_url(&c.base_url)?;
    let login = super::Login {
        path: s.url_path("login_path", c.login_path)?,
        username_field: c.username_field,
        password_field: c.password_field,
        username: s.secret("username_env", &c.username_env)?,
        password: s.secret("password_env", &c.password_env)?,
        ttl: c.token_ttl,
        expired_token_codes: c.expired_token_codes,
    };
    Ok(Some(Configured {
        provider: Arc::new(super::Crm::new(base_url.clone(), login, c.request_timeout)),
        reconcile: None,
        base_url,
    }))
}
