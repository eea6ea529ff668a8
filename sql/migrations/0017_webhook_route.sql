-- 0017: batches that pmta-pipe serve received over PowerMTA's HTTP accounting webhook
-- are accounted for under a route of their own, webhook, so that pmta.ingest_batches
-- and pmta.ingest_health tell a host's webhook from its pipe (both may run at once,
-- docs/operations.md). They were recorded as pipe batches until now; those rows stay
-- as they are.
--
-- Immutable once released: change the schema with a new numbered file.

ALTER TABLE pmta.ingest_batches DROP CONSTRAINT ingest_batches_route_check;
ALTER TABLE pmta.ingest_batches ADD CONSTRAINT ingest_batches_route_check
    CHECK (route IN ('pipe', 'webhook', 'replay', 'import', 'retry'));

COMMENT ON TABLE pmta.ingest_batches IS
    'One row per batch committed by pmta-pipe (pipe, webhook, replay, import or rejects retry), '
    'written in the same transaction as its events: records = inserted + duplicates + rejected';
COMMENT ON COLUMN pmta.ingest_batches.route IS
    'How the batch came: pipe (ingest), webhook (serve), replay (the spool of a stopped ingest '
    'or serve), import (a file), retry (pmta-pipe rejects retry)';
