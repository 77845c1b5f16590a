-- Approvals: an action that needs a person's decision. Its action row
-- (status NEEDS_APPROVAL) holds the amount in every window it counts
-- against, exactly like an authorization's hold (held_value, charges), so
-- the budget invariant needs nothing new; this table says who decides and
-- by when.
CREATE TABLE approvals (
  approval_id      text PRIMARY KEY,
  action_id        text NOT NULL UNIQUE REFERENCES actions (action_id),
  session_id       text NOT NULL REFERENCES sessions (session_id),
  agent_id         text NOT NULL,
  -- 1 pending, 2 approved, 3 denied, 4 expired, 5 canceled (ApprovalStatus).
  status           smallint NOT NULL,
  currency         text NOT NULL,
  amount           bigint NOT NULL,
  approved_amount  bigint,
  -- 0/1 deny on timeout, 2 approve on timeout (ApprovalTimeoutOutcome).
  timeout_outcome  smallint NOT NULL,
  create_time      timestamptz NOT NULL,
  expire_time      timestamptz NOT NULL,
  decide_time      timestamptz,
  decided_by       text NOT NULL DEFAULT '',
  comment          text NOT NULL DEFAULT '',
  CHECK (amount >= 0 AND (approved_amount IS NULL OR (approved_amount > 0 AND approved_amount <= amount)))
);
-- The sweeper's scan: pending approvals only.
CREATE INDEX approvals_pending ON approvals (expire_time) WHERE status = 1;
CREATE INDEX approvals_by_session ON approvals (session_id, create_time);
CREATE INDEX approvals_by_agent ON approvals (agent_id, create_time);

-- The approval an action waited for, if any (also in approvals.action_id;
-- here so the action history shows it without a join).
ALTER TABLE actions ADD COLUMN approval_id text;
