-- 0005: the loader counts each batch's rollup groups itself (pmta_pipe/rollups.py) and
-- upserts only the groups; pmta.apply_rollups() stays as the SQL definition of the
-- same counts. Nothing changes in the tables; their descriptions follow.

COMMENT ON FUNCTION pmta.apply_rollups() IS
    'The report rollups defined in SQL: adds the rows of a temporary table batch_inserted '
    '(LIKE pmta.events) to every rollup table. pmta-pipe counts the same per batch itself; '
    'use this to rebuild the rollups from pmta.events (docs/operations.md).';

COMMENT ON COLUMN pmta.rollup_diag.example IS
    'The smallest raw dsnDiag of the group by code point (COLLATE "C")';
