-- Console sessions: a browser signs in with an API key and gets a session cookie instead. The
-- session is the key's in everything: its role, merchant, creator and read-only scope are read from
-- the key on every request, and it ends when the key is revoked or expires, when it is signed out
-- or revoked itself, after `expires_at` (absolute), or after a while unused (`last_seen_at`,
-- refreshed at most once a minute). Only the SHA-256 of the cookie's secret is stored.
CREATE TABLE console_sessions (
    id           TEXT PRIMARY KEY CHECK (id ~ '^ses_[0-9a-z]{16,40}$'),
    key_id       TEXT NOT NULL REFERENCES api_keys (id),
    token_hash   BYTEA NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    -- Every form of the session carries it back; a request without it changes nothing.
    csrf_token   TEXT NOT NULL CHECK (length(csrf_token) = 64),
    user_agent   TEXT CHECK (length(user_agent) <= 300),
    created_at   TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ
);

CREATE INDEX console_sessions_key_idx ON console_sessions (key_id, created_at DESC, id DESC);

-- The console's charts read a merchant's payments by time (volume per day), and its invoice list
-- (and `GET /v1/invoices?order_id=`) finds an order's invoices.
CREATE INDEX payments_merchant_seen_idx ON payments (merchant_id, seen_at);
CREATE INDEX invoices_order_idx ON invoices (merchant_id, order_id, created_at DESC, id DESC) WHERE order_id IS NOT NULL;

-- An invoice's page lists the events about it, and each event's deliveries (replays included).
CREATE INDEX outbox_object_idx ON outbox (merchant_id, object_id);
CREATE INDEX webhook_deliveries_outbox_idx ON webhook_deliveries (outbox_id);
-- The webhooks page lists the latest failing deliveries.
CREATE INDEX webhook_deliveries_failing_idx ON webhook_deliveries (id)
    WHERE status IN ('failed', 'abandoned') OR (status = 'pending' AND attempts > 0);
