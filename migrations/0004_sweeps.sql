-- Sweeps move confirmed deposits from forwarder addresses to the treasury. A sweep row is written
-- before the transaction is sent and names the payments it covers, so a crash at any point is
-- resumed: a sweep without a transaction hash is sent again (sweeping an emptied forwarder moves
-- nothing), one with a hash is looked up before anything is resent.

CREATE TABLE sweeps (
    id              TEXT PRIMARY KEY CHECK (id ~ '^swp_[0-9a-z]{16,40}$'),
    chain           TEXT NOT NULL,
    invoice_id      TEXT NOT NULL REFERENCES invoices (id),
    address         TEXT NOT NULL CHECK (address = lower(address)),
    status          TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'confirmed', 'failed')),
    tx_hash         TEXT,
    gas_fee         NUMERIC(78, 0) CHECK (gas_fee >= 0),
    ledger_entry_id BIGINT REFERENCES journal_entries (id),
    error           TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (status <> 'sent' OR tx_hash IS NOT NULL)
);
-- At most one sweep in progress per deposit address.
CREATE UNIQUE INDEX sweeps_one_open_idx ON sweeps (chain, address) WHERE status IN ('pending', 'sent');

ALTER TABLE payments ADD COLUMN sweep_id TEXT REFERENCES sweeps (id);
CREATE INDEX payments_unswept_idx ON payments (chain, address) WHERE status = 'confirmed' AND sweep_id IS NULL;
