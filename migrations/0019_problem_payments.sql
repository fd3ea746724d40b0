-- Problem payments resolved by the merchant. A payment held on the unapplied balance (late, to a
-- closed invoice, in an asset the invoice did not quote) can be applied to its own invoice or to
-- another of the merchant's: `applied_invoice_id` names that other invoice, which it then counts
-- toward (its own `invoice_id` stays: it is what the chain paid). An invoice the merchant accepts
-- as paid although less arrived records when (`settled_at`); one it marks invalid holds what arrived
-- on the unapplied balance again (status `invalid`).
ALTER TABLE payments ADD COLUMN applied_invoice_id TEXT REFERENCES invoices (id),
    ADD CONSTRAINT payments_applied_elsewhere CHECK (applied_invoice_id IS NULL OR applied_to = 'invoice');
CREATE INDEX payments_applied_invoice_idx ON payments (applied_invoice_id) WHERE applied_invoice_id IS NOT NULL;
ALTER TABLE invoices ADD COLUMN settled_at TIMESTAMPTZ;
-- An invoice the merchant marks invalid: what arrived is held on the unapplied balance again.
ALTER TABLE invoices DROP CONSTRAINT invoices_status_check,
    ADD CONSTRAINT invoices_status_check
    CHECK (status IN ('open', 'processing', 'paid', 'overpaid', 'expired', 'refunded', 'void', 'invalid'));
