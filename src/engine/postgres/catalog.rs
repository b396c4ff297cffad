//! What the PostgreSQL catalogue says of columns and keys: plain data, for
//! PostgreSQL's pure plan.

use serde::Serialize;

/// First OID of user-defined objects (`FirstNormalObjectId`): types below it are
/// built in and have the same OID in every database.
const FIRST_NORMAL_OID: i64 = 16384;

/// One column as the catalogue describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Column {
    pub name: String,
    /// `format_type` with the modifier, e.g. `numeric(12,4)`: what `CREATE TABLE` needs.
    pub type_name: String,
    /// `format_type` without the modifier, e.g. `numeric`: what cast lookups need.
    pub base_type: String,
    pub type_oid: i64,
    /// For arrays, the element type without modifier.
    pub element_type: Option<String>,
    /// `pg_type.typcategory`: `S` string, `N` numeric, `A` array, `E` enum, ...
    pub category: String,
    pub not_null: bool,
    /// `GENERATED ALWAYS AS (...) STORED`: computed, cannot be written.
    pub generated: bool,
    /// Has a default or is an identity column: can be left out of an INSERT or COPY.
    pub has_default: bool,
    /// For a domain, the type it is ultimately over (`integer` for a domain over a
    /// domain over integer), without modifier: what decides a partition key.
    pub domain_over: Option<String>,
}

impl Column {
    pub fn is_builtin_type(&self) -> bool {
        self.type_oid < FIRST_NORMAL_OID
    }
}

/// The unique indexes of a table that `ON CONFLICT (columns)` can use as its
/// arbiter: valid, immediate (not deferrable), without a predicate or expression.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UniqueKeys {
    /// The primary key's columns, in index order.
    pub primary_key: Option<Vec<String>>,
    /// The key columns of every such index, the primary key's included.
    pub unique: Vec<Vec<String>>,
}
