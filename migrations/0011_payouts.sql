-- Creator payouts through the PayoutBatcher contract.
--
-- A payout batch (`po_…`) pays one asset on one chain to several creators in one contract call. It
-- is written, with its items and the ledger entry moving the creators' balances to
-- `liabilities:payouts_in_flight`, before anything is signed; its `batch_key` is the bytes32 the
-- contract refuses to pay twice. Every signed transaction is stored (raw bytes included) before it is
-- broadcast, so after a crash the same bytes are sent again or looked up, never re-signed blindly.

CREATE TABLE payout_batches (
    id             TEXT PRIMARY KEY CHECK (id ~ '^po_[0-9a-z]{16,40}$'),
    run_id         TEXT NOT NULL CHECK (run_id ~ '^run_[0-9a-z]{16,40}$'),
    chain          TEXT NOT NULL,
    asset          TEXT NOT NULL,
    -- The ERC-20 contract, or the zero address for the native coin (as the contract takes it).
    token          TEXT NOT NULL CHECK (token ~ '^0x[0-9a-f]{40}$'),
    batcher        TEXT NOT NULL CHECK (batcher ~ '^0x[0-9a-f]{40}$'),
    batch_key      TEXT NOT NULL UNIQUE CHECK (batch_key ~ '^0x[0-9a-f]{64}$'),
    status         TEXT NOT NULL CHECK (status IN ('created', 'sent', 'confirmed', 'failed')),
    total_minor    NUMERIC(78, 0) NOT NULL CHECK (total_minor > 0),
    recipients     INTEGER NOT NULL CHECK (recipients > 0),
    -- The mined transaction and where it was mined.
    tx_hash        TEXT,
    block_number   BIGINT,
    block_hash     TEXT,
    gas_fee_minor  NUMERIC(78, 0) CHECK (gas_fee_minor >= 0),
    -- Why the batch waits or failed, for people.
    error          TEXT,
    -- The tip when the batch's nonce was first seen used by another transaction: the batch counts as
    -- dropped only once that is as deep as a payout must be to settle.
    nonce_lost_at  BIGINT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at        TIMESTAMPTZ,
    finished_at    TIMESTAMPTZ,
    CHECK (status <> 'confirmed' OR (tx_hash IS NOT NULL AND block_number IS NOT NULL))
);
CREATE INDEX payout_batches_open_idx ON payout_batches (chain, created_at) WHERE status IN ('created', 'sent');
CREATE INDEX payout_batches_created_idx ON payout_batches (created_at, id);

CREATE TABLE payout_items (
    batch_id     TEXT NOT NULL REFERENCES payout_batches (id),
    position     INTEGER NOT NULL CHECK (position >= 0),
    creator_id   TEXT NOT NULL REFERENCES creators (id),
    merchant_id  TEXT NOT NULL REFERENCES merchants (id),
    address      TEXT NOT NULL CHECK (address ~ '^0x[0-9a-fA-F]{40}$'),
    amount_minor NUMERIC(78, 0) NOT NULL CHECK (amount_minor > 0),
    PRIMARY KEY (batch_id, position),
    UNIQUE (batch_id, creator_id)
);
CREATE INDEX payout_items_creator_idx ON payout_items (creator_id, batch_id);

-- Every transaction signed for a batch; replacements of a stuck one share its nonce.
CREATE TABLE payout_attempts (
    -- Signing order: a replacement always comes after what it replaces.
    seq                      BIGSERIAL NOT NULL UNIQUE,
    batch_id                 TEXT NOT NULL REFERENCES payout_batches (id),
    tx_hash                  TEXT NOT NULL UNIQUE CHECK (tx_hash ~ '^0x[0-9a-f]{64}$'),
    sender                   TEXT NOT NULL,
    nonce                    BIGINT NOT NULL CHECK (nonce >= 0),
    gas_limit                BIGINT NOT NULL CHECK (gas_limit > 0),
    max_fee_per_gas          NUMERIC(78, 0) NOT NULL,
    max_priority_fee_per_gas NUMERIC(78, 0) NOT NULL,
    raw_tx                   BYTEA NOT NULL,
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, tx_hash)
);

-- When each chain's scheduled run last happened, so a schedule survives restarts and replicas.
CREATE TABLE payout_schedule (
    chain       TEXT PRIMARY KEY,
    last_run_at TIMESTAMPTZ NOT NULL
);
