//! Every statement stride sends to MySQL and MariaDB, their URL and option
//! file, the type mapping to and from the other engines, and the conversions of
//! values to and from canonical text (pure: no I/O, tested without a server).
//!
//! # Types, both ways
//!
//! MySQL/MariaDB to PostgreSQL, from `information_schema.COLUMNS.COLUMN_TYPE`
//! ([`postgres_type`], [`kind_of`]). Every conversion is loss-free or refused:
//!
//! | MySQL / MariaDB                      | kind        | PostgreSQL          | note |
//! |--------------------------------------|-------------|---------------------|------|
//! | `tinyint(1)`, `boolean`              | bool        | `boolean`           | only if every value is 0, 1 or NULL ([`bool_check_sql`]); else `smallint` |
//! | `tinyint`, `tinyint unsigned`, `smallint` | int    | `smallint`          | |
//! | `smallint unsigned`, `mediumint` (signed or not), `int` | int | `integer` | a mediumint is 24 bits |
//! | `int unsigned`, `bigint`             | int         | `bigint`            | |
//! | `bigint unsigned`                    | numeric     | `numeric(20,0)`     | up to 18446744073709551615 |
//! | `decimal(p,s)`                       | numeric     | `numeric(p,s)`      | exact, up to `decimal(65,30)` |
//! | `float`                              | float       | `real`              | |
//! | `double`                             | float       | `double precision`  | |
//! | `char(n)`, `varchar(n)`              | text        | `varchar(n)`        | not `char(n)`: PostgreSQL would pad with spaces |
//! | `tinytext` .. `longtext`             | text        | `text`              | read as utf8mb4, emoji included |
//! | `binary(n)`, `varbinary(n)`, `*blob` | bytes       | `bytea`             | |
//! | `date`                               | date        | `date`              | zero and partial dates: see below |
//! | `datetime(n)`                        | timestamp   | `timestamp(n)`      | no time zone shift |
//! | `timestamp(n)`                       | timestamptz | `timestamptz(n)`    | read in UTC (`time_zone = '+00:00'`) |
//! | `time(n)`                            | time        | `time(n)`           | only if every value is within a day ([`time_check_sql`]); else refused by name (exit 2) |
//! | `year`                               | int         | `smallint`          | |
//! | `bit(1)`                             | bool        | `boolean`           | |
//! | `bit(n)`, n > 1                      | text        | `bit(n)`            | as a string of 0s and 1s |
//! | `enum(...)`, `set(...)`              | text        | `text`              | |
//! | `json` (MariaDB: `longtext` checked by `json_valid`) | text | `jsonb` | |
//! | `uuid`, `inet4`, `inet6` (MariaDB)   | text        | `uuid`, `inet`      | |
//! | `geometry`, `point`, ... (spatial)   | refused     |                     | by name |
//!
//! PostgreSQL (or SQLite, by kind) to MySQL/MariaDB, for a table stride
//! creates ([`mysql_type`]):
//!
//! | PostgreSQL                         | MySQL / MariaDB   | note |
//! |------------------------------------|-------------------|------|
//! | `boolean`                          | `tinyint(1)`      | |
//! | `smallint`, `integer`, `bigint`    | `smallint`, `int`, `bigint` | SQLite's `INTEGER`: `bigint` |
//! | `numeric(p,s)`                     | `decimal(p,s)`    | p > 65 or s > 30 refused |
//! | `numeric` (no precision)           | refused           | MySQL has no unbounded decimal: give the target table yourself |
//! | `real`, `double precision`         | `float`, `double` | `NaN` and `Infinity` values refused |
//! | `varchar(n)`, `char(n)`            | `varchar(n)`      | n up to 16383, above `longtext`; not `char(n)`, whose trailing spaces MySQL drops |
//! | `text` and other text forms        | `longtext`        | `varchar(768)` in a key (InnoDB keys are at most 3072 bytes) |
//! | `uuid`                             | `char(36)`        | |
//! | `json`, `jsonb`                    | `json`            | |
//! | `bit(n)`                           | `bit(n)`          | n up to 64; above, `longtext` |
//! | `bytea`                            | `longblob`        | `varbinary(3072)` in a key |
//! | `date`                             | `date`            | years 1 to 9999; BC and infinity refused |
//! | `timestamp(n)`                     | `datetime(n)`     | (6) without a precision |
//! | `timestamptz(n)`                   | `datetime(n)`, in UTC | not `timestamp`, which ends in 2038 |
//! | `time(n)`                          | `time(n)`         | |
//! | arrays, `interval` and the rest    | `longtext`        | their text form |
//!
//! Into a column that is already there, [`literal`] refuses by value what
//! MySQL would change without an error even in strict mode: a fraction into
//! an integer or a smaller scale, digits a float cannot hold, fractional
//! seconds beyond the column's, a year it would read as another, trailing
//! spaces into `char(n)`.
//!
//! # Zero and partial dates
//!
//! MySQL keeps `0000-00-00`, `2021-00-15` and `2021-02-00`, which no other
//! engine has. They are never changed silently: [`zero_dates_sql`] counts them
//! per column for `check`, [`canonical`] refuses them by value, and the job
//! decides (refuse, or NULL counted in the summary).
//!
//! # Sessions
//!
//! The statements here assume what the I/O layer sets on every connection
//! ([`session_sql`]): `utf8mb4`, `time_zone = '+00:00'` (so `timestamp`
//! columns read and write in UTC) and a strict `sql_mode` (so a value that
//! does not fit is an error, not a warning).

use std::borrow::Cow;
use std::ops::Range;

use crate::engine::{bytes_text, float_text, hex_bytes, Column, Engine, Kind, Upsert};
use crate::error::JobError;
use crate::job::{DbUrl, Job, Relation};
use crate::partition::{KeyRange, KeyType};
use crate::plan::{enclose, where_clause};
use crate::sql::QualifiedName;

// ---------------------------------------------------------------------------
// URL and option file: in `super::url` (a leaf `engine::url` imports).

#[cfg(test)]
use super::url::is_shown;
pub use super::url::{
    credentials, my_cnf_client, parse_url, Credentials, MysqlUrl, SslMode, DEFAULT_PORT, PARAMETERS,
};

/// Checks a job's MySQL URL as the other engines' `check_url` do: the URL
/// itself is kept (in a [`DbUrl`], which hides its password) and parsed
/// again where it is used.
pub fn check_url(key: &str, url: DbUrl) -> Result<DbUrl, JobError> {
    parse_url(key, url.expose())?;
    Ok(url)
}

// ---------------------------------------------------------------------------
// Types

/// How a reader turns a column's text (MySQL's text protocol) into canonical
/// text ([`canonical`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// As it is: integers, decimals, text, enum, set, json.
    AsIs,
    /// `0`/`1` (a `tinyint(1)`) to `f`/`t`.
    Bool,
    /// One byte `0x00`/`0x01` (a `bit(1)`) to `f`/`t`.
    BitBool,
    /// Big-endian bytes to `n` digits 0 and 1 (a `bit(n)`).
    Bits(u32),
    /// A `double`.
    Float,
    /// A `float` (4 bytes), selected as a double ([`select_item`]): its
    /// shortest digits as a 4-byte float, as PostgreSQL prints a `real`.
    Float4,
    Bytes,
    Date,
    /// A `datetime`: its fraction's trailing zeros dropped.
    Datetime,
    /// A `timestamp`, read in UTC: as a datetime, then `+00`.
    TimestampUtc,
    /// A `time`: the fraction's trailing zeros dropped.
    Time,
    /// A `year`: `0000` is `0`.
    Year,
}

/// What a MySQL column type becomes elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapping {
    kind: Kind,
    postgres: String,
    reading: Reading,
}

/// A `COLUMN_TYPE` split: base name, what is in its parentheses, unsigned.
fn split_type(column_type: &str) -> (String, Option<&str>, bool) {
    let t = column_type.trim();
    let (base, args, rest) = match (t.find('('), t.rfind(')')) {
        (Some(open), Some(close)) if open < close => {
            (&t[..open], Some(&t[open + 1..close]), &t[close + 1..])
        }
        _ => (t, None, ""),
    };
    let mut words = base.split_whitespace().chain(rest.split_whitespace());
    let name = words.next().unwrap_or("").to_ascii_lowercase();
    let mut unsigned = false;
    let mut more = Vec::new();
    for w in words {
        match w.to_ascii_lowercase().as_str() {
            "unsigned" => unsigned = true,
            // zerofill only pads the client's display; MySQL 8 prints
            // `double precision` as `double`, MariaDB may keep both words.
            "zerofill" | "precision" => {}
            other => more.push(other.to_string()),
        }
    }
    let name = if more.is_empty() {
        name
    } else {
        format!("{name} {}", more.join(" "))
    };
    (name, args, unsigned)
}

/// The numbers in a type's parentheses: `(10,2)` is `[10, 2]`.
fn numbers(args: Option<&str>) -> Option<Vec<u32>> {
    args.map(|a| a.split(',').map(|n| n.trim().parse().ok()).collect())
        .and_then(|v: Option<Vec<u32>>| v.filter(|v| !v.is_empty()))
}

const SPATIAL: &[&str] = &[
    "geometry",
    "point",
    "linestring",
    "polygon",
    "multipoint",
    "multilinestring",
    "multipolygon",
    "geometrycollection",
    "geomcollection",
];

fn mapping(column_type: &str) -> Result<Mapping, String> {
    let (base, args, unsigned) = split_type(column_type);
    let n = numbers(args);
    let first = n.as_ref().and_then(|v| v.first().copied());
    let m = |kind, postgres: &str, reading| {
        Ok(Mapping {
            kind,
            postgres: postgres.to_string(),
            reading,
        })
    };
    let precision = |pg: &str| match first {
        Some(p) => format!("{pg}({p})"),
        None => format!("{pg}(0)"),
    };
    match base.as_str() {
        "tinyint" if !unsigned && first == Some(1) => m(Kind::Bool, "boolean", Reading::Bool),
        "bool" | "boolean" => m(Kind::Bool, "boolean", Reading::Bool),
        "tinyint" => m(Kind::Int, "smallint", Reading::AsIs),
        "smallint" if !unsigned => m(Kind::Int, "smallint", Reading::AsIs),
        "smallint" | "mediumint" => m(Kind::Int, "integer", Reading::AsIs),
        "int" | "integer" if !unsigned => m(Kind::Int, "integer", Reading::AsIs),
        "int" | "integer" => m(Kind::Int, "bigint", Reading::AsIs),
        "bigint" if !unsigned => m(Kind::Int, "bigint", Reading::AsIs),
        "bigint" => m(Kind::Numeric, "numeric(20,0)", Reading::AsIs),
        "decimal" | "numeric" | "dec" | "fixed" => {
            let (p, s) = match n.as_deref() {
                Some([p, s]) => (*p, *s),
                Some([p]) => (*p, 0),
                _ => (10, 0),
            };
            m(Kind::Numeric, &format!("numeric({p},{s})"), Reading::AsIs)
        }
        "float" => m(Kind::Float, "real", Reading::Float4),
        "double" | "real" => m(Kind::Float, "double precision", Reading::Float),
        "char" | "varchar" => match first {
            Some(len) => m(Kind::Text, &format!("varchar({len})"), Reading::AsIs),
            None => m(Kind::Text, "text", Reading::AsIs),
        },
        "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" => {
            m(Kind::Text, "text", Reading::AsIs)
        }
        "json" => m(Kind::Text, "jsonb", Reading::AsIs),
        "uuid" => m(Kind::Text, "uuid", Reading::AsIs),
        "inet4" | "inet6" => m(Kind::Text, "inet", Reading::AsIs),
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            m(Kind::Bytes, "bytea", Reading::Bytes)
        }
        "date" => m(Kind::Date, "date", Reading::Date),
        "datetime" => m(Kind::Timestamp, &precision("timestamp"), Reading::Datetime),
        "timestamp" => m(
            Kind::TimestampTz,
            &precision("timestamptz"),
            Reading::TimestampUtc,
        ),
        "time" => m(Kind::Time, &precision("time"), Reading::Time),
        "year" => m(Kind::Int, "smallint", Reading::Year),
        "bit" => match first.unwrap_or(1) {
            1 => m(Kind::Bool, "boolean", Reading::BitBool),
            bits @ 2..=64 => m(Kind::Text, &format!("bit({bits})"), Reading::Bits(bits)),
            _ => Err(format!("{column_type} is not a MySQL bit type (1 to 64 bits)")),
        },
        spatial if SPATIAL.contains(&spatial) => Err(format!(
            "{column_type} is a spatial type, which stride does not copy (select ST_AsText() or ST_AsWKB() of it in a `query`)"
        )),
        _ => Err(format!(
            "{column_type} is a type stride does not know how to copy loss-free (select it as text in a `query`)"
        )),
    }
}

/// The kind of a MySQL column, from `information_schema.COLUMNS.COLUMN_TYPE`
/// (`bigint(20) unsigned`, MySQL 8's `int`, MariaDB's `int(11)`); a type
/// stride cannot copy loss-free is refused by name.
pub fn kind_of(column_type: &str) -> Result<Kind, String> {
    mapping(column_type).map(|m| m.kind)
}

/// The PostgreSQL type of a column stride creates for a MySQL column (the
/// table in the module's doc). `tinyint(1)` and `time` are the types to use when
/// [`bool_check_sql`] and [`time_check_sql`] find no value against them.
pub fn postgres_type(column_type: &str) -> Result<String, String> {
    mapping(column_type).map(|m| m.postgres)
}

/// How a reader turns the column's values into canonical text.
pub fn reading(column_type: &str) -> Result<Reading, String> {
    mapping(column_type).map(|m| m.reading)
}

/// Whether a `tinyint(1)` column holds a value other than 0, 1 and NULL
/// (1: it does, so it becomes `smallint`, not `boolean`).
pub fn bool_check_sql(table: &str, column: &str) -> String {
    let c = quote_ident(column);
    format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE {c} NOT IN (0, 1))")
}

/// Whether a `time` column holds a value outside `00:00:00` to `24:00:00`
/// (MySQL's go from `-838:59:59` to `838:59:59`): 1 means it becomes
/// `interval`, whose text form takes them all.
pub fn time_check_sql(table: &str, column: &str) -> String {
    let c = quote_ident(column);
    format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE {c} < '00:00:00' OR {c} > '24:00:00')")
}

/// Whether `EXTRA` marks a generated column (never written). MySQL 8's
/// `DEFAULT_GENERATED` is a column with a default expression: written.
pub fn is_generated(extra: &str) -> bool {
    let e = extra.to_ascii_uppercase();
    e.contains("VIRTUAL GENERATED") || e.contains("STORED GENERATED")
}

/// The MySQL type of a column stride creates for a column of another engine
/// (the table in the module's doc): `column.declared` is the source's own type when it
/// is PostgreSQL's, else the kind decides. `in_key`: the column is in the
/// primary key, which InnoDB cannot build on `longtext` or `longblob`.
pub fn mysql_type(source: Engine, column: &Column, in_key: bool) -> Result<String, String> {
    let declared = column.declared.trim().to_ascii_lowercase();
    let pg = source == Engine::Postgres;
    let (base, args, _) = split_type(&declared);
    let first = numbers(args).and_then(|v| v.first().copied());
    let keep_precision = |mysql: &str| match first {
        Some(p) if pg => format!("{mysql}({})", p.min(6)),
        _ => format!("{mysql}(6)"),
    };
    let name = &column.name;
    Ok(match column.kind {
        Kind::Bool => "tinyint(1)".into(),
        Kind::Int => match base.as_str() {
            "smallint" | "int2" if pg => "smallint".into(),
            "integer" | "int" | "int4" if pg => "int".into(),
            _ => "bigint".into(),
        },
        Kind::Float => match base.as_str() {
            "real" | "float4" if pg => "float".into(),
            _ => "double".into(),
        },
        Kind::Numeric => match numbers(args).as_deref() {
            Some([p, s]) if *p <= 65 && *s <= 30 => format!("decimal({p},{s})"),
            Some([p]) if *p <= 65 => format!("decimal({p},0)"),
            Some(_) => {
                return Err(format!(
                    "column {name} ({declared}): MySQL decimals have at most 65 digits, 30 after the point; create the target table yourself with a type that keeps its values"
                ))
            }
            None => {
                return Err(format!(
                    "column {name} ({declared}): MySQL has no decimal without a precision, and decimal(65,30) would round values with more than 30 digits after the point; create the target table yourself (for example with decimal(38,10))"
                ))
            }
        },
        Kind::Bytes if in_key => "varbinary(3072)".into(),
        Kind::Bytes => "longblob".into(),
        Kind::Date => "date".into(),
        Kind::Timestamp | Kind::TimestampTz => keep_precision("datetime"),
        Kind::Time => keep_precision("time"),
        Kind::Text => {
            let varchar = |n: u32| n <= 16_383 && !(in_key && n > 768);
            match (base.as_str(), first) {
                ("varchar" | "character varying", Some(n)) if pg && varchar(n) => {
                    format!("varchar({n})")
                }
                // Not char(n): MySQL drops the trailing spaces PostgreSQL pads with.
                ("char" | "character" | "bpchar", Some(n)) if pg && varchar(n) => {
                    format!("varchar({n})")
                }
                ("uuid", _) if pg => "char(36)".into(),
                ("json" | "jsonb", _) if pg && !in_key => "json".into(),
                ("bit", Some(n)) if pg && n <= 64 => format!("bit({n})"),
                _ if in_key => "varchar(768)".into(),
                _ => "longtext".into(),
            }
        }
    })
}

// ---------------------------------------------------------------------------
// Values: MySQL's text to canonical text, and canonical text to literals

/// A date MySQL keeps and no other engine has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DateProblem {
    /// `0000-00-00` (with or without a time).
    Zero,
    /// A zero month or day: `2021-00-15`, `2021-02-00`.
    Partial,
    /// Year 0 of a real month and day, `0000-01-01`: PostgreSQL has no year 0.
    YearZero,
}

impl DateProblem {
    fn noun(self) -> &'static str {
        match self {
            DateProblem::Zero => "a zero date",
            DateProblem::Partial => "a partial date (month or day 0)",
            DateProblem::YearZero => "a date in year 0",
        }
    }
}

/// What is wrong with a `date`, `datetime` or `timestamp` value as MySQL
/// prints it (`YYYY-MM-DD...`), if anything.
pub fn date_problem(text: &str) -> Option<DateProblem> {
    let field = |r: Range<usize>| text.get(r).and_then(|s| s.parse::<u32>().ok());
    if text.as_bytes().get(4) != Some(&b'-') || text.as_bytes().get(7) != Some(&b'-') {
        return None;
    }
    match (field(0..4)?, field(5..7)?, field(8..10)?) {
        (0, 0, 0) => Some(DateProblem::Zero),
        (_, 0, _) | (_, _, 0) => Some(DateProblem::Partial),
        (0, _, _) => Some(DateProblem::YearZero),
        _ => None,
    }
}

/// How many zero, partial and year-0 dates each of `columns` holds, in one
/// statement (one count per column, in order), for `check`; `None` without
/// columns.
pub fn zero_dates_sql(table: &str, columns: &[String]) -> Option<String> {
    if columns.is_empty() {
        return None;
    }
    let counts: Vec<String> = columns
        .iter()
        .map(|c| format!("COUNT(CASE WHEN {} THEN 1 END)", zero_date_condition(c)))
        .collect();
    Some(format!("SELECT {} FROM {table}", counts.join(", ")))
}

/// True for the dates of [`DateProblem`] (NULL for NULL).
fn zero_date_condition(column: &str) -> String {
    let c = quote_ident(column);
    format!("(YEAR({c}) = 0 OR MONTH({c}) = 0 OR DAYOFMONTH({c}) = 0)")
}

/// A value as the text protocol gives it, as canonical text. Refuses by value
/// what canonical text cannot hold: zero and partial dates (see
/// [`date_problem`]: a job that turns them into NULL asks that first), a
/// `tinyint(1)` that is not 0 or 1 (its column should have been found by
/// [`bool_check_sql`]), text that is not UTF-8 (the session reads utf8mb4).
pub fn canonical(reading: Reading, value: &[u8]) -> Result<Cow<'_, str>, String> {
    let text = || {
        std::str::from_utf8(value).map_err(|_| {
            format!(
                "{:?} is not UTF-8 (the session reads utf8mb4)",
                String::from_utf8_lossy(value)
            )
        })
    };
    let dated = |text: &str| match date_problem(text) {
        Some(p) => Err(format!("{text} is {}, which only MySQL has", p.noun())),
        None => Ok(()),
    };
    Ok(match reading {
        Reading::AsIs => text()?.into(),
        Reading::Bool | Reading::BitBool => match (reading, value) {
            (Reading::Bool, b"0") | (Reading::BitBool, [0]) => "f".into(),
            (Reading::Bool, b"1") | (Reading::BitBool, [1]) => "t".into(),
            _ => {
                return Err(format!(
                    "{:?} is not a boolean (0 or 1)",
                    String::from_utf8_lossy(value)
                ))
            }
        },
        Reading::Bits(n) => bits_text(value, n).into(),
        Reading::Float | Reading::Float4 => {
            let t = text()?;
            match t.parse::<f64>() {
                // A double selected from a float is that float exactly.
                Ok(f) if reading == Reading::Float4 => float4_text(f as f32).into(),
                Ok(f) => float_text(f).into(),
                Err(_) => return Err(format!("{t:?} is not a number")),
            }
        }
        Reading::Bytes => bytes_text(value).into(),
        Reading::Date => {
            let t = text()?;
            dated(t)?;
            t.into()
        }
        Reading::Datetime => {
            let t = text()?;
            dated(t)?;
            trim_fraction(t).into()
        }
        Reading::TimestampUtc => {
            let t = text()?;
            dated(t)?;
            format!("{}+00", trim_fraction(t)).into()
        }
        Reading::Time => trim_fraction(text()?).into(),
        Reading::Year => {
            let t = text()?.trim_start_matches('0');
            if t.is_empty() { "0" } else { t }.into()
        }
    })
}

/// A 4-byte float's canonical text: its shortest digits (as PostgreSQL
/// prints a `real`), in [`float_text`]'s form. Those digits read as a double
/// print back the same, having at most 9 of them.
pub fn float4_text(f: f32) -> String {
    match format!("{f:e}").parse::<f64>() {
        Ok(digits) if f.is_finite() => float_text(digits),
        _ => float_text(f64::from(f)),
    }
}

/// `05:06:07.500000` as PostgreSQL prints it: `05:06:07.5`.
fn trim_fraction(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

/// A `bit(n)` value (big-endian bytes) as PostgreSQL's bit string: `n` digits.
fn bits_text(bytes: &[u8], n: u32) -> String {
    let all: String = bytes.iter().map(|b| format!("{b:08b}")).collect();
    let n = n as usize;
    if all.len() >= n {
        all[all.len() - n..].to_string()
    } else {
        format!("{}{all}", "0".repeat(n - all.len()))
    }
}

/// A string as a MySQL literal that means the same whatever the session's
/// `sql_mode`: `'...'` with `'` doubled, which `NO_BACKSLASH_ESCAPES` on and
/// off read alike as long as there is no backslash; a string with a backslash
/// (or a NUL) is written in hex, `_utf8mb4 X'...'`, which no mode reads as
/// an escape and which the column converts from utf8mb4 like any string.
pub fn quote_literal(text: &str) -> String {
    if text.contains(['\\', '\0']) {
        let hex = bytes_text(text.as_bytes());
        return format!("_utf8mb4 X'{}'", &hex[2..]);
    }
    format!("'{}'", text.replace('\'', "''"))
}

/// The first and last datetime MySQL and PostgreSQL both hold (MySQL
/// documents 1000-01-01 as its first; MariaDB 10.11 stores 0001-01-01).
fn datetime_range() -> (i64, i64) {
    let edge = |t| {
        KeyType::Timestamp
            .parse_bound(t)
            .expect("a valid timestamp literal")
    };
    (
        edge("0001-01-01 00:00:00"),
        edge("9999-12-31 23:59:59.999999"),
    )
}

/// A canonical date or timestamp as MySQL's text (a timestamp with time zone
/// in UTC), or why MySQL cannot hold it.
fn datetime_text(kind: Kind, value: &str) -> Result<String, String> {
    let key = match kind {
        Kind::Date => KeyType::Date,
        Kind::Timestamp => KeyType::Timestamp,
        _ => KeyType::Timestamptz,
    };
    let parsed = key
        .parse_bound(value)
        .map_err(|_| format!("{value:?} is not a date or time MySQL has (no infinity, no BC)"))?;
    let micros = if key == KeyType::Date {
        parsed.saturating_mul(86_400_000_000)
    } else {
        parsed
    };
    let (first, last) = datetime_range();
    if !(first..=last).contains(&micros) {
        return Err(format!(
            "{value:?} is outside the years 1 to 9999 that MySQL's date and datetime hold"
        ));
    }
    Ok(match key {
        KeyType::Date => KeyType::Date.display(parsed),
        _ => KeyType::Timestamp.display(micros),
    })
}

fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_decimal(text: &str) -> bool {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let whole = whole.strip_prefix('-').unwrap_or(whole);
    (!whole.is_empty() || !fraction.is_empty())
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

fn is_time(text: &str) -> bool {
    let t = text.strip_prefix('-').unwrap_or(text);
    let (hms, fraction) = t.split_once('.').unwrap_or((t, "0"));
    let parts: Vec<&str> = hms.split(':').collect();
    parts.len() == 3
        && (1..=3).contains(&parts[0].len())
        && parts[1].len() == 2
        && parts[2].len() == 2
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()))
        && (1..=6).contains(&fraction.len())
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

/// A canonical value of `kind` as a MySQL literal for a column of type
/// `column_type` (the target's `COLUMN_TYPE`), or why MySQL cannot keep it:
/// booleans as 1 and 0, timestamps with time zone as their UTC datetime,
/// bytes from `\x..` as `X'..'`, exact decimals quoted (an unquoted literal
/// of more than 65 digits would be read as a double), text into a `bit(n)`
/// column as `b'0101'`. Floats' `NaN` and `Infinity` are refused by name:
/// MySQL has neither. So is a value the column would store changed without
/// an error, strict mode or not: a fraction into an integer, say (the rules are in the module doc).
pub fn literal(kind: Kind, column_type: &str, value: Option<&str>) -> Result<String, String> {
    let Some(v) = value else {
        return Ok("NULL".into());
    };
    let out = written(kind, column_type, v)?;
    match changed(kind, column_type, v, &out) {
        Some(how) => Err(format!(
            "{v} would be stored as {how} in a {column_type} column"
        )),
        None => Ok(out),
    }
}

fn written(kind: Kind, column_type: &str, v: &str) -> Result<String, String> {
    let not = |what: &str| Err(format!("{v:?} is not {what}"));
    match kind {
        Kind::Bool => match v {
            "t" | "true" | "1" => Ok("1".into()),
            "f" | "false" | "0" => Ok("0".into()),
            _ => not("a boolean"),
        },
        Kind::Int if is_integer(v) => Ok(v.to_string()),
        Kind::Int => not("an integer"),
        Kind::Float | Kind::Numeric if ["NaN", "Infinity", "-Infinity"].contains(&v) => Err(
            format!("{v} cannot be written: MySQL has no NaN or Infinity"),
        ),
        Kind::Float => match v.parse::<f64>() {
            // A 4-byte float's shortest digits (PostgreSQL's `real` prints
            // -3.4028235e+38) may lie just past its range as a double: write
            // the float they stand for, which MySQL stores as is.
            Ok(f)
                if split_type(column_type).0 == "float"
                    && f.abs() > f64::from(f32::MAX)
                    && (f as f32).is_finite() =>
            {
                Ok(float_text(f64::from(f as f32)))
            }
            Ok(f) => Ok(float_text(f)),
            Err(_) => not("a number"),
        },
        Kind::Numeric if is_decimal(v) => Ok(quote_literal(v)),
        Kind::Numeric => not("an exact decimal"),
        Kind::Bytes => match hex_bytes(v) {
            Some(bytes) => Ok(format!("X'{}'", &bytes_text(&bytes)[2..])),
            None => not("bytes (\\x and hex digits)"),
        },
        Kind::Date | Kind::Timestamp | Kind::TimestampTz => {
            datetime_text(kind, v).map(|t| quote_literal(&t))
        }
        Kind::Time if is_time(v) => Ok(quote_literal(v)),
        Kind::Time => not("a time (HH:MM:SS)"),
        Kind::Text if split_type(column_type).0 == "bit" => {
            if !v.is_empty() && v.bytes().all(|b| b == b'0' || b == b'1') {
                Ok(format!("b'{v}'"))
            } else {
                not("a bit string (0s and 1s)")
            }
        }
        Kind::Text => Ok(quote_literal(v)),
    }
}

/// How MySQL would change a value it stores without an error, even in
/// strict mode, if it would (measured on MariaDB 10.11: `'1.239'` into
/// `decimal(5,2)` is 1.24 with a note, `'1.5'` into `int` is 2 without one,
/// `1` into `year` is 2001, `'ab '` into `char(3)` reads back as `ab`).
/// `out` is the literal [`written`] made of `v`.
fn changed(kind: Kind, column_type: &str, v: &str, out: &str) -> Option<&'static str> {
    let (base, args, _) = split_type(column_type);
    let n = numbers(args);
    let at = |i: usize| n.as_ref().and_then(|n| n.get(i).copied()).unwrap_or(0) as usize;
    let number = matches!(kind, Kind::Int | Kind::Float | Kind::Numeric);
    let dated = matches!(
        kind,
        Kind::Date | Kind::Timestamp | Kind::TimestampTz | Kind::Time
    );
    let text = out.trim_matches('\'');
    match base.as_str() {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint"
            if number && fraction_digits(v) > 0 =>
        {
            Some("a rounded integer")
        }
        "decimal" | "numeric" | "dec" | "fixed" if number && fraction_digits(v) > at(1) => {
            Some("a decimal rounded to its scale")
        }
        "float" if kind == Kind::Float => {
            let f: f64 = v.parse().ok()?;
            (float4_text(f as f32).parse::<f64>().ok()? != f).then_some("a rounded 4-byte float")
        }
        "float" | "double" | "real" if kind == Kind::Int => {
            let i: i64 = v.parse().ok()?;
            let exact = if base == "float" {
                (i as f32) as i128 == i128::from(i)
            } else {
                (i as f64) as i128 == i128::from(i)
            };
            (!exact).then_some("a rounded floating-point number")
        }
        // An exact decimal of up to 6 (a float) or 15 (a double) significant
        // digits reads back as written.
        "float" if kind == Kind::Numeric && significant_digits(v) > 6 => {
            Some("a rounded 4-byte float")
        }
        "double" | "real" if kind == Kind::Numeric && significant_digits(v) > 15 => {
            Some("a rounded double")
        }
        "year" if kind == Kind::Int => {
            let year: i64 = v.parse().ok()?;
            (year != 0 && !(1901..=2155).contains(&year)).then_some(
                "another year (MySQL reads 1 to 99 as 1970 to 2069; it holds 1901 to 2155)",
            )
        }
        "datetime" | "timestamp" | "time" if dated && fraction_digits(text) > at(0) => {
            Some("a time with rounded fractional seconds")
        }
        "date" if dated && text.len() > 10 && !text[10..].trim_start().starts_with("00:00:00") => {
            Some("its date without its time")
        }
        "char" if kind == Kind::Text && v.ends_with(' ') => {
            Some("text without its trailing spaces")
        }
        _ => None,
    }
}

/// Digits after the point of a decimal or float text, trailing zeros aside
/// (`1.5e-07`: 8).
fn fraction_digits(text: &str) -> usize {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().unwrap_or(0)),
        None => (text, 0),
    };
    let fraction = mantissa
        .split_once('.')
        .map_or("", |(_, f)| f)
        .trim_end_matches('0');
    usize::try_from(fraction.len() as i64 - exponent).unwrap_or(0)
}

/// Significant digits of a decimal or float text (`0.00120`: 2).
fn significant_digits(text: &str) -> usize {
    let mantissa = text.split(['e', 'E']).next().unwrap_or("");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    digits.trim_start_matches('0').trim_end_matches('0').len()
}

// ---------------------------------------------------------------------------
// Statements

/// Quotes an identifier with backticks, an embedded backtick doubled: read
/// alike in every `sql_mode` (`ANSI_QUOTES` only changes what `"` means).
pub fn quote_ident(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// A table's name in MySQL's SQL: a schema is a database.
pub fn table(name: &QualifiedName) -> String {
    match &name.schema {
        Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&name.name)),
        None => quote_ident(&name.name),
    }
}

/// What every connection sets first: utf8mb4 both ways (emoji included; a
/// column in another character set is converted by the server), UTC for
/// `timestamp` columns, and REPEATABLE READ, the only level where a
/// consistent snapshot is one. A writer also sets a strict `sql_mode` of its
/// own: a value that does not fit fails instead of being cut with a
/// warning, and `NO_AUTO_VALUE_ON_ZERO` keeps a copied 0 in an
/// AUTO_INCREMENT column (without it MySQL would draw a new number).
pub fn session_sql(writer: bool) -> Vec<String> {
    let mut out = vec![
        "SET NAMES utf8mb4".to_string(),
        "SET time_zone = '+00:00'".to_string(),
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ".to_string(),
    ];
    if writer {
        out.push(
            "SET sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO'"
                .to_string(),
        );
    }
    out
}

/// Raises how long the server waits on a reader's socket before it drops the
/// connection (60 s by default), so a slow target does not lose the reader.
pub fn net_write_timeout_sql(seconds: u32) -> String {
    format!("SET SESSION net_write_timeout = {seconds}")
}

/// One moment across readers, as MySQL Shell takes it without RELOAD: one
/// connection holds the copied tables with [`lock_tables_sql`] (a READ lock
/// waits for open writes to commit and stops new ones), each reader then
/// opens [`CONSISTENT_SNAPSHOT_SQL`], and the lock is let go with
/// [`UNLOCK_TABLES_SQL`]. The lock must be on a connection of its own: a
/// `START TRANSACTION` releases the session's table locks. Needs the `LOCK
/// TABLES` privilege (and SELECT) on the tables.
pub fn lock_tables_sql(tables: &[String]) -> String {
    let list: Vec<String> = tables.iter().map(|t| format!("{t} READ")).collect();
    format!("LOCK TABLES {}", list.join(", "))
}

/// A reader's transaction, seeing the moment it starts in every InnoDB table.
pub const CONSISTENT_SNAPSHOT_SQL: &str = "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY";

pub const UNLOCK_TABLES_SQL: &str = "UNLOCK TABLES";

/// `DATABASE()` for a name without a database, else the database as a literal.
fn schema_of(name: &QualifiedName) -> String {
    name.schema
        .as_deref()
        .map_or("DATABASE()".to_string(), quote_literal)
}

/// The `information_schema` condition selecting one table.
fn in_table(name: &QualifiedName) -> String {
    format!(
        "TABLE_SCHEMA = {} AND TABLE_NAME = {}",
        schema_of(name),
        quote_literal(&name.name)
    )
}

/// A table's storage engine (no row: no such table).
pub fn engine_sql(name: &QualifiedName) -> String {
    format!(
        "SELECT ENGINE FROM information_schema.TABLES WHERE {}",
        in_table(name)
    )
}

/// Why a target table of this storage engine cannot be written, if it
/// cannot: only InnoDB commits a partition's rows and its checkpoint row
/// together (MyISAM, Aria, MEMORY ... keep half a partition after a crash).
pub fn engine_refusal(table: &str, engine: &str) -> Option<String> {
    (!engine.eq_ignore_ascii_case("InnoDB")).then(|| {
        format!(
            "table {table} uses the {engine} storage engine, which cannot commit a partition atomically (expected InnoDB: ALTER TABLE {table} ENGINE = InnoDB)"
        )
    })
}

/// A table's columns in order: name, `COLUMN_TYPE`, `IS_NULLABLE` (`YES` or
/// `NO`) and `EXTRA` (see [`is_generated`]).
pub fn columns_sql(name: &QualifiedName) -> String {
    format!(
        "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, EXTRA FROM information_schema.COLUMNS WHERE {} ORDER BY ORDINAL_POSITION",
        in_table(name)
    )
}

/// MariaDB's `json` is `longtext` with a `json_valid` check: the checks of a
/// table, for [`json_column`]. (MySQL 8 prints `json` and has no
/// `TABLE_NAME` in `CHECK_CONSTRAINTS`: ask MariaDB only.)
pub fn checks_sql(name: &QualifiedName) -> String {
    format!(
        "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = {} AND TABLE_NAME = {}",
        schema_of(name),
        quote_literal(&name.name)
    )
}

/// The column a MariaDB check makes a `json` one: ``json_valid(`doc`)``.
pub fn json_column(check_clause: &str) -> Option<String> {
    let inner = check_clause
        .trim()
        .strip_prefix("json_valid(`")?
        .strip_suffix("`)")?;
    Some(inner.replace("``", "`"))
}

/// The columns of a table's primary and unique keys: index name, column,
/// `SUB_PART` (a key on a prefix of the column), in key order, the primary
/// key first. See [`keys`].
pub fn keys_sql(name: &QualifiedName) -> String {
    format!(
        "SELECT INDEX_NAME, COLUMN_NAME, SUB_PART FROM information_schema.STATISTICS WHERE {} AND NON_UNIQUE = 0 ORDER BY INDEX_NAME = 'PRIMARY' DESC, INDEX_NAME, SEQ_IN_INDEX",
        in_table(name)
    )
}

/// A table's keys, from the rows of [`keys_sql`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keys {
    pub primary: Vec<String>,
    /// Unique keys on whole columns, each in order.
    pub unique: Vec<Vec<String>>,
    /// Unique keys on a prefix of a column: they are no key for an upsert,
    /// yet `ON DUPLICATE KEY` fires on them too.
    pub prefix: Vec<String>,
}

pub fn keys(rows: &[(String, String, Option<i64>)]) -> Keys {
    let mut out = Keys::default();
    let mut current: Option<(&str, Vec<String>, bool)> = None;
    let flush = |key: Option<(&str, Vec<String>, bool)>, out: &mut Keys| match key {
        Some(("PRIMARY", columns, _)) => out.primary = columns,
        Some((name, _, true)) => out.prefix.push(name.to_string()),
        Some((_, columns, false)) => out.unique.push(columns),
        None => {}
    };
    for (index, column, sub_part) in rows {
        match &mut current {
            Some((name, columns, prefix)) if *name == index.as_str() => {
                columns.push(column.clone());
                *prefix |= sub_part.is_some();
            }
            _ => {
                flush(current.take(), &mut out);
                current = Some((index, vec![column.clone()], sub_part.is_some()));
            }
        }
    }
    flush(current, &mut out);
    out
}

/// A key value as a MySQL literal: integers as numbers, dates and datetimes
/// as their text (compared as the column's type). A bound outside the years 1
/// to 9999, where no MySQL value is but zero and year-0 dates (which sort
/// first), is rendered at that edge: the order of bounds is kept, so every
/// value still falls in exactly one range. A `timestamp` key is compared in
/// the session's UTC.
fn key_literal(key: KeyType, value: i64) -> String {
    let (first, last) = datetime_range();
    match key {
        KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => value.to_string(),
        KeyType::Date => {
            let day = 86_400_000_000;
            let clamped = value.clamp(first / day, last / day);
            quote_literal(&KeyType::Date.display(clamped))
        }
        KeyType::Timestamp | KeyType::Timestamptz => {
            quote_literal(&KeyType::Timestamp.display(value.clamp(first, last)))
        }
    }
}

/// The condition selecting `range` of the key column `column` (quoted), with
/// the partition contract's edges: the first range takes NULLs (and zero
/// dates, which sort below every date), the last everything above.
pub fn predicate(column: &str, key: KeyType, range: &KeyRange) -> Option<String> {
    match (range.lower, range.upper) {
        (None, None) => None,
        (None, Some(upper)) => Some(format!(
            "({column} < {} OR {column} IS NULL)",
            key_literal(key, upper)
        )),
        (Some(lower), Some(upper)) => Some(format!(
            "({column} >= {} AND {column} < {})",
            key_literal(key, lower),
            key_literal(key, upper)
        )),
        (Some(lower), None) => Some(format!("{column} >= {}", key_literal(key, lower))),
    }
}

/// The `FROM` item of every read of the job: the table, the query, or with
/// `limit` the first rows by the partition column as a derived table, so
/// every partition sees the same rows (without a partition column, the
/// job's rows are read in one statement).
pub fn from(job: &Job) -> (String, Option<&str>) {
    let source = &job.source;
    let relation = match &source.relation {
        Relation::Table(name) => table(name),
        Relation::Query(query) => format!("{} AS {}", enclose(query), quote_ident("source")),
    };
    let Some(limit) = source.limit else {
        return (relation, source.where_clause.as_deref());
    };
    let order = job
        .partition
        .as_ref()
        .and_then(|p| p.column.as_ref())
        .map(|c| format!(" ORDER BY {}", quote_ident(c)))
        .unwrap_or_default();
    (
        format!(
            "(SELECT * FROM {relation}{}{order} LIMIT {limit}) AS {}",
            where_clause(source.where_clause.as_deref(), None),
            quote_ident("stride_slice")
        ),
        None,
    )
}

/// A column as a reader selects it. MySQL's text protocol prints a `float`
/// with 6 significant digits (MariaDB 10.11 sends 16777217 as `16777200`), so
/// a float is read as the double that holds it exactly.
pub fn select_item(column: &Column) -> String {
    let c = quote_ident(&column.name);
    if split_type(&column.declared).0 == "float" {
        // Named as the column: a reader finds how to read it by name.
        format!("CAST({c} AS DOUBLE) AS {c}")
    } else {
        c
    }
}

/// The statement reading `columns` of the job's rows within `range` of the key.
pub fn select(
    job: &Job,
    columns: &[Column],
    key: Option<(&str, KeyType)>,
    range: &KeyRange,
) -> String {
    let (from, user) = from(job);
    let list: Vec<String> = columns.iter().map(select_item).collect();
    let pred = key.and_then(|(column, key)| predicate(&quote_ident(column), key, range));
    format!(
        "SELECT {} FROM {from}{}",
        list.join(", "),
        where_clause(user, pred)
    )
}

/// The key column's smallest and largest value over the job's rows, as text
/// [`KeyType::parse_bound`] reads. Zero, partial and year-0 dates are left
/// out: they still land in the first partition, they do not stretch the stride.
pub fn bounds_sql(job: &Job, column: &str, key: KeyType) -> String {
    let (from, user) = from(job);
    let c = quote_ident(column);
    let dated = match key {
        KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => None,
        _ => Some(format!("NOT {}", zero_date_condition(column))),
    };
    format!(
        "SELECT min({c}), max({c}) FROM {from}{}",
        where_clause(user, dated)
    )
}

/// Bytes an INSERT may have under the server's `max_allowed_packet`. The
/// packet also carries the command byte, and MariaDB 10.11 refused a
/// statement of `max_allowed_packet - 1` bytes (measured): keep 1 KiB clear.
pub fn insert_budget_bytes(max_allowed_packet: u64) -> usize {
    usize::try_from(max_allowed_packet.saturating_sub(1024)).unwrap_or(usize::MAX)
}

/// Where to cut rows into multi-row INSERTs: each statement is `fixed_bytes`
/// (its head and tail) plus its rows' bytes (`row_bytes`, each row's
/// `(...)`), joined by `", "`, within `budget_bytes`; the ranges of rows, in
/// order. A row that cannot fit even alone is refused by number.
pub fn cut_inserts(
    budget_bytes: usize,
    fixed_bytes: usize,
    row_bytes: &[usize],
) -> Result<Vec<Range<usize>>, String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = fixed_bytes;
    for (i, &row) in row_bytes.iter().enumerate() {
        if fixed_bytes.saturating_add(row) > budget_bytes {
            return Err(format!(
                "row {i} of the batch takes {row} bytes as SQL, more than the {budget_bytes} the server's max_allowed_packet allows in one statement (raise max_allowed_packet)"
            ));
        }
        let separator = if i == start { 0 } else { 2 };
        if size + separator + row > budget_bytes {
            out.push(start..i);
            start = i;
            size = fixed_bytes + row;
        } else {
            size += separator + row;
        }
    }
    if start < row_bytes.len() {
        out.push(start..row_bytes.len());
    }
    Ok(out)
}

/// One row of an INSERT from its literals: `(1, 'a', NULL)`.
pub fn row_sql(literals: &[String]) -> String {
    format!("({})", literals.join(", "))
}

/// An INSERT's head, `INSERT INTO t (a, b) VALUES `, and its tail (empty, or
/// an upsert's `ON DUPLICATE KEY UPDATE`): rows go between.
///
/// An upsert updates the other columns with `VALUES(col)`, which MySQL 8 and
/// MariaDB both take (MySQL 8.0.20+ warns that it is deprecated in favour
/// of a row alias MariaDB lacks). A skip is `ON DUPLICATE KEY UPDATE k = k`,
/// which changes nothing; not `INSERT IGNORE`, which would also turn
/// errors into warnings (a value cut to fit a column, a NULL into NOT NULL).
/// `ON DUPLICATE KEY` fires on any unique key of the table, not only the
/// job's: see [`Keys`].
pub fn insert_parts(table: &str, columns: &[String], upsert: Option<&Upsert>) -> (String, String) {
    let list: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let head = format!("INSERT INTO {table} ({}) VALUES ", list.join(", "));
    let Some(u) = upsert else {
        return (head, String::new());
    };
    let set: Vec<String> = columns
        .iter()
        .filter(|c| !u.key.contains(c))
        .map(|c| format!("{0} = VALUES({0})", quote_ident(c)))
        .collect();
    let set = if u.update && !set.is_empty() {
        set.join(", ")
    } else {
        let k = quote_ident(u.key.first().map_or("", String::as_str));
        format!("{k} = {k}")
    };
    (head, format!(" ON DUPLICATE KEY UPDATE {set}"))
}

/// An INSERT of rows made by [`row_sql`] between [`insert_parts`].
pub fn insert_sql(head: &str, rows: &[String], tail: &str) -> String {
    format!("{head}{}{tail}", rows.join(", "))
}

/// The collation of the tables stride creates: text equal only when its
/// bytes are, as in PostgreSQL (the server's default, case- and
/// accent-insensitive, would make `'a'` and `'A'` one key, and an upsert
/// would merge their rows), and without PAD SPACE (where `'a'` and `'a '`
/// are one key): `utf8mb4_nopad_bin` on MariaDB, `utf8mb4_0900_bin` on
/// MySQL 8; MySQL 5.7 has only `utf8mb4_bin`, which pads. `version` is
/// `SELECT VERSION()`.
pub fn exact_collation(version: &str) -> &'static str {
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if version.contains("MariaDB") {
        "utf8mb4_nopad_bin"
    } else if major >= 8 {
        "utf8mb4_0900_bin"
    } else {
        "utf8mb4_bin"
    }
}

/// `CREATE TABLE` for a table stride creates, `(name, type, not null)` per
/// column: InnoDB (transactions) and utf8mb4 (the server's default may be
/// latin1 or utf8mb3, which cannot hold every character) in `collation`
/// ([`exact_collation`]), whatever the server's defaults.
pub fn create_table_sql(
    table: &str,
    columns: &[(String, String, bool)],
    primary_key: &[String],
    collation: &str,
) -> String {
    format!(
        "CREATE TABLE {table} ({}) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = {collation}",
        crate::engine::table_elements(columns, primary_key, quote_ident)
    )
}

/// The rows of `columns` of a target table within `predicate`, for verify.
pub fn target_select(table: &str, columns: &[Column], predicate: Option<String>) -> String {
    let list: Vec<String> = columns.iter().map(select_item).collect();
    format!(
        "SELECT {} FROM {table}{}",
        list.join(", "),
        where_clause(None, predicate)
    )
}

// The checkpoint table. Its statements are MySQL's own, not the seam's
// shared ones: `partition`, `range` and `rows` are reserved words in MySQL
// and MariaDB, and must be quoted with backticks.

/// The checkpoint table's columns in MySQL (names as `checkpoint::COLUMNS`).
const CHECKPOINT_COLUMNS: &[(&str, &str)] = &[
    // A key column cannot be `text`; a fingerprint is 16 hex digits.
    ("fingerprint", "varchar(64) NOT NULL"),
    ("partition", "int NOT NULL"),
    ("target_table", "text NOT NULL"),
    ("range", "text NOT NULL"),
    ("lower_bound", "bigint"),
    ("upper_bound", "bigint"),
    ("partitions", "int"),
    ("rows", "bigint"),
    ("bytes", "bigint"),
    ("finished", "boolean NOT NULL DEFAULT false"),
    // datetime, not timestamp: no 2038 limit, no update on every write.
    (
        "recorded_at",
        "datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
    ),
];

/// The checkpoint table, as InnoDB: a partition's row commits with its rows.
pub fn checkpoint_table_sql(table: &str) -> String {
    let columns: Vec<(String, String, bool)> = CHECKPOINT_COLUMNS
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string(), false))
        .collect();
    // utf8mb4_bin: every server has it, and fingerprints are hex.
    create_table_sql(
        table,
        &columns,
        &["fingerprint".into(), "partition".into()],
        "utf8mb4_bin",
    )
    .replacen("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1)
}

/// The run row: the bounds a run planned with and its partitions.
pub fn record_run_sql(
    checkpoints: &str,
    fingerprint: &str,
    table: &str,
    bounds: Option<(i64, i64)>,
    partitions: usize,
) -> String {
    let (lower, upper) = bounds.map_or(("NULL".to_string(), "NULL".to_string()), |(l, u)| {
        (l.to_string(), u.to_string())
    });
    format!(
        "INSERT INTO {checkpoints} (`fingerprint`, `partition`, `target_table`, `range`, `lower_bound`, `upper_bound`, `partitions`) \
         VALUES ({}, {}, {}, 'run', {lower}, {upper}, {partitions})",
        quote_literal(fingerprint),
        crate::checkpoint::RUN_ROW,
        quote_literal(table)
    )
}

/// A committed partition, written in its own transaction.
pub fn record_partition_sql(
    cp: &crate::engine::CheckpointSpec,
    table: &str,
    rows: u64,
    bytes: u64,
) -> String {
    format!(
        "INSERT INTO {} (`fingerprint`, `partition`, `target_table`, `range`, `rows`, `bytes`, `finished`) \
         VALUES ({}, {}, {}, {}, {rows}, {bytes}, true)",
        cp.table,
        quote_literal(&cp.fingerprint),
        cp.index,
        quote_literal(table),
        quote_literal(&cp.range)
    )
}

/// A run's checkpoint rows, in the order `Recorded::from_rows` takes them.
pub fn recorded_sql(checkpoints: &str, fingerprint: &str) -> String {
    format!(
        "SELECT `partition`, `lower_bound`, `upper_bound`, `partitions`, `rows`, `bytes`, `finished`, \
         DATE_FORMAT(`recorded_at`, '%Y-%m-%d %H:%i:%s') FROM {checkpoints} WHERE `fingerprint` = {} ORDER BY `partition`",
        quote_literal(fingerprint)
    )
}

/// Forgets a run's checkpoints (a new run of the job starts).
pub fn forget_run_sql(checkpoints: &str, fingerprint: &str) -> String {
    format!(
        "DELETE FROM {checkpoints} WHERE `fingerprint` = {}",
        quote_literal(fingerprint)
    )
}

/// Forgets the runs of other jobs into `table`, when this run empties it.
pub fn forget_other_runs_sql(checkpoints: &str, fingerprint: &str, table: &str) -> String {
    format!(
        "DELETE FROM {checkpoints} WHERE `target_table` = {} AND `fingerprint` <> {}",
        quote_literal(table),
        quote_literal(fingerprint)
    )
}

/// Marks the run finished.
pub fn finish_run_sql(checkpoints: &str, fingerprint: &str) -> String {
    format!(
        "UPDATE {checkpoints} SET `finished` = true WHERE `fingerprint` = {} AND `partition` = {}",
        quote_literal(fingerprint),
        crate::checkpoint::RUN_ROW
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn url(text: &str) -> MysqlUrl {
        parse_url("source.url", text).unwrap()
    }

    fn url_error(text: &str) -> String {
        parse_url("source.url", text).unwrap_err().to_string()
    }

    #[test]
    fn urls_read_as_the_mysql_client_reads_its_options() {
        let u = url("mysql://app:s%40cret@db.example.com:3307/shop?ssl-mode=verify_identity&ssl-ca=/etc/ca.pem&ssl-cert=/c.pem&ssl-key=/k.pem");
        assert!(!u.mariadb);
        assert_eq!(u.user.as_deref(), Some("app"));
        assert_eq!(u.password(), Some("s@cret"));
        assert_eq!(
            (u.host.as_str(), u.port, u.database.as_deref()),
            ("db.example.com", 3307, Some("shop"))
        );
        assert_eq!(u.ssl_mode, SslMode::VerifyIdentity);
        assert_eq!(u.ssl_ca.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            (u.ssl_cert.as_deref(), u.ssl_key.as_deref()),
            (Some("/c.pem"), Some("/k.pem"))
        );

        let u = url("mariadb://root@127.0.0.1/");
        assert!(u.mariadb);
        assert_eq!(
            (u.port, u.database.as_deref(), u.password()),
            (3306, None, None)
        );
        assert_eq!(u.ssl_mode, SslMode::Preferred, "the client's default");

        let u = url("mysql://u@[::1]:3306/d");
        assert_eq!(u.host, "::1");
        let u = url("mysql:///d?socket=%2Fvar%2Frun%2Fmysqld%2Fmysqld.sock");
        assert_eq!(u.host, "localhost");
        assert_eq!(u.socket.as_deref(), Some("/var/run/mysqld/mysqld.sock"));
        // A CA given is verified unless the mode says otherwise.
        assert_eq!(
            url("mysql://h/d?ssl-ca=/ca.pem").ssl_mode,
            SslMode::VerifyCa
        );
        assert_eq!(
            url("mysql://h/d?ssl-ca=/ca.pem&ssl-mode=REQUIRED").ssl_mode,
            SslMode::Required
        );
        // Without ssl-ca, VERIFY_CA checks against the system's roots.
        assert_eq!(
            url("mysql://h/d?ssl-mode=Verify_Ca").ssl_mode,
            SslMode::VerifyCa
        );
    }

    #[test]
    fn bad_urls_are_refused_by_name() {
        let e = url_error("mysql://u:pw@h/d?sslmode=require");
        assert_eq!(
            e,
            "source.url: unknown parameter \"sslmode\" for MySQL (expected one of: socket, ssl-mode, ssl-ca, ssl-cert, ssl-key)"
        );
        let e = url_error("mysql://h/d?ssl-mode=verify-full");
        assert_eq!(
            e,
            "source.url: ssl-mode=verify-full is not one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"
        );
        assert!(
            url_error("mysql://h/d?ssl-cert=/c.pem").contains("ssl-cert is given without ssl-key")
        );
        assert!(
            url_error("mysql://h/d?ssl-key=/k.pem").contains("ssl-key is given without ssl-cert")
        );
        assert!(url_error("mysql://h/d?ssl-mode=DISABLED&ssl-ca=/ca.pem").contains("DISABLED"));
        assert!(url_error("mysql://h/d?socket=a&socket=b").contains("given twice"));
        assert!(url_error("mysql://h/d/e").contains("not a database name"));
        assert!(url_error("mysql:u:pw@h/d").contains("not a URL with a host"));
        assert!(url_error("postgres://h/d").contains("scheme \"postgres\""));
        for text in [
            "mysql:u:secret@h/d",
            "mysql://u:secret@h/d?x=1",
            "mysql://u:secret@h:99999/d",
        ] {
            assert!(!url_error(text).contains("secret"), "{text}");
        }
    }

    #[test]
    fn check_url_keeps_the_url_or_names_what_is_wrong() {
        let url = DbUrl::new("mysql://u:pw@h/d?ssl-mode=REQUIRED");
        assert_eq!(check_url("target.url", url.clone()), Ok(url));
        assert_eq!(
            check_url("target.url", DbUrl::new("mysql://u:pw@h/d?ssl-mode=ON"))
                .unwrap_err()
                .to_string(),
            "target.url: ssl-mode=ON is not one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"
        );
    }

    #[test]
    fn a_url_never_shows_its_password() {
        let u = url("mysql://app:p%C3%A4ss@db:3306/shop?ssl-mode=REQUIRED&ssl-ca=/ca.pem");
        assert_eq!(
            u.to_string(),
            "mysql://app:****@db:3306/shop?ssl-mode=REQUIRED&ssl-ca=%2Fca.pem"
        );
        assert_eq!(
            format!("{u:?}"),
            "MysqlUrl(mysql://app:****@db:3306/shop?ssl-mode=REQUIRED&ssl-ca=%2Fca.pem)"
        );
        assert_eq!(url("mariadb://[::1]/").to_string(), "mariadb://[::1]:3306/");
        let c = Credentials {
            user: Some("u".into()),
            password: Some("secret".into()),
        };
        assert!(!format!("{c:?}").contains("secret"));
        assert!(PARAMETERS.iter().all(|p| is_shown(p)));
        assert!(!is_shown("password"));
    }

    #[test]
    fn the_client_section_of_an_option_file_gives_user_and_password() {
        let text = r#"
# comment
!include /etc/mysql/common.cnf
[mysqld]
user = mysql
[client]
user = app   # trailing comment
; another comment
password = "p#ss w\\ord\s"
[mysql]
password = not-for-stride
[client]
host = elsewhere
"#;
        assert_eq!(
            my_cnf_client(text),
            Credentials {
                user: Some("app".into()),
                password: Some("p#ss w\\ord ".into()),
            }
        );
        let later = "[CLIENT]\npassword='one'\npassword = 'it''s'\nuser\n";
        assert_eq!(my_cnf_client(later).password.as_deref(), Some("it''s"));
        assert_eq!(my_cnf_client("[client]\npassword\n").password, None);
        assert_eq!(my_cnf_client("user=x\n"), Credentials::default());
    }

    #[test]
    fn credentials_take_the_url_then_mysql_pwd_then_the_option_file() {
        let cnf = Credentials {
            user: Some("cnf-user".into()),
            password: Some("cnf-pw".into()),
        };
        let both = url("mysql://u:url-pw@h/d");
        assert_eq!(
            credentials(&both, Some("env-pw"), &cnf),
            Credentials {
                user: Some("u".into()),
                password: Some("url-pw".into())
            }
        );
        let user_only = url("mysql://u@h/d");
        assert_eq!(
            credentials(&user_only, Some("env-pw"), &cnf)
                .password
                .as_deref(),
            Some("env-pw")
        );
        assert_eq!(
            credentials(&user_only, None, &cnf).password.as_deref(),
            Some("cnf-pw")
        );
        let neither = url("mysql://h/d");
        assert_eq!(credentials(&neither, None, &cnf), cnf);
        assert_eq!(
            credentials(&neither, None, &Credentials::default()),
            Credentials::default()
        );
    }

    #[test]
    fn mysql_types_map_to_postgres_loss_free_or_are_refused() {
        for (mysql, kind, pg) in [
            ("tinyint(1)", Kind::Bool, "boolean"),
            ("tinyint(4)", Kind::Int, "smallint"),
            ("tinyint", Kind::Int, "smallint"),
            ("tinyint(3) unsigned", Kind::Int, "smallint"),
            ("tinyint(1) unsigned", Kind::Int, "smallint"),
            ("smallint(6)", Kind::Int, "smallint"),
            ("smallint(5) unsigned", Kind::Int, "integer"),
            ("mediumint(9)", Kind::Int, "integer"),
            ("mediumint(8) unsigned", Kind::Int, "integer"),
            ("int(11)", Kind::Int, "integer"),
            ("int", Kind::Int, "integer"),
            ("int(10) unsigned", Kind::Int, "bigint"),
            ("int unsigned zerofill", Kind::Int, "bigint"),
            ("bigint(20)", Kind::Int, "bigint"),
            ("bigint(20) unsigned", Kind::Numeric, "numeric(20,0)"),
            ("decimal(10,2)", Kind::Numeric, "numeric(10,2)"),
            ("decimal(65,30)", Kind::Numeric, "numeric(65,30)"),
            ("decimal(10,0) unsigned", Kind::Numeric, "numeric(10,0)"),
            ("float", Kind::Float, "real"),
            ("float(7,4)", Kind::Float, "real"),
            ("double", Kind::Float, "double precision"),
            ("double precision", Kind::Float, "double precision"),
            ("char(3)", Kind::Text, "varchar(3)"),
            ("varchar(255)", Kind::Text, "varchar(255)"),
            ("text", Kind::Text, "text"),
            ("longtext", Kind::Text, "text"),
            ("binary(16)", Kind::Bytes, "bytea"),
            ("varbinary(8)", Kind::Bytes, "bytea"),
            ("blob", Kind::Bytes, "bytea"),
            ("longblob", Kind::Bytes, "bytea"),
            ("date", Kind::Date, "date"),
            ("datetime", Kind::Timestamp, "timestamp(0)"),
            ("datetime(6)", Kind::Timestamp, "timestamp(6)"),
            ("timestamp", Kind::TimestampTz, "timestamptz(0)"),
            ("timestamp(3)", Kind::TimestampTz, "timestamptz(3)"),
            ("time", Kind::Time, "time(0)"),
            ("time(6)", Kind::Time, "time(6)"),
            ("year(4)", Kind::Int, "smallint"),
            ("year", Kind::Int, "smallint"),
            ("bit(1)", Kind::Bool, "boolean"),
            ("bit(8)", Kind::Text, "bit(8)"),
            ("bit(64)", Kind::Text, "bit(64)"),
            ("enum('a','b')", Kind::Text, "text"),
            ("enum('x(1)','y')", Kind::Text, "text"),
            ("set('x','y')", Kind::Text, "text"),
            ("json", Kind::Text, "jsonb"),
            ("uuid", Kind::Text, "uuid"),
            ("inet6", Kind::Text, "inet"),
            ("BIGINT(20) UNSIGNED", Kind::Numeric, "numeric(20,0)"),
        ] {
            assert_eq!(kind_of(mysql), Ok(kind), "{mysql}");
            assert_eq!(postgres_type(mysql).as_deref(), Ok(pg), "{mysql}");
        }
        let e = postgres_type("geometry").unwrap_err();
        assert!(e.starts_with("geometry is a spatial type"), "{e}");
        assert!(kind_of("point").unwrap_err().contains("spatial"));
        assert!(kind_of("multipolygon").is_err());
        let e = kind_of("vector(3)").unwrap_err();
        assert!(
            e.starts_with("vector(3) is a type stride does not know"),
            "{e}"
        );
    }

    #[test]
    fn readings_follow_the_column_type() {
        assert_eq!(reading("tinyint(1)"), Ok(Reading::Bool));
        assert_eq!(reading("bit(1)"), Ok(Reading::BitBool));
        assert_eq!(reading("bit(12)"), Ok(Reading::Bits(12)));
        assert_eq!(reading("timestamp(6)"), Ok(Reading::TimestampUtc));
        assert_eq!(reading("datetime"), Ok(Reading::Datetime));
        assert_eq!(reading("year(4)"), Ok(Reading::Year));
        assert_eq!(reading("double"), Ok(Reading::Float));
        assert_eq!(reading("float"), Ok(Reading::Float4));
        assert_eq!(reading("varbinary(3)"), Ok(Reading::Bytes));
        assert_eq!(reading("bigint(20) unsigned"), Ok(Reading::AsIs));
    }

    #[test]
    fn checks_before_creating_are_one_statement_each() {
        assert_eq!(
            bool_check_sql("`shop`.`t`", "is`ok"),
            "SELECT EXISTS (SELECT 1 FROM `shop`.`t` WHERE `is``ok` NOT IN (0, 1))"
        );
        assert_eq!(
            time_check_sql("`t`", "took"),
            "SELECT EXISTS (SELECT 1 FROM `t` WHERE `took` < '00:00:00' OR `took` > '24:00:00')"
        );
        assert!(is_generated("VIRTUAL GENERATED"));
        assert!(is_generated("STORED GENERATED"));
        assert!(!is_generated("DEFAULT_GENERATED"));
        assert!(!is_generated(
            "DEFAULT_GENERATED on update CURRENT_TIMESTAMP"
        ));
        assert!(!is_generated("auto_increment"));
        assert!(!is_generated(""));
    }

    fn column(declared: &str, kind: Kind) -> Column {
        Column {
            name: "c".into(),
            kind,
            declared: declared.into(),
            not_null: false,
            generated: false,
        }
    }

    #[test]
    fn postgres_types_map_to_mysql() {
        let pg = |declared: &str, kind: Kind| {
            mysql_type(Engine::Postgres, &column(declared, kind), false)
        };
        for (declared, kind, mysql) in [
            ("bigint", Kind::Int, "bigint"),
            ("integer", Kind::Int, "int"),
            ("smallint", Kind::Int, "smallint"),
            ("boolean", Kind::Bool, "tinyint(1)"),
            ("numeric(12,2)", Kind::Numeric, "decimal(12,2)"),
            ("numeric(65,30)", Kind::Numeric, "decimal(65,30)"),
            ("numeric(7)", Kind::Numeric, "decimal(7,0)"),
            ("real", Kind::Float, "float"),
            ("double precision", Kind::Float, "double"),
            ("text", Kind::Text, "longtext"),
            ("character varying(20)", Kind::Text, "varchar(20)"),
            ("character varying(16384)", Kind::Text, "longtext"),
            ("character varying", Kind::Text, "longtext"),
            ("character(3)", Kind::Text, "varchar(3)"),
            ("uuid", Kind::Text, "char(36)"),
            ("jsonb", Kind::Text, "json"),
            ("json", Kind::Text, "json"),
            ("bit(12)", Kind::Text, "bit(12)"),
            ("bit(65)", Kind::Text, "longtext"),
            ("integer[]", Kind::Text, "longtext"),
            ("interval", Kind::Text, "longtext"),
            ("bytea", Kind::Bytes, "longblob"),
            ("date", Kind::Date, "date"),
            (
                "timestamp without time zone",
                Kind::Timestamp,
                "datetime(6)",
            ),
            (
                "timestamp(3) without time zone",
                Kind::Timestamp,
                "datetime(3)",
            ),
            ("timestamp with time zone", Kind::TimestampTz, "datetime(6)"),
            (
                "timestamp(0) with time zone",
                Kind::TimestampTz,
                "datetime(0)",
            ),
            ("time without time zone", Kind::Time, "time(6)"),
            ("time(2) without time zone", Kind::Time, "time(2)"),
        ] {
            assert_eq!(pg(declared, kind).as_deref(), Ok(mysql), "{declared}");
        }
        let e = pg("numeric", Kind::Numeric).unwrap_err();
        assert!(
            e.starts_with("column c (numeric): MySQL has no decimal without a precision"),
            "{e}"
        );
        assert!(pg("numeric(66,2)", Kind::Numeric)
            .unwrap_err()
            .contains("at most 65 digits"));
        assert!(pg("numeric(40,31)", Kind::Numeric)
            .unwrap_err()
            .contains("30 after the point"));
        // In a key, types InnoDB can index.
        let key = |declared: &str, kind: Kind| {
            mysql_type(Engine::Postgres, &column(declared, kind), true)
        };
        assert_eq!(key("text", Kind::Text).as_deref(), Ok("varchar(768)"));
        assert_eq!(
            key("character varying(1000)", Kind::Text).as_deref(),
            Ok("varchar(768)")
        );
        assert_eq!(
            key("character varying(100)", Kind::Text).as_deref(),
            Ok("varchar(100)")
        );
        assert_eq!(key("bytea", Kind::Bytes).as_deref(), Ok("varbinary(3072)"));
        // SQLite's types say less: the kind decides.
        let sqlite =
            |declared: &str, kind: Kind| mysql_type(Engine::Sqlite, &column(declared, kind), false);
        assert_eq!(sqlite("INTEGER", Kind::Int).as_deref(), Ok("bigint"));
        assert_eq!(sqlite("REAL", Kind::Float).as_deref(), Ok("double"));
        assert_eq!(sqlite("VARCHAR(20)", Kind::Text).as_deref(), Ok("longtext"));
        assert_eq!(
            sqlite("TIMESTAMP", Kind::Timestamp).as_deref(),
            Ok("datetime(6)")
        );
        assert_eq!(
            sqlite("DECIMAL(10,2)", Kind::Numeric).as_deref(),
            Ok("decimal(10,2)")
        );
        assert!(sqlite("NUMERIC", Kind::Numeric).is_err());
    }

    #[test]
    fn zero_and_partial_dates_are_told_from_valid_ones() {
        for (text, problem) in [
            ("0000-00-00", Some(DateProblem::Zero)),
            ("0000-00-00 00:00:00", Some(DateProblem::Zero)),
            ("0000-00-00 00:00:00.000000", Some(DateProblem::Zero)),
            ("2021-00-15", Some(DateProblem::Partial)),
            ("2021-02-00", Some(DateProblem::Partial)),
            ("2021-00-00 10:00:00", Some(DateProblem::Partial)),
            ("0000-01-01", Some(DateProblem::YearZero)),
            ("2021-02-28", None),
            ("1000-01-01 00:00:00", None),
            ("9999-12-31 23:59:59.999999", None),
            ("0001-01-01", None),
            ("", None),
            ("12:00:00", None),
        ] {
            assert_eq!(date_problem(text), problem, "{text}");
        }
        assert_eq!(
            zero_dates_sql("`t`", &["d".into(), "a`b".into()]).unwrap(),
            "SELECT COUNT(CASE WHEN (YEAR(`d`) = 0 OR MONTH(`d`) = 0 OR DAYOFMONTH(`d`) = 0) THEN 1 END), \
             COUNT(CASE WHEN (YEAR(`a``b`) = 0 OR MONTH(`a``b`) = 0 OR DAYOFMONTH(`a``b`) = 0) THEN 1 END) FROM `t`"
        );
        assert_eq!(zero_dates_sql("`t`", &[]), None);
    }

    #[test]
    fn mysql_values_read_as_canonical_text() {
        let ok = |reading, value: &[u8]| canonical(reading, value).unwrap().into_owned();
        assert_eq!(
            ok(Reading::AsIs, b"-9223372036854775808"),
            "-9223372036854775808"
        );
        assert_eq!(
            ok(Reading::AsIs, b"18446744073709551615"),
            "18446744073709551615"
        );
        let big = "99999999999999999999999999999999999.999999999999999999999999999999";
        assert_eq!(ok(Reading::AsIs, big.as_bytes()), big);
        assert_eq!(ok(Reading::AsIs, "héllo😀".as_bytes()), "héllo😀");
        assert_eq!(ok(Reading::AsIs, b""), "");
        assert_eq!(ok(Reading::Bool, b"0"), "f");
        assert_eq!(ok(Reading::Bool, b"1"), "t");
        assert!(canonical(Reading::Bool, b"2")
            .unwrap_err()
            .contains("not a boolean"));
        assert_eq!(ok(Reading::BitBool, &[1]), "t");
        assert_eq!(ok(Reading::BitBool, &[0]), "f");
        assert_eq!(ok(Reading::Bits(8), &[0xa5]), "10100101");
        assert_eq!(ok(Reading::Bits(12), &[0x0f, 0xff]), "111111111111");
        assert_eq!(ok(Reading::Bits(12), &[0x01, 0x02]), "000100000010");
        assert_eq!(ok(Reading::Bits(64), &[0xff; 8]), "1".repeat(64));
        assert_eq!(ok(Reading::Bits(3), &[]), "000");
        assert_eq!(ok(Reading::Float, b"0.1"), "0.1");
        assert_eq!(ok(Reading::Float, b"0.00000015"), "1.5e-07");
        assert_eq!(ok(Reading::Float, b"3.4e38"), "3.4e+38");
        assert_eq!(
            ok(Reading::Float, b"1.7976931348623157e308"),
            "1.7976931348623157e+308"
        );
        assert_eq!(ok(Reading::Float, b"-0"), "-0");
        // A float as the double MariaDB casts it to (measured), printed as
        // PostgreSQL prints the `real`.
        assert_eq!(ok(Reading::Float4, b"1.2345677614212036"), "1.2345678");
        assert_eq!(ok(Reading::Float4, b"16777216"), "16777216");
        assert_eq!(ok(Reading::Float4, b"0.10000000149011612"), "0.1");
        assert_eq!(ok(Reading::Float4, b"3.3999999521443642e38"), "3.4e+38");
        assert_eq!(
            ok(Reading::Float4, b"1.1754943508222875e-38"),
            "1.1754944e-38"
        );
        assert_eq!(float4_text(f32::MAX), "3.4028235e+38");
        assert_eq!(float4_text(f32::NAN), "NaN");
        assert_eq!(float4_text(-0.0), "-0");
        assert_eq!(ok(Reading::Bytes, &[0x00, 0xff]), "\\x00ff");
        assert_eq!(ok(Reading::Bytes, b""), "\\x");
        assert_eq!(ok(Reading::Date, b"2021-03-04"), "2021-03-04");
        assert_eq!(
            ok(Reading::Datetime, b"2021-03-04 05:06:07"),
            "2021-03-04 05:06:07"
        );
        assert_eq!(
            ok(Reading::Datetime, b"2021-03-04 05:06:07.000000"),
            "2021-03-04 05:06:07"
        );
        assert_eq!(
            ok(Reading::Datetime, b"2021-03-04 05:06:07.120000"),
            "2021-03-04 05:06:07.12"
        );
        assert_eq!(
            ok(Reading::Datetime, b"9999-12-31 23:59:59.999999"),
            "9999-12-31 23:59:59.999999"
        );
        assert_eq!(
            ok(Reading::TimestampUtc, b"2021-03-04 05:06:07.123"),
            "2021-03-04 05:06:07.123+00"
        );
        assert_eq!(
            ok(Reading::TimestampUtc, b"1970-01-01 00:00:01"),
            "1970-01-01 00:00:01+00"
        );
        assert_eq!(ok(Reading::Time, b"-838:59:59.000000"), "-838:59:59");
        assert_eq!(ok(Reading::Time, b"05:06:07.500000"), "05:06:07.5");
        assert_eq!(ok(Reading::Time, b"00:00:00"), "00:00:00");
        assert_eq!(ok(Reading::Year, b"2021"), "2021");
        assert_eq!(ok(Reading::Year, b"0000"), "0");
        assert_eq!(ok(Reading::Year, b"1901"), "1901");
        for (reading, value) in [
            (Reading::Date, "0000-00-00"),
            (Reading::Datetime, "0000-00-00 00:00:00"),
            (Reading::TimestampUtc, "0000-00-00 00:00:00"),
            (Reading::Date, "2021-00-15"),
            (Reading::Datetime, "2021-02-00 01:02:03"),
        ] {
            let e = canonical(reading, value.as_bytes()).unwrap_err();
            assert!(
                e.starts_with(value) && e.contains("which only MySQL has"),
                "{e}"
            );
        }
        assert!(canonical(Reading::AsIs, &[0xe9])
            .unwrap_err()
            .contains("not UTF-8"));
    }

    #[test]
    fn literals_are_read_alike_with_and_without_no_backslash_escapes() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(""), "''");
        assert_eq!(quote_literal("héllo😀"), "'héllo😀'");
        assert_eq!(quote_literal("a\\b"), "_utf8mb4 X'615c62'");
        assert_eq!(quote_literal("a\0"), "_utf8mb4 X'6100'");
        assert_eq!(quote_literal("'\\'"), "_utf8mb4 X'275c27'");
    }

    #[test]
    fn canonical_values_become_mysql_literals() {
        let lit = |kind, value| literal(kind, "", Some(value));
        assert_eq!(literal(Kind::Text, "", None).as_deref(), Ok("NULL"));
        assert_eq!(lit(Kind::Bool, "t").as_deref(), Ok("1"));
        assert_eq!(lit(Kind::Bool, "f").as_deref(), Ok("0"));
        assert!(lit(Kind::Bool, "yes").is_err());
        assert_eq!(
            lit(Kind::Int, "-9223372036854775808").as_deref(),
            Ok("-9223372036854775808")
        );
        assert_eq!(
            lit(Kind::Int, "9223372036854775807").as_deref(),
            Ok("9223372036854775807")
        );
        assert!(lit(Kind::Int, "1; DROP TABLE t").is_err());
        assert!(lit(Kind::Int, "-").is_err());
        assert_eq!(lit(Kind::Float, "1e+100").as_deref(), Ok("1e+100"));
        assert_eq!(lit(Kind::Float, "0.1").as_deref(), Ok("0.1"));
        assert_eq!(
            lit(Kind::Float, "-1.7976931348623157e+308").as_deref(),
            Ok("-1.7976931348623157e+308")
        );
        for v in ["NaN", "Infinity", "-Infinity"] {
            let e = lit(Kind::Float, v).unwrap_err();
            assert_eq!(
                e,
                format!("{v} cannot be written: MySQL has no NaN or Infinity")
            );
            assert!(lit(Kind::Numeric, v).is_err());
        }
        assert_eq!(
            lit(Kind::Numeric, "18446744073709551615").as_deref(),
            Ok("'18446744073709551615'")
        );
        let big = "-99999999999999999999999999999999999.999999999999999999999999999999";
        assert_eq!(lit(Kind::Numeric, big), Ok(format!("'{big}'")));
        assert!(lit(Kind::Numeric, "1e5").is_err());
        assert_eq!(lit(Kind::Bytes, "\\x00ff").as_deref(), Ok("X'00ff'"));
        assert_eq!(lit(Kind::Bytes, "\\x").as_deref(), Ok("X''"));
        assert!(lit(Kind::Bytes, "\\x0").is_err());
        assert_eq!(lit(Kind::Date, "2021-03-04").as_deref(), Ok("'2021-03-04'"));
        assert_eq!(lit(Kind::Date, "0001-01-01").as_deref(), Ok("'0001-01-01'"));
        assert!(lit(Kind::Date, "0045-03-15 BC")
            .unwrap_err()
            .contains("years 1 to 9999"));
        assert!(lit(Kind::Date, "10000-01-01")
            .unwrap_err()
            .contains("years 1 to 9999"));
        assert!(lit(Kind::Date, "infinity")
            .unwrap_err()
            .contains("no infinity"));
        assert_eq!(
            lit(Kind::Timestamp, "2021-03-04 05:06:07.5").as_deref(),
            Ok("'2021-03-04 05:06:07.5'")
        );
        assert_eq!(
            lit(Kind::Timestamp, "9999-12-31 23:59:59.999999").as_deref(),
            Ok("'9999-12-31 23:59:59.999999'")
        );
        assert_eq!(
            lit(Kind::TimestampTz, "2021-03-04 05:06:07+00").as_deref(),
            Ok("'2021-03-04 05:06:07'")
        );
        assert_eq!(
            lit(Kind::TimestampTz, "2021-03-04 05:06:07.25+05:30").as_deref(),
            Ok("'2021-03-03 23:36:07.25'")
        );
        assert_eq!(
            lit(Kind::TimestampTz, "2021-01-01 00:00:00-08").as_deref(),
            Ok("'2021-01-01 08:00:00'")
        );
        assert!(lit(Kind::TimestampTz, "-infinity").is_err());
        assert_eq!(lit(Kind::Time, "24:00:00").as_deref(), Ok("'24:00:00'"));
        assert_eq!(
            lit(Kind::Time, "-838:59:59.5").as_deref(),
            Ok("'-838:59:59.5'")
        );
        assert!(lit(Kind::Time, "1 day").is_err());
        assert_eq!(
            lit(Kind::Text, "emoji 😀 and 'quotes'").as_deref(),
            Ok("'emoji 😀 and ''quotes'''")
        );
        assert_eq!(
            literal(Kind::Text, "bit(4)", Some("0101")).as_deref(),
            Ok("b'0101'")
        );
        assert!(literal(Kind::Text, "bit(4)", Some("0121")).is_err());
        assert_eq!(
            literal(Kind::Text, "varchar(4)", Some("0101")).as_deref(),
            Ok("'0101'")
        );
    }

    #[test]
    fn values_mysql_would_change_without_an_error_are_refused() {
        let lit = |kind, column_type, value| literal(kind, column_type, Some(value));
        assert_eq!(
            lit(Kind::Numeric, "decimal(5,2)", "1.239").unwrap_err(),
            "1.239 would be stored as a decimal rounded to its scale in a decimal(5,2) column"
        );
        assert_eq!(
            lit(Kind::Numeric, "decimal(5,2)", "1.230").as_deref(),
            Ok("'1.230'")
        );
        assert_eq!(
            lit(
                Kind::Numeric,
                "decimal(65,30)",
                "-99999999999999999999999999999999999.999999999999999999999999999999"
            )
            .map(|l| l.len()),
            Ok(69)
        );
        assert!(lit(Kind::Float, "decimal(10,2)", "1.5e-07").is_err());
        assert_eq!(
            lit(Kind::Float, "decimal(10,2)", "1e+05").as_deref(),
            Ok("100000")
        );
        assert!(lit(Kind::Numeric, "int(11)", "1.5")
            .unwrap_err()
            .contains("a rounded integer"));
        assert_eq!(
            lit(Kind::Numeric, "bigint(20) unsigned", "18446744073709551615").as_deref(),
            Ok("'18446744073709551615'")
        );
        assert_eq!(lit(Kind::Numeric, "int", "7.000").as_deref(), Ok("'7.000'"));
        assert!(lit(Kind::Float, "bigint", "0.5").is_err());
        // Into a 4-byte float: what a real holds, not what a double holds.
        assert_eq!(
            lit(Kind::Float, "float", "1.2345678").as_deref(),
            Ok("1.2345678")
        );
        assert_eq!(
            lit(Kind::Float, "float", "16777216").as_deref(),
            Ok("16777216")
        );
        assert!(lit(Kind::Float, "float", "16777217")
            .unwrap_err()
            .contains("a rounded 4-byte float"));
        assert!(lit(Kind::Float, "float", "0.30000000000000004").is_err());
        assert!(lit(Kind::Int, "float", "16777217").is_err());
        assert_eq!(
            lit(Kind::Int, "double", "9007199254740992").as_deref(),
            Ok("9007199254740992")
        );
        assert!(lit(Kind::Int, "double", "9007199254740993")
            .unwrap_err()
            .contains("a rounded floating-point number"));
        assert!(lit(Kind::Int, "double", "9223372036854775807").is_err());
        assert_eq!(lit(Kind::Numeric, "double", "0.1").as_deref(), Ok("'0.1'"));
        assert!(lit(Kind::Numeric, "double", "0.1234567890123456")
            .unwrap_err()
            .contains("a rounded double"));
        assert!(lit(Kind::Numeric, "float", "0.1234567")
            .unwrap_err()
            .contains("a rounded 4-byte float"));
        assert_eq!(
            lit(Kind::Float, "double", "0.30000000000000004").as_deref(),
            Ok("0.30000000000000004")
        );
        assert_eq!(lit(Kind::Int, "year(4)", "2021").as_deref(), Ok("2021"));
        assert_eq!(lit(Kind::Int, "year", "0").as_deref(), Ok("0"));
        assert!(lit(Kind::Int, "year(4)", "1")
            .unwrap_err()
            .contains("MySQL reads 1 to 99 as 1970 to 2069"));
        assert!(lit(Kind::Timestamp, "datetime", "2021-03-04 05:06:07.5")
            .unwrap_err()
            .contains("rounded fractional seconds"));
        assert_eq!(
            lit(Kind::Timestamp, "datetime(1)", "2021-03-04 05:06:07.5").as_deref(),
            Ok("'2021-03-04 05:06:07.5'")
        );
        assert!(lit(
            Kind::TimestampTz,
            "timestamp(3)",
            "2021-03-04 05:06:07.1234+00"
        )
        .is_err());
        assert!(lit(Kind::Time, "time", "05:06:07.5").is_err());
        assert_eq!(
            lit(Kind::Time, "time(6)", "05:06:07.5").as_deref(),
            Ok("'05:06:07.5'")
        );
        assert!(lit(Kind::Timestamp, "date", "2021-03-04 05:06:07")
            .unwrap_err()
            .contains("its date without its time"));
        assert_eq!(
            lit(Kind::Timestamp, "date", "2021-03-04 00:00:00").as_deref(),
            Ok("'2021-03-04 00:00:00'")
        );
        assert!(lit(Kind::Text, "char(3)", "ab ")
            .unwrap_err()
            .contains("trailing spaces"));
        assert_eq!(lit(Kind::Text, "varchar(3)", "ab ").as_deref(), Ok("'ab '"));
    }

    #[test]
    fn names_are_quoted_with_backticks() {
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(quote_ident("😀 x"), "`😀 x`");
        let name = QualifiedName::parse("shop.\"Order`s\"").unwrap();
        assert_eq!(table(&name), "`shop`.`Order``s`");
        assert_eq!(table(&QualifiedName::parse("t").unwrap()), "`t`");
    }

    #[test]
    fn predicates_follow_the_partition_contract() {
        let r = |lower, upper| KeyRange { lower, upper };
        assert_eq!(
            predicate("`id`", KeyType::Int8, &r(None, Some(i64::MIN + 1))),
            Some("(`id` < -9223372036854775807 OR `id` IS NULL)".into())
        );
        assert_eq!(
            predicate("`id`", KeyType::Int8, &r(Some(-5), Some(i64::MAX))),
            Some("(`id` >= -5 AND `id` < 9223372036854775807)".into())
        );
        assert_eq!(
            predicate("`d`", KeyType::Date, &r(Some(19_000), None)),
            Some("`d` >= '2022-01-08'".into())
        );
        assert_eq!(
            predicate(
                "`t`",
                KeyType::Timestamp,
                &r(Some(1_500_000), Some(86_400_000_000))
            ),
            Some("(`t` >= '1970-01-01 00:00:01.5' AND `t` < '1970-01-02 00:00:00')".into())
        );
        // A timestamp column is compared in the session's UTC: no `+00`.
        assert_eq!(
            predicate("`t`", KeyType::Timestamptz, &r(None, Some(0))),
            Some("(`t` < '1970-01-01 00:00:00' OR `t` IS NULL)".into())
        );
        // Bounds beyond MySQL's years are drawn at its edges.
        assert_eq!(
            predicate(
                "`d`",
                KeyType::Date,
                &r(
                    Some(KeyType::Date.domain().0),
                    Some(KeyType::Date.domain().1)
                )
            ),
            Some("(`d` >= '0001-01-01' AND `d` < '9999-12-31')".into())
        );
        assert_eq!(
            predicate("`t`", KeyType::Timestamp, &r(None, Some(i64::MAX))),
            Some("(`t` < '9999-12-31 23:59:59.999999' OR `t` IS NULL)".into())
        );
        assert_eq!(predicate("`id`", KeyType::Int4, &r(None, None)), None);
    }

    fn job(extra: &str) -> Job {
        let text = format!(
            "[source]\nurl='postgres://h/s'\n{extra}\n[target]\nurl='postgres://h/t'\ntable='t'\n"
        );
        Job::parse(&text, |_| None).unwrap()
    }

    #[test]
    fn reads_select_their_range_within_the_users_where() {
        let columns = vec![
            column("int", Kind::Int),
            Column {
                name: "na`me".into(),
                ..column("text", Kind::Text)
            },
        ];
        let j = job("table='shop.orders'\nwhere=\"state <> 'x'\"");
        assert_eq!(
            select(&j, &columns, Some(("id", KeyType::Int8)), &KeyRange { lower: Some(1), upper: Some(5) }),
            "SELECT `c`, `na``me` FROM `shop`.`orders` WHERE (state <> 'x') AND (`id` >= 1 AND `id` < 5)"
        );
        assert_eq!(
            select(
                &j,
                &columns,
                None,
                &KeyRange {
                    lower: None,
                    upper: None
                }
            ),
            "SELECT `c`, `na``me` FROM `shop`.`orders` WHERE (state <> 'x')"
        );
        let q = job("query='SELECT * FROM t'");
        assert_eq!(
            select(
                &q,
                &columns[..1],
                None,
                &KeyRange {
                    lower: None,
                    upper: None
                }
            ),
            "SELECT `c` FROM (SELECT * FROM t) AS `source`"
        );
        let limited = job("table='t'\nlimit=10\nwhere='a > 1'\n[partition]\ncolumn='id'\ncount=2\nlower_bound=0\nupper_bound=10");
        assert_eq!(
            select(&limited, &columns[..1], Some(("id", KeyType::Int8)), &KeyRange { lower: Some(5), upper: None }),
            "SELECT `c` FROM (SELECT * FROM `t` WHERE (a > 1) ORDER BY `id` LIMIT 10) AS `stride_slice` WHERE `id` >= 5"
        );
        assert_eq!(
            bounds_sql(&j, "id", KeyType::Int8),
            "SELECT min(`id`), max(`id`) FROM `shop`.`orders` WHERE (state <> 'x')"
        );
        assert_eq!(
            bounds_sql(&job("table='t'"), "d", KeyType::Date),
            "SELECT min(`d`), max(`d`) FROM `t` WHERE NOT (YEAR(`d`) = 0 OR MONTH(`d`) = 0 OR DAYOFMONTH(`d`) = 0)"
        );
    }

    #[test]
    fn inserts_are_cut_in_bytes_under_the_packet() {
        assert_eq!(insert_budget_bytes(16 * 1024 * 1024), 16_776_192);
        assert_eq!(insert_budget_bytes(100), 0);
        // 10 bytes fixed, rows of 20 joined by 2: 10 + 20 + 2 + 20 = 52.
        assert_eq!(cut_inserts(52, 10, &[20, 20, 20]), Ok(vec![0..2, 2..3]));
        assert_eq!(
            cut_inserts(51, 10, &[20, 20, 20]),
            Ok(vec![0..1, 1..2, 2..3])
        );
        // One statement: every row.
        let all = Range { start: 0, end: 3 };
        assert_eq!(cut_inserts(1000, 10, &[20, 20, 20]), Ok(vec![all]));
        assert_eq!(cut_inserts(1000, 10, &[]), Ok(vec![]));
        assert_eq!(
            cut_inserts(30, 10, &[20, 1, 20]),
            Ok(vec![0..1, 1..2, 2..3])
        );
        let e = cut_inserts(30, 10, &[5, 21]).unwrap_err();
        assert!(
            e.starts_with("row 1 of the batch takes 21 bytes as SQL, more than the 30"),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn cut_inserts_covers_every_row_once_within_the_budget(
            rows in proptest::collection::vec(1usize..200, 0..60),
            budget in 300usize..2000,
            fixed in 0usize..100,
        ) {
            let cuts = cut_inserts(budget, fixed, &rows).unwrap();
            let mut next = 0;
            for cut in &cuts {
                prop_assert_eq!(cut.start, next);
                prop_assert!(cut.end > cut.start);
                let bytes = fixed + rows[cut.clone()].iter().sum::<usize>() + 2 * (cut.len() - 1);
                prop_assert!(bytes <= budget);
                // Greedy: the next row would not have fitted.
                if cut.end < rows.len() {
                    prop_assert!(bytes + 2 + rows[cut.end] > budget);
                }
                next = cut.end;
            }
            prop_assert_eq!(next, rows.len());
        }

        #[test]
        fn float4_text_reads_back_as_the_same_float(bits in any::<u32>()) {
            let f = f32::from_bits(bits);
            let text = float4_text(f).replace("Infinity", "inf");
            let back: f32 = text.parse().unwrap();
            prop_assert!(back.to_bits() == f.to_bits() || (f.is_nan() && back.is_nan()));
            // Read from the double MySQL casts it to, the same text.
            if f.is_finite() {
                let cast = float_text(f64::from(f));
                prop_assert_eq!(canonical(Reading::Float4, cast.as_bytes()).unwrap(), float4_text(f));
            }
        }

        #[test]
        fn literals_never_hold_a_backslash_or_a_lone_quote(text in any::<String>()) {
            let lit = quote_literal(&text);
            if let Some(hex) = lit.strip_prefix("_utf8mb4 X'").and_then(|l| l.strip_suffix('\'')) {
                prop_assert_eq!(hex_bytes(&format!("\\x{hex}")), Some(text.into_bytes()));
            } else {
                let inner = lit.strip_prefix('\'').and_then(|l| l.strip_suffix('\'')).unwrap();
                prop_assert!(!inner.contains('\\'));
                prop_assert_eq!(inner.replace("''", "'"), text);
                prop_assert!(!inner.replace("''", "").contains('\''));
            }
        }

        #[test]
        fn datetimes_read_back_as_the_canonical_text_they_were_written_from(
            micros in -62_135_596_800_000_000i64..253_402_300_800_000_000,
        ) {
            let canonical_text = KeyType::Timestamp.display(micros);
            let written = literal(Kind::Timestamp, "datetime(6)", Some(&canonical_text)).unwrap();
            let stored = written.trim_matches('\'');
            // MySQL prints a datetime(6) with six fraction digits.
            let printed = if stored.contains('.') {
                format!("{stored:0<26}")
            } else {
                format!("{stored}.000000")
            };
            let read = canonical(Reading::Datetime, printed.as_bytes()).unwrap();
            prop_assert_eq!(read, canonical_text);
        }
    }

    #[test]
    fn upserts_use_on_duplicate_key() {
        let cols = vec!["id".to_string(), "v`x".to_string()];
        let (head, tail) = insert_parts("`t`", &cols, None);
        assert_eq!(head, "INSERT INTO `t` (`id`, `v``x`) VALUES ");
        assert_eq!(tail, "");
        let rows = vec![
            row_sql(&["1".into(), "'😀'".into()]),
            row_sql(&["2".into(), "NULL".into()]),
        ];
        assert_eq!(
            insert_sql(&head, &rows, &tail),
            "INSERT INTO `t` (`id`, `v``x`) VALUES (1, '😀'), (2, NULL)"
        );
        let update = Upsert {
            key: vec!["id".into()],
            update: true,
        };
        assert_eq!(
            insert_parts("`t`", &cols, Some(&update)).1,
            " ON DUPLICATE KEY UPDATE `v``x` = VALUES(`v``x`)"
        );
        let skip = Upsert {
            key: vec!["id".into()],
            update: false,
        };
        assert_eq!(
            insert_parts("`t`", &cols, Some(&skip)).1,
            " ON DUPLICATE KEY UPDATE `id` = `id`"
        );
        // Every column in the key: nothing to update, so it skips.
        let all = Upsert {
            key: cols.clone(),
            update: true,
        };
        assert_eq!(
            insert_parts("`t`", &cols, Some(&all)).1,
            " ON DUPLICATE KEY UPDATE `id` = `id`"
        );
    }

    #[test]
    fn sessions_snapshots_and_catalogue_queries() {
        assert_eq!(
            session_sql(true),
            [
                "SET NAMES utf8mb4",
                "SET time_zone = '+00:00'",
                "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                "SET sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO'"
            ]
        );
        assert_eq!(session_sql(false).len(), 3);
        assert_eq!(
            net_write_timeout_sql(3600),
            "SET SESSION net_write_timeout = 3600"
        );
        assert_eq!(
            lock_tables_sql(&["`shop`.`orders`".into(), "`t`".into()]),
            "LOCK TABLES `shop`.`orders` READ, `t` READ"
        );
        assert_eq!(
            CONSISTENT_SNAPSHOT_SQL,
            "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"
        );
        assert_eq!(UNLOCK_TABLES_SQL, "UNLOCK TABLES");
        let name = QualifiedName::parse("shop.\"it's\"").unwrap();
        assert_eq!(
            engine_sql(&name),
            "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'shop' AND TABLE_NAME = 'it''s'"
        );
        assert_eq!(
            columns_sql(&QualifiedName::parse("t").unwrap()),
            "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, EXTRA FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 't' ORDER BY ORDINAL_POSITION"
        );
        assert_eq!(
            keys_sql(&name),
            "SELECT INDEX_NAME, COLUMN_NAME, SUB_PART FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = 'shop' AND TABLE_NAME = 'it''s' AND NON_UNIQUE = 0 ORDER BY INDEX_NAME = 'PRIMARY' DESC, INDEX_NAME, SEQ_IN_INDEX"
        );
        assert_eq!(
            checks_sql(&name),
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = 'shop' AND TABLE_NAME = 'it''s'"
        );
        assert_eq!(json_column("json_valid(`doc`)").as_deref(), Some("doc"));
        assert_eq!(json_column("json_valid(`a``b`)").as_deref(), Some("a`b"));
        assert_eq!(json_column("`n` > 0"), None);
        assert_eq!(engine_refusal("`t`", "InnoDB"), None);
        assert_eq!(
            engine_refusal("`t`", "MyISAM").unwrap(),
            "table `t` uses the MyISAM storage engine, which cannot commit a partition atomically (expected InnoDB: ALTER TABLE `t` ENGINE = InnoDB)"
        );
        assert!(engine_refusal("`t`", "Aria").is_some());
    }

    #[test]
    fn keys_group_by_index_primary_first() {
        let row = |i: &str, c: &str, p: Option<i64>| (i.to_string(), c.to_string(), p);
        let k = keys(&[
            row("PRIMARY", "a", None),
            row("PRIMARY", "b", None),
            row("email", "email", None),
            row("name_prefix", "name", Some(10)),
            row("pair", "x", None),
            row("pair", "y", None),
        ]);
        assert_eq!(
            k,
            Keys {
                primary: vec!["a".into(), "b".into()],
                unique: vec![vec!["email".into()], vec!["x".into(), "y".into()]],
                prefix: vec!["name_prefix".into()],
            }
        );
        assert_eq!(keys(&[]), Keys::default());
    }

    #[test]
    fn tables_and_checkpoints_are_innodb_with_reserved_words_quoted() {
        assert_eq!(
            create_table_sql(
                "`t`",
                &[("id".into(), "bigint".into(), true), ("n`x".into(), "longtext".into(), false)],
                &["id".into()],
                "utf8mb4_nopad_bin"
            ),
            "CREATE TABLE `t` (`id` bigint NOT NULL, `n``x` longtext, PRIMARY KEY (`id`)) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin"
        );
        assert_eq!(
            target_select(
                "`t`",
                &[
                    column("int", Kind::Int),
                    Column {
                        name: "f".into(),
                        ..column("float", Kind::Float)
                    }
                ],
                Some("`c` >= 1".into())
            ),
            "SELECT `c`, CAST(`f` AS DOUBLE) AS `f` FROM `t` WHERE `c` >= 1"
        );
        let names: Vec<&str> = CHECKPOINT_COLUMNS.iter().map(|c| c.0).collect();
        let shared: Vec<&str> = crate::checkpoint::COLUMNS.iter().map(|c| c.0).collect();
        assert_eq!(
            names, shared,
            "the same columns as every engine's checkpoint table"
        );
        assert_eq!(
            checkpoint_table_sql("`stride_checkpoints`"),
            "CREATE TABLE IF NOT EXISTS `stride_checkpoints` (`fingerprint` varchar(64) NOT NULL, `partition` int NOT NULL, \
             `target_table` text NOT NULL, `range` text NOT NULL, `lower_bound` bigint, `upper_bound` bigint, `partitions` int, \
             `rows` bigint, `bytes` bigint, `finished` boolean NOT NULL DEFAULT false, \
             `recorded_at` datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), PRIMARY KEY (`fingerprint`, `partition`)) \
             ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"
        );
        assert_eq!(
            exact_collation("10.11.19-MariaDB-0+deb12u1"),
            "utf8mb4_nopad_bin"
        );
        assert_eq!(exact_collation("8.0.36"), "utf8mb4_0900_bin");
        assert_eq!(exact_collation("8.4.0-commercial"), "utf8mb4_0900_bin");
        assert_eq!(exact_collation("5.7.44-log"), "utf8mb4_bin");
        let cp = "`stride_checkpoints`";
        assert_eq!(
            record_run_sql(cp, "00ff", "`t`", Some((i64::MIN, i64::MAX)), 4),
            "INSERT INTO `stride_checkpoints` (`fingerprint`, `partition`, `target_table`, `range`, `lower_bound`, `upper_bound`, `partitions`) \
             VALUES ('00ff', -1, '`t`', 'run', -9223372036854775808, 9223372036854775807, 4)"
        );
        assert!(record_run_sql(cp, "00ff", "`t`", None, 1).contains("'run', NULL, NULL, 1)"));
        let spec = crate::engine::CheckpointSpec {
            name: QualifiedName::parse("stride_checkpoints").unwrap(),
            table: cp.into(),
            fingerprint: "00ff".into(),
            index: 3,
            range: "[1, 5)".into(),
        };
        assert_eq!(
            record_partition_sql(&spec, "`t`", 10, 200),
            "INSERT INTO `stride_checkpoints` (`fingerprint`, `partition`, `target_table`, `range`, `rows`, `bytes`, `finished`) \
             VALUES ('00ff', 3, '`t`', '[1, 5)', 10, 200, true)"
        );
        assert_eq!(
            recorded_sql(cp, "00ff"),
            "SELECT `partition`, `lower_bound`, `upper_bound`, `partitions`, `rows`, `bytes`, `finished`, \
             DATE_FORMAT(`recorded_at`, '%Y-%m-%d %H:%i:%s') FROM `stride_checkpoints` WHERE `fingerprint` = '00ff' ORDER BY `partition`"
        );
        assert_eq!(
            forget_run_sql(cp, "00ff"),
            "DELETE FROM `stride_checkpoints` WHERE `fingerprint` = '00ff'"
        );
        assert_eq!(
            forget_other_runs_sql(cp, "00ff", "`t`"),
            "DELETE FROM `stride_checkpoints` WHERE `target_table` = '`t`' AND `fingerprint` <> '00ff'"
        );
        assert_eq!(
            finish_run_sql(cp, "00ff"),
            "UPDATE `stride_checkpoints` SET `finished` = true WHERE `fingerprint` = '00ff' AND `partition` = -1"
        );
    }
}
