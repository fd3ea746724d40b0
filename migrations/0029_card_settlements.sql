-- Card settlements: a merchant's card balance (`liabilities:merchant:{id}` in `iso4217:*`, the money
-- Stripe holds) leaves as a Stripe payout to the bank account of the Stripe account. The row is
-- written with the reservation (merchant → payouts_in_flight) before Stripe is asked, so a crash
-- between the two leaves a `created` row the daemon asks for again under the same idempotency key.
CREATE TABLE card_settlements (
    id               TEXT PRIMARY KEY CHECK (id ~ '^cst_[0-9a-z]{16,40}$'),
    merchant_id      TEXT NOT NULL REFERENCES merchants (id),
    -- ISO 4217, upper case.
    currency         TEXT NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount_minor     NUMERIC(78, 0) NOT NULL CHECK (amount_minor > 0),
    -- created: reserved, Stripe not yet answered; pending: Stripe's payout exists (`po_…`);
    -- paid: the money left Stripe (the ledger's `assets:stripe:*` with it); failed/canceled: the
    -- reservation went back to the merchant.
    status           TEXT NOT NULL CHECK (status IN ('created', 'pending', 'paid', 'failed', 'canceled')),
    stripe_payout_id TEXT UNIQUE CHECK (stripe_payout_id ~ '^po_[0-9A-Za-z_]{1,250}$'),
    failure_message  TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    finished_at      TIMESTAMPTZ
);
CREATE INDEX card_settlements_merchant_idx ON card_settlements (merchant_id, created_at DESC, id DESC);
CREATE INDEX card_settlements_open_idx ON card_settlements (created_at) WHERE status IN ('created', 'pending');
