-- 0013: two loaders creating the same day's partition at once no longer fail.
--
-- pmta.ensure_partitions (0001) took an advisory lock and looked again with
-- to_regclass before CREATE TABLE, but an advisory lock does not make the backend read
-- the catalog invalidations of the transaction it waited for: the second look could
-- still miss the partition the first loader had just committed, and CREATE TABLE then
-- failed with duplicate_table ("relation events_20260113 already exists", seen with
-- import --jobs 2). The lock stays (one creator at a time); a partition that exists
-- by the time CREATE TABLE runs counts as made by someone else.
--
-- Immutable once released: change the schema with a new numbered file.

CREATE OR REPLACE FUNCTION pmta.ensure_partitions(days date[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    created integer := 0;
    name text;
BEGIN
    FOREACH d IN ARRAY days LOOP
        name := 'events_' || to_char(d, 'YYYYMMDD');
        IF to_regclass('pmta.' || name) IS NULL THEN
            PERFORM pg_advisory_xact_lock(hashtext('pmta.events partitions'));
            BEGIN
                EXECUTE format(
                    'CREATE TABLE pmta.%I PARTITION OF pmta.events FOR VALUES FROM (%L) TO (%L)',
                    name, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
                created := created + 1;
            EXCEPTION WHEN duplicate_table THEN
                NULL;  -- another loader created it first
            END;
        END IF;
    END LOOP;
    RETURN created;
END $$;
