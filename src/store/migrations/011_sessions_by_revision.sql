-- The change feed reads every agent's changes after a revision, on every
-- NOTIFY and every second, on every replica. sessions_by_revision leads
-- with agent_id, so that read walked the whole index: O(sessions ever
-- made) per read. This one makes it O(changes). Revisions move on
-- creation and on status, expiry and policy changes, never on a decision,
-- so it costs the hot path nothing.
CREATE INDEX sessions_revision ON sessions (revision);
