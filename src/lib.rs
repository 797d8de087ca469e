//! payrecon keeps the true status of every in-flight payment across
//! providers: it polls, receives verified callbacks, reconciles on a
//! schedule and records every observation durably in sled.
//!
//! # Layout
//!
//! - [`state`]: the normalized states and the transition rule (pure).
//! - [`model`]: payments, poll windows and observations.
//! - [`money`]: reported amounts read and compared with tracked ones.
//! - [`config`]: the config file, validation, secrets from the environment.
//! - [`store`]: sled trees, one transaction per change, group commit.
//! - [`provider`]: the provider trait and one module per provider.
//! - [`scheduler`]: the one task that owns every poll deadline.
//! - [`engine`]: tracking, polling and callback ingest on top of the store.
//! - [`action`] and [`outbound`]: status changes sent to providers, exactly once.
//! - [`guard`]: a panic in one poll, action or delivery is caught there.
//! - [`http`]: the hyper serve loop and the JSON error shape.
//! - [`callback`] and [`admin`]: the two listeners.
//! - [`daemon`]: wires it all together under one cancellation token.
//! - [`sim`]: provider simulators for tests, the demo and benchmarks.
//! - [`demo`], [`client`], [`cli`]: the command line.

#![forbid(unsafe_code)]

pub mod action;
pub mod admin;
pub mod bench;
pub mod callback;
pub mod circuit;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod engine;
pub mod export;
pub mod guard;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod money;
pub mod notify;
pub mod outbound;
pub mod pacer;
pub mod provider;
pub mod scheduler;
pub mod sdnotify;
pub mod sim;
pub mod state;
pub mod store;
pub mod sync;
