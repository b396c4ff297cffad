//! Property tests of the job parser and the planner (issue 3: "no input panics;
//! each bad input yields exit 2"). No database: the planner gets its columns
//! directly, and the CLI cases fail before any connection would be attempted (their
//! URLs point at 127.0.0.1:1, where nothing listens; an attempt would exit 1).
//!
//! 1. `Job::parse` never panics, on arbitrary text and on generated, mutated job
//!    files; every error names a key or a line, and never shows a URL's password.
//! 2. For any key type and any bound text, `plan::parse_bounds` either fails naming
//!    a bound, or `plan::build` makes 1 to `count` partitions whose predicates,
//!    evaluated in Rust, put every value and NULL in exactly one partition.
//! 3. `stride plan` on a job file made bad in one known way exits 2 with an error on
//!    stderr, and never panics.
//!
//! Failures are not persisted to files (`failure_persistence: None`); cases worth
//! keeping are written out below as regression tests.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use stride::engine::postgres::plan::{self, Bounds, BoundsOrigin, Key};
use stride::engine::postgres::Column;
use stride::job::{interpolate, Job, Relation};
use stride::partition::{KeyRange, KeyType};
use stride::sql::quote_ident;

use crate::common::job_file;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

fn sel(items: &'static [&'static str]) -> BoxedStrategy<String> {
    select(items).prop_map(String::from).boxed()
}

// ---------------------------------------------------------------------------------
// TOML text.

/// `s` as a TOML string in one of several styles. Styles 0 to 2 are always valid
/// TOML for any `s`; style 3 pastes `s` between quotes unescaped.
fn toml_str(s: &str, style: u8) -> String {
    let escaped = || {
        let mut out = String::with_capacity(s.len() + 2);
        for c in s.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                c => out.push(c),
            }
        }
        out
    };
    match style % 4 {
        1 if !s.contains('\'') && !s.chars().any(char::is_control) => format!("'{s}'"),
        2 => format!("\"\"\"{}\"\"\"", escaped()),
        3 => format!("\"{s}\""),
        _ => format!("\"{}\"", escaped()),
    }
}

/// A TOML string that is valid and survives `${VAR}` interpolation unchanged.
fn toml_lit(s: &str, style: u8) -> String {
    toml_str(s, style % 3).replace('$', "$$")
}

/// The marker of every generated password: `pw_` and 12 letters or digits, never
/// produced by chance by the other generators.
fn password() -> impl Strategy<Value = String> {
    "pw_[A-Za-z0-9]{12}"
}

/// Every generated password in `text`.
fn passwords_in(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(pos) = rest.find("pw_") {
        let tail = &rest[pos + 3..];
        let alnum: String = tail
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        if alnum.len() == 12 {
            found.insert(format!("pw_{alnum}"));
        }
        rest = tail;
    }
    found
}

fn url_param() -> impl Strategy<Value = String> {
    let key = sel(&[
        "sslmode",
        "application_name",
        "host",
        "port",
        "options",
        "options[search_path]",
        "sslkey",
        "user",
        "dbname",
        "statement-cache-capacity",
        "foo",
        "sslpassword",
        "tcp_user_timeout",
        "",
    ]);
    let value = prop_oneof![
        3 => "[a-z0-9_-]{0,10}",
        1 => Just("-c%20search_path%3Dx".to_string()),
        1 => Just(String::new()),
    ];
    prop_oneof![
        4 => (key, value).prop_map(|(k, v)| format!("{k}={v}")),
        1 => password().prop_map(|p| format!("password={p}")),
        1 => "[a-z]{1,6}",
    ]
}

/// Connection URLs: well-formed ones with a password in the user info or in
/// `?password=`, other schemes, broken hosts and ports, garbage.
fn url() -> BoxedStrategy<String> {
    let scheme = prop_oneof![
        6 => Just("postgres://"),
        2 => Just("postgresql://"),
        1 => Just("mysql://"),
        1 => Just("http://"),
        1 => Just("POSTGRES://"),
        1 => Just("postgres:"),
        1 => Just(""),
    ];
    let userinfo = prop_oneof![
        1 => Just(String::new()),
        1 => "[a-z_]{1,8}@",
        4 => ("[a-z_]{1,8}", password()).prop_map(|(u, p)| format!("{u}:{p}@")),
        1 => password().prop_map(|p| format!(":{p}@")),
    ];
    let host = prop_oneof![
        6 => "[a-z]{1,10}(\\.[a-z]{2,5})?",
        2 => Just("127.0.0.1".to_string()),
        1 => Just("[::1]".to_string()),
        1 => Just("[::1".to_string()),
        1 => Just(String::new()),
        1 => "[a-z%@ ]{1,6}",
    ];
    let port = prop_oneof![
        4 => Just(String::new()),
        4 => (0_u32..70_000).prop_map(|p| format!(":{p}")),
        1 => Just(":x".to_string()),
    ];
    let database = "(/[a-z_]{0,10})?";
    let query = vec(url_param(), 0..3).prop_map(|ps| {
        if ps.is_empty() {
            String::new()
        } else {
            format!("?{}", ps.join("&"))
        }
    });
    let structured = (scheme, userinfo, host, port, database, query)
        .prop_map(|(s, u, h, p, d, q)| format!("{s}{u}{h}{p}{d}{q}"));
    prop_oneof![
        8 => structured,
        1 => "\\PC{0,30}",
        1 => Just(" postgres://u@h/d ".to_string()),
    ]
    .boxed()
}

/// `${...}` and `$` forms that interpolate. Only non-secret variables: the URL
/// variables are referenced from `url` keys alone.
fn good_placeholder() -> BoxedStrategy<String> {
    sel(&[
        "${A}",
        "${B:-x}",
        "${UNSET:-dflt}",
        "${EMPTY:-}",
        "${EMPTY}",
        "$$",
        "}",
        "$",
        "$A",
        "${A:-${B}}",
    ])
}

/// `${...}` forms that interpolation refuses: unset, unterminated, not a name.
fn bad_placeholder() -> BoxedStrategy<String> {
    sel(&[
        "${UNSET}",
        "${",
        "${A",
        "${SOURCE_URL",
        "${1X}",
        "${A B}",
        "${}",
        "${:-x}",
        "${é}",
    ])
}

/// A TOML string style for `toml_str`, mostly valid ones.
fn style() -> BoxedStrategy<u8> {
    prop_oneof![6 => Just(0_u8), 2 => Just(1_u8), 2 => Just(2_u8), 1 => Just(3_u8)].boxed()
}

/// Text for string values of keys other than `url`.
fn text() -> BoxedStrategy<String> {
    let simple: BoxedStrategy<String> = prop_oneof![
        3 => "[a-z_][a-z0-9_]{0,10}",
        2 => "[a-z]{1,6}\\.[a-z]{1,6}",
        1 => "\"[A-Za-z .]{0,6}\"(\\.\"[A-Za-z.]{1,6}\")?",
        1 => "[a-z]{1,3}\\.[a-z]{1,3}\\.[a-z]{1,3}",
        1 => sel(&["SELECT 1", "select * from t;", "  ;  ", "", " ", "x > 0 -- c", "a.", ".a", "1a"]),
        1 => "-?[0-9]{4}-[0-9]{2}-[0-9]{2}( [0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,7})?)?)?([+-][0-9]{2}(:[0-9]{2})?|Z)?( BC)?",
        1 => "[+-]?[0-9]{1,22}",
        1 => sel(&["append", "truncate", "if-missing", "never", "copy", "insert", "merge", "Append"]),
        2 => "\\PC{0,20}",
        1 => good_placeholder(),
    ]
    .boxed();
    prop_oneof![
        12 => simple.clone(),
        1 => (simple.clone(), good_placeholder(), simple).prop_map(|(a, p, b)| format!("{a}{p}{b}")),
    ]
    .boxed()
}

fn integer() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (-5_i64..200).prop_map(|i| i.to_string()),
        2 => any::<i64>().prop_map(|i| i.to_string()),
        1 => sel(&[
            "-9223372036854775808", "9223372036854775807", "9223372036854775808",
            "-9223372036854775809", "100000", "100001", "65535", "65536", "1000000", "1000001",
            "0", "-0", "+5", "1_000", "0x10", "0o17", "0b101", "007", "1__0", "-0x10",
            "99999999999999999999999999",
        ]),
    ]
    .boxed()
}

fn float() -> BoxedStrategy<String> {
    prop_oneof![
        3 => any::<f64>().prop_map(|f| {
            if f.is_nan() {
                "nan".to_string()
            } else if f.is_infinite() {
                if f > 0.0 { "inf".to_string() } else { "-inf".to_string() }
            } else {
                format!("{f:e}")
            }
        }),
        1 => sel(&["1.5", "-0.0", "+inf", "-nan", "1e3", "0.1", "1.", ".5", "3.0e-7"]),
    ]
    .boxed()
}

fn datetime() -> BoxedStrategy<String> {
    (
        0_u32..10_000,
        prop_oneof![8 => 1_u32..13, 1 => 0_u32..100],
        prop_oneof![8 => 1_u32..29, 1 => 0_u32..100],
        prop_oneof![
            8 => (0_u32..24, 0_u32..60, 0_u32..60),
            1 => (0_u32..100, 0_u32..100, 0_u32..100),
        ],
        option::of("[0-9]{1,9}"),
        prop_oneof![
            Just(String::new()),
            Just("Z".to_string()),
            (0_u32..25, 0_u32..61, any::<bool>())
                .prop_map(|(h, m, neg)| format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' })),
        ],
        0_u8..5,
    )
        .prop_map(|(y, mo, d, (h, mi, s), frac, offset, form)| {
            let date = format!("{y:04}-{mo:02}-{d:02}");
            let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
            let time = format!("{h:02}:{mi:02}:{s:02}{frac}");
            match form {
                0 => date,
                1 => time,
                2 => format!("{date}T{time}"),
                3 => format!("{date} {time}{offset}"),
                _ => format!("{date}T{time}{offset}"),
            }
        })
        .boxed()
}

fn scalar() -> BoxedStrategy<String> {
    prop_oneof![
        5 => (text(), style()).prop_map(|(s, style)| toml_str(&s, style)),
        3 => integer(),
        1 => float(),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        2 => datetime(),
        1 => "[^\n]{0,8}",
    ]
    .boxed()
}

/// Any TOML value (and some that are not).
fn value() -> BoxedStrategy<String> {
    prop_oneof![
        8 => scalar(),
        1 => vec(scalar(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
        1 => vec(("[a-z]{1,4}", scalar()), 0..3).prop_map(|kv| {
            let inner: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{{ {} }}", inner.join(", "))
        }),
    ]
    .boxed()
}

/// A URL stride accepts: postgres scheme, a password, known parameters.
fn good_url() -> BoxedStrategy<String> {
    (
        select(vec!["postgres", "postgresql"]),
        "[a-z_]{1,8}",
        password(),
        prop_oneof![Just("127.0.0.1".to_string()), "[a-z]{1,8}(\\.[a-z]{2,4})?"],
        option::of(1_u32..65_536),
        "[a-z_]{1,10}",
        vec(
            prop_oneof![
                sel(&[
                    "sslmode=disable",
                    "sslmode=require",
                    "application_name=stride",
                    "options=-c%20x%3D1"
                ]),
                password().prop_map(|p| format!("password={p}")),
            ],
            0..3,
        ),
    )
        .prop_map(|(scheme, user, pw, host, port, db, params)| {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let query = if params.is_empty() {
                String::new()
            } else {
                format!("?{}", params.join("&"))
            };
            format!("{scheme}://{user}:{pw}@{host}{port}/{db}{query}")
        })
        .boxed()
}

/// A value for `url`: mostly a good URL (the only place passwords are written)
/// or a reference to a URL variable; sometimes any URL.
fn url_value() -> BoxedStrategy<String> {
    prop_oneof![
        8 => (good_url(), style()).prop_map(|(u, style)| toml_str(&u, style % 3)),
        3 => sel(&["\"${SOURCE_URL}\"", "\"${TARGET_URL}\"", "'${SOURCE_URL}'", "\"${TARGET_URL:-postgres://h/d}\""]),
        1 => good_url().prop_map(|u| format!("\"${{UNSET_URL:-{u}}}\"")),
        2 => (url(), style()).prop_map(|(u, style)| toml_str(&u, style)),
    ]
    .boxed()
}

fn ident() -> BoxedStrategy<String> {
    prop_oneof![
        6 => "[a-z_][a-z0-9_]{0,10}",
        1 => "[A-Za-z][A-Za-z0-9 $]{0,8}",
        1 => "\\PC{1,8}",
    ]
    .boxed()
}

fn table_name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z_][a-z0-9_]{0,10}",
        3 => "[a-z_][a-z0-9_]{0,6}\\.[a-z_][a-z0-9_]{0,6}",
        1 => "\"[A-Za-z .]{1,6}\"\\.\"[A-Za-z.\"]{1,6}\"",
        1 => "[A-Z][a-z]{0,5}",
    ]
    .boxed()
}

/// A valid value for `key` (bounds are made by `partition_section`).
fn good_value_for(key: &str) -> BoxedStrategy<String> {
    let string = |s: BoxedStrategy<String>| {
        (s, style())
            .prop_map(|(s, style)| toml_str(&s, style % 3))
            .boxed()
    };
    match key {
        "url" => url_value(),
        "table" | "checkpoint_table" => string(table_name()),
        "query" => string(sel(&[
            "SELECT 1",
            "select * from t;",
            "SELECT a FROM t -- all",
            "WITH x AS (SELECT 1) SELECT * FROM x",
        ])),
        "columns" => vec((ident(), style()), 1..4)
            .prop_map(|cs| {
                let mut seen = BTreeSet::new();
                let items: Vec<String> = cs
                    .iter()
                    .filter(|(c, _)| seen.insert(c.clone()))
                    .map(|(c, s)| toml_str(c, s % 3))
                    .collect();
                format!("[{}]", items.join(", "))
            })
            .boxed(),
        "where" => string(
            prop_oneof![
                3 => sel(&["x > 0", "state <> 'Unknown'", "a -- comment", " b "]),
                1 => ("[a-z]{1,4}", good_placeholder()).prop_map(|(a, p)| format!("{a} = '{p}'")),
            ]
            .boxed(),
        ),
        "column" => string(ident()),
        "count" => prop_oneof![4 => 1_i64..=64, 1 => 1_i64..=100_000]
            .prop_map(|c| c.to_string())
            .boxed(),
        "batch_size" => (1_i64..=1_000_000).prop_map(|c| c.to_string()).boxed(),
        "parallelism" => (1_i64..=65_535).prop_map(|c| c.to_string()).boxed(),
        "retries" => (0_i64..=100).prop_map(|c| c.to_string()).boxed(),
        "mode" => sel(&["\"append\"", "'truncate'"]),
        "create" => sel(&["\"if-missing\"", "\"never\""]),
        "method" => sel(&["\"copy\"", "\"insert\""]),
        "checkpoint" => sel(&["true", "false"]),
        _ => value(),
    }
}

const SOURCE_KEYS: &[&str] = &["url", "table", "query", "columns", "where"];
const TARGET_KEYS: &[&str] = &["url", "table", "mode", "create", "method", "batch_size"];
/// `checkpoint`, `checkpoint_table` and `retries` are being added (issue 3); with or
/// without them the properties hold.
const RUN_KEYS: &[&str] = &["parallelism", "checkpoint", "checkpoint_table", "retries"];
const MISSPELT_KEYS: &[&str] = &[
    "ulr",
    "URL",
    "uri",
    "tabel",
    "Table",
    "qurey",
    "colums",
    "column",
    "wher",
    "cuont",
    "colum",
    "lowerbound",
    "lower-bound",
    "upper",
    "batchsize",
    "paralelism",
    "mod",
    "methods",
    "creat",
    "retry",
    "count ",
    "\"url \"",
    "\"a.b\"",
    "\"\"",
    "source",
];

/// A job file as sections of `key = value` lines, before it is mutated.
#[derive(Clone, Debug)]
struct Doc {
    root: Vec<String>,
    sections: Vec<(String, Vec<String>)>,
}

impl Doc {
    fn render(&self) -> String {
        let mut text: String = self.root.iter().map(|l| format!("{l}\n")).collect();
        for (header, lines) in &self.sections {
            text.push_str(header);
            text.push('\n');
            for l in lines {
                text.push_str(l);
                text.push('\n');
            }
        }
        text
    }
}

/// One section: its header and each known key with probability `p` (`url` and
/// `column` almost always), with a typical value for the key.
fn section(
    name: &'static str,
    keys: &'static [&'static str],
    p: f64,
) -> BoxedStrategy<(String, Vec<String>)> {
    let entries: Vec<BoxedStrategy<Option<String>>> = keys
        .iter()
        .map(|k| {
            let present = if *k == "url" || *k == "column" {
                0.97
            } else {
                p
            };
            option::weighted(
                present,
                good_value_for(k).prop_map(move |v| format!("{k} = {v}")),
            )
            .boxed()
        })
        .collect();
    entries
        .prop_map(move |lines| (format!("[{name}]"), lines.into_iter().flatten().collect()))
        .boxed()
}

/// One way to break a document.
#[derive(Clone, Debug)]
enum Mutation {
    Header(Index, String),
    ExtraLine(Index, String),
    Value(Index, Index, String),
    DropLine(Index, Index),
    DuplicateLine(Index, Index),
    DropSection(Index),
    DuplicateSection(Index),
    Root(String),
}

fn mutation() -> BoxedStrategy<Mutation> {
    let header = prop_oneof![
        sel(&[
            "[sorce]",
            "[Source]",
            "[src]",
            "[partitions]",
            "[targt]",
            "[Target]",
            "[Run]",
            "[retry]",
            "[extra]"
        ]),
        sel(&[
            "[[source]]",
            "[[target]]",
            "[[partition]]",
            "[ source ]",
            "[target",
            "[partition.x]",
            "[source.url]",
            "[run]]"
        ]),
    ];
    let key = prop_oneof![3 => sel(MISSPELT_KEYS), 1 => "[a-z_]{1,8}"];
    let line = prop_oneof![
        4 => (key.clone(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => sel(&["# a comment ${UNSET}", "", "=", "url", "a = ", "\"\"\"", "[", "]"]),
        1 => "[^\n]{0,12}",
    ];
    let bad_string = (text(), bad_placeholder(), text(), style())
        .prop_map(|(a, p, b, style)| toml_str(&format!("{a}{p}{b}"), style));
    prop_oneof![
        2 => (any::<Index>(), header).prop_map(|(i, h)| Mutation::Header(i, h)),
        3 => (any::<Index>(), line).prop_map(|(i, l)| Mutation::ExtraLine(i, l)),
        3 => (any::<Index>(), any::<Index>(), value()).prop_map(|(i, j, v)| Mutation::Value(i, j, v)),
        3 => (any::<Index>(), any::<Index>(), bad_string).prop_map(|(i, j, v)| Mutation::Value(i, j, v)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Mutation::DropLine(i, j)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Mutation::DuplicateLine(i, j)),
        1 => any::<Index>().prop_map(Mutation::DropSection),
        1 => any::<Index>().prop_map(Mutation::DuplicateSection),
        1 => (key, value()).prop_map(|(k, v)| Mutation::Root(format!("{k} = {v}"))),
    ]
    .boxed()
}

impl Doc {
    fn mutate(&mut self, m: &Mutation) {
        let n = self.sections.len();
        match m {
            Mutation::Root(line) => self.root.push(line.clone()),
            _ if n == 0 => {}
            Mutation::Header(i, h) => self.sections[i.index(n)].0 = h.clone(),
            Mutation::ExtraLine(i, line) => {
                let lines = &mut self.sections[i.index(n)].1;
                lines.push(line.clone());
            }
            Mutation::Value(i, j, v) => {
                let lines = &mut self.sections[i.index(n)].1;
                if !lines.is_empty() {
                    let at = j.index(lines.len());
                    if let Some((k, _)) = lines[at].split_once(" = ") {
                        lines[at] = format!("{k} = {v}");
                    }
                }
            }
            Mutation::DropLine(i, j) => {
                let lines = &mut self.sections[i.index(n)].1;
                if !lines.is_empty() {
                    lines.remove(j.index(lines.len()));
                }
            }
            Mutation::DuplicateLine(i, j) => {
                let lines = &mut self.sections[i.index(n)].1;
                if !lines.is_empty() {
                    let line = lines[j.index(lines.len())].clone();
                    lines.push(line);
                }
            }
            Mutation::DropSection(i) => {
                self.sections.remove(i.index(n));
            }
            Mutation::DuplicateSection(i) => {
                let s = self.sections[i.index(n)].clone();
                self.sections.push(s);
            }
        }
    }
}

/// `[partition]`: a column, both bounds or neither (integers, dates, timestamps,
/// as TOML values or strings), a count.
fn partition_section() -> BoxedStrategy<(String, Vec<String>)> {
    let bound = prop_oneof![
        3 => any::<i64>().prop_map(|v| v.to_string()),
        2 => (-1_000_i64..1_000).prop_map(|v| v.to_string()),
        2 => (1_u32..10_000, 1_u32..13, 1_u32..29).prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")),
        2 => (1_u32..10_000, 1_u32..13, 1_u32..29, 0_u32..24).prop_map(|(y, m, d, h)| format!("\"{y:04}-{m:02}-{d:02} {h:02}:00:00\"")),
        1 => (text(), style()).prop_map(|(s, style)| toml_str(&s, style % 3)),
    ];
    (
        option::weighted(0.97, good_value_for("column")),
        option::weighted(0.5, (bound.clone(), bound)),
        option::weighted(0.7, good_value_for("count")),
    )
        .prop_map(|(column, bounds, count)| {
            let mut lines = Vec::new();
            if let Some(c) = column {
                lines.push(format!("column = {c}"));
            }
            if let Some((l, u)) = bounds {
                lines.push(format!("lower_bound = {l}"));
                lines.push(format!("upper_bound = {u}"));
            }
            if let Some(c) = count {
                lines.push(format!("count = {c}"));
            }
            ("[partition]".to_string(), lines)
        })
        .boxed()
}

/// A job file built from the four sections (each present with some probability,
/// in any order) with valid values, then broken in 0 to 3 ways: misspelt keys and
/// headers, values of any type, `${VAR}` errors, stray lines, duplicates.
fn job_document() -> BoxedStrategy<String> {
    (
        option::weighted(0.97, section("source", SOURCE_KEYS, 0.4)),
        any::<bool>(),
        option::weighted(0.5, partition_section()),
        option::weighted(0.97, section("target", TARGET_KEYS, 0.45)),
        option::weighted(0.35, section("run", RUN_KEYS, 0.3)),
        prop_oneof![3 => Just(0_usize), 3 => Just(1_usize), 1 => Just(2_usize), 1 => Just(3_usize)],
    )
        .prop_flat_map(|(mut s, use_query, p, t, r, mutations)| {
            // Exactly one of table and query, unless a mutation says otherwise.
            if let Some((_, lines)) = &mut s {
                let drop = if use_query { "table = " } else { "query = " };
                lines.retain(|l| !l.starts_with(drop));
                let keep = if use_query {
                    "query = \"SELECT 1\""
                } else {
                    "table = \"t\""
                };
                if !lines.iter().any(|l| l.starts_with(&keep[..8])) {
                    lines.push(keep.to_string());
                }
            }
            let sections: Vec<(String, Vec<String>)> = [s, p, t, r].into_iter().flatten().collect();
            (Just(sections).prop_shuffle(), vec(mutation(), mutations))
        })
        .prop_map(|(sections, mutations)| {
            let mut doc = Doc {
                root: Vec::new(),
                sections,
            };
            for m in &mutations {
                doc.mutate(m);
            }
            doc.render()
        })
        .boxed()
}

/// A valid job, for mutation.
const VALID_JOB: &str = "[source]
url = \"${SOURCE_URL:-postgres://stride:pw_SecretSecret@127.0.0.1:1/src}\"
table = \"public.covid_cases\"
columns = [\"state\", \"date\"]
where = \"state <> 'Unknown'\"
[partition]
column = \"date\"
lower_bound = \"2021-02-20\"
upper_bound = 2021-02-28
count = 4
[target]
url = 'postgres://stride:pw_TargetSecret@127.0.0.1:1/dst?sslmode=disable'
table = \"Public.Covid\"
mode = \"truncate\"
create = \"never\"
method = \"insert\"
batch_size = 500
[run]
parallelism = 2
";

/// `VALID_JOB` with a few random edits: deletions, insertions, replacements.
fn mutated_job() -> BoxedStrategy<String> {
    let edit = (
        any::<Index>(),
        0_usize..12,
        0_u8..3,
        "\\PC{0,6}|[\\[\\]=\"'${}\n#.,]{1,3}",
    );
    vec(edit, 1..5)
        .prop_map(|edits| {
            let mut chars: Vec<char> = VALID_JOB.chars().collect();
            for (at, len, op, insert) in edits {
                let at = at.index(chars.len() + 1);
                let end = (at + len).min(chars.len());
                match op {
                    0 => {
                        chars.drain(at..end);
                    }
                    1 => {
                        chars.splice(at..at, insert.chars());
                    }
                    _ => {
                        chars.splice(at..end, insert.chars());
                    }
                }
            }
            chars.into_iter().collect()
        })
        .boxed()
}

/// The environment `Job::parse` sees. The URL variables may hold passwords; the
/// others hold arbitrary text (quotes, newlines, `${`).
fn environment() -> BoxedStrategy<BTreeMap<String, String>> {
    let other = prop_oneof![
        8 => "[a-z0-9_]{0,8}",
        1 => "\\PC{0,10}",
        1 => sel(&["\"", "'", "\n", "a\nb = 1", "${A}", "\\", "}"]),
    ]
    .boxed();
    (
        option::weighted(0.85, url()),
        option::weighted(0.85, url()),
        option::weighted(0.9, other.clone()),
        option::weighted(0.9, other),
    )
        .prop_map(|(s, t, a, b)| {
            let mut env = BTreeMap::new();
            for (k, v) in [("SOURCE_URL", s), ("TARGET_URL", t), ("A", a), ("B", b)] {
                if let Some(v) = v {
                    env.insert(k.to_string(), v);
                }
            }
            env.insert("EMPTY".to_string(), String::new());
            env
        })
        .boxed()
}

fn arbitrary_text() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,300}",
        vec(any::<u8>(), 0..400).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "[\\[\\]a-z_.=\"' \n${}:#0-9-]{0,200}",
        mutated_job(),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------
// What an error must look like.

fn line_count(text: &str) -> usize {
    text.matches('\n').count() + 1
}

/// Reads a decimal number at the start of `s`.
fn leading_number(s: &str) -> Option<(usize, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n = s[..digits].parse().ok()?;
    Some((n, &s[digits..]))
}

/// A job error names what is wrong: it starts with `line N` (a line of the file,
/// before or after interpolation), with a key path under one of the four sections,
/// or, for an unknown top-level key, with that key. A position at the end, as
/// `(line N, column M)`, is inside the file too.
fn check_message(message: &str, text: &str, env: &BTreeMap<String, String>) -> Result<(), String> {
    if message.trim().is_empty() {
        return Err("the message is empty".into());
    }
    let expanded = interpolate(text, |n| env.get(n).cloned()).unwrap_or_default();
    let max_line = line_count(text).max(line_count(&expanded));
    let line_ok = |n: usize| n >= 1 && n <= max_line;
    if let Some(rest) = message.strip_prefix("line ") {
        let (n, rest) = leading_number(rest).ok_or("`line` without a number")?;
        if !line_ok(n) {
            return Err(format!("line {n} is not in the file ({max_line} lines)"));
        }
        if let Some(rest) = rest.strip_prefix(", column ") {
            let (c, rest) = leading_number(rest).ok_or("`column` without a number")?;
            if c == 0 || !rest.starts_with(": ") {
                return Err("bad column".into());
            }
        } else if !rest.starts_with(": ") {
            return Err("`line N` not followed by `: `".into());
        }
        return Ok(());
    }
    let under_section = ["source", "partition", "target", "run"].iter().any(|s| {
        message.strip_prefix(s).is_some_and(|rest| {
            rest.starts_with(": ") || rest.starts_with('.') || rest.starts_with('[')
        })
    });
    let unknown_top_level = message
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once("`, expected one of `source`"))
        .is_some_and(|(key, _)| message.starts_with(&format!("{key}: unknown field `{key}`")));
    if !under_section && !unknown_top_level {
        return Err("names neither a line nor a key".into());
    }
    if let Some(pos) = message.rfind(" (line ") {
        if message.ends_with(')') {
            let (n, rest) =
                leading_number(&message[pos + 7..]).ok_or("`(line` without a number")?;
            if !line_ok(n) || !rest.starts_with(", column ") {
                return Err(format!(
                    "position line {n} is not in the file ({max_line} lines)"
                ));
            }
        }
    }
    Ok(())
}

/// What a parsed job guarantees.
fn check_job(job: &Job) -> Result<(), String> {
    if let Some(p) = &job.partition {
        let column_ok = match p.strategy {
            stride::job::Strategy::Ctid => p.column.is_none(),
            _ => p.column.as_ref().is_some_and(|c| !c.is_empty()),
        };
        if !(1..=100_000).contains(&p.count) || !column_ok {
            return Err(format!("partition {p:?}"));
        }
    }
    if !(1..=1_000_000).contains(&job.target.batch_size) {
        return Err(format!("batch_size {}", job.target.batch_size));
    }
    if job.parallelism.is_some_and(|p| p == 0 || p > 65_535) {
        return Err(format!("parallelism {:?}", job.parallelism));
    }
    if let Relation::Query(q) = &job.source.relation {
        if q.trim().is_empty() {
            return Err("empty query".into());
        }
    }
    for url in [&job.source.url, &job.target.url] {
        let scheme = url
            .expose()
            .split(':')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if !["postgres", "postgresql", "mysql", "mariadb", "sqlite"].contains(&scheme.as_str()) {
            return Err(format!("scheme of {url}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// 1. The job parser.

proptest! {
    #![proptest_config(config(512))]

    /// Any text at all, including random bytes read as lossy UTF-8 and edits of a
    /// valid job: no panic, and an error names a line or a key.
    #[test]
    fn props_parse_arbitrary_text(text in arbitrary_text(), env in environment()) {
        match Job::parse(&text, |n| env.get(n).cloned()) {
            Ok(job) => prop_assert!(check_job(&job).is_ok(), "{:?}", check_job(&job)),
            Err(e) => {
                let message = e.to_string();
                let verdict = check_message(&message, &text, &env);
                prop_assert!(verdict.is_ok(), "{:?} for message {:?}", verdict, message);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(768))]

    /// Generated job files: no panic; an accepted job keeps its ranges; an error
    /// names a line or a key.
    #[test]
    fn props_parse_generated_jobs(text in job_document(), env in environment()) {
        match Job::parse(&text, |n| env.get(n).cloned()) {
            Ok(job) => prop_assert!(check_job(&job).is_ok(), "{:?}", check_job(&job)),
            Err(e) => {
                let message = e.to_string();
                let verdict = check_message(&message, &text, &env);
                prop_assert!(verdict.is_ok(), "{:?} for message {:?}", verdict, message);
            }
        }
    }

    /// Passwords written in `url` keys (or in the URL variables) never appear in an
    /// error, nor in the parsed job's `Debug`.
    #[test]
    fn props_parse_never_shows_passwords(text in job_document(), env in environment()) {
        let mut secrets = passwords_in(&text);
        for v in env.values() {
            secrets.extend(passwords_in(v));
        }
        let shown = match Job::parse(&text, |n| env.get(n).cloned()) {
            Ok(job) => format!("{job:?}"),
            Err(e) => e.to_string(),
        };
        for secret in &secrets {
            prop_assert!(!shown.contains(secret.as_str()), "password {} shown in {:?}", secret, shown);
        }
    }
}

// ---------------------------------------------------------------------------------
// 2. The planner.

const KEY_TYPES: [KeyType; 6] = [
    KeyType::Int2,
    KeyType::Int4,
    KeyType::Int8,
    KeyType::Date,
    KeyType::Timestamp,
    KeyType::Timestamptz,
];

fn is_integer(key: KeyType) -> bool {
    matches!(key, KeyType::Int2 | KeyType::Int4 | KeyType::Int8)
}

/// How the catalogue may spell the key's type.
fn pg_type_name(key: KeyType) -> BoxedStrategy<String> {
    match key {
        KeyType::Int2 => sel(&["smallint", "int2"]),
        KeyType::Int4 => sel(&["integer", "int4", "int", "INTEGER"]),
        KeyType::Int8 => sel(&["bigint", "int8"]),
        KeyType::Date => sel(&["date", " date "]),
        KeyType::Timestamp => sel(&[
            "timestamp without time zone",
            "timestamp(3) without time zone",
            "timestamp",
            "timestamp(6)",
        ]),
        KeyType::Timestamptz => sel(&[
            "timestamp with time zone",
            "timestamp(0) with time zone",
            "timestamptz",
            "Timestamp With Time Zone",
        ]),
    }
}

/// A value of the key's type: anywhere in its domain, near its ends, or near 0.
fn in_domain(key: KeyType) -> BoxedStrategy<i64> {
    let (min, max) = key.domain();
    prop_oneof![
        2 => min..=max,
        1 => min..=min.saturating_add(1_000),
        1 => max.saturating_sub(1_000)..=max,
        1 => (-1_000_i64..1_000).prop_map(move |v| v.clamp(min, max)),
        1 => Just(min),
        1 => Just(max),
    ]
    .boxed()
}

/// A bound as TOML text, and the value it must parse to when that is known.
fn bound(key: KeyType) -> BoxedStrategy<BoundText> {
    let (min, max) = key.domain();
    let well_formed = (in_domain(key), 0_u8..3, any::<bool>()).prop_map(move |(v, style, pad)| {
        let shown = key.display(v);
        let shown = if pad { format!(" {shown}\t") } else { shown };
        (toml_lit(&shown, style), Some(v))
    });
    let toml_integer = prop_oneof![in_domain(key), any::<i64>()].prop_map(move |v| {
        let known = (is_integer(key) && (min..=max).contains(&v)).then_some(v);
        (v.to_string(), known)
    });
    // A TOML date: for a date key it must parse as that day.
    let toml_date = (-719_162_i64..2_932_896).prop_map(move |days| {
        let text = KeyType::Date.display(days);
        (text, (key == KeyType::Date).then_some(days))
    });
    let other_type =
        (select(KEY_TYPES.to_vec()), any::<i64>(), 0_u8..3).prop_map(|(k, v, style)| {
            let (lo, hi) = k.domain();
            (toml_lit(&k.display(v.clamp(lo, hi)), style), None)
        });
    let near_miss = (
        "[+-]?[0-9]{1,10}(-[0-9]{1,3}-[0-9]{1,3}([ T][0-9]{1,3}:[0-9]{1,3}(:[0-9]{1,3}(\\.[0-9]{0,8})?)?([+-][0-9]{1,5}|Z)?)?)?( BC| bc)?",
        0_u8..3,
    )
        .prop_map(|(s, style)| (toml_lit(&s, style), None));
    let random = ("\\PC{0,30}", 0_u8..3).prop_map(|(s, style)| (toml_lit(&s, style), None));
    prop_oneof![
        6 => well_formed,
        2 => toml_integer,
        2 => toml_date,
        1 => datetime().prop_filter_map("valid TOML datetime", |d| {
            toml::from_str::<toml::Table>(&format!("d = {d}")).ok().map(|_| (d, None))
        }),
        1 => other_type,
        2 => near_miss,
        1 => random,
    ]
    .boxed()
}

/// A bound as TOML text, and the value it must parse to when that is known.
type BoundText = (String, Option<i64>);

/// `v` written as a bound of the key's type in one of its forms: a string (maybe
/// padded), a TOML integer (integer keys), a TOML date (date keys, years 1 to 9999).
fn render_bound(key: KeyType, v: i64, form: u8) -> String {
    let shown = key.display(v);
    match form % 5 {
        1 => toml_lit(&format!("  {shown} "), 0),
        2 if is_integer(key) => v.to_string(),
        3 if key == KeyType::Date && shown.len() == 10 && !shown.starts_with('-') => shown,
        style => toml_lit(&shown, style),
    }
}

/// Both bounds: mostly a well-formed ordered pair (wide or narrow), sometimes
/// equal, sometimes each bound on its own.
fn bounds_pair(key: KeyType) -> BoxedStrategy<(BoundText, BoundText)> {
    let (_, max) = key.domain();
    let ordered = (in_domain(key), in_domain(key))
        .prop_filter_map("distinct", |(a, b)| (a != b).then(|| (a.min(b), a.max(b))));
    let narrow =
        (in_domain(key), 1_i64..300).prop_map(move |(a, w)| (a.min(max - w), a.min(max - w) + w));
    let rendered = prop_oneof![3 => ordered, 2 => narrow, 1 => in_domain(key).prop_map(|v| (v, v))];
    prop_oneof![
        6 => (rendered, 0_u8..5, 0_u8..5).prop_map(move |((lo, hi), f, g)| {
            ((render_bound(key, lo, f), Some(lo)), (render_bound(key, hi, g), Some(hi)))
        }),
        3 => (bound(key), bound(key)),
    ]
    .boxed()
}

fn column(name: &str, type_name: &str) -> Column {
    Column {
        name: name.to_string(),
        type_name: type_name.to_string(),
        base_type: type_name.to_string(),
        type_oid: 23,
        element_type: None,
        category: "N".to_string(),
        not_null: false,
        generated: false,
        has_default: false,
        domain_over: None,
    }
}

#[derive(Clone, Debug)]
struct PlanCase {
    key: KeyType,
    text: String,
    columns: Vec<Column>,
    /// The bounds in the job, with the values they must parse to when known.
    bounds: Option<(BoundText, BoundText)>,
    /// Bounds "read from the source" when the job has none (`None`: empty source).
    source_bounds: Option<(i64, i64)>,
    count: u32,
    probes: Vec<i64>,
    boundary_probes: Vec<Index>,
}

fn plan_case() -> BoxedStrategy<PlanCase> {
    select(KEY_TYPES.to_vec())
        .prop_flat_map(|key| {
            let key_name = prop_oneof![
                4 => "[a-z_][a-z0-9_]{0,8}",
                1 => "\\PC{1,12}",
                1 => sel(&["Date", "we\"ird", "a b", "$x", "--", "'q'"]),
            ];
            let others = vec(
                (
                    "[a-z][a-z0-9_]{0,6}",
                    sel(&["text", "numeric", "integer", "date", "jsonb"]),
                ),
                0..4,
            );
            let relation = prop_oneof![
                sel(&["public.t", "t", "\"My Schema\".\"T\"", "Public.Covid_Cases"])
                    .prop_map(|t| (t, None::<String>)),
                sel(&[
                    "SELECT * FROM t",
                    "select a, b from t where x > 0;",
                    "SELECT 1 -- one"
                ])
                .prop_map(|q| (String::new(), Some(q))),
            ];
            let where_clause = option::of(sel(&["x > 0", "x > 0 -- note", "a = '$'", "(b)"]));
            let count = prop_oneof![
                6 => 1_u32..=16,
                3 => 1_u32..=1_000,
                1 => 1_000_u32..=100_000,
                1 => Just(100_000_u32),
            ];
            let (_, max) = key.domain();
            let source_bounds = option::of(prop_oneof![
                (in_domain(key), in_domain(key)).prop_map(|(a, b)| (a.min(b), a.max(b))),
                (in_domain(key), 0_i64..300)
                    .prop_map(move |(a, w)| (a.min(max - w), a.min(max - w) + w)),
            ]);
            (
                Just(key),
                (key_name, pg_type_name(key), others, any::<Index>()),
                (relation, where_clause, any::<bool>(), any::<Index>()),
                option::weighted(0.8, bounds_pair(key)),
                source_bounds,
                count,
                (
                    vec(prop_oneof![in_domain(key), any::<i64>()], 8),
                    vec(any::<Index>(), 6),
                ),
            )
        })
        .prop_map(
            |(
                key,
                (key_name, type_name, others, key_at),
                (relation, where_clause, pick_columns, pick),
                bounds,
                source_bounds,
                count,
                (probes, boundary_probes),
            )| {
                let mut names = BTreeSet::new();
                names.insert(key_name.clone());
                let mut columns: Vec<Column> = others
                    .into_iter()
                    .filter(|(n, _)| names.insert(n.clone()))
                    .map(|(n, t)| column(&n, t.as_str()))
                    .collect();
                let at = key_at.index(columns.len() + 1);
                columns.insert(at, column(&key_name, &type_name));
                let (table, query) = relation;
                let mut text = String::from(
                    "[source]\nurl = \"postgres://stride:pw_Planner000000@127.0.0.1:1/src\"\n",
                );
                match &query {
                    Some(q) => text.push_str(&format!("query = {}\n", toml_lit(q, 0))),
                    None => text.push_str(&format!("table = {}\n", toml_lit(&table, 1))),
                }
                if pick_columns {
                    // A non-empty selection of the columns, in the catalogue's order.
                    let first = pick.index(columns.len());
                    let chosen: Vec<String> = columns
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i == first || (i * 7 + first) % 3 == 0)
                        .map(|(_, c)| toml_lit(&c.name, 0))
                        .collect();
                    text.push_str(&format!("columns = [{}]\n", chosen.join(", ")));
                }
                if let Some(w) = &where_clause {
                    text.push_str(&format!("where = {}\n", toml_lit(w, 0)));
                }
                text.push_str(&format!(
                    "[partition]\ncolumn = {}\ncount = {count}\n",
                    toml_lit(&key_name, 0)
                ));
                if let Some(((lower, _), (upper, _))) = &bounds {
                    text.push_str(&format!("lower_bound = {lower}\nupper_bound = {upper}\n"));
                }
                text.push_str("[target]\nurl = \"postgres://127.0.0.1:1/dst\"\n");
                if query.is_some() {
                    text.push_str("table = \"public.copied\"\n");
                }
                PlanCase {
                    key,
                    text,
                    columns,
                    bounds,
                    source_bounds,
                    count,
                    probes,
                    boundary_probes,
                }
            },
        )
        .boxed()
}

/// A typed literal `'text'::name` at the start of `s`, parsed back as the key's
/// type; returns the value and what follows.
fn take_literal(s: &str, key: KeyType) -> Result<(i64, &str), String> {
    let body = s
        .strip_prefix('\'')
        .ok_or_else(|| format!("no literal at {s:?}"))?;
    let end = body
        .find('\'')
        .ok_or_else(|| format!("unterminated literal {s:?}"))?;
    let rest = body[end + 1..]
        .strip_prefix("::")
        .and_then(|r| r.strip_prefix(key.sql_name()))
        .ok_or_else(|| format!("literal without ::{} in {s:?}", key.sql_name()))?;
    let value = key.parse_bound(&body[..end])?;
    Ok((value, rest))
}

/// A partition's predicate as SQL would evaluate it: `lower <= c`, `c < upper`,
/// and whether `c IS NULL` is accepted.
#[derive(Debug, PartialEq, Eq)]
struct Predicate {
    lower: Option<i64>,
    upper: Option<i64>,
    null: bool,
}

impl Predicate {
    /// SQL's three-valued logic: a comparison with NULL is not true.
    fn eval(&self, value: Option<i64>) -> bool {
        match value {
            None => self.null,
            Some(v) => self.lower.is_none_or(|l| v >= l) && self.upper.is_none_or(|u| v < u),
        }
    }
}

/// Reads back the predicate text `plan` wrote (`None` for no predicate).
fn parse_predicate(text: Option<&str>, column: &str, key: KeyType) -> Result<Predicate, String> {
    let Some(text) = text else {
        return Ok(Predicate {
            lower: None,
            upper: None,
            null: true,
        });
    };
    let c = quote_ident(column);
    if let Some(rest) = text.strip_prefix(&format!("({c} < ")) {
        let (upper, rest) = take_literal(rest, key)?;
        if rest != format!(" OR {c} IS NULL)") {
            return Err(format!("first predicate {text:?}"));
        }
        return Ok(Predicate {
            lower: None,
            upper: Some(upper),
            null: true,
        });
    }
    if let Some(rest) = text.strip_prefix(&format!("({c} >= ")) {
        let (lower, rest) = take_literal(rest, key)?;
        let rest = rest
            .strip_prefix(&format!(" AND {c} < "))
            .ok_or_else(|| format!("middle predicate {text:?}"))?;
        let (upper, rest) = take_literal(rest, key)?;
        if rest != ")" {
            return Err(format!("middle predicate {text:?}"));
        }
        return Ok(Predicate {
            lower: Some(lower),
            upper: Some(upper),
            null: false,
        });
    }
    if let Some(rest) = text.strip_prefix(&format!("{c} >= ")) {
        let (lower, rest) = take_literal(rest, key)?;
        if !rest.is_empty() {
            return Err(format!("last predicate {text:?}"));
        }
        return Ok(Predicate {
            lower: Some(lower),
            upper: None,
            null: false,
        });
    }
    Err(format!("unknown predicate {text:?}"))
}

/// The plan keeps the partition contract: 1 to `count` partitions (exactly
/// `min(count, upper - lower)` for bounds with `lower < upper`), contiguous,
/// widths within one unit, and every probe and NULL in exactly one partition, by
/// the predicate text (evaluated here) and by `KeyRange::contains` alike.
fn check_plan(
    job: &Job,
    columns: &[Column],
    key: &Key,
    bounds: Option<Bounds>,
    case: &PlanCase,
) -> Result<(), String> {
    let copied = plan::resolve_columns(job, columns).map_err(|e| e.to_string())?;
    let p = plan::build(job, &copied, Some(key.clone()), bounds.clone());
    let n = p.partitions.len();
    if n < 1 || n > case.count as usize || p.requested_partitions != case.count {
        return Err(format!("{n} partitions for count {}", case.count));
    }
    let ranges: Vec<&KeyRange> = p.partitions.iter().map(|part| &part.range).collect();
    if ranges[0].lower.is_some() || ranges[n - 1].upper.is_some() {
        return Err(format!("open ends: {:?} .. {:?}", ranges[0], ranges[n - 1]));
    }
    for (i, part) in p.partitions.iter().enumerate() {
        if part.index != i {
            return Err(format!("partition {i} has index {}", part.index));
        }
        if i + 1 < n && (part.range.upper.is_none() || part.range.upper != ranges[i + 1].lower) {
            return Err(format!("ranges {i} and {} do not meet", i + 1));
        }
    }
    match &bounds {
        Some(b) if b.lower < b.upper => {
            let width = i128::from(b.upper) - i128::from(b.lower);
            if n as i128 != width.min(i128::from(case.count)) {
                return Err(format!(
                    "{n} partitions for width {width} and count {}",
                    case.count
                ));
            }
            // Inner boundaries strictly inside (lower, upper); widths within one.
            let mut edges = vec![i128::from(b.lower)];
            edges.extend(ranges.iter().skip(1).map(|r| i128::from(r.lower.unwrap())));
            edges.push(i128::from(b.upper));
            let widths: Vec<i128> = edges.windows(2).map(|w| w[1] - w[0]).collect();
            let (lo, hi) = (widths.iter().min().unwrap(), widths.iter().max().unwrap());
            if *lo < 1 || hi - lo > 1 {
                return Err(format!("widths from {lo} to {hi}"));
            }
        }
        _ => {
            if n != 1 {
                return Err(format!("{n} partitions without a usable range"));
            }
        }
    }
    // The predicates, read back from each partition's query.
    let prefix = format!(
        "SELECT {} FROM {}",
        copied
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", "),
        plan::source_from(&job.source.relation)
    );
    let user = job.source.where_clause.as_deref().map(|w| {
        if w.contains("--") {
            format!(" WHERE ({w}\n)")
        } else {
            format!(" WHERE ({w})")
        }
    });
    let mut predicates = Vec::with_capacity(n);
    for part in &p.partitions {
        let rest = part
            .select
            .strip_prefix(&prefix)
            .ok_or_else(|| format!("query {:?} does not start with {prefix:?}", part.select))?;
        let text = match (&user, rest) {
            (None, "") => None,
            (None, r) => Some(
                r.strip_prefix(" WHERE ")
                    .ok_or_else(|| format!("no WHERE in {r:?}"))?,
            ),
            (Some(u), r) if r == u => None,
            (Some(u), r) => Some(
                r.strip_prefix(u.as_str())
                    .and_then(|r| r.strip_prefix(" AND "))
                    .ok_or_else(|| format!("no user condition in {r:?}"))?,
            ),
        };
        let predicate = parse_predicate(text, &key.column, key.key_type)?;
        let expected = Predicate {
            lower: part.range.lower,
            upper: part.range.upper,
            null: part.range.lower.is_none(),
        };
        if predicate != expected {
            return Err(format!(
                "predicate {text:?} reads as {predicate:?}, the range is {:?}",
                part.range
            ));
        }
        let _ = part.range.describe(key.key_type);
        predicates.push(predicate);
    }
    // Probes: random values, the bounds, domain ends, and boundaries with their
    // neighbours.
    let (min, max) = key.key_type.domain();
    let mut values: Vec<i64> = vec![min, max, i64::MIN, i64::MAX];
    values.extend(&case.probes);
    let mut around = |v: i64| {
        values.push(v);
        values.extend(v.checked_sub(1));
        values.extend(v.checked_add(1));
    };
    if let Some(b) = &bounds {
        around(b.lower);
        around(b.upper);
    }
    for index in &case.boundary_probes {
        if let Some(b) = ranges[index.index(n)].lower {
            around(b);
        }
    }
    for probe in values.into_iter().map(Some).chain([None]) {
        let by_sql: Vec<usize> = (0..n).filter(|&i| predicates[i].eval(probe)).collect();
        let by_range: Vec<usize> = (0..n).filter(|&i| ranges[i].contains(probe)).collect();
        if by_sql.len() != 1 || by_sql != by_range {
            return Err(format!(
                "{probe:?} is in partitions {by_sql:?} by the SQL and {by_range:?} by KeyRange::contains"
            ));
        }
    }
    Ok(())
}

/// Whether the plan has at most 2,000 partitions: `plan::build` makes 100,000 in
/// about a second in a debug build, too slow to do often here. Large counts are
/// still planned, with ranges narrower than the count (and the partition module's
/// own tests split `i64::MIN..i64::MAX` into 65,537).
fn checkable(bounds: Option<&Bounds>, count: u32) -> bool {
    bounds.is_none_or(|b| {
        let width = i128::from(b.upper) - i128::from(b.lower);
        width.min(i128::from(count)) <= 2_000
    })
}

proptest! {
    #![proptest_config(config(256))]

    /// For any key type and bound text: the bounds fail naming a bound, or the
    /// plan keeps the partition contract. Jobs without bounds are planned with
    /// bounds as the source's min/max would give them (or none: an empty source).
    #[test]
    fn props_planner_keeps_the_partition_contract(case in plan_case()) {
        let job = Job::parse(&case.text, |_| None);
        prop_assert!(job.is_ok(), "the generated job is valid: {:?}\n{}", job.err(), case.text);
        let job = job.unwrap();
        let key = plan::resolve_key(&job, &case.columns);
        prop_assert!(matches!(&key, Ok(Some(k)) if k.key_type == case.key), "{:?}", key);
        let key = key.unwrap().unwrap();
        match plan::parse_bounds(&job, &key) {
            Ok(Some(b)) => {
                let ((_, lower), (_, upper)) = case.bounds.clone().expect("bounds in the job");
                let (min, max) = case.key.domain();
                prop_assert!(b.lower < b.upper && b.lower >= min && b.upper <= max, "{:?}", b);
                prop_assert_eq!(b.origin, BoundsOrigin::Job);
                if let Some(v) = lower {
                    prop_assert_eq!(b.lower, v);
                }
                if let Some(v) = upper {
                    prop_assert_eq!(b.upper, v);
                }
                prop_assume!(checkable(Some(&b), case.count), "too many partitions to check here");
                let verdict = check_plan(&job, &case.columns, &key, Some(b), &case);
                prop_assert!(verdict.is_ok(), "{:?}", verdict);
            }
            Ok(None) => {
                prop_assert!(case.bounds.is_none(), "bounds in the job were ignored");
                let bounds = case.source_bounds.map(|(lower, upper)| Bounds { lower, upper, origin: BoundsOrigin::Source });
                prop_assume!(checkable(bounds.as_ref(), case.count), "too many partitions to check here");
                let verdict = check_plan(&job, &case.columns, &key, bounds, &case);
                prop_assert!(verdict.is_ok(), "{:?}", verdict);
            }
            Err(e) => {
                let message = e.to_string();
                prop_assert!(
                    message.starts_with("partition.lower_bound") || message.starts_with("partition.upper_bound"),
                    "{}", message
                );
                // Two well-formed values fail only when they are not in order.
                if let Some(((_, Some(lower)), (_, Some(upper)))) = case.bounds {
                    prop_assert!(lower >= upper, "{} < {} rejected: {}", lower, upper, message);
                    prop_assert!(message.starts_with("partition.lower_bound"), "{}", message);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// 3. The command line: bad job files exit 2 before connecting.

/// The password in the CLI cases' URLs.
const CLI_PASSWORD: &str = "pw_CliSecret0000";

/// Runs the binary with a time limit (a connection attempt that hangs fails the
/// case instead of the whole run).
fn run_stride(args: &[&str], set: &[(&str, &str)], unset: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stride"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in unset {
        cmd.env_remove(name);
    }
    for (k, v) in set {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("the stride binary runs");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(output) => output.expect("waiting for stride"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("stride {args:?} ran for more than 20 s");
        }
    }
}

/// A valid job, kept as sections of lines so that a case can break it.
#[derive(Clone, Debug)]
struct CliJob {
    source: Vec<(String, String)>,
    partition: Option<Vec<(String, String)>>,
    target: Vec<(String, String)>,
    run: Vec<(String, String)>,
    top: Vec<(String, String)>,
}

impl CliJob {
    fn render(&self) -> String {
        let lines = |entries: &[(String, String)]| {
            entries
                .iter()
                .map(|(k, v)| format!("{k} = {v}\n"))
                .collect::<String>()
        };
        let mut text = lines(&self.top);
        text.push_str(&format!("[source]\n{}", lines(&self.source)));
        if let Some(p) = &self.partition {
            text.push_str(&format!("[partition]\n{}", lines(p)));
        }
        text.push_str(&format!("[target]\n{}", lines(&self.target)));
        if !self.run.is_empty() {
            text.push_str(&format!("[run]\n{}", lines(&self.run)));
        }
        text
    }

    fn section(&mut self, name: &str) -> &mut Vec<(String, String)> {
        match name {
            "source" => &mut self.source,
            "partition" => self
                .partition
                .get_or_insert_with(|| vec![("column".into(), "\"id\"".into())]),
            "target" => &mut self.target,
            "run" => &mut self.run,
            _ => &mut self.top,
        }
    }

    /// Sets `key` in `section`, replacing its value if it is there.
    fn set(&mut self, section: &str, key: &str, value: &str) {
        let entries = self.section(section);
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_string(),
            None => entries.push((key.to_string(), value.to_string())),
        }
    }

    fn remove(&mut self, section: &str, key: &str) {
        self.section(section).retain(|(k, _)| k != key);
    }
}

fn cli_job() -> BoxedStrategy<CliJob> {
    let source_url = prop_oneof![
        Just(format!(
            "\"postgres://stride:{CLI_PASSWORD}@127.0.0.1:1/src\""
        )),
        Just("\"${STRIDE_PROPS_SOURCE_URL}\"".to_string()),
        Just(format!(
            "'postgresql://stride:{CLI_PASSWORD}@127.0.0.1:1/src?sslmode=disable'"
        )),
    ];
    let relation = prop_oneof![
        sel(&["public.t", "t", "\"My Schema\".\"T\""]).prop_map(|t| (Some(t), None::<String>)),
        Just((None, Some("SELECT 1 AS id".to_string()))),
    ];
    let partition = option::of((1_u32..=64, option::of((-1_000_i64..0, 1_i64..1_000))));
    let target_extra = vec(
        select(vec![
            ("mode", "\"truncate\""),
            ("create", "\"never\""),
            ("method", "\"insert\""),
            ("batch_size", "500"),
        ]),
        0..3,
    );
    let run = option::of(1_u32..=8);
    (source_url, relation, partition, target_extra, run)
        .prop_map(|(url, (table, query), partition, target_extra, run)| {
            let mut source = vec![("url".to_string(), url)];
            if let Some(t) = table {
                source.push(("table".into(), toml_lit(&t, 1)));
            }
            let mut target = vec![(
                "url".to_string(),
                format!("\"postgres://stride:{CLI_PASSWORD}@127.0.0.1:1/dst\""),
            )];
            if let Some(q) = query {
                source.push(("query".into(), toml_lit(&q, 0)));
                target.push(("table".into(), "\"public.copied\"".into()));
            }
            let mut seen = BTreeSet::new();
            for (k, v) in target_extra {
                if seen.insert(k) {
                    target.push((k.to_string(), v.to_string()));
                }
            }
            let partition = partition.map(|(count, bounds)| {
                let mut p = vec![
                    ("column".to_string(), "\"id\"".to_string()),
                    ("count".into(), count.to_string()),
                ];
                if let Some((lower, upper)) = bounds {
                    p.push(("lower_bound".into(), lower.to_string()));
                    p.push(("upper_bound".into(), format!("\"{upper}\"")));
                }
                p
            });
            let run = run
                .map(|p| vec![("parallelism".to_string(), p.to_string())])
                .unwrap_or_default();
            CliJob {
                source,
                partition,
                target,
                run,
                top: Vec::new(),
            }
        })
        .boxed()
}

/// One way to make a job bad.
#[derive(Clone, Debug)]
enum Bad {
    UnknownKey {
        section: &'static str,
        key: &'static str,
    },
    WrongType {
        section: &'static str,
        key: &'static str,
        value: &'static str,
    },
    BothTableAndQuery,
    NeitherTableNorQuery,
    OneBound {
        lower: bool,
    },
    Count(String),
    UnsetVariable {
        name: String,
        section: &'static str,
        key: &'static str,
    },
    NotAVariable {
        text: &'static str,
        section: &'static str,
        key: &'static str,
    },
    Unterminated {
        section: &'static str,
        key: &'static str,
    },
    /// Of the right type, but a value the job's rules refuse.
    Invalid {
        section: &'static str,
        key: &'static str,
        value: &'static str,
        expect: &'static str,
    },
}

fn bad() -> BoxedStrategy<Bad> {
    let place = select(vec![
        ("source", "table"),
        ("source", "where"),
        ("source", "url"),
        ("target", "url"),
        ("target", "table"),
        ("partition", "column"),
    ]);
    prop_oneof![
        (
            select(vec!["source", "partition", "target", "run", "top"]),
            select(vec![
                "cuont",
                "tabel",
                "ulr",
                "retry",
                "colums",
                "lowerbound",
                "paralelism"
            ]),
        )
            .prop_map(|(section, key)| Bad::UnknownKey { section, key }),
        select(vec![
            ("partition", "count", "\"four\""),
            ("partition", "count", "1.5"),
            ("partition", "count", "true"),
            ("target", "batch_size", "\"500\""),
            ("target", "mode", "5"),
            ("target", "mode", "\"merge\""),
            ("target", "create", "\"sometimes\""),
            ("target", "method", "[\"copy\"]"),
            ("source", "url", "5"),
            ("source", "columns", "\"a\""),
            ("source", "columns", "[1, 2]"),
            ("run", "parallelism", "\"2\""),
            ("partition", "column", "[1]"),
            ("partition", "lower_bound", "1.5"),
        ])
        .prop_map(|(section, key, value)| Bad::WrongType {
            section,
            key,
            value
        }),
        Just(Bad::BothTableAndQuery),
        Just(Bad::NeitherTableNorQuery),
        any::<bool>().prop_map(|lower| Bad::OneBound { lower }),
        prop_oneof![
            Just("0".to_string()),
            (i64::MIN..0).prop_map(|c| c.to_string()),
            (100_001_i64..=i64::MAX).prop_map(|c| c.to_string()),
            Just(i64::MAX.to_string()),
            Just("9223372036854775808".to_string()),
            Just("100000000000000000000000000000".to_string()),
        ]
        .prop_map(Bad::Count),
        ("[A-Z]{6}", place.clone()).prop_map(|(suffix, (section, key))| Bad::UnsetVariable {
            name: format!("STRIDE_PROPS_UNSET_{suffix}"),
            section,
            key
        }),
        (
            select(vec!["${1X}", "${A B}", "${}", "${:-x}", "${A-B}"]),
            place.clone()
        )
            .prop_map(|(text, (section, key))| Bad::NotAVariable { text, section, key }),
        place.prop_map(|(section, key)| Bad::Unterminated { section, key }),
        select(vec![
            (
                "source",
                "url",
                "\"mysql://u:pw_CliSecret0000@127.0.0.1:1/d?ssl-mode=maybe\"",
                "source.url: ssl-mode=maybe is not one of"
            ),
            (
                "target",
                "url",
                "\"postgres://u:pw_CliSecret0000@127.0.0.1:1/d?sslpassword=pw_CliSecret0000\"",
                "target.url: parameter \"sslpassword\" is not supported"
            ),
            (
                "target",
                "url",
                "\"postgres://u:pw_CliSecret0000@127.0.0.1:99999/d\"",
                "target.url: not a valid URL"
            ),
            (
                "run",
                "parallelism",
                "0",
                "run.parallelism: 0 is out of range"
            ),
            (
                "target",
                "batch_size",
                "0",
                "target.batch_size: 0 is out of range"
            ),
            (
                "target",
                "batch_size",
                "1000001",
                "target.batch_size: 1000001 is out of range"
            ),
            ("source", "columns", "[]", "source.columns: is empty"),
            (
                "source",
                "columns",
                "[\"a\", \"a\"]",
                "source.columns: \"a\" is listed twice"
            ),
            ("source", "table", "\"a.b.c\"", "source.table: "),
            ("source", "where", "\"  \"", "source.where: is empty"),
            ("partition", "column", "\"\"", "partition.column: is empty"),
        ])
        .prop_map(|(section, key, value, expect)| Bad::Invalid {
            section,
            key,
            value,
            expect
        }),
    ]
    .boxed()
}

/// The job made bad, and a piece of text its error must contain.
fn apply(mut job: CliJob, bad: &Bad) -> (String, String) {
    let expect = match bad {
        Bad::UnknownKey { section, key } => {
            job.section(section)
                .push((key.to_string(), "1".to_string()));
            format!("unknown field `{key}`")
        }
        Bad::WrongType {
            section,
            key,
            value,
        } => {
            job.set(section, key, value);
            if *key == "lower_bound" {
                job.set(section, "upper_bound", "10");
            }
            format!("{section}.{key}")
        }
        Bad::BothTableAndQuery => {
            job.set("source", "table", "\"t\"");
            job.set("source", "query", "\"SELECT 1\"");
            job.set("target", "table", "\"t\"");
            "source: both `table` and `query` are set".to_string()
        }
        Bad::NeitherTableNorQuery => {
            job.remove("source", "table");
            job.remove("source", "query");
            "source: neither `table` nor `query` is set".to_string()
        }
        Bad::OneBound { lower } => {
            job.remove("partition", "lower_bound");
            job.remove("partition", "upper_bound");
            if *lower {
                job.set("partition", "lower_bound", "1");
                "partition.upper_bound: missing".to_string()
            } else {
                job.set("partition", "upper_bound", "\"2021-01-01\"");
                "partition.lower_bound: missing".to_string()
            }
        }
        Bad::Count(count) => {
            job.set("partition", "count", count);
            match count.parse::<i64>() {
                Ok(c) => format!("partition.count: {c} is out of range"),
                // Beyond i64: TOML's own error, at the line of the number.
                Err(_) => "number too large".to_string(),
            }
        }
        Bad::UnsetVariable { name, section, key } => {
            job.set(section, key, &format!("\"${{{name}}}\""));
            format!("environment variable {name} is not set")
        }
        Bad::NotAVariable { text, section, key } => {
            job.set(section, key, &format!("\"{text}\""));
            "holds no variable name".to_string()
        }
        Bad::Invalid {
            section,
            key,
            value,
            expect,
        } => {
            job.set(section, key, value);
            if *key == "table" {
                job.remove("source", "query");
            }
            expect.to_string()
        }
        Bad::Unterminated { section, key } => {
            // A `}` later in the file would close it: see the regression test
            // `props_regression_stray_dollar_brace_shows_a_later_password`.
            job.set(section, key, "\"${STRIDE_PROPS_X\"");
            "unterminated ${".to_string()
        }
    };
    (job.render(), expect)
}

proptest! {
    #![proptest_config(config(32))]

    /// `stride plan` on a bad job: exit 2, the error on stderr naming the file and
    /// what is wrong, nothing on stdout, no panic, no password.
    #[test]
    fn props_cli_bad_jobs_exit_2(job in cli_job(), bad in bad()) {
        let (mut text, expect) = apply(job, &bad);
        if let Bad::Unterminated { .. } = bad {
            // Keep the case about the unterminated reference alone.
            text = text.replace("${STRIDE_PROPS_SOURCE_URL}", "postgres://stride@127.0.0.1:1/src");
        }
        let file = job_file(&text);
        let path = file.path.to_str().unwrap();
        let unset: Vec<&str> = match &bad {
            Bad::UnsetVariable { name, .. } => vec![name.as_str(), "STRIDE_PROPS_X"],
            _ => vec!["STRIDE_PROPS_X"],
        };
        let output = run_stride(
            &["plan", path],
            &[("STRIDE_PROPS_SOURCE_URL", &format!("postgres://stride:{CLI_PASSWORD}@127.0.0.1:1/src"))],
            &unset,
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let shown = format!("exit {:?}\n--- job\n{text}--- stdout\n{stdout}--- stderr\n{stderr}", output.status.code());
        prop_assert_eq!(output.status.code(), Some(2), "{}", shown);
        prop_assert!(!stderr.contains("panicked"), "{}", shown);
        prop_assert!(stdout.is_empty(), "{}", shown);
        prop_assert!(!stderr.contains(CLI_PASSWORD) && !stdout.contains(CLI_PASSWORD), "{}", shown);
        let prefix = format!("error: {path}: ");
        let message = stderr.split_once(prefix.as_str()).map(|(_, m)| m.trim_end());
        prop_assert!(message.is_some(), "no `{}` in stderr\n{}", prefix, shown);
        let message = message.unwrap();
        prop_assert!(message.contains(&expect), "expected {:?}\n{}", expect, shown);
        let verdict = check_message(message, &text, &BTreeMap::new());
        prop_assert!(verdict.is_ok(), "{:?}\n{}", verdict, shown);
    }
}

// ---------------------------------------------------------------------------------
// Regression cases found by the properties above.

/// A job whose `${` is never closed on its own line: interpolation reads up to the
/// next `}` anywhere in the file and echoes all of it, here the target's password.
const STRAY_DOLLAR_BRACE: &str = "[source]
url = \"${SOURCE_URL\"
table = \"t\"
[target]
url = \"postgres://stride:pw_LeakedSecret@127.0.0.1:1/dst\"
[run]
parallelism = ${PARALLELISM:-2}
";

/// Found by `props_parse_never_shows_passwords`.
#[test]
fn props_regression_stray_dollar_brace_shows_a_later_password() {
    let message = Job::parse(STRAY_DOLLAR_BRACE, |_| None)
        .unwrap_err()
        .to_string();
    assert!(message.starts_with("line 2: "), "{message}");
    assert!(
        !message.contains("pw_LeakedSecret"),
        "the password is shown: {message:?}"
    );
}

/// The same through the binary: the password reaches stderr.
#[test]
fn props_regression_stray_dollar_brace_cli() {
    let file = job_file(STRAY_DOLLAR_BRACE);
    let output = run_stride(
        &["plan", file.path.to_str().unwrap()],
        &[],
        &["SOURCE_URL", "PARALLELISM"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        !stderr.contains("pw_LeakedSecret"),
        "the password is shown: {stderr}"
    );
}

/// A URL without `//` after the scheme: `url::Url` reads it as a path, so the job
/// accepts it, `DbUrl` finds no password to hide, and the driver reads the rest as
/// a database name on the local socket. Found by `props_parse_never_shows_passwords`
/// (in the parsed job's `Debug`).
const URL_WITHOUT_SLASHES: &str = "[source]
url = \"postgres:alice:pw_NoSlashes123@127.0.0.1:1/src\"
table = \"t\"
[target]
url = \"postgres://127.0.0.1:1/dst\"
[run]
retries = 0
";

#[test]
fn props_regression_url_without_slashes() {
    let shown = match Job::parse(URL_WITHOUT_SLASHES, |_| None) {
        Err(e) => e.to_string(),
        Ok(job) => format!("{} {:?} {job:?}", job.source.url, job.source.url),
    };
    assert!(
        !shown.contains("pw_NoSlashes123"),
        "the password is shown: {shown}"
    );
}

/// The same through the binary: exit 1 after a connection attempt, the password
/// twice on stderr (in the place and in the server's "database ... does not exist").
#[test]
fn props_regression_url_without_slashes_cli() {
    let file = job_file(URL_WITHOUT_SLASHES);
    let output = run_stride(&["plan", file.path.to_str().unwrap()], &[], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("pw_NoSlashes123"),
        "the password is shown: {stderr}"
    );
    assert_eq!(output.status.code(), Some(2), "{stderr}");
}
