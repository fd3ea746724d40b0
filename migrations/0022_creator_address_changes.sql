-- A creator changing its own payout address starts the takeover delay, as a merchant's change
-- does. An address the merchant set when it created the creator has no time (NULL): usable at once.
ALTER TABLE creator_payout_addresses ADD COLUMN changed_at TIMESTAMPTZ;
