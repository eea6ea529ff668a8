-- 0012: the materializer reads each range of pmta.events once, groups it on the raw
-- columns first, and derives the rollup keys per group, not per event.
--
-- Until now pmta.rollup_count_ranges ran one GROUP BY per table, each computing seven
-- rollup_key calls and the other derivations on every event, and pmta.diag_pattern
-- (ten regular expressions) once per distinct diagnostic of every group: about 21
-- microseconds of backend CPU per event on the generated stream (docs/performance.md,
-- "Materializer"). Now, in one statement:
--
-- * one scan of the ranges, grouped by GROUPING SETS into three hash tables: the
--   hour with every dimension of rollup_daily (hourly and daily are sums of it), the
--   diagnostic groups of t/tq/b/rb records, and the delivery seconds of d records;
--   only the cheap, inlined derivations (rollup_domain, rollup_ip, rollup_job,
--   rollup_bounce_cat, utc_hour/utc_day) run per event;
-- * rollup_key, reply_code, diag_pattern and delivery_bin run per group (a diagnostic
--   group is about one distinct text);
-- * the four INSERTs are data-modifying CTEs of that statement.
--
-- Grouping on x and mapping f(x) afterwards gives the groups of f(x): every
-- derivation is a function of the columns grouped on, so the rows are the same.
--
-- pmta.diag_pattern keeps its regular expressions and its results; it skips a
-- replacement when the text cannot match it (a character every match holds is
-- absent), as the Python reference (pmta_pipe/rollups.py) does. The tests compare the
-- two on every reference sample.
--
-- Immutable once released: change the schema with a new numbered file.

CREATE OR REPLACE FUNCTION pmta.diag_pattern(dsn_diag text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    p text;
    head text;
    ascii boolean;
BEGIN
    IF dsn_diag IS NULL OR btrim(dsn_diag) = '' THEN
        RETURN '';
    END IF;
    p := dsn_diag;
    IF octet_length(p) <> length(p)
       OR lower(left(ltrim(p, E' \t\n\r\f\x0B'), 5)) = 'smtp;' THEN
        p := regexp_replace(p, '^\s*smtp;\s*', '', 'i');
    END IF;
    IF left(p, 1) IN ('2', '4', '5') THEN
        head := coalesce(substring(p FROM '^[245]\d\d(?:[ -][245]\.\d{1,3}\.\d{1,3})?(?![\w.])'), '');
        p := substr(p, length(head) + 1);
    ELSE
        head := '';
    END IF;
    -- ASCII only: \s means the six ASCII white-space characters, so that their absence
    -- proves that '\s+' has nothing to change; other texts take the replacement
    ascii := octet_length(p) = length(p);
    IF strpos(p, '://') > 0 THEN
        p := regexp_replace(p, 'https?://[^\s<>"'')\]]+', '<url>', 'gi');
    END IF;
    IF strpos(p, '@') > 0 THEN
        p := regexp_replace(p, '<?[^\s<>@"''(),;:\[\]]+@[^\s<>"''(),;:\[\]]+>?', '<addr>', 'g');
    END IF;
    IF strpos(p, '-') > 0 THEN
        p := regexp_replace(p, '\m\d{4}-\d\d-\d\d\M', '<date>', 'g');
    END IF;
    IF strpos(p, ':') > 0 THEN
        p := regexp_replace(p, '\m\d\d?:\d\d(?::\d\d)?\M', '<time>', 'g');
    END IF;
    IF strpos(p, '.') > 0 THEN
        p := regexp_replace(p, '\m\d{1,3}(?:\.\d{1,3}){3}\M', '<ip>', 'g');
    END IF;
    IF length(p) - length(replace(p, ':', '')) >= 2 THEN
        p := regexp_replace(p, '(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{1,4}(?![\w:])', '<ip>', 'gi');
    END IF;
    p := regexp_replace(p, '\m(?=[\w.-]*\d)(?=[\w.-]*[a-z])\w[\w.-]{7,}', '<id>', 'gi');
    p := regexp_replace(p, '(?<![\w.-])\d+(?![\w.-])', '<n>', 'g');
    p := head || p;
    IF NOT ascii OR strpos(p, '  ') > 0 OR strpos(p, E'\t') > 0 OR strpos(p, E'\n') > 0
       OR strpos(p, E'\r') > 0 OR strpos(p, E'\f') > 0 OR strpos(p, E'\x0B') > 0 THEN
        p := regexp_replace(p, '\s+', ' ', 'g');
    END IF;
    RETURN left(btrim(p), 250);
END $$;

CREATE OR REPLACE FUNCTION pmta.rollup_count_ranges(los timestamptz[], his timestamptz[],
                                                    OUT daily bigint, OUT hourly bigint,
                                                    OUT diag bigint, OUT delivery_time bigint)
LANGUAGE plpgsql
-- the groups of a day of a large stream fit in memory; one materializer at a time
SET work_mem = '64MB'
-- compiling this one statement costs more than it saves
SET jit = off
AS $$
DECLARE
    ranges text;
BEGIN
    daily := 0; hourly := 0; diag := 0; delivery_time := 0;
    -- literal ranges: partitions are pruned when the statement is planned
    SELECT string_agg(format('(e.time_logged >= %L AND e.time_logged < %L)', lo, hi), ' OR ')
    INTO ranges
    FROM unnest(los, his) AS r(lo, hi)
    WHERE lo < hi;
    IF ranges IS NULL THEN
        RETURN;
    END IF;

    EXECUTE format($q$
    WITH raw AS MATERIALIZED (
        -- one scan; only the cheap derivations per event
        SELECT GROUPING(x.hour, x.dsn_diag, x.secs) AS set, x.hour, x.day, x.source,
               x.record_type, x.rcpt_domain, x.ip, x.vmta, x.vmta_pool, x.job_id,
               x.bounce_cat, x.dsn_diag, x.dsn_status, x.secs, count(*) AS n
        FROM (
            SELECT pmta.utc_hour(e.time_logged) AS hour, pmta.utc_day(e.time_logged) AS day,
                   e.source, e.record_type,
                   pmta.rollup_domain(e.record_type, e.rcpt_domain, e.queue) AS rcpt_domain,
                   pmta.rollup_ip(e.record_type, e.dlv_source_ip, e.rep_source_ip) AS ip,
                   coalesce(e.vmta, '') AS vmta, coalesce(e.vmta_pool, '') AS vmta_pool,
                   pmta.rollup_job(e.record_type, e.job_id, e.extra) AS job_id,
                   pmta.rollup_bounce_cat(e.record_type, e.bounce_cat) AS bounce_cat,
                   CASE WHEN e.record_type IN ('t', 'tq', 'b', 'rb') THEN e.dsn_diag END
                       AS dsn_diag,
                   CASE WHEN e.record_type IN ('t', 'tq', 'b', 'rb') THEN e.dsn_status END
                       AS dsn_status,
                   -- delivery_bin truncates to whole seconds first
                   floor(pmta.delivery_seconds(e.record_type, e.total_seconds_queued,
                                               e.time_logged, e.time_queued)) AS secs
            FROM pmta.events e
            WHERE %s
            OFFSET 0  -- the per-event columns once, not once per grouping set
        ) x
        GROUP BY GROUPING SETS (
            (x.hour, x.source, x.record_type, x.rcpt_domain, x.ip, x.vmta, x.vmta_pool,
             x.job_id, x.bounce_cat),
            (x.day, x.source, x.record_type, x.rcpt_domain, x.ip, x.vmta, x.dsn_diag,
             x.dsn_status),
            (x.day, x.source, x.record_type, x.rcpt_domain, x.secs))
    ),
    keyed AS MATERIALIZED (
        -- the hour grain with every daily dimension, keys bounded per group
        SELECT r.hour, pmta.utc_day(r.hour) AS day, pmta.rollup_key(r.source) AS source,
               pmta.rollup_key(r.record_type) AS record_type,
               pmta.rollup_key(r.rcpt_domain) AS rcpt_domain, r.ip,
               pmta.rollup_key(r.vmta) AS vmta, pmta.rollup_key(r.vmta_pool) AS vmta_pool,
               pmta.rollup_key(r.job_id) AS job_id, pmta.rollup_key(r.bounce_cat) AS bounce_cat,
               r.n
        FROM raw r
        WHERE r.set = 3  -- GROUPING: hour grouped, dsn_diag and secs not
    ),
    ins_daily AS (
        INSERT INTO pmta.rollup_daily_materialized AS r
            (bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, vmta_pool, job_id,
             bounce_cat, n)
        SELECT k.day, k.source, k.record_type, k.rcpt_domain, k.ip, k.vmta, k.vmta_pool,
               k.job_id, k.bounce_cat, sum(k.n)
        FROM keyed k
        GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
        ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9
        ON CONFLICT (bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, vmta_pool,
                     job_id, bounce_cat)
        DO UPDATE SET n = r.n + excluded.n
        RETURNING 1
    ),
    ins_hourly AS (
        INSERT INTO pmta.rollup_hourly_materialized AS r
            (bucket, source, record_type, rcpt_domain, dlv_source_ip, bounce_cat, n)
        SELECT k.hour, k.source, k.record_type, k.rcpt_domain, k.ip, k.bounce_cat, sum(k.n)
        FROM keyed k
        GROUP BY 1, 2, 3, 4, 5, 6
        ORDER BY 1, 2, 3, 4, 5, 6
        ON CONFLICT (bucket, source, record_type, rcpt_domain, dlv_source_ip, bounce_cat)
        DO UPDATE SET n = r.n + excluded.n
        RETURNING 1
    ),
    ins_diag AS (
        INSERT INTO pmta.rollup_diag_materialized AS r
            (bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, code, pattern, n,
             example)
        SELECT g.day, pmta.rollup_key(g.source), pmta.rollup_key(g.record_type),
               pmta.rollup_key(g.rcpt_domain), g.ip, pmta.rollup_key(g.vmta),
               pmta.reply_code(g.dsn_diag, g.dsn_status), pmta.diag_pattern(g.dsn_diag),
               sum(g.n), min(g.dsn_diag COLLATE "C")
        FROM raw g
        WHERE g.set = 5 AND g.record_type IN ('t', 'tq', 'b', 'rb')
        GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
        ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
        ON CONFLICT (bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, code, pattern)
        DO UPDATE SET n = r.n + excluded.n,
                      example = CASE WHEN r.example IS NULL
                                       OR excluded.example COLLATE "C" < r.example COLLATE "C"
                                     THEN excluded.example ELSE r.example END
        RETURNING 1
    ),
    ins_delivery AS (
        INSERT INTO pmta.rollup_delivery_time_materialized AS r
            (bucket, source, rcpt_domain, bin, n)
        SELECT d.day, d.source, d.rcpt_domain, pmta.delivery_bin(d.secs), sum(d.n)
        FROM (SELECT g.day, pmta.rollup_key(g.source) AS source,
                     pmta.rollup_key(g.rcpt_domain) AS rcpt_domain, g.secs, sum(g.n) AS n
              FROM raw g
              WHERE g.set = 6 AND g.record_type = 'd' AND g.secs IS NOT NULL
              GROUP BY 1, 2, 3, 4) d
        GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3, 4
        ON CONFLICT (bucket, source, rcpt_domain, bin)
        DO UPDATE SET n = r.n + excluded.n
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM ins_daily), (SELECT count(*) FROM ins_hourly),
           (SELECT count(*) FROM ins_diag), (SELECT count(*) FROM ins_delivery)$q$, ranges)
    INTO daily, hourly, diag, delivery_time;
END $$;
