//! Generated and identity columns, and the column types of a DVD-rental schema:
//! a column the target generates is left out of the copy (the target computes
//! it), a column only the source generates is copied as data, identity columns
//! keep the source's values and their sequences move past them; an enum, a
//! domain with a CHECK, `text[]`, `tsvector`, `numeric(4,2)`, `bytea` and an enum
//! array survive both methods exactly.

use crate::common::*;

/// The film table of the DVD-rental sample, its types included.
const FILM_TYPES: &str = "
CREATE TYPE mpaa_rating AS ENUM ('G', 'PG', 'PG-13', 'R', 'NC-17');
CREATE DOMAIN year AS integer CONSTRAINT year_check CHECK (VALUE >= 1901 AND VALUE <= 2155);";

/// `length_hours` as the DVD-rental schema has it, generated; or a plain column.
fn film_ddl(length_hours: &str) -> String {
    format!(
        "CREATE TABLE public.film (
            film_id integer NOT NULL PRIMARY KEY,
            title text NOT NULL,
            description text,
            release_year year,
            rental_rate numeric(4,2) NOT NULL DEFAULT 4.99,
            length smallint,
            rating mpaa_rating DEFAULT 'G',
            ratings_seen mpaa_rating[],
            special_features text[],
            fulltext tsvector NOT NULL,
            poster bytea,
            length_hours {length_hours}
        );"
    )
}

const GENERATED: &str = "numeric GENERATED ALWAYS AS (round(length / 60.0, 2)) STORED";

/// 1,000 films with NULLs, extremes and awkward values in every column but the
/// key (`length_hours` is left to the table: generated, or NULL when plain).
const FILM_ROWS: &str = r#"
INSERT INTO public.film (film_id, title, description, release_year, rental_rate, length, rating,
                         ratings_seen, special_features, fulltext, poster)
SELECT g,
       'Film ' || g || CASE WHEN g % 7 = 0 THEN E' with "quotes", \\ and\ttabs' ELSE '' END,
       CASE WHEN g % 5 = 0 THEN NULL ELSE repeat('a boring tale ', g % 4) END,
       CASE WHEN g % 11 = 0 THEN NULL WHEN g % 2 = 0 THEN 1901 ELSE 1901 + g % 255 END,
       CASE WHEN g % 3 = 0 THEN 99.99 WHEN g % 3 = 1 THEN -99.99 ELSE 0.99 END,
       CASE WHEN g % 13 = 0 THEN NULL WHEN g = 1 THEN 32767 WHEN g = 2 THEN -32768 ELSE 46 + g % 140 END,
       CASE WHEN g % 17 = 0 THEN NULL ELSE (enum_range(NULL::mpaa_rating))[g % 5 + 1] END,
       CASE WHEN g % 19 = 0 THEN NULL WHEN g % 2 = 0 THEN '{}'::mpaa_rating[]
            ELSE ARRAY['PG-13', NULL, (enum_range(NULL::mpaa_rating))[g % 5 + 1]]::mpaa_rating[] END,
       CASE WHEN g % 23 = 0 THEN NULL WHEN g % 2 = 0 THEN ARRAY['Trailers', 'Deleted Scenes']
            ELSE ARRAY['Behind the Scenes', NULL, '', 'with,comma', 'with"quote', '{brace}'] END,
       to_tsvector('english', 'Film ' || g || ' a drama of a monkey and a moose in ancient japan')
           || CASE WHEN g % 2 = 0 THEN $$'weird word':1A 'x''y':2B,3C$$::tsvector ELSE ''::tsvector END,
       CASE WHEN g % 29 = 0 THEN NULL WHEN g % 2 = 0 THEN '\x'::bytea ELSE decode(md5(g::text), 'hex') || '\x00ff'::bytea END
FROM generate_series(1, 1000) g;
"#;

/// Every column of `film` but `length_hours`, for checksums over the copied columns.
const COPIED: &str =
    "(SELECT film_id, title, description, release_year, rental_rate, length, rating, \
                      ratings_seen, special_features, fulltext, poster FROM public.film)";

/// Rows whose `length_hours` is not what the generation expression gives.
const MISCOMPUTED: &str =
    "SELECT count(*) FROM public.film WHERE length_hours IS DISTINCT FROM round(length / 60.0, 2)";

fn film_job(pair: &Pair, method: &str, extra_source: &str, create: &str) -> JobFile {
    job_file(&job_text(
        pair,
        &format!("table = \"public.film\"\n{extra_source}"),
        "[partition]\ncolumn = \"film_id\"\ncount = 3\n[run]\nverify = \"checksum\"",
        &format!(
            "method = \"{method}\"\nbatch_size = 64\nmode = \"truncate\"\ncreate = \"{create}\""
        ),
    ))
}

/// `check`'s line for a column the target generates.
fn computed_line(out: &str, column: &str) -> Option<String> {
    out.lines()
        .find(|l| l.starts_with(&format!("{column} ")))
        .map(str::to_string)
}

/// Generated on both sides: the target computes the column, both methods copy
/// every other column exactly (enum, domain, arrays, tsvector, bytea), check
/// says so per column, verify passes, and the whole rows match the source's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_generated_on_both_sides_is_computed_by_the_target() {
    let pair = Pair::new("gen_both").await;
    let ddl = format!("{FILM_TYPES}{}", film_ddl(GENERATED));
    pair.source.exec(&ddl).await;
    pair.source.exec(FILM_ROWS).await;
    pair.target.exec(&ddl).await;
    for method in ["copy", "insert"] {
        let job = film_job(&pair, method, "", "never");
        let out = stride(&["check", job.path.to_str().unwrap()], &[]);
        assert_exit(&out, 0);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            computed_line(&stdout, "length_hours").as_deref(),
            Some(
                format!(
                    "{:<16}  {:<13}  {:<13}  generated in the target (computed there, not copied)",
                    "length_hours", "numeric", "numeric"
                )
                .as_str()
            ),
            "{stdout}"
        );
        assert!(
            stdout.contains("ok: the target can take every column; nothing was written"),
            "{stdout}"
        );
        let out = run_job(&job.path);
        assert_exit(&out, 0);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(stdout.contains("rows 1,000 "), "{stdout}");
        assert_eq!(pair.assert_same("public.film", "public.film").await, 1000);
        assert_eq!(pair.target.scalar_i64(MISCOMPUTED).await, 0);
        let out = stride(&["verify", job.path.to_str().unwrap()], &[]);
        assert_exit(&out, 0);
    }
}

/// A table of built-in types only, with the hours generated where `hours` says.
fn runs_ddl(hours: &str) -> String {
    format!(
        "CREATE TABLE public.runs (id bigint PRIMARY KEY, name text, length smallint, length_hours {hours});"
    )
}

const RUNS_ROWS: &str = "INSERT INTO public.runs (id, name, length)
    SELECT g, CASE WHEN g % 9 = 0 THEN NULL ELSE 'run ' || g END,
           CASE WHEN g % 13 = 0 THEN NULL WHEN g = 1 THEN 32767 WHEN g = 2 THEN -32768 ELSE g % 500 END
    FROM generate_series(1, 5000) g;";

/// Generated only in the target: the source's values (wrong ones, here) are not
/// copied, the target computes its own; the other columns still pass through as
/// binary COPY; listing the column in `source.columns` is exit 2, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_generated_only_in_the_target_is_left_out_of_the_copy() {
    let pair = Pair::new("gen_target").await;
    pair.source.exec(&runs_ddl("numeric")).await;
    pair.source.exec(RUNS_ROWS).await;
    // Values the target's expression would never give.
    pair.source
        .exec("UPDATE public.runs SET length_hours = -1 WHERE id % 2 = 0")
        .await;
    pair.target
        .exec(&runs_ddl(
            "numeric GENERATED ALWAYS AS (round(length / 60.0, 2)) STORED",
        ))
        .await;
    let copied = "(SELECT id, name, length FROM public.runs)";
    // Replace's staging table and upsert's merge take the same columns.
    for (method, mode) in [
        ("copy", "truncate"),
        ("insert", "truncate"),
        ("copy", "replace"),
        ("insert", "upsert"),
    ] {
        let job = job_file(&job_text(
            &pair,
            "table = \"public.runs\"",
            "[partition]\ncolumn = \"id\"\ncount = 4\n[run]\nverify = \"checksum\"",
            &format!("method = \"{method}\"\nmode = \"{mode}\"\ncreate = \"never\""),
        ));
        let out = stride(&["check", job.path.to_str().unwrap()], &[]);
        assert_exit(&out, 0);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            computed_line(&stdout, "length_hours").as_deref(),
            Some(
                format!(
                    "{:<12}  {:<11}  {:<11}  generated in the target (computed there, not copied)",
                    "length_hours", "numeric", "numeric"
                )
                .as_str()
            ),
            "{stdout}"
        );
        // The plan's SQL is the run's: without the column.
        let out = stride(
            &["plan", "--format", "json", job.path.to_str().unwrap()],
            &[],
        );
        assert_exit(&out, 0);
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(plan["columns"], serde_json::json!(["id", "name", "length"]));
        assert_eq!(
            plan["partitions"][1]["sql"],
            "SELECT \"id\", \"name\", \"length\" FROM \"public\".\"runs\" WHERE (\"id\" >= '1251'::int8 AND \"id\" < '2501'::int8)"
        );
        let out = run_job(&job.path);
        assert_exit(&out, 0);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        match method {
            "copy" => assert!(stdout.contains("(binary COPY)"), "{stdout}"),
            _ => assert!(stdout.contains("(INSERT, 1000 rows a batch"), "{stdout}"),
        }
        let source = pair.source.checksum(copied).await;
        assert_eq!(source.0, 5000);
        assert_eq!(
            source,
            pair.target.checksum(copied).await,
            "{method} {mode}"
        );
        let miscomputed = MISCOMPUTED.replace("public.film", "public.runs");
        assert_eq!(pair.target.scalar_i64(&miscomputed).await, 0, "{method}");
        assert_eq!(
            pair.target
                .scalar_i64("SELECT count(*) FROM public.runs WHERE length_hours = 0.77")
                .await,
            9,
            "46 minutes is 0.77 hours: ids 46, 546, ... 4546, but 546's length is NULL"
        );
    }

    // Named in source.columns: refused before anything is written.
    pair.target
        .exec("TRUNCATE public.runs; DROP TABLE public.stride_checkpoints")
        .await;
    let job = job_file(&job_text(
        &pair,
        "table = \"public.runs\"\ncolumns = [\"id\", \"length\", \"length_hours\"]",
        "",
        "create = \"never\"",
    ));
    for command in ["check", "run"] {
        let out = stride(&[command, job.path.to_str().unwrap()], &[]);
        assert_exit(&out, 2);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(
                "source.columns: column \"length_hours\" is a generated column in the target \"public\".\"runs\", which computes it and cannot take a copied value (expected source.columns without it: the target fills it)"
            ),
            "{}",
            text(&out)
        );
    }
    assert_eq!(pair.target.count("public.runs").await, 0);
    assert_eq!(
        pair.target
            .scalar_i64("SELECT count(*) FROM pg_tables WHERE tablename = 'stride_checkpoints'")
            .await,
        0,
        "nothing written, not even the checkpoint table"
    );
}

/// Generated only in the source: its values are data, copied into the target's
/// plain column with both methods; a target stride creates holds them in a
/// plain column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_generated_only_in_the_source_is_copied_as_data() {
    let pair = Pair::new("gen_source").await;
    pair.source
        .exec(&format!("{FILM_TYPES}{}", film_ddl(GENERATED)))
        .await;
    pair.source.exec(FILM_ROWS).await;
    pair.target
        .exec(&format!("{FILM_TYPES}{}", film_ddl("numeric")))
        .await;
    for method in ["copy", "insert"] {
        let job = film_job(&pair, method, "", "never");
        let out = run_job(&job.path);
        assert_exit(&out, 0);
        assert_eq!(pair.assert_same("public.film", "public.film").await, 1000);
    }
    // Created by stride: a plain column holding the source's values.
    pair.target.exec("DROP TABLE public.film").await;
    let job = film_job(&pair, "copy", "", "if-missing");
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert_eq!(pair.assert_same("public.film", "public.film").await, 1000);
    assert_eq!(
        pair.target
            .scalar_string("SELECT attgenerated::text FROM pg_attribute WHERE attrelid = 'public.film'::regclass AND attname = 'length_hours'")
            .await,
        ""
    );
    let (source, target) = (
        pair.source.checksum(COPIED).await,
        pair.target.checksum(COPIED).await,
    );
    assert_eq!(source, target);
}

/// Identity columns, `ALWAYS` and `BY DEFAULT`, keep the source's values with
/// both methods, and their sequences move past them: the next insert with the
/// default gets the next value after the largest copied one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_columns_keep_the_source_values_and_move_their_sequences() {
    let pair = Pair::new("identity").await;
    let ddl = "CREATE TABLE public.staff (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text);
               CREATE TABLE public.store (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name text);";
    pair.source.exec(ddl).await;
    // Gaps, and a largest value far from the row count.
    pair.source
        .exec(
            "INSERT INTO public.staff (id, name) OVERRIDING SYSTEM VALUE
                 SELECT g * 7, 'staff ' || g FROM generate_series(1, 700) g;
             INSERT INTO public.store (id, name) SELECT g * 11, 'store ' || g FROM generate_series(1, 300) g;
             INSERT INTO public.store (id, name) VALUES (9000000000, 'big');",
        )
        .await;
    for method in ["copy", "insert"] {
        pair.target
            .exec("DROP TABLE IF EXISTS public.staff, public.store, public.stride_checkpoints")
            .await;
        pair.target.exec(ddl).await;
        for (table, count, next) in [("staff", 700, 4901_i64), ("store", 301, 9000000001)] {
            let job = job_file(&job_text(
                &pair,
                &format!("table = \"public.{table}\""),
                "[partition]\ncolumn = \"id\"\ncount = 2",
                &format!("method = \"{method}\"\ncreate = \"never\""),
            ));
            let out = run_job(&job.path);
            assert_exit(&out, 0);
            let name = format!("public.{table}");
            assert_eq!(pair.assert_same(&name, &name).await, count, "{method}");
            assert_eq!(
                pair.target
                    .scalar_i64(&format!(
                        "INSERT INTO public.{table} (name) VALUES ('new') RETURNING id::int8"
                    ))
                    .await,
                next,
                "{method} {table}"
            );
        }
    }
}
