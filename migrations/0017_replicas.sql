-- The replicas of the daemon that share the background jobs. Each running `payrail serve` keeps a
-- row here, written every few seconds (`heartbeat_at`), and holds the session advisory lock
-- `payrail.replica.<id>` while it lives: a replica whose process or connection died is seen at
-- once by its lock vanishing from `pg_locks`, one that hangs by its heartbeat going stale.
-- Per class of job (chain watchers, sweepers, the dispatcher and the executor) `replica_shares`
-- says how many lock-guarded jobs the replica runs and how many of their locks it holds, so the
-- others see whether it is short of its fair share. Rows are advisory only: the job locks
-- themselves stay the one source of truth for who runs a job.

CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX replicas_heartbeat_at ON replicas (heartbeat_at);

CREATE TABLE replica_shares (
    replica_id TEXT NOT NULL REFERENCES replicas (id) ON DELETE CASCADE,
    class      TEXT NOT NULL,
    jobs       INTEGER NOT NULL CHECK (jobs >= 0),
    locks_held INTEGER NOT NULL CHECK (locks_held >= 0),
    PRIMARY KEY (replica_id, class)
);
