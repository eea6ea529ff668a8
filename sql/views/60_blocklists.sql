-- Block lists and reputation signals named in the replies (pmta.blocklist_patterns,
-- migration 0014), per day, sending IP and provider, from the diagnostic rollup.

-- The block list a diagnostic text names: the matching pattern with the lowest
-- priority (then pattern_id), and its lookup URL in the text when the pattern has
-- one; no row when none matches. A pattern with keywords (migration 0016) is tried
-- only when the lower-cased text contains one of them. A SQL function of one SELECT,
-- so the planner inlines it into the view's LATERAL join.
CREATE OR REPLACE FUNCTION pmta.blocklist_match(diag text)
RETURNS TABLE (blocklist text, lookup_url text)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT bp.blocklist, (regexp_match(diag, bp.lookup_url_pattern, 'i'))[1]
    FROM pmta.blocklist_patterns bp
    WHERE CASE WHEN bp.keywords IS NULL
                    OR EXISTS (SELECT 1 FROM unnest(bp.keywords) k
                               WHERE strpos(lower(diag), k) > 0)
               THEN diag ~* bp.pattern
               ELSE false END
    ORDER BY bp.priority, bp.pattern_id
    LIMIT 1
$$;

-- LIKE patterns ('%word%') of every keyword of every pattern: a text that matches none
-- of them can match no pattern. NULL when a pattern has no keywords (then every text
-- is tried).
CREATE OR REPLACE FUNCTION pmta.blocklist_prefilter() RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN bool_and(bp.keywords IS NOT NULL)
                THEN array_agg(DISTINCT '%' || replace(replace(replace(k, '\', '\\'), '%', '\%'),
                                                 '_', '\_') || '%')
           END
    FROM pmta.blocklist_patterns bp
    LEFT JOIN LATERAL unnest(bp.keywords) k ON true
$$;
COMMENT ON FUNCTION pmta.blocklist_prefilter() IS
    'LIKE patterns of the keywords of pmta.blocklist_patterns: a reply matching none names no '
    'list; NULL when a pattern has no keywords';
COMMENT ON FUNCTION pmta.blocklist_match(text) IS
    'The block list (pmta.blocklist_patterns) a diagnostic text names, first by priority, and '
    'the lookup URL it carries; no row when it names none';

-- A hit is a t, tq, b or rb record whose reply names a list. pmta.rollup_diag keeps,
-- per day, host, type, domain, IP, VirtualMTA, reply code and normalized pattern, the
-- count and the smallest raw reply of the group (example): the rows are grouped by
-- day, IP, provider, type and that raw reply first, and the patterns are matched once
-- per group (a day holds each reply in many rollup rows: one per host, domain,
-- VirtualMTA and code), not per row. The raw reply rather than the normalized pattern,
-- because the normalization replaces the URLs and the long tokens that often are
-- the only place a list is named (https://ipcheck.proofpoint.com/?ip=...,
-- dnsbl-1.uceprotect.net). A group is decided by its example: its records differ
-- only where the normalization put a placeholder (an IP, a number, an id, a URL),
-- which names the same list for the replies of one receiver. The patterns are tried
-- only on the groups whose reply contains one of their keywords (migration 0016).
CREATE OR REPLACE VIEW pmta.blocklist_hits AS
SELECT g.day, g.dlv_source_ip, g.provider, m.blocklist,
       sum(g.n)::bigint                                          AS n,
       coalesce(sum(g.n) FILTER (WHERE g.record_type = 't'), 0)::bigint  AS deferred,
       coalesce(sum(g.n) FILTER (WHERE g.record_type = 'b'), 0)::bigint  AS bounced,
       coalesce(sum(g.n) FILTER (WHERE g.record_type = 'tq'), 0)::bigint AS queue_deferrals,
       coalesce(sum(g.n) FILTER (WHERE g.record_type = 'rb'), 0)::bigint AS remote_bounces,
       min(pmta.mask_addresses(g.example))                       AS example,
       min(pmta.mask_addresses(m.lookup_url))                    AS lookup_url,
       host(g.dlv_source_ip)                                     AS dlv_source_ip_text
FROM (
    SELECT (r.bucket AT TIME ZONE 'UTC')::date                AS day,
           nullif(r.dlv_source_ip, '0.0.0.0'::inet)           AS dlv_source_ip,
           coalesce(mp.provider, nullif(r.rcpt_domain, ''))   AS provider,
           r.record_type,
           r.example,
           sum(r.n)                                           AS n
    FROM pmta.rollup_diag r
    LEFT JOIN pmta.mailbox_providers mp ON mp.domain = r.rcpt_domain
    WHERE r.example IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5
) g
CROSS JOIN LATERAL pmta.blocklist_match(g.example) m
-- most replies name no list: ruled out by a substring test, the patterns not tried
WHERE coalesce(lower(g.example) LIKE ANY (CAST((SELECT pmta.blocklist_prefilter()) AS text[])), true)
GROUP BY g.day, g.dlv_source_ip, g.provider, m.blocklist;

COMMENT ON VIEW pmta.blocklist_hits IS
    'Per UTC day, sending IP, provider and block list (pmta.blocklist_patterns): t, tq, b and rb '
    'records whose reply names the list (each counted once, for its first list by priority), '
    'with an example reply and the lookup URL it carries';
