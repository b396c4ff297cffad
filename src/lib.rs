//! stride copies a PostgreSQL table, or a query's rows, into another database over
//! several connections at once.
//!
//! One run, as data flowing through the modules:
//!
//! ```text
//! job.toml ─► job ─► pg (introspect both sides) ─► plan ─► copy (workers) ─► report
//! ```
//!
//! - [`job`]: the TOML file, `${VAR}` interpolation and validation (pure).
//! - [`sql`], [`partition`], [`plan`]: identifiers, typed literals, Spark-style
//!   partition ranges and every statement a run sends (pure, unit- and
//!   property-tested); [`replace`]: the staging table and swap of
//!   `mode = "replace"` (pure); [`create`]: a table stride creates, with the
//!   source's primary key and indexes built after the load (pure).
//! - [`libpq`]: libpq's connection parameters, resolved as libpq does (pure);
//!   [`tls`]: the trust store, system roots and what a failed handshake means;
//!   [`keepalive`]: TCP keepalives on stride's end of sqlx's sockets.
//! - [`pg`]: connections, the catalogue, the exported snapshot, bounds, estimates.
//! - [`copy`]: the scheduler and the two ways a partition travels (COPY
//!   pass-through, batched INSERTs), one target transaction per partition, with
//!   a watchdog that fails a partition whose connection stops moving data
//!   (`run.stall_timeout`); [`session`]: the server session behind a connection,
//!   and ending it (after a stall, or to settle an unanswered COMMIT).
//! - [`report`]: progress, the summary, `plan` and `check` output.
//! - [`init`]: `stride init`'s choice of partition column, strategy and count,
//!   and the job file it writes (pure, apart from reading the catalogue).
//! - [`commands`]: the one place that knows the order of a command's steps.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod copy;
pub mod create;
pub mod error;
pub mod init;
pub mod job;
pub mod keepalive;
pub mod libpq;
pub mod order;
pub mod partition;
pub mod pattern;
pub mod pg;
pub mod plan;
pub mod replace;
pub mod report;
pub mod session;
pub mod sql;
pub mod tls;
