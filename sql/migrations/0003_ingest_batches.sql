-- 0002: one row per committed batch, written in the batch's own transaction, so that
-- a silent or lagging pipe can be seen (and alerted on) from SQL.
-- Immutable once released: change the schema with a new numbered file.

CREATE TABLE pmta.ingest_batches (
    batch_id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source             text        NOT NULL,
    records            integer     NOT NULL,
    inserted           integer     NOT NULL,
    duplicates         integer     NOT NULL,
    rejected           integer     NOT NULL,
    first_time_logged  timestamptz,
    last_time_logged   timestamptz,
    received_at        timestamptz,
    committed_at       timestamptz NOT NULL DEFAULT now(),
    spool_segment      text,
    spool_offset       bigint,
    batch_records      integer,
    UNIQUE (spool_segment, spool_offset)
);
CREATE INDEX ingest_batches_source_committed ON pmta.ingest_batches (source, committed_at);

COMMENT ON TABLE pmta.ingest_batches IS
    'One row per batch committed by pmta-pipe (pipe or replay), written in the same '
    'transaction as its events: a batch is here if and only if its records are in pmta.events';
COMMENT ON COLUMN pmta.ingest_batches.source IS 'The PowerMTA host the batch came from (pmta-pipe --source)';
COMMENT ON COLUMN pmta.ingest_batches.records IS 'Records in the batch (header lines not counted)';
COMMENT ON COLUMN pmta.ingest_batches.inserted IS 'Records added to pmta.events by this batch';
COMMENT ON COLUMN pmta.ingest_batches.duplicates IS 'Records already in pmta.events (loaded before by any route): not added again';
COMMENT ON COLUMN pmta.ingest_batches.rejected IS 'Records that went to pmta.rejects';
COMMENT ON COLUMN pmta.ingest_batches.first_time_logged IS 'Earliest time_logged among the batch''s records';
COMMENT ON COLUMN pmta.ingest_batches.last_time_logged IS 'Latest time_logged among the batch''s records';
COMMENT ON COLUMN pmta.ingest_batches.received_at IS 'When pmta-pipe read the first record of the batch from PowerMTA';
COMMENT ON COLUMN pmta.ingest_batches.committed_at IS 'When the batch was committed (transaction start time)';
COMMENT ON COLUMN pmta.ingest_batches.spool_segment IS 'The local spool segment file the batch was journaled in';
COMMENT ON COLUMN pmta.ingest_batches.spool_offset IS 'Byte offset of the batch in its spool segment; with spool_segment, identifies the batch';
COMMENT ON COLUMN pmta.ingest_batches.batch_records IS 'Records in the spooled batch: a batch split to isolate a refused record is committed in parts, and is complete when records reaches this';
