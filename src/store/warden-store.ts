import { create, type DescMessage, fromBinary, type MessageInitShape, type MessageShape, toBinary, toJson } from "@bufbuild/protobuf";
import { createHash } from "node:crypto";
import { durationMs, type Timestamp, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { compilePolicy, WINDOW_KINDS, type WindowKind } from "../core/compiled-policy.js";
import { budgetsOf, EXHAUSTED_REASON, isTerminal, lapseReason, LIFETIME_START_MS, spanOf } from "../core/evaluate.js";
import { formatMoney, INT64_MAX } from "../core/money.js";
import { CalendarSpanCache, isValidTimeZone } from "../core/windows.js";
import { type Agent, AgentSchema, type UpdateAgentPolicyRequest, UpdateAgentPolicyResponseSchema } from "../gen/warden/v1/agent_service_pb.js";
import { DecisionSchema, Scope } from "../gen/warden/v1/decision_pb.js";
import { type SessionPolicy, SessionPolicySchema } from "../gen/warden/v1/policy_pb.js";
import {
  type ActionRecord,
  ActionRecordSchema,
  ActionSchema,
  ActionStatus,
  AuthorizeResponseSchema,
  type CaptureRequest,
  CheckResponseSchema,
  type ListActionsRequest,
  type VoidRequest,
} from "../gen/warden/v1/policy_service_pb.js";
import {
  type CreateSessionRequest,
  CreateSessionResponseSchema,
  EndSessionResponseSchema,
  type ExtendSessionRequest,
  type ForkSessionRequest,
  ExtendSessionResponseSchema,
  ForkSessionResponseSchema,
  IdempotencyKeyAnswerSchema,
  ImportSessionResponseSchema,
  PauseSessionResponseSchema,
  ResumeSessionResponseSchema,
  RevokeSessionResponseSchema,
  type ListSessionsRequest,
  type SessionSnapshot,
  SessionSnapshotSchema,
  UsageCounterSchema,
} from "../gen/warden/v1/session_service_pb.js";
import { type Session, SessionStatus } from "../gen/warden/v1/session_pb.js";
import { ACTION_COLUMNS, type ActionRow, actionRecordOf } from "./action-record.js";
import { agentChain } from "../audit/audit-body.js";
import { appendAudit } from "./audit-log.js";
import type { Database, Queryable } from "./database.js";
import { SessionChains } from "./session-chains.js";
import { DecisionBatcher, type DecideRequest, type DecideResponse } from "./decision-batcher.js";
import { budgetToProto } from "./decision-proto.js";
import {
  captureHold,
  closedHoldError,
  closeHolds,
  endSessions,
  lockActions,
  SIDECAR_HOLD_GRACE_MS,
  type WrittenOff,
} from "./hold-ledger.js";
import { DESCENDANTS_SQL, endForksOf } from "./end-forks.js";
import { loadIdempotency, replayFirstAnswer, saveIdempotency } from "./idempotency.js";
import { newId } from "./ids.js";
import { recordEvent } from "./outbox.js";
import { pageToken, readPageToken } from "./page-token.js";
import {
  APPROVAL_COLUMNS,
  APPROVAL_FROM,
  type ApprovalRow,
  approvalOf,
  decidedError,
  lockApproval,
  settleApproval,
  timeoutVerdict,
  type Verdict,
} from "./approval-ledger.js";
import {
  type Approval,
  ApprovalStatus,
  ApproveApprovalResponseSchema,
  CancelApprovalResponseSchema,
  DenyApprovalResponseSchema,
  type ListApprovalsRequest,
} from "../gen/warden/v1/approval_service_pb.js";
import type { Money } from "../gen/warden/v1/money_pb.js";
import { breakerFailReason, trips, tripThreshold } from "../core/circuit-breaker.js";
import { lapseOf, type LockedSession, lockScopes, PolicyCache } from "./scope-locks.js";
import { SESSION_COLUMNS, type SessionRow, sessionsOf } from "./session-row.js";
import { countsSince, currentAddress, loadCounters, saveCounters, totalsOf } from "./usage-counters.js";
import { LeaseLedger, type ReconcileResult } from "./lease-ledger.js";
import { rebaseAgentWindows } from "./rebase-agent-windows.js";
import { committedRevision, readChanges, readSessionStates, readStoreEpoch, type SessionChanges } from "./session-sync.js";
import { BatchQueue } from "./batch-queue.js";
import { type GetSessionStateResponse, type IdempotencyKeyClaim, type IdempotencyKeyClaimResult } from "../gen/warden/v1/sync_service_pb.js";

/**
 * The most parents a session may have. Every decision of a fork locks and
 * checks its whole chain, so an agent forking without end would make each
 * of its decisions (and each ending of the root) ever dearer; delegation
 * seldom goes more than a few levels.
 */
export const MAX_FORK_DEPTH = 16;

/** Options of {@link createWardenStore}. */
export interface WardenStoreOptions {
  readonly db: Database;
  /** The clock, in epoch ms. Injected so tests move time without sleeping. */
  readonly now?: () => number;
  /** How long past its expiry an unreleased lease is written off (see LeaseLedger). */
  readonly leaseReconcileGraceMs?: number;
  /**
   * How long after a session ended its idempotency keys are kept before a
   * sweep removes them (see 014_idempotency_retention.sql); 0 keeps them
   * forever. Default 24 hours.
   */
  readonly idempotencyRetentionMs?: number;
}

/** Default of {@link WardenStoreOptions.idempotencyRetentionMs}: 24 hours. */
export const DEFAULT_IDEMPOTENCY_RETENTION_MS = 24 * 60 * 60 * 1000;

const iso = (ms: number) => new Date(ms).toISOString();
const DEFAULT_PAGE = 50;

/**
 * When a session goes idle, from what the store last saw (see
 * 010_idle_deadline.sql): its idle timeout after its last activity or the
 * deadline of an approval its agent waits on, whichever is later (023).
 */
const IDLE_DEADLINE = "GREATEST(last_activity_time, approval_wait_until) + idle_timeout_ms * interval '1 millisecond'";

/**
 * Moves the idle check time ($1: now) of up to $2 active sessions that were
 * active since it to their new idle deadline (a paused one does not idle:
 * see lapse; its resume restarts the clock). Rows another transaction
 * holds are skipped, not waited for (next sweep's), so this takes no part
 * in the store's lock order.
 */
export const REARM_IDLE_CHECKS_SQL = `UPDATE sessions SET idle_check_time = ${IDLE_DEADLINE}
  WHERE session_id IN (
    SELECT session_id FROM sessions
     WHERE status IN (1, 2) AND idle_timeout_ms IS NOT NULL AND idle_check_time <= $1::timestamptz
       AND status = 1 AND ${IDLE_DEADLINE} > $1::timestamptz
     LIMIT $2 FOR UPDATE SKIP LOCKED)`;

/**
 * Live sessions past their expiry, and active ones past their idle
 * deadline, at $1, up to $2 of each: two range scans, of sessions_live and
 * sessions_idle_check. A fork under a paused parent does not idle (see
 * lapse): each candidate fork's ancestors are looked up by primary key (a
 * root session, most of them, skips that; the OR keeps the lookup a
 * subplan run per candidate, which the planner cannot turn into a scan of
 * every live session), and such forks then cost a sweep what a paused
 * session does, a read, until the resume restarts their idle clocks.
 */
export const LAPSED_SESSIONS_SQL = `(SELECT session_id FROM sessions WHERE status IN (1, 2) AND expire_time <= $1::timestamptz LIMIT $2)
  UNION
  (SELECT session_id FROM sessions s
    WHERE status IN (1, 2) AND idle_timeout_ms IS NOT NULL AND idle_check_time <= $1::timestamptz
      AND status = 1 AND ${IDLE_DEADLINE} <= $1::timestamptz
      AND (ancestor_ids = '{}' OR NOT EXISTS (SELECT 1 FROM sessions p WHERE p.session_id = ANY(s.ancestor_ids) AND p.status = ${SessionStatus.PAUSED}))
    LIMIT $2)`;

/**
 * Removes the session-scoped idempotency keys of up to $2 sessions that
 * ended at or before $1 and still have them, and marks those sessions: one
 * range of sessions_keys_due, then each session's keys by the primary
 * key's prefix. Sessions another transaction holds are left for the next
 * sweep (SKIP LOCKED), so this waits on no one.
 */
export const PRUNE_IDEMPOTENCY_KEYS_SQL = `WITH due AS (
    SELECT session_id FROM sessions
     WHERE end_time IS NOT NULL AND NOT keys_pruned AND end_time <= $1::timestamptz
     ORDER BY end_time LIMIT $2
     FOR UPDATE SKIP LOCKED),
  gone AS (DELETE FROM idempotency_keys i USING due WHERE i.scope = 's:' || due.session_id)
  UPDATE sessions s SET keys_pruned = true FROM due WHERE s.session_id = due.session_id
  RETURNING s.session_id`;

/**
 * CreateSession keys (agent scope) used longer ago than $1, oldest first, at
 * most $2 of them. An agent never ends, so these go by age: a CreateSession
 * retried after the retention creates a new session (nothing is charged
 * for creating one). Its read is a range of the partial index of migration
 * 017, whose predicate this repeats word for word.
 */
export const PRUNE_AGENT_KEYS_SQL = `DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_keys WHERE scope LIKE 'a:%' AND create_time <= $1::timestamptz ORDER BY create_time LIMIT $2))
  RETURNING scope`;

/**
 * Whether a locked session can no longer settle holds or have approvals
 * decided: it or a parent has ended, or is past its expiry or idle timeout
 * though the sweeper has not got to it, in which case it ends here
 * (EXPIRED, releasing its holds), as a decision would end it. Returns the
 * session that ended (whose forks must then end too) and how to say so.
 */
async function endedChain(
  tx: Queryable,
  s: LockedSession,
  locked: Map<string, LockedSession>,
  nowMs: number,
): Promise<{ sessionId: string; why: string } | undefined> {
  for (const c of [s, ...s.ancestorIds.map((a) => locked.get(a)!)]) {
    if (!isTerminal(c.status)) {
      const lapsed = lapseOf(c, locked, nowMs);
      if (lapsed === undefined) continue;
      await endSessions(tx, [c.sessionId], SessionStatus.EXPIRED, lapseReason(lapsed), nowMs);
      c.status = SessionStatus.EXPIRED;
    }
    return { sessionId: c.sessionId, why: c === s ? `has ended (${SessionStatus[c.status]})` : `has ended with its parent "${c.sessionId}" (${SessionStatus[c.status]})` };
  }
  return undefined;
}

/**
 * Whether a policy limits money (so its currency must match the amounts it
 * is checked against): value limits, and an approval threshold, which is
 * money too (150 EUR is not "above 100" of a threshold in USD).
 */
function limitsValue(policy: SessionPolicy): boolean {
  const c = compilePolicy(policy);
  return WINDOW_KINDS.some((w) => c.limits[w].maxValue !== undefined) || c.maxPerTransaction !== undefined || c.approvalAbove !== undefined;
}

/**
 * A client-chosen session id must not name an agent's audit chain
 * (`agent:<id>`, audit-body.ts): a session's records are chained under its
 * id, and its chain is pruned after it ended, which would take an agent's
 * policy history with it.
 */
function checkSessionId(id: string, field: string): void {
  if (id.startsWith("agent:")) throw new ConnectError(`${field}: "agent:" starts the names of agents' audit chains, not of sessions`, Code.InvalidArgument);
}

/**
 * [the fork's window, the parent's window it must fit in] for ForkSession,
 * in the order checked: each window against the parent's same one, then
 * against every longer parent window that always contains it (a day lies
 * in one week and one month; a week may span two months, so it is not
 * held to one month's rest).
 */
const FORK_WINDOW_CHECKS: readonly (readonly [WindowKind, WindowKind])[] = [
  ...WINDOW_KINDS.map((w) => [w, w] as const),
  ["day", "week"],
  ["day", "month"],
  ...WINDOW_KINDS.filter((w) => w !== "lifetime").map((w) => [w, "lifetime"] as const),
];

/** How a fork's error names the parent's window it did not fit in, when not its own. */
const PARENT_WINDOW: Record<WindowKind, string> = { day: " today", week: " this week", month: " this month", lifetime: " in its lifetime" };

/** The last millisecond of 9999-12-31 UTC: later times cannot be stored as a timestamp everyone reads alike. */
const MAX_TIME_MS = Date.UTC(9999, 11, 31, 23, 59, 59, 999);

function notFound(field: string, what: string, id: string): ConnectError {
  return new ConnectError(`${field}: ${what} "${id}" not found`, Code.NotFound);
}

function validatePolicy(policy: SessionPolicy, field: string): void {
  if (!isValidTimeZone(policy.timeZone)) {
    throw new ConnectError(`${field}.time_zone: "${policy.timeZone}" is not an IANA time zone`, Code.InvalidArgument);
  }
}

/** A keyed call's idempotency key ("" or absent: none) and the hash of its request (services/request-hash.ts). */
export interface KeyedCall {
  readonly idempotencyKey: string;
  readonly requestHash: Uint8Array;
}

/**
 * The store's keyed calls but Authorize and Check (the decision batcher
 * keeps their keys in its batch statement), and the response each stores
 * as its first answer. A key is one session's (an approval's: its
 * session's) or one agent's (CreateSession, UpdateAgentPolicy): reused for
 * another call on the same one, it is refused as a different request.
 */
const KEYED_RESPONSES = {
  capture: ActionRecordSchema,
  void: ActionRecordSchema,
  create_session: CreateSessionResponseSchema,
  fork_session: ForkSessionResponseSchema,
  import_session: ImportSessionResponseSchema,
  extend_session: ExtendSessionResponseSchema,
  end_session: EndSessionResponseSchema,
  revoke_session: RevokeSessionResponseSchema,
  pause_session: PauseSessionResponseSchema,
  resume_session: ResumeSessionResponseSchema,
  approve_approval: ApproveApprovalResponseSchema,
  deny_approval: DenyApprovalResponseSchema,
  cancel_approval: CancelApprovalResponseSchema,
  update_agent_policy: UpdateAgentPolicyResponseSchema,
} as const;
type KeyedMethod = keyof typeof KEYED_RESPONSES;
type KeyedResponse<M extends KeyedMethod> = MessageShape<(typeof KEYED_RESPONSES)[M]>;

/**
 * The calls whose first answers ExportSession carries and ImportSession
 * takes back, with their responses: those kept in a session's own key scope
 * ("s:<id>"), but for approval verdicts, whose approvals stay behind (a
 * retried verdict could not reach its answer without one). CreateSession's
 * and UpdateAgentPolicy's keys are the agent's.
 */
const SESSION_KEY_ANSWERS: Readonly<Record<string, DescMessage>> = (() => {
  const { create_session: _c, update_agent_policy: _u, approve_approval: _a, deny_approval: _d, cancel_approval: _x, ...carried } = KEYED_RESPONSES;
  return { ...carried, check: CheckResponseSchema, authorize: AuthorizeResponseSchema };
})();

/**
 * Serializes the calls with one key that create what owns it (a session,
 * an import), before its first answer is looked up: there is no row to
 * lock yet, and without this concurrent retries would each miss the key
 * and each create a session with its own budget. The two-int4 key space
 * is apart from the bigint locks of the migrations.
 */
async function lockNewKey(tx: Queryable, scope: string, keyed: KeyedCall | undefined): Promise<void> {
  if (!keyed?.idempotencyKey) return;
  await tx.query("SELECT pg_advisory_xact_lock(7734002, hashtext($1))", [`${scope}|${keyed.idempotencyKey}`]);
}

/**
 * The system of record: sessions, agents, usage counters, the action ledger
 * and idempotency keys, on one SQL database. Every change is one
 * transaction; every writer of usage locks the owning rows in one global
 * order, so limits hold across replicas.
 */
export class WardenStore {
  readonly db: Database;
  readonly now: () => number;
  private readonly idempotencyRetentionMs: number;
  readonly spans = new CalendarSpanCache();
  readonly policies = new PolicyCache();
  /** Every session's agent and parents, for whatever locks a session's chain. */
  readonly chains = new SessionChains();
  /** Budget leases of sidecars. */
  readonly leases: LeaseLedger;
  private readonly batcher: DecisionBatcher;
  /** Cache misses of sidecars, read together: a starting sidecar misses many sessions at once. */
  private readonly stateReads: BatchQueue<string, GetSessionStateResponse>;

  constructor(opts: WardenStoreOptions) {
    this.db = opts.db;
    this.now = opts.now ?? Date.now;
    this.idempotencyRetentionMs = opts.idempotencyRetentionMs ?? DEFAULT_IDEMPOTENCY_RETENTION_MS;
    this.stateReads = new BatchQueue({
      maxBatch: 256,
      shards: Math.min(2, this.db.parallelism),
      run: async (ids) => {
        const states = await readSessionStates(this.db, ids);
        return ids.map((id, i) => {
          const value = states.get(id);
          return value === undefined ? { i, ok: false, error: notFound("session_id", "session", id) } : { i, ok: true, value };
        });
      },
    });
    this.batcher = new DecisionBatcher({ db: this.db, now: this.now, policies: this.policies, spans: this.spans, chains: this.chains });
    this.leases = new LeaseLedger({
      db: this.db,
      now: this.now,
      policies: this.policies,
      spans: this.spans,
      chains: this.chains,
      reconcileGraceMs: opts.leaseReconcileGraceMs,
    });
  }

  // ---- sync (sidecars) -------------------------------------------------

  /** A session, its parents and its agent's policy, as a sidecar caches them. */
  sessionState(sessionId: string): Promise<GetSessionStateResponse> {
    return this.stateReads.submitAny(sessionId);
  }

  /** Claims idempotency keys for a sidecar about to decide (lease-ledger.ts, claimKeys). */
  claimKeys(claims: readonly IdempotencyKeyClaim[]): Promise<IdempotencyKeyClaimResult[]> {
    return this.leases.claimKeys(claims);
  }

  /** Changes after a revision, for one agent or all. */
  changes(agentId: string | undefined, fromRevision: bigint, limit?: number): Promise<SessionChanges> {
    return readChanges(this.db, agentId, fromRevision, limit);
  }

  /**
   * The newest revision handed out, once every change up to it has
   * committed: a revision is taken under an advisory lock held until its
   * transaction ends (004_sync_leases.sql), so this waits for the lock.
   * Read without it, a watch starting now (or a change feed) would count a
   * change still in flight as sent, and never send it.
   */
  revision(): Promise<bigint> {
    return committedRevision(this.db);
  }

  /** Which store history the revisions belong to (session-sync.ts, readStoreEpoch). */
  storeEpoch(): Promise<string> {
    return readStoreEpoch(this.db);
  }

  // ---- decisions -------------------------------------------------------

  /** Authorize or Check: decided, charged and recorded atomically. */
  decide(req: DecideRequest): Promise<DecideResponse> {
    return this.batcher.decide(req);
  }

  /**
   * Counts a failed request against a session's usage, and ends the session
   * as FAILED when that reaches its circuit breaker's `fail_after_errors`
   * (the lowest of the session's, its parents' and its agent's). Best
   * effort: the caller is answered with its error either way. Resolves
   * when done (tests wait on it; the service does not).
   */
  async recordError(sessionId: string): Promise<void> {
    try {
      const { rows } = await this.db.query<{ error_count: string; status: number; ancestor_ids: string[]; agent_id: string }>(
        "UPDATE sessions SET error_count = error_count + 1 WHERE session_id = $1 RETURNING error_count, status, ancestor_ids, agent_id",
        [sessionId],
      );
      const r = rows[0];
      if (r === undefined || isTerminal(r.status)) return;
      const scopes = await this.db.query<{ key: string; revision: string; policy: Uint8Array | null }>(
        `SELECT 's:' || session_id AS key, revision, policy FROM sessions WHERE session_id = ANY($1::text[])
         UNION ALL SELECT 'a:' || agent_id, revision, policy FROM agents WHERE agent_id = $2`,
        [[sessionId, ...r.ancestor_ids], r.agent_id],
      );
      const threshold = tripThreshold(
        scopes.rows.map((p) => this.policies.get(p.key, BigInt(p.revision), p.policy)),
        "failAfterErrors",
      );
      if (!trips(BigInt(r.error_count), threshold)) return;
      await this.terminate(sessionId, SessionStatus.FAILED, breakerFailReason(BigInt(r.error_count)));
    } catch {
      // Counting is best effort, and a session that ended meanwhile (a
      // concurrent error tripped it first) stays as it ended.
    }
  }

  // ---- sessions --------------------------------------------------------

  /** Reads one session with its usage. */
  async getSession(sessionId: string, q: Queryable = this.db): Promise<Session> {
    const { rows } = await q.query<SessionRow>(`SELECT ${SESSION_COLUMNS} FROM sessions WHERE session_id = $1`, [sessionId]);
    if (rows.length === 0) throw notFound("session_id", "session", sessionId);
    return (await sessionsOf(q, rows, this.now(), this.spans, this.policies))[0]!;
  }

  /** Creates a session (and its agent, if new). */
  async createSession(req: CreateSessionRequest, requestHash: Uint8Array): Promise<Session> {
    validatePolicy(req.policy!, "policy");
    const nowMs = this.now();
    const expireMs =
      req.expiration.case === "ttl" ? nowMs + durationMs(req.expiration.value) : timestampMs(req.expiration.value!);
    const sessionId = req.sessionId || newId("ses", nowMs);
    checkSessionId(sessionId, "session_id");
    const scope = `a:${req.agentId}`;
    const keyed = { idempotencyKey: req.idempotencyKey, requestHash };
    const out = await this.db.transaction(async (tx) => {
      await lockNewKey(tx, scope, keyed);
      const replayed = (await this.firstAnswer(tx, scope, "create_session", keyed, nowMs))?.session;
      if (replayed !== undefined) return replayed;
      // After the key: a retry that comes after the expire_time it asked
      // for still gets the first answer, not "must be in the future".
      const expiryField = req.expiration.case === "ttl" ? "ttl" : "expire_time";
      if (expireMs <= nowMs) throw new ConnectError(`${expiryField}: must be in the future`, Code.InvalidArgument);
      if (expireMs > MAX_TIME_MS) throw new ConnectError(`${expiryField}: the session would end after 9999-12-31`, Code.InvalidArgument);
      await tx.query(
        "INSERT INTO agents (agent_id, create_time, update_time) VALUES ($1, $2::timestamptz, $2::timestamptz) ON CONFLICT DO NOTHING",
        [req.agentId, iso(nowMs)],
      );
      await this.checkAgentCurrency(tx, req.agentId, req.policy!);
      await this.insertSession(tx, {
        sessionId,
        agentId: req.agentId,
        parentId: null,
        ancestors: [],
        owner: req.owner,
        description: req.description,
        labels: req.labels,
        policy: req.policy!,
        nowMs,
        expireMs,
        idleTimeoutMs: req.idleTimeout === undefined ? null : durationMs(req.idleTimeout),
      });
      await recordEvent(tx, { type: "session.created", sessionId, agentId: req.agentId, data: { status: "ACTIVE", expire_time: iso(expireMs) }, nowMs });
      const session = await this.getSession(sessionId, tx);
      await this.saveAnswer(tx, scope, "create_session", keyed, async () => ({ session }), nowMs);
      return session;
    });
    return out;
  }

  private async checkAgentCurrency(tx: Queryable, agentId: string, policy: SessionPolicy, field = "policy.currency_code"): Promise<void> {
    // FOR SHARE: an agent policy changing its currency meanwhile waits (see updateAgentPolicy).
    const { rows } = await tx.query<{ policy: Uint8Array | null }>("SELECT policy FROM agents WHERE agent_id = $1 FOR SHARE", [agentId]);
    const bytes = rows[0]?.policy ?? null;
    if (bytes === null) return;
    const agentPolicy = fromBinary(SessionPolicySchema, bytes);
    if (limitsValue(agentPolicy) && agentPolicy.currencyCode !== policy.currencyCode) {
      throw new ConnectError(
        `${field}: ${policy.currencyCode} differs from agent ${agentId}'s policy currency ${agentPolicy.currencyCode}`,
        Code.FailedPrecondition,
      );
    }
  }

  private async insertSession(
    tx: Queryable,
    s: {
      sessionId: string;
      agentId: string;
      parentId: string | null;
      ancestors: string[];
      owner: string;
      description: string;
      labels: Record<string, string>;
      policy: SessionPolicy;
      nowMs: number;
      expireMs: number;
      idleTimeoutMs: number | null;
      status?: SessionStatus;
      statusReason?: string;
      createMs?: number;
      lastActivityMs?: number;
      endMs?: number | null;
      counts?: [bigint, bigint, bigint, bigint];
    },
  ): Promise<void> {
    const { rows } = await tx.query(
      `INSERT INTO sessions (session_id, agent_id, parent_session_id, ancestor_ids, owner, description, labels, policy,
                             status, status_reason, create_time, update_time, expire_time, idle_timeout_ms,
                             last_activity_time, end_time, request_count, error_count, denial_count, processing_ns,
                             idle_check_time)
       VALUES ($1, $2, $3, $4::text[], $5, $6, $7::jsonb, decode($8, 'base64'), $9, $10, $11::timestamptz,
               $12::timestamptz, $13::timestamptz, $14::bigint, $15::timestamptz, $16::timestamptz, $17, $18, $19, $20,
               $15::timestamptz + $14::bigint * interval '1 millisecond')
       ON CONFLICT (session_id) DO NOTHING RETURNING session_id`,
      [
        s.sessionId,
        s.agentId,
        s.parentId,
        s.ancestors,
        s.owner,
        s.description,
        JSON.stringify(s.labels),
        Buffer.from(toBinary(SessionPolicySchema, s.policy)).toString("base64"),
        s.status ?? SessionStatus.ACTIVE,
        s.statusReason ?? "",
        iso(s.createMs ?? s.nowMs),
        iso(s.nowMs),
        iso(s.expireMs),
        s.idleTimeoutMs,
        iso(s.lastActivityMs ?? s.nowMs),
        s.endMs == null ? null : iso(s.endMs),
        ...(s.counts ?? [0n, 0n, 0n, 0n]).map(String),
      ],
    );
    if (rows.length === 0) throw new ConnectError(`session_id: session "${s.sessionId}" already exists`, Code.AlreadyExists);
  }

  /** Lists sessions, newest first, with filters and keyset paging. */
  async listSessions(req: ListSessionsRequest): Promise<{ sessions: Session[]; nextPageToken: string }> {
    const size = req.pageSize === 0 ? DEFAULT_PAGE : req.pageSize;
    // canonicalJson sorts the labels: their order means nothing to `@>`.
    const query = { agent_id: req.agentId, status: req.status, labels: req.labels };
    const after = readPageToken(req.pageToken, { t: "number", id: "string" }, query);
    const where: string[] = [];
    const params: unknown[] = [];
    const p = (v: unknown) => {
      params.push(v);
      return `$${params.length}`;
    };
    if (req.agentId !== "") where.push(`agent_id = ${p(req.agentId)}`);
    if (req.status !== SessionStatus.UNSPECIFIED) where.push(`status = ${p(req.status)}`);
    if (Object.keys(req.labels).length > 0) where.push(`labels @> ${p(JSON.stringify(req.labels))}::jsonb`);
    if (after !== undefined) where.push(`(create_time, session_id) < (${p(iso(after.t))}::timestamptz, ${p(after.id)})`);
    const { rows } = await this.db.query<SessionRow>(
      `SELECT ${SESSION_COLUMNS} FROM sessions ${where.length > 0 ? `WHERE ${where.join(" AND ")}` : ""}
        ORDER BY create_time DESC, session_id DESC LIMIT ${size + 1}`,
      params,
    );
    const page = rows.slice(0, size);
    const last = page.at(-1);
    return {
      sessions: await sessionsOf(this.db, page, this.now(), this.spans, this.policies),
      nextPageToken: rows.length > size && last !== undefined ? pageToken({ t: last.create_time.getTime(), id: last.session_id }, query) : "",
    };
  }

  /**
   * Runs `fn` with a session, its ancestors, its agent and (optionally) its
   * descendants locked, in the global lock order.
   */
  private async withLocked<T>(
    tx: Queryable,
    sessionId: string,
    withDescendants: boolean,
    fn: (s: LockedSession, locked: Map<string, LockedSession>, descendants: string[]) => Promise<T>,
  ): Promise<T> {
    // The forks come in the same statement: one round trip less while
    // nothing is locked yet, on every revoke, end and expiry.
    const { rows } = await tx.query<{ agent_id: string; ancestor_ids: string[]; descendants?: string[] }>(
      withDescendants
        ? `SELECT agent_id, ancestor_ids, ARRAY(${DESCENDANTS_SQL}) AS descendants FROM sessions WHERE session_id = $1`
        : "SELECT agent_id, ancestor_ids FROM sessions WHERE session_id = $1",
      [sessionId],
    );
    const chain = rows[0];
    if (chain === undefined) throw notFound("session_id", "session", sessionId);
    const descendants = chain.descendants ?? [];
    const ids = [...new Set([sessionId, ...chain.ancestor_ids, ...descendants])].sort();
    const locked = await lockScopes(tx, ids, [chain.agent_id], this.policies);
    return fn(locked.sessions.get(sessionId)!, locked.sessions, descendants);
  }

  /**
   * Ends a session (and its forks) in a terminal status; open holds are released.
   *
   * This and the other changes sidecars must see (pause, resume, extend)
   * return the session as read after the commit, not inside the
   * transaction: the commit (and its NOTIFY to every replica's change
   * feed) then comes three queries sooner, and the locks go sooner too.
   */
  async terminate(sessionId: string, status: SessionStatus, reason: string, keyed?: KeyedCall): Promise<Session> {
    const method = status === SessionStatus.REVOKED ? "revoke_session" : "end_session";
    let replayed: Session | undefined;
    const refused = await this.db.transaction((tx) =>
      this.withLocked(tx, sessionId, true, async (s, locked, descendants) => {
        const nowMs = this.now();
        // A retry finds the session ended by the call it repeats.
        replayed = (await this.firstAnswer(tx, `s:${sessionId}`, method, keyed, nowMs))?.session;
        if (replayed !== undefined) return undefined;
        if (isTerminal(s.status)) {
          throw new ConnectError(`session_id: session "${sessionId}" has already ended (${SessionStatus[s.status]})`, Code.FailedPrecondition);
        }
        const live = descendants.filter((d) => !isTerminal(locked.get(d)!.status));
        // Past its expiry or idle timeout it ended then, whether or not the
        // sweeper got to it: it ends EXPIRED (kept), and the caller is told.
        const why = lapseOf(s, locked, nowMs);
        if (why !== undefined) {
          await endSessions(tx, [sessionId, ...live], SessionStatus.EXPIRED, lapseReason(why), nowMs);
          return { sessionId, why: "has already ended (EXPIRED)" };
        }
        // So did a fork whose parent ended or lapsed (see endedChain).
        const ended = await endedChain(tx, s, locked, nowMs);
        if (ended !== undefined) return ended;
        await endSessions(tx, [sessionId, ...live], status, reason, nowMs);
        await this.saveAnswer(tx, `s:${sessionId}`, method, keyed, async () => ({ session: await this.getSession(sessionId, tx) }), nowMs);
        return undefined;
      }),
    );
    if (replayed !== undefined) return replayed;
    await this.refuseEndedChain(sessionId, refused);
    // A fork created meanwhile (on another replica, committed while this
    // waited for the parent's lock) was not among the forks read before
    // the locks: it ends now, with its parent.
    await endForksOf(this.db, this.policies, [sessionId], this.now).catch(() => {});
    return this.getSession(sessionId);
  }

  /**
   * After the commit that found `sessionId` ended with `refused` (a lapse
   * kept, or a parent found ended): that session's forks end too, and the
   * caller is told.
   */
  private async refuseEndedChain(sessionId: string, refused: { sessionId: string; why: string } | undefined): Promise<void> {
    if (refused === undefined) return;
    if (refused.sessionId !== sessionId) await endForksOf(this.db, this.policies, [refused.sessionId], this.now).catch(() => {});
    throw new ConnectError(`session_id: session "${sessionId}" ${refused.why}`, Code.FailedPrecondition);
  }

  /** Pauses or resumes a session. */
  async setPaused(sessionId: string, paused: boolean, reason: string, keyed?: KeyedCall): Promise<Session> {
    const method = paused ? "pause_session" : "resume_session";
    let replayed: Session | undefined;
    const refused = await this.db.transaction((tx) =>
      // A resume restarts its forks' idle clocks too, so they are locked with it.
      this.withLocked(tx, sessionId, !paused, async (s, locked, descendants) => {
        const nowMs = this.now();
        // A retry finds the session paused (or resumed) by the call it repeats.
        replayed = (await this.firstAnswer(tx, `s:${sessionId}`, method, keyed, nowMs))?.session;
        if (replayed !== undefined) return undefined;
        const lapsed = lapseOf(s, locked, nowMs);
        // A fork whose parent ended or lapsed ended with it (kept).
        const ended = isTerminal(s.status) || lapsed !== undefined ? undefined : await endedChain(tx, s, locked, nowMs);
        if (ended !== undefined) return ended;
        const from = paused ? SessionStatus.ACTIVE : SessionStatus.PAUSED;
        if (s.status !== from || lapsed !== undefined) {
          throw new ConnectError(
            `session_id: session "${sessionId}" is ${SessionStatus[s.status]}${lapsed ? " and lapsed" : ""}; only ${SessionStatus[from]} sessions can be ${paused ? "paused" : "resumed"}`,
            Code.FailedPrecondition,
          );
        }
        // Approvals whose deadline passed during the pause, and that nobody
        // (the sweeper, a watcher) has expired yet, time out now, while the
        // session is still paused: the clock approves nothing of a session
        // stopped at its deadline (timeoutVerdict), whenever it is applied.
        if (!paused) {
          const live = [sessionId, ...descendants.filter((d) => !isTerminal(locked.get(d)!.status))];
          const { rows: overdue } = await tx.query<{ approval_id: string; session_id: string }>(
            `SELECT approval_id, session_id FROM approvals
              WHERE session_id = ANY($1::text[]) AND status = ${ApprovalStatus.PENDING} AND expire_time <= $2::timestamptz ORDER BY approval_id`,
            [live, iso(nowMs)],
          );
          // Every row locked before the first settlement takes a revision (004_sync_leases.sql).
          const approvals = [];
          for (const o of overdue) approvals.push({ a: (await lockApproval(tx, o.approval_id))!, ttlMs: locked.get(o.session_id)!.policy.holdTtlMs });
          for (const { a, ttlMs } of approvals) await settleApproval(tx, a, timeoutVerdict(a.approval, sessionId), ttlMs, nowMs);
        }
        await tx.query(
          // A resume starts the circuit breaker's count of denials again,
          // and the idle clock, which stood still while paused (see lapse).
          `UPDATE sessions SET status = $2, status_reason = $3, update_time = $4::timestamptz, revision = warden_next_revision(),
                  denial_run = 0, denial_run_since = $4::timestamptz,
                  last_activity_time = CASE WHEN $5 THEN last_activity_time ELSE $4::timestamptz END,
                  idle_check_time = CASE WHEN $5 THEN idle_check_time ELSE $4::timestamptz END
            WHERE session_id = $1`,
          [sessionId, paused ? SessionStatus.PAUSED : SessionStatus.ACTIVE, reason, iso(nowMs), paused],
        );
        // So do its live forks', which stood still too: their calls were
        // all denied PARENT_INACTIVE meanwhile (see lapse). Their idle check
        // time, like the session's, is a lower bound the sweeper moves on;
        // the new revision brings their new last activity to sidecars.
        const live = paused ? [] : descendants.filter((d) => !isTerminal(locked.get(d)!.status));
        if (live.length > 0) {
          await tx.query(
            `UPDATE sessions SET last_activity_time = $2::timestamptz, idle_check_time = $2::timestamptz, revision = warden_next_revision()
              WHERE session_id = ANY($1::text[])`,
            [live, iso(nowMs)],
          );
        }
        await recordEvent(tx, {
          type: paused ? "session.paused" : "session.resumed",
          sessionId,
          agentId: s.agentId,
          data: { status: paused ? "PAUSED" : "ACTIVE", reason },
          nowMs,
        });
        await this.saveAnswer(tx, `s:${sessionId}`, method, keyed, async () => ({ session: await this.getSession(sessionId, tx) }), nowMs);
        return undefined;
      }),
    );
    if (replayed !== undefined) return replayed;
    await this.refuseEndedChain(sessionId, refused);
    return this.getSession(sessionId);
  }

  /**
   * The first answer to a keyed call in `scope` ("s:<session>" for a
   * session and its approvals, "a:<agent>" for an agent) that this one
   * retries; undefined when there is no key or it is new. Call it under the
   * owner's lock, before judging any state: a retry finds the state its
   * first call left.
   */
  private async firstAnswer<M extends KeyedMethod>(
    tx: Queryable,
    scope: string,
    method: M,
    keyed: KeyedCall | undefined,
    nowMs: number,
  ): Promise<KeyedResponse<M> | undefined> {
    if (!keyed?.idempotencyKey) return undefined;
    const prior = (await loadIdempotency(tx, [{ scope, key: keyed.idempotencyKey }], nowMs)).get(`${scope}|${keyed.idempotencyKey}`);
    if (prior === undefined) return undefined;
    return replayFirstAnswer(prior, method, keyed.requestHash, keyed.idempotencyKey, (b) => fromBinary(KEYED_RESPONSES[method], b) as KeyedResponse<M>);
  }

  /** Stores the answer to a keyed call (built only when there is a key), in the transaction that made its change. */
  private async saveAnswer<M extends KeyedMethod>(
    tx: Queryable,
    scope: string,
    method: M,
    keyed: KeyedCall | undefined,
    answer: () => Promise<MessageInitShape<(typeof KEYED_RESPONSES)[M]>>,
    nowMs: number,
  ): Promise<void> {
    if (!keyed?.idempotencyKey) return;
    const schema = KEYED_RESPONSES[method];
    const response = toBinary(schema, create(schema, await answer()) as never);
    await saveIdempotency(tx, [{ scope, key: keyed.idempotencyKey, method, requestHash: keyed.requestHash, response }], nowMs);
  }

  /** Moves a live session's expiry later. */
  async extendSession(req: ExtendSessionRequest, requestHash: Uint8Array = new Uint8Array(0)): Promise<Session> {
    const keyed = { idempotencyKey: req.idempotencyKey, requestHash };
    let replayed: Session | undefined;
    const refused = await this.db.transaction((tx) =>
      this.withLocked(tx, req.sessionId, false, async (s, locked) => {
        const nowMs = this.now();
        // A retry gets the first answer, whatever happened since: extending
        // by a duration twice would grant the time twice.
        replayed = (await this.firstAnswer(tx, `s:${req.sessionId}`, "extend_session", keyed, nowMs))?.session;
        if (replayed !== undefined) return undefined;
        if (isTerminal(s.status) || lapseOf(s, locked, nowMs) !== undefined) {
          throw new ConnectError(`session_id: session "${req.sessionId}" has ended and cannot be extended`, Code.FailedPrecondition);
        }
        // A fork whose parent ended or lapsed ended with it (kept).
        const ended = await endedChain(tx, s, locked, nowMs);
        if (ended !== undefined) return ended;
        const expireMs =
          req.extension.case === "extendBy" ? s.expireMs + durationMs(req.extension.value) : timestampMs(req.extension.value!);
        const field = req.extension.case === "extendBy" ? "extend_by" : "expire_time";
        if (expireMs <= s.expireMs) {
          throw new ConnectError(`${field}: must be later than the current expiry`, Code.InvalidArgument);
        }
        // Each part is in range (validation.ts); their sum may not be.
        if (expireMs > MAX_TIME_MS) throw new ConnectError(`${field}: the session would end after 9999-12-31`, Code.InvalidArgument);
        for (const a of s.ancestorIds) {
          const parent = await tx.query<{ expire_time: Date }>("SELECT expire_time FROM sessions WHERE session_id = $1", [a]);
          if (expireMs > parent.rows[0]!.expire_time.getTime()) {
            throw new ConnectError(`${field}: a fork cannot outlive its parent session "${a}"`, Code.FailedPrecondition);
          }
        }
        await tx.query(
          "UPDATE sessions SET expire_time = $2::timestamptz, update_time = $3::timestamptz, revision = warden_next_revision() WHERE session_id = $1",
          [req.sessionId, iso(expireMs), iso(nowMs)],
        );
        await recordEvent(tx, {
          type: "session.extended",
          sessionId: req.sessionId,
          agentId: s.agentId,
          data: { previous_expire_time: iso(s.expireMs), expire_time: iso(expireMs) },
          nowMs,
        });
        await this.saveAnswer(tx, `s:${req.sessionId}`, "extend_session", keyed, async () => ({ session: await this.getSession(req.sessionId, tx) }), nowMs);
        return undefined;
      }),
    );
    if (replayed !== undefined) return replayed;
    await this.refuseEndedChain(req.sessionId, refused);
    return this.getSession(req.sessionId);
  }

  /** Forks a child session whose limits fit in what its parents have left. */
  async forkSession(req: ForkSessionRequest, requestHash: Uint8Array): Promise<Session> {
    validatePolicy(req.policy!, "policy");
    const nowMs = this.now();
    const scope = `s:${req.parentSessionId}`;
    const keyed = { idempotencyKey: req.idempotencyKey, requestHash };
    return this.db.transaction((tx) =>
      this.withLocked(tx, req.parentSessionId, false, async (parent, locked) => {
        const replayed = (await this.firstAnswer(tx, scope, "fork_session", keyed, nowMs))?.session;
        if (replayed !== undefined) return replayed;
        // Every ancestor too: a fork under an ended (or lapsed) grandparent
        // would be ACTIVE under a chain that has ended, and missed by the
        // ending of its forks, which read them before this one existed.
        for (const c of [parent, ...parent.ancestorIds.map((a) => locked.get(a)!)]) {
          if (c.status !== SessionStatus.ACTIVE || lapseOf(c, locked, nowMs) !== undefined) {
            const whose = c === parent ? "" : ` (its parent "${c.sessionId}" is not)`;
            throw new ConnectError(`parent_session_id: session "${req.parentSessionId}" is not active${whose}`, Code.FailedPrecondition);
          }
        }
        if (parent.ancestorIds.length >= MAX_FORK_DEPTH) {
          throw new ConnectError(
            `parent_session_id: session "${req.parentSessionId}" is a fork ${parent.ancestorIds.length} deep; forks go at most ${MAX_FORK_DEPTH} deep`,
            Code.FailedPrecondition,
          );
        }
        const child = compilePolicy(req.policy!);
        if (child.currency !== parent.policy.currency) {
          throw new ConnectError(
            `policy.currency_code: ${child.currency} differs from the parent's currency ${parent.policy.currency}`,
            Code.InvalidArgument,
          );
        }
        // Each limit of the child must fit in what every ancestor has left.
        const chain = [parent, ...parent.ancestorIds.map((a) => locked.get(a)!)];
        const addresses = chain.flatMap((p) =>
          WINDOW_KINDS.map((w) => currentAddress(`s:${p.sessionId}`, p.policy, w, nowMs, this.spans)),
        );
        const counters = await loadCounters(tx, addresses);
        const field: Record<WindowKind, string> = { day: "daily", week: "weekly", month: "monthly", lifetime: "lifetime" };
        for (const p of chain) {
          // Against the parent's same window, then the longer ones a
          // shorter window spends from too.
          for (const [w, pw] of FORK_WINDOW_CHECKS) {
            const used = totalsOf(counters.get(`s:${p.sessionId}|${pw}|${spanOf(p.policy, pw, nowMs, this.spans)?.startMs ?? LIFETIME_START_MS}`))!;
            const pl = p.policy.limits[pw];
            const cl = child.limits[w];
            const where = pw === w ? "" : PARENT_WINDOW[pw];
            if (pl.maxValue !== undefined && cl.maxValue !== undefined && cl.maxValue > pl.maxValue - used.value) {
              throw new ConnectError(
                `policy.${field[w]}.max_value_micros: ${formatMoney(cl.maxValue, child.currency)} is more than session "${p.sessionId}" has left${where} (${formatMoney(pl.maxValue - used.value, child.currency)})`,
                Code.FailedPrecondition,
              );
            }
            if (pl.maxActions !== undefined && cl.maxActions !== undefined && cl.maxActions > pl.maxActions - used.actions) {
              throw new ConnectError(
                `policy.${field[w]}.max_actions: ${cl.maxActions} is more than session "${p.sessionId}" has left${where} (${pl.maxActions - used.actions})`,
                Code.FailedPrecondition,
              );
            }
          }
          if (p.policy.maxPerTransaction !== undefined && child.maxPerTransaction !== undefined && child.maxPerTransaction > p.policy.maxPerTransaction) {
            throw new ConnectError(
              `policy.max_per_transaction_micros: above the per-transaction limit of session "${p.sessionId}"`,
              Code.FailedPrecondition,
            );
          }
        }
        const expireMs =
          req.expiration.case === "ttl"
            ? nowMs + durationMs(req.expiration.value)
            : req.expiration.case === "expireTime"
              ? timestampMs(req.expiration.value)
              : parent.expireMs;
        const expiryField = req.expiration.case === "ttl" ? "ttl" : "expire_time";
        if (expireMs <= nowMs) throw new ConnectError(`${expiryField}: must be in the future`, Code.InvalidArgument);
        if (expireMs > Math.min(...chain.map((c) => c.expireMs))) {
          throw new ConnectError(`${expiryField}: a fork cannot outlive its parent session`, Code.FailedPrecondition);
        }
        const sessionId = req.sessionId || newId("ses", nowMs);
        checkSessionId(sessionId, "session_id");
        const { rows } = await tx.query<{ owner: string }>("SELECT owner FROM sessions WHERE session_id = $1", [parent.sessionId]);
        await this.insertSession(tx, {
          sessionId,
          agentId: parent.agentId,
          parentId: parent.sessionId,
          ancestors: [parent.sessionId, ...parent.ancestorIds],
          owner: rows[0]!.owner,
          description: req.description,
          labels: req.labels,
          policy: req.policy!,
          nowMs,
          expireMs,
          idleTimeoutMs: req.idleTimeout === undefined ? null : durationMs(req.idleTimeout),
        });
        await recordEvent(tx, {
          type: "session.created",
          sessionId,
          agentId: parent.agentId,
          data: { status: "ACTIVE", expire_time: iso(expireMs), parent_session_id: parent.sessionId },
          nowMs,
        });
        const session = await this.getSession(sessionId, tx);
        await this.saveAnswer(tx, scope, "fork_session", keyed, async () => ({ session }), nowMs);
        return session;
      }),
    );
  }

  /** A self-contained snapshot: session, its counters and its history. */
  async exportSession(sessionId: string): Promise<SessionSnapshot> {
    return this.db.transaction(async (tx) => {
      // One snapshot for every read below: a capture committing between the
      // counters and the history would be in neither (held in the former,
      // settled in the latter), and the import would restore no spend of it.
      await tx.query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY");
      const session = await this.getSession(sessionId, tx);
      // The stored (current) window of each kind; never-used ones are left out.
      const stored = (await loadCounters(tx, [{ scopeKey: `s:${sessionId}`, window: "lifetime", startMs: LIFETIME_START_MS }])).scopes.get(`s:${sessionId}`)!;
      const counters = WINDOW_KINDS.map((w) => stored[w]).filter((c) => !Number.isNaN(c.startMs));
      const actions = await tx.query<ActionRow>(`SELECT ${ACTION_COLUMNS} FROM actions WHERE session_id = $1 ORDER BY seq`, [sessionId]);
      // First answers only: a key a sidecar is still deciding (a claim) is
      // that sidecar's to answer, at this store. See SESSION_KEY_ANSWERS.
      const keys = await tx.query<{ key: string; method: string; request_hash: Uint8Array; response: Uint8Array; create_time: Date; action_id: string | null }>(
        `SELECT key, method, request_hash, response, create_time, action_id FROM idempotency_keys
          WHERE scope = $1 AND response IS NOT NULL AND method = ANY($2::text[]) ORDER BY create_time, key`,
        [`s:${sessionId}`, Object.keys(SESSION_KEY_ANSWERS)],
      );
      return create(SessionSnapshotSchema, {
        formatVersion: 1,
        exportTime: timestampFromMs(this.now()),
        session,
        counters: counters.map((c) =>
          create(UsageCounterSchema, {
            window: c.window,
            windowStartTime: timestampFromMs(c.startMs),
            committedValueMicros: c.committedValue,
            heldValueMicros: c.heldValue,
            committedActions: c.committedActions,
            heldActions: c.heldActions,
          }),
        ),
        actions: actions.rows.map(actionRecordOf),
        idempotencyKeys: keys.rows.map((k) =>
          create(IdempotencyKeyAnswerSchema, {
            idempotencyKey: k.key,
            method: k.method,
            requestHash: k.request_hash,
            response: k.response,
            createTime: timestampFromMs(k.create_time.getTime()),
            actionId: k.action_id ?? "",
          }),
        ),
      });
    });
  }

  /**
   * Recreates a session from a snapshot, with its counters and history. A
   * fork whose parent is not in this store comes back as a root session.
   */
  async importSession(snap: SessionSnapshot, keyed?: KeyedCall): Promise<Session> {
    if (snap.formatVersion !== 1) {
      throw new ConnectError(`snapshot.format_version: ${snap.formatVersion} is not supported (want 1)`, Code.InvalidArgument);
    }
    const s = snap.session!;
    if (s.policy === undefined) throw new ConnectError("snapshot.session.policy: required", Code.InvalidArgument);
    validatePolicy(s.policy, "snapshot.session.policy");
    for (const [field, id] of [["session_id", s.sessionId], ["agent_id", s.agentId]] as const) {
      if (!/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/.test(id)) throw new ConnectError(`snapshot.session.${field}: malformed id`, Code.InvalidArgument);
    }
    checkSessionId(s.sessionId, "snapshot.session.session_id");
    // A snapshot is a client's file: what the ledger would choke on later
    // (an unknown status, a negative amount) is refused here, by name.
    if (SessionStatus[s.status] === undefined) throw new ConnectError(`snapshot.session.status: ${s.status} is not a session status`, Code.InvalidArgument);
    let heldTotal = 0n;
    for (const [i, a] of snap.actions.entries()) {
      if (ActionStatus[a.status] === undefined) throw new ConnectError(`snapshot.actions[${i}].status: ${a.status} is not an action status`, Code.InvalidArgument);
      for (const [field, m] of [["held_amount", a.heldAmount], ["captured_amount", a.capturedAmount], ["written_off_amount", a.writtenOffAmount]] as const) {
        if (m !== undefined && m.amountMicros < 0n) throw new ConnectError(`snapshot.actions[${i}].${field}: cannot be negative`, Code.InvalidArgument);
        // Counted in the session's windows, and captured, as its currency.
        if (m !== undefined && m.currencyCode !== "" && m.currencyCode !== s.policy.currencyCode) {
          throw new ConnectError(`snapshot.actions[${i}].${field}.currency_code: ${m.currencyCode} differs from the session's currency ${s.policy.currencyCode}`, Code.InvalidArgument);
        }
      }
      if (a.status === ActionStatus.HELD) {
        // The sweeper releases a hold at its expiry: without one, never.
        if (a.holdExpireTime === undefined) throw new ConnectError(`snapshot.actions[${i}].hold_expire_time: required for an open hold`, Code.InvalidArgument);
        heldTotal += a.heldAmount?.amountMicros ?? 0n;
      }
    }
    // Every window holds them all: a total past int64 could not be stored.
    if (heldTotal > INT64_MAX) {
      throw new ConnectError(`snapshot.actions: the amounts held add up to more than ${INT64_MAX} micros`, Code.InvalidArgument);
    }
    // First answers are replayed as they are: each must be one.
    const answered = new Set<string>();
    for (const [i, k] of snap.idempotencyKeys.entries()) {
      const schema = SESSION_KEY_ANSWERS[k.method];
      if (schema === undefined) throw new ConnectError(`snapshot.idempotency_keys[${i}].method: "${k.method}" is not a call keyed in a session`, Code.InvalidArgument);
      try {
        fromBinary(schema, k.response);
      } catch {
        throw new ConnectError(`snapshot.idempotency_keys[${i}].response: not a ${schema.typeName}`, Code.InvalidArgument);
      }
      if (answered.has(k.idempotencyKey)) {
        throw new ConnectError(`snapshot.idempotency_keys[${i}].idempotency_key: "${k.idempotencyKey}" appears twice`, Code.InvalidArgument);
      }
      answered.add(k.idempotencyKey);
    }
    const nowMs = this.now();
    const ms = (t: Timestamp | undefined, fallback: number) => (t === undefined ? fallback : timestampMs(t));
    const scope = `s:${s.sessionId}`;
    // The import's own key lives with the agent's, pruned by age: a
    // session's keys go once it has ended a while, and an imported session
    // may have ended long before it came here.
    const keyScope = `a:${s.agentId}`;
    let replayed: Session | undefined;
    const session = await this.db.transaction(async (tx) => {
      await lockNewKey(tx, keyScope, keyed);
      replayed = (await this.firstAnswer(tx, keyScope, "import_session", keyed, nowMs))?.session;
      if (replayed !== undefined) return replayed;
      if (keyed?.idempotencyKey && answered.has(keyed.idempotencyKey)) {
        throw new ConnectError(`idempotency_key: "${keyed.idempotencyKey}" is one of the snapshot's keys; use another`, Code.InvalidArgument);
      }
      await tx.query(
        "INSERT INTO agents (agent_id, create_time, update_time) VALUES ($1, $2::timestamptz, $2::timestamptz) ON CONFLICT DO NOTHING",
        [s.agentId, iso(nowMs)],
      );
      let ancestors: string[] = [];
      let parentId: string | null = null;
      if (s.parentSessionId !== "") {
        const { rows } = await tx.query<{ ancestor_ids: string[]; agent_id: string }>("SELECT ancestor_ids, agent_id FROM sessions WHERE session_id = $1", [s.parentSessionId]);
        // Ids are chosen by clients, so another agent's session may bear the
        // parent's id here: a fork spends from its parent, never from that.
        if (rows[0] !== undefined && rows[0].agent_id !== s.agentId) {
          throw new ConnectError(
            `snapshot.session.parent_session_id: session "${s.parentSessionId}" here belongs to another agent, not to ${s.agentId}`,
            Code.FailedPrecondition,
          );
        }
        if (rows[0] !== undefined) {
          parentId = s.parentSessionId;
          ancestors = [s.parentSessionId, ...rows[0].ancestor_ids];
          if (ancestors.length > MAX_FORK_DEPTH) {
            throw new ConnectError(
              `snapshot.session.parent_session_id: session "${parentId}" here is a fork ${ancestors.length - 1} deep; forks go at most ${MAX_FORK_DEPTH} deep`,
              Code.FailedPrecondition,
            );
          }
        }
      }

      // The scopes the import charges besides the session (its parents and
      // agent), locked in the global order before anything else of theirs.
      const locked = await lockScopes(tx, ancestors, [s.agentId], this.policies);
      // As ForkSession: a live fork goes under no chain that has ended (or
      // lapsed). It would be ACTIVE there for good: its parent's ending,
      // which ends forks, has already happened. An ended one is history.
      const live = s.status === SessionStatus.UNSPECIFIED || !isTerminal(s.status);
      for (const id of live ? ancestors : []) {
        const c = locked.sessions.get(id)!;
        if (isTerminal(c.status) || lapseOf(c, locked.sessions, nowMs) !== undefined) {
          const what = id === parentId ? "has ended" : `is under session "${id}", which has ended`;
          throw new ConnectError(`snapshot.session.parent_session_id: session "${parentId}" here ${what}: a live fork cannot be re-attached to it`, Code.FailedPrecondition);
        }
      }
      // As ForkSession: a fork spends in its parent's currency, or its
      // amounts would count there as the parent's units.
      const parentCurrency = parentId === null ? undefined : locked.sessions.get(parentId)?.policy.currency;
      if (parentCurrency !== undefined && parentCurrency !== s.policy!.currencyCode) {
        throw new ConnectError(
          `snapshot.session.policy.currency_code: ${s.policy!.currencyCode} differs from the parent's currency ${parentCurrency} (session "${parentId}")`,
          Code.InvalidArgument,
        );
      }
      // As CreateSession: amounts in another currency than the agent's
      // value limits would be counted against them as if they were its.
      await this.checkAgentCurrency(tx, s.agentId, s.policy!, "snapshot.session.policy.currency_code");
      const u = s.usage;
      await this.insertSession(tx, {
        sessionId: s.sessionId,
        agentId: s.agentId,
        parentId,
        ancestors,
        owner: s.owner,
        description: s.description,
        labels: s.labels,
        policy: s.policy!,
        nowMs,
        expireMs: ms(s.expireTime, nowMs),
        idleTimeoutMs: s.idleTimeout === undefined ? null : durationMs(s.idleTimeout),
        status: s.status === SessionStatus.UNSPECIFIED ? SessionStatus.ACTIVE : s.status,
        statusReason: s.statusReason,
        createMs: ms(s.createTime, nowMs),
        // Never ahead of now (a source clock ahead): it would keep the session from idling for the skew.
        lastActivityMs: Math.min(ms(s.lastActivityTime, nowMs), nowMs),
        endMs: s.endTime === undefined ? null : timestampMs(s.endTime),
        counts: [u?.requestCount ?? 0n, u?.errorCount ?? 0n, u?.denialCount ?? 0n, u === undefined || u.processingTime === undefined ? 0n : u.processingTime.seconds * 1_000_000_000n + BigInt(u.processingTime.nanos)],
      });
      // Counts the session goes on adding to, in one statement with other
      // sessions' (a decision batch): one that could pass int64 would fail
      // them all. Half of int64 leaves room for more than could ever come.
      const usageCounts: [string, bigint][] = [
        ["request_count", u?.requestCount ?? 0n],
        ["error_count", u?.errorCount ?? 0n],
        ["denial_count", u?.denialCount ?? 0n],
        ["processing_time", u?.processingTime === undefined ? 0n : u.processingTime.seconds * 1_000_000_000n + BigInt(u.processingTime.nanos)],
      ];
      for (const [field, v] of usageCounts) {
        if (v > INT64_MAX / 2n) throw new ConnectError(`snapshot.session.usage.${field}: ${v} is more than can be counted on from (at most ${INT64_MAX / 2n}${field === "processing_time" ? " ns" : ""})`, Code.InvalidArgument);
      }
      const windows = new Set<string>(WINDOW_KINDS);
      for (const c of snap.counters) {
        if (!windows.has(c.window)) throw new ConnectError(`snapshot.counters.window: "${c.window}" is not a window`, Code.InvalidArgument);
        for (const v of [c.committedValueMicros, c.heldValueMicros, c.committedActions, c.heldActions]) {
          if (v < 0n) throw new ConnectError("snapshot.counters: counters cannot be negative", Code.InvalidArgument);
        }
      }
      const compiled = compilePolicy(s.policy!);
      const holds = snap.actions.filter((a) => a.status === ActionStatus.HELD);
      // What each restored hold charged (its action's charges), by id.
      const charges = new Map<string, [string, WindowKind, number][]>(holds.map((a) => [a.actionId, []]));
      if (snap.counters.length > 0 || holds.length > 0) {
        // Only the newest window of each kind is kept: older ones no longer
        // limit anything (see usage-counters.ts).
        const scopeKey = `s:${s.sessionId}`;
        const agent = locked.agents.get(s.agentId)!;
        const chain = [...ancestors.flatMap((id) => locked.sessions.get(id) ?? []).map((p) => ({ key: `s:${p.sessionId}`, policy: p.policy })), { key: `a:${s.agentId}`, policy: agent.policy }];
        // The parents' and agent's windows in effect now. A hold charges
        // those that also contain its time (one whose window has rolled
        // over there since charges it no longer, as one placed then would
        // not); its time, from the snapshot, never moves them.
        const usage = await loadCounters(tx, [
          { scopeKey, window: "lifetime", startMs: LIFETIME_START_MS },
          ...chain.flatMap((c) => WINDOW_KINDS.map((w) => currentAddress(c.key, c.policy, w, nowMs, this.spans))),
        ]);
        const windows = usage.scopes.get(scopeKey)!;
        for (const c of snap.counters) {
          const w = windows[c.window as WindowKind];
          // A start after now (a source clock ahead, an edited file) would
          // hold the window, its limit reached, until that time: it is the
          // window in effect now that holds the counts.
          const startMs =
            c.window === "lifetime" ? LIFETIME_START_MS : Math.min(ms(c.windowStartTime, 0), currentAddress(scopeKey, compiled, c.window as WindowKind, nowMs, this.spans).startMs);
          if (!Number.isNaN(w.startMs) && w.window !== "lifetime" && startMs < w.startMs) continue;
          w.startMs = startMs;
          w.committedValue = c.committedValueMicros;
          w.committedActions = c.committedActions;
        }
        // What the session spent counts against its agent here too, which
        // has not seen it: in the agent's windows it may lie in (those in
        // effect now, unless the session's window ended before they began).
        // Not a re-attached fork's: its parent's counters, imported, hold it.
        if (parentId === null) {
          for (const kind of WINDOW_KINDS) {
            const mine = windows[kind];
            const theirs = usage.scopes.get(`a:${s.agentId}`)![kind];
            const endMs = kind === "lifetime" ? Infinity : (spanOf(compiled, kind, mine.startMs, this.spans)?.endMs ?? -Infinity);
            if (Number.isNaN(mine.startMs) || endMs <= theirs.startMs) continue;
            theirs.committedValue += mine.committedValue;
            theirs.committedActions += mine.committedActions;
          }
        }
        // What is held is what the restored holds hold, not the snapshot's
        // totals: those also count pending approvals and sidecars' leases,
        // which are not carried over and which nothing here could release.
        // A hold charges every scope its capture will commit to: the
        // session, the parents it is re-attached to, its agent.
        for (const a of holds) {
          // A time past now (a source clock ahead) is taken as now.
          const atMs = Math.min(ms(a.createTime, nowMs), nowMs);
          const held = a.heldAmount?.amountMicros ?? 0n;
          for (const kind of WINDOW_KINDS) {
            const w = windows[kind];
            const startMs = spanOf(compiled, kind, atMs, this.spans)?.startMs ?? LIFETIME_START_MS;
            if (Number.isNaN(w.startMs)) w.startMs = startMs;
            charges.get(a.actionId)!.push([scopeKey, kind, startMs]);
            if (w.startMs !== startMs) continue;
            w.heldValue += held;
            w.heldActions += 1n;
          }
          for (const c of chain) {
            for (const kind of WINDOW_KINDS) {
              const startMs = currentAddress(c.key, c.policy, kind, atMs, this.spans).startMs;
              const w = usage.scopes.get(c.key)![kind];
              if (w.startMs !== startMs) continue;
              charges.get(a.actionId)!.push([c.key, kind, startMs]);
              w.heldValue += held;
              w.heldActions += 1n;
            }
          }
        }
        // Every total must stay an int64 with what the import adds to it
        // (the snapshot's committed counts, its holds, its spend in the
        // agent's windows): past that it could be stored, but no session
        // showing it could be read, and nothing could be charged to it.
        for (const [key, counters] of usage.scopes) {
          for (const kind of WINDOW_KINDS) {
            const w = counters[kind];
            if (w.committedValue + w.heldValue > INT64_MAX || w.committedActions + w.heldActions > INT64_MAX) {
              const owner = key.startsWith("a:") ? `agent "${key.slice(2)}"` : `session "${key.slice(2)}"`;
              throw new ConnectError(`snapshot.counters: this import would take the ${kind} counters of ${owner} past ${INT64_MAX}`, Code.InvalidArgument);
            }
          }
        }
        await saveCounters(tx, usage);
      }
      for (const a of snap.actions) {
        if (a.sessionId !== s.sessionId) {
          throw new ConnectError(`snapshot.actions: action "${a.actionId}" belongs to another session`, Code.InvalidArgument);
        }
        const { rows } = await tx.query(
          `INSERT INTO actions (action_id, session_id, agent_id, method, action, decision, outcome, status, currency, amount,
                                held_value, captured_value, charges, create_time, update_time, hold_expire_time, approval_id, written_off_value)
           VALUES ($1, $2, $3, $4, decode($5, 'base64'), decode($6, 'base64'), $7, $8, $9, $10, $11, $12, $13::jsonb,
                   $14::timestamptz, $15::timestamptz, $16::timestamptz, $17, $18)
           ON CONFLICT (action_id) DO NOTHING RETURNING action_id`,
          [
            a.actionId,
            s.sessionId,
            s.agentId,
            a.method,
            Buffer.from(toBinary(ActionSchema, a.action ?? create(ActionSchema))).toString("base64"),
            Buffer.from(toBinary(DecisionSchema, a.decision ?? create(DecisionSchema))).toString("base64"),
            a.decision?.outcome ?? 0,
            a.status,
            a.heldAmount?.currencyCode || s.policy!.currencyCode,
            (a.action?.amount?.amountMicros ?? 0n).toString(),
            // A pending approval comes back as history holding nothing: its
            // approval is not carried over, so nobody could decide it here.
            (a.status === ActionStatus.HELD ? (a.heldAmount?.amountMicros ?? 0n) : 0n).toString(),
            (a.capturedAmount?.amountMicros ?? 0n).toString(),
            JSON.stringify(charges.get(a.actionId) ?? []),
            iso(ms(a.createTime, nowMs)),
            iso(ms(a.updateTime, nowMs)),
            a.holdExpireTime === undefined ? null : iso(timestampMs(a.holdExpireTime)),
            // History: the approval itself is not carried over.
            a.approvalId === "" ? null : a.approvalId,
            // A write-off stays one (in the snapshot's committed counts);
            // no sidecar here will ever settle it.
            a.writtenOffAmount === undefined || a.status === ActionStatus.HELD ? null : a.writtenOffAmount.amountMicros.toString(),
          ],
        );
        if (rows.length === 0) throw new ConnectError(`snapshot.actions: action "${a.actionId}" already exists`, Code.AlreadyExists);
      }
      // One record for the whole import, binding the snapshot by its hash:
      // its history was audited (and may be pruned) where it happened; here
      // it is restored, not decided again, so it is not re-recorded action
      // by action as if it were new.
      await appendAudit(tx, [
        {
          chain: s.sessionId,
          type: "session.imported",
          nowMs,
          sessionId: s.sessionId,
          agentId: s.agentId,
          data: {
            status: SessionStatus[s.status === SessionStatus.UNSPECIFIED ? SessionStatus.ACTIVE : s.status],
            parent_session_id: parentId ?? undefined,
            actions: snap.actions.length,
            export_time: snap.exportTime === undefined ? undefined : iso(timestampMs(snap.exportTime)),
            snapshot_sha256: createHash("sha256").update(toBinary(SessionSnapshotSchema, snap)).digest("hex"),
          },
        },
      ]);
      // Watchers learn of it as of any session new to this store. Last:
      // an event's position takes the advisory lock (outbox.ts).
      await recordEvent(tx, {
        type: "session.created",
        sessionId: s.sessionId,
        agentId: s.agentId,
        data: { status: SessionStatus[s.status === SessionStatus.UNSPECIFIED ? SessionStatus.ACTIVE : s.status], expire_time: iso(ms(s.expireTime, nowMs)), imported: true },
        nowMs,
      });
      // A call retried here gets the answer the source store gave it.
      await saveIdempotency(
        tx,
        snap.idempotencyKeys.map((k) => ({ scope, key: k.idempotencyKey, method: k.method, requestHash: k.requestHash, response: k.response, actionId: k.actionId || undefined })),
        nowMs,
      );
      const imported = await this.getSession(s.sessionId, tx);
      await this.saveAnswer(tx, keyScope, "import_session", keyed, async () => ({ session: imported }), nowMs);
      return imported;
    });
    if (replayed !== undefined) return replayed;
    this.chains.forget(s.sessionId);
    return session;
  }

  // ---- agents ----------------------------------------------------------

  /** Reads an agent, with its limited windows. */
  async getAgent(agentId: string, q: Queryable = this.db): Promise<Agent> {
    const { rows } = await q.query<{ agent_id: string; policy: Uint8Array | null; create_time: Date; update_time: Date; revision: string; n: string }>(
      `SELECT a.agent_id, a.policy, a.create_time, a.update_time, a.revision,
              (SELECT count(*) FROM sessions s WHERE s.agent_id = a.agent_id) AS n
         FROM agents a WHERE a.agent_id = $1`,
      [agentId],
    );
    const r = rows[0];
    if (r === undefined) throw notFound("agent_id", "agent", agentId);
    const policy = this.policies.get(`a:${agentId}`, BigInt(r.revision), r.policy);
    const nowMs = this.now();
    const scope = { scope: Scope.AGENT, id: agentId, key: `a:${agentId}`, policy };
    const counters = await loadCounters(
      q,
      WINDOW_KINDS.map((w) => currentAddress(scope.key, policy, w, nowMs, this.spans)),
    );
    // budgetsOf reports every window of its first scope; an agent shows only
    // the windows its policy limits.
    const budgets = budgetsOf([scope], nowMs, this.spans, (k) => totalsOf(counters.get(k)) ?? { value: 0n, actions: 0n }).filter(
      (b) => b.valueLimit !== undefined || b.actionLimit !== undefined,
    );
    return create(AgentSchema, {
      agentId,
      policy: r.policy === null ? undefined : fromBinary(SessionPolicySchema, r.policy),
      budgets: budgets.map(budgetToProto),
      sessionCount: BigInt(r.n),
      createTime: timestampFromMs(r.create_time.getTime()),
      updateTime: timestampFromMs(r.update_time.getTime()),
      etag: `"${r.revision}"`,
    });
  }

  /**
   * Refuses value limits in one currency while the agent's windows they
   * would limit hold spend in another: the agent's counters have no unit
   * (an agent without value limits may run sessions in several
   * currencies), so 10,000 JPY spent would count as 10,000 USD used. Only
   * sessions that spent (or may yet: a lease still out), and were live at or after the earliest time whose
   * spend a limited window would count (any time, for a lifetime limit),
   * count. That is the start of the window in effect under the new policy,
   * or earlier: when the policy moves the agent's calendar, what the stored
   * window holds carries into the new one (see loadCounters).
   */
  private async refuseSpendInOtherCurrency(tx: Queryable, agentId: string, policy: SessionPolicy, nowMs: number): Promise<void> {
    const compiled = compilePolicy(policy);
    const limited = WINDOW_KINDS.filter((w) => compiled.limits[w].maxValue !== undefined);
    if (limited.length === 0) return;
    let since: number | null = null;
    if (!limited.includes("lifetime")) {
      // The stored windows as they are ("exact": not rolled over), read
      // under the agent's row lock, which every writer of its counters holds.
      const key = `a:${agentId}`;
      const addresses = limited.map((w) => currentAddress(key, compiled, w, nowMs, this.spans));
      const stored = await loadCounters(tx, addresses, "exact");
      since = Math.min(...addresses.map((a) => countsSince(stored.scopes.get(key)!, stored.calendars.get(key) ?? null, a)));
    }
    // A session with a lease still out (active, or written off and still
    // taking its sidecar's late records) may yet bring spend its usage does
    // not show: a lease of a session without value limits reserves none.
    const { rows } = await tx.query<{ session_id: string; policy: Uint8Array }>(
      `SELECT s.session_id, s.policy FROM sessions s LEFT JOIN scope_usage u ON u.scope_key = 's:' || s.session_id
        WHERE s.agent_id = $1
          AND (u.lifetime_committed_value > 0 OR u.lifetime_held_value > 0
               OR EXISTS (SELECT 1 FROM leases l WHERE l.session_id = s.session_id AND l.status IN (1, 3)))
          AND ($2::timestamptz IS NULL OR s.end_time IS NULL OR s.end_time >= $2::timestamptz)`,
      [agentId, since === null ? null : iso(since)],
    );
    for (const r of rows) {
      const currency = fromBinary(SessionPolicySchema, r.policy).currencyCode;
      if (currency === policy.currencyCode) continue;
      throw new ConnectError(
        `policy.currency_code: agent ${agentId}'s ${since === null ? "lifetime" : "current windows"} hold spend in ${currency} (session "${r.session_id}"), which limits in ${policy.currencyCode} would count as ${policy.currencyCode}`,
        Code.FailedPrecondition,
      );
    }
  }

  /** Sets an agent's policy, creating the agent if it is new. */
  async updateAgentPolicy(req: UpdateAgentPolicyRequest, requestHash: Uint8Array = new Uint8Array(0)): Promise<Agent> {
    validatePolicy(req.policy!, "policy");
    const nowMs = this.now();
    const scope = `a:${req.agentId}`;
    const keyed = { idempotencyKey: req.idempotencyKey, requestHash };
    return this.db.transaction(async (tx) => {
      await tx.query(
        "INSERT INTO agents (agent_id, create_time, update_time) VALUES ($1, $2::timestamptz, $2::timestamptz) ON CONFLICT DO NOTHING",
        [req.agentId, iso(nowMs)],
      );
      const { rows } = await tx.query<{ revision: string }>("SELECT revision FROM agents WHERE agent_id = $1 FOR UPDATE", [req.agentId]);
      // A retry after a lost answer: its etag is stale now, by its own update.
      const replayed = (await this.firstAnswer(tx, scope, "update_agent_policy", keyed, nowMs))?.agent;
      if (replayed !== undefined) return replayed;
      if (req.etag !== "" && req.etag !== `"${rows[0]!.revision}"`) {
        throw new ConnectError(`etag: agent "${req.agentId}" changed since it was read`, Code.Aborted);
      }
      // An agent's value limits are in its currency and bind every session
      // it has: one in another currency would be checked against a limit
      // in the wrong unit. A session's policy never changes, so its
      // distinct policies are few.
      if (limitsValue(req.policy!)) {
        const live = await tx.query<{ policy: Uint8Array }>("SELECT DISTINCT policy FROM sessions WHERE agent_id = $1 AND status IN (1, 2)", [req.agentId]);
        for (const r of live.rows) {
          const currency = fromBinary(SessionPolicySchema, r.policy).currencyCode;
          if (currency !== req.policy!.currencyCode) {
            throw new ConnectError(
              `policy.currency_code: ${req.policy!.currencyCode} differs from ${currency}, the currency of agent ${req.agentId}'s active or paused sessions`,
              Code.FailedPrecondition,
            );
          }
        }
        await this.refuseSpendInOtherCurrency(tx, req.agentId, req.policy!, nowMs);
      }
      // Another time zone or week start: the agent's windows move to it now,
      // with what was spent in them (see rebaseAgentWindows).
      await rebaseAgentWindows(tx, req.agentId, compilePolicy(req.policy!), nowMs, this.spans);
      await tx.query(
        "UPDATE agents SET policy = decode($2, 'base64'), update_time = $3::timestamptz, revision = warden_next_revision() WHERE agent_id = $1",
        [req.agentId, Buffer.from(toBinary(SessionPolicySchema, req.policy!)).toString("base64"), iso(nowMs)],
      );
      // An agent's policy limits all its sessions: its changes get a chain of their own.
      await appendAudit(tx, [
        {
          chain: agentChain(req.agentId),
          type: "agent.policy_updated",
          nowMs,
          sessionId: null,
          agentId: req.agentId,
          data: { policy: toJson(SessionPolicySchema, req.policy!) },
        },
      ]);
      const agent = await this.getAgent(req.agentId, tx);
      await this.saveAnswer(tx, scope, "update_agent_policy", keyed, async () => ({ agent }), nowMs);
      return agent;
    });
  }

  // ---- holds -----------------------------------------------------------

  /** Commits up to the held amount of an authorization; releases the rest. */
  async capture(req: CaptureRequest, requestHash: Uint8Array): Promise<ActionRecord> {
    return this.settleHold("capture", req.sessionId, req.authorizationId, req.idempotencyKey, requestHash, async (tx, h, s, locked, nowMs) => {
      const amount = req.amount;
      if (amount !== undefined && amount.currencyCode !== h.currency) {
        throw new ConnectError(`amount.currency_code: ${amount.currencyCode} differs from the authorization's ${h.currency}`, Code.InvalidArgument);
      }
      const chain = [s, ...s.ancestorIds.map((a) => locked.get(a)!)];
      const used = await captureHold(tx, h, amount?.amountMicros ?? BigInt(h.held_value), chain, nowMs);
      // Each ends on its own (none is the other's ended_with); their forks after the commit.
      for (const id of used) await endSessions(tx, [id], SessionStatus.EXHAUSTED, EXHAUSTED_REASON, nowMs);
      return used;
    });
  }

  /**
   * Releases an authorization's hold. One a sidecar placed (the void came
   * through another sidecar) is written off instead, as {@link closeHolds}
   * does: the placing sidecar may have answered a capture of it that its
   * report has not brought yet. Its word, when it hears of this void on
   * the watch stream, gives the amount back or turns it into that capture.
   */
  async void(req: VoidRequest, requestHash: Uint8Array): Promise<ActionRecord> {
    return this.settleHold("void", req.sessionId, req.authorizationId, req.idempotencyKey, requestHash, async (tx, h, _s, _locked, nowMs) => {
      await closeHolds(tx, [h], ActionStatus.VOIDED, nowMs);
      return [];
    });
  }

  private async settleHold(
    verb: "capture" | "void",
    sessionId: string,
    actionId: string,
    key: string,
    requestHash: Uint8Array,
    /** Settles the hold; returns the sessions that settling ended. */
    apply: (tx: Queryable, h: ActionRow, s: LockedSession, locked: Map<string, LockedSession>, nowMs: number) => Promise<string[]>,
  ): Promise<ActionRecord> {
    const nowMs = this.now();
    const scope = `s:${sessionId}`;
    const keyed = { idempotencyKey: key, requestHash };
    // Sessions this settlement ended, or found ended with live forks: those end after the commit.
    let ended: string[] = [];
    const result = await this.db.transaction((tx) =>
      this.withLocked(tx, sessionId, false, async (s, locked) => {
        const replayed = await this.firstAnswer(tx, scope, verb, keyed, nowMs);
        if (replayed !== undefined) return { record: replayed };
        const [h] = await lockActions(tx, "action_id = $1 AND session_id = $2", [actionId, sessionId]);
        if (h === undefined) throw notFound("authorization_id", `authorization in session "${sessionId}"`, actionId);
        if (h.status !== ActionStatus.HELD) throw closedHoldError(h, verb);
        const wasEnded = isTerminal(s.status);
        const refused = await endedChain(tx, s, locked, nowMs);
        if (refused !== undefined) {
          ended = [refused.sessionId];
          // A hold still open in a session that had ended (a sidecar's
          // record reported late) goes back now; one the lapse just ended
          // was released with it, and a fork's goes with the fork.
          if (wasEnded) await closeHolds(tx, [h], ActionStatus.VOIDED, nowMs);
          return { error: new ConnectError(`session_id: session "${sessionId}" ${refused.why}`, Code.FailedPrecondition) };
        }
        if (h.hold_expire_time !== null && h.hold_expire_time.getTime() <= nowMs) {
          // Expire it now, keep that, and tell the caller; one a sidecar
          // placed stays open through its grace, for that sidecar's report.
          if (!h.placed_by || h.hold_expire_time.getTime() + SIDECAR_HOLD_GRACE_MS <= nowMs) {
            await closeHolds(tx, [h], ActionStatus.EXPIRED, nowMs);
          }
          return { error: closedHoldError({ ...h, status: ActionStatus.EXPIRED }, verb) };
        }
        ended = await apply(tx, h, s, locked, nowMs);
        // Never back (a replica whose clock lags).
        await tx.query("UPDATE sessions SET last_activity_time = GREATEST(last_activity_time, $2::timestamptz) WHERE session_id = $1", [sessionId, iso(nowMs)]);
        const [after] = await lockActions(tx, "action_id = $1", [actionId]);
        const record = actionRecordOf(after!);
        await this.saveAnswer(tx, scope, verb, keyed, async () => record, nowMs);
        // A hold a sidecar placed (the call came through another sidecar):
        // the watch tells the placing one, which would otherwise settle it
        // again (migration 018). A revision is taken last, after every row lock.
        if (h.placed_by != null) await tx.query("UPDATE actions SET settle_revision = warden_next_revision() WHERE action_id = $1", [actionId]);
        return { record };
      }),
    );
    // Committed either way: should ending the forks fail, they decide
    // nothing meanwhile and the sweeper ends them at their own expiry.
    if (ended.length > 0) await endForksOf(this.db, this.policies, ended, this.now).catch(() => {});
    if ("error" in result) throw result.error;
    return result.record;
  }

  // ---- approvals -------------------------------------------------------

  /** Reads an approval; `sessionId`, when given, must be its session. */
  async getApproval(approvalId: string, sessionId = "", q: Queryable = this.db): Promise<Approval> {
    const { rows } = await q.query<ApprovalRow>(`SELECT ${APPROVAL_COLUMNS} FROM ${APPROVAL_FROM} WHERE p.approval_id = $1`, [approvalId]);
    const r = rows[0];
    if (r === undefined || (sessionId !== "" && r.session_id !== sessionId)) throw notFound("approval_id", "approval", approvalId);
    return approvalOf(r);
  }

  /**
   * Lists approvals: pending ones first, oldest first (the queue a person
   * works through), then decided ones, newest first.
   */
  async listApprovals(req: ListApprovalsRequest): Promise<{ approvals: Approval[]; nextPageToken: string }> {
    const size = req.pageSize === 0 ? DEFAULT_PAGE : req.pageSize;
    const query = { session_id: req.sessionId, agent_id: req.agentId, status: req.status };
    const after = readPageToken(req.pageToken, { r: "number", k: "integer", id: "string" }, query);
    const where: string[] = [];
    const params: unknown[] = [];
    const p = (v: unknown) => {
      params.push(v);
      return `$${params.length}`;
    };
    // One sort key for both halves: rank 0 pending, 1 decided; then time,
    // ascending for pending and descending for decided.
    const rank = `(CASE WHEN p.status = ${ApprovalStatus.PENDING} THEN 0 ELSE 1 END)`;
    const key = `(CASE WHEN p.status = ${ApprovalStatus.PENDING} THEN 1 ELSE -1 END * (extract(epoch FROM p.create_time) * 1000000)::bigint)`;
    if (req.sessionId !== "") where.push(`p.session_id = ${p(req.sessionId)}`);
    if (req.agentId !== "") where.push(`p.agent_id = ${p(req.agentId)}`);
    if (req.status !== ApprovalStatus.UNSPECIFIED) where.push(`p.status = ${p(req.status)}`);
    if (after !== undefined) where.push(`(${rank}, ${key}, p.approval_id) > (${p(after.r)}::int, ${p(after.k)}::bigint, ${p(after.id)})`);
    const { rows } = await this.db.query<ApprovalRow & { r: number; k: string }>(
      `SELECT ${APPROVAL_COLUMNS}, ${rank} AS r, ${key} AS k FROM ${APPROVAL_FROM}
        ${where.length > 0 ? `WHERE ${where.join(" AND ")}` : ""}
        ORDER BY r, k, p.approval_id LIMIT ${size + 1}`,
      params,
    );
    const page = rows.slice(0, size);
    const last = page.at(-1);
    return {
      approvals: page.map(approvalOf),
      nextPageToken: rows.length > size && last !== undefined ? pageToken({ r: last.r, k: String(last.k), id: last.approval_id }, query) : "",
    };
  }

  /** Approves a pending approval, for its amount or less: it becomes an open authorization. */
  approveApproval(approvalId: string, by: string, comment: string, amount?: Money, keyed?: KeyedCall): Promise<Approval> {
    return this.decideApproval(approvalId, "", "approve", keyed, (a) => {
      if (amount !== undefined && amount.currencyCode !== a.currency) {
        throw new ConnectError(`amount.currency_code: ${amount.currencyCode} differs from the approval's ${a.currency}`, Code.InvalidArgument);
      }
      return { kind: "approve", amountMicros: amount?.amountMicros, by, comment };
    });
  }

  /** Denies a pending approval; its hold is released. */
  denyApproval(approvalId: string, by: string, reason: string, keyed?: KeyedCall): Promise<Approval> {
    return this.decideApproval(approvalId, "", "deny", keyed, () => ({ kind: "deny", by, comment: reason }));
  }

  /** The agent withdraws a pending approval; its hold is released. */
  cancelApproval(approvalId: string, sessionId: string, by: string, reason: string, keyed?: KeyedCall): Promise<Approval> {
    return this.decideApproval(approvalId, sessionId, "cancel", keyed, () => ({ kind: "cancel", by, comment: reason }));
  }

  /** Applies the policy's timeout outcome if the approval is pending and past its expiry; otherwise changes nothing. */
  async expireApproval(approvalId: string): Promise<Approval> {
    return this.decideApproval(approvalId, "", undefined, undefined, () => undefined);
  }

  /**
   * Runs a verdict on a pending approval under its session's locks. One
   * found past its expiry gets the policy's timeout outcome instead (kept),
   * and the caller an error saying so. With no verb, only that timeout
   * is applied, when due. A keyed verdict retried gets its first answer
   * (the approval as it was decided), not "already decided".
   */
  private async decideApproval(
    approvalId: string,
    sessionId: string,
    verb: "approve" | "deny" | "cancel" | undefined,
    keyed: KeyedCall | undefined,
    verdict: (a: ApprovalRow) => Verdict | undefined,
  ): Promise<Approval> {
    const { rows } = await this.db.query<{ session_id: string }>("SELECT session_id FROM approvals WHERE approval_id = $1", [approvalId]);
    const owner = rows[0]?.session_id;
    if (owner === undefined || (sessionId !== "" && owner !== sessionId)) throw notFound("approval_id", "approval", approvalId);
    const nowMs = this.now();
    let ended: string[] = [];
    let replayed: Approval | undefined;
    const method = verb === undefined ? undefined : (`${verb}_approval` as const);
    const failure = await this.db.transaction((tx) =>
      this.withLocked(tx, owner, false, async (s, chain) => {
        if (method !== undefined) {
          replayed = (await this.firstAnswer(tx, `s:${owner}`, method, keyed, nowMs))?.approval;
          if (replayed !== undefined) return undefined;
        }
        const locked = (await lockApproval(tx, approvalId))!;
        const a = locked.approval;
        if (a.status !== ApprovalStatus.PENDING) return verb === undefined ? undefined : decidedError(a, verb);
        // Ending the session (here, if it lapsed) cancels this approval.
        const refused = await endedChain(tx, s, chain, nowMs);
        if (refused !== undefined) {
          ended = [refused.sessionId];
          return verb === undefined ? undefined : new ConnectError(`approval_id: cannot ${verb} "${approvalId}": its session ${refused.why}`, Code.FailedPrecondition);
        }
        if (a.expire_time.getTime() <= nowMs) {
          // A person who paused the session (or a parent), or the circuit
          // breaker that did, stopped the agent: the clock approves nothing
          // for it meanwhile (a person still may, deciding in time).
          const paused = [s, ...s.ancestorIds.map((id) => chain.get(id)!)].find((c) => c.status === SessionStatus.PAUSED);
          const timeout = timeoutVerdict(a, paused?.sessionId);
          await settleApproval(tx, locked, timeout, s.policy.holdTtlMs, nowMs);
          return verb === undefined
            ? undefined
            : new ConnectError(
                `approval_id: cannot ${verb} "${approvalId}": it expired at ${a.expire_time.toISOString()} and was ${timeout.kind === "approve" ? "approved" : "denied"} on timeout`,
                Code.FailedPrecondition,
              );
        }
        const v = verdict(a);
        if (v !== undefined) await settleApproval(tx, locked, v, s.policy.holdTtlMs, nowMs);
        if (method !== undefined) await this.saveAnswer(tx, `s:${owner}`, method, keyed, async () => ({ approval: await this.getApproval(approvalId, "", tx) }), nowMs);
        return undefined;
      }),
    );
    if (ended.length > 0) await endForksOf(this.db, this.policies, ended, this.now).catch(() => {});
    if (failure !== undefined) throw failure;
    return replayed ?? this.getApproval(approvalId);
  }

  /** A session's actions, newest first. */
  async listActions(req: ListActionsRequest): Promise<{ actions: ActionRecord[]; nextPageToken: string }> {
    const size = req.pageSize === 0 ? DEFAULT_PAGE : req.pageSize;
    const query = { session_id: req.sessionId };
    const after = readPageToken(req.pageToken, { seq: "integer" }, query);
    const exists = await this.db.query("SELECT 1 FROM sessions WHERE session_id = $1", [req.sessionId]);
    if (exists.rows.length === 0) throw notFound("session_id", "session", req.sessionId);
    const { rows } = await this.db.query<ActionRow>(
      `SELECT ${ACTION_COLUMNS} FROM actions WHERE session_id = $1 ${after ? "AND seq < $2" : ""} ORDER BY seq DESC LIMIT ${size + 1}`,
      after ? [req.sessionId, after.seq] : [req.sessionId],
    );
    const page = rows.slice(0, size);
    return {
      actions: page.map(actionRecordOf),
      nextPageToken: rows.length > size ? pageToken({ seq: page.at(-1)!.seq }, query) : "",
    };
  }

  // ---- sweeping --------------------------------------------------------

  /**
   * Expires sessions past their expiry or idle timeout, releases holds
   * past their TTL or of ended sessions, and removes the idempotency keys
   * of sessions ended longer ago than the retention (`keysPruned`: how many
   * sessions'). Idempotent; safe on every replica.
   */
  async sweep(
    limit = 500,
  ): Promise<{ sessions: number; holds: number; holdsWrittenOff: WrittenOff; approvals: number; leases: ReconcileResult; keysPruned: number; failures: unknown[] }> {
    const nowMs = this.now();
    // One session, hold or approval that cannot be swept (a bug, a
    // constraint) must not stop every other: each goes in its own
    // transaction, and what failed is returned, to be logged.
    const failures: unknown[] = [];
    const attempt = async <T>(fn: () => Promise<T>, fallback: T): Promise<T> => {
      try {
        return await fn();
      } catch (err) {
        failures.push(err);
        return fallback;
      }
    };
    // Sessions active since their idle check time get the new one; then
    // both lapse tests are index range scans (see 010_idle_deadline.sql).
    await this.db.query(REARM_IDLE_CHECKS_SQL, [iso(nowMs), limit]);
    const lapsed = await this.db.query<{ session_id: string }>(LAPSED_SESSIONS_SQL, [iso(nowMs), limit]);
    let sessions = 0;
    for (const { session_id } of lapsed.rows) {
      sessions += await attempt(
        () =>
          this.db.transaction((tx) =>
            this.withLocked(tx, session_id, true, async (s, locked, descendants) => {
              const why = isTerminal(s.status) ? undefined : lapseOf(s, locked, nowMs);
              if (why === undefined) return 0;
              const live = descendants.filter((d) => !isTerminal(locked.get(d)!.status));
              await endSessions(tx, [session_id, ...live], SessionStatus.EXPIRED, lapseReason(why), nowMs);
              return 1;
            }),
          ),
        0,
      );
    }
    // Forks created while those waited for their locks (see terminate).
    await endForksOf(this.db, this.policies, lapsed.rows.map((r) => r.session_id), this.now).catch(() => {});
    // Every ending of a session releases its holds in the same transaction,
    // so only holds past their TTL are left to find: the partial index on
    // open holds answers this without reading the ledger.
    const holds = await this.db.query<{ action_id: string; session_id: string }>(
      `SELECT action_id, session_id FROM actions
        WHERE status = ${ActionStatus.HELD} AND hold_expire_time <= $1::timestamptz
          AND (placed_by IS NULL OR hold_expire_time <= $2::timestamptz)
        ORDER BY hold_expire_time LIMIT ${limit}`,
      [iso(nowMs), iso(nowMs - SIDECAR_HOLD_GRACE_MS)],
    );
    // A sidecar's hold past the grace is written off (closeHolds): its
    // sidecar said nothing of it, and may have crashed after answering a
    // capture. No session ends EXHAUSTED on that alone: the sidecar, if
    // only cut off, may still give it back.
    const bySession = Map.groupBy(holds.rows, (r) => r.session_id);
    const holdsWrittenOff = { holds: 0, value: 0n };
    for (const [sessionId, rows] of bySession) {
      await attempt(
        () =>
          this.db.transaction((tx) =>
            this.withLocked(tx, sessionId, false, async (s) => {
              const open = await lockActions(tx, "action_id = ANY($1::text[]) AND status = $2", [rows.map((r) => r.action_id), ActionStatus.HELD]);
              const w = await closeHolds(tx, open, isTerminal(s.status) ? ActionStatus.VOIDED : ActionStatus.EXPIRED, nowMs);
              holdsWrittenOff.holds += w.holds;
              holdsWrittenOff.value += w.value;
            }),
          ),
        undefined,
      );
    }
    // Approvals nobody decided in time get their policy's timeout outcome.
    const due = await this.db.query<{ approval_id: string }>(
      `SELECT approval_id FROM approvals WHERE status = ${ApprovalStatus.PENDING} AND expire_time <= $1::timestamptz
        ORDER BY expire_time LIMIT ${limit}`,
      [iso(nowMs)],
    );
    for (const { approval_id } of due.rows) await attempt(() => this.expireApproval(approval_id), undefined);
    const leases = await attempt(() => this.leases.reconcile(limit), { leases: 0, writtenOffValue: 0n, writtenOffActions: 0n });
    // Keys of sessions that ended long enough ago: no retry can charge
    // them any more (their session has ended), and they stay forever else.
    // Agents' CreateSession keys go by age.
    let keysPruned = 0;
    if (this.idempotencyRetentionMs > 0) {
      const before = iso(nowMs - this.idempotencyRetentionMs);
      keysPruned += (await this.db.query(PRUNE_IDEMPOTENCY_KEYS_SQL, [before, limit])).rows.length;
      keysPruned += (await this.db.query(PRUNE_AGENT_KEYS_SQL, [before, limit])).rows.length;
    }
    return { sessions, holds: holds.rows.length, holdsWrittenOff, approvals: due.rows.length, leases, keysPruned, failures };
  }
}

/** Creates a store on `db`. Run {@link migrate} first. */
export function createWardenStore(opts: WardenStoreOptions): WardenStore {
  return new WardenStore(opts);
}
