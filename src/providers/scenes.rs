//! What a provider shows in `payrecon demo`: its sandbox on loopback, the
//! config section that points the daemon at it, and its scenes: payments
//! that settle on their own by polls and callbacks ([`SettlingSandbox`]),
//! and scripted actions, each with the outcome it must reach
//! ([`DemoSandbox`]). The demo runs every registered provider's scenes
//! through the real daemon and admin API.

use tokio_util::sync::CancellationToken;

use super::BoxFuture;
use crate::action::{ActionRequest, ActionState};
use crate::model::Keys;
use crate::state::State;

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
    fn secrets(&self) -> Vec<(&'static str, String)>;
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

/// A payment that settles on its own, by polls and callbacks.
pub struct Settling {
    /// How the demo names it (ConnPay: the invoice id).
    pub name: String,
    /// Its script, in words.
    pub label: &'static str,
    pub keys: Keys,
    /// Minor units and currency.
    pub amount: Option<(i64, String)>,
}

/// A provider's sandbox whose payments settle on their own: the demo
/// tracks them and waits until payrecon knows what the sandbox knows.
pub trait SettlingSandbox: Send + Sync {
    /// Where it listens and what faults it injects, for the demo's header.
    fn describe(&self) -> String;
    /// `[providers.<name>]` pointing at the sandbox, at the demo's pace.
    fn config(&self) -> String;
    /// The variables the section names, with their values.
    fn secrets(&self) -> Vec<(&'static str, String)>;
    /// Where to send callbacks, once the daemon listens (`http://host:port`).
    fn callbacks_to(&self, base: &str);
    /// Creates `count` payments in the sandbox, each on a script.
    fn payments(&self, count: usize) -> Vec<Settling>;
    /// The final state the sandbox knows `name` to be in; `None` before.
    fn truth(&self, name: &str) -> Option<State>;
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// Starts a provider's sandbox of payments that settle on their own.
pub type StartSettling =
    fn(CancellationToken) -> BoxFuture<'static, Result<Box<dyn SettlingSandbox>, String>>;
