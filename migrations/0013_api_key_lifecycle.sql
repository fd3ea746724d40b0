-- API key lifecycle: keys a merchant creates, names, restricts to reading, rotates and revokes.
-- `expires_at` is set when a key is rotated: the old key keeps working until then (the grace
-- period the caller chose), the new one from the start. `last_used_at` is refreshed at most once a
-- minute, so it costs no write per request.
ALTER TABLE api_keys
    ADD COLUMN name         TEXT CHECK (length(name) BETWEEN 1 AND 200),
    ADD COLUMN read_only    BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN last_used_at TIMESTAMPTZ,
    ADD COLUMN expires_at   TIMESTAMPTZ,
    ADD COLUMN rotated_to   TEXT REFERENCES api_keys (id);

CREATE INDEX api_keys_merchant_idx ON api_keys (merchant_id, created_at DESC, id DESC);

-- Stored idempotent responses may have held one-time secrets (webhook signing secrets, API keys)
-- before responses were redacted on storage: forget those rows.
DELETE FROM idempotency_keys
 WHERE position('whsec_'::bytea IN response_body) > 0
    OR position('"pr_'::bytea IN response_body) > 0;
