-- 0010: the materializer's phase 1 can be told that hours are closed. prune drops
-- the raw events of days older than its cut-off only once their rollups are
-- materialized; the threshold follows the newest record loaded (minus the grace), so
-- the last hours of old data (nothing loaded after them) would never be. With
-- at_least, the threshold is raised to the start of that hour at least (never beyond
-- now()): prune passes its cut-off, the days it drops being closed by definition.
-- Immutable once released: change the schema with a new numbered file.

DROP FUNCTION pmta.rollup_raise_threshold(interval);

CREATE FUNCTION pmta.rollup_raise_threshold(grace interval, at_least timestamptz DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    s pmta.rollup_state;
    newest timestamptz;
    t timestamptz;
BEGIN
    SELECT * INTO s FROM pmta.rollup_state FOR UPDATE;
    SELECT max(time_logged) INTO newest FROM pmta.events;
    IF newest IS NULL THEN
        RETURN s.threshold;
    END IF;
    t := pmta.utc_hour(least(now(), newest) - grace);
    IF at_least IS NOT NULL THEN
        t := greatest(t, pmta.utc_hour(least(at_least, now())));
    END IF;
    IF s.threshold IS NULL OR t > s.threshold THEN
        UPDATE pmta.rollup_state SET threshold = t;
        RETURN t;
    END IF;
    RETURN s.threshold;
END $$;
COMMENT ON FUNCTION pmta.rollup_raise_threshold(interval, timestamptz) IS
    'Phase 1 of a materializer step: raises the invalidation threshold to the start of the UTC '
    'hour of min(now(), newest event) - grace, or of at_least; waits for loaders holding the '
    'state row FOR KEY SHARE; returns the threshold';
