import assert from "node:assert/strict";
import type { Queryable } from "../../src/store/database.js";

/**
 * Recomputes every stored counter from the ledger and compares: the books
 * balance. `scope_usage` keeps the current window of each kind per scope
 * (lifetime always): each stored window must equal what the ledger charged
 * to it, and whatever the ledger charged to a window not stored must be to
 * an older window of that kind that has rolled over, never to a newer or an
 * unknown one. Budget leases count like holds (their unspent rest) and, once
 * reconciled, like captures (their written-off rest); a sidecar's hold
 * written off counts like a capture of its whole amount.
 */
export async function assertLedgerConsistent(db: Queryable): Promise<void> {
  const { rows } = await db.query<{ n: string }>(`
    WITH stored AS (
      SELECT scope_key, 'day' AS window_kind, day_start AS window_start, day_committed_value AS cv,
             day_held_value AS hv, day_committed_actions AS ca, day_held_actions AS ha FROM scope_usage
      UNION ALL
      SELECT scope_key, 'week', week_start, week_committed_value, week_held_value, week_committed_actions, week_held_actions FROM scope_usage
      UNION ALL
      SELECT scope_key, 'month', month_start, month_committed_value, month_held_value, month_committed_actions, month_held_actions FROM scope_usage
      UNION ALL
      SELECT scope_key, 'lifetime', to_timestamp(0), lifetime_committed_value, lifetime_held_value, lifetime_committed_actions,
             lifetime_held_actions FROM scope_usage),
    charged AS (
      SELECT c->>0 AS scope_key, c->>1 AS window_kind, to_timestamp((c->>2)::bigint / 1000.0) AS window_start,
             CASE WHEN a.status = 2 THEN a.captured_value ELSE coalesce(a.written_off_value, 0) END AS cv,
             CASE WHEN a.status = 1 OR (a.status = 6 AND a.held_value > 0) THEN a.held_value ELSE 0 END AS hv,
             CASE WHEN a.status = 2 OR a.written_off_value IS NOT NULL THEN 1 ELSE 0 END AS ca,
             CASE WHEN a.status = 1 OR (a.status = 6 AND a.held_value > 0) THEN 1 ELSE 0 END AS ha
        FROM actions a, jsonb_array_elements(a.charges) c
      UNION ALL
      -- A lease reserves its unspent rest (held) and, once reconciled,
      -- counts its unreported rest as spent (written off).
      SELECT c->>0, c->>1, to_timestamp((c->>2)::bigint / 1000.0),
             l.written_off_value, l.held_value, l.written_off_actions, l.held_actions
        FROM leases l, jsonb_array_elements(l.charges) c),
    expected AS (
      SELECT scope_key, window_kind, window_start, sum(cv) AS cv, sum(hv) AS hv, sum(ca) AS ca, sum(ha) AS ha
        FROM charged GROUP BY 1, 2, 3)
    SELECT count(*) AS n FROM stored u FULL JOIN expected e
      ON e.scope_key = u.scope_key AND e.window_kind = u.window_kind AND e.window_start = u.window_start
     WHERE CASE
       WHEN u.scope_key IS NULL THEN
         (coalesce(e.cv, 0) <> 0 OR coalesce(e.hv, 0) <> 0 OR e.ca <> 0 OR e.ha <> 0)
         AND NOT EXISTS (SELECT 1 FROM stored s WHERE s.scope_key = e.scope_key AND s.window_kind = e.window_kind
                                                  AND s.window_start > e.window_start)
       ELSE coalesce(u.cv, 0) <> coalesce(e.cv, 0) OR coalesce(u.hv, 0) <> coalesce(e.hv, 0)
         OR coalesce(u.ca, 0) <> coalesce(e.ca, 0) OR coalesce(u.ha, 0) <> coalesce(e.ha, 0)
     END`);
  assert.equal(rows[0]!.n, "0", "usage counters disagree with the action ledger");
  // What the foreign key used to enforce (migration 016): no action of a
  // session the store does not have.
  const orphans = await db.query<{ n: string }>(
    "SELECT count(*) AS n FROM actions a WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.session_id = a.session_id)",
  );
  assert.equal(orphans.rows[0]!.n, "0", "actions of sessions that do not exist");
}

/** No hold is still open past its expiry. */
export async function assertNoStaleHolds(db: Queryable, nowMs: number): Promise<void> {
  const { rows } = await db.query<{ n: string }>("SELECT count(*) AS n FROM actions WHERE status = 1 AND hold_expire_time <= $1::timestamptz", [new Date(nowMs).toISOString()]);
  assert.equal(rows[0]!.n, "0", "a hold outlived its TTL");
}
