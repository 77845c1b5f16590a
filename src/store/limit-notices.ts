import { timestampMs } from "@bufbuild/protobuf/wkt";
import { LRUCache } from "lru-cache";
import { type Decision, Outcome, Reason, Scope, Window } from "../gen/warden/v1/decision_pb.js";
import type { Queryable } from "./database.js";
import { type NewEvent, recordEvents } from "./outbox.js";

/** A window limit that denied a decision: a `session.limit_reached` to announce, once. */
export interface LimitNotice {
  readonly sessionId: string;
  readonly agentId: string;
  readonly actionId: string;
  /** Which limit of which window: one notice per key and session. */
  readonly key: string;
  readonly data: Record<string, unknown>;
  readonly nowMs: number;
}

/** The reasons that name a window limit (the per-transaction cap is no window, so it is never "reached"). */
const WINDOW_LIMIT_REASONS: ReadonlySet<Reason> = new Set([
  Reason.LIMIT_DAILY_VALUE,
  Reason.LIMIT_DAILY_ACTIONS,
  Reason.LIMIT_WEEKLY_VALUE,
  Reason.LIMIT_WEEKLY_ACTIONS,
  Reason.LIMIT_MONTHLY_VALUE,
  Reason.LIMIT_MONTHLY_ACTIONS,
  Reason.LIMIT_LIFETIME_VALUE,
  Reason.LIMIT_LIFETIME_ACTIONS,
]);

/**
 * The window limits a denied decision ran into, as notices: one per
 * violated limit, keyed by scope, window and the window's start, so the
 * next window's denial is told again and this window's next denial is not.
 */
export function limitNoticesOf(
  d: { readonly sessionId: string; readonly agentId: string; readonly actionId: string; readonly decision: Decision },
  nowMs: number,
): LimitNotice[] {
  if (d.decision.outcome !== Outcome.DENY) return [];
  const out: LimitNotice[] = [];
  for (const v of d.decision.violations) {
    if (!WINDOW_LIMIT_REASONS.has(v.reason)) continue;
    const budget = d.decision.remaining.find((b) => b.scope === v.scope && b.scopeId === v.scopeId && b.window === v.window);
    const start = budget?.windowStartTime === undefined ? 0 : timestampMs(budget.windowStartTime);
    const end = budget?.windowEndTime === undefined ? undefined : new Date(timestampMs(budget.windowEndTime)).toISOString();
    out.push({
      sessionId: d.sessionId,
      agentId: d.agentId,
      actionId: d.actionId,
      key: `${Reason[v.reason]}|${Scope[v.scope]}|${v.scopeId}|${start}`,
      data: {
        reason: Reason[v.reason],
        scope: Scope[v.scope],
        scope_id: v.scopeId,
        window: Window[v.window],
        ...(budget?.windowStartTime === undefined ? {} : { window_start_time: new Date(start).toISOString() }),
        ...(end === undefined ? {} : { window_end_time: end }),
        ...(budget?.valueLimitMicros === undefined ? {} : { value_limit_micros: budget.valueLimitMicros.toString() }),
        ...(budget?.actionLimit === undefined ? {} : { action_limit: budget.actionLimit.toString() }),
        action_id: d.actionId,
      },
      nowMs,
    });
  }
  return out;
}

/**
 * Records `session.limit_reached` for the notices not told before, in the
 * caller's transaction (after its row locks: events take a position).
 * `told` remembers keys this process has already stored, so a session that
 * keeps hitting its limit costs no statement per batch; the table decides
 * across replicas. Returns the keys stored: add them to `told` once the
 * transaction has committed (a rolled-back one told nobody).
 */
export async function recordLimitNotices(tx: Queryable, notices: readonly LimitNotice[], told: LRUCache<string, true>): Promise<string[]> {
  const fresh = new Map<string, LimitNotice>();
  for (const n of notices) {
    const k = `${n.sessionId}|${n.key}`;
    if (!told.has(k) && !fresh.has(k)) fresh.set(k, n);
  }
  if (fresh.size === 0) return [];
  const list = [...fresh.values()];
  const { rows } = await tx.query<{ session_id: string; notice_key: string }>(
    `INSERT INTO limit_notices (session_id, notice_key, create_time)
     SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
     ON CONFLICT DO NOTHING RETURNING session_id, notice_key`,
    [list.map((n) => n.sessionId), list.map((n) => n.key), list.map((n) => new Date(n.nowMs).toISOString())],
  );
  const inserted = new Set(rows.map((r) => `${r.session_id}|${r.notice_key}`));
  const events: NewEvent[] = [];
  for (const [k, n] of fresh) {
    if (inserted.has(k)) events.push({ type: "session.limit_reached", sessionId: n.sessionId, agentId: n.agentId, data: n.data, nowMs: n.nowMs });
  }
  await recordEvents(tx, events);
  return [...inserted];
}

/** A process-wide memory of told notices, for {@link recordLimitNotices}. */
export function createToldNotices(): LRUCache<string, true> {
  return new LRUCache<string, true>({ max: 100_000 });
}
