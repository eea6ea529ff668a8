-- Warm-up progress (pmta.warmup_plans against pmta.daily_counts) and the hourly alerts
-- (pmta.rollup_hourly through pmta.hourly_counts, plus over-plan warm-up days).
-- Providers are those of the fact views, so an edit of the provider tables re-labels
-- both at once.

-- warmup_progress: per UTC day, IP and plan scope (a provider, or NULL for all
-- providers together), the messages sent (delivered + bounced: one per message at its
-- final outcome; deferrals are attempts, not messages) against the plan of that
-- sending day. The sending day counts only the days the IP sent a message in that
-- scope, from its first one (a day without traffic does not age an IP at a provider).
-- A plan for an IP wins over the plan of a pool it sent through, scope by scope; a
-- pool plan applies to every IP that ever sent a message through the pool, to all of its
-- traffic (the receiver sees the IP, not the pool); of two pools with a plan for the
-- same IP and scope, the first by name. Rows stop after the plan's last day.
CREATE OR REPLACE VIEW pmta.warmup_progress AS
WITH daily AS MATERIALIZED (
    -- one pass over the daily rollup (its whole history: the sending day counts from an
    -- IP's first message), and none at all while there is no plan
    SELECT c.day, c.dlv_source_ip, c.provider, c.vmta_pool, sum(c.delivered + c.bounced) AS sent
    FROM pmta.daily_counts c
    WHERE c.record_type IN ('d', 'b')
      AND c.dlv_source_ip IS NOT NULL
      AND EXISTS (SELECT 1 FROM pmta.warmup_plans)
    GROUP BY c.day, c.dlv_source_ip, c.provider, c.vmta_pool
),
scopes AS (
    SELECT DISTINCT p.dlv_source_ip, p.provider, p.dlv_source_ip AS plan_ip,
           NULL::text AS plan_pool
    FROM pmta.warmup_plans p
    WHERE p.dlv_source_ip IS NOT NULL
    UNION ALL
    SELECT * FROM (
        SELECT DISTINCT ON (i.dlv_source_ip, p.provider)
               i.dlv_source_ip, p.provider, NULL::inet AS plan_ip, p.vmta_pool AS plan_pool
        FROM (SELECT DISTINCT d.dlv_source_ip, d.vmta_pool FROM daily d
              WHERE d.sent > 0 AND d.vmta_pool IN (SELECT q.vmta_pool FROM pmta.warmup_plans q)) i
        JOIN pmta.warmup_plans p ON p.vmta_pool = i.vmta_pool
        WHERE NOT EXISTS (SELECT 1 FROM pmta.warmup_plans o
                          WHERE o.dlv_source_ip = i.dlv_source_ip
                            AND o.provider IS NOT DISTINCT FROM p.provider)
        ORDER BY i.dlv_source_ip, p.provider, p.vmta_pool
    ) pooled
),
numbered AS (
    SELECT x.day, x.dlv_source_ip, x.provider, x.plan_ip, x.plan_pool, x.sent,
           row_number() OVER (PARTITION BY x.dlv_source_ip, x.provider ORDER BY x.day)
               AS sending_day
    FROM (
        SELECT d.day, s.dlv_source_ip, s.provider, s.plan_ip, s.plan_pool, sum(d.sent) AS sent
        FROM scopes s
        JOIN daily d ON d.dlv_source_ip = s.dlv_source_ip
                   AND (s.provider IS NULL OR d.provider = s.provider)
        GROUP BY d.day, s.dlv_source_ip, s.provider, s.plan_ip, s.plan_pool
        HAVING sum(d.sent) > 0
    ) x
)
SELECT n.day, n.dlv_source_ip, n.provider, n.plan_pool AS vmta_pool,
       n.sending_day::integer AS sending_day, n.sent::bigint AS sent,
       p.max_messages AS planned, coalesce(n.sent > p.max_messages, false) AS over_plan,
       host(n.dlv_source_ip) AS dlv_source_ip_text
FROM numbered n
LEFT JOIN pmta.warmup_plans p
       ON p.sending_day = n.sending_day
      AND p.provider IS NOT DISTINCT FROM n.provider
      AND (p.dlv_source_ip = n.plan_ip OR p.vmta_pool = n.plan_pool)
WHERE n.sending_day <= (SELECT max(q.sending_day) FROM pmta.warmup_plans q
                        WHERE q.provider IS NOT DISTINCT FROM n.provider
                          AND (q.dlv_source_ip = n.plan_ip OR q.vmta_pool = n.plan_pool));

-- ip_alerts_hourly: ip_alerts by UTC hour (thresholds: the *_hourly rows of
-- pmta.alert_thresholds), plus one row per hour with traffic of a warm-up day once
-- the day's messages so far pass its plan (warmup_over_plan). Reads pmta.hourly_counts
-- once for the rates: the sums per IP and provider, and per IP as window sums over
-- them; hour is in the window's partition, so a filter on hour reaches the rollup.
CREATE OR REPLACE VIEW pmta.ip_alerts_hourly AS
SELECT s.hour, s.dlv_source_ip, s.provider, t.alert,
       CASE t.alert WHEN 'ip_bounce_rate_hourly' THEN s.bounce_rate
                    WHEN 'ip_provider_deferral_rate_hourly' THEN s.deferral_rate
                    ELSE s.delivered::double precision END AS observed,
       t.threshold, s.attempts, host(s.dlv_source_ip) AS dlv_source_ip_text
FROM (
    SELECT b.hour, b.dlv_source_ip, CASE WHEN x.by_provider THEN b.provider END AS provider,
           x.by_provider, v.delivered::bigint AS delivered,
           (v.delivered + v.bounced + v.deferred)::bigint AS attempts,
           pmta.rate(v.bounced, v.delivered + v.bounced + v.deferred)  AS bounce_rate,
           pmta.rate(v.deferred, v.delivered + v.bounced + v.deferred) AS deferral_rate
    FROM (
        SELECT p.hour, p.dlv_source_ip, p.provider, p.delivered, p.bounced, p.deferred,
               sum(p.delivered) OVER w AS ip_delivered, sum(p.bounced) OVER w AS ip_bounced,
               sum(p.deferred) OVER w AS ip_deferred, row_number() OVER w AS nth
        FROM (
            SELECT h.time AS hour, h.dlv_source_ip, h.provider, sum(h.delivered) AS delivered,
                   sum(h.bounced) AS bounced, sum(h.deferred) AS deferred
            FROM pmta.hourly_counts h
            WHERE h.dlv_source_ip IS NOT NULL
            GROUP BY h.time, h.dlv_source_ip, h.provider
        ) p
        WINDOW w AS (PARTITION BY p.hour, p.dlv_source_ip)
    ) b
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
  ON t.alert = CASE WHEN s.by_provider THEN 'ip_provider_deferral_rate_hourly'
                    ELSE 'ip_bounce_rate_hourly' END
  OR (t.alert = 'ip_stopped_delivering_hourly' AND NOT s.by_provider)
WHERE s.attempts >= t.min_attempts
  AND CASE t.alert
        WHEN 'ip_bounce_rate_hourly' THEN s.bounce_rate > t.threshold
        WHEN 'ip_provider_deferral_rate_hourly' THEN s.deferral_rate > t.threshold
        -- delivered in the lookback hours before: a probe of those hours of the rollup
        ELSE s.delivered <= t.threshold
             AND EXISTS (SELECT 1 FROM pmta.rollup_hourly prev
                         WHERE prev.bucket >= s.hour - make_interval(hours => coalesce(t.lookback_hours, 1))
                           AND prev.bucket < s.hour
                           AND prev.record_type = 'd'
                           AND prev.dlv_source_ip = s.dlv_source_ip
                           AND prev.n > 0)
      END
UNION ALL
SELECT h.hour, w.dlv_source_ip, w.provider, t.alert,
       h.running::double precision AS observed,
       (w.planned * t.threshold)::double precision AS threshold,
       h.sent::bigint AS attempts, w.dlv_source_ip_text
FROM pmta.warmup_progress w
JOIN pmta.alert_thresholds t ON t.alert = 'warmup_over_plan'
CROSS JOIN LATERAL (
    SELECT y.hour, y.sent, sum(y.sent) OVER (ORDER BY y.hour) AS running
    FROM (
        SELECT ht.time AS hour, sum(ht.delivered + ht.bounced) AS sent
        FROM pmta.hourly_counts ht
        WHERE ht.dlv_source_ip = w.dlv_source_ip
          AND (w.provider IS NULL OR ht.provider = w.provider)
          AND ht.time >= (w.day::timestamp AT TIME ZONE 'UTC')
          AND ht.time < ((w.day + 1)::timestamp AT TIME ZONE 'UTC')
        GROUP BY ht.time
    ) y
) h
WHERE w.planned IS NOT NULL
  AND w.sent > w.planned * t.threshold
  AND h.sent > 0
  AND h.running > w.planned * t.threshold;
