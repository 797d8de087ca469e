//! payrecon keeps the true status of every in-flight payment across
//! providers: it polls, receives verified callbacks, reconciles on a
//! schedule and records every observation durably in sled.
//!
//! # Layout
//!
//! - [`state`]: the normalized states and the transition rule (pure).
//! - [`model`]: payments, poll windows and observations.
//! - [`money`]: reported amounts read and compared with tracked ones.
//! - [`settings`]: the plain settings types the floors below read.
//! - [`config`]: the config file, validation, secrets from the environment;
//!   it parses into [`settings`] types and nothing below imports it.
//! - [`store`]: the store interface, its sled engine and the record codec.
//! - [`providers`]: the provider trait and one folder per provider (client,
//!   callback verification, status mapping, sandbox).
//! - [`engine`]: tracking, polling and callback ingest on top of the store;
//!   [`engine::scheduler`] owns every poll deadline, [`engine::outbound`]
//!   sends status changes ([`action`]) exactly once, [`engine::notify`]
//!   tells the platform.
//! - [`guard`]: a panic in one poll, action or delivery is caught there.
//! - [`http`]: the hyper serve loop with its limits and the JSON error
//!   shape, shared by the listeners and the sandboxes.
//! - [`listen`]: the callback listener and the admin API.
//! - [`daemon`]: wires it all together under one cancellation token.
//! - [`sim`]: the platform's notification receiver, simulated.
//! - [`cli`]: the command line, its admin API client and the demo.

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
