//! The platform's side, simulated: a receiver for payrecon's notifications
//! that checks their signatures as a platform would. Each provider's
//! sandbox (an HTTP server on loopback, faithful to its seed document)
//! lives in its folder, `providers/<name>/sim.rs`; tests, the demo and the
//! benchmarks drive them in-process.

pub mod platform;
