//! HTTP edges: the admin API (and, later, the cleanup page).

pub mod admin;
pub mod client;
