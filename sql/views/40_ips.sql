-- Per sending IP: counts, rates and alerts (from pmta.rollup_daily).

CREATE OR REPLACE VIEW pmta.ip_summary AS
SELECT day, dlv_source_ip,
       sum(delivered)::bigint AS delivered,
       sum(bounced)::bigint   AS bounced,
       sum(deferred)::bigint  AS deferred,
       (sum(delivered) + sum(bounced) + sum(deferred))::bigint AS attempts,
       pmta.rate(sum(bounced), sum(delivered) + sum(bounced) + sum(deferred))  AS bounce_rate,
       pmta.rate(sum(deferred), sum(delivered) + sum(bounced) + sum(deferred)) AS deferral_rate
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
       pmta.rate(sum(deferred), sum(delivered) + sum(bounced) + sum(deferred)) AS deferral_rate
FROM pmta.daily_counts
GROUP BY day, dlv_source_ip, provider
HAVING sum(delivered) + sum(bounced) + sum(deferred) > 0;

CREATE OR REPLACE VIEW pmta.ip_alerts AS
SELECT s.day, s.dlv_source_ip, NULL::text AS provider, t.alert,
       s.bounce_rate AS observed, t.threshold, s.attempts
FROM pmta.ip_summary s
JOIN pmta.alert_thresholds t ON t.alert = 'ip_bounce_rate'
WHERE s.dlv_source_ip IS NOT NULL
  AND s.attempts >= t.min_attempts
  AND s.bounce_rate > t.threshold
UNION ALL
SELECT s.day, s.dlv_source_ip, s.provider, t.alert,
       s.deferral_rate, t.threshold, s.attempts
FROM pmta.ip_provider_summary s
JOIN pmta.alert_thresholds t ON t.alert = 'ip_provider_deferral_rate'
WHERE s.dlv_source_ip IS NOT NULL
  AND s.attempts >= t.min_attempts
  AND s.deferral_rate > t.threshold
UNION ALL
SELECT s.day, s.dlv_source_ip, NULL::text, t.alert,
       s.delivered::double precision, t.threshold, s.attempts
FROM pmta.ip_summary s
JOIN pmta.alert_thresholds t ON t.alert = 'ip_stopped_delivering'
WHERE s.dlv_source_ip IS NOT NULL
  -- delivered the day before: a probe of that one day of the daily rollup by its primary
  -- key, so that the cost follows the window asked for, not the days kept
  AND EXISTS (SELECT 1 FROM pmta.rollup_daily prev
              WHERE prev.bucket = ((s.day - 1)::timestamp AT TIME ZONE 'UTC')
                AND prev.record_type = 'd'
                AND prev.dlv_source_ip = s.dlv_source_ip
                AND prev.n > 0)
  AND s.attempts >= t.min_attempts
  AND s.delivered <= t.threshold;
