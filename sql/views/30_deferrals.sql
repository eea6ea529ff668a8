-- Deferral reply codes and normalized diagnostic patterns (from pmta.rollup_diag).

CREATE OR REPLACE VIEW pmta.deferral_codes AS
SELECT day, provider, code, sum(n)::bigint AS n
FROM pmta.daily_diag
WHERE record_type = 't'
GROUP BY day, provider, code;

CREATE OR REPLACE VIEW pmta.diag_patterns AS
SELECT day, provider, record_type, pattern, category,
       sum(n)::bigint AS n,
       min(example)   AS example
FROM pmta.daily_diag
GROUP BY day, provider, record_type, pattern, category;

CREATE OR REPLACE VIEW pmta.deferral_patterns AS
SELECT day, provider, pattern, category, n, example
FROM pmta.diag_patterns
WHERE record_type = 't';
