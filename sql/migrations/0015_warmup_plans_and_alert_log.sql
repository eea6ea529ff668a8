-- 0015: warm-up plans, the thresholds of the hourly alerts, and the state of the
-- alerts `pmta-pipe alerts` notifies.
--
-- * pmta.warmup_plans: the most messages an IP (or each IP of a VirtualMTA pool) may
--   send on its Nth sending day, to one provider or to all. Read at query time by the
--   view pmta.warmup_progress (sql/views/70_alerts.sql): edits apply to the past too.
-- * pmta.alert_thresholds gets the hourly alerts of pmta.ip_alerts_hourly and the
--   warm-up alert, and a look-back (lookback_hours) for "stopped delivering".
-- * pmta.alert_log: one row per episode of an alert (opened .. closed) and whether its
--   opening and its closing were notified; `pmta-pipe alerts` writes it.
--
-- Immutable once released: change the schema with a new numbered file.

CREATE TABLE pmta.warmup_plans (
    plan_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dlv_source_ip inet,
    vmta_pool     text,
    provider      text,
    sending_day   integer NOT NULL CHECK (sending_day >= 1),
    max_messages  bigint  NOT NULL CHECK (max_messages >= 0),
    description   text,
    CHECK ((dlv_source_ip IS NULL) <> (vmta_pool IS NULL)),
    CHECK (dlv_source_ip IS NULL
           OR masklen(dlv_source_ip) = CASE family(dlv_source_ip) WHEN 4 THEN 32 ELSE 128 END),
    CHECK (vmta_pool <> ''),
    CHECK (provider <> '')
);
-- one cap per IP or pool, provider (or all) and sending day
CREATE UNIQUE INDEX warmup_plans_one_cap ON pmta.warmup_plans
    (coalesce(host(dlv_source_ip), ''), coalesce(vmta_pool, ''), coalesce(provider, ''),
     sending_day);
COMMENT ON TABLE pmta.warmup_plans IS
    'Warm-up plans: the most messages (delivered + bounced) an IP, or each IP of a VirtualMTA '
    'pool, may send on its Nth sending day (days with traffic only), to one provider or to all. '
    'Edit freely: pmta.warmup_progress reads it at query time.';
COMMENT ON COLUMN pmta.warmup_plans.dlv_source_ip IS
    'The sending IP the plan is for (a plan for an IP wins over its pool''s); NULL for a pool plan';
COMMENT ON COLUMN pmta.warmup_plans.vmta_pool IS
    'The VirtualMTA pool whose every IP follows the plan; NULL for an IP plan';
COMMENT ON COLUMN pmta.warmup_plans.provider IS
    'Provider, as the report views name it (pmta.mailbox_providers); NULL: all providers together';
COMMENT ON COLUMN pmta.warmup_plans.sending_day IS
    'Sending day number, 1 for the first day the IP sent (in the plan''s provider scope); days '
    'without traffic do not count';
COMMENT ON COLUMN pmta.warmup_plans.max_messages IS
    'Most messages (delivered + bounced records) that day';

ALTER TABLE pmta.alert_thresholds ADD COLUMN lookback_hours integer CHECK (lookback_hours >= 1);
COMMENT ON COLUMN pmta.alert_thresholds.lookback_hours IS
    'ip_stopped_delivering_hourly: how many hours before the hour the IP must have delivered in; '
    'NULL for the other alerts';
INSERT INTO pmta.alert_thresholds (alert, threshold, min_attempts, description, lookback_hours)
VALUES
    ('ip_bounce_rate_hourly', 0.05, 50,
     'Bounce rate (bounced / attempts) of an IP over a UTC hour above the threshold', NULL),
    ('ip_provider_deferral_rate_hourly', 0.20, 50,
     'Deferral rate (deferred / attempts) of an IP at one provider over a UTC hour above the '
     'threshold', NULL),
    ('ip_stopped_delivering_hourly', 0, 20,
     'An IP that delivered in one of the lookback_hours hours before delivers no more than the '
     'threshold in this UTC hour while it still has attempts', 3),
    ('warmup_over_plan', 1, 0,
     'An IP sent more messages on a UTC day than its warm-up plan allows (pmta.warmup_plans) times '
     'the threshold (1: any message over the plan)', NULL);

CREATE TABLE pmta.alert_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_key      text        NOT NULL,
    alert          text        NOT NULL,
    dlv_source_ip  inet,
    provider       text,
    detail         text,
    opened         timestamptz NOT NULL,
    last_seen      timestamptz NOT NULL,
    closed         timestamptz,
    observed       double precision,
    threshold      double precision,
    attempts       bigint,
    grain          text        NOT NULL CHECK (grain IN ('hour', 'day')),
    period         timestamptz,
    notified_open  boolean     NOT NULL DEFAULT false,
    notified_close boolean     NOT NULL DEFAULT false,
    CHECK (closed IS NULL OR closed >= opened)
);
-- at most one open episode per alert
CREATE UNIQUE INDEX alert_log_open_key ON pmta.alert_log (alert_key) WHERE closed IS NULL;
CREATE INDEX alert_log_to_notify ON pmta.alert_log (id)
    WHERE NOT notified_open OR (closed IS NOT NULL AND NOT notified_close);
COMMENT ON TABLE pmta.alert_log IS
    'Alerts as `pmta-pipe alerts` saw them: one row per episode (opened .. closed), with what was '
    'notified. Written only by pmta-pipe alerts';
COMMENT ON COLUMN pmta.alert_log.alert_key IS
    'alert|IP|provider|detail: what makes two observations the same alert';
COMMENT ON COLUMN pmta.alert_log.detail IS 'The block list, for blocklist_hit alerts; else NULL';
COMMENT ON COLUMN pmta.alert_log.opened IS 'When a run first saw the alert';
COMMENT ON COLUMN pmta.alert_log.last_seen IS 'When a run last saw the alert';
COMMENT ON COLUMN pmta.alert_log.closed IS 'When a run no longer saw it in its window; NULL while open';
COMMENT ON COLUMN pmta.alert_log.observed IS 'Observed value the last time it was seen';
COMMENT ON COLUMN pmta.alert_log.grain IS 'hour: an alert of pmta.ip_alerts_hourly; day: of pmta.ip_alerts or pmta.blocklist_hits';
COMMENT ON COLUMN pmta.alert_log.period IS 'Start of the UTC hour or day of the last observation';
COMMENT ON COLUMN pmta.alert_log.notified_open IS 'The opening was notified';
COMMENT ON COLUMN pmta.alert_log.notified_close IS 'The closing was notified';
