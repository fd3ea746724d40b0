-- The replicas of the daemon that share the background jobs. Each running `payrail serve` keeps a
-- row here, written every few seconds (`heartbeat_at`), and holds the session advisory lock
-- `payrail.replica.<id>` while it lives: a replica whose process or connection died is seen at
-- once by its lock vanishing from `pg_locks`, one that hangs by its heartbeat going stale.
-- `jobs` (how many lock-guarded jobs the replica runs) and `locks_held` (how many of their locks it
-- holds) let the others see whether it is short of its fair share. Rows are advisory only: the
-- job locks themselves stay the one source of truth for who runs a job.

CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    jobs         INTEGER NOT NULL DEFAULT 0 CHECK (jobs >= 0),
    locks_held   INTEGER NOT NULL DEFAULT 0 CHECK (locks_held >= 0)
);

CREATE INDEX replicas_heartbeat_at ON replicas (heartbeat_at);
