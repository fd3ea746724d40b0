-- Creators and revenue splits. A creator belongs to one merchant; a split names creators and
-- their basis points plus the platform fee. Rules (the merchant default, prefix '', and one per
-- order_id prefix) are copied onto each invoice when it is created, so editing a rule later never
-- changes how an invoice that already exists is credited.

CREATE TABLE creators (
    id          TEXT PRIMARY KEY CHECK (id ~ '^cr_[0-9a-z]{16,40}$'),
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Lets split tables name (merchant, creator) so a rule cannot point at another merchant's creator.
    UNIQUE (merchant_id, id)
);
CREATE INDEX creators_merchant_idx ON creators (merchant_id, created_at, id);

-- One rule per merchant and order_id prefix; the empty prefix is the merchant's default.
CREATE TABLE split_rules (
    merchant_id      TEXT NOT NULL REFERENCES merchants (id),
    order_id_prefix  TEXT NOT NULL CHECK (length(order_id_prefix) <= 200),
    platform_fee_bps INTEGER NOT NULL CHECK (platform_fee_bps BETWEEN 0 AND 10000),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, order_id_prefix)
);

CREATE TABLE split_rule_shares (
    merchant_id     TEXT NOT NULL,
    order_id_prefix TEXT NOT NULL,
    creator_id      TEXT NOT NULL,
    bps             INTEGER NOT NULL CHECK (bps BETWEEN 1 AND 10000),
    position        SMALLINT NOT NULL,
    PRIMARY KEY (merchant_id, order_id_prefix, creator_id),
    FOREIGN KEY (merchant_id, order_id_prefix) REFERENCES split_rules (merchant_id, order_id_prefix) ON DELETE CASCADE,
    FOREIGN KEY (merchant_id, creator_id) REFERENCES creators (merchant_id, id)
);

-- The split an invoice was created with; fixed for the invoice's life.
ALTER TABLE invoices ADD COLUMN platform_fee_bps INTEGER NOT NULL DEFAULT 0
    CHECK (platform_fee_bps BETWEEN 0 AND 10000);

CREATE TABLE invoice_splits (
    invoice_id  TEXT NOT NULL REFERENCES invoices (id),
    merchant_id TEXT NOT NULL,
    creator_id  TEXT NOT NULL,
    bps         INTEGER NOT NULL CHECK (bps BETWEEN 1 AND 10000),
    position    SMALLINT NOT NULL,
    PRIMARY KEY (invoice_id, creator_id),
    FOREIGN KEY (merchant_id, creator_id) REFERENCES creators (merchant_id, id)
);

-- Where a creator is paid, per chain (CAIP-2). EVM addresses are stored EIP-55 checksummed.
CREATE TABLE creator_payout_addresses (
    creator_id TEXT NOT NULL REFERENCES creators (id),
    chain      TEXT NOT NULL CHECK (length(chain) BETWEEN 3 AND 64),
    address    TEXT NOT NULL CHECK (length(address) BETWEEN 1 AND 128),
    PRIMARY KEY (creator_id, chain)
);

-- A creator key speaks for one creator only.
ALTER TABLE api_keys ADD COLUMN creator_id TEXT REFERENCES creators (id);
