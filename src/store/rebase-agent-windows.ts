import { type CompiledPolicy, WINDOW_KINDS } from "../core/compiled-policy.js";
import type { CalendarSpanCache } from "../core/windows.js";
import { ActionStatus } from "../gen/warden/v1/policy_service_pb.js";
import type { Queryable } from "./database.js";
import { countersAt, currentAddress, readUsage, saveCounters, storedWindowAt, windowsOf } from "./usage-counters.js";

/**
 * What the ledger charged to an agent's windows of one kind from actions
 * made in [$2, $3), and leases that could be spent from then (granted
 * before its end, good past its start): committed (captured, or written off) and
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
       AND l.create_time < $3::timestamptz AND l.expire_time > $2::timestamptz
       AND EXISTS (SELECT 1 FROM jsonb_array_elements(l.charges) c WHERE c->>0 = $4 AND c->>1 = $5)
  ) t`;

/**
 * The charges of what can still settle (open holds, pending approvals
 * holding an amount, sidecars' holds written off, active and reconciled
 * leases) that name an agent's window that moved: those naming its old
 * start ($6), and, for a window that moved earlier, those made in the gap
 * [$2, $3) it took in, now name the new start ($7). Settled later, they
 * find the window they are counted in. $4, $5: the scope key and kind.
 */
const movedCharge = (inGap: string) => `c->>0 = $4 AND c->>1 = $5 AND ((c->>2)::bigint = $6 OR (${inGap}))`;
const movedChargesSql = (table: "actions" | "leases", live: string, inGap: string) => `UPDATE ${table} t
    SET charges = (SELECT jsonb_agg(CASE WHEN ${movedCharge(inGap)} THEN jsonb_build_array(c->0, c->1, $7::bigint) ELSE c END ORDER BY o)
                     FROM jsonb_array_elements(t.charges) WITH ORDINALITY AS e(c, o))
  WHERE t.session_id IN (SELECT session_id FROM sessions WHERE agent_id = $1) AND (${live})
    AND EXISTS (SELECT 1 FROM jsonb_array_elements(t.charges) c WHERE ${movedCharge(inGap)})
  RETURNING 1`;
const MOVE_ACTION_CHARGES_SQL = movedChargesSql(
  "actions",
  `t.status = ${ActionStatus.HELD} OR (t.status = ${ActionStatus.NEEDS_APPROVAL} AND t.held_value > 0) OR t.written_off_value IS NOT NULL`,
  "t.create_time >= $2::timestamptz AND t.create_time < $3::timestamptz",
);
// A lease counts in the gap if it could be spent from there: granted before
// the gap's end and good past its start (one granted just before the new
// window began spends in it, and its sidecar may report that late).
const MOVE_LEASE_CHARGES_SQL = movedChargesSql("leases", "t.status IN (1, 3)", "t.create_time < $3::timestamptz AND t.expire_time > $2::timestamptz");

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
 * calendar's does.
 *
 * What can still settle and is counted in a window that moves (carried or
 * moved earlier) is charged to it anew: a hold placed before the move and
 * voided after it gives its amount back to the window it is counted in,
 * not to one no longer stored, where it would have stayed held until the
 * window rolled over.
 *
 * Call with the agent's row locked (the owner lock of its counters), in the
 * transaction that stores the policy. When it moves a window, all of them
 * move here at once, since the calendar stored from then on is the new one
 * (a window left behind would be taken as the new calendar's).
 */
export async function rebaseAgentWindows(tx: Queryable, agentId: string, policy: CompiledPolicy, nowMs: number, spans: CalendarSpanCache): Promise<void> {
  const key = `a:${agentId}`;
  const rows = await readUsage(tx, [key]);
  const row = rows.get(key);
  if (row === undefined) return;
  const storedCalendar = (row.calendar as string | null) ?? policy.calendar;
  if (storedCalendar === policy.calendar) return;
  const addresses = WINDOW_KINDS.filter((w) => w !== "lifetime").map((w) => currentAddress(key, policy, w, nowMs, spans));
  // How each stored window reads at the new calendar's (countersAt moves
  // the carried and reset ones), judged before it does.
  const stored = windowsOf(key, row);
  const how = new Map(addresses.map((a) => [a.window, storedWindowAt(stored[a.window].startMs, storedCalendar, a)]));
  const usage = countersAt(rows, addresses, "current");
  const windows = usage.scopes.get(key)!;
  const moves: { a: (typeof addresses)[number]; fromMs: number; gapFromMs: number }[] = [];
  for (const a of addresses) {
    const fromMs = stored[a.window].startMs;
    const h = how.get(a.window)!;
    if (h === "carried") moves.push({ a, fromMs, gapFromMs: fromMs });
    else if (h === "stored" && a.startMs < fromMs) moves.push({ a, fromMs, gapFromMs: a.startMs });
  }
  // Windows move here when one moved earlier (its gap is read now or
  // never) or what can still settle is charged to one that moved; else the
  // next decision moves them just as well (countersAt), and nothing is
  // written. A reset window starts from zero, and what was charged to the
  // old one settles as in any window that rolled over.
  let move = false;
  for (const { a, fromMs, gapFromMs } of moves) {
    const c = windows[a.window];
    const gap = [new Date(gapFromMs).toISOString(), new Date(fromMs).toISOString()];
    if (gapFromMs < fromMs) {
      const g = (await tx.query<{ cv: string; hv: string; ca: string; ha: string }>(GAP_SQL, [agentId, ...gap, key, a.window])).rows[0]!;
      c.committedValue += BigInt(g.cv);
      c.heldValue += BigInt(g.hv);
      c.committedActions += BigInt(g.ca);
      c.heldActions += BigInt(g.ha);
      move = true;
    }
    c.startMs = a.startMs;
    const params = [agentId, ...gap, key, a.window, fromMs, a.startMs];
    for (const sql of [MOVE_ACTION_CHARGES_SQL, MOVE_LEASE_CHARGES_SQL]) if ((await tx.query(sql, params)).rows.length > 0) move = true;
  }
  if (move) await saveCounters(tx, usage);
}
