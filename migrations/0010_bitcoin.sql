-- Bitcoin deposit addresses from merchants' watch-only output descriptors.
--
-- A merchant has at most one active descriptor per Bitcoin chain. Each invoice takes the
-- descriptor's next child index, in the invoice's own transaction, under a row lock on the
-- descriptor; an index and its address are never given to a second invoice. A descriptor that is
-- replaced and later set again continues from its own next_index: its old addresses stay taken.

CREATE TABLE bitcoin_descriptors (
    id            BIGSERIAL PRIMARY KEY,
    merchant_id   TEXT NOT NULL REFERENCES merchants (id),
    chain         TEXT NOT NULL CHECK (chain ~ '^bip122:[0-9a-f]{32}$'),
    -- Canonical text with its checksum; public keys only.
    descriptor    TEXT NOT NULL CHECK (length(descriptor) BETWEEN 1 AND 2048),
    -- The address at index 0: two spellings of one descriptor (origin info, h or ') share it.
    first_address TEXT NOT NULL,
    gap_limit     INTEGER NOT NULL CHECK (gap_limit BETWEEN 1 AND 100000),
    next_index    BIGINT NOT NULL DEFAULT 0 CHECK (next_index BETWEEN 0 AND 2147483648),
    active        BOOLEAN NOT NULL DEFAULT true,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, chain, descriptor),
    -- One descriptor's addresses belong to one merchant.
    UNIQUE (chain, first_address)
);
CREATE UNIQUE INDEX bitcoin_descriptors_active_idx ON bitcoin_descriptors (merchant_id, chain) WHERE active;

-- Every allocated child index, for ever: which invoice it went to and its address.
CREATE TABLE bitcoin_addresses (
    chain         TEXT NOT NULL,
    address       TEXT NOT NULL CHECK (address = lower(address)),
    descriptor_id BIGINT NOT NULL REFERENCES bitcoin_descriptors (id),
    merchant_id   TEXT NOT NULL REFERENCES merchants (id),
    child_index   BIGINT NOT NULL CHECK (child_index BETWEEN 0 AND 2147483647),
    invoice_id    TEXT NOT NULL REFERENCES invoices (id),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chain, address),
    UNIQUE (descriptor_id, child_index),
    UNIQUE (chain, invoice_id)
);
CREATE INDEX bitcoin_addresses_merchant_idx ON bitcoin_addresses (merchant_id, chain);
