-- The delivery log is the merchant's to read, and the endpoint URL is the merchant's to choose: a
-- response body or a raw connection error in it is a read-back of whatever that URL reaches (SSRF)
-- and a port scanner. From now on an attempt keeps its status code, its duration and a coarse error
-- class only; the body is not kept at all.

-- Old rows: the error text becomes its class (recognised by how the dispatcher wrote it), and the
-- excerpt is cleared first, so the new row versions no longer hold it (the old ones are reclaimed
-- by VACUUM), then dropped.
UPDATE webhook_attempts SET
    response_excerpt = NULL,
    error = CASE
        WHEN error IS NULL AND status_code IS NOT NULL AND status_code NOT BETWEEN 200 AND 299 THEN 'http_status'
        WHEN error IS NULL THEN NULL
        WHEN error LIKE 'timed out%' THEN 'timeout'
        WHEN error LIKE 'event body of %' THEN 'body_too_large'
        WHEN error LIKE '%resolves only to internal addresses%' THEN 'refused_address'
        WHEN error LIKE '%dns error%' THEN 'dns'
        WHEN error ILIKE '%tls%' OR error ILIKE '%certificate%' THEN 'tls'
        WHEN error LIKE 'connect%' THEN 'connect'
        ELSE 'other'
    END;

ALTER TABLE webhook_attempts DROP COLUMN response_excerpt;
ALTER TABLE webhook_attempts DROP CONSTRAINT IF EXISTS webhook_attempts_error_check;
ALTER TABLE webhook_attempts ADD CONSTRAINT webhook_attempts_error_class CHECK (
    error IN ('timeout', 'connect', 'tls', 'dns', 'refused_address', 'http_status', 'body_too_large', 'other'));
