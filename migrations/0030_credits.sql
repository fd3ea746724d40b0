-- Customers of a merchant and the credits (coins) it issues to them. Balances live in the ledger:
-- every lot is its own guarded account `liabilities:credit_lot:{lot_id}` in the currency's asset
-- `credit:{merchant_id}/{code}`; these tables say whose a lot is, where it came from and when it
-- expires, and list every movement for the customer's history.
CREATE TABLE customers (
    id          TEXT PRIMARY KEY CHECK (id ~ '^cus_[0-9a-z]{16,40}$'),
    -- Creation order, for lists (many customers may share a timestamp).
    seq         BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    external_id TEXT NOT NULL CHECK (length(external_id) BETWEEN 1 AND 200),
    email       TEXT CHECK (length(email) BETWEEN 3 AND 320),
    name        TEXT CHECK (length(name) BETWEEN 1 AND 200),
    metadata    JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (merchant_id, external_id)
);
CREATE INDEX customers_merchant_idx ON customers (merchant_id, seq DESC);

-- A merchant's credit currency. `peg_minor` credits' worth: one whole credit (10^decimals units)
-- is worth `peg` in `peg_currency` (a decimal string, e.g. "0.01" USD); no peg: worth nothing in
-- money (creators cannot earn in it).
CREATE TABLE credit_currencies (
    merchant_id  TEXT NOT NULL REFERENCES merchants (id),
    code         TEXT NOT NULL CHECK (code ~ '^[a-z][a-z0-9_]{1,31}$'),
    name         TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    decimals     SMALLINT NOT NULL CHECK (decimals BETWEEN 0 AND 6),
    peg          TEXT CHECK (peg ~ '^[0-9]+(\.[0-9]+)?$'),
    peg_currency TEXT CHECK (peg_currency ~ '^[A-Z]{3}$'),
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, code),
    CHECK ((peg IS NULL) = (peg_currency IS NULL))
);

-- A grant of credits to a customer. What is left of it is the balance of its ledger account.
CREATE TABLE credit_lots (
    id           TEXT PRIMARY KEY CHECK (id ~ '^lot_[0-9a-z]{16,40}$'),
    -- Grant order: FIFO among lots granted in the same instant.
    seq          BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    merchant_id  TEXT NOT NULL,
    customer_id  TEXT NOT NULL REFERENCES customers (id),
    currency     TEXT NOT NULL,
    source       TEXT NOT NULL CHECK (source IN ('purchase', 'bonus', 'promo', 'reward', 'subscription', 'transfer', 'refund', 'adjustment')),
    amount_minor NUMERIC(78, 0) NOT NULL CHECK (amount_minor > 0),
    expires_at   TIMESTAMPTZ,
    -- Set once the expiry job booked what was left of it as breakage.
    expired_at   TIMESTAMPTZ,
    -- The movement that granted it.
    txn_id       TEXT NOT NULL,
    granted_at   TIMESTAMPTZ NOT NULL,
    FOREIGN KEY (merchant_id, currency) REFERENCES credit_currencies (merchant_id, code)
);
CREATE INDEX credit_lots_customer_idx ON credit_lots (customer_id, currency) WHERE expired_at IS NULL;
CREATE INDEX credit_lots_expiry_idx ON credit_lots (expires_at) WHERE expired_at IS NULL AND expires_at IS NOT NULL;

-- Every movement of a customer's credits, with the ledger entry that made it. `idempotency_key`
-- is the caller's (or derived from what caused it): a retry finds the movement already made.
CREATE TABLE credit_transactions (
    id              TEXT PRIMARY KEY CHECK (id ~ '^ctx_[0-9a-z]{16,40}$'),
    seq             BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    merchant_id     TEXT NOT NULL REFERENCES merchants (id),
    customer_id     TEXT NOT NULL REFERENCES customers (id),
    currency        TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('grant', 'spend', 'gift_sent', 'gift_received', 'transfer_sent',
                                                  'transfer_received', 'tip', 'expiry', 'adjustment')),
    -- Positive for credits in, negative for credits out.
    amount_minor    NUMERIC(78, 0) NOT NULL CHECK (amount_minor <> 0),
    source          TEXT,
    description     TEXT CHECK (length(description) <= 500),
    resource        TEXT CHECK (length(resource) <= 200),
    counterparty    TEXT,
    idempotency_key TEXT NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 300),
    entry_id        BIGINT NOT NULL,
    detail          JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (merchant_id, idempotency_key, customer_id),
    FOREIGN KEY (merchant_id, currency) REFERENCES credit_currencies (merchant_id, code)
);
CREATE INDEX credit_transactions_customer_idx ON credit_transactions (customer_id, seq DESC);
