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
-- day and that raw reply first (their IPs, providers, types and counts in arrays), and
-- the patterns are matched once per day and reply (a day holds each reply in many
-- rollup rows: one per host, domain, IP, VirtualMTA and code), not per row; the arrays
-- are unnested afterwards. The day is the grouping key, so a filter on it reaches the
-- rollup's scan. The raw reply rather than the normalized pattern,
-- because the normalization replaces the URLs and the long tokens that often are
-- the only place a list is named (https://ipcheck.proofpoint.com/?ip=...,
-- dnsbl-1.uceprotect.net). A group is decided by its example: its records differ
-- only where the normalization put a placeholder (an IP, a number, an id, a URL),
-- which names the same list for the replies of one receiver. The patterns are tried
-- only on the groups whose reply contains one of their keywords (migration 0016).
CREATE OR REPLACE VIEW pmta.blocklist_hits AS
SELECT d.day, u.dlv_source_ip, u.provider, m.blocklist,
       sum(u.n)::bigint                                          AS n,
       coalesce(sum(u.n) FILTER (WHERE u.record_type = 't'), 0)::bigint  AS deferred,
       coalesce(sum(u.n) FILTER (WHERE u.record_type = 'b'), 0)::bigint  AS bounced,
       coalesce(sum(u.n) FILTER (WHERE u.record_type = 'tq'), 0)::bigint AS queue_deferrals,
       coalesce(sum(u.n) FILTER (WHERE u.record_type = 'rb'), 0)::bigint AS remote_bounces,
       min(pmta.mask_addresses(d.example))                       AS example,
       min(pmta.mask_addresses(m.lookup_url))                    AS lookup_url,
       host(u.dlv_source_ip)                                     AS dlv_source_ip_text
FROM (
    -- one row per day and raw reply, its rollup rows' keys and counts in arrays
    SELECT (r.bucket AT TIME ZONE 'UTC')::date                              AS day,
           r.example,
           array_agg(nullif(r.dlv_source_ip, '0.0.0.0'::inet))              AS ips,
           array_agg(coalesce(mp.provider, nullif(r.rcpt_domain, '')))      AS providers,
           array_agg(r.record_type)                                         AS types,
           array_agg(r.n)                                                   AS ns
    FROM pmta.rollup_diag r
    LEFT JOIN pmta.mailbox_providers mp ON mp.domain = r.rcpt_domain
    WHERE r.example IS NOT NULL
    GROUP BY 1, 2
) d
CROSS JOIN LATERAL pmta.blocklist_match(d.example) m
CROSS JOIN LATERAL unnest(d.ips, d.providers, d.types, d.ns)
    AS u(dlv_source_ip, provider, record_type, n)
-- most replies name no list: ruled out by a substring test, the patterns not tried
WHERE coalesce(lower(d.example) LIKE ANY (CAST((SELECT pmta.blocklist_prefilter()) AS text[])), true)
GROUP BY d.day, u.dlv_source_ip, u.provider, m.blocklist;

COMMENT ON VIEW pmta.blocklist_hits IS
    'Per UTC day, sending IP, provider and block list (pmta.blocklist_patterns): t, tq, b and rb '
    'records whose reply names the list (each counted once, for its first list by priority), '
    'with an example reply and the lookup URL it carries';
