-- Create and fill public.covid_cases with synthetic, deterministic Indian
-- COVID-19 district data (cumulative counts per district and day).
--
--   psql "$URL" -f scripts/seed-covid.sql                 # 1,000,000 rows
--   psql "$URL" -v rows=50000 -f scripts/seed-covid.sql   # custom size
--
-- Every value is a function of id (hashint8, modulo, smooth curves) rather
-- than random(), so two seeds with the same row count give identical tables.
-- Row n (0-based) is district n % D on day (n / D) % 610, D ~ 150 districts,
-- days 2020-03-01 .. 2021-10-31. Beyond D * 610 rows (~92k) the series repeats
-- with different noise, so (state, district, date) is not unique.

\set ON_ERROR_STOP on
\if :{?rows}
\else
  \set rows 1000000
\endif

DROP TABLE IF EXISTS public.covid_cases;

-- The primary key is added after the load, which is much faster.
CREATE TABLE public.covid_cases (
    id        bigint  NOT NULL,
    state     text    NOT NULL,
    district  text    NOT NULL,
    confirmed integer NOT NULL,
    recovered integer,
    deceased  integer,
    other     integer,
    tested    bigint,
    date      date    NOT NULL
);

-- 36 states / union territories, a few districts each; peak_k is roughly the
-- final cumulative case count (thousands) of an average district there.
CREATE TEMP TABLE covid_places AS
SELECT (row_number() OVER (ORDER BY s.sno, d.dno) - 1)::int AS pid,
       s.state,
       d.district,
       -- the first-listed (big city) district gets most cases
       (s.peak_k * 1600.0 / (1 + 0.35 * (d.dno - 1)))::float8 AS peak,
       -- case fatality ratio between 0.6 % and 2.2 %
       (0.006 + (s.sno * 7 % 17) / 1000.0)::float8 AS cfr
FROM (VALUES
    ( 1, 'Andhra Pradesh', 150, ARRAY['East Godavari', 'Chittoor', 'Guntur', 'Anantapur', 'Krishna', 'Visakhapatnam']),
    ( 2, 'Arunachal Pradesh', 12, ARRAY['Papum Pare', 'Changlang', 'Lohit', 'Tawang']),
    ( 3, 'Assam', 25, ARRAY['Kamrup Metropolitan', 'Dibrugarh', 'Nagaon', 'Cachar', 'Jorhat']),
    ( 4, 'Bihar', 20, ARRAY['Patna', 'Gaya', 'Muzaffarpur', 'Bhagalpur', 'Darbhanga']),
    ( 5, 'Chhattisgarh', 35, ARRAY['Raipur', 'Durg', 'Bilaspur', 'Rajnandgaon']),
    ( 6, 'Goa', 85, ARRAY['North Goa', 'South Goa']),
    ( 7, 'Gujarat', 25, ARRAY['Ahmedabad', 'Surat', 'Vadodara', 'Rajkot', 'Bhavnagar']),
    ( 8, 'Haryana', 35, ARRAY['Gurugram', 'Faridabad', 'Panipat', 'Ambala', 'Hisar']),
    ( 9, 'Himachal Pradesh', 18, ARRAY['Kangra', 'Mandi', 'Shimla', 'Solan']),
    (10, 'Jharkhand', 14, ARRAY['Ranchi', 'East Singhbhum', 'Dhanbad', 'Bokaro']),
    (11, 'Karnataka', 100, ARRAY['Bengaluru Urban', 'Mysuru', 'Tumakuru', 'Dakshina Kannada', 'Belagavi']),
    (12, 'Kerala', 330, ARRAY['Ernakulam', 'Malappuram', 'Kozhikode', 'Thiruvananthapuram', 'Thrissur']),
    (13, 'Madhya Pradesh', 15, ARRAY['Indore', 'Bhopal', 'Jabalpur', 'Gwalior']),
    (14, 'Maharashtra', 180, ARRAY['Pune', 'Mumbai', 'Thane', 'Nagpur', 'Nashik', 'Aurangabad']),
    (15, 'Manipur', 15, ARRAY['Imphal West', 'Imphal East', 'Churachandpur']),
    (16, 'Meghalaya', 10, ARRAY['East Khasi Hills', 'West Garo Hills', 'Ri Bhoi']),
    (17, 'Mizoram', 12, ARRAY['Aizawl', 'Lunglei', 'Champhai']),
    (18, 'Nagaland', 10, ARRAY['Kohima', 'Dimapur', 'Mokokchung']),
    (19, 'Odisha', 33, ARRAY['Khordha', 'Cuttack', 'Ganjam', 'Sundargarh']),
    (20, 'Punjab', 26, ARRAY['Ludhiana', 'Jalandhar', 'S.A.S. Nagar', 'Amritsar', 'Patiala']),
    (21, 'Rajasthan', 28, ARRAY['Jaipur', 'Jodhpur', 'Kota', 'Udaipur', 'Ajmer']),
    (22, 'Sikkim', 8, ARRAY['East Sikkim', 'South Sikkim', 'West Sikkim']),
    (23, 'Tamil Nadu', 70, ARRAY['Chennai', 'Coimbatore', 'Chengalpattu', 'Tiruvallur', 'Salem', 'Madurai']),
    (24, 'Telangana', 20, ARRAY['Hyderabad', 'Medchal Malkajgiri', 'Rangareddy', 'Warangal Urban']),
    (25, 'Tripura', 10, ARRAY['West Tripura', 'Gomati', 'Dhalai']),
    (26, 'Uttar Pradesh', 23, ARRAY['Lucknow', 'Kanpur Nagar', 'Prayagraj', 'Varanasi', 'Gautam Buddha Nagar', 'Ghaziabad']),
    (27, 'Uttarakhand', 25, ARRAY['Dehradun', 'Haridwar', 'Nainital', 'Udham Singh Nagar']),
    (28, 'West Bengal', 70, ARRAY['Kolkata', 'North 24 Parganas', 'Howrah', 'South 24 Parganas', 'Hooghly']),
    (29, 'Andaman and Nicobar Islands', 3, ARRAY['South Andaman', 'North and Middle Andaman', 'Nicobars']),
    (30, 'Chandigarh', 65, ARRAY['Chandigarh']),
    (31, 'Dadra and Nagar Haveli and Daman and Diu', 4, ARRAY['Dadra and Nagar Haveli', 'Daman', 'Diu']),
    (32, 'Delhi', 130, ARRAY['South Delhi', 'West Delhi', 'North Delhi', 'East Delhi', 'Central Delhi', 'New Delhi']),
    (33, 'Jammu and Kashmir', 16, ARRAY['Srinagar', 'Jammu', 'Baramulla', 'Anantnag']),
    (34, 'Ladakh', 10, ARRAY['Leh', 'Kargil']),
    (35, 'Lakshadweep', 10, ARRAY['Lakshadweep']),
    (36, 'Puducherry', 32, ARRAY['Puducherry', 'Karaikal', 'Mahe', 'Yanam'])
) AS s(sno, state, peak_k, districts)
CROSS JOIN LATERAL unnest(s.districts) WITH ORDINALITY AS d(district, dno);

-- Cumulative cases on day d (0 = 2020-03-01): a first wave peaking around
-- September 2020 (30 %) and the Delta wave around May 2021 (70 %).
CREATE FUNCTION pg_temp.covid_cum(peak float8, d int) RETURNS float8
LANGUAGE sql IMMUTABLE AS $$
    SELECT greatest(0, peak * (0.3 / (1 + exp((190 - d) / 22.0::float8))
                               + 0.7 / (1 + exp((425 - d) / 14.0::float8)) - 0.0002))
$$;

SELECT count(*) AS places FROM covid_places \gset

INSERT INTO public.covid_cases
SELECT id,
       p.state,
       p.district,
       c.confirmed,
       -- recovered lags confirmed by two weeks; ~1 % of rows unreported
       CASE WHEN h % 100 <> 7 THEN (0.985 * pg_temp.covid_cum(p.peak, day - 14) * noise)::int END,
       CASE WHEN h % 100 <> 8 THEN (p.cfr * pg_temp.covid_cum(p.peak, day - 7) * noise)::int END,
       -- "other" (migrated etc.): mostly 0, often not reported at all
       CASE WHEN h % 5 = 0 THEN NULL
            WHEN h % 7 = 0 THEN (c.confirmed * 0.002)::int
            ELSE 0 END,
       -- cumulative tests: 14-21x cases plus a baseline; ~10 % not reported
       CASE WHEN h / 100 % 10 <> 0
            THEN c.confirmed::bigint * (14 + h % 8) + (p.peak * 0.005 * day)::bigint END,
       date '2020-03-01' + day
FROM (
    SELECT n + 1 AS id,
           (n % :places)::int AS pid,
           (n / :places % 610)::int AS day,                  -- 610 days
           abs(hashint8(n + 1)::bigint) AS h,
           1 + (abs(hashint8(n + 1)::bigint) % 41 - 20) / 1000.0::float8 AS noise  -- +-2 %
    FROM generate_series(0::bigint, :rows - 1) AS n
) AS g
JOIN covid_places AS p USING (pid)
CROSS JOIN LATERAL (SELECT (pg_temp.covid_cum(p.peak, day) * noise)::int AS confirmed) AS c;

ALTER TABLE public.covid_cases ADD PRIMARY KEY (id);
DROP TABLE covid_places;
ANALYZE public.covid_cases;
