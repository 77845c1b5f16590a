-- GetSession, ListSessions and every session a change returns add up what
-- the session's leases hold and wrote off. Only active (1) and reconciled
-- (3) leases can hold or have written off anything: releasing one returns
-- its hold and writes nothing off, and the CHECK below keeps it so. The
-- old index covered active leases only, so that sum read every lease ever
-- granted: ~90 ms per GetSession and per revocation at 1,000,000 leases.
ALTER TABLE leases ADD CONSTRAINT leases_released_hold_nothing
  CHECK (status <> 2 OR (held_value = 0 AND held_actions = 0 AND written_off_value = 0 AND written_off_actions = 0));
DROP INDEX leases_by_session;
CREATE INDEX leases_by_session ON leases (session_id) WHERE status IN (1, 3);
