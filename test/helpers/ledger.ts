import assert from "node:assert/strict";
import type { Queryable } from "../../src/store/database.js";

/** Recomputes every counter from the ledger and compares: the books balance. */
export async function assertLedgerConsistent(db: Queryable): Promise<void> {
  const { rows } = await db.query<{ n: string }>(`
    WITH charged AS (
      SELECT c->>0 AS scope_key, c->>1 AS window_kind, to_timestamp((c->>2)::bigint / 1000.0) AS window_start,
             a.captured_value, a.held_value, a.status
        FROM actions a, jsonb_array_elements(a.charges) c),
    expected AS (
      SELECT scope_key, window_kind, window_start,
             sum(captured_value) FILTER (WHERE status = 2) AS cv, sum(held_value) FILTER (WHERE status = 1) AS hv,
             count(*) FILTER (WHERE status = 2) AS ca, count(*) FILTER (WHERE status = 1) AS ha
        FROM charged GROUP BY 1, 2, 3)
    SELECT count(*) AS n FROM usage_counters u FULL JOIN expected e
      ON e.scope_key = u.scope_key AND e.window_kind = u.window_kind AND e.window_start = u.window_start
     WHERE coalesce(u.committed_value, 0) <> coalesce(e.cv, 0) OR coalesce(u.held_value, 0) <> coalesce(e.hv, 0)
        OR coalesce(u.committed_actions, 0) <> coalesce(e.ca, 0) OR coalesce(u.held_actions, 0) <> coalesce(e.ha, 0)`);
  assert.equal(rows[0]!.n, "0", "usage counters disagree with the action ledger");
}

/** No hold is still open past its expiry. */
export async function assertNoStaleHolds(db: Queryable, nowMs: number): Promise<void> {
  const { rows } = await db.query<{ n: string }>("SELECT count(*) AS n FROM actions WHERE status = 1 AND hold_expire_time <= $1::timestamptz", [new Date(nowMs).toISOString()]);
  assert.equal(rows[0]!.n, "0", "a hold outlived its TTL");
}
