-- Schema pmta_report: the report views, and nothing else, for BI tools.
--
-- Schema pmta holds the raw events and their daily partitions, the rejects, the
-- rollups, the ledgers and the reference tables beside the views. A BI tool lists a
-- schema from the catalog (Superset and SQLAlchemy's inspector: pg_class by schema,
-- whatever the privileges), so pmta_reader saw all of them and failed only when it
-- queried one. pmta_report.X is `SELECT * FROM pmta.X` for every view X of pmta but
-- the rollup views (pmta.rollup_*, the analyst's), with X's comments: point a BI
-- connection at pmta_report. The views of pmta keep their names, for psql, Grafana
-- dashboards and `pmta-pipe report`; both read the same rows.
--
-- Created here, not in a migration: the schema belongs with the views that fill it,
-- and this file (the last of sql/views, after 99_comments.sql, whose comments it
-- copies) runs after every change of any view file, so a view added to pmta gets its
-- pmta_report twin at the same `pmta-pipe migrate`. `SELECT *` is expanded when a
-- view is made: a column appended to pmta.X is appended here at the next run; a
-- column dropped, renamed or retyped (CREATE OR REPLACE VIEW cannot) makes the view
-- again, which drops its grants: run deploy/roles.sql after migrate, as always. A view
-- of pmta with dlv_source_ip (inet) but no dlv_source_ip_text gets that text column
-- here (host(dlv_source_ip)), last. The grants are deploy/roles.sql's: a view of
-- pmta_report is granted to pmta_reader only when the view of pmta it reads is.
--
-- CREATE SCHEMA needs CREATE on the database (the role that runs migrate created
-- schema pmta with it); where a DBA made schema pmta for the owner instead, the DBA
-- makes this one too: CREATE SCHEMA pmta_report AUTHORIZATION <owner>.

DO $report$
DECLARE
    v record;
    a record;
    body text;
    doc text;
    ip_text_doc constant text :=
        'dlv_source_ip as text, without a netmask (host(dlv_source_ip): 192.0.2.10, '
        '2001:db8::1), for text filters such as Superset''s "contains" or LIKE; NULL when '
        'dlv_source_ip is';
BEGIN
    IF to_regnamespace('pmta_report') IS NULL THEN
        CREATE SCHEMA pmta_report;
    END IF;
    COMMENT ON SCHEMA pmta_report IS
        'pmta-pipe report views for BI tools: pmta_report.X reads pmta.X (every report view, '
        'nothing else); connect Superset, Metabase and the like here';

    -- twins of views that are no longer report views of pmta
    FOR v IN
        SELECT c.relname
        FROM pg_class c
        WHERE c.relnamespace = 'pmta_report'::regnamespace AND c.relkind = 'v'
          AND NOT EXISTS (SELECT 1 FROM pg_class p
                          WHERE p.relnamespace = 'pmta'::regnamespace AND p.relkind = 'v'
                            AND p.relname = c.relname AND p.relname NOT LIKE 'rollup\_%')
    LOOP
        EXECUTE format('DROP VIEW pmta_report.%I', v.relname);
    END LOOP;

    FOR v IN
        SELECT c.oid, c.relname,
               EXISTS (SELECT 1 FROM pg_attribute x
                       WHERE x.attrelid = c.oid AND x.attname = 'dlv_source_ip'
                         AND x.atttypid = 'inet'::regtype AND NOT x.attisdropped)
               AND NOT EXISTS (SELECT 1 FROM pg_attribute x
                               WHERE x.attrelid = c.oid AND x.attname = 'dlv_source_ip_text'
                                 AND NOT x.attisdropped) AS add_ip_text
        FROM pg_class c
        WHERE c.relnamespace = 'pmta'::regnamespace AND c.relkind = 'v'
          AND c.relname NOT LIKE 'rollup\_%'
        ORDER BY c.relname
    LOOP
        body := format('SELECT v.*%s FROM pmta.%I v',
                       CASE WHEN v.add_ip_text
                            THEN ', host(v.dlv_source_ip) AS dlv_source_ip_text' ELSE '' END,
                       v.relname);
        BEGIN
            EXECUTE format('CREATE OR REPLACE VIEW pmta_report.%I AS %s', v.relname, body);
        EXCEPTION WHEN invalid_table_definition THEN
            -- a column of pmta.X dropped, renamed, retyped or moved
            EXECUTE format('DROP VIEW pmta_report.%I', v.relname);
            EXECUTE format('CREATE VIEW pmta_report.%I AS %s', v.relname, body);
        END;
        EXECUTE format('COMMENT ON VIEW pmta_report.%I IS %L', v.relname,
                       obj_description(v.oid, 'pg_class'));
        FOR a IN
            SELECT t.attname, col_description(v.oid, s.attnum) AS doc
            FROM pg_attribute t
            LEFT JOIN pg_attribute s ON s.attrelid = v.oid AND s.attname = t.attname
                                    AND NOT s.attisdropped
            WHERE t.attrelid = format('pmta_report.%I', v.relname)::regclass
              AND t.attnum > 0 AND NOT t.attisdropped
        LOOP
            doc := CASE WHEN a.attname = 'dlv_source_ip_text' AND v.add_ip_text
                        THEN ip_text_doc ELSE a.doc END;
            EXECUTE format('COMMENT ON COLUMN pmta_report.%I.%I IS %L', v.relname, a.attname,
                           doc);
        END LOOP;
    END LOOP;
END
$report$;
