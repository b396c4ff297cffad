//! SQL text building blocks: identifier quoting, string-literal quoting, and
//! parsing of user-written (possibly schema-qualified) table names.
//!
//! Everything here is pure string manipulation; nothing talks to a database.
//! All generated SQL quotes every identifier, so names are used exactly as
//! PostgreSQL resolved them, whatever their case or spelling.

use std::fmt;

/// Quotes an identifier for PostgreSQL: always wrapped in double quotes, with
/// embedded double quotes doubled. Quoting unconditionally keeps case and
/// makes reserved words safe to use as names.
pub fn quote_ident(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len() + 2);
    out.push('"');
    for c in ident.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Checks that user-written SQL (`where`, `query`) stays inside the parentheses
/// stride puts around it: every parenthesis it closes it opened, it leaves none
/// open, and it has no `;` outside literals, quoted names and comments. Without
/// this a `where` of `id < 100) or (id > 2900` would change how partitions split
/// the rows. Literals (`'...'`, `E'...'`, `$tag$...$tag$`), quoted names and
/// comments (`--`, nested `/* */`) are skipped as PostgreSQL's lexer skips them.
/// Returns what is wrong, for an error naming the key.
pub fn check_enclosable(sql: &str) -> Result<(), String> {
    let b = sql.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' => {
                // An E'' string takes backslash escapes.
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !is_ident_byte(b[i - 2]));
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err("a string literal ('...') is not closed".into()),
                        Some(b'\\') if escapes => i += 2,
                        Some(b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => break,
                        Some(_) => i += 1,
                    }
                }
            }
            b'"' => {
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err("a quoted name (\"...\") is not closed".into()),
                        Some(b'"') if b.get(i + 1) == Some(&b'"') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut nested = 1;
                i += 2;
                while nested > 0 {
                    match (b.get(i), b.get(i + 1)) {
                        (None, _) => return Err("a comment (/* ... */) is not closed".into()),
                        (Some(b'/'), Some(b'*')) => {
                            nested += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            nested -= 1;
                            i += 2;
                        }
                        _ => i += 1,
                    }
                }
                continue;
            }
            b'$' if i == 0 || !is_ident_byte(b[i - 1]) => {
                // $tag$ ... $tag$ (a `$1` parameter or a `$` inside a name is not one).
                let end = i + 1 + b[i + 1..].iter().take_while(|c| is_ident_byte(**c)).count();
                let digit = b.get(i + 1).is_some_and(u8::is_ascii_digit);
                if b.get(end) == Some(&b'$') && !digit {
                    let tag = &sql[i..=end];
                    let Some(close) = sql[end + 1..].find(tag) else {
                        return Err(format!(
                            "a dollar-quoted string ({tag}...{tag}) is not closed"
                        ));
                    };
                    i = end + 1 + close + tag.len();
                    continue;
                }
            }
            b'(' => depth += 1,
            b')' if depth == 0 => {
                return Err(format!(
                    "it closes a parenthesis it did not open (at byte {i}: {:?})",
                    &sql[i..sql.len().min(i + 20)]
                ))
            }
            b')' => depth -= 1,
            b';' => {
                return Err(format!(
                    "it has a `;` (at byte {i}): one expression, not several statements"
                ))
            }
            _ => {}
        }
        i += 1;
    }
    if depth > 0 {
        return Err(format!("{depth} parenthesis(es) left open"));
    }
    Ok(())
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// Quotes a string literal for PostgreSQL: wrapped in single quotes, with
/// embedded single quotes doubled.
///
/// Correct only with `standard_conforming_strings = on` (the default since
/// PostgreSQL 9.1), where backslashes inside '...' are ordinary characters.
/// PostgreSQL text cannot contain NUL, so callers must not pass one.
pub fn quote_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A table name, optionally qualified by its schema, as PostgreSQL resolves it
/// (already case-folded; no quotes).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct QualifiedName {
    pub schema: Option<String>,
    pub name: String,
}

impl QualifiedName {
    /// Parses a user-written, possibly schema-qualified name with PostgreSQL's
    /// rules: unquoted parts are folded to lower case, `"quoted"` parts are kept
    /// as written with `""` standing for one `"`, and dots inside quotes are
    /// part of the name. Surrounding whitespace is ignored.
    ///
    /// # Errors
    ///
    /// A message saying what was expected, on an empty name, more than two parts,
    /// an empty part, an unterminated quote, or an unquoted part with characters
    /// that would need quoting (allowed: letters, digits, `_`, `$`; not
    /// starting with a digit or `$`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("the table name is empty (expected name or schema.name)".to_string());
        }
        let mut parts = Vec::new();
        let mut rest = trimmed;
        loop {
            let (part, after) = parse_part(rest, text)?;
            parts.push(part);
            if after.is_empty() {
                break;
            }
            // parse_part only stops early at a dot.
            rest = &after[1..];
        }
        let mut parts = parts.into_iter();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), None, None) => Ok(Self { schema: None, name }),
            (Some(schema), Some(name), None) => Ok(Self {
                schema: Some(schema),
                name,
            }),
            _ => Err(format!(
                "{text:?} has more than two dot-separated parts (expected name or schema.name)"
            )),
        }
    }
}

/// Parses one name part from the start of `rest`; returns the part and what
/// follows it, which is either empty or starts with a dot.
fn parse_part<'a>(rest: &'a str, whole: &str) -> Result<(String, &'a str), String> {
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices();
        loop {
            match chars.next() {
                None => {
                    return Err(format!(
                        "{whole:?} has an unterminated quoted identifier (expected a closing \")"
                    ))
                }
                Some((i, '"')) => {
                    if quoted[i + 1..].starts_with('"') {
                        name.push('"');
                        chars.next();
                    } else {
                        let after = &quoted[i + 1..];
                        if name.is_empty() {
                            return Err(format!(
                                "{whole:?} has an empty quoted identifier (expected at least one character between the quotes)"
                            ));
                        }
                        if !(after.is_empty() || after.starts_with('.')) {
                            return Err(format!(
                                "{whole:?} has text right after a quoted identifier (expected a dot or the end)"
                            ));
                        }
                        return Ok((name, after));
                    }
                }
                Some((_, c)) => name.push(c),
            }
        }
    }
    let end = rest.find('.').unwrap_or(rest.len());
    let (raw, after) = rest.split_at(end);
    if raw.is_empty() {
        return Err(format!(
            "{whole:?} has an empty name part (expected name or schema.name)"
        ));
    }
    let mut chars = raw.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$') {
        return Err(format!(
            "{raw:?} in {whole:?} needs double quotes (unquoted names are letters, digits, _ and $, not starting with a digit or $)"
        ));
    }
    // PostgreSQL folds only ASCII letters in multibyte encodings such as UTF-8.
    Ok((raw.to_ascii_lowercase(), after))
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(schema) = &self.schema {
            write!(f, "{}.", quote_ident(schema))?;
        }
        f.write_str(&quote_ident(&self.name))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn user_sql_cannot_escape_its_parentheses() {
        use super::check_enclosable as check;
        for ok in [
            "id < 100",
            "a = 1 OR b = 2 -- either ) (",
            "name = ')' AND x = '('' )'",
            "name = E'\\')' AND (y)",
            "x = $$ ) $$ AND y = $t$ ( $t$",
            "\"odd)name\" = 1",
            "/* ) /* nested ( */ still comment ) */ a = 1",
            "f(a, (b)) > 0",
            "SELECT * FROM t -- all of it",
            "price = $1",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            (
                "id < 100) or (id > 2900",
                "closes a parenthesis it did not open (at byte 8",
            ),
            ("(a = 1", "1 parenthesis(es) left open"),
            ("a = 1; DROP TABLE t", "has a `;`"),
            ("a = 'x", "string literal"),
            ("\"x = 1", "quoted name"),
            ("/* x", "comment"),
            (
                "x = $q$ abc",
                "dollar-quoted string ($q$...$q$) is not closed",
            ),
            (
                "SELECT 1) AS source, (SELECT 2",
                "closes a parenthesis it did not open",
            ),
        ] {
            let e = check(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    use super::*;

    #[test]
    fn quote_ident_cases() {
        let cases = [
            ("covid", r#""covid""#),
            ("Mixed Case", r#""Mixed Case""#),
            (r#"a"b"#, r#""a""b""#),
            ("", r#""""#),
            ("select", r#""select""#),
            ("ünï", r#""ünï""#),
        ];
        for (input, want) in cases {
            assert_eq!(quote_ident(input), want, "quote_ident({input:?})");
        }
    }

    #[test]
    fn quote_literal_cases() {
        let cases = [
            ("abc", "'abc'"),
            ("it's", "'it''s'"),
            (r"back\slash", r"'back\slash'"),
            ("", "''"),
            ("''", "''''''"),
        ];
        for (input, want) in cases {
            assert_eq!(quote_literal(input), want, "quote_literal({input:?})");
        }
    }

    #[test]
    fn parse_valid_names() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("public.covid_cases", Some("public"), "covid_cases"),
            ("Public.Covid", Some("public"), "covid"),
            ("covid", None, "covid"),
            ("  covid  ", None, "covid"),
            ("COVID$2021", None, "covid$2021"),
            ("_x", None, "_x"),
            (
                r#""My Schema"."Mixed.Case""#,
                Some("My Schema"),
                "Mixed.Case",
            ),
            (r#""a""b""#, None, r#"a"b"#),
            (r#"s."T""#, Some("s"), "T"),
            (r#""S".t"#, Some("S"), "t"),
            (r#""""""#, None, r#"""#),
            ("Ünïcode", None, "Ünïcode"),
        ];
        for &(input, schema, name) in cases {
            let got = QualifiedName::parse(input)
                .unwrap_or_else(|e| panic!("parse({input:?}) failed: {e}"));
            assert_eq!(
                got,
                QualifiedName {
                    schema: schema.map(str::to_string),
                    name: name.to_string()
                },
                "parse({input:?})"
            );
        }
    }

    #[test]
    fn parse_errors() {
        let cases = [
            ("", "empty"),
            ("   ", "empty"),
            ("a.b.c", "more than two"),
            (r#""a"."b"."c""#, "more than two"),
            (".a", "empty name part"),
            ("a.", "empty name part"),
            ("a..b", "empty name part"),
            (r#""""#, "empty quoted"),
            (r#""abc"#, "unterminated"),
            (r#""ab""c"#, "unterminated"),
            (r#""a"b"#, "right after a quoted"),
            ("my table", "needs double quotes"),
            ("1abc", "needs double quotes"),
            ("$abc", "needs double quotes"),
            ("a-b", "needs double quotes"),
            (r#"a"b""#, "needs double quotes"),
            ("public. covid", "needs double quotes"),
        ];
        for (input, want) in cases {
            let err =
                QualifiedName::parse(input).expect_err(&format!("parse({input:?}) should fail"));
            assert!(
                err.contains(want),
                "parse({input:?}) = {err:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn display_quotes_every_part() {
        let cases = [
            ("public.covid_cases", r#""public"."covid_cases""#),
            ("Covid", r#""covid""#),
            (r#""My Schema"."Mixed.Case""#, r#""My Schema"."Mixed.Case""#),
            (r#""a""b""#, r#""a""b""#),
        ];
        for (input, want) in cases {
            let name = QualifiedName::parse(input).unwrap();
            assert_eq!(name.to_string(), want, "display of {input:?}");
            assert_eq!(
                QualifiedName::parse(want).unwrap(),
                name,
                "reparse of {want:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn display_parses_back(schema in proptest::option::of("\\PC{1,12}"), name in "\\PC{1,12}") {
            let qualified = QualifiedName { schema, name };
            proptest::prop_assert_eq!(QualifiedName::parse(&qualified.to_string()), Ok(qualified));
        }

        #[test]
        fn parse_never_panics(text in "[a-zA-Z0-9_$. \"]{0,16}") {
            let _ = QualifiedName::parse(&text);
        }
    }

    #[test]
    fn serializes_as_plain_fields() {
        let name = QualifiedName::parse("Public.Covid").unwrap();
        let json = serde_json::to_string(&name).unwrap();
        assert_eq!(json, r#"{"schema":"public","name":"covid"}"#);
    }
}
