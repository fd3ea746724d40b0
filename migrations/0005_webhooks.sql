-- Outbound webhooks. A merchant registers endpoints; the dispatcher fans every outbox event out to
-- the merchant's matching endpoints as deliveries, and logs every HTTP attempt of a delivery.

CREATE TABLE webhook_endpoints (
    id          TEXT PRIMARY KEY CHECK (id ~ '^we_[0-9a-z]{16,40}$'),
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    url         TEXT NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    -- The event types the endpoint receives; NULL receives every type, including types added later.
    events      TEXT[] CHECK (events IS NULL OR cardinality(events) BETWEEN 1 AND 32),
    -- The signing key. It has to be readable to sign, so it is stored as is; the API shows it once.
    secret      TEXT NOT NULL CHECK (secret ~ '^whsec_[0-9A-Za-z]{32,64}$'),
    created_at  TIMESTAMPTZ NOT NULL,
    -- Soft delete: the row stays for the delivery log, nothing is sent to it any more.
    deleted_at  TIMESTAMPTZ
);
CREATE INDEX webhook_endpoints_merchant_idx ON webhook_endpoints (merchant_id, created_at) WHERE deleted_at IS NULL;

-- When the dispatcher turned an event into deliveries. Events written before webhooks existed had
-- no endpoint to go to.
ALTER TABLE outbox ADD COLUMN fanned_out_at TIMESTAMPTZ;
UPDATE outbox SET fanned_out_at = created_at;
CREATE INDEX outbox_fanout_idx ON outbox (id) WHERE fanned_out_at IS NULL;

-- One event to one endpoint. `id` is the endpoint's queue order: an endpoint receives its deliveries
-- in this order, and a pending delivery holds back the later ones of its endpoint.
CREATE TABLE webhook_deliveries (
    id               BIGSERIAL PRIMARY KEY,
    delivery_id      TEXT NOT NULL UNIQUE CHECK (delivery_id ~ '^whd_[0-9a-z]{16,40}$'),
    endpoint_id      TEXT NOT NULL REFERENCES webhook_endpoints (id),
    outbox_id        BIGINT NOT NULL REFERENCES outbox (id),
    -- The event's object (copied from the outbox): a newer event about it supersedes a failing older one.
    object_id        TEXT NOT NULL,
    -- Asked for through the replay endpoint rather than made by the fan-out.
    replay           BOOLEAN NOT NULL DEFAULT false,
    status           TEXT NOT NULL
                     CHECK (status IN ('pending', 'delivered', 'failed', 'abandoned', 'superseded', 'canceled')),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  TIMESTAMPTZ,
    first_attempt_at TIMESTAMPTZ,
    last_attempt_at  TIMESTAMPTZ,
    last_status_code INTEGER,
    completed_at     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL)),
    CHECK ((status = 'pending') = (completed_at IS NULL)),
    CHECK ((attempts = 0) = (first_attempt_at IS NULL))
);
-- The fan-out makes one delivery per event and endpoint, however often it runs; replays add more.
CREATE UNIQUE INDEX webhook_deliveries_fanout_uq ON webhook_deliveries (outbox_id, endpoint_id) WHERE NOT replay;
CREATE INDEX webhook_deliveries_queue_idx ON webhook_deliveries (endpoint_id, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_object_idx ON webhook_deliveries (endpoint_id, object_id, outbox_id);

-- The delivery log: every HTTP attempt, whatever came of it.
CREATE TABLE webhook_attempts (
    delivery_id      BIGINT NOT NULL REFERENCES webhook_deliveries (id),
    attempt          INTEGER NOT NULL CHECK (attempt >= 1),
    attempted_at     TIMESTAMPTZ NOT NULL,
    -- NULL when no response came (connection refused, timeout).
    status_code      INTEGER CHECK (status_code BETWEEN 100 AND 999),
    error            TEXT CHECK (length(error) <= 1000),
    duration_ms      BIGINT NOT NULL CHECK (duration_ms >= 0),
    -- The first bytes of the response body, for the merchant's debugging.
    response_excerpt TEXT CHECK (length(response_excerpt) <= 1024),
    outcome          TEXT NOT NULL CHECK (outcome IN ('delivered', 'retry', 'failed', 'abandoned')),
    PRIMARY KEY (delivery_id, attempt)
);
