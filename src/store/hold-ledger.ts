import { Code, ConnectError } from "@connectrpc/connect";
import type { CompiledPolicy } from "../core/compiled-policy.js";
import { isExhausted, isTerminal, LIFETIME_START_MS, type Totals } from "../core/evaluate.js";
import { formatMoney } from "../core/money.js";
import { ActionStatus } from "../gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../gen/warden/v1/session_pb.js";
import { ACTION_COLUMNS, type ActionRow } from "./action-record.js";
import { appendStatements, foldStatements } from "./append-statement.js";
import { type AuditEntry, chainAudit, readAuditHeads, writeAuditSql } from "./audit-log.js";
import type { Queryable } from "./database.js";
import { cancelApprovalsOf } from "./approval-ledger.js";
import { endEventType, type NewEvent, recordEvents } from "./outbox.js";
import type { LockedSession } from "./scope-locks.js";
import { LEASE_TOTALS_SQL } from "./session-row.js";
import { type CounterAddress, loadCounters, saveCountersSql, type UsageSet } from "./usage-counters.js";

const iso = (ms: number) => new Date(ms).toISOString();

/**
 * Reads actions under row lock. Call with their sessions' scopes locked
 * first (lock order: sessions, agents, then actions).
 */
export async function lockActions(tx: Queryable, where: string, params: unknown[]): Promise<ActionRow[]> {
  const { rows } = await tx.query<ActionRow>(`SELECT ${ACTION_COLUMNS} FROM actions WHERE ${where} ORDER BY action_id FOR UPDATE`, params);
  return rows;
}

/**
 * The counters that holds or leases charged, in "exact" mode: a charge to a window
 * that has since rolled over reads as a detached counter, so settling it
 * changes only windows still stored (lifetime always).
 */
export async function countersOf(tx: Queryable, rows: readonly { readonly charges: ActionRow["charges"] }[]): Promise<UsageSet> {
  return loadCounters(tx, chargedAddresses(rows), "exact");
}

/** The counter addresses `rows` (holds or leases) charged: what {@link countersOf} reads, in "exact" mode. */
export function chargedAddresses(rows: readonly { readonly charges: ActionRow["charges"] }[]): CounterAddress[] {
  return rows.flatMap((r) => r.charges.map(([scopeKey, window, startMs]) => ({ scopeKey, window, startMs })));
}

/**
 * Rows that hold money: open authorizations, and actions waiting for an
 * approval (which hold their amount; older rows of that status, from
 * before approvals held anything, hold nothing). The partial index
 * actions_open_by_session (migration 013) has this very predicate: change
 * both together.
 */
export const OPEN_HOLDS_SQL = `(status = ${ActionStatus.HELD} OR (status = ${ActionStatus.NEEDS_APPROVAL} AND held_value > 0))`;

/**
 * How long past its expiry the store keeps open a hold a sidecar placed
 * (placed_by set): the sidecar may have captured it just before it expired
 * and not reported that yet. Elsewhere it is refused as expired from its
 * true expiry on; only the sweeper waits, and then writes it off
 * ({@link closeHolds}) if its sidecar has still said nothing of it.
 */
export const SIDECAR_HOLD_GRACE_MS = 60_000;

/** Whether an action row holds money; see {@link OPEN_HOLDS_SQL}. */
export function isOpenHold(h: ActionRow): boolean {
  return h.status === ActionStatus.HELD || (h.status === ActionStatus.NEEDS_APPROVAL && BigInt(h.held_value) > 0n);
}

/** What settling some holds changes: see {@link settleHolds}. */
interface HoldSettlement {
  readonly holds: readonly ActionRow[];
  /** Moves the holds' amounts in the counters they charged (read for it). */
  readonly count: (counters: UsageSet) => void;
  /** The statement that updates their action rows. */
  readonly update: { readonly sql: string; readonly params: unknown[] };
  readonly audit: readonly AuditEntry[];
  readonly events: readonly NewEvent[];
}

/**
 * Settles holds in two round trips whatever their number: the counters
 * they charged and their chains' audit heads read together, then every
 * write sent together (the counters, the action rows and the audit
 * records in one statement; the events behind it). Call it with the holds'
 * sessions locked, in a transaction (scope-locks.ts). Returns the counters
 * as saved.
 */
async function settleHolds(tx: Queryable, s: HoldSettlement): Promise<UsageSet> {
  if (s.holds.length === 0) return countersOf(tx, []);
  const [counters, heads] = await Promise.all([countersOf(tx, s.holds), readAuditHeads(tx, s.audit.map((a) => a.chain))]);
  s.count(counters);
  const params: unknown[] = [];
  const writes = [
    ...saveCountersSql(counters),
    s.update,
    ...writeAuditSql(chainAudit(heads, s.audit)),
  ];
  await Promise.all([tx.query(foldStatements(appendStatements(params, writes)), params), recordEvents(tx, s.events)]);
  // Saved again later in the transaction, the rows inserted now are updated.
  for (const k of counters.scopes.keys()) counters.stored.add(k);
  return counters;
}

/**
 * Takes each hold's amount and action slot out of the held counters it
 * charged and, unless it is released (`committed` undefined), commits
 * `committed` of it (a capture, or a write-off of the whole) with its
 * action slot.
 */
function moveHeld(counters: UsageSet, items: readonly { hold: ActionRow; committed: bigint | undefined }[]): void {
  for (const { hold: h, committed } of items) {
    const held = BigInt(h.held_value);
    for (const [scopeKey, window, startMs] of h.charges) {
      const c = counters.get(`${scopeKey}|${window}|${startMs}`)!;
      c.heldValue -= held;
      c.heldActions -= 1n;
      if (committed === undefined) continue;
      c.committedValue += committed;
      c.committedActions += 1n;
    }
  }
}

/**
 * Releases open holds (authorizations, and pending approvals' holds) into `status` (VOIDED or EXPIRED): their
 * amount and action slot return to every window they charged.
 */
export async function releaseHolds(tx: Queryable, holds: readonly ActionRow[], status: ActionStatus, nowMs: number): Promise<void> {
  const open = holds.filter(isOpenHold);
  if (open.length === 0) return;
  // Authorizations say what became of them; a pending approval's hold is
  // told by its approval.* event instead.
  const type = status === ActionStatus.EXPIRED ? "authorization.expired" : "authorization.voided";
  await settleHolds(tx, {
    holds: open,
    count: (counters) => moveHeld(counters, open.map((h) => ({ hold: h, committed: undefined }))),
    update: {
      sql: `UPDATE actions SET status = $2, held_value = 0, update_time = $3::timestamptz WHERE action_id = ANY($1::text[])`,
      params: [open.map((h) => h.action_id), status, iso(nowMs)],
    },
    audit: open.map((h) => ({
      chain: h.session_id,
      type: `authorization.${ActionStatus[status]!.toLowerCase()}`,
      nowMs,
      sessionId: h.session_id,
      agentId: h.agent_id,
      data: { action_id: h.action_id, previous_status: ActionStatus[h.status], status: ActionStatus[status], released_micros: BigInt(h.held_value).toString(), currency: h.currency },
    })),
    events: open
      .filter((h) => h.status === ActionStatus.HELD)
      .map((h) => ({
        type,
        sessionId: h.session_id,
        agentId: h.agent_id,
        data: { authorization_id: h.action_id, currency: h.currency, released_amount_micros: h.held_value },
        nowMs,
      })),
  });
}

/**
 * Closes open holds the store must end without their owner's word (their
 * session ended, or they are past their expiry) into `status` (VOIDED or
 * EXPIRED). The store's own go back ({@link releaseHolds}). A sidecar's
 * (placed_by set) is written off instead, counted as spent: its sidecar
 * may have answered a capture of it that it has not reported yet, and
 * releasing it would let that money be spent twice. The sidecar's report
 * turns the write-off into what became of the hold ({@link reverseWriteOffs});
 * a sidecar that crashed never reports, and the write-off stands
 * (migration 021). Returns what was written off.
 */
export async function closeHolds(tx: Queryable, holds: readonly ActionRow[], status: ActionStatus, nowMs: number): Promise<WrittenOff> {
  const isSidecars = (h: ActionRow) => h.placed_by != null && h.status === ActionStatus.HELD;
  await releaseHolds(
    tx,
    holds.filter((h) => !isSidecars(h)),
    status,
    nowMs,
  );
  return writeOffHolds(tx, holds.filter(isSidecars), status, nowMs);
}

/** Holds written off as spent: their number and amount. */
export interface WrittenOff {
  readonly holds: number;
  readonly value: bigint;
}

async function writeOffHolds(tx: Queryable, holds: readonly ActionRow[], status: ActionStatus, nowMs: number): Promise<WrittenOff> {
  if (holds.length === 0) return { holds: 0, value: 0n };
  let value = 0n;
  for (const h of holds) value += BigInt(h.held_value);
  await settleHolds(tx, {
    holds,
    count: (counters) => moveHeld(counters, holds.map((h) => ({ hold: h, committed: BigInt(h.held_value) }))),
    update: {
      sql: `UPDATE actions SET status = $2, written_off_value = held_value, held_value = 0, update_time = $3::timestamptz WHERE action_id = ANY($1::text[])`,
      params: [holds.map((h) => h.action_id), status, iso(nowMs)],
    },
    audit: holds.map((h) => ({
      chain: h.session_id,
      type: "authorization.written_off",
      nowMs,
      sessionId: h.session_id,
      agentId: h.agent_id,
      data: { action_id: h.action_id, status: ActionStatus[status], placed_by: h.placed_by, written_off_micros: BigInt(h.held_value).toString(), currency: h.currency },
    })),
    // The authorization is closed, as one released is; its amount is not back.
    events: holds.map((h) => ({
      type: status === ActionStatus.EXPIRED ? "authorization.expired" : "authorization.voided",
      sessionId: h.session_id,
      agentId: h.agent_id,
      data: { authorization_id: h.action_id, currency: h.currency, released_amount_micros: "0", written_off_amount_micros: h.held_value },
      nowMs,
    })),
  });
  return { holds: holds.length, value };
}

/**
 * Turns written-off holds (see {@link closeHolds}) into what their sidecar
 * reports became of them: a capture of `amountMicros` commits that much
 * (status CAPTURED); a release (undefined) gives the whole write-off back.
 * Each row must be written off (written_off_value set); checked by the caller.
 */
export async function reverseWriteOffs(tx: Queryable, items: readonly { hold: ActionRow; amountMicros: bigint | undefined }[], nowMs: number): Promise<void> {
  if (items.length === 0) return;
  await settleHolds(tx, {
    holds: items.map((i) => i.hold),
    count: (counters) => {
      for (const { hold: h, amountMicros } of items) {
        const written = BigInt(h.written_off_value!);
        for (const [scopeKey, window, startMs] of h.charges) {
          const c = counters.get(`${scopeKey}|${window}|${startMs}`)!;
          c.committedValue += (amountMicros ?? 0n) - written;
          if (amountMicros === undefined) c.committedActions -= 1n;
        }
      }
    },
    update: {
      sql: `UPDATE actions a SET status = CASE WHEN u.captured IS NULL THEN a.status ELSE ${ActionStatus.CAPTURED} END,
              captured_value = coalesce(u.captured, a.captured_value), written_off_value = NULL, update_time = $3::timestamptz
         FROM unnest($1::text[], $2::bigint[]) AS u(action_id, captured)
        WHERE a.action_id = u.action_id`,
      params: [items.map((i) => i.hold.action_id), items.map((i) => i.amountMicros?.toString() ?? null), iso(nowMs)],
    },
    audit: items.map(({ hold: h, amountMicros }) => ({
      chain: h.session_id,
      type: amountMicros === undefined ? "authorization.write_off_reversed" : "authorization.captured",
      nowMs,
      sessionId: h.session_id,
      agentId: h.agent_id,
      data: {
        action_id: h.action_id,
        ...(amountMicros === undefined ? {} : { captured_micros: amountMicros.toString() }),
        released_micros: (BigInt(h.written_off_value!) - (amountMicros ?? 0n)).toString(),
        was_written_off: true,
        currency: h.currency,
      },
    })),
    // Its webhook said it expired (or was voided): a late capture is news.
    events: items
      .filter((i) => i.amountMicros !== undefined)
      .map(({ hold: h, amountMicros }) => ({
        type: "authorization.captured",
        sessionId: h.session_id,
        agentId: h.agent_id,
        data: { authorization_id: h.action_id, currency: h.currency, captured_amount_micros: amountMicros!.toString(), released_amount_micros: "0", was_written_off: true },
        nowMs,
      })),
  });
}

/** Why a hold can no longer be captured or voided, as an error. */
export function closedHoldError(h: ActionRow, verb: "capture" | "void"): ConnectError {
  const why: Record<number, string> = {
    [ActionStatus.CAPTURED]: "was already captured",
    [ActionStatus.VOIDED]: "was voided",
    [ActionStatus.EXPIRED]: "has expired",
    [ActionStatus.DENIED]: "was denied, so nothing is held",
    [ActionStatus.NEEDS_APPROVAL]:
      verb === "capture" ? "awaits a person's approval; capture it once approved" : "awaits a person's approval; cancel that instead (CancelApproval)",
  };
  return new ConnectError(
    `authorization_id: cannot ${verb} "${h.action_id}": it ${why[h.status] ?? "is not open"}`,
    Code.FailedPrecondition,
  );
}

/**
 * Commits `amountMicros` of an open hold and releases the rest. Returns
 * the sessions of `chain` (the hold's session and its parents, locked)
 * whose lifetime limit is now used up: they become EXHAUSTED.
 */
export async function captureHold(
  tx: Queryable,
  h: ActionRow,
  amountMicros: bigint,
  chain: readonly LockedSession[],
  nowMs: number,
): Promise<string[]> {
  const held = BigInt(h.held_value);
  if (amountMicros > held) {
    throw new ConnectError(
      `amount: ${formatMoney(amountMicros, h.currency)} is above the held ${formatMoney(held, h.currency)}`,
      Code.FailedPrecondition,
    );
  }
  const counters = await captureHolds(tx, [{ hold: h, amountMicros }], nowMs);
  // The hold charged the lifetime window of every session of its chain,
  // so each was just read; a fork's spend uses up its parents' too.
  const live = chain.filter((s) => !isTerminal(s.status));
  const unread = live.filter((s) => counters.scopes.get(`s:${s.sessionId}`) === undefined);
  const reached = live.flatMap((s) => {
    const life = counters.scopes.get(`s:${s.sessionId}`)?.lifetime;
    return life === undefined ? [] : [{ ...s, committed: { value: life.committedValue, actions: life.committedActions } }];
  });
  const used = new Set([...(await usedUpWithoutWriteOffs(tx, reached)), ...(unread.length === 0 ? [] : await lifetimesUsedUp(tx, unread))]);
  return live.filter((s) => used.has(s.sessionId)).map((s) => s.sessionId);
}

/**
 * Commits each of several open holds (distinct, at most their held
 * amounts, checked by the caller) and releases the rest, in a fixed number
 * of statements whatever their count: a sidecar's report settles many at
 * once under its sessions' locks. Returns the counters as saved.
 */
export async function captureHolds(tx: Queryable, items: readonly { hold: ActionRow; amountMicros: bigint }[], nowMs: number): Promise<UsageSet> {
  return settleHolds(tx, {
    holds: items.map((i) => i.hold),
    count: (counters) => moveHeld(counters, items.map((i) => ({ hold: i.hold, committed: i.amountMicros }))),
    update: {
      sql: `UPDATE actions a SET status = $3, held_value = 0, captured_value = u.captured, update_time = $4::timestamptz
         FROM unnest($1::text[], $2::bigint[]) AS u(action_id, captured)
        WHERE a.action_id = u.action_id`,
      params: [items.map((i) => i.hold.action_id), items.map((i) => i.amountMicros.toString()), ActionStatus.CAPTURED, iso(nowMs)],
    },
    audit: items.map(({ hold: h, amountMicros }) => ({
      chain: h.session_id,
      type: "authorization.captured",
      nowMs,
      sessionId: h.session_id,
      agentId: h.agent_id,
      data: { action_id: h.action_id, captured_micros: amountMicros.toString(), released_micros: (BigInt(h.held_value) - amountMicros).toString(), currency: h.currency },
    })),
    events: items.map(({ hold: h, amountMicros }) => ({
      type: "authorization.captured",
      sessionId: h.session_id,
      agentId: h.agent_id,
      data: {
        authorization_id: h.action_id,
        currency: h.currency,
        captured_amount_micros: amountMicros.toString(),
        released_amount_micros: (BigInt(h.held_value) - amountMicros).toString(),
      },
      nowMs,
    })),
  });
}

/**
 * The locked sessions whose lifetime limit is used up by what is committed
 * now (read fresh: call after the writes that may have done it), not
 * counting write-offs (see {@link usedUpWithoutWriteOffs}). A session whose
 * policy has no lifetime limit costs no read.
 */
export async function lifetimesUsedUp(tx: Queryable, sessions: readonly Pick<LockedSession, "sessionId" | "policy">[]): Promise<Set<string>> {
  const limited = sessions.filter((s) => s.policy.limits.lifetime.maxValue !== undefined || s.policy.limits.lifetime.maxActions !== undefined);
  if (limited.length === 0) return new Set();
  const usage = await loadCounters(
    tx,
    limited.map((s) => ({ scopeKey: `s:${s.sessionId}`, window: "lifetime" as const, startMs: LIFETIME_START_MS })),
  );
  return usedUpWithoutWriteOffs(
    tx,
    limited.map((s) => {
      const life = usage.scopes.get(`s:${s.sessionId}`)!.lifetime;
      return { ...s, committed: { value: life.committedValue, actions: life.committedActions } };
    }),
  );
}

/**
 * What the store wrote off of sessions `sessionIds` and may yet give back,
 * by session: the unreported rest of their sidecars' expired leases, and
 * their sidecars' holds it closed without word (counted as spent, since
 * either may have been spent; a sidecar that was only cut off gives it
 * back when it reports), their forks' included, which count in their
 * lifetimes too. Sessions with none are left out.
 */
export async function pendingWriteOffs(tx: Queryable, sessionIds: readonly string[]): Promise<Map<string, Totals>> {
  const out = new Map<string, Totals>();
  if (sessionIds.length === 0) return out;
  const wanted = new Set(sessionIds);
  // Through sessions_by_ancestor (migration 009), whose predicate this repeats.
  const { rows: forks } = await tx.query<{ session_id: string; ancestor_ids: string[] }>(
    "SELECT session_id, ancestor_ids FROM sessions WHERE ancestor_ids && $1::text[] AND ancestor_ids <> '{}'",
    [sessionIds],
  );
  const ownersOf = new Map(forks.map((f) => [f.session_id, f.ancestor_ids.filter((a) => wanted.has(a))]));
  const { rows } = await tx.query<{ session_id: string; wv: string | null; wa: string | null }>(LEASE_TOTALS_SQL, [
    [...new Set([...sessionIds, ...ownersOf.keys()])],
  ]);
  for (const r of rows) {
    const value = BigInt(r.wv ?? 0);
    const actions = BigInt(r.wa ?? 0);
    if (value === 0n && actions === 0n) continue;
    const owners = [...(wanted.has(r.session_id) ? [r.session_id] : []), ...(ownersOf.get(r.session_id) ?? [])];
    for (const id of owners) {
      const t = out.get(id);
      out.set(id, { value: (t?.value ?? 0n) + value, actions: (t?.actions ?? 0n) + actions });
    }
  }
  return out;
}

/** Committed counts less what of them was written off (see {@link pendingWriteOffs}). */
export function netOfWriteOffs(committed: Totals, writtenOff: Totals | undefined): Totals {
  return writtenOff === undefined ? committed : { value: committed.value - writtenOff.value, actions: committed.actions - writtenOff.actions };
}

/**
 * Of sessions whose lifetime `committed` counts, those whose limit is used
 * up without what was written off of them. A write-off limits every
 * decision like any spend, but on its own it never ends a session for good:
 * it may come back, and an ended session never spends again. (The session
 * stays as it is, denying what its limit denies.) Reads nothing unless
 * some session has reached its limit.
 */
export async function usedUpWithoutWriteOffs(
  tx: Queryable,
  sessions: readonly { sessionId: string; policy: CompiledPolicy; committed: Totals }[],
): Promise<Set<string>> {
  const reached = sessions.filter((s) => isExhausted(s.policy, s.committed));
  const writtenOff = await pendingWriteOffs(tx, reached.map((s) => s.sessionId));
  return new Set(reached.filter((s) => isExhausted(s.policy, netOfWriteOffs(s.committed, writtenOff.get(s.sessionId)))).map((s) => s.sessionId));
}

/**
 * Moves locked sessions to a terminal `status`, closes their open holds (closeHolds)
 * and records a session event for each (in this transaction: the outbox).
 * The first id is the session the change was asked of; the others are its
 * forks ended with it, whose events say so (`ended_with`). With `endedWith`
 * every id is a fork of that session, which ended earlier (see
 * end-forks.ts). Callers lock the sessions (and their ancestors and
 * agents) first.
 */
export async function endSessions(
  tx: Queryable,
  sessionIds: readonly string[],
  status: SessionStatus,
  reason: string,
  nowMs: number,
  endedWith?: string,
): Promise<void> {
  if (sessionIds.length === 0) return;
  // Action rows are locked before the revision is taken: a revision's
  // advisory lock must come after every row lock (see 004_sync_leases.sql).
  const holds = await lockActions(tx, `session_id = ANY($1::text[]) AND ${OPEN_HOLDS_SQL}`, [sessionIds]);
  const { rows } = await tx.query<{ session_id: string; agent_id: string }>(
    `UPDATE sessions SET status = $2, status_reason = $3, end_time = $4::timestamptz, update_time = $4::timestamptz,
            revision = warden_next_revision()
      WHERE session_id = ANY($1::text[])
      RETURNING session_id, agent_id`,
    [sessionIds, status, reason, iso(nowMs)],
  );
  const type = endEventType(status);
  if (type !== undefined) {
    const root = endedWith ?? sessionIds[0]!;
    // In the callers' order (the root first), not the UPDATE's.
    const agents = new Map(rows.map((r) => [r.session_id, r.agent_id]));
    await recordEvents(
      tx,
      sessionIds
        .filter((id) => agents.has(id))
        .map((id) => ({
          type,
          sessionId: id,
          agentId: agents.get(id)!,
          data: { status: SessionStatus[status], reason, ...(id === root ? {} : { ended_with: root }) },
          nowMs,
        })),
    );
  }
  await closeHoldsOfEnded(tx, holds, status, nowMs);
}

/**
 * Closes the open holds of sessions that ended `status`, as every ending
 * does, whoever noticed it: a lapse expires them, any other end voids
 * them (closeHolds); their pending approvals are canceled.
 */
export async function closeHoldsOfEnded(tx: Queryable, holds: readonly ActionRow[], status: SessionStatus, nowMs: number): Promise<void> {
  await closeHolds(tx, holds, status === SessionStatus.EXPIRED ? ActionStatus.EXPIRED : ActionStatus.VOIDED, nowMs);
  await cancelApprovalsOf(tx, holds, `session ${SessionStatus[status]}`, nowMs);
}
