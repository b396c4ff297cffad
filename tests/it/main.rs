//! Integration tests against a real PostgreSQL server (see `common` for how they
//! find it). One test binary keeps link time down.

mod common;
mod copy;
mod bad_input;
mod configs;
mod secrets;
mod types;
