-- When a merchant's balances are settled without asking: `daily` or `weekly` (every balance of an
-- asset worth at least `minimum_usd_cents`, to the merchant's payout address on its chain), or only
-- on request (`manual`, also what a merchant without a row gets).
CREATE TABLE merchant_settlement_schedules (
    merchant_id       TEXT PRIMARY KEY REFERENCES merchants (id),
    schedule          TEXT NOT NULL CHECK (schedule IN ('manual', 'daily', 'weekly')),
    minimum_usd_cents NUMERIC(78, 0) NOT NULL CHECK (minimum_usd_cents >= 0),
    last_settled_at   TIMESTAMPTZ,
    updated_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX merchant_settlement_schedules_due_idx ON merchant_settlement_schedules (last_settled_at)
    WHERE schedule <> 'manual';
