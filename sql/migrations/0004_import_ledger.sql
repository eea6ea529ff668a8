-- 0002: the ledger of imported accounting files (pmta-pipe import).
-- One row per file path. Progress columns are updated in the same transaction as
-- each loaded batch, so they never claim more than the database holds.

CREATE TABLE pmta.import_files (
    path               text        PRIMARY KEY,
    fingerprint        text        NOT NULL,
    fingerprint_bytes  integer     NOT NULL,
    size               bigint      NOT NULL,
    mtime              timestamptz NOT NULL,
    compression        text        NOT NULL,
    source             text        NOT NULL,
    header_line        text,
    records_read       bigint      NOT NULL DEFAULT 0,
    bytes_done         bigint,
    records            bigint      NOT NULL DEFAULT 0,
    inserted           bigint      NOT NULL DEFAULT 0,
    duplicates         bigint      NOT NULL DEFAULT 0,
    rejected           bigint      NOT NULL DEFAULT 0,
    completed          boolean     NOT NULL DEFAULT false,
    error              text,
    started_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz
);
CREATE INDEX import_files_fingerprint ON pmta.import_files (fingerprint, size) WHERE completed;

COMMENT ON TABLE pmta.import_files IS
    'Accounting files read by pmta-pipe import: what was read and loaded, so that a re-run '
    'skips finished files, resumes interrupted ones and reads only what a growing file added';
COMMENT ON COLUMN pmta.import_files.path IS 'Absolute path of the file when it was imported';
COMMENT ON COLUMN pmta.import_files.fingerprint IS 'SHA-256 (hex) of the first fingerprint_bytes bytes of the file as stored (compressed or not)';
COMMENT ON COLUMN pmta.import_files.fingerprint_bytes IS 'How many leading bytes the fingerprint covers: the file size, at most 65536';
COMMENT ON COLUMN pmta.import_files.size IS 'Size of the file on disk when it was last read';
COMMENT ON COLUMN pmta.import_files.compression IS 'gzip, bzip2, xz, zstd or plain, recognised from the content';
COMMENT ON COLUMN pmta.import_files.header_line IS 'The header line in force at the last loaded record';
COMMENT ON COLUMN pmta.import_files.records_read IS 'Records (header lines included) read and committed so far, counted from the start of the file';
COMMENT ON COLUMN pmta.import_files.bytes_done IS 'When completed: decompressed bytes read, where a grown plain file is read on from';
COMMENT ON COLUMN pmta.import_files.records IS 'Records (header lines excluded) loaded or rejected from this file, over every run';
COMMENT ON COLUMN pmta.import_files.completed IS 'True once the file was read to its end and every record committed';
COMMENT ON COLUMN pmta.import_files.error IS 'Why the last run stopped before the end of the file';
