-- The ledger is the hottest table: every decision, from the store or from a
-- sidecar's report, appends a row. Its foreign key to sessions ran a
-- referential-integrity check per row (a lookup of the session row and a
-- KEY SHARE lock on it), ~37 µs of PostgreSQL's time per row measured on a
-- 300-row report batch, 60% of the insert. Every writer of actions has
-- already locked the session row it writes for (FOR UPDATE, in the same
-- transaction: scope-locks.ts, lease-ledger.ts lockChains), and sessions
-- are never deleted, so the check could never fail. The tests' ledger
-- check (test/helpers/ledger.ts) asserts the same thing after every suite.
ALTER TABLE actions DROP CONSTRAINT actions_session_id_fkey;
