//! Integration tests: real packets over real sockets on loopback, against the real binary.

mod support;

mod alerts;
mod allowlists;
mod differential;
mod dnssec;
mod feeds;
mod hardening;
mod mail;
mod ops;
mod page;
mod policy;
mod querylog;
mod recursion;
mod resolution;
mod tcp;
mod tls;
mod trusted;
mod xfr;
