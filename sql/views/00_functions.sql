-- Functions the report views use at query time (re-applied when changed).

-- num / den as a fraction between 0 and 1; NULL when den is 0 or NULL.
CREATE OR REPLACE FUNCTION pmta.rate(num numeric, den numeric) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (num / nullif(den, 0))::double precision;

-- Hard / soft / block / other class of a PowerMTA bounceCat. hard and soft follow
-- MailWizz's PowerMTA mapping (hard: bad-mailbox, inactive-mailbox, bad-domain; soft:
-- quota-issues, no-answer-from-host, relaying-issues, routing-errors), with
-- bad-connection and message-expired added to soft (temporary at heart); block is a
-- refusal of the sender or the content, not of the address; everything else is other.
CREATE OR REPLACE FUNCTION pmta.bounce_class(bounce_cat text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN bounce_cat IN ('bad-mailbox', 'inactive-mailbox', 'bad-domain') THEN 'hard'
    WHEN bounce_cat IN ('quota-issues', 'no-answer-from-host', 'relaying-issues',
                        'routing-errors', 'bad-connection', 'message-expired') THEN 'soft'
    WHEN bounce_cat IN ('spam-related', 'policy-related', 'content-related',
                        'virus-related') THEN 'block'
    ELSE 'other'
END;

-- Edges of a delivery-time bin (see pmta.delivery_bin): bins below 64 are the exact
-- second (lower = upper); above, [lower, upper).
CREATE OR REPLACE FUNCTION pmta.delivery_bin_lower(bin integer) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN bin < 64 THEN bin
            ELSE (16 + (bin - 64) % 16)::bigint << (2 + (bin - 64) / 16) END;

CREATE OR REPLACE FUNCTION pmta.delivery_bin_upper(bin integer) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN bin < 64 THEN bin
            ELSE (17 + (bin - 64) % 16)::bigint << (2 + (bin - 64) / 16) END;

-- The p-quantile (0 < p <= 1) of a delivery-time histogram given as parallel arrays
-- of bins and counts in ascending bin order. Nearest rank: the first bin whose
-- cumulative count reaches p * total; an exact bin (below 64 s) gives its second, a
-- wider bin the linear interpolation lower + width * (rank - before) / count.
CREATE OR REPLACE FUNCTION pmta.histogram_quantile(bins integer[], counts bigint[],
                                                   p double precision)
RETURNS double precision
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    total numeric := 0;
    target numeric;
    before numeric := 0;
    lo bigint;
    hi bigint;
    i integer;
BEGIN
    IF bins IS NULL OR cardinality(bins) = 0 THEN
        RETURN NULL;
    END IF;
    SELECT sum(c) INTO total FROM unnest(counts) AS c;
    IF total IS NULL OR total = 0 THEN
        RETURN NULL;
    END IF;
    target := p::numeric * total;
    FOR i IN 1 .. cardinality(bins) LOOP
        IF counts[i] > 0 AND before + counts[i] >= target THEN
            lo := pmta.delivery_bin_lower(bins[i]);
            hi := pmta.delivery_bin_upper(bins[i]);
            RETURN (lo + (hi - lo) * greatest(target - before, 0) / counts[i])::double precision;
        END IF;
        before := before + counts[i];
    END LOOP;
    RETURN pmta.delivery_bin_upper(bins[cardinality(bins)])::double precision;
END $$;

-- A text with the local part of every e-mail address in it replaced by '…', the domain
-- kept: '<alice.smith@gmail.com>' -> '<…@gmail.com>', a VERP sender
-- 'bounce-12345-alice=gmail.com@bounce.example.com' -> '…@bounce.example.com', a quoted
-- local part '"alice smith"@gmail.com' -> '…@gmail.com', 'bob@[192.0.2.1]' ->
-- '…@[192.0.2.1]'. A local part is a quoted string, or a run of characters other than
-- white space and < > @ " ( ) , ; : [ ] (not starting with '), right before an '@'
-- that a domain or an address literal follows. Texts without '@' are returned as
-- they are, without a regular expression. The report views a reader sees pass every
-- text that may quote an address through it (docs/security.md).
CREATE OR REPLACE FUNCTION pmta.mask_addresses(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN strpos(t, '@') = 0 THEN t
    ELSE regexp_replace(
        t,
        '(?:"[^"\r\n]*"|[^\s<>@"''(),;:\[\]][^\s<>@"(),;:\[\]]*)@(?=[^\s<>@"''(),;:\]])',
        '…@', 'g')
END;
COMMENT ON FUNCTION pmta.mask_addresses(text) IS
    'The text with the local part of every e-mail address replaced by … and the domain kept '
    '(<alice@gmail.com> -> <…@gmail.com>); used by the report views for texts that may quote an address';
