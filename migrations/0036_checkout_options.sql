-- What the merchant asks of the checkout page per invoice: where the payer returns once it is
-- settled, the payer's e-mail (shown, and given to the card processor for its receipt), and the
-- page's language (null: the payer's browser chooses). Written at creation, never changed.
ALTER TABLE invoices
    ADD COLUMN redirect_url TEXT CHECK (char_length(redirect_url) BETWEEN 1 AND 2000),
    ADD COLUMN buyer_email TEXT CHECK (char_length(buyer_email) BETWEEN 3 AND 254),
    ADD COLUMN locale TEXT CHECK (locale IN ('en', 'es', 'fr', 'de', 'pt', 'zh-CN', 'ja'));
