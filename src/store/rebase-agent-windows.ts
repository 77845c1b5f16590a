import { type CompiledPolicy, WINDOW_KINDS } from "../core/compiled-policy.js";
import type { CalendarSpanCache } from "../core/windows.js";
import { ActionStatus } from "../gen/warden/v1/policy_service_pb.js";
import type { Queryable } from "./database.js";
import { countersAt, currentAddress, readUsage, saveCounters } from "./usage-counters.js";

/**
 * What the ledger charged to an agent's windows of one kind from actions
 * and leases made in [$2, $3): committed (captured, or written off) and
 * held (open holds and pending approvals; leases' unspent rest). The same
 * sums as the ledger check of the tests (test/helpers/ledger.ts), and the
 * actions that name no window: an imported session's history (its spend
 * came in as counts, not action by action) and a sidecar's records where
 * nothing limited it, spent all the same.
 */
const GAP_SQL = `SELECT coalesce(sum(cv), 0) AS cv, coalesce(sum(hv), 0) AS hv, coalesce(sum(ca), 0) AS ca, coalesce(sum(ha), 0) AS ha FROM (
    SELECT CASE WHEN a.status = ${ActionStatus.CAPTURED} THEN a.captured_value ELSE coalesce(a.written_off_value, 0) END AS cv,
           CASE WHEN a.status = ${ActionStatus.HELD} OR (a.status = ${ActionStatus.NEEDS_APPROVAL} AND a.held_value > 0) THEN a.held_value ELSE 0 END AS hv,
           CASE WHEN a.status = ${ActionStatus.CAPTURED} OR a.written_off_value IS NOT NULL THEN 1 ELSE 0 END AS ca,
           CASE WHEN a.status = ${ActionStatus.HELD} OR (a.status = ${ActionStatus.NEEDS_APPROVAL} AND a.held_value > 0) THEN 1 ELSE 0 END AS ha
      FROM actions a
     WHERE a.session_id IN (SELECT session_id FROM sessions WHERE agent_id = $1)
       AND a.create_time >= $2::timestamptz AND a.create_time < $3::timestamptz
       AND (a.charges = '[]'::jsonb OR EXISTS (SELECT 1 FROM jsonb_array_elements(a.charges) c WHERE c->>0 = $4 AND c->>1 = $5))
    UNION ALL
    SELECT l.written_off_value, l.held_value, l.written_off_actions, l.held_actions
      FROM leases l
     WHERE l.session_id IN (SELECT session_id FROM sessions WHERE agent_id = $1)
       AND l.create_time >= $2::timestamptz AND l.create_time < $3::timestamptz
       AND EXISTS (SELECT 1 FROM jsonb_array_elements(l.charges) c WHERE c->>0 = $4 AND c->>1 = $5)
  ) t`;

/**
 * Moves an agent's stored windows to the calendar of its new `policy`
 * (another time zone or week start), as decisions would (usage-counters.ts,
 * countersAt: a newer window of the new calendar carries the stored counts,
 * or starts from zero), and counts in what they cannot: a window of the new
 * calendar that began before the stored one (a move east, or a move west
 * after the old day rolled over) holds spend from before the stored start,
 * whose window has rolled over and whose counts are gone. That spend is
 * read from the ledger (actions and leases of the agent's sessions made
 * between the two starts) and the stored window then starts where the new
 * calendar's does. Holds among it that are settled later no longer find
 * the window they were charged to, so their held amounts stay counted until
 * it rolls over: more than was spent, never less.
 *
 * Call with the agent's row locked (the owner lock of its counters), in the
 * transaction that stores the policy. Without such a window it writes
 * nothing: the next decision moves the windows just as well. With one, all
 * of them move here at once, since the calendar stored from then on is the
 * new one (a window left behind would be taken as the new calendar's).
 */
export async function rebaseAgentWindows(tx: Queryable, agentId: string, policy: CompiledPolicy, nowMs: number, spans: CalendarSpanCache): Promise<void> {
  const key = `a:${agentId}`;
  const rows = await readUsage(tx, [key]);
  const row = rows.get(key);
  if (row === undefined) return;
  const storedCalendar = (row.calendar as string | null) ?? policy.calendar;
  if (storedCalendar === policy.calendar) return;
  const addresses = WINDOW_KINDS.map((w) => currentAddress(key, policy, w, nowMs, spans));
  const usage = countersAt(rows, addresses, "current");
  const windows = usage.scopes.get(key)!;
  const earlier = addresses.filter((a) => a.window !== "lifetime" && !Number.isNaN(windows[a.window].startMs) && a.startMs < windows[a.window].startMs);
  // Otherwise the next decision moves them just as well (countersAt).
  if (earlier.length === 0) return;
  for (const a of earlier) {
    const c = windows[a.window];
    const { rows: gap } = await tx.query<{ cv: string; hv: string; ca: string; ha: string }>(GAP_SQL, [
      agentId,
      new Date(a.startMs).toISOString(),
      new Date(c.startMs).toISOString(),
      key,
      a.window,
    ]);
    const g = gap[0]!;
    c.committedValue += BigInt(g.cv);
    c.heldValue += BigInt(g.hv);
    c.committedActions += BigInt(g.ca);
    c.heldActions += BigInt(g.ha);
    c.startMs = a.startMs;
  }
  await saveCounters(tx, usage);
}
