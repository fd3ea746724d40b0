-- Idempotency-Key on POST requests: the first response to a key is stored and replayed for every
-- retry with the same request; another request under the same key is refused. Keys are scoped to
-- the API key that sent them.
CREATE TABLE idempotency_keys (
    scope          TEXT NOT NULL,
    key            TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 256),
    request_hash   BYTEA NOT NULL CHECK (length(request_hash) = 32),
    -- NULL while the first request is still running.
    status_code    SMALLINT,
    response_body  BYTEA,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
