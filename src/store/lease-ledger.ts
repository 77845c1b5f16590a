import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { durationMs, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { WINDOW_KINDS, type WindowKind } from "../core/compiled-policy.js";
import { formatMoney } from "../core/money.js";
import { EXHAUSTED_REASON, isTerminal, lapse, LIFETIME_START_MS, type ScopeState, spanOf, WINDOW_ENUM } from "../core/evaluate.js";
import { DecisionSchema, Outcome, Scope } from "../gen/warden/v1/decision_pb.js";
import { ActionSchema, ActionStatus } from "../gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../gen/warden/v1/session_pb.js";
import {
  type AcquireLeaseRequest,
  type IdempotencyKeyClaim,
  type IdempotencyKeyClaimResult,
  IdempotencyKeyClaimResultSchema,
  IdempotencyKeyState,
  CounterUsageSchema,
  type Lease,
  LeaseSchema,
  type LeaseRecord,
  type ReportLeasesRequest,
  HoldRelease,
} from "../gen/warden/v1/sync_service_pb.js";
import type { Database, Queryable } from "./database.js";
import { captureHolds, chargedAddresses, countersOf, endSessions, lifetimesUsedUp, lockActions, releaseHolds, reverseWriteOffs } from "./hold-ledger.js";
import type { ActionRow } from "./action-record.js";
import { BatchQueue, type Settled } from "./batch-queue.js";
import { type AuditEntry, chainAudit, decisionAuditEntry, readAuditHeads, writeAuditSql } from "./audit-log.js";
import { appendStatement, appendStatements, foldStatements } from "./append-statement.js";
import { claimIdempotencyKeys, releaseClaims, saveIdempotency, saveIdempotencySql } from "./idempotency.js";
import { createToldNotices, limitNoticesOf, recordLimitNotices } from "./limit-notices.js";
import { newId } from "./ids.js";
import { endForksOf } from "./end-forks.js";
import { recordEvents } from "./outbox.js";
import { breakerPauseReason, denialRun, trips, tripThreshold } from "../core/circuit-breaker.js";
import { type LockedAgent, type LockedSession, lockScopes, type PolicyCache, sessionScope } from "./scope-locks.js";
import type { CalendarSpanCache } from "../core/windows.js";
import { type ChainScopes, SessionChains } from "./session-chains.js";
import {
  type AddressMode,
  type Counter,
  type CounterAddress,
  countersAt,
  currentAddress,
  readUsage,
  saveCounters,
  saveCountersSql,
  type UsageRows,
  type UsageSet,
} from "./usage-counters.js";

const iso = (ms: number) => new Date(ms).toISOString();

/** Lease status in `leases.status`. */
export const LeaseStatus = { ACTIVE: 1, RELEASED: 2, RECONCILED: 3 } as const;

/** A lease id as newId("lse") makes them (and AcquireLeaseRequest.lease_id takes them). */
const LEASE_ID = /^lse_[a-z0-9]{26}$/;

/** Longest lease the store grants, whatever a sidecar asks. */
export const MAX_LEASE_TTL_MS = 5 * 60_000;

interface LeaseRow {
  lease_id: string;
  session_id: string;
  status: number;
  granted_value: string | null;
  granted_actions: string | null;
  held_value: string;
  held_actions: string;
  written_off_value: string;
  written_off_actions: string;
  charges: [string, WindowKind, number][];
  expire_time: Date;
}

const LEASE_COLUMNS = `lease_id, session_id, status, granted_value, granted_actions, held_value, held_actions,
  written_off_value, written_off_actions, charges, expire_time`;

/** What the lease ledger needs from the store. */
export interface LeaseLedgerOptions {
  readonly db: Database;
  readonly now: () => number;
  readonly policies: PolicyCache;
  readonly spans: CalendarSpanCache;
  /** The sessions' chains, shared with the store's other writers. Default: a cache of its own. */
  readonly chains?: SessionChains;
  /**
   * How long after its expiry an unreleased lease is reconciled (written
   * off). It covers the sidecar's report delay and clock skew, so a live
   * sidecar's last records arrive first.
   */
  readonly reconcileGraceMs?: number;
}

/** Result of a sweep of expired leases. */
export interface ReconcileResult {
  readonly leases: number;
  readonly writtenOffValue: bigint;
  readonly writtenOffActions: bigint;
}

/**
 * Budget leases (design.md §4): a slice of what a session may still spend,
 * reserved in every window of the session, its parents and its agent at
 * once, and then spent by one sidecar on its own.
 *
 * The reserve sits in the held counters, so `committed + held ≤ limit`
 * keeps covering everything a sidecar might allow. Records of what the
 * sidecar allowed move amounts out of the lease into the ledger; settling,
 * releasing and reconciling change counters under the same row locks as
 * every other writer (scope-locks.ts), so replicas and sidecars never race.
 */
export class LeaseLedger {
  private readonly db: Database;
  private readonly now: () => number;
  private readonly policies: PolicyCache;
  private readonly spans: CalendarSpanCache;
  private readonly chains: SessionChains;
  private readonly graceMs: number;
  /** session.limit_reached notices this process has stored (see recordLimitNotices). */
  private readonly told = createToldNotices();
  private readonly grants: BatchQueue<AcquireLeaseRequest, Lease | undefined>;

  constructor(o: LeaseLedgerOptions) {
    this.db = o.db;
    this.now = o.now;
    this.policies = o.policies;
    this.spans = o.spans;
    this.chains = o.chains ?? new SessionChains();
    this.graceMs = o.reconcileGraceMs ?? 10_000;
    // Grants and reports look rows up by key, as decision batches do: their plans are cached.
    this.grants = new BatchQueue({ maxBatch: 256, run: (batch) => this.db.transaction((tx) => this.grantAll(tx, batch), { genericPlans: true }) });
  }

  /**
   * Grants a lease sized by the wish and by what is left: at most half of
   * the smallest remainder of any limited window, so several sidecars can
   * share a budget and slices shrink geometrically near a limit. Returns
   * undefined when a useful lease cannot be granted; the caller then decides
   * exactly through the store.
   *
   * Grants are group-committed (batch-queue.ts): every grant locks its
   * agent's counters, so a sidecar starting on many sessions at once would
   * otherwise queue one transaction per session behind that one lock.
   */
  acquire(req: AcquireLeaseRequest): Promise<Lease | undefined> {
    return this.grants.submit(req);
  }

  /**
   * Claims idempotency keys for sidecars about to decide calls with them
   * (see SyncService.ClaimIdempotencyKeys), in the order asked. A claim
   * lasts as long as a lease the sidecar takes now could stay unreconciled
   * (its TTL plus the reconcile grace): until then its record may still
   * come; after that the sidecar is presumed dead, its lease's unreported
   * rest written off, and a retry is decided again.
   */
  async claimKeys(claims: readonly IdempotencyKeyClaim[]): Promise<IdempotencyKeyClaimResult[]> {
    const nowMs = this.now();
    const asked = new Set<string>();
    for (const [i, c] of claims.entries()) {
      const k = `${c.sessionId}|${c.idempotencyKey}`;
      if (asked.has(k)) throw new ConnectError(`claims[${i}]: key "${c.idempotencyKey}" of session "${c.sessionId}" is asked twice`, Code.InvalidArgument);
      asked.add(k);
    }
    const { claimed, held } = await claimIdempotencyKeys(
      this.db,
      claims.map((c) => ({
        sessionId: c.sessionId,
        key: c.idempotencyKey,
        method: c.method,
        requestHash: c.requestHash,
        actionId: c.actionId,
        expireMs: nowMs + Math.min(c.ttl === undefined ? 30_000 : durationMs(c.ttl), MAX_LEASE_TTL_MS) + this.graceMs,
      })),
      nowMs,
    );
    return claims.map((c) => {
      const k = `s:${c.sessionId}|${c.idempotencyKey}`;
      if (claimed.has(k)) return create(IdempotencyKeyClaimResultSchema, { state: IdempotencyKeyState.CLAIMED });
      const hit = held.get(k);
      // Neither: the store does not have the session.
      if (hit === undefined) return create(IdempotencyKeyClaimResultSchema, {});
      return create(IdempotencyKeyClaimResultSchema, {
        state: hit.response !== undefined ? IdempotencyKeyState.ANSWERED : IdempotencyKeyState.IN_PROGRESS,
        method: hit.method,
        requestHash: hit.hash,
        response: hit.response,
        claimExpireTime: hit.claimExpireMs === undefined ? undefined : timestampFromMs(hit.claimExpireMs),
      });
    });
  }

  /**
   * Grants in request order, each seeing the reserves of those before it.
   *
   * A request may name the id to grant under (AcquireLeaseRequest.lease_id),
   * so that a grant whose answer was lost costs nothing: asked again, the
   * id gets the same lease back while it is active and nothing new after;
   * released first (the sidecar gave up on the call, see report()), it is
   * never granted. The session locks taken here are the ones report() takes
   * before it writes a lease of those sessions, so what is read below stays
   * true until the insert.
   */
  private async grantAll(tx: Queryable, reqs: readonly AcquireLeaseRequest[]): Promise<Settled<Lease | undefined>[]> {
    const nowMs = this.now();
    const chains = await this.chains.resolveScopes(tx, [...new Set(reqs.map((r) => r.sessionId))]);
    const named = [...new Set(reqs.map((r) => r.leaseId).filter((id) => id !== ""))];
    // The locks and the reads behind them in one round trip (see report()).
    const [locked, namedRows, usageRows] = await Promise.all([
      lockScopes(tx, chains.sessionIds, chains.agentIds, this.policies),
      named.length === 0
        ? undefined
        : tx.query<LeaseRow & { holder: string }>(`SELECT ${LEASE_COLUMNS}, holder FROM leases WHERE lease_id = ANY($1::text[])`, [named]),
      readUsage(tx, chains.scopeKeys),
    ]);
    const existing = new Map<string, LeaseRow & { holder: string }>((namedRows?.rows ?? []).map((r) => [r.lease_id, r]));
    const plans = reqs.map((req) => {
      const s = locked.sessions.get(req.sessionId);
      if (s === undefined) return undefined;
      const chain = [s, ...s.ancestorIds.map((id) => locked.sessions.get(id)!)];
      const active = !chain.some((c) => c.status !== SessionStatus.ACTIVE || lapse(sessionScope(c), nowMs) !== undefined);
      // An active lease asked for again is answered with the usage of now,
      // whatever became of its session meanwhile: its sidecar must hear of
      // it to give it back.
      const again = existing.get(req.leaseId);
      if (!active && (again === undefined || again.status !== LeaseStatus.ACTIVE)) return undefined;
      const scopes = scopesOf(s, locked.sessions, locked.agents.get(s.agentId)!);
      const addresses = scopes.flatMap((sc) =>
        WINDOW_KINDS.map((w) => currentAddress(sc.key, sc.policy, w, nowMs, this.spans)),
      );
      return { req, chain, scopes, addresses, active };
    });
    const usage = await chainCounters(tx, chains, usageRows, plans.flatMap((p) => p?.addresses ?? []), "current");
    const usageAt = (addresses: readonly CounterAddress[]) =>
      addresses.map((a) => {
        const c = usage.get(`${a.scopeKey}|${a.window}|${a.startMs}`)!;
        return create(CounterUsageSchema, {
          scopeKey: a.scopeKey,
          window: WINDOW_ENUM[a.window],
          windowStartUnixMs: BigInt(c.startMs),
          valueMicros: c.committedValue + c.heldValue,
          actions: c.committedActions + c.heldActions,
        });
      });
    const rows: {
      leaseId: string;
      req: AcquireLeaseRequest;
      addresses: readonly CounterAddress[];
      value: bigint | undefined;
      actions: bigint | undefined;
      charges: string;
      expireMs: number;
    }[] = [];
    /** The answer to each lease id named earlier in this batch: a request naming it again is a replay. */
    const answered = new Map<string, { req: AcquireLeaseRequest; settled: Settled<Lease | undefined> }>();
    const settled = reqs.map((req, i): Settled<Lease | undefined> => {
      const none = { i, ok: true, value: undefined } as const;
      const id = req.leaseId;
      const first = answered.get(id);
      const stored = existing.get(id);
      const owner = first?.req ?? (stored === undefined ? undefined : { sessionId: stored.session_id, holder: stored.holder });
      if (owner !== undefined && (owner.sessionId !== req.sessionId || owner.holder !== req.holder)) {
        return { i, ok: false, error: new ConnectError(`lease_id: "${id}" is a lease of another session or holder`, Code.InvalidArgument) };
      }
      if (first !== undefined) return { ...first.settled, i };
      const answer = (r: Settled<Lease | undefined>) => {
        if (id !== "") answered.set(id, { req, settled: r });
        return r;
      };
      const plan = plans[i];
      if (stored !== undefined) {
        // Granted before (its answer was lost): the same lease, reserving
        // nothing more, with what it has left (all of it, unless records
        // came). Released or reconciled, or released before it was ever
        // granted (a tombstone): nothing.
        if (stored.status !== LeaseStatus.ACTIVE || plan === undefined) return answer(none);
        const lease = create(LeaseSchema, {
          leaseId: id,
          sessionId: req.sessionId,
          valueMicros: stored.granted_value === null ? undefined : BigInt(stored.held_value),
          actions: stored.granted_actions === null ? undefined : BigInt(stored.held_actions),
          expireTime: timestampFromMs(stored.expire_time.getTime()),
          usage: usageAt(plan.addresses),
        });
        return answer({ i, ok: true, value: lease });
      }
      if (plan === undefined || !plan.active) return answer(none);
      const { chain, scopes, addresses } = plan;
      let valueLeft: bigint | undefined;
      let actionsLeft: bigint | undefined;
      let expireMs = nowMs + Math.min(req.ttl === undefined ? 30_000 : durationMs(req.ttl), MAX_LEASE_TTL_MS);
      for (const c of chain) expireMs = Math.min(expireMs, c.expireMs);
      for (const sc of scopes) {
        for (const w of WINDOW_KINDS) {
          const span = spanOf(sc.policy, w, nowMs, this.spans);
          // A lease never crosses a window boundary: what it reserved
          // belongs to the windows it was granted in.
          if (span !== undefined) expireMs = Math.min(expireMs, span.endMs);
          const c = usage.get(`${sc.key}|${w}|${span?.startMs ?? LIFETIME_START_MS}`)!;
          const limit = sc.policy.limits[w];
          if (limit.maxValue !== undefined) {
            const left = limit.maxValue - c.committedValue - c.heldValue;
            valueLeft = valueLeft === undefined || left < valueLeft ? left : valueLeft;
          }
          if (limit.maxActions !== undefined) {
            const left = limit.maxActions - c.committedActions - c.heldActions;
            actionsLeft = actionsLeft === undefined || left < actionsLeft ? left : actionsLeft;
          }
        }
      }
      const grantValue = valueLeft === undefined ? undefined : min(req.desiredValueMicros, half(valueLeft));
      const grantActions = actionsLeft === undefined ? undefined : min(req.desiredActions, half(actionsLeft));
      // A lease of no value is useful to actions without an amount (tool
      // calls, min_value_micros 0): it reserves only their action slots,
      // and without it each would go through the control plane.
      if (grantValue !== undefined && grantValue < req.minValueMicros) return answer(none);
      if (grantActions !== undefined && grantActions < 1n) return answer(none);
      if (expireMs <= nowMs) return answer(none);
      reserve(usage, addresses, grantValue ?? 0n, grantActions ?? 0n);
      const leaseId = id === "" ? newId("lse", nowMs) : id;
      rows.push({
        leaseId,
        req,
        addresses,
        value: grantValue,
        actions: grantActions,
        // The windows actually charged: on a replica whose clock lags, a
        // window another replica already rolled over reads (and is
        // charged) as the newer one (usage-counters.ts), and the records,
        // release and write-off of this lease must find it there.
        charges: JSON.stringify(addresses.map((a) => [a.scopeKey, a.window, usage.get(`${a.scopeKey}|${a.window}|${a.startMs}`)!.startMs])),
        expireMs,
      });
      const lease = create(LeaseSchema, {
        leaseId,
        sessionId: req.sessionId,
        valueMicros: grantValue,
        actions: grantActions,
        expireTime: timestampFromMs(expireMs),
        usage: usageAt(addresses),
      });
      return answer({ i, ok: true, value: lease });
    });
    if (rows.length === 0) return settled;
    // Nothing else can have taken a named id of these sessions (locked,
    // and checked above), but another session's grant may be taking it
    // right now: that one keeps it, and this grant is undone.
    const { rows: inserted } = await tx.query<{ lease_id: string }>(
      `INSERT INTO leases (lease_id, session_id, holder, status, granted_value, granted_actions, held_value, held_actions,
                           charges, create_time, update_time, expire_time)
       SELECT u.lease_id, u.session_id, u.holder, 1, u.granted_value, u.granted_actions,
              coalesce(u.granted_value, 0), coalesce(u.granted_actions, 0), u.charges::jsonb, $7::timestamptz, $7::timestamptz, u.expire_time
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $8::timestamptz[])
              AS u(lease_id, session_id, holder, granted_value, granted_actions, charges, expire_time)
       ON CONFLICT (lease_id) DO NOTHING
       RETURNING lease_id`,
      [
        rows.map((r) => r.leaseId),
        rows.map((r) => r.req.sessionId),
        rows.map((r) => r.req.holder),
        rows.map((r) => r.value?.toString() ?? null),
        rows.map((r) => r.actions?.toString() ?? null),
        rows.map((r) => r.charges),
        iso(nowMs),
        rows.map((r) => iso(r.expireMs)),
      ],
    );
    const taken = new Set(rows.map((r) => r.leaseId));
    for (const r of inserted) taken.delete(r.lease_id);
    for (const r of rows) if (taken.has(r.leaseId)) reserve(usage, r.addresses, -(r.value ?? 0n), -(r.actions ?? 0n));
    await saveCounters(tx, usage);
    if (taken.size === 0) return settled;
    return settled.map((st) =>
      st.ok && st.value !== undefined && taken.has(st.value.leaseId)
        ? { i: st.i, ok: false, error: new ConnectError(`lease_id: "${st.value.leaseId}" is a lease of another session or holder`, Code.InvalidArgument) }
        : st,
    );
  }

  /**
   * Applies sidecar reports in one transaction: records first (each moves
   * its amount out of its lease; a record seen before charges nothing),
   * then settlements of holds, then releases. Returns the settlements the
   * store refused, with why.
   */
  async report(req: ReportLeasesRequest): Promise<string[]> {
    const nowMs = this.now();
    const sessionIds = [...new Set(req.reports.map((r) => r.sessionId))];
    if (sessionIds.length === 0) return [];
    const { rejected, told, ending } = await this.db.transaction(async (tx) => {
      const chains = await this.chains.resolveScopes(tx, sessionIds);
      const leaseIds = [...new Set(req.reports.map((r) => r.leaseId).filter((id) => id !== ""))];
      const actionIds = [...new Set(req.reports.flatMap((rep) => rep.records.map((r) => r.actionId)))];
      // The locks, then every read the records need, sent together: on a
      // pipelined connection one round trip. A connection runs its
      // statements in order, so each read starts once the locks are held
      // and sees everything done under them (usage-counters.ts, readUsage).
      const [locked, leaseRows, storedRows, usageRows, auditHeads] = await Promise.all([
        lockScopes(tx, chains.sessionIds, chains.agentIds, this.policies),
        leaseIds.length === 0
          ? undefined
          : tx.query<LeaseRow>(`SELECT ${LEASE_COLUMNS} FROM leases WHERE lease_id = ANY($1::text[]) ORDER BY lease_id FOR UPDATE`, [leaseIds]),
        actionIds.length === 0 ? undefined : tx.query<{ action_id: string }>("SELECT action_id FROM actions WHERE action_id = ANY($1::text[])", [actionIds]),
        actionIds.length === 0 ? new Map() : readUsage(tx, chains.scopeKeys),
        actionIds.length === 0 ? new Map<string, never>() : readAuditHeads(tx, sessionIds),
      ]);
      const leases = new Map<string, LeaseRow>((leaseRows?.rows ?? []).map((r) => [r.lease_id, r]));
      // Records the ledger has already: a retried report, whose records
      // changed everything they change then. Read under the session locks,
      // which every report of these sessions takes, so no other can be
      // storing one of them meanwhile.
      const stored = new Set((storedRows?.rows ?? []).map((r) => r.action_id));

      // 1. Records. Only those not stored yet count: a retried report is a
      // no-op, and a record repeated within this request counts once (the
      // first), as the ledger row it becomes is one.
      const repeated = new Set<string>();
      const records = req.reports.flatMap((rep, i) => {
        const s = locked.sessions.get(rep.sessionId);
        const lease = leases.get(rep.leaseId);
        if (s === undefined) return [];
        return rep.records.flatMap((record, j) =>
          repeated.has(record.actionId) || !repeated.add(record.actionId)
            ? []
            : [{ record, s, lease: lease?.session_id === rep.sessionId ? lease : undefined, reportPath: `reports[${i}]`, path: `reports[${i}].records[${j}]` }],
        );
      });
      refuseUnfitRecords(records, stored);
      const fresh = records.filter(({ record }) => !stored.has(record.actionId));
      // The counters of every lease a new record spent from.
      const spentFrom = [...new Set(fresh.flatMap(({ lease }) => (lease === undefined ? [] : [lease])))];
      const usage = await chainCounters(tx, chains, usageRows, chargedAddresses(spentFrom), "exact");
      const leaseDelta = new Map<string, LeaseDelta>();
      const activity = new Map<string, { requests: number; denials: number; ns: bigint; lastMs: number }>();
      for (const { record, s, lease } of fresh) {
        const a = activity.get(s.sessionId) ?? { requests: 0, denials: 0, ns: 0n, lastMs: 0 };
        a.requests++;
        if (record.decision!.outcome === Outcome.DENY) a.denials++;
        a.ns += record.processingNanos;
        // A sidecar's clock may run ahead: activity from its future would
        // keep the session from idling (settlements are clamped alike).
        a.lastMs = Math.max(a.lastMs, Math.min(timestampMs(record.createTime!), nowMs));
        activity.set(s.sessionId, a);
        if (record.decision!.outcome !== Outcome.ALLOW || lease === undefined) continue;
        const amount = record.action!.amount?.amountMicros ?? 0n;
        const held = record.method === "authorize";
        const d = deltaOf(leaseDelta, lease.lease_id);
        // It fits: refuseUnfitRecords judged these records, or more of
        // them (those a retried report repeats, which take nothing now).
        const draw = takeFrom(lease, amount, d, s.policy.currency);
        if (typeof draw === "string") throw new Error(`record ${record.actionId}${draw}, though it was judged to fit`);
        d.uv += amount;
        d.ua += 1n;
        for (const [scopeKey, window, startMs] of lease.charges) {
          const c = usage.get(`${scopeKey}|${window}|${startMs}`)!;
          c.heldValue -= draw.heldValue;
          c.heldActions -= draw.heldActions;
          c.committedValue -= draw.writtenOffValue;
          c.committedActions -= draw.writtenOffActions;
          if (held) {
            c.heldValue += amount;
            c.heldActions += 1n;
          } else {
            c.committedValue += amount;
            c.committedActions += 1n;
          }
        }
      }
      // The circuit breaker counts the sidecar's decisions as they were made.
      const tripped = breakerRuns(fresh, locked.sessions, locked.agents);

      // Every write of the records in one statement (data-modifying CTEs,
      // as a decision batch writes): the ledger rows and their audit
      // records, the counters, the leases, the sessions' activity and the
      // keys the records answer. Not awaited: what follows runs after it
      // all the same, and the transaction waits for it before it commits,
      // the COMMIT sent right behind it when nothing follows.
      const params: unknown[] = [];
      const inserted = insertRecordsSql(fresh, req.holder, nowMs, params);
      const deltas = [...leaseDelta];
      const col = (f: (d: (typeof deltas)[number][1]) => bigint) => deltas.map(([, d]) => f(d).toString());
      const ids = [...activity.keys()];
      const writes = [
        inserted?.sql,
        ...appendStatements(params, writeAuditSql(chainAudit(auditHeads, inserted?.audit ?? []))),
        ...appendStatements(params, saveCountersSql(usage)),
        // One statement for every lease: a report covers many sessions.
        deltas.length === 0
          ? undefined
          : appendStatement(
              params,
              `UPDATE leases l SET held_value = l.held_value - u.hv, held_actions = l.held_actions - u.ha,
                      written_off_value = l.written_off_value - u.wv, written_off_actions = l.written_off_actions - u.wa,
                      used_value = l.used_value + u.uv, used_actions = l.used_actions + u.ua, update_time = $8::timestamptz
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
                      AS u(lease_id, hv, ha, wv, wa, uv, ua)
                WHERE l.lease_id = u.lease_id`,
              [
                deltas.map(([id]) => id),
                col((d) => d.hv),
                col((d) => d.ha),
                col((d) => d.wv),
                col((d) => d.wa),
                col((d) => d.uv),
                col((d) => d.ua),
                iso(nowMs),
              ],
            ),
        ids.length === 0
          ? undefined
          : appendStatement(
              params,
              `UPDATE sessions s SET request_count = s.request_count + u.requests, denial_count = s.denial_count + u.denials,
                      processing_ns = s.processing_ns + u.ns, last_activity_time = greatest(s.last_activity_time, u.last_time),
                      denial_run = u.denial_run
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::timestamptz[], $6::integer[])
                      AS u(session_id, requests, denials, ns, last_time, denial_run)
                WHERE s.session_id = u.session_id`,
              [
                ids,
                ids.map((id) => activity.get(id)!.requests),
                ids.map((id) => activity.get(id)!.denials),
                ids.map((id) => activity.get(id)!.ns.toString()),
                ids.map((id) => iso(activity.get(id)!.lastMs)),
                ids.map((id) => locked.sessions.get(id)!.denialRun),
              ],
            ),
        // A key the store already has keeps its first answer; a claim by the
        // record's action becomes it (idempotency.ts).
        saveIdempotencySql(
          fresh
            .filter(({ record }) => record.idempotencyKey !== "")
            .map(({ record, s }) => ({
              scope: `s:${s.sessionId}`,
              key: record.idempotencyKey,
              method: record.method,
              requestHash: record.requestHash,
              response: record.response,
              actionId: record.actionId,
            })),
          nowMs,
          params,
        ),
      ].filter((w) => w !== undefined);
      if (writes.length > 0) void tx.query(foldStatements(writes), params);
      // Claims whose calls ended without a record, after the records (a
      // claim filled above is no longer one, and stays).
      await releaseClaims(
        tx,
        req.reports.flatMap((rep) =>
          locked.sessions.has(rep.sessionId) ? rep.releasedClaims.map((c) => ({ scope: `s:${rep.sessionId}`, key: c.idempotencyKey, actionId: c.actionId })) : [],
        ),
      );

      // A hold a sidecar placed before it heard that its session (or a
      // parent) had ended arrives after the ending closed the others. It
      // stays open: the sidecar, alive as this report shows, may have
      // answered a capture of it (its settlement may follow below), and
      // says what became of it once it hears of the ending; if it never
      // does, the sweeper writes it off past its expiry, like any other.
      // (Written off now, the amount could end a parent EXHAUSTED for good
      // on a capture that never happened.)

      // 2. Settlements of holds the sidecar placed, all locked in one read
      // and applied in a few statements; each is judged in report order
      // (a second settlement of one hold finds it settled by the first).
      const rejected: string[] = [];
      const settling = req.reports.flatMap((rep) => (locked.sessions.has(rep.sessionId) ? rep.settlements.map((st) => ({ st, sessionId: rep.sessionId })) : []));
      const holds = new Map<string, ActionRow>();
      if (settling.length > 0) {
        const ids = [...new Set(settling.map(({ st }) => st.authorizationId))];
        for (const h of await lockActions(tx, "action_id = ANY($1::text[])", [ids])) holds.set(h.action_id, h);
      }
      // A hold the store wrote off (closeHolds: its session ended, or it
      // outlived the grace) is still this sidecar's to settle: its word
      // turns the write-off into a capture or gives it back.
      const captures: { hold: ActionRow; amountMicros: bigint }[] = [];
      const voided: ActionRow[] = [];
      const expired: ActionRow[] = [];
      const handedBack: ActionRow[] = [];
      const reversed: { hold: ActionRow; amountMicros: bigint | undefined }[] = [];
      const accepted: typeof settling = [];
      for (const { st, sessionId } of settling) {
        const h = holds.get(st.authorizationId);
        const writtenOff = h?.written_off_value != null;
        // The sidecar's word on a hold voided elsewhere: it did not settle
        // it, so a write-off of it goes back; any other hold was settled
        // without one (a capture elsewhere), and there is nothing to do.
        const mine = h !== undefined && h.session_id === sessionId && h.placed_by === req.holder;
        if (st.release === HoldRelease.SETTLED_ELSEWHERE && st.captureMicros === undefined && !(writtenOff && mine)) continue;
        // Only the sidecar that placed a hold knows what became of it (a
        // handed-back hold is the store's: placed_by is cleared).
        if (!mine || (h.status !== ActionStatus.HELD && !writtenOff)) {
          rejected.push(
            `${st.authorizationId}: ${h === undefined || h.session_id !== sessionId ? "not found" : !mine ? "placed by another sidecar, or handed back" : `is ${ActionStatus[h.status]}`}`,
          );
          continue;
        }
        if (st.captureMicros !== undefined && st.captureMicros > BigInt(writtenOff ? h.written_off_value! : h.held_value)) {
          rejected.push(`${st.authorizationId}: capture above the held amount`);
          continue;
        }
        accepted.push({ st, sessionId });
        const capturing = st.captureMicros !== undefined;
        if (writtenOff) {
          reversed.push({ hold: h, amountMicros: st.captureMicros });
          holds.set(h.action_id, { ...h, written_off_value: null, status: capturing ? ActionStatus.CAPTURED : h.status });
        } else if (capturing) {
          captures.push({ hold: h, amountMicros: st.captureMicros! });
          holds.set(h.action_id, { ...h, status: ActionStatus.CAPTURED });
        } else if (st.release === HoldRelease.HANDED_BACK) {
          handedBack.push(h);
          holds.set(h.action_id, { ...h, placed_by: null });
        } else {
          // Released as its session ended (VOIDED, or EXPIRED if it
          // lapsed): a session its sidecar saw end, still active here, can
          // only have lapsed by time before the sweeper ended it.
          const ended = locked.sessions.get(sessionId)!;
          const status =
            st.release === HoldRelease.UNSPECIFIED || (st.release === HoldRelease.SESSION_ENDED && isTerminal(ended.status) && ended.status !== SessionStatus.EXPIRED)
              ? ActionStatus.VOIDED
              : ActionStatus.EXPIRED;
          (status === ActionStatus.EXPIRED ? expired : voided).push(h);
          holds.set(h.action_id, { ...h, status });
        }
      }
      await releaseHolds(tx, voided, ActionStatus.VOIDED, nowMs);
      await releaseHolds(tx, expired, ActionStatus.EXPIRED, nowMs);
      await captureHolds(tx, captures, nowMs);
      await reverseWriteOffs(tx, reversed, nowMs);
      // The store settles these now (through the control plane) and expires
      // them as its own: their sidecar no longer has them.
      if (handedBack.length > 0) {
        await tx.query("UPDATE actions SET placed_by = NULL WHERE action_id = ANY($1::text[])", [handedBack.map((h) => h.action_id)]);
      }
      // An agent's settlement is activity, as one through the store is:
      // without it a session whose agent only captured on its sidecar went
      // idle here. (Never later than now: a sidecar's clock may run ahead.)
      const settledAt = new Map<string, number>();
      for (const { st, sessionId } of accepted) {
        if (st.captureMicros === undefined && st.release !== HoldRelease.UNSPECIFIED) continue;
        const at = Math.min(st.time === undefined ? nowMs : timestampMs(st.time), nowMs);
        settledAt.set(sessionId, Math.max(settledAt.get(sessionId) ?? 0, at));
      }
      if (settledAt.size > 0) {
        await tx.query(
          `UPDATE sessions s SET last_activity_time = greatest(s.last_activity_time, u.at)
             FROM unnest($1::text[], $2::timestamptz[]) AS u(session_id, at) WHERE s.session_id = u.session_id`,
          [[...settledAt.keys()], [...settledAt.values()].map(iso)],
        );
      }
      // A keyed Capture or Void answered by the sidecar keeps its answer
      // here, for a retry that lands on another sidecar or the control plane.
      await saveIdempotency(
        tx,
        accepted
          .filter(({ st }) => st.idempotencyKey !== "")
          .map(({ st, sessionId }) => ({
            scope: `s:${sessionId}`,
            key: st.idempotencyKey,
            method: st.captureMicros === undefined ? "void" : "capture",
            requestHash: st.requestHash,
            response: st.response,
            // The sidecar claimed the key for the hold it settles: filled.
            actionId: st.authorizationId,
          })),
        nowMs,
      );
      // A refused settlement's claim goes back: the key answered nothing.
      const taken = new Set(accepted.map((a) => a.st));
      await releaseClaims(
        tx,
        settling
          .filter(({ st }) => st.idempotencyKey !== "" && !taken.has(st))
          .map(({ st, sessionId }) => ({ scope: `s:${sessionId}`, key: st.idempotencyKey, actionId: st.authorizationId })),
      );

      // 3. Releases: what is left goes back to every window it reserved in.
      // Only the report's own session's lease: the access check vouched
      // for the session, not for whatever lease id came with it. A lease
      // the sweeper wrote off meanwhile (its sidecar was cut off, not
      // dead) comes back too: its records came first (in this report or
      // before), so what they did not take of the write-off was not spent.
      const releasing = req.reports
        .filter((rep) => rep.release)
        .map((rep) => ({ rep, l: leases.get(rep.leaseId) }))
        .filter(({ rep, l }) => l !== undefined && l.session_id === rep.sessionId && l.status !== LeaseStatus.RELEASED)
        .map(({ l }) => l!);
      if (releasing.length > 0) {
        const { rows } = await tx.query<LeaseRow>(`SELECT ${LEASE_COLUMNS} FROM leases WHERE lease_id = ANY($1::text[])`, [releasing.map((l) => l.lease_id)]);
        await settleLeases(tx, rows, "release", nowMs);
      }
      // A release of a lease the store does not have: the sidecar named
      // the id of a grant whose answer it never got, and gave up on it
      // (AcquireLeaseRequest.lease_id). The grant may still be on its way
      // (a control plane that has not got to it yet): a released row
      // holding nothing, under the report's own session, keeps that id
      // from ever being granted (grantAll), as a release of the lease
      // would have given it back.
      const tombstones = new Map<string, string>();
      for (const rep of req.reports) {
        if (!rep.release || !LEASE_ID.test(rep.leaseId) || leases.has(rep.leaseId) || tombstones.has(rep.leaseId)) continue;
        if (locked.sessions.has(rep.sessionId)) tombstones.set(rep.leaseId, rep.sessionId);
      }
      if (tombstones.size > 0) {
        await tx.query(
          `INSERT INTO leases (lease_id, session_id, holder, status, granted_value, granted_actions, held_value, held_actions,
                               charges, create_time, update_time, expire_time)
           SELECT u.lease_id, u.session_id, $3, ${LeaseStatus.RELEASED}, 0, 0, 0, 0, '[]'::jsonb, $4::timestamptz, $4::timestamptz, $4::timestamptz
             FROM unnest($1::text[], $2::text[]) AS u(lease_id, session_id)
           ON CONFLICT (lease_id) DO NOTHING`,
          [[...tombstones.keys()], [...tombstones.values()], req.holder, iso(nowMs)],
        );
      }

      // 4. Lifetime limits used up by what was committed end the session,
      // or a parent (a fork's spend counts in its parents' lifetimes); each
      // ends on its own, its forks after the commit.
      const live = [...locked.sessions.values()].filter((s) => !isTerminal(s.status));
      const ending = [...(await lifetimesUsedUp(tx, live))];
      for (const id of ending) await endSessions(tx, [id], SessionStatus.EXHAUSTED, EXHAUSTED_REASON, nowMs);
      // 5. A session the circuit breaker tripped on (and that did not just
      // end) is paused, as a person would pause it; its sidecars see it on
      // the watch stream and give their leases back.
      await pauseSessions(
        tx,
        tripped.filter((t) => !ending.includes(t.session.sessionId)),
        nowMs,
      );
      // A window limit a sidecar's decision ran into is told like the store's own.
      const notices = fresh.flatMap(({ record, s }) =>
        limitNoticesOf({ sessionId: s.sessionId, agentId: s.agentId, actionId: record.actionId, decision: record.decision! }, nowMs),
      );
      return { rejected, told: await recordLimitNotices(tx, notices, this.told), ending };
    }, { genericPlans: true });
    for (const k of told) this.told.set(k, true);
    // Committed either way: see DecisionBatcher on a failure here.
    await endForksOf(this.db, this.policies, ending, this.now).catch(() => {});
    return rejected;
  }

  /**
   * Reconciles leases past their expiry plus the grace: whatever was not
   * reported is written off as spent (the sidecar may have allowed it and
   * died before saying so). Idempotent; safe on every replica.
   */
  async reconcile(limit = 500): Promise<ReconcileResult> {
    const nowMs = this.now();
    const due = await this.db.query<{ lease_id: string; session_id: string }>(
      `SELECT lease_id, session_id FROM leases WHERE status = 1 AND expire_time <= $1::timestamptz ORDER BY expire_time LIMIT ${limit}`,
      [iso(nowMs - this.graceMs)],
    );
    let writtenOffValue = 0n;
    let writtenOffActions = 0n;
    let n = 0;
    for (const { lease_id, session_id } of due.rows) {
      await this.db.transaction(async (tx) => {
        // Locked as every writer of the lease's counters locks them (scope-locks.ts).
        const chains = await this.chains.resolveScopes(tx, [session_id]);
        await lockScopes(tx, chains.sessionIds, chains.agentIds, this.policies);
        const { rows } = await tx.query<LeaseRow>(`SELECT ${LEASE_COLUMNS} FROM leases WHERE lease_id = $1 AND status = 1 FOR UPDATE`, [lease_id]);
        if (rows.length === 0) return;
        writtenOffValue += BigInt(rows[0]!.held_value);
        writtenOffActions += BigInt(rows[0]!.held_actions);
        n++;
        await settleLeases(tx, rows, "write-off", nowMs);
        // The write-off counts in the chain's lifetimes, but ends no session
        // EXHAUSTED on its own: the sidecar, if only cut off, may still give
        // the lease back (report()), and an ended session never comes back.
        // Spend that then uses a lifetime up ends it as usual.
      });
    }
    return { leases: n, writtenOffValue, writtenOffActions };
  }
}

/** A reported record, where it stands in its request, with its session and the lease it names. */
interface ReportedRecord {
  readonly record: LeaseRecord;
  readonly s: LockedSession;
  /** Its report's lease, if the session has it. */
  readonly lease: LeaseRow | undefined;
  /** Its report's path in the request (`reports[i]`) and its own (`reports[i].records[j]`). */
  readonly reportPath: string;
  readonly path: string;
}

/** What the records of one report took out of a lease, and what they used. */
interface LeaseDelta {
  hv: bigint;
  ha: bigint;
  wv: bigint;
  wa: bigint;
  uv: bigint;
  ua: bigint;
}

function deltaOf(deltas: Map<string, LeaseDelta>, leaseId: string): LeaseDelta {
  let d = deltas.get(leaseId);
  if (d === undefined) deltas.set(leaseId, (d = { hv: 0n, ha: 0n, wv: 0n, wa: 0n, uv: 0n, ua: 0n }));
  return d;
}

/** Where an allowed record's amount and action slot come from. */
interface Draw {
  /** The lease's reserve, while it is open. */
  readonly heldValue: bigint;
  readonly heldActions: bigint;
  /** Its write-off, once it was reconciled: already counted as spent. */
  readonly writtenOffValue: bigint;
  readonly writtenOffActions: bigint;
}

/**
 * Takes what an allowed record of `amount` spends out of its lease, after
 * what earlier records of the report took (`d`, updated); or says why it
 * does not fit (the rest of its message, after the record's path). A
 * sidecar spends from a lease no more than it was granted, so its records
 * never take more than the lease has left, or, once it was written off,
 * than the unreported rest it was written off with. A dimension the lease
 * does not limit (granted unset) reserved nothing and gives nothing.
 */
function takeFrom(lease: LeaseRow, amount: bigint, d: LeaseDelta, currency: string): Draw | string {
  const value = lease.granted_value === null ? 0n : amount;
  const actions = lease.granted_actions === null ? 0n : 1n;
  const id = `lease "${lease.lease_id}"`;
  if (lease.status === LeaseStatus.ACTIVE) {
    const valueLeft = BigInt(lease.held_value) - d.hv;
    if (value > valueLeft) return `.action.amount: ${formatMoney(amount, currency)} is more than ${id} has left (${formatMoney(valueLeft, currency)})`;
    if (actions > BigInt(lease.held_actions) - d.ha) return `: ${id} has no action left for it (it was granted ${lease.granted_actions})`;
    d.hv += value;
    d.ha += actions;
    return { heldValue: value, heldActions: actions, writtenOffValue: 0n, writtenOffActions: 0n };
  }
  if (lease.status === LeaseStatus.RECONCILED) {
    const valueLeft = BigInt(lease.written_off_value) - d.wv;
    if (value > valueLeft) {
      return `.action.amount: ${formatMoney(amount, currency)} is more than the unreported rest ${id} was written off with (${formatMoney(valueLeft, currency)})`;
    }
    if (actions > BigInt(lease.written_off_actions) - d.wa) return `: ${id} was written off with no action left for it`;
    d.wv += value;
    d.wa += actions;
    return { heldValue: 0n, heldActions: 0n, writtenOffValue: value, writtenOffActions: actions };
  }
  return `: ${id} was already released`;
}

/**
 * Refuses (INVALID_ARGUMENT, naming the record) a report whose allowed
 * records a correct sidecar never sends, before anything is written: one
 * from a lease the session does not have; one in another currency than
 * its session's (it would be added to counters in that currency); an
 * authorization without the time its hold lapses (it would hold for ever);
 * and one that does not fit in its lease ({@link takeFrom}: it would be
 * committed past the limits the lease was cut from). Records in `stored`
 * (ids the ledger has) are judged but take nothing.
 */
function refuseUnfitRecords(records: readonly ReportedRecord[], stored: ReadonlySet<string>): void {
  const allowed = records.filter(({ record }) => record.decision!.outcome === Outcome.ALLOW);
  for (const { record, s, lease, reportPath, path } of allowed) {
    if (lease === undefined) {
      throw new ConnectError(`${reportPath}.lease_id: record ${record.actionId} was allowed from a lease session "${s.sessionId}" does not have`, Code.InvalidArgument);
    }
    const amount = record.action!.amount;
    if (amount !== undefined && amount.currencyCode !== s.policy.currency) {
      throw new ConnectError(
        `${path}.action.amount.currency_code: ${amount.currencyCode} differs from the session's currency ${s.policy.currency}`,
        Code.InvalidArgument,
      );
    }
    if (record.method === "authorize" && record.holdExpireTime === undefined) {
      throw new ConnectError(`${path}.hold_expire_time: an allowed authorization must say when its hold lapses`, Code.InvalidArgument);
    }
  }
  // A record stored before (a retried report) took from its lease then,
  // and takes nothing now.
  const deltas = new Map<string, LeaseDelta>();
  for (const { record, s, lease, path } of allowed) {
    if (stored.has(record.actionId)) continue;
    const got = takeFrom(lease!, record.action!.amount?.amountMicros ?? 0n, deltaOf(deltas, lease!.lease_id), s.policy.currency);
    if (typeof got === "string") throw new ConnectError(`${path}${got}`, Code.InvalidArgument);
  }
}

/**
 * Runs the circuit breaker over reported decisions, per session in the
 * order they were made: updates each session's denial run and returns the
 * active sessions whose run reached their threshold.
 */
function breakerRuns(
  records: readonly { record: LeaseRecord; s: LockedSession }[],
  sessions: Map<string, LockedSession>,
  agents: Map<string, LockedAgent>,
): { session: LockedSession; run: number }[] {
  const bySession = new Map<string, LeaseRecord[]>();
  for (const { record, s } of records) {
    const list = bySession.get(s.sessionId) ?? [];
    list.push(record);
    bySession.set(s.sessionId, list);
  }
  const tripped: { session: LockedSession; run: number }[] = [];
  for (const [id, list] of bySession) {
    const s = sessions.get(id)!;
    const agent = agents.get(s.agentId);
    const threshold = tripThreshold(
      [s.policy, ...s.ancestorIds.map((a) => sessions.get(a)!.policy), ...(agent === undefined ? [] : [agent.policy])],
      "pauseAfterDenials",
    );
    let tripRun: number | undefined;
    for (const r of list.sort((a, b) => timestampMs(a.createTime!) - timestampMs(b.createTime!))) {
      // Made before a person last paused or resumed the session: that
      // started the count over, and these belong to the run before it.
      if (timestampMs(r.createTime!) < s.denialRunSinceMs) continue;
      s.denialRun = denialRun(s.denialRun, r.decision!.outcome, r.decision!.reasons);
      if (tripRun === undefined && s.status === SessionStatus.ACTIVE && trips(s.denialRun, threshold)) tripRun = s.denialRun;
    }
    // Said with the run that tripped it, not what later records made of it.
    if (tripRun !== undefined) tripped.push({ session: s, run: tripRun });
  }
  return tripped;
}

/** Pauses active sessions the circuit breaker tripped on, with their events. */
async function pauseSessions(tx: Queryable, tripped: readonly { session: LockedSession; run: number }[], nowMs: number): Promise<void> {
  if (tripped.length === 0) return;
  const sessions = tripped.map((t) => t.session);
  const reasons = tripped.map((t) => breakerPauseReason(t.run));
  await tx.query(
    `UPDATE sessions s SET status = ${SessionStatus.PAUSED}, status_reason = u.reason, update_time = $3::timestamptz, revision = warden_next_revision()
       FROM unnest($1::text[], $2::text[]) AS u(session_id, reason)
      WHERE s.session_id = u.session_id AND s.status = ${SessionStatus.ACTIVE}`,
    [sessions.map((s) => s.sessionId), reasons, iso(nowMs)],
  );
  for (const s of sessions) s.status = SessionStatus.PAUSED;
  await recordEvents(
    tx,
    sessions.map((s, i) => ({ type: "session.paused", sessionId: s.sessionId, agentId: s.agentId, data: { status: "PAUSED", reason: reasons[i] }, nowMs })),
  );
}

/**
 * The counters at `addresses` from `rows`, the usage rows of `chains`' scopes
 * read with their locks. A scope outside them is read now: none should be
 * (a grant charges its session's chain), but a counter read as unused
 * would be written over.
 */
async function chainCounters(tx: Queryable, chains: ChainScopes, rows: UsageRows, addresses: readonly CounterAddress[], mode: AddressMode): Promise<UsageSet> {
  const unread = addresses.filter((a) => !chains.scopeKeys.has(a.scopeKey)).map((a) => a.scopeKey);
  return countersAt(unread.length === 0 ? rows : new Map([...rows, ...(await readUsage(tx, unread))]), addresses, mode);
}

/** The scopes a session's actions are checked against: itself, its parents, its agent. */
function scopesOf(s: LockedSession, sessions: Map<string, LockedSession>, agent: LockedAgent): ScopeState[] {
  return [
    sessionScope(s),
    ...s.ancestorIds.map((id) => sessionScope(sessions.get(id)!, Scope.PARENT_SESSION)),
    { scope: Scope.AGENT, id: agent.agentId, key: `a:${agent.agentId}`, policy: agent.policy },
  ];
}

/**
 * Ends locked leases: "release" gives back the unspent rest of an active
 * one, and the rest of a reconciled one's write-off that its records did
 * not take (its sidecar's release says no more will come); "write-off"
 * counts an active one's rest as spent. Either way every window the lease
 * reserved in ("exact" mode: a window that rolled over limits nothing) is
 * adjusted; a released lease holds and has written off nothing.
 */
async function settleLeases(tx: Queryable, rows: readonly LeaseRow[], how: "release" | "write-off", nowMs: number): Promise<void> {
  const open = rows.filter((r) => r.status === LeaseStatus.ACTIVE || (how === "release" && r.status === LeaseStatus.RECONCILED));
  if (open.length === 0) return;
  const usage: UsageSet = await countersOf(tx, open);
  for (const r of open) {
    const hv = BigInt(r.held_value);
    const ha = BigInt(r.held_actions);
    const wv = BigInt(r.written_off_value);
    const wa = BigInt(r.written_off_actions);
    for (const [scopeKey, window, startMs] of r.charges) {
      const c: Counter = usage.get(`${scopeKey}|${window}|${startMs}`)!;
      c.heldValue -= hv;
      c.heldActions -= ha;
      if (how === "write-off") {
        c.committedValue += hv;
        c.committedActions += ha;
      } else {
        c.committedValue -= wv;
        c.committedActions -= wa;
      }
    }
  }
  await saveCounters(tx, usage);
  await tx.query(
    how === "release"
      ? `UPDATE leases SET status = 2, held_value = 0, held_actions = 0, written_off_value = 0, written_off_actions = 0,
                update_time = $2::timestamptz WHERE lease_id = ANY($1::text[])`
      : `UPDATE leases SET status = 3, written_off_value = held_value, written_off_actions = held_actions,
                held_value = 0, held_actions = 0, update_time = $2::timestamptz WHERE lease_id = ANY($1::text[])`,
    [open.map((r) => r.lease_id), iso(nowMs)],
  );
}

/**
 * The statement that inserts new records as ledger rows (its parameters
 * appended to `params`), and their audit entries: decisions a sidecar made
 * are audited when the store first records them, chained onto their
 * sessions. Undefined when there are none. The caller leaves out records
 * the ledger has (a retried report): an id stored twice fails the
 * statement, and with it the report, rather than charge anything twice.
 */
function insertRecordsSql(
  records: readonly { record: LeaseRecord; s: LockedSession; lease: LeaseRow | undefined }[],
  holder: string,
  nowMs: number,
  params: unknown[],
): { sql: string; audit: AuditEntry[] } | undefined {
  if (records.length === 0) return undefined;
  const cols = {
    id: [] as string[],
    session: [] as string[],
    agent: [] as string[],
    method: [] as string[],
    action: [] as string[],
    decision: [] as string[],
    outcome: [] as number[],
    status: [] as number[],
    currency: [] as string[],
    amount: [] as string[],
    held: [] as string[],
    captured: [] as string[],
    /** The lease an allowed record spent from: its charges are the action's. */
    lease: [] as (string | null)[],
    created: [] as string[],
    holdExpire: [] as (string | null)[],
  };
  const audit: AuditEntry[] = [];
  for (const { record, s, lease } of records) {
    const outcome = record.decision!.outcome;
    const amount = record.action!.amount?.amountMicros ?? 0n;
    const allowed = outcome === Outcome.ALLOW;
    const held = allowed && record.method === "authorize";
    // A sidecar whose clock runs ahead would keep its hold open here for
    // the skew beyond its TTL (and the budget with it, should it crash):
    // never later than the TTL from the store's now. Its capture still
    // counts after that (the grace, then the write-off's reversal).
    const holdExpireMs = held && record.holdExpireTime !== undefined ? Math.min(timestampMs(record.holdExpireTime), nowMs + s.policy.holdTtlMs) : undefined;
    cols.id.push(record.actionId);
    cols.session.push(s.sessionId);
    cols.agent.push(s.agentId);
    cols.method.push(record.method);
    cols.action.push(Buffer.from(toBinary(ActionSchema, record.action!)).toString("base64"));
    cols.decision.push(Buffer.from(toBinary(DecisionSchema, record.decision!)).toString("base64"));
    cols.outcome.push(outcome);
    cols.status.push(
      !allowed
        ? outcome === Outcome.NEEDS_APPROVAL
          ? ActionStatus.NEEDS_APPROVAL
          : ActionStatus.DENIED
        : held
          ? ActionStatus.HELD
          : ActionStatus.CAPTURED,
    );
    cols.currency.push(record.action!.amount?.currencyCode ?? s.policy.currency);
    cols.amount.push(amount.toString());
    cols.held.push(held ? amount.toString() : "0");
    cols.captured.push(allowed && !held ? amount.toString() : "0");
    cols.lease.push(allowed && lease !== undefined ? lease.lease_id : null);
    cols.created.push(iso(timestampMs(record.createTime!)));
    cols.holdExpire.push(holdExpireMs === undefined ? null : iso(holdExpireMs));
    audit.push(
      decisionAuditEntry({
        actionId: record.actionId,
        sessionId: s.sessionId,
        agentId: s.agentId,
        method: record.method,
        action: record.action!,
        outcome,
        reasons: record.decision!.reasons,
        status: cols.status.at(-1)!,
        currency: cols.currency.at(-1)!,
        holdExpireMs,
        source: "sidecar",
        leaseId: lease?.lease_id,
        decideMs: timestampMs(record.createTime!),
        nowMs,
      }),
    );
  }
  const sql = appendStatement(
    params,
    `INSERT INTO actions (action_id, session_id, agent_id, method, action, decision, outcome, status, currency,
                          amount, held_value, captured_value, charges, create_time, update_time, hold_expire_time, placed_by)
     SELECT u.id, u.session, u.agent, u.method, decode(u.action, 'base64'), decode(u.decision, 'base64'), u.outcome, u.status,
            u.currency, u.amount, u.held, u.captured,
            -- Copied from the lease row (locked above), not sent and parsed
            -- per record: ~600 bytes of JSON a record on three scopes.
            coalesce((SELECT l.charges FROM leases l WHERE l.lease_id = u.lease_id), '[]'::jsonb),
            u.created, $16::timestamptz, u.hold_expire, CASE WHEN u.status = ${ActionStatus.HELD} THEN $17::text END
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::smallint[], $8::smallint[],
                   $9::text[], $10::bigint[], $11::bigint[], $12::bigint[], $13::text[], $14::timestamptz[], $15::timestamptz[])
         AS u(id, session, agent, method, action, decision, outcome, status, currency, amount, held, captured, lease_id, created, hold_expire)`,
    [
      cols.id,
      cols.session,
      cols.agent,
      cols.method,
      cols.action,
      cols.decision,
      cols.outcome,
      cols.status,
      cols.currency,
      cols.amount,
      cols.held,
      cols.captured,
      cols.lease,
      cols.created,
      cols.holdExpire,
      iso(nowMs),
      // Which sidecar placed a hold (only holds: nothing else is settled
      // later): its settlement by the store is sent back to it
      // (settle_revision, migration 018).
      holder,
    ],
  );
  return { sql, audit };
}

/** Adds a grant's reserve to the held counters of every window it charges (a negative one takes it back). */
function reserve(usage: UsageSet, addresses: readonly CounterAddress[], value: bigint, actions: bigint): void {
  for (const a of addresses) {
    const c = usage.get(`${a.scopeKey}|${a.window}|${a.startMs}`)!;
    c.heldValue += value;
    c.heldActions += actions;
  }
}

function min(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

function half(n: bigint): bigint {
  return n <= 0n ? 0n : n / 2n;
}
