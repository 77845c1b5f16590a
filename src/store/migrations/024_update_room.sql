-- Rows rewritten on every decision or lease report keep room on their page
-- for their next version, so that an update can be HOT (heap-only: the new
-- version on the same page, no new entry in any of the table's indexes).
-- A full page sends the new version elsewhere, and every index of the
-- table gets an entry for it: eight for sessions. Applies to pages filled
-- from now on; existing ones keep what they hold.
ALTER TABLE sessions SET (fillfactor = 50);
ALTER TABLE scope_usage SET (fillfactor = 50);
ALTER TABLE audit_chains SET (fillfactor = 50);
ALTER TABLE agents SET (fillfactor = 50);
ALTER TABLE leases SET (fillfactor = 70);
