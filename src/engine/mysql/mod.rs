//! MySQL and MariaDB, as a source and as a target (issue 14).
//!
//! [`dialect`] holds every statement stride sends them, their URL, the type
//! mapping to and from the other engines and the conversions of values to and
//! from canonical text: pure code, unit-tested without a server.

pub mod dialect;
