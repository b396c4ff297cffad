//! Integration tests against a real PostgreSQL server (see `common` for how they
//! find it). One test binary keeps link time down.

mod bad_input;
mod bench;
mod cluster;
mod common;
mod configs;
mod copy;
mod covid;
mod examples;
mod incremental;
mod indexes;
mod init;
mod lock;
mod modes;
mod props;
mod replace;
mod resume;
mod secrets;
mod shards;
mod slices;
mod slots;
mod standby;
mod strategies;
mod tables;
mod types;
mod unattended;
