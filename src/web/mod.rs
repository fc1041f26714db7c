//! HTTP edges: the admin API and the cleanup page.

pub mod admin;
pub mod client;
pub mod content;
pub mod http;
pub mod page;
