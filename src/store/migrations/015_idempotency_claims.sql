-- A sidecar claims an idempotency key before it decides a call from its
-- lease, so a retry that reaches another sidecar before the decision's
-- record does is told the call is in progress, not decided a second time.
-- A claim is a key row without a response: action_id names the decision
-- whose record will answer it, claim_expire_time when it lapses if that
-- record never comes (its sidecar died: the lease's unreported rest was
-- written off by then). A row with a response keeps the action that first
-- answered it in action_id.
ALTER TABLE idempotency_keys ALTER COLUMN response DROP NOT NULL;
ALTER TABLE idempotency_keys ADD COLUMN action_id text;
ALTER TABLE idempotency_keys ADD COLUMN claim_expire_time timestamptz;
