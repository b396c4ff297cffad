//! Every statement stride sends to SQLite, and SQLite's type rules (pure).
//!
//! SQLite keeps any value in any column; a column's declared type only gives
//! it an *affinity* that converts some values on the way in (text `'1.50'`
//! becomes the number 1.5 in a `NUMERIC` column). stride therefore decides per
//! column, before writing, how each value is stored, and refuses a column
//! whose affinity would change the values it gets ([`bind`]).

use crate::engine::{Kind, Upsert};
use crate::job::{Job, Relation};
use crate::partition::{KeyRange, KeyType};
use crate::plan::{enclose, where_clause};
use crate::sql::{quote_ident, quote_literal, QualifiedName};

/// Most `?` parameters one statement may have (SQLite's limit since 3.32).
pub const MAX_PARAMETERS: usize = 32_766;

/// A table's name in SQLite's SQL: a schema is the name of an attached
/// database (`main` is the file itself).
pub fn table(name: &QualifiedName) -> String {
    name.to_string()
}

/// SQLite's affinity of a declared type, by its rules
/// (<https://www.sqlite.org/datatype3.html>, 3.1), in their order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Text,
    /// No declared type, or BLOB: values are kept as they are given.
    Blob,
    Real,
    Numeric,
}

pub fn affinity(declared: &str) -> Affinity {
    let t = declared.to_ascii_uppercase();
    if t.contains("INT") {
        Affinity::Integer
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        Affinity::Text
    } else if t.contains("BLOB") || t.trim().is_empty() {
        Affinity::Blob
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        Affinity::Real
    } else {
        Affinity::Numeric
    }
}

/// What a column of this declared type holds, for the other engines: the
/// names SQLite users and tools write (and stride writes when it creates a
/// table) for booleans, dates and timestamps, then the affinity.
pub fn kind_of(declared: &str) -> Kind {
    let t = declared.to_ascii_uppercase();
    let base = t.split('(').next().unwrap_or("").trim();
    match base {
        "BOOLEAN" | "BOOL" => Kind::Bool,
        "DATE" => Kind::Date,
        "DATETIME" | "TIMESTAMP" => Kind::Timestamp,
        "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" => Kind::TimestampTz,
        "TIME" => Kind::Time,
        "NUMERIC" | "DECIMAL" => Kind::Numeric,
        _ => match affinity(&t) {
            Affinity::Integer => Kind::Int,
            Affinity::Real => Kind::Float,
            Affinity::Blob if t.contains("BLOB") => Kind::Bytes,
            _ => Kind::Text,
        },
    }
}

/// The declared type of a column stride creates for values of `kind`: one
/// whose affinity keeps them and whose name says what they are, so they read
/// back as the same kind. Exact decimals are TEXT (SQLite's NUMERIC would
/// store `1.50` as 1.5).
pub fn declared_for(kind: Kind) -> &'static str {
    match kind {
        Kind::Bool => "BOOLEAN",
        Kind::Int => "INTEGER",
        Kind::Float => "REAL",
        Kind::Numeric | Kind::Text => "TEXT",
        Kind::Bytes => "BLOB",
        Kind::Date => "DATE",
        Kind::Timestamp => "TIMESTAMP",
        Kind::TimestampTz => "TIMESTAMPTZ",
        Kind::Time => "TIME",
    }
}

/// How one column's canonical values are bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    /// An integer; booleans' `t`/`f` as 1/0.
    Integer,
    /// A float; `NaN` as the text `'NaN'` (SQLite has no NaN: as a REAL it
    /// would become NULL), `Infinity` as the REAL infinity.
    Real,
    /// Bytes from `\x...`.
    Blob,
    Text,
}

/// How values of `source` kind are bound into a column of `declared` type,
/// or why they cannot be kept there.
pub fn bind(source: Kind, declared: &str) -> Result<Bind, String> {
    let natural = match source {
        Kind::Bool | Kind::Int => Bind::Integer,
        Kind::Float => Bind::Real,
        Kind::Bytes => Bind::Blob,
        _ => Bind::Text,
    };
    let target = kind_of(declared);
    if target == Kind::Bool && source != Kind::Bool {
        return Err(format!(
            "a BOOLEAN column holds 1 and 0; {} values are not booleans",
            kind_name(source)
        ));
    }
    match (affinity(declared), natural) {
        // Bytes are never converted by affinity.
        (_, Bind::Blob) | (Affinity::Blob, _) => Ok(natural),
        (Affinity::Integer, Bind::Integer) | (Affinity::Real, Bind::Real) => Ok(natural),
        // A float as text would lose digits SQLite's REAL-to-TEXT cut; as our
        // canonical text it keeps them all.
        (Affinity::Text, _) => Ok(Bind::Text),
        (Affinity::Numeric, Bind::Integer | Bind::Real) => Ok(natural),
        (Affinity::Numeric, Bind::Text)
            if matches!(
                source,
                Kind::Date | Kind::Timestamp | Kind::TimestampTz | Kind::Time
            ) =>
        {
            Ok(Bind::Text)
        }
        (affinity, _) => Err(format!(
            "its declared type {declared} has {affinity:?} affinity, which would store {} values as numbers and change some ({}); declare it TEXT",
            kind_name(source),
            match source {
                Kind::Numeric => "1.50 would become 1.5",
                Kind::Text => "'007' would become 7",
                Kind::Float => "0.1 as an integer column's value is not kept",
                _ => "they are not numbers",
            }
        )),
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Bool => "boolean",
        Kind::Int => "integer",
        Kind::Float => "floating-point",
        Kind::Numeric => "exact decimal",
        Kind::Bytes => "binary",
        Kind::Date => "date",
        Kind::Timestamp => "timestamp",
        Kind::TimestampTz => "timestamp with time zone",
        Kind::Time => "time",
        Kind::Text => "text",
    }
}

/// A key value as an SQLite literal: integers as numbers, dates and
/// timestamps as their ISO text (SQLite keeps them as text, which sorts as
/// the values do).
fn literal(key: KeyType, value: i64) -> String {
    match key {
        KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => value.to_string(),
        _ => quote_literal(&key.display(value)),
    }
}

/// The condition selecting `range` of the key column `column` (quoted), with
/// the partition contract's edges: the first range takes NULLs.
pub fn predicate(column: &str, key: KeyType, range: &KeyRange) -> Option<String> {
    match (range.lower, range.upper) {
        (None, None) => None,
        (None, Some(upper)) => Some(format!(
            "({column} < {} OR {column} IS NULL)",
            literal(key, upper)
        )),
        (Some(lower), Some(upper)) => Some(format!(
            "({column} >= {} AND {column} < {})",
            literal(key, lower),
            literal(key, upper)
        )),
        (Some(lower), None) => Some(format!("{column} >= {}", literal(key, lower))),
    }
}

/// The `FROM` item of every read of the job: the table, the query, or with
/// `limit` the first rows by the key (then the row id) as a subquery, so every
/// partition sees the same rows.
fn from(job: &Job) -> (String, Option<&str>) {
    let source = &job.source;
    let relation = match &source.relation {
        Relation::Table(name) => table(name),
        Relation::Query(query) => format!("{} AS {}", enclose(query), quote_ident("source")),
    };
    let Some(limit) = source.limit else {
        return (relation, source.where_clause.as_deref());
    };
    let mut order: Vec<String> = job
        .partition
        .as_ref()
        .and_then(|p| p.column.as_ref())
        .map(|c| quote_ident(c))
        .into_iter()
        .collect();
    if matches!(source.relation, Relation::Table(_)) {
        order.push("rowid".into());
    }
    let order = if order.is_empty() {
        String::new()
    } else {
        format!(" ORDER BY {}", order.join(", "))
    };
    (
        format!(
            "(SELECT * FROM {relation}{}{order} LIMIT {limit}) AS {}",
            where_clause(source.where_clause.as_deref(), None),
            quote_ident("stride_slice")
        ),
        None,
    )
}

/// The statement reading `columns` of the job's rows within `range` of the key.
pub fn select(
    job: &Job,
    columns: &[crate::engine::Column],
    key: Option<(&str, KeyType)>,
    range: &KeyRange,
) -> String {
    let (from, user) = from(job);
    let list: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    let pred = key.and_then(|(column, key)| predicate(&quote_ident(column), key, range));
    format!(
        "SELECT {} FROM {from}{}",
        list.join(", "),
        where_clause(user, pred)
    )
}

/// The key column's smallest and largest value over the job's rows.
pub fn bounds_sql(job: &Job, column: &str) -> String {
    let (from, user) = from(job);
    let c = quote_ident(column);
    format!(
        "SELECT min({c}), max({c}) FROM {from}{}",
        where_clause(user, None)
    )
}

/// Rows per INSERT for `width` columns: `batch` at most, within SQLite's
/// parameter limit.
pub fn rows_per_insert(width: usize, batch: usize) -> usize {
    (MAX_PARAMETERS / width.max(1)).clamp(1, batch.max(1))
}

/// A multi-row INSERT of `rows` rows, with an upsert's `ON CONFLICT`.
pub fn insert_sql(table: &str, columns: &[String], rows: usize, upsert: Option<&Upsert>) -> String {
    let list: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let one = format!("({})", vec!["?"; columns.len()].join(", "));
    let mut sql = format!(
        "INSERT INTO {table} ({}) VALUES {}",
        list.join(", "),
        vec![one; rows].join(", ")
    );
    if let Some(u) = upsert {
        let key: Vec<String> = u.key.iter().map(|c| quote_ident(c)).collect();
        let set: Vec<String> = columns
            .iter()
            .filter(|c| !u.key.contains(c))
            .map(|c| format!("{0} = excluded.{0}", quote_ident(c)))
            .collect();
        if u.update && !set.is_empty() {
            sql.push_str(&format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                key.join(", "),
                set.join(", ")
            ));
        } else {
            sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", key.join(", ")));
        }
    }
    sql
}

/// The checkpoint table: one row per run (`partition = -1`, with the bounds
/// it planned with) and one per committed partition, written in the
/// partition's own transaction.
pub fn checkpoint_table_sql(table: &str) -> String {
    crate::checkpoint::create_table_columns(table, |c| c.2.to_string(), &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_follows_sqlites_rules_in_order() {
        for (declared, expected) in [
            ("INTEGER", Affinity::Integer),
            ("BIGINT", Affinity::Integer),
            ("POINT", Affinity::Integer), // SQLite's own example: it contains "INT"
            ("STRING", Affinity::Numeric),
            ("FLOATING POINT", Affinity::Integer),
            ("VARCHAR(20)", Affinity::Text),
            ("CHARINT", Affinity::Integer),
            ("", Affinity::Blob),
            ("BLOB", Affinity::Blob),
            ("DOUBLE PRECISION", Affinity::Real),
            ("DECIMAL(10,2)", Affinity::Numeric),
            ("BOOLEAN", Affinity::Numeric),
            ("TIMESTAMPTZ", Affinity::Numeric),
        ] {
            assert_eq!(affinity(declared), expected, "{declared}");
        }
    }

    #[test]
    fn created_columns_read_back_as_the_kind_they_were_made_for() {
        for kind in [
            Kind::Bool,
            Kind::Int,
            Kind::Float,
            Kind::Bytes,
            Kind::Date,
            Kind::Timestamp,
            Kind::TimestampTz,
            Kind::Time,
            Kind::Text,
        ] {
            assert_eq!(kind_of(declared_for(kind)), kind, "{kind:?}");
            assert!(bind(kind, declared_for(kind)).is_ok(), "{kind:?}");
        }
        // Exact decimals are kept as text, not as SQLite's lossy NUMERIC.
        assert_eq!(declared_for(Kind::Numeric), "TEXT");
        assert_eq!(bind(Kind::Numeric, "TEXT"), Ok(Bind::Text));
    }

    #[test]
    fn a_column_whose_affinity_would_change_values_is_refused() {
        let e = bind(Kind::Numeric, "DECIMAL(10,2)").unwrap_err();
        assert!(e.contains("1.50 would become 1.5"), "{e}");
        assert!(bind(Kind::Numeric, "NUMERIC").is_err());
        assert!(bind(Kind::Text, "INTEGER").is_err());
        assert!(bind(Kind::Float, "INTEGER").is_err());
        assert!(bind(Kind::Int, "BOOLEAN").is_err());
        assert_eq!(bind(Kind::Int, "NUMERIC"), Ok(Bind::Integer));
        assert_eq!(bind(Kind::Date, "DATE"), Ok(Bind::Text));
        assert_eq!(bind(Kind::Float, "TEXT"), Ok(Bind::Text));
        assert_eq!(bind(Kind::Bytes, "TEXT"), Ok(Bind::Blob));
        assert_eq!(bind(Kind::Numeric, ""), Ok(Bind::Text));
    }

    #[test]
    fn predicates_compare_dates_as_iso_text_and_put_nulls_first() {
        let r = |lower, upper| KeyRange { lower, upper };
        assert_eq!(
            predicate("\"d\"", KeyType::Date, &r(None, Some(19_000))),
            Some("(\"d\" < '2022-01-08' OR \"d\" IS NULL)".into())
        );
        assert_eq!(
            predicate("\"id\"", KeyType::Int8, &r(Some(-5), Some(10))),
            Some("(\"id\" >= -5 AND \"id\" < 10)".into())
        );
        assert_eq!(
            predicate("\"t\"", KeyType::Timestamp, &r(Some(1_500_000), None)),
            Some("\"t\" >= '1970-01-01 00:00:01.5'".into())
        );
        assert_eq!(predicate("\"id\"", KeyType::Int8, &r(None, None)), None);
    }

    #[test]
    fn inserts_fit_the_parameter_limit_and_upsert_by_key() {
        assert_eq!(rows_per_insert(3, 1000), 1000);
        assert_eq!(rows_per_insert(100, 1000), 327);
        assert_eq!(rows_per_insert(40_000, 1000), 1);
        let cols = vec!["id".to_string(), "v".to_string()];
        assert_eq!(
            insert_sql("\"t\"", &cols, 2, None),
            "INSERT INTO \"t\" (\"id\", \"v\") VALUES (?, ?), (?, ?)"
        );
        let upsert = Upsert {
            key: vec!["id".into()],
            update: true,
        };
        assert_eq!(
            insert_sql("\"t\"", &cols, 1, Some(&upsert)),
            "INSERT INTO \"t\" (\"id\", \"v\") VALUES (?, ?) ON CONFLICT (\"id\") DO UPDATE SET \"v\" = excluded.\"v\""
        );
        let skip = Upsert {
            key: vec!["id".into()],
            update: false,
        };
        assert!(
            insert_sql("\"t\"", &cols, 1, Some(&skip)).ends_with("ON CONFLICT (\"id\") DO NOTHING")
        );
    }
}
