-- 0007: no value reaches a rollup key unbounded. A jobId, recipient domain, VirtualMTA,
-- pool, source, record type or bounce category longer than an index entry can hold
-- (about 2.7 kB for all the key's columns together) made the rollup upsert fail with
-- SQLSTATE 54000 for the whole batch. pmta.events keeps every value whole; the rollup
-- keys keep the first 255 characters, '…' and 8 hex digits of the MD5 of the whole
-- value (pmta_pipe/rollups.py rollup_key computes the same).
-- Immutable once released: change the schema with a new numbered file.

CREATE FUNCTION pmta.rollup_key(t text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN length(t) <= 255 THEN t ELSE left(t, 255) || '…' || left(md5(t), 8) END
$$;
COMMENT ON FUNCTION pmta.rollup_key(text) IS
    'A text as a rollup key: unchanged up to 255 characters, else its first 255, an ellipsis '
    'and the first 8 hex digits of its MD5, so that every key fits an index';

CREATE OR REPLACE FUNCTION pmta.apply_rollups() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pmta.rollup_daily AS r
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

    INSERT INTO pmta.rollup_hourly AS r
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
    INSERT INTO pmta.rollup_diag AS r
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

    INSERT INTO pmta.rollup_delivery_time AS r (bucket, source, rcpt_domain, bin, n)
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
