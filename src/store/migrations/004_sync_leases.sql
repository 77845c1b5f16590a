-- Sidecar mode: revisions that sidecars can resume from, and budget leases.

-- One revision counter for every change a sidecar's cache must see (session
-- status, expiry, policy; agent policy). Readers resume with "revision > n",
-- which is only sound if revisions become visible in the order they are
-- taken; a sequence alone does not promise that (a transaction that took 11
-- may commit after one that took 12, and a reader at 12 would never see 11).
-- So taking a revision also takes a transaction-scoped advisory lock, held
-- to commit: the next taker waits until this one is visible. Every caller
-- takes its row locks first and a revision last, so the lock never closes a
-- cycle. The NOTIFY wakes the change feed of every control-plane replica
-- when the transaction commits (PostgreSQL folds repeats into one).
CREATE SEQUENCE sync_revision;

-- (One line: migrate.ts splits statements at line-final semicolons.)
CREATE FUNCTION warden_next_revision() RETURNS bigint LANGUAGE sql VOLATILE AS $$ SELECT pg_advisory_xact_lock(7734001); SELECT pg_notify('warden_sync', ''); SELECT nextval('sync_revision') $$;

UPDATE agents SET revision = nextval('sync_revision');
UPDATE sessions SET revision = nextval('sync_revision');
-- A new row takes a plain revision, without the lock: a reader that misses
-- a creation loses nothing (it fetches a session it does not hold), and an
-- INSERT evaluates its defaults before its other locks, which would put the
-- advisory lock first. Updates that a cache must see use
-- warden_next_revision().
ALTER TABLE agents ALTER COLUMN revision SET DEFAULT nextval('sync_revision');
ALTER TABLE sessions ALTER COLUMN revision SET DEFAULT nextval('sync_revision');
CREATE INDEX sessions_by_revision ON sessions (agent_id, revision);
CREATE INDEX agents_by_revision ON agents (revision);

-- A slice of a session's budget granted to one sidecar (design.md §4). The
-- unspent part (held_value, held_actions) sits in the held counters of every
-- window it charged, exactly like a hold, so committed + held + leased <=
-- limit is the same check as before. Decisions the sidecar makes from it
-- arrive as ledger records that move their amount out of it; a release gives
-- the rest back. A lease that is neither released nor renewed by its expiry
-- (a crashed or cut-off sidecar) is reconciled: its unreported rest is
-- written off as spent, because the sidecar may have allowed it without
-- telling anyone; a record that arrives later takes its amount out of the
-- write-off rather than charging twice.
CREATE TABLE leases (
  lease_id              text PRIMARY KEY,
  session_id            text NOT NULL REFERENCES sessions (session_id),
  holder                text NOT NULL,
  -- 1 active, 2 released, 3 reconciled.
  status                smallint NOT NULL,
  -- NULL: that dimension is unlimited everywhere, nothing is reserved.
  granted_value         bigint,
  granted_actions       bigint,
  held_value            bigint NOT NULL DEFAULT 0,
  held_actions          bigint NOT NULL DEFAULT 0,
  -- Spent by records reported against it.
  used_value            bigint NOT NULL DEFAULT 0,
  used_actions          bigint NOT NULL DEFAULT 0,
  written_off_value     bigint NOT NULL DEFAULT 0,
  written_off_actions   bigint NOT NULL DEFAULT 0,
  -- The counters it reserved in: [[scope_key, window_kind, start_ms], …]
  charges               jsonb NOT NULL,
  create_time           timestamptz NOT NULL,
  update_time           timestamptz NOT NULL,
  expire_time           timestamptz NOT NULL,
  CHECK (held_value >= 0 AND held_actions >= 0 AND written_off_value >= 0 AND written_off_actions >= 0)
);
CREATE INDEX leases_by_session ON leases (session_id) WHERE status = 1;
-- The sweeper's scan: active leases only.
CREATE INDEX leases_active ON leases (expire_time) WHERE status = 1;
