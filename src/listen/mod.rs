//! The two listeners and what they share: the hyper serve loop with its
//! limits and the one JSON error shape ([`http`]), the providers' callback
//! listener ([`callback`]) and the local admin API ([`admin`]).

pub mod admin;
pub mod callback;
pub mod http;
