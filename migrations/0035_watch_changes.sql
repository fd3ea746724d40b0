-- Watchers keep the deposit addresses they watch in memory and read only what was added since
-- their last read. A sequence cannot say that (a row with a lower number may commit later), so a
-- row records the transaction that wrote it: a watcher re-reads rows written by transactions at or
-- above the oldest one still running at its previous read (`pg_snapshot_xmin`), which includes every
-- row that read could not see.
ALTER TABLE deposit_addresses ADD COLUMN written_tx xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX deposit_addresses_chain_written_idx ON deposit_addresses (chain, written_tx);
