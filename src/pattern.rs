//! Table-name patterns of a `[[tables]]` entry (`public.*`, `sales.order_*`):
//! parsed and matched against the source's table names (pure).

use crate::sql::QualifiedName;

/// A pattern as written: `*` stands for any run of characters, `?` for one.
/// Unqualified, it means the first schema of the source's search_path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablePattern {
    /// As written, for messages.
    pub text: String,
    schema: Option<String>,
    name: String,
}

/// Whether a `table` value is a pattern rather than a name.
pub fn is_pattern(text: &str) -> bool {
    text.contains(['*', '?'])
}

impl TablePattern {
    /// Parses `schema.name` or `name`; unquoted, so folded to lower case as
    /// PostgreSQL folds unquoted names.
    ///
    /// # Errors
    ///
    /// What was expected, on quotes, an empty part or more than two parts.
    pub fn parse(text: &str) -> Result<TablePattern, String> {
        let trimmed = text.trim();
        if trimmed.contains('"') {
            return Err(format!(
                "{text:?} is a pattern with quotes (expected unquoted schema.name with * and ?)"
            ));
        }
        let parts: Vec<&str> = trimmed.split('.').collect();
        let (schema, name) = match parts.as_slice() {
            [name] => (None, *name),
            [schema, name] => (Some(schema.to_lowercase()), *name),
            _ => {
                return Err(format!(
                    "{text:?} has more than two parts (expected schema.name or name, with * and ?)"
                ))
            }
        };
        if name.is_empty() || schema.as_deref() == Some("") {
            return Err(format!(
                "{text:?} has an empty part (expected schema.name or name, with * and ?)"
            ));
        }
        Ok(TablePattern {
            text: trimmed.to_string(),
            schema,
            name: name.to_lowercase(),
        })
    }

    /// Whether `schema.name` matches; `default_schema` stands in for a pattern
    /// without one.
    pub fn matches(&self, schema: &str, name: &str, default_schema: &str) -> bool {
        let want = self.schema.as_deref().unwrap_or(default_schema);
        glob(want, schema) && glob(&self.name, name)
    }
}

/// The tables of `tables` (schema, name) that match `pattern` and none of
/// `exclude`, in the order given.
pub fn select(
    tables: &[(String, String)],
    pattern: &TablePattern,
    exclude: &[TablePattern],
    default_schema: &str,
) -> Vec<QualifiedName> {
    tables
        .iter()
        .filter(|(s, n)| pattern.matches(s, n, default_schema))
        .filter(|(s, n)| !exclude.iter().any(|x| x.matches(s, n, default_schema)))
        .map(|(s, n)| QualifiedName {
            schema: Some(s.clone()),
            name: n.clone(),
        })
        .collect()
}

/// `*` any run of characters, `?` exactly one; everything else as itself.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // The classic backtracking match: remember the last `*` and where it began.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (pattern, text, expected) in [
            ("*", "", true),
            ("*", "payment", true),
            ("order_*", "order_lines", true),
            ("order_*", "order_", true),
            ("order_*", "orders", false),
            ("pay?ent", "payment", true),
            ("pay?ent", "payent", false),
            ("*_2026_*", "payment_2026_01", true),
            ("*_2026_*", "payment_2025_01", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("film", "film", true),
            ("film", "film_actor", false),
            ("?", "", false),
        ] {
            assert_eq!(glob(pattern, text), expected, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn patterns_match_schema_and_name() {
        let tables: Vec<(String, String)> = [
            ("public", "actor"),
            ("public", "audit_log"),
            ("public", "audit_2026"),
            ("public", "film"),
            ("sales", "order_lines"),
            ("sales", "orders"),
        ]
        .iter()
        .map(|(s, n)| (s.to_string(), n.to_string()))
        .collect();
        let names = |found: Vec<QualifiedName>| -> Vec<String> {
            found
                .iter()
                .map(|q| format!("{}.{}", q.schema.as_deref().unwrap(), q.name))
                .collect()
        };
        let all = TablePattern::parse("public.*").unwrap();
        let audit = TablePattern::parse("PUBLIC.audit_*").unwrap();
        assert_eq!(
            names(select(&tables, &all, &[audit], "public")),
            ["public.actor", "public.film"]
        );
        let unqualified = TablePattern::parse("order_*").unwrap();
        assert_eq!(
            names(select(&tables, &unqualified, &[], "sales")),
            ["sales.order_lines"]
        );
        assert!(select(&tables, &unqualified, &[], "public").is_empty());
        let any_schema = TablePattern::parse("*.a*").unwrap();
        assert_eq!(
            names(select(&tables, &any_schema, &[], "public")),
            ["public.actor", "public.audit_log", "public.audit_2026"]
        );
    }

    #[test]
    fn bad_patterns_say_what_was_expected() {
        assert!(is_pattern("public.*") && is_pattern("f?lm") && !is_pattern("public.film"));
        assert_eq!(
            TablePattern::parse("a.b.*").unwrap_err(),
            "\"a.b.*\" has more than two parts (expected schema.name or name, with * and ?)"
        );
        assert_eq!(
            TablePattern::parse(".*").unwrap_err(),
            "\".*\" has an empty part (expected schema.name or name, with * and ?)"
        );
        assert!(TablePattern::parse("\"Public\".*").is_err());
    }
}
