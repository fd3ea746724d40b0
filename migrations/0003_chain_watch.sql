-- Chain watching. Each watcher keeps a cursor (the last block it processed) and the hashes of the
-- recent blocks, so a parent-hash mismatch finds the fork point. Both are written in the same
-- transaction as the payments and ledger entries the blocks caused.

CREATE TABLE chain_cursors (
    chain      TEXT PRIMARY KEY,
    height     BIGINT NOT NULL CHECK (height >= 0),
    block_hash TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE chain_blocks (
    chain       TEXT NOT NULL,
    height      BIGINT NOT NULL CHECK (height >= 0),
    block_hash  TEXT NOT NULL,
    parent_hash TEXT NOT NULL,
    PRIMARY KEY (chain, height)
);

-- Where a payment was mined, to find the payments a reorg orphans.
ALTER TABLE payments ADD COLUMN block_height BIGINT, ADD COLUMN block_hash TEXT;
CREATE INDEX payments_chain_block_idx ON payments (chain, block_height) WHERE status IN ('seen', 'confirmed');

-- A deposit address belongs to one invoice, ever (the primary key), on each chain. Addresses are
-- stored lower-case; watchers load the set they watch from here.
CREATE TABLE deposit_addresses (
    chain      TEXT NOT NULL,
    address    TEXT NOT NULL CHECK (address = lower(address)),
    invoice_id TEXT NOT NULL REFERENCES invoices (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chain, address)
);
CREATE INDEX deposit_addresses_invoice_idx ON deposit_addresses (invoice_id);
