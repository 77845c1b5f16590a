import { create, fromBinary } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { SessionPolicySchema } from "../gen/warden/v1/policy_pb.js";
import type { SessionStatus } from "../gen/warden/v1/session_pb.js";
import {
  type AgentState,
  AgentStateSchema,
  type GetSessionStateResponse,
  GetSessionStateResponseSchema,
  type SessionState,
  SessionStateSchema,
  type SettledHold,
  SettledHoldSchema,
} from "../gen/warden/v1/sync_service_pb.js";
import type { ActionStatus } from "../gen/warden/v1/policy_service_pb.js";
import type { Database, Queryable } from "./database.js";

interface StateRow {
  session_id: string;
  agent_id: string;
  ancestor_ids: string[];
  policy: Uint8Array;
  status: number;
  expire_time: Date;
  idle_timeout_ms: string | null;
  last_activity_time: Date;
  approval_wait_until: Date | null;
  revision: string;
}

const STATE_COLUMNS = "session_id, agent_id, ancestor_ids, policy, status, expire_time, idle_timeout_ms, last_activity_time, approval_wait_until, revision";

function stateOf(r: StateRow): SessionState {
  return create(SessionStateSchema, {
    sessionId: r.session_id,
    agentId: r.agent_id,
    ancestorIds: r.ancestor_ids,
    policy: fromBinary(SessionPolicySchema, r.policy),
    status: r.status as SessionStatus,
    expireTime: timestampFromMs(r.expire_time.getTime()),
    idleTimeout: r.idle_timeout_ms === null ? undefined : durationFromMs(Number(r.idle_timeout_ms)),
    lastActivityTime: timestampFromMs(r.last_activity_time.getTime()),
    awaitingApprovalUntil: r.approval_wait_until === null ? undefined : timestampFromMs(r.approval_wait_until.getTime()),
    revision: BigInt(r.revision),
  });
}

function agentOf(r: { agent_id: string; policy: Uint8Array | null; revision: string }): AgentState {
  return create(AgentStateSchema, {
    agentId: r.agent_id,
    policy: r.policy === null ? undefined : fromBinary(SessionPolicySchema, r.policy),
    revision: BigInt(r.revision),
  });
}

/**
 * Waits until every revision handed out so far has committed: one is taken
 * under this lock, held until its transaction ends (004_sync_leases.sql).
 */
const REVISION_LOCK_SQL = "SELECT pg_advisory_xact_lock(7734001)";

/** The newest revision handed out so far (0 on a new store), whether or not its change has committed. */
export async function currentRevision(q: Queryable): Promise<bigint> {
  const { rows } = await q.query<{ last_value: string; is_called: boolean }>("SELECT last_value, is_called FROM sync_revision");
  return rows[0]!.is_called ? BigInt(rows[0]!.last_value) : 0n;
}

/** {@link currentRevision} once every change up to it has committed. */
export function committedRevision(db: Database): Promise<bigint> {
  return db.transaction(async (q) => {
    await q.query(REVISION_LOCK_SQL);
    return currentRevision(q);
  });
}

/**
 * Sessions as a sidecar decides from them: each session, its parents
 * nearest first, and its agent's policy; absent when not found. The
 * revision is read first, then every part in one statement, so the parts
 * agree. Many at once, because a sidecar that starts (or meets many new
 * sessions) misses its cache for many sessions together.
 */
export async function readSessionStates(q: Queryable, sessionIds: readonly string[]): Promise<Map<string, GetSessionStateResponse>> {
  const revision = await currentRevision(q);
  const { rows } = await q.query<StateRow & { agent_policy: Uint8Array | null; agent_revision: string }>(
    `WITH me AS (SELECT session_id, ancestor_ids FROM sessions WHERE session_id = ANY($1::text[])),
          wanted AS (SELECT session_id FROM me UNION SELECT unnest(ancestor_ids) FROM me)
     SELECT ${STATE_COLUMNS.split(", ").map((c) => `s.${c}`).join(", ")}, a.policy AS agent_policy, a.revision AS agent_revision
       FROM sessions s JOIN agents a ON a.agent_id = s.agent_id
      WHERE s.session_id IN (SELECT session_id FROM wanted)`,
    [[...new Set(sessionIds)]],
  );
  const byId = new Map(rows.map((r) => [r.session_id, r]));
  const out = new Map<string, GetSessionStateResponse>();
  for (const id of sessionIds) {
    const self = byId.get(id);
    if (self === undefined || out.has(id)) continue;
    out.set(
      id,
      create(GetSessionStateResponseSchema, {
        sessions: [self, ...self.ancestor_ids.map((a) => byId.get(a)!)].map(stateOf),
        agent: agentOf({ agent_id: self.agent_id, policy: self.agent_policy, revision: self.agent_revision }),
        revision,
      }),
    );
  }
  return out;
}

/**
 * Sessions of agent $1 (every agent when NULL) changed after revision $2 up
 * to $3, oldest first, at most $4. With an agent it is a range of
 * sessions_by_revision, without one a range of sessions_revision
 * (migration 011).
 */
export const CHANGED_SESSIONS_SQL = `SELECT ${STATE_COLUMNS} FROM sessions
  WHERE ($1::text IS NULL OR agent_id = $1) AND revision > $2 AND revision <= $3 ORDER BY revision LIMIT $4`;

/**
 * Holds of agent $1 (every agent when NULL) that sidecars placed and the
 * store settled after revision $2 up to $3: a range of
 * actions_settled_by_revision, which holds only such rows.
 */
export const SETTLED_HOLDS_SQL = `SELECT action_id, session_id, agent_id, status FROM actions
  WHERE settle_revision > $2 AND settle_revision <= $3 AND ($1::text IS NULL OR agent_id = $1) ORDER BY settle_revision`;

/** Changes to sessions and agent policies after a revision. */
export interface SessionChanges {
  readonly sessions: SessionState[];
  readonly agents: AgentState[];
  /** Holds sidecars placed that the store settled in this range (migration 018). */
  readonly settledHolds: SettledHold[];
  /** Everything up to here is included. */
  readonly revision: bigint;
}

/**
 * What changed for `agentId` (every agent when undefined) after `fromRevision`, as it is now, up to
 * `limit` sessions (the rest comes with the next call, from the returned
 * revision).
 *
 * The read takes the revision lock (see 004_sync_leases.sql) first: every
 * transaction that took a revision under it has committed by then, and none
 * can take one until this read ends, so nothing at or below the revision
 * returned can appear later. (Creations take revisions without the lock and
 * may appear later below it; a watcher does not hold sessions it never
 * fetched, so missing one loses nothing.)
 */
export async function readChanges(db: Database, agentId: string | undefined, fromRevision: bigint, limit = 1000): Promise<SessionChanges> {
  return db.transaction(async (q) => {
    await q.query(REVISION_LOCK_SQL);
    const upTo = await currentRevision(q);
    const { rows } = await q.query<StateRow>(CHANGED_SESSIONS_SQL, [agentId ?? null, fromRevision.toString(), upTo.toString(), limit]);
    // A full page may stop short of upTo: resume from its last row.
    const revision = rows.length === limit ? BigInt(rows.at(-1)!.revision) : upTo;
    const agents = await q.query<{ agent_id: string; policy: Uint8Array | null; revision: string }>(
      "SELECT agent_id, policy, revision FROM agents WHERE ($1::text IS NULL OR agent_id = $1) AND revision > $2 AND revision <= $3",
      [agentId ?? null, fromRevision.toString(), revision.toString()],
    );
    const settled = await q.query<{ action_id: string; session_id: string; agent_id: string; status: number }>(SETTLED_HOLDS_SQL, [
      agentId ?? null,
      fromRevision.toString(),
      revision.toString(),
    ]);
    return {
      sessions: rows.map(stateOf),
      agents: agents.rows.map(agentOf),
      settledHolds: settled.rows.map((r) =>
        create(SettledHoldSchema, { authorizationId: r.action_id, sessionId: r.session_id, agentId: r.agent_id, status: r.status as ActionStatus }),
      ),
      revision,
    };
  });
}

/**
 * Which store history this store's revisions belong to: the cluster (its
 * system identifier), its timeline (a promoted replica or a point-in-time
 * restore starts a new one) and the database (a copy, or a restore into
 * another database, has another oid). A watcher resuming with another
 * epoch's revision is told to reset (sync-service.ts): that number may be
 * one this store gave out too, for other changes. A role not allowed to
 * read the control file gets the database's part alone.
 */
export async function readStoreEpoch(q: Queryable): Promise<string> {
  const { rows } = await q.query<{ oid: string }>("SELECT oid::text AS oid FROM pg_database WHERE datname = current_database()");
  let cluster = "-";
  try {
    const c = await q.query<{ id: string; tl: number }>(
      "SELECT (SELECT system_identifier::text FROM pg_control_system()) AS id, (SELECT timeline_id FROM pg_control_checkpoint()) AS tl",
    );
    cluster = `${c.rows[0]!.id}.${c.rows[0]!.tl}`;
  } catch {
    // Not permitted: the database's part alone.
  }
  return `${cluster}.${rows[0]!.oid}`;
}
