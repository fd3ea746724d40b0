-- Amounts a person can send: an option's `amount_minor` is its quote rounded up to the decimals a
-- payer types (`display_decimals`), never more than 0.1 % above the exact conversion, which is kept
-- beside it (`amount_exact_minor`). Options written before have neither: shown with every decimal.
ALTER TABLE payment_options ADD COLUMN amount_exact_minor NUMERIC(78, 0) CHECK (amount_exact_minor > 0),
    ADD COLUMN display_decimals SMALLINT CHECK (display_decimals BETWEEN 0 AND 36);
