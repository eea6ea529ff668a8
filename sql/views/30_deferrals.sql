-- Deferral reply codes and normalized diagnostic patterns (from pmta.rollup_diag).

CREATE OR REPLACE VIEW pmta.deferral_codes AS
SELECT day, provider, code, sum(n)::bigint AS n
FROM pmta.daily_diag
WHERE record_type = 't'
GROUP BY day, provider, code;

-- pmta.daily_diag grouped, with its category found once per (provider, raw pattern)
-- of the window rather than once per rollup row: the rules are regular expressions
-- tried in order, and a day holds each pattern in many rows (one per domain, IP,
-- VirtualMTA and code). The same answer as grouping pmta.daily_diag (tests).
CREATE OR REPLACE VIEW pmta.diag_patterns AS
SELECT g.day, g.provider, g.record_type,
       pmta.mask_addresses(nullif(g.raw_pattern, ''))  AS pattern,
       coalesce(rule.category, 'unclassified')        AS category,
       sum(g.n)::bigint                               AS n,
       min(g.example)                                 AS example
FROM (
    SELECT (r.bucket AT TIME ZONE 'UTC')::date             AS day,
           coalesce(mp.provider, nullif(r.rcpt_domain, ''))  AS provider,
           coalesce(mp.provider, r.rcpt_domain)              AS rule_provider,
           r.record_type,
           r.pattern                                        AS raw_pattern,
           sum(r.n)                                         AS n,
           min(pmta.mask_addresses(r.example))              AS example
    FROM pmta.rollup_diag r
    LEFT JOIN pmta.mailbox_providers mp ON mp.domain = r.rcpt_domain
    GROUP BY 1, 2, 3, 4, 5
) g
LEFT JOIN LATERAL (
    SELECT dr.category
    FROM pmta.diag_rules dr
    WHERE (dr.provider IS NULL OR dr.provider = g.rule_provider)
      AND g.raw_pattern ~* dr.pattern
    ORDER BY dr.priority, dr.rule_id
    LIMIT 1
) rule ON true
GROUP BY g.day, g.provider, g.record_type, 4, 5;

CREATE OR REPLACE VIEW pmta.deferral_patterns AS
SELECT day, provider, pattern, category, n, example
FROM pmta.diag_patterns
WHERE record_type = 't';
