-- 0006: every batch of every route is accounted for, and rejects can be retried.
--
-- * pmta.ingest_batches gets a row per committed batch of import, replay and
--   'rejects retry' too (route), and counts the rejects PostgreSQL refused apart
--   from those the parser refused (rejected_by_database);
-- * pmta.rejects says which stage refused a record (stage, sqlstate), keeps the
--   time its batch was received (what a retry parses it with), and counts retries.
-- Immutable once released: change the schema with a new numbered file.

ALTER TABLE pmta.ingest_batches
    ADD COLUMN route text NOT NULL DEFAULT 'pipe'
        CHECK (route IN ('pipe', 'replay', 'import', 'retry')),
    ADD COLUMN rejected_by_database integer NOT NULL DEFAULT 0,
    ADD COLUMN import_path text;

COMMENT ON TABLE pmta.ingest_batches IS
    'One row per batch committed by pmta-pipe (pipe, replay, import or rejects retry), written '
    'in the same transaction as its events: records = inserted + duplicates + rejected';
COMMENT ON COLUMN pmta.ingest_batches.route IS
    'How the batch came: pipe (ingest), replay (the spool of a stopped ingest), import (a file), retry (pmta-pipe rejects retry)';
COMMENT ON COLUMN pmta.ingest_batches.rejected_by_database IS
    'Of rejected, the records PostgreSQL refused (a value it cannot store) rather than the parser';
COMMENT ON COLUMN pmta.ingest_batches.import_path IS 'For route import: the file the batch was read from';
COMMENT ON COLUMN pmta.ingest_batches.batch_records IS
    'Records in the batch as read (header lines not counted); equals records once committed';

ALTER TABLE pmta.rejects
    ADD COLUMN stage text NOT NULL DEFAULT 'parser' CHECK (stage IN ('parser', 'database')),
    ADD COLUMN sqlstate text,
    ADD COLUMN retries integer NOT NULL DEFAULT 0,
    ADD COLUMN retried_at timestamptz;

UPDATE pmta.rejects SET stage = 'database' WHERE reason LIKE 'refused by the database:%';

CREATE INDEX rejects_received_at ON pmta.rejects (received_at);

COMMENT ON COLUMN pmta.rejects.stage IS
    'Who refused the record: parser (not an accounting record pmta-pipe can read) or database (PostgreSQL refused a value)';
COMMENT ON COLUMN pmta.rejects.sqlstate IS 'For stage database: the SQLSTATE of PostgreSQL''s refusal';
COMMENT ON COLUMN pmta.rejects.received_at IS
    'When the batch holding the record was received (the time given to records without any timestamp when it is retried)';
COMMENT ON COLUMN pmta.rejects.retries IS 'How often pmta-pipe rejects retry tried it again and it still failed';
COMMENT ON COLUMN pmta.rejects.retried_at IS 'When pmta-pipe rejects retry last tried it';
