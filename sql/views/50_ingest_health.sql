-- Health of each pipe, from pmta.ingest_batches: is it committing, and how far behind is it?
-- The recency columns count the live routes' own batches (pipe and webhook, and replay
-- of their spool), so that importing old files or retrying rejects never makes a silent
-- pipe look alive;
-- the volume columns count every route.
CREATE OR REPLACE VIEW pmta.ingest_health AS
SELECT
    b.source,
    max(b.committed_at) FILTER (WHERE b.route IN ('pipe', 'webhook', 'replay'))
                                                               AS last_committed_at,
    now() - max(b.committed_at) FILTER (WHERE b.route IN ('pipe', 'webhook', 'replay'))
                                                               AS since_last_commit,
    max(b.last_time_logged) FILTER (WHERE b.route IN ('pipe', 'webhook', 'replay'))
                                                               AS last_time_logged,
    now() - max(b.last_time_logged) FILTER (WHERE b.route IN ('pipe', 'webhook', 'replay'))
                                                               AS data_lag,
    (array_agg(b.committed_at - b.received_at ORDER BY b.committed_at DESC)
        FILTER (WHERE b.route IN ('pipe', 'webhook', 'replay')))[1]       AS last_batch_delay,
    count(*) FILTER (WHERE b.committed_at > now() - interval '1 hour')
                                                               AS batches_last_hour,
    coalesce(sum(b.records) FILTER (WHERE b.committed_at > now() - interval '1 hour'), 0)
                                                               AS records_last_hour,
    coalesce(sum(b.inserted) FILTER (WHERE b.committed_at > now() - interval '1 hour'), 0)
                                                               AS inserted_last_hour,
    coalesce(sum(b.rejected) FILTER (WHERE b.committed_at > now() - interval '1 hour'), 0)
                                                               AS rejected_last_hour,
    coalesce(sum(b.rejected_by_database)
        FILTER (WHERE b.committed_at > now() - interval '1 hour'), 0)
                                                               AS rejected_by_database_last_hour,
    max(b.committed_at)                                        AS last_any_commit_at,
    -- the moment the row describes, for BI tools that want a time column: not a
    -- commit time, which would drop a silent host from a dashboard's time range
    now()                                                      AS time,
    (now() AT TIME ZONE 'UTC')::date                           AS day
FROM pmta.ingest_batches AS b
GROUP BY b.source;

COMMENT ON VIEW pmta.ingest_health IS
    'One row per PowerMTA host (source): when its pipe last committed a batch, how far '
    'behind the records are, and volumes in the last hour (every route: pipe, replay, '
    'import, rejects retry). Alert when since_last_commit grows beyond what the host''s '
    'traffic allows.';
COMMENT ON COLUMN pmta.ingest_health.source IS 'The PowerMTA host (pmta-pipe --source)';
COMMENT ON COLUMN pmta.ingest_health.last_committed_at IS 'When the pipe (ingest, or replay of its spool) last committed a batch from this host; NULL when only imports loaded it';
COMMENT ON COLUMN pmta.ingest_health.since_last_commit IS 'Time since the pipe''s last commit: a silent pipe shows here';
COMMENT ON COLUMN pmta.ingest_health.last_time_logged IS 'The newest timeLogged the pipe loaded from this host';
COMMENT ON COLUMN pmta.ingest_health.data_lag IS 'now() minus the newest timeLogged the pipe loaded: how stale the data is';
COMMENT ON COLUMN pmta.ingest_health.last_batch_delay IS 'For the pipe''s last batch, from receiving its first record to its commit (large after an outage: a backlog replayed from the spool)';
COMMENT ON COLUMN pmta.ingest_health.batches_last_hour IS 'Batches committed in the last hour, every route';
COMMENT ON COLUMN pmta.ingest_health.records_last_hour IS 'Records committed in the last hour (inserted, duplicates and rejects), every route';
COMMENT ON COLUMN pmta.ingest_health.inserted_last_hour IS 'Records added to pmta.events in the last hour';
COMMENT ON COLUMN pmta.ingest_health.rejected_last_hour IS 'Records rejected in the last hour';
COMMENT ON COLUMN pmta.ingest_health.rejected_by_database_last_hour IS 'Of the records rejected in the last hour, those PostgreSQL refused (stage database in pmta.rejects)';
COMMENT ON COLUMN pmta.ingest_health.last_any_commit_at IS 'When any route (pipe, replay, import, rejects retry) last committed a batch from this host';
