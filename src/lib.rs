//! payrecon keeps the true status of every in-flight payment across
//! providers: it polls, receives verified callbacks, reconciles on a
//! schedule and records every observation durably in sled.
//!
//! # Where things travel
//!
//! - **A poll.** [`engine::scheduler`] holds every open window's next
//!   deadline; when one is due, `engine/poll.rs` asks the provider
//!   (`providers/<name>/mod.rs`, [`providers::Provider::inquire`]) behind
//!   its [`circuit`] breaker and [`pacer`]. The answer is a
//!   [`model::Report`]: [`store`]'s single writer applies it with
//!   [`store::apply`] (the [`state`] machine: a state never goes back),
//!   commits it in one flushed batch, and [`engine::notify`] tells the
//!   platform of a change. An answer that repeats the last one is only
//!   counted (`store/echo.rs`).
//! - **A callback.** [`listen::callback`] serves `/callback/<name>` for
//!   each provider that reads callbacks; `engine/ingest.rs` has the
//!   provider verify and read it ([`providers::Provider::parse_callback`]),
//!   the store de-duplicates it and commits it, and only then is it
//!   answered 200.
//! - **An action.** [`listen::admin`] (`POST /v1/payments/{id}/actions`)
//!   or a CLI subcommand ([`cli::actions`]) asks for it; [`engine::outbound`]
//!   checks it against what the provider describes
//!   (`providers/<name>/actions.rs`) and the provider's rules, writes it
//!   to the outbox, marks it `sending` durably before each attempt, and
//!   settles an uncertain one by asking the provider, never by resending.
//! - **A sweep.** [`daemon`] runs `engine/reconcile.rs` on each provider's
//!   cron schedule: it asks about what polls and callbacks left open.
//!
//! # Layout, bottom to top
//!
//! - [`state`], [`money`], [`model`]: the states and the transition rule,
//!   amounts, payments and observations. [`model::ProviderId`] is made
//!   from the provider list below.
//! - [`settings`]: the plain settings types the floors read, and the
//!   file:line:key checks a provider's own config section uses.
//! - [`store`]: the store interface, its sled engine and the record codec.
//! - [`providers`]: the [`providers::Provider`] trait, the registry, and
//!   one folder per provider: its client (`mod.rs`), config section and
//!   registration (`config.rs`), actions (`actions.rs`), sandbox
//!   (`sim.rs`) and demo scenes (`demo.rs`).
//! - [`engine`]: tracking, polling, ingest, sweeps, actions and
//!   notifications on top of the store and the providers.
//! - [`config`]: reads the file; each `[providers.<name>]` is read by its
//!   provider. Nothing below imports it (tests/layers.rs holds that).
//! - [`http`], [`listen`], [`daemon`], [`cli`]: the serve loop, the two
//!   listeners, the wiring, and the command line with its client and demo.
//!
//! # Adding a provider
//!
//! A folder `src/providers/<name>/` with `mod.rs` (a type implementing
//! [`providers::Provider`]), `config.rs` (its section type and a
//! `pub static PLUGIN: Plugin`) and `sim.rs` (its sandbox, for tests),
//! plus one line in `with_providers!` below. Actions (`actions.rs`) and
//! demo scenes (`demo.rs`) are optional; docs/providers.md says what to
//! write down.

#![forbid(unsafe_code)]

/// Every provider this build has, one a line: its [`model::ProviderId`]
/// variant, its folder under `src/providers/` (which is also its name in
/// the config file, the callback route, the API and the store), and its
/// permanent one-byte store code. Adding a provider is its folder and one
/// line here. Append only: stored records hold the position and the code.
///
/// `model` expands this into `ProviderId` and `providers` into its modules
/// and `REGISTRY`; neither imports the other for it.
macro_rules! with_providers {
    ($then:ident) => {
        $then! {
            Connpay connpay = 1,
            Myfatoorah myfatoorah = 2,
            RestStatus rest_status = 3,
            Connectfi connectfi = 4,
            Crm crm = 5,
        }
    };
}

pub mod action;
pub mod bench;
pub mod circuit;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod export;
pub mod guard;
pub mod http;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod money;
pub mod pacer;
pub mod providers;
pub mod sdnotify;
pub mod settings;
pub mod sim;
pub mod state;
pub mod store;
pub mod sync;
