//! The native route: when source and target are both PostgreSQL, the target
//! picks its own route once per run (binary COPY passed through, and the
//! features only that pair has); every other pair runs across the seam
//! (`commands::transfer`). The commands reach the native route only here.

pub use super::postgres::route::prepare::{prepare, Prepared};
pub use super::postgres::route::preview::{check, plan};
pub use super::postgres::route::run::run;
pub use super::postgres::route::status::status;
pub use super::postgres::route::verify::verify;

use anyhow::Result;

use crate::run::start::RunOptions;

/// What a run would refuse before it writes anything (exit 2).
pub async fn check_before_writing(p: &Prepared, opts: &RunOptions) -> Result<()> {
    super::postgres::route::run::check_before_writing(&p.job, &p.target, opts).await
}
