-- Usage moves from one row per (scope, window kind, window start) to one row
-- per scope holding the current window of each kind. A decision touches 4
-- counter rows per scope in the old layout (read, then upsert) and 1 in this
-- one: most of the row work of a Check. A charge still belongs to the window
-- it was authorized in (actions.charges records its start); once a window of
-- a kind rolls over, the old one limits nothing, so it is not kept: settling
-- a hold of a past window changes only the windows whose start it names
-- (always lifetime, whose start is fixed). See usage-counters.ts.
CREATE TABLE scope_usage (
  scope_key                  text PRIMARY KEY,
  -- NULL: no window of that kind has been used yet.
  day_start                  timestamptz,
  day_committed_value        bigint NOT NULL DEFAULT 0,
  day_held_value             bigint NOT NULL DEFAULT 0,
  day_committed_actions      bigint NOT NULL DEFAULT 0,
  day_held_actions           bigint NOT NULL DEFAULT 0,
  week_start                 timestamptz,
  week_committed_value       bigint NOT NULL DEFAULT 0,
  week_held_value            bigint NOT NULL DEFAULT 0,
  week_committed_actions     bigint NOT NULL DEFAULT 0,
  week_held_actions          bigint NOT NULL DEFAULT 0,
  month_start                timestamptz,
  month_committed_value      bigint NOT NULL DEFAULT 0,
  month_held_value           bigint NOT NULL DEFAULT 0,
  month_committed_actions    bigint NOT NULL DEFAULT 0,
  month_held_actions         bigint NOT NULL DEFAULT 0,
  lifetime_committed_value   bigint NOT NULL DEFAULT 0,
  lifetime_held_value        bigint NOT NULL DEFAULT 0,
  lifetime_committed_actions bigint NOT NULL DEFAULT 0,
  lifetime_held_actions      bigint NOT NULL DEFAULT 0,
  CHECK (day_committed_value >= 0 AND day_held_value >= 0 AND day_committed_actions >= 0 AND day_held_actions >= 0),
  CHECK (week_committed_value >= 0 AND week_held_value >= 0 AND week_committed_actions >= 0 AND week_held_actions >= 0),
  CHECK (month_committed_value >= 0 AND month_held_value >= 0 AND month_committed_actions >= 0 AND month_held_actions >= 0),
  CHECK (lifetime_committed_value >= 0 AND lifetime_held_value >= 0 AND lifetime_committed_actions >= 0 AND lifetime_held_actions >= 0)
);

-- Carry over the newest window of each kind of every scope.
INSERT INTO scope_usage
SELECT k.scope_key,
       d.window_start, coalesce(d.committed_value, 0), coalesce(d.held_value, 0), coalesce(d.committed_actions, 0), coalesce(d.held_actions, 0),
       w.window_start, coalesce(w.committed_value, 0), coalesce(w.held_value, 0), coalesce(w.committed_actions, 0), coalesce(w.held_actions, 0),
       m.window_start, coalesce(m.committed_value, 0), coalesce(m.held_value, 0), coalesce(m.committed_actions, 0), coalesce(m.held_actions, 0),
       coalesce(l.committed_value, 0), coalesce(l.held_value, 0), coalesce(l.committed_actions, 0), coalesce(l.held_actions, 0)
  FROM (SELECT DISTINCT scope_key FROM usage_counters) k
  LEFT JOIN LATERAL (SELECT * FROM usage_counters c WHERE c.scope_key = k.scope_key AND c.window_kind = 'day' ORDER BY c.window_start DESC LIMIT 1) d ON true
  LEFT JOIN LATERAL (SELECT * FROM usage_counters c WHERE c.scope_key = k.scope_key AND c.window_kind = 'week' ORDER BY c.window_start DESC LIMIT 1) w ON true
  LEFT JOIN LATERAL (SELECT * FROM usage_counters c WHERE c.scope_key = k.scope_key AND c.window_kind = 'month' ORDER BY c.window_start DESC LIMIT 1) m ON true
  LEFT JOIN LATERAL (SELECT * FROM usage_counters c WHERE c.scope_key = k.scope_key AND c.window_kind = 'lifetime' ORDER BY c.window_start DESC LIMIT 1) l ON true;

DROP TABLE usage_counters;
