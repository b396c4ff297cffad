//! PostgreSQL's own route, from one PostgreSQL server to another: binary COPY
//! passed through, and what only this pair has (block ranges, quantiles from
//! the planner's statistics, incremental runs, shards, repair by key, the
//! replace swap). `engine::native` is how the commands reach it.

pub mod prepare;
pub mod preview;
pub mod run;
pub mod status;
pub mod verify;
