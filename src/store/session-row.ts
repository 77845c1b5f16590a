import { create, fromBinary } from "@bufbuild/protobuf";
import { DurationSchema, durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { type CompiledPolicy, WINDOW_KINDS } from "../core/compiled-policy.js";
import { budgetsOf, counterKey, LIFETIME_START_MS } from "../core/evaluate.js";
import type { CalendarSpanCache } from "../core/windows.js";
import { Scope } from "../gen/warden/v1/decision_pb.js";
import { SessionPolicySchema } from "../gen/warden/v1/policy_pb.js";
import { type Session, SessionSchema, type SessionStatus, SessionUsageSchema } from "../gen/warden/v1/session_pb.js";
import { budgetToProto } from "./decision-proto.js";
import type { Queryable } from "./database.js";
import type { PolicyCache } from "./scope-locks.js";
import { type CounterAddress, currentAddress, loadCounters, totalsOf } from "./usage-counters.js";

/** The columns of `sessions` every reader selects. */
export const SESSION_COLUMNS = `session_id, agent_id, parent_session_id, ancestor_ids, owner, description, labels, policy,
  status, status_reason, create_time, update_time, expire_time, idle_timeout_ms, last_activity_time, end_time,
  request_count, error_count, denial_count, processing_ns, revision`;

/** A row of `sessions`. */
export interface SessionRow {
  session_id: string;
  agent_id: string;
  parent_session_id: string | null;
  ancestor_ids: string[];
  owner: string;
  description: string;
  labels: Record<string, string>;
  policy: Uint8Array;
  status: number;
  status_reason: string;
  create_time: Date;
  update_time: Date;
  expire_time: Date;
  idle_timeout_ms: string | null;
  last_activity_time: Date;
  end_time: Date | null;
  request_count: string;
  error_count: string;
  denial_count: string;
  processing_ns: string;
  revision: string;
}

/** Addresses of the counters a session's usage shows at `nowMs`. */
export function usageAddresses(sessionId: string, policy: CompiledPolicy, nowMs: number, spans: CalendarSpanCache): CounterAddress[] {
  return WINDOW_KINDS.map((w) => currentAddress(`s:${sessionId}`, policy, w, nowMs, spans));
}

/**
 * What the leases of sessions $1 hold and wrote off, and what the store
 * wrote off of their sidecars' holds (migration 021), by session. Released
 * leases hold nothing (a CHECK in migration 012), so only active and
 * reconciled ones are read, through the partial index leases_by_session:
 * not every lease the sessions were ever granted; and only written-off
 * holds, through actions_written_off_by_session.
 */
export const LEASE_TOTALS_SQL = `SELECT session_id, sum(hv) AS hv, sum(ha) AS ha, sum(wv) AS wv, sum(wa) AS wa FROM (
    SELECT session_id, held_value AS hv, held_actions AS ha, written_off_value AS wv, written_off_actions AS wa
      FROM leases WHERE session_id = ANY($1::text[]) AND status IN (1, 3)
    UNION ALL
    SELECT session_id, 0, 0, written_off_value, 1 FROM actions WHERE session_id = ANY($1::text[]) AND written_off_value IS NOT NULL
  ) t GROUP BY session_id`;

/**
 * Builds API sessions from rows, with usage read from the counters of the
 * windows that contain `nowMs` (one query for all rows).
 */
export async function sessionsOf(
  q: Queryable,
  rows: readonly SessionRow[],
  nowMs: number,
  spans: CalendarSpanCache,
  policies: PolicyCache,
): Promise<Session[]> {
  const compiled = rows.map((r) => policies.get(`s:${r.session_id}`, BigInt(r.revision), r.policy));
  const counters = await loadCounters(
    q,
    rows.flatMap((r, i) => usageAddresses(r.session_id, compiled[i]!, nowMs, spans)),
  );
  const leased = new Map<string, { hv: string; ha: string; wv: string; wa: string }>();
  const { rows: leaseRows } = await q.query<{ session_id: string; hv: string; ha: string; wv: string; wa: string }>(LEASE_TOTALS_SQL, [
    rows.map((r) => r.session_id),
  ]);
  for (const l of leaseRows) leased.set(l.session_id, l);
  return rows.map((r, i) => {
    const policy = compiled[i]!;
    const scope = { scope: Scope.SESSION, id: r.session_id, key: `s:${r.session_id}`, policy };
    const usage = (key: string) => totalsOf(counters.get(key)) ?? { value: 0n, actions: 0n };
    const life = counters.get(counterKey(scope.key, "lifetime", LIFETIME_START_MS))!;
    return create(SessionSchema, {
      sessionId: r.session_id,
      agentId: r.agent_id,
      owner: r.owner,
      description: r.description,
      labels: r.labels,
      policy: fromBinary(SessionPolicySchema, r.policy),
      status: r.status as SessionStatus,
      createTime: timestampFromMs(r.create_time.getTime()),
      updateTime: timestampFromMs(r.update_time.getTime()),
      expireTime: timestampFromMs(r.expire_time.getTime()),
      idleTimeout: r.idle_timeout_ms === null ? undefined : durationFromMs(Number(r.idle_timeout_ms)),
      lastActivityTime: timestampFromMs(r.last_activity_time.getTime()),
      endTime: r.end_time === null ? undefined : timestampFromMs(r.end_time.getTime()),
      statusReason: r.status_reason,
      parentSessionId: r.parent_session_id ?? "",
      etag: `"${r.revision}"`,
      usage: create(SessionUsageSchema, {
        actionsCommitted: life.committedActions,
        valueCommittedMicros: life.committedValue,
        actionsHeld: life.heldActions,
        valueHeldMicros: life.heldValue,
        windows: budgetsOf([scope], nowMs, spans, usage).map(budgetToProto),
        requestCount: BigInt(r.request_count),
        errorCount: BigInt(r.error_count),
        denialCount: BigInt(r.denial_count),
        processingTime: durationFromNs(BigInt(r.processing_ns)),
        valueLeasedMicros: BigInt(leased.get(r.session_id)?.hv ?? 0),
        actionsLeased: BigInt(leased.get(r.session_id)?.ha ?? 0),
        valueWrittenOffMicros: BigInt(leased.get(r.session_id)?.wv ?? 0),
        actionsWrittenOff: BigInt(leased.get(r.session_id)?.wa ?? 0),
      }),
    });
  });
}

/** A nanosecond count as a Duration, exactly. */
function durationFromNs(ns: bigint) {
  return create(DurationSchema, { seconds: ns / 1_000_000_000n, nanos: Number(ns % 1_000_000_000n) });
}
