//! `mode = "replace"`: the staging table a run loads, and the one transaction that
//! swaps it in for the target. Pure: the statements, rendered from what `pg` reads
//! in the catalogue; `commands` sends them.
//!
//! The design, step by step:
//!
//! - The step that starts a run (`stride run`, `stride prepare`) creates the
//!   staging table `<table>_stride_stage` in the target's schema, `(LIKE target
//!   INCLUDING ALL)`: columns, defaults, NOT NULL and CHECK constraints, identity
//!   and generated columns, indexes (primary key and unique constraints
//!   included), column comments, storage and extended statistics. LIKE leaves out
//!   the owner and the foreign keys, so they are added to it there too (a row that
//!   breaks a foreign key fails its partition, before any swap). A missing target
//!   gives a staging table made from the source's columns, as `create` would.
//!   The staging table and the run's record commit in one transaction.
//! - Partitions are copied into the staging table and recorded as its partitions:
//!   the target is not touched, so a failed or interrupted run leaves it as it was
//!   and the same command resumes into the staging table.
//! - The step that closes the run (after verify, which compares the staging table)
//!   swaps, in one transaction: `LOCK` the target (readers wait for the few
//!   catalogue changes, then read the new table); sequences the target's serial
//!   columns own are handed to the staging table's columns (whose defaults already
//!   call them), identity sequences carry their value over (never backwards); the target's grants
//!   and table comment are given to the staging table; `DROP TABLE` the target
//!   (without CASCADE: views and foreign keys that depend on it are refused
//!   before, see `pg::dependants`); the staging table, its indexes (and with them
//!   their constraints) and its identity sequences are renamed to the old names;
//!   the run is recorded as finished.

use crate::sql::{quote_ident, quote_literal, QualifiedName};

/// Appended to the target's name to name its staging table.
pub const STAGE_SUFFIX: &str = "_stride_stage";

/// PostgreSQL's longest identifier (`NAMEDATALEN - 1`); longer ones are cut.
const MAX_IDENT_BYTES: usize = 63;

/// The staging table of `target`, in `schema` (the target's own, or where a
/// missing target will be created). A name too long for the suffix is cut and
/// told apart by a hash of the whole name, so two long names never share one.
pub fn stage_name(target: &QualifiedName, schema: &str) -> QualifiedName {
    let name = &target.name;
    let staged = if name.len() + STAGE_SUFFIX.len() <= MAX_IDENT_BYTES {
        format!("{name}{STAGE_SUFFIX}")
    } else {
        let mut hash: u32 = 0x811c_9dc5;
        for byte in name.bytes() {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        let keep = MAX_IDENT_BYTES - STAGE_SUFFIX.len() - 9;
        let mut cut = keep;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}_{hash:08x}{STAGE_SUFFIX}", &name[..cut])
    };
    QualifiedName {
        schema: Some(schema.to_string()),
        name: staged,
    }
}

/// A foreign key of the target, as `pg_get_constraintdef` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignKey {
    pub name: String,
    pub definition: String,
}

/// What the staging table takes from an existing target when it is created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageSetup {
    /// The target's owner, when it is not the role running stride.
    pub owner: Option<String>,
    /// Foreign keys from the target to other tables (LIKE copies none).
    pub foreign_keys: Vec<ForeignKey>,
}

/// The staging table made afresh from the target (`--restart`, or a new run,
/// drops the one an earlier run left), given its owner and foreign keys.
pub fn create_stage_sql(
    stage: &QualifiedName,
    target: &QualifiedName,
    setup: &StageSetup,
) -> Vec<String> {
    let mut sql = vec![
        format!("DROP TABLE IF EXISTS {stage}"),
        format!("CREATE TABLE {stage} (LIKE {target} INCLUDING ALL)"),
    ];
    if let Some(owner) = &setup.owner {
        sql.push(format!(
            "ALTER TABLE {stage} OWNER TO {}",
            quote_ident(owner)
        ));
    }
    for fk in &setup.foreign_keys {
        sql.push(format!(
            "ALTER TABLE {stage} ADD CONSTRAINT {} {}",
            quote_ident(&fk.name),
            fk.definition
        ));
    }
    sql
}

/// One privilege of the target's ACL (or of one of its columns').
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// `SELECT`, `INSERT`, ... as `aclexplode` names it.
    pub privilege: String,
    /// The role; `None` is PUBLIC.
    pub grantee: Option<String>,
    pub grantable: bool,
    /// A column privilege's column.
    pub column: Option<String>,
}

/// A sequence owned by a column (serial, or an identity column's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedSequence {
    pub column: String,
    pub sequence: QualifiedName,
}

/// What the swap reads in the catalogue once it holds the target's lock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwapCatalog {
    /// Whether the target exists (a missing one is just the staging table renamed).
    pub target_exists: bool,
    /// Sequences the target's serial columns own: the staging table's defaults
    /// (copied by LIKE) call them, and DROP TABLE would drop them.
    pub serial: Vec<OwnedSequence>,
    /// Identity sequences, the target's and the staging table's, by column.
    pub identity: Vec<(OwnedSequence, OwnedSequence)>,
    pub grants: Vec<Grant>,
    /// The table's own comment (LIKE copies only column and index comments).
    pub comment: Option<String>,
    /// `(staging index, target index)` names to rename, from [`pair_indexes`].
    pub index_renames: Vec<(String, String)>,
}

/// Pairs each index of the target with one of the staging table's built the same
/// way (`key`: primary or unique, constraint kind, the definition after the table's
/// name), as `(staging index, target index)`. LIKE names its indexes after the
/// staging table, and the swap renames them back.
pub fn pair_indexes(
    target: &[(String, String)],
    stage: &[(String, String)],
) -> Vec<(String, String)> {
    let mut taken = vec![false; stage.len()];
    let mut pairs = Vec::new();
    for (target_name, key) in target {
        if let Some(i) = (0..stage.len()).find(|&i| !taken[i] && &stage[i].1 == key) {
            taken[i] = true;
            if &stage[i].0 != target_name {
                pairs.push((stage[i].0.clone(), target_name.clone()));
            }
        }
    }
    pairs
}

/// Locks the target against every reader and writer until the swap commits.
pub fn lock_sql(target: &QualifiedName) -> String {
    format!("LOCK TABLE {target} IN ACCESS EXCLUSIVE MODE")
}

/// The swap, after [`lock_sql`], in the same transaction.
pub fn swap_sql(
    target: &QualifiedName,
    stage: &QualifiedName,
    catalog: &SwapCatalog,
) -> Vec<String> {
    let rename = format!(
        "ALTER TABLE {stage} RENAME TO {}",
        quote_ident(&target.name)
    );
    if !catalog.target_exists {
        return vec![rename];
    }
    let mut sql = Vec::new();
    for owned in &catalog.serial {
        sql.push(format!(
            "ALTER SEQUENCE {} OWNED BY {stage}.{}",
            owned.sequence,
            quote_ident(&owned.column)
        ));
    }
    for (old, new) in &catalog.identity {
        // Only forwards: the staging table's own sequence may have given values to
        // rows the copy left the column out of.
        sql.push(format!(
            "SELECT setval({}::regclass, o.last_value, o.is_called) FROM {} AS o, {} AS n \
             WHERE (o.last_value, o.is_called) > (n.last_value, n.is_called)",
            quote_literal(&new.sequence.to_string()),
            old.sequence,
            new.sequence
        ));
    }
    for grant in &catalog.grants {
        // The privilege comes from the catalogue; anything but a keyword is skipped.
        if grant.privilege.is_empty()
            || !grant
                .privilege
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == ' ')
        {
            continue;
        }
        sql.push(format!(
            "GRANT {}{} ON TABLE {stage} TO {}{}",
            grant.privilege,
            grant
                .column
                .as_ref()
                .map_or_else(String::new, |c| format!(" ({})", quote_ident(c))),
            grant
                .grantee
                .as_ref()
                .map_or_else(|| "PUBLIC".to_string(), |g| quote_ident(g)),
            if grant.grantable {
                " WITH GRANT OPTION"
            } else {
                ""
            }
        ));
    }
    if let Some(comment) = &catalog.comment {
        sql.push(format!(
            "COMMENT ON TABLE {stage} IS {}",
            quote_literal(comment)
        ));
    }
    sql.push(format!("DROP TABLE {target}"));
    sql.push(rename);
    let in_schema = |name: &str| QualifiedName {
        schema: stage.schema.clone(),
        name: name.to_string(),
    };
    for (staged, old) in &catalog.index_renames {
        sql.push(format!(
            "ALTER INDEX {} RENAME TO {}",
            in_schema(staged),
            quote_ident(old)
        ));
    }
    for (old, new) in &catalog.identity {
        if old.sequence != new.sequence {
            sql.push(format!(
                "ALTER SEQUENCE {} RENAME TO {}",
                new.sequence,
                quote_ident(&old.sequence.name)
            ));
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(schema: &str, name: &str) -> QualifiedName {
        QualifiedName {
            schema: Some(schema.to_string()),
            name: name.to_string(),
        }
    }

    #[test]
    fn the_stage_is_named_after_the_target_and_fits_an_identifier() {
        let target = QualifiedName::parse("items").unwrap();
        assert_eq!(
            stage_name(&target, "public"),
            name("public", "items_stride_stage")
        );
        // 50 bytes + 13 = 63: still whole.
        let fifty = "a".repeat(50);
        assert_eq!(
            stage_name(&name("s", &fifty), "s").name,
            format!("{fifty}_stride_stage")
        );
        // Longer: cut, with a hash of the whole name; two such names differ.
        let long_a = format!("{}a", "x".repeat(60));
        let long_b = format!("{}b", "x".repeat(60));
        let (a, b) = (
            stage_name(&name("s", &long_a), "s"),
            stage_name(&name("s", &long_b), "s"),
        );
        assert_ne!(a, b);
        for staged in [&a, &b] {
            assert!(staged.name.len() <= 63, "{}", staged.name);
            assert!(staged.name.starts_with(&"x".repeat(41)), "{}", staged.name);
            assert!(staged.name.ends_with("_stride_stage"), "{}", staged.name);
        }
        assert_eq!(a, stage_name(&name("s", &long_a), "s"), "deterministic");
        // A cut never splits a character.
        let wide = "é".repeat(30);
        let staged = stage_name(&name("s", &wide), "s");
        assert!(
            staged.name.len() <= 63 && staged.name.starts_with("éé"),
            "{}",
            staged.name
        );
    }

    #[test]
    fn creating_the_stage() {
        let stage = name("public", "Items_stride_stage");
        let target = name("public", "Items");
        assert_eq!(
            create_stage_sql(&stage, &target, &StageSetup::default()),
            [
                "DROP TABLE IF EXISTS \"public\".\"Items_stride_stage\"",
                "CREATE TABLE \"public\".\"Items_stride_stage\" (LIKE \"public\".\"Items\" INCLUDING ALL)",
            ]
        );
        let setup = StageSetup {
            owner: Some("app owner".to_string()),
            foreign_keys: vec![ForeignKey {
                name: "items_parent_fkey".to_string(),
                definition: "FOREIGN KEY (parent) REFERENCES parents(id)".to_string(),
            }],
        };
        assert_eq!(
            create_stage_sql(&stage, &target, &setup)[2..],
            [
                "ALTER TABLE \"public\".\"Items_stride_stage\" OWNER TO \"app owner\"",
                "ALTER TABLE \"public\".\"Items_stride_stage\" ADD CONSTRAINT \"items_parent_fkey\" FOREIGN KEY (parent) REFERENCES parents(id)",
            ]
        );
    }

    #[test]
    fn indexes_pair_by_how_they_are_built() {
        let target = [
            ("items_pkey".to_string(), "p USING btree (id)".to_string()),
            ("by_n".to_string(), "- USING btree (n)".to_string()),
            ("by_n_again".to_string(), "- USING btree (n)".to_string()),
            ("gone".to_string(), "- USING hash (x)".to_string()),
        ];
        let stage = [
            (
                "items_stride_stage_n_idx".to_string(),
                "- USING btree (n)".to_string(),
            ),
            (
                "items_stride_stage_n_idx1".to_string(),
                "- USING btree (n)".to_string(),
            ),
            (
                "items_stride_stage_pkey".to_string(),
                "p USING btree (id)".to_string(),
            ),
        ];
        assert_eq!(
            pair_indexes(&target, &stage),
            [
                (
                    "items_stride_stage_pkey".to_string(),
                    "items_pkey".to_string()
                ),
                ("items_stride_stage_n_idx".to_string(), "by_n".to_string()),
                (
                    "items_stride_stage_n_idx1".to_string(),
                    "by_n_again".to_string()
                ),
            ]
        );
        // Same names already: nothing to rename.
        assert!(pair_indexes(&target[..1], &target[..1]).is_empty());
    }

    #[test]
    fn the_swap() {
        let target = name("public", "items");
        let stage = name("public", "items_stride_stage");
        assert_eq!(
            lock_sql(&target),
            "LOCK TABLE \"public\".\"items\" IN ACCESS EXCLUSIVE MODE"
        );
        // No target: the staging table takes its name.
        assert_eq!(
            swap_sql(&target, &stage, &SwapCatalog::default()),
            ["ALTER TABLE \"public\".\"items_stride_stage\" RENAME TO \"items\""]
        );
        let catalog = SwapCatalog {
            target_exists: true,
            serial: vec![OwnedSequence {
                column: "id".to_string(),
                sequence: name("public", "items_id_seq"),
            }],
            identity: vec![(
                OwnedSequence {
                    column: "n".to_string(),
                    sequence: name("public", "items_n_seq"),
                },
                OwnedSequence {
                    column: "n".to_string(),
                    sequence: name("public", "items_stride_stage_n_seq"),
                },
            )],
            grants: vec![
                Grant {
                    privilege: "SELECT".to_string(),
                    grantee: Some("reader".to_string()),
                    grantable: false,
                    column: None,
                },
                Grant {
                    privilege: "UPDATE".to_string(),
                    grantee: None,
                    grantable: true,
                    column: Some("Name".to_string()),
                },
                Grant {
                    privilege: "SELECT; DROP".to_string(),
                    grantee: None,
                    grantable: false,
                    column: None,
                },
            ],
            comment: Some("the items' table".to_string()),
            index_renames: vec![(
                "items_stride_stage_pkey".to_string(),
                "items_pkey".to_string(),
            )],
        };
        assert_eq!(
            swap_sql(&target, &stage, &catalog),
            [
                "ALTER SEQUENCE \"public\".\"items_id_seq\" OWNED BY \"public\".\"items_stride_stage\".\"id\"",
                "SELECT setval('\"public\".\"items_stride_stage_n_seq\"'::regclass, o.last_value, o.is_called) FROM \"public\".\"items_n_seq\" AS o, \"public\".\"items_stride_stage_n_seq\" AS n WHERE (o.last_value, o.is_called) > (n.last_value, n.is_called)",
                "GRANT SELECT ON TABLE \"public\".\"items_stride_stage\" TO \"reader\"",
                "GRANT UPDATE (\"Name\") ON TABLE \"public\".\"items_stride_stage\" TO PUBLIC WITH GRANT OPTION",
                "COMMENT ON TABLE \"public\".\"items_stride_stage\" IS 'the items'' table'",
                "DROP TABLE \"public\".\"items\"",
                "ALTER TABLE \"public\".\"items_stride_stage\" RENAME TO \"items\"",
                "ALTER INDEX \"public\".\"items_stride_stage_pkey\" RENAME TO \"items_pkey\"",
                "ALTER SEQUENCE \"public\".\"items_stride_stage_n_seq\" RENAME TO \"items_n_seq\"",
            ]
        );
    }
}
