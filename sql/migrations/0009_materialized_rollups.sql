-- 0009: report rollups materialized in bulk, off the loader's path, and exact at every
-- moment (docs/reports.md, "How the rollups work").
--
-- Until 0008 every batch counted its rollup groups and upserted them in its own
-- transaction: about a third as many rollup rows as events, batch by batch. Now:
--
-- * pmta.rollup_daily_materialized (and _hourly, _diag, _delivery_time), the former
--   tables, hold the counts of the UTC hours below pmta.rollup_state.watermark, added
--   hour range by hour range by the materializer (pmta-pipe rollup, and a background
--   step of ingest and import), one GROUP BY over pmta.events per table and step;
-- * a batch that inserts events into an hour below pmta.rollup_state.threshold (late
--   data, a backfill, a replay of an old spool) logs the hour in
--   pmta.rollup_invalidations, in its own transaction (pmta.note_inserted); the
--   materializer re-counts such an hour (the hourly table) and its whole UTC day (the
--   day-grained tables) and deletes exactly the log rows it saw;
-- * the views pmta.rollup_daily, rollup_hourly, rollup_diag and rollup_delivery_time
--   (sql/views/05_rollups.sql), with the columns of the former tables, return the
--   materialized rows of the hours not invalidated plus the same groups counted live
--   from pmta.events for the tail (time_logged >= watermark) and for invalidated days.
--
-- Immutable once released: change the schema with a new numbered file.

ALTER TABLE pmta.rollup_daily RENAME TO rollup_daily_materialized;
ALTER TABLE pmta.rollup_hourly RENAME TO rollup_hourly_materialized;
ALTER TABLE pmta.rollup_diag RENAME TO rollup_diag_materialized;
ALTER TABLE pmta.rollup_delivery_time RENAME TO rollup_delivery_time_materialized;

COMMENT ON TABLE pmta.rollup_daily_materialized IS
    'Materialized pmta.rollup_daily: records per UTC day and every dimension of the hours below '
    'pmta.rollup_state.watermark; read it through the view pmta.rollup_daily';
COMMENT ON TABLE pmta.rollup_hourly_materialized IS
    'Materialized pmta.rollup_hourly (UTC hours below pmta.rollup_state.watermark); read it '
    'through the view pmta.rollup_hourly';
COMMENT ON TABLE pmta.rollup_diag_materialized IS
    'Materialized pmta.rollup_diag (the hours below pmta.rollup_state.watermark, per UTC day); '
    'read it through the view pmta.rollup_diag';
COMMENT ON TABLE pmta.rollup_delivery_time_materialized IS
    'Materialized pmta.rollup_delivery_time (the hours below pmta.rollup_state.watermark, per '
    'UTC day); read it through the view pmta.rollup_delivery_time';

CREATE TABLE pmta.rollup_state (
    singleton       boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    watermark       timestamptz,
    threshold       timestamptz,
    materialized_at timestamptz,
    CHECK (watermark <= threshold)
);
COMMENT ON TABLE pmta.rollup_state IS
    'One row: how far the report rollups are materialized (pmta-pipe rollup)';
COMMENT ON COLUMN pmta.rollup_state.watermark IS
    'Every event with time_logged below it is counted in the materialized rollup tables, unless '
    'its hour is in pmta.rollup_invalidations; NULL: nothing materialized yet. Start of a UTC hour';
COMMENT ON COLUMN pmta.rollup_state.threshold IS
    'Invalidation threshold: a batch that inserts events of an hour below it logs the hour in '
    'pmta.rollup_invalidations. Moved up by the materializer before it materializes up to it';
COMMENT ON COLUMN pmta.rollup_state.materialized_at IS 'When the materializer last committed a step';
INSERT INTO pmta.rollup_state DEFAULT VALUES;

CREATE TABLE pmta.rollup_invalidations (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hour      timestamptz NOT NULL,
    logged_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rollup_invalidations_hour ON pmta.rollup_invalidations (hour);
COMMENT ON TABLE pmta.rollup_invalidations IS
    'UTC hours below the invalidation threshold into which a committed batch inserted events: '
    'the report views count them (and their day) live until the materializer re-counts them. '
    'Append-only for loaders (one row per batch and hour); the materializer deletes the rows it '
    'has re-counted, by id';
COMMENT ON COLUMN pmta.rollup_invalidations.hour IS 'Start of the UTC hour';

-- The tables were exact (maintained batch by batch) for every event loaded. Materialized
-- from now on: every UTC day before today. Today's rows are deleted (the views count
-- today live until the materializer has run), so that the state is exact whatever
-- time_logged the events have, future ones included. An empty database starts with
-- nothing materialized (NULL): the first step starts at the oldest event.
DO $$
DECLARE
    w timestamptz := pmta.utc_day(now());
BEGIN
    IF EXISTS (SELECT 1 FROM pmta.events) THEN
        DELETE FROM pmta.rollup_daily_materialized WHERE bucket >= w;
        DELETE FROM pmta.rollup_hourly_materialized WHERE bucket >= w;
        DELETE FROM pmta.rollup_diag_materialized WHERE bucket >= w;
        DELETE FROM pmta.rollup_delivery_time_materialized WHERE bucket >= w;
        UPDATE pmta.rollup_state SET watermark = w, threshold = w, materialized_at = now();
    END IF;
END $$;

-- The loader, in a batch's transaction, when the batch inserted events whose
-- time_logged lie in [first, last]: logs the UTC hours of that range below the
-- invalidation threshold (all of them: conservative). FOR KEY SHARE makes the
-- materializer's raising of the threshold (SELECT ... FOR UPDATE) wait for this
-- transaction, so that a batch either commits before the materializer's next snapshot
-- or sees the raised threshold; it never waits for a materialization itself.
CREATE FUNCTION pmta.note_inserted(first timestamptz, last timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz;
    logged integer;
BEGIN
    SELECT threshold INTO t FROM pmta.rollup_state FOR KEY SHARE;
    IF t IS NULL OR first IS NULL OR first >= t THEN
        RETURN 0;
    END IF;
    INSERT INTO pmta.rollup_invalidations (hour)
    SELECT h FROM generate_series(pmta.utc_hour(first),
                                  least(pmta.utc_hour(coalesce(last, first)),
                                        t - interval '1 hour'),
                                  interval '1 hour') AS h;
    GET DIAGNOSTICS logged = ROW_COUNT;
    RETURN logged;
END $$;
COMMENT ON FUNCTION pmta.note_inserted(timestamptz, timestamptz) IS
    'Called by the loader in a batch''s transaction: logs the UTC hours of [first, last] below '
    'the invalidation threshold in pmta.rollup_invalidations; returns how many';

-- Phase 1 of a materializer step, in a short transaction of its own: raise the
-- invalidation threshold to the start of the UTC hour of min(now(), newest event)
-- minus grace (never lower it). Its FOR UPDATE waits for the loaders that hold the
-- row FOR KEY SHARE (pmta.note_inserted): every loader that commits after this
-- transaction logs its hours against the new threshold. Returns the threshold.
CREATE FUNCTION pmta.rollup_raise_threshold(grace interval) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    s pmta.rollup_state;
    newest timestamptz;
    t timestamptz;
BEGIN
    SELECT * INTO s FROM pmta.rollup_state FOR UPDATE;
    SELECT max(time_logged) INTO newest FROM pmta.events;
    IF newest IS NULL THEN
        RETURN s.threshold;
    END IF;
    t := pmta.utc_hour(least(now(), newest) - grace);
    IF s.threshold IS NULL OR t > s.threshold THEN
        UPDATE pmta.rollup_state SET threshold = t;
        RETURN t;
    END IF;
    RETURN s.threshold;
END $$;

-- Counts the events of the given time ranges into the materialized tables, adding
-- to what is there (ON CONFLICT ... n + excluded.n): the caller deletes first the rows
-- it re-counts. Ranges are [lo, hi) pairs; each table's rows are grouped by their own
-- bucket (hour or day), so ranges may cut days. The derivations are those of
-- pmta.apply_rollups() (0007); the diagnostic normalization runs once per distinct
-- raw text of a group. Returns the rows written per table.
CREATE FUNCTION pmta.rollup_count_ranges(los timestamptz[], his timestamptz[],
                                         OUT daily bigint, OUT hourly bigint,
                                         OUT diag bigint, OUT delivery_time bigint)
LANGUAGE plpgsql AS $$
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
    INSERT INTO pmta.rollup_daily_materialized AS r
        (bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, vmta_pool, job_id,
         bounce_cat, n)
    SELECT pmta.utc_day(e.time_logged), pmta.rollup_key(e.source),
           pmta.rollup_key(e.record_type),
           pmta.rollup_key(pmta.rollup_domain(e.record_type, e.rcpt_domain, e.queue)),
           pmta.rollup_ip(e.record_type, e.dlv_source_ip, e.rep_source_ip),
           pmta.rollup_key(coalesce(e.vmta, '')), pmta.rollup_key(coalesce(e.vmta_pool, '')),
           pmta.rollup_key(pmta.rollup_job(e.record_type, e.job_id, e.extra)),
           pmta.rollup_key(pmta.rollup_bounce_cat(e.record_type, e.bounce_cat)), count(*)
    FROM pmta.events e
    WHERE %s
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ON CONFLICT (bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, vmta_pool,
                 job_id, bounce_cat)
    DO UPDATE SET n = r.n + excluded.n$q$, ranges);
    GET DIAGNOSTICS daily = ROW_COUNT;

    EXECUTE format($q$
    INSERT INTO pmta.rollup_hourly_materialized AS r
        (bucket, source, record_type, rcpt_domain, dlv_source_ip, bounce_cat, n)
    SELECT pmta.utc_hour(e.time_logged), pmta.rollup_key(e.source),
           pmta.rollup_key(e.record_type),
           pmta.rollup_key(pmta.rollup_domain(e.record_type, e.rcpt_domain, e.queue)),
           pmta.rollup_ip(e.record_type, e.dlv_source_ip, e.rep_source_ip),
           pmta.rollup_key(pmta.rollup_bounce_cat(e.record_type, e.bounce_cat)), count(*)
    FROM pmta.events e
    WHERE %s
    GROUP BY 1, 2, 3, 4, 5, 6
    ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (bucket, source, record_type, rcpt_domain, dlv_source_ip, bounce_cat)
    DO UPDATE SET n = r.n + excluded.n$q$, ranges);
    GET DIAGNOSTICS hourly = ROW_COUNT;

    EXECUTE format($q$
    INSERT INTO pmta.rollup_diag_materialized AS r
        (bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, code, pattern, n, example)
    SELECT g.bucket, g.source, g.record_type, g.rcpt_domain, g.ip, g.vmta,
           pmta.reply_code(g.dsn_diag, g.dsn_status), pmta.diag_pattern(g.dsn_diag),
           sum(g.n), min(g.dsn_diag COLLATE "C")
    FROM (
        SELECT pmta.utc_day(e.time_logged) AS bucket, pmta.rollup_key(e.source) AS source,
               pmta.rollup_key(e.record_type) AS record_type,
               pmta.rollup_key(pmta.rollup_domain(e.record_type, e.rcpt_domain, e.queue))
                   AS rcpt_domain,
               pmta.rollup_ip(e.record_type, e.dlv_source_ip, e.rep_source_ip) AS ip,
               pmta.rollup_key(coalesce(e.vmta, '')) AS vmta, e.dsn_diag, e.dsn_status,
               count(*) AS n
        FROM pmta.events e
        WHERE e.record_type IN ('t', 'tq', 'b', 'rb') AND (%s)
        GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
    ) g
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
    ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT (bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, code, pattern)
    DO UPDATE SET n = r.n + excluded.n,
                  example = CASE WHEN r.example IS NULL
                                   OR excluded.example COLLATE "C" < r.example COLLATE "C"
                                 THEN excluded.example ELSE r.example END$q$, ranges);
    GET DIAGNOSTICS diag = ROW_COUNT;

    EXECUTE format($q$
    INSERT INTO pmta.rollup_delivery_time_materialized AS r (bucket, source, rcpt_domain, bin, n)
    SELECT pmta.utc_day(e.time_logged), pmta.rollup_key(e.source),
           pmta.rollup_key(pmta.rollup_domain(e.record_type, e.rcpt_domain, e.queue)),
           pmta.delivery_bin(pmta.delivery_seconds(e.record_type, e.total_seconds_queued,
                                                   e.time_logged, e.time_queued)),
           count(*)
    FROM pmta.events e
    WHERE e.record_type = 'd' AND (%s)
      AND pmta.delivery_seconds(e.record_type, e.total_seconds_queued, e.time_logged,
                                e.time_queued) IS NOT NULL
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (bucket, source, rcpt_domain, bin)
    DO UPDATE SET n = r.n + excluded.n$q$, ranges);
    GET DIAGNOSTICS delivery_time = ROW_COUNT;
END $$;

-- Phase 2 of a materializer step; call it in a REPEATABLE READ transaction (one
-- snapshot for what it reads and counts) after pmta.rollup_raise_threshold. Serialized
-- by an advisory lock: a second materializer gets 'busy' and changes nothing.
--
-- * invalidated hours below the watermark (at most max_days UTC days of them): the
--   hour is deleted and re-counted in the hourly table, its whole day (below the
--   watermark) in the day-grained tables;
-- * the hours [watermark, new watermark), new watermark = min(threshold, watermark +
--   max_hours): counted into the hourly table and added to the day rows;
-- * the log rows this snapshot sees for those hours are deleted (by id: a row a
--   loader commits later stays, and its hour is re-counted by a later step);
-- * watermark = new watermark. All in the caller's transaction: a kill at any point
--   leaves the previous state whole.
CREATE FUNCTION pmta.rollup_materialize(max_hours integer DEFAULT 24, max_days integer DEFAULT 4,
                                        OUT status text, OUT watermark_from timestamptz,
                                        OUT watermark_to timestamptz, OUT hours integer,
                                        OUT redone_hours integer, OUT redone_days integer,
                                        OUT rows_written bigint)
LANGUAGE plpgsql AS $$
DECLARE
    s pmta.rollup_state;
    w timestamptz;
    nw timestamptz;
    days timestamptz[];
    redo_hours timestamptz[];
    ids bigint[];
    los timestamptz[] := '{}';
    his timestamptz[] := '{}';
    c record;
    dd timestamptz;
BEGIN
    hours := 0; redone_hours := 0; redone_days := 0; rows_written := 0;
    IF NOT pg_try_advisory_xact_lock(hashtext('pmta.rollup_materialize')) THEN
        status := 'busy';
        RETURN;
    END IF;
    SELECT * INTO s FROM pmta.rollup_state;
    w := s.watermark;
    IF w IS NULL THEN  -- nothing materialized yet: start at the oldest event's hour
        SELECT pmta.utc_hour(min(time_logged)) INTO w FROM pmta.events;
        IF w IS NOT NULL AND s.threshold IS NOT NULL AND w > s.threshold THEN
            w := s.threshold;
        END IF;
    END IF;
    watermark_from := s.watermark;
    IF w IS NULL OR s.threshold IS NULL THEN
        status := 'empty';
        watermark_to := s.watermark;
        RETURN;
    END IF;
    nw := least(s.threshold, w + make_interval(hours => greatest(max_hours, 1)));

    -- invalidated days below the watermark, oldest first, at most max_days of them
    SELECT array_agg(d ORDER BY d) INTO days
    FROM (SELECT DISTINCT pmta.utc_day(i.hour) AS d
          FROM pmta.rollup_invalidations i
          WHERE i.hour < w
            AND NOT EXISTS (SELECT 1 FROM pmta.pruned_days p
                            WHERE p.day = (i.hour AT TIME ZONE 'UTC')::date)
          ORDER BY 1 LIMIT greatest(max_days, 0)) x;
    days := coalesce(days, '{}');
    SELECT coalesce(array_agg(DISTINCT i.hour), '{}'), coalesce(array_agg(i.id), '{}')
    INTO redo_hours, ids
    FROM pmta.rollup_invalidations i
    WHERE (i.hour < w AND pmta.utc_day(i.hour) = ANY (days)) OR (i.hour >= w AND i.hour < nw)
       -- a pruned day has no raw events to re-count: its rollups are final
       OR (i.hour < w AND EXISTS (SELECT 1 FROM pmta.pruned_days p
                                  WHERE p.day = (i.hour AT TIME ZONE 'UTC')::date));
    redone_days := cardinality(days);
    redone_hours := (SELECT count(*) FROM unnest(redo_hours) h WHERE h < w);

    -- what is re-counted goes first: the invalidated days whole (below the watermark),
    -- in every table, and whatever a killed step may have left in the new hours
    FOREACH dd IN ARRAY days LOOP
        DELETE FROM pmta.rollup_hourly_materialized
        WHERE bucket >= dd AND bucket < least(dd + interval '1 day', w);
    END LOOP;
    DELETE FROM pmta.rollup_hourly_materialized WHERE bucket >= w AND bucket < nw;
    DELETE FROM pmta.rollup_daily_materialized WHERE bucket = ANY (days);
    DELETE FROM pmta.rollup_diag_materialized WHERE bucket = ANY (days);
    DELETE FROM pmta.rollup_delivery_time_materialized WHERE bucket = ANY (days);
    -- one GROUP BY per table over the invalidated days and the new hours
    SELECT array_agg(x ORDER BY x), array_agg(least(x + interval '1 day', w) ORDER BY x)
    INTO los, his FROM unnest(days) AS x;
    los := coalesce(los, '{}') || w;
    his := coalesce(his, '{}') || nw;
    c := pmta.rollup_count_ranges(los, his);
    rows_written := c.daily + c.hourly + c.diag + c.delivery_time;
    hours := (extract(epoch FROM nw - w) / 3600)::integer;

    DELETE FROM pmta.rollup_invalidations WHERE id = ANY (ids);
    UPDATE pmta.rollup_state SET watermark = nw, materialized_at = now();
    watermark_to := nw;
    status := CASE WHEN nw < s.threshold
                     OR EXISTS (SELECT 1 FROM pmta.rollup_invalidations WHERE hour < nw)
                   THEN 'more' ELSE 'done' END;
END $$;

-- Hours to count again: logs the UTC hours of [from, to) below the invalidation
-- threshold, except those of pruned days (their raw events are gone: their rollups
-- are final), as a batch inserting into them would; the next materializer steps
-- re-count them (pmta-pipe rollup --rebuild). Returns the hours logged.
CREATE FUNCTION pmta.rollup_invalidate(from_time timestamptz, to_time timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz;
    logged integer;
BEGIN
    SELECT threshold INTO t FROM pmta.rollup_state FOR KEY SHARE;
    IF t IS NULL OR from_time IS NULL OR to_time IS NULL THEN
        RETURN 0;
    END IF;
    INSERT INTO pmta.rollup_invalidations (hour)
    SELECT h FROM generate_series(pmta.utc_hour(from_time), least(to_time, t) - interval '1 microsecond',
                                  interval '1 hour') AS h
    WHERE NOT EXISTS (SELECT 1 FROM pmta.pruned_days p
                      WHERE p.day = (h AT TIME ZONE 'UTC')::date);
    GET DIAGNOSTICS logged = ROW_COUNT;
    RETURN logged;
END $$;

-- The SQL definition of the rollups, kept: adds the rows of a temporary table
-- batch_inserted (LIKE pmta.events) to the materialized tables.
CREATE OR REPLACE FUNCTION pmta.apply_rollups() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pmta.rollup_daily_materialized AS r
        (bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, vmta_pool, job_id,
         bounce_cat, n)
    SELECT pmta.utc_day(e.time_logged), pmta.rollup_key(e.source),
           pmta.rollup_key(e.record_type),
           pmta.rollup_key(pmta.rollup_domain(e.record_type, e.rcpt_domain, e.queue)),
           pmta.rollup_ip(e.record_type, e.dlv_source_ip, e.rep_source_ip),
           pmta.rollup_key(coalesce(e.vmta, '')), pmta.rollup_key(coalesce(e.vmta_pool, '')),
           pmta.rollup_key(pmta.rollup_job(e.record_type, e.job_id, e.extra)),
           pmta.rollup_key(pmta.rollup_bounce_cat(e.record_type, e.bounce_cat)), count(*)
    FROM pg_temp.batch_inserted e
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ON CONFLICT (bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, vmta_pool,
                 job_id, bounce_cat)
    DO UPDATE SET n = r.n + excluded.n;

    INSERT INTO pmta.rollup_hourly_materialized AS r
        (bucket, source, record_type, rcpt_domain, dlv_source_ip, bounce_cat, n)
    SELECT pmta.utc_hour(e.time_logged), pmta.rollup_key(e.source),
           pmta.rollup_key(e.record_type),
           pmta.rollup_key(pmta.rollup_domain(e.record_type, e.rcpt_domain, e.queue)),
           pmta.rollup_ip(e.record_type, e.dlv_source_ip, e.rep_source_ip),
           pmta.rollup_key(pmta.rollup_bounce_cat(e.record_type, e.bounce_cat)), count(*)
    FROM pg_temp.batch_inserted e
    GROUP BY 1, 2, 3, 4, 5, 6
    ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (bucket, source, record_type, rcpt_domain, dlv_source_ip, bounce_cat)
    DO UPDATE SET n = r.n + excluded.n;

    -- grouped first by the raw texts, so that the normalization runs once per distinct
    -- diagnostic of a group rather than once per record
    INSERT INTO pmta.rollup_diag_materialized AS r
        (bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, code, pattern, n, example)
    SELECT g.bucket, g.source, g.record_type, g.rcpt_domain, g.ip, g.vmta,
           pmta.reply_code(g.dsn_diag, g.dsn_status), pmta.diag_pattern(g.dsn_diag),
           sum(g.n), min(g.dsn_diag COLLATE "C")
    FROM (
        SELECT pmta.utc_day(e.time_logged) AS bucket, pmta.rollup_key(e.source) AS source,
               pmta.rollup_key(e.record_type) AS record_type,
               pmta.rollup_key(pmta.rollup_domain(e.record_type, e.rcpt_domain, e.queue))
                   AS rcpt_domain,
               pmta.rollup_ip(e.record_type, e.dlv_source_ip, e.rep_source_ip) AS ip,
               pmta.rollup_key(coalesce(e.vmta, '')) AS vmta, e.dsn_diag, e.dsn_status,
               count(*) AS n
        FROM pg_temp.batch_inserted e
        WHERE e.record_type IN ('t', 'tq', 'b', 'rb')
        GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
    ) g
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
    ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT (bucket, source, record_type, rcpt_domain, dlv_source_ip, vmta, code, pattern)
    DO UPDATE SET n = r.n + excluded.n,
                  example = CASE WHEN r.example IS NULL
                                   OR excluded.example COLLATE "C" < r.example COLLATE "C"
                                 THEN excluded.example ELSE r.example END;

    INSERT INTO pmta.rollup_delivery_time_materialized AS r (bucket, source, rcpt_domain, bin, n)
    SELECT pmta.utc_day(e.time_logged), pmta.rollup_key(e.source),
           pmta.rollup_key(pmta.rollup_domain(e.record_type, e.rcpt_domain, e.queue)),
           pmta.delivery_bin(pmta.delivery_seconds(e.record_type, e.total_seconds_queued,
                                                   e.time_logged, e.time_queued)),
           count(*)
    FROM pg_temp.batch_inserted e
    WHERE e.record_type = 'd'
      AND pmta.delivery_seconds(e.record_type, e.total_seconds_queued, e.time_logged,
                                e.time_queued) IS NOT NULL
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (bucket, source, rcpt_domain, bin)
    DO UPDATE SET n = r.n + excluded.n;
END $$;

COMMENT ON FUNCTION pmta.apply_rollups() IS
    'The report rollups defined in SQL: adds the rows of a temporary table batch_inserted '
    '(LIKE pmta.events) to the materialized rollup tables. pmta.rollup_materialize() counts the '
    'same over hour ranges of pmta.events; to rebuild, use pmta-pipe rollup --rebuild (docs/operations.md)';
