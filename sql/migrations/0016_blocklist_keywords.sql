-- 0016: words a reply must contain before pmta.blocklist_hits tries a block-list
-- pattern on it.
--
-- PostgreSQL's regular expressions cost a few microseconds per reply and pattern:
-- with the 22 seeded patterns tried on every diagnostic group of a 7-day window
-- (about 2,500 groups at 200,000 events) the view took about 400 ms, where the other
-- report views take 10-100. Most replies name no list; a plain substring test on the
-- lower-cased reply rules them out at a fraction of that cost, and the patterns are
-- tried only on the replies that contain one of their words.
--
-- keywords is an optimization, never a second definition: a pattern with keywords NULL
-- is tried on every reply, and an UPDATE that changes a pattern without setting its
-- keywords sets them to NULL (trigger below), so an edited pattern cannot miss the
-- replies its old words did not cover. Each seeded pattern matches only texts that
-- contain one of its words (tests/test_blocklists.py tries every seeded reply with and
-- without the words).
--
-- Immutable once released: change the schema with a new numbered file.

ALTER TABLE pmta.blocklist_patterns
    ADD COLUMN keywords text[]
    CHECK (keywords IS NULL
           OR (cardinality(keywords) > 0 AND keywords::text = lower(keywords::text)
               AND '' <> ALL (keywords) AND array_position(keywords, NULL) IS NULL));
COMMENT ON COLUMN pmta.blocklist_patterns.keywords IS
    'Lower-case words: the pattern is tried only on replies that contain one of them (a '
    'speed-up; every text the pattern matches must contain one). NULL: tried on every reply. '
    'Changing pattern without setting keywords sets them to NULL';

CREATE FUNCTION pmta.blocklist_patterns_keywords_follow() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.pattern IS DISTINCT FROM OLD.pattern
       AND NEW.keywords IS NOT DISTINCT FROM OLD.keywords THEN
        NEW.keywords := NULL;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER keywords_follow_the_pattern
    BEFORE UPDATE ON pmta.blocklist_patterns
    FOR EACH ROW EXECUTE FUNCTION pmta.blocklist_patterns_keywords_follow();

UPDATE pmta.blocklist_patterns bp SET keywords = v.keywords
FROM (VALUES
    ('Spamhaus DBL', ARRAY['spamhaus']),
    ('Spamhaus CSS', ARRAY['spamhaus']),
    ('Spamhaus SBL', ARRAY['spamhaus']),
    ('Spamhaus XBL', ARRAY['spamhaus']),
    ('Spamhaus PBL', ARRAY['spamhaus']),
    ('Spamhaus ZEN', ARRAY['spamhaus']),
    ('Spamhaus', ARRAY['spamhaus']),
    ('SpamCop', ARRAY['spamcop']),
    ('Barracuda', ARRAY['barracuda']),
    ('UCEPROTECT', ARRAY['uceprotect']),
    ('SORBS', ARRAY['sorbs']),
    ('Abuseat CBL', ARRAY['abuseat', 'cbl']),
    ('Invaluement', ARRAY['invaluement', 'ivm']),
    ('Proofpoint', ARRAY['proofpoint']),
    ('Cloudmark', ARRAY['cloudmark', 'csi-global']),
    ('Microsoft S3150', ARRAY['s3150']),
    ('Microsoft block list', ARRAY['on our block', 's3140']),
    ('Microsoft 365 banned IP', ARRAY['banned sending ip', '5.7.6']),
    ('Yahoo TSS09', ARRAY['tss09', 'permanently deferred']),
    ('Gmail low IP reputation', ARRAY['very low']),
    ('Gmail low domain reputation', ARRAY['very low']),
    ('Gmail very low reputation', ARRAY['very low'])
) AS v(blocklist, keywords)
WHERE bp.blocklist = v.blocklist;
