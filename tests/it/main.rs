//! Integration tests: real packets over real sockets on loopback, against the real binary.

mod support;

mod allowlists;
mod page;
mod policy;
mod recursion;
