//! What `stride init` reads from a PostgreSQL catalogue: size, the indexed
//! columns that can partition the table, and the first one's statistics.

use anyhow::{Context, Result};
use sqlx::PgConnection;

use crate::engine::postgres as pg;
use crate::engine::postgres::plan::{self, Key};
use crate::init::{Candidate, Distribution, TableFacts};
use crate::partition::KeyType;
use crate::sql::QualifiedName;

/// Reads what init needs of `table`; `None` if it does not exist.
pub async fn introspect(
    conn: &mut PgConnection,
    table: &QualifiedName,
) -> Result<Option<TableFacts>> {
    let Some(relation) = pg::describe_table(conn, table).await? else {
        return Ok(None);
    };
    // A partitioned table holds no rows itself: its size and rows are its leaf
    // partitions' (pg_partition_tree recurses into sub-partitioned ones), and
    // one never analyzed (-1) makes the sum unknown.
    let (reltuples, bytes): (f64, i64) = sqlx::query_as(
        "SELECT CASE WHEN bool_or(c.reltuples < 0) THEN -1 ELSE coalesce(sum(c.reltuples), 0) END::float8, \
                coalesce(sum(pg_table_size(c.oid)), 0)::int8 \
         FROM pg_class c \
         WHERE CASE WHEN (SELECT relkind FROM pg_class WHERE oid = to_regclass($1)) = 'p' \
               THEN c.oid IN (SELECT relid FROM pg_partition_tree(to_regclass($1)) WHERE isleaf) \
               ELSE c.oid = to_regclass($1) END",
    )
    .bind(table.to_string())
    .fetch_one(&mut *conn)
    .await
    .with_context(|| format!("reading the size of {table}"))?;
    // Never analyzed (-1): the planner's estimate from the table's pages.
    let rows = if reltuples >= 0.0 {
        reltuples as i64
    } else {
        pg::estimate_rows(conn, &format!("SELECT * FROM {table}")).await?
    };
    let indexed: Vec<(String, String, bool, bool)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), i.indisprimary, i.indisunique \
         FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
         WHERE i.indrelid = to_regclass($1) AND i.indisvalid AND i.indpred IS NULL \
         ORDER BY i.indisprimary DESC, i.indisunique DESC, i.indexrelid",
    )
    .bind(table.to_string())
    .fetch_all(&mut *conn)
    .await
    .with_context(|| format!("reading the indexes of {table}"))?;
    let mut candidates: Vec<Candidate> = Vec::new();
    for (column, type_name, primary, unique) in indexed {
        if candidates.iter().any(|c| c.column == column) {
            continue;
        }
        if let Some(key_type) = KeyType::from_pg(&type_name) {
            candidates.push(Candidate {
                column,
                type_name,
                key_type,
                primary,
                unique,
            });
        }
    }
    let distribution = match candidates.first() {
        Some(c) => {
            let key = Key {
                column: c.column.clone(),
                key_type: c.key_type,
            };
            pg::statistics(conn, &plan::statistics_sql(table, &key))
                .await?
                .filter(|s| s.histogram.len() > 1)
                .map(|s| {
                    let (points, nulls) =
                        plan::statistics_points(s.null_frac, &s.common, &s.histogram);
                    Distribution { points, nulls }
                })
        }
        None => None,
    };
    Ok(Some(TableFacts {
        table: table.clone(),
        kind: relation.kind,
        rows,
        bytes,
        candidates,
        distribution,
        file: false,
    }))
}
