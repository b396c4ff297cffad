//! The engines stride reads and writes, one folder each.
pub mod postgres;
