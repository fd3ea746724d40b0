-- Merchant settlement: a merchant's available balance leaves through the same payout batches as
-- creators' earnings. A batch item now names the ledger account its amount left (`account`), and
-- a merchant's own item has no creator.
ALTER TABLE payout_items ADD COLUMN account TEXT;
UPDATE payout_items SET account = 'liabilities:creator:' || creator_id;
ALTER TABLE payout_items ALTER COLUMN account SET NOT NULL,
    ALTER COLUMN creator_id DROP NOT NULL,
    ADD CONSTRAINT payout_items_account_check CHECK (
        (creator_id IS NOT NULL AND account = 'liabilities:creator:' || creator_id)
        OR (creator_id IS NULL AND account = 'liabilities:merchant:' || merchant_id)),
    ADD CONSTRAINT payout_items_batch_account_key UNIQUE (batch_id, account);
CREATE INDEX payout_items_merchant_settlement_idx ON payout_items (merchant_id, batch_id) WHERE creator_id IS NULL;

-- Where a merchant's settlements are paid, per chain. `changed_at` is when the address last
-- changed: a settlement to an address changed within the takeover delay waits for it.
CREATE TABLE merchant_payout_addresses (
    merchant_id TEXT NOT NULL REFERENCES merchants (id),
    chain       TEXT NOT NULL CHECK (length(chain) BETWEEN 3 AND 64),
    address     TEXT NOT NULL CHECK (length(address) BETWEEN 1 AND 128),
    changed_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, chain)
);
