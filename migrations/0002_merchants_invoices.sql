-- Merchants, API keys, invoices with their quotes, observed payments and the event outbox.
-- An invoice's status change, the payments behind it, their ledger entries and the outbox row that
-- announces the change are always written in one transaction.

CREATE TABLE merchants (
    id         TEXT PRIMARY KEY CHECK (id ~ '^mer_[0-9a-z]{16,40}$'),
    name       TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The secret part of a key is never stored: only its SHA-256. The public key id finds the row, and
-- the digest is compared in constant time by the daemon.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY CHECK (id ~ '^key_[0-9a-z]{16,40}$'),
    merchant_id TEXT REFERENCES merchants (id),
    role        TEXT NOT NULL CHECK (role IN ('merchant', 'creator', 'finance', 'admin')),
    secret_hash BYTEA NOT NULL CHECK (length(secret_hash) = 32),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ,
    CHECK (role <> 'merchant' OR merchant_id IS NOT NULL)
);

CREATE TABLE invoices (
    id                  TEXT PRIMARY KEY CHECK (id ~ '^inv_[0-9a-z]{16,40}$'),
    merchant_id         TEXT NOT NULL REFERENCES merchants (id),
    status              TEXT NOT NULL
                        CHECK (status IN ('open', 'processing', 'paid', 'overpaid', 'expired', 'refunded', 'void')),
    currency            TEXT NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount_minor        NUMERIC(78, 0) NOT NULL CHECK (amount_minor > 0),
    underpayment_tolerance_bps INTEGER NOT NULL CHECK (underpayment_tolerance_bps BETWEEN 0 AND 10000),
    order_id            TEXT CHECK (length(order_id) <= 200),
    metadata            JSONB NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key     TEXT CHECK (length(idempotency_key) <= 256),
    request_fingerprint BYTEA,
    expires_at          TIMESTAMPTZ NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL,
    paid_at             TIMESTAMPTZ,
    UNIQUE (merchant_id, idempotency_key)
);
CREATE INDEX invoices_merchant_idx ON invoices (merchant_id, created_at DESC, id DESC);
CREATE INDEX invoices_expiring_idx ON invoices (expires_at) WHERE status IN ('open', 'processing');

-- One quote per accepted asset: the asset amount is fixed at the rate locked when the invoice was made.
CREATE TABLE payment_options (
    invoice_id   TEXT NOT NULL REFERENCES invoices (id),
    asset        TEXT NOT NULL,
    chain        TEXT NOT NULL,
    decimals     SMALLINT NOT NULL CHECK (decimals BETWEEN 0 AND 36),
    amount_minor NUMERIC(78, 0) NOT NULL CHECK (amount_minor > 0),
    rate         TEXT NOT NULL,
    rate_source  TEXT NOT NULL,
    rate_at      TIMESTAMPTZ NOT NULL,
    address      TEXT,
    symbol       TEXT NOT NULL,
    position     SMALLINT NOT NULL,
    PRIMARY KEY (invoice_id, asset)
);

-- Every observed payment, whether it applies to its invoice or is held as unapplied for review.
-- tx_ref is the credit's idempotency key (an outpoint, or chain + tx + log index): one output or log is
-- credited once, whatever replays.
CREATE TABLE payments (
    id                     TEXT PRIMARY KEY CHECK (id ~ '^pay_[0-9a-z]{16,40}$'),
    merchant_id            TEXT NOT NULL REFERENCES merchants (id),
    invoice_id             TEXT NOT NULL REFERENCES invoices (id),
    chain                  TEXT NOT NULL,
    asset                  TEXT NOT NULL,
    tx_ref                 TEXT NOT NULL UNIQUE CHECK (length(tx_ref) BETWEEN 1 AND 256),
    address                TEXT,
    amount_minor           NUMERIC(78, 0) NOT NULL CHECK (amount_minor > 0),
    -- What the payment is worth in the invoice's currency at the invoice's locked quote (minor units,
    -- rounded down); zero for unapplied payments.
    value_minor            NUMERIC(78, 0) NOT NULL CHECK (value_minor >= 0),
    confirmations          INTEGER NOT NULL CHECK (confirmations >= 0),
    confirmations_required INTEGER NOT NULL CHECK (confirmations_required >= 0),
    status                 TEXT NOT NULL CHECK (status IN ('seen', 'confirmed', 'orphaned', 'reversed')),
    applied_to             TEXT NOT NULL CHECK (applied_to IN ('invoice', 'unapplied')),
    unapplied_reason       TEXT,
    ledger_entry_id        BIGINT REFERENCES journal_entries (id),
    seen_at                TIMESTAMPTZ NOT NULL,
    confirmed_at           TIMESTAMPTZ,
    updated_at             TIMESTAMPTZ NOT NULL,
    CHECK (status <> 'confirmed' OR ledger_entry_id IS NOT NULL),
    CHECK (applied_to = 'invoice' OR unapplied_reason IS NOT NULL)
);
CREATE INDEX payments_invoice_idx ON payments (invoice_id, seen_at);

-- Events for merchants, written in the same transaction as the change they announce.
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE CHECK (event_id ~ '^evt_[0-9a-z]{16,40}$'),
    merchant_id  TEXT NOT NULL REFERENCES merchants (id),
    event_type   TEXT NOT NULL,
    object_id    TEXT NOT NULL,
    payload      JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX outbox_merchant_idx ON outbox (merchant_id, id);
