-- The double-entry ledger. The database, not only the daemon, enforces its invariants:
--   * journal entries and postings are append-only (UPDATE, DELETE and TRUNCATE are refused);
--   * per entry and asset the postings sum to zero (checked at commit by a deferred constraint trigger);
--   * postings are added only in the transaction that created their entry;
--   * balance rows change only through postings, in the same transaction, and accounts that may not go
--     negative are guarded by a CHECK on their balance rows.
-- Sign convention: a posting's amount is positive for a debit and negative for a credit. Balances are
-- kept in the account's normal direction (debit-normal: assets, expenses; credit-normal: liabilities,
-- equity, revenue), so "what we owe a merchant" is a positive number.

CREATE TABLE accounts (
    id             BIGSERIAL PRIMARY KEY,
    code           TEXT NOT NULL UNIQUE
                   CHECK (length(code) <= 256
                          AND code ~ '^(assets|liabilities|equity|revenue|expenses)(:[A-Za-z0-9_./-]+)+$'),
    normal_side    TEXT NOT NULL CHECK (normal_side IN ('debit', 'credit')),
    non_negative   BOOLEAN NOT NULL,
    -- Hot accounts (a chain's asset account, platform revenue) spread their balance over several rows so
    -- concurrent writers do not queue on one row lock. Guarded accounts keep one row: the CHECK must see
    -- the whole balance.
    balance_shards SMALLINT NOT NULL DEFAULT 1 CHECK (balance_shards BETWEEN 1 AND 64),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (NOT non_negative OR balance_shards = 1)
);

CREATE TABLE journal_entries (
    id                BIGSERIAL PRIMARY KEY,
    idempotency_key   TEXT NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 256),
    -- SHA-256 of the entry's canonical content: a retry with the same key must carry the same entry.
    fingerprint       BYTEA NOT NULL CHECK (length(fingerprint) = 32),
    kind              TEXT NOT NULL CHECK (length(kind) BETWEEN 1 AND 64),
    memo              TEXT CHECK (length(memo) <= 1000),
    reverses_entry_id BIGINT UNIQUE REFERENCES journal_entries (id),
    tx                XID8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE postings (
    id         BIGSERIAL PRIMARY KEY,
    entry_id   BIGINT NOT NULL REFERENCES journal_entries (id),
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    asset      TEXT NOT NULL CHECK (length(asset) BETWEEN 1 AND 200),
    amount     NUMERIC(78, 0) NOT NULL CHECK (amount <> 0)
);
CREATE INDEX postings_entry_idx ON postings (entry_id);
CREATE INDEX postings_account_idx ON postings (account_id, asset);

CREATE TABLE balances (
    account_id   BIGINT NOT NULL REFERENCES accounts (id),
    asset        TEXT NOT NULL,
    shard        SMALLINT NOT NULL,
    balance      NUMERIC(78, 0) NOT NULL,
    non_negative BOOLEAN NOT NULL,
    PRIMARY KEY (account_id, asset, shard),
    CONSTRAINT balance_non_negative CHECK (NOT non_negative OR balance >= 0)
);

CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'PRL01';
END
$$;

CREATE TRIGGER accounts_append_only BEFORE UPDATE OR DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER journal_entries_no_truncate BEFORE TRUNCATE ON journal_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Balance rows are written only from the posting trigger (trigger depth 2). A direct write is refused.
CREATE FUNCTION ledger_refuse_direct_balance_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'balances change only through postings: direct % refused', TG_OP
        USING ERRCODE = 'PRL03';
END
$$;
CREATE TRIGGER balances_only_from_postings BEFORE INSERT OR UPDATE OR DELETE ON balances
    FOR EACH ROW WHEN (pg_trigger_depth() < 1) EXECUTE FUNCTION ledger_refuse_direct_balance_write();
CREATE TRIGGER balances_no_truncate BEFORE TRUNCATE ON balances
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_direct_balance_write();

-- Every posting moves its account's balance row in the same statement. Rows are inserted in
-- (account_id, asset) order by the daemon, so balance row locks are always taken in one order.
CREATE FUNCTION ledger_apply_posting() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    acc      RECORD;
    delta    NUMERIC;
    shard_no SMALLINT;
    current  NUMERIC;
BEGIN
    SELECT code, normal_side, non_negative, balance_shards INTO acc
        FROM accounts WHERE id = NEW.account_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'posting to unknown account id %', NEW.account_id USING ERRCODE = 'PRL05';
    END IF;
    delta := CASE WHEN acc.normal_side = 'debit' THEN NEW.amount ELSE -NEW.amount END;
    shard_no := CASE WHEN acc.balance_shards = 1 THEN 0 ELSE pg_backend_pid() % acc.balance_shards END;
    -- A guarded account that is being drawn down gets a readable error naming it; the CHECK on the
    -- balance row stays as the backstop. (An upsert cannot serve here: the CHECK would judge the
    -- negative delta as if it were the new row.)
    IF acc.non_negative AND delta < 0 THEN
        SELECT balance INTO current FROM balances
            WHERE account_id = NEW.account_id AND asset = NEW.asset AND shard = 0 FOR UPDATE;
        IF current IS NULL OR current + delta < 0 THEN
            RAISE EXCEPTION 'account % would go negative in asset %', acc.code, NEW.asset
                USING ERRCODE = 'PRL04';
        END IF;
        UPDATE balances SET balance = balance + delta
            WHERE account_id = NEW.account_id AND asset = NEW.asset AND shard = 0;
    ELSE
        INSERT INTO balances AS b (account_id, asset, shard, balance, non_negative)
            VALUES (NEW.account_id, NEW.asset, shard_no, delta, acc.non_negative)
            ON CONFLICT (account_id, asset, shard) DO UPDATE SET balance = b.balance + EXCLUDED.balance;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER postings_apply BEFORE INSERT ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_apply_posting();

-- Checked at commit, once per posting inserted, so no posting escapes the check: its entry must have
-- been created in this transaction, and the entry's postings must sum to zero per asset.
CREATE FUNCTION ledger_check_entry() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    entry_tx XID8;
    bad      TEXT;
    n        BIGINT;
BEGIN
    SELECT tx INTO entry_tx FROM journal_entries WHERE id = NEW.entry_id;
    IF entry_tx IS DISTINCT FROM pg_current_xact_id() THEN
        RAISE EXCEPTION 'journal entry % is closed: postings are added only with the entry', NEW.entry_id
            USING ERRCODE = 'PRL01';
    END IF;
    SELECT count(*) INTO n FROM postings WHERE entry_id = NEW.entry_id;
    IF n < 2 THEN
        RAISE EXCEPTION 'journal entry % has % posting(s); at least 2 are needed', NEW.entry_id, n
            USING ERRCODE = 'PRL02';
    END IF;
    SELECT asset INTO bad FROM postings WHERE entry_id = NEW.entry_id
        GROUP BY asset HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal entry % does not balance in asset %', NEW.entry_id, bad
            USING ERRCODE = 'PRL02';
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER postings_balanced AFTER INSERT ON postings
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_entry();

-- An entry without postings is refused at commit too.
CREATE FUNCTION ledger_check_entry_has_postings() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM postings WHERE entry_id = NEW.id) THEN
        RAISE EXCEPTION 'journal entry % has no postings', NEW.id USING ERRCODE = 'PRL02';
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER journal_entries_have_postings AFTER INSERT ON journal_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_entry_has_postings();
