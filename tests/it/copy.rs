//! The copy itself: partition semantics on real data, modes, create, failures.

use std::time::Duration;

use crate::common::*;

/// A table whose partition key has NULLs, values below and above the bounds, and
/// the type's extremes.
async fn seed_keys(db: &TestDb) {
    db.exec(
        "CREATE TABLE public.events (id bigint, k integer, note text);
         INSERT INTO public.events
           SELECT g, CASE WHEN g % 17 = 0 THEN NULL ELSE (g * 7919) % 1300 - 150 END, 'row ' || g
           FROM generate_series(1, 5000) g;
         INSERT INTO public.events VALUES
           (-1, -2147483648, 'int min'), (-2, 2147483647, 'int max'),
           (-3, NULL, NULL), (-4, 0, 'lower bound'), (-5, 1000, 'upper bound'), (-6, 999, 'just below upper');",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nulls_and_out_of_bounds_values_are_copied_once_with_both_methods() {
    for method in ["copy", "insert"] {
        let pair = Pair::new(&format!("bounds_{method}")).await;
        seed_keys(&pair.source).await;
        let job = job_file(&job_text(
            &pair,
            "table = \"public.events\"",
            "[partition]\ncolumn = \"k\"\nlower_bound = 0\nupper_bound = 1000\ncount = 10",
            &format!("method = \"{method}\"\nbatch_size = 333"),
        ));
        let out = run_job(&job.path);
        assert_exit(&out, 0);
        let rows = pair.assert_same("public.events", "public.events").await;
        assert_eq!(rows, 5006);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("partitions 10 written of 10"), "{stdout}");
        assert!(stdout.contains("rows 5,006"), "{stdout}");
        assert!(stdout.contains("< 100 or NULL"), "{stdout}");
        assert!(stdout.contains(">= 900"), "{stdout}");
    }
}

/// Rows wide enough that a batch of `batch_size` rows would pass the row path's
/// byte bound: the batch is sent in several statements, every row exactly once,
/// NULLs and empty strings kept apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_sends_wide_rows_in_byte_bounded_batches() {
    let pair = Pair::new("wide_insert").await;
    pair.source
        .exec(
            "CREATE TABLE public.wide (id bigint PRIMARY KEY, body text, tail text);
             INSERT INTO public.wide
               SELECT g, CASE WHEN g % 5 = 0 THEN NULL ELSE repeat(md5(g::text), 64) END,
                      CASE WHEN g % 7 = 0 THEN '' WHEN g % 11 = 0 THEN NULL ELSE 'ü ' || g END
               FROM generate_series(1, 3000) g;",
        )
        .await;
    let job = job_file(&job_text(
        &pair,
        "table = \"public.wide\"",
        "",
        "table = \"public.wide\"\nmethod = \"insert\"\nbatch_size = 10000",
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    assert_eq!(pair.assert_same("public.wide", "public.wide").await, 3000);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("rows 3,000"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_bounds_on_dates_timestamps_and_bigint_extremes() {
    let pair = Pair::new("auto").await;
    pair.source
        .exec(
            "CREATE TABLE t (id bigint, d date, ts timestamp, tz timestamptz);
             INSERT INTO t SELECT g, DATE '2021-01-01' + (g % 400), TIMESTAMP '2021-01-01' + g * INTERVAL '37 minutes 1.5 seconds',
                                  TIMESTAMPTZ '2021-01-01 00:00:00+05' + g * INTERVAL '1 hour'
                           FROM generate_series(1, 3000) g;
             INSERT INTO t VALUES (9223372036854775807, 'infinity', 'infinity', '-infinity'),
                                  (-9223372036854775808, '-infinity', NULL, NULL), (NULL, NULL, NULL, NULL);",
        )
        .await;
    for column in ["id", "d", "ts", "tz"] {
        let job = job_file(&job_text(
            &pair,
            "table = \"t\"",
            &format!("[partition]\ncolumn = \"{column}\"\ncount = 7"),
            "mode = \"truncate\"",
        ));
        let out = run_job(&job.path);
        assert_exit(&out, 0);
        assert_eq!(
            pair.assert_same("t", "t").await,
            3003,
            "partitioned on {column}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("partitions 7 written of 7"),
            "{column}: {stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_empties_once_and_append_adds() {
    let pair = Pair::new("modes").await;
    seed_keys(&pair.source).await;
    pair.target
        .exec("CREATE TABLE public.events (id bigint, k integer, note text); INSERT INTO public.events VALUES (1, 1, 'stale');")
        .await;
    let append = job_file(&job_text(
        &pair,
        "table = \"public.events\"",
        "[partition]\ncolumn = \"id\"\ncount = 3",
        "",
    ));
    assert_exit(&run_job(&append.path), 0);
    assert_eq!(pair.target.count("public.events").await, 5007);
    // A finished append job is not appended again by accident...
    let again = run_job(&append.path);
    assert_exit(&again, 0);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to do: this job already finished"),
        "{}",
        text(&again)
    );
    assert_eq!(pair.target.count("public.events").await, 5007);
    // ...nor by a bare --restart (exit 2, nothing written)...
    let restart = stride(&["run", "--restart", append.path.to_str().unwrap()], &[]);
    assert_exit(&restart, 2);
    assert_eq!(pair.target.count("public.events").await, 5007);
    // ...only on purpose.
    let restart = stride(
        &[
            "run",
            "--restart",
            "--append-again",
            append.path.to_str().unwrap(),
        ],
        &[],
    );
    assert_exit(&restart, 0);
    assert_eq!(pair.target.count("public.events").await, 5006 * 2 + 1);

    let truncate = job_file(&job_text(
        &pair,
        "table = \"public.events\"",
        "[partition]\ncolumn = \"id\"\ncount = 3",
        "mode = \"truncate\"",
    ));
    assert_exit(&run_job(&truncate.path), 0);
    assert_eq!(
        pair.assert_same("public.events", "public.events").await,
        5006
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_if_missing_copies_names_types_and_not_null() {
    let pair = Pair::new("create").await;
    pair.source
        .exec(
            "CREATE SCHEMA \"My Schema\";
             CREATE TABLE \"My Schema\".\"Mixed.Case\" (\"Id\" integer NOT NULL, \"some col\" numeric(12,4), v varchar(7) NOT NULL, ts timestamp(3) with time zone);
             INSERT INTO \"My Schema\".\"Mixed.Case\" SELECT g, g / 7.0, 'v' || (g % 1000), now() FROM generate_series(1, 2000) g;",
        )
        .await;
    pair.target.exec("CREATE SCHEMA \"Other\"").await;
    let job = job_file(&job_text(
        &pair,
        "table = '\"My Schema\".\"Mixed.Case\"'",
        "[partition]\ncolumn = \"Id\"\ncount = 4",
        "table = '\"Other\".\"Copy\"'",
    ));
    assert_exit(&run_job(&job.path), 0);
    pair.assert_same("\"My Schema\".\"Mixed.Case\"", "\"Other\".\"Copy\"")
        .await;
    let columns = "SELECT string_agg(format('%s %s %s', attname, format_type(atttypid, atttypmod), attnotnull), ', ' ORDER BY attnum)
                   FROM pg_attribute WHERE attrelid = '\"Other\".\"Copy\"'::regclass AND attnum > 0";
    assert_eq!(
        pair.target.scalar_string(columns).await,
        "Id integer t, some col numeric(12,4) f, v character varying(7) t, ts timestamp(3) with time zone f"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_source_with_partitions_and_where() {
    let pair = Pair::new("query").await;
    seed_keys(&pair.source).await;
    let job = job_file(&job_text(
        &pair,
        "query = \"SELECT id, k, upper(note) AS note FROM public.events WHERE id > 0\"\nwhere = \"k IS DISTINCT FROM 5\"",
        "[partition]\ncolumn = \"k\"\nlower_bound = 0\nupper_bound = 1000\ncount = 4",
        "table = \"copied\"",
    ));
    assert_exit(&run_job(&job.path), 0);
    pair.source
        .exec("CREATE TABLE expected AS SELECT id, k, upper(note) AS note FROM public.events WHERE id > 0 AND k IS DISTINCT FROM 5")
        .await;
    assert_eq!(
        pair.assert_same("expected", "copied").await,
        5000 - pair
            .source
            .count("public.events WHERE k = 5 AND id > 0")
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_partition_rolls_back_and_the_summary_says_what_was_written() {
    let pair = Pair::new("fail").await;
    seed_keys(&pair.source).await;
    // Only rows with id > 4000 break the target's constraint: the last partition of 5.
    pair.target
        .exec("CREATE TABLE public.events (id bigint CHECK (id <= 4000), k integer, note text)")
        .await;
    let job = job_file(&job_text(
        &pair,
        "table = \"public.events\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 5001\ncount = 5\n[run]\nparallelism = 1",
        "",
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("copy FAILED"), "{stdout}");
    assert!(stdout.contains("partitions 4 written of 5"), "{stdout}");
    assert!(
        stdout.contains("written and committed: 0, 1, 2, 3"),
        "{stdout}"
    );
    assert!(stderr.contains("violates check constraint"), "{stderr}");
    assert!(stderr.contains("partition 4 (>= 4001)"), "{stderr}");
    // Partitions 0..=3 hold ids < 4001 (and the negative ones): all of them, nothing else.
    assert_eq!(pair.target.count("public.events").await, 4006);
    assert_eq!(pair.target.count("public.events WHERE id > 4000").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_prints_the_exact_sql_and_writes_nothing() {
    let pair = Pair::new("plan").await;
    seed_keys(&pair.source).await;
    pair.source.exec("ANALYZE public.events").await;
    let job = job_file(&job_text(
        &pair,
        "table = \"public.events\"",
        "[partition]\ncolumn = \"k\"\nlower_bound = 0\nupper_bound = 1000\ncount = 10",
        "",
    ));
    let out = stride(&["plan", job.path.to_str().unwrap()], &[]);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("SELECT \"id\", \"k\", \"note\" FROM \"public\".\"events\" WHERE (\"k\" < '100'::int4 OR \"k\" IS NULL)"),
        "{stdout}"
    );
    assert!(stdout.contains("WHERE \"k\" >= '900'::int4"), "{stdout}");
    assert!(
        stdout.contains("\n4 partitions at once (run.parallelism), the others queue\nthe run creates \"public\".\"events\":\n"),
        "{stdout}"
    );
    let all_at_once = stride(
        &[
            "plan",
            job.path.to_str().unwrap(),
            "--set",
            "run.parallelism=10",
        ],
        &[],
    );
    assert_exit(&all_at_once, 0);
    assert!(!String::from_utf8_lossy(&all_at_once.stdout).contains("at once"));

    let out = stride(
        &["plan", "--format", "json", job.path.to_str().unwrap()],
        &[],
    );
    assert_exit(&out, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["partitions_at_once"], 4);
    let partitions = doc["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 10);
    assert_eq!(partitions[3]["lower"], "300");
    assert_eq!(partitions[3]["upper"], "400");
    let estimated: i64 = partitions
        .iter()
        .map(|p| p["estimated_rows"].as_i64().unwrap())
        .sum();
    assert!((4000..=6500).contains(&estimated), "estimates {estimated}");
    // Nothing was created on the target.
    assert_eq!(
        pair.target
            .scalar_i64("SELECT count(*) FROM pg_class WHERE relname = 'events'")
            .await,
        0
    );
}

/// Unless `run.parallelism` says otherwise, at most 4 partitions copy at once;
/// the others queue. Each partition's row with `id % 1000 = 1` waits 0.5 s in a
/// target trigger, then counts the COPY sessions on the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_four_partitions_copy_at_once_unless_parallelism_says_more() {
    let pair = Pair::new("at_once").await;
    pair.source
        .exec(
            "CREATE TABLE public.items (id int PRIMARY KEY, note text);
             INSERT INTO public.items SELECT g, 'n' || g FROM generate_series(1, 8000) g;",
        )
        .await;
    pair.target
        .exec(
            "CREATE TABLE public.items (id int PRIMARY KEY, note text);
             CREATE TABLE public.seen (copies int);
             CREATE FUNCTION count_copies() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.id % 1000 = 1 THEN
                 PERFORM pg_sleep(0.5);
                 INSERT INTO public.seen SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND state = 'active'
                    AND query LIKE 'COPY %FROM STDIN%';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER count_copies BEFORE INSERT ON public.items
               FOR EACH ROW EXECUTE FUNCTION count_copies();",
        )
        .await;
    let job = job_file(&job_text(
        &pair,
        "table = \"public.items\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 8001\ncount = 8",
        "mode = \"truncate\"",
    ));
    for (set, most) in [(None, 4), (Some("run.parallelism=8"), 8)] {
        pair.target.exec("TRUNCATE public.seen").await;
        let mut args = vec!["run", job.path.to_str().unwrap()];
        args.extend(set.iter().flat_map(|s| ["--set", s]));
        let out = stride(&args, &[]);
        assert_exit(&out, 0);
        assert_eq!(pair.assert_same("public.items", "public.items").await, 8000);
        assert_eq!(pair.target.count("public.seen").await, 8);
        assert_eq!(
            pair.target
                .scalar_i64("SELECT max(copies)::int8 FROM public.seen")
                .await,
            most,
            "{set:?}"
        );
    }
}

/// Servers that end idle sessions: the coordinator idles in its snapshot
/// transaction while partitions queue (`idle_in_transaction_session_timeout` on
/// the source would end it, and the later partitions could not import the
/// snapshot), and the run lock's session idles for the whole run
/// (`idle_session_timeout` on the target would end it and release the lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_outlasts_the_servers_idle_timeouts() {
    let pair = Pair::new("idle").await;
    pair.source
        .exec(&format!(
            "CREATE TABLE public.items (id int PRIMARY KEY, note text);
             INSERT INTO public.items SELECT g, 'n' || g FROM generate_series(1, 640) g;
             ALTER DATABASE \"{}\" SET idle_in_transaction_session_timeout = '300ms';",
            pair.source.name
        ))
        .await;
    // 16 partitions of 40 rows, 4 at once, 10 ms a row: about 1.6 s in all.
    pair.target
        .exec(&format!(
            "CREATE TABLE public.items (id int PRIMARY KEY, note text);
             CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS
               $$BEGIN PERFORM pg_sleep(0.01); RETURN NEW; END$$;
             CREATE TRIGGER slow BEFORE INSERT ON public.items
               FOR EACH ROW EXECUTE FUNCTION slow();
             ALTER DATABASE \"{}\" SET idle_session_timeout = '300ms';",
            pair.target.name
        ))
        .await;
    let job = job_file(&job_text(
        &pair,
        "table = \"public.items\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 641\ncount = 16",
        "mode = \"truncate\"",
    ));
    let running = Running::start(&["run", job.path.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(1000));
    // The run lock is the one advisory lock on a single 64-bit key (objsubid 1);
    // the partitions' claims and lock checks use two-int4 keys (objsubid 2).
    let locks = pair
        .target
        .scalar_i64(&format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
              WHERE l.locktype = 'advisory' AND l.granted AND d.datname = '{}'
                AND l.objsubid = 1",
            pair.target.name
        ))
        .await;
    let out = running.finish();
    assert_exit(&out, 0);
    assert_eq!(
        locks,
        1,
        "the run lock was not held after 1 s: {}",
        text(&out)
    );
    assert_eq!(pair.assert_same("public.items", "public.items").await, 640);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_partition_reads_one_snapshot_while_the_source_changes() {
    let pair = Pair::new("snapshot").await;
    pair.source
        .exec(
            "CREATE TABLE live (id bigserial PRIMARY KEY, k integer NOT NULL);
             INSERT INTO live (k) SELECT g % 8 FROM generate_series(1, 80000) g;",
        )
        .await;
    // A writer commits one row at a time, in id order, for as long as the copy runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut conn = pair.source.conn().await;
        tokio::spawn(async move {
            let mut commits = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                sqlx::Executor::execute(
                    &mut conn,
                    "INSERT INTO live (k) VALUES ((random() * 7)::int)",
                )
                .await
                .unwrap();
                commits += 1;
            }
            commits
        })
    };
    // Each row carries the snapshot its partition's transaction read.
    let job = job_file(&job_text(
        &pair,
        "query = \"SELECT id, k, pg_current_snapshot()::text AS snap FROM live\"",
        "[partition]\ncolumn = \"k\"\nlower_bound = 0\nupper_bound = 8\ncount = 8\n[run]\nparallelism = 2",
        "table = \"copied\"",
    ));
    let path = job.path.clone();
    let out = tokio::task::spawn_blocking(move || run_job(&path))
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let commits = writer.await.unwrap();
    assert_exit(&out, 0);
    assert!(commits > 0, "the writer committed nothing during the copy");
    assert_eq!(
        pair.target
            .scalar_i64("SELECT count(DISTINCT snap) FROM copied")
            .await,
        1,
        "partitions read different snapshots"
    );
    // One writer committing in id order: a single snapshot sees exactly ids 1..=n.
    let (count, distinct, max): (i64, i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id), max(id) FROM copied")
            .fetch_one(&mut pair.target.conn().await)
            .await
            .unwrap();
    assert_eq!((count, distinct), (max, max), "rows lost or doubled");
    assert!(count >= 80000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_rolls_back_partitions_in_flight_and_exits_130() {
    let pair = Pair::new("sigint").await;
    pair.source
        .exec("CREATE TABLE big (id bigint, pad text); INSERT INTO big SELECT g, repeat('x', 50) FROM generate_series(1, 400000) g;")
        .await;
    let job = job_file(&job_text(
        &pair,
        "table = \"big\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 400001\ncount = 40\n[run]\nparallelism = 1",
        "method = \"insert\"\nbatch_size = 500",
    ));
    // Interrupt once the first partition is committed, so some are written and one is in flight.
    let running =
        Running::start(&["run", job.path.to_str().unwrap()]).wait_for_line("partition written");
    running.signal("INT");
    let out = running.finish();
    assert_exit(&out, 130);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("copy INTERRUPTED"), "{stdout}");
    assert!(stdout.contains("rolled back"), "{stdout}");
    // Exactly the partitions the summary calls written are in the target, whole.
    let written: Vec<usize> = stdout
        .lines()
        .filter(|l| l.ends_with(" written"))
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(!written.is_empty() && written.len() < 40, "{stdout}");
    let expected: i64 = written.len() as i64 * 10_000;
    assert_eq!(pair.target.count("big").await, expected, "{stdout}");
    for p in &written {
        let lo = *p as i64 * 10_000 + 1;
        let n = pair
            .target
            .count(&format!("big WHERE id >= {lo} AND id < {}", lo + 10_000))
            .await;
        assert_eq!(n, 10_000, "partition {p} is not whole");
    }
    // And they hold the source's rows of those partitions, value for value.
    let ranges = written
        .iter()
        .map(|p| format!("(id - 1) / 10000 = {p}"))
        .collect::<Vec<_>>()
        .join(" OR ");
    assert_eq!(
        pair.source
            .checksum(&format!("(SELECT * FROM big WHERE {ranges})"))
            .await,
        pair.target.checksum("big").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copying_a_table_onto_itself_is_refused() {
    let db = TestDb::new("itself").await;
    db.exec("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100);")
        .await;
    let job = job_file(&format!(
        "[source]\nurl = \"{0}\"\ntable = \"t\"\n[target]\nurl = \"{0}\"\ntable = \"public.t\"\nmode = \"truncate\"\n",
        db.url
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is the source table itself"),
        "{}",
        text(&out)
    );
    assert_eq!(db.count("t").await, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_interrupted_while_committing_is_reported_as_it_ended() {
    let pair = Pair::new("commit_window").await;
    pair.source
        .exec("CREATE TABLE slow (id int); INSERT INTO slow SELECT generate_series(1, 20);")
        .await;
    // Partition 0 (it holds id 1) spends 2 s in its COMMIT, in a deferred trigger.
    pair.target
        .exec(
            "CREATE TABLE slow (id int);
             CREATE FUNCTION nap() RETURNS trigger LANGUAGE plpgsql AS
               $$BEGIN IF NEW.id = 1 THEN PERFORM pg_sleep(2); END IF; RETURN NULL; END$$;
             CREATE CONSTRAINT TRIGGER nap AFTER INSERT ON slow DEFERRABLE INITIALLY DEFERRED
               FOR EACH ROW EXECUTE FUNCTION nap();",
        )
        .await;
    let job = job_file(&job_text(
        &pair,
        "table = \"slow\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 21\ncount = 2",
        "",
    ));
    let running = Running::start(&["run", job.path.to_str().unwrap()])
        .wait_for_line("partition written partition=1");
    // Partition 1 is committed; partition 0 is inside its 2 s COMMIT.
    std::thread::sleep(Duration::from_millis(300));
    running.signal("INT");
    let out = running.finish();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(pair.assert_same("slow", "slow").await, 20, "{stdout}");
    assert_exit(&out, 0);
    assert!(stdout.contains("partitions 2 written of 2"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_differences_and_repair_copies_them_again() {
    let pair = Pair::new("verify").await;
    seed_keys(&pair.source).await;
    let job = job_file(&job_text(
        &pair,
        "table = \"public.events\"",
        "[partition]\ncolumn = \"k\"\nlower_bound = 0\nupper_bound = 1000\ncount = 4\n[run]\nverify = \"checksum\"",
        "mode = \"truncate\"",
    ));
    let path = job.path.to_str().unwrap();
    let out = run_job(&job.path);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("verify (row counts and checksums): 4 of 4 partitions match"),
        "{stdout}"
    );

    // A lost row in partition 1, a changed value in partition 3.
    pair.target
        .exec("DELETE FROM public.events WHERE id = (SELECT min(id) FROM public.events WHERE k = 300);
               UPDATE public.events SET note = 'tampered' WHERE k = 800;")
        .await;
    let by_count = stride(&["verify", "--by", "count", path], &[]);
    assert_exit(&by_count, 1);
    let stdout = String::from_utf8_lossy(&by_count.stdout);
    assert!(
        stdout.contains("verify (row counts): 3 of 4 partitions match"),
        "{stdout}"
    );

    let checksum = stride(&["verify", path], &[]);
    assert_exit(&checksum, 1);
    let stdout = String::from_utf8_lossy(&checksum.stdout);
    assert!(stdout.contains("2 of 4 partitions match"), "{stdout}");
    assert!(stdout.contains("[250, 500)"), "{stdout}");
    assert!(
        stdout.contains("DIFFERENT (same count, other values)"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&checksum.stderr).contains("--repair"),
        "{}",
        text(&checksum)
    );

    let repair = stride(&["verify", "--repair", path], &[]);
    assert_exit(&repair, 0);
    let stdout = String::from_utf8_lossy(&repair.stdout);
    assert!(
        stdout.contains("repaired partition 1 ([250, 500))"),
        "{stdout}"
    );
    assert!(stdout.contains("repaired partition 3 (>= 750)"), "{stdout}");
    assert!(!stdout.contains("repaired partition 0"), "{stdout}");
    pair.assert_same("public.events", "public.events").await;
    assert_exit(&stride(&["verify", path], &[]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_does_not_add_up_fails_the_coverage_check() {
    let pair = Pair::new("coverage").await;
    seed_keys(&pair.source).await;
    // A volatile query draws other rows for each partition than for the whole count.
    let job = job_file(&job_text(
        &pair,
        "query = \"SELECT id, k FROM public.events WHERE random() < 0.5\"",
        "[partition]\ncolumn = \"k\"\nlower_bound = 0\nupper_bound = 1000\ncount = 4",
        "table = \"sampled\"",
    ));
    // The two counts of about 2,500 rows each coincide by chance about 1% of the
    // time; three runs that all coincide would be a one-in-a-million fluke.
    let mut outputs = Vec::new();
    for _ in 0..3 {
        let out = stride(
            &[
                "run",
                "--restart",
                "--append-again",
                job.path.to_str().unwrap(),
            ],
            &[],
        );
        let failed = out.status.code() == Some(1);
        outputs.push(out);
        if failed {
            break;
        }
    }
    let out = outputs.last().unwrap();
    assert_exit(out, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("coverage check failed: the partitions copied"),
        "{}",
        text(out)
    );
    // Running it again must not pass it off as finished by skipping every partition.
    let again = run_job(&job.path);
    assert_exit(&again, 1);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("failed its check"),
        "{}",
        text(&again)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_needs_the_partition_column_among_the_copied_ones() {
    let pair = Pair::new("verify_key").await;
    seed_keys(&pair.source).await;
    let job = job_file(&job_text(
        &pair,
        "table = \"public.events\"\ncolumns = [\"note\"]",
        "[partition]\ncolumn = \"id\"\ncount = 4\n[run]\nverify = \"count\"",
        "",
    ));
    for command in ["run", "check"] {
        let out = stride(&[command, job.path.to_str().unwrap()], &[]);
        assert_exit(&out, 2);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(
                "run.verify: the partition column \"id\" is not among the copied columns"
            ),
            "{command}: {}",
            text(&out)
        );
    }
    assert_eq!(
        pair.target
            .scalar_i64("SELECT count(*) FROM pg_class WHERE relname = 'events'")
            .await,
        0,
        "nothing is written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_into_the_same_table_waits_its_turn() {
    let pair = Pair::new("lock").await;
    pair.source
        .exec("CREATE TABLE big (id bigint, pad text); INSERT INTO big SELECT g, repeat('x', 50) FROM generate_series(1, 200000) g;")
        .await;
    let job = job_file(&job_text(
        &pair,
        "table = \"big\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 200001\ncount = 20\n[run]\nparallelism = 1",
        "mode = \"truncate\"\nmethod = \"insert\"\nbatch_size = 500",
    ));
    let first =
        Running::start(&["run", job.path.to_str().unwrap()]).wait_for_line("partition written");
    // The first run is copying: a second one (even with --restart) must not start.
    let second = stride(&["run", "--restart", job.path.to_str().unwrap()], &[]);
    assert_exit(&second, 1);
    assert!(
        String::from_utf8_lossy(&second.stderr)
            .contains("another stride run is writing into \"big\""),
        "{}",
        text(&second)
    );
    let out = first.finish();
    assert_exit(&out, 0);
    assert_eq!(pair.assert_same("big", "big").await, 200_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_at_commit_is_not_mistaken_for_a_lost_connection() {
    let pair = Pair::new("commit_error").await;
    seed_keys(&pair.source).await;
    // A deferred unique constraint fails at COMMIT, for the partition holding id 7.
    pair.target
        .exec("CREATE TABLE public.events (id bigint UNIQUE DEFERRABLE INITIALLY DEFERRED, k integer, note text);
               INSERT INTO public.events VALUES (7, 0, 'already here');")
        .await;
    let job = job_file(&job_text(
        &pair,
        "table = \"public.events\"",
        "[partition]\ncolumn = \"id\"\nlower_bound = 1\nupper_bound = 5001\ncount = 2\n[run]\nparallelism = 1",
        "",
    ));
    let out = run_job(&job.path);
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("duplicate key value violates unique constraint"),
        "{stderr}"
    );
    assert!(!stderr.contains("connection broke"), "{stderr}");
    assert!(
        !stderr.contains("retry"),
        "a constraint violation is not retried: {stderr}"
    );
}
