import { fromBinary } from "@bufbuild/protobuf";
import { LRUCache } from "lru-cache";
import { type CompiledPolicy, compilePolicy, EMPTY_POLICY } from "../core/compiled-policy.js";
import { SessionPolicySchema } from "../gen/warden/v1/policy_pb.js";
import { lapse, type ScopeState } from "../core/evaluate.js";
import { Scope } from "../gen/warden/v1/decision_pb.js";
import type { SessionStatus } from "../gen/warden/v1/session_pb.js";
import type { Queryable } from "./database.js";

/** The parts of a session row a decision needs, read under its row lock. */
export interface LockedSession {
  readonly sessionId: string;
  readonly agentId: string;
  readonly ancestorIds: readonly string[];
  status: SessionStatus;
  readonly expireMs: number;
  readonly idleTimeoutMs: number | undefined;
  lastActivityMs: number;
  /** The latest deadline of an approval it asked for (migration 023), epoch ms; 0 if none. */
  awaitingApprovalUntilMs: number;
  readonly revision: bigint;
  readonly policy: CompiledPolicy;
  /** Denials in a row so far (migration 019): the circuit breaker's count. */
  denialRun: number;
  /** When a pause or resume last started the count over (epoch ms); 0 if never. */
  readonly denialRunSinceMs: number;
}

/** An agent row read under its lock. */
export interface LockedAgent {
  readonly agentId: string;
  readonly revision: bigint;
  readonly policy: CompiledPolicy;
}

interface SessionLockRow {
  session_id: string;
  agent_id: string;
  ancestor_ids: string[];
  status: number;
  expire_time: Date;
  idle_timeout_ms: string | null;
  last_activity_time: Date;
  approval_wait_until: Date | null;
  revision: string;
  policy: Uint8Array;
  denial_run: number;
  denial_run_since: Date | null;
}

interface AgentLockRow {
  agent_id: string;
  revision: string;
  policy: Uint8Array | null;
}

/**
 * Compiled policies by scope and revision, so a hot session's policy bytes
 * are parsed once, not once per decision. A stale entry is never used: the
 * revision read under the row lock must match.
 */
export class PolicyCache {
  private readonly cache = new LRUCache<string, { revision: bigint; policy: CompiledPolicy }>({ max: 100_000 });

  /** The compiled policy of `key` at `revision`, parsing `bytes` on a miss. */
  get(key: string, revision: bigint, bytes: Uint8Array | null): CompiledPolicy {
    const hit = this.cache.get(key);
    if (hit !== undefined && hit.revision === revision) return hit.policy;
    const policy = bytes === null ? EMPTY_POLICY : compilePolicy(fromBinary(SessionPolicySchema, bytes));
    this.cache.set(key, { revision, policy });
    return policy;
  }
}

/** Locks and reads sessions `$1` in id order: a decision batch's first statement. */
export const LOCK_SESSIONS_SQL = `SELECT session_id, agent_id, ancestor_ids, status, expire_time, idle_timeout_ms,
              last_activity_time, approval_wait_until, revision, policy, denial_run, denial_run_since
         FROM sessions WHERE session_id = ANY($1::text[]) ORDER BY session_id FOR UPDATE`;

/**
 * Locks sessions and then agents, each set in id order, inside `tx`.
 *
 * Every writer of usage takes its locks through here, in this one global
 * order (sessions by id, then agents by id), so two transactions never wait
 * on each other in a cycle, on one replica or many. The locks are row locks
 * on the owners of the counters, which makes "check all limits, then charge
 * them" one atomic step.
 */
export async function lockScopes(
  tx: Queryable,
  sessionIds: readonly string[],
  agentIds: readonly string[],
  policies: PolicyCache,
): Promise<{ sessions: Map<string, LockedSession>; agents: Map<string, LockedAgent> }> {
  const sessions = new Map<string, LockedSession>();
  const agents = new Map<string, LockedAgent>();
  // Both statements go out at once (sessions first: every writer locks in
  // that order); on a pipelined connection that is one round trip.
  const [sessionRows, agentRows] = await Promise.all([
    sessionIds.length === 0 ? undefined : tx.query<SessionLockRow>(LOCK_SESSIONS_SQL, [[...new Set(sessionIds)]]),
    agentIds.length === 0
      ? undefined
      : tx.query<AgentLockRow>("SELECT agent_id, revision, policy FROM agents WHERE agent_id = ANY($1::text[]) ORDER BY agent_id FOR UPDATE", [
          [...new Set(agentIds)],
        ]),
  ]);
  for (const r of sessionRows?.rows ?? []) {
    const revision = BigInt(r.revision);
    sessions.set(r.session_id, {
      sessionId: r.session_id,
      agentId: r.agent_id,
      ancestorIds: r.ancestor_ids,
      status: r.status as SessionStatus,
      expireMs: r.expire_time.getTime(),
      idleTimeoutMs: r.idle_timeout_ms === null ? undefined : Number(r.idle_timeout_ms),
      lastActivityMs: r.last_activity_time.getTime(),
      awaitingApprovalUntilMs: r.approval_wait_until?.getTime() ?? 0,
      revision,
      policy: policies.get(`s:${r.session_id}`, revision, r.policy),
      denialRun: r.denial_run,
      denialRunSinceMs: r.denial_run_since?.getTime() ?? 0,
    });
  }
  for (const r of agentRows?.rows ?? []) {
    const revision = BigInt(r.revision);
    agents.set(r.agent_id, { agentId: r.agent_id, revision, policy: policies.get(`a:${r.agent_id}`, revision, r.policy) });
  }
  return { sessions, agents };
}

/** What {@link sessionScope} reads: a locked session, or a sidecar's cached one. */
export type SessionLike = Pick<LockedSession, "sessionId" | "policy" | "status" | "expireMs" | "idleTimeoutMs" | "lastActivityMs" | "awaitingApprovalUntilMs">;

/** A session as the engine sees it: as itself, or as a fork's parent. */
export function sessionScope(s: SessionLike, scope: Scope = Scope.SESSION): ScopeState {
  return {
    scope,
    id: s.sessionId,
    key: `s:${s.sessionId}`,
    policy: s.policy,
    status: s.status,
    expireMs: s.expireMs,
    idleTimeoutMs: s.idleTimeoutMs,
    lastActivityMs: s.lastActivityMs,
    awaitingApprovalUntilMs: s.awaitingApprovalUntilMs,
  };
}

/**
 * {@link lapse} of a locked session, told its ancestors (locked with it,
 * in `locked`): under a paused one it does not idle.
 */
export function lapseOf(s: LockedSession, locked: ReadonlyMap<string, LockedSession>, nowMs: number): "time" | "idle" | undefined {
  return lapse(sessionScope(s), nowMs, s.ancestorIds.map((a) => locked.get(a)!));
}
