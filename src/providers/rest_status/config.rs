//! `[providers.rest_status]` as the config file writes it; `config` reads it
//! and checks it, the provider is built from it.

use std::time::Duration;

use serde::Deserialize;

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
