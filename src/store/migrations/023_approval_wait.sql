-- A session whose agent waits on a person's approval does not idle until
-- the approval's deadline: the latest deadline of an approval it asked
-- for. The idle deadline is GREATEST(last_activity_time,
-- approval_wait_until) + idle timeout (GREATEST skips a NULL). Set only
-- when an approval is created, which also moves the session's revision so
-- sidecars hear of it; idle_check_time stays a lower bound (010).
ALTER TABLE sessions ADD COLUMN approval_wait_until timestamptz;
