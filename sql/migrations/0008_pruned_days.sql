-- 0008: days whose raw events were pruned are sealed. Their rollups are kept (that is
-- what prune is for), so loading their records again (importing old accounting files,
-- a routine backfill) would add them to the rollups a second time and double the
-- reports. pmta-pipe counts a record of a sealed day as a duplicate and does not load
-- it, until an operator reopens the day (pmta-pipe prune --reopen DAY), which also
-- deletes the day's rollups so that a new import rebuilds them exactly.
-- Immutable once released: change the schema with a new numbered file.

CREATE TABLE pmta.pruned_days (
    day        date        PRIMARY KEY,
    pruned_at  timestamptz NOT NULL DEFAULT now(),
    events     bigint
);

COMMENT ON TABLE pmta.pruned_days IS
    'UTC days whose raw events pmta-pipe prune dropped: records of these days are counted as '
    'duplicates and not loaded again (their rollups are kept); pmta-pipe prune --reopen DAY '
    'removes a day and its rollups';
COMMENT ON COLUMN pmta.pruned_days.day IS 'The UTC day (the partition pmta.events_YYYYMMDD)';
COMMENT ON COLUMN pmta.pruned_days.pruned_at IS 'When its partition was dropped';
COMMENT ON COLUMN pmta.pruned_days.events IS 'Rows the partition held when it was dropped';

-- days pruned before this migration: rollups without their raw partition
INSERT INTO pmta.pruned_days (day)
SELECT DISTINCT (r.bucket AT TIME ZONE 'UTC')::date
FROM pmta.rollup_daily r
WHERE to_regclass('pmta.events_' || to_char(r.bucket AT TIME ZONE 'UTC', 'YYYYMMDD')) IS NULL
ON CONFLICT DO NOTHING;
