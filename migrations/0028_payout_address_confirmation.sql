-- A changed payout address is usable at once when a second key confirms the change (for a
-- merchant's address: another of its merchant keys; for a creator's: its merchant), instead of
-- after the takeover delay. `changed_by_key` is the key that set it.
ALTER TABLE merchant_payout_addresses ADD COLUMN changed_by_key TEXT,
    ADD COLUMN confirmed_at TIMESTAMPTZ, ADD COLUMN confirmed_by_key TEXT;
ALTER TABLE creator_payout_addresses ADD COLUMN changed_by_key TEXT,
    ADD COLUMN confirmed_at TIMESTAMPTZ, ADD COLUMN confirmed_by_key TEXT;
