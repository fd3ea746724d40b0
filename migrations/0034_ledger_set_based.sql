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

CREATE FUNCTION ledger_apply_postings() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad_entry   BIGINT;
    bad_account BIGINT;
    g           RECORD;
BEGIN
    -- After this transaction's entries were checked, no posting may slip in (SET CONSTRAINTS … IMMEDIATE
    -- would otherwise let one through unchecked).
    IF current_setting('payrail.entries_checked', true) = 'on' THEN
        SELECT entry_id INTO bad_entry FROM new_postings LIMIT 1;
        RAISE EXCEPTION 'journal entry % is closed: postings are added only with the entry', bad_entry
            USING ERRCODE = 'PRL01';
    END IF;
    -- Each posting's entry was created by this transaction: a committed entry is closed for good.
    SELECT n.entry_id INTO bad_entry FROM new_postings n
        WHERE n.entry_tx IS DISTINCT FROM pg_current_xact_id()
           OR NOT EXISTS (SELECT 1 FROM journal_entries j WHERE j.id = n.entry_id AND j.tx = pg_current_xact_id())
        LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal entry % is closed or unknown: postings are added only with the entry', bad_entry
            USING ERRCODE = 'PRL01';
    END IF;
    SELECT n.account_id INTO bad_account FROM new_postings n
        WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = n.account_id)
        LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'posting to unknown account id %', bad_account USING ERRCODE = 'PRL05';
    END IF;

    IF NOT EXISTS (
        SELECT 1 FROM new_postings n JOIN accounts a ON a.id = n.account_id
        WHERE a.non_negative
        GROUP BY n.account_id, n.asset, a.normal_side
        HAVING CASE WHEN a.normal_side = 'debit' THEN sum(n.amount) ELSE -sum(n.amount) END < 0
    ) THEN
        -- Nothing guarded goes down: one upsert, rows in (account, asset) order so that balance row
        -- locks are taken in one global order; a random row of each account, so that writers spread
        -- over its rows whatever connection they come from.
        INSERT INTO balances AS b (account_id, asset, shard, balance, non_negative)
        SELECT d.account_id, d.asset, floor(random() * d.balance_shards)::smallint, d.delta, d.non_negative
        FROM (
            SELECT n.account_id, n.asset, a.balance_shards, a.non_negative,
                   CASE WHEN a.normal_side = 'debit' THEN sum(n.amount) ELSE -sum(n.amount) END AS delta
            FROM new_postings n JOIN accounts a ON a.id = n.account_id
            GROUP BY n.account_id, n.asset, a.balance_shards, a.non_negative, a.normal_side
        ) d
        WHERE d.delta <> 0
        ORDER BY d.account_id, d.asset
        ON CONFLICT (account_id, asset, shard) DO UPDATE SET balance = b.balance + EXCLUDED.balance;
        RETURN NULL;
    END IF;

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
