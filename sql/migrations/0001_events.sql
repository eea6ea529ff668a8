-- 0001: raw accounting events, rejects, and daily partitions created on demand.
-- Immutable once released: change the schema with a new numbered file.

CREATE TABLE pmta.events (
    time_logged            timestamptz NOT NULL,
    record_id              uuid        NOT NULL,
    record_type            text        NOT NULL,
    source                 text        NOT NULL,
    time_queued            timestamptz,
    time_imprinted         timestamptz,
    time_first_attempt     timestamptz,
    total_seconds_queued   integer,
    orig                   text,
    rcpt                   text,
    orcpt                  text,
    dsn_action             text,
    dsn_status             text,
    dsn_diag               text,
    dsn_mta                text,
    bounce_cat             text,
    src_type               text,
    src_mta                text,
    dlv_type               text,
    dlv_source_ip          inet,
    dlv_destination_ip     inet,
    dlv_esmtp_available    text,
    dlv_size               bigint,
    dlv_tls_protocol       text,
    dlv_tls_cipher         text,
    vmta                   text,
    vmta_pool              text,
    job_id                 text,
    env_id                 text,
    queue                  text,
    rcv_smtp_user          text,
    rcv_source_ip          inet,
    rcv_destination_ip     inet,
    dsn_reporting_mta      text,
    format                 text,
    feedback_type          text,
    user_agent             text,
    reporting_mta          text,
    reported_domain        text,
    rep_source_ip          inet,
    rcpt_domain            text,
    extra                  jsonb,
    PRIMARY KEY (time_logged, record_id)
) PARTITION BY RANGE (time_logged);

COMMENT ON TABLE pmta.events IS
    'One row per PowerMTA accounting record, partitioned by UTC day of time_logged. '
    'Typed columns are the PowerMTA fields snake-cased (dlvSourceIp -> dlv_source_ip); '
    'every other column is in extra under its original name.';
COMMENT ON COLUMN pmta.events.time_logged IS 'timeLogged (else timeQueued, else the time pmta-pipe received the record: see extra.pmtaPipeTimeFrom)';
COMMENT ON COLUMN pmta.events.record_id IS 'Identity of the record: MD5 of its type and field values, independent of column order and source';
COMMENT ON COLUMN pmta.events.record_type IS 'PowerMTA record type: d delivered, b bounced, t deferred, tq queue deferral, r received, f complaint, rb remote bounce, rs remote status';
COMMENT ON COLUMN pmta.events.source IS 'The PowerMTA host (pmta-pipe --source, default the host name)';
COMMENT ON COLUMN pmta.events.rcpt_domain IS 'Lower-cased domain of rcpt';
COMMENT ON COLUMN pmta.events.extra IS 'Columns without a typed column (header_*, arf_*, userString, ...), and typed values that did not parse, under their original names';

CREATE TABLE pmta.rejects (
    reject_id    uuid        PRIMARY KEY,
    source       text        NOT NULL,
    reason       text        NOT NULL,
    raw_line     text        NOT NULL,
    position     bigint,
    header_line  text,
    received_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pmta.rejects IS 'Records that could not be loaded, with their raw text and the reason; one row per distinct raw text';
COMMENT ON COLUMN pmta.rejects.position IS 'Record number in its input (pipe stream or file), counting from 1';
COMMENT ON COLUMN pmta.rejects.header_line IS 'The header line in force when the record was read';

-- Creates the daily partitions of pmta.events that the given UTC days need.
-- Called in a transaction of its own before a batch is loaded; serialized by an
-- advisory lock so that concurrent loaders never race on the same partition.
CREATE FUNCTION pmta.ensure_partitions(days date[]) RETURNS integer
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
            IF to_regclass('pmta.' || name) IS NULL THEN
                EXECUTE format(
                    'CREATE TABLE pmta.%I PARTITION OF pmta.events FOR VALUES FROM (%L) TO (%L)',
                    name, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
                created := created + 1;
            END IF;
        END IF;
    END LOOP;
    RETURN created;
END $$;

-- Rollups maintained in each batch's transaction. The loader calls this after the
-- upsert, with the rows it actually inserted in the temporary table
-- pg_temp.batch_inserted; later migrations replace the body.
CREATE FUNCTION pmta.apply_rollups() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RETURN;
END $$;
