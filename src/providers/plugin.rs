//! What a provider registers: its identity, the callback route it
//! answers, and how it is built from its own config section. The
//! config loader, the daemon and the callback listener learn what exists
//! from [`super::REGISTRY`], never from a list of their own.

use std::sync::Arc;

use crate::action::ActionSpec;
use crate::model::ProviderId;
use crate::settings::check::ConfigError;
use crate::settings::section::Section;
use crate::settings::ReconcileConfig;

use super::scenes::{StartDemo, StartSettling};
use super::Provider;

/// One provider's registration.
pub struct Plugin {
    /// Its name is the config section `[providers.<name>]` and the
    /// callback route `/callback/<name>`.
    pub id: ProviderId,
    /// The methods `/callback/<name>` answers; empty when payrecon reads
    /// no callbacks of this provider.
    pub callback_methods: &'static [&'static str],
    /// Names of its keys that are credentials, not references: never
    /// shown, logged, exported or sent to the platform.
    pub secret_keys: &'static [&'static str],
    /// The actions it takes: requests are checked against these before
    /// the provider judges them, and the CLI has a subcommand for each.
    pub actions: &'static [ActionSpec],
    /// Starts its sandbox with the scenes `payrecon demo` runs; `None`
    /// when it has none of its own.
    pub demo: Option<StartDemo>,
    /// Starts its sandbox of payments that settle on their own, which
    /// `payrecon demo` tracks; `None` when it has none.
    pub demo_payments: Option<StartSettling>,
    /// Reads, checks and builds `[providers.<name>]`; `None` when the
    /// file has no such section (the provider is then not used).
    pub configure: fn(&Section<'_>) -> Result<Option<Configured>, ConfigError>,
}

/// A provider built from its section, with what the daemon needs of the
/// section besides the provider itself.
#[derive(Clone)]
pub struct Configured {
    pub provider: Arc<dyn Provider>,
    /// Its `[providers.<name>.reconcile]`, when it is swept.
    pub reconcile: Option<ReconcileConfig>,
    /// Where it is reached, as `check-config` prints it.
    pub base_url: String,
}

impl std::fmt::Debug for Configured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configured")
            .field("provider", &self.provider.id())
            .field("reconcile", &self.reconcile)
            .field("base_url", &self.base_url)
            .finish()
    }
}
