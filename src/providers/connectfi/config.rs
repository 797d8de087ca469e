//! `[providers.connectfi]` as the config file writes it, and the
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

pub static PLUGIN: Plugin = Plugin {
    id: ProviderId::Connectfi,
    callback_methods: &[],
    secret_keys: &[],
    actions: super::actions::ACTIONS,
    demo: Some(super::demo::start),
    demo_payments: None,
    configure,
};

fn configure(s: &Section<'_>) -> Result<Option<Configured>, ConfigError> {
    let Some(c) = s.read::<ConnectfiConfig>()? else {
        return Ok(None);
    };
    let base_url = s.base_url(&c.base_url)?;
    let login = super::Login {
        path: s.url_path("login_path", c.login_path)?,
        client_id_field: c.client_id_field,
        client_secret_field: c.client_secret_field,
        client_id: s.secret("client_id_env", &c.client_id_env)?,
        client_secret: s.secret("client_secret_env", &c.client_secret_env)?,
        default_ttl: c.token_ttl,
    };
    Ok(Some(Configured {
        provider: Arc::new(super::Connectfi::new(
            base_url.clone(),
            login,
            c.request_timeout,
        )),
        reconcile: None,
        base_url,
    }))
}
