-- Reconciliation runs. A run re-reads a chain's block range in chunks; each chunk's observations
-- commit with the run's progress (`scanned_to`), so an interrupted run resumes where it stopped.
-- The finished report (items and per-asset totals) is kept as the run's history.

CREATE TABLE reconciliation_runs (
    id          TEXT PRIMARY KEY CHECK (id ~ '^rec_[0-9a-z]{16,40}$'),
    -- A CAIP-2 chain id, or 'stripe'.
    source      TEXT NOT NULL CHECK (length(source) BETWEEN 1 AND 64),
    from_block  BIGINT NOT NULL CHECK (from_block >= 0),
    to_block    BIGINT NOT NULL CHECK (to_block >= from_block),
    -- The last block whose observations are stored; NULL before the first chunk.
    scanned_to  BIGINT CHECK (scanned_to BETWEEN from_block AND to_block),
    status      TEXT NOT NULL CHECK (status IN ('running', 'finished')),
    ok          BOOLEAN,
    differences INTEGER CHECK (differences >= 0),
    report      JSONB,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    CHECK ((status = 'finished') = (report IS NOT NULL))
);
CREATE INDEX reconciliation_runs_created_idx ON reconciliation_runs (created_at DESC, id DESC);

CREATE TABLE reconciliation_observations (
    run_id       TEXT NOT NULL REFERENCES reconciliation_runs (id),
    kind         TEXT NOT NULL,
    reference    TEXT NOT NULL,
    tx_hash      TEXT NOT NULL,
    block_number BIGINT NOT NULL,
    asset        TEXT NOT NULL,
    address      TEXT NOT NULL,
    amount_minor NUMERIC(78, 0) NOT NULL CHECK (amount_minor >= 0),
    PRIMARY KEY (run_id, kind, reference)
);
