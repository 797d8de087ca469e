//! What a provider shows in `payrecon demo`: its sandbox on loopback, the
//! config section that points the daemon at it, and scripted actions,
//! each with the outcome it must reach. The demo runs every registered
//! provider's scenes through the real daemon and admin API.

use tokio_util::sync::CancellationToken;

use super::BoxFuture;
use crate::action::{ActionRequest, ActionState};

/// One scripted action.
pub struct Scene {
    pub label: &'static str,
    /// The payment's keys, as it is tracked.
    pub keys: Vec<(&'static str, String)>,
    /// Minor units and currency, when the provider needs them.
    pub amount: Option<(i64, &'static str)>,
    pub request: ActionRequest,
    pub expected: ActionState,
    /// Printed beside the outcome, where the outcome alone does not show
    /// what the scene is about.
    pub note: Option<&'static str>,
}

/// A provider's sandbox, running, with its scenes.
pub trait DemoSandbox: Send + Sync {
    /// `[providers.<name>]` pointing at the sandbox; its secrets are named
    /// by environment variables.
    fn config(&self) -> String;
    /// The variables the section names, with their values.
    fn secrets(&self) -> Vec<(&'static str, &'static str)>;
    fn scenes(&self) -> Vec<Scene>;
    /// Runs just before scene `i`'s action is sent: a fault for it to meet.
    fn before(&self, i: usize) {
        let _ = i;
    }
    /// Whether scene `i`'s change reached the provider, as an operator
    /// finds out by asking it (for an action parked as unknown).
    fn applied(&self, i: usize) -> bool;
    /// Whether the sandbox applied each scene's change exactly once (and
    /// a refused one not at all).
    fn applied_once(&self) -> bool;
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// Starts a provider's sandbox on a loopback port.
pub type StartDemo =
    fn(CancellationToken) -> BoxFuture<'static, Result<Box<dyn DemoSandbox>, String>>;

/// A listener on a free loopback port, for a sandbox.
pub async fn loopback() -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("sandbox listener: {e}"))
}
