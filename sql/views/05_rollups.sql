-- The report rollups, exact at every moment: the materialized rows (migration 0009) of
-- the UTC days below the watermark that have no invalidated hour, plus the same groups
-- counted live from pmta.events for the tail (time_logged >= watermark) and for the
-- days with an invalidated hour (pmta.rollup_invalidations). The day of the watermark
-- is materialized up to it and its tail is live: its two parts are summed again, so
-- that every view has one row per key, as the tables had.
--
-- The ranges of pmta.events the views read are bounded by STABLE functions: the
-- planner estimates them from the statistics (a small tail is read by the primary key
-- (time_logged, record_id)), and the executor prunes every partition outside them when
-- it starts, before it builds (or JIT-compiles) anything for them. An initplan bound
-- would prune only later, with every partition's scan built and, once the cost
-- estimate passes jit_above_cost, compiled (seconds for 30 partitions). Filters
-- evaluated per row (the invalidated days, the materialized tables' bounds) read the
-- state once, through scalar subqueries.

-- The watermark ('-infinity' when nothing is materialized).
CREATE OR REPLACE FUNCTION pmta.rollup_watermark() RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(watermark, '-infinity') FROM pmta.rollup_state
$$;

-- The start of the oldest UTC day with an invalidated hour below the watermark
-- ('infinity' when there is none: the range it starts is then empty).
CREATE OR REPLACE FUNCTION pmta.rollup_invalidated_from() RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(pmta.utc_day(min(i.hour)), 'infinity')
    FROM pmta.rollup_invalidations i
    WHERE i.hour < pmta.rollup_watermark()
$$;

CREATE OR REPLACE VIEW pmta.rollup_daily AS
SELECT m.bucket, m.source, m.record_type, m.rcpt_domain, m.dlv_source_ip, m.vmta, m.vmta_pool,
       m.job_id, m.bounce_cat, m.n
FROM pmta.rollup_daily_materialized m
WHERE m.bucket < pmta.utc_day((SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s))
  AND m.bucket <> ALL (CAST((SELECT coalesce(array_agg(DISTINCT pmta.utc_day(i.hour)), '{}') 
                        FROM pmta.rollup_invalidations i WHERE i.hour < (SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s)) AS timestamptz[]))
UNION ALL
SELECT x.bucket, x.source, x.record_type, x.rcpt_domain, x.dlv_source_ip, x.vmta, x.vmta_pool,
       x.job_id, x.bounce_cat, sum(x.n)::bigint
FROM (
    -- the day of the watermark, materialized up to it
    SELECT m.bucket, m.source, m.record_type, m.rcpt_domain, m.dlv_source_ip, m.vmta,
           m.vmta_pool, m.job_id, m.bounce_cat, m.n
    FROM pmta.rollup_daily_materialized m
    WHERE m.bucket >= pmta.utc_day((SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s))
      AND m.bucket <> ALL (CAST((SELECT coalesce(array_agg(DISTINCT pmta.utc_day(i.hour)), '{}') 
                        FROM pmta.rollup_invalidations i WHERE i.hour < (SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s)) AS timestamptz[]))
    UNION ALL
    -- live: the tail, and the invalidated days up to the watermark, grouped on the
    -- cheap derivations first and bounded (rollup_key) per group
    SELECT g.bucket, pmta.rollup_key(g.source), pmta.rollup_key(g.record_type),
           pmta.rollup_key(g.rcpt_domain), g.ip, pmta.rollup_key(g.vmta),
           pmta.rollup_key(g.vmta_pool), pmta.rollup_key(g.job_id), pmta.rollup_key(g.bounce_cat),
           g.n
    FROM (
        SELECT pmta.utc_day(e.time_logged) AS bucket, e.source, e.record_type,
               pmta.rollup_domain(e.record_type, e.rcpt_domain, e.queue) AS rcpt_domain,
               pmta.rollup_ip(e.record_type, e.dlv_source_ip, e.rep_source_ip) AS ip,
               coalesce(e.vmta, '') AS vmta, coalesce(e.vmta_pool, '') AS vmta_pool,
               pmta.rollup_job(e.record_type, e.job_id, e.extra) AS job_id,
               pmta.rollup_bounce_cat(e.record_type, e.bounce_cat) AS bounce_cat,
               count(*) AS n
        FROM (
            SELECT e.* FROM pmta.events e
            WHERE e.time_logged >= pmta.rollup_watermark()
            UNION ALL
            SELECT e.*
            FROM pmta.events e
            WHERE e.time_logged >= pmta.rollup_invalidated_from()
              AND e.time_logged < pmta.rollup_watermark()
              AND pmta.utc_day(e.time_logged) = ANY (CAST((SELECT coalesce(array_agg(DISTINCT pmta.utc_day(i.hour)), '{}') 
                        FROM pmta.rollup_invalidations i WHERE i.hour < (SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s)) AS timestamptz[]))
        ) e
        GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ) g
) x
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9;

CREATE OR REPLACE VIEW pmta.rollup_hourly AS
SELECT m.bucket, m.source, m.record_type, m.rcpt_domain, m.dlv_source_ip, m.bounce_cat, m.n
FROM pmta.rollup_hourly_materialized m
-- every row is below the watermark (a step deletes and counts only hours below it)
WHERE pmta.utc_day(m.bucket) <> ALL (CAST((SELECT coalesce(array_agg(DISTINCT pmta.utc_day(i.hour)), '{}') 
                        FROM pmta.rollup_invalidations i WHERE i.hour < (SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s)) AS timestamptz[]))
UNION ALL
SELECT x.bucket, x.source, x.record_type, x.rcpt_domain, x.dlv_source_ip, x.bounce_cat,
       sum(x.n)::bigint
FROM (
    -- grouped on the cheap derivations first, bounded (rollup_key) per group
    SELECT g.bucket, pmta.rollup_key(g.source) AS source,
           pmta.rollup_key(g.record_type) AS record_type,
           pmta.rollup_key(g.rcpt_domain) AS rcpt_domain, g.dlv_source_ip,
           pmta.rollup_key(g.bounce_cat) AS bounce_cat, g.n
    FROM (
        SELECT pmta.utc_hour(e.time_logged) AS bucket, e.source, e.record_type,
               pmta.rollup_domain(e.record_type, e.rcpt_domain, e.queue) AS rcpt_domain,
               pmta.rollup_ip(e.record_type, e.dlv_source_ip, e.rep_source_ip) AS dlv_source_ip,
               pmta.rollup_bounce_cat(e.record_type, e.bounce_cat) AS bounce_cat, count(*) AS n
        FROM (
            SELECT e.* FROM pmta.events e
            WHERE e.time_logged >= pmta.rollup_watermark()
            UNION ALL
            SELECT e.*
            FROM pmta.events e
            WHERE e.time_logged >= pmta.rollup_invalidated_from()
              AND e.time_logged < pmta.rollup_watermark()
              AND pmta.utc_day(e.time_logged) = ANY (CAST((SELECT coalesce(array_agg(DISTINCT pmta.utc_day(i.hour)), '{}') 
                        FROM pmta.rollup_invalidations i WHERE i.hour < (SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s)) AS timestamptz[]))
        ) e
        GROUP BY 1, 2, 3, 4, 5, 6
    ) g
) x
GROUP BY 1, 2, 3, 4, 5, 6;

CREATE OR REPLACE VIEW pmta.rollup_diag AS
SELECT m.bucket, m.source, m.record_type, m.rcpt_domain, m.dlv_source_ip, m.vmta, m.code,
       m.pattern, m.n, m.example
FROM pmta.rollup_diag_materialized m
WHERE m.bucket < pmta.utc_day((SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s))
  AND m.bucket <> ALL (CAST((SELECT coalesce(array_agg(DISTINCT pmta.utc_day(i.hour)), '{}') 
                        FROM pmta.rollup_invalidations i WHERE i.hour < (SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s)) AS timestamptz[]))
UNION ALL
SELECT x.bucket, x.source, x.record_type, x.rcpt_domain, x.dlv_source_ip, x.vmta, x.code,
       x.pattern, sum(x.n)::bigint, min(x.example COLLATE "C")
FROM (
    SELECT m.bucket, m.source, m.record_type, m.rcpt_domain, m.dlv_source_ip, m.vmta, m.code,
           m.pattern, m.n, m.example
    FROM pmta.rollup_diag_materialized m
    WHERE m.bucket >= pmta.utc_day((SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s))
      AND m.bucket <> ALL (CAST((SELECT coalesce(array_agg(DISTINCT pmta.utc_day(i.hour)), '{}') 
                        FROM pmta.rollup_invalidations i WHERE i.hour < (SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s)) AS timestamptz[]))
    UNION ALL
    -- grouped by the raw texts first: the normalization runs once per distinct text
    SELECT g.bucket, g.source, g.record_type, g.rcpt_domain, g.ip, g.vmta,
           pmta.reply_code(g.dsn_diag, g.dsn_status), pmta.diag_pattern(g.dsn_diag),
           sum(g.n)::bigint, min(g.dsn_diag COLLATE "C")
    FROM (
        SELECT pmta.utc_day(e.time_logged) AS bucket, pmta.rollup_key(e.source) AS source,
               pmta.rollup_key(e.record_type) AS record_type,
               pmta.rollup_key(pmta.rollup_domain(e.record_type, e.rcpt_domain, e.queue)) AS rcpt_domain,
               pmta.rollup_ip(e.record_type, e.dlv_source_ip, e.rep_source_ip) AS ip,
               pmta.rollup_key(coalesce(e.vmta, '')) AS vmta, e.dsn_diag, e.dsn_status,
               count(*) AS n
        FROM (
            SELECT e.* FROM pmta.events e
            WHERE e.time_logged >= pmta.rollup_watermark()
            UNION ALL
            SELECT e.*
            FROM pmta.events e
                  WHERE e.time_logged >= pmta.rollup_invalidated_from()
                    AND e.time_logged < pmta.rollup_watermark()
                    AND pmta.utc_day(e.time_logged) = ANY (CAST((SELECT coalesce(array_agg(DISTINCT pmta.utc_day(i.hour)), '{}') 
                        FROM pmta.rollup_invalidations i WHERE i.hour < (SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s)) AS timestamptz[]))
        ) e
        WHERE e.record_type IN ('t', 'tq', 'b', 'rb')
        GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
    ) g
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
) x
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;

CREATE OR REPLACE VIEW pmta.rollup_delivery_time AS
SELECT m.bucket, m.source, m.rcpt_domain, m.bin, m.n
FROM pmta.rollup_delivery_time_materialized m
WHERE m.bucket < pmta.utc_day((SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s))
  AND m.bucket <> ALL (CAST((SELECT coalesce(array_agg(DISTINCT pmta.utc_day(i.hour)), '{}') 
                        FROM pmta.rollup_invalidations i WHERE i.hour < (SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s)) AS timestamptz[]))
UNION ALL
SELECT x.bucket, x.source, x.rcpt_domain, x.bin, sum(x.n)::bigint
FROM (
    SELECT m.bucket, m.source, m.rcpt_domain, m.bin, m.n
    FROM pmta.rollup_delivery_time_materialized m
    WHERE m.bucket >= pmta.utc_day((SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s))
      AND m.bucket <> ALL (CAST((SELECT coalesce(array_agg(DISTINCT pmta.utc_day(i.hour)), '{}') 
                        FROM pmta.rollup_invalidations i WHERE i.hour < (SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s)) AS timestamptz[]))
    UNION ALL
    -- grouped by whole seconds first (delivery_bin truncates to them): the bin and
    -- the keys per group, not per record
    SELECT g.bucket, pmta.rollup_key(g.source), pmta.rollup_key(g.rcpt_domain),
           pmta.delivery_bin(g.secs), g.n
    FROM (
        SELECT pmta.utc_day(e.time_logged) AS bucket, e.source,
               pmta.rollup_domain(e.record_type, e.rcpt_domain, e.queue) AS rcpt_domain,
               floor(pmta.delivery_seconds(e.record_type, e.total_seconds_queued, e.time_logged,
                                           e.time_queued)) AS secs,
               count(*) AS n
        FROM (
            SELECT e.* FROM pmta.events e
            WHERE e.time_logged >= pmta.rollup_watermark()
            UNION ALL
            SELECT e.*
            FROM pmta.events e
                  WHERE e.time_logged >= pmta.rollup_invalidated_from()
                    AND e.time_logged < pmta.rollup_watermark()
                    AND pmta.utc_day(e.time_logged) = ANY (CAST((SELECT coalesce(array_agg(DISTINCT pmta.utc_day(i.hour)), '{}') 
                            FROM pmta.rollup_invalidations i WHERE i.hour < (SELECT coalesce(s.watermark, '-infinity') FROM pmta.rollup_state s)) AS timestamptz[]))
        ) e
        WHERE e.record_type = 'd'
          AND pmta.delivery_seconds(e.record_type, e.total_seconds_queued, e.time_logged,
                                    e.time_queued) IS NOT NULL
        GROUP BY 1, 2, 3, 4
    ) g
) x
GROUP BY 1, 2, 3, 4;

COMMENT ON VIEW pmta.rollup_daily IS
    'Records per UTC day, host, type, recipient domain, sending IP, VirtualMTA, pool, job and '
    'bounce category (b/rb only), exact at every moment: the materialized rows '
    '(pmta.rollup_daily_materialized) plus the tail and invalidated days counted live';
COMMENT ON VIEW pmta.rollup_hourly IS
    'Records per UTC hour, host, type, recipient domain, sending IP and bounce category, exact at '
    'every moment (materialized + live tail)';
COMMENT ON VIEW pmta.rollup_diag IS
    't, tq, b and rb records per UTC day, host, type, recipient domain, sending IP, VirtualMTA, '
    'reply code and normalized diagnostic; example is the smallest raw dsnDiag of the group by '
    'code point. Exact at every moment (materialized + live tail)';
COMMENT ON VIEW pmta.rollup_delivery_time IS
    'Histogram of delivery times of d records per UTC day, host and recipient domain, exact at '
    'every moment (materialized + live tail)';
