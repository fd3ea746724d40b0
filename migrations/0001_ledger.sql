-- The double-entry ledger. The database, not only the daemon, enforces its invariants:
--   * journal entries and postings are append-only (UPDATE, DELETE and TRUNCATE are refused);
--   * per entry and asset the postings sum to zero (checked once per entry at commit by a deferred
--     constraint trigger);
--   * postings are added only in the transaction that created their entry (a composite foreign key on
--     the entry's transaction id) and never after that entry's check has run;
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
    -- Every account spreads its balance over several rows so concurrent writers do not queue on one
    -- row lock held until commit. An account's balance is the sum of its rows. For guarded accounts each
    -- row is itself kept non-negative: a credit lands on any one row, a debit locks all of the account's
    -- rows (in shard order) and draws them down one by one.
    balance_shards SMALLINT NOT NULL DEFAULT 1 CHECK (balance_shards BETWEEN 1 AND 64),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
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
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (id, tx)
);

CREATE TABLE postings (
    id         BIGSERIAL PRIMARY KEY,
    entry_id   BIGINT NOT NULL,
    -- Set by the posting trigger to the inserting transaction; the foreign key then only matches an
    -- entry created by that same transaction.
    entry_tx   XID8 NOT NULL,
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    asset      TEXT NOT NULL CHECK (length(asset) BETWEEN 1 AND 200),
    amount     NUMERIC(78, 0) NOT NULL CHECK (amount <> 0),
    FOREIGN KEY (entry_id, entry_tx) REFERENCES journal_entries (id, tx)
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

-- Every posting moves its account's balance in the same statement. Rows are inserted in
-- (account_id, asset) order by the daemon, and within an account rows are locked in shard order, so
-- balance row locks are always taken in one global order.
CREATE FUNCTION ledger_apply_posting() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    acc       RECORD;
    delta     NUMERIC;
    remaining NUMERIC;
    total        NUMERIC;
    shard_list   SMALLINT[];
    balance_list NUMERIC[];
BEGIN
    -- After this transaction's entries were checked, no posting may slip in (SET CONSTRAINTS … IMMEDIATE
    -- would otherwise let one through unchecked).
    IF current_setting('payrail.entries_checked', true) = 'on' THEN
        RAISE EXCEPTION 'journal entry % is closed: postings are added only with the entry', NEW.entry_id
            USING ERRCODE = 'PRL01';
    END IF;
    NEW.entry_tx := pg_current_xact_id();
    SELECT code, normal_side, non_negative, balance_shards INTO acc
        FROM accounts WHERE id = NEW.account_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'posting to unknown account id %', NEW.account_id USING ERRCODE = 'PRL05';
    END IF;
    delta := CASE WHEN acc.normal_side = 'debit' THEN NEW.amount ELSE -NEW.amount END;
    IF acc.non_negative AND delta < 0 THEN
        -- Draw a guarded account down: lock all its rows in shard order, check the total, then take the
        -- amount out row by row so that every row stays non-negative. (An upsert cannot serve here: the
        -- CHECK would judge the negative delta as if it were the new row.)
        SELECT array_agg(shard ORDER BY shard), array_agg(balance ORDER BY shard), sum(balance)
            INTO shard_list, balance_list, total
            FROM (
                SELECT shard, balance FROM balances
                WHERE account_id = NEW.account_id AND asset = NEW.asset
                ORDER BY shard FOR UPDATE
            ) locked;
        IF total IS NULL OR total + delta < 0 THEN
            RAISE EXCEPTION 'account % would go negative in asset %', acc.code, NEW.asset
                USING ERRCODE = 'PRL04';
        END IF;
        -- Only the rows locked above are touched: a row another writer added since is left alone.
        remaining := -delta;
        FOR i IN 1 .. array_length(shard_list, 1) LOOP
            EXIT WHEN remaining = 0;
            CONTINUE WHEN balance_list[i] <= 0;
            UPDATE balances SET balance = balance - least(balance_list[i], remaining)
                WHERE account_id = NEW.account_id AND asset = NEW.asset AND shard = shard_list[i];
            remaining := remaining - least(balance_list[i], remaining);
        END LOOP;
    ELSE
        -- A random row: writers spread over the rows whatever connection they come from.
        INSERT INTO balances AS b (account_id, asset, shard, balance, non_negative)
            VALUES (NEW.account_id, NEW.asset, floor(random() * acc.balance_shards)::smallint, delta, acc.non_negative)
            ON CONFLICT (account_id, asset, shard) DO UPDATE SET balance = b.balance + EXCLUDED.balance;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER postings_apply BEFORE INSERT ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_apply_posting();

-- Checked once per entry when the transaction commits: it has at least two postings and they sum to
-- zero per asset. Postings of an entry can only be inserted by the transaction that created it (the
-- foreign key above) and only before this check runs (the posting trigger), so no posting escapes it.
CREATE FUNCTION ledger_check_entry() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad TEXT;
    n   BIGINT;
BEGIN
    PERFORM set_config('payrail.entries_checked', 'on', true);
    SELECT count(*) INTO n FROM postings WHERE entry_id = NEW.id;
    IF n < 2 THEN
        RAISE EXCEPTION 'journal entry % has % posting(s); at least 2 are needed', NEW.id, n
            USING ERRCODE = 'PRL02';
    END IF;
    SELECT asset INTO bad FROM postings WHERE entry_id = NEW.id
        GROUP BY asset HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal entry % does not balance in asset %', NEW.id, bad
            USING ERRCODE = 'PRL02';
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER journal_entries_balanced AFTER INSERT ON journal_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_entry();
