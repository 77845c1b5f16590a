-- A hold a sidecar placed (placed_by set) is never released by the store
-- on its own: the sidecar may have answered a capture of it and not
-- reported that yet (it crashed, or its report is on the way). Where the
-- store must close such a hold without its sidecar's word (past its expiry
-- and the grace, or when its session ends), it counts the held amount and
-- action as spent instead: written_off_value, set together with a closed
-- status (EXPIRED or VOIDED) and held_value 0. A later report from the
-- sidecar turns it into what became of the hold, and clears it.
--
-- NULL: not written off (a hold of no amount can be written off too, as
-- its action slot). No rewrite: the column has no default; and no scan
-- for the check (NOT VALID), as every existing row is NULL.
ALTER TABLE actions ADD COLUMN written_off_value bigint;
ALTER TABLE actions ADD CONSTRAINT actions_written_off_nonnegative CHECK (written_off_value >= 0) NOT VALID;
-- Usage reads a session's write-offs through this; few rows ever have one.
CREATE INDEX actions_written_off_by_session ON actions (session_id) WHERE written_off_value IS NOT NULL;
