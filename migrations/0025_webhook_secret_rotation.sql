-- A rotated endpoint secret: the previous one (stored as the current one was: sealed or not) keeps
-- signing beside the new one until `previous_secret_expires_at`, so a receiver can switch without
-- refusing a delivery.
ALTER TABLE webhook_endpoints ADD COLUMN previous_secret TEXT,
    ADD COLUMN previous_secret_sealed BYTEA,
    ADD COLUMN previous_secret_expires_at TIMESTAMPTZ;
