-- Comments on every report view and on every column a BI user sees. Column comments
-- come from one dictionary: a (view, column) entry wins over a ('*', column) entry.

COMMENT ON VIEW pmta.daily_counts IS 'One row per row of pmta.rollup_daily (UTC day, every dimension, record type, bounce category), not grouped: its count in the column of its type, 0 in the others. Sum it with any grouping: the report views do';
COMMENT ON VIEW pmta.daily_traffic IS 'Records per UTC day and every dimension (host, domain, provider, IP, VirtualMTA, pool, job), counts by type side by side; the base of the daily views';
COMMENT ON VIEW pmta.daily_bounces IS 'b and rb records per UTC day, every dimension and bounce category';
COMMENT ON VIEW pmta.hourly_counts IS 'One row per row of pmta.rollup_hourly (UTC hour, host, record type, domain, IP, bounce category), not grouped: its count in the column of its type, 0 in the others. Sum it with any grouping: the hourly report views do';
COMMENT ON VIEW pmta.hourly_traffic IS 'Records per UTC hour, host, domain, provider and IP, counts by type; time is the start of the hour (Grafana time column)';
COMMENT ON VIEW pmta.daily_diag IS 't, tq, b and rb records per UTC day, host, type, domain, IP, VirtualMTA, reply code and normalized diagnostic, categorized by pmta.diag_rules';
COMMENT ON VIEW pmta.delivery_time_histogram IS 'Histogram of delivery times (queued to delivered) of d records per UTC day, host and domain';
COMMENT ON VIEW pmta.delivery_summary IS 'Per UTC day: counts by type and the delivery, bounce and complaint rates';
COMMENT ON VIEW pmta.delivery_by_domain IS 'Per UTC day and recipient domain: delivered, bounced, deferred and delivery rate';
COMMENT ON VIEW pmta.delivery_by_provider IS 'Per UTC day and mailbox provider: delivered, bounced, deferred and delivery rate';
COMMENT ON VIEW pmta.bounce_categories IS 'Per UTC day, provider and PowerMTA bounce category: bounces, with their hard/soft/block/other class';
COMMENT ON VIEW pmta.job_summary IS 'Per UTC day and job id: counts by type and rates';
COMMENT ON VIEW pmta.vmta_summary IS 'Per UTC day, VirtualMTA and pool: counts, attempts and rates';
COMMENT ON VIEW pmta.complaints IS 'Per UTC day, provider, job and sending IP: feedback-loop complaints, deliveries and complaint rate';
COMMENT ON VIEW pmta.hourly IS 'Per UTC hour: counts by type (Grafana time series: time column)';
COMMENT ON VIEW pmta.hourly_by_ip IS 'Per UTC hour and sending IP: delivered, bounced, deferred';
COMMENT ON VIEW pmta.hourly_by_provider IS 'Per UTC hour and mailbox provider: delivered, bounced, deferred';
COMMENT ON VIEW pmta.deferral_codes IS 'Per UTC day and provider: deferrals (t records) by SMTP reply code and enhanced status';
COMMENT ON VIEW pmta.diag_patterns IS 'Per UTC day, provider and record type (t, tq, b, rb): normalized diagnostic texts, their category and count';
COMMENT ON VIEW pmta.deferral_patterns IS 'Per UTC day and provider: deferral (t record) diagnostic texts normalized so that one ISP message is one row, with their category';
COMMENT ON VIEW pmta.ip_summary IS 'Per UTC day and sending IP: delivered, bounced, deferred, attempts and rates';
COMMENT ON VIEW pmta.ip_provider_summary IS 'Per UTC day, sending IP and provider: delivered, bounced, deferred, attempts and rates';
COMMENT ON VIEW pmta.ip_alerts IS 'Open alerts per UTC day and sending IP; thresholds and minimum volumes in pmta.alert_thresholds';
COMMENT ON VIEW pmta.time_to_deliver IS 'Per UTC day and provider: deliveries and p50/p90/p99 seconds from queued to delivered, interpolated from a histogram (exact below 64 s, within 6.25 % above)';
COMMENT ON VIEW pmta.warmup_progress IS 'Per UTC day, sending IP and warm-up plan scope (a provider, or NULL for all): the sending day number (days with messages only), messages sent (delivered + bounced) and the plan''s cap (pmta.warmup_plans)';
COMMENT ON VIEW pmta.ip_alerts_hourly IS 'Open alerts per UTC hour and sending IP: bounce rate, deferral rate at a provider, stopped delivering, warm-up day over plan; thresholds in pmta.alert_thresholds (the *_hourly rows and warmup_over_plan)';

DO $$
DECLARE
    c record;
    txt text;
BEGIN
    CREATE TEMP TABLE column_doc (view_name text, column_name text, doc text) ON COMMIT DROP;
    INSERT INTO column_doc VALUES
        ('*', 'day', 'UTC day of timeLogged'),
        ('*', 'time', 'Start of the UTC hour of timeLogged'),
        ('*', 'source', 'PowerMTA host that wrote the records (--source)'),
        ('*', 'rcpt_domain', 'Recipient domain (lower case); for tq records the domain of the queue'),
        ('*', 'provider', 'Mailbox provider from pmta.mailbox_providers; an unlisted domain is its own provider'),
        ('*', 'dlv_source_ip', 'Sending IP (dlvSourceIp; repSourceIp for complaints); NULL when the record has none'),
        ('*', 'dlv_source_ip_text', 'dlv_source_ip as text, without a netmask (host(dlv_source_ip): 192.0.2.10, 2001:db8::1), for text filters such as Superset''s "contains" or LIKE; NULL when dlv_source_ip is'),
        ('*', 'vmta', 'VirtualMTA'),
        ('*', 'vmta_pool', 'VirtualMTA pool'),
        ('*', 'job_id', 'Job id (jobId; for complaints without one, the X-Job header of the original message); the local part of an e-mail address in it is masked (pmta.mask_addresses: welcome:…@example.com)'),
        ('*', 'record_type', 'PowerMTA record type: t deferred, tq queue deferral, b bounced, rb remote bounce'),
        ('*', 'received', 'Received recipients (r records)'),
        ('*', 'delivered', 'Deliveries (d records)'),
        ('*', 'bounced', 'Bounces (all b records, expired included)'),
        ('*', 'expired', 'Expired messages (b records with bounceCat message-expired), part of bounced'),
        ('*', 'deferred', 'Deferrals (t records: one per failed attempt)'),
        ('*', 'complaints', 'Feedback-loop complaints (f records)'),
        ('*', 'remote_bounces', 'Remote (asynchronous) bounces (rb records)'),
        ('*', 'attempts', 'delivered + bounced + deferred'),
        ('*', 'delivery_rate', 'delivered / (delivered + bounced), 0..1; NULL when both are 0'),
        ('*', 'bounce_rate', 'bounced / attempts (delivered + bounced + deferred), 0..1; NULL when 0 attempts'),
        ('*', 'deferral_rate', 'deferred / attempts (delivered + bounced + deferred), 0..1; NULL when 0 attempts'),
        ('*', 'complaint_rate', 'complaints / delivered, 0..1; NULL when nothing was delivered'),
        ('*', 'bounce_cat', 'PowerMTA bounceCat'),
        ('*', 'bounce_class', 'hard, soft, block or other (pmta.bounce_class; see docs/reports.md)'),
        ('*', 'code', 'SMTP reply code and enhanced status (e.g. 421 4.7.0) from dsnDiag, else the enhanced status of dsnStatus'),
        ('*', 'pattern', 'dsnDiag with addresses, IPs, numbers, ids and URLs replaced by placeholders (pmta.diag_pattern); an address left (quoted local part, address literal) is masked (pmta.mask_addresses)'),
        ('*', 'category', 'Category of the first matching rule in pmta.diag_rules; unclassified when none matches'),
        ('*', 'example', 'One dsnDiag of the group (the smallest), with the local part of every e-mail address replaced by … (pmta.mask_addresses: <…@gmail.com>); the raw text is in pmta.rollup_diag, for pmta_analyst'),
        ('*', 'n', 'Number of records'),
        ('*', 'bin', 'Histogram bin (pmta.delivery_bin): 0..63 are exact seconds, then 16 bins per power of two'),
        ('*', 'lower_seconds', 'Lowest delivery time (seconds) in the bin'),
        ('*', 'upper_seconds', 'Upper edge of the bin in seconds (exclusive; equal to lower_seconds for exact bins)'),
        ('*', 'deliveries', 'Deliveries with a known delivery time'),
        ('*', 'p50_seconds', 'Median seconds from queued to delivered (totalSecondsQueued, else timeLogged - timeQueued)'),
        ('*', 'p90_seconds', '90th percentile of seconds from queued to delivered'),
        ('*', 'p99_seconds', '99th percentile of seconds from queued to delivered'),
        ('*', 'alert', 'Alert name, as in pmta.alert_thresholds'),
        ('*', 'observed', 'Observed value: the rate (0..1), or the deliveries of the day for ip_stopped_delivering'),
        ('*', 'threshold', 'Threshold from pmta.alert_thresholds'),
        ('warmup_progress', 'provider', 'Provider of the plan (as in pmta.mailbox_providers); NULL: the plan counts all providers together'),
        ('warmup_progress', 'vmta_pool', 'The pool whose plan applies to this IP; NULL when the IP has a plan of its own'),
        ('warmup_progress', 'sending_day', 'Sending day number: 1 for the IP''s first day with messages in the plan''s scope; days without a message do not count'),
        ('warmup_progress', 'sent', 'Messages sent that day in the plan''s scope: delivered + bounced (one per message at its final outcome; deferrals are not messages)'),
        ('warmup_progress', 'planned', 'Most messages the plan allows on this sending day (pmta.warmup_plans.max_messages); NULL when the plan has no row for this day'),
        ('warmup_progress', 'over_plan', 'sent > planned'),
        ('ip_alerts_hourly', 'hour', 'Start of the UTC hour of timeLogged'),
        ('ip_alerts_hourly', 'provider', 'Provider for ip_provider_deferral_rate_hourly and a per-provider warm-up plan; NULL for the alerts over all providers'),
        ('ip_alerts_hourly', 'observed', 'The rate (0..1); the deliveries of the hour for ip_stopped_delivering_hourly; the messages sent that UTC day up to the end of the hour for warmup_over_plan'),
        ('ip_alerts_hourly', 'threshold', 'Threshold from pmta.alert_thresholds; for warmup_over_plan, the plan''s messages times that threshold'),
        ('ip_alerts_hourly', 'attempts', 'Attempts (delivered + bounced + deferred) of the hour the rate is computed on; for warmup_over_plan, the messages of the hour'),
        ('delivery_summary', 'bounce_rate', 'bounced / (delivered + bounced), 0..1 (= 1 - delivery_rate); NULL when both are 0'),
        ('job_summary', 'bounce_rate', 'bounced / (delivered + bounced), 0..1 (= 1 - delivery_rate); NULL when both are 0'),
        ('bounce_categories', 'n', 'Bounces (b records) of this category'),
        ('bounce_categories', 'remote_bounces', 'Remote bounces (rb records) of this category'),
        ('deferral_codes', 'n', 'Deferrals (t records)'),
        ('deferral_patterns', 'n', 'Deferrals (t records)'),
        ('ip_alerts', 'provider', 'Provider for ip_provider_deferral_rate; NULL for the alerts over all providers'),
        ('ip_alerts', 'attempts', 'Attempts (delivered + bounced + deferred) the rate is computed on'),
        ('blocklist_hits', 'blocklist', 'Block list named in the reply (pmta.blocklist_patterns.blocklist: the matching pattern with the lowest priority)'),
        ('blocklist_hits', 'n', 'Records (t, tq, b, rb) whose reply names the list: deferred + bounced + queue_deferrals + remote_bounces'),
        ('blocklist_hits', 'queue_deferrals', 'Queue-wide deferrals (tq records) whose reply names the list'),
        ('blocklist_hits', 'example', 'One reply naming the list (the smallest), with the local part of every e-mail address replaced by … (pmta.mask_addresses)'),
        ('blocklist_hits', 'dlv_source_ip_text', 'dlv_source_ip as text (host(dlv_source_ip)), for text filters in BI tools; NULL when dlv_source_ip is'),
        ('blocklist_hits', 'lookup_url', 'Lookup or delisting URL found in the replies (lookup_url_pattern of the list; the smallest), addresses masked; NULL when none carries one'),
        ('daily_diag', 'record_type', 'PowerMTA record type: t, tq, b or rb'),
        ('hourly_traffic', 'time', 'Start of the UTC hour of timeLogged (Grafana time column)'),
        ('hourly', 'time', 'Start of the UTC hour of timeLogged (Grafana time column)'),
        ('ingest_health', 'time', 'When the row was computed (now(): the start of the query''s transaction); the health is of that moment, so a dashboard''s time range keeps every host, a silent one too'),
        ('ingest_health', 'day', 'UTC day of time (the day the row was computed)'),
        ('rollup_daily', 'bucket', 'Start of the UTC day of timeLogged'),
        ('rollup_diag', 'bucket', 'Start of the UTC day of timeLogged'),
        ('rollup_delivery_time', 'bucket', 'Start of the UTC day of timeLogged'),
        ('rollup_hourly', 'bucket', 'Start of the UTC hour of timeLogged'),
        ('rollup_daily', 'job_id', 'Job id as stored (pmta.rollup_job, bounded by pmta.rollup_key; not masked); '''' when none'),
        ('rollup_diag', 'pattern', 'pmta.diag_pattern of dsnDiag (not masked)'),
        ('rollup_diag', 'example', 'The smallest raw dsnDiag of the group by code point (COLLATE "C"), not masked'),
        ('rollup_daily', 'dlv_source_ip', 'pmta.rollup_ip: dlvSourceIp (repSourceIp for complaints); 0.0.0.0 when none'),
        ('rollup_hourly', 'dlv_source_ip', 'pmta.rollup_ip: dlvSourceIp (repSourceIp for complaints); 0.0.0.0 when none'),
        ('rollup_diag', 'dlv_source_ip', 'pmta.rollup_ip: dlvSourceIp (repSourceIp for complaints); 0.0.0.0 when none');
    FOR c IN
        SELECT cl.relname AS view_name, a.attname AS column_name
        FROM pg_class cl
        JOIN pg_namespace ns ON ns.oid = cl.relnamespace AND ns.nspname = 'pmta'
        JOIN pg_attribute a ON a.attrelid = cl.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE cl.relkind = 'v'
    LOOP
        SELECT doc INTO txt FROM column_doc d
        WHERE d.column_name = c.column_name AND d.view_name IN (c.view_name, '*')
        ORDER BY d.view_name = '*'
        LIMIT 1;
        IF txt IS NOT NULL THEN
            EXECUTE format('COMMENT ON COLUMN pmta.%I.%I IS %L', c.view_name, c.column_name, txt);
        END IF;
    END LOOP;
END $$;
