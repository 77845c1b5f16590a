-- The transaction that wrote each audit record, so that a reader paging the
-- log by seq lists a record whose transaction took its seq before another's
-- and committed after the reader passed it (audit-cursor.ts). Seqs stay
-- taken at insert: a lock held to commit would serialize every decision
-- batch across replicas.
--
-- Records written before this migration keep NULL: they committed long ago,
-- and no reader waits for them. No rewrite: the default applies to new rows.
ALTER TABLE audit_records ADD COLUMN xid xid8;
ALTER TABLE audit_records ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
