//! `[providers.connpay]` as the config file writes it; `config` reads it
//! and checks it, the provider is built from it.

use serde::Deserialize;

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
