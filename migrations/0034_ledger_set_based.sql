-- Postings move balance rows once per statement, not once per posting.
--
-- Before: a plpgsql trigger ran for every posting (look the account up, upsert one balance row), and
-- two foreign keys checked every posting row by row, taking a KEY SHARE lock on its account row —
-- the same row for every writer of a busy account. Now one statement-level trigger sees all postings
-- a statement inserted (a transition table) and does the same work with a few set-based statements:
--   * a posting belongs to an entry created by the same transaction (was: a composite foreign key on
--     the entry's transaction id), and is never added after the entries were checked;
--   * a posting names an existing account (was: a foreign key; accounts are append-only, so an
--     account that exists when the posting is written exists for good and needs no lock);
--   * balances move by the sum per (account, asset) of the statement's postings: one upsert for all
--     of them when no guarded account is drawn down, otherwise one group at a time in (account,
--     asset) order, drawing a guarded account down row by row as before.
-- Invariants are unchanged; only the errors for the two replaced keys now carry codes PRL01
-- (posting outside its entry's transaction) and PRL05 (unknown account).

DROP TRIGGER postings_apply ON postings;
DROP FUNCTION ledger_apply_posting();

ALTER TABLE postings DROP CONSTRAINT postings_entry_id_entry_tx_fkey;
ALTER TABLE postings DROP CONSTRAINT postings_account_id_fkey;
ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_id_tx_key;
ALTER TABLE postings ALTER COLUMN entry_tx SET DEFAULT pg_current_xact_id();
-- Only reversals carry a reversed entry: the unique index keeps only them (same name, so a second
-- reversal is still refused by `journal_entries_reverses_entry_id_key`).
ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_reverses_entry_id_key;
CREATE UNIQUE INDEX journal_entries_reverses_entry_id_key ON journal_entries (reverses_entry_id)
    WHERE reverses_entry_id IS NOT NULL;

-- A guarded account drawn down by `delta` (< 0): lock all its rows in shard order, check the total,
-- then take the amount out row by row so that every row stays non-negative. (An upsert cannot serve
-- here: the CHECK would judge the negative delta as if it were the new row.)
CREATE FUNCTION ledger_draw_down(account BIGINT, code TEXT, asset_id TEXT, delta NUMERIC) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    remaining    NUMERIC;
    total        NUMERIC;
    shard_list   SMALLINT[];
    balance_list NUMERIC[];
BEGIN
    SELECT array_agg(shard ORDER BY shard), array_agg(balance ORDER BY shard), sum(balance)
        INTO shard_list, balance_list, total
        FROM (
            SELECT shard, balance FROM balances
            WHERE account_id = account AND asset = asset_id
            ORDER BY shard FOR UPDATE
        ) locked;
    IF total IS NULL OR total + delta < 0 THEN
        RAISE EXCEPTION 'account % would go negative in asset %', code, asset_id USING ERRCODE = 'PRL04';
    END IF;
    -- Only the rows locked above are touched: a row another writer added since is left alone.
    remaining := -delta;
    FOR i IN 1 .. array_length(shard_list, 1) LOOP
        EXIT WHEN remaining = 0;
        CONTINUE WHEN balance_list[i] <= 0;
        UPDATE balances SET balance = balance - least(balance_list[i], remaining)
            WHERE account_id = account AND asset = asset_id AND shard = shard_list[i];
        remaining := remaining - least(balance_list[i], remaining);
    END LOOP;
END
$$;

-- One statement does the checks and, in the common case, the balance upsert: the statement's
-- postings summed per (account, asset) once (`d`), what is wrong with them (`f`), and the upsert
-- (`up`), which writes nothing when anything is wrong or a guarded account is drawn down. Then the
-- errors are raised (rolling the upsert back with the statement), or the draw-down path runs.
CREATE FUNCTION ledger_apply_postings() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad_entry   BIGINT;
    bad_account BIGINT;
    draws       BOOLEAN;
    g           RECORD;
BEGIN
    WITH d AS (
        SELECT n.account_id, n.asset, a.id IS NULL AS unknown, a.balance_shards, a.non_negative,
               CASE WHEN a.normal_side = 'debit' THEN sum(n.amount) ELSE -sum(n.amount) END AS delta
        FROM new_postings n LEFT JOIN accounts a ON a.id = n.account_id
        GROUP BY n.account_id, n.asset, a.id, a.balance_shards, a.non_negative, a.normal_side
    ), f AS (
        SELECT min(account_id) FILTER (WHERE unknown) AS unknown_account,
               coalesce(bool_or(non_negative AND delta < 0), false) AS draws,
               -- Each posting's entry was created by this transaction (a committed entry is closed
               -- for good), and this transaction's entries have not been checked yet (SET
               -- CONSTRAINTS … IMMEDIATE would otherwise let a posting through unchecked).
               (SELECT n.entry_id FROM new_postings n
                 WHERE n.entry_tx IS DISTINCT FROM pg_current_xact_id()
                    OR current_setting('payrail.entries_checked', true) = 'on'
                    OR NOT EXISTS (SELECT 1 FROM journal_entries j WHERE j.id = n.entry_id AND j.tx = pg_current_xact_id())
                 LIMIT 1) AS bad_entry
        FROM d
    ), up AS (
        -- Rows in (account, asset) order, so balance row locks are taken in one global order; a
        -- random row of each account, so writers spread over its rows whatever connection they
        -- come from.
        INSERT INTO balances AS b (account_id, asset, shard, balance, non_negative)
        SELECT d.account_id, d.asset, floor(random() * d.balance_shards)::smallint, d.delta, d.non_negative
        FROM d, f
        WHERE NOT f.draws AND f.unknown_account IS NULL AND f.bad_entry IS NULL AND d.delta <> 0
        ORDER BY d.account_id, d.asset
        ON CONFLICT (account_id, asset, shard) DO UPDATE SET balance = b.balance + EXCLUDED.balance
    )
    SELECT f.bad_entry, f.unknown_account, f.draws INTO bad_entry, bad_account, draws FROM f;
    IF bad_entry IS NOT NULL THEN
        RAISE EXCEPTION 'journal entry % is closed or unknown: postings are added only with the entry', bad_entry
            USING ERRCODE = 'PRL01';
    END IF;
    IF bad_account IS NOT NULL THEN
        RAISE EXCEPTION 'posting to unknown account id %', bad_account USING ERRCODE = 'PRL05';
    END IF;
    IF NOT draws THEN
        RETURN NULL;
    END IF;

    -- A guarded account is drawn down: every group in (account, asset) order, the draw-downs
    -- locking all of their account's rows.
    FOR g IN
        SELECT n.account_id, n.asset, a.code, a.balance_shards, a.non_negative,
               CASE WHEN a.normal_side = 'debit' THEN sum(n.amount) ELSE -sum(n.amount) END AS delta
        FROM new_postings n JOIN accounts a ON a.id = n.account_id
        GROUP BY n.account_id, n.asset, a.code, a.balance_shards, a.non_negative, a.normal_side
        ORDER BY n.account_id, n.asset
    LOOP
        IF g.delta = 0 THEN
            CONTINUE;
        ELSIF g.non_negative AND g.delta < 0 THEN
            PERFORM ledger_draw_down(g.account_id, g.code, g.asset, g.delta);
        ELSE
            INSERT INTO balances AS b (account_id, asset, shard, balance, non_negative)
                VALUES (g.account_id, g.asset, floor(random() * g.balance_shards)::smallint, g.delta, g.non_negative)
                ON CONFLICT (account_id, asset, shard) DO UPDATE SET balance = b.balance + EXCLUDED.balance;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
CREATE TRIGGER postings_apply AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_apply_postings();

-- One query instead of two: how many postings, and the first asset that does not sum to zero.
CREATE OR REPLACE FUNCTION ledger_check_entry() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad TEXT;
    n   BIGINT;
BEGIN
    PERFORM set_config('payrail.entries_checked', 'on', true);
    SELECT coalesce(sum(c), 0), min(asset) FILTER (WHERE s <> 0) INTO n, bad
        FROM (SELECT asset, count(*) AS c, sum(amount) AS s FROM postings WHERE entry_id = NEW.id GROUP BY asset) per_asset;
    IF n < 2 THEN
        RAISE EXCEPTION 'journal entry % has % posting(s); at least 2 are needed', NEW.id, n
            USING ERRCODE = 'PRL02';
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'journal entry % does not balance in asset %', NEW.id, bad
            USING ERRCODE = 'PRL02';
    END IF;
    RETURN NULL;
END
$$;
