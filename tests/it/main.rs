//! Integration tests: real packets over real sockets on loopback, against the real binary.

mod support;

mod allowlists;
mod policy;
mod recursion;
