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
//! - [`provider`]: the provider trait and one module per provider.
//! - [`engine`]: tracking, polling and callback ingest on top of the store;
//!   [`engine::scheduler`] owns every poll deadline, [`engine::outbound`]
//!   sends status changes ([`action`]) exactly once, [`engine::notify`]
//!   tells the platform.
//! - [`guard`]: a panic in one poll, action or delivery is caught there.
//! - [`listen`]: the hyper serve loop and the JSON error shape, the
//!   callback listener and the admin API.
//! - [`daemon`]: wires it all together under one cancellation token.
//! - [`sim`]: provider simulators for tests, the demo and benchmarks.
//! - [`cli`]: the command line, its admin API client and the demo.

#![forbid(unsafe_code)]

pub mod action;
pub mod bench;
pub mod circuit;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod export;
pub mod guard;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod money;
pub mod pacer;
pub mod provider;
pub mod sdnotify;
pub mod settings;
pub mod sim;
pub mod state;
pub mod store;
pub mod sync;
