-- pmta-pipe database roles: who may read the reports, who may load data.
--
-- Run with psql, as the schema owner (the role that runs `pmta-pipe migrate`) or a
-- superuser, AFTER `pmta-pipe migrate`, and again after EVERY migrate:
--
--     pmta-pipe migrate --dsn 'service=pmta-owner'
--     psql 'service=pmta-owner' -v ON_ERROR_STOP=1 -f deploy/roles.sql
--
-- Idempotent: running it twice changes nothing the second time. Re-running it after
-- a migration grants the views and tables that migration added.
--
-- The three group roles (NOLOGIN; people and programs log in with their own roles,
-- which are granted membership):
--
--   pmta_reader   SELECT on the report views of schema pmta and on the reference
--                 tables (pmta.mailbox_providers, pmta.diag_rules,
--                 pmta.alert_thresholds, pmta.blocklist_patterns). For BI tools
--                 (Grafana, Metabase, psql).
--                 It gets a view only when every column of it is known to be
--                 address-free (see "The reader's views" below), and no other table:
--                 not pmta.events, pmta.rejects or the rollup tables, which hold
--                 e-mail addresses, message headers, raw replies and raw accounting
--                 lines (personal data). No TEMPORARY on the database: this file
--                 revokes it from PUBLIC (the default gives it to every role) and
--                 leaves it to pmta_writer; grant it again to any other application
--                 sharing the database that needs temporary tables.
--   pmta_analyst  pmta_reader plus SELECT on every table and view of schema pmta
--                 (raw events, rejects, the rollups' raw diagnostic examples, views
--                 withheld from the reader): for the few people who drill down to
--                 recipients.
--   pmta_writer   what `pmta-pipe ingest`, `import`, `replay`, `status` and `prune`
--                 need: CONNECT and TEMPORARY on the database (the loader stages each
--                 batch in temporary tables), USAGE and CREATE on schema pmta (ingest
--                 checks the schema with CREATE TABLE IF NOT EXISTS), SELECT, INSERT,
--                 UPDATE, DELETE on the tables of schema pmta (read only on
--                 pmta.schema_migrations), sequences, and EXECUTE on
--                 pmta.ensure_partitions. Not a superuser, no CREATEDB, no
--                 CREATEROLE, no CREATE on the database (so no other schema).
--
-- The schema owner is not one of these: `pmta-pipe migrate` creates and alters
-- tables, views and functions, which PostgreSQL allows only to their owner. Run
-- migrate (and this file) as the owner, ingest as a member of pmta_writer.
--
-- Daily partitions: PostgreSQL lets only the owner of pmta.events create a
-- partition of it. This file therefore makes pmta.ensure_partitions(date[]) run with
-- its owner's rights (SECURITY DEFINER, with a fixed search_path), and lets only the
-- owner and pmta_writer call it. It takes dates and creates pmta.events_YYYYMMDD
-- partitions, nothing else.
--
-- The reader's views (fail safe): a view of schema pmta is granted to pmta_reader
-- only when EVERY column of it is known to be address-free, that is
--
--   * of a type that cannot hold an address (address_free_types: numbers, booleans,
--     dates and times, intervals, inet/cidr), or
--   * a text column listed in address_free_text, as 'view.column' or '*.column':
--       '*.column'    a dimension whose values pmta-pipe, PowerMTA or the operator
--                     make, never a remote party (the host name given to --source,
--                     the record type, the recipient domain, which is what follows the
--                     last '@' of rcpt, VirtualMTA names, bounce categories, reply
--                     codes, the names of pmta.mailbox_providers, diag_rules and
--                     alert_thresholds);
--       'view.column' a text that can quote an address (job ids, diagnostic
--                     patterns and examples) and that the view passes through
--                     pmta.mask_addresses, itself or in the view it reads: it counts
--                     only while the view depends on that function.
--
-- Any other column (text not listed, jsonb, arrays, a type not listed) keeps the whole
-- view from the reader: a new view, or a new column of a view, reaches BI tools only
-- once it is listed here, and this file says which view it withholds (WARNING). Each
-- run first revokes every privilege of the reader (and of PUBLIC) on the relations
-- of pmta, then grants, so a view that stops qualifying is taken back.
--
-- Schema pmta_report (sql/views/99_report_schema.sql) holds the report views alone:
-- pmta_report.X is SELECT * FROM pmta.X, for every view X of pmta but the rollup
-- views, so that a BI tool that lists a schema (Superset, Metabase, SQLAlchemy's
-- inspector) lists only what the reader may query. The reader gets USAGE on it, and
-- its views by the rule above (each reads the view of pmta of its name, so it
-- qualifies or not as that one does); the analyst gets all of them.
--
-- Time zone of BI logins: the views compute every day and hour in UTC whatever the
-- session's TimeZone, but a BI tool's own day grain (date_trunc('day', time)),
-- current_date and the text of a timestamptz follow it: a login in
-- America/Los_Angeles gets other "days" from the hourly views and day labels shifted
-- by 8 hours. Each run sets timezone = 'UTC' for every LOGIN role that is a member of
-- pmta_reader (directly, or through pmta_analyst), in this database only
-- (ALTER ROLE ... IN DATABASE ... SET timezone = 'UTC'; a setting of a group role is
-- not inherited, so it goes on each login), unless that login has it already. That
-- needs CREATEROLE (PostgreSQL 16 and later: with ADMIN OPTION on the login) or a
-- superuser; without it, this file says which login keeps its zone (WARNING) and
-- how to set it. Run this file again after creating a login, or set it yourself:
--
--     CREATE ROLE superset LOGIN IN ROLE pmta_reader;  \password superset
--     ALTER ROLE superset IN DATABASE pmta SET timezone = 'UTC';
--
-- Functions the reader's views call: a view calls functions with the caller's
-- rights, so pmta.ip_delivered_on (ip_alerts), which reads the daily rollup the reader
-- may not read, runs with its owner's rights (SECURITY DEFINER, sql/views/40_ips.sql);
-- like every SECURITY DEFINER function of pmta it is revoked from PUBLIC and granted
-- to the writer, and this one to the reader too (reader_functions).
--
-- Role names can be changed with psql variables (roles are cluster-wide, so two
-- databases on one server can use different names):
--
--     psql ... -v reader=acme_pmta_reader -v writer=acme_pmta_writer \
--              -v analyst=acme_pmta_analyst -f deploy/roles.sql
--
-- Login roles (examples; set passwords with \password so that they never appear in
-- the server log or in shell history):
--
--     CREATE ROLE grafana LOGIN IN ROLE pmta_reader;  \password grafana
--     CREATE ROLE metabase LOGIN IN ROLE pmta_reader; \password metabase
--     CREATE ROLE superset LOGIN IN ROLE pmta_reader; \password superset
--     CREATE ROLE alice LOGIN IN ROLE pmta_analyst;   \password alice
--     CREATE ROLE pmta_ingest LOGIN IN ROLE pmta_writer; \password pmta_ingest
--
-- Creating the group roles needs CREATEROLE (or a superuser); when they exist
-- already (created by a DBA), the owner only needs to be able to grant on its own
-- objects, which it can.

\set ON_ERROR_STOP on
\if :{?reader}
\else
\set reader pmta_reader
\endif
\if :{?writer}
\else
\set writer pmta_writer
\endif
\if :{?analyst}
\else
\set analyst pmta_analyst
\endif

-- psql variables are not expanded inside dollar-quoted blocks: hand them over as
-- settings of this session.
SELECT set_config('pmta_roles.reader', :'reader', false),
       set_config('pmta_roles.writer', :'writer', false),
       set_config('pmta_roles.analyst', :'analyst', false) \gset

SET client_min_messages = warning;

BEGIN;

DO $roles$
DECLARE
    reader  text := current_setting('pmta_roles.reader');
    writer  text := current_setting('pmta_roles.writer');
    analyst text := current_setting('pmta_roles.analyst');
    -- column types that cannot hold an e-mail address
    address_free_types constant regtype[] := ARRAY[
        'smallint', 'integer', 'bigint', 'numeric', 'real', 'double precision', 'boolean',
        'date', 'time', 'timestamp', 'timestamptz', 'interval', 'inet', 'cidr']::regtype[];
    -- text columns known to be address-free (see the head of this file); anything
    -- else keeps its view from the reader
    address_free_text constant text[] := ARRAY[
        -- values made by pmta-pipe, PowerMTA or the operator
        '*.source', '*.record_type', '*.rcpt_domain', '*.provider', '*.vmta', '*.vmta_pool',
        '*.bounce_cat', '*.bounce_class', '*.code', '*.category', '*.alert', '*.blocklist',
        '*.dlv_source_ip_text',
        -- texts that can quote an address, masked by pmta.mask_addresses
        'daily_counts.job_id', 'daily_traffic.job_id', 'daily_bounces.job_id',
        'job_summary.job_id', 'complaints.job_id',
        'daily_diag.pattern', 'daily_diag.example',
        'diag_patterns.pattern', 'diag_patterns.example',
        'deferral_patterns.pattern', 'deferral_patterns.example',
        'blocklist_hits.example', 'blocklist_hits.lookup_url'];
    -- (and the rollups' state, two timestamps and a list of hours: the views'
    -- functions pmta.rollup_watermark() and rollup_invalidated_from() read them as the
    -- caller)
    reference_tables constant text[] := ARRAY['pmta.mailbox_providers', 'pmta.diag_rules',
                                              'pmta.alert_thresholds', 'pmta.rollup_state',
                                              'pmta.rollup_invalidations',
                                              'pmta.blocklist_patterns'];
    -- SECURITY DEFINER functions the reader's views call (see the head of this file)
    reader_functions constant text[] := ARRAY['pmta.ip_delivered_on(date,inet)'];
    -- the schemas whose views the reader may be given
    report_schemas  text[] := ARRAY['pmta'];
    owner   text;
    r       record;
    t       text;
BEGIN
    IF to_regnamespace('pmta') IS NULL THEN
        RAISE EXCEPTION 'schema pmta does not exist'
            USING HINT = 'run pmta-pipe migrate first, as the schema owner';
    END IF;
    SELECT nspowner::regrole::text INTO owner FROM pg_namespace WHERE nspname = 'pmta';
    IF to_regnamespace('pmta_report') IS NOT NULL THEN
        report_schemas := report_schemas || 'pmta_report'::text;
    END IF;

    -- group roles ------------------------------------------------------------
    FOREACH t IN ARRAY ARRAY[reader, writer, analyst] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = t) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', t);
        END IF;
    END LOOP;
    IF NOT pg_has_role(analyst, reader, 'MEMBER') THEN
        EXECUTE format('GRANT %I TO %I', reader, analyst);
    END IF;

    -- database -----------------------------------------------------------------
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I, %I, %I',
                   current_database(), reader, analyst, writer);
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO %I', current_database(), writer);
    -- every role has TEMPORARY through PUBLIC by default: a reader (a BI login) could
    -- then create temporary tables, fill them and use disk. Only the writer keeps it.
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM %I, %I',
                   current_database(), reader, analyst);

    -- schema -------------------------------------------------------------------
    EXECUTE format('GRANT USAGE ON SCHEMA pmta TO %I, %I', reader, writer);
    EXECUTE format('GRANT CREATE ON SCHEMA pmta TO %I', writer);
    IF 'pmta_report' = ANY (report_schemas) THEN
        EXECUTE format('GRANT USAGE ON SCHEMA pmta_report TO %I', reader);
    END IF;

    -- writer: every table and sequence of the schema, today and later ---------------
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pmta TO %I',
                   writer);
    EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA pmta TO %I', writer);
    IF to_regclass('pmta.schema_migrations') IS NOT NULL THEN
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON pmta.schema_migrations FROM %I',
                       writer);
    END IF;
    -- tables the owner creates later (rollups, ledgers, new daily partitions):
    -- ALTER DEFAULT PRIVILEGES does not distinguish views from tables, so the reader
    -- gets nothing here; it gets new views when this file runs again.
    EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA pmta '
                   'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I', owner, writer);
    EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA pmta '
                   'GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO %I', owner, writer);

    -- partitions: created with the owner's rights, by the owner and the writer only --
    IF to_regprocedure('pmta.ensure_partitions(date[])') IS NOT NULL THEN
        ALTER FUNCTION pmta.ensure_partitions(date[])
            SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
    END IF;
    -- every SECURITY DEFINER function of the schema: not callable by PUBLIC
    FOR r IN
        SELECT p.oid::regprocedure AS fn
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'pmta' AND p.prosecdef
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', r.fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', r.fn, writer);
    END LOOP;
    FOREACH t IN ARRAY reader_functions LOOP
        IF to_regprocedure(t) IS NOT NULL THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', to_regprocedure(t), reader);
        END IF;
    END LOOP;

    -- reader: nothing but what is granted below, on every run ---------------------
    FOREACH t IN ARRAY report_schemas LOOP
        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I, PUBLIC', t, reader);
    END LOOP;

    -- reader: the views whose every column is known to be address-free -----------
    FOR r IN
        -- the views that call pmta.mask_addresses, or read a view that does
        WITH RECURSIVE masking(oid) AS (
            SELECT rw.ev_class
            FROM pg_rewrite rw
            JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
            WHERE d.refclassid = 'pg_proc'::regclass
              AND d.refobjid = to_regprocedure('pmta.mask_addresses(text)')
            UNION
            SELECT rw.ev_class
            FROM pg_rewrite rw
            JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
            JOIN masking m ON d.refclassid = 'pg_class'::regclass AND d.refobjid = m.oid
            WHERE rw.ev_class <> m.oid
        )
        SELECT c.oid::regclass AS rel,
               -- its columns not known to be address-free (NULL: none)
               (SELECT string_agg(format('%I (%s)', a.attname,
                                         format_type(a.atttypid, a.atttypmod)),
                                  ', ' ORDER BY a.attnum)
                FROM pg_attribute a
                WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                  AND a.atttypid <> ALL (address_free_types)
                  AND NOT (a.atttypid IN ('text'::regtype, 'varchar'::regtype)
                           AND ('*.' || a.attname = ANY (address_free_text)
                                OR (c.relname || '.' || a.attname = ANY (address_free_text)
                                    AND c.oid IN (SELECT oid FROM masking))))) AS unknown
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY (report_schemas) AND c.relkind IN ('v', 'm')
          -- the rollup views (pmta.rollup_*, migration 0009) stand for the rollup
          -- tables: raw texts, for pmta_analyst only; the reader reads the views on them
          AND c.relname NOT LIKE 'rollup\_%'
        ORDER BY n.nspname, c.relname
    LOOP
        IF r.unknown IS NULL THEN
            EXECUTE format('GRANT SELECT ON %s TO %I', r.rel, reader);
        ELSE
            RAISE WARNING 'view % is not granted to %: not known to be address-free: %',
                r.rel, reader, r.unknown
                USING HINT = 'mask the column with pmta.mask_addresses and list it in '
                             'address_free_text (deploy/roles.sql); pmta_analyst can read it';
        END IF;
    END LOOP;

    FOREACH t IN ARRAY reference_tables LOOP
        IF to_regclass(t) IS NOT NULL THEN
            EXECUTE format('GRANT SELECT ON %s TO %I', t, reader);
        END IF;
    END LOOP;

    -- analyst: every table and view, personal data included (read only) -----------
    FOREACH t IN ARRAY report_schemas LOOP
        EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', t, analyst);
    END LOOP;

    -- BI logins: timezone UTC in this database (see the head of this file) -----------
    FOR r IN
        WITH RECURSIVE members(oid) AS (
            SELECT oid FROM pg_roles WHERE rolname = reader
            UNION
            SELECT am.member FROM pg_auth_members am JOIN members m ON am.roleid = m.oid
        )
        SELECT ro.rolname
        FROM pg_roles ro JOIN members m ON m.oid = ro.oid
        WHERE ro.rolcanlogin AND NOT ro.rolsuper
          -- not the role running this (from PostgreSQL 16 it holds ADMIN OPTION on the
          -- logins it may change, which makes it a member of them)
          AND ro.rolname <> current_user
          AND NOT EXISTS (
              SELECT 1 FROM pg_db_role_setting s
              JOIN pg_database d ON d.oid = s.setdatabase AND d.datname = current_database()
              WHERE s.setrole = ro.oid
                AND 'timezone=utc' = ANY (SELECT lower(c) FROM unnest(s.setconfig) AS c))
        ORDER BY ro.rolname
    LOOP
        BEGIN
            EXECUTE format('ALTER ROLE %I IN DATABASE %I SET timezone = %L',
                           r.rolname, current_database(), 'UTC');
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'login % keeps its own time zone: % may not change its settings',
                r.rolname, current_user
                USING HINT = format('as a superuser: ALTER ROLE %I IN DATABASE %I '
                                    'SET timezone = ''UTC''', r.rolname, current_database());
        END;
    END LOOP;
END
$roles$;

COMMIT;
