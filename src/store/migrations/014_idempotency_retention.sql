-- Idempotency keys of an ended session are kept --idempotency-retention
-- after it ended (a retry then still gets its first answer; later it gets
-- "session has ended", never a second charge), then the sweeper removes
-- them: otherwise a key stored with every keyed call, answer included,
-- stays forever. keys_pruned marks a session whose keys are gone, so the
-- sweeper's index holds only ended sessions whose keys are still there,
-- and a sweep never reads the same session twice.
ALTER TABLE sessions ADD COLUMN keys_pruned boolean NOT NULL DEFAULT false;
CREATE INDEX sessions_keys_due ON sessions (end_time) WHERE end_time IS NOT NULL AND NOT keys_pruned;
