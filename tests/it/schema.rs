//! Related tables in one job: a schema shaped like the DVD-rental sample (foreign
//! keys everywhere, a self-reference, a partitioned table), its tables listed
//! children first. stride runs them parents first, in order or concurrently,
//! and refuses a cycle among them.

use crate::common::*;

/// The schema, on source and target alike.
const DDL: &str =
        "CREATE TYPE mpaa_rating AS ENUM ('G', 'PG', 'PG-13', 'R', 'NC-17');
         CREATE DOMAIN year AS int CHECK (VALUE BETWEEN 1901 AND 2155);
         CREATE TABLE language (language_id int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE country (country_id int PRIMARY KEY, country text NOT NULL);
         CREATE TABLE city (city_id int PRIMARY KEY, city text NOT NULL,
             country_id int NOT NULL REFERENCES country);
         CREATE TABLE address (address_id int PRIMARY KEY, address text NOT NULL,
             city_id int NOT NULL REFERENCES city, phone text);
         CREATE TABLE actor (actor_id int PRIMARY KEY, first_name text, last_name text);
         CREATE TABLE store (store_id int PRIMARY KEY, manager_staff_id int NOT NULL,
             address_id int NOT NULL REFERENCES address);
         CREATE TABLE staff (staff_id int PRIMARY KEY, first_name text NOT NULL,
             address_id int NOT NULL REFERENCES address, store_id int NOT NULL REFERENCES store,
             reports_to int REFERENCES staff, picture bytea);
         CREATE TABLE film (film_id int PRIMARY KEY, title text NOT NULL, release_year year,
             language_id int NOT NULL REFERENCES language, rating mpaa_rating,
             special_features text[], rental_rate numeric(4,2));
         CREATE TABLE film_actor (actor_id int REFERENCES actor, film_id int REFERENCES film,
             PRIMARY KEY (actor_id, film_id));
         CREATE TABLE inventory (inventory_id int PRIMARY KEY, film_id int NOT NULL REFERENCES film,
             store_id int NOT NULL REFERENCES store);
         CREATE TABLE customer (customer_id int PRIMARY KEY, store_id int NOT NULL REFERENCES store,
             email text, address_id int NOT NULL REFERENCES address, active boolean);
         CREATE TABLE rental (rental_id int PRIMARY KEY, rental_date timestamptz NOT NULL,
             inventory_id int NOT NULL REFERENCES inventory, customer_id int NOT NULL REFERENCES customer,
             return_date timestamptz, staff_id int NOT NULL REFERENCES staff);
         CREATE TABLE payment (payment_id int NOT NULL, customer_id int NOT NULL REFERENCES customer,
             staff_id int NOT NULL REFERENCES staff, rental_id int REFERENCES rental,
             amount numeric(5,2) NOT NULL, payment_date timestamptz NOT NULL,
             PRIMARY KEY (payment_date, payment_id)) PARTITION BY RANGE (payment_date);
         CREATE TABLE payment_2026_01 PARTITION OF payment FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
         CREATE TABLE payment_2026_02 PARTITION OF payment FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
         CREATE TABLE payment_2026_03 PARTITION OF payment FOR VALUES FROM ('2026-03-01') TO ('2026-04-01');";

/// Generated rows: every foreign key satisfied, NULLs where a column allows them.
const ROWS: &str = "
    INSERT INTO language SELECT g, 'language ' || g FROM generate_series(1, 6) g;
    INSERT INTO country SELECT g, 'country ' || g FROM generate_series(1, 100) g;
    INSERT INTO city SELECT g, 'city ' || g, 1 + g % 100 FROM generate_series(1, 600) g;
    INSERT INTO address SELECT g, g || ' main street', 1 + g % 600,
        CASE WHEN g % 7 = 0 THEN NULL ELSE '555-' || g END FROM generate_series(1, 1200) g;
    INSERT INTO actor SELECT g, 'first ' || g, 'last ' || g FROM generate_series(1, 200) g;
    INSERT INTO store SELECT g, g, g FROM generate_series(1, 2) g;
    INSERT INTO staff SELECT g, 'staff ' || g, 10 + g, 1 + g % 2, CASE WHEN g > 1 THEN 1 END,
        CASE WHEN g = 2 THEN '\\x00ff'::bytea END FROM generate_series(1, 4) g;
    INSERT INTO film SELECT g, 'film ' || g, 1990 + g % 30, 1 + g % 6,
        (ARRAY['G', 'PG', 'PG-13', 'R', 'NC-17'])[1 + g % 5]::mpaa_rating,
        CASE WHEN g % 3 = 0 THEN NULL ELSE ARRAY['Trailers', 'Deleted Scenes'] END, (g % 5) + 0.99
        FROM generate_series(1, 1000) g;
    INSERT INTO film_actor SELECT 1 + g % 200, g FROM generate_series(1, 1000) g;
    INSERT INTO film_actor SELECT 1 + (g + 7) % 200, g FROM generate_series(1, 1000) g;
    INSERT INTO inventory SELECT g, 1 + g % 1000, 1 + g % 2 FROM generate_series(1, 4500) g;
    INSERT INTO customer SELECT g, 1 + g % 2, CASE WHEN g % 9 = 0 THEN NULL ELSE 'c' || g || '@example.com' END,
        100 + g % 1000, g % 11 <> 0 FROM generate_series(1, 600) g;
    INSERT INTO rental SELECT g, TIMESTAMPTZ '2026-01-01' + g * interval '5 minutes', 1 + g % 4500,
        1 + g % 600, CASE WHEN g % 13 = 0 THEN NULL ELSE TIMESTAMPTZ '2026-01-03' + g * interval '5 minutes' END,
        1 + g % 4 FROM generate_series(1, 16000) g;
    INSERT INTO payment SELECT g, 1 + g % 600, 1 + g % 4, CASE WHEN g % 17 = 0 THEN NULL ELSE g END,
        (g % 1000) / 100.0, TIMESTAMPTZ '2026-01-01' + g * interval '7 minutes'
        FROM generate_series(1, 16000) g;
    ANALYZE;";

/// Every table, children first (the reverse of an order that loads).
const TABLES: [&str; 13] = [
    "payment",
    "rental",
    "customer",
    "inventory",
    "film_actor",
    "film",
    "staff",
    "store",
    "actor",
    "address",
    "city",
    "country",
    "language",
];

/// Source and target with the schema, the source filled; `cycle`: one more
/// foreign key, from store to staff.
async fn schema_pair(label: &str, cycle: bool) -> Pair {
    let pair = Pair::new(label).await;
    pair.source.exec(DDL).await;
    pair.source.exec(ROWS).await;
    pair.target.exec(DDL).await;
    if cycle {
        // The store's manager is a member of its staff: staff -> store -> staff.
        let manager = "ALTER TABLE store ADD CONSTRAINT store_manager_staff_id_fkey \
                       FOREIGN KEY (manager_staff_id) REFERENCES staff";
        pair.source.exec(manager).await;
        pair.target.exec(manager).await;
    }
    pair
}

/// A job of every table, listed children first; rental and payment in 4
/// partitions each.
fn schema_job(pair: &Pair, run: &str) -> JobFile {
    let mut text = format!(
        "[source]\nurl = \"{}\"\n\n[target]\nurl = \"{}\"\n\n[run]\n{run}\n",
        pair.source.url, pair.target.url
    );
    for table in TABLES {
        text.push_str(&format!("\n[[tables]]\ntable = \"public.{table}\"\n"));
        let key = match table {
            "payment" => Some("payment_id"),
            "rental" => Some("rental_id"),
            _ => None,
        };
        if let Some(key) = key {
            text.push_str(&format!(
                "[tables.partition]\ncolumn = \"{key}\"\ncount = 4\n"
            ));
        }
    }
    job_file(&text)
}

/// Every table's rows on the target equal the source's, and the target still
/// holds every foreign key of the source, validated.
async fn assert_schema_copied(pair: &Pair) {
    for table in TABLES {
        let rows = pair.assert_same(table, table).await;
        assert!(rows > 0, "{table} is empty");
    }
    let keys = "SELECT string_agg(format('%s %s %s', conrelid::regclass, conname, \
                CASE WHEN convalidated THEN 'validated' ELSE 'NOT VALID' END), ', ' ORDER BY 1) \
                FROM pg_constraint WHERE contype = 'f' AND conparentid = 0";
    let source_keys = pair.source.scalar_string(keys).await;
    assert_eq!(pair.target.scalar_string(keys).await, source_keys);
    assert_eq!(
        source_keys.matches(" validated").count(),
        19,
        "{source_keys}"
    );
}

/// The order `plan` and `check` print for [`TABLES`].
const ORDER: &str = r#"tables in foreign-key order (parents first):
  1. "public"."actor"
  2. "public"."country"
  3. "public"."city" (after "public"."country")
  4. "public"."address" (after "public"."city")
  5. "public"."store" (after "public"."address")
  6. "public"."customer" (after "public"."store", "public"."address")
  7. "public"."staff" (after "public"."store", "public"."address")
  8. "public"."language"
  9. "public"."film" (after "public"."language")
  10. "public"."inventory" (after "public"."film", "public"."store")
  11. "public"."rental" (after "public"."customer", "public"."inventory", "public"."staff")
  12. "public"."payment" (after "public"."rental", "public"."customer", "public"."staff")
  13. "public"."film_actor" (after "public"."film", "public"."actor")
"#;

#[tokio::test]
async fn a_schema_listed_children_first_loads_parents_first() {
    let pair = schema_pair("schema_order", false).await;
    let job = schema_job(&pair, "");
    let path = job.path.to_str().unwrap();

    let plan = stride(&["plan", path], &[]);
    assert_exit(&plan, 0);
    let said = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(
        said.starts_with(&format!("{ORDER}\n== table \"public\".\"actor\"\n")),
        "{said}"
    );
    let check = stride(&["check", path], &[]);
    assert_exit(&check, 0);
    assert!(
        String::from_utf8_lossy(&check.stdout).starts_with(ORDER),
        "{}",
        text(&check)
    );

    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("tables 13 of 13 done"),
        "{}",
        text(&out)
    );
    assert_schema_copied(&pair).await;
    let verify = stride(&["verify", path], &[]);
    assert_exit(&verify, 0);
}

#[tokio::test]
async fn concurrent_tables_start_when_their_parents_are_done() {
    let pair = schema_pair("schema_concurrent", false).await;
    let job = schema_job(&pair, "tables = \"concurrent\"\nparallelism = 13");
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("tables 13 of 13 done"),
        "{}",
        text(&out)
    );
    assert_schema_copied(&pair).await;
    assert_exit(&stride(&["verify", job.path.to_str().unwrap()], &[]), 0);
}

#[tokio::test]
async fn a_failed_parent_leaves_its_descendants_not_started() {
    let pair = schema_pair("schema_parent_fails", false).await;
    // The target refuses one language row: film, and all that reads film, wait.
    pair.target
        .exec("ALTER TABLE language ADD CONSTRAINT no_six CHECK (language_id <> 6)")
        .await;
    let job = schema_job(&pair, "tables = \"concurrent\"\nparallelism = 13");
    let out = run_job(&job.path);
    assert_exit(&out, 1);
    let said = text(&out);
    assert!(said.contains("no_six"), "{said}");
    assert!(
        said.contains("tables 7 of 13 done, 1 failed, 5 not started"),
        "{said}"
    );
    for table in ["film", "inventory", "rental", "payment", "film_actor"] {
        assert_eq!(pair.target.count(table).await, 0, "{table}");
        let line = said
            .lines()
            .find(|l| l.starts_with(&format!("\"public\".\"{table}\" ")))
            .unwrap_or_else(|| panic!("no line for {table}: {said}"));
        assert!(line.ends_with("not started"), "{line}");
    }
    for table in [
        "actor", "country", "city", "address", "store", "customer", "staff",
    ] {
        pair.assert_same(table, table).await;
    }
}

#[tokio::test]
async fn a_cycle_among_the_tables_is_refused_naming_it() {
    let pair = schema_pair("schema_cycle", true).await;
    let job = schema_job(&pair, "");
    let out = run_job(&job.path);
    assert_exit(&out, 2);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
            "error: tables: the target's foreign keys form a cycle among \"public\".\"staff\", \"public\".\"store\" \
             (staff_store_id_fkey of \"public\".\"staff\", store_manager_staff_id_fkey of \"public\".\"store\") \
             (expected tables that load parents first: copy the tables of the cycle in a job of their own with one of these keys dropped)"
    );
    assert_eq!(
        pair.target
            .scalar_i64("SELECT count(*) FROM pg_class WHERE relname = 'stride_checkpoints'")
            .await,
        0,
        "nothing written"
    );
    for table in TABLES {
        assert_eq!(pair.target.count(table).await, 0, "{table}");
    }
}

#[tokio::test]
async fn a_kill_mid_run_and_a_rerun_end_exact() {
    let pair = schema_pair("schema_kill", false).await;
    let job = schema_job(&pair, "");
    let path = job.path.to_str().unwrap();
    // Killed as the first of rental's partitions commits (after the ten tables
    // before it, one partition each): rental is part written, payment not begun.
    let mut running = Running::start(&["run", path]);
    for _ in 0..11 {
        running = running.wait_for_line("partition written");
    }
    running.signal("KILL");
    let killed = running.finish();
    assert_eq!(killed.status.code(), None, "{}", text(&killed));
    assert_eq!(pair.target.count("payment").await, 0);

    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert_schema_copied(&pair).await;
    assert_exit(&stride(&["verify", path], &[]), 0);
}

#[tokio::test]
async fn a_pattern_copies_the_whole_schema_less_its_exclusions() {
    let pair = schema_pair("schema_pattern", false).await;
    // Not tables, or excluded: none is matched (the target has none of them).
    pair.source
        .exec(
            "CREATE VIEW customer_list AS SELECT customer_id, email FROM customer;
             CREATE MATERIALIZED VIEW film_count AS SELECT count(*) FROM film;
             CREATE TABLE audit_log (id int, said text);
             INSERT INTO audit_log VALUES (1, 'kept on the source');
             CREATE TABLE stride_checkpoints (fingerprint text, partition integer);
             INSERT INTO stride_checkpoints VALUES ('a run into this source', -1);",
        )
        .await;
    // The source's stride_checkpoints (it was once a target) is not matched either.
    let job = job_file(&format!(
        "[source]\nurl = \"{}\"\n\n[target]\nurl = \"{}\"\n\n\
         [[tables]]\ntable = \"public.*\"\nexclude = [\"public.audit_*\"]\n",
        pair.source.url, pair.target.url
    ));
    let path = job.path.to_str().unwrap();
    let plan = stride(&["plan", path], &[]);
    assert_exit(&plan, 0);
    let said = String::from_utf8_lossy(&plan.stdout).into_owned();
    let matched = "tables[0]: \"public.*\" excluding [\"public.audit_*\"] matches 13 tables: \
                   \"public\".\"actor\", \"public\".\"address\", \"public\".\"city\", \"public\".\"country\", \
                   \"public\".\"customer\", \"public\".\"film\", \"public\".\"film_actor\", \"public\".\"inventory\", \
                   \"public\".\"language\", \"public\".\"payment\", \"public\".\"rental\", \"public\".\"staff\", \
                   \"public\".\"store\"\n\n";
    assert!(said.starts_with(matched), "{said}");
    assert!(
        said[matched.len()..].starts_with(
            "tables in foreign-key order (parents first):\n  1. \"public\".\"actor\"\n"
        ),
        "{said}"
    );

    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("tables 13 of 13 done"),
        "{}",
        text(&out)
    );
    assert_schema_copied(&pair).await;
    assert_exit(&stride(&["verify", path], &[]), 0);
    assert_eq!(
        pair.target
            .scalar_i64("SELECT count(*) FROM pg_class WHERE relname IN ('audit_log', 'customer_list', 'film_count')")
            .await,
        0
    );
    // The target's checkpoint table holds its own runs only.
    assert_eq!(
        pair.target
            .scalar_i64("SELECT count(*) FROM stride_checkpoints WHERE fingerprint = 'a run into this source'")
            .await,
        0
    );
}

#[tokio::test]
async fn a_pattern_matching_nothing_is_refused_naming_it() {
    let pair = schema_pair("schema_no_match", false).await;
    let job = job_file(&format!(
        "[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n\
         [[tables]]\ntable = \"public.*\"\n[[tables]]\ntable = \"sales.order_*\"\n",
        pair.source.url, pair.target.url
    ));
    for command in ["run", "plan", "check"] {
        let out = stride(&[command, job.path.to_str().unwrap()], &[]);
        assert_exit(&out, 2);
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim_end(),
            "error: tables[1].table: \"sales.order_*\" matches no table of the source \
             (expected a pattern matching at least one table; views, materialized views, \
             foreign tables and partitions are not matched)"
        );
    }
    assert_eq!(
        pair.target
            .scalar_i64("SELECT count(*) FROM pg_class WHERE relname = 'stride_checkpoints'")
            .await,
        0,
        "nothing written"
    );
}

/// examples/whole-schema.toml, as shipped, copies the schema.
#[tokio::test]
async fn the_whole_schema_example_runs_as_shipped() {
    let pair = schema_pair("schema_example", false).await;
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/whole-schema.toml");
    let out = stride(
        &["run", example],
        &[
            ("SOURCE_URL", pair.source.url.as_str()),
            ("TARGET_URL", pair.target.url.as_str()),
        ],
    );
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("tables 13 of 13 done"),
        "{}",
        text(&out)
    );
    assert_schema_copied(&pair).await;
}
