//! `[providers.connpay]` as the config file writes it, and the
//! provider's registration: how it is checked and built from it.

use serde::Deserialize;
use std::sync::Arc;

use crate::model::ProviderId;
use crate::providers::{Configured, Plugin};
use crate::settings::check::ConfigError;
use crate::settings::section::Section;

use crate::settings::{PollingConfig, ReconcileConfig};

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

pub static PLUGIN: Plugin = Plugin {
    id: ProviderId::Connpay,
    callback_methods: &["GET", "POST"],
    secret_keys: &[super::SESSION_TOKEN, super::ACCESS_TOKEN],
    actions: &[],
    demo: None,
    demo_payments: Some(super::demo::start),
    configure,
};

fn configure(s: &Section<'_>) -> Result<Option<Configured>, ConfigError> {
    let Some(c) = s.read::<ConnpayConfig>()? else {
        return Ok(None);
    };
    let base_url = s.base_url(&c.base_url)?;
    s.polling(&c.polling)?;
    s.reconcile(&c.reconcile)?;
    let control_key = s.secret("control_key_env", &c.control_key_env)?;
    Ok(Some(Configured {
        provider: Arc::new(super::Connpay::new(base_url.clone(), control_key, c.polling)),
        reconcile: Some(c.reconcile),
        base_url,
    }))
}
