//! `[providers.myfatoorah]` as the config file writes it, and the
//! provider's registration: how it is checked and built from it.

use std::time::Duration;

use serde::Deserialize;
use std::sync::Arc;

use crate::model::ProviderId;
use crate::providers::{Configured, Plugin};
use crate::settings::check::ConfigError;
use crate::settings::section::Section;

use crate::settings::{PollingConfig, ReconcileConfig};

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

pub static PLUGIN: Plugin = Plugin {
    id: ProviderId::Myfatoorah,
    callback_methods: &["POST"],
    secret_keys: &[],
    actions: super::actions::ACTIONS,
    demo: Some(super::demo::start),
    demo_payments: None,
    configure,
};

fn configure(s: &Section<'_>) -> Result<Option<Configured>, ConfigError> {
    let Some(c) = s.read::<MyfatoorahConfig>()? else {
        return Ok(None);
    };
    let base_url = s.base_url(&c.base_url)?;
    s.polling(&c.polling)?;
    s.reconcile(&c.reconcile)?;
    let token = s.secret("token_env", &c.token_env)?;
    let webhook_secret = match &c.webhook_secret_env {
        Some(var) => Some(s.secret("webhook_secret_env", var)?),
        None => None,
    };
    Ok(Some(Configured {
        provider: Arc::new(super::Myfatoorah::new(
            base_url.clone(),
            token,
            webhook_secret,
            c.polling,
        )),
        reconcile: Some(c.reconcile),
        base_url,
    }))
}
