-- Refunds of crypto payments, claimed by the payer through a one-time link.
--
-- A refund is one asset (CAIP-19) of the invoice's payments. When it is created, the credits of
-- that asset's payments are reversed for `value_minor` at the rate they were paid at (creators'
-- shares and the fee in proportion) onto the refund's own account `liabilities:refund:{id}`
-- (`reserved_minor`), so the funds cannot leave twice. The payer then opens `/refund/{token}`
-- (only the token's SHA-256 is stored), enters an address, and the refund is paid: from the
-- treasury by a payout batch (EVM), or by the merchant from its own wallet, watched on the chain
-- like a deposit (Bitcoin).
CREATE TABLE crypto_refunds (
    id             TEXT PRIMARY KEY CHECK (id ~ '^rfd_[0-9a-z]{16,40}$'),
    merchant_id    TEXT NOT NULL REFERENCES merchants (id),
    invoice_id     TEXT NOT NULL REFERENCES invoices (id),
    chain          TEXT NOT NULL,
    asset          TEXT NOT NULL,
    -- As the invoice quoted the asset.
    symbol         TEXT NOT NULL,
    decimals       SMALLINT NOT NULL CHECK (decimals BETWEEN 0 AND 36),
    kind           TEXT NOT NULL CHECK (kind IN ('rate_then', 'current_rate', 'fiat', 'overpaid', 'custom')),
    -- The invoice's currency and the value refunded in it (minor units).
    currency       TEXT NOT NULL,
    value_minor    NUMERIC(78, 0) NOT NULL CHECK (value_minor >= 0),
    -- What the payments' credits gave back, in the asset's smallest unit.
    reserved_minor NUMERIC(78, 0) NOT NULL CHECK (reserved_minor >= 0),
    -- What the payer receives; null until known (the current-rate kinds: when claimed).
    amount_minor   NUMERIC(78, 0) CHECK (amount_minor > 0),
    token_hash     BYTEA NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    status         TEXT NOT NULL CHECK (status IN ('open', 'claimed', 'paid', 'failed', 'canceled', 'expired')),
    reason         TEXT CHECK (length(reason) <= 500),
    address        TEXT CHECK (length(address) BETWEEN 1 AND 128),
    payout_id      TEXT UNIQUE REFERENCES payout_batches (id),
    -- The transaction that paid it (a Bitcoin outpoint's txid, or the payout's hash).
    tx_hash        TEXT,
    expires_at     TIMESTAMPTZ NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    claimed_at     TIMESTAMPTZ,
    finished_at    TIMESTAMPTZ,
    updated_at     TIMESTAMPTZ NOT NULL,
    CHECK (status IN ('open', 'canceled', 'expired') OR (address IS NOT NULL AND amount_minor IS NOT NULL))
);
CREATE INDEX crypto_refunds_invoice_idx ON crypto_refunds (invoice_id, created_at);
CREATE INDEX crypto_refunds_merchant_idx ON crypto_refunds (merchant_id, created_at, id);
-- Claimed refunds the merchant pays from its own wallet: the watcher looks for them.
CREATE INDEX crypto_refunds_watched_idx ON crypto_refunds (chain) WHERE status = 'claimed' AND payout_id IS NULL;
CREATE INDEX crypto_refunds_open_idx ON crypto_refunds (expires_at) WHERE status = 'open';

-- How much of each payment a refund gave back (asset units). A payment's refunded amount is the sum
-- over its refunds that still stand (not canceled or expired).
CREATE TABLE crypto_refund_parts (
    refund_id      TEXT NOT NULL REFERENCES crypto_refunds (id),
    payment_id     TEXT NOT NULL REFERENCES payments (id),
    returned_minor NUMERIC(78, 0) NOT NULL CHECK (returned_minor > 0),
    PRIMARY KEY (refund_id, payment_id)
);
CREATE INDEX crypto_refund_parts_payment_idx ON crypto_refund_parts (payment_id);

-- A refund's payout pays from the refund's own account.
ALTER TABLE payout_items DROP CONSTRAINT payout_items_account_check,
    ADD CONSTRAINT payout_items_account_check CHECK (
        (creator_id IS NOT NULL AND account = 'liabilities:creator:' || creator_id)
        OR (creator_id IS NULL AND account = 'liabilities:merchant:' || merchant_id)
        OR (creator_id IS NULL AND account ~ '^liabilities:refund:rfd_[0-9a-z]{16,40}$'));
