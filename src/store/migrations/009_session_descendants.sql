-- Ending a session ends its forks, found by `ancestor_ids @> ARRAY[id]`.
-- Without an index that was a sequential scan of every session ever made,
-- once per end, revocation and expiry: ~8 ms at 100,000 sessions and
-- growing with the table. Partial, so root sessions (almost all of them)
-- cost the index nothing; the lookup repeats the predicate to use it.
CREATE INDEX sessions_by_ancestor ON sessions USING gin (ancestor_ids) WHERE ancestor_ids <> '{}';
