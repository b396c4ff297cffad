//! Integration tests against a real PostgreSQL server, and a MySQL/MariaDB one for
//! `mysql` (see `common` for how they find them). One test binary keeps link
//! time down.

mod bad_input;
mod bench;
mod cluster;
mod common;
mod configs;
mod connecting;
mod conversions;
mod copy;
mod covid;
mod create;
mod engines;
mod examples;
mod generated;
mod hints;
mod incremental;
mod indexes;
mod init;
mod layout;
mod lock;
mod modes;
mod mysql;
mod mysql_engine;
mod props;
mod proxy;
mod repair;
mod replace;
mod resume;
mod schema;
mod scripts;
mod secrets;
mod shards;
mod slices;
mod slots;
mod sqlite;
mod stalls;
mod standby;
mod strategies;
mod tables;
mod tls;
mod types;
mod unattended;
mod workers;
