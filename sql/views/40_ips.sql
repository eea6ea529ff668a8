-- Per sending IP: counts, rates and alerts (from pmta.rollup_daily).

CREATE OR REPLACE VIEW pmta.ip_summary AS
SELECT day, dlv_source_ip,
       sum(delivered)::bigint AS delivered,
       sum(bounced)::bigint   AS bounced,
       sum(deferred)::bigint  AS deferred,
       (sum(delivered) + sum(bounced) + sum(deferred))::bigint AS attempts,
       pmta.rate(sum(bounced), sum(delivered) + sum(bounced) + sum(deferred))  AS bounce_rate,
       pmta.rate(sum(deferred), sum(delivered) + sum(bounced) + sum(deferred)) AS deferral_rate,
       host(dlv_source_ip) AS dlv_source_ip_text
FROM pmta.daily_counts
GROUP BY day, dlv_source_ip
HAVING sum(delivered) + sum(bounced) + sum(deferred) > 0;

CREATE OR REPLACE VIEW pmta.ip_provider_summary AS
SELECT day, dlv_source_ip, provider,
       sum(delivered)::bigint AS delivered,
       sum(bounced)::bigint   AS bounced,
       sum(deferred)::bigint  AS deferred,
       (sum(delivered) + sum(bounced) + sum(deferred))::bigint AS attempts,
       pmta.rate(sum(bounced), sum(delivered) + sum(bounced) + sum(deferred))  AS bounce_rate,
       pmta.rate(sum(deferred), sum(delivered) + sum(bounced) + sum(deferred)) AS deferral_rate,
       host(dlv_source_ip) AS dlv_source_ip_text
FROM pmta.daily_counts
GROUP BY day, dlv_source_ip, provider
HAVING sum(delivered) + sum(bounced) + sum(deferred) > 0;

-- Whether an IP delivered on a UTC day: a probe of that one day of the daily rollup
-- by its primary key, so that ip_alerts' cost follows the window asked for, not the
-- days kept. A function (not inlined) so that the planner counts one cheap call per
-- candidate row: the same probe written as EXISTS in ip_alerts is estimated at the
-- cost of the whole live tail per row, which pushes the plan over jit_above_cost
-- (about a second of compiling, for a few ms of work).
-- SECURITY DEFINER: a view calls functions with the caller's rights, and the caller is
-- a BI login of pmta_reader, which may not read pmta.rollup_daily (raw job ids); the
-- probe answers a yes or no about one IP and day, which ip_summary shows anyway.
-- deploy/roles.sql lets the reader (and the writer) execute it, not PUBLIC.
CREATE OR REPLACE FUNCTION pmta.ip_delivered_on(day date, ip inet) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM pmta.rollup_daily prev
                   WHERE prev.bucket = (day::timestamp AT TIME ZONE 'UTC')
                     AND prev.record_type = 'd'
                     AND prev.dlv_source_ip = ip
                     AND prev.n > 0);
END $$;

-- ip_alerts reads pmta.daily_counts once (it read it three times, each with the live
-- tail): the sums per IP and provider, and the sums per IP as window sums over them.
-- day is in the window's partition, so a window on day still reaches the rollup's
-- index (a GROUPING SETS aggregate would not let it through).
CREATE OR REPLACE VIEW pmta.ip_alerts AS
SELECT s.day, s.dlv_source_ip, s.provider, t.alert,
       CASE t.alert WHEN 'ip_bounce_rate' THEN s.bounce_rate
                    WHEN 'ip_provider_deferral_rate' THEN s.deferral_rate
                    ELSE s.delivered::double precision END AS observed,
       t.threshold, s.attempts, host(s.dlv_source_ip) AS dlv_source_ip_text
FROM (
    SELECT b.day, b.dlv_source_ip, CASE WHEN x.by_provider THEN b.provider END AS provider,
           x.by_provider, v.delivered::bigint AS delivered,
           (v.delivered + v.bounced + v.deferred)::bigint AS attempts,
           pmta.rate(v.bounced, v.delivered + v.bounced + v.deferred)  AS bounce_rate,
           pmta.rate(v.deferred, v.delivered + v.bounced + v.deferred) AS deferral_rate
    FROM (
        SELECT p.day, p.dlv_source_ip, p.provider, p.delivered, p.bounced, p.deferred,
               sum(p.delivered) OVER w AS ip_delivered, sum(p.bounced) OVER w AS ip_bounced,
               sum(p.deferred) OVER w AS ip_deferred, row_number() OVER w AS nth
        FROM (
            SELECT day, dlv_source_ip, provider, sum(delivered) AS delivered,
                   sum(bounced) AS bounced, sum(deferred) AS deferred
            FROM pmta.daily_counts
            WHERE dlv_source_ip IS NOT NULL
            GROUP BY day, dlv_source_ip, provider
        ) p
        WINDOW w AS (PARTITION BY p.day, p.dlv_source_ip)
    ) b
    -- each IP and provider row, and each IP once (its first row) with the IP's sums
    CROSS JOIN LATERAL (VALUES (true), (false)) AS x(by_provider)
    CROSS JOIN LATERAL (
        SELECT CASE WHEN x.by_provider THEN b.delivered ELSE b.ip_delivered END AS delivered,
               CASE WHEN x.by_provider THEN b.bounced ELSE b.ip_bounced END AS bounced,
               CASE WHEN x.by_provider THEN b.deferred ELSE b.ip_deferred END AS deferred
    ) v
    WHERE (x.by_provider OR b.nth = 1)
      AND v.delivered + v.bounced + v.deferred > 0
) s
JOIN pmta.alert_thresholds t
  ON t.alert = CASE WHEN s.by_provider THEN 'ip_provider_deferral_rate' ELSE 'ip_bounce_rate' END
  OR (t.alert = 'ip_stopped_delivering' AND NOT s.by_provider)
WHERE s.attempts >= t.min_attempts
  AND CASE t.alert
        WHEN 'ip_bounce_rate' THEN s.bounce_rate > t.threshold
        WHEN 'ip_provider_deferral_rate' THEN s.deferral_rate > t.threshold
        -- delivered the day before: a probe of that one day of the daily rollup by its
        -- primary key, so that the cost follows the window asked for, not the days kept
        ELSE s.delivered <= t.threshold AND pmta.ip_delivered_on(s.day - 1, s.dlv_source_ip)
      END;
