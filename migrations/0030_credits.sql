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
                                                  'transfer_received', 'tip', 'expiry', 'reversal', 'adjustment')),
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

-- Packs a merchant sells: `credits` plus `bonus_credits` for `price_minor` of `price_currency`;
-- the purchased lots expire `expires_in_s` after they are granted (never when null).
CREATE TABLE credit_packs (
    id             TEXT PRIMARY KEY CHECK (id ~ '^pack_[0-9a-z]{16,40}$'),
    merchant_id    TEXT NOT NULL,
    name           TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    currency       TEXT NOT NULL,
    credits        NUMERIC(78, 0) NOT NULL CHECK (credits > 0),
    bonus_credits  NUMERIC(78, 0) NOT NULL CHECK (bonus_credits >= 0),
    price_minor    NUMERIC(78, 0) NOT NULL CHECK (price_minor > 0),
    price_currency TEXT NOT NULL CHECK (price_currency ~ '^[A-Z]{3}$'),
    expires_in_s   BIGINT CHECK (expires_in_s > 0),
    active         BOOLEAN NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    FOREIGN KEY (merchant_id, currency) REFERENCES credit_currencies (merchant_id, code)
);
CREATE INDEX credit_packs_merchant_idx ON credit_packs (merchant_id, created_at);

-- A customer's purchase of a pack: an invoice of its own. The credits are granted in the
-- transaction that makes the invoice paid (generation n: entry `credits:{merchant}:purchase:{id}#n`),
-- and reversed where unspent when it stops being paid (a reorg, marked invalid); what had been spent
-- by then is `owed_minor`, for review.
CREATE TABLE credit_purchases (
    id              TEXT PRIMARY KEY CHECK (id ~ '^cpu_[0-9a-z]{16,40}$'),
    merchant_id     TEXT NOT NULL REFERENCES merchants (id),
    customer_id     TEXT NOT NULL REFERENCES customers (id),
    pack_id         TEXT NOT NULL REFERENCES credit_packs (id),
    invoice_id      TEXT NOT NULL UNIQUE REFERENCES invoices (id),
    currency        TEXT NOT NULL,
    credits         NUMERIC(78, 0) NOT NULL,
    bonus_credits   NUMERIC(78, 0) NOT NULL,
    expires_in_s    BIGINT,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'granted', 'reversed')),
    generation      INTEGER NOT NULL DEFAULT 0,
    owed_minor      NUMERIC(78, 0) NOT NULL DEFAULT 0,
    granted_at      TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX credit_purchases_customer_idx ON credit_purchases (customer_id, created_at DESC);

-- Promo codes: one of a percentage or an amount off the price, bonus credits, or trial days (for
-- subscriptions); limits on redemptions in all and per customer, a minimum price, a window.
CREATE TABLE promo_codes (
    id               TEXT PRIMARY KEY CHECK (id ~ '^promo_[0-9a-z]{16,40}$'),
    merchant_id      TEXT NOT NULL REFERENCES merchants (id),
    -- Lower case: codes are matched without regard to case.
    code             TEXT NOT NULL CHECK (code ~ '^[a-z0-9_-]{2,40}$'),
    kind             TEXT NOT NULL CHECK (kind IN ('percent_off', 'amount_off', 'bonus_credits', 'trial_days')),
    -- Percent (1–100), minor units of `currency`, credits, or days.
    value            NUMERIC(78, 0) NOT NULL CHECK (value > 0),
    currency         TEXT CHECK (currency ~ '^[A-Z]{3}$'),
    max_redemptions  BIGINT CHECK (max_redemptions > 0),
    per_customer_max BIGINT CHECK (per_customer_max > 0),
    min_amount_minor NUMERIC(78, 0) CHECK (min_amount_minor > 0),
    min_currency     TEXT CHECK (min_currency ~ '^[A-Z]{3}$'),
    starts_at        TIMESTAMPTZ,
    expires_at       TIMESTAMPTZ,
    applies_to       TEXT[] NOT NULL,
    active           BOOLEAN NOT NULL,
    redeemed         BIGINT NOT NULL DEFAULT 0 CHECK (redeemed >= 0),
    created_at       TIMESTAMPTZ NOT NULL,
    UNIQUE (merchant_id, code),
    CHECK (max_redemptions IS NULL OR redeemed <= max_redemptions),
    CHECK ((kind = 'amount_off') = (currency IS NOT NULL)),
    CHECK ((min_amount_minor IS NULL) = (min_currency IS NULL))
);

-- Each redemption, counted in the transaction that records the purchase it discounts.
-- A redemption discounts a pack purchase or an invoice (then its customer may be unknown).
CREATE TABLE promo_redemptions (
    promo_id    TEXT NOT NULL REFERENCES promo_codes (id),
    customer_id TEXT REFERENCES customers (id),
    purchase_id TEXT UNIQUE REFERENCES credit_purchases (id),
    invoice_id  TEXT UNIQUE REFERENCES invoices (id),
    created_at  TIMESTAMPTZ NOT NULL,
    CHECK ((purchase_id IS NULL) <> (invoice_id IS NULL))
);
CREATE INDEX promo_redemptions_customer_idx ON promo_redemptions (promo_id, customer_id);
ALTER TABLE credit_purchases ADD COLUMN promo_id TEXT REFERENCES promo_codes (id),
    ADD COLUMN discount_minor NUMERIC(78, 0) NOT NULL DEFAULT 0;

-- Per-customer limits a merchant sets, in the fiat value of what moves (pegged credits at their
-- peg, purchases at their price), per UTC day (and month for purchases). Null: no limit.
CREATE TABLE credit_limits (
    merchant_id              TEXT PRIMARY KEY REFERENCES merchants (id),
    currency                 TEXT NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    spend_per_day_minor      NUMERIC(78, 0) CHECK (spend_per_day_minor > 0),
    transfer_per_day_minor   NUMERIC(78, 0) CHECK (transfer_per_day_minor > 0),
    purchase_per_day_minor   NUMERIC(78, 0) CHECK (purchase_per_day_minor > 0),
    purchase_per_month_minor NUMERIC(78, 0) CHECK (purchase_per_month_minor > 0),
    updated_at               TIMESTAMPTZ NOT NULL
);
-- What each movement was worth in the limits' currency when it was made (null: not counted).
ALTER TABLE credit_transactions ADD COLUMN value_minor NUMERIC(78, 0), ADD COLUMN value_currency TEXT;
CREATE INDEX credit_transactions_limits_idx ON credit_transactions (customer_id, kind, created_at) WHERE value_minor IS NOT NULL;
ALTER TABLE credit_purchases ADD COLUMN price_minor NUMERIC(78, 0), ADD COLUMN price_currency TEXT;

-- Invoices may name the merchant's customer, and carry a promo code's discount.
ALTER TABLE invoices ADD COLUMN customer_id TEXT REFERENCES customers (id),
    ADD COLUMN promo_id TEXT REFERENCES promo_codes (id),
    ADD COLUMN discount_minor NUMERIC(78, 0) NOT NULL DEFAULT 0 CHECK (discount_minor >= 0);
