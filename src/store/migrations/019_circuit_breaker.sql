-- The circuit breaker (policy.proto, CircuitBreaker): a session is paused
-- after a run of denials. The run is counted here, under the session's row
-- lock, by every writer of decisions (the batcher, and sidecars' reports);
-- any other outcome, and a resume, set it back to zero. Failed requests
-- already count in error_count.
ALTER TABLE sessions ADD COLUMN denial_run integer NOT NULL DEFAULT 0;
-- When the run last started over by a person's hand (a pause or a resume):
-- a sidecar's decisions made before it, reported after it, do not count.
ALTER TABLE sessions ADD COLUMN denial_run_since timestamptz;
