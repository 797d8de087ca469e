//! `[providers.rest_status]` as the config file writes it, and the
//! provider's registration: how it is checked and built from it.

use std::time::Duration;

use serde::Deserialize;
use std::sync::Arc;

use crate::model::ProviderId;
use crate::providers::{Configured, Plugin};
use crate::settings::check::ConfigError;
use crate::settings::section::Section;

use crate::settings::{d10s, duration, TrustSpelling};

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

pub static PLUGIN: Plugin = Plugin {
    id: ProviderId::RestStatus,
    callback_methods: &[],
    secret_keys: &[],
    actions: super::actions::ACTIONS,
    demo: Some(super::demo::start),
    demo_payments: None,
    configure,
};

fn configure(s: &Section<'_>) -> Result<Option<Configured>, ConfigError> {
    let Some(c) = s.read::<RestStatusConfig>()? else {
        return Ok(None);
    };
    let base_url = s.base_url(&c.base_url)?;
    let api_key = s.secret("api_key_env", &c.api_key_env)?;
    Ok(Some(Configured {
        provider: Arc::new(super::RestStatus::new(
            base_url.clone(),
            api_key,
            c.trust_spelling,
            c.request_timeout,
        )),
        reconcile: None,
        base_url,
    }))
}
