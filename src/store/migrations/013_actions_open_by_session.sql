-- Ending a session (end, revoke, expiry, exhaustion, a parent's end)
-- releases its open holds, found by session and OPEN_HOLDS_SQL
-- (hold-ledger.ts). actions_by_session made that a walk of every action
-- the session ever took: ~160 ms for a session with 300,000 actions,
-- under the session's lock. Holds are few and short-lived, so this index
-- is small, and checks (never holds) do not enter it. The predicate is
-- OPEN_HOLDS_SQL's, word for word, so the planner can use it.
CREATE INDEX actions_open_by_session ON actions (session_id) WHERE (status = 1 OR (status = 6 AND held_value > 0));
