-- How long an invoice's payments wait before they count: `medium` follows the chain's confirmation
-- tiers, `slow` its deepest tier for every payment, `fast` none for payments the chain allows to
-- count unconfirmed. Written at creation, never changed; the follower reads it with each payment.
ALTER TABLE invoices
    ADD COLUMN speed_policy TEXT NOT NULL DEFAULT 'medium' CHECK (speed_policy IN ('fast', 'medium', 'slow'));
