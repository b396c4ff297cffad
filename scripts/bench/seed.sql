-- Fill the empty public.covid_cases (scripts/bench/table.sql) with :rows rows,
-- ids 1 .. :rows. Every value is a function of id (hashint8, modulo), not of
-- random(), so two seeds of the same size give identical tables:
--
--   psql "$URL" -v rows=5000000 -f scripts/bench/seed.sql
--
-- About 145 bytes a row on disk with the primary key (720 MB at 5,000,000 rows,
-- as in the issue); tested is NULL in exactly 10 % of rows (id % 10 = 0), note
-- in about 30 %.

\set ON_ERROR_STOP on
\if :{?rows}
\else
  \set rows 5000000
\endif

-- 40 (state, district) places; row id lands on place id % 40.
CREATE TEMP TABLE bench_places AS
SELECT (row_number() OVER () - 1)::int AS pid, state, district
FROM (VALUES
    ('Andhra Pradesh', 'East Godavari'), ('Andhra Pradesh', 'Chittoor'),
    ('Assam', 'Kamrup Metropolitan'), ('Bihar', 'Patna'), ('Chhattisgarh', 'Raipur'),
    ('Goa', 'North Goa'), ('Goa', 'South Goa'), ('Gujarat', 'Ahmedabad'),
    ('Gujarat', 'Surat'), ('Haryana', 'Gurugram'), ('Himachal Pradesh', 'Kangra'),
    ('Jharkhand', 'Ranchi'), ('Karnataka', 'Bengaluru Urban'), ('Karnataka', 'Mysuru'),
    ('Kerala', 'Ernakulam'), ('Kerala', 'Malappuram'), ('Kerala', 'Thiruvananthapuram'),
    ('Madhya Pradesh', 'Indore'), ('Maharashtra', 'Pune'), ('Maharashtra', 'Mumbai'),
    ('Maharashtra', 'Thane'), ('Maharashtra', 'Nagpur'), ('Manipur', 'Imphal West'),
    ('Odisha', 'Khordha'), ('Punjab', 'Ludhiana'), ('Rajasthan', 'Jaipur'),
    ('Tamil Nadu', 'Chennai'), ('Tamil Nadu', 'Coimbatore'), ('Telangana', 'Hyderabad'),
    ('Uttar Pradesh', 'Lucknow'), ('Uttar Pradesh', 'Gautam Buddha Nagar'),
    ('Uttarakhand', 'Dehradun'), ('West Bengal', 'Kolkata'),
    ('West Bengal', 'North 24 Parganas'), ('Chandigarh', 'Chandigarh'),
    ('Delhi', 'South Delhi'), ('Delhi', 'New Delhi'), ('Jammu and Kashmir', 'Srinagar'),
    ('Ladakh', 'Leh'), ('Puducherry', 'Puducherry')
) AS p(state, district);

INSERT INTO public.covid_cases
SELECT g.id,
       p.state,
       p.district,
       c.confirmed,
       (c.confirmed * (0.90 + (g.h % 90) / 1000.0))::int,          -- recovered
       (c.confirmed * (0.006 + (g.h % 17) / 1000.0))::int,         -- deceased
       CASE WHEN g.h % 7 = 0 THEN c.confirmed / 500 ELSE 0 END,    -- other
       CASE WHEN g.id % 10 <> 0                                    -- tested, 10 % NULL
            THEN c.confirmed::bigint * (14 + g.h % 8) + g.h % 100000 END,
       date '2020-03-01' + g.day,
       timestamptz '2020-03-02 09:00:00+05:30' + g.day * interval '1 day'
           + (g.h2 % 36000) * interval '1 second',                 -- updated_at
       round((g.h2 % 100000000) / 10000.0, 4),                     -- ratio, < 10,000
       CASE WHEN g.h2 % 10 < 3 THEN NULL                           -- note, 30 % NULL
            ELSE (ARRAY['revised by the district officer', 'state bulletin',
                        'ICMR portal', 'late rural reports', 'migrated',
                        'provisional'])[1 + (g.h2 / 10 % 6)::int] END
FROM (
    SELECT n AS id,
           (n % 40)::int AS pid,
           (n / 40 % 610)::int AS day,                              -- 610 days
           abs(hashint8(n)::bigint) AS h,
           abs(hashint8(-n)::bigint) AS h2            -- independent of h
    FROM generate_series(1::bigint, :rows) AS n
) AS g
JOIN bench_places AS p USING (pid)
CROSS JOIN LATERAL (SELECT (g.h % 400000 + g.day * 50)::int AS confirmed) AS c;

DROP TABLE bench_places;
