//! stride copies a PostgreSQL table, or a query's rows, into another database over
//! several connections at once.
//!
//! One run, as data flowing through the modules:
//!
//! ```text
//! job.toml ─► job ─► engine (introspect both sides) ─► plan ─► copy (workers) ─► report
//! ```
//!
//! - [`job`]: the TOML file, `${VAR}` interpolation and validation (pure).
//! - [`sql`], [`partition`], [`plan`]: identifiers, typed literals, Spark-style
//!   partition ranges and every statement a run sends (pure, unit- and
//!   property-tested).
//! - [`engine`]: the engines, one folder each. [`engine::postgres`]: connections,
//!   the catalogue, the exported snapshot, bounds, estimates; libpq's connection
//!   parameters resolved as libpq does, TLS, keepalives, the server session
//!   behind a connection, the DDL of tables stride creates or swaps in, and
//!   its own route ([`engine::postgres::copy`]: the scheduler and the two ways a
//!   partition travels, COPY pass-through and batched INSERTs, one target
//!   transaction per partition, with a stall watchdog). [`engine::sqlite`]:
//!   SQLite files; between different engines rows travel as canonical text.
//! - [`report`]: progress, the summary and its partitions, `plan` and `check` output.
//! - [`init`]: `stride init`'s choice of partition column, strategy and count,
//!   and the job file it writes (pure, apart from reading the catalogue).
//! - [`commands`]: the one place that knows the order of a command's steps.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod engine;
pub mod error;
pub mod init;
pub mod job;
pub mod order;
pub mod partition;
pub mod pattern;
pub mod plan;
pub mod report;
pub mod run;
pub mod sql;
