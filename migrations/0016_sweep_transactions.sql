-- A sweep's signed transaction is stored before it is broadcast, as a payout's is: after a crash
-- between signing and sending, the same bytes are sent again (never a second sweep with a fresh
-- nonce), and a stored transaction the chain never mined is recognised by its nonce being taken.
-- `status = 'sent'` now means "signed and stored"; whether it reached a node is learned from the
-- chain. Rows written before this migration keep a hash without bytes.

ALTER TABLE sweeps
    ADD COLUMN sender TEXT CHECK (sender = lower(sender)),
    ADD COLUMN nonce  BIGINT CHECK (nonce >= 0),
    ADD COLUMN raw_tx BYTEA,
    ADD CONSTRAINT sweeps_signed_whole CHECK (
        (raw_tx IS NULL) = (nonce IS NULL)
        AND (raw_tx IS NULL OR (tx_hash IS NOT NULL AND sender IS NOT NULL))
    );
