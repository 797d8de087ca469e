//! The two listeners: the providers' callback listener ([`callback`]) and
//! the local admin API ([`admin`]), both served by [`crate::http`].

pub mod admin;
pub mod callback;
pub mod dead;
