//! Every conversion stride accepts gives the value PostgreSQL's assignment cast
//! gives, with either method, or fails the row; the conversions it refuses are
//! refused by name before anything is written (issue 12: "the same value must
//! not depend on the method").

use crate::common::*;

/// Every accepted (source type, target type) pair, with values the pair
/// converts: the extremes of the source type, the values where the text form and
/// the cast part ways, and (in every column) NULL. The reference is the server's
/// own assignment cast: `INSERT INTO reference SELECT * FROM source`.
const ACCEPTED: &[(&str, &str, &[&str])] = &[
    ("smallint", "integer", &["-32768", "32767", "0"]),
    ("smallint", "bigint", &["-32768", "32767"]),
    ("smallint", "numeric", &["-32768", "32767"]),
    ("smallint", "real", &["-32768", "32767"]),
    ("smallint", "double precision", &["-32768", "32767"]),
    ("integer", "smallint", &["-32768", "32767", "0"]),
    ("integer", "bigint", &["-2147483648", "2147483647"]),
    ("integer", "numeric", &["-2147483648", "2147483647"]),
    (
        "integer",
        "real",
        &["-2147483648", "2147483647", "16777217"],
    ),
    (
        "integer",
        "double precision",
        &["-2147483648", "2147483647"],
    ),
    ("integer", "money", &["-2147483648", "2147483647"]),
    ("bigint", "smallint", &["-32768", "32767"]),
    ("bigint", "integer", &["-2147483648", "2147483647"]),
    (
        "bigint",
        "numeric",
        &["-9223372036854775808", "9223372036854775807"],
    ),
    (
        "bigint",
        "real",
        &[
            "-9223372036854775808",
            "9223372036854775807",
            "9007199254740993",
        ],
    ),
    (
        "bigint",
        "double precision",
        &[
            "-9223372036854775808",
            "9223372036854775807",
            "9007199254740993",
        ],
    ),
    (
        "bigint",
        "money",
        &["-92233720368547758", "92233720368547758"],
    ),
    (
        "numeric",
        "smallint",
        &["-32768", "32767.000", "5.00", "-0.0"],
    ),
    (
        "numeric",
        "integer",
        &["-2147483648", "2147483647.000", "5.00"],
    ),
    (
        "numeric",
        "bigint",
        &[
            "-9223372036854775808",
            "9223372036854775807",
            "1e18",
            "-7.0",
        ],
    ),
    (
        "numeric",
        "real",
        &["0.1", "3.4e38", "123456789.123456789", "NaN", "Infinity"],
    ),
    (
        "numeric",
        "double precision",
        &[
            "0.1",
            "123456789012345678901234567890.123",
            "1e-300",
            "NaN",
            "-Infinity",
        ],
    ),
    (
        "numeric",
        "money",
        &["1.005", "-2.5", "92233720368547758.07"],
    ),
    ("real", "smallint", &["-32768", "32767", "-0"]),
    ("real", "integer", &["1e6", "16777216", "-2147483648"]),
    ("real", "bigint", &["1e18", "-9.223372e18", "16777217"]),
    (
        "real",
        "double precision",
        &["0.1", "3.4028235e38", "1e-45", "NaN", "-Infinity", "-0"],
    ),
    ("double precision", "smallint", &["-32768", "32767"]),
    (
        "double precision",
        "integer",
        &["-2147483648", "2147483647", "1e9"],
    ),
    (
        "double precision",
        "bigint",
        &["1e15", "9007199254740993", "-9223372036854775808", "1e18"],
    ),
    (
        "double precision",
        "real",
        &[
            "0.1",
            "3.4028234663852886e+38",
            "1e-38",
            "NaN",
            "Infinity",
            "-0",
            "0.30000000000000004",
        ],
    ),
    (
        "money",
        "numeric",
        &["12.34", "-92233720368547758.08", "92233720368547758.07"],
    ),
    (
        "date",
        "timestamp",
        &[
            "2021-03-01",
            "infinity",
            "-infinity",
            "4713-01-01 BC",
            "294276-12-31",
        ],
    ),
    (
        "date",
        "timestamptz",
        &["2021-03-01", "infinity", "4713-01-01 BC", "294276-12-31"],
    ),
    (
        "timestamp",
        "timestamptz",
        &[
            "2021-03-01 10:00:00.5",
            "4713-01-01 00:00:00 BC",
            "294276-12-31 23:59:59.999999",
            "infinity",
        ],
    ),
    (
        "timestamp",
        "date",
        &[
            "2021-03-01 23:59:59.999999",
            "0044-03-15 12:00:00 BC",
            "-infinity",
        ],
    ),
    (
        "timestamp",
        "time",
        &["2021-03-01 10:00:00.5", "0044-03-15 23:59:59.999999 BC"],
    ),
    (
        "timestamptz",
        "timestamp",
        &[
            "2021-03-01 23:30:00-05",
            "-infinity",
            "4713-01-01 00:00:00+00 BC",
        ],
    ),
    (
        "timestamptz",
        "date",
        &[
            "2021-03-01 23:30:00-05",
            "2021-03-01 00:30:00+05",
            "infinity",
            "0044-03-15 12:00:00+00 BC",
        ],
    ),
    (
        "timestamptz",
        "time",
        &[
            "2021-03-01 23:30:00.25-05",
            "294276-12-31 23:59:59.999999+00",
        ],
    ),
    ("timestamptz", "timetz", &["2021-03-01 23:30:00-05"]),
    (
        "time",
        "interval",
        &["00:00:00", "23:59:59.999999", "24:00:00"],
    ),
    ("time", "timetz", &["10:00:00.5", "24:00:00"]),
    (
        "timetz",
        "time",
        &["10:00:00+05", "24:00:00-15:59", "00:00:00+15:59"],
    ),
    (
        "cidr",
        "inet",
        &["10.0.0.0/8", "192.168.1.5/32", "::/0", "2001:db8::/32"],
    ),
    (
        "inet",
        "cidr",
        &["192.168.1.5", "10.0.0.0/8", "::1", "2001:db8::/32"],
    ),
    ("bit(3)", "bit varying", &["101", "000"]),
    ("bit varying", "bit(3)", &["101"]),
    ("macaddr", "macaddr8", &["08:00:2b:01:02:03"]),
    (
        "json",
        "jsonb",
        &[r#"{"b":1, "a":2, "a":3}"#, "[1, 2.50, \"x\"]", "null"],
    ),
    ("jsonb", "json", &[r#"{"b":1,"a":2}"#]),
    (
        "integer[]",
        "bigint[]",
        &["{1,NULL,-2147483648}", "{{1,2},{3,4}}", "{}"],
    ),
    (
        "real[]",
        "double precision[]",
        &["{0.1,NaN,-0,3.4028235e38}"],
    ),
    ("bigint[]", "integer[]", &["{1,-2147483648}"]),
    ("numeric[]", "integer[]", &["{1,-2}"]),
    // Into string types, the cast into them is the reference, not the source's
    // text form: true, not t; an inet's /32; char(n) without its padding.
    ("boolean", "text", &["true", "false"]),
    ("boolean", "character varying", &["true"]),
    ("boolean", "character(5)", &["false"]),
    ("boolean", "name", &["true"]),
    ("inet", "text", &["192.168.1.5", "::1", "10.0.0.0/8"]),
    ("inet", "character varying(40)", &["192.168.1.5"]),
    ("inet", "name", &["192.168.1.5"]),
    ("cidr", "text", &["192.168.1.5/32"]),
    ("character(5)", "text", &["ab", " ", "abcde"]),
    ("character(5)", "character varying", &["ab"]),
    ("character(5)", "name", &["ab"]),
    ("character(5)", "character(8)", &["ab"]),
    ("character varying(10)", "character(3)", &["ab  ", "abc   "]),
    ("text", "name", &["ab  ", "héllo"]),
    ("name", "text", &["abc"]),
    ("integer", "text", &["-2147483648"]),
    ("double precision", "text", &["0.1", "NaN", "1e300", "-0"]),
    (
        "double precision",
        "character varying",
        &["0.30000000000000004"],
    ),
    ("numeric", "text", &["1.50", "NaN"]),
    ("money", "text", &["-12.34"]),
    ("date", "text", &["2021-03-01", "infinity", "4713-01-01 BC"]),
    ("timestamptz", "text", &["2021-03-01 23:30:00.5-05"]),
    ("timetz", "character varying", &["10:00:00+05"]),
    (
        "interval",
        "text",
        &["1 day 02:00:00", "-178000000 years", "1 mon -1 days"],
    ),
    ("bytea", "text", &["\\x00ff"]),
    ("json", "text", &[r#"{"b":1,  "a":2}"#]),
    ("jsonb", "character varying", &[r#"{"b":1,  "a":2}"#]),
    ("uuid", "text", &["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
    ("bit(3)", "text", &["101"]),
    ("boolean[]", "text", &["{t,f,NULL}"]),
    ("boolean[]", "text[]", &["{t,f,NULL}"]),
    ("character(3)[]", "text[]", &["{\"a  \",b}"]),
    ("integer[]", "character varying[]", &["{1,NULL}"]),
];

/// `value` as a quoted SQL literal.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `CREATE TABLE public.conv (id integer, c0 type0, c1 type1, ...)` with the
/// source's (`side` 0) or the target's (1) types.
fn conv_table(table: &str, target_side: bool) -> String {
    let columns: Vec<String> = ACCEPTED
        .iter()
        .enumerate()
        .map(|(i, (from, to, _))| format!("c{i} {}", if target_side { to } else { from }))
        .collect();
    format!("CREATE TABLE {table} (id integer, {})", columns.join(", "))
}

/// One row per value of each pair (every other column NULL) and one all-NULL row.
fn conv_rows() -> (String, i64) {
    let mut rows = Vec::new();
    let mut id = 0;
    for (i, (.., values)) in ACCEPTED.iter().enumerate() {
        for value in *values {
            id += 1;
            rows.push(format!(
                "INSERT INTO public.conv (id, c{i}) VALUES ({id}, {});",
                literal(value)
            ));
        }
    }
    rows.push("INSERT INTO public.conv (id) VALUES (NULL);".to_string());
    (rows.join("\n"), id + 1)
}

/// Each row of `table` by id: every column's text form (NULL as `None`), in a
/// UTC session printing floats exactly.
async fn values(db: &TestDb, table: &str) -> Vec<(Option<i32>, Vec<Option<String>>)> {
    let mut conn = db.conn().await;
    exec(
        &mut conn,
        "SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'",
    )
    .await;
    let list: Vec<String> = (0..ACCEPTED.len())
        .map(|i| format!("CASE WHEN c{i} IS NULL THEN NULL ELSE format('%s', c{i}) END"))
        .collect();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, ARRAY[{}]::text[] FROM {table} ORDER BY id NULLS FIRST",
        list.join(", ")
    )))
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// A job copying `public.conv` from `source` into `target` with `method`,
/// in three partitions by id.
fn conv_job(source: &TestDb, target: &TestDb, method: &str) -> String {
    format!(
        "[source]\nurl = \"{}\"\ntable = \"public.conv\"\n[partition]\ncolumn = \"id\"\ncount = 3\n[target]\nurl = \"{}\"\ncreate = \"never\"\nmethod = \"{method}\"\nbatch_size = 50\n",
        source.url, target.url
    )
}

/// The whole table of accepted conversions, copied by each method into its own
/// target: every value is the one the server's assignment cast gives (the
/// reference, computed in the source database in a UTC session), so the two
/// methods agree value for value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_conversion_gives_the_casts_value_with_both_methods() {
    let source = TestDb::new("conv_src").await;
    let (rows, count) = conv_rows();
    source
        .exec(&format!(
            "{};\n{rows}\n{};\nSET TimeZone = 'UTC';\nINSERT INTO public.reference SELECT * FROM public.conv;",
            conv_table("public.conv", false),
            conv_table("public.reference", true)
        ))
        .await;
    let reference = values(&source, "public.reference").await;
    assert_eq!(reference.len() as i64, count);
    for method in ["copy", "insert"] {
        let target = TestDb::new(&format!("conv_{method}")).await;
        target.exec(&conv_table("public.conv", true)).await;
        let job = job_file(&conv_job(&source, &target, method));
        let out = run_job(&job.path);
        assert_exit(&out, 0);
        let stdout = String::from_utf8_lossy(&out.stdout);
        match method {
            "copy" => assert!(stdout.contains("(text COPY)"), "{stdout}"),
            _ => assert!(stdout.contains("(INSERT, 50 rows a batch)"), "{stdout}"),
        }
        let copied = values(&target, "public.conv").await;
        assert_eq!(copied.len(), reference.len(), "{method}: row count");
        for (got, want) in copied.iter().zip(&reference) {
            assert_eq!(got.0, want.0, "{method}: ids");
            for (i, (g, w)) in got.1.iter().zip(&want.1).enumerate() {
                let (from, to, _) = ACCEPTED[i];
                assert_eq!(
                    g, w,
                    "{method}: {from} into {to}, row {:?}: the target holds {g:?}, the cast gives {w:?}",
                    got.0
                );
            }
        }
    }
}

/// A value the conversion cannot keep fails its row: the run exits 1 naming the
/// column, and the failed partition commits nothing; what was committed is the
/// cast's value. (source type, target type, a value that converts, one that
/// does not, what the error says)
const FAILING: &[(&str, &str, &str, &str, &str)] = &[
    (
        "bigint",
        "integer",
        "2147483647",
        "3000000000",
        "out of range for type integer",
    ),
    (
        "numeric",
        "integer",
        "7.00",
        "1.5",
        "invalid input syntax for type integer: \"1.5\"",
    ),
    (
        "double precision",
        "integer",
        "1e9",
        "2.5",
        "invalid input syntax for type integer: \"2.5\"",
    ),
    (
        "real",
        "bigint",
        "1e18",
        "Infinity",
        "invalid input syntax for type bigint: \"Infinity\"",
    ),
    (
        "inet",
        "cidr",
        "10.0.0.0/8",
        "192.168.1.5/24",
        "invalid cidr value: \"192.168.1.5/24\"",
    ),
    // Cast on the source (the target's input would round 3.4028235677973366e+38
    // to real's largest value where the cast fails): the source's error.
    (
        "double precision",
        "real",
        "0.1",
        "1e300",
        "value out of range: overflow",
    ),
    (
        "bit varying",
        "bit(3)",
        "101",
        "10110",
        "bit string length 5 does not match type bit(3)",
    ),
    (
        "date",
        "timestamp",
        "2021-03-01",
        "5874897-12-31",
        "timestamp out of range",
    ),
    (
        "timestamptz",
        "time",
        "2021-03-01 10:00:00+00",
        "infinity",
        "invalid input syntax for type time",
    ),
    (
        "boolean",
        "character varying(4)",
        "true",
        "false",
        "value too long for type character varying(4)",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_a_conversion_cannot_keep_fails_its_partition_naming_the_column() {
    for (from, to, good, bad, message) in FAILING {
        let pair = Pair::new("conv_fail").await;
        // Ids 1 to 100, the value that does not convert at id 100: the second
        // of two partitions (51 to 100).
        pair.source
            .exec(&format!(
                "CREATE TABLE public.f (id integer NOT NULL, v {from});
                 INSERT INTO public.f SELECT g, CASE WHEN g = 100 THEN {} ELSE {} END::{from}
                 FROM generate_series(1, 100) g;",
                literal(bad),
                literal(good)
            ))
            .await;
        pair.target
            .exec(&format!(
                "CREATE TABLE public.f (id integer NOT NULL, v {to})"
            ))
            .await;
        for method in ["copy", "insert"] {
            let what = format!("{from} into {to} ({bad}), method = {method}");
            let job = job_file(&job_text(
                &pair,
                "table = \"public.f\"",
                "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 101\ncount = 2",
                &format!("method = \"{method}\"\ncreate = \"never\"\nbatch_size = 7"),
            ));
            let path = job.path.to_str().unwrap();
            // check accepts the column and says it can fail.
            let check = stride(&["check", path], &[]);
            assert_exit(&check, 0);
            let check_out = String::from_utf8_lossy(&check.stdout);
            let line = check_out
                .lines()
                .find(|l| l.starts_with("v "))
                .unwrap_or_else(|| panic!("{what}: no line for v\n{}", text(&check)));
            assert!(
                line.contains("text (converted by the target): "),
                "{what}: {line}"
            );
            assert!(line.contains("fail"), "{what}: {line}");

            let out = run_job(&job.path);
            assert_eq!(out.status.code(), Some(1), "{what}\n{}", text(&out));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains(message),
                "{what}: the error does not say why\n{}",
                text(&out)
            );
            let column = match method {
                "copy" if *from != "double precision" || *to != "real" => {
                    format!("line 50, column v: \"{bad}\"")
                }
                _ => "a value did not convert into its column (column \"v\" ".to_string(),
            };
            assert!(
                stderr.contains(&column),
                "{what}: the error does not name the column\n{}",
                text(&out)
            );
            assert_eq!(
                pair.target.count("public.f WHERE id >= 51").await,
                0,
                "{what}: rows of the failed partition were written"
            );
            let committed = pair.target.count("public.f").await;
            assert!(
                committed == 0 || committed == 50,
                "{what}: {committed} rows"
            );
            if committed == 50 {
                let mut conn = pair.target.conn().await;
                exec(&mut conn, "SET TimeZone = 'UTC'").await;
                let mismatched: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM public.f WHERE v IS DISTINCT FROM {}::{from}::{to}",
                    literal(good)
                )))
                .fetch_one(&mut conn)
                .await
                .unwrap();
                assert_eq!(mismatched, 0, "{what}: committed values are not the cast's");
            }
            pair.target.exec("TRUNCATE public.f").await;
        }
    }
}

/// `check` says, per converted column, where its values can fail or round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_which_conversions_can_fail_or_round() {
    let pair = Pair::new("conv_check").await;
    pair.source
        .exec(
            "CREATE TABLE public.k (id integer, big bigint, n numeric(12,2), f double precision,
                                    r real, m money, at timestamptz, net inet, flag boolean, word char(5));
             INSERT INTO public.k VALUES (1, 1, 1, 1, 1, 1, now(), '10.0.0.1', true, 'a');",
        )
        .await;
    pair.target
        .exec(
            "CREATE TABLE public.k (id integer, big integer, n integer, f real,
                                    r double precision, m numeric, at date, net cidr, flag varchar(4), word text);",
        )
        .await;
    let job = job_file(&job_text(
        &pair,
        "table = \"public.k\"",
        "",
        "create = \"never\"",
    ));
    let out = stride(&["check", job.path.to_str().unwrap()], &[]);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("column "))
        .take(11)
        .collect();
    assert_eq!(
        table,
        [
            "column  source type               target type           transfer",
            "id      integer                   integer               binary (passed through)",
            "big     bigint                    integer               text (converted by the target): fails on values that do not fit integer",
            "n       numeric(12,2)             integer               text (converted by the target): fails on values with a fraction (the cast would round them) or that do not fit integer",
            "f       double precision          real                  text (converted by the target): rounds to real's precision, as the cast does; fails on values out of its range",
            "r       real                      double precision      text (converted by the target)",
            "m       money                     numeric               text (converted by the target)",
            "at      timestamp with time zone  date                  text (converted by the target): keeps only the date (in UTC), as the cast does",
            "net     inet                      cidr                  text (converted by the target): fails on addresses with bits set right of the netmask (the cast would clear them)",
            "flag    boolean                   character varying(4)  text (converted by the target): fails on values longer than character varying(4)",
            "word    character(5)              text                  text (converted by the target)",
        ],
        "{}",
        text(&out)
    );
}

/// Conversions whose cast would change the value where the target could keep
/// it, and types with no conversion: refused by name, with why, exit 2, before
/// anything is written. (source type, target type, what the message says)
const REFUSED: &[(&str, &str, &str)] = &[
    ("double precision", "numeric", "column \"v\": source type double precision cannot be written as numeric: PostgreSQL's cast keeps only 15 significant digits of a double precision (9007199254740992 becomes 9007199254740990), so the value would change"),
    ("real", "numeric(20,4)", "column \"v\": source type real cannot be written as numeric(20,4): PostgreSQL's cast keeps only 6 significant digits of a real (16777216 becomes 16777200), so the value would change"),
    ("interval", "time", "column \"v\": source type interval cannot be written as time without time zone: PostgreSQL's cast keeps an interval's time of day modulo 24 hours"),
    ("text", "integer", "column \"v\": source type text cannot be written as integer: stride converts only where PostgreSQL's cast keeps the value or fails"),
    ("macaddr8", "macaddr", "column \"v\": source type macaddr8 cannot be written as macaddr: stride converts only"),
    ("integer", "integer[]", "column \"v\": source type integer cannot be written as integer[]: an array and a non-array type do not convert"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_that_would_change_values_is_refused_by_name() {
    for (from, to, message) in REFUSED {
        let pair = Pair::new("conv_refused").await;
        pair.source
            .exec(&format!(
                "CREATE TABLE public.r (id integer, v {from}); INSERT INTO public.r VALUES (1, NULL);"
            ))
            .await;
        pair.target
            .exec(&format!("CREATE TABLE public.r (id integer, v {to})"))
            .await;
        for method in ["copy", "insert"] {
            let job = job_file(&job_text(
                &pair,
                "table = \"public.r\"",
                "",
                &format!("method = \"{method}\"\ncreate = \"never\""),
            ));
            let path = job.path.to_str().unwrap();
            for command in ["check", "run"] {
                let out = stride(&[command, path], &[]);
                assert_exit(&out, 2);
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    stderr.contains(message),
                    "{from} into {to}, {command} with {method}\n{}",
                    text(&out)
                );
            }
            assert_eq!(pair.target.count("public.r").await, 0);
        }
    }
}
