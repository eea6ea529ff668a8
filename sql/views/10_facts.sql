-- Fact views: the rollups with every dimension, NULL instead of the '' / 0.0.0.0
-- storage sentinels, the provider joined from pmta.mailbox_providers and counts
-- pivoted by record type. The report views and `pmta-pipe report` aggregate these.
-- Texts that can quote an e-mail address (job ids, diagnostic patterns and examples)
-- pass through pmta.mask_addresses here, so no view built on these shows one; the
-- raw texts stay in the rollup tables, for pmta_analyst (docs/security.md).
--
-- Every day is the UTC day and every time the start of a UTC hour, whatever the
-- session's TimeZone: buckets are cast with AT TIME ZONE 'UTC', never ::date alone.
-- A view with dlv_source_ip (inet) also has dlv_source_ip_text, host(dlv_source_ip),
-- last: BI tools filter text with "contains" / LIKE, which inet does not take
-- (CREATE OR REPLACE VIEW can only append columns).

-- daily_counts: one row per rollup_daily row, not grouped, its count in the column of
-- its type. The report views sum it with their own few keys, which PostgreSQL hashes
-- in memory; grouping all eight dimensions first (daily_traffic) needs a sort that
-- spills to disk with the default work_mem (docs/performance.md).
CREATE OR REPLACE VIEW pmta.daily_counts AS
SELECT (r.bucket AT TIME ZONE 'UTC')::date                 AS day,
       r.source,
       r.record_type,
       nullif(r.rcpt_domain, '')                           AS rcpt_domain,
       coalesce(mp.provider, nullif(r.rcpt_domain, ''))    AS provider,
       nullif(r.dlv_source_ip, '0.0.0.0'::inet)            AS dlv_source_ip,
       nullif(r.vmta, '')                                  AS vmta,
       nullif(r.vmta_pool, '')                             AS vmta_pool,
       pmta.mask_addresses(nullif(r.job_id, ''))           AS job_id,
       nullif(r.bounce_cat, '')                            AS bounce_cat,
       pmta.bounce_class(nullif(r.bounce_cat, ''))         AS bounce_class,
       CASE WHEN r.record_type = 'r' THEN r.n ELSE 0 END   AS received,
       CASE WHEN r.record_type = 'd' THEN r.n ELSE 0 END   AS delivered,
       CASE WHEN r.record_type = 'b' THEN r.n ELSE 0 END   AS bounced,
       CASE WHEN r.record_type = 'b' AND r.bounce_cat = 'message-expired'
            THEN r.n ELSE 0 END                            AS expired,
       CASE WHEN r.record_type = 't' THEN r.n ELSE 0 END   AS deferred,
       CASE WHEN r.record_type = 'f' THEN r.n ELSE 0 END   AS complaints,
       CASE WHEN r.record_type = 'rb' THEN r.n ELSE 0 END  AS remote_bounces,
       host(nullif(r.dlv_source_ip, '0.0.0.0'::inet))      AS dlv_source_ip_text
FROM pmta.rollup_daily r
LEFT JOIN pmta.mailbox_providers mp ON mp.domain = r.rcpt_domain;

CREATE OR REPLACE VIEW pmta.daily_traffic AS
SELECT day, source, rcpt_domain, provider, dlv_source_ip, vmta, vmta_pool, job_id,
       sum(received)::bigint       AS received,
       sum(delivered)::bigint      AS delivered,
       sum(bounced)::bigint        AS bounced,
       sum(expired)::bigint        AS expired,
       sum(deferred)::bigint       AS deferred,
       sum(complaints)::bigint     AS complaints,
       sum(remote_bounces)::bigint AS remote_bounces,
       host(dlv_source_ip)         AS dlv_source_ip_text
FROM pmta.daily_counts
GROUP BY day, source, rcpt_domain, provider, dlv_source_ip, vmta, vmta_pool, job_id;

CREATE OR REPLACE VIEW pmta.daily_bounces AS
SELECT day, source, rcpt_domain, provider, dlv_source_ip, vmta, vmta_pool, job_id,
       bounce_cat, bounce_class,
       sum(bounced)::bigint        AS bounced,
       sum(remote_bounces)::bigint AS remote_bounces,
       host(dlv_source_ip)         AS dlv_source_ip_text
FROM pmta.daily_counts
WHERE record_type IN ('b', 'rb')
GROUP BY day, source, rcpt_domain, provider, dlv_source_ip, vmta, vmta_pool, job_id,
         bounce_cat, bounce_class;

-- hourly_counts: daily_counts by the hour, one row per rollup_hourly row, not grouped.
-- The hourly report views sum it with their one or two keys (hashed in memory); summing
-- hourly_traffic, grouped on five keys first, sorted 90,000 rows of a 7-day window at
-- 10,000,000 events on disk under the default work_mem (docs/performance.md).
CREATE OR REPLACE VIEW pmta.hourly_counts AS
SELECT r.bucket                                            AS time,
       r.source,
       r.record_type,
       nullif(r.rcpt_domain, '')                           AS rcpt_domain,
       coalesce(mp.provider, nullif(r.rcpt_domain, ''))    AS provider,
       nullif(r.dlv_source_ip, '0.0.0.0'::inet)            AS dlv_source_ip,
       nullif(r.bounce_cat, '')                            AS bounce_cat,
       CASE WHEN r.record_type = 'r' THEN r.n ELSE 0 END   AS received,
       CASE WHEN r.record_type = 'd' THEN r.n ELSE 0 END   AS delivered,
       CASE WHEN r.record_type = 'b' THEN r.n ELSE 0 END   AS bounced,
       CASE WHEN r.record_type = 'b' AND r.bounce_cat = 'message-expired'
            THEN r.n ELSE 0 END                            AS expired,
       CASE WHEN r.record_type = 't' THEN r.n ELSE 0 END   AS deferred,
       CASE WHEN r.record_type = 'f' THEN r.n ELSE 0 END   AS complaints,
       CASE WHEN r.record_type = 'rb' THEN r.n ELSE 0 END  AS remote_bounces,
       (r.bucket AT TIME ZONE 'UTC')::date                 AS day,
       host(nullif(r.dlv_source_ip, '0.0.0.0'::inet))      AS dlv_source_ip_text
FROM pmta.rollup_hourly r
LEFT JOIN pmta.mailbox_providers mp ON mp.domain = r.rcpt_domain;

CREATE OR REPLACE VIEW pmta.hourly_traffic AS
SELECT r.bucket                                            AS time,
       r.source,
       nullif(r.rcpt_domain, '')                           AS rcpt_domain,
       coalesce(mp.provider, nullif(r.rcpt_domain, ''))    AS provider,
       nullif(r.dlv_source_ip, '0.0.0.0'::inet)            AS dlv_source_ip,
       coalesce(sum(r.n) FILTER (WHERE r.record_type = 'r'), 0)::bigint  AS received,
       coalesce(sum(r.n) FILTER (WHERE r.record_type = 'd'), 0)::bigint  AS delivered,
       coalesce(sum(r.n) FILTER (WHERE r.record_type = 'b'), 0)::bigint  AS bounced,
       coalesce(sum(r.n) FILTER (WHERE r.record_type = 'b'
                                   AND r.bounce_cat = 'message-expired'), 0)::bigint AS expired,
       coalesce(sum(r.n) FILTER (WHERE r.record_type = 't'), 0)::bigint  AS deferred,
       coalesce(sum(r.n) FILTER (WHERE r.record_type = 'f'), 0)::bigint  AS complaints,
       coalesce(sum(r.n) FILTER (WHERE r.record_type = 'rb'), 0)::bigint AS remote_bounces,
       (r.bucket AT TIME ZONE 'UTC')::date                 AS day,
       host(nullif(r.dlv_source_ip, '0.0.0.0'::inet))      AS dlv_source_ip_text
FROM pmta.rollup_hourly r
LEFT JOIN pmta.mailbox_providers mp ON mp.domain = r.rcpt_domain
GROUP BY r.bucket, r.source, r.rcpt_domain, mp.provider, r.dlv_source_ip;

CREATE OR REPLACE VIEW pmta.daily_diag AS
SELECT (r.bucket AT TIME ZONE 'UTC')::date                 AS day,
       r.source,
       r.record_type,
       nullif(r.rcpt_domain, '')                           AS rcpt_domain,
       coalesce(mp.provider, nullif(r.rcpt_domain, ''))    AS provider,
       nullif(r.dlv_source_ip, '0.0.0.0'::inet)            AS dlv_source_ip,
       nullif(r.vmta, '')                                  AS vmta,
       nullif(r.code, '')                                  AS code,
       pmta.mask_addresses(nullif(r.pattern, ''))          AS pattern,
       coalesce(rule.category, 'unclassified')             AS category,
       r.n,
       pmta.mask_addresses(r.example)                      AS example,
       host(nullif(r.dlv_source_ip, '0.0.0.0'::inet))      AS dlv_source_ip_text
FROM pmta.rollup_diag r
LEFT JOIN pmta.mailbox_providers mp ON mp.domain = r.rcpt_domain
LEFT JOIN LATERAL (
    SELECT dr.category
    FROM pmta.diag_rules dr
    WHERE (dr.provider IS NULL OR dr.provider = coalesce(mp.provider, r.rcpt_domain))
      AND r.pattern ~* dr.pattern
    ORDER BY dr.priority, dr.rule_id
    LIMIT 1
) rule ON true;

CREATE OR REPLACE VIEW pmta.delivery_time_histogram AS
SELECT (r.bucket AT TIME ZONE 'UTC')::date                 AS day,
       r.source,
       nullif(r.rcpt_domain, '')                           AS rcpt_domain,
       coalesce(mp.provider, nullif(r.rcpt_domain, ''))    AS provider,
       r.bin,
       pmta.delivery_bin_lower(r.bin)                      AS lower_seconds,
       pmta.delivery_bin_upper(r.bin)                      AS upper_seconds,
       r.n
FROM pmta.rollup_delivery_time r
LEFT JOIN pmta.mailbox_providers mp ON mp.domain = r.rcpt_domain;
