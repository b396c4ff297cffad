//! A table stride creates (`create = "if-missing"` in any mode, overwrite's
//! re-creation, replace's staging table for a missing target): its `CREATE
//! TABLE`, and the source's primary key and, by `target.indexes`, its other
//! indexes, built once the rows are in. Pure: the catalogue facts are passed in.

use serde::Serialize;

use crate::engine::postgres::plan::{create_table_sql, quoted_list};
use crate::engine::postgres::Column;
use crate::job::Indexes;
use crate::sql::{quote_ident, QualifiedName};

/// PostgreSQL's longest identifier (`NAMEDATALEN - 1`); longer ones are cut.
const MAX_IDENT_BYTES: usize = 63;

/// One index of the source table, as its catalogue gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceIndex {
    pub name: String,
    /// It backs the primary key.
    pub primary: bool,
    /// Key columns in index order (what a primary key is made of).
    pub key_columns: Vec<String>,
    /// Every column the index refers to: keys, INCLUDE, expressions, predicate.
    pub columns: Vec<String>,
    /// `pg_get_indexdef` after `CREATE [UNIQUE] INDEX name ON table `, e.g.
    /// `USING btree (a, lower(b)) WHERE (c > 0)`; `None` when the definition
    /// did not have that form.
    pub tail: Option<String>,
    /// `CREATE UNIQUE INDEX`.
    pub unique: bool,
}

/// What the source tells about keys: its table's name and indexes, or nothing
/// for a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceIndexes {
    /// The source table's own name (unqualified): a prefix of its index names
    /// that the created table's index names replace with their table's.
    pub table_name: String,
    pub indexes: Vec<SourceIndex>,
}

/// The statements that create a missing target, and what it will not get.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Creation {
    /// `CREATE TABLE`, with an upsert's key as its primary key (made up front:
    /// `ON CONFLICT` needs it while the rows go in).
    pub create: String,
    /// `ALTER TABLE ... ADD CONSTRAINT ... PRIMARY KEY` and `CREATE INDEX`
    /// statements, run once every partition is in (recorded in the run row).
    pub builds: Vec<String>,
    /// What the table will not get, and why.
    pub notes: Vec<String>,
}

/// Whether a build statement adds the primary key (run first, and skipped when
/// the table has one already: `ADD CONSTRAINT` has no `IF NOT EXISTS`).
pub fn is_primary_key_build(statement: &str) -> bool {
    statement.starts_with("ALTER TABLE ")
}

/// `name` cut to at most `max` bytes, at a character boundary.
fn cut(name: &str, max: usize) -> &str {
    let mut end = name.len().min(max);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// A name no relation in the schema has (`taken`): `base` cut to 63 bytes when
/// free, else cut shorter and followed by 1, 2, ..., as PostgreSQL picks names.
pub fn free_name(base: &str, taken: &[String]) -> String {
    (0u32..)
        .map(|n| {
            let suffix = if n == 0 { String::new() } else { n.to_string() };
            format!("{}{suffix}", cut(base, MAX_IDENT_BYTES - suffix.len()))
        })
        .find(|name| !taken.contains(name))
        .expect("some number is free")
}

/// The created table's name for a source index: the source table's name at its
/// start becomes the new table's (`orders_email_idx` → `orders_copy_email_idx`).
fn index_base_name(index: &str, source_table: &str, named_after: &str) -> String {
    match index.strip_prefix(source_table) {
        Some(rest) if !source_table.is_empty() => format!("{named_after}{rest}"),
        _ => index.to_string(),
    }
}

/// The creation of `table` (a replace's staging table, else the target) from the
/// copied `columns`. `named_after` is the target's own name, which the new key
/// and index names start with; `taken` the relation names of the schema (those
/// a re-creation drops left out). `upsert_key` becomes the primary key up front;
/// otherwise the source's primary key (`indexes` not `none`, every column of it
/// copied) is added after the load, and with `indexes = "all"` the source's
/// other indexes too. `source` is `None` for a query.
pub fn creation(
    table: &QualifiedName,
    named_after: &str,
    columns: &[Column],
    indexes: Indexes,
    upsert_key: Option<&[String]>,
    source: Option<&SourceIndexes>,
    taken: &[String],
) -> Creation {
    let mut taken = taken.to_vec();
    let mut builds = Vec::new();
    let mut notes = Vec::new();
    let not_copied = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter(|n| !columns.iter().any(|c| &c.name == *n))
            .cloned()
            .collect()
    };
    let primary = source.and_then(|s| s.indexes.iter().find(|i| i.primary));
    match (upsert_key, primary) {
        (Some(key), _) => notes.push(format!(
            "primary key ({}) made with the table: the upsert's ON CONFLICT needs it while rows go in",
            key.join(", ")
        )),
        (None, _) if indexes == Indexes::None => {
            notes.push("no primary key: target.indexes is \"none\"".to_string())
        }
        (None, None) => notes.push(match source {
            None => "no primary key: the source is a query, whose rows have no key".to_string(),
            Some(_) => "no primary key: the source table has none".to_string(),
        }),
        (None, Some(pk)) => {
            let left_out = not_copied(&pk.key_columns);
            if left_out.is_empty() {
                let name = free_name(&format!("{named_after}_pkey"), &taken);
                builds.push(format!(
                    "ALTER TABLE {table} ADD CONSTRAINT {} PRIMARY KEY ({})",
                    quote_ident(&name),
                    quoted_list(&pk.key_columns)
                ));
                taken.push(name);
            } else {
                notes.push(format!(
                    "no primary key: the source's ({}) needs column {} that source.columns leaves out",
                    pk.key_columns.join(", "),
                    left_out.join(", ")
                ));
            }
        }
    }
    if indexes == Indexes::All {
        match source {
            None => notes.push(
                "no other indexes: the source is a query (target.indexes = \"all\" copies a table's)"
                    .to_string(),
            ),
            Some(source) => {
                for index in source.indexes.iter().filter(|i| !i.primary) {
                    let left_out = not_copied(&index.columns);
                    let Some(tail) = index.tail.as_deref().filter(|_| left_out.is_empty()) else {
                        notes.push(if left_out.is_empty() {
                            format!("index {} not made: its definition could not be read", index.name)
                        } else {
                            format!(
                                "index {} not made: it needs column {} that source.columns leaves out",
                                index.name,
                                left_out.join(", ")
                            )
                        });
                        continue;
                    };
                    let name = free_name(
                        &index_base_name(&index.name, &source.table_name, named_after),
                        &taken,
                    );
                    builds.push(format!(
                        "CREATE {}INDEX IF NOT EXISTS {} ON {table} {tail}",
                        if index.unique { "UNIQUE " } else { "" },
                        quote_ident(&name)
                    ));
                    taken.push(name);
                }
            }
        }
    }
    Creation {
        create: create_table_sql(table, columns, upsert_key),
        builds,
        notes,
    }
}

/// What `plan` and `check` print of a creation: every statement as it is sent.
pub fn render(table: &QualifiedName, creation: &Creation) -> String {
    let mut out = format!("the run creates {table}:\n  {};\n", creation.create);
    if !creation.builds.is_empty() {
        out.push_str("once the rows are in:\n");
        for build in &creation.builds {
            out.push_str(&format!("  {build};\n"));
        }
    }
    for note in &creation.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

/// The key an upsert into a table stride creates matches rows by, when
/// `target.key` is not set: the source's primary key, if every column of it is
/// copied.
pub fn source_primary_key(
    source: Option<&SourceIndexes>,
    columns: &[Column],
) -> Option<Vec<String>> {
    let pk = source?.indexes.iter().find(|i| i.primary)?;
    pk.key_columns
        .iter()
        .all(|k| columns.iter().any(|c| &c.name == k))
        .then(|| pk.key_columns.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            type_name: ty.into(),
            base_type: ty.into(),
            type_oid: 20,
            element_type: None,
            category: "N".into(),
            not_null: true,
            generated: false,
            has_default: false,
            domain_over: None,
        }
    }

    fn index(name: &str, primary: bool, unique: bool, columns: &[&str], tail: &str) -> SourceIndex {
        SourceIndex {
            name: name.into(),
            primary,
            unique,
            key_columns: columns.iter().map(|c| c.to_string()).collect(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            tail: Some(tail.into()),
        }
    }

    fn source() -> SourceIndexes {
        SourceIndexes {
            table_name: "orders".into(),
            indexes: vec![
                index(
                    "orders_pkey",
                    true,
                    true,
                    &["Region", "id"],
                    "USING btree (\"Region\", id)",
                ),
                index(
                    "orders_email_key",
                    false,
                    true,
                    &["email"],
                    "USING btree (email)",
                ),
                index(
                    "recent",
                    false,
                    false,
                    &["id", "email"],
                    "USING btree (lower(email)) INCLUDE (id) WHERE (id > 100)",
                ),
            ],
        }
    }

    fn columns() -> Vec<Column> {
        vec![
            col("Region", "text"),
            col("id", "bigint"),
            col("email", "text"),
        ]
    }

    #[test]
    fn the_primary_key_is_built_after_the_load_by_default() {
        let t = QualifiedName::parse("public.\"Orders Copy\"").unwrap();
        let c = creation(
            &t,
            "Orders Copy",
            &columns(),
            Indexes::PrimaryKey,
            None,
            Some(&source()),
            &[],
        );
        assert_eq!(
            c.create,
            "CREATE TABLE \"public\".\"Orders Copy\" (\"Region\" text NOT NULL, \"id\" bigint NOT NULL, \"email\" text NOT NULL)"
        );
        assert_eq!(
            c.builds,
            ["ALTER TABLE \"public\".\"Orders Copy\" ADD CONSTRAINT \"Orders Copy_pkey\" PRIMARY KEY (\"Region\", \"id\")"]
        );
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        assert!(is_primary_key_build(&c.builds[0]));
    }

    #[test]
    fn all_repoints_every_index_at_the_new_table_under_free_names() {
        let t = QualifiedName::parse("public.orders").unwrap();
        let taken = ["orders_pkey".to_string(), "recent".to_string()];
        let c = creation(
            &t,
            "orders",
            &columns(),
            Indexes::All,
            None,
            Some(&source()),
            &taken,
        );
        assert_eq!(
            c.builds,
            [
                "ALTER TABLE \"public\".\"orders\" ADD CONSTRAINT \"orders_pkey1\" PRIMARY KEY (\"Region\", \"id\")",
                "CREATE UNIQUE INDEX IF NOT EXISTS \"orders_email_key\" ON \"public\".\"orders\" USING btree (email)",
                "CREATE INDEX IF NOT EXISTS \"recent1\" ON \"public\".\"orders\" USING btree (lower(email)) INCLUDE (id) WHERE (id > 100)",
            ]
        );
        assert!(!is_primary_key_build(&c.builds[1]));
        // Another name: the source table's prefix becomes the target's.
        let c = creation(
            &t,
            "copy",
            &columns(),
            Indexes::All,
            None,
            Some(&source()),
            &[],
        );
        assert!(c.builds[0].contains("\"copy_pkey\""), "{}", c.builds[0]);
        assert!(
            c.builds[1].contains("\"copy_email_key\""),
            "{}",
            c.builds[1]
        );
    }

    #[test]
    fn plan_and_check_print_every_statement() {
        let t = QualifiedName::parse("public.orders").unwrap();
        let c = creation(
            &t,
            "orders",
            &columns(),
            Indexes::All,
            None,
            Some(&source()),
            &[],
        );
        assert_eq!(
            render(&t, &c),
            "the run creates \"public\".\"orders\":\n  \
             CREATE TABLE \"public\".\"orders\" (\"Region\" text NOT NULL, \"id\" bigint NOT NULL, \"email\" text NOT NULL);\n\
             once the rows are in:\n  \
             ALTER TABLE \"public\".\"orders\" ADD CONSTRAINT \"orders_pkey\" PRIMARY KEY (\"Region\", \"id\");\n  \
             CREATE UNIQUE INDEX IF NOT EXISTS \"orders_email_key\" ON \"public\".\"orders\" USING btree (email);\n  \
             CREATE INDEX IF NOT EXISTS \"recent\" ON \"public\".\"orders\" USING btree (lower(email)) INCLUDE (id) WHERE (id > 100);\n"
        );
        let c = creation(
            &t,
            "orders",
            &columns(),
            Indexes::None,
            None,
            Some(&source()),
            &[],
        );
        assert_eq!(
            render(&t, &c),
            "the run creates \"public\".\"orders\":\n  \
             CREATE TABLE \"public\".\"orders\" (\"Region\" text NOT NULL, \"id\" bigint NOT NULL, \"email\" text NOT NULL);\n\
             note: no primary key: target.indexes is \"none\"\n"
        );
    }

    #[test]
    fn none_and_upsert_and_queries() {
        let t = QualifiedName::parse("t").unwrap();
        let c = creation(
            &t,
            "t",
            &columns(),
            Indexes::None,
            None,
            Some(&source()),
            &[],
        );
        assert!(c.builds.is_empty());
        assert_eq!(c.notes, ["no primary key: target.indexes is \"none\""]);
        let key = ["id".to_string()];
        let c = creation(
            &t,
            "t",
            &columns(),
            Indexes::All,
            Some(&key),
            Some(&source()),
            &[],
        );
        assert_eq!(
            c.create,
            "CREATE TABLE \"t\" (\"Region\" text NOT NULL, \"id\" bigint NOT NULL, \"email\" text NOT NULL, PRIMARY KEY (\"id\"))"
        );
        assert_eq!(c.builds.len(), 2, "{:?}", c.builds);
        assert!(c.builds[0].starts_with("CREATE UNIQUE INDEX IF NOT EXISTS \"t_email_key\""));
        let c = creation(&t, "t", &columns(), Indexes::All, None, None, &[]);
        assert!(c.builds.is_empty());
        assert_eq!(
            c.notes,
            [
                "no primary key: the source is a query, whose rows have no key",
                "no other indexes: the source is a query (target.indexes = \"all\" copies a table's)"
            ]
        );
    }

    #[test]
    fn a_key_column_left_out_means_no_key() {
        let t = QualifiedName::parse("t").unwrap();
        let some = vec![col("id", "bigint"), col("email", "text")];
        let c = creation(&t, "t", &some, Indexes::All, None, Some(&source()), &[]);
        assert_eq!(c.builds.len(), 2, "{:?}", c.builds);
        assert_eq!(
            c.notes,
            ["no primary key: the source's (Region, id) needs column Region that source.columns leaves out"]
        );
        assert_eq!(source_primary_key(Some(&source()), &some), None);
        assert_eq!(
            source_primary_key(Some(&source()), &columns()),
            Some(vec!["Region".to_string(), "id".to_string()])
        );
    }

    #[test]
    fn long_names_are_cut_to_63_bytes_and_stay_apart() {
        let long = "x".repeat(63);
        assert_eq!(free_name(&format!("{long}_pkey"), &[]), long);
        assert_eq!(
            free_name(&long, std::slice::from_ref(&long)),
            format!("{}1", "x".repeat(62))
        );
        let taken: Vec<String> = vec![long.clone(), format!("{}1", "x".repeat(62))];
        assert_eq!(free_name(&long, &taken), format!("{}2", "x".repeat(62)));
        // A multi-byte character is never split.
        let wide = "é".repeat(40);
        let name = free_name(&wide, &[]);
        assert_eq!(name.len(), 62);
        assert!(name.chars().all(|c| c == 'é'));
    }
}
