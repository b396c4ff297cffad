-- The benchmark's covid_cases-like table (issue 6), created empty in the source
-- and, identically, in the target database by scripts/bench.sh. The primary key
-- is added by the script: after the load on the source, at once on the target.

\set ON_ERROR_STOP on

DROP TABLE IF EXISTS public.covid_cases;

CREATE TABLE public.covid_cases (
    id         bigint        NOT NULL,
    state      text          NOT NULL,
    district   text          NOT NULL,
    confirmed  integer       NOT NULL,
    recovered  integer,
    deceased   integer,
    other      integer,
    tested     bigint,                  -- 10 % NULL
    date       date          NOT NULL,
    updated_at timestamptz   NOT NULL,
    ratio      numeric(12,4),
    note       text                     -- 30 % NULL
);
