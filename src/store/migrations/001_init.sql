-- Warden's schema. One dialect for PostgreSQL and PGlite.
-- Money is bigint micros everywhere; never numeric-as-float, never real.

CREATE TABLE agents (
  agent_id        text PRIMARY KEY,
  -- SessionPolicy in protobuf binary; NULL: no agent-wide limits.
  policy          bytea,
  create_time     timestamptz NOT NULL,
  update_time     timestamptz NOT NULL,
  revision        bigint NOT NULL DEFAULT 1
);

CREATE TABLE sessions (
  session_id        text PRIMARY KEY,
  agent_id          text NOT NULL REFERENCES agents (agent_id),
  parent_session_id text REFERENCES sessions (session_id),
  -- Parents of a fork, nearest first: fixed at creation, so lock order can
  -- be known before any lock is taken.
  ancestor_ids      text[] NOT NULL DEFAULT '{}',
  owner             text NOT NULL DEFAULT '',
  description       text NOT NULL DEFAULT '',
  labels            jsonb NOT NULL DEFAULT '{}',
  policy            bytea NOT NULL,
  status            smallint NOT NULL,
  status_reason     text NOT NULL DEFAULT '',
  create_time       timestamptz NOT NULL,
  update_time       timestamptz NOT NULL,
  expire_time       timestamptz NOT NULL,
  idle_timeout_ms   bigint,
  last_activity_time timestamptz NOT NULL,
  end_time          timestamptz,
  request_count     bigint NOT NULL DEFAULT 0,
  error_count       bigint NOT NULL DEFAULT 0,
  denial_count      bigint NOT NULL DEFAULT 0,
  processing_ns     bigint NOT NULL DEFAULT 0,
  -- Bumped on every change a cache must see (status, expiry, policy).
  revision          bigint NOT NULL DEFAULT 1
);
CREATE INDEX sessions_by_agent ON sessions (agent_id, create_time DESC, session_id DESC);
CREATE INDEX sessions_by_time ON sessions (create_time DESC, session_id DESC);
-- The sweeper's scan: only sessions that can still lapse.
CREATE INDEX sessions_live ON sessions (expire_time) WHERE status IN (1, 2);

-- Committed and held usage of one window of one scope ("s:<session>" or
-- "a:<agent>"). Lifetime uses window_start = epoch.
CREATE TABLE usage_counters (
  scope_key         text NOT NULL,
  window_kind       text NOT NULL,
  window_start      timestamptz NOT NULL,
  committed_value   bigint NOT NULL DEFAULT 0,
  held_value        bigint NOT NULL DEFAULT 0,
  committed_actions bigint NOT NULL DEFAULT 0,
  held_actions      bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (scope_key, window_kind, window_start),
  CHECK (committed_value >= 0 AND held_value >= 0 AND committed_actions >= 0 AND held_actions >= 0)
);

-- Every decision, and what became of its money.
CREATE TABLE actions (
  action_id        text PRIMARY KEY,
  seq              bigint GENERATED ALWAYS AS IDENTITY,
  session_id       text NOT NULL REFERENCES sessions (session_id),
  agent_id         text NOT NULL,
  method           text NOT NULL,
  -- warden.v1.Action and warden.v1.Decision in protobuf binary.
  action           bytea NOT NULL,
  decision         bytea NOT NULL,
  outcome          smallint NOT NULL,
  status           smallint NOT NULL,
  currency         text NOT NULL,
  amount           bigint NOT NULL,
  held_value       bigint NOT NULL DEFAULT 0,
  captured_value   bigint NOT NULL DEFAULT 0,
  -- The counters the action charged: [[scope_key, window_kind, start_ms], …]
  charges          jsonb NOT NULL DEFAULT '[]',
  create_time      timestamptz NOT NULL,
  update_time      timestamptz NOT NULL,
  hold_expire_time timestamptz
);
CREATE INDEX actions_by_session ON actions (session_id, seq DESC);
-- The sweeper's scan: open holds only.
CREATE INDEX actions_open_holds ON actions (hold_expire_time) WHERE status = 1;

-- First answers of idempotent calls, per scope (a session, or an agent for
-- CreateSession).
CREATE TABLE idempotency_keys (
  scope          text NOT NULL,
  key            text NOT NULL,
  method         text NOT NULL,
  request_hash   bytea NOT NULL,
  response       bytea NOT NULL,
  create_time    timestamptz NOT NULL,
  PRIMARY KEY (scope, key)
);
