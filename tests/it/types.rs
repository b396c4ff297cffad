//! Every column type the issue lists round-trips exactly through both methods
//! (binary COPY pass-through and batched INSERTs), into a target stride creates and
//! into one that already exists; text COPY converts assignable types; incompatible
//! types are refused before anything is written.

use crate::common::*;

/// One column per type the issue lists (with modifiers where they matter), and
/// arrays of them.
const TYPES_DDL: &str = r##"
CREATE TABLE public.all_types (
    id             integer,
    c_int2         smallint,
    c_int4         integer,
    c_int8         bigint,
    c_numeric      numeric,
    c_numeric_12_4 numeric(12,4),
    c_real         real,
    c_double       double precision,
    c_text         text,
    c_varchar      varchar(20),
    c_char         char(5),
    c_bool         boolean,
    c_date         date,
    c_ts           timestamp,
    c_tstz         timestamptz,
    c_tstz_3       timestamp(3) with time zone,
    c_time         time,
    c_interval     interval,
    c_uuid         uuid,
    c_bytea        bytea,
    c_json         json,
    c_jsonb        jsonb,
    c_int_arr      integer[],
    c_text_arr     text[],
    c_numeric_arr  numeric[],
    c_date_arr     date[],
    c_int_2d       integer[][],
    c_float_arr    double precision[],
    c_bool_arr     boolean[],
    c_uuid_arr     uuid[],
    c_bytea_arr    bytea[],
    c_tstz_arr     timestamptz[],
    c_interval_arr interval[],
    c_jsonb_arr    jsonb[],
    c_varchar_arr  varchar(10)[]
);
"##;

/// The rows: each type's edge cases, and one row where every column is NULL.
const TYPES_ROWS: &str = r##"
-- Numbers: zero, both extremes, NaN and infinities, -0, subnormals, inexact sums.
INSERT INTO public.all_types (id, c_int2, c_int4, c_int8, c_numeric, c_numeric_12_4, c_real, c_double) VALUES
    (1, 0, 0, 0, 0, 0, 0, 0),
    (2, -32768, -2147483648, -9223372036854775808, '-123456789012345678901234567890.123456789', -99999999.9999, '-3.4028235e38', '-1.7976931348623157e308'),
    (3, 32767, 2147483647, 9223372036854775807, '123456789012345678901234567890.123456789', 99999999.9999, '3.4028235e38', '1.7976931348623157e308'),
    (4, 1, 1, 1, 'NaN', 0.0001, 'NaN', 'NaN'),
    (5, -1, -1, -1, 'Infinity', 1.5, 'Infinity', 'Infinity'),
    (6, 2, 2, 2, '-Infinity', -1.5, '-Infinity', '-Infinity'),
    (7, 3, 3, 3, '0.000000000000000000000000000001', 1234.5678, '-0', '-0'),
    (8, 4, 4, 4, '1.500000000000000000000', 0.5, '1e-45', '1e-310'),
    (9, 5, 5, 5, '-0.1', 3.1416, 0.1::real + 0.2::real, 0.1::float8 + 0.2::float8),
    (10, 6, 6, 6, 1e100, 0, '1.17549435e-38', '2.2250738585072014e-308'),
    (11, 7, 7, 7, 0.1 + 0.2, 0, '16777217', '9007199254740993');

-- Text, booleans, dates and times (BC, infinities, fractions), uuid, bytea, json.
UPDATE public.all_types SET
    c_text = v.c_text, c_varchar = v.c_varchar, c_char = v.c_char, c_bool = v.c_bool,
    c_date = v.c_date::date, c_ts = v.c_ts::timestamp, c_tstz = v.c_tstz::timestamptz,
    c_tstz_3 = CASE WHEN v.id = 3 THEN '294276-12-31 23:59:59.999+00' ELSE v.c_tstz END::timestamptz, c_time = v.c_time::time, c_interval = v.c_interval::interval,
    c_uuid = v.c_uuid::uuid, c_bytea = v.c_bytea::bytea, c_json = v.c_json::json, c_jsonb = v.c_jsonb::jsonb
FROM (VALUES
    (1, 'plain', 'varchar', 'ab', true, '2021-02-28', '2021-02-28 13:14:15.123456', '2021-02-28 13:14:15.123456+05:30',
        '13:14:15.123456', '1 year 2 mons 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x00',
        '{"a": 1,  "a" :2 }', '{"z": [1, 2.50, null, true], "a": {"b": "\u00e9"}}'),
    (2, '', '', '', false, '4713-01-01 BC', '4713-01-01 00:00:00 BC', '4713-01-01 00:00:00+00 BC',
        '00:00:00', '-1 years -2 mons +3 days -04:05:06.000001', '00000000-0000-0000-0000-000000000000', '\x',
        '[]', '{}'),
    (3, 'héllo wörld 世界 🎉 ∑ é', 'ñandú 日本語', 'ü', true, '5874897-12-31', '294276-12-31 23:59:59.999999', '294276-12-31 23:59:59.999999+00',
        '24:00:00', '178000000 years', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '\x00ff00',
        E'{\n  "k": "v",\n\t"k": [1,2 , 3]\n}', '[1, "two", 3.0, {"x": null}]'),
    (4, E'back\\slash \\N tab\there\nnewline\r\ncr', E'\\N', E'a\tb', NULL, 'infinity', 'infinity', 'infinity',
        '23:59:59.999999', '-178000000 years', NULL, '\x5c4e0a09',
        ' "a string with \"quotes\" and \\ backslash" ', 'null'),
    (5, E'quote''s "double" ,comma {brace} (paren) ;semi', 'NULL', '"''', false, '-infinity', '-infinity', '-infinity',
        '00:00:00.000001', '0', NULL, '\x0d0a00000a',
        '  {"nested": {"arr": [1, {"x": null}]}, "n": 1.0e2 }  ', '{"n": 1.0e2, "big": 123456789012345678901234567890}'),
    (6, 'NULL', ' lead and trail  ', '  x', true, '0044-03-15 BC', '0044-03-15 12:30:00.5 BC', '0044-03-15 12:30:00.5+01:02:03 BC',
        '12:00', '1 mon -1 days 00:00:00.000001', NULL, '\xdeadbeef',
        '"\u0000 escaped nul is fine in json"', '"\ud83c\udf89"'),
    (7, repeat('long text ', 1000), 'exactly twenty chars', 'abcde', NULL, '2000-02-29', '2000-02-29 00:00:00', '2000-02-29 00:00:00-12',
        '00:00', '-0.000001 seconds', NULL, NULL, NULL, NULL),
    (8, E'\x01\x1f control', NULL, NULL, NULL, '1970-01-01', '1970-01-01 00:00:00', '1970-01-01 00:00:00+14', NULL,
        '3 days 99:59:59', NULL, NULL, NULL, NULL)
) AS v(id, c_text, c_varchar, c_char, c_bool, c_date, c_ts, c_tstz, c_time, c_interval, c_uuid, c_bytea, c_json, c_jsonb)
WHERE all_types.id = v.id;

-- Arrays: NULL elements, quoting, empty arrays, a non-default lower bound, 2-D.
UPDATE public.all_types SET
    c_int_arr = v.c_int_arr::integer[], c_text_arr = v.c_text_arr::text[], c_numeric_arr = v.c_numeric_arr::numeric[],
    c_date_arr = v.c_date_arr::date[], c_int_2d = v.c_int_2d::integer[], c_float_arr = v.c_float_arr::float8[],
    c_bool_arr = v.c_bool_arr::boolean[], c_uuid_arr = v.c_uuid_arr::uuid[], c_bytea_arr = v.c_bytea_arr::bytea[],
    c_tstz_arr = v.c_tstz_arr::timestamptz[], c_interval_arr = v.c_interval_arr::interval[],
    c_jsonb_arr = v.c_jsonb_arr::jsonb[], c_varchar_arr = v.c_varchar_arr::varchar(10)[]
FROM (VALUES
    (1, '{1,2,3}', ARRAY['a', NULL, 'NULL', 'with,comma', 'with"quote', '{brace}', 'back\slash', '', ' spaced ', E'new\nline', E'tab\t']::text,
        '{1.50, NaN, 123456789012345678901234567890.123456789, -0.000001}', '{2020-01-01, infinity, NULL, 0044-03-15 BC}',
        '{{1,2,3},{4,NULL,6}}', '{NaN, Infinity, -Infinity, -0, 1e-310, 0.30000000000000004}', '{t,f,NULL}',
        '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11, NULL}', ARRAY['\x00'::bytea, '\x'::bytea, NULL]::text,
        '{"2021-02-28 13:14:15.123456+05:30", infinity, NULL}', '{"1 year -2 days", "-00:00:00.000001", NULL}',
        ARRAY['{"a": [1, "}"]}'::jsonb, 'null'::jsonb, NULL]::text, '{"a,b", "c\"d", NULL, ""}'),
    (2, '{}', '{}', '{}', '{}', '[0:2]={7,8,9}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}'),
    (3, '{NULL,NULL}', '{NULL}', '{NULL}', '{NULL}', '{{NULL}}', '{NULL}', '{NULL}', '{NULL}', '{NULL}', '{NULL}', '{NULL}', '{NULL}', '{NULL}'),
    (4, '{-2147483648,2147483647}', '{"\\N", "\\\\", "NULL ", "  "}', '{Infinity, -Infinity}', '{-infinity}',
        '[-5:-4][1:2]={{1,2},{3,4}}', '{1e308, -1e-308}', '{true}', NULL, NULL, NULL, NULL, NULL, NULL)
) AS v(id, c_int_arr, c_text_arr, c_numeric_arr, c_date_arr, c_int_2d, c_float_arr, c_bool_arr, c_uuid_arr,
       c_bytea_arr, c_tstz_arr, c_interval_arr, c_jsonb_arr, c_varchar_arr)
WHERE all_types.id = v.id;

-- NULLs everywhere: one row with every column NULL, id included.
INSERT INTO public.all_types DEFAULT VALUES;
"##;

/// Rows `TYPES_ROWS` inserts.
const TYPES_ROW_COUNT: i64 = 12;

/// Each column's name, type with modifiers and NOT NULL, as the catalogue says.
const COLUMN_DEFS: &str = "SELECT string_agg(format('%s %s %s', attname, format_type(atttypid, atttypmod), attnotnull), ', ' ORDER BY attnum)
     FROM pg_attribute WHERE attrelid = 'public.all_types'::regclass AND attnum > 0 AND NOT attisdropped";

/// Per column, the md5 of its values' text forms in `id` order: when the tables
/// differ, this says which column did.
async fn column_digests(db: &TestDb) -> Vec<(String, String)> {
    let mut conn = db.conn().await;
    sqlx::raw_sql("SET TimeZone = 'UTC'; SET extra_float_digits = 3")
        .execute(&mut conn)
        .await
        .unwrap();
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute
         WHERE attrelid = 'public.all_types'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut digests = Vec::new();
    for column in columns {
        let digest: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT md5(string_agg(coalesce(quote_literal(\"{column}\"::text), 'NULL'), ',' ORDER BY id NULLS FIRST))
             FROM public.all_types"
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        digests.push((column, digest));
    }
    digests
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// stride creates it (`create = "if-missing"`).
    Created,
    /// It exists before the run, identical to the source (`create = "never"`).
    Existing,
}

/// Copies `all_types` with `method` and checks the target holds the same values.
async fn round_trip(label: &str, method: &str, target: Target, partition: &str) -> String {
    let pair = Pair::new(label).await;
    pair.source.exec(TYPES_DDL).await;
    pair.source.exec(TYPES_ROWS).await;
    let create = match target {
        Target::Created => "create = \"if-missing\"",
        Target::Existing => {
            pair.target.exec(TYPES_DDL).await;
            "create = \"never\""
        }
    };
    // A batch size smaller than the row count: several INSERT statements.
    let job = job_file(&job_text(
        &pair,
        "table = \"public.all_types\"",
        partition,
        &format!("method = \"{method}\"\nbatch_size = 5\n{create}"),
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert_eq!(
        pair.target.scalar_string(COLUMN_DEFS).await,
        pair.source.scalar_string(COLUMN_DEFS).await,
        "the target's columns differ from the source's"
    );
    let source = column_digests(&pair.source).await;
    let copied = column_digests(&pair.target).await;
    for (s, t) in source.iter().zip(&copied) {
        assert_eq!(s, t, "column {} differs between source and target", s.0);
    }
    assert_eq!(
        pair.assert_same("public.all_types", "public.all_types")
            .await,
        TYPES_ROW_COUNT
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(&format!("rows {TYPES_ROW_COUNT} ")),
        "{stdout}"
    );
    match method {
        "copy" => assert!(stdout.contains("(binary COPY)"), "{stdout}"),
        _ => assert!(stdout.contains("(INSERT, 5 rows a batch)"), "{stdout}"),
    }
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_with_copy_into_a_created_target() {
    round_trip("types_copy_new", "copy", Target::Created, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_with_copy_into_an_existing_target() {
    round_trip("types_copy_old", "copy", Target::Existing, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_with_insert_into_a_created_target() {
    round_trip("types_ins_new", "insert", Target::Created, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_with_insert_into_an_existing_target() {
    round_trip("types_ins_old", "insert", Target::Existing, "").await;
}

/// Partitioning changes which rows travel together, never their values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_partitioned_with_both_methods() {
    for method in ["copy", "insert"] {
        let stdout = round_trip(
            &format!("types_part_{method}"),
            method,
            Target::Created,
            "[partition]\ncolumn = \"id\"\ncount = 3",
        )
        .await;
        assert!(stdout.contains("partitions 3 written of 3"), "{stdout}");
        // The all-NULL row has a NULL key: it travels in partition 0.
        assert!(stdout.contains("or NULL"), "{stdout}");
    }
}

// ---------------------------------------------------------------------------------
// Different but assignable types: text COPY lets the target convert.

const CONVERT_SOURCE: &str = r#"
CREATE TABLE public.conv (
    id  integer,
    i   integer,
    v   varchar(20),
    a   integer[],
    s   smallint,
    txt text,
    b   bytea,
    f   double precision,
    ts  timestamptz,
    j   json,
    iv  interval
);
INSERT INTO public.conv
SELECT g, g * 1000 - 500000, 'v' || g, ARRAY[g, NULL, -g], (g % 100)::smallint, 'row ' || g,
       int4send(g), g / 7.0::float8, TIMESTAMPTZ '2021-01-01 00:00:00+00' + g * INTERVAL '1 minute 0.000001 second',
       ('{"g": ' || g || ',  "g": "dup"}')::json, g * INTERVAL '-1 day 1 microsecond'
FROM generate_series(1, 2000) g;
INSERT INTO public.conv VALUES
    (-1, -2147483648, E'tab\there \\N', '{{-2147483648,2147483647},{NULL,0}}', -32768,
     E'back\\slash\nnew line \r cr', '\x00', 'NaN', 'infinity', '{"a":1,"a":2}', '-178000000 years'),
    (-2, 2147483647, 'ünïcødé 世界 🎉', '{}', 32767, '', '\x', '-0', '-infinity', '  []  ', '1 mon -1 days'),
    (-3, NULL, '', '{NULL}', NULL, E'\\N', NULL, '1e-310', '0044-03-15 12:00:00+00 BC', 'null', '0'),
    (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"#;

const CONVERT_TARGET: &str = r#"
CREATE TABLE public.conv (
    id  bigint,
    i   bigint,
    v   text,
    a   bigint[],
    s   integer,
    txt text,
    b   bytea,
    f   double precision,
    ts  timestamptz,
    j   json,
    iv  interval
);
"#;

/// The source's rows cast to the target's types, as the target should hold them.
const CONVERT_EXPECTED: &str =
    "(SELECT id::int8 AS id, i::int8 AS i, v::text AS v, a::int8[] AS a, s::int4 AS s,
                                      txt, b, f, ts, j, iv FROM public.conv)";

async fn converts(method: &str) {
    let pair = Pair::new(&format!("conv_{method}")).await;
    pair.source.exec(CONVERT_SOURCE).await;
    pair.target.exec(CONVERT_TARGET).await;
    let job = job_file(&job_text(
        &pair,
        "table = \"public.conv\"",
        "[partition]\ncolumn = \"id\"\ncount = 2",
        &format!("method = \"{method}\"\ncreate = \"never\""),
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    match method {
        "copy" => assert!(stdout.contains("(text COPY)"), "{stdout}"),
        _ => assert!(stdout.contains("(INSERT, "), "{stdout}"),
    }
    assert!(stdout.contains("rows 2,004 "), "{stdout}");
    let expected = pair.source.checksum(CONVERT_EXPECTED).await;
    let copied = pair.target.checksum("public.conv").await;
    assert_eq!(
        copied, expected,
        "the target's values are not the source's, converted"
    );
    assert_eq!(copied.0, 2004);
    // The target kept its own types.
    assert_eq!(
        pair.target
            .scalar_string("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.conv'::regclass AND attname = 'a'")
            .await,
        "bigint[]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignable_types_are_converted_by_text_copy() {
    converts("copy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignable_types_are_converted_by_insert() {
    converts("insert").await;
}

// ---------------------------------------------------------------------------------
// A type the target cannot take: refused by check and run, nothing written.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_column_is_refused_before_anything_is_written() {
    let pair = Pair::new("incompatible").await;
    pair.source
        .exec(
            "CREATE TABLE public.people (id integer, name text, age text);
             INSERT INTO public.people SELECT g, 'p' || g, (20 + g % 50)::text FROM generate_series(1, 300) g;",
        )
        .await;
    pair.target
        .exec(
            "CREATE TABLE public.people (id integer, name text, age integer);
             INSERT INTO public.people VALUES (1, 'kept', 30), (2, 'also kept', NULL), (3, NULL, 99);",
        )
        .await;
    let before = pair.target.checksum("public.people").await;
    for method in ["copy", "insert"] {
        // Truncate mode: getting as far as the first write would empty the table.
        let job = job_file(&job_text(
            &pair,
            "table = \"public.people\"",
            "[partition]\ncolumn = \"id\"\ncount = 2",
            &format!("mode = \"truncate\"\nmethod = \"{method}\""),
        ));
        let path = job.path.to_str().unwrap();

        let out = stride(&["check", path], &[]);
        assert_exit(&out, 2);
        let all = text(&out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let age_line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with("age "))
            .unwrap_or_else(|| panic!("check lists no line for column age\n{all}"));
        assert!(age_line.contains("INCOMPATIBLE"), "{all}");
        assert!(
            !stdout
                .lines()
                .any(|l| l.starts_with("id ") && l.contains("INCOMPATIBLE")),
            "{all}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("\"age\""), "{all}");

        let out = stride(&["run", path], &[]);
        assert_exit(&out, 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("\"age\""), "{}", text(&out));
        assert_eq!(
            pair.target.checksum("public.people").await,
            before,
            "{method}: the target changed"
        );
        assert_eq!(pair.target.count("public.people").await, 3);
    }
}

/// Assignment casts that PostgreSQL applies to values by rounding (numeric and
/// double into integer) are accepted as exact-or-error: `check` accepts the
/// columns and says a fraction fails, and `run` keeps every whole number exactly
/// and fails the partition holding a fraction, rather than round it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_verdict_holds_at_run_for_rounding_casts() {
    for method in ["copy", "insert"] {
        let pair = Pair::new(&format!("rounding_{method}")).await;
        pair.source
            .exec(
                "CREATE TABLE public.m (id integer, n numeric, f double precision);
                 INSERT INTO public.m SELECT g, g, g FROM generate_series(1, 100) g;
                 INSERT INTO public.m VALUES (101, 2.50, 1.5), (102, -7.25, -0.4), (103, NULL, NULL);",
            )
            .await;
        pair.target
            .exec("CREATE TABLE public.m (id integer, n integer, f integer); INSERT INTO public.m VALUES (0, 7, 7);")
            .await;
        // The values with a fraction sit in the last of two partitions: the
        // first commits (or not, if the second fails first), the second fails.
        let job = job_file(&job_text(
            &pair,
            "table = \"public.m\"",
            "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 101\ncount = 2",
            &format!("method = \"{method}\"\ncreate = \"never\""),
        ));
        let path = job.path.to_str().unwrap();
        let check = stride(&["check", path], &[]);
        assert_exit(&check, 0);
        let stdout = String::from_utf8_lossy(&check.stdout);
        for column in ["n", "f"] {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&format!("{column} ")))
                .unwrap_or_else(|| panic!("{method}: no line for {column}\n{}", text(&check)));
            assert!(
                line.ends_with("text (converted by the target): fails on values with a fraction (the cast would round them) or that do not fit integer"),
                "{method}: {line}"
            );
        }
        let run = stride(&["run", path], &[]);
        assert_exit(&run, 1);
        assert!(
            String::from_utf8_lossy(&run.stderr).contains("invalid input syntax for type integer"),
            "{}",
            text(&run)
        );
        assert_eq!(pair.target.count("public.m WHERE id >= 51").await, 0);
        let committed = pair
            .target
            .count("public.m WHERE id BETWEEN 1 AND 50")
            .await;
        if committed > 0 {
            assert_eq!(
                pair.target.checksum("(SELECT * FROM public.m WHERE id BETWEEN 1 AND 50)").await,
                pair.source
                    .checksum("(SELECT id, n::integer AS n, f::integer AS f FROM public.m WHERE id BETWEEN 1 AND 50)")
                    .await,
                "{method}: the whole numbers committed are not the source's"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// A target column narrower than the source's values: the server refuses the value,
// whatever the method; nothing is cut short.

/// Copies `public.words (id, w)` from a `source_type` column into an existing
/// `target_type` column. Every row holds `short` except id 100, which holds `long`
/// (too long for the target): the partition holding it fails with the server's
/// "value too long", exit 1, and none of its rows are in the target.
async fn too_long_fails_its_partition(
    label: &str,
    source_type: &str,
    target_type: &str,
    short: &str,
    long: &str,
) {
    let pair = Pair::new(label).await;
    pair.source
        .exec(&format!(
            "CREATE TABLE public.words (id integer NOT NULL, w {source_type});
             INSERT INTO public.words SELECT g, CASE WHEN g = 100 THEN '{long}' ELSE '{short}' END
             FROM generate_series(1, 100) g;"
        ))
        .await;
    pair.target
        .exec(&format!(
            "CREATE TABLE public.words (id integer NOT NULL, w {target_type})"
        ))
        .await;
    // Partition 0 holds ids 1 to 50, partition 1 ids 51 to 100 (the long value).
    let sections = [
        ("one partition", ""),
        (
            "two partitions",
            "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 101\ncount = 2",
        ),
    ];
    for method in ["copy", "insert"] {
        for (how, partition) in sections {
            let what = format!("{source_type} into {target_type}, method = {method}, {how}");
            let job = job_file(&job_text(
                &pair,
                "table = \"public.words\"",
                partition,
                &format!("method = \"{method}\"\ncreate = \"never\"\nbatch_size = 7"),
            ));
            let out = run_job(&job.path);
            assert_eq!(out.status.code(), Some(1), "{what}\n{}", text(&out));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("value too long"),
                "{what}: the error does not say why\n{}",
                text(&out)
            );
            assert_eq!(
                pair.target.count("public.words WHERE id >= 51").await,
                0,
                "{what}: rows of the failed partition were written\n{}",
                text(&out)
            );
            // Whatever was committed (partition 0, or nothing) is exactly the source's.
            let copied = pair.target.checksum("public.words").await;
            if copied.0 != 0 {
                assert_eq!(
                    copied,
                    pair.source
                        .checksum("(SELECT * FROM public.words WHERE id < 51)")
                        .await,
                    "{what}: the committed rows differ from the source's"
                );
            }
            pair.target.exec("TRUNCATE public.words").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_too_long_for_a_narrower_varchar_fails_its_partition_with_both_methods() {
    too_long_fails_its_partition(
        "narrow_varchar",
        "varchar(10)",
        "varchar(3)",
        "abc",
        "abcdefghij",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_too_long_for_a_char_column_fails_its_partition_with_both_methods() {
    too_long_fails_its_partition("narrow_char", "text", "char(2)", "ab", "abc").await;
}

// ---------------------------------------------------------------------------------
// Target columns the copy does not, or cannot, write as plain columns.

const ITEMS: &str = "
CREATE TABLE public.items (id integer NOT NULL, name text, amount numeric);
INSERT INTO public.items SELECT g, 'item ' || g, g * 0.25 FROM generate_series(1, 300) g;
INSERT INTO public.items VALUES (-5, NULL, NULL), (2147483647, 'max', -1);";

const ITEM_ROWS: i64 = 302;

/// Runs `check` (exit 0) and then `run` (exit 0) for `public.items` into the
/// target's `public.items` with `method`, partitioned by id.
fn check_and_run(pair: &Pair, method: &str, create: &str) {
    let job = job_file(&job_text(
        pair,
        "table = \"public.items\"",
        "[partition]\ncolumn = \"id\"\ncount = 3",
        &format!("method = \"{method}\"\nbatch_size = 50\ncreate = \"{create}\""),
    ));
    let path = job.path.to_str().unwrap();
    let out = stride(&["check", path], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{method}: check\n{}",
        text(&out)
    );
    // Append mode: earlier runs' rows were removed by the test (or there are none).
    let out = stride(&["run", "--restart", "--append-again", path], &[]);
    assert_eq!(out.status.code(), Some(0), "{method}: run\n{}", text(&out));
}

/// An identity column that receives the source's values: they are written as they
/// are (COPY does so for identity columns; INSERT needs OVERRIDING SYSTEM VALUE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_column_receives_the_source_values_with_both_methods() {
    let pair = Pair::new("identity").await;
    pair.source.exec(ITEMS).await;
    for identity in [
        "GENERATED ALWAYS AS IDENTITY",
        "GENERATED BY DEFAULT AS IDENTITY",
    ] {
        pair.target
            .exec(&format!(
                "DROP TABLE IF EXISTS public.items;
                 CREATE TABLE public.items (id integer {identity}, name text, amount numeric);"
            ))
            .await;
        for method in ["copy", "insert"] {
            check_and_run(&pair, method, "never");
            assert_eq!(
                pair.source.checksum("public.items").await,
                pair.target.checksum("public.items").await,
                "{identity}, method = {method}: the target's rows are not the source's"
            );
            pair.target.exec("TRUNCATE public.items").await;
        }
    }
}

/// Target columns the source does not have: nullable ones get NULL, ones with a
/// default get the default, even when NOT NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_target_columns_get_null_or_their_default() {
    let pair = Pair::new("extra_cols").await;
    pair.source.exec(ITEMS).await;
    pair.target
        .exec(
            "CREATE TABLE public.items (
                 note text, id integer NOT NULL, name text,
                 created text NOT NULL DEFAULT 'by default', amount numeric, score integer DEFAULT 7)",
        )
        .await;
    for method in ["copy", "insert"] {
        check_and_run(&pair, method, "never");
        assert_eq!(
            pair.target
                .checksum("(SELECT id, name, amount FROM public.items)")
                .await,
            pair.source.checksum("public.items").await,
            "method = {method}: the copied columns differ"
        );
        assert_eq!(
            pair.target
                .count("public.items WHERE note IS NULL AND created = 'by default' AND score = 7")
                .await,
            ITEM_ROWS,
            "method = {method}: the extra columns do not hold NULL and their defaults"
        );
        pair.target.exec("TRUNCATE public.items").await;
    }
}

/// Target columns the source does not have and that compute their own values (a
/// stored generated column, an identity column): the copy leaves them to the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_generated_and_identity_target_columns_compute_their_values() {
    let pair = Pair::new("extra_gen").await;
    pair.source.exec(ITEMS).await;
    pair.target
        .exec(
            "CREATE TABLE public.items (
                 serial_no bigint GENERATED ALWAYS AS IDENTITY, id integer NOT NULL, name text,
                 doubled bigint GENERATED ALWAYS AS (id::int8 * 2) STORED, amount numeric)",
        )
        .await;
    for method in ["copy", "insert"] {
        check_and_run(&pair, method, "never");
        assert_eq!(
            pair.target
                .checksum("(SELECT id, name, amount FROM public.items)")
                .await,
            pair.source.checksum("public.items").await,
            "method = {method}: the copied columns differ"
        );
        assert_eq!(
            pair.target
                .scalar_i64("SELECT count(DISTINCT serial_no) FROM public.items WHERE doubled = id::int8 * 2")
                .await,
            ITEM_ROWS,
            "method = {method}: the generated and identity columns do not hold their own values"
        );
        pair.target.exec("TRUNCATE public.items").await;
    }
}

// ---------------------------------------------------------------------------------
// A user-defined type that exists on both sides.

const MOOD: &str = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');";

/// The enum exists in the target too: a missing target table is created with it,
/// and an existing one takes it, with both methods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enum_column_copies_when_the_target_has_the_type() {
    let pair = Pair::new("enum_both").await;
    pair.source
        .exec(&format!(
            "{MOOD}
             CREATE TABLE public.items (id integer NOT NULL, feeling mood, history mood[]);
             INSERT INTO public.items
             SELECT g, (ARRAY['sad', 'ok', 'happy'])[g % 3 + 1]::mood,
                    ARRAY[(ARRAY['sad', 'ok', 'happy'])[g % 3 + 1], NULL, 'happy']::mood[]
             FROM generate_series(1, 300) g;
             INSERT INTO public.items VALUES (-1, NULL, NULL), (-2, 'ok', '{{}}');"
        ))
        .await;
    pair.target.exec(MOOD).await;
    for method in ["copy", "insert"] {
        for create in ["if-missing", "never"] {
            if create == "never" {
                // The table the previous run created, emptied.
                pair.target.exec("TRUNCATE public.items").await;
            }
            check_and_run(&pair, method, create);
            assert_eq!(
                pair.target
                    .scalar_string("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.items'::regclass AND attname = 'history'")
                    .await,
                "mood[]",
                "method = {method}, create = {create}"
            );
            assert_eq!(
                pair.assert_same("public.items", "public.items").await,
                302,
                "method = {method}, create = {create}"
            );
        }
        pair.target.exec("DROP TABLE public.items").await;
    }
}

/// A domain over a key type partitions as that type: bounds from min/max, NULLs
/// and every value in exactly one partition, with both strategies that use a column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_over_a_key_type_is_a_partition_column() {
    let pair = Pair::new("domain_key").await;
    let domains = "CREATE DOMAIN order_id AS bigint CHECK (VALUE > 0);
                   CREATE DOMAIN big_order AS order_id;
                   CREATE DOMAIN order_day AS date;";
    pair.source
        .exec(&format!(
            "{domains}
             CREATE TABLE orders (id big_order, day order_day, note text);
             INSERT INTO orders SELECT g, DATE '2024-01-01' + g % 300, 'n' || g FROM generate_series(1, 5000) g;
             INSERT INTO orders VALUES (NULL, NULL, 'no key');"
        ))
        .await;
    pair.target.exec(domains).await;
    for (column, strategy) in [("id", "stride"), ("day", "stride"), ("id", "quantile")] {
        let file = job_file(&job_text(
            &pair,
            "table = \"orders\"",
            &format!("[partition]\nstrategy = \"{strategy}\"\ncolumn = \"{column}\"\ncount = 4"),
            "mode = \"truncate\"",
        ));
        let out = stride(&["plan", file.path.to_str().unwrap()], &[]);
        assert_exit(&out, 0);
        if (column, strategy) == ("id", "stride") {
            assert!(
                text(&out).contains("\"id\" >= '1251'::int8 AND \"id\" < '2501'::int8"),
                "{}",
                text(&out)
            );
        }
        assert_exit(&run_job(&file.path), 0);
        assert_eq!(
            pair.assert_same("orders", "orders").await,
            5001,
            "{column} {strategy}"
        );
    }
}
