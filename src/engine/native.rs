//! The native route: when source and target are both PostgreSQL, the target
//! picks its own route once per run (binary COPY passed through, and the
//! features only that pair has); every other pair runs across the seam
//! (`commands::transfer`). The commands reach the native route only here.

use anyhow::Result;

use super::postgres::route;
use crate::run::start::RunOptions;

pub use route::prepare::{prepare, Prepared};
pub use route::preview::{check, plan};
pub use route::run::run;
pub use route::status::status;
pub use route::verify::verify;

/// What a run would refuse before it writes anything (exit 2).
pub async fn check_before_writing(p: &Prepared, opts: &RunOptions) -> Result<()> {
    route::run::check_before_writing(&p.job, &p.target, opts).await
}
