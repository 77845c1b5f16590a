-- A hold a sidecar placed from its lease may be captured or voided through
-- the control plane (the call reached another sidecar). The sidecar that
-- placed it still holds it in memory and would settle it again, answering
-- a second capture as if it were the first. placed_by names the sidecar (the
-- report's holder) that placed a hold it reported; a settlement of such a hold by
-- the store takes a revision (settle_revision), and the watch stream sends
-- it to that agent's sidecars with the sessions that changed.
ALTER TABLE actions ADD COLUMN placed_by text;
ALTER TABLE actions ADD COLUMN settle_revision bigint;
-- Few rows ever have one: the change feed reads a range of this index.
CREATE INDEX actions_settled_by_revision ON actions (settle_revision) WHERE settle_revision IS NOT NULL;
