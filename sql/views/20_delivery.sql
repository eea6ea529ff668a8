-- Delivery, bounce, job, VirtualMTA, complaint and hourly views (from the rollups).
-- The hourly views carry day, the UTC day of time, after their counts: a BI tool's own
-- day grain (date_trunc('day', time)) follows the session's TimeZone, day does not.

CREATE OR REPLACE VIEW pmta.delivery_summary AS
SELECT day,
       sum(received)::bigint   AS received,
       sum(delivered)::bigint  AS delivered,
       sum(bounced)::bigint    AS bounced,
       sum(expired)::bigint    AS expired,
       sum(deferred)::bigint   AS deferred,
       sum(complaints)::bigint AS complaints,
       pmta.rate(sum(delivered), sum(delivered) + sum(bounced)) AS delivery_rate,
       pmta.rate(sum(bounced), sum(delivered) + sum(bounced))   AS bounce_rate,
       pmta.rate(sum(complaints), sum(delivered))               AS complaint_rate
FROM pmta.daily_counts
GROUP BY day;

CREATE OR REPLACE VIEW pmta.delivery_by_domain AS
SELECT day, rcpt_domain, provider,
       sum(delivered)::bigint AS delivered,
       sum(bounced)::bigint   AS bounced,
       sum(deferred)::bigint  AS deferred,
       pmta.rate(sum(delivered), sum(delivered) + sum(bounced)) AS delivery_rate
FROM pmta.daily_counts
GROUP BY day, rcpt_domain, provider
HAVING sum(delivered) + sum(bounced) + sum(deferred) > 0;

CREATE OR REPLACE VIEW pmta.delivery_by_provider AS
SELECT day, provider,
       sum(delivered)::bigint AS delivered,
       sum(bounced)::bigint   AS bounced,
       sum(deferred)::bigint  AS deferred,
       pmta.rate(sum(delivered), sum(delivered) + sum(bounced)) AS delivery_rate
FROM pmta.daily_counts
GROUP BY day, provider
HAVING sum(delivered) + sum(bounced) + sum(deferred) > 0;

CREATE OR REPLACE VIEW pmta.bounce_categories AS
SELECT day, provider, bounce_cat, bounce_class,
       sum(bounced)::bigint        AS n,
       sum(remote_bounces)::bigint AS remote_bounces
FROM pmta.daily_counts
WHERE record_type IN ('b', 'rb')
GROUP BY day, provider, bounce_cat, bounce_class;

CREATE OR REPLACE VIEW pmta.job_summary AS
SELECT day, job_id,
       sum(received)::bigint       AS received,
       sum(delivered)::bigint      AS delivered,
       sum(bounced)::bigint        AS bounced,
       sum(expired)::bigint        AS expired,
       sum(deferred)::bigint       AS deferred,
       sum(complaints)::bigint     AS complaints,
       sum(remote_bounces)::bigint AS remote_bounces,
       pmta.rate(sum(delivered), sum(delivered) + sum(bounced)) AS delivery_rate,
       pmta.rate(sum(bounced), sum(delivered) + sum(bounced))   AS bounce_rate,
       pmta.rate(sum(complaints), sum(delivered))               AS complaint_rate
FROM pmta.daily_counts
GROUP BY day, job_id
HAVING sum(received) + sum(delivered) + sum(bounced) + sum(deferred) + sum(complaints)
       + sum(remote_bounces) > 0;

CREATE OR REPLACE VIEW pmta.vmta_summary AS
SELECT day, vmta, vmta_pool,
       sum(received)::bigint  AS received,
       sum(delivered)::bigint AS delivered,
       sum(bounced)::bigint   AS bounced,
       sum(expired)::bigint   AS expired,
       sum(deferred)::bigint  AS deferred,
       (sum(delivered) + sum(bounced) + sum(deferred))::bigint AS attempts,
       pmta.rate(sum(delivered), sum(delivered) + sum(bounced)) AS delivery_rate,
       pmta.rate(sum(bounced), sum(delivered) + sum(bounced) + sum(deferred))  AS bounce_rate,
       pmta.rate(sum(deferred), sum(delivered) + sum(bounced) + sum(deferred)) AS deferral_rate
FROM pmta.daily_counts
GROUP BY day, vmta, vmta_pool
HAVING sum(received) + sum(delivered) + sum(bounced) + sum(deferred) > 0;

CREATE OR REPLACE VIEW pmta.complaints AS
SELECT day, provider, job_id, dlv_source_ip,
       sum(complaints)::bigint AS complaints,
       sum(delivered)::bigint  AS delivered,
       pmta.rate(sum(complaints), sum(delivered)) AS complaint_rate,
       host(dlv_source_ip)                        AS dlv_source_ip_text
FROM pmta.daily_counts
GROUP BY day, provider, job_id, dlv_source_ip
HAVING sum(complaints) > 0 OR sum(delivered) > 0;

CREATE OR REPLACE VIEW pmta.hourly AS
SELECT time,
       sum(received)::bigint       AS received,
       sum(delivered)::bigint      AS delivered,
       sum(bounced)::bigint        AS bounced,
       sum(expired)::bigint        AS expired,
       sum(deferred)::bigint       AS deferred,
       sum(complaints)::bigint     AS complaints,
       sum(remote_bounces)::bigint AS remote_bounces,
       (time AT TIME ZONE 'UTC')::date AS day
FROM pmta.hourly_counts
GROUP BY time;

CREATE OR REPLACE VIEW pmta.hourly_by_ip AS
SELECT time, dlv_source_ip,
       sum(delivered)::bigint AS delivered,
       sum(bounced)::bigint   AS bounced,
       sum(deferred)::bigint  AS deferred,
       (time AT TIME ZONE 'UTC')::date AS day,
       host(dlv_source_ip)    AS dlv_source_ip_text
FROM pmta.hourly_counts
GROUP BY time, dlv_source_ip
HAVING sum(delivered) + sum(bounced) + sum(deferred) > 0;

CREATE OR REPLACE VIEW pmta.hourly_by_provider AS
SELECT time, provider,
       sum(delivered)::bigint AS delivered,
       sum(bounced)::bigint   AS bounced,
       sum(deferred)::bigint  AS deferred,
       (time AT TIME ZONE 'UTC')::date AS day
FROM pmta.hourly_counts
GROUP BY time, provider
HAVING sum(delivered) + sum(bounced) + sum(deferred) > 0;
