-- A card attempt Stripe did not answer is asked again with its own idempotency key, by the payer's
-- next try or by the daemon: the request must be rebuilt exactly, so whether it charges the card on
-- file while the payer is away is kept with it.
ALTER TABLE card_attempts ADD COLUMN off_session BOOLEAN NOT NULL DEFAULT false;
-- The attempts still waiting for Stripe's answer, found by the daemon's resume pass.
CREATE INDEX card_attempts_creating_idx ON card_attempts (updated_at) WHERE status = 'creating';
-- Refunds Stripe has not answered yet, asked again by the daemon.
CREATE INDEX card_refunds_pending_idx ON card_refunds (updated_at) WHERE status = 'pending';
