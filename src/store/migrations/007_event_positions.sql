-- Events get a position that readers can resume from (WatchEvents), and
-- session.limit_reached is told once per window.
--
-- events.seq comes from an identity column: a transaction that took seq 11
-- may commit after one that took 12, so a reader resuming with
-- "seq > 12" would never see 11. A position is taken like a sync revision
-- (004_sync_leases.sql): under the same transaction-scoped advisory lock,
-- held to commit, so positions become visible in the order they are taken.
-- It is the same lock as the revisions', not a second one: two locks taken
-- in different orders by different writers could close a cycle, one lock
-- cannot. Callers take their row locks first and a position last, as for
-- revisions. The NOTIFY wakes every replica's event watchers on commit.
CREATE SEQUENCE event_position;

-- (One line: migrate.ts splits statements at line-final semicolons.)
CREATE FUNCTION warden_next_event_position() RETURNS bigint LANGUAGE sql VOLATILE AS $$ SELECT pg_advisory_xact_lock(7734001); SELECT pg_notify('warden_events', ''); SELECT nextval('event_position') $$;

ALTER TABLE events ADD COLUMN position bigint;
-- Events recorded before this migration keep their recorded order.
UPDATE events SET position = r.n FROM (SELECT event_id, row_number() OVER (ORDER BY seq) AS n FROM events) r WHERE events.event_id = r.event_id;
SELECT setval('event_position', (SELECT coalesce(max(position), 0) + 1 FROM events), false);
ALTER TABLE events ALTER COLUMN position SET NOT NULL;
CREATE UNIQUE INDEX events_by_position ON events (position);
CREATE INDEX events_by_agent ON events (agent_id, position);

-- Which window limits have been announced with session.limit_reached: one
-- event per session, scope, window and window start, however many
-- decisions that limit then denies.
CREATE TABLE limit_notices (
  session_id    text NOT NULL,
  notice_key    text NOT NULL,
  create_time   timestamptz NOT NULL,
  PRIMARY KEY (session_id, notice_key)
);
