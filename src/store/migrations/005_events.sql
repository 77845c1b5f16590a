-- Session lifecycle events and their webhook deliveries (an outbox). An
-- event is written in the same transaction as the change it describes, so
-- no change is ever committed without its event, nor an event without its
-- change. Its deliveries are written in that transaction too: a dispatcher
-- on any replica then only has to claim due rows, never to fan out.
CREATE TABLE events (
  event_id     text PRIMARY KEY,
  -- The order events were recorded in (an id's time prefix is only rough).
  seq          bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
  type         text NOT NULL,
  session_id   text NOT NULL,
  agent_id     text NOT NULL,
  create_time  timestamptz NOT NULL,
  data         jsonb NOT NULL
);
CREATE INDEX events_by_session ON events (session_id, seq);

CREATE TABLE webhook_endpoints (
  endpoint_id           text PRIMARY KEY,
  url                   text NOT NULL,
  event_types           text[] NOT NULL,
  -- Kept in the clear because every delivery is signed with it (HMAC needs
  -- the key itself, a hash of it would not do). It is shown once, on
  -- create, and never logged; protect the database as you protect it.
  secret                text NOT NULL,
  -- 1 active, 2 disabled.
  status                smallint NOT NULL DEFAULT 1,
  disabled_reason       text NOT NULL DEFAULT '',
  consecutive_failures  integer NOT NULL DEFAULT 0,
  create_time           timestamptz NOT NULL,
  update_time           timestamptz NOT NULL
);

CREATE TABLE webhook_deliveries (
  endpoint_id        text NOT NULL REFERENCES webhook_endpoints (endpoint_id) ON DELETE CASCADE,
  event_id           text NOT NULL REFERENCES events (event_id),
  attempts           integer NOT NULL DEFAULT 0,
  next_attempt_time  timestamptz NOT NULL,
  -- 1 pending, 2 delivered, 3 abandoned.
  status             smallint NOT NULL DEFAULT 1,
  last_error         text NOT NULL DEFAULT '',
  update_time        timestamptz NOT NULL,
  PRIMARY KEY (endpoint_id, event_id)
);
-- The dispatcher's scan: pending deliveries only.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_time) WHERE status = 1;
