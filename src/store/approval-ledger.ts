import { create, fromBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { formatMoney } from "../core/money.js";
import { type Approval, ApprovalSchema, ApprovalStatus } from "../gen/warden/v1/approval_service_pb.js";
import { MoneySchema } from "../gen/warden/v1/money_pb.js";
import { ApprovalTimeoutOutcome } from "../gen/warden/v1/policy_pb.js";
import { ActionSchema, ActionStatus } from "../gen/warden/v1/policy_service_pb.js";
import type { ActionRow } from "./action-record.js";
import type { Queryable } from "./database.js";
import { countersOf, releaseHolds } from "./hold-ledger.js";
import { type NewEvent, recordEvents } from "./outbox.js";
import { saveCounters } from "./usage-counters.js";

const iso = (ms: number) => new Date(ms).toISOString();

/** The channel every approval decision is announced on (WatchApproval wakes on it). */
export const APPROVAL_CHANNEL = "warden_approvals";

/** The columns of `approvals` (aliased `p`) joined with their action (`x`), as readers select them. */
export const APPROVAL_COLUMNS = `p.approval_id, p.action_id, p.session_id, p.agent_id, p.status, p.currency, p.amount,
  p.approved_amount, p.timeout_outcome, p.create_time, p.expire_time, p.decide_time, p.decided_by, p.comment,
  x.method, x.action, x.hold_expire_time`;

/** `FROM` clause for {@link APPROVAL_COLUMNS}. */
export const APPROVAL_FROM = "approvals p JOIN actions x ON x.action_id = p.action_id";

/** A row of {@link APPROVAL_COLUMNS}. */
export interface ApprovalRow {
  approval_id: string;
  action_id: string;
  session_id: string;
  agent_id: string;
  status: number;
  currency: string;
  amount: string;
  approved_amount: string | null;
  timeout_outcome: number;
  create_time: Date;
  expire_time: Date;
  decide_time: Date | null;
  decided_by: string;
  comment: string;
  method: string;
  action: Uint8Array;
  hold_expire_time: Date | null;
}

/** An approval row as the API's `Approval`. */
export function approvalOf(r: ApprovalRow): Approval {
  const money = (micros: string) => create(MoneySchema, { currencyCode: r.currency, amountMicros: BigInt(micros) });
  return create(ApprovalSchema, {
    approvalId: r.approval_id,
    sessionId: r.session_id,
    agentId: r.agent_id,
    actionId: r.action_id,
    method: r.method,
    action: fromBinary(ActionSchema, r.action),
    amount: money(r.amount),
    approvedAmount: r.approved_amount === null ? undefined : money(r.approved_amount),
    status: r.status as ApprovalStatus,
    createTime: timestampFromMs(r.create_time.getTime()),
    expireTime: timestampFromMs(r.expire_time.getTime()),
    decideTime: r.decide_time === null ? undefined : timestampFromMs(r.decide_time.getTime()),
    decidedBy: r.decided_by,
    comment: r.comment,
    timeoutOutcome: r.timeout_outcome as ApprovalTimeoutOutcome,
    holdExpireTime:
      r.status === ApprovalStatus.APPROVED && r.hold_expire_time !== null ? timestampFromMs(r.hold_expire_time.getTime()) : undefined,
  });
}

/** A new approval, created by the decision that needed it. */
export interface NewApproval {
  readonly approvalId: string;
  readonly actionId: string;
  readonly sessionId: string;
  readonly agentId: string;
  readonly currency: string;
  readonly amount: bigint;
  readonly approveOnTimeout: boolean;
  readonly createMs: number;
  readonly expireMs: number;
}

/**
 * The `INSERT` of new approvals, as one statement of a batch (parameters
 * `$1…$9`). Their action rows must be inserted by the same transaction.
 */
export function insertApprovalsSql(rows: readonly NewApproval[]): { sql: string; params: unknown[] } {
  return {
    sql: `INSERT INTO approvals (approval_id, action_id, session_id, agent_id, status, currency, amount, timeout_outcome,
                                 create_time, expire_time)
          SELECT u.approval_id, u.action_id, u.session_id, u.agent_id, ${ApprovalStatus.PENDING}, u.currency, u.amount,
                 u.timeout_outcome, u.create_time, u.expire_time
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::smallint[],
                        $8::timestamptz[], $9::timestamptz[])
              AS u(approval_id, action_id, session_id, agent_id, currency, amount, timeout_outcome, create_time, expire_time)`,
    params: [
      rows.map((r) => r.approvalId),
      rows.map((r) => r.actionId),
      rows.map((r) => r.sessionId),
      rows.map((r) => r.agentId),
      rows.map((r) => r.currency),
      rows.map((r) => r.amount.toString()),
      rows.map((r) => (r.approveOnTimeout ? ApprovalTimeoutOutcome.APPROVE : ApprovalTimeoutOutcome.DENY)),
      rows.map((r) => iso(r.createMs)),
      rows.map((r) => iso(r.expireMs)),
    ],
  };
}

/** The `approval.requested` events of new approvals. */
export function requestedEvents(rows: readonly NewApproval[]): NewEvent[] {
  return rows.map((r) => ({
    type: "approval.requested",
    sessionId: r.sessionId,
    agentId: r.agentId,
    data: {
      approval_id: r.approvalId,
      action_id: r.actionId,
      status: "PENDING",
      amount_micros: r.amount.toString(),
      currency: r.currency,
      expire_time: iso(r.expireMs),
    },
    nowMs: r.createMs,
  }));
}

/** What a person (or the clock, or the agent) decided. */
export type Verdict =
  | { readonly kind: "approve"; readonly amountMicros?: bigint; readonly by: string; readonly comment: string }
  | { readonly kind: "deny" | "expire" | "cancel"; readonly by: string; readonly comment: string };

const STATUS_OF: Record<Verdict["kind"], ApprovalStatus> = {
  approve: ApprovalStatus.APPROVED,
  deny: ApprovalStatus.DENIED,
  expire: ApprovalStatus.EXPIRED,
  cancel: ApprovalStatus.CANCELED,
};

/** Where a released action's money went, by verdict. */
const RELEASED_ACTION_STATUS = {
  deny: ActionStatus.DENIED,
  expire: ActionStatus.EXPIRED,
  cancel: ActionStatus.VOIDED,
} as const;

const EVENT_OF = {
  approve: "approval.approved",
  deny: "approval.denied",
  expire: "approval.expired",
  cancel: "approval.canceled",
} as const;

/**
 * Locks an approval and its action, in the store's lock order (the
 * caller holds the session's scopes; then actions; then approvals).
 */
export async function lockApproval(tx: Queryable, approvalId: string): Promise<{ approval: ApprovalRow; action: ActionRow } | undefined> {
  const { rows } = await tx.query<ApprovalRow & ActionRow>(
    `SELECT ${APPROVAL_COLUMNS}, x.seq, x.decision, x.held_value, x.captured_value, x.charges, x.update_time,
            x.status AS action_status
       FROM ${APPROVAL_FROM} WHERE p.approval_id = $1 FOR UPDATE`,
    [approvalId],
  );
  const r = rows[0] as (ApprovalRow & ActionRow & { action_status: number }) | undefined;
  if (r === undefined) return undefined;
  return { approval: r, action: { ...r, status: r.action_status } };
}

/** Why a decided approval cannot be decided again, as an error. */
export function decidedError(a: ApprovalRow, verb: string): ConnectError {
  const by = a.decided_by === "" ? "" : ` by ${a.decided_by}`;
  return new ConnectError(
    `approval_id: cannot ${verb} "${a.approval_id}": it was already ${ApprovalStatus[a.status]}${by}`,
    Code.FailedPrecondition,
  );
}

/**
 * Applies a verdict to a locked, pending approval, in the caller's
 * transaction:
 * - approve: the action becomes an open authorization (HELD) for the
 *   approved amount, with the policy's hold TTL from now; a lower amount
 *   gives the difference back to every window at once;
 * - deny, expire, cancel: the hold is released, as a void would.
 * Records the approval event and announces the change to watchers.
 */
export async function settleApproval(
  tx: Queryable,
  locked: { approval: ApprovalRow; action: ActionRow },
  verdict: Verdict,
  holdTtlMs: number,
  nowMs: number,
): Promise<void> {
  const { approval: a, action: h } = locked;
  const held = BigInt(h.held_value);
  let approved: bigint | null = null;
  if (verdict.kind === "approve") {
    approved = verdict.amountMicros ?? held;
    if (approved > held) {
      throw new ConnectError(
        `amount: ${formatMoney(approved, a.currency)} is above the ${formatMoney(held, a.currency)} asked for`,
        Code.InvalidArgument,
      );
    }
    const counters = await countersOf(tx, [h]);
    for (const [scopeKey, window, startMs] of h.charges) {
      counters.get(`${scopeKey}|${window}|${startMs}`)!.heldValue -= held - approved;
    }
    await saveCounters(tx, counters);
    await tx.query(
      `UPDATE actions SET status = $2, held_value = $3, hold_expire_time = $4::timestamptz, update_time = $5::timestamptz
        WHERE action_id = $1`,
      [h.action_id, ActionStatus.HELD, approved.toString(), iso(nowMs + holdTtlMs), iso(nowMs)],
    );
  } else {
    await releaseHolds(tx, [h], RELEASED_ACTION_STATUS[verdict.kind], nowMs);
  }
  const status = STATUS_OF[verdict.kind];
  await tx.query(
    `UPDATE approvals SET status = $2, approved_amount = $3, decide_time = $4::timestamptz, decided_by = $5, comment = $6
      WHERE approval_id = $1`,
    [a.approval_id, status, approved?.toString() ?? null, iso(nowMs), verdict.by, verdict.comment],
  );
  // The agent has been waiting for this answer, not idle (see lapse): its
  // idle clock starts over when the wait ended (now, or the deadline if an
  // expiry is applied late), or runs from the deadline of an approval it
  // still waits on. Without this a person who takes longer than the idle
  // timeout hands it a hold its session ends before it can capture. The
  // caller holds the session's lock; the idle check time stays a lower
  // bound (010_idle_deadline.sql); the new revision tells sidecars.
  // The wait may end earlier than the deadline the sweeper's idle check
  // was set from (decided early): the check comes no later than the idle
  // deadline from now on, so it stays a lower bound (010_idle_deadline.sql).
  await tx.query(
    `UPDATE sessions SET last_activity_time = GREATEST(last_activity_time, $2::timestamptz),
            approval_wait_until = (SELECT max(expire_time) FROM approvals WHERE session_id = $1 AND status = ${ApprovalStatus.PENDING}),
            idle_check_time = LEAST(idle_check_time, GREATEST(last_activity_time, $2::timestamptz) + idle_timeout_ms * interval '1 millisecond'),
            revision = warden_next_revision()
      WHERE session_id = $1`,
    [a.session_id, iso(Math.min(nowMs, a.expire_time.getTime()))],
  );
  await recordEvents(tx, [
    {
      type: EVENT_OF[verdict.kind],
      sessionId: a.session_id,
      agentId: a.agent_id,
      data: {
        approval_id: a.approval_id,
        action_id: a.action_id,
        status: ApprovalStatus[status],
        amount_micros: a.amount,
        ...(approved === null ? {} : { approved_amount_micros: approved.toString(), hold_expire_time: iso(nowMs + holdTtlMs) }),
        currency: a.currency,
        decided_by: verdict.by,
        comment: verdict.comment,
      },
      nowMs,
    },
  ]);
  await tx.query("SELECT pg_notify($1, $2)", [APPROVAL_CHANNEL, a.approval_id]);
}

/**
 * The verdict the clock gives a pending approval past its expiry. While
 * `pausedId` (its session, or a parent) is paused, it is never an approval.
 */
export function timeoutVerdict(a: ApprovalRow, pausedId?: string): Verdict {
  if (a.timeout_outcome !== ApprovalTimeoutOutcome.APPROVE) return { kind: "expire", by: "timeout", comment: "nobody decided in time" };
  return pausedId === undefined
    ? { kind: "approve", by: "timeout", comment: "approved on timeout, as the policy says" }
    : { kind: "expire", by: "timeout", comment: `nobody decided in time, and session "${pausedId}" was paused: not approved on timeout` };
}

/**
 * Cancels the pending approvals among actions being released because their
 * session ended (the caller releases the holds): their rows, events and
 * announcements, in the caller's transaction.
 */
export async function cancelApprovalsOf(tx: Queryable, actions: readonly ActionRow[], why: string, nowMs: number): Promise<void> {
  const ids = actions.filter((h) => h.status === ActionStatus.NEEDS_APPROVAL).map((h) => h.action_id);
  if (ids.length === 0) return;
  const { rows } = await tx.query<{ approval_id: string; session_id: string; agent_id: string; action_id: string; amount: string; currency: string }>(
    `UPDATE approvals SET status = $2, decide_time = $3::timestamptz, decided_by = 'session', comment = $4
      WHERE action_id = ANY($1::text[]) AND status = ${ApprovalStatus.PENDING}
      RETURNING approval_id, session_id, agent_id, action_id, amount, currency`,
    [ids, ApprovalStatus.CANCELED, iso(nowMs), why],
  );
  await recordEvents(
    tx,
    rows.map((r) => ({
      type: "approval.canceled" as const,
      sessionId: r.session_id,
      agentId: r.agent_id,
      data: { approval_id: r.approval_id, action_id: r.action_id, status: "CANCELED", amount_micros: r.amount, currency: r.currency, decided_by: "session", comment: why },
      nowMs,
    })),
  );
  for (const r of rows) await tx.query("SELECT pg_notify($1, $2)", [APPROVAL_CHANNEL, r.approval_id]);
}
